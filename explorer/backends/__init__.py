"""Backends: where a Compiled runs.

    reference  NumPy interpreter of the traced Graph (ground truth)
    sim        SIMT simulator of the tiled, CUDA-bound loop IR (counts bytes, flops, barriers)
    cpu        generated C + OpenMP, built with cc, loaded with ctypes
    cuda       generated CUDA, built and launched with pycuda

Each backend module exposes `available() -> (bool, reason)` and
`build(compiled) -> Executable` where Executable has `run(inputs) -> list[np.ndarray]`
and optionally `sampler(inputs, include_copies) -> explorer.measure.Sampler` (one timed run: CUDA
events, per-kernel times; explorer.measure repeats and interleaves it) and
`time(inputs, warmup, repeat, include_copies) -> Timing` (that sampler through explorer.measure),
`trial_run(inputs, what)` (run hand-edited source once where a fault cannot harm this process, raising
KernelFault; the CPU's child process with canaries; Compiled.with_kernel_source calls it when present),
and `runs_checked = True` when `run(inputs, checked=True)` skips the input checks (Compiled's fast path).
Compiled reaches a backend only through its Target (Target.build), never by importing one.
"""
from __future__ import annotations

from ..errors import ExplorerError
from ..target import TARGETS, Target, get_target

# target name -> backend module name (each Target names its backend: Target.backend)
BACKENDS = {name: t.backend for name, t in TARGETS.items()}


def backend_module(target: "str | Target"):
    """The backend module that runs `target` (a Target or its name: 'reference', 'sim', 'cpu', 'cuda'), imported now."""
    name = target.name if isinstance(target, Target) else target
    if name not in BACKENDS:
        raise ExplorerError(f"unknown target {target!r}; choose one of {', '.join(BACKENDS)}")
    return get_target(name).backend_module()


def build(compiled):
    """The Executable for `compiled` on its target (Target.build: BackendUnavailable says what is missing)."""
    return get_target(compiled.target).build(compiled)
