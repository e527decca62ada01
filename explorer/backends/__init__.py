"""Backends: where a Compiled runs.

    reference  NumPy interpreter of the traced Graph (ground truth)
    sim        SIMT simulator of the tiled, CUDA-bound loop IR (counts bytes, flops, barriers)
    cpu        generated C + OpenMP, built with cc, loaded with ctypes
    cuda       generated CUDA, built and launched with pycuda

Each backend module exposes `available() -> (bool, reason)` and
`build(compiled) -> Executable` where Executable has `run(inputs) -> list[np.ndarray]`
and optionally `sampler(inputs, include_copies) -> explorer.measure.Sampler` (one timed run: CUDA
events, per-kernel times; explorer.measure repeats and interleaves it) and
`time(inputs, warmup, repeat, include_copies) -> Timing` (that sampler through explorer.measure).
"""
from __future__ import annotations

import importlib

from ..errors import BackendUnavailable, ExplorerError
from ..target import TARGETS, Target

BACKENDS = {name: t.backend for name, t in TARGETS.items()}   # target name -> module here (Target.backend)


def backend_module(target: "str | Target"):
    """The backend module that runs `target` (a Target or its name)."""
    name = target.name if isinstance(target, Target) else target
    if name not in BACKENDS:
        raise ExplorerError(f"unknown target {target!r}; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{BACKENDS[name]}")


def build(compiled):
    mod = backend_module(compiled.target)
    ok, why = mod.available()
    if not ok:
        raise BackendUnavailable(f"target {compiled.target!r} is unavailable here: {why}")
    return mod.build(compiled)
