"""fastprop.autodiff: jvp, vjp, jacobian, hessian, per-example gradients, DP-SGD (float64)."""
import copy

import numpy as np
import pytest
from conftest import assert_close, assert_unchanged, snapshot
from test_curvature import LOSSES, hessian_by_columns, make_loss, make_model, rel_err
from test_graph import lin, residual_mlp, shared_layer_network, two_input_network

import fastprop as fp
from fastprop.autodiff import _block_hessian, _leaves

F64 = np.float64


def chain(dtype=F64, seed=0):
    """Every leaf the chain paths know: Linear (with and without bias), PReLU (one slope and
    one per feature), LowRankLinear, activations, nested Sequentials."""
    return fp.Sequential(
        fp.Linear(5, 7, dtype=dtype, rng=seed, bias_init=0.1), fp.PReLU(7, init=0.3, dtype=dtype),
        fp.Sequential(fp.LowRankLinear(7, 6, 2, dtype=dtype, rng=seed + 1), fp.Tanh()),
        fp.Linear(6, 4, bias=False, dtype=dtype, rng=seed + 2), fp.PReLU(dtype=dtype),
        fp.Linear(4, 3, dtype=dtype, rng=seed + 3))


def r_chain(dtype=F64, seed=0):
    """The chain without LowRankLinear (which has no R-operator)."""
    return fp.Sequential(
        fp.Linear(5, 7, dtype=dtype, rng=seed, bias_init=0.1), fp.PReLU(7, init=0.3, dtype=dtype),
        fp.Sequential(fp.Linear(7, 6, dtype=dtype, rng=seed + 1), fp.GELU()),
        fp.Linear(6, 4, bias=False, dtype=dtype, rng=seed + 2), fp.PReLU(dtype=dtype),
        fp.Softplus(beta=1.5), fp.Linear(4, 3, dtype=dtype, rng=seed + 3))


def call(model, x):
    return model(*x) if isinstance(x, tuple) else model(x)


def gradient(model, loss, x, y):
    """The ordinary backward's flat gradient, on a copy (the model is left alone)."""
    m = copy.deepcopy(model)
    m.zero_grad()
    loss(call(m, x), y)
    m.backward(loss.backward())
    return np.concatenate([p.grad.ravel() for p in m.parameters()])


def per_example_loop(model, loss, x, y):
    """Row i: the gradient of example i's loss alone (a batch of one row)."""
    xs = x if isinstance(x, tuple) else (x,)
    rows = []
    for i in range(len(y)):
        xi = tuple(a[i:i + 1] for a in xs)
        rows.append(gradient(model, loss, xi if isinstance(x, tuple) else xi[0], y[i:i + 1]))
    return np.array(rows)


def with_theta(model, theta, fn):
    old = fp.parameters_to_vector(model)
    fp.vector_to_parameters(theta, model)
    try:
        return fn()
    finally:
        fp.vector_to_parameters(old, model)


# ---------------------------------------------------------------- jvp, vjp, jacobian

@pytest.mark.parametrize("which", ["v", "vx", "both"])
@pytest.mark.parametrize("net", ["chain", "residual", "two_inputs"])
def test_jvp_matches_central_differences(rng, which, net):
    model = {"chain": r_chain, "residual": residual_mlp, "two_inputs": two_input_network}[net]()
    x = (rng.standard_normal((6, 4)), rng.standard_normal((6, 3))) if net == "two_inputs" \
        else rng.standard_normal((6, 5))
    xs = x if isinstance(x, tuple) else (x,)
    v = rng.standard_normal(model.num_parameters()) if which != "vx" else None
    vx = tuple(rng.standard_normal(a.shape) for a in xs) if which != "v" else None
    snap = snapshot(model)
    y, Jv = fp.jvp(model, x, v=v, vx=(vx if net == "two_inputs" else vx and vx[0]))
    assert_unchanged(model, snap)
    theta, e = fp.parameters_to_vector(model), 1e-6

    def at(sign):
        th = theta if v is None else theta + sign * e * v
        xx = xs if vx is None else tuple(a + sign * e * d for a, d in zip(xs, vx))
        return with_theta(model, th, lambda: call(model, xx if len(xx) > 1 else xx[0]))
    assert_close(y, call(model, x), F64)
    assert rel_err(Jv, (at(1) - at(-1)) / (2 * e)) <= 1e-7


def test_jvp_along_the_parameters_is_the_gradient_direction(rng):
    # for MSE against zero targets with the outputs' own 2/n, ⟨∇J, v⟩ = mean 2·y·Jv
    model = r_chain()
    x = rng.standard_normal((8, 5))
    v = rng.standard_normal(model.num_parameters())
    y, Jv = fp.jvp(model, x, v)
    g = gradient(model, fp.MSE(), x, np.zeros((8, 3)))
    assert_close(np.dot(g, v), 2 * np.mean(y * Jv), F64, rtol=1e-12)


@pytest.mark.parametrize("net", ["chain", "residual", "two_inputs", "shared"])
def test_vjp_matches_the_backward_and_touches_no_grad(rng, net):
    if net == "shared":
        model = shared_layer_network()[0]
    else:
        model = {"chain": r_chain, "residual": residual_mlp, "two_inputs": two_input_network}[net]()
    x = (rng.standard_normal((6, 4)), rng.standard_normal((6, 3))) if net == "two_inputs" \
        else rng.standard_normal((6, 5))
    for p in model.parameters():
        p.grad[...] = rng.standard_normal(p.shape)   # nonzero grads stay as they are
    snap = snapshot(model)
    out = call(model, x)
    gy = rng.standard_normal(out.shape)
    y, gp, gx = fp.vjp(model, x, gy)
    assert_unchanged(model, snap)
    m = copy.deepcopy(model)
    m.zero_grad()
    call(m, x)
    want_x = m.backward(gy)
    assert_close(y, out, F64)
    assert_close(gp, np.concatenate([p.grad.ravel() for p in m.parameters()]), F64)
    if isinstance(want_x, tuple):
        assert isinstance(gx, tuple) and len(gx) == len(want_x)
        for a, b in zip(gx, want_x):
            assert_close(a, b, F64)
    else:
        assert_close(gx, want_x, F64)


@pytest.mark.parametrize("sizes", [(3, 6, 8), (6, 5, 2)])  # forward mode, reverse mode
def test_jacobian_matches_central_differences(rng, sizes):
    model = make_model("tanh", sizes=sizes)
    x = rng.standard_normal((4, sizes[0]))
    J = fp.jacobian(model, x)
    assert J.shape == (4, sizes[-1], sizes[0])
    e = 1e-6
    num = np.stack([(model(x + e * d) - model(x - e * d)) / (2 * e)
                    for d in np.eye(sizes[0])], axis=-1)
    assert rel_err(J, num) <= 1e-7
    # each example's rows: the jvp along each unit input direction
    for j in range(sizes[0]):
        vx = np.zeros_like(x)
        vx[:, j] = 1
        assert_close(J[:, :, j], fp.jvp(model, x, vx=vx)[1], F64)


def test_jacobian_of_a_graph(rng):
    model = residual_mlp()
    x = rng.standard_normal((3, 5))
    J = fp.jacobian(model, x)
    _, _, gx = fp.vjp(model, x, np.tile([1.0, 0, 0], (3, 1)))
    assert_close(J[:, 0, :], gx, F64)


# ---------------------------------------------------------------- the Hessian

@pytest.mark.parametrize("kind", LOSSES)
def test_hessian_columns_are_hvp_of_unit_vectors(rng, kind):
    model = r_chain()
    x = rng.standard_normal((7, 5))
    loss, y = make_loss(kind, rng, 7, 3)
    snap = snapshot(model)
    H = fp.hessian(model, loss, X=x, y=y)
    assert_unchanged(model, snap)
    n = model.num_parameters()
    assert H.shape == (n, n) and H.dtype == F64
    assert_close(H, hessian_by_columns(model, loss, x, y), F64, rtol=1e-11)
    assert np.array_equal(H, H.T)


def test_the_block_hessian_is_symmetric_before_symmetrising(rng):
    model = r_chain()
    x = rng.standard_normal((9, 5))
    loss, y = make_loss("xent", rng, 9, 3)
    H = _block_hessian(_leaves(model)[0], model.parameters(), loss, x, y)
    assert np.abs(H - H.T).max() <= 1e-14 * np.abs(H).max()
    assert np.abs(H).max() > 0.1


def test_hessian_matches_central_differences_of_the_gradient(rng):
    model = make_model("softplus", sizes=(3, 4, 2))
    x = rng.standard_normal((5, 3))
    loss, y = make_loss("xent", rng, 5, 2)
    theta, e = fp.parameters_to_vector(model), 1e-6
    cols = [(with_theta(model, theta + e * d, lambda: gradient(model, loss, x, y)) -
             with_theta(model, theta - e * d, lambda: gradient(model, loss, x, y))) / (2 * e)
            for d in np.eye(theta.size)]
    assert rel_err(fp.hessian(model, loss, x, y), np.array(cols)) <= 1e-7


def test_hessian_in_blocks_of_few_directions(rng, monkeypatch):
    # a batch large enough that a block holds a few directions only
    model = make_model("tanh", sizes=(4, 6, 3))
    x = rng.standard_normal((3000, 4))
    loss, y = make_loss("xent", rng, 3000, 3)
    H = fp.hessian(model, loss, x, y)
    assert_close(H, hessian_by_columns(model, loss, x, y), F64, rtol=1e-11)


@pytest.mark.parametrize("net", ["residual", "residual_in_sequential"])
def test_hessian_of_a_graph(rng, net):
    model = residual_mlp(blocks=1, width=4) if net == "residual" else fp.Sequential(
        lin(5, 4, 0), fp.Residual(fp.Sequential(lin(4, 4, 1), fp.Tanh())), lin(4, 3, 2))
    x = rng.standard_normal((6, 5))
    loss, y = make_loss("xent_soft", rng, 6, 3)
    H = fp.hessian(model, loss, x, y)
    assert_close(H, hessian_by_columns(model, loss, x, y), F64, rtol=1e-11)
    assert np.array_equal(H, H.T)


def test_hessian_float32_against_float64(rng):
    x = rng.standard_normal((16, 5))
    loss, y = make_loss("xent", rng, 16, 3)
    H64 = fp.hessian(r_chain(F64), loss, x, y)
    H32 = fp.hessian(r_chain(np.float32), loss, x.astype(np.float32), y)
    assert H32.dtype == np.float32
    assert_close(H32, H64, rtol=1e-4)


def test_hessian_refuses_above_max_bytes(rng):
    model = r_chain()
    n = model.num_parameters()
    x = rng.standard_normal((4, 5))
    loss, y = make_loss("xent", rng, 4, 3)
    with pytest.raises(ValueError, match="max_bytes"):
        fp.hessian(model, loss, x, y, max_bytes=n * n * 8 - 1)
    assert fp.hessian(model, loss, x, y, max_bytes=n * n * 8).shape == (n, n)


# ---------------------------------------------------------------- per-example gradients

@pytest.mark.parametrize("kind", LOSSES + ["gaussian_nll"])
def test_per_example_grads_match_a_loop_over_examples(rng, kind):
    model = chain() if kind != "gaussian_nll" else fp.Sequential(lin(5, 4, 0), fp.Tanh(), lin(4, 4, 1))
    x = rng.standard_normal((6, 5))
    if kind == "gaussian_nll":
        loss, y = fp.GaussianNLL(), rng.standard_normal((6, 2))
    else:
        loss, y = make_loss(kind, rng, 6, 3)
    snap = snapshot(model)
    G = fp.per_example_grads(model, loss, x, y)
    norms = fp.per_example_grad_norms(model, loss, x, y)
    assert_unchanged(model, snap)
    want = per_example_loop(model, loss, x, y)
    assert G.shape == want.shape and norms.shape == (6,)
    assert_close(G, want, F64)
    assert_close(norms, np.linalg.norm(want, axis=1), F64)
    # the batch gradient is the mean of the rows
    assert_close(G.mean(axis=0), gradient(model, loss, x, y), F64)


@pytest.mark.parametrize("net", ["two_inputs", "shared", "residual_in_sequential"])
def test_per_example_grads_of_graphs(rng, net):
    if net == "two_inputs":
        model, x = two_input_network(), (rng.standard_normal((5, 4)), rng.standard_normal((5, 3)))
    elif net == "shared":
        model, x = shared_layer_network()[0], rng.standard_normal((5, 5))
    else:
        model = fp.Sequential(lin(5, 4, 0), fp.Residual(fp.Sequential(lin(4, 4, 1), fp.Tanh())))
        x = rng.standard_normal((5, 5))
    out = call(model, x)
    loss, y = make_loss("mse", rng, 5, out.shape[1])
    snap = snapshot(model)
    G = fp.per_example_grads(model, loss, x, y)
    norms = fp.per_example_grad_norms(model, loss, x, y)
    assert_unchanged(model, snap)
    want = per_example_loop(model, loss, x, y)
    assert_close(G, want, F64)
    assert_close(norms, np.linalg.norm(want, axis=1), F64)


def test_per_example_float32(rng):
    x = rng.standard_normal((8, 5))
    loss, y = make_loss("xent", rng, 8, 3)
    G64 = fp.per_example_grads(chain(F64), loss, x, y)
    m32 = chain(np.float32)
    G32 = fp.per_example_grads(m32, loss, x.astype(np.float32), y)
    n32 = fp.per_example_grad_norms(m32, loss, x.astype(np.float32), y)
    assert G32.dtype == n32.dtype == np.float32
    assert_close(G32, G64, rtol=1e-5)
    assert_close(n32, np.linalg.norm(G64, axis=1), rtol=1e-5)


def test_nothing_changes_the_last_forward(rng):
    model = r_chain()
    x = rng.standard_normal((4, 5))
    loss, y = make_loss("xent", rng, 4, 3)
    out = model(x)
    gy = rng.standard_normal(out.shape)
    want = copy.deepcopy(model)
    want(x)
    gx_want = want.backward(gy)
    fp.jvp(model, x[:2], rng.standard_normal(model.num_parameters()))
    fp.vjp(model, x[:3], gy[:3])
    fp.jacobian(model, x)
    fp.hessian(model, loss, x, y)
    fp.per_example_grads(model, loss, x, y)
    fp.per_example_grad_norms(model, loss, x, y)
    assert_close(model.backward(gy), gx_want, F64)  # the backward of the forward before
    assert_close(np.concatenate([p.grad.ravel() for p in model.parameters()]),
                 np.concatenate([p.grad.ravel() for p in want.parameters()]), F64)


# ---------------------------------------------------------------- DP-SGD

class NoiseStream:
    """The DP-SGD noise of TrainStep(..., rng=seed), from fastprop.reference's NumPy copy of
    the C generator: key from the seed's Generator (as Dropout's), the counter advancing by
    64 blocks per 256 normals a step."""

    def __init__(self, seed):
        self.key, self.counter = int(np.random.default_rng(seed).integers(0, 2 ** 64, dtype=np.uint64)), 0

    def standard_normal(self, n, dtype):
        z = fp.reference.gaussian_noise(n, self.key, self.counter, dtype=dtype)
        self.counter += 64 * -(-n // 256)
        return z


def dp_reference(model, loss, x, y, clip, sigma, rng):
    """Abadi et al.: clip each example's gradient to norm clip, sum, add N(0, σ²C²), / B."""
    G = per_example_loop(model, loss, x, y)
    norms = np.linalg.norm(G, axis=1)
    G *= np.minimum(1, clip / norms)[:, None]
    noise = rng.standard_normal(G.shape[1], dtype=F64) if sigma > 0 else 0
    return (G.sum(axis=0) + sigma * clip * noise) / len(y)


@pytest.mark.parametrize("sigma", [0.0, 0.7])
@pytest.mark.parametrize("make", [chain, r_chain])
def test_dp_sgd_matches_a_per_example_reference(rng, sigma, make):
    model, ref = make(), make()
    x = rng.standard_normal((9, 5))
    loss, y = make_loss("xent", rng, 9, 3)
    clip = float(np.median(np.linalg.norm(per_example_loop(model, loss, x, y), axis=1)))
    step = fp.TrainStep(model, loss, fp.SGD(model.parameters(), lr=0.1),
                        per_example_clip=clip, noise_multiplier=sigma, rng=123)
    ref_rng = NoiseStream(123)
    for _ in range(3):
        g = dp_reference(ref, loss, x, y, clip, sigma, ref_rng)
        J = step(x, y)
        before = ref(x)
        assert_close(J, loss(before, y), F64)
        assert_close(np.concatenate([p.grad.ravel() for p in model.parameters()]), g, F64)
        fp.vector_to_parameters(fp.parameters_to_vector(ref) - 0.1 * g, ref)
        assert_close(fp.parameters_to_vector(model), fp.parameters_to_vector(ref), F64)
    assert_close(step.output, before, F64)  # the last step's output, before its update


def test_dp_sgd_without_clipping_or_noise_is_the_plain_step(rng):
    model, plain = make_model("tanh"), make_model("tanh")
    x = rng.standard_normal((10, 4))
    loss, y = make_loss("xent", rng, 10, 3)
    dp = fp.TrainStep(model, loss, fp.Adam(model.parameters(), lr=1e-2), per_example_clip=1e9)
    ordinary = fp.TrainStep(plain, loss, fp.Adam(plain.parameters(), lr=1e-2))
    assert not dp.fused and ordinary.fused
    for _ in range(3):
        assert_close(dp(x, y), ordinary(x, y), F64)
    assert_close(fp.parameters_to_vector(model), fp.parameters_to_vector(plain), F64)


def test_dp_sgd_float32_trains(rng):
    model = chain(np.float32)
    X = rng.standard_normal((256, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.SGD(model.parameters(), lr=0.2),
                        per_example_clip=1.0, noise_multiplier=0.5, rng=np.random.default_rng(0))
    first = step(X, y)
    for _ in range(60):
        last = step(X, y)
    assert last < 0.7 * first
    assert model.parameters()[0].grad.dtype == np.float32


# ---------------------------------------------------------------- PyTorch

def torch_function(model):
    """f(θ, x) of a Sequential of Linear (with bias) and Tanh, in torch."""
    import torch
    sizes = [p.size for p in model.parameters()]

    def f(theta, x):
        parts, i, h = torch.split(theta, sizes), 0, x
        for m in model.layers:
            if isinstance(m, fp.Linear):
                h = h @ parts[i].reshape(m.out_features, m.in_features).T + parts[i + 1]
                i += 2
            else:
                h = torch.tanh(h)
        return h
    return f


def test_against_torch_func(rng):
    torch = pytest.importorskip("torch")
    from torch.func import grad, hessian, jacrev, jvp, vjp, vmap
    model = fp.Sequential(lin(4, 6, 0), fp.Tanh(), lin(6, 5, 1), fp.Tanh(), lin(5, 3, 2))
    f = torch_function(model)
    x = rng.standard_normal((7, 4))
    y = rng.integers(0, 3, 7)
    n = model.num_parameters()
    v, vx = rng.standard_normal(n), rng.standard_normal(x.shape)
    T = torch.tensor
    theta, tx, ty = T(fp.parameters_to_vector(model)), T(x), T(y)
    # jvp
    ty_, tjv = jvp(f, (theta, tx), (T(v), T(vx)))
    out, Jv = fp.jvp(model, x, v, vx)
    assert_close(out, ty_.numpy(), F64)
    assert_close(Jv, tjv.numpy(), F64)
    # vjp
    gy = rng.standard_normal(out.shape)
    _, back = vjp(f, theta, tx)
    tg, tgx = back(T(gy))
    _, gp, gx = fp.vjp(model, x, gy)
    assert_close(gp, tg.numpy(), F64)
    assert_close(gx, tgx.numpy(), F64)
    # the per-example Jacobian
    tj = vmap(jacrev(lambda xi: f(theta, xi[None])[0]))(tx)
    assert_close(fp.jacobian(model, x), tj.numpy(), F64)
    # the Hessian of the mean loss
    loss = fp.SoftmaxCrossEntropy()
    th = hessian(lambda t: torch.nn.functional.cross_entropy(f(t, tx), ty))(theta)
    assert_close(fp.hessian(model, loss, x, y), th.numpy(), F64, rtol=1e-11)
    # per-example gradients: vmap(grad)
    per = vmap(grad(lambda t, xi, yi: torch.nn.functional.cross_entropy(f(t, xi[None]), yi[None])),
               in_dims=(None, 0, 0))(theta, tx, ty)
    assert_close(fp.per_example_grads(model, loss, x, y), per.numpy(), F64)
    assert_close(fp.per_example_grad_norms(model, loss, x, y), per.norm(dim=1).numpy(), F64)


# ---------------------------------------------------------------- bad input

class Custom(fp.Module):
    def _forward(self, x):
        return x


def multi_output():
    g = fp.Graph()
    x = g.input("x", 3)
    a = g.add(lin(3, 2, 0), x, name="a")
    b = g.add(lin(3, 2, 1), x, name="b")
    return g.build(outputs=[a, b])


def test_bad_directions_and_shapes(rng):
    model = r_chain()
    n = model.num_parameters()
    x = rng.standard_normal((4, 5))
    loss, y = make_loss("xent", rng, 4, 3)
    snap = snapshot(model)
    with pytest.raises(ValueError, match=rf"v has shape \({n + 1},\), expected \({n},\)"):
        fp.jvp(model, x, np.zeros(n + 1))
    with pytest.raises(ValueError, match=r"vx has shape \(4, 6\), expected \(4, 5\)"):
        fp.jvp(model, x, vx=np.zeros((4, 6)))
    with pytest.raises(ValueError, match="jvp needs a direction"):
        fp.jvp(model, x)
    with pytest.raises(TypeError, match="v must be a floating-point array"):
        fp.jvp(model, x, np.zeros(n, np.int64))
    with pytest.raises(ValueError, match=r"gy has shape \(4, 2\), expected \(4, 3\)"):
        fp.vjp(model, x, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="x has 6 features, expected 5"):
        fp.jacobian(model, np.zeros((4, 6)))
    with pytest.raises(ValueError, match="y has shape"):
        fp.hessian(model, loss, x, y[:3])
    with pytest.raises(ValueError, match="y has shape"):
        fp.per_example_grads(model, loss, x, y[:3])
    with pytest.raises(ValueError, match="label"):
        fp.per_example_grad_norms(model, loss, x, y + 5)
    two = two_input_network()
    with pytest.raises(ValueError, match="vx"):
        fp.jvp(two, (np.zeros((3, 4)), np.zeros((3, 3))), vx=(np.zeros((3, 4)), np.zeros((2, 3))))
    with pytest.raises(TypeError, match="one input"):
        fp.jacobian(two, (np.zeros((3, 4)), np.zeros((3, 3))))
    assert_unchanged(model, snap)


def test_unsupported_models_are_type_errors(rng):
    x = rng.standard_normal((3, 5))
    loss, y = make_loss("xent", rng, 3, 3)
    low_rank = fp.Sequential(fp.LowRankLinear(5, 4, 2, dtype=F64), fp.Tanh(), lin(4, 3, 0))
    custom = fp.Sequential(lin(5, 3, 0), Custom())
    for fn in (lambda m: fp.jvp(m, x, vx=x), lambda m: fp.vjp(m, x, np.zeros((3, 3))),
               lambda m: fp.jacobian(m, x), lambda m: fp.hessian(m, loss, x, y)):
        with pytest.raises(TypeError, match="LowRankLinear has no R-operator"):
            fn(low_rank)
        with pytest.raises(TypeError, match="Custom has no R-operator"):
            fn(custom)
    with pytest.raises(TypeError, match="Custom has no R-operator"):
        fp.per_example_grads(custom, loss, x, y)
    with pytest.raises(TypeError, match="2 outputs"):
        fp.jvp(multi_output(), rng.standard_normal((3, 3)), vx=rng.standard_normal((3, 3)))
    with pytest.raises(TypeError, match="model must be a fastprop Module"):
        fp.jvp("model", x, vx=x)
    with pytest.raises(TypeError, match="loss must be SoftmaxCrossEntropy"):
        fp.hessian(r_chain(), fp.GaussianNLL(), x, np.zeros((3, 1)))
    with pytest.raises(TypeError, match="loss must be a fastprop loss"):
        fp.per_example_grads(r_chain(), "mse", x, y)


def test_dp_sgd_bad_arguments(rng):
    model = r_chain()
    loss = fp.SoftmaxCrossEntropy()
    opt = fp.SGD(model.parameters(), lr=0.1)
    snap = snapshot(model, opt)
    for clip, error in ((0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                        ("1", TypeError), (True, TypeError)):
        with pytest.raises(error, match="per_example_clip"):
            fp.TrainStep(model, loss, opt, per_example_clip=clip)
    with pytest.raises(ValueError, match="noise_multiplier"):
        fp.TrainStep(model, loss, opt, per_example_clip=1.0, noise_multiplier=-0.5)
    with pytest.raises(ValueError, match="noise_multiplier needs per_example_clip"):
        fp.TrainStep(model, loss, opt, noise_multiplier=1.0)
    with pytest.raises(TypeError, match="rng"):
        fp.TrainStep(model, loss, opt, per_example_clip=1.0, rng="seed")
    with pytest.raises(TypeError, match="Graph"):
        graph = residual_mlp()
        fp.TrainStep(graph, loss, fp.SGD(graph.parameters(), lr=0.1), per_example_clip=1.0)
    with pytest.raises(TypeError, match="closure"):
        fp.TrainStep(model, loss, fp.HessianFree(model.parameters()), per_example_clip=1.0)
    step = fp.TrainStep(model, loss, opt, per_example_clip=1.0, noise_multiplier=1.0, rng=0)
    x = rng.standard_normal((4, 5))
    with pytest.raises(ValueError, match="label"):
        step(x, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="x"):
        step(np.full((4, 5), np.nan), np.array([0, 1, 2, 0]))
    assert_unchanged(model, snap, opt)
