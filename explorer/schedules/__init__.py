"""Default schedules, one module per schedule family (as TVM's topi schedules per target).

    cpu.py   C + OpenMP: chunks across threads, SIMD lanes, register-tiled matmul micro-kernels
    cuda.py  CUDA (also what the simulator runs): blocks and threads, shared-memory tiles, tensor cores

Each module's `default_schedule(compute, knobs)` gives a kernel's Schedule from its compute definition
and the (checked) knobs; a Target names its module (`Target.schedules`), and
`explorer.schedule.default_schedule(compute, target, knobs)` dispatches to it. The helpers below are
shared by both families.

>>> from explorer.schedule import Schedule
>>> s = Schedule()
>>> fuse_all(s, ["i0", "i1"], "n"), str(s)
('n', 'fuse(i0, i1) -> n')
"""
from __future__ import annotations

from typing import Sequence

from ..schedule import Schedule


def fuse_all(s: Schedule, names: list[str], name: str) -> str | None:
    """Fuse the axes `names` into one axis `name` (none: None; one: that axis, unchanged)."""
    if not names:
        return None
    if len(names) == 1:
        return names[0]
    return s.fuse(*names, name=name)


def c_extent(c, names: Sequence[str]) -> int:
    """The product of the extents of compute `c`'s axes named in `names`."""
    n = 1
    for a in c.axes:
        if a.name in names:
            n *= a.extent
    return n
