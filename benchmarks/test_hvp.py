"""Hessian–vector products against one gradient, on the "small" workload (784-256-256-10, B=128).

ReLU hidden layers, softmax cross-entropy, float32. "gradient" is forward + loss +
backward on the modular path (the path hvp's traversal mirrors) and in the fused C
chain (Network.train, no optimizer update); "hvp" is fastprop.hvp (R-forward and
R-backward), "gnvp" the Gauss–Newton product. Before timing, the float64 hvp of the
same network is checked against central differences of its gradient, and the float32
one against the float64 one. The ratio hvp / gradient is the issue's cost criterion (≤ 3).

"hvp-residual": a residual MLP of width 64 (32 → 64, four Residual blocks of
Linear-ReLU-Linear, → 10; B=128, float32): fastprop.hvp on the tape (the R-passes in C)
against the same product on the modular path (one Python visit per module and pass).
"""
import numpy as np
import pytest
from conftest import run

import fastprop as fp
from fastprop import _kernels, curvature
from fastprop.bench import WORKLOADS
from fastprop.train import _chain_blocks

SIZES, BATCH = WORKLOADS["small"]


def build(dtype):
    layers = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers.append(fp.Linear(a, b, dtype=dtype, rng=i))
        if i < len(SIZES) - 2:
            layers.append(fp.ReLU())
    return fp.Sequential(*layers)


class Setup:
    def __init__(self):
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
        self.y = rng.integers(0, SIZES[-1], BATCH)
        self.model = build(np.float32)
        self.loss = fp.SoftmaxCrossEntropy()
        n = self.model.num_parameters()
        self.v = rng.standard_normal(n).astype(np.float32)
        self.out = np.empty(n, np.float32)
        self.net = _kernels.Network(_chain_blocks(self.model, self.loss))

    def gradient(self):
        m = self.model
        m.zero_grad()
        J = self.loss(m.forward(self.x), self.y)
        m.backward(self.loss.backward())
        return J

    def fused_gradient(self):
        return self.net.train(self.x, self.y, "softmax_cross_entropy")

    def hvp(self):
        return fp.hvp(self.model, self.loss, self.x, self.y, self.v, out=self.out)

    def gnvp(self):
        return fp.gnvp(self.model, self.loss, self.x, self.y, self.v, out=self.out)

    def hvp_modular(self):   # the same product with the R tape off: the modular path
        saved = curvature._rtape, curvature._rtapes_callbacks
        curvature._rtape = curvature._rtapes_callbacks = lambda m: None
        try:
            return self.hvp()
        finally:
            curvature._rtape, curvature._rtapes_callbacks = saved


_setup = []


def setup():
    if not _setup:
        s = Setup()
        # correctness first: float64 against central differences of the gradient along v
        # (a small step: at 1e-6 some of the 65k ReLU pre-activations cross zero, a kink)
        m64 = build(np.float64)
        x64, v64 = s.x.astype(np.float64), s.v.astype(np.float64)
        hv64 = fp.hvp(m64, s.loss, x64, s.y, v64)
        theta = fp.parameters_to_vector(m64)
        grads = []
        for sign in (1, -1):
            fp.vector_to_parameters(theta + sign * 1e-7 * v64, m64)
            m64.zero_grad()
            s.loss(m64.forward(x64), s.y)
            m64.backward(s.loss.backward())
            grads.append(np.concatenate([p.grad.reshape(-1) for p in m64.parameters()]))
        fp.vector_to_parameters(theta, m64)
        num = (grads[0] - grads[1]) / 2e-7
        assert np.abs(hv64 - num).max() <= 1e-6 * np.abs(num).max()
        hv32 = s.hvp().astype(np.float64)
        assert np.abs(hv32 - hv64).max() <= 1e-3 * np.abs(hv64).max()
        _setup.append(s)
    return _setup[0]


@pytest.mark.parametrize("kind", ["gradient", "fused_gradient", "hvp", "gnvp", "hvp_modular"])
def test_hvp_against_gradient(benchmark, kind):
    benchmark.group = "hvp-small"
    benchmark.name = {"gradient": "gradient (modular)", "fused_gradient": "gradient (fused C chain)",
                      "hvp": "fastprop.hvp", "gnvp": "fastprop.gnvp",
                      "hvp_modular": "fastprop.hvp (modular path)"}[kind]
    s = setup()
    result = run(benchmark, getattr(s, kind))
    if kind in ("hvp", "gnvp", "hvp_modular"):
        assert result is s.out and np.all(np.isfinite(result))
    else:
        assert np.isfinite(result)


def residual_model(width=64, blocks=4, dtype=np.float32):
    layers = [fp.Linear(32, width, dtype=dtype, rng=0), fp.ReLU()]
    layers += [fp.Residual(fp.Sequential(fp.Linear(width, width, dtype=dtype, rng=k + 1), fp.ReLU(),
                                         fp.Linear(width, width, dtype=dtype, rng=k + 50)))
               for k in range(blocks)]
    return fp.Sequential(*layers, fp.Linear(width, 10, dtype=dtype, rng=99))


@pytest.mark.parametrize("path", ["tape", "modular"])
def test_hvp_of_a_residual_model(benchmark, path, monkeypatch):
    benchmark.group = "hvp-residual"
    benchmark.name = f"fastprop.hvp, residual width 64 ({path})"
    rng = np.random.default_rng(0)
    model, loss = residual_model(), fp.SoftmaxCrossEntropy()
    x, y = rng.standard_normal((BATCH, 32)).astype(np.float32), rng.integers(0, 10, BATCH)
    v = rng.standard_normal(model.num_parameters()).astype(np.float32)
    out = np.empty_like(v)
    on_tape = fp.hvp(model, loss, x, y, v).astype(np.float64)
    assert curvature._rtape(model) is not None
    if path == "modular":
        monkeypatch.setattr(curvature, "_rtape", lambda m: None)
        monkeypatch.setattr(curvature, "_rtapes_callbacks", lambda m: None)
        ref = fp.hvp(model, loss, x, y, v).astype(np.float64)
        assert np.abs(ref - on_tape).max() <= 1e-4 * np.abs(ref).max()
    result = run(benchmark, lambda: fp.hvp(model, loss, x, y, v, out=out))
    assert result is out and np.all(np.isfinite(result))
