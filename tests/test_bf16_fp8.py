"""bfloat16 end to end and fp8 as storage (ml_dtypes): differential tests of reference, sim and cpu against
NumPy/ml_dtypes for elementwise ops, reductions and matmul; nvcc --ptx of the bf16/fp8 CUDA for sm_80 and
sm_90; fp8 on the C backend is a clear DTypeError. Skips when ml_dtypes is not installed."""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer.backends import cpu, nvcc

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E5M2 = np.dtype(ml_dtypes.float8_e5m2)

HAVE_CC, CC_WHY = cpu.available()
HAVE_NVCC, NVCC_WHY = nvcc.available()
TARGETS = ["reference", "sim", pytest.param("cpu", marks=pytest.mark.skipif(not HAVE_CC, reason=CC_WHY))]
needs_nvcc = pytest.mark.skipif(not HAVE_NVCC, reason=NVCC_WHY)


def f32(a):
    return np.asarray(a, np.float32)


def bf(a):
    return np.asarray(a, np.float32).astype(BF16)


# NumPy on bf16 arrays: every op's result is rounded to bf16 (ml_dtypes' ufuncs), which the explorer matches
def elementwise(x, y):
    return np.tanh(x) * y + np.exp(-x) / (y * y + 1.5)


def chain(x):
    return np.maximum(x * x - 0.25, 0) + np.sqrt(np.abs(x)) * x


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def layer(x, w, b):
    return np.maximum(x @ w + b, 0)


def _np_softmax_f32acc(x):
    # the explorer's reductions accumulate in f32 and round once (like the cuda/cpu kernels)
    m = f32(x).max(axis=-1, keepdims=True).astype(BF16)
    e = np.exp(x - m)
    s = f32(e).sum(axis=-1, keepdims=True).astype(BF16)
    return e / s


def _np_layer_f32acc(x, w, b):
    return np.maximum((f32(x) @ f32(w)).astype(BF16) + b, 0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    return {"x": bf(rng.standard_normal((37, 70))), "y": bf(rng.standard_normal((37, 70))),
            "w": bf(rng.standard_normal((70, 48))), "b": bf(rng.standard_normal(48)),
            "big_x": bf(rng.standard_normal((128, 96))), "big_w": bf(rng.standard_normal((96, 130)))}


@pytest.mark.parametrize("target", TARGETS)
def test_bf16_elementwise_rounds_every_op_like_numpy(data, target):
    x, y = data["x"], data["y"]
    for fn, args in ((elementwise, (x, y)), (chain, (x,))):
        c = explorer.compile(fn, *args, target=target)
        got = c(*args)
        assert got.dtype == BF16
        # bit-exact against NumPy/ml_dtypes: each op's result rounded to bf16, not one rounding at the end
        np.testing.assert_array_equal(f32(got), f32(fn(*args)))


@pytest.mark.parametrize("target", TARGETS)
def test_bf16_reductions_accumulate_in_f32(data, target):
    x = data["x"]
    c = explorer.compile(softmax, x, target=target)
    got = c(x)
    assert got.dtype == BF16
    want = _np_softmax_f32acc(x)
    np.testing.assert_allclose(f32(got), f32(want), rtol=2 ** -7, atol=1e-3)   # 1 bf16 ulp
    for fn in (lambda x: x.sum(axis=0), lambda x: x.max(axis=1), lambda x: x.min(), lambda x: x.mean(axis=1)):
        c = explorer.compile(fn, x, target=target)
        w = fn(f32(x)).astype(BF16)   # one rounding of the exact f32 result
        np.testing.assert_allclose(f32(c(x)), f32(w), rtol=2 ** -7, atol=1e-2)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape", ["small", "big"])
def test_bf16_matmul_accumulates_in_f32(data, target, shape):
    if shape == "small":
        x, w, b = data["x"], data["w"], data["b"]
        c = explorer.compile(layer, x, w, b, target=target)
        got, want = c(x, w, b), _np_layer_f32acc(x, w, b)
    else:
        x, w = data["big_x"], data["big_w"]
        c = explorer.compile(lambda x, w: x @ w, x, w, target=target)
        got, want = c(x, w), (f32(x) @ f32(w)).astype(BF16)
    assert got.dtype == BF16
    np.testing.assert_allclose(f32(got), f32(want), rtol=2 ** -7, atol=2e-2)
    # against the f32 answer the only loss is bf16's own rounding (a bf16 accumulator would lose far more)
    exact = f32(x) @ f32(data["w"] if shape == "small" else w)
    if shape == "big":
        assert np.max(np.abs(f32(got) - exact) / (np.abs(exact) + 1)) < 2 ** -7


def test_bf16_mixed_with_f32_and_dtype_knob(data):
    x = data["x"]
    c = explorer.compile(lambda x: (x.astype(np.float32) * 3).astype(BF16) + x, x, target="sim")
    np.testing.assert_array_equal(f32(c(x)), f32((f32(x) * 3).astype(BF16) + x))
    # the dashboard's dtype knob passes the name; float inputs are cast
    c = explorer.compile(lambda a: np.tanh(a) * 2, np.linspace(-1, 1, 16, dtype=np.float32), dtype="bfloat16",
                         target="sim")
    assert c.examples[0].dtype == BF16 and c.max_error() == 0.0
    assert "bf16[16]" in c.stage("traced").text()


def test_bf16_cost_model_counts_two_bytes(data):
    from explorer import costmodel
    x = data["x"]
    c = explorer.compile(lambda x: np.tanh(x), x, target="sim")
    (k,) = costmodel.kernel_costs(c, counters=False)
    assert k.bytes == 2 * 2 * x.size
    dev = costmodel.device("H100")
    assert dev.peak(BF16) == dev.peak(np.float16)


@pytest.mark.skipif(not HAVE_CC, reason=CC_WHY)
def test_bf16_c_uses_software_conversion(data):
    c = explorer.compile(chain, data["x"], target="cpu")
    src = c.codegen.source()
    assert "uint16_t* restrict x" in src and "ke_f32_to_bf16(" in src and "ke_round_bf16(" in src
    # round to nearest even, including ties, NaN and Inf, exactly as ml_dtypes does
    special = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 3.0e38, np.inf, -np.inf, np.nan, 1e-40,
                        65504.0, 0.0], np.float32)
    c = explorer.compile(lambda a: a.astype(BF16), special, target="cpu")
    np.testing.assert_array_equal(f32(c(special)), f32(special.astype(BF16)))


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_bf16_cuda_compiles(data, arch):
    for fn, args in ((layer, (data["x"], data["w"], data["b"])), (softmax, (data["x"],)),
                     (elementwise, (data["x"], data["y"]))):
        c = explorer.compile(fn, *args, target="sim")
        src = c.codegen.source()
        assert "#include <cuda_bf16.h>" in src and "__nv_bfloat16* __restrict__" in src
        assert ".entry" in nvcc.check(src, arch=arch)


# ----------------------------------------------------------------------------- fp8
@pytest.mark.parametrize("dt", [E4M3, E5M2], ids=["e4m3", "e5m2"])
def test_fp8_storage_f32_compute_on_sim(dt):
    rng = np.random.default_rng(3)
    xq = rng.standard_normal((24, 40)).astype(np.float32).astype(dt)
    wq = rng.standard_normal((40, 16)).astype(np.float32).astype(dt)
    c = explorer.compile(lambda x, w: x.astype(np.float32) @ w.astype(np.float32), xq, wq, target="sim")
    np.testing.assert_allclose(c(xq, wq), f32(xq) @ f32(wq), rtol=1e-5, atol=1e-5)
    # fp8 arithmetic: computed in f32, each result rounded to fp8, as ml_dtypes does
    c = explorer.compile(lambda x: x * 2 + x, xq, target="sim")
    got = c(xq)
    assert got.dtype == dt
    np.testing.assert_array_equal(f32(got), f32(xq * 2 + xq))
    c = explorer.compile(lambda x: x.sum(axis=1), xq, target="reference")
    np.testing.assert_array_equal(f32(c(xq)), f32(f32(xq).sum(axis=1).astype(dt)))


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_fp8_cuda_compiles(arch):
    xq = np.ones((16, 32), np.float32).astype(E4M3)
    c = explorer.compile(lambda x: (x * 2 + x).astype(np.float32).sum(axis=1), xq, target="sim")
    src = c.codegen.source()
    assert "#include <cuda_fp8.h>" in src and "__nv_fp8_e4m3* __restrict__" in src
    # stores convert without saturating, like ml_dtypes (overflow: NaN for e4m3fn, inf for e5m2)
    assert "ke_to_e4m3(" in src and "__NV_NOSAT" in src
    assert ".entry" in nvcc.check(src, arch=arch)


@pytest.mark.skipif(not HAVE_CC, reason=CC_WHY)
def test_fp8_on_cpu_is_a_clear_dtype_error():
    xq = np.ones(8, np.float32).astype(E5M2)
    with pytest.raises(explorer.DTypeError, match=r"fp8 \(f8e5m2\) is a storage dtype for the cuda and sim "
                                                  r"targets; .* compile with target='sim'"):
        explorer.compile(lambda x: x * 2, xq, target="cpu")


def test_unsupported_ml_dtype_is_a_dtype_error():
    with pytest.raises(explorer.DTypeError, match=r"float8_e4m3fnuz is not supported; use one of .*bfloat16"):
        explorer.compile(lambda x: x, np.ones(4, ml_dtypes.float8_e4m3fnuz), target="reference")


def test_compare_on_bf16_checks_against_the_f32_accumulating_reference(data):
    x = data["x"]
    r = explorer.compare(lambda a: np.exp(a - a.max(axis=1, keepdims=True)).sum(axis=1), x, target="sim")
    errs = {v.name: v.max_abs_error for v in r.variants}
    assert errs["fused"] == 0.0 and errs["unfused"] == 0.0
    assert errs["numpy"] > 0   # NumPy sums bf16 in bf16: the explorer's f32 accumulation is the reference
