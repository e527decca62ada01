"""Adversarial bad input to the public API: every failure is an ExplorerError subclass with a clear message,
and user text (parameter names) never breaks or aliases generated code."""
from __future__ import annotations

import re

import numpy as np
import pytest

import explorer
from explorer import DTypeError, ExplorerError, ScheduleError, ShapeError, TraceError, UnsupportedOpError
from explorer.compiled import KernelIndexError
from explorer.tracing import UnsupportedAttributeError
from test_errors import check_raises, check_trace_error  # noqa: E402  (tests/ is on sys.path, as test_backends_diff uses)

X = np.ones((2, 3), np.float32)
V = np.ones(64, np.float32)
A = np.ones((32, 32), np.float32)


def _ew(a):
    return np.exp(a) * 2


def _mm(a, b):
    return np.maximum(a @ b + 1, 0)


# ----------------------------------------------------------------------------- tracing
def _matrix(data, dtype):
    import warnings
    with warnings.catch_warnings():   # np.matrix is deprecated; users still pass one, so we test it
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.matrix(data, dtype)


TRACE_CASES = [
    # (id, fn, examples, exception class, phrase in message)
    ("method_sum_dtype", lambda x: x.sum(dtype=np.float64), (X,), TraceError, "dtype"),
    ("method_max_out", lambda x: x.max(axis=0, out=np.zeros(3)), (X,), TraceError, "out=..."),
    ("method_mean_where", lambda x: x.mean(where=x > 0), (X,), TraceError, "where"),
    ("method_reshape_order", lambda x: x.reshape(3, 2, order="F"), (X,), UnsupportedOpError, "only C order"),
    ("ndarray_method_missing", lambda x: x.argmax(), (X,), UnsupportedOpError, "x.argmax is not supported"),
    ("ndarray_method_lists_supported", lambda x: x.argmin(), (X,), UnsupportedOpError, "closest supported: x.min"),
    ("ndarray_attr_missing", lambda x: x * x.nbytes, (X,), UnsupportedOpError, "x.nbytes"),
    ("reshape_str", lambda x: x.reshape("ab"), (X,), ShapeError, "shape must be a tuple of ints"),
    ("transpose_str", lambda x: x.transpose("a"), (X,), ShapeError, "axes must be a tuple of ints"),
    ("broadcast_to_str", lambda x: np.broadcast_to(x, "ab"), (X,), ShapeError, "broadcast_to: shape must be"),
    ("sum_axis_float", lambda x: x.sum(axis=1.0), (X,), ShapeError, "axis must be an int"),
    ("sum_axis_str", lambda x: np.sum(x, axis="a"), (X,), ShapeError, "got str 'a'"),
    ("np_size_bad_axis", lambda x: x * np.size(x, 4), (X,), ShapeError, "size: axis 4 is out of range"),
    ("slice_float_bound", lambda x: x[0.5:2], (X,), TraceError, "slice bounds must be ints"),
    ("slice_traced_bound", lambda x: x[x.sum():2], (X,), TraceError, "cannot be a slice bound"),
    ("pow_mod", lambda x: pow(x, 2, 3), (X,), UnsupportedOpError, "pow(x, y, mod)"),
    ("round_builtin", lambda x: round(x), (X,), UnsupportedOpError, "round()"),
    ("bool_negative", lambda x: -x, (np.ones(3, bool),), DTypeError, "neg: not defined for operand dtype(s) bool"),
    ("matrix_example", lambda x: x * x, (_matrix([[1.0, 2.0]], np.float32),), TraceError, "np.asarray(m)"),
    ("masked_example", lambda x: x * 2, (np.ma.masked_array(X, mask=X > 0),), TraceError, "mask would be ignored"),
]


@pytest.mark.parametrize("case", TRACE_CASES, ids=[c[0] for c in TRACE_CASES])
def test_trace_errors(case):
    check_trace_error(case)


def test_missing_attribute_keeps_hasattr_working():
    seen = {}

    def f(x):
        seen["argmax"] = hasattr(x, "argmax")
        seen["sum"] = hasattr(x, "sum")
        return x * 2
    explorer.trace(f, X)
    assert seen == {"argmax": False, "sum": True}
    assert issubclass(UnsupportedAttributeError, AttributeError)


def test_huge_strided_example_is_a_shape_error():
    big = np.broadcast_to(np.ones(1, np.float32), (1 << 20, 1 << 20))
    with pytest.raises(ShapeError, match="does not fit in memory"):
        explorer.compile(_ew, big, target="reference", verbose=False)


# ----------------------------------------------------------------------------- compile options
OPTION_CASES = [
    ("unknown_kwarg_knob", _ew, (X,), dict(tile=(64, 64, 16)), ExplorerError, "pass schedule={'tile': ...}"),
    ("unknown_kwarg_typo", _ew, (X,), dict(fast_maths=True), ExplorerError, "did you mean fast_math=?"),
    ("fast_math_str", _ew, (X,), dict(fast_math="yes"), ExplorerError, "fast_math='yes': must be True or False"),
    ("decompose_none", _ew, (X,), dict(decompose=None), ExplorerError, "decompose=None"),
    ("verbose_str", _ew, (X,), dict(verbose="no"), ExplorerError, "verbose='no'"),
    ("arch_bad", _ew, (X,), dict(arch="sm_xx"), ExplorerError, "not a CUDA architecture"),
    ("arch_int", _ew, (X,), dict(arch=80), ExplorerError, "'sm_80'"),
    ("thread_tile_int", _mm, (A, A), dict(schedule={"thread_tile": 4}), ScheduleError, "must be (TM, TN)"),
    ("thread_tile_none", _mm, (A, A), dict(schedule={"thread_tile": None}), ScheduleError, "must be (TM, TN)"),
    ("unroll_int", _ew, (V,), dict(schedule={"unroll": 4}), ScheduleError, "unroll: 4 must be True or False"),
    ("shared_str", _mm, (A, A), dict(schedule={"shared": "yes"}), ScheduleError, "shared: 'yes' must be True"),
    ("schedule_fn_raises", _ew, (V,), dict(schedule=lambda c, t: 1 / 0), ScheduleError,
     "raised ZeroDivisionError"),
    ("schedule_fn_returns_none", _ew, (V,), dict(schedule=lambda c, t: None), ScheduleError,
     "returned NoneType, not an explorer.Schedule"),
]


@pytest.mark.parametrize("case", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_compile_option_errors(case):
    _, fn, examples, kw, exc, phrase = case
    kw = {"target": "sim", "verbose": False, **kw}
    check_raises(lambda: explorer.compile(fn, *examples, **kw), exc, phrase)


@pytest.mark.parametrize("target", ["cpu", "sim"])
@pytest.mark.parametrize("case", [
    ("elementwise", lambda a: np.exp(a) * 2, ((0, 3),)),
    ("sum_over_empty", lambda a: a.sum(axis=0), ((0, 3),)),
    ("matmul_empty_m", lambda a, b: a @ b, ((0, 3), (3, 4))),
    ("matmul_empty_k", lambda a, b: a @ b + 1, ((2, 0), (0, 4))),
], ids=lambda c: c[0] if isinstance(c, tuple) else c)
def test_zero_size_arrays_run(target, case):
    """Zero-size dims used to fail with 'split(n, 1): the tile 1 is larger than the axis extent 0'."""
    if target == "cpu":
        from explorer.backends import cpu
        if not cpu.available()[0]:
            pytest.skip("no C compiler")
    _, fn, shapes = case
    ex = [np.ones(s, np.float32) for s in shapes]
    c = explorer.compile(fn, *ex, target=target, verbose=False)
    got, want = c(*ex), fn(*ex)
    assert got.shape == want.shape and np.array_equal(got, want)


# ----------------------------------------------------------------------------- Compiled
@pytest.fixture(scope="module")
def compiled():
    return explorer.compile(lambda a, b: np.maximum(a * b + 1, 0), X, X, target="reference", verbose=False)


CALL_CASES = [
    ("ragged_list", lambda c: c([[1.0], [1.0, 2.0]], X), TraceError, "cannot be converted to an array"),
    ("string", lambda c: c("abc", X), TraceError, "input 0 is a str, not an array"),
    ("none", lambda c: c(None, X), TraceError, "input 0 is None"),
    ("masked", lambda c: c(np.ma.masked_array(X, mask=X > 0), X), TraceError, "mask would be ignored"),
    ("keywords", lambda c: c(a=X, b=X), TraceError, "pass the inputs positionally"),
    ("kernel_index", lambda c: c.kernels[5], KernelIndexError, "kernel index 5 out of range"),
    ("benchmark_repeat_0", lambda c: c.benchmark(repeat=0), ExplorerError, "repeat=0: must be an integer >= 1"),
    ("benchmark_repeat_neg", lambda c: c.benchmark(repeat=-1), ExplorerError, "repeat=-1"),
    ("benchmark_repeat_str", lambda c: c.benchmark(repeat="x"), ExplorerError, "repeat='x'"),
    ("benchmark_repeat_float", lambda c: c.benchmark(repeat=1.5), ExplorerError, "repeat=1.5"),
    ("benchmark_warmup_neg", lambda c: c.benchmark(warmup=-1), ExplorerError, "warmup=-1: must be an integer >= 0"),
    ("text_bad_option", lambda c: c.stage("fused").text(bogus=1), ExplorerError, "got bogus="),
    ("wks_index_str", lambda c: c.with_kernel_source("0", "x"), ExplorerError, "kernel index must be an int"),
    ("wks_source_none", lambda c: c.with_kernel_source(0, None), ExplorerError, "source must be a str"),
    ("wks_source_bytes", lambda c: c.with_kernel_source(0, b"x"), ExplorerError, "got bytes"),
    ("wks_rtol_str", lambda c: c.with_kernel_source(0, "x", rtol="a"), ExplorerError, "rtol='a' must be a number"),
]


@pytest.mark.parametrize("case", CALL_CASES, ids=[c[0] for c in CALL_CASES])
def test_compiled_errors(compiled, case):
    _, call, exc, phrase = case
    check_raises(lambda: call(compiled), exc, phrase)


def test_kernel_index_error_is_an_index_error_too(compiled):
    with pytest.raises(IndexError):
        compiled.kernels[99]
    assert compiled.kernels[-1] is compiled.kernels[0]


def test_compiled_called_inside_a_trace(compiled):
    with pytest.raises(TraceError, match="cannot be called inside explorer.trace"):
        explorer.trace(lambda a: compiled(a, a), X)


# ----------------------------------------------------------------------------- compare / sweep
SWEEP_ARGS = dict(target="sim", repeat=1, warmup=0, progress=False, verbose=False)

COMPARE_CASES = [
    ("baselines_bad_entry", lambda: explorer.compare(_ew, X, target="sim", baselines=[3]), "unknown baseline 3"),
    ("repeat_str", lambda: explorer.compare(_ew, X, target="sim", repeat="3"), "got repeat='3'"),
    ("warmup_str", lambda: explorer.compare(_ew, X, target="sim", warmup="3"), "got warmup='3'"),
    ("unknown_option", lambda: explorer.compare(_ew, X, target="sim", tile=3), "unknown compile option tile="),
    ("sweep_sizes_negative", lambda: explorer.sweep(_ew, sizes=[-5], **SWEEP_ARGS), "positive integers, got -5"),
    ("sweep_sizes_zero", lambda: explorer.sweep(_ew, sizes=[0], **SWEEP_ARGS), "positive integers, got 0"),
    ("sweep_sizes_float", lambda: explorer.sweep(_ew, sizes=[10.5], **SWEEP_ARGS), "got 10.5"),
    ("sweep_sizes_str", lambda: explorer.sweep(_ew, sizes="100", **SWEEP_ARGS), "pass a list of positive ints"),
    ("sweep_make_args_raises", lambda: explorer.sweep(_ew, make_args=lambda n: 1 / 0, sizes=[64], **SWEEP_ARGS),
     "make_args(64) raised ZeroDivisionError"),
    ("sweep_make_args_not_callable", lambda: explorer.sweep(_ew, make_args=3, sizes=[64], **SWEEP_ARGS),
     "make_args must be a function"),
    ("sweep_baselines", lambda: explorer.sweep(_ew, sizes=[64], baselines=("numpy",), **SWEEP_ARGS),
     "does not take baselines="),
    ("sweep_repeat_0", lambda: explorer.sweep(_ew, sizes=[64], **{**SWEEP_ARGS, "repeat": 0}), "got repeat=0"),
]


@pytest.mark.parametrize("case", COMPARE_CASES, ids=[c[0] for c in COMPARE_CASES])
def test_compare_sweep_errors(case):
    _, call, phrase = case
    with pytest.raises(ExplorerError) as info:
        call()
    assert phrase in str(info.value), str(info.value)


def test_compare_baselines_as_string_or_none():
    r = explorer.compare(_ew, V, target="sim", baselines="numpy", repeat=1, warmup=0, verbose=False)
    assert [v.name for v in r.variants] == ["fused", "unfused", "numpy"]
    r = explorer.compare(_ew, V, target="sim", baselines=None, repeat=1, warmup=0, verbose=False)
    assert [v.name for v in r.variants] == ["fused", "unfused"]


def test_sweep_single_int_size():
    s = explorer.sweep(_ew, sizes=64, **SWEEP_ARGS)
    assert [r["size"] for r in s.rows] == [64]


# ----------------------------------------------------------------------------- command line
def test_report_function_with_only_varargs(tmp_path, capsys):
    from explorer.report import main
    (tmp_path / "m.py").write_text("def star(*a):\n    return a[0] * 2\n")
    assert main([f"{tmp_path / 'm.py'}::star", "--shapes", "x=3", "--target", "sim", "--no-charts",
                 "-o", str(tmp_path / "r.html")]) == 2
    assert "no named positional parameters" in capsys.readouterr().err


@pytest.mark.parametrize("argv, phrase", [
    (["bench", "--repeat", "0"], "--repeat must be >= 1"),
    (["bench", "--baselines", "nope"], "unknown 'nope'"),
    (["report", "m.py::f", "--shapes", "x=3", "--repeat", "0"], "--repeat: must be >= 1"),
])
def test_cli_bad_numbers_fail_before_work(argv, phrase, capsys):
    from explorer.__main__ import main
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert phrase in capsys.readouterr().err


# ----------------------------------------------------------------------------- names in generated code
def _collide(out0, t2, i0, n, acc, expf, red_t, x_shared):
    r = out0 + t2 * 2 + i0 * 3 + n * 4 + acc * 5 + expf * 6 + red_t * 7 + x_shared * 8
    return np.maximum(r, 0), r.sum(axis=1)


def _params(source: str) -> list[str]:
    m = re.search(r"void\s+(?:__launch_bounds__\(\d+\)\s+)?\w+\(([^)]*)\)", source)
    return [p.split()[-1] for p in m.group(1).split(",")]


@pytest.mark.parametrize("target", ["cpu", "sim", "cuda"])
def test_parameter_names_never_alias_generated_names(target):
    """A parameter named out0 used to alias the output buffer out0 (wrong results, corrupted inputs on
    cpu; 'stores to an input' on sim) and one named i0 was shadowed by CUDA's `const int i0`."""
    if target == "cpu":
        from explorer.backends import cpu
        if not cpu.available()[0]:
            pytest.skip("no C compiler")
    rng = np.random.default_rng(0)
    ex = [rng.standard_normal((4, 8)).astype(np.float32) for _ in range(8)]
    keep = [a.copy() for a in ex]
    c = explorer.compile(_collide, *ex, target=target, verbose=False)
    for k in c.kernels:
        params = _params(k.source)
        assert len(set(params)) == len(params), params
        locals_ = set(re.findall(r"(?:const int|int)\s+([A-Za-z_]\w*)\s*=", k.source))
        assert not locals_ & set(params), (locals_ & set(params), k.source)
    if target == "cuda":  # generated only (no GPU needed); the simulator runs the same CUDA-bound loop IR
        import shutil
        if shutil.which("nvcc"):
            from explorer.backends import nvcc
            nvcc.check(c.codegen.source(), arch="sm_80")  # CompileError if a parameter were redeclared
        return
    got = c(*ex)
    want = _collide(*keep)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)
    for a, b in zip(ex, keep):
        np.testing.assert_array_equal(a, b)  # inputs untouched


def test_hostile_function_name_is_sanitized():
    def f(a):
        return a * 2
    f.__name__ = f.__qualname__ = '<script>alert("x")</script>; int main(){'
    c = explorer.compile(f, X, target="sim", verbose=False)
    src = "\n".join(k.source for k in c.kernels)
    assert "<script>" not in src and "alert" not in src
    from explorer.report import to_html
    assert "<script>alert" not in to_html(c, charts=False, resources=False)
