"""Run generated CUDA source on the CPU (test helper; no GPU needed).

The CUDA TU is compiled as C++17 by g++ with a shim header: one persistent OS thread per CUDA thread
runs the blocks one after another, __syncthreads is a pthread barrier over the block, warp shuffles exchange through a per-warp slot
array with a per-warp barrier (and check that the shuffle mask names exactly the live lanes), __shared__
arrays are function statics (blocks run one after another). It checks the *semantics* of the generated
code — indexing, guards, barriers, shuffle reductions, float4 paths — not its speed.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

from explorer.loopir import np_dtype

SHIM = r"""
#pragma once
#include <math.h>
#include <string.h>
#include <pthread.h>
struct uint3 { unsigned x, y, z; };
struct dim3 { unsigned x, y, z; };
static __thread uint3 threadIdx;
static __thread uint3 blockIdx;
static __thread int ke_lin;
static dim3 blockDim, gridDim;
static volatile int ke_emu_error;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
struct alignas(16) float4 { float x, y, z, w; };
static inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline double __longlong_as_double(long long i) { double f; memcpy(&f, &i, 8); return f; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
struct __half { _Float16 v; };
static inline float __half2float(__half h) { return (float)h.v; }
static inline __half __float2half(float f) { return __half{(_Float16)f}; }
struct KeWarp { pthread_barrier_t bar; int live; alignas(8) unsigned char slot[32][8]; };
static pthread_barrier_t ke_block_bar;
static KeWarp ke_warps[32];
static inline void __syncthreads() { pthread_barrier_wait(&ke_block_bar); }
template <class T> static T ke_exchange(unsigned mask, T v, int src) {
    KeWarp& w = ke_warps[ke_lin / 32];
    int lane = ke_lin % 32;
    if (__builtin_popcount(mask) != w.live) ke_emu_error = 1;   /* the mask must name exactly the live lanes */
    memcpy(w.slot[lane], &v, sizeof(T));
    pthread_barrier_wait(&w.bar);
    T r = v;
    if (src >= 0 && src < w.live) memcpy(&r, w.slot[src], sizeof(T));  /* inactive source lane: undefined, keep v */
    pthread_barrier_wait(&w.bar);
    return r;
}
template <class T> static T __shfl_xor_sync(unsigned mask, T v, int o) { return ke_exchange(mask, v, (ke_lin % 32) ^ o); }
template <class T> static T __shfl_down_sync(unsigned mask, T v, int o) { return ke_exchange(mask, v, ke_lin % 32 + o); }
typedef void (*ke_body_t)(void**);
struct KeJob { ke_body_t body; void** args; int t; };
static void* ke_thread(void* p) {
    KeJob* j = (KeJob*)p;
    dim3 b = blockDim, g = gridDim;
    ke_lin = j->t;
    threadIdx = uint3{j->t % b.x, (j->t / b.x) % b.y, j->t / (b.x * b.y)};
    /* one persistent OS thread per CUDA thread; blocks run one after another */
    for (unsigned bz = 0; bz < g.z; ++bz) for (unsigned by = 0; by < g.y; ++by) for (unsigned bx = 0; bx < g.x; ++bx) {
        blockIdx = uint3{bx, by, bz};
        j->body(j->args);
        pthread_barrier_wait(&ke_block_bar);  /* block done: its __shared__ statics may be reused */
    }
    return 0;
}
static int ke_launch(dim3 g, dim3 b, ke_body_t body, void** args) {
    gridDim = g; blockDim = b; ke_emu_error = 0;
    int n = b.x * b.y * b.z;
    pthread_barrier_init(&ke_block_bar, 0, n);
    for (int w = 0; w < (n + 31) / 32; ++w) {
        ke_warps[w].live = n - 32 * w < 32 ? n - 32 * w : 32;
        pthread_barrier_init(&ke_warps[w].bar, 0, ke_warps[w].live);
    }
    pthread_t ts[1024]; KeJob jobs[1024];
    pthread_attr_t attr; pthread_attr_init(&attr); pthread_attr_setstacksize(&attr, 1 << 20);
    for (int t = 0; t < n; ++t) { jobs[t] = KeJob{body, args, t}; pthread_create(&ts[t], &attr, ke_thread, &jobs[t]); }
    for (int t = 0; t < n; ++t) pthread_join(ts[t], 0);
    pthread_barrier_destroy(&ke_block_bar);
    for (int w = 0; w < (n + 31) / 32; ++w) pthread_barrier_destroy(&ke_warps[w].bar);
    return ke_emu_error;
}
"""

_CTYPES = {"f32": "float", "f64": "double", "f16": "__half", "i32": "int", "i64": "long long", "bool": "bool"}


def available() -> tuple[bool, str]:
    cxx = shutil.which("g++")
    return (cxx is not None, "g++ not found" if cxx is None else cxx)


def _wrappers(codegen) -> str:
    out = []
    for i, g in enumerate(codegen.kernels):
        gx, gy, gz = g.launch["grid"]
        bx, by, bz = g.launch["block"]
        args = ", ".join(f"({_CTYPES[p.dtype]}*)a[{j}]" for j, p in enumerate(g.kernel.params))
        out.append(f"static void ke_emu_body_{i}(void** a) {{ {g.name}({args}); }}")
        out.append(f'extern "C" int ke_emu_run_{i}(void** a) {{ return ke_launch(dim3{{{gx}, {gy}, {gz}}}, '
                   f'dim3{{{bx}, {by}, {bz}}}, ke_emu_body_{i}, a); }}')
    return "\n".join(out)


_CACHE: dict[str, ctypes.CDLL] = {}


def build(codegen, source: str | None = None) -> ctypes.CDLL:
    src = (source or codegen.source()) + "\n" + _wrappers(codegen) + "\n"
    key = hashlib.sha256(src.encode()).hexdigest()[:16]
    if key in _CACHE:
        return _CACHE[key]
    tmp = tempfile.mkdtemp(prefix="ke-cuemu-")
    with open(os.path.join(tmp, "ke_emu.h"), "w") as f:
        f.write(SHIM)
    with open(os.path.join(tmp, "cuda_fp16.h"), "w") as f:
        f.write("/* provided by ke_emu.h */\n")
    with open(os.path.join(tmp, "k.cu"), "w") as f:
        f.write(src)
    lib = os.path.join(tmp, "k.so")
    proc = subprocess.run(["g++", "-std=c++17", "-O1", "-shared", "-fPIC", "-pthread", "-w", "-x", "c++",
                           "-include", os.path.join(tmp, "ke_emu.h"), "-I", tmp, os.path.join(tmp, "k.cu"),
                           "-o", lib], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("emulator build failed:\n" + proc.stderr[-3000:])
    _CACHE[key] = ctypes.CDLL(lib)
    return _CACHE[key]


def run(codegen, inputs: list[np.ndarray], source: str | None = None) -> list[np.ndarray]:
    """Run every kernel of a CUDA Codegen in order on the CPU; returns the program's outputs."""
    lib = build(codegen, source)
    prog = codegen.program
    arrays = {b.name: np.zeros(b.shape, np_dtype(b.dtype)) for b in prog.buffers().values() if b.scope == "global"}
    consts = list(getattr(prog, "constants", ()) or ())
    if consts and len(inputs) == len(prog.inputs) - len(consts):
        inputs = list(inputs) + [data for _, data in consts]
    for b, x in zip(prog.inputs, inputs):
        arrays[b.name][...] = x
    for i, g in enumerate(codegen.kernels):
        ptrs = (ctypes.c_void_p * len(g.kernel.params))(*[arrays[p.name].ctypes.data for p in g.kernel.params])
        err = getattr(lib, f"ke_emu_run_{i}")(ptrs)
        if err:
            raise AssertionError(f"kernel {g.name}: a warp shuffle's mask did not match the live lanes")
    return [arrays[b.name] for b in prog.outputs]
