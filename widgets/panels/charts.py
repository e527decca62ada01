"""TimingChart: explorer.compare's timing and roofline charts as PNG images, with a progress bar.

The measurement runs on a worker thread, so the notebook stays responsive; `wait()` joins it.

>>> from widgets import TimingChart                                   # doctest: +SKIP
>>> t = TimingChart(); t.run(mlp, x, w, b, target="cpu"); t.wait()    # doctest: +SKIP
>>> TimingChart(explorer.compare(mlp, x, w, b))                       # doctest: +SKIP
"""
from __future__ import annotations

import io
from typing import Any, Callable

import ipywidgets as W

from ._util import Worker, describe_error, error_html, esc, note_html, show_progress


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
    return f"<pre class='ke-compare-table' style='font-size:12px'>{esc(table)}</pre>"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class TimingChart(W.VBox):
    """Timing + roofline images of a Comparison. `.timing.value` / `.roofline.value` are PNG bytes."""

    def __init__(self, comparison: Any = None, **kwargs: Any):
        self.button = W.Button(description="Compare fused vs unfused", icon="line-chart", button_style="info",
                               layout=W.Layout(width="240px"))
        self.progress = W.FloatProgress(value=0.0, min=0.0, max=1.0, description="", bar_style="info",
                                        layout=W.Layout(width="260px", visibility="hidden"))
        self.status = W.HTML()
        self.timing = W.Image(format="png", layout=W.Layout(max_width="48%"))
        self.roofline = W.Image(format="png", layout=W.Layout(max_width="48%"))
        self.table = W.HTML()
        self.comparison: Any = None
        self._worker = Worker()
        self._request: Callable[[], tuple[Callable, tuple, dict]] | None = None
        super().__init__([W.HBox([self.button, self.progress]), self.status,
                          W.HBox([self.timing, self.roofline]), self.table], **kwargs)
        self.add_class("ke-charts")
        self.button.on_click(lambda _b: self._run_requested())
        if comparison is not None:
            self.set_comparison(comparison)

    def set_request(self, request: Callable[[], tuple[Callable, tuple, dict]]) -> None:
        """What the button measures: request() -> (fn, examples, compare kwargs) at click time."""
        self._request = request

    def _run_requested(self) -> None:
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
        self.roofline.value = figure_png(cmp.plot_roofline())
        self.table.value = table_html(cmp.table() if hasattr(cmp, "table") else None)

    def mark_stale(self, why: str) -> None:
        if self.comparison is not None:
            self.status.value = note_html(f"charts are for the previous knobs ({why}); press Compare to re-measure")

    def wait(self, timeout: float | None = 300) -> None:
        self._worker.wait(timeout)
