"""tile: apply a Schedule to every kernel's compute definition and generate its loop nest.

Loop generation follows TVM's ScheduleOps: block-bound loops outermost, then
thread-bound loops, then the remaining leaves in schedule order; splits that do
not divide get bounds guards; cache_write keeps a register tile of accumulators;
cache_read stages an operand tile in shared memory (cooperative copy between two
barriers) or a local buffer; double_buffer gives a shared tile two slots (prologue
copies tile 0, each step prefetches tile k+1 into the other slot, one barrier per
step); a thread-bound reduction axis ends in an allreduce; tensorize turns a warp's tile of an f16
matmul into WMMA fragment statements (see build_tensorized for the before/after).

Before (lowered, naive):                    After (tiled for CUDA, elementwise):
  for i0 in range(1000):                      # schedule: split(n, 256) -> blk, thr; bind(blk, blockIdx.x); ...
    out0[i0] = exp(x[i0])                     for blk in blockIdx.x(4):
                                                for thr in threadIdx.x(256):
                                                  if blk * 256 + thr < 1000:
                                                    out0[blk * 256 + thr] = exp(x[blk * 256 + thr])

Double buffering (cache_read(a, shared, at=k_o); double_buffer(a)), matmul k loop:
  for k_o in range(E):                        alloc a_shared: f32[2,BM,BK] shared
    a_shared[...] = a[.., k_o * BK + ..]      a_shared[0, ...] = a[.., 0 * BK + ..]     # tile 0 → slot 0
    barrier()                                 barrier()
    acc += a_shared[...] * ...                for k_o in range(E):
    barrier()                                   if k_o + 1 < E:
                                                  a_shared[(k_o + 1) % 2, ...] = a[.., (k_o + 1) * BK + ..]
                                                acc += a_shared[k_o % 2, ...] * ...
                                                barrier()
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from .. import loopir as L
from ..errors import ExplorerError, ScheduleError
from .index_split import split_index_ranges
from .attention import generate_attention
from ..schedule import (WARP_SIZE, AxisState, CacheRead, Leaf, Schedule, _tc_operands, apply,
                        check_knobs, default_schedule)
from ..target import Target, get_target

_KIND_ORDER = {"z": 0, "y": 1, "x": 2}


def tile(program: L.Program, schedule: Any = None, target: "str | Target" = "cuda", examples=None) -> L.Program:
    """Apply `schedule` (None: defaults; dict of knobs; Schedule for a 1-kernel program;
    {kernel name: Schedule}; or callable(compute, target) -> Schedule) for `target` (a Target or its name).

    A target whose schedules do not apply ('reference' interprets the graph with NumPy) keeps every
    kernel's naive loop nest (knobs are still checked for typos), and no GPU schedule can fail it."""
    target = get_target(target)
    if not target.scheduled:
        if isinstance(schedule, dict) and not all(isinstance(v, Schedule) for v in schedule.values()):
            check_knobs(schedule)
        note = f"target {target.name!r} runs NumPy on the graph: schedules do not apply, the naive loops are shown"
        kernels = [generate_kernel(k.meta_dict()["compute"], Schedule(notes=(note,)), target)
                   .replace(group=k.group, ops=k.ops, source_lines=k.source_lines) for k in program.kernels]
        return L.Program(program.name, tuple(kernels), program.inputs, program.outputs, program.temps,
                         constants=program.constants)
    kernels = []
    per_kernel: dict[str, Any] = {}
    knobs: dict[str, Any] = {}
    if isinstance(schedule, Schedule):
        if len(program.kernels) != 1:
            raise ScheduleError(f"one Schedule was given but the program has {len(program.kernels)} kernels "
                                f"({', '.join(k.name for k in program.kernels)}); pass {{kernel name: Schedule}}")
        per_kernel = {program.kernels[0].name: schedule}
    elif isinstance(schedule, dict) and schedule and all(isinstance(v, Schedule) for v in schedule.values()):
        names = {k.name for k in program.kernels}
        bad = [n for n in schedule if n not in names]
        if bad:
            raise ScheduleError(f"schedule for unknown kernel(s) {', '.join(bad)}; kernels are {', '.join(sorted(names))}")
        per_kernel = dict(schedule)
    elif isinstance(schedule, dict):
        knobs = check_knobs(schedule)
    elif schedule is not None and not callable(schedule):
        raise ScheduleError(f"schedule must be None, a dict of knobs, a Schedule or {{kernel: Schedule}}, "
                            f"got {type(schedule).__name__}")
    for k in program.kernels:
        compute = k.meta_dict()["compute"]
        if compute.kind == "custom":
            # the user's source is the schedule: nothing to split, bind or stage
            if k.name in per_kernel and list(per_kernel[k.name]):
                raise ScheduleError(f"kernel {k.name} is a custom kernel ({compute.custom.name}); it takes no "
                                    f"Schedule: its own source decides its loops. Schedule the other kernels")
            kernels.append(generate_kernel(compute, Schedule(), target).replace(
                group=k.group, ops=k.ops, source_lines=k.source_lines))
            continue
        try:
            if compute.kind == "attention":  # its own loop generator: the online-softmax nest
                new = generate_attention(compute, target, knobs)
                kernels.append(new.replace(group=k.group, ops=k.ops, source_lines=k.source_lines))
                continue
            if k.name in per_kernel:
                s = per_kernel[k.name]
            elif callable(schedule) and not isinstance(schedule, (dict, Schedule)):
                # a user's schedule function gets the schedule family ('cpu' | 'cuda'), as before
                s = _call_schedule_fn(schedule, compute, target.schedule_family)
            else:
                s = default_schedule(compute, target, knobs)
            new = generate_kernel(compute, s, target)
        except ScheduleError as e:
            lines = "; ".join(str(x).strip() for x in k.source_lines)
            if not lines or lines in str(e):
                raise
            # name the user's lines this kernel computes, not only its internal buffers
            raise ScheduleError(f"{e} (kernel {k.name} computes: {lines})") from None
        kernels.append(new.replace(group=k.group, ops=k.ops, source_lines=k.source_lines))
    return L.Program(program.name, tuple(kernels), program.inputs, program.outputs, program.temps,
                     constants=program.constants)


def _call_schedule_fn(fn, compute, target: str) -> Schedule:
    """Run a user's schedule function; its failures and wrong return types become ScheduleErrors."""
    name = getattr(fn, "__name__", type(fn).__name__)
    try:
        s = fn(compute, target)
    except ExplorerError:
        raise
    except Exception as e:
        raise ScheduleError(f"the schedule function {name}(compute, target) raised {type(e).__name__}: {e} "
                            f"(kernel {compute.name}, target {target!r})") from e
    if not isinstance(s, Schedule):
        raise ScheduleError(f"the schedule function {name}(compute, target) returned {type(s).__name__}, not an "
                            f"explorer.Schedule, for kernel {compute.name}; return a Schedule (an empty Schedule() "
                            f"keeps the naive loops)")
    return s


def as_loop_target(target: "str | Target") -> Target:
    """The Target whose loops to generate: 'naive' (the lowering's loops) is the unscheduled reference target."""
    return get_target("reference" if target == "naive" else target)


def generate_kernel(compute, schedule: Schedule, target: "str | Target" = "cuda") -> L.Kernel:
    """The loop nest of one compute definition under `schedule` for `target` (a Target, a target name,
    or 'naive': unscheduled loops, as on 'reference')."""
    target = as_loop_target(target)
    if compute.kind == "custom":
        return _custom_kernel(compute)
    if compute.kind == "attention":
        return generate_attention(compute, target)
    operands = tuple(compute.operands)
    if compute.kind == "contraction" and not operands:
        # f16 operands are read through an f32 cast, which lowering does not list; the tensor-core
        # path stages them (the SIMT path keeps reading them from global memory, as before)
        operands = _tc_operands(compute)[0] or ()
    st = apply(schedule, [(a.name, a.extent) for a in compute.spatial], [(a.name, a.extent) for a in compute.reduce],
               buffers=operands, kernel=compute.name)
    gen = _Generator(compute, st, target)
    body = gen.build()
    if target.openmp:
        # loops for a C compiler: peel tails and split at selects so each loop vectorizes
        body = split_index_ranges(partition_tails(body))
    shared = sum(b.nbytes for b in gen.shared_allocs)
    limit = target.max_shared_bytes
    if limit is not None and shared > limit:
        db = f" (double-buffered tiles {', '.join(st.double_buffers)} count twice; double_buffer off halves them)" \
            if st.double_buffers else ""
        raise ScheduleError(f"schedule of {compute.name}: {shared} bytes of shared memory per block, over the "
                            f"{limit}-byte ({limit // 1024} KiB) static limit{db}; use smaller tiles")
    params = tuple(compute.inputs) + tuple(b for b in compute.outputs if b not in compute.inputs)
    seen, uniq = set(), []
    for p in params:
        if p.name not in seen:
            seen.add(p.name)
            uniq.append(p)
    return L.Kernel(compute.name, tuple(uniq), tuple(body), outputs=tuple(b.name for b in compute.outputs),
                    kind=compute.kind, schedule=tuple(str(p) for p in schedule),
                    meta=(("compute", compute), ("notes", tuple(schedule.notes))))


def _custom_kernel(compute) -> L.Kernel:
    """A custom kernel's Kernel: its buffers and one comment (the user's C/CUDA source is the body)."""
    spec = compute.custom
    ins = ", ".join(b.name for b in compute.inputs)
    outs = ", ".join(b.name for b in compute.outputs)
    note = (f"custom kernel {spec.name}({ins}) -> {outs}: cpu runs its c_source, cuda its cuda_source, "
            f"sim and reference its NumPy reference")
    params = tuple(compute.inputs) + tuple(b for b in compute.outputs if b not in compute.inputs)
    return L.Kernel(compute.name, params, (L.Comment(note),), outputs=tuple(b.name for b in compute.outputs),
                    kind="custom", schedule=(), meta=(("compute", compute), ("custom", spec),
                                                      ("notes", ("custom kernel: opaque, the user's source "
                                                                 "is its schedule",))))


class _Generator:
    def __init__(self, c, st: AxisState, target: Target):
        self.c, self.st, self.target = c, st, target
        self.vals = {r: st.value(r) for r in st.roots}
        blocks = sorted(st.bound("blockIdx"), key=lambda l: _KIND_ORDER[l.kind[-1]])
        threads = sorted(st.bound("threadIdx"), key=lambda l: _KIND_ORDER[l.kind[-1]])
        self.blocks, self.threads = blocks, threads
        self.rest = [l for l in st.leaves if l.kind not in L.BOUND_KINDS]
        self.shared_allocs: list[L.Buffer] = []
        # attach loop → [(cache_read, staged buffer, copy statements)]; for a double-buffered tile the
        # third item is a function (tile index expr, slot expr) -> copy statements
        self.staging: dict[str, list[tuple[CacheRead, L.Buffer, Any]]] = {}
        if not target.gpu and (blocks or threads):
            raise ScheduleError(f"schedule of {c.name}: the CPU target cannot bind loops to blockIdx/threadIdx; "
                                f"use parallel/vectorize/unroll")
        self.staged_dims: dict[L.Load, list] = {}
        if st.tensorize is not None:
            where = f"schedule of {c.name}: {st.tensorize}"
            if not target.gpu:
                raise ScheduleError(f"{where}: tensor cores exist only on the CUDA target (and the simulator "
                                    f"that runs its loop IR); the {target.name} target cannot tensorize")
            bound_x = [l.name for l in threads if l.kind == "threadIdx.x"]
            if bound_x or "lane" in st.extents:
                raise ScheduleError(f"{where}: tensorize makes threadIdx.x the 32 lanes of each warp, but "
                                    f"{', '.join(bound_x) or 'an axis named lane'} is bound to it; bind the warp "
                                    f"axes to threadIdx.y / threadIdx.z")
            # the warp's lanes: a thread axis of their own that no loop of the compute has
            self.threads = sorted(threads + [Leaf("lane", WARP_SIZE, False, "threadIdx.x")],
                                  key=lambda l: _KIND_ORDER[l.kind[-1]])

    # -- helpers ---------------------------------------------------------------------
    def sub(self, e: L.Expr) -> L.Expr:
        return L.simplify_expr(L.substitute(e, self.vals))

    def roots_in(self, e: L.Expr) -> set[str]:
        return {x.name for x in L.walk_expr(e) if isinstance(x, L.Var) and x.name in self.vals}

    def guard(self, stmts: list[L.Stmt], roots: set[str], extra: Sequence[L.Expr] = ()) -> list[L.Stmt]:
        conds = list(extra)
        for axis, extent in self.st.guards:
            if self.st.roots_of(axis) & roots:
                conds.append(L.BinOp("<", self.st.value(axis), L.Const(extent)))
        if not conds:
            return stmts
        return [L.If(L.all_of(conds), tuple(stmts))]

    def thread_rank(self) -> tuple[L.Expr, int]:
        """(linear thread id in the block, threadIdx.x fastest; threads per block)."""
        tid: L.Expr = L.Const(0)
        stride = 1
        for t in sorted(self.threads, key=lambda l: -_KIND_ORDER[l.kind[-1]]):
            tid = L.simplify_expr(tid + L.Var(t.name) * stride)
            stride *= t.extent
        return tid, stride

    def loop(self, leaf: Leaf, body: list[L.Stmt]) -> list[L.Stmt]:
        """The For of `leaf` around `body`, with the copies of the tiles staged at it (and, for
        double-buffered tiles, the prologue copying tile 0 before it)."""
        prefix, suffix, before = [], [], []
        staged = self.staging.get(leaf.name, [])
        double = [mk for _, _, mk in staged if callable(mk)]
        for cr, buf, copy in staged:
            if callable(copy):
                continue
            if buf.scope == "shared":
                prefix += copy
            else:
                prefix += [L.Alloc(buf)] + copy
        if any(buf.scope == "shared" and not callable(copy) for _, buf, copy in staged):
            # tile loaded by every thread before use; nobody overwrites it while others still read
            prefix += [L.Barrier()]
            suffix += [L.Barrier()]
        if double:
            # prologue: tile 0 into slot 0, visible to all threads before step 0 reads it
            before = [s for mk in double for s in mk(L.Const(0), L.Const(0))] + [L.Barrier()]
            if leaf.extent > 1:
                # prefetch tile k+1 into the other slot: that slot's last readers (step k-1) are past the
                # barrier ending step k-1, and step k+1 reads it only after the barrier ending step k
                nxt = L.BinOp("+", L.Var(leaf.name), L.Const(1))
                pre = [s for mk in double for s in mk(nxt, L.BinOp("%", nxt, L.Const(2)))]
                prefix = [L.If(L.BinOp("<", nxt, L.Const(leaf.extent)), tuple(pre))] + prefix
            if not suffix:
                suffix = [L.Barrier()]   # the one barrier per step
        kind = leaf.kind if self.target.scheduled else "serial"
        return before + [L.For(L.Var(leaf.name), leaf.extent, tuple(prefix + body + suffix), kind)]

    def nest(self, leaves: Sequence[Leaf], body: list[L.Stmt]) -> list[L.Stmt]:
        for leaf in reversed(list(leaves)):
            body = self.loop(leaf, body)
        return body

    # -- structure ---------------------------------------------------------------------
    def build(self) -> list[L.Stmt]:
        c = self.c
        if c.kind == "elementwise":
            stmts: list[L.Stmt] = []
            for s in c.stores:
                st = L.Store(s.buffer, tuple(self.sub(i) for i in s.indices), self.sub(s.value))
                stmts += self.guard([st], self.roots_in_store(s))
            inner = self.nest(self.rest, stmts)
        elif self.st.tensorize is not None:
            inner = self.build_tensorized()
        elif self.st.cache_write is not None:
            inner = self.build_register_tiled()
        else:
            inner = self.build_reduction()
        for leaf in reversed(self.threads):
            inner = [L.For(L.Var(leaf.name), leaf.extent, tuple(inner), leaf.kind)]
        inner = [L.Alloc(b) for b in self.shared_allocs] + inner
        for leaf in reversed(self.blocks):
            inner = [L.For(L.Var(leaf.name), leaf.extent, tuple(inner), leaf.kind)]
        return inner

    def roots_in_store(self, s) -> set[str]:
        r = set()
        for i in s.indices:
            r |= self.roots_in(i)
        return r | self.roots_in(s.value)

    def combine(self, op: str, acc: L.Expr, v: L.Expr) -> L.Expr:
        e = {"sum": lambda: L.BinOp("+", acc, v), "max": lambda: L.BinOp("max", acc, v),
             "min": lambda: L.BinOp("min", acc, v)}[op]()
        # an f16 accumulator (cumsum, as NumPy) rounds every partial result to half; registers hold float
        return L.Cast("f16", e) if acc.dtype == "f16" else e

    def build_reduction(self) -> list[L.Stmt]:
        c, st = self.c, self.st
        S = [l for l in self.rest if not l.reduce]
        R = [l for l in self.rest if l.reduce]
        names = [l.name for l in self.rest]
        if S and R and max(names.index(l.name) for l in S) > min(names.index(l.name) for l in R):
            raise ScheduleError(f"schedule of {c.name}: a reduction loop ({R[0].name}) is outside a spatial loop "
                                f"({S[-1].name}); add cache_write('local', at=...) to keep a tile of accumulators, "
                                f"or reorder the reduction loops innermost")
        thread_red = [l for l in self.threads if l.reduce]
        if c.kind == "opaque":
            red_leaves = [l for l in st.leaves if l.reduce]
            if len(red_leaves) != 1 or red_leaves[0].name != c.reduce[0].name or red_leaves[0].kind != "serial":
                raise ScheduleError(f"schedule of {c.name}: a scan runs serially along {c.reduce[0].name}; "
                                    f"it cannot be split, bound, vectorized or unrolled")
        self.plan_staging(R, c.accums)
        body: list[L.Stmt] = []
        for phase in sorted({a.phase for a in c.accums}):
            accs = [a for a in c.accums if a.phase == phase]
            for a in accs:
                body += [L.Alloc(a.buffer), L.Store(a.buffer, (), _identity(a.op, a.buffer.dtype))]
            upd: list[L.Stmt] = []
            stashes = [x for x in c.stashes if x.phase == phase]
            if stashes:
                body += [self.stash_comment(x) for x in stashes]
                upd = self.stash_updates(stashes, accs)
            else:
                for a in accs:
                    v = self.staged(a.value)
                    s = L.Store(a.buffer, (), self.combine(a.op, L.Load(a.buffer, ()), self.sub(v)))
                    upd += self.guard([s], self.roots_in(self.unstaged_part(a.value)))
            for s in c.scan_stores:
                upd += self.guard([L.Store(s.buffer, tuple(self.sub(i) for i in s.indices), self.sub(s.value))],
                                  self.roots_in_store(s))
            body += self.nest(R, upd)
            for a in accs:
                for t in thread_red:
                    body.append(L.ThreadAllReduce(a.op, a.buffer, t.kind))
        first_thread = [L.BinOp("==", L.Var(t.name), L.Const(0)) for t in thread_red]
        for s in c.stores:
            st_ = L.Store(s.buffer, tuple(self.sub(i) for i in s.indices), self.sub(s.value))
            body += self.guard([st_], self.roots_in_store(s), first_thread)
        if c.full_stores:
            fs: list[L.Stmt] = []
            for s in c.full_stores:
                st_ = L.Store(s.buffer, tuple(self.sub(i) for i in s.indices), self.sub(s.value))
                fs += self.guard([st_], self.roots_in_store(s))
            body += self.nest(R, fs)
        return self.nest(S, body)

    def stash_comment(self, x) -> L.Comment:
        return L.Comment(f"stash {x.value} in {x.buffer.name}: the final loop reads it back instead of recomputing it")

    def stash_updates(self, stashes, accs) -> list[L.Stmt]:
        """One element of a phase with stashes (lower.stash_shared_values), under one guard:

            out0[i0, r1] = exp(x[i0, r1] - acc2)       # the stash, at the final loop's element
            acc5 = acc5 + out0[i0, r1]                 # accumulators read it back

        The guard is the final loop's (the stash's indices name every axis), and this loop nest is
        nest(R) inside the same block/thread loops as the final loop's, so on CUDA each element is
        stashed and re-read by the same thread in program order: no barrier is needed (the
        ThreadAllReduce between the two loops does not move data between threads' elements).
        """
        stmts: list[L.Stmt] = []
        roots: set[str] = set()
        back: dict[L.Expr, L.Expr] = {}
        for x in stashes:
            stmts.append(L.Store(x.buffer, tuple(self.sub(i) for i in x.indices), self.sub(self.staged(x.value))))
            roots |= {r for i in x.indices for r in self.roots_in(i)} | self.roots_in(self.unstaged_part(x.value))
            back[x.value] = L.Load(x.buffer, x.indices)
        for a in accs:
            v = L.map_expr(a.value, lambda y: back.get(y))
            s = L.Store(a.buffer, (), self.combine(a.op, L.Load(a.buffer, ()), self.sub(self.staged(v))))
            stmts.append(s)
            roots |= self.roots_in(self.unstaged_part(v))
        return self.guard(stmts, roots)

    def build_register_tiled(self) -> list[L.Stmt]:
        c, st = self.c, self.st
        cw = st.cache_write
        if c.kind != "contraction" or len(c.accums) != 1:
            raise ScheduleError(f"schedule of {c.name}: cache_write applies to matmul kernels (a single accumulator); "
                                f"this kernel is {c.kind}")
        at = st.leaf(cw.at)
        if at.kind in L.BOUND_KINDS:
            outer, inside = [], list(self.rest)
        else:
            k = self.rest.index(at)
            outer, inside = self.rest[:k + 1], self.rest[k + 1:]
        if any(l.reduce for l in outer) or any(l.reduce and l.kind in L.BOUND_KINDS for l in st.leaves):
            raise ScheduleError(f"schedule of {c.name}: cache_write at {cw.at} needs every reduction loop inside "
                                f"{cw.at} and unbound")
        tile = [l for l in inside if not l.reduce]
        acc = c.accums[0]
        tbuf = L.Buffer(acc.buffer.name, tuple(l.extent for l in tile) or (), acc.buffer.dtype, "local")
        tidx = tuple(L.Var(l.name) for l in tile)
        self.plan_staging(inside, c.accums)

        def to_tile(e: L.Expr) -> L.Expr:
            return L.map_expr(e, lambda x: L.Load(tbuf, tidx) if isinstance(x, L.Load) and x.buffer == acc.buffer else None)

        init = self.nest(tile, [L.Store(tbuf, tidx, _identity(acc.op, tbuf.dtype))])
        v = self.staged(acc.value)
        upd = L.Store(tbuf, tidx, self.combine(acc.op, L.Load(tbuf, tidx), self.sub(v)))
        update = self.nest(inside, self.guard([upd], self.roots_in(self.unstaged_part(acc.value))))
        wb: list[L.Stmt] = []
        for s in c.stores:
            st_ = L.Store(s.buffer, tuple(self.sub(i) for i in s.indices), self.sub(to_tile(s.value)))
            wb += self.guard([st_], self.roots_in_store(s))
        writeback = self.nest(tile, wb)
        return self.nest(outer, [L.Alloc(tbuf)] + init + update + writeback)

    def build_tensorized(self) -> list[L.Stmt]:
        """The warp tile (rows i_f, columns j_f, k step k_i) as WMMA fragment ops on the shared tiles:

            alloc x_frag: matrix_a f16[2] of 16x16, row_major  (and w_frag, acc3_frag)
            acc3_frag[i_f, j_f] = wmma_fill(0.0f)
            for k_o in range(E):                      # staging copies + barriers from cache_read
              for k_i in unrolled(BK / 16):
                x_frag[i_f] = wmma_load(&x_shared[k_o % 2, i_w * 32 + i_f * 16, k_i * 16], ld=BK)
                w_frag[j_f] = wmma_load(&w_shared[k_o % 2, k_i * 16, j_w * 32 + j_f * 16], ld=BN)
                acc3_frag[i_f, j_f] = mma(x_frag[i_f], w_frag[j_f], acc3_frag[i_f, j_f])
            wmma_store(&acc3_shared[i_w * 32 + i_f * 16, j_w * 32 + j_f * 16], acc3_frag[i_f, j_f], ld=BN)
            barrier()
            for e in range(BM * BN / threads):        # the fused epilogue, per element, guarded
              out0[i_b * BM + r, j_b * BN + c] = epilogue(acc3_shared[r, c])

        The operand tiles are zero-padded by the staging copies, so edge tiles need no guards in the mma.
        """
        c, st = self.c, self.st
        tz = st.tensorize
        where = f"schedule of {c.name}: {tz}"
        operands, why = _tc_operands(c)
        if operands is None:
            raise ScheduleError(f"{where}: {why}")
        leaf = st.leaf(tz.axis)
        if leaf not in self.rest:
            raise ScheduleError(f"{where}: {tz.axis} is bound to {leaf.kind}; tensorize an unbound loop (the warp "
                                f"tile's rows)")
        pos = self.rest.index(leaf)
        outer, tail = self.rest[:pos], self.rest[pos:]
        if len(tail) != 3 or [st.roots_of(l.name) for l in tail] != [{"i"}, {"j"}, {"k"}]:
            raise ScheduleError(f"{where}: the loops from {tz.axis} inward must be the warp tile's rows (from i), "
                                f"columns (from j) and k step (from k), in that order; they are "
                                f"{', '.join(l.name for l in tail)}; reorder them")
        for l, what in zip(tail, ("rows", "columns", "k step")):
            if l.extent % 16:
                raise ScheduleError(f"{where}: the warp tile's {what} loop {l.name} has extent {l.extent}, not a "
                                    f"multiple of 16 (WMMA fragments are 16x16x16); use tiles that are multiples "
                                    f"of 16")
        if any(not l.reduce for l in outer):
            raise ScheduleError(f"{where}: spatial loop(s) {', '.join(l.name for l in outer if not l.reduce)} "
                                f"run serially around the warp tile; bind them to blockIdx/threadIdx")
        if any(l.reduce for l in self.threads + self.blocks):
            raise ScheduleError(f"{where}: a reduction axis is bound to a block/thread; only the warp tile's "
                                f"k loop and the k loops around it may come from k")
        roots = set(st.roots)
        for axis, _ in st.guards:
            if axis not in roots:
                raise ScheduleError(f"{where}: split of {axis} does not divide it evenly; inside a block every tile "
                                    f"must be whole (only the block tiles may overhang the matrix edges)")
        li, lj, lk = tail
        self.plan_staging(tail, c.accums)
        acc = c.accums[0]
        frags, origins = [], []
        for (opnd, role, mine) in ((operands[0], "matrix_a", "i"), (operands[1], "matrix_b", "j")):
            name, _, nth = opnd.partition("#")
            loads = []
            for x in L.walk_expr(acc.value):
                if isinstance(x, L.Load) and x.buffer.name == name and x not in loads:
                    loads.append(x)
            ld = loads[int(nth or 0)]
            if ld not in self.rewrites or self.rewrites[ld][0].scope != "shared":
                raise ScheduleError(f"{where}: WMMA loads fragments from shared memory, but {opnd} is not staged "
                                    f"there; add cache_read({opnd}, 'shared', at={outer[-1].name if outer else '...'})")
            buf, lidx = self.rewrites[ld]
            dims = self.staged_dims[ld]
            # row-major when the tile's contiguous (last) dimension is the fragment's inner one
            inner_dim = "k" if role == "matrix_a" else mine
            layout = "row_major" if dims[-1] == inner_dim else "col_major"
            frags.append(L.Fragment(buf.name[:-len("_shared")] + "_frag", role,
                                    ((li if role == "matrix_a" else lj).extent // 16,), "f16", layout))
            origins.append((buf, lidx))
        afrag, bfrag = frags
        FM, FN, FK = li.extent // 16, lj.extent // 16, lk.extent // 16
        cfrag = L.Fragment(f"{acc.buffer.name}_frag", "accumulator", (FM, FN), "f32")
        vi, vj, vk = (L.Var(l.name) for l in tail)
        fsub = {l.name: L.Var(l.name) * 16 for l in tail}   # the fragment's top-left element

        def origin(buf: L.Buffer, idx) -> L.Load:
            return L.Load(buf, tuple(L.simplify_expr(L.substitute(e, fsub)) for e in idx))

        def unrolled(v: L.Var, n: int, body: list[L.Stmt]) -> L.For:
            return L.For(v, n, tuple(body), "unrolled")

        loads_a = unrolled(vi, FM, [L.FragmentLoad(afrag, (vi,), origin(*origins[0]))])
        loads_b = unrolled(vj, FN, [L.FragmentLoad(bfrag, (vj,), origin(*origins[1]))])
        mma = unrolled(vi, FM, [unrolled(vj, FN, [L.Mma(cfrag, (vi, vj), afrag, (vi,), bfrag, (vj,))])])
        step = [unrolled(vk, FK, [loads_a, loads_b, mma])]
        init: list[L.Stmt] = [L.FragmentAlloc(afrag), L.FragmentAlloc(bfrag), L.FragmentAlloc(cfrag),
                              unrolled(vi, FM, [unrolled(vj, FN, [L.FragmentFill(cfrag, (vi, vj),
                                                                                   L.Const(0.0, "f32"))])])]
        update = self.nest(outer, step)
        # the accumulators → a shared f32 tile of the block, so the epilogue can run per element
        blocks = {l.name for l in self.blocks}
        inner_leaves = [l.name for l in st.leaves if l.name not in blocks]
        local = {r: st.value(r, {b: L.Const(0) for b in blocks}) for r in ("i", "j")}
        base = {r: st.value(r, {n: L.Const(0) for n in inner_leaves}) for r in st.roots}
        ext = {l.name: l.extent - 1 for l in st.leaves}
        BMx, BNx = (_eval_int(local[r], ext) + 1 for r in ("i", "j"))
        ctile = L.Buffer(f"{acc.buffer.name}_shared", (BMx, BNx), "f32", "shared")
        self.shared_allocs.append(ctile)
        store = [unrolled(vi, FM, [unrolled(vj, FN, [L.FragmentStore(
            origin(ctile, (local["i"], local["j"])), cfrag, (vi, vj))])]), L.Barrier()]
        return init + update + store + self.tensor_epilogue(ctile, base)

    def tensor_epilogue(self, ctile: L.Buffer, base: dict[str, L.Expr]) -> list[L.Stmt]:
        """The fused epilogue over the block's shared accumulator tile: thread t handles elements
        e * threads + t (consecutive threads → consecutive columns: coalesced stores), guarded at the edges."""
        c, st = self.c, self.st
        blocks = {l.name for l in self.blocks}
        for r, v in base.items():
            if r not in ("i", "j", "k") and any(x.name not in blocks for x in L.walk_expr(v) if isinstance(x, L.Var)):
                raise ScheduleError(f"schedule of {c.name}: {st.tensorize}: batch axis {r} must be bound to blocks "
                                    f"(one matrix per block)")
        tid, stride = self.thread_rank()
        BMx, BNx = ctile.shape
        total = BMx * BNx
        e = L.Var(f"{ctile.name}_e")
        flat = L.simplify_expr(e * stride + tid)
        r, col = L.simplify_expr(flat / BNx), L.simplify_expr(flat % BNx)
        vals = dict(base)
        vals["i"] = L.simplify_expr(base["i"] + r)
        vals["j"] = L.simplify_expr(base["j"] + col)
        acc = c.accums[0]

        def sub(x: L.Expr) -> L.Expr:
            x = L.map_expr(x, lambda y: L.Load(ctile, (r, col)) if isinstance(y, L.Load) and y.buffer == acc.buffer
                           else None)
            return L.simplify_expr(L.substitute(x, vals))

        conds: list[L.Expr] = [L.BinOp("<", flat, L.Const(total))] if total % stride else []
        guarded = {a for a, _ in st.guards}
        for rt in st.roots:
            if rt != "k" and rt in guarded:
                conds.append(L.BinOp("<", vals[rt], L.Const(st.extents[rt])))
        body: list[L.Stmt] = [L.Store(s.buffer, tuple(sub(i) for i in s.indices), sub(s.value)) for s in c.stores]
        if conds:
            body = [L.If(L.all_of(conds), tuple(body))]
        n = -(-total // stride)
        return [L.For(e, n, tuple(body), "unrolled" if n <= 8 else "serial")]

    # -- cache_read ------------------------------------------------------------------------
    def plan_staging(self, inside: Sequence[Leaf], accums) -> None:
        """Build the copy code of each cache_read and remember how to rewrite its loads."""
        self.rewrites: dict[str, tuple[L.Buffer, dict[str, L.Expr]]] = {}
        if not self.st.cache_reads:
            return
        order = self.threads + self.rest
        for cr in self.st.cache_reads:
            at = self.st.leaf(cr.at)
            if at not in self.rest:
                raise ScheduleError(f"cache_read({cr.buffer}) at {cr.at}: attach to an unbound loop")
            k = self.rest.index(at)
            foot = {l.name for l in self.rest[k + 1:]}
            if cr.scope == "shared":
                if self.target.max_shared_bytes is None:
                    raise ScheduleError(f"cache_read({cr.buffer}, 'shared'): the CPU has no shared memory; use 'local'")
                foot |= {l.name for l in self.threads}
            name, _, nth = cr.buffer.partition("#")
            loads = []
            for a in accums:
                for x in L.walk_expr(a.value):
                    if isinstance(x, L.Load) and x.buffer.name == name and x not in loads:
                        loads.append(x)
            if len(loads) <= int(nth or 0):
                raise ScheduleError(f"cache_read({cr.buffer}): the accumulation does not read {cr.buffer}")
            ld = loads[int(nth or 0)]
            dims, shape, local_idx, base_idx, depth, strided = [], [], [], [], [], []
            for d, ix in enumerate(ld.indices):
                if isinstance(ix, L.Const):
                    shape.append(1); local_idx.append(L.Const(0)); base_idx.append(ix); dims.append(None)
                    depth.append(-1); strided.append((1, 0))
                    continue
                aff = L.axis_stride_offset(ix)
                if aff is None or aff[0] not in self.vals:
                    raise ScheduleError(f"cache_read({cr.buffer}): dimension {d} is indexed by {ix}, not by one loop "
                                        f"axis (times a stride, plus an offset); only sliced, plain or transposed "
                                        f"operands can be staged")
                r = aff[0]
                strided.append(aff[1:])   # the tile holds rows r; the source row is stride * r + offset
                chain = {l.name for l in self.st.leaves} & ({r} | self.st._descendants(r))
                if chain & foot and self.st.chain_has_fuse(r):
                    raise ScheduleError(f"cache_read({cr.buffer}): axis {r} was fused; stage before fusing it")
                zero_out = {l: L.Const(0) for l in chain if l not in foot}
                zero_in = {l: L.Const(0) for l in chain if l in foot}
                local = self.st.value(r, zero_out)
                base = self.st.value(r, zero_in)
                maxv = _eval_int(local, {l: self.st.extents[l] - 1 for l in chain if l in foot})
                shape.append(maxv + 1); local_idx.append(local); base_idx.append(base); dims.append(r)
                depth.append(max((k2 for k2, l in enumerate(order) if l.name in chain & foot), default=-1))
            # a local (CPU) tile is packed in loop order: the dimension walked by the innermost loop is
            # contiguous, whatever the source layout (x @ w.T packs w's panel as (k, j) rows)
            perm = sorted(range(len(shape)), key=lambda d: depth[d]) if cr.scope == "local" else list(range(len(shape)))
            bname = f"{name}{'_' + nth if nth else ''}_{cr.scope}"
            if cr.scope == "shared" and cr.buffer in self.st.double_buffers:
                # slot k_o % 2 holds tile k_o; copies are made per (tile index, slot) by loop()
                buf = L.Buffer(bname, (2, *shape), ld.buffer.dtype, cr.scope)
                kv = at.name

                def copy(k: L.Expr, slot: L.Expr, src=ld.buffer, buf=buf, dims=dims, base_idx=base_idx,
                         shape=tuple(shape), kv=kv, strided=tuple(strided)) -> list[L.Stmt]:
                    base = [L.simplify_expr(L.substitute(b, {kv: k})) for b in base_idx]
                    return self.copy_code(src, buf, dims, base, list(shape), slot=L.simplify_expr(slot),
                                          strided=strided)
                local_idx = [L.BinOp("%", L.Var(kv), L.Const(2))] + local_idx
            else:
                buf = L.Buffer(bname, tuple(shape[p] for p in perm), ld.buffer.dtype, cr.scope)
                copy = self.copy_code(ld.buffer, buf, dims, base_idx, shape, perm=perm, strided=strided)
                local_idx = [local_idx[p] for p in perm]
            if cr.scope == "shared":
                self.shared_allocs.append(buf)
            self.staging.setdefault(cr.at, []).append((cr, buf, copy))
            self.rewrites[ld] = (buf, tuple(local_idx))
            self.staged_dims[ld] = dims

    def copy_code(self, src: L.Buffer, dst: L.Buffer, dims, base_idx, shape,
                  slot: L.Expr | None = None, perm: Sequence[int] | None = None,
                  strided: Sequence[tuple[int, int]] | None = None) -> list[L.Stmt]:
        """Copy the tile `shape` at `base_idx` of `src` into `dst` (into dst[slot, ...] when given);
        shared tiles cooperatively, element e*threads + tid per thread, zero-padded at the edges.
        `perm` lays the tile out transposed: dst dimension k is source dimension perm[k].
        `strided[d]` = (stride, offset): axis value g of dimension d reads source row stride * g + offset
        (a sliced operand such as a[::2] or x[:, 16:32]); the edge guard stays on g."""
        lead = () if slot is None else (slot,)
        strided = list(strided) if strided is not None else [(1, 0)] * len(shape)
        perm = list(perm) if perm is not None else list(range(len(shape)))
        total = 1
        for s in shape:
            total *= s
        ext = {r: a.extent for a in self.c.axes for r in [a.name]}

        def body(d_vars: Sequence[L.Expr]) -> list[L.Stmt]:
            gidx, conds = [], []
            for r, base, dv, (stride, offset) in zip(dims, base_idx, d_vars, strided):
                if r is None:
                    gidx.append(base)
                    continue
                g = L.simplify_expr(base + dv)
                gidx.append(g if (stride, offset) == (1, 0) else L.simplify_expr(g * stride + offset))
                if any(self.st.roots_of(a) & {r} for a, _ in self.st.guards):
                    conds.append(L.BinOp("<", g, L.Const(ext[r])))
            didx = lead + tuple(d_vars[p] for p in perm)
            store = L.Store(dst, didx, L.Load(src, tuple(gidx)))
            if not conds:
                return [store]
            return [L.If(L.all_of(conds), (store,), (L.Store(dst, didx, _zero(dst.dtype)),))]

        if dst.scope == "shared":
            tid, nthreads = self.thread_rank()
            e = L.Var(f"{dst.name}_e")
            flat = L.simplify_expr(e * nthreads + tid)
            d_vars, rem = [], flat
            for d in range(len(shape)):
                inner = 1
                for s in shape[d + 1:]:
                    inner *= s
                v = rem / inner if inner != 1 else rem
                if d > 0:
                    v = v % shape[d]
                d_vars.append(L.simplify_expr(v))
            stmts = body(d_vars)
            if total % nthreads:
                stmts = [L.If(L.BinOp("<", flat, L.Const(total)), tuple(stmts))]
            return [L.For(e, -(-total // nthreads), tuple(stmts), "unrolled" if -(-total // nthreads) <= 8 else "serial")]
        vars_ = [L.Var(f"{dst.name}_{d}") for d in range(len(shape))]
        stmts = body(vars_)
        for p in reversed(perm):   # loop in the destination's order: contiguous writes
            stmts = [L.For(vars_[p], shape[p], tuple(stmts), "serial")]
        return stmts

    def staged(self, e: L.Expr) -> L.Expr:
        if not getattr(self, "rewrites", None):
            return e
        rw = self.rewrites

        def fn(x: L.Expr):
            if isinstance(x, L.Load) and x in rw:
                buf, idx = rw[x]
                return L.Load(buf, idx)
            return None
        return L.map_expr(e, fn)

    def unstaged_part(self, e: L.Expr) -> L.Expr:
        """e with staged loads removed (they need no guard: the staged tile is zero-padded)."""
        if not getattr(self, "rewrites", None):
            return e
        rw = self.rewrites
        return L.map_expr(e, lambda x: L.Const(0) if isinstance(x, L.Load) and x in rw else None)


def _zero(dt: str) -> L.Const:
    return L.Const(False if dt == "bool" else (0 if dt in ("i32", "i64") else 0.0), dt)


def _identity(op: str, dt: str) -> L.Const:
    from .lower import _identity as ident
    return ident(op, dt)


def _eval_int(e: L.Expr, env: dict[str, int]) -> int:
    if isinstance(e, L.Const):
        return int(e.value)
    if isinstance(e, L.Var):
        if e.name not in env:
            raise ScheduleError(f"cannot bound index expression {e}: {e.name} is not a loop inside it")
        return env[e.name]
    if isinstance(e, L.BinOp):
        a, b = _eval_int(e.a, env), _eval_int(e.b, env)
        return {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0, "%": a % b if b else 0,
                "min": min(a, b), "max": max(a, b)}[e.op]
    raise ScheduleError(f"cannot bound index expression {e}")


def partition_tails(stmts: Sequence[L.Stmt]) -> tuple[L.Stmt, ...]:
    """Loop partitioning for CPU SIMD: a parallel loop whose inner vectorized loops are guarded
    only for the last chunk is split into full chunks (guards dropped, vectorized) and the tail.

        for o in parallel(E): for v in vectorized(F): if o*F+v < N: S
      → for o in parallel(E): if o < E-1: for v in vectorized(F): S   else: for v in range(F): if ...: S

    A guard is dropped only when it provably holds for every o < E-1 (index expressions from
    splits are monotone, so checking the largest values suffices).
    """
    def visit(s: L.Stmt):
        if isinstance(s, L.For) and s.kind == "parallel" and s.extent > 1:
            extents = {s.var.name: s.extent - 2}
            if _has_guarded_simd(s.body) and _guards_hold(s.body, extents):
                fast = _strip_guard(s.body)
                slow = _serialize(s.body)
                return L.For(s.var, s.extent, (L.If(L.BinOp("<", s.var, L.Const(s.extent - 1)), fast, slow),), s.kind)
        return None
    return L.map_stmts(stmts, visit)


def _has_guarded_simd(body) -> bool:
    return any(isinstance(s, L.For) and s.kind == "vectorized" and len(s.body) == 1 and isinstance(s.body[0], L.If)
               for s in L.walk(body))


def _guards_hold(body, maxima: dict[str, int]) -> bool:
    """Every guard directly inside a vectorized loop is true at the loop variables' maxima."""
    for s in body:
        if isinstance(s, L.For):
            inner = {**maxima, s.var.name: s.extent - 1}
            if s.kind == "vectorized" and len(s.body) == 1 and isinstance(s.body[0], L.If):
                try:
                    if not _eval_bool(s.body[0].cond, inner):
                        return False
                except ScheduleError:
                    return False
            elif not _guards_hold(s.body, inner):
                return False
        elif isinstance(s, L.If):
            if not (_guards_hold(s.then, maxima) and _guards_hold(s.orelse, maxima)):
                return False
    return True


def _eval_bool(e: L.Expr, env: dict[str, int]) -> bool:
    if isinstance(e, L.BinOp) and e.op == "&&":
        return _eval_bool(e.a, env) and _eval_bool(e.b, env)
    if isinstance(e, L.BinOp) and e.op == "<":
        return _eval_int(e.a, env) < _eval_int(e.b, env)
    raise ScheduleError(f"not a bounds guard: {e}")


def _strip_guard(body):
    def fn(s):
        if isinstance(s, L.For) and s.kind == "vectorized" and len(s.body) == 1 and isinstance(s.body[0], L.If):
            return L.For(s.var, s.extent, s.body[0].then, s.kind)
        return None
    return L.map_stmts(body, fn)


def _serialize(body):
    def fn(s):
        if isinstance(s, L.For) and s.kind == "vectorized":
            return L.For(s.var, s.extent, s.body, "serial")
        return None
    return L.map_stmts(body, fn)
