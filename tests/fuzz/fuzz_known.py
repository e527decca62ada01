"""Known bug classes (issue 13's A-H and its minor items), being fixed on other branches.

A failing run that matches a rule here is counted as `known:<letter>` instead of as a new failure,
so `make fuzz` separates what is already filed from what is new. When a fix is merged, delete its
rule: the fuzzer then reports any remaining case of it as new.
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


def _base(r: Run) -> str:
    return r.target.split("+")[0]


def _f16(p: Program, r: Run) -> bool:
    return (any("float16" in t for t in p.tags()) or
            (r.target.endswith("+knobs") and r.knobs.get("dtype") == "float16"))


def _msg(pattern: str, outcome: str = "error"):
    rx = re.compile(pattern)
    return lambda r, p: r.outcome == outcome and bool(rx.search(r.detail))


def _fma_only(r: Run, p: Program) -> bool:
    """D: the cpu result is right once gcc may not contract a*b+c into an FMA (-ffp-contract=off)."""
    if r.outcome != "wrong" or _base(r) != "cpu" or r.knobs.get("fast_math"):
        return False
    from explorer.backends import cpu
    from fuzz_check import check_program
    if "-ffp-contract=off" in cpu.BASE_FLAGS:
        return False
    saved = cpu.BASE_FLAGS
    cpu.BASE_FLAGS = (*saved, "-ffp-contract=off")
    try:
        again = check_program(p, ["cpu"], only=r.target)
    finally:
        cpu.BASE_FLAGS = saved
    return bool(again) and all(not a.failed for a in again)


KNOWN: list[Known] = [
    Known("A", "bool + bool is integer addition on cpu/cuda",
          lambda r, p: r.outcome == "wrong" and _base(r) in ("cpu", "cuda")
          and any(t in p.tags() for t in ("add:bool", "add:bool,bool", "add:bool,scalar", "add:scalar,bool"))),
    Known("B", "float16 intermediates not rounded to half inside fused C/CUDA kernels",
          lambda r, p: r.outcome == "wrong" and _base(r) in ("cpu", "cuda") and _f16(p, r)),
    Known("C", "float16 cumsum accumulates in float32 (sim/cpu)",
          lambda r, p: r.outcome == "wrong" and _f16(p, r) and "cumsum" in " ".join(p.tags())),
    Known("D", "FMA contraction on cpu (gcc without -ffp-contract=off); checked by rebuilding without it",
          _fma_only),
    Known("E", "a reduction with no reduce loop raises 'axis None is not a loop here'",
          _msg(r"is not a loop here")),
    Known("F", "matmul operand that is a fused slice/reshape/index: cache_read staging fails",
          _msg(r"cache_read\(")),
    Known("H", "cpu: math function has no C mapping (abs(bool), int power)", _msg(r"has no C mapping")),
    Known("G:decompose", "decompose=False: opaque op has no loop template", _msg(r"has no loop template")),
    Known("G:tile", "a global schedule tile larger than one kernel's axis is not clamped",
          _msg(r"is larger than the axis extent")),
    # found by this fuzzer, reported to the lead (not on issue 13's list; same family as G:tile)
    Known("N1", "a global schedule vector=k that does not divide one kernel's size is an error, not clamped",
          _msg(r"vector=\d+ does not divide")),
    Known("N2", "bool_array & 1 / bool_array | 1 give bool (taken as logical and/or); NumPy gives int64",
          lambda r, p: r.outcome == "wrong" and r.cls == "dtype:int64" and "logical:bool" in p.tags()),
    # found by this fuzzer in issue-12 code merged on main (rows live once their probes trace)
    Known("N3", "a write (y[:] = c) into a zero-size array: 'value %N has no buffer (fusion invariant broken)'",
          _msg(r"has no buffer \(fusion invariant broken\)")),
    Known("N4", "np.einsum reducing a bool operand gives int64; NumPy gives bool",
          lambda r, p: r.outcome == "wrong" and r.cls.startswith("dtype:bool") and "einsum" in p.ops()
          + [t.split(":")[0] for t in p.tags()]),
]


def known_letter(r: Run, p: Program) -> str | None:
    """The letter of the known class `r` belongs to, or None when it is new."""
    if not r.failed:
        return None
    for k in KNOWN:
        if k.match(r, p):
            return k.letter
    return None


__all__ = ["Known", "KNOWN", "known_letter"]
