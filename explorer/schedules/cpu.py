"""Default schedules for the CPU (C + OpenMP): elementwise chunks across OpenMP threads with SIMD
inside, row reductions with per-lane partial accumulators, and matmuls as a packed B panel plus a
TM x TN register tile of vector accumulators (the BLIS micro-kernel shape), or row streaming for
small products; direct convolution with a register tile over output columns x channels.

>>> import numpy as np, explorer
>>> c = explorer.compile(lambda a: np.exp(a), np.ones(1 << 16, np.float32), target="cpu", stop_after="tiled")
>>> print(c.stage("tiled").ir.kernels[0].schedule[1])
parallel(n_o)
"""
from __future__ import annotations

from typing import Any

from .. import loopir as L
from ..schedule import Schedule
from ..target import get_target
from . import c_extent, fuse_all as _fuse_all

# unrolled vector statements per micro-kernel (passes/vectorize_cpu.py keeps a larger region as plain loops);
# the conv schedule sizes its tile to fit
MAX_VECTOR_STMTS = 256


def default_schedule(compute, knobs: dict[str, Any]) -> Schedule:
    """The CPU's default Schedule for one compute definition (knobs already checked)."""
    if getattr(compute, "pattern", "") == "conv2d":
        return _cpu_conv(compute, knobs)
    return _cpu_default(compute, knobs)


# lanes of a 32-byte (AVX2) vector per accumulator dtype: the CPU matmul tile's width unit
CPU_VECTOR_LANES = get_target("cpu").vector_lanes


def _cpu_reduce_lanes(c, knobs) -> int:
    """SIMD lanes for a row reduction on the CPU, or 0 to keep it serial.

    Only a single reduce axis that is the innermost (stride-1) index of every array it reads,
    with an extent divisible by the lane count (no masked tail), and float/int accumulators.
    """
    if len(c.reduce) != 1 or not c.accums:
        return 0
    r = c.reduce[0]
    vec = knobs.get("vector", 16)
    if vec <= 1 or r.extent % vec or r.extent <= vec:
        return 0
    for a in c.accums:
        if a.buffer.dtype not in ("f32", "f64", "i32", "i64") or a.op not in ("sum", "max", "min"):
            return 0
        for x in L.walk_expr(a.value):
            if isinstance(x, L.Load) and any(isinstance(v, L.Var) and v.name == r.name
                                             for i in x.indices for v in L.walk_expr(i)):
                if not (x.indices and x.indices[-1] == L.Var(r.name)):
                    return 0
    return vec


def select_axes(c) -> set[str]:
    """Spatial axes that a select of the kernel's stores compares with a constant (concat, pad)."""
    names = {a.name for a in c.spatial}
    out: set[str] = set()
    for st in c.stores:
        for e in L.walk_expr(st.value):
            if isinstance(e, L.Select):
                for x in L.walk_expr(e.cond):
                    if isinstance(x, L.BinOp) and x.op in ("<", "<=", ">", ">=") and isinstance(x.a, L.Var) \
                            and x.a.name in names and isinstance(x.b, L.Const):
                        out.add(x.a.name)
    return out


def rearranged_loads(c) -> bool:
    """Does a load of the kernel's stores read other than element by element (a slice's offset or step,
    a reshape that merges or splits dims as np.repeat / np.tile lower to), while every load still walks
    its last dim along the last axis? Broadcast reads (index 0, or a trailing subset of the axes, as a
    bias b[i1]) count as element by element; a transposed read (its last index follows another axis)
    makes the answer False, since a row loop would then stride through memory."""
    axes = [L.Var(a.name) for a in c.spatial]
    names = {a.name for a in axes}
    found = False
    for st in c.stores:
        for e in L.walk_expr(st.value):
            if not (isinstance(e, L.Load) and e.indices):
                continue
            idx = [i for i in e.indices if not (isinstance(i, L.Const) and i.value == 0)]
            if not idx or idx == axes[len(axes) - len(idx):]:
                continue
            last = {x.name for x in L.walk_expr(idx[-1]) if isinstance(x, L.Var)} & names
            if last and axes[-1].name not in last:
                return False
            found = True
    return found


def _cpu_default(c, knobs) -> Schedule:
    s = Schedule()
    sp = [a.name for a in c.spatial]
    rd = [a.name for a in c.reduce]
    if c.kind == "elementwise":
        big = c_extent(c, sp) > knobs.get("chunk", 4096)
        if select_axes(c):
            # concat / pad: keep the loops plain so tiling splits them at the selects' bounds
            # (passes/index_split.py) into select-free loops the C compiler vectorizes
            if len(sp) > 1 and c.spatial[0].extent > 1 and big:
                s.parallel(sp[0])
            s.notes.append("elementwise with concat/pad selects: plain loops, outer one across OpenMP threads, "
                           "each split where a select changes side")
            return s
        if len(sp) > 1 and rearranged_loads(c):
            # slices, repeat / tile: one flat loop would pay a division and a remainder per
            # element to find each load's index; rows keep the last axis a plain, vectorizable loop
            rows = _fuse_all(s, sp[:-1], "row")
            if big:
                s.parallel(rows)
            s.notes.append("elementwise with rearranging loads: rows across OpenMP threads, the last axis a "
                           "plain loop")
            return s
        f = _fuse_all(s, sp, "n")
        if f is None:
            return s
        n = c_extent(c, sp)
        chunk = knobs.get("chunk", 4096)
        chunk = min(chunk, n)
        if n > chunk:
            fo, fi = s.split(f, chunk, names=("n_o", "n_i"))
            s.parallel(fo)
            vec = knobs.get("vector", 16)
            if chunk % vec == 0 and chunk > vec:
                fv_o, fv = s.split(fi, vec, names=("n_c", "n_v"))
                s.vectorize(fv)
            else:
                s.vectorize(fi) if chunk <= 64 else None
        else:
            if n > 1 and n <= 64:
                s.vectorize(f)
        s.notes.append(f"elementwise: chunks of {chunk} elements across OpenMP threads, SIMD inside")
        return s
    if c.kind in ("reduce", "opaque"):
        o = _fuse_all(s, sp, "row")
        if o is not None and c_extent(c, sp) > 1:
            s.parallel(o)
        vec = _cpu_reduce_lanes(c, knobs) if c.kind == "reduce" else 0
        if vec:
            # r -> (r_o, r_i): r_i runs in SIMD lanes with one partial accumulator per lane
            # (codegen/c.py), combined after the row; max/min keep NumPy's NaN propagation
            _, ri = s.split(rd[0], vec, names=(f"{rd[0]}_o", f"{rd[0]}_i"))
            s.vectorize(ri)
            s.notes.append(f"reduction: rows across OpenMP threads, {vec} partial accumulators per row "
                           f"in SIMD lanes along the contiguous reduce axis")
        else:
            s.notes.append("reduction: rows across OpenMP threads, serial accumulation along the row")
        return s
    M, N, K = c.axis("i").extent, c.axis("j").extent, c.axis("k").extent
    if "thread_tile" not in knobs:
        small = _cpu_small_matmul(c, M, N, K)
        if small is not None:
            return small
    # matmul: B's column panel packed once per j tile (contiguous rows, no 4 KB-stride L1 aliasing),
    # then batch items, column panels or row tiles across OpenMP threads (one parallel region per call
    # where the sizes allow), each keeping a TM x TN register tile of accumulators.
    # TM x TN accumulators as 32-byte vectors (codegen/c.py keeps them in registers): 6 rows x 2
    # vectors = 12 of the 16 AVX2 registers, plus 2 for the B row and 1 for the broadcast A value
    # (the BLIS Haswell micro-kernel shape); other dtypes keep the scalar (4, 32) tile. On AVX-512 hosts
    # f32/f64 take 24 accumulators in 64-byte zmm vectors instead (_wide_matmul_tile: 2x the FMA width).
    acc_dt = c.accums[0].buffer.dtype if c.accums else "f32"
    lanes = CPU_VECTOR_LANES.get(acc_dt)
    wide = _wide_matmul_tile(acc_dt, N) if "thread_tile" not in knobs else None
    TM, TN = knobs.get("thread_tile", wide or ((6, 2 * lanes) if lanes else (4, 32)))
    TM, TN = min(TM, M), min(TN, N)
    batch = [a.name for a in c.spatial[:-2]]
    io, ir = s.split("i", TM, names=("i_o", "i_r"))
    jo, jv = s.split("j", TN, names=("j_o", "j_v"))
    bf = None
    if batch:
        bf = _fuse_all(s, batch, "batch")
        s.reorder(bf, jo, io, "k", ir, jv)
    else:
        s.reorder(jo, io, "k", ir, jv)
    tiny = c_extent(c, batch) * M * N * K < SMALL_MATMUL_MACS
    panel_bytes = K * TN * (8 if acc_dt in ("f64", "i64") else 4)   # the packed B panel (f64: 6x32 wide tiles)
    packed = len(c.operands) == 2 and knobs.get("shared", True) and panel_bytes <= 4 << 20
    par = None
    if not tiny:   # a team per (batch, j tile) costs more than a tiny product (q @ k.T of one head)
        # the outermost loop with enough iterations goes across threads, so a call opens one
        # parallel region, not one per (batch, j panel): a region costs 2-60 µs here (waking a
        # sleeping worker), and a 256x512 @ 512x1536 product has 96 panels of ~10 µs each. Inside
        # such a loop each thread packs its own B panel on its own stack: at most PANEL_STACK_BYTES.
        private_ok = not packed or panel_bytes <= PANEL_STACK_BYTES
        if bf is not None and c_extent(c, batch) >= 2 and private_ok:
            par = bf
        elif -(-N // TN) >= PARALLEL_PANELS and private_ok:
            par = jo
        else:
            par = io
        s.parallel(par)
    if packed:
        s.cache_read(c.operands[1], "local", at=jo)
    s.cache_write("local", at=io)
    s.unroll(ir)
    s.vectorize(jv, 64 if wide else None)
    where = ("one thread (under 2 M multiply-adds)" if tiny else
             "batch items across OpenMP threads" if par == bf else
             "B column panels across OpenMP threads" if par == jo else "row tiles across OpenMP threads")
    s.notes.append(f"matmul: B panel of {TN} columns packed contiguously, {TM}x{TN} register tile of "
                   f"accumulators" + (" in 64-byte (AVX-512) vectors" if wide else "") + f", {where}")
    return s


# The large-matmul register tile in 64-byte vectors (AVX-512: 32 zmm registers): (rows, vectors per row)
# with 24 accumulators, leaving room for the B row's vectors and the broadcast A value (6 x 4 + 4 + 1 or
# 12 x 2 + 2 + 1 = 29 or 27 registers, the shapes of the BLIS AVX-512 micro-kernels), widest first.
WIDE_MATMUL_TILES = ((6, 4), (12, 2))


def _wide_matmul_tile(acc_dt: str, N: int) -> tuple[int, int] | None:
    """(TM, TN) of a register tile in 64-byte vectors for a large matmul accumulating in `acc_dt` with N
    columns, or None to keep 32-byte vectors: on hosts whose widest vector is 32 bytes, for dtypes other
    than f32/f64, and when no wide tile's width divides N (a partial column tile would leave the
    micro-kernel for plain loops)."""
    if acc_dt not in ("f32", "f64") or native_vector_bytes() != 64:
        return None
    w = 64 // (4 if acc_dt == "f32" else 8)
    return next(((tm, v * w) for tm, v in WIDE_MATMUL_TILES if N % (v * w) == 0), None)


# Below this many multiply-adds a matmul runs on one thread: an OpenMP fork/join costs about as much
# as the whole product (16x64 @ 64x192 is 0.2 M: ~5 us serial, ~35 us with a team of two here).
SMALL_MATMUL_MACS = 1 << 21
PARALLEL_MATMUL_MACS = 1 << 20
# From this many B column panels a large matmul splits the panels (not the row tiles) across threads:
# one parallel region per call, and a few panels per thread even on 8 cores.
PARALLEL_PANELS = 16
# A B panel packed inside a parallel loop lives on a worker thread's stack (libgomp's default is the
# process's stack limit, often 8 MB, but OMP_STACKSIZE may set less): bigger panels keep the row split.
PANEL_STACK_BYTES = 1 << 20
# The row-streaming tile (TM rows x all N columns of accumulators) must stay in L1 with room for B's row.
STREAM_TILE_BYTES = 16 << 10
# Rows of C per pass over B in row streaming (fewer when the tile would not fit STREAM_TILE_BYTES): B is
# read from L1/L2 once per pass, and 16 rows x N accumulators of up to 16 KB stay in L1.
STREAM_ROWS = 16
# k steps per accumulator load/store in row streaming (products with M > 1): each SIMD group of the tile
# is loaded once, takes STREAM_K_UNROLL multiply-adds in k order (the same roundings), and is stored
# once. With one store per multiply-add (STREAM_K_UNROLL = 1) the stores limited the loop, and loads
# of A and B that happened to share 4 KB offsets with recent tile stores waited on them: the same
# kernel ran 2.7 or 4.6 µs depending on where the buffers lay (16x64 @ 64x192, measured).
STREAM_K_UNROLL = 4


def _unit_stride(e: L.Expr, var: str) -> bool:
    """`e` is var, or var plus terms without var (q[i, h * 16 + j]): consecutive var, consecutive addresses."""
    if isinstance(e, L.Var):
        return e.name == var
    if isinstance(e, L.BinOp) and e.op == "+":
        has = [any(isinstance(x, L.Var) and x.name == var for x in L.walk_expr(side)) for side in (e.a, e.b)]
        if has == [True, False]:
            return _unit_stride(e.a, var)
        if has == [False, True]:
            return _unit_stride(e.b, var)
    return False


def _cpu_small_matmul(c, M: int, N: int, K: int) -> Schedule | None:
    """Row streaming for small products whose B rows are contiguous in j (x @ w, not x @ w.T):

        for i_o in range(M / TM):                 # serial: no OpenMP team for ~microseconds of work
          acc[TM, N] = 0                          # TM (<= 16) rows of C, in L1
          for k_o in range(K / 4):
            for i_r in unrolled(TM):
              for j_o in range(N / 16):
                for j_v in vectorized(16):
                  for k_i in unrolled(4):         # one load and one store of acc per 4 multiply-adds
                    acc[i_r, j] += a[i, k] * b[k, j]   # B streamed row by row, each row used TM times
          out[i, :] = epilogue(acc[i_r, :])

    No packing (each B element is used M times at most, so a copy costs as much as the product),
    no tail tiles for M < 6 or N < 16 (the tile is clamped to the problem). None when it does not apply.
    """
    batch = c_extent(c, [a.name for a in c.spatial[:-2]])
    if batch * M * N * K >= SMALL_MATMUL_MACS or len(c.accums) != 1:
        return None
    acc_dt = c.accums[0].buffer.dtype
    lanes = CPU_VECTOR_LANES.get(acc_dt)
    if lanes is None:
        return None
    b_loads = [x for x in L.walk_expr(c.accums[0].value) if isinstance(x, L.Load)
               and any(isinstance(v, L.Var) and v.name == "j" for i in x.indices for v in L.walk_expr(i))]
    if not b_loads or not all(x.indices and _unit_stride(x.indices[-1], "j") for x in b_loads):
        return None
    itemsize = 8 if acc_dt in ("f64", "i64") else 4
    TM = min(M, STREAM_ROWS)
    while TM > 1 and TM * N * itemsize > STREAM_TILE_BYTES:
        TM //= 2
    if TM * N * itemsize > STREAM_TILE_BYTES:
        return None
    TN = min(N, 2 * lanes)
    macs = batch * M * N * K
    # from 1 M multiply-adds (a 1x768 @ 768x2304 GEMV: ~70 us) a team of threads pays: column chunks
    chunks = next((p for p in (8, 4, 2) if N % (p * TN) == 0), 1) if macs >= PARALLEL_MATMUL_MACS else 1
    s = Schedule()
    jp = None
    if chunks > 1:
        jp, jrest = s.split("j", N // chunks, names=("j_p", "j_in"))
        jo, jv = s.split(jrest, TN, names=("j_o", "j_v"))
    else:
        jo, jv = s.split("j", TN, names=("j_o", "j_v"))
    io, ir = s.split("i", TM, names=("i_o", "i_r"))
    batch_axes = [a.name for a in c.spatial[:-2]]
    # a GEMV (M = 1) streams B from memory once: its tile stores are not what limits it; an operand
    # that selects along k (a concat of heads, hstack(heads) @ w) keeps k whole, so tiling can split
    # k at the selects' bounds (passes/index_split.py) into select-free loops
    selects = any(isinstance(x, L.Select) for x in L.walk_expr(c.accums[0].value))
    ku = STREAM_K_UNROLL if M > 1 and not selects and K % STREAM_K_UNROLL == 0 and K > STREAM_K_UNROLL else 1
    if ku > 1:
        ko, ki = s.split("k", ku, names=("k_o", "k_i"))
        order = [io, ko, ir, jo, jv, ki]
    else:
        order = [io, "k", ir, jo, jv]
    if jp:
        order = [jp] + order
    if batch_axes:
        order = [_fuse_all(s, batch_axes, "batch")] + order
    s.reorder(*order)
    if jp:
        s.parallel(jp)
    s.cache_write("local", at=io)
    s.unroll(ir)
    s.vectorize(jv)
    if ku > 1:
        s.unroll(ki)
    cols = N // chunks
    s.notes.append(f"small matmul ({macs} multiply-adds < {SMALL_MATMUL_MACS}): "
                   + (f"{chunks} column chunks across OpenMP threads, " if jp else "one thread (no OpenMP team), ")
                   + f"B streamed row by row into a {TM}x{cols} accumulator tile in L1, {TN} columns per SIMD "
                   f"step, no packing")
    return s


def native_vector_bytes() -> int:
    """Bytes of the widest float register the C compiler targets on this machine (64 with AVX-512, else 32):
    Target.host_vector_bytes, which asks the CPU backend's compiler probe."""
    return get_target("cpu").host_vector_bytes()


# a conv register tile of 64-byte vectors: at most this many accumulators (AVX-512 has 32 registers:
# the rest hold the weight vectors and the broadcast input value) and this many output columns
CONV_WIDE_ACCUMULATORS = 24
CONV_MAX_COLUMNS = 8


def _cpu_conv(c, knobs) -> Schedule:
    """Direct convolution on the CPU, scheduled like a matmul over (output columns) x (output channels)
    with (kh, kw, ic) as the reduction: output rows (oh) across OpenMP threads; inside a row a register
    tile of TW output columns x TK output channels accumulates over (kh, kw, ic): each weight vector
    w[kh, kw, ic, oc:oc+TK] is loaded once and reused for TW pixels, each input value is broadcast across
    the TK channels.

    f32 on a machine with AVX-512: 64-byte vectors and a tile of up to 24 accumulators (TK = 64 channels =
    4 vectors, TW = 6 columns: 24 FMAs per 4 weight loads and 6 broadcasts, the shape of a BLIS AVX-512
    micro-kernel); otherwise 32-byte vectors and a 4 x 16 tile. Depthwise (one input channel per output
    channel) runs the kw taps unrolled inside a micro-kernel over kh. partition(oh) and partition(ow_o) split the
    rows and column tiles where the padding tests (and a partial last column tile's guard) are decided:
    the interior runs without them."""
    s = Schedule()
    N, Ho = c.axis("n").extent, c.axis("oh").extent
    K, Wo = c.axis("oc").extent, c.axis("ow").extent
    acc_dt = c.accums[0].buffer.dtype if c.accums else "f32"
    lanes = CPU_VECTOR_LANES.get(acc_dt, 4)
    wide = 16 if acc_dt == "f32" and native_vector_bytes() == 64 else 0    # f32 lanes of a 64-byte vector
    TW, TK = 4, 2 * lanes
    if "thread_tile" in knobs:
        TW, TK = knobs["thread_tile"]
    elif wide and any(K % t == 0 for t in (4 * wide, 2 * wide, wide)):
        TK = next(t for t in (4 * wide, 2 * wide, wide) if K % t == 0)
        TW = min(CONV_MAX_COLUMNS, CONV_WIDE_ACCUMULATORS // (TK // wide))
    TW, TK = min(TW, Wo), min(TK, K)
    vector_bytes = 64 if wide and TK % wide == 0 else None
    wo, wi = s.split("ow", TW, names=("ow_o", "ow_i"))
    ko, kv = s.split("oc", TK, names=("oc_o", "oc_v"))
    S = c.axis("kw").extent
    vectors = -(-TK // (vector_bytes // 4 if vector_bytes else lanes))
    # one input channel per output channel (depthwise): the ic loop has one iteration, so the micro-kernel
    # runs over kh with the kw taps unrolled inside (one call per tile, not one per tap). Unrolling kh too
    # was 1.25x faster again (dw3x3_32), but made gcc take 5 s on the border pieces' 72 tested copies
    taps_inside = c.axis("ic").extent == 1 and S * TW * vectors <= MAX_VECTOR_STMTS
    if taps_inside:
        s.reorder("n", "oh", wo, ko, "ic", "kh", "kw", wi, kv)
    else:
        s.reorder("n", "oh", wo, ko, "kh", "kw", "ic", wi, kv)
    if Ho > 1:
        s.parallel("oh")
    elif N > 1:
        s.parallel("n")
    s.cache_write("local", at=ko)
    s.unroll(wi)
    if taps_inside:
        s.unroll("kw")
    s.vectorize(kv, vector_bytes)
    tested = any(isinstance(x, L.Select) for a in c.accums for x in L.walk_expr(a.value))
    if tested:
        s.partition("oh")
    if tested or Wo % TW:
        s.partition(wo)
    s.notes.append(f"conv2d: output rows across OpenMP threads, a {TW}x{TK} register tile (columns x output "
                   f"channels) accumulating over (kh, kw, ic), SIMD over output channels"
                   + (" in 64-byte (AVX-512) vectors" if vector_bytes else "")
                   + ("; rows and column tiles partitioned: the interior runs without the padding tests"
                      if tested else ""))
    return s
