"""Kernels against the NumPy expression a careful user would write, shape by shape."""
import math

import numpy as np
import pytest
from conftest import close, run
from scipy.special import erf

from fastprop import ops
from fastprop.bench import WORKLOADS

F32 = np.float32


def layer_shapes():
    shapes = set()
    for sizes, batch in WORKLOADS.values():
        for a, b in zip(sizes[:-1], sizes[1:]):
            shapes.add((batch, a, b))
    return sorted(shapes)


def is_heavy(batch, n_in, n_out):
    return batch * n_in * n_out > 2e8


# ---------------------------------------------------------------- dense layers

@pytest.mark.parametrize("impl", ["fastprop", "numpy"])
@pytest.mark.parametrize("shape", layer_shapes(), ids=lambda s: "x".join(map(str, s)))
def test_dense_forward(benchmark, rng, shape, impl):
    batch, n_in, n_out = shape
    benchmark.group = f"dense-forward-relu-{batch}x{n_in}x{n_out}"
    x = rng.standard_normal((batch, n_in)).astype(F32)
    w = rng.standard_normal((n_out, n_in)).astype(F32)
    b = rng.standard_normal(n_out).astype(F32)
    y = np.empty((batch, n_out), F32)

    def numpy_dense():
        np.matmul(x, w.T, out=y)
        np.add(y, b, out=y)
        np.maximum(y, 0, out=y)

    fn = (lambda: ops.dense_forward(x, w, b, "relu", out=y)) if impl == "fastprop" else numpy_dense
    run(benchmark, fn, is_heavy(*shape))
    close(y, np.maximum(x.astype(np.float64) @ w.T + b, 0))


@pytest.mark.parametrize("impl", ["fastprop", "numpy"])
@pytest.mark.parametrize("shape", layer_shapes(), ids=lambda s: "x".join(map(str, s)))
def test_dense_backward(benchmark, rng, shape, impl):
    batch, n_in, n_out = shape
    benchmark.group = f"dense-backward-{batch}x{n_in}x{n_out}"
    g = rng.standard_normal((batch, n_out)).astype(F32)
    x = rng.standard_normal((batch, n_in)).astype(F32)
    w = rng.standard_normal((n_out, n_in)).astype(F32)
    gw, gb, gx = np.empty_like(w), np.empty(n_out, F32), np.empty_like(x)

    def numpy_backward():
        np.matmul(g.T, x, out=gw)
        np.sum(g, axis=0, out=gb)
        np.matmul(g, w, out=gx)

    def fastprop_backward():
        ops.dense_backward(g, x, w, grad_weight=gw, grad_bias=gb, grad_input=gx)

    run(benchmark, fastprop_backward if impl == "fastprop" else numpy_backward, is_heavy(*shape))
    close(gw, g.T.astype(np.float64) @ x)
    close(gx, g.astype(np.float64) @ w)


# ---------------------------------------------------------------- activations: g ⊙ f′

def numpy_expression(act, g, x, y):
    """g ⊙ f′ as a NumPy user writes it (temporaries and all)."""
    if act == "identity":
        return g.copy()
    if act == "relu":
        return g * (y > 0)
    if act == "leaky_relu":
        return np.where(x > 0, g, 0.01 * g)
    if act == "abs":
        return g * np.sign(x)
    if act == "sigmoid":
        return g * y * (1 - y)
    if act == "tanh":
        return g * (1 - y * y)
    if act == "softplus":
        return g / (1 + np.exp(-x))
    if act == "cos":
        return -g * np.sin(x)
    if act == "gelu":
        return g * (0.5 * (1 + erf(x / math.sqrt(2))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))
    if act == "silu":
        s = 1 / (1 + np.exp(-x))
        return g * s * (1 + x * (1 - s))
    raise ValueError(act)


@pytest.mark.parametrize("impl", ["fastprop", "fastprop-out", "numpy"])
@pytest.mark.parametrize("shape", [(128, 256), (512, 4096)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("act", list(ops.ACTIVATIONS))
def test_activation_backward(benchmark, rng, act, shape, impl):
    """fastprop: g ← g ⊙ f′ in place, as the backward pass runs it (g is restored before each
    round, untimed: repeated in place, g would shrink into subnormals); fastprop-out: into
    another array; numpy: the expression, which allocates its result and temporaries."""
    benchmark.group = f"activation-backward-{act}-{shape[0]}x{shape[1]}"
    x = rng.standard_normal(shape).astype(F32)
    y = ops.activation_forward(x, act)
    g0 = rng.standard_normal(shape).astype(F32)
    g = g0.copy()
    if impl == "fastprop":
        result = run(benchmark, lambda: ops.activation_backward(g, act, x=x, y=y, out=g),
                     heavy=shape[0] > 128, setup=lambda: np.copyto(g, g0))
    elif impl == "fastprop-out":
        out = np.empty_like(g)
        result = run(benchmark, lambda: ops.activation_backward(g, act, x=x, y=y, out=out))
    else:
        result = run(benchmark, lambda: numpy_expression(act, g, x, y))
    close(result, numpy_expression(act, g0.astype(np.float64), x.astype(np.float64),
                                   y.astype(np.float64)))


# ---------------------------------------------------------------- softmax cross-entropy

def numpy_softmax_xent(z, labels):
    rows = np.arange(z.shape[0])
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(s[:, 0]) + m[:, 0] - z[rows, labels]))
    g = e / s
    g[rows, labels] -= 1
    g /= z.shape[0]
    return loss, g


@pytest.mark.parametrize("impl", ["fastprop", "numpy"])
@pytest.mark.parametrize("shape", [(128, 10), (512, 1000)], ids=lambda s: "x".join(map(str, s)))
def test_softmax_cross_entropy(benchmark, rng, shape, impl):
    benchmark.group = f"softmax-xent-{shape[0]}x{shape[1]}"
    z = (3 * rng.standard_normal(shape)).astype(F32)
    labels = rng.integers(0, shape[1], shape[0])
    g = np.empty_like(z)
    if impl == "fastprop":
        loss, grad = run(benchmark, lambda: ops.softmax_cross_entropy(z, labels, grad_out=g))
    else:
        loss, grad = run(benchmark, lambda: numpy_softmax_xent(z, labels))
    ref_loss, ref_grad = numpy_softmax_xent(z.astype(np.float64), labels)
    assert abs(loss - ref_loss) <= 1e-4 * max(1, abs(ref_loss))
    close(grad, ref_grad)


# ---------------------------------------------------------------- optimizer steps

@pytest.mark.parametrize("impl", ["fastprop", "numpy"])
@pytest.mark.parametrize("n", [1_000_000, 33_000_000], ids=["1M", "33M"])
@pytest.mark.parametrize("kind", ["sgd-momentum", "adam"])
def test_optimizer_step(benchmark, rng, kind, n, impl):
    benchmark.group = f"optimizer-{kind}-{n // 1_000_000}M"
    p0 = (0.1 * rng.standard_normal(n)).astype(F32)
    g = (0.01 * rng.standard_normal(n)).astype(F32)
    p, s1, s2 = p0.copy(), np.zeros(n, F32), np.zeros(n, F32)
    lr, mu, b1, b2, eps = 1e-3, 0.9, 0.9, 0.999, 1e-8
    state = {"t": 0}

    def numpy_sgd():
        state["t"] += 1
        np.multiply(s1, mu, out=s1)
        np.add(s1, g, out=s1)
        np.subtract(p, lr * s1, out=p)

    def numpy_adam():
        state["t"] += 1
        t = state["t"]
        np.multiply(s1, b1, out=s1)
        np.add(s1, (1 - b1) * g, out=s1)
        np.multiply(s2, b2, out=s2)
        np.add(s2, (1 - b2) * g * g, out=s2)
        np.subtract(p, (lr / (1 - b1 ** t)) * s1 / (np.sqrt(s2) / math.sqrt(1 - b2 ** t) + eps), out=p)

    def fastprop_sgd():
        state["t"] += 1
        ops.sgd_step(p, g, lr=lr, momentum=mu, momentum_buffer=s1, first_step=False)

    def fastprop_adam():
        state["t"] += 1
        ops.adam_step(p, g, s1, s2, step=state["t"], lr=lr)

    fns = {("sgd-momentum", "fastprop"): fastprop_sgd, ("sgd-momentum", "numpy"): numpy_sgd,
           ("adam", "fastprop"): fastprop_adam, ("adam", "numpy"): numpy_adam}
    run(benchmark, fns[(kind, impl)], heavy=n > 10_000_000)
    # with a constant gradient both updates have a closed form after t steps
    t = state["t"]
    g64 = g.astype(np.float64)
    if kind == "sgd-momentum":   # buf_j = g (1 − μ^j)/(1 − μ)
        moved = lr * g64 * sum((1 - mu ** j) / (1 - mu) for j in range(1, t + 1))
    else:                        # bias-corrected moments are g and g², each step lr·g/(|g| + ε)
        moved = t * lr * g64 / (np.abs(g64) + eps)
    close(p0.astype(np.float64) - p, moved, rtol=1e-3)
