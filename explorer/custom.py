"""Custom kernels: the escape hatch for code the compiler cannot generate.

`custom_kernel(name, c_source=..., cuda_source=..., reference=...)` registers a user kernel as an
op. Inside a traced function it records one node named `name`; fusion treats it as opaque
("custom kernel: opaque"); every target runs it: cpu builds `c_source` with the generated C,
cuda builds `cuda_source` with the generated CUDA, sim and reference run the NumPy `reference`.

Calling convention (the same in C and CUDA; `T` is the C type of `dtype`, e.g. float):

    C:     void NAME(int64_t n, const int64_t *dims, const T *in0, ..., const T *inK, T *out)
    CUDA:  __device__ void NAME(long long n, const long long *dims, const T *in0, ..., T *out)

- `n` is the number of output elements; arrays are contiguous and row-major.
- `dims` holds the shape of every input, then the output's shape, concatenated (your kernel knows
  each rank). A kernel that ignores shapes (elementwise) just uses `n`.
- C: one call does the whole output (use loops; OpenMP pragmas are allowed).
- CUDA: the explorer launches ceil(n/256) blocks of 256 threads and calls NAME in every thread;
  compute `i = blockIdx.x * (long long)blockDim.x + threadIdx.x` and guard `i < n`.

>>> import numpy as np, explorer
>>> swish = explorer.custom_kernel("swish_doc",
...     c_source='''
... void swish_doc(int64_t n, const int64_t *dims, const float *x, float *y) {
...     for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + expf(-x[i]));
... }''',
...     reference=lambda x: x / (1 + np.exp(-x)), check_cuda=False)
>>> c = explorer.compile(lambda x: swish(x) + 1, np.ones(4, np.float32), target="reference")
>>> c(np.zeros(4, np.float32))
array([1., 1., 1., 1.], dtype=float32)
"""
from __future__ import annotations

import hashlib
import inspect
import keyword
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from . import dtypes
from .errors import CompileError, DTypeError, ExplorerError, ShapeError, VerificationError
from .target import Target, get_target

# the generated wrappers (C and CUDA) live with the code generators; re-exported here (the user-facing module)
from .codegen.custom import CUDA_BLOCK, OPAQUE_REASON, emit_c, emit_cuda, missing_source  # noqa: E402,F401

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# names the generated C/CUDA (and the C library) already use
_TAKEN_NAMES = frozenset("""main exp expf log logf tanh tanhf sqrt sqrtf fabs fabsf erf erff pow powf sin sinf cos cosf
abs min max memcpy memset malloc free printf int8_t int16_t int32_t int64_t uint16_t uint32_t size_t
bool true false float double int long char void half""".split())

REGISTRY: dict[str, "CustomKernel"] = {}


@dataclass(frozen=True, eq=False)
class CustomKernel:
    """A registered user kernel; call it on traced values (or arrays: runs `reference`)."""

    name: str
    reference: Callable[..., np.ndarray]
    c_source: str | None
    cuda_source: str | None
    shape_fn: Callable[..., Any] | None
    arity: int
    dtype: np.dtype
    flops_per_element: int = 1

    @property
    def op(self) -> str:
        return self.name

    @property
    def ctype(self) -> str:
        return dtypes.C_TYPE[dtypes.short_name(self.dtype)]

    @property
    def cuda_type(self) -> str:
        return dtypes.CUDA_TYPE[dtypes.short_name(self.dtype)]

    def __call__(self, *args: Any):
        from .tracing import apply_op
        if len(args) != self.arity:
            raise ShapeError(f"custom kernel {self.name}: takes {self.arity} input(s), got {len(args)}")
        return apply_op(self.name, *args)

    def out_shape(self, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
        """The output shape for input `shapes` (shape_fn, or the first input's shape)."""
        if self.shape_fn is None:
            return tuple(shapes[0]) if shapes else ()
        try:
            got = self.shape_fn(*[tuple(s) for s in shapes])
        except Exception as e:
            raise ShapeError(f"custom kernel {self.name}: shape_fn{tuple(tuple(s) for s in shapes)} raised "
                             f"{type(e).__name__}: {e}; shape_fn takes the input shapes and returns the output "
                             f"shape") from None
        if isinstance(got, (int, np.integer)) and not isinstance(got, bool):
            got = (got,)
        if not isinstance(got, (tuple, list)) or not all(
                isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d >= 0 for d in got):
            raise ShapeError(f"custom kernel {self.name}: shape_fn returned {got!r}; it must return a tuple of "
                             f"non-negative ints (the output shape), e.g. lambda x: x")
        return tuple(int(d) for d in got)

    def run_reference(self, *arrays: np.ndarray) -> np.ndarray:
        want = self.out_shape([a.shape for a in arrays])
        try:
            out = np.asarray(self.reference(*arrays))
        except ExplorerError:
            raise
        except Exception as e:
            raise ExplorerError(f"custom kernel {self.name}: its reference raised {type(e).__name__}: {e}") from None
        if out.shape != want:
            raise ShapeError(f"custom kernel {self.name}: the reference returned shape {out.shape} but shape_fn "
                             f"says {want}; make shape_fn return the reference's output shape")
        return out.astype(self.dtype, copy=False)

    def dims(self, in_shapes: Sequence[tuple[int, ...]], out_shape: tuple[int, ...]) -> list[int]:
        """The `dims` array of the calling convention: every input's shape, then the output's."""
        return [int(d) for s in (*in_shapes, out_shape) for d in s]

    # -- source wrappers (the only generated code around the user's source) --------------------------
    def c_call(self, dims: Sequence[int], n: int, args: Sequence[str], out: str) -> list[str]:
        """Lines of C calling the user's function with the calling convention."""
        arr = ", ".join(str(d) for d in dims) or "0"   # C has no empty initialiser lists
        return [f"  static const int64_t ke_dims[] = {{{arr}}};",
                f"  {self.name}((int64_t){n}, ke_dims, {', '.join([*args, out])});"]

    def cuda_call(self, dims: Sequence[int], n: int, args: Sequence[str], out: str) -> list[str]:
        arr = ", ".join(f"{d}LL" for d in dims) or "0LL"
        return [f"  const long long ke_dims[] = {{{arr}}};",
                f"  {self.name}({n}LL, ke_dims, {', '.join([*args, out])});"]


def _check_name(name: Any) -> str:
    from .ops import OPS
    if not isinstance(name, str) or not _IDENT.match(name):
        raise ExplorerError(f"custom_kernel: name {name!r} is not an identifier; use letters, digits and _ "
                            f"(not starting with a digit, at most 64 characters), e.g. 'swish'")
    if keyword.iskeyword(name) or name in _TAKEN_NAMES or name.startswith(("ke_", "__")):
        raise ExplorerError(f"custom_kernel: name {name!r} is reserved (a keyword, a C library function or an "
                            f"explorer prefix ke_/__); pick another, e.g. 'my_{name.strip('_')}'")
    from .naming import C_KEYWORDS
    if name in C_KEYWORDS:
        raise ExplorerError(f"custom_kernel: name {name!r} is a C/CUDA keyword; pick another, e.g. 'my_{name}'")
    if name in OPS and name not in REGISTRY:
        raise ExplorerError(f"custom_kernel: name {name!r} is a built-in op of the explorer; pick another name "
                            f"(e.g. 'my_{name}')")
    return name


def _arity(reference: Callable, name: str) -> int:
    try:
        params = inspect.signature(reference).parameters.values()
    except (TypeError, ValueError):
        raise ExplorerError(f"custom_kernel {name}: cannot read the reference's signature; pass inputs=N") from None
    pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        raise ExplorerError(f"custom_kernel {name}: the reference takes *args; pass inputs=N (the number of inputs)")
    return len(pos)


def custom_kernel(name: str, *, reference: Callable[..., np.ndarray], c_source: str | None = None,
                  cuda_source: str | None = None, shape_fn: Callable[..., Any] | None = None,
                  inputs: int | None = None, dtype: Any = np.float32, flops_per_element: int = 1,
                  replace: bool = False, check_cuda: bool = True) -> CustomKernel:
    """Register a user kernel as op `name` and return a callable that records it in traced functions.

    reference: NumPy function of the inputs (the ground truth; sim and reference targets run it).
    c_source / cuda_source: the kernel in C and in CUDA (see the module docstring for the calling
    convention); each is compiled now (gcc -c; nvcc --ptx when nvcc is here and check_cuda), and an
    error raises CompileError with the compiler's message and the line in *your* source string.
    shape_fn(*input_shapes) -> output shape (default: the first input's shape). inputs: number of
    inputs (default: the reference's positional parameters). dtype: element type of every input and
    of the output. Re-registering a name with the same sources is a no-op; other sources need
    replace=True.

    >>> import numpy as np, explorer
    >>> rowsum = explorer.custom_kernel("rowsum_doc", reference=lambda x: x.sum(axis=1),
    ...     shape_fn=lambda s: (s[0],), check_cuda=False, c_source='''
    ... void rowsum_doc(int64_t n, const int64_t *dims, const float *x, float *y) {
    ...     for (int64_t i = 0; i < n; i++) { float s = 0; for (int64_t j = 0; j < dims[1]; j++) s += x[i * dims[1] + j];
    ...                                         y[i] = s; }
    ... }''')
    >>> rowsum(np.ones((2, 3), np.float32))
    array([3., 3.], dtype=float32)
    """
    _check_name(name)
    if not callable(reference):
        raise ExplorerError(f"custom_kernel {name}: reference must be a NumPy function of the inputs, got "
                            f"{type(reference).__name__}")
    if shape_fn is not None and not callable(shape_fn):
        raise ExplorerError(f"custom_kernel {name}: shape_fn must be a function of the input shapes returning the "
                            f"output shape, got {type(shape_fn).__name__}")
    for what, src in (("c_source", c_source), ("cuda_source", cuda_source)):
        if src is not None and not isinstance(src, str):
            raise ExplorerError(f"custom_kernel {name}: {what} must be a str of source code, got {type(src).__name__}")
    if c_source is None and cuda_source is None:
        raise ExplorerError(f"custom_kernel {name}: give c_source (cpu target) and/or cuda_source (cuda target)")
    arity = _arity(reference, name) if inputs is None else inputs
    if isinstance(arity, bool) or not isinstance(arity, int) or arity < 1:
        raise ExplorerError(f"custom_kernel {name}: inputs={arity!r}; a custom kernel takes at least one input")
    dt = dtypes.check(dtype, f"custom_kernel {name} dtype")
    if dtypes.short_name(dt) not in ("f32", "f64", "i32", "i64"):
        raise DTypeError(f"custom_kernel {name}: dtype {dt} is not supported for custom kernels; use float32, "
                         f"float64, int32 or int64 (cast around the call, e.g. k(x.astype(np.float32)))")
    spec = CustomKernel(name, reference, c_source, cuda_source, shape_fn, arity, dt, int(flops_per_element))
    old = REGISTRY.get(name)
    if old is not None and not replace:
        if (old.c_source, old.cuda_source, old.arity, old.dtype) == (c_source, cuda_source, arity, dt):
            REGISTRY[name] = spec   # re-running a notebook cell: same sources, newest reference/shape_fn
            _register_op(spec)
            return spec
        raise ExplorerError(f"custom_kernel: a kernel named {name!r} is already registered with other sources; "
                            f"pass replace=True to redefine it, or use another name")
    if c_source is not None:
        check_c(spec)
    if cuda_source is not None and check_cuda:
        from .backends import nvcc
        if nvcc.available()[0]:
            check_cuda_source(spec)
    REGISTRY[name] = spec
    _register_op(spec)
    return spec


def _register_op(spec: CustomKernel) -> None:
    from . import ops as _ops

    def infer(types, attrs):
        for k, (shape, dt) in enumerate(types):
            if np.dtype(dt) != spec.dtype:
                raise DTypeError(f"custom kernel {spec.name}: input {k} is {np.dtype(dt)} but the kernel was "
                                 f"registered for {spec.dtype}; cast it with .astype(np.{spec.dtype})")
        return spec.out_shape([t[0] for t in types]), spec.dtype

    _ops.register(_ops.OpDef(spec.name, "opaque", spec.arity, infer, spec.run_reference, spec.flops_per_element,
                             None, (), f"{OPAQUE_REASON}: user code the compiler cannot see into", custom=spec))


def custom_of(op: str) -> CustomKernel | None:
    """The CustomKernel behind op name `op`, or None for a built-in op."""
    from .ops import OPS
    d = OPS.get(op)
    return getattr(d, "custom", None) if d is not None else None


# ----------------------------------------------------------------------------- source checks
_C_CHECK_HEAD = "#include <math.h>\n#include <stdbool.h>\n#include <stdint.h>\n#include <string.h>\n"
_CUDA_CHECK_HEAD = "#include <cuda_fp16.h>\n"
_CHECKED: dict[str, None] = {}


def _probe_call(spec: CustomKernel, lang: str) -> str:
    t = spec.ctype if lang == "c" else spec.cuda_type
    args = [f"(const {t} *)0" for _ in range(spec.arity)] + [f"({t} *)0"]
    if lang == "c":
        return (f'#line 1 "explorer check of {spec.name}"\n'
                f"void ke_probe_{spec.name}(void) {{ static const int64_t d[1] = {{0}}; "
                f"{spec.name}((int64_t)0, d, {', '.join(args)}); }}\n")
    return (f'#line 1 "explorer check of {spec.name}"\n'
            f'extern "C" __global__ void ke_probe_{spec.name}(void) {{ const long long d[1] = {{0}}; '
            f"{spec.name}(0LL, d, {', '.join(args)}); }}\n")


def _user_error(spec: CustomKernel, lang: str, log: str) -> CompileError:
    """CompileError naming the user's line: the source is compiled under `#line 1 "<name>.<ext>"`."""
    fname = f"{spec.name}.{'c' if lang == 'c' else 'cu'}"
    src = spec.c_source if lang == "c" else spec.cuda_source
    lines = log.splitlines()
    user = [l for l in lines if fname in l and re.search(r"\berror\b", l)]
    probe = [l for l in lines if "explorer check of" in l and re.search(r"\berror\b", l)]
    what = "C" if lang == "c" else "CUDA"
    conv = (f"void {spec.name}(int64_t n, const int64_t *dims, {', '.join(['const ' + spec.ctype + ' *in'] * spec.arity)}, "
            f"{spec.ctype} *out)" if lang == "c" else
            f"__device__ void {spec.name}(long long n, const long long *dims, "
            f"{', '.join(['const ' + spec.cuda_type + ' *in'] * spec.arity)}, {spec.cuda_type} *out)")
    if user:
        m = re.search(re.escape(fname) + r"(?::(\d+):(?:\d+:)?|\((\d+)\):)\s*(?:fatal )?error:?\s*(.*)", user[0])
        line = int(m.group(1) or m.group(2)) if m else None
        msg = m.group(3).strip() if m else user[0].strip()
        text = (src or "").splitlines()
        shown = f": `{text[line - 1].strip()[:120]}`" if line and 0 < line <= len(text) else ""
        return CompileError(f"custom kernel {spec.name}: {what} compiler error at line {line} of your "
                            f"{'c_source' if lang == 'c' else 'cuda_source'}{shown}\n  {msg}", log=log, line=line)
    if probe:
        msg = re.sub(r"^.*?error:?\s*", "", probe[0]).strip()
        return CompileError(f"custom kernel {spec.name}: your {what} source does not define the function the "
                            f"calling convention needs ({msg}); it must be\n  {conv}", log=log)
    first = next((l for l in lines if "error" in l), lines[0] if lines else "unknown error")
    return CompileError(f"custom kernel {spec.name}: {what} compiler failed: {first.strip()}", log=log)


def check_c(spec: CustomKernel) -> None:
    """Compile the C source (with a call in the calling convention) with the system compiler; CompileError
    names the user's line. BackendUnavailable-free: without a C compiler the check is skipped."""
    from .backends import cpu
    ok, _ = cpu.available()
    if not ok:
        return
    src = _C_CHECK_HEAD + f'#line 1 "{spec.name}.c"\n' + spec.c_source + "\n" + _probe_call(spec, "c")
    key = hashlib.sha256(("c\0" + src).encode()).hexdigest()
    if key in _CHECKED:
        return
    cmd = cpu.probe()["cmd"]
    with tempfile.TemporaryDirectory(prefix="ke-custom-") as d:
        path = os.path.join(d, "check.c")
        with open(path, "w") as f:
            f.write(src)
        r = subprocess.run([*cmd, "-c", "-O0", "-fPIC", "-Werror=implicit-function-declaration",
                            "-Werror=incompatible-pointer-types", "-Werror=int-conversion", path, "-o",
                            os.path.join(d, "check.o")], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise _user_error(spec, "c", (r.stderr or r.stdout).replace(path, "check.c"))
    _CHECKED[key] = None


def check_cuda_source(spec: CustomKernel, arch: str = "sm_80") -> str:
    """nvcc --ptx the CUDA source with a call in the calling convention; returns the PTX."""
    from .backends import nvcc
    src = _CUDA_CHECK_HEAD + f'#line 1 "{spec.name}.cu"\n' + spec.cuda_source + "\n" + _probe_call(spec, "cuda")
    path = nvcc.require_nvcc()
    with tempfile.TemporaryDirectory(prefix="ke-custom-") as d:
        p = os.path.join(d, "check.cu")
        with open(p, "w") as f:
            f.write(src)
        r = subprocess.run([path, "--ptx", f"-arch={arch}", p, "-o", os.path.join(d, "check.ptx")],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise _user_error(spec, "cuda", (r.stderr or "") + (r.stdout or ""))
        with open(os.path.join(d, "check.ptx")) as f:
            return f.read()


# ----------------------------------------------------------------------------- compile-time check
def verify(graph, examples: Sequence[np.ndarray], target: "str | Target") -> list[str]:
    """Run every custom node's target code on the values it gets from `examples` and compare it with its
    reference; raise VerificationError on a mismatch. Returns one line per kernel checked.

    cpu: the C source is built alone and run; sim/reference run the reference itself (nothing to check);
    cuda: the CUDA source was nvcc-checked at registration (no GPU run here)."""
    nodes = [n for n in graph.nodes if custom_of(n.op) is not None]
    if not nodes or get_target(target).language != "c":   # only the C source is run here
        return []
    from .interpreter import node_values
    from .tolerance import default_rtol
    env = node_values(graph, examples)
    out = []
    for n in nodes:
        spec = custom_of(n.op)
        ins = [np.ascontiguousarray(env[id(i)], dtype=spec.dtype) for i in n.inputs]
        want = env[id(n)]
        got = run_c(spec, ins, n.shape)
        tol = default_rtol(spec.dtype)
        if not np.allclose(got, want, rtol=tol, atol=tol, equal_nan=True):
            err = float(np.nanmax(np.abs(got.astype(np.float64) - want.astype(np.float64))))
            bad = int(np.argmax(np.abs(got.astype(np.float64) - want.astype(np.float64)).reshape(-1)))
            raise VerificationError(f"custom kernel {spec.name}: its C source disagrees with its reference on the "
                                    f"example inputs (max abs error {err:.3g}, first at flat index {bad}: C gave "
                                    f"{got.reshape(-1)[bad]!r}, reference {want.reshape(-1)[bad]!r})")
        out.append(f"{spec.name}: C output equals the reference on the example inputs (rtol {tol:g})")
    return out


def run_c(spec: CustomKernel, inputs: Sequence[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
    """Build the C source alone (cached) and run it once on `inputs`."""
    import ctypes
    from .backends import cpu
    dims = spec.dims([a.shape for a in inputs], tuple(out_shape))
    n = int(np.prod(out_shape, dtype=np.int64))
    args = [f"(const {spec.ctype} *)in{k}" for k in range(len(inputs))]
    src = (_C_CHECK_HEAD + spec.c_source + "\n" +
           f"void ke_run_{spec.name}({', '.join([f'const void *in{k}' for k in range(len(inputs))] + ['void *out'])})"
           " {\n" + "\n".join(spec.c_call(dims, n, args, f"({spec.ctype} *)out")) + "\n}\n")
    so = cpu.compile_source(src)
    fn = getattr(ctypes.CDLL(str(so)), f"ke_run_{spec.name}")
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * (len(inputs) + 1)
    out = np.zeros(out_shape, spec.dtype)
    fn(*[a.ctypes.data for a in inputs], out.ctypes.data)
    return out


__all__ = ["custom_kernel", "CustomKernel", "custom_of", "verify", "OPAQUE_REASON", "CUDA_BLOCK"]
