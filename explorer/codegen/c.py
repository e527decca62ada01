"""C code generation: CPU loop IR (the `vectorized` stage) → one C translation unit with OpenMP pragmas.

>>> from explorer.loopir import Buffer, For, Kernel, Program, Store, Var, Const, BinOp
>>> i = Var("i"); x = Buffer("x", (8,)); y = Buffer("y", (8,))
>>> k = Kernel("double_it", (x, y), (For(i, 8, (Store(y, (i,), BinOp("*", x[i], Const(2.0, "f32"))),),
...            kind="parallel"),), outputs=("y",))
>>> cg = generate_c(Program("f", (k,), (x,), (y,)))
>>> print(cg.kernels[0].source.splitlines()[-5])
  #pragma omp parallel for schedule(guided) num_threads(ke_num_threads)

Mapping (before → after):

    for i in parallel(8):              #pragma omp parallel for schedule(guided)
      y[i] = x[i] * 2.0f       →       for (int i = 0; i < 8; ++i) {
                                         y[i] = x[i] * 2.0f;
                                       }

Register tiles (matmul accumulators): a MicroKernel statement (made by the `vectorized` stage,
passes/vectorize_cpu.py) becomes a noinline function with its register tiles in GCC vector
variables (`ke_v8f`), vector loads where the lane index is contiguous, broadcasts elsewhere:

    microkernel mk0 (register tiles acc[0, 8] as f32x8):     static void ke_<kernel>_mk0(float* acc, ...) {
      for k in range(K):                                       ke_v8f acc_r0 = ke_load_v8f(&acc[0]); ...
        for lane in vectorized(8):                  →          for (int k = 0; k < K; ++k) {
          acc[0, lane] = acc[0, lane] + x[0, k] * w[k, lane]     acc_r0 = (acc_r0 + (x[k] * ke_load_v8f(&w[k * 8])));
        for lane in vectorized(8):                                acc_r1 = (acc_r1 + (x[K + k] * ke_load_v8f(&w[k * 8]))); }
          acc[1, lane] = acc[1, lane] + x[1, k] * w[k, lane]   ke_store_v8f(&acc[0], acc_r0); ... }

Lane accumulators of row reductions (`acc lanes`, the same stage) are ordinary loops here.

Loop kinds: serial → plain for; parallel → `omp parallel for` (directly nested parallel
loops collapse; deeper ones run serially inside the outer team); vectorized → `omp simd`
(with a `reduction(+:acc)` clause for scalar sums, dropped when the loop carries any other
dependency); unrolled → `#pragma GCC unroll`. Loops bound to blockIdx/threadIdx, barriers and
thread all-reduces are CUDA-only: the C backend needs a CPU schedule (CompileError).

NumPy semantics are kept by default: min/max propagate NaN, and f32 exp/log/tanh/sigmoid use
branch-free inline implementations in the prelude (gcc vectorizes them without
-ffast-math, unlike libm's expf/tanhf). `fast_math=True` calls libm instead and the CPU
backend adds -ffast-math, so gcc uses libmvec's vector versions (NaN/Inf no longer honoured).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from .. import loopir as L
from ..errors import CompileError, DTypeError
from ..naming import Names, c_identifier, not_generated, unique
from ..passes.vectorize_cpu import C_VECTOR_TYPES, const_int, guard_bound, simd_reduction, uses_var
from . import Codegen, GeneratedKernel, fma_accumulation

# storage type (memory) and compute type (registers) per dtype: f16 is stored as _Float16
# (gcc >= 12 on x86-64) and computed in float, as numpy does per op.
# bf16 is stored as its bit pattern (uint16_t) and converted in software (ke_bf16_to_f32, and
# ke_f32_to_bf16 rounding to nearest even), so any C compiler builds it; computed in float like f16.
STORAGE_TYPE = {"f32": "float", "f16": "_Float16", "f64": "double", "i32": "int32_t", "i64": "int64_t",
                "bool": "bool", "bf16": "uint16_t"}
COMPUTE_TYPE = {"f32": "float", "f16": "float", "f64": "double", "i32": "int32_t", "i64": "int64_t",
                "bool": "bool", "bf16": "float"}
FLOATS = ("f32", "f16", "f64", "bf16")
BF16_PRELUDE = """\
/* bfloat16 in software: the top 16 bits of a float. f32 -> bf16 rounds to nearest even; NaN stays NaN. */
static inline float ke_bf16_to_f32(uint16_t h) { ke_bits32 u; u.i = (int32_t)((uint32_t)h << 16); return u.f; }
static inline uint16_t ke_f32_to_bf16(float f) {
  uint32_t b = (uint32_t)ke_to_bits(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40u);
  b += 0x7fffu + ((b >> 16) & 1u);
  return (uint16_t)(b >> 16); }
static inline float ke_round_bf16(float f) { return ke_bf16_to_f32(ke_f32_to_bf16(f)); }
"""


def _vector_types(nbytes: int) -> str:
    """C typedefs, unaligned load/store and splat helpers of the GCC vector types of `nbytes` bytes
    (ke_v8f/ke_v4d/ke_v8i/ke_v4l for 32; ke_v16f/... for 64). The *_u types are unaligned and may_alias."""
    lines: list[list[str]] = [[], [], [], [], []]
    for ctype, size, suffix in (("float", 4, "f"), ("double", 8, "d"), ("int32_t", 4, "i"), ("int64_t", 8, "l")):
        n = nbytes // size
        v = f"ke_v{n}{suffix}"
        lines[0].append(f"typedef {ctype} {v} __attribute__((vector_size({nbytes})));")
        lines[1].append(f"typedef {ctype} {v}_u __attribute__((vector_size({nbytes}), aligned({size}), may_alias));")
        lines[2].append(f"static inline {v} ke_load_v{n}{suffix}(const {ctype}* p) {{ return *(const {v}_u*)p; }}")
        lines[3].append(f"static inline void ke_store_v{n}{suffix}({ctype}* p, {v} v) {{ *({v}_u*)p = v; }}")
        lines[4].append(f"static inline {v} ke_splat_v{n}{suffix}({ctype} s) {{ return ({v}){{{', '.join(['s'] * n)}}}; }}")
    return "".join(line + "\n" for group in lines for line in group)


def _vector_minmax(nbytes: int) -> str:
    """Lane-wise max/min of the `nbytes`-byte vector types (KE_VSEL blends; floats propagate NaN like ke_maxf)."""
    out = []
    for size, suffix, mask in ((4, "f", "i"), (8, "d", "l"), (4, "i", "i"), (8, "l", "l")):
        n = nbytes // size
        v, m = f"ke_v{n}{suffix}", f"ke_v{n}{mask}"
        for op, cmp in (("max", ">"), ("min", "<")):
            test = f"(a {cmp} b) | (a != a)" if suffix in "fd" else f"a {cmp} b"
            out.append(f"static inline {v} ke_{op}_v{n}{suffix}({v} a, {v} b) {{ {m} m = {test}; "
                       f"return KE_VSEL({v}, {m}, a, b); }}\n")
    return "".join(out)


# 64-byte vector types, in the prelude only when a kernel's schedule asks for them (vector_bytes 64)
WIDE_VECTOR_PRELUDE = """\
/* GCC vector types for 64-byte register tiles (AVX-512 zmm; gcc splits them on narrower ISAs). */
@VECTOR_TYPES_64@/* matmul accumulators only (as ke_fma_v8f): one rounding where the CPU has AVX-512 FMA */
#if defined(__AVX512F__) && defined(__x86_64__)
static inline ke_v16f ke_fma_v16f(ke_v16f a, ke_v16f b, ke_v16f c) { return __builtin_ia32_vfmaddps512_mask(a, b, c, -1, 4); }
static inline ke_v8d ke_fma_v8d(ke_v8d a, ke_v8d b, ke_v8d c) { return __builtin_ia32_vfmaddpd512_mask(a, b, c, -1, 4); }
#elif defined(__FMA__) && defined(__x86_64__)
static inline ke_v16f ke_fma_v16f(ke_v16f a, ke_v16f b, ke_v16f c) {
  for (int i = 0; i < 16; ++i) c[i] = __builtin_fmaf(a[i], b[i], c[i]);
  return c; }
static inline ke_v8d ke_fma_v8d(ke_v8d a, ke_v8d b, ke_v8d c) {
  for (int i = 0; i < 8; ++i) c[i] = __builtin_fma(a[i], b[i], c[i]);
  return c; }
#else
static inline ke_v16f ke_fma_v16f(ke_v16f a, ke_v16f b, ke_v16f c) { return a * b + c; }
static inline ke_v8d ke_fma_v8d(ke_v8d a, ke_v8d b, ke_v8d c) { return a * b + c; }
#endif
@VECTOR_MINMAX_64@"""
WIDE_VECTOR_PRELUDE = WIDE_VECTOR_PRELUDE.replace("@VECTOR_TYPES_64@", _vector_types(64)).replace(
    "@VECTOR_MINMAX_64@", _vector_minmax(64))
INDEX_LIMIT = 2 ** 31  # a buffer this large needs 64-bit index arithmetic

PRELUDE_HEAD = """\
/* Generated by kernel-explorer (C backend). One function per fused kernel.
 * Build: cc -O3 -march=native -fopenmp -ffp-contract=off -fno-math-errno -fno-trapping-math -shared -fPIC */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* OpenMP team size of the next kernel call: set by the CPU backend's thread policy before each
 * call (1 = serial: small kernels, or no free core). See docs/CPU_THREADS.md. */
int ke_num_threads = 1;
"""

# Branch-free f32 math that gcc vectorizes without -ffast-math. Special inputs (NaN, ±Inf,
# overflow, zero, negatives) are handled by selects, so results match numpy exactly there.
# Polynomials: Cephes expf/logf (as in sse_mathfun), a degree-8 Taylor expm1 for tanh.
PRELUDE_MATH = """\
typedef union { float f; int32_t i; } ke_bits32;

static inline float ke_from_bits(int32_t i) { ke_bits32 u; u.i = i; return u.f; }
static inline int32_t ke_to_bits(float f) { ke_bits32 u; u.f = f; return u.i; }

/* NaN-propagating min/max, like np.minimum / np.maximum (selects, so they vectorize). */
static inline float ke_maxf(float a, float b) { return ((a > b) | (a != a)) ? a : b; }
static inline float ke_minf(float a, float b) { return ((a < b) | (a != a)) ? a : b; }
static inline double ke_max_f64(double a, double b) { return ((a > b) | (a != a)) ? a : b; }
static inline double ke_min_f64(double a, double b) { return ((a < b) | (a != a)) ? a : b; }
static inline int32_t ke_max_i32(int32_t a, int32_t b) { return a > b ? a : b; }
static inline int32_t ke_min_i32(int32_t a, int32_t b) { return a < b ? a : b; }
static inline int64_t ke_max_i64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t ke_min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int32_t ke_abs_i32(int32_t a) { return a < 0 ? -a : a; }
/* C division for data-dependent divisors without the traps: x/0 -> 0 (as numpy), INT_MIN/-1 wraps. */
static inline int32_t ke_div_i32(int32_t a, int32_t b) {
  return b == 0 ? 0 : (b == -1 ? (int32_t)(0u - (uint32_t)a) : a / b); }
static inline int32_t ke_mod_i32(int32_t a, int32_t b) { return (b == 0 || b == -1) ? 0 : a % b; }
static inline int64_t ke_div_i64(int64_t a, int64_t b) {
  return b == 0 ? 0 : (b == -1 ? (int64_t)(0ull - (uint64_t)a) : a / b); }
static inline int64_t ke_mod_i64(int64_t a, int64_t b) { return (b == 0 || b == -1) ? 0 : a % b; }
static inline int64_t ke_abs_i64(int64_t a) { return a < 0 ? -a : a; }
/* np.power on integers: exact by squaring, wrapping like numpy (unsigned, so no signed-overflow UB);
 * a negative exponent gives 0 unless |base| is 1 (numpy raises there; the CUDA ke_ipow agrees). */
#define KE_IPOW(T, U) static inline T ke_pow_##T(T b, T e) { \
  if (e < 0) return b == 1 ? 1 : (b == -1 ? ((e & 1) ? -1 : 1) : 0); \
  U r = 1, x = (U)b; \
  while (e) { if (e & 1) r *= x; x *= x; e >>= 1; } \
  return (T)r; }
KE_IPOW(int32_t, uint32_t)
KE_IPOW(int64_t, uint64_t)

/* a*b + c with one rounding where the CPU has FMA. Everything else is built with -ffp-contract=off
 * (NumPy's separate roundings); these are called only where no NumPy rounding is lost: accumulators
 * of a matmul (as NumPy's BLAS accumulates) or of a reduction (whose order already differs from
 * NumPy's pairwise sum), and the polynomial steps of our own exp/expm1/log below, which are
 * approximations of ours (without FMA, softmax 4096x1024 ran 1.25x slower). */
#if defined(__FMA__) && defined(__x86_64__)
static inline float ke_fmaf(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
static inline double ke_fma(double a, double b, double c) { return __builtin_fma(a, b, c); }
#else
static inline float ke_fmaf(float a, float b, float c) { return a * b + c; }
static inline double ke_fma(double a, double b, double c) { return a * b + c; }
#endif

/* exp(x), f32: n = round(x/ln2), r = x - n*ln2 (Cody-Waite), exp(r) by a degree-7
 * polynomial, scaled by 2^n in two steps so subnormal results come out right.
 * NaN -> NaN, x > 89 (overflow) -> +Inf, x < -104 (underflow) -> 0.
 * Computed on x itself and the out-of-range lanes replaced at the end (not a clamp of x first): the
 * clamp sat at the head of the dependency chain, and this order made softmax 4096x1024 ~8% faster
 * (what gcc made of the old contracted source); n comes from kf's low bits (1.5*2^23 + n), defined
 * for any x, where (int32_t)k was not for the lanes replaced. Bit for bit the clamped version's
 * results over all 2^32 inputs, vectorized and scalar, with and without FMA. */
static inline float ke_expf(float x) {
  float kf = ke_fmaf(x, 1.44269504088896341f, 12582912.0f);   /* 1.5*2^23 + round(x/ln2) */
  float k = kf - 12582912.0f;
  float r = ke_fmaf(-k, 0.693359375f, x);   /* exact: 0.693359375 has 9 bits */
  r = ke_fmaf(k, 2.12194440e-4f, r);
  float z = r * r;
  float p = 1.9875691500e-4f;
  p = ke_fmaf(p, r, 1.3981999507e-3f);
  p = ke_fmaf(p, r, 8.3334519073e-3f);
  p = ke_fmaf(p, r, 4.1665795894e-2f);
  p = ke_fmaf(p, r, 1.6666665459e-1f);
  p = ke_fmaf(p, r, 5.0000001201e-1f);
  p = ke_fmaf(p, z, r) + 1.0f;
  int32_t n = ke_to_bits(kf) - 0x4B400000;                  /* bits of 12582912.0f */
  int32_t n1 = n >> 1;
  int32_t n2 = n - n1;
  float y = p * ke_from_bits((int32_t)((uint32_t)(n1 + 127) << 23))
              * ke_from_bits((int32_t)((uint32_t)(n2 + 127) << 23));
  y = x > 89.0f ? INFINITY : (x < -104.0f ? 0.0f : y);
  return x != x ? x : y;
}

/* exp(x) - 1 for 0 <= x <= 20 without cancellation near 0 (used by tanh). */
static inline float ke_expm1_pos(float x) {
  float k = ke_fmaf(x, 1.44269504088896341f, 12582912.0f) - 12582912.0f;
  float r = ke_fmaf(-k, 0.693359375f, x);
  r = ke_fmaf(k, 2.12194440e-4f, r);
  float p = 2.48015873e-5f;           /* 1/8! */
  p = ke_fmaf(p, r, 1.98412698e-4f);         /* 1/7! */
  p = ke_fmaf(p, r, 1.38888889e-3f);
  p = ke_fmaf(p, r, 8.33333333e-3f);
  p = ke_fmaf(p, r, 4.16666667e-2f);
  p = ke_fmaf(p, r, 1.66666667e-1f);
  p = ke_fmaf(p, r, 0.5f);
  p = ke_fmaf(p, r * r, r);          /* expm1(r) */
  float s = ke_from_bits(((int32_t)k + 127) << 23);  /* 2^k */
  return ke_fmaf(s, p, s - 1.0f);
}

/* tanh(x) = sign(x) * em / (em + 2), em = expm1(2|x|); |x| > 9 -> ±1; NaN -> NaN. */
static inline float ke_tanhf(float x) {
  float t = fabsf(x);
  float tc = t > 9.0f ? 9.0f : t;
  float em = ke_expm1_pos(tc + tc);
  float y = em / (em + 2.0f);
  y = t > 9.0f ? 1.0f : y;
  y = copysignf(y, x);
  return x != x ? x : y;
}

/* log(x), f32: x = m * 2^e with m in [sqrt(.5), sqrt(2)), Cephes polynomial for log(m).
 * Subnormals are scaled by 2^23 first. x<0 or NaN -> NaN, 0 -> -Inf, +Inf -> +Inf. */
static inline float ke_logf(float x) {
  bool sub = x < 1.17549435e-38f;
  float xs = sub ? x * 8388608.0f : x;
  int32_t bits = ke_to_bits(xs);
  float e = (float)(((bits >> 23) & 0xff) - 126) - (sub ? 23.0f : 0.0f);
  float m = ke_from_bits((bits & 0x007fffff) | 0x3f000000);  /* [0.5, 1) */
  bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  float f = small ? (m + m) - 1.0f : m - 1.0f;
  float z = f * f;
  float y = 7.0376836292e-2f;
  y = ke_fmaf(y, f, -1.1514610310e-1f);
  y = ke_fmaf(y, f, 1.1676998740e-1f);
  y = ke_fmaf(y, f, -1.2420140846e-1f);
  y = ke_fmaf(y, f, 1.4249322787e-1f);
  y = ke_fmaf(y, f, -1.6668057665e-1f);
  y = ke_fmaf(y, f, 2.0000714765e-1f);
  y = ke_fmaf(y, f, -2.4999993993e-1f);
  y = ke_fmaf(y, f, 3.3333331174e-1f);
  y = y * f * z;
  y = ke_fmaf(e, -2.12194440e-4f, y);
  y = ke_fmaf(-0.5f, z, y);
  float r = f + y;
  r = ke_fmaf(e, 0.693359375f, r);
  r = x == INFINITY ? x : r;
  r = x == 0.0f ? -INFINITY : r;
  r = (x < 0.0f || x != x) ? NAN : r;
  return r;
}

/* GCC vector types for register tiles (AVX2: 32 bytes). The *_u types are unaligned and
 * may_alias, so loads/stores through them are valid at any float address. */
@VECTOR_TYPES_32@/* vector accumulators of register tiles: one rounding where the CPU has FMA (as ke_fmaf) */
#if defined(__FMA__) && defined(__x86_64__)
static inline ke_v8f ke_fma_v8f(ke_v8f a, ke_v8f b, ke_v8f c) { return __builtin_ia32_vfmaddps256(a, b, c); }
static inline ke_v4d ke_fma_v4d(ke_v4d a, ke_v4d b, ke_v4d c) { return __builtin_ia32_vfmaddpd256(a, b, c); }
#else
static inline ke_v8f ke_fma_v8f(ke_v8f a, ke_v8f b, ke_v8f c) { return a * b + c; }
static inline ke_v4d ke_fma_v4d(ke_v4d a, ke_v4d b, ke_v4d c) { return a * b + c; }
#endif
/* lane-wise NaN-propagating max/min (as ke_maxf): a comparison gives a 0/-1 lane mask, then a blend */
#define KE_VSEL(T, M, a, b) ((T)(((M)(a) & m) | ((M)(b) & ~m)))
@VECTOR_MINMAX_32@
static inline float ke_sigmoidf(float x) { return 1.0f / (1.0f + ke_expf(-x)); }
static inline float ke_rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double ke_sigmoid_f64(double x) { return 1.0 / (1.0 + exp(-x)); }
static inline double ke_rsqrt_f64(double x) { return 1.0 / sqrt(x); }

/* fast-math variants: libm calls, which gcc maps to libmvec under -ffast-math. */
static inline float ke_fast_sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
"""
PRELUDE_MATH = PRELUDE_MATH.replace("@VECTOR_TYPES_32@", _vector_types(32)).replace(
    "@VECTOR_MINMAX_32@", _vector_minmax(32))

# (fn, compute dtype) → C spelling; '{0}', '{1}' are the arguments.
_MATH_F32 = {"exp": "ke_expf({0})", "log": "ke_logf({0})", "tanh": "ke_tanhf({0})", "sqrt": "sqrtf({0})",
             "rsqrt": "ke_rsqrtf({0})", "abs": "fabsf({0})", "erf": "erff({0})", "pow": "powf({0}, {1})",
             "sin": "sinf({0})", "cos": "cosf({0})", "floor": "floorf({0})", "sigmoid": "ke_sigmoidf({0})"}
_MATH_F32_FAST = {**_MATH_F32, "exp": "expf({0})", "log": "logf({0})", "tanh": "tanhf({0})",
                  "sigmoid": "ke_fast_sigmoidf({0})"}
_MATH_F64 = {"exp": "exp({0})", "log": "log({0})", "tanh": "tanh({0})", "sqrt": "sqrt({0})",
             "rsqrt": "ke_rsqrt_f64({0})", "abs": "fabs({0})", "erf": "erf({0})", "pow": "pow({0}, {1})",
             "sin": "sin({0})", "cos": "cos({0})", "floor": "floor({0})", "sigmoid": "ke_sigmoid_f64({0})"}

# Names a user buffer/loop variable must not take (they would shadow what kernels call).
_RESERVED = frozenset("""int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t size_t bool true false
NAN INFINITY _Float16 main memcpy memset exp expf log logf tanh tanhf sqrt sqrtf fabs fabsf erf erff pow powf sin sinf
cos cosf floor floorf copysign copysignf fmod fmodf omp_get_num_threads omp_get_thread_num ke_num_threads fma fmaf""".split())


def comment_text(text: str) -> str:
    """User text made safe inside a /* */ comment: one line, no comment terminators or control chars."""
    s = "".join(ch if (ch.isprintable() and ch not in "\r\n") else " " for ch in str(text))
    s = s.replace("*/", "* /").replace("/*", "/ *")
    # a trailing backslash would splice the next line into this one
    return s.rstrip().rstrip("\\")


class _Names(Names):
    """explorer.naming.Names for C: a user buffer or variable never takes a name kernels call."""

    reserved = _RESERVED


def _float_literal(value: float, dtype: str) -> str:
    v = float(value)
    if np.isnan(v):
        return "NAN" if dtype != "f64" else "((double)NAN)"
    if np.isinf(v):
        s = "INFINITY" if dtype != "f64" else "((double)INFINITY)"
        return s if v > 0 else f"(-{s})"
    if dtype == "f64":
        s = repr(v)
    else:
        s = str(np.float32(np.float16(v) if dtype == "f16" else v))
    if not any(c in s for c in ".e"):
        s += ".0"
    s = s + ("f" if dtype != "f64" else "")
    return f"({s})" if s.startswith("-") else s


def _int_literal(value: int, dtype: str) -> str:
    v = int(value)
    s = f"INT64_C({v})" if dtype == "i64" else str(v)
    return f"({s})" if v < 0 and dtype != "i64" else s


@dataclass
class _KernelEmitter:
    kernel: L.Kernel
    fast_math: bool
    names: _Names = field(default_factory=_Names)
    lines: list[str] = field(default_factory=list)
    locals: dict[str, L.Buffer] = field(default_factory=dict)   # allocated buffers in scope
    wide: bool = False          # 64-bit index arithmetic
    in_parallel: int = 0
    fn_name: str = "k"
    helpers: list[str] = field(default_factory=list)   # micro-kernel functions emitted before the kernel

    # -- expressions -------------------------------------------------------------------------
    def index(self, buf: L.Buffer, indices: tuple[L.Expr, ...]) -> str:
        if len(indices) != len(buf.shape):
            raise CompileError(f"kernel {self.kernel.name}: {buf.name} has {len(buf.shape)} dimensions but is "
                               f"indexed with {len(indices)}; the loop IR is malformed (a lowering bug)")
        if not buf.shape:
            return "0"
        flat: L.Expr = indices[0]
        for ext, ix in zip(buf.shape[1:], indices[1:]):
            flat = L.BinOp("+", L.BinOp("*", flat, L.Const(ext, flat.dtype)), ix)
        return self.expr(L.simplify_expr(flat))

    def ref(self, buf: L.Buffer, indices: tuple[L.Expr, ...]) -> str:
        name = self.names.get("buf", buf.name)
        if buf.scope != "global" and not buf.shape:
            return name
        return f"{name}[{self.index(buf, indices)}]"

    def expr(self, e: L.Expr, prec: int = 0, cse: dict | None = None) -> str:
        if cse and e in cse:
            return cse[e]
        r = lambda x, p=0: self.expr(x, p, cse)  # noqa: E731
        if isinstance(e, L.Var):
            return self.names.get("var", e.name)
        if isinstance(e, L.Const):
            if e.dtype == "bool":
                return "true" if e.value else "false"
            if e.dtype in FLOATS:
                return _float_literal(e.value, e.dtype)
            return _int_literal(e.value, e.dtype)
        if isinstance(e, L.Load):
            s = self.ref(e.buffer, e.indices)
            if e.buffer.dtype == "f16" and e.buffer.scope == "global":
                return f"(float){s}" if prec < L.UNARY_PRECEDENCE else f"((float){s})"
            if e.buffer.dtype == "bf16" and e.buffer.scope == "global":
                return f"ke_bf16_to_f32({s})"
            return s
        if isinstance(e, L.BinOp):
            return self.binop(e, prec, r)
        if isinstance(e, L.UnOp):
            if e.op == "neg":
                s = f"-{r(e.a, L.UNARY_PRECEDENCE)}"
            elif e.op == "not":
                s = f"!{r(e.a, L.UNARY_PRECEDENCE)}"
            else:
                raise CompileError(f"unknown unary op {e.op!r} in kernel {self.kernel.name} (a lowering bug)")
            return f"({s})" if prec >= L.UNARY_PRECEDENCE else s
        if isinstance(e, L.Cast):
            if e.dtype == "bool":
                return f"({r(e.a, 4)} != 0)"
            if e.dtype == "bf16":   # rounds to bf16 (an op's result, or astype), computes on in float
                if e.a.dtype == "bf16" and isinstance(e.a, (L.Load, L.Const)):
                    return r(e.a, prec)
                return f"ke_round_bf16({r(e.a)})"
            # a cast to f16 rounds to half precision (as numpy's astype) but computes on in float
            u = L.UNARY_PRECEDENCE
            s = f"(float)(_Float16){r(e.a, u)}" if e.dtype == "f16" else f"({COMPUTE_TYPE[e.dtype]}){r(e.a, u)}"
            return f"({s})" if prec >= L.UNARY_PRECEDENCE else s
        if isinstance(e, L.Select):
            s = f"{r(e.cond, 1)} ? {r(e.a, 1)} : {r(e.b, 1)}"
            return f"({s})" if prec > 0 else s
        if isinstance(e, L.Call):
            return self.call(e, r)
        raise CompileError(f"kernel {self.kernel.name}: cannot generate C for expression {e!r} (a lowering bug)")

    def binop(self, e: L.BinOp, prec: int, r) -> str:
        dt = e.a.dtype
        if e.op in ("min", "max"):
            if dt == "bool":
                op = "&&" if e.op == "min" else "||"
                return self.binop(L.BinOp(op, e.a, e.b), prec, r)
            fn = {"f32": f"ke_{e.op}f", "f16": f"ke_{e.op}f", "bf16": f"ke_{e.op}f"}.get(dt, f"ke_{e.op}_{dt}")
            return f"{fn}({r(e.a)}, {r(e.b)})"
        if e.op == "%" and dt in FLOATS:
            return f"{'fmod' if dt == 'f64' else 'fmodf'}({r(e.a)}, {r(e.b)})"
        if e.op in ("/", "%") and dt in ("i32", "i64") and not (isinstance(e.b, L.Const) and int(e.b.value) > 0):
            # a data-dependent divisor: 0 or -1 would trap (SIGFPE) and kill the Python process
            return f"ke_{'div' if e.op == '/' else 'mod'}_{dt}({r(e.a)}, {r(e.b)})"
        if e.op not in L.PRECEDENCE:
            raise CompileError(f"unknown binary op {e.op!r} in kernel {self.kernel.name} (a lowering bug)")
        p = L.PRECEDENCE[e.op]
        s = f"{r(e.a, p)} {e.op} {r(e.b, p + 1)}"
        return f"({s})" if p < prec else s

    def call(self, e: L.Call, r) -> str:
        if e.fn not in L.MATH_FUNCTIONS:
            raise CompileError(f"kernel {self.kernel.name}: unknown math function {e.fn!r}; "
                               f"known: {', '.join(L.MATH_FUNCTIONS)}")
        dt = e.dtype
        if dt not in FLOATS:
            if e.fn == "abs" and dt in ("i32", "i64"):
                return f"ke_abs_{dt}({r(e.args[0])})"
            if e.fn == "pow" and dt in ("i32", "i64"):
                return f"ke_pow_{STORAGE_TYPE[dt]}({r(e.args[0])}, {r(e.args[1])})"
            raise DTypeError(f"math function {e.fn} on {dt} values has no C mapping; cast to a float dtype first")
        table = _MATH_F64 if dt == "f64" else (_MATH_F32_FAST if self.fast_math else _MATH_F32)
        args = []
        for a in e.args:
            s = r(a)
            if COMPUTE_TYPE[a.dtype] != COMPUTE_TYPE[dt]:
                s = f"({COMPUTE_TYPE[dt]})({s})"
            args.append(s)
        return table[e.fn].format(*args)

    # -- common subexpressions -------------------------------------------------------------------
    def cse_temps(self, values: list[L.Expr], pad: str) -> dict:
        """Bind arithmetic subexpressions used more than once in one statement to named consts."""
        counts: dict[L.Expr, int] = {}

        def visit(x: L.Expr):
            if isinstance(x, (L.Call, L.BinOp, L.Select, L.UnOp, L.Cast)) and x.dtype in FLOATS:
                counts[x] = counts.get(x, 0) + 1
                if counts[x] > 1:
                    return  # children were counted on the first visit
            for c in _children(x):
                visit(c)
        for v in values:
            visit(v)
        cse: dict = {}
        # inner expressions first, so outer temps can use inner names
        order = sorted((x for x, n in counts.items() if n > 1), key=_depth)
        for x in order:
            name = self.names.fresh("ke_t")
            self.lines.append(f"{pad}const {COMPUTE_TYPE[x.dtype]} {name} = {self.expr(x, 0, cse)};")
            cse[x] = name
        return cse

    # -- statements ----------------------------------------------------------------------------------
    def accumulation(self, s: L.Store):
        """(fma function, a, b, acc) for a matmul accumulation acc = acc + a*b (f32/f64 in a
        contraction kernel; not with fast_math, which contracts everything anyway), else None."""
        if self.fast_math or s.buffer.dtype not in ("f32", "f64"):
            return None
        found = fma_accumulation(s, self.kernel.kind)
        return None if found is None else ("ke_fmaf" if s.buffer.dtype == "f32" else "ke_fma", *found)

    def stmts(self, body: Iterable[L.Stmt], depth: int) -> None:
        saved = dict(self.locals)
        for s in body:
            self.stmt(s, depth)
        self.locals = saved

    def stmt(self, s: L.Stmt, depth: int) -> None:
        pad = "  " * depth
        if isinstance(s, L.For):
            self.loop(s, depth)
        elif isinstance(s, L.MicroKernel):
            self.lines.extend(self.micro_kernel(s, depth))
        elif isinstance(s, L.Store):
            cse = self.cse_temps([s.value], pad)
            acc = self.accumulation(s)
            value = self.expr(s.value, 0, cse) if acc is None else \
                f"{acc[0]}({self.expr(acc[1], 0, cse)}, {self.expr(acc[2], 0, cse)}, {self.expr(acc[3], 0, cse)})"
            if s.buffer.dtype == "f16" and s.buffer.scope == "global":
                value = f"(_Float16)({value})"
            elif s.buffer.dtype == "bf16" and s.buffer.scope == "global":
                value = f"ke_f32_to_bf16({value})"
            elif COMPUTE_TYPE[s.value.dtype] != COMPUTE_TYPE[s.buffer.dtype]:
                value = f"({COMPUTE_TYPE[s.buffer.dtype]})({value})"
            self.lines.append(f"{pad}{self.ref(s.buffer, s.indices)} = {value};")
        elif isinstance(s, L.If):
            self.lines.append(f"{pad}if ({self.expr(s.cond)}) {{")
            self.stmts(s.then, depth + 1)
            if s.orelse:
                self.lines.append(f"{pad}}} else {{")
                self.stmts(s.orelse, depth + 1)
            self.lines.append(f"{pad}}}")
        elif isinstance(s, L.Alloc):
            b = s.buffer
            if b.scope == "global":
                raise CompileError(f"kernel {self.kernel.name}: Alloc of global buffer {b.name}; global "
                                   f"temporaries are kernel parameters (a lowering bug)")
            name = self.names.get("buf", b.name)
            ctype = COMPUTE_TYPE[b.dtype]
            note = "  /* shared on GPU; a per-thread local array on the CPU */" if b.scope == "shared" else ""
            if b.shape:
                self.lines.append(f"{pad}{ctype} {name}[{b.size}] __attribute__((aligned(64)));{note}")
            else:
                self.lines.append(f"{pad}{ctype} {name};{note}")
            self.locals[b.name] = b
        elif isinstance(s, L.Comment):
            self.lines.append(f"{pad}/* {comment_text(s.text)} */")
        elif isinstance(s, (L.Barrier, L.ThreadAllReduce)):
            what = "barrier()" if isinstance(s, L.Barrier) else f"allreduce_{s.op}"
            raise CompileError(f"kernel {self.kernel.name} contains {what}, which exists only on a GPU: the C "
                               f"backend needs a CPU schedule (compile with target='cpu', not a CUDA-tiled program)")
        else:
            raise CompileError(f"kernel {self.kernel.name}: cannot generate C for statement {s!r}")

    def loop(self, s: L.For, depth: int) -> None:
        pad = "  " * depth
        if s.bound:
            raise CompileError(f"kernel {self.kernel.name}: loop {s.var.name} is bound to {s.kind}, which exists "
                               f"only on a GPU: the C backend needs a CPU schedule (parallel/vectorized/unrolled "
                               f"loops); compile with target='cpu'")
        var = self.names.get("var", s.var.name)
        itype = "int64_t" if self.wide or s.extent >= INDEX_LIMIT else "int"
        body = s.body
        upper = str(s.extent)
        # `if (base + v < n)` as the whole body → a shorter loop bound (keeps the loop guard-free
        # so gcc vectorizes it without masked loads and stores)
        bound = guard_bound(s)
        pre: list[str] = []
        if bound is not None:
            lim_expr, body = bound
            lim = self.names.fresh("ke_n")
            pre.append(f"{pad}const {itype} {lim} = {self.expr(lim_expr, 0)};")
            upper = f"({lim} < {s.extent} ? {lim} : {s.extent})"
        pragma = None
        collapse_inner = None
        if s.kind == "parallel" and self.in_parallel == 0:
            # guided, not static: a worker that joins late (woken from sleep: ~45 µs on this VM, or
            # descheduled by a neighbour) leaves the rest to the threads already running instead of
            # holding the region's end barrier for its fixed half. Measured (docs/CPU_THREADS.md): the
            # fused MLP 16384x16's first call after a 512^3 NumPy matmul 0.098-0.115 -> 0.083-0.097 ms;
            # steady calls unchanged (cpu_fusion --against the static build: 0.83-1.06x, all rows).
            # Iterations write disjoint outputs, so the results do not depend on the schedule.
            clauses = "schedule(guided)"
            inner = body[0] if len(body) == 1 and isinstance(body[0], L.For) else None
            # loop extents are constants in this IR, so a perfectly nested parallel pair can collapse
            if inner is not None and inner.kind == "parallel" and guard_bound(inner) is None:
                clauses = "collapse(2) " + clauses
                collapse_inner = inner
            private = sorted(self.names.get("buf", n) for n in _written_locals(body, self.locals))
            if private:
                clauses += f" private({', '.join(private)})"
            # the team size comes from the backend's thread policy at each call (backends/threads.py)
            pragma = f"#pragma omp parallel for {clauses} num_threads(ke_num_threads)"
        elif s.kind == "parallel":
            pre.append(f"{pad}/* parallel loop {var} runs serially inside the enclosing parallel loop */")
        elif s.kind == "vectorized":
            red = simd_reduction(s, self.locals)
            if red is None:
                pre.append(f"{pad}/* vectorize {var}: no omp simd (the loop carries a dependency) */")
            else:
                pragma = "#pragma omp simd" + "".join(
                    f" reduction(+:{self.names.get('buf', n)})" for n in red)
        elif s.kind == "unrolled":
            pragma = f"#pragma GCC unroll {min(s.extent, 65534)}"
        self.lines.extend(pre)
        if pragma:
            self.lines.append(f"{pad}{pragma}")
        self.lines.append(f"{pad}for ({itype} {var} = 0; {var} < {upper}; ++{var}) {{")
        inc = 1 if s.kind == "parallel" and pragma else 0
        self.in_parallel += inc
        if collapse_inner is not None:
            ivar = self.names.get("var", collapse_inner.var.name)
            self.lines.append(f"{pad}  for ({itype} {ivar} = 0; {ivar} < {collapse_inner.extent}; ++{ivar}) {{")
            self.stmts(collapse_inner.body, depth + 2)
            self.lines.append(f"{pad}  }}")
        else:
            self.stmts(body, depth + 1)
        self.in_parallel -= inc
        self.lines.append(f"{pad}}}")

    # -- register tiles as GCC vector variables -----------------------------------------------------
    def micro_kernel(self, mk: L.MicroKernel, depth: int) -> list[str]:
        """A MicroKernel as a call of its own noinline function, its register tiles in GCC vector variables.

        Each tile vector is loaded into a named vector variable before the loop and stored after it, so
        gcc keeps it in a register (as a stack array it reloads and stores it per FMA). The function is
        noinline: register allocation there does not suffer from the rest of the kernel (gcc spilled
        the accumulators when the kernel's vectorized epilogue shared the function).
        """
        s = mk.loop
        self.names.get("var", s.var.name)   # the loop variable is named first, as for any loop
        # (store, lane loop, guard) per vector statement (passes/vectorize_cpu.py made them)
        items: list[tuple[L.Store, L.For, L.Expr | None]] = []
        for st in s.body:
            cond = None
            if isinstance(st, L.If) and len(st.then) == 1 and not st.orelse:
                cond, st = st.cond, st.then[0]
            if not (isinstance(st, L.For) and st.kind == "vectorized" and len(st.body) == 1
                    and isinstance(st.body[0], L.Store)):
                raise CompileError(f"kernel {self.kernel.name}: micro-kernel {mk.name} holds {type(st).__name__}, "
                                   f"not a vector store (a vectorize_cpu bug)")
            items.append((st.body[0], st, cond))
        tiles = {t.buffer.name: t for t in mk.tiles}
        # the helper's parameters: every buffer and free loop variable the region reads or writes
        buffers: dict[str, L.Buffer] = {}
        free: dict[str, L.Var] = {}
        for st, vec, cond in items:
            for e in (*st.indices, st.value, *(() if cond is None else (cond,))):
                for x in L.walk_expr(e):
                    if isinstance(x, L.Load):
                        buffers.setdefault(x.buffer.name, x.buffer)
                    elif isinstance(x, L.Var) and x.name not in (vec.var.name, s.var.name):
                        free.setdefault(x.name, x)
            buffers.setdefault(st.buffer.name, st.buffer)
        written = {st.buffer.name for st, _, _ in items}
        helper = f"ke_{self.fn_name}_{mk.name}"
        itype = "int64_t" if self.wide else "int"
        params, args = [], []
        for n in sorted(buffers):
            b = buffers[n]
            cname = self.names.get("buf", n)
            const = "" if n in written else "const "
            ctype = STORAGE_TYPE[b.dtype] if b.scope == "global" else COMPUTE_TYPE[b.dtype]
            params.append(f"{const}{ctype}* restrict {cname}")
            args.append(cname)
        for n in sorted(free):
            cname = self.names.get("var", n)
            params.append(f"{itype} {cname}")
            args.append(cname)
        regs: dict[tuple[str, int], str] = {}
        body = [f"/* {comment_text(self.kernel.name)}: loop {comment_text(s.var.name)} with register tile"
                f"{'s' if len(tiles) > 1 else ''} {comment_text(', '.join(sorted(tiles)))} in vector variables */",
                "static __attribute__((noinline)) void " + helper + f"({', '.join(params)})", "{"]
        post = []
        for n in sorted(tiles):
            cname = self.names.get("buf", n)
            suf = C_VECTOR_TYPES[(tiles[n].buffer.dtype, tiles[n].lanes)]
            for base in tiles[n].bases:
                r = self.names.fresh(f"{cname}_r")
                regs[(n, base)] = r
                body.append(f"  ke_{suf} {r} = ke_load_{suf}(&{cname}[{base}]);")
                post.append(f"  ke_store_{suf}(&{cname}[{base}], {r});")
        var = self.names.get("var", s.var.name)
        gnames = [self.names.fresh("ke_g") for _ in mk.guards]
        stmts: list[tuple[int | None, str]] = []
        for st, vec, cond in items:
            dt, lane = st.buffer.dtype, vec.var.name
            suf = C_VECTOR_TYPES[(dt, vec.extent)]
            acc = self.accumulation(st)
            if acc is not None:
                parts = []
                for x in acc[1:]:
                    t, x_vec = self._vexpr(x, dt, suf, regs, lane)
                    parts.append(t if x_vec else f"ke_splat_{suf}({t})")
                v, is_vec = f"ke_fma_{suf}({', '.join(parts)})", True
            else:
                v, is_vec = self._vexpr(st.value, dt, suf, regs, lane)
            if not is_vec:
                v = f"ke_splat_{suf}({v})"
            flat = L.flat_index(st.buffer, st.indices)
            base_e = L.simplify_expr(L.substitute(flat, {lane: L.Const(0, flat.dtype)}))
            g = None if cond is None else mk.guards.index(cond)
            if st.buffer.name in tiles:
                stmts.append((g, f"{regs[(st.buffer.name, const_int(base_e))]} = {v};"))
            else:
                stmts.append((g, f"ke_store_{suf}(&{self.names.get('buf', st.buffer.name)}"
                                 f"[{self.expr(base_e)}], {v});"))
        head = f"for ({itype} {var} = 0; {var} < {s.extent}; ++{var}) {{"
        if not mk.guards:
            body += [f"  {head}"] + [f"    {t}" for _, t in stmts] + ["  }"]
        else:
            # guards depend only on outer loops: test them once, run the unguarded loop for full tiles
            body += [f"  const bool {n} = {self.expr(g)};" for n, g in zip(gnames, mk.guards)]
            body += [f"  if ({' && '.join(gnames)}) {{", f"    {head}"] + [f"      {t}" for _, t in stmts]
            body += ["    }", "  } else {", f"    {head}"]
            body += [f"      {t}" if g is None else f"      if ({gnames[g]}) {t}" for g, t in stmts]
            body += ["    }", "  }"]
        body += post + ["}"]
        self.helpers.append("\n".join(body) + "\n")
        pad = "  " * depth
        return [f"{pad}/* loop {comment_text(s.var.name)}: register-tiled micro-kernel */",
                f"{pad}{helper}({', '.join(args)});"]

    def _vexpr(self, e: L.Expr, dt: str, suf: str, regs: dict, lane: str) -> tuple[str, bool]:
        """C text of e in a micro-kernel and whether it is a vector (else a scalar to broadcast)."""
        has_reg = any(isinstance(x, L.Load) and any(k[0] == x.buffer.name for k in regs) for x in L.walk_expr(e))
        if not has_reg and not uses_var(e, lane):
            text = self.expr(e)   # parenthesized: a select's ?: binds looser than the vector op around it
            return (f"({text})" if isinstance(e, L.Select) else text), False
        if isinstance(e, L.Load):
            flat = L.flat_index(e.buffer, e.indices)
            base = L.simplify_expr(L.substitute(flat, {lane: L.Const(0, flat.dtype)}))
            key = (e.buffer.name, const_int(base))
            if key in regs:
                return regs[key], True
            return f"ke_load_{suf}(&{self.names.get('buf', e.buffer.name)}[{self.expr(base)}])", True
        if isinstance(e, L.BinOp) and (e.op in ("+", "-", "*") or (e.op == "/" and dt in FLOATS)):
            a, _ = self._vexpr(e.a, dt, suf, regs, lane)
            b, _ = self._vexpr(e.b, dt, suf, regs, lane)
            return f"({a} {e.op} {b})", True
        if isinstance(e, L.BinOp) and e.op in ("max", "min"):
            a, av = self._vexpr(e.a, dt, suf, regs, lane)
            b, bv = self._vexpr(e.b, dt, suf, regs, lane)
            a = a if av else f"ke_splat_{suf}({a})"
            b = b if bv else f"ke_splat_{suf}({b})"
            return f"ke_{e.op}_{suf}({a}, {b})", True
        if isinstance(e, L.UnOp) and e.op == "neg":
            a, _ = self._vexpr(e.a, dt, suf, regs, lane)
            return f"(-{a})", True
        raise CompileError(f"kernel {self.kernel.name}: no vector form for {L.expr_text(e)} in a micro-kernel "
                           f"(a vectorize_cpu bug)")

    # -- the function ---------------------------------------------------------------------------------
    def emit(self, name: str) -> str:
        k = self.kernel
        sizes = [b.size for b in k.params] + [a.buffer.size for a in L.walk(k.body) if isinstance(a, L.Alloc)]
        self.wide = any(n >= INDEX_LIMIT for n in sizes)
        params = []
        for p in k.params:
            const = "" if p.name in k.outputs else "const "
            params.append(f"{const}{STORAGE_TYPE[p.dtype]}* restrict {self.names.get('buf', p.name)}")
        head = [f"/* kernel {comment_text(name)}" + (f" | fusion group {comment_text(k.group)} ({comment_text(k.kind)})"
                                                     if k.group else f" ({comment_text(k.kind)})")]
        if k.ops:
            head.append(f" * ops: {comment_text(', '.join(k.ops))}")
        for line in k.source_lines:
            head.append(f" * from: {comment_text(line)}")
        if k.schedule:
            head.append(f" * schedule: {comment_text('; '.join(k.schedule))}")
        if self.wide:
            head.append(" * 64-bit indices: a buffer has >= 2^31 elements")
        head.append(" */")
        self.fn_name = name
        self.lines = [f"void {name}({', '.join(params)})", "{"]
        self.stmts(k.body, 1)
        self.lines.append("}")
        return "\n".join([h.rstrip("\n") for h in self.helpers] + head + self.lines) + "\n"




def _children(e: L.Expr) -> tuple[L.Expr, ...]:
    if isinstance(e, L.BinOp):
        return (e.a, e.b)
    if isinstance(e, (L.UnOp, L.Cast)):
        return (e.a,)
    if isinstance(e, L.Call):
        return tuple(e.args)
    if isinstance(e, L.Select):
        return (e.cond, e.a, e.b)
    if isinstance(e, L.Load):
        return tuple(e.indices)
    return ()


def _depth(e: L.Expr) -> int:
    return 1 + max((_depth(c) for c in _children(e)), default=0)


def _written_locals(body: Iterable[L.Stmt], scope: dict[str, L.Buffer]) -> set[str]:
    """Locals allocated outside a loop and written in it: they must be private to each OpenMP thread."""
    allocated = {a.buffer.name for a in L.walk(body) if isinstance(a, L.Alloc)}
    return {st.buffer.name for st in L.walk(body) if isinstance(st, L.Store)
            and st.buffer.name in scope and st.buffer.name not in allocated}


def _custom_kernel(k: L.Kernel, name: str, taken: set[str], done: list[GeneratedKernel]) -> GeneratedKernel:
    """A custom kernel's C: the user's c_source (once per program) and a wrapper named `name`."""
    from . import custom
    spec = k.meta_dict()["custom"]
    if spec.c_source is None:
        raise custom.missing_source(k, "c")
    names = _Names(taken | {name, spec.name})
    first = not any(g.kernel.kind == "custom" and g.kernel.meta_dict()["custom"] is spec for g in done)
    src = custom.emit_c(k, name, [names.get("buf", p.name) for p in k.params], include_source=first)
    return GeneratedKernel(name=name, language="c", source=src, launch={}, kernel=k)


def _wide_vectors(program: L.Program) -> bool:
    """Whether a micro-kernel of `program` keeps 64-byte vectors (the prelude then defines ke_v16f, ...)."""
    return any(v.extent * L.np_dtype(v.body[0].buffer.dtype).itemsize == 64
               for k in program.kernels for mk in L.walk(k.body) if isinstance(mk, L.MicroKernel)
               for v in L.walk_loops(mk.loop.body) if v.kind == "vectorized" and isinstance(v.body[0], L.Store))



def _dtypes_used(program: L.Program) -> set[str]:
    """Dtypes of every buffer and expression of `program` (which helpers the prelude needs)."""
    used = {b.dtype for b in program.buffers().values()}
    for k in program.kernels:
        for st in L.walk(k.body):
            if isinstance(st, L.Alloc):
                used.add(st.buffer.dtype)
            for e in L.stmt_exprs(st):
                used |= {x.dtype for x in L.walk_expr(e)}
    return used


def generate_c(program: L.Program, fast_math: bool = False) -> Codegen:
    """Generate one C translation unit (prelude + one function per kernel) from a tiled CPU Program.

    >>> from explorer.loopir import Buffer, For, Kernel, Program, Store, Var, call
    >>> i = Var("i"); x = Buffer("x", (4,)); y = Buffer("y", (4,))
    >>> k = Kernel("k_exp", (x, y), (For(i, 4, (Store(y, (i,), call("exp", x[i])),), kind="vectorized"),),
    ...            outputs=("y",))
    >>> print(generate_c(Program("f", (k,), (x,), (y,))).kernels[0].source.splitlines()[-3])
        y[i] = ke_expf(x[i]);

    Raises CompileError for GPU-only constructs (bound loops, barriers, thread all-reduce).
    """
    used = _dtypes_used(program)
    fp8 = sorted(used & {"f8e4m3", "f8e5m2"})
    if fp8:
        raise DTypeError(f"fp8 ({', '.join(fp8)}) is a storage dtype for the cuda and sim targets; the C backend has "
                         f"no fp8 conversion: compile with target='sim' (or 'cuda'), or cast to float32/bfloat16 "
                         f"before the function")
    taken: set[str] = set()
    gks: list[GeneratedKernel] = []
    for k in program.kernels:
        name = unique(not_generated(c_identifier(k.name, "k"), _RESERVED, "k_"), taken)
        if k.kind == "custom":
            gks.append(_custom_kernel(k, name, taken, gks))
            continue
        em = _KernelEmitter(k, fast_math, _Names(taken | {name}))
        gks.append(GeneratedKernel(name=name, language="c", source=em.emit(name), launch={}, kernel=k))
    prelude = PRELUDE_HEAD + ("/* fast_math: libm transcendentals, built with -ffast-math */\n" if fast_math else "") \
        + "\n" + PRELUDE_MATH + ("\n" + BF16_PRELUDE if "bf16" in used else "") \
        + ("\n" + WIDE_VECTOR_PRELUDE if _wide_vectors(program) else "")
    return Codegen(language="c", prelude=prelude, kernels=gks, program=program, fast_math=fast_math)
