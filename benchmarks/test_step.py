"""The full training step: TrainStep, the modular fastprop path and the NumPy reference.

Forward, softmax cross-entropy, backward, SGD with momentum 0.9, float32, ReLU hidden
layers, on the five workloads of fastprop.bench.WORKLOADS. All three start from the
same weights; the first step's loss is checked before timing.
"""
import numpy as np
import pytest
from conftest import run

from fastprop import reference
from fastprop.bench import WORKLOADS, StepSetup

_setups = {}


def setup_for(name):
    if name not in _setups:
        _setups.clear()  # one workload's models at a time (large is ~1 GB)
        sizes, batch = WORKLOADS[name]
        s = StepSetup(sizes, batch)
        logits, _ = reference.mlp_forward(s.x, s.reference.weights, s.reference.biases, "relu")
        s.initial_loss = reference.softmax_cross_entropy(logits.astype(np.float64), s.y)[0]
        _setups[name] = s
    return _setups[name]


@pytest.mark.parametrize("impl", ["fused", "modular", "numpy"])
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_step(benchmark, name, impl):
    benchmark.group = f"step-{name}"
    benchmark.name = {"fused": "fastprop TrainStep", "modular": "fastprop modular",
                      "numpy": "NumPy reference"}[impl]
    s = setup_for(name)
    fn = getattr(s, impl)
    first = fn()  # this implementation's first step, from the shared initial weights
    assert abs(first - s.initial_loss) <= 1e-4 * max(1.0, abs(s.initial_loss))
    loss = run(benchmark, fn, heavy=name in ("large", "medium"))
    assert np.isfinite(loss)
