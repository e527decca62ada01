"""RunPanel: run the compiled function on a chosen target; max abs error vs NumPy and timings.

Timings come from explorer.measure: the compiled function and NumPy interleaved, median with its
interquartile range, min and n, and "unstable measurement (noisy machine): rerun" when the spread stays high.

>>> import numpy as np, explorer
>>> def mlp(x, w, b):
...     return np.maximum(x @ w + b, 0)
>>> x, w, b = np.ones((64, 32), np.float32), np.ones((32, 16), np.float32), np.zeros(16, np.float32)
>>> from widgets.panels.run import RunPanel
>>> p = RunPanel(lambda target: explorer.compile(mlp, x, w, b, target=target), target="sim", repeat=3)
>>> p.run(); p.wait()
True
>>> p.rows[0]["target"], p.rows[0]["max abs error"], p.rows[0]["n"]
('sim', 0.0, 3)
"""
from __future__ import annotations

from typing import Any, Callable

import ipywidgets as W

from explorer import measure

from ._util import Worker, describe_error, error_html, esc, note_html
from .knobs import TARGETS


class RunPanel(W.VBox):
    """`provider(target) -> Compiled`. Each run appends a row to `.results` (newest first)."""

    def __init__(self, provider: Callable[[str], Any] | None = None, target: str = "cpu", repeat: int | None = None,
                 budget_s: float = 0.5, **kwargs: Any):
        self.target = W.Dropdown(description="run on", options=TARGETS, value=target if target in TARGETS else "cpu",
                                 layout=W.Layout(width="200px"))
        self.button = W.Button(description="Run", icon="play", button_style="success")
        self.progress = W.FloatProgress(value=0.0, min=0.0, max=1.0, layout=W.Layout(width="200px",
                                                                                     visibility="hidden"))
        self.status = W.HTML()
        self.results = W.HTML()
        self.rows: list[dict[str, Any]] = []
        self.repeat = repeat          # None: explorer.measure picks it within budget_s
        self.budget_s = budget_s
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
            t, ref = _time_with_numpy(comp, self.repeat, self.budget_s)
            self.progress.value = 0.8
            shapes = ", ".join("×".join(map(str, e.shape)) or "scalar" for e in comp.examples)
            self.rows.insert(0, {"target": comp.target, "inputs": shapes, "max abs error": err,
                                 "median ms": t.median_ms, "IQR ms": _iqr(t), "min ms": t.min_ms, "n": t.repeat,
                                 "numpy ms": ref.median_ms, "vs numpy": measure.speedup(ref, t).range_text(),
                                 "kernels": len(comp.kernels),
                                 "note": "; ".join(filter(None, [
                                     "simulation wall time, not a GPU's" if t.source == "sim-wall" else "",
                                     measure.UNSTABLE_TEXT if (t.unstable or ref.unstable) else "",
                                     t.blas.note if t.blas is not None else ""]))})
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
        """The rows as a table; each distinct note is numbered under it (a long note in a cell would make
        every row tall and run off the panel's right edge)."""
        cols = [c for c in (self.rows[0] if self.rows else []) if c != "note"]
        notes: list[str] = []
        for r in self.rows:
            if r.get("note") and r["note"] not in notes:
                notes.append(r["note"])
        # numbers never break ("9.537e-06" split at the dash); headers and the inputs list wrap at spaces,
        # so the table fits the tab beside the knobs
        cell = "padding:0 6px;white-space:nowrap"
        wrap = "padding:0 6px;white-space:normal"

        def row_html(r: dict[str, Any]) -> str:
            tds = [(wrap if c == "inputs" else cell, esc(_fmt(r[c]))) for c in cols]
            if notes:
                tds.append((cell, f"[{notes.index(r['note']) + 1}]" if r.get("note") else ""))
            return "<tr>" + "".join(f"<td style='{style}'>{td}</td>" for style, td in tds) + "</tr>"

        head = "".join(f"<th style='{wrap}'>{esc(c)}</th>" for c in cols + (["note"] if notes else []))
        body = "".join(row_html(r) for r in self.rows)
        foot = "".join(f"<div class='ke-run-note' style='font-size:12px;color:#555;margin-top:4px;white-space:normal'>[{i}] {esc(n)}</div>"
                       for i, n in enumerate(notes, 1))
        return (f"<div style='overflow-x:auto'><table class='ke-run-results'><tr>{head}</tr>{body}</table></div>"
                f"{foot}")

    def wait(self, timeout: float | None = 300) -> None:
        self._worker.wait(timeout)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _iqr(t: Any) -> str:
    return f"{measure.fmt_ms(t.q1_ms)}–{measure.fmt_ms(t.q3_ms)}"


def _time_with_numpy(comp: Any, repeat: int | None, budget_s: float) -> tuple[Any, Any]:
    """(compiled Timing, NumPy Timing), measured interleaved on the same inputs in this process, with
    NumPy's BLAS pool as compare() has it (explorer.blas, "auto"; Timing.blas records it)."""
    from explorer import blas
    with blas.during_measurement("auto") as setting:
        ts = measure.interleaved({"compiled": comp.sampler(), "numpy": lambda: comp.fn(*comp.examples)}, warmup=1,
                                 repeat=repeat, budget_s=budget_s)
    ts["compiled"].blas = ts["numpy"].blas = setting
    return ts["compiled"], ts["numpy"]
