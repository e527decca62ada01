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

import dataclasses
import warnings
from dataclasses import dataclass
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
    # custom kernels only (explorer.custom_kernel): the CustomKernel with the user's sources
    custom: Any = None

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


# A transcendental math call counts as this many flops in the cost model and in the simulator's
# counters: roughly what a vectorised polynomial implementation executes (Sleef/SVML-style expf or
# tanhf: range reduction plus ~15-20 multiply-adds). Counting it as 1 would call a chain of tanh
# memory-bound while its time grows with every step; a scalar libm call costs more still (notebook 02
# measures it). sqrt, rsqrt and abs are single hardware instructions and count 1.
TRANSCENDENTAL_FLOPS = 20
TRANSCENDENTALS = frozenset({"exp", "log", "tanh", "sin", "cos", "erf", "pow", "sigmoid"})


def call_flops(fn: str) -> int:
    """Flops one evaluation of math function `fn` counts (TRANSCENDENTAL_FLOPS for exp, tanh, ...; else 1).

    >>> call_flops("tanh"), call_flops("sqrt")
    (20, 1)
    """
    return TRANSCENDENTAL_FLOPS if fn in TRANSCENDENTALS else 1


_unary("neg", np.negative, lambda a, out: L.UnOp("neg", a), 1, ("negative",))
_unary("exp", np.exp, _call("exp"), call_flops("exp"))
_unary("log", np.log, _call("log"), call_flops("log"))
_unary("tanh", np.tanh, _call("tanh"), call_flops("tanh"))
_unary("sqrt", np.sqrt, _call("sqrt"))
_unary("abs", np.abs, lambda a, out: a if out == "bool" else L.call("abs", a), 1, ("absolute", "abs"))
_unary("sin", np.sin, _call("sin"), call_flops("sin"))
_unary("cos", np.cos, _call("cos"), call_flops("cos"))
_unary("erf", _erf, _call("erf"), call_flops("erf"), ("erf",))
_unary("logical_not", np.logical_not, lambda a, out: L.UnOp("not", a), 1)

# on bool NumPy's add is logical or and multiply logical and (True + True is True, not 2)
_binary("add", np.add, lambda a, b, out: L.BinOp("||" if out == "bool" else "+", a, b))
_binary("sub", np.subtract, lambda a, b, out: L.BinOp("-", a, b), 1, ("subtract",))
_binary("mul", np.multiply, lambda a, b, out: L.BinOp("&&" if out == "bool" else "*", a, b), 1, ("multiply",))
_binary("div", np.true_divide, lambda a, b, out: L.BinOp("/", a, b), 1, ("true_divide", "divide"))
_binary("pow", np.power, lambda a, b, out: L.call("pow", a, b), call_flops("pow"), ("power",))
_binary("maximum", np.maximum, lambda a, b, out: L.BinOp("max", a, b))
_binary("minimum", np.minimum, lambda a, b, out: L.BinOp("min", a, b))
for _n, _np, _sym in (("lt", np.less, "<"), ("le", np.less_equal, "<="), ("gt", np.greater, ">"),
                      ("ge", np.greater_equal, ">="), ("eq", np.equal, "=="), ("ne", np.not_equal, "!=")):
    _binary(_n, _np, (lambda s: lambda a, b, out: L.BinOp(s, a, b))(_sym), 1, (_np.__name__,))
_binary("logical_and", np.logical_and, lambda a, b, out: L.BinOp("&&", a, b))
_binary("logical_or", np.logical_or, lambda a, b, out: L.BinOp("||", a, b))


def _pow_scalar(a: L.Expr, b: L.Expr, out: str) -> L.Expr:
    """a ** b; a float raised to the constant 2 or 3 (gelu's x ** 3) is multiplied out: it vectorizes in a
    fused epilogue, where a libm powf call per element cost 25x the matmul it follows (16x64 @ 64x256)."""
    e = b.a if isinstance(b, L.Cast) else b
    if (L.short_dtype(out) in ("f32", "f64") and isinstance(e, L.Const) and not isinstance(e.value, bool)
            and e.value in (2, 3)):
        return a * a if e.value == 2 else a * a * a
    return L.call("pow", a, b)


register(dataclasses.replace(OPS["pow"], scalar=_pow_scalar))


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

VARIADIC = -1  # OpDef.arity of ops taking any number (>= 1) of operands (concat)


def _concat_infer(types: Sequence[Type], attrs: dict) -> Type:
    shapes = [tuple(t[0]) for t in types]
    nd = len(shapes[0])
    if nd == 0:
        raise ShapeError("concatenate: zero-dimensional arrays cannot be concatenated; "
                         "use np.stack (or x[None]) to add an axis first")
    axis = normalize_axes("concatenate", attrs["axis"], nd, shapes[0])[0]
    for k, s in enumerate(shapes[1:], 1):
        if len(s) != nd or any(a != b for d, (a, b) in enumerate(zip(s, shapes[0])) if d != axis):
            shown = ", ".join(str(x) for x in shapes)
            raise ShapeError(f"concatenate: operand {k} has shape {s}, which does not match operand 0's shape "
                             f"{shapes[0]} outside axis {axis} (shapes {shown}); all dims but the concatenation "
                             f"axis must be equal")
    shape = list(shapes[0])
    shape[axis] = sum(s[axis] for s in shapes)
    return tuple(shape), np.result_type(*[t[1] for t in types])


def _pad_infer(types: Sequence[Type], attrs: dict) -> Type:
    src = tuple(types[0][0])
    pads = tuple(tuple(p) for p in attrs["pads"])
    if len(pads) != len(src) or any(len(p) != 2 or min(p) < 0 for p in pads):
        raise ShapeError(f"pad: need one non-negative (before, after) pair per axis of shape {src}, got {pads}")
    return tuple(s + lo + hi for s, (lo, hi) in zip(src, pads)), np.dtype(types[0][1])


def _concat_ref(*xs, axis):
    return np.concatenate(xs, axis=axis)


def _pad_ref(x, pads, value):
    return np.pad(x, pads, mode="constant", constant_values=value)


register(OpDef("concat", "injective", VARIADIC, _concat_infer, _concat_ref, 0, None, ("concatenate", "concat"),
               "joins operands along an axis: element i reads the operand whose range holds i"))
register(OpDef("pad", "injective", 1, _pad_infer, _pad_ref, 0, None, ("pad",),
               "constant padding: an element reads the input, or the constant outside it"))


# Gather and functional writes: injective ops whose loop-IR lowering reads an index buffer
# (take: `data[..., ids[j], ...]`) or selects on the written box (set_slice: `x.at[box].set(v)`).
def _take_infer(types: Sequence[Type], attrs: dict) -> Type:
    (dshape, ddt), (ishape, idt) = types
    ax = attrs["axis"]
    if np.dtype(idt).kind not in "iu":
        raise DTypeError(f"take: indices must be an integer array, got {np.dtype(idt)} (NumPy raises IndexError: "
                         f"arrays used as indices must be of integer or boolean type); cast with .astype(np.int64)")
    if not 0 <= ax < len(dshape):
        raise ShapeError(f"take: axis {ax} is out of range for an array of shape {tuple(dshape)}")
    if dshape[ax] == 0:
        raise ShapeError(f"take: cannot index axis {ax} of size 0 (shape {tuple(dshape)})")
    return tuple(dshape[:ax]) + tuple(ishape) + tuple(dshape[ax + 1:]), np.dtype(ddt)


def _take_ref(data, indices, axis):
    return np.take(data, indices, axis=axis)   # mode='raise': out-of-range indices raise IndexError


def _set_slice_infer(types: Sequence[Type], attrs: dict) -> Type:
    (xshape, xdt), (vshape, vdt) = types
    starts, stops, steps = attrs["starts"], attrs["stops"], attrs["steps"]
    if not (len(starts) == len(stops) == len(steps) == len(xshape)):
        raise ShapeError(f"set_slice: need one (start, stop, step) per axis of shape {tuple(xshape)}")
    box = tuple(len(range(a, b, c)) for a, b, c in zip(starts, stops, steps))
    if len(vshape) != len(box) or any(v not in (1, b) for v, b in zip(vshape, box)):
        raise ShapeError(f"set_slice: the value of shape {tuple(vshape)} does not fit the written region of shape "
                         f"{box} in an array of shape {tuple(xshape)}")
    if np.dtype(vdt) != np.dtype(xdt):
        raise DTypeError(f"set_slice: the value has dtype {np.dtype(vdt)} but the array has {np.dtype(xdt)}")
    return tuple(xshape), np.dtype(xdt)


def _set_slice_ref(x, v, starts, stops, steps):
    out = np.array(x, copy=True)
    box = tuple(len(range(a, b, c)) for a, b, c in zip(starts, stops, steps))
    out[tuple(range_slice(a, b, c) for a, b, c in zip(starts, stops, steps))] = np.broadcast_to(v, box)
    return out


register(OpDef("take", "injective", 2, _take_infer, _take_ref, 0, None, ("take",),
               "a gather: out[..., j, ...] = data[..., ids[j], ...] (NumPy's integer-array indexing)"))
register(OpDef("set_slice", "injective", 2, _set_slice_infer, _set_slice_ref, 0, None, (),
               "a functional slice write: x with x[start:stop:step, ...] = v (jax's x.at[...].set(v))"))


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

def _f32_accumulate(fn: Callable) -> Callable:
    """Run `fn` on float32 copies of bf16/fp8 operands and round the result back (fp32 accumulation,
    as every target computes these reductions and matmuls); other dtypes run as NumPy does."""
    def ref(*arrays, **kw):
        dt = np.result_type(*arrays)
        if dt.name not in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
            return fn(*arrays, **kw)
        return np.asarray(fn(*[np.asarray(a, np.float32) for a in arrays], **kw)).astype(dt)
    return ref


for _name, _ref in (("sum", np.sum), ("max", np.max), ("min", np.min)):
    register(OpDef(_name, "reduce", 1, _reduce_infer(_name, _ref),
                   _f32_accumulate((lambda r: lambda x, axes, keepdims=False: r(x, axis=tuple(axes),
                                                                                 keepdims=keepdims))(_ref)),
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


# bf16 @ bf16 is bf16 (f32 accumulation, rounded once), as in JAX and torch; NumPy with ml_dtypes returns f32
register(OpDef("matmul", "contraction", 2, _matmul_infer, _f32_accumulate(np.matmul), 2, None, ("matmul", "dot")))


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
    if d.arity != len(types) and not (d.arity == VARIADIC and types):
        raise ShapeError(f"{op}: takes {d.arity if d.arity != VARIADIC else 'one or more'} operands, got {len(types)}")
    try:
        shape, dt = d.infer([(tuple(s), np.dtype(t)) for s, t in types], attrs)
    except TypeError as e:  # NumPy itself rejects these dtypes (e.g. -x on bool)
        raise DTypeError(f"{op}: not defined for operand dtype(s) {', '.join(str(np.dtype(t)) for _, t in types)} "
                         f"(NumPy: {e}); cast first, e.g. x.astype(np.float32)") from None
    from .dtypes import SUPPORTED, SUPPORTED_NAMES
    if np.dtype(dt) not in SUPPORTED:  # e.g. bool ** bool and bool // bool are int8 in NumPy
        raise DTypeError(f"{op}: NumPy's result for operand dtype(s) {', '.join(str(np.dtype(t)) for _, t in types)} "
                         f"is {np.dtype(dt)}, which is not supported ({SUPPORTED_NAMES}); cast the operands first, "
                         f"e.g. x.astype(np.int32)")
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
    if node.op == "conv2d":
        flops = conv_flops(node)
    elif d.category == "contraction":
        k = node.inputs[0].shape[-1]
        flops = 2 * node.size * k
    elif d.category == "reduce":
        flops = node.inputs[0].size  # one combine per input element
    else:
        flops = d.flops_per_element * node.size
    if node.op == "broadcast_to":
        read = node.inputs[0].nbytes
    elif node.op == "take":   # a gather reads its indices and only the rows they pick
        read = node.inputs[1].nbytes + node.nbytes
    return Cost(int(flops), int(read), int(written))


# ----------------------------------------------------------------------------- convolution
# A sliding window is an injective op (an index mapping, never a copy): out[..., h, w, ..., r, s] =
# x[..., h + r, w + s, ...]. conv2d is a contraction: out[n, oh, ow, k] = sum over kh, kw, ic of
# x[n, oh*sh + kh*dh - pt, ow*sw + kw*dw - pl, g*Cg + ic] * w[kh, kw, ic, k] (g = k's group; zero
# outside x, which is the padding: an indexed load with a bounds select, never a padded copy).
def _window_infer(types: Sequence[Type], attrs: dict) -> Type:
    src = tuple(types[0][0])
    win, axes = tuple(attrs["window_shape"]), tuple(attrs["axes"])
    if len(win) != len(axes) or len(set(axes)) != len(axes) or any(not 0 <= a < len(src) for a in axes):
        raise ShapeError(f"sliding_window_view: window_shape {win} and axis {axes} must pair one window size with "
                         f"each distinct axis of the input of shape {src}")
    for a, r in zip(axes, win):
        if r < 1 or r > src[a]:
            raise ShapeError(f"sliding_window_view: window size {r} on axis {a} does not fit the input of shape {src} "
                             f"(it must be 1 ..{src[a]}); pad the input first (np.pad) or use a smaller window")
    shape = list(src)
    for a, r in zip(axes, win):
        shape[a] -= r - 1
    return tuple(shape) + win, np.dtype(types[0][1])


def _window_ref(x, window_shape, axes):
    from numpy.lib.stride_tricks import sliding_window_view
    return sliding_window_view(x, tuple(window_shape), axis=tuple(axes))


register(OpDef("window", "injective", 1, _window_infer, _window_ref, 0, None, ("sliding_window_view",),
               "a sliding window view: out[..., h, w, ..., r, s] = x[..., h + r, w + s, ...] (no copy)"))

CONV_LAYOUTS = ("NHWC", "NCHW")


def conv_dims(x_shape: Sequence[int], layout: str) -> tuple[int, int, int, int]:
    """(N, H, W, C) of an activation in `layout`."""
    if layout == "NCHW":
        n, c, h, w = x_shape
        return n, h, w, c
    n, h, w, c = x_shape
    return n, h, w, c


def _conv2d_infer(types: Sequence[Type], attrs: dict) -> Type:
    (xs, xdt), (ws, wdt) = types
    layout = attrs.get("layout", "NHWC")
    if layout not in CONV_LAYOUTS:
        raise ShapeError(f"conv2d: layout {layout!r} is not supported; use 'NHWC' or 'NCHW'")
    if len(xs) != 4 or len(ws) != 4:
        raise ShapeError(f"conv2d: the input must be 4-D ({layout}) and the weight 4-D (R, S, C/groups, K), got "
                         f"input {tuple(xs)} and weight {tuple(ws)}")
    n, h, w, c = conv_dims(xs, layout)
    r, s, cg, k = ws
    (sh, sw), (dh, dw), g = attrs["stride"], attrs["dilation"], attrs["groups"]
    (pt, pb), (pl, pr) = attrs["padding"]
    if min(sh, sw, dh, dw) < 1:
        raise ShapeError(f"conv2d: stride {(sh, sw)} and dilation {(dh, dw)} must be positive integers")
    if min(pt, pb, pl, pr) < 0:
        raise ShapeError(f"conv2d: padding {attrs['padding']} cannot be negative")
    if g < 1 or c % g or k % g:
        raise ShapeError(f"conv2d: groups={g} must be >= 1 and divide both the input channels ({c}) and the output "
                         f"channels ({k}); input {tuple(xs)}, weight {tuple(ws)}")
    if cg * g != c:
        raise ShapeError(f"conv2d: the weight {tuple(ws)} has {cg} input channels per group, but the input {tuple(xs)} "
                         f"has {c} channels in {g} group(s) ({c // g} per group); weights are (R, S, C/groups, K)")
    ho = (h + pt + pb - dh * (r - 1) - 1) // sh + 1
    wo = (w + pl + pr - dw * (s - 1) - 1) // sw + 1
    if ho < 1 or wo < 1 or r < 1 or s < 1:
        raise ShapeError(f"conv2d: the {r}x{s} window (dilation {(dh, dw)}) is larger than the padded input "
                         f"{h + pt + pb}x{w + pl + pr} (input {tuple(xs)}, padding {attrs['padding']}); pad more or "
                         f"use a smaller window")
    out = (n, k, ho, wo) if layout == "NCHW" else (n, ho, wo, k)
    return out, np.result_type(xdt, wdt)


def _conv2d_ref(x, w, stride, padding, dilation, groups, layout="NHWC"):
    from numpy.lib.stride_tricks import sliding_window_view
    if layout == "NCHW":
        x = np.transpose(x, (0, 2, 3, 1))
    (sh, sw), (dh, dw) = stride, dilation
    R, S, Cg, K = w.shape
    xp = np.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    win = sliding_window_view(xp, ((R - 1) * dh + 1, (S - 1) * dw + 1), axis=(1, 2))[:, ::sh, ::sw, :, ::dh, ::dw]
    N, Ho, Wo = win.shape[:3]
    win = win.reshape(N, Ho, Wo, groups, Cg, R, S)
    out = np.einsum("nhwgcrs,rscgk->nhwgk", win, w.reshape(R, S, Cg, groups, K // groups))
    out = out.reshape(N, Ho, Wo, K).astype(np.result_type(x.dtype, w.dtype), copy=False)
    return np.ascontiguousarray(np.transpose(out, (0, 3, 1, 2)) if layout == "NCHW" else out)


register(OpDef("conv2d", "contraction", 2, _conv2d_infer, _conv2d_ref, 2, None, ("conv2d",),
               "2-D convolution (stride, padding, dilation, groups): sum over the window and input channels"))


def conv_flops(node) -> int:
    """2·N·Ho·Wo·K·R·S·C/groups: one multiply and one add per weight tap and output element."""
    r, s, cg, _ = node.inputs[1].shape
    return 2 * node.size * r * s * cg
