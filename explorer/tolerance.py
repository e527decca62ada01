"""How close a result must be to NumPy's: the relative tolerance per dtype and the magnitude an
absolute tolerance scales with. One definition for with_kernel_source, compare, autotune and the
custom-kernel check.

A leaf module (NumPy only), so backends and passes may use it without importing Compiled.

>>> default_rtol(np.float32)
0.0001
"""
from __future__ import annotations

from typing import Any

import numpy as np


def magnitude(*arrays: Any) -> float:
    """Largest finite |value| among the float arrays given, at least 1: the scale an absolute
    rounding tolerance is relative to.

    >>> magnitude(np.array([1e6, -3.0]), np.array([np.inf, 2.0]))
    1000000.0
    """
    m = 1.0
    for a in arrays:
        a = np.asarray(a)
        if a.dtype.kind in "fc" and a.size:
            f = np.abs(a[np.isfinite(a)])
            if f.size:
                m = max(m, float(f.max()))
    return m


def default_rtol(dtype: Any) -> float:
    """The relative tolerance of a result of `dtype` against NumPy's (0.0 for integers and bools: exact).

    >>> default_rtol(np.float16), default_rtol(np.int32)
    (0.02, 0.0)
    """
    dt = np.dtype(dtype)
    # bf16/fp8 (ml_dtypes): two units in the last place (8, 4 and 3 mantissa bits incl. the implicit one)
    narrow = {"bfloat16": 2 * 2.0 ** -7, "float8_e4m3fn": 2 * 2.0 ** -3, "float8_e5m2": 2 * 2.0 ** -2}
    if dt.name in narrow:
        return narrow[dt.name]
    return {np.dtype("float16"): 2e-2, np.dtype("float32"): 1e-4, np.dtype("float64"): 1e-9}.get(dt, 0.0)


__all__ = ["default_rtol", "magnitude"]
