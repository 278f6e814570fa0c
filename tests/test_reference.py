"""Tests of fastprop.reference, the NumPy oracle: gradients against finite differences,
optimisers against their formulas (and torch.optim when torch is installed), numerical
stability, and the NumpyMLPTrainer baseline against the composed reference functions."""

import importlib.util
import math
import pathlib
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

try:
    from fastprop import reference as ref
except ImportError:  # the package __init__ may import a not-yet-built C extension
    _path = pathlib.Path(__file__).resolve().parents[1] / "src" / "fastprop" / "reference.py"
    _spec = importlib.util.spec_from_file_location("fastprop_reference", _path)
    ref = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(ref)


EPS = 1e-6
TOL = 1e-6
ALL_ACTIVATIONS = ["identity", "relu", "leaky_relu", "abs", "sigmoid", "tanh",
                   "softplus", "cos", "gelu", "silu"]
Y_ONLY = {"identity", "relu", "leaky_relu", "sigmoid", "tanh"}   # derivative from y alone


def rel_err(a, b):
    """Norm-wise relative error between two arrays."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return 0.0 if scale == 0 else float(np.linalg.norm(a - b) / scale)


def numeric_grad(f, arr, eps=EPS):
    """Central finite-difference gradient of the scalar f() wrt every element of arr (in place)."""
    grad = np.zeros_like(arr)
    flat, gflat = arr.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def away_from_zero(rng, shape, low=0.05, high=4.0):
    """Random values with |x| in [low, high] (keeps finite differences off the kinks at 0)."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(low, high, size=shape)


# ------------------------------------------------------------------ activation forward

def _math_sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def _math_softplus(v, beta, threshold):
    return v if beta * v > threshold else math.log(1.0 + math.exp(beta * v)) / beta


MATH_FORMS = {
    "identity": lambda v, p: v,
    "relu": lambda v, p: max(v, 0.0),
    "leaky_relu": lambda v, p: v if v > 0 else p.get("negative_slope", 0.01) * v,
    "abs": lambda v, p: abs(v),
    "sigmoid": lambda v, p: _math_sigmoid(v),
    "tanh": lambda v, p: math.tanh(v),
    "softplus": lambda v, p: _math_softplus(v, p.get("beta", 1.0), p.get("threshold", 20.0)),
    "cos": lambda v, p: math.cos(v),
    "gelu": lambda v, p: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))),
    "silu": lambda v, p: v * _math_sigmoid(v),
}

ACT_CASES = [(name, {}) for name in ALL_ACTIVATIONS] + [
    ("leaky_relu", {"negative_slope": 0.2}),
    ("leaky_relu", {"negative_slope": -0.3}),
    ("softplus", {"beta": 2.0, "threshold": 5.0}),
    ("softplus", {"beta": 0.5, "threshold": 1.0}),
]


@pytest.mark.parametrize("name,params", ACT_CASES)
def test_activation_forward_matches_scalar_formula(name, params):
    x = np.array([-30.0, -3.7, -1.0, -0.25, 0.0, 0.3, 1.0, 2.2, 2.6, 4.0, 25.0])
    expected = np.array([MATH_FORMS[name](float(v), params) for v in x])
    y = ref.activation_forward(x, name, **params)
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-15)


def test_activation_forward_known_values():
    assert ref.activation_forward(np.array([1.0]), "gelu")[0] == pytest.approx(0.8413447460685429,
                                                                                 rel=1e-14)
    assert ref.activation_forward(np.array([0.0]), "softplus")[0] == pytest.approx(math.log(2.0))
    assert ref.activation_forward(np.array([1.0]), "silu")[0] == pytest.approx(0.7310585786300049)
    # softplus linear region: beta*x > threshold gives exactly x
    assert ref.activation_forward(np.array([3.0]), "softplus", beta=2.0, threshold=5.0)[0] == 3.0


def test_unknown_activation_raises():
    with pytest.raises(ValueError):
        ref.activation_forward(np.ones(3), "swish")
    with pytest.raises(ValueError):
        ref.activation_backward(np.ones(3), "swish", x=np.ones(3))


# ------------------------------------------------------------------ activation backward

@pytest.mark.parametrize("name,params", ACT_CASES)
def test_activation_backward_matches_finite_differences(name, params):
    rng = np.random.default_rng(0)
    x = away_from_zero(rng, (5, 7))
    if name == "softplus":  # keep off the threshold kink at beta*x == threshold
        kink = params.get("threshold", 20.0) / params.get("beta", 1.0)
        x[np.abs(x - kink) < 1e-3] += 0.01
    grad = rng.normal(size=x.shape)

    def f(v):
        return ref.activation_forward(v, name, **params)

    numeric = grad * (f(x + EPS) - f(x - EPS)) / (2 * EPS)   # f is elementwise
    y = f(x)
    got_x = ref.activation_backward(grad, name, x=x, **params)
    got_xy = ref.activation_backward(grad, name, x=x, y=y, **params)
    assert rel_err(got_x, numeric) <= TOL
    assert rel_err(got_xy, numeric) <= TOL
    if name in Y_ONLY and params.get("negative_slope", 1.0) > 0:
        got_y = ref.activation_backward(grad, name, y=y, **params)
        assert rel_err(got_y, numeric) <= TOL


def test_activation_backward_full_jacobian_via_loop():
    """Finite differences one element at a time (no elementwise shortcut) for a few activations."""
    rng = np.random.default_rng(1)
    for name in ("gelu", "silu", "softplus", "tanh", "cos"):
        x = away_from_zero(rng, (2, 3))
        r = rng.normal(size=x.shape)
        numeric = numeric_grad(lambda: float(np.sum(r * ref.activation_forward(x, name))), x)
        assert rel_err(ref.activation_backward(r, name, x=x), numeric) <= TOL


def test_activation_derivatives_at_zero():
    zero, one = np.zeros(1), np.ones(1)
    assert ref.activation_backward(one, "relu", x=zero)[0] == 0.0
    assert ref.activation_backward(one, "relu", y=zero)[0] == 0.0
    assert ref.activation_backward(one, "abs", x=zero)[0] == 0.0
    assert ref.activation_backward(one, "leaky_relu", x=zero, negative_slope=0.3)[0] == 0.3
    assert ref.activation_backward(one, "leaky_relu", y=zero, negative_slope=0.3)[0] == 0.3
    assert ref.activation_backward(one, "gelu", x=zero)[0] == 0.5
    assert ref.activation_backward(one, "silu", x=zero)[0] == 0.5
    assert ref.activation_backward(one, "sigmoid", x=zero)[0] == 0.25


@pytest.mark.parametrize("name", ["abs", "softplus", "cos", "gelu", "silu"])
def test_activation_backward_needs_x(name):
    with pytest.raises(ValueError):
        ref.activation_backward(np.ones(3), name, y=np.ones(3))


@pytest.mark.parametrize("name", ALL_ACTIVATIONS)
def test_activation_backward_needs_x_or_y(name):
    if name == "identity":
        np.testing.assert_array_equal(ref.activation_backward(np.arange(3.0), name),
                                      np.arange(3.0))
    else:
        with pytest.raises(ValueError):
            ref.activation_backward(np.ones(3), name)


def test_leaky_relu_negative_slope_needs_x():
    with pytest.raises(ValueError):
        ref.activation_backward(np.ones(3), "leaky_relu", y=np.ones(3), negative_slope=-0.5)
    x = np.array([-2.0, 3.0])
    got = ref.activation_backward(np.ones(2), "leaky_relu", x=x, negative_slope=-0.5)
    np.testing.assert_array_equal(got, [-0.5, 1.0])


@pytest.mark.parametrize("name", ALL_ACTIVATIONS)
def test_activation_results_do_not_alias_inputs(name):
    x = np.linspace(-2, 2, 6)
    g = np.ones(6)
    y = ref.activation_forward(x, name)
    assert not np.shares_memory(y, x)
    assert not np.shares_memory(ref.activation_backward(g, name, x=x, y=y), g)


def test_activation_backward_out_in_place():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 4))
    grad = rng.normal(size=(3, 4))
    expected = ref.activation_backward(grad, "tanh", x=x)
    res = ref.activation_backward(grad, "tanh", x=x, out=grad)
    assert res is grad
    np.testing.assert_array_equal(grad, expected)
    out = np.empty_like(x)
    assert ref.activation_forward(x, "gelu", out=out) is out
    np.testing.assert_array_equal(out, ref.activation_forward(x, "gelu"))


def test_activations_stable_at_large_inputs():
    x = np.array([-1e4, -800.0, 800.0, 1e4])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        np.testing.assert_array_equal(ref.activation_forward(x, "sigmoid"), [0.0, 0.0, 1.0, 1.0])
        np.testing.assert_array_equal(ref.activation_forward(x, "softplus"), [0.0, 0.0, 800.0, 1e4])
        # no threshold: the log1p(exp(.)) branch itself must not overflow
        np.testing.assert_array_equal(ref.activation_forward(x, "softplus", threshold=1e30),
                                      [0.0, 0.0, 800.0, 1e4])
        np.testing.assert_array_equal(ref.activation_forward(x, "silu"), [0.0, 0.0, 800.0, 1e4])
        np.testing.assert_array_equal(ref.activation_forward(x, "gelu"), [0.0, 0.0, 800.0, 1e4])
        for name in ALL_ACTIVATIONS:
            y = ref.activation_forward(x, name)
            assert np.all(np.isfinite(ref.activation_backward(np.ones(4), name, x=x, y=y)))
        np.testing.assert_array_equal(ref.activation_backward(np.ones(4), "sigmoid", x=x),
                                      [0.0, 0.0, 0.0, 0.0])
        np.testing.assert_array_equal(ref.activation_backward(np.ones(4), "softplus", x=x,
                                                              threshold=1e30), [0, 0, 1, 1])
    x32 = x.astype(np.float32)
    with np.errstate(over="raise", invalid="raise"):
        assert np.array_equal(ref.activation_forward(x32, "sigmoid"), [0, 0, 1, 1])


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, 8, elements=st.floats(-1e4, 1e4)))
def test_sigmoid_bounded_and_consistent(x):
    with np.errstate(over="raise", invalid="raise"):
        s = ref.activation_forward(x, "sigmoid")
    assert np.all((s >= 0) & (s <= 1))
    # sigmoid(-x) = 1 - sigmoid(x)
    np.testing.assert_allclose(ref.activation_forward(-x, "sigmoid"), 1 - s, atol=1e-15)


@pytest.mark.parametrize("name", ALL_ACTIVATIONS)
def test_activation_dtype_preserved(name):
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    y = ref.activation_forward(x, name)
    assert y.dtype == np.float32
    assert ref.activation_backward(np.ones_like(x), name, x=x, y=y).dtype == np.float32
    np.testing.assert_allclose(y, ref.activation_forward(x.astype(np.float64), name),
                               rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ dense layer

def test_dense_forward():
    rng = np.random.default_rng(3)
    x, w, b = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)), rng.normal(size=5)
    pre = np.empty((4, 5))
    out = np.empty((4, 5))
    y = ref.dense_forward(x, w, b, "tanh", out=out, preact_out=pre)
    expected_pre = np.array([[sum(x[i, k] * w[j, k] for k in range(3)) + b[j] for j in range(5)]
                             for i in range(4)])
    assert y is out
    np.testing.assert_allclose(pre, expected_pre, rtol=1e-13)
    np.testing.assert_allclose(y, np.tanh(expected_pre), rtol=1e-13)
    np.testing.assert_allclose(ref.dense_forward(x, w), expected_pre - b, rtol=1e-12, atol=1e-14)
    y2 = ref.dense_forward(x, w, b, "leaky_relu", negative_slope=0.3)
    np.testing.assert_allclose(y2, np.where(expected_pre > 0, expected_pre, 0.3 * expected_pre))


def test_dense_backward_matches_finite_differences():
    rng = np.random.default_rng(4)
    x, w, b = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)), rng.normal(size=5)
    r = rng.normal(size=(4, 5))

    def loss():
        return float(np.sum(r * ref.dense_forward(x, w, b)))

    gi, gw, gb = ref.dense_backward(r, x, w)
    assert rel_err(gi, numeric_grad(loss, x)) <= TOL
    assert rel_err(gw, numeric_grad(loss, w)) <= TOL
    assert rel_err(gb, numeric_grad(loss, b)) <= TOL


@pytest.mark.parametrize("name", ALL_ACTIVATIONS)
def test_dense_layer_with_activation_chain_rule(name):
    rng = np.random.default_rng(5)
    x, w, b = rng.normal(size=(3, 4)), rng.normal(size=(2, 4)), rng.normal(size=2)
    r = rng.normal(size=(3, 2))

    def loss():
        return float(np.sum(r * ref.dense_forward(x, w, b, name)))

    pre = np.empty((3, 2))
    y = ref.dense_forward(x, w, b, name, preact_out=pre)
    g = ref.activation_backward(r, name, x=pre, y=y)
    gi, gw, gb = ref.dense_backward(g, x, w)
    assert rel_err(gi, numeric_grad(loss, x)) <= TOL
    assert rel_err(gw, numeric_grad(loss, w)) <= TOL
    assert rel_err(gb, numeric_grad(loss, b)) <= TOL


def test_dense_backward_flags_buffers_and_accumulate():
    rng = np.random.default_rng(6)
    x, w, g = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)), rng.normal(size=(4, 5))
    gi0, gw0, gb0 = ref.dense_backward(g, x, w)
    gi, gw, gb = ref.dense_backward(g, x, w, bias=False, input_grad=False)
    assert gi is None and gb is None
    np.testing.assert_allclose(gw, gw0)
    bi, bw, bb = np.ones((4, 3)), np.ones((5, 3)), np.ones(5)
    res = ref.dense_backward(g, x, w, grad_input=bi, grad_weight=bw, grad_bias=bb)
    assert res[0] is bi and res[1] is bw and res[2] is bb
    np.testing.assert_allclose(bw, gw0)
    np.testing.assert_allclose(bb, gb0)
    np.testing.assert_allclose(bi, gi0)
    ref.dense_backward(g, x, w, grad_input=bi, grad_weight=bw, grad_bias=bb, accumulate=True)
    np.testing.assert_allclose(bw, 2 * gw0)
    np.testing.assert_allclose(bb, 2 * gb0)
    np.testing.assert_allclose(bi, 2 * gi0)
    f32 = [a.astype(np.float32) for a in (g, x, w)]
    assert all(a.dtype == np.float32 for a in ref.dense_backward(*f32))
    assert ref.dense_forward(f32[1], f32[2], np.zeros(5, np.float32), "gelu").dtype == np.float32


# ------------------------------------------------------------------ PReLU

@pytest.mark.parametrize("channels", [1, 4])
def test_prelu_forward(channels):
    x = np.array([[-1.0, 2.0, -3.0, 0.0], [4.0, -5.0, 6.0, -7.0]])
    w = np.array([0.1, 0.2, 0.3, 0.4])[:channels]
    wc = np.broadcast_to(w, (4,))
    expected = np.where(x > 0, x, wc * x)
    np.testing.assert_allclose(ref.prelu_forward(x, w), expected)
    out = np.empty_like(x)
    assert ref.prelu_forward(x, w, out=out) is out
    np.testing.assert_allclose(out, expected)


@pytest.mark.parametrize("channels", [1, 5])
def test_prelu_backward_matches_finite_differences(channels):
    rng = np.random.default_rng(7)
    x = away_from_zero(rng, (4, 5))
    w = rng.uniform(0.05, 0.5, size=channels)
    r = rng.normal(size=x.shape)

    def loss():
        return float(np.sum(r * ref.prelu_forward(x, w)))

    gi, gw = ref.prelu_backward(r, x, w)
    assert gw.shape == w.shape
    assert rel_err(gi, numeric_grad(loss, x)) <= TOL
    assert rel_err(gw, numeric_grad(loss, w)) <= TOL
    # buffers and accumulation
    bi, bw = np.empty_like(x), np.full_like(w, 1.0)
    res = ref.prelu_backward(r, x, w, out=bi, grad_weight=bw, accumulate=True)
    assert res[0] is bi and res[1] is bw
    np.testing.assert_allclose(bi, gi)
    np.testing.assert_allclose(bw, gw + 1.0)
    ref.prelu_backward(r, x, w, grad_weight=bw)
    np.testing.assert_allclose(bw, gw)


def test_prelu_dtype_and_bad_weight():
    x = np.ones((2, 3), np.float32)
    w = np.full(3, 0.25, np.float32)
    assert ref.prelu_forward(x, w).dtype == np.float32
    assert all(a.dtype == np.float32 for a in ref.prelu_backward(x, -x, w))
    with pytest.raises(ValueError):
        ref.prelu_forward(x, np.ones(2))


# ------------------------------------------------------------------ softmax and losses

def test_softmax_and_log_softmax():
    z = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]])
    e = np.exp([1.0, 2.0, 3.0])
    p = ref.softmax(z)
    np.testing.assert_allclose(p[0], e / e.sum(), rtol=1e-14)
    np.testing.assert_allclose(p[1], [0.5, 0.5, 0.0], atol=1e-300)
    lp = ref.log_softmax(z)
    np.testing.assert_allclose(lp[0], np.log(e / e.sum()), rtol=1e-14)
    np.testing.assert_allclose(lp[1], [-math.log(2), -math.log(2), -2000 - math.log(2)])
    out = np.empty_like(z)
    assert ref.softmax(z, out=out) is out
    assert ref.log_softmax(z, out=out) is out
    assert ref.softmax(z.astype(np.float32)).dtype == np.float32


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float64, (3, 4), elements=st.floats(-1e4, 1e4)))
def test_softmax_properties(z):
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p = ref.softmax(z)
        lp = ref.log_softmax(z)
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(np.isfinite(lp)) and np.all(lp <= 0)
    np.testing.assert_allclose(np.exp(lp), p, rtol=1e-12, atol=1e-300)


def _ce_loss_grad_check(z, target):
    loss, grad = ref.softmax_cross_entropy(z, target)
    numeric = numeric_grad(lambda: ref.softmax_cross_entropy(z, target, compute_grad=False)[0], z)
    assert rel_err(grad, numeric) <= TOL
    return loss


def test_softmax_cross_entropy_int_labels():
    rng = np.random.default_rng(8)
    z = rng.normal(size=(4, 5)) * 2
    labels = np.array([0, 3, 4, 3])
    loss = _ce_loss_grad_check(z, labels)
    lse = np.log(np.exp(z).sum(axis=1))
    assert loss == pytest.approx(float(np.mean(lse - z[np.arange(4), labels])), rel=1e-13)
    loss2, grad2 = ref.softmax_cross_entropy(z, labels, compute_grad=False)
    assert grad2 is None and loss2 == loss and isinstance(loss2, float)
    buf = np.empty_like(z)
    _, g = ref.softmax_cross_entropy(z, labels, grad_out=buf)
    assert g is buf
    onehot = np.eye(5)[labels]
    np.testing.assert_allclose(buf, (np.exp(z) / np.exp(z).sum(1, keepdims=True) - onehot) / 4)


def test_softmax_cross_entropy_soft_targets():
    rng = np.random.default_rng(9)
    z = rng.normal(size=(3, 4)) * 2
    t = rng.dirichlet(np.ones(4), size=3)
    loss = _ce_loss_grad_check(z, t)
    lse = np.log(np.exp(z).sum(axis=1))
    assert loss == pytest.approx(float(np.mean(lse - (t * z).sum(axis=1))), rel=1e-13)
    # soft targets equal to one-hot rows give the integer-label loss
    labels = np.array([2, 0, 1])
    assert ref.softmax_cross_entropy(z, np.eye(4)[labels])[0] == pytest.approx(
        ref.softmax_cross_entropy(z, labels)[0], rel=1e-14)
    # unnormalised targets: the gradient formula (softmax * sum t - t) / B is still the
    # gradient of the loss
    _ce_loss_grad_check(z, rng.uniform(0, 1, size=(3, 4)))


def test_softmax_cross_entropy_bad_targets():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError):
        ref.softmax_cross_entropy(z, np.array([0, 3]))
    with pytest.raises(ValueError):
        ref.softmax_cross_entropy(z, np.array([-1, 0]))
    with pytest.raises(ValueError):
        ref.softmax_cross_entropy(z, np.zeros((2, 4)))


def test_sigmoid_bce():
    rng = np.random.default_rng(10)
    z = rng.normal(size=(3, 4)) * 3
    y = rng.uniform(0, 1, size=(3, 4))
    loss, grad = ref.sigmoid_bce(z, y)
    s = 1 / (1 + np.exp(-z))
    naive = -(y * np.log(s) + (1 - y) * np.log(1 - s))
    assert loss == pytest.approx(float(naive.mean()), rel=1e-12)
    numeric = numeric_grad(lambda: ref.sigmoid_bce(z, y, compute_grad=False)[0], z)
    assert rel_err(grad, numeric) <= TOL
    buf = np.empty_like(z)
    assert ref.sigmoid_bce(z, y, grad_out=buf)[1] is buf
    assert ref.sigmoid_bce(z, y, compute_grad=False)[1] is None


def test_mse():
    rng = np.random.default_rng(11)
    p, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    loss, grad = ref.mse(p, t)
    assert loss == pytest.approx(float(np.mean((p - t) ** 2)), rel=1e-14)
    numeric = numeric_grad(lambda: ref.mse(p, t, compute_grad=False)[0], p)
    assert rel_err(grad, numeric) <= TOL
    buf = np.empty_like(p)
    assert ref.mse(p, t, grad_out=buf)[1] is buf
    assert ref.mse(p, t, compute_grad=False)[1] is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_losses_finite_for_huge_logits(dtype):
    big = 1e4
    z = np.array([[big, -big, 0.0], [-big, big, big], [-big, -big, -big]], dtype=dtype)
    labels = np.array([1, 0, 2])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, grad = ref.softmax_cross_entropy(z, labels)
        # row 0: lse = 1e4, z_label = -1e4 -> 2e4 ; row 1: lse = 1e4 + log 2 -> 2e4 + log 2 ;
        # row 2: lse = -1e4 + log 3 -> log 3
        expected = (2 * big + (2 * big + math.log(2)) + math.log(3)) / 3
        assert loss == pytest.approx(expected, rel=1e-6)
        assert np.all(np.isfinite(grad)) and grad.dtype == dtype
        soft = np.full((3, 3), 1 / 3, dtype=dtype)
        loss_s, grad_s = ref.softmax_cross_entropy(z, soft)
        assert math.isfinite(loss_s) and np.all(np.isfinite(grad_s))
        correct = ref.softmax_cross_entropy(z, np.array([0, 1, 0]))[0]
        assert correct == pytest.approx((0 + math.log(2) + math.log(3)) / 3, rel=1e-5)

        zb = np.array([big, -big, big, -big], dtype=dtype)
        yb = np.array([0, 1, 1, 0], dtype=dtype)
        loss_b, grad_b = ref.sigmoid_bce(zb, yb)
        assert loss_b == pytest.approx(big / 2, rel=1e-6)   # two wrong by 1e4, two right by 0
        np.testing.assert_allclose(grad_b, np.array([1, -1, 0, 0]) / 4)
        assert grad_b.dtype == dtype


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float64, (2, 5), elements=st.floats(-1e4, 1e4)),
       st.lists(st.integers(0, 4), min_size=2, max_size=2))
def test_cross_entropy_nonnegative_and_finite(z, labels):
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, grad = ref.softmax_cross_entropy(z, np.array(labels))
    assert math.isfinite(loss) and loss >= -1e-12
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-12)


def test_losses_keep_float32():
    z = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    assert ref.softmax_cross_entropy(z, np.array([0, 1, 2]))[1].dtype == np.float32
    assert ref.softmax_cross_entropy(z, np.full((3, 4), 0.25, np.float32))[1].dtype == np.float32
    assert ref.sigmoid_bce(z, np.zeros_like(z))[1].dtype == np.float32
    assert ref.mse(z, np.zeros_like(z))[1].dtype == np.float32
    assert isinstance(ref.mse(z, np.zeros_like(z))[0], float)


# ------------------------------------------------------------------ optimisers

GRADS = [np.array([0.5, -1.0, 2.0]), np.array([-0.3, 0.8, 1.5]), np.array([0.1, 0.2, -0.7])]
P0 = np.array([1.0, -2.0, 0.5])


def test_sgd_plain_unrolled():
    lr, wd = 0.1, 0.01
    p = P0.copy()
    for g in GRADS:
        ref.sgd_step(p, g, lr=lr, weight_decay=wd)
    p1 = P0 - lr * (GRADS[0] + wd * P0)
    p2 = p1 - lr * (GRADS[1] + wd * p1)
    p3 = p2 - lr * (GRADS[2] + wd * p2)
    np.testing.assert_allclose(p, p3, rtol=1e-15)


def test_sgd_momentum_dampening_unrolled():
    lr, m, damp, wd = 0.1, 0.9, 0.2, 0.05
    p, buf = P0.copy(), np.full(3, 123.0)      # garbage in buf: first_step must overwrite it
    grads_before = [g.copy() for g in GRADS]
    for i, g in enumerate(GRADS):
        ref.sgd_step(p, g, lr=lr, momentum_buffer=buf, momentum=m, dampening=damp,
                     weight_decay=wd, first_step=(i == 0))
    d1 = GRADS[0] + wd * P0
    b1 = d1                                    # first step: no dampening
    p1 = P0 - lr * b1
    d2 = GRADS[1] + wd * p1
    b2 = m * b1 + (1 - damp) * d2
    p2 = p1 - lr * b2
    d3 = GRADS[2] + wd * p2
    b3 = m * b2 + (1 - damp) * d3
    p3 = p2 - lr * b3
    np.testing.assert_allclose(p, p3, rtol=1e-14)
    np.testing.assert_allclose(buf, b3, rtol=1e-14)
    for g, g0 in zip(GRADS, grads_before):     # the gradient is not modified
        np.testing.assert_array_equal(g, g0)


def test_sgd_nesterov_unrolled():
    lr, m = 0.05, 0.8
    p, buf = P0.copy(), np.zeros(3)
    for i, g in enumerate(GRADS):
        ref.sgd_step(p, g, lr=lr, momentum_buffer=buf, momentum=m, nesterov=True,
                     first_step=(i == 0))
    b1 = GRADS[0]
    p1 = P0 - lr * (GRADS[0] + m * b1)
    b2 = m * b1 + GRADS[1]
    p2 = p1 - lr * (GRADS[1] + m * b2)
    b3 = m * b2 + GRADS[2]
    p3 = p2 - lr * (GRADS[2] + m * b3)
    np.testing.assert_allclose(p, p3, rtol=1e-14)
    np.testing.assert_allclose(buf, b3, rtol=1e-14)


def test_sgd_momentum_needs_buffer_and_keeps_dtype():
    with pytest.raises(ValueError):
        ref.sgd_step(P0.copy(), GRADS[0], lr=0.1, momentum=0.9)
    p = P0.astype(np.float32)
    buf = np.zeros(3, np.float32)
    ref.sgd_step(p, GRADS[0].astype(np.float32), lr=0.1, momentum_buffer=buf, momentum=0.9,
                 weight_decay=0.1, first_step=True)
    assert p.dtype == np.float32 and buf.dtype == np.float32
    np.testing.assert_allclose(p, P0 - 0.1 * (GRADS[0] + 0.1 * P0), rtol=1e-6)


@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (0.1, False), (0.1, True)])
def test_adam_unrolled(wd, decoupled):
    lr, b1, b2, eps = 0.01, 0.8, 0.95, 1e-3
    p, m, v = P0.copy(), np.zeros(3), np.zeros(3)
    for t, g in enumerate(GRADS, start=1):
        ref.adam_step(p, g, m, v, step=t, lr=lr, beta1=b1, beta2=b2, eps=eps,
                      weight_decay=wd, decoupled=decoupled)
    # hand-unrolled: step 1
    q = P0 * (1 - lr * wd) if decoupled else P0
    g1 = GRADS[0] if decoupled else GRADS[0] + wd * P0
    m1 = (1 - b1) * g1
    v1 = (1 - b2) * g1 * g1
    q1 = q - (lr / (1 - b1)) * m1 / (np.sqrt(v1) / math.sqrt(1 - b2) + eps)
    # step 2
    q = q1 * (1 - lr * wd) if decoupled else q1
    g2 = GRADS[1] if decoupled else GRADS[1] + wd * q1
    m2 = b1 * m1 + (1 - b1) * g2
    v2 = b2 * v1 + (1 - b2) * g2 * g2
    q2 = q - (lr / (1 - b1 ** 2)) * m2 / (np.sqrt(v2) / math.sqrt(1 - b2 ** 2) + eps)
    # step 3
    q = q2 * (1 - lr * wd) if decoupled else q2
    g3 = GRADS[2] if decoupled else GRADS[2] + wd * q2
    m3 = b1 * m2 + (1 - b1) * g3
    v3 = b2 * v2 + (1 - b2) * g3 * g3
    q3 = q - (lr / (1 - b1 ** 3)) * m3 / (np.sqrt(v3) / math.sqrt(1 - b2 ** 3) + eps)
    np.testing.assert_allclose(p, q3, rtol=1e-13)
    np.testing.assert_allclose(m, m3, rtol=1e-13)
    np.testing.assert_allclose(v, v3, rtol=1e-13)


def test_adam_step_is_one_based_and_keeps_dtype():
    p, m, v = P0.copy(), np.zeros(3), np.zeros(3)
    with pytest.raises(ValueError):
        ref.adam_step(p, GRADS[0], m, v, step=0)
    p32, m32, v32 = (a.astype(np.float32) for a in (P0, np.zeros(3), np.zeros(3)))
    ref.adam_step(p32, GRADS[0].astype(np.float32), m32, v32, step=1, lr=0.1)
    assert p32.dtype == m32.dtype == v32.dtype == np.float32
    # the first Adam step moves every coordinate by ~lr * sign(g)
    np.testing.assert_allclose(p32, P0 - 0.1 * np.sign(GRADS[0]), rtol=1e-5)


SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, weight_decay=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
    dict(lr=0.05, momentum=0.7, nesterov=True, weight_decay=0.02),
]


def _torch_grad(p):
    """A parameter-dependent gradient used to drive several optimiser steps."""
    return p ** 3 - np.array([0.2, -0.4, 0.9, 1.1])


@pytest.mark.parametrize("cfg", SGD_CONFIGS)
def test_sgd_matches_torch(cfg):
    torch = pytest.importorskip("torch")
    p0 = np.array([0.3, -1.2, 0.8, 1.5])
    tp = torch.tensor(p0.copy(), requires_grad=True)
    opt = torch.optim.SGD([tp], **cfg)
    p, buf = p0.copy(), np.zeros_like(p0)
    kwargs = {k: v for k, v in cfg.items() if k != "lr"}
    for i in range(5):
        g = _torch_grad(p)
        tp.grad = torch.tensor(_torch_grad(tp.detach().numpy()))
        opt.step()
        ref.sgd_step(p, g, lr=cfg["lr"], momentum_buffer=buf, first_step=(i == 0), **kwargs)
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (0.1, False), (0.1, True)])
def test_adam_matches_torch(wd, decoupled):
    torch = pytest.importorskip("torch")
    p0 = np.array([0.3, -1.2, 0.8, 1.5])
    tp = torch.tensor(p0.copy(), requires_grad=True)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls([tp], lr=0.05, betas=(0.85, 0.99), eps=1e-6, weight_decay=wd)
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for step in range(1, 6):
        g = _torch_grad(p)
        tp.grad = torch.tensor(_torch_grad(tp.detach().numpy()))
        opt.step()
        ref.adam_step(p, g, m, v, step=step, lr=0.05, beta1=0.85, beta2=0.99, eps=1e-6,
                      weight_decay=wd, decoupled=decoupled)
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ cross-checks with torch

@pytest.mark.parametrize("name,params", ACT_CASES)
def test_activations_match_torch(name, params):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    fns = {
        "identity": lambda t: t,
        "relu": F.relu,
        "leaky_relu": lambda t: F.leaky_relu(t, params.get("negative_slope", 0.01)),
        "abs": torch.abs,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "softplus": lambda t: F.softplus(t, params.get("beta", 1.0),
                                         params.get("threshold", 20.0)),
        "cos": torch.cos,
        "gelu": F.gelu,
        "silu": F.silu,
    }
    rng = np.random.default_rng(12)
    x = np.concatenate([rng.normal(size=20) * 4, [0.0, -1e4, 1e4, 30.0, -30.0]])
    grad = rng.normal(size=x.shape)
    tx = torch.tensor(x, requires_grad=True)
    ty = fns[name](tx)
    ty.backward(torch.tensor(grad))
    y = ref.activation_forward(x, name, **params)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ref.activation_backward(grad, name, x=x, y=y, **params),
                               tx.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_losses_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(13)
    z = rng.normal(size=(6, 5)) * 3
    z[0, 0], z[1, 1] = 1e4, -1e4
    for target in (rng.integers(0, 5, size=6), rng.dirichlet(np.ones(5), size=6),
                   rng.uniform(0, 1, size=(6, 5))):
        tz = torch.tensor(z, requires_grad=True)
        tl = F.cross_entropy(tz, torch.tensor(target))
        tl.backward()
        loss, grad = ref.softmax_cross_entropy(z, target)
        assert loss == pytest.approx(tl.item(), rel=1e-12)
        np.testing.assert_allclose(grad, tz.grad.numpy(), rtol=1e-10, atol=1e-15)
    y = rng.uniform(0, 1, size=z.shape)
    tz = torch.tensor(z, requires_grad=True)
    tl = F.binary_cross_entropy_with_logits(tz, torch.tensor(y))
    tl.backward()
    loss, grad = ref.sigmoid_bce(z, y)
    assert loss == pytest.approx(tl.item(), rel=1e-12)
    np.testing.assert_allclose(grad, tz.grad.numpy(), rtol=1e-10, atol=1e-15)
    tz = torch.tensor(z, requires_grad=True)
    tl = F.mse_loss(tz, torch.tensor(y))
    tl.backward()
    loss, grad = ref.mse(z, y)
    assert loss == pytest.approx(tl.item(), rel=1e-12)
    np.testing.assert_allclose(grad, tz.grad.numpy(), rtol=1e-12)


def test_prelu_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(14)
    x = rng.normal(size=(5, 4))
    r = rng.normal(size=(5, 4))
    for w in (np.array([0.25]), rng.uniform(0, 0.5, size=4)):
        tx = torch.tensor(x, requires_grad=True)
        tw = torch.tensor(w, requires_grad=True)
        torch.nn.functional.prelu(tx, tw).backward(torch.tensor(r))
        gi, gw = ref.prelu_backward(r, x, w)
        np.testing.assert_allclose(gi, tx.grad.numpy(), rtol=1e-12)
        np.testing.assert_allclose(gw, tw.grad.numpy(), rtol=1e-12)


# ------------------------------------------------------------------ MLP

def _mlp_params(rng, sizes, bias=True):
    weights = [rng.normal(size=(o, i)) / math.sqrt(i) for i, o in zip(sizes[:-1], sizes[1:])]
    biases = [rng.normal(size=o) * 0.1 for o in sizes[1:]] if bias else None
    return weights, biases


def test_mlp_forward_composes_dense_forward():
    rng = np.random.default_rng(15)
    weights, biases = _mlp_params(rng, [3, 5, 4, 2])
    x = rng.normal(size=(6, 3))
    out, _ = ref.mlp_forward(x, weights, biases, "tanh")
    h = np.tanh(x @ weights[0].T + biases[0])
    h = np.tanh(h @ weights[1].T + biases[1])
    np.testing.assert_allclose(out, h @ weights[2].T + biases[2], rtol=1e-13)
    out_nb, _ = ref.mlp_forward(x, weights, None, "tanh")
    h = np.tanh(np.tanh(x @ weights[0].T) @ weights[1].T)
    np.testing.assert_allclose(out_nb, h @ weights[2].T, rtol=1e-13)


@pytest.mark.parametrize("activation,params", [
    ("relu", {}), ("tanh", {}), ("gelu", {}), ("silu", {}), ("sigmoid", {}),
    ("leaky_relu", {"negative_slope": 0.1}), ("softplus", {"beta": 2.0, "threshold": 3.0}),
    ("cos", {}),
])
def test_mlp_backward_matches_finite_differences(activation, params):
    rng = np.random.default_rng(16)
    sizes = [3, 5, 4, 2]
    weights, biases = _mlp_params(rng, sizes)
    x = rng.normal(size=(4, 3))
    r = rng.normal(size=(4, 2))

    def loss():
        return float(np.sum(r * ref.mlp_forward(x, weights, biases, activation, **params)[0]))

    _, cache = ref.mlp_forward(x, weights, biases, activation, **params)
    gx, gws, gbs = ref.mlp_backward(r, cache, weights, **params)
    assert rel_err(gx, numeric_grad(loss, x)) <= TOL
    for w, gw in zip(weights, gws):
        assert gw.shape == w.shape
        assert rel_err(gw, numeric_grad(loss, w)) <= TOL
    for b, gb in zip(biases, gbs):
        assert rel_err(gb, numeric_grad(loss, b)) <= TOL


def test_mlp_backward_without_bias_and_float32():
    rng = np.random.default_rng(17)
    weights, _ = _mlp_params(rng, [3, 4, 2], bias=False)
    x = rng.normal(size=(5, 3))
    r = rng.normal(size=(5, 2))
    _, cache = ref.mlp_forward(x, weights, None, "gelu")
    gx, gws, gbs = ref.mlp_backward(r, cache, weights)
    assert gbs == [None, None]

    def loss():
        return float(np.sum(r * ref.mlp_forward(x, weights, None, "gelu")[0]))

    assert rel_err(gws[0], numeric_grad(loss, weights[0])) <= TOL
    w32 = [w.astype(np.float32) for w in weights]
    b32 = [np.zeros(w.shape[0], np.float32) for w in weights]
    out, cache = ref.mlp_forward(x.astype(np.float32), w32, b32, "silu")
    assert out.dtype == np.float32
    gx, gws, gbs = ref.mlp_backward(r.astype(np.float32), cache, w32)
    assert all(a.dtype == np.float32 for a in [gx, *gws, *gbs])


# ------------------------------------------------------------------ NumpyMLPTrainer

def test_trainer_init():
    sizes = [20, 30, 10]
    tr = ref.NumpyMLPTrainer(sizes, batch_size=8, dtype=np.float64, seed=3)
    assert [w.shape for w in tr.weights] == [(30, 20), (10, 30)]
    assert [b.shape for b in tr.biases] == [(30,), (10,)]
    for w, fan_in in zip(tr.weights, sizes[:-1]):
        bound = math.sqrt(6.0 / fan_in)
        assert np.abs(w).max() <= bound
        assert np.abs(w).max() > 0.9 * bound                    # uniform: reaches the edges
        assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.15)
        assert abs(w.mean()) < 0.1 * bound
    assert all(not b.any() for b in tr.biases)
    ps = tr.params()
    assert len(ps) == 4
    assert ps[0] is tr.weights[0] and ps[1] is tr.biases[0]
    assert ps[2] is tr.weights[1] and ps[3] is tr.biases[1]
    tr32 = ref.NumpyMLPTrainer(sizes, batch_size=8)
    assert all(p.dtype == np.float32 for p in tr32.params())
    again = ref.NumpyMLPTrainer(sizes, batch_size=8, dtype=np.float64, seed=3)
    other = ref.NumpyMLPTrainer(sizes, batch_size=8, dtype=np.float64, seed=4)
    np.testing.assert_array_equal(again.weights[0], tr.weights[0])
    assert not np.array_equal(other.weights[0], tr.weights[0])


def _hand_trajectory(weights, biases, batches, lr, momentum):
    """mlp_forward + softmax_cross_entropy + mlp_backward + sgd_step, composed by hand."""
    weights = [w.copy() for w in weights]
    biases = [b.copy() for b in biases]
    bufs = [np.zeros_like(p) for p in weights + biases]
    losses = []
    for i, (x, labels) in enumerate(batches):
        out, cache = ref.mlp_forward(x, weights, biases, "relu")
        loss, g = ref.softmax_cross_entropy(out, labels)
        _, gws, gbs = ref.mlp_backward(g, cache, weights)
        for p, gp, buf in zip(weights + biases, gws + gbs, bufs):
            ref.sgd_step(p, gp, lr=lr, momentum_buffer=buf, momentum=momentum,
                         first_step=(i == 0))
        losses.append(loss)
    return losses, weights, biases


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_trainer_matches_composed_reference(dtype, rtol, momentum):
    rng = np.random.default_rng(18)
    sizes, batch = [6, 8, 7, 3], 5
    tr = ref.NumpyMLPTrainer(sizes, batch, lr=0.5, momentum=momentum, dtype=dtype, seed=1)
    # nonzero biases so that a missing bias term would show
    for b in tr.biases:
        b[...] = rng.normal(size=b.shape) * 0.1
    batches = [(rng.normal(size=(batch, 6)).astype(dtype), rng.integers(0, 3, size=batch))
               for _ in range(3)]
    expected, ws, bs = _hand_trajectory(tr.weights, tr.biases, batches, lr=0.5,
                                        momentum=momentum)
    w0 = tr.weights[0]
    losses = [tr.step(x, labels) for x, labels in batches]
    assert all(isinstance(v, float) for v in losses)
    np.testing.assert_allclose(losses, expected, rtol=rtol)
    assert len(set(losses)) == 3                      # the parameters did move
    assert tr.weights[0] is w0                        # updated in place
    for p, q in zip(tr.weights + tr.biases, ws + bs):
        assert p.dtype == dtype
        np.testing.assert_allclose(p, q, rtol=10 * rtol, atol=10 * rtol)


def test_trainer_learns():
    rng = np.random.default_rng(19)
    batch = 256
    tr = ref.NumpyMLPTrainer([16, 32, 32, 4], batch, lr=0.05, dtype=np.float32)
    x = rng.normal(size=(batch, 16)).astype(np.float32)
    labels = (x[:, :4] ** 2).argmax(axis=1)
    first = tr.step(x, labels)
    for _ in range(20):
        last = tr.step(x, labels)
    assert last < 0.8 * first


def test_trainer_step_makes_no_large_allocations():
    """No temporaries the size of an activation or a weight matrix (NumPy's fixed-size
    ufunc buffer and the (B,) gathers of the labels are all that may be allocated)."""
    rng = np.random.default_rng(21)
    batch, hidden = 256, 256
    tr = ref.NumpyMLPTrainer([16, hidden, hidden, 4], batch, dtype=np.float32)
    x = rng.normal(size=(batch, 16)).astype(np.float32)
    labels = rng.integers(0, 4, size=batch)
    tr.step(x, labels)
    tracemalloc.start()
    try:
        tr.step(x, labels)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    smallest_big_buffer = min(batch * hidden, hidden * hidden) * 4
    assert peak < smallest_big_buffer / 2, f"step allocated {peak} bytes"


def test_trainer_rejects_wrong_batch_shape():
    tr = ref.NumpyMLPTrainer([4, 3, 2], batch_size=5)
    with pytest.raises(ValueError):
        tr.step(np.zeros((4, 4), np.float32), np.zeros(4, int))
    with pytest.raises(ValueError):
        tr.step(np.zeros((5, 4), np.float32), np.array([0, 1, 2, 0, 1]))
    with pytest.raises(ValueError):
        tr.step(np.zeros((5, 4), np.float32), np.array([0, 1, -1, 0, 1]))


def test_trainer_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(20)
    sizes, batch = [5, 7, 3], 4
    tr = ref.NumpyMLPTrainer(sizes, batch, lr=0.3, momentum=0.9, dtype=np.float64)
    layers = []
    for w, b in zip(tr.weights, tr.biases):
        lin = torch.nn.Linear(w.shape[1], w.shape[0]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(w))
            lin.bias.copy_(torch.tensor(b))
        layers += [lin, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    for _ in range(3):
        x = rng.normal(size=(batch, 5))
        labels = rng.integers(0, 3, size=batch)
        opt.zero_grad()
        tl = torch.nn.functional.cross_entropy(model(torch.tensor(x)), torch.tensor(labels))
        tl.backward()
        opt.step()
        assert tr.step(x, labels) == pytest.approx(tl.item(), rel=1e-12)
