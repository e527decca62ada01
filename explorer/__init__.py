"""kernel-explorer: a compiler for NumPy-style deep-learning functions that you can watch.

>>> import numpy as np, explorer
>>> def mlp(x, w, b):
...     return np.maximum(x @ w + b, 0)
>>> x, w, b = np.ones((4, 8), np.float32), np.ones((8, 3), np.float32), np.zeros(3, np.float32)
>>> c = explorer.compile(mlp, x, w, b, target="reference")
>>> np.allclose(c(x, w, b), mlp(x, w, b))
True

`import explorer` needs only NumPy; graphviz, matplotlib, ipywidgets, pycuda and a
C compiler are used when present and each says in one line when it is missing.
"""
from __future__ import annotations

from .errors import (BackendUnavailable, CompileError, DTypeError, ExplorerError, IndexOutOfRangeError, KernelFault,
                     ScheduleError, ShapeError, TraceError, UnsupportedOpError, VerificationError)
from .graph import Graph, Node, Provenance
from .pipeline import Options, Snapshot, compile
from .tracing import Tensor, trace
from . import nn
# Eager on purpose (numpy-only modules): `compare` is both a submodule and a function, and a lazy
# `from . import compare` inside __getattr__ recursed; importing here binds the function last.
from . import costmodel
from .compare import Comparison, compare, sweep
from .autotune import AutotuneResult, autotune   # binds the function over the submodule (as compare)
from .custom import CustomKernel, custom_kernel
from .blas import blas_threads

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazily expose the heavier parts so `import explorer` stays numpy-only and fast.
    if name in ("Schedule",):
        from .schedule import Schedule
        return Schedule
    if name == "Compiled":
        from .compiled import Compiled
        return Compiled
    raise AttributeError(f"module 'explorer' has no attribute {name!r}")


__all__ = ["trace", "compile", "custom_kernel", "CustomKernel", "compare", "Comparison", "costmodel", "sweep", "autotune", "blas_threads", "AutotuneResult", "Schedule", "Compiled", "Graph", "Node", "Provenance",
           "Options", "Snapshot", "Tensor", "nn", "ExplorerError", "TraceError", "ShapeError", "DTypeError",
           "IndexOutOfRangeError", "UnsupportedOpError", "ScheduleError", "CompileError", "BackendUnavailable", "VerificationError",
           "KernelFault"]
