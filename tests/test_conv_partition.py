"""Convolution on the CPU without the padding test in its interior (Schedule.partition,
passes/index_split.partition_loops) and with 64-byte register vectors (Schedule.vectorize(axis, 64)).

The tiled snapshot splits the output rows and column tiles into border pieces (padding selects kept) and an
interior piece (no select, no guard); every variant equals NumPy on reference, sim (the CUDA schedule), cpu
(the C) and on the simulator running the CPU's own vectorized snapshot (the partitioned loops), with both
vector widths whatever the host has."""
from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view as swv

import explorer
from explorer import loopir as L
from explorer.backends import cpu
from explorer.backends import simulator as S
from explorer.errors import ScheduleError
from explorer.passes.index_split import partition_loops
from explorer.schedules import cpu as cpu_schedules

HAVE_CC, WHY = cpu.available()
needs_cc = pytest.mark.skipif(not HAVE_CC, reason=f"no C compiler: {WHY}")


def rnd(*shape, seed=0):
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


def same(x, w, b):                                # 'same' padding, bias, relu
    win = swv(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), axis=(1, 2))
    return np.maximum(np.einsum("nhwcrs,rsck->nhwk", win, w) + b, 0)


def stride2(x, w, b):
    win = swv(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), axis=(1, 2))[:, ::2, ::2]
    return np.maximum(np.einsum("nhwcrs,rsck->nhwk", win, w) + b, 0)


def valid(x, w, b):                               # no padding: no select, only a partial column tile
    return np.einsum("nhwcrs,rsck->nhwk", swv(x, (3, 3), axis=(1, 2)), w) + b


def depthwise(x, w, b):
    win = swv(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), axis=(1, 2))
    return np.maximum(np.einsum("nhwcrs,rsc->nhwc", win, w) + b, 0)


def asym5x5(x, w, b):                             # a 5x5 window, padding 2 on top/left only
    win = swv(np.pad(x, ((0, 0), (2, 0), (2, 0), (0, 0))), (5, 5), axis=(1, 2))
    return np.einsum("nhwcrs,rsck->nhwk", win, w) + b


def nn_dilated(x, w, b):
    return explorer.nn.conv2d(x, w, padding=2, dilation=2) + b


# name: (fn, x shape, w shape, b shape): odd sizes, several column tiles and rows, batch 2
CASES = {
    "same_k64": (same, (1, 9, 15, 5), (3, 3, 5, 64), (64,)),
    "same_k32_batch2": (same, (2, 7, 19, 3), (3, 3, 3, 32), (32,)),
    "same_k5": (same, (1, 7, 11, 3), (3, 3, 3, 5), (5,)),
    "stride2_k32": (stride2, (1, 11, 41, 4), (3, 3, 4, 32), (32,)),
    "valid_k16": (valid, (1, 8, 21, 3), (3, 3, 3, 16), (16,)),
    "depthwise_c32": (depthwise, (1, 9, 21, 32), (3, 3, 32), (32,)),
    "depthwise_c5": (depthwise, (1, 7, 13, 5), (3, 3, 5), (5,)),
    "asym5x5_k16": (asym5x5, (1, 9, 27, 2), (5, 5, 2, 16), (16,)),
    "dilated_k32": (nn_dilated, (1, 9, 23, 3), (3, 3, 3, 32), (32,)),
}


def args_of(name):
    _, xs, ws, bs = CASES[name]
    return rnd(*xs), rnd(*ws, seed=1) / 4, rnd(*bs, seed=2)


def check(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.fixture(params=[32, 64], ids=["32-byte", "64-byte"])
def vector_bytes(request, monkeypatch):
    """Both register widths, whatever this host has (a 64-byte vector is split in halves without AVX-512)."""
    monkeypatch.setattr(cpu_schedules, "native_vector_bytes", lambda: request.param)
    return request.param


def _pieces(kernel: L.Kernel, var: str) -> list[L.For]:
    return [f for f in L.walk_loops(kernel.body) if f.var.name == var]


def _selects(stmts) -> int:
    return sum(isinstance(x, L.Select) for s in L.walk(stmts) for e in L.stmt_exprs(s) for x in L.walk_expr(e))


def _tested(stmts) -> bool:
    """A padding select or a bounds guard (a partial tile's if) somewhere in stmts."""
    return bool(_selects(stmts)) or any(isinstance(s, L.If) for s in L.walk(stmts))


@pytest.mark.parametrize("name", sorted(CASES))
def test_cpu_snapshot_on_the_simulator_and_c_equal_numpy(name, vector_bytes):
    args = args_of(name)
    want = CASES[name][0](*args)
    c = explorer.compile(CASES[name][0], *args, target="cpu", stop_after="vectorized" if not HAVE_CC else None,
                         verbose=False)
    outs, _ = S.run_program(c.stage("vectorized").ir, list(args))     # the partitioned loops, run as IR
    check(outs[0], want)
    if HAVE_CC:
        check(c(*args), want)


@pytest.mark.parametrize("target", ["reference", "sim"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_other_targets_equal_numpy(name, target):
    args = args_of(name)
    check(explorer.compile(CASES[name][0], *args, target=target, verbose=False)(*args), CASES[name][0](*args))


@pytest.mark.parametrize("name", ["same_k64", "same_k32_batch2", "stride2_k32", "depthwise_c32", "asym5x5_k16"])
def test_interior_has_no_padding_test(name, vector_bytes):
    args = args_of(name)
    c = explorer.compile(CASES[name][0], *args, target="cpu", stop_after="tiled", verbose=False)
    tiled = c.stage("tiled")
    assert "partition(oh)" in tiled.text() and "partition(ow_o)" in tiled.text()
    k = tiled.ir.kernels[0]
    rows = _pieces(k, "oh")
    # top border, interior, bottom border (asym5x5 pads the top only: no bottom border)
    assert len(rows) == (2 if name == "asym5x5_k16" else 3), [f.extent for f in rows]
    top, mid, bottom = rows[0], rows[1], rows[2:]
    assert _selects(top.body) and all(_selects(f.body) for f in bottom)
    # inside the interior rows: column tiles with the left/right test, and the interior tiles with none
    cols = [f for f in mid.body if isinstance(f, L.For)] if mid.var.name == "oh" else []
    assert len(cols) >= 3 and _tested(cols[0].body) and _tested(cols[-1].body)
    assert any(not _tested(f.body) for f in cols[1:-1])
    assert sum(f.extent for f in rows) == c.stage("lowered").ir.computes[0].axis("oh").extent


def test_unpadded_conv_partitions_only_the_partial_column_tile(vector_bytes):
    args = args_of("valid_k16")
    k = explorer.compile(valid, *args, target="cpu", stop_after="tiled", verbose=False).stage("tiled").ir.kernels[0]
    assert len(_pieces(k, "oh")) == 1 and _selects(k.body) == 0
    tiles = _pieces(k, "ow_o")
    assert len(tiles) == 2                                           # full tiles without a guard, then the rest
    assert not any(isinstance(s, L.If) for s in L.walk(tiles[0].body))


def test_64_byte_vectors_reach_the_micro_kernel_and_the_c(monkeypatch):
    monkeypatch.setattr(cpu_schedules, "native_vector_bytes", lambda: 64)
    args = args_of("same_k64")
    c = explorer.compile(same, *args, target="cpu", stop_after="codegen", verbose=False)
    assert "vectorize(oc_v, 64 bytes)" in c.stage("tiled").text()
    mks = [s for k in c.stage("vectorized").ir.kernels for s in L.walk(k.body) if isinstance(s, L.MicroKernel)]
    assert mks and all(t.lanes == 16 for mk in mks for t in mk.tiles)
    interior = [mk for mk in mks if _selects((mk.loop,)) == 0]
    assert interior and sum(len(t.bases) for t in interior[0].tiles) == 24   # 6 columns x 4 vectors of 16
    src = c.codegen.source()
    assert "ke_v16f" in src and "ke_fma_v16f(" in src
    monkeypatch.setattr(cpu_schedules, "native_vector_bytes", lambda: 32)
    c32 = explorer.compile(same, *args, target="cpu", stop_after="codegen", verbose=False)
    assert "64 bytes" not in c32.stage("tiled").text() and "ke_v16f" not in c32.codegen.source()


def test_thread_tile_knob_keeps_the_vector_width_the_host_has(monkeypatch):
    monkeypatch.setattr(cpu_schedules, "native_vector_bytes", lambda: 64)
    args = args_of("same_k64")
    c = explorer.compile(same, *args, target="cpu", schedule={"thread_tile": (3, 32)}, stop_after="vectorized",
                         verbose=False)
    assert "split(ow, 3)" in c.stage("tiled").text() and "vectorize(oc_v, 64 bytes)" in c.stage("tiled").text()
    outs, _ = S.run_program(c.stage("vectorized").ir, list(args))
    check(outs[0], same(*args))
    c = explorer.compile(same, *args, target="cpu", schedule={"thread_tile": (3, 8)}, stop_after="tiled",
                         verbose=False)
    assert "bytes" not in c.stage("tiled").text()     # 8 channels: less than one 64-byte vector


def test_partition_loops_splits_at_the_decided_ranges():
    x, acc = L.Buffer("x", (56,)), L.Buffer("acc", (4,), "f32", "local")
    ow_o, ow_i, kw = L.Var("ow_o"), L.Var("ow_i"), L.Var("kw")
    col = ow_o * 4 + ow_i + kw - 1
    sel = L.Select(L.all_of([L.BinOp(">=", col, L.Const(0)), L.BinOp("<", col, L.Const(56))]), x[col], L.Const(0.0))
    body = L.For(kw, 3, (L.For(ow_i, 4, (L.Store(acc, (ow_i,), acc[ow_i] + sel),), "unrolled"),))
    loop = L.For(ow_o, 14, (body,))
    pieces = partition_loops((loop,), {"ow_o"})
    assert [p.extent for p in pieces] == [1, 12, 1]
    assert [_selects(p.body) for p in pieces] == [1, 0, 1]
    assert partition_loops((loop,), set()) == (loop,)
    assert partition_loops((loop,), {"kw"}) == (loop,)                # kw's tests depend on ow_o: undecided


def test_partition_leaves_undecidable_tests_alone():
    x, y = L.Buffer("x", (8,)), L.Buffer("y", (8,))
    i, j = L.Var("i"), L.Var("j")
    # i % 4 is not affine, and j is not a loop inside i: neither test can be decided per iteration of i
    body = (L.Store(y, (i,), L.Select(L.BinOp("<", i % 4, L.Const(2)), x[i], L.Const(0.0))),
            L.Store(y, (i,), L.Select(L.BinOp("<", i + j, L.Const(2)), x[i], L.Const(0.0))))
    loop = L.For(i, 8, body)
    assert partition_loops((loop,), {"i"}) == (loop,)


@pytest.mark.parametrize("build,match", [
    (lambda s: s.partition("nope"), "axis 'nope' is not a loop"),
    (lambda s: (s.bind("i0", "blockIdx.x"), s.partition("i0")), "bound to blockIdx.x"),
    (lambda s: s.vectorize("i0", 48), "vector_bytes must be 32"),
])
def test_schedule_errors(build, match):
    s = explorer.Schedule()
    build(s)
    with pytest.raises(ScheduleError, match=match):
        explorer.compile(lambda a: np.exp(a), np.ones(16, np.float32), target="sim", schedule=s, verbose=False)


def test_a_user_partition_on_the_simulator():
    def f(x):
        return np.pad(x, (3, 2)) * 2
    x = np.arange(11, dtype=np.float32)
    s = explorer.Schedule()
    s.partition("i0")
    c = explorer.compile(f, x, target="sim", schedule=s, verbose=False)
    loops = [l for l in L.walk_loops(c.stage("tiled").ir.kernels[0].body) if l.var.name == "i0"]
    assert [l.extent for l in loops] == [3, 11, 2] and "partition(i0)" in c.stage("tiled").text()
    check(c(x), f(x))
