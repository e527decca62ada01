"""The fusion lesson in numbers: what fusing saved (kernels, launches, bytes through global memory,
time with its spread) and one sentence generated from those numbers.

Headless, so the dashboard's Fusion tab, reports and tests say the same thing.

>>> import numpy as np, explorer
>>> from explorer.lesson import fusion_summary
>>> c = explorer.compile(lambda a, b: np.exp(a) * b + 1, np.ones(1 << 14, np.float32),
...                      np.ones(1 << 14, np.float32), target="reference", stop_after="fused")
>>> s = fusion_summary(c)
>>> s.kernels, s.round_trips_removed
((3, 1), 2)
>>> s.sentence()
'fusion removed 2 round trips of 64.0 KiB each through global memory: 3 → 1 kernels, 448.0 KiB → 192.0 KiB moved; measure to see the time.'
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .measure import ratio
from .passes.fusion import FusedGraph, fuse
from .units import fmt_bytes as _fmt_bytes

__all__ = ["FusionSummary", "fusion_summary", "memory_traffic", "intermediates", "speedup_spread"]


def intermediates(fg: FusedGraph) -> list:
    """Values one kernel writes to global memory and another reads back (not returned to the caller)."""
    outs = {id(o) for o in fg.graph.outputs}
    return [o for g in fg.groups for o in g.outputs if id(o) not in outs]


def memory_traffic(fg: FusedGraph) -> int:
    """Bytes all kernels read and write in global memory: each kernel reads its inputs (scalar
    constants are inlined) and writes its outputs, so an unfused intermediate counts twice."""
    total = 0
    for g in fg.groups:
        total += sum(i.nbytes for i in g.inputs if not (i.op == "const" and i.size <= 1))
        total += sum(o.nbytes for o in g.outputs)
    return total


def speedup_spread(fused: Any, unfused: Any) -> tuple[float, float | None]:
    """(median speedup unfused/fused, ± half-width of the range the quartiles allow), from two
    compare Variants (or Timings) with median_ms, q1_ms, q3_ms; the spread is None without quartiles.

    >>> from types import SimpleNamespace as T
    >>> speedup_spread(T(median_ms=1.0, q1_ms=0.95, q3_ms=1.05), T(median_ms=1.4, q1_ms=1.38, q3_ms=1.42))
    (1.4, 0.0902)
    """
    r = ratio(unfused, fused)
    fq1, fq3, uq1, uq3 = (getattr(t, q, None) for t in (fused, unfused) for q in ("q1_ms", "q3_ms"))
    if None in (fq1, fq3, uq1, uq3) or fq1 <= 0 or fq3 <= 0:
        return round(r.value, 4), None
    return round(r.value, 4), round((r.high - r.low) / 2, 4)


@dataclass
class FusionSummary:
    """Unfused → fused numbers of one function. Pairs are (unfused, fused).

    time_ms / speedup / spread come from an explorer.compare Comparison when one is given; `measured`
    says whether those times are wall-clock (False: the roofline model's, e.g. on target 'sim').
    """

    name: str
    kernels: tuple[int, int]
    launches: tuple[int, int]
    bytes_moved: tuple[int, int]
    round_trips_removed: int
    removed_sizes: list[int]
    time_ms: tuple[float, float] | None = None
    spread_ms: tuple[float | None, float | None] | None = None
    speedup: float | None = None
    spread: float | None = None
    measured: bool = True
    unstable: bool = False
    device: str = ""
    fusion_off: bool = False  # the compile had fuse=False: the fused side is what fusion would do


    def sentence(self) -> str:
        """One sentence from the numbers, e.g. 'fusion removed 2 round trips of 256.0 KiB each through
        global memory: 3 → 1 kernels, 1.4x faster (±0.05, measured).'"""
        ku, kf = self.kernels
        kernels = f"{ku} → {kf} kernel{'s' if max(ku, kf) != 1 else ''}"
        n, sizes = self.round_trips_removed, self.removed_sizes
        if self.fusion_off:
            head = (f"fusion is off: {ku} kernels" + (f" and {n} round trip{'s' if n != 1 else ''} through global "
                                                     f"memory; turned on, fusion would make it {kernels}"
                                                     if n > 0 else "; turned on, fusion would change nothing here"))
            if self.speedup is None:
                return head + "."
            self_speed = self.speedup
            speed = f"{self_speed:.2g}x faster" if self_speed >= 1 else f"{1 / self_speed:.2g}x slower"
            return f"{head}, {speed} ({'measured' if self.measured else 'roofline model, not measured'})."
        if n <= 0:
            head = (f"fusion changed nothing here: {kernels} (no intermediate to keep out of global memory)"
                    if ku == kf else f"fusion removed no round trip through global memory but merged kernels: {kernels}")
        else:
            trips = f"{n} round trip{'s' if n != 1 else ''}"
            size = (f"of {_fmt_bytes(sizes[0])}" + (" each" if n > 1 else "")) if len(set(sizes)) == 1 \
                else f"({_fmt_bytes(sum(sizes))} in all)"
            bu, bf = self.bytes_moved
            head = (f"fusion removed {trips} {size} through global memory: {kernels}, "
                    f"{_fmt_bytes(bu)} → {_fmt_bytes(bf)} moved")
        if self.speedup is None:
            return head + ("; measure to see the time." if n > 0 or ku != kf else ".")
        if self.speedup >= 1.0:
            speed = f"{self.speedup:.2g}x faster" if self.speedup < 10 else f"{self.speedup:.0f}x faster"
        else:
            speed = f"{1 / self.speedup:.2g}x slower" if self.speedup > 0 else "no time measured"
        how = []
        if self.spread is not None and self.measured:   # a modelled time has no spread ("±0.00" says nothing)
            how.append(f"±{self.spread:.2f}")
        how.append("measured" if self.measured else f"roofline model{' of ' + self.device if self.device else ''}, "
                   "not measured")
        if self.unstable:
            how.append("timing unstable: re-measure")
        return f"{head}, {speed} ({', '.join(how)})."

    def rows(self) -> list[tuple[str, str, str]]:
        """(quantity, unfused, fused) rows of the totals table, as text."""
        out = [("kernels", str(self.kernels[0]), str(self.kernels[1])),
               ("launches per call", str(self.launches[0]), str(self.launches[1])),
               ("bytes through global memory", _fmt_bytes(self.bytes_moved[0]), _fmt_bytes(self.bytes_moved[1]))]
        if self.time_ms is not None:
            spreads = self.spread_ms or (None, None)
            label = "time (median)" if self.measured else "time (model, not measured)"
            out.append((label, *(_fmt_ms(t, s) for t, s in zip(self.time_ms, spreads))))
        return out


def _fmt_ms(ms: float, spread: float | None) -> str:
    return f"{ms:.3g} ms" + (f" ± {spread:.2g}" if spread is not None else "")


def _fused_graph(x: Any) -> FusedGraph:
    if isinstance(x, FusedGraph):
        return x
    ir = x.stage("fused").ir  # a Compiled
    if not isinstance(ir, FusedGraph):
        raise TypeError(f"expected a Compiled with a fused stage or a FusedGraph, got {type(x).__name__}")
    return ir


def _launches(x: Any, fg: FusedGraph) -> int:
    kernels = getattr(x, "kernels", None) if x is not None and not isinstance(x, FusedGraph) else None
    return len(kernels) if kernels else len(fg.groups)


def fusion_summary(fused: Any, unfused: Any = None, comparison: Any = None) -> FusionSummary:
    """Numbers of the fusion lesson: `fused` is a Compiled (or FusedGraph); `unfused` the same function
    compiled with fuse=False (default: its graph partitioned one op per kernel); `comparison` an
    explorer.compare result for the time, its spread and whether it was measured."""
    fg = _fused_graph(fused)
    off = not any(fg.rules.values())
    if off:  # fuse=False: show what fusion would do
        fused, fg = None, fuse(fg.graph)
    ug = _fused_graph(unfused) if unfused is not None else fuse(fg.graph, rules=False)
    kept = {id(n) for n in intermediates(fg)}
    removed = [n for n in intermediates(ug) if id(n) not in kept]
    s = FusionSummary(name=fg.name, kernels=(len(ug.groups), len(fg.groups)),
                      launches=(_launches(unfused, ug) if unfused is not None else len(ug.groups),
                                _launches(fused, fg) if fused is not None else len(fg.groups)),
                      bytes_moved=(memory_traffic(ug), memory_traffic(fg)),
                      round_trips_removed=len(removed), removed_sizes=[n.nbytes for n in removed], fusion_off=off)
    if comparison is not None:
        vf, vu = comparison.variant("fused"), comparison.variant("unfused")
        rng = getattr(comparison, "speedup_range", None)  # explorer.measure's Ratio, where compare has it
        if rng is not None and math.isfinite(rng.low) and math.isfinite(rng.high):
            s.speedup, s.spread = round(rng.value, 4), round((rng.high - rng.low) / 2, 4)
        else:
            s.speedup, s.spread = speedup_spread(vf, vu)
        s.time_ms = (vu.median_ms, vf.median_ms)
        s.spread_ms = tuple(None if v.q1_ms is None or v.q3_ms is None else (v.q3_ms - v.q1_ms) / 2
                            for v in (vu, vf))
        s.measured = bool(vf.measured)
        s.unstable = bool(getattr(vf, "unstable", False) or getattr(vu, "unstable", False)
                          or getattr(rng, "unstable", False))
        s.device = getattr(getattr(comparison, "device", None), "name", "") if not s.measured else ""
    return s
