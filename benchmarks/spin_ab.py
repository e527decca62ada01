"""A/B of libgomp wait settings and the call-time load signal on cpu_fusion.py's kernel rows.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/spin_ab.py [--rows "matmul 1024^3,mlp 8192x64@64x64 fused"]
        [--old REV] [--rounds 10] [--repeat 5] [--neighbour] VARIANT ...

A VARIANT is LABEL=ENV[/SIGNAL]: ENV is `default` (what explorer sets: GOMP_SPINCOUNT=threads.SPIN_COUNT)
or comma-separated NAME:VALUE pairs (`GOMP_SPINCOUNT:1000`, `OMP_WAIT_POLICY:passive`); SIGNAL is `load`
(the policy: fewer threads when other threads hold cores; default) or `team` (the load signal off: every
parallel kernel gets its full team). --old REV adds REV's build (a temporary git worktree; libgomp's own
default spinning) as the variant `old`. Example (docs/CPU_THREADS.md, "Bounded spinning"):

    benchmarks/spin_ab.py --old 3607d6b passive=OMP_WAIT_POLICY:passive spin1e3=GOMP_SPINCOUNT:1000 \\
        spin1e4=default spin1e5=GOMP_SPINCOUNT:100000 spin1e4-team=default/team

Each variant is a persistent `cpu_fusion.py --serve` child; per row, the children take turns in rotated
order, round by round, with a 0.2 s pause before each turn (so no worker of the previous turn spins in it).
Prints per variant the median, IQR and min of the kernel time and how many calls ran with 2+ threads.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import add_worktree, remove_worktree  # benchmarks/ is sys.path[0] (standard library only)

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "cpu_fusion.py"
TURN_PAUSE_S = 0.2


def start(root: Path, env: dict[str, str], signal: str) -> subprocess.Popen:
    code = ("import sys, runpy\nsys.argv = ['cpu_fusion.py', '--serve']\n"
            + ("from explorer.backends import threads\nthreads.busy_cores = lambda *a, **k: 0\n" if signal == "team" else "")
            + f"runpy.run_path({str(BENCH)!r}, run_name='__main__')\n")
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    full.update(env, KE_BENCH_ROOT=str(root), PYTHONPATH=str(root))
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=full)


def ask(p: subprocess.Popen, row: str, repeat: int) -> dict:
    p.stdin.write(f"{row}\t{repeat}\n")
    p.stdin.flush()
    line = p.stdout.readline()
    if not line:
        raise SystemExit(f"a benchmark child died on {row!r} (exit {p.wait()})")
    return json.loads(line)


def parse(spec: str) -> tuple[str, dict[str, str], str]:
    label, _, rest = spec.partition("=")
    envs, _, signal = rest.partition("/")
    env = {} if envs in ("", "default") else dict(kv.split(":", 1) for kv in envs.split(","))
    if signal not in ("", "load", "team"):
        raise SystemExit(f"variant {spec!r}: the signal after '/' must be 'load' or 'team'")
    return label, env, signal or "load"


def q(s: list[float], p: float) -> float:
    s = sorted(s)
    return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", metavar="VARIANT")
    ap.add_argument("--rows", default="matmul 1024^3,mlp 8192x64@64x64 fused")
    ap.add_argument("--old", metavar="REV", help="also REV's build (libgomp's default spinning), as 'old'")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5, help="calls per turn")
    ap.add_argument("--neighbour", action="store_true", help="a busy process (`while True: pass`) for the run")
    args = ap.parse_args()
    children: dict[str, subprocess.Popen] = {}
    wt = None
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.neighbour else None
    try:
        if args.old:
            wt = Path(add_worktree(str(ROOT), args.old, prefix="ke-spin-ab-"))
            children["old"] = start(wt, {}, "load")
        for spec in args.variants:
            label, env, signal = parse(spec)
            children[label] = start(ROOT, env, signal)
        print(f"{os.cpu_count()} CPUs; neighbour: {'pid %d' % busy.pid if busy else 'none'}; {args.rounds} rounds of "
              f"{args.repeat} calls per variant and row, rotated; variants: " + "; ".join(args.variants))
        names = list(children)
        for row in args.rows.split(","):
            for p in children.values():
                ask(p, row, 0)          # build, warm up, check
            ms: dict[str, list[float]] = {k: [] for k in names}
            teams: dict[str, list[int]] = {k: [] for k in names}
            load0 = os.getloadavg()[0]
            for r in range(args.rounds):
                for k in names[r % len(names):] + names[:r % len(names)]:
                    time.sleep(TURN_PAUSE_S)
                    got = ask(children[k], row, args.repeat)
                    ms[k] += got["ms"]
                    teams[k] += got.get("teams", [])
            print(f"{row}  (load average {load0:.1f} -> {os.getloadavg()[0]:.1f})")
            for k in names:
                s, t = ms[k], teams[k]
                par = f"{sum(n > 1 for n in t)}/{len(t)} calls with 2+ threads" if t else "team: libgomp's default"
                print(f"  {k:<16} median {statistics.median(s):8.3f} ms  IQR {q(s, .25):8.3f}-{q(s, .75):8.3f}  "
                      f"min {min(s):8.3f}  {par}")
    finally:
        for p in children.values():
            p.stdin.close()
            p.wait(timeout=60)
        if busy is not None:
            busy.kill()
            busy.wait()
        if wt is not None:
            remove_worktree(str(ROOT), str(wt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
