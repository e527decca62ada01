"""nvcc as a compile-only checker: does generated CUDA build, and what does it cost in registers/spills/smem?

Needs no GPU, only the CUDA toolkit's `nvcc` (on PATH, or $CUDA_HOME/bin, or /usr/local/cuda/bin).

>>> import numpy as np, explorer
>>> from explorer.backends.nvcc import available, check, resource_report
>>> ok, why = available()                                   # (False, 'nvcc not found ...') without it
>>> c = explorer.compile(lambda a: np.maximum(a + 1, 0), np.ones(1024, np.float32), target="sim")
>>> ptx = check(c.codegen.source(), arch="sm_80")
>>> ".entry fused_add_maximum" in ptx
True
>>> r = resource_report(c.codegen)["fused_add_maximum"]
>>> r["arch"], r["registers"] > 0, r["spill_stores"]
('sm_80', True, 0)
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from typing import Any

from ..errors import BackendUnavailable, CompileError
from ..target import get_target

__all__ = ["available", "find_nvcc", "check", "resource_report", "parse_ptxas_info", "compile_error"]

_REPORT_CACHE: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
_ARCH = re.compile(r"^(sm|compute)_\d+[a-z]?$")


def find_nvcc() -> str | None:
    """Path of nvcc: PATH first, then $CUDA_HOME/bin, $CUDA_PATH/bin, /usr/local/cuda/bin."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            cand = os.path.join(root, "bin", "nvcc")
            if os.path.isfile(cand) and os.access(cand, os.X_OK):
                return cand
    return None


def available() -> tuple[bool, str]:
    """(True, path) when nvcc is usable, else (False, one-line reason with the fix)."""
    path = find_nvcc()
    if path is None:
        return False, "nvcc not found on PATH or in $CUDA_HOME/bin; install the CUDA toolkit to check generated CUDA"
    return True, f"nvcc at {path}"


def require_nvcc() -> str:
    """nvcc's path; BackendUnavailable saying why when there is none."""
    path = find_nvcc()
    if path is None:
        raise BackendUnavailable(available()[1])
    return path


def _check_arch(arch: str) -> str:
    if not _ARCH.match(arch):
        raise CompileError(f"arch {arch!r} is not an nvcc architecture; use e.g. 'sm_80' (A100) or 'sm_90' (H100)")
    return arch


def _kernel_spans(source: str) -> list[tuple[int, str]]:
    """(first line, name) of every __global__ function, in order (1-based lines)."""
    spans = []
    for i, line in enumerate(source.splitlines(), 1):
        m = re.search(r"__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?([A-Za-z_]\w*)\s*\(", line)
        if m:
            spans.append((i, m.group(1)))
    return spans


def compile_error(log: str, source: str, what: str = "nvcc") -> CompileError:
    """A CompileError from a compiler log: its first error, the line, and the kernel that line is in."""
    lines = log.splitlines()
    first = next((ln for ln in lines if re.search(r"\berror\b", ln)), lines[0] if lines else "unknown error")
    m = re.search(r"\((\d+)\):\s*(?:error|catastrophic error)", first) or re.search(r":(\d+):(?:\d+:)?\s*error", first)
    line = int(m.group(1)) if m else None
    where = ""
    if line is not None:
        src_lines = source.splitlines()
        inside = [(start, name) for start, name in _kernel_spans(source) if start <= line]
        if inside:
            start, name = inside[-1]
            where = f" in kernel {name} (line {line - start + 1} of the kernel, line {line} of the source)"
        else:
            where = f" at line {line} of the source (outside any kernel: prelude)"
        if 0 < line <= len(src_lines):
            where += f": `{src_lines[line - 1].strip()[:120]}`"
    msg = re.sub(r"^.*?\(\d+\):\s*", "", first).strip()
    return CompileError(f"{what} failed{where}\n  {msg}\nFix the source (or the schedule that generated it) "
                        f"and compile again.", log=log, line=line)


def _run(args: list[str], source: str, out_name: str) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(prefix="ke-nvcc-") as tmp:
        src = os.path.join(tmp, "kernels.cu")
        out = os.path.join(tmp, out_name)
        with open(src, "w", encoding="utf-8") as f:
            f.write(source)
        try:
            proc = subprocess.run(args + ["-o", out, src], capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise CompileError("nvcc took more than 300 s; the generated source is probably too large "
                               "(reduce unrolling in the schedule)") from None
        log = (proc.stderr or "") + (proc.stdout or "")
        log = log.replace(src, "kernels.cu")
        if proc.returncode != 0:
            raise compile_error(log, source)
        body = ""
        if out_name.endswith(".ptx") and os.path.exists(out):
            with open(out, encoding="utf-8", errors="replace") as f:
                body = f.read()
        return body, log


# No a*b+c contraction (nvcc's default): fused elementwise results keep NumPy's two roundings;
# matmul accumulators call fmaf() explicitly. The same flag for checks and for builds (cuda.py).
FMAD_FLAG = "--fmad=false"


def check(source: str, arch: str = "sm_80", mode: str = "ptx") -> str:
    """Compile CUDA `source` with nvcc without running it.

    mode 'ptx' (`nvcc --ptx`, ~0.3 s) returns the PTX text; mode 'cubin' (`nvcc -cubin -Xptxas -v`)
    returns ptxas's resource log. Raises CompileError (first error, mapped to its kernel and line)
    or BackendUnavailable without nvcc.

    >>> check('extern "C" __global__ void k(float* y) { y[0] = 1.0f; }').count(".entry k")
    1
    """
    nvcc = require_nvcc()
    _check_arch(arch)
    if mode == "ptx":
        ptx, _ = _run([nvcc, "--ptx", FMAD_FLAG, f"-arch={arch}"], source, "kernels.ptx")
        return ptx
    if mode == "cubin":
        _, log = _run([nvcc, "-cubin", FMAD_FLAG, f"-arch={arch}", "-Xptxas", "-v"], source, "kernels.cubin")
        return log
    raise CompileError(f"nvcc check mode must be 'ptx' or 'cubin', got {mode!r}")


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_LMEM = re.compile(r"(\d+) bytes lmem")
_CMEM = re.compile(r"(\d+) bytes cmem\[0\]")
_BARS = re.compile(r"used (\d+) barriers")


def parse_ptxas_info(log: str, arch: str = "sm_80") -> dict[str, dict[str, Any]]:
    """Parse `ptxas -v` lines into {kernel: {registers, spill_stores, spill_loads, shared_bytes, local_bytes,
    stack_bytes, constant_bytes, barriers, arch}} (bytes are ints)."""
    out: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = m.group(1)
            out.setdefault(current, {"registers": 0, "spill_stores": 0, "spill_loads": 0, "shared_bytes": 0,
                                     "local_bytes": 0, "stack_bytes": 0, "constant_bytes": 0, "barriers": 0,
                                     "arch": m.group(2)})
            continue
        m = _PROPS.search(line)
        if m:
            current = m.group(1)
            out.setdefault(current, {"registers": 0, "spill_stores": 0, "spill_loads": 0, "shared_bytes": 0,
                                     "local_bytes": 0, "stack_bytes": 0, "constant_bytes": 0, "barriers": 0,
                                     "arch": arch})
            continue
        if current is None:
            continue
        rec = out[current]
        m = _FRAME.search(line)
        if m:
            rec["stack_bytes"], rec["spill_stores"], rec["spill_loads"] = map(int, m.groups())
            # local memory a thread uses = its stack frame (register arrays indexed dynamically, spills)
            rec["local_bytes"] = max(rec["local_bytes"], rec["stack_bytes"])
        m = _USED.search(line)
        if m:
            rec["registers"] = int(m.group(1))
            for rx, key in ((_SMEM, "shared_bytes"), (_CMEM, "constant_bytes"), (_BARS, "barriers")):
                mm = rx.search(line)
                if mm:
                    rec[key] = int(mm.group(1))
            mm = _LMEM.search(line)
            if mm:
                rec["local_bytes"] = max(rec["local_bytes"], int(mm.group(1)))
    return out


def resource_report(codegen: Any, arch: str = "sm_80") -> dict[str, dict[str, Any]]:
    """Registers, spills, shared/local memory per kernel from `nvcc -cubin -Xptxas -v` (cached per source).

    `codegen` is an explorer.codegen.Codegen (language 'cuda') or CUDA source text.

    >>> import numpy as np, explorer
    >>> c = explorer.compile(lambda a: np.exp(a) * 2, np.ones(1024, np.float32), target="sim")
    >>> resource_report(c.codegen)["fused_exp_mul"]["spill_stores"]
    0
    """
    source = codegen if isinstance(codegen, str) else codegen.source()
    cuda = get_target("cuda").language
    if not isinstance(codegen, str) and getattr(codegen, "language", cuda) != cuda:
        raise CompileError(f"resource_report needs CUDA source; this codegen is {codegen.language!r} "
                           f"(compile with target='cuda' or 'sim')")
    key = (hashlib.sha256(source.encode()).hexdigest(), arch)
    if key not in _REPORT_CACHE:
        log = check(source, arch=arch, mode="cubin")
        _REPORT_CACHE[key] = parse_ptxas_info(log, arch)
    return {k: dict(v) for k, v in _REPORT_CACHE[key].items()}
