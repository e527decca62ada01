"""Index-set splitting (CPU): a loop whose selects compare its variable with constants — the
lowering of concat and pad — runs as one loop per range between those constants, each with the
selects decided, so every piece is a plain copy/compute loop the C compiler vectorizes.

Before (concat([x: f32[4,3], y: f32[4,2]], axis=1)):
    for i0 in parallel(4):
      for i1 in range(5):
        out0[i0, i1] = select(i1 < 3, x[i0, i1], y[i0, i1 - 3])
After:
    for i0 in parallel(4):
      for i1 in range(3):
        out0[i0, i1] = x[i0, i1]
      for i1 in range(2):
        out0[i0, i1 + 3] = y[i0, i1]

Only loops whose bodies are plain stores, ifs and loops are split (elementwise kernels), and only at
constants strictly inside the loop's range, so a kernel without such selects is returned unchanged.
"""
from __future__ import annotations

from typing import Sequence

from .. import loopir as L

_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
MAX_PIECES = 9  # a loop splits into at most this many ranges (keeps code size bounded)


def split_index_ranges(stmts: Sequence[L.Stmt]) -> tuple[L.Stmt, ...]:
    """Split every eligible loop at the constants its selects compare the loop variable with."""
    def visit(s: L.Stmt):
        if not (isinstance(s, L.For) and s.kind in ("serial", "parallel", "vectorized") and _plain(s.body)):
            return None
        cuts = sorted({c for c in _cut_points(s.body, s.var.name) if 0 < c < s.extent})
        if not cuts or len(cuts) >= MAX_PIECES:
            return None
        bounds = [0, *cuts, s.extent]
        out = []
        for lo, hi in zip(bounds, bounds[1:]):
            body = L.map_stmt_exprs(s.body, lambda e: _decide(e, s.var.name, lo, hi))
            if lo:
                body = _shift(body, s.var, lo)
            # a one-iteration piece of a parallel loop (a pad's edge row) is not worth an OpenMP region
            kind = "serial" if s.kind == "parallel" and hi - lo < 2 else s.kind
            out.append(L.For(s.var, hi - lo, body, kind, s.annotations))
        return out
    return L.map_stmts(stmts, visit)


def _plain(body: Sequence[L.Stmt]) -> bool:
    return all(isinstance(x, (L.For, L.Store, L.If)) for x in L.walk(body))


def _compare(e: L.Expr, var: str) -> tuple[str, int] | None:
    """(op, c) when e is `var op c` (or `c op var`, flipped) for an integer constant c."""
    if not (isinstance(e, L.BinOp) and e.op in _FLIP):
        return None
    if isinstance(e.a, L.Var) and e.a.name == var and isinstance(e.b, L.Const) and isinstance(e.b.value, int):
        return e.op, int(e.b.value)
    if isinstance(e.b, L.Var) and e.b.name == var and isinstance(e.a, L.Const) and isinstance(e.a.value, int):
        return _FLIP[e.op], int(e.a.value)
    return None


def _cut_points(body: Sequence[L.Stmt], var: str) -> set[int]:
    """Where a select's condition on `var` changes value: `var < c` and `var >= c` change at c."""
    cuts: set[int] = set()
    for s in L.walk(body):
        if not isinstance(s, L.Store):
            continue
        for e in L.walk_expr(s.value):
            if isinstance(e, L.Select):
                for x in L.walk_expr(e.cond):
                    cmp = _compare(x, var)
                    if cmp is not None:
                        op, c = cmp
                        cuts.add(c + 1 if op in ("<=", ">") else c)
    return cuts


def _decide(e: L.Expr, var: str, lo: int, hi: int) -> L.Expr | None:
    """Fold (bottom-up) what the range lo <= var < hi decides: comparisons, &&/||, selects."""
    cmp = _compare(e, var)
    if cmp is not None:
        op, c = cmp
        first, last = (lo, hi - 1)
        holds = {"<": (first < c, last < c), "<=": (first <= c, last <= c), ">": (first > c, last > c),
                 ">=": (first >= c, last >= c)}[op]
        if holds[0] == holds[1]:  # monotone in var: true (or false) at both ends means on the whole range
            return L.Const(holds[0], "bool")
        return None
    if isinstance(e, L.BinOp) and e.op in ("&&", "||"):
        known = [x for x in (e.a, e.b) if _is_bool_const(x)]
        if known:
            other = e.b if known[0] is e.a else e.a
            v = bool(known[0].value)
            if e.op == "&&":
                return other if v else L.Const(False, "bool")
            return L.Const(True, "bool") if v else other
        return None
    if isinstance(e, L.Select) and _is_bool_const(e.cond):
        return e.a if e.cond.value else e.b
    return None


def _is_bool_const(e: L.Expr) -> bool:
    return isinstance(e, L.Const) and isinstance(e.value, bool)


def _shift(body: Sequence[L.Stmt], var: L.Var, lo: int) -> tuple[L.Stmt, ...]:
    """The body with `var` replaced by `var + lo` (the piece's loop counts from 0), indices simplified."""
    to = {var.name: L.BinOp("+", var, L.Const(lo))}

    def index(e: L.Expr) -> L.Expr:
        return L.simplify_expr(L.substitute(e, to))

    def expr(e: L.Expr) -> L.Expr:
        e = L.substitute(e, to)
        return L.map_expr(e, lambda x: L.Load(x.buffer, tuple(L.simplify_expr(i) for i in x.indices))
                          if isinstance(x, L.Load) else None)

    def visit(s: L.Stmt):
        if isinstance(s, L.Store):
            return L.Store(s.buffer, tuple(index(i) for i in s.indices), expr(s.value))
        if isinstance(s, L.If):
            return L.If(expr(s.cond), s.then, s.orelse)
        return None
    return L.map_stmts(body, visit)
