"""CUDA backend: build the generated CUDA with pycuda, launch it on the GPU, time it with CUDA events.

pycuda is imported lazily, so `import explorer` works without it; `available()` says in one line why
this backend cannot run here (pycuda missing, no NVIDIA driver, no device) and never raises.

Examples run only where a GPU and pycuda are (the doctest collection skips them elsewhere); the
timing lines stay skipped everywhere since their numbers differ per run.

>>> import numpy as np, explorer
>>> from explorer.backends.cuda import available, build
>>> ok, why = available()                      # (False, 'pycuda is not installed ...') on a CPU box
>>> x, w, b = np.ones((1024, 64), np.float32), np.ones((64, 256), np.float32), np.zeros(256, np.float32)
>>> compiled = explorer.compile(lambda x, w, b: np.maximum(x @ w + b, 0), x, w, b, target="cuda")
>>> exe = build(compiled)
>>> exe.run([x, w, b])[0].shape
(1024, 256)
>>> print(exe.time([x, w, b], warmup=3, repeat=20))   # doctest: +SKIP
0.0412 ms (min 0.0398, ±0.0011, n=20, cuda-events)
"""
from __future__ import annotations

import atexit
import os
import threading
from typing import Any, Sequence

import numpy as np

from ..errors import BackendUnavailable, ExplorerError
from ..target import get_target
from .nvcc import FMAD_FLAG

TARGET = get_target("cuda")   # what this backend runs: the Target's language, its name in messages

__all__ = ["available", "device_info", "build", "build_codegen", "CudaExecutable", "NVCC_OPTIONS"]

# -lineinfo lets compute-sanitizer name source lines; --fmad=false: nvcc would contract a*b+c into
# one FMA (as gcc does without -ffp-contract=off), so fused elementwise results would drift from
# NumPy's; matmul accumulators call fmaf() explicitly (codegen.fma_accumulation) and stay FMAs.
NVCC_OPTIONS = ["-O3", "-lineinfo", FMAD_FLAG]

_lock = threading.Lock()
_state: dict[str, Any] = {"available": None, "context": None, "device": None}


def _drv():
    import pycuda.driver as drv  # lazy: heavy, and raises ImportError without libcuda
    return drv


def _classify_import_error(e: BaseException) -> str:
    text = str(e)
    if isinstance(e, ModuleNotFoundError) and (getattr(e, "name", "") or "").split(".")[0] == "pycuda":
        return "pycuda is not installed (pip install kernel-explorer[cuda], or see docs/GPU.md)"
    if "libcuda" in text or "libnvidia" in text:
        return f"no NVIDIA driver here: pycuda cannot load libcuda ({text.splitlines()[0][:120]})"
    return f"pycuda failed to import: {type(e).__name__}: {text.splitlines()[0][:140] if text else ''}"


def available() -> tuple[bool, str]:
    """(True, device name) when pycuda imports, the driver initializes and a device exists; else (False, why).

    Never raises; the answer is cached for the process. Set KE_CUDA_DEVICE to pick a device (default 0).
    """
    if _state["available"] is not None:
        return _state["available"]
    try:
        drv = _drv()
    except Exception as e:  # ImportError (no pycuda / no libcuda) or anything odd in its import
        result = (False, _classify_import_error(e))
    else:
        try:
            drv.init()
            n = drv.Device.count()
            if n == 0:
                result = (False, "the NVIDIA driver reports no CUDA device")
            else:
                idx = _device_index()
                if idx >= n:
                    result = (False, f"KE_CUDA_DEVICE={idx} but only {n} CUDA device(s) exist")
                else:
                    result = (True, f"{drv.Device(idx).name()} (device {idx} of {n})")
        except Exception as e:
            result = (False, f"the CUDA driver failed to initialize: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__}")
    _state["available"] = result
    return result


def _device_index() -> int:
    try:
        return int(os.environ.get("KE_CUDA_DEVICE", "0"))
    except ValueError:
        return 0


def _context():
    """The process's one CUDA context: the device's primary context, retained once and pushed.

    Threads other than the creating one get it pushed on first use (pycuda contexts are per thread).
    """
    ok, why = available()
    if not ok:
        raise BackendUnavailable(f"target 'cuda' is unavailable here: {why}")
    drv = _drv()
    with _lock:
        if _state["context"] is None:
            dev = drv.Device(_device_index())
            ctx = dev.retain_primary_context()
            ctx.push()
            _state["context"], _state["device"] = ctx, dev
            _state["thread"] = threading.get_ident()
            atexit.register(_finish_up)
        elif threading.get_ident() != _state.get("thread") and drv.Context.get_current() is None:
            _state["context"].push()
    return _state["context"]


def _finish_up() -> None:
    ctx = _state.get("context")
    if ctx is None:
        return
    _state["context"] = None
    try:
        ctx.pop()
        from pycuda.tools import clear_context_caches
        clear_context_caches()
    except Exception:  # interpreter shutdown: the driver may already be gone
        pass


# Boost clocks (MHz) and FP32 lanes per SM by compute capability, for when the driver does not report them
# (CUDA 13 dropped the clock-rate attributes).
_FP32_PER_SM = {(7, 0): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128, (9, 0): 128,
                (10, 0): 128, (10, 3): 128, (12, 0): 128}
_TYPICAL_CLOCK_MHZ = {(7, 0): 1530, (7, 5): 1590, (8, 0): 1410, (8, 6): 1700, (8, 9): 2520, (9, 0): 1980,
                      (10, 0): 1965, (12, 0): 2600}


def _attr(dev, name: str) -> int | None:
    drv = _drv()
    a = getattr(drv.device_attribute, name, None)
    if a is None:
        return None
    try:
        return int(dev.get_attribute(a))
    except Exception:
        return None


def device_info() -> dict[str, Any]:
    """Name, SM count, compute capability, memory, bandwidth and FP32 peak estimates of the device.

    Bandwidth = 2 (DDR) x memory clock x bus width; peak = SMs x FP32 lanes/SM x 2 (FMA) x clock.
    Both are datasheet-style estimates (`*_source` says where each number came from).

    >>> device_info()["name"]          # doctest: +SKIP
    'NVIDIA H100 80GB HBM3'
    """
    _context()
    dev = _state["device"]
    cc = tuple(dev.compute_capability())
    sms = _attr(dev, "MULTIPROCESSOR_COUNT") or 0
    clock_khz = _attr(dev, "CLOCK_RATE")
    clock_src = "driver"
    if not clock_khz:
        clock_khz = _TYPICAL_CLOCK_MHZ.get(cc, _TYPICAL_CLOCK_MHZ.get((cc[0], 0), 1500)) * 1000
        clock_src = "typical boost clock for this compute capability"
    mem_khz = _attr(dev, "MEMORY_CLOCK_RATE")
    bus_bits = _attr(dev, "GLOBAL_MEMORY_BUS_WIDTH")
    bw = 2.0 * mem_khz * 1e3 * bus_bits / 8 if mem_khz and bus_bits else None
    lanes = _FP32_PER_SM.get(cc, 128 if cc[0] >= 8 else 64)
    return {
        "name": dev.name(),
        "compute_capability": cc,
        "arch": f"sm_{cc[0]}{cc[1]}",
        "sm_count": sms,
        "total_memory_bytes": int(dev.total_memory()),
        "clock_mhz": clock_khz / 1000.0,
        "clock_source": clock_src,
        "memory_bandwidth_gbs": bw / 1e9 if bw else None,
        "memory_bandwidth_source": "driver (memory clock x bus width)" if bw else "unknown",
        "peak_fp32_gflops": sms * lanes * 2 * clock_khz / 1e6,
        "max_threads_per_block": _attr(dev, "MAX_THREADS_PER_BLOCK") or 1024,
        "max_shared_bytes_per_block": _attr(dev, "MAX_SHARED_MEMORY_PER_BLOCK") or 48 * 1024,
        "warp_size": _attr(dev, "WARP_SIZE") or 32,
    }


def _compile(source: str, arch: str):
    from pycuda.compiler import SourceModule
    drv = _drv()
    try:
        return SourceModule(source, no_extern_c=True, options=list(NVCC_OPTIONS), arch=arch)
    except drv.CompileError as e:
        from .nvcc import compile_error
        log = e.stderr or e.stdout or e.msg or ""
        if isinstance(log, bytes):
            log = log.decode(errors="replace")
        raise compile_error(str(log), source, what="nvcc (pycuda)") from None


class CudaExecutable:
    """A built CUDA program: device buffers are allocated once and reused across runs."""

    def __init__(self, codegen, overrides: dict[int, str] | None = None):
        if codegen.language != TARGET.language:
            raise ExplorerError(f"the CUDA backend needs CUDA source but this codegen is {codegen.language!r}; "
                                f"compile with target={TARGET.name!r}")
        self.codegen = codegen
        self.program = codegen.program
        _context()
        drv = _drv()
        self.info = device_info()
        self.source = codegen.source(overrides)
        self.module = _compile(self.source, self.info["arch"])
        self.launches = []
        for g in codegen.kernels:
            fn = self.module.get_function(g.name)
            fn.prepare("P" * len(g.kernel.params))
            dyn = int(g.launch.get("dynamic_shared_bytes", 0))
            grid = tuple(int(x) for x in g.launch["grid"])
            block = tuple(int(x) for x in g.launch["block"])
            self.launches.append((g.name, fn, grid, block, dyn, [p.name for p in g.kernel.params]))
        bufs = self.program.buffers()
        # one allocation per global buffer (>= 1 byte so empty tensors still have a pointer)
        self.dev = {name: drv.mem_alloc(max(b.nbytes, 1)) for name, b in bufs.items() if b.scope == "global"}
        self.buffers = bufs

    def _upload(self, inputs: Sequence[np.ndarray]) -> None:
        drv = _drv()
        inputs = _with_constants(self.program, inputs)
        if len(inputs) != len(self.program.inputs):
            raise ExplorerError(f"{self.program.name} takes {len(self.program.inputs)} inputs, got {len(inputs)}")
        for b, arr in zip(self.program.inputs, inputs):
            a = np.ascontiguousarray(arr, dtype=np.dtype(_np(b.dtype)))
            if a.shape != b.shape:
                raise ExplorerError(f"input {b.name} has shape {a.shape}; the program was built for {b.shape}")
            if a.nbytes:
                drv.memcpy_htod(self.dev[b.name], a)

    def _download(self) -> list[np.ndarray]:
        drv = _drv()
        outs = []
        for b in self.program.outputs:
            host = np.empty(b.shape, dtype=_np(b.dtype))
            if host.nbytes:
                drv.memcpy_dtoh(host, self.dev[b.name])
            outs.append(host)
        return outs

    def _launch_all(self, stream=None, events: list | None = None) -> None:
        for i, (name, fn, grid, block, dyn, params) in enumerate(self.launches):
            if 0 in grid or 0 in block:
                continue  # an empty iteration domain launches nothing
            args = [self.dev[p] for p in params]
            if events is not None:
                events[i][0].record(stream)
            if stream is None:
                fn.prepared_call(grid, block, *args, shared_size=dyn)
            else:
                fn.prepared_async_call(grid, block, stream, *args, shared_size=dyn)
            if events is not None:
                events[i][1].record(stream)

    def _sync(self, what: str) -> None:
        drv = _drv()
        try:
            drv.Context.synchronize()
        except drv.Error as e:
            raise ExplorerError(f"CUDA {what} failed: {str(e).splitlines()[0]}; run it under "
                                f"`compute-sanitizer --tool memcheck` to find the bad access") from None

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Copy inputs in, launch every kernel in order, copy outputs back."""
        _context()
        self._upload(inputs)
        self._launch_all()
        self._sync("kernel launch")
        return self._download()

    def sampler(self, inputs: Sequence[np.ndarray], include_copies: bool = False):
        """One CUDA-event-timed run for explorer.measure → (total ms, {kernel: ms}); host↔device
        copies are inside the timed span only with include_copies."""
        from ..measure import Sampler
        drv = _drv()
        _context()
        self._upload(inputs)
        start, end = drv.Event(), drv.Event()
        kev = [(drv.Event(), drv.Event()) for _ in self.launches]

        def sample() -> tuple[float, dict[str, float]]:
            start.record()
            if include_copies:
                self._upload(inputs)
            self._launch_all(events=kev)
            if include_copies:
                self._download()
            end.record()
            end.synchronize()
            per = {name: a.time_till(b) for (name, _fn, grid, block, *_r), (a, b) in zip(self.launches, kev)
                   if 0 not in grid and 0 not in block}
            return start.time_till(end), per
        return Sampler(sample, source="cuda-events")

    def time(self, inputs: Sequence[np.ndarray], warmup: int = 3, repeat: int | None = 20,
             include_copies: bool = False):
        """CUDA-event times of the whole program and of each kernel (explorer.measure; milliseconds)."""
        from ..measure import measure
        t = measure(self.sampler(inputs, include_copies), warmup=warmup, repeat=repeat)
        self._sync("timed run")
        return t


def _with_constants(program, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The function's inputs followed by the data of its non-scalar constants (Program.constants),
    whose buffers the lowering appends to Program.inputs."""
    consts = list(getattr(program, "constants", ()) or ())
    inputs = list(inputs)
    if consts and len(inputs) == len(program.inputs) - len(consts):
        inputs += [data for _, data in consts]
    return inputs


def _np(dtype: str) -> np.dtype:
    from ..loopir import np_dtype
    return np_dtype(dtype)


def build_codegen(codegen, overrides: dict[int, str] | None = None) -> CudaExecutable:
    """Build a CUDA Codegen directly (no Compiled needed), e.g. for hand-written loop IR."""
    for k in codegen.kernels:
        if k.kernel.kind == "custom" and k.kernel.meta_dict()["custom"].cuda_source is None:
            from ..codegen.custom import missing_source
            raise missing_source(k.kernel, TARGET.language)
    ok, why = available()
    if not ok:
        raise BackendUnavailable(f"target {TARGET.name!r} is unavailable here: {why}")
    return CudaExecutable(codegen, overrides)


def build(compiled) -> CudaExecutable:
    """The Executable for a Compiled whose target is 'cuda' (honours with_kernel_source overrides)."""
    if "codegen" not in compiled.stage_names:
        raise ExplorerError(f"{compiled.name}: the CUDA backend needs the codegen stage, but this compile stopped "
                            f"after {compiled.stage_names[-1]!r}")
    return build_codegen(compiled.codegen, compiled.kernel_overrides)
