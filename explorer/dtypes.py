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
# The ml_dtypes NumPy dtypes (optional extra `ml_dtypes`, imported only when such a value shows up):
# bfloat16 end to end; fp8 as storage (computed in f32, rounded to fp8 at every op like ml_dtypes).
ML_DTYPES = {"bfloat16": "bf16", "float8_e4m3fn": "f8e4m3", "float8_e5m2": "f8e5m2"}
FP8 = ("f8e4m3", "f8e5m2")
# floats held in memory narrower than they are computed (f32 registers; each op's result rounded back)
LOW_PRECISION = ("f16", "bf16", *FP8)


class _Supported(tuple):
    """The NumPy-native dtypes (iteration, listing); `dt in SUPPORTED` also accepts the ml_dtypes ones."""

    def __contains__(self, dtype) -> bool:
        try:
            return is_supported(dtype)
        except TypeError:
            return False


SUPPORTED = _Supported(_SHORT)
SUPPORTED_NAMES = ", ".join(str(d) for d in SUPPORTED) + ", and with ml_dtypes bfloat16, float8_e4m3fn, float8_e5m2"

C_TYPE = {"f32": "float", "f16": "_Float16", "f64": "double", "i32": "int32_t", "i64": "int64_t", "bool": "bool",
          "bf16": "uint16_t"}
CUDA_TYPE = {"f32": "float", "f16": "__half", "f64": "double", "i32": "int", "i64": "long long", "bool": "bool",
             "bf16": "__nv_bfloat16", "f8e4m3": "__nv_fp8_e4m3", "f8e5m2": "__nv_fp8_e5m2"}


def ml_dtype(short: str) -> np.dtype:
    """The NumPy dtype of an ml_dtypes short name ('bf16' → ml_dtypes.bfloat16); DTypeError without ml_dtypes."""
    name = {v: k for k, v in ML_DTYPES.items()}[short]
    try:
        import ml_dtypes
    except ImportError:
        raise DTypeError(f"dtype {name} needs the ml_dtypes package: pip install ml_dtypes "
                         f"(or pip install 'kernel-explorer[ml_dtypes]')") from None
    dt = np.dtype(getattr(ml_dtypes, name))
    _SHORT.setdefault(dt, short)
    return dt


def check(dtype, what: str = "value") -> np.dtype:
    """Return `dtype` as a np.dtype, or raise DTypeError naming the supported ones."""
    if isinstance(dtype, str) and dtype in ML_DTYPES:
        dtype = ml_dtype(ML_DTYPES[dtype])
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise DTypeError(f"{what}: {dtype!r} is not a dtype; supported dtypes are {SUPPORTED_NAMES}") from None
    if dt not in _SHORT and dt.name in ML_DTYPES:
        ml_dtype(ML_DTYPES[dt.name])   # registers it
    if dt not in _SHORT:
        raise DTypeError(f"{what}: dtype {dt} is not supported; use one of {SUPPORTED_NAMES} (e.g. x.astype(np.float32))")
    return dt


def short_name(dtype) -> str:
    dt = np.dtype(dtype)
    if dt not in _SHORT and dt.name in ML_DTYPES:
        ml_dtype(ML_DTYPES[dt.name])
    return _SHORT[dt]


def is_supported(dtype) -> bool:
    """Is `dtype` one the explorer traces (the ml_dtypes ones included)?"""
    dt = np.dtype(dtype)
    return dt in _SHORT or dt.name in ML_DTYPES


def is_float(dtype) -> bool:
    """Floating point, the ml_dtypes floats included (NumPy files them under kind 'V')."""
    dt = np.dtype(dtype)
    return dt.kind == "f" or dt.name in ML_DTYPES


def compute_dtype(dtype) -> np.dtype:
    """The dtype a low-precision float is computed in (float32 for f16, bf16, fp8); others unchanged."""
    dt = np.dtype(dtype)
    return np.dtype(np.float32) if dt == np.float16 or dt.name in ML_DTYPES else dt


def itemsize(dtype) -> int:
    return np.dtype(dtype).itemsize


def type_str(shape: tuple[int, ...], dtype) -> str:
    """'f32[64,128]' — the jaxpr spelling of a tensor type."""
    return f"{short_name(dtype)}[{','.join(str(s) for s in shape)}]"
