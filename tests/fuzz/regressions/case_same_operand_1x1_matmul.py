"""Found by the fuzzer (N5): x[None] @ np.swapaxes(x[None], -1, -2) on a (1, 1) x: both matmul operand loads fold
to the same a0[0, 0], and staging its second read (cache_read(a0#1)) failed with "the accumulation does not read a0#1".
"""
import numpy as np
from explorer import nn


def f(a0):
    v0 = a0[None] @ np.swapaxes(a0[None], -1, -2)
    v1 = 2.0 + v0
    return (v1, v0)


INPUTS = [InputSpec('a0', (1, 1), 'float32', 'normal', 0)]
KNOBS = {}
VARIANT_TARGET = 'sim'
TAGS = ['add:float32', 'add:scalar,float32', 'dtype:float32', 'input:float32', 'matmul:float32']
