"""Differential tests: trace -> simplify -> NumPy interpreter must equal calling the function on arrays."""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer import nn
from explorer.backends.reference import run_graph
from explorer.passes.simplify import simplify

F32, F16, F64, I32, B = np.float32, np.float16, np.float64, np.int32, np.bool_

TOL = {np.dtype(F16): 1e-2, np.dtype(F32): 1e-5, np.dtype(F64): 1e-12}


def make(spec, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for shape, dt in spec:
        dt = np.dtype(dt)
        if dt.kind == "f":
            out.append(rng.standard_normal(shape).astype(dt))
        elif dt.kind == "i":
            out.append(rng.integers(-5, 6, size=shape).astype(dt))
        else:
            out.append(rng.random(shape) > 0.5)
    return out


def m(*shape, dt=F32):
    return (shape, dt)


CASES: dict[str, tuple] = {}


def case(name, spec):
    def deco(fn):
        assert name not in CASES
        CASES[name] = (fn, spec)
        return fn
    return deco


# -- elementwise chains ------------------------------------------------------------------
case("add_mul_sub", [m(4, 5), m(4, 5)])(lambda x, y: x + y * 2 - 1)
case("exp_tanh_sqrt", [m(3, 7)])(lambda x: np.exp(np.tanh(x)) * np.sqrt(np.abs(x)))
case("log1p_abs", [m(6)])(lambda x: np.log(np.abs(x) + 1))
case("pow_neg", [m(5, 5)])(lambda x: -x ** 2 + x ** 3)
case("div_pos", [m(4, 4), m(4, 4)])(lambda x, y: x / (np.abs(y) + 1))
case("sigmoid_rev_scalars", [m(8)])(lambda x: 1 / (1 + np.exp(-x)))
case("rsub_rdiv", [m(3, 3)])(lambda x: 2 - x + 3.5 / (x * x + 1))
case("sin_cos", [m(10)])(lambda x: np.sin(x) * np.cos(x) + np.negative(x))
case("max_min_clip", [m(4, 6)])(lambda x: np.minimum(np.maximum(x, -0.5), 0.5) + np.clip(x, -1, 1))
case("square_abs_op", [m(5)])(lambda x: np.square(x) + abs(x) + (+x))
case("ufunc_names", [m(3, 4), m(3, 4)])(lambda x, y: np.subtract(np.multiply(x, y), np.divide(x, 2)) + np.power(np.add(x, 3), 2))
case("rpow", [m(4)])(lambda x: 2.0 ** x)
# -- broadcasting ---------------------------------------------------------------------------
case("bcast_row", [m(4, 5), m(5)])(lambda x, b: x + b)
case("bcast_col", [m(4, 5), m(4, 1)])(lambda x, c: x * c)
case("bcast_outer", [m(4, 1), m(1, 5)])(lambda a, b: a - b)
case("bcast_3d", [m(2, 3, 4), m(3, 1)])(lambda x, y: x / (y * y + 1))
case("bcast_0d_input", [m(3, 4), m()])(lambda x, s: x * s + s)
case("const_array", [m(3, 5)])(lambda x: x * np.arange(5, dtype=np.float32) + np.ones((3, 1), np.float32))
case("np_f64_scalar_promotes", [m(4)])(lambda x: x * np.float64(2.5))
case("f64_const_array_promotes", [m(2, 3)])(lambda x: x + np.ones(3))
case("broadcast_to", [m(3, 1)])(lambda x: np.broadcast_to(x, (2, 3, 4)) + 1)
# -- matmul ---------------------------------------------------------------------------------
case("matmul_2d", [m(8, 16), m(16, 4)])(lambda a, b: a @ b)
case("matmul_batched", [m(2, 3, 4), m(2, 4, 5)])(lambda a, b: np.matmul(a, b))
case("matmul_bcast_batch", [m(2, 1, 3, 4), m(5, 4, 6)])(lambda a, b: a @ b)
case("matmul_2d_with_batch", [m(3, 4), m(2, 4, 5)])(lambda a, b: a @ b)
case("dot_2d_T", [m(6, 4), m(5, 4)])(lambda a, b: np.dot(a, b.T))
case("rmatmul_const", [m(4, 3)])(lambda a: np.ones((2, 4), np.float32) @ a)
case("mlp_essay", [m(8, 16), m(16, 4), m(4)])(lambda x, w, b: np.maximum(x @ w + b, 0))
case("mlp3", [m(4, 8), m(8, 8), m(8), m(8, 3), m(3)])(
    lambda x, w1, b1, w2, b2: nn.relu(x @ w1 + b1) @ w2 + b2)
# -- injective ------------------------------------------------------------------------------
case("transpose_default", [m(2, 3, 4)])(lambda x: np.transpose(x) * 2)
case("transpose_axes", [m(2, 3, 4)])(lambda x: x.transpose(1, 0, 2) + np.transpose(x, (1, 0, 2)))
case("double_transpose", [m(3, 4)])(lambda x: x.T.T + 1)
case("reshape_neg1", [m(2, 3, 4)])(lambda x: x.reshape(-1) + x.reshape(6, -1).reshape(24))
case("reshape_tuple", [m(6, 4)])(lambda x: np.reshape(x, (3, 8)) * 3)
case("slice_basic", [m(5, 6)])(lambda x: x[1:4, ::2] + 1)
case("slice_int_ellipsis", [m(4, 4, 5)])(lambda x: x[..., 0] * x[1, :, 2])
case("slice_none_neg", [m(5, 6)])(lambda x: x[None, :, -1] + x[::-1, 0][:, None])
case("slice_reverse_step", [m(7)])(lambda x: x[::-2][1:] + x[5::-2])
case("expand_squeeze_ravel", [m(3, 1, 4)])(lambda x: np.squeeze(x) + np.expand_dims(x.ravel(), 0).reshape(3, 4))
case("swapaxes", [m(2, 3, 4)])(lambda x: np.swapaxes(x, 0, 2) - 1)
# -- where / casts / comparisons -------------------------------------------------------------
case("where_leaky", [m(4, 5)])(lambda x: np.where(x > 0, x, 0.1 * x))
case("where_scalars", [m(6)])(lambda x: np.where(x < 0, -1.0, 1.0))
case("where_int_vs_float", [m(6), m(6, dt=I32)])(lambda x, i: np.where(x > 0, i, 2.5))
case("astype_int", [m(3, 4)])(lambda x: (x * 3).astype(np.int32) + 1)
case("astype_float_from_int", [m(5, dt=I32)])(lambda i: i.astype(np.float32) * 0.5)
case("cmp_lt", [m(4), m(4)])(lambda x, y: x < y)
case("cmp_ge_scalar", [m(4, 3)])(lambda x: x >= 0.5)
case("cmp_eq_ne", [m(4), m(4)])(lambda x, y: (x == y) | (x != 1.0))
case("cmp_gt_le_int", [m(6, dt=I32)])(lambda i: (i > 2) & (i <= 4))
# -- composites ------------------------------------------------------------------------------
case("softmax", [m(4, 7)])(lambda x: nn.softmax(x))
case("softmax_axis0", [m(4, 7)])(lambda x: nn.softmax(x, axis=0))
case("log_softmax", [m(3, 5)])(lambda x: nn.log_softmax(x))
case("layernorm", [m(4, 8)])(lambda x: nn.layernorm(x))
case("layernorm_affine", [m(4, 8), m(8), m(8)])(lambda x, g, b: nn.layernorm(x, g, b, eps=1e-3))
case("gelu_tanh", [m(10)])(lambda x: nn.gelu(x))
case("gelu_erf", [m(10)])(lambda x: nn.gelu(x, approximate=False))
case("transformer_ffn", [m(4, 8), m(8, 16), m(16, 8)])(
    lambda x, w1, w2: x + nn.gelu(nn.layernorm(x) @ w1) @ w2)
case("attention_scores", [m(2, 4, 8), m(2, 4, 8), m(2, 4, 8)])(
    lambda q, k, v: nn.softmax(q @ np.swapaxes(k, -1, -2) / np.sqrt(8.0)) @ v)
# -- other dtypes ----------------------------------------------------------------------------
case("int32_arith", [m(4, 5, dt=I32), m(4, 5, dt=I32)])(lambda a, b: (a + b) * 3 - b)
case("int32_truediv", [m(6, dt=I32)])(lambda a: a / 2)
case("int32_sum_mean", [m(3, 4, dt=I32)])(lambda a: (a.sum(axis=0), np.mean(a, axis=1), a.max()))
case("int32_float_scalar", [m(5, dt=I32)])(lambda a: a * 0.5 + (a < 1.5))
case("f16_chain", [m(4, 8, dt=F16), m(8, dt=F16)])(lambda x, b: np.tanh(x * b + 1))
case("f16_mean_softmax", [m(4, 8, dt=F16)])(lambda x: (np.mean(x, axis=-1), nn.softmax(x)))
# f16 matmuls take the tensor-core (WMMA) path on cuda/sim: a non-divisible shape with a fused epilogue, a batch
case("f16_mlp_tensor_core", [m(100, 72, dt=F16), m(72, 130, dt=F16), m(130, dt=F16)])(
    lambda x, w, b: np.maximum(x @ w + b, 0))
case("f16_matmul_batched_tensor_core", [m(2, 20, 32, dt=F16), m(2, 32, 24, dt=F16)])(lambda a, b: np.matmul(a, b))
case("f64_chain", [m(5, 3, dt=F64)])(lambda x: np.exp(-x * x) @ np.ones((3, 2)))
case("bool_logic", [m(4, 5, dt=B), m(4, 5, dt=B)])(lambda a, b: (a & ~b) | (b & a))
case("bool_where_sum", [m(6, dt=B), m(6)])(lambda c, x: (np.where(c, x, -x), c.sum(), np.logical_not(c)))
case("bool_plus_int", [m(4, dt=B)])(lambda c: c + 1)
# -- scans / several outputs --------------------------------------------------------------
case("cumsum_axis", [m(3, 5)])(lambda x: np.cumsum(x, axis=1) + x.cumsum(axis=0))
case("cumsum_flat", [m(2, 3)])(lambda x: np.cumsum(x))
case("two_outputs", [m(3)])(lambda x: (x + 1, x * 2))
case("output_is_input", [m(3)])(lambda x: (x, x * 1.0))

# -- reductions: every op x axis x keepdims --------------------------------------------------
for _op in ("sum", "max", "min", "mean"):
    for _ax in (None, 0, 1, 2, -1, (0, 2)):
        for _kd in (False, True):
            _np = {"sum": np.sum, "max": np.max, "min": np.min, "mean": np.mean}[_op]
            case(f"{_op}_axis{_ax}_kd{int(_kd)}".replace(" ", ""), [m(2, 3, 4)])(
                (lambda f, a, k: lambda x: f(x, axis=a, keepdims=k))(_np, _ax, _kd))
case("amax_amin_methods", [m(3, 4)])(lambda x: np.amax(x, axis=0) - np.amin(x, 1).sum() + x.max(1).min())
case("mean_method_keepdims", [m(3, 4)])(lambda x: x - x.mean(axis=1, keepdims=True))


def _check(got, want, label, tols=TOL):
    """Each of got (a sequence) equals NumPy's want: same dtype and shape, values within tols[dtype]
    (exact for dtypes without a tolerance)."""
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want), label
    for g, w in zip(got, want):
        w = np.asarray(w)
        assert g.dtype == w.dtype, f"{label}: dtype {g.dtype} != numpy {w.dtype}"
        assert g.shape == w.shape, f"{label}: shape {g.shape} != numpy {w.shape}"
        tol = tols.get(w.dtype)
        if tol is None:
            np.testing.assert_array_equal(g, w, err_msg=label)
        else:
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=tol, atol=tol, err_msg=label)


def test_enough_distinct_functions():
    assert len(CASES) >= 45


@pytest.mark.parametrize("name", sorted(CASES))
def test_trace_simplify_interpret(name):
    fn, spec = CASES[name]
    args = make(spec)
    want = fn(*args)
    g = explorer.trace(fn, *args).verify()
    _check(run_graph(g, args), want, f"{name} traced")
    s = simplify(g).verify()
    _check(run_graph(s, args), want, f"{name} simplified")
    s2 = simplify(g, decompose=False).verify()
    _check(run_graph(s2, args), want, f"{name} simplified (decompose=False)")


@pytest.mark.parametrize("name", sorted(CASES))
def test_compile_reference_call(name):
    fn, spec = CASES[name]
    args = make(spec)
    c = explorer.compile(fn, *args, target="reference", verbose=False)
    got = c(*args)
    got = got if isinstance(got, tuple) else (got,)
    _check(list(got), fn(*args), name)
    # new data through the same compiled function (shapes fixed, values new)
    other = make(spec, seed=7)
    got = c(*other)
    _check(list(got if isinstance(got, tuple) else (got,)), fn(*other), f"{name} (second inputs)")
