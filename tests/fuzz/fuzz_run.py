"""`make fuzz N=10000`: run N random programs in worker processes and print a summary.

    python tests/fuzz/fuzz_run.py -n 2000 [--workers 2] [--timeout 120] [--seed 0] [--nvcc]
                                  [--strict] [--save tests/fuzz/regressions] [--show 2]

Each worker draws programs with hypothesis (a seeded batch at a time) and judges them on every
available target (fuzz_check). The first run of a new failure class a worker meets is shrunk by
hypothesis to a minimal program (re-checking only the failing target, within --shrink-budget seconds)
and sent back. The parent hears from a worker before every run, so a worker that dies (segfault, abort)
is a `crash` and one silent for --timeout seconds is killed as a `hang`, both charged to the program
and target it was running; a new worker takes over and the run goes on.

Failures matching fuzz_known.KNOWN (filed bug classes, by letter; empty when all are fixed) are counted as
`known:<letter>`, apart from new ones. Exit status: 1 when there is a new failure (or any failure
with --strict), else 0.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
import traceback
from collections import Counter, defaultdict
from multiprocessing.connection import wait
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

OUTCOMES = ("ok", "wrong", "error", "exception", "crash", "hang", "known", "rejected")


class FuzzFailure(Exception):
    """Raised in the hypothesis body so that hypothesis shrinks the program."""


# ----------------------------------------------------------------------------- worker
def worker_main(conn, opts: dict[str, Any]) -> None:
    import faulthandler
    import warnings
    warnings.simplefilter("ignore")
    faulthandler.disable()          # a crash is reported by the parent; no C-level dump on stderr
    from hypothesis import HealthCheck, Phase, given, seed, settings

    from fuzz_check import available_targets, check_program
    from fuzz_known import known_letter
    from fuzz_programs import programs

    targets = opts["targets"] or available_targets(nvcc=opts["nvcc"])
    shrunk_here: set[str] = set(opts.get("skip_signatures", ()))

    def send(*msg):
        conn.send(msg)

    while True:
        task = conn.recv()
        if task is None:
            return
        batch_seed, count = task
        state: dict[str, Any] = {"n": 0, "target_sig": None, "best": None, "best_run": None, "t0": 0.0,
                                 "failed": {}}

        def on_run(label):
            send("at", label)
            if label == targets[0] and state["target_sig"] is None:
                _inject(opts)

        @settings(max_examples=count, database=None, deadline=None, derandomize=False,
                  suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                  phases=[Phase.generate, Phase.shrink], print_blob=False)
        @seed(batch_seed)
        @given(programs(targets=[t for t in targets if t in ("sim", "cpu", "cuda")] or ["sim"]))
        def body(prog):
            src = prog.source()
            failing = None
            if state["target_sig"] is None:                                   # generating
                send("start", src)
                runs = check_program(prog, targets, on_run=on_run)
                known = [known_letter(r, prog) for r in runs]
                state["n"] += 1
                send("done", [(r.target, r.outcome, r.cls, r.detail[:400], k) for r, k in zip(runs, known)], src)
                failing = next((r for r, k in zip(runs, known)
                                if r.failed and k is None and r.signature() not in shrunk_here), None)
                if failing is not None:
                    state.update(target_sig=failing.signature(), best=prog, best_run=failing, t0=time.time(),
                                 label=failing.target)
            elif src in state["failed"]:          # a replay: same verdict, no re-run
                failing = state["failed"][src]
            elif time.time() - state["t0"] <= opts["shrink_budget"]:
                # shrinking: only the failing target, and only the same failure class counts
                send("start-shrink", src)
                runs = check_program(prog, targets, only=state["label"], on_run=on_run)
                failing = next((r for r in runs if r.failed and r.signature() == state["target_sig"]), None)
            if failing is not None:
                state["failed"][src] = failing
                state.update(best=prog, best_run=failing)          # the last raise is hypothesis' minimal one
                raise FuzzFailure(state["target_sig"])           # one raise site: hypothesis sees one bug

        try:
            body()
        except FuzzFailure:
            r = state["best_run"]
            shrunk_here.add(state["target_sig"])
            send("shrunk", state["target_sig"], state["best"].source(), r.detail[:600])
        except Exception as e:  # noqa: BLE001 - a fuzzer bug must not end the run; report it
            send("internal", f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}")
        send("batch-done", state["n"])


def _inject(opts: dict[str, Any]) -> None:
    """--inject crash:K,hang:M (the runner's own test): the K-th program started in the whole run kills
    its worker with SIGSEGV, the M-th one sleeps forever."""
    counter = opts.get("started")
    if counter is None or not opts.get("inject"):
        return
    with counter.get_lock():
        counter.value += 1
        k = counter.value
    what = opts["inject"].get(k)
    if what == "crash":
        import signal
        os.kill(os.getpid(), signal.SIGSEGV)
    elif what == "hang":
        time.sleep(10**6)


# ----------------------------------------------------------------------------- parent
class Pool:
    """Workers with a pipe each; a dead or silent worker is replaced."""

    def __init__(self, n: int, opts: dict[str, Any]):
        self.ctx = mp.get_context("fork")
        self.opts = opts
        self.workers: dict[Any, dict[str, Any]] = {}
        for _ in range(n):
            self.spawn()

    def spawn(self) -> None:
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=worker_main, args=(child, self.opts), daemon=True)
        p.start()
        child.close()
        self.workers[parent] = {"proc": p, "busy": False, "last": time.time(), "prog": None, "at": None,
                                "shrinking": False, "count": 0}

    def kill(self, conn) -> dict[str, Any]:
        w = self.workers.pop(conn)
        if w["proc"].is_alive():
            w["proc"].kill()
        w["proc"].join(5)
        conn.close()
        return w


def summarize(counts, classes, shrunk, rejected, internal, args, elapsed, n_done) -> tuple[str, bool]:
    lines = [f"fuzz: {n_done} programs in {elapsed:.0f} s "
             f"(seed {args.seed}, {args.workers} workers, timeout {args.timeout} s)", ""]
    targets = sorted({t for t, _ in counts}, key=lambda t: (t.split("+")[0] not in ("reference",), t))
    lines.append(f"{'target':<14}" + "".join(f"{o:>10}" for o in OUTCOMES))
    for t in targets:
        lines.append(f"{t:<14}" + "".join(f"{counts.get((t, o), 0):>10}" for o in OUTCOMES))
    new = {s: v for s, v in classes.items() if v["known"] is None}
    known = {s: v for s, v in classes.items() if v["known"] is not None}
    lines += ["", f"NEW failure classes: {len(new)}"]
    for sig, v in sorted(new.items(), key=lambda kv: -kv[1]["n"]):
        lines.append(f"  [{v['n']:>5} runs] {sig}")
        prog, detail = shrunk.get(sig, (v["first"], v["detail"]))
        tag = "minimal program" if sig in shrunk else "first program (not shrunk)"
        lines.append(f"      {detail[:300]}")
        lines.append(f"      {tag}:")
        lines += ["        " + ln for ln in prog.strip().splitlines() if not ln.startswith(("import", "from"))
                  and ln.strip()]
    lines += ["", "known classes (fuzz_known.KNOWN):"]
    per_letter: Counter = Counter()
    for v in known.values():
        per_letter[v["known"]] += v["n"]
    from fuzz_known import KNOWN
    for k in KNOWN:
        if per_letter.get(k.letter):
            lines.append(f"  {k.letter:<12} {per_letter[k.letter]:>6} runs  {k.what}")
    if not per_letter:
        lines.append("  none seen")
    lines += ["", "rejected by the tracer (NumPy accepts; unsupported surface), top messages:"]
    for msg, n in rejected.most_common(8):
        lines.append(f"  {n:>6}  {msg[:150]}")
    if internal:
        lines += ["", f"fuzzer-internal errors: {len(internal)} (first below)", internal[0][:1500]]
    bad = bool(new) or bool(internal) or (args.strict and bool(known))
    return "\n".join(lines), bad


def save_regression(directory: str, sig: str, source: str, detail: str) -> str:
    import hashlib
    os.makedirs(directory, exist_ok=True)
    h = hashlib.sha1(source.encode()).hexdigest()[:10]
    path = os.path.join(directory, f"case_{h}.py")
    header = f'"""Found by the fuzzer: {sig}\n{detail[:300]}\n"""\n'.replace("\\", "/")
    with open(path, "w") as f:
        f.write(header + source)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=1000, help="programs to run")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds one run may take before it is a hang")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=100, help="programs per hypothesis run in a worker")
    ap.add_argument("--targets", default="", help="comma list (default: every available target)")
    ap.add_argument("--nvcc", action="store_true", help="also build each program's CUDA to PTX with nvcc")
    ap.add_argument("--shrink-budget", type=float, default=90.0, help="seconds of shrinking per new class")
    ap.add_argument("--strict", action="store_true", help="known classes count as failures too")
    ap.add_argument("--save", default="", help="write each new class's minimal program into this folder")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    ap.add_argument("--inject", default="", help=argparse.SUPPRESS)   # 'crash:K,hang:M', for the runner's test
    args = ap.parse_args(argv)

    inject = {int(k): what for what, k in (item.split(":") for item in args.inject.split(",") if item)}
    opts = {"targets": [t for t in args.targets.split(",") if t], "nvcc": args.nvcc,
            "shrink_budget": args.shrink_budget, "inject": inject,
            "started": mp.get_context("fork").Value("i", 0) if inject else None}
    pool = Pool(max(1, args.workers), opts)
    counts: Counter = Counter()
    classes: dict[str, dict[str, Any]] = {}
    shrunk: dict[str, tuple[str, str]] = {}
    rejected: Counter = Counter()
    internal: list[str] = []
    n_done = n_assigned = batch_no = 0
    t_start = time.time()
    last_print = 0.0

    def record(target, outcome, cls, detail, known, src):
        from fuzz_check import Run
        r = Run(target, outcome, cls, detail)
        if outcome == "rejected":
            from fuzz_check import normalize
            rejected[f"{cls}: {normalize(detail)}"] += 1
        if not r.failed:
            counts[(target, outcome)] += 1
            return
        counts[(target, "known" if known else outcome)] += 1
        c = classes.setdefault(r.signature(), {"n": 0, "known": known, "first": src, "detail": detail})
        c["n"] += 1

    def assign(conn):
        nonlocal n_assigned, batch_no
        w = pool.workers[conn]
        if n_assigned >= args.n:
            w["busy"] = False
            return
        k = min(args.batch, args.n - n_assigned)
        n_assigned += k
        w.update(busy=True, count=k, last=time.time(), got=0)
        conn.send((args.seed * 100003 + batch_no, k))
        batch_no += 1

    def replace(w, outcome: str, cls: str, detail: str) -> None:
        """A killed or dead worker: charge its program (crash/hang), hand its batch's rest to a new worker."""
        nonlocal n_done, n_assigned
        if w["prog"] is not None:
            record(w["at"] or "?", outcome, cls, detail, None, w["prog"])
            if not w["shrinking"]:
                n_done += 1
        n_assigned -= w["count"] - w.get("got", 0) - (1 if w["prog"] is not None else 0)
        pool.spawn()
        assign(list(pool.workers)[-1])

    for conn in list(pool.workers):
        assign(conn)
    silent_deaths = 0
    while any(w["busy"] for w in pool.workers.values()) and not (internal and silent_deaths > 3):
        ready = wait(list(pool.workers), timeout=1.0)
        for conn in ready:
            w = pool.workers[conn]
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                w = pool.kill(conn)
                code = w["proc"].exitcode
                silent_deaths = silent_deaths + 1 if w["prog"] is None else 0
                if silent_deaths > 3:   # workers die before running anything: the fuzzer itself is broken
                    internal.append(f"workers exit (code {code}) before running a program; stopping")
                    break
                replace(w, "crash", f"exit {code}", f"worker died (exit code {code})")
                continue
            w["last"] = time.time()
            kind = msg[0]
            if kind == "start":
                w.update(prog=msg[1], at=None, shrinking=False)
            elif kind == "start-shrink":
                w.update(prog=msg[1], at=None, shrinking=True)
            elif kind == "at":
                w["at"] = msg[1]
            elif kind == "done":
                for target, outcome, cls, detail, known in msg[1]:
                    record(target, outcome, cls, detail, known, msg[2])
                n_done += 1
                w["got"] = w.get("got", 0) + 1
                w["prog"] = None
            elif kind == "shrunk":
                sig, src, detail = msg[1:]
                if sig not in shrunk or len(src) < len(shrunk[sig][0]):
                    shrunk[sig] = (src, detail)
                w["prog"] = None
            elif kind == "internal":
                internal.append(msg[1])
            elif kind == "batch-done":
                n_assigned -= w["count"] - msg[1]          # the rest of a batch cut short by a failure
                w["prog"] = None
                assign(conn)
        now = time.time()
        for conn, w in list(pool.workers.items()):
            if w["busy"] and now - w["last"] > args.timeout:
                replace(pool.kill(conn), "hang", f">{args.timeout:.0f}s", "no answer")
        if not args.quiet and now - last_print > 10:
            last_print = now
            nfail = sum(v["n"] for v in classes.values() if v["known"] is None)
            print(f"  ... {n_done}/{args.n} programs, {nfail} new-class runs, {len(classes)} classes, "
                  f"{now - t_start:.0f} s", file=sys.stderr, flush=True)
    for conn in list(pool.workers):
        try:
            conn.send(None)
        except OSError:
            pass
        pool.kill(conn)
    text, bad = summarize(counts, classes, shrunk, rejected, internal, args, time.time() - t_start, n_done)
    print(text)
    main.last = {"counts": dict(counts), "classes": classes, "shrunk": shrunk, "n_done": n_done}  # type: ignore
    if args.save:
        for sig, (src, detail) in shrunk.items():
            if classes.get(sig, {}).get("known") is None:
                print("saved", save_regression(args.save, sig, src, detail))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
