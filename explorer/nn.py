"""Neural-network building blocks that work on NumPy arrays and on traced Tensors.

On plain arrays each function computes with NumPy and returns an ndarray. On traced
Tensors softmax, log_softmax, layernorm and gelu record ONE composite node (category
'opaque', e.g. `softmax(x, axis=-1)`), so the traced graph reads like the source;
`simplify(decompose=True)` (the default in compile) expands it in place into primitive
ops by re-tracing the same NumPy implementation used for arrays. relu is simply
`np.maximum(x, 0)`. `np.mean` is traced directly into `sum` then `div` (see tracing.mean_tensor).

>>> import numpy as np
>>> softmax(np.array([0.0, 0.0], np.float32))
array([0.5, 0.5], dtype=float32)
>>> import explorer
>>> print(explorer.trace(lambda x: softmax(x), np.ones((2, 3), np.float32)).text())
graph lambda(x: f32[2,3]):
  %1: f32[2,3] = softmax(x, axis=-1)
  return %1
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import numpy as np

from . import ops as _ops
from .ops import OpDef, register
from .tracing import Tensor, apply_op

_SQRT_2_OVER_PI = 0.7978845608028654
_INV_SQRT_2 = 0.7071067811865476


# ----------------------------------------------------------------------------- primitive implementations
# These run on numpy arrays (the reference) and on Tensors (the decomposition that simplify re-traces).
def _softmax_impl(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax_impl(x, axis=-1):
    s = x - np.max(x, axis=axis, keepdims=True)
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


def _layernorm_impl(x, axis=-1, eps=1e-5):
    mu = np.mean(x, axis=axis, keepdims=True)
    d = x - mu
    var = np.mean(d * d, axis=axis, keepdims=True)
    return d / np.sqrt(var + eps)


def _gelu_impl(x, approximate=True):
    if approximate:
        return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * (x * x * x))))
    return 0.5 * x * (1.0 + apply_op("erf", x * _INV_SQRT_2))


# ----------------------------------------------------------------------------- composite registry entries
def _axis_attr(axis: Any) -> Any:
    return tuple(int(a) for a in axis) if isinstance(axis, (list, tuple)) else int(axis)


def _composite(name: str, impl: Callable[..., Any], flops: int, doc: str, axis_attr: str | None = "axis") -> OpDef:
    def infer(types: Sequence[_ops.Type], attrs: dict) -> _ops.Type:
        shape, dt = tuple(types[0][0]), np.dtype(types[0][1])
        if axis_attr is not None:
            _ops.normalize_axes(name, attrs[axis_attr], len(shape), shape)
        # The dtype is whatever NumPy gives running the implementation (e.g. int32 -> float64).
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            out = np.asarray(impl(np.ones((1,) * len(shape), dt), **attrs))
        return shape, out.dtype

    def reference(*arrays: np.ndarray, **attrs: Any) -> np.ndarray:
        return np.asarray(impl(*arrays, **attrs))

    return register(OpDef(name, "opaque", 1, infer, reference, flops, None, (), doc, decomposition=impl))


_composite("softmax", _softmax_impl, 5, "exp(x - max) / sum(exp(x - max)) along axis")
_composite("log_softmax", _log_softmax_impl, 5, "(x - max) - log(sum(exp(x - max))) along axis")
_composite("layernorm", _layernorm_impl, 8, "(x - mean) / sqrt(var + eps) along axis (no affine)")
_composite("gelu", _gelu_impl, 9, "x * Phi(x): tanh approximation, or exact with erf", None)


def _call(name: str, impl: Callable[..., Any], x: Any, **attrs: Any):
    if isinstance(x, Tensor):
        return x.tracer.emit(name, [x.node], attrs)
    return impl(np.asarray(x), **attrs)


# ----------------------------------------------------------------------------- public API
def relu(x):
    """max(x, 0), traced as `maximum(x, 0)`.

    >>> relu(np.array([-1.0, 2.0]))
    array([0., 2.])
    """
    return np.maximum(x if isinstance(x, Tensor) else np.asarray(x), 0)


def softmax(x, axis: int = -1):
    """Numerically stable softmax along `axis` (one `softmax` node when traced).

    >>> softmax(np.log(np.array([1.0, 3.0])))
    array([0.25, 0.75])
    """
    return _call("softmax", _softmax_impl, x, axis=_axis_attr(axis))


def log_softmax(x, axis: int = -1):
    """log(softmax(x)) computed stably along `axis`.

    >>> np.round(log_softmax(np.array([0.0, 0.0])), 4)
    array([-0.6931, -0.6931])
    """
    return _call("log_softmax", _log_softmax_impl, x, axis=_axis_attr(axis))


def layernorm(x, gamma=None, beta=None, eps: float = 1e-5, axis: int = -1):
    """(x - mean) / sqrt(var + eps) along `axis`, then `* gamma + beta` when given.

    The normalisation is one `layernorm` composite node; the affine part is plain mul/add.

    >>> np.round(layernorm(np.array([1.0, 3.0])), 3)
    array([-1.,  1.])
    """
    y = _call("layernorm", _layernorm_impl, x, axis=_axis_attr(axis), eps=float(eps))
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def gelu(x, approximate: bool = True):
    """GELU: tanh approximation (default) or the exact erf form with approximate=False.

    >>> float(gelu(np.array(0.0)))
    0.0
    """
    return _call("gelu", _gelu_impl, x, approximate=bool(approximate))


from .conv import conv2d  # noqa: E402  (traced as one conv2d node)

__all__ = ["relu", "softmax", "log_softmax", "layernorm", "gelu", "conv2d"]
