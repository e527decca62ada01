"""StageDiff: the IR text of one stage against the previous one, added lines green, removed red.

Node ids are stable across passes, so a line-level diff shows exactly what a pass changed.

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

    def show_first(self, name: str, text: str) -> None:
        """The first stage has nothing before it: show it unmarked."""
        self.added = self.removed = 0
        self.header.value = f"<b>{esc(name)}</b> is the first stage: nothing to diff against"
        self.html.value = diff_html(text, text)[0]
