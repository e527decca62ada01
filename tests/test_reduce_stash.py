"""Reduce kernels evaluate a costly elementwise value shared by the last accumulation phase and
the final loop once (lower.stash_shared_values): softmax stores exp(x - max) into out0 while
summing it, and the final loop computes out0 / sum from it.

Each test checks both the shape of the generated code (stash applied or not) and the results
against NumPy, on the C backend and on the simulator (which runs the CUDA-tiled loop IR).
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import explorer
from explorer import loopir as L
from explorer.backends import cpu

HAVE_CC, WHY = cpu.available()
needs_cc = pytest.mark.skipif(not HAVE_CC, reason=f"no C compiler: {WHY}")

RNG = np.random.default_rng(11)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg"))


def softmax_last(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def softmax_first(x):
    e = np.exp(x - x.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def softmax_nokeep(x):
    # keepdims=False along axis 0 broadcasts without a reshape, so it stays one fused kernel
    e = np.exp(x - x.max(0))
    return e / e.sum(0)


def nn_softmax_0(x):
    return explorer.nn.softmax(x, axis=0)


def compute_of(c, stage="lowered"):
    (k,) = c.stage(stage).ir.kernels
    return k, c.stage("lowered").ir.compute(k.name)


def count_calls(kernel: L.Kernel, fn: str) -> int:
    n = 0
    for s in L.walk(kernel.body):
        for e in L.stmt_exprs(s):
            n += sum(isinstance(x, L.Call) and x.fn == fn for x in L.walk_expr(e))
    return n


def kernel_function(source: str, name: str) -> str:
    """The C text of the kernel function itself (not the prelude or micro-kernel helpers)."""
    start = source.index(f"void {name}(")
    return source[start:]


def run(c, x):
    """The compiled function's outputs as a list."""
    out = c.run(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def check(got, want, dtype):
    # f16: NumPy rounds exp and the running sum to half precision, the kernels sum in f32
    rtol, atol = {np.float16: (4e-3, 4e-3), np.float32: (2e-5, 1e-9), np.float64: (1e-12, 1e-15)}[dtype]
    got = np.asarray(got)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol,
                               equal_nan=True)
    # NaN and Inf positions exactly as NumPy's
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(np.isinf(got), np.isinf(want))


def special_rows(shape, dtype, axis):
    """Random values plus rows (along `axis`) holding NaN, +inf, -inf and all -inf."""
    x = (RNG.standard_normal(shape) * 3).astype(dtype)
    rows = [x[1], x[2], x[3], x[4]] if axis == -1 else [x[:, 1], x[:, 2], x[:, 3], x[:, 4]]
    rows[0][5] = np.nan
    rows[1][7] = np.inf
    rows[2][::3] = -np.inf
    rows[3][:] = -np.inf
    return x


# ------------------------------------------------------------------------- the transformation
@needs_cc
def test_cpu_softmax_calls_exp_once_per_element():
    x = RNG.standard_normal((64, 1024)).astype(np.float32)
    c = explorer.compile(explorer.nn.softmax, x, target="cpu", verbose=False)
    src = kernel_function(c.kernels[0].source, c.kernels[0].name)
    assert src.count("ke_expf(") == 1, src
    assert re.search(r"out0\[[^\]]+\] = out0\[[^\]]+\] / acc\d+;", src), src
    assert "stash exp(" in src and "in out0" in src
    check(run(c, x)[0], softmax_last(x.astype(np.float64)).astype(np.float32), np.float32)


@needs_cc
def test_loop_ir_has_one_exp_and_the_stash():
    x = RNG.standard_normal((32, 256)).astype(np.float32)
    c = explorer.compile(explorer.nn.softmax, x, target="cpu", verbose=False)
    for stage in ("lowered", "tiled"):
        k, comp = compute_of(c, stage)
        assert count_calls(k, "exp") == 1, k.text()
        assert "# stash exp(x[i0, r1] - acc" in k.text() and "in out0" in k.text()
    (st,) = comp.stashes
    assert st.buffer.name == "out0" and isinstance(st.value, L.Call) and st.value.fn == "exp"
    (fs,) = comp.full_stores
    assert isinstance(fs.value, L.BinOp) and fs.value.op == "/" and fs.value.a == L.Load(st.buffer, st.indices)
    assert not any(isinstance(x, L.Call) for x in L.walk_expr(fs.value))


@pytest.mark.parametrize("target", ["sim", "cuda"])
def test_gpu_targets_recompute_instead_of_a_global_round_trip(target):
    x = RNG.standard_normal((32, 256)).astype(np.float32)
    c = explorer.compile(explorer.nn.softmax, x, target=target, verbose=False)
    for stage in ("lowered", "tiled"):
        k, comp = compute_of(c, stage)
        assert comp.stashes == () and count_calls(k, "exp") == 2 and "# stash" not in k.text(), k.text()


def test_docstring_shows_before_and_after():
    from explorer.passes.lower import stash_shared_values
    doc = stash_shared_values.__doc__
    assert "Before" in doc and "After" in doc and "out0[i0, r1] = out0[i0, r1] / acc5" in doc


# ------------------------------------------------------------------------- results vs NumPy
TARGETS = [pytest.param("cpu", marks=needs_cc), "sim"]
SOFTMAXES = [(softmax_last, -1), (softmax_first, 0), (softmax_nokeep, 0), (explorer.nn.softmax, -1),
             (nn_softmax_0, 0)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("fn,axis", SOFTMAXES, ids=[f.__name__ + str(a) for f, a in SOFTMAXES])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64], ids=["f32", "f16", "f64"])
def test_softmax_matches_numpy_with_special_rows(target, fn, axis, dtype):
    shape = (24, 64) if target == "sim" else (40, 96)
    x = special_rows(shape, dtype, axis)
    with np.errstate(invalid="ignore", over="ignore"):
        want = fn(x) if fn not in (explorer.nn.softmax, nn_softmax_0) else \
            (softmax_last(x) if axis == -1 else softmax_first(x))
    c = explorer.compile(fn, x, target=target, verbose=False)
    k, comp = compute_of(c, "tiled")
    if target != "cpu":
        # GPU targets always recompute. (f16 exp(...) is rounded to half at the op's boundary, as NumPy
        # does, so storing it in the f16 output and reading it back is exact: f16 stashes too.)
        assert comp.stashes == () and count_calls(k, "exp") == 2, k.text()
    else:
        assert len(comp.stashes) == 1 and count_calls(k, "exp") == 1, k.text()
    with np.errstate(invalid="ignore", over="ignore"):
        check(run(c, x)[0], want, dtype)


# ------------------------------------------------------------------------- where the rule must not apply
def softmax_f64_out(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float64)


def other_consumer(x):
    m = x.max(-1, keepdims=True)
    return np.tanh(x - m) / np.exp(x - m).sum(-1, keepdims=True)


def plain_normalize(x):
    return x / x.sum(-1, keepdims=True)


NO_STASH = [softmax_f64_out, other_consumer, plain_normalize]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("fn", NO_STASH, ids=[f.__name__ for f in NO_STASH])
def test_no_stash_when_output_dtype_or_expression_differs(target, fn):
    x = special_rows((16, 64), np.float32, -1)
    c = explorer.compile(fn, x, target=target, verbose=False)
    k, comp = compute_of(c, "tiled")
    assert comp.stashes == ()
    assert "# stash" not in k.text()
    with np.errstate(invalid="ignore", over="ignore"):
        want = fn(x)
        check(run(c, x)[0], want, np.float32)
    if fn is softmax_f64_out:
        assert count_calls(k, "exp") == 2     # recomputed: a stored f64 would not be the f32 exp


@pytest.mark.parametrize("target", TARGETS)
def test_layernorm_is_unaffected(target):
    x = special_rows((16, 64), np.float32, -1)
    c = explorer.compile(explorer.nn.layernorm, x, target=target, verbose=False)
    _, comp = compute_of(c, "tiled")
    assert comp.stashes == ()          # x - mean is cheaper to recompute than to store and reload
    mean = x.astype(np.float64).mean(-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        want = ((x - mean) / np.sqrt(var + 1e-5)).astype(np.float32)
    got = run(c, x)[0]
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, equal_nan=True)


# ------------------------------------------------------------------------- several outputs
def two_users(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True), e * 2.0


def with_sum(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    s = e.sum(-1, keepdims=True)
    return e / s, s


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("fn", [two_users, with_sum], ids=["two_users", "with_sum"])
def test_other_outputs_read_the_stash_before_it_is_overwritten(target, fn):
    x = special_rows((16, 64), np.float32, -1)
    c = explorer.compile(fn, x, target=target, verbose=False)
    k, comp = compute_of(c, "tiled")
    assert len(c.kernels) == 1
    if target == "cpu":
        assert len(comp.stashes) == 1 and count_calls(k, "exp") == 1, k.text()
        home = comp.stashes[0].buffer.name
        # the stash's own buffer is overwritten last in the final loop
        assert [s.buffer.name for s in comp.full_stores][-1] == home
    else:
        assert comp.stashes == ()
    with np.errstate(invalid="ignore", over="ignore"):
        want = fn(x)
    got = run(c, x)
    assert len(got) == 2
    for g, w in zip(got, want):
        check(g, w, np.float32)


# ------------------------------------------------------------------------- guarded and strided rows
def softmax_mid(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


ODD = [((7, 100), softmax_last), ((300, 5), softmax_first), ((4, 50, 6), softmax_mid)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape,fn", ODD, ids=[f"{f.__name__}-{'x'.join(map(str, s))}" for s, f in ODD])
def test_stash_under_guards_and_strided_axes(target, shape, fn):
    # rows that no split divides (guarded tails on CUDA, serial rows on the CPU) and a middle axis
    x = (RNG.standard_normal(shape) * 3).astype(np.float32)
    x.flat[3], x.flat[11], x.flat[17] = np.nan, np.inf, -np.inf
    c = explorer.compile(fn, x, target=target, verbose=False)
    k, comp = compute_of(c, "tiled")
    assert len(comp.stashes) == (target == "cpu") and count_calls(k, "exp") == 2 - (target == "cpu"), k.text()
    with np.errstate(invalid="ignore", over="ignore"):
        want = fn(x)
    check(run(c, x)[0], want, np.float32)
