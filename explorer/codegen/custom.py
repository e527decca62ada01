"""Code for custom kernels (explorer.custom_kernel): the user's C or CUDA source, pasted once per
program, and a wrapper with the generated kernels' parameter convention (one pointer per buffer)
that calls it once per output element. codegen/c.py and codegen/cuda.py call these; the kernel's
CustomKernel travels in Kernel.meta["custom"], so nothing here imports the user-facing module
(explorer.custom, which re-exports these names).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import CompileError

CUDA_BLOCK = 256    # the CUDA launch of every custom kernel: 1-D blocks of this many threads
OPAQUE_REASON = "custom kernel: opaque"


def _header(kernel, name: str, lang: str) -> list[str]:
    from .c import comment_text   # c.py imports this module: loaded on first use
    spec = kernel.meta_dict()["custom"]
    head = [f"/* kernel {comment_text(name)}: custom kernel {spec.name} ({OPAQUE_REASON})"]
    for line in kernel.source_lines:
        head.append(f" * from: {comment_text(line)}")
    if lang == "cuda":
        head.append(f" * launch: grid ({_grid(kernel)}, 1, 1), block ({CUDA_BLOCK}, 1, 1), one call of "
                    f"{spec.name} per thread")
    head.append(" */")
    return head


def _n_out(kernel) -> int:
    return int(np.prod(kernel.output_buffers[0].shape, dtype=np.int64))


def _grid(kernel) -> int:
    return max(1, -(-_n_out(kernel) // CUDA_BLOCK))


def emit_c(kernel, name: str, param_names: Sequence[str], include_source: bool) -> str:
    """C for a custom Kernel: the user's source (first use in the program only) and a wrapper `name`
    with the generated kernels' parameter convention (one pointer per buffer)."""
    spec = kernel.meta_dict()["custom"]
    ins, outs = kernel.inputs, kernel.output_buffers
    pn = dict(zip((p.name for p in kernel.params), param_names))
    params = [f"{'' if p.name in kernel.outputs else 'const '}{spec.ctype}* restrict {pn[p.name]}" for p in kernel.params]
    dims = spec.dims([b.shape for b in ins], outs[0].shape)
    lines = _header(kernel, name, "c")
    if include_source:
        lines += [f"/* ---- user source of custom kernel {spec.name} (c_source) ---- */",
                  spec.c_source.strip("\n"), f"/* ---- end of {spec.name} ---- */"]
    lines.append(f"void {name}({', '.join(params)})")
    lines.append("{")
    for o in outs:
        lines += spec.c_call(dims, _n_out(kernel), [pn[b.name] for b in ins], pn[o.name])
    lines.append("}")
    return "\n".join(lines) + "\n"


def emit_cuda(kernel, name: str, param_names: Sequence[str], include_source: bool) -> tuple[str, dict]:
    """CUDA for a custom Kernel: the user's __device__ function and an extern "C" __global__ wrapper;
    returns (source, launch)."""
    spec = kernel.meta_dict()["custom"]
    ins, outs = kernel.inputs, kernel.output_buffers
    pn = dict(zip((p.name for p in kernel.params), param_names))
    params = [f"{'' if p.name in kernel.outputs else 'const '}{spec.cuda_type}* __restrict__ {pn[p.name]}"
              for p in kernel.params]
    dims = spec.dims([b.shape for b in ins], outs[0].shape)
    launch = {"grid": (_grid(kernel), 1, 1), "block": (CUDA_BLOCK, 1, 1), "shared_bytes": 0,
              "dynamic_shared_bytes": 0}
    lines = _header(kernel, name, "cuda")
    if include_source:
        lines += [f"/* ---- user source of custom kernel {spec.name} (cuda_source) ---- */",
                  spec.cuda_source.strip("\n"), f"/* ---- end of {spec.name} ---- */"]
    lines.append(f'extern "C" __global__ void __launch_bounds__({CUDA_BLOCK}) {name}({", ".join(params)}) {{')
    for o in outs:
        lines += spec.cuda_call(dims, _n_out(kernel), [pn[b.name] for b in ins], pn[o.name])
    lines.append("}")
    return "\n".join(lines) + "\n", launch


def missing_source(kernel, lang: str) -> CompileError:
    """The error for a custom kernel compiled for a language (`lang`: "c" or "cuda") it has no source for."""
    spec = kernel.meta_dict()["custom"]
    what, target = ("c_source", "cpu") if lang == "c" else ("cuda_source", "cuda or sim")
    return CompileError(f"custom kernel {spec.name} has no {what}, which target {target} needs; register it with "
                        f"{what}=... (or compile for another target)")
