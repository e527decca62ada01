"""Advanced indexing and writes in traced code: gathers, masked selections, functional updates.

Reads
    x[ids], wte[ids], x[:, [-1]], np.take(x, ids, axis)   → take(x, ids, axis)  (a gather: injective,
        its loop-IR lowering loads the index, then the data: x[ids[i], j])
    x[mask]                                              → a MaskedSelection: usable only to compute a
        value written back with the same mask (`y[m] = y[m] * a`), because its shape is data-dependent
Writes (functional updates, like jax's x.at[key].set(v); the proxy x then holds the updated array)
    x[mask] = v                        → where(mask, v, x)
    x[1:3, :, 0] = v  (basic indices)  → set_slice(x, v)  (v broadcast to the written region)
    x[[0, 2]] = v  (constant indices)  → one set_slice per index, in order (the last write wins)
    x[:, pos] = v  (run-time indices)  → where(arange(n) == arange(n)[pos], v, x), one per index (≤ 64)
Constant index arrays that step evenly (x[:, [-1]], wpe[range(T)]) become slices (affine, fusable).
    x += y, x *= y, ...                → x = (x + y) cast back to x's dtype, as NumPy's in-place ops

>>> import numpy as np, explorer
>>> def f(z, a):
...     _z = z.copy()
...     m = z < 0
...     _z[m] = _z[m] * a
...     return _z
>>> g = explorer.trace(f, np.ones(4, np.float32), np.float32(0.1))
>>> [n.op for n in g.op_nodes()]
['lt', 'mul', 'where']

Aliasing follows NumPy for the common patterns: `y = x.copy()` (and x.flatten()) is a new array; a
write to a view taken by basic indexing writes through to its base (`x[1:3] += v`, `v = y[0]; v *= 2`
updates y too); any other array sharing the memory (other views, views from reshape/transpose) becomes
unusable: reading it afterwards raises TraceError naming the write, since NumPy would show it new values.
A write never reaches the caller's input arrays: the compiled function returns new arrays.
Run-time index values are checked before any kernel runs (`check_indices`): an out-of-range index
raises IndexOutOfRangeError, as NumPy raises IndexError.
"""
from __future__ import annotations

import ast
import inspect
import sys
from typing import Any, Sequence

import numpy as np

from .errors import DTypeError, IndexOutOfRangeError, ShapeError, TraceError, UnsupportedOpError
from .graph import Graph, Node
from .tracing import (INTERNAL_MODULES, Tensor, basic_getitem, basic_index_plan, is_internal_module,
                      reshape_tensor, tracer_of, transpose_tensor, user_provenance)

INTERNAL_MODULES.add(__name__)   # provenance skips this module's frames, as the tracer's own

# constant integer index arrays up to this many entries may be written (x[[0, 2]] = v): one
# set_slice per entry; longer ones would make as many nodes
MAX_CONST_SCATTER = 64


# ----------------------------------------------------------------------------- classifying an index
def _is_bool_array(e: Any) -> bool:
    if isinstance(e, Tensor):
        return e.dtype == np.bool_
    if isinstance(e, np.ndarray):
        return e.dtype == np.bool_
    if isinstance(e, list):
        try:
            return np.asarray(e).dtype == np.bool_
        except Exception:      # ragged, or holding traced values (reported by _index_operand)
            return False
    return False


def _is_array_index(e: Any) -> bool:
    return isinstance(e, (Tensor, np.ndarray, list, range))


def _progression_slice(ids: np.ndarray, size: int) -> slice | None:
    """A 1-D constant index array (already wrapped into [0, size)) that steps evenly, as the slice selecting
    the same elements in the same order: x[:, [-1]] → x[:, size-1:size], wpe[range(T)] → wpe[0:T]. A slice
    is affine, so it stays fusable everywhere (matmul operand staging included), unlike a gather."""
    if ids.ndim != 1 or ids.size == 0:
        return None
    start = int(ids[0])
    step = int(ids[1] - ids[0]) if ids.size > 1 else 1
    if step == 0 or np.any(ids != start + step * np.arange(ids.size)):
        return None
    stop = start + step * ids.size
    return slice(start, stop if stop >= 0 else None, step)


def is_advanced(idx: Any) -> bool:
    """Does the index hold an integer/boolean array or list (NumPy's advanced indexing)?"""
    entries = idx if isinstance(idx, tuple) else (idx,)
    return any(_is_array_index(e) or isinstance(e, MaskedSelection) for e in entries)


def _expand(idx: tuple, ndim: int) -> tuple:
    """Replace the ellipsis by full slices (advanced entries count as one indexed axis each)."""
    n_ell = sum(1 for e in idx if e is Ellipsis)
    if n_ell > 1:
        raise ShapeError("an index can only have a single ellipsis ('...')")
    n_real = sum(1 for e in idx if e is not None and e is not Ellipsis)
    if n_real > ndim:
        raise ShapeError(f"too many indices for an array of {ndim} dimension(s): {n_real} were indexed")
    if n_ell:
        k = next(i for i, e in enumerate(idx) if e is Ellipsis)   # not idx.index: == on a Tensor is traced
        return idx[:k] + (slice(None),) * (ndim - n_real) + idx[k + 1:]
    return idx + (slice(None),) * (ndim - n_real)


def _index_operand(e: Any, what: str) -> Tensor | np.ndarray:
    """An integer index array as a Tensor (run-time values) or an np.ndarray (constant)."""
    if isinstance(e, Tensor):
        arr_dt = e.dtype
    else:
        if isinstance(e, list) and any(isinstance(v, Tensor) for v in e):
            raise TraceError(f"{what}: an index list holds traced values; index with the traced array itself "
                             f"(x[ids]), or np.stack the values first")
        try:
            e = np.asarray(e)
        except (ValueError, TypeError) as err:
            raise TraceError(f"{what}: the index list cannot be made an array ({err}); use a flat list of ints") from None
        if e.size == 0 and e.dtype.kind == "f":
            e = e.astype(np.int64)      # x[[]]: NumPy treats an empty list as an integer index
        arr_dt = e.dtype
    if np.dtype(arr_dt).kind not in "iu":
        raise DTypeError(f"{what}: arrays used as indices must be of integer (or boolean) type, got {arr_dt}; "
                         f"cast with .astype(np.int64)")
    return e


def _const_indices(ids: np.ndarray, size: int, axis: int, what: str) -> np.ndarray:
    """Constant indices checked against the axis (NumPy's IndexError at trace time) and wrapped."""
    ids = ids.astype(np.int64)
    bad = (ids < -size) | (ids >= size)
    if bad.any():
        v = int(ids[bad].reshape(-1)[0])
        raise IndexOutOfRangeError(f"{what}: index {v} is out of bounds for axis {axis} with size {size}; "
                                   f"valid indices are {-size}..{size - 1}")
    ids = np.where(ids < 0, ids + size, ids)
    return ids.astype(np.int32) if size < 2 ** 31 else ids


def _array_index(x: Tensor, entries: tuple, what: str, several: str) -> tuple[tuple, int, Any, int]:
    """(entries expanded to x.ndim, position k of the one index array, the index operand, the data axis
    it indexes) for a read or write with one integer index array; `several` is the error for more."""
    if sum(1 for e in entries if _is_array_index(e)) > 1:
        raise UnsupportedOpError(several)
    full = _expand(tuple(entries), x.ndim)
    k = next(i for i, e in enumerate(full) if _is_array_index(e))
    return full, k, _index_operand(full[k], what), sum(1 for e in full[:k] if e is not None)


# ----------------------------------------------------------------------------- reads
def getitem(x: Tensor, idx: Any):
    """x[idx] with an integer array/list (gather) or a boolean mask (MaskedSelection)."""
    entries = idx if isinstance(idx, tuple) else (idx,)
    masks = [e for e in entries if _is_bool_array(e) or isinstance(e, MaskedSelection)]
    if masks:
        return _mask_select(x, entries)
    full, k, ids, data_axis = _array_index(
        x, entries, "x[ids]",
        "indexing with more than one integer array (x[ids0, ids1]) is not supported in traced code; index one "
        "axis at a time (x[ids0][:, ids1] for outer indexing) or flatten: x.reshape(-1)[ids0 * x.shape[1] + ids1]")
    no_ints = not any(isinstance(e, (int, np.integer)) for e in full)   # else NumPy may move the dims first
    if not isinstance(ids, Tensor) and no_ints:
        sl = _progression_slice(_const_indices(ids, x.shape[data_axis], data_axis, "x[ids]"), x.shape[data_axis])
        if sl is not None:
            return basic_getitem(x, full[:k] + (sl,) + full[k + 1:])
    basic = full[:k] + (slice(None),) + full[k + 1:]
    base = basic_getitem(x, basic)
    pos = sum(1 for e in full[:k] if not isinstance(e, (int, np.integer)))   # ints before k drop their axis
    out = _take(base, ids, pos, data_axis, x.shape[data_axis])
    # NumPy: an int index counts as an advanced index too; when the advanced indices are not next to
    # each other (x[0, :, ids]; an ellipsis separates them even when it stands for no axis), their
    # broadcast dims go first
    adv = [i for i, e in enumerate(entries) if _is_array_index(e) or isinstance(e, (int, np.integer))]
    if adv != list(range(adv[0], adv[-1] + 1)) and pos != 0:
        nd = len(ids.shape)
        perm = list(range(pos, pos + nd)) + [a for a in range(out.ndim) if not pos <= a < pos + nd]
        out = transpose_tensor(out, tuple(perm))
    return out


def _take(data: Tensor, ids: Any, axis: int, data_axis: int, size: int) -> Tensor:
    what = "x[ids]"
    if isinstance(ids, Tensor):
        node = ids.node
    else:
        node = data.tracer.const(_const_indices(ids, size, data_axis, what))
    return data.tracer.emit("take", [data.node, node], {"axis": axis})


def np_take(a: Any, indices: Any, axis: Any = None, out: Any = None, mode: str = "raise") -> Tensor:
    """np.take(a, indices, axis) on a traced array (mode='raise' only). NumPy dispatches np.take on `a` (and
    `out`) alone, so np.take(captured_ndarray, traced_ids) never reaches here: it fails in __array__."""
    if out is not None:
        raise TraceError("np.take(..., out=...) writes in place, which traced code cannot do; use the returned value")
    if mode != "raise":
        raise UnsupportedOpError(f"np.take(mode={mode!r}) is not supported in traced code; only mode='raise' "
                                 f"(use np.clip on the indices for mode='clip')")
    if axis is None:
        a = reshape_tensor(a, (-1,))
        axis = 0
    from .ops import normalize_axes
    ax = normalize_axes("take", axis, a.ndim, a.shape)[0]
    ids = _index_operand(indices, "np.take")
    if not isinstance(ids, Tensor) and ids.ndim == 0:   # a scalar index drops the axis
        return basic_getitem(a, (slice(None),) * ax + (int(ids),))
    return _take(a, ids, ax, ax, a.shape[ax])


# ----------------------------------------------------------------------------- masked selections
def _mask_node(x: Tensor, entries: tuple, what: str) -> tuple[Node, int]:
    """The mask of x[mask] / x[mask, ...] as a bool node, and how many leading axes it covers."""
    rest = [e for e in entries[1:] if not (e is Ellipsis or (isinstance(e, slice) and e == slice(None)))]
    m = entries[0]
    if rest or not (_is_bool_array(m) or isinstance(m, MaskedSelection)):
        raise UnsupportedOpError(f"{what}: a boolean mask is supported as the only index (x[mask], x[mask, ...]); "
                                 f"use np.where(mask, a, b) for other masked updates")
    if isinstance(m, MaskedSelection):
        raise m._masked_selection_error("an index")
    if isinstance(m, Tensor):
        node = m.node
    else:
        node = x.tracer.const(np.asarray(m, dtype=bool))
    if node.shape != x.shape[:len(node.shape)]:
        raise ShapeError(f"{what}: the boolean mask of shape {node.shape} does not match the array of shape "
                         f"{x.shape} (NumPy needs the mask's shape to equal the leading dimensions)")
    return node, len(node.shape)


def _mask_select(x: Tensor, entries: tuple) -> "MaskedSelection":
    node, k = _mask_node(x, entries, "x[mask]")
    return MaskedSelection(Tensor(x.node, x.tracer), node, k)


def _same_value(a: Node, b: Node, depth: int = 0) -> bool:
    """The two nodes compute the same value (same ops on the same inputs): `z < 0` written twice."""
    if a is b:
        return True
    if depth > 32 or a.op != b.op or a.shape != b.shape or a.dtype != b.dtype or len(a.inputs) != len(b.inputs):
        return False
    if a.op == "input":
        return False
    if a.op == "const":
        return a.value is not None and b.value is not None and np.array_equal(a.value, b.value)
    return a.attrs == b.attrs and all(_same_value(p, q, depth + 1) for p, q in zip(a.inputs, b.inputs))


class MaskedSelection:
    """x[mask]: the elements of x where mask is True, a 1-D array whose length is known only at run time.

    It can only flow, through elementwise ops with scalars or arrays that broadcast over the selected
    rows, into a write with the same mask: `y[m] = y[m] * a + 1`. It holds the full-shape value
    (`full`) and applies the ops to every element; the write keeps only the masked ones (np.where).
    """

    __array_priority__ = 2000.0

    def __init__(self, full: Tensor, mask: Node, mask_ndim: int):
        self.full = full
        self.mask = mask
        self.mask_ndim = mask_ndim

    def _masked_selection_error(self, use: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"x[mask] (a boolean-mask selection) used as {use}: its length is the number of "
                                  f"True entries, known only at run time, so traced code can only write it back "
                                  f"with the same mask (y[m] = y[m] * a); use np.where for masking "
                                  f"(np.where(mask, x, 0) keeps the array's shape)")

    def _combine(self, fn, others: Sequence[Any]) -> "MaskedSelection":
        args = []
        rest = self.full.shape[self.mask_ndim:]
        for o in others:
            if isinstance(o, MaskedSelection):
                if not _same_value(o.mask, self.mask):
                    raise TraceError("two boolean-mask selections with different masks are combined; their lengths "
                                     "may differ at run time; use np.where with full-shape arrays instead")
                args.append(o.full)
                continue
            shape = np.shape(o) if not isinstance(o, Tensor) else o.shape
            core = tuple(shape)
            while core and core[0] == 1:
                core = core[1:]
            if len(core) > len(rest) or not _broadcasts(core, rest):
                raise ShapeError(f"x[mask] (shape (n,{','.join(map(str, rest))}) with n known only at run time) "
                                 f"combined with an array of shape {tuple(shape)}: NumPy broadcasts only scalars or "
                                 f"arrays matching the trailing dims {tuple(rest)}; use np.where(mask, ..., ...)")
            args.append(o if not isinstance(o, Tensor) else reshape_tensor(o, core) if core != tuple(shape) else o)
        r = fn(*args)
        if not isinstance(r, Tensor):
            raise self._masked_selection_error("an operand")
        return MaskedSelection(r, self.mask, self.mask_ndim)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__" or kwargs:
            raise self._masked_selection_error(f"np.{ufunc.__name__}.{method}" if method != "__call__"
                                               else f"np.{ufunc.__name__} with keyword arguments")
        return self._combine(lambda *a: ufunc(*a), list(inputs))

    def __array_function__(self, func, types, args, kwargs):
        raise self._masked_selection_error(f"an argument of np.{getattr(func, '__name__', func)}")

    def astype(self, dtype, copy=True) -> "MaskedSelection":
        return MaskedSelection(self.full.astype(dtype), self.mask, self.mask_ndim)

    def copy(self) -> "MaskedSelection":
        return self

    @property
    def dtype(self):
        return self.full.dtype

    def __bool__(self):
        raise self._masked_selection_error("a Python bool (if/while)")

    def __array__(self, dtype=None, copy=None):
        raise self._masked_selection_error("a concrete array")

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise self._masked_selection_error(f"x[mask].{name}")


def _broadcasts(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    try:
        return tuple(np.broadcast_shapes(a, b)) == tuple(b)
    except ValueError:
        return False


def _masked_binary(name: str):
    f = getattr(Tensor, name)
    return lambda self, o: self._combine(f, [self, o])


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
              "__pow__", "__rpow__", "__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__", "__and__",
              "__rand__", "__or__", "__ror__"):
    setattr(MaskedSelection, _name, _masked_binary(_name))
for _name in ("__neg__", "__abs__", "__invert__"):
    setattr(MaskedSelection, _name, (lambda nm: lambda self: self._combine(getattr(Tensor, nm), [self]))(_name))
MaskedSelection.__hash__ = object.__hash__  # type: ignore[assignment]


# ----------------------------------------------------------------------------- writes
def _rebind(x: Tensor, node: Node, what: str) -> None:
    """x now holds `node`. A view taken by basic indexing (v = x[1:3]; v += 1, or x[1:3] += 1) writes
    through: its base becomes base with base[key] = the new value, as NumPy's shared memory does. Every
    other array sharing the memory (views from reshape/transpose, other views) becomes stale."""
    root = x._base if x._base is not None else x
    keep = {id(x)}
    through = None
    if x._base is not None and x._view_key is not None and root._stale is None and root.node is x._view_key[0]:
        key = x._view_key[1]
        through = _box_update(root, key, Tensor(node, x.tracer), what)
        keep.add(id(root))
    prov = user_provenance()
    where = f" at {prov.short()} ({prov.code})" if prov else ""
    note = (f"this array shares memory with one written afterwards by `{what}`{where}: NumPy would show it the "
            f"new values, which traced code does not track; take the view after the write, or .copy() it before")
    for t in [root, *root._views]:
        if id(t) not in keep and t._stale is None:
            t._stale = note
            try:
                del t.node
            except AttributeError:
                pass
    root._views.clear()
    x.node = node
    if through is not None:             # x stays a view of its base, which now holds the write
        root.node = through
        root._views.append(x)
        x._view_key = (through, x._view_key[1])
    else:
        x._base = None
        x._view_key = None
        x._views = []


def _value_node(x: Tensor, value: Any, what: str) -> Node:
    """The written value as a node of x's dtype (NumPy casts on assignment)."""
    if isinstance(value, MaskedSelection):
        raise value._masked_selection_error("the value of a write with a different index")
    tr = x.tracer
    if isinstance(value, Tensor):
        tracer_of((x, value))
        v = value
    else:
        if isinstance(value, (list, tuple)) or isinstance(value, (np.ndarray, np.generic, bool, int, float)):
            arr = np.asarray(value)
            if arr.dtype.kind not in "biuf":
                raise DTypeError(f"{what}: cannot write a value of dtype {arr.dtype}")
            with np.errstate(all="ignore"):
                return tr.const(arr.astype(x.dtype))
        raise TraceError(f"{what}: cannot write a {type(value).__name__}; write a traced array, a NumPy array or a "
                         f"number")
    if v.dtype != x.dtype:
        v = v.astype(x.dtype)
    return v.node


def setitem(x: Tensor, key: Any, value: Any) -> None:
    """x[key] = value as a functional update: x's proxy is rebound to the updated array."""
    what = "x[...] = v"
    entries = key if isinstance(key, tuple) else (key,)
    if _is_current_view(value, x, entries):
        return     # x[1:3] += v: the in-place op already wrote through the view x[1:3]; this is x[1:3] = x[1:3]
    # a 0-d integer array indexes like an int (NumPy drops the axis)
    entries = tuple(int(e) if isinstance(e, np.ndarray) and e.ndim == 0 and e.dtype.kind in "iu" else e
                    for e in entries)
    tr = x.tracer
    if any(_is_bool_array(e) or isinstance(e, MaskedSelection) for e in entries):
        mask, k = _mask_node(x, entries, "x[mask] = v")
        rest = x.shape[k:]
        if isinstance(value, MaskedSelection):
            if not _same_value(value.mask, mask):
                raise TraceError("x[mask] = y[other_mask]: the value is selected with a different mask, so the "
                                 "counts may differ at run time; use np.where(mask, new, x)")
            vnode = _value_node(x, value.full, "x[mask] = v")
        else:
            vnode = _value_node(x, value, "x[mask] = v")
            core = tuple(vnode.shape)
            while core and core[0] == 1:
                core = core[1:]
            if len(core) > len(rest) or not _broadcasts(core, rest):
                raise ShapeError(f"x[mask] = v: v of shape {vnode.shape} cannot be assigned to a boolean-mask "
                                 f"selection of shape (n,{','.join(map(str, rest))}) (n = number of True entries, "
                                 f"known only at run time); write a scalar, an array of shape {tuple(rest)}, "
                                 f"or use np.where(mask, v, x) with v of x's shape {x.shape}")
            if core != tuple(vnode.shape):
                vnode = tr.emit("reshape", [vnode], {"shape": core}).node
        mnode = mask if k == x.ndim else tr.emit("reshape", [mask], {"shape": mask.shape + (1,) * (x.ndim - k)}).node
        new = tr.emit("where", [mnode, vnode, x.node], {})
        _rebind(x, new.node, "x[mask] = v")
        return
    if any(_is_array_index(e) for e in entries):
        _scatter_const(x, entries, value)
        return
    _set_box(x, entries, value, what)


def _is_current_view(value: Any, x: Tensor, entries: tuple) -> bool:
    """value is exactly x[entries] of x as it is now (a basic-index view taken of x's current value)."""
    if not isinstance(value, Tensor) or value._base is not x or value._view_key is None or value._stale:
        return False
    node, key = value._view_key
    if node is not x.node or len(key) != len(entries):
        return False
    for a, b in zip(key, entries):
        if a is b:
            continue
        if not (isinstance(a, (slice, int, np.integer)) and type(a) is type(b) and a == b):
            return False
    return True


def _set_box(x: Tensor, entries: tuple, value: Any, what: str) -> None:
    _rebind(x, _box_update(x, entries, value, what), what)


def _box_update(x: Tensor, entries: tuple, value: Any, what: str) -> Node:
    """The node of x with x[entries] = value (basic indices; value broadcast to the region)."""
    tr = x.tracer
    starts, stops, steps, sel = basic_index_plan(x.shape, entries)
    vnode = _value_node(x, value, what)
    if not _broadcasts(tuple(vnode.shape), tuple(sel)):
        raise ShapeError(f"x[...] = v: could not broadcast v of shape {vnode.shape} into the written region of "
                         f"shape {tuple(sel)} (array shape {x.shape}); NumPy needs v's trailing dims to equal the "
                         f"region's or be 1")
    # v in the region's rank: left-pad with 1s to the selection's rank, then drop None axes and put a
    # size-1 axis where an int index removed one
    vshape = (1,) * (len(sel) - len(vnode.shape)) + tuple(vnode.shape)
    full = _expand(entries, x.ndim)
    box_shape: list[int] = []
    it = iter(vshape)
    for e in full:
        if e is None:
            next(it)
        elif isinstance(e, slice):
            box_shape.append(next(it))
        else:
            box_shape.append(1)
    if tuple(box_shape) != tuple(vnode.shape):
        vnode = tr.emit("reshape", [vnode], {"shape": tuple(box_shape)}).node
    whole = all(a == 0 and b == s and c == 1 for a, b, c, s in zip(starts, stops, steps, x.shape))
    if whole:       # x[...] = v, x[:] = v: the array becomes v (broadcast)
        new = vnode if vnode.shape == x.shape else tr.emit("broadcast_to", [vnode], {"shape": x.shape}).node
    else:
        new = tr.emit("set_slice", [x.node, vnode],
                      {"starts": tuple(starts), "stops": tuple(stops), "steps": tuple(steps)}).node
    return new


def _scatter_const(x: Tensor, entries: tuple, value: Any) -> None:
    """x[[0, 2]] = v with constant indices: one box write per index, in order (NumPy: the last write wins)."""
    full, k, ids, data_axis = _array_index(
        x, entries, "x[ids] = v",
        "x[ids0, ids1] = v (several index arrays) is not supported in traced code; write one axis at a time")
    size = x.shape[data_axis]
    if isinstance(ids, Tensor):
        _scatter_traced(x, full, k, data_axis, ids, value)
        return
    if ids.ndim > 1 or ids.size > MAX_CONST_SCATTER:
        raise UnsupportedOpError(f"x[ids] = v is supported for a flat list of at most {MAX_CONST_SCATTER} constant "
                                 f"indices, got shape {ids.shape}; use np.where with a mask")
    ids = _const_indices(ids, size, data_axis, "x[ids] = v").reshape(-1)
    no_ints = not any(isinstance(e, (int, np.integer)) for e in full)
    sl = _progression_slice(ids, size) if no_ints and len(set(ids.tolist())) == ids.size else None
    if sl is not None:      # x[[1, 2, 3]] = v: one box write
        _set_box(x, full[:k] + (sl,) + full[k + 1:], value, "x[ids] = v")
        return
    # the value as NumPy sees it: broadcast to the selection x[ids] (ids' axis in place of the axis)
    sel = list(basic_getitem(Tensor(x.node, x.tracer), full[:k] + (slice(0, 1),) + full[k + 1:]).shape)
    pos = sum(1 for e in full[:k] if not isinstance(e, (int, np.integer)))
    sel[pos] = len(ids)
    vt = value if isinstance(value, Tensor) else None
    vnode = _value_node(x, value, "x[ids] = v")
    if not _broadcasts(tuple(vnode.shape), tuple(sel)):
        raise ShapeError(f"x[ids] = v: could not broadcast v of shape {vnode.shape} into the written rows of shape "
                         f"{tuple(sel)} (array shape {x.shape})")
    v = Tensor(vnode, x.tracer) if vt is None or vt.node is not vnode else vt
    vshape = (1,) * (len(sel) - len(vnode.shape)) + tuple(vnode.shape)
    if vshape != tuple(vnode.shape):
        v = reshape_tensor(v, vshape)
    for j, i in enumerate(ids.tolist()):
        row = v if vshape[pos] == 1 else basic_getitem(v, (slice(None),) * pos + (j,))
        if vshape[pos] == 1:
            row = reshape_tensor(row, vshape[:pos] + vshape[pos + 1:])
        _set_box(x, full[:k] + (int(i),) + full[k + 1:], row, "x[ids] = v")


def _scatter_traced(x: Tensor, full: tuple, k: int, axis: int, ids: Tensor, value: Any) -> None:
    """x[..., ids, ...] = v with run-time indices (a 0-d position or a short 1-D list; other index entries
    full slices): for each index j in order, x = where(arange(n) == pos[j], v_j, x) along the axis (NumPy:
    the last write wins). pos = arange(n)[ids] is a gather, so the indices are wrapped and range-checked
    at run time like every gather; the writes are elementwise and fuse into one kernel of K passes."""
    tr = x.tracer
    what = "x[ids] = v"
    if any(not (isinstance(e, slice) and e == slice(None)) for i, e in enumerate(full) if i != k):
        raise UnsupportedOpError(f"{what} with run-time indices is supported with full slices on the other axes "
                                 f"(x[ids] = v, x[:, pos] = v); index the other axes in a separate step")
    if ids.ndim > 1 or ids.size > MAX_CONST_SCATTER:
        raise UnsupportedOpError(f"{what} with run-time indices is supported for a position or a flat list of at "
                                 f"most {MAX_CONST_SCATTER} indices (one pass over x each), got shape {ids.shape}; "
                                 f"use np.where with a mask")
    n = x.shape[axis]
    arange = tr.const(np.arange(n, dtype=np.int32 if n < 2 ** 31 else np.int64))
    pos = Tensor(tr.emit("take", [arange, ids.node], {"axis": 0}).node, tr)
    sel = x.shape[:axis] + tuple(ids.shape) + x.shape[axis + 1:]
    vnode = _value_node(x, value, what)
    if not _broadcasts(tuple(vnode.shape), sel):
        raise ShapeError(f"{what}: could not broadcast v of shape {vnode.shape} into the written elements of shape "
                         f"{sel} (array shape {x.shape})")
    v = Tensor(vnode, tr)
    if tuple(v.shape) != sel:
        v = Tensor(tr.emit("broadcast_to", [vnode], {"shape": sel}).node, tr)
    grid = Tensor(arange, tr)
    if axis < x.ndim - 1:
        grid = reshape_tensor(grid, (n,) + (1,) * (x.ndim - axis - 1))
    out = Tensor(x.node, tr)
    for j in range(max(ids.size, 1)):
        p = pos if ids.ndim == 0 else basic_getitem(pos, (j,))
        row = v if ids.ndim == 0 else basic_getitem(v, (slice(None),) * axis + (j,))
        row = reshape_tensor(row, x.shape[:axis] + (1,) + x.shape[axis + 1:])
        out = Tensor(tr.emit("where", [(grid == p).node, row.node, out.node], {}).node, tr)
    _rebind(x, out.node, what)


_INPLACE = {"+=": "__add__", "-=": "__sub__", "*=": "__mul__", "/=": "__truediv__", "**=": "__pow__",
            "&=": "__and__", "|=": "__or__"}


def inplace(x: Tensor, sym: str, o: Any) -> Tensor:
    """x += o (and -=, *=, /=, **=, &=, |=): NumPy keeps x's shape and dtype (same_kind casting) and writes
    x's memory, so views of x see it; here x's proxy is rebound to the result."""
    if isinstance(o, MaskedSelection):
        raise o._masked_selection_error(f"the right side of {sym}")
    r = getattr(Tensor, _INPLACE[sym])(x, o)
    if r.shape != x.shape:
        raise ShapeError(f"x {sym} y: the result has shape {r.shape} but x has shape {x.shape} (NumPy: "
                         f"non-broadcastable output operand); write x = x {sym[:-1]} y to get a new, larger array")
    if r.dtype != x.dtype:
        if not np.can_cast(r.dtype, x.dtype, casting="same_kind"):
            raise DTypeError(f"x {sym} y: cannot cast the result from {r.dtype} to x's dtype {x.dtype} with casting "
                             f"rule 'same_kind' (NumPy raises here too); write x = x {sym[:-1]} y for a {r.dtype} "
                             f"result, or cast y first")
        r = r.astype(x.dtype)
    _rebind(x, r.node, f"x {sym} y")
    return x


# ----------------------------------------------------------------------------- captured arrays
def concrete_value_error() -> TraceError:
    """The error of np.asarray(traced): names a captured NumPy array indexed or written with a traced value.

    NumPy calls __array__ when an ndarray from outside the function (a global, a closure variable, an
    attribute such as self.cache_k) is indexed with a traced value or assigned one; the user never
    wrote np.asarray, so the message names the array and the statement.
    """
    f = sys._getframe(1)
    while f is not None and is_internal_module(f.f_globals.get("__name__", "")):
        f = f.f_back
    found = _captured_subscript(f) if f is not None else None
    if found is not None:
        name, store, local = found
        if local:
            return TraceError(f"`{name}[...]` {'writes a traced value into' if store else 'indexes with a traced value'} "
                              f"{name}, a NumPy array made inside the function (np.zeros, np.empty, ...), which "
                              f"cannot hold traced values; build the result from traced arrays (np.concatenate/"
                              f"np.stack the pieces, or start from one: out = x * 0)")
        if store:
            return TraceError(f"`{name}[...] = ...` writes a traced value into {name}, a NumPy array captured from "
                              f"outside the function; traced code cannot write memory it does not own: pass {name} "
                              f"as an argument and return the updated array")
        return TraceError(f"`{name}[...]` indexes {name}, a NumPy array captured from outside the function, with a "
                          f"traced value; pass {name} as an argument of the function (then it compiles to a gather)")
    return TraceError("a traced value cannot be converted to a concrete np.ndarray (np.asarray/np.array, or a NumPy "
                      "array from outside the function indexed or written with it): pass such arrays as arguments")


def _captured_subscript(frame) -> tuple[str, bool, bool] | None:
    """(text of the NumPy array, is it written, is it a plain local of the frame) for a subscript in the
    frame's current statement whose base is an np.ndarray (resolved from names and attributes without
    running user code)."""
    from .tracing import statement_at
    try:
        text = statement_at(frame.f_code.co_filename, frame.f_lineno)
        tree = ast.parse(text.strip())
    except (SyntaxError, ValueError, OSError):
        return None
    for node in ast.walk(tree):
        if not isinstance(node, ast.Subscript):
            continue
        obj = _resolve(node.value, frame)
        if isinstance(obj, np.ndarray):
            local = isinstance(node.value, ast.Name) and node.value.id in frame.f_code.co_varnames
            return ast.unparse(node.value), isinstance(node.ctx, ast.Store), local
    return None


def _resolve(e: ast.expr, frame) -> Any:
    if isinstance(e, ast.Name):
        for scope in (frame.f_locals, frame.f_globals, frame.f_builtins):
            if e.id in scope:
                return scope[e.id]
        return None
    if isinstance(e, ast.Attribute):
        base = _resolve(e.value, frame)
        if base is None:
            return None
        try:
            return inspect.getattr_static(base, e.attr)
        except AttributeError:
            return None
    return None


# ----------------------------------------------------------------------------- run-time index checks
def index_checks(graph: Graph) -> list[tuple[Node, Graph | int]]:
    """For every gather with run-time indices: (take node, the input position of its indices, or a Graph
    that computes them from the inputs). Constant indices were checked when traced."""
    out: list[tuple[Node, Graph | int]] = []
    pos = {id(n): k for k, n in enumerate(graph.inputs)}
    order = {id(n): k for k, n in enumerate(graph.nodes)}
    for n in graph.nodes:
        if n.op != "take":
            continue
        ids = n.inputs[1]
        if ids.op == "const":
            continue
        if id(ids) in pos:
            out.append((n, pos[id(ids)]))
            continue
        need: dict[int, Node] = {}
        stack = [ids]
        while stack:
            m = stack.pop()
            if id(m) in need:
                continue
            need[id(m)] = m
            stack.extend(m.inputs)
        nodes = sorted([m for m in need.values() if m.op != "input"] + list(graph.inputs), key=lambda m: order[id(m)])
        out.append((n, graph.derive(nodes, [ids])))
    return out


def check_indices(checks: list[tuple[Node, Graph | int]], inputs: Sequence[np.ndarray]) -> None:
    """Raise IndexOutOfRangeError when a run-time index is outside its axis (before any kernel runs).

    Index arrays that are function inputs are checked as they are; computed ones are evaluated with the
    NumPy interpreter of the part of the graph that computes them (usually a cast or an add).
    """
    from .interpreter import run_graph
    for n, src in checks:
        ids = inputs[src] if isinstance(src, int) else run_graph(src, inputs)[0]
        size = n.inputs[0].shape[n.attrs["axis"]]
        if ids.size == 0:
            continue
        lo, hi = int(ids.min()), int(ids.max())
        if lo >= -size and hi < size:
            continue
        bad = np.argwhere((ids < -size) | (ids >= size))[0]
        v = int(ids[tuple(bad)])
        name = n.inputs[1].name if n.inputs[1].op == "input" else f"the index array {n.inputs[1].name}"
        where = f" (at {n.provenance.short()}: {n.provenance.code})" if n.provenance else ""
        raise IndexOutOfRangeError(f"index {v} at position {tuple(int(b) for b in bad)} of {name} is out of bounds "
                                   f"for an axis of size {size}{where}; NumPy raises IndexError here: valid indices "
                                   f"are {-size}..{size - 1}")


__all__ = ["MaskedSelection", "getitem", "setitem", "inplace", "np_take", "index_checks", "check_indices",
           "concrete_value_error", "is_advanced"]
