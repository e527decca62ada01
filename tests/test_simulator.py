"""SIMT simulator: results against NumPy, exact counters, memcheck, divergence, chunking."""
from __future__ import annotations

import numpy as np
import pytest

from explorer import VerificationError
from explorer.ops import TRANSCENDENTAL_FLOPS as TF
from explorer import loopir as L
from explorer.backends import simulator as S
from explorer.backends.sim_examples import (elementwise_kernel, matmul_bias_relu_programs, softmax_kernel,
                                            tiled_matmul_program)

rng = np.random.default_rng(0)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def F(v):
    return L.Const(float(v), "f32")


# ----------------------------------------------------------------------------- elementwise
@pytest.mark.parametrize("n", [1000, 1024, 1])
def test_elementwise_guarded_matches_numpy_and_counts(n):
    k = elementwise_kernel(n, block=128)
    x, w = f32(n), f32(n)
    bufs = {"x": x, "w": w, "y": np.full(n, np.nan, np.float32)}
    c = S.simulate_kernel(k, bufs)
    np.testing.assert_allclose(bufs["y"], x * w + 1, rtol=1e-6)
    assert c["global_load_bytes"] == 2 * n * 4
    assert c["global_store_bytes"] == n * 4
    assert c["flops"] == 2 * n
    assert c["blocks"] == -(-n // 128) and c["threads_per_block"] == 128
    assert c["shared_load_bytes"] == c["shared_store_bytes"] == c["barriers"] == 0


def test_chunked_execution_gives_same_result_and_counters():
    n = 5000
    k = elementwise_kernel(n, block=64)
    x, w = f32(n), f32(n)
    outs = []
    for chunk in (S.DEFAULT_CHUNK_LANES, 100, 1):   # 100 lanes → one block per chunk
        bufs = {"x": x, "w": w, "y": np.zeros(n, np.float32)}
        outs.append((S.simulate_kernel(k, bufs, chunk_lanes=chunk), bufs["y"]))
    for c, y in outs[1:]:
        assert c == outs[0][0]
        np.testing.assert_array_equal(y, outs[0][1])


def test_out_of_bounds_without_guard_names_kernel_buffer_index_bound():
    k = elementwise_kernel(1000, block=128, guard=False, name="unguarded")
    bufs = {"x": f32(1000), "w": f32(1000), "y": np.zeros(1000, np.float32)}
    with pytest.raises(VerificationError) as e:
        S.simulate_kernel(k, bufs)
    msg = str(e.value)
    assert "unguarded" in msg and "x[" in msg and "index 1000" in msg and "[0, 1000)" in msg
    assert "block (7, 0, 0), thread (104, 0, 0)" in msg


def test_masked_lanes_do_not_trip_memcheck_or_count():
    # select(i < n, x[i], 0): the load runs only on lanes taking the branch (C's ?: short-circuits)
    n = 100
    x, y = L.Buffer("x", (n,)), L.Buffer("y", (128,))
    tx = L.Var("tx")
    k = L.Kernel("pad", (x, y), (L.For(tx, 128, (L.Store(y, (tx,), L.Select(tx < n, x[tx], F(0))),),
                                         "threadIdx.x"),), ("y",))
    xv = f32(n)
    bufs = {"x": xv, "y": np.zeros(128, np.float32)}
    c = S.simulate_kernel(k, bufs)
    np.testing.assert_array_equal(bufs["y"], np.concatenate([xv, np.zeros(28, np.float32)]))
    assert c["global_load_bytes"] == n * 4 and c["global_store_bytes"] == 128 * 4


def test_per_dimension_bounds_check():
    # flat index in range but column out of range: a real bug the per-dimension check catches
    a, y = L.Buffer("a", (4, 4)), L.Buffer("y", (4,))
    tx = L.Var("tx")
    k = L.Kernel("diag_off", (a, y), (L.For(tx, 4, (L.Store(y, (tx,), a[tx, tx + 1]),), "threadIdx.x"),), ("y",))
    with pytest.raises(VerificationError, match=r"index 4 on dimension 1 is outside \[0, 4\)"):
        S.simulate_kernel(k, {"a": f32(4, 4), "y": np.zeros(4, np.float32)})


# ----------------------------------------------------------------------------- reductions
@pytest.mark.parametrize("rows,cols,threads", [(7, 100, 32), (3, 64, 64), (5, 1, 32)])
def test_softmax_block_reduction(rows, cols, threads):
    k = softmax_kernel(rows, cols, threads)
    x = f32(rows, cols) * 4
    bufs = {"x": x, "y": np.zeros((rows, cols), np.float32)}
    c = S.simulate_kernel(k, bufs)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(bufs["y"], e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    assert c["global_load_bytes"] == 3 * rows * cols * 4
    assert c["global_store_bytes"] == rows * cols * 4
    # max pass 1, sum pass sub+exp+add, store pass sub+exp+div (exp: TRANSCENDENTAL_FLOPS);
    # two all-reduces of T-1 combines each
    assert c["flops"] == (5 + 2 * TF) * rows * cols + 2 * rows * (threads - 1)


def test_all_reduce_max_keeps_nan():
    x = np.ones((2, 40), np.float32)
    x[1, 17] = np.nan
    bufs = {"x": x, "y": np.zeros_like(x)}
    S.simulate_kernel(softmax_kernel(2, 40, 32), bufs)
    assert np.isnan(bufs["y"][1]).all() and np.allclose(bufs["y"][0], 1 / 40)


# ----------------------------------------------------------------------------- tiled matmul
@pytest.mark.parametrize("M,N,K", [(64, 96, 32), (70, 45, 37), (1, 1, 1), (33, 31, 9)])
def test_tiled_matmul_matches_numpy(M, N, K):
    a, b = f32(M, K), f32(K, N)
    (c,), ctr = S.run_program(tiled_matmul_program(M, N, K), [a, b])
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)
    k = ctr["matmul_tiled"]
    gm, gn, gk = -(-M // 32), -(-N // 32), -(-K // 8)
    # every in-bounds element of A is staged once per block column, B once per block row
    assert k["global_load_bytes"] == (M * K * gn + K * N * gm) * 4
    assert k["global_store_bytes"] == M * N * 4
    assert k["barriers"] == 2 * gk * gm * gn
    assert k["blocks"] == gm * gn and k["threads_per_block"] == 64
    assert ctr["total"]["global_load_bytes"] == k["global_load_bytes"]


def test_tiled_matmul_counters_divisible_closed_forms():
    M, N, K, BM, BN, BK = 128, 64, 96, 32, 32, 8
    (_,), ctr = S.run_program(tiled_matmul_program(M, N, K), [f32(M, K), f32(K, N)])
    c = ctr["matmul_tiled"]
    assert c["global_load_bytes"] == (M // BM) * (N // BN) * (BM + BN) * K * 4
    assert c["shared_store_bytes"] == c["global_load_bytes"]          # each staged element stored once
    assert c["shared_load_bytes"] == 2 * M * N * K                    # 4+4 loads per thread per k, 16 outputs
    assert c["flops"] == 2 * M * N * K


def test_tiled_matmul_other_tiles():
    M, N, K = 50, 70, 30
    a, b = f32(M, K), f32(K, N)
    p = tiled_matmul_program(M, N, K, BM=16, BN=64, BK=16, TM=2, TN=8)
    (c,), ctr = S.run_program(p, [a, b])
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)
    assert ctr["total"]["threads_per_block"] == 8 * 8


def test_fused_vs_unfused_global_bytes_differ_by_the_intermediates():
    M, N, K = 64, 48, 40
    a, b, bias = f32(M, K), f32(K, N), f32(N)
    fused, unfused = matmul_bias_relu_programs(M, N, K)
    (yf,), cf = S.run_program(fused, [a, b, bias])
    (yu,), cu = S.run_program(unfused, [a, b, bias])
    want = np.maximum(a @ b + bias, 0)
    np.testing.assert_allclose(yf, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(yu, want, rtol=1e-4, atol=1e-4)
    assert len(cf) == 2 and len(cu) == 4              # kernels + 'total'
    inter = 2 * M * N * 4                             # t0 and t1, float32
    assert cu["total"]["global_store_bytes"] - cf["total"]["global_store_bytes"] == inter
    assert cu["total"]["global_load_bytes"] - cf["total"]["global_load_bytes"] == inter
    assert cf["total"]["flops"] == cu["total"]["flops"]


# ----------------------------------------------------------------------------- divergence, misuse
def test_barrier_inside_thread_dependent_if_is_rejected():
    y = L.Buffer("y", (64,))
    tx = L.Var("tx")
    body = L.For(tx, 64, (L.If(tx < 16, (L.Barrier(),)), L.Store(y, (tx,), F(1))), "threadIdx.x")
    with pytest.raises(VerificationError, match="barrier divergence"):
        S.simulate_kernel(L.Kernel("bad_sync", (y,), (body,), ("y",)), {"y": np.zeros(64, np.float32)})
    # a thread guard that the loop ranges prove always true is not divergent
    ok = L.For(tx, 64, (L.If(tx < 64, (L.Barrier(),)), L.Store(y, (tx,), F(1))), "threadIdx.x")
    assert S.simulate_kernel(L.Kernel("ok_sync", (y,), (ok,), ("y",)), {"y": np.zeros(64, np.float32)})["barriers"] == 1


def test_barrier_under_data_dependent_divergent_if_is_caught_at_run_time():
    # the condition reads a per-thread register, so only the run can tell whether it diverges
    x, y = L.Buffer("x", (64,)), L.Buffer("y", (64,))
    v = L.Buffer("v", (), "f32", "local")
    tx = L.Var("tx")
    body = L.For(tx, 64, (L.Alloc(v), L.Store(v, (), x[tx]), L.If(v[()] > F(0), (L.Barrier(),)),
                          L.Store(y, (tx,), F(1))), "threadIdx.x")
    k = L.Kernel("data_sync", (x, y), (body,), ("y",))
    xs = np.ones(64, np.float32)
    c = S.simulate_kernel(k, {"x": xs, "y": np.zeros(64, np.float32)})   # uniform: fine
    assert c["barriers"] == 1
    xs[5] = -1
    with pytest.raises(VerificationError, match="only some threads of a block"):
        S.simulate_kernel(k, {"x": xs, "y": np.zeros(64, np.float32)})


def test_block_uniform_guard_around_barrier_is_allowed():
    y = L.Buffer("y", (4, 32))
    bx, tx = L.Var("bx"), L.Var("tx")
    body = L.For(bx, 4, (L.For(tx, 32, (L.If(bx < 3, (L.Barrier(), L.Store(y, (bx, tx), F(2)))),),
                                "threadIdx.x"),), "blockIdx.x")
    bufs = {"y": np.zeros((4, 32), np.float32)}
    c = S.simulate_kernel(L.Kernel("k", (y,), (body,), ("y",)), bufs)
    assert c["barriers"] == 3 and bufs["y"][:3].min() == 2 and bufs["y"][3].max() == 0


def test_store_to_program_input_is_rejected():
    x, y = L.Buffer("x", (8,)), L.Buffer("out0", (8,))
    i = L.Var("i")
    k = L.Kernel("clobber", (x, y), (L.For(i, 8, (L.Store(x, (i,), F(0)), L.Store(y, (i,), F(1))), "threadIdx.x"),),
                 ("out0",))
    with pytest.raises(VerificationError, match="input of the program"):
        S.run_program(L.Program("f", (k,), (x,), (y,)), [np.ones(8, np.float32)])


def test_unbound_variable_and_wrong_rank_are_reported():
    y = L.Buffer("y", (8,))
    i, j = L.Var("i"), L.Var("j")
    k = L.Kernel("free", (y,), (L.For(i, 8, (L.Store(y, (j,), F(0)),), "threadIdx.x"),), ("y",))
    with pytest.raises(VerificationError, match="'j' outside any loop"):
        S.simulate_kernel(k, {"y": np.zeros(8, np.float32)})
    k2 = L.Kernel("rank", (y,), (L.For(i, 8, (L.Store(y, (i, i), F(0)),), "threadIdx.x"),), ("y",))
    with pytest.raises(VerificationError, match="1 dimensions but is indexed with 2"):
        S.simulate_kernel(k2, {"y": np.zeros(8, np.float32)})


def test_missing_or_misshapen_buffers_are_explorer_errors():
    from explorer import ExplorerError, ShapeError
    k = elementwise_kernel(16)
    with pytest.raises(ExplorerError, match="no array for parameter w"):
        S.simulate_kernel(k, {"x": f32(16), "y": f32(16)})
    with pytest.raises(ShapeError):
        S.simulate_kernel(k, {"x": f32(16), "w": f32(17), "y": f32(16)})


def test_uninitialised_shared_memory_reads_as_nan():
    # forgetting the zero-fill of a staged tile must show, as garbage would on a GPU
    sh = L.Buffer("sh", (32,), "f32", "shared")
    y = L.Buffer("y", (32,))
    tx = L.Var("tx")
    body = (L.Alloc(sh), L.For(tx, 32, (L.If(tx < 16, (L.Store(sh, (tx,), F(1)),)), L.Barrier(),
                                        L.Store(y, (tx,), sh[31 - tx])), "threadIdx.x"))
    bufs = {"y": np.zeros(32, np.float32)}
    S.simulate_kernel(L.Kernel("k", (y,), body, ("y",)), bufs)
    assert np.isnan(bufs["y"][:16]).all() and (bufs["y"][16:] == 1).all()


# ----------------------------------------------------------------------------- CPU-style programs
def test_cpu_schedule_program_runs_with_parallel_lanes():
    # for i in parallel(R): for j in vectorized(C): y[i, j] = tanh(x[i, j]) * 2   (+ int division)
    R, C = 37, 12
    x, y = L.Buffer("x", (R, C)), L.Buffer("out0", (R, C))
    i, j = L.Var("i"), L.Var("j")
    val = L.call("tanh", x[i, j]) * F(2) + L.Cast("f32", (i * C + j) / 5 % 3)
    k = L.Kernel("k", (x, y), (L.For(i, R, (L.For(j, C, (L.Store(y, (i, j), val),), "vectorized"),), "parallel"),),
                 ("out0",))
    xv = f32(R, C)
    (out,), ctr = S.run_program(L.Program("f", (k,), (x,), (y,)), [xv])
    flat = np.arange(R * C).reshape(R, C)
    np.testing.assert_allclose(out, np.tanh(xv) * 2 + (flat // 5 % 3), rtol=1e-6)
    # tanh counts TRANSCENDENTAL_FLOPS, * and + one each
    assert ctr["k"]["global_load_bytes"] == R * C * 4 and ctr["k"]["flops"] == (TF + 2) * R * C
    assert ctr["k"]["blocks"] == 1


def test_serial_reduction_kernel_single_lane():
    # no parallel loop at the top: one lane, every loop serial
    n = 50
    x, y = L.Buffer("x", (n,)), L.Buffer("out0", ())
    acc = L.Buffer("acc", (), "f32", "local")
    i = L.Var("i")
    k = L.Kernel("sum", (x, y), (L.Alloc(acc), L.Store(acc, (), F(0)),
                                 L.For(i, n, (L.Store(acc, (), acc[()] + x[i]),)), L.Store(y, (), acc[()])),
                 ("out0",))
    xv = f32(n)
    (out,), ctr = S.run_program(L.Program("f", (k,), (x,), (y,)), [xv])
    assert out.shape == () and abs(float(out) - float(xv.sum())) < 1e-4
    assert ctr["total"]["global_load_bytes"] == n * 4 and ctr["total"]["global_store_bytes"] == 4


def test_math_on_lane_uniform_scalars():
    # a single-lane kernel evaluates on scalars, not arrays
    x, y = L.Buffer("x", (3,)), L.Buffer("out0", (3,))
    i = L.Var("i")
    val = L.call("erf", x[i]) + L.call("tanh", x[i]) * L.call("exp", L.UnOp("neg", x[i]))
    k = L.Kernel("k", (x, y), (L.For(i, 3, (L.Store(y, (i,), val),)),), ("out0",))
    xv = np.array([-1.5, 0.0, 0.7], np.float32)
    (out,), _ = S.run_program(L.Program("f", (k,), (x,), (y,)), [xv])
    import math
    want = [math.erf(v) + math.tanh(v) * math.exp(-v) for v in xv.tolist()]
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert out.dtype == np.float32


def test_c_integer_semantics_and_math_calls():
    n = 16
    x, y = L.Buffer("x", (n,)), L.Buffer("y", (n,))
    iv = L.Buffer("iv", (n,), "i32")
    t = L.Var("t")
    neg = L.UnOp("neg", L.Cast("i32", x[t] * F(10)))
    k = L.Kernel("ints", (x, iv, y), (L.For(t, n, (
        L.Store(iv, (t,), neg / 3 * 100 + neg % 3),
        L.Store(y, (t,), L.call("erf", x[t]) + L.call("sigmoid", x[t]) + L.call("rsqrt", L.call("abs", x[t]) + F(1)))),
        "threadIdx.x"),), ("iv", "y"))
    xv = f32(n)
    bufs = {"x": xv, "iv": np.zeros(n, np.int32), "y": np.zeros(n, np.float32)}
    c = S.simulate_kernel(k, bufs)
    nv = -np.trunc(xv.astype(np.float32) * 10).astype(np.int64)
    np.testing.assert_array_equal(bufs["iv"], np.trunc(nv / 3).astype(np.int64) * 100 + np.fmod(nv, 3))
    import math
    want = np.array([math.erf(v) for v in xv]) + 1 / (1 + np.exp(-xv)) + 1 / np.sqrt(np.abs(xv) + 1)
    np.testing.assert_allclose(bufs["y"], want, rtol=1e-5)
    assert bufs["y"].dtype == np.float32
    # x*10 twice (the expression appears twice), erf sigmoid (transcendentals) abs rsqrt (1 each), + + + (3)
    assert c["flops"] == (7 + 2 * TF) * n


# ----------------------------------------------------------------------------- executable / API
def test_executable_counters_time_summary():
    M, N, K = 40, 40, 24
    p = tiled_matmul_program(M, N, K)

    class FakeCompiled:
        program = p
    exe = S.build(FakeCompiled())
    assert S.available() == (True, "numpy")
    a, b = f32(M, K), f32(K, N)
    (c,) = exe.run([a, b])
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)
    assert set(exe.counters) == {"matmul_tiled", "total"}
    assert set(S.COUNTER_KEYS) <= set(exe.counters["total"])
    t = exe.time([a, b], warmup=0, repeat=2)
    assert t.source == "sim-wall" and t.repeat == 2 and t.median_ms > 0
    text = exe.summary()
    assert "matmul_tiled" in text and "total" in text


def test_matmul_256_simulates_fast():
    import time
    p = tiled_matmul_program(256, 256, 256)
    a, b = f32(256, 256), f32(256, 256)
    t0 = time.perf_counter()
    (c,), _ = S.run_program(p, [a, b])
    dt = time.perf_counter() - t0
    np.testing.assert_allclose(c, a @ b, rtol=1e-3, atol=1e-3)
    assert dt < 2.0, f"256³ tiled matmul took {dt:.2f} s in the simulator (target < 2 s)"


# ----------------------------------------------------------------------------- through the pipeline
def _pipeline_ready() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None
               for m in ("explorer.passes.fusion", "explorer.passes.lower", "explorer.passes.tiling",
                         "explorer.codegen"))


@pytest.mark.skipif(not _pipeline_ready(), reason="fusion/lowering/tiling passes are not in this checkout yet")
def test_compile_target_sim_matmul_bias_relu_fused_vs_unfused():
    import explorer
    M, N, K = 48, 40, 24
    x, w, b = f32(M, K), f32(K, N), f32(N)

    def mlp(x, w, b):
        return np.maximum(x @ w + b, 0)

    cf = explorer.compile(mlp, x, w, b, target="sim")
    cu = explorer.compile(mlp, x, w, b, target="sim", fuse=False)
    np.testing.assert_allclose(cf(x, w, b), mlp(x, w, b), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cu(x, w, b), mlp(x, w, b), rtol=1e-4, atol=1e-4)
    tf = cf.executable().counters["total"]
    tu = cu.executable().counters["total"]
    assert tu["global_store_bytes"] - tf["global_store_bytes"] == 2 * M * N * 4
    assert tu["global_load_bytes"] - tf["global_load_bytes"] == 2 * M * N * 4
