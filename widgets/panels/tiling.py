"""TilingView: per kernel of the tiled stage, the schedule primitives applied and the loop nest.

>>> import numpy as np, explorer
>>> from widgets.panels.tiling import TilingView
>>> a = b = np.ones((64, 64), np.float32)
>>> v = TilingView(explorer.compile(lambda a, b: a @ b, a, b, target="sim", schedule={"tile": (32, 32, 8)}))
>>> "split(k, 8)" in v.html.value
True
"""
from __future__ import annotations

from typing import Any

import ipywidgets as W

from ._util import describe_error, error_html, esc, pre_html
from .stagehelp import kernel_summary


class TilingView(W.VBox):
    """`.html.value` holds every kernel's schedule list and loop nest."""

    def __init__(self, compiled: Any = None, **kwargs: Any):
        self.html = W.HTML(layout=W.Layout(width="100%"))
        super().__init__([self.html], **kwargs)
        self.add_class("ke-tiling")
        if compiled is not None:
            self.set_compiled(compiled)

    def set_compiled(self, compiled: Any) -> None:
        try:
            prog = compiled.stage("tiled").ir
        except Exception as e:  # noqa: BLE001 — stage missing
            self.html.value = error_html(describe_error(e))
            return
        after = self._vectorized_kernels(compiled)
        parts = []
        for k in getattr(prog, "kernels", ()):
            sched = list(getattr(k, "schedule", ()) or ())
            items = "".join(f"<li><code>{esc(s)}</code></li>" for s in sched) or "<li>(no primitives: naive loops)</li>"
            launch = ""
            try:
                if k.is_gpu_bound():
                    launch = " · ".join(f"{a}={b}" for a, b in k.launch().items())
            except Exception:  # noqa: BLE001 — informational only
                launch = ""
            parts.append(f"<div class='ke-tiled-kernel'><b><code>{esc(k.name)}</code></b> "
                         f"<small>{esc(getattr(k, 'kind', ''))} {esc(launch)}</small>"
                         f"<div>schedule:</div><ul class='ke-schedule' style='margin:0'>{items}</ul>"
                         f"<div>loop nest:</div>{pre_html(k.text(), '360px')}{self._next_stage(after.get(k.name))}</div>")
        self.html.value = "<hr>".join(parts) or error_html("the tiled program has no kernels")

    @staticmethod
    def _vectorized_kernels(compiled: Any) -> dict[str, Any]:
        """{kernel name: kernel} of the vectorized stage ({} when the target has none)."""
        try:
            return {k.name: k for k in compiled.stage("vectorized").ir.kernels}
        except Exception:  # noqa: BLE001 — the reference target (no vectorized stage) or stop_after
            return {}

    @staticmethod
    def _next_stage(kernel: Any) -> str:
        """One line under the loop nest: what the next stage (vectorized) made of this kernel."""
        if kernel is None:
            return ""
        try:
            what = kernel_summary(kernel)
        except Exception:  # noqa: BLE001 — informational only
            return ""
        return ("<div class='ke-next-stage' style='color:#1a5e20;font-size:90%;margin-top:2px;white-space:normal'>"
                f"next stage, <code>vectorized</code>: {esc(what) if what else 'unchanged'} (see Stages → vectorized)"
                "</div>")
