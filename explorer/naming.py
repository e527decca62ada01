"""naming: identifiers and DOT strings made from user text (a leaf module: every IR's printer uses it).

Any name that reaches generated C/CUDA source or a graphviz drawing passes through here, so
user text can never break the syntax around it.

>>> c_identifier("my-fn!"), c_identifier("2d"), c_identifier("float")
('my_fn_', 'v_2d', 'float_')
>>> print(dot_str('say "hi"'))
"say \\"hi\\""
"""
from __future__ import annotations

import re

_IDENT = re.compile(r"[^A-Za-z0-9_]")


def c_identifier(name: str, prefix: str = "v") -> str:
    """Turn any user text into a valid C identifier (`my-fn!` → `my_fn_`); never empty, never a keyword."""
    s = _IDENT.sub("_", str(name))
    if not s or s[0].isdigit():
        s = f"{prefix}_{s}"
    if s in C_KEYWORDS:
        s = f"{s}_"
    return s[:64]


# C, CUDA and C++ words a generated identifier must not be (c_identifier appends '_' to them)
C_KEYWORDS = frozenset("""auto break case char const continue default do double else enum extern float for goto if
inline int long register restrict return short signed sizeof static struct switch typedef union unsigned void
volatile while bool true false half float4 float2 int4 dim3 blockIdx threadIdx blockDim gridDim warpSize
__global__ __device__ __shared__ new delete class template this namespace using operator private public""".split())


def dot_id(name: str) -> str:
    """A graphviz node/graph id from any name (a C identifier, prefix 'g')."""
    return c_identifier(name, "g")


def dot_str(s: str) -> str:
    """A DOT double-quoted string with quotes, backslashes (except \\n) and HTML-ish chars made safe."""
    s = str(s).replace("\\", "\\\\").replace("\\\\n", "\\n").replace('"', '\\"')
    return f'"{s}"'
