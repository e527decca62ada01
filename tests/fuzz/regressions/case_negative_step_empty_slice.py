"""Found by the fuzzer: reference wrong:shape: output 0: shape (1, 1, 1, 1, 2, 2), NumPy (0, 1, 1, 1, 2, 2).
A negative-step slice whose start lies before the first element (x[-2::-1] on a size-1 axis,
x[-5:-7:-1] on size 3) selects nothing; the reference interpreter turned range()'s start -1 into
Python's "last element" and returned the whole reversed axis. Fixed with ops.range_slice.
"""
import numpy as np
from explorer import nn


def f(a0, a1):
    v0 = a0[-2::-1]
    v1 = a1[-5:-7:-1] * 2
    v2 = a1[::-1] + 1
    return (v0, v1, v2)


INPUTS = [InputSpec('a0', (1, 2, 2), 'int32', 'normal', 0), InputSpec('a1', (3,), 'float32', 'normal', 1)]
KNOBS = {}
VARIANT_TARGET = 'sim'
TAGS = ['slice:int32', 'slice:float32']
