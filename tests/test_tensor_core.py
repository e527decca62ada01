"""Tensor-core (WMMA) path for f16 matmuls: schedule.tensorize → FragmentLoad/Mma/FragmentStore loop IR →
nvcuda::wmma CUDA, executed exactly by the simulator (checked against NumPy here) and compiled by nvcc."""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer import loopir as L
from explorer.backends import nvcc
from explorer.backends import simulator as sim
from explorer.errors import ScheduleError, VerificationError
from explorer.schedule import KNOBS, Schedule, Tensorize

F16 = np.float16


def h(rng, *shape):
    return rng.standard_normal(shape).astype(F16)


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


def mm(a, b):
    return a @ b


def mm_nt(a, b):
    return a @ b.T


def mm_tanh(a, b):
    return np.tanh(a @ b) * 2


def ref32(fn, *args):
    """fn with the matmul accumulated in f32 from the f16 inputs (what tensor cores compute), result in f16."""
    def f32mm(a, b):
        return (a.astype(np.float32) @ b.astype(np.float32)).astype(F16)
    if fn is mlp:
        x, w, b = args
        return np.maximum(f32mm(x, w) + b, F16(0))
    if fn is mm:
        return f32mm(*args)
    if fn is mm_nt:
        return f32mm(args[0], args[1].T)
    return (np.tanh(f32mm(*args).astype(np.float32)) * 2).astype(F16)


SIM_CASES = {
    "mlp_100x72x130": (mlp, [(100, 72), (72, 130), (130,)]),     # non-divisible M, N, K + bias + relu
    "mm_16x16x16": (mm, [(16, 16), (16, 16)]),                   # a single fragment
    "mm_33x47x65": (mm, [(33, 47), (47, 65)]),                   # every edge ragged
    "tanh_64x64x64": (mm_tanh, [(64, 64), (64, 64)]),            # divisible, 2 k steps, math epilogue
    "batched_3x40x32x24": (mm, [(3, 40, 32), (3, 32, 24)]),      # batch on blockIdx.z
    "nt_40x48x50": (mm_nt, [(40, 48), (50, 48)]),                # B transposed: col_major fragments
}


def compile_sim(fn, args, **kw):
    return explorer.compile(fn, *args, target="sim", verbose=False, **kw)


@pytest.mark.parametrize("name", sorted(SIM_CASES))
def test_sim_tensor_core_matches_numpy(name):
    fn, shapes = SIM_CASES[name]
    rng = np.random.default_rng(1)
    args = [h(rng, *s) for s in shapes]
    c = compile_sim(fn, args)
    tiled = c.stage("tiled").text()
    assert "tensorize(i_f, wmma_16x16x16)" in tiled and "mma(" in tiled
    got = c(*args)
    assert got.dtype == F16 and got.shape == fn(*args).shape
    # against an f32-accumulated reference: at most an f16 rounding apart (summation order differs)
    want = ref32(fn, *args)
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=2e-3)
    # and against NumPy's own f16 matmul, within f16 tolerance
    np.testing.assert_allclose(got.astype(np.float32), fn(*args).astype(np.float32), rtol=2e-2, atol=2e-2)


def test_sim_counts_tensor_core_flops_and_shared_traffic():
    rng = np.random.default_rng(2)
    args = [h(rng, 100, 72), h(rng, 72, 130), h(rng, 130)]
    c = compile_sim(mlp, args)
    ex = sim.build(c)
    ex.run(args)
    k = ex.counters[c.kernels[0].name]
    # 2 x 3 blocks of 64 x 64, K padded to 3 k steps of 32: every warp's mma is counted
    assert k["flops"] >= 2 * 128 * 192 * 96
    assert k["shared_load_bytes"] > 0 and k["shared_store_bytes"] > 0
    assert k["threads_per_block"] == 128 and k["blocks"] == 6


def test_tiled_snapshot_and_cuda_source_show_wmma():
    rng = np.random.default_rng(3)
    args = [h(rng, 100, 72), h(rng, 72, 130), h(rng, 130)]
    c = explorer.compile(mlp, *args, target="sim", verbose=False, stop_after="codegen")
    tiled = c.stage("tiled").text()
    for needle in ("#   tensorize(i_f, wmma_16x16x16)", "#   cache_read(x, shared, at=k_o)", "double_buffer(w)",
                   "alloc x_frag: matrix_a f16[2] of 16x16, row_major", "alloc acc3_frag: accumulator f32[2,2]",
                   "acc3_frag[i_f, j_f] = mma(x_frag[i_f], w_frag[j_f], acc3_frag[i_f, j_f])",
                   "wmma_load(&x_shared[k_o % 2, i_w * 32 + i_f * 16, k_i * 16], ld=32)",
                   "wmma_store(&acc3_shared[i_w * 32 + i_f * 16, j_w * 32 + j_f * 16]", "lane in threadIdx.x(32)"):
        assert needle in tiled, needle
    src = c.codegen.source()
    assert "#include <mma.h>" in src
    for needle in ("wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> x_frag[2];",
                   "wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc3_frag[2][2];",
                   "wmma::fill_fragment(acc3_frag[i_f][j_f], 0.0f);",
                   "wmma::load_matrix_sync(x_frag[i_f], &x_shared[", ", 32);",
                   "wmma::mma_sync(acc3_frag[i_f][j_f], x_frag[i_f], w_frag[j_f], acc3_frag[i_f][j_f]);",
                   "wmma::store_matrix_sync(&acc3_shared[", ", 64, wmma::mem_row_major);",
                   "__shared__ __align__(32) __half x_shared[4096];", "ke_max("):
        assert needle in src, needle
    assert c.kernels[0].launch["block"] == (32, 2, 2)
    # deterministic
    c2 = explorer.compile(mlp, *args, target="sim", verbose=False, stop_after="codegen")
    assert c2.codegen.source() == src


def test_knob_turns_tensor_cores_off():
    assert "tensor_core" in KNOBS
    rng = np.random.default_rng(4)
    args = [h(rng, 100, 72), h(rng, 72, 130), h(rng, 130)]
    c = compile_sim(mlp, args, schedule={"tensor_core": False})
    assert "tensorize" not in c.stage("tiled").text()
    assert "wmma" not in c.codegen.source() and "mma.h" not in c.codegen.source()
    np.testing.assert_allclose(c(*args).astype(np.float32), mlp(*args).astype(np.float32), rtol=2e-2, atol=2e-2)


def test_f32_and_tiny_f16_matmuls_keep_the_simt_path():
    rng = np.random.default_rng(5)
    x32, w32 = rng.standard_normal((64, 64)).astype(np.float32), rng.standard_normal((64, 64)).astype(np.float32)
    assert "tensorize" not in compile_sim(mm, [x32, w32]).stage("tiled").text()
    small = [h(rng, 8, 32), h(rng, 32, 24)]     # M < 16: no whole fragment
    c = compile_sim(mm, small)
    assert "tensorize" not in c.stage("tiled").text()
    assert "# why: tensor cores off: M, N, K = 8, 24, 32: each must be >= 16" in c.stage("tiled").text()
    np.testing.assert_allclose(c(*small).astype(np.float32), mm(*small).astype(np.float32), rtol=2e-2, atol=2e-2)


def test_cpu_target_is_unaffected():
    from explorer.backends import cpu
    if not cpu.available()[0]:
        pytest.skip(cpu.available()[1])
    rng = np.random.default_rng(6)
    args = [h(rng, 40, 32), h(rng, 32, 24), h(rng, 24)]
    c = explorer.compile(mlp, *args, target="cpu", verbose=False, schedule={"tensor_core": True})
    assert "tensorize" not in c.stage("tiled").text() and "wmma" not in c.codegen.source()
    np.testing.assert_allclose(c(*args).astype(np.float32), mlp(*args).astype(np.float32), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("knobs, args, needle", [
    ({"tensor_core": True}, ("float32", (32, 32), (32, 32)), "needs f16 operands"),
    ({"tensor_core": True, "tile": (24, 64, 16)}, ("float16", (64, 64), (64, 64)), "BM=24 is not a multiple of 16"),
    ({"tensor_core": True, "tile": (64, 64, 8)}, ("float16", (64, 64), (64, 64)), "BK=8 is not a multiple of 16"),
    ({"tensor_core": True}, ("float16", (8, 32), (32, 32)), "must be >= 16"),
    ({"tensor_core": True, "shared": False}, ("float16", (32, 32), (32, 32)), "shared=False"),
    ({"tensor_core": True, "tile": (128, 128, 32)}, ("float16", (128, 128), (128, 128)), "48 KiB"),
    ({"tensor_core": "yes"}, ("float16", (32, 32), (32, 32)), "must be True or False"),
])
def test_schedule_errors_name_the_limit(knobs, args, needle):
    dt, sa, sb = args
    rng = np.random.default_rng(7)
    a = rng.standard_normal(sa).astype(dt)
    b = rng.standard_normal(sb).astype(dt)
    with pytest.raises(ScheduleError, match=needle):
        compile_sim(mm, [a, b], schedule=knobs)


def _lowered(fn, args):
    return explorer.compile(fn, *args, target="sim", verbose=False, stop_after="lowered").stage("lowered").ir


def _tc_schedule(bind_x: bool = False, warp_tile: int = 32) -> Schedule:
    s = Schedule()
    s.split("i", 64, names=("i_b", "i_in")); s.split("i_in", warp_tile, names=("i_w", "i_f"))
    s.split("j", 64, names=("j_b", "j_in")); s.split("j_in", 32, names=("j_w", "j_f"))
    s.split("k", 32, names=("k_o", "k_i"))
    s.reorder("i_b", "j_b", "i_w", "j_w", "k_o", "i_f", "j_f", "k_i")
    s.bind("i_b", "blockIdx.y"); s.bind("j_b", "blockIdx.x")
    s.bind("i_w", "threadIdx.x" if bind_x else "threadIdx.z"); s.bind("j_w", "threadIdx.y")
    s.cache_read("x", "shared", at="k_o"); s.cache_read("w", "shared", at="k_o")
    s.tensorize("i_f", "wmma_16x16x16")
    return s


def test_explicit_tensorize_schedule_and_its_errors():
    from explorer.passes.tiling import tile
    rng = np.random.default_rng(8)
    args = [h(rng, 64, 64), h(rng, 64, 64), h(rng, 64)]
    prog = _lowered(mlp, args)
    good = tile(prog, _tc_schedule(), target="sim")
    assert "tensorize(i_f, wmma_16x16x16)" in good.text() and "double_buffer" not in good.text()
    out, _ = sim.run_program(good, args)
    np.testing.assert_allclose(out[0].astype(np.float32), ref32(mlp, *args).astype(np.float32), rtol=2e-3, atol=2e-3)
    with pytest.raises(ScheduleError, match="threadIdx.x the 32 lanes"):
        tile(prog, _tc_schedule(bind_x=True), target="sim")
    with pytest.raises(ScheduleError, match="extent 8, not a multiple of 16"):
        tile(prog, _tc_schedule(warp_tile=8), target="sim")
    with pytest.raises(ScheduleError, match="CPU target cannot bind|cannot tensorize"):
        tile(prog, _tc_schedule(), target="cpu")
    s = _tc_schedule()
    s.primitives = [p for p in s.primitives if "cache_read(w" not in str(p)]
    with pytest.raises(ScheduleError, match=r"add cache_read\(w, 'shared', at=k_o\)"):
        tile(prog, s, target="sim")
    with pytest.raises(ScheduleError, match="unknown intrinsic"):
        tile(prog, Schedule([*_tc_schedule().primitives[:-1], Tensorize("i_f", "mma_8x8x4")]), target="sim")


def test_simulator_checks_warp_ops():
    """A fragment tile that overhangs its buffer is a memcheck error, and so is a warp op in a lane guard."""
    a = L.Buffer("a", (16, 16), "f16")
    o = L.Buffer("o", (16, 16), "f32")
    fa = L.Fragment("fa", "matrix_a", (1,), "f16")
    fb = L.Fragment("fb", "matrix_b", (1,), "f16")
    fc = L.Fragment("fc", "accumulator", (1,), "f32")
    lane, z = L.Var("lane"), L.Const(0)

    def kernel(row: int, guarded: bool = False) -> L.Kernel:
        ops = (L.FragmentLoad(fa, (z,), L.Load(a, (L.Const(row), z))), L.FragmentLoad(fb, (z,), L.Load(a, (z, z))),
               L.Mma(fc, (z,), fa, (z,), fb, (z,)), L.FragmentStore(L.Load(o, (z, z)), fc, (z,)))
        body = (L.FragmentAlloc(fa), L.FragmentAlloc(fb), L.FragmentAlloc(fc), L.FragmentFill(fc, (z,), L.Const(0.0)),
                *((L.If(lane < 16, ops),) if guarded else ops))
        return L.Kernel("k", (a, o), (L.For(lane, 32, body, "threadIdx.x"),), outputs=("o",))

    x = np.random.default_rng(9).standard_normal((16, 16)).astype(F16)
    bufs = {"a": x, "o": np.zeros((16, 16), np.float32)}
    c = sim.simulate_kernel(kernel(0), bufs, readonly=("a",))
    np.testing.assert_allclose(bufs["o"], x.astype(np.float64) @ x.astype(np.float64), rtol=1e-6)
    assert c["flops"] == 2 * 16 ** 3 and c["global_load_bytes"] == 2 * 256 * 2
    with pytest.raises(VerificationError, match="out-of-bounds WMMA load of a"):
        sim.simulate_kernel(kernel(1), {"a": x, "o": np.zeros((16, 16), np.float32)})
    with pytest.raises(VerificationError, match="depends on threadIdx"):
        sim.simulate_kernel(kernel(0, guarded=True), {"a": x, "o": np.zeros((16, 16), np.float32)})


_NVCC, _WHY = nvcc.available()


@pytest.mark.skipif(not _NVCC, reason=_WHY)
def test_nvcc_compiles_wmma_kernels_to_mma_ptx():
    rng = np.random.default_rng(10)
    progs = {"mlp": (mlp, [h(rng, 100, 72), h(rng, 72, 130), h(rng, 130)]),
             "batched": (mm, [h(rng, 2, 20, 32), h(rng, 2, 32, 24)]),
             "nt": (mm_nt, [h(rng, 40, 48), h(rng, 50, 48)])}
    src = []
    for name, (fn, args) in progs.items():
        c = explorer.compile(fn, *args, target="sim", verbose=False, stop_after="codegen")
        assert "wmma::mma_sync" in c.codegen.source(), name
        ptx = nvcc.check(c.codegen.source(), arch="sm_80", mode="ptx")
        assert "wmma.mma.sync" in ptx and "wmma.load.a.sync" in ptx and "wmma.store.d.sync" in ptx, name
        src.append(c)
    assert ".col." in nvcc.check(src[2].codegen.source(), arch="sm_80", mode="ptx")   # transposed B
    rep = nvcc.resource_report(src[0].codegen, arch="sm_80")[src[0].kernels[0].name]
    assert rep["spill_stores"] == 0 and rep["spill_loads"] == 0
    assert rep["shared_bytes"] == src[0].kernels[0].launch["shared_bytes"]


def _cuda_ok():
    from explorer.backends import cuda
    return cuda.available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ok()[0], reason=f"no GPU: {_cuda_ok()[1]}")
@pytest.mark.parametrize("name", ["mlp_100x72x130", "batched_3x40x32x24", "nt_40x48x50"])
def test_cuda_tensor_core_matches_numpy(name):
    fn, shapes = SIM_CASES[name]
    rng = np.random.default_rng(11)
    args = [h(rng, *s) for s in shapes]
    c = explorer.compile(fn, *args, target="cuda", verbose=False)
    assert "wmma::mma_sync" in c.codegen.source()
    np.testing.assert_allclose(c(*args).astype(np.float32), ref32(fn, *args).astype(np.float32), rtol=5e-3,
                               atol=5e-3)
