"""Schedules as data (TVM te.Schedule / Halide style): split, fuse, reorder, bind,
parallel, vectorize, unroll, cache_read, cache_write, double_buffer, tensorize.

A Schedule is a list of primitives on the named axes of one kernel's compute
definition; applying it gives an AxisState (leaf loops in order, their kinds, how
each original axis is computed from the leaves) from which the tiling pass
generates the loop nest. Printing a Schedule lists the primitives in order — the
`tiled` snapshot shows exactly these.

>>> s = Schedule()
>>> io, ii = s.split("i", 64)
>>> s.bind(io, "blockIdx.x"); s.bind(ii, "threadIdx.x")
>>> print(s)
split(i, 64) -> i_o, i_i
bind(i_o, blockIdx.x)
bind(i_i, threadIdx.x)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from . import loopir as L
from .errors import ScheduleError

# hardware limits the validation names (CUDA compute capability ≥ 7)
MAX_THREADS_PER_BLOCK = 1024
MAX_SHARED_BYTES = 48 * 1024          # static shared memory per block
MAX_GRID_YZ = 65535
MAX_GRID_X = 2**31 - 1
THREAD_AXES = ("threadIdx.x", "threadIdx.y", "threadIdx.z")
BLOCK_AXES = ("blockIdx.x", "blockIdx.y", "blockIdx.z")


# ----------------------------------------------------------------------------- primitives
@dataclass(frozen=True)
class Split:
    axis: str
    factor: int
    outer: str
    inner: str

    def __str__(self): return f"split({self.axis}, {self.factor}) -> {self.outer}, {self.inner}"


@dataclass(frozen=True)
class Fuse:
    axes: tuple[str, ...]
    fused: str

    def __str__(self): return f"fuse({', '.join(self.axes)}) -> {self.fused}"


@dataclass(frozen=True)
class Reorder:
    order: tuple[str, ...]

    def __str__(self): return f"reorder({', '.join(self.order)})"


@dataclass(frozen=True)
class Bind:
    axis: str
    thread: str

    def __str__(self): return f"bind({self.axis}, {self.thread})"


@dataclass(frozen=True)
class Parallel:
    axis: str

    def __str__(self): return f"parallel({self.axis})"


@dataclass(frozen=True)
class Vectorize:
    axis: str

    def __str__(self): return f"vectorize({self.axis})"


@dataclass(frozen=True)
class Unroll:
    axis: str

    def __str__(self): return f"unroll({self.axis})"


@dataclass(frozen=True)
class CacheRead:
    buffer: str
    scope: str
    at: str

    def __str__(self): return f"cache_read({self.buffer}, {self.scope}, at={self.at})"


@dataclass(frozen=True)
class CacheWrite:
    scope: str
    at: str

    def __str__(self): return f"cache_write({self.scope}, at={self.at})"


@dataclass(frozen=True)
class DoubleBuffer:
    """Two shared slots for a cache_read tile: the copy of tile k+1 overlaps the compute on tile k."""

    buffer: str

    def __str__(self): return f"double_buffer({self.buffer})"


# tensor intrinsics tensorize knows: name -> (m, n, k) of one warp-level op
TENSOR_INTRINSICS = {"wmma_16x16x16": (16, 16, 16)}
WARP_SIZE = 32


@dataclass(frozen=True)
class Tensorize:
    """Replace the loop nest from `axis` inward (the warp tile: rows, columns, k step) by warp-level
    tensor-core ops of `intrinsic`: fragments loaded from the shared tiles, mma, fragments stored."""

    axis: str
    intrinsic: str

    def __str__(self): return f"tensorize({self.axis}, {self.intrinsic})"


Primitive = Any


class Schedule:
    """An ordered list of primitives. Builder methods return the new axis names.

    >>> s = Schedule(); f = s.fuse("i0", "i1"); fo, fi = s.split(f, 4); s.vectorize(fi)
    >>> [str(p) for p in s]
    ['fuse(i0, i1) -> i0_i1', 'split(i0_i1, 4) -> i0_i1_o, i0_i1_i', 'vectorize(i0_i1_i)']

    Given to explorer.compile (one Schedule for every kernel, or {kernel name: Schedule}), it replaces
    the target's default schedule; the `tiled` stage shows the loop nest it gives:

    >>> import numpy as np, explorer
    >>> s = Schedule(); io, ii = s.split("i0", 4); s.bind(io, "blockIdx.x"); s.bind(ii, "threadIdx.x")
    >>> c = explorer.compile(lambda a: np.exp(a) * 2, np.ones(16, np.float32), target="sim", schedule=s)
    >>> print("\\n".join(c.stage("tiled").text().splitlines()[-3:]))
      for i0_o in blockIdx.x(4):
        for i0_i in threadIdx.x(4):
          out0[i0_o * 4 + i0_i] = exp(a[i0_o * 4 + i0_i]) * 2.0f
    """

    def __init__(self, primitives: Iterable[Primitive] = (), notes: Iterable[str] = ()):
        self.primitives: list[Primitive] = list(primitives)
        self.notes: list[str] = list(notes)   # why a default chose what it chose

    def split(self, axis: str, factor: int, names: tuple[str, str] | None = None) -> tuple[str, str]:
        """Split loop `axis` into an outer and an inner loop of extent `factor`; returns their names
        (`names`, or axis_o, axis_i). A factor that does not divide the extent gets a bounds guard.

        >>> Schedule().split("i", 32), Schedule().split("k", 8, names=("k_o", "k_i"))
        (('i_o', 'i_i'), ('k_o', 'k_i'))
        """
        if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
            raise ScheduleError(f"split({axis}, {factor!r}): the factor must be a positive integer")
        outer, inner = names or (f"{axis}_o", f"{axis}_i")
        self.primitives.append(Split(axis, factor, outer, inner))
        return outer, inner

    def fuse(self, *axes: str, name: str | None = None) -> str:
        """Merge adjacent loops `axes` (outermost first) into one loop; returns its name.

        >>> Schedule().fuse("i", "j")
        'i_j'
        """
        if len(axes) < 2:
            raise ScheduleError(f"fuse needs at least two axes, got {axes}")
        fused = name or "_".join(axes)
        self.primitives.append(Fuse(tuple(axes), fused))
        return fused

    def reorder(self, *order: str) -> None:
        """Nest these loops in this order, outermost first.

        >>> s = Schedule(); s.reorder("j", "i"); print(s)
        reorder(j, i)
        """
        self.primitives.append(Reorder(tuple(order)))

    def bind(self, axis: str, thread: str) -> None:
        """Map loop `axis` onto a CUDA grid or block index (blockIdx.x/y/z, threadIdx.x/y/z).

        >>> s = Schedule(); s.bind("i_o", "blockIdx.x"); print(s)
        bind(i_o, blockIdx.x)
        """
        self.primitives.append(Bind(axis, thread))

    def parallel(self, axis: str) -> None:
        """Run loop `axis`'s iterations on OpenMP threads (CPU).

        >>> s = Schedule(); s.parallel("i_o"); print(s)
        parallel(i_o)
        """
        self.primitives.append(Parallel(axis))

    def vectorize(self, axis: str) -> None:
        """Compute loop `axis` in SIMD lanes (a `vectorized` loop; C: `#pragma omp simd`).

        >>> s = Schedule(); s.vectorize("i_i"); print(s)
        vectorize(i_i)
        """
        self.primitives.append(Vectorize(axis))

    def unroll(self, axis: str) -> None:
        """Unroll loop `axis` (its extent is a constant) in the generated code.

        >>> s = Schedule(); s.unroll("k_i"); print(s)
        unroll(k_i)
        """
        self.primitives.append(Unroll(axis))

    def cache_read(self, buffer: str, scope: str, at: str) -> None:
        """Stage the tile of input `buffer` that the loops inside `at` read in `scope` memory
        ('shared': copied by the whole block once per iteration of `at`, then a barrier).

        >>> s = Schedule(); s.cache_read("a", "shared", at="k_o"); print(s)
        cache_read(a, shared, at=k_o)
        """
        self.primitives.append(CacheRead(buffer, scope, at))

    def cache_write(self, scope: str, at: str) -> None:
        """Keep a matmul's accumulators for the loops inside `at` in a `scope` ('local': registers)
        tile, written to the output once after the reduction.

        >>> s = Schedule(); s.cache_write("local", at="j_t"); print(s)
        cache_write(local, at=j_t)
        """
        self.primitives.append(CacheWrite(scope, at))

    def double_buffer(self, buffer: str) -> None:
        """Give the shared tile of `buffer` (already cache_read into 'shared') two slots: the loop
        copies tile k+1 into one while computing on tile k from the other, one barrier per step.

        >>> s = Schedule(); s.cache_read("a", "shared", at="k_o"); s.double_buffer("a"); print(s)
        cache_read(a, shared, at=k_o)
        double_buffer(a)
        """
        self.primitives.append(DoubleBuffer(buffer))

    def tensorize(self, axis: str, intrinsic: str = "wmma_16x16x16") -> None:
        """Compute the loops from `axis` inward (i rows, j columns, k step of a warp's tile, in that
        order) with tensor-core `intrinsic` on a warp: threadIdx.x becomes the 32 lanes of a warp.

        >>> s = Schedule(); s.tensorize("i_f", "wmma_16x16x16"); print(s)
        tensorize(i_f, wmma_16x16x16)
        """
        self.primitives.append(Tensorize(axis, intrinsic))

    def __iter__(self):
        return iter(self.primitives)

    def __len__(self) -> int:
        return len(self.primitives)

    def text(self) -> str:
        """The primitives, one a line, in order (as the `tiled` snapshot lists them).

        >>> s = Schedule(); s.parallel("i"); s.vectorize("j"); print(s.text())
        parallel(i)
        vectorize(j)
        """
        return "\n".join(str(p) for p in self.primitives)

    __str__ = text

    def __repr__(self) -> str:
        return f"Schedule([{'; '.join(str(p) for p in self.primitives)}])"


# ----------------------------------------------------------------------------- applying
@dataclass
class Leaf:
    name: str
    extent: int
    reduce: bool
    kind: str = "serial"


@dataclass
class AxisState:
    """The result of applying a Schedule to a compute's axes."""

    leaves: list[Leaf]
    relations: dict[str, tuple]             # axis → ('split', outer, inner, factor) | ('fuse', fused, pos) | ('leaf',)
    extents: dict[str, int]
    roots: list[str]
    cache_reads: list[CacheRead] = field(default_factory=list)
    cache_write: CacheWrite | None = None
    guards: list[tuple[str, int]] = field(default_factory=list)  # (axis, extent) whose split overflows
    double_buffers: list[str] = field(default_factory=list)      # cache_read buffers with two shared slots
    tensorize: Tensorize | None = None                           # warp-level tensor-core tile

    def leaf(self, name: str) -> Leaf:
        for l in self.leaves:
            if l.name == name:
                return l
        raise ScheduleError(f"axis {name!r} is not a loop of this kernel now; loops are "
                            f"{', '.join(l.name for l in self.leaves)}")

    def value(self, axis: str, subst: dict[str, L.Expr] | None = None) -> L.Expr:
        """The expression of `axis` in leaf variables (leaves in `subst` replaced)."""
        rel = self.relations.get(axis, ("leaf",))
        if rel[0] == "leaf":
            return (subst or {}).get(axis, L.Var(axis))
        if rel[0] == "split":
            _, outer, inner, factor = rel
            return L.simplify_expr(self.value(outer, subst) * factor + self.value(inner, subst))
        _, fused, later, first = rel   # fuse(a, b, c) -> f: a = f / C / B, b = f / C % B, c = f % C
        v = self.value(fused, subst)
        for e in later:
            v = v / e
        return L.simplify_expr(v if first else v % self.extents[axis])

    def roots_of(self, axis: str) -> set[str]:
        """The original axes whose value depends on `axis` (several for a fused axis)."""
        out = set()
        for r in self.roots:
            if axis == r or axis in self._descendants(r):
                out.add(r)
        return out

    def _descendants(self, axis: str) -> set[str]:
        rel = self.relations.get(axis, ("leaf",))
        if rel[0] == "leaf":
            return set()
        kids = {rel[1], rel[2]} if rel[0] == "split" else {rel[1]}
        out = set(kids)
        for k in kids:
            out |= self._descendants(k)
        return out

    def chain_has_fuse(self, axis: str) -> bool:
        rel = self.relations.get(axis, ("leaf",))
        if rel[0] == "leaf":
            return False
        if rel[0] == "fuse":
            return True
        return self.chain_has_fuse(rel[1]) or self.chain_has_fuse(rel[2])

    def leaves_of(self, axis: str) -> list[str]:
        rel = self.relations.get(axis, ("leaf",))
        if rel[0] == "leaf":
            return [axis]
        if rel[0] == "split":
            return self.leaves_of(rel[1]) + self.leaves_of(rel[2])
        return self.leaves_of(rel[1])

    def bound(self, kind_prefix: str) -> list[Leaf]:
        return [l for l in self.leaves if l.kind.startswith(kind_prefix)]


def apply(schedule: Schedule, spatial: Sequence[tuple[str, int]], reduce: Sequence[tuple[str, int]],
          buffers: Sequence[str] = (), kernel: str = "kernel") -> AxisState:
    """Apply the primitives in order to the axes; ScheduleError names the problem and the limit."""
    leaves = [Leaf(n, e, False) for n, e in spatial] + [Leaf(n, e, True) for n, e in reduce]
    st = AxisState(leaves, {}, {n: e for n, e in (*spatial, *reduce)}, [n for n, _ in (*spatial, *reduce)])
    where = f"schedule of {kernel}"

    def pos(name: str) -> int:
        for k, l in enumerate(st.leaves):
            if l.name == name:
                return k
        raise ScheduleError(f"{where}: axis {name!r} is not a loop here; loops are "
                            f"{', '.join(l.name for l in st.leaves)}")

    def fresh(name: str):
        if name in st.extents:
            raise ScheduleError(f"{where}: axis name {name!r} is already used; pass names=(...) to split")

    for p in schedule:
        if isinstance(p, Split):
            k = pos(p.axis)
            leaf = st.leaves[k]
            if p.factor > leaf.extent:
                raise ScheduleError(f"{where}: split({p.axis}, {p.factor}): the tile {p.factor} is larger than the "
                                    f"axis extent {leaf.extent}; use a tile ≤ {leaf.extent}")
            fresh(p.outer); fresh(p.inner)
            outer_ext = -(-leaf.extent // p.factor)
            st.leaves[k:k + 1] = [Leaf(p.outer, outer_ext, leaf.reduce), Leaf(p.inner, p.factor, leaf.reduce)]
            st.relations[p.axis] = ("split", p.outer, p.inner, p.factor)
            st.extents[p.outer], st.extents[p.inner] = outer_ext, p.factor
            if leaf.extent % p.factor:
                st.guards.append((p.axis, leaf.extent))
        elif isinstance(p, Fuse):
            ks = [pos(a) for a in p.axes]
            if ks != list(range(ks[0], ks[0] + len(ks))):
                raise ScheduleError(f"{where}: fuse{p.axes}: axes must be adjacent loops in order")
            kinds = {st.leaves[k].reduce for k in ks}
            if len(kinds) > 1:
                raise ScheduleError(f"{where}: fuse{p.axes}: cannot fuse a reduction axis with a spatial axis")
            fresh(p.fused)
            total = 1
            for k in ks:
                total *= st.leaves[k].extent
            exts = [st.leaves[k].extent for k in ks]
            for n_ in range(len(ks)):
                # nested divisions ((f / e_last) / ...) so that flattening simplifies back to f
                st.relations[p.axes[n_]] = ("fuse", p.fused, tuple(reversed(exts[n_ + 1:])), n_ == 0)
            st.leaves[ks[0]:ks[-1] + 1] = [Leaf(p.fused, total, st.leaves[ks[0]].reduce)]
            st.extents[p.fused] = total
        elif isinstance(p, Reorder):
            ks = sorted(pos(a) for a in p.order)
            if len(set(p.order)) != len(p.order):
                raise ScheduleError(f"{where}: reorder{p.order}: an axis is listed twice")
            by_name = {l.name: l for l in st.leaves}
            for k, name in zip(ks, p.order):
                st.leaves[k] = by_name[name]
        elif isinstance(p, Bind):
            if p.thread not in L.BOUND_KINDS:
                raise ScheduleError(f"{where}: bind({p.axis}, {p.thread!r}): bind to one of {', '.join(L.BOUND_KINDS)}")
            if any(l.kind == p.thread for l in st.leaves):
                raise ScheduleError(f"{where}: {p.thread} is already bound; each block/thread axis binds one loop")
            leaf = st.leaves[pos(p.axis)]
            if leaf.reduce and p.thread.startswith("blockIdx"):
                # blocks cannot combine their partial results (no grid-wide barrier): each would write its own
                raise ScheduleError(f"{where}: bind({p.axis}, {p.thread}): {p.axis} is a reduction axis, and blocks "
                                    f"cannot combine partial results; bind it to threadIdx (a tree reduction) or "
                                    f"keep it a serial loop")
            leaf.kind = p.thread
        elif isinstance(p, (Parallel, Vectorize, Unroll)):
            leaf = st.leaves[pos(p.axis)]
            kind = {Parallel: "parallel", Vectorize: "vectorized", Unroll: "unrolled"}[type(p)]
            if kind == "parallel" and leaf.reduce:
                raise ScheduleError(f"{where}: parallel({p.axis}): a reduction axis cannot run in parallel "
                                    f"(threads would race on the accumulator); bind it to threadIdx for a tree reduction")
            if kind == "vectorized" and leaf.extent > 64:
                raise ScheduleError(f"{where}: vectorize({p.axis}): extent {leaf.extent} is over 64 lanes; "
                                    f"split it first, e.g. split({p.axis}, 8)")
            if kind == "unrolled" and leaf.extent > 256:
                raise ScheduleError(f"{where}: unroll({p.axis}): extent {leaf.extent} is over the unroll limit 256; "
                                    f"split it first")
            leaf.kind = kind
        elif isinstance(p, CacheRead):
            if p.scope not in ("shared", "local"):
                raise ScheduleError(f"{where}: cache_read scope must be 'shared' or 'local', got {p.scope!r}")
            if p.buffer not in buffers and p.buffer.partition("#")[0] not in buffers:
                raise ScheduleError(f"{where}: cache_read({p.buffer!r}): not an operand this kernel can stage; "
                                    f"stageable operands are {', '.join(buffers) or 'none'} (an operand read through "
                                    f"a reshape or broadcast is read from global memory)")
            pos(p.at)
            st.cache_reads.append(p)
        elif isinstance(p, CacheWrite):
            if p.scope != "local":
                raise ScheduleError(f"{where}: cache_write scope must be 'local' (registers), got {p.scope!r}")
            pos(p.at)
            st.cache_write = p
        elif isinstance(p, DoubleBuffer):
            shared = [cr.buffer for cr in st.cache_reads if cr.scope == "shared"]
            if p.buffer not in shared:
                local = any(cr.buffer == p.buffer for cr in st.cache_reads)
                raise ScheduleError(
                    f"{where}: double_buffer({p.buffer!r}): " + (
                        f"{p.buffer} is cache_read into 'local', not 'shared'; only a shared tile is double-buffered"
                        if local else f"{p.buffer} is not cache_read into shared memory before it; add "
                        f"cache_read({p.buffer}, 'shared', at=...) first") +
                    f" (shared tiles so far: {', '.join(shared) or 'none'})")
            if p.buffer in st.double_buffers:
                raise ScheduleError(f"{where}: double_buffer({p.buffer!r}) is given twice")
            st.double_buffers.append(p.buffer)
        elif isinstance(p, Tensorize):
            if p.intrinsic not in TENSOR_INTRINSICS:
                raise ScheduleError(f"{where}: tensorize({p.axis}, {p.intrinsic!r}): unknown intrinsic; known: "
                                    f"{', '.join(TENSOR_INTRINSICS)}")
            if st.tensorize is not None:
                raise ScheduleError(f"{where}: tensorize is given twice ({st.tensorize.axis} and {p.axis})")
            pos(p.axis)
            st.tensorize = p
        else:
            raise ScheduleError(f"{where}: unknown schedule primitive {p!r}")
    _validate_launch(st, where)
    return st


def _validate_launch(st: AxisState, where: str) -> None:
    threads = 1
    for l in st.leaves:
        if l.kind in THREAD_AXES:
            threads *= l.extent
        if l.kind in ("blockIdx.y", "blockIdx.z") and l.extent > MAX_GRID_YZ:
            raise ScheduleError(f"{where}: {l.name} bound to {l.kind} has {l.extent} blocks, over the CUDA limit "
                                f"{MAX_GRID_YZ} for grid y/z; bind it to blockIdx.x or split it")
        if l.kind == "blockIdx.x" and l.extent > MAX_GRID_X:
            raise ScheduleError(f"{where}: {l.extent} blocks along x is over the CUDA limit {MAX_GRID_X}")
    if st.tensorize is not None:
        threads *= WARP_SIZE   # tensorize makes threadIdx.x the 32 lanes of each warp
    if threads > MAX_THREADS_PER_BLOCK:
        raise ScheduleError(f"{where}: {threads} threads per block is over the CUDA limit of "
                            f"{MAX_THREADS_PER_BLOCK}; use smaller thread tiles"
                            + (" (tensorize: 32 lanes per warp)" if st.tensorize is not None else ""))


# ----------------------------------------------------------------------------- knobs and defaults
KNOBS = {
    "tile": "matmul block tile (BM, BN, BK)",
    "thread_tile": "matmul per-thread register tile (TM, TN)",
    "threads": "threads per block for elementwise/reduction kernels (CUDA)",
    "vector": "elements per thread / SIMD chunk for elementwise kernels",
    "unroll": "unroll the innermost loops (bool)",
    "shared": "stage matmul operands in shared memory (bool, CUDA)",
    "double_buffer": "two shared-memory slots per staged matmul tile: copy the next k tile during the "
                     "compute, one barrier per k step (bool, CUDA; default on when it fits in 48 KiB)",
    "chunk": "elements per parallel chunk on the CPU",
    "tensor_core": "f16 matmul on tensor cores: WMMA 16x16x16 fragments from the shared tiles, f32 accumulation "
                   "(bool, CUDA/sim only, ignored on the CPU; default on when the operands are f16 and "
                   "M, N, K >= 16)",
    "attention_tile": "fused attention (BQ, BK): query rows per block and keys per tile of the online softmax "
                      "(CUDA/sim: one thread per query row, K and V tiles in shared memory)",
    "conv_tile_k": "conv2d output channels per block (CUDA/sim; default 32, capped by the channels)",
    "conv_tile_p": "conv2d output pixels per block (CUDA/sim; default 256 // conv_tile_k; "
                   "conv_tile_k x conv_tile_p <= 1024 threads)",
}


def check_knobs(knobs: dict[str, Any]) -> dict[str, Any]:
    unknown = [k for k in knobs if k not in KNOBS]
    if unknown:
        raise ScheduleError(f"unknown schedule knob(s) {', '.join(map(repr, unknown))}; knobs are: "
                            + "; ".join(f"{k}: {v}" for k, v in KNOBS.items()))
    out = dict(knobs)

    def positive(name, v):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ScheduleError(f"schedule knob {name}: {v!r} must be a positive integer")
    if "tile" in out:
        t = tuple(out["tile"]) if isinstance(out["tile"], (tuple, list)) else None
        if t is None or len(t) != 3:
            raise ScheduleError(f"schedule knob tile: {out['tile']!r} must be a 3-tuple (BM, BN, BK), e.g. (64, 64, 16)")
        for v in t:
            positive("tile", v)
        out["tile"] = t
    for name, form in (("thread_tile", "(TM, TN), e.g. (4, 4)"), ("attention_tile", "(BQ, BK), e.g. (32, 64)")):
        if name in out:
            t = tuple(out[name]) if isinstance(out[name], (tuple, list)) else ()
            if len(t) != 2:
                raise ScheduleError(f"schedule knob {name}: {out[name]!r} must be {form}")
            for v in t:
                positive(name, v)
            out[name] = t
    for k in ("threads", "vector", "chunk", "conv_tile_k", "conv_tile_p"):
        if k in out:
            positive(k, out[k])
    import numpy as np
    for k in ("double_buffer", "tensor_core", "shared", "unroll"):
        if k in out:
            v = out[k]
            if not isinstance(v, (bool, np.bool_)):
                raise ScheduleError(f"schedule knob {k}: {v!r} must be True or False")
            out[k] = bool(v)
    return out


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


def default_schedule(compute, target: str, knobs: dict[str, Any] | None = None) -> Schedule:
    """The default Schedule for a compute definition on 'cuda' (also used by sim) or 'cpu'."""
    knobs = check_knobs(knobs or {})
    if any(a.extent == 0 for a in (*compute.spatial, *compute.reduce)):
        # a zero-size array: the naive loop nest runs zero (or, for an empty reduction, only the
        # initialising) iterations; tiles of an empty axis cannot be formed
        return Schedule(notes=("an axis has extent 0 (a zero-size array): naive loops, no tiling",))
    if getattr(compute, "pattern", "") == "conv2d":
        return _cpu_conv(compute, knobs) if target == "cpu" else _cuda_conv(compute, knobs)
    if target == "cpu":
        return _cpu_default(compute, knobs)
    return _cuda_default(compute, knobs)


def _fuse_all(s: Schedule, names: list[str], name: str) -> str | None:
    if not names:
        return None
    if len(names) == 1:
        return names[0]
    return s.fuse(*names, name=name)


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
    """Direct convolution: a block owns TP output pixels x TK output channels, one thread per output,
    each thread summing over (kh, kw, ic); threadIdx.x runs along the channels so a warp reads
    consecutive weights (and, depthwise, consecutive input channels) in one transaction."""
    s = Schedule()
    K = c.axis("oc").extent
    P = c_extent(c, ["n", "oh", "ow"])
    TK = min(knobs.get("conv_tile_k", 32), _pow2_at_most(K, 32))
    TP = min(knobs.get("conv_tile_p", max(1, 256 // TK)), _pow2_at_most(P, 256))
    if TP * TK > 1024:
        raise ScheduleError(f"conv2d schedule: conv_tile_p {TP} x conv_tile_k {TK} = {TP * TK} threads per block; "
                            f"CUDA allows at most 1024: lower conv_tile_p or conv_tile_k")
    pix = s.fuse("n", "oh", "ow", name="pix")
    po, pi = s.split(pix, TP, names=("pix_o", "pix_i"))
    ko, ki = s.split("oc", TK, names=("oc_o", "oc_i"))
    s.reorder(po, ko, pi, ki, "kh", "kw", "ic")
    s.bind(po, "blockIdx.x")
    s.bind(ko, "blockIdx.y")
    s.bind(pi, "threadIdx.y")
    s.bind(ki, "threadIdx.x")
    s.notes.append(f"conv2d: direct, {TP} output pixels x {TK} output channels per block, one thread per output "
                   f"accumulating over (kh, kw, ic); padding is a bounds select on the input load")
    return s


def c_extent(c, names: Sequence[str]) -> int:
    n = 1
    for a in c.axes:
        if a.name in names:
            n *= a.extent
    return n


def _tc_operands(c) -> tuple[tuple[str, str] | None, str]:
    """(names of the f16 A and B buffers for cache_read, '') when the matmul can run on tensor cores,
    else (None, why not). The accumulation must be exactly f32(A[.., i, k]) * f32(B[.., k, j])
    (either operand may be transposed) with f16 A and B summed in f32."""
    if c.kind != "contraction" or len(c.accums) != 1:
        return None, "not a matmul"
    acc = c.accums[0]
    if acc.op != "sum" or acc.buffer.dtype != "f32":
        return None, f"the accumulator is {acc.buffer.dtype}, tensor cores accumulate f16 products in f32"
    v = acc.value
    if not (isinstance(v, L.BinOp) and v.op == "*"):
        return None, "the accumulation is not a plain product of the two operands"
    loads = []
    for x, inner in ((v.a, "k"), (v.b, "k")):
        ld = x.a if isinstance(x, L.Cast) and x.dtype == "f32" else x
        if not isinstance(ld, L.Load):
            return None, "an operand is computed (a fused prologue), not read from memory"
        if ld.buffer.dtype != "f16":
            return None, f"operand {ld.buffer.name} is {ld.buffer.dtype}; the WMMA path needs f16 operands"
        if not all(isinstance(ix, (L.Var, L.Const)) for ix in ld.indices):
            return None, f"operand {ld.buffer.name} is not indexed by plain loop axes"
        loads.append(ld)
    a, b = loads
    ai = {ix.name for ix in a.indices[-2:] if isinstance(ix, L.Var)}
    bi = {ix.name for ix in b.indices[-2:] if isinstance(ix, L.Var)}
    if ai != {"i", "k"} or bi != {"k", "j"}:
        return None, "the operands' last two dimensions are not (i, k) and (k, j)"
    names = (a.buffer.name, b.buffer.name if b.buffer.name != a.buffer.name else f"{b.buffer.name}#1")
    return names, ""


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
        operands, why = _tc_operands(c)
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


# lanes of a 32-byte (AVX2) vector per accumulator dtype: the CPU matmul tile's width unit
CPU_VECTOR_LANES = {"f32": 8, "i32": 8, "f64": 4, "i64": 4}


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
    # then row tiles across OpenMP threads, each keeping a TM x TN register tile of accumulators.
    # TM x TN accumulators as 32-byte vectors (codegen/c.py keeps them in registers): 6 rows x 2
    # vectors = 12 of the 16 AVX2 registers, plus 2 for the B row and 1 for the broadcast A value
    # (the BLIS Haswell micro-kernel shape); other dtypes keep the scalar (4, 32) tile.
    acc_dt = c.accums[0].buffer.dtype if c.accums else "f32"
    lanes = CPU_VECTOR_LANES.get(acc_dt)
    TM, TN = knobs.get("thread_tile", (6, 2 * lanes) if lanes else (4, 32))
    TM, TN = min(TM, M), min(TN, N)
    batch = [a.name for a in c.spatial[:-2]]
    io, ir = s.split("i", TM, names=("i_o", "i_r"))
    jo, jv = s.split("j", TN, names=("j_o", "j_v"))
    if batch:
        bf = _fuse_all(s, batch, "batch")
        s.reorder(bf, jo, io, "k", ir, jv)
    else:
        s.reorder(jo, io, "k", ir, jv)
    tiny = c_extent(c, batch) * M * N * K < SMALL_MATMUL_MACS
    if not tiny:   # a team per (batch, j tile) costs more than a tiny product (q @ k.T of one head)
        s.parallel(io)
    if len(c.operands) == 2 and knobs.get("shared", True) and K * TN * 4 <= 4 << 20:
        s.cache_read(c.operands[1], "local", at=jo)
    s.cache_write("local", at=io)
    s.unroll(ir)
    s.vectorize(jv)
    s.notes.append(f"matmul: B panel of {TN} columns packed contiguously, {TM}x{TN} register tile of "
                   f"accumulators, " + ("one thread (under 2 M multiply-adds)" if tiny
                                        else "row tiles across OpenMP threads"))
    return s


# Below this many multiply-adds a matmul runs on one thread: an OpenMP fork/join costs about as much
# as the whole product (16x64 @ 64x192 is 0.2 M: ~5 us serial, ~35 us with a team of two here).
SMALL_MATMUL_MACS = 1 << 21
PARALLEL_MATMUL_MACS = 1 << 20
# The row-streaming tile (TM rows x all N columns of accumulators) must stay in L1 with room for B's row.
STREAM_TILE_BYTES = 16 << 10


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
          acc[TM, N] = 0                          # TM rows of C, in L1
          for k in range(K):
            for i_r in unrolled(TM):
              for j_o in range(N / 16):
                for j_v in vectorized(16):
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
    TM = min(M, 4)
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
    cols = N // chunks
    s.notes.append(f"small matmul ({macs} multiply-adds < {SMALL_MATMUL_MACS}): "
                   + (f"{chunks} column chunks across OpenMP threads, " if jp else "one thread (no OpenMP team), ")
                   + f"B streamed row by row into a {TM}x{cols} accumulator tile in L1, {TN} columns per SIMD "
                   f"step, no packing")
    return s


def _cpu_conv(c, knobs) -> Schedule:
    """Direct convolution on the CPU: output rows (n, oh) across OpenMP threads; inside a row a register
    tile of TW output columns x TK output channels (TK a multiple of the SIMD width) accumulates over
    (kh, kw, ic): each weight vector w[kh, kw, ic, oc:oc+TK] is loaded once and reused for TW pixels,
    each input value is broadcast across the TK channels."""
    s = Schedule()
    K, Wo = c.axis("oc").extent, c.axis("ow").extent
    acc_dt = c.accums[0].buffer.dtype if c.accums else "f32"
    lanes = CPU_VECTOR_LANES.get(acc_dt, 4)
    TW, TK = knobs.get("thread_tile", (4, 2 * lanes))
    TW, TK = min(TW, Wo), min(TK, K)
    row = s.fuse("n", "oh", name="row")
    wo, wi = s.split("ow", TW, names=("ow_o", "ow_i"))
    ko, kv = s.split("oc", TK, names=("oc_o", "oc_v"))
    s.reorder(row, wo, ko, "kh", "kw", "ic", wi, kv)
    s.parallel(row)
    s.cache_write("local", at=ko)
    s.unroll(wi)
    s.vectorize(kv)
    s.notes.append(f"conv2d: output rows across OpenMP threads, a {TW}x{TK} register tile (columns x output "
                   f"channels) accumulating over (kh, kw, ic), SIMD over output channels")
    return s
