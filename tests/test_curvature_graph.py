"""Curvature on Graph models: hvp, gnvp, hessian_eigs, hessian_trace, HessianFree (float64)."""
import numpy as np
import pytest
from conftest import assert_close
from test_curvature import (LOSSES, check_gauss_newton, hessian_by_columns, hvp_by_differences,
                            make_loss, make_model, rel_err)
from test_graph import lin, residual_mlp, shared_layer_network, two_input_network

import fastprop as fp

F64 = np.float64


# ---------------------------------------------------------------- the networks

def same_input_twice():
    """Add(h, h), Mul(h, h) and Concat(h, h) of one node: both slots land in h's buffers."""
    g = fp.Graph()
    x = g.input("x", 3)
    h = g.add(fp.Tanh(), g.add(lin(3, 4, 0), x))
    s = g.add(fp.Add(), h, h)
    m = g.add(fp.Mul(), h, h)
    c = g.add(fp.Concat(), h, h)
    return g.build(outputs=g.add(lin(16, 3, 1), g.add(fp.Concat(), s, m, c)))


def shared_residual():
    """A Residual (a Graph) at two nodes of a Graph: nested graphs, shared weights."""
    block = fp.Residual(fp.Sequential(lin(4, 4, 0), fp.Tanh()))
    g = fp.Graph()
    x = g.input("x", 4)
    a = g.add(block, x, name="a")
    b = g.add(block, g.add(fp.Sigmoid(), a), name="b")
    return g.build(outputs=g.add(lin(8, 3, 1), g.add(fp.Concat(), a, b)))


def residual_sequential(n_in=5, width=8, n_out=3, blocks=2):
    """residual_mlp's network as a plain Sequential of Residual blocks (the same weights)."""
    layers = [lin(n_in, width, 0), fp.Tanh()]
    layers += [fp.Residual(fp.Sequential(lin(width, width, k + 1), fp.Tanh())) for k in range(blocks)]
    return fp.Sequential(*layers, lin(width, n_out, 99))


def graphs_in_a_sequential():
    """A Graph first in a Sequential (its input fixed) and another further on (its input moves)."""
    return fp.Sequential(fp.Residual(fp.Sequential(lin(4, 4, 0), fp.SiLU())), lin(4, 5, 1),
                         fp.Tanh(), fp.Residual(fp.Sequential(lin(5, 5, 2), fp.GELU())), lin(5, 3, 3))


def tiny_graph():
    """22 parameters: y = L([tanh(L x1) ⊙ L x2, x1])."""
    g = fp.Graph()
    x1, x2 = g.input("x1", 2), g.input("x2", 2)
    gate = g.add(fp.Mul(), g.add(fp.Tanh(), g.add(lin(2, 2, 0), x1)), g.add(lin(2, 2, 1), x2))
    return g.build(outputs=g.add(lin(4, 2, 2), g.add(fp.Concat(), gate, x1)))


def gated_input():
    """y = L(x ⊙ tanh(L x)): Mul with a fixed graph input on one side (R{x} = 0)."""
    g = fp.Graph()
    x = g.input("x", 3)
    gate = g.add(fp.Mul(), x, g.add(fp.Tanh(), g.add(lin(3, 3, 0), x)))
    return g.build(outputs=g.add(lin(3, 2, 1), gate))


def inputs(name, rng, batch):
    widths = {"residual": [5], "two_input": [4, 3], "shared": [5], "twice": [3],
              "shared_residual": [4], "in_sequential": [4], "tiny": [2, 2],
              "gated": [3]}[name]
    xs = [rng.standard_normal((batch, w)) for w in widths]
    return xs[0] if len(xs) == 1 else tuple(xs)


NETWORKS = {"residual": lambda: residual_mlp(blocks=2), "two_input": two_input_network,
            "shared": lambda: shared_layer_network()[0], "twice": same_input_twice,
            "shared_residual": shared_residual, "in_sequential": graphs_in_a_sequential,
            "tiny": tiny_graph, "gated": gated_input}


def case(name, kind, rng, batch=7):
    model = NETWORKS[name]()
    x = inputs(name, rng, batch)
    loss, y = make_loss(kind, rng, batch, model.out_features)
    return model, loss, x, y


# ---------------------------------------------------------------- exactness

@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("name", list(NETWORKS))
def test_hvp_matches_central_differences_of_the_gradient(rng, name, kind):
    model, loss, x, y = case(name, kind, rng)
    assert model.r_supported
    v = rng.standard_normal(model.num_parameters())
    hv = fp.hvp(model, loss, x, y, v)
    assert hv.dtype == F64 and hv.shape == (model.num_parameters(),)
    assert rel_err(hv, hvp_by_differences(model, loss, x, y, v)) <= 1e-6


@pytest.mark.parametrize("name", list(NETWORKS))
def test_hvp_is_symmetric_and_gnvp_positive_semidefinite(rng, name):
    model, loss, x, y = case(name, "xent", rng)
    n = model.num_parameters()
    u, v = rng.standard_normal(n), rng.standard_normal(n)
    uHv, vHu = u @ fp.hvp(model, loss, x, y, v), v @ fp.hvp(model, loss, x, y, u)
    assert abs(uHv - vHu) <= 1e-12 * max(abs(uHv), 1.0)
    uGv, vGu = u @ fp.gnvp(model, loss, x, y, v), v @ fp.gnvp(model, loss, x, y, u)
    assert abs(uGv - vGu) <= 1e-12 * max(abs(uGv), 1.0)
    quad = []
    for _ in range(20):
        w = rng.standard_normal(n)
        quad.append(w @ fp.gnvp(model, loss, x, y, w) / (w @ w))
    assert min(quad) >= -1e-14


@pytest.mark.parametrize("kind", ["xent", "mse"])
@pytest.mark.parametrize("name", ["two_input", "twice", "shared", "gated"])
def test_gnvp_is_jt_hloss_j(rng, name, kind):
    """The Gauss–Newton matrix column by column against J_outᵀ H_loss J_out by differences;
    with Mul it drops the g ⊙ R{·} terms, so it differs from the Hessian."""
    model, loss, x, y = case(name, kind, rng, batch=4)
    G = check_gauss_newton(model, loss, x, y)
    assert rel_err(G, hessian_by_columns(model, loss, x, y)) > 1e-3


@pytest.mark.parametrize("act", ["tanh", "softplus", "relu"])
def test_a_chain_graph_gives_the_sequentials_products(rng, act):
    seq = make_model(act)
    g = fp.Graph()
    h = g.input("x", 4)
    for layer in make_model(act).layers:   # the same weights (the same seeds)
        h = g.add(layer, h)
    chain = g.build(outputs=h)
    x = rng.standard_normal((7, 4))
    loss, y = make_loss("xent", rng, 7, 3)
    v = rng.standard_normal(seq.num_parameters())
    assert_close(fp.hvp(chain, loss, x, y, v), fp.hvp(seq, loss, x, y, v), rtol=1e-14)
    assert_close(fp.gnvp(chain, loss, x, y, v), fp.gnvp(seq, loss, x, y, v), rtol=1e-14)


@pytest.mark.parametrize("kind", LOSSES)
def test_a_residual_graph_gives_the_residual_sequentials_products(rng, kind):
    graph, seq = residual_mlp(blocks=2), residual_sequential(blocks=2)
    assert_close(fp.parameters_to_vector(graph), fp.parameters_to_vector(seq), rtol=0)
    x = rng.standard_normal((7, 5))
    loss, y = make_loss(kind, rng, 7, 3)
    v = rng.standard_normal(graph.num_parameters())
    assert_close(fp.hvp(graph, loss, x, y, v), fp.hvp(seq, loss, x, y, v), rtol=1e-13)
    assert_close(fp.gnvp(graph, loss, x, y, v), fp.gnvp(seq, loss, x, y, v), rtol=1e-13)


def test_a_shared_layer_sums_the_shares_of_both_nodes(rng):
    """J(θ) with θ at two nodes is J'(θ, θ) of the untied network: its Hv along v is the sum
    of the untied Hv's two blocks along (v, v)."""
    model, shared = shared_layer_network()
    g = fp.Graph()
    x = g.input("x", 5)
    a = g.add(lin(5, 5, 0), x, name="first")
    b = g.add(lin(5, 5, 0), g.add(fp.Tanh(), a), name="second")
    untied = g.build(outputs=g.add(fp.Add(), a, b))
    X = rng.standard_normal((6, 5))
    loss, y = make_loss("mse", rng, 6, 5)
    n = model.num_parameters()
    v = rng.standard_normal(n)
    for product in (fp.hvp, fp.gnvp):
        both = product(untied, loss, X, y, np.concatenate([v, v]))
        assert_close(product(model, loss, X, y, v), both[:n] + both[n:], rtol=1e-13)


def test_several_inputs_as_a_tuple_a_dict_and_in_chunks(rng):
    model, loss, (x1, x2), y = case("two_input", "bce", rng, batch=10)
    v = rng.standard_normal(model.num_parameters())
    whole = fp.hvp(model, loss, (x1, x2), y, v)
    assert np.array_equal(fp.hvp(model, loss, {"x2": x2, "x1": x1}, y, v), whole)
    assert_close(fp.hvp(model, loss, [x1, x2], y, v, batch_size=3), whole, rtol=1e-13)
    assert_close(fp.gnvp(model, loss, (x1, x2), y, v, batch_size=4),
                 fp.gnvp(model, loss, (x1, x2), y, v), rtol=1e-13)


def test_hvp_float32_agrees_with_float64(rng):
    m64, m32 = two_input_network(), two_input_network(np.float32)
    x = inputs("two_input", rng, 8)
    loss, y = make_loss("xent", rng, 8, 2)
    v = rng.standard_normal(m64.num_parameters())
    h32 = fp.hvp(m32, loss, x, y, v)
    assert h32.dtype == np.float32
    assert_close(h32, fp.hvp(m64, loss, x, y, v), rtol=1e-4)


def test_hessian_eigs_and_trace_of_a_tiny_graph(rng):
    model = tiny_graph()
    X = (rng.standard_normal((12, 2)), rng.standard_normal((12, 2)))
    loss, y = make_loss("xent", rng, 12, 2)
    H = hessian_by_columns(model, loss, X, y)
    assert H.shape == (22, 22)
    assert np.allclose(H, H.T, rtol=0, atol=1e-14)
    exact = np.linalg.eigvalsh(H)
    assert_close(fp.hessian_eigs(model, loss, X, y, k=3), exact[-3:], rtol=1e-9)
    assert_close(fp.hessian_eigs(model, loss, X, y, k=2, which="SA"), exact[:2], rtol=1e-9)
    G = hessian_by_columns(model, loss, X, y, fp.gnvp)
    assert_close(fp.hessian_eigs(model, loss, X, y, gauss_newton=True, batch_size=5),
                 np.linalg.eigvalsh(G)[-1:], rtol=1e-9)
    est, std = fp.hessian_trace(model, loss, X, y, n_samples=64, return_std=True)
    assert abs(est - np.trace(H)) <= 4 * std


def test_hvp_of_a_residual_graph_matches_torch(rng):
    torch = pytest.importorskip("torch")
    model = residual_mlp(blocks=2)
    x = rng.standard_normal((6, 5))
    y = rng.integers(0, 3, 6)
    v = rng.standard_normal(model.num_parameters())
    ours = fp.hvp(model, fp.SoftmaxCrossEntropy(), x, y, v)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.size for p in model.parameters()]

    def J(theta):
        P = {n: t.reshape(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}

        def layer(name, h):
            return h @ P[name + ".weight"].T + P[name + ".bias"]
        h = torch.tanh(layer("stem", torch.tensor(x)))
        for k in range(2):
            h = h + torch.tanh(layer(f"fc{k}", h))
        return torch.nn.functional.cross_entropy(layer("head", h), torch.tensor(y))

    theta = torch.tensor(fp.parameters_to_vector(model))
    _, theirs = torch.autograd.functional.hvp(J, theta, torch.tensor(v))
    assert_close(ours, theirs.numpy(), rtol=1e-12)


def test_hessian_free_fits_a_graph():
    data = np.random.default_rng(0)
    X = data.uniform(-2, 2, (256, 2))
    y = np.sin(2 * X[:, :1]) * np.cos(X[:, 1:])
    model = residual_mlp(blocks=1, width=16, n_in=2, n_out=1)
    before = fp.evaluate(model, X, y, fp.MSE())["loss"]
    history = fp.fit(model, X, y, loss=fp.MSE(), optimizer=fp.HessianFree(model.parameters()),
                     epochs=1, batch_size=64, progress=False)
    after = fp.evaluate(model, X, y, fp.MSE())["loss"]
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])
    assert after < 0.5 * before
    # and a step of a two-input graph through TrainStep (a tuple x, as the model takes it)
    model = two_input_network()
    x, y = inputs("two_input", data, 32), data.standard_normal((32, 2))
    step = fp.TrainStep(model, fp.MSE(), fp.HessianFree(model.parameters()))
    J0 = step(x, y)
    assert fp.MSE()(model(*x), y) < J0


# ---------------------------------------------------------------- state and bad input

def snapshot(model):
    return [(p.data.copy(), p.grad.copy()) for p in model.parameters()]


def assert_unchanged(model, before):
    for p, (d, g) in zip(model.parameters(), before):
        assert np.array_equal(p.data, d) and np.array_equal(p.grad, g)


@pytest.mark.parametrize("name", ["two_input", "shared", "shared_residual", "in_sequential"])
def test_hvp_leaves_parameters_grads_and_the_forward_alone(rng, name):
    model = NETWORKS[name]()
    x1, x2 = inputs(name, rng, 6), inputs(name, rng, 9)
    loss, y2 = make_loss("xent", rng, 9, model.out_features)
    out1 = model.forward(x1)
    for p in model.parameters():
        p.grad[...] = rng.standard_normal(p.shape)
    before = snapshot(model)
    v = rng.standard_normal(model.num_parameters())
    fp.hvp(model, loss, x2, y2, v)
    fp.gnvp(model, loss, x2, y2, v)
    assert_unchanged(model, before)
    # the backward of the earlier forward still sees x1 (and its batch of 6)
    gy = rng.standard_normal(out1.shape)
    gx = model.backward(gy)
    fresh = NETWORKS[name]()
    fresh.forward(x1)
    for p in fresh.parameters():
        p.grad[...] = 0
    want = fresh.backward(gy)
    for a, b in zip(gx if isinstance(gx, tuple) else [gx], want if isinstance(want, tuple) else [want]):
        assert_close(a, b, F64)
    for p, q, (_, g0) in zip(model.parameters(), fresh.parameters(), before):
        assert_close(p.grad - g0, q.grad, F64)


class Doubler(fp.nn.Activation):
    """A user's module without an R-operator of its own."""
    r_supported = False


def test_hvp_refuses_what_it_does_not_support_and_changes_nothing(rng):
    loss = fp.SoftmaxCrossEntropy()
    # a graph with two outputs: one loss needs one output
    g = fp.Graph()
    x = g.input("x", 4)
    h = g.add(fp.Tanh(), g.add(lin(4, 3, 0), x), name="h")
    two = g.build(outputs=[h, g.add(lin(3, 2, 1), h, name="z")])
    xs, y = rng.standard_normal((3, 4)), np.array([0, 1, 2])
    before = snapshot(two)
    with pytest.raises(TypeError, match=r"2 outputs \['h', 'z'\].*one output"):
        fp.hvp(two, loss, xs, y, np.zeros(two.num_parameters()))
    with pytest.raises(TypeError, match="one output"):
        fp.hessian_eigs(two, loss, xs, y)
    assert_unchanged(two, before)
    # a node without an R-operator
    g = fp.Graph()
    x = g.input("x", 4)
    custom = g.build(outputs=g.add(fp.Add(), x, g.add(Doubler(), g.add(lin(4, 4, 0), x))))
    assert not custom.r_supported
    with pytest.raises(TypeError, match="Doubler has no R-operator"):
        fp.gnvp(custom, loss, xs, y, np.zeros(custom.num_parameters()))
    # bad arguments to a two-input graph
    model = two_input_network()
    model.forward(inputs("two_input", rng, 3))
    before = snapshot(model)
    x1, x2 = inputs("two_input", rng, 3)
    n = model.num_parameters()
    y = np.array([0, 1, 1])
    with pytest.raises(ValueError, match=r"takes 2 inputs \['x1', 'x2'\], got 1"):
        fp.hvp(model, loss, x1, y, np.zeros(n))
    with pytest.raises(ValueError, match=r"missing \['x2'\]"):
        fp.hvp(model, loss, {"x1": x1}, y, np.zeros(n))
    with pytest.raises(ValueError, match="input 'x2' has 4 features, expected 3"):
        fp.hvp(model, loss, (x1, x1), y, np.zeros(n))
    with pytest.raises(ValueError, match="x has 3 rows but y has shape"):
        fp.hvp(model, loss, (x1, x2), y[:2], np.zeros(n))
    with pytest.raises(ValueError, match=rf"v has shape \({n + 1},\)"):
        fp.hvp(model, loss, (x1, x2), y, np.zeros(n + 1))
    with pytest.raises(TypeError, match="loss must be"):
        fp.hvp(model, fp.GaussianNLL(), (x1, x2), y, np.zeros(n))
    assert_unchanged(model, before)
