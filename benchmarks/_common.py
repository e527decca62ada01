"""Helpers the benchmark scripts share. Imports only the standard library: the thread pinning below
must run before NumPy (OpenBLAS) and the first kernel (libgomp) start their thread pools.

    from _common import threads_from_argv, pin_threads   # benchmarks/ is sys.path[0] for a script

It also makes the temporary checkout of another revision that the `--against REV` comparisons run.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Sequence

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def threads_from_argv(argv: Sequence[str]) -> str | None:
    """The value of `--threads N` or `--threads=N` in argv (a string), None without one.

    >>> threads_from_argv(["x.py", "--threads=4"]), threads_from_argv(["--threads", "2"]), threads_from_argv([])
    ('4', '2', None)
    """
    for k, arg in enumerate(argv):
        if arg == "--threads" and k + 1 < len(argv):
            return argv[k + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return None


def pin_threads(n: int | str) -> None:
    """OpenMP, OpenBLAS and MKL pools of n threads (environment variables; call before importing NumPy)."""
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(n)


def short_revision(root: str, rev: str) -> str | None:
    """The short hash of `rev` in the repository at `root`, or None (and one line saying why) when it is none."""
    r = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", rev], capture_output=True, text=True)
    if r.returncode:
        print(f"--against {rev}: not a revision of {root}: {r.stderr.strip()}")
        return None
    return r.stdout.strip()


def add_worktree(root: str, rev: str, prefix: str = "ke-against-") -> str:
    """A temporary `git worktree` of `rev` (its path); remove it with remove_worktree."""
    path = os.path.join(tempfile.mkdtemp(prefix=prefix), "tree")
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", path, rev], check=True, capture_output=True)
    return path


def remove_worktree(root: str, path: str) -> None:
    subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(path)], capture_output=True)
