"""float4 vectorization (CUDA, and sim, which runs the same loop IR): a `vectorized` loop of 4 lanes over
f32 global memory becomes a Float4Block — its 16-byte loads hoisted, its body once per lane, 16-byte
stores — when that is provably legal.

Before (tiled)::

    for tx in threadIdx.x(16):
      for v in vectorized(4):
        out0[tx * 4 + v] = x[tx * 4 + v] * s[0]

After (vectorized)::

    for tx in threadIdx.x(16):
      float4 v in [0, 4):
        ld0_0 = float4 x[tx * 4 ..+4]
        st0_0[0] = ld0_0[0] * s[0]
        st0_0[1] = ld0_0[1] * s[0]
        st0_0[2] = ld0_0[2] * s[0]
        st0_0[3] = ld0_0[3] * s[0]
        out0[tx * 4 ..+4] = float4(st0_0[0], st0_0[1], st0_0[2], st0_0[3])

Legal when: extent 4; the body is only Stores; every global store's flat index has the loop variable
with stride 1 (f32, the rest of the index provably a multiple of 4, no load in it); every global load
either does not depend on the loop variable (it stays a scalar load per lane, like s[0]) or is such a
stride-1 access, hoisted into a float4 register when every lane reads it (a load that only a select
branch or the right side of && / || reads stays a scalar load per lane: concat's select(i < n, a[i],
b[i - n]) must not read a past its end); no global buffer is both read and written in the body (the
lanes would see another order). Any other `vectorized` loop stays as it is (CUDA prints an unrolled
scalar loop) and its kernel says why in a `# why: float4 ...` note.

Registers are named per kernel in the order CUDA codegen prints the blocks: block n's loads are
ld{n}_{j} (sorted by buffer and index), its stores' lanes st{n}_{i} (i: the store's position in the
loop body); CUDA prints them as ke_ld{n}_{j} (a float4) and ke_st{n}_{i}_{lane} (floats).

>>> from explorer import loopir as L
>>> x, s, y = L.Buffer("x", (64,)), L.Buffer("s", (1,)), L.Buffer("out0", (64,))
>>> tx, v = L.Var("tx"), L.Var("v")
>>> loop = L.For(v, 4, (L.Store(y, (tx * 4 + v,), x[tx * 4 + v] * s[0]),), kind="vectorized")
>>> k = L.Kernel("scale", (x, s, y), (L.For(tx, 16, (loop,), kind="threadIdx.x"),), outputs=("out0",))
>>> out = vectorize_cuda(L.Program("p", (k,), (x, s), (y,)))
>>> print("\\n".join(out.kernels[0].text().splitlines()[2:5]))
    float4 v in [0, 4):
      ld0_0 = float4 x[tx * 4 ..+4]
      st0_0[0] = ld0_0[0] * s[0]
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

from .. import loopir as L

LANES = L.FLOAT4_LANES
_INTS = ("i32", "i64")


def vectorize_cuda(program: L.Program) -> L.Program:
    """Every provably legal 4-lane `vectorized` loop of `program` as a Float4Block (see the module
    docstring); the program itself when there is none (also when it was vectorized already)."""
    kernels = tuple(_vectorize_kernel(k) for k in program.kernels)
    if all(a is b for a, b in zip(kernels, program.kernels)):
        return program
    return replace(program, kernels=kernels)


# ----------------------------------------------------------------------------- index analysis
def _coef(e: L.Expr, var: str) -> int | None:
    """Coefficient of Var `var` in e when e is affine in it (0 if absent); None when not affine."""
    if not any(isinstance(x, L.Var) and x.name == var for x in L.walk_expr(e)):
        return 0
    if isinstance(e, L.Var):
        return 1
    if isinstance(e, L.Cast):
        return _coef(e.a, var)
    if isinstance(e, L.BinOp):
        if e.op in ("+", "-"):
            a, b = _coef(e.a, var), _coef(e.b, var)
            if a is None or b is None:
                return None
            return a + b if e.op == "+" else a - b
        if e.op == "*":
            if isinstance(e.b, L.Const) and e.b.dtype in _INTS:
                a = _coef(e.a, var)
                return None if a is None else a * int(e.b.value)
            if isinstance(e.a, L.Const) and e.a.dtype in _INTS:
                b = _coef(e.b, var)
                return None if b is None else b * int(e.a.value)
    return None


def _divisible(e: L.Expr, n: int) -> bool:
    """True when the integer expression e is provably a multiple of n for every value of its vars."""
    if isinstance(e, L.Const):
        return e.dtype in _INTS and int(e.value) % n == 0
    if isinstance(e, L.BinOp):
        if e.op in ("+", "-"):
            return _divisible(e.a, n) and _divisible(e.b, n)
        if e.op == "*":
            return _divisible(e.a, n) or _divisible(e.b, n)
    if isinstance(e, L.Cast):
        return _divisible(e.a, n)
    return False


def _same(a: Sequence[L.Stmt], b: Sequence[L.Stmt]) -> bool:
    """The same statement objects (nothing below was rewritten)."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _global_loads(e: L.Expr, conditional: bool = False) -> Iterator[tuple[L.Load, bool]]:
    """(load, whether it is read only on some path) for every global load in e: the branches of a
    select and the right operand of && / || are evaluated only when taken (C's ?: and short circuit)."""
    if isinstance(e, L.Load):
        if e.buffer.scope == "global":
            yield e, conditional
        for i in e.indices:
            yield from _global_loads(i, conditional)
    elif isinstance(e, L.Select):
        yield from _global_loads(e.cond, conditional)
        yield from _global_loads(e.a, True)
        yield from _global_loads(e.b, True)
    elif isinstance(e, L.BinOp):
        yield from _global_loads(e.a, conditional)
        yield from _global_loads(e.b, conditional or e.op in ("&&", "||"))
    elif isinstance(e, (L.UnOp, L.Cast)):
        yield from _global_loads(e.a, conditional)
    elif isinstance(e, L.Call):
        for a in e.args:
            yield from _global_loads(a, conditional)


@dataclass
class _Access:
    """How one global access moves with the loop variable: 'invariant', 'vector' (base: the flat index
    of lane 0) or 'bad' (why: what rules float4 out)."""

    kind: str
    base: L.Expr | None = None
    why: str = ""


# ----------------------------------------------------------------------------- the rewrite
@dataclass
class _KernelVectorizer:
    kernel: L.Kernel
    index_dtype: str
    taken: set[str]                  # buffer names in the kernel (registers must not reuse one)
    blocks: int = 0                  # Float4Blocks made so far (numbers registers per kernel)
    notes: list[str] = field(default_factory=list)

    def access(self, buf: L.Buffer, indices: Sequence[L.Expr], var: str) -> _Access:
        flat = L.strided_index(buf, indices, self.index_dtype)
        c = _coef(flat, var)
        if c == 0:
            return _Access("invariant")
        if c is None:
            return _Access("bad", why=f"{buf.name}'s index is not affine in {var}")
        if c != 1:
            return _Access("bad", why=f"{buf.name} is accessed with stride {c} in {var}, not 1")
        if buf.dtype != "f32":
            return _Access("bad", why=f"{buf.name} is {buf.dtype} (float4 moves f32)")
        if any(isinstance(x, L.Load) for x in L.walk_expr(flat)):
            return _Access("bad", why=f"{buf.name}'s index reads memory")
        base = L.simplify_expr(L.map_expr(flat, lambda x: L.Const(0, x.dtype)
                                          if isinstance(x, L.Var) and x.name == var else None))
        if not _divisible(base, LANES):
            return _Access("bad", why=f"{buf.name}'s index {L.expr_text(base)} is not provably a multiple of "
                                      f"{LANES} (a float4 access must be 16-byte aligned)")
        return _Access("vector", base)

    def register(self, name: str) -> L.Buffer:
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        return L.Buffer(name, (LANES,), "f32", "local")

    def visit(self, stmts: Sequence[L.Stmt]) -> tuple[L.Stmt, ...]:
        """Pre-order, as CUDA codegen prints, so block numbers follow the source."""
        out: list[L.Stmt] = []
        for s in stmts:
            if isinstance(s, L.For):
                if s.kind == "vectorized":
                    block = self.float4(s)
                    if block is not None:
                        out.append(block)
                        continue
                body = self.visit(s.body)
                out.append(s if _same(body, s.body) else replace(s, body=body))
            elif isinstance(s, L.If):
                then, orelse = self.visit(s.then), self.visit(s.orelse)
                out.append(s if _same(then, s.then) and _same(orelse, s.orelse)
                           else replace(s, then=then, orelse=orelse))
            else:
                out.append(s)
        return tuple(out)

    def refuse(self, loop: L.For, why: str) -> None:
        note = f"float4: {loop.var.name} stays a scalar vectorized loop: {why}"
        if note not in self.notes:
            self.notes.append(note)
        return None

    def float4(self, loop: L.For) -> L.Float4Block | None:
        var = loop.var.name
        if loop.extent != LANES:
            return self.refuse(loop, f"extent {loop.extent}, float4 has {LANES} lanes")
        body = [s for s in loop.body if not isinstance(s, L.Comment)]
        if not body or not all(isinstance(s, L.Store) for s in body):
            return self.refuse(loop, "its body is not only stores")
        vector: dict[tuple[str, L.Expr], L.Buffer] = {}
        stores: list[tuple[int, L.Store, L.Expr]] = []
        stored, loaded = set(), set()
        for i, s in enumerate(body):
            assert isinstance(s, L.Store)
            if s.buffer.scope == "global":
                a = self.access(s.buffer, s.indices, var)
                if a.kind != "vector":
                    return self.refuse(loop, a.why or f"the store to {s.buffer.name} does not depend on {var}")
                stored.add(s.buffer.name)
                stores.append((i, s, a.base))
            for e in (*s.indices, s.value):
                for ld, conditional in _global_loads(e):
                    a = self.access(ld.buffer, ld.indices, var)
                    if a.kind == "bad":
                        return self.refuse(loop, a.why)
                    loaded.add(ld.buffer.name)
                    # hoisted only when every lane reads it anyway: concat's select(i < n, a[i], b[i - n])
                    # must not read a past its end (nor b before its start); such a load stays scalar
                    if a.kind == "vector" and not conditional:
                        vector.setdefault((ld.buffer.name, a.base), ld.buffer)
        if stored & loaded:
            return self.refuse(loop, f"{', '.join(sorted(stored & loaded))} is both read and written")

        n = self.blocks
        self.blocks += 1
        regs: dict[tuple[str, L.Expr], L.Buffer] = {}
        loads = []
        for j, (key, buf) in enumerate(sorted(vector.items(), key=lambda kv: (kv[0][0], L.expr_text(kv[0][1])))):
            regs[key] = self.register(f"ld{n}_{j}")
            loads.append(L.Float4Load(regs[key], buf, key[1]))
        lane_regs = {i: self.register(f"st{n}_{i}") for i, _, _ in stores}

        lanes: list[L.Stmt] = []
        for k in range(LANES):
            def lane(x: L.Expr, k=k) -> L.Expr | None:
                if isinstance(x, L.Load) and x.buffer.scope == "global":
                    a = self.access(x.buffer, x.indices, var)
                    reg = regs.get((x.buffer.name, a.base)) if a.kind == "vector" else None
                    if reg is not None:
                        return L.Load(reg, (L.Const(k, "i32"),))
                return None

            def sub(e: L.Expr, k=k) -> L.Expr:
                e = L.map_expr(L.map_expr(e, lane), lambda x: L.Const(k, x.dtype)
                               if isinstance(x, L.Var) and x.name == var else None)
                return L.simplify_expr(e)

            for i, s in enumerate(body):
                if i in lane_regs:
                    lanes.append(L.Store(lane_regs[i], (L.Const(k, "i32"),), sub(s.value)))
                else:
                    lanes.append(L.Store(s.buffer, tuple(sub(ix) for ix in s.indices), sub(s.value)))
        return L.Float4Block(loop.var, tuple(loads), tuple(lanes),
                             tuple(L.Float4Store(s.buffer, base, lane_regs[i]) for i, s, base in stores))


def _vectorize_kernel(k: L.Kernel) -> L.Kernel:
    if k.kind == "custom":
        return k
    taken = {b.name for b in k.params} | {s.buffer.name for s in L.walk(k.body) if isinstance(s, L.Alloc)}
    taken |= {r.name for s in L.walk(k.body) if isinstance(s, L.Float4Block) for r in s.registers}
    v = _KernelVectorizer(k, L.kernel_index_dtype(k), taken)
    body = v.visit(k.body)
    meta = k.meta_dict()
    old_notes = tuple(meta.get("notes", ()))
    notes = old_notes + tuple(n for n in v.notes if n not in old_notes)
    if _same(body, k.body) and notes == old_notes:
        return k
    if notes != old_notes:
        meta["notes"] = notes
    return replace(k, body=body, meta=tuple(meta.items()))
