"""The stage list of a compile, built per target and explicitly (as Triton's backends fill their
`stages` dict): [(stage name, pass)], run in order after `traced` by explorer.pipeline.compile.

Each pass is a function (IR, Context) -> IR; the Context carries the options, the Target and the
earlier snapshots. This module is where the stage names are written (once) and the only module of
the pipeline that imports the passes and codegen, so pipeline.py imports none of them. A Target
reaches it through `Target.stages()`.

    simplified  Graph        DCE, CSE, constant folding, identities, decomposition
    fused       FusedGraph   nodes grouped into kernels, each boundary with its reason
    lowered     ComputeProgram  one compute definition per group (prints its naive loop nest)
    tiled       Program      the schedule applied (split/reorder/bind/cache/unroll/vectorize)
    vectorized  Program      cpu: reductions in SIMD lanes, register-tiled micro-kernels (passes/vectorize_cpu);
                             cuda/sim: float4 loads and stores (passes/vectorize_cuda)
    codegen     Codegen      CUDA or C source per kernel (only prints)

>>> from explorer.target import get_target
>>> [name for name, _ in stages_for(get_target("sim"))]
['simplified', 'fused', 'lowered', 'tiled', 'vectorized', 'codegen']
>>> [name for name, _ in stages_for(get_target("reference"))]
['simplified', 'fused', 'lowered', 'tiled', 'codegen']
"""
from __future__ import annotations

from typing import Any, Callable

from .codegen import generate
from .custom import verify
from .ops import get as get_op
from .passes.fusion import fuse
from .passes.lower import lower
from .passes.simplify import simplify
from .passes.tiling import tile
from .passes.vectorize_cpu import vectorize_cpu
from .passes.vectorize_cuda import vectorize_cuda
from .target import Target

StageFn = Callable[[Any, Any], Any]   # (IR, pipeline.Context) -> IR


def simplified(g, ctx):
    return simplify(g, decompose=ctx.options.decompose)


def fused(g, ctx):
    return fuse(g, rules=ctx.options.fuse)


def lowered(fg, ctx):
    # decompose=False keeps composites (softmax, layernorm, gelu, ...) as single nodes in the graph
    # stages; they have no loop template, so the loops are made from their decomposition (re-fused)
    composites = sorted({n.op for n in fg.graph.op_nodes() if get_op(n.op).composite})
    if composites:
        fg = fuse(simplify(fg.graph, decompose=True), rules=ctx.options.fuse)
        ctx.stage_notes["lowered"] = {"note": f"decompose=False: {', '.join(composites)} kept whole in the graph "
                                              f"stages, lowered through their decomposition (no loop template)"}
    # stash (compute a reduction's exp once, re-read it from the output) pays on the CPU, where the
    # row is in L1; on a GPU the exp is cheap and the extra global write + read is what fusion avoids
    return lower(fg, stash=ctx.target.stash_reductions)


def tiled(prog, ctx):
    return tile(prog, ctx.options.schedule, target=ctx.target, examples=ctx.examples)


def vectorized(prog, ctx):
    # the loop-IR rewrites code generation used to make while printing: on the CPU lane accumulators
    # and register-tiled micro-kernels, on a GPU target float4 loads and stores
    return vectorize_cpu(prog) if ctx.target.openmp else vectorize_cuda(prog)


def codegen(prog, ctx):
    cg = generate(prog, target=ctx.target, fast_math=ctx.options.fast_math, arch=ctx.options.arch)
    if any(k.kind == "custom" for k in prog.kernels):
        # a custom kernel's own code is checked against its NumPy reference on the example inputs
        cg.checks = verify(ctx.ir("simplified"), ctx.examples, ctx.target)
    return cg


def stages_for(target: Target) -> list[tuple[str, StageFn]]:
    """The (name, pass) list a compile for `target` runs after `traced`, in order."""
    stages: list[tuple[str, StageFn]] = [
        ("simplified", simplified),
        ("fused", fused),
        ("lowered", lowered),
        ("tiled", tiled),
    ]
    if target.scheduled:   # the reference target shows the naive loops: nothing to vectorize
        stages.append(("vectorized", vectorized))
    stages.append(("codegen", codegen))
    return stages
