"""compile(): run the stages in order, keeping an IR snapshot after each.

The stages after `traced` are the target's stage list (explorer/stages.py, through
`Target.stages()`, as Triton's backends fill their `stages` dict), then any stage registered with
`@stage(name)`:

    traced      Graph        proxy tensors recorded every op
    simplified  Graph        DCE, CSE, constant folding, identities, decomposition
    fused       FusedGraph   nodes grouped into kernels, each boundary with its reason
    lowered     ComputeProgram  one compute definition per group, shown as its naive loop nest
    tiled       Program      the schedule applied (split/reorder/bind/cache/unroll/vectorize)
    vectorized  Program      cpu: reductions in SIMD lanes, register-tiled micro-kernels (passes/vectorize_cpu);
                             cuda/sim: 4-lane vectorized loops as float4 loads/stores (passes/vectorize_cuda)
    codegen     Codegen      CUDA or C source per kernel

>>> import numpy as np, explorer
>>> x = np.ones((4, 8), np.float32); w = np.ones((8, 3), np.float32); b = np.zeros(3, np.float32)
>>> c = explorer.compile(lambda x, w, b: np.maximum(x @ w + b, 0), x, w, b, target="reference")
>>> [s.name for s in c.stages][:2]
['traced', 'simplified']
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .errors import ExplorerError
# the snapshot types live in a leaf module (Compiled, the report and the widgets share them);
# re-exported here, where callers have always imported them from
from .snapshot import Context, Options, Snapshot, TextOptionError  # noqa: F401
from .target import TARGETS as _TARGETS, Target, get_target

if TYPE_CHECKING:   # compile() returns a Compiled; imported on call (explorer/compiled.py imports no pipeline)
    from .compiled import Compiled

TARGETS = ("auto", *_TARGETS)   # the names compile accepts: 'auto' (resolve_target picks one) and every Target


StageFn = Callable[[Any, Context], Any]
# stages registered with @stage: each runs after the target's stages (in registration order), or in
# place of the target's stage of the same name
USER_STAGES: dict[str, StageFn] = {}


def stage(name: str):
    """Register a pass as a pipeline stage: it runs after the target's own stages (registration order
    is run order), or replaces the target's stage of the same name. The default stages stay.

    >>> @stage("kernels")
    ... def count_kernels(codegen, ctx):
    ...     return codegen                       # a stage returns the IR its snapshot shows
    >>> import numpy as np, explorer
    >>> explorer.compile(lambda a: a + 1, np.ones(4, np.float32), target="sim").stage_names[-2:]
    ['codegen', 'kernels']
    >>> del USER_STAGES["kernels"]
    """
    if name == "traced":
        raise ExplorerError("stage 'traced' is the trace itself; register a stage under another name")

    def deco(fn: StageFn) -> StageFn:
        USER_STAGES[name] = fn
        return fn
    return deco


def stages_for(target: "str | Target") -> list[tuple[str, StageFn]]:
    """[(name, pass)] that compile runs after `traced` on `target`: the target's stages, then the
    registered ones (a registered stage with a default's name takes that stage's place).

    >>> [name for name, _ in stages_for("cpu")]
    ['simplified', 'fused', 'lowered', 'tiled', 'vectorized', 'codegen']
    """
    stages = [(name, USER_STAGES.get(name, fn)) for name, fn in get_target(target).stages()]
    names = {name for name, _ in stages}
    return stages + [(name, fn) for name, fn in USER_STAGES.items() if name not in names]


def _ir_stats(ir: Any) -> dict[str, Any]:
    fn = getattr(ir, "stats", None)
    if fn is None:
        return {}
    return dict(fn() if callable(fn) else fn)


def resolve_target(target: str, verbose: bool = True) -> str:
    """'auto' → 'cuda' if pycuda and a GPU work, else 'cpu' if a C compiler works, else 'sim'.

    Prints one line saying why a faster target was not picked.
    """
    from .target import get_target
    if target not in TARGETS:
        raise ExplorerError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if target != "auto":
        return target
    reasons = []
    try:
        ok, why = get_target("cuda").available()
    except ImportError as e:
        ok, why = False, f"CUDA backend not importable ({e})"
    if ok:
        return "cuda"
    reasons.append(f"cuda: {why}")
    try:
        ok, why = get_target("cpu").available()
    except ImportError as e:
        ok, why = False, f"CPU backend not importable ({e})"
    if ok:
        if verbose:
            _say_once(f"explorer: target=auto → cpu ({why_short(reasons[0])})")
        return "cpu"
    reasons.append(f"cpu: {why}")
    if verbose:
        _say_once(f"explorer: target=auto → sim ({'; '.join(why_short(r) for r in reasons)})")
    return "sim"


def why_short(reason: str) -> str:
    return reason.splitlines()[0][:160]


_SAID: set[str] = set()


def _say_once(msg: str) -> None:
    if msg not in _SAID:
        _SAID.add(msg)
        print(msg)


OPTION_NAMES = ("target", "fuse", "schedule", "decompose", "fast_math", "dtype", "stop_after", "arch", "verbose")


def check_options(unknown: dict[str, Any], **flags: Any) -> None:
    """Reject misspelled keyword options and non-bool flags with one line naming the fix."""
    import difflib
    import re
    from .schedule import KNOBS
    for k in unknown:
        if k in KNOBS:
            hint = f"; {k!r} is a schedule knob: pass schedule={{{k!r}: ...}}"
        else:
            close = difflib.get_close_matches(k, OPTION_NAMES, n=1)
            hint = f"; did you mean {close[0]}=?" if close else ""
        raise ExplorerError(f"unknown compile option {k}=; options are {', '.join(OPTION_NAMES)}{hint}")
    for name in ("decompose", "fast_math", "verbose"):
        if name in flags and not isinstance(flags[name], (bool, np.bool_)):
            raise ExplorerError(f"{name}={flags[name]!r}: must be True or False")
    arch = flags.get("arch")
    if "arch" in flags and not (isinstance(arch, str) and re.fullmatch(r"(sm|compute)_\d+[a-z]?", arch)):
        raise ExplorerError(f"arch={arch!r} is not a CUDA architecture; use a string like 'sm_80' (A100) or "
                            f"'sm_90' (H100)")


def compile(fn: Callable, *examples: Any, target: str = "auto", fuse: Any = True, schedule: Any = None,
            decompose: bool = True, fast_math: bool = False, dtype: Any = None,
            stop_after: str | None = None, arch: str = "sm_80", verbose: bool = True, **unknown: Any) -> "Compiled":
    """Trace `fn` on `examples` and run every stage, keeping a Snapshot after each.

    >>> import numpy as np, explorer
    >>> c = explorer.compile(lambda a: np.tanh(a) * 2, np.ones(8, np.float32), target="reference")
    >>> c.stage("traced").stats["nodes"]   # op nodes: tanh, mul
    2
    """
    from .compiled import Compiled
    from .tracing import prepare_examples, trace

    check_options(unknown, decompose=decompose, fast_math=fast_math, verbose=verbose, arch=arch)
    opts = Options(target=target, fuse=fuse, schedule=schedule, decompose=decompose, fast_math=fast_math,
                   dtype=dtype, stop_after=stop_after, arch=arch, verbose=verbose)
    opts.target = resolve_target(target, verbose)
    stages = stages_for(opts.target)
    if stop_after is not None and stop_after not in ("traced", *(name for name, _ in stages)):
        raise ExplorerError(f"stop_after={stop_after!r} is not a stage; stages are "
                            f"{', '.join(['traced', *(name for name, _ in stages)])}")
    arrays = prepare_examples(fn, examples, dtype)
    snapshots: list[Snapshot] = []

    t0 = time.perf_counter()
    graph = trace(fn, *arrays)
    snapshots.append(Snapshot("traced", graph, {**_ir_stats(graph), "wall_ms": (time.perf_counter() - t0) * 1e3}))
    ctx = Context(opts, snapshots, arrays)
    ir = graph
    if stop_after != "traced":
        for name, fn_stage in stages:
            t0 = time.perf_counter()
            ir = fn_stage(ir, ctx)
            snapshots.append(Snapshot(name, ir, {**_ir_stats(ir), **ctx.stage_notes.get(name, {}),
                                                 "wall_ms": (time.perf_counter() - t0) * 1e3}))
            if name == stop_after:
                break
    return Compiled(fn, arrays, snapshots, opts)
