"""compute: the lowered IR — one compute definition per kernel — and the loop generator that makes its loops.

The lowering pass (passes/lower.py) turns each fusion group into a compute definition (like a TVM
te.compute): named iteration axes and every value as a scalar expression of them, intermediates
inlined. A ComputeProgram holds one per kernel, in launch order, over the program's global buffers;
it is the `lowered` stage's IR. The loop generator here (loop_nest, as TVM's ScheduleOps) makes a
definition's loop nest under a Schedule: the lowered snapshot prints the naive nests (an empty
Schedule), the tiling pass regenerates them under the target's schedule.

The text of the IR, one definition under the empty schedule:

>>> x, y = L.Buffer("x", (4,), "f32"), L.Buffer("y", (4,), "f32")
>>> i = L.Var("i0")
>>> c = Compute("elementwise", "double", (Axis("i0", 4),), stores=(StoreDef(y, (i,), L.Load(x, (i,)) * 2.0),),
...             inputs=(x,), outputs=(y,))
>>> print(loop_nest(c, Schedule(), "naive").text())
kernel double(x: f32[4] global, y: f32[4] global):
  for i0 in range(4):
    y[i0] = x[i0] * 2.0f

The same definition under a split: the loops change, the definition does not.

>>> s = Schedule(); _ = s.split("i0", 2)
>>> print(loop_nest(c, s, "cpu").text())
kernel double(x: f32[4] global, y: f32[4] global):
  # schedule:
  #   split(i0, 2) -> i0_o, i0_i
  for i0_o in range(2):
    for i0_i in range(2):
      y[i0_o * 2 + i0_i] = x[i0_o * 2 + i0_i] * 2.0f
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from . import loopir as L
from .errors import ExplorerError, ScheduleError
from .ops import REDUCE_IDENTITY
from .schedule import WARP_SIZE, AxisState, CacheRead, Leaf, Schedule, apply, tc_operands
from .target import Target, get_target

_KIND_ORDER = {"z": 0, "y": 1, "x": 2}


# ----------------------------------------------------------------------------- compute definitions
@dataclass(frozen=True)
class Axis:
    name: str
    extent: int
    reduce: bool = False


@dataclass(frozen=True)
class Accum:
    """A reduction accumulator: buffer[] = combine(buffer[], value) over the reduce axes."""

    buffer: L.Buffer          # 0-d local
    op: str                   # 'sum' | 'max' | 'min'
    value: L.Expr             # in spatial + reduce axis vars
    phase: int = 0
    out_dtype: str = "f32"    # dtype of the node (acc may be wider, e.g. f16 sums in f32)


@dataclass(frozen=True)
class StoreDef:
    buffer: L.Buffer
    indices: tuple[L.Expr, ...]
    value: L.Expr


@dataclass(frozen=True)
class Stash:
    """`buffer[indices] = value` run per element inside accumulation phase `phase` (see stash_shared_values).

    An accumulator of that phase whose value contains `value` reads `buffer[indices]` back instead
    (tiling), and the full_stores already read it (lowering rewrote them), so `value` is evaluated
    once per element."""

    buffer: L.Buffer
    indices: tuple[L.Expr, ...]
    value: L.Expr
    phase: int


@dataclass(frozen=True)
class Compute:
    """A fusion group as a compute definition over named axes (expressions use Var(axis.name)).

    kind 'elementwise': stores over spatial axes. 'reduce': accumulators over reduce axes
    (phases run in order), then `stores` over spatial axes and `full_stores` over spatial+reduce.
    'contraction': one sum accumulator over k, then epilogue `stores`. 'opaque' (scan): one
    accumulator whose running value is stored at every reduce step (`scan_stores`).
    'reduce' `stashes`: values the last phase stores into a full_store's buffer for the full_store to
    read back (see passes.lower.stash_shared_values).
    group/ops/source_lines say which fusion group, graph ops and user lines it implements; every kernel
    made from it carries them.
    """

    kind: str
    name: str
    spatial: tuple[Axis, ...]
    reduce: tuple[Axis, ...] = ()
    accums: tuple[Accum, ...] = ()
    stores: tuple[StoreDef, ...] = ()
    full_stores: tuple[StoreDef, ...] = ()
    scan_stores: tuple[StoreDef, ...] = ()
    inputs: tuple[L.Buffer, ...] = ()
    outputs: tuple[L.Buffer, ...] = ()
    operands: tuple[str, ...] = ()   # contraction: names of the (A, B) buffers, for cache_read
    pattern: str = ""                # contraction: 'conv2d' for a convolution (its own default schedules)
    stashes: tuple[Stash, ...] = ()  # reduce: see stash_shared_values
    custom: Any = None               # kind 'custom': the CustomKernel (explorer.custom_kernel)
    group: str = ""                  # the fusion group it implements ('' for a copy of an input to an output)
    ops: tuple[str, ...] = ()        # the graph ops it contains, in order
    source_lines: tuple[str, ...] = ()  # the user's lines it computes (provenance)

    @property
    def axes(self) -> tuple[Axis, ...]:
        return self.spatial + self.reduce

    def axis(self, name: str) -> Axis:
        for a in self.axes:
            if a.name == name:
                return a
        raise KeyError(name)

    def text(self) -> str:
        """Its naive loop nest: what the lowered snapshot prints for this kernel."""
        return loop_nest(self, Schedule(), "naive").text()


@dataclass(frozen=True)
class ComputeProgram:
    """The lowered stage: one compute definition per kernel, in launch order, over global buffers.

    `computes` are Compute definitions, or definitions with a loop template of their own
    (passes/attention.AttentionCompute: kind 'attention', its own `loop_nest(target)`). The buffers are
    those of the loop-level Program the tiling pass makes: inputs named after the function's parameters,
    then the non-scalar constants (whose data `constants` holds as (buffer, array) pairs); outputs
    out0..; temps t<id>, the global intermediates between kernels.

    `loops` is the naive loop nest of every definition (loop_nest under an empty Schedule): what text(),
    dot() and stats() show, so the stage reads as loops while the tiling pass works on the definitions.
    """

    name: str
    computes: tuple[Any, ...]
    inputs: tuple[L.Buffer, ...]
    outputs: tuple[L.Buffer, ...]
    temps: tuple[L.Buffer, ...] = ()
    constants: tuple = field(default=(), compare=False)
    loops: L.Program = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "computes", tuple(self.computes))
        naive = tuple(loop_nest(c, Schedule(), "naive") for c in self.computes)
        object.__setattr__(self, "loops", L.Program(self.name, naive, tuple(self.inputs), tuple(self.outputs),
                                                    tuple(self.temps), constants=self.constants))

    @property
    def kernels(self) -> tuple[L.Kernel, ...]:
        """The naive loop nest of each definition (names, kinds and groups as the tiled kernels')."""
        return self.loops.kernels

    def compute(self, name: str) -> Any:
        """The definition of kernel `name`."""
        for c in self.computes:
            if c.name == name:
                return c
        raise ExplorerError(f"no kernel named {name!r} in the lowered program; its kernels are "
                            f"{', '.join(c.name for c in self.computes) or 'none'}")

    def buffers(self) -> dict[str, L.Buffer]:
        return self.loops.buffers()

    def text(self) -> str:
        return self.loops.text()

    __str__ = text

    def dot(self) -> str:
        return self.loops.dot()

    def stats(self) -> dict[str, Any]:
        return self.loops.stats()

    def to_svg(self) -> str:
        return self.loops.to_svg()

    def _repr_html_(self) -> str:
        return self.loops._repr_html_()


def reduce_identity(op: str, dt: str) -> L.Const:
    """The start value of an accumulator of `op` ('sum' | 'max' | 'min') in dtype `dt`.

    >>> print(reduce_identity("max", "f32"), reduce_identity("min", "i32"), reduce_identity("sum", "bool"))
    -inf 2147483647 false
    """
    v = REDUCE_IDENTITY[op]
    if dt in ("i32", "i64"):
        info = np.iinfo(np.int32 if dt == "i32" else np.int64)
        v = 0 if op == "sum" else (int(info.min) if op == "max" else int(info.max))
    elif dt == "bool":
        v = {"sum": False, "max": False, "min": True}[op]
    return L.Const(v, dt)


# ----------------------------------------------------------------------------- the loop generator
def as_loop_target(target: "str | Target") -> Target:
    """The Target whose loops to generate: 'naive' (the lowering's loops) is the unscheduled reference target."""
    return get_target("reference" if target == "naive" else target)


def loop_nest(compute: Any, schedule: Schedule, target: "str | Target" = "cuda") -> L.Kernel:
    """The loop nest of one compute definition under `schedule` for `target` (a Target, its name, or 'naive').

    Block-bound loops outermost, then thread-bound loops, then the remaining leaves in schedule order;
    splits that do not divide get bounds guards; cache_write keeps a register tile of accumulators;
    cache_read stages an operand tile in shared memory or a local buffer (double_buffer: two slots);
    tensorize makes a warp's tile WMMA fragment statements (see _Generator.build_tensorized). 'naive'
    makes plain serial loops. The kernel carries the definition's group, ops and source lines.
    """
    target = as_loop_target(target)
    if compute.kind == "custom":
        return _custom_kernel(compute)
    if compute.kind == "attention":   # its own loop template (passes/attention.AttentionCompute)
        return compute.loop_nest(target)
    operands = tuple(compute.operands)
    if compute.kind == "contraction" and not operands:
        # f16 operands are read through an f32 cast, which lowering does not list; the tensor-core
        # path stages them (the SIMT path keeps reading them from global memory, as before)
        operands = tc_operands(compute)[0] or ()
    st = apply(schedule, [(a.name, a.extent) for a in compute.spatial], [(a.name, a.extent) for a in compute.reduce],
               buffers=operands, kernel=compute.name)
    gen = _Generator(compute, st, target)
    body = gen.build()
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
                    meta=(("notes", tuple(schedule.notes)),), group=compute.group, ops=compute.ops,
                    source_lines=compute.source_lines)


def _custom_kernel(compute) -> L.Kernel:
    """A custom kernel's Kernel: its buffers and one comment (the user's C/CUDA source is the body)."""
    spec = compute.custom
    ins = ", ".join(b.name for b in compute.inputs)
    outs = ", ".join(b.name for b in compute.outputs)
    note = (f"custom kernel {spec.name}({ins}) -> {outs}: cpu runs its c_source, cuda its cuda_source, "
            f"sim and reference its NumPy reference")
    params = tuple(compute.inputs) + tuple(b for b in compute.outputs if b not in compute.inputs)
    return L.Kernel(compute.name, params, (L.Comment(note),), outputs=tuple(b.name for b in compute.outputs),
                    kind="custom", schedule=(), meta=(("custom", spec),
                                                      ("notes", ("custom kernel: opaque, the user's source "
                                                                 "is its schedule",))),
                    group=compute.group, ops=compute.ops, source_lines=compute.source_lines)



class _Generator:
    def __init__(self, c, st: AxisState, target: "Target"):
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
                body += [L.Alloc(a.buffer), L.Store(a.buffer, (), reduce_identity(a.op, a.buffer.dtype))]
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

        init = self.nest(tile, [L.Store(tbuf, tidx, reduce_identity(acc.op, tbuf.dtype))])
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
        operands, why = tc_operands(c)
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
        BMx, BNx = (eval_int(local[r], ext) + 1 for r in ("i", "j"))
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
            if cr.scope == "shared" and not all(isinstance(ix, L.Const) or L.axis_stride_offset(ix) is not None
                                                for ix in ld.indices):
                # a window read (a conv's x[n, oh + kh - 1, ...]): stage the block's gathered values instead
                self.plan_gather(cr, ld, at, foot, order, accums)
                continue
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
                chain = {l.name for l in self.st.leaves} & ({r} | self.st.descendants(r))
                if chain & foot and self.st.chain_has_fuse(r):
                    raise ScheduleError(f"cache_read({cr.buffer}): axis {r} was fused; stage before fusing it")
                zero_out = {l: L.Const(0) for l in chain if l not in foot}
                zero_in = {l: L.Const(0) for l in chain if l in foot}
                local = self.st.value(r, zero_out)
                base = self.st.value(r, zero_in)
                maxv = eval_int(local, {l: self.st.extents[l] - 1 for l in chain if l in foot})
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

    def plan_gather(self, cr: CacheRead, ld: L.Load, at: Leaf, foot: set[str], order: Sequence[Leaf],
                    accums) -> None:
        """Stage a load whose indices mix loop axes (a convolution's x[n, oh * 2 + kh - 1, ow + kw - 1, ic])
        as a gather tile: the factor of the accumulation that reads it (with its padding select) evaluated
        once per combination of the loops inside `at` and the block's threads it depends on, the tile
        indexed by those loops (an implicit-GEMM A tile: its rows the block's pixels, its columns the
        channel step):

            x_shared[pix_i, ic_i] = (in bounds ? x[n, oh + kh - 1, ow + kw - 1, ic_o * 16 + ic_i] : 0)  # per block
            barrier()
            acc += x_shared[pix_i, ic_i] * w_shared[..]

        Out-of-range elements (a padding tap, a partial tile) are stored as zeros, so readers need no guard."""
        where = f"cache_read({cr.buffer}, 'shared', at={cr.at})"
        factor = None   # the largest sub-expression that reads ld and no other memory (the select around it)
        for a in accums:
            for x in L.walk_expr(a.value):
                reads = {y for y in L.walk_expr(x) if isinstance(y, L.Load)}
                if reads == {ld} and (factor is None or len(list(L.walk_expr(x))) > len(list(L.walk_expr(factor)))):
                    factor = x
        st = self.st
        roots = {x.name for x in L.walk_expr(factor) if isinstance(x, L.Var) and x.name in self.vals}
        chains = set()
        for r in roots:
            chains |= {r} | st.descendants(r)
        # the tile's last dimension is the loop that walks the load's last (contiguous) dimension, so that
        # consecutive threads copy consecutive elements (NHWC: channels; NCHW: columns)
        def last_dim(l: Leaf) -> int:
            return max((d for d, ix in enumerate(ld.indices) for r in st.roots_of(l.name)
                        if any(isinstance(v, L.Var) and v.name == r for v in L.walk_expr(ix))), default=-1)
        key = sorted((l for l in order if l.name in foot and l.name in chains), key=last_dim)
        shape = [l.extent for l in key]
        bname = f"{ld.buffer.name}{'_' + cr.buffer.partition('#')[2] if '#' in cr.buffer else ''}_shared"
        double = cr.buffer in st.double_buffers
        buf = L.Buffer(bname, ((2,) if double else ()) + tuple(shape), factor.dtype, "shared")
        value = self.sub(factor)
        conds = [L.BinOp("<", st.value(axis), L.Const(extent)) for axis, extent in st.guards
                 if st.roots_of(axis) & roots]
        tid, nthreads = self.thread_rank()
        total = 1
        for n in shape:
            total *= n
        e = L.Var(f"{bname}_e")
        flat = L.simplify_expr(e * nthreads + tid)
        decoded, inner = {}, total
        for l in key:   # the last key loop fastest: consecutive threads copy consecutive channels
            inner //= l.extent
            v = flat / inner if inner != 1 else flat
            decoded[l.name] = L.simplify_expr(v % l.extent if l is not key[0] else v)

        def copy(k: L.Expr | None = None, slot: L.Expr | None = None) -> list[L.Stmt]:
            env = dict(decoded)
            if k is not None:
                env[at.name] = L.simplify_expr(k)
            lead = () if slot is None else (L.simplify_expr(slot),)
            didx = lead + tuple(decoded[l.name] for l in key)
            v = L.simplify_expr(L.substitute(value, env))
            stmt: L.Stmt = L.Store(buf, didx, v)
            if conds:
                stmt = L.If(L.all_of([L.simplify_expr(L.substitute(c, env)) for c in conds]), (stmt,),
                            (L.Store(buf, didx, zero_const(buf.dtype)),))
            stmts = [stmt]
            if total % nthreads:
                stmts = [L.If(L.BinOp("<", flat, L.Const(total)), tuple(stmts))]
            n = -(-total // nthreads)
            return [L.For(e, n, tuple(stmts), "unrolled" if n <= 8 else "serial")]

        if not key:
            raise ScheduleError(f"{where}: {factor} depends on no loop inside {cr.at} and no thread; stage it at "
                                f"an outer loop or not at all")
        self.shared_allocs.append(buf)
        self.staging.setdefault(cr.at, []).append((cr, buf, copy if double else copy()))
        local = tuple(L.Var(l.name) for l in key)
        self.rewrites[factor] = (buf, ((L.BinOp("%", L.Var(at.name), L.Const(2)),) if double else ()) + local)
        self.staged_dims[factor] = [None] * len(buf.shape)

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
            return [L.If(L.all_of(conds), (store,), (L.Store(dst, didx, zero_const(dst.dtype)),))]

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
            if x in rw:   # a staged load, or a gathered factor (plan_gather)
                buf, idx = rw[x]
                return L.Load(buf, idx)
            return None
        return L.map_expr(e, fn)

    def unstaged_part(self, e: L.Expr) -> L.Expr:
        """e with staged loads removed (they need no guard: the staged tile is zero-padded)."""
        if not getattr(self, "rewrites", None):
            return e
        rw = self.rewrites
        return L.map_expr(e, lambda x: L.Const(0) if x in rw else None)



def zero_const(dt: str) -> L.Const:
    return L.Const(False if dt == "bool" else (0 if dt in ("i32", "i64") else 0.0), dt)



def eval_int(e: L.Expr, env: dict[str, int]) -> int:
    if isinstance(e, L.Const):
        return int(e.value)
    if isinstance(e, L.Var):
        if e.name not in env:
            raise ScheduleError(f"cannot bound index expression {e}: {e.name} is not a loop inside it")
        return env[e.name]
    if isinstance(e, L.BinOp):
        a, b = eval_int(e.a, env), eval_int(e.b, env)
        return {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0, "%": a % b if b else 0,
                "min": min(a, b), "max": max(a, b)}[e.op]
    raise ScheduleError(f"cannot bound index expression {e}")
