"""GraphView: an IR graph drawn as inline SVG (graphviz), or its DOT text when `dot` is missing.

Fallback without graphviz's `dot` binary: the DOT source in a <pre> with a one-line install
hint. Chosen over an in-browser WASM renderer because it needs no JavaScript bundle and works
offline everywhere; the drawing appears as soon as `apt-get install graphviz` is done.

>>> import numpy as np, explorer
>>> from widgets import GraphView
>>> compiled = explorer.compile(lambda a: np.exp(a) * 2, np.ones(8, np.float32), target="sim")
>>> v = GraphView(compiled.stage("fused"))
>>> v.dot.splitlines()[0]                 # v.html: the SVG, or this DOT text with an install hint
'digraph lambda {'
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import ipywidgets as W

from ._util import describe_error, error_html, esc, note_html, pre_html

INSTALL_HINT = ("graphviz's `dot` is not installed, so the graph is shown as DOT text: "
                "apt-get install graphviz (or conda install graphviz) to see it drawn.")

_CACHE: "OrderedDict[str, str]" = OrderedDict()
_CACHE_SIZE = 64


def svg_for_dot(dot: str) -> str:
    """SVG for `dot` via explorer.render (memoized: redraws of an unchanged graph cost nothing)."""
    if dot in _CACHE:
        _CACHE.move_to_end(dot)
        return _CACHE[dot]
    from explorer import render
    svg = render.dot_to_svg(dot)
    _CACHE[dot] = svg
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return svg


WIDE_PX = 1600  # wider than about twice the panel: shrunk to fit, its labels are too small to read


def inline_svg(svg: str) -> str:
    """Strip the XML prolog/doctype so the SVG can sit inside HTML, and let it shrink to fit."""
    svg = re.sub(r"<\?xml[^>]*\?>", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>", "", svg, flags=re.S)
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)
    svg = re.sub(r"<svg\b", '<svg style="max-width:100%;height:auto"', svg, count=1)
    return svg.strip()


def width_px(svg: str) -> float | None:
    """The drawing's natural width in CSS pixels (graphviz writes it in points), None if unknown."""
    m = re.search(r'<svg\b[^>]*?\swidth="([\d.]+)pt"', svg)
    return float(m.group(1)) * 4 / 3 if m else None


def wide_note(svg: str) -> str:
    """A line over a graph too wide to read when shrunk to the panel (a loop nest with an unrolled
    micro-kernel is thousands of pixels wide), '' otherwise."""
    w = width_px(svg)
    if w is None or w <= WIDE_PX:
        return ""
    return note_html(f"this graph is {w:,.0f} px wide and drawn shrunk to fit: the IR text tab shows the same "
                     "program readably (or zoom the browser in)")


class GraphView(W.VBox):
    """Shows one graph: pass a Snapshot (or anything with .dot()) or DOT text.

    `.html.value` holds the inline `<svg>` (or the DOT fallback); `.dot` the source shown.
    """

    def __init__(self, source: Any = None, max_height: str = "560px", **kwargs: Any):
        self.html = W.HTML(layout=W.Layout(overflow="auto", max_height=max_height, width="100%"))
        self.dot: str | None = None
        super().__init__([self.html], **kwargs)
        self.add_class("ke-graph")
        if source is not None:
            self.show(source)

    def show(self, source: Any) -> None:
        """Draw a Snapshot / IR object (anything with .dot()) or DOT text; errors show in red."""
        if source is None:
            self.dot = None
            self.html.value = error_html("no graph for this stage")
            return
        try:
            dot = source if isinstance(source, str) else source.dot()
        except Exception as e:  # noqa: BLE001 — a stage without a drawing must not break the view
            self.dot = None
            self.html.value = error_html(describe_error(e), "cannot draw this stage:")
            return
        self.set_dot(dot)

    def set_dot(self, dot: str) -> None:
        if dot == self.dot and self.html.value:
            return
        self.dot = dot
        from explorer import render
        if not render.have_dot():
            self.html.value = (f'<div class="ke-dot-fallback"><div style="color:#8a6d3b">{esc(INSTALL_HINT)}</div>'
                               f"{pre_html(dot, '420px')}</div>")
            return
        try:
            svg = svg_for_dot(dot)
            self.html.value = f'{wide_note(svg)}<div class="ke-svg">{inline_svg(svg)}</div>'
        except Exception as e:  # noqa: BLE001
            self.html.value = error_html(describe_error(e), "graphviz could not draw this graph:") + pre_html(dot)

    @property
    def has_svg(self) -> bool:
        return "<svg" in self.html.value
