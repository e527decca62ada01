"""Found by the fuzzer: nvcc error:CompileError ... no instance of function template "ke_op_min::operator()"
matches the argument list: the CUDA warp-shuffle allreduce had no bool overload (np.min/np.max of a bool
array). Fixed with ke_shfl_xor/ke_shfl_down in the CUDA prelude.
"""
import numpy as np
from explorer import nn


def f(a0, a1):
    v0 = np.logical_not(a0)
    v1 = np.min(v0)
    v2 = np.max(a1 > 0, axis=-1)
    return (v1, v2)


INPUTS = [InputSpec('a0', (1,), 'float32', 'normal', 0), InputSpec('a1', (3, 40), 'float32', 'normal', 1)]
KNOBS = {}
VARIANT_TARGET = 'sim'
TAGS = ['min:bool', 'max:bool']
