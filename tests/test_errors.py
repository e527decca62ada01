"""Bad input gives an ExplorerError subclass with a message that names the problem and the fix."""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer import DTypeError, ExplorerError, ShapeError, TraceError, UnsupportedOpError

X = np.ones((2, 3), np.float32)


def _if_positive(x):
    if x > 0:
        return x
    return -x


def _while_loop(x):
    while x.sum() > 0:
        x = x - 1
    return x


def _scatter(x):
    x[x.astype(np.int32)] = 1.0   # a write at a 2-D array of run-time indices (scatter): not supported
    return x


def _write_wrong_shape(x):
    x[...] = np.zeros(4, np.float32)
    return x


def _user_bug(x):
    d = {}
    return x + d["missing"]


TRACE_CASES = [
    # (id, fn, examples, exception class, phrase in message)
    ("if_on_tensor", _if_positive, (X,), TraceError, "data-dependent Python control flow"),
    ("if_suggests_where", _if_positive, (X,), TraceError, "np.where"),
    ("while_on_tensor", _while_loop, (X,), TraceError, "data-dependent"),
    ("and_on_tensor", lambda x: (x > 0) and x, (X,), TraceError, "cannot be traced"),
    ("float_of_tensor", lambda x: float(x.sum()), (X,), TraceError, "float() of a traced value"),
    ("int_of_tensor", lambda x: int(x[0, 0]), (X,), TraceError, "int() of a traced value"),
    ("item", lambda x: x.sum().item(), (X,), TraceError, ".item()"),
    ("iteration", lambda x: [v for v in x], (X,), TraceError, "iterating over a traced array"),
    ("setitem_scatter", _scatter, (X,), UnsupportedOpError, "np.where"),
    ("setitem_wrong_shape", _write_wrong_shape, (X,), ShapeError, "could not broadcast"),
    ("ufunc_out_kwarg", lambda x: np.exp(x, out=x), (X,), TraceError, "out="),
    ("ufunc_dtype_kwarg", lambda x: np.add(x, 1, dtype=np.float64), (X,), TraceError, "dtype"),
    ("unsupported_ufunc", lambda x: np.arctan(x), (X,), UnsupportedOpError, "np.arctan is not supported"),
    ("unsupported_lists_supported", lambda x: np.arctan(x), (X,), UnsupportedOpError, "closest supported: np.tanh"),
    ("unsupported_function", lambda x: np.sort(x), (X,), UnsupportedOpError, "np.sort is not supported"),
    ("ufunc_reduce_method", lambda x: np.add.reduce(x), (X,), UnsupportedOpError, "np.sum"),
    ("floordiv", lambda x: x // 2, (X,), UnsupportedOpError, "//"),
    ("advanced_indexing_two_arrays", lambda x: x[np.array([0, 1]), np.array([0, 1])], (X,), UnsupportedOpError,
     "more than one integer array"),
    ("index_out_of_bounds", lambda x: x[5], (X,), ShapeError, "out of bounds for axis 0 with size 2"),
    ("list_example", lambda x: x, ([1.0, 2.0],), TraceError, "np.asarray"),
    ("string_example", lambda x: x, ("abc",), TraceError, "not an array"),
    ("none_example", lambda x: x, (None,), TraceError, "is None, not an array"),
    ("dict_example", lambda x: x, ({"a": 1},), TraceError, "pass np.ndarray"),
    ("complex_dtype", lambda x: x, (np.ones(3, np.complex64),), DTypeError, "complex64 is not supported"),
    ("uint8_dtype_lists_supported", lambda x: x, (np.ones(3, np.uint8),), DTypeError, "float32, float16"),
    ("string_dtype", lambda x: x, (np.array(["a", "b"]),), DTypeError, "not supported"),
    ("object_dtype", lambda x: x, (np.array([None, 1]),), DTypeError, "object"),
    ("astype_unsupported", lambda x: x.astype(np.uint8), (X,), DTypeError, "uint8 is not supported"),
    ("complex_scalar", lambda x: x + 1j, (X,), DTypeError, "complex"),
    ("too_few_examples", lambda x, y: x + y, (X,), TraceError, "takes 2 positional argument(s)"),
    ("too_many_examples", lambda x: x, (X, X), TraceError, "2 example input(s) were given"),
    ("matmul_shape", lambda x, w: x @ w, (X, np.ones((4, 5), np.float32)), ShapeError, "(2, 3) @ (4, 5)"),
    ("matmul_names_op", lambda x: x @ x, (X,), ShapeError, "matmul: inner dimensions differ"),
    ("broadcast_mismatch", lambda x, y: x + y, (X, np.ones(4, np.float32)), ShapeError,
     "add: cannot broadcast shapes (2, 3) and (4,)"),
    ("broadcast_mismatch_maximum", lambda x: np.maximum(x, np.ones((3, 2), np.float32)), (X,), ShapeError,
     "maximum: cannot broadcast shapes (2, 3) and (3, 2)"),
    ("bad_axis", lambda x: x.sum(axis=2), (X,), ShapeError, "axis 2 is out of range"),
    ("bad_axis_mean", lambda x: np.mean(x, axis=-3), (X,), ShapeError, "out of range"),
    ("bad_reshape", lambda x: x.reshape(4, 2), (X,), ShapeError, "cannot reshape (2, 3)"),
    ("bad_reshape_neg1", lambda x: x.reshape(4, -1), (X,), ShapeError, "cannot reshape 6 elements"),
    ("bad_transpose", lambda x: x.transpose(0, 0), (X,), ShapeError, "not a permutation"),
    ("bad_broadcast_to", lambda x: np.broadcast_to(x, (3, 3)), (X,), ShapeError, "broadcast_to"),
    ("where_non_bool", lambda x: np.where(x, x, 0), (X,), DTypeError, "condition must be bool"),
    ("where_one_arg", lambda x: np.where(x > 0), (X,), UnsupportedOpError, "np.where(cond, a, b)"),
    ("returns_int", lambda x: 3, (X,), TraceError, "returned an int"),
    ("returns_none", lambda x: None, (X,), TraceError, "missing return"),
    ("returns_numpy_array", lambda x: np.ones(3), (X,), TraceError, "not a traced array"),
    ("returns_tuple_with_float", lambda x: (x, 1.0), (X,), TraceError, "as output 1"),
    ("user_exception_wrapped", _user_bug, (X,), TraceError, "KeyError"),
    ("array_conversion", lambda x: np.asarray(x) + 1, (X,), TraceError, "concrete np.ndarray"),
    ("softmax_bad_axis", lambda x: explorer.nn.softmax(x, axis=5), (X,), ShapeError, "softmax: axis 5"),
]


def check_trace_error(case) -> None:
    """case = (id, fn, examples, exception class, phrase): tracing raises that ExplorerError with the phrase."""
    _, fn, examples, exc, phrase = case
    with pytest.raises(exc) as info:
        explorer.trace(fn, *examples)
    assert isinstance(info.value, ExplorerError)
    assert phrase in str(info.value), str(info.value)


def check_raises(call, exc, phrase: str) -> ExplorerError:
    """call() raises `exc`, an ExplorerError subclass, whose message contains `phrase`."""
    with pytest.raises(exc) as info:
        call()
    assert isinstance(info.value, ExplorerError)
    assert phrase in str(info.value), str(info.value)
    return info.value


@pytest.mark.parametrize("case", TRACE_CASES, ids=[c[0] for c in TRACE_CASES])
def test_trace_errors(case):
    check_trace_error(case)


def test_error_names_user_line():
    with pytest.raises(TraceError) as info:
        explorer.trace(_if_positive, X)
    assert "test_errors.py:" in str(info.value) and "if x > 0" in str(info.value)


def test_user_exception_names_file_and_line():
    with pytest.raises(TraceError) as info:
        explorer.trace(_user_bug, X)
    msg = str(info.value)
    assert 'd["missing"]' in msg and "test_errors.py:" in msg
    assert isinstance(info.value.__cause__, KeyError)


def test_compiled_wrong_number_of_inputs():
    c = explorer.compile(lambda a, b: a * b, X, X, target="reference", verbose=False)
    with pytest.raises(TraceError, match="compiled for 2 inputs but was called with 1"):
        c(X)


def test_compiled_wrong_shape():
    c = explorer.compile(lambda a: a * 2, X, target="reference", verbose=False)
    with pytest.raises(ShapeError, match=r"has shape \(3, 3\) but the function was compiled for \(2, 3\)"):
        c(np.ones((3, 3), np.float32))


def test_compiled_wrong_dtype():
    c = explorer.compile(lambda a: a * 2, X, target="reference", verbose=False)
    with pytest.raises(DTypeError, match="complex64"):
        c(np.ones((2, 3), np.complex64))


def test_compile_dtype_knob_unsupported():
    with pytest.raises(DTypeError, match="uint8 is not supported"):
        explorer.compile(lambda a: a, X, dtype=np.uint8, target="reference", verbose=False)


def test_compile_non_array_example():
    with pytest.raises(TraceError, match="np.asarray"):
        explorer.compile(lambda a: a, [1, 2, 3], target="reference", verbose=False)


def test_tensor_escaping_its_trace():
    leaked = []

    def f(x):
        leaked.append(x)
        return x * 2
    explorer.trace(f, X)
    with pytest.raises(TraceError, match="after its trace finished"):
        explorer.trace(lambda y: y + leaked[0], X)


def test_trace_non_callable():
    with pytest.raises(TraceError, match="expected a function"):
        explorer.trace(42, X)


def test_python_int_overflow():
    with pytest.raises(DTypeError, match="does not fit in int32"):
        explorer.trace(lambda a: a + 2 ** 40, np.ones(3, np.int32))
