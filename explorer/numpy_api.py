"""Traced NumPy functions beyond the elementwise core: joining, splitting, statistics, repeat/tile,
padding and einsum — what transformer code written in plain NumPy calls.

Each is NumPy's semantics (dtype promotion, negative axes, keepdims, ddof) built from the
registry's ops: two real injective ops (`concat`, `pad`, lowered to an index mapping with a select,
so they fuse like a slice), everything else a decomposition into existing primitives:

    np.stack / hstack / vstack    reshape (new axis) + concat
    np.split / array_split        slices
    np.var / np.std               mean, subtract, square, sum, divide (+ sqrt)
    np.repeat / np.tile           reshape + broadcast_to + reshape
    np.einsum / np.tensordot      transpose (+ reshape) + matmul, or multiply + sum for vector/outer products

>>> import numpy as np, explorer
>>> g = explorer.trace(lambda q, k: np.einsum("bhqd,bhkd->bhqk", q, k),
...                    np.ones((1, 2, 3, 4), np.float32), np.ones((1, 2, 5, 4), np.float32))
>>> [n.op for n in g.op_nodes()]
['transpose', 'matmul']
"""
from __future__ import annotations

import string
from typing import Any, Sequence

import numpy as np

from . import ops as _ops
from .errors import ShapeError, TraceError, UnsupportedOpError
from .tracing import (NUMPY_FUNCTIONS, Tensor, check_const_dtype, getitem_tensor, int_tuple, keepdims_flag, mean_tensor,
                      reduce_tensor, reject_kwargs, reshape_tensor, tracer_of, transpose_tensor)


def _axis(op: str, axis: Any, ndim: int, shape: tuple[int, ...]) -> int:
    if isinstance(axis, (tuple, list)):
        raise ShapeError(f"{op}: axis must be a single int, got {axis!r}")
    return _ops.normalize_axes(op, axis, ndim, shape)[0]


# ----------------------------------------------------------------------------- joining
def _operands(op: str, arrays: Any) -> list[Any]:
    """The sequence of arrays of a joining function; a traced array stands for its rows (as in NumPy)."""
    if isinstance(arrays, Tensor):
        if arrays.ndim == 0:
            raise ShapeError(f"np.{op}: a 0-d array is not a sequence of arrays; pass a list, e.g. np.{op}([a, b])")
        return [getitem_tensor(arrays, i) for i in range(arrays.shape[0])]
    if not isinstance(arrays, (list, tuple)):
        raise TraceError(f"np.{op}: expected a list or tuple of arrays, got {type(arrays).__name__}")
    if not arrays:
        raise ShapeError(f"np.{op}: need at least one array to join")
    return list(arrays)


def _nodes(op: str, arrays: Sequence[Any]) -> tuple[Any, list[Any]]:
    """(tracer, nodes) for operands that may mix traced arrays and constants (no weak scalars: NumPy
    turns each into an array of its own dtype before joining)."""
    tr = tracer_of([a for a in arrays if isinstance(a, Tensor)])
    nodes = [a.node if isinstance(a, Tensor) else tr.const(_const_array(op, a)) for a in arrays]
    return tr, nodes


def _const_array(op: str, a: Any) -> np.ndarray:
    arr = np.asarray(a)
    check_const_dtype(op, arr.dtype)
    return arr


def _concat(op: str, arrays: Sequence[Any], axis: int) -> Tensor:
    tr, nodes = _nodes(op, arrays)
    if len(nodes) == 1:
        return tr.wrap(nodes[0])
    nd = len(nodes[0].shape)
    if any(len(n.shape) != nd for n in nodes):
        raise ShapeError(f"np.{op}: all arrays must have the same number of dimensions, got shapes "
                         f"{', '.join(str(n.shape) for n in nodes)}")
    if nd == 0:
        raise ShapeError(f"np.{op}: zero-dimensional arrays cannot be concatenated; use np.stack to add an axis")
    return tr.emit("concat", nodes, {"axis": _axis(op, axis, nd, nodes[0].shape)})


def _as_tensorish(op: str, a: Any) -> Any:
    return a if isinstance(a, Tensor) else _const_array(op, a)


def _np_concatenate(arrays, axis=0, out=None, *, dtype=None, casting="same_kind"):
    reject_kwargs("concatenate", out=out, dtype=dtype)
    arrays = _operands("concatenate", arrays)
    if axis is None:
        arrays = [_flat(_as_tensorish("concatenate", a)) for a in arrays]
        axis = 0
    return _concat("concatenate", arrays, axis)


def _flat(a: Any) -> Any:
    return reshape_tensor(a, (-1,)) if isinstance(a, Tensor) else np.ravel(a)


def _with_shape(a: Any, shape: tuple[int, ...]) -> Any:
    if tuple(a.shape) == tuple(shape):
        return a
    return reshape_tensor(a, shape) if isinstance(a, Tensor) else np.reshape(a, shape)


def _np_stack(arrays, axis=0, out=None, *, dtype=None, casting="same_kind"):
    reject_kwargs("stack", out=out, dtype=dtype)
    arrays = [_as_tensorish("stack", a) for a in _operands("stack", arrays)]
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) > 1:
        raise ShapeError(f"np.stack: all input arrays must have the same shape, got "
                         f"{', '.join(str(tuple(a.shape)) for a in arrays)}")
    shape = tuple(arrays[0].shape)
    ax = _axis("stack", axis, len(shape) + 1, shape)
    new = shape[:ax] + (1,) + shape[ax:]
    return _concat("stack", [_with_shape(a, new) for a in arrays], ax)


def _at_least(a: Any, nd: int) -> Any:
    """np.atleast_1d / atleast_2d: leading size-1 axes up to nd dims."""
    shape = tuple(a.shape)
    return a if len(shape) >= nd else _with_shape(a, (1,) * (nd - len(shape)) + shape)


def _np_hstack(tup, *, dtype=None, casting="same_kind"):
    reject_kwargs("hstack", dtype=dtype)
    arrays = [_at_least(_as_tensorish("hstack", a), 1) for a in _operands("hstack", tup)]
    return _concat("hstack", arrays, 0 if arrays[0].ndim == 1 else 1)


def _np_vstack(tup, *, dtype=None, casting="same_kind"):
    reject_kwargs("vstack", dtype=dtype)
    arrays = [_at_least(_as_tensorish("vstack", a), 2) for a in _operands("vstack", tup)]
    return _concat("vstack", arrays, 0)


# ----------------------------------------------------------------------------- splitting
def _split_points(op: str, ary: Tensor, indices_or_sections: Any, axis: int, equal: bool) -> list[tuple[int, int]]:
    n = ary.shape[axis]
    if isinstance(indices_or_sections, (int, np.integer)) and not isinstance(indices_or_sections, bool):
        k = int(indices_or_sections)
        if k <= 0:
            raise ShapeError(f"np.{op}: the number of sections must be larger than 0, got {k}")
        if equal and n % k:
            raise ShapeError(f"np.split: axis {axis} of shape {ary.shape} has size {n}, which {k} sections do not "
                             f"divide equally; use np.array_split for unequal sections, or split at indices")
        each, extra = divmod(n, k)
        sizes = [each + 1] * extra + [each] * (k - extra)
        bounds = np.cumsum([0] + sizes)
        return [(int(bounds[i]), int(bounds[i + 1])) for i in range(k)]
    idx = int_tuple(indices_or_sections)
    if idx is None:
        raise ShapeError(f"np.{op}: indices_or_sections must be an int or a list of ints, got {indices_or_sections!r}")
    pts = (0,) + idx + (n,)
    return list(zip(pts[:-1], pts[1:]))


def _split(op: str, ary: Any, indices_or_sections: Any, axis: Any, equal: bool) -> list[Tensor]:
    ax = _axis(op, axis, ary.ndim, ary.shape)
    out = []
    for a, b in _split_points(op, ary, indices_or_sections, ax, equal):
        # Python slice semantics, as NumPy's split uses: negative indices wrap, large ones clip
        out.append(getitem_tensor(ary, (slice(None),) * ax + (slice(a, b),)))
    return out


def _np_split(ary, indices_or_sections, axis=0):
    return _split("split", ary, indices_or_sections, axis, True)


def _np_array_split(ary, indices_or_sections, axis=0):
    return _split("array_split", ary, indices_or_sections, axis, False)


# ----------------------------------------------------------------------------- statistics
def _var(op: str, a: Tensor, axis: Any, ddof: Any, keepdims: bool, correction: Any) -> Tensor:
    """np.var as NumPy computes it: mean with keepdims, squared deviations, their sum / (n - ddof).

    Integers/bool work in float64 and float16 in float32 (cast back), like np.mean."""
    if correction is not np._NoValue and correction is not None:
        if ddof not in (0, None):
            raise TraceError(f"np.{op}: ddof and correction are the same argument; pass only one")
        ddof = correction
    if isinstance(ddof, bool) or not isinstance(ddof, (int, float, np.integer, np.floating)):
        raise TraceError(f"np.{op}: ddof must be a number, got {ddof!r}")
    axes = _ops.normalize_axes(op, axis, a.ndim, a.shape)
    count = int(np.prod([a.shape[k] for k in axes], dtype=np.int64))
    xs = a.astype(np.float64) if a.dtype.kind in "biu" else a.astype(np.float32) if a.dtype == np.float16 else a
    dev = xs - mean_tensor(xs, axes, True)
    r = reduce_tensor("sum", dev * dev, axes, keepdims) / max(count - ddof, 0)
    return r.astype(np.float16) if a.dtype == np.float16 else r


def _np_var(a, axis=None, dtype=None, out=None, ddof=0, keepdims=np._NoValue, *, where=np._NoValue,
            mean=np._NoValue, correction=np._NoValue):
    reject_kwargs("var", dtype=dtype, out=out, where=where, mean=mean)
    return _var("var", a, axis, ddof, keepdims_flag(keepdims), correction)


def _np_std(a, axis=None, dtype=None, out=None, ddof=0, keepdims=np._NoValue, *, where=np._NoValue,
            mean=np._NoValue, correction=np._NoValue):
    reject_kwargs("std", dtype=dtype, out=out, where=where, mean=mean)
    v = _var("std", a, axis, ddof, keepdims_flag(keepdims), correction)
    return np.sqrt(v)


# ----------------------------------------------------------------------------- repeat / tile
def _np_repeat(a, repeats, axis=None):
    """Each element `repeats` times along axis: reshape to add an axis, broadcast it, merge it back.
    Per-element counts (a list) join broadcast slices with concat."""
    if axis is None:
        a, axis = reshape_tensor(a, (-1,)), 0
    ax = _axis("repeat", axis, a.ndim, a.shape)
    n = a.shape[ax]
    if isinstance(repeats, Tensor):
        raise TraceError("np.repeat: the counts cannot be a traced array (the output shape would depend on data); "
                         "pass Python ints")
    counts = int_tuple(repeats) if not isinstance(repeats, (int, np.integer)) else (int(repeats),)
    if counts is None or isinstance(repeats, bool):
        raise ShapeError(f"np.repeat: repeats must be an int or a list of ints, got {repeats!r}")
    if any(c < 0 for c in counts):
        raise ShapeError(f"np.repeat: repeats must be non-negative, got {repeats!r}")
    if len(counts) == 1:
        return _repeat_each(a, ax, counts[0])
    if len(counts) != n:
        raise ShapeError(f"np.repeat: {len(counts)} counts given for axis {ax} of shape {a.shape} (size {n}); "
                         f"give one count per element or a single int")
    if len(set(counts)) == 1:
        return _repeat_each(a, ax, counts[0])
    parts = [_repeat_each(getitem_tensor(a, (slice(None),) * ax + (slice(i, i + 1),)), ax, c)
             for i, c in enumerate(counts) if c]
    if not parts:  # all counts zero: an empty axis, as NumPy returns
        return getitem_tensor(a, (slice(None),) * ax + (slice(0, 0),))
    return _concat("repeat", parts, ax)


def _repeat_each(a: Tensor, ax: int, r: int) -> Tensor:
    if r == 1:
        return a
    s = a.shape
    x = reshape_tensor(a, s[:ax + 1] + (1,) + s[ax + 1:])
    x = x.tracer.emit("broadcast_to", [x.node], {"shape": s[:ax + 1] + (r,) + s[ax + 1:]})
    return reshape_tensor(x, s[:ax] + (s[ax] * r,) + s[ax + 1:])


def _np_tile(A, reps):
    """np.tile: every axis d becomes (reps[d], size[d]) by broadcasting a new leading axis, then merged."""
    ints = (int(reps),) if isinstance(reps, (int, np.integer)) and not isinstance(reps, bool) else int_tuple(reps)
    if ints is None or any(r < 0 for r in ints):
        raise ShapeError(f"np.tile: reps must be a non-negative int or a tuple of them, got {reps!r}")
    nd = max(A.ndim, len(ints))
    shape = (1,) * (nd - A.ndim) + tuple(A.shape)
    ints = (1,) * (nd - len(ints)) + ints
    if all(r == 1 for r in ints):
        return reshape_tensor(A, shape)
    x = reshape_tensor(A, tuple(d for s in shape for d in (1, s)))
    x = x.tracer.emit("broadcast_to", [x.node], {"shape": tuple(d for r, s in zip(ints, shape) for d in (r, s))})
    return reshape_tensor(x, tuple(r * s for r, s in zip(ints, shape)))


# ----------------------------------------------------------------------------- pad
def _pad_width(pad_width: Any, ndim: int) -> tuple[tuple[int, int], ...]:
    arr = np.asarray(pad_width)
    if arr.dtype.kind not in "iu":
        raise ShapeError(f"np.pad: pad_width must be ints, got {pad_width!r}")
    try:
        pairs = np.broadcast_to(arr, (ndim, 2))
    except ValueError:
        raise ShapeError(f"np.pad: pad_width {pad_width!r} does not fit an array with {ndim} dims; give an int, "
                         f"a (before, after) pair, or one pair per axis") from None
    if (pairs < 0).any():
        raise ShapeError(f"np.pad: pad_width cannot be negative, got {pad_width!r}")
    return tuple((int(lo), int(hi)) for lo, hi in pairs)


def _np_pad(array, pad_width, mode="constant", **kwargs):
    if mode != "constant":
        raise UnsupportedOpError(f"np.pad(mode={mode!r}) is not supported; only mode='constant' (with "
                                 f"constant_values=c) is")
    bad = sorted(set(kwargs) - {"constant_values"})
    if bad:
        raise TraceError(f"np.pad: argument(s) {', '.join(bad)} are not supported; only constant_values")
    value = kwargs.get("constant_values", 0)
    if isinstance(value, Tensor):
        raise TraceError("np.pad: constant_values cannot be a traced array; pass a Python number")
    v = np.asarray(value)
    if v.size != 1 or v.dtype.kind not in "biuf":
        raise UnsupportedOpError(f"np.pad: constant_values must be one number, got {value!r}; per-axis values are "
                                 f"not supported (pad one axis at a time)")
    with np.errstate(all="ignore"):
        const = v.reshape(()).astype(array.dtype).item()
    if array.ndim == 0:
        raise ShapeError("np.pad: cannot pad a 0-d array")
    return array.tracer.emit("pad", [array.node], {"pads": _pad_width(pad_width, array.ndim), "value": const})


# ----------------------------------------------------------------------------- einsum / tensordot
_LETTERS = set(string.ascii_letters)


def _parse_einsum(subscripts: Any, n_operands: int) -> tuple[list[str], str]:
    if not isinstance(subscripts, str):
        raise UnsupportedOpError("np.einsum: only the subscripts-string form is supported, e.g. "
                                 "np.einsum('ij,jk->ik', a, b)")
    s = subscripts.replace(" ", "")
    if "." in s:
        raise UnsupportedOpError(f"np.einsum({subscripts!r}): ellipsis ('...') is not supported; name every axis")
    if "->" in s:
        lhs, out = s.split("->", 1)
    else:  # implicit output: the indices that appear exactly once, sorted
        lhs = s
        out = "".join(sorted(c for c in set(lhs) if c in _LETTERS and lhs.count(c) == 1))
    ins = lhs.split(",")
    if any(set(t) - _LETTERS for t in ins + [out]):
        raise UnsupportedOpError(f"np.einsum({subscripts!r}): subscripts must be letters, commas and one '->'")
    if len(ins) != n_operands:
        raise ShapeError(f"np.einsum({subscripts!r}): {len(ins)} operand subscript(s) but {n_operands} operand(s)")
    for t in ins + [out]:
        if len(set(t)) != len(t):
            raise UnsupportedOpError(f"np.einsum({subscripts!r}): a repeated index within one operand ({t!r}: a "
                                     f"diagonal or trace) is not supported; mask instead, e.g. the trace of a is "
                                     f"(a * np.eye(len(a), dtype=a.dtype)).sum()")
    missing = set(out) - set("".join(ins))
    if missing:
        raise ShapeError(f"np.einsum({subscripts!r}): output index {''.join(sorted(missing))!r} does not appear in "
                         f"any operand")
    if len(ins) > 3:
        raise UnsupportedOpError(f"np.einsum({subscripts!r}): at most 3 operands are supported (contracted "
                                 f"left to right), got {len(ins)}")
    return ins, out


def _einsum_reduce(x: Tensor, axes: tuple[int, ...]) -> Tensor:
    """einsum's sum over `axes`, in x's dtype as in NumPy (np.sum would widen): on bool a logical or (any
    element True); on int32 the int64 sum cast back, which wraps exactly as NumPy's int32 accumulation."""
    total = reduce_tensor("sum", x, axes, False)
    if x.dtype == np.bool_:
        return total != 0
    return total if total.dtype == x.dtype else total.astype(x.dtype)


def _einsum_sum(x: Tensor, sub: str, keep: str) -> tuple[Tensor, str]:
    """Sum x over the indices of `sub` not in `keep`."""
    gone = tuple(k for k, c in enumerate(sub) if c not in keep)
    if not gone:
        return x, sub
    return _einsum_reduce(x, gone), "".join(c for c in sub if c in keep)


def _permute(x: Tensor, sub: str, order: str) -> Tensor:
    if sub == order:
        return x
    return transpose_tensor(x, tuple(sub.index(c) for c in order))


def _einsum_pair(a: Tensor, sa: str, b: Tensor, sb: str, keep: str, sizes: dict[str, int]) -> tuple[Tensor, str]:
    """Contract a and b down to the indices in `keep`.

    With free indices on both sides and a contracted one, one matmul: a → [batch..., free_a, contracted],
    b → [batch..., contracted, free_b] (batch indices stay separate axes: matmul broadcasts them; a group of
    several free or contracted indices is merged by a reshape). A vector or outer product (no contracted
    index, or no free index on a side: M, N or K would be 1) is a broadcast multiply and a sum instead."""
    a, sa = _einsum_sum(a, sa, keep + sb)
    b, sb = _einsum_sum(b, sb, keep + sa)
    batch = "".join(c for c in sa if c in sb and c in keep)
    contr = "".join(c for c in sa if c in sb and c not in keep)
    fa = "".join(c for c in sa if c not in sb)
    fb = "".join(c for c in sb if c not in sa)
    if not (contr and fa and fb):
        order = batch + fa + fb + contr
        r = _aligned(a, sa, order, sizes) * _aligned(b, sb, order, sizes)
        if contr:
            r = _einsum_reduce(r, tuple(range(len(order) - len(contr), len(order))))
        return r, batch + fa + fb
    prod = lambda cs: int(np.prod([sizes[c] for c in cs], dtype=np.int64))  # noqa: E731
    lead = tuple(sizes[c] for c in batch)
    am = _with_shape(_permute(a, sa, batch + fa + contr), lead + (prod(fa), prod(contr)))
    bm = _with_shape(_permute(b, sb, batch + contr + fb), lead + (prod(contr), prod(fb)))
    res = batch + fa + fb
    return _with_shape(am @ bm, tuple(sizes[c] for c in res)), res


def _aligned(x: Tensor, sx: str, order: str, sizes: dict[str, int]) -> Tensor:
    """x with its axes in `order`, size 1 where x lacks an index (ready to broadcast)."""
    x = _permute(x, sx, "".join(c for c in order if c in sx))
    return _with_shape(x, tuple(sizes[c] if c in sx else 1 for c in order))


def _np_einsum(*operands, out=None, optimize=False, **kwargs):
    reject_kwargs("einsum", out=out, **{k: v for k, v in kwargs.items() if k != "casting"})
    if not operands:
        raise TraceError("np.einsum needs a subscripts string and operands")
    subscripts, arrays = operands[0], list(operands[1:])
    ins, out_sub = _parse_einsum(subscripts, len(arrays))
    arrays = [_as_tensorish("einsum", x) for x in arrays]
    sizes: dict[str, int] = {}
    for t, x in zip(ins, arrays):
        if len(t) != x.ndim:
            raise ShapeError(f"np.einsum({subscripts!r}): operand subscripts {t!r} name {len(t)} axes but the "
                             f"operand has shape {tuple(x.shape)}")
        for c, s in zip(t, x.shape):
            if sizes.setdefault(c, s) != s:
                raise ShapeError(f"np.einsum({subscripts!r}): index {c!r} has size {sizes[c]} in one operand and "
                                 f"{s} in another (broadcasting size-1 axes is not supported)")
    tr = tracer_of([x for x in arrays if isinstance(x, Tensor)])
    xs = [x if isinstance(x, Tensor) else tr.wrap(tr.const(x)) for x in arrays]
    from .conv import conv_from_einsum   # a contraction over a sliding window: one conv2d node
    conv = conv_from_einsum(subscripts, ins, out_sub, xs)
    if conv is not None:
        return conv
    acc, sub = xs[0], ins[0]
    for k in range(1, len(xs)):
        later = "".join(ins[k + 1:]) + out_sub
        acc, sub = _einsum_pair(acc, sub, xs[k], ins[k], later, sizes)
    acc, sub = _einsum_sum(acc, sub, out_sub)
    return _permute(acc, sub, out_sub)


def _np_tensordot(a, b, axes=2):
    """np.tensordot as the einsum it is: contract a's `axes[0]` with b's `axes[1]`."""
    a, b = _as_tensorish("tensordot", a), _as_tensorish("tensordot", b)
    if isinstance(axes, (int, np.integer)):
        n = int(axes)
        if n < 0 or n > min(a.ndim, b.ndim):
            raise ShapeError(f"np.tensordot: axes={n} does not fit shapes {tuple(a.shape)} and {tuple(b.shape)}")
        ax_a, ax_b = tuple(range(a.ndim - n, a.ndim)), tuple(range(n))
    else:
        try:
            ax_a, ax_b = ((x,) if isinstance(x, (int, np.integer)) else tuple(x) for x in axes)
        except (TypeError, ValueError):
            raise ShapeError(f"np.tensordot: axes must be an int or a pair of axis lists, got {axes!r}") from None
        if len(ax_a) != len(ax_b):
            raise ShapeError(f"np.tensordot: axes {axes!r} pair {len(ax_a)} axes of a with {len(ax_b)} of b")
        ax_a = tuple(_axis("tensordot", x, a.ndim, tuple(a.shape)) for x in ax_a)
        ax_b = tuple(_axis("tensordot", x, b.ndim, tuple(b.shape)) for x in ax_b)
    letters = iter(string.ascii_letters)
    sa = [next(letters) for _ in range(a.ndim)]
    sb = [next(letters) for _ in range(b.ndim)]
    for i, j in zip(ax_a, ax_b):
        sb[j] = sa[i]
    out = "".join(c for k, c in enumerate(sa) if k not in ax_a) + "".join(c for k, c in enumerate(sb) if k not in ax_b)
    return _np_einsum(f"{''.join(sa)},{''.join(sb)}->{out}", a, b)


def _np_moveaxis(a, source, destination):
    def axes(v: Any) -> tuple[int, ...]:
        return tuple(_axis("moveaxis", x, a.ndim, a.shape) for x in (v if isinstance(v, (list, tuple)) else (v,)))
    src, dst = axes(source), axes(destination)
    if len(src) != len(dst) or len(set(src)) != len(src) or len(set(dst)) != len(dst):
        raise ShapeError(f"np.moveaxis: source {source!r} and destination {destination!r} must name the same "
                         f"number of distinct axes")
    order = [k for k in range(a.ndim) if k not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return transpose_tensor(a, tuple(order))


NUMPY_FUNCTIONS.update({
    np.concatenate: _np_concatenate, np.stack: _np_stack, np.hstack: _np_hstack, np.vstack: _np_vstack,
    np.split: _np_split, np.array_split: _np_array_split, np.var: _np_var, np.std: _np_std,
    np.repeat: _np_repeat, np.tile: _np_tile, np.pad: _np_pad, np.einsum: _np_einsum,
    np.tensordot: _np_tensordot, np.moveaxis: _np_moveaxis,
})
from . import conv as _conv  # noqa: E402,F401  (registers sliding_window_view)
if hasattr(np, "concat") and np.concat is not np.concatenate:  # pragma: no cover - NumPy 2 aliases them
    NUMPY_FUNCTIONS[np.concat] = _np_concatenate



# ----------------------------------------------------------------------------- the documented surface
# Notes for docs/NUMPY.md, keyed by NumPy name (without np.). Names the tracer supports but that have no
# note here get their category's note; a note for a name the tracer does not support fails the test.
NOTES: dict[str, str] = {
    "concatenate": "any number of operands, dtype promotion, negative axis, axis=None; one fusable `concat` op",
    "concat": "alias of np.concatenate (NumPy 2)",
    "stack": "new axis (negative allowed) + concat; operands must share a shape",
    "hstack": "concat on axis 1 (axis 0 for 1-D)",
    "vstack": "1-D operands become rows; concat on axis 0",
    "split": "sections (must divide the axis) or index lists; slices",
    "array_split": "unequal sections allowed (NumPy's sizes); slices",
    "var": "axis, keepdims, ddof/correction; ints in float64, float16 via float32; mean + squared deviations",
    "std": "as np.var, then sqrt",
    "repeat": "int or per-element counts, axis=None flattens; reshape + broadcast_to (+ concat for per-element)",
    "tile": "reps as int or tuple; reshape + broadcast_to + reshape",
    "pad": "mode='constant' only, one scalar constant_values; one fusable `pad` op",
    "einsum": "subscripts string, up to 3 operands, no '...' or repeated index in one operand; a sliding-window "
              "convolution is one `conv2d` node (see sliding_window_view); otherwise "
              "transpose (+ reshape) + batched matmul, or multiply + sum for vector and outer products",
    "tensordot": "int axes or axis pairs; through einsum",
    "moveaxis": "transpose",
    "swapaxes": "transpose",
    "transpose": "axes tuple or reversed",
    "reshape": "C order; one -1",
    "ravel": "C order",
    "squeeze": "axis None, int or tuple; the axes must have size 1",
    "expand_dims": "int or tuple axis",
    "broadcast_to": "NumPy broadcasting",
    "sum": "axis, keepdims; no dtype=/initial=/where=",
    "max": "axis, keepdims", "amax": "axis, keepdims", "min": "axis, keepdims", "amin": "axis, keepdims",
    "mean": "axis, keepdims; ints in float64, float16 via float32",
    "cumsum": "a scan: its own kernel (does not fuse)",
    "matmul": "batched with broadcast batch dims; both operands >= 2-D",
    "dot": "2-D operands only (use @ for batches)",
    "where": "three-argument form only",
    "clip": "np.maximum / np.minimum",
    "square": "x * x",
    "positive": "identity",
    "bitwise_and": "bool arrays only (logical and)",
    "bitwise_or": "bool arrays only (logical or)",
    "invert": "bool arrays only (logical not)",
    "shape": "static", "ndim": "static", "size": "static",
}
# methods whose name differs from, or has no, NumPy function
METHOD_OF = {"add": "x + y", "subtract": "x - y", "multiply": "x * y", "true_divide": "x / y", "divide": "x / y",
             "power": "x ** y", "matmul": "x @ y", "negative": "-x", "positive": "+x", "abs": "abs(x)",
             "absolute": "abs(x)", "less": "x < y", "less_equal": "x <= y", "greater": "x > y",
             "greater_equal": "x >= y", "equal": "x == y", "not_equal": "x != y", "bitwise_and": "x & y",
             "bitwise_or": "x | y", "invert": "~x", "amax": "x.max", "amin": "x.min"}
# rows for traced-array features that are not NumPy functions
EXTRA_ROWS: list[tuple[str, str, str]] = [
    ("sliding_window_view", "", "numpy.lib.stride_tricks: a `window` op (an index mapping, no copy); np.einsum of a "
                                "(strided ::s, dilated taps) window of a zero np.pad with a weight, 'nhwcrs,rsck->nhwk', "
                                "depthwise 'nhwcrs,rsc->nhwc' or NCHW 'nchwrs,kcrs->nkhw', is ONE `conv2d` node "
                                "(explorer.nn.conv2d records the same)"),
    ("", "x[...]", "basic indexing: ints (negative too), slices with steps, None, ...; integer-array indexing "
                   "(gather) and writes (x[m] = v, +=): see their rows"),
    ("", "x[ids]", "gather (`take` op): one integer index array (i32/i64, traced or constant, negative wraps) "
                   "mixed with ints, slices, None, ...; out-of-range ids raise IndexOutOfRangeError before "
                   "any kernel runs; two index arrays are not supported"),
    ("", "x[mask] = v", "functional update: becomes np.where(mask, v, x); x[mask] read alone is not supported"),
    ("", "x[a:b] = v", "functional update (`set_slice` op): basic index with broadcasting, steps and negative steps"),
    ("", "x[ids] = v", "constant ids: one write per index, last wins; run-time ids: up to 64, 1-D, full slices "
                       "elsewhere"),
    ("", "x += y", "also -=, *=, /=, **=, &=, |=: rebinds x to a new value (the caller's array is never "
                   "written), keeping x's shape and dtype by NumPy's casting rule"),
    ("", "x.astype", "to any supported dtype (f16, f32, f64, i32, i64, bool)"),
    ("", "x.T", "reversed axes"),
    ("", "x.flatten", "as ravel"),
    ("", "x.copy", "a new array: later writes to it leave x alone"),
]
ATTRIBUTES = ("dtype", "ndim", "shape", "size", "T")


def numpy_surface() -> list[tuple[str, str, str]]:
    """(numpy, method, notes) for every supported NumPy name, then the traced-array-only rows."""
    from .tracing import supported_numpy_names, tensor_methods, ufunc_table
    methods = set(tensor_methods()) - set(ATTRIBUTES)
    ufuncs = set(ufunc_table())
    rows = []
    for name in supported_numpy_names():
        meth = METHOD_OF.get(name) or (f"x.{name}" if name in methods else "")
        note = NOTES.get(name) or ("elementwise ufunc; NumPy 2 promotion (Python scalars are weak)"
                                   if name in ufuncs else "")
        rows.append((f"np.{name}", meth, note))
    covered = {m[2:] for _, m, _ in rows + EXTRA_ROWS if m.startswith("x.")}
    rows += EXTRA_ROWS + [("", f"x.{m}", "") for m in sorted(methods - covered)]
    return rows


def numpy_surface_markdown() -> str:
    """The text of docs/NUMPY.md (tests/test_numpy_surface.py checks the file equals it)."""
    lines = ["# The supported NumPy surface", "",
             "Generated from the tracer's tables (`explorer/numpy_api.py`); `tests/test_numpy_surface.py` fails "
             "when this file and the tracer disagree. Rewrite it with "
             "`python -m explorer numpy-doc > docs/NUMPY.md`.",
             "", "Anything else raises `UnsupportedOpError` naming the op, your line and the closest names below.",
             "", "| numpy | method | notes |", "|---|---|---|"]
    cell = lambda t: t.replace("|", "\\|")  # noqa: E731  (x | y inside a table cell)
    lines += [f"| {a} | {'`' + cell(b) + '`' if b else ''} | {cell(c)} |" for a, b, c in numpy_surface()]
    return "\n".join(lines) + "\n"

