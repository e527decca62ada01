"""AutotunePanel: run explorer.autotune on the current function and knobs, watch it, use the best.

The search runs on a worker thread (the notebook stays responsive); its progress callback drives a
progress bar and a status line; when it ends the panel shows the table, the heatmap and the
model-vs-measured scatter, and "Use best" puts the winning schedule into the knobs.

>>> import numpy as np
>>> from widgets.panels.autotune import AutotunePanel
>>> a = b = np.ones((32, 32), np.float32)
>>> p = AutotunePanel()
>>> p.run(lambda a, b: a @ b, a, b, target="sim", space={"tile": [(16, 16, 8), (32, 32, 8)]}, cache=False); p.wait()
True
Spearman rank correlation, cost model vs measured (3 candidates): ...
>>> p.result.best                                # on sim the default schedule moves the fewest bytes here
{}
"""
from __future__ import annotations

from typing import Any, Callable

import ipywidgets as W

from ._util import Worker, describe_error, error_html, note_html, pre_html, show_progress
from .charts import figure_png

PLACEHOLDER = ("<b>Autotune</b> ranks candidate schedules (tile sizes, threads, unroll, ...) of the current "
               "function with the cost model and times the most promising on the current target, fusion and dtype, "
               "within <i>budget s</i> seconds. It then shows "
               "the ranked table, a heatmap of the schedule grid and the cost model's prediction against each "
               "measurement; <i>Use best</i> puts the winner into the knobs.")


class AutotunePanel(W.VBox):
    """Button + budget, progress bar, status, table (HTML), heatmap and model-vs-measured images."""

    def __init__(self, **kwargs: Any):
        self.button = W.Button(description="Autotune", icon="sliders", button_style="info",
                               layout=W.Layout(width="140px"))
        self.budget = W.BoundedFloatText(value=20.0, min=1.0, max=3600.0, step=5.0, description="budget s",
                                         layout=W.Layout(width="170px"))
        self.use_best = W.Button(description="Use best", icon="check", disabled=True, layout=W.Layout(width="120px"))
        self.progress = W.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info",
                                        layout=W.Layout(width="260px", visibility="hidden"))
        self.status = W.HTML()
        self.table = W.HTML()
        # hidden until a search draws them (an empty <img> renders as a broken image); the placeholder says
        # what the button does instead
        self.placeholder = W.HTML(f"<div class='ke-autotune-placeholder' style='color:#555;border:1px dashed #bbb;"
                                  f"padding:16px;margin:6px 0;max-width:720px'>{PLACEHOLDER}</div>")
        self.heatmap = W.Image(format="png", layout=W.Layout(max_width="48%", display="none"))
        self.scatter = W.Image(format="png", layout=W.Layout(max_width="48%", display="none"))
        self.result: Any = None
        self._worker = Worker()
        self._request: Callable[[], tuple[Callable, tuple, dict]] | None = None
        self._apply: Callable[[dict], None] | None = None
        super().__init__([W.HBox([self.button, self.budget, self.use_best, self.progress]), self.status,
                          self.placeholder, W.HBox([self.heatmap, self.scatter]), self.table], **kwargs)
        self.add_class("ke-autotune")
        self.button.on_click(lambda _b: self._run_requested())
        self.use_best.on_click(lambda _b: self._apply_best())

    def set_request(self, request: Callable[[], tuple[Callable, tuple, dict]],
                    apply: Callable[[dict], None] | None = None) -> None:
        """request() -> (fn, examples, autotune kwargs) at click time; apply(best) takes the best schedule."""
        self._request, self._apply = request, apply

    def _run_requested(self) -> None:
        if self._request is None:
            self.status.value = error_html("nothing to tune: call run(fn, *examples) or set_request()")
            return
        fn, examples, kw = self._request()
        self.run(fn, *examples, **{"budget": float(self.budget.value), **kw})

    def run(self, fn: Callable, *examples: Any, **autotune_kwargs: Any) -> bool:
        """Start explorer.autotune(fn, *examples, **autotune_kwargs) on the worker; False if one is running."""
        def on_progress(phase: str, done: int, total: int, text: str) -> None:
            self.progress.value = done / total if total else min(0.95, 0.1 + 0.05 * done)
            self.status.value = note_html(f"{phase}: {done}{f'/{total}' if total else ' rounds'}"
                                          + (f" — {text}" if text else ""))

        def job() -> None:
            import explorer
            r = explorer.autotune(fn, *examples, progress=False, on_progress=on_progress, **autotune_kwargs)
            self.set_result(r)
            self._finish(note_html(r.summary().replace("\n", " · ")))

        def failed(e: BaseException) -> None:
            self._finish(error_html(describe_error(e), "autotune failed:"), ok=False)

        if self._worker.busy:
            self.status.value = note_html("autotune is already running")
            return False
        self.button.disabled = True
        self.use_best.disabled = True
        show_progress(self.progress)
        return self._worker.start(job, failed)

    def set_result(self, r: Any) -> None:
        """Draw an AutotuneResult: table, heatmap and model-vs-measured scatter."""
        self.result = r
        self.placeholder.layout.display = "none"
        self.table.value = pre_html(r.table(40), "360px", "ke-autotune-table")
        try:
            heat, scatter = r.plot()
            self.heatmap.value, self.scatter.value = figure_png(heat), figure_png(scatter)
            self.heatmap.layout.display = self.scatter.layout.display = ""
        except Exception as e:  # noqa: BLE001 — no matplotlib: the table still shows
            self.status.value = error_html(describe_error(e), "plots unavailable:")
        self.use_best.disabled = self._apply is None

    def _apply_best(self) -> None:
        if self.result is not None and self._apply is not None:
            self._apply(self.result.best)

    def _finish(self, status: str, ok: bool = True) -> None:
        show_progress(self.progress, ok)
        self.button.disabled = False
        self.status.value = status

    def wait(self, timeout: float | None = 600) -> None:
        self._worker.wait(timeout)
