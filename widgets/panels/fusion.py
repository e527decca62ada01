"""FusionView: the fusion lesson on one screen — unfused and fused graphs side by side, every edge
labelled with the bytes it moves through global memory, totals (kernels, launches, bytes, measured
time with its spread) and one sentence generated from those numbers (explorer.lesson) — then every
boundary with its rule, refusal code (FusionDecision.code) and reason, and a "why not fused?" pair of
dropdowns (Compiled.explain_fusion(a, b), with the edge's refusal code under the answer).

>>> import numpy as np, explorer
>>> def mlp(x, w, b):
...     return np.maximum(x @ w + b, 0)
>>> x, w, b = np.ones((64, 32), np.float32), np.ones((32, 16), np.float32), np.zeros(16, np.float32)
>>> from widgets.panels.fusion import FusionView
>>> v = FusionView(explorer.compile(mlp, x, w, b, fuse=False, target="sim"))
>>> print(v.answer.value)                 # "why not fused?" for the first pair of the dropdowns
<div class='ke-why' style='white-space:pre-wrap'>not fused: fusion is turned off (fuse=False)</div>...
"""
from __future__ import annotations

from typing import Any

import ipywidgets as W

from ._util import Worker, describe_error, error_html, esc, get, node_label, node_name, note_html
from .graph import GraphView


class FusionView(W.VBox):
    """`.sentence.value` holds the lesson's sentence, `.totals.value` its table, `.unfused_graph` /
    `.graph` the two drawings; `.table.value` lists the boundaries; `.answer.value` the last explanation.

    The Measure button calls `set_measure`'s callable (the dashboard: the Charts tab's compare, whose
    result comes back through `set_comparison`); on its own the view runs explorer.compare itself.
    """

    def __init__(self, compiled: Any = None, **kwargs: Any):
        self.sentence = W.HTML()
        self.totals = W.HTML()
        self.measure = W.Button(description="Measure fused vs unfused", icon="clock-o",
                                tooltip="time both variants (explorer.compare) to add the time and its spread",
                                layout=W.Layout(width="230px"))
        self.measure_status = W.HTML()
        self.unfused_graph = GraphView(max_height="460px")
        self.graph = GraphView(max_height="460px")
        self.fused_caption = W.HTML("<b>fused</b>: with the current knobs")
        self.summary: Any = None
        self.comparison: Any = None
        self._measure_request: Any = None
        self._worker = Worker()
        self.kernels = W.HTML()
        self.table = W.HTML()
        dd = W.Layout(width="220px")
        self.producer = W.Dropdown(description="producer", options=[], layout=dd)
        self.consumer = W.Dropdown(description="consumer", options=[], layout=dd)
        self.answer = W.HTML()
        self.compiled: Any = None
        self._codes: dict[tuple[str, str], str] = {}   # (producer, consumer) -> refusal code of the edge
        self._quiet = False
        lesson = W.VBox([self.sentence, W.HBox([self.totals, W.VBox([self.measure, self.measure_status])]),
                         W.HBox([W.VBox([W.HTML("<b>unfused</b>: one kernel per op"), self.unfused_graph],
                                        layout=W.Layout(width="50%")),
                                 W.VBox([self.fused_caption, self.graph],
                                        layout=W.Layout(width="50%"))])])
        lesson.add_class("ke-lesson")
        # one column: the boundary table needs the full width for its reasons
        details = W.VBox([W.HTML("<b>kernels</b>"), self.kernels, W.HTML("<b>boundaries (not fused)</b>"), self.table,
                          W.HTML("<b>why not fused?</b>"), W.HBox([self.producer, self.consumer]), self.answer])
        super().__init__([lesson, details], **kwargs)
        self.add_class("ke-fusion")
        self.measure.on_click(lambda _b: self._measure())
        self.producer.observe(self._ask, "value")
        self.consumer.observe(self._ask, "value")
        if compiled is not None:
            self.set_compiled(compiled)

    def set_compiled(self, compiled: Any, comparison: Any = None) -> None:
        """Show `compiled` (a Compiled with a fused stage); `comparison` adds measured times."""
        self.compiled = compiled
        self.comparison = comparison
        self.measure_status.value = ""
        try:
            snap = compiled.stage("fused")
        except Exception as e:  # noqa: BLE001 — stage missing (stop_after, or not built yet)
            self.graph.show(None)
            self.unfused_graph.show(None)
            self.kernels.value = self.table.value = self.sentence.value = self.totals.value = ""
            self.answer.value = error_html(describe_error(e))
            self._set_options([], None)
            return
        try:
            from explorer.passes.fusion import fuse
            off = not any(snap.ir.rules.values())
            # with fusion off the knobs' graph is the unfused one: show what fusion would do beside it
            self.graph.show(fuse(snap.ir.graph) if off else snap)
            self.fused_caption.value = ("<b>fused</b>: what fusion would do (it is off in the knobs)" if off
                                        else "<b>fused</b>: with the current knobs")
            self.unfused_graph.show(fuse(snap.ir.graph, rules=False))
        except Exception as e:  # noqa: BLE001
            self.unfused_graph.html.value = error_html(describe_error(e), "cannot draw the unfused graph:")
        self._draw_lesson()
        try:
            expl = compiled.explain_fusion()
        except Exception as e:  # noqa: BLE001
            self.kernels.value = ""
            self.table.value = error_html(describe_error(e))
            self._codes = {}
            self._set_options(self._node_names(snap.ir), None)
            return
        self.kernels.value = self._kernels_html(get(expl, "kernels") or [])
        boundaries = list(get(expl, "boundaries") or [])
        self._codes = {(node_name(get(b, "producer")), node_name(get(b, "consumer"))): str(get(b, "code"))
                       for b in boundaries if get(b, "code")}
        options = self._node_names(snap.ir, boundaries)
        self.table.value = self._boundaries_html(boundaries, {name: label for label, name in options})
        first = None
        for b in boundaries:
            if get(b, "fused", False) is False and get(b, "producer") is not None:
                first = (node_name(get(b, "producer")), node_name(get(b, "consumer")))
                break
        self._set_options(options, first)

    # -- the lesson ------------------------------------------------------------------------------------
    def set_comparison(self, comparison: Any) -> None:
        """Add the time of both variants (an explorer.compare result for the shown compile)."""
        self.comparison = comparison
        self.measure_status.value = ""
        self._draw_lesson()

    def set_measure(self, request: Any) -> None:
        """What the Measure button does: request() starts a measurement that ends in set_comparison."""
        self._measure_request = request

    def _measure(self) -> None:
        if self._measure_request is not None:
            self.measure_status.value = note_html("measuring (see the Charts tab)…")
            self._measure_request()
            return
        comp = self.compiled
        if comp is None:
            return

        def job() -> None:
            import explorer
            o = comp.options
            cmp = explorer.compare(comp.fn, *comp.examples, target=comp.target, schedule=o.schedule,
                                   repeat=10, warmup=2, verbose=False)
            self.set_comparison(cmp)

        def failed(e: BaseException) -> None:
            self.measure_status.value = error_html(describe_error(e), "measuring failed:")
        self.measure_status.value = note_html("measuring…")
        self._worker.start(job, failed)

    def wait(self, timeout: float | None = 300) -> None:
        self._worker.wait(timeout)

    def _draw_lesson(self) -> None:
        from explorer.lesson import fusion_summary
        try:
            self.summary = fusion_summary(self.compiled, comparison=self.comparison)
        except Exception as e:  # noqa: BLE001
            self.summary = None
            self.sentence.value = error_html(describe_error(e), "no fusion summary:")
            self.totals.value = ""
            return
        self.sentence.value = (f"<div class='ke-lesson-sentence' style='font-size:110%;padding:4px 8px;"
                               f"background:#eef6ee;border-left:4px solid #2e7d32'>{esc(self.summary.sentence())}</div>")
        td = "padding:1px 10px;text-align:right"
        rows = "".join(f"<tr><td style='padding:1px 10px'>{esc(q)}</td><td style='{td}'>{esc(u)}</td>"
                       f"<td style='{td}'>{esc(f)}</td></tr>" for q, u, f in self.summary.rows())
        if self.summary.time_ms is None:
            rows += ("<tr><td style='padding:1px 10px;color:#666' colspan=3>time: press Measure (or Compare on "
                     "the Charts tab)</td></tr>")
        self.totals.value = (f"<table class='ke-lesson-totals' style='font-size:90%;margin:4px 12px 4px 0'><tr><th></th>"
                             f"<th style='{td}'>unfused</th><th style='{td}'>fused</th></tr>{rows}</table>")

    @staticmethod
    def _node_names(ir: Any, boundaries: list | None = None) -> list[tuple[str, str]]:
        graph = getattr(ir, "graph", None)
        nodes = graph.op_nodes() if graph is not None and hasattr(graph, "op_nodes") else []
        if nodes:
            return [(node_label(n), n.name) for n in nodes]
        seen: dict[str, str] = {}
        for b in boundaries or []:
            for part in ("producer", "consumer"):
                x = get(b, part)
                if x is not None:
                    seen.setdefault(node_name(x), node_label(x))
        return [(lab, name) for name, lab in seen.items()]

    def _set_options(self, options: list[tuple[str, str]], first: tuple[str, str] | None) -> None:
        self._quiet = True
        try:
            self.producer.options = options
            self.consumer.options = options
            names = [n for _, n in options]
            if first and first[0] in names and first[1] in names:
                self.producer.value, self.consumer.value = first
            elif len(names) >= 2:
                self.producer.value, self.consumer.value = names[0], names[1]
        finally:
            self._quiet = False
        self._ask()

    def _ask(self, _change: Any = None) -> None:
        if self._quiet:
            return
        a, b = self.producer.value, self.consumer.value
        if self.compiled is None or a is None or b is None:
            self.answer.value = ""
            return
        try:
            text = self.compiled.explain_fusion(a, b)
            self.answer.value = (f"<div class='ke-why' style='white-space:pre-wrap'>{esc(text)}</div>"
                                 + self._code_html(self._codes.get((a, b)) or self._codes.get((b, a))))
        except Exception as e:  # noqa: BLE001 — e.g. the two ops are not producer/consumer
            self.answer.value = error_html(describe_error(e))

    @staticmethod
    def _code_html(code: str | None) -> str:
        """The refusal's structured code (FusionDecision.code) under the answer, with what it means."""
        if not code:
            return ""
        doc = refusal_doc(code)
        return (f"<div class='ke-why-code' style='color:#666;font-size:90%'>refusal code <code>{esc(code)}</code>"
                + (f": {esc(doc)}" if doc else "") + "</div>")

    @staticmethod
    def _kernels_html(kernels: list) -> str:
        if not kernels:
            return note_html("no kernels")
        rows = "".join(
            f"<tr><td><code>{esc(get(k, 'name', '?'))}</code></td><td>{esc(get(k, 'kind', ''))}</td>"
            f"<td>{esc(' → '.join(map(str, get(k, 'ops', []) or [])))}</td></tr>" for k in kernels)
        return f"<table class='ke-kernels' style='font-size:90%;line-height:1.35'>{rows}</table>"

    @staticmethod
    def _boundaries_html(boundaries: list, labels: dict[str, str] | None = None) -> str:
        """The refused edges: edge, rule, refusal code (its meaning as a tooltip) and reason, then a legend
        that says what every code in the table means."""
        labels = labels or {}

        def label(x: Any) -> str:  # '%3 (matmul)' whether the explanation holds Nodes or names
            return labels.get(node_name(x), node_label(x))
        rows, codes = [], []
        td = "vertical-align:top;padding:2px 6px"
        for b in boundaries:
            if get(b, "fused", False):
                continue
            code = str(get(b, "code", "") or "")
            doc = refusal_doc(code)
            if code and code not in codes:
                codes.append(code)
            rule = get(b, "rule", "") or ""
            rule_cell = (f"<span title='no fusion rule covers these two kinds of op'>—</span>" if rule in ("", "none")
                         else esc(rule))
            rows.append(f"<tr><td style='{td};white-space:nowrap'><code>{esc(label(get(b, 'producer', '?')))}</code> → "
                        f"<code>{esc(label(get(b, 'consumer', '?')))}</code></td>"
                        f"<td style='{td}'>{rule_cell}</td>"
                        f"<td style='{td}' title='{esc(doc)}'><code>{esc(code)}</code></td>"
                        f"<td style='{td}'>{esc(get(b, 'reason', b))}</td></tr>")
        if not rows:
            return note_html("every producer → consumer edge is fused")
        legend = "".join(f"<li><code>{esc(c)}</code>: {esc(refusal_doc(c) or 'no description')}</li>" for c in codes)
        th = "text-align:left;padding:2px 6px"
        return ("<table class='ke-boundaries' style='font-size:90%;line-height:1.35;border-collapse:collapse'><tr>"
                f"<th style='{th}'>edge</th><th style='{th}'>rule</th><th style='{th}'>refusal code</th>"
                f"<th style='{th}'>reason</th></tr>" + "".join(rows) + "</table>"
                "<div class='ke-refusal-legend' style='font-size:90%;color:#444;margin-top:4px'>what the codes mean:"
                f"<ul style='margin:2px 0 0 0;padding-left:18px;line-height:1.35'>{legend}</ul></div>")


def refusal_doc(code: str | None) -> str:
    """What a fusion refusal code means (explorer.passes.fusion.Refusal.doc), '' for an unknown one.

    >>> refusal_doc("cycle")
    'the merged kernel would wait for itself through another kernel'
    """
    if not code:
        return ""
    from explorer.passes.fusion import Refusal
    try:
        return Refusal(code).doc
    except ValueError:
        return ""
