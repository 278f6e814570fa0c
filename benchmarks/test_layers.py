"""Issue 13's layer benchmarks under pytest-benchmark (the interleaved ratios: layers.py).

Dropout forward + backward (512x4096 float32) against the NumPy expression, and the
784-256-256-10 step with LayerNorm and Dropout(0.1) after each hidden layer against the
plain ReLU chain and torch eager.
"""
import numpy as np
import pytest
from conftest import run

import layers


@pytest.mark.parametrize("impl", ["fastprop", "numpy"])
def test_dropout_forward_backward(benchmark, impl):
    benchmark.group = "dropout-512x4096"
    benchmark.name = impl
    run(benchmark, layers.dropout_contenders()[impl], heavy=True)


@pytest.mark.parametrize("impl", ["plain ReLU chain (fused)", "LayerNorm + Dropout",
                                  "torch eager, LayerNorm + Dropout"])
def test_step_with_layers(benchmark, impl):
    if impl.startswith("torch"):
        pytest.importorskip("torch")
    benchmark.group = "step-784-256-256-10-layers"
    benchmark.name = impl
    fn = layers.step_contenders()[impl]
    assert np.isfinite(fn())
    run(benchmark, fn)
