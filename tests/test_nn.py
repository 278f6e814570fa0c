"""The module API of fastprop.nn and fastprop.losses.

Linear and its initialisations, every activation module, PReLU, Sequential, the ONE
flat parameter buffer, state_dict, copies, the fused losses; against
fastprop.reference, central differences and (when installed) torch.nn.
"""
import copy
import pickle
import re

import numpy as np
import pytest
from conftest import RTOL, assert_close, assert_unchanged, central_diff, snapshot

import fastprop as fp
from fastprop import reference as ref
from fastprop.nn import flat_runs

F32, F64 = np.float32, np.float64

# (module class, constructor arguments, kernel name); parameters other than the defaults
# where there are any, so that they are really passed through
ACTS = [
    (fp.Identity, {}, "identity"),
    (fp.ReLU, {}, "relu"),
    (fp.LeakyReLU, {}, "leaky_relu"),
    (fp.LeakyReLU, {"negative_slope": 0.2}, "leaky_relu"),
    (fp.LeakyReLU, {"negative_slope": 0.0}, "leaky_relu"),
    (fp.LeakyReLU, {"negative_slope": -0.5}, "leaky_relu"),
    (fp.Abs, {}, "abs"),
    (fp.Sigmoid, {}, "sigmoid"),
    (fp.Tanh, {}, "tanh"),
    (fp.Softplus, {}, "softplus"),
    (fp.Softplus, {"beta": 1.5, "threshold": 1.0}, "softplus"),
    (fp.Cos, {}, "cos"),
    (fp.GELU, {}, "gelu"),
    (fp.SiLU, {}, "silu"),
]
ACT_IDS = [f"{c.__name__}{'-' + '-'.join(f'{k}={v}' for k, v in kw.items()) if kw else ''}"
           for c, kw, _ in ACTS]


def randn(rng, shape, dtype=F64, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def away_from_kinks(x, kw):
    """Move points off the kinks at 0 and at the softplus threshold (for central differences)."""
    x = np.array(x, dtype=np.float64)
    x[np.abs(x) < 1e-3] += 0.1
    if "threshold" in kw:
        bx = kw.get("beta", 1.0) * x
        x[np.abs(bx - kw["threshold"]) < 1e-3] += 0.1
    return x


def mlp(act=None, sizes=(5, 7, 6, 3), dtype=F32, seed=0, **kw):
    """Sequential(Linear, act, Linear, act, ..., Linear) with seeded weights and nonzero biases."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(fp.Linear(a, b, dtype=dtype, rng=seed + i, bias_init=0.1))
        if act is not None and i < len(sizes) - 2:
            layers.append(act(**kw))
    return fp.Sequential(*layers)


def data_address(a):
    return a.__array_interface__["data"][0]


# =========================================================================== Linear

def test_linear_shapes_and_forward():
    lin = fp.Linear(5, 3, rng=0)
    assert lin.weight.shape == (3, 5) and lin.bias.shape == (3,)
    assert lin.weight.dtype == F32 and lin.dtype == F32
    x = np.random.default_rng(1).standard_normal((4, 5)).astype(F32)
    y = lin(x)
    assert y.shape == (4, 3) and y.dtype == F32
    assert_close(y, x.astype(F64) @ lin.weight.data.T.astype(F64) + lin.bias.data, F32)
    assert np.array_equal(lin.forward(x), y)
    nob = fp.Linear(5, 3, bias=False, rng=0)
    assert nob.bias is None
    assert [n for n, _ in nob.named_parameters()] == ["weight"]
    assert_close(nob(x), x.astype(F64) @ nob.weight.data.T.astype(F64), F32)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "3", None])
def test_linear_rejects_bad_sizes(bad):
    with pytest.raises(ValueError):
        fp.Linear(bad, 3)
    with pytest.raises(ValueError):
        fp.Linear(3, bad)


def test_linear_rejects_unknown_init_and_dtype():
    with pytest.raises(ValueError):
        fp.Linear(3, 4, init="kaiming")
    with pytest.raises(TypeError):
        fp.Linear(3, 4, dtype=np.int32)
    with pytest.raises(TypeError):
        fp.Linear(3, 4, dtype=np.float16)


FAN_IN, FAN_OUT = 800, 300
# (init, distribution, scale): uniform in [-scale, scale] or normal with std scale
INITS = [
    ("he_uniform", "uniform", np.sqrt(6.0 / FAN_IN)),
    ("he_normal", "normal", np.sqrt(2.0 / FAN_IN)),
    ("xavier_uniform", "uniform", np.sqrt(6.0 / (FAN_IN + FAN_OUT))),
    ("xavier_normal", "normal", np.sqrt(2.0 / (FAN_IN + FAN_OUT))),
    ("lecun_normal", "normal", np.sqrt(1.0 / FAN_IN)),
]


@pytest.mark.parametrize("init,dist,scale", INITS, ids=[i[0] for i in INITS])
def test_linear_init_families(init, dist, scale):
    w = fp.Linear(FAN_IN, FAN_OUT, init=init, rng=3).weight.data.astype(F64)
    n = w.size  # 240,000 samples: the std estimate is good to ~0.3%
    assert abs(w.mean()) < 5 * w.std() / np.sqrt(n)
    if dist == "uniform":
        assert np.abs(w).max() <= scale * (1 + 1e-6)
        assert np.abs(w).max() > 0.999 * scale          # the bound is reached, not a smaller one
        assert abs(w.std() / (scale / np.sqrt(3)) - 1) < 0.02
    else:
        assert abs(w.std() / scale - 1) < 0.02
        # a normal, not a uniform: its kurtosis is 3 (a uniform's is 1.8)
        kurt = np.mean((w - w.mean()) ** 4) / w.var() ** 2
        assert abs(kurt - 3) < 0.1
    assert np.all(fp.Linear(FAN_IN, FAN_OUT, init=init, rng=3).bias.data == 0)


def test_linear_default_init_is_he_uniform():
    w = fp.Linear(FAN_IN, FAN_OUT, rng=5).weight.data
    bound = np.sqrt(6.0 / FAN_IN)
    assert np.abs(w).max() <= bound * (1 + 1e-6) and np.abs(w).max() > 0.999 * bound


@pytest.mark.parametrize("dtype", [F32, F64])
def test_linear_bias_init_constant(dtype):
    lin = fp.Linear(4, 6, bias_init=0.1, dtype=dtype)
    assert lin.bias.dtype == dtype
    assert np.array_equal(lin.bias.data, np.full(6, 0.1, dtype))


def test_linear_rng_seed_reproducible():
    a = fp.Linear(7, 5, rng=42).weight.data
    b = fp.Linear(7, 5, rng=42).weight.data
    c = fp.Linear(7, 5, rng=43).weight.data
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    g1 = fp.Linear(7, 5, rng=np.random.default_rng(9)).weight.data
    g2 = fp.Linear(7, 5, rng=np.random.default_rng(9)).weight.data
    assert np.array_equal(g1, g2)
    # a Generator is consumed: two layers drawn from one generator differ
    gen = np.random.default_rng(9)
    assert not np.array_equal(fp.Linear(7, 5, rng=gen).weight.data,
                              fp.Linear(7, 5, rng=gen).weight.data)


def test_linear_float64_weights_match_float32_draw():
    w32 = fp.Linear(6, 4, rng=1).weight.data
    w64 = fp.Linear(6, 4, rng=1, dtype=F64).weight.data
    assert w64.dtype == F64
    assert np.allclose(w32, w64, rtol=1e-6, atol=0)


# =========================================================================== activations

@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("cls,kw,name", ACTS, ids=ACT_IDS)
def test_activation_module_vs_reference(cls, kw, name, dtype, rng):
    m = cls(**kw)
    x = (3 * rng.standard_normal((6, 5))).astype(dtype)
    x[0, :3] = [0.0, -0.0, 25.0]
    y = m(x)
    assert y.dtype == dtype and y.shape == x.shape
    x64 = x.astype(F64)
    y_ref = ref.activation_forward(x64, name, **kw)
    assert_close(y, y_ref, dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    gx = m.backward(g)
    assert gx.dtype == dtype and gx.shape == x.shape
    assert_close(gx, ref.activation_backward(g.astype(F64), name, x=x64, y=y_ref, **kw), dtype)
    assert m.parameters() == [] and m.num_parameters() == 0


@pytest.mark.parametrize("cls,kw,name", ACTS, ids=ACT_IDS)
def test_sequential_with_activation_central_differences(cls, kw, name, rng):
    """Back-propagation of Linear → act → Linear → act → Linear against central differences."""
    model = mlp(cls, sizes=(4, 5, 5, 3), dtype=F64, **kw)
    x = randn(rng, (3, 4))
    G = randn(rng, (3, 3))
    # keep the pre-activations off the kinks, where central differences are meaningless
    for _ in range(20):
        h, ok = x, True
        for m in model.layers:
            h = m.forward(h)
            if isinstance(m, fp.Linear) and not np.array_equal(away_from_kinks(h, kw), h):
                ok = False
        if ok:
            break
        x = randn(rng, (3, 4))
    assert ok
    model.zero_grad()
    out = model(x)
    gx = model.backward(G)
    (flat, flat_grad), = flat_runs(model.parameters())
    analytic = flat_grad.copy()

    def J_of_x(z):
        return float(np.sum(model.forward(z) * G))

    def J_of_theta(theta):
        saved = flat.copy()
        flat[...] = theta
        try:
            return float(np.sum(model.forward(x) * G))
        finally:
            flat[...] = saved

    assert_close(gx, central_diff(J_of_x, x), rtol=1e-6)
    assert_close(analytic, central_diff(J_of_theta, flat.copy()), rtol=1e-6)
    # and the same numbers as the reference MLP (Goodfellow 6.3 / 6.4)
    lins = model.layers[::2]
    ws = [m.weight.data for m in lins]
    bs = [m.bias.data for m in lins]
    out_ref, cache = ref.mlp_forward(x, ws, bs, name, **kw)
    assert_close(out, out_ref, F64)
    gx_ref, gws, gbs = ref.mlp_backward(G, cache, ws)
    assert_close(gx, gx_ref, F64)
    for m, gw, gb in zip(lins, gws, gbs):
        assert_close(m.weight.grad, gw, F64)
        assert_close(m.bias.grad, gb, F64)


@pytest.mark.parametrize("num", [1, 5])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_prelu_vs_reference(num, dtype, rng):
    m = fp.PReLU(num, dtype=dtype)
    assert m.weight.shape == (num,) and m.weight.dtype == dtype
    assert np.all(m.weight.data == dtype(0.25))
    m.weight.data = rng.uniform(-1, 1, num)
    x = rng.standard_normal((7, 5)).astype(dtype)
    x[0, 0] = 0.0
    y = m(x)
    assert_close(y, ref.prelu_forward(x.astype(F64), m.weight.data.astype(F64)), dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    gx = m.backward(g)
    gi_ref, gw_ref = ref.prelu_backward(g.astype(F64), x.astype(F64), m.weight.data.astype(F64))
    assert_close(gx, gi_ref, dtype)
    assert_close(m.weight.grad, gw_ref, dtype)


def test_prelu_init_and_bad_arguments():
    assert np.all(fp.PReLU(3, init=-0.5).weight.data == np.float32(-0.5))
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError):
            fp.PReLU(bad)


@pytest.mark.parametrize("num", [1, 5])
def test_prelu_in_a_model_central_differences(num, rng):
    """The learnable slopes' gradient (and every other one) against central differences."""
    model = fp.Sequential(fp.Linear(4, 5, dtype=F64, rng=0), fp.PReLU(num, dtype=F64),
                          fp.Linear(5, 2, dtype=F64, rng=1))
    model[1].weight.data = rng.uniform(0.1, 0.9, num)
    x = randn(rng, (6, 4))
    G = randn(rng, (6, 2))
    model.zero_grad()
    model(x)
    gx = model.backward(G)
    (flat, flat_grad), = flat_runs(model.parameters())
    analytic = flat_grad.copy()
    slope_grad = model[1].weight.grad.copy()
    assert np.any(slope_grad != 0)

    def J_of_theta(theta):
        saved = flat.copy()
        flat[...] = theta
        try:
            return float(np.sum(model.forward(x) * G))
        finally:
            flat[...] = saved

    assert_close(analytic, central_diff(J_of_theta, flat.copy()), rtol=1e-6)
    assert_close(gx, central_diff(lambda z: float(np.sum(model.forward(z) * G)), x), rtol=1e-6)


def test_activation_constructor_arguments():
    with pytest.raises(TypeError):
        fp.ReLU(inplace=True)
    with pytest.raises(TypeError):
        fp.LeakyReLU(slope=0.1)
    with pytest.raises(ValueError):
        fp.Softplus(beta=0)
    assert fp.LeakyReLU().params["negative_slope"] == 0.01
    assert fp.Softplus().params == {"beta": 1.0, "threshold": 20.0}


# =========================================================================== backward

@pytest.mark.parametrize("dtype", [F32, F64])
def test_backward_returns_input_grad_and_accumulates(dtype, rng):
    model = mlp(fp.Tanh, dtype=dtype)
    x = rng.standard_normal((4, 5)).astype(dtype)
    g = rng.standard_normal((4, 3)).astype(dtype)
    model.zero_grad()
    model(x)
    gx1 = model.backward(g)
    once = [p.grad.copy() for p in model.parameters()]
    assert any(np.any(o != 0) for o in once)
    gx2 = model.backward(g)
    assert np.array_equal(gx1, gx2)          # dJ/dx does not accumulate
    for p, o in zip(model.parameters(), once):
        assert_close(p.grad, 2 * o.astype(F64), dtype)
    # dJ/dx against the chain rule written out
    W = [m.weight.data.astype(F64) for m in model.layers[::2]]
    b = [m.bias.data.astype(F64) for m in model.layers[::2]]
    a1 = x @ W[0].T + b[0]
    a2 = np.tanh(a1) @ W[1].T + b[1]
    d = ((g @ W[2]) * (1 - np.tanh(a2) ** 2)) @ W[1] * (1 - np.tanh(a1) ** 2) @ W[0]
    assert_close(gx1, d, dtype, rtol=10 * RTOL[dtype])
    model.zero_grad()
    assert all(np.all(p.grad == 0) for p in model.parameters())
    # a third backward after zero_grad gives the single gradient again
    model.backward(g)
    for p, o in zip(model.parameters(), once):
        assert np.array_equal(p.grad, o)


def test_prelu_backward_accumulates(rng):
    model = fp.Sequential(fp.Linear(4, 5, dtype=F64, rng=0), fp.PReLU(5, dtype=F64),
                          fp.Linear(5, 2, dtype=F64, rng=1), fp.PReLU(dtype=F64))
    x, g = randn(rng, (6, 4)), randn(rng, (6, 2))
    model.zero_grad()
    model(x)
    model.backward(g)
    once = [p.grad.copy() for p in model.parameters()]
    assert np.any(once[2] != 0) and np.any(once[5] != 0)      # both slopes get a gradient
    model.backward(g)
    for p, o in zip(model.parameters(), once):
        assert_close(p.grad, 2 * o, F64)


def test_linear_backward_accumulates_like_torch(rng):
    lin = fp.Linear(3, 2, rng=0, dtype=F64)
    x1, x2 = randn(rng, (4, 3)), randn(rng, (5, 3))
    g1, g2 = randn(rng, (4, 2)), randn(rng, (5, 2))
    lin(x1)
    lin.backward(g1)
    lin(x2)
    gx2 = lin.backward(g2)
    assert_close(lin.weight.grad, g1.T @ x1 + g2.T @ x2, F64)
    assert_close(lin.bias.grad, g1.sum(0) + g2.sum(0), F64)
    assert_close(gx2, g2 @ lin.weight.data, F64)


@pytest.mark.parametrize("make", [lambda: fp.Linear(3, 2), lambda: fp.ReLU(), lambda: fp.GELU(),
                                  lambda: fp.PReLU(3), lambda: mlp(fp.ReLU)],
                         ids=["Linear", "ReLU", "GELU", "PReLU", "Sequential"])
def test_backward_before_forward_raises(make):
    m = make()
    with pytest.raises(RuntimeError):
        m.backward(np.ones((2, 3), F32))


def test_backward_wrong_grad_shape_raises_and_changes_nothing(rng):
    model = mlp(fp.ReLU)
    model(rng.standard_normal((4, 5)))
    model.backward(np.ones((4, 3), F32))
    snap = snapshot(model)
    for bad in (np.ones((4, 2), F32), np.ones((3, 3), F32), np.ones(12, F32),
                np.ones((4, 3, 1), F32)):
        with pytest.raises(ValueError):
            model.backward(bad)
        assert_unchanged(model, snap)
    with pytest.raises((TypeError, ValueError)):
        model.backward(np.ones((4, 3), np.int64))
    assert_unchanged(model, snap)


# =========================================================================== forward input

@pytest.mark.parametrize("bad,exc", [
    (np.ones((4, 6), F32), ValueError),           # wrong width
    (np.ones((4, 4), F32), ValueError),
    (np.ones(5, F32), ValueError),                # 1-D
    (np.ones((2, 4, 5), F32), ValueError),        # 3-D
    (np.ones((4, 5), np.int64), (TypeError, ValueError)),
    (np.ones((4, 5), np.int32), (TypeError, ValueError)),
    (np.ones((4, 5), bool), (TypeError, ValueError)),
    (np.ones((4, 5), np.complex128), (TypeError, ValueError)),
    ([["a"] * 5] * 4, (TypeError, ValueError)),
], ids=["width6", "width4", "1d", "3d", "int64", "int32", "bool", "complex", "str"])
def test_forward_bad_input_raises_and_leaves_model_untouched(bad, exc, rng):
    model = mlp(fp.GELU)
    x = rng.standard_normal((3, 5)).astype(F32)
    y = model(x)
    model.backward(np.ones_like(y))
    snap = snapshot(model)
    with pytest.raises(exc):
        model(bad)
    assert_unchanged(model, snap)
    assert np.array_equal(model(x), y)


def test_forward_casts_float64_input_to_model_dtype(rng):
    model = mlp(fp.SiLU)
    x = rng.standard_normal((4, 5))
    y = model(x)
    assert y.dtype == F32
    assert np.array_equal(y, model(x.astype(F32)))
    # non-contiguous input too
    xt = np.asfortranarray(x.astype(F32))
    assert np.array_equal(model(xt), y)
    assert np.array_equal(model(np.ascontiguousarray(x[:, ::-1])[:, ::-1]), y)
    # and float32 input to a float64 model gives float64
    m64 = mlp(fp.SiLU, dtype=F64)
    assert m64(x.astype(F32)).dtype == F64


def test_forward_outputs_are_independent_arrays(rng):
    model = mlp(fp.ReLU)
    x1 = rng.standard_normal((4, 5)).astype(F32)
    x2 = rng.standard_normal((4, 5)).astype(F32)
    y1 = model(x1)
    y1_copy = y1.copy()
    y2 = model(x2)
    assert np.array_equal(y1, y1_copy)
    assert not np.shares_memory(y1, y2)
    assert not np.array_equal(y1, y2)
    # a returned array is the user's: writing into it does not change the backward
    g = rng.standard_normal((4, 3)).astype(F32)
    model.zero_grad()
    model(x2)
    gx_clean = model.backward(g)
    clean = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    y = model(x2)
    y[...] = -7.0
    gx = model.backward(g)
    assert np.array_equal(gx, gx_clean)
    for p, c in zip(model.parameters(), clean):
        assert np.array_equal(p.grad, c)
    # the returned input gradients are independent as well
    gx_copy = gx.copy()
    model.backward(2 * g)
    assert np.array_equal(gx, gx_copy)


def test_standalone_activation_outputs_are_independent(rng):
    m = fp.ReLU()
    x = rng.standard_normal((3, 4)).astype(F32)
    y1 = m(x)
    y2 = m(-x)
    assert np.array_equal(y1, np.maximum(x, 0))
    assert not np.shares_memory(y1, y2)


def test_batch_size_can_change_between_calls(rng):
    model = mlp(fp.GELU, dtype=F64)
    for batch in (5, 1, 9, 5):
        x = randn(rng, (batch, 5))
        model.zero_grad()
        out = model(x)
        assert out.shape == (batch, 3)
        gx = model.backward(np.ones_like(out))
        assert gx.shape == (batch, 5)
        ws = [m.weight.data for m in model.layers[::2]]
        bs = [m.bias.data for m in model.layers[::2]]
        out_ref, cache = ref.mlp_forward(x, ws, bs, "gelu")
        assert_close(out, out_ref, F64)
        gx_ref, gws, _ = ref.mlp_backward(np.ones_like(out), cache, ws)
        assert_close(gx, gx_ref, F64)
        assert_close(model[0].weight.grad, gws[0], F64)


# =========================================================================== the flat buffer

def assert_one_flat_buffer(model):
    params = model.parameters()
    runs = flat_runs(params)
    assert len(runs) == 1
    data, grad = runs[0]
    assert data.size == grad.size == model.num_parameters() == sum(p.size for p in params)
    assert not np.shares_memory(data, grad)
    item = data.itemsize
    for buf, get in ((data, lambda p: p.data), (grad, lambda p: p.grad)):
        offset = 0
        for p in params:
            a = get(p)
            assert np.shares_memory(a, buf)
            assert a.flags.c_contiguous
            assert data_address(a) == data_address(buf) + offset * item   # consecutive
            offset += p.size
        assert offset == buf.size
    return data, grad


def test_all_parameters_are_views_of_one_buffer():
    model = fp.Sequential(fp.Linear(5, 7, rng=0), fp.ReLU(), fp.Linear(7, 6, rng=1),
                          fp.PReLU(6), fp.Linear(6, 3, bias=False, rng=2))
    data, grad = assert_one_flat_buffer(model)
    # every view is rooted at one array that owns the memory
    roots = set()
    for p in model.parameters():
        a = p.data
        while a.base is not None:
            a = a.base
        roots.add(id(a))
    assert len(roots) == 1
    # the flat buffer really is the parameters
    data[...] = np.arange(data.size)
    assert model[0].weight.data[0, 1] == 1
    assert model[4].weight.data.ravel()[-1] == data.size - 1


def test_assigning_into_parameter_changes_output(rng):
    model = mlp(fp.ReLU)
    x = rng.standard_normal((4, 5)).astype(F32)
    y0 = model(x)
    model[-1].bias.data[...] += 1.0
    assert_close(model(x), y0 + 1.0, F32)
    # p.data = array copies into the view
    p = model[0].weight
    view_before = p.data
    new = rng.standard_normal(p.shape)
    p.data = new
    assert p.data is view_before or np.shares_memory(p.data, view_before)
    assert p.dtype == F32
    assert np.array_equal(p.data, new.astype(F32))
    new[...] = 0                                    # a copy, not a reference to `new`
    assert not np.all(p.data == 0)
    assert_one_flat_buffer(model)
    h = np.maximum(x.astype(F64) @ p.data.T.astype(F64) + model[0].bias.data, 0)
    h = np.maximum(h @ model[2].weight.data.T.astype(F64) + model[2].bias.data, 0)
    assert_close(model(x), h @ model[4].weight.data.T.astype(F64) + model[4].bias.data, F32)
    with pytest.raises(ValueError):
        p.data = np.zeros((p.shape[1], p.shape[0]))
    with pytest.raises(ValueError):
        p.data = np.zeros(p.size)
    with pytest.raises(ValueError):
        p.grad = np.zeros(3)


def test_named_parameters_and_order():
    model = fp.Sequential(fp.Linear(3, 4), fp.ReLU(), fp.Linear(4, 5), fp.PReLU(5),
                          fp.Linear(5, 2, bias=False), fp.PReLU())
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "4.weight", "5.weight"]
    params = model.parameters()
    assert [id(p) for p in params] == [id(p) for _, p in model.named_parameters()]
    assert params[0] is model[0].weight and params[1] is model[0].bias
    assert params[4] is model[3].weight
    assert [p.shape for p in params] == [(4, 3), (4,), (5, 4), (5,), (5,), (2, 5), (1,)]
    assert [n for n, _ in fp.Linear(2, 2).named_parameters()] == ["weight", "bias"]
    nested = fp.Sequential(fp.Sequential(fp.Linear(3, 4), fp.Tanh()), fp.Linear(4, 2))
    assert [n for n, _ in nested.named_parameters()] == ["0.0.weight", "0.0.bias", "1.weight",
                                                         "1.bias"]
    assert_one_flat_buffer(nested)


def test_nested_sequential_forward_backward(rng):
    inner = fp.Sequential(fp.Linear(3, 4, dtype=F64, rng=0), fp.Tanh())
    nested = fp.Sequential(inner, fp.Linear(4, 2, dtype=F64, rng=1))
    flat = fp.Sequential(fp.Linear(3, 4, dtype=F64, rng=0), fp.Tanh(),
                         fp.Linear(4, 2, dtype=F64, rng=1))
    x, g = randn(rng, (5, 3)), randn(rng, (5, 2))
    assert_close(nested(x), flat(x), F64)
    assert_close(nested.backward(g), flat.backward(g), F64)
    for p, q in zip(nested.parameters(), flat.parameters()):
        assert_close(p.grad, q.grad, F64)


def test_state_dict_round_trip(rng):
    a, b = mlp(fp.Tanh, seed=0), mlp(fp.Tanh, seed=10)
    x = rng.standard_normal((4, 5)).astype(F32)
    assert not np.array_equal(a(x), b(x))
    sd = a.state_dict()
    assert list(sd) == [n for n, _ in a.named_parameters()]
    for name, p in a.named_parameters():
        assert np.array_equal(sd[name], p.data) and not np.shares_memory(sd[name], p.data)
    sd_copy = {k: v.copy() for k, v in sd.items()}
    sd["0.weight"][...] = 0                       # a copy: the model is not changed
    assert not np.all(a[0].weight.data == 0)
    b.load_state_dict(sd_copy)
    assert np.array_equal(a(x), b(x))
    assert_one_flat_buffer(b)
    # float64 arrays are cast into a float32 model
    b.load_state_dict({k: v.astype(F64) for k, v in sd_copy.items()})
    assert b.dtype == F32 and np.array_equal(a(x), b(x))


def test_load_state_dict_mismatch_changes_nothing():
    a, b = mlp(fp.Tanh, seed=0), mlp(fp.Tanh, seed=10)
    snap = snapshot(b)
    good = a.state_dict()
    missing = dict(good)
    del missing["2.bias"]
    with pytest.raises((KeyError, ValueError, RuntimeError)):
        b.load_state_dict(missing)
    assert_unchanged(b, snap)
    extra = dict(good, **{"9.weight": np.zeros((2, 2))})
    with pytest.raises((KeyError, ValueError, RuntimeError)):
        b.load_state_dict(extra)
    assert_unchanged(b, snap)
    # a wrong shape on the LAST entry: the entries before it must not have been written
    wrong = dict(good)
    wrong["4.bias"] = np.zeros(4, F32)
    with pytest.raises(ValueError):
        b.load_state_dict(wrong)
    assert_unchanged(b, snap)
    wrong = dict(good)
    wrong["4.weight"] = good["4.weight"].T.copy()
    with pytest.raises(ValueError):
        b.load_state_dict(wrong)
    assert_unchanged(b, snap)
    strings = dict(good)
    strings["4.bias"] = np.array(["a", "b", "c"])
    with pytest.raises((TypeError, ValueError)):
        b.load_state_dict(strings)
    assert_unchanged(b, snap)


def test_repr_shows_parameter_count():
    model = fp.Sequential(fp.Linear(64, 128), fp.ReLU(), fp.Linear(128, 10))
    n = 64 * 128 + 128 + 128 * 10 + 10
    assert model.num_parameters() == n == 9610
    r = repr(model)
    assert re.search(r"9,?610 parameters", r), r
    assert "Linear" in r and "ReLU" in r and "in_features=64" in r
    assert "negative_slope=0.2" in repr(fp.LeakyReLU(negative_slope=0.2))


def test_sequential_rejects_the_same_module_twice():
    lin = fp.Linear(4, 4)
    with pytest.raises(ValueError):
        fp.Sequential(lin, fp.ReLU(), lin)
    act = fp.ReLU()
    with pytest.raises(ValueError):
        fp.Sequential(fp.Linear(4, 4), act, fp.Linear(4, 4), act)


def test_sequential_rejects_a_module_shared_through_nesting():
    lin = fp.Linear(4, 4)
    with pytest.raises(ValueError):
        fp.Sequential(fp.Sequential(lin, fp.ReLU()), lin)


def test_sequential_rejects_mismatched_widths():
    with pytest.raises(ValueError):
        fp.Sequential(fp.Linear(3, 4), fp.ReLU(), fp.Linear(5, 2))
    with pytest.raises(ValueError):
        fp.Sequential(fp.Linear(3, 4), fp.Linear(5, 2))
    with pytest.raises(ValueError):
        fp.Sequential(fp.Linear(3, 4), fp.PReLU(5))
    with pytest.raises(ValueError):
        fp.Sequential(fp.Sequential(fp.Linear(3, 4), fp.Tanh()), fp.Linear(5, 2))
    with pytest.raises(TypeError):
        fp.Sequential(fp.Linear(3, 4), "relu")
    with pytest.raises(TypeError):   # one model has one dtype
        fp.Sequential(fp.Linear(3, 4), fp.Linear(4, 2, dtype=F64))


def test_sequential_rejects_mismatched_width_after_prelu():
    with pytest.raises(ValueError):
        fp.Sequential(fp.Linear(3, 5), fp.PReLU(5), fp.Linear(4, 2))


def test_sequential_rejects_mismatched_width_after_nested_prelu():
    with pytest.raises(ValueError):
        fp.Sequential(fp.Sequential(fp.Linear(3, 5), fp.PReLU(5)), fp.Linear(4, 2))


def test_model_with_undetected_width_mismatch_fails_cleanly_at_forward():
    """Whatever the constructor accepts, a forward through mismatched layers raises."""
    try:
        model = fp.Sequential(fp.Linear(3, 5), fp.PReLU(5), fp.Linear(4, 2))
    except ValueError:
        return
    snap = snapshot(model)
    with pytest.raises(ValueError):
        model(np.ones((2, 3), F32))
    assert_unchanged(model, snap)


def train_a_little(model, rng, steps=3):
    x = rng.standard_normal((8, model.in_features)).astype(model.dtype)
    labels = rng.integers(0, model.out_features, 8)
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.SGD(model.parameters(), lr=0.5))
    for _ in range(steps):
        step(x, labels)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_are_independent_and_working(how, rng):
    model = fp.Sequential(fp.Linear(5, 7, rng=0), fp.GELU(), fp.Linear(7, 6, rng=1),
                          fp.PReLU(6), fp.Linear(6, 3, rng=2))
    x = rng.standard_normal((4, 5)).astype(F32)
    y = model(x)
    model.backward(np.ones_like(y))          # workspaces and gradients exist
    before = snapshot(model)
    clone = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    assert type(clone) is fp.Sequential and len(clone) == len(model)
    assert [n for n, _ in clone.named_parameters()] == [n for n, _ in model.named_parameters()]
    d0, _ = assert_one_flat_buffer(model)
    d1, g1 = assert_one_flat_buffer(clone)
    assert not np.shares_memory(d0, d1)
    for p, q in zip(model.parameters(), clone.parameters()):
        assert p is not q
        assert np.array_equal(p.data, q.data)
        assert not np.shares_memory(p.data, q.data) and not np.shares_memory(p.grad, q.grad)
    assert np.array_equal(clone(x), y)
    train_a_little(clone, rng)
    assert not np.array_equal(clone(x), y)
    assert_unchanged(model, before)
    assert np.array_equal(model(x), y)
    # and the other way round
    clone_snap = snapshot(clone)
    train_a_little(model, rng)
    assert_unchanged(clone, clone_snap)


def test_copy_of_a_single_linear(rng):
    lin = fp.Linear(3, 2, rng=0)
    c = pickle.loads(pickle.dumps(lin))
    x = rng.standard_normal((2, 3)).astype(F32)
    assert np.array_equal(c(x), lin(x))
    c.weight.data[...] = 0
    assert not np.all(lin.weight.data == 0)
    assert_one_flat_buffer(c)


def test_float64_model_end_to_end(rng):
    model = mlp(fp.Softplus, dtype=F64)
    assert model.dtype == F64
    assert all(p.dtype == F64 and p.grad.dtype == F64 for p in model.parameters())
    x = rng.standard_normal((6, 5))
    y = model(x)
    assert y.dtype == F64
    gx = model.backward(np.ones_like(y))
    assert gx.dtype == F64
    labels = rng.integers(0, 3, 6)
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.Adam(model.parameters(), lr=0.01))
    losses = [step(x, labels) for _ in range(30)]
    assert all(isinstance(v, float) for v in losses)
    assert losses[-1] < losses[0]
    assert all(p.dtype == F64 for p in model.parameters())


def test_empty_sequential_and_identity(rng):
    x = rng.standard_normal((3, 4)).astype(F32)
    s = fp.Sequential()
    out = s(x)
    assert np.array_equal(out, x) and not np.shares_memory(out, x)
    assert s.parameters() == []


# =========================================================================== vs torch.nn

def torch_copy(model, tmodel, torch):
    """Copies fastprop's parameters into a torch model, checking that the names agree."""
    tsd = tmodel.state_dict()
    assert list(tsd) == [n for n, _ in model.named_parameters()]
    with torch.no_grad():
        for name, p in model.named_parameters():
            tsd[name].copy_(torch.from_numpy(p.data.copy()))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_sequential_vs_torch(dtype, rng):
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    model = fp.Sequential(
        fp.Linear(6, 8, dtype=dtype, rng=0), fp.GELU(),
        fp.Linear(8, 8, dtype=dtype, rng=1), fp.SiLU(),
        fp.Linear(8, 8, dtype=dtype, rng=2), fp.Softplus(beta=2.0, threshold=1.0),
        fp.Linear(8, 8, dtype=dtype, rng=3), fp.LeakyReLU(negative_slope=0.1),
        fp.Linear(8, 8, dtype=dtype, rng=4), fp.PReLU(8, dtype=dtype),
        fp.Linear(8, 8, dtype=dtype, rng=5), fp.PReLU(dtype=dtype),
        fp.Linear(8, 8, dtype=dtype, rng=6), fp.Tanh(),
        fp.Linear(8, 8, dtype=dtype, rng=7), fp.Sigmoid(),
        fp.Linear(8, 8, bias=False, dtype=dtype, rng=8), fp.ReLU(),
        fp.Linear(8, 3, dtype=dtype, rng=9), fp.Softplus(), fp.Identity())
    model[9].weight.data = rng.uniform(-0.5, 0.5, 8)
    model[11].weight.data = [-0.3]
    tdt = torch.float32 if dtype == F32 else torch.float64
    tmodel = tnn.Sequential(
        tnn.Linear(6, 8), tnn.GELU(), tnn.Linear(8, 8), tnn.SiLU(),
        tnn.Linear(8, 8), tnn.Softplus(beta=2.0, threshold=1.0),
        tnn.Linear(8, 8), tnn.LeakyReLU(negative_slope=0.1),
        tnn.Linear(8, 8), tnn.PReLU(8), tnn.Linear(8, 8), tnn.PReLU(),
        tnn.Linear(8, 8), tnn.Tanh(), tnn.Linear(8, 8), tnn.Sigmoid(),
        tnn.Linear(8, 8, bias=False), tnn.ReLU(), tnn.Linear(8, 3), tnn.Softplus(),
        tnn.Identity()).to(tdt)
    torch_copy(model, tmodel, torch)
    x = rng.standard_normal((16, 6)).astype(dtype)
    g = rng.standard_normal((16, 3)).astype(dtype)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = tmodel(xt)
    yt.backward(torch.from_numpy(g.copy()))
    model.zero_grad()
    y = model(x)
    gx = model.backward(g)
    tol = 1e-5 if dtype == F32 else 1e-12
    assert_close(y, yt.detach().numpy(), rtol=tol)
    assert_close(gx, xt.grad.numpy(), rtol=tol)
    tparams = dict(tmodel.named_parameters())
    for name, p in model.named_parameters():
        assert_close(p.grad, tparams[name].grad.numpy(), rtol=tol)


@pytest.mark.parametrize("cls,kw,name", [a for a in ACTS if a[0] not in (fp.Abs, fp.Cos)],
                         ids=[i for a, i in zip(ACTS, ACT_IDS) if a[0] not in (fp.Abs, fp.Cos)])
def test_activation_vs_torch(cls, kw, name, rng):
    torch = pytest.importorskip("torch")
    tcls = getattr(torch.nn, cls.__name__)
    x = 4 * rng.standard_normal((5, 7))
    x[0, :2] = 0.0
    g = rng.standard_normal((5, 7))
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = tcls(**kw)(xt)
    yt.backward(torch.from_numpy(g.copy()))
    m = cls(**kw)
    assert_close(m(x), yt.detach().numpy(), rtol=1e-12)
    assert_close(m.backward(g), xt.grad.numpy(), rtol=1e-12)


# =========================================================================== losses

LOSSES = [fp.SoftmaxCrossEntropy, fp.SigmoidBCE, fp.MSE]


def loss_case(kind, rng, dtype, B=6, C=4, soft=False):
    z = (3 * rng.standard_normal((B, C))).astype(dtype)
    if kind is fp.SoftmaxCrossEntropy:
        if soft:
            t = rng.random((B, C))
            t = (t / t.sum(1, keepdims=True)).astype(dtype)
        else:
            t = rng.integers(0, C, B)
        return z, t, ref.softmax_cross_entropy
    if kind is fp.SigmoidBCE:
        return z, rng.random((B, C)).astype(dtype), ref.sigmoid_bce
    return z, rng.standard_normal((B, C)).astype(dtype), ref.mse


CASES = [(fp.SoftmaxCrossEntropy, False), (fp.SoftmaxCrossEntropy, True), (fp.SigmoidBCE, False),
         (fp.MSE, False)]
CASE_IDS = ["xent-labels", "xent-soft", "bce", "mse"]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("kind,soft", CASES, ids=CASE_IDS)
def test_loss_vs_reference(kind, soft, dtype, rng):
    z, t, fn = loss_case(kind, rng, dtype, soft=soft)
    loss = kind()
    J = loss(z, t)
    assert isinstance(J, float)
    J_ref, g_ref = fn(z.astype(F64), t if t.dtype.kind == "i" else t.astype(F64))
    assert abs(J - J_ref) <= RTOL[dtype] * max(abs(J_ref), 1e-30) * 10
    g = loss.backward()
    assert g.shape == z.shape and g.dtype == dtype
    assert_close(g, g_ref, dtype)
    assert loss.forward(z, t) == J


@pytest.mark.parametrize("kind,soft", CASES, ids=CASE_IDS)
def test_loss_gradient_central_differences(kind, soft, rng):
    z, t, _ = loss_case(kind, rng, F64, soft=soft)
    loss = kind()
    loss(z, t)
    g = loss.backward()
    assert_close(g, central_diff(lambda zz: kind()(zz, t), z), rtol=1e-7)


@pytest.mark.parametrize("kind,soft", CASES, ids=CASE_IDS)
def test_loss_vs_torch(kind, soft, rng):
    torch = pytest.importorskip("torch")
    z, t, _ = loss_case(kind, rng, F64, soft=soft)
    zt = torch.from_numpy(z.copy()).requires_grad_(True)
    tt = torch.from_numpy(t.copy())
    tloss = {fp.SoftmaxCrossEntropy: torch.nn.CrossEntropyLoss(), fp.SigmoidBCE:
             torch.nn.BCEWithLogitsLoss(), fp.MSE: torch.nn.MSELoss()}[kind]
    Jt = tloss(zt, tt)
    Jt.backward()
    loss = kind()
    J = loss(z, t)
    assert abs(J - Jt.item()) <= 1e-12 * max(1.0, abs(J))
    assert_close(loss.backward(), zt.grad.numpy(), rtol=1e-12)


def test_loss_backward_before_call_raises():
    for kind in LOSSES:
        with pytest.raises(RuntimeError):
            kind().backward()


def test_loss_backward_returns_a_new_array(rng):
    loss = fp.SoftmaxCrossEntropy()
    z1, t1, _ = loss_case(fp.SoftmaxCrossEntropy, rng, F32)
    z2, t2, _ = loss_case(fp.SoftmaxCrossEntropy, rng, F32)
    loss(z1, t1)
    g1 = loss.backward()
    g1_copy = g1.copy()
    loss(z2, t2)
    g2 = loss.backward()
    assert np.array_equal(g1, g1_copy)
    assert not np.shares_memory(g1, g2)
    g2[...] = 0
    assert np.any(loss.backward() != 0)


def test_losses_do_not_overflow_for_huge_logits():
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], F32)
    xent = fp.SoftmaxCrossEntropy()
    J = xent(z, np.array([1, 2]))
    assert np.isfinite(J) and abs(J - 2e4 / 2) < 1
    assert np.all(np.isfinite(xent.backward()))
    bce = fp.SigmoidBCE()
    J = bce(z, np.array([[0, 1, 0.5], [1, 1, 1]], F32))
    assert np.isfinite(J) and np.all(np.isfinite(bce.backward()))


def test_loss_bad_targets_raise(rng):
    z = rng.standard_normal((4, 3)).astype(F32)
    xent = fp.SoftmaxCrossEntropy()
    for bad in (np.array([0, 1, 3, 0]), np.array([0, -1, 1, 0]), np.array([0, 1, 2]),
                np.ones((4, 2), F32)):
        with pytest.raises(ValueError):
            xent(z, bad)
    with pytest.raises(ValueError):
        fp.SigmoidBCE()(z, np.ones((4, 2), F32))
    with pytest.raises(ValueError):
        fp.MSE()(z, np.ones((3, 3), F32))


def test_loss_accuracy():
    z = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]], F32)
    assert fp.SoftmaxCrossEntropy().accuracy(z, np.array([0, 1, 1, 2])) == 0.5
    assert fp.SigmoidBCE().accuracy(np.array([[1.0], [-1.0]]), np.array([[1.0], [1.0]])) == 0.5
    assert fp.MSE().accuracy(z, z) is None


def test_shallow_copy_shares_parameters_and_keeps_the_original_working():
    import copy
    model = fp.Sequential(fp.Linear(3, 4, rng=0), fp.ReLU(), fp.Linear(4, 2, rng=1))
    opt = fp.SGD(model.parameters(), lr=0.1)
    flat_before = model.parameters()[0]._flat
    shallow = copy.copy(model)
    assert model.parameters()[0]._flat is flat_before  # the original's buffers did not move
    assert shallow.parameters()[0] is model.parameters()[0]
    x = np.ones((2, 3), np.float32)
    out = model(x)
    model.backward(np.ones_like(out))
    opt.step()  # still valid: no RuntimeError about moved parameters


def test_forward_keeps_its_own_copy_of_the_input():
    model = fp.Sequential(fp.Linear(3, 2, rng=0, dtype=np.float64))
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    expected_x = x.copy()
    out = model(x)
    x[...] = 100.0  # the caller reuses its buffer before backward
    model.zero_grad()
    model.backward(np.ones_like(out))
    assert np.allclose(model[0].weight.grad, np.ones((2, 2)).T @ expected_x)
