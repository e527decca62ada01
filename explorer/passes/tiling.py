"""tile: ComputeProgram → Program: apply a Schedule to every compute definition and make its loop nest.

The schedule is the target's default (schedule.default_schedule, tuned by knobs), a user's Schedule
or schedule function. The loops come from the loop generator next to the definitions
(compute.loop_nest), which follows TVM's ScheduleOps: block-bound loops outermost, then
thread-bound loops, then the remaining leaves in schedule order; splits that do
not divide get bounds guards; cache_write keeps a register tile of accumulators;
cache_read stages an operand tile in shared memory (cooperative copy between two
barriers) or a local buffer; double_buffer gives a shared tile two slots (prologue
copies tile 0, each step prefetches tile k+1 into the other slot, one barrier per
step); a thread-bound reduction axis ends in an allreduce; tensorize turns a warp's tile of an f16
matmul into WMMA fragment statements (build_tensorized in compute.py shows the before/after).
On the cpu, partition_tails and index_split rewrite the loops for SIMD; on every scheduled target a
partition(axis) primitive splits that loop where its bounds tests are decided (index_split.partition_loops).

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

from typing import Any, Sequence

from .. import loopir as L
from ..compute import ComputeProgram, as_loop_target, eval_int, loop_nest
from ..errors import ExplorerError, ScheduleError
from .index_split import partition_loops, split_index_ranges
from .attention import generate_attention
from ..schedule import Partition, Schedule, Vectorize, check_knobs, default_schedule
from ..target import Target, get_target


def tile(program: ComputeProgram, schedule: Any = None, target: "str | Target" = "cuda", examples=None) -> L.Program:
    """Apply `schedule` (None: defaults; dict of knobs; Schedule for a 1-kernel program;
    {kernel name: Schedule}; or callable(compute, target) -> Schedule) for `target` to every compute
    definition of the lowered program, and make each one's loop nest (`target`: a Target or its name).

    A target whose schedules do not apply ('reference' interprets the graph with NumPy) keeps every
    kernel's naive loop nest (knobs are still checked for typos), and no GPU schedule can fail it."""
    if not isinstance(program, ComputeProgram):
        raise ExplorerError(f"tile takes the lowered stage's ComputeProgram (passes.lower.lower), got "
                            f"{type(program).__name__}")
    computes = program.computes
    target = get_target(target)
    if not target.scheduled:
        if isinstance(schedule, dict) and not all(isinstance(v, Schedule) for v in schedule.values()):
            check_knobs(schedule)
        note = f"target {target.name!r} runs NumPy on the graph: schedules do not apply, the naive loops are shown"
        kernels = [generate_kernel(c, Schedule(notes=(note,)), target) for c in computes]
        return L.Program(program.name, tuple(kernels), program.inputs, program.outputs, program.temps,
                         constants=program.constants)
    kernels = []
    per_kernel: dict[str, Any] = {}
    knobs: dict[str, Any] = {}
    if isinstance(schedule, Schedule):
        if len(computes) != 1:
            raise ScheduleError(f"one Schedule was given but the program has {len(computes)} kernels "
                                f"({', '.join(c.name for c in computes)}); pass {{kernel name: Schedule}}")
        per_kernel = {computes[0].name: schedule}
    elif isinstance(schedule, dict) and schedule and all(isinstance(v, Schedule) for v in schedule.values()):
        names = {c.name for c in computes}
        bad = [n for n in schedule if n not in names]
        if bad:
            raise ScheduleError(f"schedule for unknown kernel(s) {', '.join(bad)}; kernels are {', '.join(sorted(names))}")
        per_kernel = dict(schedule)
    elif isinstance(schedule, dict):
        knobs = check_knobs(schedule)
    elif schedule is not None and not callable(schedule):
        raise ScheduleError(f"schedule must be None, a dict of knobs, a Schedule or {{kernel: Schedule}}, "
                            f"got {type(schedule).__name__}")
    for compute in computes:
        if compute.kind == "custom":
            # the user's source is the schedule: nothing to split, bind or stage
            if compute.name in per_kernel and list(per_kernel[compute.name]):
                raise ScheduleError(f"kernel {compute.name} is a custom kernel ({compute.custom.name}); it takes no "
                                    f"Schedule: its own source decides its loops. Schedule the other kernels")
            kernels.append(generate_kernel(compute, Schedule(), target))
            continue
        try:
            if compute.kind == "attention":  # its own loop generator: the online-softmax nest
                kernels.append(generate_attention(compute, target, knobs))
                continue
            if compute.name in per_kernel:
                s = per_kernel[compute.name]
            elif callable(schedule) and not isinstance(schedule, (dict, Schedule)):
                # a user's schedule function gets the schedule family ('cpu' | 'cuda'), as before
                s = _call_schedule_fn(schedule, compute, target.schedule_family)
            else:
                s = default_schedule(compute, target, knobs)
            new = generate_kernel(compute, s, target)
        except ScheduleError as e:
            lines = "; ".join(str(x).strip() for x in compute.source_lines)
            if not lines or lines in str(e):
                raise
            # name the user's lines this kernel computes, not only its internal buffers
            raise ScheduleError(f"{e} (kernel {compute.name} computes: {lines})") from None
        kernels.append(new)
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


def generate_kernel(compute: Any, schedule: Schedule, target: "str | Target" = "cuda") -> L.Kernel:
    """The kernel of one compute definition tiled for `target` (a Target, its name, or 'naive': unscheduled
    loops, as on 'reference'): its loop nest under `schedule` (compute.loop_nest), and on the cpu the loop
    rewrites for SIMD (partition_tails, then index_split.split_index_ranges)."""
    target = as_loop_target(target)
    kernel = loop_nest(compute, schedule, target)
    wide = {p.axis: p.vector_bytes for p in schedule if isinstance(p, Vectorize) and p.vector_bytes}
    if wide:
        kernel = kernel.replace(body=annotate_vector_bytes(kernel.body, wide))
    if target.openmp and compute.kind not in ("custom", "attention"):
        # loops for a C compiler: peel tails and split at selects so each loop vectorizes
        kernel = kernel.replace(body=split_index_ranges(partition_tails(kernel.body)))
    parts = {p.axis for p in schedule if isinstance(p, Partition)}
    if parts and target.scheduled:
        kernel = kernel.replace(body=partition_loops(kernel.body, parts))
    return kernel


def annotate_vector_bytes(stmts: Sequence[L.Stmt], vector_bytes: dict[str, int]) -> tuple[L.Stmt, ...]:
    """Mark the vectorized loops that Schedule.vectorize(axis, vector_bytes) names with
    ('vector_bytes', n): passes/vectorize_cpu.py makes a micro-kernel's register vectors that wide."""
    def visit(s: L.Stmt):
        if isinstance(s, L.For) and s.kind == "vectorized" and s.var.name in vector_bytes:
            return L.For(s.var, s.extent, s.body, s.kind,
                         s.annotations + (("vector_bytes", vector_bytes[s.var.name]),))
        return None
    return L.map_stmts(stmts, visit)


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
                return L.For(s.var, s.extent, (L.If(L.BinOp("<", s.var, L.Const(s.extent - 1)), fast, slow),), s.kind,
                             s.annotations)
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
        return eval_int(e.a, env) < eval_int(e.b, env)
    raise ScheduleError(f"not a bounds guard: {e}")


def _strip_guard(body):
    def fn(s):
        if isinstance(s, L.For) and s.kind == "vectorized" and len(s.body) == 1 and isinstance(s.body[0], L.If):
            return L.For(s.var, s.extent, s.body[0].then, s.kind, s.annotations)   # keeps ('vector_bytes', 64)
        return None
    return L.map_stmts(body, fn)


def _serialize(body):
    def fn(s):
        if isinstance(s, L.For) and s.kind == "vectorized":
            return L.For(s.var, s.extent, s.body, "serial")
        return None
    return L.map_stmts(body, fn)
