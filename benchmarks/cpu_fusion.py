"""CPU fusion benchmark: everything measured in one run on this machine.

    .venv/bin/python benchmarks/cpu_fusion.py [--quick]
    .venv/bin/python benchmarks/cpu_fusion.py --against HEAD~1 [--quick] [--rounds 6] [--only TEXT] [--neighbour]

--against REV measures our rows for this tree and for REV (a temporary `git worktree` of REV,
imported by a second child process) in the same run: the two children take turns row by row and
round by round (A B B A ...), so drift and neighbours hit both alike; it prints both medians with
their interquartile ranges and the after/before ratio, and says which rows are slower by > 10%.
Each row's note also gives the team sizes this tree's kernel calls got from the thread policy and,
when the load signal shrank some calls, the median of the others. --only TEXT keeps the rows whose
name contains TEXT; --neighbour runs a busy process (`while True: pass`) for the whole comparison.

Rows (one table, all measured in this run; min and median of the repeats):
  * copy bandwidth of 16M float32: numpy copy, and a plain 2-thread C copy kernel built through
    the CPU backend from hand-written loop IR (GB/s counts read + write)
  * the 8-op chain np.maximum(np.tanh(a*1.5+b)*b - a/3, 0.1) + a*b on 16M float32:
    fused CPU kernel (NumPy NaN/Inf semantics), the fast_math=True variant, numpy, numexpr
    (if installed), torch eager and torch.compile (if torch is importable; never installed by
    this script), with speedups and the share of the C copy bandwidth (3 arrays moved)
  * matmul+bias+relu at 1024x1024x1024, 8192x64 @ 64x64 and the memory-bound 131072x16 @ 16x16:
    fused vs unfused (fuse=False) on the CPU backend, numpy, torch eager and torch.compile
  * matmul 1024^3: CPU backend vs numpy (and torch) in GFLOP/s
  * softmax and layernorm over the last axis of 4096x1024 float32: CPU backend vs numpy, torch.compile

torch runs in a child process after the rest: its OpenMP pool and ours (and OpenBLAS's) spin
between parallel regions, so sharing one process makes whichever runs next look slow.
Our timings come from Compiled.benchmark (output buffers allocated once, as a caching allocator
would); NumPy's from wall time of the expression (which allocates its temporaries).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import add_worktree, remove_worktree, short_revision  # benchmarks/ is sys.path[0] (standard library only)

import numpy as np

# KE_BENCH_ROOT: which checkout's explorer to import (--against runs one child per checkout)
sys.path.insert(0, os.environ.get("KE_BENCH_ROOT") or str(Path(__file__).resolve().parents[1]))

import explorer  # noqa: E402
from explorer.codegen.c import generate_c  # noqa: E402
from explorer import measure  # noqa: E402
from explorer.compiled import Timing  # noqa: E402


def rx(num: Timing, den: Timing) -> str:
    """num / den of the medians as explorer.measure prints it (3 significant digits, never a bare
    '0.00x'), with '(unstable)' when either timing carries the unstable-measurement flag."""
    r = measure.ratio(num, den)
    return measure.fmt_ratio(r.value) + (" (unstable)" if r.unstable else "")


def chain(a, b):
    return np.maximum(np.tanh(a * 1.5 + b) * b - a / 3, 0.1) + a * b


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


def matmul(x, w):
    return x @ w


def wall(fn, *args, warmup: int = 2, repeat: int = 10) -> Timing:
    """Wall-clock Timing of fn(*args) (explorer.measure: median, IQR, min, unstable flag)."""
    return measure.measure(lambda: fn(*args), warmup=warmup, repeat=repeat)


def ours(fn, *args, repeat: int = 10, **kw) -> tuple[Timing, float, "explorer.Compiled"]:
    c = explorer.compile(fn, *args, target="cpu", verbose=False, **kw)
    err = c.max_error(*args)
    return c.benchmark(*args, warmup=3, repeat=repeat), err, c


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str, str, str]] = []

    def add(self, name: str, t: Timing | None, ratio: str = "", note: str = ""):
        flag = f" [{measure.UNSTABLE_TEXT}]" if t is not None and t.unstable else ""
        self.rows.append((name, f"{t.median_ms:9.3f}" if t else "      n/a", f"{t.min_ms:9.3f}" if t else "",
                          ratio, note, flag))

    def section(self, title: str):
        self.rows.append((f"-- {title}", "", "", "", "", ""))

    def print(self):
        w = max(len(r[0]) for r in self.rows)
        print(f"{'case':<{w}}  {'median ms':>9}  {'min ms':>9}  {'ratio':>18}  note (ratios use medians)")
        for name, ms, mn, ratio, note, flag in self.rows:
            if name.startswith("--"):
                print(name)
            else:
                print(f"{name:<{w}}  {ms:>9}  {mn:>9}  {ratio:>18}  {note}{flag}")


def sizes(quick: bool) -> dict:
    return {"n": 1 << (20 if quick else 24), "rep": 3 if quick else 10,
            # 8192x64 @ 64x64 is the shape; at 16 flop/byte it is compute-bound once the matmul runs
            # near peak (machine balance ~5 flop/byte), so 131072x16 @ 16x16 (4 flop/byte) is the memory-bound one
            "mlp": ([(256, 256, 256), (2048, 64, 64), (16384, 16, 16)] if quick
                    else [(1024, 1024, 1024), (8192, 64, 64), (131072, 16, 16)]),
            "mm": 256 if quick else 1024, "rows": 512 if quick else 4096}


def data(sz: dict):
    """The same inputs in both processes (seeded)."""
    rng = np.random.default_rng(0)
    n = sz["n"]
    out = {"a": rng.standard_normal(n, dtype=np.float32), "b": rng.standard_normal(n, dtype=np.float32)}
    for m, k, nn in sz["mlp"]:
        out[f"mlp{m}"] = (rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, nn), dtype=np.float32),
                          rng.standard_normal(nn, dtype=np.float32))
    m = sz["mm"]
    out["mm"] = (rng.standard_normal((m, m), dtype=np.float32), rng.standard_normal((m, m), dtype=np.float32))
    out["rows"] = rng.standard_normal((sz["rows"], 1024), dtype=np.float32)
    return out


def torch_measure(quick: bool) -> dict:
    """All torch rows (run in a child process): {key: [median_ms, min_ms]} plus 'threads'."""
    import torch
    sz = sizes(quick)
    d = data(sz)
    rep = sz["rep"]
    res: dict = {"threads": torch.get_num_threads(), "version": torch.__version__}

    def put(key, t: Timing):
        res[key] = [t.median_ms, t.min_ms]

    ta, tb = torch.from_numpy(d["a"]), torch.from_numpy(d["b"])

    def tchain(a, b):
        return torch.clamp_min(torch.tanh(a * 1.5 + b) * b - a / 3, 0.1) + a * b
    put("chain eager", wall(tchain, ta, tb, repeat=rep))
    put("chain compile", wall(torch.compile(tchain), ta, tb, repeat=rep))
    for m, k, nn in sz["mlp"]:
        x, w, b = (torch.from_numpy(v) for v in d[f"mlp{m}"])
        r = rep if m * k * nn < 2**28 else max(3, rep // 2)
        put(f"mlp{m} eager", wall(lambda x, w, b: torch.relu(x @ w + b), x, w, b, repeat=r))
        put(f"mlp{m} compile", wall(torch.compile(lambda x, w, b: torch.relu(x @ w + b)), x, w, b, repeat=r))
    x, w = (torch.from_numpy(v) for v in d["mm"])
    put("mm", wall(torch.matmul, x, w, repeat=rep))
    x = torch.from_numpy(d["rows"])
    put("softmax", wall(torch.compile(_torch_softmax), x, repeat=rep))
    put("layernorm", wall(torch.compile(_torch_layernorm), x, repeat=rep))
    return res


def torch_results(quick: bool) -> tuple[dict | None, str]:
    if _torch_spec() is None:
        return None, "torch not installed (this script never installs it)"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--torch-child"] + (["--quick"] if quick else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        return None, f"torch run failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}"
    return json.loads(lines[-1]), ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (smoke test)")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch rows")
    ap.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--against", metavar="REV", help="also measure our rows at git revision REV, interleaved")
    ap.add_argument("--rounds", type=int, default=6, help="--against: rounds per row (default 6)")
    ap.add_argument("--max-slowdown", type=float, default=0.10, metavar="F",
                    help="--against: flag rows slower than REV by more than this fraction (default 0.10)")
    ap.add_argument("--only", metavar="TEXT", help="--against: only the rows whose name contains TEXT")
    ap.add_argument("--neighbour", action="store_true",
                    help="--against: run with a busy neighbour process (`while True: pass`, stopped at the end)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.torch_child:
        print(json.dumps(torch_measure(args.quick)))
        return 0
    if args.serve:
        return serve(args.quick)
    if args.against:
        return against(args.against, args.quick, args.rounds, args.only, args.neighbour, args.max_slowdown)
    from explorer.backends import cpu
    ok, why = cpu.available()
    if not ok:
        print(f"CPU backend unavailable: {why}")
        return 1
    sz = sizes(args.quick)
    n, rep = sz["n"], sz["rep"]
    d = data(sz)
    tab = Table()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'default')}, compiler: {why}")
    if load > 0.5 * (os.cpu_count() or 1):
        print("note: the machine is busy; timings (medians especially) are noisy, compare the min column")

    # ---- our kernels and numpy (this process)
    a, b = d["a"], d["b"]
    dst = np.empty_like(a)
    tcopy_np = wall(np.copyto, dst, a, repeat=rep * 2)
    exe = cpu.build_codegen(generate_c(copy_program(n)))
    tcopy = exe.time([a], warmup=3, repeat=rep * 2)
    if not np.array_equal(exe.run([a])[0], a):
        raise SystemExit("the C copy kernel did not copy")
    tnp = wall(chain, a, b, warmup=1, repeat=max(3, rep // 2))
    tfused, err, _ = ours(chain, a, b, repeat=rep)
    tfast, err_fast, _ = ours(chain, a, b, repeat=rep, fast_math=True)
    tne = None
    if importlib.util.find_spec("numexpr"):
        import numexpr as ne

        def ne_chain(a, b):   # numexpr has no maximum(): two passes, where() on the first's result
            t = ne.evaluate("tanh(a*1.5+b)*b - a/3")
            return ne.evaluate("where(t > 0.1, t, 0.1) + a*b")
        tne = wall(ne_chain, a, b, repeat=rep)
        ne_threads = ne.detect_number_of_cores()
    mlp_res = []
    for m, k, nn in sz["mlp"]:
        x, w, bias = d[f"mlp{m}"]
        r = rep if m * k * nn < 2**28 else max(3, rep // 2)
        tf, ef, cf = ours(mlp, x, w, bias, repeat=r)
        tu, eu, cu = ours(mlp, x, w, bias, repeat=r, fuse=False)
        tn = wall(mlp, x, w, bias, repeat=r)
        mlp_res.append((m, k, nn, tf, ef, cf, tu, cu, tn))
    x, w = d["mm"]
    tm, em, _ = ours(matmul, x, w, repeat=max(3, rep // 2))
    tmn = wall(matmul, x, w, repeat=rep)
    red_res = []
    for name, fn in (("softmax", softmax), ("layernorm", layernorm)):
        tr, er, _ = ours(fn, d["rows"], repeat=rep)
        red_res.append((name, tr, er, wall(fn, d["rows"], repeat=rep)))
    end_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    # ---- torch (child process)
    tr_res, tr_why = (None, "skipped (--no-torch)") if args.no_torch else torch_results(args.quick)

    def tt(key: str) -> Timing | None:
        if not tr_res or key not in tr_res:
            return None
        med, mn = tr_res[key]
        return Timing(median_ms=med, min_ms=mn, stdev_ms=0.0, repeat=0)

    # ---- the table
    copy_gbs = 2 * a.nbytes / tcopy.median_ms / 1e6
    tab.section(f"copy bandwidth, {n / 2**20:.0f}M float32 (read + write)")
    tab.add("numpy copy (1 thread)", tcopy_np, f"{2 * a.nbytes / tcopy_np.median_ms / 1e6:.1f} GB/s")
    tab.add("C copy kernel (OpenMP, via the CPU backend)", tcopy, f"{copy_gbs:.1f} GB/s",
            f"min {2 * a.nbytes / tcopy.min_ms / 1e6:.1f} GB/s; the shares below use the median")
    moved = 3 * a.nbytes   # read a, b; write out

    def bw_note(t: Timing) -> str:
        gbs = moved / t.median_ms / 1e6
        return f"{gbs:.1f} GB/s = {100 * gbs / copy_gbs:.0f}% of copy"

    tab.section(f"8-op chain, {n / 2**20:.0f}M float32")
    tab.add("numpy", tnp, "1.0x", bw_note(tnp))
    tab.add("fused CPU kernel (NumPy NaN/Inf)", tfused, f"{rx(tnp, tfused)} numpy",
            f"{bw_note(tfused)}; max err {err:.2g}")
    tab.add("fused CPU kernel, fast_math=True", tfast, f"{rx(tnp, tfast)} numpy",
            f"{bw_note(tfast)}; max err {err_fast:.2g}")
    if tne is not None:
        tab.add(f"numexpr ({ne_threads} threads)", tne, f"{rx(tnp, tne)} numpy",
                f"fused is {rx(tne, tfused)} faster")
    else:
        tab.add("numexpr", None, "", "not installed")
    threads = tr_res["threads"] if tr_res else "?"
    for key, label in (("chain eager", f"torch eager ({threads} threads)"), ("chain compile", "torch.compile (Inductor)")):
        t = tt(key)
        tab.add(label, t, f"{rx(tnp, t)} numpy" if t else "",
                (f"fused is {rx(t, tfused)} faster, fast_math "
                 f"{rx(t, tfast)}") if t else tr_why)
    for m, k, nn, tf, ef, cf, tu, cu, tn in mlp_res:
        tab.section(f"matmul+bias+relu {m}x{k} @ {k}x{nn}")
        tab.add("numpy", tn, "1.0x")
        tab.add(f"fused ({len(cf.kernels)} kernel)", tf, f"{rx(tn, tf)} numpy",
                f"{rx(tu, tf)} vs unfused; max err {ef:.2g}")
        tab.add(f"unfused ({len(cu.kernels)} kernels)", tu, f"{rx(tn, tu)} numpy",
                "per kernel ms: " + ", ".join(f"{v:.3f}" for v in (tu.per_kernel_ms or {}).values()))
        for key, label in ((f"mlp{m} eager", "torch eager"), (f"mlp{m} compile", "torch.compile (Inductor)")):
            t = tt(key)
            tab.add(label, t, f"{rx(tn, t)} numpy" if t else "",
                    f"fused is {rx(t, tf)} its speed" if t else tr_why)
    m = sz["mm"]
    flops = 2 * m ** 3
    tab.section(f"matmul {m}^3")
    tab.add("numpy", tmn, f"{flops / tmn.median_ms / 1e6:.0f} GFLOP/s")
    tab.add("CPU backend", tm, f"{flops / tm.median_ms / 1e6:.0f} GFLOP/s",
            f"{rx(tmn, tm)} numpy (min: {measure.fmt_ratio(tmn.min_ms / tm.min_ms)}); max err {em:.2g}")
    t = tt("mm")
    tab.add("torch.matmul", t, f"{flops / t.median_ms / 1e6:.0f} GFLOP/s" if t else "", "" if t else tr_why)
    for name, tr, er, tn in red_res:
        tab.section(f"{name} over the last axis, {sz['rows']}x1024 float32")
        tab.add("numpy", tn, "1.0x")
        gbs = 2 * d["rows"].nbytes / tr.median_ms / 1e6
        tab.add("CPU backend (1 kernel)", tr, f"{rx(tn, tr)} numpy",
                f"{gbs:.1f} GB/s = {100 * gbs / copy_gbs:.0f}% of copy; max err {er:.2g}")
        t = tt(name)
        tab.add("torch.compile (Inductor)", t, f"{rx(tn, t)} numpy" if t else "",
                f"ours is {rx(t, tr)} its speed" if t else tr_why)
    tab.print()
    print(f"load average: {load:.1f} at the start, {end_load:.1f} after our and numpy's rows"
          + (f"; torch {tr_res['version']} measured afterwards in a child process" if tr_res else ""))
    return 0


# ---------------------------------------------------------------- --against: this tree vs REV
# --serve: the team size each kernel of a turn got and the most its policy allowed (trees with a thread
# policy; empty for older ones)
TEAMS: list[tuple[int, int]] = []
REGION_ENDED = None


def row_makers(quick: bool) -> dict:
    """{row name: () -> (call, check)} for our rows: call() runs it once; check() -> max error.
    Only APIs every revision has: explorer.compile, Compiled.__call__/.benchmark's machinery."""
    from explorer.backends import cpu
    global REGION_ENDED
    try:   # what the CPU backend's own calls (and Compiled.benchmark) do after a parallel kernel, where it exists
        from explorer.backends.threads import region_ended as REGION_ENDED
    except ImportError:
        REGION_ENDED = None
    sz = sizes(quick)
    d = data(sz)
    a, b = d["a"], d["b"]
    rows: dict = {}

    def kernels_runner(exe, env):
        """What Compiled.benchmark times: the kernels on the preallocated buffers in `env`, each with the
        team its thread policy gives it at call time (trees with a policy), recorded in TEAMS."""
        calls = [(f, [env[p].ctypes.data for p in params]) for _, f, params in exe.kernels]
        team, policy = getattr(exe, "_team", None), getattr(exe, "thread_policy", None)

        def run(env=env):      # env keeps the buffers alive
            for k, (f, ptrs) in enumerate(calls):
                if team is not None:
                    team.value = exe._team_size(policy[k])
                    TEAMS.append((team.value, policy[k].threads))
                f(*ptrs)
                if team is not None and team.value > 1 and REGION_ENDED:
                    REGION_ENDED(team.value)
        return run

    def kernel_row(fn, *args, **kw):
        def make():
            c = explorer.compile(fn, *args, target="cpu", verbose=False, **kw)
            exe = c.executable()
            return kernels_runner(exe, exe._buffers(c.backend_inputs(list(args)))), lambda: c.max_error(*args)
        return make

    def call_row(fn, *args, **kw):
        def make():
            c = explorer.compile(fn, *args, target="cpu", verbose=False, **kw)
            return (lambda: c(*args)), (lambda: c.max_error(*args))
        return make

    def copy_row():
        exe = cpu.build_codegen(generate_c(copy_program(sz["n"])))
        return kernels_runner(exe, exe._buffers([a])), lambda: 0.0
    n = sz["n"] >> 20
    rows[f"C copy kernel {n}M"] = copy_row
    rows[f"chain {n}M fused"] = kernel_row(chain, a, b)
    rows[f"chain {n}M fused fast_math"] = kernel_row(chain, a, b, fast_math=True)
    rows[f"chain {n}M fused, c(a, b) call"] = call_row(chain, a, b)
    for m, k, nn in sz["mlp"]:
        args = d[f"mlp{m}"]
        rows[f"mlp {m}x{k}@{k}x{nn} fused"] = kernel_row(mlp, *args)
        rows[f"mlp {m}x{k}@{k}x{nn} unfused"] = kernel_row(mlp, *args, fuse=False)
    rows[f"matmul {sz['mm']}^3"] = kernel_row(matmul, *d["mm"])
    rows[f"softmax {sz['rows']}x1024"] = kernel_row(softmax, d["rows"])
    rows[f"layernorm {sz['rows']}x1024"] = kernel_row(layernorm, d["rows"])
    return rows


def serve(quick: bool) -> int:
    """Child of --against: 'NAME\tREPEAT' on stdin -> one JSON line of ms samples (and the error)."""
    makers = row_makers(quick)
    built: dict = {}
    for line in sys.stdin:
        name, repeat = line.rstrip("\n").split("\t")
        if name not in built:
            run, check = makers[name]()
            built[name] = run
            run()
            run()
            print(json.dumps({"err": float(check())}), flush=True)
            continue
        run = built[name]
        samples, shrunk = [], []
        # the turn's first call, after the pause, timed apart: the warm-up Compiled.benchmark and
        # measure() discard (both builds' workers are asleep then; see the note under TURN_PAUSE_S)
        t0 = time.perf_counter()
        run()
        first = (time.perf_counter() - t0) * 1e3
        del TEAMS[:]
        start = time.perf_counter()
        while len(samples) < int(repeat) or (time.perf_counter() - start < TURN_MIN_S and len(samples) < 200):
            n0 = len(TEAMS)
            t0 = time.perf_counter()
            run()
            samples.append((time.perf_counter() - t0) * 1e3)
            shrunk.append(any(n < most for n, most in TEAMS[n0:]))   # the load signal took threads away
        print(json.dumps({"ms": samples, "first": first, "teams": [n for n, _ in TEAMS], "shrunk": shrunk}),
              flush=True)
    return 0


class _Child:
    def __init__(self, root: str, quick: bool):
        env = dict(os.environ, KE_BENCH_ROOT=root, PYTHONPATH=root)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve"] + (["--quick"] if quick else [])
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, name: str, repeat: int) -> dict:
        self.p.stdin.write(f"{name}\t{repeat}\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit(f"benchmark child for {name!r} died (exit {self.p.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=60)


def _q(s: list[float], q: float) -> float:
    s = sorted(s)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


TURN_PAUSE_S = 0.2   # > libgomp's default spin time after a parallel region (~tens of ms here)
# A turn's samples go on until TURN_MIN_S has passed (at least `rep` of them, at most 200): after the
# pause the cores, the caches and the vCPUs are cold for a few ms, and 5 calls of a 0.4 ms kernel
# (2 ms) measured that warm-up more than the kernel (measured 2026-12-01: per call of a turn of the
# MLP 131072x16, the old build 4.3-6.2, 4.3, 0.40, 0.37, 0.38 ms; this one 0.65-1.8, 0.49-0.56,
# 0.37-0.45, 0.37-0.44, 0.38-0.41 ms).
TURN_MIN_S = 0.02
# Each turn starts with one call that is timed apart ("first call" column) and not among the samples,
# as measure() and Compiled.benchmark warm up before timing: after the pause both builds' workers are
# asleep and the idle vCPU has to be woken, which cost the old build 4-6 ms and this one ~0.4 ms on the
# first call of a 0.35 ms layernorm (docs/CPU_THREADS.md). Until 2026-12-01 evening that call was a
# sample, so with 5 calls a turn the median mixed the cold start into the kernel time.


def against(rev: str, quick: bool, rounds: int, only: str | None = None, neighbour: bool = False,
            max_slowdown: float = 0.10) -> int:
    root = Path(__file__).resolve().parents[1]
    sha = short_revision(str(root), rev)
    if sha is None:
        return 2
    wt = add_worktree(str(root), rev)
    now = _Child(str(root), quick)
    old = _Child(wt, quick)
    load = os.getloadavg()[0]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if neighbour else None
    print(f"this tree ({root}) vs {rev} = {sha} (git worktree {wt}); {os.cpu_count()} CPUs, "
          f"load average {load:.1f}; {rounds} rounds per row, children take turns (A B B A ...) after a "
          f"{TURN_PAUSE_S:g} s pause each: one call timed apart, then calls for >= {TURN_MIN_S * 1e3:g} ms (>= 3-5); "
          f"busy neighbour: {'pid %d' % busy.pid if busy else 'none'}")
    rows = [n for n in row_makers(quick) if not only or only in n]
    res = {}
    slower = []
    try:
        for name in rows:
            errs = (now.ask(name, 0)["err"], old.ask(name, 0)["err"])
            a_ms: list[float] = []
            b_ms: list[float] = []
            firsts: tuple[list[float], list[float]] = ([], [])
            teams: list[int] = []
            full: list[float] = []      # this tree's calls whose kernels all got the team their policy allows
            rep = 3 if ("1024" in name and "matmul" in name) or "1024x1024" in name else 5
            paired: list[float] = []     # per round: this tree's turn median / the old build's, turns adjacent
            for r in range(rounds):
                pair = (now, a_ms), (old, b_ms)
                turn: dict[bool, float] = {}
                for child, acc in (pair if r % 2 == 0 else pair[::-1]):
                    # the old build's idle OpenMP workers spin after its turn (libgomp's default wait
                    # policy); let them fall asleep so they do not take the cores of the other child's turn
                    time.sleep(TURN_PAUSE_S)
                    got = child.ask(name, rep)
                    acc.extend(got["ms"])
                    turn[child is old] = statistics.median(got["ms"])
                    firsts[child is old].append(got["first"])
                    if child is now:
                        teams.extend(got.get("teams", []))
                        full.extend(ms for ms, s in zip(got["ms"], got.get("shrunk", [])) if not s)
                paired.append(turn[False] / turn[True])
            res[name] = (a_ms, b_ms, errs, teams, full, firsts, paired)
    finally:
        now.close()
        old.close()
        if busy is not None:
            busy.kill()
            busy.wait()
        remove_worktree(str(root), wt)
    head = "row (kernel time unless 'call')"
    w = max(len(head), *(len(n) for n in rows))
    print("after/before: the ratio of the pooled medians; paired: the median [p25-p75] over rounds of this tree's "
          "turn median / the old build's adjacent turn's (the machine's speed drifts by up to 2x within minutes "
          "here; adjacent turns share it). The verdict uses the paired ratio.")
    print(f"{head:<{w}}  {'before ms (IQR)':>26}  {'after ms (IQR)':>26}  {'after/before':>12}  "
          f"{'paired':>20}  verdict")
    for name in rows:
        a_ms, b_ms, (ea, eb), teams, full, firsts, paired = res[name]
        ta, tb = measure.summarize(a_ms), measure.summarize(b_ms)
        r = measure.ratio(ta, tb)
        pm, (p1, p3) = statistics.median(paired), measure.quartiles(paired)
        bad = pm > 1 + max_slowdown
        if bad:
            slower.append(name)
        unsure = p3 / p1 > 1.3 if p1 > 0 else True
        print(f"{name:<{w}}  {tb.median_ms:9.3f} ({tb.q1_ms:7.3f}-{tb.q3_ms:7.3f})  "
              f"{ta.median_ms:9.3f} ({ta.q1_ms:7.3f}-{ta.q3_ms:7.3f})  {measure.fmt_ratio(r.value):>12}  "
              f"{f'{pm:.3f} [{p1:.2f}-{p3:.2f}]':>20}  "
              f"{f'SLOWER by > {max_slowdown:.0%}' if bad else 'ok'}{' (unstable: rerun)' if unsure else ''}  "
              f"(max err {eb:.2g} -> {ea:.2g}; first call after the pause {statistics.median(firsts[1]):.3g} -> "
              f"{statistics.median(firsts[0]):.3g} ms; {_teams(teams)}{_full(full, len(a_ms), tb.median_ms)})")
    print(f"load average at the end {os.getloadavg()[0]:.1f}; "
          + (f"{len(slower)} row(s) slower by > {max_slowdown:.0%}: {', '.join(slower)}" if slower else
             f"no row slower than before by more than {max_slowdown:.0%}"))
    return 1 if slower else 0


def _teams(teams: list[int]) -> str:
    """'threads 2 x17, 1 x1': the team sizes this tree's kernel calls got (the call-time policy)."""
    if not teams:
        return "threads: n/a"
    return "threads " + ", ".join(f"{n} x{teams.count(n)}" for n in sorted(set(teams), reverse=True))


def _full(full: list[float], n: int, before_ms: float) -> str:
    """When the load signal shrank some of this tree's calls: the median of the others, against before."""
    if len(full) == n:
        return ""
    if not full:
        return "; every call shrunk by the load signal (other threads held cores)"
    med = statistics.median(full)
    return f"; calls not shrunk by the load signal: median {med:.3f} ms = {med / before_ms:.2f}x before (n={len(full)})"


def _torch_spec():
    return importlib.util.find_spec("torch")


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def layernorm(x):
    m = x.mean(axis=-1, keepdims=True)
    v = ((x - m) ** 2).mean(axis=-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5)


def _torch_softmax(x):
    import torch
    return torch.softmax(x, dim=-1)


def _torch_layernorm(x):
    import torch
    m = x.mean(dim=-1, keepdim=True)
    v = ((x - m) ** 2).mean(dim=-1, keepdim=True)
    return (x - m) / torch.sqrt(v + 1e-5)


def copy_program(n: int, chunk: int = 1 << 16, vec: int = 16):
    """out0 = x as hand-written loop IR: chunks across OpenMP threads, SIMD inside (what the
    elementwise default schedule generates, without any arithmetic)."""
    from explorer.loopir import Buffer, For, Kernel, Load, Program, Store, Var
    x, y = Buffer("x", (n,)), Buffer("out0", (n,))
    o, c, v = Var("o"), Var("c"), Var("v")
    if n % chunk or chunk % vec:
        raise ValueError(f"copy_program: n={n} must be a multiple of chunk={chunk}, a multiple of vec={vec}")
    idx = o * chunk + c * vec + v
    body = For(o, n // chunk, (For(c, chunk // vec, (For(v, vec, (Store(y, (idx,), Load(x, (idx,))),),
                                                          kind="vectorized"),)),), kind="parallel")
    return Program("copy", (Kernel("copy_kernel", (x, y), (body,), outputs=("out0",)),), (x,), (y,))


if __name__ == "__main__":
    sys.exit(main())
