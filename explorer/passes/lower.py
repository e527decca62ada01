"""lower: each fusion group → a compute definition (explorer/compute.py), together a ComputeProgram.

The compute definition (like a TVM te.compute) names the iteration axes and
gives every value as a scalar expression of those axes; intermediates inside a
group are inlined into expressions — they live in registers, which is exactly
what fusion buys. The lowered snapshot prints each definition's naive loop nest
(compute.loop_nest); the `tiled` stage makes the loops from the same definition
under a Schedule.

Before (fused):                                 After (lowered, printed as its naive loops):
  g0 [contraction] %3 = matmul(x, w)              kernel fused_matmul_add_maximum(x, w, b, out0):
                   %4 = add(%3, b)                  for i in range(64):
                   %6 = maximum(%4, 0.0)              for j in range(256):
                                                        alloc acc3: f32[] local
                                                        acc3[] = 0.0f
                                                        for k in range(128):
                                                          acc3[] = acc3[] + x[i, k] * w[k, j]
                                                        out0[i, j] = max(acc3[] + b[j], 0.0f)
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from .. import loopir as L
from ..compute import Accum, Axis, Compute, ComputeProgram, Stash, StoreDef
from ..errors import ExplorerError, VerificationError
from ..graph import Node
from ..naming import c_identifier, param_name  # noqa: F401  (param_name: kept importable from lower)
from ..ops import conv_dims, get as get_op, normalize_axes, operand_dtype
from .attention import AttentionCompute, AttentionMatch


# ----------------------------------------------------------------------------- expression building
def _bcast_index(src_shape: Sequence[int], out_shape: Sequence[int], idx: Sequence[L.Expr]) -> tuple[L.Expr, ...]:
    """Index into a broadcast operand: align trailing dims; size-1 dims read index 0."""
    off = len(out_shape) - len(src_shape)
    out = []
    for d, s in enumerate(src_shape):
        out.append(L.Const(0) if (s == 1 and out_shape[d + off] != 1) else idx[d + off])
    return tuple(out)


def _strides(shape: Sequence[int]) -> list[int]:
    st = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        st[d] = st[d + 1] * shape[d + 1]
    return st


def _reshape_index(src_shape, out_shape, idx) -> tuple[L.Expr, ...]:
    """The source index of a reshape at output index `idx`.

    Dims are matched in groups whose sizes multiply to the same count (size-1 dims read index 0), so
    a dim that a reshape leaves alone is indexed directly and only merged or split dims pay a division:
    (2H, S, D) → (H, 2, S, D) at (o0, o1, o2) reads (o0 / 2, o0 % 2, o1, o2), where flattening the
    whole index would give ((o0*S + o1)*D + o2) / (2*S*D), ... per element (np.repeat, np.tile)."""
    if not src_shape:
        return ()
    if 0 in src_shape or 0 in out_shape:  # empty: no element is ever read
        return tuple(L.Const(0) for _ in src_shape)
    out: list[L.Expr] = [L.Const(0)] * len(src_shape)
    src_dims = [d for d, n in enumerate(src_shape) if n != 1]
    out_dims = [d for d, n in enumerate(out_shape) if n != 1]
    i = j = 0
    while i < len(src_dims):
        group_src, group_out = [src_dims[i]], [out_dims[j]]
        size_src, size_out = src_shape[src_dims[i]], out_shape[out_dims[j]]
        i, j = i + 1, j + 1
        while size_src != size_out:  # grow the smaller side until both cover the same elements
            if size_src < size_out:
                group_src.append(src_dims[i])
                size_src *= src_shape[src_dims[i]]
                i += 1
            else:
                group_out.append(out_dims[j])
                size_out *= out_shape[out_dims[j]]
                j += 1
        flat: L.Expr = idx[group_out[0]]
        for d in group_out[1:]:
            flat = flat * out_shape[d] + idx[d]
        stride = size_src
        for k, d in enumerate(group_src):
            stride //= src_shape[d]
            v = flat / stride if stride != 1 else flat
            out[d] = L.simplify_expr(v % src_shape[d] if k > 0 else v)
    return tuple(out)


def _dt(node: Node) -> str:
    return L.short_dtype(node.dtype)


def _cast(e: L.Expr, dt: str) -> L.Expr:
    return e if e.dtype == dt else L.Cast(dt, e)


def round_half(e: L.Expr) -> L.Expr:
    """An f16/bf16/fp8 value rounded to its precision at its op's boundary, as NumPy (and ml_dtypes)
    round every f16/bf16/fp8 result.

    Both code generators compute these in float registers, so a narrow intermediate inlined into a
    fused expression would otherwise keep float precision (np.tanh(x).astype(np.int32) on f16 x
    differed). A Cast to the narrow dtype is the rounding (a load, a constant or an existing cast to
    it is already narrow):

        tanh(x[i0]) > x[i0]    →    f16(tanh(x[i0])) > x[i0]
    """
    if e.dtype not in L.LOW_PRECISION or isinstance(e, (L.Load, L.Const, L.Cast)):
        return e
    return L.Cast(e.dtype, e)


class GroupLowering:
    """Builds the scalar expression of any member at a symbolic index (compute_inline)."""

    def __init__(self, buffers: dict[int, L.Buffer], members: set[int], acc_of: dict[int, L.Expr]):
        self.buffers = buffers        # node id → global buffer (external values)
        self.members = members        # node ids inlined in this group
        self.acc_of = acc_of          # reduce/matmul node id → accumulator expression
        self.used: list[L.Buffer] = []

    def value(self, n: Node, idx: tuple[L.Expr, ...]) -> L.Expr:
        if n.id in self.acc_of:
            return self.acc_of[n.id]
        if n.op == "const" and n.size == 1:
            v = n.value.reshape(()).item()
            return L.Const(v, _dt(n))
        if n.id not in self.members:
            buf = self.buffers.get(n.id)
            if buf is None:
                raise VerificationError(f"lowering: value {n.name} has no buffer (fusion invariant broken)")
            if buf not in self.used:
                self.used.append(buf)
            return L.Load(buf, tuple(L.simplify_expr(i) for i in idx))
        d = get_op(n.op)
        if d.category == "elementwise":
            od = L.short_dtype(operand_dtype(n.op, [i.dtype for i in n.inputs], n.dtype))
            args = []
            for k, inp in enumerate(n.inputs):
                a = self.value(inp, _bcast_index(inp.shape, n.shape, idx))
                if n.op == "where" and k == 0:
                    args.append(_cast(a, "bool"))
                else:
                    args.append(_cast(a, od))
            return round_half(_cast(d.scalar(*args, _dt(n)), _dt(n)))
        src = n.inputs[0]
        if n.op == "transpose":
            axes = n.attrs["axes"]
            sidx = [None] * len(axes)
            for dpos, a in enumerate(axes):
                sidx[a] = idx[dpos]
            return self.value(src, tuple(sidx))
        if n.op == "broadcast_to":
            return self.value(src, _bcast_index(src.shape, n.shape, idx))
        if n.op == "reshape":
            return self.value(src, _reshape_index(src.shape, n.shape, idx))
        if n.op == "slice":
            sidx = tuple(L.simplify_expr(L.Const(a) + i * c) for i, a, c in zip(idx, n.attrs["starts"], n.attrs["steps"]))
            return self.value(src, sidx)
        if n.op == "take":
            return self.value(src, self._gather_index(n, idx))
        if n.op == "set_slice":
            inside, vidx = _box_index(n.attrs, n.shape, idx)
            v = n.inputs[1]
            return L.Select(inside, self.value(v, _bcast_index(v.shape, n.shape, vidx)), self.value(src, idx))
        if n.op == "concat":
            return self._concat(n, idx)
        if n.op == "pad":
            return self._pad(n, idx)
        if n.op == "window":   # out[..., h, ..., r] = x[..., h + r, ...]: an index mapping, no copy
            nd = len(src.shape)
            sidx = list(idx[:nd])
            for k, a in enumerate(n.attrs["axes"]):
                sidx[a] = L.simplify_expr(sidx[a] + idx[nd + k])
            return self.value(src, tuple(sidx))
        raise VerificationError(f"lowering: cannot inline {n.op} ({n.name}) into a loop body")

    def _concat(self, n: Node, idx: tuple[L.Expr, ...]) -> L.Expr:
        """concat along `axis`: a chain of selects on idx[axis], each operand read at idx[axis] - its offset.

        concat([a: f32[2,3], b: f32[2,4]], axis=1) at (i, j)  →  j < 3 ? a[i, j] : b[i, j - 3]
        The select only evaluates the branch it takes (C's ?:), so no operand is read out of range; with
        more operands the selects form a balanced tree on the operands' offsets."""
        ax, dt = n.attrs["axis"], _dt(n)
        offsets = np.cumsum([0] + [i.shape[ax] for i in n.inputs])

        def part(k: int) -> L.Expr:
            sub = idx[:ax] + (L.simplify_expr(idx[ax] - int(offsets[k])),) + idx[ax + 1:]
            return _cast(self.value(n.inputs[k], sub), dt)

        def pick(lo: int, hi: int) -> L.Expr:  # a balanced tree: log2(#operands) comparisons per element
            if hi - lo == 1:
                return part(lo)
            mid = (lo + hi) // 2
            return L.Select(L.BinOp("<", idx[ax], L.Const(int(offsets[mid]))), pick(lo, mid), pick(mid, hi))

        return pick(0, len(n.inputs))

    def _pad(self, n: Node, idx: tuple[L.Expr, ...]) -> L.Expr:
        """constant pad: in range of the input, read it shifted by the leading pad; else the constant.

        pad(x: f32[4], pads=((1,2),), value=0.0) at (i)  →  (i >= 1 && i < 5) ? x[i - 1] : 0.0f"""
        src, pads = n.inputs[0], n.attrs["pads"]
        sub = tuple(L.simplify_expr(i - lo) if lo else i for i, (lo, _) in zip(idx, pads))
        conds = []
        for i, (lo, hi), s in zip(idx, pads, src.shape):
            if lo:
                conds.append(L.BinOp(">=", i, L.Const(int(lo))))
            if hi:
                conds.append(L.BinOp("<", i, L.Const(int(lo + s))))
        inner = self.value(src, sub)
        if not conds:
            return inner
        return L.Select(L.all_of(conds), inner, L.Const(n.attrs["value"], _dt(n)))


    def _gather_index(self, n: Node, idx: tuple[L.Expr, ...]) -> tuple[L.Expr, ...]:
        """The data index of `take` at output index idx: the index value is loaded first.

        NumPy wraps negative indices (ids < 0 → ids + n): `(ids % n + n) % n` does that with one load of
        the index, and keeps any value inside [0, n), so even an unchecked run (a hand-driven executable)
        reads inside the buffer. Out-of-range indices are reported before any kernel runs (Compiled.run
        checks the index values on the host). Constant indices were wrapped and range-checked at trace
        time, so they are loaded as they are.
        """
        data, ids = n.inputs
        ax = n.attrs["axis"]
        k = len(ids.shape)
        size = data.shape[ax]
        iv = self.value(ids, idx[ax:ax + k])
        if isinstance(iv, L.Const):
            j: L.Expr = L.Const(int(iv.value) % size)
        elif ids.op == "const":
            j = _cast(iv, "i32")
        else:
            n = L.Const(size, iv.dtype)
            j = _cast(L.BinOp("%", L.BinOp("+", L.BinOp("%", iv, n), n), n), "i32")
        return tuple(idx[:ax]) + (j,) + tuple(idx[ax + k:])


def _box_index(attrs: dict, shape: Sequence[int], idx: tuple[L.Expr, ...]) -> tuple[L.Expr, tuple[L.Expr, ...]]:
    """(is idx inside the written box, idx in the box's coordinates) for set_slice's start/stop/step.

    x[:, 2:6] = v on x: f32[4,8]  →  select(i1 - 2 >= 0 && i1 - 2 <= 3, v[i0, min(max(i1 - 2, 0), 3)], x[i0, i1])
    """
    conds: list[L.Expr] = []
    vidx: list[L.Expr] = []
    for i, a, b, c, extent in zip(idx, attrs["starts"], attrs["stops"], attrs["steps"], shape):
        n = len(range(a, b, c))
        if a == 0 and c == 1 and n == extent:      # the whole axis: no condition
            vidx.append(i)
            continue
        if c > 0:
            off = L.simplify_expr(i - L.Const(a))
        else:
            off = L.simplify_expr(L.Const(a) - i)
        step = abs(c)
        last = (n - 1) * step          # offsets 0, step, ..., last are written
        # the value's index is clamped into its box too: a code generator that evaluates the
        # selected-away branch (common-subexpression temps) still reads inside the buffer
        inside = L.BinOp("min", L.BinOp("max", off, L.Const(0)), L.Const(last))
        conds += [L.BinOp(">=", off, L.Const(0)), L.BinOp("<=", off, L.Const(last))]
        if step == 1:
            vidx.append(inside)
        else:
            conds.append(L.BinOp("==", L.BinOp("%", off, L.Const(step)), L.Const(0)))
            vidx.append(L.BinOp("/", inside, L.Const(step)))
    cond = L.all_of(conds)
    return cond, tuple(vidx)


# ----------------------------------------------------------------------------- the pass
def lower(fused, stash: bool = True) -> ComputeProgram:
    """FusedGraph → ComputeProgram: one compute definition per fusion group (its text: the naive loops).

    `stash=False` turns off stash_shared_values (the pipeline does for GPU targets: there the extra
    global write and read cost more than recomputing an exp, which is cheap on a GPU).
    Graph outputs that are graph inputs or constants get a copy kernel each (copy_out<k>).
    """
    g = fused.graph
    buffers: dict[int, L.Buffer] = {}
    inputs = []
    taken: set[str] = set()
    for n in g.inputs:
        b = L.Buffer(param_name(n.name, taken), n.shape, _dt(n))
        buffers[n.id] = b
        inputs.append(b)
    constants = []
    outputs: list[L.Buffer] = []
    out_bufs_of: dict[int, list[L.Buffer]] = {}
    for k, o in enumerate(g.outputs):
        b = L.Buffer(f"out{k}", o.shape, _dt(o))
        outputs.append(b)
        out_bufs_of.setdefault(o.id, []).append(b)
    # non-scalar constants (zero-size ones too: y[:] = 2.0 on an empty y folds to one) become
    # read-only inputs whose data the Program carries
    for n in g.nodes:
        if n.op == "const" and n.size != 1:
            b = L.Buffer(f"c{n.id}", n.shape, _dt(n))
            buffers[n.id] = b
            constants.append((b, np.require(n.value, requirements='C')))
    temps: list[L.Buffer] = []
    for grp in fused.groups:
        for o in grp.outputs:
            if o.id in out_bufs_of:
                buffers[o.id] = out_bufs_of[o.id][0]
            else:
                t = L.Buffer(f"t{o.id}", o.shape, _dt(o))
                buffers[o.id] = t
                temps.append(t)

    computes: list[Compute] = []
    for grp in fused.groups:
        computes.append(_group_compute(grp, buffers, out_bufs_of, stash))
    # graph outputs that are inputs or constants: a copy kernel each
    grouped = {n.id for grp in fused.groups for n in grp.nodes}
    for k, o in enumerate(g.outputs):
        if o.id not in grouped:
            computes.append(_copy_compute(o, buffers, outputs[k], k))

    computes = [_with_group_info(c, grp) for c, grp in zip(computes, list(fused.groups) + [None] * len(computes))]
    return ComputeProgram(c_identifier(g.name, "fn"), tuple(computes), tuple(inputs) + tuple(b for b, _ in constants),
                          tuple(outputs), tuple(temps), constants=tuple(constants))


def _with_group_info(compute, grp):
    if grp is None:
        return compute
    lines = tuple(str(p) for p in getattr(grp, "source_lines", []) or [])
    return replace(compute, group=grp.id, ops=tuple(n.op for n in grp.nodes), source_lines=lines)


def _copy_compute(o: Node, buffers, out: L.Buffer, k: int) -> Compute:
    axes = tuple(Axis(f"i{d}", s) for d, s in enumerate(o.shape))
    idx = tuple(L.Var(a.name) for a in axes)
    low = GroupLowering(buffers, set(), {})
    val = _cast(low.value(o, idx), out.dtype)
    return Compute("elementwise", f"copy_out{k}", axes, stores=(StoreDef(out, idx, val),),
                   inputs=tuple(low.used), outputs=(out,))


def _group_compute(grp, buffers: dict[int, L.Buffer], out_bufs_of: dict[int, list[L.Buffer]],
                   stash: bool = True) -> Compute:
    members = {n.id for n in grp.nodes}
    name = c_identifier(grp.name, "kernel")
    out_buffers: list[tuple[Node, L.Buffer]] = []
    for o in grp.outputs:
        for b in out_bufs_of.get(o.id, [buffers[o.id]]):
            out_buffers.append((o, b))

    if grp.kind == "contraction":
        return _contraction(grp, name, members, buffers, out_buffers)
    if grp.kind == "reduce":
        return _reduction(grp, name, members, buffers, out_buffers, stash)
    if grp.kind == "opaque":
        return _opaque(grp, name, members, buffers, out_buffers)
    if grp.kind == "attention":
        return attention_compute(grp, name, members, buffers, out_buffers)
    # elementwise: iterate over the common output shape
    shape = grp.anchor.shape
    axes = tuple(Axis(f"i{d}", s) for d, s in enumerate(shape))
    idx = tuple(L.Var(a.name) for a in axes)
    low = GroupLowering(buffers, members, {})
    stores = []
    for o, b in out_buffers:
        if o.shape != shape:
            raise VerificationError(f"lowering {name}: output {o.name} has shape {o.shape}, group domain is {shape}")
        stores.append(StoreDef(b, idx, low.value(o, idx)))
    return Compute("elementwise", name, axes, stores=tuple(stores), inputs=tuple(low.used),
                   outputs=tuple(b for _, b in out_buffers))


def attention_compute(grp, name: str, members: set[int], buffers: dict, out_buffers) -> AttentionCompute:
    """The compute definition of an 'attention' FusionGroup (see passes/attention.AttentionCompute):
    q, k, v and the logits as expressions of (b*, i, j, d, e), the scores q·k read from a 0-d local."""
    m: AttentionMatch = grp.pattern
    *batch, sq, dv = m.out.shape
    sk, d = m.scores.shape[-1], m.q.shape[-1]
    acc_dt = _acc_dtype(m.out)
    score = L.Buffer(f"score{m.scores.id}", (), acc_dt, "local")
    low = GroupLowering(buffers, members - {m.scores.id}, {m.scores.id: _cast(L.Load(score, ()), L.short_dtype(m.scores.dtype))})
    bvars = tuple(L.Var(f"b{k}") for k in range(len(batch)))
    i, j, dd, e = L.Var("i"), L.Var("j"), L.Var("d"), L.Var("e")

    def operand(n: Node, last2: tuple[L.Expr, L.Expr]) -> L.Expr:
        return _cast(low.value(n, _bcast_index(n.shape[:-2], tuple(batch), bvars) + last2), acc_dt)

    qv, kv, vv = operand(m.q, (i, dd)), operand(m.kt, (dd, j)), operand(m.v, (j, e))
    logit = _cast(low.value(m.logits, bvars + (i, j)), acc_dt)
    (o, out), = out_buffers
    return AttentionCompute("attention", name, tuple(batch), sq, sk, d, dv, acc_dt, qv, kv, vv, logit, score, out,
                            tuple(low.used), (out,))


def stageable(load: L.Load) -> bool:
    """True when cache_read can copy a tile of `load`: each index is a constant or stride * axis + offset
    (L.axis_stride_offset) and no axis indexes two dimensions (a diagonal)."""
    seen: set[str] = set()
    for ix in load.indices:
        if isinstance(ix, L.Const):
            continue
        aff = L.axis_stride_offset(ix)
        if aff is None or aff[0] in seen:
            return False
        seen.add(aff[0])
    return True


def _acc_dtype(n: Node) -> str:
    dt = _dt(n)
    return "f32" if dt in L.LOW_PRECISION else dt


def _contraction(grp, name, members, buffers, out_buffers) -> Compute:
    m = grp.anchor
    if m.op == "conv2d":
        return _conv2d(grp, name, members, buffers, out_buffers)
    a, b = m.inputs
    *batch, M, N = m.shape
    K = a.shape[-1]
    spatial = tuple(Axis(f"b{d}", s) for d, s in enumerate(batch)) + (Axis("i", M), Axis("j", N))
    red = (Axis("k", K),)
    bvars = tuple(L.Var(x.name) for x in spatial[:-2])
    i, j, k = L.Var("i"), L.Var("j"), L.Var("k")
    acc_dt = _acc_dtype(m)
    acc = L.Buffer(f"acc{m.id}", (), acc_dt, "local")
    low = GroupLowering(buffers, members - {m.id}, {m.id: _cast(L.Load(acc, ()), _dt(m))})
    a_idx = _bcast_index(a.shape[:-2], tuple(batch), bvars) + (i, k)
    b_idx = _bcast_index(b.shape[:-2], tuple(batch), bvars) + (k, j)
    av = _cast(low.value(a, a_idx), acc_dt)
    bv = _cast(low.value(b, b_idx), acc_dt)
    # operands name the loads cache_read can stage; a second read of the same buffer (y.T @ y) is 'y#1'.
    # Only when both are stageable (every dimension a constant or one axis times a stride plus an offset,
    # as a[::2] or x[:, 16:32]); a reshaped or broadcast operand (w.reshape(4, 5): k * 5 + j) is read
    # from global memory instead
    loads = [x for x in (av, bv) if isinstance(x, L.Load)]
    operands = tuple(x.buffer.name if k == 0 or x.buffer.name != loads[0].buffer.name else f"{x.buffer.name}#1"
                     for k, x in enumerate(loads))
    # two identical loads (x[None] @ x[None].mT on a (1, 1) x: every index folds to 0) are one load
    # in the accumulation, which the second cache_read ('x#1') would not find: read them from global too
    if len(loads) != 2 or loads[0] == loads[1] or not all(stageable(x) for x in loads):
        operands = ()
    accum = Accum(acc, "sum", L.BinOp("*", av, bv), 0, _dt(m))
    idx = bvars + (i, j)
    stores = tuple(StoreDef(buf, idx, _cast(low.value(o, idx), buf.dtype)) for o, buf in out_buffers)
    return Compute("contraction", name, spatial, red, (accum,), stores, inputs=tuple(low.used),
                   outputs=tuple(buf for _, buf in out_buffers), operands=operands)


def _conv2d(grp, name, members, buffers, out_buffers) -> Compute:
    """A direct convolution: accumulate over (kh, kw, ic) per output (n, oh, ow, oc).

    The padding is a bounds select on the input load (never a padded copy); a side whose
    index cannot leave the input has no test:
        acc[] += ((oh + kh - 1 >= 0 && oh + kh - 1 < 56 && ...) ? x[n, oh + kh - 1, ow + kw - 1, ic] : 0) * w[kh, kw, ic, oc]
    """
    m = grp.anchor
    x, w = m.inputs
    layout = m.attrs.get("layout", "NHWC")
    N, H, W, C = conv_dims(x.shape, layout)
    R, S, Cg, K = w.shape
    _, Ho, Wo, _ = conv_dims(m.shape, layout)
    (sh, sw), (dh, dw), g = m.attrs["stride"], m.attrs["dilation"], m.attrs["groups"]
    (pt, _), (pl, _) = m.attrs["padding"]
    spatial = (Axis("n", N), Axis("oh", Ho), Axis("ow", Wo), Axis("oc", K))
    red = (Axis("kh", R, True), Axis("kw", S, True), Axis("ic", Cg, True))
    n, oh, ow, oc, kh, kw, ic = (L.Var(a.name) for a in spatial + red)
    ih = L.simplify_expr(oh * sh + kh * dh - pt)
    iw = L.simplify_expr(ow * sw + kw * dw - pl)
    group = oc if K // g == 1 else oc // (K // g)      # depthwise: output channel k reads input channel k
    ch = L.simplify_expr((group * Cg + ic) if Cg > 1 else group + ic) if g > 1 else ic
    conds = []
    for v, lo, top, ext in ((ih, pt, (Ho - 1) * sh + (R - 1) * dh - pt, H), (iw, pl, (Wo - 1) * sw + (S - 1) * dw - pl, W)):
        if lo > 0:
            conds.append(L.BinOp(">=", v, L.Const(0)))
        if top >= ext:
            conds.append(L.BinOp("<", v, L.Const(int(ext))))
    acc_dt = _acc_dtype(m)
    acc = L.Buffer(f"acc{m.id}", (), acc_dt, "local")
    low = GroupLowering(buffers, members - {m.id}, {m.id: _cast(L.Load(acc, ()), _dt(m))})
    xv = _cast(low.value(x, (n, ch, ih, iw) if layout == "NCHW" else (n, ih, iw, ch)), acc_dt)
    if conds:
        xv = L.Select(L.all_of(conds), xv, L.Const(0, acc_dt))
    wv = _cast(low.value(w, (kh, kw, ic, oc)), acc_dt)
    accum = Accum(acc, "sum", L.BinOp("*", xv, wv), 0, _dt(m))
    idx = (n, oc, oh, ow) if layout == "NCHW" else (n, oh, ow, oc)
    stores = tuple(StoreDef(buf, idx, _cast(low.value(o, idx), buf.dtype)) for o, buf in out_buffers)
    # the input and the weight, each read by one load (not a fused prologue): the CUDA schedule stages them
    reads = [[y.buffer.name for y in L.walk_expr(v) if isinstance(y, L.Load)] for v in (xv, wv)]
    operands = tuple(r[0] for r in reads) if all(len(r) == 1 for r in reads) and reads[0] != reads[1] else ()
    return Compute("contraction", name, spatial, red, (accum,), stores, inputs=tuple(low.used),
                   outputs=tuple(buf for _, buf in out_buffers), operands=operands, pattern="conv2d")


def _reduction(grp, name, members, buffers, out_buffers, stash: bool = True) -> Compute:
    reduces = [n for n in grp.nodes if get_op(n.op).category == "reduce"]
    D = reduces[0].inputs[0].shape
    axes_set = normalize_axes(reduces[0].op, reduces[0].attrs["axes"], len(D), D)
    spatial = tuple(Axis(f"i{d}", D[d]) for d in range(len(D)) if d not in axes_set)
    red = tuple(Axis(f"r{d}", D[d]) for d in axes_set)
    full_idx = tuple(L.Var(f"r{d}" if d in axes_set else f"i{d}") for d in range(len(D)))
    # phase of a reduce = 1 + max phase of reduces it (transitively) depends on within the group
    phase: dict[int, int] = {}
    dep: dict[int, set[int]] = {}
    for n in grp.nodes:
        ds: set[int] = set()
        for i in n.inputs:
            if i.id in members:
                ds |= dep.get(i.id, set())
                if get_op(i.op).category == "reduce":
                    ds.add(i.id)
        dep[n.id] = ds
    acc_of: dict[int, L.Expr] = {}
    accums = []
    low = GroupLowering(buffers, members, acc_of)
    for n in reduces:
        p = 1 + max((phase[d] for d in dep[n.id]), default=-1)
        phase[n.id] = p
        acc_dt = _acc_dtype(n)
        buf = L.Buffer(f"acc{n.id}", (), acc_dt, "local")
        src = n.inputs[0]
        val = _cast(low.value(src, full_idx), acc_dt)
        accums.append(Accum(buf, n.op, val, p, _dt(n)))
        acc_of[n.id] = _cast(L.Load(buf, ()), _dt(n))
    stores, full = [], []
    for o, buf in out_buffers:
        if tuple(o.shape) == tuple(D):
            full.append(StoreDef(buf, full_idx, _cast(low.value(o, full_idx), buf.dtype)))
        else:
            if len(o.shape) == len(D):
                idx = tuple(L.Const(0) if d in axes_set else L.Var(f"i{d}") for d in range(len(D)))
            else:
                idx = tuple(L.Var(f"i{d}") for d in range(len(D)) if d not in axes_set)
                if len(idx) != len(o.shape):
                    raise VerificationError(f"lowering {name}: output {o.name} {o.shape} is neither the row domain "
                                            f"{D} nor a reduced shape")
            stores.append(StoreDef(buf, idx, _cast(low.value(o, idx), buf.dtype)))
    full, stashes = stash_shared_values(accums, stores, full, full_idx, low.used) if stash else (full, ())
    return Compute("reduce", name, spatial, red, tuple(accums), tuple(stores), tuple(full),
                   inputs=tuple(low.used), outputs=tuple(b for _, b in out_buffers), stashes=stashes)


def _costly(e: L.Expr) -> bool:
    """Worth evaluating once: a math call (exp, log, tanh, ...) or a division somewhere in e.
    A bare load, or a subtraction such as layernorm's x - mean, is cheaper to recompute than to
    store and read back."""
    return any(isinstance(x, L.Call) and x.fn != "abs" or isinstance(x, L.BinOp) and x.op in ("/", "%")
               for x in L.walk_expr(e))


def _stores_exactly(e: L.Expr, buf: L.Buffer) -> bool:
    """Storing e into buf and loading it back gives e's register value bit for bit.

    Needs the same dtype, and f16 values are computed in f32 registers by both code generators
    (rounded to half only at an explicit cast or a store), so an f16 e must itself be such a cast:
    softmax's f16 exp(...) is held unrounded, and storing it would round what the sum adds."""
    return buf.dtype == e.dtype and (e.dtype not in L.LOW_PRECISION or isinstance(e, L.Cast))


def _contains(e: L.Expr, sub: L.Expr) -> bool:
    return any(x == sub for x in L.walk_expr(e))


def _replace(e: L.Expr, old: L.Expr, new: L.Expr) -> L.Expr:
    return L.map_expr(e, lambda x: new if x == old else None)


def stash_shared_values(accums, stores, full, full_idx, inputs) -> tuple[list[StoreDef], tuple[Stash, ...]]:
    """Compute a per-element value shared by the last accumulation phase and the final loop once.

    A reduce group runs its phases' loops over the row, then the full_stores' loop over it again;
    when that final loop recomputes an expression E the last phase accumulates (softmax's
    exp(x - max)), E is evaluated twice per element. If E is costly (_costly: not a bare load or a
    subtraction) and a full_store's buffer holds E's register value exactly (_stores_exactly: same
    dtype; not f16 unless E ends in a cast to f16) — so storing E and reading it back is
    bit-identical to recomputing it — the last phase also stores E into that buffer at the same
    element, and every full_store reads it back:

      Before (softmax row i0):                    After:
        acc2 = max(acc2, x[i0, r1])   (r1 loop)     acc2 = max(acc2, x[i0, r1])          (r1 loop)
        acc5 = acc5 + exp(x[i0, r1] - acc2)         # stash exp(x[i0, r1] - acc2) in out0
                                      (r1 loop)     out0[i0, r1] = exp(x[i0, r1] - acc2)  (r1 loop)
                                                    acc5 = acc5 + out0[i0, r1]
        out0[i0, r1] = exp(x[i0, r1] - acc2) / acc5 out0[i0, r1] = out0[i0, r1] / acc5   (r1 loop)

    The accumulators keep E as their value here (what is summed); tiling emits the stash store and
    makes them read it back. The stash runs over exactly the elements, loops and guards of the final
    loop, so on CUDA each element is written and re-read by the same thread (no barrier needed).
    The buffer must not be an input or read anywhere else in the kernel (it holds E, not the
    output, until the final loop). The pipeline applies it on the CPU only (lower(..., stash=False)
    elsewhere): there the row sits in L1 and softmax got ~30% faster, while on a GPU the extra
    global write and read would cost more than the exp (a register-resident row is the GPU answer).
    """
    if not accums or not full:
        return list(full), ()
    last = max(a.phase for a in accums)
    read = {x.buffer.name for part in ([a.value for a in accums], [s.value for s in stores],
                                      [s.value for s in full], [i for s in stores + list(full) for i in s.indices])
            for e in part for x in L.walk_expr(e) if isinstance(x, L.Load)}
    read |= {b.name for b in inputs}
    full = list(full)
    stashes: list[Stash] = []
    homes: set[str] = set()
    reads_stash: set[str] = set()     # buffers whose full_store already reads a stash back
    for a in accums:
        if a.phase != last:
            continue
        e = a.value
        if isinstance(e, L.Cast) and e.a.dtype != e.dtype:
            e = e.a       # the accumulator's widening cast (f16 values summed in f32) is not part of E
        if not _costly(e) or any(st.value == e for st in stashes):
            continue
        users = [k for k, s in enumerate(full) if tuple(s.indices) == tuple(full_idx) and _contains(s.value, e)]
        home = next((full[k].buffer for k in users if _stores_exactly(e, full[k].buffer) and full[k].buffer.name
                     not in read | homes | reads_stash), None)
        if home is None:
            continue
        back = L.Load(home, tuple(full_idx))
        homes.add(home.name)
        for k in users:
            b = full[k].buffer.name
            if b in homes and b != home.name:
                continue      # another stash's buffer reads only its own stash (no cycle, no stale read)
            full[k] = StoreDef(full[k].buffer, full[k].indices, _replace(full[k].value, e, back))
            reads_stash.add(b)
        stashes.append(Stash(home, tuple(full_idx), e, last))
    # a stash's buffer is overwritten by its own full_store: the other full_stores read it first
    full = [s for s in full if s.buffer.name not in homes] + [s for s in full if s.buffer.name in homes]
    return full, tuple(stashes)


def _custom(n: Node, name: str, buffers, out_buffers) -> Compute:
    """A custom kernel: no loops to derive, only its buffers (the user's source computes them).

        %1 = swish(x)    →    kernel custom_swish(x, out0):  # custom kernel swish(x) -> out0
    """
    spec = get_op(n.op).custom
    ins = []
    for i in n.inputs:
        b = buffers.get(i.id)
        if b is None:
            raise ExplorerError(f"custom kernel {spec.name}: input {i.name} is a scalar constant; custom kernels take "
                                f"arrays: pass np.full(shape, value, np.{spec.dtype}) as an input instead")
        ins.append(b)
    axes = tuple(Axis(f"i{d}", s) for d, s in enumerate(n.shape))
    return Compute("custom", name, axes, inputs=tuple(ins), outputs=tuple(b for _, b in out_buffers), custom=spec)


def _opaque(grp, name, members, buffers, out_buffers) -> Compute:
    n = grp.anchor
    if get_op(n.op).custom is not None:
        return _custom(n, name, buffers, out_buffers)
    if n.op != "cumsum":
        raise ExplorerError(f"lowering: opaque op {n.op} has no loop template; supported opaque ops: cumsum")
    D = n.shape
    ax = normalize_axes("cumsum", n.attrs["axis"], len(D), D)[0]
    spatial = tuple(Axis(f"i{d}", D[d]) for d in range(len(D)) if d != ax)
    red = (Axis(f"r{ax}", D[ax]),)
    idx = tuple(L.Var(f"r{d}" if d == ax else f"i{d}") for d in range(len(D)))
    # NumPy's cumsum accumulates in the output dtype: an f16 scan rounds each partial sum to half
    # (np.cumsum(np.ones(3000, np.float16))[-1] is 2048). np.cumsum(x, dtype=np.float32) accumulates in f32.
    acc_dt = _dt(n)
    buf = L.Buffer(f"acc{n.id}", (), acc_dt, "local")
    low = GroupLowering(buffers, set(), {})
    val = _cast(low.value(n.inputs[0], idx), acc_dt)
    scan = tuple(StoreDef(b, idx, _cast(L.Load(buf, ()), b.dtype)) for _, b in out_buffers)
    return Compute("opaque", name, spatial, red, (Accum(buf, "sum", val, 0, _dt(n)),), scan_stores=scan,
                   inputs=tuple(low.used), outputs=tuple(b for _, b in out_buffers))
