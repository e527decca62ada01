"""Every user-facing failure of the explorer is an ExplorerError.

Each message says what was wrong and how to fix it, in one or two lines, so a
notebook user never has to read a traceback from deep inside the compiler.

>>> try:
...     raise ShapeError("add: cannot broadcast shapes (3,) and (4,)")
... except ExplorerError as e:
...     print(e)
add: cannot broadcast shapes (3,) and (4,)
"""
from __future__ import annotations


class ExplorerError(Exception):
    """Base class of every error the explorer raises on bad input or missing tools.

    >>> import numpy as np, explorer
    >>> try:
    ...     explorer.trace(lambda a, b: a @ b, np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))
    ... except explorer.ExplorerError as e:          # a ShapeError
    ...     print(e)
    matmul: inner dimensions differ: (2, 3) @ (4, 5) (3 != 4); the last dim of the left operand must equal ...
    >>> explorer.trace(lambda a: np.fft.fft(a), np.ones(4, np.float32))
    Traceback (most recent call last):
    ...
    explorer.errors.UnsupportedOpError: np.fft.fft is not supported at ...; closest supported: ...; see docs/NUMPY.md
    """


class TraceError(ExplorerError):
    """The function could not be traced (control flow on traced values, mutation, bad inputs)."""


class ShapeError(ExplorerError):
    """Shapes do not fit the op (matmul inner dims, broadcasting, reshape sizes, axes)."""


class DTypeError(ExplorerError):
    """A dtype the explorer does not support, or an op that does not accept it."""


class IndexOutOfRangeError(ShapeError, IndexError):
    """An index (x[ids], wte[ids]) outside its axis: at trace time for constants, before any kernel runs for
    run-time index arrays (an IndexError too, as NumPy raises)."""


class UnsupportedOpError(ExplorerError):
    """A NumPy function or operator with no entry in the op registry."""


class ScheduleError(ExplorerError):
    """A schedule that is invalid for the kernel or exceeds a hardware limit."""


class CompileError(ExplorerError):
    """Generated or hand-edited source did not compile; carries the compiler's message."""

    def __init__(self, message: str, *, log: str = "", line: int | None = None):
        super().__init__(message)
        self.log = log
        self.line = line


class BackendUnavailable(ExplorerError):
    """A backend needs a tool that is missing here (GPU, pycuda, C compiler, nvcc, dot)."""


class VerificationError(ExplorerError):
    """An IR failed its structural check, or a result disagreed with the NumPy reference."""


class KernelFault(VerificationError):
    """A hand-edited kernel crashed, did not finish, or wrote outside its buffers in the sandboxed
    trial run (a separate process) that checks it before it runs in this one."""


__all__ = [
    "ExplorerError", "TraceError", "ShapeError", "DTypeError", "IndexOutOfRangeError", "UnsupportedOpError",
    "ScheduleError", "CompileError", "BackendUnavailable", "VerificationError", "KernelFault",
]
