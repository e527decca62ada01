"""Run one fuzz Program on every target and judge each run against NumPy.

Tolerances live here, in one place (`TOLERANCE`, `compare`):

* bool and integer outputs are compared exactly;
* NaN must meet NaN and +-Inf the same Inf, exactly;
* a float element passes when |got - want| <= ulps * eps(work) * (|want| + scale * log2(N)) + 4 * sensitivity,
  where
  - `work` is the least precise float dtype anywhere in the program (its inputs, intermediates and
    outputs: an f32 value cast to f64 carries f32 error),
  - `ulps` is TOLERANCE[work] (x8 with fast_math),
  - `scale` is the largest finite |value| the program computes (an error made in a big intermediate
    survives cancellation: (a + b) - a),
  - `N` (at least 2) is the largest array size in the program: a reduction's summation order (NumPy's
    pairwise sum against a blocked, vectorised loop) changes its result by about log2(N) roundings of
    the running sum (found: np.var of 4900 f64 values differed by 1.2e-12, 3.5e-14 relative),
  - `sensitivity` is how far NumPy's own answer moves when every float input and every statement's
    float result moves by one ulp (measured: the program is re-run three times with random one-ulp
    nudges); it covers ill-conditioned elements (cancellation, a where() on a tie) and one-ulp libm
    differences (glibc sinf vs NumPy's sin) amplified downstream;
* an element whose exact (bool/int) value flips when inputs move by one ulp is not compared (a
  comparison or cast on the edge of a float tie), nor, with fast_math, any value of a program that
  computes a NaN or Inf anywhere (-ffinite-math-only assumes there is none), nor int outputs of a program where NumPy warns
  "invalid value encountered in cast" (NaN/Inf/out-of-range float -> int: undefined in C, and
  platform-defined in NumPy; the generator avoids drawing such casts).

Outcomes of a run: ok | wrong (value, dtype or shape) | error:<ExplorerError class> | exception:<class> |
rejected (the explorer's tracer declines a program NumPy runs: unsupported surface, counted apart).
crash and hang are decided by the runner's parent process.
"""
from __future__ import annotations

import re
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

import explorer
from explorer.errors import DTypeError, ExplorerError, TraceError, UnsupportedOpError

from fuzz_programs import Program, compile_function, numpy_eval

# ulps of the work dtype's eps a float result may be off by (see the module docstring)
TOLERANCE = {"float64": 64, "float32": 64, "float16": 8}
FAST_MATH_FACTOR = 8
REJECTIONS = (UnsupportedOpError, DTypeError, TraceError)


@dataclass
class Run:
    """The judgement of one program on one target (or knob variant)."""

    target: str                 # reference | sim | cpu | cuda | nvcc | <target>+knobs
    outcome: str                # ok | wrong | error | exception | rejected | crash | hang
    cls: str = ""               # error class, or wrong-result kind (value/dtype/shape:<dtype>)
    detail: str = ""
    knobs: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.outcome not in ("ok", "rejected", "skipped")

    def signature(self) -> str:
        """A failure class: target, outcome, class (and for errors the message, names and numbers blanked)."""
        if self.outcome in ("wrong", "crash", "hang"):
            return f"{self.target} {self.outcome}:{self.cls}"
        return f"{self.target} {self.outcome}:{self.cls} {normalize(self.detail)[:110]}"


def normalize(msg: str) -> str:
    msg = msg.split("\n")[0]
    msg = re.sub(r"\(at <fuzz-program.*", "", msg)
    msg = re.sub(r"'[^']*'|\"[^\"]*\"", "'_'", msg)
    msg = re.sub(r"%?\b[a-z]+\d+(#\d+)?\b", "_", msg)
    msg = re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "N", msg)
    return msg.strip()


# ----------------------------------------------------------------------------- expected values
@dataclass
class Expected:
    outs: list[np.ndarray]
    work: str                    # least precise float dtype in the program ('' when none)
    scale: float                 # largest finite |value| computed
    sens: list[np.ndarray]       # per-output sensitivity to one-ulp input moves (float: |delta|; exact: changed?)
    nonfinite: bool = False      # some value in the program is NaN or +-Inf
    order: float = 1.0           # log2 of the largest array size: the summation-order factor on `scale`


def _as_list(r: Any) -> list[np.ndarray]:
    return [np.asarray(x) for x in (r if isinstance(r, tuple) else (r,))]


def _nudge(inputs: Sequence[np.ndarray], direction: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for a in inputs:
        if a.dtype.kind == "f" and a.size:
            signs = np.where(rng.random(a.shape) < 0.5, -1.0, 1.0) * direction
            out.append(np.nextafter(a, (signs * np.inf).astype(a.dtype)).astype(a.dtype))
        else:
            out.append(a)
    return out


def _nudged_fn(prog: Program, direction: float, seed: int):
    """The program with every statement's float result moved by one ulp (random signs): a libm or
    summation-order difference of one ulp in any intermediate is within what is compared."""
    counter = [seed]

    def nudge(v):
        if isinstance(v, (np.ndarray, np.generic)) and v.dtype.kind == "f":
            counter[0] += 1
            return _nudge([np.asarray(v)], direction, counter[0])[0]
        return v
    body = []
    for st_ in prog.stmts:
        body += [*st_.lines, f"{st_.out} = __nudge({st_.out})"]
    ret = prog.outputs[0] if len(prog.outputs) == 1 else "(" + ", ".join(prog.outputs) + ")"
    src = "\n".join([f"def f({', '.join(i.name for i in prog.inputs)}):", *("    " + ln for ln in body),
                     f"    return {ret}"]) + "\n"
    return compile_function(src, "f", {"__nudge": nudge})


def _intermediates(prog: Program, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Every statement's value (the program re-run returning all of them)."""
    names = [s.out for s in prog.stmts]
    src = prog.function_source().rsplit("    return", 1)[0] + f"    return ({', '.join(names)},)\n"
    return [np.asarray(v) for v in numpy_eval(compile_function(src), inputs)]


def expected(prog: Program, inputs: Sequence[np.ndarray]) -> Expected:
    fn = prog.fn()
    with np.errstate(all="warn"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = _as_list(fn(*inputs))
    # a float -> int cast of NaN/Inf/out-of-range values is undefined in C, platform-defined in NumPy
    bad_cast = any("invalid value encountered in cast" in str(w.message) for w in caught)
    try:
        inter = _intermediates(prog, inputs)
    except Exception:        # regression programs are one statement of several lines
        inter = list(outs)
    vals = [*inputs, *inter, *outs]
    floats = [np.dtype(v.dtype) for v in vals if v.dtype.kind == "f"]
    work = min(floats, key=lambda d: d.itemsize).name if floats else ""
    finite = [float(np.abs(v[np.isfinite(v)]).max()) for v in vals if v.dtype.kind == "f" and np.isfinite(v).any()]
    finite += [float(np.abs(v).max()) for v in vals if v.dtype.kind == "i" and v.size]
    scale = float(min(max(finite, default=0.0), 1e300))
    sens = [np.zeros(o.shape, np.float64) if o.dtype.kind == "f" else np.full(o.shape, bad_cast and o.dtype.kind == "i")
            for o in outs]
    if work:
        for k, direction in enumerate((1.0, -1.0, 1.0)):
            try:
                moved = _as_list(numpy_eval(_nudged_fn(prog, direction, 100 + k), _nudge(inputs, direction, k)))
            except Exception:
                continue
            for i, (o, m) in enumerate(zip(outs, moved)):
                if o.dtype.kind == "f":
                    with np.errstate(all="ignore"):
                        d = np.abs(m.astype(np.float64) - o.astype(np.float64))
                    flip = (np.isnan(o) != np.isnan(m)) | (np.isinf(o) != np.isinf(m))
                    d = np.where(np.isnan(d) | flip, np.inf, d)
                    sens[i] = np.maximum(sens[i], d)
                else:
                    sens[i] = sens[i] | (o != m)
    nonfinite = any(v.dtype.kind == "f" and not np.isfinite(v).all() for v in vals)
    order = float(np.log2(max(2, max((v.size for v in vals), default=2))))
    return Expected(outs, work, scale, sens, nonfinite, order)


def compare(got: Any, exp: Expected, fast_math: bool = False) -> tuple[str, str]:
    """('', '') when `got` matches, else (kind, detail) with the worst element."""
    got_l = _as_list(got)
    if len(got_l) != len(exp.outs):
        return "arity", f"{len(got_l)} outputs, NumPy {len(exp.outs)}"
    for k, (g, w, s) in enumerate(zip(got_l, exp.outs, exp.sens)):
        if g.shape != w.shape:
            return "shape", f"output {k}: shape {g.shape}, NumPy {w.shape}"
        if g.dtype != w.dtype:
            return f"dtype:{w.dtype}", f"output {k}: dtype {g.dtype}, NumPy {w.dtype}"
        if fast_math and exp.nonfinite:         # computed from a NaN/Inf whose semantics fast_math drops
            continue
        if w.dtype.kind != "f":
            bad = (g != w) & ~s
            if bad.any():
                i = np.argwhere(bad)[0]
                return f"value:{w.dtype}", (f"output {k}{list(i)}: {g[tuple(i)]!r}, NumPy {w[tuple(i)]!r} "
                                            f"({int(bad.sum())} of {w.size} differ)")
            continue
        gf, wf = g.astype(np.float64), w.astype(np.float64)
        nan_bad = np.isnan(gf) != np.isnan(wf)
        inf_bad = (np.isinf(wf) | np.isinf(gf)) & (gf != wf) & ~np.isnan(wf)
        ulps = TOLERANCE.get(exp.work or w.dtype.name, 64) * (FAST_MATH_FACTOR if fast_math else 1)
        eps = float(np.finfo(exp.work or w.dtype).eps)
        with np.errstate(all="ignore"):
            tol = ulps * eps * (np.abs(wf) + exp.scale * exp.order) + 4 * s
            err = np.abs(gf - wf)
        fin = np.isfinite(wf) & np.isfinite(gf)
        bad = (nan_bad | inf_bad | (fin & (err > tol))) & ~np.isinf(s)
        if fast_math:   # NaN/Inf semantics are traded away
            bad &= np.isfinite(wf)
        if bad.any():
            i = tuple(np.argwhere(bad)[0])
            return f"value:{w.dtype}", (f"output {k}{list(i)}: {g[i]!r}, NumPy {w[i]!r} (err {err[i]:.3g}, "
                                        f"tol {tol[i]:.3g}; {int(bad.sum())} of {w.size} differ)")
    return "", ""


# ----------------------------------------------------------------------------- running
def available_targets(nvcc: bool = False) -> list[str]:
    """reference and sim always; cpu with a C compiler; cuda with a GPU; nvcc (a PTX build) on request."""
    out = ["reference", "sim"]
    from explorer.backends import cpu
    if cpu.available()[0]:
        out.append("cpu")
    try:
        from explorer.backends import cuda
        if cuda.available()[0]:
            out.append("cuda")
    except ImportError:
        pass
    if nvcc:
        from explorer.backends import nvcc as nv
        if nv.available()[0]:
            out.append("nvcc")
    return out


def _knob_kwargs(knobs: dict) -> dict:
    kw = dict(knobs)
    if "dtype" in kw:
        kw["dtype"] = np.dtype(kw["dtype"])
    return kw


def run_one(prog: Program, fn, inputs: list[np.ndarray], target: str, knobs: dict, exp: Expected) -> Run:
    label = target if not knobs else f"{target}+knobs"
    try:
        if target == "nvcc":
            from explorer.backends import nvcc as nv
            from explorer.codegen.cuda import generate_cuda
            c = explorer.compile(fn, *inputs, target="sim", verbose=False, **_knob_kwargs(knobs))
            nv.check(generate_cuda(c.program).source(), arch="sm_80", mode="ptx")
            return Run(label, "ok", knobs=knobs)
        c = explorer.compile(fn, *inputs, target=target, verbose=False, **_knob_kwargs(knobs))
        got = c(*inputs)
    except REJECTIONS as e:
        return Run(label, "rejected", type(e).__name__, str(e), knobs)
    except ExplorerError as e:
        return Run(label, "error", type(e).__name__, str(e), knobs)
    except Exception as e:  # noqa: BLE001 - the point is to catch what the explorer did not
        tb = traceback.extract_tb(e.__traceback__)
        where = next((f"{f.filename.rsplit('/explorer/', 1)[-1]}:{f.lineno}" for f in reversed(tb)
                      if "/explorer/" in f.filename), "")
        return Run(label, "exception", type(e).__name__, f"{e} [{where}]", knobs)
    if target == "nvcc":
        return Run(label, "ok", knobs=knobs)
    kind, detail = compare(got, exp, bool(knobs.get("fast_math")))
    return Run(label, "wrong" if kind else "ok", kind, detail, knobs)


def check_program(prog: Program, targets: Sequence[str], variant: bool = True,
                  only: str | None = None, on_run: Callable[[str], None] | None = None) -> list[Run]:
    """Judge `prog` on each target with default knobs, then on prog.variant_target with prog.knobs.

    `only` (a Run.target label) runs just that one (the shrinker re-checks one failing run)."""
    fn = prog.fn()
    inputs = prog.make_inputs()
    exp = expected(prog, inputs)
    configs = [(t, {}) for t in targets]
    if variant and prog.knobs and prog.variant_target in targets:
        configs.append((prog.variant_target, prog.knobs))
    runs = []
    for t, kn in configs:
        label = t if not kn else f"{t}+knobs"
        if only is not None and label != only:
            continue
        if on_run is not None:
            on_run(label)
        e = exp
        if kn.get("dtype"):
            dt = np.dtype(kn["dtype"])
            cast = [a.astype(dt) if a.dtype.kind == "f" else a for a in inputs]
            try:
                e = expected(prog, cast)
            except Exception:
                continue
        runs.append(run_one(prog, fn, inputs, t, kn, e))
    return _mark_rejections(runs)


def _mark_rejections(runs: list[Run]) -> list[Run]:
    """A rejection is only 'rejected' (unsupported surface) when the reference target rejects it too;
    a target that alone rejects what the reference runs is an error of that target."""
    ref = next((r for r in runs if r.target == "reference"), None)
    if ref is None or ref.outcome == "rejected":
        return runs
    for r in runs:
        if r.outcome == "rejected":
            r.outcome = "error"
    return runs


__all__ = ["TOLERANCE", "Run", "Expected", "expected", "compare", "check_program", "available_targets",
           "normalize", "REJECTIONS"]
