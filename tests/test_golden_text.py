"""Golden text() of the essay's MLP (matmul + bias + relu) at the 'traced' and 'simplified' stages."""
from __future__ import annotations

import numpy as np

import explorer


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0)


def mlp_untidy(x, w, b):
    unused = np.exp(x)
    h = (x @ w) * 1.0 + b
    return explorer.nn.softmax(np.maximum(h, 0) + 0)


def _examples():
    return (np.zeros((256, 512), np.float32), np.zeros((512, 256), np.float32), np.zeros(256, np.float32))


MLP_TEXT = """\
graph mlp(x: f32[256,512], w: f32[512,256], b: f32[256]):
  %3: f32[256,256] = matmul(x, w)
  %4: f32[256,256] = add(%3, b)
  %5: f32[] = const 0.0
  %6: f32[256,256] = maximum(%4, %5)
  return %6"""

MLP_TEXT_PROVENANCE = """\
graph mlp(x: f32[256,512], w: f32[512,256], b: f32[256]):
  %3: f32[256,256] = matmul(x, w)                   # test_golden_text.py:10  return np.maximum(x @ w + b, 0)
  %4: f32[256,256] = add(%3, b)                     # test_golden_text.py:10  return np.maximum(x @ w + b, 0)
  %5: f32[] = const 0.0                             # test_golden_text.py:10  return np.maximum(x @ w + b, 0)
  %6: f32[256,256] = maximum(%4, %5)                # test_golden_text.py:10  return np.maximum(x @ w + b, 0)
  return %6"""


def test_mlp_traced_golden():
    c = explorer.compile(mlp, *_examples(), target="reference", verbose=False)
    assert c.stage("traced").text() == MLP_TEXT
    assert c.stage("traced").text(provenance=True) == MLP_TEXT_PROVENANCE


def test_mlp_simplified_golden():
    c = explorer.compile(mlp, *_examples(), target="reference", verbose=False)
    # nothing to simplify: the same lines, and the stage's stats say so
    assert c.stage("simplified").text() == MLP_TEXT
    assert c.stage("simplified").text(provenance=True) == MLP_TEXT_PROVENANCE
    assert c.stage("simplified").stats["rewrites"] == {"decompose": 0, "constant_fold": 0, "identity": 0,
                                                        "cse": 0, "dce": 0}


UNTIDY_TRACED = """\
graph mlp_untidy(x: f32[256,512], w: f32[512,256], b: f32[256]):
  %3: f32[256,512] = exp(x)
  %4: f32[256,256] = matmul(x, w)
  %5: f32[] = const 1.0
  %6: f32[256,256] = mul(%4, %5)
  %7: f32[256,256] = add(%6, b)
  %8: f32[] = const 0.0
  %9: f32[256,256] = maximum(%7, %8)
  %10: f32[] = const 0.0
  %11: f32[256,256] = add(%9, %10)
  %12: f32[256,256] = softmax(%11, axis=-1)
  return %12"""

UNTIDY_SIMPLIFIED = """\
graph mlp_untidy(x: f32[256,512], w: f32[512,256], b: f32[256]):
  %4: f32[256,256] = matmul(x, w)                   # test_golden_text.py:15  h = (x @ w) * 1.0 + b
  %7: f32[256,256] = add(%4, b)                     # test_golden_text.py:15  h = (x @ w) * 1.0 + b
  %8: f32[] = const 0.0                             # test_golden_text.py:16  return explorer.nn.softmax(np.maximum(h, 0) + 0)
  %9: f32[256,256] = maximum(%7, %8)                # test_golden_text.py:16  return explorer.nn.softmax(np.maximum(h, 0) + 0)
  %13: f32[256,1] = max(%9, axes=(1,), keepdims=True)  # test_golden_text.py:16  return explorer.nn.softmax(np.maximum(h, 0) + 0)
  %14: f32[256,256] = sub(%9, %13)                  # test_golden_text.py:16  return explorer.nn.softmax(np.maximum(h, 0) + 0)
  %15: f32[256,256] = exp(%14)                      # test_golden_text.py:16  return explorer.nn.softmax(np.maximum(h, 0) + 0)
  %16: f32[256,1] = sum(%15, axes=(1,), keepdims=True)  # test_golden_text.py:16  return explorer.nn.softmax(np.maximum(h, 0) + 0)
  %17: f32[256,256] = div(%15, %16)                 # test_golden_text.py:16  return explorer.nn.softmax(np.maximum(h, 0) + 0)
  return %17"""


def test_untidy_traced_and_simplified_golden():
    c = explorer.compile(mlp_untidy, *_examples(), target="reference", verbose=False)
    assert c.stage("traced").text() == UNTIDY_TRACED
    assert c.stage("simplified").text(provenance=True) == UNTIDY_SIMPLIFIED
    # softmax expanded; *1.0 and +0 dropped; the two 0.0 constants merged; exp(x) and 1.0 dead
    assert c.stage("simplified").stats["rewrites"] == {"decompose": 1, "constant_fold": 0, "identity": 2,
                                                        "cse": 1, "dce": 2}
