"""Known bug classes, counted apart from new failures.

A failing run that matches a rule here is counted as `known:<letter>` instead of as a new failure,
so `make fuzz` separates what is already filed from what is new. When a fix is merged, delete its
rule: the fuzzer then reports any remaining case of it as new.

Issue 13's A-H, G (decompose=False, the global tile clamp) and the fuzzer's own finds N1-N4 are all
fixed on main, each with a regression test in tests/test_issue13_regressions.py, so none is listed:
a reappearance is a new failure. Add a row as

    Known("N5", "one line: what is wrong", _msg(r"a regex of its error message")),
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from fuzz_check import Run
from fuzz_programs import Program


@dataclass(frozen=True)
class Known:
    letter: str
    what: str
    match: Callable[[Run, Program], bool]


def _msg(pattern: str, outcome: str = "error"):
    """A rule matching runs with `outcome` whose detail (the error message) matches `pattern`."""
    rx = re.compile(pattern)
    return lambda r, p: r.outcome == outcome and bool(rx.search(r.detail))


KNOWN: list[Known] = []


def known_letter(r: Run, p: Program) -> str | None:
    """The letter of the known class `r` belongs to, or None when it is new."""
    if not r.failed:
        return None
    for k in KNOWN:
        if k.match(r, p):
            return k.letter
    return None


__all__ = ["Known", "KNOWN", "known_letter"]
