"""Horizontal batching: identical independent computations over equally spaced slices of the same
tensors (one per attention head, from a Python loop over heads) become one computation with a
leading batch axis, so each of its kernels runs once for all heads instead of once per head.

Part of the `fused` stage (rule 'horizontal', `fuse={"horizontal": False}` turns it off): fuse()
runs this rewrite first, then groups the rewritten graph vertically. Pure: returns a new Graph.

Before (two heads, d = 2)                         After batch_horizontal(graph)
    %1: f32[4,2] = slice(q, 0:2 on axis 1)            %9:  f32[4,2,2] = reshape(q, (4,2,2))
    %2: f32[4,4] = matmul(%1, %1ᵀ...)                 %10: f32[2,4,2] = transpose(%9, (1,0,2))   # q[i, h*2 + t]
    %3: f32[4,2] = slice(q, 2:4 on axis 1)            %11: f32[2,4,4] = matmul(%10, ...)         # batched over h
    %4: f32[4,4] = matmul(%3, %3ᵀ...)                 %12: f32[1,4,4] = slice(%11, h=0)  → reshape → head 0's value
                                                      %14: f32[1,4,4] = slice(%11, h=1)  → reshape → head 1's value

In the loop IR the batch axis is one more loop (a batch axis of the matmul, a row of the reduction),
and each head's slice offset becomes index arithmetic: `q[i, h * 2 + k]` instead of one kernel per
`q[i, 2 + k]`.

What qualifies: two or more sub-DAGs with the same ops, attributes and shapes, whose only
differences are the start offsets of slices of shared tensors (the "slots"); in every slot the
offsets move along one axis by a constant step that is at least the slice's size; the sub-DAGs share
no node and read the same values outside the slices. Ops this pass cannot batch (anything outside
elementwise/reduce/matmul/reshape/transpose/broadcast_to/slice/cumsum) leave the group alone.
The per-head values used outside the group are read back from the batched value by a slice and a
reshape (injective ops, so a following concatenate or sum fuses with them).

>>> import numpy as np, explorer
>>> g = explorer.trace(lambda x: (np.exp(x[:, 0:4]).sum(axis=1), np.exp(x[:, 4:8]).sum(axis=1)),
...                    np.ones((3, 8), np.float32))
>>> g2, batches = batch_horizontal(g)
>>> batches[0].count, batches[0].sources
(2, ('x',))
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from ..graph import Graph, Node
from ..ops import get as get_op, infer_type, normalize_axes

# ops whose batched form is the same op with one more leading axis (attrs adjusted below)
_BATCHABLE = {"elementwise", "reduce", "contraction", "injective"}
_INJECTIVE_OK = ("reshape", "transpose", "broadcast_to", "slice")
_OPAQUE_OK = ("cumsum",)
MAX_ROUNDS = 64


@dataclass
class HorizontalBatch:
    """One horizontal batching: `count` members (per-head sub-DAGs) → the batched nodes."""

    count: int
    sources: tuple[str, ...]          # tensors whose slices the members read
    roots: tuple[str, ...]            # each member's last node (names in the graph before the rewrite)
    ops_per_member: int
    nodes: list[Node] = field(default_factory=list)    # the batched computation (new nodes)
    views: list[Node] = field(default_factory=list)    # per-member read-backs (slice + reshape)
    lines: tuple[str, ...] = ()
    kernels: int = 0                                   # filled in by fuse(): kernels holding `nodes`
    group_ids: list[str] = field(default_factory=list)  # ... and their ids

    @property
    def reason(self) -> str:
        srcs = ", ".join(self.sources)
        k = self.kernels
        per = f" ({k} kernel{'s' if k != 1 else ''} each)" if k else ""
        after = f" into {k} kernel{'s' if k != 1 else ''} ({self.count * k} → {k})" if k else ""
        return (f"horizontal: {self.count} identical computations{per} over slices of {srcs} → batched over h"
                f"{after}")

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "sources": list(self.sources), "roots": list(self.roots),
                "kernels": self.kernels, "reason": self.reason}


def batch_horizontal(graph: Graph) -> tuple[Graph, list[HorizontalBatch]]:
    """Rewrite every group of identical per-slice computations into one batched computation.

    Returns the new graph (sharing the input's name, source and id counter) and one record per batching.
    """
    batches: list[HorizontalBatch] = []
    created: set[int] = set()      # ids of nodes this pass made: never members of a later batching
    rejected: set[frozenset[int]] = set()
    g = graph
    for _ in range(MAX_ROUNDS):
        res = _batch_one(g, created, rejected)
        if res is None:
            break
        g, rec = res
        batches.append(rec)
    return g, batches


# ----------------------------------------------------------------------------- structural keys
def _freeze(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return repr(v) if not isinstance(v, (int, float, str, bool, type(None))) else v


class _Keys:
    """Hash-consed structure of every node: equal keys ⇔ same computation up to slice offsets."""

    def __init__(self, g: Graph, created: set[int]):
        self.ids: dict[Any, int] = {}
        self.key: dict[int, int] = {}          # id(node) -> key id
        self.leaf: dict[int, bool] = {}        # id(node) -> head-independent (shared by members)
        self.slots: dict[int, Any] = {}        # id(slice node) -> slot_base(...)
        # a slice is a per-member slot only when its parent has sibling slices of the same shape at other
        # offsets; a lone slice of a shared value (`wpe[range(len(ids))]`, a prefix of an input) is shared too
        offsets: dict[tuple, set] = {}
        for n in g.nodes:
            if n.op == "slice":
                offsets.setdefault(_sibling_key(n), set()).add(tuple(n.attrs["starts"]))
        for n in g.nodes:
            if n.op == "const" and n.value is not None:
                # each use of a captured array (a causal mask) is its own const node: equal values match
                k: Any = ("const", n.shape, str(n.dtype), n.value.tobytes())
                self.leaf[id(n)] = True
            elif n.op == "input" or n.id in created:
                k = ("leaf", id(n))
                self.leaf[id(n)] = True
            elif (n.op == "slice" and len(offsets[_sibling_key(n)]) > 1
                  and (base := slot_base(n, self.leaf)) is not None):
                src, _, _, steps = base
                k = ("slot", id(src), n.shape, str(n.dtype), steps)
                self.slots[id(n)] = base
                self.leaf[id(n)] = False
            elif all(self.leaf[id(i)] for i in n.inputs):
                k = ("leaf", id(n))
                self.leaf[id(n)] = True
            else:
                k = (n.op, _freeze(n.attrs), n.shape, str(n.dtype), tuple(self.key[id(i)] for i in n.inputs))
                self.leaf[id(n)] = False
            self.key[id(n)] = self.ids.setdefault(k, len(self.ids))


def _sibling_key(n: Node) -> tuple:
    """Slices of one parent with equal shape and steps (they differ only in their offsets)."""
    return id(n.inputs[0]), n.shape, tuple(n.attrs["steps"])


def slot_base(n: Node, leaf: dict[int, bool]):
    """(source, starts, stops, steps) of a slice, or of a chain of slices, of a shared (leaf) value:
    `qkv[:, W:2W][:, h*d:(h+1)*d]` is one slice of qkv. None when it is not one (positive steps only)."""
    starts, steps = [0] * len(n.shape), [1] * len(n.shape)
    x = n
    while x.op == "slice" and all(c > 0 for c in x.attrs["steps"]):
        starts = [a + s * c for a, s, c in zip(x.attrs["starts"], starts, x.attrs["steps"])]
        steps = [c * c2 for c, c2 in zip(x.attrs["steps"], steps)]
        x = x.inputs[0]
        if leaf.get(id(x)):
            stops = tuple(a + m * c for a, m, c in zip(starts, n.shape, steps))
            return x, tuple(starts), stops, tuple(steps)
    return None


def _member_nodes(root: Node, leaf: dict[int, bool], slots: dict[int, Any]) -> list[Node]:
    """The non-leaf nodes `root` depends on (itself included), not looking behind slots."""
    seen: dict[int, Node] = {}
    stack = [root]
    while stack:
        n = stack.pop()
        if id(n) in seen or leaf[id(n)]:
            continue
        seen[id(n)] = n
        if id(n) not in slots:
            stack.extend(n.inputs)
    return list(seen.values())


def _match(n0: Node, nh: Node, keys: _Keys, mapping: dict[int, Node], back: dict[int, Node]) -> bool:
    """Walk member 0 and member h in parallel; the node correspondence must be one-to-one."""
    if id(n0) in mapping:
        return mapping[id(n0)] is nh
    if id(nh) in back or keys.key[id(n0)] != keys.key[id(nh)]:
        return False
    mapping[id(n0)] = nh
    back[id(nh)] = n0
    if keys.leaf[id(n0)]:
        return n0 is nh or n0.op == "const"     # equal keys: the same node, or consts of equal value
    if id(n0) in keys.slots:
        return True     # a slot: only its offsets differ, checked by _slot_layout
    return all(_match(a, b, keys, mapping, back) for a, b in zip(n0.inputs, nh.inputs))


def _slot_layout(bases: list[tuple]) -> tuple[int, int, int] | None:
    """(axis, first offset, step between members) when the slices are equally spaced along one axis."""
    src, starts0, stops0, steps0 = bases[0]
    starts = [b[1] for b in bases]
    axes = [d for d in range(len(starts0)) if len({st[d] for st in starts}) > 1]
    if len(axes) != 1:
        return None
    a = axes[0]
    if steps0[a] != 1 or any(b[2][d] != stops0[d] for b in bases for d in range(len(starts0)) if d != a):
        return None
    offs = [st[a] for st in starts]
    step = offs[1] - offs[0]
    size = stops0[a] - starts0[a]
    if step < size or any(offs[h] != offs[0] + h * step for h in range(len(offs))):
        return None
    if offs[0] + len(offs) * step > src.shape[a]:
        return None
    return a, offs[0], step


def _batchable(n: Node) -> bool:
    cat = get_op(n.op).category
    if cat == "injective":
        return n.op in _INJECTIVE_OK
    if cat == "opaque":
        return n.op in _OPAQUE_OK
    return cat in _BATCHABLE


# ----------------------------------------------------------------------------- one rewrite
def _batch_one(g: Graph, created: set[int], rejected: set[frozenset[int]]):
    keys = _Keys(g, created)
    pos = {id(n): k for k, n in enumerate(g.nodes)}
    classes: dict[int, list[Node]] = {}
    for n in g.nodes:
        if not keys.leaf[id(n)] and n.op != "slice":
            classes.setdefault(keys.key[id(n)], []).append(n)
    # latest roots first: a class whose members contain another class's nodes is tried before it
    for kid, roots in sorted(classes.items(), key=lambda kv: -max(pos[id(n)] for n in kv[1])):
        if len(roots) < 2 or frozenset(id(r) for r in roots) in rejected:
            continue
        res = _try_class(g, roots, keys, pos, created)
        if res is None:
            rejected.add(frozenset(id(r) for r in roots))
            continue
        return res
    return None


def _try_class(g: Graph, roots: list[Node], keys: _Keys, pos: dict[int, int], created: set[int]):
    members = [_member_nodes(r, keys.leaf, keys.slots) for r in roots]
    seen: set[int] = set()
    for m in members:
        ids = {id(n) for n in m}
        if ids & seen:
            return None          # members share a node: not independent
        seen |= ids
    m0 = sorted(members[0], key=lambda n: pos[id(n)])
    if not any(get_op(n.op).category != "injective" for n in m0) or not all(_batchable(n) for n in m0):
        return None
    maps: list[dict[int, Node]] = []
    for r in roots:
        mapping: dict[int, Node] = {}
        if not _match(roots[0], r, keys, mapping, {}):
            return None
        maps.append(mapping)
    slots = [n for n in m0 if id(n) in keys.slots]
    if not slots:
        return None
    # members in the order of the first slot's offsets (the loop's order, normally)
    order = sorted(range(len(roots)), key=lambda h: keys.slots[id(maps[h][id(slots[0])])][1])
    maps = [maps[h] for h in order]
    layouts = {}
    for s in slots:
        lay = _slot_layout([keys.slots[id(mp[id(s)])] for mp in maps])
        if lay is None:
            return None
        layouts[id(s)] = (lay, keys.slots[id(s)])
    return _rewrite(g, m0, maps, layouts, keys, pos, created)


class _Builder:
    def __init__(self, g: Graph, next_id: int, created: set[int]):
        self.g = g
        self.next_id = next_id
        self.created = created
        self.nodes: list[Node] = []

    def add(self, op: str, inputs: tuple[Node, ...], attrs: dict, like: Node) -> Node:
        if op == "transpose" and inputs[0].op == "transpose" and inputs[0] in self.nodes:
            # transpose of the slot view's transpose (k[:, hs].T): one transpose of the source
            inner = inputs[0].attrs["axes"]
            inputs, attrs = inputs[0].inputs, {"axes": tuple(inner[a] for a in attrs["axes"])}
            if attrs["axes"] == tuple(range(len(attrs["axes"]))):
                return inputs[0]
        shape, dt = infer_type(op, [(i.shape, i.dtype) for i in inputs], attrs)
        n = Node(self.next_id, op, inputs, shape, dt, attrs, provenance=like.provenance)
        self.next_id += 1
        self.created.add(n.id)
        self.nodes.append(n)
        return n

    def reshape(self, x: Node, shape: tuple[int, ...], like: Node) -> Node:
        return x if x.shape == tuple(shape) else self.add("reshape", (x,), {"shape": tuple(shape)}, like)


def _slot_view(b: _Builder, s: Node, H: int, layout: tuple[int, int, int], base: tuple) -> Node:
    """(H, *s.shape): member h's slice of the source at offset o + h*step along `axis`."""
    a, o, step = layout
    src, starts, stops, steps = (list(x) if k else x for k, x in enumerate(base))
    starts[a], stops[a] = o, o + H * step
    x = src
    if not all(st == 0 and sp == n and c == 1 for st, sp, c, n in zip(starts, stops, steps, src.shape)):
        x = b.add("slice", (src,), {"starts": tuple(starts), "stops": tuple(stops), "steps": tuple(steps)}, s)
    x = b.reshape(x, x.shape[:a] + (H, step) + x.shape[a + 1:], s)
    if step != s.shape[a]:
        r = len(x.shape)
        x = b.add("slice", (x,), {"starts": (0,) * r, "stops": x.shape[:a + 1] + (s.shape[a],) + x.shape[a + 2:],
                                  "steps": (1,) * r}, s)
    if a:
        x = b.add("transpose", (x,), {"axes": (a,) + tuple(d for d in range(len(x.shape)) if d != a)}, s)
    return x


def _rewrite(g: Graph, m0: list[Node], maps: list[dict[int, Node]], layouts, keys: _Keys,
             pos: dict[int, int], created: set[int]):
    H = len(maps)
    b = _Builder(g, g.next_id, set())
    batched: dict[int, Node] = {}

    def lift(n: Node, rank: int) -> Node:
        """The batched value of member node n, with 1s inserted so its per-member rank is `rank`."""
        x = batched[id(n)]
        return b.reshape(x, (H,) + (1,) * (rank - len(n.shape)) + n.shape, n)

    def arg(n: Node, rank: int) -> Node:
        return lift(n, rank) if id(n) in batched else n

    for n in m0:
        if id(n) in layouts:
            batched[id(n)] = _slot_view(b, n, H, *layouts[id(n)])
            continue
        cat = get_op(n.op).category
        r = len(n.shape)
        attrs = dict(n.attrs)
        if cat == "elementwise":
            ins = tuple(arg(i, r) for i in n.inputs)
        elif cat == "contraction":
            r = max(len(i.shape) for i in n.inputs)
            ins = tuple(arg(i, r) for i in n.inputs)
        else:
            src = n.inputs[0]
            rank = len(src.shape)
            if n.op == "broadcast_to":
                rank = r
                attrs["shape"] = (H,) + tuple(attrs["shape"])
            elif n.op == "reshape":
                attrs["shape"] = (H,) + tuple(attrs["shape"])
            elif n.op == "transpose":
                attrs["axes"] = (0,) + tuple(a + 1 for a in attrs["axes"])
            elif n.op == "slice":
                attrs = {"starts": (0,) + tuple(attrs["starts"]), "stops": (H,) + tuple(attrs["stops"]),
                         "steps": (1,) + tuple(attrs["steps"])}
            elif cat == "reduce":
                attrs["axes"] = tuple(a + 1 for a in normalize_axes(n.op, attrs["axes"], rank, src.shape))
            elif n.op == "cumsum":
                attrs["axis"] = normalize_axes(n.op, attrs["axis"], rank, src.shape)[0] + 1
            ins = (arg(src, rank),)
        new = b.add(n.op, ins, attrs, n)
        if new.shape != (H,) + n.shape or new.dtype != n.dtype:
            return None     # a broadcasting pattern this pass does not model: leave the group alone
        batched[id(n)] = new
    core = list(b.nodes)

    # every member value read outside its member: member h's slice of the batched value
    member_ids = {id(mp[id(n)]) for mp in maps for n in m0}
    consumers = g.consumers()
    out_ids = {id(o) for o in g.outputs}
    replace: dict[int, Node] = {}
    view_pos: dict[int, int] = {}
    for n in m0:
        for h, mp in enumerate(maps):
            nh = mp[id(n)]
            if id(nh) in out_ids or any(id(c) not in member_ids for c in consumers.get(nh, [])):
                B = batched[id(n)]
                rk = len(B.shape)
                sl = b.add("slice", (B,), {"starts": (h,) + (0,) * (rk - 1), "stops": (h + 1,) + B.shape[1:],
                                           "steps": (1,) * rk}, nh)
                v = b.reshape(sl, nh.shape, nh)
                replace[id(nh)] = v
                view_pos[id(sl)] = view_pos[id(v)] = pos[id(nh)]
    views = [n for n in b.nodes if n not in core]

    # new node list: non-members with replaced inputs + the new nodes, topologically (Kahn, original order)
    env: dict[int, Node] = {}
    kept: list[Node] = []
    rank_of: dict[int, int] = {}
    for n in g.nodes:
        if id(n) in member_ids:
            continue
        ins = tuple(replace.get(id(i), env.get(id(i), i)) for i in n.inputs)
        m = n if all(x is y for x, y in zip(ins, n.inputs)) else n.replace(inputs=ins)
        env[id(n)] = m
        kept.append(m)
        rank_of[id(m)] = pos[id(n)]
    first = min(pos[id(mp[id(n)])] for mp in maps for n in m0)
    for n in core:
        rank_of[id(n)] = first
    for n in views:
        rank_of[id(n)] = view_pos.get(id(n), first)
    outputs = [replace.get(id(o), env.get(id(o), o)) for o in g.outputs]
    nodes = _live(_topo(kept + b.nodes, rank_of), outputs)
    created.update(b.created)
    new_g = g.derive(nodes, outputs, next_id=b.next_id)
    srcs: list[str] = []
    for n in m0:
        if id(n) in layouts and layouts[id(n)][1][0].name not in srcs:
            srcs.append(layouts[id(n)][1][0].name)
    lines = tuple(sorted({str(n.provenance) for n in m0 if n.provenance is not None}))
    rec = HorizontalBatch(H, tuple(srcs), tuple(mp[id(m0[-1])].name for mp in maps), len(m0),
                          core, views, lines)
    return new_g, rec


def _live(nodes: list[Node], outputs: list[Node]) -> list[Node]:
    """Drop op nodes nothing reads any more (q = qkv[:, :W] once every head reads qkv directly)."""
    live = {id(o) for o in outputs}
    for n in reversed(nodes):
        if id(n) in live:
            live.update(id(i) for i in n.inputs)
    return [n for n in nodes if n.op == "input" or id(n) in live]


def _topo(nodes: list[Node], rank_of: dict[int, int]) -> list[Node]:
    """Kahn's order over `nodes`, earliest original position first (ties: list order)."""
    index = {id(n): k for k, n in enumerate(nodes)}
    indeg = {id(n): 0 for n in nodes}
    succ: dict[int, list[Node]] = {id(n): [] for n in nodes}
    for n in nodes:
        for i in set(id(x) for x in n.inputs):
            if i in index:
                indeg[id(n)] += 1
                succ[i].append(n)
    heap = [(rank_of.get(id(n), 0), index[id(n)]) for n in nodes if indeg[id(n)] == 0]
    heapq.heapify(heap)
    out: list[Node] = []
    while heap:
        _, k = heapq.heappop(heap)
        n = nodes[k]
        out.append(n)
        for s in succ[id(n)]:
            indeg[id(s)] -= 1
            if indeg[id(s)] == 0:
                heapq.heappush(heap, (rank_of.get(id(s), 0), index[id(s)]))
    return out


__all__ = ["batch_horizontal", "HorizontalBatch"]
