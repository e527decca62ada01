"""GPT-2 style transformer block and a 2-block forward: explorer (cpu) vs NumPy vs torch.compile.

    PYTHONPATH=. .venv/bin/python benchmarks/transformer.py [--quick] [--torch-python PATH]

Two spellings of the same model:
  * "as written": the way NumPy GPT-2 code is written (np.split of qkv and of the heads, a Python
    loop over heads, np.hstack, x.var). Constructs the compiler does not support yet are reported
    (the UnsupportedOpError / ExplorerError message), not fatal.
  * "slices": the same block with slices instead of np.split, the head merge folded into the
    projection (hstack(heads) @ W == sum_h head_h @ W[h*d:(h+1)*d]), and the variance written out.
    It compiles today, so horizontal fusion (one batched kernel per step for all heads) is measured.

Rows (all measured in this run with explorer.measure.interleaved: every round runs each variant once,
so a busy neighbour slows all of them alike; median and interquartile range [p25, p75] in ms, and
UNSTABLE with measure's reason where the spread stayed high). Interleaving NumPy with explorer also
measures their interference: OpenBLAS's workers spin after each NumPy matmul and the CPU backend's
load signal then runs the next explorer call on fewer threads; a second row times the fused call with
no NumPy call in between (against the same NumPy median) and counts the kernel calls that got fewer
threads.
  explorer fused / fused without the horizontal rule / unfused (fuse=False), NumPy, torch eager and
  torch.compile (in a child process, when `import torch` works there: its thread pool and ours
  would otherwise slow each other), kernel counts, and small-matmul rows (kernel and call time vs NumPy
  in µs, alternating call by call and in blocks of 20 calls; the issue's small range is M*N*K < 1 M
  multiply-adds, a GEMV above it is shown too).
Sizes: seq 16, width 64, 4 heads (small) and seq 256, width 512, 8 heads (large).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable


from _common import pin_threads, threads_from_argv  # noqa: E402  (standard library only: before NumPy)

THREADS = int(t) if (t := threads_from_argv(sys.argv)) is not None else None
if THREADS:
    pin_threads(THREADS)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import explorer  # noqa: E402
from explorer import measure as measure_lib  # noqa: E402
from explorer.backends import threads  # noqa: E402
from explorer.errors import ExplorerError  # noqa: E402
from explorer.measure import Timing  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import run_json_child  # noqa: E402

N_HEAD = 4   # set per size by configure(); the model functions read it like picoGPT's n_head argument


# ----------------------------------------------------------------------------- the model, as written
def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def softmax(x):
    exp_x = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return exp_x / np.sum(exp_x, axis=-1, keepdims=True)


def layer_norm(x, g, b, eps: float = 1e-5):
    mean = np.mean(x, axis=-1, keepdims=True)
    variance = x.var(axis=-1, keepdims=True)
    return g * (x - mean) / np.sqrt(variance + eps) + b


def linear(x, w, b):
    return x @ w + b


def causal_mask(n, dtype):
    return (1 - np.tri(n, dtype=dtype)) * -1e10


def attention(q, k, v, mask):
    return softmax(q @ k.T / q.shape[-1] ** 0.5 + mask) @ v


def mha(x, attn_w, attn_b, proj_w, proj_b):
    x = linear(x, attn_w, attn_b)
    qkv = np.split(x, 3, axis=-1)
    qkv_heads = list(map(lambda t: np.split(t, N_HEAD, axis=-1), qkv))
    mask = causal_mask(x.shape[0], x.dtype)
    out_heads = [attention(q, k, v, mask) for q, k, v in zip(*qkv_heads)]
    return linear(np.hstack(out_heads), proj_w, proj_b)


def block_as_written(x, ln1_g, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_g, ln2_b, fc_w, fc_b, fc2_w, fc2_b):
    x = x + mha(layer_norm(x, ln1_g, ln1_b), attn_w, attn_b, proj_w, proj_b)
    return x + linear(gelu(linear(layer_norm(x, ln2_g, ln2_b), fc_w, fc_b)), fc2_w, fc2_b)


def block_as_written_f32(x, ln1_g, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_g, ln2_b, fc_w, fc_b, fc2_w, fc2_b):
    # block_as_written with one change: gelu's constant is a Python float (gelu_f32), so the block stays
    # float32 as torch's does; this is the row the float32 targets (NumPy x3, torch.compile x1.5) read
    x = x + mha(layer_norm(x, ln1_g, ln1_b), attn_w, attn_b, proj_w, proj_b)
    return x + linear(gelu_f32(linear(layer_norm(x, ln2_g, ln2_b), fc_w, fc_b)), fc2_w, fc2_b)


# ----------------------------------------------------------------------------- the same block, compiles today
def gelu_f32(x):
    # np.sqrt(2 / np.pi) is an np.float64 scalar, which under NumPy 2 (NEP 50) promotes the float32
    # activations to float64 (NumPy itself then runs gelu, and the rest of the block, in float64); a
    # Python float keeps float32, as torch does
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def layer_norm_today(x, g, b, eps: float = 1e-5):
    mean = np.mean(x, axis=-1, keepdims=True)
    variance = np.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return g * (x - mean) / np.sqrt(variance + eps) + b


def mha_today(x, attn_w, attn_b, proj_w, proj_b):
    x = linear(x, attn_w, attn_b)
    n, width = x.shape[0], x.shape[1] // 3
    q, k, v = x[:, :width], x[:, width:2 * width], x[:, 2 * width:]
    d = width // N_HEAD
    mask = causal_mask(n, x.dtype)
    out = proj_b
    for h in range(N_HEAD):
        hs = slice(h * d, (h + 1) * d)
        out = out + attention(q[:, hs], k[:, hs], v[:, hs], mask) @ proj_w[hs, :]
    return out


def block_today(x, ln1_g, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_g, ln2_b, fc_w, fc_b, fc2_w, fc2_b):
    x = x + mha_today(layer_norm_today(x, ln1_g, ln1_b), attn_w, attn_b, proj_w, proj_b)
    return x + linear(gelu_f32(linear(layer_norm_today(x, ln2_g, ln2_b), fc_w, fc_b)), fc2_w, fc2_b)


N_PARAMS = 12
# each construct the as-written model needs, alone, so every missing one is reported (not just the first)
CONSTRUCTS = [
    ("np.split", lambda x: np.split(x, 2, axis=-1)[1]),
    ("np.hstack", lambda x: np.hstack([x, x])),
    ("x.var", lambda x: x.var(axis=-1, keepdims=True)),
    ("np.tri causal mask (a captured constant)", lambda x: x + causal_mask(x.shape[1], x.dtype)[:x.shape[0]]),
]


def two_blocks(block: Callable) -> Callable:
    def forward(x, *p):
        return block(block(x, *p[:N_PARAMS]), *p[N_PARAMS:])
    forward.__name__ = f"two_{block.__name__}s"
    return forward


def params(width: int, rng) -> list[np.ndarray]:
    def w(*shape, scale=0.02):
        return (rng.standard_normal(shape) * scale).astype(np.float32)
    one, zero = np.ones(width, np.float32), np.zeros(width, np.float32)
    return [one + w(width), zero + w(width), w(width, 3 * width), w(3 * width), w(width, width), w(width),
            one + w(width), zero + w(width), w(width, 4 * width), w(4 * width), w(4 * width, width), w(width)]


# ----------------------------------------------------------------------------- timing
CLOCK = time.perf_counter   # --cpu-time: time.process_time (set in main)


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, per_round: int) -> dict[str, Timing]:
    """explorer.measure's round-robin timing of every variant, rounds * per_round rounds after a warm-up
    round: {name: Timing} (median, quartiles and the `unstable` verdict with its reason), on CLOCK."""
    return measure_lib.interleaved(fns, repeat=rounds * per_round, warmup=1, clock=CLOCK)


def timing(s: "Timing | list[float]") -> Timing:
    return s if isinstance(s, Timing) else measure_lib.summarize(s)


def stats(s: "Timing | list[float]") -> tuple[float, float, float]:
    t = timing(s)
    return t.median_ms, t.q1_ms, t.q3_ms


def fmt(s: "Timing | list[float]") -> str:
    t = timing(s)
    return f"{t.median_ms:9.3f} [{t.q1_ms:.3f}, {t.q3_ms:.3f}]" + (" UNSTABLE" if t.unstable else "")


def unstable_note(s: "Timing | list[float]") -> str:
    t = timing(s)
    return f"   ({t.flag_text()})" if t.unstable else ""


def kernel_runner(c: "explorer.Compiled", args) -> Callable[[], None]:
    """The kernels alone, buffers allocated once (what Compiled.benchmark times), without Python's per-call work."""
    exe = c.executable()
    env = exe._buffers(c.backend_inputs(c.check_args(list(args))), fresh=False)
    team = getattr(exe, "_team", None)
    plan = getattr(exe, "_plan", None) or [(None, None, None, 1)] * len(exe.kernels)
    calls = [(fn, [env[p].ctypes.data for p in ps], dec, fixed)
             for (_, fn, ps), (_, _, dec, fixed) in zip(exe.kernels, plan)]

    def run():
        for fn, a, dec, fixed in calls:
            n = fixed or exe._team_size(dec)    # the thread policy at call time, as Compiled.benchmark
            if team is not None:
                team.value = n
            fn(*a)
            if n > 1:
                threads.region_ended(n)
    return run


def compile_or_report(fn, args, label: str, **kw):
    try:
        c = explorer.compile(fn, *args, target="cpu", verbose=False, **kw)
    except ExplorerError as e:
        first = str(e).splitlines()[0]
        print(f"  {label}: does not compile yet: {type(e).__name__}: {first[:300]}")
        return None
    err = float(max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max()
                    for a, b in zip([c(*args)], [fn(*args)])))
    print(f"  {label}: compiles, {len(c.kernels)} kernels, max abs error vs NumPy {err:.2e}")
    return c


# ----------------------------------------------------------------------------- torch (child process)
TORCH_CHILD = textwrap.dedent(r'''
    import json, statistics, sys, time
    try:
        import torch
    except Exception as e:
        print(json.dumps({"error": f"torch not installed ({type(e).__name__})"})); sys.exit(0)
    import numpy as np
    spec = json.loads(sys.stdin.read())
    torch.set_num_threads(spec["threads"])
    clock = time.process_time if spec["cpu_time"] else time.perf_counter
    data = np.load(spec["npz"])
    n_head, rounds, per = spec["n_head"], spec["rounds"], spec["per_round"]

    def gelu(x):
        return 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x ** 3)))

    def layer_norm(x, g, b, eps=1e-5):
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        return g * (x - mean) / torch.sqrt(var + eps) + b

    def block(x, ln1_g, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_g, ln2_b, fc_w, fc_b, fc2_w, fc2_b):
        h = layer_norm(x, ln1_g, ln1_b) @ attn_w + attn_b
        q, k, v = torch.split(h, h.shape[-1] // 3, dim=-1)
        n = x.shape[0]
        mask = (1 - torch.tril(torch.ones(n, n))) * -1e10
        heads = []
        for qh, kh, vh in zip(*(torch.split(t, t.shape[-1] // n_head, dim=-1) for t in (q, k, v))):
            heads.append(torch.softmax(qh @ kh.T / qh.shape[-1] ** 0.5 + mask, dim=-1) @ vh)
        x = x + torch.hstack(heads) @ proj_w + proj_b
        return x + gelu(layer_norm(x, ln2_g, ln2_b) @ fc_w + fc_b) @ fc2_w + fc2_b

    def forward(x, *p):
        return block(block(x, *p[:12]), *p[12:])

    out = {}
    for name, fn, nargs in (("block", block, 13), ("2 blocks", forward, 25)):
        args = [torch.from_numpy(data[f"a{i}"]) for i in range(nargs)]
        want = data["want_block" if name == "block" else "want_fwd"]
        t0 = time.perf_counter()
        comp = torch.compile(fn)
        with torch.no_grad():
            got = comp(*args).numpy()
        compile_s = time.perf_counter() - t0
        runs = {"torch eager": fn, "torch.compile": comp}
        samples = {k: [] for k in runs}
        with torch.no_grad():
            for f in runs.values():
                f(*args)
            for _ in range(rounds):
                for k, f in runs.items():
                    for _ in range(per):
                        t = clock(); f(*args); samples[k].append((clock() - t) * 1e3)
        out[name] = {"samples": samples, "compile_s": compile_s, "err": float(np.abs(got - want).max()),
                     "version": torch.__version__}
    print(json.dumps(out))
''')


def run_torch(python: str, args: list[np.ndarray], n_head: int, want_block, want_fwd, rounds: int, per: int,
              tmp: Path) -> dict | str:
    npz = tmp / "transformer_args.npz"
    np.savez(npz, **{f"a{i}": a for i, a in enumerate(args)}, want_block=want_block, want_fwd=want_fwd)
    spec = {"npz": str(npz), "n_head": n_head, "rounds": rounds, "per_round": per, "cpu_time": CLOCK is time.process_time,
            "threads": THREADS or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())}
    return run_json_child(python, TORCH_CHILD, spec)


# ----------------------------------------------------------------------------- main
def measure(programs, rounds: int, per: int) -> list[tuple[str, list[float] | None, list[float] | None]]:
    """Fused / fused without the horizontal rule / unfused vs NumPy for each (label, fn, args), interleaved."""
    rows: list[tuple[str, list[float] | None, list[float] | None]] = []
    for label, fn, args in programs:
        variants = {}
        for vname, kw in (("fused", {}), ("fused, horizontal off", {"fuse": {"horizontal": False}}),
                          ("unfused (fuse=False)", {"fuse": False})):
            c = compile_or_report(fn, args, f"{label} {vname}", **kw)
            if c is not None:
                variants[vname] = c
        calls = {f"{v} call": (lambda c=c, a=args: c(*a)) for v, c in variants.items()}
        kern = {f"{v} kernels": kernel_runner(c, args) for v, c in variants.items()}
        samples = interleaved({**calls, **kern, "numpy": lambda fn=fn, a=args: fn(*a)}, rounds, per)
        np_med = stats(samples["numpy"])[0]
        print(f"  {label}: time in ms, median [p25, p75] of {rounds * per} interleaved rounds (explorer.measure)")
        print(f"    {'numpy':34s} {fmt(samples['numpy'])}")
        for v, c in variants.items():
            for kind in ("call", "kernels"):
                s = samples[f"{v} {kind}"]
                print(f"    {'explorer ' + v + ' ' + kind:34s} {fmt(s)}   numpy/explorer {np_med / stats(s)[0]:5.2f}x"
                      + (f"   {len(c.kernels)} kernels" if kind == "call" else "") + unstable_note(s))
        if "fused" in variants:
            # right after a NumPy call OpenBLAS's workers spin for a while (~ms) on the cores, and the
            # CPU backend's call-time load signal then gives the next explorer call one thread
            # (thread_stats 'fewer_threads_busy'): the interleaved rows above measure that interference
            # too (torch runs in a child process for the same reason). This row: the same call, timed
            # in rounds with no NumPy call in between, against the interleaved NumPy median above.
            c = variants["fused"]
            exe = c.built_executable
            busy0 = exe.thread_stats["fewer_threads_busy"] if exe is not None else 0
            apart = interleaved({"fused call": lambda c=c, a=args: c(*a)}, rounds, per)["fused call"]
            busy = (exe.thread_stats["fewer_threads_busy"] - busy0) if exe is not None else 0
            print(f"    {'explorer fused call, no NumPy between':34s} {fmt(apart)}   numpy/explorer "
                  f"{np_med / stats(apart)[0]:5.2f}x   ({busy} kernel calls got fewer threads: cores busy)"
                  + unstable_note(apart))
        rows.append((label, samples.get("fused call"), samples.get("fused kernels")))
        if PER_KERNEL and "fused" in variants:
            per_kernel(variants["fused"], args, rounds * per)
        hb = variants.get("fused") and variants["fused"].stage("fused").ir.horizontal
        for b in hb or []:
            print(f"    {b.reason}")
    return rows


PER_KERNEL = False   # --per-kernel (set in main)


def per_kernel(c: "explorer.Compiled", args, repeat: int) -> None:
    """Where the fused program's time goes: Compiled.benchmark's median per kernel (wall clock, each
    kernel with the team its thread policy gives it), and the policy's thread limit."""
    t = c.benchmark(*args, repeat=repeat)
    print(f"    per kernel (Compiled.benchmark, median of {t.repeat}, wall ms; total {t.median_ms:.3f}):")
    for k, d in zip(c.kernels, c.thread_policy):
        print(f"      {k.name[:60]:60s} {t.per_kernel_ms.get(k.name, float('nan')):8.3f}   up to {d.threads} thread"
              + ("s" if d.threads != 1 else ""))


def bench_size(seq: int, width: int, n_head: int, rounds: int, per: int, torch_python: str, tmp: Path) -> None:
    global N_HEAD
    N_HEAD = n_head
    rng = np.random.default_rng(0)
    x = rng.standard_normal((seq, width)).astype(np.float32)
    p1, p2 = params(width, rng), params(width, rng)
    print(f"\n== seq {seq}, width {width}, {n_head} heads (float32) ==")
    fwd_today, fwd_written = two_blocks(block_today), two_blocks(block_as_written)
    fwd_written32 = two_blocks(block_as_written_f32)
    block_args, fwd_args = [x, *p1], [x, *p1, *p2]

    print("as written (np.split, np.hstack, x.var):")
    for name, probe in CONSTRUCTS:
        try:
            explorer.compile(probe, x, target="reference", verbose=False)
            print(f"  {name}: supported")
        except ExplorerError as e:
            print(f"  {name}: missing: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    written = [(lab, fn, args) for lab, fn, args in (("block", block_as_written, block_args),
                                                      ("2 blocks", fwd_written, fwd_args))
               if compile_or_report(fn, args, lab) is not None]
    if written:
        out_dt = np.result_type(fwd_written(*fwd_args))
        print(f"  (as written, gelu's np.sqrt(2 / np.pi) is an np.float64 scalar: under NumPy 2 gelu's output, the "
              f"second matmul, the residual and the whole second block are float64 (the forward returns {out_dt}), "
              f"in NumPy and here alike: a fair float64 comparison, not comparable with torch's float32)")
        measure(written, rounds, per)
    print("as written, float32 (the same code, gelu's constant a Python float: math.sqrt(2 / math.pi)):")
    rows = measure([(lab, fn, args) for lab, fn, args in (("block", block_as_written_f32, block_args),
                                                           ("2 blocks", fwd_written32, fwd_args))
                    if compile_or_report(fn, args, lab) is not None], rounds, per)
    print("slices (np.split and hstack replaced by slices and a per-head projection sum, the variance written out):")
    rows_slices = measure([("block", block_today, block_args), ("2 blocks", fwd_today, fwd_args)], rounds, per)

    if torch_python:
        res = run_torch(torch_python, fwd_args, n_head, block_today(*block_args), fwd_today(*fwd_args),
                        max(3, rounds // 2), per, tmp)
        if isinstance(res, str):
            print(f"  torch: {res}")
        else:
            for label, r in res.items():
                for k, s in r["samples"].items():
                    print(f"  torch {r['version']} {label} {k:14s} {fmt(s)}{unstable_note(s)}")
                    for variant, rs in (("as written f32", rows), ("slices", rows_slices)):
                        call, kern = next(((c, k_) for lab, c, k_ in rs if lab == label), (None, None))
                        if call:
                            print(f"      time explorer fused ({variant}) / {k}: call {stats(call)[0] / stats(s)[0]:5.2f}x, "
                                  f"kernels {stats(kern)[0] / stats(s)[0]:5.2f}x")
                print(f"  torch {label}: compile {r['compile_s']:.1f} s, max abs error vs NumPy {r['err']:.2e}")


BLOCK = 20


# the issue's bound for a small matmul: M*N*K below ~1 M multiply-adds
SMALL_MACS = 1_000_000


def in_blocks(fn: Callable[[], object], n: int = BLOCK) -> "measure_lib.Sampler":
    """A variant for measure.interleaved that runs `fn` n + 1 times in a row and returns the mean ms of the
    last n: each variant is timed in its own steady state. The untimed first call absorbs the hand-over
    from the variant before it (OpenBLAS's workers still spinning after NumPy's call hold the cores our
    team needs, and the other way round)."""
    def sample() -> float:
        fn()
        t0 = CLOCK()
        for _ in range(n):
            fn()
        return (CLOCK() - t0) * 1e3 / n
    return measure_lib.Sampler(sample)


def fmt_us(t: Timing) -> str:
    return f"{t.median_ms * 1e3:8.2f} [{t.q1_ms * 1e3:.2f}, {t.q3_ms * 1e3:.2f}]" + (" UNSTABLE" if t.unstable else "")


def small_matmuls(rounds: int, per: int) -> None:
    print("\n== small matmuls: time vs NumPy (OpenBLAS), float32, µs: median [p25, p75] ==")
    print(f"  'alternating': one call of each variant per round (they hand the cores to each other every call); "
          f"'in blocks': {BLOCK} calls of each variant per round after an untimed one (each in its steady state)")
    rng = np.random.default_rng(1)
    small_ratios: list[float] = []
    for M, K, N in ((16, 64, 192), (64, 64, 64), (1, 768, 2304), (16, 16, 16), (16, 64, 256), (16, 256, 64)):
        a = rng.standard_normal((M, K)).astype(np.float32)
        b = rng.standard_normal((K, N)).astype(np.float32)
        c = explorer.compile(lambda a, b: a @ b, a, b, target="cpu", verbose=False)
        assert np.allclose(c(a, b), a @ b, rtol=1e-4, atol=1e-3)
        fns = {"kernel": kernel_runner(c, (a, b)), "call": lambda: c(a, b), "numpy": lambda: a @ b}
        macs = M * N * K
        small = macs < SMALL_MACS
        serial = all(d.threads <= 1 for d in c.thread_policy)
        print(f"  {M}x{K} @ {K}x{N} ({macs / 1e6:.2f} M MACs"
              + ("; a small matmul: target >= 0.8x NumPy)" if small else
                 f"; above the small-matmul range of {SMALL_MACS / 1e6:g} M MACs)") + ":")
        ways = [("alternating", interleaved(fns, rounds, per * 5)),
                ("in blocks", measure_lib.interleaved({k: in_blocks(f) for k, f in fns.items()},
                                                      repeat=rounds * per, warmup=1, clock=CLOCK))]
        # A parallel row (the GEMV) runs serially in both ways: OpenBLAS's workers spin ~0.1 s after each
        # NumPy call, and while they do the thread policy leaves them the cores (a team of ours would then
        # spin against NumPy's next call: 55 -> 290 µs per NumPy GEMV, measured). See docs/CPU_THREADS.md.
        for how, s in ways:
            npm = s["numpy"].median_ms
            ratios = (npm / s["kernel"].median_ms, npm / s["call"].median_ms)
            if small:
                small_ratios.append(min(ratios))
            print(f"    {how:11s}  numpy {fmt_us(s['numpy'])}  kernel {fmt_us(s['kernel'])} "
                  f"({ratios[0]:.2f}x)  call {fmt_us(s['call'])} ({ratios[1]:.2f}x)"
                  + "".join(f"  {k}:{unstable_note(s[k])}" for k in ("numpy", "kernel", "call") if s[k].unstable))
        cpu, process_cpu = thread_cpu_us(fns, rounds)
        if serial and process_cpu["numpy"] < 1.3 * cpu["numpy"]:   # both on one thread: CPU time compares them
            print(f"      CPU time of the calling thread, µs (median of {rounds} rounds; a busy neighbour does not "
                  f"count): numpy {cpu['numpy']:.2f}  kernel {cpu['kernel']:.2f} ({cpu['numpy'] / cpu['kernel']:.2f}x)"
                  f"  call {cpu['call']:.2f} ({cpu['numpy'] / cpu['call']:.2f}x)")
        else:
            print("      (no CPU-time row: " + ("NumPy's BLAS ran on several threads" if serial else
                                                "explorer's kernel may use several threads") + "; wall time above)")
    print(f"  small matmuls (< {SMALL_MACS / 1e6:g} M MACs), kernel and call, every way above: lowest "
          f"{min(small_ratios):.2f}x NumPy (target >= 0.8x): {'ok' if min(small_ratios) >= 0.8 else 'SHORT'}")


def thread_cpu_us(fns: dict[str, Callable[[], object]], rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median CPU time per call in µs over `rounds` interleaved rounds of ~20 ms each: of the calling
    thread (time.thread_time) and of the whole process (time.process_time; more than the thread's when
    other threads, e.g. NumPy's BLAS workers, ran too). For single-threaded rows on a shared machine,
    time a neighbour holds the core does not count (wall time above does)."""
    n = {k: max(20, int(0.02 / max(1e-7, _once(f)))) for k, f in fns.items()}
    samples: dict[str, list[float]] = {k: [] for k in fns}
    process: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0, p0 = time.thread_time(), time.process_time()
            for _ in range(n[k]):
                f()
            samples[k].append((time.thread_time() - t0) / n[k] * 1e6)
            process[k].append((time.process_time() - p0) / n[k] * 1e6)
    return ({k: statistics.median(v) for k, v in samples.items()},
            {k: statistics.median(v) for k, v in process.items()})


def _once(f: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    for _ in range(10):
        f()
    return (time.perf_counter() - t0) / 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small size only, fewer repeats")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for OpenMP, OpenBLAS and torch (default: their own defaults); 1 gives stable "
                         "same-thread-count ratios on a busy machine")
    ap.add_argument("--large-only", action="store_true", help="only the seq 256 / width 512 size")
    ap.add_argument("--small-matmuls-only", action="store_true", help="only the small-matmul rows")
    ap.add_argument("--per-kernel", action="store_true",
                    help="also print each fused program's time per kernel (Compiled.benchmark)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time every row with the process's CPU time (time.process_time) instead of the wall clock: "
                         "with --threads 1, time a busy neighbour holds the core does not count; with more threads "
                         "it is the sum over threads, not a duration")
    ap.add_argument("--torch-python", default=sys.executable,
                    help="interpreter for the torch child process (default: this one); '' skips torch")
    a = ap.parse_args()
    rounds, per = (5, 4) if a.quick else (10, 6)
    global CLOCK, PER_KERNEL
    PER_KERNEL = a.per_kernel
    if a.cpu_time:
        CLOCK = time.process_time
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores; "
          f"threads: {a.threads or 'library defaults'}; clock: "
          f"{'process CPU time (time.process_time)' if a.cpu_time else 'wall (time.perf_counter)'}")
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    if not a.large_only and not a.small_matmuls_only:
        bench_size(16, 64, 4, rounds, per, a.torch_python, tmp)
    if not a.quick and not a.small_matmuls_only:
        bench_size(256, 512, 8, max(3, rounds // 2), 2, a.torch_python, tmp)
    if not a.large_only:
        small_matmuls(rounds, per)
    load = os.getloadavg()
    print(f"\nload average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
