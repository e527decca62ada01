"""Fused versus unfused: how much fusion saves, in bytes moved and in time.

`compare(fn, *args)` compiles `fn` twice on one target — fused (one kernel per
fusion group) and unfused (one kernel per op) — checks both against NumPy,
times them interleaved with optional baselines (explorer.measure: median,
interquartile range, min, n and an "unstable" flag), and collects
kernel counts, flops and bytes moved per kernel from the cost model (and, on
the simulator, from its exact counters).

>>> import numpy as np, explorer
>>> def mlp(x, w, b):
...     return np.maximum(x @ w + b, 0)
>>> x = np.random.rand(256, 64).astype(np.float32)
>>> w = np.random.rand(64, 64).astype(np.float32); b = np.random.rand(64).astype(np.float32)
>>> r = explorer.compare(mlp, x, w, b, target="cpu", repeat=5)   # default: until the medians are stable
>>> print(r.summary())
fusion: 3 → 1 kernels, ... moved (model), speedup ...
>>> print(r.table())
mlp(f32[256,64], f32[64,64], f32[64]) on target 'cpu'
...
variant  kernels  median ms  ...
>>> fig = r.plot_timing(); fig = r.plot_roofline()

Every number on a chart is either measured in this call or labelled "model".
On target 'sim' nothing is timed for real: the simulator counts exact bytes
and flops, and the time shown is the roofline model applied to those counts.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import Any, Callable, Sequence

import numpy as np

from . import blas as _blas, costmodel, dtypes, measure
from .costmodel import Device, KernelCost
from .target import get_target
from .measure import Timing, fmt_ratio
from .errors import BackendUnavailable, ExplorerError, VerificationError

BASELINES = ("numpy", "numexpr", "torch", "torch.compile")
NOTEBOOK_HINT = "pip install kernel-explorer[notebook]"


# ----------------------------------------------------------------------------- one row
@dataclass
class Variant:
    """One measured way of running the function (a row of the comparison).

    time_source: 'measured (wall clock)', 'measured (cuda events)' or
    'model (simulator counters)'; bytes_model is the cost model's count,
    bytes_measured the simulator's (None elsewhere).
    """

    name: str
    kind: str                       # 'compiled' | 'baseline'
    median_ms: float
    stdev_ms: float
    min_ms: float
    repeat: int
    time_source: str
    kernels: int | None = None
    flops: int | None = None
    bytes_model: int | None = None
    bytes_measured: int | None = None
    max_abs_error: float | None = None
    costs: list[KernelCost] = field(default_factory=list)
    per_kernel_ms: dict[str, float] | None = None
    compiled: Any = None
    note: str = ""
    q1_ms: float | None = None      # 25th/75th percentile of the measured times (the chart's error bars)
    q3_ms: float | None = None
    unstable: bool = False          # explorer.measure's verdict: the spread stayed high (unstable_reason says how)
    unstable_reason: str = ""
    timing: Timing | None = None    # the full measurement (None for model times)

    @property
    def measured(self) -> bool:
        return self.time_source.startswith("measured")

    def set_timing(self, t: Timing) -> None:
        """Fill the time fields from one explorer.measure Timing."""
        self.median_ms, self.stdev_ms, self.min_ms, self.repeat = t.median_ms, t.stdev_ms, t.min_ms, t.repeat
        self.q1_ms, self.q3_ms, self.unstable, self.unstable_reason = t.q1_ms, t.q3_ms, t.unstable, t.reason
        self.time_source, self.timing = _time_source(t), t
        if t.per_kernel_ms:
            self.per_kernel_ms = dict(t.per_kernel_ms)

    def as_timing(self) -> Timing:
        """The measurement, or a spread-free Timing of a model time (for ratios)."""
        return self.timing or Timing(self.median_ms, self.min_ms, 0.0, self.repeat, q1_ms=self.median_ms,
                                     q3_ms=self.median_ms)


def _time_source(timing) -> str:
    src = getattr(timing, "source", "wall") or "wall"
    if src == "cuda-events":
        return "measured (cuda events)"
    if src == "wall":
        return "measured (wall clock)"
    return f"measured ({src})"


def _as_list(out: Any) -> list[np.ndarray]:
    if isinstance(out, (tuple, list)):
        return [np.asarray(o) for o in out]
    return [np.asarray(out)]


def max_abs_error(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> float:
    """Largest |got - want| over all outputs (NaNs in the same places count as equal)."""
    if len(got) != len(want):
        return float("inf")
    err = 0.0
    for g, w in zip(got, want):
        g = np.asarray(g, np.float64)
        w = np.asarray(w, np.float64)
        if g.shape != w.shape:
            return float("inf")
        same_nan = np.isnan(g) & np.isnan(w)
        d = np.where(same_nan, 0.0, np.abs(g - w))
        d = np.where(np.isinf(g) & (g == w), 0.0, d)
        if d.size:
            m = float(np.max(d))
            err = max(err, m if not math.isnan(m) else float("inf"))
    return err


def _tolerance(want: Sequence[np.ndarray], inputs: Sequence[np.ndarray] = ()) -> float:
    from .tolerance import default_rtol
    # a float64 result computed from float32 inputs (`q @ k.T / np.sqrt(d)`: NumPy promotes at the
    # float64 scalar, after float32 matmuls) is only as exact as the least precise float that fed it
    rt_in = max((default_rtol(np.asarray(a).dtype) for a in inputs if dtypes.is_float(np.asarray(a).dtype)),
                default=0.0)
    tol = 0.0
    for w in want:
        w = np.asarray(w)
        rt = max(default_rtol(w.dtype), rt_in) if dtypes.is_float(w.dtype) else 0.0
        if w.dtype.name in dtypes.ML_DTYPES:
            w = w.astype(np.float32)   # bf16/fp8: isfinite and abs on an f32 copy
        finite = np.abs(w[np.isfinite(w)]) if w.dtype.kind == "f" else np.abs(w)
        scale = float(finite.max()) if finite.size else 1.0
        tol = max(tol, rt * max(1.0, scale))
    return tol


# ----------------------------------------------------------------------------- compiled variants
def _check_compiled(name: str, compiled, want: list[np.ndarray], dev: Device, check: bool) -> Variant:
    """The variant's error vs NumPy and costs; on 'sim' its model time. Measured times come later,
    from one interleaved measurement of all variants (compare)."""
    args = compiled.examples
    got = compiled.run(*args)  # on 'sim' this run fills the exact counters
    err = max_abs_error(got, want)
    if check and err > _tolerance(want, args):
        raise VerificationError(f"{name} variant on target {compiled.target!r} disagrees with NumPy "
                                f"(max abs error {err:.3g}); pass check=False to compare anyway")
    costs = costmodel.kernel_costs(compiled, dev)
    model_costs = costmodel.kernel_costs(compiled, dev, counters=False)
    simulated = get_target(compiled.target).simulated
    sim = simulated and any(c.source == "simulator" for c in costs)
    n_kernels = len(compiled.kernels) if "codegen" in compiled.stage_names else len(costs)
    v = Variant(name=name, kind="compiled", median_ms=math.nan, stdev_ms=0.0, min_ms=math.nan, repeat=0,
                time_source="measured (wall clock)", kernels=n_kernels, flops=sum(c.flops for c in model_costs),
                bytes_model=sum(c.bytes for c in model_costs),
                bytes_measured=sum(c.bytes for c in costs) if sim else None, max_abs_error=err,
                costs=model_costs if not sim else costs, compiled=compiled)
    if simulated:
        # The simulator runs in NumPy: its wall time says nothing about a GPU. The time shown is
        # the roofline model on `dev` applied to the simulator's exact per-kernel counts.
        ms = sum(c.predicted_ms for c in costs)
        v.median_ms, v.min_ms, v.repeat = ms, ms, 1
        v.time_source = "model (simulator counters)" if sim else "model (op registry)"
        v.per_kernel_ms = {c.name: c.predicted_ms for c in costs}
    return v


# ----------------------------------------------------------------------------- baselines
_NUMEXPR = {
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
    "pow": "({0} ** {1})", "neg": "(-{0})", "exp": "exp({0})", "log": "log({0})", "tanh": "tanh({0})",
    "sqrt": "sqrt({0})", "abs": "abs({0})", "sin": "sin({0})", "cos": "cos({0})",
    "maximum": "where({0} >= {1}, {0}, {1})", "minimum": "where({0} <= {1}, {0}, {1})",
    "lt": "({0} < {1})", "le": "({0} <= {1})", "gt": "({0} > {1})", "ge": "({0} >= {1})",
    "eq": "({0} == {1})", "ne": "({0} != {1})", "where": "where({0}, {1}, {2})",
    "logical_and": "({0} & {1})", "logical_or": "({0} | {1})", "logical_not": "(~{0})",
    "broadcast_to": "{0}",  # numexpr broadcasts operands itself
}


def numexpr_expression(graph) -> tuple[str, dict[str, np.ndarray]] | None:
    """The graph as one numexpr expression string over variables in0.., c0.. (None if not elementwise).

    Only single-output graphs of elementwise ops (and broadcasts) translate; the
    variable names are generated, never the user's.
    """
    if len(graph.outputs) != 1:
        return None
    names: dict[int, str] = {}
    consts: dict[str, np.ndarray] = {}
    for k, n in enumerate(graph.inputs):
        names[id(n)] = f"in{k}"
    exprs: dict[int, str] = {}
    for n in graph.nodes:
        if n.op == "input":
            exprs[id(n)] = names[id(n)]
        elif n.op == "const":
            v = np.asarray(n.value)
            if v.size == 1 and v.dtype.kind in "fiub":
                x = v.reshape(()).item()
                if isinstance(x, float) and not math.isfinite(x):
                    return None
                exprs[id(n)] = repr(bool(x)) if isinstance(x, bool) else repr(x)
            else:
                cname = f"c{len(consts)}"
                consts[cname] = v
                exprs[id(n)] = cname
        else:
            tpl = _NUMEXPR.get(n.op)
            if tpl is None:
                return None
            if n.op == "broadcast_to" and len(n.shape) != len(n.inputs[0].shape):
                pass  # NumPy broadcasting rules already align trailing dims
            exprs[id(n)] = tpl.format(*[exprs[id(i)] for i in n.inputs])
    return exprs[id(graph.outputs[0])], consts


def _baseline_numexpr(graph, arrays: list[np.ndarray]) -> tuple[Callable[[], Any] | None, str]:
    try:
        import numexpr
    except ImportError:
        return None, "numexpr is not installed (pip install numexpr)"
    tr = numexpr_expression(graph)
    if tr is None:
        return None, "numexpr handles only elementwise functions with one output"
    expr, consts = tr
    local = {f"in{k}": a for k, a in enumerate(arrays)}
    local.update(consts)
    out_dtype = graph.outputs[0].dtype

    def call():
        r = numexpr.evaluate(expr, local_dict=local)
        return r if r.dtype == out_dtype else r.astype(out_dtype)
    return call, ""


def _torch_fn(graph, torch):
    """An eager PyTorch function computing `graph` op by op (the torch baseline)."""
    T = torch
    unary = {"neg": T.neg, "exp": T.exp, "log": T.log, "tanh": T.tanh, "sqrt": T.sqrt, "abs": T.abs,
             "sin": T.sin, "cos": T.cos, "erf": T.erf, "logical_not": T.logical_not}
    binary = {"add": T.add, "sub": T.sub, "mul": T.mul, "div": T.div, "pow": T.pow, "maximum": T.maximum,
              "minimum": T.minimum, "lt": T.lt, "le": T.le, "gt": T.gt, "ge": T.ge, "eq": T.eq, "ne": T.ne,
              "logical_and": T.logical_and, "logical_or": T.logical_or, "matmul": T.matmul}
    tdt = {np.dtype(np.float32): T.float32, np.dtype(np.float16): T.float16, np.dtype(np.float64): T.float64,
           np.dtype(np.int32): T.int32, np.dtype(np.int64): T.int64, np.dtype(bool): T.bool}
    nodes = list(graph.nodes)
    inputs = list(graph.inputs)
    outputs = list(graph.outputs)

    def run(*xs):
        env: dict[int, Any] = {id(n): x for n, x in zip(inputs, xs)}
        for n in nodes:
            if n.op == "input":
                continue
            a = [env[id(i)] for i in n.inputs]
            if n.op == "const":
                v = T.as_tensor(np.asarray(n.value), device=xs[0].device if xs else None)
            elif n.op in unary:
                v = unary[n.op](a[0])
            elif n.op in binary:
                v = binary[n.op](a[0], a[1])
            elif n.op == "where":
                v = T.where(a[0], a[1], a[2])
            elif n.op == "cast":
                v = a[0].to(tdt[np.dtype(n.dtype)])
            elif n.op == "broadcast_to":
                v = a[0].expand(*n.shape)
            elif n.op == "reshape":
                v = a[0].reshape(n.shape)
            elif n.op == "transpose":
                v = a[0].permute(*n.attrs["axes"])
            elif n.op == "slice":
                v = a[0][tuple(slice(s, e, st) for s, e, st in zip(n.attrs["starts"], n.attrs["stops"],
                                                                   n.attrs["steps"]))]
            elif n.op in ("sum", "max", "min"):
                axes = list(n.attrs["axes"]) if n.attrs.get("axes") is not None else list(range(a[0].dim()))
                f = {"sum": T.sum, "max": T.amax, "min": T.amin}[n.op]
                v = f(a[0], dim=axes, keepdim=bool(n.attrs.get("keepdims", False)))
            elif n.op == "cumsum":
                v = T.cumsum(a[0], dim=int(n.attrs["axis"]))
            elif n.op == "concat":
                v = T.cat([x.to(tdt[np.dtype(n.dtype)]) for x in a], dim=int(n.attrs["axis"]))
            elif n.op == "pad":  # torch's pad lists (before, after) pairs from the last axis backwards
                flat = [p for lo_hi in reversed(n.attrs["pads"]) for p in lo_hi]
                v = T.nn.functional.pad(a[0], flat, value=n.attrs["value"])
            else:
                raise ExplorerError(f"no torch translation for op {n.op!r}")
            if v.dtype != tdt.get(np.dtype(n.dtype), v.dtype):
                v = v.to(tdt[np.dtype(n.dtype)])
            env[id(n)] = v
        return tuple(env[id(o)] for o in outputs)
    return run


def _baseline_torch(graph, arrays: list[np.ndarray], compiled_mode: bool, target: str
                    ) -> tuple[Callable[[], Any] | None, str]:
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    on_gpu = get_target(target).runs_on_gpu and torch.cuda.is_available()
    dev = "cuda" if on_gpu else "cpu"   # torch's device names
    try:
        xs = [torch.from_numpy(np.ascontiguousarray(a)).to(dev) for a in arrays]
        f = _torch_fn(graph, torch)
        if compiled_mode:
            f = torch.compile(f)
        f(*xs)  # compile / warm up now so a failure becomes a note, not a crash
    except Exception as e:  # torch.compile needs a working C++ toolchain (inductor); say why it is missing
        return None, f"{'torch.compile' if compiled_mode else 'torch'} failed: {type(e).__name__}: {str(e)[:120]}"
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)

    def call():
        r = f(*xs)
        sync()
        return [t.cpu().numpy() for t in r]
    return call, ""


def _baseline(name: str, fn: Callable, arrays: list[np.ndarray], graph, want: list[np.ndarray], target: str
              ) -> tuple[Variant | None, Callable[[], Any] | None, str]:
    """(Variant without times, the call to time, '') or (None, None, why it is skipped)."""
    if name == "numpy":
        call: Callable[[], Any] | None = lambda: fn(*arrays)  # noqa: E731
        why = ""
    elif name == "numexpr":
        call, why = _baseline_numexpr(graph, arrays)
    elif name in ("torch", "torch.compile"):
        call, why = _baseline_torch(graph, arrays, name == "torch.compile", target)
    else:
        raise ExplorerError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    if call is None:
        return None, None, why
    err = max_abs_error(_as_list(call()), want)
    note = "on the GPU" if name.startswith("torch") and get_target(target).runs_on_gpu else ""
    return Variant(name=name, kind="baseline", median_ms=math.nan, stdev_ms=0.0, min_ms=math.nan, repeat=0,
                   time_source="measured (wall clock)", max_abs_error=err, note=note), call, ""


# ----------------------------------------------------------------------------- formatting helpers
def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


_fmt_ms = measure.fmt_ms


def _fmt_x(x: float | None) -> str:
    return "-" if x is None else fmt_ratio(x)


def _fmt_iqr(r: dict[str, Any]) -> str:
    return "-" if r.get("q1_ms") is None or r.get("q3_ms") is None else f"{_fmt_ms(r['q1_ms'])}–{_fmt_ms(r['q3_ms'])}"


def _fmt_vs(r: dict[str, Any]) -> str:
    """'1.42x (1.30–1.55)': the speedup vs unfused with its quartile range ('-' when not comparable)."""
    x = r["speedup_vs_unfused"]
    if x is None:
        return "-"
    lo, hi = r.get("speedup_low"), r.get("speedup_high")
    if lo is None or hi is None or lo == hi:
        return fmt_ratio(x)
    return measure.Ratio(x, lo, hi).range_text()


_FIGURE_CLASS = None


def _matplotlib():
    """A factory of matplotlib Figures on the Agg canvas (no pyplot, no display needed).

    The figures render off-screen (headless servers, CI) and never enter pyplot's global
    figure list, so a notebook shows each one once: as the cell's value, through `_repr_png_`.
    """
    global _FIGURE_CLASS
    try:
        from matplotlib.figure import Figure
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        raise BackendUnavailable(f"charts need matplotlib, which is not installed; {NOTEBOOK_HINT}") from None
    if _FIGURE_CLASS is None:
        class ExplorerFigure(Figure):
            def _repr_png_(self) -> bytes:
                import io
                buf = io.BytesIO()
                self.savefig(buf, format="png", dpi=100)
                return buf.getvalue()
        _FIGURE_CLASS = ExplorerFigure

    def new_figure(**kw):
        fig = _FIGURE_CLASS(**kw)
        FigureCanvasAgg(fig)
        return fig
    return new_figure


VARIANT_COLORS = {"fused": "#2a7ab9", "unfused": "#d9622b", "numpy": "#6b6b6b", "numexpr": "#8a5fb5",
                  "torch": "#c23b3b", "torch.compile": "#3b9c5a"}


# ----------------------------------------------------------------------------- the comparison
class Comparison:
    """Fused vs unfused (and baselines) for one function on one target.

    `.rows` (list of dicts), `.table()` (text), `_repr_html_()`, `.speedup`
    (unfused time / fused time), `.plot_timing()`, `.plot_roofline()`.

    >>> import numpy as np, explorer
    >>> a = np.ones(1024, np.float32)
    >>> r = explorer.compare(lambda a, b: np.exp(a) * b + 1, a, a, target="sim", repeat=3)
    >>> [v.name for v in r.variants], len(r.fused.kernels), len(r.unfused.kernels)
    (['fused', 'unfused', 'numpy'], 1, 3)
    >>> r.bytes_saved                  # two f32[1024] intermediates, each written once and read once
    16384
    >>> print(r.speedup_range)         # on sim: the roofline model on the simulator's exact counters
    2.33x (2.33–2.33)
    """

    def __init__(self, name: str, target: str, device: Device, variants: list[Variant], skipped: dict[str, str],
                 shapes: list[str], blas: "_blas.BlasSetting | None" = None):
        self.name = name
        self.target = target
        self.device = device
        self.variants = variants
        self.skipped = skipped
        self.shapes = shapes
        self.blas = blas   # what was done to NumPy's BLAS pool while measuring (explorer.blas)

    # -- access -------------------------------------------------------------------------
    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise ExplorerError(f"no variant {name!r} in this comparison; variants are "
                            f"{', '.join(v.name for v in self.variants)}")

    @property
    def fused(self):
        """The fused Compiled."""
        return self.variant("fused").compiled

    @property
    def unfused(self):
        """The unfused Compiled (one kernel per op)."""
        return self.variant("unfused").compiled

    @property
    def speedup(self) -> float:
        """Unfused time / fused time (>1: fusion is faster); its range and flag: speedup_range."""
        f, u = self.variant("fused"), self.variant("unfused")
        return u.median_ms / f.median_ms if f.median_ms > 0 else float("inf")

    @property
    def speedup_range(self) -> measure.Ratio:
        """The fusion speedup with its quartile range and the unstable flag of either measurement.

        >>> import numpy as np, explorer
        >>> a = np.ones(1024, np.float32)
        >>> r = explorer.compare(lambda a: np.exp(a) * 2, a, target="cpu", repeat=5)
        >>> print(r.speedup_range)                       # doctest: +SKIP
        1.42x (1.30–1.55)
        >>> r.speedup_range.value == r.speedup
        True
        """
        return measure.speedup(self.variant("unfused").as_timing(), self.variant("fused").as_timing())

    @property
    def unstable(self) -> bool:
        """True when any measured variant's spread stayed high: rerun before trusting the ratios."""
        return any(v.unstable for v in self.variants)

    @property
    def bytes_saved(self) -> int:
        """Model bytes the fused variant does not move."""
        return int((self.variant("unfused").bytes_model or 0) - (self.variant("fused").bytes_model or 0))

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One dict per variant: median_ms, q1_ms/q3_ms (IQR), min_ms, repeat, unstable (+ reason),
        speedup_vs_unfused with speedup_low/high, model flops and bytes, max abs error."""
        unf = self.variant("unfused")
        out = []
        for v in self.variants:
            # a wall-clock time over a model time (or back) is no speedup: leave it out
            comparable = v.measured == unf.measured
            sp = measure.speedup(unf.as_timing(), v.as_timing()) if comparable else None
            out.append({
                "variant": v.name, "kind": v.kind, "target": self.target if v.kind == "compiled" else "host",
                "kernels": v.kernels, "median_ms": v.median_ms, "stdev_ms": v.stdev_ms, "min_ms": v.min_ms,
                "q1_ms": v.q1_ms, "q3_ms": v.q3_ms, "iqr_ms": v.timing.iqr_ms if v.timing else None,
                "repeat": v.repeat, "time_source": v.time_source,
                "unstable": v.unstable, "unstable_reason": v.unstable_reason,
                "speedup_vs_unfused": sp.value if sp else None,
                "speedup_low": sp.low if sp else None, "speedup_high": sp.high if sp else None,
                "flops": v.flops, "bytes_model": v.bytes_model, "bytes_measured": v.bytes_measured,
                "max_abs_error": v.max_abs_error, "note": v.note})
        return out

    @property
    def kernel_rows(self) -> list[dict[str, Any]]:
        """One dict per kernel of the fused and unfused variants: the cost model's numbers
        (flops, bytes, intensity, bound, predicted_ms — all model unless source is 'simulator')
        and the measured time where the backend reports per-kernel times."""
        out = []
        for vname in ("fused", "unfused"):
            v = self.variant(vname)
            for c in v.costs:
                measured = (v.per_kernel_ms or {}).get(c.name) if v.measured else None
                out.append({"variant": vname, "kernel": c.name, "ops": " → ".join(c.ops), "flops": c.flops,
                            "bytes": c.bytes, "bytes_source": c.source, "intensity": c.intensity, "bound": c.bound,
                            "predicted_ms": c.predicted_ms, "measured_ms": measured})
        return out

    def kernels_table(self) -> str:
        """Per-kernel text table: model flops/bytes/intensity/bound/predicted time, and measured time."""
        head = f"{'variant':8s} {'kernel':32s} {'MFLOP':>9s} {'bytes':>10s} {'flop/B':>7s} {'bound (model)':>13s} " \
               f"{'model ms':>9s} {'measured ms':>11s}"
        lines = [f"kernels of {self.name} on {self.target}; roofline of {self.device.name}", head]
        for r in self.kernel_rows:
            src = "" if r["bytes_source"] == "model" else "*"
            lines.append(f"{r['variant']:8s} {r['kernel'][:32]:32s} {r['flops'] / 1e6:>9.4g} "
                         f"{_fmt_bytes(r['bytes']) + src:>10s} {r['intensity']:>7.3g} {r['bound']:>13s} "
                         f"{r['predicted_ms']:>9.4g} {_fmt_ms(r['measured_ms']):>11s}")
        if any(r["bytes_source"] != "model" for r in self.kernel_rows):
            lines.append("* bytes and flops counted by the simulator")
        return "\n".join(lines)

    # -- text -----------------------------------------------------------------------------
    def _header(self) -> list[str]:
        by_source: dict[str, list[Variant]] = {}
        for v in self.variants:
            by_source.setdefault(v.time_source, []).append(v)
        parts = []
        for src, vs in by_source.items():
            how = f"{src}, {vs[0].repeat} interleaved runs each: median, IQR = 25th–75th percentile, min" \
                if src.startswith("measured") else f"{src} on {self.device.name}"
            parts.append(f"{', '.join(v.name for v in vs)}: {how}")
        return [f"{self.name}({', '.join(self.shapes)}) on target {self.target!r}",
                f"device for the model: {self.device.label()}",
                "times — " + "; ".join(parts)]

    def _flag_lines(self) -> list[str]:
        return [f"! {measure.UNSTABLE_TEXT} — {v.name}: {v.unstable_reason}" for v in self.variants if v.unstable]

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        head = ["variant", "kernels", "median ms", "IQR ms", "min ms", "n", "vs unfused", "bytes (model)",
                "bytes (sim)", "GFLOP (model)", "max err"]
        body = []
        for r in self.rows:
            measured = r["time_source"].startswith("measured")
            body.append([r["variant"] + ("" if measured else " [model time]") + (" !" if r["unstable"] else ""),
                         "-" if r["kernels"] is None else str(r["kernels"]),
                         _fmt_ms(r["median_ms"]), _fmt_iqr(r), _fmt_ms(r["min_ms"]) if measured else "-",
                         str(r["repeat"]) if measured else "-", _fmt_vs(r),
                         _fmt_bytes(r["bytes_model"]), _fmt_bytes(r["bytes_measured"]),
                         "-" if r["flops"] is None else f"{r['flops'] / 1e9:.3g}",
                         "-" if r["max_abs_error"] is None else f"{r['max_abs_error']:.2g}"])
        return head, body

    def summary(self) -> str:
        """'fusion: 3 → 1 kernels, 1.6 MB → 0.5 MB moved (model), speedup 1.42x (1.30–1.55)' (+ the flag)."""
        f, u = self.variant("fused"), self.variant("unfused")
        sp = self.speedup_range
        return (f"fusion: {u.kernels} → {f.kernels} kernels, {_fmt_bytes(u.bytes_model)} → "
                f"{_fmt_bytes(f.bytes_model)} moved (model), speedup "
                + (fmt_ratio(sp.value) + " (model time)" if not f.measured else str(sp)))

    def table(self) -> str:
        """A plain-text table (no pandas) of every variant.

        Columns: kernels, median time, interquartile range and min (ms), n, speedup vs unfused with
        its range, bytes moved (model; 'sim' = the simulator's exact count), GFLOP (model), max abs
        error vs NumPy. A '!' marks an unstable measurement; the lines below say why.
        """
        head, body = self._cells()
        widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]
        lines = self._header()
        lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))))
        lines.append("  ".join("-" * w for w in widths))
        for row in body:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        lines.append(self.summary())
        lines.extend(self._flag_lines())
        lines.extend(_blas_lines(self.blas))
        for name, why in self.skipped.items():
            lines.append(f"skipped baseline {name}: {why}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"<Comparison {self.name} on {self.target}: speedup {self.speedup_range}>"

    def _repr_html_(self) -> str:
        import html
        head, body = self._cells()
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
        cap = "<br>".join(html.escape(h) for h in self._header())
        notes = [html.escape(self.summary())] + [f"<b style='color:#b35900'>{html.escape(t)}</b>"
                                                 for t in self._flag_lines()] + [html.escape(t) for t in
                                                                                 _blas_lines(self.blas)]
        skipped = "".join(f"<li>skipped {html.escape(k)}: {html.escape(v)}</li>" for k, v in self.skipped.items())
        return (f"<div><p>{cap}</p><table><thead><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>"
                f"</thead><tbody>{trs}</tbody></table><p>{'<br>'.join(notes)}</p>"
                + (f"<ul>{skipped}</ul>" if skipped else "") + "</div>")

    # -- charts ---------------------------------------------------------------------------
    def plot_timing(self, ax=None):
        """Bar chart of the median time per variant → matplotlib Figure. Error bars span the 25th to
        75th percentile of the measured runs (one slow outlier on a busy machine would blow up a stdev bar).

        Model times (target 'sim': the roofline model on the simulator's counters) and measured times
        never share an axis: with both, the figure has two panels, "model" and "measured". Given `ax`,
        everything goes on it and model bars are hatched and labelled "(model)".
        """
        new_figure = _matplotlib()
        model = [v for v in self.variants if not v.measured]
        measured = [v for v in self.variants if v.measured]
        if ax is not None or not model or not measured:
            fig = ax.figure if ax is not None else new_figure(figsize=(7, 4), layout="constrained")
            ax = ax if ax is not None else fig.add_subplot()
            self._bars(ax, self.variants)
            self._unstable_note(ax)
            ax.set_title(f"{self.name}: fused vs unfused on {self.target} — speedup {self._speedup_text()}",
                         fontsize=10)
            _blas_chart_note(fig, self.blas)
            return fig
        fig = new_figure(figsize=(8, 4.2), layout="constrained")
        left, right = fig.subplots(1, 2, width_ratios=[len(model), len(measured)])
        self._bars(left, model)
        left.set_title(f"model time on {self.device.name}\n(roofline on the simulator's counts, not measured)",
                       fontsize=9)
        self._bars(right, measured)
        self._unstable_note(right)
        right.set_title("measured here\n(wall clock)", fontsize=9)
        fig.suptitle(f"{self.name} on {self.target}: fused vs unfused — speedup {self._speedup_text()}", fontsize=10)
        _blas_chart_note(fig, self.blas)
        return fig

    def _speedup_text(self) -> str:
        """'1.32x', with its quartile range and flag where the timing methodology gives them; model times say so."""
        if not self.variant("fused").measured:
            return f"{self.speedup:.2f}x (model, {self.device.name})"
        rng = self.speedup_range
        if rng is None:
            return f"{self.speedup:.2f}x"
        return rng.range_text() + (" — unstable, rerun" if rng.unstable else "")

    def _unstable_note(self, ax) -> None:
        if self.unstable:
            from . import measure
            ax.text(0.99, 0.98, f"! {measure.UNSTABLE_TEXT}", transform=ax.transAxes, va="top",
                    ha="right", fontsize=8, color="#b35900")

    def _bars(self, ax, variants: list[Variant]) -> None:
        """One bar per variant on `ax`: median with the quartile (or stdev) error bar, value on top."""
        labels, heights, lo_errs, errs, colors = [], [], [], [], []
        for v in variants:
            labels.append(v.name if v.measured else f"{v.name}\n(model)")
            heights.append(v.median_ms)
            if v.q1_ms is not None and v.q3_ms is not None:
                lo_errs.append(max(0.0, v.median_ms - v.q1_ms))
                errs.append(max(0.0, v.q3_ms - v.median_ms))
            else:
                lo_errs.append(v.stdev_ms)
                errs.append(v.stdev_ms)
            colors.append(VARIANT_COLORS.get(v.name, "#999999"))
        x = np.arange(len(labels))
        bars = ax.bar(x, heights, yerr=[lo_errs, errs], capsize=4, color=colors, edgecolor="black", linewidth=0.6)
        for bar, v, e in zip(bars, variants, errs):
            if not v.measured:
                bar.set_hatch("//")
            txt = (f"{v.median_ms:.3g} ms" + ("" if v.measured else " (model)")
                   + ("\n! unstable" if v.unstable else ""))
            # above the error bar's cap, not through it
            ax.annotate(txt, (bar.get_x() + bar.get_width() / 2, bar.get_height() + e), xytext=(0, 3),
                        textcoords="offset points", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, labels)
        reps = sorted({v.repeat for v in variants if v.measured})
        quart = all(v.q1_ms is not None for v in variants if v.measured)
        if reps:
            ax.set_ylabel(f"ms per call, median of {'/'.join(map(str, reps))} runs\n"
                          + ("bars: 25th–75th percentile" if quart else "bars: ± stdev"))
        else:
            ax.set_ylabel("model time per call (ms)")
        if any(not v.measured for v in variants) and any(v.measured for v in variants):
            ax.text(0.01, 0.98, "hatched bars: model time, not measured", transform=ax.transAxes, va="top",
                    fontsize=8, color="#444444")
        top = max((h + e for h, e in zip(heights, errs)), default=1.0) or 1.0
        low = min((h for h in heights if h > 0), default=top)
        if top / low > 30:  # e.g. model GPU times next to a wall-clock NumPy baseline
            ax.set_yscale("log")
            ax.set_ylim(low / 3, top * 4)
        else:
            ax.set_ylim(0, top * 1.22)

    def plot_bytes(self, ax=None):
        """Bar chart of the bytes each compiled variant moves through memory → matplotlib Figure:
        the cost model's count, and beside it the simulator's exact count on target 'sim'."""
        new_figure = _matplotlib()
        fig = ax.figure if ax is not None else new_figure(figsize=(4.2, 4.2), layout="constrained")
        ax = ax if ax is not None else fig.add_subplot()
        vs = [v for v in self.variants if v.kind == "compiled"]
        sim = any(v.bytes_measured is not None for v in vs)
        width = 0.38 if sim else 0.6
        x = np.arange(len(vs))
        series = [("model", [v.bytes_model or 0 for v in vs], "")]
        if sim:
            series.append(("simulator count", [v.bytes_measured or 0 for v in vs], ".."))
        for k, (what, values, hatch) in enumerate(series):
            off = (k - (len(series) - 1) / 2) * width
            bars = ax.bar(x + off, values, width, color=[VARIANT_COLORS.get(v.name, "#999999") for v in vs],
                          edgecolor="black", linewidth=0.6, hatch=hatch, label=what if sim else None)
            for bar, val in zip(bars, values):
                ax.annotate(_fmt_binary(val), (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 3),
                            textcoords="offset points", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [f"{v.name}\n{v.kernels} kernel{'s' if v.kernels != 1 else ''}" for v in vs])
        ax.set_ylabel("bytes moved through global memory")
        top = max([1] + [max(vals) for _, vals, _ in series])
        ax.set_ylim(0, top * 1.22)
        # ticks at round binary sizes (1, 2, 4 MiB …), as the bars' labels count
        unit = next((u for u in (1 << 30, 1 << 20, 1 << 10) if top >= u), 1)
        ax.yaxis.set_major_locator(_binary_locator(unit))
        ax.yaxis.set_major_formatter(lambda y, _pos: _fmt_binary(y) if y else "0")
        if sim:
            ax.legend(fontsize=7, loc="upper right")
        saved = self.bytes_saved
        ax.set_title(f"bytes moved: fusion saves {_fmt_binary(saved)}" if saved > 0 else "bytes moved", fontsize=10)
        return fig

    def plot_roofline(self, device: "Device | str | None" = None, ax=None):
        """Log-log roofline of `device` with each kernel of the fused and unfused variants.

        Hollow markers: model (intensity from the cost model or the simulator's counters,
        performance on the roof). Solid markers: measured (flops / measured time); when the
        backend reports no per-kernel times, one solid point per variant for the whole call.
        Points are numbered; the numbers are placed where they overlap no other number and the
        legend lists what each number is. Fused points are drawn smaller and on top, so a fused
        point at the same place as an unfused one stays visible.
        `device` defaults to this comparison's device (the local CPU for cpu/reference, an A100 for sim).
        """
        new_figure = _matplotlib()
        dev = costmodel.device(device) if device is not None else self.device
        fig = ax.figure if ax is not None else new_figure(figsize=(7.5, 5), layout="constrained")
        ax = ax if ax is not None else fig.add_subplot()
        pts = self.roofline_points(dev)
        xs = [p["intensity"] for p in pts if math.isfinite(p["intensity"]) and p["intensity"] > 0]
        lo = min(xs + [dev.ridge]) / 8
        hi = max(xs + [dev.ridge]) * 8
        grid = np.logspace(math.log10(lo), math.log10(hi), 200)
        roof = np.minimum(dev.peak_fp32, grid * dev.bandwidth) / 1e9

        def attainable_gflops(intensity: float) -> float:
            return min(dev.peak_fp32, intensity * dev.bandwidth) / 1e9
        how = "measured" if dev.measured else "data sheet"
        ax.loglog(grid, roof, color="black", lw=1.5,
                  label=f"{dev.name} roof ({how}): {dev.peak_fp32 / 1e9:,.0f} GFLOP/s, {dev.bandwidth / 1e9:,.0f} GB/s")
        ax.axvline(dev.ridge, color="#999999", ls=":", lw=1)
        # points that (nearly) coincide share one number instead of overprinting
        clusters: dict[tuple, list[dict[str, Any]]] = {}
        for p in pts:
            key = (p["variant"], p["measured"], round(math.log10(max(p["intensity"], 1e-30)), 1),
                   round(math.log10(max(p["gflops"], 1e-30)), 1))
            clusters.setdefault(key, []).append(p)
        numbered = []
        for k, ((variant, measured, _, _), group) in enumerate(clusters.items(), start=1):
            fused = variant == "fused"
            color = VARIANT_COLORS.get(variant, "#999999")
            kw = dict(marker="o" if fused else "s", ms=7 if fused else 12, color=color, ls="none",
                      markeredgecolor=color, markeredgewidth=1.6, zorder=4 if fused else 3)
            if not measured:
                kw["markerfacecolor"] = "none"
            names = ", ".join(dict.fromkeys(q["label"] for q in group))
            for i, q in enumerate(group):
                ax.plot([q["intensity"]], [q["gflops"]], **kw,
                        label=f"{k}: {variant} — {'measured' if measured else 'model'}: {names}" if i == 0 else None)
            numbered.append((k, group[0]["intensity"], group[0]["gflops"], color, kw["ms"]))
        ax.set_xlim(lo, hi)
        _place_numbers(ax, numbered)
        ax.set_xlabel("arithmetic intensity (flop / byte)" + (" — simulator counters" if any(
            p["bytes_source"] == "simulator" for p in pts) else " — model bytes"))
        ax.set_ylabel("performance (GFLOP/s)")
        above = [p for p in pts if p["measured"] and p["gflops"] > 1.05 * attainable_gflops(p["intensity"])]
        if above:
            # not an error: the roof's bandwidth is main memory's, and a small working set runs from cache
            ax.text(0.99, 0.02, f"{len(above)} measured point{'s' if len(above) > 1 else ''} above the roof: "
                    f"{'their data fit' if len(above) > 1 else 'its data fits'} in cache,\nfaster than "
                    f"the memory bandwidth the roof uses", transform=ax.transAxes, fontsize=7, ha="right",
                    va="bottom", color="#555555")
        ax.set_title(f"Roofline of {dev.name}: {self.name} on {self.target}\n(solid = measured, hollow = model; "
                     "circles fused, squares unfused)", fontsize=9)
        # the legend is the table of what each number is: below the axes, where it hides no point
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, frameon=False, markerscale=0.6)
        ax.grid(True, which="both", alpha=0.25)
        return fig

    def roofline_points(self, device: "Device | str | None" = None) -> list[dict[str, Any]]:
        """The points plot_roofline draws: one model point per kernel, plus measured points."""
        dev = costmodel.device(device) if device is not None else self.device
        pts: list[dict[str, Any]] = []
        for vname in ("fused", "unfused"):
            v = self.variant(vname)
            costs = costmodel.kernel_costs(v.compiled, dev) if dev is not self.device else v.costs
            for c in costs:
                pts.append({"variant": vname, "kernel": c.name, "label": c.name, "measured": False,
                            "intensity": c.intensity, "gflops": c.attainable_flops / 1e9,
                            "bytes_source": c.source})
            if not v.measured:
                continue
            if v.per_kernel_ms and all(c.name in v.per_kernel_ms for c in costs):
                for c in costs:
                    ms = v.per_kernel_ms[c.name]
                    pts.append({"variant": vname, "kernel": c.name, "label": c.name, "measured": True,
                                "intensity": c.intensity, "gflops": c.flops / (ms * 1e-3) / 1e9 if ms > 0 else 0.0,
                                "bytes_source": c.source})
            elif costs:
                flops = sum(c.flops for c in costs)
                nbytes = sum(c.bytes for c in costs)
                single = len(costs) == 1
                pts.append({"variant": vname, "kernel": costs[0].name if single else "(whole call)",
                            "label": costs[0].name if single else f"{vname}: whole call ({len(costs)} kernels)",
                            "measured": True, "intensity": flops / nbytes if nbytes else float("inf"),
                            "gflops": flops / (v.median_ms * 1e-3) / 1e9 if v.median_ms > 0 else 0.0,
                            "bytes_source": costs[0].source})
        return pts


def _binary_locator(unit: int):
    """A matplotlib tick locator putting round ticks in units of `unit` bytes (MiB ticks 1, 2, 4 …)."""
    from matplotlib.ticker import Locator, MaxNLocator
    inner = MaxNLocator(nbins=6, steps=[1, 2, 4, 5, 10])

    class BinaryLocator(Locator):
        def __call__(self):
            lo, hi = self.axis.get_view_interval()
            return [t * unit for t in inner.tick_values(lo / unit, hi / unit)]
    return BinaryLocator()


def _fmt_binary(n: float) -> str:
    """KiB/MiB, as the fused graph's edges and the fusion lesson write bytes."""
    from .units import fmt_bytes
    return fmt_bytes(int(n))


def _place_numbers(ax, points: list[tuple[int, float, float, str, float]]) -> None:
    """Write each point's number beside it, at the first of 8 offsets whose box overlaps no number
    or marker placed before (greedy label placement in screen space)."""
    ax.figure.canvas.draw()  # fixes the axes' limits and transform
    to_px = ax.transData.transform
    pt = ax.figure.dpi / 72  # offsets are in points, boxes in pixels
    taken = []  # boxes (x0, y0, x1, y1) in pixels: markers first, then the numbers placed
    for _, x, y, _, ms in points:
        px, py = to_px((x, y))
        r = (ms / 2 + 1) * pt  # the marker's half size
        taken.append((px - r, py - r, px + r, py + r))
    w, h = 10 * pt, 10 * pt
    for k, x, y, color, ms in points:
        d = ms / 2 + 6  # just clear of the marker, then further out
        offsets = [(a * sx, b * sy) for a, b in ((d, 0), (0, d), (d, d), (2 * d, 0), (0, 2 * d), (2 * d, d))
                   for sx in (1, -1) for sy in (1, -1)]
        px, py = to_px((x, y))
        best = offsets[0]
        for dx, dy in offsets:
            cx, cy = px + dx * pt, py + dy * pt
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in taken):
                best = (dx, dy)
                break
        cx, cy = px + best[0] * pt, py + best[1] * pt
        taken.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        ax.annotate(str(k), (x, y), xytext=best, textcoords="offset points", fontsize=8, fontweight="bold",
                    ha="center", va="center", color=color, zorder=6,
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.85))


def _blas_lines(setting: "_blas.BlasSetting | None") -> list[str]:
    """The one table line saying what was done to NumPy's BLAS pool while measuring ([] if nothing)."""
    note = _blas.note_of(setting)
    return [note] if note else []


def _blas_chart_note(fig, setting: "_blas.BlasSetting | None") -> None:
    """The same line, small, under a chart."""
    note = _blas.note_of(setting)
    if note:
        import textwrap
        fig.supxlabel(textwrap.fill(note, 120), fontsize=7, color="#555555")


# ----------------------------------------------------------------------------- compare()
def _shapes(arrays: Sequence[np.ndarray]) -> list[str]:
    from .dtypes import type_str
    return [type_str(a.shape, a.dtype) for a in arrays]


def _check_baselines(baselines: Any) -> tuple[str, ...]:
    if baselines is None:
        return ()
    if isinstance(baselines, str):
        baselines = (baselines,)
    try:
        baselines = tuple(baselines)
    except TypeError:
        raise ExplorerError(f"baselines={baselines!r} must be a list of names from {', '.join(BASELINES)}") from None
    for b in baselines:
        if b not in BASELINES:
            raise ExplorerError(f"unknown baseline {b!r}; choose from {', '.join(BASELINES)}")
    return baselines


def _check_repeat(repeat: Any, warmup: Any, budget_s: Any = None) -> None:
    from .compiled import is_count
    for name, v, lo in (("repeat", repeat, 1), ("warmup", warmup, 0)):
        if not (name == "repeat" and v is None) and not is_count(v, lo):
            raise ExplorerError(f"repeat must be >= 1 (or None: chosen until the median is stable) and warmup >= 0 "
                                f"(integers), got {name}={v!r}")
    if budget_s is not None and (isinstance(budget_s, bool) or not isinstance(budget_s, (int, float))
                                 or not budget_s > 0):
        raise ExplorerError(f"budget_s={budget_s!r}: must be a number of seconds > 0")


def compare(fn: Callable, *args: Any, target: str = "auto", baselines: Sequence[str] = ("numpy",),
            repeat: int | None = None, warmup: int = 3, device: "Device | str | None" = None, check: bool = True,
            budget_s: float | None = None, blas_threads: "str | int | None" = "auto",
            **compile_kwargs: Any) -> Comparison:
    """Compile `fn` fused and unfused on `target`, check both against NumPy and measure them.

    Timing (explorer.measure): fused, unfused and the baselines run interleaved round-robin after
    `warmup` rounds, until every median is stable or `budget_s` seconds are spent (`repeat=N`: exactly
    N rounds); each variant gets median, IQR, min, n and an unstable flag.

    blas_threads (explorer.blas): "auto" runs NumPy's BLAS on 1 thread from the reference call to the
    last timed round on a machine with <= 2 usable cores (its idle threads spin on the core the next
    kernel needs; the table says so), None leaves NumPy's pool alone, an int is that limit.

    baselines: any of 'numpy' (fn on arrays), 'numexpr' (elementwise functions),
    'torch' (eager) and 'torch.compile' — those not installed are skipped with a note.
    device: the roofline device for the model (default: the target's — the local CPU
    for cpu/reference, the A100 the CUDA code targets for sim, the GPU for cuda).
    compile_kwargs go to explorer.compile (schedule=, dtype=, fast_math=, ...; fuse= sets the rules of
    the fused variant).

    >>> import numpy as np, explorer
    >>> r = explorer.compare(lambda a, b: np.exp(a) * b + 1, np.ones(1 << 16, np.float32),
    ...                      np.ones(1 << 16, np.float32), target="sim")
    >>> r.variant("fused").bytes_model < r.variant("unfused").bytes_model
    True
    """
    from .pipeline import compile as _compile, resolve_target
    baselines = _check_baselines(baselines)
    _check_repeat(repeat, warmup, budget_s)
    blas_threads = _blas.check_blas_threads(blas_threads)
    verbose = compile_kwargs.pop("verbose", True)
    t = resolve_target(target, verbose)
    if get_target(t).runs_on_gpu and device is None:
        ok, why = get_target(t).available()
        if not ok:
            raise BackendUnavailable(f"compare(target='cuda') needs a working GPU: {why}; use target='cpu' or 'sim'")
    fuse_rules = compile_kwargs.pop("fuse", True)
    if fuse_rules is False:
        raise ExplorerError("compare() builds the unfused variant itself; leave fuse= unset (or pass fusion rules)")
    fused = _compile(fn, *args, target=t, fuse=fuse_rules, verbose=False, **compile_kwargs)
    unfused = _compile(fn, *args, target=t, fuse=False, verbose=False, **compile_kwargs)
    # from the reference call on: a threaded NumPy call's spinning worker would land on the timed rounds
    with _blas.during_measurement(blas_threads) as blas_setting:
        return _check_and_measure(fn, fused, unfused, t, device, check, baselines, warmup, repeat, budget_s,
                                  blas_setting)


def _check_and_measure(fn: Callable, fused, unfused, t: str, device, check: bool, baselines: tuple[str, ...],
                       warmup: int, repeat: int | None, budget_s: float | None,
                       blas_setting: "_blas.BlasSetting") -> Comparison:
    arrays = list(fused.examples)
    want = _as_list(fn(*arrays))
    if any(a.dtype.name in dtypes.ML_DTYPES for a in arrays):
        # NumPy itself sums bf16/fp8 in bf16/fp8 and returns f32 from a bf16 matmul; the explorer accumulates
        # in f32 and keeps bf16 (its reference interpreter defines that), so check against the interpreter
        want = fused.reference(*arrays)
    dev = costmodel.device(device if device is not None else t)
    variants = [_check_compiled("fused", fused, want, dev, check),
                _check_compiled("unfused", unfused, want, dev, check)]
    calls = {v.name: v.compiled.sampler() for v in variants if v.measured}
    skipped: dict[str, str] = {}
    for b in baselines:
        v, call, why = _baseline(b, fn, arrays, fused.graph, want, t)
        if v is None:
            skipped[b] = why
        else:
            variants.append(v)
            calls[b] = call
    if calls:
        timings = measure.interleaved(calls, warmup=warmup, repeat=repeat, budget_s=budget_s)
        for v in variants:
            if v.name in timings:
                v.set_timing(timings[v.name])
    return Comparison(fused.name, t, dev, variants, skipped, _shapes(arrays), blas_setting)


# ----------------------------------------------------------------------------- sweeps
def _default_make_args(fn: Callable) -> Callable[[int], tuple]:
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        raise ExplorerError("sweep could not read fn's parameters; pass make_args=lambda n: (arrays...)") from None
    count = max(1, len(params))

    def make(n: int) -> tuple:
        rng = np.random.default_rng(n)
        return tuple(rng.standard_normal(n, dtype=np.float32) for _ in range(count))
    return make


DEFAULT_SIZES = tuple(1 << k for k in range(10, 23, 2))


def _ms_iqr(row: dict[str, Any], which: str) -> str:
    q1, q3 = row.get(f"{which}_q1_ms"), row.get(f"{which}_q3_ms")
    med = _fmt_ms(row[f"{which}_ms"])
    return med if q1 is None or q3 is None else f"{med} ({_fmt_ms(q1)}–{_fmt_ms(q3)})"


@dataclass
class Sweep:
    """Fused vs unfused across problem sizes. rows: size, fused_ms, unfused_ms, speedup, bytes, ..."""

    name: str
    target: str
    device: Device
    rows: list[dict[str, Any]]
    blas: "_blas.BlasSetting | None" = None   # what was done to NumPy's BLAS pool while measuring

    @property
    def measured(self) -> bool:
        return bool(self.rows) and all(r["time_source"].startswith("measured") for r in self.rows)

    @property
    def unstable(self) -> bool:
        """True when any size's measurement was flagged unstable: rerun before trusting the curve."""
        return any(r.get("unstable") for r in self.rows)

    def table(self) -> str:
        """Per size: median fused/unfused time with IQR, the speedup with its range, the model's speedup
        and bytes; '!' marks an unstable measurement (reasons below the table)."""
        head = f"{'size':>10}  {'fused ms (IQR)':>22}  {'unfused ms (IQR)':>22}  {'speedup (range)':>22}  " \
               f"{'model speedup':>13}  {'bytes fused':>11}  {'bytes unfused':>13}"
        lines = [f"sweep {self.name} on {self.target} (times: "
                 f"{'measured, median of interleaved runs' if self.measured else 'model'}; bytes: model)", head]
        for r in self.rows:
            sp = measure.Ratio(r["speedup"], r.get("speedup_low", r["speedup"]), r.get("speedup_high", r["speedup"]))
            lines.append(f"{r['size']:>10}  {_ms_iqr(r, 'fused'):>22}  {_ms_iqr(r, 'unfused'):>22}  "
                         f"{str(sp) + (' !' if r.get('unstable') else ''):>22}  "
                         f"{fmt_ratio(r['model_speedup']):>13}  {_fmt_bytes(r['bytes']):>11}  "
                         f"{_fmt_bytes(r['unfused_bytes']):>13}")
        lines += [f"! {measure.UNSTABLE_TEXT} — size {r['size']}: {r['unstable_reason']}" for r in self.rows
                  if r.get("unstable")]
        lines += _blas_lines(self.blas)
        return "\n".join(lines)

    __str__ = table

    def _repr_html_(self) -> str:
        import html
        return f"<pre>{html.escape(self.table())}</pre>"

    def plot(self, ax=None):
        """Speedup (unfused / fused time) vs problem size, log x; the model's prediction dashed."""
        new_figure = _matplotlib()
        fig = ax.figure if ax is not None else new_figure(figsize=(7, 4), layout="constrained")
        ax = ax if ax is not None else fig.add_subplot()
        sizes = [r["size"] for r in self.rows]
        what = "measured" if self.measured else "model (simulator counters)"
        ax.semilogx(sizes, [r["speedup"] for r in self.rows], "o-", color=VARIANT_COLORS["fused"],
                    label=f"speedup, {what}")
        if self.measured:   # the band: fused and unfused interquartile ranges combined (measure.ratio)
            ax.fill_between(sizes, [r.get("speedup_low", r["speedup"]) for r in self.rows],
                            [r.get("speedup_high", r["speedup"]) for r in self.rows], color=VARIANT_COLORS["fused"],
                            alpha=0.18, lw=0, label="speedup range (from the IQRs)")
            for r in self.rows:
                if r.get("unstable"):
                    ax.annotate("! unstable", (r["size"], r["speedup"]), xytext=(0, 6), textcoords="offset points",
                                ha="center", fontsize=7, color="#b35900")
        ax.semilogx(sizes, [r["model_speedup"] for r in self.rows], "--", color="#888888",
                    label=f"speedup, model (roofline on {self.device.name})")
        ax.axhline(1.0, color="black", lw=0.8)
        ys = [r["speedup"] for r in self.rows if r["speedup"] and math.isfinite(r["speedup"])]
        if ys and max(ys) / max(min(ys), 1e-9) > 20:  # noisy or huge ranges read better on a log axis
            ax.set_yscale("log")
        ax.set_xlabel("problem size (elements of the first input)")
        ax.set_ylabel("speedup of fused over unfused (x)")
        ax.set_title(f"{self.name} on {self.target}: where fusion pays off "
                     f"({'measured' if self.measured else 'model'} times)", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.25)
        _blas_chart_note(fig, self.blas)
        return fig


def sweep(fn: Callable, make_args: Callable[[int], tuple] | None = None, sizes: Sequence[int] = DEFAULT_SIZES,
          target: str = "auto", progress: bool = True, repeat: int | None = None, warmup: int = 2,
          device: "Device | str | None" = None, budget_s: float | None = None,
          blas_threads: "str | int | None" = "auto", **compile_kwargs: Any) -> Sweep:
    """Measure fused vs unfused across problem sizes → Sweep (rows; .plot() speedup vs size).

    Each size is one compare(): fused and unfused interleaved (explorer.measure, `repeat`/`budget_s`
    as there); rows carry the medians, quartiles, the speedup's range and the unstable flag.
    blas_threads as in compare(), for the whole sweep (Sweep.blas records it).

    make_args(n) returns the arguments for size n (default: one float32 vector of n
    elements per parameter of fn — right for elementwise functions). A progress bar
    appears when the sweep takes more than a second.

    >>> import numpy as np, explorer
    >>> s = explorer.sweep(lambda a, b: np.exp(a) * b, sizes=[1024, 4096], target="sim")
    >>> [r["size"] for r in s.rows]
    [1024, 4096]
    >>> print(s.table())
    sweep <lambda> on sim (times: model; bytes: model)
          size  ...  bytes fused  bytes unfused
          1024  ...      12.3 kB        20.5 kB
          4096  ...      49.2 kB        81.9 kB
    ...
    """
    from .pipeline import resolve_target
    from .progress import progress as _progress
    if isinstance(sizes, (int, np.integer)) and not isinstance(sizes, bool):
        sizes = (sizes,)
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Iterable) or not sizes:
        raise ExplorerError(f"sweep needs at least one size: pass a list of positive ints, e.g. "
                            f"sizes=[1 << 12, 1 << 16, 1 << 20]; got {sizes!r}")
    sizes = list(sizes)
    bad = [n for n in sizes if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1]
    if bad:
        raise ExplorerError(f"sweep sizes must be positive integers, got {bad[0]!r}")
    _check_repeat(repeat, warmup, budget_s)
    blas_threads = _blas.check_blas_threads(blas_threads)
    for k in ("baselines", "fuse"):
        if k in compile_kwargs:
            raise ExplorerError(f"sweep() measures fused vs unfused only and does not take {k}=; use "
                                f"explorer.compare(fn, *args, {k}=...) for one size")
    if make_args is not None and not callable(make_args):
        raise ExplorerError(f"make_args must be a function of the size n returning the arguments, got "
                            f"{type(make_args).__name__}")
    make = make_args or _default_make_args(fn)
    t = resolve_target(target, compile_kwargs.pop("verbose", True))
    rows = []
    name = getattr(fn, "__name__", "fn")
    dev = costmodel.device(device if device is not None else t)
    with _blas.during_measurement(blas_threads) as blas_setting:
        for n in _progress(list(sizes), desc=f"sweep {name}", enabled=progress):
            try:
                args = make(int(n))
            except ExplorerError:
                raise
            except Exception as e:
                raise ExplorerError(f"make_args({int(n)}) raised {type(e).__name__}: {e}") from e
            if not isinstance(args, tuple):
                args = (args,)
            r = compare(fn, *args, target=t, baselines=(), repeat=repeat, warmup=warmup, device=dev, verbose=False,
                        budget_s=budget_s, blas_threads=None, **compile_kwargs)   # limited here, once
            f, u = r.variant("fused"), r.variant("unfused")
            fp = sum(c.predicted_ms for c in costmodel.kernel_costs(f.compiled, dev, counters=False))
            up = sum(c.predicted_ms for c in costmodel.kernel_costs(u.compiled, dev, counters=False))
            name = r.name
            sp = r.speedup_range
            rows.append({"size": int(n), "fused_ms": f.median_ms, "unfused_ms": u.median_ms, "speedup": r.speedup,
                         "fused_q1_ms": f.q1_ms, "fused_q3_ms": f.q3_ms, "unfused_q1_ms": u.q1_ms, "unfused_q3_ms": u.q3_ms,
                         "speedup_low": sp.low, "speedup_high": sp.high, "unstable": sp.unstable,
                         "unstable_reason": sp.reason, "repeat": f.repeat,
                         "model_speedup": up / fp if fp > 0 else float("nan"),
                         "bytes": f.bytes_model, "unfused_bytes": u.bytes_model,
                         "fused_kernels": f.kernels, "unfused_kernels": u.kernels, "time_source": f.time_source})
    return Sweep(name, t, dev, rows, blas_setting)


# ----------------------------------------------------------------------------- python -m explorer bench
def bench_cases(target: str, quick: bool = False) -> list[tuple[str, Callable, tuple]]:
    """The essay's MLP (memory-bound and compute-bound shapes) and a softmax, sized for `target`."""
    rng = np.random.default_rng(0)

    def mlp(x, w, b):          # the essay's example: matmul + bias + relu
        return np.maximum(x @ w + b, 0)

    def softmax(x):
        e = np.exp(x - np.max(x, axis=-1, keepdims=True))
        return e / np.sum(e, axis=-1, keepdims=True)

    def r(*shape):
        return rng.standard_normal(shape, dtype=np.float32)
    # The simulator executes every thread in NumPy: keep its problems small.
    simulated = get_target(target).simulated
    small = simulated or quick
    m, k, n = (2048, 64, 64) if small else (8192, 64, 64)
    big = 128 if simulated else (256 if quick else 1024)
    rows, cols = (256, 256) if small else (4096, 1024)
    return [(f"mlp, memory-bound ({m}x{k} @ {k}x{n})", mlp, (r(m, k), r(k, n), r(n))),
            (f"mlp, compute-bound ({big}^3)", mlp, (r(big, big), r(big, big), r(big))),
            (f"softmax ({rows}x{cols})", softmax, (r(rows, cols),))]


def bench_main(argv: Sequence[str] | None = None) -> int:
    """`python -m explorer bench`: fused vs unfused tables for the essay's MLP and a softmax."""
    import argparse
    from .pipeline import TARGETS, resolve_target
    p = argparse.ArgumentParser(prog="python -m explorer bench",
                                description="Fused vs unfused on the best available target (or --target).")
    p.add_argument("--target", default="auto", choices=TARGETS)
    p.add_argument("--repeat", type=int, default=None,
                   help="rounds of interleaved runs (default: until the medians are stable, within --budget)")
    p.add_argument("--budget", type=float, default=None, help="seconds of timing per comparison (default 1)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smaller problems")
    p.add_argument("--baselines", default="numpy,numexpr,torch,torch.compile",
                   help="comma-separated: numpy,numexpr,torch,torch.compile")
    a = p.parse_args(list(argv) if argv is not None else None)
    if (a.repeat is not None and a.repeat < 1) or a.warmup < 0 or (a.budget is not None and a.budget <= 0):
        p.error(f"--repeat must be >= 1, --warmup >= 0 and --budget > 0, got --repeat {a.repeat} --warmup {a.warmup} "
                f"--budget {a.budget}")
    bad = [s for s in a.baselines.split(",") if s and s not in BASELINES]
    if bad:
        p.error(f"argument --baselines: unknown {', '.join(map(repr, bad))}; choose from {','.join(BASELINES)}")
    try:
        t = resolve_target(a.target, verbose=True)
        bl = tuple(s for s in a.baselines.split(",") if s)
        for title, fn, args in bench_cases(t, a.quick):
            print(f"== {title}")
            r = compare(fn, *args, target=t, baselines=bl, repeat=a.repeat, warmup=a.warmup, budget_s=a.budget,
                        verbose=False)
            print(r.table())
            print()
    except ExplorerError as e:
        print(f"error: {e}")
        return 1
    return 0


__all__ = ["compare", "Comparison", "Variant", "sweep", "Sweep", "bench_main", "bench_cases", "numexpr_expression",
           "max_abs_error", "BASELINES"]
