"""TimingChart: explorer.compare's charts — time per call, bytes moved, roofline — as PNG images, with
a progress bar. Before the first comparison a placeholder says what the button does (no empty image).
On target 'sim' the times are the roofline model of a GPU (`model_device`, default the A100 the CUDA
code is compiled for: sm_80) on the simulator's exact counts.

The measurement runs on a worker thread, so the notebook stays responsive; `wait()` joins it.

>>> import numpy as np, explorer
>>> def mlp(x, w, b):
...     return np.maximum(x @ w + b, 0)
>>> x, w, b = np.ones((64, 32), np.float32), np.ones((32, 16), np.float32), np.zeros(16, np.float32)
>>> from widgets import TimingChart
>>> t = TimingChart(); t.run(mlp, x, w, b, target="sim", repeat=3); t.wait()
True
>>> [v.name for v in t.comparison.variants]
['fused', 'unfused', 'numpy']
>>> t2 = TimingChart(t.comparison)      # the charts of a comparison you already have, without measuring again
"""
from __future__ import annotations

import io
from typing import Any, Callable

import ipywidgets as W

from ._util import Worker, describe_error, error_html, esc, note_html, pre_html, show_progress


def figure_png(fig: Any, dpi: int = 80) -> bytes:
    """PNG bytes of a matplotlib Figure; the figure is closed (no leak into pyplot's registry)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        if getattr(fig.canvas, "manager", None) is not None:  # a pyplot figure: drop it from pyplot's registry
            import matplotlib.pyplot as plt
            plt.close(fig)
    return buf.getvalue()


def table_html(table: Any) -> str:
    if table is None:
        return ""
    if hasattr(table, "_repr_html_"):
        return table._repr_html_()
    if isinstance(table, list) and table and isinstance(table[0], dict):
        cols = list(table[0])
        head = "".join(f"<th style='padding:0 8px'>{esc(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td style='padding:0 8px'>{esc(_fmt(r.get(c)))}</td>" for c in cols)
                       + "</tr>" for r in table)
        return f"<table class='ke-compare-table'><tr>{head}</tr>{body}</table>"
    return pre_html(table, "none", "ke-compare-table")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


PLACEHOLDER = ("Press <b>Compare fused vs unfused</b> to compile this function fused and unfused, check both "
               "against NumPy, time them (explorer.compare) and draw three charts here: time per call with its "
               "spread, bytes moved through global memory, and the roofline.")
MODEL_DEVICE_HELP = ("on target 'sim' the times are not measured: they are the roofline model of this GPU applied "
                     "to the simulator's exact counts (a100: the GPU the CUDA code is compiled for, sm_80)")


def _model_devices() -> list[str]:
    from explorer.costmodel import DEVICES
    return list(DEVICES)


class TimingChart(W.VBox):
    """Timing, bytes and roofline images of a Comparison. `.timing.value` / `.bytes.value` /
    `.roofline.value` are PNG bytes (hidden until there is one; `.placeholder` shows instead).
    `on_result(cb)` calls cb(comparison) after each finished comparison."""

    def __init__(self, comparison: Any = None, **kwargs: Any):
        self.button = W.Button(description="Compare fused vs unfused", icon="line-chart", button_style="info",
                               layout=W.Layout(width="240px"))
        self.progress = W.FloatProgress(value=0.0, min=0.0, max=1.0, description="", bar_style="info",
                                        layout=W.Layout(width="260px", visibility="hidden"))
        self.status = W.HTML()
        self.placeholder = W.HTML(f"<div class='ke-chart-placeholder' style='color:#555;border:1px dashed #bbb;"
                                  f"padding:16px;margin:6px 0;max-width:720px'>{PLACEHOLDER}</div>")
        self.timing = W.Image(format="png", layout=W.Layout(max_width="62%", display="none"))
        self.bytes = W.Image(format="png", layout=W.Layout(max_width="36%", display="none"))
        self.roofline = W.Image(format="png", layout=W.Layout(max_width="70%", display="none"))
        self.model_device = W.Dropdown(options=_model_devices(), value="a100", description="model GPU",
                                       tooltip=MODEL_DEVICE_HELP, layout=W.Layout(width="180px"))
        self.model_note = W.HTML(f"<small style='color:#555'>{esc(MODEL_DEVICE_HELP)}</small>",
                                 layout=W.Layout(max_width="520px"))
        self.model_row = W.HBox([self.model_device, self.model_note], layout=W.Layout(display="none"))
        self.table = W.HTML()
        self.comparison: Any = None
        self._worker = Worker()
        self._request: Callable[[], tuple[Callable, tuple, dict]] | None = None
        self._on_result: list[Callable[[Any], None]] = []
        super().__init__([W.HBox([self.button, self.progress]), self.model_row, self.status, self.placeholder,
                          W.HBox([self.timing, self.bytes]), self.roofline, self.table], **kwargs)
        self.add_class("ke-charts")
        self.button.on_click(lambda _b: self.run_requested())
        if comparison is not None:
            self.set_comparison(comparison)

    def show_model_device(self, show: bool) -> None:
        """Show the model-GPU choice (the dashboard: on target 'sim', whose times are modelled)."""
        self.model_row.layout.display = "flex" if show else "none"

    def on_result(self, callback: Callable[[Any], None]) -> None:
        self._on_result.append(callback)

    def set_request(self, request: Callable[[], tuple[Callable, tuple, dict]]) -> None:
        """What the button measures: request() -> (fn, examples, compare kwargs) at click time."""
        self._request = request

    def run_requested(self) -> None:
        """Run the comparison that set_request() describes (what the button does)."""
        if self._request is None:
            self.status.value = error_html("nothing to compare: call run(fn, *examples) or set_request()")
            return
        fn, examples, kw = self._request()
        self.run(fn, *examples, **kw)

    def run(self, fn: Callable, *examples: Any, **compare_kwargs: Any) -> bool:
        """Start explorer.compare(fn, *examples, **compare_kwargs) on the worker; False if one is running."""
        def step(value: float, text: str) -> None:
            self.progress.value = value
            self.status.value = note_html(text)

        def job() -> None:
            import explorer
            step(0.1, f"measuring fused vs unfused on {compare_kwargs.get('target', 'auto')}…")
            cmp = explorer.compare(fn, *examples, **compare_kwargs)
            step(0.8, "drawing charts…")
            self.set_comparison(cmp)
            self._finish("")

        def failed(e: BaseException) -> None:
            self._finish(error_html(describe_error(e), "compare failed:"), ok=False)

        if self._worker.busy:
            self.status.value = note_html("a comparison is already running")
            return False
        self.button.disabled = True
        show_progress(self.progress)
        self.progress.value = 0.02
        return self._worker.start(job, failed)

    def _finish(self, status: str, ok: bool = True) -> None:
        show_progress(self.progress, ok)
        self.button.disabled = False
        self.status.value = status

    def set_comparison(self, cmp: Any) -> None:
        """Draw a Comparison (plot_timing/plot_roofline → PNG, table() → HTML)."""
        self.comparison = cmp
        self.timing.value = figure_png(cmp.plot_timing())
        if hasattr(cmp, "plot_bytes"):
            self.bytes.value = figure_png(cmp.plot_bytes())
            self.bytes.layout.display = ""
        self.roofline.value = figure_png(cmp.plot_roofline())
        self.timing.layout.display = self.roofline.layout.display = ""
        self.placeholder.layout.display = "none"
        self.table.value = table_html(cmp.table() if hasattr(cmp, "table") else None)
        for cb in self._on_result:
            cb(cmp)

    def mark_stale(self, why: str) -> None:
        if self.comparison is not None:
            self.status.value = note_html(f"charts are for the previous knobs ({why}); press Compare to re-measure")

    def wait(self, timeout: float | None = 300) -> None:
        self._worker.wait(timeout)
