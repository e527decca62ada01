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

from ._util import code_html, esc

ADDED = "background:#e6ffec;color:#116329"
REMOVED = "background:#ffebe9;color:#82071e"


CONTEXT_LINES = 3   # unchanged lines kept around each change; longer unchanged runs fold into a <details>


def _fold(lines: list[str], keep_head: int, keep_tail: int) -> list[str]:
    """Unchanged rows with all but the first `keep_head` and last `keep_tail` folded (click to show)."""
    hidden = len(lines) - keep_head - keep_tail
    if hidden < 2:  # folding one line saves nothing
        return lines
    tail = lines[len(lines) - keep_tail:] if keep_tail else []
    return (lines[:keep_head]
            + [f'<details class="ke-fold"><summary style="color:#666;cursor:pointer">… {hidden} unchanged lines '
               f'(click to show)</summary>{"".join(lines[keep_head:keep_head + hidden])}</details>']
            + tail)


def diff_html(before: str, after: str, context: int | None = None) -> tuple[str, int, int]:
    """(HTML of the whole text with changes marked, lines added, lines removed).

    With `context`, only that many unchanged lines stay visible around each change; the longer
    unchanged runs are folded ("… 22 unchanged lines", click to show), so a small change in a long
    program is on screen without scrolling.
    """
    a, b = before.splitlines(), after.splitlines()
    rows: list[str] = []
    added = removed = 0
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    changed = any(tag != "equal" for tag, *_ in ops)
    for n, (tag, i1, i2, j1, j2) in enumerate(ops):
        if tag == "equal":
            same = [f'<div class="ke-same">  {esc(x)}</div>' for x in a[i1:i2]]
            if context is not None and changed:
                same = _fold(same, context if n > 0 else 0, context if n < len(ops) - 1 else 0)
            rows += same
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
    # a fixed layout over the panel's width: both columns stay on screen, each pre scrolls on its own
    pre = "margin:0;font-size:11px;line-height:1.3;white-space:pre;overflow:auto;max-height:260px;background:#fafafa"
    rows = []
    for name, text in after.items():
        old = before.get(name)
        rows.append(f"<tr><td style='{cell};overflow-wrap:anywhere'><code>{esc(name)}</code></td>"
                    f"<td style='{cell}'><pre style='{pre}'>{esc(old) if old is not None else '(new)'}</pre></td>"
                    f"<td style='{cell}'><pre style='{pre}'>{esc(text)}</pre></td></tr>")
    return (f"<table class='ke-structural-diff' style='border-collapse:collapse;table-layout:fixed;width:100%'>"
            f"<tr><th style='width:16%'>kernel</th><th style='width:42%'>{esc(before_name)}</th>"
            f"<th style='width:42%'>{esc(after_name)}</th></tr>{''.join(rows)}</table>")


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
                 after_name: str = "this stage", context: int | None = CONTEXT_LINES, **kwargs: Any):
        self.context = context  # None: every unchanged line stays visible
        self.header = W.HTML()
        self.html = W.HTML(layout=W.Layout(width="100%"))
        self.added = self.removed = 0
        super().__init__([self.header, self.html], **kwargs)
        self.add_class("ke-diff")
        self.set(before, after, before_name, after_name)

    def set(self, before: str, after: str, before_name: str = "previous", after_name: str = "this stage",
            note: str = "") -> None:
        """Line diff of two texts; unchanged runs longer than `context` lines are folded. `note` (plain
        text) follows the counts, e.g. what the pass did or why it changed nothing."""
        body, self.added, self.removed = diff_html(before, after, self.context)
        unchanged = "" if self.added or self.removed else " — the pass left the text as it was"
        self.header.value = (f"<b>{esc(before_name)} → {esc(after_name)}</b>: "
                             f'<span style="{ADDED}">+{self.added}</span> '
                             f'<span style="{REMOVED}">−{self.removed}</span> lines{unchanged}'
                             + (f"<div class='ke-diff-note' style='color:#1a5e20'>{code_html(note)}</div>" if note else ""))
        self.html.value = body

    def set_stages(self, before: Any, after: Any, note: str = "") -> None:
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
        self.set(before.text(), after.text(), before.name, after.name, note)

    def show_first(self, name: str, text: str) -> None:
        """The first stage has nothing before it: show it unmarked."""
        self.added = self.removed = 0
        self.header.value = f"<b>{esc(name)}</b> is the first stage: nothing to diff against"
        self.html.value = diff_html(text, text)[0]
