"""Targets as data: one frozen `Target` per place a compile can run.

Every decision that depends on where the code runs reads a field of the Target instead of
testing its name (as TVM's `Target` and Triton's backend classes do): passes, code generation,
backends and the widgets receive a Target. This module is a leaf: it imports nothing of the
project at module level, so every layer may import it.

    reference  NumPy runs the graph; no loops are scheduled or generated
    sim        the SIMT simulator runs the CUDA schedule's loop IR (GPU-free; counts bytes)
    cpu        C + OpenMP, built with the system C compiler
    cuda       CUDA C, built with nvcc and run with pycuda

>>> from explorer.target import get_target
>>> t = get_target("sim")
>>> t.language, t.schedule_family, t.gpu
('cuda', 'cuda', True)
>>> get_target("cpu").stash_reductions
True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any, Mapping


@dataclass(frozen=True)
class Target:
    """What the compiler needs to know about one target, as plain data."""

    name: str
    description: str
    # language of the generated source ("c", "cuda"), or None: the reference target generates none
    language: str | None
    # whose default schedules apply ("cpu", "cuda"), or None: the reference target keeps naive loops
    schedule_family: str | None
    # loops bind to blocks and threads (the simulator runs the CUDA schedule, so it is a GPU target)
    gpu: bool
    # lower reductions with a stash (compute exp once, re-read it from the output): pays on the CPU,
    # where the row is in L1; on a GPU the exp is cheap and the extra global round trip is what fusion avoids
    stash_reductions: bool
    # what benchmarks/compare measure here: "time" (real hardware) or "global_bytes" (the simulator)
    measures: str
    # GPU launch limits (None on CPU-like targets)
    max_threads_per_block: int | None = None
    max_shared_bytes: int | None = None
    # SIMD lanes of one 32-byte vector per dtype (CPU), or float4-style lanes (CUDA)
    vector_lanes: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # {schedule knob: why it does not apply here}; knobs not named apply
    knobs_not_applicable: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # the module that runs compiles for this target (dotted path; imported on first use, so pycuda or a
    # C compiler stay optional): available() -> (bool, reason) and build(compiled) -> Executable
    backend: str = ""

    def __str__(self) -> str:
        return self.name

    def knob_applies(self, knob: str) -> bool:
        """Whether schedule knob `knob` changes anything on this target.

        >>> get_target("cpu").knob_applies("shared")
        False
        """
        return knob not in self.knobs_not_applicable

    def backend_module(self) -> ModuleType:
        """The backend module that runs this target (explorer.backends.*), imported now.

        Compiled and compare reach a backend only through here, so no module above the backends
        imports one (tests/test_layering.py).

        >>> get_target("sim").backend_module().__name__
        'explorer.backends.simulator'
        """
        import importlib
        return importlib.import_module(self.backend)

    def available(self) -> tuple[bool, str]:
        """(True, what runs it) when this target can run here, else (False, one line saying what is missing).

        >>> get_target("reference").available()
        (True, 'numpy')
        """
        return self.backend_module().available()

    def build(self, compiled: Any) -> Any:
        """The Executable that runs `compiled` (a Compiled for this target) here: run(inputs) -> outputs.

        Raises BackendUnavailable, with the reason, when the target cannot run here.
        """
        ok, why = self.available()
        if not ok:
            from .errors import BackendUnavailable
            raise BackendUnavailable(f"target {self.name!r} is unavailable here: {why}")
        return self.backend_module().build(compiled)


_GPU_LIMITS = dict(max_threads_per_block=1024, max_shared_bytes=48 * 1024)
_NO_SCHEDULE = "target 'reference' runs NumPy on the graph: schedules do not apply"
_GPU_ONLY = "applies to GPU targets (cuda, sim) only"
_CPU_ONLY = "applies to the CPU target only"

TARGETS: Mapping[str, Target] = MappingProxyType({
    "reference": Target(
        name="reference", description="NumPy interprets the graph (the ground truth)",
        backend="explorer.backends.reference",
        language=None, schedule_family=None, gpu=False, stash_reductions=False, measures="time",
        knobs_not_applicable=MappingProxyType({k: _NO_SCHEDULE for k in (
            "tile", "thread_tile", "threads", "vector", "unroll", "shared", "double_buffer", "chunk",
            "tensor_core", "attention_tile", "conv_tile_k", "conv_tile_p")})),
    "sim": Target(
        name="sim", description="the SIMT simulator runs the CUDA schedule's loop IR and counts memory traffic",
        backend="explorer.backends.simulator",
        language="cuda", schedule_family="cuda", gpu=True, stash_reductions=False, measures="global_bytes",
        vector_lanes=MappingProxyType({"f32": 4}), **_GPU_LIMITS,
        knobs_not_applicable=MappingProxyType({"chunk": _CPU_ONLY})),
    "cpu": Target(
        name="cpu", description="C with OpenMP, built by the system C compiler",
        backend="explorer.backends.cpu",
        language="c", schedule_family="cpu", gpu=False, stash_reductions=True, measures="time",
        vector_lanes=MappingProxyType({"f32": 8, "i32": 8, "f64": 4, "i64": 4}),
        knobs_not_applicable=MappingProxyType({k: _GPU_ONLY for k in (
            "threads", "shared", "double_buffer", "tensor_core", "conv_tile_k", "conv_tile_p")})),
    "cuda": Target(
        name="cuda", description="CUDA C, built by nvcc and run with pycuda on a GPU",
        backend="explorer.backends.cuda",
        language="cuda", schedule_family="cuda", gpu=True, stash_reductions=False, measures="time",
        vector_lanes=MappingProxyType({"f32": 4}), **_GPU_LIMITS,
        knobs_not_applicable=MappingProxyType({"chunk": _CPU_ONLY})),
})


def get_target(target: "str | Target") -> Target:
    """The Target named `target` ('auto' must be resolved first, by pipeline.resolve_target).

    >>> get_target("cuda").max_threads_per_block
    1024
    """
    if isinstance(target, Target):
        return target
    try:
        return TARGETS[target]
    except (KeyError, TypeError):
        from .errors import ExplorerError
        raise ExplorerError(f"unknown target {target!r}; choose one of auto, {', '.join(TARGETS)}") from None
