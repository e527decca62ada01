"""Attention fusion: `softmax(q @ kᵀ · scale [+ mask]) @ v` as ONE kernel with FlashAttention's online softmax.

Generic fusion (operator categories) cannot fuse a reduction over a matmul's output into the next
matmul, so attention becomes three kernels with the S×S score matrix written to global memory twice.
FlashAttention reorders the computation: per block of query rows, walk the keys tile by tile, keep a
running row max m and row sum l, rescale what was accumulated so far by exp(m_old - m_new) and add
p @ v of the tile; divide by l at the end. The scores of one tile live in registers / local memory.

This module holds the parts of that rewrite, each used by its pass:
  match_attention(graph)   the pattern (fusion.fuse makes one 'attention' group per match)
  AttentionCompute         the group as a compute definition (lower.lower makes it: lower.attention_compute)
  generate_attention(...)  its online-softmax loop nest for cpu / cuda / naive (tiling.tile, and
                           compute.loop_nest through AttentionCompute.loop_nest)

Before (simplified graph, 3 kernels)            After (fused, 1 kernel; tiled for cpu, abridged)
  %4 = matmul(q, transpose(k))                    for blk in parallel(B*H*Sq/BQ):
  %6 = mul(%4, 0.125)                               qt[d, r] = q[.., i0 + r, d]; m[r] = -inf; l[r] = 0; acc[r, e] = 0
  %7 = max(%6, -1)   %8 = sub(%6, %7)               for j_o in range(Sk/BK):
  %9 = exp(%8)      %10 = sum(%9, -1)                 s[jj, r] = sum_d k[.., j_o*BK + jj, d] * qt[d, r] * 0.125
  %11 = div(%9, %10)                                  m_new[r] = max(m[r], max_jj s[jj, r]); alpha[r] = exp(m[r] - m_new[r])
  %12 = matmul(%11, v)                                s[jj, r] = exp(s[jj, r] - m_new[r]); l[r] = l[r]*alpha[r] + sum_jj s[jj, r]
                                                      acc[r, e] = acc[r, e]*alpha[r] + sum_jj s[jj, r] * v[.., j, e]
                                                    out[.., i, e] = acc[r, e] / l[r]

On the cpu the scores tile is transposed (keys x query rows): the query block is staged transposed once per
block, and every softmax step is a loop over keys around a vector loop over the block's rows (no per-row
horizontal max/sum). The two inner products run as 4x16 register tiles of 8-lane vectors (8x32 f32 tiles of
16-lane, 64-byte vectors with AVX-512), accumulated with FMA as matmul kernels are (the vectorized stage turns
them into vector micro-kernels). B1 H8 S1024 D64 f32 at 1 thread (Zen 5, CPU time per call): 25.7 ms with
row-major scores and 8-lane tiles without FMA, 24.5 with FMA, 15.3 with 16-lane tiles, 12.5 transposed
(2026-12-01; torch SDPA ~24). On cuda/sim each thread owns one query row (q row, s_tile, acc_o in registers) and the
block stages each K and V tile in shared memory between two barriers.

Large head dims on cuda/sim (row_threads): a row's registers are D (q) + Dv (acc_o) + BK (s_tile) floats. At D=64
that is 160 and fits the 255 registers of a 256-thread block (ptxas: 243-255 registers, no spills); at D=128 it
was ~290 and spilled (255 registers, 296 / 340 bytes of spill stores on sm_80 / sm_90, nvcc 13). So when D or Dv
is over 64, G = 2 (4 at 256) threads share a row, as FlashAttention-2 spreads a row's work over a warp's lanes:
thread g keeps columns g, g+G, ... of q and acc_o (interleaved, so the row's threads read adjacent shared-memory
words), computes partial q·k for the tile's keys and the row's threads sum them with warp shuffles (a
ThreadAllReduce over threadIdx.x: CUDA ke_row_allreduce, no shared memory). Each thread then holds the whole
scores tile and runs the softmax itself; a mask in the logits is read by one thread of the row and shared (a max
over the row with -inf elsewhere: exact). D=128: 0 spills, 254-255 registers; BQ = 256 / G rows per block keeps
256 threads (K and V are read twice as often as at BQ=256). D <= 64 keeps the one-thread-per-row kernel unchanged.

  for t in threadIdx.y(128): for g in threadIdx.x(2):          (D = 128)
    q_row[d] = q[.., i, d*2 + g]                                 d < 64
    for j_o: stage k_tile, v_tile; barrier
      s_tile[jj] = sum_d q_row[d] * k_tile[jj, d*2 + g]          partial over the thread's 64 columns
      q_k = s_tile[jj]; q_k = allreduce_sum(q_k, threadIdx.x); s_tile[jj] = logit(q_k)
      online softmax on s_tile; acc_o[e] = acc_o[e]*alpha + sum_jj s_tile[jj] * v_tile[jj, e*2 + g]
    out[.., i, e*2 + g] = acc_o[e] / l_run
"""
from __future__ import annotations

import functools

import numpy as np
from dataclasses import dataclass
from typing import Sequence

from .. import loopir as L
from ..errors import ScheduleError
from ..target import Target, get_target
from ..graph import Graph, Node
from ..ops import get as get_op, normalize_axes

ATTENTION_REASON = "attention: scores stay on chip"
_PROLOGUE_OPS = ("transpose", "reshape", "broadcast_to", "slice")  # folded into the loads, as a matmul prologue


# ----------------------------------------------------------------------------- matching (fusion)
@dataclass(eq=False)
class AttentionMatch:
    """One `softmax(logits(q @ kt)) @ v` in a graph. `nodes`: every member, in graph order."""

    out: Node          # matmul(probs, v)
    scores: Node       # matmul(q, kt)
    logits: Node       # the softmax's input (scores itself, or scale / mask applied to it)
    q: Node
    kt: Node
    v: Node
    nodes: list[Node]


def _cat(n: Node) -> str:
    return get_op(n.op).category if n.op not in ("input", "const") else n.op


def _last_axis_keepdims(n: Node, op: str, src: Node) -> bool:
    if n.op != op or n.inputs[0] is not src or not n.attrs.get("keepdims", False):
        return False
    nd = len(src.shape)
    return tuple(normalize_axes(op, n.attrs.get("axes"), nd, src.shape)) == (nd - 1,)


def match_attention(graph: Graph) -> list[AttentionMatch]:
    """Every `softmax(q @ kt [· scale] [+ mask], axis=-1) @ v` whose intermediates are read only inside it.

    The softmax must be the decomposed one (max, sub, exp, sum, div over the last axis, keepdims).
    The logits may apply any elementwise ops to the scores (scale, mask add, casts) whose other operands
    do not depend on the scores; those operands become inputs of the kernel.
    """
    consumers = graph.consumers()
    outs = {id(o) for o in graph.outputs}
    pos = {id(n): k for k, n in enumerate(graph.nodes)}

    def only_read_by(n: Node, allowed: set[int]) -> bool:
        cs = consumers.get(n, [])
        return id(n) not in outs and bool(cs) and all(id(c) in allowed for c in cs)

    found: list[AttentionMatch] = []
    taken: set[int] = set()
    for mm2 in graph.nodes:
        if mm2.op != "matmul" or len(mm2.shape) < 2:
            continue
        probs, v = mm2.inputs
        if probs.op != "div" or len(probs.inputs) != 2:
            continue
        e, ssum = probs.inputs
        if e.op != "exp" or not _last_axis_keepdims(ssum, "sum", e):
            continue
        centered = e.inputs[0]
        if centered.op != "sub":
            continue
        x, mx = centered.inputs
        if not _last_axis_keepdims(mx, "max", x) or x.shape != probs.shape:
            continue
        # the logits chain: elementwise nodes of x's shape between the scores matmul and x
        chain, scores = _logits_chain(x)
        if scores is None or len(scores.shape) < 2:
            continue
        q, kt = scores.inputs
        if scores.shape[-1] != v.shape[-2]:
            continue
        core = [mm2, probs, e, ssum, centered, mx, scores] + chain
        ids = {id(n) for n in core}
        inner = [probs, e, ssum, centered, mx, scores] + chain
        if not all(only_read_by(n, ids) for n in inner) or ids & taken:
            continue
        # injective producers of q, kt, v read only by this pattern become indexed loads inside it
        for operand in (q, kt, v):
            cur = operand
            while cur.op in _PROLOGUE_OPS and only_read_by(cur, ids) and id(cur) not in taken:
                core.append(cur)
                ids.add(id(cur))
                cur = cur.inputs[0]
        taken |= ids
        found.append(AttentionMatch(mm2, scores, x, q, kt, v, sorted(core, key=lambda n: pos[id(n)])))
    return found


def _logits_chain(x: Node) -> tuple[list[Node], Node | None]:
    """(elementwise nodes from the scores matmul up to x, that matmul) or ([], None)."""
    if x.op == "matmul":
        return [], x
    seen: dict[int, Node] = {}
    stack = [x]
    while stack:
        n = stack.pop()
        if id(n) in seen or _cat(n) != "elementwise" or n.shape != x.shape:
            continue
        seen[id(n)] = n
        stack.extend(n.inputs)
    mms = {id(i): i for n in seen.values() for i in n.inputs if i.op == "matmul" and i.shape == x.shape}
    if len(mms) != 1:
        return [], None
    mm = next(iter(mms.values()))
    # the chain: the nodes that depend on the matmul (other operands, such as a mask, are kernel inputs)
    memo: dict[int, bool] = {}

    def depends(n: Node) -> bool:
        if n is mm:
            return True
        if id(n) not in seen:
            return False
        if id(n) not in memo:
            memo[id(n)] = any(depends(i) for i in n.inputs)
        return memo[id(n)]

    return [n for n in seen.values() if depends(n)], mm


def attention_problem(nodes: Sequence[Node], graph: Graph) -> str | None:
    """None when `nodes` are exactly one attention pattern of `graph`, else what is wrong (invariant check)."""
    ids = {id(n) for n in nodes}
    for m in match_attention(graph):
        if {id(n) for n in m.nodes} == ids:
            return None
    return "its nodes are not one softmax(q @ kt) @ v pattern"


# ----------------------------------------------------------------------------- compute (lower)
@dataclass(frozen=True)
class AttentionCompute:
    """The attention group as data: scalar expressions in the index Vars named below.

    q_value in (b*, i, d), k_value in (b*, j, d), v_value in (b*, j, e); logit in (b*, i, j) where
    the Load of `score` (0-d local) stands for q·k of (i, j). All values are in `acc_dtype`.
    """

    kind: str
    name: str
    batch: tuple[int, ...]
    sq: int
    sk: int
    d: int
    dv: int
    acc_dtype: str
    q_value: L.Expr
    k_value: L.Expr
    v_value: L.Expr
    logit: L.Expr
    score: L.Buffer
    out: L.Buffer
    inputs: tuple[L.Buffer, ...]
    outputs: tuple[L.Buffer, ...]
    spatial: tuple = ()
    reduce: tuple = ()
    operands: tuple = ()
    group: str = ""                     # as Compute: the fusion group, its ops and the user's lines
    ops: tuple[str, ...] = ()
    source_lines: tuple[str, ...] = ()

    def loop_nest(self, target: str, knobs: dict | None = None) -> L.Kernel:
        """Its loop template, the online softmax (generate_attention); compute.loop_nest calls it."""
        return generate_attention(self, target, knobs)


# ----------------------------------------------------------------------------- loop nest (tile)
def attention_tiles(c: AttentionCompute, target: "str | Target", knobs: dict | None = None) -> tuple[int, int]:
    """(query rows per block BQ, keys per tile BK) for target; knobs 'attention_tile': (BQ, BK) overrides."""
    target = get_target(target)
    knobs = knobs or {}
    if "attention_tile" in knobs:
        bq, bk = knobs["attention_tile"]
        if target.gpu:
            threads, smem_limit = target.max_threads_per_block, target.max_shared_bytes
            g = row_threads(c)
            if bq * g > threads:
                per_row = f" ({g} per query row)" if g > 1 else ""
                raise ScheduleError(f"schedule of {c.name}: attention_tile BQ={bq} means {bq * g} threads per block"
                                    f"{per_row}, over CUDA's {threads}; use BQ <= {threads // g}")
            smem = min(bk, c.sk) * (c.d + c.dv) * L.np_dtype(c.acc_dtype).itemsize
            if smem > smem_limit:
                raise ScheduleError(f"schedule of {c.name}: attention_tile BK={bk} stages {smem} bytes of K and V "
                                    f"in shared memory, over the {smem_limit}-byte ({smem_limit // 1024} KiB) limit; "
                                    f"use a smaller BK")
    elif not target.gpu:
        bq, bk = _cpu_default_tile(c)
    else:  # row_threads(c) threads per query row; 256 threads per block so K and V are read few times
        bq, bk = min(256 // row_threads(c), -(-c.sq // 32) * 32), 32
        # K and V tiles within the static shared-memory limit (D = Dv = 256 would need 64 KiB at BK = 32)
        while bk > 1 and min(bk, c.sk) * (c.d + c.dv) * L.np_dtype(c.acc_dtype).itemsize > target.max_shared_bytes:
            bk //= 2
    return max(1, min(int(bq), c.sq if not target.gpu else int(bq))), max(1, min(int(bk), c.sk))


ROW_SLICE = 64   # columns of q and of acc_o one gpu thread keeps in registers


def row_threads(c: AttentionCompute) -> int:
    """Threads per query row of the gpu kernel: 1 while a row's q and acc_o (D + Dv floats) fit one thread, else
    the smallest power of two G (dividing D and Dv, at most 32) that leaves each thread <= ROW_SLICE columns.

    One thread per row keeps q (D), acc_o (Dv) and the scores tile (BK) in registers: ~160 floats at D=64 fit the
    255 registers a thread may have at 256 threads per block, but D=128 needed ~290 and spilled (nvcc 12, sm_90:
    255 registers, 340 bytes of spill stores). Splitting the row's columns over G threads, as FlashAttention-2
    splits work, keeps each thread at the D=64 footprint; the G partial q·k sums meet by warp shuffles."""
    g, width = 1, max(c.d, c.dv)
    while -(-width // g) > ROW_SLICE and c.d % (2 * g) == 0 and c.dv % (2 * g) == 0 and 2 * g <= 32:
        g *= 2
    return g


def _cpu_default_tile(c: AttentionCompute) -> tuple[int, int]:
    """(BQ, BK) on the cpu: the largest of 128/64/32 query rows that still leaves >= 16 parallel blocks, and
    128-key tiles. Bigger blocks read each K and V tile for more query rows: B1 H8 S1024 D64
    took 34 ms of CPU time per call at (32, 64) and 30 ms at (128, 128) (1 thread, 2026-12-01, before the
    transposed scores). The block's locals (s_tile BQ*BK, acc_o BQ*Dv, qt_tile D*BQ floats) stay under
    256 KiB of stack."""
    nb = 1
    for s in c.batch:
        nb *= s
    for bq in (128, 64):
        for bk in (128, 64):
            bk = min(bk, c.sk)
            if nb * -(-c.sq // bq) >= 16 and bq * (bk + c.dv + c.d) <= 64 * 1024:
                return bq, bk
    return 32, 64


def generate_attention(c: AttentionCompute, target: "str | Target", knobs: dict | None = None) -> L.Kernel:
    """The online-softmax loop nest of `c` for `target` (a Target or its name; an unscheduled target,
    'reference', gets the naive nest: one row per step)."""
    target = get_target(target)
    if not target.scheduled:
        bq, bk = 1, c.sk
    else:
        bq, bk = attention_tiles(c, target, knobs)
    nb = 1
    for s in c.batch:
        nb *= s
    nblk = -(-c.sq // bq)
    ntile = -(-c.sk // bk)
    gpu = target.gpu
    # gpu: G threads per query row (row_threads); thread g of a row owns columns g, g + G, ... of q and acc_o
    G = row_threads(c) if gpu else 1
    grp = L.Var("g")
    dt = c.acc_dtype
    ninf, zero = L.Const(float("-inf"), dt), L.Const(0.0, dt)
    blk = L.Var("blk")
    row_tail, key_tail = c.sq % bq != 0, c.sk % bk != 0

    # batch indices from the fused block index
    bidx: dict[str, L.Expr] = {}
    rest: L.Expr = L.BinOp("/", blk, L.Const(nblk))
    for k in range(len(c.batch) - 1, -1, -1):
        bidx[f"b{k}"] = L.BinOp("%", rest, L.Const(c.batch[k])) if k else rest
        rest = L.BinOp("/", rest, L.Const(c.batch[k]))
    i0 = L.BinOp("*", L.BinOp("%", blk, L.Const(nblk)), L.Const(bq))

    def sub(expr: L.Expr, **kw: L.Expr) -> L.Expr:
        return L.simplify_expr(L.substitute(expr, {**bidx, **kw}))

    def clamp(e: L.Expr, n: int, tail: bool) -> L.Expr:
        return L.BinOp("min", e, L.Const(n - 1)) if tail else e

    # per-row state; cpu: arrays over the block's rows r; gpu: one row per thread
    r = L.Var("t") if gpu else L.Var("r")
    ridx: tuple[L.Expr, ...] = () if gpu else (r,)
    rshape: tuple[int, ...] = () if gpu else (bq,)
    m_buf = L.Buffer("m_run", rshape, dt, "local")
    l_buf = L.Buffer("l_run", rshape, dt, "local")
    acc = L.Buffer("acc_o", rshape + (c.dv // G,), dt, "local")
    # cpu: the scores tile transposed (keys x query rows), so the softmax runs along the rows' vectors
    s_buf = L.Buffer("s_tile", rshape + (bk,) if gpu else (bk, bq), dt, "local")
    m_new = L.Buffer("m_new", rshape, dt, "local")
    alpha = L.Buffer("alpha", rshape, dt, "local")
    rsum = L.Buffer("row_sum", rshape, dt, "local")
    jj, dd, ee, j_o = L.Var("jj"), L.Var("d"), L.Var("e"), L.Var("j_o")
    i_row = clamp(L.BinOp("+", i0, r), c.sq, row_tail)
    j_key = L.BinOp("+", L.BinOp("*", j_o, L.Const(bk)), jj)
    j_safe = clamp(j_key, c.sk, key_tail)
    if gpu:
        k_tile = L.Buffer("k_tile", (bk, c.d), dt, "shared")
        v_tile = L.Buffer("v_tile", (bk, c.dv), dt, "shared")
        k_at = lambda: L.Load(k_tile, (jj, col(dd)))  # noqa: E731
    else:  # the query block transposed, staged once per block: score vectors run along its rows
        q_tile = L.Buffer("qt_tile", (c.d, bq), dt, "local")
        v_tile = None
    def col(x: L.Expr) -> L.Expr:
        """The q / v column of a thread's slice element x (interleaved: the G threads of a row read adjacent
        shared-memory words, so a warp's reads of a K or V tile row never conflict)."""
        return x if G == 1 else L.BinOp("+", L.BinOp("*", x, L.Const(G)), grp)

    flat_thread = r if G == 1 else L.BinOp("+", L.BinOp("*", r, L.Const(G)), grp)
    S = (lambda *ix: L.Load(s_buf, ridx + ix)) if gpu else (lambda *ix: L.Load(s_buf, ix + (r,)))  # noqa: E731

    def over_rows(body: list[L.Stmt]) -> list[L.Stmt]:
        return body if gpu else [L.For(r, bq, tuple(body))]

    init = over_rows([L.Store(m_buf, ridx, ninf), L.Store(l_buf, ridx, zero),
                      L.For(ee, c.dv // G, (L.Store(acc, ridx + (ee,), zero),))])
    tile_body: list[L.Stmt] = [L.Comment("stage the key (and value) tile")]
    if gpu:
        tile_body += _coop_copy(k_tile, lambda a, b: sub(c.k_value, i=i_row, j=L.BinOp("+", L.BinOp("*", j_o, L.Const(bk)), a), d=b),
                                bk, c.d, j_o, c.sk, bq * G, flat_thread) \
            + _coop_copy(v_tile, lambda a, b: sub(c.v_value, i=i_row, j=L.BinOp("+", L.BinOp("*", j_o, L.Const(bk)), a), e=b),
                         bk, c.dv, j_o, c.sk, bq * G, flat_thread) + [L.Barrier()]
    else:
        tile_body = []
    # scores of the tile: q·k, then the logits expression (scale, mask); keys past the end are -inf
    logit_ij, staged = (c.logit, {}) if gpu else _stage_row_key_loads(c.logit, c.score, jj, r, bq, bk)
    shared_loads: dict[L.Load, L.Buffer] = {}
    if G > 1:   # the logits' own loads (a mask): one thread of the row reads each, the others get it by shuffle
        logit_ij, shared_loads = _one_lane_loads(logit_ij, c.score)
    logit = sub(logit_ij, i=i_row, j=j_safe)
    if staged:   # cpu: a mask read along (row, key) is staged per key tile in the scores' transposed layout
        tile_body += [L.Comment("stage the tile of " + ", ".join(sorted({x.buffer.name for x in staged}))
                                + " read by the logits, transposed (keys x query rows)")]
        tile_body += [_blocked_copy(buf, lambda a, b, x=x: sub(x, i=clamp(L.BinOp("+", i0, b), c.sq, row_tail),
                                                             j=clamp(L.BinOp("+", L.BinOp("*", j_o, L.Const(bk)), a), c.sk, key_tail)),
                                    bk, bq) for x, buf in staged.items()]
    s_val = L.map_expr(logit, lambda x: S(jj) if isinstance(x, L.Load) and x.buffer == c.score else None)
    if key_tail:
        s_val = L.Select(L.BinOp("<", j_key, L.Const(c.sk)), s_val, ninf)
    qd = sub(c.q_value, i=i_row, d=dd)
    q_stage: list[L.Stmt] = []
    if gpu:  # the thread's query row (its slice) in registers: q is read from global memory once
        q_row = L.Buffer("q_row", (c.d // G,), dt, "local")
        q_stage = [L.Alloc(q_row), L.For(dd, c.d // G, (L.Store(q_row, (dd,), sub(c.q_value, i=i_row, d=col(dd))),))]
        qd = L.Load(q_row, (dd,))
    else:
        q_stage = [L.Comment("stage the query block, transposed (once per block)"),
                   L.For(dd, c.d, (L.For(r, bq, (L.Store(q_tile, (dd, r), qd),)),))]
    q_k = L.Buffer("q_k", (), dt, "local")
    # the row's thread that reads the logits' loads for key jj (none for keys past the end: their score is -inf)
    mask_owner = L.BinOp("==", L.BinOp("%", jj, L.Const(G)), grp)
    if key_tail:
        mask_owner = L.BinOp("&&", mask_owner, L.BinOp("<", j_key, L.Const(c.sk)))
    if gpu and G > 1:   # partial q·k over the thread's columns; then the row's G threads sum them (warp shuffles)
        scores = [L.For(jj, bk, (L.Store(s_buf, (jj,), zero),
                                 L.For(dd, c.d // G, (L.Store(s_buf, (jj,), L.BinOp("+", S(jj), L.BinOp("*", qd, k_at()))),)))),
                  L.For(jj, bk, (L.Store(q_k, (), S(jj)),
                                 L.ThreadAllReduce("sum", q_k, "threadIdx.x"),
                                 *(st for x, buf in shared_loads.items()
                                   for st in _read_on_one_lane(buf, sub(x, i=i_row, j=j_safe),
                                                               mask_owner)),
                                 L.Store(s_buf, (jj,), L.Load(q_k, ())),
                                 L.Store(s_buf, (jj,), s_val)))]
    elif gpu:
        scores = [L.For(jj, bk, (L.Store(s_buf, (jj,), zero),
                                 L.For(dd, c.d, (L.Store(s_buf, (jj,), L.BinOp("+", S(jj), L.BinOp("*", qd, k_at()))),)),
                                 L.Store(s_buf, (jj,), s_val)))]
    else:
        scores = _cpu_scores(s_buf, q_tile, sub(c.k_value, j=j_safe, d=dd), s_val, r, jj, dd, bq, bk, c.d, dt)
    M, Ml = L.Load(m_new, ridx), L.Load(m_buf, ridx)
    m_safe = L.Select(L.BinOp("==", M, ninf), zero, M)  # a row with every key masked so far: no NaN from -inf - -inf
    v_at = L.Load(v_tile, (jj, col(ee))) if gpu else sub(c.v_value, j=j_safe, e=ee)
    online = _cpu_online(c, s_buf, m_buf, l_buf, acc, m_new, alpha, rsum, v_at, r, jj, ee, bq, bk, dt) if not gpu \
        else over_rows([
        L.Comment("online softmax: new running max, rescale by exp(m_old - m_new)"),
        L.Store(m_new, (), Ml),
        L.For(jj, bk, (L.Store(m_new, (), L.BinOp("max", M, S(jj))),)),
        L.Store(alpha, (), L.call("exp", L.BinOp("-", Ml, m_safe))),
        L.Store(rsum, (), zero),
        L.For(jj, bk, (L.Store(s_buf, ridx + (jj,), L.call("exp", L.BinOp("-", S(jj), m_safe))),
                       L.Store(rsum, (), L.BinOp("+", L.Load(rsum, ()), S(jj))))),
        L.Store(l_buf, ridx, L.BinOp("+", L.BinOp("*", L.Load(l_buf, ridx), L.Load(alpha, ())), L.Load(rsum, ()))),
        L.Store(m_buf, ridx, M),
        L.For(ee, c.dv // G, (L.Store(acc, ridx + (ee,), L.BinOp("*", L.Load(acc, ridx + (ee,)), L.Load(alpha, ()))),),
              kind="serial" if gpu else "vectorized"),
        L.Comment("accumulate p @ v of the tile"),
        L.For(jj, bk, (L.For(ee, c.dv // G, (L.Store(acc, ridx + (ee,), L.BinOp("+", L.Load(acc, ridx + (ee,)),
                                                                           L.BinOp("*", S(jj), v_at))),),
                             kind="serial" if gpu else "vectorized"),)),
    ])
    tile_body += [L.Comment("scores of the tile stay in local memory" + ("" if gpu else ", transposed (keys x query rows)"))] \
        + scores + online
    if gpu:
        tile_body.append(L.Barrier())
    i_out = L.BinOp("+", i0, r)
    out_idx = tuple(bidx[f"b{k}"] for k in range(len(c.batch))) + (i_out, col(ee))
    store = [L.For(ee, c.dv // G, (L.Store(c.out, tuple(L.simplify_expr(x) for x in out_idx),
                                      _to(L.BinOp("/", L.Load(acc, ridx + (ee,)), L.Load(l_buf, ridx)), c.out.dtype)),))]
    if row_tail:
        store = [L.If(L.BinOp("<", i_out, L.Const(c.sq)), tuple(store))]
    allocs = [L.Alloc(b) for b in (m_buf, l_buf, acc, s_buf, m_new, alpha, rsum)]
    if G > 1:
        allocs += [L.Alloc(q_k)] + [L.Alloc(b) for b in shared_loads.values()]
    if not gpu:
        m_safe_buf = L.Buffer("m_safe", (bq,), dt, "local")
        allocs += [L.Alloc(m_safe_buf)] + [L.Alloc(b) for b in staged.values()]
    keyloop = L.For(j_o, ntile, tuple(tile_body))
    if gpu:
        row_body = tuple(allocs + q_stage + init + [keyloop] + store)
        thread = L.For(r, bq, row_body, kind="threadIdx.x") if G == 1 else \
            L.For(r, bq, (L.For(grp, G, row_body, kind="threadIdx.x"),), kind="threadIdx.y")
        body = [L.For(blk, nb * nblk, (L.Alloc(k_tile), L.Alloc(v_tile), thread), kind="blockIdx.x")]
    else:
        body = [L.For(blk, nb * nblk, tuple(allocs + [L.Alloc(q_tile)] + q_stage + init + [keyloop] + over_rows(store)),
                      kind="parallel" if target.scheduled else "serial")]
    steps = (f"attention(online softmax): {nb * nblk} blocks of {bq} query rows (batch fused), "
             f"{ntile} key tiles of {bk}", )
    if gpu:
        if G == 1:
            steps += ("bind(blk, blockIdx.x)", "bind(t, threadIdx.x): one query row per thread",
                      "cache_read(q, local): the thread's query row",)
        else:
            steps += ("bind(blk, blockIdx.x)", f"bind(t, threadIdx.y): one query row per {G} threads",
                      f"bind(g, threadIdx.x): thread g keeps columns g, g+{G}, ... of q and acc_o "
                      f"({c.d // G} + {c.dv // G} of {c.d} + {c.dv}: no register spills)",
                      f"cache_read(q, local): the thread's {c.d // G} columns of its query row",
                      f"allreduce(q_k, threadIdx.x): a row's {G} partial q·k sums meet by warp shuffles")
            steps += tuple(f"cache_read({x.buffer.name}, local, one thread of the row): shared by allreduce_max"
                           for x in shared_loads)
        steps += ("cache_read(k, shared, at=j_o)", "cache_read(v, shared, at=j_o)")
    elif target.scheduled:
        steps += ("parallel(blk)", "cache_read(q, local, at=blk, transposed)",
                  "scores transposed (keys x query rows): the softmax is vectorized over the block's rows",
                  "vectorize(r)", "vectorize(e)")
        steps += tuple(f"cache_read({x.buffer.name}, local, at=j_o, transposed)" for x in staged)
    meta: tuple = (("attention_tile", (bq, bk)),)
    if not gpu and target.scheduled and _vector_bytes() != 32:
        steps += (f"vector width {_vector_bytes()} bytes (AVX-512: {_lanes(dt)} x {dt} per register)",)
        meta += (("vector_bytes", _vector_bytes()),)
    notes = (f"{ATTENTION_REASON}: each key tile's scores (s_tile) live in local memory; running max m_run and "
             f"sum l_run rescale the accumulator acc_o by exp(m_old - m_new), so no {c.sq}x{c.sk} buffer is written",)
    if G > 1:
        notes += (f"D={c.d}, Dv={c.dv}: {G} threads per query row, each with {c.d // G} + {c.dv // G} columns of q and "
                  f"acc_o in registers (one thread per row would need ~{c.d + c.dv + bk} floats of registers and spill); "
                  f"the row's partial q·k sums meet by warp shuffles",)
    if row_tail or key_tail:
        notes += ("the sequence is not a multiple of the tile: rows past the end are clamped and not stored, "
                  "keys past the end score -inf",)
    params = tuple(c.inputs) + tuple(b for b in c.outputs if b not in c.inputs)
    return L.Kernel(c.name, params, tuple(body), outputs=tuple(b.name for b in c.outputs), kind="attention",
                    schedule=steps, meta=(("notes", notes),) + meta, group=c.group, ops=c.ops,
                    source_lines=c.source_lines)


_RT, _VW = 4, 16   # cpu register tile: 4 rows x 16 lanes (8 AVX accumulators), the C backend's micro-kernel shape
WIDE_VECTOR_BYTES = 64   # AVX-512: one zmm register


@functools.lru_cache(maxsize=None)
def _avx512() -> bool:
    """Whether the C compiler targets AVX-512 on this host (it builds with -march=native): Target.host_vector_bytes."""
    return get_target("cpu").host_vector_bytes() == WIDE_VECTOR_BYTES


def _register_rows() -> int:
    """Rows of the cpu register tile: 8 (16 accumulators) where AVX-512VL gives 32 vector registers (the C
    backend builds with -march=native), else _RT (8 accumulators fit AVX2's 16). B1 H8 S1024 D64 at 1 thread
    on an AVX-512 host: 28 -> 25 ms CPU time per call (2026-12-01)."""
    return 2 * _RT if _avx512() else _RT


def _vector_bytes() -> int:
    """Bytes per vector of the attention kernel's micro-kernels: 64 (zmm) with AVX-512, else the cpu target's 32.

    On a Zen 5 host (full-width 512-bit FMA units) B1 H8 S1024 D64 f32 at 1 thread took 24.5 ms of CPU time per
    call with 8x16 tiles of 8-lane vectors and 18-19 ms with 8x32 tiles of 16-lane vectors (2026-12-01)."""
    return WIDE_VECTOR_BYTES if _avx512() else 32


def _lanes(dt: str) -> int:
    """Elements of `dt` per vector of the attention kernel."""
    return _vector_bytes() // L.np_dtype(dt).itemsize


def _split(n: int, w: int) -> int:
    """w when it divides n, else n (one chunk: the C backend then emits plain loops)."""
    return w if n % w == 0 else n


class _RegTile:
    """A (RT rows x VW lanes) register tile of a rows x cols block: loop vars, the block's row/col of a tile
    element, the local tile buffer and `tile(stmt)` = for row_i in unrolled(RT): for lane in vectorized(VW)."""

    def __init__(self, name: str, rows: int, cols: int, col: str, lane: str, dt: str, row: tuple[str, str] = ("r_o", "r_i")):
        self.rt = next((rt for rt in (_register_rows(), _RT) if rows % rt == 0), 1)
        # two vectors per tile row: 16 accumulators with wide vectors, as with AVX2's 8-lane ones
        wide = _vector_bytes() == WIDE_VECTOR_BYTES
        self.vw = next((w for w in (2 * _lanes(dt), _lanes(dt)) if cols % w == 0), cols) if wide else _split(cols, _VW)
        self.r_o, self.r_i, self.c_o, self.lane = L.Var(row[0]), L.Var(row[1]), L.Var(col), L.Var(lane)
        self.row = L.BinOp("+", L.BinOp("*", self.r_o, L.Const(self.rt)), self.r_i)
        self.col = L.BinOp("+", L.BinOp("*", self.c_o, L.Const(self.vw)), self.lane)
        self.reg = L.Buffer(name, (self.rt, self.vw), dt, "local")
        self.R = L.Load(self.reg, (self.r_i, self.lane))
        self.n_rows, self.n_cols = rows // self.rt, cols // self.vw

    def tile(self, st: L.Stmt) -> L.For:
        return L.For(self.r_i, self.rt, (L.For(self.lane, self.vw, (st,), kind="vectorized"),), kind="unrolled")

    def nest(self, body: Sequence[L.Stmt]) -> L.For:
        """for row_o: for c_o: alloc the tile; body."""
        return L.For(self.r_o, self.n_rows, (L.For(self.c_o, self.n_cols, (L.Alloc(self.reg), *body)),))


def _stage_row_key_loads(logit: L.Expr, score: L.Buffer, jj: L.Var, r: L.Var, bq: int,
                         bk: int) -> tuple[L.Expr, dict[L.Load, L.Buffer]]:
    """(logit with every load indexed by both the query row i and the key j, such as an additive mask, read from
    a (BK, BQ) local tile at [jj, r] instead; {original load: its tile}).

    With the scores transposed, the logits' vector lanes run along query rows, so a row-major mask[i, j] would be
    read with a stride of a whole mask row per lane (a gather touching one page per lane); its tile is copied
    row by row once per key tile instead."""
    staged: dict[L.Load, L.Buffer] = {}

    def names(e: L.Expr) -> set[str]:
        return {x.name for x in L.walk_expr(e) if isinstance(x, L.Var)}

    def stage(x: L.Expr) -> L.Expr | None:
        if (not isinstance(x, L.Load) or x.buffer == score or x.buffer.scope != "global"
                or any(isinstance(y, L.Load) for i in x.indices for y in L.walk_expr(i))
                or not {"i", "j"} <= set().union(*(names(i) for i in x.indices))):
            return None
        if x not in staged:   # a name with a space: no user or generated name can take it
            staged[x] = L.Buffer(f"{x.buffer.name} tile{len(staged) or ''}", (bk, bq), x.dtype, "local")
        return L.Load(staged[x], (jj, r))
    return L.map_expr(logit, stage), staged


_COPY_BLOCK = 16


def _blocked_copy(tile: L.Buffer, value, rows: int, cols: int, a_name: str = "jj", b_name: str = "r") -> L.For:
    """tile[a, b] = value(a, b) for a < rows, b < cols, in 16x16 blocks read along a (a transposing copy);
    loop variables a_name/b_name with suffixes _o (block) and _i (in the block).

    Unblocked, either loop order walks one side of the transpose with a stride of a whole tile row: a
    128x128 f32 mask tile took 2.3x the time of the blocked copy (B1 H8 S1024 causal mask: 31 vs 16 ms of
    CPU time per call, 2026-12-01), as the strided side keeps hitting the same cache sets."""
    bb, ba = _split(cols, _COPY_BLOCK), _split(rows, _COPY_BLOCK)
    b_o, a_o, b_i, a_i = (L.Var(f"{n}_{s}") for s, n in (("o", b_name), ("o", a_name), ("i", b_name), ("i", a_name)))
    a = L.BinOp("+", L.BinOp("*", a_o, L.Const(ba)), a_i)
    b = L.BinOp("+", L.BinOp("*", b_o, L.Const(bb)), b_i)
    a, b = L.simplify_expr(a), L.simplify_expr(b)
    store = L.Store(tile, (a, b), value(a, b))
    return L.For(b_o, cols // bb, (L.For(a_o, rows // ba, (L.For(b_i, bb, (L.For(a_i, ba, (store,), kind="unrolled"),)),)),))


def _cpu_scores(s_buf, qt, kd, s_val, r, jj, dd, bq, bk, d, dt) -> list[L.Stmt]:
    """s_tile[jj, r] = logit(k[j, :] · qt[:, r]) as a register-tiled matmul (RT keys x VW query rows over d): the
    key is broadcast, the staged query block gives the vectors."""
    t = _RegTile("s_reg", bk, bq, "r_c", "rv", dt, row=("j_r", "j_i"))
    key, row, R, tile = t.row, t.col, t.R, t.tile
    kv = L.simplify_expr(L.substitute(kd, {jj.name: key}))
    logit = L.simplify_expr(L.substitute(L.map_expr(s_val, lambda x: R if isinstance(x, L.Load) and x.buffer == s_buf
                                                    else None), {r.name: row, jj.name: key}))
    return [t.nest([tile(L.Store(t.reg, t.R.indices, L.Const(0.0, dt))),
                    L.For(dd, d, (tile(L.Store(t.reg, t.R.indices, L.BinOp("+", R, L.BinOp("*", kv, L.Load(qt, (dd, row)))))),)),
                    tile(L.Store(s_buf, (key, row), logit))])]


def _cpu_online(c, s_buf, m_buf, l_buf, acc, m_new, alpha, rsum, v_at, r, jj, ee, bq, bk, dt) -> list[L.Stmt]:
    """The online softmax over the transposed scores tile, each step a loop over keys around a vector loop over
    the block's query rows (no per-row horizontal reductions): running max, alpha = exp(m_old - m_new),
    p = exp(s - m_new), l; then acc = acc * alpha + p @ v as a register-tiled matmul (RT rows x VW output
    columns over the tile's keys)."""
    ninf, zero = L.Const(float("-inf"), dt), L.Const(0.0, dt)
    m_safe = L.Buffer("m_safe", (bq,), dt, "local")
    S, M, Ml, Ms = L.Load(s_buf, (jj, r)), L.Load(m_new, (r,)), L.Load(m_buf, (r,)), L.Load(m_safe, (r,))

    def rows(*body: L.Stmt) -> L.For:
        return L.For(r, bq, body, kind="vectorized")
    softmax = [
        L.Comment("online softmax, vectorized over the block's query rows: new running max"),
        rows(L.Store(m_new, (r,), Ml)),
        L.For(jj, bk, (rows(L.Store(m_new, (r,), L.BinOp("max", M, S))),)),
        L.Comment("rescale factor exp(m_old - m_new); a row with every key masked so far: no NaN from -inf - -inf"),
        rows(L.Store(m_safe, (r,), L.Select(L.BinOp("==", M, ninf), zero, M)),
             L.Store(alpha, (r,), L.call("exp", L.BinOp("-", Ml, Ms))),
             L.Store(rsum, (r,), zero)),
        L.For(jj, bk, (rows(L.Store(s_buf, (jj, r), L.call("exp", L.BinOp("-", S, Ms))),
                            L.Store(rsum, (r,), L.BinOp("+", L.Load(rsum, (r,)), S))),)),
        rows(L.Store(l_buf, (r,), L.BinOp("+", L.BinOp("*", L.Load(l_buf, (r,)), L.Load(alpha, (r,))), L.Load(rsum, (r,)))),
             L.Store(m_buf, (r,), M))]
    t = _RegTile("o_reg", bq, c.dv, "e_c", "ev", dt)
    row, col, R, tile = t.row, t.col, t.R, t.tile
    v_col = L.simplify_expr(L.substitute(v_at, {ee.name: col}))
    pv = t.nest([tile(L.Store(t.reg, R.indices, L.BinOp("*", L.Load(acc, (row, col)), L.Load(alpha, (row,))))),
                 L.For(jj, bk, (tile(L.Store(t.reg, R.indices, L.BinOp("+", R, L.BinOp("*", L.Load(s_buf, (jj, row)), v_col)))),)),
                 tile(L.Store(acc, (row, col), R))])
    return softmax + [L.Comment("acc_o = acc_o * alpha + p @ v of the tile (register tiles)"), pv]


def _one_lane_loads(logit: L.Expr, score: L.Buffer) -> tuple[L.Expr, dict[L.Load, L.Buffer]]:
    """(logit with each global load other than the score read from a 0-d local instead, {load: that local}).

    With G threads per row every thread computes the row's logits; reading a mask in each of them would read
    it G times (the simulator counts those reads, and they are real instructions). _read_on_one_lane reads it
    once per row and shares it."""
    found: dict[L.Load, L.Buffer] = {}

    def swap(x: L.Expr) -> L.Expr | None:
        if (not isinstance(x, L.Load) or x.buffer == score or x.buffer.scope != "global"
                or any(isinstance(y, L.Load) for i in x.indices for y in L.walk_expr(i))):
            return None
        if x not in found:   # a name with a space: no user or generated name can take it
            found[x] = L.Buffer(f"{x.buffer.name} of row{len(found) or ''}", (), x.dtype, "local")
        return L.Load(found[x], ())
    return L.map_expr(logit, swap), found


def _read_on_one_lane(buf: L.Buffer, value: L.Expr, owner: L.Expr) -> list[L.Stmt]:
    """buf = value on the lanes where `owner` holds, else max's identity; then a max over the row's threads
    (warp shuffles) gives every thread of the row the value, bit for bit (max(x, -inf) is x, -0.0 and NaN too)."""
    dt = L.np_dtype(buf.dtype)
    if dt.kind == "f":
        identity = L.Const(float("-inf"), buf.dtype)
    elif dt.kind == "b":
        identity = L.Const(False, buf.dtype)
    else:
        identity = L.Const(int(np.iinfo(dt).min), buf.dtype)
    return [L.If(owner, (L.Store(buf, (), value),), (L.Store(buf, (), identity),)),
            L.ThreadAllReduce("max", buf, "threadIdx.x")]


def _to(e: L.Expr, dt: str) -> L.Expr:
    return e if e.dtype == dt else L.Cast(dt, e)


def _coop_copy(tile: L.Buffer, value, rows: int, cols: int, j_o: L.Var, sk: int, nthreads: int, t: L.Var) -> list[L.Stmt]:
    """Every thread of the block copies elements t, t + nthreads, ... of the tile (zeros past the last key)."""
    k = L.Var(f"{tile.name}_e")
    flat = L.BinOp("+", L.BinOp("*", k, L.Const(nthreads)), t)
    a, b = L.BinOp("/", flat, L.Const(cols)), L.BinOp("%", flat, L.Const(cols))
    key = L.BinOp("+", L.BinOp("*", j_o, L.Const(rows)), a)
    store = L.Store(tile, (a, b), value(a, b))
    zero = L.Store(tile, (a, b), L.Const(0.0, tile.dtype))
    body: L.Stmt = L.If(L.BinOp("<", key, L.Const(sk)), (store,), (zero,))
    n = -(-(rows * cols) // nthreads)
    if n * nthreads != rows * cols:
        body = L.If(L.BinOp("<", flat, L.Const(rows * cols)), (body,))
    return [L.For(k, n, (body,))]
