"""Thread policy of the CPU backend: how many OpenMP threads each kernel call gets, and why.

Measured on the project's 2-core shared machines (docs/CPU_THREADS.md): a parallel region pays
~2-8 µs when its worker is awake, ~11 µs to wake a sleeping (passive) worker, and a whole scheduler
slice (3-25 ms) when a worker is descheduled because another thread holds the core (a busy
neighbour, NumPy's OpenBLAS workers spinning after a matmul, or our own spinning workers). So:

* serial below PARALLEL_MIN_US of estimated work (as Inductor and ATen's GRAIN_SIZE do): a
  microsecond kernel never pays a fork/join or a barrier;
* the team is at most the cores this process may really use: its CPU affinity, the cgroup CPU
  quota (v2 cpu.max or v1 cfs_quota_us) and OMP_NUM_THREADS when the user set it;
* at call time, cores other runnable threads hold right now (/proc/loadavg's running count) are
  not counted, so a team never waits at a barrier for a thread that has no core; our own idle
  OpenMP workers (still spinning after the last region) are not "other" threads and do not count;
* idle workers spin briefly, then sleep (GOMP_SPINCOUNT=SPIN_COUNT, bounded): long enough to catch
  the next region of the same kernel or the next call (a sleeping worker costs ~60 µs per region
  to wake here), short enough to give the core back well under a millisecond after the last one.
  Set before libgomp loads, unless the user chose OMP_WAIT_POLICY / GOMP_SPINCOUNT.

>>> decide(kernel_work_us=12.0, parallel_loops=True, cores=2).describe()
'serial: ~12 µs of work, below the 200 µs parallel threshold'
>>> decide(kernel_work_us=4000.0, parallel_loops=True, cores=2).threads
2
"""
from __future__ import annotations

import ctypes
import math
import os
import platform
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

from .. import loopir as L

# Below this much estimated serial work a kernel runs on the calling thread. The estimate runs
# 2-5x high for vectorized code (it assumes DRAM bandwidth; buffers of a few MB are cache-resident),
# so this keeps kernels of up to ~40-70 µs real time serial: a second core could save at most ~30 µs
# there, while a parallel region costs 8-11 µs when all goes well and a scheduler slice (ms) when a
# worker finds its core taken (the load signal keeps teams away from cores a neighbour or NumPy's
# spinning OpenBLAS workers hold). Was 300 until 2026-12-01 evening: the unfused MLP 8192x64's bias and
# relu kernels (estimated 273-299 µs, ~55 µs real serial) then ran serially and the row took 0.37 ms
# vs 0.255 with teams (docs/CPU_THREADS.md, "Where the worker wakes up").
PARALLEL_MIN_US = 200.0
# Each extra thread should get at least this much work (Inductor / ATen use a grain size too).
GRAIN_US = 150.0
# Nominal rates of one core running vectorized generated code, for the *estimate* only
# (measured here: fused 16384x16 @ 16x16 MLP ~90 µs serial, the 16M 8-op chain ~8 ms serial).
CORE_OPS_PER_S = 100e9
CORE_BYTES_PER_S = 20e9
CALL_OPS = 20           # a transcendental (exp, tanh, log, ...) counts as this many simple ops


@dataclass(frozen=True)
class Decision:
    """The thread policy of one kernel: `threads` at most, and the reason, for people."""

    kernel: str
    threads: int
    work_us: float
    reason: str
    dynamic: bool = False   # True: at call time fewer threads when other threads hold cores

    def describe(self) -> str:
        return self.reason

    def __str__(self) -> str:
        return f"{self.kernel}: {self.reason}"


# ----------------------------------------------------------------------------- the cores we may use
def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by the cgroup CPU quota (v2 cpu.max, else v1 cpu.cfs_quota_us), None if unlimited."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = (f.read().split() + ["100000"])[:2]
        if quota != "max" and float(period) > 0:
            return float(quota) / float(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota = float(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period = float(f.read())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cores(affinity: int | None = None, quota: float | None | str = "read",
                 omp_num_threads: str | None | bool = False) -> tuple[int, str]:
    """(cores, how they were found): affinity ∩ cgroup quota ∩ OMP_NUM_THREADS (when set).

    Arguments default to this process's values; pass them to ask "what if" (tests do).

    >>> usable_cores(affinity=8, quota=2.5, omp_num_threads=None)
    (3, 'affinity 8 CPUs, cgroup quota 2.5 CPUs')
    """
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = os.cpu_count() or 1
    if quota == "read":
        quota = cgroup_cpu_limit()
    if omp_num_threads is False:
        omp_num_threads = os.environ.get("OMP_NUM_THREADS")
    cores, why = max(1, int(affinity)), [f"affinity {affinity} CPUs"]
    if quota is not None:
        cores = min(cores, max(1, math.ceil(float(quota) - 1e-9)))
        why.append(f"cgroup quota {float(quota):g} CPUs")
    if omp_num_threads:
        try:
            n = int(str(omp_num_threads).split(",")[0])
            if n >= 1:
                cores = min(cores, n)
                why.append(f"OMP_NUM_THREADS={omp_num_threads}")
        except ValueError:
            pass
    return cores, ", ".join(why)


def running_threads(loadavg_text: str | None = None) -> int | None:
    """Runnable threads on the machine now (/proc/loadavg's 4th field, the caller included); None if unreadable.

    >>> running_threads("0.5 0.4 0.3 3/96 123")
    3
    """
    try:
        if loadavg_text is None:
            loadavg_text = _read_proc("/proc/loadavg")
        return int(loadavg_text.split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


_proc_fds: dict[str, int] = {}


def _read_proc(path: str) -> str:
    """A /proc file's current text through a descriptor kept open: pread regenerates it, ~2 µs
    instead of ~3-18 µs for open + read + close (the busy-machine path reads several)."""
    fd = _proc_fds.get(path)
    if fd is None:
        fd = _proc_fds[path] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return os.pread(fd, 512, 0).decode("ascii", "replace")
    except OSError:
        del _proc_fds[path]     # e.g. the thread has exited; the next call opens the path again
        os.close(fd)
        raise


def busy_cores(loadavg_text: str | Sequence[str] | None = None, cpus: int | None = None, cores: int | None = None,
               own_workers: int | None = None) -> int | None:
    """Cores other runnable threads hold right now: /proc/loadavg's running count less the caller and
    less `own_workers`, our own OpenMP workers that are runnable (spinning idle after our last region:
    they are the team, not competition); None where unknown. ~2 µs: read only for kernels big enough
    to go parallel. Only when others seem to run: RECHECK_READS more readings (the smallest count
    counts: a thread runnable for microseconds holds no core) and our workers' states.
    `loadavg_text` may be one reading or successive ones (tests).

    /proc/loadavg counts the whole machine (a container sees its host's): with `cpus` machine CPUs
    of which this process may use `cores`, only that share of the others counts.

    >>> busy_cores("9.0 8.0 7.0 33/900 1", cpus=64, cores=2)     # 32 others over 64 CPUs: 1 of ours
    1
    >>> busy_cores("0.5 0.4 0.3 2/96 1", cpus=2, cores=2, own_workers=1)   # the caller and our spinning worker
    0
    """
    readings = [loadavg_text] if isinstance(loadavg_text, str) or loadavg_text is None else list(loadavg_text)
    running = running_threads(readings[0])
    if running is None:
        return None
    # our own workers first: right after a call of ours they are the only others (still spinning), and
    # telling so from their states (~2 µs each) is cheaper than RECHECK_READS more readings
    if running > 1 and own_workers is None and loadavg_text is None:
        own_workers = own_workers_running(cores or usable_cores()[0])
    own_workers = own_workers or 0
    if loadavg_text is None and running - 1 > own_workers:   # others seem to run: look again (RECHECK_READS)
        readings += [None] * RECHECK_READS
    for text in readings[1:]:
        if running - 1 <= own_workers:
            break
        again = running_threads(text)
        running = running if again is None else min(running, again)
    others = max(0, running - 1 - own_workers)
    if cpus and cores and cpus > cores:
        return others * cores // cpus
    return others


# When /proc/loadavg shows other runnable threads, read it this many more times (~2 µs each) and keep
# the smallest count. Measured in cpu_fusion --against: the parent that just wrote the next request
# to the child's pipe is still runnable when the child reads the count, so the first call of every
# turn ran serially on an otherwise idle machine; the same holds for kworkers and short-lived
# processes. A thread that really holds a core (a busy neighbour, a spinning BLAS worker) is
# runnable in every reading.
RECHECK_READS = 4


def own_other_threads_running() -> int:
    """Threads of this process other than the caller and our OpenMP workers that are runnable now:
    in practice NumPy's OpenBLAS workers still spinning after a BLAS call (they share our cores at once)."""
    me = threading.get_native_id()
    now = time.perf_counter()
    known = _other_tids.get(me)
    if known is None or now - known[0] > OTHER_TIDS_S:
        ours = set(_omp_workers.get(me, ()))
        try:
            tids = [int(t) for t in os.listdir("/proc/self/task")]
        except OSError:
            return 0
        known = _other_tids[me] = (now, [t for t in tids if t != me and t not in ours])
    return sum(thread_runnable(tid) for tid in known[1])


# the calling thread's native id -> (when listed, the ids of this process's other threads but our OpenMP
# workers): listing /proc/self/task costs ~4 µs and threads seldom come and go; one started since counts
# as an outside thread (PERSIST_S) until the list is renewed
OTHER_TIDS_S = 1.0
_other_tids: dict[int, tuple[float, list[int]]] = {}


# An outside thread (another process, a kernel thread) counts only once it has held a core for
# PERSIST_S across successive checks: on an idle VM a kernel thread runnable for a few hundred µs took a
# thread from 4-11% of the calls of a 1024³ matmul (each then 2x slower); a neighbour that keeps a core
# busy is seen in every check and counts after PERSIST_S. Our own process's other runnable threads
# (OpenBLAS workers spinning after a NumPy call) count at once.
PERSIST_S = 0.002
# Checks further apart than this do not make one streak: a reading before a pause says nothing about
# the core after it (measured: in cpu_fusion --against, the streak of one turn's first call carried over
# the 0.2 s pause to the next turn, and a kernel thread seen once shrank every call of later turns).
STREAK_GAP_S = 0.05
_streak: dict[str, float] = {}


def busy_cores_for_call(cpus: int | None = None, cores: int | None = None) -> int | None:
    """busy_cores for a kernel call: the cores our own other threads hold now, plus the cores outside
    threads hold if they have held them for PERSIST_S of successive checks, each within STREAK_GAP_S of
    the one before (see PERSIST_S)."""
    now = time.perf_counter()
    # the common case first, in ~2 µs: nobody but the caller and (within SURE_SPIN_S of our last
    # region) our own spinning workers is runnable
    running = running_threads()
    own = 0
    if running is None:
        busy: int | None = None
    elif running <= 1 or running <= _spinning_team(now):
        busy = 0
    else:
        own_omp = own_workers_running(cores or usable_cores()[0])
        others = running - 1 - own_omp
        own = own_other_threads_running() if others > 0 else 0
        if others <= own:
            # all of them our own (OpenBLAS's workers spinning after a NumPy call): no more readings
            busy = max(0, others)
        else:
            busy = busy_cores(cpus=cpus, cores=cores, own_workers=own_omp)
    if now - _streak.get("last", now) > STREAK_GAP_S:
        _streak.pop("since", None)
    _streak["last"] = now
    if not busy:
        _streak.pop("since", None)
        return busy
    own = min(busy, own)
    outside = busy - own
    if outside <= 0:
        _streak.pop("since", None)
        return own
    since = _streak.setdefault("since", now)
    return busy if now - since >= PERSIST_S else own


def load_signal(loadavg_text: str | None = None, cpus: int | None = None, cores: int | None = None,
                own_workers: int | None = None) -> str:
    """What the call-time signal reads now, for people: the running count, the cores it takes
    from us, and the team a 2+-thread kernel would get.

    >>> load_signal("3.1 2.0 1.0 3/200 1", cpus=2, cores=2)
    '/proc/loadavg: 3 runnable threads on 2 CPUs (this one included) -> 2 of 2 usable cores taken now; a parallel kernel would run 1 thread'
    """
    if cores is None:
        cores = usable_cores()[0]
    if cpus is None:
        cpus = os.cpu_count() or cores
    running = running_threads(loadavg_text)
    if running is None:
        return "/proc/loadavg unreadable: parallel kernels get their full team"
    if own_workers is None:
        own_workers = own_workers_running(cores) if loadavg_text is None and running > 1 else 0
    busy = busy_cores(loadavg_text, cpus=cpus, cores=cores, own_workers=own_workers)
    n = threads_now(cores, busy, cores)
    taken = min(busy or 0, cores)
    ours = f" and {own_workers} idle OpenMP worker{'s' if own_workers != 1 else ''} of ours" if own_workers else ""
    return (f"/proc/loadavg: {running} runnable threads on {cpus} CPUs (this one{ours} included) -> {taken} of "
            f"{cores} usable cores taken now; a parallel kernel would run {n} thread{'s' if n != 1 else ''}")


# ----------------------------------------------------------------------------- work estimate
def _expr_ops(e: L.Expr) -> int:
    n = 0
    for x in L.walk_expr(e):
        if isinstance(x, L.Call):
            n += CALL_OPS
        elif isinstance(x, (L.BinOp, L.UnOp, L.Select, L.Cast)):
            n += 1
    return n


def _stmts_ops(stmts, mult: int, lanes_once: bool = False) -> int:
    n = 0
    for s in stmts:
        if isinstance(s, L.For):
            lanes = lanes_once and s.kind == "vectorized"
            n += _stmts_ops(s.body, mult * (1 if lanes else max(0, s.extent)), lanes_once)
        elif isinstance(s, L.If):
            n += mult * _expr_ops(s.cond) + _stmts_ops(s.then, mult, lanes_once) + _stmts_ops(s.orelse, mult, lanes_once)
        elif isinstance(s, L.Store):
            n += mult * (1 + _expr_ops(s.value))
        elif isinstance(s, L.MicroKernel):
            # a register-tiled loop (passes/vectorize_cpu.py) is its loop's work, each lane group one
            # vector instruction (registers, no per-lane loads): uncounted, a matmul's whole k loop
            # went missing (a 67 M multiply-add product read as ~150 µs and ran on one thread)
            n += mult * sum(_expr_ops(g) for g in s.guards) + _stmts_ops([s.loop], mult, lanes_once=True)
        else:
            n += mult * sum(_expr_ops(e) for e in L.stmt_exprs(s))
    return n


def kernel_work(kernel: L.Kernel) -> tuple[int, int]:
    """(simple ops executed, bytes of its global buffers): what the estimate counts."""
    return _stmts_ops(kernel.body, 1), sum(p.nbytes for p in kernel.params)


def work_us(kernel: L.Kernel) -> float:
    """Estimated serial time of the kernel in µs at nominal per-core rates (a model, not a measurement)."""
    ops, nbytes = kernel_work(kernel)
    return (ops / CORE_OPS_PER_S + nbytes / CORE_BYTES_PER_S) * 1e6


def has_parallel_loop(kernel: L.Kernel) -> bool:
    return any(f.kind == "parallel" for f in L.walk_loops(kernel.body))


# ----------------------------------------------------------------------------- the policy
def decide(kernel_work_us: float, parallel_loops: bool, cores: int, kernel: str = "kernel",
           cores_why: str = "", min_us: float | None = None, grain_us: float | None = None) -> Decision:
    """Most threads a kernel call may use: 1 below the work threshold, else one per GRAIN_US of
    work up to `cores`. Pure (tests call it with any sizes and core counts).

    >>> decide(500.0, True, cores=8).threads      # 500 µs / 150 µs per thread -> 3
    3
    >>> decide(1e5, False, cores=8).reason
    'serial: its schedule has no parallel loop'
    """
    min_us = PARALLEL_MIN_US if min_us is None else min_us
    grain_us = GRAIN_US if grain_us is None else grain_us
    w = f"~{kernel_work_us:.3g} µs of work"
    if not parallel_loops:
        return Decision(kernel, 1, kernel_work_us, "serial: its schedule has no parallel loop")
    if kernel_work_us < min_us:
        return Decision(kernel, 1, kernel_work_us, f"serial: {w}, below the {min_us:g} µs parallel threshold")
    if cores <= 1:
        return Decision(kernel, 1, kernel_work_us, f"serial: 1 usable core ({cores_why or 'given'})")
    n = max(2, min(cores, int(kernel_work_us // grain_us)))
    return Decision(kernel, n, kernel_work_us,
                    f"up to {n} threads: {w}; {cores} usable cores ({cores_why or 'given'}); fewer when other "
                    f"threads hold cores at call time", dynamic=True)


def threads_now(limit: int, busy: int | None, cores: int) -> int:
    """Team size for one call: `limit`, less the cores other runnable threads hold right now.

    >>> threads_now(2, busy=0, cores=2), threads_now(2, busy=1, cores=2), threads_now(4, busy=None, cores=4)
    (2, 1, 4)
    """
    if limit <= 1 or busy is None:
        return max(1, limit)
    return max(1, min(limit, cores - busy))


def plan(kernels, cores: int | None = None, cores_why: str = "") -> list[Decision]:
    """One Decision per loop-IR kernel (in launch order)."""
    if cores is None:
        cores, cores_why = usable_cores()
    return [decide(work_us(k), has_parallel_loop(k), cores, k.name, cores_why) for k in kernels]


# ----------------------------------------------------------------------------- libgomp settings
WAIT_POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# Spin iterations of an idle libgomp worker before it sleeps (libgomp's default is 300 000, ~15-20 ms
# here; OMP_WAIT_POLICY=passive is 0). Measured on the 2-core VM (docs/CPU_THREADS.md, "Bounded
# spinning"): a 1024^3 matmul has 64 parallel regions a few µs apart, and a worker that has to be
# woken for each costs ~30% there; 10 000 spins bridge those gaps in the A/B harness (the 1024^3
# MLP's 2-thread calls at 0.92-0.95x the old build), 1 000 did not there (2.15x, twice), and the
# worker still sleeps well under a millisecond after the last region.
SPIN_COUNT = 10_000
_wait_state: dict[str, Any] = {}


def libgomp_loaded() -> bool:
    try:
        with open("/proc/self/maps") as f:
            return "libgomp" in f.read()
    except OSError:
        return False


def set_wait_policy() -> str:
    """Bound how long idle OpenMP workers spin (GOMP_SPINCOUNT=SPIN_COUNT) before libgomp loads;
    return what applies. libgomp's default (300 000 spins, ~15-20 ms) holds a core that NumPy's BLAS,
    a neighbour or our own next kernel needs (13 ms per region after a 2 ms pause, measured here);
    sleeping at once (passive) costs a wake-up per region (~30% on a 64-region matmul)."""
    if "text" in _wait_state:
        return _wait_state["text"]
    user = [f"{v}={os.environ[v]}" for v in WAIT_POLICY_VARS if v in os.environ]
    loaded = not user and libgomp_loaded()
    if user:
        text = f"idle workers: as the user set ({', '.join(user)})"
    elif loaded:
        text = "idle workers: libgomp was loaded before explorer (e.g. by torch) with its default spinning"
    else:
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
        text = (f"idle workers spin {SPIN_COUNT} times, then sleep (GOMP_SPINCOUNT={SPIN_COUNT}, set by explorer "
                f"before libgomp loaded)")
    _wait_state["text"] = text
    global _sure_spin
    ours = not user and not loaded      # explorer chose the spin count
    _sure_spin = SURE_SPIN_S if ours and platform.machine().lower() in ("x86_64", "amd64") else 0.0
    return text


# native thread id of a calling thread -> the native ids of its libgomp pool's workers
_omp_workers: dict[int, tuple[int, ...]] = {}


def omp_worker_tids(team: int) -> tuple[int, ...]:
    """Native thread ids of the libgomp workers that run a `team`-thread region called from this
    thread (libgomp keeps one pool per calling thread and reuses its threads in order), found once
    by a region of `team` threads that reports them; () when libgomp cannot be asked.

    A kernel's region of n <= team threads runs on the first n - 1 of these, so their states
    (/proc/self/task/TID/stat) say whether our own team is spinning idle or asleep.
    """
    me = threading.get_native_id()
    known = _omp_workers.get(me)
    if known is not None and len(known) >= team - 1:
        return known
    if not libgomp_loaded():   # no kernel loaded yet, so no workers; loading libgomp here would also
        return ()              # fix its wait settings before set_wait_policy could choose them
    try:   # the libgomp our kernels link (one copy per process, found by its soname)
        gomp = ctypes.CDLL("libgomp.so.1")
        parallel = gomp.GOMP_parallel          # GOMP_parallel(fn, data, num_threads, flags): libgomp's ABI
    except (OSError, AttributeError):
        _omp_workers[me] = ()
        return ()
    seen: list[int] = []
    body = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _data: seen.append(threading.get_native_id()))
    parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    parallel(ctypes.cast(body, ctypes.c_void_p), None, max(1, team), 0)   # ctypes releases the GIL here
    _omp_workers[me] = tuple(t for t in seen if t != me)
    return _omp_workers[me]


def thread_state(tid: int) -> str | None:
    """One letter from /proc/self/task/TID/stat (R running or runnable, S sleeping, ...); None if gone."""
    try:
        text = _read_proc(f"/proc/self/task/{tid}/stat")
        return text[text.rindex(")") + 2]
    except (OSError, ValueError, IndexError):
        return None


# (perf_counter() when a parallel region of ours last returned, its team size, the native id of the thread
# that ran it: libgomp keeps one pool per calling thread): set by the CPU backend after each kernel call
# with a team of 2 or more (region_ended)
_last_region: list[Any] = [-1.0, 0, 0]
# For this long after a region of ours returned, its workers are certainly still spinning (runnable),
# so own_workers_running need not read their states (~3.5 µs each, half the per-call check of a GEMV
# that takes 50 µs). Only where explorer chose the spin count: SPIN_COUNT spins of libgomp's wait loop
# (a load and a `pause`, >= ~10 cycles on any x86-64, ~65 on this EPYC) last >= ~20 µs at 5 GHz;
# measured here, the worker sleeps 248-285 µs after the region. 0 elsewhere (the user's or another
# library's count, other CPUs): the states are read.
SURE_SPIN_S = 10e-6
_sure_spin = 0.0     # SURE_SPIN_S where it applies (set by set_wait_policy), else 0


def region_ended(team: int, now: float | None = None) -> None:
    """Note that a `team`-thread region of ours has just returned (see SURE_SPIN_S)."""
    _last_region[:] = (time.perf_counter() if now is None else now, team, threading.get_native_id())


def _spinning_team(now: float) -> int:
    """The team size of the calling thread's last region if its workers are certainly still spinning
    at `now` (within SURE_SPIN_S of its end), else 0."""
    if now - _last_region[0] < _sure_spin and _last_region[2] == threading.get_native_id():
        return _last_region[1]
    return 0


def thread_runnable(tid: int) -> bool:
    """Whether thread `tid` of this process is runnable now (running or waiting for a CPU): its
    /proc/self/task/TID/syscall reads "running" then (~2.4 µs; the stat file's state letter, the
    fallback, costs ~3.5-5 µs to generate)."""
    global _syscall_file_ok
    if _syscall_file_ok:
        try:
            return _read_proc(f"/proc/self/task/{tid}/syscall").startswith("running")
        except PermissionError:    # a kernel that guards it (ptrace rules): the stat file from now on
            _syscall_file_ok = False
        except OSError:
            pass
    return thread_state(tid) == "R"


_syscall_file_ok = True


def own_workers_running(team: int) -> int:
    """How many of our libgomp workers for a `team`-thread region are runnable now (idle but still
    spinning, or busy in another region of ours): /proc/loadavg counts them, but they are our team.
    Within SURE_SPIN_S of a region of ours of at least `team` threads they are, without reading."""
    if team <= 1:
        return 0
    if _spinning_team(time.perf_counter()) >= team:
        return team - 1
    return sum(thread_runnable(t) for t in omp_worker_tids(team)[:team - 1])


# ----------------------------------------------------------------------------- where workers run
BIND_VARS = ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY")
# native id of a calling thread -> (the CPU it ran on, team) its workers were last placed for
_placed: dict[int, tuple[int, int]] = {}
_libc: list[Any] = []


def _sched_getcpu() -> int:
    """The CPU the calling thread runs on now (glibc's sched_getcpu, a vDSO call; -1 if unknown)."""
    if not _libc:
        try:
            f = ctypes.CDLL(None, use_errno=True).sched_getcpu
            f.restype, f.argtypes = ctypes.c_int, []
            _libc.append(f)
        except (OSError, AttributeError):
            _libc.append(None)
    f = _libc[0]
    return f() if f is not None else -1


_user_binding: list[str] = []


def user_binding() -> list[str]:
    """The OpenMP binding variables the user set ('OMP_PROC_BIND=close', ...), read once (os.environ
    costs ~0.3 µs a name, and place_workers runs on every parallel call): libgomp places the workers then."""
    if not _user_binding:
        _user_binding.append([f"{v}={os.environ[v]}" for v in BIND_VARS if v in os.environ])
    return _user_binding[0]


def place_workers(team: int) -> bool:
    """Keep the workers of a `team`-thread region off the CPU the calling thread runs on: each worker's
    affinity becomes this thread's CPUs less its current one (re-set only when the caller moved).
    True when the workers are placed so.

    Why: a worker that sleeps between calls (bounded spinning) is woken by the caller, and Linux's
    wake-affine placement often puts it on the *caller's* CPU; then both threads of a 2-thread region
    share one core for milliseconds until load balancing separates them. Measured on the 2-core VM
    (docs/CPU_THREADS.md, "Where the worker wakes up"): the fused MLP 8192x64 @ 64x64 took 0.79-0.87 ms
    per 2-thread call after a 0.2 s pause (0.29 serial, 0.15 with the team on two cores); with the
    worker kept off the caller's CPU 0.19-0.20. Unlike OMP_PROC_BIND the caller itself (Python's thread,
    whose affinity later threads inherit) stays free. Not done when the user set OMP_PROC_BIND,
    OMP_PLACES or GOMP_CPU_AFFINITY (libgomp binds then)."""
    if team <= 1 or user_binding():
        return False
    me = threading.get_native_id()
    cpu = _sched_getcpu()
    if cpu < 0:
        return False
    if _placed.get(me) == (cpu, team):
        return True
    try:
        allowed = os.sched_getaffinity(0) - {cpu}
    except (AttributeError, OSError):
        return False
    workers = omp_worker_tids(team)[:team - 1]
    if not allowed or not workers:
        return False
    for tid in workers:
        try:
            os.sched_setaffinity(tid, allowed)
        except OSError:     # the worker has exited (libgomp shrank its pool): ask for the workers again
            _omp_workers.pop(me, None)
            _placed.pop(me, None)
            return False
    _placed[me] = (cpu, team)
    return True


def placement_text() -> str:
    """How our OpenMP workers are placed, for people (threads.report)."""
    user = user_binding()
    if user:
        return f"workers placed by libgomp as the user set ({', '.join(user)})"
    return "workers kept off the calling thread's CPU (re-placed when it moves)"


def blas_pools() -> list[dict[str, Any]]:
    """The native thread pools in this process (OpenBLAS, OpenMP, MKL) as threadpoolctl reports
    them; [] when threadpoolctl is not installed (pip install threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "version", "threading_layer")}
            for p in threadpool_info()]


def report() -> str:
    """The policy's inputs in this process, for people (the benchmarks print it first).

    >>> print(report())                                         # doctest: +ELLIPSIS
    usable cores: ...
    ...
    >>> print(report())                                         # doctest: +SKIP
    usable cores: 2 (affinity 2 CPUs)
    idle workers spin 10000 times, then sleep (GOMP_SPINCOUNT=10000, set by explorer before libgomp loaded)
    workers kept off the calling thread's CPU (re-placed when it moves)
    parallel above ~200 µs of estimated work, one more thread per ~150 µs, fewer when cores are taken
    /proc/loadavg: 1 runnable threads on 2 CPUs (this one included) -> 0 of 2 usable cores taken now; ...
    native pools: openblas (blas) 2 threads
    """
    n, why = usable_cores()
    pools = blas_pools()
    try:
        import threadpoolctl  # noqa: F401
        listed = "; ".join(f"{p['internal_api']} ({p['user_api']}) {p['num_threads']} threads" for p in pools) or "none"
    except ImportError:
        listed = "unknown (pip install threadpoolctl to list NumPy's BLAS pool)"
    return "\n".join([f"usable cores: {n} ({why})",
                      _wait_state.get("text", "idle workers: decided when the first CPU kernel loads"),
                      placement_text(),
                      f"parallel above ~{PARALLEL_MIN_US:g} µs of estimated work, one more thread per "
                      f"~{GRAIN_US:g} µs, fewer when cores are taken",
                      load_signal(cores=n),
                      f"native pools: {listed}"])
