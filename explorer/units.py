"""Human-readable byte counts in binary units, one spelling for the fused graph's edges, the fusion
lesson and compare's chart axes. A leaf module (standard library only).

>>> fmt_bytes(512), fmt_bytes(3 << 20)
('512 B', '3.0 MiB')
"""
from __future__ import annotations


def fmt_bytes(b: float) -> str:
    """`b` bytes in B, KiB, MiB or GiB (one decimal above B).

    >>> fmt_bytes(1536)
    '1.5 KiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b} B"  # pragma: no cover


__all__ = ["fmt_bytes"]
