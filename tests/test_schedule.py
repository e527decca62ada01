"""Schedules as data: each primitive's effect on the generated loop nest, and every ScheduleError."""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer import loopir as L
from explorer.errors import ScheduleError
from explorer.passes.lower import Axis, Compute, StoreDef, Accum
from explorer.passes.tiling import generate_kernel
from explorer.schedule import Schedule, apply, default_schedule

X = L.Buffer("x", (10, 12), "f32")
Y = L.Buffer("y", (10, 12), "f32")


def ew_compute():
    i, j = L.Var("i"), L.Var("j")
    return Compute("elementwise", "k", (Axis("i", 10), Axis("j", 12)),
                   stores=(StoreDef(Y, (i, j), L.call("exp", L.Load(X, (i, j)))),), inputs=(X,), outputs=(Y,))


def run_sim(kernel, **arrays):
    from explorer.backends.simulator import simulate_kernel
    simulate_kernel(kernel, arrays)
    return arrays


def loops(kernel):
    return [(f.var.name, f.extent, f.kind) for f in L.walk_loops(kernel.body)]


def check_ew(kernel):
    x = np.random.default_rng(0).standard_normal((10, 12)).astype(np.float32)
    y = np.zeros_like(x)
    run_sim(kernel, x=x, y=y)
    np.testing.assert_allclose(y, np.exp(x), rtol=1e-6)


def test_split_divisible_has_no_guard():
    s = Schedule(); s.split("j", 4)
    k = generate_kernel(ew_compute(), s, "cuda")
    assert loops(k) == [("i", 10, "serial"), ("j_o", 3, "serial"), ("j_i", 4, "serial")]
    assert not any(isinstance(x, L.If) for x in L.walk(k.body))
    check_ew(k)


def test_split_non_divisible_adds_guard():
    s = Schedule(); s.split("i", 4)
    k = generate_kernel(ew_compute(), s, "cuda")
    assert ("i_o", 3, "serial") in loops(k)
    ifs = [x for x in L.walk(k.body) if isinstance(x, L.If)]
    assert len(ifs) == 1 and "< 10" in L.expr_text(ifs[0].cond)
    check_ew(k)


def test_fuse_then_split_and_bind():
    s = Schedule(); f = s.fuse("i", "j"); b, t = s.split(f, 32, names=("b", "t"))
    s.bind(b, "blockIdx.x"); s.bind(t, "threadIdx.x")
    k = generate_kernel(ew_compute(), s, "cuda")
    assert k.launch() == {"grid": (4, 1, 1), "block": (32, 1, 1)}
    assert loops(k) == [("b", 4, "blockIdx.x"), ("t", 32, "threadIdx.x")]
    check_ew(k)


def test_reorder():
    s = Schedule(); s.reorder("j", "i")
    k = generate_kernel(ew_compute(), s, "cuda")
    assert [l[0] for l in loops(k)] == ["j", "i"]
    check_ew(k)


def test_unroll_vectorize_parallel_kinds():
    s = Schedule(); jo, ji = s.split("j", 4); s.vectorize(ji); s.unroll(jo); s.parallel("i")
    k = generate_kernel(ew_compute(), s, "cpu")
    assert loops(k) == [("i", 10, "parallel"), ("j_o", 3, "unrolled"), ("j_i", 4, "vectorized")]
    check_ew(k)


def mm_compute(M=20, N=24, K=16):
    A, B, C = L.Buffer("a", (M, K)), L.Buffer("b", (K, N)), L.Buffer("c", (M, N))
    acc = L.Buffer("acc", (), "f32", "local")
    i, j, k = L.Var("i"), L.Var("j"), L.Var("k")
    return Compute("contraction", "mm", (Axis("i", M), Axis("j", N)), (Axis("k", K),),
                   (Accum(acc, "sum", L.Load(A, (i, k)) * L.Load(B, (k, j))),),
                   (StoreDef(C, (i, j), L.Load(acc, ())),), inputs=(A, B), outputs=(C,), operands=("a", "b"))


def check_mm(kernel, M=20, N=24, K=16):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    c = np.zeros((M, N), np.float32)
    run_sim(kernel, a=a, b=b, c=c)
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)


def test_cache_write_register_tile():
    s = Schedule(); io, ii = s.split("i", 4); jo, ji = s.split("j", 8)
    s.reorder(io, jo, "k", ii, ji); s.cache_write("local", at=jo)
    k = generate_kernel(mm_compute(), s, "cuda")
    allocs = [x.buffer for x in L.walk(k.body) if isinstance(x, L.Alloc)]
    assert any(b.scope == "local" and b.shape == (4, 8) for b in allocs)
    check_mm(k)


def test_cache_read_shared_stages_tiles_between_barriers():
    c = mm_compute()
    s = default_schedule(c, "cuda", {"tile": (8, 8, 4), "thread_tile": (2, 2), "double_buffer": False})
    k = generate_kernel(c, s, "cuda")
    shared = [x.buffer for x in L.walk(k.body) if isinstance(x, L.Alloc) and x.buffer.scope == "shared"]
    assert {b.shape for b in shared} == {(8, 4), (4, 8)}
    assert sum(isinstance(x, L.Barrier) for x in L.walk(k.body)) == 2
    assert k.launch()["block"] == (4, 4, 1)
    check_mm(k)


def test_cache_read_local_packs_on_cpu():
    s = Schedule(); io, ii = s.split("i", 4)
    s.cache_read("b", "local", at=io)
    k = generate_kernel(mm_compute(), s, "cpu")
    # packed in loop order: k is the innermost loop here, so the (k, j) panel is stored as (j, k)
    assert any(isinstance(x, L.Alloc) and x.buffer.name == "b_local" and x.buffer.shape == (24, 16)
               for x in L.walk(k.body))
    check_mm(k)


def test_cache_read_local_keeps_layout_when_loop_order_matches():
    s = Schedule(); io, ii = s.split("i", 4)
    s.reorder(io, "k", ii, "j")
    s.cache_write("local", at=io)
    s.cache_read("b", "local", at=io)
    k = generate_kernel(mm_compute(), s, "cpu")
    assert any(isinstance(x, L.Alloc) and x.buffer.name == "b_local" and x.buffer.shape == (16, 24)
               for x in L.walk(k.body))
    check_mm(k)


def test_tiled_snapshot_lists_primitives_in_order():
    x = np.ones((64, 32), np.float32); w = np.ones((32, 16), np.float32); b = np.ones(16, np.float32)
    c = explorer.compile(lambda x, w, b: np.maximum(x @ w + b, 0), x, w, b, target="sim", verbose=False)
    text = c.stage("tiled").text()
    assert text.index("split(i, ") < text.index("reorder(") < text.index("bind(i_b, blockIdx.y)") \
        < text.index("cache_write(local, at=j_t)") < text.index("cache_read(x, shared, at=k_o)")


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("build, phrase", [
    (lambda s: s.split("nope", 2), "not a loop"),
    (lambda s: s.split("i", 64), "larger than the axis extent"),
    (lambda s: (s.bind("i", "threadIdx.x"), s.bind("j", "threadIdx.x")), "already bound"),
    (lambda s: s.bind("i", "warp.x"), "bind to one of"),
    (lambda s: s.fuse("i", "k"), "adjacent"),
    (lambda s: s.parallel("k"), "reduction axis cannot run in parallel"),
    (lambda s: s.vectorize("k"), "over 64 lanes"),
    (lambda s: s.cache_read("zz", "shared", "k"), "not an operand"),
    (lambda s: s.cache_read("a", "texture", "k"), "scope must be"),
    (lambda s: s.cache_write("shared", "j"), "must be 'local'"),
    (lambda s: s.reorder("i", "i"), "listed twice"),
])
def test_schedule_errors(build, phrase):
    s = Schedule()
    build(s)
    with pytest.raises(ScheduleError, match=phrase):
        generate_kernel(mm_compute(M=20, N=24, K=100), s, "cuda")


def test_split_factor_must_be_positive():
    with pytest.raises(ScheduleError, match="positive integer"):
        Schedule().split("i", 0)


def test_too_many_threads():
    s = Schedule(); io, ii = s.split("i", 20); jo, ji = s.split("j", 24)
    c = mm_compute(M=40, N=48)
    s.bind(ii, "threadIdx.y"); s.bind(ji, "threadIdx.x")
    s2 = Schedule(list(s.primitives))
    apply(s2, [("i", 40), ("j", 48)], [("k", 16)])  # 480 threads: fine
    big = mm_compute(M=64, N=64)
    s3 = Schedule(); a, b = s3.split("i", 64); c_, d = s3.split("j", 32)
    s3.bind(b, "threadIdx.y"); s3.bind(d, "threadIdx.x")
    with pytest.raises(ScheduleError, match="1024"):
        generate_kernel(big, s3, "cuda")


def test_shared_memory_over_48k():
    c = mm_compute(M=256, N=256, K=256)
    with pytest.raises(ScheduleError, match="48 KiB"):
        default_schedule(c, "cuda", {"tile": (128, 128, 64), "thread_tile": (8, 8)})


def test_thread_tile_must_divide_block_tile():
    with pytest.raises(ScheduleError, match="does not divide"):
        default_schedule(mm_compute(M=64, N=64), "cuda", {"tile": (64, 64, 16), "thread_tile": (3, 4)})


def test_vector_not_dividing_is_clamped_per_kernel():
    # a global vector knob serves every kernel: one whose size it does not divide gets the largest divisor
    x = np.arange(1001, dtype=np.float32)      # 1001 = 7 * 11 * 13: vector=4 -> 1, vector=8 -> 7
    for vec, got in ((4, 1), (8, 7)):
        c = explorer.compile(lambda x: x * 2, x, target="sim", schedule={"vector": vec}, verbose=False)
        np.testing.assert_array_equal(c(x), x * 2)
        assert f"vector={vec} clamped to {got} for this kernel's 1001 elements" in c.text()


def test_grid_y_limit():
    s = Schedule(); s.bind("i", "blockIdx.y")
    c = Compute("elementwise", "k", (Axis("i", 70000),), stores=(), inputs=(), outputs=())
    with pytest.raises(ScheduleError, match="65535"):
        generate_kernel(c, s, "cuda")


def test_cpu_cannot_bind_threads():
    s = Schedule(); s.bind("i", "blockIdx.x")
    with pytest.raises(ScheduleError, match="CPU target cannot bind"):
        generate_kernel(ew_compute(), s, "cpu")


def test_reduction_outside_spatial_needs_cache_write():
    s = Schedule(); s.reorder("k", "j")
    with pytest.raises(ScheduleError, match="cache_write"):
        generate_kernel(mm_compute(), s, "cuda")


def test_scan_axis_cannot_be_split():
    x = np.ones((4, 8), np.float32)
    c = explorer.compile(lambda x: np.cumsum(x, axis=1), x, target="sim", stop_after="lowered", verbose=False)
    compute = c.stage("lowered").ir.computes[0]
    s = Schedule(); s.split(compute.reduce[0].name, 2)
    with pytest.raises(ScheduleError, match="scan runs serially"):
        generate_kernel(compute, s, "cuda")


def test_unknown_knob_and_bad_tile():
    x = np.ones((8, 8), np.float32)
    with pytest.raises(ScheduleError, match="unknown schedule knob"):
        explorer.compile(lambda a: a @ a, x, target="sim", schedule={"tiles": 4}, verbose=False)
    with pytest.raises(ScheduleError, match="3-tuple"):
        explorer.compile(lambda a: a @ a, x, target="sim", schedule={"tile": (4, 4)}, verbose=False)


def test_tile_knob_changes_launch_and_stays_correct():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((96, 40)).astype(np.float32); b = rng.standard_normal((40, 72)).astype(np.float32)
    c1 = explorer.compile(lambda a, b: a @ b, a, b, target="sim", schedule={"tile": (32, 32, 8)}, verbose=False)
    c2 = explorer.compile(lambda a, b: a @ b, a, b, target="sim", schedule={"tile": (16, 64, 8)}, verbose=False)
    assert c1.kernels[0].launch["grid"] != c2.kernels[0].launch["grid"]
    for c in (c1, c2):
        np.testing.assert_allclose(c(a, b), a @ b, rtol=1e-4, atol=1e-4)


def test_user_schedule_object_for_one_kernel():
    x = np.random.default_rng(0).standard_normal((10, 12)).astype(np.float32)
    s = Schedule(); f = s.fuse("i0", "i1"); b, t = s.split(f, 64); s.bind(b, "blockIdx.x"); s.bind(t, "threadIdx.x")
    c = explorer.compile(np.exp, x, target="sim", schedule=s, verbose=False)
    assert c.kernels[0].launch["block"] == (64, 1, 1)
    np.testing.assert_allclose(c(x), np.exp(x), rtol=1e-6)
