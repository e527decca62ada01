"""Roofline cost model: device peaks, and flops / bytes / predicted time per kernel.

A kernel that does F flops and moves B bytes between global memory and the chip
needs at least max(F / peak, B / bandwidth) seconds. Its arithmetic intensity
I = F / B decides which term wins: below the ridge point peak / bandwidth it is
memory-bound, above it compute-bound. Fusion lowers B (intermediates stay in
registers), so it helps exactly the memory-bound kernels.

>>> import numpy as np, explorer
>>> from explorer import costmodel
>>> x = np.ones((8192, 64), np.float32); w = np.ones((64, 64), np.float32); b = np.ones(64, np.float32)
>>> c = explorer.compile(lambda x, w, b: np.maximum(x @ w + b, 0), x, w, b, target="reference")
>>> [k.bound for k in costmodel.kernel_costs(c, "h100")]
['memory']
>>> costmodel.attainable(1.0, costmodel.device("h100")) / 1e12      # 1 flop/byte → 3.35 TFLOP/s
3.35

Flops and bytes come from the op registry (explorer.ops.node_cost) per fusion
group — a group reads its external inputs once and writes its outputs once —
or, for a compile run on the simulator, from the simulator's exact counters.
Every number here is a *model* unless its `source` says otherwise.
"""
from __future__ import annotations

import json
import re
import os
import platform
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import BackendUnavailable, ExplorerError
from .target import TARGETS, get_target


# ----------------------------------------------------------------------------- devices
@dataclass(frozen=True)
class Device:
    """Peak throughput of one device. Flops in flop/s, bandwidth in bytes/s.

    peak_fp16 is the non-tensor-core FP16 rate and peak_tensor the dense FP16
    tensor-core rate (0 where there are none); the generated kernels use plain
    FMA instructions, so the roofline uses peak_fp32 / peak_fp16.
    """

    name: str
    peak_fp32: float
    peak_fp16: float
    peak_tensor: float
    bandwidth: float
    kind: str = "gpu"            # 'gpu' | 'cpu'
    source: str = ""             # where the numbers come from
    measured: bool = False       # True: measured on this machine, False: vendor data sheet

    def peak(self, dtype: Any = np.float32) -> float:
        """The FMA-pipe peak for `dtype` (fp16 rate for float16 and bfloat16, fp32 otherwise)."""
        try:
            half = np.dtype(dtype) == np.float16 or np.dtype(dtype).name == "bfloat16"
        except TypeError:
            half = str(dtype) in ("f16", "float16", "bf16", "bfloat16")
        return self.peak_fp16 if half and self.peak_fp16 > 0 else self.peak_fp32

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (flop/byte) where the fp32 roof meets the bandwidth slope."""
        return self.peak_fp32 / self.bandwidth

    def label(self) -> str:
        how = "measured here" if self.measured else "data sheet"
        return (f"{self.name}: {self.peak_fp32 / 1e9:,.0f} GFLOP/s fp32, "
                f"{self.bandwidth / 1e9:,.0f} GB/s ({how})")


T = 1e12
G = 1e9

# Vendor data-sheet numbers, dense (NVIDIA data sheets quote tensor-core rates "with sparsity";
# those are halved here). Bandwidth is HBM/GDDR bandwidth.
DEVICES: dict[str, Device] = {
    # NVIDIA H100 Tensor Core GPU data sheet (SXM column): FP32 67 TFLOPS, FP16 Tensor Core 1,979 TFLOPS
    # with sparsity (989.5 dense), GPU memory bandwidth 3.35 TB/s. Non-tensor FP16 133.8 TFLOPS from the
    # NVIDIA H100 Tensor Core GPU Architecture whitepaper (H100 SXM5 column).
    "h100": Device("NVIDIA H100 SXM", 67 * T, 133.8 * T, 989.5 * T, 3.35e12, "gpu",
                   "NVIDIA H100 data sheet (SXM) + H100 architecture whitepaper (fp16 non-tensor)"),
    # NVIDIA H200 Tensor Core GPU data sheet (SXM column): FP32 67 TFLOPS, FP16 Tensor Core 1,979 TFLOPS
    # with sparsity (989.5 dense), 141 GB HBM3e at 4.8 TB/s. Same GH100 compute as H100 SXM, so the
    # non-tensor FP16 rate is the H100 SXM5 whitepaper figure.
    "h200": Device("NVIDIA H200 SXM", 67 * T, 133.8 * T, 989.5 * T, 4.8e12, "gpu",
                   "NVIDIA H200 data sheet (SXM); fp16 non-tensor as H100 SXM5 whitepaper"),
    # NVIDIA A100 Tensor Core GPU data sheet (A100 80GB SXM column): FP32 19.5 TFLOPS, FP16 Tensor Core
    # 312 TFLOPS (624 with sparsity), GPU memory bandwidth 2,039 GB/s. Non-tensor FP16 78 TFLOPS from the
    # NVIDIA A100 Tensor Core GPU Architecture whitepaper.
    "a100": Device("NVIDIA A100 SXM 80GB", 19.5 * T, 78 * T, 312 * T, 2.039e12, "gpu",
                   "NVIDIA A100 data sheet (80GB SXM) + A100 architecture whitepaper (fp16 non-tensor)"),
    # NVIDIA L4 Tensor Core GPU data sheet: FP32 30.3 TFLOPS, FP16 Tensor Core 242 TFLOPS with sparsity
    # (121 dense), GPU memory bandwidth 300 GB/s. Ada runs non-tensor FP16 at the FP32 rate
    # (NVIDIA Ada GPU Architecture whitepaper).
    "l4": Device("NVIDIA L4", 30.3 * T, 30.3 * T, 121 * T, 300e9, "gpu",
                 "NVIDIA L4 data sheet; fp16 non-tensor = fp32 rate (Ada architecture whitepaper)"),
    # NVIDIA T4 Tensor Core GPU data sheet: single precision 8.1 TFLOPS, mixed precision (FP16/FP32
    # tensor) 65 TFLOPS, GPU memory bandwidth 320 GB/s. Turing runs non-tensor FP16 at twice the FP32
    # rate (NVIDIA Turing GPU Architecture whitepaper): 16.2 TFLOPS.
    "t4": Device("NVIDIA T4", 8.1 * T, 16.2 * T, 65 * T, 320e9, "gpu",
                 "NVIDIA T4 data sheet; fp16 non-tensor = 2x fp32 (Turing architecture whitepaper)"),
}

_ALIASES = {"h100sxm": "h100", "h100sxm5": "h100", "nvidiah100": "h100", "nvidiah100sxm": "h100",
            "h200sxm": "h200", "nvidiah200": "h200", "a100sxm": "a100", "a10080gb": "a100",
            "a100sxm80gb": "a100", "nvidiaa100": "a100", "nvidial4": "l4", "nvidiat4": "t4"}
_LOCAL_NAMES = ("cpu", "local", "localcpu", "host")
_THIS_GPU_NAMES = ("gpu", "cuda")
SIM_DEVICE = get_target("sim").model_device  # 'sim' runs CUDA code compiled for sm_80: its model times are an A100's


def _norm(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def device_names() -> list[str]:
    """Names `device()` accepts: the table's keys plus 'cpu' (measured) and 'cuda' (this GPU)."""
    return [*DEVICES, "cpu", "cuda"]


def device(name_or_target: "str | Device | None" = None) -> Device:
    """Look up a device by name ('h100', 'A100 SXM', 't4') or by compile target.

    Targets 'cpu', 'reference' (and None) give the measured local CPU; 'sim' the A100 (the simulator
    runs CUDA code compiled for sm_80, so its modelled times are a GPU's, not this CPU's);
    'cuda' gives the table entry for the GPU pycuda sees.

    >>> device("H100 SXM").bandwidth
    3350000000000.0
    >>> device("tpu")                                   # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ExplorerError: unknown device 'tpu'; choose one of h100, h200, a100, l4, t4, cpu, cuda
    """
    if isinstance(name_or_target, Device):
        return name_or_target
    if name_or_target is None:
        return local_cpu()
    key = _norm(name_or_target)
    if key == "auto":
        from .pipeline import resolve_target
        key = "gpu" if get_target(resolve_target("auto", verbose=False)).runs_on_gpu else "cpu"
    elif key in TARGETS:
        key = get_target(key).model_device   # cpu, reference: 'cpu'; sim: 'a100'; cuda: 'gpu'
    if key in _LOCAL_NAMES:
        return local_cpu()
    if key in _THIS_GPU_NAMES:
        return this_gpu()
    key = _ALIASES.get(key, key)
    if key in DEVICES:
        return DEVICES[key]
    raise ExplorerError(f"unknown device {name_or_target!r}; choose one of {', '.join(device_names())} "
                        f"(or pass an explorer.costmodel.Device)")


def this_gpu() -> Device:
    """The DEVICES entry matching the GPU pycuda sees (BackendUnavailable without one)."""
    try:
        import pycuda.driver as drv
        drv.init()
        gpu_name = drv.Device(0).name()
    except Exception as e:  # no pycuda, no driver or no GPU
        raise BackendUnavailable(f"no CUDA GPU to look up ({type(e).__name__}: {e}); "
                                 f"name a device instead, e.g. device='h100'") from None
    n = _norm(gpu_name)
    for key in ("h200", "h100", "a100", "l4", "t4"):
        if key in n:
            return DEVICES[key]
    raise ExplorerError(f"GPU {gpu_name!r} is not in the device table; pass device= one of {', '.join(DEVICES)} "
                        f"or an explorer.costmodel.Device with its data-sheet numbers")


# ----------------------------------------------------------------------------- the local CPU, measured
_LOCAL: Device | None = None


def cpu_name() -> str:
    """This machine's CPU model name (/proc/cpuinfo's 'model name', else what platform knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kernel-explorer", "device.json")


def measure_cpu(copy_mb: int = 64, matmul_n: int = 1024, repeat: int = 7) -> dict[str, float]:
    """Measure this CPU: a STREAM-like copy (read + write bytes / time) and a NumPy float32 matmul.

    Returns {'bandwidth': bytes/s, 'peak_fp32': flop/s}; best of `repeat` runs each.
    """
    n = copy_mb * (1 << 20) // 4
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    # one chunk per core, copied by threads (np.copyto releases the GIL): generated kernels use every
    # core, and one core alone does not saturate the memory bus (a 1-thread roof had measured OpenMP
    # kernels above it)
    workers = max(1, min(os.cpu_count() or 1, 64))
    bounds = np.linspace(0, n, workers + 1).astype(int)
    chunks = [(dst[a:b], src[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    best = float("inf")
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(workers) as pool:
        for _ in range(repeat + 1):  # first run faults the pages in
            t0 = time.perf_counter()
            list(pool.map(lambda c: np.copyto(*c), chunks))
            best = min(best, time.perf_counter() - t0)
    bandwidth = 2 * src.nbytes / best  # STREAM "copy" counts the read and the write
    rng = np.random.default_rng(0)
    a = rng.standard_normal((matmul_n, matmul_n), dtype=np.float32)
    bm = rng.standard_normal((matmul_n, matmul_n), dtype=np.float32)
    best = float("inf")
    for _ in range(repeat + 1):  # best of several: the first call also starts BLAS's threads
        t0 = time.perf_counter()
        a @ bm
        best = min(best, time.perf_counter() - t0)
    return {"bandwidth": bandwidth, "peak_fp32": 2.0 * matmul_n ** 3 / best}


def local_cpu(refresh: bool = False) -> Device:
    """This machine's CPU, measured once (copy bandwidth, NumPy matmul GFLOP/s) and cached.

    Cached in-process and in $XDG_CACHE_HOME/kernel-explorer/device.json keyed by
    host name and CPU model; `refresh=True` measures again.

    >>> d = local_cpu()
    >>> d.kind, d.measured
    ('cpu', True)
    """
    global _LOCAL
    if _LOCAL is not None and not refresh:
        return _LOCAL
    model = cpu_name()
    key = f"{socket.gethostname()}|{model}|copy=threads"   # v2: all-core copy (v1 used one thread)
    threads = os.environ.get("OMP_NUM_THREADS") or os.environ.get("OPENBLAS_NUM_THREADS")
    if threads:  # a thread-limited measurement must not stand in for the whole CPU
        key += f"|threads={threads}"
    path = _cache_path()
    cache: dict[str, Any] = {}
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key) if not refresh else None
    if not (isinstance(entry, dict) and entry.get("bandwidth", 0) > 0 and entry.get("peak_fp32", 0) > 0):
        m = measure_cpu()
        entry = {**m, "when": time.strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count() or 1}
        cache[key] = entry
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(cache, f, indent=1)
            os.replace(tmp, path)  # atomic: parallel test workers never read half a file
        except OSError:
            pass  # read-only home: keep the in-process value
    short = model if len(model) < 40 else model[:37] + "..."
    _LOCAL = Device(
        name=f"this CPU ({short}, {entry.get('cores', os.cpu_count())} cores"
             + (f", {threads} thread{'s' if threads != '1' else ''})" if threads else ")"),
        peak_fp32=float(entry["peak_fp32"]), peak_fp16=float(entry["peak_fp32"]), peak_tensor=0.0,
        bandwidth=float(entry["bandwidth"]), kind="cpu",
        source=(f"measured {entry.get('when', '')}: 64 MB array copy on all cores (STREAM-like), NumPy float32 1024^3 matmul "
                f"(fp16 assumed = fp32)"),
        measured=True)
    return _LOCAL


# ----------------------------------------------------------------------------- roofline
def attainable(intensity: float, device: Device, peak: float | None = None) -> float:
    """Roofline: the flop/s a kernel of `intensity` flop/byte can reach, min(peak, intensity * bandwidth).

    >>> attainable(1.0, DEVICES["t4"]) / 1e9
    320.0
    """
    p = device.peak_fp32 if peak is None else peak
    return min(p, intensity * device.bandwidth)


def bound(intensity: float, device: Device, peak: float | None = None) -> str:
    """'memory' if the bandwidth slope limits a kernel of this intensity, else 'compute'."""
    p = device.peak_fp32 if peak is None else peak
    return "memory" if intensity * device.bandwidth < p else "compute"


def predict_seconds(flops: float, nbytes: float, device: Device, peak: float | None = None) -> float:
    """Roofline lower bound on run time: max(flops / peak, bytes / bandwidth)."""
    p = device.peak_fp32 if peak is None else peak
    return max(flops / p, nbytes / device.bandwidth)


@dataclass
class KernelCost:
    """Model cost of one kernel. source 'model' (op registry) or 'simulator' (exact counters)."""

    name: str
    flops: int
    bytes: int
    intensity: float
    bound: str
    predicted_ms: float
    source: str = "model"
    bytes_read: int = 0
    bytes_written: int = 0
    group: str = ""
    ops: tuple[str, ...] = ()
    dtype: str = "float32"
    attainable_flops: float = 0.0   # flop/s on the roof at this intensity (model)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_cost(name: str, flops: int, bytes_read: int, bytes_written: int, device: Device, *, source: str = "model",
              group: str = "", ops: Sequence[str] = (), dtype: Any = np.float32) -> KernelCost:
    """A KernelCost from raw counts on `device` (intensity, bound, predicted time filled in)."""
    nbytes = int(bytes_read) + int(bytes_written)
    peak = device.peak(dtype)
    intensity = flops / nbytes if nbytes else float("inf")
    return KernelCost(name=name, flops=int(flops), bytes=nbytes, intensity=intensity,
                      bound=bound(intensity, device, peak) if nbytes else "compute",
                      predicted_ms=predict_seconds(flops, nbytes, device, peak) * 1e3, source=source,
                      bytes_read=int(bytes_read), bytes_written=int(bytes_written), group=group, ops=tuple(ops),
                      dtype=str(np.dtype(dtype)), attainable_flops=attainable(intensity, device, peak))


def _is_immediate(node) -> bool:
    return node.op == "const" and node.size == 1


def group_counts(nodes: Iterable, inputs: Iterable, outputs: Iterable) -> tuple[int, int, int]:
    """(flops, bytes_read, bytes_written) of one fused kernel.

    It reads each external input once and writes each output once; values passed
    between its members stay in registers. Flops are the members' registry flops.
    """
    from .ops import node_cost
    nodes = list(nodes)
    flops = sum(node_cost(n).flops for n in nodes)
    read = sum(_bytes_read(i, nodes) for i in inputs if not _is_immediate(i))
    written = sum(o.nbytes for o in outputs)
    return int(flops), int(read), int(written)


def _bytes_read(i, nodes: list) -> int:
    """Bytes a kernel reads of input i: all of it, except a table only gathered from (wte[ids]), of which
    it reads the picked rows."""
    users = [n for n in nodes if any(x is i for x in n.inputs)]
    if users and all(n.op == "take" and n.inputs[0] is i and n.inputs[1] is not i for n in users):
        return min(i.nbytes, sum(n.nbytes for n in users))
    return i.nbytes


def _groups(compiled) -> list[tuple[str, str, list, list, list]]:
    """(group id, kernel name, members, external inputs, outputs) per kernel, in launch order.

    Uses the fused stage when the compile has one; otherwise (early stop) one group
    per op node, which is what fuse=False produces.
    """
    names = getattr(compiled, "stage_names", [])
    if "fused" in names:
        fg = compiled.stage("fused").ir
        return [(g.id, g.name, list(g.nodes), list(g.inputs), list(g.outputs)) for g in fg.groups]
    fuse = getattr(getattr(compiled, "options", None), "fuse", False)
    if fuse not in (False, None):
        raise ExplorerError("this compile stopped before the 'fused' stage, so its kernels are not known yet; "
                            "compile without stop_after (or with stop_after='fused' or later)")
    graph = compiled.graph
    out = []
    for k, n in enumerate(graph.op_nodes()):
        out.append((f"g{k}", f"{n.op}", [n], list(n.inputs), [n]))
    return out


def _kernel_names(compiled, groups) -> dict[str, str]:
    """group id → the generated kernel's name (kernels can be renamed to stay unique)."""
    names = getattr(compiled, "stage_names", [])
    for stage in ("tiled", "lowered"):
        if stage in names:
            prog = compiled.stage(stage).ir
            return {k.group: k.name for k in getattr(prog, "kernels", ()) if getattr(k, "group", "")}
    return {}


def simulator_counters(compiled) -> list[dict[str, Any]] | None:
    """The simulator's per-kernel counters, in launch order, if this compile ran on 'sim'; else None."""
    target = getattr(compiled, "target", None)
    if target not in TARGETS or not get_target(target).simulated:   # the simulator counts bytes
        return None
    exe = getattr(compiled, "built_executable", None)
    counters = getattr(exe, "counters", None) if exe is not None else None
    if not counters:
        return None
    if isinstance(counters, dict):
        # per-kernel dicts keyed by kernel name; 'total' is the simulator's own sum
        return [dict(v, name=k) for k, v in counters.items() if k != "total" and isinstance(v, dict)]
    return [dict(c) for c in counters]


def kernel_costs(compiled, device_or_name: "Device | str | None" = None, counters: bool = True) -> list[KernelCost]:
    """Flops, bytes, intensity, roofline bound and predicted time of each kernel of `compiled`.

    `device_or_name` defaults to the compile's target device (the local CPU for
    cpu/sim/reference). With `counters=True` and a compile that has run on the
    simulator, flops and bytes are the simulator's exact counts (source
    'simulator'); otherwise they come from the op registry (source 'model').

    >>> import numpy as np, explorer
    >>> c = explorer.compile(lambda a: np.exp(a) * 2, np.ones(1024, np.float32), target="reference")
    >>> [(k.flops, k.bytes) for k in kernel_costs(c, "t4")]   # exp counts as 20 flops (ops.node_cost)
    [(21504, 8192)]
    """
    dev = device(device_or_name if device_or_name is not None else getattr(compiled, "target", None))
    groups = _groups(compiled)
    knames = _kernel_names(compiled, groups)
    sim = simulator_counters(compiled) if counters else None
    sim_by_name = {c.get("name"): c for c in sim} if sim else {}
    out: list[KernelCost] = []
    for k, (gid, gname, nodes, inputs, outputs) in enumerate(groups):
        name = knames.get(gid, gname)
        dtype = outputs[0].dtype if outputs else np.float32
        ops = tuple(n.op for n in nodes)
        c = None
        if sim:
            c = sim_by_name.get(name)
            if c is None and len(sim) == len(groups):
                c = sim[k]
        if c is not None:
            out.append(make_cost(name, int(c.get("flops", 0)), int(c.get("global_load_bytes", 0)),
                                 int(c.get("global_store_bytes", 0)), dev, source="simulator", group=gid, ops=ops,
                                 dtype=dtype))
        else:
            flops, read, written = group_counts(nodes, inputs, outputs)
            out.append(make_cost(name, flops, read, written, dev, source="model", group=gid, ops=ops, dtype=dtype))
    return out


def total(costs: Sequence[KernelCost]) -> dict[str, Any]:
    """Sum of flops, bytes and predicted time over kernels."""
    return {"kernels": len(costs), "flops": sum(c.flops for c in costs), "bytes": sum(c.bytes for c in costs),
            "predicted_ms": sum(c.predicted_ms for c in costs),
            "source": "simulator" if costs and all(c.source == "simulator" for c in costs) else "model"}


__all__ = ["Device", "DEVICES", "device", "device_names", "local_cpu", "this_gpu", "measure_cpu", "attainable",
           "bound", "predict_seconds", "KernelCost", "kernel_costs", "make_cost", "group_counts",
           "simulator_counters", "total", "predict_schedule_ms", "predict_schedule"]


# ----------------------------------------------------------------------------- schedule-aware model
# Ranks candidate schedules for explorer.autotune before anything is built or timed. The roofline above
# does not see a schedule (a kernel's flops and compulsory bytes do not change with its tiling), so this
# model adds what tiling does change: how often each operand is re-read (block / register tile sizes),
# how well the register tile keeps the FMA units busy (accumulators vs loads, registers spilled), tile
# waste at the edges, and per-chunk / per-block overheads. It is a *model* for ordering candidates; the
# autotuner measures the ones it ranks first and prints the rank correlation between the two.
_SPLIT = re.compile(r"split\((\w+), (\d+)\) -> (\w+), (\w+)")
CPU_VECTOR_REGISTERS = 16        # AVX2 ymm registers
CPU_FMA_LATENCY_SLOTS = 10       # independent accumulators needed to hide FMA latency (2 ports x ~5 cycles)
GPU_SMS = 108                    # waves are counted against an A100-sized GPU when the device does not say
GPU_REGISTERS_PER_THREAD = 255


def _splits(kernel) -> dict[str, tuple[int, str, str]]:
    """axis -> (factor, outer, inner) of each split primitive in a tiled kernel's schedule text."""
    out = {}
    for p in kernel.schedule:
        m = _SPLIT.match(p)
        if m:
            out[m.group(1)] = (int(m.group(2)), m.group(3), m.group(4))
    return out


def _has(kernel, prefix: str) -> bool:
    return any(p.startswith(prefix) for p in kernel.schedule)


def _edge(extent: int, tile: int) -> float:
    """Useful fraction of a tiled axis: extent / (tiles x tile)."""
    return extent / (-(-extent // max(tile, 1)) * max(tile, 1)) if extent > 0 else 1.0


def _matmul_extents(compute) -> tuple[int, int, int, int]:
    ax = {a.name: a.extent for a in (*compute.spatial, *compute.reduce)}
    batch = int(np.prod([a.extent for a in compute.spatial[:-2]])) if len(compute.spatial) > 2 else 1
    return batch, ax.get("i", 1), ax.get("j", 1), ax.get("k", 1)


def _cpu_matmul_ms(kernel, compute, dev: Device, itemsize: int) -> float:
    B, M, N, K = _matmul_extents(compute)
    sp = _splits(kernel)
    TM = sp.get("i", (1,))[0]
    TN = sp.get("j", (1,))[0]
    lanes = max(1, 32 // itemsize)
    vectors = TN // lanes if TN % lanes == 0 else TN          # a TN not a multiple of the lanes runs scalar
    simd = 1.0 if TN % lanes == 0 else 1.0 / lanes
    acc = TM * vectors
    regs = acc + vectors + 1
    spill = 1.0 if regs <= CPU_VECTOR_REGISTERS else 0.35 * CPU_VECTOR_REGISTERS / regs
    issue = acc / max(acc, (TM + vectors) / 1.0)               # FMAs per micro-step vs its loads (2 ports each)
    latency = min(1.0, acc / CPU_FMA_LATENCY_SLOTS)
    packed = _has(kernel, "cache_read(")
    # unpacked B rows are N * itemsize apart: a power-of-two stride maps every row to the same L1 sets
    alias = 1.0 if packed or (N * itemsize) % 4096 else 0.5
    eff = simd * spill * issue * latency * alias * _edge(M, TM) * _edge(N, TN)
    compute_s = 2.0 * B * M * N * K / (dev.peak_fp32 * max(eff, 1e-3))
    # A is streamed once per column panel, from L2/L3 (~4x memory bandwidth); B once per row tile unless packed
    a_bytes = B * M * K * itemsize * -(-N // TN)
    b_bytes = B * K * N * itemsize * (1 if packed else -(-M // TM))
    memory_s = (a_bytes + b_bytes) / (4 * dev.bandwidth) + B * M * N * itemsize / dev.bandwidth
    return max(compute_s, memory_s) * 1e3


def _gpu_matmul_ms(kernel, compute, dev: Device, itemsize: int) -> float:
    return _gpu_matmul(kernel, compute, dev, itemsize)[0]


def _gpu_matmul(kernel, compute, dev: Device, itemsize: int) -> tuple[float, float]:
    """(model ms, global bytes) of a tiled GPU matmul kernel."""
    B, M, N, K = _matmul_extents(compute)
    sp = _splits(kernel)
    BM = sp.get("i", (M,))[0]
    BN = sp.get("j", (N,))[0]
    TM = sp.get(sp.get("i", (0, "", "i_in"))[2], (1,))[0]
    TN = sp.get(sp.get("j", (0, "", "j_in"))[2], (1,))[0]
    tensor = _has(kernel, "tensorize(")
    shared = _has(kernel, "cache_read(")
    double = _has(kernel, "double_buffer(")
    if shared:
        loads = B * M * N * K * itemsize * (1.0 / BN + 1.0 / BM)
    else:
        loads = B * M * N * K * itemsize * (1.0 / max(TN, 1) + 1.0 / max(TM, 1))
    nbytes = loads + B * M * N * itemsize
    threads = max(1, (BM // max(TM, 1)) * (BN // max(TN, 1))) if not tensor else max(32, BM * BN // 32)
    blocks = B * -(-M // BM) * -(-N // BN)
    waves = blocks / (-(-blocks // GPU_SMS) * GPU_SMS)
    occupancy = min(1.0, threads / 128.0)
    reuse = 1.0 if tensor else min(1.0, (TM * TN) / (2.0 * (TM + TN)))   # FMAs per shared-memory load
    regs = TM * TN + TM + TN
    spill = 1.0 if regs <= GPU_REGISTERS_PER_THREAD else 0.3
    peak = dev.peak_tensor if tensor and dev.peak_tensor else dev.peak_fp32
    eff = max(1e-3, waves * occupancy * reuse * spill * _edge(M, BM) * _edge(N, BN))
    compute_s = 2.0 * B * M * N * K / (peak * eff)
    memory_s = nbytes / dev.bandwidth
    # double buffering overlaps the next tile's copy with this tile's compute; without it they add up
    t = max(compute_s, memory_s) if double or not shared else compute_s + memory_s
    return t * 1e3, nbytes


def _other_ms(kernel, cost: "KernelCost", dev: Device, target: str) -> float:
    """Elementwise / reduction kernels: roofline time x the schedule's overheads."""
    base = cost.predicted_ms
    sp = _splits(kernel)
    if get_target(target).openmp:   # the CPU schedule: chunks across OpenMP threads, SIMD inside
        chunk = sp.get("n", (0,))[0]
        total_elems = max(1, cost.bytes // 4)
        chunks = -(-total_elems // chunk) if chunk else 1
        overhead_ms = chunks * 1e-4 / max(1, os.cpu_count() or 1)     # ~0.1 us to hand out one chunk
        vec = [f for a, (f, o, i) in sp.items() if a.endswith(("_i", "n_i")) and f > 1]
        simd = 1.0 if (vec or _has(kernel, "vectorize(")) else 0.5
        return base / simd + overhead_ms
    # bind texts carry no sizes: the largest split factor is the threads per block (or rows per block)
    factors = [f for f, _, _ in sp.values()]
    t = max(factors) if factors else 256
    occupancy = min(1.0, t / 128.0) if t else 1.0
    return base / max(occupancy, 0.1)


def _attention(kernel, compute, cost: "KernelCost", dev: Device, itemsize: int) -> tuple[float, float]:
    """Fused attention: every block of BQ query rows streams all of K and V, so they are read
    ceil(Sq / BQ) times; q, the mask and the output once (the schedule-blind count reads K and V once)."""
    bq, _bk = dict(kernel.meta).get("attention_tile", (compute.sq, compute.sk))
    heads = int(np.prod(compute.batch))   # 1 for no batch
    rereads = (-(-compute.sq // bq) - 1) * heads * compute.sk * (compute.d + compute.dv) * itemsize
    nbytes = cost.bytes + rereads
    return max(cost.flops / dev.peak(cost.dtype), nbytes / dev.bandwidth) * 1e3, nbytes


def predict_schedule_ms(compiled, device_or_name: "Device | str | None" = None) -> float:
    return predict_schedule(compiled, device_or_name)[0]


def predict_schedule(compiled, device_or_name: "Device | str | None" = None) -> tuple[float, float]:
    """(model ms, model global bytes) of a compile's tiled program *with its schedule* (sums over kernels).

    predict_schedule_ms is its first element. The bytes are the GPU tiling's global-memory traffic
    (operands re-read once per block tile) — what the simulator counts exactly.

    Unlike kernel_costs (schedule-blind roofline), this sees tile sizes, register tiles, shared-memory
    staging, double buffering and chunking, so it can rank candidate schedules (explorer.autotune).

    >>> import numpy as np, explorer
    >>> a = np.ones((256, 256), np.float32)
    >>> fast = explorer.compile(lambda a, b: a @ b, a, a, target="cpu", schedule={"thread_tile": (6, 16)})
    >>> slow = explorer.compile(lambda a, b: a @ b, a, a, target="cpu", schedule={"thread_tile": (1, 3)})
    >>> predict_schedule_ms(fast, "cpu") < predict_schedule_ms(slow, "cpu")
    True
    """
    target = getattr(compiled, "target", "cpu")
    dev = device(device_or_name if device_or_name is not None else target)
    prog = compiled.stage("tiled").ir
    # each tiled kernel's compute definition, from the lowered stage (tiling keeps the kernel names)
    lowered = compiled.stage("lowered").ir if "lowered" in getattr(compiled, "stage_names", ()) else None
    computes = {c.name: c for c in getattr(lowered, "computes", ())}
    costs = {k.name: k for k in kernel_costs(compiled, dev, counters=False)}
    total_ms = total_bytes = 0.0
    for kernel in prog.kernels:
        compute = computes.get(kernel.name)
        out = kernel.output_buffers[0] if kernel.output_buffers else None
        itemsize = np.dtype(_np_dtype(out.dtype)).itemsize if out is not None else 4
        if kernel.kind == "contraction" and compute is not None and get_target(target).openmp:
            total_ms += _cpu_matmul_ms(kernel, compute, dev, itemsize)
            total_bytes += costs[kernel.name].bytes if kernel.name in costs else 0
        elif kernel.kind == "contraction" and compute is not None:
            ms, nbytes = _gpu_matmul(kernel, compute, dev, itemsize)
            total_ms, total_bytes = total_ms + ms, total_bytes + nbytes
        elif kernel.kind == "attention" and compute is not None and kernel.name in costs:
            ms, nbytes = _attention(kernel, compute, costs[kernel.name], dev, itemsize)
            total_ms, total_bytes = total_ms + ms, total_bytes + nbytes
        elif kernel.name in costs:
            total_ms += _other_ms(kernel, costs[kernel.name], dev, target)
            total_bytes += costs[kernel.name].bytes
    return total_ms, total_bytes


def _np_dtype(name: str):
    from .loopir import np_dtype
    return np_dtype(name)
