"""Convolution: NumPy's sliding-window idiom and explorer.nn.conv2d, traced into one `conv2d` node.

NumPy users write a convolution as padding, a sliding window and a contraction:

    xp  = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))               # pad(x)
    win = sliding_window_view(xp, (3, 3), axis=(1, 2))[:, ::2, ::2]  # window(pad) [+ slice: stride 2]
    y   = np.einsum("nhwcrs,rsck->nhwk", win, w)                     # conv2d(x, w)

`sliding_window_view` records a `window` op (an index mapping, never a copy). When an einsum
contracts such a window (optionally strided or dilated by a slice, over a zero pad) with a weight in
the convolution pattern, it records ONE `conv2d` node reading the unpadded input: stride from the
slice, padding from the pad, dilation from a slice of the window axes, groups = C for the depthwise
form "nhwcrs,rsc->nhwc". The pad, window and slice become dead and `simplify` removes them.
Anything else (other einsums over windows, a non-zero pad) stays the generic lowering, still correct.

>>> import numpy as np, explorer
>>> from numpy.lib.stride_tricks import sliding_window_view
>>> def f(x, w):
...     win = sliding_window_view(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), axis=(1, 2))
...     return np.einsum("nhwcrs,rsck->nhwk", win, w)
>>> g = explorer.trace(f, np.ones((1, 5, 5, 2), np.float32), np.ones((3, 3, 2, 4), np.float32))
>>> from explorer.passes.simplify import simplify
>>> [n.op for n in g.op_nodes()], [n.op for n in simplify(g).op_nodes()]
(['pad', 'window', 'conv2d'], ['conv2d'])
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import ops as _ops
from .errors import ShapeError, TraceError, UnsupportedOpError
from .graph import Provenance
from .tracing import NUMPY_FUNCTIONS, Tensor, apply_op, int_tuple, reshape_tensor, transpose_tensor


def _np_sliding_window_view(x, window_shape, axis=None, *, subok=False, writeable=False):
    if writeable:
        raise UnsupportedOpError("sliding_window_view(writeable=True) is not supported: traced windows are "
                                 "read-only views; leave writeable=False")
    if not isinstance(x, Tensor):
        raise TraceError("sliding_window_view: the array must be a traced value")
    ws = int_tuple(window_shape if not isinstance(window_shape, (int, np.integer)) else (window_shape,))
    if ws is None:
        raise ShapeError(f"sliding_window_view: window_shape must be an int or a tuple of ints, got {window_shape!r}")
    if axis is None:
        axes = tuple(range(x.ndim))
    else:
        ax = int_tuple(axis if not isinstance(axis, (int, np.integer)) else (axis,))
        if ax is None:
            raise ShapeError(f"sliding_window_view: axis must be an int or a tuple of ints, got {axis!r}")
        if any(not -x.ndim <= a < x.ndim for a in ax):
            raise ShapeError(f"sliding_window_view: axis {axis!r} is out of range for an array of shape "
                             f"{tuple(x.shape)}")
        axes = tuple(a % x.ndim for a in ax)
    if len(ws) != len(axes):
        raise ShapeError(f"sliding_window_view: window_shape {tuple(ws)} needs one size per axis in {axes}")
    return x.tracer.emit("window", [x.node], {"window_shape": tuple(ws), "axes": axes})


try:   # NumPy >= 1.20
    from numpy.lib.stride_tricks import sliding_window_view as _swv
    NUMPY_FUNCTIONS[_swv] = _np_sliding_window_view
except ImportError:  # pragma: no cover
    pass


# ----------------------------------------------------------------------------- einsum over windows
def _window_chain(node) -> tuple[Any, Any] | None:
    """(window node, slice node or None) when `node` is a window, maybe sliced."""
    sl = None
    if node.op == "slice":
        sl, node = node, node.inputs[0]
    return (node, sl) if node.op == "window" else None


def conv_from_einsum(subscripts: str, ins: list[str], out_sub: str, xs: list[Tensor]) -> Tensor | None:
    """ONE conv2d Tensor when the einsum contracts a (sliced) 2-D sliding window with a weight in the
    convolution pattern (NHWC "nhwcrs,rsck->nhwk" or depthwise "nhwcrs,rsc->nhwc", NCHW
    "nchwrs,kcrs->nkhw", any letters and any weight axis order); None otherwise."""
    if len(xs) != 2 or not isinstance(xs[0], Tensor) or not isinstance(xs[1], Tensor):
        return None
    chain = _window_chain(xs[0].node)
    if chain is None:
        return None
    win, sl = chain
    src = win.inputs[0]
    if len(src.shape) != 4 or len(win.shape) != 6:
        return None
    axes = tuple(win.attrs["axes"])
    layout = {(1, 2): "NHWC", (2, 3): "NCHW"}.get(axes)
    if layout is None:
        return None
    sub = ins[0]
    if layout == "NHWC":
        n, h, w, c, r, s = sub
    else:
        n, c, h, w, r, s = sub
    ws = ins[1]
    depthwise = set(ws) == {r, s, c} and len(ws) == 3
    if depthwise:
        k = c
        want_out = n + h + w + c if layout == "NHWC" else n + c + h + w
    else:
        extra = [ch for ch in ws if ch not in (r, s, c)]
        if len(ws) != 4 or not {r, s, c} <= set(ws) or len(extra) != 1:
            return None
        k = extra[0]
        want_out = n + h + w + k if layout == "NHWC" else n + k + h + w
    if out_sub != want_out or len(set(sub)) != 6:
        return None
    # stride and dilation from the slice: full, unit-step on n and c; from 0 with a step on h, w (stride)
    # and on r, s (dilation)
    pos = {ch: i for i, ch in enumerate(sub)}
    stride, dilation = [1, 1], [1, 1]
    if sl is not None:
        starts, stops, steps = sl.attrs["starts"], sl.attrs["stops"], sl.attrs["steps"]
        for ch in (n, c):
            d = pos[ch]
            if (starts[d], steps[d]) != (0, 1) or stops[d] < win.shape[d]:
                return None
        for k_, ch in enumerate((h, w)):
            d = pos[ch]
            if starts[d] != 0 or steps[d] < 1 or len(range(0, win.shape[d], steps[d])) != sl.shape[d]:
                return None
            stride[k_] = steps[d]
        for k_, ch in enumerate((r, s)):
            d = pos[ch]
            # a dilated tap set must keep the window's last element (else the window was too big)
            if starts[d] != 0 or steps[d] < 1 or (win.shape[d] - 1) % steps[d] or \
                    len(range(0, win.shape[d], steps[d])) != sl.shape[d]:
                return None
            dilation[k_] = steps[d]
    # padding: a zero `pad` on the spatial axes only is folded into the conv (an indexed load)
    padding = ((0, 0), (0, 0))
    xin = src
    hd, wd = (1, 2) if layout == "NHWC" else (2, 3)
    if src.op == "pad" and src.attrs["value"] == 0:
        pads = src.attrs["pads"]
        if all(tuple(pads[d]) == (0, 0) for d in range(4) if d not in (hd, wd)):
            padding = (tuple(pads[hd]), tuple(pads[wd]))
            xin = src.inputs[0]
    tr = xs[0].tracer
    x = Tensor(xin, tr)
    wt = xs[1]
    if depthwise:
        wt = reshape_tensor(_permute(wt, ws, r + s + c), (win.shape[pos[r]], win.shape[pos[s]], 1, win.shape[pos[c]]))
        groups = win.shape[pos[c]]
    else:
        wt = _permute(wt, ws, r + s + c + k)
        groups = 1
    rr, ss = wt.shape[0], wt.shape[1]
    if (rr - 1) * dilation[0] + 1 != win.shape[pos[r]] or (ss - 1) * dilation[1] + 1 != win.shape[pos[s]]:
        return None
    out = tr.emit("conv2d", [x.node, wt.node], {"stride": tuple(stride), "padding": padding,
                                                "dilation": tuple(dilation), "groups": groups, "layout": layout})
    folded = [n for n in (src if xin is not src else None, win, sl) if n is not None]
    out.node.provenance = _joined_provenance([n.provenance for n in folded] + [out.node.provenance])
    return out


def _joined_provenance(provs: list) -> Any:
    """One Provenance spanning the pad, window and einsum statements when they are a few lines of one
    function (the group's source lines then name all of them); else the einsum's own."""
    last = provs[-1]
    ps = sorted({(p.line, p.end_line or p.line, p.code): p for p in provs if p is not None}.values(),
                key=lambda p: p.line)
    if last is None or len(ps) < 2 or any((p.file, p.function) != (last.file, last.function) for p in ps):
        return last
    lo, hi = ps[0].line, max(p.end_line or p.line for p in ps)
    if hi - lo >= 12:
        return last
    return Provenance(last.file, lo, last.function, "; ".join(p.code.strip() for p in ps), hi)


def _permute(x: Tensor, sub: str, order: str) -> Tensor:
    return x if sub == order else transpose_tensor(x, tuple(sub.index(ch) for ch in order))


# ----------------------------------------------------------------------------- explorer.nn.conv2d
def _pair(name: str, v: Any, lo: int) -> tuple[int, int]:
    if isinstance(v, (bool, np.bool_)):
        raise ShapeError(f"conv2d: {name} must be an int or a pair of ints, got {v!r}")
    t = (v, v) if isinstance(v, (int, np.integer)) else int_tuple(v)
    if t is None or len(t) != 2:
        raise ShapeError(f"conv2d: {name} must be an int or a pair of ints, got {v!r}")
    if min(t) < lo:
        raise ShapeError(f"conv2d: {name} {tuple(t)} must be >= {lo}" +
                         ("; a zero or negative stride has no meaning (use stride=1 for every position)"
                          if name == "stride" else ""))
    return int(t[0]), int(t[1])


def conv_attrs(w_shape, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: Any = 1,
               layout: str = "NHWC") -> dict:
    """Normalised conv2d attributes; padding is an int, a pair, ((top, bottom), (left, right)), 'valid' or 'same'."""
    if layout not in _ops.CONV_LAYOUTS:
        raise ShapeError(f"conv2d: layout {layout!r} is not supported; use 'NHWC' or 'NCHW'")
    st, dl = _pair("stride", stride, 1), _pair("dilation", dilation, 1)
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ShapeError(f"conv2d: groups must be a positive int, got {groups!r}")
    if isinstance(padding, str):
        if padding == "valid":
            pad = ((0, 0), (0, 0))
        elif padding == "same":
            if st != (1, 1):
                raise ShapeError(f"conv2d: padding='same' needs stride 1 (got {st}); give the padding as numbers")
            tot = [dl[i] * (w_shape[i] - 1) for i in range(2)]
            pad = tuple((t // 2, t - t // 2) for t in tot)
        else:
            raise UnsupportedOpError(f"conv2d: padding {padding!r} is not supported; use an int, a pair, "
                                     f"((top, bottom), (left, right)), 'valid' or 'same' (zero padding only)")
    elif isinstance(padding, (int, np.integer)) and not isinstance(padding, (bool, np.bool_)):
        pad = ((int(padding),) * 2,) * 2
    else:
        flat = int_tuple(padding)
        if flat is not None and len(flat) == 2:
            pad = ((flat[0], flat[0]), (flat[1], flat[1]))
        else:
            try:
                pad = tuple(tuple(int(v) for v in int_tuple(p)) for p in padding)
            except TypeError:
                pad = ()
            if len(pad) != 2 or any(len(p) != 2 for p in pad):
                raise ShapeError(f"conv2d: padding must be an int, a pair, ((top, bottom), (left, right)), 'valid' "
                                 f"or 'same', got {padding!r}")
    if min(min(p) for p in pad) < 0:
        raise ShapeError(f"conv2d: padding {padding!r} cannot be negative")
    return {"stride": st, "padding": pad, "dilation": dl, "groups": int(groups), "layout": layout}


def conv2d(x, w, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1, layout: str = "NHWC"):
    """2-D convolution: x NHWC (or NCHW with layout='NCHW'), w (R, S, C/groups, K); one `conv2d` node when traced.

    padding: int, (ph, pw), ((top, bottom), (left, right)), 'valid' or 'same' (zeros).
    groups=C with w of shape (R, S, 1, C) is a depthwise convolution.

    >>> x = np.ones((1, 4, 4, 2), np.float32); w = np.ones((3, 3, 2, 1), np.float32)
    >>> conv2d(x, w, padding=1)[0, :, :, 0]
    array([[ 8., 12., 12.,  8.],
           [12., 18., 18., 12.],
           [12., 18., 18., 12.],
           [ 8., 12., 12.,  8.]], dtype=float32)
    """
    if not isinstance(w, Tensor):
        w = np.asarray(w)
    if not isinstance(x, Tensor):
        x = np.asarray(x)
    if len(w.shape) != 4:
        raise ShapeError(f"conv2d: the weight must be 4-D (R, S, C/groups, K), got shape {tuple(w.shape)}")
    attrs = conv_attrs(tuple(w.shape), stride, padding, dilation, groups, layout)
    if not isinstance(x, Tensor) and not isinstance(w, Tensor):   # arrays: check shapes like the tracer does
        _ops.infer_type("conv2d", [(x.shape, x.dtype), (w.shape, w.dtype)], attrs)
    return apply_op("conv2d", x, w, **attrs)
