"""The CPU backend's compile cache under concurrency and corruption (issue 13).

Four processes compile the same and different kernels into one cache directory at the same moment:
every result is right and the directory holds only whole entries (no temporary or partial files).
A truncated cache entry is detected by its digest and rebuilt instead of being loaded.
Each scenario runs in child processes: a process must never dlopen a shared object that is then
truncated under it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from explorer.backends import cpu

pytestmark = pytest.mark.skipif(not cpu.available()[0], reason=cpu.available()[1])

ROOT = Path(__file__).resolve().parents[1]

# argv: go-file, k. Waits for the go-file so all workers hit the cache at once, then compiles a kernel
# shared by every worker and one of its own (scale k), and checks both against NumPy.
WORKER = textwrap.dedent("""
    import os, sys, time
    import numpy as np, explorer
    from explorer.backends import cpu
    go, k = sys.argv[1], int(sys.argv[2])
    while not os.path.exists(go):
        time.sleep(0.005)
    x = np.arange(64, dtype=np.float32).reshape(8, 8)
    shared = explorer.compile(lambda x: np.tanh(x @ x.T) + 1.5, x, target="cpu", verbose=False)
    own = explorer.compile(lambda x: x * float(k) - 0.25, x, target="cpu", verbose=False)
    assert np.allclose(shared(x), np.tanh(x @ x.T) + 1.5, rtol=1e-6), "shared kernel wrong"
    assert np.array_equal(own(x), x * np.float32(k) - np.float32(0.25)), "own kernel wrong"
    print("ok", cpu.stats["compiles"], cpu.stats["cache_hits"], cpu.stats.get("corrupt_entries", 0))
""")


def _env(cache_home: Path) -> dict[str, str]:
    # KE_PYTHON_CALL_PATH: the C call path's extension (backends/dispatch.py) would be one more cache
    # entry built on the first call; these scenarios count the kernels' entries
    return {**os.environ, "XDG_CACHE_HOME": str(cache_home), "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1", "KE_PYTHON_CALL_PATH": "1"}


def _run_workers(cache_home: Path, ks: list[int], tmp_path: Path) -> list[str]:
    go = tmp_path / f"go-{time.monotonic_ns()}"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(go), str(k)], env=_env(cache_home), cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in ks]
    time.sleep(0.5)     # let every interpreter start and wait on the go-file
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        outs.append(out.strip())
    return outs


def _cache_files(cache_home: Path) -> list[Path]:
    return sorted((cache_home / "kernel-explorer" / "cpu").iterdir())


def _assert_only_whole_entries(cache_home: Path) -> list[Path]:
    files = _cache_files(cache_home)
    names = [f.name for f in files]
    assert not [n for n in names if n.startswith("build-") or n.endswith(".tmp")], names   # no partial files
    sos = [f for f in files if f.suffix == ".so"]
    for so in sos:
        assert cpu._entry_ok(so), f"{so.name} does not match its digest"
    assert {f.with_suffix("").name for f in files if f.suffix == ".sha256"} == {f.with_suffix("").name for f in sos}
    return sos


def test_four_processes_compile_same_and_different_kernels_at_once(tmp_path):
    cache_home = tmp_path / "cache"
    outs = _run_workers(cache_home, [2, 3, 4, 5], tmp_path)
    assert all(o.startswith("ok") for o in outs), outs
    sos = _assert_only_whole_entries(cache_home)
    assert len(sos) == 5                     # one shared entry + one per worker
    # the shared kernel was built by one process only: 4 own builds + 1 shared build in all
    assert sum(int(o.split()[1]) for o in outs) == 5, outs
    # a second wave finds everything cached
    again = _run_workers(cache_home, [2, 3, 4, 5], tmp_path)
    assert [o.split()[1] for o in again] == ["0"] * 4, again


def test_truncated_cache_entry_is_detected_and_rebuilt(tmp_path):
    cache_home = tmp_path / "cache"
    (first,) = _run_workers(cache_home, [7], tmp_path)
    assert first.split()[1] == "2"
    sos = _assert_only_whole_entries(cache_home)
    for so in sos:                            # truncate every entry, as a full disk or a killed copy would
        data = so.read_bytes()
        so.write_bytes(data[: len(data) // 3])
    (second,) = _run_workers(cache_home, [7], tmp_path)
    _, compiles, hits, corrupt = second.split()
    assert (compiles, hits, corrupt) == ("2", "0", "2"), second
    _assert_only_whole_entries(cache_home)
    (third,) = _run_workers(cache_home, [7], tmp_path)
    assert third.split()[1:] == ["0", "2", "0"], third


def test_write_atomic_leaves_no_partial_file(tmp_path):
    target = tmp_path / "entry.sha256"
    cpu._write_atomic(target, "abc")
    assert target.read_text() == "abc" and [p.name for p in tmp_path.iterdir()] == ["entry.sha256"]
