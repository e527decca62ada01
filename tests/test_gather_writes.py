"""Gathers (x[ids], wte[ids], x[:, [-1]], np.take) and writes as functional updates (x[mask] = v,
x[a:b] = v, x += y), differential against NumPy on reference, sim and cpu, with the CUDA source checked by
`nvcc --ptx`; bad input (run-time indices out of range, float indices, shape-mismatched writes, captured
arrays, stale views) ends in a clear ExplorerError."""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer.errors import (DTypeError, ExplorerError, IndexOutOfRangeError, ShapeError, TraceError,
                             UnsupportedOpError)

rng = np.random.default_rng(7)
F32, F16 = np.float32, np.float16


def a(*shape, dt=F32):
    return rng.standard_normal(shape).astype(dt)


def ids_of(shape, n, dt=np.int32, negative=True):
    lo = -n if negative else 0
    return rng.integers(lo, n, shape).astype(dt)


# ----------------------------------------------------------------------------- functions under test
def embed(wte, ids):
    return wte[ids]


def embed_scaled(wte, ids):
    return np.tanh(wte[ids]) * 2.0 + 1.0          # gather fused with its elementwise neighbours


def embed_pos_ln(wte, wpe, ids):                   # GPT-2's first lines, then a layer norm
    x = wte[ids] + wpe[:ids.shape[-1]]
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5)


def embed_matmul(wte, ids, w):
    return wte[ids] @ w


def last_col(x):
    return x[:, [-1]]


def last_row_logits(x, w):
    return (x @ w)[[-1]]


def cols(x, ids):
    return x[:, ids] * 2


def int_and_array(x, ids):
    return x[0, ids]


def split_advanced(x, ids):                        # NumPy puts the broadcast dims first here
    return x[0, :, ids]


def array_then_slice(x, ids):
    return x[ids, 1:3]


def ellipsis_separates(x, ids):                    # an ellipsis for no axis still separates 0 and ids
    return x[:, 0, ..., ids]


def ellipsis_ids(x, ids):
    return x[..., ids]


def take_axis1(x, ids):
    return np.take(x, ids, axis=1)


def computed_ids(x, ids):
    return x[ids + 1]


def const_rows(x):
    return x[[0, 2, -1]] - 1


def leaky(z, a):
    _z = z.copy()
    _z[z < 0] = _z[z < 0] * a
    return _z


def clamp_high(y):
    y = y.copy()
    y[y > 1] = 0
    return y


def row_mask(y, m):
    y = y.copy()
    y[m] = -1
    return y


def slice_bcast(x, k):
    y = x.copy()
    y[:, 2:5] = k
    return y


def strided_int(x):
    y = x.copy()
    y[::2, 1] = 3
    return y


def negative_step(x, v):
    y = x.copy()
    y[::-2] = v
    return y


def iadd_imul(x, y):
    x += y
    x *= 2
    return x


def iadd_int(x):
    x += 3
    return x


def iadd_f32_f64(x, y):                            # x stays float32, as NumPy's in-place add
    x += y
    return x


def writes_in_sequence(x):
    y = x.copy()
    y[0] = 1
    y[1:3, ::2] = y[1:3, ::2] * 3
    y[:, -1] = -5
    y[[0, 4, 4]] = 7
    return y


def write_whole(x, v):
    y = x.copy()
    y[:] = v
    return y + 1


def alias_sees_write(x):
    a = x
    a += 1
    return x * 2                                   # NumPy: x is a, so it sees the += 1


def write_input(x):
    x[0] = 0
    return x * 2


def cache_update(cache, k):                        # a KV cache passed as an argument: functional update
    cache[:, 2:4] = k
    return cache


def written_then_matmul(x, w):                     # a slice write feeding a matmul operand
    y = x.copy()
    y[:, :2] = 0
    return y @ w


def row_copy_in_softmax(x):                        # a write reading another row of a reduced value
    y = np.exp(x - x.max(-1, keepdims=True))
    y[0] = y[1]
    return y / y.sum(-1, keepdims=True)


def const_cols(x):
    return x[:, [3, -1, 0]]


def pos_range(wpe, ids):                          # picoGPT: wte[inputs] + wpe[range(len(inputs))]
    return wpe[ids] + wpe[range(ids.shape[-1])]


def write_rows_const(x, v):
    y = x.copy()
    y[[1, 2, 3]] = v
    return y


def kv_cache_write(cache, xk, pos):               # a decode step: the position is a run-time value
    cache[:, pos] = xk
    return cache


def scatter_rows(x, ids, v):                       # NumPy: the last of repeated indices wins
    y = x.copy()
    y[ids] = v
    return y


def slice_iadd(x):                                # x[a:b] += v: the in-place op writes through the view
    x[:, 1:3] += 1
    x[0] *= 2
    return x


def view_write_through(x):                         # a write to a view reaches its base, as in NumPy
    y = x.copy()
    v = y[0]
    v[v < 0] = 7
    v *= 2
    return y, v


def strided_inplace(x):
    y = x.copy()
    y[::2, 1:] *= 3
    y[-1] -= y[0]
    return y


def masked_imul(z, a):
    z = z.copy()
    z[z < 0] *= a
    return z


CASES = {
    "embed_f32_i32": (embed, lambda: (a(20, 8), ids_of((5,), 20))),
    "embed_f32_i64": (embed, lambda: (a(20, 8), ids_of((5,), 20, np.int64))),
    "embed_f16_i32": (embed, lambda: (a(20, 8, dt=F16), ids_of((7,), 20))),
    "embed_f16_i64_bt": (embed, lambda: (a(33, 5, dt=F16), ids_of((2, 3), 33, np.int64))),
    "embed_negative": (embed, lambda: (a(9, 4), np.array([-1, -9, 0, 8, -5], np.int32))),
    "embed_bt": (embed, lambda: (a(50, 16), ids_of((3, 7), 50, negative=False))),
    "embed_size1_rows": (embed, lambda: (a(1, 3), np.zeros((4,), np.int64))),
    "embed_scaled": (embed_scaled, lambda: (a(40, 12), ids_of((2, 6), 40))),
    "embed_pos_ln": (embed_pos_ln, lambda: (a(50, 16), a(8, 16), ids_of((2, 8), 50, np.int64))),
    "embed_matmul": (embed_matmul, lambda: (a(30, 16), ids_of((2, 5), 30), a(16, 12))),
    "last_col": (last_col, lambda: (a(6, 9),)),
    "last_row_logits": (last_row_logits, lambda: (a(5, 8), a(8, 11))),
    "cols": (cols, lambda: (a(6, 10), ids_of((4,), 10, np.int64))),
    "int_and_array": (int_and_array, lambda: (a(3, 7), ids_of((2, 2), 7))),
    "split_advanced": (split_advanced, lambda: (a(2, 3, 5), ids_of((4,), 5))),
    "array_then_slice": (array_then_slice, lambda: (a(6, 5), ids_of((3,), 6))),
    "ellipsis_separates": (ellipsis_separates, lambda: (a(4, 5, 6), ids_of((2, 2), 6))),
    "ellipsis_ids": (ellipsis_ids, lambda: (a(2, 3, 5), ids_of((2,), 5, np.int64))),
    "take_axis1": (take_axis1, lambda: (a(4, 9), ids_of((3,), 9))),
    "computed_ids": (computed_ids, lambda: (a(8, 3), ids_of((5,), 7, negative=False))),
    "const_rows": (const_rows, lambda: (a(5, 4),)),
    "leaky_f32": (leaky, lambda: (a(6, 10), np.float32(0.1))),
    "leaky_f16": (leaky, lambda: (a(7, 3, dt=F16), np.float16(0.2))),
    "clamp_high": (clamp_high, lambda: (a(5, 5),)),
    "row_mask": (row_mask, lambda: (a(6, 4), rng.random(6) > 0.5)),
    "slice_bcast": (slice_bcast, lambda: (a(6, 10), a(6, 1))),
    "strided_int": (strided_int, lambda: (a(7, 3),)),
    "negative_step": (negative_step, lambda: (a(7, 3), a(3))),
    "iadd_imul": (iadd_imul, lambda: (a(6, 10), a(10))),
    "iadd_int": (iadd_int, lambda: (rng.integers(0, 9, (4, 5)).astype(np.int32),)),
    "iadd_f32_f64": (iadd_f32_f64, lambda: (a(4, 5), a(5, dt=np.float64))),
    "writes_in_sequence": (writes_in_sequence, lambda: (a(6, 9),)),
    "write_whole": (write_whole, lambda: (a(4, 3), a(3))),
    "alias_sees_write": (alias_sees_write, lambda: (a(3, 4),)),
    "write_input": (write_input, lambda: (a(3, 4),)),
    "cache_update": (cache_update, lambda: (a(2, 6, 4), a(2, 2, 4))),
    "written_then_matmul": (written_then_matmul, lambda: (a(16, 8), a(8, 16))),
    "const_cols": (const_cols, lambda: (a(4, 9),)),
    "slice_iadd": (slice_iadd, lambda: (a(3, 5),)),
    "view_write_through": (view_write_through, lambda: (a(3, 5),)),
    "strided_inplace": (strided_inplace, lambda: (a(5, 4),)),
    "masked_imul": (masked_imul, lambda: (a(4, 6), np.float32(0.25))),
    "pos_range": (pos_range, lambda: (a(10, 4), ids_of((2, 5), 10))),
    "write_rows_const": (write_rows_const, lambda: (a(6, 3), a(3))),
    "kv_cache_write": (kv_cache_write, lambda: (a(2, 8, 4), a(2, 4), np.array(-3, np.int64))),
    "scatter_rows": (scatter_rows, lambda: (a(6, 3), np.array([4, -2, 1], np.int32), a(3, 3))),
    "row_copy_in_softmax": (row_copy_in_softmax, lambda: (a(5, 7),)),
}

TARGETS = ["reference", "sim", "cpu"]


def _cpu_ok() -> bool:
    from explorer.backends import cpu
    return cpu.available()[0]


def check(got, want, label):
    assert got.shape == want.shape, f"{label}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{label}: dtype {got.dtype} != {want.dtype}"
    tol = {np.dtype(F16): 2e-2, np.dtype(F32): 2e-4}.get(want.dtype, 0)
    if tol:
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol,
                                   err_msg=label)
    else:
        np.testing.assert_array_equal(got, want, err_msg=label)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_equals_numpy(name, target):
    if target == "cpu" and not _cpu_ok():
        pytest.skip("no C compiler")
    fn, make = CASES[name]
    args = make()
    want = fn(*[x.copy() if isinstance(x, np.ndarray) else x for x in args])
    before = [x.copy() if isinstance(x, np.ndarray) else x for x in args]
    c = explorer.compile(fn, *args, target=target, verbose=False)
    got = c(*args)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        check(g, np.asarray(w), f"{name} on {target}")
    for x, b in zip(args, before):           # writes are functional: the caller's arrays are untouched
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, b)


# one of each kind of kernel (nvcc takes ~1 s per program): gathers (f16/i32, i64 in a reduce kernel,
# computed indices), masked and strided writes, a write feeding a matmul, run-time-index writes
@pytest.mark.parametrize("name", ["embed_f16_i32", "embed_scaled", "embed_pos_ln", "computed_ids", "leaky_f16",
                                  "slice_bcast", "writes_in_sequence", "written_then_matmul", "kv_cache_write",
                                  "scatter_rows"])
def test_cuda_source_compiles_to_ptx(name):
    from explorer.backends import nvcc
    ok, why = nvcc.available()
    if not ok:
        pytest.skip(why)
    fn, make = CASES[name]
    c = explorer.compile(fn, *make(), target="cuda", stop_after="codegen", verbose=False)
    ptx = nvcc.check(c.codegen.source(), arch="sm_80", mode="ptx")
    for k in c.kernels:
        assert f".entry {k.name}(" in ptx


def test_gather_fuses_with_elementwise_neighbours():
    c = explorer.compile(embed_scaled, *CASES["embed_scaled"][1](), target="sim", verbose=False)
    fused = c.stage("fused").ir
    assert len(fused.groups) == 1 and fused.groups[0].ops == ["take", "tanh", "mul", "add"]
    # the lowered loop loads the index first, then the row it names
    text = c.stage("lowered").text()
    assert "wte[(ids[i0, i1] % 40 + 40) % 40, i2]" in text


def test_gather_feeding_matmul_is_materialized_with_reason():
    c = explorer.compile(embed_matmul, *CASES["embed_matmul"][1](), target="sim", verbose=False)
    d = [d for d in c.stage("fused").ir.decisions if d.producer.op == "take"][0]
    assert not d.fused and "run-time index" in d.reason


def test_constant_index_is_wrapped_at_trace_time():
    g = explorer.trace(const_cols, a(6, 9))
    take = [n for n in g.nodes if n.op == "take"][0]
    assert take.inputs[1].value.tolist() == [3, 8, 0]   # -1 wrapped to the last column
    assert take.inputs[1].provenance.code == "return x[:, [3, -1, 0]]"


def test_evenly_stepping_constant_indices_become_slices():
    assert [n.op for n in explorer.trace(last_col, a(6, 9)).op_nodes()] == ["slice"]
    g = explorer.trace(pos_range, a(10, 4), ids_of((2, 5), 10))
    assert [n.op for n in g.op_nodes()] == ["take", "slice", "add"]
    g = explorer.trace(write_rows_const, a(6, 3), a(3))
    assert [n.op for n in g.op_nodes()] == ["reshape", "set_slice"]   # v: (3,) → the box rank (1, 3)


def test_cost_of_gather_counts_rows_read_not_the_table():
    from explorer.ops import node_cost
    g = explorer.trace(embed, a(1000, 16), ids_of((4,), 1000))
    cost = node_cost([n for n in g.nodes if n.op == "take"][0])
    assert cost.bytes_read == 4 * 4 + 4 * 16 * 4


def test_slice_write_lowers_to_select_on_the_box():
    c = explorer.compile(slice_bcast, a(6, 10), a(6, 1), target="sim", verbose=False)
    assert [n.op for n in c.graph.op_nodes()] == ["set_slice"]
    text = c.stage("lowered").text()
    assert "select(i1 - 2 >= 0 && i1 - 2 <= 2, k_[i0, 0], x[i0, i1])" in text


def test_multiline_statement_provenance():
    def padded(x):
        y = np.maximum(
            x,
            0.5,
        )
        return y

    g = explorer.trace(padded, a(3))
    p = [n for n in g.op_nodes()][0].provenance
    assert p.code == "y = np.maximum(x, 0.5,)"
    assert p.end_line == p.line + 3


# ----------------------------------------------------------------------------- bad input
CACHE = np.zeros((2, 8), np.float32)
TABLE = np.ones((10, 4), np.float32)


def _compile(fn, *args, target="sim"):
    return explorer.compile(fn, *args, target=target, verbose=False)


@pytest.mark.parametrize("target", TARGETS)
def test_runtime_index_out_of_range(target):
    if target == "cpu" and not _cpu_ok():
        pytest.skip("no C compiler")
    wte, ids = a(10, 4), np.array([1, 2, 3], np.int32)
    c = _compile(embed, wte, ids, target=target)
    for bad, v in ((np.array([1, 10, 3], np.int32), 10), (np.array([-11, 0, 0], np.int32), -11)):
        with pytest.raises(IndexOutOfRangeError, match=rf"index {v} at position \({list(bad).index(v)},\) of ids "
                                                       rf"is out of bounds for an axis of size 10"):
            c(wte, bad)
    with pytest.raises(IndexError):          # NumPy code catching IndexError keeps working
        c(wte, np.array([0, 0, 99], np.int32))


def test_scatter_index_out_of_range_at_run_time():
    c = _compile(kv_cache_write, a(2, 8, 4), a(2, 4), np.array(0, np.int64), target="cpu" if _cpu_ok() else "sim")
    with pytest.raises(IndexOutOfRangeError, match="index 8 at position \\(\\) of pos"):
        c(a(2, 8, 4), a(2, 4), np.array(8, np.int64))


def test_computed_index_out_of_range_is_caught_before_kernels():
    c = _compile(computed_ids, a(8, 3), np.array([0, 1, 2, 3, 4], np.int32), target="cpu" if _cpu_ok() else "sim")
    with pytest.raises(IndexOutOfRangeError, match="index 8 .* the index array"):
        c(a(8, 3), np.array([0, 7, 2, 3, 4], np.int32))


def test_constant_index_out_of_range_at_trace_time():
    with pytest.raises(IndexOutOfRangeError, match="index 7 is out of bounds for axis 0 with size 5"):
        explorer.trace(lambda x: x[[0, 7]], a(5, 2))


@pytest.mark.parametrize("fn,match", [
    (lambda x, f: x[f], "must be of integer"),
    (lambda x, f: x[[0.5, 1.0]], "must be of integer"),
])
def test_float_index_array(fn, match):
    with pytest.raises(DTypeError, match=match):
        explorer.trace(fn, a(5, 2), a(3))


@pytest.mark.parametrize("fn,args,err,match", [
    (lambda x, i: x[i, i], (a(5, 5), ids_of((2,), 5)), UnsupportedOpError, "more than one integer array"),
    (lambda x, i: x.__setitem__((0, i), 0.0), (a(5, 5), ids_of((2,), 5)), UnsupportedOpError,
     "full slices on the other axes"),
    (lambda x, i: x.__setitem__(i, 0.0), (a(5, 5), ids_of((2, 2), 5)), UnsupportedOpError, "a flat list"),
    (lambda x: x.__setitem__((slice(None), slice(2, 5)), np.ones(4, F32)), (a(6, 10),), ShapeError,
     r"could not broadcast v of shape \(4,\) into the written region of shape \(6, 3\)"),
    (lambda x: x.__setitem__(x > 0, x * 2), (a(6, 10),), ShapeError, "boolean-mask selection"),
    (lambda x, m: x[m], (a(6, 4), np.ones(5, bool)), ShapeError, "does not match the array of shape"),
    (lambda x: x[x > 0], (a(6, 4),), UnsupportedOpError, "boolean-mask selection.*np.where for masking"),
    (lambda x: x[x > 0].sum(), (a(6, 4),), UnsupportedOpError, "boolean-mask selection"),
    (lambda x: x[x > 0] * x, (a(6, 4),), ShapeError, "combined with an array of shape"),
])
def test_bad_index_and_write(fn, args, err, match):
    with pytest.raises(err, match=match):
        explorer.trace(fn, *args)


def test_inplace_shape_and_dtype_errors():
    def grow(x, y):
        x += y
        return x

    with pytest.raises(ShapeError, match=r"result has shape \(3, 4\) but x has shape \(4,\)"):
        explorer.trace(grow, a(4), a(3, 4))
    with pytest.raises(DTypeError, match="cannot cast the result from float64 to x's dtype int32"):
        explorer.trace(grow, np.zeros(4, np.int32), a(4))


def _write_captured(x):
    CACHE[:, 0:2] = x
    return x


def _write_local_ndarray(x):
    out = np.zeros((2, 4), np.float32)
    out[:, 0:2] = x
    return out


@pytest.mark.parametrize("fn,match", [
    (_write_captured, r"`CACHE\[...\] = ...` writes a traced value into CACHE, a NumPy array captured from outside "
                      r"the function.*pass CACHE as an argument"),
    (_write_local_ndarray, r"`out\[...\]` writes a traced value into out, a NumPy array made inside the function"),
])
def test_write_into_an_ndarray_names_it(fn, match):
    with pytest.raises(TraceError, match=match):
        explorer.trace(fn, a(2, 2))


def test_captured_array_indexed_by_traced_value_names_it():
    class Model:
        def __init__(self):
            self.tok_embedding = TABLE

        def forward(self, ids):
            return self.tok_embedding[ids]

    with pytest.raises(TraceError, match=r"`self.tok_embedding\[...\]` indexes self.tok_embedding, a NumPy array "
                                         r"captured from outside the function.*test_gather_writes.py"):
        explorer.trace(Model().forward, ids_of((3,), 10))


def test_view_read_after_write_to_its_base():
    def f(x):
        y = x.copy()
        row = y[0]
        y[0] = 5
        return row

    with pytest.raises(TraceError, match=r"shares memory with one written afterwards by `x\[...\] = v`"):
        explorer.trace(f, a(3, 4))


def test_view_read_after_a_write_through_another_view():
    def f(x):
        y = x.copy()
        a, b = y[0:2], y[1]
        a += 1                   # NumPy: b sees it (they overlap); b is stale here
        return b

    with pytest.raises(TraceError, match=r"written afterwards by `x \+= y`"):
        explorer.trace(f, a(3, 4))


def test_errors_are_explorer_errors():
    assert issubclass(IndexOutOfRangeError, ExplorerError) and issubclass(IndexOutOfRangeError, IndexError)


def test_kernel_cost_of_gather_counts_picked_rows():
    from explorer.costmodel import kernel_costs
    wte, ids = a(1000, 16), ids_of((4,), 1000)
    c = explorer.compile(embed_scaled, wte, ids, target="cpu" if _cpu_ok() else "sim", verbose=False)
    cost = kernel_costs(c, "t4", counters=False)[0]
    assert cost.bytes_read == ids.nbytes + 4 * 16 * 4      # the 4 rows, not the 64 KB table


def test_simulator_counts_the_index_load_of_every_gathered_element():
    """The model counts unique bytes (the index once, the picked rows once); the simulator counts every
    access executed: each element of a row loads its row's index again (from cache, on real hardware)."""
    from explorer.costmodel import kernel_costs
    wte, ids = a(40, 12), ids_of((2, 6), 40)
    c = explorer.compile(embed_scaled, wte, ids, target="sim", verbose=False)
    c(wte, ids)
    rows = ids.size * 12 * 4
    (model,) = kernel_costs(c, "t4", counters=False)
    (measured,) = kernel_costs(c, "t4")
    assert (model.bytes_read, model.bytes_written) == (ids.nbytes + rows, rows)
    assert measured.source == "simulator"
    assert (measured.bytes_read, measured.bytes_written) == (ids.nbytes * 12 + rows, rows)
