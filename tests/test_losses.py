"""The weighted and robust losses: SoftmaxCrossEntropy(weight, label_smoothing), L1Loss,
HuberLoss, SmoothL1Loss, and sample_weight for every loss.

Checked against torch.nn (when installed), fastprop.reference, central differences of the
gradients, the fused TrainStep against the modular path, fp.hvp against differences of the
gradient, and bad input (a clear error, nothing changed).
"""
import copy
import pickle

import numpy as np
import pytest
from conftest import assert_close, assert_unchanged, central_diff, snapshot

import fastprop as fp
from fastprop import ops, reference

F32, F64 = np.float32, np.float64
TOL = {F32: 1e-5, F64: 1e-12}
B, C, K = 9, 5, 3

# (name, fastprop loss, options of its ops kernel, a torch loss with reduction="none")
ROBUST = [
    ("l1", lambda: fp.L1Loss(), {}, lambda nn: nn.L1Loss(reduction="none")),
    ("huber", lambda: fp.HuberLoss(), {"delta": 1.0}, lambda nn: nn.HuberLoss(reduction="none")),
    ("huber_0.3", lambda: fp.HuberLoss(0.3), {"delta": 0.3},
     lambda nn: nn.HuberLoss(reduction="none", delta=0.3)),
    ("smooth_l1", lambda: fp.SmoothL1Loss(), {"beta": 1.0},
     lambda nn: nn.SmoothL1Loss(reduction="none")),
    ("smooth_l1_0.4", lambda: fp.SmoothL1Loss(beta=0.4), {"beta": 0.4},
     lambda nn: nn.SmoothL1Loss(reduction="none", beta=0.4)),
    ("smooth_l1_0", lambda: fp.SmoothL1Loss(0.0), {"beta": 0.0},
     lambda nn: nn.SmoothL1Loss(reduction="none", beta=0.0)),
    ("mse", lambda: fp.MSE(), {}, lambda nn: nn.MSELoss(reduction="none")),
    ("bce", lambda: fp.SigmoidBCE(), {}, lambda nn: nn.BCEWithLogitsLoss(reduction="none")),
]
ROBUST_IDS = [r[0] for r in ROBUST]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def regression_data(rng, name, dtype, rows=B, k=K):
    pred = (2 * rng.standard_normal((rows, k))).astype(dtype)
    if name == "bce":
        return pred, rng.random((rows, k)).astype(dtype)
    target = (pred + 1.5 * rng.standard_normal((rows, k))).astype(dtype)
    target[0, 0] = pred[0, 0]  # a zero residual: L1's gradient there is 0, as torch's
    return pred, target


def torch_weighted(torch, per_element, sample_weight):
    """Σ_i w_i mean_j l_ij / Σ_i w_i from torch's unreduced loss."""
    rows = per_element.reshape(per_element.shape[0], -1).mean(dim=1)
    if sample_weight is None:
        return rows.mean()
    w = torch.as_tensor(sample_weight, dtype=rows.dtype)
    return (w * rows).sum() / w.sum()


# =========================================================================== against torch

@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "sample_weight"])
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("name,make,kw,make_torch", ROBUST, ids=ROBUST_IDS)
def test_pointwise_losses_match_torch(rng, name, make, kw, make_torch, dtype, weighted):
    torch = pytest.importorskip("torch")
    pred, target = regression_data(rng, name, dtype)
    w = rng.random(B).astype(dtype) + 0.1 if weighted else None
    loss = make()
    J = loss(pred, target, sample_weight=w)
    g = loss.backward()
    p = torch.tensor(pred, requires_grad=True)
    Jt = torch_weighted(torch, make_torch(torch.nn)(p, torch.tensor(target)), w)
    Jt.backward()
    assert abs(J - Jt.item()) <= TOL[dtype] * max(1.0, abs(Jt.item()))
    assert g.dtype == dtype
    assert_close(g, p.grad.numpy(), rtol=10 * TOL[dtype])
    # and fastprop.reference, the NumPy oracle with the same signature
    Jr, gr = getattr(reference, loss.kernel)(pred.astype(F64), target.astype(F64),
                                             sample_weight=w, **kw)
    assert abs(J - Jr) <= TOL[dtype] * max(1.0, abs(Jr))
    assert_close(g, gr, rtol=10 * TOL[dtype])


XENT = [dict(), dict(weight=True), dict(label_smoothing=0.25), dict(weight=True, label_smoothing=0.1),
        dict(label_smoothing=1.0)]
XENT_IDS = ["plain", "weight", "smooth", "weight+smooth", "smooth1"]


@pytest.mark.parametrize("weighted", [False, True], ids=["", "sample_weight"])
@pytest.mark.parametrize("soft", [False, True], ids=["labels", "soft"])
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("opts", XENT, ids=XENT_IDS)
def test_cross_entropy_matches_torch(rng, opts, dtype, soft, weighted):
    torch = pytest.importorskip("torch")
    z = (3 * rng.standard_normal((B, C))).astype(dtype)
    if soft:
        y = rng.random((B, C)).astype(dtype)
        y /= y.sum(axis=1, keepdims=True)
    else:
        y = rng.integers(0, C, B)
    cw = (rng.random(C) + 0.2) if opts.get("weight") else None
    eps = opts.get("label_smoothing", 0.0)
    sw = rng.random(B).astype(dtype) + 0.1 if weighted else None
    loss = fp.SoftmaxCrossEntropy(cw, eps)
    J = loss(z, y, sample_weight=sw)
    g = loss.backward()
    zt = torch.tensor(z, requires_grad=True)
    wt = None if cw is None else torch.tensor(cw, dtype=zt.dtype)
    if sw is None:  # torch's own mean
        Jt = torch.nn.CrossEntropyLoss(weight=wt, label_smoothing=eps)(zt, torch.tensor(y))
    else:  # torch's unreduced losses, weighted: the denominator gets s_i c_{y_i}
        per_row = torch.nn.functional.cross_entropy(zt, torch.tensor(y), weight=wt,
                                                    label_smoothing=eps, reduction="none")
        s = torch.tensor(sw, dtype=zt.dtype)
        d = s * (wt[torch.tensor(y)] if wt is not None and not soft else 1)
        Jt = (s * per_row).sum() / d.sum()
    Jt.backward()
    assert abs(J - Jt.item()) <= TOL[dtype] * max(1.0, abs(Jt.item()))
    assert_close(g, zt.grad.numpy(), rtol=10 * TOL[dtype])
    Jr, gr = reference.softmax_cross_entropy(z.astype(F64), y, weight=cw, label_smoothing=eps,
                                             sample_weight=sw)
    assert abs(J - Jr) <= TOL[dtype] * max(1.0, abs(Jr))
    assert_close(g, gr, rtol=10 * TOL[dtype])


@pytest.mark.parametrize("weighted", [False, True])
def test_gaussian_nll_sample_weight_matches_torch(rng, weighted):
    torch = pytest.importorskip("torch")
    z = rng.standard_normal((B, 2 * K))
    y = rng.standard_normal((B, K))
    w = rng.random(B) + 0.1 if weighted else None
    loss = fp.GaussianNLL()
    J = loss(z, y, sample_weight=w)
    g = loss.backward()
    zt = torch.tensor(z, requires_grad=True)
    per = torch.nn.GaussianNLLLoss(reduction="none")(zt[:, :K], torch.tensor(y), zt[:, K:].exp())
    Jt = torch_weighted(torch, per, w)
    Jt.backward()
    assert abs(J - Jt.item()) <= 1e-12 * max(1, abs(J))
    assert_close(g, zt.grad.numpy(), rtol=1e-10)


# =========================================================================== semantics

@pytest.mark.parametrize("name,make,kw,make_torch", ROBUST, ids=ROBUST_IDS)
def test_uniform_sample_weights_give_the_unweighted_loss(rng, name, make, kw, make_torch):
    pred, target = regression_data(rng, name, F64)
    J, g = getattr(ops, make().kernel)(pred, target, **kw)
    J3, g3 = getattr(ops, make().kernel)(pred, target, sample_weight=np.full(B, 3.0), **kw)
    assert abs(J - J3) <= 1e-14 * max(1, abs(J))
    assert_close(g3, g, rtol=1e-14)
    # a zero weight drops a row: the same as the loss of the other rows
    w = np.ones(B)
    w[2] = 0
    Jw, gw = getattr(ops, make().kernel)(pred, target, sample_weight=w, **kw)
    keep = np.arange(B) != 2
    Jk, gk = getattr(ops, make().kernel)(pred[keep], target[keep], **kw)
    assert abs(Jw - Jk) <= 1e-14 * max(1, abs(Jk))
    assert_close(gw[keep], gk, rtol=1e-14)
    assert not gw[2].any()


def test_cross_entropy_sample_weights_are_repeated_rows(rng):
    """An integer sample weight is the same as repeating the row (class weights and smoothing too)."""
    z, y = rng.standard_normal((6, C)), rng.integers(0, C, 6)
    counts = np.array([1, 2, 0, 3, 1, 1])
    loss = fp.SoftmaxCrossEntropy(weight=rng.random(C) + 0.5, label_smoothing=0.2)
    J = loss(z, y, sample_weight=counts)
    rows = np.repeat(np.arange(6), counts)
    assert abs(J - loss(z[rows], y[rows])) <= 1e-13


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("opts", XENT, ids=XENT_IDS)
def test_cross_entropy_extreme_logits_stay_finite(opts, dtype):
    z = np.array([[1e4, -1e4, 0.0, 5e3], [-1e4, -1e4, -1e4, 1e4]], dtype)
    y = np.array([1, 3])
    cw = np.array([1.0, 2.0, 0.5, 1.0]) if opts.get("weight") else None
    loss = fp.SoftmaxCrossEntropy(cw, opts.get("label_smoothing", 0.0))
    J = loss(z, y, sample_weight=np.array([1.0, 2.0]))
    g = loss.backward()
    assert np.isfinite(J) and np.isfinite(g).all()
    Jr, gr = reference.softmax_cross_entropy(z.astype(F64), y, weight=cw,
                                             label_smoothing=opts.get("label_smoothing", 0.0),
                                             sample_weight=np.array([1.0, 2.0]))
    assert abs(J - Jr) <= TOL[dtype] * abs(Jr)
    assert_close(g, gr, rtol=TOL[dtype])


@pytest.mark.parametrize("name,make,kw,make_torch", ROBUST, ids=ROBUST_IDS)
def test_pointwise_extremes_stay_finite(name, make, kw, make_torch):
    p = np.array([[1e4, -1e4, 1e30], [0.0, -1e30, 1.0]], F32)
    # residuals of 2e30: their squares overflow float, not the double they are summed in
    t = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], F32) if name == "bce" else -p
    J, g = getattr(ops, make().kernel)(p, t, sample_weight=np.array([1.0, 3.0], F32), **kw)
    assert np.isfinite(J) and np.isfinite(g).all()


# =========================================================================== gradients

def loss_value(loss, pred, target, w):
    return copy.deepcopy(loss)(pred, target, sample_weight=w)


@pytest.mark.parametrize("name,make,kw,make_torch", ROBUST, ids=ROBUST_IDS)
def test_pointwise_gradients_are_central_differences(rng, name, make, kw, make_torch):
    pred, target = regression_data(rng, name, F64, rows=4)
    pred[0, 0] += 0.5  # no residual at a kink (0, ±delta, ±beta) within the step
    w = rng.random(4) + 0.1
    loss = make()
    loss(pred, target, sample_weight=w)
    num = central_diff(lambda p: loss_value(loss, p, target, w), pred)
    assert_close(loss.backward(), num, rtol=1e-7)


@pytest.mark.parametrize("soft", [False, True], ids=["labels", "soft"])
@pytest.mark.parametrize("opts", XENT, ids=XENT_IDS)
def test_cross_entropy_gradients_are_central_differences(rng, opts, soft):
    z = rng.standard_normal((4, C))
    y = rng.random((4, C)) if soft else rng.integers(0, C, 4)
    loss = fp.SoftmaxCrossEntropy(rng.random(C) + 0.2 if opts.get("weight") else None,
                                  opts.get("label_smoothing", 0.0))
    w = rng.random(4) + 0.1
    loss(z, y, sample_weight=w)
    num = central_diff(lambda a: loss_value(loss, a, y, w), z)
    assert_close(loss.backward(), num, rtol=1e-7)


def test_gaussian_nll_weighted_gradient_is_central_differences(rng):
    z, y, w = rng.standard_normal((4, 4)), rng.standard_normal((4, 2)), rng.random(4) + 0.1
    loss = fp.GaussianNLL()
    loss(z, y, sample_weight=w)
    assert_close(loss.backward(), central_diff(lambda a: loss_value(loss, a, y, w), z), rtol=1e-7)


# =========================================================================== loss Hessian–vector products

LOSS_HVPS = ROBUST + [
    ("xent_weight_smooth", lambda: fp.SoftmaxCrossEntropy(np.array([1, 2, .5, 1, 3.]), 0.2),
     None, None),
]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("name,make,kw,make_torch", LOSS_HVPS, ids=[r[0] for r in LOSS_HVPS])
def test_loss_hvps_are_differences_of_the_gradient(rng, name, make, kw, make_torch, weighted):
    loss = make()
    if name.startswith("xent"):
        pred, target = rng.standard_normal((B, C)), rng.integers(0, C, B)
    else:
        pred, target = regression_data(rng, name, F64, k=C)
        pred[0, 0] += 0.5
    w = rng.random(B) + 0.1 if weighted else None
    v = rng.standard_normal(pred.shape)
    args = loss.kernel_args(F64)
    hv = getattr(ops, f"{loss.kernel}_hvp")(pred, target, v, sample_weight=w, **args)
    eps = 1e-6
    grad = lambda p: getattr(ops, loss.kernel)(p, target, sample_weight=w, **args)[1]  # noqa: E731
    assert_close(hv, (grad(pred + eps * v) - grad(pred - eps * v)) / (2 * eps), rtol=1e-7,
                 scale=max(np.abs(hv).max(), 1e-3))
    assert_close(hv, getattr(reference, f"{loss.kernel}_hvp")(pred, target, v, sample_weight=w,
                                                              **args), rtol=1e-12)
    if name in ("l1", "smooth_l1_0"):
        assert not hv.any()


def model64(n_out, seed=0):
    return fp.Sequential(fp.Linear(4, 7, dtype=F64, rng=seed), fp.Tanh(),
                         fp.Linear(7, n_out, dtype=F64, rng=seed + 1))


def flat_grad(model, loss, x, y):
    model.zero_grad()
    loss(model(x), y)
    model.backward(loss.backward())
    return np.concatenate([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("make_loss", [
    lambda: fp.HuberLoss(0.5), lambda: fp.SmoothL1Loss(0.7), lambda: fp.L1Loss(),
    lambda: fp.SoftmaxCrossEntropy(np.array([0.5, 2.0, 1.0]), 0.1),
], ids=["huber", "smooth_l1", "l1", "xent_weight_smooth"])
def test_model_hvp_with_the_new_losses(rng, make_loss):
    loss = make_loss()
    model = model64(3)
    x = rng.standard_normal((10, 4))
    y = rng.integers(0, 3, 10) if isinstance(loss, fp.SoftmaxCrossEntropy) else \
        model(x) + rng.standard_normal((10, 3))
    v = rng.standard_normal(model.num_parameters())
    hv = fp.hvp(model, loss, x, y, v)
    theta = fp.parameters_to_vector(model)
    eps = 1e-6
    fp.vector_to_parameters(theta + eps * v, model)
    gp = flat_grad(model, loss, x, y)
    fp.vector_to_parameters(theta - eps * v, model)
    gm = flat_grad(model, loss, x, y)
    fp.vector_to_parameters(theta, model)
    assert_close(hv, (gp - gm) / (2 * eps), rtol=1e-6)
    # in chunks: the chunks are weighted by their share of the (class-weighted) denominator
    assert_close(fp.hvp(model, loss, x, y, v, batch_size=3), hv, rtol=1e-12)
    fp.gnvp(model, loss, x, y, v)  # runs (the losses' Hessians are positive semi-definite)


# =========================================================================== TrainStep and fit

def mlp(dtype=F32, sizes=(6, 16, 12, 4), seed=0):
    return fp.Sequential(fp.Linear(sizes[0], sizes[1], dtype=dtype, rng=seed), fp.ReLU(),
                         fp.Linear(sizes[1], sizes[2], dtype=dtype, rng=seed + 1), fp.Tanh(),
                         fp.Linear(sizes[2], sizes[3], dtype=dtype, rng=seed + 2))


def modular_step(model, loss, opt, x, y, w):
    model.zero_grad()
    J = loss(model(x), y, sample_weight=w)
    model.backward(loss.backward())
    opt.step()
    return J


STEP_LOSSES = [
    lambda: fp.L1Loss(), lambda: fp.HuberLoss(0.4), lambda: fp.SmoothL1Loss(0.3),
    lambda: fp.SmoothL1Loss(0.0), lambda: fp.MSE(), lambda: fp.SigmoidBCE(),
    lambda: fp.SoftmaxCrossEntropy(), lambda: fp.SoftmaxCrossEntropy(np.array([1, 2, .5, 1.5]), 0.1),
]
STEP_IDS = ["l1", "huber", "smooth_l1", "smooth_l1_0", "mse", "bce", "xent", "xent_weight_smooth"]


def step_targets(loss, rng, n):
    if isinstance(loss, fp.SoftmaxCrossEntropy):
        return rng.integers(0, 4, n)
    if isinstance(loss, fp.SigmoidBCE):
        return (rng.random((n, 4)) > 0.5).astype(F32)
    return rng.standard_normal((n, 4))


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("weighted", [False, True], ids=["", "sample_weight"])
@pytest.mark.parametrize("make_loss", STEP_LOSSES, ids=STEP_IDS)
def test_fused_trainstep_equals_the_modular_path(rng, make_loss, weighted, dtype):
    a, b = mlp(dtype), mlp(dtype)
    step = fp.TrainStep(a, make_loss(), fp.SGD(a.parameters(), lr=0.05, momentum=0.9))
    assert step.fused
    loss_b, opt_b = make_loss(), fp.SGD(b.parameters(), lr=0.05, momentum=0.9)
    rtol = 1e-5 if dtype is F32 else 1e-12
    for i in range(6):
        n = (8, 5)[i % 2]
        x = rng.standard_normal((n, 6)).astype(dtype)
        y = step_targets(loss_b, rng, n)
        w = rng.random(n) * 2 if weighted else None
        Ja = step(x, y, w)
        Jb = modular_step(b, loss_b, opt_b, x, y, w)
        assert abs(Ja - Jb) <= rtol * max(1.0, abs(Jb))
    pa = np.concatenate([p.data.reshape(-1) for p in a.parameters()])
    pb = np.concatenate([p.data.reshape(-1) for p in b.parameters()])
    assert_close(pa, pb, rtol=10 * rtol)
    assert not np.array_equal(pa, np.concatenate([p.data.reshape(-1) for p in mlp(dtype).parameters()]))


def test_weighted_fused_step_allocates_nothing(rng):
    import tracemalloc
    model = mlp()
    loss = fp.SoftmaxCrossEntropy(np.ones(4), label_smoothing=0.1)
    step = fp.TrainStep(model, loss, fp.SGD(model.parameters(), lr=0.01))
    x = rng.standard_normal((32, 6)).astype(F32)
    y, w = rng.integers(0, 4, 32), rng.random(32).astype(F32)
    for _ in range(3):
        step(x, y, w)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(10):
            step(x, y, w)
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - start < 512 and end - start < 512, peak - start


@pytest.mark.parametrize("make_loss", [lambda: fp.HuberLoss(0.5), lambda: fp.SoftmaxCrossEntropy(
    np.array([1.0, 0.5, 2.0, 1.0]))], ids=["huber", "xent_weight"])
def test_fit_with_sample_weight_is_trainstep_on_the_shuffled_batches(rng, make_loss):
    loss = make_loss()
    X = rng.standard_normal((50, 6)).astype(F32)
    y = step_targets(loss, rng, 50)
    w = rng.random(50).astype(F32)
    a, b = mlp(), mlp()
    hist = fp.fit(a, X, y, loss=loss, optimizer=fp.Adam(a.parameters(), lr=0.01), epochs=2,
                  batch_size=16, seed=3, progress=False, sample_weight=w)
    step = fp.TrainStep(b, make_loss(), fp.Adam(b.parameters(), lr=0.01))
    order_rng = np.random.default_rng(3)
    for epoch in range(2):
        order = order_rng.permutation(50)
        num = den = 0.0
        for s in range(0, 50, 16):
            idx = order[s:s + 16]
            J = step(X[idx], y[idx], w[idx])
            m = loss.weight_total(y[idx], w[idx])
            num, den = num + J * m, den + m
        assert abs(hist["loss"][epoch] - num / den) <= 1e-6 * abs(num / den)
    for p, q in zip(a.parameters(), b.parameters()):
        assert np.array_equal(p.data, q.data)
    # evaluate: the weighted mean over the whole set, whatever its chunks
    full = make_loss()(a(X), y, sample_weight=w)
    got = fp.evaluate(a, X, y, loss, batch_size=7, sample_weight=w)["loss"]
    assert abs(got - full) <= 1e-6 * abs(full)
    assert abs(fp.evaluate(a, X, y, loss, batch_size=7)["loss"] - make_loss()(a(X), y)) <= 1e-6


# =========================================================================== bad input

BAD_WEIGHTS = [
    (np.array([1.0, -1.0, 1.0, 1.0]), ValueError, "sample_weight"),
    (np.array([1.0, np.nan, 1.0, 1.0]), ValueError, "sample_weight"),
    (np.array([1.0, np.inf, 1.0, 1.0]), ValueError, "sample_weight"),
    (np.ones(3), ValueError, "sample_weight"),
    (np.ones((4, 1)), ValueError, "sample_weight"),
    (np.zeros(4), ValueError, "sum to 0"),
    (np.array(["a", "b", "c", "d"]), TypeError, "sample_weight"),
]


@pytest.mark.parametrize("bad,exc,match", BAD_WEIGHTS,
                         ids=["negative", "nan", "inf", "short", "2d", "zeros", "strings"])
@pytest.mark.parametrize("make_loss", STEP_LOSSES[:3] + STEP_LOSSES[-1:] + [lambda: fp.GaussianNLL()],
                         ids=["l1", "huber", "smooth_l1", "xent", "gaussian"])
def test_bad_sample_weights_raise_and_change_nothing(rng, make_loss, bad, exc, match):
    loss = make_loss()
    n_out = 8 if isinstance(loss, fp.GaussianNLL) else 4
    pred = rng.standard_normal((4, n_out))
    y = rng.integers(0, 4, 4) if isinstance(loss, fp.SoftmaxCrossEntropy) else rng.standard_normal((4, 4))
    with pytest.raises(exc, match=match):
        loss(pred, y, sample_weight=bad)
    with pytest.raises(RuntimeError):
        loss.backward()  # nothing was computed
    if isinstance(loss, fp.GaussianNLL):
        return
    for fused in (True, False):
        model = mlp(F64) if fused else fp.Sequential(fp.Linear(6, 4, dtype=F64, rng=0), fp.PReLU(dtype=F64))
        opt = fp.Adam(model.parameters(), lr=0.1)
        step = fp.TrainStep(model, loss, opt)
        assert step.fused is fused
        x = rng.standard_normal((4, 6))
        step(x, y)
        snap = snapshot(model, opt)
        with pytest.raises(exc, match=match):
            step(x, y, bad)
        assert_unchanged(model, snap, opt)
    if match != "sum to 0":
        with pytest.raises(exc, match="sample_weight"):
            fp.fit(model, np.tile(x, (2, 1)), np.concatenate([y, y]), loss, opt, epochs=1,
                   progress=False, sample_weight=np.concatenate([bad, bad]) if bad.ndim == 1 else bad)
        assert_unchanged(model, snap, opt)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(weight=[1.0, -0.5, 1.0]), ValueError, "weight"),
    (dict(weight=[1.0, np.nan, 1.0]), ValueError, "weight"),
    (dict(weight=[[1.0, 1.0]]), ValueError, "weight"),
    (dict(weight=[]), ValueError, "weight"),
    (dict(weight=["x", "y"]), TypeError, "weight"),
    (dict(label_smoothing=-0.1), ValueError, "label_smoothing"),
    (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
    (dict(label_smoothing=float("nan")), ValueError, "label_smoothing"),
    (dict(label_smoothing="0.1"), TypeError, "label_smoothing"),
])
def test_bad_cross_entropy_options_raise(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fp.SoftmaxCrossEntropy(**kwargs)


@pytest.mark.parametrize("make,exc", [
    (lambda: fp.HuberLoss(0.0), ValueError), (lambda: fp.HuberLoss(-1.0), ValueError),
    (lambda: fp.HuberLoss(float("nan")), ValueError), (lambda: fp.HuberLoss("1"), TypeError),
    (lambda: fp.SmoothL1Loss(-0.1), ValueError), (lambda: fp.SmoothL1Loss(float("inf")), ValueError),
])
def test_bad_delta_and_beta_raise(make, exc):
    with pytest.raises(exc, match="delta|beta"):
        make()
    for fn, name in ((ops.huber_loss, "delta"), (ops.huber_loss_hvp, "delta")):
        args = (np.ones((2, 2)), np.zeros((2, 2))) + ((np.ones((2, 2)),) if "hvp" in fn.__name__ else ())
        with pytest.raises(ValueError, match=name):
            fn(*args, **{name: 0.0})


def test_class_weights_of_the_wrong_length_raise_and_change_nothing(rng):
    loss = fp.SoftmaxCrossEntropy(weight=np.ones(3))
    with pytest.raises(ValueError, match="weight"):
        loss(rng.standard_normal((4, 4)), rng.integers(0, 4, 4))
    for fused in (True, False):
        model = mlp() if fused else fp.Sequential(fp.Linear(6, 4, rng=0), fp.PReLU())
        opt = fp.SGD(model.parameters(), lr=0.1, momentum=0.9)
        snap = snapshot(model, opt)
        with pytest.raises(ValueError, match="weight"):
            step = fp.TrainStep(model, loss, opt)
            step(rng.standard_normal((4, 6)).astype(F32), rng.integers(0, 4, 4))
        assert_unchanged(model, snap, opt)


def test_hessian_free_refuses_sample_weights(rng):
    model = mlp(F64)
    step = fp.TrainStep(model, fp.MSE(), fp.HessianFree(model.parameters()))
    snap = snapshot(model)
    with pytest.raises(TypeError, match="sample_weight"):
        step(rng.standard_normal((4, 6)), rng.standard_normal((4, 4)), np.ones(4))
    assert_unchanged(model, snap)


# =========================================================================== copies and repr

@pytest.mark.parametrize("make", [
    lambda: fp.SoftmaxCrossEntropy(np.array([1.0, 2.0, 0.5]), label_smoothing=0.2),
    lambda: fp.HuberLoss(0.3), lambda: fp.SmoothL1Loss(beta=0.0), lambda: fp.L1Loss(),
], ids=["xent", "huber", "smooth_l1", "l1"])
def test_copies_keep_the_configuration(rng, make):
    loss = make()
    z = rng.standard_normal((5, 3))
    y = rng.integers(0, 3, 5) if isinstance(loss, fp.SoftmaxCrossEntropy) else rng.standard_normal((5, 3))
    J = loss(z, y)
    for clone in (copy.deepcopy(loss), pickle.loads(pickle.dumps(loss))):
        assert type(clone) is type(loss) and repr(clone) == repr(loss)
        assert clone(z, y) == J
        assert_close(clone.backward(), loss.backward(), rtol=0)
    assert repr(fp.SoftmaxCrossEntropy(label_smoothing=0.1)) == "SoftmaxCrossEntropy(label_smoothing=0.1)"
    assert repr(fp.HuberLoss(2)) == "HuberLoss(delta=2.0)"


def test_gradcheck_with_the_new_losses(rng):
    model = model64(3)
    x = rng.standard_normal((5, 4))
    # gradcheck deep-copies the loss: its options must survive the copy
    assert fp.gradcheck(model, fp.SoftmaxCrossEntropy(np.array([1.0, 3.0, 0.5]), 0.2), x,
                        rng.integers(0, 3, 5)) < 1e-6
    assert fp.gradcheck(model, fp.HuberLoss(0.5), x, rng.standard_normal((5, 3))) < 1e-6


def test_autodiff_uses_the_loss_options(rng):
    """fp.hessian's block path and fp.per_example_grads run the loss with its options (delta)."""
    model = model64(3)
    x = rng.standard_normal((6, 4))
    y = model(x) + rng.standard_normal((6, 3))
    loss = fp.HuberLoss(0.3)
    n = model.num_parameters()
    H = fp.hessian(model, loss, x, y)
    cols = np.stack([fp.hvp(model, loss, x, y, e) for e in np.eye(n)], axis=1)
    assert_close(H, cols, rtol=1e-10)
    G = fp.per_example_grads(model, loss, x, y)
    for i in range(6):  # row i: the gradient of example i's own loss
        assert_close(G[i], flat_grad(model, fp.HuberLoss(0.3), x[i:i + 1], y[i:i + 1]), rtol=1e-10)
