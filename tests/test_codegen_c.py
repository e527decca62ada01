"""C codegen from hand-built tiled loop IR: source shape, sanitizing, and results vs NumPy."""
from __future__ import annotations

import math

import numpy as np
import pytest

from explorer.codegen.c import comment_text, generate_c
from explorer.errors import CompileError, DTypeError
from explorer.loopir import (Alloc, Barrier, BinOp, Buffer, Cast, Comment, Const, For, If, Kernel, Program, Select,
                             Store, UnOp, Var, call, maximum, minimum)

cpu = pytest.importorskip("explorer.backends.cpu")
HAVE_CC, WHY = cpu.available()
needs_cc = pytest.mark.skipif(not HAVE_CC, reason=f"no C compiler: {WHY}")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # one cache for the module: isolated from the user's, shared by the tests
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg"))


def run(prog: Program, *inputs, fast_math=False):
    return cpu.build_codegen(generate_c(prog, fast_math=fast_math)).run(list(inputs))


# ------------------------------------------------------------------------- programs
def chain_program(n: int, v: int = 64) -> Program:
    """out = max(tanh(a*1.5+b)*b - a/3, 0.1) + a*b; outer parallel chunks, inner vectorized, guarded tail."""
    a, b, o = Buffer("a", (n,)), Buffer("b", (n,)), Buffer("out0", (n,))
    c, j = Var("c"), Var("j")
    i = c * v + j
    val = maximum(call("tanh", a[i] * Const(1.5, "f32") + b[i]) * b[i] - a[i] / Const(3.0, "f32"),
                  Const(0.1, "f32")) + a[i] * b[i]
    body = For(c, -(-n // v), (For(j, v, (If(i < n, (Store(o, (i,), val),)),), kind="vectorized"),), kind="parallel")
    k = Kernel("fused_mul_add_tanh", (a, b, o), (body,), outputs=("out0",), group="g0",
               ops=("mul", "add", "tanh", "mul", "div", "sub", "maximum", "add"),
               source_lines=("chain.py:3  return np.maximum(np.tanh(a*1.5+b)*b - a/3, 0.1) + a*b",))
    return Program("chain", (k,), (a, b), (o,))


def chain_numpy(a, b):
    return np.maximum(np.tanh(a * 1.5 + b) * b - a / 3, 0.1) + a * b


def rowsum_program(r: int, n: int, op: str = "sum") -> Program:
    x, o = Buffer("x", (r, n)), Buffer("out0", (r,))
    i, j = Var("i"), Var("j")
    acc = Buffer("acc", (), "f32", "local")
    init = Const(0.0 if op == "sum" else -math.inf, "f32")
    upd = acc[()] + x[i, j] if op == "sum" else maximum(acc[()], x[i, j])
    body = For(i, r, (Alloc(acc), Store(acc, (), init),
                      For(j, n, (Store(acc, (), upd),), kind="vectorized"),
                      Store(o, (i,), acc[()])), kind="parallel")
    return Program("rowsum", (Kernel(f"reduce_{op}", (x, o), (body,), outputs=("out0",), kind="reduce"),), (x,), (o,))


def matmul_relu_program(m: int, n: int, k: int, t: int = 8) -> Program:
    """C = relu(A @ B + bias): block tile t x t in a local accumulator, B's row packed into a local tile."""
    A, B, bias, C = Buffer("A", (m, k)), Buffer("B", (k, n)), Buffer("bias", (n,)), Buffer("out0", (m, n))
    io, jo, ii, jj, kk = Var("io"), Var("jo"), Var("ii"), Var("jj"), Var("kk")
    acc = Buffer("acc", (t, t), "f32", "local")
    bt = Buffer("bt", (t,), "f32", "local")
    i, j = io * t + ii, jo * t + jj
    zero = Const(0.0, "f32")
    body = (
        Alloc(acc), Alloc(bt),
        For(ii, t, (For(jj, t, (Store(acc, (ii, jj), zero),), kind="vectorized"),)),
        For(kk, k, (
            Comment("pack B[kk, tile] into bt, zero past the edge"),
            For(jj, t, (If(j < n, (Store(bt, (jj,), B[kk, j]),), (Store(bt, (jj,), zero),)),)),
            For(ii, t, (If(i < m, (For(jj, t, (Store(acc, (ii, jj), acc[ii, jj] + A[i, kk] * bt[jj]),),
                                       kind="vectorized"),)),)),
        )),
        For(ii, t, (If(i < m, (For(jj, t, (If(j < n, (Store(C, (i, j), maximum(acc[ii, jj] + bias[j], zero)),)),),
                                   kind="vectorized"),)),), kind="unrolled"),
    )
    nest = For(io, -(-m // t), (For(jo, -(-n // t), body, kind="parallel"),), kind="parallel")
    kern = Kernel("fused_matmul_add_maximum", (A, B, bias, C), (nest,), outputs=("out0",), kind="contraction",
                  schedule=("split(i, 8)", "split(j, 8)", "cache_write(acc, local)"))
    return Program("mlp", (kern,), (A, B, bias), (C,))


def unary_program(fns, n, dtype="f32"):
    x = Buffer("x", (n,), dtype)
    outs = [Buffer(f"o_{f}", (n,), dtype) for f in fns]
    i = Var("i")
    k = Kernel("math", (x, *outs), (For(i, n, tuple(Store(o, (i,), call(f, x[i])) for o, f in zip(outs, fns)),
                                        kind="vectorized"),), outputs=tuple(o.name for o in outs))
    return Program("math", (k,), (x,), tuple(outs))


# ------------------------------------------------------------------------- source shape
def test_source_structure_and_determinism():
    prog = chain_program(1000)
    cg = generate_c(prog)
    assert cg.language == "c" and len(cg.kernels) == 1
    src = cg.kernels[0].source
    assert "void fused_mul_add_tanh(const float* restrict a, const float* restrict b, float* restrict out0)" in src
    assert "#pragma omp parallel for schedule(guided)" in src
    assert "#pragma omp simd" in src
    assert "fusion group g0" in src and "chain.py:3" in src
    assert "ke_tanhf(" in src and "ke_maxf(" in src
    assert generate_c(chain_program(1000)).source() == cg.source()
    assert "tanhf(" in generate_c(prog, fast_math=True).kernels[0].source


def test_64bit_indices_for_huge_buffers():
    n = 2 ** 31 + 5
    x, y = Buffer("x", (n,)), Buffer("y", (n,))
    i = Var("i")
    k = Kernel("big", (x, y), (For(i, n, (Store(y, (i,), x[i]),), kind="parallel"),), outputs=("y",))
    src = generate_c(Program("big", (k,), (x,), (y,))).kernels[0].source
    assert "int64_t i = 0" in src
    small = generate_c(rowsum_program(4, 4)).kernels[0].source
    assert "int64_t" not in small and "int i = 0" in small


def test_gpu_constructs_are_rejected():
    x, y = Buffer("x", (64,)), Buffer("y", (64,))
    t = Var("t")
    bound = Kernel("k", (x, y), (For(t, 64, (Store(y, (t,), x[t]),), kind="threadIdx.x"),), outputs=("y",))
    with pytest.raises(CompileError, match="CPU schedule"):
        generate_c(Program("p", (bound,), (x,), (y,)))
    barrier = Kernel("k", (x, y), (For(t, 64, (Barrier(), Store(y, (t,), x[t])), kind="parallel"),), outputs=("y",))
    with pytest.raises(CompileError, match="CPU schedule"):
        generate_c(Program("p", (barrier,), (x,), (y,)))


def test_math_on_ints_is_a_dtype_error():
    x, y = Buffer("x", (4,), "i32"), Buffer("y", (4,), "i32")
    i = Var("i")
    k = Kernel("k", (x, y), (For(i, 4, (Store(y, (i,), call("exp", x[i])),)),), outputs=("y",))
    with pytest.raises(DTypeError, match="cast"):
        generate_c(Program("p", (k,), (x,), (y,)))


def test_comment_text_neutralizes_terminators():
    s = comment_text("a */ b /* c\nd\\")
    assert "*/" not in s and "/*" not in s and "\n" not in s and not s.endswith("\\")


HOSTILE = "*/ #error escaped comment /*\n#error escaped line \\"


@needs_cc
def test_hostile_text_stays_in_comments_and_names_are_sanitized():
    # user text in comments and user-derived names must never break or inject into the source
    x = Buffer("exp", (8,), "f64")        # a parameter called `exp` would shadow libm's exp()
    y = Buffer("int32_t", (8,), "f64")    # and one called like a type
    i = Var("for")
    k = Kernel("my kernel!*/", (x, y), (Comment(HOSTILE), For(i, 8, (Store(y, (i,), call("exp", x[i])),),
                                                                  kind="vectorized")),
               outputs=("int32_t",), group=HOSTILE, ops=(HOSTILE,), source_lines=(HOSTILE,), schedule=(HOSTILE,))
    cg = generate_c(Program("p", (k,), (x,), (y,)))
    src = cg.source()
    for line in src.splitlines():
        assert not line.lstrip().startswith("#error")
    assert "u_exp" in src and "u_int32_t" in src
    xv = np.linspace(-3, 3, 8)
    out = cpu.build_codegen(cg).run([xv])[0]
    np.testing.assert_allclose(out, np.exp(xv), rtol=1e-12)


# ------------------------------------------------------------------------- results vs numpy
@needs_cc
@pytest.mark.parametrize("n", [1000, 64 * 5, 1])
def test_elementwise_chain_with_guard(n):
    rng = np.random.default_rng(n)
    a = rng.standard_normal(n).astype(np.float32) * 4
    b = rng.standard_normal(n).astype(np.float32)
    a[:3] = [np.nan, np.inf, -np.inf][: min(3, n)]
    out = run(chain_program(n), a, b)[0]
    np.testing.assert_allclose(out, chain_numpy(a, b), rtol=2e-6, atol=1e-6, equal_nan=True)


@needs_cc
def test_reduction_with_local_accumulator():
    x = np.random.default_rng(0).standard_normal((37, 1001)).astype(np.float32)
    src = generate_c(rowsum_program(37, 1001)).kernels[0].source
    assert "reduction(+:acc)" in src
    np.testing.assert_allclose(run(rowsum_program(37, 1001), x)[0], x.sum(axis=1), rtol=1e-4, atol=1e-4)
    x[5, 17] = np.nan
    maxsrc = generate_c(rowsum_program(37, 1001, "max")).kernels[0].source
    assert "no omp simd" in maxsrc  # a max-accumulator is a loop-carried dependency: no simd pragma
    got = run(rowsum_program(37, 1001, "max"), x)[0]
    np.testing.assert_array_equal(got, x.max(axis=1))   # NaN propagates like np.max


@needs_cc
@pytest.mark.parametrize("shape", [(37, 29, 19), (16, 16, 8)])
def test_tiled_matmul_with_packed_local_tile(shape):
    m, n, k = shape
    rng = np.random.default_rng(1)
    A = rng.standard_normal((m, k)).astype(np.float32)
    B = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    prog = matmul_relu_program(m, n, k)
    src = generate_c(prog).kernels[0].source
    assert "collapse(2)" in src and "#pragma GCC unroll 8" in src and "float acc[64]" in src
    out = run(prog, A, B, bias)[0]
    np.testing.assert_allclose(out, np.maximum(A @ B + bias, 0), rtol=1e-4, atol=1e-4)


@needs_cc
def test_casts_select_and_nan_propagating_min_max():
    n = 9
    x = np.array([1.5, -2.5, np.nan, 3.0, np.inf, -np.inf, 0.0, 7.9, -0.4], np.float32)
    y = np.array([2.0, np.nan, 1.0, 3.0, 1.0, 5.0, -1.0, 8.0, -0.5], np.float32)
    X, Y = Buffer("x", (n,)), Buffer("y", (n,))
    o_max, o_min, o_sel = Buffer("o_max", (n,)), Buffer("o_min", (n,)), Buffer("o_sel", (n,))
    o_int, o_f64, o_bool = Buffer("o_int", (n,), "i32"), Buffer("o_f64", (n,), "f64"), Buffer("o_bool", (n,), "bool")
    o_imax, o_neg = Buffer("o_imax", (n,), "i64"), Buffer("o_neg", (n,))
    o_div, o_h = Buffer("o_div", (n,), "i32"), Buffer("o_h", (n,))
    i = Var("i")
    xi, yi = X[i], Y[i]
    finite = Select(BinOp("==", xi - xi, Const(0.0, "f32")), xi, Const(0.0, "f32"))
    stores = (
        Store(o_max, (i,), maximum(xi, yi)),
        Store(o_min, (i,), minimum(xi, yi)),
        Store(o_sel, (i,), Select(BinOp(">", xi, yi), xi, yi * Const(2.0, "f32"))),
        Store(o_int, (i,), Cast("i32", call("floor", finite))),
        Store(o_f64, (i,), Cast("f64", xi) * Const(0.1, "f64")),
        Store(o_bool, (i,), BinOp("||", BinOp(">", xi, Const(0.0, "f32")), UnOp("not", BinOp("==", yi, yi)))),
        Store(o_imax, (i,), maximum(Cast("i64", i), Const(4, "i64")) % Const(3, "i64")),
        Store(o_neg, (i,), UnOp("neg", call("abs", xi))),
        # data-dependent integer divisor, zero at i == 4: no SIGFPE, 0 like numpy
        Store(o_div, (i,), BinOp("/", Const(100, "i32"), i - Const(4, "i32"))),
        Store(o_h, (i,), Cast("f32", Cast("f16", xi * Const(1.001, "f32")))),
    )
    outs = (o_max, o_min, o_sel, o_int, o_f64, o_bool, o_imax, o_neg, o_div, o_h)
    k = Kernel("misc", (X, Y, *outs), (For(i, n, stores, kind="vectorized"),), outputs=tuple(o.name for o in outs))
    got = dict(zip([o.name for o in outs], run(Program("misc", (k,), (X, Y), outs), x, y)))
    np.testing.assert_array_equal(got["o_max"], np.maximum(x, y))
    np.testing.assert_array_equal(got["o_min"], np.minimum(x, y))
    np.testing.assert_array_equal(got["o_sel"], np.where(x > y, x, y * 2))
    np.testing.assert_array_equal(got["o_int"], np.floor(np.where(np.isfinite(x), x, 0)).astype(np.int32))
    np.testing.assert_allclose(got["o_f64"], x.astype(np.float64) * 0.1, rtol=1e-15)
    np.testing.assert_array_equal(got["o_bool"], (x > 0) | np.isnan(y))
    np.testing.assert_array_equal(got["o_imax"], np.maximum(np.arange(n), 4) % 3)
    np.testing.assert_array_equal(got["o_neg"], -np.abs(x))
    d = np.arange(n) - 4
    with np.errstate(divide="ignore"):
        np.testing.assert_array_equal(got["o_div"], np.where(d == 0, 0, np.trunc(100 / np.where(d == 0, 1, d))))
    np.testing.assert_array_equal(got["o_h"], (x * np.float32(1.001)).astype(np.float16).astype(np.float32))


def _special_and_wide_inputs() -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.concatenate([
        rng.uniform(-110, 110, 20000), rng.standard_normal(20000) * 3, rng.uniform(-1e-3, 1e-3, 2000),
        np.logspace(-45, 38, 3000), -np.logspace(-45, 38, 3000),
        [0.0, -0.0, np.inf, -np.inf, np.nan, 88.72, 88.73, -87.3, -103.9, -104.0, 9.0, 9.0001, 1e-40, 3.4e38],
    ]).astype(np.float32)


def _reference(fn: str, x64: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        if fn == "erf":
            return np.array([math.erf(v) if not np.isinf(v) else math.copysign(1.0, v) for v in x64])
        if fn == "rsqrt":
            return 1 / np.sqrt(x64)
        if fn == "sigmoid":
            return 1 / (1 + np.exp(-x64))
        return getattr(np, {"abs": "abs"}.get(fn, fn))(x64)


@needs_cc
@pytest.mark.parametrize("fast_math", [False, True])
def test_every_math_function_against_numpy(fast_math):
    fns = [f for f in ("exp", "log", "tanh", "sqrt", "rsqrt", "abs", "erf", "sin", "cos", "floor", "sigmoid")]
    x = _special_and_wide_inputs()
    res = run(unary_program(fns, x.size), x, fast_math=fast_math)
    x64 = x.astype(np.float64)
    tiny = np.finfo(np.float32).tiny
    for fn, got in zip(fns, res):
        want = _reference(fn, x64)
        with np.errstate(over="ignore", invalid="ignore"):
            want32 = want.astype(np.float32)
        normal = np.isfinite(want32) & (np.abs(want32) >= tiny)
        rel = np.max(np.abs(got[normal] - want[normal]) / np.abs(want[normal]))
        assert rel <= (1e-6 if not fast_math else 1e-5), (fn, rel)
        sub = np.isfinite(want32) & ~normal   # subnormal results: absolute error of a few denormal steps
        assert np.max(np.abs(got[sub] - want[sub]), initial=0.0) <= 1e-38, fn
        if not fast_math:   # NaN / ±Inf exactly where NumPy has them
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want32), err_msg=fn)
            inf = np.isinf(want32)
            np.testing.assert_array_equal(got[inf], want32[inf], err_msg=fn)


@needs_cc
def test_pow_and_f64_math():
    n = 6
    a = np.array([2.0, 0.5, -1.0, 0.0, np.inf, 3.0], np.float32)
    b = np.array([10.0, -2.0, 0.5, 0.0, 0.5, np.nan], np.float32)
    A, B, O = Buffer("a", (n,)), Buffer("b", (n,)), Buffer("out0", (n,))
    i = Var("i")
    k = Kernel("pw", (A, B, O), (For(i, n, (Store(O, (i,), call("pow", A[i], B[i])),)),), outputs=("out0",))
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(run(Program("p", (k,), (A, B), (O,)), a, b)[0], np.power(a, b))
    fns = ["exp", "log", "tanh", "sigmoid", "erf", "rsqrt"]
    x = np.array([-800.0, -1.0, 0.0, 0.3, 2.0, 800.0, np.nan, np.inf, -np.inf])
    res = run(unary_program(fns, x.size, "f64"), x)
    for fn, got in zip(fns, res):
        np.testing.assert_allclose(got, _reference(fn, x), rtol=1e-14, equal_nan=True, err_msg=fn)


@needs_cc
def test_f16_storage_computes_in_float():
    n = 100
    x = np.linspace(-4, 4, n).astype(np.float16)
    res = run(unary_program(["tanh", "exp"], n, "f16"), x)
    assert res[0].dtype == np.float16
    np.testing.assert_allclose(res[0], np.tanh(x), rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(res[1], np.exp(x), rtol=2e-3)
