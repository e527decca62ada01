"""The tracer: naming, ids, constants and NumPy 2 dtype rules, provenance, methods, nn, examples, CLI."""
from __future__ import annotations

import inspect
import os

import numpy as np
import pytest

import explorer
from explorer import nn
from explorer.tracing import Tensor, prepare_examples, supported_numpy

F32 = np.float32
X = np.ones((2, 3), F32)


def test_inputs_named_after_parameters_and_sequential_ids():
    def layer(x, weight, bias):
        return x @ weight + bias
    g = explorer.trace(layer, X, np.ones((3, 4), F32), np.ones(4, F32))
    assert [i.name for i in g.inputs] == ["x", "weight", "bias"]
    assert [n.id for n in g.nodes] == list(range(len(g.nodes)))
    assert g.name == "layer"
    g.verify()


def test_c_keyword_and_colliding_names_are_sanitized():
    def f(int, int_):  # noqa: A002 - deliberately hostile names
        return int + int_
    g = explorer.trace(f, X, X)
    assert [i.name for i in g.inputs] == ["int_", "int__1"]


def test_varargs_and_lambda_names():
    g = explorer.trace(lambda *xs: xs[0] * xs[1], X, X)
    assert [i.name for i in g.inputs] == ["x0", "x1"] and g.name == "lambda"

    def f(a, *rest):
        return a + rest[0]
    assert [i.name for i in explorer.trace(f, X, X).inputs] == ["a", "x0"]


def test_default_parameters_may_be_omitted():
    def f(x, scale=2.0):
        return x * scale
    g = explorer.trace(f, X)
    assert len(g.inputs) == 1 and g.node("%1").value == 2.0


@pytest.mark.parametrize("dtype,scalar,const_dtype,out_dtype", [
    (np.float32, 2, np.float32, np.float32),        # python int is weak
    (np.float32, 2.5, np.float32, np.float32),      # python float is weak
    (np.float16, 1.5, np.float16, np.float16),
    (np.int32, 2, np.int32, np.int32),
    (np.int32, 2.5, np.float64, np.float64),        # int array * float -> float64
    (np.bool_, 1, np.int64, np.int64),
    (np.bool_, True, np.bool_, np.bool_),
])
def test_python_scalar_constants_follow_numpy2(dtype, scalar, const_dtype, out_dtype):
    a = np.ones(3, dtype)
    g = explorer.trace(lambda x: x * scalar, a)
    const = [n for n in g.nodes if n.op == "const"][0]
    assert const.dtype == const_dtype and const.shape == () and const.value.dtype == const_dtype
    assert g.outputs[0].dtype == out_dtype == (a * scalar).dtype


def test_comparison_constant_uses_promoted_dtype():
    g = explorer.trace(lambda x: x < 1.5, np.ones(3, np.int32))
    const = [n for n in g.nodes if n.op == "const"][0]
    assert const.dtype == np.float64 and g.outputs[0].dtype == np.bool_


def test_numpy_scalars_and_arrays_are_strong_constants():
    g = explorer.trace(lambda x: x * np.float64(2) + np.arange(3, dtype=np.int32), X)
    consts = [n for n in g.nodes if n.op == "const"]
    assert [c.dtype for c in consts] == [np.float64, np.int32]
    np.testing.assert_array_equal(consts[1].value, np.arange(3))
    assert g.outputs[0].dtype == np.float64


def test_constant_is_copied_at_trace_time():
    w = np.ones(3, F32)
    g = explorer.trace(lambda x: x * w, X)
    w[:] = 5
    assert np.all(g.node("%1").value == 1)


def test_reflected_and_numpy_deferral():
    # ndarray on the left must defer to the Tensor (__array_priority__ / __array_ufunc__)
    g = explorer.trace(lambda x: np.ones((2, 3), F32) - x, X)
    assert [n.op for n in g.op_nodes()] == ["sub"] and g.op_nodes()[0].inputs[1].name == "x"
    g = explorer.trace(lambda x: np.float32(2) * x, X)
    assert [n.op for n in g.op_nodes()] == ["mul"]


def test_provenance_points_at_user_line():
    def f(x):
        y = np.exp(x)
        return y + 1
    g = explorer.trace(f, X)
    src, start = inspect.getsourcelines(f)
    exp_node = g.op_nodes()[0]
    p = exp_node.provenance
    assert p.file == __file__ and p.line == start + 1 and p.function == "f" and p.code == "y = np.exp(x)"
    assert g.op_nodes()[1].provenance.line == start + 2
    assert g.source_file == __file__ and g.source_lines[start + 1].strip() == "y = np.exp(x)"
    assert "# test_tracing.py:" in g.text(provenance=True)


def test_provenance_of_nn_and_mean_is_the_callers_line():
    g = explorer.trace(lambda x: nn.softmax(x) + np.mean(x), X)
    for n in g.op_nodes():
        assert n.provenance.file == __file__ and "nn.softmax(x) + np.mean(x)" in n.provenance.code


def test_methods_and_properties():
    seen = {}

    def f(x):
        seen.update(shape=x.shape, dtype=x.dtype, ndim=x.ndim, size=x.size, len=len(x))
        return x.T, x.reshape(-1), x.transpose(), x.sum(), x.max(axis=0, keepdims=True), x.astype(np.float64)
    g = explorer.trace(f, np.ones((2, 3), F32))
    assert seen == {"shape": (2, 3), "dtype": np.dtype(F32), "ndim": 2, "size": 6, "len": 2}
    assert [o.shape for o in g.outputs] == [(3, 2), (6,), (3, 2), (), (1, 3), (2, 3)]
    assert g.outputs[-1].dtype == np.float64
    assert g.outputs[3].attrs == {"axes": (0, 1), "keepdims": False}


def test_getitem_makes_slice_and_reshape():
    g = explorer.trace(lambda x: x[1, ::2, None], np.ones((3, 4), F32))
    sl, rs = g.op_nodes()
    assert sl.op == "slice" and sl.attrs == {"starts": (1, 0), "stops": (2, 4), "steps": (1, 2)}
    assert rs.op == "reshape" and rs.shape == (2, 1)


def test_full_slice_emits_nothing():
    g = explorer.trace(lambda x: x[:, ...] * 2, X)
    assert [n.op for n in g.op_nodes()] == ["mul"]


def test_mean_traces_to_sum_and_div():
    g = explorer.trace(lambda x: np.mean(x, axis=1), X)
    assert [n.op for n in g.op_nodes()] == ["sum", "div"]
    assert g.node("%1").attrs == {"axes": (1,), "keepdims": False}


def test_mean_float16_accumulates_in_float32():
    g = explorer.trace(lambda x: x.mean(), np.ones(4, np.float16))
    assert [n.op for n in g.op_nodes()] == ["cast", "sum", "div", "cast"]
    assert g.outputs[0].dtype == np.float16


def test_numpy_functions_dispatch():
    def f(x):
        return (np.sum(x, axis=0), np.amax(x), np.min(x, 1, keepdims=True), np.transpose(x),
                np.reshape(x, (3, 2)), np.broadcast_to(x, (4, 2, 3)), np.cumsum(x, axis=1), np.dot(x, x.T),
                np.where(x > 0, x, -x), np.tanh(x), np.maximum(x, 0))
    g = explorer.trace(f, X)
    ops_ = [o.op for o in g.outputs]
    assert ops_ == ["sum", "max", "min", "transpose", "reshape", "broadcast_to", "cumsum", "matmul", "where",
                    "tanh", "maximum"]


def test_supported_numpy_lists_functions():
    s = supported_numpy()
    for name in ("np.matmul", "np.where", "np.sum", "np.mean", "np.exp", "np.maximum", "np.broadcast_to"):
        assert name in s


def test_nn_on_numpy_arrays_returns_numpy():
    x = np.random.default_rng(0).standard_normal((3, 5))
    e = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(nn.softmax(x), e / e.sum(-1, keepdims=True))
    np.testing.assert_allclose(nn.log_softmax(x), np.log(e / e.sum(-1, keepdims=True)))
    np.testing.assert_allclose(nn.relu(x), np.maximum(x, 0))
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(nn.layernorm(x, 2.0, 1.0), (x - mu) / np.sqrt(var + 1e-5) * 2 + 1)
    import math
    exact = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    np.testing.assert_allclose(nn.gelu(x, approximate=False), exact, rtol=1e-12)
    np.testing.assert_allclose(nn.gelu(x), exact, atol=1e-3)
    assert isinstance(nn.softmax(x), np.ndarray)


def test_nn_on_tensors_is_one_composite_node():
    g = explorer.trace(lambda x: nn.softmax(x, axis=0), X)
    assert [n.op for n in g.op_nodes()] == ["softmax"]
    assert g.op_nodes()[0].category == "opaque"
    assert "softmax(x, axis=0)" in g.text()
    assert [n.op for n in explorer.trace(nn.relu, X).op_nodes()] == ["maximum"]
    lg = explorer.trace(lambda x, gm, b: nn.layernorm(x, gm, b), X, np.ones(3, F32), np.ones(3, F32))
    assert [n.op for n in lg.op_nodes()] == ["layernorm", "mul", "add"]


def test_multiple_outputs_and_list_return():
    g = explorer.trace(lambda x: [x + 1, x * 2], X)
    assert len(g.outputs) == 2


def test_prepare_examples_casts_and_makes_contiguous():
    a = np.ones((4, 6))[:, ::2]
    assert not a.flags.c_contiguous
    out = prepare_examples(lambda x, n, s: x, [a, np.arange(3, dtype=np.int32), np.float64(2.0)], np.float16)
    assert [o.dtype for o in out] == [np.float16, np.int32, np.float16]
    assert all(o.flags.c_contiguous for o in out)
    assert out[2].shape == ()   # 0-d stays 0-d


def test_tensor_repr_and_hash():
    def f(x):
        assert "Tensor(x: f32[2,3])" == repr(x)
        {x: 1}  # hashable (by identity) even though == is traced
        return x
    explorer.trace(f, X)


def test_reference_backend_protocol():
    from explorer.backends import reference
    assert reference.available() == (True, "numpy")
    c = explorer.compile(lambda a: np.exp(a) * 1.0, X, target="reference", verbose=False)
    exe = reference.build(c)
    assert exe.graph is c.stage("simplified").ir
    np.testing.assert_allclose(exe.run([X])[0], np.exp(X))
    assert c.reference(X)[0].dtype == F32


def test_cli_demo_runs(tmp_path, capsys):
    from explorer.__main__ import main
    rc = main(["demo", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "== traced" in out and "== simplified" in out and "max abs error vs numpy" in out
    assert "target used:" in out and "wall time" in out and "__main__.py:" in out
    assert os.path.exists(tmp_path / "0_traced.dot") and os.path.exists(tmp_path / "1_simplified.dot")
    assert str(tmp_path) in out
