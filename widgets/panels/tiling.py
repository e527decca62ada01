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
                         f"<div>loop nest:</div>{pre_html(k.text(), '360px')}</div>")
        self.html.value = "<hr>".join(parts) or error_html("the tiled program has no kernels")
