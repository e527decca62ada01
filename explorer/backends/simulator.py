"""SIMT simulator: runs tiled, CUDA-bound loop IR in NumPy, with a memcheck and traffic counters.

The GPU-free path for Binder and tests. A kernel's grid is the product of its
blockIdx-bound loop extents and its block the product of its threadIdx-bound
extents. Every thread of every block is a *lane*; the simulator walks the IR once
per chunk of blocks and evaluates each scalar expression as a NumPy array over all
lanes of the chunk, so all threads advance in lockstep (barriers are honoured by
construction). Serial/unrolled/vectorized loops are Python loops (their variable is
uniform across lanes); `If` masks lanes; shared buffers are per block, local
buffers per lane.

    >>> import numpy as np
    >>> from explorer import loopir as L
    >>> x = L.Buffer("x", (1000,)); y = L.Buffer("y", (1000,))
    >>> bx, tx = L.Var("bx"), L.Var("tx")
    >>> i = bx * 128 + tx
    >>> k = L.Kernel("scale", (x, y), (L.For(bx, 8, (L.For(tx, 128, (
    ...     L.If(i < 1000, (L.Store(y, (i,), x[i] * L.Const(2.0, "f32")),)),), "threadIdx.x"),), "blockIdx.x"),),
    ...     outputs=("y",))
    >>> bufs = {"x": np.ones(1000, np.float32), "y": np.zeros(1000, np.float32)}
    >>> c = simulate_kernel(k, bufs)
    >>> float(bufs["y"].sum()), c["global_load_bytes"], c["global_store_bytes"], c["flops"]
    (2000.0, 4000, 4000, 1000)

Counters (ints, per kernel):
  global_load_bytes / global_store_bytes   bytes accessed by active lanes (buffer dtype size each)
  shared_load_bytes / shared_store_bytes   the same for shared buffers
  flops        float + - * / min max, unary minus and math calls, per active lane: one each, a
               transcendental (exp, tanh, erf, ...) ops.TRANSCENDENTAL_FLOPS as in the cost model
               (a ThreadAllReduce over T threads counts T-1 combines per group)
  barriers     __syncthreads executed, summed over blocks (a block counts each barrier it reaches)
  blocks, threads_per_block   the launch (1, 1 for kernels without bound loops)
Loads count every access actually executed: a matmul that re-reads A per output element
counts all of those reads, one that stages tiles through shared memory counts the staging.

Arithmetic follows NumPy in the IR's dtypes, except that a register accumulation
`acc = acc + x * y` in f32 is a fused multiply-add (one rounding), as nvcc (--fmad=true),
gcc -O3 and BLAS compute it. Lanes are laid out as an array of shape (blocks, threadIdx.z,
threadIdx.y, threadIdx.x); values that do not vary along an axis keep size 1 there, so a
shared-memory operand read by a whole warp is gathered once (NumPy broadcasting does the rest).

Memcheck: an access by an active lane outside a buffer's shape (checked per dimension)
raises VerificationError naming kernel, buffer, index and bound; so does a barrier or a
ThreadAllReduce reached by only part of a block, a store to a program input, and a kernel
that reads a variable outside its loop. Shared/local buffers and outputs start as NaN
(floats) so reading memory nobody wrote shows up as a wrong result, as garbage would on a GPU.

Tensor cores: WMMA fragment statements (FragmentLoad / Mma / FragmentStore, from schedule.tensorize)
run per warp — threadIdx.x must be the 32 lanes — on whole 16x16 tiles: mma multiplies the f16 tiles
exactly and rounds once into the f32 accumulator; a tile overhanging its buffer is a memcheck error.

float4 (a Float4Block, from passes/vectorize_cuda.py) runs lane by lane: each Float4Load/Float4Store is
4 flat accesses (16 bytes counted per active thread, each element once however often the lanes read it);
a misaligned base or 4 elements leaving the buffer is a memcheck error.

Kernels without bound loops (CPU schedules) run too: their outermost perfectly nested
'parallel' loops become lanes (iterations are independent by definition), every other
loop runs serially; a MicroKernel (passes/vectorize_cpu.py) runs its unrolled loop, its register
tiles being memory here.
"""
from __future__ import annotations

import math
import operator
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .. import loopir as L
from ..errors import DTypeError, ExplorerError, ShapeError, VerificationError
from ..ops import call_flops

COUNTER_KEYS = ("global_load_bytes", "global_store_bytes", "shared_load_bytes", "shared_store_bytes",
                "flops", "barriers", "blocks", "threads_per_block")
_INTS = ("i32", "i64")
_FLOATS = L.FLOAT_DTYPES
_BLOCK_AXES = ("blockIdx.x", "blockIdx.y", "blockIdx.z")
_THREAD_AXES = ("threadIdx.x", "threadIdx.y", "threadIdx.z")
# pseudo lane variables used in flattened shared/local addresses
_BLK = "$blk"
DEFAULT_CHUNK_LANES = 1 << 17


def available() -> tuple[bool, str]:
    """The simulator needs only NumPy."""
    return True, "numpy"


# ----------------------------------------------------------------------------- runtime state
class _Counters:
    __slots__ = ("gl", "gs", "sl", "ss", "flops", "barriers")

    def __init__(self):
        self.gl = self.gs = self.sl = self.ss = self.flops = self.barriers = 0

    def add_bytes(self, scope: str, store: bool, nbytes: int) -> None:
        """Count a load or store of `nbytes` in global or shared memory (local ones are registers)."""
        if scope == "global":
            if store:
                self.gs += nbytes
            else:
                self.gl += nbytes
        elif scope == "shared":
            if store:
                self.ss += nbytes
            else:
                self.sl += nbytes


def _row_major_strides(shape: Sequence[int]) -> list[int]:
    """Element strides of a C-ordered array of `shape`."""
    strides = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * shape[d + 1]
    return strides


class _Frame:
    """State of one chunk of blocks: lane coordinates, allocations, per-chunk caches."""

    __slots__ = ("env", "coords", "L", "nb", "nt", "tshape", "FS", "alloc", "glob", "cache", "c", "kname", "b0")

    def __init__(self, kname, glob, coords, L_, nb, nt, tshape, c, b0):
        # lanes form the array shape FS = (blocks, threadIdx.z, .y, .x); a value that does not vary
        # along an axis keeps size 1 there, so e.g. As[ty*4+i, k] is gathered once per (block, ty)
        self.kname = kname
        self.glob = glob
        self.coords = coords
        self.L = L_
        self.nb = nb
        self.nt = nt
        self.tshape = tshape
        self.FS = (nb, *tshape)
        self.c = c
        self.b0 = b0
        self.env: dict[str, Any] = {}
        self.alloc: dict[str, np.ndarray] = {}
        self.cache: dict[Any, Any] = {}

    def lanepart(self, key: tuple[tuple[str, int], ...]) -> np.ndarray:
        """sum(coef * coordinate) over lane axes, computed once per chunk."""
        v = self.cache.get(key)
        if v is None:
            v = None
            for axis, coef in key:
                t = self.coords[axis] * coef if coef != 1 else self.coords[axis]
                v = t if v is None else v + t
            self.cache[key] = v
        return v

    def lane_minmax(self, key) -> tuple[int, int]:
        k = ("mm", key)
        v = self.cache.get(k)
        if v is None:
            a = self.lanepart(key)
            v = (int(a.min()), int(a.max()))
            self.cache[k] = v
        return v

    def where(self, lane: int) -> str:
        """'block (x, y, z), thread (x, y, z)' of a lane in this chunk (for error messages)."""
        def get(axis):
            a = self.coords.get(axis)
            return int(np.broadcast_to(a, self.FS).reshape(-1)[lane]) if a is not None else 0
        if any(a in self.coords for a in _BLOCK_AXES + _THREAD_AXES):
            return (f"block ({get('blockIdx.x')}, {get('blockIdx.y')}, {get('blockIdx.z')}), "
                    f"thread ({get('threadIdx.x')}, {get('threadIdx.y')}, {get('threadIdx.z')})")
        par = {a: get(a) for a in self.coords if not a.startswith("$")}
        return "iteration " + ", ".join(f"{k}={v}" for k, v in par.items()) if par else "the single lane"


def _count(mask: np.ndarray, L_: int) -> int:
    """Active lanes of a mask broadcastable to the chunk's lane shape (of L_ lanes)."""
    return int(np.count_nonzero(mask)) * (L_ // mask.size)


def _full(a, FS):
    return np.broadcast_to(a, FS)


# ----------------------------------------------------------------------------- compile context
@dataclass
class _Ctx:
    kernel: L.Kernel
    lane_axis: dict[str, str]          # var name -> lane axis
    ranges: dict[str, tuple[int, int]]  # var name -> (lo, hi) inclusive
    axis_extent: dict[str, int]
    lane_loops: dict[int, str]         # id(For) -> axis for lane-ified parallel loops
    readonly: frozenset
    thread_guard: int = 0              # depth of Ifs whose condition varies across a block's threads

    def affine(self, e: L.Expr):
        """(terms {var: coef}, const) if e is integer-affine in loop variables, else None."""
        return L.affine_terms(e)

    def interval(self, terms: dict[str, int], const: int) -> tuple[int, int]:
        lo = hi = const
        for v, c in terms.items():
            a, b = self.ranges[v]
            lo += min(c * a, c * b)
            hi += max(c * a, c * b)
        return lo, hi

    def check_vars(self, e: L.Expr):
        for x in L.walk_expr(e):
            if isinstance(x, L.Var) and x.name not in self.ranges:
                raise VerificationError(f"kernel {self.kernel.name}: expression {L.expr_text(e)} uses variable "
                                        f"{x.name!r} outside any loop that defines it; every index variable must be "
                                        f"the variable of an enclosing For")

    def thread_dependent(self, e: L.Expr) -> bool:
        """Whether e may differ between threads of one block (reads a threadIdx/lane variable)."""
        if self.static_truth(e) is not None:
            return False
        for x in L.walk_expr(e):
            if isinstance(x, L.Var) and x.name in self.lane_axis and not self.lane_axis[x.name].startswith("blockIdx"):
                return True
        return False

    def static_truth(self, e: L.Expr) -> bool | None:
        """True/False when an integer comparison is decided by the loop ranges alone, else None."""
        if not (isinstance(e, L.BinOp) and e.op in ("<", "<=", ">", ">=")):
            return None
        a, b = self.affine(e.a), self.affine(e.b)
        if a is None or b is None or any(v not in self.ranges for v in (*a[0], *b[0])):
            return None
        t = dict(a[0])
        for v, c in b[0].items():
            t[v] = t.get(v, 0) - c
        lo, hi = self.interval({v: c for v, c in t.items() if c}, a[1] - b[1])   # range of a - b
        if e.op == "<":
            return True if hi < 0 else (False if lo >= 0 else None)
        if e.op == "<=":
            return True if hi <= 0 else (False if lo > 0 else None)
        if e.op == ">":
            return True if lo > 0 else (False if hi <= 0 else None)
        return True if lo >= 0 else (False if hi < 0 else None)


def _split(ctx: _Ctx, terms: dict[str, int]):
    lane = tuple(sorted((ctx.lane_axis[v], c) for v, c in terms.items() if v in ctx.lane_axis))
    unif = tuple((v, c) for v, c in terms.items() if v not in ctx.lane_axis)
    # merge duplicate axes (two vars bound to the same axis)
    merged: dict[str, int] = {}
    for a, c in lane:
        merged[a] = merged.get(a, 0) + c
    return tuple(sorted((a, c) for a, c in merged.items() if c)), unif


# ----------------------------------------------------------------------------- expressions
def _np_const(c: L.Const):
    if c.dtype in _INTS:
        return int(c.value)
    if c.dtype == "bool":
        return bool(c.value)
    return L.np_dtype(c.dtype).type(c.value)


def _cdiv(a, b):
    """C integer division (truncates toward zero); x / 0 gives 0 instead of trapping."""
    if isinstance(a, int) and isinstance(b, int):
        if b == 0:
            return 0
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b >= 0) else -q
    b = np.where(b == 0, 1, b) if isinstance(b, np.ndarray) else (b or 1)
    return (a - np.fmod(a, b)) // b   # exact: a - fmod(a, b) is a multiple of b


def _cmod(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return int(math.fmod(a, b)) if b else 0
    return np.fmod(a, b)


_sqrt = np.sqrt
_exp = np.exp


def _erf(x):
    # NumPy has no erf; math.erf per element is exact and fast enough for a simulator
    a = np.asarray(x)
    r = np.asarray(np.frompyfunc(math.erf, 1, 1)(a.astype(np.float64)), dtype=np.float64).astype(a.dtype)
    return r if a.ndim else r[()]


def _rsqrt(x):
    return x.dtype.type(1) / _sqrt(x)


def _sigmoid(x):
    one = x.dtype.type(1)
    return one / (one + _exp(-x))


_CALLS: dict[str, Callable] = {
    "exp": np.exp, "log": np.log, "tanh": np.tanh, "sqrt": np.sqrt, "rsqrt": _rsqrt, "abs": np.abs,
    "erf": _erf, "pow": np.power, "sin": np.sin, "cos": np.cos, "floor": np.floor, "sigmoid": _sigmoid,
}
_ARITH: dict[str, Callable] = {"+": operator.add, "-": operator.sub, "*": operator.mul,
                               "min": np.minimum, "max": np.maximum}
_CMP: dict[str, Callable] = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
                             "==": operator.eq, "!=": operator.ne}


def _has_load(e: L.Expr) -> bool:
    return any(isinstance(x, L.Load) for x in L.walk_expr(e))


def _fix_dtype(v, np_dt):
    """Keep float results in the IR's dtype (NumPy would promote f32 + f64 scalars etc.)."""
    d = getattr(v, "dtype", None)
    if d is None:
        return np_dt.type(v)
    if d != np_dt:
        return v.astype(np_dt) if isinstance(v, np.ndarray) else np_dt.type(v)
    return v


def _cexpr(e: L.Expr, ctx: _Ctx) -> Callable:
    """Compile an expression to fn(frame, mask, cnt) -> scalar or per-lane array."""
    if isinstance(e, L.Const):
        v = _np_const(e)
        return lambda fr, m, n: v
    if isinstance(e, L.Var):
        if e.name not in ctx.ranges:
            ctx.check_vars(e)
        name = e.name
        if name in ctx.lane_axis:
            axis = ctx.lane_axis[name]
            return lambda fr, m, n: fr.coords[axis]
        return lambda fr, m, n: fr.env[name]
    if isinstance(e, L.Load):
        return _Access(e.buffer, e.indices, ctx).load
    if e.dtype in _INTS:
        aff = ctx.affine(e)
        if aff is not None:
            ctx.check_vars(e)
            return _affine_fn(ctx, *aff)
    if isinstance(e, L.BinOp):
        fa, fb = _cexpr(e.a, ctx), _cexpr(e.b, ctx)
        op = e.op
        if op in ("&&", "||"):
            is_and = op == "&&"
            if not _has_load(e.b):
                f = np.logical_and if is_and else np.logical_or
                return lambda fr, m, n: f(fa(fr, m, n), fb(fr, m, n))

            def logic(fr, m, n):
                a = fa(fr, m, n)
                if not isinstance(a, np.ndarray):
                    if bool(a) != is_and:     # short circuit, as C does
                        return bool(a)
                    return fb(fr, m, n)
                sub = a if is_and else ~a
                if m is not None:
                    sub = sub & m
                k = _count(sub, fr.L)
                if k == 0:
                    return a
                b = fb(fr, sub, k)
                return (a & b) if is_and else (a | b)
            return logic
        if op in _CMP:
            f = _CMP[op]
            return lambda fr, m, n: f(fa(fr, m, n), fb(fr, m, n))
        dt = e.dtype
        if dt in _FLOATS:
            np_dt = L.np_dtype(dt)
            f = np.true_divide if op == "/" else (np.fmod if op == "%" else _ARITH[op])
            counted = op != "%"

            def farith(fr, m, n):
                if counted:
                    fr.c.flops += n
                return _fix_dtype(f(fa(fr, m, n), fb(fr, m, n)), np_dt)
            return farith
        if dt == "bool":
            f = {"+": np.logical_or, "*": np.logical_and, "min": np.logical_and, "max": np.logical_or}.get(op)
            if f is None:
                raise VerificationError(f"kernel {ctx.kernel.name}: operator {op!r} is not defined on bool values "
                                        f"in {L.expr_text(e)}")
            return lambda fr, m, n: f(fa(fr, m, n), fb(fr, m, n))
        f = {"/": _cdiv, "%": _cmod}.get(op) or _ARITH[op]
        if op in ("min", "max"):
            g = min if op == "min" else max

            def imm(fr, m, n):
                a, b = fa(fr, m, n), fb(fr, m, n)
                if isinstance(a, int) and isinstance(b, int):
                    return g(a, b)
                return f(a, b)
            return imm
        return lambda fr, m, n: f(fa(fr, m, n), fb(fr, m, n))
    if isinstance(e, L.UnOp):
        fa = _cexpr(e.a, ctx)
        if e.op == "not":
            return lambda fr, m, n: np.logical_not(fa(fr, m, n))
        if e.dtype in _FLOATS:
            def neg(fr, m, n):
                fr.c.flops += n
                return -fa(fr, m, n)
            return neg
        return lambda fr, m, n: -fa(fr, m, n)
    if isinstance(e, L.Call):
        if e.fn not in _CALLS:
            raise VerificationError(f"kernel {ctx.kernel.name}: unknown math function {e.fn!r}; "
                                    f"known: {', '.join(_CALLS)}")
        fn = _CALLS[e.fn]
        fargs = [_cexpr(a, ctx) for a in e.args]
        np_dt = L.np_dtype(e.dtype)
        is_float = e.dtype in _FLOATS
        weight = call_flops(e.fn)   # a transcendental counts as ops.TRANSCENDENTAL_FLOPS, as in the cost model

        def call(fr, m, n):
            if is_float:
                fr.c.flops += weight * n
            args = [_fix_dtype(f(fr, m, n), np_dt) if is_float else f(fr, m, n) for f in fargs]
            return _fix_dtype(fn(*args), np_dt)
        return call
    if isinstance(e, L.Select):
        fc, fa, fb = _cexpr(e.cond, ctx), _cexpr(e.a, ctx), _cexpr(e.b, ctx)
        la, lb = _has_load(e.a), _has_load(e.b)

        def select(fr, m, n):
            c = fc(fr, m, n)
            if not isinstance(c, np.ndarray):
                return fa(fr, m, n) if c else fb(fr, m, n)
            # branches that load run only on the lanes that take them (C's ?: short-circuits)
            if la:
                sub = c if m is None else (c & m)
                k = _count(sub, fr.L)
                a = fa(fr, sub, k) if k else None
            else:
                a = fa(fr, m, n)
            if lb:
                sub = ~c if m is None else (~c & m)
                k = _count(sub, fr.L)
                b = fb(fr, sub, k) if k else None
            else:
                b = fb(fr, m, n)
            if a is None:
                return b
            if b is None:
                return a
            return np.where(c, a, b)
        return select
    if isinstance(e, L.Cast):
        fa = _cexpr(e.a, ctx)
        np_dt = L.np_dtype(e.dtype)
        if e.dtype in _INTS:
            def icast(fr, m, n):
                v = fa(fr, m, n)
                if isinstance(v, np.ndarray):
                    return v.astype(np.int64)
                return int(v)
            return icast
        if e.dtype == "bool":
            def bcast(fr, m, n):
                v = fa(fr, m, n)
                return v.astype(bool) if isinstance(v, np.ndarray) else bool(v)
            return bcast

        def cast(fr, m, n):
            v = fa(fr, m, n)
            return v.astype(np_dt) if isinstance(v, np.ndarray) else np_dt.type(v)
        return cast
    raise VerificationError(f"kernel {ctx.kernel.name}: the simulator cannot evaluate expression {e!r}")


def _affine_fn(ctx: _Ctx, terms: dict[str, int], const: int) -> Callable:
    lane_key, unif = _split(ctx, terms)
    if lane_key:
        if not unif:
            if const == 0:
                return lambda fr, m, n: fr.lanepart(lane_key)
            return lambda fr, m, n: fr.lanepart(lane_key) + const

        def affl(fr, m, n):
            u = const
            env = fr.env
            for v, c in unif:
                u += c * env[v]
            return fr.lanepart(lane_key) + u
        return affl
    if not unif:
        return lambda fr, m, n: const
    if len(unif) == 1 and const == 0:
        (v0, c0), = unif
        if c0 == 1:
            return lambda fr, m, n: fr.env[v0]
        return lambda fr, m, n: c0 * fr.env[v0]

    def affu(fr, m, n):
        u = const
        env = fr.env
        for v, c in unif:
            u += c * env[v]
        return u
    return affu


# ----------------------------------------------------------------------------- memory accesses
class _Access:
    """A Load or Store site: flattens indices, checks bounds on active lanes, counts bytes.

    Global buffers are flat arrays, shared ones (blocks, size) indexed with blk*size + offset,
    local ones (size, *lane shape) so a lane-uniform offset is one contiguous slice.
    """

    def __init__(self, buf: L.Buffer, indices: Sequence[L.Expr], ctx: _Ctx):
        self.buf = buf
        self.name = buf.name
        self.kname = ctx.kernel.name
        self.scope = buf.scope
        if len(indices) != len(buf.shape):
            raise VerificationError(f"kernel {ctx.kernel.name}: buffer {buf.name} has {len(buf.shape)} dimensions "
                                    f"but is indexed with {len(indices)} indices "
                                    f"[{', '.join(L.expr_text(i) for i in indices)}]")
        for i in indices:
            ctx.check_vars(i)
        self.itemsize = L.np_dtype(buf.dtype).itemsize
        self.np_dt = L.np_dtype(buf.dtype)
        shape = buf.shape
        strides = _row_major_strides(shape)
        self.shape = shape
        self.size = buf.size
        self.idx_text = ", ".join(L.expr_text(i) for i in indices)
        affs = [ctx.affine(i) for i in indices]
        self.global_ = buf.scope == "global"
        self.shared = buf.scope == "shared"
        self.local = buf.scope == "local"
        scope_term = {_BLK: self.size} if self.shared else {}
        if all(a is not None for a in affs):
            self.affine = True
            terms: dict[str, int] = dict(scope_term)
            const = 0
            self.dims = []
            static_ok = True
            for (t, c), st, n in zip(affs, strides, shape):
                lo, hi = ctx.interval(t, c)
                if lo < 0 or hi >= n:
                    static_ok = False
                lk, un = _split(ctx, t)
                self.dims.append((lk, un, c, n))
                const += c * st
                for v, k in t.items():
                    terms[v] = terms.get(v, 0) + k * st
            self.static_ok = static_ok
            lk, un = _split(ctx, {v: c for v, c in terms.items() if c})
            self.lane_key, self.unif, self.const = lk, un, const
        else:
            self.affine = False
            self.static_ok = False
            self.fidx = [_cexpr(i, ctx) for i in indices]
            self.strides = strides
            self.scope_key = tuple(scope_term.items())
        self.readonly = buf.scope == "global" and buf.name in ctx.readonly

    # -- helpers
    def _storage(self, fr: _Frame) -> np.ndarray:
        s = fr.glob.get(self.name) if self.global_ else fr.alloc.get(self.name)
        if s is None:
            where = "is not a parameter of the kernel" if self.global_ else "is used before its Alloc"
            raise VerificationError(f"kernel {self.kname}: buffer {self.name} {where}")
        return s

    def _oob(self, fr: _Frame, what: str, d: int, vals, mask) -> None:
        n = self.shape[d]
        if isinstance(vals, np.ndarray):
            bad = (vals < 0) | (vals >= n)
            if mask is not None:
                bad = bad & mask
            bad = _full(bad, fr.FS).reshape(-1)
            lane = int(np.argmax(bad))
            v = int(_full(vals, fr.FS).reshape(-1)[lane])
        else:
            v = int(vals)
            lane = 0 if mask is None else int(np.argmax(_full(mask, fr.FS).reshape(-1)))
        raise VerificationError(
            f"kernel {self.kname}: out-of-bounds {what} {self.name}[{self.idx_text}] ({self.scope}): index {v} on "
            f"dimension {d} is outside [0, {n}) at {fr.where(lane)}; add a bounds guard (If) or fix the tile sizes")

    def _check_dim(self, fr, what, d, vals, mask):
        n = self.shape[d]
        if isinstance(vals, np.ndarray):
            if mask is None:
                sel = vals
            else:
                vb, mb = np.broadcast_arrays(vals, mask)
                sel = vb[mb]
            if sel.size and (int(sel.min()) < 0 or int(sel.max()) >= n):
                self._oob(fr, what, d, vals, mask)
        elif not 0 <= vals < n:
            self._oob(fr, what, d, vals, mask)

    def _check_affine(self, fr, m, what):
        env = fr.env
        for d, (lk, un, c, n) in enumerate(self.dims):
            u = c
            for v, k in un:
                u += k * env[v]
            if not lk:
                self._check_dim(fr, what, d, u, m)
            elif m is None:
                # all lanes active: the per-chunk min/max of the lane part decides
                lo, hi = fr.lane_minmax(lk)
                if lo + u < 0 or hi + u >= n:
                    self._oob(fr, what, d, fr.lanepart(lk) + u, None)
            else:
                self._check_dim(fr, what, d, fr.lanepart(lk) + u, m)

    def _index(self, fr: _Frame, m, n, what: str):
        """Flat index (int or lane array; for local buffers the offset) with masked-off lanes at 0."""
        if self.affine:
            u = self.const
            env = fr.env
            for v, c in self.unif:
                u += c * env[v]
            idx = fr.lanepart(self.lane_key) + u if self.lane_key else u
            if self.static_ok:
                return idx   # in bounds for every lane, masked or not
            self._check_affine(fr, m, what)
        else:
            idx = None
            for d, (f, st) in enumerate(zip(self.fidx, self.strides)):
                v = f(fr, m, n)
                self._check_dim(fr, what, d, v, m)
                t = v * st if st != 1 else v
                idx = t if idx is None else idx + t
            if idx is None:
                idx = 0
            if self.scope_key:
                idx = fr.lanepart(self.scope_key) + idx
        if m is not None and isinstance(idx, np.ndarray):
            idx = np.where(m, idx, 0)
        return idx

    def _count(self, fr, n, store: bool):
        fr.c.add_bytes(self.scope, store, n * self.itemsize)

    # -- the two operations
    def load(self, fr: _Frame, m, n):
        if n == 0:
            return self.np_dt.type(0)
        st = self._storage(fr)
        idx = self._index(fr, m, n, "load of")
        self._count(fr, n, False)
        if self.local:
            if not isinstance(idx, np.ndarray):
                return st[idx]
            # per-lane offsets into registers (rare): gather lane by lane
            return st.reshape(st.shape[0], -1)[_full(idx, fr.FS).reshape(-1), np.arange(fr.L)].reshape(fr.FS)
        if self.size == 0:
            return self.np_dt.type(0)
        return st.reshape(-1)[idx]

    def store(self, fr: _Frame, m, n, value) -> None:
        if n == 0:
            return
        if self.readonly:
            raise VerificationError(f"kernel {self.kname}: stores to {self.name}[{self.idx_text}], which is an input "
                                    f"of the program; inputs are read-only")
        st = self._storage(fr)
        idx = self._index(fr, m, n, "store to")
        self._count(fr, n, True)
        if self.local:
            if not isinstance(idx, np.ndarray):
                if m is None:
                    st[idx] = value
                else:
                    np.copyto(st[idx], value, casting="unsafe", where=m)
                return
            st2 = st.reshape(st.shape[0], -1)
            off = _full(idx, fr.FS).reshape(-1)
            lanes = np.arange(fr.L)
            v = _full(value, fr.FS).reshape(-1)
            if m is not None:
                sel = _full(m, fr.FS).reshape(-1)
                off, lanes, v = off[sel], lanes[sel], v[sel]
            st2[off, lanes] = v
            return
        flat = st.reshape(-1)
        if isinstance(idx, np.ndarray):
            if m is None:
                if isinstance(value, np.ndarray) and value.shape != idx.shape:
                    idx, value = np.broadcast_arrays(idx, value)
                flat[idx] = value
            else:
                if isinstance(value, np.ndarray):
                    idx, mb, value = np.broadcast_arrays(idx, m, value)
                    flat[idx[mb]] = value[mb]
                else:
                    idx, mb = np.broadcast_arrays(idx, m)
                    flat[idx[mb]] = value
        else:
            # every active lane writes the same address: the last one wins
            if isinstance(value, np.ndarray):
                v = _full(value, fr.FS).reshape(-1)
                value = v[_full(m, fr.FS).reshape(-1)][-1] if m is not None else v[-1]
            flat[idx] = value


# ----------------------------------------------------------------------------- statements
def _cstmts(stmts: Sequence[L.Stmt], ctx: _Ctx) -> Callable:
    fns = [f for f in (_cstmt(s, ctx) for s in stmts) if f is not None]
    if len(fns) == 1:
        return fns[0]

    def seq(fr, m, n):
        for f in fns:
            f(fr, m, n)
    return seq


def _accumulate(acc: _Access, v: L.BinOp, ctx: _Ctx) -> Callable:
    """r[i] = r[i] op x on a register at a lane-uniform offset: update it in place (the matmul
    inner loop; saves a full-width temporary and copy per statement)."""
    ufunc = {"+": np.add, "*": np.multiply, "min": np.minimum, "max": np.maximum}[v.op]
    np_dt = acc.np_dt
    rd = _Access(acc.buf, v.a.indices, ctx)   # the read, counted like any load
    b = v.b
    # acc + x*y in f32 is a fused multiply-add, as nvcc (--fmad=true), gcc -O3 and BLAS compute it:
    # the exact product (exact in f64) is added and rounded once
    fma = (v.op == "+" and acc.buf.dtype == "f32" and isinstance(b, L.BinOp) and b.op == "*"
           and b.dtype == "f32")
    if fma:
        fp, fq = _cexpr(b.a, ctx), _cexpr(b.b, ctx)

        def fb(fr, m, n):
            fr.c.flops += n
            return np.multiply(fp(fr, m, n), fq(fr, m, n), dtype=np.float64)
    else:
        fb = _cexpr(b, ctx)

    def accumulate(fr, m, n):
        if n == 0:
            return
        rd.load(fr, m, n)
        x = fb(fr, m, n)
        fr.c.flops += n
        st = acc._storage(fr)
        idx = acc._index(fr, m, n, "store to")
        col = st[idx]
        if m is None:
            ufunc(col, x, out=col, casting="unsafe")
        else:
            np.copyto(col, ufunc(col, x).astype(np_dt, copy=False), where=m)
    return accumulate


def _divergence(fr: _Frame, m, what: str, kname: str) -> int:
    """Blocks (with at least one active lane) at a block-wide operation; raises if a block is split."""
    if m is None:
        return fr.nb
    rows = _full(m, fr.FS).reshape(fr.nb, fr.nt)
    anyr = rows.any(axis=1)
    allr = rows.all(axis=1)
    split = anyr & ~allr
    if split.any():
        b = int(np.argmax(split))
        lane = b * fr.nt + int(np.argmin(rows[b]))
        raise VerificationError(f"kernel {kname}: {what} reached by only some threads of a block (thread-divergent "
                                f"guard; e.g. not reached at {fr.where(lane)}): every thread of a block must reach "
                                f"it, so move it out of the If that depends on threadIdx")
    return int(np.count_nonzero(anyr))


def _cstmt(s: L.Stmt, ctx: _Ctx) -> Callable | None:
    kname = ctx.kernel.name
    if isinstance(s, L.Comment):
        return None
    if isinstance(s, L.Store):
        acc = _Access(s.buffer, s.indices, ctx)
        np_dt = acc.np_dt
        v = s.value
        if (s.buffer.scope == "local" and s.buffer.dtype in _FLOATS and isinstance(v, L.BinOp)
                and v.op in ("+", "*", "min", "max") and v.dtype == s.buffer.dtype
                and isinstance(v.a, L.Load) and v.a.buffer == s.buffer and v.a.indices == s.indices
                and acc.affine and not acc.lane_key):
            return _accumulate(acc, v, ctx)
        fv = _cexpr(v, ctx)

        def store(fr, m, n):
            v = fv(fr, m, n)
            if v.dtype != np_dt if hasattr(v, "dtype") else True:
                v = _fix_dtype(v, np_dt)
            acc.store(fr, m, n, v)
        return store
    if isinstance(s, L.Alloc):
        b = s.buffer
        if b.scope == "global":
            raise VerificationError(f"kernel {kname}: Alloc of global buffer {b.name}; global buffers are kernel "
                                    f"parameters, Alloc declares 'shared' or 'local' ones")
        np_dt = L.np_dtype(b.dtype)
        fill = np.nan if b.dtype in _FLOATS else 0
        size = max(b.size, 1) if len(b.shape) == 0 else b.size
        shared = b.scope == "shared"
        name = b.name

        def alloc(fr, m, n):
            shape = (fr.nb, size) if shared else (size, *fr.FS)
            fr.alloc[name] = np.full(shape, fill, np_dt)
        return alloc
    if isinstance(s, L.Barrier):
        if ctx.thread_guard:
            raise VerificationError(f"kernel {kname}: barrier() inside an If whose condition depends on threadIdx "
                                    f"(barrier divergence): every thread of a block must reach it; move it out of "
                                    f"the guard")

        def barrier(fr, m, n):
            fr.c.barriers += _divergence(fr, m, "barrier()", kname)
        return barrier
    if isinstance(s, L.ThreadAllReduce):
        return _all_reduce(s, ctx)
    if isinstance(s, L.If):
        fc = _cexpr(s.cond, ctx)
        thread_dep = ctx.thread_dependent(s.cond)
        if thread_dep:
            ctx.thread_guard += 1
        try:
            fthen = _cstmts(s.then, ctx)
            felse = _cstmts(s.orelse, ctx) if s.orelse else None
        finally:
            if thread_dep:
                ctx.thread_guard -= 1

        def if_(fr, m, n):
            c = fc(fr, m, n)
            if not isinstance(c, np.ndarray):
                if c:
                    fthen(fr, m, n)
                elif felse is not None:
                    felse(fr, m, n)
                return
            if m is None:
                k = _count(c, fr.L)
                if k == n:
                    fthen(fr, None, n)
                    return
                if k:
                    fthen(fr, c, k)
                if felse is not None and k < n:
                    felse(fr, ~c, n - k) if k else felse(fr, None, n)
                return
            mt = m & c
            k = _count(mt, fr.L)
            if k == n:
                fthen(fr, m, n)
                return
            if k:
                fthen(fr, mt, k)
            if felse is not None and k < n:
                felse(fr, m & ~c, n - k) if k else felse(fr, m, n)
        return if_
    if isinstance(s, L.For):
        return _cfor(s, ctx)
    if isinstance(s, L.MicroKernel):
        # its register tiles are a storage decision of the C backend: the loop is what it computes
        return _cfor(s.loop, ctx)
    if isinstance(s, L.WARP_STMTS):
        return _warp_op(s, ctx)
    if isinstance(s, L.Float4Block):
        return _float4_block(s, ctx)
    raise VerificationError(f"kernel {kname}: the simulator cannot execute statement {type(s).__name__}")


def _float4_block(s: L.Float4Block, ctx: _Ctx) -> Callable:
    """A Float4Block lane by lane: its registers are local f32[4] buffers, and a Float4Load/Float4Store is
    the 4 accesses of elements base..base+3 of the flat buffer, so an active thread counts the 16 bytes
    its float4 access moves. A base that is not a multiple of 4 (a GPU faults on a misaligned vector
    access) or 4 elements that do not all lie in the buffer are memcheck errors."""
    n = L.FLOAT4_LANES
    stmts: list[L.Stmt] = [L.Alloc(r) for r in s.registers]
    checks = []
    for ld in s.loads:
        flat = L.Buffer(ld.buffer.name, (ld.buffer.size,), ld.buffer.dtype, "global")
        checks.append(("load of", ld.buffer, ld.base, _cexpr(ld.base, ctx)))
        stmts += [L.Store(ld.register, (L.Const(k),), L.Load(flat, (L.BinOp("+", ld.base, L.Const(k)),)))
                  for k in range(n)]
    stmts += s.lanes
    for st in s.stores:
        flat = L.Buffer(st.buffer.name, (st.buffer.size,), st.buffer.dtype, "global")
        checks.append(("store to", st.buffer, st.base, _cexpr(st.base, ctx)))
        stmts += [L.Store(flat, (L.BinOp("+", st.base, L.Const(k)),), L.Load(st.register, (L.Const(k),)))
                  for k in range(n)]
    run = _cstmts(stmts, ctx)
    kname = ctx.kernel.name

    def float4_block(fr, m, n_active):
        for what, buf, base, fbase in checks:
            b = np.asarray(fbase(fr, m, n_active))
            for bad, why in ((b % n != 0, f"is not a multiple of {n} (a misaligned 16-byte access)"),
                             ((b < 0) | (b + n > buf.size), f"does not leave {n} elements inside its "
                                                            f"{buf.size} (outside the buffer)")):
                if m is not None:
                    bad = bad & m
                if bad.any():
                    lane = int(np.argmax(_full(bad, fr.FS).reshape(-1)))
                    raise VerificationError(
                        f"kernel {kname}: float4 {what} {buf.name} at flat index {L.expr_text(base)} = "
                        f"{int(_full(b, fr.FS).reshape(-1)[lane])} {why} at {fr.where(lane)}")
        run(fr, m, n_active)
    return float4_block


# ----------------------------------------------------------------------------- tensor cores (WMMA)
_WARP = 32
_T16 = np.arange(16, dtype=np.int64)


def _warp_op(s: L.Stmt, ctx: _Ctx) -> Callable:
    """A warp-collective WMMA statement. Warps are (block, threadIdx.z, threadIdx.y) with threadIdx.x the
    32 lanes; a fragment is stored whole per warp as (blocks, tz, ty, *count, 16, 16). mma multiplies the
    f16 tiles exactly (in f64: products of f16 values and their sums over 16 terms are exact there) and
    rounds once into the f32 accumulator."""
    kname = ctx.kernel.name
    if ctx.axis_extent.get("threadIdx.x") != _WARP:
        raise VerificationError(f"kernel {kname}: warp-level {type(s).__name__} needs threadIdx.x to be the 32 lanes "
                                f"of a warp, but blockDim.x is {ctx.axis_extent.get('threadIdx.x')}")
    if ctx.thread_guard:
        raise VerificationError(f"kernel {kname}: {type(s).__name__} inside an If whose condition depends on "
                                f"threadIdx: every lane of the warp must execute it")

    def findex(index):
        for i in index:
            ctx.check_vars(i)
            if ctx.thread_dependent(i) or any(isinstance(x, L.Var) and x.name in ctx.lane_axis for x in L.walk_expr(i)):
                raise VerificationError(f"kernel {kname}: fragment index {L.expr_text(i)} must be the same for every "
                                        f"thread (an unrolled loop variable)")
        fs = [_cexpr(i, ctx) for i in index]
        return lambda fr, m, n: tuple(int(f(fr, m, n)) for f in fs)

    def warps(fr, m):
        """(bool mask over warps (nb, tz, ty) or None for all, active warp count)."""
        nw = fr.nb * fr.tshape[0] * fr.tshape[1]
        if m is None:
            return None, nw
        mb = _full(m, fr.FS)
        anyw, allw = mb.any(axis=-1), mb.all(axis=-1)
        if (anyw & ~allw).any():
            raise VerificationError(f"kernel {kname}: {type(s).__name__} reached by only some lanes of a warp; "
                                    f"all 32 lanes must execute warp-level matrix ops")
        return allw, int(np.count_nonzero(allw))

    def frag_of(fr, f: L.Fragment) -> np.ndarray:
        a = fr.alloc.get(f.name)
        if a is None:
            raise VerificationError(f"kernel {kname}: fragment {f.name} is used before its FragmentAlloc")
        return a

    def check_count(f: L.Fragment, idx: tuple[int, ...]):
        if len(idx) != len(f.count) or any(not 0 <= i < c for i, c in zip(idx, f.count)):
            raise VerificationError(f"kernel {kname}: fragment index {list(idx)} is outside {f.name}"
                                    f"[{', '.join(map(str, f.count))}]")

    def put(dst: np.ndarray, sel, value: np.ndarray, wm) -> None:
        if wm is None:
            dst[sel] = value
        else:
            np.copyto(dst[sel], value, where=wm[..., None, None], casting="unsafe")

    if isinstance(s, L.FragmentAlloc):
        f = s.fragment
        np_dt = L.np_dtype(f.dtype)

        def falloc(fr, m, n):
            tz, ty, _ = fr.tshape
            fr.alloc[f.name] = np.full((fr.nb, tz, ty, *f.count, 16, 16), np.nan, np_dt)
        return falloc
    if isinstance(s, L.FragmentFill):
        f, fi = s.fragment, findex(s.index)
        value = L.np_dtype(f.dtype).type(s.value.value)

        def fill(fr, m, n):
            idx = fi(fr, m, n)
            check_count(f, idx)
            wm, _ = warps(fr, m)
            put(frag_of(fr, f), (slice(None),) * 3 + idx, np.full(fr.FS[:3] + (16, 16), value), wm)
        return fill
    if isinstance(s, (L.FragmentLoad, L.FragmentStore)):
        f, fi = s.fragment, findex(s.index)
        buf, ixs = s.origin.buffer, s.origin.indices
        if len(ixs) != len(buf.shape) or len(buf.shape) < 2:
            raise VerificationError(f"kernel {kname}: WMMA tile origin {L.expr_text(s.origin)} must index every "
                                    f"dimension of a buffer with at least 2 dimensions")
        if buf.scope == "local":
            raise VerificationError(f"kernel {kname}: WMMA tiles live in shared or global memory, not in local "
                                    f"buffer {buf.name}")
        store = isinstance(s, L.FragmentStore)
        if store and f.role != "accumulator":
            raise VerificationError(f"kernel {kname}: only accumulator fragments are stored ({f.name} is {f.role})")
        if not store and f.role == "accumulator":
            raise VerificationError(f"kernel {kname}: accumulator fragment {f.name} is filled, not loaded")
        if buf.dtype != f.dtype:
            raise VerificationError(f"kernel {kname}: fragment {f.name} is {f.dtype} but {buf.name} is {buf.dtype}")
        for i in ixs:
            ctx.check_vars(i)
        fo = [_cexpr(i, ctx) for i in ixs]
        shape = buf.shape
        strides = _row_major_strides(shape)
        ld = shape[-1]
        col = f.layout == "col_major" and not store
        itemsize = L.np_dtype(buf.dtype).itemsize
        what = "store to" if store else "load of"

        def offsets(fr, m, wm):
            """Flat element offsets (nb, tz, ty, 16, 16) of each warp's tile, bounds-checked."""
            flat = 0
            for d, (fn, st_) in enumerate(zip(fo, strides)):
                v = np.broadcast_to(np.asarray(fn(fr, m, 1), dtype=np.int64), fr.FS)
                w = v[..., 0]
                if (v != w[..., None]).any() if wm is None else ((v != w[..., None]) & wm[..., None]).any():
                    raise VerificationError(f"kernel {kname}: WMMA tile origin {L.expr_text(s.origin)} differs "
                                            f"between the lanes of a warp (dimension {d})")
                span = 16 if d >= len(shape) - 2 else 1
                act = w if wm is None else w[wm]
                if act.size and (int(act.min()) < 0 or int(act.max()) + span > shape[d]):
                    bad = int(act.min()) if int(act.min()) < 0 else int(act.max())
                    raise VerificationError(
                        f"kernel {kname}: out-of-bounds WMMA {what} {buf.name}[{L.expr_text(s.origin)}] ({buf.scope}): "
                        f"the 16x16 tile at index {bad} on dimension {d} does not fit in [0, {shape[d]})")
                flat = flat + w * st_
            return np.asarray(flat)[..., None, None] + _T16[:, None] * ld + _T16[None, :]

        def memory(fr):
            st_ = fr.glob.get(buf.name) if buf.scope == "global" else fr.alloc.get(buf.name)
            if st_ is None:
                raise VerificationError(f"kernel {kname}: buffer {buf.name} is used before its Alloc")
            return st_

        def move(fr, m, n):
            idx = fi(fr, m, n)
            check_count(f, idx)
            wm, k = warps(fr, m)
            if k == 0:
                return
            off = offsets(fr, m, wm)
            mem = memory(fr)
            sel = (slice(None),) * 3 + idx
            if buf.scope == "shared":
                bidx = np.broadcast_to(np.arange(fr.nb).reshape(fr.nb, 1, 1, 1, 1), off.shape)
            fr.c.add_bytes(buf.scope, store, k * 256 * itemsize)
            if store:
                if buf.scope == "global" and buf.name in ctx.readonly:
                    raise VerificationError(f"kernel {kname}: WMMA store to {buf.name}, an input of the program")
                val = frag_of(fr, f)[sel]
                if wm is not None:
                    off, val = off[wm], val[wm]
                    if buf.scope == "shared":
                        bidx = bidx[wm]
                if buf.scope == "shared":
                    mem[bidx, off] = val
                else:
                    mem[off] = val
                return
            tile = mem[bidx, off] if buf.scope == "shared" else mem[off]
            if col:   # the operand sits transposed in memory: element (r, c) is at origin + c * ld + r
                tile = tile.swapaxes(-1, -2)
            put(frag_of(fr, f), sel, tile, wm)
        return move
    if isinstance(s, L.Mma):
        if (s.a.role, s.b.role, s.c.role) != ("matrix_a", "matrix_b", "accumulator"):
            raise VerificationError(f"kernel {kname}: mma({s.a.name}, {s.b.name}, {s.c.name}) needs a matrix_a, a "
                                    f"matrix_b and an accumulator fragment")
        fc, fa, fb = findex(s.c_index), findex(s.a_index), findex(s.b_index)
        c_dt = L.np_dtype(s.c.dtype)

        def mma(fr, m, n):
            ci, ai, bi = fc(fr, m, n), fa(fr, m, n), fb(fr, m, n)
            for f, i in ((s.c, ci), (s.a, ai), (s.b, bi)):
                check_count(f, i)
            wm, k = warps(fr, m)
            if k == 0:
                return
            head = (slice(None),) * 3
            a = frag_of(fr, s.a)[head + ai].astype(np.float64)
            b = frag_of(fr, s.b)[head + bi].astype(np.float64)
            cfr = frag_of(fr, s.c)
            r = (np.matmul(a, b) + cfr[head + ci].astype(np.float64)).astype(c_dt)
            put(cfr, head + ci, r, wm)
            fr.c.flops += k * 2 * 16 * 16 * 16
        return mma
    raise VerificationError(f"kernel {kname}: unknown warp-level statement {type(s).__name__}")


def _cfor(s: L.For, ctx: _Ctx) -> Callable:
    name = s.var.name
    old_range = ctx.ranges.get(name)
    old_axis = ctx.lane_axis.get(name)
    axis = s.kind if s.bound else ctx.lane_loops.get(id(s))
    try:
        if axis is not None:
            full = ctx.axis_extent[axis]
            ctx.lane_axis[name] = axis
            ctx.ranges[name] = (0, max(full - 1, 0))
            body = _cstmts(s.body, ctx)
            ext = s.extent
            if ext >= full:
                return body

            def partial_bound(fr, m, n):
                # a bound loop narrower than the launch along its axis: the extra threads idle
                c = fr.coords[axis] < ext
                mm = c if m is None else (c & m)
                k = _count(mm, fr.L)
                if k:
                    body(fr, mm, k)
            return partial_bound
        ctx.lane_axis.pop(name, None)
        ctx.ranges[name] = (0, max(s.extent - 1, 0))
        body = _cstmts(s.body, ctx)
        ext = s.extent

        def loop(fr, m, n):
            env = fr.env
            for i in range(ext):
                env[name] = i
                body(fr, m, n)
        return loop
    finally:
        if old_range is None:
            ctx.ranges.pop(name, None)
        else:
            ctx.ranges[name] = old_range
        if old_axis is None:
            ctx.lane_axis.pop(name, None)
        else:
            ctx.lane_axis[name] = old_axis


_REDUCE = {"sum": np.add, "max": np.maximum, "min": np.minimum}
_AXIS_POS = {"threadIdx.x": 3, "threadIdx.y": 2, "threadIdx.z": 1}


def _all_reduce(s: L.ThreadAllReduce, ctx: _Ctx) -> Callable:
    kname = ctx.kernel.name
    if s.op not in _REDUCE:
        raise VerificationError(f"kernel {kname}: ThreadAllReduce op {s.op!r} is not one of {', '.join(_REDUCE)}")
    if s.axis not in _AXIS_POS:
        raise VerificationError(f"kernel {kname}: ThreadAllReduce axis {s.axis!r} is not a threadIdx axis")
    if s.buffer.scope != "local" or s.buffer.size != 1:
        raise VerificationError(f"kernel {kname}: ThreadAllReduce needs a 0-d local buffer, got {s.buffer.name}: "
                                f"{s.buffer.type_str()}")
    if ctx.thread_guard:
        raise VerificationError(f"kernel {kname}: ThreadAllReduce of {s.buffer.name} inside an If whose condition "
                                f"depends on threadIdx (divergence): every thread of the block must take part")
    red = _REDUCE[s.op]
    pos = _AXIS_POS[s.axis]
    name = s.buffer.name
    is_float = s.buffer.dtype in _FLOATS

    def all_reduce(fr, m, n):
        _divergence(fr, m, f"ThreadAllReduce of {name}", kname)
        st = fr.alloc.get(name)
        if st is None:
            raise VerificationError(f"kernel {kname}: buffer {name} is used before its Alloc")
        v = st[0]
        r = red.reduce(v, axis=pos, keepdims=True)
        if m is None:
            st[0] = r
        else:
            np.copyto(st[0], r, where=m)
        if is_float:
            t = v.shape[pos]
            fr.c.flops += n - n // t
    return all_reduce


# ----------------------------------------------------------------------------- kernels
def _lane_plan(kernel: L.Kernel):
    """(block axes {axis: extent}, thread axes {axis: extent}, lane-ified parallel loops)."""
    grid: dict[str, int] = {}
    block: dict[str, int] = {}
    for loop in L.walk_loops(kernel.body):
        if loop.kind in _BLOCK_AXES:
            grid[loop.kind] = max(grid.get(loop.kind, 0), loop.extent)
        elif loop.kind in _THREAD_AXES:
            block[loop.kind] = max(block.get(loop.kind, 0), loop.extent)
    lane_loops: dict[int, str] = {}
    if not grid and not block:
        # CPU schedule: the outer perfect nest of parallel loops has independent iterations → lanes
        body = [s for s in kernel.body if not isinstance(s, L.Comment)]
        depth = 0
        while len(body) == 1 and isinstance(body[0], L.For) and body[0].kind == "parallel" and depth < 3:
            ax = f"parallel{depth}"
            lane_loops[id(body[0])] = ax
            grid[ax] = body[0].extent
            body = [s for s in body[0].body if not isinstance(s, L.Comment)]
            depth += 1
    return grid, block, lane_loops


class KernelSim:
    """A kernel compiled to NumPy closures; `run(buffers)` simulates one launch and returns counters."""

    def __init__(self, kernel: L.Kernel, readonly: Sequence[str] = (), chunk_lanes: int = DEFAULT_CHUNK_LANES):
        self.kernel = kernel
        self.grid, self.block, lane_loops = _lane_plan(kernel)
        self.cuda = not lane_loops and bool(self.grid or self.block)
        self.chunk_lanes = max(1, int(chunk_lanes))
        gx = [self.grid.get(a, 1) for a in _BLOCK_AXES] if self.cuda else [self.grid.get(f"parallel{d}", 1)
                                                                           for d in range(3)]
        self.gdims = gx
        self.tdims = [self.block.get(a, 1) for a in _THREAD_AXES]
        self.nblocks = int(np.prod(gx))
        self.nthreads = int(np.prod(self.tdims))
        if self.nthreads > 1024 and self.cuda:
            raise VerificationError(f"kernel {kernel.name}: {self.nthreads} threads per block exceeds CUDA's limit "
                                    f"of 1024; bind smaller extents to threadIdx")
        axis_extent = {**{a: self.grid.get(a, 1) for a in _BLOCK_AXES}, **{a: self.block.get(a, 1) for a in _THREAD_AXES},
                       **{f"parallel{d}": self.grid.get(f"parallel{d}", 1) for d in range(3)}}
        # the pseudo lane variables of flattened shared/local addresses are lane axes of their own
        self.ctx = _Ctx(kernel, {_BLK: _BLK}, {}, axis_extent, lane_loops, frozenset(readonly))
        self.body = _cstmts(kernel.body, self.ctx)

    def run(self, buffers: dict[str, np.ndarray]) -> dict[str, int]:
        k = self.kernel
        glob: dict[str, np.ndarray] = {}
        for p in k.params:
            if p.name not in buffers:
                raise ExplorerError(f"kernel {k.name}: no array for parameter {p.name} ({p.type_str()}); pass "
                                    f"buffers={{'{p.name}': np.ndarray, ...}} for every parameter")
            a = buffers[p.name]
            if not isinstance(a, np.ndarray) or a.shape != p.shape:
                raise ShapeError(f"kernel {k.name}: parameter {p.name} expects shape {p.shape}, got "
                                 f"{getattr(a, 'shape', type(a).__name__)}")
            if a.dtype != L.np_dtype(p.dtype):
                raise DTypeError(f"kernel {k.name}: parameter {p.name} expects dtype {L.np_dtype(p.dtype)}, got "
                                 f"{a.dtype}; cast it with .astype")
            if not a.flags.c_contiguous:
                raise ExplorerError(f"kernel {k.name}: parameter {p.name} must be C-contiguous "
                                    f"(use np.ascontiguousarray)")
            glob[p.name] = a.reshape(-1)
        c = _Counters()
        nt = self.nthreads
        tx, ty, tz = self.tdims
        tcoords = {"threadIdx.x": np.arange(tx, dtype=np.int64).reshape(1, 1, 1, tx),
                   "threadIdx.y": np.arange(ty, dtype=np.int64).reshape(1, 1, ty, 1),
                   "threadIdx.z": np.arange(tz, dtype=np.int64).reshape(1, tz, 1, 1)}
        per_chunk = max(1, self.chunk_lanes // nt)
        gnames = _BLOCK_AXES if self.cuda else tuple(f"parallel{d}" for d in range(3))
        g0, g1, _ = self.gdims
        with np.errstate(all="ignore"):
            for b0 in range(0, self.nblocks, per_chunk):
                nb = min(per_chunk, self.nblocks - b0)
                b = np.arange(b0, b0 + nb, dtype=np.int64).reshape(nb, 1, 1, 1)
                coords = {gnames[0]: b % g0, gnames[1]: (b // g0) % g1, gnames[2]: b // (g0 * g1), **tcoords}
                coords[_BLK] = b - b0
                fr = _Frame(k.name, glob, coords, nb * nt, nb, nt, (tz, ty, tx), c, b0)
                self.body(fr, None, nb * nt)
        return {"global_load_bytes": c.gl, "global_store_bytes": c.gs, "shared_load_bytes": c.sl,
                "shared_store_bytes": c.ss, "flops": c.flops, "barriers": c.barriers,
                "blocks": self.nblocks if self.cuda else 1, "threads_per_block": nt if self.cuda else 1}


def simulate_kernel(kernel: L.Kernel, buffers: dict[str, np.ndarray], *, readonly: Sequence[str] = (),
                    chunk_lanes: int = DEFAULT_CHUNK_LANES) -> dict[str, int]:
    """Run one kernel launch on `buffers` (name -> C-contiguous array, outputs written in place).

    Returns the kernel's counters (see the module docstring). Raises VerificationError on an
    out-of-bounds access, barrier divergence or a store to a `readonly` buffer.

    >>> from explorer import loopir as L
    >>> x, y = L.Buffer("x", (4,)), L.Buffer("y", (4,))
    >>> i = L.Var("i")
    >>> k = L.Kernel("neg", (x, y), (L.For(i, 4, (L.Store(y, (i,), L.UnOp("neg", x[i])),), "threadIdx.x"),), ("y",))
    >>> simulate_kernel(k, {"x": np.ones(4, np.float32), "y": np.zeros(4, np.float32)})["flops"]
    4
    """
    return KernelSim(kernel, readonly, chunk_lanes).run(buffers)


# ----------------------------------------------------------------------------- programs
def total(counters: dict[str, dict[str, int]]) -> dict[str, int]:
    """Sum of per-kernel counters ('threads_per_block' is the maximum)."""
    out = {k: 0 for k in COUNTER_KEYS}
    for name, c in counters.items():
        if name == "total":
            continue
        for k in COUNTER_KEYS:
            out[k] = max(out[k], c[k]) if k == "threads_per_block" else out[k] + c[k]
    return out


def _alloc_output(b: L.Buffer) -> np.ndarray:
    dt = L.np_dtype(b.dtype)
    # poison: a kernel that forgets to write an element shows NaN instead of a plausible 0
    return np.full(b.shape, np.nan, dt) if b.dtype in _FLOATS else np.zeros(b.shape, dt)


def _program_inputs(program: L.Program, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    consts = list(getattr(program, "constants", ()) or ())
    n_user = len(program.inputs) - len(consts)
    if len(inputs) == n_user and consts:
        inputs = list(inputs) + [d for _, d in consts]
    if len(inputs) != len(program.inputs):
        raise ExplorerError(f"program {program.name} takes {len(program.inputs)} inputs "
                            f"({', '.join(b.name for b in program.inputs)}) but got {len(inputs)}")
    out = []
    for b, a in zip(program.inputs, inputs):
        a = np.asarray(a)
        if a.shape != b.shape:
            raise ShapeError(f"program {program.name}: input {b.name} expects shape {b.shape}, got {a.shape}")
        dt = L.np_dtype(b.dtype)
        if a.dtype != dt:
            if not np.can_cast(a.dtype, dt, casting="same_kind"):
                raise DTypeError(f"program {program.name}: input {b.name} expects dtype {dt}, got {a.dtype}")
            a = a.astype(dt)
        # (np.ascontiguousarray would turn a 0-d array into shape (1,))
        out.append(a if a.flags.c_contiguous else a.copy(order="C"))
    return out


class CustomKernelSim:
    """A custom kernel (explorer.custom_kernel) in the simulator: it runs the kernel's NumPy *reference*,
    not its CUDA source (there is no SIMT trace of user code). Its counters are the bytes of its inputs
    and output (each read/written once) and flops_per_element per output element; 'reference_run' is 1."""

    def __init__(self, kernel: L.Kernel):
        self.kernel = kernel
        self.spec = kernel.meta_dict()["custom"]

    def run(self, buffers: dict[str, np.ndarray]) -> dict[str, int]:
        k = self.kernel
        ins = [buffers[b.name].reshape(b.shape) for b in k.inputs]
        out = self.spec.run_reference(*ins)
        for b in k.output_buffers:
            buffers[b.name].reshape(b.shape)[...] = out
        n = int(out.size)
        return {"global_load_bytes": sum(a.nbytes for a in ins), "global_store_bytes": out.nbytes * len(k.outputs),
                "shared_load_bytes": 0, "shared_store_bytes": 0, "flops": self.spec.flops_per_element * n,
                "barriers": 0, "blocks": 1, "threads_per_block": 1, "reference_run": 1}


class ProgramSim:
    """A Program with every kernel compiled once; `run(inputs)` → (outputs, counters)."""

    def __init__(self, program: L.Program, chunk_lanes: int = DEFAULT_CHUNK_LANES):
        self.program = program
        ro = [b.name for b in program.inputs]
        self.kernels = [CustomKernelSim(k) if k.kind == "custom" else KernelSim(k, ro, chunk_lanes)
                        for k in program.kernels]

    def run(self, inputs: Sequence[np.ndarray]) -> tuple[list[np.ndarray], dict[str, dict[str, int]]]:
        p = self.program
        bufs: dict[str, np.ndarray] = dict(zip((b.name for b in p.inputs), _program_inputs(p, inputs)))
        for name, b in p.buffers().items():
            if name not in bufs:
                bufs[name] = _alloc_output(b)
        counters: dict[str, dict[str, int]] = {}
        for ks in self.kernels:
            key = ks.kernel.name
            n = 1
            while key in counters or key == "total":
                key = f"{ks.kernel.name}#{n}"
                n += 1
            counters[key] = ks.run(bufs)
        counters["total"] = total(counters)
        return [bufs[b.name].copy() for b in p.outputs], counters


def run_program(program: L.Program, inputs: Sequence[np.ndarray], *,
                chunk_lanes: int = DEFAULT_CHUNK_LANES) -> tuple[list[np.ndarray], dict[str, dict[str, int]]]:
    """Simulate every kernel of `program` in order; returns (outputs, counters).

    counters maps each kernel's name to its counters, plus 'total' (the sum over kernels).
    Inputs are in Program.inputs order; the program's constants are appended when omitted.

    >>> from explorer import loopir as L
    >>> x, y = L.Buffer("x", (4,)), L.Buffer("out0", (4,))
    >>> i = L.Var("i")
    >>> k = L.Kernel("copy", (x, y), (L.For(i, 4, (L.Store(y, (i,), x[i]),), "parallel"),), ("out0",))
    >>> outs, ctr = run_program(L.Program("f", (k,), (x,), (y,)), [np.arange(4, dtype=np.float32)])
    >>> outs[0].tolist(), ctr["total"]["global_load_bytes"]
    ([0.0, 1.0, 2.0, 3.0], 16)
    """
    return ProgramSim(program, chunk_lanes).run(inputs)


def summary(counters: dict[str, dict[str, int]]) -> str:
    """A table of counters per kernel (and the total), bytes in human units.

    >>> c = dict(global_load_bytes=4096, global_store_bytes=2048, shared_load_bytes=0, shared_store_bytes=0,
    ...          flops=1024, barriers=0, blocks=4, threads_per_block=128)
    >>> print(summary({"scale": c}))
    kernel  blocks×threads  global ld  global st  shared ld  shared st  flops  barriers
    scale            4×128     4.1 kB    2.05 kB        0 B        0 B  1,024         0
    """
    def human(b: int) -> str:
        for unit, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if b >= s:
                return f"{b / s:.3g} {unit}"
        return f"{b} B"

    rows = [("kernel", "blocks×threads", "global ld", "global st", "shared ld", "shared st", "flops",
             "barriers")]
    for name, c in counters.items():
        rows.append((name, f"{c['blocks']}×{c['threads_per_block']}" if name != "total" else "",
                     human(c["global_load_bytes"]), human(c["global_store_bytes"]),
                     human(c["shared_load_bytes"]), human(c["shared_store_bytes"]), f"{c['flops']:,}",
                     f"{c['barriers']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
                     for r in rows)


class SimExecutable:
    """What build(compiled) returns: run(inputs) -> outputs; `counters` holds the last run's counters."""

    def __init__(self, program: L.Program, chunk_lanes: int = DEFAULT_CHUNK_LANES):
        self.program = program
        self.sim = ProgramSim(program, chunk_lanes)
        self.counters: dict[str, dict[str, int]] = {}

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        outs, self.counters = self.sim.run(inputs)
        return outs

    def sampler(self, inputs: Sequence[np.ndarray], include_copies: bool = False):
        """One wall-timed *simulation* for explorer.measure (source 'sim-wall': says nothing about a GPU)."""
        from ..measure import Sampler

        def sample() -> float:
            t0 = time.perf_counter()
            self.run(inputs)
            return (time.perf_counter() - t0) * 1e3
        return Sampler(sample, source="sim-wall")

    def time(self, inputs: Sequence[np.ndarray], warmup: int = 0, repeat: int | None = 3, include_copies: bool = False):
        """Wall time of the *simulation* (source='sim-wall'); it says nothing about a GPU's speed."""
        from ..measure import measure
        return measure(self.sampler(inputs), warmup=warmup, repeat=repeat)

    def summary(self) -> str:
        if not self.counters:
            return "(not run yet: call run(inputs) first)"
        return summary(self.counters)


def build(compiled) -> SimExecutable:
    """The simulator Executable of a Compiled (runs its tiled Program)."""
    return SimExecutable(compiled.program)
