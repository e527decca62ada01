"""A progress bar that only appears for work that takes longer than a second.

`progress(items)` yields the items unchanged. Once the loop has run for more
than `min_seconds`, it starts a `tqdm.auto` bar (a widget in Jupyter, text in a
terminal) that picks up at the item already reached; quick loops, and machines
without tqdm, print nothing.

>>> from explorer.progress import progress
>>> [x * 2 for x in progress(range(3), desc="demo")]
[0, 2, 4]
"""
from __future__ import annotations

import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def _tqdm():
    try:
        from tqdm.auto import tqdm  # ipywidgets-aware in notebooks, plain text elsewhere
    except Exception:  # tqdm (or its notebook front end) missing: stay silent
        return None
    return tqdm


def tqdm_class():
    """tqdm.auto's tqdm (a widget in Jupyter, text in a terminal), or None when tqdm is missing.

    >>> tqdm_class() is None or callable(tqdm_class())
    True
    """
    return _tqdm()   # through _tqdm: the one seam tests replace


def progress(items: Iterable[T], total: int | None = None, desc: str = "", enabled: bool = True,
             min_seconds: float = 1.0) -> Iterator[T]:
    """Yield `items`; show a tqdm bar once the loop has taken more than `min_seconds`.

    >>> list(progress([1, 2], enabled=False))
    [1, 2]
    """
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    start = time.perf_counter()
    bar = None
    done = 0
    try:
        for item in items:
            yield item
            done += 1
            if bar is not None:
                bar.update(1)
            elif enabled and time.perf_counter() - start > min_seconds:
                tqdm = _tqdm()
                if tqdm is not None:
                    # Started late on purpose: short loops never flash a bar.
                    bar = tqdm(total=total, initial=done, desc=desc or None, leave=False)
                enabled = bar is not None
    finally:
        if bar is not None:
            bar.close()


__all__ = ["progress", "tqdm_class"]
