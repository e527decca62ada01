"""Compiled: the result of explorer.compile — snapshots, kernels, and a callable.

>>> import numpy as np, explorer
>>> c = explorer.compile(lambda a, b: a * b + 1, np.ones(4, np.float32), np.ones(4, np.float32), target="reference")
>>> c(np.arange(4, dtype=np.float32), np.full(4, 2, np.float32))
array([1., 3., 5., 7.], dtype=float32)
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .errors import ExplorerError, ShapeError, TraceError, DTypeError
from .snapshot import Options, Snapshot
from .target import Target, get_target


# Timing and summarize live in the timing module (one methodology for benchmark, compare, sweep, widgets);
# re-exported here, where callers have always imported them from.
from .measure import Timing, quartiles, summarize  # noqa: E402,F401  (re-exported: tests and benchmarks import them from here)
# the tolerances live in a leaf module too (compare, autotune and custom kernels use them); re-exported
from .tolerance import default_rtol, magnitude  # noqa: E402,F401  (re-exported: widgets/panels/source.py, tests)


class KernelIndexError(ExplorerError, IndexError):
    """c.kernels[i] with i out of range (an IndexError too, so iteration protocols keep working)."""


class KernelList(list):
    """The generated kernels; a bad index names the valid range."""

    def __getitem__(self, i):
        try:
            return super().__getitem__(i)
        except IndexError:
            n = len(self)
            raise KernelIndexError(f"kernel index {i} out of range: this compile has {n} kernel"
                                   f"{'' if n == 1 else 's'}" + (f" (0..{n - 1})" if n else
                                   " (it stopped before codegen; compile without stop_after=)")) from None
        except TypeError:
            raise ExplorerError(f"kernels are indexed by int (or slice), got {type(i).__name__} {i!r}") from None


def is_count(v: Any, minimum: int) -> bool:
    """v is an integer (not a bool) >= minimum: a valid repeat/warmup count."""
    return not isinstance(v, (bool, np.bool_)) and isinstance(v, (int, np.integer)) and v >= minimum


def _check_count(name: str, v: Any, minimum: int) -> int:
    if not is_count(v, minimum):
        raise ExplorerError(f"{name}={v!r}: must be an integer >= {minimum}")
    return int(v)


class Compiled:
    """A compiled function. `stages` is the list of Snapshots in pipeline order.

    >>> import numpy as np, explorer
    >>> x, w, b = np.ones((4, 8), np.float32), np.ones((8, 3), np.float32), np.zeros(3, np.float32)
    >>> c = explorer.compile(lambda x, w, b: np.maximum(x @ w + b, 0), x, w, b, target="sim")
    >>> print(" → ".join(c.stage_names))
    traced → simplified → fused → lowered → tiled → ...codegen
    >>> [k.name for k in c.kernels]
    ['fused_matmul_add_maximum']
    >>> c.run(x, w, b)[0][0]                      # always a list of outputs; c(x, w, b) returns the array
    array([8., 8., 8.], dtype=float32)
    >>> c.max_error()                             # vs the NumPy reference, on the example inputs
    0.0
    >>> c.reference(x, w, b)[0][0]                # the NumPy interpreter's result for the traced graph
    array([8., 8., 8.], dtype=float32)
    >>> c.options.target, c.options.fuse          # every knob of the compile (pipeline.Options)
    ('sim', True)
    """

    def __init__(self, fn: Callable, examples: list[np.ndarray], stages: list[Snapshot], options: Options,
                 kernel_overrides: dict[int, str] | None = None):
        self.fn = fn
        self.name = getattr(fn, "__name__", "fn")
        self.examples = examples
        self.stages = stages
        self.options = options
        self.target = options.target                                # its name (public, as given)
        self.target_info: Target = get_target(options.target)       # what the code paths below read
        self.kernel_overrides = dict(kernel_overrides or {})
        self._executable = None
        self._fast_call: Callable | None = None

    # -- snapshots ----------------------------------------------------------------
    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def stage(self, name: str) -> Snapshot:
        """The Snapshot (IR, text(), dot(), stats) of stage `name`.

        >>> import numpy as np, explorer
        >>> c = explorer.compile(lambda a: np.exp(a) + 1, np.ones(8, np.float32), target="sim", stop_after="fused")
        >>> s = c.stage("fused")
        >>> s.name, s.stats["kernels"], s.stats["intermediates"], s.stats["wall_ms"] > 0
        ('fused', 1, 0, True)
        >>> print(s.text())
        fused lambda: 1 kernel (2 ops), 0 intermediates in global memory
          kernel g0 fused_exp_add [elementwise]  lines: ...
            reads: a   writes: %3 (returned)
            %1: f32[8] = exp(a)
            %3: f32[8] = add(%1, %2)
          boundaries:
            %1 → %3  fused: elementwise — add reads %1 (exp) element by element, so the value stays in registers
        >>> s.dot().splitlines()[0]
        'digraph lambda {'
        """
        for s in self.stages:
            if s.name == name:
                return s
        raise ExplorerError(f"no stage {name!r} in this compile; stages are {', '.join(self.stage_names)}")

    @property
    def graph(self):
        return self.stage("simplified").ir if "simplified" in self.stage_names else self.stage("traced").ir

    @property
    def program(self):
        """The final loop-IR Program, what the backends run: the `vectorized` stage's (the `tiled` one's
        when the compile stopped before it)."""
        return self.stage("vectorized" if "vectorized" in self.stage_names else "tiled").ir

    @property
    def codegen(self):
        return self.stage("codegen").ir

    @property
    def kernels(self) -> list:
        """Generated kernels (name, language, source, launch, resources) in launch order."""
        if "codegen" not in self.stage_names:
            return KernelList(())
        return KernelList(self.codegen.kernels)

    def text(self) -> str:
        return "\n\n".join(f"== {s.name} ==\n{s.text()}" for s in self.stages)

    def __repr__(self) -> str:
        return f"<Compiled {self.name} target={self.target} stages={self.stage_names} kernels={len(self.kernels)}>"

    # -- provenance / fusion ---------------------------------------------------------
    def explain_fusion(self, a: str | None = None, b: str | None = None):
        """Why two adjacent ops are (not) in one kernel, and which source lines each kernel holds.

        With no arguments returns the whole Explanation (printable); with two node names
        ('%3', '%5') returns the one-line reason for that edge.

        >>> import numpy as np, explorer
        >>> x, w = np.ones((4, 8), np.float32), np.ones((8, 3), np.float32)
        >>> c = explorer.compile(lambda x, w: np.maximum(x @ w, 0), x, w, target="reference")
        >>> print(c.explain_fusion())             # under each kernel: its source lines (here: the doctest's)
        fusion of lambda: 1 kernel
        kernel g0 fused_matmul_maximum [contraction]: %2 matmul, %4 maximum
        ...
        boundaries:
          %2 → %4  fused: epilogue — maximum is an elementwise consumer of matmul %2 ...
        >>> c.explain_fusion("%2", "%4")
        'fused: epilogue — maximum is an elementwise consumer of matmul %2 ...'
        """
        return self.stage("fused").ir.explain(a, b)

    # -- running ------------------------------------------------------------------------
    def check_args(self, args: Sequence[Any]) -> list[np.ndarray]:
        if len(args) != len(self.examples):
            raise TraceError(f"{self.name} was compiled for {len(self.examples)} inputs but was called with {len(args)}; "
                             f"pass arrays shaped like " + ", ".join(f"{e.dtype}{list(e.shape)}" for e in self.examples))
        out = []
        from .tracing import Tensor, array_subclass_problem
        for k, (a, e) in enumerate(zip(args, self.examples)):
            if isinstance(a, Tensor):
                raise TraceError(f"{self.name}: input {k} is a traced value; a Compiled function runs on concrete "
                                 f"arrays and cannot be called inside explorer.trace/compile (call the Python "
                                 f"function there instead)")
            if isinstance(a, np.ma.MaskedArray):
                raise TraceError(f"{self.name}: input {k} is {array_subclass_problem(a)}")
            if a is None or isinstance(a, (str, bytes, dict, set)):
                raise TraceError(f"{self.name}: input {k} is {'None' if a is None else 'a ' + type(a).__name__}, "
                                 f"not an array; pass arrays shaped like {e.dtype}{list(e.shape)}")
            try:
                arr = np.asarray(a)
            except (ValueError, TypeError) as err:
                raise TraceError(f"{self.name}: input {k} ({type(a).__name__}) cannot be converted to an array "
                                 f"({err}); pass an np.ndarray of shape {e.shape}") from None
            if arr.shape != e.shape:
                raise ShapeError(f"{self.name}: input {k} has shape {arr.shape} but the function was compiled for "
                                 f"{e.shape}; recompile with explorer.compile(fn, *new_examples) for new shapes")
            if arr.dtype != e.dtype:
                if np.can_cast(arr.dtype, e.dtype, casting="same_kind"):
                    arr = arr.astype(e.dtype)
                else:
                    raise DTypeError(f"{self.name}: input {k} has dtype {arr.dtype} but the function was compiled for "
                                     f"{e.dtype}; cast it with .astype(np.{e.dtype})")
            out.append(np.require(arr, requirements='C'))  # keeps 0-d arrays 0-d
        self._check_indices(out)
        return out

    def _check_indices(self, inputs: list[np.ndarray]) -> None:
        """Gathers (x[ids]) with run-time indices: an index outside its axis raises IndexOutOfRangeError here,
        before any kernel runs, on every target (the kernels also clamp, so nothing reads stray memory)."""
        checks = getattr(self, "_index_checks", None)
        if checks is None:
            from .indexing import index_checks
            graphs = [s.ir for s in self.stages if s.name in ("traced", "simplified")]
            checks = self._index_checks = index_checks(graphs[0]) if graphs else []
        if checks:
            from .indexing import check_indices
            check_indices(checks, inputs)

    def executable(self):
        if self._executable is None:
            # the Target names its backend and builds through it: Compiled imports no backend
            self._executable = get_target(self.target).build(self)
        return self._executable

    @property
    def thread_policy(self) -> list:
        """CPU target: one threads.Decision per kernel (how many OpenMP threads a call may use, and
        why), e.g. 'serial: ~12 µs of work, below the 200 µs parallel threshold'. [] elsewhere.

        >>> import numpy as np, explorer
        >>> c = explorer.compile(lambda x: np.exp(x) * 2, np.ones(64, np.float32), target="cpu")
        >>> [str(d) for d in c.thread_policy]
        ['fused_exp_mul: serial: ...']
        """
        if self.target_info.language != "c" or "codegen" not in self.stage_names:   # OpenMP: the C backend
            return []
        return list(getattr(self.executable(), "thread_policy", []))

    def run(self, *args: Any) -> list[np.ndarray]:
        """Run on the compile's target; always returns a list of outputs.

        >>> import numpy as np, explorer
        >>> c = explorer.compile(lambda a: (a + 1, a * 2), np.ones(3, np.float32), target="sim")
        >>> c.run(np.arange(3, dtype=np.float32))
        [array([1., 2., 3.], dtype=float32), array([0., 2., 4.], dtype=float32)]
        """
        inputs = self.backend_inputs(self.check_args(args))
        try:
            return self.executable().run(inputs)
        except MemoryError as e:
            raise ExplorerError(f"{self.name}: running on target {self.target!r} needs more memory than is "
                                f"available ({e}); use smaller shapes") from None

    def backend_inputs(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The user's arrays followed by the program's non-scalar constants (loop-IR backends)."""
        if self.target_info.interprets_graph or "tiled" not in self.stage_names:
            return inputs
        return inputs + [data for _, data in self.program.constants]

    def __call__(self, *args: Any, **kwargs: Any):
        fast = self._fast_call
        if fast is not None and not kwargs:
            outs = fast(args)
            if outs is not None:
                return outs[0] if len(outs) == 1 else tuple(outs)
        if kwargs:
            raise TraceError(f"{self.name}: pass the inputs positionally, in parameter order "
                             f"(got keyword argument(s) {', '.join(kwargs)})")
        outs = self.run(*args)
        if fast is None:
            self._fast_call = self._make_fast_call()
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _make_fast_call(self) -> Callable:
        """The call path for arrays exactly like the examples (ndarray, same shape and dtype,
        C-contiguous): check_args would return them unchanged, so only those checks run here;
        anything else returns None and takes the full path (conversions, clear errors)."""
        exe = self._executable
        if not getattr(exe, "runs_checked", False):   # an executable without run(inputs, checked=True)
            return lambda args: None
        specs = [(e.shape, e.dtype) for e in self.examples]
        consts = [data for _, data in self.program.constants] if not self.target_info.interprets_graph else []
        consts = [np.ascontiguousarray(c) for c in consts]
        if hasattr(exe, "fast_call"):   # the executable's own closure: the same checks, fewer layers
            return exe.fast_call(specs, consts)
        n, run, ndarray = len(specs), exe.run, np.ndarray

        def fast(args: tuple) -> list[np.ndarray] | None:
            if len(args) != n:
                return None
            for a, (shape, dt) in zip(args, specs):
                if type(a) is not ndarray or a.dtype != dt or a.shape != shape or not a.flags.c_contiguous:
                    return None
            try:
                return run([*args, *consts], checked=True)
            except MemoryError:
                return None    # the full path says what went wrong
        return fast

    def reference(self, *args: Any) -> list[np.ndarray]:
        """The NumPy interpreter's result for the traced graph (the ground truth)."""
        from .interpreter import run_graph
        return run_graph(self.stage("traced").ir, self.check_args(args))

    def benchmark(self, *args: Any, warmup: int = 3, repeat: int | None = None, include_copies: bool = False,
                  budget_s: float | None = None, blas_threads: "str | int | None" = "auto") -> Timing:
        """Time one call → Timing (median, IQR, min, n, and an `unstable` flag with its reason).

        explorer.measure's methodology: `warmup` untimed calls, then repeats until the median is
        stable or `budget_s` seconds (default measure.DEFAULT_BUDGET_S) are spent; `repeat=N` fixes
        the count. CUDA uses events and excludes host↔device copies unless `include_copies`.
        blas_threads (explorer.blas): "auto" runs NumPy's BLAS on 1 thread while measuring on a
        machine with <= 2 usable cores (its idle threads spin on the core the kernel needs), None
        leaves it alone, an int is that limit; `Timing.blas` records what was done.

        >>> import numpy as np, explorer
        >>> c = explorer.compile(lambda x: np.exp(x) * 2, np.ones(1024, np.float32), target="cpu")
        >>> t = c.benchmark(repeat=5)          # default: repeats until the median is stable
        >>> t.repeat, t.source, t.median_ms > 0
        (5, 'wall', True)
        >>> print(t)                           # doctest: +SKIP
        0.0021 ms (IQR 0.0020–0.0023, min 0.0019, n=5, wall)
        """
        from . import blas, measure
        warmup = _check_count("warmup", warmup, 0)
        blas_threads = blas.check_blas_threads(blas_threads)
        if repeat is not None:
            repeat = _check_count("repeat", repeat, 1)
        if budget_s is not None and (isinstance(budget_s, bool) or not isinstance(budget_s, (int, float))
                                     or not budget_s > 0):
            raise ExplorerError(f"budget_s={budget_s!r}: must be a number of seconds > 0")
        sample = self.sampler(*args, include_copies=include_copies)
        with blas.during_measurement(blas_threads) as setting:
            t = measure.measure(sample, warmup=warmup, repeat=repeat, budget_s=budget_s)
        t.blas = setting
        return t

    def sampler(self, *args: Any, include_copies: bool = False):
        """One timed call of this function on `args` (default: the examples), for explorer.measure:
        the backend's own sampler (CUDA events, per-kernel times) where it has one, else wall time.

        >>> import numpy as np, explorer
        >>> from explorer import measure
        >>> f = lambda x: np.exp(x) * 2
        >>> x = np.ones(1024, np.float32)
        >>> c = explorer.compile(f, x, target="cpu")
        >>> ts = measure.interleaved({"fused": c.sampler(x), "numpy": lambda: f(x)}, repeat=5)
        >>> sorted(ts), ts["fused"].repeat
        (['fused', 'numpy'], 5)
        """
        if not isinstance(include_copies, (bool, np.bool_)):
            raise ExplorerError(f"include_copies={include_copies!r}: must be True or False")
        inputs = self.backend_inputs(self.check_args(args if args else self.examples))
        exe = self.executable()
        if hasattr(exe, "sampler"):
            return exe.sampler(inputs, include_copies=include_copies)
        return lambda: exe.run(inputs)

    # -- workbench ----------------------------------------------------------------------
    def with_kernel_source(self, index: int, source: str, check: bool = True, rtol: float | None = None) -> "Compiled":
        """A new Compiled whose kernel `index` runs hand-edited `source` (same name and parameters).

        The edited build runs on the example inputs and is checked against the NumPy reference
        with the dtype's relative tolerance (default_rtol, or `rtol`) and an absolute one of rtol
        times the largest magnitude among the inputs and the reference output: a correct edit
        that reorders arithmetic differs in the last bits of the *large* values involved, which
        shows as an absolute error on results that cancel to near zero;
        CompileError carries the compiler's message and line when it does not build. On the CPU the
        edited build first runs once in a separate process with canaries around every buffer: a crash,
        an endless loop (cpu.TRIAL_TIMEOUT_S) or a write outside the buffers or into an input raises
        KernelFault and leaves this process (a notebook's kernel) unharmed.

        >>> import numpy as np, explorer
        >>> c = explorer.compile(lambda x: x * 2, np.ones(8, np.float32), target="cpu")
        >>> print(c.kernels[0].source.splitlines()[-3])
            out0[i0] = x[i0] * 2.0f;
        >>> c2 = c.with_kernel_source(0, c.kernels[0].source.replace("x[i0] * 2.0f", "x[i0] + x[i0]"))
        >>> c2(np.arange(3, 11, dtype=np.float32))[:3]
        array([ 6.,  8., 10.], dtype=float32)
        >>> c.with_kernel_source(0, c.kernels[0].source.replace("* 2.0f", "* 3.0f"))
        Traceback (most recent call last):
        ...
        explorer.errors.VerificationError: edited kernel 0 (mul_kernel) builds but output 0 differs from the NumPy reference ...
        """
        from .errors import VerificationError
        n = len(self.kernels)
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise ExplorerError(f"with_kernel_source: the kernel index must be an int, got {type(index).__name__} "
                                f"{index!r}")
        index = int(index)
        if not isinstance(source, str):
            raise ExplorerError(f"with_kernel_source: source must be a str of C/CUDA code, got "
                                f"{type(source).__name__}; start from c.kernels[{index}].source")
        if rtol is not None and (isinstance(rtol, bool) or not isinstance(rtol, (int, float, np.floating))
                                 or not rtol >= 0):
            raise ExplorerError(f"with_kernel_source: rtol={rtol!r} must be a number >= 0 (or None for the default)")
        if not isinstance(check, (bool, np.bool_)):
            raise ExplorerError(f"with_kernel_source: check={check!r} must be True or False")
        if not 0 <= index < n:
            raise ExplorerError(f"kernel index {index} out of range: this compile has {n} kernels (0..{n - 1})")
        if not self.target_info.builds_source:
            raise ExplorerError(f"with_kernel_source needs a target that compiles source (cpu or cuda), "
                                f"this compile's target is {self.target!r}; recompile with target='cpu'")
        overrides = {**self.kernel_overrides, index: source}
        new = Compiled(self.fn, self.examples, self.stages, self.options, overrides)
        exe = new.executable()  # builds now: CompileError surfaces here
        if hasattr(exe, "trial_run"):
            # edited C can crash, hang or scribble on memory: the CPU executable tries it in a child process first
            exe.trial_run(new.backend_inputs(new.check_args(list(self.examples))),
                          what=f"edited kernel {index} ({self.kernels[index].name})")
        if check:
            got = new.run(*self.examples)
            want = self.reference(*self.examples)
            for k, (g, w) in enumerate(zip(got, want)):
                tol = rtol if rtol is not None else default_rtol(w.dtype)
                atol = tol * magnitude(w, *self.examples)
                if g.shape != w.shape or not np.allclose(g, w, rtol=tol, atol=atol, equal_nan=True):
                    err = float(np.nanmax(np.abs(g.astype(np.float64) - w))) if g.shape == w.shape else float("nan")
                    raise VerificationError(f"edited kernel {index} ({self.kernels[index].name}) builds but output {k} "
                                            f"differs from the NumPy reference (max abs error {err:.3g}, allowed "
                                            f"{atol:.3g} + {tol:.3g} x |value|; pass rtol= to loosen)")
        return new

    def max_error(self, *args: Any) -> float:
        """Max abs difference between this target's outputs and the NumPy reference.

        >>> import numpy as np, explorer
        >>> x = np.linspace(-4, 4, 64, dtype=np.float32)
        >>> explorer.compile(lambda x: np.tanh(x), x, target="sim").max_error() < 1e-6
        True
        """
        args = args or tuple(self.examples)
        got = self.run(*args)
        want = self.reference(*args)
        return max(float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)), initial=0.0))
                   for g, w in zip(got, want))

    def to_html(self, **options: Any) -> str:
        """One self-contained HTML page of this compile: report.to_html(self, **options) does the work
        (options: charts, resources, graphs, repeat), reading only this object's public attributes.

        >>> open("report.html", "w").write(c.to_html(charts=False))    # doctest: +SKIP
        """
        from .report import to_html
        return to_html(self, **options)

    @property
    def built_executable(self):
        """The executable if a run or benchmark already built it, else None (never builds one)."""
        return self._executable

