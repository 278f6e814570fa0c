"""Per-example gradients, DP-SGD and the full Hessian against their peers.

``python benchmarks/test_autodiff.py`` times every case in interleaved rounds (each round
runs every case once, in turn) and prints medians and the issue's ratios; pytest runs each
case once with its result checked (``--benchmark-disable``, as CI does) or times it
(``--benchmark-only``).

- per-example: the "small" workload (784-256-256-10 ReLU, B=128, float32, softmax
  cross-entropy). ``fp.per_example_grad_norms`` against one fused gradient (the C chain's
  forward + loss + backward, no update): target ≤ 1.5×. A DP-SGD step (clip 1, noise 1)
  against the plain fused step (SGD): target ≤ 1.6×; the DP step with clipping only (σ = 0)
  and the noise alone (the C generator adding σC·z to the 269k gradients, one pass) beside it.
  torch.func's ``vmap(grad)`` per-example
  gradients (and their norms) on the same weights, when torch is installed.
- Hessian: 10-20-20-3 tanh MLP (703 parameters), 64 rows, float64. ``fp.hessian`` against
  ``torch.autograd.functional.hessian`` of the same mean loss: target ≥ 5× faster;
  ``torch.func.hessian`` (jacfwd of jacrev, vectorised) beside it.
"""
import time

import numpy as np
import pytest

import fastprop as fp
from fastprop import _kernels
from fastprop.bench import WORKLOADS
from fastprop.train import _chain_blocks

SIZES, BATCH = WORKLOADS["small"]
H_SIZES, H_ROWS = (10, 20, 20, 3), 64


def mlp(sizes, act, dtype):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [fp.Linear(a, b, dtype=dtype, rng=i, bias_init=0.1), act()]
    return fp.Sequential(*layers[:-1])


def torch_mlp(model):
    """f(θ, x) in torch for a Sequential of Linear and ReLU/Tanh, θ flat as fastprop's."""
    import torch
    sizes = [p.size for p in model.parameters()]

    def f(theta, x):
        parts, i, h = torch.split(theta, sizes), 0, x
        for m in model.layers:
            if isinstance(m, fp.Linear):
                h = torch.nn.functional.linear(h, parts[i].view(m.out_features, m.in_features),
                                               parts[i + 1])
                i += 2
            else:
                h = torch.relu(h) if isinstance(m, fp.ReLU) else torch.tanh(h)
        return h
    return f


class PerExample:
    def __init__(self):
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
        self.y = rng.integers(0, SIZES[-1], BATCH)
        self.loss = fp.SoftmaxCrossEntropy()
        self.model = mlp(SIZES, fp.ReLU, np.float32)
        self.net = _kernels.Network(_chain_blocks(self.model, self.loss))
        self.plain_model = mlp(SIZES, fp.ReLU, np.float32)
        self.dp_model = mlp(SIZES, fp.ReLU, np.float32)
        self.plain = fp.TrainStep(self.plain_model, self.loss,
                                  fp.SGD(self.plain_model.parameters(), lr=1e-3))
        self.dp = fp.TrainStep(self.dp_model, self.loss, fp.SGD(self.dp_model.parameters(), lr=1e-3),
                               per_example_clip=1.0, noise_multiplier=1.0, rng=0)
        self.clip_only = fp.TrainStep(self.dp_model, self.loss,
                                      fp.SGD(self.dp_model.parameters(), lr=1e-3), per_example_clip=1.0)
        self.grads = np.zeros(self.dp_model.num_parameters(), np.float32)
        self.torch_fn = None
        try:
            import torch
            from torch.func import grad, vmap
        except ImportError:
            return
        f = torch_mlp(self.model)
        theta = torch.tensor(fp.parameters_to_vector(self.model))
        tx, ty = torch.tensor(self.x), torch.tensor(self.y)
        per = vmap(grad(lambda t, xi, yi: torch.nn.functional.cross_entropy(f(t, xi[None]), yi[None])),
                   in_dims=(None, 0, 0))
        self.torch_fn = lambda: per(theta, tx, ty).norm(dim=1)

    def fused_gradient(self):
        return self.net.train(self.x, self.y, "softmax_cross_entropy")

    def norms(self):
        return fp.per_example_grad_norms(self.model, self.loss, self.x, self.y)

    def plain_step(self):
        return self.plain(self.x, self.y)

    def dp_step(self):
        return self.dp(self.x, self.y)

    def clip_only_step(self):
        return self.clip_only(self.x, self.y)

    def noise(self):
        return _kernels.gaussian_noise(self.grads, 1, 2, scale=1 / BATCH, accumulate=True)

    def torch_vmap_grad(self):
        return self.torch_fn()

    def check(self):
        norms = self.norms()
        # against a per-example loop on 8 examples (float64 copy of the weights)
        m64 = mlp(SIZES, fp.ReLU, np.float64)
        fp.vector_to_parameters(fp.parameters_to_vector(self.model).astype(np.float64), m64)
        for i in range(8):
            m64.zero_grad()
            self.loss(m64.forward(self.x[i:i + 1].astype(np.float64)), self.y[i:i + 1])
            m64.backward(self.loss.backward())
            want = np.sqrt(sum(float((p.grad ** 2).sum()) for p in m64.parameters()))
            assert abs(norms[i] - want) <= 1e-4 * want
        if self.torch_fn is not None:
            theirs = self.torch_fn().numpy()
            assert np.abs(theirs - norms).max() <= 1e-4 * np.abs(norms).max()


class Hessian:
    def __init__(self):
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((H_ROWS, H_SIZES[0]))
        self.y = rng.integers(0, H_SIZES[-1], H_ROWS)
        self.loss = fp.SoftmaxCrossEntropy()
        self.model = mlp(H_SIZES, fp.Tanh, np.float64)
        self.torch_fns = {}
        try:
            import torch
        except ImportError:
            return
        f = torch_mlp(self.model)
        theta = torch.tensor(fp.parameters_to_vector(self.model))
        tx, ty = torch.tensor(self.x), torch.tensor(self.y)

        def J(t):
            return torch.nn.functional.cross_entropy(f(t, tx), ty)
        self.torch_fns = {
            "torch.autograd.functional.hessian": lambda: torch.autograd.functional.hessian(J, theta),
            "torch.func.hessian": lambda: torch.func.hessian(J)(theta)}

    def hessian(self):
        return fp.hessian(self.model, self.loss, self.x, self.y)

    def check(self):
        H = self.hessian()
        n = self.model.num_parameters()
        assert H.shape == (n, n)
        e = np.zeros(n)
        for i in (0, n // 2, n - 1):
            e[i] = 1
            hv = fp.hvp(self.model, self.loss, self.x, self.y, e)
            e[i] = 0
            assert np.abs(H[:, i] - hv).max() <= 1e-12 * np.abs(hv).max()
        for fn in self.torch_fns.values():
            assert np.abs(fn().numpy() - H).max() <= 1e-10 * np.abs(H).max()


_setups = {}


def setup(cls):
    if cls not in _setups:
        s = cls()
        s.check()
        _setups[cls] = s
    return _setups[cls]


@pytest.mark.parametrize("kind", ["fused_gradient", "norms", "plain_step", "dp_step",
                                  "clip_only_step", "noise", "torch_vmap_grad"])
def test_per_example(benchmark, kind):
    benchmark.group = "per-example-small"
    s = setup(PerExample)
    if kind == "torch_vmap_grad" and s.torch_fn is None:
        pytest.skip("torch is not installed")
    result = benchmark(getattr(s, kind))
    assert np.all(np.isfinite(np.asarray(result)))


@pytest.mark.parametrize("kind", ["fastprop", "torch.autograd.functional.hessian",
                                  "torch.func.hessian"])
def test_hessian(benchmark, kind):
    benchmark.group = "hessian-10-20-20-3"
    s = setup(Hessian)
    if kind != "fastprop" and kind not in s.torch_fns:
        pytest.skip("torch is not installed")
    fn = s.hessian if kind == "fastprop" else s.torch_fns[kind]
    result = benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
    assert np.all(np.isfinite(np.asarray(result)))


# ---------------------------------------------------------------- interleaved rounds

def interleaved(cases, rounds, reps=1):
    """{name: median seconds}: each round times every case once (reps calls), in turn."""
    times = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm-up: workspaces, caches, BLAS threads
    for _ in range(rounds):
        for name, fn in cases.items():
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            times[name].append((time.perf_counter() - t) / reps)
    return {name: float(np.median(t)) for name, t in times.items()}


def main(threads=None):
    if threads is not None:  # the BLAS's and torch's threads (fastprop's own: FASTPROP_NUM_THREADS)
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            pass
    pe = setup(PerExample)
    cases = {"fused gradient": pe.fused_gradient, "per_example_grad_norms": pe.norms,
             "plain step": pe.plain_step, "DP-SGD step": pe.dp_step,
             "DP-SGD step, clip only": pe.clip_only_step, "noise alone (C)": pe.noise}
    if pe.torch_fn is not None:
        cases["torch vmap(grad) + norms"] = pe.torch_vmap_grad
    t = interleaved(cases, rounds=30, reps=5)
    print(f"per-example, {'-'.join(map(str, SIZES))} B={BATCH} float32 "
          f"(fastprop threads: {fp.get_num_threads()})")
    for name, sec in t.items():
        print(f"  {name:28s} {sec * 1e3:8.3f} ms")
    print(f"  norms / fused gradient       {t['per_example_grad_norms'] / t['fused gradient']:.2f}x"
          f"  (target <= 1.5)")
    print(f"  DP-SGD step / plain step     {t['DP-SGD step'] / t['plain step']:.2f}x  (target <= 1.6)")
    print(f"  clip only / plain step       {t['DP-SGD step, clip only'] / t['plain step']:.2f}x")
    print(f"  noise alone / plain step     {t['noise alone (C)'] / t['plain step']:.3f}x")
    if pe.torch_fn is not None:
        ratio = t["torch vmap(grad) + norms"] / t["per_example_grad_norms"]
        print(f"  torch vmap(grad) / norms     {ratio:.1f}x")
    h = setup(Hessian)
    cases = {"fastprop.hessian": h.hessian, **h.torch_fns}
    t = interleaved(cases, rounds=7)
    print(f"Hessian, {'-'.join(map(str, H_SIZES))} tanh, {h.model.num_parameters()} parameters, "
          f"{H_ROWS} rows, float64")
    for name, sec in t.items():
        print(f"  {name:36s} {sec * 1e3:9.2f} ms  ({sec / t['fastprop.hessian']:.1f}x fastprop's)")


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS and torch threads (default: their own settings)")
    main(parser.parse_args().threads)
