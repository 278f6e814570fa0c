"""Curvature: second-derivative kernels, hvp, gnvp, hessian_eigs, hessian_trace (float64)."""
import numpy as np
import pytest
from conftest import assert_close

import fastprop as fp
from fastprop import ops, reference

ACTS = list(ops.ACTIVATIONS)
ACT_PARAMS = {"leaky_relu": {"negative_slope": 0.2}, "softplus": {"beta": 1.5, "threshold": 4.0}}
ACT_CLASSES = {"identity": fp.Identity, "relu": fp.ReLU, "leaky_relu": fp.LeakyReLU,
               "abs": fp.Abs, "sigmoid": fp.Sigmoid, "tanh": fp.Tanh, "softplus": fp.Softplus,
               "cos": fp.Cos, "gelu": fp.GELU, "silu": fp.SiLU}
LOSSES = ["xent", "xent_soft", "bce", "mse"]


def away_from_kinks(x):
    x = x.copy()
    x[np.abs(x) < 1e-2] += 0.1
    x[np.abs(1.5 * x - 4.0) < 1e-2] += 0.1   # the softplus threshold of ACT_PARAMS
    return x


# ---------------------------------------------------------------- the kernels

@pytest.mark.parametrize("act", ACTS)
def test_activation_second_is_the_derivative_of_the_backward(rng, act):
    p = ACT_PARAMS.get(act, {})
    x = away_from_kinks(2 * rng.standard_normal(40))
    g = rng.standard_normal(40)
    d2 = ops.activation_second(g, act, x=x, **p)
    # f″ elementwise: the central difference of f′ = activation_backward(1, x)
    h = 1e-6
    fprime = lambda t: ops.activation_backward(np.ones_like(t), act, x=t, **p)  # noqa: E731
    num = g * (fprime(x + h) - fprime(x - h)) / (2 * h)
    assert_close(d2, num, rtol=1e-7)
    assert_close(d2, reference.activation_second(g, act, x=x, **p), np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTS)
def test_activation_rbackward_matches_reference(rng, dtype, act):
    p = ACT_PARAMS.get(act, {})
    g, rg, x, rx = (rng.standard_normal((6, 9)).astype(dtype) for _ in range(4))
    x = away_from_kinks(x)
    want, rwant = reference.activation_rbackward(g.astype(np.float64), rg.astype(np.float64), act,
                                                 x=x.astype(np.float64), rx=rx.astype(np.float64),
                                                 **p)
    out, rout = ops.activation_rbackward(g, rg, act, x=x, rx=rx, **p)
    tol = {np.float32: 1e-5, np.float64: 1e-12}[dtype]
    assert_close(out, want, rtol=tol)
    assert_close(rout, rwant, rtol=tol)
    # in place on grad and rgrad
    g2, rg2 = g.copy(), rg.copy()
    res = ops.activation_rbackward(g2, rg2, act, x=x, rx=rx, out=g2, rout=rg2, **p)
    assert res[0] is g2 and res[1] is rg2
    assert np.array_equal(g2, out) and np.array_equal(rg2, rout)


def test_second_derivatives_are_finite_far_out():
    x = np.array([-1e4, -50.0, 50.0, 1e4])
    for act in ACTS:
        for dtype in (np.float32, np.float64):
            d2 = ops.activation_second(np.ones(4, dtype), act, x=x.astype(dtype))
            assert np.all(np.isfinite(d2)), (act, dtype, d2)
            if act not in ("cos",):
                assert np.all(np.abs(d2) < 1e-6), (act, d2)


def test_activation_second_bad_input():
    x = np.zeros(4)
    with pytest.raises(TypeError, match="x has dtype float32"):
        ops.activation_second(np.zeros(4), "tanh", x=x.astype(np.float32))
    with pytest.raises(ValueError, match="x has shape"):
        ops.activation_second(np.zeros(4), "tanh", x=np.zeros(5))
    with pytest.raises(ValueError, match="unknown activation"):
        ops.activation_second(np.zeros(4), "swish", x=x)
    with pytest.raises(ValueError, match="rx has shape"):
        ops.activation_rbackward(x, x.copy(), "tanh", x=x, rx=np.zeros(3))
    g = np.zeros(4)
    with pytest.raises(ValueError, match="rout overlaps"):
        ops.activation_rbackward(g, x.copy(), "tanh", x=x, rx=x, rout=g)


def _loss_case(kind, rng, shape=(5, 4)):
    z = 2 * rng.standard_normal(shape)
    if kind == "xent":
        return "softmax_cross_entropy", z, rng.integers(0, shape[1], shape[0])
    if kind == "xent_soft":
        return "softmax_cross_entropy", z, rng.random(shape)   # rows need not sum to 1
    if kind == "bce":
        return "sigmoid_bce", z, rng.random(shape)
    return "mse", z, rng.standard_normal(shape)


@pytest.mark.parametrize("kind", LOSSES)
def test_loss_hvp_is_the_derivative_of_the_gradient(rng, kind):
    name, z, t = _loss_case(kind, rng)
    v = rng.standard_normal(z.shape)
    hv = getattr(ops, f"{name}_hvp")(z, t, v)
    grad = lambda r: getattr(ops, name)(z + r * v, t)[1]  # noqa: E731
    h = 1e-6
    assert_close(hv, (grad(h) - grad(-h)) / (2 * h), rtol=1e-7)
    assert_close(hv, getattr(reference, f"{name}_hvp")(z, t, v), np.float64)
    hv32 = getattr(ops, f"{name}_hvp")(z.astype(np.float32), t if t.dtype.kind == "i" else
                                       t.astype(np.float32), v.astype(np.float32))
    assert hv32.dtype == np.float32
    assert_close(hv32, hv, rtol=1e-5)


def test_loss_hvp_bad_input(rng):
    z, v = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    with pytest.raises(ValueError, match="outside"):
        ops.softmax_cross_entropy_hvp(z, np.array([0, 4, 1]), v)
    with pytest.raises(ValueError, match="v has shape"):
        ops.softmax_cross_entropy_hvp(z, np.array([0, 1, 1]), v[:2])
    with pytest.raises(TypeError, match="v has dtype"):
        ops.sigmoid_bce_hvp(z, np.zeros((3, 4)), v.astype(np.float32))
    with pytest.raises(ValueError, match="target has shape"):
        ops.mse_hvp(z, np.zeros((3, 3)), v)
    with pytest.raises(ValueError, match="out overlaps"):
        ops.softmax_cross_entropy_hvp(z, np.array([0, 1, 1]), v, out=v)


# ---------------------------------------------------------------- models

def make_model(act="tanh", sizes=(4, 6, 5, 3), seed=0, dtype=np.float64, nested=False):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(fp.Linear(a, b, dtype=dtype, rng=seed + i, bias=i != 1))
        if i < len(sizes) - 2:
            layers.append(ACT_CLASSES[act](**ACT_PARAMS.get(act, {})))
    if nested:
        return fp.Sequential(fp.Sequential(*layers[:2]), fp.Sequential(*layers[2:]))
    return fp.Sequential(*layers)


def make_loss(kind, rng, batch, classes):
    if kind == "xent":
        return fp.SoftmaxCrossEntropy(), rng.integers(0, classes, batch)
    if kind == "xent_soft":
        t = rng.random((batch, classes))
        return fp.SoftmaxCrossEntropy(), t / t.sum(axis=1, keepdims=True)
    if kind == "bce":
        return fp.SigmoidBCE(), (rng.random((batch, classes)) > 0.5).astype(np.float64)
    return fp.MSE(), rng.standard_normal((batch, classes))


def gradient_at(model, loss, x, y, theta):
    """∇J at θ through the ordinary backward (restores nothing: callers restore θ)."""
    fp.vector_to_parameters(theta, model)
    model.zero_grad()
    loss(model.forward(x), y)
    model.backward(loss.backward())
    return np.concatenate([p.grad.reshape(-1) for p in model.parameters()])


def hvp_by_differences(model, loss, x, y, v, eps=1e-5):
    theta = fp.parameters_to_vector(model)
    gp = gradient_at(model, loss, x, y, theta + eps * v)
    gm = gradient_at(model, loss, x, y, theta - eps * v)
    fp.vector_to_parameters(theta, model)
    return (gp - gm) / (2 * eps)


def rel_err(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("act", ACTS)
def test_hvp_matches_central_differences_of_the_gradient(rng, act, kind):
    model = make_model(act)
    x = rng.standard_normal((7, 4))
    loss, y = make_loss(kind, rng, 7, 3)
    v = rng.standard_normal(model.num_parameters())
    hv = fp.hvp(model, loss, x, y, v)
    assert hv.dtype == np.float64 and hv.shape == (model.num_parameters(),)
    assert rel_err(hv, hvp_by_differences(model, loss, x, y, v)) <= 1e-6


def test_hvp_of_a_nested_sequential_and_an_activation_first(rng):
    model = fp.Sequential(fp.Tanh(), make_model("silu", nested=True))
    x = rng.standard_normal((6, 4))
    loss, y = make_loss("xent", rng, 6, 3)
    v = rng.standard_normal(model.num_parameters())
    assert rel_err(fp.hvp(model, loss, x, y, v), hvp_by_differences(model, loss, x, y, v)) <= 1e-6


@pytest.mark.parametrize("n_slopes", [1, 6])
@pytest.mark.parametrize("kind", ["xent", "mse"])
def test_hvp_and_gnvp_with_prelu(rng, n_slopes, kind):
    model = fp.Sequential(fp.PReLU(dtype=np.float64, init=0.3),
                          fp.Linear(4, 6, dtype=np.float64, rng=0),
                          fp.PReLU(n_slopes, init=0.1, dtype=np.float64),
                          fp.Linear(6, 3, dtype=np.float64, rng=1))
    x = away_from_kinks(rng.standard_normal((8, 4)))
    loss, y = make_loss(kind, rng, 8, 3)
    v = rng.standard_normal(model.num_parameters())
    assert rel_err(fp.hvp(model, loss, x, y, v), hvp_by_differences(model, loss, x, y, v)) <= 1e-6
    z = model.forward(x)
    Jo = output_jacobian(model, x)
    H_loss = np.stack([getattr(reference, f"{loss.kernel}_hvp")(z, y, e.reshape(z.shape)).reshape(-1)
                       for e in np.eye(z.size)], axis=1)
    assert rel_err(hessian_by_columns(model, loss, x, y, fp.gnvp), Jo.T @ H_loss @ Jo) <= 1e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_w", [1, 5])
def test_prelu_r_kernels_match_reference(rng, dtype, n_w):
    x, rx, g, rg = (rng.standard_normal((7, 5)).astype(dtype) for _ in range(4))
    w, vw = rng.standard_normal(n_w).astype(dtype), rng.standard_normal(n_w).astype(dtype)
    tol = {np.float32: 1e-5, np.float64: 1e-12}[dtype]
    for r in (rx, None):
        assert_close(ops.prelu_rforward(x, w, vw, rx=r), reference.prelu_rforward(x, w, vw, rx=r),
                     rtol=tol)
        for gg in (g, None):
            hw0 = rng.standard_normal(n_w).astype(dtype)
            ours = ops.prelu_rbackward(gg, rg, x, w, vw, rx=r, hv_weight=hw0.copy(), accumulate=True)
            want = reference.prelu_rbackward(gg, rg, x, w, vw, rx=r, hv_weight=hw0.copy(),
                                             accumulate=True)
            assert (ours[0] is None) == (gg is None)
            for a, b in zip(ours, want):
                if b is not None:
                    assert_close(a, b, rtol=tol)
    with pytest.raises(ValueError, match="v_weight has shape"):
        ops.prelu_rforward(x, w, np.zeros(n_w + 1, dtype))
    with pytest.raises(ValueError, match="rx has shape"):
        ops.prelu_rbackward(g, rg, x, w, vw, rx=rx[:3])


@pytest.mark.parametrize("act", ["tanh", "gelu", "relu"])
def test_hvp_is_symmetric_and_linear(rng, act):
    model = make_model(act)
    x = rng.standard_normal((8, 4))
    loss, y = make_loss("xent", rng, 8, 3)
    n = model.num_parameters()
    u, v = rng.standard_normal(n), rng.standard_normal(n)
    hu, hv = fp.hvp(model, loss, x, y, u), fp.hvp(model, loss, x, y, v)
    scale = np.abs(hu).max() * np.abs(v).max() * n
    assert abs(u @ hv - v @ hu) <= 1e-13 * scale
    combo = fp.hvp(model, loss, x, y, 2.5 * u - 0.75 * v)
    assert_close(combo, 2.5 * hu - 0.75 * hv, rtol=1e-13)
    assert np.array_equal(fp.hvp(model, loss, x, y, np.zeros(n)), np.zeros(n))


def numpy_loss(theta, sizes, act, x, y):
    """J(θ) of make_model's network in plain NumPy (reference.mlp_forward), for Hessians by hand."""
    weights, biases, offset = [], [], 0
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        weights.append(theta[offset:offset + a * b].reshape(b, a))
        offset += a * b
        if i != 1:
            biases.append(theta[offset:offset + b])
            offset += b
        else:
            biases.append(np.zeros(b))
    out, _ = reference.mlp_forward(x, weights, biases, act, **ACT_PARAMS.get(act, {}))
    return reference.softmax_cross_entropy(out, y)[0]


def finite_difference_hessian(f, theta, h=1e-4):
    n = theta.size
    H = np.empty((n, n))
    e = np.eye(n) * h
    for i in range(n):
        for j in range(i, n):
            H[i, j] = H[j, i] = (f(theta + e[i] + e[j]) - f(theta + e[i] - e[j])
                                 - f(theta - e[i] + e[j]) + f(theta - e[i] - e[j])) / (4 * h * h)
    return H


def hessian_by_columns(model, loss, x, y, product=fp.hvp):
    n = model.num_parameters()
    return np.stack([product(model, loss, x, y, e) for e in np.eye(n)], axis=1)


TINY = (2, 3, 2)


@pytest.mark.parametrize("act", ["tanh", "softplus"])
def test_the_hessian_from_hvp_matches_a_numpy_finite_difference_hessian(rng, act):
    model = make_model(act, sizes=TINY, seed=3)
    x = rng.standard_normal((5, 2))
    loss, y = make_loss("xent", rng, 5, 2)
    H = hessian_by_columns(model, loss, x, y)
    assert np.allclose(H, H.T, rtol=0, atol=1e-14)
    theta = fp.parameters_to_vector(model)
    H_fd = finite_difference_hessian(lambda t: numpy_loss(t, TINY, act, x, y), theta)
    assert rel_err(H, H_fd) <= 1e-6


def test_linear_model_with_mse_has_hessian_2_xtx_over_n(rng):
    X = rng.standard_normal((11, 4))
    model = fp.Sequential(fp.Linear(4, 1, dtype=np.float64, rng=0))
    y = rng.standard_normal((11, 1))
    H = hessian_by_columns(model, fp.MSE(), X, y)
    Xa = np.hstack([X, np.ones((11, 1))])   # weight (1, 4), then bias (1,)
    assert_close(H, 2 * Xa.T @ Xa / 11, np.float64)
    # and Gauss–Newton is the same (the model is linear)
    assert_close(hessian_by_columns(model, fp.MSE(), X, y, fp.gnvp), 2 * Xa.T @ Xa / 11, np.float64)


def test_hvp_leaves_parameters_grads_and_the_forward_alone(rng):
    model = make_model("gelu")
    loss, y = make_loss("xent", rng, 6, 3)
    x1, x2 = rng.standard_normal((6, 4)), rng.standard_normal((9, 4))
    ly = make_loss("xent", rng, 9, 3)[1]
    out1 = model.forward(x1)
    for p in model.parameters():
        p.grad[...] = rng.standard_normal(p.shape)
    before = [(p.data.copy(), p.grad.copy()) for p in model.parameters()]
    v = rng.standard_normal(model.num_parameters())
    fp.hvp(model, loss, x2, ly, v)
    fp.gnvp(model, loss, x2, ly, v)
    for p, (d, g) in zip(model.parameters(), before):
        assert np.array_equal(p.data, d) and np.array_equal(p.grad, g)
    # the backward of the earlier forward still sees x1
    gy = rng.standard_normal(out1.shape)
    gx = model.backward(gy)
    fresh = make_model("gelu")
    fresh.forward(x1)
    for p in fresh.parameters():
        p.grad[...] = 0
    assert_close(gx, fresh.backward(gy), np.float64)


def test_hvp_in_chunks_and_into_out(rng):
    model = make_model("tanh")
    x = rng.standard_normal((10, 4))
    loss, y = make_loss("bce", rng, 10, 3)
    v = rng.standard_normal(model.num_parameters())
    whole = fp.hvp(model, loss, x, y, v)
    assert_close(fp.hvp(model, loss, x, y, v, batch_size=3), whole, rtol=1e-13)
    out = np.full(model.num_parameters(), np.nan)
    assert fp.hvp(model, loss, x, y, v, out=out) is out
    assert np.array_equal(out, whole)


def test_hvp_float32_agrees_with_float64(rng):
    m64 = make_model("silu")
    m32 = make_model("silu", dtype=np.float32)
    x = rng.standard_normal((8, 4))
    loss, y = make_loss("xent", rng, 8, 3)
    v = rng.standard_normal(m64.num_parameters())
    h32 = fp.hvp(m32, loss, x, y, v)
    assert h32.dtype == np.float32
    assert_close(h32, fp.hvp(m64, loss, x, y, v), rtol=1e-4)


class Doubler(fp.nn.Activation):
    """A user's module without an R-operator of its own."""
    r_supported = False


def test_hvp_refuses_what_it_does_not_support(rng):
    x = rng.standard_normal((3, 4))
    y = np.array([0, 1, 2])
    custom = fp.Sequential(fp.Linear(4, 3, dtype=np.float64), Doubler())
    with pytest.raises(TypeError, match="Doubler has no R-operator"):
        fp.hvp(custom, fp.SoftmaxCrossEntropy(), x, y, np.zeros(custom.num_parameters()))
    model = make_model()
    n = model.num_parameters()
    with pytest.raises(TypeError, match="loss must be"):
        fp.hvp(model, lambda a, b: 0.0, x, y, np.zeros(n))
    with pytest.raises(TypeError, match="model must be"):
        fp.hvp("model", fp.MSE(), x, y, np.zeros(n))
    with pytest.raises(ValueError, match=rf"v has shape \({n - 1},\), expected \({n},\)"):
        fp.hvp(model, fp.SoftmaxCrossEntropy(), x, y, np.zeros(n - 1))
    with pytest.raises(ValueError, match="x has 5 features"):
        fp.hvp(model, fp.SoftmaxCrossEntropy(), np.zeros((3, 5)), y, np.zeros(n))


def test_flat_layout_helpers(rng):
    model = make_model()
    vec = fp.parameters_to_vector(model)
    views = fp.vector_views(vec, model)
    for p, view in zip(model.parameters(), views):
        assert view.shape == p.shape and np.array_equal(view, p.data)
        assert np.shares_memory(view, vec)
    (flat, _), = fp.nn.flat_runs(model.parameters())
    assert np.array_equal(vec, flat)   # the model's own buffer has the same layout
    new = rng.standard_normal(vec.size)
    fp.vector_to_parameters(new, model)
    assert np.array_equal(fp.parameters_to_vector(model), new)
    with pytest.raises(ValueError, match="expected"):
        fp.vector_to_parameters(new[:-1], model)


def test_hvp_matches_torch(rng):
    torch = pytest.importorskip("torch")
    model = fp.Sequential(fp.Linear(4, 6, dtype=np.float64, rng=0), fp.GELU(),
                          fp.Linear(6, 3, dtype=np.float64, rng=1))
    x = rng.standard_normal((7, 4))
    y = rng.integers(0, 3, 7)
    v = rng.standard_normal(model.num_parameters())
    ours = fp.hvp(model, fp.SoftmaxCrossEntropy(), x, y, v)
    W0, b0, W1, b1 = (torch.tensor(p.data) for p in model.parameters())
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.size for p in model.parameters()]

    def J(theta):
        parts = torch.split(theta, sizes)
        w0, bb0, w1, bb1 = (t.reshape(s) for t, s in zip(parts, shapes))
        h = torch.nn.functional.gelu(torch.tensor(x) @ w0.T + bb0)
        return torch.nn.functional.cross_entropy(h @ w1.T + bb1, torch.tensor(y))

    theta = torch.cat([W0.reshape(-1), b0, W1.reshape(-1), b1])
    _, theirs = torch.autograd.functional.hvp(J, theta, torch.tensor(v))
    assert_close(ours, theirs.numpy(), rtol=1e-12)


# ---------------------------------------------------------------- Gauss–Newton

def output_jacobian(model, x, eps=1e-6):
    """∂ vec(model(x)) / ∂θ by central differences, (B·C, n)."""
    theta = fp.parameters_to_vector(model)
    cols = []
    for i in range(theta.size):
        t = theta.copy()
        t[i] += eps
        fp.vector_to_parameters(t, model)
        up = model.forward(x).reshape(-1)
        t[i] -= 2 * eps
        fp.vector_to_parameters(t, model)
        down = model.forward(x).reshape(-1)
        cols.append((up - down) / (2 * eps))
    fp.vector_to_parameters(theta, model)
    return np.stack(cols, axis=1)


def check_gauss_newton(model, loss, x, y):
    """The Gauss–Newton matrix from gnvp, column by column, against J_outᵀ H_loss J_out with
    J_out by differences and H_loss from the reference kernels; returns it."""
    z = model.forward(x)
    Jo = output_jacobian(model, x)
    H_loss = np.stack([getattr(reference, f"{loss.kernel}_hvp")(z, y, e.reshape(z.shape)).reshape(-1)
                       for e in np.eye(z.size)], axis=1)
    G = hessian_by_columns(model, loss, x, y, fp.gnvp)
    assert rel_err(G, Jo.T @ H_loss @ Jo) <= 1e-7
    return G


@pytest.mark.parametrize("kind", LOSSES)
def test_gnvp_is_jt_hloss_j(rng, kind):
    model = make_model("tanh", sizes=(3, 4, 3))
    x = rng.standard_normal((5, 3))
    loss, y = make_loss(kind, rng, 5, 3)
    G = check_gauss_newton(model, loss, x, y)
    # and it differs from the Hessian here (tanh has curvature)
    assert rel_err(G, hessian_by_columns(model, loss, x, y)) > 1e-3


@pytest.mark.parametrize("kind", LOSSES)
def test_gnvp_is_positive_semidefinite(rng, kind):
    model = make_model("silu")
    x = rng.standard_normal((9, 4))
    loss, y = make_loss(kind, rng, 9, 3)
    n = model.num_parameters()
    quad = []
    for _ in range(30):
        v = rng.standard_normal(n)
        quad.append(v @ fp.gnvp(model, loss, x, y, v) / (v @ v))
    assert min(quad) >= -1e-14
    # while the Hessian itself is indefinite here
    H = hessian_by_columns(model, loss, x, y)
    assert np.linalg.eigvalsh(H).min() < 0 < np.linalg.eigvalsh(H).max()


# ---------------------------------------------------------------- eigenvalues and trace

def test_hessian_eigs_match_eigvalsh(rng):
    model = make_model("tanh", sizes=(3, 4, 3), seed=5)
    X = rng.standard_normal((12, 3))
    loss, y = make_loss("xent", rng, 12, 3)
    H = hessian_by_columns(model, loss, X, y)
    exact = np.linalg.eigvalsh(H)
    top = fp.hessian_eigs(model, loss, X, y, k=3)
    assert_close(top, exact[-3:], rtol=1e-9)
    bottom = fp.hessian_eigs(model, loss, X, y, k=2, which="SA")
    assert_close(bottom, exact[:2], rtol=1e-9)
    vals, vecs = fp.hessian_eigs(model, loss, X, y, k=1, return_eigenvectors=True)
    assert vecs.shape == (model.num_parameters(), 1)
    assert_close(H @ vecs[:, 0], vals[0] * vecs[:, 0], rtol=1e-8)
    # in chunks: the same Hessian
    assert_close(fp.hessian_eigs(model, loss, X, y, batch_size=5), exact[-1:], rtol=1e-9)
    G = hessian_by_columns(model, loss, X, y, fp.gnvp)
    assert_close(fp.hessian_eigs(model, loss, X, y, gauss_newton=True),
                 np.linalg.eigvalsh(G)[-1:], rtol=1e-9)
    with pytest.raises(ValueError, match="k must be"):
        fp.hessian_eigs(model, loss, X, y, k=model.num_parameters())


def test_hessian_trace_is_exact_for_a_diagonal_hessian(rng):
    # orthogonal columns: 2XᵀX/n is diagonal, and vᵀDv = tr D for every ±1 vector
    Q, _ = np.linalg.qr(rng.standard_normal((16, 4)))
    X = Q * np.array([1.0, 2.0, 3.0, 4.0])
    model = fp.Sequential(fp.Linear(4, 1, bias=False, dtype=np.float64, rng=0))
    y = rng.standard_normal((16, 1))
    est = fp.hessian_trace(model, fp.MSE(), X, y, n_samples=3)
    assert est == pytest.approx(np.trace(2 * X.T @ X / 16), rel=1e-13)


def test_hessian_trace_estimates_the_trace(rng):
    model = make_model("tanh", sizes=(3, 4, 3), seed=1)
    X = rng.standard_normal((10, 3))
    loss, y = make_loss("mse", rng, 10, 3)
    exact = np.trace(hessian_by_columns(model, loss, X, y))
    est, std = fp.hessian_trace(model, loss, X, y, n_samples=400, seed=2, return_std=True)
    assert 0 < std < 0.2 * abs(exact)
    assert abs(est - exact) <= 4 * std
    with pytest.raises(ValueError, match="n_samples"):
        fp.hessian_trace(model, loss, X, y, n_samples=0)
