"""StageDiff: the IR text of one stage against the previous one, added lines green, removed red.

Node ids are stable across passes, so a line-level diff shows exactly what a pass changed. Where the
IR changes kind (graph → fused kernels → loop nests → source) a line diff is one big delete-and-insert,
so `set_stages` shows a structural diff instead: kernel by kernel, what it was in the previous stage
beside what it is now.

>>> from widgets import StageDiff
>>> d = StageDiff("a = 1\\nb = 2", "a = 1\\nc = 3", "before", "after")
>>> d.added, d.removed
(1, 1)
"""
from __future__ import annotations

import difflib
from typing import Any

import ipywidgets as W

from ._util import esc

ADDED = "background:#e6ffec;color:#116329"
REMOVED = "background:#ffebe9;color:#82071e"


def diff_html(before: str, after: str) -> tuple[str, int, int]:
    """(HTML of the whole text with changes marked, lines added, lines removed)."""
    a, b = before.splitlines(), after.splitlines()
    rows: list[str] = []
    added = removed = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            rows += [f'<div class="ke-same">  {esc(x)}</div>' for x in a[i1:i2]]
            continue
        if tag in ("replace", "delete"):
            rows += [f'<div class="ke-del" style="{REMOVED}">- {esc(x)}</div>' for x in a[i1:i2]]
            removed += i2 - i1
        if tag in ("replace", "insert"):
            rows += [f'<div class="ke-add" style="{ADDED}">+ {esc(x)}</div>' for x in b[j1:j2]]
            added += j2 - j1
    body = "".join(rows) or "<div>(both empty)</div>"
    return (f'<div style="font-family:monospace;font-size:12px;white-space:pre;line-height:1.35;'
            f'max-height:480px;overflow:auto">{body}</div>', added, removed)


def kernel_parts(ir: Any, members_of: dict[str, list] | None = None) -> dict[str, str] | None:
    """{kernel name: its text in this IR}, or None for a whole-program graph (no kernels yet).

    For a Graph, `members_of` ({kernel name: nodes}, from the next stage's fused groups) picks each
    kernel's node lines out of the graph."""
    from explorer.graph import Graph
    from explorer.passes.fusion import FusedGraph
    if isinstance(ir, FusedGraph):
        return {g.name: "\n".join([f"# {g.id} [{g.kind}] reads " + (", ".join(i.name for i in g.inputs) or "-")
                                    + " writes " + ", ".join(o.name for o in g.outputs)]
                                   + [ir.graph.node_line(n) for n in g.nodes]) for g in ir.groups}
    if isinstance(ir, Graph):
        if members_of is None:
            return None
        by_id = {n.id: n for n in ir.nodes}
        return {name: "\n".join(ir.node_line(by_id[n.id]) for n in nodes if n.id in by_id)
                for name, nodes in members_of.items()}
    kernels = getattr(ir, "kernels", None)
    if kernels and all(hasattr(k, "name") for k in kernels):
        return {k.name: (k.source if isinstance(getattr(k, "source", None), str) else k.text()) for k in kernels}
    return None


def structural_html(before_ir: Any, after_ir: Any, before_name: str, after_name: str) -> str | None:
    """A table, one row per kernel of `after_ir`: the kernel's part of `before_ir` beside its part of
    `after_ir`; None when the two cannot be matched kernel by kernel."""
    from explorer.passes.fusion import FusedGraph
    members = {g.name: g.nodes for g in after_ir.groups} if isinstance(after_ir, FusedGraph) else None
    after = kernel_parts(after_ir)
    before = kernel_parts(before_ir, members)
    if not after or before is None:
        return None
    cell = ("vertical-align:top;padding:2px 6px;border-top:1px solid #ddd")
    pre = ("margin:0;font-size:11px;line-height:1.3;white-space:pre;overflow:auto;max-height:260px;"
           "max-width:560px;background:#fafafa")
    rows = []
    for name, text in after.items():
        old = before.get(name)
        rows.append(f"<tr><td style='{cell}'><code>{esc(name)}</code></td>"
                    f"<td style='{cell}'><pre style='{pre}'>{esc(old) if old is not None else '(new)'}</pre></td>"
                    f"<td style='{cell}'><pre style='{pre}'>{esc(text)}</pre></td></tr>")
    return (f"<table class='ke-structural-diff' style='border-collapse:collapse'><tr><th>kernel</th>"
            f"<th>{esc(before_name)}</th><th>{esc(after_name)}</th></tr>{''.join(rows)}</table>")


def same_kind(before_ir: Any, after_ir: Any) -> bool:
    """Whether the two IRs print the same kind of text, so a line diff shows what the pass changed:
    the same type, or the lowered ComputeProgram (printed as its naive loops) and a loop Program."""
    from explorer.compute import ComputeProgram
    from explorer.loopir import Program
    loops = (ComputeProgram, Program)
    return type(before_ir) is type(after_ir) or (isinstance(before_ir, loops) and isinstance(after_ir, loops))


class StageDiff(W.VBox):
    """Diff of two IR texts. `.set(before, after, before_name, after_name)` redraws it."""

    def __init__(self, before: str = "", after: str = "", before_name: str = "previous",
                 after_name: str = "this stage", **kwargs: Any):
        self.header = W.HTML()
        self.html = W.HTML(layout=W.Layout(width="100%"))
        self.added = self.removed = 0
        super().__init__([self.header, self.html], **kwargs)
        self.add_class("ke-diff")
        self.set(before, after, before_name, after_name)

    def set(self, before: str, after: str, before_name: str = "previous", after_name: str = "this stage") -> None:
        body, self.added, self.removed = diff_html(before, after)
        self.header.value = (f"<b>{esc(before_name)} → {esc(after_name)}</b>: "
                             f'<span style="{ADDED}">+{self.added}</span> '
                             f'<span style="{REMOVED}">−{self.removed}</span> lines')
        self.html.value = body

    def set_stages(self, before: Any, after: Any) -> None:
        """Diff two Snapshots: a line diff of their text when the IR keeps its kind, else kernel by kernel."""
        if not same_kind(before.ir, after.ir):
            try:
                table = structural_html(before.ir, after.ir, before.name, after.name)
            except Exception:  # noqa: BLE001 — an IR this view does not know: fall back to the text diff
                table = None
            if table is not None:
                self.added = self.removed = 0
                self.header.value = (f"<b>{esc(before.name)} → {esc(after.name)}</b>: the IR changes kind "
                                     f"({esc(type(before.ir).__name__)} → {esc(type(after.ir).__name__)}), "
                                     "so each kernel is shown as it was and as it is")
                self.html.value = table
                return
        self.set(before.text(), after.text(), before.name, after.name)

    def show_first(self, name: str, text: str) -> None:
        """The first stage has nothing before it: show it unmarked."""
        self.added = self.removed = 0
        self.header.value = f"<b>{esc(name)}</b> is the first stage: nothing to diff against"
        self.html.value = diff_html(text, text)[0]
