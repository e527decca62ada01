"""The dtypes the explorer supports, with their short names and C/CUDA spellings.

>>> short_name(np.dtype("float32"))
'f32'
"""
from __future__ import annotations

import numpy as np

from .errors import DTypeError

# short names follow jaxpr (f32[64,128]); order is also the listing order in errors.
_SHORT = {
    np.dtype("float32"): "f32",
    np.dtype("float16"): "f16",
    np.dtype("float64"): "f64",
    np.dtype("int32"): "i32",
    np.dtype("int64"): "i64",
    np.dtype("bool"): "bool",
}
SUPPORTED = tuple(_SHORT)
SUPPORTED_NAMES = ", ".join(str(d) for d in SUPPORTED)

C_TYPE = {"f32": "float", "f16": "_Float16", "f64": "double", "i32": "int32_t", "i64": "int64_t", "bool": "bool"}
CUDA_TYPE = {"f32": "float", "f16": "__half", "f64": "double", "i32": "int", "i64": "long long", "bool": "bool"}


def check(dtype, what: str = "value") -> np.dtype:
    """Return `dtype` as a np.dtype, or raise DTypeError naming the supported ones."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise DTypeError(f"{what}: {dtype!r} is not a dtype; supported dtypes are {SUPPORTED_NAMES}") from None
    if dt not in _SHORT:
        raise DTypeError(f"{what}: dtype {dt} is not supported; use one of {SUPPORTED_NAMES} (e.g. x.astype(np.float32))")
    return dt


def short_name(dtype) -> str:
    return _SHORT[np.dtype(dtype)]


def is_float(dtype) -> bool:
    return np.dtype(dtype).kind == "f"


def itemsize(dtype) -> int:
    return np.dtype(dtype).itemsize


def type_str(shape: tuple[int, ...], dtype) -> str:
    """'f32[64,128]' — the jaxpr spelling of a tensor type."""
    return f"{short_name(dtype)}[{','.join(str(s) for s in shape)}]"
