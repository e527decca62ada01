"""FusionView: the fused graph (groups drawn as clusters), a side table of every boundary with
its reason, and a "why not fused?" pair of dropdowns answered by Compiled.explain_fusion(a, b).

>>> from widgets.panels.fusion import FusionView               # doctest: +SKIP
>>> FusionView(explorer.compile(mlp, x, w, b, fuse=False))     # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any

import ipywidgets as W

from ._util import describe_error, error_html, esc, get, node_label, node_name, note_html
from .graph import GraphView


class FusionView(W.VBox):
    """`.table.value` lists the boundaries; `.answer.value` holds the last explanation."""

    def __init__(self, compiled: Any = None, **kwargs: Any):
        self.graph = GraphView(max_height="520px")
        self.kernels = W.HTML()
        self.table = W.HTML()
        dd = W.Layout(width="220px")
        self.producer = W.Dropdown(description="producer", options=[], layout=dd)
        self.consumer = W.Dropdown(description="consumer", options=[], layout=dd)
        self.answer = W.HTML()
        self.compiled: Any = None
        self._quiet = False
        side = W.VBox([W.HTML("<b>kernels</b>"), self.kernels, W.HTML("<b>boundaries (not fused)</b>"), self.table,
                       W.HTML("<b>why not fused?</b>"), self.producer, self.consumer, self.answer],
                      layout=W.Layout(width="40%"))
        super().__init__([W.HBox([W.VBox([self.graph], layout=W.Layout(width="60%")), side])], **kwargs)
        self.add_class("ke-fusion")
        self.producer.observe(self._ask, "value")
        self.consumer.observe(self._ask, "value")
        if compiled is not None:
            self.set_compiled(compiled)

    def set_compiled(self, compiled: Any) -> None:
        self.compiled = compiled
        try:
            snap = compiled.stage("fused")
        except Exception as e:  # noqa: BLE001 — stage missing (stop_after, or not built yet)
            self.graph.show(None)
            self.kernels.value = self.table.value = ""
            self.answer.value = error_html(describe_error(e))
            self._set_options([], None)
            return
        self.graph.show(snap)
        try:
            expl = compiled.explain_fusion()
        except Exception as e:  # noqa: BLE001
            self.kernels.value = ""
            self.table.value = error_html(describe_error(e))
            self._set_options(self._node_names(snap.ir), None)
            return
        self.kernels.value = self._kernels_html(get(expl, "kernels") or [])
        boundaries = list(get(expl, "boundaries") or [])
        options = self._node_names(snap.ir, boundaries)
        self.table.value = self._boundaries_html(boundaries, {name: label for label, name in options})
        first = None
        for b in boundaries:
            if get(b, "fused", False) is False and get(b, "producer") is not None:
                first = (node_name(get(b, "producer")), node_name(get(b, "consumer")))
                break
        self._set_options(options, first)

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
            self.answer.value = f"<div class='ke-why' style='white-space:pre-wrap'>{esc(text)}</div>"
        except Exception as e:  # noqa: BLE001 — e.g. the two ops are not producer/consumer
            self.answer.value = error_html(describe_error(e))

    @staticmethod
    def _kernels_html(kernels: list) -> str:
        if not kernels:
            return note_html("no kernels")
        rows = "".join(
            f"<tr><td><code>{esc(get(k, 'name', '?'))}</code></td><td>{esc(get(k, 'kind', ''))}</td>"
            f"<td>{esc(' → '.join(map(str, get(k, 'ops', []) or [])))}</td></tr>" for k in kernels)
        return f"<table class='ke-kernels' style='font-size:90%'>{rows}</table>"

    @staticmethod
    def _boundaries_html(boundaries: list, labels: dict[str, str] | None = None) -> str:
        labels = labels or {}

        def label(x: Any) -> str:  # '%3 (matmul)' whether the explanation holds Nodes or names
            return labels.get(node_name(x), node_label(x))
        rows = []
        for b in boundaries:
            if get(b, "fused", False):
                continue
            rows.append(f"<tr><td><code>{esc(label(get(b, 'producer', '?')))}</code> → "
                        f"<code>{esc(label(get(b, 'consumer', '?')))}</code></td>"
                        f"<td>{esc(get(b, 'rule', '') or '')}</td><td>{esc(get(b, 'reason', b))}</td></tr>")
        if not rows:
            return note_html("every producer → consumer edge is fused")
        return ("<table class='ke-boundaries' style='font-size:90%'><tr><th>edge</th><th>rule</th><th>reason</th>"
                "</tr>" + "".join(rows) + "</table>")
