"""Naming: how user text becomes an identifier in the IR, in DOT and in generated C/CUDA (a leaf module).

One policy for every pass and code generator, so no generated source contains unsanitized user text:

    c_identifier   any text -> a C identifier (`my-fn!` -> `my_fn_`), never empty, never a C/CUDA keyword
    unique         base, base_1, base_2, ... the first one not taken (parameters, kernels, buffers)
    param_name     a function parameter renamed when it is spelled like a generated name (out0, i0, expf)
    not_generated  an identifier moved out of the generators' own `ke_` namespace (and a reserved set)
    Names          one translation unit's collision-free C identifiers for buffers, variables, temporaries
    dot_id         a graphviz identifier
    dot_str        a DOT double-quoted string

>>> c_identifier("my-fn!"), c_identifier("2x"), c_identifier("int")
('my_fn_', 'v_2x', 'int_')
>>> taken = {"x"}; unique("x", taken), unique("x", taken), sorted(taken)
('x_1', 'x_2', ['x', 'x_1', 'x_2'])
"""
from __future__ import annotations

import re
from typing import Iterable

_NOT_IDENT = re.compile(r"[^A-Za-z0-9_]")

C_KEYWORDS = frozenset("""auto break case char const continue default do double else enum extern float for goto if
inline int long register restrict return short signed sizeof static struct switch typedef union unsigned void
volatile while bool true false half float4 float2 int4 dim3 blockIdx threadIdx blockDim gridDim warpSize
__global__ __device__ __shared__ new delete class template this namespace using operator private public""".split())

GENERATOR_PREFIX = "ke_"   # the code generators' own helpers (ke_load_f16, ke_t0, ...): never a user name

# Identifiers the lowering, tiling and code generators make up themselves: buffers (out0, t5, c3),
# loop variables (i0, r1, n, i_o, red_t, k_i, ...), accumulators (acc7, acc7_frag), the preludes'
# helpers (ke_*) and the C/CUDA math library. A parameter spelled like one of them would alias a
# generated buffer or be shadowed by a loop variable (wrong results or a compile error), so it is renamed.
GENERATED = re.compile(
    r"^(?:(?:out|t|c|i|r|b|acc|s)\d+|i|j|k|n|row|red|batch|blk|thr|oh|ow|oc|kh|kw|ic)(?:_(?:o|i|t|r|b|in|w|f|v|c|e|\d+))*$"
    r"|^\w+_(?:shared|frag|local|e)(?:_\d+)*$|^ke_\w*$|^__\w*$")
LIBRARY = frozenset("""exp expf exp2 exp2f expm1 expm1f log logf log2 log2f log1p log1pf sqrt sqrtf rsqrt rsqrtf
tanh tanhf erf erff fabs fabsf fmax fmaxf fmin fminf pow powf sin sinf cos cosf tan tanf floor floorf ceil ceilf
round roundf isnan isinf isfinite signbit copysign copysignf fma fmaf INFINITY NAN HUGE_VAL NULL main size_t
int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t memcpy memset printf abs min max assert exit
hexp hlog hsqrt htanh half2 wmma nvcuda omp_get_thread_num omp_get_num_threads std fmod fmodf _Float16 bool true
false""".split())


def c_identifier(name: str, prefix: str = "v") -> str:
    """Turn any user text into a valid C identifier (`my-fn!` → `my_fn_`); never empty, never a keyword.

    >>> c_identifier("a b"), c_identifier(""), c_identifier("9", "k")
    ('a_b', 'v_', 'k_9')
    """
    s = _NOT_IDENT.sub("_", str(name))
    if not s or s[0].isdigit():
        s = f"{prefix}_{s}"
    if s in C_KEYWORDS:
        s = f"{s}_"
    return s[:64]


def dot_id(name: str, prefix: str = "g") -> str:
    """A graphviz identifier for a graph or cluster name (a C identifier is one).

    >>> dot_id("my graph"), dot_id("0", "k")
    ('my_graph', 'k_0')
    """
    return c_identifier(name, prefix)


def unique(base: str, taken: set[str]) -> str:
    """`base`, else base_1, base_2, ...: the first name not in `taken`, which is added to it."""
    cand, i = base, 1
    while cand in taken:
        cand = f"{base}_{i}"
        i += 1
    taken.add(cand)
    return cand


def not_generated(ident: str, reserved: frozenset[str] = frozenset(), escape: str = "u_") -> str:
    """`ident` prefixed with `escape` when it is in `reserved` or in the generators' `ke_` namespace.

    >>> not_generated("ke_t0"), not_generated("x"), not_generated("main", frozenset({"main"}), "k_")
    ('u_ke_t0', 'x', 'k_main')
    """
    return f"{escape}{ident}" if ident in reserved or ident.startswith(GENERATOR_PREFIX) else ident


def param_name(name: str, taken: set[str]) -> str:
    """A C identifier for a function parameter that cannot collide with generated names.

    >>> t = set(); [param_name(n, t) for n in ("x", "out0", "i0", "expf", "x")]
    ['x', 'out0_', 'i0_', 'expf_', 'x_1']
    """
    base = c_identifier(name, "in")
    if GENERATED.match(base) or base in LIBRARY:
        base = base[:63] + "_"  # generated names never end in '_'
    return unique(base, taken)


class Names:
    """Sanitized, collision-free C identifiers for buffers, loop variables and temporaries of one source.

    `reserved` (a class attribute) lists names a user buffer or variable must not take (what kernels
    call); such a name, and one in the `ke_` namespace, gets the prefix `u_`.

    >>> names = Names({"x"})
    >>> names.get("buf", "x"), names.get("buf", "x"), names.get("var", "ke_n"), names.fresh("ke_t")
    ('x_1', 'x_1', 'u_ke_n', 'ke_t0')
    """

    reserved: frozenset[str] = frozenset()

    def __init__(self, taken: Iterable[str] = ()):
        self.map: dict[tuple[str, str], str] = {}
        self.used: set[str] = set(taken)

    def get(self, kind: str, name: str) -> str:
        """The identifier of IR name `name` of `kind` ('buf', 'var'): the same on every call."""
        key = (kind, name)
        if key not in self.map:
            self.map[key] = unique(not_generated(c_identifier(name, "v"), self.reserved), self.used)
        return self.map[key]

    def fresh(self, prefix: str) -> str:
        """A new temporary: prefix0, prefix1, ... the first one not used yet."""
        n = 0
        while f"{prefix}{n}" in self.used:
            n += 1
        self.used.add(f"{prefix}{n}")
        return f"{prefix}{n}"


__all__ = ["c_identifier", "dot_id", "unique", "not_generated", "param_name", "Names", "C_KEYWORDS",
           "GENERATOR_PREFIX", "GENERATED", "LIBRARY"]


def dot_str(s: str) -> str:
    """A DOT double-quoted string with quotes, backslashes (except \\n) and HTML-ish chars made safe.

    >>> print(dot_str('say "hi"'))
    "say \\"hi\\""
    """
    s = str(s).replace("\\", "\\\\").replace("\\\\n", "\\n").replace('"', '\\"')
    return f'"{s}"'
