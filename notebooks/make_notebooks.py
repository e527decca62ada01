"""Write the tutorial notebooks from the cell lists below (outputs stripped, stable cell ids).

    python notebooks/make_notebooks.py            # rewrite notebooks/*.ipynb
    python notebooks/make_notebooks.py --out DIR  # write them elsewhere (the tests diff the two)

Editing a tutorial means editing this file and re-running it, so every change is reviewable as
Python and the committed .ipynb files never carry outputs. Prose stays short; every number a
cell talks about is computed in that notebook (measured here, or labelled as the cost model).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str) -> tuple[str, str]:
    return ("md", text.strip("\n"))


def code(text: str) -> tuple[str, str]:
    return ("code", text.strip("\n"))


# Shared first code cell: imports, the target, the problem-size switch and how times are measured.
SETUP = code('''
import os, math, time
import numpy as np
import explorer
from explorer import costmodel, measure
from explorer.pipeline import resolve_target

TARGET = resolve_target("auto")   # cuda if a GPU works, else cpu (C + OpenMP) if a C compiler works, else sim
# KE_FAST=1 (set by the test suite) or the slow simulator → small problems; the numbers are still measured.
SMALL = os.environ.get("KE_FAST") == "1" or TARGET == "sim"
DEVICE = costmodel.device(TARGET)  # the roofline the cost model uses for this target
print("target:", TARGET, "| small sizes:", SMALL)
print("cost model device:", DEVICE.label())
print("times: explorer.measure — variants interleaved, median with its IQR (25th–75th percentile), min and n;",
      f"'{measure.UNSTABLE_TEXT}' marks a spread too high to trust")
''')

WIDGET_NOTE = md('''
## The same compile, interactively
`widgets.Explorer` shows every stage, the fusion groups, the generated source and the knobs for this
function. (In a headless run it just builds the widget tree.)
''')

# A sentence comparing two measured ratios by their ranges, shared by the notebooks' conclusion cells.
COMPARE_RANGES = code('''
def compare_ranges(a, b):
    """'larger' / 'smaller' when the ranges of two measure.Ratio do not overlap, else 'indistinguishable'."""
    if a.low > b.high:
        return "larger"
    if a.high < b.low:
        return "smaller"
    return "indistinguishable (the ranges overlap)"

def flag_line(what, ratios):
    """A line naming the flagged (unstable) measurements, or ''."""
    bad = [str(k) for k, r_ in ratios if r_.unstable]
    return f"{measure.UNSTABLE_TEXT}: " + " ".join(filter(None, [what, ", ".join(bad)])) if bad else ""
''')

# ============================================================================ 01
NB01 = [
    md('''
# 1. Fusing matmul + bias + relu

The canonical compiler win: `relu(x @ w + b)` as separate kernels writes the matmul result to memory and
reads it back to add `b`, then writes and re-reads that sum to apply `relu`. Fused, bias and relu are
applied while the matmul result is still in registers. This notebook measures both versions: kernels, bytes moved, time,
and where they sit on the roofline — and why the win varies with the shape.
'''),
    SETUP,
    COMPARE_RANGES,
    code('''
def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)

M, K, N = (128, 32, 128) if SMALL else (2048, 64, 1024)
rng = np.random.default_rng(0)
x = rng.standard_normal((M, K), dtype=np.float32)
w = rng.standard_normal((K, N), dtype=np.float32)
b = rng.standard_normal(N, dtype=np.float32)

fused = explorer.compile(mlp, x, w, b, target=TARGET)
unfused = explorer.compile(mlp, x, w, b, target=TARGET, fuse=False)
for name, c in (("fused", fused), ("unfused", unfused)):
    print(f"{name:8s} {len(c.kernels)} kernel(s):", ", ".join(k.name for k in c.kernels),
          f"| max error vs NumPy {c.max_error():.2g}")
'''),
    md('''
## Why the ops ended up together
Every fusion decision is recorded with the rule that made it and a one-line reason.
'''),
    code('''
print(fused.stage("fused").text())
print()
print(fused.explain_fusion())
'''),
    md('''
## Bytes moved
Per kernel: flops, bytes read + written to global memory, arithmetic intensity (flop/byte) and the
roofline bound on this device. These are **cost-model** numbers (each kernel reads its inputs once and
writes its outputs once).
'''),
    code('''
def show_costs(c, label):
    costs = costmodel.kernel_costs(c, DEVICE)
    print(f"{label}:")
    for k in costs:
        print(f"  {k.name:32s} {k.flops:>12,d} flop {k.bytes:>12,d} B  I={k.intensity:6.2f} flop/B  {k.bound}-bound")
    t = costmodel.total(costs)
    print(f"  {'total':32s} {t['flops']:>12,d} flop {t['bytes']:>12,d} B  ({t['source']})")
    return t

tf = show_costs(fused, "fused")
tu = show_costs(unfused, "unfused")
saved = tu["bytes"] - tf["bytes"]
inter = M * N * 4   # one M x N float32 intermediate
assert saved == 4 * inter   # x@w and x@w+b: each written once and read once more when unfused
print(f"\\nfusion removes {saved:,d} bytes of traffic ({tu['bytes'] / tf['bytes']:.2f}x fewer): "
      f"{saved // inter} passes over one {M}x{N} intermediate of {inter:,d} B "
      f"(x@w and x@w+b, each written once and read once)")
'''),
    md('''
## Time
`explorer.measure` runs fused and unfused interleaved (so a busy neighbour slows both alike) until
their medians are stable, and gives each a median, an interquartile range and a min. The speedup
carries a range: unfused's quartiles over fused's.
'''),
    code('''
ts = measure.interleaved({"fused": fused.sampler(), "unfused": unfused.sampler()})
for name, t in ts.items():
    print(f"{name:8s} {t}")
sp = measure.speedup(ts["unfused"], ts["fused"])
ratio = tu["bytes"] / tf["bytes"]
print(f"\\nmeasured speedup from fusion: {sp}")
if sp.high < ratio:
    verdict = (f"less than the {ratio:.2f}x fewer bytes (the whole range is below it): bytes are not the only "
               f"cost, compute and fixed per-call overheads take time too")
elif sp.low > ratio:
    verdict = (f"more than the {ratio:.2f}x fewer bytes (the whole range is above it): the bytes model ignores "
               f"caches and the fixed cost of each kernel, which unfused pays once per op")
else:
    verdict = f"consistent with the {ratio:.2f}x fewer bytes (the range includes it)"
print("the time saved is", verdict + (f" (flagged: {measure.UNSTABLE_TEXT})" if sp.unstable else ""))
print("fused is " + ("faster than" if sp.low > 1 else "slower than" if sp.high < 1 else "not clearly faster than")
      + " unfused on this machine at this size" + (" (simulation wall time, not a GPU's)" if TARGET == "sim" else ""))
'''),
    md('''
## Roofline
`explorer.compare` runs both variants and NumPy interleaved and plots each kernel on this device's
roofline: memory-bound kernels sit on the sloped part, where fewer bytes means less time. The table
shows each median with its IQR, min and n; a `!` marks an unstable measurement.
'''),
    code('''
r = explorer.compare(mlp, x, w, b, target=TARGET)
print(r.table())
'''),
    code('''
r.plot_roofline()
'''),
    md('''
## Why the win varies
Fusion saves the round trips of the `M x N` intermediate. How much that matters depends on how much
*other* work the kernel does. The cost model predicts: with a small inner dimension `K` the matmul is
cheap, the intermediate's traffic dominates and fusion is near its best case; with a large `K` the
matmul gets compute-bound and the saved bytes matter less. The cell measures whether this machine agrees.
'''),
    code('''
Ks = [4, 16, 64] if SMALL else [4, 16, 64, 256, 1024]
rows = []
for k_ in Ks:
    xk = rng.standard_normal((M, k_), dtype=np.float32)
    wk = rng.standard_normal((k_, N), dtype=np.float32)
    cf = explorer.compile(mlp, xk, wk, b, target=TARGET, verbose=False)
    cu = explorer.compile(mlp, xk, wk, b, target=TARGET, fuse=False, verbose=False)
    bf = costmodel.total(costmodel.kernel_costs(cf, DEVICE))
    bu = costmodel.total(costmodel.kernel_costs(cu, DEVICE))
    mm = costmodel.kernel_costs(cu, DEVICE)[0]       # the unfused matmul alone
    tk = measure.interleaved({"fused": cf.sampler(), "unfused": cu.sampler()}, budget_s=0.5)
    rows.append((k_, bu["bytes"] / bf["bytes"], mm.intensity, mm.bound, measure.speedup(tk["unfused"], tk["fused"])))
print(f"{'K':>6} {'bytes unfused/fused':>20} {'matmul flop/B':>14} {'matmul bound':>13}  measured speedup (range)")
for k_, ratio, inten, bnd, sp in rows:
    print(f"{k_:>6} {ratio:>20.2f} {inten:>14.1f} {bnd:>13}  {sp.range_text()}{' !' if sp.unstable else ''}")
best = max(rows, key=lambda r_: r_[4].value)
print(f"\\nlargest measured speedup {best[4]} at K={best[0]}. The bytes ratio falls from "
      f"{rows[0][1]:.2f}x to {rows[-1][1]:.2f}x as K grows.")
how = compare_ranges(rows[0][4], rows[-1][4])
if rows[0][4].unstable or rows[-1][4].unstable:
    print(f"(K={rows[0][0]} or K={rows[-1][0]} is flagged — {measure.UNSTABLE_TEXT} — "
          f"so this comparison is unreliable)")
print(f"measured: the speedup at K={rows[0][0]} is {how} than at K={rows[-1][0]}: "
      + {"larger": "as the model predicts",
         "smaller": "unlike what the model predicts (fixed overheads or caches dominate here)"}.get(
          how, "this run cannot confirm the model's prediction"))
print(flag_line("K =", [(r_[0], r_[4]) for r_ in rows]))
'''),
    code('''
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(5, 3))
ks_, sps = [r_[0] for r_ in rows], [r_[4] for r_ in rows]
ax.errorbar(ks_, [s_.value for s_ in sps], yerr=[[s_.value - s_.low for s_ in sps], [s_.high - s_.value for s_ in sps]],
            fmt="o-", capsize=3, label="measured speedup (bars: range from the IQRs)")
ax.plot(ks_, [r_[1] for r_ in rows], "s--", mfc="none", label="bytes ratio (model)")
ax.set_xscale("log", base=2); ax.set_xlabel("inner dimension K"); ax.set_ylabel("unfused / fused")
ax.axhline(1, color="grey", lw=0.5); ax.legend(fontsize=8); ax.set_title(f"fusion win vs K ({TARGET})");
'''),
    WIDGET_NOTE,
    code('''
from widgets import Explorer
Explorer(mlp, x, w, b, target=TARGET)
'''),
]

# ============================================================================ 02
NB02 = [
    md('''
# 2. Elementwise chains and the roofline

A simple elementwise op, say `x * 1.01 + 0.5`, does two flops per element but moves every element in
and out of memory: its arithmetic intensity (flop/byte) is tiny, far below a device's ridge point, so
it is memory-bound. A transcendental such as `tanh` is dearer: the cost model counts it as
`TRANSCENDENTAL_FLOPS` flops (about what a vectorised polynomial implementation executes). Chaining `n`
ops unfused moves the array `2n` times; fused, twice — but the fused kernel still does all the flops.
This notebook measures that, classifies kernels as memory- or compute-bound on this device, compares
the model with the measurement, and sweeps the problem size.
'''),
    SETUP,
    COMPARE_RANGES,
    code('''
from explorer.ops import TRANSCENDENTAL_FLOPS as TF

def chain(n):
    """x → n elementwise steps (a mul-add and a tanh, alternating)."""
    def f(x):
        for i in range(n):
            x = x * 1.01 + 0.5 if i % 2 == 0 else np.tanh(x)
        return x
    f.__name__ = f"chain{n}"
    return f

SIZE = 1 << 14 if SMALL else 1 << 22
x = np.random.default_rng(0).standard_normal(SIZE, dtype=np.float32)
print(f"{SIZE:,d} float32 elements = {x.nbytes:,d} bytes; ridge point of {DEVICE.name}: "
      f"{DEVICE.ridge:.1f} flop/byte; a tanh counts {TF} flops in the model")
'''),
    md('''
## Bytes stay, flops grow
For each chain length: the fused kernel's bytes, its intensity and roofline bound (model), the model's
time, and the measured fused and unfused medians with their IQRs.
'''),
    code('''
print(f"{'steps':>5} {'kernels f/u':>11} {'bytes fused':>12} {'bytes unfused':>14} {'fused flop/B':>12} "
      f"{'bound':>8} {'model ms':>9} {'fused ms (IQR)':>24} {'unfused ms (IQR)':>24}")
results = []
for n in [1, 2, 4, 8, 16]:
    f = chain(n)
    cf = explorer.compile(f, x, target=TARGET, verbose=False)
    cu = explorer.compile(f, x, target=TARGET, fuse=False, verbose=False)
    kf, ku = costmodel.kernel_costs(cf, DEVICE), costmodel.kernel_costs(cu, DEVICE)
    tf_, tu_ = costmodel.total(kf), costmodel.total(ku)
    t = measure.interleaved({"fused": cf.sampler(), "unfused": cu.sampler()}, budget_s=0.5)
    results.append(dict(n=n, bytes_f=tf_["bytes"], bytes_u=tu_["bytes"], inten=kf[0].intensity, bound=kf[0].bound,
                        model_f=tf_["predicted_ms"], model_u=tu_["predicted_ms"], fused=t["fused"],
                        unfused=t["unfused"], kernels_u=len(cu.kernels)))
    cell = lambda t_: f"{t_.median_ms:.3g} ({t_.q1_ms:.3g}–{t_.q3_ms:.3g}){' !' if t_.unstable else ''}"
    print(f"{n:>5} {len(cf.kernels):>5}/{len(cu.kernels):<5} {tf_['bytes']:>12,d} {tu_['bytes']:>14,d} "
          f"{kf[0].intensity:>12.2f} {kf[0].bound:>8} {tf_['predicted_ms']:>9.3g} {cell(t['fused']):>24} "
          f"{cell(t['unfused']):>24}")
'''),
    md('''
## What the model says, what the machine says
The cell below prints the conclusions from the table: how the fused kernel's time grows at equal bytes,
where the model puts the chain relative to the ridge, and how much one `tanh` really costs here compared
with the model's count.
'''),
    code('''
first, last = results[0], results[-1]
assert first["bytes_f"] == last["bytes_f"]          # fused: one read and one write, whatever the length
growth = measure.ratio(last["fused"], first["fused"])
model_growth = last["model_f"] / first["model_f"]
n_tanh, n_madd = (lambda n: n // 2), (lambda n: (n + 1) // 2)
print(f"fused, {first['n']} → {last['n']} steps at equal bytes ({last['bytes_f']:,d} B): measured time "
      f"x{growth.value:.3g} (range {growth.low:.3g}–{growth.high:.3g}), model time x{model_growth:.3g}"
      + (f" — {measure.UNSTABLE_TEXT}" if growth.unstable else ""))
print(f"model: {first['n']} step is {first['bound']}-bound at {first['inten']:.2f} flop/B; {last['n']} steps "
      f"({n_tanh(last['n'])} tanh at {TF} flops each) are {last['bound']}-bound at {last['inten']:.1f} flop/B "
      f"(ridge {DEVICE.ridge:.1f})")
extra_ms = last["fused"].median_ms - first["fused"].median_ms
dt, dm = n_tanh(last["n"]) - n_tanh(first["n"]), n_madd(last["n"]) - n_madd(first["n"])
if TARGET == "sim":
    print("on the simulator the times are simulation wall time: no per-tanh cost to infer")
elif first["fused"].unstable or last["fused"].unstable:
    print(f"the fused times are flagged ({measure.UNSTABLE_TEXT}): no per-tanh cost inferred from them")
elif extra_ms > 0:
    implied = (extra_ms * 1e-3 * DEVICE.peak_fp32 / SIZE - 2 * dm) / dt
    print(f"measured, each extra tanh takes roughly the time of {implied:.0f} flops at this device's peak; the model "
          f"counts {TF}: " + ("the model underestimates it (a real tanh also has range checks and a division, and "
                              "a loop rarely runs at the roofline's peak)" if implied > 2 * TF else
                              "the model overestimates it" if implied < TF / 2 else "the model is about right"))
sp_first = measure.speedup(first["unfused"], first["fused"])
sp_last = measure.speedup(last["unfused"], last["fused"])
m_first, m_last = first["model_u"] / first["model_f"], last["model_u"] / last["model_f"]
print(f"fusion speedup, measured: {sp_first.range_text()} at {first['n']} step, {sp_last.range_text()} at "
      f"{last['n']} steps; model: {m_first:.3g}x and {m_last:.3g}x")
trend = compare_ranges(sp_last, sp_first)
model_trend = "larger" if m_last > m_first else "smaller"
if sp_first.unstable or sp_last.unstable:
    print(f"(one of these speedups is flagged — {measure.UNSTABLE_TEXT} — so the comparison below is unreliable)")
if trend == model_trend:
    print(f"measured, the speedup at {last['n']} steps is {trend}, as the model says")
else:
    print(f"the model expects the speedup at {last['n']} steps to be {model_trend}; measured it is {trend}. The "
          f"roofline prices every byte at main-memory bandwidth and every flop at peak: arrays of {x.nbytes:,d} B "
          f"may sit in the caches, where the unfused round trips are cheaper, and a long fused loop may run "
          f"below peak")
print(flag_line("steps =", [(r_["n"], measure.speedup(r_["unfused"], r_["fused"])) for r_ in results]))
'''),
    md('''
## Memory-bound vs compute-bound
A matmul reuses each loaded element `K` times, so its intensity grows with size; an elementwise op's
never does. The cost model places both on this device's roofline.
'''),
    code('''
def matmul(a, b):
    return a @ b

n_mm = 64 if SMALL else 512
a = np.ones((n_mm, n_mm), np.float32)
cm = explorer.compile(matmul, a, a, target=TARGET, verbose=False)
km = costmodel.kernel_costs(cm, DEVICE)[0]
ke = costmodel.kernel_costs(explorer.compile(chain(1), x, target=TARGET, verbose=False), DEVICE)[0]
for label, k in ((f"matmul {n_mm}^3", km), ("x*1.01+0.5", ke)):
    print(f"{label:14s} intensity {k.intensity:8.2f} flop/B → {k.bound}-bound; "
          f"roof {k.attainable_flops / 1e9:10,.1f} GFLOP/s (model)")
'''),
    code('''
import matplotlib.pyplot as plt
I = np.logspace(-2, 3, 200)
fig, ax = plt.subplots(figsize=(5.5, 3.5))
ax.loglog(I, [costmodel.attainable(i, DEVICE) / 1e9 for i in I], "k-", lw=1, label=f"roofline ({DEVICE.name})")
points = ((f"matmul {n_mm}", km, "o"), ("elementwise", ke, "s"), (f"chain of {last['n']} (fused)", None, "^"))
for label, k, m in points:
    xi = k.intensity if k else last["inten"]
    ax.loglog([xi], [costmodel.attainable(xi, DEVICE) / 1e9], m, mfc="none", label=f"{label} (model)")
ax.axvline(DEVICE.ridge, color="grey", ls=":", lw=1)
ax.set_xlabel("arithmetic intensity (flop/byte)"); ax.set_ylabel("GFLOP/s"); ax.legend(fontsize=8);
'''),
    md('''
## Sweep over sizes
Two effects compete. Each kernel has a fixed cost (a call, a thread team starting), which the unfused
version pays once per op: it weighs most at small sizes. The bytes fusion saves cost most once the
arrays no longer fit in the caches: large sizes. `explorer.sweep` measures fused vs unfused across
sizes (interleaved at each size); the cell after the table says where the win was largest here.
The model's speedup is the roofline's prediction: it knows neither caches nor fixed costs.
'''),
    code('''
f4 = chain(4)
sizes = [1 << 10, 1 << 12, 1 << 14] if SMALL else [1 << 12, 1 << 15, 1 << 18, 1 << 21, 1 << 23]
sw = explorer.sweep(f4, sizes=sizes, target=TARGET)
print(sw.table())
'''),
    code('''
rows_ = sw.rows
rat = {r_["size"]: measure.Ratio(r_["speedup"], r_["speedup_low"], r_["speedup_high"], r_["unstable"]) for r_ in rows_}
best = max(rows_, key=lambda r_: r_["speedup"])
where = ("the smallest size" if best is rows_[0] else "the largest size" if best is rows_[-1] else "a middle size")
clear = all(compare_ranges(rat[best["size"]], rat[r_["size"]]) == "larger" for r_ in rows_ if r_ is not best)
print(f"{'measured' if sw.measured else 'model'} speedup: largest {rat[best['size']]} at size "
      f"{best['size']:,d} ({where}); " + ("its range is above every other size's" if clear else
                                         "but its range overlaps another size's: no size clearly wins"))
if sw.measured and best is rows_[0] and clear:
    print("here the fixed per-kernel cost that unfused pays once per op outweighs the bytes saved at large sizes")
elif sw.measured and best is rows_[-1] and clear:
    print("here the bytes saved (main-memory traffic at large sizes) outweigh the fixed per-kernel costs")
model = [r_["model_speedup"] for r_ in rows_]
meas = [r_["speedup"] for r_ in rows_]
span = lambda v: f"{min(v):.3g}x" + (f"–{max(v):.3g}x" if max(v) > min(v) else "")
print(f"model speedup {span(model)} (roofline: bytes at main-memory bandwidth, flops at peak) vs measured "
      f"{span(meas)}: the measurement "
      + ("falls short of" if max(meas) < min(model) else "exceeds" if min(meas) > max(model) else "overlaps")
      + " the model's prediction" + ("" if not sw.measured else
                                    " (the model knows neither caches nor the fixed cost of each kernel)"))
print(flag_line("size", [(r_["size"], rat[r_["size"]]) for r_ in rows_]))
'''),
    code('''
sw.plot()
'''),
    WIDGET_NOTE,
    code('''
from widgets import Explorer
Explorer(chain(4), x, target=TARGET)
'''),
]

# ============================================================================ 03
NB03 = [
    md('''
# 3. Tiling a matmul: schedules as data

The `lowered` stage is a naive loop nest; the `tiled` stage is that nest after a *schedule*: loops split
into tiles, reordered, bound to GPU blocks/threads, operands staged in shared memory. The schedule is
plain data you can print and change. This notebook uses the SIMT simulator (which counts every global
and shared-memory access) to show what tiling buys, then prints the generated CUDA.
'''),
    code('''
import os
import numpy as np
import explorer
from explorer import costmodel

TARGET = "sim"   # every compile here runs on the SIMT simulator, whatever hardware this machine has
SMALL = os.environ.get("KE_FAST") == "1"
print(f"target: {TARGET} (the SIMT simulator: NumPy executes the CUDA-bound loop IR and counts every "
      f"global and shared-memory access) | small sizes: {SMALL}")
print("nothing is timed here: every number below is an exact count from the simulator")
'''),
    code('''
def matmul(a, b):
    return a @ b

n = 32 if SMALL else 128
rng = np.random.default_rng(0)
A = rng.standard_normal((n, n), dtype=np.float32)
B = rng.standard_normal((n, n), dtype=np.float32)
c = explorer.compile(matmul, A, B, target=TARGET)
print(c.stage("lowered").text())
'''),
    md('''
## The tiled snapshot and its primitives
'''),
    code('''
print(c.stage("tiled").text())
print()
for k in c.program.kernels:
    print(k.name, "schedule:")
    for step in k.schedule:
        print("   ", step)
'''),
    md('''
One loop-IR pass follows `tiled` before code generation: `vectorized`. On the GPU targets (cuda, and sim,
which runs the same loop IR) it turns a `vectorized` loop of 4 f32 lanes into float4 loads and stores; on
the CPU it keeps reductions in per-lane accumulators and turns a matmul's k loop into a register-tiled
`microkernel`. The simulator runs the `vectorized` program, and code generation prints it as it is.
This matmul's GPU schedule unrolls its register tile instead of vectorizing it, so there is nothing to
rewrite:
'''),
    code('''
print(c.stage_names)
print("vectorized == tiled:", c.stage("vectorized").text() == c.stage("tiled").text())
'''),
    md('''
## Tile size vs memory traffic (simulator counters)
With shared-memory staging each element of `A` and `B` is loaded from global memory once per tile
instead of once per use; bigger tiles → fewer global loads. The simulator counts them exactly.
'''),
    code('''
from explorer.schedule import KNOBS
for name, what in KNOBS.items():
    print(f"{name:12s} {what}")
'''),
    code('''
rows = []
configs = [dict(tile=(t, t, t)) for t in ([4, 8, 16] if SMALL else [8, 16, 32])]
configs.append(dict(configs[-1], shared=False))
for knobs in configs:
    ct = explorer.compile(matmul, A, B, target=TARGET, schedule=knobs, verbose=False)
    err = float(np.max(np.abs(ct(A, B) - A @ B)))          # running it fills the counters
    cnt = costmodel.simulator_counters(ct)[0]
    rows.append((knobs, cnt["global_load_bytes"], cnt["shared_load_bytes"], cnt["barriers"], err))
print(f"{'schedule knobs':34s} {'global load B':>14} {'shared load B':>14} {'barriers':>9} {'max err':>9}")
for r_ in rows:
    print(f"{str(r_[0]):34s} {r_[1]:>14,d} {r_[2]:>14,d} {r_[3]:>9,d} {r_[4]:>9.2g}")
small_t, big_t, no_smem = rows[0], rows[-2], rows[-1]
print(f"\\ntile {big_t[0]['tile']} loads {small_t[1] / big_t[1]:.1f}x fewer global bytes than tile {small_t[0]['tile']}; "
      f"turning shared-memory staging off at the same tile loads {no_smem[1] / big_t[1]:.1f}x more")
'''),
    code('''
import matplotlib.pyplot as plt
labels = ["tile " + "x".join(map(str, r_[0]["tile"])) + ("\\nno shared mem" if r_[0].get("shared") is False else "")
          for r_ in rows]
xs = np.arange(len(rows))
fig, ax = plt.subplots(figsize=(5.5, 3))
ax.bar(xs - 0.2, [r_[1] / 1024 for r_ in rows], 0.4, label="from global memory")
ax.bar(xs + 0.2, [r_[2] / 1024 for r_ in rows], 0.4, label="from shared memory")
ax.set_xticks(xs, labels, fontsize=8); ax.set_ylabel("KiB loaded (simulator counters)")
ax.set_ylim(0, ax.get_ylim()[1] * 1.25); ax.legend(fontsize=8, ncol=2, loc="upper center")
ax.set_title(f"matmul {A.shape[0]}x{A.shape[1]} @ {B.shape[0]}x{B.shape[1]}: loads per schedule");
'''),
    md('''
## Schedules are checked
A schedule that does not fit the hardware is rejected with the limit it broke; a misspelt knob is
rejected with the list of knobs.
'''),
    code('''
for bad in ({"tile": (128, 128, 64)}, {"tile": (256, 256, 8)}, {"tilesize": 8}):
    try:
        explorer.compile(matmul, A, B, target=TARGET, schedule=bad, verbose=False)
        print(bad, "→ accepted")
    except explorer.ExplorerError as e:
        print(bad, "→", type(e).__name__ + ":", e)
'''),
    md('''
## The generated CUDA
The final loop IR (the `vectorized` stage, which the simulator ran), printed as CUDA C, with its launch
configuration. When `nvcc` is installed the register/shared-memory report comes from compiling it to PTX.
'''),
    code('''
k0 = c.kernels[0]
print("launch:", k0.launch)
print(k0.source)
import shutil
if shutil.which("nvcc"):
    print("nvcc resources:", k0.resources)
else:
    print("(nvcc not installed here: no register report)")
'''),
    WIDGET_NOTE,
    code('''
from widgets import Explorer
Explorer(matmul, A, B, target=TARGET)
'''),
]

# ============================================================================ 04
NB04 = [
    md('''
# 4. Softmax and layernorm: reductions, fusion, and the op × dtype explosion

A row softmax is `max` (reduce), `exp(x - max)`, `sum` (reduce), divide. Unfused that is several
kernels, each streaming the whole matrix through memory; fused it is one kernel per row block. Then:
the same kernel at float32 and float16 — the hand-written-kernel explosion a compiler absorbs.
'''),
    SETUP,
    COMPARE_RANGES,
    code('''
from explorer import nn

R, C = (64, 128) if SMALL else (2048, 1024)
x = np.random.default_rng(0).standard_normal((R, C), dtype=np.float32)

def softmax(x):
    return nn.softmax(x, axis=-1)

def layernorm(x):
    return nn.layernorm(x, axis=-1)

speedups, timings = [], {}
for fn in (softmax, layernorm):
    cf = explorer.compile(fn, x, target=TARGET, verbose=False)
    cu = explorer.compile(fn, x, target=TARGET, fuse=False, verbose=False)
    bf = costmodel.total(costmodel.kernel_costs(cf, DEVICE))["bytes"]
    bu = costmodel.total(costmodel.kernel_costs(cu, DEVICE))["bytes"]
    t = measure.interleaved({"fused": cf.sampler(), "unfused": cu.sampler()})
    sp = measure.speedup(t["unfused"], t["fused"])
    speedups.append((fn.__name__, sp))
    timings[fn.__name__] = (t, len(cf.kernels), len(cu.kernels))
    print(f"{fn.__name__:10s} kernels fused/unfused {len(cf.kernels)}/{len(cu.kernels)}  bytes {bf:,d} / {bu:,d} "
          f"({bu / bf:.1f}x fewer fused)  max err {cf.max_error():.2g}")
    print(f"{'':10s} fused   {t['fused']}")
    print(f"{'':10s} unfused {t['unfused']}")
    print(f"{'':10s} speedup {sp}")
print(flag_line("", speedups))
'''),
    code('''
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(5.5, 3))
xs = np.arange(len(timings))
for i, (variant, color) in enumerate((("fused", "tab:green"), ("unfused", "tab:orange"))):
    ts_ = [timings[n][0][variant] for n in timings]
    kern = [timings[n][1 + i] for n in timings]
    bars = ax.bar(xs + (i - 0.5) * 0.4, [t_.median_ms for t_ in ts_], 0.4, color=color, label=variant,
                  yerr=[[t_.median_ms - t_.q1_ms for t_ in ts_], [t_.q3_ms - t_.median_ms for t_ in ts_]], capsize=3)
    for b_, k_, t_ in zip(bars, kern, ts_):
        ax.annotate(f"{k_} kernel{'s' if k_ != 1 else ''}" + (" !" if t_.unstable else ""),
                    (b_.get_x() + b_.get_width() / 2, b_.get_height()), ha="center", va="bottom",
                    xytext=(0, 6), textcoords="offset points", fontsize=8)
ax.set_xticks(xs, list(timings)); ax.set_ylabel("median ms (bars: IQR)"); ax.legend(fontsize=8, loc="lower right")
ax.set_ylim(0, ax.get_ylim()[1] * 1.2); ax.set_title(f"fused vs unfused on a {x.shape[0]}x{x.shape[1]} array ({TARGET})")
if any(t_.unstable for n in timings for t_ in timings[n][0].values()):
    fig.text(0.01, 0.01, f"! {measure.UNSTABLE_TEXT}", fontsize=7);
'''),
    md('''
## What the fused softmax kernel contains
The `simplified` stage has decomposed `softmax` into primitives; the fused stage groups the two
reductions with their elementwise neighbours.
'''),
    code('''
cs = explorer.compile(softmax, x, target=TARGET, verbose=False)
print(cs.stage("simplified").text())
print()
print(cs.explain_fusion())
'''),
    md('''
## The same kernel at float32 and float16
One source function, two dtypes: the compiler writes both kernels. The diff is more than a change of
type names: the cell counts which changed lines differ only in types and casts, and which change the
kernel's structure, and names the structural differences it finds.
'''),
    code('''
import difflib, re
c32 = explorer.compile(softmax, x, target=TARGET, verbose=False)
c16 = explorer.compile(softmax, x, target=TARGET, dtype=np.float16, verbose=False)
src32, src16 = "\\n".join(k.source for k in c32.kernels), "\\n".join(k.source for k in c16.kernels)
diff = [l for l in difflib.unified_diff(src32.splitlines(), src16.splitlines(), "float32", "float16", lineterm="", n=0)]
print("\\n".join(diff[:40]) + ("\\n..." if len(diff) > 40 else ""))

TYPES = r"float|double|_Float16|__half|half"
def types_out(line):
    """The line with casts removed and type names replaced: equal for a type-only change."""
    return re.sub(rf"\\b({TYPES})\\b", "T", re.sub(rf"\\((?:{TYPES})\\)", "", line)).strip()
removed = [l[1:] for l in diff if l.startswith("-") and not l.startswith("---")]
added = [l[1:] for l in diff if l.startswith("+") and not l.startswith("+++")]
pool = [types_out(l) for l in removed]
type_only = 0
for l in added:
    if types_out(l) in pool:
        pool.remove(types_out(l)); type_only += 1
structural = len(removed) + len(added) - 2 * type_only
features = {"a register-tiled micro-kernel": "micro-kernel", "a stash of exp values reused by the last loop": "stash",
            "explicit conversions to float for the arithmetic": "(float)", "half-precision intrinsics": "__h"}
only32 = [f for f, key in features.items() if key in src32 and key not in src16]
only16 = [f for f, key in features.items() if key in src16 and key not in src32]
print(f"\\n{len(removed)} lines removed and {len(added)} added: {type_only} changed only in type names or casts, "
      f"{structural} lines are structural")
if only32:
    print("only the float32 kernel has", "; ".join(only32))
if only16:
    print("only the float16 kernel has", "; ".join(only16))
print(f"max error vs NumPy: float32 {c32.max_error():.2g}, float16 {c16.max_error():.2g}")
'''),
    code('''
ops = {"softmax": softmax, "layernorm": layernorm, "gelu": lambda x: nn.gelu(x)}
dts = [np.float32, np.float16, np.float64]
count = 0
for name, fn in ops.items():
    errs = []
    for dt in dts:
        cc = explorer.compile(fn, x, target=TARGET, dtype=dt, verbose=False)
        count += len(cc.kernels)
        errs.append(f"{np.dtype(dt).name} max err {cc.max_error():.1g}")
    print(f"{name:10s}", " | ".join(errs))
print(f"{len(ops)} ops x {len(dts)} dtypes = {count} kernels generated here for one target; "
      f"by hand that is {count} kernels to write, tune and test — per chip.")
'''),
    WIDGET_NOTE,
    code('''
from widgets import Explorer
Explorer(softmax, x, target=TARGET)
'''),
]

# ============================================================================ 05
NB05 = [
    md('''
# 5. Attention: what fusion can and cannot do

`softmax(q @ k.T / sqrt(d)) @ v`. The scale fuses into the first matmul's epilogue, but the softmax needs
a whole row of scores (a reduction over the matmul's output) and the second matmul needs the whole
softmax — so a fusion compiler built on operator categories produces several kernels, with the `S x S`
score matrix written to memory in between. The first half measures that; the second turns on the
explorer's attention rule — FlashAttention's online softmax as one kernel — and measures, explains and
tunes it.
'''),
    SETUP,
    COMPARE_RANGES,
    code('''
from explorer import nn

def attention(q, k, v):
    d = q.shape[-1]
    s = (q @ k.T) / math.sqrt(d)
    return nn.softmax(s, axis=-1) @ v

S, D = (64, 16) if SMALL else (512, 64)
rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((S, D), dtype=np.float32) for _ in range(3))
# fuse={"attention": False}: operator-category fusion only (the attention rule is the last section)
c = explorer.compile(attention, q, k, v, target=TARGET, fuse={"attention": False})
assert len(c.kernels) > 1   # the claim above: more than one kernel
print(len(c.kernels), "kernels:", ", ".join(kk.name for kk in c.kernels), f"| max error {c.max_error():.2g}")
print()
print(c.explain_fusion())
'''),
    md('''
## The intermediate that does not go away
'''),
    code('''
prog = c.program
inputs_b = sum(bf.nbytes for bf in prog.inputs)
temps_b = sum(bf.nbytes for bf in prog.temps)
print("temporaries between kernels:", ", ".join(f"{bf.name}: {bf.type_str()}" for bf in prog.temps))
print(f"inputs {inputs_b:,d} B; temporaries {temps_b:,d} B ({temps_b / inputs_b:.1f}x the inputs)")
costs = costmodel.kernel_costs(c, DEVICE)
for kc in costs:
    print(f"  {kc.name:34s} {kc.bytes:>10,d} B  I={kc.intensity:6.2f}  {kc.bound}-bound (model)")
'''),
    md('''
How do the temporaries and the inputs grow with the sequence length `S`? The cell prints both and the
growth factor per doubling of `S`.
'''),
    code('''
print(f"{'S':>6} {'input B':>10} {'temp B':>12} {'temp/input':>11}")
grow = []
for s_ in ([32, 64, 128] if SMALL else [128, 256, 512, 1024]):
    qs = rng.standard_normal((s_, D), dtype=np.float32)
    cs_ = explorer.compile(attention, qs, qs, qs, target=TARGET, stop_after="lowered", verbose=False,
                           fuse={"attention": False})
    p_ = cs_.stage("lowered").ir
    ib, tb = sum(bf.nbytes for bf in p_.inputs), sum(bf.nbytes for bf in p_.temps)
    grow.append((s_, ib, tb))
    print(f"{s_:>6} {ib:>10,d} {tb:>12,d} {tb / ib:>11.1f}")
(s0, i0, t0), (s1, i1, t1) = grow[-2], grow[-1]
print(f"\\nfrom S={s0} to S={s1}: inputs x{i1 / i0:.1f}, temporaries x{t1 / t0:.1f} — the score matrix "
      + ("grows with S², the inputs with S: it dominates the traffic as sequences get longer"
         if t1 / t0 > 1.5 * i1 / i0 else "does not outgrow the inputs at these sizes"))
'''),
    code('''
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(5, 3))
ax.loglog([g_[0] for g_ in grow], [g_[1] / 1024 for g_ in grow], "o-", base=2, label="inputs q, k, v")
ax.loglog([g_[0] for g_ in grow], [g_[2] / 1024 for g_ in grow], "s-", base=2, label="temporaries between kernels")
ax.set_xticks([g_[0] for g_ in grow], [str(g_[0]) for g_ in grow])
ax.set_xlabel("sequence length S"); ax.set_ylabel("KiB (log scale)"); ax.legend(fontsize=8)
ax.set_title(f"attention (rule off), head dim {D}: what goes through memory");
'''),
    md('''
## Fused vs unfused, measured
Fused, unfused and NumPy run interleaved; each row has its median, IQR, min and n, and `!` marks an
unstable measurement. The line under the table is computed from these numbers.
'''),
    code('''
r = explorer.compare(attention, q, k, v, target=TARGET)
print(r.table())
f_, u_ = r.variant("fused"), r.variant("unfused")
sp = r.speedup_range
print(f"\\nfused {f_.median_ms:.3g} ms (IQR {f_.q1_ms:.3g}–{f_.q3_ms:.3g}) vs unfused {u_.median_ms:.3g} ms "
      f"(IQR {u_.q1_ms:.3g}–{u_.q3_ms:.3g}): fusion is "
      + ("faster" if sp.low > 1 else "slower" if sp.high < 1 else "not clearly faster or slower")
      + f" here, {sp}" if f_.measured else f"model times only on {TARGET}: speedup {sp.range_text()}")
'''),
    md('''
## Tensor cores for the two matmuls
In float16 the GPU schedule can run a matmul on tensor cores (`tensorize` with WMMA 16x16x16 fragments,
f32 accumulation). This cell compiles only down to the `tiled` stage, so it needs no GPU, and prints
which kernels got them.
'''),
    code('''
gpu_target = "cuda" if TARGET == "cuda" else "sim"
c16 = explorer.compile(attention, q, k, v, target=gpu_target, dtype=np.float16, stop_after="tiled", verbose=False,
                       fuse={"attention": False})   # the category-fused kernels (flash attention comes next)
kernels16 = c16.stage("tiled").ir.kernels
for kk in kernels16:
    tc = [str(p_) for p_ in kk.schedule if "tensorize" in str(p_)]
    print(f"{kk.name:34s}", tc[0] if tc else "no tensor cores")
print(f"{sum(any('tensorize' in str(p_) for p_ in kk.schedule) for kk in kernels16)} of {len(kernels16)} kernels "
      f"use tensor cores ({gpu_target} schedule, float16)")
'''),
    md('''
## The attention rule: one kernel, and the scores stay on chip
Removing the score matrix needs a different *algorithm*, not a different grouping: the **online softmax**
(FlashAttention) keeps a running max `m` and sum `l` per query row while streaming `k`/`v` tiles, and
rescales what it has accumulated by `exp(m_old - m_new)` whenever the max grows. The operator-category
fusion above cannot derive that — no regrouping of these ops removes the row reduction between the two
matmuls. The explorer gets it from a **pattern rule** (`explorer/passes/attention.py` recognises
`softmax(q @ kᵀ·scale [+ mask]) @ v`) plus a **loop-IR generator** that writes the online-softmax loop nest,
and every step stays visible. The rule is on by default; `fuse={"attention": False}` turned it off above.
Here the sequence is longer so the keys span several tiles.
'''),
    code('''
SF = 128 if SMALL else 1024      # long enough for several key tiles
qf, kf, vf = (rng.standard_normal((SF, D), dtype=np.float32) for _ in range(3))
flash = explorer.compile(attention, qf, kf, vf, target=TARGET, verbose=False)
category = explorer.compile(attention, qf, kf, vf, target=TARGET, verbose=False, fuse={"attention": False})
assert len(flash.kernels) == 1 and len(category.kernels) > 1
print(f"attention rule on: {len(flash.kernels)} kernel ({flash.kernels[0].name}); "
      f"off: {len(category.kernels)} kernels ({', '.join(kk.name for kk in category.kernels)}); "
      f"max error vs NumPy {flash.max_error():.2g}")
fused_text = flash.stage("fused").text()
assert "attention: scores stay on chip" in fused_text
print()
print("\\n".join(fused_text.splitlines()[:4]))   # the group and its explanation (the boundaries follow)
'''),
    md('''
The `tiled` snapshot is the online-softmax loop nest itself: the schedule steps, then, per key tile, the
staged tile, the tile's scores in local memory, the new running max, the rescale factor `alpha` and the
update of the accumulator `acc_o`. Printed from `c.stage("tiled").text()`:
'''),
    code('''
tiled_lines = flash.stage("tiled").text().splitlines()
start = next(i for i, l in enumerate(tiled_lines) if "# schedule:" in l)
end = next(i for i, l in enumerate(tiled_lines) if "acc_o" in l and "alpha" in l) + 1
print("\\n".join(tiled_lines[start:end]))
print("   ...")
print("\\n".join(l for l in tiled_lines[end:] if "/ l_run" in l))   # the final divide by the running sum
'''),
    md('''
## Bytes through global memory, on the simulator
The SIMT simulator counts every global load and store exactly. The cell runs both variants there (small
sizes: the simulator is an interpreter) and sets the counts against the size of one `S x S` score matrix.
'''),
    code('''
SB = 128 if SMALL else 256
qb, kb, vb = (rng.standard_normal((SB, D), dtype=np.float32) for _ in range(3))
moved = {}
for label, fuse in (("flash (1 kernel)", True), ("unfused (category fusion)", {"attention": False})):
    ex = explorer.compile(attention, qb, kb, vb, target="sim", verbose=False, fuse=fuse).executable()
    out_, = ex.run([qb, kb, vb])
    np.testing.assert_allclose(out_, attention(qb, kb, vb), rtol=1e-4, atol=1e-5)
    tot = ex.counters["total"]
    moved[label] = tot["global_load_bytes"] + tot["global_store_bytes"]
score_b = SB * SB * qb.itemsize
io_b = qb.nbytes * 4                    # q, k, v in, out
print(f"S={SB}, D={D}: inputs + output {io_b:,d} B, one S x S score matrix {score_b:,d} B")
for label, b in moved.items():
    print(f"  {label:28s} {b:>11,d} B global; beyond inputs + output {b - io_b:>11,d} B "
          f"= {(b - io_b) / score_b:5.2f} score matrices")
fb, ub = moved["flash (1 kernel)"], moved["unfused (category fusion)"]
print(f"\\nflash attention moves {ub / fb:.1f}x fewer bytes than the unfused kernels. Beyond its inputs and output "
      f"it moves {fb - io_b:,d} B, "
      + (f"less than one score matrix ({score_b:,d} B): the scores never reach global memory"
         if fb - io_b < score_b else f"{(fb - io_b) / score_b:.2f} score matrices (K and V re-read per query block)")
      + f"; the unfused kernels move {(ub - io_b) / score_b:.1f} score matrices beyond theirs")
'''),
    md('''
## Flash vs unfused vs NumPy, timed
`explorer.compare` compiles the function with the attention rule (fused) and with fusion off (unfused) and
times both with NumPy, interleaved; `!` marks an unstable row. The sentence is computed from the ranges.
'''),
    code('''
rf = explorer.compare(attention, qf, kf, vf, target=TARGET)
print(rf.table())
fl, un, npy = rf.variant("fused"), rf.variant("unfused"), rf.variant("numpy")
spf = rf.speedup_range
if fl.measured:
    vs_np = measure.speedup(npy.as_timing(), fl.as_timing())   # NumPy time / flash time, with its range
    print(f"\\nS={SF}, D={D} on {TARGET}: flash {fl.median_ms:.3g} ms (IQR {fl.q1_ms:.3g}–{fl.q3_ms:.3g}), "
          f"unfused {un.median_ms:.3g} ms, NumPy {npy.median_ms:.3g} ms. Flash vs unfused: "
          + ("faster" if spf.low > 1 else "slower" if spf.high < 1 else "not clearly faster or slower")
          + f", {spf}; vs NumPy: " + ("faster" if vs_np.low > 1 else "slower" if vs_np.high < 1
                                       else "not clearly faster or slower") + f", {vs_np}")
    line = flag_line("", [(v.name, v) for v in (fl, un, npy)])
    if line:
        print(line)
else:
    print(f"model times only on {TARGET}: speedup {spf.range_text()}")
'''),
    md('''
## Autotuning the attention tile
`attention_tile = (BQ, BK)` is the flash kernel's knob: query rows per block and keys per tile. The
autotuner enumerates the space, ranks it with the cost model and measures the top candidates and the
default — by the simulator's exact counters on `sim` (used with the small sizes, where timing a 1 ms kernel
says little), by interleaved time on `cpu`/`cuda`. The best schedule then goes straight into a compile.
'''),
    code('''
TUNE_TARGET = "sim" if SMALL else TARGET
qt, kt_, vt = (qb, kb, vb) if TUNE_TARGET == "sim" else (qf, kf, vf)
tiles = [(16, 32), (32, 32), (32, 64), (64, 64)] if SMALL else [(bq, bk) for bq in (16, 32, 64) for bk in (32, 64, 128)]
tune = explorer.autotune(attention, qt, kt_, vt, target=TUNE_TARGET, space={"attention_tile": tiles},
                         budget=20 if SMALL else 60, top_k=len(tiles))
print(tune.table())
fmt = (lambda x: f"{x:,.0f} B global (simulator)") if tune.metric == "global_bytes" else (lambda x: f"{x:.3g} ms")
scores = {cand.label(): tune.score(cand) for cand in tune.measured()}
worst = max(scores, key=scores.get)
b_score = tune.score(tune.best_candidate)
print(f"\\nbest: {tune.best_candidate.label()} at {fmt(b_score)}; the default {fmt(tune.score(tune.default))}; "
      f"the worst measured, {worst}, {fmt(scores[worst])} ({scores[worst] / b_score:.1f}x the best)")
flagged = [cand.label() for cand in tune.measured() if cand.unstable]
if flagged:
    print(f"{measure.UNSTABLE_TEXT}: {len(flagged)} of {len(scores)} candidates ({', '.join(flagged)})")
rho, predicted = tune.spearman(), {tune.predicted(cand) for cand in tune.measured()}
print("the cost model predicts the same for every tile here, so the ranking comes from the measurement alone"
      if len(predicted) == 1 else
      f"the cost model ranked the {len(scores)} measured tiles with Spearman rank correlation {rho:.2f} "
      "against the measurement")
best = explorer.compile(attention, qt, kt_, vt, target=TUNE_TARGET, schedule=tune.best, verbose=False)
plan = next(l.strip(" #") for l in best.stage("tiled").text().splitlines() if "attention(online softmax)" in l)
print(f"compiled with schedule={tune.best}: {len(best.kernels)} kernel, {plan}; max error {best.max_error():.2g}")
'''),
    md('''
## What this shows
A compiler that only groups operators by category keeps the `S x S` scores in memory (the first half).
The FlashAttention kernel is a different algorithm; here it comes from a pattern rule and a loop-IR
generator, so it is explained in the `fused` snapshot, visible loop by loop in `tiled`, measured in bytes
and time above, and tuned like any other schedule — rather than hidden in a hand-written custom kernel.
'''),
    WIDGET_NOTE,
    code('''
from widgets import Explorer
Explorer(attention, q, k, v, target=TARGET)
'''),
]

# ============================================================================ 06
NB06 = [
    md('''
# 6. A GPT-2 block, written the way people write NumPy

Model code in NumPy does not call fused `attention` or `layernorm` ops: it splits `qkv` with `np.split`,
loops over heads in Python, joins them with `np.hstack` and takes a layer norm's variance with `np.var`
(this is picoGPT's block). This notebook compiles that code as written and shows what the compiler makes
of it: its kernels, why each boundary between ops is or is not fused — including the *horizontal* rule
that turns the per-head Python loop back into one batched computation — and what that buys in time
against the unfused program and NumPy.
'''),
    SETUP,
    COMPARE_RANGES,
    code('''
def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

def softmax(x):
    exp_x = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return exp_x / np.sum(exp_x, axis=-1, keepdims=True)

def layer_norm(x, g, b, eps=1e-5):
    mean = np.mean(x, axis=-1, keepdims=True)
    variance = x.var(axis=-1, keepdims=True)
    return g * (x - mean) / np.sqrt(variance + eps) + b

def attention(q, k, v, mask):
    return softmax(q @ k.T / np.sqrt(q.shape[-1]) + mask) @ v

def gpt2_block(x, ln1_g, ln1_b, w_attn, b_attn, w_proj, b_proj, ln2_g, ln2_b, w_fc, b_fc, w_out, b_out):
    n_head = 4
    h = layer_norm(x, ln1_g, ln1_b)
    qkv = h @ w_attn + b_attn
    qkv_heads = list(map(lambda t: np.split(t, n_head, axis=-1), np.split(qkv, 3, axis=-1)))
    causal_mask = (1 - np.tri(x.shape[0], dtype=x.dtype)) * -1e10
    out_heads = [attention(q, k, v, causal_mask) for q, k, v in zip(*qkv_heads)]
    x = x + np.hstack(out_heads) @ w_proj + b_proj
    return x + gelu(layer_norm(x, ln2_g, ln2_b) @ w_fc + b_fc) @ w_out + b_out

SEQ, D = (16, 64) if SMALL else (128, 256)
rng = np.random.default_rng(0)
f = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)
args = [f(SEQ, D), 1 + f(D), f(D), f(D, 3 * D), f(3 * D), f(D, D), f(D), 1 + f(D), f(D),
        f(D, 4 * D), f(4 * D), f(4 * D, D), f(D)]

fused = explorer.compile(gpt2_block, *args, target=TARGET)
no_horizontal = explorer.compile(gpt2_block, *args, target=TARGET, fuse={"horizontal": False})
unfused = explorer.compile(gpt2_block, *args, target=TARGET, fuse=False)
for name, c in (("fused", fused), ("fused, horizontal rule off", no_horizontal), ("unfused", unfused)):
    print(f"{name:27s} {len(c.kernels):3d} kernels | max error vs NumPy {c.max_error():.2g}")
out, want = fused(*args), gpt2_block(*args)
print(f"\\nresult {out.dtype}{list(out.shape)}, NumPy's {want.dtype}{list(want.shape)}")
'''),
    md('''
The result is float64 in both: `np.sqrt(q.shape[-1])` is a float64 NumPy scalar, and NumPy 2 promotes
`q @ k.T / np.sqrt(d)` to float64 there. The compiler follows NumPy's rules, so the attention scores
after that division are float64 in the graph below too (`f64[...]`).

## The fused graph
Each kernel with its kind and number of ops, then the graph itself, one box per kernel, every edge labelled with the bytes it moves
through global memory.
'''),
    code('''
fg = fused.stage("fused").ir
st = fg.stats()
for hb in fg.horizontal:
    print(hb.reason)
for g in fg.groups:
    print(f"{g.id:4s} [{g.kind:11s}] {len(g.nodes):3d} ops  {g.name[:60]}")
print(f"\\n{st['kernels']} kernels hold {st['ops']} ops; {st['intermediates']} intermediates go through "
      f"global memory ({st['intermediate_bytes']:,d} B)")
'''),
    code('''
from IPython.display import SVG, display
try:
    display(SVG(fused.stage("fused").to_svg()))
except explorer.ExplorerError as e:          # no graphviz `dot`: the text form says the same
    print(f"(no drawing: {e})")
    print(fused.stage("fused").text())
'''),
    md('''
## Why each boundary is or is not fused
`explain_fusion()` lists every kernel with its source lines, then every edge between two ops with the rule
that joined them or the reason it could not. The cell after it counts the decisions by rule.
'''),
    code('''
print(fused.explain_fusion())
'''),
    code('''
from collections import Counter
from explorer.passes.fusion import RULE_DOCS
decisions = fg.decisions
tally = Counter((d.fused, d.rule) for d in decisions)
n_in = sum(d.fused for d in decisions)
print(f"{len(decisions)} boundaries between ops: {n_in} inside a kernel, {len(decisions) - n_in} between kernels\\n")
print("inside a kernel, by rule:")
for (is_fused, rule), n in sorted(tally.items(), key=lambda kv: -kv[1]):
    if is_fused:
        print(f"  {n:3d}  {rule:16s} {RULE_DOCS.get(rule, '')}")
print("between kernels, one example of each reason:")
seen = set()
for d in decisions:
    if not d.fused and d.rule not in seen:
        seen.add(d.rule)
        n = tally[(False, d.rule)]
        print(f"  {n:3d}  {d.producer.name} → {d.consumer.name}: {d.reason}")
'''),
    md('''
## The horizontal rule: the per-head loop becomes one computation
The Python loop over heads is unrolled by tracing: `n_head` copies of the same attention, each over its
own slice of `qkv`. Without the horizontal rule every copy becomes its own kernels. With it, the copies are
recognised as identical computations over equally spaced slices and rewritten as one computation batched
over a head axis, before the other rules group it.
'''),
    code('''
fg_off = no_horizontal.stage("fused").ir
for hb in fg.horizontal:
    per_copy = hb.kernels
    print(f"{hb.count} copies of the per-head attention, {hb.ops_per_member} ops each, over slices of "
          f"{', '.join(hb.sources)}: {hb.count * per_copy} kernels → {per_copy} (kernels {', '.join(hb.group_ids)})")
k_on, k_off, k_unf = len(fused.kernels), len(no_horizontal.kernels), len(unfused.kernels)
print(f"whole block: {k_unf} kernels unfused → {k_off} with every rule but horizontal → {k_on} with all rules")
print(f"intermediates through global memory: {fg_off.stats()['intermediate_bytes']:,d} B without the horizontal "
      f"rule, {st['intermediate_bytes']:,d} B with it")
'''),
    md('''
## Time: fused vs unfused vs NumPy
`explorer.compare` runs the fused program, the unfused one and NumPy interleaved until their medians are
stable; each row has its median, IQR (25th–75th percentile), min and n, and `!` marks an unstable
measurement. The sentences under the table are computed from these numbers.
'''),
    code('''
r = explorer.compare(gpt2_block, *args, target=TARGET)
print(r.table())
f_, u_, n_ = r.variant("fused"), r.variant("unfused"), r.variant("numpy")
sp = r.speedup_range
if f_.measured:
    vs_np = measure.speedup(n_.as_timing(), f_.as_timing())
    print(f"\\nfusion ({u_.kernels} → {f_.kernels} kernels) is "
          + ("faster" if sp.low > 1 else "slower" if sp.high < 1 else "not clearly faster or slower")
          + f" than the unfused program here: {sp}")
    print(f"the fused block is "
          + ("faster than" if vs_np.low > 1 else "slower than" if vs_np.high < 1 else "not clearly faster than")
          + f" NumPy here: {vs_np}")
    print(flag_line("", [(v.name, v) for v in (f_, u_, n_)]))
else:
    print(f"\\nmodel times only on {TARGET}: fusion speedup {sp.range_text()} ({u_.kernels} → {f_.kernels} kernels)")
'''),
    md('''
What did the horizontal rule alone contribute? The fused program with and without it, measured the same
way (interleaved, median with its range).
'''),
    code('''
if TARGET == "sim":
    print("on the simulator its wall time says nothing about a GPU: compare the kernel counts above instead")
else:
    th = measure.interleaved({"all rules": fused.sampler(), "horizontal off": no_horizontal.sampler()}, budget_s=1.0)
    for name, t in th.items():
        print(f"{name:15s} {t}")
    sh = measure.speedup(th["horizontal off"], th["all rules"])
    print(f"\\nbatching the heads ({k_off} → {k_on} kernels): {sh} — "
          + ("faster" if sh.low > 1 else "slower" if sh.high < 1 else "no clear difference at this size")
          + (f" ({measure.UNSTABLE_TEXT})" if sh.unstable else ""))
'''),
    code('''
import matplotlib.pyplot as plt
shown = (f_, u_, n_) if f_.measured else (f_, u_)   # a model time and a wall time never share an axis
names = [v.name for v in shown]
meds = [v.median_ms for v in shown]
lo = [v.median_ms - (v.q1_ms if v.q1_ms is not None else v.median_ms) for v in shown]
hi = [(v.q3_ms if v.q3_ms is not None else v.median_ms) - v.median_ms for v in shown]
fig, ax = plt.subplots(figsize=(5.5, 3))
bars = ax.bar(names, meds, yerr=[lo, hi], capsize=4, color=["tab:green", "tab:orange", "tab:grey"][:len(shown)])
for b_, v, h_ in zip(bars, shown, hi):
    label = (f"{v.kernels} kernels" if v.kernels else "NumPy") + (" !" if v.unstable else "")
    ax.annotate(label, (b_.get_x() + b_.get_width() / 2, b_.get_height() + h_), ha="center", va="bottom",
                xytext=(0, 3), textcoords="offset points", fontsize=8)
if any(v.unstable for v in shown):
    fig.text(0.01, 0.01, f"! {measure.UNSTABLE_TEXT}", fontsize=7)
ax.set_ylabel("median ms (bars: IQR)" if f_.measured else "model ms (roofline)")
ax.set_ylim(0, max(m + h for m, h in zip(meds, hi)) * 1.3)
ax.set_title(f"GPT-2 block, seq {SEQ}, width {D} ({TARGET if f_.measured else 'model of ' + r.device.name})");
'''),
    WIDGET_NOTE,
    code('''
from widgets import Explorer
Explorer(gpt2_block, *args, target=TARGET)
'''),
]


# ============================================================================ 07
NB07 = [
    md('''
# 7. Convolution: one node, fused, direct vs im2col

NumPy users write a convolution as padding, a sliding window and a contraction. This notebook traces that
idiom, shows that the explorer recognises it as **one `conv2d` node** (with provenance to the lines that
wrote it), compares a direct convolution with the im2col formulation by the bytes the SIMT simulator
counts, lists the schedule knobs that apply, and measures conv + bias + relu fused vs unfused.
'''),
    SETUP,
    COMPARE_RANGES,
    code('''
from numpy.lib.stride_tricks import sliding_window_view

def conv_relu(x, w, b):                       # x NHWC, w RSCK, 'same' padding
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    win = sliding_window_view(xp, (3, 3), axis=(1, 2))
    return np.maximum(np.einsum("nhwcrs,rsck->nhwk", win, w) + b, 0)

N, H, W, C, K = (1, 8, 8, 8, 16) if SMALL else (1, 56, 56, 64, 64)
rng = np.random.default_rng(0)
x = rng.standard_normal((N, H, W, C), dtype=np.float32)
w = rng.standard_normal((3, 3, C, K), dtype=np.float32) / np.float32(math.sqrt(9 * C))
b = rng.standard_normal(K, dtype=np.float32)
print("x", x.shape, "w", w.shape, "b", b.shape, "->", conv_relu(x, w, b).shape)
'''),
    md('''
## The idiom becomes one `conv2d` node
Tracing records `pad`, `window` (an index mapping, not a copy) and the einsum; because the einsum
contracts a window of a zero pad with a weight in the convolution pattern, it records one `conv2d` node
that reads the *unpadded* input. `simplify` then removes the dead pad and window. Each node keeps the
user's lines (provenance).
'''),
    code('''
c = explorer.compile(conv_relu, x, w, b, target=TARGET, verbose=False)
traced, simplified = c.stage("traced").ir, c.stage("simplified").ir
print("traced ops:    ", [n.op for n in traced.op_nodes()])
print("simplified ops:", [n.op for n in simplified.op_nodes()])
print()
print(simplified)
print()
for n in simplified.op_nodes():
    print(f"{n.op:8s} <- {n.provenance}")
conv = next(n for n in simplified.op_nodes() if n.op == "conv2d")
print()
print(len(c.kernels), "kernel(s):", ", ".join(kk.name for kk in c.kernels), f"| max error {c.max_error():.2g}")
print("conv2d attributes:", conv.attrs)
print("the pad and the window are", "gone" if not {"pad", "window"} & {n.op for n in simplified.op_nodes()}
      else "still there", "after simplify; bias and relu are",
      "fused into the conv's kernel" if len(c.kernels) == 1 else f"in {len(c.kernels)} kernels")
'''),
    md('''
## Direct convolution vs im2col, by the simulator's byte counters
The classic alternative is **im2col**: copy every 3x3xC window into a row of a matrix and run one big
matmul. Written in NumPy style with `reshape` and `@`. On the simulator (`target="sim"`) each variant's
global-memory bytes are exact counts (`bytes (sim)`); `explorer.compare` builds each function fused and
unfused. Unfused im2col is the textbook one (the column matrix is a temporary in global memory).
'''),
    code('''
def im2col_relu(x, w, b):
    n, h, wd, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = sliding_window_view(xp, (3, 3), axis=(1, 2)).reshape(n * h * wd, c * 9)   # (pixels, c*r*s)
    wm = w.transpose(2, 0, 1, 3).reshape(c * 9, w.shape[-1])                        # (c*r*s, k)
    return np.maximum((cols @ wm).reshape(n, h, wd, w.shape[-1]) + b, 0)

assert np.allclose(im2col_relu(x, w, b), conv_relu(x, w, b), atol=1e-4)
xs, ws, bs = (x, w, b) if SMALL else (x[:, :16, :16, :16], w[:, :, :16, :16], b[:16])  # the simulator is slow
rows, rows_temps, rows_compiled = {}, {}, {}
for label, fn in (("direct conv2d", conv_relu), ("im2col", im2col_relu)):
    r = explorer.compare(fn, xs, ws, bs, target="sim", baselines=())
    for v in ("fused", "unfused"):
        vv = r.variant(v)
        temps = vv.compiled.program.temps
        rows_temps[f"{label}, {v}"] = temps
        rows_compiled[f"{label}, {v}"] = vv.compiled
        rows[f"{label}, {v}"] = (vv.kernels, vv.bytes_measured,
                                 sum(t.nbytes for t in temps), ", ".join(t.type_str() for t in temps) or "-")
print(f"shape {xs.shape} * {ws.shape}")
print(f"{'variant':24s} {'kernels':>7s} {'global B (sim)':>15s} {'temporaries B':>14s}  temporaries")
for k_, (nk, gb, tb, tt) in rows.items():
    print(f"{k_:24s} {nk:7d} {gb:15,d} {tb:14,d}  {tt}")
d, i2, fi = rows["direct conv2d, fused"], rows["im2col, unfused"], rows["im2col, fused"]
print(f"\\ntextbook im2col (unfused, {i2[0]} kernels) moves {i2[1] / d[1]:.2f}x the global bytes of the fused direct "
      f"conv ({i2[1]:,d} vs {d[1]:,d} B) and keeps {i2[2]:,d} B of temporaries ({i2[2] / xs.nbytes:.1f}x the input); "
      f"the fused direct conv keeps {d[2]:,d} B of temporaries — " + ("no padded copy of the input in global memory."
                                                                     if d[2] == 0 else "it has temporaries."))
mm_shared = sum(kk.shared_bytes() for kk in rows_compiled["im2col, unfused"].stage("tiled").ir.kernels
                if kk.kind == "contraction")
# why: loads per output element of the conv's CUDA schedules vs what each output needs (R*S*C inputs + R*S*C
# weights + bias): shared=False is the direct schedule (every thread reads its own window and weights), the
# default the implicit GEMM (a block stages its input and weight tiles in shared memory once per step)
outputs = xs.shape[0] * xs.shape[1] * xs.shape[2] * ws.shape[-1]
per_out = {}
for label, knobs in (("direct (shared=False)", {"shared": False}), ("implicit GEMM (default)", {})):
    cd = explorer.compile(conv_relu, xs, ws, bs, target="sim", schedule=knobs, verbose=False)
    cd.run(xs, ws, bs)
    per_out[label] = cd.executable().counters["total"]["global_load_bytes"] / outputs / xs.itemsize
for label, v in per_out.items():
    print(f"conv's CUDA schedule, {label:24s}: {v:7.1f} values loaded from global memory per output")
print(f"(every thread reading its own window and weights would be 2*R*S*C+1 = {2 * 9 * xs.shape[-1] + 1}); "
      f"im2col's matmul kernel stages {mm_shared:,d} B of operand tiles in shared memory")
cols_shape = (xs.shape[0] * xs.shape[1] * xs.shape[2], 9 * xs.shape[-1])
cols_kept = any(tuple(t.shape) == cols_shape for t in rows_temps["im2col, fused"])
print(f"fused, the explorer " + ("keeps" if cols_kept else "does not materialise") +
      f" im2col's column matrix {cols_shape}: {fi[0]} kernel(s), {fi[2]:,d} B of temporaries, "
      f"{fi[1]:,d} global B ({fi[1] / d[1]:.2f}x the fused direct conv's).")
'''),
    code('''
import matplotlib.pyplot as plt
labels = list(rows)
fig, ax = plt.subplots(figsize=(6, 3))
yy = np.arange(len(labels))
ax.barh(yy - 0.2, [rows[k][1] / 1024 for k in labels], 0.4, label="global bytes moved (simulator)")
ax.barh(yy + 0.2, [rows[k][2] / 1024 for k in labels], 0.4, label="temporaries kept in memory")
ax.set_yticks(yy, [f"{k} ({rows[k][0]} kernel{'s' if rows[k][0] != 1 else ''})" for k in labels])
ax.invert_yaxis(); ax.set_xlabel("KiB"); ax.legend(fontsize=8)
ax.set_title(f"conv 3x3, {xs.shape[-1]} -> {ws.shape[-1]} channels: direct vs im2col", fontsize=10);
'''),
    md('''
## The schedule knobs that apply
The `tiled` stage shows the schedule chosen for the conv kernel. On the CPU, `thread_tile=(TW, TK)` sets
the register tile (output columns x output channels, SIMD over channels; output rows across OpenMP
threads). On CUDA (and the simulator) the conv is an implicit GEMM: `conv_tile_k` and `conv_tile_p` set a
block's output channels and output pixels (one thread per output), `conv_tile_c` the input channels per
reduction step, whose input tile (gathered through the window, padding as zeros) and weight tile the block
stages in shared memory (`double_buffer`; `shared=False` gives the direct schedule). The cell prints the
default schedules and the simulator's bytes for a few `conv_tile_k` values.
'''),
    code('''
for tgt in ("cpu", "sim"):
    ct = explorer.compile(conv_relu, x, w, b, target=tgt, stop_after="tiled", verbose=False)
    kk = ct.stage("tiled").ir.kernels[0]
    print(f"{tgt}: {kk.name}")
    for p_ in kk.schedule:
        print("   ", p_)
print()
knob_rows = []
for tk in (4, 8, 16):
    cs = explorer.compile(conv_relu, xs, ws, bs, target="sim", schedule={"conv_tile_k": tk}, verbose=False)
    got = cs.run(xs, ws, bs)
    assert np.allclose(got, conv_relu(xs, ws, bs), atol=1e-4)
    tot = cs.executable().counters["total"]
    knob_rows.append((tk, int(tot["global_load_bytes"] + tot["global_store_bytes"])))
    print(f"conv_tile_k={tk:3d}: global bytes (sim) {knob_rows[-1][1]:,d}")
lo, hi = min(knob_rows, key=lambda t: t[1]), max(knob_rows, key=lambda t: t[1])
print(f"the simulator's global bytes vary by {hi[1] / lo[1]:.2f}x across these tiles (fewest at conv_tile_k={lo[0]})"
      if hi[1] != lo[1] else "the tile size does not change the simulator's global bytes here")
'''),
    md('''
## conv + bias + relu: fused vs unfused, measured
Fused is one kernel (bias and relu in the conv's epilogue); unfused (`fuse=False`) is conv, add and
maximum as three kernels with two intermediates in memory. They run interleaved with NumPy; each row has
its median, IQR, min and n, and `!` marks an unstable measurement. The sentence under the table is
computed from these numbers.
'''),
    code('''
r = explorer.compare(conv_relu, x, w, b, target=TARGET, budget_s=2.0 if SMALL else 10.0)
print(r.table())
f_, u_ = r.variant("fused"), r.variant("unfused")
sp = r.speedup_range
if f_.measured:
    print(f"\\nfused {f_.median_ms:.3g} ms (IQR {f_.q1_ms:.3g}–{f_.q3_ms:.3g}, {f_.kernels} kernel) vs unfused "
          f"{u_.median_ms:.3g} ms (IQR {u_.q1_ms:.3g}–{u_.q3_ms:.3g}, {u_.kernels} kernels): fusion is "
          + ("faster" if sp.low > 1 else "slower" if sp.high < 1 else "not clearly faster or slower")
          + f" here, {sp}")
    line = flag_line("", [("fused", f_), ("unfused", u_)])
    if line:
        print(line)
else:
    print(f"model times only on {TARGET}: speedup {sp.range_text()}")
print(f"bytes (model): fused {f_.bytes_model:,d} B, unfused {u_.bytes_model:,d} B "
      f"({u_.bytes_model / f_.bytes_model:.2f}x)")
'''),
    WIDGET_NOTE,
    code('''
from widgets import Explorer
Explorer(conv_relu, x, w, b, target=TARGET)
'''),
]

NOTEBOOKS = {
    "01_fusion_matmul_relu": NB01,
    "02_elementwise_and_roofline": NB02,
    "03_tiling_matmul": NB03,
    "04_softmax_layernorm": NB04,
    "05_attention": NB05,
    "06_transformer_block": NB06,
    "07_convolution": NB07,
}


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, src) in enumerate(cells):
        cell = new_markdown_cell(src) if kind == "md" else new_code_cell(src)
        cell.id = f"{name[:2]}-{i:02d}"   # stable ids: regenerating gives byte-identical files
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE), help="output folder (default: notebooks/)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        path = Path(args.out) / f"{name}.ipynb"
        nbformat.write(build(name, cells), str(path))
        print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
