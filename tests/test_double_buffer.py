"""double_buffer: two shared-memory slots per staged matmul tile (copy tile k+1 while computing on tile k,
one barrier per k step). Checked on the loop IR, in the SIMT simulator (results and counters), through
nvcc (PTX) and on the CPU CUDA emulator (tests/cuda_emu.py: real threads, real barriers)."""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer import loopir as L
from explorer.backends import nvcc
from explorer.backends.simulator import simulate_kernel
from explorer.errors import ScheduleError
from explorer.passes.tiling import generate_kernel
from explorer.schedule import DoubleBuffer, Schedule, apply, check_knobs, default_schedule

try:
    import cuda_emu
    from test_schedule import mm_compute   # the 20x24x16 matmul Compute both files schedule
except ImportError:  # tests/ is a package in some layouts
    from tests import cuda_emu  # type: ignore
    from tests.test_schedule import mm_compute  # type: ignore

rng = np.random.default_rng(5)
needs_gxx = pytest.mark.skipif(not cuda_emu.available()[0], reason="g++ is needed to emulate CUDA on the CPU")
_NVCC_OK, _NVCC_WHY = nvcc.available()
needs_nvcc = pytest.mark.skipif(not _NVCC_OK, reason=_NVCC_WHY)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def run_mm(kernel, M, N, K):
    a, b = f32(M, K), f32(K, N)
    bufs = {"a": a, "b": b, "c": np.zeros((M, N), np.float32)}
    ctr = simulate_kernel(kernel, bufs)
    np.testing.assert_allclose(bufs["c"], a @ b, rtol=1e-4, atol=1e-4)
    return ctr


def k_loop(kernel) -> L.For:
    return next(f for f in L.walk_loops(kernel.body) if f.var.name == "k_o")


def top_level_barriers(stmts) -> int:
    """Barriers directly in stmts or in nested Ifs, not inside loops (the k loop's own are inside it)."""
    n = 0
    for s in stmts:
        if isinstance(s, L.Barrier):
            n += 1
        elif isinstance(s, L.If):
            n += top_level_barriers(s.then) + top_level_barriers(s.orelse)
    return n


def parent_of(stmts, target):
    for s in stmts:
        kids = s.body if isinstance(s, L.For) else (s.then + s.orelse) if isinstance(s, L.If) else ()
        if target in kids:
            return kids
        r = parent_of(kids, target)
        if r is not None:
            return r
    return None


# ----------------------------------------------------------------------------- the primitive
def test_primitive_text_and_order():
    s = Schedule()
    s.cache_read("a", "shared", at="k_o")
    s.double_buffer("a")
    assert str(s).splitlines() == ["cache_read(a, shared, at=k_o)", "double_buffer(a)"]
    assert str(DoubleBuffer("b")) == "double_buffer(b)"
    c = mm_compute()
    s = default_schedule(c, "cuda", {"tile": (8, 8, 4), "thread_tile": (2, 2)})
    text = s.text()
    assert text.index("cache_read(b, shared, at=k_o)") < text.index("double_buffer(a)") < text.index("double_buffer(b)")
    st = apply(s, [("i", 20), ("j", 24)], [("k", 16)], buffers=("a", "b"))
    assert st.double_buffers == ["a", "b"]


@pytest.mark.parametrize("build, phrase", [
    (lambda s: s.double_buffer("a"), "not cache_read into shared memory"),
    (lambda s: (s.cache_read("b", "shared", at="k"), s.double_buffer("a")), "not cache_read into shared memory"),
    (lambda s: (s.cache_read("a", "local", at="i"), s.double_buffer("a")), "into 'local', not 'shared'"),
    (lambda s: (s.double_buffer("a"), s.cache_read("a", "shared", at="k")), "before it"),
    (lambda s: (s.cache_read("a", "shared", at="k"), s.double_buffer("a"), s.double_buffer("a")), "given twice"),
])
def test_double_buffer_errors(build, phrase):
    s = Schedule()
    build(s)
    with pytest.raises(ScheduleError, match=phrase):
        apply(s, [("i", 20), ("j", 24)], [("k", 16)], buffers=("a", "b"), kernel="mm")


def test_knob_validation_and_shared_limit():
    with pytest.raises(ScheduleError, match="double_buffer: 1 must be True or False"):
        check_knobs({"double_buffer": 1})
    assert check_knobs({"double_buffer": np.bool_(False)}) == {"double_buffer": False}
    c = mm_compute(256, 256, 256)
    # 64x64x64 tiles stage 32 KiB: fits once, not twice
    with pytest.raises(ScheduleError, match=r"double_buffer=True needs 2 x 32768 = 65536 bytes"):
        default_schedule(c, "cuda", {"tile": (64, 64, 64), "thread_tile": (4, 4), "double_buffer": True})
    s = default_schedule(c, "cuda", {"tile": (64, 64, 64), "thread_tile": (4, 4)})
    assert "double_buffer" not in s.text() and any("65536 bytes" in n and "off" in n for n in s.notes)
    with pytest.raises(ScheduleError, match="shared=False"):
        default_schedule(c, "cuda", {"shared": False, "double_buffer": True})
    assert "double_buffer" not in default_schedule(c, "cuda", {"shared": False}).text()
    # a single k step has nothing to prefetch: off by default, with the reason
    s = default_schedule(mm_compute(32, 32, 8), "cuda", {})
    assert "double_buffer" not in s.text() and any("single k step" in n for n in s.notes)


def test_tiling_counts_both_slots_against_48k():
    # a hand schedule whose tiles fit once (2 x 15 KiB) but not twice (61440 bytes)
    c = mm_compute(256, 256, 256)
    s = Schedule()
    io, ii = s.split("i", 96, names=("i_b", "i_in")); it, ir = s.split(ii, 6, names=("i_t", "i_r"))
    jo, ji = s.split("j", 96, names=("j_b", "j_in")); jt, jr = s.split(ji, 6, names=("j_t", "j_r"))
    ko, kin = s.split("k", 40, names=("k_o", "k_i"))
    s.reorder(io, jo, it, jt, ko, kin, ir, jr)
    s.bind(io, "blockIdx.y"); s.bind(jo, "blockIdx.x"); s.bind(it, "threadIdx.y"); s.bind(jt, "threadIdx.x")
    s.cache_write("local", at=jt)
    s.cache_read("a", "shared", at=ko); s.cache_read("b", "shared", at=ko)
    generate_kernel(c, s, "cuda")                      # 2 x 96 x 40 x 4 = 30720 bytes: fits
    s.double_buffer("a"); s.double_buffer("b")
    with pytest.raises(ScheduleError, match="61440 bytes.*count twice"):
        generate_kernel(c, s, "cuda")


# ----------------------------------------------------------------------------- loop IR shape
def test_loop_ir_two_slots_one_barrier_per_step():
    c = mm_compute()
    k = generate_kernel(c, default_schedule(c, "cuda", {"tile": (8, 8, 4), "thread_tile": (2, 2)}), "cuda")
    shared = {x.buffer.name: x.buffer.shape for x in L.walk(k.body)
              if isinstance(x, L.Alloc) and x.buffer.scope == "shared"}
    assert shared == {"a_shared": (2, 8, 4), "b_shared": (2, 4, 8)}
    loop = k_loop(k)
    assert loop.extent == 4
    # one barrier per k step, at the end of the body; one more in the prologue right before the loop
    assert sum(isinstance(s, L.Barrier) for s in L.walk(loop.body)) == 1
    assert isinstance(loop.body[-1], L.Barrier)
    around = parent_of(k.body, loop)
    i = around.index(loop)
    assert isinstance(around[i - 1], L.Barrier) and top_level_barriers(around) == 1
    # prologue: tile 0 into slot 0; in the loop: tile k_o+1 into slot (k_o+1) % 2, guarded by k_o + 1 < 4
    pro_stores = [s for s in L.walk(around[:i]) if isinstance(s, L.Store) and s.buffer.scope == "shared"]
    assert pro_stores and all(L.expr_text(s.indices[0]) == "0" for s in pro_stores)
    pre = loop.body[0]
    assert isinstance(pre, L.If) and L.expr_text(pre.cond) == "k_o + 1 < 4"
    stores = [s for s in L.walk(pre.then) if isinstance(s, L.Store)]
    assert {s.buffer.name for s in stores} == {"a_shared", "b_shared"}
    assert all(L.expr_text(s.indices[0]) == "(k_o + 1) % 2" for s in stores)
    assert any("(k_o + 1) * 4" in L.expr_text(s.value) for s in stores)
    # the compute reads slot k_o % 2
    loads = [x for s in L.walk(loop.body) if isinstance(s, L.Store) and s.buffer.scope == "local"
             for x in L.walk_expr(s.value) if isinstance(x, L.Load) and x.buffer.scope == "shared"]
    assert loads and all(L.expr_text(x.indices[0]) == "k_o % 2" for x in loads)


def test_only_one_operand_double_buffered_keeps_both_barriers():
    c = mm_compute(20, 24, 16)
    s = default_schedule(c, "cuda", {"tile": (8, 8, 4), "thread_tile": (2, 2), "double_buffer": False})
    s.double_buffer("b")
    k = generate_kernel(c, s, "cuda")
    loop = k_loop(k)
    # a is single-buffered: it still needs the barrier after its copy and the one after the compute
    assert sum(isinstance(x, L.Barrier) for x in L.walk(loop.body)) == 2
    shared = {x.buffer.name: x.buffer.shape for x in L.walk(k.body) if isinstance(x, L.Alloc)
              and x.buffer.scope == "shared"}
    assert shared == {"a_shared": (8, 4), "b_shared": (2, 4, 8)}
    run_mm(k, 20, 24, 16)


# ----------------------------------------------------------------------------- simulator
@pytest.mark.parametrize("M,N,K,tile", [(20, 24, 16, (8, 8, 4)), (33, 31, 9, (8, 8, 4)), (70, 45, 37, (16, 16, 8)),
                                        (8, 8, 4, (8, 8, 4))])
def test_simulated_kernel_matches_numpy(M, N, K, tile):
    c = mm_compute(M, N, K)
    k = generate_kernel(c, default_schedule(c, "cuda", {"tile": tile, "thread_tile": (2, 2), "double_buffer": True}),
                        "cuda")
    assert any(x.buffer.shape[0] == 2 for x in L.walk(k.body) if isinstance(x, L.Alloc) and x.buffer.scope == "shared")
    run_mm(k, M, N, K)


def test_wrong_slot_is_caught():
    # the harness can fail: prefetching into the slot being computed on overwrites tile k with tile k+1
    c = mm_compute(20, 24, 16)
    k = generate_kernel(c, default_schedule(c, "cuda", {"tile": (8, 8, 4), "thread_tile": (2, 2)}), "cuda")

    def same_slot(s):
        if isinstance(s, L.Store) and s.buffer.scope == "shared" and L.expr_text(s.indices[0]) == "(k_o + 1) % 2":
            return L.Store(s.buffer, (L.BinOp("%", L.Var("k_o"), L.Const(2)),) + s.indices[1:], s.value)
        return None
    bad = k.replace(body=L.map_stmts(k.body, same_slot))
    assert bad != k
    with pytest.raises(AssertionError):
        run_mm(bad, 20, 24, 16)


CASES = {
    "matmul_100x99x101": (lambda a, b: a @ b, [(100, 99), (99, 101)]),
    "batch_matmul": (lambda a, b: a @ b, [(3, 40, 37), (3, 37, 50)]),
    "matmul_bias_relu": (lambda x, w, b: np.maximum(x @ w + b, 0), [(70, 45), (45, 66), (66,)]),
}


def compile_case(name, double):
    fn, shapes = CASES[name]
    args = [f32(*s) for s in shapes]
    c = explorer.compile(fn, *args, target="sim", schedule={"double_buffer": double}, verbose=False)
    return fn, args, c


def matmul_counters(c):
    ex = c.executable()
    return next(v for k, v in ex.counters.items() if "matmul" in k and k != "total")


@pytest.mark.parametrize("name", sorted(CASES))
def test_pipeline_results_and_counters(name):
    fn, args, on = compile_case(name, True)
    _, _, off = compile_case(name, False)
    assert "double_buffer(" in on.stage("tiled").text() and "double_buffer(" not in off.stage("tiled").text()
    want = fn(*args)
    np.testing.assert_allclose(on(*args), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(off(*args), want, rtol=1e-4, atol=1e-4)
    c_on, c_off = matmul_counters(on), matmul_counters(off)
    # the same global traffic: every tile is still loaded exactly once
    for key in ("global_load_bytes", "global_store_bytes", "shared_store_bytes", "shared_load_bytes", "flops"):
        assert c_on[key] == c_off[key], key
    # barriers: 2 per k step without, 1 per k step + 1 prologue with
    steps = k_loop(next(k for k in on.program.kernels if "matmul" in k.name)).extent
    blocks = c_on["blocks"]
    assert c_off["barriers"] == blocks * 2 * steps
    assert c_on["barriers"] == blocks * (steps + 1)
    shared_on = max(k.shared_bytes() for k in on.program.kernels)
    shared_off = max(k.shared_bytes() for k in off.program.kernels)
    assert shared_on == 2 * shared_off > 0


# ----------------------------------------------------------------------------- generated CUDA
@needs_nvcc
def test_generated_cuda_compiles_with_nvcc():
    _, _, c = compile_case("matmul_100x99x101", True)
    src = c.codegen.kernels[0].source
    assert src.count("__syncthreads();") == 2 and "(k_o + 1) % 2 * 1024" in src
    assert c.codegen.kernels[0].launch["shared_bytes"] == 2 * (64 * 16 + 16 * 64) * 4
    ptx = nvcc.check(c.codegen.source(), arch="sm_80", mode="ptx")
    assert ".shared" in ptx and "bar.sync" in ptx


@needs_gxx
@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_cuda_runs_in_emulator(name):
    fn, args, c = compile_case(name, True)
    assert "double_buffer(" in c.stage("tiled").text()
    outs = cuda_emu.run(c.codegen, c.check_args(args))
    np.testing.assert_allclose(outs[0], fn(*args), rtol=1e-4, atol=1e-4)
