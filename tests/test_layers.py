"""Dropout, LayerNorm, BatchNorm1d and the train()/eval() modes: against PyTorch (float64,
1e-10), central differences, hvp against finite differences, copies, save/load, bad input."""
import copy
import pickle

import numpy as np
import pytest

import fastprop as fp

F64 = np.float64


def rng(seed=0):
    return np.random.default_rng(seed)


def torch_or_skip():
    return pytest.importorskip("torch")


def grads_of(model):
    return [p.grad.copy() for p in model.parameters()]


def snapshot(model):
    """Everything a failed call must leave alone: parameters, gradients, buffers, rng states."""
    return ([p.data.copy() for p in model.parameters()], grads_of(model),
            [b.copy() for b in model.buffers()],
            [m.rng_state() for m in model.modules() if hasattr(m, "rng_state")])


def same(a, b):
    return all(len(x) == len(y) and all(np.array_equal(u, v) if isinstance(u, np.ndarray) else u == v
                                        for u, v in zip(x, y)) for x, y in zip(a, b))


# ------------------------------------------------------------------ modes

def test_train_eval_return_the_module_and_reach_every_child():
    inner = fp.Sequential(fp.Linear(4, 4), fp.Dropout(0.2))
    g = fp.Graph()
    x = g.input("x", 4)
    h = g.add(fp.Residual(inner), x)
    d = fp.Dropout(0.1)
    h = g.add(d, h)
    h = g.add(fp.BatchNorm1d(4), h)
    model = fp.Sequential(g.build(outputs=h), fp.Linear(4, 2))
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    assert model.train() is model and all(m.training for m in model.modules())
    assert model.train(False) is model and not inner[1].training and not d.training
    with pytest.raises(TypeError, match="mode"):
        model.train("yes")


def test_graph_shared_module_copies_follow_the_mode():
    drop = fp.Dropout(0.5, rng=0)
    g = fp.Graph()
    x = g.input("x", 3)
    a = g.add(drop, x)
    b = g.add(drop, x)   # the same module at a second node runs as a copy
    model = g.build(outputs=g.add(fp.Add(), a, b))
    model.eval()
    X = rng().standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(X), 2 * X)


def test_predict_and_evaluate_run_in_eval_mode_and_restore_the_modes():
    model = fp.Sequential(fp.Linear(6, 8, rng=0), fp.Dropout(0.5, rng=1), fp.Linear(8, 3, rng=2))
    X = rng().standard_normal((32, 6)).astype(np.float32)
    y = np.arange(32) % 3
    model.train()
    model[2].training = False   # a mixed state comes back as it was
    out = fp.predict(model, X)
    model.eval()
    np.testing.assert_array_equal(out, model(X))
    model.train()
    model[2].training = False
    before = model[1].rng_state()
    scores = fp.evaluate(model, X, y, fp.SoftmaxCrossEntropy())
    assert model[1].rng_state() == before   # no mask drawn
    assert [m.training for m in model.modules()] == [True, True, True, False]
    fp.predict_proba(model, X)
    assert [m.training for m in model.modules()] == [True, True, True, False]
    model.eval()
    assert scores == fp.evaluate(model, X, y, fp.SoftmaxCrossEntropy())


# ------------------------------------------------------------------ Dropout

def test_dropout_mask_kept_set_and_scale_against_torch():
    torch = torch_or_skip()
    p = 0.3
    X = rng().standard_normal((64, 50))
    d = fp.Dropout(p, rng=7)
    Y = d(X)
    mask = d._mask.astype(bool)
    kept = Y != 0
    np.testing.assert_array_equal(kept, mask)
    torch_scale = torch.nn.functional.dropout(torch.ones(10000, dtype=torch.float64), p)
    scale = torch_scale[torch_scale != 0][0].item()
    # the forward and backward of torch's definition on the same mask, in float64
    xt = torch.tensor(X, requires_grad=True)
    yt = xt * torch.tensor(mask, dtype=torch.float64) * scale
    np.testing.assert_allclose(Y, yt.detach().numpy(), rtol=1e-10, atol=0)
    G = rng(1).standard_normal(X.shape)
    yt.backward(torch.tensor(G))
    np.testing.assert_allclose(d.backward(G), xt.grad.numpy(), rtol=1e-10, atol=0)
    # the kept fraction is a Binomial(3200, 0.7) draw: within 5 standard deviations
    n = mask.size
    assert abs(mask.sum() - 0.7 * n) < 5 * np.sqrt(n * 0.21)


def test_dropout_statistics_and_float32():
    X = np.ones((256, 1024), np.float32)
    d = fp.Dropout(0.1, rng=3)
    Y = d(X)
    assert Y.dtype == np.float32
    keep = (Y != 0).mean()
    assert abs(keep - 0.9) < 5 * np.sqrt(0.09 / Y.size)
    assert np.all(Y[Y != 0] == np.float32(1) / np.float32(0.9))
    # rows and columns look alike: no stripe in the counter layout
    assert abs((Y != 0).mean(axis=0).std() - np.sqrt(0.09 / 256)) < 0.01
    # consecutive forwards draw different masks
    assert not np.array_equal(Y, d(X))


def test_dropout_reproducible_from_seed_generator_and_rng_state():
    X = rng().standard_normal((8, 300))
    a, b = fp.Dropout(0.5, rng=11), fp.Dropout(0.5, rng=11)
    np.testing.assert_array_equal(a(X), b(X))
    c = fp.Dropout(0.5, rng=np.random.default_rng(11))
    d = fp.Dropout(0.5, rng=np.random.default_rng(11))
    np.testing.assert_array_equal(c(X), d(X))
    assert not np.array_equal(a(X), fp.Dropout(0.5, rng=12)(X))
    state = a.rng_state()
    import json
    assert json.loads(json.dumps(state)) == state
    first = a(X)
    clone, pickled = copy.deepcopy(a), pickle.loads(pickle.dumps(a))
    second = a(X)
    np.testing.assert_array_equal(clone(X), second)
    np.testing.assert_array_equal(pickled(X), second)
    a.set_rng_state(state)
    np.testing.assert_array_equal(a(X), first)
    for bad, kind in (({"key": 1}, ValueError), ("x", ValueError), ({"key": 1.5, "counter": 0}, TypeError),
                      ({"key": -1, "counter": 0}, ValueError), ({"key": 0, "counter": 2 ** 64}, ValueError)):
        now = a.rng_state()
        with pytest.raises(kind):
            a.set_rng_state(bad)
        assert a.rng_state() == now


def test_dropout_edges_and_eval():
    X = rng().standard_normal((5, 7))
    np.testing.assert_array_equal(fp.Dropout(0.0)(X), X)
    d = fp.Dropout(1.0)
    np.testing.assert_array_equal(d(X), np.zeros_like(X))
    np.testing.assert_array_equal(d.backward(np.ones_like(X)), np.zeros_like(X))
    e = fp.Dropout(0.5, rng=0).eval()
    np.testing.assert_array_equal(e(X), X)
    np.testing.assert_array_equal(e.backward(X), X)
    assert fp.Dropout(0.25).p == 0.25 and fp.Dropout().p == 0.5


@pytest.mark.parametrize("p, kind", [(-0.1, ValueError), (1.5, ValueError), (float("nan"), ValueError),
                                     ("0.5", TypeError), (None, TypeError), (True, TypeError)])
def test_dropout_bad_p(p, kind):
    with pytest.raises(kind, match="p"):
        fp.Dropout(p)
    d = fp.Dropout(0.5)
    with pytest.raises(kind, match="p"):
        d.p = p
    assert d.p == 0.5
    with pytest.raises(kind, match="p"):
        fp.ops.dropout_forward(np.ones(4), p, 0, 0)


def test_dropout_kernel_bad_mask():
    with pytest.raises(ValueError, match="mask"):
        fp.ops.dropout_backward(np.ones((2, 3)), np.ones((2, 3), np.float32), 0.5)
    with pytest.raises(ValueError, match="mask"):
        fp.ops.dropout_backward(np.ones((2, 3)), np.ones((3, 2), np.uint8), 0.5)


# ------------------------------------------------------------------ LayerNorm

@pytest.mark.parametrize("affine, bias", [(True, True), (True, False), (False, True)])
def test_layernorm_forward_backward_against_torch(affine, bias):
    torch = torch_or_skip()
    n = 37
    X = rng().standard_normal((9, n)) * 3 + 5
    ln = fp.LayerNorm(n, eps=1e-4, elementwise_affine=affine, bias=bias, dtype=F64)
    tl = torch.nn.LayerNorm(n, eps=1e-4, elementwise_affine=affine, bias=bias, dtype=torch.float64)
    if affine:
        ln.weight.data = rng(1).standard_normal(n)
        with torch.no_grad():
            tl.weight.copy_(torch.tensor(ln.weight.data))
        if bias:
            ln.bias.data = rng(2).standard_normal(n)
            with torch.no_grad():
                tl.bias.copy_(torch.tensor(ln.bias.data))
    else:
        assert ln.weight is None and ln.bias is None
    assert ln.normalized_shape == (n,) and ln.eps == 1e-4 and ln.elementwise_affine is affine
    xt = torch.tensor(X, requires_grad=True)
    yt = tl(xt)
    np.testing.assert_allclose(ln(X), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    G = rng(3).standard_normal(X.shape)
    yt.backward(torch.tensor(G))
    np.testing.assert_allclose(ln.backward(G), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert sorted(dict(ln.named_parameters())) == sorted(k for k, _ in tl.named_parameters())
    for name, p in ln.named_parameters():
        np.testing.assert_allclose(p.grad, getattr(tl, name).grad.numpy(), rtol=1e-10, atol=1e-12)


def test_layernorm_is_stable_for_a_large_mean():
    # a mean of 1e4 and a spread of 1e-2: a one-pass variance (E[x²] − E[x]²) would lose it
    X = 1e4 + 1e-2 * rng().standard_normal((4, 64))
    exact = (X - X.mean(1, keepdims=True)) / np.sqrt(X.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(fp.LayerNorm(64, dtype=F64)(X), exact, rtol=1e-9, atol=1e-9)
    y32 = fp.LayerNorm(64)(X.astype(np.float32))
    x32 = X.astype(np.float32).astype(F64)   # what float32 can hold of X
    exact32 = (x32 - x32.mean(1, keepdims=True)) / np.sqrt(x32.var(1, keepdims=True) + 1e-5)
    # float32 stores the mean 1e4 to ±2.4e-4 = 0.025 of the spread: the outputs may shift by
    # that much (torch's float32 mean as well); a one-pass variance would be off by orders more
    np.testing.assert_allclose(y32, exact32, atol=0.06)


def test_layernorm_bad_input_changes_nothing():
    with pytest.raises(ValueError, match="normalized_shape"):
        fp.LayerNorm((3, 4))
    with pytest.raises(ValueError, match="normalized_shape"):
        fp.LayerNorm(0)
    with pytest.raises(TypeError, match="normalized_shape"):
        fp.LayerNorm("4")
    with pytest.raises(ValueError, match="eps"):
        fp.LayerNorm(4, eps=-1)
    model = fp.Sequential(fp.Linear(3, 4), fp.LayerNorm(4))
    ln = model[1]
    X = rng().standard_normal((5, 3)).astype(np.float32)
    model(X)
    model.backward(np.ones((5, 4), np.float32))
    before = snapshot(model)
    with pytest.raises(ValueError, match="5 features, expected 4"):
        ln(rng().standard_normal((2, 5)))
    with pytest.raises(ValueError, match="features"):
        model(rng().standard_normal((2, 4)))
    assert same(before, snapshot(model))


# ------------------------------------------------------------------ BatchNorm1d

@pytest.mark.parametrize("momentum", [0.1, None, 0.5])
def test_batchnorm_running_statistics_and_eval_against_torch(momentum):
    torch = torch_or_skip()
    c = 6
    bn = fp.BatchNorm1d(c, eps=1e-3, momentum=momentum, dtype=F64)
    tb = torch.nn.BatchNorm1d(c, eps=1e-3, momentum=momentum, dtype=torch.float64)
    bn.weight.data = rng(1).standard_normal(c)
    bn.bias.data = rng(2).standard_normal(c)
    with torch.no_grad():
        tb.weight.copy_(torch.tensor(bn.weight.data))
        tb.bias.copy_(torch.tensor(bn.bias.data))
    for step in range(5):
        X = rng(10 + step).standard_normal((7 + step, c)) * (step + 1) + 100 * step
        G = rng(20 + step).standard_normal(X.shape)
        xt = torch.tensor(X, requires_grad=True)
        yt = tb(xt)
        yt.backward(torch.tensor(G))
        np.testing.assert_allclose(bn(X), yt.detach().numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(bn.backward(G), xt.grad.numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(bn.running_mean, tb.running_mean.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(bn.running_var, tb.running_var.numpy(), rtol=1e-10, atol=1e-12)
        assert int(bn.num_batches_tracked) == int(tb.num_batches_tracked) == step + 1
    np.testing.assert_allclose(bn.weight.grad, tb.weight.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(bn.bias.grad, tb.bias.grad.numpy(), rtol=1e-10, atol=1e-10)
    bn.eval(), tb.eval()
    X = rng(99).standard_normal((1, c))   # one row is fine in eval mode
    xt = torch.tensor(X, requires_grad=True)
    yt = tb(xt)
    yt.backward(torch.ones_like(yt))
    np.testing.assert_allclose(bn(X), yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(bn.backward(np.ones_like(X)), xt.grad.numpy(), rtol=1e-10, atol=1e-10)
    assert int(bn.num_batches_tracked) == 5
    assert list(bn.state_dict()) == list(tb.state_dict())


@pytest.mark.parametrize("affine, track", [(False, True), (True, False)])
def test_batchnorm_options_against_torch(affine, track):
    torch = torch_or_skip()
    bn = fp.BatchNorm1d(4, affine=affine, track_running_stats=track, dtype=F64)
    tb = torch.nn.BatchNorm1d(4, affine=affine, track_running_stats=track, dtype=torch.float64)
    assert (bn.weight is None) == (not affine) and (bn.running_mean is None) == (not track)
    for mode in ("train", "eval"):
        getattr(bn, mode)(), getattr(tb, mode)()
        X = rng(5).standard_normal((8, 4)) + 3
        xt = torch.tensor(X, requires_grad=True)
        yt = tb(xt)
        yt.backward(torch.tensor(X))
        np.testing.assert_allclose(bn(X), yt.detach().numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(bn.backward(X), xt.grad.numpy(), rtol=1e-10, atol=1e-10)
    assert list(bn.state_dict()) == list(tb.state_dict())


def test_batchnorm_bad_input_changes_nothing():
    with pytest.raises(ValueError, match="num_features"):
        fp.BatchNorm1d(0)
    with pytest.raises(ValueError, match="momentum"):
        fp.BatchNorm1d(3, momentum=2.0)
    model = fp.Sequential(fp.Linear(3, 4), fp.BatchNorm1d(4))
    X = rng().standard_normal((5, 3)).astype(np.float32)
    model(X)
    model.backward(np.ones((5, 4), np.float32))
    before = snapshot(model)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(X[:1])
    with pytest.raises(ValueError, match="5 features, expected 4"):
        model[1](rng().standard_normal((3, 5)))
    assert same(before, snapshot(model))
    assert int(model[1].num_batches_tracked) == 1
    model.eval()
    model(X[:1])   # fine in eval mode


# ------------------------------------------------------------------ buffers, copies, save/load

def make_model(dtype=np.float32, p=0.2):
    return fp.Sequential(fp.Linear(6, 16, dtype=dtype, rng=0), fp.LayerNorm(16, dtype=dtype), fp.Tanh(),
                         fp.Dropout(p, rng=1), fp.Linear(16, 8, dtype=dtype, rng=2),
                         fp.BatchNorm1d(8, dtype=dtype), fp.Tanh(), fp.Linear(8, 3, dtype=dtype, rng=3))


def data(n=32, dtype=np.float32):
    X = rng(4).standard_normal((n, 6)).astype(dtype)
    return X, np.arange(n) % 3


def test_buffers_are_in_state_dict_with_torchs_keys_not_in_parameters():
    torch = pytest.importorskip("torch")
    model = make_model()
    t = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.LayerNorm(16), torch.nn.Tanh(),
                            torch.nn.Dropout(0.2), torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8),
                            torch.nn.Tanh(), torch.nn.Linear(8, 3))
    assert list(model.state_dict()) == list(t.state_dict())
    assert [n for n, _ in model.named_buffers()] == [n for n, _ in t.named_buffers()]
    assert all(b is not p.data for b in model.buffers() for p in model.parameters())
    assert len(model.parameters()) == len(list(t.parameters()))


def test_buffers_travel_with_load_state_dict_save_load_deepcopy_pickle(tmp_path):
    model = make_model()
    X, y = data()
    fp.fit(model, X, y, loss=fp.SoftmaxCrossEntropy(), optimizer=fp.Adam(model.parameters(), 1e-2),
           epochs=2, batch_size=8, progress=False)
    bn = model[5]
    assert int(bn.num_batches_tracked) == 8 and not np.all(bn.running_var == 1)
    fp.save(model, tmp_path / "m.npz")
    copies = [copy.deepcopy(model), pickle.loads(pickle.dumps(model)), fp.load(tmp_path / "m.npz")]
    other = make_model()
    other.load_state_dict(model.state_dict())
    copies.append(other)
    model.eval()
    for c in copies:
        assert c[5].running_mean is not bn.running_mean
        np.testing.assert_array_equal(c[5].running_mean, bn.running_mean)
        np.testing.assert_array_equal(c[5].running_var, bn.running_var)
        assert int(c[5].num_batches_tracked) == 8
        np.testing.assert_array_equal(c.eval()(X), model(X))
    bad = model.state_dict()
    bad["5.running_var"] = np.ones(7)
    before = snapshot(other)
    with pytest.raises(ValueError, match="running_var"):
        other.load_state_dict(bad)
    assert same(before, snapshot(other))


# ------------------------------------------------------------------ gradients and training

def test_central_differences_float64():
    model = make_model(F64)
    X, y = data(16, F64)
    loss = fp.SoftmaxCrossEntropy()
    for mode in ("train", "eval"):
        getattr(model, mode)()
        if mode == "eval":
            # eps=1e-5, not the default 1e-6: some entries are ~1e-5, where the default step's
            # rounding noise (~4e-10 absolute) alone is a 3e-5 relative error (seen in the -O1 build)
            assert fp.gradcheck(model, loss, X, y, eps=1e-5) < 1e-5
        else:   # the bias of the Linear before BatchNorm has a zero gradient (the batch mean removes it):
            # relative errors of rounding noise there; compare every entry against an absolute scale
            state = model[3].rng_state()
            loss(model(X), y)
            model.backward(loss.backward())
            analytic = np.concatenate([p.grad.ravel() for p in model.parameters()])
            theta = fp.parameters_to_vector(model)
            num = np.empty_like(theta)
            for i in range(theta.size):
                vals = []
                for s in (1, -1):
                    t = theta.copy()
                    t[i] += s * 1e-6
                    m = copy.deepcopy(model)
                    fp.vector_to_parameters(t, m)
                    m[3].set_rng_state(state)
                    vals.append(loss(m(X), y))
                num[i] = (vals[0] - vals[1]) / 2e-6
            np.testing.assert_allclose(analytic, num, rtol=1e-6, atol=1e-9)
            model.zero_grad()
            model[3].set_rng_state(state)
        # the input gradient too, by central differences
        state = model[3].rng_state()
        loss(model(X), y)
        gx = model.backward(loss.backward())
        num = np.empty_like(X)
        for i in range(X.shape[0]):
            for j in range(X.shape[1]):
                vals = []
                for s in (1, -1):
                    Xe = X.copy()
                    Xe[i, j] += s * 1e-6
                    model[3].set_rng_state(state)
                    m = copy.deepcopy(model)   # BatchNorm's running statistics untouched
                    vals.append(loss(m(Xe), y))
                num[i, j] = (vals[0] - vals[1]) / 2e-6
        np.testing.assert_allclose(gx, num, rtol=1e-5, atol=1e-8)
        model.zero_grad()


def test_trainstep_equals_the_modular_path_float32_and_float64():
    for dtype in (np.float32, F64):
        a, b = make_model(dtype), make_model(dtype)
        X, y = data(32, dtype)
        loss = fp.SoftmaxCrossEntropy()
        oa, ob = fp.Adam(a.parameters(), 1e-2), fp.Adam(b.parameters(), 1e-2)
        step = fp.TrainStep(a, loss, oa)
        for k in range(4):
            xb, yb = X[8 * k:8 * k + 8], y[8 * k:8 * k + 8]
            Ja = step(xb, yb)
            ob.zero_grad()
            Jb = loss(b(xb), yb)
            b.backward(loss.backward())
            ob.step()
            assert Ja == Jb
        for p, q in zip(a.parameters(), b.parameters()):
            np.testing.assert_array_equal(p.data, q.data)
        for u, v in zip(a.buffers(), b.buffers()):
            np.testing.assert_array_equal(u, v)


def test_fit_on_the_digits_with_dropout_and_norms():
    X, y = fp.datasets.load_digits()
    Xtr, Xte, ytr, yte = fp.datasets.train_test_split(X, y, test_size=0.25, seed=0)
    model = fp.Sequential(fp.Linear(64, 64, rng=0), fp.BatchNorm1d(64), fp.ReLU(), fp.Dropout(0.1, rng=1),
                          fp.Linear(64, 64, rng=2), fp.LayerNorm(64), fp.ReLU(), fp.Linear(64, 10, rng=3))
    fp.fit(model, Xtr, ytr, loss=fp.SoftmaxCrossEntropy(), optimizer=fp.Adam(model.parameters(), 1e-2),
           epochs=5, batch_size=32, progress=False)
    assert model.training
    assert fp.evaluate(model, Xte, yte, fp.SoftmaxCrossEntropy())["accuracy"] > 0.9


def test_graph_with_the_new_layers_gradcheck():
    g = fp.Graph()
    x = g.input("x", 5)
    h = g.add(fp.Linear(5, 6, dtype=F64, rng=0), x)
    n = g.add(fp.LayerNorm(6, dtype=F64), h)
    b = g.add(fp.BatchNorm1d(6, dtype=F64), h)
    s = g.add(fp.Add(), n, g.add(fp.Dropout(0.3, rng=1), b))
    model = g.build(outputs=g.add(fp.Linear(6, 2, dtype=F64, rng=2), g.add(fp.Tanh(), s)))
    X = rng().standard_normal((10, 5))
    y = rng(1).standard_normal((10, 2))
    assert fp.gradcheck(model, fp.MSE(), X, y) < 1e-5
    model.eval()
    assert fp.gradcheck(model, fp.MSE(), X, y) < 1e-5


# ------------------------------------------------------------------ curvature

def numeric_hvp(model, loss, X, y, v, eps=1e-5, rewind=None):
    params = model.parameters()
    theta = fp.parameters_to_vector(model)
    out = []
    for s in (1, -1):
        fp.vector_to_parameters(theta + s * eps * v, model)
        if rewind:
            rewind()
        m = copy.deepcopy(model)
        m.zero_grad()
        loss(m(X), y)
        m.backward(loss.backward())
        out.append(np.concatenate([p.grad.ravel() for p in m.parameters()]))
    fp.vector_to_parameters(theta, model)
    assert len(params) == len(model.parameters())
    return (out[0] - out[1]) / (2 * eps)


@pytest.mark.parametrize("affine", [True, False])
def test_hvp_with_layernorm_and_batchnorm_eval_against_finite_differences(affine):
    model = fp.Sequential(fp.Linear(5, 7, dtype=F64, rng=0), fp.LayerNorm(7, elementwise_affine=affine, dtype=F64),
                          fp.Tanh(), fp.Linear(7, 6, dtype=F64, rng=1), fp.BatchNorm1d(6, dtype=F64),
                          fp.Tanh(), fp.LayerNorm(6, dtype=F64), fp.Linear(6, 3, dtype=F64, rng=2))
    X = rng().standard_normal((12, 5))
    y = np.arange(12) % 3
    model(X)   # running statistics away from (0, 1)
    model.eval()
    for m in model.modules():
        for p in m._params.values():
            p.data = p.data + 0.3 * rng(7).standard_normal(p.shape)
    v = rng(3).standard_normal(model.num_parameters())
    loss = fp.SoftmaxCrossEntropy()
    hv = fp.hvp(model, loss, X, y, v)
    np.testing.assert_allclose(hv, numeric_hvp(model, loss, X, y, v), rtol=1e-6, atol=1e-8)
    # the Gauss–Newton product: symmetric positive semi-definite
    u = rng(4).standard_normal(v.size)
    gv, gu = fp.gnvp(model, loss, X, y, v), fp.gnvp(model, loss, X, y, u)
    assert abs(u @ gv - v @ gu) < 1e-9 * max(1, abs(u @ gv)) and v @ gv >= -1e-12
    assert np.all([m.training is False for m in model.modules()])


def test_hvp_against_torch_with_layernorm():
    torch = torch_or_skip()
    model = fp.Sequential(fp.Linear(4, 5, dtype=F64, rng=0), fp.LayerNorm(5, dtype=F64), fp.Tanh(),
                          fp.Linear(5, 2, dtype=F64, rng=1))
    model[1].weight.data = 1 + 0.5 * rng(5).standard_normal(5)
    X = rng().standard_normal((6, 4))
    y = rng(1).standard_normal((6, 2))
    v = rng(2).standard_normal(model.num_parameters())
    shapes = [p.shape for p in model.parameters()]

    def J(*flat):
        ps = [f.reshape(s) for f, s in zip(flat, shapes)]
        h = torch.tensor(X) @ ps[0].T + ps[1]
        h = torch.tanh(torch.nn.functional.layer_norm(h, (5,), ps[2], ps[3], 1e-5))
        return ((h @ ps[4].T + ps[5] - torch.tensor(y)) ** 2).mean()

    theta = [torch.tensor(p.data.ravel()) for p in model.parameters()]
    vs = torch.split(torch.tensor(v), [int(np.prod(s)) for s in shapes])
    _, hv = torch.autograd.functional.hvp(J, tuple(theta), tuple(vs))
    np.testing.assert_allclose(fp.hvp(model, fp.MSE(), X, y, v), torch.cat(hv).numpy(), rtol=1e-10, atol=1e-12)


def test_hvp_dropout_in_training_is_the_fixed_mask_map():
    model = fp.Sequential(fp.Linear(5, 8, dtype=F64, rng=0), fp.Tanh(), fp.Dropout(0.4, rng=1),
                          fp.Linear(8, 3, dtype=F64, rng=2))
    X = rng().standard_normal((10, 5))
    y = np.arange(10) % 3
    v = rng(3).standard_normal(model.num_parameters())
    loss = fp.SoftmaxCrossEntropy()
    state = model[2].rng_state()
    hv = fp.hvp(model, loss, X, y, v)
    assert model[2].rng_state() != state   # the R pass drew one mask from the stream
    num = numeric_hvp(model, loss, X, y, v, rewind=lambda: model[2].set_rng_state(state))
    np.testing.assert_allclose(hv, num, rtol=1e-6, atol=1e-8)


def test_hvp_refuses_batchnorm_in_training_mode_and_changes_nothing():
    model = fp.Sequential(fp.Linear(3, 4), fp.BatchNorm1d(4), fp.Linear(4, 2))
    X = rng().standard_normal((6, 3)).astype(np.float32)
    out = np.full(model.num_parameters(), 7, np.float32)
    before = snapshot(model)
    with pytest.raises(TypeError, match="BatchNorm1d.*eval"):
        fp.hvp(model, fp.MSE(), X, np.zeros((6, 2)), np.ones(model.num_parameters()), out=out)
    assert same(before, snapshot(model)) and np.all(out == 7)
    model.eval()
    fp.hvp(model, fp.MSE(), X, np.zeros((6, 2)), np.ones(model.num_parameters()), out=out)


# ------------------------------------------------------------------ kernels against fastprop.reference

def test_dropout_kernel_mask_is_the_reference_philox_stream_bit_for_bit():
    from fastprop import reference
    for n, p, key, counter in ((1, 0.5, 0, 0), (1000, 0.1, 2 ** 64 - 1, 2 ** 64 - 10),
                               (4099, 0.9, 12345, 77), (300, 1.0, 1, 1), (257, 1e-12, 5, 0)):
        x = rng(n).standard_normal(n).astype(np.float32)
        y, m = fp.ops.dropout_forward(x, p, key, counter)
        ry, rm = reference.dropout_forward(x, p, key, counter)
        np.testing.assert_array_equal(m, rm)
        np.testing.assert_array_equal(y, ry)
        g = rng(n + 1).standard_normal(n).astype(np.float32)
        np.testing.assert_array_equal(fp.ops.dropout_backward(g, m, p), reference.dropout_backward(g, m, p))


@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (8, 64), (5, 33)])
@pytest.mark.parametrize("affine", [True, False])
def test_norm_kernels_against_the_reference(shape, affine):
    from fastprop import reference as ref
    r = rng(shape[1])
    x, rx, g, rg = (r.standard_normal(shape) + k for k in range(4))
    n = shape[1]
    w, b, vw, vb = ((r.standard_normal(n) if affine else None) for _ in range(4))
    close = dict(rtol=1e-10, atol=1e-11)
    for a, e in zip(fp.ops.layernorm_forward(x, w, b), ref.layernorm_forward(x, w, b)):
        np.testing.assert_allclose(a, e, **close)
    _, mean, rstd = fp.ops.layernorm_forward(x, w, b)
    kw = dict(grad_weight=np.zeros(n), grad_bias=np.zeros(n))
    for a, e in zip(fp.ops.layernorm_backward(g, x, mean, rstd, w, **kw),
                    ref.layernorm_backward(g, x, mean, rstd, w, **{k: np.zeros(n) for k in kw})):
        np.testing.assert_allclose(a, e, **close)
    for a, e in zip(fp.ops.layernorm_rforward(x, rx, w, b, vw, vb), ref.layernorm_rforward(x, rx, w, b, vw, vb)):
        np.testing.assert_allclose(a, e, **close)
    for gg in (g, None):
        for rxx in (rx, None):
            hv = dict(hv_weight=np.zeros(n), hv_bias=np.zeros(n))
            ours = fp.ops.layernorm_rbackward(gg, rg, x, rxx, w, vw, **hv)
            theirs = ref.layernorm_rbackward(gg, rg, x, rxx, w, vw, hv_weight=np.zeros(n), hv_bias=np.zeros(n))
            for a, e in zip(ours, theirs):
                assert (a is None) == (e is None)
                if a is not None:
                    np.testing.assert_allclose(a, e, **close)
    if shape[0] < 2:
        return
    rm, rv = r.standard_normal(n), r.random(n) + 0.5
    for stats in (True, False):
        a_rm, a_rv, e_rm, e_rv = rm.copy(), rv.copy(), rm.copy(), rv.copy()
        ours = fp.ops.batchnorm_forward(x, w, b, a_rm, a_rv, batch_stats=stats, momentum=0.3)
        theirs = ref.batchnorm_forward(x, w, b, e_rm, e_rv, batch_stats=stats, momentum=0.3)
        for a, e in zip(ours + (a_rm, a_rv), theirs + (e_rm, e_rv)):
            np.testing.assert_allclose(a, e, **close)
        _, mean, rstd = ours
        kw = dict(grad_weight=np.ones(n), grad_bias=np.ones(n), accumulate=True)
        for a, e in zip(fp.ops.batchnorm_backward(g, x, mean, rstd, w, batch_stats=stats, **kw),
                        ref.batchnorm_backward(g, x, mean, rstd, w, batch_stats=stats,
                                               grad_weight=np.ones(n), grad_bias=np.ones(n), accumulate=True)):
            np.testing.assert_allclose(a, e, **close)
    for a, e in zip(fp.ops.batchnorm_rforward(x, rx, mean, rstd, w, b, vw, vb),
                    ref.batchnorm_rforward(x, rx, mean, rstd, w, b, vw, vb)):
        np.testing.assert_allclose(a, e, **close)
    for gg in (g, None):
        ours = fp.ops.batchnorm_rbackward(gg, rg, x, rx, mean, rstd, w, vw, hv_weight=np.zeros(n), hv_bias=np.zeros(n))
        theirs = ref.batchnorm_rbackward(gg, rg, x, rx, mean, rstd, w, vw, hv_weight=np.zeros(n), hv_bias=np.zeros(n))
        for a, e in zip(ours, theirs):
            assert (a is None) == (e is None)
            if a is not None:
                np.testing.assert_allclose(a, e, **close)


def test_norm_kernels_bad_input_writes_nothing():
    x = rng().standard_normal((4, 5))
    out = np.full((4, 5), 7.0)
    for call, kind in ((lambda: fp.ops.layernorm_forward(x, np.ones(4), out=out), ValueError),
                       (lambda: fp.ops.layernorm_forward(x.astype(np.int64), out=out), TypeError),
                       (lambda: fp.ops.layernorm_forward(x, eps=-1.0, out=out), ValueError),
                       (lambda: fp.ops.layernorm_forward(x, np.ones(5, np.float32), out=out), TypeError),
                       (lambda: fp.ops.batchnorm_forward(x[:1], None, None, np.zeros(5), np.ones(5), out=out[:1]),
                        ValueError),
                       (lambda: fp.ops.batchnorm_forward(x, None, None, np.zeros(4), np.ones(5), out=out), ValueError),
                       (lambda: fp.ops.batchnorm_forward(x, batch_stats=False, out=out), ValueError),
                       (lambda: fp.ops.layernorm_forward(x, out=out[:, :4]), ValueError)):
        with pytest.raises(kind):
            call()
        assert np.all(out == 7.0)


def test_dropout_never_writes_into_an_earlier_input():
    d = fp.Dropout(0.5, rng=0)
    a = rng().standard_normal((4, 6))
    keep = a.copy()
    d.eval()
    d._forward(a)          # the identity: passes a through
    d.train()
    y = d._forward(rng(1).standard_normal((4, 6)))
    assert y is not a
    np.testing.assert_array_equal(a, keep)
