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

partition_loops does the same for the loops a schedule names (Schedule.partition), in any body and
for affine tests (a direct convolution's padding select: ow_o * 4 + ow_i + kw - 1 >= 0): the interior
of the output runs without the test, the borders keep it.
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
        return _pieces(s, [0, *cuts, s.extent],
                       lambda lo, hi: L.map_stmt_exprs(s.body, lambda e: _decide(e, s.var.name, lo, hi)))
    return L.map_stmts(stmts, visit)


def _pieces(s: L.For, bounds: Sequence[int], body_of) -> list[L.For]:
    """Loop s as one loop per range [bounds[k], bounds[k+1]), each running body_of(lo, hi) counted from 0."""
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        body = body_of(lo, hi)
        if lo:
            body = _shift(body, s.var, lo)
        # a one-iteration piece of a parallel loop (a pad's edge row) is not worth an OpenMP region
        kind = "serial" if s.kind == "parallel" and hi - lo < 2 else s.kind
        out.append(L.For(s.var, hi - lo, body, kind, s.annotations))
    return out


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
    return _fold_bool(e)


def _fold_bool(e: L.Expr) -> L.Expr | None:
    """Fold &&, || and selects with a constant operand or condition (None: nothing to fold)."""
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


# ----------------------------------------------------------------------------- partition (schedule primitive)
def partition_loops(stmts: Sequence[L.Stmt], loops: set[str] | frozenset[str]) -> tuple[L.Stmt, ...]:
    """Split each loop named in `loops` (Schedule.partition) into the ranges where the bounds tests of its
    body are decided, and fold the decided tests away in each range (index-set splitting).

    A test is a comparison of two affine integer expressions (constants, loop variables, +, -, * by a
    constant) in a select's condition or an `if`; it is decided for an iteration of loop v when it holds
    (or fails) for every value of the loops nested in v that it also reads. A direct convolution's
    padding select after tiling (ow = ow_o * 4 + ow_i, 3 taps, 56 columns):

    Before:                                      After partition(ow_o):
      for ow_o in range(14):                       for ow_o in range(1):          # left border: tested
        for kw in range(3):                          for kw in range(3):
          for ow_i in unrolled(4):                     for ow_i in unrolled(4):
            acc[ow_i] += select(ow_o * 4 + ow_i          acc[ow_i] += select(ow_o * 4 + ow_i + kw - 1 >= 0, ...)
              + kw - 1 >= 0 && ow_o * 4 + ow_i       for ow_o in range(12):         # interior: no test
              + kw - 1 < 56, x[...], 0) * w[...]       for kw in range(3):
                                                         for ow_i in unrolled(4):
                                                           acc[ow_i] += x[..., (ow_o + 1) * 4 + ow_i + kw - 1, ...] * w[...]
                                                     for ow_o in range(1):          # right border: tested
                                                       ...  select((ow_o + 13) * 4 + ow_i + kw - 1 < 56, ...)

    Loops are partitioned innermost first, so an outer partition copies the inner pieces; a piece of one
    iteration of a parallel loop becomes serial. A loop without decidable tests, or one that would
    split into MAX_PIECES or more pieces, is left as it is.
    """
    if not loops:
        return tuple(stmts)

    def visit(s: L.Stmt):
        if not (isinstance(s, L.For) and s.var.name in loops and s.kind in ("serial", "parallel")):
            return None
        extents = {f.var.name: f.extent for f in L.walk_loops(s.body)}
        tests = sorted({t for t in _bounds_tests(s.body) if s.var.name in t[0]}, key=repr)
        if not tests:
            return None
        status = [tuple(_test_status(t, s.var.name, v, extents) for t in tests) for v in range(s.extent)]
        bounds = [0] + [v for v in range(1, s.extent) if status[v] != status[v - 1]] + [s.extent]
        if len(bounds) == 2 and all(x is None for x in status[0]) or len(bounds) - 1 >= MAX_PIECES:
            return None
        return _pieces(s, bounds, lambda lo, hi: _fold_tests(
            s.body, {t: st for t, st in zip(tests, status[lo]) if st is not None}))
    return L.map_stmts(stmts, visit)


# an affine integer expression: ((var, coefficient), ...) sorted by name, and a constant
_Affine = tuple[tuple[tuple[str, int], ...], int]


def _as_test(e: L.Expr) -> tuple[frozenset[str], str, _Affine] | None:
    """(variables, op, lhs - rhs) when e compares two affine integer expressions."""
    if not (isinstance(e, L.BinOp) and e.op in _FLIP):
        return None
    d = L.affine_terms(L.BinOp("-", e.a, e.b)) if e.a.dtype == e.b.dtype else None
    if d is None:
        return None
    diff = tuple(sorted(d[0].items())), d[1]
    return frozenset(n for n, _ in diff[0]), e.op, diff


def _bounds_tests(body: Sequence[L.Stmt]):
    """Every affine comparison in a select's condition or an if's condition in body."""
    for s in L.walk(body):
        if isinstance(s, L.If):
            conds = [s.cond]
        else:
            conds = [x.cond for e in L.stmt_exprs(s) for x in L.walk_expr(e) if isinstance(x, L.Select)]
        for c in conds:
            for x in L.walk_expr(c):
                t = _as_test(x)
                if t is not None:
                    yield t


def _test_status(test, var: str, value: int, extents: dict[str, int]) -> bool | None:
    """Whether `test` holds (True), fails (False) or depends on the inner loops (None) at var = value.
    Variables other than var must be loops nested in var's body (their ranges are known)."""
    names, op, (coef, const) = test
    lo = hi = const
    for n, c in coef:
        if n == var:
            lo += c * value
            hi += c * value
        elif n in extents and extents[n] > 0:
            top = c * (extents[n] - 1)
            lo, hi = lo + min(0, top), hi + max(0, top)
        else:
            return None
    holds = {"<": (hi < 0, lo >= 0), "<=": (hi <= 0, lo > 0), ">": (lo > 0, hi <= 0), ">=": (lo >= 0, hi < 0)}[op]
    return True if holds[0] else False if holds[1] else None


def _fold_tests(body: Sequence[L.Stmt], decided: dict) -> tuple[L.Stmt, ...]:
    """body with the decided tests replaced by their value, then &&, ||, selects and ifs folded."""
    def expr(e: L.Expr) -> L.Expr | None:
        t = _as_test(e)
        if t is not None and t in decided:
            return L.Const(decided[t], "bool")
        return _fold_bool(e)

    def stmt(s: L.Stmt):
        if isinstance(s, L.If) and _is_bool_const(s.cond):
            return list(s.then if s.cond.value else s.orelse)
        return None
    return L.map_stmts(L.map_stmt_exprs(body, expr), stmt)
