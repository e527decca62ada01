"""CPU backend: build the generated C with the system compiler, load it with ctypes, run it.

>>> import numpy as np, explorer
>>> c = explorer.compile(lambda a: np.tanh(a) * 2, np.ones(8, np.float32), target="cpu")
>>> c(np.zeros(8, np.float32))
array([0., 0., 0., 0., 0., 0., 0., 0.], dtype=float32)

Build: `cc -O3 -march=native -fopenmp -fno-math-errno -fno-trapping-math -shared -fPIC` plus
`-ffp-contract=off` (no FMA contraction: results equal NumPy's roundings) or, with fast_math=True,
`-ffast-math`. Without a working OpenMP the build falls back to `-fopenmp-simd`, single-threaded,
and says so once. Shared objects are cached by the hash of source, flags and compiler version
under `$XDG_CACHE_HOME/kernel-explorer/cpu` (default ~/.cache/...); a file lock per entry and an
atomic rename make concurrent processes safe. `-fno-math-errno` and `-fno-trapping-math` change
no value (NaN/Inf results stay NumPy's): they only drop errno and FP-exception flags, which lets gcc
inline sqrt and turn selects with float compares into blends so loops vectorize.

Calls: each kernel runs with the team its thread policy allows at that moment (threads.py;
serial for small kernels, no more threads than free usable cores), outputs and temporaries come
from a caching allocator (BufferPool) that never hands out memory a caller still references,
and everything input-independent is prepared once (docs/CPU_THREADS.md).
"""
from __future__ import annotations

import ctypes
import contextlib
import fcntl
import hashlib
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BackendUnavailable, CompileError, ExplorerError, KernelFault
from . import threads

# -fno-tree-loop-distribute-patterns: gcc otherwise turns a register tile's write-back loop into
# memcpy, which forces the tile out of registers and made plain matmul kernels 2-10x slower than the
# same nest with a fused epilogue (an unfair fused-vs-unfused comparison).
BASE_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fno-tree-loop-distribute-patterns",
              "-shared", "-fPIC")
OPENMP_FLAG = "-fopenmp"
NO_OPENMP_FLAG = "-fopenmp-simd"   # keeps `omp simd` pragmas working without the runtime
FAST_MATH_FLAG = "-ffast-math"
# Exact by default: without it gcc contracts a*b+c into one FMA (one rounding instead of two), so
# fused results drift from NumPy's (fused f64 gelu by 1.2e-9). fast_math=True allows contraction.
EXACT_FLAG = "-ffp-contract=off"

# Counters for tests and the explorer UI: how many compiler runs and cache hits happened.
stats = {"compiles": 0, "cache_hits": 0}

_PROBE: dict[str, dict[str, Any]] = {}   # CC setting → probe result
_SAID: set[str] = set()


def _say_once(msg: str) -> None:
    if msg not in _SAID:
        _SAID.add(msg)
        print(msg, file=sys.stderr)


def clear_cache() -> None:
    """Forget the compiler probe (after changing $CC)."""
    _PROBE.clear()


def _compiler_cmd() -> list[str] | None:
    env = os.environ.get("CC")
    if env:
        cmd = shlex.split(env)
        if not cmd:
            return None
        exe = shutil.which(cmd[0])
        return [exe, *cmd[1:]] if exe else None
    for name in ("cc", "gcc", "clang"):
        exe = shutil.which(name)
        if exe:
            return [exe]
    return None


def probe() -> dict[str, Any]:
    """The C compiler found here, cached per $CC: {'ok', 'cmd' (argv prefix), 'openmp', 'version', 'reason'}."""
    key = os.environ.get("CC", "")
    if key in _PROBE:
        return _PROBE[key]
    cmd = _compiler_cmd()
    info: dict[str, Any] = {"ok": False, "cmd": cmd, "openmp": False, "version": "", "reason": ""}
    if cmd is None:
        info["reason"] = (f"no C compiler: $CC={key!r} is not on PATH" if key else
                          "no C compiler (cc, gcc or clang) on PATH; install gcc (apt-get install gcc)")
        _PROBE[key] = info
        return info
    try:
        ver = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=30)
        info["version"] = (ver.stdout or ver.stderr).splitlines()[0] if (ver.stdout or ver.stderr) else ""
        with tempfile.TemporaryDirectory(prefix="ke-probe-") as d:
            src = Path(d) / "probe.c"
            src.write_text("#include <math.h>\nint ke_probe(float x) { return (int)expf(x); }\n")
            def trial(extra: list[str]) -> subprocess.CompletedProcess:
                return subprocess.run([*cmd, *BASE_FLAGS, *extra, str(src), "-o", str(Path(d) / "p.so"), "-lm"],
                                      capture_output=True, text=True, timeout=60)
            r = trial([OPENMP_FLAG])
            if r.returncode == 0:
                info.update(ok=True, openmp=True)
            else:
                r2 = trial([NO_OPENMP_FLAG])
                if r2.returncode == 0:
                    info.update(ok=True, openmp=False, openmp_error=_first_error(r.stderr))
                else:
                    info["reason"] = f"{cmd[0]} cannot build a shared library: {_first_error(r2.stderr)}"
    except (OSError, subprocess.SubprocessError) as e:
        info["reason"] = f"{cmd[0]} could not run: {e}"
    if info["ok"]:
        info["reason"] = f"{info['version'] or cmd[0]}" + ("" if info["openmp"] else " (no OpenMP: single-threaded)")
    _PROBE[key] = info
    return info


def native_vector_bytes() -> int:
    """Bytes of the widest float vector register the C compiler targets here under -march=native: 64 when
    it defines __AVX512F__ (AVX-512), else 32 (AVX2, or no compiler). Cached with the probe, per $CC.

    The CPU schedules size register tiles with it (explorer.schedules.cpu): a 64-byte vector tile on a
    machine without AVX-512 would be split into twice the registers and spill."""
    info = probe()
    if "vector_bytes" not in info:
        nbytes = 32
        if info["ok"]:
            try:
                r = subprocess.run([*info["cmd"], "-march=native", "-dM", "-E", "-x", "c", os.devnull],
                                   capture_output=True, text=True, timeout=30)
                if r.returncode == 0 and re.search(r"^#define __AVX512F__ ", r.stdout, re.M):
                    nbytes = 64
            except (OSError, subprocess.SubprocessError):
                pass
        info["vector_bytes"] = nbytes
    return int(info["vector_bytes"])


def available() -> tuple[bool, str]:
    """(True, compiler version) when a C compiler can build shared libraries here; cached."""
    info = probe()
    return bool(info["ok"]), str(info["reason"])


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "kernel-explorer" / "cpu"


def flags_for(fast_math: bool = False) -> list[str]:
    info = probe()
    flags = list(BASE_FLAGS)
    flags.append(OPENMP_FLAG if info.get("openmp") else NO_OPENMP_FLAG)
    flags.append(FAST_MATH_FLAG if fast_math else EXACT_FLAG)
    return flags


def _first_error(log: str) -> str:
    for line in log.splitlines():
        if "error" in line:
            return line.strip()
    lines = [l for l in log.splitlines() if l.strip()]
    return lines[0].strip() if lines else "unknown compiler error"


def _part_starts(parts: Sequence[str]) -> list[int]:
    """1-based first line of each part in Codegen.source() (parts rstripped, joined by a blank line)."""
    starts, line = [], 1
    for p in parts:
        starts.append(line)
        line += p.rstrip().count("\n") + 2
    return starts


def compile_source(source: str, fast_math: bool = False, parts: Sequence[str] | None = None,
                   part_names: Sequence[str] | None = None, extra_flags: Sequence[str] = ()) -> Path:
    """Build `source` into a cached shared library and return its path.

    `parts` (prelude, kernel 0, kernel 1, ...) lets a compiler error name the kernel and the line
    inside that kernel's own source. `extra_flags` are added to the compile step (include paths of
    the C call path's extension, backends/dispatch.py).
    """
    info = probe()
    if not info["ok"]:
        raise BackendUnavailable(f"the CPU backend needs a C compiler: {info['reason']}")
    if not info["openmp"]:
        _say_once(f"explorer: {info['cmd'][0]} cannot link OpenMP ({info.get('openmp_error', '')}); "
                  f"CPU kernels run single-threaded")
    flags = [*flags_for(fast_math), *extra_flags]
    cmd = info["cmd"]
    key = hashlib.sha256("\0".join([source, " ".join(cmd), " ".join(flags), info["version"]]).encode()).hexdigest()
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    so = root / f"{key[:32]}.so"
    if _entry_ok(so):
        stats["cache_hits"] += 1
        return so
    with open(root / f"{key[:32]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # another process may be building the same entry
        try:
            if _entry_ok(so):
                stats["cache_hits"] += 1
                return so
            if so.exists():   # truncated or overwritten (a full disk, a killed copy): rebuild it
                stats["corrupt_entries"] = stats.get("corrupt_entries", 0) + 1
                so.unlink()
            with tempfile.TemporaryDirectory(prefix="build-", dir=root) as d:
                src = Path(d) / "kernels.c"
                src.write_text(source)
                tmp_so = Path(d) / "kernels.so"
                obj = Path(d) / "kernels.o"
                stats["compiles"] += 1
                r = subprocess.run([*cmd, *flags, "-c", str(src), "-o", str(obj)],
                                   capture_output=True, text=True, timeout=300)
                if r.returncode != 0:
                    raise _compile_error(r.stderr or r.stdout, parts, part_names)
                # link without -ffast-math: linking with it adds crtfastmath.o, whose constructor
                # turns on flush-to-zero for the whole process (numpy would lose subnormals)
                link = [f for f in flags if f in ("-shared", "-fPIC", OPENMP_FLAG)]
                r = subprocess.run([*cmd, *link, str(obj), "-o", str(tmp_so), "-lm"],
                                   capture_output=True, text=True, timeout=300)
                if r.returncode != 0:
                    raise CompileError(f"linking the CPU kernels failed: {_first_error(r.stderr or r.stdout)}",
                                       log=r.stderr or r.stdout)
                os.replace(tmp_so, so)   # atomic: readers see the whole file or none
                _write_atomic(_digest_path(so), _digest(so))   # after the .so: its presence marks a whole entry
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return so


def _digest_path(so: Path) -> Path:
    return so.with_suffix(".sha256")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry_ok(so: Path) -> bool:
    """A cache entry is whole when its .so exists and matches the digest written after it was built."""
    try:
        want = _digest_path(so).read_text().strip()
        return so.is_file() and _digest(so) == want
    except OSError:
        return False


def _write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, then os.replace: no reader sees a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _compile_error(log: str, parts: Sequence[str] | None, names: Sequence[str] | None) -> CompileError:
    first = _first_error(log)
    m = re.search(r"kernels\.c:(\d+):(?:(\d+):)?\s*(?:fatal )?error:\s*(.*)", log)
    if not m:
        return CompileError(f"C compiler failed: {first}", log=log)
    gline, msg = int(m.group(1)), m.group(3).strip()
    if parts:
        starts = _part_starts(parts)
        for i in range(len(parts) - 1, -1, -1):
            if gline >= starts[i]:
                local = gline - starts[i] + 1
                where = "the prelude" if i == 0 else f"kernel {i - 1} ({names[i - 1] if names else '?'})"
                return CompileError(f"C compiler error in {where}, line {local}: {msg}", log=log, line=local)
    return CompileError(f"C compiler error at line {gline}: {msg}", log=log, line=gline)


def _aligned_empty(shape: tuple[int, ...], dtype: Any, align: int = 64) -> np.ndarray:
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    raw = np.empty(n + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + n].view(dt).reshape(shape)


class BufferPool:
    """A small caching allocator for kernel outputs and temporaries (as PyTorch's).

    A result the caller dropped is handed out again, so calling a kernel costs the kernel, not
    fresh pages (first-touching a new 64 MB output costs ~4-7 ms of page faults here). A buffer is
    free when nothing but the pool references its memory: CPython's reference count of the block
    that owns it (every view, slice or reshape the caller keeps holds that block, through .base)
    is back to the pool's own. A result the caller still holds, or any view of it, is never
    handed out again. Free blocks above `limit_bytes` in all are released, least recently used
    first; at most `per_size` blocks of one size are kept.

    >>> pool = BufferPool()
    >>> a, _ = pool.take((4,), np.float32); pa = a.ctypes.data; del a
    >>> b, _ = pool.take((4,), np.float32); b.ctypes.data == pa          # dropped: reused
    True
    >>> c, _ = pool.take((4,), np.float32); c.ctypes.data == b.ctypes.data   # b is held: not reused
    False
    """

    ALIGN = 64

    def __init__(self, limit_bytes: int = 1 << 30, per_size: int = 4):
        import threading
        self.limit_bytes = int(limit_bytes)
        self.per_size = int(per_size)
        self._blocks: dict[int, list[list]] = {}   # nbytes -> [[raw, typed view, ptr, last use], ...]
        self._lock = threading.Lock()
        self._tick = 0
        self.stats = {"hits": 0, "misses": 0, "unpooled": 0, "released": 0}
        probe = self._new_block(1, (1,), np.dtype(np.uint8))
        self._free_refs = self._refs(probe)   # the count of a block nobody else holds

    @staticmethod
    def _refs(block: list) -> int:
        # the pool's list and the typed view hold the raw block; every array handed out (and each
        # view of it) adds one. Calibrated in __init__ through this same function.
        return sys.getrefcount(block[0])

    @property
    def pooled_bytes(self) -> int:
        return sum(n * len(bl) for n, bl in self._blocks.items())

    def _new_block(self, nbytes: int, shape: tuple[int, ...], dt: np.dtype) -> list:
        raw = np.empty(nbytes + self.ALIGN, np.uint8)
        ptr = raw.ctypes.data + (-raw.ctypes.data) % self.ALIGN
        return [raw, self._typed(raw, ptr, nbytes, shape, dt), ptr, 0]

    def take(self, shape: tuple[int, ...], dtype: Any, nbytes: int | None = None) -> tuple[np.ndarray, int]:
        """(a C-contiguous 64-byte-aligned array of `shape`/`dtype`, its data pointer); contents undefined."""
        if nbytes is None:
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        with self._lock:
            a, p, _ = self._take(shape, dtype, nbytes)
        return a, p

    def take_again(self, hint: tuple | None, shape: tuple[int, ...], dtype: Any,
                   nbytes: int) -> tuple[np.ndarray, int, tuple | None]:
        """take(), trying first `hint`: what this returned to the same caller last time (its third item).
        A call path that runs again and again, its caller dropping each result, gets its block back
        with one reference count check instead of a search.

        >>> pool = BufferPool()
        >>> a, pa, hint = pool.take_again(None, (4,), np.float32, 16); del a
        >>> b, pb, hint = pool.take_again(hint, (4,), np.float32, 16); pb == pa
        True
        """
        with self._lock:
            if hint is not None:
                block, typed = hint
                # block[1] is still the typed view the hint saw: neither released (None) nor retyped
                if block[1] is typed and self._refs(block) == self._free_refs:
                    self._tick += 1
                    block[3] = self._tick
                    self.stats["hits"] += 1
                    return typed.view(), block[2], hint
            a, p, block = self._take(shape, dtype, nbytes)
            return a, p, (None if block is None else (block, block[1]))

    def _take(self, shape: tuple[int, ...], dtype: Any, nbytes: int) -> tuple[np.ndarray, int, list | None]:
        """take() under the lock: (array, pointer, its pool block or None when the block is not kept)."""
        blocks = self._blocks.get(nbytes)
        if blocks is not None:
            free = self._free_refs
            for b in blocks:
                if self._refs(b) == free:
                    typed = b[1]
                    if typed.shape != shape or typed.dtype != dtype:
                        typed = b[1] = self._typed(b[0], b[2], nbytes, shape, dtype)
                    self._tick += 1
                    b[3] = self._tick
                    self.stats["hits"] += 1
                    return typed.view(), b[2], b
        self.stats["misses"] += 1
        block = self._new_block(nbytes, shape, np.dtype(dtype))
        self._tick += 1
        block[3] = self._tick
        if blocks is None:
            blocks = self._blocks[nbytes] = []
        if len(blocks) >= self.per_size or not self._make_room(nbytes):
            self.stats["unpooled"] += 1
            return block[1], block[2], None                 # not kept: plain garbage once dropped
        blocks.append(block)
        return block[1].view(), block[2], block

    @staticmethod
    def _typed(raw: np.ndarray, ptr: int, nbytes: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        off = ptr - raw.ctypes.data
        return raw[off:off + nbytes].view(dtype).reshape(shape)

    def _make_room(self, nbytes: int) -> bool:
        if nbytes > self.limit_bytes:
            return False
        while self.pooled_bytes + nbytes > self.limit_bytes:
            free = [(b[3], n, i) for n, bl in self._blocks.items() for i, b in enumerate(bl)
                    if self._refs(b) == self._free_refs]
            if not free:
                return False
            _, n, i = min(free)
            self._blocks[n].pop(i)[1] = None     # a caller's take_again hint to it misses from now on
            self.stats["released"] += 1
        return True

    def empty_cache(self) -> None:
        """Release every free block (as torch.cuda.empty_cache); blocks still held stay."""
        with self._lock:
            for n in list(self._blocks):
                keep = []
                for b in self._blocks[n]:
                    if self._refs(b) != self._free_refs:
                        keep.append(b)
                    else:
                        b[1] = None     # released: a caller's take_again hint to it misses from now on
                self.stats["released"] += len(self._blocks[n]) - len(keep)
                self._blocks[n] = keep


# The pool every CPU executable allocates outputs (and temporaries above TEMP_SET_LIMIT) from.
POOL = BufferPool()
TEMP_SET_LIMIT = 64 << 20   # bytes of temporaries one executable may keep between calls
OWN_OUTPUT_BYTES = 64 << 10  # outputs up to this size are recycled by the fast call path itself (fast_call)


class CpuExecutable:
    """Loaded kernels of one Program; run(inputs) → outputs in Program.outputs order.

    `thread_policy` holds one threads.Decision per kernel (how many OpenMP threads it may use, and
    why); `thread_stats` counts the calls that ran serial, parallel, or with fewer threads because
    other threads held cores. Outputs come from POOL; temporaries from a set kept per executable (_take_temp_set).
    """

    # run(inputs, checked=True) skips the input checks: Compiled's fast call path, for inputs it checked
    runs_checked = True

    def __init__(self, lib_path: Path, codegen, program, constants: dict[str, np.ndarray] | None = None):
        from ..loopir import np_dtype
        self.wait_policy = threads.set_wait_policy()   # before libgomp loads with this library
        self.lib_path = Path(lib_path)
        self.lib = ctypes.CDLL(str(lib_path))
        self.codegen = codegen
        self.program = program
        self.constants = dict(constants or {})
        self._np_dtype = np_dtype
        self.kernels: list[tuple[str, Any, tuple[str, ...]]] = []
        for i, gk in enumerate(codegen.kernels):
            try:
                fn = getattr(self.lib, gk.name)
            except AttributeError:
                raise CompileError(f"kernel {i} source does not define a function named {gk.name}; an edited "
                                   f"kernel must keep its name and parameters") from None
            fn.restype = None
            fn.argtypes = [ctypes.c_void_p] * len(gk.kernel.params)
            self.kernels.append((gk.name, fn, tuple(p.name for p in gk.kernel.params)))
        self._scratch: dict[str, np.ndarray] | None = None
        try:   # the team size the generated pragmas read (num_threads(ke_num_threads))
            self._team = ctypes.c_int.in_dll(self.lib, "ke_num_threads")
        except ValueError:
            self._team = None    # a library without the variable: libgomp's own default team
        self.cores, self.cores_why = threads.usable_cores()
        self.machine_cpus = os.cpu_count() or self.cores
        self.thread_policy = threads.plan([gk.kernel for gk in codegen.kernels], self.cores, self.cores_why)
        self._stats = {"serial": 0, "parallel": 0, "fewer_threads_busy": 0}
        self._c_calls: list[tuple[Any, list]] = []   # C call paths made for this program (dispatch.Call, constants)
        self._plan = self._make_plan()
        # every kernel runs on the calling thread: the team size is set once, not per kernel and call
        self._serial_only = self._team is None or all(fixed for *_, fixed in self._plan)
        if self._serial_only and self._team is not None:
            self._team.value = 1

    # -- the call path: everything that does not depend on the inputs is computed once here ------
    def _make_plan(self):
        prog = self.program
        in_index = {b.name: i for i, b in enumerate(prog.inputs)}
        self._in_specs = [(b.shape, self._np_dtype(b.dtype)) for b in prog.inputs]
        self._ptr_cache: list[tuple[Any, int] | None] = [None] * len(prog.inputs)
        fixed: dict[str, tuple[np.ndarray, int]] = {}
        for name, arr in self.constants.items():
            if name not in in_index:
                buf = prog.buffers()[name] if name in prog.buffers() else None
                a = np.ascontiguousarray(arr, dtype=self._np_dtype(buf.dtype) if buf is not None else None)
                fixed[name] = (a, a.ctypes.data)
        self._fixed = fixed
        outs = [b for b in prog.outputs if b.name not in in_index and b.name not in fixed]
        temps = [b for b in prog.temps if b.name not in in_index and b.name not in fixed
                 and b.name not in {o.name for o in outs}]
        self._alloc = [(tuple(b.shape), self._np_dtype(b.dtype), b.nbytes) for b in outs]
        # temporaries never leave a call, so each call borrows a whole set of them (one list pop, not
        # one pool take per buffer: ~1.5 µs each, most of the Python cost of a many-kernel call); a
        # set is returned after the call and kept for the next one. Concurrent calls (threads) each
        # take their own set. Sets above TEMP_SET_LIMIT bytes come from POOL per call instead.
        self._temp_specs = [(tuple(b.shape), self._np_dtype(b.dtype), b.nbytes) for b in temps]
        self._temp_sets: list[tuple[list[np.ndarray], list[int]]] = []
        if sum(n for *_, n in self._temp_specs) > TEMP_SET_LIMIT:
            self._alloc += self._temp_specs
            self._temp_specs = []
        slot = {name: ("in", i) for name, i in in_index.items()}
        slot.update({name: ("fixed", p) for name, (_, p) in fixed.items()})
        slot.update({b.name: ("new", k) for k, b in enumerate((*outs, *temps))})
        for _, _, params in self.kernels:
            for p in params:
                if p not in slot:
                    raise ExplorerError(f"kernel parameter {p} is neither an input, an output, a temporary nor a "
                                        f"constant of program {prog.name}")
        self._out_slots = [slot[b.name] for b in prog.outputs]
        self._hints: list[tuple | None] = [None] * len(self._alloc)   # what POOL.take_again gave each last call
        self._spares: list[list | None] = [[] if nbytes <= OWN_OUTPUT_BYTES else None
                                           for *_, nbytes in self._alloc]     # see _launch
        # the usual case, every output a fresh buffer in _alloc order: run returns that list as it is
        self._outs_are_new = self._out_slots == [("new", k) for k in range(len(self._alloc))]
        # every pointer of a call lives in one flat list: inputs, then new buffers, then constants
        n_in, n_new = len(prog.inputs), len(outs) + len(temps)
        fixed_pos = {p: n_in + n_new + k for k, (_, p) in enumerate(fixed.values())}
        self._fixed_ptrs = [p for _, p in fixed.values()]

        def flat(kind: str, i: int) -> int:
            return i if kind == "in" else n_in + i if kind == "new" else fixed_pos[i]
        from operator import itemgetter
        plan = []
        self._n_in, self._n_new = n_in, n_new
        self._param_index: list[list[int]] = []     # per kernel: its parameters' places in the flat list
        for (_, fn, params), dec in zip(self.kernels, self.thread_policy):
            idx = [flat(*slot[p]) for p in params]
            self._param_index.append(idx)
            pick = (lambda ptrs, i=idx[0]: (ptrs[i],)) if len(idx) == 1 else itemgetter(*idx)
            plan.append((fn, pick, dec, dec.threads if dec.threads <= 1 else 0))
        return plan

    @property
    def thread_stats(self) -> dict[str, int]:
        """Kernel calls that ran serial, parallel, or with fewer threads because other threads held
        cores; calls through the C call path (all serial) included."""
        stats = dict(self._stats)
        stats["serial"] += sum(call.calls for call, _ in self._c_calls) * len(self._plan)
        return stats

    def _team_size(self, dec) -> int:
        if dec.threads <= 1:
            self._stats["serial"] += 1
            return 1
        n = threads.threads_now(dec.threads, threads.busy_cores_for_call(cpus=self.machine_cpus, cores=self.cores),
                              self.cores)
        self._stats["parallel" if n > 1 else "serial"] += 1
        if n > 1:
            threads.place_workers(n)
        if n < dec.threads:
            self._stats["fewer_threads_busy"] += 1
        return n

    def run(self, inputs: Sequence[np.ndarray], checked: bool = False) -> list[np.ndarray]:
        """Outputs for `inputs` (the program's inputs, constants included). checked=True: the
        caller guarantees C-contiguous ndarrays of the right shapes and dtypes (Compiled's fast path)."""
        if checked:
            ins = inputs
        else:
            specs = self._in_specs
            if len(inputs) != len(specs):
                raise ExplorerError(f"{self.program.name} takes {len(specs)} inputs, got {len(inputs)}")
            ins = []
            for buf, arr, (shape, dt) in zip(self.program.inputs, inputs, specs):
                if not (type(arr) is np.ndarray and arr.dtype == dt and arr.flags.c_contiguous):
                    arr = np.ascontiguousarray(np.asarray(arr), dtype=dt)   # copies only when it must
                if arr.shape != shape:
                    raise ExplorerError(f"input {buf.name} must have shape {shape}, got {arr.shape}")
                ins.append(arr)
        # a.ctypes.data costs ~1 µs; the same array object passed again keeps its pointer (numpy
        # refuses to resize an array that has a weak reference, so the pointer cannot go stale)
        cache = self._ptr_cache
        ptrs = []
        for i, a in enumerate(ins):
            hit = cache[i]
            if hit is not None and hit[0]() is a:
                ptrs.append(hit[1])
            else:
                p = a.ctypes.data
                try:
                    cache[i] = (weakref.ref(a), p)
                except TypeError:
                    pass
                ptrs.append(p)
        if self._outs_are_new:
            return self._launch(ptrs)
        new = self._launch(ptrs)
        return [ins[i].copy() if kind == "in" else (self._fixed_array(i) if kind == "fixed" else new[i])
                for kind, i in self._out_slots]

    def _launch(self, ptrs: list[int]) -> list[np.ndarray]:
        """Run the kernels on `ptrs` (the inputs' pointers, constants included): new output buffers and
        a set of temporaries are appended, then the fixed constants'; returns the new buffers.

        Small outputs (<= OWN_OUTPUT_BYTES) come from blocks of this executable's own, one list per
        output, handed out again once the caller dropped the last result (the pool's rule: nobody but
        us references the block) without the pool's lock and search; larger ones from POOL, whose
        limit bounds what is kept."""
        new = []
        take, hints, spares = POOL.take_again, self._hints, self._spares
        for k, (shape, dt, nbytes) in enumerate(self._alloc):
            spare = spares[k]
            if spare is None:
                a, p, hints[k] = take(hints[k], shape, dt, nbytes)
            else:
                try:
                    block = spare.pop()       # atomic under the GIL: no other call can claim it now
                except IndexError:
                    block = None
                if block is None or sys.getrefcount(block[0]) != POOL._free_refs:   # the last result is held
                    block = POOL._new_block(nbytes, shape, dt)
                a, p = block[1].view(), block[2]
                spare.append(block)           # the view handed out holds it until the caller drops it
            new.append(a)
            ptrs.append(p)
        temp_set = self._take_temp_set() if self._temp_specs else None
        if temp_set is not None:
            ptrs += temp_set[1]
        ptrs += self._fixed_ptrs
        team, stats = self._team, self._stats
        try:
            if self._serial_only:
                # team.value stays 1 (set in __init__): every executable of this library is this
                # program, so none sets another team size on it
                stats["serial"] += len(self._plan)
                for fn, pick, _, _ in self._plan:
                    fn(*pick(ptrs))
            else:
                for fn, pick, dec, fixed_team in self._plan:
                    n = 1
                    if team is not None:
                        if fixed_team:
                            team.value = fixed_team
                            stats["serial"] += 1
                        else:
                            team.value = n = self._team_size(dec)
                    fn(*pick(ptrs))
                    if n > 1:
                        threads.region_ended(n)
        finally:
            if temp_set is not None:
                self._temp_sets.append(temp_set)
        return new

    def fast_call(self, specs: Sequence[tuple[tuple[int, ...], np.dtype]],
                  consts: Sequence[np.ndarray]) -> Any:
        """Compiled's call path for this program, as one closure: `call(args)` checks that `args` are
        ndarrays exactly like `specs` (shape, dtype, C-contiguous) and returns run([*args, *consts],
        checked=True), or None when they are not (the caller then takes the full path with its
        conversions and clear errors). The checks and pointers of run's, then the same launch, with
        everything that does not depend on the arguments looked up once.

        >>> import numpy as np, explorer
        >>> c = explorer.compile(lambda a: a + 1, np.ones(4, np.float32), target="cpu")
        >>> call = c.executable().fast_call([((4,), np.dtype(np.float32))], [])
        >>> call((np.zeros(4, np.float32),)), call((np.zeros(4, np.float64),))
        ([array([1., 1., 1., 1.], dtype=float32)], None)
        """
        specs = [(tuple(shape), np.dtype(dt)) for shape, dt in specs]
        consts = list(consts)     # the closure keeps them (and so their pointers) alive
        const_ptrs = [a.ctypes.data for a in consts]
        c_call = self._c_call(specs, consts, const_ptrs)
        if c_call is not None:
            return c_call
        n_args, ndarray, ref = len(specs), np.ndarray, weakref.ref
        cache: list[tuple[Any, int] | None] = [None] * n_args
        launch, outs_are_new = self._launch, self._outs_are_new

        def call(args: tuple) -> list[np.ndarray] | None:
            if len(args) != n_args:
                return None
            ptrs = []
            for i, a in enumerate(args):
                shape, dt = specs[i]
                if type(a) is not ndarray or a.dtype != dt or a.shape != shape or not a.flags.c_contiguous:
                    return None
                hit = cache[i]
                if hit is not None and hit[0]() is a:    # see run(): a known array keeps its pointer
                    ptrs.append(hit[1])
                else:
                    p = a.ctypes.data
                    cache[i] = (ref(a), p)
                    ptrs.append(p)
            if not outs_are_new:     # an output that is an input or a constant: run() copies it
                return self.run([*args, *consts], checked=True)
            return launch(ptrs + const_ptrs)
        return call

    def _c_call(self, specs, consts: list[np.ndarray], const_ptrs: list[int]) -> Any | None:
        """fast_call's path in C (backends/dispatch.py) when it serves this program: every kernel serial,
        every output fresh, outputs and temporaries each at most OWN_OUTPUT_BYTES (bigger ones keep the
        pool's already-faulted pages); None otherwise or where the extension cannot be built."""
        arrays = [*self._alloc, *self._temp_specs]     # in the flat order: outputs, then temporaries
        if not (self._serial_only and self._outs_are_new and self._alloc
                and all(nbytes <= OWN_OUTPUT_BYTES for *_, nbytes in arrays)):
            return None
        from . import dispatch
        n_args, n_in = len(specs), self._n_in

        def source(i: int) -> tuple[int, int, int]:   # (input | output or temporary | a constant's address)
            if i < n_args:
                return 0, i, 0
            if i < n_in:
                return 2, 0, const_ptrs[i - n_args]
            if i < n_in + self._n_new:
                return 1, i - n_in, 0
            return 2, 0, self._fixed_ptrs[i - n_in - self._n_new]
        kernels = [(fn, [source(i) for i in idx]) for (fn, *_), idx in zip(self._plan, self._param_index)]
        call = dispatch.make_call(specs, [(shape, dt) for shape, dt, _ in arrays], len(self._alloc), kernels)
        if call is not None:      # kept with the constants behind its addresses
            self._c_calls.append((call, consts))
        return call

    def _take_temp_set(self) -> tuple[list[np.ndarray], list[int]]:
        """A set of this program's temporaries no other call is using (arrays, pointers)."""
        try:
            return self._temp_sets.pop()     # atomic under the GIL: two threads never share a set
        except IndexError:
            arrays = [_aligned_empty(shape, dt) for shape, dt, _ in self._temp_specs]
            return arrays, [a.ctypes.data for a in arrays]

    def _fixed_array(self, ptr: int) -> np.ndarray:
        return next(a for a, p in self._fixed.values() if p == ptr).copy()

    # -- benchmarking and the sandbox: a dict of named buffers --------------------------------------
    def _buffers(self, inputs: Sequence[np.ndarray], fresh: bool = True) -> dict[str, np.ndarray]:
        prog = self.program
        if len(inputs) != len(prog.inputs):
            raise ExplorerError(f"{prog.name} takes {len(prog.inputs)} inputs, got {len(inputs)}")
        env: dict[str, np.ndarray] = {}
        for buf, arr in zip(prog.inputs, inputs):
            want = self._np_dtype(buf.dtype)
            a = np.asarray(arr)
            if a.shape != buf.shape:
                raise ExplorerError(f"input {buf.name} must have shape {buf.shape}, got {a.shape}")
            env[buf.name] = np.ascontiguousarray(a, dtype=want)
        env.update(self.constants)
        if fresh or self._scratch is None:
            scratch = {b.name: _aligned_empty(b.shape, self._np_dtype(b.dtype))
                       for b in (*prog.outputs, *prog.temps) if b.name not in env}
            if not fresh:
                self._scratch = scratch
        else:
            scratch = self._scratch
        env.update({k: v for k, v in scratch.items() if k not in env})
        return env

    def sampler(self, inputs: Sequence[np.ndarray], include_copies: bool = False):
        """One timed run of all kernels for explorer.measure → (total ms, {kernel: ms}); output/temp
        buffers are allocated once, as a caching allocator would. Each kernel runs with the team its
        thread policy gives it at that moment, as a call would."""
        from ..measure import Sampler
        env = self._buffers(inputs, fresh=False)
        calls = [(name, fn, [env[p].ctypes.data for p in params], dec)
                 for (name, fn, params), dec in zip(self.kernels, self.thread_policy)]
        team = self._team

        def sample(env=env) -> tuple[float, dict[str, float]]:   # env keeps the buffers behind the pointers alive
            per: dict[str, float] = {}
            for name, fn, args, dec in calls:
                t0 = time.perf_counter()
                n = 1
                if team is not None:
                    team.value = n = self._team_size(dec)
                fn(*args)
                if n > 1:
                    threads.region_ended(n)
                per[name] = per.get(name, 0.0) + (time.perf_counter() - t0) * 1e3
            return sum(per.values()), per
        return Sampler(sample)

    def time(self, inputs: Sequence[np.ndarray], warmup: int = 3, repeat: int | None = 20,
             include_copies: bool = False):
        """Timing of all kernels (explorer.measure), with the median of each kernel's own time in per_kernel_ms."""
        from ..measure import measure
        return measure(self.sampler(inputs), warmup=warmup, repeat=repeat)

    def trial_run(self, inputs: Sequence[np.ndarray], what: str = "the edited kernels",
                  timeout_s: float | None = None) -> None:
        """Run once on `inputs` in a child process with canaries around every buffer (trial_run):
        KernelFault when the kernels crash, hang or write outside their buffers. Compiled.with_kernel_source
        calls it before running hand-edited C in this process."""
        trial_run(self, inputs, what=what, timeout_s=timeout_s)


def build_codegen(codegen, overrides: dict[int, str] | None = None, fast_math: bool | None = None,
                  constants: dict[str, np.ndarray] | None = None) -> CpuExecutable:
    """Build a Codegen (language 'c') directly: what build() does for a Compiled."""
    if codegen.language != "c":
        raise ExplorerError(f"the CPU backend runs C code, this codegen is {codegen.language!r}; "
                            f"compile with target='cpu'")
    overrides = dict(overrides or {})
    parts = [codegen.prelude] + [overrides.get(i, k.source) for i, k in enumerate(codegen.kernels)]
    fm = codegen.fast_math if fast_math is None else fast_math
    so = compile_source(codegen.source(overrides), fast_math=fm, parts=parts,
                        part_names=[k.name for k in codegen.kernels])
    return CpuExecutable(so, codegen, codegen.program, constants)


# -- sandboxed trial run of hand-edited kernels -----------------------------------------------------
TRIAL_TIMEOUT_S = 60.0
TRIAL_GUARD_BYTES = 4096  # canary bytes before and after every buffer

# The child imports only numpy: it loads the same shared object, lays every buffer out between two
# canary zones (keeping 64-byte alignment, as _aligned_empty does), runs the kernels in order and
# reports which canaries or inputs changed. A crash or hang there cannot take the notebook down.
_TRIAL_CHILD = r"""
import ctypes, json, sys
import numpy as np
d = sys.argv[1]
spec = json.load(open(d + "/spec.json"))
G = spec["guard"]
arrays = dict(np.load(d + "/buffers.npz"))
raw, views = {}, {}
for name, a in arrays.items():
    r = np.full(a.nbytes + 2 * G + 64, 0xA5, np.uint8)
    off = (-r.ctypes.data) % 64
    v = r[off + G: off + G + a.nbytes].view(a.dtype).reshape(a.shape)
    v[...] = a
    raw[name], views[name] = (r, off), v
lib = ctypes.CDLL(spec["lib"])
for k, (name, params) in enumerate(spec["calls"]):
    print("running", k, flush=True)
    fn = getattr(lib, name)
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * len(params)
    fn(*[views[p].ctypes.data for p in params])
faults = []
for name, (r, off) in raw.items():
    n = arrays[name].nbytes
    if (r[: off + G] != 0xA5).any():
        faults.append(f"wrote before the start of buffer {name}")
    if (r[off + G + n:] != 0xA5).any():
        faults.append(f"wrote past the end of buffer {name}")
    if name in spec["readonly"] and not np.array_equal(views[name], arrays[name], equal_nan=True):
        faults.append(f"wrote into its input {name}")
print("faults", json.dumps(faults), flush=True)
"""


def trial_run(exe: CpuExecutable, inputs: Sequence[np.ndarray], what: str = "the edited kernels",
              timeout_s: float | None = None) -> None:
    """Run `exe` once on `inputs` in a child process, with canaries around every buffer; raise
    KernelFault when it crashes, does not finish in `timeout_s`, or writes outside its buffers or
    into its inputs. Hand-edited C can do all three, and in this process it would kill the kernel."""
    import json
    import signal
    env = exe._buffers(inputs)
    readonly = [b.name for b in exe.program.inputs] + list(exe.constants)
    timeout_s = TRIAL_TIMEOUT_S if timeout_s is None else timeout_s
    with tempfile.TemporaryDirectory(prefix="ke-trial-") as d:
        np.savez(os.path.join(d, "buffers.npz"), **env)
        with open(os.path.join(d, "spec.json"), "w") as f:
            json.dump({"lib": str(exe.lib_path), "guard": TRIAL_GUARD_BYTES, "readonly": readonly,
                       "calls": [[name, list(params)] for name, _, params in exe.kernels]}, f)
        try:
            proc = subprocess.run([sys.executable, "-c", _TRIAL_CHILD, d], capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise KernelFault(f"{what} did not finish within {timeout_s:g} s on the example inputs (an endless "
                              f"loop?); it ran in a separate process, so this session is unharmed") from None
    lines = proc.stdout.splitlines()
    ran = [int(l.split()[1]) for l in lines if l.startswith("running ")]
    kernel = exe.kernels[ran[-1]][0] if ran else "?"
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        raise KernelFault(f"{what} crashed with {sig} in {kernel} on the example inputs: an index reaches outside "
                          f"a buffer (check loop bounds and index arithmetic); it ran in a separate process, so "
                          f"this session is unharmed")
    faults = next((json.loads(l[len("faults "):]) for l in lines if l.startswith("faults ")), None)
    if proc.returncode != 0 or faults is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise KernelFault(f"the trial run of {what} failed (exit code {proc.returncode}): {tail}")
    if faults:
        raise KernelFault(f"{what} {'; '.join(faults)} (found by canaries around each buffer in a trial run): "
                          f"check loop bounds and index arithmetic")


def build(compiled) -> CpuExecutable:
    """Compile a Compiled's C codegen (with its kernel overrides) and load it."""
    ok, why = available()
    if not ok:
        raise BackendUnavailable(f"the CPU backend needs a C compiler: {why}")
    fast = bool(getattr(compiled.options, "fast_math", False))
    consts = getattr(compiled.program, "constants", None)
    return build_codegen(compiled.codegen, compiled.kernel_overrides, fast_math=fast or compiled.codegen.fast_math,
                         constants=consts if isinstance(consts, dict) else None)
