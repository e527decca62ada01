"""Found by the fuzzer: np.var of 4900 squared int32 values in float64 differed from NumPy by 1.2e-12
(3.5e-14 relative) on cpu, a summation-order difference (NumPy's pairwise sum against the generated blocked
loop), not a wrong result: the checker's tolerance now scales `scale` by log2 of the largest array size.
"""
import numpy as np
from explorer import nn


def f(a0):
    v0 = np.square(a0)
    v1 = np.var(v0, axis=None, ddof=0)
    return (v1, v0)


INPUTS = [InputSpec('a0', (70, 70), 'int32', 'normal', 2213)]
KNOBS = {}
VARIANT_TARGET = 'sim'
TAGS = ['dtype:float64', 'dtype:int32', 'input:int32', 'square:int32', 'var_std:int32']
