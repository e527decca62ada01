"""Run generated CUDA source on the CPU (test helper; no GPU needed).

The CUDA TU is compiled as C++20 by g++ with a shim header: each block runs as one OS thread per CUDA
thread, __syncthreads is a std::barrier over the block, warp shuffles exchange through a per-warp slot
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
#include <stdio.h>
#include <string.h>
#include <atomic>
#include <barrier>
#include <thread>
#include <vector>
struct uint3 { unsigned x, y, z; };
struct dim3 { unsigned x = 1, y = 1, z = 1; };
static thread_local uint3 threadIdx;
static thread_local int ke_lin;
static uint3 blockIdx;
static dim3 blockDim, gridDim;
static std::atomic<int> ke_emu_error{0};
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
struct KeWarp { std::barrier<>* bar; int live; alignas(8) unsigned char slot[32][8]; };
static std::barrier<>* ke_block_bar;
static std::vector<KeWarp*> ke_warps;
static inline void __syncthreads() { ke_block_bar->arrive_and_wait(); }
template <class T> static T ke_exchange(unsigned mask, T v, int src) {
    KeWarp& w = *ke_warps[ke_lin / 32];
    int lane = ke_lin % 32;
    if (__builtin_popcount(mask) != w.live) ke_emu_error = 1;   /* mask must name exactly the live lanes */
    memcpy(w.slot[lane], &v, sizeof(T));
    w.bar->arrive_and_wait();
    T r = v;
    if (src >= 0 && src < w.live) memcpy(&r, w.slot[src], sizeof(T));  /* an inactive source lane: undefined, keep v */
    w.bar->arrive_and_wait();
    return r;
}
template <class T> static T __shfl_xor_sync(unsigned mask, T v, int o) { return ke_exchange(mask, v, (ke_lin % 32) ^ o); }
template <class T> static T __shfl_down_sync(unsigned mask, T v, int o) { return ke_exchange(mask, v, ke_lin % 32 + o); }
template <class F> static void ke_launch(dim3 g, dim3 b, F f) {
    gridDim = g; blockDim = b;
    int n = b.x * b.y * b.z;
    for (unsigned bz = 0; bz < g.z; ++bz) for (unsigned by = 0; by < g.y; ++by) for (unsigned bx = 0; bx < g.x; ++bx) {
        std::barrier<> bar(n);
        ke_block_bar = &bar;
        std::vector<KeWarp> warps((n + 31) / 32);
        std::vector<std::barrier<>*> wbars;
        ke_warps.clear();
        for (size_t w = 0; w < warps.size(); ++w) {
            int live = n - 32 * (int)w < 32 ? n - 32 * (int)w : 32;
            warps[w].live = live;
            warps[w].bar = new std::barrier<>(live);
            ke_warps.push_back(&warps[w]);
        }
        blockIdx = uint3{bx, by, bz};
        std::vector<std::thread> ts;
        for (int t = 0; t < n; ++t)
            ts.emplace_back([&, t] {
                ke_lin = t;
                threadIdx = uint3{t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
                f();
                /* an exited thread no longer holds up barriers (as on sm_70+) */
                ke_warps[t / 32]->bar->arrive_and_drop();
                ke_block_bar->arrive_and_drop();
            });
        for (auto& th : ts) th.join();
        for (auto& w : warps) delete w.bar;
    }
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
        out.append(f'extern "C" int ke_emu_run_{i}(void** a) {{ ke_emu_error = 0; '
                   f'ke_launch(dim3{{{gx}, {gy}, {gz}}}, dim3{{{bx}, {by}, {bz}}}, [&] {{ {g.name}({args}); }}); '
                   f'return ke_emu_error.load(); }}')
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
    proc = subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w", "-x", "c++",
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
    for b, x in zip(prog.inputs, inputs):
        arrays[b.name][...] = x
    for i, g in enumerate(codegen.kernels):
        ptrs = (ctypes.c_void_p * len(g.kernel.params))(*[arrays[p.name].ctypes.data for p in g.kernel.params])
        err = getattr(lib, f"ke_emu_run_{i}")(ptrs)
        if err:
            raise AssertionError(f"kernel {g.name}: a warp shuffle's mask did not match the live lanes")
    return [arrays[b.name] for b in prog.outputs]
