"""CPU vectorization as loop IR: reductions in SIMD lanes and register-tiled micro-kernels.

The `vectorized` stage on the cpu target, after `tiled`. Both rewrites used to happen inside the
C printer; here they are loop IR, so the snapshot shows what the C runs and the simulator runs it.
codegen/c.py prints the result as it is.

1. Lane accumulators. A serial loop around a vectorized loop that accumulates into 0-d locals
   (`acc = acc OP e`, OP in +, max, min) keeps one partial accumulator per lane, so the lane loop
   carries no dependency (it vectorizes; for + and max/min its lanes become vector registers).
   Sums are reassociated (lane partial sums, as NumPy's pairwise sum reassociates too); max/min
   keep NaN propagation lane-wise and in the combine.

   Before:                                     After:
     for j_o in range(8):                        alloc acc lanes: f32[8] local
       for j_i in vectorized(8):                 for acc lane in vectorized(8):
         acc[] = acc[] + x[i, j_o * 8 + j_i]       acc lanes[acc lane] = 0.0f
                                                 for j_o in range(8):
                                                   for j_i in vectorized(8):
                                                     acc lanes[j_i] = acc lanes[j_i] + x[i, j_o * 8 + j_i]
                                                 for acc lane in range(8):
                                                   acc[] = acc[] + acc lanes[acc lane]

2. Micro-kernels. A serial loop whose body is unrolled loops around vectorized loops of stores
   (a matmul's k loop over its register block) is unrolled into one statement per vector of
   lanes (8 floats / 4 doubles; 16 / 8 for 64-byte vectors, vector_lanes). When some local tile is then indexed at constant, lane-aligned
   offsets only (the accumulators), the loop becomes a `MicroKernel`: those vectors live in
   registers for the whole loop (the C backend gives them GCC vector variables in a noinline
   helper), and guards fixed for the whole loop (a partial row tile) are hoisted.

   Before:                                     After:
     for k in range(16):                         microkernel mk0 (register tiles acc[0, 8] as f32x8):
       for r in unrolled(2):                       for k in range(16):
         for v in vectorized(8):                     for lane in vectorized(8):
           acc[r, v] = acc[r, v]                       acc[0, lane] = acc[0, lane] + x[i * 2, k] * w[k, lane]
             + x[i * 2 + r, k] * w[k, v]             for lane in vectorized(8):
                                                       acc[1, lane] = acc[1, lane] + x[i * 2 + 1, k] * w[k, lane]

   Not a micro-kernel (the loop stays as it is): other statements in the body, strided or
   partial-vector lanes, dtypes without vectors (f16, bf16, bool), calls, casts and selects on
   vector values, a 0-d local in the region, guards that vary inside the loop, more than
   MAX_VECTOR_REGISTERS register vectors or MAX_VECTOR_STMTS statements.

>>> from explorer import loopir as L
>>> x, y = L.Buffer("x", (4, 16)), L.Buffer("y", (16,))
>>> acc = L.Buffer("acc", (16,), "f32", "local")
>>> k, v = L.Var("k"), L.Var("v")
>>> body = (L.Alloc(acc), L.For(k, 4, (L.For(v, 16, (L.Store(acc, (v,), acc[v] + x[k, v]),), "vectorized"),)),
...         L.For(v, 16, (L.Store(y, (v,), acc[v]),), "vectorized"))
>>> p = L.Program("colsum", (L.Kernel("colsum", (x, y), body, outputs=("y",)),), (x,), (y,))
>>> print(vectorize_cpu(p).kernels[0].body[1])
microkernel mk0 (register tiles acc[0, 8] as f32x8):
  for k in range(4):
    for lane in vectorized(8):
      acc[lane] = acc[lane] + x[k, lane]
    for lane in vectorized(8):
      acc[8 + lane] = acc[8 + lane] + x[k, 8 + lane]
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Mapping

from .. import loopir as L
from ..schedules.cpu import MAX_VECTOR_STMTS  # unrolled vector statements per micro-kernel
from ..target import get_target

# elements per 32-byte vector (AVX2; gcc splits them on narrower ISAs)
VECTOR_LANES: Mapping[str, int] = get_target("cpu").vector_lanes
MAX_VECTOR_REGISTERS = 24  # 16 ymm registers; beyond this gcc spills anyway, keep the array form
# (dtype, lanes) the C backend has a GCC vector type for (codegen/c.py prints ke_<suffix>)
C_VECTOR_TYPES: Mapping[tuple[str, int], str] = {("f32", 8): "v8f", ("f64", 4): "v4d", ("i32", 8): "v8i",
                                                 ("i64", 4): "v4l",     # 32 bytes (AVX2 ymm)
                                                 ("f32", 16): "v16f", ("f64", 8): "v8d", ("i32", 16): "v16i",
                                                 ("i64", 8): "v8l"}     # 64 bytes (AVX-512 zmm)
# dtypes the C backend computes in floating-point registers (a + reduction of these may be reassociated)
C_FLOATS = ("f32", "f16", "f64", "bf16")


def vectorize_cpu(program: L.Program) -> L.Program:
    """Lane accumulators and micro-kernels in every kernel of a tiled CPU program (see the module doc).

    Custom kernels and kernels without such loops are returned unchanged.
    """
    kernels = tuple(k if k.kind == "custom" else _KernelVectorizer(k).kernel() for k in program.kernels)
    if all(a is b for a, b in zip(kernels, program.kernels)):
        return program
    return replace(program, kernels=kernels)


class _NoVector(Exception):
    """The region does not fit the vector-register form; it stays a plain serial loop."""


class _KernelVectorizer:
    def __init__(self, kernel: L.Kernel):
        self.k = kernel
        # width of the loops without one of their own (vector_lanes): the kernel's meta 'vector_bytes'
        # (64 for the attention kernel on AVX-512 hosts), else the target's 32-byte vector
        self.vector_bytes = kernel.meta_dict().get("vector_bytes", 32)
        self.micro_kernels = 0
        self.changed = False
        used = {x.name for s in L.walk(kernel.body) for e in L.stmt_exprs(s) for x in L.walk_expr(e)
                if isinstance(x, L.Var)} | {f.var.name for f in L.walk_loops(kernel.body)}
        # the lane variable of micro-kernel vectors: any name no loop of the kernel uses
        self.lane = next(n for n in ("lane", *(f"lane{i}" for i in range(1, len(used) + 2))) if n not in used)

    def kernel(self) -> L.Kernel:
        body = self.stmts(self.k.body, {})
        return self.k.replace(body=body) if self.changed else self.k

    # -- the walk: which local buffers are in scope (allocated by an enclosing body) ---------------
    def stmts(self, body: Iterable[L.Stmt], scope: dict[str, L.Buffer]) -> tuple[L.Stmt, ...]:
        scope = dict(scope)
        out: list[L.Stmt] = []
        for s in body:
            out.extend(self.stmt(s, scope))
        return tuple(out)

    def stmt(self, s: L.Stmt, scope: dict[str, L.Buffer]) -> list[L.Stmt]:
        if isinstance(s, L.Alloc):
            scope[s.buffer.name] = s.buffer
            return [s]
        if isinstance(s, L.If):
            return [replace(s, then=self.stmts(s.then, scope), orelse=self.stmts(s.orelse, scope))]
        if isinstance(s, L.For):
            if s.kind == "serial":
                lanes = lane_accumulators(s, scope)
                if lanes is not None:
                    self.changed = True
                    return list(self.stmts(lanes, scope))
                if guard_bound(s) is None:
                    mk = self.micro_kernel(s, scope)
                    if mk is not None:
                        self.changed = True
                        return [mk]
            return [replace(s, body=self.stmts(s.body, scope))]
        return [s]

    # -- register tiles ---------------------------------------------------------------------------------
    def micro_kernel(self, s: L.For, scope: dict[str, L.Buffer]) -> L.MicroKernel | None:
        """Serial loop `s` as a MicroKernel, or None when it does not fit (see the module doc)."""
        lane = L.Var(self.lane, "i32")
        try:
            items = self.unroll(s.body, scope, lane)
        except _NoVector:
            return None
        if not items:
            return None
        # buffers whose every access in the region is at a constant, lane-aligned base → registers
        bases: dict[str, set[int]] = {}
        bad: set[str] = set()
        tile_lanes: dict[str, int] = {}     # a register tile's vectors all have the same width
        for st, dt, _, _, w in items:
            for buf, idx in [(st.buffer, st.indices)] + [(ld.buffer, ld.indices) for ld in _loads(st.value)]:
                if buf.scope == "global" or buf.name not in scope:
                    continue
                flat = L.flat_index(buf, idx)
                base = const_int(L.substitute(flat, {lane.name: L.Const(0, flat.dtype)}))
                if base is None or buf.dtype != dt or base % w or lane_coefficient(flat, lane.name) != 1 \
                        or tile_lanes.setdefault(buf.name, w) != w:
                    bad.add(buf.name)
                else:
                    bases.setdefault(buf.name, set()).add(base)
        written = {st.buffer.name for st, *_ in items}
        tiles = {n: b for n, b in bases.items() if n in written and n not in bad}
        if not tiles or sum(len(b) for b in tiles.values()) > MAX_VECTOR_REGISTERS:
            return None
        guards: list[L.Expr] = []
        for st, dt, cond, _, _ in items:
            if cond is not None:
                if (uses_var(cond, lane.name) or uses_var(cond, s.var.name)
                        or any(isinstance(x, L.Load) for x in L.walk_expr(cond))):
                    return None   # only guards fixed for the whole loop are hoisted
                if cond not in guards:
                    guards.append(cond)
            for e in (*st.indices, st.value, *(() if cond is None else (cond,))):
                for x in L.walk_expr(e):
                    if isinstance(x, L.Load) and x.buffer.scope != "global" and not x.buffer.shape:
                        return None   # a 0-d local lives in a C scalar, not addressable from the helper
            if st.buffer.scope != "global" and not st.buffer.shape:
                return None
            flat = L.flat_index(st.buffer, st.indices)
            if lane_coefficient(flat, lane.name) != 1 or st.buffer.dtype != dt:
                return None
            registers = {(n, b) for n, bs in tiles.items() for b in bs}
            if not _vector_expr(st.value, dt, registers, lane.name):
                return None
        body: list[L.Stmt] = []
        for st, dt, cond, lane_v, w in items:
            vec: L.Stmt = L.For(lane_v, w, (st,), "vectorized")
            body.append(vec if cond is None else L.If(cond, (vec,)))
        tile_list = tuple(L.RegisterTile(scope[n], tuple(sorted(tiles[n])), tile_lanes[n]) for n in sorted(tiles))
        name = f"mk{self.micro_kernels}"
        self.micro_kernels += 1
        return L.MicroKernel(name, replace(s, body=tuple(body)), tile_list, tuple(guards))

    def unroll(self, body: Iterable[L.Stmt], scope: dict[str, L.Buffer],
               lane: L.Var) -> list[tuple[L.Store, str, L.Expr | None, L.Var, int]]:
        """(store, dtype, guard, lane variable, lanes) per vector statement of the fully unrolled body;
        _NoVector if not that shape.

        Unrolled loop variables become constants; a vectorized loop variable v becomes c * W + lane
        for each vector c of its W lanes (vector_lanes: the loop's vector_bytes, or the target's).
        """
        items: list[tuple[L.Store, str, L.Expr | None, L.Var, int]] = []

        def visit(stmts, env):
            for st in stmts:
                if isinstance(st, L.For) and st.kind == "unrolled" and st.extent <= 64:
                    for v in range(st.extent):
                        visit(st.body, {**env, st.var.name: L.Const(v, st.var.dtype)})
                elif isinstance(st, L.For) and st.kind == "vectorized":
                    inner, cond = st.body, None
                    if len(inner) == 1 and isinstance(inner[0], L.If) and not inner[0].orelse:
                        # a bounds guard of the whole lane loop (a partial row tile): kept per statement
                        inner, cond = inner[0].then, inner[0].cond
                        if uses_var(cond, st.var.name):
                            raise _NoVector
                    if not inner or not all(isinstance(b, L.Store) for b in inner):
                        raise _NoVector
                    dts = {b.buffer.dtype for b in inner}
                    dt = dts.pop() if len(dts) == 1 else None
                    w = vector_lanes(st, dt, self.vector_bytes)
                    if w is None or st.extent % w or simd_reduction(st, scope) != []:
                        raise _NoVector
                    lane_v = L.Var(lane.name, st.var.dtype)
                    for c in range(st.extent // w):
                        m = {**env, st.var.name: L.BinOp("+", L.Const(c * w, st.var.dtype), lane_v)}
                        g = None if cond is None else L.substitute(cond, m)
                        items.extend((_substituted(b, m), dt, g, lane_v, w) for b in inner)
                else:
                    raise _NoVector
                if len(items) > MAX_VECTOR_STMTS:
                    raise _NoVector
        visit(body, {})
        return items


def vector_lanes(loop: L.For, dtype: str | None, default_bytes: int = 32) -> int | None:
    """Lanes of one register vector of `dtype` for vectorized `loop`: its ('vector_bytes', n) annotation
    (Schedule.vectorize(axis, 64): one AVX-512 register), else the kernel's width (`default_bytes`: 32,
    the target's vector, or its meta 'vector_bytes'); None when the dtype has no vector form (f16, bf16,
    bool) or the width has no C vector type (codegen/c.py)."""
    if dtype not in VECTOR_LANES:
        return None
    nbytes = dict(loop.annotations).get("vector_bytes", default_bytes)
    if nbytes == 32:
        return VECTOR_LANES[dtype]
    w = VECTOR_LANES[dtype] * nbytes // 32
    return w if (dtype, w) in C_VECTOR_TYPES else None


def _substituted(st: L.Store, m: dict[str, L.Expr]) -> L.Store:
    """st with loop variables replaced; indices simplified (`0 + lane` → `lane`) for the snapshot."""
    def index(e: L.Expr) -> L.Expr:
        return L.simplify_expr(L.substitute(e, m))

    def load(x: L.Expr) -> L.Expr | None:
        return L.Load(x.buffer, tuple(L.simplify_expr(i) for i in x.indices)) if isinstance(x, L.Load) else None
    return L.Store(st.buffer, tuple(index(i) for i in st.indices), L.map_expr(L.substitute(st.value, m), load))


def _vector_expr(e: L.Expr, dt: str, registers: set[tuple[str, int]], lane: str) -> bool:
    """Whether the C backend can print e as a vector of `dt` (or a scalar to broadcast) in a micro-kernel."""
    has_reg = any(isinstance(x, L.Load) and any(r[0] == x.buffer.name for r in registers) for x in L.walk_expr(e))
    if e.dtype != dt:
        return False
    if not has_reg and not uses_var(e, lane):
        return True      # a scalar, broadcast
    if isinstance(e, L.Load):
        return lane_coefficient(L.flat_index(e.buffer, e.indices), lane) == 1 and e.buffer.dtype == dt
    if isinstance(e, L.BinOp) and (e.op in ("+", "-", "*", "max", "min") or (e.op == "/" and dt in C_FLOATS)):
        return _vector_expr(e.a, dt, registers, lane) and _vector_expr(e.b, dt, registers, lane)
    if isinstance(e, L.UnOp) and e.op == "neg":
        return _vector_expr(e.a, dt, registers, lane)
    return False


# -- reductions in SIMD lanes ----------------------------------------------------------------------------
def lane_accumulators(s: L.For, scope: Mapping[str, L.Buffer]) -> list[L.Stmt] | None:
    """`for o: for v in vectorized(E): acc = acc OP e` → E partial accumulators, one per lane.

        acc_lanes[v] = (OP is + ? 0 : acc)          for v in vectorized(E)
        for o: for v in vectorized(E): acc_lanes[v] = acc_lanes[v] OP e
        acc = acc OP acc_lanes[v]                    for v in range(E)

    `scope` holds the local buffers allocated around `s`. Returns None when the loop is not this shape.
    """
    if len(s.body) != 1 or not isinstance(s.body[0], L.For) or s.body[0].kind != "vectorized":
        return None
    inner = s.body[0]
    v = inner.var
    stores = [st for st in L.walk(inner.body) if isinstance(st, L.Store)]
    loads = [ld for st in L.walk(inner.body) for e in L.stmt_exprs(st) for ld in _loads(e)]
    accs: dict[str, tuple[L.Buffer, str]] = {}
    for st in stores:
        b = st.buffer
        if b.name not in scope or b.shape or b.scope == "global":
            continue
        val = st.value
        if not (b.dtype in VECTOR_LANES and isinstance(val, L.BinOp) and val.op in ("+", "max", "min")
                and val.a == L.Load(b, ()) and not any(isinstance(x, L.Load) and x.buffer.name == b.name
                                                       for x in L.walk_expr(val.b))):
            return None
        if b.name in accs or sum(ld.buffer.name == b.name for ld in loads) != 1:
            return None   # written twice, or read by another statement of the loop
        accs[b.name] = (b, val.op)
    if not accs:
        return None
    # names with a space: no user or generated name can take them
    lanes: dict[str, L.Buffer] = {n: L.Buffer(f"{n}{L.LANE_ACCUMULATOR_SUFFIX}", (inner.extent,), b.dtype, "local")
                                  for n, (b, _) in accs.items()}

    def to_lanes(st: L.Stmt):
        if isinstance(st, L.Store) and st.buffer.name in lanes:
            lb = lanes[st.buffer.name]
            return L.Store(lb, (v,), L.BinOp(st.value.op, L.Load(lb, (v,)), st.value.b))
        return None
    out: list[L.Stmt] = []
    fin: list[L.Stmt] = []
    for n, (b, op) in accs.items():
        lb, lv = lanes[n], L.Var(f"{n} lane", v.dtype)
        init = L.Const(0.0 if b.dtype in C_FLOATS else 0, b.dtype) if op == "+" else L.Load(b, ())
        out += [L.Alloc(lb), L.For(lv, inner.extent, (L.Store(lb, (lv,), init),), "vectorized")]
        fin.append(L.For(lv, inner.extent, (L.Store(b, (), L.BinOp(op, L.Load(b, ()), L.Load(lb, (lv,)))),),
                         "serial"))
    body = L.map_stmts(inner.body, to_lanes)
    return out + [L.For(s.var, s.extent, (L.For(v, inner.extent, body, "vectorized"),), s.kind)] + fin


# -- loop analyses (shared with the C printer) ------------------------------------------------------------
def uses_var(e: L.Expr, name: str) -> bool:
    """Whether Var `name` occurs in e."""
    return any(isinstance(x, L.Var) and x.name == name for x in L.walk_expr(e))


def _loads(e: L.Expr) -> list[L.Load]:
    return [x for x in L.walk_expr(e) if isinstance(x, L.Load)]


def lane_coefficient(e: L.Expr, lane: str) -> int | None:
    """Coefficient of Var(lane) when e is affine in it (other terms opaque), else None.

    >>> lane_coefficient(L.BinOp("+", L.BinOp("*", L.Var("r"), L.Const(8)), L.Var("lane")), "lane")
    1
    """
    if not uses_var(e, lane):
        return 0
    if isinstance(e, L.Var):
        return 1
    if isinstance(e, L.BinOp) and e.op in ("+", "-"):
        a, b = lane_coefficient(e.a, lane), lane_coefficient(e.b, lane)
        if a is None or b is None:
            return None
        return a + b if e.op == "+" else a - b
    if isinstance(e, L.BinOp) and e.op == "*":
        for x, y in ((e.a, e.b), (e.b, e.a)):
            if isinstance(y, L.Const) and not uses_var(y, lane):
                c = lane_coefficient(x, lane)
                return None if c is None else c * int(y.value)
    return None


def const_int(e: L.Expr) -> int | None:
    """Value of an integer expression of constants (+, -, *), else None."""
    if isinstance(e, L.Const) and e.dtype in ("i32", "i64"):
        return int(e.value)
    if isinstance(e, L.BinOp) and e.op in ("+", "-", "*"):
        a, b = const_int(e.a), const_int(e.b)
        if a is None or b is None:
            return None
        return a + b if e.op == "+" else (a - b if e.op == "-" else a * b)
    return None


def _linear_in(e: L.Expr, var: str) -> L.Expr | None:
    """rest if e == var + rest (rest free of var), else None."""
    if isinstance(e, L.Var) and e.name == var:
        return L.Const(0, e.dtype)
    if isinstance(e, L.BinOp) and e.op == "+":
        if not uses_var(e.b, var):
            r = _linear_in(e.a, var)
            return None if r is None else L.simplify_expr(L.BinOp("+", r, e.b))
        if not uses_var(e.a, var):
            r = _linear_in(e.b, var)
            return None if r is None else L.simplify_expr(L.BinOp("+", e.a, r))
    return None


def guard_bound(s: L.For) -> tuple[L.Expr, tuple[L.Stmt, ...]] | None:
    """For `for v: if (v + rest < n) body` return (n - rest, body): the guard becomes the loop bound."""
    if s.kind not in ("vectorized", "serial", "unrolled") or len(s.body) != 1:
        return None
    g = s.body[0]
    if not isinstance(g, L.If) or g.orelse or not isinstance(g.cond, L.BinOp) or g.cond.op != "<":
        return None
    if uses_var(g.cond.b, s.var.name) or g.cond.a.dtype not in ("i32", "i64"):
        return None
    rest = _linear_in(g.cond.a, s.var.name)
    if rest is None:
        return None
    return L.simplify_expr(L.BinOp("-", g.cond.b, rest)), g.then


def simd_reduction(s: L.For, scope: Mapping[str, L.Buffer]) -> list[str] | None:
    """Names needing reduction(+:...) for `omp simd` on loop s, or None when simd is unsafe.

    Safe when each buffer written in the loop is written and read only at one index tuple that
    involves the loop variable (iterations touch disjoint elements), or is a 0-d local accumulated
    as `acc = acc + e` (an add reduction). Buffers allocated inside the body are private.
    """
    v = s.var.name
    allocated = {a.buffer.name for a in L.walk(s.body) if isinstance(a, L.Alloc)}
    stores = [st for st in L.walk(s.body) if isinstance(st, L.Store) and st.buffer.name not in allocated]
    loads: list[L.Load] = []
    for st in L.walk(s.body):
        for e in L.stmt_exprs(st):
            loads.extend(_loads(e))
    reductions: list[str] = []
    for name in sorted({st.buffer.name for st in stores}):
        ws = [st for st in stores if st.buffer.name == name]
        rs = [ld for ld in loads if ld.buffer.name == name]
        idx = {st.indices for st in ws} | {ld.indices for ld in rs}
        if len(idx) == 1 and any(uses_var(i, v) for i in next(iter(idx))):
            continue
        b = ws[0].buffer
        if (name in scope and not b.shape and b.dtype in C_FLOATS and len(ws) == 1
                and isinstance(ws[0].value, L.BinOp) and ws[0].value.op == "+"
                and ws[0].value.a == L.Load(b, ()) and len(rs) == 1
                and not any(isinstance(x, L.Load) and x.buffer.name == name for x in L.walk_expr(ws[0].value.b))):
            reductions.append(name)
            continue
        return None
    return reductions
