"""Random straight-line NumPy programs for the differential fuzzer, drawn with hypothesis.

A Program is data (input specs, statements, outputs, knobs) that prints as a Python module
(`Program.source()`), runs with plain NumPy (the oracle) and compiles with the explorer. The ops the
generator draws from are one table, `OPS`: each row names the op, how many operands it takes, which
operands it accepts, and a `render` that draws its parameters and returns the source line(s). An op
that the explorer may not support yet (issue 12's concatenate, einsum, gather, writes, ...) carries a
`probe`; the row is used only when tracing the probe does not raise an ExplorerError, so the row
comes alive when the feature is merged. Adding an op is one row.

Every statement is evaluated with NumPy while it is drawn (shapes and dtypes of later operands come
from real values), and a statement NumPy rejects is dropped, so every generated program is valid NumPy.

>>> from hypothesis import given, settings
>>> progs = []
>>> @settings(max_examples=3, database=None, derandomize=True)
... @given(programs())
... def collect(p):
...     progs.append(p)
>>> collect()
>>> all("def f(" in p.source() for p in progs)
True
"""
from __future__ import annotations

import linecache
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from hypothesis import strategies as st

import explorer
from explorer import nn
from explorer.errors import ExplorerError

# ----------------------------------------------------------------------------- program data
FLOATS = ("float32", "float64", "float16")
INTS = ("int32", "int64")
SUPPORTED = FLOATS + INTS + ("bool",)
MAX_ELEMENTS = 6000          # per value: keeps sim runs and NumPy checks fast
SIZES = (1, 2, 3, 5, 7, 8, 13, 16, 17, 31, 32, 33, 64, 70, 0)   # sampled_from shrinks toward 1


@dataclass(frozen=True)
class InputSpec:
    """One argument: its values are a pure function of (shape, dtype, fill, seed)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    fill: str = "normal"      # normal | positive | ints | special (NaN/Inf/0/-0 sprinkled) | index:N
    seed: int = 0

    def make(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        dt = np.dtype(self.dtype)
        shape = self.shape
        if dt == np.bool_:
            return rng.random(shape) < 0.5
        if self.fill.startswith("index:"):
            n = int(self.fill.split(":")[1])
            return rng.integers(-n, n, size=shape).astype(dt) if n > 0 else np.zeros(shape, dt)
        if dt.kind == "i":
            return rng.integers(-4, 5, size=shape).astype(dt)
        if self.fill == "positive":
            v = rng.uniform(0.1, 3.0, size=shape)
        elif self.fill == "ints":
            v = rng.integers(-3, 4, size=shape).astype(np.float64)
        else:
            v = rng.standard_normal(shape) * 2
        v = v.astype(dt)
        if self.fill == "special" and v.size:
            specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dt)
            k = max(1, v.size // 4)
            where = rng.choice(v.size, size=k, replace=False)
            v.reshape(-1)[where] = specials[rng.integers(0, len(specials), size=k)]
        return v

    def literal(self) -> str:
        return (f"InputSpec({self.name!r}, {self.shape!r}, {self.dtype!r}, {self.fill!r}, {self.seed})")


@dataclass(frozen=True)
class Stmt:
    """One statement: `lines` assign `out`; `tags` like 'add:bool,bool' let known-bug rules match it."""

    out: str
    lines: tuple[str, ...]
    op: str
    tags: tuple[str, ...] = ()


@dataclass
class Program:
    inputs: list[InputSpec]
    stmts: list[Stmt]
    outputs: list[str]
    knobs: dict[str, Any] = field(default_factory=dict)   # compile options of the knob-variant run
    variant_target: str = "sim"

    # -- source ---------------------------------------------------------------------
    def function_source(self) -> str:
        body = [ln for s in self.stmts for ln in s.lines]
        ret = self.outputs[0] if len(self.outputs) == 1 else "(" + ", ".join(self.outputs) + ")"
        args = ", ".join(i.name for i in self.inputs)
        return "\n".join([f"def f({args}):", *("    " + ln for ln in body), f"    return {ret}"]) + "\n"

    def source(self) -> str:
        """The program as a self-contained module (what a regression file holds)."""
        return "\n".join([
            "import numpy as np",
            "from explorer import nn",
            "",
            "",
            self.function_source(),
            "",
            "INPUTS = [" + ", ".join(i.literal() for i in self.inputs) + "]",
            f"KNOBS = {self.knobs!r}",
            f"VARIANT_TARGET = {self.variant_target!r}",
            f"TAGS = {sorted(self.tags())!r}",
        ]) + "\n"

    def tags(self) -> set[str]:
        out = {t for s in self.stmts for t in s.tags}
        out |= {f"input:{i.dtype}" for i in self.inputs}
        return out

    def ops(self) -> list[str]:
        return [s.op for s in self.stmts]

    # -- running ----------------------------------------------------------------------
    def fn(self) -> Callable:
        return compile_function(self.function_source())

    def make_inputs(self) -> list[np.ndarray]:
        return [i.make() for i in self.inputs]


_FN_COUNTER = [0]


def compile_function(src: str, name: str = "f", extra: dict[str, Any] | None = None) -> Callable:
    """exec `src` under a fake file name registered in linecache, so tracebacks and the explorer's
    provenance show the program's lines."""
    _FN_COUNTER[0] += 1
    fname = f"<fuzz-program-{_FN_COUNTER[0]}>"
    linecache.cache[fname] = (len(src), None, src.splitlines(True), fname)
    ns: dict[str, Any] = {"np": np, "nn": nn, **(extra or {})}
    exec(compile(src, fname, "exec"), ns)
    return ns[name]


def from_source(module_text: str) -> Program:
    r"""Rebuild a Program from `Program.source()` text (regression files).

    >>> p = from_source("def f(a0):\n    v0 = a0 + 1\n    v1 = v0 * 2\n    return v1\n\n"
    ...                 "INPUTS = [InputSpec('a0', (3,), 'float32')]\nKNOBS = {}\n")
    >>> [s.out for s in p.stmts], p.outputs
    (['v0', 'v1'], ['v1'])
    """
    import re
    ns: dict[str, Any] = {"InputSpec": InputSpec}
    exec(compile(module_text, "<regression>", "exec"), ns)
    fn_src = module_text.split("def f(", 1)[1].split("\n\n", 1)[0]
    lines = [ln[4:] for ln in fn_src.splitlines()[1:] if ln.strip()]
    ret = lines.pop()[len("return "):]
    stmts: list[Stmt] = []
    pending: list[str] = []
    for ln in lines:                       # a statement ends at the line that assigns its vN
        pending.append(ln)
        m = re.match(r"(v\d+) = ", ln)
        if m:
            stmts.append(Stmt(m.group(1), tuple(pending), "regression"))
            pending = []
    if pending:
        last = stmts.pop()
        stmts.append(Stmt(last.out, last.lines + tuple(pending), "regression"))
    if stmts:
        stmts[-1] = Stmt(stmts[-1].out, stmts[-1].lines, "regression", tuple(ns.get("TAGS", ())))
    outs = [o.strip() for o in ret.strip("()").split(",") if o.strip()]
    return Program(list(ns["INPUTS"]), stmts, outs, dict(ns.get("KNOBS", {})), ns.get("VARIANT_TARGET", "sim"))


def numpy_eval(src_or_fn: Any, inputs: Sequence[np.ndarray]) -> Any:
    """Run a program with NumPy, warnings silenced (NaN/Inf/overflow are part of the oracle's answer)."""
    fn = compile_function(src_or_fn) if isinstance(src_or_fn, str) else src_or_fn
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*inputs)


def acceptable_value(v: Any) -> bool:
    """A value the explorer's dtypes can hold, small enough to run quickly."""
    if isinstance(v, (np.ndarray, np.generic)):
        return np.dtype(v.dtype).name in SUPPORTED and np.size(v) <= MAX_ELEMENTS
    return False


# ----------------------------------------------------------------------------- the op table
class Ctx:
    """What a row's `render` can use while drawing: the hypothesis `draw`, operand values, fresh inputs."""

    def __init__(self, draw: Callable, gen: "Gen"):
        self.draw = draw
        self.gen = gen

    def new_input(self, shape: Sequence[int], dtype: str, fill: str | None = None) -> str:
        return self.gen.new_input(self.draw, tuple(int(s) for s in shape), dtype, fill)

    def axis(self, ndim: int, allow_none: bool = True) -> int | None:
        choices = ([None] if allow_none else []) + list(range(-ndim, ndim))
        return self.draw(st.sampled_from(choices)) if choices else None

    def axes(self, ndim: int) -> Any:
        """None, an int, a tuple (possibly empty) of distinct axes; the forms NumPy's axis= takes."""
        kind = self.draw(st.sampled_from(["none", "int", "tuple", "int", "none", "tuple", "empty"]))
        if ndim == 0 or kind == "none":
            return None if kind != "empty" else ()
        if kind == "int":
            return self.draw(st.integers(-ndim, ndim - 1))
        if kind == "empty":
            return ()
        k = self.draw(st.integers(1, ndim))
        picks = self.draw(st.permutations(range(ndim)))[:k]
        return tuple(p - ndim if self.draw(st.booleans()) else p for p in picks)

    def bcast_partner(self, shape: tuple[int, ...], dtype: str) -> str:
        """An operand broadcast-compatible with `shape`: an existing value, a fresh input or a scalar."""
        kind = self.draw(st.sampled_from(["input", "scalar", "var", "input_other_dtype"]))
        if kind == "scalar":
            return self.draw(st.sampled_from(SCALARS_BY_KIND[np.dtype(dtype).kind]))
        if kind == "var":
            cands = [n for n, v in self.gen.values.items() if _broadcasts(np.shape(v), shape)]
            if cands:
                return self.draw(st.sampled_from(cands))
        dt = dtype if kind != "input_other_dtype" else self.draw(st.sampled_from(SUPPORTED))
        return self.new_input(self.bcast_shape(shape), dt)

    def bcast_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        out = []
        for s in shape:
            out.append(1 if self.draw(st.booleans()) and self.draw(st.booleans()) else s)
        drop = self.draw(st.integers(0, len(out)))
        out = out[drop:] if self.draw(st.booleans()) else out
        if self.draw(st.integers(0, 5)) == 0:
            out = [self.draw(st.sampled_from(SIZES[:6]))] + out   # the partner has more dims
        return tuple(out)


SCALARS_BY_KIND = {
    "f": ["2.0", "0.5", "-1.5", "1", "3", "1e-3", "np.float32(2.5)", "True"],
    "i": ["2", "-1", "3", "0.5", "1", "np.int32(2)"],
    "b": ["True", "False", "1", "0.5"],
}


def _broadcasts(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    try:
        np.broadcast_shapes(a, b)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class Op:
    """One row of the op table.

    render(ctx, operands, values) -> list of source lines; the last line's expression is the result
    (use `{out}` in earlier lines for temporaries named after the result). `accepts(value)` filters
    the first operand. `probe` (source of a one-argument function `f(x)` for an f32 (4, 6) x) makes
    the row conditional on the explorer supporting it.
    """

    name: str
    arity: int
    render: Callable[[Ctx, list[str], list[np.ndarray]], list[str]]
    accepts: Callable[[np.ndarray], bool] = lambda v: True
    weight: int = 2
    probe: str | None = None


def _r(template: str):
    """Render from a format template over the operand names {0}, {1}, ..."""
    return lambda ctx, names, vals: [template.format(*names)]


def _is_float(v) -> bool: return np.dtype(v.dtype).kind == "f"
def _is_bool(v) -> bool: return np.dtype(v.dtype) == np.bool_
def _nd(k: int): return lambda v: np.ndim(v) >= k
def _any(v) -> bool: return True


def _binary(sym: str, fn_form: str | None = None):
    def render(ctx: Ctx, names, vals):
        other = ctx.bcast_partner(np.shape(vals[0]), vals[0].dtype.name)
        a, b = (names[0], other) if ctx.draw(st.booleans()) else (other, names[0])
        if fn_form and ctx.draw(st.booleans()):
            return [f"np.{fn_form}({a}, {b})"]
        return [f"{a} {sym} {b}"]
    return render


def _unary_np(name: str):
    return lambda ctx, names, vals: [f"np.{name}({names[0]})"]


def _reduce(fn: str, method: bool = True):
    def render(ctx: Ctx, names, vals):
        ax = ctx.axes(np.ndim(vals[0]))
        keep = ctx.draw(st.booleans())
        kw = (f"axis={ax!r}" if ax is not None else "") + (", keepdims=True" if keep else "")
        kw = kw.lstrip(", ")
        if method and ctx.draw(st.booleans()):
            return [f"{names[0]}.{fn}({kw})"]
        return [f"np.{fn}({names[0]}{', ' + kw if kw else ''})"]
    return render


def _where(ctx: Ctx, names, vals):
    shape = np.shape(vals[0])
    if ctx.draw(st.booleans()):
        cond = f"{names[0]} > 0" if not _is_bool(vals[0]) else names[0]
    else:
        cond = ctx.new_input(ctx.bcast_shape(shape), "bool")
    other = ctx.bcast_partner(shape, vals[0].dtype.name)
    return [f"np.where({cond}, {names[0]}, {other})"]


def _cast(ctx: Ctx, names, vals):
    v = vals[0]
    # float -> int of NaN, Inf or an out-of-range value is undefined in C and platform-defined in
    # NumPy (it warns "invalid value encountered in cast"): not drawn
    safe = v.dtype.kind != "f" or (np.isfinite(v).all() and (np.abs(v.astype(np.float64)) < 2**31).all())
    dt = ctx.draw(st.sampled_from(SUPPORTED if safe else FLOATS + ("bool",)))
    return [f"{names[0]}.astype(np.{dt})"]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0] if n > 0 else [0, 1]


def _reshape(ctx: Ctx, names, vals):
    size = int(np.size(vals[0]))
    if size == 0:
        shape = ctx.draw(st.sampled_from([(0,), (-1,), (0, 3), (2, 0, 1)]))
    else:
        nd = ctx.draw(st.integers(0 if size == 1 else 1, 4))
        dims, rem = [], size
        for _ in range(max(nd - 1, 0)):
            d = ctx.draw(st.sampled_from(_divisors(rem)))
            dims.append(d)
            rem //= d
        if nd:
            dims.append(rem)
        if dims and ctx.draw(st.booleans()):
            dims[ctx.draw(st.integers(0, len(dims) - 1))] = -1
        shape = tuple(dims)
    if ctx.draw(st.booleans()):
        return [f"np.reshape({names[0]}, {shape!r})"]
    return [f"{names[0]}.reshape{shape!r}" if len(shape) > 1 else f"{names[0]}.reshape({shape!r})"]


def _transpose(ctx: Ctx, names, vals):
    nd = np.ndim(vals[0])
    form = ctx.draw(st.sampled_from(["T", "perm", "swap"]))
    if form == "T" or nd < 2:
        return [f"{names[0]}.T"]
    if form == "swap":
        i, j = ctx.draw(st.integers(-nd, nd - 1)), ctx.draw(st.integers(-nd, nd - 1))
        return [f"np.swapaxes({names[0]}, {i}, {j})"]
    perm = tuple(ctx.draw(st.permutations(range(nd))))
    return [f"np.transpose({names[0]}, {perm!r})"]


def _slice_text(ctx: Ctx, shape: tuple[int, ...]) -> str:
    parts = []
    k = ctx.draw(st.integers(1, max(len(shape), 1)))
    for i in range(min(k, len(shape))):
        n = shape[i]
        kind = ctx.draw(st.sampled_from(["slice", "int", "all", "none", "ellipsis"]))
        if kind == "int" and n > 0:
            parts.append(str(ctx.draw(st.integers(-n, n - 1))))
        elif kind == "none":
            parts.append("None")
        elif kind == "ellipsis" and "..." not in parts:
            parts.append("...")
            break
        elif kind == "slice":
            a = ctx.draw(st.sampled_from(["", "1", "-2", "2", "0"]))
            b = ctx.draw(st.sampled_from(["", "-1", "3", "5"]))
            c = ctx.draw(st.sampled_from(["", "2", "-1", "3", "-2"]))
            parts.append(f"{a}:{b}" + (f":{c}" if c else ""))
        else:
            parts.append(":")
    return ", ".join(parts) or "..."


def _slice(ctx: Ctx, names, vals):
    return [f"{names[0]}[{_slice_text(ctx, np.shape(vals[0]))}]"]


def _broadcast_to(ctx: Ctx, names, vals):
    shape = list(np.shape(vals[0]))
    shape = [ctx.draw(st.sampled_from([s, 3, 5])) if s == 1 else s for s in shape]
    if ctx.draw(st.booleans()):
        shape = [ctx.draw(st.sampled_from([2, 3]))] + shape
    return [f"np.broadcast_to({names[0]}, {tuple(shape)!r})"]


def _expand_squeeze(ctx: Ctx, names, vals):
    nd = np.ndim(vals[0])
    ones = [i for i, s in enumerate(np.shape(vals[0])) if s == 1]
    if ones and ctx.draw(st.booleans()):
        return [f"np.squeeze({names[0]}, {ctx.draw(st.sampled_from(ones))})" if ctx.draw(st.booleans())
                else f"{names[0]}.squeeze()"]
    return [f"np.expand_dims({names[0]}, {ctx.draw(st.integers(-nd - 1, nd))})"]


def _cumsum(ctx: Ctx, names, vals):
    ax = ctx.axis(np.ndim(vals[0]))
    if ctx.draw(st.booleans()):
        return [f"np.cumsum({names[0]}" + (f", axis={ax})" if ax is not None else ")")]
    return [f"{names[0]}.cumsum({'' if ax is None else ax})"]


_MATMUL_VIEWS = ("", "", "[::2]", "[1:]", "[..., 1:]", ".T", "[None]", "[-1:]", ".reshape(-1, {k})")


def _matmul(ctx: Ctx, names, vals):
    """x @ b, where x may be viewed first (slice, transpose, reshape: matmul prologues) and b is a fresh
    input, possibly read through a slice itself, or x's own transpose."""
    view = ctx.draw(st.sampled_from(_MATMUL_VIEWS))
    view = view.replace("{k}", str(np.shape(vals[0])[-1]))
    try:
        a = np.asarray(eval(f"v{view}", {"v": vals[0]}))
    except Exception:
        a, view = vals[0], ""
    if a.ndim < 2:
        a, view = vals[0], ""
    x = names[0] + view
    sh = a.shape
    k = sh[-1]
    n = ctx.draw(st.sampled_from(SIZES[:-1]))
    form = ctx.draw(st.sampled_from(["input", "self_t", "input_batched", "input_sliced"]))
    if form == "self_t":
        return [f"{x} @ np.swapaxes({x}, -1, -2)"]
    batch = sh[:-2] if form == "input_batched" else ()
    dt = ctx.draw(st.sampled_from([a.dtype.name, a.dtype.name, "float32"]))
    if form == "input_sliced":
        b = ctx.new_input((k, 2 * n + 1), dt) + f"[:, 1:{n + 1}]"
    else:
        b = ctx.new_input((*batch, k, n), dt)
    op = ctx.draw(st.sampled_from(["@", "matmul", "dot"]))
    if op == "dot" and len(sh) == 2 and not batch:
        return [f"np.dot({x}, {b})"]
    if op == "matmul":
        return [f"np.matmul({x}, {b})"]
    return [f"{x} @ {b}"]


def _softmax_like(ctx: Ctx, names, vals):
    ax = ctx.axis(np.ndim(vals[0]), allow_none=False)
    x = names[0]
    kind = ctx.draw(st.sampled_from(["softmax", "logsumexp", "layernorm", "l2norm"]))
    if kind == "softmax":
        return [f"{{out}}_e = np.exp({x} - {x}.max(axis={ax}, keepdims=True))",
                f"{{out}}_e / {{out}}_e.sum(axis={ax}, keepdims=True)"]
    if kind == "logsumexp":
        return [f"{{out}}_m = np.max({x}, axis={ax}, keepdims=True)",
                f"np.log(np.sum(np.exp({x} - {{out}}_m), axis={ax}, keepdims=True)) + {{out}}_m"]
    if kind == "layernorm":
        return [f"{{out}}_d = {x} - np.mean({x}, axis={ax}, keepdims=True)",
                f"{{out}}_d / np.sqrt(np.mean({{out}}_d * {{out}}_d, axis={ax}, keepdims=True) + 1e-5)"]
    return [f"{x} / np.sqrt(({x} * {x}).sum(axis={ax}, keepdims=True) + 1e-6)"]


def _nn(ctx: Ctx, names, vals):
    ax = ctx.axis(np.ndim(vals[0]), allow_none=False)
    kind = ctx.draw(st.sampled_from(["softmax", "log_softmax", "layernorm", "gelu", "gelu_erf", "relu"]))
    if kind == "gelu":
        return [f"nn.gelu({names[0]})"]
    if kind == "gelu_erf":
        return [f"nn.gelu({names[0]}, approximate=False)"]
    if kind == "relu":
        return [f"nn.relu({names[0]})"]
    return [f"nn.{kind}({names[0]}, axis={ax})"]


# -- issue 12's surface: rows with probes, alive once the explorer traces them ------------
def _concat(ctx: Ctx, names, vals):
    sh = np.shape(vals[0])
    fn = ctx.draw(st.sampled_from(["concatenate", "stack", "hstack", "vstack"]))
    ax = ctx.axis(len(sh) + (fn == "stack"), allow_none=False) if sh or fn == "stack" else 0
    shape2 = list(sh)
    if fn == "concatenate" and sh:
        shape2[ax] = ctx.draw(st.sampled_from(SIZES[:6]))
    other = ctx.new_input(tuple(shape2), vals[0].dtype.name)
    parts = f"[{names[0]}, {other}]" if ctx.draw(st.booleans()) else f"({other}, {names[0]})"
    if fn in ("hstack", "vstack"):
        return [f"np.{fn}({parts})"]
    return [f"np.{fn}({parts}, axis={ax})"]


def _split(ctx: Ctx, names, vals):
    sh = np.shape(vals[0])
    ax = ctx.axis(len(sh), allow_none=False)
    n = sh[ax]
    if ctx.draw(st.booleans()):
        k = ctx.draw(st.sampled_from(_divisors(n) if n else [1]))
        fn = "split"
    else:
        k, fn = ctx.draw(st.integers(1, 4)), "array_split"
    i = ctx.draw(st.integers(0, max(k - 1, 0)))
    return [f"np.{fn}({names[0]}, {k}, axis={ax})[{i}]"]


def _var_std(ctx: Ctx, names, vals):
    fn = ctx.draw(st.sampled_from(["var", "std"]))
    ax = ctx.axes(np.ndim(vals[0]))
    ddof = ctx.draw(st.sampled_from([0, 1]))
    keep = ctx.draw(st.booleans())
    kw = f"axis={ax!r}, ddof={ddof}" + (", keepdims=True" if keep else "")
    if ctx.draw(st.booleans()):
        return [f"{names[0]}.{fn}({kw})"]
    return [f"np.{fn}({names[0]}, {kw})"]


def _repeat_tile(ctx: Ctx, names, vals):
    nd = np.ndim(vals[0])
    if ctx.draw(st.booleans()):
        return [f"np.repeat({names[0]}, {ctx.draw(st.integers(1, 3))}, axis={ctx.axis(nd)})"]
    reps = tuple(ctx.draw(st.integers(1, 3)) for _ in range(ctx.draw(st.integers(1, max(nd, 1)))))
    return [f"np.tile({names[0]}, {reps!r})"]


def _pad(ctx: Ctx, names, vals):
    nd = np.ndim(vals[0])
    pads = tuple((ctx.draw(st.integers(0, 2)), ctx.draw(st.integers(0, 2))) for _ in range(nd))
    cv = ctx.draw(st.sampled_from(["", ", constant_values=1.5", ", constant_values=-1"]))
    return [f"np.pad({names[0]}, {pads!r}{cv})"]


def _einsum(ctx: Ctx, names, vals):
    sh = np.shape(vals[0])
    n = ctx.draw(st.sampled_from(SIZES[:6]))
    dt = vals[0].dtype.name
    if len(sh) == 2:
        kind = ctx.draw(st.sampled_from(["ij,jk->ik", "ij->ji", "ij->i", "ij,ij->ij"]))
        if kind == "ij,jk->ik":
            return [f"np.einsum('ij,jk->ik', {names[0]}, {ctx.new_input((sh[1], n), dt)})"]
        if kind == "ij,ij->ij":
            return [f"np.einsum('ij,ij->ij', {names[0]}, {ctx.new_input(sh, dt)})"]
        return [f"np.einsum('{kind}', {names[0]})"]
    kind = ctx.draw(st.sampled_from(["bij,bjk->bik", "bhd,bkd->bhk"]))
    if kind == "bij,bjk->bik":
        return [f"np.einsum('bij,bjk->bik', {names[0]}, {ctx.new_input((sh[0], sh[2], n), dt)})"]
    return [f"np.einsum('bhd,bkd->bhk', {names[0]}, {ctx.new_input((sh[0], n, sh[2]), dt)})"]


def _gather(ctx: Ctx, names, vals):
    sh = np.shape(vals[0])
    form = ctx.draw(st.sampled_from(["ids", "list", "col"]))
    if form == "col" and len(sh) >= 2:
        return [f"{names[0]}[:, [{ctx.draw(st.sampled_from(['-1', '0', '0, -1']))}]]"]
    if form == "list":
        return [f"{names[0]}[[{ctx.draw(st.sampled_from(['0', '-1', '0, 0', '1, 0, -1']))}]]"]
    ids = ctx.new_input(ctx.draw(st.sampled_from([(3,), (2, 2), (1,), (5,)])), "int64", f"index:{sh[0]}")
    return [f"{names[0]}[{ids}]"]


def _write(ctx: Ctx, names, vals):
    x = names[0]
    sh = np.shape(vals[0])
    kind = ctx.draw(st.sampled_from(["mask", "slice", "iadd", "mask_self"]))
    if kind == "mask":
        val = ctx.draw(st.sampled_from(SCALARS_BY_KIND[vals[0].dtype.kind][:3]))
        return [f"{{out}} = {x}.copy()", f"{{out}}[{x} > 0] = {val}", "{out}"]
    if kind == "mask_self":
        return [f"{{out}} = {x}.copy()", f"{{out}}[{x} < 0] = {{out}}[{x} < 0] * 0.5", "{out}"]
    if kind == "slice":
        sl = _slice_text(ctx, sh)
        other = ctx.draw(st.sampled_from(SCALARS_BY_KIND[vals[0].dtype.kind][:3]))
        return [f"{{out}} = {x}.copy()", f"{{out}}[{sl}] = {other}", "{out}"]
    other = ctx.bcast_partner(sh, vals[0].dtype.name)
    return [f"{{out}} = {x}.copy()", f"{{out}} += {other}", "{out}"]


_P = "def f(x):\n    return {}\n"   # probe template: x is f32[4, 6]

OPS: list[Op] = [
    # elementwise
    Op("add", 2, _binary("+", "add"), weight=4),
    Op("sub", 2, _binary("-", "subtract"), weight=3),
    Op("mul", 2, _binary("*", "multiply"), weight=4),
    Op("div", 2, _binary("/", "divide"), weight=2),
    Op("pow", 2, _binary("**", "power"), weight=1),
    Op("maximum", 2, lambda c, n, v: [f"np.maximum({n[0]}, {c.bcast_partner(np.shape(v[0]), v[0].dtype.name)})"]),
    Op("minimum", 2, lambda c, n, v: [f"np.minimum({n[0]}, {c.bcast_partner(np.shape(v[0]), v[0].dtype.name)})"]),
    Op("compare", 2, lambda c, n, v: [f"{n[0]} {c.draw(st.sampled_from(['<', '<=', '>', '>=', '==', '!=']))} "
                                      f"{c.bcast_partner(np.shape(v[0]), v[0].dtype.name)}"], weight=2),
    Op("logical", 2, lambda c, n, v: [f"{n[0]} {c.draw(st.sampled_from(['&', '|']))} "
                                      f"{c.bcast_partner(np.shape(v[0]), 'bool')}"], accepts=_is_bool),
    Op("logical_np", 2, lambda c, n, v: [f"np.{c.draw(st.sampled_from(['logical_and', 'logical_or']))}"
                                         f"({n[0]}, {c.bcast_partner(np.shape(v[0]), v[0].dtype.name)})"]),
    Op("not", 1, lambda c, n, v: [f"~{n[0]}" if _is_bool(v[0]) else f"np.logical_not({n[0]})"]),
    Op("neg", 1, _r("-{0}")),
    Op("abs", 1, lambda c, n, v: [c.draw(st.sampled_from([f"np.abs({n[0]})", f"abs({n[0]})",
                                                          f"np.absolute({n[0]})"]))]),
    Op("square", 1, _unary_np("square"), weight=1),
    Op("exp", 1, _unary_np("exp")),
    Op("log", 1, _unary_np("log")),
    Op("tanh", 1, _unary_np("tanh")),
    Op("sqrt", 1, _unary_np("sqrt")),
    Op("sin", 1, _unary_np("sin"), weight=1),
    Op("cos", 1, _unary_np("cos"), weight=1),
    Op("where", 1, _where, weight=2),
    Op("cast", 1, _cast, weight=3),
    Op("clip_np", 1, lambda c, n, v: [f"np.clip({n[0]}, {c.draw(st.sampled_from(['-1', '0', 'None']))}, "
                                      f"{c.draw(st.sampled_from(['1', '2.5']))})"], weight=1),
    # reductions
    Op("sum", 1, _reduce("sum"), weight=3),
    Op("max", 1, _reduce("max"), weight=2),
    Op("min", 1, _reduce("min"), weight=1),
    Op("mean", 1, _reduce("mean"), weight=2),
    # layout
    Op("reshape", 1, _reshape, weight=2),
    Op("transpose", 1, _transpose, weight=2),
    Op("slice", 1, _slice, weight=3),
    Op("broadcast_to", 1, _broadcast_to, weight=1),
    Op("expand_squeeze", 1, _expand_squeeze, weight=1),
    Op("ravel", 1, lambda c, n, v: [c.draw(st.sampled_from([f"{n[0]}.ravel()", f"np.ravel({n[0]})"]))], weight=1),
    Op("copy", 1, _r("{0}.copy()"), weight=1),
    # contraction, scan, compositions
    Op("matmul", 1, _matmul, accepts=_nd(2), weight=6),
    Op("cumsum", 1, _cumsum, weight=1),
    Op("softmax_like", 1, _softmax_like, accepts=lambda v: _is_float(v) and np.ndim(v) >= 1, weight=2),
    Op("nn", 1, _nn, accepts=lambda v: _is_float(v) and np.ndim(v) >= 1, weight=1),
    # issue 12 (probed)
    Op("clip_method", 1, lambda c, n, v: [f"{n[0]}.clip({c.draw(st.sampled_from(['-1', '0']))}, 1)"],
       weight=1, probe=_P.format("x.clip(0, 1)")),
    Op("concat", 1, _concat, weight=2, probe=_P.format("np.concatenate([x, x], axis=0)")),
    Op("split", 1, _split, accepts=_nd(1), weight=2, probe=_P.format("np.split(x, 2, axis=1)[0]")),
    Op("var_std", 1, _var_std, weight=2, probe=_P.format("np.var(x, axis=0)")),
    Op("repeat_tile", 1, _repeat_tile, weight=1, probe=_P.format("np.repeat(x, 2, axis=0)")),
    Op("pad", 1, _pad, weight=1, probe=_P.format("np.pad(x, ((1, 0), (0, 2)))")),
    Op("einsum", 1, _einsum, accepts=lambda v: np.ndim(v) in (2, 3), weight=1,
       probe=_P.format("np.einsum('ij,kj->ik', x, x)")),
    Op("gather", 1, _gather, accepts=lambda v: np.ndim(v) >= 1 and np.shape(v)[0] > 0, weight=1,
       probe=_P.format("x[np.array([0, 2])]")),
    Op("write", 1, _write, weight=1, probe="def f(x):\n    y = x.copy()\n    y[x > 0] = 0.5\n    return y\n"),
]


def probe_ok(op: Op) -> bool:
    """True when the explorer traces the row's probe (always for rows without one); cached."""
    if op.probe is None:
        return True
    hit = _PROBES.get(op.name)
    if hit is None:
        try:
            explorer.trace(compile_function(op.probe), np.ones((4, 6), np.float32))
            hit = True
        except ExplorerError:
            hit = False
        _PROBES[op.name] = hit
    return hit


_PROBES: dict[str, bool] = {}


def live_ops() -> list[Op]:
    return [op for op in OPS if probe_ok(op)]


# ----------------------------------------------------------------------------- the generator
class Gen:
    """State while one program is drawn: inputs, values of every name, statements."""

    def __init__(self, main_dtype: str, allow_specials: bool):
        self.inputs: list[InputSpec] = []
        self.values: dict[str, Any] = {}
        self.stmts: list[Stmt] = []
        self.main_dtype = main_dtype
        self.allow_specials = allow_specials

    def new_input(self, draw, shape: tuple[int, ...], dtype: str, fill: str | None = None) -> str:
        name = f"a{len(self.inputs)}"
        if fill is None:
            fills = ["normal", "positive", "ints"] + (["special"] if self.allow_specials else [])
            fill = draw(st.sampled_from(fills)) if np.dtype(dtype).kind == "f" else "normal"
        spec = InputSpec(name, shape, dtype, fill, draw(st.integers(0, 2**16)))
        self.inputs.append(spec)
        self.values[name] = spec.make()
        return name


@st.composite
def shapes(draw, max_ndim: int = 4) -> tuple[int, ...]:
    nd = draw(st.sampled_from([2, 1, 3, 0, 4][: max_ndim + 1]))
    out = tuple(draw(st.sampled_from(SIZES)) for _ in range(nd))
    while int(np.prod(out, dtype=np.int64)) > MAX_ELEMENTS:
        out = out[1:]
    return out


KNOB_CHOICES: dict[str, list[Any]] = {
    "fuse": [True, False, {"epilogue": False}, {"elementwise": False}, {"reduce_producer": False},
             {"reduce_consumer": False}, {"multi_reduce": False}, {"prologue": False}],
    "schedule": [None, {"tile": (16, 16, 8)}, {"tile": (64, 64, 16)}, {"tile": (128, 128, 32)},
                 {"thread_tile": (2, 2)}, {"threads": 32}, {"threads": 96}, {"vector": 1}, {"vector": 4},
                 {"unroll": True}, {"shared": False}, {"double_buffer": False}, {"chunk": 7},
                 {"tensor_core": False}],
    "fast_math": [False, True],
    "dtype": [None, "float16", "float64", "float32"],
    "decompose": [True, False],
}


@st.composite
def knobs(draw) -> dict[str, Any]:
    """A compile-option variant; every knob shrinks toward its default (first choice)."""
    out = {}
    for k, choices in KNOB_CHOICES.items():
        v = draw(st.sampled_from(choices))
        if v != choices[0]:
            out[k] = v
    return out


@st.composite
def programs(draw, max_stmts: int = 8, targets: Sequence[str] = ("sim", "cpu")) -> Program:
    """A random straight-line NumPy program (see the module docstring)."""
    main = draw(st.sampled_from(["float32", "float32", "float32", "float64", "float16", "int32", "bool",
                                 "int64"]))
    kn = draw(knobs())
    gen = Gen(main, allow_specials=not kn.get("fast_math", False))
    gen.new_input(draw, draw(shapes()), main)
    ops = live_ops()
    weights = [op.weight for op in ops]
    pool = [op for op, w in zip(ops, weights) for _ in range(w)]
    n = draw(st.integers(1, max_stmts))
    ctx = Ctx(draw, gen)
    for i in range(n):
        op = draw(st.sampled_from(pool))
        names = list(gen.values)
        cands = [nm for nm in names if op.accepts(np.asarray(gen.values[nm]))]
        if not cands:
            continue
        # mostly the newest value, so statements chain (shrinks toward it)
        first = cands[-1] if draw(st.integers(0, 9)) < 7 else draw(st.sampled_from(cands[::-1]))
        out = f"v{i}"
        try:
            lines = op.render(ctx, [first], [np.asarray(gen.values[first])])
        except (ValueError, IndexError, ZeroDivisionError):
            continue
        lines = [ln.replace("{out}", out) for ln in lines]
        body = lines[:-1] + [f"{out} = {lines[-1]}"] if lines[-1] != out else lines[:-1]
        src = ("def g(" + ", ".join(gen.values) + "):\n" + "".join(f"    {ln}\n" for ln in body)
               + f"    return {out}\n")
        try:
            val = numpy_eval(compile_function(src, "g"), list(gen.values.values()))
        except Exception:
            continue                                      # NumPy rejects it: not a valid program
        if not acceptable_value(val):
            continue
        used = [nm for nm in gen.values if _mentions(body, nm)]
        dts = [np.asarray(gen.values[u]).dtype.name for u in used]
        tags = (f"{op.name}:" + ",".join(dts), *(f"dtype:{d}" for d in dts), f"dtype:{np.asarray(val).dtype.name}")
        tags += tuple(_line_tags(body, gen))
        gen.stmts.append(Stmt(out, tuple(body), op.name, tags))
        gen.values[out] = val
    if not gen.stmts:
        gen.stmts.append(Stmt("v0", ("v0 = a0 * 2",), "mul", (f"mul:{main}",)))
        gen.values["v0"] = numpy_eval(compile_function("def g(a0):\n    return a0 * 2\n", "g"), [gen.values["a0"]])
    outs = [gen.stmts[-1].out]
    if len(gen.stmts) > 1 and draw(st.integers(0, 4)) == 0:
        outs.append(draw(st.sampled_from([s.out for s in gen.stmts[:-1]])))
    prog = Program(gen.inputs, gen.stmts, outs, kn, draw(st.sampled_from(list(targets))))
    return prune(prog)


def _mentions(lines: Sequence[str], name: str) -> bool:
    import re
    return any(re.search(rf"\b{name}\b", ln) for ln in lines)


def _line_tags(body: Sequence[str], gen: Gen) -> list[str]:
    """Operator-level tags known-bug rules match on: 'add:bool,bool' for `b + c` with two bool operands."""
    import re
    out = []
    for ln in body:
        for m in re.finditer(r"\b(\w+) ([-+*/]|\*\*) (\w+)\b", ln):
            a, sym, b = m.groups()
            da = np.asarray(gen.values[a]).dtype.name if a in gen.values else "scalar"
            db = np.asarray(gen.values[b]).dtype.name if b in gen.values else "scalar"
            opn = {"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow"}[sym]
            out.append(f"{opn}:{da},{db}")
        if "cumsum" in ln:
            for nm, v in gen.values.items():
                if _mentions([ln], nm):
                    out.append(f"cumsum:{np.asarray(v).dtype.name}")
    return out


def prune(prog: Program) -> Program:
    """Drop statements and inputs the outputs do not depend on."""
    need = set(prog.outputs)
    keep: list[Stmt] = []
    for s in reversed(prog.stmts):
        if s.out in need:
            keep.append(s)
            need |= {nm for nm in [*(i.name for i in prog.inputs), *(t.out for t in prog.stmts)]
                     if nm != s.out and _mentions(s.lines, nm)}
    keep.reverse()
    inputs = [i for i in prog.inputs if i.name in need]
    return Program(inputs, keep, prog.outputs, prog.knobs, prog.variant_target)


__all__ = ["InputSpec", "Stmt", "Program", "Op", "OPS", "programs", "knobs", "shapes", "live_ops", "probe_ok",
           "numpy_eval", "compile_function", "from_source", "KNOB_CHOICES"]
