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


# Shared first code cell: imports, the target, and the problem-size switch.
SETUP = code('''
import os, math, time
import numpy as np
import explorer
from explorer import costmodel
from explorer.pipeline import resolve_target

TARGET = resolve_target("auto")   # cuda if a GPU works, else cpu (C + OpenMP) if a C compiler works, else sim
# KE_FAST=1 (set by the test suite) or the slow simulator → small problems; the numbers are still measured.
SMALL = os.environ.get("KE_FAST") == "1" or TARGET == "sim"
DEVICE = costmodel.device(TARGET)  # the roofline of the machine we run on
print("target:", TARGET, "| small sizes:", SMALL)
print(DEVICE.label())
''')

WIDGET_NOTE = md('''
## The same compile, interactively
`widgets.Explorer` shows every stage, the fusion groups, the generated source and the knobs for this
function. (In a headless run it just builds the widget tree.)
''')

# ============================================================================ 01
NB01 = [
    md('''
# 1. Fusing matmul + bias + relu

The canonical compiler win: `relu(x @ w + b)` as separate kernels writes the matmul result to memory and
reads it back to add `b`, then writes and re-reads that sum to apply `relu`. Fused, bias and relu are
applied while the matmul result is still in registers. This notebook measures both versions: kernels, bytes moved, time,
and where they sit on the roofline — and why the win is "sometimes 2x", not always.
'''),
    SETUP,
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
print(f"\\nfusion removes {saved:,d} bytes of traffic ({tu['bytes'] / tf['bytes']:.2f}x fewer): "
      f"{saved / inter:.0f} passes over one {M}x{N} intermediate of {inter:,d} B "
      f"(x@w and x@w+b, each written once and read once)")
'''),
    md('''
## Time
Measured here, median of repeats, on the target above.
'''),
    code('''
t_f = fused.benchmark(repeat=10)
t_u = unfused.benchmark(repeat=10)
print("fused:  ", t_f)
print("unfused:", t_u)
sp, ratio = t_u.median_ms / t_f.median_ms, tu["bytes"] / tf["bytes"]
print(f"measured speedup from fusion: {sp:.2f}x; the model's bytes ratio is {ratio:.2f}x, so here the time saved is "
      + ("less than the traffic saved (bytes are not the only cost: compute and fixed overheads take time too)"
         if sp < ratio else "more than the traffic saved (the bytes model ignores caches and per-kernel overheads)")
      + ("" if sp >= 1 else "; fused is slower than unfused on this machine at this size"))
'''),
    md('''
## Roofline
`explorer.compare` runs both variants (and NumPy) and plots each kernel on this device's roofline:
memory-bound kernels sit on the sloped part, where fewer bytes means less time.
'''),
    code('''
r = explorer.compare(mlp, x, w, b, target=TARGET, repeat=10)
print(r.table())
'''),
    code('''
r.plot_roofline()
'''),
    md('''
## Why "sometimes 2x"
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
    sp = cu.benchmark(repeat=5).median_ms / cf.benchmark(repeat=5).median_ms
    rows.append((k_, bu["bytes"] / bf["bytes"], mm.intensity, mm.bound, sp))
print(f"{'K':>6} {'bytes unfused/fused':>20} {'matmul flop/B':>14} {'matmul bound':>13} {'measured speedup':>17}")
for k_, ratio, inten, bnd, sp in rows:
    print(f"{k_:>6} {ratio:>20.2f} {inten:>14.1f} {bnd:>13} {sp:>16.2f}x")
best = max(rows, key=lambda r_: r_[4])
print(f"\\nlargest measured speedup {best[4]:.2f}x at K={best[0]}; smallest "
      f"{min(r_[4] for r_ in rows):.2f}x. The bytes ratio falls from {rows[0][1]:.2f}x to {rows[-1][1]:.2f}x as K grows.")
agree = rows[0][4] > rows[-1][4]
print(f"measured: the speedup at K={rows[0][0]} ({rows[0][4]:.2f}x) is {'larger' if agree else 'not larger'} than at "
      f"K={rows[-1][0]} ({rows[-1][4]:.2f}x): {'as' if agree else 'unlike what'} the model predicts"
      + ("" if agree else " (at these sizes timing noise or fixed overheads dominate on this machine)"))
'''),
    code('''
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot([r_[0] for r_ in rows], [r_[4] for r_ in rows], "o-", label="measured speedup")
ax.plot([r_[0] for r_ in rows], [r_[1] for r_ in rows], "s--", mfc="none", label="bytes ratio (model)")
ax.set_xscale("log", base=2); ax.set_xlabel("inner dimension K"); ax.set_ylabel("unfused / fused")
ax.axhline(1, color="grey", lw=0.5); ax.legend(); ax.set_title(f"fusion win vs K ({TARGET})");
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

An elementwise op does a handful of flops per element but moves every element in and out of memory:
its arithmetic intensity (flop/byte) is tiny, far below a device's ridge point, so it is memory-bound
(the cells below print both numbers for this device). Chaining `n` of
them unfused moves the array `2n` times; fused, twice. This notebook measures that, classifies kernels
as memory- or compute-bound on this device, and sweeps the problem size.
'''),
    SETUP,
    code('''
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
      f"{DEVICE.ridge:.1f} flop/byte")
'''),
    md('''
## Intensity grows with fusion, bytes do not
'''),
    code('''
print(f"{'steps':>5} {'kernels f/u':>12} {'bytes fused':>12} {'bytes unfused':>14} {'fused flop/B':>13} {'bound':>8} {'time f':>9} {'time u':>9}")
results = []
for n in ([1, 2, 4, 8] if SMALL else [1, 2, 4, 8, 16]):
    f = chain(n)
    cf = explorer.compile(f, x, target=TARGET, verbose=False)
    cu = explorer.compile(f, x, target=TARGET, fuse=False, verbose=False)
    kf, ku = costmodel.kernel_costs(cf, DEVICE), costmodel.kernel_costs(cu, DEVICE)
    tf_, tu_ = costmodel.total(kf), costmodel.total(ku)
    ms_f, ms_u = cf.benchmark(repeat=5).median_ms, cu.benchmark(repeat=5).median_ms
    results.append((n, tf_["bytes"], tu_["bytes"], kf[0].intensity, kf[0].bound, ms_f, ms_u, len(cu.kernels)))
    print(f"{n:>5} {len(cf.kernels):>5}/{len(cu.kernels):<6} {tf_['bytes']:>12,d} {tu_['bytes']:>14,d} "
          f"{kf[0].intensity:>13.3f} {kf[0].bound:>8} {ms_f:>8.3f}ms {ms_u:>8.3f}ms")
n, bf_, bu_, inten, bnd, ms_f, ms_u, n_ops = results[-1]
print(f"\\n{n} steps = {n_ops} elementwise ops: unfused moves {bu_ / bf_:.1f}x the bytes and takes {ms_u / ms_f:.1f}x the time (measured); "
      f"the fused kernel is still {bnd}-bound at {inten:.2f} flop/byte (ridge {DEVICE.ridge:.1f})")
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
for label, k, m in ((f"matmul {n_mm}", km, "o"), ("elementwise", ke, "s")):
    ax.loglog([k.intensity], [k.attainable_flops / 1e9], m, mfc="none", label=f"{label} (model)")
ax.axvline(DEVICE.ridge, color="grey", ls=":", lw=1)
ax.set_xlabel("arithmetic intensity (flop/byte)"); ax.set_ylabel("GFLOP/s"); ax.legend(fontsize=8);
'''),
    md('''
## Sweep over sizes
Fusion should matter most where the work is memory-bound and large enough that launch and loop overheads
do not dominate. `explorer.sweep` measures fused vs unfused across sizes; the last line says where the
win was largest on this machine.
'''),
    code('''
f4 = chain(4)
sizes = [1 << 10, 1 << 12, 1 << 14] if SMALL else [1 << 12, 1 << 15, 1 << 18, 1 << 21, 1 << 23]
sw = explorer.sweep(f4, sizes=sizes, target=TARGET, repeat=5)
print(sw.table())
lo, hi = min(sw.rows, key=lambda r_: r_["speedup"]), max(sw.rows, key=lambda r_: r_["speedup"])
print(f"{'measured' if sw.measured else 'model'} speedup: {lo['speedup']:.2f}x at size {lo['size']:,d} "
      f"… {hi['speedup']:.2f}x at size {hi['size']:,d}")
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
    SETUP,
    code('''
def matmul(a, b):
    return a @ b

n = 32 if SMALL else 128
rng = np.random.default_rng(0)
A = rng.standard_normal((n, n), dtype=np.float32)
B = rng.standard_normal((n, n), dtype=np.float32)
c = explorer.compile(matmul, A, B, target="sim")
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
    ct = explorer.compile(matmul, A, B, target="sim", schedule=knobs, verbose=False)
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
    md('''
## Schedules are checked
A schedule that does not fit the hardware is rejected with the limit it broke; a misspelt knob is
rejected with the list of knobs.
'''),
    code('''
for bad in ({"tile": (128, 128, 64)}, {"tile": (256, 256, 8)}, {"tilesize": 8}):
    try:
        explorer.compile(matmul, A, B, target="sim", schedule=bad, verbose=False)
        print(bad, "→ accepted")
    except explorer.ExplorerError as e:
        print(bad, "→", type(e).__name__ + ":", e)
'''),
    md('''
## The generated CUDA
The same tiled loop IR that the simulator ran, printed as CUDA C, with its launch configuration. When
`nvcc` is installed the register/shared-memory report comes from compiling it to PTX.
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
Explorer(matmul, A, B, target="sim")
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
    code('''
from explorer import nn

R, C = (64, 128) if SMALL else (2048, 1024)
x = np.random.default_rng(0).standard_normal((R, C), dtype=np.float32)

def softmax(x):
    return nn.softmax(x, axis=-1)

def layernorm(x):
    return nn.layernorm(x, axis=-1)

for fn in (softmax, layernorm):
    cf = explorer.compile(fn, x, target=TARGET, verbose=False)
    cu = explorer.compile(fn, x, target=TARGET, fuse=False, verbose=False)
    bf = costmodel.total(costmodel.kernel_costs(cf, DEVICE))["bytes"]
    bu = costmodel.total(costmodel.kernel_costs(cu, DEVICE))["bytes"]
    tf_, tu_ = cf.benchmark(repeat=5).median_ms, cu.benchmark(repeat=5).median_ms
    print(f"{fn.__name__:10s} kernels fused/unfused {len(cf.kernels)}/{len(cu.kernels)}  bytes {bf:,d} / {bu:,d} "
          f"({bu / bf:.1f}x)  time {tf_:.3f} / {tu_:.3f} ms ({tu_ / tf_:.1f}x)  max err {cf.max_error():.2g}")
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
One source function, two dtypes: the compiler writes both kernels. The diff is the types (and the
float16 accuracy you give up).
'''),
    code('''
import difflib
c32 = explorer.compile(softmax, x, target=TARGET, verbose=False)
c16 = explorer.compile(softmax, x, target=TARGET, dtype=np.float16, verbose=False)
src32, src16 = c32.kernels[0].source, c16.kernels[0].source
diff = [l for l in difflib.unified_diff(src32.splitlines(), src16.splitlines(), "float32", "float16", lineterm="", n=0)]
print("\\n".join(diff[:40]))
print(f"\\n{len(diff)} diff lines; max error vs NumPy: float32 {c32.max_error():.2g}, float16 {c16.max_error():.2g}")
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
score matrix written to memory in between. This notebook measures that.
'''),
    SETUP,
    code('''
from explorer import nn

def attention(q, k, v):
    d = q.shape[-1]
    s = (q @ k.T) / math.sqrt(d)
    return nn.softmax(s, axis=-1) @ v

S, D = (64, 16) if SMALL else (512, 64)
rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((S, D), dtype=np.float32) for _ in range(3))
c = explorer.compile(attention, q, k, v, target=TARGET)
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
The temporaries grow with `S²` while the inputs grow with `S`: the unfusable score matrix dominates
traffic as sequences get longer.
'''),
    code('''
print(f"{'S':>6} {'input B':>10} {'temp B':>12} {'temp/input':>11}")
for s_ in ([32, 64, 128] if SMALL else [128, 256, 512, 1024]):
    qs = rng.standard_normal((s_, D), dtype=np.float32)
    cs_ = explorer.compile(attention, qs, qs, qs, target=TARGET, stop_after="lowered", verbose=False)
    p_ = cs_.stage("lowered").ir
    ib, tb = sum(bf.nbytes for bf in p_.inputs), sum(bf.nbytes for bf in p_.temps)
    print(f"{s_:>6} {ib:>10,d} {tb:>12,d} {tb / ib:>11.1f}")
'''),
    md('''
## Fused vs unfused, measured
'''),
    code('''
r = explorer.compare(attention, q, k, v, target=TARGET, repeat=10)
print(r.table())
'''),
    md('''
## Tensor cores for the two matmuls
In float16 the GPU schedule can run a matmul on tensor cores (`tensorize` with WMMA 16x16x16 fragments,
f32 accumulation). This cell compiles only down to the `tiled` stage, so it needs no GPU, and prints
which kernels got them.
'''),
    code('''
gpu_target = "cuda" if TARGET == "cuda" else "sim"
c16 = explorer.compile(attention, q, k, v, target=gpu_target, dtype=np.float16, stop_after="tiled", verbose=False)
kernels16 = c16.stage("tiled").ir.kernels
for kk in kernels16:
    tc = [str(p_) for p_ in kk.schedule if "tensorize" in str(p_)]
    print(f"{kk.name:34s}", tc[0] if tc else "no tensor cores")
print(f"{sum(any('tensorize' in str(p_) for p_ in kk.schedule) for kk in kernels16)} of {len(kernels16)} kernels "
      f"use tensor cores ({gpu_target} schedule, float16)")
'''),
    md('''
## What is missing
Removing the score matrix needs a different algorithm, not a different grouping: the *online softmax*
(FlashAttention) keeps a running max and sum per row while streaming `k`/`v` tiles, so the scores never
leave the chip. That kernel is future work here — the op-category fusion above cannot derive it, which
is the essay's point about fixed-op-set compilers needing hand-written custom kernels.
'''),
    WIDGET_NOTE,
    code('''
from widgets import Explorer
Explorer(attention, q, k, v, target=TARGET)
'''),
]

NOTEBOOKS = {
    "01_fusion_matmul_relu": NB01,
    "02_elementwise_and_roofline": NB02,
    "03_tiling_matmul": NB03,
    "04_softmax_layernorm": NB04,
    "05_attention": NB05,
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
