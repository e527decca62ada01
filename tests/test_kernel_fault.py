"""Hand-edited C runs first in a sandboxed child process: a crash, a hang or a write outside the
buffers becomes a KernelFault instead of killing the Python process (the Jupyter kernel)."""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer.backends import cpu

pytestmark = pytest.mark.skipif(not cpu.available()[0], reason="no C compiler")

X = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def compiled():
    return explorer.compile(lambda x: np.tanh(x) * 2, X, target="cpu", verbose=False)


def edit(c, old: str, new: str) -> str:
    src = c.kernels[0].source
    assert old in src, src
    return src.replace(old, new, 1)


def test_unchanged_source_passes_the_trial(compiled):
    c2 = compiled.with_kernel_source(0, compiled.kernels[0].source)
    np.testing.assert_allclose(c2(X), np.tanh(X) * 2, rtol=1e-5)


@pytest.mark.parametrize("old,new,phrase", [
    ("out0[", "out0[100000000 + ", "crashed with SIGSEGV in fused_tanh_mul"),
    ("out0[", "out0[8 + ", "wrote past the end of buffer out0"),
    ("out0[", "out0[-4 + ", "wrote before the start of buffer out0"),
])
def test_out_of_bounds_edit_is_a_kernel_fault(compiled, old, new, phrase):
    with pytest.raises(explorer.KernelFault, match=phrase) as info:
        compiled.with_kernel_source(0, edit(compiled, old, new))
    assert "edited kernel 0" in str(info.value)


def test_write_into_an_input_is_a_kernel_fault(compiled):
    src = edit(compiled, "out0[n] =", "x[n] = 0.0f; out0[n] =").replace("const float* restrict x", "float* restrict x")
    before = X.copy()
    with pytest.raises(explorer.KernelFault, match="wrote into its input x"):
        compiled.with_kernel_source(0, src)
    np.testing.assert_array_equal(X, before)   # the user's array was never handed to the bad kernel


def test_endless_loop_times_out(compiled, monkeypatch):
    monkeypatch.setattr(cpu, "TRIAL_TIMEOUT_S", 2.0)
    with pytest.raises(explorer.KernelFault, match="did not finish within 2 s"):
        compiled.with_kernel_source(0, edit(compiled, "++n", "n += 0"))
