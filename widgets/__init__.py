"""Interactive JupyterLab front end of kernel-explorer (ipywidgets), on top of the public `explorer` API.

>>> import widgets                                   # cheap: nothing heavy is imported yet
>>> import numpy as np, explorer
>>> def mlp(x, w, b):
...     return np.maximum(x @ w + b, 0)
>>> x, w, b = np.ones((64, 32), np.float32), np.ones((32, 16), np.float32), np.zeros(16, np.float32)
>>> ex = widgets.Explorer(mlp, x, w, b, target="sim")
>>> ex.compiled
<Compiled mlp target=sim stages=[...] kernels=1>
>>> ex                                               # doctest: +SKIP
(in a notebook cell: the dashboard)

Dashboard (`Explorer`): knobs on the left (target, dtype, problem size, fast math, fusion on/off
and per rule, tile BM/BN/BK, threads, vector, unroll, shared staging, double buffering, tensor cores; knobs that do not
apply are disabled with a tooltip saying why) and tabs: Stages (navigator over traced → … → tiled → vectorized →
codegen, with a line saying what the stage's pass does on the target and, for vectorized, what it did here; graph,
IR text, diff against the previous stage with unchanged lines folded), Fusion (clusters, boundary table with
reasons and refusal codes, a legend of the codes, "why not fused?"),
Tiling (schedule primitives and loop nest per kernel), Source (CUDA/C with pygments, nvcc resource
report, edit-and-run, provenance), Run (max abs error vs NumPy, timings), Charts (explorer.compare's
timing and roofline charts). A knob that fails shows a red message and keeps the last valid view.

Panels usable on their own: GraphView, SourceView, StageDiff, TimingChart (and FusionView,
TilingView, RunPanel, KnobPanel).

Graphs without graphviz's `dot` binary: the DOT text is shown in a <pre> with a one-line install
hint (apt-get install graphviz); no JavaScript renderer is bundled, so it works offline.

Widgets hold no compiler logic: they call explorer.compile, Compiled's methods and explorer.compare.
`import explorer` never imports this package.
"""
from __future__ import annotations

from typing import Any

_LAZY = {
    "Explorer": ("explorer_widget", "Explorer"),
    "GraphView": ("panels.graph", "GraphView"),
    "SourceView": ("panels.source", "SourceView"),
    "StageDiff": ("panels.diff", "StageDiff"),
    "TimingChart": ("panels.charts", "TimingChart"),
    "FusionView": ("panels.fusion", "FusionView"),
    "TilingView": ("panels.tiling", "TilingView"),
    "RunPanel": ("panels.run", "RunPanel"),
    "KnobPanel": ("panels.knobs", "KnobPanel"),
}


def __getattr__(name: str) -> Any:
    # ipywidgets, pygments and matplotlib load on first use, not on `import widgets`.
    if name in _LAZY:
        import importlib
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{mod}"), attr)
    raise AttributeError(f"module 'widgets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = list(_LAZY)
