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
    # language of the generated source ("c", "cuda"); the reference target prints its naive loops as
    # CUDA, for reading only (NumPy runs the graph)
    language: str
    # whose default schedules apply ("cpu", "cuda"), or None: the reference target keeps naive loops
    schedule_family: str | None
    # loops bind to blocks and threads (the simulator runs the CUDA schedule, so it is a GPU target)
    gpu: bool
    # lower reductions with a stash (compute exp once, re-read it from the output): pays on the CPU,
    # where the row is in L1; on a GPU the exp is cheap and the extra global round trip is what fusion avoids
    stash_reductions: bool
    # what benchmarks/compare measure here: "time" (real hardware) or "global_bytes" (the simulator)
    measures: str
    # module in explorer/backends/ that builds and runs a compile here
    backend: str = ""
    # the backend interprets the traced graph (NumPy), not the loop program: no program constants are
    # passed, and no schedule, codegen or build applies
    interprets_graph: bool = False
    # the generated source is built by a system compiler and run, so it can be edited (with_kernel_source)
    builds_source: bool = False
    # explorer.costmodel.device() name whose roofline models this target: 'cpu' (measured here),
    # 'a100' (the simulator runs CUDA compiled for sm_80), 'gpu' (the GPU pycuda sees)
    model_device: str = "cpu"
    # GPU launch limits (None on CPU-like targets)
    max_threads_per_block: int | None = None
    max_shared_bytes: int | None = None
    # SIMD lanes of one 32-byte vector per dtype (CPU), or float4-style lanes (CUDA)
    vector_lanes: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # {schedule knob: why it does not apply here}; knobs not named apply
    knobs_not_applicable: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # knobs explorer.autotune searches here (the CPU's include 'shared': it packs B's column panel)
    tunable_knobs: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.name

    @property
    def scheduled(self) -> bool:
        """Whether schedules apply here (False on 'reference': its naive loops are shown as they are)."""
        return self.schedule_family is not None

    @property
    def schedules(self) -> str | None:
        """The module whose `default_schedule(compute, knobs)` gives this target's default schedules.

        >>> get_target("sim").schedules
        'explorer.schedules.cuda'
        """
        return f"explorer.schedules.{self.schedule_family}" if self.schedule_family else None

    @property
    def openmp(self) -> bool:
        """The CPU schedules apply: loops run across OpenMP threads with SIMD inside (not bound to a GPU grid)."""
        return self.scheduled and not self.gpu

    @property
    def simulated(self) -> bool:
        """The simulator runs the loops (in NumPy, thread by thread): exact counters, no real time."""
        return self.measures == "global_bytes"

    @property
    def runs_on_gpu(self) -> bool:
        """A real GPU runs the code (not the simulator, which runs the same loops on this CPU)."""
        return self.gpu and self.measures == "time"

    def stages(self) -> list:
        """[(stage name, pass)] that compile runs after `traced`, built for this target (explorer/stages.py).

        >>> [name for name, _ in get_target("cpu").stages()]
        ['simplified', 'fused', 'lowered', 'tiled', 'vectorized', 'codegen']
        """
        from .stages import stages_for
        return stages_for(self)

    def knob_applies(self, knob: str) -> bool:
        """Whether schedule knob `knob` changes anything on this target.

        >>> get_target("cpu").knob_applies("shared")
        False
        """
        return knob not in self.knobs_not_applicable

    def host_vector_bytes(self) -> int:
        """Bytes of the widest SIMD register this target's compiler uses on this host: on the CPU 64 where
        gcc -march=native targets AVX-512, else 32 (asked of the backend's compiler probe, cached); 32 on
        targets that build no C. The CPU schedules size register tiles with it.

        >>> get_target("sim").host_vector_bytes()
        32
        """
        if not self.openmp:
            return 32
        return int(self.backend_module().native_vector_bytes())

    def backend_module(self) -> ModuleType:
        """The backend module that runs this target (explorer.backends.*), imported now.

        Compiled and compare reach a backend only through here, so no module above the backends
        imports one (tests/test_layering.py).

        >>> get_target("sim").backend_module().__name__
        'explorer.backends.simulator'
        """
        import importlib
        return importlib.import_module(f"explorer.backends.{self.backend}")

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
_GPU_ONLY = ("apply to GPU targets (cuda, sim) only: the CPU schedule uses the register tile "
             "(reg tile) and vector width, and always unrolls")
_CPU_ONLY = "applies to the CPU target only"
_GPU_TUNABLE = ("tile", "thread_tile", "threads", "vector", "unroll", "shared", "double_buffer", "tensor_core",
                "attention_tile")

# in the order compile lists them (also auto's order of preference: cuda, then cpu, then sim)
TARGETS: Mapping[str, Target] = MappingProxyType({
    "cuda": Target(
        name="cuda", description="CUDA C, built by nvcc and run with pycuda on a GPU",
        language="cuda", schedule_family="cuda", gpu=True, stash_reductions=False, measures="time",
        backend="cuda", builds_source=True, model_device="gpu", tunable_knobs=_GPU_TUNABLE,
        vector_lanes=MappingProxyType({"f32": 4}), **_GPU_LIMITS,
        knobs_not_applicable=MappingProxyType({"chunk": _CPU_ONLY})),
    "cpu": Target(
        name="cpu", description="C with OpenMP, built by the system C compiler",
        language="c", schedule_family="cpu", gpu=False, stash_reductions=True, measures="time",
        backend="cpu", builds_source=True, model_device="cpu",
        tunable_knobs=("thread_tile", "shared", "chunk", "vector", "attention_tile"),
        vector_lanes=MappingProxyType({"f32": 8, "i32": 8, "f64": 4, "i64": 4}),
        knobs_not_applicable=MappingProxyType({k: _GPU_ONLY for k in (
            "tile", "threads", "unroll", "shared", "double_buffer", "tensor_core", "conv_tile_k",
            "conv_tile_p", "conv_tile_c")})),
    "sim": Target(
        name="sim", description="the SIMT simulator runs the CUDA schedule's loop IR and counts memory traffic",
        language="cuda", schedule_family="cuda", gpu=True, stash_reductions=False, measures="global_bytes",
        backend="simulator", model_device="a100", tunable_knobs=_GPU_TUNABLE,
        vector_lanes=MappingProxyType({"f32": 4}), **_GPU_LIMITS,
        knobs_not_applicable=MappingProxyType({"chunk": _CPU_ONLY})),
    "reference": Target(
        name="reference", description="NumPy interprets the graph (the ground truth)",
        language="cuda", schedule_family=None, gpu=False, stash_reductions=False, measures="time",
        backend="reference", interprets_graph=True, model_device="cpu",
        knobs_not_applicable=MappingProxyType({k: _NO_SCHEDULE for k in (
            "tile", "thread_tile", "threads", "vector", "unroll", "shared", "double_buffer", "chunk",
            "tensor_core", "attention_tile", "conv_tile_k", "conv_tile_p", "conv_tile_c")})),
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


def target_for_language(language: str, current: "str | Target | None" = None) -> Target:
    """The target to compile for to get `language` source: `current` when it builds that language, else
    the scheduled target of that language that runs here without a GPU (c: cpu, cuda: sim).

    >>> target_for_language("cuda", "cpu").name, target_for_language("cuda", "cuda").name
    ('sim', 'cuda')
    >>> target_for_language("c", "sim").name
    'cpu'
    """
    if current is not None:
        cur = get_target(current)
        if cur.language == language and cur.builds_source:
            return cur
    for t in TARGETS.values():
        if t.language == language and t.scheduled and not t.runs_on_gpu:
            return t
    from .errors import ExplorerError
    raise ExplorerError(f"no target generates {language!r} source; languages are "
                        f"{', '.join(sorted({t.language for t in TARGETS.values()}))}")
