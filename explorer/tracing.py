"""Tracing: run a plain NumPy function on proxy `Tensor`s and record every op into a Graph.

Like JAX tracers or torch.fx proxies, a `Tensor` holds a graph node instead of data.
Python operators, NumPy ufuncs (`__array_ufunc__`) and NumPy functions
(`__array_function__`) on it append typed nodes; dtype promotion follows NumPy 2
exactly (Python scalars are "weak": `x_f32 * 2.0` stays float32).

>>> import numpy as np
>>> g = trace(lambda x, w, b: np.maximum(x @ w + b, 0),
...           np.ones((4, 8), np.float32), np.ones((8, 3), np.float32), np.zeros(3, np.float32))
>>> print(g.text())
graph lambda(x: f32[4,8], w: f32[8,3], b: f32[3]):
  %3: f32[4,3] = matmul(x, w)
  %4: f32[4,3] = add(%3, b)
  %5: f32[] = const 0.0
  %6: f32[4,3] = maximum(%4, %5)
  return %6

Values the tracer cannot know (Python `if` on a traced value, `float(x)`, in-place
writes) raise TraceError with the fix, instead of silently baking in one path.
"""
from __future__ import annotations

import inspect
import linecache
import sys
from typing import Any, Callable, Sequence

import numpy as np

from . import dtypes
from . import ops as _ops
from .errors import DTypeError, ExplorerError, ShapeError, TraceError, UnsupportedOpError
from .graph import Graph, Node, Provenance
from .naming import c_identifier, unique

# Frames of these modules are the tracer's own machinery, not the user's code, so
# provenance skips them (numpy too: np.mean's Python wrapper calls back into us).
INTERNAL_MODULES = {"explorer.tracing", "explorer.numpy_api", "explorer.nn", "explorer.conv", "explorer.ops", "explorer.passes.simplify",
                    "explorer.dtypes", "explorer.graph", "explorer.errors", "explorer.pipeline", "explorer.compiled",
                    "explorer.backends.reference", "explorer.custom"}

_PROV_CACHE: dict[tuple[Any, int], Provenance] = {}


def is_internal_module(modname: str) -> bool:
    """Whether frames of module `modname` are the tracer's own (or NumPy's): provenance skips them."""
    return modname in INTERNAL_MODULES or modname == "numpy" or modname.startswith("numpy.")


_STMT_CACHE: dict[str, tuple[list[str], dict[int, tuple[int, int]]]] = {}


def statement_span(file: str, line: int) -> tuple[int, int]:
    """(first, last) line of the smallest statement of `file` containing `line` (only the header of a
    compound statement such as `for ... in (...):`); (line, line) when the source cannot be parsed."""
    lines = linecache.getlines(file)
    if not lines:
        return line, line
    cached = _STMT_CACHE.get(file)
    if cached is None or cached[0] is not lines:      # linecache hands out a new list when the file changed
        if len(_STMT_CACHE) > 256:
            _STMT_CACHE.clear()
        _STMT_CACHE[file] = cached = (lines, _statement_spans("".join(lines)))
    return cached[1].get(line, (line, line))


_MAX_STATEMENT_LINES = 12


def _statement_spans(source: str) -> dict[int, tuple[int, int]]:
    """line → span of the smallest statement containing it, for every line inside a multi-line statement."""
    import ast
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return {}
    spans: dict[int, tuple[int, int]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt):
            continue
        a, b = node.lineno, getattr(node, "end_lineno", None) or node.lineno
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
            b = max(a, body[0].lineno - 1)     # a compound statement: its header only
        if b == a or b - a >= _MAX_STATEMENT_LINES:
            continue   # longer ones (a table of lambdas, a long literal) would bury the line that ran
        for k in range(a, b + 1):
            old = spans.get(k)
            if old is None or b - a < old[1] - old[0]:
                spans[k] = (a, b)
    return spans


def statement_at(file: str, line: int) -> str:
    """The statement containing `line` of `file`, joined onto one line (`X = np.pad(\n x, ...)` whole)."""
    a, b = statement_span(file, line)
    parts = [linecache.getline(file, k).strip() for k in range(a, b + 1)]
    text = " ".join(p for p in parts if p)
    for x, y in (("( ", "("), ("[ ", "["), (" )", ")"), (" ]", "]"), (",)", ",)")):
        text = text.replace(x, y)
    return text


def _provenance_at(code, line: int) -> Provenance:
    a, b = statement_span(code.co_filename, line)
    text = statement_at(code.co_filename, line) if b > a else linecache.getline(code.co_filename, line).strip()
    return Provenance(code.co_filename, a if b > a else line, code.co_name, text, b if b > a else 0)


def _provenance_from_frame(f) -> Provenance:
    code = f.f_code
    line = f.f_lineno
    key = (code, line)
    p = _PROV_CACHE.get(key)
    if p is None:
        p = _provenance_at(code, line)
        if len(_PROV_CACHE) > 20000:  # bound memory in long notebook sessions
            _PROV_CACHE.clear()
        _PROV_CACHE[key] = p
    return p


def user_provenance() -> Provenance | None:
    """Provenance of the innermost stack frame outside the tracer's own modules and NumPy."""
    f = sys._getframe(1)
    while f is not None:
        if not is_internal_module(f.f_globals.get("__name__", "")):
            return _provenance_from_frame(f)
        f = f.f_back
    return None


def _user_location(tb) -> Provenance | None:
    """The innermost user frame of a traceback (where the user's code raised)."""
    found = None
    while tb is not None:
        if not is_internal_module(tb.tb_frame.f_globals.get("__name__", "")):
            found = _provenance_at(tb.tb_frame.f_code, tb.tb_lineno)
        tb = tb.tb_next
    return found


# ----------------------------------------------------------------------------- the tracer
class Tracer:
    """Records nodes. `id_source` and `provenance` let simplify re-trace a composite's
    decomposition inside an existing graph (fresh ids from that graph, the composite's provenance)."""

    def __init__(self, id_source: Callable[[], int] | None = None, provenance: Provenance | None = None):
        self.nodes: list[Node] = []
        self.inputs: list[Node] = []
        self._next = 0
        self._id_source = id_source
        self._fixed_provenance = provenance
        self.closed = False

    def new_id(self) -> int:
        if self._id_source is not None:
            return self._id_source()
        i = self._next
        self._next += 1
        return i

    def input(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> "Tensor":
        n = Node(self.new_id(), "input", (), tuple(int(s) for s in shape), np.dtype(dtype), name=name)
        self.inputs.append(n)
        self.nodes.append(n)
        return Tensor(n, self)

    def wrap(self, node: Node) -> "Tensor":
        """A Tensor for an already-existing node (not recorded again)."""
        return Tensor(node, self)

    def _provenance(self) -> Provenance | None:
        if self._fixed_provenance is not None:
            return self._fixed_provenance
        return user_provenance()

    def const(self, value: np.ndarray) -> Node:
        value = np.array(value, copy=True)
        dtypes.check(value.dtype, "constant")
        n = Node(self.new_id(), "const", (), tuple(value.shape), value.dtype, value=value,
                 provenance=self._provenance())
        self.nodes.append(n)
        return n

    def emit(self, op: str, inputs: Sequence[Node], attrs: dict | None = None) -> "Tensor":
        if self.closed:
            raise TraceError("a traced value was used after its trace finished (was it stored in a global or "
                             "returned through a closure?); compute everything inside the traced function")
        attrs = dict(attrs or {})
        shape, dt = _ops.infer_type(op, [(i.shape, i.dtype) for i in inputs], attrs)
        n = Node(self.new_id(), op, tuple(inputs), shape, dt, attrs, provenance=self._provenance())
        self.nodes.append(n)
        return Tensor(n, self)


# ----------------------------------------------------------------------------- operand handling
_PY_SCALARS = (bool, int, float)


def tracer_of(args: Sequence[Any]) -> Tracer:
    """The one live Tracer of the Tensors among `args` (TraceError when they mix traces or outlived theirs)."""
    tr = None
    for a in args:
        if isinstance(a, Tensor):
            if a.tracer.closed:
                raise TraceError("a traced value was used after its trace finished (was it stored in a global or "
                                 "a closure?); compute everything inside the traced function")
            if tr is None:
                tr = a.tracer
            elif a.tracer is not tr:
                raise TraceError("an op mixes values from two different traces; keep each traced value inside "
                                 "the function call that created it")
    if tr is None:  # pragma: no cover - callers only dispatch here with a Tensor present
        raise TraceError("internal: no traced value among the operands")
    return tr


def _strong_dtype(a: Any) -> np.dtype | None:
    if isinstance(a, Tensor):
        return a.dtype
    if isinstance(a, (np.ndarray, np.generic)):
        return a.dtype
    return None


def to_nodes(op: str, args: Sequence[Any], tracer: Tracer, value_slice: slice = slice(None)) -> list[Node]:
    """Turn operands into nodes: Tensors as-is, arrays/numpy scalars as constants of their own
    dtype, Python scalars as constants of the dtype NumPy 2 would cast them to (weak scalars)."""
    vals = list(args)[value_slice]
    weak_dt = None
    if any(isinstance(a, _PY_SCALARS) and not isinstance(a, np.generic) for a in vals):
        strong = [d for d in (_strong_dtype(a) for a in vals) if d is not None]
        weak = [a for a in vals if isinstance(a, _PY_SCALARS) and not isinstance(a, np.generic)]
        try:
            weak_dt = np.result_type(*strong, *weak)
        except (TypeError, OverflowError) as e:
            raise DTypeError(f"{op}: cannot combine Python scalar(s) {weak} with dtypes "
                             f"{[str(d) for d in strong]}: {e}") from None
    out = []
    for a in args:
        if isinstance(a, Tensor):
            out.append(a.node)
        elif isinstance(a, (np.ndarray, np.generic)):
            check_const_dtype(op, a.dtype)
            out.append(tracer.const(np.asarray(a)))
        elif isinstance(a, _PY_SCALARS):
            dt = weak_dt if weak_dt is not None else np.result_type(a)
            try:
                with np.errstate(all="ignore"):
                    v = np.asarray(a, dtype=dt)
            except OverflowError:
                raise DTypeError(f"{op}: the Python integer {a} does not fit in {dt}; use a smaller value or "
                                 f"cast the array first (x.astype(np.int64))") from None
            out.append(tracer.const(v))
        elif isinstance(a, complex):
            raise DTypeError(f"{op}: complex numbers are not supported; supported dtypes are {dtypes.SUPPORTED_NAMES}")
        elif isinstance(a, (list, tuple)) and _is_numeric_nest(a):
            arr = np.asarray(a)
            check_const_dtype(op, arr.dtype)
            out.append(tracer.const(arr))
        elif hasattr(a, "_masked_selection_error"):
            raise a._masked_selection_error(op)
        else:
            raise TraceError(f"{op}: cannot use a {type(a).__name__} as an operand of a traced op; operands must be "
                             f"traced arrays, np.ndarray constants or Python numbers (np.asarray(...) converts lists)")
    return out


def _is_numeric_nest(a: Any) -> bool:
    try:
        return np.asarray(a).dtype.kind in "biuf"
    except Exception:
        return False


def check_const_dtype(op: str, dt: np.dtype) -> None:
    """DTypeError naming `op` when a constant operand's dtype is not one the explorer supports."""
    if not dtypes.is_supported(dt):
        raise DTypeError(f"{op}: a constant has dtype {dt}, which is not supported; use one of "
                         f"{dtypes.SUPPORTED_NAMES} (e.g. c.astype(np.float32))")


def apply_op(op: str, *args: Any, **attrs: Any):
    """Apply registry op `op`: record it when any argument is a Tensor, else run the NumPy reference.

    >>> apply_op("erf", np.zeros(2, np.float32))
    array([0., 0.], dtype=float32)
    """
    if any(isinstance(a, Tensor) for a in args):
        tr = tracer_of(args)
        sl = slice(1, None) if op == "where" else slice(None)
        return tr.emit(op, to_nodes(op, args, tr, sl), attrs)
    arrs = [np.asarray(a) for a in args]
    return _ops.evaluate(op, arrs, attrs)


def _binary(op: str, a: Any, b: Any) -> "Tensor":
    tr = tracer_of((a, b))
    return tr.emit(op, to_nodes(op, (a, b), tr), {})


def _unary(op: str, a: "Tensor") -> "Tensor":
    return a.tracer.emit(op, [a.node], {})


# ----------------------------------------------------------------------------- shape helpers
def _norm_shape(op: str, shape: Any, size: int | None = None) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    ints = int_tuple(shape)
    if ints is None:
        raise ShapeError(f"{op}: shape must be a tuple of ints, got {shape!r}")
    shape = ints
    if size is not None and -1 in shape:
        if shape.count(-1) > 1:
            raise ShapeError(f"{op}: can only specify one unknown dimension (-1), got {shape}")
        rest = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
        if rest == 0 or size % rest:
            raise ShapeError(f"{op}: cannot reshape {size} elements into {shape}")
        shape = tuple(size // rest if s == -1 else s for s in shape)
    if any(s < 0 for s in shape):
        raise ShapeError(f"{op}: negative dimension in shape {shape}")
    return shape


def int_tuple(v: Any) -> tuple[int, ...] | None:
    """v as a tuple of Python ints, or None when it is not a sequence of (non-bool) integers."""
    if isinstance(v, (str, bytes)):
        return None
    try:
        items = tuple(v)
    except TypeError:
        return None
    if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in items):
        return None
    return tuple(int(x) for x in items)


def reshape_tensor(x: "Tensor", shape: Any) -> "Tensor":
    """x.reshape(shape) traced (-1 allowed), as a view of x."""
    shape = _norm_shape("reshape", shape, x.size)
    return as_view(x, x.tracer.emit("reshape", [x.node], {"shape": shape}))


def transpose_tensor(x: "Tensor", axes: Any = None) -> "Tensor":
    """x.transpose(axes) traced (None reverses the axes), as a view of x."""
    if axes is None:
        axes = tuple(reversed(range(x.ndim)))
    else:
        if isinstance(axes, (int, np.integer)):
            axes = (axes,)
        ints = int_tuple(axes)
        if ints is None:
            raise ShapeError(f"transpose: axes must be a tuple of ints, got {axes!r}")
        axes = ints
        if any(not -x.ndim <= a < x.ndim for a in axes):
            raise ShapeError(f"transpose: axes {axes} out of range for an array of shape {x.shape}")
        axes = tuple(a % x.ndim for a in axes) if x.ndim else axes
    return as_view(x, x.tracer.emit("transpose", [x.node], {"axes": axes}))


def reduce_tensor(op: str, x: Any, axis: Any = None, keepdims: bool = False) -> "Tensor":
    """The reduction `op` ('sum' | 'max' | 'min' | ...) of x over `axis` traced, as np.sum(x, axis, keepdims=)."""
    x = _as_tensor_like(op, x)
    axes = _ops.normalize_axes(op, axis, x.ndim, x.shape)
    return x.tracer.emit(op, [x.node], {"axes": axes, "keepdims": bool(keepdims)})


def mean_tensor(x: Any, axis: Any = None, keepdims: bool = False) -> "Tensor":
    """np.mean traced into primitives, as NumPy computes it: sum, then divide by the count.

    Integers/bool accumulate in float64, float16 in float32 and the result is cast back,
    matching numpy's `mean_tensor` (bfloat16 and fp8 the same way: f32 accumulation); tracing into
    `sum` keeps the reduce visible to fusion.
    """
    x = _as_tensor_like("mean", x)
    axes = _ops.normalize_axes("mean", axis, x.ndim, x.shape)
    count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    dt = x.dtype
    xs = x
    narrow = dtypes.compute_dtype(dt) != dt   # f16, bf16, fp8: sum and divide in f32, round once
    if dt.kind in "biu":
        xs = x.astype(np.float64)
    elif narrow:
        xs = x.astype(np.float32)
    s = reduce_tensor("sum", xs, axes, keepdims)
    r = s / count
    if narrow:
        r = r.astype(dt)
    return r


def _as_tensor_like(op: str, x: Any) -> "Tensor":
    if not isinstance(x, Tensor):  # pragma: no cover - dispatch guarantees a Tensor here
        raise TraceError(f"{op}: expected a traced array")
    return x


def getitem_tensor(x: "Tensor", idx: Any) -> "Tensor":
    """x[idx]: basic indexing (ints, slices, None, ...) is a slice + reshape; integer arrays, lists and
    boolean masks (advanced indexing) are handled by explorer.indexing (gather, masked selections)."""
    from . import indexing
    if indexing.is_advanced(idx):
        return indexing.getitem(x, idx)
    return basic_getitem(x, idx)


def basic_getitem(x: "Tensor", idx: Any) -> "Tensor":
    """x[idx] for a basic index (ints, slices, None, ...): a slice, then a reshape when dims drop or appear."""
    starts, stops, steps, final = basic_index_plan(x.shape, idx)
    out = x
    full = all(a == 0 and b == s and c == 1 for a, b, c, s in zip(starts, stops, steps, x.shape))
    if not full:
        out = x.tracer.emit("slice", [x.node], {"starts": tuple(starts), "stops": tuple(stops), "steps": tuple(steps)})
    if tuple(final) != out.shape:
        out = out.tracer.emit("reshape", [out.node], {"shape": tuple(final)})
    out = as_view(x, out)
    if out is not x and x._base is None:
        out._view_key = (x.node, idx if isinstance(idx, tuple) else (idx,))
    return out


def basic_index_plan(shape: tuple[int, ...], idx: Any) -> tuple[list[int], list[int], list[int], list[int]]:
    """(starts, stops, steps, result shape) of basic index `idx` (ints, slices, None, ...) on `shape`.

    >>> basic_index_plan((4, 6), (1, slice(None, None, 2)))
    ([1, 0], [2, 6], [1, 2], [3])
    """
    if not isinstance(idx, tuple):
        idx = (idx,)
    for e in idx:
        if isinstance(e, (bool, np.bool_)):
            raise UnsupportedOpError("indexing with a Python bool (x[True]) is not supported in traced code; "
                                     "use x[None] to add an axis or np.where for masking")
        if not (e is None or e is Ellipsis or isinstance(e, (slice, int, np.integer))):
            raise TraceError(f"cannot index a traced array with {type(e).__name__}; use ints, slices, None, ..., "
                             f"or integer/boolean arrays")
    n_ell = sum(1 for e in idx if e is Ellipsis)
    if n_ell > 1:
        raise ShapeError("an index can only have a single ellipsis ('...')")
    n_real = sum(1 for e in idx if e is not None and e is not Ellipsis)
    if n_real > len(shape):
        raise ShapeError(f"too many indices for an array of shape {shape}: {n_real} were indexed")
    if n_ell:
        k = idx.index(Ellipsis)
        idx = idx[:k] + (slice(None),) * (len(shape) - n_real) + idx[k + 1:]
    else:
        idx = idx + (slice(None),) * (len(shape) - n_real)
    starts, stops, steps, final = [], [], [], []
    dim = 0
    for e in idx:
        if e is None:
            final.append(1)
            continue
        size = shape[dim]
        if isinstance(e, slice):
            if e.step == 0:
                raise ShapeError("slice step cannot be zero")
            for v in (e.start, e.stop, e.step):
                if isinstance(v, Tensor):
                    raise TraceError("a traced value cannot be a slice bound: its value is unknown at trace time; "
                                     "use ints (x.shape[...] for sizes), or np.where for masking")
                if v is not None and not isinstance(v, (int, np.integer)):
                    raise TraceError(f"slice bounds must be ints or None, got {type(v).__name__} {v!r} in {e}")
            a, b, c = e.indices(size)
            starts.append(a), stops.append(b), steps.append(c)
            final.append(len(range(a, b, c)))
        else:
            i = int(e)
            if not -size <= i < size:
                raise ShapeError(f"index {i} is out of bounds for axis {dim} with size {size} (shape {shape})")
            i %= size
            starts.append(i), stops.append(i + 1), steps.append(1)
        dim += 1
    return starts, stops, steps, final


def as_view(base: "Tensor", out: "Tensor") -> "Tensor":
    """Mark `out` as sharing memory with `base` as NumPy's views do (basic indexing, reshape, transpose),
    so a later write through one of them makes the others unusable (see explorer.indexing)."""
    if out is base:
        return out
    root = base._base if base._base is not None else base
    out._base = root
    root._views.append(out)
    return out


# ----------------------------------------------------------------------------- the proxy
class UnsupportedAttributeError(UnsupportedOpError, AttributeError):
    """An ndarray attribute or method the traced Tensor does not have (hasattr() still works)."""


def _no_control_flow(what: str) -> TraceError:
    return TraceError(
        f"{what} on a traced value: data-dependent Python control flow cannot be traced, because the tracer "
        f"only knows shapes and dtypes, not values; use np.where(cond, a, b) to choose values elementwise "
        f"(or np.maximum/np.minimum), so both branches become part of the graph")


class Tensor:
    """A traced array: holds a graph Node and the Tracer recording it.

    Supports Python operators, NumPy ufuncs/functions and the common ndarray methods.

    >>> g = trace(lambda x: (x * 2).sum(axis=0), np.ones((3, 4), np.float32))
    >>> g.outputs[0].shape
    (4,)
    """

    # _base: the Tensor whose memory this one views (NumPy's basic indexing/reshape/transpose), or None;
    # _views: the views taken of this one; _stale: why this Tensor may no longer be read (a write to
    # the memory it shares happened after it was taken); _view_key: (base node, basic index) of a view
    # taken by basic indexing, so a write to it writes through to the base; see explorer.indexing
    __slots__ = ("node", "tracer", "_base", "_views", "_stale", "_view_key")
    __array_priority__ = 1000.0  # numpy defers binary operators to us

    def __init__(self, node: Node, tracer: Tracer):
        self.node = node
        self.tracer = tracer
        self._base: "Tensor | None" = None
        self._views: list["Tensor"] = []
        self._stale: str | None = None
        self._view_key: tuple | None = None

    # -- properties ----------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.node.shape

    @property
    def dtype(self) -> np.dtype:
        return self.node.dtype

    @property
    def ndim(self) -> int:
        return len(self.node.shape)

    @property
    def size(self) -> int:
        return self.node.size

    @property
    def T(self) -> "Tensor":
        return self if self.ndim < 2 else transpose_tensor(self)

    def __repr__(self) -> str:
        return f"Tensor({self.node.name}: {self.node.type_str})"

    __hash__ = object.__hash__

    # -- arithmetic --------------------------------------------------------------
    def __add__(self, o): return _binary("add", self, o)
    def __radd__(self, o): return _binary("add", o, self)
    def __sub__(self, o): return _binary("sub", self, o)
    def __rsub__(self, o): return _binary("sub", o, self)
    def __mul__(self, o): return _binary("mul", self, o)
    def __rmul__(self, o): return _binary("mul", o, self)
    def __truediv__(self, o): return _binary("div", self, o)
    def __rtruediv__(self, o): return _binary("div", o, self)
    def __pow__(self, o, mod=None):
        if mod is not None:
            self._unsupported("pow(x, y, mod)")
        return _binary("pow", self, o)
    def __rpow__(self, o): return _binary("pow", o, self)
    def __matmul__(self, o): return _binary("matmul", self, o)
    def __rmatmul__(self, o): return _binary("matmul", o, self)
    def __neg__(self): return _unary("neg", self)
    def __pos__(self): return _positive(self)
    def __abs__(self): return _unary("abs", self)
    def __lt__(self, o): return _binary("lt", self, o)
    def __le__(self, o): return _binary("le", self, o)
    def __gt__(self, o): return _binary("gt", self, o)
    def __ge__(self, o): return _binary("ge", self, o)
    def __eq__(self, o): return _binary("eq", self, o)  # type: ignore[override]
    def __ne__(self, o): return _binary("ne", self, o)  # type: ignore[override]

    def _logical(self, op: str, o: Any, rev: bool = False) -> "Tensor":
        return _bool_logic(op, o, self) if rev else _bool_logic(op, self, o)

    def __and__(self, o): return self._logical("logical_and", o)
    def __rand__(self, o): return self._logical("logical_and", o, True)
    def __or__(self, o): return self._logical("logical_or", o)
    def __ror__(self, o): return self._logical("logical_or", o, True)

    def __invert__(self):
        if self.dtype != np.bool_:
            raise UnsupportedOpError(f"~ (invert) is only supported on bool arrays, got {self.dtype}")
        return _unary("logical_not", self)

    def _unsupported(self, what: str, *_a):
        raise _located(UnsupportedOpError, f"the operator {what} is not supported on traced arrays",
                       f"the supported NumPy surface is listed in {NUMPY_DOC}")

    def __round__(self, ndigits=None): self._unsupported("round()")
    def __floordiv__(self, o): self._unsupported("//")
    def __rfloordiv__(self, o): self._unsupported("//")
    def __mod__(self, o): self._unsupported("%")
    def __rmod__(self, o): self._unsupported("%")
    def __divmod__(self, o): self._unsupported("divmod")
    def __xor__(self, o): self._unsupported("^")
    def __lshift__(self, o): self._unsupported("<<")
    def __rshift__(self, o): self._unsupported(">>")

    # -- things that need a concrete value ---------------------------------------
    def __bool__(self):
        raise _no_control_flow("`if`/`while`/`and`/`or`/bool() (e.g. `if x > 0:`)")

    def __float__(self):
        raise TraceError("float() of a traced value: its value is unknown at trace time; keep it as an array "
                         "(e.g. use x.sum() instead of float(x.sum())) and return it")

    def __int__(self):
        raise TraceError("int() of a traced value: its value is unknown at trace time; keep it as an array, "
                         "or use x.shape for sizes")

    def __index__(self):
        raise TraceError("a traced value cannot be used as an index or size: its value is unknown at trace time; "
                         "use x.shape[...] for sizes")

    def __complex__(self):
        raise DTypeError(f"complex numbers are not supported; supported dtypes are {dtypes.SUPPORTED_NAMES}")

    def item(self, *a):
        raise TraceError(".item() of a traced value: its value is unknown at trace time; return the array instead")

    def tolist(self):
        raise TraceError(".tolist() of a traced value: its value is unknown at trace time; return the array instead")

    def __iter__(self):
        raise TraceError("iterating over a traced array is not supported (it would unroll data into Python); "
                         "use whole-array ops (np.sum(x, axis=0), x[i] with a fixed int, broadcasting)")

    def __contains__(self, v):
        raise _no_control_flow("`in`")

    def __len__(self) -> int:
        if not self.shape:
            raise TraceError("len() of a 0-d traced array; use x.shape")
        return self.shape[0]

    def __setitem__(self, key, value):
        """x[key] = value as a functional update (jax's x.at[key].set(value)): this proxy now holds the
        updated array; the caller's input is never written."""
        from .indexing import setitem
        setitem(self, key, value)

    # x += y and friends: NumPy's in-place ops keep x's dtype and shape and write x's memory (and its views)
    def __iadd__(self, o): return _inplace(self, "+=", o)
    def __isub__(self, o): return _inplace(self, "-=", o)
    def __imul__(self, o): return _inplace(self, "*=", o)
    def __itruediv__(self, o): return _inplace(self, "/=", o)
    def __ipow__(self, o): return _inplace(self, "**=", o)
    def __iand__(self, o): return _inplace(self, "&=", o)
    def __ior__(self, o): return _inplace(self, "|=", o)

    def __array__(self, dtype=None, copy=None):
        from .indexing import concrete_value_error
        raise concrete_value_error()

    # -- ndarray methods ------------------------------------------------------------
    # ndarray's signatures, so dtype=/out=/where= get the same clear errors as np.sum(...) has
    def sum(self, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
        return _np_sum(self, axis, dtype, out, keepdims, initial, where)

    def max(self, axis=None, out=None, keepdims=False, initial=None, where=None):
        return _np_red("max")(self, axis, out, keepdims, initial, where)

    def min(self, axis=None, out=None, keepdims=False, initial=None, where=None):
        return _np_red("min")(self, axis, out, keepdims, initial, where)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False, *, where=None):
        return _np_mean(self, axis, dtype, out, keepdims, where=where)

    def astype(self, dtype, copy=True) -> "Tensor":
        dt = dtypes.check(dtype, "astype")
        return self.tracer.emit("cast", [self.node], {"dtype": dt})

    def reshape(self, *shape, order="C", copy=None) -> "Tensor":
        if order != "C":
            raise UnsupportedOpError(f"x.reshape(order={order!r}) is not supported; only C order")
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]
        return reshape_tensor(self, shape)

    def transpose(self, *axes) -> "Tensor":
        if len(axes) == 1 and (axes[0] is None or not isinstance(axes[0], (int, np.integer))):
            axes = axes[0]
        return transpose_tensor(self, axes if axes != () else None)

    def ravel(self) -> "Tensor":
        return reshape_tensor(self, (-1,))

    def flatten(self) -> "Tensor":
        return reshape_tensor(self, (-1,)).copy()   # NumPy's flatten copies: writes to it leave self alone

    def squeeze(self, axis=None) -> "Tensor":
        return _squeeze(self, axis)

    def cumsum(self, axis=None, dtype=None) -> "Tensor":
        return _cumsum(self, axis, dtype)

    def clip(self, min=None, max=None, **kw) -> "Tensor":  # noqa: A002 - ndarray.clip's parameter names
        return _clip(self, min, max, **kw)

    def copy(self, order="C") -> "Tensor":
        return Tensor(self.node, self.tracer)   # a new array: writes to it leave self alone

    def var(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False, *, where=np._NoValue,
            mean=np._NoValue, correction=np._NoValue) -> "Tensor":
        return np.var(self, axis, dtype, out, ddof, keepdims, where=where, mean=mean, correction=correction)

    def std(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False, *, where=np._NoValue,
            mean=np._NoValue, correction=np._NoValue) -> "Tensor":
        return np.std(self, axis, dtype, out, ddof, keepdims, where=where, mean=mean, correction=correction)

    def swapaxes(self, axis1, axis2) -> "Tensor":
        return _swapaxes(self, axis1, axis2)

    def repeat(self, repeats, axis=None) -> "Tensor":
        return np.repeat(self, repeats, axis)

    def __getitem__(self, idx) -> "Tensor":
        return getitem_tensor(self, idx)

    def __getattr__(self, name: str):
        # only reached for attributes Tensor does not define (ndarray's argmax, std, clip, view, ...)
        if name == "node" and object.__getattribute__(self, "_stale"):
            raise TraceError(object.__getattribute__(self, "_stale"))
        if name.startswith("__") or name in Tensor.__slots__:
            raise AttributeError(name)  # NumPy and copy probe dunders with getattr: keep AttributeError
        methods = tensor_methods()
        raise _located(UnsupportedAttributeError, f"x.{name} is not supported on traced arrays",
                       f"closest supported: {_closest(name, methods, 'x.')}; see {NUMPY_DOC}")

    # -- numpy protocols --------------------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        name = getattr(ufunc, "__name__", str(ufunc))
        if method != "__call__":
            hint = {"reduce": "use np.sum / np.max / np.min", "accumulate": "use np.cumsum"}.get(method, "")
            raise UnsupportedOpError(f"np.{name}.{method} is not supported in traced code{'; ' + hint if hint else ''}")
        if "out" in kwargs:
            raise TraceError(f"np.{name}(..., out=...) writes in place, which traced code cannot do; "
                             f"use the returned value: y = np.{name}(...)")
        if kwargs:
            raise TraceError(f"np.{name}: keyword argument(s) {', '.join(sorted(kwargs))} are not supported in traced "
                             f"code; call np.{name} with positional arrays only (cast with .astype first)")
        op = _ufunc_op(name, inputs)
        if op is None:
            raise unsupported_numpy(name)
        if callable(op):
            return op(*inputs)
        tr = tracer_of(inputs)
        return tr.emit(op, to_nodes(op, inputs, tr), {})

    def __array_function__(self, func, types, args, kwargs):
        h = NUMPY_FUNCTIONS.get(func)
        if h is None:
            name = getattr(func, "__name__", str(func))
            module = str(getattr(func, "__module__", "") or "")
            raise unsupported_numpy(name, module[len("numpy."):] if module.startswith("numpy.") else "")
        return h(*args, **kwargs)


def _indexing():
    from . import indexing   # imports this module: loaded on first use
    return indexing


def _inplace(x: "Tensor", sym: str, o: Any) -> "Tensor":
    return _indexing().inplace(x, sym, o)


# ----------------------------------------------------------------------------- ufuncs
_UFUNC_EXTRA: dict[str, Callable[..., Any]] = {
    "square": lambda x: _square(x),
    "positive": lambda x: _positive(x),
    "bitwise_and": lambda a, b: _bool_logic("logical_and", a, b),
    "bitwise_or": lambda a, b: _bool_logic("logical_or", a, b),
    "invert": lambda a: ~a if isinstance(a, Tensor) else _unsupported_fn("invert"),
}


def _square(x: "Tensor") -> "Tensor":
    if x.dtype == np.bool_:  # NumPy's square of bool is int8, which the explorer does not support
        raise DTypeError("np.square of a bool array is int8 in NumPy, an unsupported dtype; cast first, "
                         "e.g. np.square(x.astype(np.int32)), or use x itself (True * True is True)")
    return _binary("mul", x, x)


def _positive(x: "Tensor") -> "Tensor":
    if x.dtype == np.bool_:  # as NumPy: np.positive has no bool loop
        raise DTypeError("+x / np.positive is not defined for bool arrays (NumPy raises too); use x itself, "
                         "or cast first: +x.astype(np.int32)")
    return x


def _bool_logic(op: str, a: Any, b: Any) -> "Tensor":
    """a & b / a | b (and np.bitwise_and/or): supported only between bools, where it is logical and/or.
    Anything else is NumPy's integer bitwise op, e.g. bool_array & 1 is int64 (a Python int is not a bool),
    so it must not silently become a logical op."""
    def dtype_of(v: Any) -> Any:
        d = _strong_dtype(v)
        if d is None and isinstance(v, _PY_SCALARS):
            d = np.dtype(bool) if isinstance(v, bool) else np.result_type(v)
        return d if d is not None else type(v).__name__
    da, db = dtype_of(a), dtype_of(b)
    if da != np.dtype(bool) or db != np.dtype(bool):
        sym, word = ("&", "and") if op == "logical_and" else ("|", "or")
        raise UnsupportedOpError(f"{da} {sym} {db}: NumPy computes this as integer bitwise_{word} "
                                 f"(e.g. bool_array {sym} 1 is int64), which is not supported; {sym} is supported "
                                 f"only between bool arrays/scalars (logical {word}); compare first, "
                                 f"e.g. (x > 0) {sym} (x < 1), or use True instead of 1")
    return _binary(op, a, b)


def _unsupported_fn(name: str):
    raise unsupported_numpy(name)


_UFUNC_CACHE: dict[str, str] = {}


def ufunc_table() -> dict[str, str]:
    """NumPy ufunc name → registry op for every elementwise op (and matmul); rebuilt when ops are added."""
    if len(_UFUNC_CACHE) < 1 or _UFUNC_CACHE.get("__n__") != str(len(_ops.OPS)):
        _UFUNC_CACHE.clear()
        for name, d in _ops.OPS.items():
            if d.category == "elementwise" and not d.composite or name == "matmul":
                for nn_ in d.numpy_names:
                    if nn_ not in ("astype", "where", "dot"):
                        _UFUNC_CACHE[nn_] = name
        _UFUNC_CACHE["__n__"] = str(len(_ops.OPS))
    return _UFUNC_CACHE


def _ufunc_op(name: str, inputs: Sequence[Any]):
    if name in _UFUNC_EXTRA:
        return _UFUNC_EXTRA[name]
    op = ufunc_table().get(name)
    if op is None or op == "__n__":
        return None
    if _ops.OPS[op].arity != len(inputs):
        return None
    return op


# ----------------------------------------------------------------------------- numpy functions
def reject_kwargs(fname: str, **kw: Any) -> None:
    """TraceError naming np.`fname`'s arguments given in `kw` that traced code cannot honour (out=, dtype=, ...)."""
    bad = {k: v for k, v in kw.items() if v is not None and v is not np._NoValue}
    if "out" in bad:
        raise TraceError(f"np.{fname}(..., out=...) writes in place, which traced code cannot do; use the returned value")
    if bad:
        raise TraceError(f"np.{fname}: argument(s) {', '.join(sorted(bad))} are not supported in traced code "
                         f"(cast with .astype(...) before, instead of dtype=)")


def keepdims_flag(keepdims: Any) -> bool:
    """NumPy's keepdims argument as a bool (np._NoValue: False)."""
    return False if keepdims is np._NoValue else bool(keepdims)


def _np_sum(a, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    reject_kwargs("sum", dtype=dtype, out=out, initial=initial, where=where)
    return reduce_tensor("sum", a, axis, keepdims_flag(keepdims))


def _np_red(op: str):
    def f(a, axis=None, out=None, keepdims=False, initial=None, where=None):
        reject_kwargs(op, out=out, initial=initial, where=where)
        return reduce_tensor(op, a, axis, keepdims_flag(keepdims))
    return f


def _np_mean(a, axis=None, dtype=None, out=None, keepdims=False, *, where=None):
    reject_kwargs("mean", dtype=dtype, out=out, where=where)
    return mean_tensor(a, axis, keepdims_flag(keepdims))


def _np_dot(a, b, out=None):
    reject_kwargs("dot", out=out)
    for v in (a, b):
        nd = len(v.shape) if isinstance(v, Tensor) else np.ndim(v)
        if nd != 2:
            raise UnsupportedOpError("np.dot is supported for 2-D operands only; use a @ b (np.matmul) for "
                                     "batched products or reshape vectors to (1, n) / (n, 1)")
    return _binary("matmul", a, b)


def _np_where(condition, x=None, y=None):
    if x is None or y is None:
        raise UnsupportedOpError("np.where(cond) with one argument (indices of True) has a data-dependent shape "
                                 "and is not supported; use np.where(cond, a, b)")
    return apply_op("where", condition, x, y)


def _np_transpose(a, axes=None):
    return transpose_tensor(a, axes)


def _np_reshape(a, shape=None, order="C", *, newshape=None, copy=None):
    if order != "C":
        raise UnsupportedOpError(f"np.reshape(order={order!r}) is not supported; only C order")
    return reshape_tensor(a, shape if shape is not None else newshape)


def _np_broadcast_to(array, shape, subok=False):
    shape = _norm_shape("broadcast_to", shape)
    return array.tracer.emit("broadcast_to", [array.node], {"shape": shape})


def _cumsum(a, axis=None, dtype=None, out=None):
    """np.cumsum / x.cumsum. As in NumPy the scan accumulates in the result dtype, so float16 rounds every
    partial sum to half; `dtype=np.float32` is the knob for a more accurate (f32) accumulation."""
    reject_kwargs("cumsum", out=out)
    if dtype is not None:   # NumPy: accumulate (and return) in dtype
        a = a.astype(dtypes.check(dtype, "np.cumsum(dtype=...)"))
    if axis is None:
        a = reshape_tensor(a, (-1,))
        axis = 0
    ax = _ops.normalize_axes("cumsum", axis, a.ndim, a.shape)[0]
    return a.tracer.emit("cumsum", [a.node], {"axis": ax})


def _squeeze(a, axis=None):
    if axis is None:
        axes = tuple(i for i, s in enumerate(a.shape) if s == 1)
    else:
        axes = _ops.normalize_axes("squeeze", axis, a.ndim, a.shape)
        for i in axes:
            if a.shape[i] != 1:
                raise ShapeError(f"squeeze: cannot select axis {i} of shape {a.shape}: its size is not 1")
    return reshape_tensor(a, tuple(s for i, s in enumerate(a.shape) if i not in axes))


def _expand_dims(a, axis):
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    nd = a.ndim + len(axes)
    norm = _ops.normalize_axes("expand_dims", axes, nd, a.shape)
    it = iter(a.shape)
    return reshape_tensor(a, tuple(1 if i in norm else next(it) for i in range(nd)))


def _swapaxes(a, axis1, axis2):
    perm = list(range(a.ndim))
    i, j = (_ops.normalize_axes("swapaxes", ax, a.ndim, a.shape)[0] for ax in (axis1, axis2))
    perm[i], perm[j] = perm[j], perm[i]
    return transpose_tensor(a, tuple(perm))


def _clip(a, a_min=None, a_max=None, out=None, **kw):
    reject_kwargs("clip", out=out, **kw)
    r = a
    if a_min is not None:
        r = np.maximum(r, a_min)
    if a_max is not None:
        r = np.minimum(r, a_max)
    return r


def _np_ravel(a, order="C"):
    if order != "C":
        raise UnsupportedOpError(f"np.ravel(order={order!r}) is not supported; only C order")
    return reshape_tensor(a, (-1,))


# np.function → its traced implementation (Tensor.__array_function__); numpy_api and conv register more
NUMPY_FUNCTIONS: dict[Any, Callable[..., Any]] = {
    np.sum: _np_sum, np.max: _np_red("max"), np.amax: _np_red("max"), np.min: _np_red("min"),
    np.amin: _np_red("min"), np.mean: _np_mean, np.dot: _np_dot, np.where: _np_where,
    np.transpose: _np_transpose, np.reshape: _np_reshape, np.broadcast_to: _np_broadcast_to,
    np.cumsum: _cumsum, np.squeeze: _squeeze, np.expand_dims: _expand_dims, np.swapaxes: _swapaxes,
    np.clip: _clip, np.ravel: _np_ravel,
    np.take: lambda *a, **kw: _indexing().np_take(*a, **kw),
    np.copy: lambda a, order="K", subok=False: a.copy(),
    np.shape: lambda a: a.shape, np.ndim: lambda a: a.ndim, np.size: lambda a, axis=None: (
        a.size if axis is None else a.shape[_ops.normalize_axes("size", axis, a.ndim, a.shape)[0]]),
}


def supported_numpy_names() -> list[str]:
    """Names (without `np.`) of the NumPy functions and ufuncs the tracer understands, sorted."""
    names = {getattr(f, "__name__", "") for f in NUMPY_FUNCTIONS} | {"amax", "amin", "concat"}
    names |= {k for k in ufunc_table() if k != "__n__"} | set(_UFUNC_EXTRA)
    return sorted(n for n in names if n and hasattr(np, n))


def supported_numpy() -> str:
    """Names of the NumPy functions and ufuncs the tracer understands."""
    return ", ".join(f"np.{n}" for n in supported_numpy_names())


NUMPY_DOC = "docs/NUMPY.md"


def tensor_methods() -> list[str]:
    """Public attributes and methods of a traced array that work (item/tolist only explain why they cannot)."""
    return [n for n in dir(Tensor) if not n.startswith("_") and n not in ("node", "tracer", "item", "tolist")]


def _closest(name: str, names: Sequence[str], prefix: str) -> str:
    import difflib
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.0)
    return ", ".join(prefix + c for c in close)


def _where() -> str:
    """' at file:line: code' for the user's line (code cut to keep the message short), or ''.

    Called while an op is being traced, so the innermost non-tracer frame is the user's line."""
    p = user_provenance()
    if p is None:
        return ""
    code = p.code if len(p.code) <= 60 else p.code[:57] + "..."
    return f" at {p.short()}: {code}" if code else f" at {p.short()}"


def _located(cls: type[ExplorerError], what: str, rest: str) -> ExplorerError:
    """cls(f"{what} at <the user's line>; {rest}"), marked so trace() does not append the line again."""
    where = _where()
    e = cls(f"{what}{where}; {rest}")
    e._located = bool(where)  # type: ignore[attr-defined]
    return e


def unsupported_numpy(name: str, submodule: str = "") -> UnsupportedOpError:
    """The error for an np.<name> (np.<submodule>.<name>) the tracer does not know: the op, the user's line,
    the 3 closest supported NumPy names and where the supported surface is listed (under 300 characters).

    >>> str(unsupported_numpy("norm", "linalg")).startswith("np.linalg.norm is not supported")
    True
    """
    qual = f"{submodule}.{name}" if submodule else name
    return _located(UnsupportedOpError, f"np.{qual} is not supported",
                    f"closest supported: {_closest(name, supported_numpy_names(), 'np.')}; see {NUMPY_DOC}")


# ----------------------------------------------------------------------------- examples & trace
def _param_names(fn: Callable, n_examples: int) -> list[str]:
    """Names for the inputs, from fn's signature; raises TraceError when the count does not fit."""
    fname = getattr(fn, "__name__", "fn")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return [f"x{i}" for i in range(n_examples)]
    names: list[str] = []
    required = 0
    maximum = 0
    var = None
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
            maximum += 1
            if p.default is p.empty:
                required += 1
        elif p.kind == p.VAR_POSITIONAL:
            var = p.name
        elif p.kind == p.KEYWORD_ONLY and p.default is p.empty:
            raise TraceError(f"{fname} has a required keyword-only parameter {p.name!r}; the tracer passes examples "
                             f"positionally: give it a default or wrap it, e.g. lambda x: {fname}(x, {p.name}=...)")
    if n_examples < required or (var is None and n_examples > maximum):
        want = f"{required}" if required == maximum and var is None else (
            f"{required} to {maximum}" if var is None else f"at least {required}")
        raise TraceError(f"{fname} takes {want} positional argument(s) ({', '.join(names) or 'none'}) but "
                         f"{n_examples} example input(s) were given; pass one example array per parameter")
    out = names[:n_examples]
    for i in range(len(out), n_examples):
        out.append(f"x{i - len(names)}")
    return out


def array_subclass_problem(a: Any) -> str | None:
    """Why an ndarray subclass cannot be traced like a plain array (None when it can)."""
    if isinstance(a, np.ma.MaskedArray):
        return ("a masked array: the mask would be ignored; pass a plain array, e.g. m.filled(0) or "
                "np.where(m.mask, 0, m.data)")
    if isinstance(a, np.matrix):
        return "an np.matrix, whose * means matmul unlike arrays; pass np.asarray(m) (and use @ for matmul)"
    return None


def _check_example(k: int, name: str, a: Any) -> np.ndarray:
    if isinstance(a, Tensor):
        raise TraceError(f"example input {k} ({name}) is a traced value; pass concrete np.ndarray examples")
    bad_sub = array_subclass_problem(a)
    if bad_sub:
        raise TraceError(f"example input {k} ({name}) is {bad_sub}")
    if isinstance(a, np.ndarray):
        arr = a
    elif isinstance(a, np.generic):
        arr = np.asarray(a)
    else:
        tn = type(a).__name__
        kind = "None" if a is None else f"{'an' if tn[0] in 'aeiou' else 'a'} {tn}"
        raise TraceError(f"example input {k} ({name}) is {kind}, not an array: pass np.ndarray examples, e.g. "
                         f"np.asarray(value, dtype=np.float32)")
    dtypes.check(arr.dtype, f"example input {k} ({name})")
    return arr


def prepare_examples(fn: Callable, examples: Sequence[Any], dtype: Any = None) -> list[np.ndarray]:
    """Validate example inputs for `fn` and return them as C-contiguous arrays.

    `dtype` (e.g. np.float16) casts floating-point examples to that dtype.

    >>> [a.dtype for a in prepare_examples(lambda x, n: x, [np.ones(2), np.arange(2, dtype=np.int32)], np.float32)]
    [dtype('float32'), dtype('int32')]
    """
    if not callable(fn):
        raise TraceError(f"expected a function to trace, got a {type(fn).__name__}")
    names = _param_names(fn, len(examples))
    dt = dtypes.check(dtype, "dtype=") if dtype is not None else None
    out = []
    for k, (name, a) in enumerate(zip(names, examples)):
        arr = _check_example(k, name, a)
        if dt is not None and dtypes.is_float(arr.dtype):
            arr = arr.astype(dt)
        # np.ascontiguousarray would turn a 0-d array into shape (1,)
        try:
            out.append(arr if arr.flags.c_contiguous else np.array(arr, order="C"))
        except MemoryError:
            raise ShapeError(f"example input {k} ({name}) of shape {arr.shape} is a strided view (e.g. from "
                             f"np.broadcast_to) whose contiguous copy ({arr.size * arr.itemsize:,} bytes) does not "
                             f"fit in memory; pass a smaller example") from None
        except ValueError as e:  # 'array is too big'
            raise ShapeError(f"example input {k} ({name}) of shape {arr.shape} cannot be copied into a "
                             f"contiguous array ({e}); pass a smaller example") from None
    return out


def _graph_name(fn: Callable) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if name == "<lambda>":
        return "lambda"
    return c_identifier(name, "fn")


def _source_of(fn: Callable) -> tuple[str, dict[int, str]]:
    try:
        code = fn.__code__
    except AttributeError:
        return "", {}
    file = code.co_filename
    try:
        lines, start = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        return file, {}
    return file, {start + i: ln.rstrip("\n") for i, ln in enumerate(lines)}


def trace(fn: Callable, *examples: Any) -> Graph:
    """Run `fn` on proxy Tensors shaped like `examples` and return the recorded Graph.

    >>> g = trace(lambda a, b: np.exp(a) * b, np.ones(3, np.float32), np.ones(3, np.float32))
    >>> [n.op for n in g.op_nodes()]
    ['exp', 'mul']
    """
    names = _param_names(fn, len(examples)) if callable(fn) else None
    if names is None:
        raise TraceError(f"expected a function to trace, got a {type(fn).__name__}")
    arrays = [_check_example(k, nm, a) for k, (nm, a) in enumerate(zip(names, examples))]
    seen: set[str] = set()
    uniq = []
    for nm in names:
        uniq.append(unique(c_identifier(nm, "x"), seen))
    tr = Tracer()
    proxies = [tr.input(nm, a.shape, a.dtype) for nm, a in zip(uniq, arrays)]
    fname = getattr(fn, "__name__", "fn")
    try:
        result = fn(*proxies)
    except ExplorerError as e:
        tr.closed = True
        loc = _user_location(e.__traceback__)
        if loc is None or getattr(e, "_located", False):
            raise
        try:  # same class, message extended with where the user wrote the failing line
            new = type(e)(f"{e} (at {loc.short()}: {loc.code})")
        except Exception:
            raise e from None
        new._located = True  # type: ignore[attr-defined]
        raise new.with_traceback(e.__traceback__) from None
    except RecursionError:
        tr.closed = True
        raise TraceError(f"{fname} recursed too deeply while tracing; traced code cannot recurse on values") from None
    except Exception as e:
        tr.closed = True
        loc = _user_location(e.__traceback__)
        where = f" at {loc.short()}: {loc.code}" if loc else ""
        raise TraceError(f"{fname} raised {type(e).__name__}: {e}{where} (while tracing with proxy arrays; "
                         f"only NumPy operations on the inputs can be traced)") from e
    tr.closed = True
    outs = result if isinstance(result, (tuple, list)) else (result,)
    if not outs:
        raise TraceError(f"{fname} returned an empty {type(result).__name__}; return at least one array")
    out_nodes = []
    for k, o in enumerate(outs):
        if not isinstance(o, Tensor) and hasattr(o, "_masked_selection_error"):
            raise o._masked_selection_error(f"a returned value of {fname}")
        if not isinstance(o, Tensor):
            tn = type(o).__name__
            what = "None (missing return?)" if o is None else f"{'an' if tn[0] in 'aeiou' else 'a'} {tn}"
            raise TraceError(f"{fname} returned {what}{f' as output {k}' if len(outs) > 1 else ''}, not a traced "
                             f"array computed from its inputs; return arrays derived from the inputs "
                             f"(a tuple of them for several outputs)")
        if o.tracer is not tr:
            raise TraceError(f"{fname} returned a traced value from a different trace")
        out_nodes.append(o.node)
    file, lines = _source_of(fn)
    return Graph(_graph_name(fn), tr.inputs, tr.nodes, out_nodes, source_lines=lines, source_file=file,
                 next_id=tr._next)


from . import numpy_api as _numpy_api  # noqa: E402,F401  (registers concatenate, split, var, einsum, ...)

__all__ = ["Tensor", "Tracer", "trace", "prepare_examples", "apply_op", "supported_numpy", "user_provenance"]
