"""Hand-built CUDA-bound loop-IR kernels: references for the SIMT simulator's tests and benchmark.

They are written the way the tiling pass is meant to write them, so they double as
readable examples of bound loops, shared-memory staging, barriers and block reductions.

    >>> from explorer.backends.sim_examples import tiled_matmul_program
    >>> p = tiled_matmul_program(64, 64, 64)
    >>> p.kernels[0].launch()
    {'grid': (2, 2, 1), 'block': (8, 8, 1)}
"""
from __future__ import annotations

from typing import Callable

from .. import loopir as L

F32 = "f32"


def _f(v: float) -> L.Const:
    return L.Const(float(v), F32)


def _and(a: L.Expr, b: L.Expr) -> L.Expr:
    return L.BinOp("&&", a, b)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def elementwise_kernel(n: int, block: int = 128, guard: bool = True, name: str = "fma1") -> L.Kernel:
    """y[i] = x[i] * w[i] + 1 over a 1-D grid of `block`-thread blocks (guard for the ragged tail).

    Before binding:  for i in range(n): y[i] = x[i] * w[i] + 1.0f
    After:           for bx in blockIdx.x(ceil(n/block)): for tx in threadIdx.x(block):
                       if bx*block + tx < n: y[...] = ...
    """
    x, w, y = L.Buffer("x", (n,)), L.Buffer("w", (n,)), L.Buffer("y", (n,))
    bx, tx = L.Var("bx"), L.Var("tx")
    i = bx * block + tx
    st: L.Stmt = L.Store(y, (i,), x[i] * w[i] + _f(1.0))
    if guard:
        st = L.If(i < n, (st,))
    body = L.For(bx, _cdiv(n, block), (L.For(tx, block, (st,), "threadIdx.x"),), "blockIdx.x")
    return L.Kernel(name, (x, w, y), (body,), outputs=("y",), kind="elementwise")


def softmax_kernel(rows: int, cols: int, threads: int = 32, name: str = "softmax_rows") -> L.Kernel:
    """Row softmax: one block per row, threads strided over the row, two ThreadAllReduces."""
    x, y = L.Buffer("x", (rows, cols)), L.Buffer("y", (rows, cols))
    r, tx, it = L.Var("r"), L.Var("tx"), L.Var("it")
    m = L.Buffer("m", (), F32, "local")
    s = L.Buffer("s", (), F32, "local")
    c = it * threads + tx
    steps = _cdiv(cols, threads)
    xv = x[r, c]
    e = L.call("exp", xv - m[()])

    def strided(stmt: L.Stmt) -> L.Stmt:
        return L.For(it, steps, (L.If(c < cols, (stmt,)),))

    body = (
        L.Alloc(m), L.Alloc(s),
        L.Store(m, (), _f(float("-inf"))),
        strided(L.Store(m, (), L.maximum(m[()], xv))),
        L.ThreadAllReduce("max", m, "threadIdx.x"),
        L.Store(s, (), _f(0.0)),
        strided(L.Store(s, (), s[()] + e)),
        L.ThreadAllReduce("sum", s, "threadIdx.x"),
        strided(L.Store(y, (r, c), e / s[()])),
    )
    k = L.For(r, rows, (L.For(tx, threads, body, "threadIdx.x"),), "blockIdx.x")
    return L.Kernel(name, (x, y), (k,), outputs=("y",), kind="reduce")


def tiled_matmul_kernel(M: int, N: int, K: int, BM: int = 32, BN: int = 32, BK: int = 8, TM: int = 4,
                        TN: int = 4, epilogue: Callable[[L.Expr, L.Expr, L.Expr], L.Expr] | None = None,
                        extra_inputs: tuple[L.Buffer, ...] = (), out: str = "C",
                        name: str = "matmul_tiled") -> L.Kernel:
    """C = A @ B with 2-level tiling: BMxBN block tiles staged through shared memory, TMxTN per thread.

    blockIdx.y/x walk the output tiles, threadIdx.y/x the (BM/TM)x(BN/TN) threads; every K step of
    BK, the block copies an A tile and a B tile cooperatively into shared memory (zero-filling past
    the edges), synchronises, and each thread accumulates its register tile from register copies
    of one A column and one B row. `epilogue(value, row, col)` maps the accumulator before the store.
    """
    ty_n, tx_n = BM // TM, BN // TN
    nt = ty_n * tx_n
    if BM % TM or BN % TN or (BM * BK) % nt or (BK * BN) % nt:
        raise ValueError("tile sizes must divide: BM % TM, BN % TN, (BM*BK) % threads, (BK*BN) % threads")
    A, B, C = L.Buffer("A", (M, K)), L.Buffer("B", (K, N)), L.Buffer(out, (M, N))
    As, Bs = L.Buffer("As", (BM, BK), F32, "shared"), L.Buffer("Bs", (BK, BN), F32, "shared")
    acc = L.Buffer("acc", (TM, TN), F32, "local")
    ar, br = L.Buffer("ar", (TM,), F32, "local"), L.Buffer("br", (TN,), F32, "local")
    by, bx, ty, tx = L.Var("by"), L.Var("bx"), L.Var("ty"), L.Var("tx")
    ko, ki, l, i, j = L.Var("ko"), L.Var("ki"), L.Var("l"), L.Var("i"), L.Var("j")
    tid = ty * tx_n + tx

    def copy(dst: L.Buffer, src: L.Buffer, R: int, Cc: int, grow: L.Expr, gcol: L.Expr, rlim: int, clim: int):
        e = l * nt + tid
        rr, cc = e / Cc, e % Cc
        gr, gc = grow + rr, gcol + cc
        return L.For(l, (R * Cc) // nt, (
            L.If(_and(gr < rlim, gc < clim), (L.Store(dst, (rr, cc), src[gr, gc]),),
                 (L.Store(dst, (rr, cc), _f(0.0)),)),))

    row, col = by * BM + ty * TM + i, bx * BN + tx * TN + j
    val: L.Expr = acc[i, j]
    if epilogue is not None:
        val = epilogue(val, row, col)
    thread = (
        L.Alloc(acc), L.Alloc(ar), L.Alloc(br),
        L.For(i, TM, (L.For(j, TN, (L.Store(acc, (i, j), _f(0.0)),), "unrolled"),), "unrolled"),
        L.For(ko, _cdiv(K, BK), (
            L.Barrier(),   # the previous step's reads of As/Bs are done before they are overwritten
            copy(As, A, BM, BK, by * BM, ko * BK, M, K),
            copy(Bs, B, BK, BN, ko * BK, bx * BN, K, N),
            L.Barrier(),
            L.For(ki, BK, (
                L.For(i, TM, (L.Store(ar, (i,), As[ty * TM + i, ki]),), "unrolled"),
                L.For(j, TN, (L.Store(br, (j,), Bs[ki, tx * TN + j]),), "unrolled"),
                L.For(i, TM, (L.For(j, TN, (
                    L.Store(acc, (i, j), acc[i, j] + ar[i] * br[j]),), "unrolled"),), "unrolled"),
            )),
        )),
        L.For(i, TM, (L.For(j, TN, (
            L.If(_and(row < M, col < N), (L.Store(C, (row, col), val),)),), "unrolled"),), "unrolled"),
    )
    body = L.For(by, _cdiv(M, BM), (L.For(bx, _cdiv(N, BN), (
        L.Alloc(As), L.Alloc(Bs),
        L.For(ty, ty_n, (L.For(tx, tx_n, thread, "threadIdx.x"),), "threadIdx.y"),
    ), "blockIdx.x"),), "blockIdx.y")
    return L.Kernel(name, (A, B, *extra_inputs, C), (body,), outputs=(out,), kind="contraction")


def tiled_matmul_program(M: int, N: int, K: int, **tiles) -> L.Program:
    """A one-kernel Program around tiled_matmul_kernel (inputs A, B; output C)."""
    k = tiled_matmul_kernel(M, N, K, **tiles)
    return L.Program("matmul", (k,), k.params[:2], k.params[2:])


def matmul_bias_relu_programs(M: int, N: int, K: int, **tiles) -> tuple[L.Program, L.Program]:
    """(fused, unfused) relu(A @ B + bias): one kernel with an epilogue vs matmul, add, relu kernels.

    Both use the same tiled matmul, so the difference in global traffic is the two M×N
    intermediates (written once and read back once each).
    """
    bias = L.Buffer("bias", (N,))
    fused_k = tiled_matmul_kernel(M, N, K, epilogue=lambda v, r, c: L.maximum(v + bias[c], _f(0.0)),
                                  extra_inputs=(bias,), out="out0", name="fused_matmul_add_relu", **tiles)
    A, B = fused_k.params[0], fused_k.params[1]
    out = L.Buffer("out0", (M, N))
    fused = L.Program("mlp", (fused_k,), (A, B, bias), (out,))

    t0, t1 = L.Buffer("t0", (M, N)), L.Buffer("t1", (M, N))
    mm = tiled_matmul_kernel(M, N, K, out="t0", name="matmul", **tiles)

    def ew(name: str, src: L.Buffer, dst: L.Buffer, fn, extra=()) -> L.Kernel:
        bx, tx = L.Var("bx"), L.Var("tx")
        e = bx * 256 + tx
        r, c = e / N, e % N
        st = L.If(e < M * N, (L.Store(dst, (r, c), fn(src[r, c], c)),))
        body = L.For(bx, _cdiv(M * N, 256), (L.For(tx, 256, (st,), "threadIdx.x"),), "blockIdx.x")
        return L.Kernel(name, (src, *extra, dst), (body,), outputs=(dst.name,))

    add = ew("add", t0, t1, lambda v, c: v + bias[c], (bias,))
    relu = ew("relu", t1, out, lambda v, c: L.maximum(v, _f(0.0)))
    unfused = L.Program("mlp_unfused", (mm, add, relu), (A, B, bias), (out,), (t0, t1))
    return fused, unfused
