"""What each stage does on the shown target, and what the `vectorized` pass changed in this program.

The Stages tab shows one line under the stage navigator: the pass's job (`stage_help`) and, for the
`vectorized` stage, what it did here (`vectorized_summary`: micro-kernels, lane accumulators, float4
blocks, or why nothing changed). Both read the Target's properties, never its name.

>>> import numpy as np, explorer
>>> from widgets.panels.stagehelp import stage_help, vectorized_summary
>>> stage_help("vectorized", "sim")[:60]
'float4: a vectorized loop of 4 f32 lanes becomes one 16-byte'
>>> x, w = np.ones((1024, 64), np.float32), np.ones((64, 48), np.float32)   # 48 columns: 6 x 2 32-byte vectors on every host
>>> c = explorer.compile(lambda x, w: x @ w, x, w, target="cpu")
>>> print(vectorized_summary(c.stage("tiled").ir, c.stage("vectorized").ir, "cpu"))
here: 1 register-tiled micro-kernel (mk0 in matmul_kernel: over loop k, 12 vector registers)
"""
from __future__ import annotations

from typing import Any

_GRAPH_STAGES = {
    "traced": "every NumPy call recorded as one op, with the file, line and code that wrote it",
    "simplified": "composites decomposed, constants folded, algebraic identities applied, common "
                  "subexpressions and dead ops removed (each rewrite counted)",
    "fused": "ops grouped into kernels by the fusion rules; every boundary records the rule that "
             "decided it (Fusion tab: why not fused?)",
    "lowered": "each kernel as a compute definition, printed as its naive loop nest; values inside a "
               "kernel stay in registers",
}


def _target(target: Any) -> Any:
    from explorer.target import get_target
    return get_target(target)


def stage_help(name: str, target: Any) -> str:
    """One sentence: what the pass that makes stage `name` does on `target` (a Target or its name);
    '' for a stage this view does not know (a user-registered one)."""
    if name in _GRAPH_STAGES:
        return _GRAPH_STAGES[name]
    t = _target(target)
    if name == "tiled":
        if not t.scheduled:
            return "no schedule on this target: the naive loops are shown as they are"
        return ("the schedule (split, reorder, parallel/bind, cache, unroll, vectorize) applied to each loop "
                "nest; the Tiling tab lists its primitives")
    if name == "vectorized":
        if t.openmp:
            return ("SIMD on the CPU: a reduction inside a vectorized loop keeps one partial accumulator per lane "
                    "(`acc lanes`), and a matmul's k loop over its register tile becomes a register-tiled "
                    "`microkernel` whose accumulators live in vector registers; the C prints this program as it is")
        return ("float4: a vectorized loop of 4 f32 lanes becomes one 16-byte load/store per lane group "
                "(`ld0_0 = float4 x[...]`) when that is provably legal, else a `# why: float4` note says why; "
                "the simulator runs this program")
    if name == "codegen":
        return f"the program printed as {'C with OpenMP' if t.language == 'c' else 'CUDA C'}, one function per kernel"
    return ""


def kernel_changes(kernel: Any) -> tuple[list[tuple[str, str]], int, int, list[str]]:
    """(micro-kernels as (name, 'over loop k, 12 vector registers'), lane-accumulator count, float4 blocks,
    float4 notes) of one kernel of the vectorized stage."""
    from explorer import loopir as L
    mks, lanes, f4 = [], 0, 0
    for s in L.walk(kernel.body):
        if isinstance(s, L.MicroKernel):
            regs = sum(len(t.bases) for t in s.tiles)
            mks.append((s.name, f"over loop {s.loop.var.name}, {_plural(regs, 'vector register')}"))
        elif isinstance(s, L.Alloc) and s.buffer.name.endswith(" lanes"):
            lanes += 1
        elif isinstance(s, L.Float4Block):
            f4 += 1
    notes = [n for n in (kernel.meta_dict().get("notes", ()) if hasattr(kernel, "meta_dict") else ())
             if str(n).startswith("float4:")]
    return mks, lanes, f4, notes


def kernel_summary(kernel: Any) -> str:
    """What the vectorized pass made of one kernel, in a few words ('' when nothing).

    >>> kernel_summary(object.__new__(type("K", (), {"body": (), "name": "k"})))
    ''
    """
    mks, lanes, f4, notes = kernel_changes(kernel)
    parts = [f"micro-kernel {name} {what}" for name, what in mks]
    if lanes:
        parts.append(f"{_plural(lanes, 'reduction')} in per-lane accumulators")
    if f4:
        parts.append(_plural(f4, "float4 block"))
    parts += notes
    return "; ".join(parts)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def vectorized_summary(before_ir: Any, after_ir: Any, target: Any) -> str:
    """What the vectorized pass did to this program (`before_ir`: the tiled Program, `after_ir`: the
    vectorized one), or why it left it as it was."""
    t = _target(target)
    mks: list[str] = []
    lanes = f4 = 0
    notes: list[str] = []
    for k in getattr(after_ir, "kernels", ()):
        m, n_lanes, n_f4, n_notes = kernel_changes(k)
        mks += [f"{name} in {k.name}: {what}" for name, what in m]
        lanes += n_lanes
        f4 += n_f4
        notes += n_notes
    parts = []
    if mks:
        parts.append(f"{_plural(len(mks), 'register-tiled micro-kernel')} ({'; '.join(mks)})")
    if lanes:
        parts.append(f"{_plural(lanes, 'reduction')} kept in per-lane accumulators")
    if f4:
        parts.append(_plural(f4, "float4 block"))
    if notes:
        parts.append(f"{_plural(len(notes), 'vectorized loop')} left scalar ({notes[0]})")
    if parts:
        return "here: " + "; ".join(parts)
    if before_ir is not None and before_ir is not after_ir and before_ir.text() != after_ir.text():
        return "here: the program changed (see Diff vs previous)"
    if t.openmp:
        return ("here: nothing changed — no loop has that shape (a micro-kernel needs a serial loop whose body is only "
                "unrolled loops around vectorized stores, e.g. a matmul's k loop over a fully unrolled register tile; "
                "lane accumulators need a reduction into a scalar inside a vectorized loop)")
    return ("here: nothing changed — no loop of the tiled stage is `vectorized` (the default GPU schedules unroll "
            "instead; with the unroll knob off, an elementwise kernel's 4-element loop becomes float4 loads and stores)")
