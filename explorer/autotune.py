"""Autotuning you can watch: rank every schedule in a space with the cost model, measure the best few.

`autotune(fn, *args, space=..., budget=..., target=...)`

1. **enumerates** the space (every combination of the knob values in `space`, plus the default
   schedule), compiles each through the pipeline up to code generation (milliseconds: no C/CUDA
   compiler yet) and records an invalid one with its ScheduleError; candidates that generate the
   same code as an earlier one are marked duplicates and not measured twice,
2. **ranks** the rest with the schedule-aware cost model (costmodel.predict_schedule_ms),
3. **measures** in that order within `budget` seconds: the default first, then the top of the
   ranking — on cpu/cuda by time (built, checked once against the NumPy reference, then timed
   interleaved with explorer.measure: median, IQR, unstable flag); on sim by the simulator's exact
   counters (global memory bytes, then barriers — the simulator's wall time says nothing about a GPU),
4. returns an AutotuneResult: `best` (a plain dict for `explorer.compile(..., schedule=best)`),
   every candidate in `rows` / `table()`, `plot()`, `to_json()`; cached on disk by (kernel hash,
   device, space) so a rerun is instant.

The default schedule is always measured, so the best is never one measured slower than it.

>>> import numpy as np, explorer
>>> a = np.ones((32, 32), np.float32)
>>> r = explorer.autotune(lambda a, b: a @ b, a, a, target="sim", space={"tile": [(16, 16, 8), (32, 32, 8)]},
...                       budget=30, progress=False, cache=False)
>>> r.metric, r.best                     # on sim: fewest global-memory bytes; here the default wins
('global_bytes', {})
>>> [(row["schedule"], row["global_bytes"]) for row in r.rows]
[({}, 12288), ({'tile': (16, 16, 8)}, 20480), ({'tile': (32, 32, 8)}, 12288)]
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .errors import BackendUnavailable, ExplorerError
from .target import TARGETS, get_target

# knobs that change the generated code on each target (Target.tunable_knobs; a knob listed for a target can
# still be a no-op for some kernel, which the duplicate check catches); reference has none
TUNABLE = {name: t.tunable_knobs for name, t in TARGETS.items() if t.tunable_knobs}
MAX_CANDIDATES = 5000          # combinations enumerated at most (compiling each takes ~10 ms)
DEFAULT_TOP_K = 8              # measured candidates besides the default, at most
# timed targets split the budget (counted from the call, enumeration included) into phases that end at
# these shares: build + check against NumPy, interleaved timing of the survivors, then a head-to-head
# confirmation of the fastest against the default (on a noisy machine one interleaved median can win
# by luck; the default is kept unless the candidate wins again, on the median and on the fastest run)
BUILD_SHARE = 0.35
TIMING_SHARE = 0.8
CACHE_VERSION = 2   # 2: attention_tile tunable, the model counts K/V re-reads of fused attention
AUTOTUNE_OPTIONS = ("space", "budget", "target", "top_k", "progress", "cache", "on_progress", "blas_threads")

# how many candidates were measured (built and run) in this process: tests check that a cached
# rerun measures nothing without relying on wall time
STATS = {"measured": 0, "compiled": 0}


# ----------------------------------------------------------------------------- result
@dataclass
class Candidate:
    """One point of the space and what happened to it.

    status: 'best' | 'measured' | 'invalid' (reason says why) | 'duplicate' (same code as
    candidate `same_as`) | 'not measured' (ranked below what the budget allowed).
    """

    index: int
    schedule: dict[str, Any]
    is_default: bool = False
    status: str = "not measured"
    reason: str = ""
    predicted_ms: float | None = None
    predicted_bytes: float | None = None  # the model's global bytes (what sim ranks and measures)
    model_rank: int | None = None
    pipeline_s: float | None = None      # trace → codegen
    build_s: float | None = None         # C / CUDA compiler (0 when the build cache had it)
    median_ms: float | None = None
    q1_ms: float | None = None
    q3_ms: float | None = None
    min_ms: float | None = None
    repeat: int = 0
    unstable: bool = False
    unstable_reason: str = ""
    global_bytes: int | None = None      # sim: simulator's exact global-memory bytes (load + store)
    barriers: int | None = None
    same_as: int | None = None

    @property
    def measured(self) -> bool:
        return self.status in ("best", "measured")

    def label(self) -> str:
        return "default" if self.is_default else (", ".join(f"{k}={_fmt_value(v)}" for k, v in self.schedule.items())
                                                  or "{}")


def _fmt_value(v: Any) -> str:
    return "x".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)


@dataclass
class AutotuneResult:
    """What autotune found. `best` is a plain dict: `explorer.compile(fn, *args, schedule=result.best)`.

    >>> import numpy as np, explorer
    >>> a = np.ones((32, 32), np.float32)
    >>> r = explorer.autotune(lambda a, b: a @ b, a, a, target="sim", space={"tile": [(16, 16, 8)]},
    ...                       progress=False, cache=False)
    >>> print(r.table())
    autotune <lambda> on sim (simulator): 2 candidates, 2 measured, 0 invalid, 0 duplicate, ...
    best by global bytes (simulator counters): default — 12,288 B vs default 12,288 B (1x); ...
    #       tile  model bytes  pipeline s  build s   bytes  IQR ms  status
    0  (default)       12,288  ...  12,288       -  best
    1    16x16x8       20,480  ...  20,480       -  measured
    """

    name: str
    target: str
    device: str
    metric: str                   # 'time' (ms, measured) | 'global_bytes' (sim counters)
    space: dict[str, list]
    budget: float
    candidates: list[Candidate]
    best_index: int
    tune_s: float
    key: str = ""
    cached: bool = False
    # timed targets: the head-to-head of the fastest candidate vs the default (medians, IQRs, speedup
    # with its range, kept: whether the candidate won it); {} when the default was fastest or on sim
    confirmation: dict[str, Any] = field(default_factory=dict)
    # what was done to NumPy's BLAS pool while measuring (explorer.blas; '' when nothing to say)
    blas_note: str = ""

    @property
    def best(self) -> dict[str, Any]:
        return dict(self.candidates[self.best_index].schedule)

    @property
    def best_candidate(self) -> Candidate:
        return self.candidates[self.best_index]

    @property
    def default(self) -> Candidate:
        return next(c for c in self.candidates if c.is_default)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [asdict(c) for c in self.candidates]

    def score(self, c: Candidate) -> float:
        """The measured number the search minimises (ms, or global bytes on sim); inf if not measured."""
        if not c.measured:
            return math.inf
        return float(c.global_bytes) if self.metric == "global_bytes" else float(c.median_ms)

    def measured(self) -> list[Candidate]:
        return [c for c in self.candidates if c.measured]

    def speedup(self) -> float:
        """Default's measured score / best's (>= 1.0 by construction)."""
        b, d = self.score(self.best_candidate), self.score(self.default)
        return d / b if b > 0 and math.isfinite(d) else float("nan")

    def predicted(self, c: Candidate) -> float | None:
        """The model's number for what `metric` measures: global bytes on sim, ms otherwise."""
        return c.predicted_bytes if self.metric == "global_bytes" else c.predicted_ms

    def spearman(self) -> float:
        """Spearman rank correlation between the model's prediction and the measurement (NaN under 3 points)."""
        pts = [(self.predicted(c), self.score(c)) for c in self.measured() if self.predicted(c) is not None]
        if len(pts) < 3:
            return float("nan")
        return spearman([p for p, _ in pts], [m for _, m in pts])

    def summary(self) -> str:
        n = len(self.candidates)
        count = {s: sum(c.status == s for c in self.candidates) for s in ("invalid", "duplicate", "not measured")}
        b = self.best_candidate
        what = "global bytes (simulator counters)" if self.metric == "global_bytes" else "median ms"
        return (f"autotune {self.name} on {self.target} ({self.device}): {n} candidates, {len(self.measured())} measured, "
                f"{count['invalid']} invalid, {count['duplicate']} duplicate, {count['not measured']} ranked out by the "
                f"cost model; {self.tune_s:.1f} s{' (cached)' if self.cached else ''}\n"
                f"best by {what}: {b.label()} — {self._score_text(b)} vs default {self._score_text(self.default)} "
                f"({self.speedup():.3g}x); model/measured Spearman rank correlation {self.spearman():.2f}"
                + (f"\nconfirmation, #{self.confirmation['candidate']} vs default interleaved: "
                   f"{self.confirmation['text']}" if self.confirmation else "")
                + (f"\n{self.blas_note}" if self.blas_note else ""))

    def _score_text(self, c: Candidate) -> str:
        if not c.measured:
            return c.status
        if self.metric == "global_bytes":
            return f"{c.global_bytes:,} B"
        from .measure import fmt_ms
        text = f"{fmt_ms(c.median_ms)} ms (IQR {fmt_ms(c.q1_ms)}–{fmt_ms(c.q3_ms)})"
        return text + (" unstable" if c.unstable else "")

    def table(self, n: int | None = None) -> str:
        """Every candidate (or the first `n`), measured ones first by score, then by model rank."""
        from .measure import fmt_ms
        order = sorted(self.candidates, key=lambda c: (not c.measured, self.score(c),
                                                        c.model_rank if c.model_rank is not None else 1 << 30,
                                                        c.index))
        if n is not None:
            order = order[:n]
        keys = list(self.space)
        head = ["#", *keys, "model bytes" if self.metric == "global_bytes" else "model ms", "pipeline s", "build s",
                "bytes" if self.metric == "global_bytes" else "median ms", "IQR ms", "status"]
        rows = [head]
        for c in order:
            knob = [("(default)" if c.is_default else _fmt_value(c.schedule[k]) if k in c.schedule else "-")
                    for k in keys]
            if self.metric == "global_bytes":
                value, spread = (f"{c.global_bytes:,}" if c.global_bytes is not None else "-"), "-"
            else:
                value = fmt_ms(c.median_ms)
                spread = f"{fmt_ms(c.q1_ms)}–{fmt_ms(c.q3_ms)}" if c.q1_ms is not None else "-"
            status = c.status
            if c.unstable:
                status += " (unstable)"
            if c.status == "duplicate":
                status += f" of #{c.same_as}"
            if c.reason:
                status += f": {c.reason}"
            model = (f"{c.predicted_bytes:,.0f}" if self.metric == "global_bytes" and c.predicted_bytes is not None
                     else fmt_ms(c.predicted_ms))
            rows.append([str(c.index), *knob, model, _fmt_s(c.pipeline_s), _fmt_s(c.build_s),
                         value, spread, status])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
        lines = ["  ".join(v.rjust(w) for v, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
        return self.summary() + "\n" + "\n".join(lines)

    __str__ = table

    def _repr_html_(self) -> str:
        import html
        return f"<pre>{html.escape(self.table())}</pre>"

    # -- plots ------------------------------------------------------------------------
    def plot_heatmap(self, x: str | None = None, y: str | None = None, ax=None, max_blank_axis: int = 12):
        """Heatmap of the best measured score over two knobs (others minimised over); returns the Figure.

        An axis with more than `max_blank_axis` values keeps only the values something was measured at
        (a sim tile space has dozens of tiles and ~10 measurements: the full grid is unreadably wide)."""
        _pyplot()   # matplotlib or a BackendUnavailable saying how to install it
        knobs = [k for k in self.space if len(self.space[k]) > 1] or list(self.space)
        x = x or knobs[0]
        y = y or (knobs[1] if len(knobs) > 1 else None)
        for k in (x, y):
            if k is not None and k not in self.space:
                raise ExplorerError(f"plot: {k!r} is not a knob of this tune's space; knobs are {', '.join(self.space)}")
        xs = [_fmt_value(v) for v in self.space[x]]
        ys = [_fmt_value(v) for v in self.space[y]] if y else [""]
        grid = np.full((len(ys), len(xs)), np.nan)
        for c in self.measured():
            if c.is_default and x not in c.schedule:
                continue
            i = ys.index(_fmt_value(c.schedule[y])) if y else 0
            j = xs.index(_fmt_value(c.schedule[x]))
            v = self.score(c)
            grid[i, j] = v if np.isnan(grid[i, j]) else min(grid[i, j], v)
        if len(xs) > max_blank_axis:
            keep = [j for j in range(len(xs)) if not np.isnan(grid[:, j]).all()] or list(range(len(xs)))
            xs, grid = [xs[j] for j in keep], grid[:, keep]
        if len(ys) > max_blank_axis:
            keep = [i for i in range(len(ys)) if not np.isnan(grid[i]).all()] or list(range(len(ys)))
            ys, grid = [ys[i] for i in keep], grid[keep]
        # at least 4.5 in wide: a narrow grid would squeeze the title into the colorbar
        fig, ax = _figure(ax, (max(4.5, 1.2 + 0.7 * len(xs)), 1.6 + 0.45 * len(ys)))
        im = ax.imshow(grid, cmap="viridis_r", aspect="auto")   # lighter = better (lower)
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7,
                        color="black" if v < np.nanmedian(grid) else "white")
        ax.set_xticks(range(len(xs)), xs, rotation=45, ha="right")
        ax.set_yticks(range(len(ys)), ys)
        ax.set_xlabel(x)
        ax.set_ylabel(y or "")
        unit = "global bytes" if self.metric == "global_bytes" else "median ms"
        trimmed = len(xs) < len(self.space[x]) or (y is not None and len(ys) < len(self.space[y]))
        ax.set_title(f"{self.name}: {unit}\n(blank: not measured / invalid"
                     + ("; only measured values shown" if trimmed else "") + ")", fontsize=10)
        fig.colorbar(im, ax=ax, label=unit)
        return fig

    def plot_model(self, ax=None):
        """Cost-model prediction vs measurement per measured candidate; prints and titles the Spearman
        rank correlation. Returns the Figure."""
        _pyplot()   # matplotlib or a BackendUnavailable saying how to install it
        pts = [(self.predicted(c), self.score(c), c) for c in self.measured() if self.predicted(c) is not None]
        fig, ax = _figure(ax, (5, 4))
        ax.scatter([p for p, _, _ in pts], [m for _, m, _ in pts], c=["C3" if c.is_default else "C0" for *_, c in pts])
        for p, m, c in pts:
            ax.annotate(f"#{c.index}", (p, m), fontsize=7, xytext=(2, 2), textcoords="offset points")
        rho = self.spearman()
        print(f"Spearman rank correlation, cost model vs measured ({len(pts)} candidates): {rho:.2f}")
        ax.set_xlabel("cost model: predicted " + ("global bytes" if self.metric == "global_bytes" else "ms"))
        ax.set_ylabel("measured: " + ("global bytes (simulator)" if self.metric == "global_bytes" else "median ms"))
        ax.set_title(f"Spearman ρ = {rho:.2f} (red: default)")
        return fig

    def plot(self, x: str | None = None, y: str | None = None):
        """(heatmap Figure, model-vs-measured Figure)."""
        return self.plot_heatmap(x, y), self.plot_model()

    # -- export -----------------------------------------------------------------------
    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The whole result as JSON (written to `path` when given); autotune.load reads it back."""
        data = {"version": CACHE_VERSION, "name": self.name, "target": self.target, "device": self.device,
                "metric": self.metric, "space": {k: [_jsonable(v) for v in vs] for k, vs in self.space.items()},
                "budget": self.budget, "best_index": self.best_index, "tune_s": self.tune_s, "key": self.key,
                "confirmation": self.confirmation, "blas_note": self.blas_note,
                "candidates": [{**asdict(c), "schedule": {k: _jsonable(v) for k, v in c.schedule.items()}}
                               for c in self.candidates]}
        text = json.dumps(data, indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _unjson(k: str, v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def load(source: str | os.PathLike) -> AutotuneResult:
    """An AutotuneResult from `to_json()` text or a path to such a file (pin a tune in a repository).

    >>> import numpy as np, explorer
    >>> from explorer.autotune import load
    >>> fn, a = (lambda a, b: a @ b), np.ones((32, 32), np.float32)
    >>> r = explorer.autotune(fn, a, a, target="sim", space={"tile": [(16, 16, 8)]}, progress=False, cache=False)
    >>> r2 = load(r.to_json())               # or a path to a file holding that text
    >>> r2.best == r.best, len(r2.rows)
    (True, 2)
    >>> c = explorer.compile(fn, a, a, target="sim", schedule=r2.best)
    """
    text = str(source)
    if not text.lstrip().startswith("{"):
        try:
            text = Path(source).read_text()
        except OSError as e:
            raise ExplorerError(f"autotune.load: cannot read {source!r} ({e}); pass a path written by "
                                f"result.to_json(path) or the JSON text itself") from None
    try:
        d = json.loads(text)
        cands = []
        for c in d["candidates"]:
            c = dict(c)
            c["schedule"] = {k: _unjson(k, v) for k, v in c["schedule"].items()}
            cands.append(Candidate(**c))
        return AutotuneResult(d["name"], d["target"], d["device"], d["metric"],
                              {k: [_unjson(k, v) for v in vs] for k, vs in d["space"].items()}, d["budget"], cands,
                              d["best_index"], d["tune_s"], d.get("key", ""), cached=True,
                              confirmation=d.get("confirmation") or {}, blas_note=d.get("blas_note", ""))
    except (KeyError, TypeError, ValueError) as e:
        raise ExplorerError(f"autotune.load: not an autotune result ({type(e).__name__}: {e}); pass what "
                            f"result.to_json() wrote") from None


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties; NaN when either side is constant).

    >>> spearman([1, 2, 3, 4], [10, 20, 30, 40]), spearman([1, 2, 3], [3, 2, 1])
    (1.0, -1.0)
    """
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):           # ties share their average rank
        m = x == v
        ranks[m] = ranks[m].mean()
    return ranks


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise BackendUnavailable("plotting needs matplotlib: pip install matplotlib") from None
    return plt


def _figure(ax, size):
    plt = _pyplot()
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    plt.close(fig)   # returned, not shown twice in notebooks
    return fig, ax


# ----------------------------------------------------------------------------- checking the inputs
def check_space(space: Any, target: str) -> dict[str, list]:
    """Validate a search space → {knob: [values]} (each value checked as schedule.check_knobs does)."""
    from .schedule import KNOBS, check_knobs
    tunable = TUNABLE[target]
    if not isinstance(space, Mapping):
        raise ExplorerError(f"autotune space must be a dict of knob -> list of values, e.g. "
                            f"{{'thread_tile': [(4, 16), (6, 16)]}}; got {type(space).__name__}")
    if not space:
        raise ExplorerError(f"autotune space is empty: give at least one knob with values; knobs tunable on "
                            f"{target} are {', '.join(tunable)} (or space=None for the default space)")
    out: dict[str, list] = {}
    for k, values in space.items():
        if k not in KNOBS:
            import difflib
            close = difflib.get_close_matches(str(k), list(KNOBS), n=1)
            raise ExplorerError(f"autotune space: unknown knob {k!r}"
                                + (f" (did you mean {close[0]!r}?)" if close else "")
                                + f"; knobs tunable on {target} are {', '.join(tunable)}")
        if k not in tunable:
            raise ExplorerError(f"autotune space: knob {k!r} has no effect on target {target!r}; knobs tunable on "
                                f"{target} are {', '.join(tunable)}")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise ExplorerError(f"autotune space: knob {k!r} needs a list of values, e.g. {k!r}: [...]; got {values!r}")
        values = list(values)
        if not values:
            raise ExplorerError(f"autotune space: knob {k!r} has no values; give at least one")
        checked = []
        for v in values:
            try:
                checked.append(check_knobs({k: v})[k])
            except ExplorerError as e:
                raise ExplorerError(f"autotune space: knob {k!r}, value {v!r}: {e}") from None
        out[k] = list(dict.fromkeys(checked))
    n = math.prod(len(v) for v in out.values())
    if n > MAX_CANDIDATES:
        raise ExplorerError(f"autotune space has {n:,} combinations, over the limit of {MAX_CANDIDATES:,}; "
                            f"drop values from the largest knob ({max(out, key=lambda k: len(out[k]))!r})")
    return out


def default_space(compiled) -> dict[str, list]:
    """A space that fits the kernels of a compile (its target decides which knobs count)."""
    kinds = {k.kind for k in compiled.stage("lowered").ir.kernels}
    space: dict[str, list] = {}
    openmp = get_target(compiled.target).openmp   # the CPU schedule's knobs, else the GPU schedule's
    if openmp:
        if "contraction" in kinds:
            space["thread_tile"] = [(tm, tn) for tm in (1, 2, 4, 6, 8) for tn in (8, 16, 24, 32)]
            space["shared"] = [True, False]
        if kinds & {"elementwise"}:
            space["chunk"] = [1024, 4096, 16384, 65536]
        if kinds & {"elementwise", "reduce"}:
            space["vector"] = [4, 8, 16]
    else:
        if "contraction" in kinds:
            space["tile"] = [(bm, bn, bk) for bm in (16, 32, 64, 128) for bn in (16, 32, 64, 128) for bk in (8, 16, 32)]
            space["thread_tile"] = [(2, 2), (4, 4), (8, 8)]
            space["double_buffer"] = [True, False]
        if kinds & {"elementwise", "reduce", "opaque"}:
            space["threads"] = [64, 128, 256, 512]
        if "elementwise" in kinds:
            space["vector"] = [1, 2, 4]
    if "attention" in kinds:   # the fused online-softmax kernel: query rows per block x keys per tile
        space["attention_tile"] = [(bq, bk) for bq in (16, 32, 64, 128) for bk in (16, 32, 64, 128)]
    if not space:   # opaque kernels only: the knobs that still change something
        space = {"vector": [4, 8, 16]} if openmp else {"unroll": [True, False]}
    return space


def _check_budget(budget: Any) -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(budget)) or not budget > 0:
        raise ExplorerError(f"autotune budget={budget!r}: must be a number of seconds > 0, e.g. budget=60")
    return float(budget)


# ----------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """$XDG_CACHE_HOME/kernel-explorer/autotune, next to the CPU backend's build cache."""
    from .backends.cpu import cache_dir as cpu_cache_dir
    return cpu_cache_dir().parent / "autotune"


def device_label(target: str) -> str:
    """What the cache key and table say about the machine: CPU model and cores, or the GPU's name."""
    t = get_target(target)
    if t.openmp:
        from .costmodel import cpu_name
        threads = os.environ.get("OMP_NUM_THREADS")
        return f"{cpu_name()}, {os.cpu_count()} cores" + (f", OMP_NUM_THREADS={threads}" if threads else "")
    if t.runs_on_gpu:
        try:
            import pycuda.driver as drv
            drv.init()
            return drv.Device(0).name()
        except Exception:
            return "cuda"
    return "simulator"


def kernel_hash(compiled) -> str:
    """Hash of what the schedule applies to: the lowered loop program (schedule-free), the inputs'
    shapes and dtypes, and the compile options that change code (fast_math, fuse, decompose)."""
    o = compiled.options
    # comment lines carry provenance (file:line), which moves when a notebook cell is re-run: left out
    loops = "\n".join(line for line in compiled.stage("lowered").ir.text().splitlines()
                      if not line.lstrip().startswith("#"))
    text = "\n".join([loops, repr([(a.shape, str(a.dtype)) for a in compiled.examples]),
                      repr((o.fast_math, o.fuse, o.decompose, str(o.dtype), o.arch))])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _cache_key(compiled, target: str, space: dict[str, list]) -> str:
    space_text = json.dumps({k: [_jsonable(v) for v in vs] for k, vs in space.items()}, sort_keys=True)
    raw = f"v{CACHE_VERSION}|{kernel_hash(compiled)}|{target}|{device_label(target)}|{space_text}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _read_cache(key: str) -> AutotuneResult | None:
    path = cache_dir() / f"{key}.json"
    try:
        r = load(path.read_text())
    except (OSError, ExplorerError):
        return None   # missing or damaged: tune again
    return r if r.key == key else None


def _write_cache(result: AutotuneResult) -> None:
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f"{result.key}.{os.getpid()}.tmp"
        tmp.write_text(result.to_json())
        os.replace(tmp, d / f"{result.key}.json")   # atomic: a parallel reader never sees half a file
    except OSError:
        pass   # read-only home: the result is still returned


# ----------------------------------------------------------------------------- progress
class _Progress:
    """A tqdm.auto bar (a widget in notebooks) when tqdm is installed and `enabled`; silent otherwise.
    `callback(phase, done, total, text)` is called too (the dashboard panel's display)."""

    def __init__(self, enabled: bool, callback: Callable | None):
        self.bar = None
        self.callback = callback
        self.enabled = enabled

    def phase(self, name: str, total: int) -> None:
        self.close()
        self.name, self.total, self.done = name, total, 0
        if self.enabled:
            from .progress import tqdm_class
            tqdm = tqdm_class()
            if tqdm is not None:
                self.bar = tqdm(total=total or None, desc=name, leave=False)   # None: rounds, open-ended
        self._tell("")

    def step(self, text: str = "", n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if text:
                self.bar.set_postfix_str(text[:60], refresh=False)
        self._tell(text)

    def _tell(self, text: str) -> None:
        if self.callback is not None:
            self.callback(self.name, self.done, self.total, text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ----------------------------------------------------------------------------- the search
def autotune(fn: Callable, *args: Any, space: Mapping[str, Any] | None = None, budget: float = 60.0,
             target: str = "auto", top_k: int = DEFAULT_TOP_K, progress: bool = True, cache: bool = True,
             on_progress: Callable[[str, int, int, str], None] | None = None,
             blas_threads: "str | int | None" = "auto", **compile_kwargs: Any) -> AutotuneResult:
    """Search schedules of `fn` on `args` → AutotuneResult (best, table(), plot(), to_json()).

    space: {knob: [values]} over explorer.schedule.KNOBS (None: a default space for the kernels);
    budget: seconds for building and measuring (the enumeration and model ranking come first and
    take ~10 ms per candidate); top_k: most candidates measured besides the default; cache: reuse a
    result for the same kernel, device and space from disk (cache=False: tune and do not store).
    blas_threads (explorer.blas): NumPy's BLAS pool while measuring, as in compare() ("auto": 1
    thread on a machine with <= 2 usable cores; None: left alone; int: that limit).

    >>> import numpy as np, explorer
    >>> matmul = lambda a, b: a @ b
    >>> a = b = np.ones((64, 64), np.float32)
    >>> r = explorer.autotune(matmul, a, b, target="cpu", space={"thread_tile": [(4, 8), (8, 8)]}, budget=5,
    ...                       progress=False, cache=False)
    >>> r.metric, len(r.rows)                # by measured time; the default schedule and the two in `space`
    ('time', 3)
    >>> c = explorer.compile(matmul, a, b, target="cpu", schedule=r.best)
    >>> c.max_error()
    0.0
    """
    from .pipeline import compile as compile_fn, resolve_target
    t_start = time.perf_counter()
    budget = _check_budget(budget)
    from . import blas
    blas_threads = blas.check_blas_threads(blas_threads)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ExplorerError(f"autotune top_k={top_k!r}: must be an integer >= 1 (candidates measured besides the "
                            f"default)")
    if "schedule" in compile_kwargs:
        raise ExplorerError("autotune chooses the schedule: pass the knobs to search as space={...}, not schedule=")
    from .pipeline import OPTION_NAMES
    for k in compile_kwargs:
        if k not in OPTION_NAMES:
            import difflib
            close = difflib.get_close_matches(k, [*AUTOTUNE_OPTIONS, *OPTION_NAMES], n=1)
            raise ExplorerError(f"autotune: unknown option {k}=" + (f" (did you mean {close[0]}=?)" if close else "")
                                + f"; autotune takes {', '.join(f'{o}=' for o in AUTOTUNE_OPTIONS)} and the compile "
                                  f"options {', '.join(f'{o}=' for o in OPTION_NAMES if o != 'schedule')}")
    target = resolve_target(target, compile_kwargs.get("verbose", True))
    if target not in TUNABLE:
        raise ExplorerError(f"autotune target {target!r}: choose cpu, cuda or sim (reference runs NumPy and has no "
                            f"schedule)")
    tgt = get_target(target)
    if tgt.runs_on_gpu:
        from .backends import cuda
        ok, why = cuda.available()
        if not ok:
            raise BackendUnavailable(f"autotune on cuda needs a GPU: {why}; tune on target='sim' (simulator counters) "
                                     f"or 'cpu'")
    base = compile_fn(fn, *args, target=target, **compile_kwargs)
    space = check_space(default_space(base) if space is None else space, target)
    name = base.name
    key = _cache_key(base, target, space)
    if cache:
        hit = _read_cache(key)
        if hit is not None:
            hit.tune_s = time.perf_counter() - t_start
            return hit

    bar = _Progress(progress, on_progress)
    # 1. enumerate: the default, then every combination; compile each to source (no C compiler yet)
    keys = list(space)
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*(space[k] for k in keys))]
    cands = [Candidate(0, {}, is_default=True)] + [Candidate(i + 1, s) for i, s in enumerate(combos)]
    compiled: dict[int, Any] = {}
    seen: dict[str, int] = {}
    from . import costmodel
    dev = costmodel.device("h100" if tgt.simulated else tgt.model_device)
    bar.phase("autotune: enumerate + model", len(cands))
    for c in cands:
        t0 = time.perf_counter()
        try:
            comp = base if c.is_default else compile_fn(fn, *args, target=target, schedule=c.schedule,
                                                        **{**compile_kwargs, "verbose": False})
            c.pipeline_s = (sum(st.stats.get("wall_ms", 0) for st in base.stages) / 1e3 if c.is_default
                            else time.perf_counter() - t0)
            STATS["compiled"] += 1
            code = _code_text(comp)
            if code in seen:
                c.status, c.same_as = "duplicate", seen[code]
            else:
                seen[code] = c.index
                compiled[c.index] = comp
            c.predicted_ms, c.predicted_bytes = costmodel.predict_schedule(comp, dev)
        except ExplorerError as e:
            c.status, c.reason = "invalid", f"{type(e).__name__}: {_one_line(e)}"
        except Exception as e:   # a compiler bug this schedule exposes: report it with the candidate, go on
            c.status, c.reason = "invalid", f"internal error {type(e).__name__}: {_one_line(e)} (please report)"
        bar.step(c.label())
    # duplicates carry their original's prediction; rank the distinct valid ones
    # sim measures global bytes, so it ranks by the model's bytes (then time); cpu/cuda by model time
    model_key = ((lambda c: (c.predicted_bytes, c.predicted_ms, c.index)) if tgt.simulated
                 else (lambda c: (c.predicted_ms, c.index)))
    ranked = sorted((c for c in cands if c.index in compiled), key=model_key)
    for r, c in enumerate(ranked):
        c.model_rank = r
    default = cands[0]
    if default.index not in compiled:   # the default never fails to compile, but say so if it does
        raise ExplorerError(f"autotune: the default schedule of {name} did not compile: {default.reason}")
    queue = [default] + [c for c in ranked if not c.is_default][:top_k]

    # 2. measure, in model order, within the budget
    confirmation: dict[str, Any] = {}
    metric = tgt.measures
    with blas.during_measurement(blas_threads if not tgt.simulated else None) as blas_setting:
        reference = [np.asarray(x) for x in base.reference(*base.examples)]
        if tgt.simulated:
            _measure_sim(queue, compiled, reference, bar, deadline=t_start + budget)
        else:
            _measure_timed(queue, compiled, reference, bar, t_build_end=t_start + BUILD_SHARE * budget,
                           t_timing_end=t_start + TIMING_SHARE * budget)
        measured = [c for c in cands if c.measured]
        score = (lambda c: (c.global_bytes, c.barriers or 0)) if metric == "global_bytes" else (lambda c: c.median_ms)
        best = min(measured, key=lambda c: (score(c), not c.is_default, c.index))
        if metric == "time" and not best.is_default:
            confirmation = _confirm(best, default, compiled, bar, deadline=t_start + budget)
            if not confirmation["kept"]:
                best = default
    bar.close()
    best.status = "best"
    result = AutotuneResult(name, target, device_label(target), metric, space, budget, cands, best.index,
                            time.perf_counter() - t_start, key, confirmation=confirmation, blas_note=blas_setting.note)
    if cache:
        _write_cache(result)
    return result


def _code_text(comp) -> str:
    """What decides whether two candidates are the same program: each tiled kernel's schedule and loop
    body (codegen is a function of these; the notes and provenance comments are left out, so a tile
    clamped to the same size as another candidate's counts as the same program)."""
    return "\n".join(f"{k.name}|{k.schedule}|{k.body!r}" for k in comp.stage("tiled").ir.kernels)


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _check_output(comp, reference) -> str:
    """'' when the candidate's outputs (last run) equal the NumPy reference, else the reason."""
    from .tolerance import default_rtol
    got = comp.run(*comp.examples)
    for k, (g, w) in enumerate(zip(got, reference)):
        tol = default_rtol(w.dtype)
        if g.shape != w.shape or not np.allclose(g, w, rtol=tol, atol=tol, equal_nan=True):
            err = float(np.nanmax(np.abs(g.astype(np.float64) - w))) if g.shape == w.shape else float("nan")
            return f"wrong result: output {k} differs from NumPy (max abs error {err:.3g})"
    return ""


def _within_budget(queue, bar: _Progress, phase: str, deadline: float, skipped: str):
    """Yield the candidates of `queue` in order while the deadline allows (the default, first, always);
    the rest get `skipped` as their reason. Counts each yielded one in STATS and steps the bar."""
    bar.phase(phase, len(queue))
    for c in queue:
        if c is not queue[0] and time.perf_counter() > deadline:
            c.reason = skipped
            bar.step()
            continue
        yield c
        STATS["measured"] += 1
        bar.step(c.label())


def _measure_sim(queue, compiled, reference, bar: _Progress, deadline: float) -> None:
    for c in _within_budget(queue, bar, "autotune: simulate", deadline, "budget spent before it was simulated"):
        comp = compiled[c.index]
        try:
            why = _check_output(comp, reference)
        except ExplorerError as e:
            why = f"{type(e).__name__}: {_one_line(e)}"
        if why:
            c.status, c.reason = "invalid", why
        else:
            tot = comp.executable().counters["total"]
            c.global_bytes = int(tot["global_load_bytes"] + tot["global_store_bytes"])
            c.barriers = int(tot["barriers"])
            c.status = "measured"


def _measure_timed(queue, compiled, reference, bar: _Progress, t_build_end: float, t_timing_end: float) -> None:
    from . import measure
    # build (C/CUDA compiler) and check each against NumPy: this run is also its warm-up
    ready, run_s = [], {}
    for c in _within_budget(queue, bar, "autotune: build + check", t_build_end, "budget spent before it was built"):
        comp = compiled[c.index]
        try:
            t0 = time.perf_counter()
            comp.executable()
            t1 = time.perf_counter()
            c.build_s = t1 - t0
            why = _check_output(comp, reference)
            run_s[c.index] = time.perf_counter() - t1
        except ExplorerError as e:
            why = f"{type(e).__name__}: {_one_line(e)}"
        if why:
            c.status, c.reason = "invalid", why
        else:
            ready.append(c)
    if not ready:
        raise ExplorerError("autotune: no candidate (not even the default) built and ran correctly; see the reasons "
                            "with cache=False and progress=True")
    # keep as many (in model order, the default always) as leave time for 3 interleaved rounds
    remaining = t_timing_end - time.perf_counter()
    while len(ready) > 2 and 3 * sum(run_s[c.index] for c in ready) > remaining:
        dropped = ready.pop()
        dropped.reason = "budget: 3 timing rounds of every built candidate would not fit; the model ranked it last"
    # time the survivors interleaved round-robin (explorer.measure): neighbours' noise falls on all alike;
    # the last round starts before the phase ends
    round_s = sum(run_s[c.index] for c in ready)
    bar.phase("autotune: time (rounds)", 0)
    timings = measure.interleaved({str(c.index): compiled[c.index].sampler() for c in ready}, warmup=0,
                                  budget_s=max(remaining - round_s, 1e-3), on_round=lambda r: bar.step(f"round {r}"))
    for c in ready:
        _set_timing(c, timings[str(c.index)])


def _set_timing(c: Candidate, t) -> None:
    c.status = "measured"
    c.median_ms, c.q1_ms, c.q3_ms, c.min_ms, c.repeat = t.median_ms, t.q1_ms, t.q3_ms, t.min_ms, t.repeat
    c.unstable, c.unstable_reason = t.unstable, t.reason


def _confirm(best: Candidate, default: Candidate, compiled, bar: _Progress, deadline: float) -> dict[str, Any]:
    """Time the fastest candidate against the default once more, head to head; it is kept only if it wins
    again on the median and the fastest run (a lucky median in a noisy round must not replace the default)."""
    from . import measure
    bar.phase("autotune: confirm vs default", 0)
    pair_s = (best.median_ms + default.median_ms) / 1e3
    ts = measure.interleaved({"candidate": compiled[best.index].sampler(), "default": compiled[default.index].sampler()},
                             warmup=0, budget_s=max(deadline - time.perf_counter() - pair_s, 1e-3),
                             on_round=lambda r: bar.step(f"round {r}"))
    cand, dflt = ts["candidate"], ts["default"]
    # both the median and the fastest run must win: under contention the min is the least-disturbed sample,
    # and a candidate that only wins one of them is within the noise of the default
    kept = cand.median_ms < dflt.median_ms and cand.min_ms <= dflt.min_ms
    sp = measure.speedup(dflt, cand)
    if not kept:
        best.reason = (f"fastest in the interleaved rounds, but not faster than the default head to head "
                       f"(median {measure.fmt_ms(cand.median_ms)} vs {measure.fmt_ms(dflt.median_ms)} ms, min "
                       f"{measure.fmt_ms(cand.min_ms)} vs {measure.fmt_ms(dflt.min_ms)} ms): default kept")
    return {"candidate": best.index, "kept": kept, "candidate_ms": cand.median_ms, "default_ms": dflt.median_ms,
            "candidate_min_ms": cand.min_ms, "default_min_ms": dflt.min_ms,
            "candidate_iqr_ms": [cand.q1_ms, cand.q3_ms], "default_iqr_ms": [dflt.q1_ms, dflt.q3_ms],
            "repeat": cand.repeat, "unstable": cand.unstable or dflt.unstable,
            "text": f"{cand} vs {dflt}: speedup {sp}" + ("" if kept else " — default kept")}


# `explorer.autotune.load(...)` reads a saved result (explorer.autotune is this function)
autotune.load = load            # type: ignore[attr-defined]
autotune.AutotuneResult = AutotuneResult   # type: ignore[attr-defined]

__all__ = ["autotune", "load", "AutotuneResult", "Candidate", "check_space", "default_space", "spearman",
           "kernel_hash", "cache_dir", "TUNABLE", "STATS"]
