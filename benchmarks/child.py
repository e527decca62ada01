"""Run a benchmark snippet in a child interpreter (e.g. one that has torch) and read its JSON answer.

Used by benchmarks/transformer.py and benchmarks/conv.py for torch: a child process keeps torch's
thread pool and ours from slowing each other, and lets torch live in another venv
(`--torch-python /path/to/python`).

    >>> run_json_child(sys.executable, "import json, sys; print(json.dumps(json.load(sys.stdin)))", {"a": 1})
    {'a': 1}
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path


def run_json_child(python: str, script: str, spec: dict, timeout: float = 1800) -> dict | str:
    """Run `python -c script` with `spec` as JSON on stdin; → the last JSON line it prints, or a failure text.

    A child that prints {"error": ...} (e.g. torch not importable) gives that message as the text.
    """
    try:
        r = subprocess.run([python, "-c", script], input=json.dumps(spec), capture_output=True, text=True,
                           timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"child {python} failed: {e}"
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return f"child {python} failed (rc {r.returncode}): {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
    res = json.loads(lines[-1])
    return res["error"] if "error" in res else res


# The torch side of a benchmark: load the arrays of spec["npz"] as `d`, run `setup` (which defines
# run() -> tensor and to_numpy(tensor) -> array), check run() against d["want"], then time run() for
# spec["budget_s"] seconds after spec["warmup"] calls.
TORCH_TIMING = r'''
import json, sys, time
try:
    import torch
except Exception as e:
    print(json.dumps({"error": f"torch not importable ({type(e).__name__}: {e})"})); sys.exit(0)
import numpy as np
spec = json.loads(sys.stdin.read())
if spec["threads"]:
    torch.set_num_threads(spec["threads"])
d = np.load(spec["npz"])
%s
with torch.no_grad():
    got = to_numpy(run())
    for _ in range(spec["warmup"]):
        run()
    samples, end = [], time.perf_counter() + spec["budget_s"]
    while time.perf_counter() < end or len(samples) < 3:
        t = time.perf_counter(); run(); samples.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"samples": samples, "err": float(np.abs(got - d["want"]).max()), "version": torch.__version__,
                  "threads": torch.get_num_threads()}))
'''


def torch_timing_chunk(python: str, setup: str, npz: Path, budget_s: float, **spec) -> dict | str:
    """One slice of torch timings: TORCH_TIMING with `setup` in the child `python`; → {'samples', 'err', ...}.

    torch gets OMP_NUM_THREADS threads when that is set (else its default); extra `spec` keys reach
    the child's `spec` dict.
    """
    threads = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS", "").isdigit() else 0
    return run_json_child(python, TORCH_TIMING % textwrap.dedent(setup).strip(),
                          {"npz": str(npz), "budget_s": budget_s, "warmup": 3, "threads": threads, **spec},
                          timeout=600)


if __name__ == "__main__":
    print(run_json_child(sys.executable, "import json, sys; print(json.dumps(json.load(sys.stdin)))", {"a": 1}))
