"""ptxas resources of the fused CUDA attention kernel (no GPU needed, only nvcc): registers, spill bytes, stack.

    PYTHONPATH=$PWD python benchmarks/attention_registers.py        # B1 H8 S1024, D 64/96/128, mask or not

Prints one line per (D, mask, arch). See docs/GPU.md (fused attention at large head dims) for the measured table.
"""
from __future__ import annotations

import numpy as np

import explorer
from explorer.backends import nvcc


def attention(q, k, v, mask=None):
    s = q @ k.transpose(0, 1, 3, 2) * np.float32(1.0 / np.sqrt(q.shape[-1]))
    if mask is not None:
        s = s + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def main() -> None:
    ok, why = nvcc.available()
    if not ok:
        print(why)
        return
    S = 1024
    causal = np.triu(np.full((S, S), -np.inf, np.float32), 1)
    for d in (64, 96, 128):
        q = np.ones((1, 8, S, d), np.float32)
        for masked in (False, True):
            args = (q, q, q, causal) if masked else (q, q, q)
            fn = (lambda q, k, v, m: attention(q, k, v, m)) if masked else (lambda q, k, v: attention(q, k, v))
            c = explorer.compile(fn, *args, target="cuda")
            for arch in ("sm_80", "sm_90"):
                r = nvcc.resource_report(c.codegen, arch=arch)["flash_attention"]
                print(f"D={d} mask={masked} {arch}: registers {r['registers']}, spill stores {r['spill_stores']} B, "
                      f"spill loads {r['spill_loads']} B, stack {r['stack_bytes']} B, shared {r['shared_bytes']} B",
                      flush=True)


if __name__ == "__main__":
    main()
