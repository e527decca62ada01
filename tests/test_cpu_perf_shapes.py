"""The CPU fast paths stay correct: register-tiled matmul micro-kernels (GCC vector variables)
and row reductions in SIMD lanes, across the shapes and dtypes that take them or fall back.

Correctness only (no timing asserts); each case also checks which path the C source took, so
a silent fallback to the scalar path would show up here.
"""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer.backends import cpu
from explorer.codegen.c import generate_c
from explorer.loopir import BinOp, Buffer, Const, For, Kernel, Load, Program, Store, Var
from explorer.passes.vectorize_cpu import vectorize_cpu

HAVE_CC, WHY = cpu.available()
pytestmark = pytest.mark.skipif(not HAVE_CC, reason=f"no C compiler: {WHY}")

RNG = np.random.default_rng(7)


def arr(*shape, dtype=np.float32):
    a = RNG.standard_normal(shape) * 3
    return a.astype(dtype)


def gelu(x, w):
    y = x @ w
    return 0.5 * y * (1 + np.tanh(0.7978845608 * (y + 0.044715 * y ** 3)))


@pytest.fixture
def register_tiled(monkeypatch):
    """These shapes are small enough for the row-streaming schedule (schedules/cpu._cpu_small_matmul);
    turn it off so they keep exercising the register-tiled micro-kernel path they were chosen for."""
    from explorer.schedules import cpu
    monkeypatch.setattr(cpu, "SMALL_MATMUL_MACS", 0)


# (name, fn, args, micro-kernel expected)
MATMULS = [
    ("divisible", lambda x, w: x @ w, (arr(48, 32), arr(32, 64)), True),
    ("non-divisible", lambda x, w: x @ w, (arr(100, 99), arr(99, 101)), True),
    ("bias-relu", lambda x, w, b: np.maximum(x @ w + b, 0), (arr(50, 40), arr(40, 48), arr(48)), True),
    ("gelu", gelu, (arr(30, 20), arr(20, 40)), True),
    ("batch", lambda x, w: x @ w, (arr(3, 20, 16), arr(3, 16, 24)), True),
    ("f64", lambda x, w: x @ w, (arr(30, 17, dtype=np.float64), arr(17, 21, dtype=np.float64)), True),
    ("i32", lambda x, w: x @ w, (arr(30, 17, dtype=np.int32), arr(17, 40, dtype=np.int32)), True),
    ("x-transposed", lambda x, w: x.T @ w, (arr(17, 30), arr(17, 40)), True),
    ("f16 (scalar path)", lambda x, w: x @ w, (arr(30, 17, dtype=np.float16), arr(17, 40, dtype=np.float16)), False),
    ("narrow N (scalar path)", lambda x, w: x @ w, (arr(20, 10), arr(10, 5)), False),
]


@pytest.mark.parametrize("name,fn,args,fast", MATMULS, ids=[m[0] for m in MATMULS])
def test_matmul_paths_match_numpy(name, fn, args, fast, register_tiled):
    c = explorer.compile(fn, *args, target="cpu", verbose=False)
    src = "".join(k.source for k in c.kernels)
    assert ("register-tiled micro-kernel" in src) == fast, src
    want = fn(*args)
    got = c(*args)
    if np.issubdtype(want.dtype, np.integer):
        np.testing.assert_array_equal(got, want)
    else:
        tol = {np.float16: 2e-2, np.float32: 1e-4, np.float64: 1e-12}[want.dtype.type]
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_matmul_nan_and_inf_propagate_like_numpy(register_tiled):
    x, w = arr(13, 16), arr(16, 32)
    x[2, 3] = np.nan
    x[7, 0] = np.inf
    c = explorer.compile(lambda x, w: x @ w, x, w, target="cpu", verbose=False)
    assert "micro-kernel" in c.kernels[0].source
    np.testing.assert_allclose(c(x, w), x @ w, rtol=1e-4, atol=1e-3, equal_nan=True)


@pytest.mark.parametrize("tt,fast", [((4, 32), True), ((2, 8), True), ((8, 32), False)])
def test_thread_tile_knob_decides_register_budget(tt, fast):
    """(8, 32) is 32 vectors, over the register budget: it keeps the array form, still correct."""
    x, w = arr(37, 24), arr(24, 64)
    c = explorer.compile(lambda x, w: x @ w, x, w, target="cpu", verbose=False, schedule={"thread_tile": tt})
    assert ("micro-kernel" in c.kernels[0].source) == fast
    np.testing.assert_allclose(c(x, w), x @ w, rtol=1e-4, atol=1e-3)


def test_micro_kernel_keeps_accumulators_out_of_the_array(register_tiled):
    x, w = arr(12, 8), arr(8, 16)
    src = explorer.compile(lambda x, w: x @ w, x, w, target="cpu", verbose=False).kernels[0].source
    helper = src[src.index("static __attribute__((noinline))"):src.index("/* kernel")]
    loop = helper[helper.index("for ("):helper.index("ke_store_v8f")]
    assert "ke_v8f" in helper and "acc" in loop
    assert "acc2[" not in loop and "[k" in loop   # accumulators are variables; B rows are vector loads


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def layernorm(x):
    m = x.mean(axis=-1, keepdims=True)
    v = ((x - m) ** 2).mean(axis=-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5)


REDUCTIONS = [
    ("sum last", lambda x: x.sum(axis=-1), arr(7, 64), True),
    ("max last", lambda x: x.max(axis=-1), arr(5, 48), True),
    ("min last", lambda x: x.min(axis=-1), arr(5, 48), True),
    ("softmax", softmax, arr(9, 128), True),
    ("layernorm", layernorm, arr(6, 96), True),
    ("f64 sum", lambda x: x.sum(axis=-1), arr(4, 32, dtype=np.float64), True),
    ("i32 max", lambda x: x.max(axis=-1), arr(4, 32, dtype=np.int32), True),
    ("sum axis 0 (strided: serial)", lambda x: x.sum(axis=0), arr(64, 9), False),
    ("odd row length (serial)", lambda x: x.sum(axis=-1), arr(5, 999), False),
    ("all axes", lambda x: x.max(), arr(6, 40), False),
]


@pytest.mark.parametrize("name,fn,x,lanes", REDUCTIONS, ids=[r[0] for r in REDUCTIONS])
def test_row_reductions_match_numpy(name, fn, x, lanes):
    c = explorer.compile(fn, x, target="cpu", verbose=False)
    src = "".join(k.source for k in c.kernels)
    assert ("_lanes[" in src) == lanes, src
    want, got = fn(x), c(x)
    if np.issubdtype(want.dtype, np.integer):
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("op", ["max", "min"])
def test_lane_max_min_propagate_nan(op):
    x = arr(6, 64)
    x[1, 5] = np.nan      # lane 5 of the first chunk
    x[3, 63] = np.nan     # last lane
    x[4, :] = np.inf if op == "max" else -np.inf
    fn = (lambda a: a.max(axis=-1)) if op == "max" else (lambda a: a.min(axis=-1))
    c = explorer.compile(fn, x, target="cpu", verbose=False)
    assert "ke_" + op + "_v8f" in c.kernels[0].source
    np.testing.assert_array_equal(c(x), fn(x))


def test_vector_region_writes_global_and_falls_back_on_calls():
    """A hand-built region: a 0-d accumulator is not a tile, strided lanes are not vectors."""
    n = 16
    x, t, y = Buffer("x", (4, n)), Buffer("t", (2, n), scope="local"), Buffer("y", (4, n))
    i, k, r, v = Var("i"), Var("k"), Var("r"), Var("v")
    from explorer.loopir import Alloc
    upd = Store(t, (r, v), BinOp("+", Load(t, (r, v)), Load(x, (k, v)) * Const(2.0, "f32")))
    body = (Alloc(t),
            For(r, 2, (For(v, n, (Store(t, (r, v), Const(0.0, "f32")),), kind="vectorized"),), kind="unrolled"),
            For(k, 4, (For(r, 2, (For(v, n, (upd,), kind="vectorized"),), kind="unrolled"),)),
            For(r, 2, (For(v, n, (Store(y, (r, v), Load(t, (r, v))),), kind="vectorized"),), kind="unrolled"))
    kern = Kernel("hand", (x, y), body, outputs=("y",))
    # the micro-kernel is made by the `vectorized` stage (passes/vectorize_cpu.py); codegen prints it
    cg = generate_c(vectorize_cpu(Program("p", (kern,), (x,), (y,))))
    assert "micro-kernel" in cg.kernels[0].source
    xv = arr(4, n)
    out = cpu.build_codegen(cg).run([xv])[0]
    want = np.zeros((4, n), np.float32)
    want[:2] = 2 * xv.sum(axis=0)
    np.testing.assert_allclose(out[:2], want[:2], rtol=1e-5)
