"""Run a benchmark snippet in a child interpreter (e.g. one that has torch) and read its JSON answer.

Used by benchmarks/transformer.py and benchmarks/conv.py for torch: a child process keeps torch's
thread pool and ours from slowing each other, and lets torch live in another venv
(`--torch-python /path/to/python`).

    >>> run_json_child(sys.executable, "import json, sys; print(json.dumps(json.load(sys.stdin)))", {"a": 1})
    {'a': 1}
"""
from __future__ import annotations

import json
import subprocess
import sys


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


if __name__ == "__main__":
    print(run_json_child(sys.executable, "import json, sys; print(json.dumps(json.load(sys.stdin)))", {"a": 1}))
