"""The loop IR: buffers, loop nests, loads/stores and scalar expressions (like TVM TIR or Halide stmt).

One loop IR feeds three executors — the SIMT simulator, C codegen and CUDA
codegen — so what the explorer shows is what runs.

    >>> i = Var("i")
    >>> x = Buffer("x", (8,), "f32"); y = Buffer("y", (8,), "f32")
    >>> k = Kernel("double", params=(x, y), body=(
    ...     For(i, 8, (Store(y, (i,), BinOp("*", Load(x, (i,)), Const(2.0, "f32"))),), kind="parallel"),))
    >>> print(k.text())
    kernel double(x: f32[8] global, y: f32[8] global):
      for i in parallel(8):
        y[i] = x[i] * 2.0f

Conventions every consumer relies on
- dtypes are short names: 'f32', 'f16', 'f64', 'i32', 'i64', 'bool'. Index arithmetic is 'i32'
  (codegen may widen to 64 bit when a buffer has >= 2**31 elements).
- Buffers are dense row-major; indices are one Expr per dimension (a 0-d buffer is a scalar).
- A For loop runs var over [0, extent). kind is one of LOOP_KINDS. A loop of kind
  'blockIdx.x|y|z' or 'threadIdx.x|y|z' is *bound*: it is not a loop at run time, its var
  is the block/thread index and its extent is the grid/block size along that axis.
  A kernel may bind each axis once; a non-bound loop inside a thread-bound loop runs per thread.
- Alloc(buffer) declares a 'shared' or 'local' buffer; it is visible to the statements that
  follow it in the same body (and nested bodies). Shared buffers are per block, local per thread.
- Barrier() is __syncthreads(): every thread of a block must reach it (never inside a guard
  that depends on threadIdx).
- ThreadAllReduce(op, buf, axis) combines the 0-d local `buf` over all threads of the block along
  the thread axis `axis` ('threadIdx.x'); afterwards every thread's buf holds the result.
- Expressions are immutable and hashable; BinOp ops are '+ - * / % min max < <= > >= == != && ||'.
  '/' on ints is C division (indices are never negative); '%' likewise.
- Call(fn, args) names a math intrinsic from MATH_FUNCTIONS; codegen maps it per language/dtype.
- Warp-level matrix ops (tensor cores, from schedule.tensorize): a Fragment is a per-warp array of
  16x16 tiles (role 'matrix_a' | 'matrix_b' | 'accumulator'), declared by FragmentAlloc.
  FragmentFill / FragmentLoad / Mma / FragmentStore are executed by all 32 lanes of a warp together
  (threadIdx.x is the lane; never inside a guard that depends on threadIdx). FragmentLoad/Store move
  the 16x16 tile whose top-left element is `origin` (a Load naming the element) in a row-major
  buffer with leading dimension buffer.shape[-1]; a 'col_major' operand is read transposed.

      for k_i in unrolled(1):
        x_frag[i_f] = wmma_load(&x_shared[i_w * 32 + i_f * 16, k_i * 16])
        acc_frag[i_f, j_f] = mma(x_frag[i_f], w_frag[j_f], acc_frag[i_f, j_f])
- float4 accesses (CUDA, from passes/vectorize_cuda.py): a Float4Block replaces a `vectorized` loop of
  4 lanes. Its Float4Loads fill float4 registers (local f32[4] buffers the block declares) with 4
  consecutive elements of a global buffer starting at a flat index that is a multiple of 4; its lanes
  are the loop body once per lane (lane k reads register[k]); its Float4Stores write registers back.

      float4 n_v in [0, 4):
        ld0_0 = float4 x[i * 4 ..+4]
        st0_0[0] = ld0_0[0] * 2.0f
        ...
        out0[i * 4 ..+4] = float4(st0_0[0], st0_0[1], st0_0[2], st0_0[3])
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

import numpy as np

from .naming import dot_id, dot_str

LOOP_KINDS = ("serial", "parallel", "unrolled", "vectorized",
              "blockIdx.x", "blockIdx.y", "blockIdx.z", "threadIdx.x", "threadIdx.y", "threadIdx.z")
BOUND_KINDS = LOOP_KINDS[4:]
SCOPES = ("global", "shared", "local")
DTYPES = ("f32", "f16", "f64", "i32", "i64", "bool", "bf16", "f8e4m3", "f8e5m2")
FLOAT_DTYPES = ("f32", "f16", "f64", "bf16", "f8e4m3", "f8e5m2")
# stored narrower than computed: both code generators hold them in f32 registers and round at op boundaries
LOW_PRECISION = ("f16", "bf16", "f8e4m3", "f8e5m2")
MATH_FUNCTIONS = ("exp", "log", "tanh", "sqrt", "rsqrt", "abs", "erf", "pow", "sin", "cos", "floor", "sigmoid")
COMPARE_OPS = ("<", "<=", ">", ">=", "==", "!=")
LOGIC_OPS = ("&&", "||")
ARITH_OPS = ("+", "-", "*", "/", "%", "min", "max")
REDUCE_OPS = ("sum", "max", "min")


def short_dtype(dtype: Any) -> str:
    """'f32' for np.float32 / 'float32' / 'f32'."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    from .dtypes import short_name
    return short_name(np.dtype(dtype))


def np_dtype(short: str) -> np.dtype:
    if short in ("bf16", "f8e4m3", "f8e5m2"):
        from .dtypes import ml_dtype
        return ml_dtype(short)
    return np.dtype({"f32": "float32", "f16": "float16", "f64": "float64", "i32": "int32",
                     "i64": "int64", "bool": "bool"}[short])


# ----------------------------------------------------------------------------- expressions
class Expr:
    """Base of scalar expressions. Python operators build BinOps for brevity in passes."""

    dtype: str

    def __add__(self, o): return BinOp("+", self, as_expr(o, self.dtype))
    def __radd__(self, o): return BinOp("+", as_expr(o, self.dtype), self)
    def __sub__(self, o): return BinOp("-", self, as_expr(o, self.dtype))
    def __rsub__(self, o): return BinOp("-", as_expr(o, self.dtype), self)
    def __mul__(self, o): return BinOp("*", self, as_expr(o, self.dtype))
    def __rmul__(self, o): return BinOp("*", as_expr(o, self.dtype), self)
    def __floordiv__(self, o): return BinOp("/", self, as_expr(o, self.dtype))
    def __truediv__(self, o): return BinOp("/", self, as_expr(o, self.dtype))
    def __mod__(self, o): return BinOp("%", self, as_expr(o, self.dtype))
    def __lt__(self, o): return BinOp("<", self, as_expr(o, self.dtype))
    def __le__(self, o): return BinOp("<=", self, as_expr(o, self.dtype))
    def __gt__(self, o): return BinOp(">", self, as_expr(o, self.dtype))
    def __ge__(self, o): return BinOp(">=", self, as_expr(o, self.dtype))

    def __str__(self) -> str:
        return expr_text(self)


@dataclass(frozen=True, eq=True)
class Var(Expr):
    name: str
    dtype: str = "i32"

    def __hash__(self): return hash(("Var", self.name))
    # identity of a loop variable is its name: passes rename by making a new Var
    __eq__ = lambda self, o: isinstance(o, Var) and o.name == self.name and o.dtype == self.dtype  # noqa: E731


@dataclass(frozen=True)
class Const(Expr):
    value: Union[int, float, bool]
    dtype: str = "i32"

    def __post_init__(self):
        object.__setattr__(self, "dtype", short_dtype(self.dtype))



@dataclass(frozen=True)
class BinOp(Expr):
    op: str
    a: Expr
    b: Expr

    @property
    def dtype(self) -> str:  # type: ignore[override]
        if self.op in COMPARE_OPS or self.op in LOGIC_OPS:
            return "bool"
        return self.a.dtype



@dataclass(frozen=True)
class UnOp(Expr):
    op: str  # 'neg' or 'not'
    a: Expr

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return "bool" if self.op == "not" else self.a.dtype



@dataclass(frozen=True)
class Call(Expr):
    fn: str
    args: tuple[Expr, ...]
    dtype: str = "f32"



@dataclass(frozen=True)
class Select(Expr):
    cond: Expr
    a: Expr
    b: Expr

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return self.a.dtype



@dataclass(frozen=True)
class Cast(Expr):
    dtype: str
    a: Expr



@dataclass(frozen=True)
class Buffer:
    """A named tensor in memory. scope: 'global' (kernel parameter or temporary), 'shared', 'local'."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "f32"
    scope: str = "global"

    def __post_init__(self):
        object.__setattr__(self, "dtype", short_dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.scope not in SCOPES:
            raise ValueError(f"buffer scope must be one of {SCOPES}, got {self.scope!r}")

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * np_dtype(self.dtype).itemsize

    def __getitem__(self, idx) -> "Load":
        if not isinstance(idx, tuple):
            idx = (idx,)
        return Load(self, tuple(as_expr(i) for i in idx))

    def type_str(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}] {self.scope}"


@dataclass(frozen=True)
class Load(Expr):
    buffer: Buffer
    indices: tuple[Expr, ...]

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return self.buffer.dtype



def as_expr(x: Any, dtype: str = "i32") -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, (bool, np.bool_)):
        return Const(bool(x), "bool")
    if isinstance(x, (int, np.integer)):
        return Const(int(x), dtype if dtype in ("i32", "i64") else ("i32" if dtype == "bool" else dtype))
    if isinstance(x, (float, np.floating)):
        return Const(float(x), dtype if dtype in FLOAT_DTYPES else "f32")
    raise TypeError(f"cannot make an expression of {x!r}")


def call(fn: str, *args: Expr, dtype: str | None = None) -> Call:
    if fn not in MATH_FUNCTIONS:
        raise ValueError(f"unknown math function {fn!r}; known: {', '.join(MATH_FUNCTIONS)}")
    return Call(fn, tuple(args), dtype or args[0].dtype)


def minimum(a: Expr, b: Expr) -> Expr: return BinOp("min", a, b)
def maximum(a: Expr, b: Expr) -> Expr: return BinOp("max", a, b)


def all_of(conds: Sequence[Expr]) -> Expr:
    """conds[0] && conds[1] && ... left-nested, as C prints it; no conditions: the constant true.

    >>> expr_text(all_of([BinOp("<", Var("i"), Const(4)), BinOp("<", Var("j"), Const(3))]))
    'i < 4 && j < 3'
    """
    out: Expr | None = None
    for c in conds:
        out = c if out is None else BinOp("&&", out, c)
    return out if out is not None else Const(True, "bool")


# ----------------------------------------------------------------------------- statements
class Stmt:
    def __str__(self) -> str:
        return "\n".join(stmt_lines(self, 0))


@dataclass(frozen=True)
class Store(Stmt):
    buffer: Buffer
    indices: tuple[Expr, ...]
    value: Expr


@dataclass(frozen=True)
class For(Stmt):
    var: Var
    extent: int
    body: tuple[Stmt, ...]
    kind: str = "serial"
    annotations: tuple[tuple[str, Any], ...] = ()  # e.g. (("pragma", "grid-stride"),)

    def __post_init__(self):
        if self.kind not in LOOP_KINDS:
            raise ValueError(f"loop kind must be one of {LOOP_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "body", tuple(self.body))
        object.__setattr__(self, "extent", int(self.extent))

    @property
    def bound(self) -> bool:
        return self.kind in BOUND_KINDS


@dataclass(frozen=True)
class If(Stmt):
    cond: Expr
    then: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "then", tuple(self.then))
        object.__setattr__(self, "orelse", tuple(self.orelse))


@dataclass(frozen=True)
class Alloc(Stmt):
    buffer: Buffer


@dataclass(frozen=True)
class Barrier(Stmt):
    pass


@dataclass(frozen=True)
class ThreadAllReduce(Stmt):
    op: str          # 'sum' | 'max' | 'min'
    buffer: Buffer   # 0-d local buffer, read and overwritten by every thread
    axis: str = "threadIdx.x"


@dataclass(frozen=True)
class Comment(Stmt):
    text: str


FRAGMENT_ROLES = ("matrix_a", "matrix_b", "accumulator")
WMMA_SHAPE = (16, 16, 16)   # (m, n, k) of one warp-level mma


@dataclass(frozen=True)
class Fragment:
    """A per-warp array of `count` WMMA tiles (16x16 elements each, spread over the warp's registers).

    role 'matrix_a' (m x k, f16), 'matrix_b' (k x n, f16) or 'accumulator' (m x n, f32); layout is how
    an operand tile sits in memory ('row_major' or 'col_major'; accumulators are loaded/stored row-major).
    """

    name: str
    role: str
    count: tuple[int, ...]
    dtype: str
    layout: str = "row_major"

    def __post_init__(self):
        if self.role not in FRAGMENT_ROLES:
            raise ValueError(f"fragment role must be one of {FRAGMENT_ROLES}, got {self.role!r}")
        object.__setattr__(self, "count", tuple(int(c) for c in self.count))

    def type_str(self) -> str:
        lay = f", {self.layout}" if self.role != "accumulator" else ""
        return f"{self.role} {self.dtype}[{','.join(map(str, self.count))}] of 16x16{lay}"


@dataclass(frozen=True)
class FragmentAlloc(Stmt):
    fragment: Fragment


@dataclass(frozen=True)
class FragmentFill(Stmt):
    fragment: Fragment
    index: tuple[Expr, ...]
    value: Const


@dataclass(frozen=True)
class FragmentLoad(Stmt):
    """fragment[index] = the 16x16 tile of origin.buffer starting at origin.indices (warp-collective)."""

    fragment: Fragment
    index: tuple[Expr, ...]
    origin: Load


@dataclass(frozen=True)
class Mma(Stmt):
    """c[c_index] = a[a_index] @ b[b_index] + c[c_index]: f16 products, f32 accumulation (warp-collective)."""

    c: Fragment
    c_index: tuple[Expr, ...]
    a: Fragment
    a_index: tuple[Expr, ...]
    b: Fragment
    b_index: tuple[Expr, ...]


@dataclass(frozen=True)
class FragmentStore(Stmt):
    """The 16x16 tile starting at origin.indices of origin.buffer = fragment[index] (warp-collective)."""

    origin: Load
    fragment: Fragment
    index: tuple[Expr, ...]


WARP_STMTS = (FragmentAlloc, FragmentFill, FragmentLoad, Mma, FragmentStore)


# a lane accumulator's buffer (passes/vectorize_cpu.py) is named '<accumulator> lanes': the space keeps
# it apart from every user and generated name, and Program.stats counts them by it
LANE_ACCUMULATOR_SUFFIX = " lanes"


@dataclass(frozen=True)
class RegisterTile:
    """A local buffer's vectors of `lanes` elements at flat offsets `bases`, held in vector registers."""

    buffer: Buffer
    bases: tuple[int, ...]
    lanes: int

    def text(self) -> str:
        return f"{self.buffer.name}[{', '.join(map(str, self.bases))}] as {self.buffer.dtype}x{self.lanes}"


@dataclass(frozen=True)
class MicroKernel(Stmt):
    """A serial loop run as a register-tiled micro-kernel (CPU; made by passes/vectorize_cpu.py).

    `loop` is the serial loop with its unrolled body: every statement is one vector of lanes,
    `for lane in vectorized(W): store`, optionally inside `if guard:` (a guard in `guards`, fixed for
    the whole loop). Executing `loop` is the semantics; `tiles` is a storage decision: those
    vectors of local buffers live in registers for the whole loop (loaded before it, stored after).
    The C backend prints it as its own noinline function with GCC vector variables.
    """

    name: str                                  # 'mk0', 'mk1', ... in the kernel's statement order
    loop: For
    tiles: tuple[RegisterTile, ...]
    guards: tuple[Expr, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "tiles", tuple(self.tiles))
        object.__setattr__(self, "guards", tuple(self.guards))
FLOAT4_LANES = 4


@dataclass(frozen=True)
class Float4Load(Stmt):
    """register[0:4] = the 4 elements of global `buffer` from flat (row-major) index `base` on: one
    aligned 16-byte access (CUDA float4). base is a multiple of 4; register is a local f32[4]."""

    register: Buffer
    buffer: Buffer
    base: Expr


@dataclass(frozen=True)
class Float4Store(Stmt):
    """The 4 elements of global `buffer` from flat index `base` on = register[0:4] (one float4 store)."""

    buffer: Buffer
    base: Expr
    register: Buffer


@dataclass(frozen=True)
class Float4Block(Stmt):
    """A `vectorized` loop over `var` in [0, 4) rewritten for float4 global accesses.

    `loads` run first, then `lanes` (the loop body once per lane k, with var = k and each vector-loaded
    element read as register[k]; a global store writes its register's lane k), then `stores`.
    The block declares its registers (the local f32[4] buffers of its loads and stores).
    """

    var: Var
    loads: tuple[Float4Load, ...]
    lanes: tuple[Stmt, ...]
    stores: tuple[Float4Store, ...]

    def __post_init__(self):
        for f in ("loads", "lanes", "stores"):
            object.__setattr__(self, f, tuple(getattr(self, f)))

    @property
    def body(self) -> tuple[Stmt, ...]:
        """Every statement of the block in execution order."""
        return (*self.loads, *self.lanes, *self.stores)

    @property
    def registers(self) -> tuple[Buffer, ...]:
        out: dict[str, Buffer] = {}
        for s in (*self.loads, *self.stores):
            out.setdefault(s.register.name, s.register)
        return tuple(out.values())


# ----------------------------------------------------------------------------- kernels
@dataclass(frozen=True)
class Kernel:
    """One device function. params are global buffers (inputs first, then outputs).

    group: id of the fusion group it implements; ops: the graph ops it contains (for
    comments); source_lines: user source lines it came from (provenance); schedule:
    the schedule primitives applied (text, in order); kind: 'elementwise' | 'reduce' |
    'contraction' | 'opaque'.
    """

    name: str
    params: tuple[Buffer, ...]
    body: tuple[Stmt, ...]
    outputs: tuple[str, ...] = ()
    group: str = ""
    kind: str = "elementwise"
    ops: tuple[str, ...] = ()
    source_lines: tuple[str, ...] = ()
    schedule: tuple[str, ...] = ()
    meta: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "body", tuple(self.body))
        object.__setattr__(self, "params", tuple(self.params))

    @property
    def inputs(self) -> tuple[Buffer, ...]:
        return tuple(p for p in self.params if p.name not in self.outputs)

    @property
    def output_buffers(self) -> tuple[Buffer, ...]:
        return tuple(p for p in self.params if p.name in self.outputs)

    def launch(self) -> dict[str, tuple[int, int, int]]:
        """{'grid': (x, y, z), 'block': (x, y, z)} from the bound loops (1 where unbound)."""
        grid = {"x": 1, "y": 1, "z": 1}
        block = {"x": 1, "y": 1, "z": 1}
        for loop in walk_loops(self.body):
            if loop.kind.startswith("blockIdx."):
                grid[loop.kind[-1]] = loop.extent
            elif loop.kind.startswith("threadIdx."):
                block[loop.kind[-1]] = loop.extent
        return {"grid": (grid["x"], grid["y"], grid["z"]), "block": (block["x"], block["y"], block["z"])}

    def is_gpu_bound(self) -> bool:
        return any(loop.bound for loop in walk_loops(self.body))

    def shared_bytes(self) -> int:
        return sum(a.buffer.nbytes for a in walk(self.body) if isinstance(a, Alloc) and a.buffer.scope == "shared")

    def meta_dict(self) -> dict[str, Any]:
        return dict(self.meta)

    def text(self) -> str:
        sig = ", ".join(f"{p.name}: {p.type_str()}" for p in self.params)
        lines = [f"kernel {self.name}({sig}):"]
        if self.group or self.ops:
            lines.append(f"  # group {self.group}: {' → '.join(self.ops)}" if self.ops else f"  # group {self.group}")
        if self.source_lines:
            for s in self.source_lines:
                lines.append(f"  # from {s}")
        if self.schedule:
            lines.append("  # schedule:")
            lines.extend(f"  #   {p}" for p in self.schedule)
        for note in self.meta_dict().get("notes", ()):
            lines.append(f"  # why: {note}")
        for s in self.body:
            lines.extend(stmt_lines(s, 1))
        return "\n".join(lines)

    __str__ = text

    def replace(self, **changes) -> "Kernel":
        return replace(self, **changes)


@dataclass(frozen=True)
class Program:
    """A compiled function at loop level: kernels in launch order over global buffers.

    inputs/outputs are the function's; temps are the global intermediates between kernels
    (the memory round trips fusion removes).
    """

    name: str
    kernels: tuple[Kernel, ...]
    inputs: tuple[Buffer, ...]
    outputs: tuple[Buffer, ...]
    temps: tuple[Buffer, ...] = ()
    # non-scalar constants of the function: (buffer, data); their buffers are also listed
    # last in `inputs`, and Compiled.run passes their data after the user's arguments.
    constants: tuple = field(default=(), compare=False)

    def __post_init__(self):
        object.__setattr__(self, "kernels", tuple(self.kernels))

    def text(self) -> str:
        head = [f"program {self.name}(" + ", ".join(f"{b.name}: {b.type_str()}" for b in self.inputs) + ")"
                + " -> (" + ", ".join(f"{b.name}: {b.type_str()}" for b in self.outputs) + ")"]
        if self.temps:
            head.append("  temps: " + ", ".join(f"{b.name}: {b.type_str()}" for b in self.temps))
        return "\n\n".join(["\n".join(head)] + [k.text() for k in self.kernels])

    __str__ = text

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.text())}</pre>"

    def buffers(self) -> dict[str, Buffer]:
        out = {b.name: b for b in (*self.inputs, *self.outputs, *self.temps)}
        for k in self.kernels:
            for p in k.params:
                out.setdefault(p.name, p)
        return out

    def stats(self) -> dict[str, Any]:
        """Kernels, loops, temp and shared bytes; after the `vectorized` stage also how many micro-kernels,
        lane accumulators and float4 blocks it made (each key only when there is one).

        >>> x, y = Buffer("x", (8,)), Buffer("y", (8,))
        >>> k = Kernel("copy", (x, y), (For(Var("i"), 8, (Store(y, (Var("i"),), x[Var("i")]),)),), outputs=("y",))
        >>> Program("copy", (k,), (x,), (y,)).stats()
        {'kernels': 1, 'loops': 1, 'temp_bytes': 0, 'shared_bytes': 0}
        """
        loops = sum(len(list(walk_loops(k.body))) for k in self.kernels)
        out = {"kernels": len(self.kernels), "loops": loops,
               "temp_bytes": sum(b.nbytes for b in self.temps),
               "shared_bytes": max((k.shared_bytes() for k in self.kernels), default=0)}
        stmts = [s for k in self.kernels for s in walk(k.body)]
        made = {"micro_kernels": sum(isinstance(s, MicroKernel) for s in stmts),
                "lane_accumulators": sum(isinstance(s, Alloc) and s.buffer.name.endswith(LANE_ACCUMULATOR_SUFFIX)
                                         for s in stmts),
                "float4_blocks": sum(isinstance(s, Float4Block) for s in stmts)}
        return {**out, **{k: n for k, n in made.items() if n}}

    def dot(self) -> str:
        """The loop tree of every kernel as graphviz clusters."""
        lines = [f"digraph {dot_id(self.name, 'k')} {{", "  rankdir=TB;",
                 '  node [fontname="Helvetica", fontsize=10, shape=box, style="rounded,filled", fillcolor="#f3f3f3"];']
        counter = [0]

        def new_id() -> str:
            counter[0] += 1
            return f"s{counter[0]}"

        def emit(stmts: Sequence[Stmt], parent: str, indent: str):
            for s in stmts:
                nid = new_id()
                if isinstance(s, For):
                    color = {"serial": "#f3f3f3", "parallel": "#d9f2d9", "vectorized": "#fde9c9",
                             "unrolled": "#fff4c2"}.get(s.kind, "#d6e4f5")
                    lines.append(f'{indent}{nid} [label={dot_str(f"for {s.var.name} in {s.kind}({s.extent})")}, '
                                 f'fillcolor="{color}"];')
                    lines.append(f"{indent}{parent} -> {nid};")
                    emit(s.body, nid, indent)
                elif isinstance(s, MicroKernel):
                    lines.append(f'{indent}{nid} [label={dot_str(f"microkernel {s.name}")}, fillcolor="#fde9c9"];')
                    lines.append(f"{indent}{parent} -> {nid};")
                    emit((s.loop,), nid, indent)
                elif isinstance(s, Float4Block):
                    lines.append(f'{indent}{nid} [label={dot_str(f"float4 {s.var.name}")}, fillcolor="#fde9c9"];')
                    lines.append(f"{indent}{parent} -> {nid};")
                    emit(s.body, nid, indent)
                elif isinstance(s, If):
                    lines.append(f'{indent}{nid} [label={dot_str("if " + expr_text(s.cond))}, shape=diamond];')
                    lines.append(f"{indent}{parent} -> {nid};")
                    emit(s.then, nid, indent)
                    emit(s.orelse, nid, indent)
                else:
                    text = "\n".join(stmt_lines(s, 0))
                    if len(text) > 60:
                        text = text[:57] + "..."
                    lines.append(f'{indent}{nid} [label={dot_str(text)}, shape=plaintext, style=""];')
                    lines.append(f"{indent}{parent} -> {nid};")

        for k in self.kernels:
            lines.append(f"  subgraph cluster_{dot_id(k.name, 'k')} {{")
            lines.append(f"    label={dot_str(k.name)}; style=rounded; color=\"#3a6ea5\";")
            root = new_id()
            lines.append(f'    {root} [label={dot_str("kernel " + k.name)}, fillcolor="#d6e4f5"];')
            emit(k.body, root, "    ")
            lines.append("  }")
        lines.append("}")
        return "\n".join(lines)

    def to_svg(self) -> str:
        from .render import dot_to_svg
        return dot_to_svg(self.dot())


# ----------------------------------------------------------------------------- traversal
def walk(stmts: Iterable[Stmt]) -> Iterator[Stmt]:
    """Every statement, pre-order."""
    for s in stmts:
        yield s
        if isinstance(s, (For, Float4Block)):
            yield from walk(s.body)
        elif isinstance(s, If):
            yield from walk(s.then)
            yield from walk(s.orelse)
        elif isinstance(s, MicroKernel):
            yield from walk((s.loop,))


def walk_loops(stmts: Iterable[Stmt]) -> Iterator[For]:
    for s in walk(stmts):
        if isinstance(s, For):
            yield s


def walk_expr(e: Expr) -> Iterator[Expr]:
    yield e
    if isinstance(e, BinOp):
        yield from walk_expr(e.a)
        yield from walk_expr(e.b)
    elif isinstance(e, (UnOp, Cast)):
        yield from walk_expr(e.a)
    elif isinstance(e, Call):
        for a in e.args:
            yield from walk_expr(a)
    elif isinstance(e, Select):
        yield from walk_expr(e.cond)
        yield from walk_expr(e.a)
        yield from walk_expr(e.b)
    elif isinstance(e, Load):
        for i in e.indices:
            yield from walk_expr(i)


def stmt_exprs(s: Stmt) -> Iterator[Expr]:
    """The expressions directly in statement s (not in nested statements)."""
    if isinstance(s, Store):
        yield from s.indices
        yield s.value
    elif isinstance(s, If):
        yield s.cond
    elif isinstance(s, (FragmentLoad, FragmentStore)):
        yield s.origin
        yield from s.index
    elif isinstance(s, (FragmentFill,)):
        yield from s.index
    elif isinstance(s, Mma):
        yield from (*s.c_index, *s.a_index, *s.b_index)
    elif isinstance(s, MicroKernel):
        yield from s.guards
    elif isinstance(s, (Float4Load, Float4Store)):
        yield s.base


def axis_stride_offset(e: Expr) -> tuple[str, int, int] | None:
    """(axis, stride, offset) when the index e is stride * Var(axis) + offset with int constants, stride > 0.

    >>> axis_stride_offset(BinOp("+", BinOp("*", Var("i"), Const(2)), Const(1)))
    ('i', 2, 1)
    """
    if isinstance(e, Var):
        return e.name, 1, 0
    if isinstance(e, BinOp) and e.op in ("+", "*"):
        for x, c in ((e.a, e.b), (e.b, e.a)):
            if isinstance(c, Const) and c.dtype in ("i32", "i64"):
                inner = axis_stride_offset(x)
                if inner is None:
                    return None
                v, k = int(c.value), inner
                if e.op == "+":
                    return k[0], k[1], k[2] + v
                return (k[0], k[1] * v, k[2] * v) if v > 0 else None
    return None


def affine_terms(e: Expr) -> tuple[dict[str, int], int] | None:
    """({var: coefficient}, constant) when the integer expression e is affine in its variables (constants,
    variables, +, -, * by a constant, negation, integer casts), else None (/, %, loads, calls, floats).

    >>> affine_terms(BinOp("-", BinOp("+", BinOp("*", Var("o"), Const(4)), Var("i")), Const(1)))
    ({'o': 4, 'i': 1}, -1)
    """
    ints = ("i32", "i64")
    if isinstance(e, Const):
        return ({}, int(e.value)) if e.dtype in ints or e.dtype == "bool" else None
    if isinstance(e, Var):
        return ({e.name: 1}, 0) if e.dtype in ints else None
    if isinstance(e, BinOp) and e.op in ("+", "-", "*") and e.dtype in ints:
        a, b = affine_terms(e.a), affine_terms(e.b)
        if a is None or b is None:
            return None
        if e.op == "*":
            if not a[0]:
                a, b = b, a
            if b[0]:
                return None      # a product of two variables
            k = b[1]
            return {v: c * k for v, c in a[0].items() if c * k}, a[1] * k
        sign = 1 if e.op == "+" else -1
        t = dict(a[0])
        for v, c in b[0].items():
            t[v] = t.get(v, 0) + sign * c
        return {v: c for v, c in t.items() if c}, a[1] + sign * b[1]
    if isinstance(e, UnOp) and e.op == "neg" and e.dtype in ints:
        a = affine_terms(e.a)
        return None if a is None else ({v: -c for v, c in a[0].items()}, -a[1])
    if isinstance(e, Cast) and e.dtype in ints and e.a.dtype in ints:
        return affine_terms(e.a)
    return None


def map_expr(e: Expr, fn: Callable[[Expr], Expr | None]) -> Expr:
    """Rebuild e bottom-up; fn(node) returns a replacement or None to keep it."""
    if isinstance(e, BinOp):
        e = BinOp(e.op, map_expr(e.a, fn), map_expr(e.b, fn))
    elif isinstance(e, UnOp):
        e = UnOp(e.op, map_expr(e.a, fn))
    elif isinstance(e, Cast):
        e = Cast(e.dtype, map_expr(e.a, fn))
    elif isinstance(e, Call):
        e = Call(e.fn, tuple(map_expr(a, fn) for a in e.args), e.dtype)
    elif isinstance(e, Select):
        e = Select(map_expr(e.cond, fn), map_expr(e.a, fn), map_expr(e.b, fn))
    elif isinstance(e, Load):
        e = Load(e.buffer, tuple(map_expr(i, fn) for i in e.indices))
    r = fn(e)
    return e if r is None else r


def substitute(e: Expr, mapping: dict[str, Expr]) -> Expr:
    """Replace Vars by name."""
    return map_expr(e, lambda x: mapping.get(x.name) if isinstance(x, Var) else None)


def map_stmts(stmts: Sequence[Stmt], fn: Callable[[Stmt], Stmt | Sequence[Stmt] | None]) -> tuple[Stmt, ...]:
    """Rebuild a statement list bottom-up; fn returns a replacement stmt, a list, or None to keep."""
    out: list[Stmt] = []
    for s in stmts:
        if isinstance(s, For):
            s = replace(s, body=map_stmts(s.body, fn))
        elif isinstance(s, If):
            s = replace(s, then=map_stmts(s.then, fn), orelse=map_stmts(s.orelse, fn))
        elif isinstance(s, Float4Block):
            s = replace(s, lanes=map_stmts(s.lanes, fn))
        r = fn(s)
        if r is None:
            out.append(s)
        elif isinstance(r, Stmt):
            out.append(r)
        else:
            out.extend(r)
    return tuple(out)


def map_stmt_exprs(stmts: Sequence[Stmt], fn: Callable[[Expr], Expr | None]) -> tuple[Stmt, ...]:
    """Apply map_expr(fn) to every expression of every statement."""
    def visit(s: Stmt):
        if isinstance(s, Store):
            return Store(s.buffer, tuple(map_expr(i, fn) for i in s.indices), map_expr(s.value, fn))
        if isinstance(s, If):
            return If(map_expr(s.cond, fn), s.then, s.orelse)
        if isinstance(s, Float4Block):
            return replace(s, loads=tuple(replace(x, base=map_expr(x.base, fn)) for x in s.loads),
                           stores=tuple(replace(x, base=map_expr(x.base, fn)) for x in s.stores))
        return None
    return map_stmts(stmts, visit)


def simplify_expr(e: Expr) -> Expr:
    """Constant folding and x+0, x*1, x*0 on integer index arithmetic."""
    def fold(x: Expr) -> Expr | None:
        if isinstance(x, BinOp) and x.dtype in ("i32", "i64"):
            a, b = x.a, x.b
            if isinstance(a, Const) and isinstance(b, Const):
                va, vb = int(a.value), int(b.value)
                r = {"+": lambda: va + vb, "-": lambda: va - vb, "*": lambda: va * vb,
                     "/": lambda: va // vb if vb else None, "%": lambda: va % vb if vb else None,
                     "min": lambda: min(va, vb), "max": lambda: max(va, vb)}.get(x.op, lambda: None)()
                return Const(r, x.dtype) if r is not None else None
            if x.op == "+" and isinstance(b, Const) and b.value == 0:
                return a
            if x.op == "+" and isinstance(a, Const) and a.value == 0:
                return b
            if x.op == "-" and isinstance(b, Const) and b.value == 0:
                return a
            if x.op == "*" and isinstance(b, Const) and b.value == 1:
                return a
            if x.op == "*" and isinstance(a, Const) and a.value == 1:
                return b
            if x.op == "*" and ((isinstance(b, Const) and b.value == 0) or (isinstance(a, Const) and a.value == 0)):
                return Const(0, x.dtype)
            if x.op in ("/",) and isinstance(b, Const) and b.value == 1:
                return a
            if x.op == "%" and isinstance(b, Const) and b.value == 1:
                return Const(0, x.dtype)
            if x.op == "+":
                # (a / c) * c + a % c  →  a   (undoes the div/mod of a fused axis when flattening)
                for p, q in ((a, b), (b, a)):
                    if (isinstance(p, BinOp) and p.op == "*" and isinstance(p.b, Const)
                            and isinstance(p.a, BinOp) and p.a.op == "/" and isinstance(q, BinOp) and q.op == "%"
                            and p.a.b == p.b == q.b and p.a.a == q.a):
                        return q.a
        return None
    return map_expr(e, fold)


def strided_index(buffer: Buffer, indices: Sequence[Expr], index_dtype: str = "i32") -> Expr:
    """Row-major linear index of `indices` into `buffer` as a sum of index * stride, simplified (the form
    CUDA codegen prints and passes/vectorize_cuda.py analyses); stride constants are `index_dtype`.

    >>> expr_text(strided_index(Buffer("x", (4, 8)), (Var("i"), Var("j"))))
    'i * 8 + j'
    """
    if not indices:
        return Const(0, "i32")
    total: Expr | None = None
    for ix, st in zip(indices, _row_major_strides(buffer.shape)):
        term = ix if st == 1 else BinOp("*", ix, Const(st, index_dtype))
        total = term if total is None else BinOp("+", total, term)
    return simplify_expr(total)


def _row_major_strides(shape: Sequence[int]) -> list[int]:
    strides, s = [], 1
    for d in reversed(shape):
        strides.append(s)
        s *= d
    return strides[::-1]


def kernel_index_dtype(kernel: Kernel) -> str:
    """'i64' when some buffer of the kernel (parameter or Alloc) has more than 2**31 - 1 elements, else 'i32'."""
    buffers = [*kernel.params, *(s.buffer for s in walk(kernel.body) if isinstance(s, Alloc))]
    return "i64" if any(b.size > 2**31 - 1 for b in buffers) else "i32"


def flat_index(buffer: Buffer, indices: Sequence[Expr]) -> Expr:
    """Row-major linear index of `indices` into `buffer`, in Horner form and simplified
    (so a fused axis split back into (n / C, n % C) flattens to plain n)."""
    if not indices:
        return Const(0)
    flat: Expr = indices[0]
    for ix, extent in zip(indices[1:], buffer.shape[1:]):
        flat = simplify_expr(BinOp("+", BinOp("*", flat, Const(extent)), ix))
    return simplify_expr(flat)


# ----------------------------------------------------------------------------- printing
# C's binding strength of the binary operators the loop IR has (higher binds tighter), and of a prefix
# unary operator or cast: the one table expr_text and both code generators parenthesize by.
PRECEDENCE = {"||": 1, "&&": 2, "==": 3, "!=": 3, "<": 4, "<=": 4, ">": 4, ">=": 4, "+": 5, "-": 5, "*": 6, "/": 6,
              "%": 6}
UNARY_PRECEDENCE = 9


def _const_text(c: Const) -> str:
    if c.dtype == "bool":
        return "true" if c.value else "false"
    if c.dtype in FLOAT_DTYPES:
        v = float(c.value)
        if np.isnan(v):
            return "nan"
        if np.isinf(v):
            return "inf" if v > 0 else "-inf"
        s = repr(v)
        return s + ("f" if c.dtype == "f32" else "")
    return str(int(c.value))


def expr_text(e: Expr, parent_prec: int = 0) -> str:
    """Readable C-like text of an expression (used by text(); codegen has its own printers)."""
    if isinstance(e, Var):
        return e.name
    if isinstance(e, Const):
        return _const_text(e)
    if isinstance(e, Load):
        return f"{e.buffer.name}[{', '.join(expr_text(i) for i in e.indices)}]"
    if isinstance(e, BinOp):
        if e.op in ("min", "max"):
            return f"{e.op}({expr_text(e.a)}, {expr_text(e.b)})"
        p = PRECEDENCE[e.op]
        s = f"{expr_text(e.a, p)} {e.op} {expr_text(e.b, p + 1)}"
        return f"({s})" if p < parent_prec else s
    if isinstance(e, UnOp):
        return ("-" if e.op == "neg" else "!") + expr_text(e.a, UNARY_PRECEDENCE)
    if isinstance(e, Call):
        return f"{e.fn}({', '.join(expr_text(a) for a in e.args)})"
    if isinstance(e, Select):
        return f"select({expr_text(e.cond)}, {expr_text(e.a)}, {expr_text(e.b)})"
    if isinstance(e, Cast):
        return f"{e.dtype}({expr_text(e.a)})"
    return repr(e)


def stmt_lines(s: Stmt, depth: int) -> list[str]:
    pad = "  " * depth
    if isinstance(s, (For, Float4Block)):
        if isinstance(s, For):
            head = f"for {s.var.name} in {'range' if s.kind == 'serial' else s.kind}({s.extent}):"
        else:
            head = f"float4 {s.var.name} in [0, {FLOAT4_LANES}):"
        return [pad + head] + [line for b in s.body for line in stmt_lines(b, depth + 1)]
    if isinstance(s, Store):
        idx = ", ".join(expr_text(i) for i in s.indices)
        return [f"{pad}{s.buffer.name}[{idx}] = {expr_text(s.value)}"]
    if isinstance(s, If):
        out = [f"{pad}if {expr_text(s.cond)}:"]
        for b in s.then:
            out.extend(stmt_lines(b, depth + 1))
        if s.orelse:
            out.append(f"{pad}else:")
            for b in s.orelse:
                out.extend(stmt_lines(b, depth + 1))
        return out
    if isinstance(s, Alloc):
        return [f"{pad}alloc {s.buffer.name}: {s.buffer.type_str()}"]
    if isinstance(s, Barrier):
        return [f"{pad}barrier()"]
    if isinstance(s, ThreadAllReduce):
        return [f"{pad}{s.buffer.name}[] = allreduce_{s.op}({s.buffer.name}[], {s.axis})"]
    if isinstance(s, Comment):
        return [f"{pad}# {s.text}"]
    if isinstance(s, MicroKernel):
        out = [f"{pad}microkernel {s.name} (register tiles {'; '.join(t.text() for t in s.tiles)}):"]
        if s.guards:
            out.append(f"{pad}  # guards tested once per call: {', '.join(expr_text(g) for g in s.guards)}")
        return out + stmt_lines(s.loop, depth + 1)
    if isinstance(s, FragmentAlloc):
        return [f"{pad}alloc {s.fragment.name}: {s.fragment.type_str()}"]
    if isinstance(s, FragmentFill):
        return [f"{pad}{_frag_text(s.fragment, s.index)} = wmma_fill({expr_text(s.value)})"]
    if isinstance(s, FragmentLoad):
        return [f"{pad}{_frag_text(s.fragment, s.index)} = wmma_load(&{expr_text(s.origin)}, "
                f"ld={s.origin.buffer.shape[-1]})"]
    if isinstance(s, Mma):
        c = _frag_text(s.c, s.c_index)
        return [f"{pad}{c} = mma({_frag_text(s.a, s.a_index)}, {_frag_text(s.b, s.b_index)}, {c})"]
    if isinstance(s, FragmentStore):
        return [f"{pad}wmma_store(&{expr_text(s.origin)}, {_frag_text(s.fragment, s.index)}, "
                f"ld={s.origin.buffer.shape[-1]})"]
    if isinstance(s, Float4Load):
        return [f"{pad}{s.register.name} = float4 {_float4_text(s.buffer, s.base)}"]
    if isinstance(s, Float4Store):
        lanes = ", ".join(f"{s.register.name}[{k}]" for k in range(FLOAT4_LANES))
        return [f"{pad}{_float4_text(s.buffer, s.base)} = float4({lanes})"]
    return [f"{pad}{s!r}"]


def _float4_text(buf: Buffer, base: Expr) -> str:
    """'x[i * 4 ..+4]': 4 elements from flat index base (x.flat[...] when x has several dimensions)."""
    return f"{buf.name}{'' if len(buf.shape) == 1 else '.flat'}[{expr_text(base)} ..+{FLOAT4_LANES}]"


def _frag_text(f: Fragment, index: Sequence[Expr]) -> str:
    return f"{f.name}[{', '.join(expr_text(i) for i in index)}]"
