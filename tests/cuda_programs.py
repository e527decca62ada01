"""Hand-tiled, CUDA-bound loop-IR Programs (what the tiling pass is meant to produce) and their NumPy references.

Used by test_codegen_cuda.py, test_nvcc.py and test_cuda_backend.py so all three check the same kernels.
"""
from __future__ import annotations

import numpy as np

from explorer.loopir import (Alloc, Barrier, BinOp, Buffer, Const, For, If, Kernel, Program, Store,
                             ThreadAllReduce, Var, call, maximum)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _and(a, b):
    return BinOp("&&", a, b)


def elementwise(n: int = 10001, threads: int = 256, aligned: bool = True) -> Program:
    """out0 = max(tanh(x) * 1.5 + y, x - y): 4 elements per thread, float4 body plus a guarded scalar tail.

    aligned=False spreads a thread's 4 elements `groups` apart (coalesced across threads but not
    contiguous per thread), so float4 does not apply and codegen must fall back to a scalar loop.
    """
    x, y, out = Buffer("x", (n,)), Buffer("y", (n,)), Buffer("out0", (n,))
    bx, tx, v = Var("bx"), Var("tx"), Var("v")
    groups = _ceil(n, 4)
    g = bx * threads + tx
    i = g * 4 + v if aligned else g + v * Const(groups, "i32")

    def value(ix):
        return maximum(call("tanh", x[ix]) * 1.5 + y[ix], x[ix] - y[ix])

    if aligned:
        inner = If(g * 4 + 4 <= n,
                   (For(v, 4, (Store(out, (i,), value(i)),), kind="vectorized"),),
                   (For(v, 4, (If(i < n, (Store(out, (i,), value(i)),)),), kind="unrolled"),))
    else:
        inner = For(v, 4, (If(_and(g < groups, i < n), (Store(out, (i,), value(i)),)),), kind="vectorized")
    body = For(bx, _ceil(groups, threads), (For(tx, threads, (inner,), kind="threadIdx.x"),), kind="blockIdx.x")
    k = Kernel("fused_tanh_mul_add_maximum", (x, y, out), (body,), outputs=("out0",), group="g0",
               ops=("tanh", "mul", "add", "sub", "maximum"), source_lines=("demo.py:3  return np.maximum(...)",),
               schedule=("split(i, 4)", "vectorize(v)", f"split(io, {threads})", "bind(bx, blockIdx.x)",
                         "bind(tx, threadIdx.x)"))
    return Program("elementwise", (k,), (x, y), (out,))


def elementwise_ref(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum(np.tanh(x) * np.float32(1.5) + y, x - y)


def logsumexp(rows: int = 37, cols: int = 1000, nx: int = 128, ny: int = 1) -> Program:
    """out0[r] = max_c x[r,c] + log(sum_c exp(x[r,c] - max)) with two ThreadAllReduces per row.

    Each block handles `ny` rows (threadIdx.y); `nx` threads (threadIdx.x) stride over the columns.
    The reductions are outside every thread-dependent guard (they contain barriers).
    """
    x, out = Buffer("x", (rows, cols)), Buffer("out0", (rows,))
    m, s = Buffer("m", (), "f32", "local"), Buffer("s", (), "f32", "local")
    br, ty, tx, j = Var("br"), Var("ty"), Var("tx"), Var("j")
    row = br * ny + ty
    c = j * nx + tx
    ok = _and(c < cols, row < rows)
    steps = _ceil(cols, nx)
    per_thread = (
        Alloc(m), Alloc(s),
        Store(m, (), Const(float("-inf"), "f32")),
        For(j, steps, (If(ok, (Store(m, (), maximum(m[()], x[row, c])),)),)),
        ThreadAllReduce("max", m),
        Store(s, (), Const(0.0, "f32")),
        For(j, steps, (If(ok, (Store(s, (), s[()] + call("exp", x[row, c] - m[()])),)),)),
        ThreadAllReduce("sum", s),
        If(_and(BinOp("==", tx, Const(0)), row < rows), (Store(out, (row,), m[()] + call("log", s[()])),)),
    )
    body = For(br, _ceil(rows, ny), (For(ty, ny, (For(tx, nx, per_thread, kind="threadIdx.x"),),
                                         kind="threadIdx.y"),), kind="blockIdx.x")
    k = Kernel("fused_max_sub_exp_sum_log_add", (x, out), (body,), outputs=("out0",), group="g0", kind="reduce",
               ops=("max", "sub", "exp", "sum", "log", "add"))
    return Program("logsumexp", (k,), (x,), (out,))


def logsumexp_ref(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1)
    return (m + np.log(np.exp(x - m[:, None]).sum(axis=1))).astype(np.float32)


def matmul_bias_relu(m: int = 100, k: int = 70, n: int = 90, bm: int = 32, bn: int = 32, bk: int = 8,
                     tm: int = 4, tn: int = 4) -> Program:
    """out0 = max(a @ b + bias, 0): block tile bm x bn staged through shared memory in bk slices,
    a tm x tn register tile per thread, bounds guards for non-divisible shapes."""
    a, b, bias, out = Buffer("a", (m, k)), Buffer("b", (k, n)), Buffer("bias", (n,)), Buffer("out0", (m, n))
    As, Bs = Buffer("As", (bm, bk), "f32", "shared"), Buffer("Bs", (bk, bn), "f32", "shared")
    acc = Buffer("acc", (tm, tn), "f32", "local")
    by, bx, ty, tx = Var("by"), Var("bx"), Var("ty"), Var("tx")
    ko, kk, i, jj, l = Var("ko"), Var("kk"), Var("i"), Var("j"), Var("l")
    nty, ntx = bm // tm, bn // tn
    nthreads = nty * ntx
    t = ty * ntx + tx
    assert (bm * bk) % nthreads == 0 and (bk * bn) % nthreads == 0
    ea = t + l * nthreads
    ar, ac = ea / bk, ea % bk
    eb = t + l * nthreads
    br_, bc = eb / bn, eb % bn
    load_a = For(l, bm * bk // nthreads, (
        If(_and(by * bm + ar < m, ko * bk + ac < k),
           (Store(As, (ar, ac), a[by * bm + ar, ko * bk + ac]),),
           (Store(As, (ar, ac), Const(0.0, "f32")),)),), kind="unrolled")
    load_b = For(l, bk * bn // nthreads, (
        If(_and(ko * bk + br_ < k, bx * bn + bc < n),
           (Store(Bs, (br_, bc), b[ko * bk + br_, bx * bn + bc]),),
           (Store(Bs, (br_, bc), Const(0.0, "f32")),)),), kind="unrolled")
    compute = For(kk, bk, (For(i, tm, (For(jj, tn, (
        Store(acc, (i, jj), acc[i, jj] + As[ty * tm + i, kk] * Bs[kk, tx * tn + jj]),), kind="unrolled"),),
        kind="unrolled"),), kind="unrolled")
    r, cidx = by * bm + ty * tm + i, bx * bn + tx * tn + jj
    epilogue = For(i, tm, (For(jj, tn, (
        If(_and(r < m, cidx < n), (Store(out, (r, cidx), maximum(acc[i, jj] + bias[cidx], Const(0.0, "f32"))),)),),
        kind="unrolled"),), kind="unrolled")
    per_thread = (
        Alloc(As), Alloc(Bs), Alloc(acc),
        For(i, tm, (For(jj, tn, (Store(acc, (i, jj), Const(0.0, "f32")),), kind="unrolled"),), kind="unrolled"),
        For(ko, _ceil(k, bk), (load_a, load_b, Barrier(), compute, Barrier())),
        epilogue,
    )
    body = For(by, _ceil(m, bm), (For(bx, _ceil(n, bn), (For(ty, nty, (For(tx, ntx, per_thread, kind="threadIdx.x"),),
                                                              kind="threadIdx.y"),), kind="blockIdx.x"),),
               kind="blockIdx.y")
    kern = Kernel("fused_matmul_add_maximum", (a, b, bias, out), (body,), outputs=("out0",), group="g0",
                  kind="contraction", ops=("matmul", "add", "maximum"),
                  schedule=(f"tile({bm}, {bn}, {bk})", "cache_read(a, shared)", "cache_read(b, shared)",
                            f"register_tile({tm}, {tn})"))
    return Program("mlp", (kern,), (a, b, bias), (out,))


def matmul_bias_relu_ref(a: np.ndarray, b: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return np.maximum(a.astype(np.float64) @ b + bias, 0).astype(np.float32)


# The reduction variants exercise each code path of ke_allreduce: several whole warps, one warp per
# row with several rows, one partial warp, rows straddling warps.
REDUCTION_SHAPES = [(128, 1), (32, 4), (100, 1), (24, 3)]


def all_programs() -> dict[str, Program]:
    progs = {"elementwise": elementwise(), "elementwise_unaligned": elementwise(aligned=False),
             "matmul_bias_relu": matmul_bias_relu()}
    for nx, ny in REDUCTION_SHAPES:
        progs[f"logsumexp_{nx}x{ny}"] = logsumexp(nx=nx, ny=ny)
    return progs
