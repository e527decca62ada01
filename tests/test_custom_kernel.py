"""explorer.custom_kernel: a user C + CUDA kernel (fused swish) as an opaque op inside traced functions,
compared with NumPy on reference, sim and cpu (cuda when a GPU is here), and the errors bad sources,
bad shapes and bad names end in."""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer import custom
from explorer.backends import cpu, nvcc

HAVE_CC, CC_WHY = cpu.available()
HAVE_NVCC, NVCC_WHY = nvcc.available()
needs_cc = pytest.mark.skipif(not HAVE_CC, reason=f"no C compiler: {CC_WHY}")
needs_nvcc = pytest.mark.skipif(not HAVE_NVCC, reason=NVCC_WHY)

SWISH_C = """
void swish(int64_t n, const int64_t *dims, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + expf(-x[i]));
}
"""
SWISH_CU = """
__device__ void swish(long long n, const long long *dims, const float *x, float *y) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] / (1.0f + expf(-x[i]));
}
"""
# a non-elementwise kernel: reads its row length from dims (input shape, then output shape)
ROWMAX_C = """
void rowmax(int64_t n, const int64_t *dims, const float *x, float *y) {
    int64_t cols = dims[1];
    for (int64_t i = 0; i < n; i++) {
        float m = x[i * cols];
        for (int64_t j = 1; j < cols; j++) m = x[i * cols + j] > m ? x[i * cols + j] : m;
        y[i] = m;
    }
}
"""


def np_swish(x):
    return x / (1 + np.exp(-x))


@pytest.fixture(scope="module")
def swish():
    return explorer.custom_kernel("swish", c_source=SWISH_C, cuda_source=SWISH_CU, reference=np_swish)


def mlp(x, w, b, swish):
    return swish(x @ w) + b


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((33, 24)).astype(np.float32), rng.standard_normal((24, 40)).astype(np.float32),
            rng.standard_normal(40).astype(np.float32))


def _want(x, w, b):
    return np_swish(x @ w) + b


@pytest.mark.parametrize("target", ["reference", "sim", pytest.param("cpu", marks=needs_cc)])
def test_swish_between_matmul_and_add(swish, data, target):
    c = explorer.compile(lambda x, w, b: mlp(x, w, b, swish), *data, target=target)
    np.testing.assert_allclose(c(*data), _want(*data), rtol=1e-4, atol=1e-5)
    # a second call with other values runs the same kernels
    x2 = data[0] * -0.5
    np.testing.assert_allclose(c(x2, data[1], data[2]), _want(x2, data[1], data[2]), rtol=1e-4, atol=1e-5)


def test_custom_kernel_in_every_snapshot(swish, data):
    c = explorer.compile(lambda x, w, b: mlp(x, w, b, swish), *data, target="sim")
    assert "swish(" in c.stage("traced").text() and "swish(" in c.stage("simplified").text()
    fused = c.stage("fused").text()
    assert "[opaque]" in fused and fused.count(custom.OPAQUE_REASON) == 2   # both edges name the reason
    # provenance is the user's line, not the explorer's
    assert "test_custom_kernel.py" in fused.split("swish_kernel")[1].splitlines()[0]
    tiled = c.stage("tiled").text()
    assert "custom kernel swish(t" in tiled and "sim and reference its NumPy reference" in tiled
    assert len(c.kernels) == 3 and "__device__ void swish" in c.kernels[1].source
    assert c.kernels[1].launch["block"] == (custom.CUDA_BLOCK, 1, 1)
    exe = c.executable()
    exe.run(c.backend_inputs(list(data)))
    ctr = exe.counters["swish_kernel"]
    assert ctr["reference_run"] == 1 and ctr["global_load_bytes"] == 33 * 40 * 4
    from explorer import costmodel
    costs = costmodel.kernel_costs(c)
    assert any("swish" in k.name for k in costs)


@needs_cc
def test_cpu_checks_the_c_source_against_the_reference(swish, data):
    c = explorer.compile(lambda x, w, b: mlp(x, w, b, swish), *data, target="cpu")
    assert c.codegen.checks == ["swish: C output equals the reference on the example inputs (rtol 0.0001)"]
    # the user's source is in the translation unit once, even when the kernel is used twice
    c2 = explorer.compile(lambda x: swish(swish(x) * 2), data[0], target="cpu")
    assert c2.codegen.source().count("void swish(int64_t n") == 1
    np.testing.assert_allclose(c2(data[0]), np_swish(np_swish(data[0]) * 2), rtol=1e-5, atol=1e-6)


@needs_cc
def test_wrong_c_result_is_a_verification_error():
    bad = explorer.custom_kernel("swish_off", reference=np_swish,
                                 c_source=SWISH_C.replace("swish(", "swish_off(").replace("1.0f +", "2.0f +"))
    with pytest.raises(explorer.VerificationError, match=r"swish_off: its C source disagrees with its reference"):
        explorer.compile(lambda x: bad(x) + 1, np.ones(8, np.float32), target="cpu")


@needs_cc
def test_shape_changing_kernel_with_dims(data):
    rowmax = explorer.custom_kernel("rowmax", c_source=ROWMAX_C, reference=lambda x: x.max(axis=1),
                                    shape_fn=lambda s: (s[0],), check_cuda=False)
    x = data[0]
    for t in ("sim", "cpu"):
        c = explorer.compile(lambda x: rowmax(np.tanh(x)) * 2, x, target=t)
        np.testing.assert_allclose(c(x), np.tanh(x).max(axis=1) * 2, rtol=1e-6)
    assert "ke_dims[] = {33, 24, 33}" in c.kernels[1].source


def test_eager_call_runs_the_reference(swish):
    x = np.linspace(-3, 3, 7, dtype=np.float32)
    np.testing.assert_allclose(swish(x), np_swish(x))


def test_reregistering_the_same_sources_is_a_no_op(swish):
    again = explorer.custom_kernel("swish", c_source=SWISH_C, cuda_source=SWISH_CU, reference=np_swish)
    assert again.name == "swish"


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_generated_cuda_with_custom_kernel_compiles(swish, data, arch):
    c = explorer.compile(lambda x, w, b: mlp(x, w, b, swish), *data, target="sim")
    ptx = nvcc.check(c.codegen.source(), arch=arch)
    assert ".entry swish_kernel" in ptx


@pytest.mark.gpu
def test_swish_on_gpu(swish, data):
    from explorer.backends import cuda
    ok, why = cuda.available()
    if not ok:
        pytest.skip(f"no usable GPU: {why}")
    c = explorer.compile(lambda x, w, b: mlp(x, w, b, swish), *data, target="cuda")
    np.testing.assert_allclose(c(*data), _want(*data), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- errors
def _reg(name, c_source=None, cuda_source=None, **kw):
    return explorer.custom_kernel(name, c_source=c_source, cuda_source=cuda_source, reference=np_swish, **kw)


@needs_cc
@pytest.mark.parametrize("name, source, pattern, line", [
    ("bad_syntax", "void bad_syntax(int64_t n, const int64_t *dims, const float *x, float *y) {\n  y[0] = x[0]\n}\n",
     r"C compiler error at line 2 of your c_source: `y\[0\] = x\[0\]`\n  expected", 2),
    ("bad_undeclared", "\nvoid bad_undeclared(int64_t n, const int64_t *dims, const float *x, float *y) {\n\n"
                       "  y[0] = zz;\n}\n", r"line 4 of your c_source: `y\[0\] = zz;`\n  .zz. undeclared", 4),
    ("bad_name", "void other(int64_t n, const int64_t *dims, const float *x, float *y) { }\n",
     r"does not define the function the calling convention needs .*\n  void bad_name\(int64_t n, const int64_t "
     r"\*dims, const float \*in, float \*out\)", None),
    ("bad_signature", "void bad_signature(const float *x, float *y) { }\n",
     r"does not define the function the calling convention needs", None),
])
def test_bad_c_source_is_a_compile_error_at_the_users_line(name, source, pattern, line):
    with pytest.raises(explorer.CompileError, match=pattern) as e:
        _reg(name, c_source=source)
    assert e.value.line == line
    assert name not in custom.REGISTRY


@needs_nvcc
def test_bad_cuda_source_is_a_compile_error_at_the_users_line():
    src = "__device__ void bad_cu(long long n, const long long *dims, const float *x, float *y) {\n" \
          "  long long i = threadIdx.x;\n  y[i] = x[i] +;\n}\n"
    with pytest.raises(explorer.CompileError, match=r"CUDA compiler error at line 3 of your cuda_source: "
                                                    r"`y\[i\] = x\[i\] \+;`") as e:
        _reg("bad_cu", cuda_source=src)
    assert e.value.line == 3


@pytest.mark.parametrize("name, pattern", [
    ("my-kernel", r"name 'my-kernel' is not an identifier"),
    ("9lives", r"is not an identifier"),
    ("add", r"'add' is a built-in op of the explorer; pick another name"),
    ("for", r"'for' is reserved"),
    ("expf", r"'expf' is reserved"),
    ("ke_mine", r"'ke_mine' is reserved"),
    ("int", r"'int' is reserved"),
    (None, r"is not an identifier"),
])
def test_bad_names(name, pattern):
    with pytest.raises(explorer.ExplorerError, match=pattern):
        _reg(name, c_source=SWISH_C, check_cuda=False)


def test_name_collision_with_other_sources(swish):
    with pytest.raises(explorer.ExplorerError, match=r"'swish' is already registered with other sources; pass "
                                                     r"replace=True"):
        _reg("swish", c_source=SWISH_C + "\n")


@pytest.mark.parametrize("case, shape_fn, pattern", [
    (0, lambda s: s[3], r"shape_fn\(\(4, 3\),\) raised IndexError"),
    (1, lambda s: "abc", r"shape_fn returned 'abc'; it must return a tuple of non-negative ints"),
    (2, lambda s: (4, -1), r"shape_fn returned \(4, -1\)"),
    (3, lambda s: (4,), r"the reference returned shape \(4, 3\) but shape_fn says \(4,\)"),
])
def test_bad_shape_fn(case, shape_fn, pattern):
    k = explorer.custom_kernel(f"bad_shape{case}", reference=np_swish, shape_fn=shape_fn,
                               cuda_source=SWISH_CU.replace("swish(", f"bad_shape{case}("), check_cuda=False)
    x = np.ones((4, 3), np.float32)
    with pytest.raises(explorer.ShapeError, match=pattern):
        explorer.compile(lambda x: k(x), x, target="reference")(x)


def test_wrong_dtype_arity_and_scalar_inputs(swish):
    x = np.ones((4, 3), np.float32)
    with pytest.raises(explorer.DTypeError, match=r"swish: input 0 is float64 but the kernel was registered for "
                                                  r"float32; cast it with .astype\(np.float32\)"):
        explorer.compile(lambda x: swish(x.astype(np.float64)), x, target="reference")
    with pytest.raises(explorer.ShapeError, match=r"swish: takes 1 input\(s\), got 2"):
        explorer.compile(lambda x: swish(x, x), x, target="reference")
    add2 = explorer.custom_kernel("add2", reference=lambda a, b: a + b, cuda_source=(
        "__device__ void add2(long long n, const long long *dims, const float *a, const float *b, float *y) {\n"
        "  long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; if (i < n) y[i] = a[i] + b[i]; }"),
        check_cuda=False)
    with pytest.raises(explorer.ExplorerError, match=r"add2: input .* is a scalar constant; custom kernels take "
                                                     r"arrays: pass np.full"):
        explorer.compile(lambda x: add2(x, 2.0), x, target="sim")


def test_bad_arguments():
    with pytest.raises(explorer.ExplorerError, match=r"give c_source .* and/or cuda_source"):
        explorer.custom_kernel("no_src", reference=np_swish)
    with pytest.raises(explorer.ExplorerError, match=r"reference must be a NumPy function"):
        explorer.custom_kernel("no_ref", reference=3, c_source=SWISH_C)
    with pytest.raises(explorer.ExplorerError, match=r"c_source must be a str"):
        explorer.custom_kernel("bytes_src", reference=np_swish, c_source=b"void f() {}")
    with pytest.raises(explorer.DTypeError, match=r"dtype bool is not supported for custom kernels"):
        explorer.custom_kernel("bool_k", reference=np_swish, c_source=SWISH_C, dtype=np.bool_)


@needs_cc
def test_missing_source_for_the_target(swish):
    only_cuda = explorer.custom_kernel("only_cuda", reference=np_swish, check_cuda=False,
                                       cuda_source=SWISH_CU.replace("swish(", "only_cuda("))
    with pytest.raises(explorer.CompileError, match=r"only_cuda has no c_source, which target cpu needs"):
        explorer.compile(lambda x: only_cuda(x), np.ones(4, np.float32), target="cpu")
    # sim runs the reference: no source needed there
    c = explorer.compile(lambda x: only_cuda(x), np.zeros(4, np.float32), target="sim")
    np.testing.assert_allclose(c(np.zeros(4, np.float32)), np.full(4, 0.0, np.float32))


def test_dashboard_and_report_show_the_custom_kernel(swish, data):
    pytest.importorskip("ipywidgets")
    import widgets
    ex = widgets.Explorer(lambda x, w, b: mlp(x, w, b, swish), *data, target="sim")
    assert "swish" in ex.compiled.stage("fused").text()
    html = ex.compiled.to_html()
    assert "swish_kernel" in html and custom.OPAQUE_REASON in html


def test_a_schedule_for_a_custom_kernel_is_a_schedule_error(swish, data):
    s = explorer.Schedule()
    s.split("i0", 4)
    with pytest.raises(explorer.ScheduleError, match=r"swish_kernel is a custom kernel \(swish\); it takes no "
                                                     r"Schedule"):
        explorer.compile(lambda x, w, b: mlp(x, w, b, swish), *data, target="sim", schedule={"swish_kernel": s})
