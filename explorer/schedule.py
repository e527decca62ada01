"""Schedules as data (TVM te.Schedule / Halide style): split, fuse, reorder, bind,
parallel, vectorize, unroll, cache_read, cache_write, double_buffer, tensorize, partition.

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
from .target import Target, get_target

# hardware limits the validation names (CUDA compute capability ≥ 7): the GPU targets' (explorer/target.py)
MAX_THREADS_PER_BLOCK: int = get_target("cuda").max_threads_per_block  # type: ignore[assignment]
MAX_SHARED_BYTES: int = get_target("cuda").max_shared_bytes            # type: ignore[assignment]  # static, per block
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
    # bytes per register vector of a micro-kernel over this loop (CPU; None: the target's 32-byte vectors)
    vector_bytes: int | None = None

    def __str__(self):
        return f"vectorize({self.axis})" if self.vector_bytes is None else \
            f"vectorize({self.axis}, {self.vector_bytes} bytes)"


@dataclass(frozen=True)
class Partition:
    """Split loop `axis` into the ranges where the kernel's bounds tests (a conv's padding selects,
    partial-tile guards) are decided, each range its own loop with the decided tests folded away
    (Halide's partition, TVM's loop partition; passes/index_split.partition_loops)."""

    axis: str

    def __str__(self): return f"partition({self.axis})"


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

    def vectorize(self, axis: str, vector_bytes: int | None = None) -> None:
        """Compute loop `axis` in SIMD lanes (a `vectorized` loop; C: `#pragma omp simd`).
        `vector_bytes` (CPU: 32 or 64) sets the register vectors of a micro-kernel over it (default:
        the target's 32-byte vectors; 64 is one AVX-512 register, and gcc splits it on narrower ISAs).

        >>> s = Schedule(); s.vectorize("i_i"); s.vectorize("oc_v", 64); print(s)
        vectorize(i_i)
        vectorize(oc_v, 64 bytes)
        """
        self.primitives.append(Vectorize(axis, vector_bytes))

    def partition(self, axis: str) -> None:
        """Split loop `axis` where the kernel's bounds tests change value: the interior runs without
        them (a conv's padding select, a partial tile's guard), the borders keep them.

        >>> s = Schedule(); s.partition("oh"); print(s)
        partition(oh)
        """
        self.primitives.append(Partition(axis))

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
            if axis == r or axis in self.descendants(r):
                out.add(r)
        return out

    def descendants(self, axis: str) -> set[str]:
        """Every axis made from `axis` by splits and fuses (not `axis` itself)."""
        rel = self.relations.get(axis, ("leaf",))
        if rel[0] == "leaf":
            return set()
        kids = {rel[1], rel[2]} if rel[0] == "split" else {rel[1]}
        out = set(kids)
        for k in kids:
            out |= self.descendants(k)
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
            if kind == "vectorized" and p.vector_bytes not in (None, 32, 64):
                raise ScheduleError(f"{where}: vectorize({p.axis}, {p.vector_bytes}): vector_bytes must be 32 "
                                    f"(AVX2) or 64 (AVX-512), or left out")
            leaf.kind = kind
        elif isinstance(p, Partition):
            leaf = st.leaves[pos(p.axis)]
            if leaf.kind in L.BOUND_KINDS:
                raise ScheduleError(f"{where}: partition({p.axis}): {p.axis} is bound to {leaf.kind}, whose range is "
                                    f"the launch grid; partition a loop that is not bound")
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
    "thread_tile": "per-thread register tile: matmul (TM, TN); conv2d CPU (output columns, channels), "
                   "CUDA/sim (output pixels, channels; default (2, 4) when oc >= 32 and pixels >= 32)",
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
    "conv_tile_c": "conv2d input channels per shared-memory reduction step (CUDA/sim; default 16, capped by "
                   "the channels per group)",
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
    for k in ("threads", "vector", "chunk", "conv_tile_k", "conv_tile_p", "conv_tile_c"):
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


def default_schedule(compute, target: "str | Target", knobs: dict[str, Any] | None = None) -> Schedule:
    """The default Schedule for a compute definition on `target` (a Target or its name): the
    schedule family the Target names (explorer/schedules/cpu.py, explorer/schedules/cuda.py: cuda and
    sim share it); the reference target keeps the naive loops.

    >>> import numpy as np, explorer
    >>> c = explorer.compile(lambda a: a * 2, np.ones(1000, np.float32), target="sim", stop_after="lowered")
    >>> compute = c.stage("lowered").ir.computes[0]
    >>> print(default_schedule(compute, "cuda"))
    split(i0, 256) -> blk, thr
    bind(blk, blockIdx.x)
    bind(thr, threadIdx.x)
    """
    knobs = check_knobs(knobs or {})
    family = get_target(target).schedules
    if family is None:
        return Schedule(notes=(f"target {str(target)!r} runs NumPy on the graph: schedules do not apply",))
    if any(a.extent == 0 for a in (*compute.spatial, *compute.reduce)):
        # a zero-size array: the naive loop nest runs zero (or, for an empty reduction, only the
        # initialising) iterations; tiles of an empty axis cannot be formed
        return Schedule(notes=("an axis has extent 0 (a zero-size array): naive loops, no tiling",))
    import importlib
    return importlib.import_module(family).default_schedule(compute, knobs)


def tc_operands(c) -> tuple[tuple[str, str] | None, str]:
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


_MOVED_TO_SCHEDULES = {"rearranged_loads": "cpu", "select_axes": "cpu", "CPU_VECTOR_LANES": "cpu",
                       "SMALL_MATMUL_MACS": "cpu", "c_extent": ""}


def __getattr__(name: str) -> Any:
    """Names that moved to explorer/schedules/ with the default schedules stay importable from here."""
    if name in _MOVED_TO_SCHEDULES:
        import importlib
        sub = _MOVED_TO_SCHEDULES[name]
        return getattr(importlib.import_module(f"explorer.schedules{'.' + sub if sub else ''}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
