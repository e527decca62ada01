"""CPU backend: thread policy decisions, the caching allocator's reuse semantics, the fast call
path, exact (uncontracted) arithmetic by default, and with_kernel_source's tolerance.
Correctness only: no timing is asserted."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

import explorer
from explorer import loopir as L
from explorer.backends import cpu, threads
from explorer.errors import ExplorerError, ShapeError, VerificationError

needs_cc = pytest.mark.skipif(not cpu.available()[0], reason="no C compiler")


# ----------------------------------------------------------------------------- policy decisions
def test_serial_below_the_work_threshold():
    d = threads.decide(12.0, parallel_loops=True, cores=8, kernel="k")
    assert d.threads == 1 and "serial" in d.reason and "12" in d.reason and f"{threads.PARALLEL_MIN_US:g} µs" in d.reason
    assert str(d).startswith("k: serial")


def test_serial_without_a_parallel_loop_or_a_second_core():
    assert threads.decide(1e6, parallel_loops=False, cores=8).threads == 1
    d = threads.decide(1e6, parallel_loops=True, cores=1, cores_why="affinity 1 CPUs")
    assert d.threads == 1 and "1 usable core" in d.reason and "affinity 1" in d.reason


@pytest.mark.parametrize("work_us, cores, want", [
    (threads.PARALLEL_MIN_US, 8, 2),                 # at the threshold: at least 2
    (10 * threads.GRAIN_US, 8, 8),                   # enough work for every core
    (5 * threads.GRAIN_US, 8, 5),                    # one thread per grain of work
    (1e9, 2, 2),                                     # never more than the usable cores
])
def test_team_size_grows_with_work_up_to_the_cores(work_us, cores, want):
    d = threads.decide(work_us, parallel_loops=True, cores=cores)
    assert d.threads == want and d.dynamic and f"up to {want} threads" in d.reason


def test_threshold_and_grain_can_be_given():
    assert threads.decide(50.0, True, cores=4, min_us=10, grain_us=10).threads == 4
    assert threads.decide(50.0, True, cores=4, min_us=100).threads == 1


def test_usable_cores_takes_the_smallest_limit():
    assert threads.usable_cores(affinity=8, quota=None, omp_num_threads=None) == (8, "affinity 8 CPUs")
    assert threads.usable_cores(affinity=8, quota=1.5, omp_num_threads=None)[0] == 2
    assert threads.usable_cores(affinity=8, quota=0.5, omp_num_threads=None)[0] == 1
    n, why = threads.usable_cores(affinity=8, quota=4.0, omp_num_threads="3")
    assert n == 3 and "OMP_NUM_THREADS=3" in why and "quota 4" in why
    assert threads.usable_cores(affinity=2, quota=None, omp_num_threads="16")[0] == 2
    assert threads.usable_cores(affinity=4, quota=None, omp_num_threads="bogus")[0] == 4


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(str(tmp_path)) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(str(tmp_path)) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(str(v1)) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpu_limit(str(v1)) is None
    assert threads.cgroup_cpu_limit(str(tmp_path / "missing")) is None


def test_busy_cores_and_the_team_at_call_time():
    assert threads.busy_cores("0.50 0.40 0.30 1/96 12345") == 0      # only the caller runs
    assert threads.busy_cores("3.1 2.0 1.0 3/200 1") == 2
    assert threads.busy_cores("garbage") is None
    assert threads.busy_cores("9.0 8.0 7.0 33/900 1", cpus=64, cores=2) == 1   # a container's host-wide count
    assert threads.busy_cores("9.0 8.0 7.0 20/900 1", cpus=64, cores=2) == 0
    assert threads.busy_cores("9.0 8.0 7.0 3/900 1", cpus=2, cores=2) == 2
    assert threads.threads_now(2, busy=0, cores=2) == 2
    assert threads.threads_now(2, busy=1, cores=2) == 1                # a neighbour holds a core
    assert threads.threads_now(4, busy=1, cores=8) == 4
    assert threads.threads_now(4, busy=7, cores=8) == 1
    assert threads.threads_now(2, busy=None, cores=2) == 2             # unknown: the policy's limit
    assert threads.threads_now(1, busy=0, cores=8) == 1


def test_our_own_runnable_openmp_workers_are_not_busy_cores():
    # the caller and our idle worker still spinning after the last region: both cores are ours
    assert threads.busy_cores("0.5 0.4 0.3 2/96 1", cpus=2, cores=2, own_workers=1) == 0
    # ... plus a neighbour: it holds a core
    assert threads.busy_cores("0.5 0.4 0.3 3/96 1", cpus=2, cores=2, own_workers=1) == 1
    assert threads.busy_cores("0.5 0.4 0.3 3/96 1", cpus=2, cores=2, own_workers=0) == 2
    assert threads.busy_cores("0.5 0.4 0.3 1/96 1", cpus=2, cores=2, own_workers=1) == 0   # never below 0
    # a container's host-wide count: our workers come off before our share of the others is taken
    assert threads.busy_cores("9.0 8.0 7.0 34/900 1", cpus=64, cores=2, own_workers=1) == 1
    # successive readings: a thread runnable in only some of them holds no core; the smallest count counts
    q = "0.5 0.4 0.3 {}/96 1".format
    assert threads.busy_cores((q(2), q(1)), cpus=2, cores=2, own_workers=0) == 0
    assert threads.busy_cores((q(3), q(3), q(2)), cpus=2, cores=2, own_workers=0) == 1
    assert threads.busy_cores((q(2), q(2), q(2)), cpus=2, cores=2, own_workers=0) == 1   # in every reading: busy
    assert threads.busy_cores((q(2), "garbage"), cpus=2, cores=2, own_workers=0) == 1
    assert threads.busy_cores(("garbage", q(1)), cpus=2, cores=2) is None
    text = threads.load_signal("0.5 0.4 0.3 2/96 1", cpus=2, cores=2, own_workers=1)
    assert "1 idle OpenMP worker of ours" in text and "0 of 2 usable cores taken" in text
    assert "would run 2 threads" in text


@needs_cc
def test_openmp_worker_ids_are_this_process_threads():
    a = np.ones(1 << 22, np.float32)
    c = explorer.compile(_chain, a, a, target="cpu", verbose=False)
    c(a, a)
    tids = threads.omp_worker_tids(2)
    assert len(tids) == 1 and threading.get_native_id() not in tids
    assert str(tids[0]) in os.listdir("/proc/self/task")
    assert threads.thread_state(tids[0]) in {"R", "S", "D"}
    assert threads.omp_worker_tids(2) == tids                    # found once, the same pool afterwards
    assert threads.own_workers_running(2) in (0, 1) and threads.own_workers_running(1) == 0
    assert threads.thread_state(2**22 + 12345) is None            # not a thread of ours


def _chain(a, b):
    return np.maximum(np.tanh(a * 1.5 + b) * b - a / 3, 0.1) + a * b


def test_plan_for_compiled_programs():
    small = explorer.compile(_chain, *(np.ones(64, np.float32),) * 2, target="cpu", verbose=False)
    big = explorer.compile(_chain, *(np.ones(1 << 22, np.float32),) * 2, target="cpu", verbose=False)
    (ds,) = threads.plan(small.program.kernels, cores=2, cores_why="test")
    (db,) = threads.plan(big.program.kernels, cores=2, cores_why="test")
    assert ds.threads == 1 and db.threads == 2
    assert db.work_us > 1000 * ds.work_us
    ops, nbytes = threads.kernel_work(big.program.kernels[0])
    assert nbytes == 3 * (1 << 22) * 4 and ops > 20 * (1 << 22)   # tanh counts as many ops


def test_register_tiled_loops_count_as_work():
    """A matmul's k loop runs inside a MicroKernel (vectorized stage): its multiply-adds are the work."""
    ops = {}
    for k in (64, 512):
        c = explorer.compile(lambda a, w: a @ w, np.ones((256, k), np.float32), np.ones((k, 512), np.float32),
                             target="cpu", verbose=False)
        (kern,) = c.program.kernels
        assert any(isinstance(s, L.MicroKernel) for s in L.walk(kern.body))
        ops[k] = threads.kernel_work(kern)[0]
        assert ops[k] >= 256 * 512 * k / 8          # at least one vector instruction per 8 multiply-adds
    assert ops[512] > 6 * ops[64]


@needs_cc
def test_policy_is_visible_and_drives_the_generated_team():
    a = np.ones(1 << 13, np.float32)     # a parallel loop in the schedule, too little work for it
    c = explorer.compile(_chain, a, a, target="cpu", verbose=False)
    assert "num_threads(ke_num_threads)" in c.kernels[0].source
    (d,) = c.thread_policy
    assert d.threads == 1 and "serial" in str(d)
    exe = c.executable()
    before = exe.thread_stats["serial"]
    c(a, a)
    assert exe.thread_stats["serial"] == before + 1 and exe._team.value == 1
    assert explorer.compile(lambda x: x + 1, a, target="reference", verbose=False).thread_policy == []


@needs_cc
def test_bounded_spin_set_before_libgomp_loads(tmp_path):
    code = ("import os, numpy as np, explorer\n"
            "c = explorer.compile(lambda a: a * 2, np.ones(8, np.float32), target='cpu', verbose=False)\n"
            "c(np.ones(8, np.float32))\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'), '|', c.executable().wait_policy)\n")
    out = _fresh_python(code, tmp_path)
    assert out.startswith(f"None {threads.SPIN_COUNT} |") and "set by explorer" in out
    out = _fresh_python(code, tmp_path, OMP_WAIT_POLICY="passive")
    assert out.startswith("passive None |") and "as the user set" in out
    # where explorer chose the spin count (x86-64), a region's workers are known to spin for a while
    code += "from explorer.backends import threads\nprint(threads._sure_spin)\n"
    sure = float(_fresh_python(code, tmp_path).split()[-1])
    assert sure == (threads.SURE_SPIN_S if platform.machine().lower() in ("x86_64", "amd64") else 0.0)
    assert float(_fresh_python(code, tmp_path, GOMP_SPINCOUNT="100").split()[-1]) == 0.0


def test_workers_of_a_region_that_just_ended_are_not_read(monkeypatch):
    """own_workers_running: within the sure-spin window after a region of >= team threads, the workers
    count as runnable without reading /proc; after it, or for a bigger team, their states are read."""
    clock = [50.0]
    reads = []
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(threads, "_sure_spin", 1e-5)
    monkeypatch.setattr(threads, "_last_region", [-1.0, 0, 0])
    monkeypatch.setattr(threads, "omp_worker_tids", lambda team: (11, 12, 13)[:team - 1])
    monkeypatch.setattr(threads, "thread_runnable", lambda tid: reads.append(tid) or False)
    threads.region_ended(2)
    clock[0] += 5e-6
    assert threads.own_workers_running(2) == 1 and reads == []
    assert threads.own_workers_running(3) == 0 and reads == [11, 12]     # the region had 2 threads only
    clock[0] += 1e-5
    assert threads.own_workers_running(2) == 0 and reads == [11, 12, 11]
    threads.region_ended(2)
    other = threading.Thread(target=threads.region_ended, args=(2,))       # another thread's region: its own pool
    other.start()
    other.join()
    assert threads.own_workers_running(2) == 0 and len(reads) == 4
    monkeypatch.setattr(threads, "_sure_spin", 0.0)                       # a spin count not ours
    threads.region_ended(2)
    assert threads.own_workers_running(2) == 0 and len(reads) == 5


def test_the_usual_call_time_check_reads_loadavg_once(monkeypatch):
    """busy_cores_for_call: the caller alone, or the caller and the workers of the region that just
    ended, is one /proc/loadavg reading; our own OpenBLAS workers are counted without more readings."""
    clock = [80.0]
    running = [1]
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(threads, "_streak", {})
    monkeypatch.setattr(threads, "_sure_spin", 1e-5)
    monkeypatch.setattr(threads, "_last_region", [-1.0, 0, 0])
    monkeypatch.setattr(threads, "running_threads", lambda: running[0])
    monkeypatch.setattr(threads, "own_workers_running", lambda team: 0)
    monkeypatch.setattr(threads, "own_other_threads_running", lambda: 1)

    def no_more_readings(**kw):
        raise AssertionError("read /proc/loadavg again")
    monkeypatch.setattr(threads, "busy_cores", no_more_readings)
    assert threads.busy_cores_for_call(cores=2) == 0
    running[0] = 2
    threads.region_ended(2)
    assert threads.busy_cores_for_call(cores=2) == 0          # our worker, still spinning
    clock[0] += 1.0
    assert threads.busy_cores_for_call(cores=2) == 1          # NumPy's OpenBLAS worker: ours, at once
    running[0] = 3
    monkeypatch.setattr(threads, "busy_cores", lambda **kw: 2)
    assert threads.busy_cores_for_call(cores=2) == 1          # one more, from outside: not yet (PERSIST_S)


def test_other_threads_of_the_process_are_listed_once_a_second(monkeypatch):
    clock = [10.0]
    listed = []
    real_listdir = os.listdir
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(threads, "_other_tids", {})
    monkeypatch.setattr(threads.os, "listdir", lambda p: listed.append(p) or real_listdir(p))
    for _ in range(5):
        threads.own_other_threads_running()
    assert len(listed) == 1
    clock[0] += threads.OTHER_TIDS_S + 0.1
    threads.own_other_threads_running()
    assert len(listed) == 2


def test_a_sleeping_thread_is_not_runnable(monkeypatch):
    ev = threading.Event()
    t = threading.Thread(target=ev.wait, daemon=True)
    t.start()
    try:
        for _ in range(50):           # until it blocks in the wait
            if not threads.thread_runnable(t.native_id):
                break
            threading.Event().wait(0.01)
        assert threads.thread_runnable(t.native_id) is False
        # a kernel that refuses the syscall file: the stat file's state letter from then on
        def refuse(path):
            raise PermissionError(path)
        monkeypatch.setattr(threads, "_syscall_file_ok", True)
        monkeypatch.setattr(threads, "_read_proc", refuse)
        monkeypatch.setattr(threads, "thread_state", lambda tid: "R")
        assert threads.thread_runnable(t.native_id) is True and threads._syscall_file_ok is False
    finally:
        ev.set()
        t.join()


def test_report_names_the_policy_inputs():
    text = threads.report()
    assert "usable cores:" in text and "parallel above" in text and "native pools:" in text
    assert "/proc/loadavg" in text                                          # the call-time signal, as read now


def test_load_signal_says_what_the_call_time_policy_would_do():
    quiet = threads.load_signal("0.1 0.1 0.1 1/96 1", cpus=2, cores=2)
    assert "0 of 2 usable cores taken" in quiet and "would run 2 threads" in quiet
    busy = threads.load_signal("9.0 8.0 7.0 14/200 1", cpus=2, cores=2)
    assert "2 of 2 usable cores taken" in busy and "would run 1 thread" in busy
    host = threads.load_signal("9.0 8.0 7.0 20/900 1", cpus=64, cores=2)   # a container's host-wide count
    assert "0 of 2" in host and "would run 2 threads" in host
    assert "unreadable" in threads.load_signal("garbage", cpus=2, cores=2)
    pytest.importorskip("threadpoolctl")
    assert any(p["user_api"] == "blas" for p in threads.blas_pools())      # NumPy's BLAS pool is listed


# ----------------------------------------------------------------------------- caching allocator
def test_pool_reuses_only_dropped_blocks():
    pool = cpu.BufferPool()
    a, pa = pool.take((1000,), np.float32)
    assert a.ctypes.data == pa and pa % 64 == 0 and a.flags.c_contiguous and a.flags.writeable
    a[:] = 7
    b, pb = pool.take((1000,), np.float32)
    assert pb != pa and (a == 7).all()                      # held: a second block
    del a
    c, pc = pool.take((1000,), np.float32)
    assert pc == pa                                         # dropped: reused
    view = c[10:20]
    del c
    d, pd = pool.take((1000,), np.float32)
    assert pd not in (pa, pb)                               # a view keeps its block
    del view
    e, pe = pool.take((1000,), np.float32)
    assert pe == pa


def test_pool_shapes_and_dtypes_never_alias_live_arrays():
    pool = cpu.BufferPool()
    live = [pool.take(shape, dt) for shape, dt in [((256,), np.float32), ((16, 16), np.float32),
                                                   ((128,), np.float64), ((256,), np.int32), ((1024,), np.uint8)]]
    ptrs = {p for _, p in live}
    assert len(ptrs) == len(live)                           # same byte size, all held: distinct blocks
    for arr, _ in live:
        arr[...] = 1
    x, _ = live.pop(1)
    assert x.shape == (16, 16) and x.dtype == np.float32
    del x, _
    y, py = pool.take((8, 16), np.float64)                  # same bytes, another dtype: reuses the free block
    assert y.shape == (8, 16) and y.dtype == np.float64 and py in ptrs
    assert all((a == 1).all() for a, _ in live)


def test_pool_limits_are_respected():
    pool = cpu.BufferPool(limit_bytes=4096, per_size=2)
    held = [pool.take((256,), np.float32) for _ in range(3)]    # 1 KiB each; the third is not pooled
    assert pool.stats["unpooled"] == 1 and pool.pooled_bytes == 2048
    del held
    big, _ = pool.take((2048,), np.float32)                     # 8 KiB > the limit: never pooled
    assert pool.pooled_bytes <= 4096
    small, _ = pool.take((768,), np.float32)                    # 3 KiB: evicts a free 1 KiB block to fit
    assert pool.pooled_bytes == 4096 and pool.stats["released"] == 1
    hits = pool.stats["hits"]
    other, _ = pool.take((256,), np.float32)                    # the other free 1 KiB block
    assert pool.pooled_bytes == 4096 and pool.stats["hits"] == hits + 1
    del other
    pool.empty_cache()
    assert pool.pooled_bytes == 3072                            # only the held block remains


def _matmul_plus_one(a, b):
    return a @ b + 1


# a 256 KB output comes from POOL; a 16 KB one is recycled by the fast call path itself (OWN_OUTPUT_BYTES)
@needs_cc
@pytest.mark.parametrize("fn, shape", [(_chain, (1 << 16,)), (_matmul_plus_one, (64, 64))], ids=["pool", "own"])
def test_a_held_result_is_never_overwritten(fn, shape):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, *shape), dtype=np.float32)
    c = explorer.compile(fn, a, b, target="cpu", verbose=False)
    assert (c(a, b).nbytes <= cpu.OWN_OUTPUT_BYTES) == (fn is _matmul_plus_one)
    r1 = c(a, b)
    keep = r1.copy()
    r2 = c(b, a)
    assert np.array_equal(r1, keep) and not np.shares_memory(r1, r2)
    v = r2[::7]
    keep_v = v.copy()
    del r2
    r3 = c(a, a)                                             # r2 dropped but its view is held
    assert np.array_equal(v, keep_v) and not np.shares_memory(v, r3)
    ptr3 = r3.ctypes.data
    del r3
    r4 = c(a, b)                                             # r3 dropped: its memory comes back
    assert r4.ctypes.data == ptr3
    np.testing.assert_allclose(r4, fn(a, b), rtol=1e-5, atol=1e-5)
    r5 = c(r4, b)                                            # a result passed back in: no aliasing
    np.testing.assert_allclose(r5, fn(fn(a, b), b), rtol=1e-4, atol=1e-3)


def test_take_again_reuses_its_hint_only_while_free_and_pooled():
    pool = cpu.BufferPool(limit_bytes=4096)
    a, pa, hint = pool.take_again(None, (256,), np.float32, 1024)
    b, pb, hint_b = pool.take_again(hint, (256,), np.float32, 1024)
    assert pb != pa and (hint_b[0] is not hint[0])              # a is held: another block
    del a
    c, pc, hint = pool.take_again(hint, (256,), np.float32, 1024)
    assert pc == pa                                             # dropped: the hinted block again
    del c, b
    pool.empty_cache()                                          # released: the hint must miss
    d, pd, _ = pool.take_again(hint, (256,), np.float32, 1024)
    assert pool.pooled_bytes == 1024 and hint[0][1] is None
    e, pe, _ = pool.take_again(hint, (256,), np.float32, 1024)
    assert pe != pd                                             # never a block the pool let go of twice


@needs_cc
def test_temporaries_and_outputs_in_an_unfused_program():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 4096), dtype=np.float32)
    c = explorer.compile(_chain, a, b, target="cpu", fuse=False, verbose=False)
    assert len(c.kernels) > 1 and c.program.temps
    outs = [c(a, b) for _ in range(3)]
    for o in outs:
        np.testing.assert_allclose(o, _chain(a, b), rtol=1e-5, atol=1e-6)
    assert len({o.ctypes.data for o in outs}) == 3


# unfused: outputs from POOL and temporaries from per-call sets; small: outputs the fast call path recycles
@needs_cc
@pytest.mark.parametrize("fn, shape, fuse, calls", [(_chain, (1 << 15,), False, 30),
                                                    (_matmul_plus_one, (16, 16), True, 300)], ids=["unfused", "small"])
def test_concurrent_calls_from_threads_get_their_own_buffers(fn, shape, fuse, calls):
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal(shape, dtype=np.float32) for _ in range(4)]
    c = explorer.compile(fn, xs[0], xs[1], target="cpu", fuse=fuse, verbose=False)
    errors: list[str] = []

    def work(i: int) -> None:
        want = fn(xs[i], xs[(i + 1) % 4])
        held: list[np.ndarray] = []
        for k in range(calls):
            got = c(xs[i], xs[(i + 1) % 4])
            held = [got] if k % 3 else held + [got]     # some results held across calls, some dropped
            if not all(np.allclose(h, want, rtol=1e-5, atol=1e-5) for h in held):
                errors.append(f"thread {i}")
    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


# ----------------------------------------------------------------------------- fast call path
@needs_cc
def test_fast_path_gives_the_full_paths_results_and_errors():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    c = explorer.compile(lambda x, y: x * y + 1, a, a, target="cpu", verbose=False)
    np.testing.assert_array_equal(c(a, a), a * a + 1)
    assert c._fast_call is not None
    np.testing.assert_array_equal(c(a, a), a * a + 1)                        # fast
    t = np.asfortranarray(a)
    np.testing.assert_array_equal(c(t, a), a * a + 1)                        # not contiguous: converted
    np.testing.assert_array_equal(c(a.astype(np.float16), a), a * a + 1)    # castable dtype
    np.testing.assert_array_equal(c(a.tolist(), a), a * a + 1)              # a list
    with pytest.raises(ShapeError, match=r"compiled for \(3, 4\)"):
        c(np.ones((4, 3), np.float32), a)
    with pytest.raises(ExplorerError, match="positionally"):
        c(a, y=a)
    with pytest.raises(ExplorerError, match="2 inputs"):
        c(a)


# ----------------------------------------------------------------------------- exact by default
def _gelu(x):
    return 0.5 * x * (1 + np.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


@needs_cc
def test_no_fma_contraction_by_default():
    rng = np.random.default_rng(3)
    a, b, d = rng.standard_normal((3, 1 << 12))
    c = explorer.compile(lambda a, b, d: a * b + d, a, b, d, target="cpu", verbose=False)
    assert "-ffp-contract=off" in cpu.flags_for(False) and "-ffp-contract=off" not in cpu.flags_for(True)
    np.testing.assert_array_equal(c(a, b, d), a * b + d)                      # two roundings, as NumPy
    x = np.concatenate([np.linspace(-8, 8, 4001), rng.standard_normal(4000) * 4])
    g = explorer.compile(_gelu, x, target="cpu", verbose=False)
    assert len(g.kernels) == 1
    assert np.max(np.abs(g(x) - _gelu(x))) <= 1e-15


def _code(src: str) -> str:
    """C source without comments (kernel comments quote the user's source lines)."""
    return re.sub(r"/\*.*?\*/", "", src, flags=re.S)


def test_matmul_accumulators_are_explicit_fmas():
    x = np.ones((64, 64), np.float32)
    c = explorer.compile(lambda x, w: np.tanh(x @ w) * x + x, x, x, target="cpu", verbose=False)
    assert "ke_fma" in _code(c.kernels[0].source)
    elementwise = explorer.compile(lambda a, b: a * b + a, x, x, target="cpu", verbose=False)
    assert "ke_fma" not in _code(elementwise.kernels[0].source)
    fast = explorer.compile(lambda x, w: x @ w, x, x, target="cpu", fast_math=True, verbose=False)
    assert "ke_fma" not in _code(fast.kernels[0].source)                     # -ffast-math contracts anyway


def test_cuda_builds_without_contraction_but_accumulates_with_fma():
    from explorer.backends import nvcc
    from explorer.backends.cuda import NVCC_OPTIONS
    assert "--fmad=false" in NVCC_OPTIONS and nvcc.FMAD_FLAG == "--fmad=false"
    x = np.ones((64, 64), np.float32)
    mm = explorer.compile(lambda x, w: x @ w, x, x, target="cuda", verbose=False)
    assert "fmaf(" in _code(mm.kernels[0].source)
    ew = explorer.compile(lambda a, b: a * b + a, x, x, target="cuda", verbose=False)
    assert "fmaf(" not in _code(ew.kernels[0].source)
    if nvcc.available()[0]:
        assert "fma.rn" not in nvcc.check(ew.codegen.source())


@needs_cc
def test_with_kernel_source_accepts_last_bit_differences_of_a_correct_edit():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 256)) * 1e3
    w = rng.standard_normal((256, 32)) * 1e3
    b = -(x @ w)      # results cancel to ~0: the rounding of the large products shows as absolute error
    c = explorer.compile(lambda x, w, b: x @ w + b, x, w, b, target="cpu", verbose=False)
    src = c.kernels[0].source
    # a correct hand edit: the accumulation with two roundings instead of one FMA
    two_roundings = ("#define ke_fma_v4d(a, b, c) ((a) * (b) + (c))\n"
                     "#define ke_fma(a, b, c) ((a) * (b) + (c))\n" + src)
    edited = c.with_kernel_source(0, two_roundings)
    assert edited.max_error(x, w, b) > 1e-9          # the old fixed 1e-9 tolerance rejected this edit
    wrong = ("#define ke_fma_v4d(a, b, c) ((a) * (b) * 1.000001 + (c))\n"
             "#define ke_fma(a, b, c) ((a) * (b) * 1.000001 + (c))\n" + src)
    with pytest.raises(VerificationError, match="allowed"):
        c.with_kernel_source(0, wrong)


def test_magnitude_and_default_rtol():
    from explorer.compiled import default_rtol, magnitude
    assert magnitude(np.zeros(3)) == 1.0 and magnitude(np.array([-5e8, np.nan])) == 5e8
    assert magnitude(np.arange(10)) == 1.0          # integers are exact: no scale
    assert default_rtol(np.float64) < default_rtol(np.float32) < default_rtol(np.float16)


@needs_cc
def test_temporaries_are_one_set_per_call_reused_across_calls(monkeypatch):
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((2, 4096), dtype=np.float32)
    c = explorer.compile(_chain, a, b, target="cpu", fuse=False, verbose=False)
    exe = c.executable()
    assert exe._temp_specs and not exe._temp_sets
    np.testing.assert_allclose(c(a, b), _chain(a, b), rtol=1e-5, atol=1e-6)
    (arrays, ptrs), = exe._temp_sets                          # one set kept after the call
    np.testing.assert_allclose(c(b, a), _chain(b, a), rtol=1e-5, atol=1e-6)
    assert exe._temp_sets == [(arrays, ptrs)] and exe._temp_sets[0][0] is arrays   # the same set again
    assert all(not np.shares_memory(t, o) for t in arrays for o in (c(a, b),))      # results never alias it
    monkeypatch.setattr(cpu, "TEMP_SET_LIMIT", 0)            # above the limit: temporaries come from the pool
    big = cpu.CpuExecutable(exe.lib_path, exe.codegen, exe.program, exe.constants)
    assert not big._temp_specs and len(big._alloc) == len(exe._alloc) + len(exe._temp_specs)
    np.testing.assert_allclose(big.run([a, b])[0], _chain(a, b), rtol=1e-5, atol=1e-6)
    assert big._temp_sets == []                                  # nothing to keep


@needs_cc
def test_returned_outputs_are_fresh_and_never_alias_inputs():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    fresh = explorer.compile(lambda x: x * 2, a, target="cpu", verbose=False)
    assert fresh.executable()._outs_are_new
    np.testing.assert_array_equal(fresh(a), a * 2)
    passthrough = explorer.compile(lambda x: (x, x * 2), a, target="cpu", verbose=False)
    same, doubled = passthrough(a)
    np.testing.assert_array_equal(same, a)
    np.testing.assert_array_equal(doubled, a * 2)
    assert not np.shares_memory(same, a)                    # an input returned as an output is a copy


def _fresh_python(code: str, cache: str, **env_vars: str) -> str:
    """stdout of `code` in a new Python without the wait-policy variables (plus env_vars)."""
    env = {k: v for k, v in os.environ.items() if k not in threads.WAIT_POLICY_VARS}
    env.update(env_vars, XDG_CACHE_HOME=str(cache))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_worker_probe_never_loads_libgomp_itself(tmp_path):
    # report() before any CPU kernel: the load signal must not load libgomp (which would fix its wait
    # settings before set_wait_policy chooses them)
    code = ("import os, explorer\nfrom explorer.backends import threads\n"
            "before = threads.libgomp_loaded(); threads.report()\n"
            "print(before, threads.omp_worker_tids(2) if not before else (), threads.libgomp_loaded())\n")
    before, tids, after = _fresh_python(code, tmp_path).split()
    assert tids == "()" and after == before             # (NumPy's BLAS may bring libgomp: then both True)


def test_an_outside_thread_counts_only_once_it_persists(monkeypatch):
    """busy_cores_for_call: our own process's other runnable threads (OpenBLAS workers) count at once;
    a thread outside the process counts only after PERSIST_S of successive busy checks."""
    clock = [100.0]
    reading = {"busy": 1, "own": 0}
    monkeypatch.setattr(threads, "running_threads", lambda: 1 + reading["busy"])   # the caller + the busy ones
    monkeypatch.setattr(threads, "_last_region", [-1.0, 0, 0])
    monkeypatch.setattr(threads, "own_workers_running", lambda team: 0)
    monkeypatch.setattr(threads, "busy_cores", lambda **kw: reading["busy"])
    monkeypatch.setattr(threads, "own_other_threads_running", lambda: reading["own"])
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(threads, "_streak", {})
    assert threads.busy_cores_for_call() == 0                 # first sighting of an outside thread
    clock[0] += threads.PERSIST_S / 2
    assert threads.busy_cores_for_call() == 0                 # still shorter than PERSIST_S
    clock[0] += threads.PERSIST_S
    assert threads.busy_cores_for_call() == 1                 # held a core across checks: a neighbour
    reading["busy"] = 0
    assert threads.busy_cores_for_call() == 0                 # gone: the streak ends
    reading["busy"] = 1
    clock[0] += 10 * threads.PERSIST_S
    assert threads.busy_cores_for_call() == 0                 # a new sighting starts a new streak
    reading["own"] = 1                                        # our OpenBLAS worker spinning: at once
    assert threads.busy_cores_for_call() == 1
    reading["own"] = 0
    assert threads.busy_cores_for_call() == 0                 # an outside thread again: a new streak
    clock[0] += threads.PERSIST_S * 1.5
    assert threads.busy_cores_for_call() == 1                 # it held on: a neighbour
    clock[0] += 2 * threads.STREAK_GAP_S                      # a pause between checks (no calls)...
    assert threads.busy_cores_for_call() == 0                 # ...ends the streak: only seen once now
    clock[0] += threads.PERSIST_S * 1.5
    assert threads.busy_cores_for_call() == 1


def test_own_other_threads_are_found_in_this_process(monkeypatch):
    monkeypatch.setattr(threads, "_other_tids", {})    # the thread below is new: list the threads again
    stop = threading.Event()
    work = np.random.default_rng(0).random(1 << 20)

    def spin():   # NumPy's sort runs without the GIL: this thread stays runnable while the test reads /proc
        while not stop.is_set():
            np.sort(work)
    t = threading.Thread(target=spin, daemon=True)
    t.start()
    try:
        seen = max(threads.own_other_threads_running() for _ in range(200))
    finally:
        stop.set()
        t.join()
    assert seen >= 1


@needs_cc
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to keep a worker off the caller's")
def test_workers_are_kept_off_the_callers_cpu(monkeypatch):
    """place_workers: each worker of a 2-thread team may run on the caller's CPUs except the one the
    caller is on; redone when the caller moves; never done when the user chose libgomp's binding."""
    a = np.ones(1 << 22, np.float32)
    c = explorer.compile(_chain, a, a, target="cpu", verbose=False)
    c(a, a)
    monkeypatch.setattr(threads, "_placed", {})
    monkeypatch.setattr(threads, "_user_binding", [[]])
    tid = threads.omp_worker_tids(2)[0]
    mine = os.sched_getaffinity(0)
    try:
        monkeypatch.setattr(threads, "_sched_getcpu", lambda: min(mine))
        assert threads.place_workers(2)
        assert os.sched_getaffinity(tid) == mine - {min(mine)}
        monkeypatch.setattr(threads, "_sched_getcpu", lambda: max(mine))      # the caller moved
        assert threads.place_workers(2)
        assert os.sched_getaffinity(tid) == mine - {max(mine)}
        assert not threads.place_workers(1)                                    # serial: no team to place
        assert threads.placement_text() == "workers kept off the calling thread's CPU (re-placed when it moves)"
        monkeypatch.setattr(threads, "_user_binding", [["OMP_PROC_BIND=close"]])   # the user chose libgomp's
        assert not threads.place_workers(2)
        assert threads.placement_text() == "workers placed by libgomp as the user set (OMP_PROC_BIND=close)"
    finally:
        os.sched_setaffinity(tid, mine)
    np.testing.assert_allclose(c(a, a), _chain(a, a), rtol=1e-6)               # the placed team still computes


def test_reduction_accumulators_are_fmas_and_elementwise_code_is_not():
    """A product accumulated in a reduction (a sum of squares) is one FMA: its summation order already
    differs from NumPy's, so no NumPy rounding is lost; the same a*b+c outside an accumulator keeps two."""
    x = np.random.default_rng(5).standard_normal((64, 256)).astype(np.float32)

    def var(x):
        m = x.mean(axis=-1, keepdims=True)
        return ((x - m) ** 2).mean(axis=-1)
    c = explorer.compile(var, x, target="cpu", verbose=False)
    assert any("ke_fmaf(" in _code(k.source) for k in c.kernels)
    np.testing.assert_allclose(c(x), var(x), rtol=1e-5)
    elementwise = explorer.compile(lambda a: a * a + a, x, target="cpu", verbose=False)
    assert "ke_fma" not in _code(elementwise.kernels[0].source)
    np.testing.assert_array_equal(elementwise(x), x * x + x)


def test_own_exp_polynomial_matches_numpy_closely():
    """ke_expf / ke_tanhf / ke_logf use FMAs in their polynomials (our approximations, not NumPy's
    roundings): still within a few ulp of NumPy over a wide range."""
    x = np.concatenate([np.linspace(-100, 88, 20001), np.random.default_rng(6).standard_normal(4000) * 3])
    x = x.astype(np.float32)
    for f in (np.exp, np.tanh):
        c = explorer.compile(lambda a, f=f: f(a), x, target="cpu", verbose=False)
        np.testing.assert_allclose(c(x), f(x), rtol=4e-7, atol=1e-38)
    pos = np.abs(x) + np.float32(1e-3)
    c = explorer.compile(lambda a: np.log(a), pos, target="cpu", verbose=False)
    np.testing.assert_allclose(c(pos), np.log(pos), rtol=4e-7, atol=2e-7)


@needs_cc
def test_exp_edges_and_subnormals_equal_numpy():
    """ke_expf computes on x and replaces the out-of-range lanes at the end: overflow, underflow,
    infinities, NaN and the subnormal results still come out as NumPy's, in a vectorized loop (16 lanes
    mixing in- and out-of-range values) and in the scalar remainder."""
    edges = [88.72, 88.73, 89.0, 89.5, 1e30, np.inf, -87.0, -100.0, -103.2, -103.9, -104.0, -104.5,
             -1e30, -np.inf, np.nan, 0.0, -0.0, 1.0, 3.5e-8]
    x = np.array(edges * 3, np.float32)[:53]          # 53: three vector blocks and a scalar remainder
    c = explorer.compile(lambda a: np.exp(a), x, target="cpu", verbose=False)
    with np.errstate(over="ignore"):
        got, want = c(x), np.exp(x)
    special = ~np.isfinite(want) | (want == 0) | (want == 1)
    np.testing.assert_array_equal(got[special], want[special])
    np.testing.assert_allclose(got[~special], want[~special], rtol=4e-7, atol=2e-45)


@needs_cc
def test_guided_schedule_gives_the_serial_results_bit_for_bit():
    """Parallel loops use schedule(guided): which thread computes which iterations changes from call to
    call, but iterations write disjoint outputs, so every team size gives the same bits."""
    rng = np.random.default_rng(3)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((4096, 64), (64, 64), (64,)))
    c = explorer.compile(lambda x, w, b: np.maximum(x @ w + b, 0), x, w, b, target="cpu", verbose=False)
    exe = c.executable()
    assert any(d.threads > 1 for d in exe.thread_policy)
    assert "schedule(guided)" in c.kernels[0].source
    env = exe._buffers(c.backend_inputs([x, w, b]))
    (_, fn, params), = exe.kernels
    ptrs = [env[p].ctypes.data for p in params]
    outs = []
    for team in (1, 2, 2, 2, 1, 2):
        exe._team.value = team
        fn(*ptrs)
        outs.append(env[params[-1]].copy())
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
