"""RunPanel: run the compiled function on a chosen target; max abs error vs NumPy and timings.

>>> from widgets.panels.run import RunPanel                              # doctest: +SKIP
>>> p = RunPanel(lambda target: explorer.compile(mlp, x, w, b, target=target)); p.run(); p.wait()  # doctest: +SKIP
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import ipywidgets as W

from ._util import Worker, describe_error, error_html, esc, note_html
from .knobs import TARGETS


class RunPanel(W.VBox):
    """`provider(target) -> Compiled`. Each run appends a row to `.results` (newest first)."""

    def __init__(self, provider: Callable[[str], Any] | None = None, target: str = "cpu", repeat: int = 5,
                 **kwargs: Any):
        self.target = W.Dropdown(description="run on", options=TARGETS, value=target if target in TARGETS else "cpu",
                                 layout=W.Layout(width="200px"))
        self.button = W.Button(description="Run", icon="play", button_style="success")
        self.progress = W.FloatProgress(value=0.0, min=0.0, max=1.0, layout=W.Layout(width="200px",
                                                                                     visibility="hidden"))
        self.status = W.HTML()
        self.results = W.HTML()
        self.rows: list[dict[str, Any]] = []
        self.repeat = repeat
        self.provider = provider
        self._worker = Worker()
        super().__init__([W.HBox([self.target, self.button, self.progress]), self.status, self.results], **kwargs)
        self.add_class("ke-run")
        self.button.on_click(lambda _b: self.run())

    def run(self) -> bool:
        """Start a run on the selected target (worker thread); False when one is already running."""
        if self.provider is None:
            self.status.value = error_html("nothing to run yet")
            return False
        target = self.target.value

        def job() -> None:
            self.progress.value = 0.1
            self.status.value = note_html(f"compiling for {target}…")
            comp = self.provider(target)
            self.status.value = note_html(f"running on {target}…")
            err = comp.max_error()
            self.progress.value = 0.5
            t = comp.benchmark(warmup=1, repeat=self.repeat)
            self.progress.value = 0.8
            ref = _time_numpy(comp.fn, comp.examples, self.repeat)
            shapes = ", ".join("×".join(map(str, e.shape)) or "scalar" for e in comp.examples)
            self.rows.insert(0, {"target": comp.target, "inputs": shapes, "max abs error": err,
                                 "median ms": t.median_ms, "min ms": t.min_ms, "numpy ms": ref,
                                 "kernels": len(comp.kernels)})
            del self.rows[8:]
            self.results.value = self._table()
            self._done("")

        def failed(e: BaseException) -> None:
            self._done(error_html(describe_error(e), f"run on {target} failed:"), ok=False)

        if self._worker.busy:
            self.status.value = note_html("a run is already in progress")
            return False
        self.button.disabled = True
        self.progress.layout.visibility = "visible"
        self.progress.bar_style = "info"
        return self._worker.start(job, failed)

    def _done(self, status: str, ok: bool = True) -> None:
        self.progress.value = 1.0
        self.progress.bar_style = "success" if ok else "danger"
        self.progress.layout.visibility = "hidden"
        self.button.disabled = False
        self.status.value = status

    def _table(self) -> str:
        cols = list(self.rows[0]) if self.rows else []
        head = "".join(f"<th style='padding:0 10px'>{esc(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td style='padding:0 10px'>{esc(_fmt(r[c]))}</td>" for c in cols) + "</tr>"
                       for r in self.rows)
        return f"<table class='ke-run-results'><tr>{head}</tr>{body}</table>"

    def wait(self, timeout: float | None = 300) -> None:
        self._worker.wait(timeout)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _time_numpy(fn: Callable, examples: list, repeat: int) -> float:
    """Median ms of the plain NumPy function on the same inputs (the baseline, same process)."""
    samples = []
    fn(*examples)
    for _ in range(max(repeat, 1)):
        t0 = time.perf_counter()
        fn(*examples)
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)
