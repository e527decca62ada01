"""compile(): run the stages in order, keeping an IR snapshot after each.

Stages are an ordered registry (as Triton's `stages` dict): name -> pure pass.

    traced      Graph        proxy tensors recorded every op
    simplified  Graph        DCE, CSE, constant folding, identities, decomposition
    fused       FusedGraph   nodes grouped into kernels, each boundary with its reason
    lowered     Program      one naive loop nest per group
    tiled       Program      the schedule applied (split/reorder/bind/cache/unroll/vectorize)
    codegen     Codegen      CUDA or C source per kernel

>>> import numpy as np, explorer
>>> x = np.ones((4, 8), np.float32); w = np.ones((8, 3), np.float32); b = np.zeros(3, np.float32)
>>> c = explorer.compile(lambda x, w, b: np.maximum(x @ w + b, 0), x, w, b, target="reference")
>>> [s.name for s in c.stages][:2]
['traced', 'simplified']
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ExplorerError, TraceError

TARGETS = ("auto", "cuda", "cpu", "sim", "reference")


@dataclass
class Options:
    """Every knob of a compile, as plain data (each widget control maps to one field)."""

    target: str = "auto"
    fuse: Any = True                 # True / False / {"epilogue": False, ...}
    schedule: Any = None             # None (defaults) | dict of knobs | Schedule | {kernel: Schedule}
    decompose: bool = True           # expand composite ops in simplify
    fast_math: bool = False          # trade NumPy's NaN/Inf semantics for speed (C backend)
    dtype: Any = None                # cast float example inputs to this dtype
    stop_after: str | None = None
    arch: str = "sm_80"              # nvcc -arch for the resource report
    verbose: bool = True             # print the one-line reason when auto falls back

    def resolved_target(self) -> str:
        return self.target


class TextOptionError(ExplorerError, TypeError):
    """Snapshot.text(option=...) that this stage's IR does not take (a TypeError too, as before)."""


@dataclass
class Snapshot:
    """The IR after one stage. `text()`/`dot()` delegate to the IR; `stats` includes `wall_ms`."""

    name: str
    ir: Any
    stats: dict[str, Any] = field(default_factory=dict)

    def text(self, **kw) -> str:
        if kw:
            import inspect
            try:
                inspect.signature(self.ir.text).bind(**kw)
            except TypeError:
                params = [p for p in inspect.signature(self.ir.text).parameters if p != "self"]
                raise TextOptionError(f"stage {self.name!r}: text() takes {', '.join(f'{p}=' for p in params) or 'no'} "
                                    f"keyword option(s), got {', '.join(f'{k}=' for k in kw)}") from None
            except ValueError:
                pass
        return self.ir.text(**kw)

    def dot(self) -> str:
        return self.ir.dot()

    def to_svg(self) -> str:
        from .render import dot_to_svg
        return dot_to_svg(self.dot())

    def _repr_html_(self) -> str:
        import html
        return f"<b>{html.escape(self.name)}</b><pre>{html.escape(self.text())}</pre>"

    def __repr__(self) -> str:
        return f"<Snapshot {self.name}: {self.stats}>"


class Context:
    """What a stage may read besides its input IR: the options and earlier snapshots."""

    def __init__(self, options: Options, snapshots: list[Snapshot], examples: list[np.ndarray]):
        self.options = options
        self.snapshots = snapshots
        self.examples = examples
        self.stage_notes: dict[str, dict[str, Any]] = {}   # extra stats a stage reports (stage name → dict)

    def ir(self, name: str) -> Any:
        for s in self.snapshots:
            if s.name == name:
                return s.ir
        raise KeyError(name)


StageFn = Callable[[Any, Context], Any]
STAGES: dict[str, StageFn] = {}


def stage(name: str):
    """Register a pass as a pipeline stage; registration order is run order."""
    def deco(fn: StageFn) -> StageFn:
        STAGES[name] = fn
        return fn
    return deco


def _ir_stats(ir: Any) -> dict[str, Any]:
    fn = getattr(ir, "stats", None)
    if fn is None:
        return {}
    return dict(fn() if callable(fn) else fn)


def _register_default_stages() -> None:
    if STAGES:
        return
    from .passes.simplify import simplify

    @stage("simplified")
    def _simplified(g, ctx):
        return simplify(g, decompose=ctx.options.decompose)

    try:
        from .passes.fusion import fuse
    except ImportError:  # stage not built yet
        return

    @stage("fused")
    def _fused(g, ctx):
        return fuse(g, rules=ctx.options.fuse)

    try:
        from .ops import get as get_op
        from .passes.lower import lower
        from .passes.tiling import tile
        from .codegen import generate
    except ImportError:
        return

    @stage("lowered")
    def _lowered(fg, ctx):
        # decompose=False keeps composites (softmax, layernorm, gelu, ...) as single nodes in the graph
        # stages; they have no loop template, so the loops are made from their decomposition (re-fused)
        composites = sorted({n.op for n in fg.graph.op_nodes() if get_op(n.op).composite})
        if composites:
            fg = fuse(simplify(fg.graph, decompose=True), rules=ctx.options.fuse)
            ctx.stage_notes["lowered"] = {"note": f"decompose=False: {', '.join(composites)} kept whole in the graph "
                                                  f"stages, lowered through their decomposition (no loop template)"}
        # stash (compute a reduction's exp once, re-read it from the output) pays on the CPU, where the
        # row is in L1; on a GPU the exp is cheap and the extra global write + read is what fusion avoids
        return lower(fg, stash=ctx.options.target == "cpu")

    @stage("tiled")
    def _tiled(prog, ctx):
        return tile(prog, ctx.options.schedule, target=ctx.options.target, examples=ctx.examples)

    @stage("codegen")
    def _codegen(prog, ctx):
        cg = generate(prog, target=ctx.options.target, fast_math=ctx.options.fast_math, arch=ctx.options.arch)
        if any(k.kind == "custom" for k in prog.kernels):
            # a custom kernel's own code is checked against its NumPy reference on the example inputs
            from .custom import verify
            cg.checks = verify(ctx.ir("simplified"), ctx.examples, ctx.options.target)
        return cg


def resolve_target(target: str, verbose: bool = True) -> str:
    """'auto' → 'cuda' if pycuda and a GPU work, else 'cpu' if a C compiler works, else 'sim'.

    Prints one line saying why a faster target was not picked.
    """
    from .errors import BackendUnavailable
    if target not in TARGETS:
        raise ExplorerError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if target != "auto":
        return target
    reasons = []
    try:
        from .backends import cuda
        ok, why = cuda.available()
    except ImportError as e:
        ok, why = False, f"CUDA backend not importable ({e})"
    if ok:
        return "cuda"
    reasons.append(f"cuda: {why}")
    try:
        from .backends import cpu
        ok, why = cpu.available()
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
    if stop_after is not None and stop_after not in ("traced", *STAGES) and stop_after not in _ALL_STAGE_NAMES:
        raise ExplorerError(f"stop_after={stop_after!r} is not a stage; stages are {', '.join(_ALL_STAGE_NAMES)}")
    opts.target = resolve_target(target, verbose)
    arrays = prepare_examples(fn, examples, dtype)
    snapshots: list[Snapshot] = []

    t0 = time.perf_counter()
    graph = trace(fn, *arrays)
    snapshots.append(Snapshot("traced", graph, {**_ir_stats(graph), "wall_ms": (time.perf_counter() - t0) * 1e3}))
    _register_default_stages()
    ctx = Context(opts, snapshots, arrays)
    ir = graph
    if stop_after != "traced":
        for name, fn_stage in STAGES.items():
            t0 = time.perf_counter()
            ir = fn_stage(ir, ctx)
            snapshots.append(Snapshot(name, ir, {**_ir_stats(ir), **ctx.stage_notes.get(name, {}),
                                                 "wall_ms": (time.perf_counter() - t0) * 1e3}))
            if name == stop_after:
                break
    return Compiled(fn, arrays, snapshots, opts)


_ALL_STAGE_NAMES = ("traced", "simplified", "fused", "lowered", "tiled", "codegen")
