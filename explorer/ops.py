"""The op registry: one entry per primitive op.

Each OpDef knows its category (TVM's operator patterns), how to infer the result
type, how NumPy computes it (the reference), what it costs, and — for
elementwise ops — how to build the scalar loop-IR expression of one element.
Adding an op is one `register(OpDef(...))` call.

>>> OPS["add"].category
'elementwise'
>>> infer_type("matmul", [((64, 128), np.float32), ((128, 256), np.float32)], {})
((64, 256), dtype('float32'))
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from . import loopir as L
from .errors import DTypeError, ShapeError, UnsupportedOpError

CATEGORIES = ("elementwise", "injective", "reduce", "contraction", "opaque")
Type = tuple[tuple[int, ...], np.dtype]


@dataclass(frozen=True)
class Cost:
    """Work of one node run as its own kernel: flops, and bytes read/written from global memory.

    Scalar constants are immediates in generated code, so they cost no bytes.
    """

    flops: int
    bytes_read: int
    bytes_written: int

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written


@dataclass(frozen=True)
class OpDef:
    """A primitive op.

    infer(types, attrs) -> (shape, dtype); reference(*arrays, **attrs) -> ndarray;
    flops_per_element: flops per output element (elementwise/injective) — reduce and
    contraction ops compute flops from shapes; scalar(args, out_dtype) -> loopir.Expr
    for elementwise ops (args already cast to the operand dtype).
    """

    name: str
    category: str
    arity: int
    infer: Callable[[Sequence[Type], dict], Type]
    reference: Callable[..., np.ndarray]
    flops_per_element: int = 1
    scalar: Callable[..., L.Expr] | None = None
    numpy_names: tuple[str, ...] = ()
    doc: str = ""
    # composites only: a function on Tensors/arrays that expresses the op in primitives;
    # simplify(decompose=True) re-traces it in place of the node.
    decomposition: Callable[..., Any] | None = None

    @property
    def composite(self) -> bool:
        return self.decomposition is not None


OPS: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    assert op.category in CATEGORIES, op.category
    OPS[op.name] = op
    return op


def supported_ops() -> str:
    return ", ".join(sorted(OPS))


def get(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise UnsupportedOpError(f"op {name!r} is not supported; supported ops are: {supported_ops()}") from None


# ----------------------------------------------------------------------------- type rules
def broadcast_shapes(op: str, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy broadcasting, with a ShapeError naming the op and both shapes."""
    try:
        return tuple(int(s) for s in np.broadcast_shapes(*shapes))
    except ValueError:
        shown = " and ".join(str(tuple(s)) for s in shapes)
        raise ShapeError(f"{op}: cannot broadcast shapes {shown} (NumPy rules: trailing dims must be equal or 1); "
                         f"reshape or transpose one operand so they line up") from None


def _numpy_dtype(fn: Callable, dts: Sequence[np.dtype], **kw) -> np.dtype:
    # Exact NumPy promotion: run the reference on 0-d/1-element dummies of the operand dtypes.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return np.asarray(fn(*[np.ones((), dt) for dt in dts], **kw)).dtype


def _elementwise_infer(name: str, ref: Callable):
    def infer(types: Sequence[Type], attrs: dict) -> Type:
        shape = broadcast_shapes(name, *[t[0] for t in types])
        return shape, _numpy_dtype(ref, [t[1] for t in types])
    return infer


def operand_dtype(op: str, in_dtypes: Sequence[np.dtype], out_dtype: np.dtype) -> np.dtype:
    """The dtype an elementwise op computes in (inputs are cast to it before `scalar`)."""
    if op in ("lt", "le", "gt", "ge", "eq", "ne"):
        return np.result_type(*in_dtypes)
    if op in ("logical_and", "logical_or", "logical_not"):
        return np.dtype(bool)
    if op == "cast":
        return np.dtype(in_dtypes[0])
    return np.dtype(out_dtype)


def _unary(name: str, ref: Callable, scalar: Callable, flops: int = 1, numpy_names=(), doc=""):
    register(OpDef(name, "elementwise", 1, _elementwise_infer(name, ref), ref, flops, scalar,
                   numpy_names or (name,), doc))


def _binary(name: str, ref: Callable, scalar: Callable, flops: int = 1, numpy_names=(), doc=""):
    register(OpDef(name, "elementwise", 2, _elementwise_infer(name, ref), ref, flops, scalar,
                   numpy_names or (name,), doc))


def _erf(x):
    # numpy has no erf ufunc; vectorised math.erf keeps float64 accuracy, dtype preserved.
    import math
    x = np.asarray(x)
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype if x.dtype.kind == "f" else np.float64)


def _call(fn: str):
    return lambda a, out: L.call(fn, a)


_unary("neg", np.negative, lambda a, out: L.UnOp("neg", a), 1, ("negative",))
_unary("exp", np.exp, _call("exp"))
_unary("log", np.log, _call("log"))
_unary("tanh", np.tanh, _call("tanh"))
_unary("sqrt", np.sqrt, _call("sqrt"))
_unary("abs", np.abs, _call("abs"), 1, ("absolute", "abs"))
_unary("sin", np.sin, _call("sin"))
_unary("cos", np.cos, _call("cos"))
_unary("erf", _erf, _call("erf"), 1, ("erf",))
_unary("logical_not", np.logical_not, lambda a, out: L.UnOp("not", a), 1)

_binary("add", np.add, lambda a, b, out: L.BinOp("+", a, b))
_binary("sub", np.subtract, lambda a, b, out: L.BinOp("-", a, b), 1, ("subtract",))
_binary("mul", np.multiply, lambda a, b, out: L.BinOp("*", a, b), 1, ("multiply",))
_binary("div", np.true_divide, lambda a, b, out: L.BinOp("/", a, b), 1, ("true_divide", "divide"))
_binary("pow", np.power, lambda a, b, out: L.call("pow", a, b), 1, ("power",))
_binary("maximum", np.maximum, lambda a, b, out: L.BinOp("max", a, b))
_binary("minimum", np.minimum, lambda a, b, out: L.BinOp("min", a, b))
for _n, _np, _sym in (("lt", np.less, "<"), ("le", np.less_equal, "<="), ("gt", np.greater, ">"),
                      ("ge", np.greater_equal, ">="), ("eq", np.equal, "=="), ("ne", np.not_equal, "!=")):
    _binary(_n, _np, (lambda s: lambda a, b, out: L.BinOp(s, a, b))(_sym), 1, (_np.__name__,))
_binary("logical_and", np.logical_and, lambda a, b, out: L.BinOp("&&", a, b))
_binary("logical_or", np.logical_or, lambda a, b, out: L.BinOp("||", a, b))


def _where_infer(types: Sequence[Type], attrs: dict) -> Type:
    shape = broadcast_shapes("where", *[t[0] for t in types])
    if np.dtype(types[0][1]) != np.dtype(bool):
        raise DTypeError(f"where: the condition must be bool, got {types[0][1]}; compare first, e.g. np.where(x > 0, ...)")
    return shape, np.result_type(types[1][1], types[2][1])


register(OpDef("where", "elementwise", 3, _where_infer, np.where, 1,
               lambda c, a, b, out: L.Select(c, a, b), ("where",)))


def _cast_infer(types: Sequence[Type], attrs: dict) -> Type:
    from .dtypes import check
    return tuple(types[0][0]), check(attrs["dtype"], "astype")


register(OpDef("cast", "elementwise", 1, _cast_infer,
               lambda x, dtype: np.asarray(x).astype(dtype), 0,
               lambda a, out: L.Cast(L.short_dtype(out), a), ("astype",)))


# ----------------------------------------------------------------------------- injective
def _broadcast_to_infer(types: Sequence[Type], attrs: dict) -> Type:
    shape = tuple(attrs["shape"])
    src = tuple(types[0][0])
    if broadcast_shapes("broadcast_to", src, shape) != shape:
        raise ShapeError(f"broadcast_to: cannot broadcast shape {src} to {shape}")
    return shape, np.dtype(types[0][1])


def _reshape_infer(types: Sequence[Type], attrs: dict) -> Type:
    src = tuple(types[0][0])
    shape = tuple(attrs["shape"])
    if int(np.prod(src, dtype=np.int64)) != int(np.prod(shape, dtype=np.int64)):
        raise ShapeError(f"reshape: cannot reshape {src} ({int(np.prod(src))} elements) into {shape} "
                         f"({int(np.prod(shape))} elements)")
    return shape, np.dtype(types[0][1])


def _transpose_infer(types: Sequence[Type], attrs: dict) -> Type:
    src = tuple(types[0][0])
    axes = tuple(attrs["axes"])
    if sorted(axes) != list(range(len(src))):
        raise ShapeError(f"transpose: axes {axes} are not a permutation of the {len(src)} axes of shape {src}")
    return tuple(src[a] for a in axes), np.dtype(types[0][1])


def _slice_infer(types: Sequence[Type], attrs: dict) -> Type:
    src = tuple(types[0][0])
    starts, stops, steps = attrs["starts"], attrs["stops"], attrs["steps"]
    if not (len(starts) == len(stops) == len(steps) == len(src)):
        raise ShapeError(f"slice: need one (start, stop, step) per axis of shape {src}")
    shape = tuple(len(range(a, b, c)) for a, b, c in zip(starts, stops, steps))
    return shape, np.dtype(types[0][1])


def range_slice(start: int, stop: int, step: int) -> slice:
    """The Python slice picking range(start, stop, step), the form slice.indices() gives.

    In range() terms -1 means "before index 0" (a negative step runs through index 0, or, as a start
    below -size, selects nothing); in a Python slice -1 means "the last element".

    >>> np.arange(3)[range_slice(*slice(-5, -7, -1).indices(3))], np.arange(3)[range_slice(2, -1, -1)]
    (array([], dtype=int64), array([2, 1, 0]))
    """
    if not len(range(start, stop, step)):
        return slice(0, 0)
    return slice(start, stop if stop >= 0 else None, step)


def _slice_ref(x, starts, stops, steps):
    return x[tuple(range_slice(a, b, c) for a, b, c in zip(starts, stops, steps))]


register(OpDef("broadcast_to", "injective", 1, _broadcast_to_infer,
               lambda x, shape: np.broadcast_to(x, shape), 0, None, ("broadcast_to",)))
register(OpDef("reshape", "injective", 1, _reshape_infer, lambda x, shape: np.reshape(x, shape), 0, None,
               ("reshape",)))
register(OpDef("transpose", "injective", 1, _transpose_infer, lambda x, axes: np.transpose(x, axes), 0, None,
               ("transpose",)))
register(OpDef("slice", "injective", 1, _slice_infer, _slice_ref, 0, None, ()))


# ----------------------------------------------------------------------------- reductions
def normalize_axes(op: str, axis: Any, ndim: int, shape: tuple[int, ...] = ()) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axes = (axis,)
    elif isinstance(axis, (tuple, list)):
        axes = tuple(axis)
    else:
        raise ShapeError(f"{op}: axis must be an int, a tuple of ints or None, got {type(axis).__name__} {axis!r}")
    out = []
    for a in axes:
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, np.integer)):
            raise ShapeError(f"{op}: axis must be an int, a tuple of ints or None, got {type(a).__name__} {a!r}")
        if not -ndim <= a < ndim:
            raise ShapeError(f"{op}: axis {a} is out of range for an array of shape {shape} ({ndim} dims)")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"{op}: repeated axis in {axes}")
    return tuple(sorted(out))


def _reduce_infer(name: str, ref: Callable):
    def infer(types: Sequence[Type], attrs: dict) -> Type:
        src = tuple(types[0][0])
        axes = normalize_axes(name, attrs["axes"], len(src), src)
        keep = bool(attrs.get("keepdims", False))
        if name in ("max", "min") and any(src[a] == 0 for a in axes):
            raise ShapeError(f"{name}: zero-size reduction over axis of shape {src} has no identity")
        shape = tuple((1 if i in axes else s) for i, s in enumerate(src) if keep or i not in axes)
        dt = _numpy_dtype(lambda x: ref(x.reshape((1,) * len(src)), axis=axes), [types[0][1]])
        return shape, dt
    return infer


REDUCE_IDENTITY = {"sum": 0.0, "max": -np.inf, "min": np.inf}

for _name, _ref in (("sum", np.sum), ("max", np.max), ("min", np.min)):
    register(OpDef(_name, "reduce", 1, _reduce_infer(_name, _ref),
                   (lambda r: lambda x, axes, keepdims=False: r(x, axis=tuple(axes), keepdims=keepdims))(_ref),
                   1, None, ("sum",) if _name == "sum" else (_name, "a" + _name)))


# ----------------------------------------------------------------------------- contraction
def _matmul_infer(types: Sequence[Type], attrs: dict) -> Type:
    a, b = tuple(types[0][0]), tuple(types[1][0])
    if len(a) < 2 or len(b) < 2:
        raise ShapeError(f"matmul: both operands need at least 2 dims, got {a} @ {b}; reshape vectors to (1, n) or (n, 1)")
    if a[-1] != b[-2]:
        raise ShapeError(f"matmul: inner dimensions differ: {a} @ {b} ({a[-1]} != {b[-2]}); "
                         f"the last dim of the left operand must equal the second-to-last of the right")
    batch = broadcast_shapes("matmul (batch dims)", a[:-2], b[:-2])
    return batch + (a[-2], b[-1]), np.result_type(types[0][1], types[1][1])


register(OpDef("matmul", "contraction", 2, _matmul_infer, np.matmul, 2, None, ("matmul", "dot")))


# ----------------------------------------------------------------------------- opaque
def _cumsum_infer(types: Sequence[Type], attrs: dict) -> Type:
    src = tuple(types[0][0])
    normalize_axes("cumsum", attrs["axis"], len(src), src)
    return src, _numpy_dtype(lambda x: np.cumsum(x.reshape((1,) * max(len(src), 1)), axis=0), [types[0][1]])


register(OpDef("cumsum", "opaque", 1, _cumsum_infer,
               lambda x, axis: np.cumsum(x, axis=axis), 1, None, ("cumsum",),
               "a scan: each output depends on a whole prefix, so it does not fuse"))


# ----------------------------------------------------------------------------- queries
def infer_type(op: str, types: Sequence[Type], attrs: dict) -> Type:
    d = get(op)
    if d.arity != len(types):
        raise ShapeError(f"{op}: takes {d.arity} operands, got {len(types)}")
    try:
        shape, dt = d.infer([(tuple(s), np.dtype(t)) for s, t in types], attrs)
    except TypeError as e:  # NumPy itself rejects these dtypes (e.g. -x on bool)
        from .errors import DTypeError
        raise DTypeError(f"{op}: not defined for operand dtype(s) {', '.join(str(np.dtype(t)) for _, t in types)} "
                         f"(NumPy: {e}); cast first, e.g. x.astype(np.float32)") from None
    return tuple(int(s) for s in shape), np.dtype(dt)


def category_of(node) -> str:
    if node.op in ("input", "const"):
        return node.op
    return get(node.op).category


def evaluate(op: str, arrays: Sequence[np.ndarray], attrs: dict) -> np.ndarray:
    """Run the NumPy reference of one op."""
    d = get(op)
    with np.errstate(all="ignore"):
        return np.asarray(d.reference(*arrays, **attrs))


def node_cost(node) -> Cost:
    """Flops and bytes of `node` run as its own kernel (the unfused cost)."""
    if node.op in ("input", "const"):
        return Cost(0, 0, 0)
    d = get(node.op)
    read = sum(i.nbytes for i in node.inputs if not (i.op == "const" and i.size == 1))
    written = node.nbytes
    if d.category == "contraction":
        k = node.inputs[0].shape[-1]
        flops = 2 * node.size * k
    elif d.category == "reduce":
        flops = node.inputs[0].size  # one combine per input element
    else:
        flops = d.flops_per_element * node.size
    if node.op == "broadcast_to":
        read = node.inputs[0].nbytes
    return Cost(int(flops), int(read), int(written))
