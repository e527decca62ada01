"""Default schedules for CUDA (and the simulator, which runs the same loop IR): one thread per element
for elementwise kernels, a block per row (with a thread-bound allreduce) for reductions, shared-memory
tiled matmuls with a per-thread register tile (double-buffered when it fits), f16 matmuls on tensor
cores, direct convolution with a block per tile of output pixels x channels.

>>> import numpy as np, explorer
>>> c = explorer.compile(lambda a: np.exp(a), np.ones(1000, np.float32), target="sim", stop_after="tiled")
>>> print("\\n".join(c.stage("tiled").ir.kernels[0].schedule))
split(i0, 256) -> blk, thr
bind(blk, blockIdx.x)
bind(thr, threadIdx.x)
"""
from __future__ import annotations

from typing import Any

from .. import loopir as L
from ..errors import ScheduleError
from ..schedule import MAX_SHARED_BYTES, MAX_THREADS_PER_BLOCK, WARP_SIZE, Schedule, tc_operands
from . import c_extent, fuse_all as _fuse_all


def default_schedule(compute, knobs: dict[str, Any]) -> Schedule:
    """The CUDA default Schedule for one compute definition (knobs already checked)."""
    if getattr(compute, "pattern", "") == "conv2d":
        return _cuda_conv(compute, knobs)
    return _cuda_default(compute, knobs)


def _bind_threads(s: "Schedule", axis: str, threads: int) -> None:
    """One thread per element of `axis`: split it into blocks of `threads` and bind (blk, thr)."""
    blk, thr = s.split(axis, threads, names=("blk", "thr"))
    s.bind(blk, "blockIdx.x")
    s.bind(thr, "threadIdx.x")


def _pow2_at_most(n: int, cap: int) -> int:
    p = 1
    while p * 2 <= min(n, cap):
        p *= 2
    return p


def _cuda_default(c, knobs) -> Schedule:
    s = Schedule()
    sp = [a.name for a in c.spatial]
    rd = [a.name for a in c.reduce]
    if c.kind == "elementwise":
        f = _fuse_all(s, sp, "n")
        if f is None:
            return s
        n = c_extent(c, sp)
        vec = knobs.get("vector", 4 if n % 4 == 0 and n >= 1024 else 1)
        threads = knobs.get("threads", 256)
        if vec > 1 and n % vec:
            # one global vector knob serves every elementwise kernel of the program (no masked tail is
            # generated for vector loads): clamp it for this kernel to the largest divisor of its size
            asked, vec = vec, max(d for d in range(1, vec + 1) if n % d == 0)
            s.notes.append(f"vector={asked} clamped to {vec} for this kernel's {n} elements (a divisor of it)")
        if vec > 1:
            f, fv = s.split(f, vec, names=("n_o", "n_v"))
            (s.unroll if knobs.get("unroll", True) else s.vectorize)(fv)
        m = -(-n // vec)
        threads = min(threads, _pow2_at_most(max(m, 1), 1024)) if "threads" not in knobs else threads
        if threads > MAX_THREADS_PER_BLOCK:
            raise ScheduleError(f"schedule of {c.name}: threads={threads} is over the CUDA limit of "
                                f"{MAX_THREADS_PER_BLOCK} threads per block")
        _bind_threads(s, f, min(threads, m) if m >= 1 else 1)
        s.notes.append(f"elementwise: one thread per {vec} element(s), {threads} threads per block")
        return s
    if c.kind == "reduce":
        o = _fuse_all(s, sp, "row")
        r = _fuse_all(s, rd, "red")
        if r is None:
            # no reduce loop (np.sum of a 0-d array, axis=()): each output element is one input element,
            # so schedule the rows as an elementwise kernel, one thread per row
            if o is not None:
                O = c_extent(c, sp)
                t = min(knobs.get("threads", 256), _pow2_at_most(O, 1024))
                _bind_threads(s, o, t)
            s.notes.append("reduction over no axes (nothing to combine): one thread per output element")
            return s
        R = c_extent(c, rd)
        threads = knobs.get("threads", max(32, min(256, _pow2_at_most(R, 256) if R >= 32 else 32)))
        if threads > MAX_THREADS_PER_BLOCK:
            raise ScheduleError(f"schedule of {c.name}: threads={threads} is over the CUDA limit of "
                                f"{MAX_THREADS_PER_BLOCK} threads per block")
        if o is not None:
            s.bind(o, "blockIdx.x")
        if threads > R:
            threads = R
        ro, rt = s.split(r, threads, names=("red_o", "red_t"))
        s.bind(rt, "threadIdx.x")
        s.notes.append(f"reduction: one block per row, {threads} threads stride over the row, "
                       f"then a warp-shuffle/shared-memory tree (allreduce)")
        return s
    if c.kind == "opaque":
        o = _fuse_all(s, sp, "row")
        if o is not None:
            O = c_extent(c, sp)
            t = min(knobs.get("threads", 128), O)
            _bind_threads(s, o, t)
        s.notes.append("scan: one thread per row, serial along the scan axis (opaque: no fusion, no tiling)")
        return s
    return _cuda_matmul(c, knobs)


def _cuda_conv(c, knobs) -> Schedule:
    """Convolution as an implicit GEMM: a block owns TP output pixels x TK output channels (the GEMM's
    M x N tile), one thread per output; the reduction (kh, kw, ic) is the GEMM's K, walked in steps of
    TC input channels per tap. Per step the block stages in shared memory the weight tile
    w[kh, kw, ic step, oc tile] (TC x TK) and the input tile its pixels read (TP x TC, gathered through
    the window with the padding as zeros: the im2col rows of the block, never materialised in global
    memory), so each block reads every input value and weight it needs once per tap from global memory
    instead of once per thread. Double-buffered (the copy of step k+1 overlaps the compute on step k)
    when two slots fit. shared=False gives the direct schedule (each thread reads global memory);
    threadIdx.x runs along the channels so a warp reads consecutive weights in one transaction."""
    s = Schedule()
    K = c.axis("oc").extent
    Cg = c.axis("ic").extent
    P = c_extent(c, ["n", "oh", "ow"])
    shared = knobs.get("shared", True) and len(c.operands) == 2
    # a register tile of RP pixels x RK channels per thread (cache_write) once the layer is big enough to
    # fill it: each value read from shared memory then feeds RK (or RP) multiply-adds, and a block covers
    # a larger output tile with the same threads (fewer global reads of the other operand, fewer barriers)
    RP, RK = knobs.get("thread_tile", (2, 4) if shared and K >= 32 and P >= 32 else (1, 1))
    if (RP, RK) != (1, 1) and not shared:
        raise ScheduleError(f"schedule of {c.name}: thread_tile={(RP, RK)} (a register tile) needs the conv "
                            f"operands staged in shared memory; drop thread_tile or shared=False")
    TK = min(knobs.get("conv_tile_k", 32), _pow2_at_most(K, 32 if RK == 1 else 64))
    TP = min(knobs.get("conv_tile_p", max(1, 256 // TK) if RP * RK == 1 else 32), _pow2_at_most(P, 256))
    RP, RK = min(RP, TP), min(RK, TK)
    if TP % RP or TK % RK:
        raise ScheduleError(f"schedule of {c.name}: thread_tile {(RP, RK)} does not divide the block tile "
                            f"conv_tile_p={TP} x conv_tile_k={TK}; use a thread_tile that divides it")
    threads = (TP // RP) * (TK // RK)
    if threads > 1024:
        tile = f" / thread_tile {RP}x{RK}" if RP * RK > 1 else ""
        raise ScheduleError(f"conv2d schedule: conv_tile_p {TP} x conv_tile_k {TK}{tile} = {threads} threads per "
                            f"block; CUDA allows at most 1024: lower conv_tile_p or conv_tile_k")
    if knobs.get("double_buffer") and not shared:
        raise ScheduleError(f"schedule of {c.name}: double_buffer=True needs the conv operands staged in shared "
                            f"memory, but " + ("shared=False" if knobs.get("shared") is False else
                                               "the input or weight is computed (a fused prologue)")
                            + "; drop double_buffer")
    TC = min(knobs.get("conv_tile_c", 16), Cg)
    pix = s.fuse("n", "oh", "ow", name="pix")
    po, pi = s.split(pix, TP, names=("pix_o", "pix_i"))
    ko, ki = s.split("oc", TK, names=("oc_o", "oc_i"))
    s.bind(po, "blockIdx.x")
    s.bind(ko, "blockIdx.y")
    pt, pr = s.split(pi, RP, names=("pix_t", "pix_r")) if RP > 1 else (pi, None)
    kt, kr = s.split(ki, RK, names=("oc_t", "oc_r")) if RK > 1 else (ki, None)
    s.bind(pt, "threadIdx.y")
    s.bind(kt, "threadIdx.x")
    if not shared:
        s.reorder(po, ko, pt, kt, "kh", "kw", "ic")
        s.notes.append(f"conv2d: direct, {TP} output pixels x {TK} output channels per block, one thread per "
                       f"output accumulating over (kh, kw, ic) from global memory; padding is a bounds select "
                       f"on the input load" + ("" if knobs.get("shared") is False else
                                               " (input or weight computed by a fused prologue: not staged)"))
        return s
    co, ci = s.split("ic", TC, names=("ic_o", "ic_i"))
    regs = [a for a in (pr, kr) if a is not None]
    s.reorder(po, ko, pt, kt, "kh", "kw", co, ci, *regs)
    if regs:
        s.cache_write("local", at=kt)
        for a in (ci, *regs):
            s.unroll(a)
    x_name, w_name = c.operands
    s.cache_read(x_name, "shared", at=co)
    s.cache_read(w_name, "shared", at=co)
    itemsize = 8 if c.accums and c.accums[0].buffer.dtype == "f64" else 4
    tiles = (TP * TC + TC * TK) * itemsize
    steps = c.axis("kh").extent * c.axis("kw").extent * -(-Cg // TC)
    asked = knobs.get("double_buffer")
    if asked and 2 * tiles > MAX_SHARED_BYTES:
        raise ScheduleError(f"schedule of {c.name}: double_buffer=True needs 2 x {tiles} = {2 * tiles} bytes of "
                            f"shared memory, over the {MAX_SHARED_BYTES}-byte (48 KiB) static limit; lower "
                            f"conv_tile_c, conv_tile_p or conv_tile_k, or double_buffer=False")
    double = asked if asked is not None else (2 * tiles <= MAX_SHARED_BYTES and -(-Cg // TC) > 1)
    if double:
        s.double_buffer(x_name)
        s.double_buffer(w_name)
    s.notes.append(f"conv2d: implicit GEMM, {TP} output pixels x {TK} output channels per block ({threads} "
                   f"threads, " + (f"a {RP}x{RK} register tile each" if regs else "one output each") + f"); {steps} reduction steps of {TC} input channels per (kh, kw) tap, each staging the "
                   f"block's {TP}x{TC} input tile (gathered through the window, padding as zeros) and "
                   f"{TC}x{TK} weight tile in shared memory" + (" (double-buffered)" if double else ""))
    return s


def _tc_tile(n: int) -> int:
    """Largest of 64, 32, 16 that is at most n (a block tile a multiple of the 16-wide fragment)."""
    for t in (64, 32, 16):
        if t <= n:
            return t
    return 16


def _cuda_tensor_core(c, knobs, operands: tuple[str, str]) -> Schedule:
    """f16 matmul on tensor cores: a BM x BN block tile of warps, each computing a WM x WN warp tile
    as (WM/16) x (WN/16) WMMA accumulator fragments; A and B tiles staged in shared memory (double-
    buffered when it fits); the accumulators go through a shared f32 tile so the fused epilogue runs
    per element with bounds guards."""
    s = Schedule()
    M, N, K = c.axis("i").extent, c.axis("j").extent, c.axis("k").extent
    where = f"schedule of {c.name} (tensor_core)"
    if "tile" in knobs:
        BM, BN, BK = knobs["tile"]
        if BM > M or BN > N or BK > K:   # a global knob: clamp it for this kernel (multiples of 16)
            asked = (BM, BN, BK)
            BM, BN, BK = (v if v <= ext else _tc_tile(ext) for v, ext in ((BM, M), (BN, N), (BK, K)))
            s.notes.append(f"tile {asked} clamped to ({BM}, {BN}, {BK}) for this kernel's extents ({M}, {N}, {K})")
    else:
        BM, BN, BK = _tc_tile(M), _tc_tile(N), min(_tc_tile(K), 32)
    for name, v, ext in (("BM", BM, M), ("BN", BN, N), ("BK", BK, K)):
        if v % 16:
            raise ScheduleError(f"{where}: tile {name}={v} is not a multiple of 16, the WMMA fragment size "
                                f"(16x16x16); use e.g. tile=(64, 64, 32)")
        if v > ext:
            raise ScheduleError(f"{where}: tile {name}={v} is larger than the axis extent {ext}; tensor cores need "
                                f"M, N, K >= 16 and a tile <= the extent (or tensor_core=False)")
    WM, WN = (32 if BM % 32 == 0 else 16), (32 if BN % 32 == 0 else 16)
    warps = (BM // WM) * (BN // WN)
    if warps * WARP_SIZE > MAX_THREADS_PER_BLOCK:
        raise ScheduleError(f"{where}: tile ({BM}, {BN}) needs {warps} warps = {warps * WARP_SIZE} threads per "
                            f"block, over the CUDA limit of {MAX_THREADS_PER_BLOCK}; use a smaller tile")
    ab = (BM * BK + BK * BN) * 2          # f16 tiles
    ctile = BM * BN * 4                   # f32 accumulator tile for the epilogue
    if ab + ctile > MAX_SHARED_BYTES:
        raise ScheduleError(f"{where}: tile ({BM}, {BN}, {BK}) needs {ab} bytes of f16 operand tiles plus a "
                            f"{ctile}-byte f32 epilogue tile in shared memory, over the {MAX_SHARED_BYTES}-byte "
                            f"(48 KiB) static limit; use a smaller tile")
    asked = knobs.get("double_buffer")
    if asked and 2 * ab + ctile > MAX_SHARED_BYTES:
        raise ScheduleError(f"{where}: double_buffer=True needs {2 * ab + ctile} bytes of shared memory, over the "
                            f"{MAX_SHARED_BYTES}-byte (48 KiB) static limit; use a smaller tile or "
                            f"double_buffer=False")
    double = asked if asked is not None else (2 * ab + ctile <= MAX_SHARED_BYTES and K > BK)
    batch = [a.name for a in c.spatial[:-2]]
    io, ii = s.split("i", BM, names=("i_b", "i_in"))
    iw, if_ = s.split(ii, WM, names=("i_w", "i_f"))
    jo, ji = s.split("j", BN, names=("j_b", "j_in"))
    jw, jf = s.split(ji, WN, names=("j_w", "j_f"))
    ko, ki = s.split("k", BK, names=("k_o", "k_i"))
    bz = _fuse_all(s, batch, "batch") if batch else None
    s.reorder(*([bz] if bz else []), io, jo, iw, jw, ko, if_, jf, ki)
    if bz:
        s.bind(bz, "blockIdx.z")
    s.bind(io, "blockIdx.y")
    s.bind(jo, "blockIdx.x")
    s.bind(iw, "threadIdx.z")
    s.bind(jw, "threadIdx.y")
    s.cache_read(operands[0], "shared", at=ko)
    s.cache_read(operands[1], "shared", at=ko)
    if double:
        s.double_buffer(operands[0])
        s.double_buffer(operands[1])
    s.tensorize(if_, "wmma_16x16x16")
    s.notes.append(f"matmul on tensor cores: {BM}x{BN} block tile of {warps} warps, each a {WM}x{WN} tile of "
                   f"{(WM // 16) * (WN // 16)} WMMA 16x16x16 f32 accumulators; k step {BK} staged in shared memory"
                   + (" (double-buffered)" if double else "")
                   + "; the epilogue reads the accumulators back from a shared f32 tile")
    return s


def _cuda_matmul(c, knobs) -> Schedule:
    tc = knobs.get("tensor_core")
    # f16 operands (read through an f32 cast) are what the tensor-core path is for
    f16 = bool(c.accums) and any(isinstance(x, L.Load) and x.buffer.dtype == "f16"
                                 for x in L.walk_expr(c.accums[0].value))
    tc_note = "tensor cores off: tensor_core=False" if f16 else ""
    M, N, K = c.axis("i").extent, c.axis("j").extent, c.axis("k").extent
    if tc is not False:
        operands, why = tc_operands(c)
        if operands is not None and min(M, N, K) < 16:
            operands, why = None, f"M, N, K = {M}, {N}, {K}: each must be >= 16 (one 16x16x16 fragment)"
        if operands is not None and knobs.get("shared") is False:
            operands, why = None, "shared=False, but WMMA fragments are loaded from shared-memory tiles"
        if operands is not None and "tile" in knobs and any(v % 16 for v in knobs["tile"]) and tc is None:
            operands, why = None, f"tile {knobs['tile']} is not a multiple of 16"
        if operands is not None:
            return _cuda_tensor_core(c, knobs, operands)
        if tc:
            raise ScheduleError(f"schedule of {c.name}: tensor_core=True, but {why}; use tensor_core=False")
        tc_note = f"tensor cores off: {why}" if f16 else ""
    s = Schedule()
    BM, BN, BK = knobs.get("tile", (64, 64, 16))
    TM, TN = knobs.get("thread_tile", (4, 4))
    user_tile = "tile" in knobs
    if not user_tile:   # shrink the default tile for small problems, keep powers of two
        BM, BN, BK = min(BM, _pow2_at_most(M, 64)), min(BN, _pow2_at_most(N, 64)), min(BK, _pow2_at_most(K, 16))
        TM, TN = min(TM, BM), min(TN, BN)
    elif BM > M or BN > N or BK > K:
        # one global tile knob serves every matmul of the program: clamp it for this kernel's smaller axes
        asked = (BM, BN, BK)
        BM, BN, BK = (v if v <= ext else _pow2_at_most(ext, v) for v, ext in ((BM, M), (BN, N), (BK, K)))
        TM, TN = min(TM, BM), min(TN, BN)
        s.notes.append(f"tile {asked} clamped to ({BM}, {BN}, {BK}) for this kernel's extents ({M}, {N}, {K})")
    for name, big, small in (("BM", BM, TM), ("BN", BN, TN)):
        if big % small:
            raise ScheduleError(f"schedule of {c.name}: thread tile {small} does not divide block tile {name}={big}")
    threads = (BM // TM) * (BN // TN)
    if threads > MAX_THREADS_PER_BLOCK:
        raise ScheduleError(f"schedule of {c.name}: tile ({BM}, {BN}) with thread tile ({TM}, {TN}) needs "
                            f"{threads} threads per block, over the CUDA limit of {MAX_THREADS_PER_BLOCK}")
    use_shared = knobs.get("shared", True) and len(c.operands) == 2
    shared = (BM * BK + BK * BN) * 4 if use_shared else 0
    if shared > MAX_SHARED_BYTES:
        raise ScheduleError(f"schedule of {c.name}: tile ({BM}, {BN}, {BK}) stages {shared} bytes of shared "
                            f"memory, over the {MAX_SHARED_BYTES}-byte (48 KiB) static limit; use a smaller BK or tile")
    # double buffering needs two slots per tile; by default only when they fit and there is a next k tile
    double, db_note = False, ""
    if knobs.get("double_buffer") and knobs.get("shared") is False:
        raise ScheduleError(f"schedule of {c.name}: double_buffer=True needs the operands staged in shared memory, "
                            f"but shared=False; drop one of the two knobs")
    if use_shared:
        asked = knobs.get("double_buffer")
        if asked and 2 * shared > MAX_SHARED_BYTES:
            raise ScheduleError(f"schedule of {c.name}: double_buffer=True needs 2 x {shared} = {2 * shared} bytes "
                                f"of shared memory, over the {MAX_SHARED_BYTES}-byte (48 KiB) static limit; use "
                                f"a smaller tile or BK, or double_buffer=False")
        if asked is None:
            if 2 * shared > MAX_SHARED_BYTES:
                db_note = (f"double buffering off: two slots would need {2 * shared} bytes of shared memory, "
                           f"over 48 KiB")
            elif K <= BK:
                db_note = "double buffering off: a single k step has no next tile to prefetch"
            else:
                double = True
        else:
            double = bool(asked)
    batch = [a.name for a in c.spatial[:-2]]
    io, ii = s.split("i", BM, names=("i_b", "i_in"))
    it, ir = s.split(ii, TM, names=("i_t", "i_r"))
    jo, ji = s.split("j", BN, names=("j_b", "j_in"))
    jt, jr = s.split(ji, TN, names=("j_t", "j_r"))
    ko, kin = s.split("k", BK, names=("k_o", "k_i"))
    bz = _fuse_all(s, batch, "batch") if batch else None
    order = ([bz] if bz else []) + [io, jo, it, jt, ko, kin, ir, jr]
    s.reorder(*order)
    if bz:
        s.bind(bz, "blockIdx.z")
    s.bind(io, "blockIdx.y")
    s.bind(jo, "blockIdx.x")
    s.bind(it, "threadIdx.y")
    s.bind(jt, "threadIdx.x")
    s.cache_write("local", at=jt)
    if use_shared:
        s.cache_read(c.operands[0], "shared", at=ko)
        s.cache_read(c.operands[1], "shared", at=ko)
        if double:
            s.double_buffer(c.operands[0])
            s.double_buffer(c.operands[1])
    if knobs.get("unroll", True):
        s.unroll(kin)
        s.unroll(ir)
        s.unroll(jr)
    s.notes.append(f"matmul: {BM}x{BN} block tile, {TM}x{TN} register tile per thread ({threads} threads), "
                   f"k step {BK}" + (", operands staged in shared memory" if use_shared else "")
                   + (" (double-buffered: tile k+1 is copied while tile k is used, one barrier per k step)"
                      if double else ""))
    if db_note:
        s.notes.append(db_note)
    if tc_note:
        s.notes.append(tc_note)
    return s
