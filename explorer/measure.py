"""One timing methodology for every number the explorer shows (benchmark, compare, sweep, widgets).

On a shared machine (Binder, a laptop, 2 cores with neighbours) a single timing, or a mean, says
little: a descheduled thread turns a 0.1 ms call into 16 ms now and then. So every measurement here

* warms up (`warmup` calls per variant) before it records anything, and pauses Python's garbage
  collector while it times (as timeit does),
* runs the variants **interleaved round-robin** (each round times every variant once, the starting
  variant rotating), so drift and neighbours hit them alike,
* picks the number of rounds itself, as `timeit.autorange` / pyperf do: it stops once the median is
  known to `precision` (McGill's notch: 95% interval of the median ≈ ±1.57·IQR/√n), or when the time
  `budget_s` is spent (at least 3 rounds), unless `repeat=` fixes the count,
* reports the median, the interquartile range (25th–75th percentile), the min and n — a stall moves
  none of median, IQR or min much — and flags the result **unstable** (with the reason) when the spread
  stays high, and
* turns two Timings into a Ratio that carries its range and refuses to look precise when it is not.

>>> import itertools
>>> fake = itertools.count(0.0, 0.001)                  # a clock that advances 1 ms per reading
>>> t = measure(lambda: None, repeat=5, clock=lambda: next(fake))
>>> (t.median_ms, t.repeat, t.unstable)
(1.0, 5, False)
>>> ts = interleaved({"fused": lambda: None, "unfused": lambda: None}, repeat=4, clock=lambda: next(fake))
>>> str(speedup(ts["unfused"], ts["fused"]))
'1.00x (1.00–1.00)'

Imports only NumPy and the standard library (a leaf module).
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

UNSTABLE_TEXT = "unstable measurement (noisy machine): rerun"
DEFAULT_BUDGET_S = 1.0     # time budget of one measurement (all variants together)
MIN_REPEAT = 5             # rounds before the stopping rule may stop (when the budget allows)
MIN_ROUNDS = 3             # rounds even when one round overruns the budget: fewer cannot show a spread
MAX_REPEAT = 10_000
PRECISION = 0.03           # stop when the median's 95% interval is within ±3% of it
UNSTABLE_SPREAD = 0.25     # IQR / median above this: the middle half of the runs disagrees too much
UNSTABLE_INTERVAL = 0.10   # the median still known only to worse than ±10% when the budget ran out
UNSTABLE_OVER_MIN = 2.0    # median more than 2x the fastest run: most runs were slowed down (stalls)
STALL_FACTOR = 5.0         # a run longer than 5x the median counts as a stall (shown, not averaged in)


# ----------------------------------------------------------------------------- one variant's result
@dataclass
class Timing:
    """Times of one call in milliseconds: median, quartiles, min over `repeat` runs, and a verdict.

    `unstable` is True when the spread stayed high (see `reason`); such a number must be shown with
    UNSTABLE_TEXT, not as a plain figure. `stalls` counts runs longer than STALL_FACTOR x the median.
    """

    median_ms: float
    min_ms: float
    stdev_ms: float
    repeat: int
    per_kernel_ms: dict[str, float] | None = None
    source: str = "wall"   # 'wall' | 'cuda-events' | 'sim-wall'
    q1_ms: float | None = None   # 25th and 75th percentiles: a spread one slow outlier does not blow up
    q3_ms: float | None = None
    max_ms: float | None = None
    unstable: bool = False
    reason: str = ""
    stalls: int = 0
    samples_ms: tuple[float, ...] = field(default=(), repr=False)
    # what was done to NumPy's BLAS pool while measuring (explorer.blas.BlasSetting; None: not recorded)
    blas: Any = field(default=None, repr=False)

    @property
    def iqr_ms(self) -> float:
        """q3 - q1 (0 when the quartiles are unknown)."""
        return (self.q3_ms - self.q1_ms) if self.q1_ms is not None and self.q3_ms is not None else 0.0

    @property
    def spread(self) -> float:
        """IQR relative to the median (0.05 = the middle half of the runs spans 5% of the median)."""
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else 0.0

    def spread_text(self) -> str:
        """'IQR 0.80–0.92' (milliseconds), or '' without quartiles."""
        if self.q1_ms is None or self.q3_ms is None:
            return ""
        return f"IQR {fmt_ms(self.q1_ms)}–{fmt_ms(self.q3_ms)}"

    def flag_text(self) -> str:
        """'' or 'unstable measurement (noisy machine): rerun (reason)'."""
        return f"{UNSTABLE_TEXT} ({self.reason})" if self.unstable else ""

    def __str__(self) -> str:
        parts = [p for p in (self.spread_text(), f"min {fmt_ms(self.min_ms)}", f"n={self.repeat}", self.source) if p]
        if self.stalls:
            parts.append(f"{self.stalls} stalled run{'s' if self.stalls > 1 else ''}")
        text = f"{fmt_ms(self.median_ms)} ms ({', '.join(parts)})"
        return text + (f" — {self.flag_text()}" if self.unstable else "")


def fmt_ms(x: float | None) -> str:
    """A time in ms with 3-4 significant digits ('-' for None/NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def quartiles(samples: Sequence[float]) -> tuple[float, float]:
    """(25th, 75th) percentile of the samples (both the value itself for one sample)."""
    s = list(samples)
    if len(s) < 2:
        return s[0], s[0]
    q = statistics.quantiles(s, n=4, method="inclusive")
    return q[0], q[2]


def median_interval(samples: Sequence[float]) -> float:
    """Half-width of the median's ~95% interval relative to the median: 1.57·IQR/√n / median
    (McGill, Tukey & Larsen's notch; inf for fewer than 2 samples or a zero median)."""
    s = list(samples)
    med = statistics.median(s) if s else 0.0
    if len(s) < 2 or med <= 0:
        return math.inf
    q1, q3 = quartiles(s)
    return 1.57 * (q3 - q1) / math.sqrt(len(s)) / med


def summarize(samples_ms: Sequence[float], per_kernel: dict[str, float] | None = None, source: str = "wall",
              converged: bool = True) -> Timing:
    """A Timing (median, quartiles, min, stalls, verdict) of raw samples in milliseconds.

    `converged=False` says the stopping rule ran out of budget before the median was known to
    PRECISION; the result is then flagged when its interval is still wider than UNSTABLE_INTERVAL.

    >>> t = summarize([1.0, 1.1, 0.9, 1.05, 0.95, 50.0])
    >>> (t.median_ms, t.stalls, t.unstable)
    (1.025, 1, False)
    """
    s = [float(x) for x in samples_ms]
    if not s:
        raise ValueError("summarize needs at least one sample")
    med = statistics.median(s)
    q1, q3 = quartiles(s)
    mn = min(s)
    t = Timing(med, mn, statistics.stdev(s) if len(s) > 1 else 0.0, len(s), per_kernel, source, q1, q3, max(s),
               stalls=sum(x > STALL_FACTOR * med for x in s) if med > 0 else 0, samples_ms=tuple(s))
    t.unstable, t.reason = _verdict(s, med, q1, q3, mn, converged)
    return t


def _verdict(s: list[float], med: float, q1: float, q3: float, mn: float, converged: bool) -> tuple[bool, str]:
    if len(s) < MIN_ROUNDS or med <= 0:
        return False, ""           # too few runs to judge a spread (repeat=1 asks for exactly that)
    reasons = []
    if (q3 - q1) / med > UNSTABLE_SPREAD:
        reasons.append(f"the middle half of {len(s)} runs spans {(q3 - q1) / med:.0%} of the median")
    if mn > 0 and med / mn > UNSTABLE_OVER_MIN:
        reasons.append(f"the median is {med / mn:.3g}x the fastest run: most runs were slowed down")
    ci = median_interval(s)
    if not converged and ci > UNSTABLE_INTERVAL:
        reasons.append(f"after the time budget the median is known only to ±{ci:.0%}")
    return bool(reasons), "; ".join(reasons)


# ----------------------------------------------------------------------------- running variants
@dataclass(frozen=True)
class Sampler:
    """A variant that times itself: `sample()` runs it once and returns milliseconds, or
    (milliseconds, {kernel name: milliseconds}). Backends use it for CUDA events and per-kernel times;
    a plain callable is timed with the wall clock instead."""

    sample: Callable[[], Union[float, tuple[float, Mapping[str, float]]]]
    source: str = "wall"


Variant = Union[Callable[[], Any], Sampler]


def _check(name: str, v: Any, lo: int) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name}={v!r}: must be an integer >= {lo}")
    return int(v)


def interleaved(variants: Mapping[str, Variant], *, budget_s: float | None = None, warmup: int = 1,
                repeat: int | None = None, min_repeat: int = MIN_REPEAT, max_repeat: int = MAX_REPEAT,
                precision: float = PRECISION, clock: Callable[[], float] = time.perf_counter,
                on_round: Callable[[int], None] | None = None) -> dict[str, Timing]:
    """Time several variants round-robin; → {name: Timing}.

    Each round runs every variant once, starting one further along each round (round r runs
    names[r % k], names[r % k + 1], ...), so no variant always follows the same neighbour and slow
    phases of the machine fall on all of them. `warmup` untimed rounds come first. With
    `repeat=None` the rounds continue until every variant's median is within `precision`
    (and at least `min_repeat` rounds ran), or `budget_s` seconds have passed (at least MIN_ROUNDS
    rounds), or `max_repeat`; with `repeat=N` exactly N rounds run. `clock` is the wall clock
    (seconds); tests pass a fake one.

    >>> import itertools
    >>> fake = itertools.count(0.0, 0.001)
    >>> r = interleaved({"a": lambda: None, "b": lambda: None}, repeat=3, clock=lambda: next(fake))
    >>> sorted(r), r["a"].repeat
    (['a', 'b'], 3)
    """
    if not variants:
        raise ValueError("interleaved needs at least one variant")
    warmup = _check("warmup", warmup, 0)
    if repeat is not None:
        repeat = _check("repeat", repeat, 1)
    budget = DEFAULT_BUDGET_S if budget_s is None else float(budget_s)
    if not budget > 0:
        raise ValueError(f"budget_s={budget_s!r}: must be a number of seconds > 0")
    names = list(variants)
    samplers = {n: _as_sampler(v, clock) for n, v in variants.items()}
    samples: dict[str, list[float]] = {n: [] for n in names}
    per_kernel: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()   # as timeit does: a collection triggered by one variant's garbage would land on another's time
    try:
        for r in range(warmup):
            for n in _rotation(names, r):
                samplers[n].sample()
        start = clock()
        rounds, converged = 0, True
        while True:
            for n in _rotation(names, rounds):
                ms, per = _unpack(samplers[n].sample())
                samples[n].append(ms)
                for k, v in per.items():
                    per_kernel[n].setdefault(k, []).append(v)
            rounds += 1
            if on_round is not None:
                on_round(rounds)
            if repeat is not None:
                if rounds >= repeat:
                    break
                continue
            precise = all(median_interval(samples[n]) <= precision for n in names)
            if rounds >= min_repeat and precise:
                break
            if rounds >= max_repeat or (clock() - start >= budget and rounds >= min(MIN_ROUNDS, min_repeat)):
                converged = precise
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return {n: summarize(samples[n], {k: statistics.median(v) for k, v in per_kernel[n].items()} or None,
                         samplers[n].source, converged) for n in names}


def measure(fn: Variant, **kwargs: Any) -> Timing:
    """One variant: `interleaved({"": fn}, **kwargs)[""]` (same warm-up, stopping rule and verdict).

    >>> import itertools
    >>> fake = itertools.count(0.0, 0.002)
    >>> measure(lambda: None, repeat=3, clock=lambda: next(fake)).median_ms
    2.0
    """
    return interleaved({"": fn}, **kwargs)[""]


def _rotation(names: list[str], r: int) -> list[str]:
    k = r % len(names)
    return names[k:] + names[:k]


def _as_sampler(v: Variant, clock: Callable[[], float]) -> Sampler:
    if isinstance(v, Sampler):
        return v
    if not callable(v):
        raise ValueError(f"a variant must be a callable or a measure.Sampler, got {type(v).__name__}")

    def wall() -> float:
        t0 = clock()
        v()
        return (clock() - t0) * 1e3
    return Sampler(wall)


def _unpack(x: Any) -> tuple[float, Mapping[str, float]]:
    if isinstance(x, tuple):
        return float(x[0]), x[1] or {}
    return float(x), {}


# ----------------------------------------------------------------------------- ratios
@dataclass(frozen=True)
class Ratio:
    """num / den of two Timings: `value` of the medians, `low`..`high` from the quartiles
    (num.q1 / den.q3 .. num.q3 / den.q1), and the unstable flag of either side.

    str() never prints a bare '0.00x': three significant digits, the range, and the flag.
    """

    value: float
    low: float
    high: float
    unstable: bool = False
    reason: str = ""

    def __float__(self) -> float:
        return float(self.value)

    def range_text(self) -> str:
        """'1.42x (1.30–1.55)', without the flag."""
        text = fmt_ratio(self.value)
        if math.isfinite(self.low) and math.isfinite(self.high):
            text += f" ({_sig3(self.low)}–{_sig3(self.high)})"
        return text

    def __str__(self) -> str:
        return self.range_text() + (f" — {UNSTABLE_TEXT}" if self.unstable else "")


def _sig3(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:#.3g}"


def fmt_ratio(x: float | None) -> str:
    """3 significant digits and 'x' ('0.00423x', '1.42x', '39.7x'), never a bare '0.00x';
    'n/a' for None, NaN or inf."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{_sig3(x)}x"


def ratio(num: Timing, den: Timing) -> Ratio:
    """num.median / den.median with its range; unstable if either side is (reasons named).

    Duck-typed: anything with median_ms, q1_ms, q3_ms (and optionally unstable, reason) will do;
    a missing quartile counts as the median."""
    def q(t: Timing, which: str) -> float:
        v = getattr(t, which, None)
        return t.median_ms if v is None else v
    value = num.median_ms / den.median_ms if den.median_ms > 0 else math.inf
    low = q(num, "q1_ms") / q(den, "q3_ms") if q(den, "q3_ms") > 0 else math.inf
    high = q(num, "q3_ms") / q(den, "q1_ms") if q(den, "q1_ms") > 0 else math.inf
    flags = [bool(getattr(t, "unstable", False)) for t in (num, den)]
    reasons = [getattr(t, "reason", "") for t, bad in zip((num, den), flags) if bad]
    return Ratio(value, low, high, any(flags), "; ".join(dict.fromkeys(r for r in reasons if r)))


def speedup(baseline: Timing, candidate: Timing) -> Ratio:
    """How many times faster `candidate` is than `baseline` (baseline time / candidate time)."""
    return ratio(baseline, candidate)


__all__ = ["Timing", "Sampler", "Ratio", "interleaved", "measure", "summarize", "quartiles", "median_interval",
           "ratio", "speedup", "fmt_ms", "fmt_ratio", "UNSTABLE_TEXT", "DEFAULT_BUDGET_S"]
