"""Tiled loop IR → CUDA C: one `extern "C" __global__` function per Kernel plus a shared prelude.

Bound loops become index reads (the launch grid/block carries their extents), serial loops
become `for`, unrolled loops get `#pragma unroll`, a Float4Block (passes/vectorize_cuda.py) becomes
float4 loads/stores (a `vectorized` loop left over is an unrolled scalar loop), shared buffers are
hoisted `__shared__` arrays and ThreadAllReduce becomes a warp-shuffle block reduction. Warp-level fragment statements
(schedule.tensorize) become nvcuda::wmma calls, e.g. `Mma` →
`wmma::mma_sync(acc_frag[i_f][j_f], x_frag[i_f], w_frag[j_f], acc_frag[i_f][j_f]);`.

Before (tiled loop IR)::

    kernel scale(x: f32[1024] global, out0: f32[1024] global):
      for bx in blockIdx.x(4):
        for tx in threadIdx.x(256):
          out0[bx * 256 + tx] = x[bx * 256 + tx] * 2.0f

After (CUDA C, abridged)::

    extern "C" __global__ void __launch_bounds__(256) scale(const float* __restrict__ x,
                                                            float* __restrict__ out0) {
      const int bx = blockIdx.x;  /* blockIdx.x in [0, 4) */
      const int tx = threadIdx.x;  /* threadIdx.x in [0, 256) */
      out0[bx * 256 + tx] = x[bx * 256 + tx] * 2.0f;
    }

>>> from explorer.loopir import Buffer, For, Kernel, Program, Store, Var
>>> x, y = Buffer("x", (1024,)), Buffer("out0", (1024,))
>>> bx, tx = Var("bx"), Var("tx")
>>> k = Kernel("scale", (x, y), (For(bx, 4, (For(tx, 256, (Store(y, (bx * 256 + tx,), x[bx * 256 + tx] * 2.0),),
...     kind="threadIdx.x"),), kind="blockIdx.x"),), outputs=("out0",))
>>> cg = generate_cuda(Program("p", (k,), (x,), (y,)))
>>> cg.kernels[0].launch["grid"], cg.kernels[0].launch["block"]
((4, 1, 1), (256, 1, 1))
>>> "out0[bx * 256 + tx] = x[bx * 256 + tx] * 2.0f;" in cg.kernels[0].source
True
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import ScheduleError, VerificationError
from ..naming import c_identifier, not_generated
from ..target import get_target
from ..loopir import (FLOAT4_LANES, WARP_STMTS, Alloc, Barrier, BinOp, Buffer, Call, Cast, Comment, Const, Expr,
                      Float4Block, For, Fragment, FragmentAlloc, FragmentFill, FragmentLoad, FragmentStore, If, Kernel,
                      Load, Mma, Program, Select, Stmt, Store, ThreadAllReduce, UnOp, Var, kernel_index_dtype,
                      simplify_expr, strided_index, walk, FLOAT_DTYPES)
from ..passes.vectorize_cuda import vectorize_cuda
from ..loopir import PRECEDENCE, UNARY_PRECEDENCE
from . import Codegen, GeneratedKernel, fma_accumulation

__all__ = ["generate_cuda", "PRELUDE", "WMMA_PRELUDE", "ROW_ALLREDUCE_PRELUDE"]

MAX_THREADS_PER_BLOCK: int = get_target("cuda").max_threads_per_block  # type: ignore[assignment]
_INT32_MAX = 2**31 - 1

# Storage type of a buffer element in memory; f16 lives as __half but is computed in float.
# bf16 as __nv_bfloat16 (cuda_bf16.h), fp8 as __nv_fp8_e4m3 / __nv_fp8_e5m2 (cuda_fp8.h): storage only, computed in float.
_STORAGE = {"f32": "float", "f64": "double", "f16": "__half", "i32": "int", "i64": "long long", "bool": "bool",
            "bf16": "__nv_bfloat16", "f8e4m3": "__nv_fp8_e4m3", "f8e5m2": "__nv_fp8_e5m2"}
# Type an expression of this dtype is computed in.
_COMPUTE = {"f32": "float", "f64": "double", "f16": "float", "i32": "int", "i64": "long long", "bool": "bool",
            "bf16": "float", "f8e4m3": "float", "f8e5m2": "float"}
# narrow float → float on load, float → narrow on store (round to nearest even), and the round trip
_TO_FLOAT = {"f16": "__half2float", "bf16": "__bfloat162float", "f8e4m3": "float", "f8e5m2": "float"}
_FROM_FLOAT = {"f16": "__float2half", "bf16": "__float2bfloat16", "f8e4m3": "ke_to_e4m3", "f8e5m2": "ke_to_e5m2"}
_ROUND = {"f16": "ke_round_half", "bf16": "ke_round_bf16", "f8e4m3": "ke_round_e4m3", "f8e5m2": "ke_round_e5m2"}
_NARROW = tuple(_TO_FLOAT)
# bf16/fp8 programs get these headers and rounding helpers after the prelude
BF16_PRELUDE = """#include <cuda_bf16.h>
/* Round a float to bfloat16 (nearest even) and back: a bf16 op's result, computed in float. */
__device__ __forceinline__ float ke_round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }
"""
FP8_PRELUDE = """#include <cuda_fp8.h>
/* float -> fp8, nearest even, not saturating (as ml_dtypes: overflow is NaN for e4m3fn, inf for e5m2;
 * the __nv_fp8_e4m3(float) constructor would saturate to the largest finite value instead). */
__device__ __forceinline__ __nv_fp8_e4m3 ke_to_e4m3(float x) {
  __nv_fp8_e4m3 r; r.__x = __nv_cvt_float_to_fp8(x, __NV_NOSAT, __NV_E4M3); return r; }
__device__ __forceinline__ __nv_fp8_e5m2 ke_to_e5m2(float x) {
  __nv_fp8_e5m2 r; r.__x = __nv_cvt_float_to_fp8(x, __NV_NOSAT, __NV_E5M2); return r; }
/* Round a float to fp8 and back: an fp8 op's result, computed in float. */
__device__ __forceinline__ float ke_round_e4m3(float x) { return float(ke_to_e4m3(x)); }
__device__ __forceinline__ float ke_round_e5m2(float x) { return float(ke_to_e5m2(x)); }
"""

_MATH_F32 = {"exp": "expf", "log": "logf", "tanh": "tanhf", "sqrt": "sqrtf", "rsqrt": "rsqrtf", "abs": "fabsf",
             "erf": "erff", "pow": "powf", "sin": "sinf", "cos": "cosf", "floor": "floorf", "sigmoid": "ke_sigmoidf"}
_MATH_F64 = {"exp": "exp", "log": "log", "tanh": "tanh", "sqrt": "sqrt", "rsqrt": "rsqrt", "abs": "fabs",
             "erf": "erf", "pow": "pow", "sin": "sin", "cos": "cos", "floor": "floor", "sigmoid": "ke_sigmoid"}
_MATH_INT = {"abs": "ke_abs", "pow": "ke_ipow"}

PRELUDE = r"""/* Generated by kernel-explorer: CUDA C for one compiled program (compile with nvcc; kernels are extern "C"). */
#include <cuda_fp16.h>

/* np.maximum / np.minimum semantics: a NaN in either operand gives NaN (fmaxf alone would drop it). */
__device__ __forceinline__ float ke_max(float a, float b) { return (a != a || b != b) ? a + b : fmaxf(a, b); }
__device__ __forceinline__ float ke_min(float a, float b) { return (a != a || b != b) ? a + b : fminf(a, b); }
__device__ __forceinline__ double ke_max(double a, double b) { return (a != a || b != b) ? a + b : fmax(a, b); }
__device__ __forceinline__ double ke_min(double a, double b) { return (a != a || b != b) ? a + b : fmin(a, b); }
__device__ __forceinline__ int ke_max(int a, int b) { return a > b ? a : b; }
__device__ __forceinline__ int ke_min(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ long long ke_max(long long a, long long b) { return a > b ? a : b; }
__device__ __forceinline__ long long ke_min(long long a, long long b) { return a < b ? a : b; }
__device__ __forceinline__ bool ke_max(bool a, bool b) { return a || b; }
__device__ __forceinline__ bool ke_min(bool a, bool b) { return a && b; }
__device__ __forceinline__ int ke_abs(int a) { return a < 0 ? -a : a; }
__device__ __forceinline__ long long ke_abs(long long a) { return a < 0 ? -a : a; }
/* np.power on integers: exact, by squaring (a negative exponent gives 0 unless |base| is 1). */
template <typename T> __device__ __forceinline__ T ke_ipow(T b, T e) {
    if (e < 0) return b == 1 ? 1 : (b == -1 ? ((e & 1) ? -1 : 1) : 0);
    T r = 1;
    while (e) { if (e & 1) r *= b; b *= b; e >>= 1; }
    return r;
}

/* np.mod on floats: the result takes the sign of the divisor. */
__device__ __forceinline__ float ke_fmod(float a, float b) { float r = fmodf(a, b); return (r != 0.0f && ((r < 0.0f) != (b < 0.0f))) ? r + b : r; }
__device__ __forceinline__ double ke_fmod(double a, double b) { double r = fmod(a, b); return (r != 0.0 && ((r < 0.0) != (b < 0.0))) ? r + b : r; }
__device__ __forceinline__ float ke_sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ double ke_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
/* Round a float to half precision and back (a cast to f16 computed in float). */
__device__ __forceinline__ float ke_round_half(float x) { return __half2float(__float2half(x)); }

/* Warp shuffles of any element type: CUDA has no bool overload, so a bool travels as an int. */
template <typename T> __device__ __forceinline__ T ke_shfl_xor(unsigned m, T v, int o) { return __shfl_xor_sync(m, v, o); }
template <typename T> __device__ __forceinline__ T ke_shfl_down(unsigned m, T v, int o) { return __shfl_down_sync(m, v, o); }
__device__ __forceinline__ bool ke_shfl_xor(unsigned m, bool v, int o) { return __shfl_xor_sync(m, (int)v, o) != 0; }
__device__ __forceinline__ bool ke_shfl_down(unsigned m, bool v, int o) { return __shfl_down_sync(m, (int)v, o) != 0; }

struct ke_op_sum { template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; } };
struct ke_op_max { template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return ke_max(a, b); } };
struct ke_op_min { template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return ke_min(a, b); } };

/* Combine v over the NX threads along threadIdx.x of each block row (row = threadIdx.y + blockDim.y * threadIdx.z);
   every thread gets the result. smem needs ke_allreduce_scratch(NX, ROWS) elements. All threads must call it. */
template <int NX, int ROWS, typename T, typename Op>
__device__ __forceinline__ T ke_allreduce(T v, T* smem, Op op) {
    const int row = threadIdx.y + blockDim.y * threadIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (NX % 32 == 0) {
        /* Whole warps: butterfly shuffle leaves the warp's value in every lane. */
        constexpr int NW = NX / 32;
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) v = op(v, ke_shfl_xor(0xffffffffu, v, o));
        if (NW == 1) return v;
        if (lane == 0) smem[row * NW + warp] = v;
        __syncthreads();
        T r = smem[row * NW];
        #pragma unroll
        for (int w = 1; w < NW; ++w) r = op(r, smem[row * NW + w]);
        __syncthreads();  /* smem is reused by the next reduction */
        return r;
    } else if (ROWS == 1) {
        /* One row whose last warp is partial: shuffle only among the lanes that exist. */
        constexpr int NW = (NX + 31) / 32;
        const int n = NX - warp * 32 < 32 ? NX - warp * 32 : 32;
        const unsigned mask = n == 32 ? 0xffffffffu : ((1u << n) - 1u);
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            T other = ke_shfl_down(mask, v, o);
            if (lane + o < n) v = op(v, other);
        }
        if (lane == 0) smem[warp] = v;
        __syncthreads();
        T r = smem[0];
        #pragma unroll
        for (int w = 1; w < NW; ++w) r = op(r, smem[w]);
        __syncthreads();
        return r;
    } else {
        /* Rows that straddle warps: go through shared memory (correct for any shape). */
        smem[row * NX + threadIdx.x] = v;
        __syncthreads();
        T r = smem[row * NX];
        for (int i = 1; i < NX; ++i) r = op(r, smem[row * NX + i]);
        __syncthreads();
        return r;
    }
}"""


# Added to the prelude when a kernel uses tensor cores (schedule.tensorize): WMMA needs sm_70+.
WMMA_PRELUDE = r"""
/* Tensor cores (WMMA, sm_70+): warp-level 16x16x16 f16 x f16 -> f32 fragments. */
#include <mma.h>
namespace wmma = nvcuda::wmma;"""

_FRAG_TYPES = {"f16": "__half", "f32": "float"}


# Added to the prelude when a kernel combines values over rows of 2..16 lanes (the attention kernel's split rows).
ROW_ALLREDUCE_PRELUDE = r"""
/* Combine v over the NX threads along threadIdx.x of each block row when NX divides 32 (rows of NX lanes inside
   one warp): a butterfly among the row's lanes, no shared memory; every thread gets the result. The mask names
   the warp's live lanes (a block of NX * ROWS threads may end in a partial warp). All threads must call it. */
template <int NX, int ROWS, typename T, typename Op>
__device__ __forceinline__ T ke_row_allreduce(T v, Op op) {
    const int first = (threadIdx.x + NX * (threadIdx.y + blockDim.y * threadIdx.z)) & ~31;
    const int live = NX * ROWS - first < 32 ? NX * ROWS - first : 32;
    const unsigned mask = live == 32 ? 0xffffffffu : ((1u << live) - 1u);
    #pragma unroll
    for (int o = NX / 2; o > 0; o >>= 1) v = op(v, ke_shfl_xor(mask, v, o));
    return v;
}"""


def _row_allreduce(nx: int, rows: int) -> bool:
    """Whether ke_row_allreduce (shuffles only) combines over nx lanes: rows of 2..16 lanes inside a warp."""
    return 1 < nx < 32 and 32 % nx == 0 and rows > 1


def _uses_wmma(k: Kernel) -> bool:
    return any(isinstance(s, WARP_STMTS) for s in walk(k.body))


def _allreduce_scratch(nx: int, rows: int) -> int:
    """Elements of shared scratch ke_allreduce<nx, rows> needs (mirrors the template above)."""
    if nx % 32 == 0:
        return rows * (nx // 32)
    if rows == 1:
        return (nx + 31) // 32
    return nx * rows


# ----------------------------------------------------------------------------- small helpers
def _comment_text(text: str) -> str:
    """User text made safe for a /* */ comment (c.comment_text: one line, no comment delimiters, no
    trailing line splice), and ASCII only for nvcc."""
    from .c import comment_text
    return comment_text(str(text).replace("→", "->")).encode("ascii", "replace").decode("ascii")


def _float_literal(value: float, dtype: str) -> str:
    v = float(value)
    if dtype == "f64":
        if math.isnan(v):
            return "__longlong_as_double(0x7ff8000000000000LL)"
        if math.isinf(v):
            return "__longlong_as_double(0x7ff0000000000000LL)" if v > 0 else "__longlong_as_double(0xfff0000000000000ULL)"
        s = repr(v)
        return s if any(c in s for c in ".en") else s + ".0"
    if math.isnan(v):
        return "__int_as_float(0x7fc00000)"
    if math.isinf(v):
        return "__int_as_float(0x7f800000)" if v > 0 else "__int_as_float(0xff800000)"
    import numpy as np
    s = repr(float(np.float32(v)))  # shortest text that reads back as the same float32
    if not any(c in s for c in ".e"):
        s += ".0"
    return s + "f"


def _const(c: Const) -> str:
    if c.dtype == "bool":
        return "true" if c.value else "false"
    if c.dtype in FLOAT_DTYPES:
        return _float_literal(c.value, c.dtype)
    v = int(c.value)
    suffix = "LL" if (c.dtype == "i64" or abs(v) > _INT32_MAX) else ""
    return f"({v}{suffix})" if v < 0 else f"{v}{suffix}"




# ----------------------------------------------------------------------------- the emitter
@dataclass
class _KernelEmitter:
    kernel: Kernel
    idx_t: str = "int"
    names: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    shared: dict[str, Buffer] = field(default_factory=dict)     # hoisted __shared__ arrays by C name
    reduce_scratch: dict[str, int] = field(default_factory=dict)  # compute type -> elements
    block: tuple[int, int, int] = (1, 1, 1)
    float4_lanes: frozenset[str] = frozenset()  # registers of the Float4Block being printed

    # -- names
    def name(self, raw: str) -> str:
        """C identifier for an IR name; 'ke_' is reserved for the generator's own helpers."""
        if raw not in self.names:
            self.names[raw] = not_generated(c_identifier(raw, "v"))
        return self.names[raw]

    # -- expressions
    def linear(self, buf: Buffer, indices: Sequence[Expr]) -> Expr:
        if len(indices) != len(buf.shape):
            raise VerificationError(f"kernel {self.kernel.name}: buffer {buf.name} has {len(buf.shape)} dims but is "
                                    f"indexed with {len(indices)} indices; the loop IR is malformed")
        return strided_index(buf, indices, "i64" if self.idx_t == "long long" else "i32")

    def access(self, buf: Buffer, indices: Sequence[Expr]) -> str:
        """The lvalue text of buf[indices] (storage type)."""
        if buf.scope == "local" and not buf.shape:
            return self.name(buf.name)
        return f"{self.name(buf.name)}[{self.expr(self.linear(buf, indices))}]"

    def load(self, e: Load) -> str:
        if e.buffer.name in self.float4_lanes:   # lane k of a float4 register: .x .y .z .w
            return f"ke_{e.buffer.name}.{'xyzw'[self.lane(e)]}"
        text = self.access(e.buffer, e.indices)
        if e.buffer.dtype in _NARROW and e.buffer.scope != "local":
            return f"{_TO_FLOAT[e.buffer.dtype]}({text})"
        return text

    def expr(self, e: Expr, parent: int = 0) -> str:
        if isinstance(e, Var):
            return self.name(e.name)
        if isinstance(e, Const):
            return _const(e)
        if isinstance(e, Load):
            return self.load(e)
        if isinstance(e, BinOp):
            if e.op in ("min", "max"):
                return f"ke_{e.op}({self.expr(e.a)}, {self.expr(e.b)})"
            if e.op == "%" and e.a.dtype in FLOAT_DTYPES:
                return f"ke_fmod({self.expr(e.a)}, {self.expr(e.b)})"
            p = PRECEDENCE[e.op]
            s = f"{self.expr(e.a, p)} {e.op} {self.expr(e.b, p + 1)}"
            return f"({s})" if p < parent else s
        if isinstance(e, UnOp):
            inner = self.expr(e.a, UNARY_PRECEDENCE)
            return ("-" if e.op == "neg" else "!") + inner
        if isinstance(e, Call):
            return self.call(e)
        if isinstance(e, Select):
            return f"({self.expr(e.cond, 1)} ? {self.expr(e.a, 1)} : {self.expr(e.b, 1)})"
        if isinstance(e, Cast):
            return self.cast(e)
        raise VerificationError(f"kernel {self.kernel.name}: CUDA codegen does not know expression {e!r}")

    def call(self, e: Call) -> str:
        args = ", ".join(self.expr(a) for a in e.args)
        dt = e.dtype
        if dt in ("i32", "i64") and e.fn in _MATH_INT:
            fn = _MATH_INT[e.fn]
        elif dt == "f64":
            fn = _MATH_F64[e.fn]
        else:
            # f16 computes in float; integer args of float functions are promoted by C
            fn = _MATH_F32[e.fn]
        return f"{fn}({args})"

    def cast(self, e: Cast) -> str:
        inner = self.expr(e.a)
        src = e.a.dtype
        if e.dtype == src and e.dtype in _ROUND and not isinstance(e.a, (Load, Const)):
            return f"{_ROUND[e.dtype]}((float)({inner}))"   # a computed f16/bf16/fp8 value rounds its float register
        if e.dtype == src:
            return inner
        if e.dtype == "bool":
            return f"({inner} != 0)"
        if e.dtype in _ROUND:
            return f"{_ROUND[e.dtype]}((float)({inner}))"
        return f"({_COMPUTE[e.dtype]})({inner})"

    # -- statements
    def emit(self, depth: int, text: str) -> None:
        self.lines.append("  " * depth + text)

    def stmts(self, body: Sequence[Stmt], depth: int) -> None:
        for i, s in enumerate(body):
            self.stmt(s, depth, last=(i == len(body) - 1))

    def stmt(self, s: Stmt, depth: int, last: bool = True) -> None:
        if isinstance(s, For):
            self.loop(s, depth, last)
        elif isinstance(s, Store):
            self.store(s, depth)
        elif isinstance(s, If):
            self.emit(depth, f"if ({self.expr(simplify_expr(s.cond))}) {{")
            self.stmts(s.then, depth + 1)
            if s.orelse:
                self.emit(depth, "} else {")
                self.stmts(s.orelse, depth + 1)
            self.emit(depth, "}")
        elif isinstance(s, Alloc):
            self.alloc(s.buffer, depth)
        elif isinstance(s, Barrier):
            self.emit(depth, "__syncthreads();")
        elif isinstance(s, ThreadAllReduce):
            self.allreduce(s, depth)
        elif isinstance(s, Comment):
            self.emit(depth, f"/* {_comment_text(s.text)} */")
        elif isinstance(s, WARP_STMTS):
            self.warp_op(s, depth)
        elif isinstance(s, Float4Block):
            self.float4(s, depth)
        else:
            raise VerificationError(f"kernel {self.kernel.name}: CUDA codegen does not know statement {s!r}")

    # -- tensor cores (nvcuda::wmma); every lane of the warp executes these together
    def frag(self, f: Fragment, index: Sequence[Expr]) -> str:
        return self.name(f.name) + "".join(f"[{self.expr(simplify_expr(i))}]" for i in index)

    def warp_op(self, s: Stmt, depth: int) -> None:
        if isinstance(s, FragmentAlloc):
            f = s.fragment
            if f.dtype not in _FRAG_TYPES:
                raise VerificationError(f"kernel {self.kernel.name}: WMMA fragment {f.name} of {f.dtype}; "
                                        f"only f16 operands and f32 accumulators are generated")
            m, n, k = 16, 16, 16
            lay = f", wmma::{f.layout}" if f.role != "accumulator" else ""
            dims = "".join(f"[{c}]" for c in f.count)
            self.emit(depth, f"wmma::fragment<wmma::{f.role}, {m}, {n}, {k}, {_FRAG_TYPES[f.dtype]}{lay}> "
                             f"{self.name(f.name)}{dims};")
        elif isinstance(s, FragmentFill):
            self.emit(depth, f"wmma::fill_fragment({self.frag(s.fragment, s.index)}, {_const(s.value)});")
        elif isinstance(s, FragmentLoad):
            if s.fragment.role == "accumulator":
                raise VerificationError(f"kernel {self.kernel.name}: loading accumulator fragment "
                                        f"{s.fragment.name} is not generated; fill it instead")
            o = s.origin
            self.emit(depth, f"wmma::load_matrix_sync({self.frag(s.fragment, s.index)}, "
                             f"&{self.access(o.buffer, o.indices)}, {o.buffer.shape[-1]});")
        elif isinstance(s, Mma):
            c = self.frag(s.c, s.c_index)
            self.emit(depth, f"wmma::mma_sync({c}, {self.frag(s.a, s.a_index)}, {self.frag(s.b, s.b_index)}, {c});")
        elif isinstance(s, FragmentStore):
            o = s.origin
            if o.buffer.dtype != "f32":
                raise VerificationError(f"kernel {self.kernel.name}: accumulator {s.fragment.name} stored to "
                                        f"{o.buffer.dtype} buffer {o.buffer.name}; WMMA stores f32 here")
            self.emit(depth, f"wmma::store_matrix_sync(&{self.access(o.buffer, o.indices)}, "
                             f"{self.frag(s.fragment, s.index)}, {o.buffer.shape[-1]}, wmma::mem_row_major);")

    def store(self, s: Store, depth: int) -> None:
        acc = fma_accumulation(s, self.kernel.kind) if s.buffer.dtype in ("f32", "f64") else None
        if acc is not None:   # one rounding, as cuBLAS accumulates; the rest is built --fmad=false
            fn = "fmaf" if s.buffer.dtype == "f32" else "fma"
            value = f"{fn}({', '.join(self.expr(simplify_expr(x)) for x in acc)})"
        else:
            value = self.expr(simplify_expr(s.value))
        if s.buffer.dtype in _NARROW and s.buffer.scope != "local":
            value = f"{_FROM_FLOAT[s.buffer.dtype]}({value})"
        self.emit(depth, f"{self.access(s.buffer, s.indices)} = {value};")

    def alloc(self, b: Buffer, depth: int) -> None:
        if b.scope == "shared":
            self.shared.setdefault(self.name(b.name), b)  # declared at the kernel's top
            return
        if b.scope == "local":
            ctype = _COMPUTE[b.dtype]  # registers hold the compute type (f16 as float)
            if b.shape:
                self.emit(depth, f"{ctype} {self.name(b.name)}[{b.size}];")
            else:
                self.emit(depth, f"{ctype} {self.name(b.name)};")
            return
        raise VerificationError(f"kernel {self.kernel.name}: Alloc of global buffer {b.name}; global temporaries "
                                f"are Program.temps allocated by the backend")

    def var_type(self, v: Var) -> str:
        return "long long" if (v.dtype == "i64" or self.idx_t == "long long") else "int"

    def loop(self, f: For, depth: int, last: bool) -> None:
        v = self.name(f.var.name)
        t = self.var_type(f.var)
        if f.bound:
            # Not a loop: the launch makes `extent` blocks/threads along this axis.
            if not last:
                self.emit(depth, "{")
                depth += 1
            self.emit(depth, f"const {t} {v} = {f.kind};  /* {f.kind} in [0, {f.extent}) */")
            self.stmts(f.body, depth)
            if not last:
                self.emit(depth - 1, "}")
            return
        if f.kind == "unrolled":
            self.emit(depth, "#pragma unroll")
        elif f.kind == "vectorized":
            self.emit(depth, "/* vectorized: not provably float4-able here, so an unrolled scalar loop */")
            self.emit(depth, "#pragma unroll")
        elif f.kind == "parallel":
            self.emit(depth, "/* parallel (a CPU loop kind): runs serially in each CUDA thread */")
        self.emit(depth, f"for ({t} {v} = 0; {v} < {_const(Const(f.extent, 'i64' if t == 'long long' else 'i32'))}; "
                         f"++{v}) {{")
        self.stmts(f.body, depth + 1)
        self.emit(depth, "}")

    def allreduce(self, s: ThreadAllReduce, depth: int) -> None:
        if s.axis != "threadIdx.x":
            raise VerificationError(f"kernel {self.kernel.name}: ThreadAllReduce over {s.axis}; only threadIdx.x "
                                    f"is supported by CUDA codegen")
        if s.op not in ("sum", "max", "min"):
            raise VerificationError(f"kernel {self.kernel.name}: unknown reduction {s.op!r}")
        if s.buffer.shape:
            raise VerificationError(f"kernel {self.kernel.name}: ThreadAllReduce buffer {s.buffer.name} must be 0-d")
        nx, ny, nz = self.block
        rows = ny * nz
        b = self.access(s.buffer, ())
        if _row_allreduce(nx, rows):
            self.emit(depth, f"{b} = ke_row_allreduce<{nx}, {rows}>({b}, ke_op_{s.op}());")
            return
        ctype = _COMPUTE[s.buffer.dtype]
        need = _allreduce_scratch(nx, rows)
        self.reduce_scratch[ctype] = max(self.reduce_scratch.get(ctype, 0), need)
        scratch = f"ke_red_{ctype.replace(' ', '_')}"
        self.emit(depth, f"{b} = ke_allreduce<{nx}, {rows}>({b}, {scratch}, ke_op_{s.op}());")

    # -- float4 blocks (passes/vectorize_cuda.py): registers are ke_<name> (float4 loads) and ke_<name>_<lane>
    def lane(self, e: Load | Store) -> int:
        ix = e.indices[0] if len(e.indices) == 1 else None
        if not (isinstance(ix, Const) and 0 <= int(ix.value) < FLOAT4_LANES):
            raise VerificationError(f"kernel {self.kernel.name}: float4 register {e.buffer.name} must be indexed "
                                    f"by a constant lane in [0, {FLOAT4_LANES})")
        return int(ix.value)

    def float4(self, b: Float4Block, depth: int) -> None:
        self.emit(depth, f"{{  /* vectorized {self.name(b.var.name)} in [0, {FLOAT4_LANES}): float4 loads/stores */")
        d = depth + 1
        self.float4_lanes = frozenset(ld.register.name for ld in b.loads)
        stored = {st.register.name for st in b.stores}
        for ld in b.loads:
            self.emit(d, f"const float4 ke_{ld.register.name} = *reinterpret_cast<const float4*>("
                         f"{self.name(ld.buffer.name)} + {self.expr(ld.base)});")
        for s in b.lanes:
            if isinstance(s, Store) and s.buffer.name in stored:
                self.emit(d, f"const float ke_{s.buffer.name}_{self.lane(s)} = {self.expr(s.value)};")
            else:
                self.stmt(s, d)
        for st in b.stores:
            lanes = ", ".join(f"ke_{st.register.name}_{k}" for k in range(FLOAT4_LANES))
            self.emit(d, f"*reinterpret_cast<float4*>({self.name(st.buffer.name)} + {self.expr(st.base)}) = "
                         f"make_float4({lanes});")
        self.float4_lanes = frozenset()
        self.emit(depth, "}")


def _kernel_header(k: Kernel, name: str, launch: dict[str, Any]) -> list[str]:
    out = [f"/* kernel {_comment_text(name)}: fusion group {_comment_text(k.group or '-')} ({_comment_text(k.kind)})"]
    if k.ops:
        out.append(" * ops: " + _comment_text(" -> ".join(k.ops)))
    for line in k.source_lines:
        out.append(" * from: " + _comment_text(line))
    if k.schedule:
        out.append(" * schedule: " + _comment_text("; ".join(k.schedule)))
    out.append(f" * launch: grid {launch['grid']}, block {launch['block']}, "
               f"static shared {launch['shared_bytes']} bytes")
    out.append(" */")
    return out


def _generate_kernel(k: Kernel, arch: str) -> GeneratedKernel:
    launch = k.launch()
    block = tuple(int(b) for b in launch["block"])
    threads = block[0] * block[1] * block[2]
    if threads > MAX_THREADS_PER_BLOCK:
        raise ScheduleError(f"kernel {k.name}: block {block} has {threads} threads; CUDA allows at most "
                            f"{MAX_THREADS_PER_BLOCK} per block — use a smaller thread split")
    em = _KernelEmitter(k, idx_t="long long" if kernel_index_dtype(k) == "i64" else "int", block=block)
    name = em.name(k.name)

    params = []
    for p in k.params:
        if p.scope != "global":
            raise VerificationError(f"kernel {k.name}: parameter {p.name} has scope {p.scope}; params are global")
        const = "" if p.name in k.outputs else "const "
        params.append(f"{const}{_STORAGE[p.dtype]}* __restrict__ {em.name(p.name)}")

    em.stmts(k.body, 1)
    body = em.lines

    top: list[str] = []
    # WMMA loads/stores need 256-bit aligned tile pointers (tile offsets are multiples of 16 elements)
    align = "__align__(32) " if _uses_wmma(k) else ""
    for cname, b in sorted(em.shared.items()):
        top.append(f"  __shared__ {align}{_STORAGE[b.dtype]} {cname}[{max(b.size, 1)}];")
    for ctype, n in sorted(em.reduce_scratch.items()):
        top.append(f"  __shared__ {ctype} ke_red_{ctype.replace(' ', '_')}[{n}];  /* block-reduction scratch */")
    import numpy as np
    scratch_bytes = sum(n * np.dtype({"float": "float32", "double": "float64", "int": "int32",
                                      "long long": "int64", "bool": "bool"}[t]).itemsize
                        for t, n in em.reduce_scratch.items())
    shared_bytes = k.shared_bytes() + scratch_bytes
    full_launch = {"grid": tuple(int(g) for g in launch["grid"]), "block": block,
                   "shared_bytes": int(shared_bytes), "dynamic_shared_bytes": 0}

    sig = f'extern "C" __global__ void __launch_bounds__({threads}) {name}(' + ", ".join(params) + ") {"
    lines = _kernel_header(k, name, full_launch) + [sig] + top + body + ["}"]
    return GeneratedKernel(name=name, language="cuda", source="\n".join(lines), launch=full_launch, kernel=k,
                           arch=arch)


def _custom_kernel(k: Kernel, arch: str, done: list[GeneratedKernel]) -> GeneratedKernel:
    """A custom kernel's CUDA: the user's __device__ function (once per program) and a __global__ wrapper.
    Without a cuda_source the wrapper is empty and says so (the cuda backend refuses to run it; sim runs
    the reference)."""
    from . import custom
    spec = k.meta_dict()["custom"]
    em = _KernelEmitter(k, idx_t="int", block=(custom.CUDA_BLOCK, 1, 1))
    name = em.name(k.name)
    pnames = [em.name(p.name) + ("_" if em.name(p.name) == spec.name else "") for p in k.params]
    if spec.cuda_source is None:
        params = ", ".join(f"{'' if p.name in k.outputs else 'const '}{_STORAGE[p.dtype]}* {n}"
                           for p, n in zip(k.params, pnames))
        src = (f"/* kernel {_comment_text(name)}: custom kernel {_comment_text(spec.name)} has no cuda_source; "
               f"the cuda target cannot run it (sim runs its reference) */\n"
               f'extern "C" __global__ void {name}({params}) {{ }}\n')
        launch = {"grid": (1, 1, 1), "block": (1, 1, 1), "shared_bytes": 0, "dynamic_shared_bytes": 0}
    else:
        first = not any(g.kernel.kind == "custom" and g.kernel.meta_dict()["custom"] is spec for g in done)
        src, launch = custom.emit_cuda(k, name, pnames, include_source=first)
    return GeneratedKernel(name=name, language="cuda", source=src, launch=launch, kernel=k, arch=arch)


def _exprs(body) -> list[Expr]:
    """Every expression in `body` (casts to bf16/fp8 need the rounding helpers even without such buffers)."""
    from ..loopir import walk_expr
    out = []
    for s in walk(body):
        for v in vars(s).values() if hasattr(s, "__dict__") else ():
            if isinstance(v, Expr):
                out.extend(walk_expr(v))
    return out


def generate_cuda(program: Program, arch: str = "sm_80") -> Codegen:
    """CUDA C for every kernel of a tiled Program (see the module docstring for a before/after).

    Kernels whose loops are not bound to blockIdx/threadIdx still compile (they run as one
    thread); the tiling pass is what makes them parallel. A Program that has not been through the
    `vectorized` stage (hand-built, or compiled with stop_after="tiled") gets its float4 rewrite here,
    so it prints as the pipeline's would; on the pipeline's program that changes nothing.
    """
    program = vectorize_cuda(program)
    kernels: list[GeneratedKernel] = []
    for k in program.kernels:
        kernels.append(_custom_kernel(k, arch, kernels) if k.kind == "custom" else _generate_kernel(k, arch))
    seen: set[str] = set()
    for g in kernels:
        if g.name in seen:
            raise VerificationError(f"two kernels are both named {g.name!r} in program {program.name}; "
                                    f"kernel names must be unique")
        seen.add(g.name)
    prelude = PRELUDE + (WMMA_PRELUDE if any(_uses_wmma(k) for k in program.kernels) else "")
    if any("ke_row_allreduce<" in g.source for g in kernels):
        prelude += "\n" + ROW_ALLREDUCE_PRELUDE
    used = {b.dtype for k in program.kernels for b in (*k.params, *(a.buffer for a in walk(k.body)
                                                                      if isinstance(a, Alloc)))}
    used |= {e.dtype for k in program.kernels for e in _exprs(k.body)}
    if "bf16" in used:
        prelude += "\n" + BF16_PRELUDE
    if used & {"f8e4m3", "f8e5m2"}:
        prelude += "\n" + FP8_PRELUDE
    return Codegen(language="cuda", prelude=prelude, kernels=kernels, program=program)
