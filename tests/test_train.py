"""Optimizers, TrainStep, fit, predict/predict_proba/evaluate and gradcheck.

Optimizer trajectories are checked step for step against update formulas written
out here (always) and torch.optim (when installed); TrainStep against the modular
path; fit on the 8x8 digits.
"""
import math
import sys
import tracemalloc

import numpy as np
import pytest
from conftest import assert_close, assert_unchanged, snapshot

import fastprop as fp
from fastprop.nn import flat_runs

F32, F64 = np.float32, np.float64


def mlp(act=fp.ReLU, sizes=(6, 16, 12, 4), dtype=F32, seed=0, bias=True, act_kw=None):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(fp.Linear(a, b, bias=bias, dtype=dtype, rng=seed + i,
                                bias_init=0.05 if bias else 0.0))
        if act is not None and i < len(sizes) - 2:
            layers.append(act(**(act_kw or {})))
    return fp.Sequential(*layers)


def flat(model):
    (data, _), = flat_runs(model.parameters())
    return data


@pytest.fixture(scope="module")
def digits():
    X, y = fp.datasets.load_digits()
    return fp.datasets.train_test_split(X, y, test_size=0.25, seed=0)


# =========================================================================== optimizers

class RefSGD:
    """torch.optim.SGD written out (float64)."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        self.p = [np.array(a, F64) for a in params]
        self.lr, self.mu, self.damp, self.nest, self.wd = lr, momentum, dampening, nesterov, \
            weight_decay
        self.buf = [None] * len(self.p)

    def step(self, grads):
        for i, (p, g) in enumerate(zip(self.p, grads)):
            d = g + self.wd * p
            if self.mu:
                if self.buf[i] is None:
                    self.buf[i] = d.copy()
                else:
                    self.buf[i] = self.mu * self.buf[i] + (1 - self.damp) * d
                d = d + self.mu * self.buf[i] if self.nest else self.buf[i]
            p -= self.lr * d


class RefAdam:
    """torch.optim.Adam / AdamW written out (float64)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled=False):
        self.p = [np.array(a, F64) for a in params]
        self.lr, (self.b1, self.b2), self.eps, self.wd, self.dec = lr, betas, eps, weight_decay, \
            decoupled
        self.m = [np.zeros_like(p) for p in self.p]
        self.v = [np.zeros_like(p) for p in self.p]
        self.t = 0

    def step(self, grads):
        self.t += 1
        for p, g, m, v in zip(self.p, grads, self.m, self.v):
            if self.dec:
                p *= 1 - self.lr * self.wd
            else:
                g = g + self.wd * p
            m[...] = self.b1 * m + (1 - self.b1) * g
            v[...] = self.b2 * v + (1 - self.b2) * g * g
            mhat = m / (1 - self.b1 ** self.t)
            vhat = v / (1 - self.b2 ** self.t)
            p -= self.lr * mhat / (np.sqrt(vhat) + self.eps)


OPTS = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.8, dampening=0.3)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("sgd", dict(lr=0.1, momentum=0.5, nesterov=True, weight_decay=0.1)),
    ("sgd", dict(lr=0.1, weight_decay=0.2)),
    ("adam", dict()),
    ("adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6)),
    ("adam", dict(lr=0.01, weight_decay=0.1)),
    ("adamw", dict()),
    ("adamw", dict(lr=0.01, betas=(0.5, 0.9), weight_decay=0.3)),
]
OPT_IDS = [f"{k}-" + "-".join(f"{a}={b}" for a, b in kw.items()) for k, kw in OPTS]


def make_opt(kind, params, kw):
    return {"sgd": fp.SGD, "adam": fp.Adam, "adamw": fp.AdamW}[kind](params, **kw)


def make_ref(kind, params, kw):
    if kind == "sgd":
        return RefSGD(params, **kw)
    return RefAdam(params, decoupled=kind == "adamw",
                   **dict({"weight_decay": 1e-2} if kind == "adamw" else {}, **kw))


def gradient_sequence(model, steps, seed=0):
    rng = np.random.default_rng(seed)
    # include exact zeros (a dead unit) and a sign change along the way
    seq = []
    for t in range(steps):
        gs = [rng.standard_normal(p.shape) * (1 + t % 3) for p in model.parameters()]
        gs[0].reshape(-1)[:3] = 0
        seq.append(gs)
    return seq


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("kind,kw", OPTS, ids=OPT_IDS)
def test_optimizer_vs_formulas(kind, kw, dtype):
    model = mlp(dtype=dtype)
    params = model.parameters()
    opt = make_opt(kind, params, kw)
    refopt = make_ref(kind, [p.data for p in params], kw)
    for grads in gradient_sequence(model, 8):
        for p, g in zip(params, grads):
            p.grad[...] = g
        opt.step()
        refopt.step([g.astype(dtype).astype(F64) for g in grads])
        for p, r in zip(params, refopt.p):
            assert_close(p.data, r, rtol=3e-6 if dtype == F32 else 1e-12)
    assert opt.step_count == 8


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("kind,kw", OPTS, ids=OPT_IDS)
def test_optimizer_vs_torch(kind, kw, dtype):
    torch = pytest.importorskip("torch")
    model = mlp(dtype=dtype)
    params = model.parameters()
    tparams = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in params]
    tkw = dict(kw)
    topt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam,
            "adamw": torch.optim.AdamW}[kind](tparams, **tkw)
    opt = make_opt(kind, params, kw)
    for grads in gradient_sequence(model, 8, seed=1):
        for p, tp, g in zip(params, tparams, grads):
            p.grad[...] = g
            tp.grad = torch.from_numpy(g.astype(dtype))
        opt.step()
        topt.step()
        for p, tp in zip(params, tparams):
            assert_close(p.data, tp.detach().numpy(), rtol=3e-6 if dtype == F32 else 1e-12)


def test_optimizer_over_model_parameters_is_one_flat_run():
    model = fp.Sequential(fp.Linear(5, 7), fp.ReLU(), fp.Linear(7, 6), fp.PReLU(6),
                          fp.Linear(6, 3, bias=False))
    params = model.parameters()
    runs = flat_runs(params)
    assert len(runs) == 1
    assert runs[0][0].size == model.num_parameters()
    for opt in (fp.SGD(params, lr=0.1, momentum=0.9), fp.Adam(params)):
        for arrays in opt.state_arrays():
            assert len(arrays) == 1 and arrays[0].size == model.num_parameters()


@pytest.mark.parametrize("kind,kw", [OPTS[1], OPTS[3], OPTS[9], OPTS[11]],
                         ids=[OPT_IDS[1], OPT_IDS[3], OPT_IDS[9], OPT_IDS[11]])
def test_optimizer_over_a_subset_in_another_order(kind, kw):
    model = mlp(dtype=F64)
    params = model.parameters()          # w0 b0 w1 b1 w2 b2
    subset = [params[4], params[0], params[3]]
    assert len(flat_runs(subset)) == 3
    assert len(flat_runs([params[2], params[3]])) == 1
    untouched = {i: params[i].data.copy() for i in (1, 2, 5)}
    opt = make_opt(kind, subset, kw)
    refopt = make_ref(kind, [p.data for p in subset], kw)
    for grads in gradient_sequence(model, 5, seed=2):
        for p, g in zip(params, grads):
            p.grad[...] = g
        opt.step()
        refopt.step([grads[4], grads[0], grads[3]])
    for p, r in zip(subset, refopt.p):
        assert_close(p.data, r, F64)
    for i, d in untouched.items():
        assert np.array_equal(params[i].data, d)


def test_optimizer_lr_can_change_and_survives_load_state_dict():
    model = mlp(dtype=F64)
    opt = fp.SGD(model.parameters(), lr=0.1)
    model.load_state_dict(mlp(dtype=F64, seed=5).state_dict())   # copies in: still one buffer
    before = flat(model).copy()
    for p in model.parameters():
        p.grad[...] = 1.0
    opt.lr = 0.25
    opt.step()
    assert_close(flat(model), before - 0.25, F64)


@pytest.mark.parametrize("kind,kw", [OPTS[2], OPTS[10]], ids=[OPT_IDS[2], OPT_IDS[10]])
def test_optimizer_over_two_models(kind, kw):
    a, b = mlp(dtype=F64, seed=0), mlp(dtype=F64, seed=7, sizes=(3, 5, 2))
    params = a.parameters() + b.parameters()
    assert len(flat_runs(params)) == 2
    opt = make_opt(kind, params, kw)
    refopt = make_ref(kind, [p.data for p in params], kw)
    rng = np.random.default_rng(4)
    for _ in range(4):
        grads = [rng.standard_normal(p.shape) for p in params]
        for p, g in zip(params, grads):
            p.grad[...] = g
        opt.step()
        refopt.step(grads)
    for p, r in zip(params, refopt.p):
        assert_close(p.data, r, F64)


def test_optimizer_zero_grad():
    model = mlp()
    opt = fp.SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad[...] = 1
    opt.zero_grad()
    assert all(np.all(p.grad == 0) for p in model.parameters())


@pytest.mark.parametrize("make", [
    lambda ps: fp.SGD(ps, lr=-0.1),
    lambda ps: fp.SGD(ps, lr=float("nan")),
    lambda ps: fp.SGD(ps, lr=float("inf")),
    lambda ps: fp.SGD(ps, lr=0.1, momentum=-0.5),
    lambda ps: fp.SGD(ps, lr=0.1, weight_decay=-1e-3),
    lambda ps: fp.SGD(ps, lr=0.1, dampening=-0.1),
    lambda ps: fp.SGD(ps, lr=0.1, nesterov=True),
    lambda ps: fp.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
    lambda ps: fp.SGD([], lr=0.1),
    lambda ps: fp.SGD(ps + ps[:1], lr=0.1),
    lambda ps: fp.Adam(ps, lr=-1e-3),
    lambda ps: fp.Adam(ps, betas=(1.0, 0.999)),
    lambda ps: fp.Adam(ps, betas=(0.9, 1.0)),
    lambda ps: fp.Adam(ps, betas=(-0.1, 0.999)),
    lambda ps: fp.Adam(ps, betas=(0.9,)),
    lambda ps: fp.Adam(ps, eps=-1e-8),
    lambda ps: fp.Adam(ps, weight_decay=-0.1),
    lambda ps: fp.AdamW(ps, weight_decay=-0.1),
    lambda ps: fp.AdamW(ps, lr=float("nan")),
])
def test_bad_hyperparameters_raise(make):
    with pytest.raises(ValueError):
        make(mlp().parameters())


def test_optimizer_bad_types_raise():
    ps = mlp().parameters()
    with pytest.raises(TypeError):
        fp.SGD(ps, lr="fast")
    with pytest.raises(TypeError):
        fp.SGD([np.zeros(3)], lr=0.1)


def test_optimizer_detects_moved_parameters():
    model = mlp()
    opt = fp.SGD(model.parameters(), lr=0.1)
    fp.Sequential(model, fp.Linear(4, 2))        # nesting moves the parameters
    with pytest.raises(RuntimeError):
        opt.step()


# =========================================================================== TrainStep

ACTS = [(fp.ReLU, {}), (fp.Tanh, {}), (fp.Sigmoid, {}), (fp.Identity, {}),
        (fp.LeakyReLU, {"negative_slope": 0.2}), (fp.LeakyReLU, {"negative_slope": -0.3}),
        (fp.LeakyReLU, {"negative_slope": 0.0}),
        (fp.GELU, {}), (fp.Softplus, {"beta": 2.0, "threshold": 1.0}), (fp.SiLU, {}),
        (fp.Cos, {}), (fp.Abs, {})]
ACT_IDS = [c.__name__ + "".join(f"-{v}" for v in kw.values()) for c, kw in ACTS]
LOSSES = [fp.SoftmaxCrossEntropy, fp.SigmoidBCE, fp.MSE]


def targets(loss_cls, rng, batch, n_out, soft=False):
    if loss_cls is fp.SoftmaxCrossEntropy:
        if soft:
            t = rng.random((batch, n_out))
            return (t / t.sum(1, keepdims=True)).astype(F32)
        return rng.integers(0, n_out, batch)
    if loss_cls is fp.SigmoidBCE:
        return (rng.random((batch, n_out)) > 0.5).astype(F32)
    return rng.standard_normal((batch, n_out)).astype(F32)


def modular_step(model, loss, opt, x, y):
    model.zero_grad()
    out = model(x)
    J = loss(out, y)
    model.backward(loss.backward())
    opt.step()
    return J


def compare_paths(make_model, loss_cls, make_optimizer, steps=10, batch=8, soft=False,
                  expect_fused=None, rtol=1e-6, seed=0, dtype=F32):
    """TrainStep and the modular path from the same start on the same batches.

    batch: an int, or a list of batch sizes cycled through (the workspaces follow).
    """
    a, b = make_model(), make_model()
    assert np.array_equal(flat(a), flat(b))
    rng = np.random.default_rng(seed)
    n_in, n_out = a.in_features, a.out_features
    step = fp.TrainStep(a, loss_cls(), make_optimizer(a.parameters()))
    if expect_fused is not None:
        assert step.fused is expect_fused
    loss_b, opt_b = loss_cls(), make_optimizer(b.parameters())
    batches = batch if isinstance(batch, (list, tuple)) else [batch]
    for i in range(steps):
        n = batches[i % len(batches)]
        x = rng.standard_normal((n, n_in)).astype(dtype)
        y = targets(loss_cls, rng, n, n_out, soft)
        Ja = step(x, y)
        Jb = modular_step(b, loss_b, opt_b, x, y)
        assert isinstance(Ja, float)
        assert abs(Ja - Jb) <= rtol * max(1.0, abs(Jb))
    assert_close(flat(a), flat(b), rtol=rtol)
    assert not np.array_equal(flat(a), flat(make_model()))      # it did train
    return a, b, step


SGD_M = lambda ps: fp.SGD(ps, lr=0.05, momentum=0.9)  # noqa: E731
ADAM = lambda ps: fp.Adam(ps, lr=0.01)  # noqa: E731


@pytest.mark.parametrize("make_opt", [SGD_M, ADAM], ids=["sgd", "adam"])
@pytest.mark.parametrize("loss_cls", LOSSES, ids=["xent", "bce", "mse"])
@pytest.mark.parametrize("act,kw", ACTS, ids=ACT_IDS)
def test_trainstep_matches_modular_path(act, kw, loss_cls, make_opt):
    compare_paths(lambda: mlp(act, act_kw=kw), loss_cls, make_opt, expect_fused=True)


@pytest.mark.parametrize("batch", [1, 13, [8, 3, 1, 8]], ids=["1", "13", "varying"])
@pytest.mark.parametrize("act", [fp.ReLU, fp.GELU, fp.Softplus], ids=["relu", "gelu", "softplus"])
def test_trainstep_batch_sizes(act, batch):
    compare_paths(lambda: mlp(act), fp.SoftmaxCrossEntropy, SGD_M, batch=batch, expect_fused=True)


@pytest.mark.parametrize("make_opt", [SGD_M, ADAM], ids=["sgd", "adam"])
@pytest.mark.parametrize("act", [fp.Tanh, fp.SiLU, fp.Abs], ids=["tanh", "silu", "abs"])
def test_trainstep_float64(act, make_opt):
    compare_paths(lambda: mlp(act, dtype=F64), fp.SoftmaxCrossEntropy, make_opt, dtype=F64,
                  rtol=1e-12, expect_fused=True)
    compare_paths(lambda: mlp(act, dtype=F64), fp.MSE, make_opt, dtype=F64, rtol=1e-12)


def test_trainstep_with_an_optimizer_over_a_subset():
    """Fine-tuning the last layer: the fused step overwrites every gradient, the update
    touches only the optimizer's parameters."""
    def make_opt(ps):
        return fp.SGD(ps[-2:], lr=0.1, momentum=0.9)

    a, _, _ = compare_paths(lambda: mlp(fp.GELU), fp.SoftmaxCrossEntropy, make_opt,
                            expect_fused=True)
    fresh = mlp(fp.GELU)
    for p, q in zip(a.parameters()[:-2], fresh.parameters()[:-2]):
        assert np.array_equal(p.data, q.data)


def test_trainstep_soft_targets():
    compare_paths(lambda: mlp(fp.GELU), fp.SoftmaxCrossEntropy, SGD_M, soft=True,
                  expect_fused=True)


@pytest.mark.parametrize("make_model", [
    lambda: fp.Sequential(fp.Linear(6, 4, rng=0)),
    lambda: fp.Sequential(fp.Linear(6, 5, rng=0), fp.Linear(5, 4, rng=1)),
    lambda: fp.Sequential(fp.Linear(6, 5, rng=0), fp.Tanh(), fp.Linear(5, 4, rng=1), fp.Sigmoid()),
    lambda: mlp(fp.SiLU, bias=False),
], ids=["one-linear", "linear-linear", "final-activation", "no-bias"])
@pytest.mark.parametrize("make_opt", [SGD_M, ADAM], ids=["sgd", "adam"])
def test_trainstep_fused_chains(make_model, make_opt):
    compare_paths(make_model, fp.MSE, make_opt, expect_fused=True)
    compare_paths(make_model, fp.SoftmaxCrossEntropy, make_opt, expect_fused=True)


@pytest.mark.parametrize("make_model", [
    lambda: fp.Sequential(fp.Linear(6, 5, rng=0), fp.PReLU(), fp.Linear(5, 4, rng=1)),
    lambda: fp.Sequential(fp.Linear(6, 5, rng=0), fp.PReLU(5, init=0.1), fp.Linear(5, 4, rng=1)),
    lambda: fp.Sequential(fp.Tanh(), fp.Linear(6, 4, rng=0)),
    lambda: fp.Sequential(fp.Linear(6, 5, rng=0), fp.ReLU(), fp.Tanh(), fp.Linear(5, 4, rng=1)),
    lambda: fp.Sequential(fp.Sequential(fp.Linear(6, 5, rng=0), fp.ReLU()), fp.Linear(5, 4, rng=1)),
    lambda: fp.Linear(6, 4, rng=0),
], ids=["prelu1", "prelu5", "act-first", "two-acts", "nested", "bare-linear"])
@pytest.mark.parametrize("make_opt", [SGD_M, ADAM], ids=["sgd", "adam"])
def test_trainstep_fallback_trains_correctly(make_model, make_opt):
    a, _, step = compare_paths(make_model, fp.SoftmaxCrossEntropy, make_opt, expect_fused=False)
    # and it learns: a fixed batch is fitted
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 6)).astype(F32)
    y = rng.integers(0, 4, 16)
    losses = [step(x, y) for _ in range(60)]
    assert losses[-1] < 0.75 * losses[0]
    if isinstance(a, fp.Sequential) and isinstance(a[1], fp.PReLU):
        assert not np.all(a[1].weight.data == a[1].init)          # the slope learned


def test_trainstep_output_is_the_pre_update_output():
    rng = np.random.default_rng(0)
    for model in (mlp(), fp.Sequential(fp.Linear(6, 5, rng=0), fp.PReLU(), fp.Linear(5, 4))):
        x = rng.standard_normal((8, 6)).astype(F32)
        before = model(x)
        step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.SGD(model.parameters(), lr=0.1))
        J = step(x, rng.integers(0, 4, 8))
        assert_close(step.output, before, F32)
        assert not np.allclose(model(x), before)
        assert J > 0


@pytest.mark.parametrize("fused", [True, False])
def test_trainstep_bad_labels_change_nothing(fused):
    rng = np.random.default_rng(0)

    def make():
        if fused:
            return mlp(fp.ReLU)
        return fp.Sequential(fp.Linear(6, 16, rng=0), fp.PReLU(16), fp.Linear(16, 4, rng=1))

    model, twin = make(), make()
    opt = fp.Adam(model.parameters(), lr=0.01)
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), opt)
    assert step.fused is fused
    twin_step = fp.TrainStep(twin, fp.SoftmaxCrossEntropy(), fp.Adam(twin.parameters(), lr=0.01))
    x = rng.standard_normal((8, 6)).astype(F32)
    y = rng.integers(0, 4, 8)
    for _ in range(2):
        step(x, y)
        twin_step(x, y)
    snap = snapshot(model, opt)
    bad_cases = [
        (x, np.array([0, 1, 2, 3, 4, 0, 1, 2])),         # label == classes
        (x, np.array([0, 1, 2, 3, -1, 0, 1, 2])),        # negative label
        (x, np.array([0, 1, 2, 3, 0, 1, 2])),            # wrong count
        (x, np.array([0, 1, 2, 3, 0, 1, 2, 10 ** 12])),  # huge label
        (x, np.ones((8, 3), F32)),                       # soft targets of the wrong width
        (x[:, :5].copy(), y),                            # x of the wrong width
        (x.astype(np.int64), y),                         # x not floating point
    ]
    for bx, by in bad_cases:
        with pytest.raises((ValueError, TypeError)):
            step(bx, by)
        assert_unchanged(model, snap, opt)
    with pytest.raises((ValueError, TypeError)):
        step(x, y.astype(np.float64))                    # float labels are not labels
    assert_unchanged(model, snap, opt)
    # training goes on exactly as if the bad calls had never happened
    for _ in range(2):
        step(x, y)
        twin_step(x, y)
    assert np.array_equal(flat(model), flat(twin))


def test_trainstep_bad_targets_for_bce_and_mse():
    rng = np.random.default_rng(0)
    for loss in (fp.SigmoidBCE(), fp.MSE()):
        model = mlp()
        opt = fp.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = fp.TrainStep(model, loss, opt)
        x = rng.standard_normal((8, 6)).astype(F32)
        step(x, np.zeros((8, 4), F32))
        snap = snapshot(model, opt)
        for bad in (np.zeros((8, 3), F32), np.zeros((7, 4), F32), np.zeros(8, F32)):
            with pytest.raises(ValueError):
                step(x, bad)
            assert_unchanged(model, snap, opt)


@pytest.mark.parametrize("make_opt", [
    lambda ps: fp.SGD(ps, lr=0.05, momentum=0.9),
    lambda ps: fp.Adam(ps, lr=1e-3),
], ids=["sgd", "adam"])
def test_trainstep_allocates_nothing_after_warmup(make_opt):
    model = mlp(fp.ReLU, sizes=(64, 128, 128, 10))
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), make_opt(model.parameters()))
    assert step.fused
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4 * 32, 64)).astype(F32)
    y = rng.integers(0, 10, 4 * 32)
    batches = [(X[i:i + 32], y[i:i + 32]) for i in range(0, len(X), 32)]
    for i in range(3):
        step(*batches[i % 4])
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        for i in range(10):
            step(*batches[i % 4])
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # one 32x128 float32 workspace would be 16 KiB; the whole step may hold a few objects
    assert peak - start < 512, f"a step allocated {peak - start} bytes at its peak"
    assert end - start < 512


def test_trainstep_keeps_workspaces_for_two_batch_sizes():
    """An epoch's last partial batch does not reallocate the full-size workspaces."""
    model = mlp(fp.ReLU, sizes=(64, 128, 128, 10))
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.SGD(model.parameters(), lr=0.01))
    rng = np.random.default_rng(0)
    full = (rng.standard_normal((32, 64)).astype(F32), rng.integers(0, 10, 32))
    part = (full[0][:7].copy(), full[1][:7].copy())
    for _ in range(2):
        step(*full)
        step(*part)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(5):
            step(*full)
            step(*part)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - start < 512, f"alternating batch sizes allocated {peak - start} bytes"


# =========================================================================== fit

def digits_model(seed=0, hidden=(128, 128)):
    sizes = (64,) + tuple(hidden) + (10,)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [fp.Linear(a, b, rng=seed + i), fp.ReLU()]
    return fp.Sequential(*layers[:-1])


def fit_digits(digits, epochs=3, seed=0, model_seed=0, **kw):
    Xtr, Xte, ytr, yte = digits
    model = digits_model(model_seed, hidden=(32,))
    loss = fp.SoftmaxCrossEntropy()
    opt = fp.SGD(model.parameters(), lr=0.05, momentum=0.9)
    kw.setdefault("progress", False)
    h = fp.fit(model, Xtr, ytr, loss=loss, optimizer=opt, epochs=epochs, batch_size=32,
               seed=seed, **kw)
    return model, h


def test_fit_history(digits):
    Xtr, Xte, ytr, yte = digits
    model, h = fit_digits(digits, epochs=4, validation_data=(Xte, yte))
    assert isinstance(h, fp.History)
    assert h.epoch == [1, 2, 3, 4]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(h[key]) == 4 and h[key] is getattr(h, key)
        assert all(isinstance(v, float) and np.isfinite(v) for v in h[key])
    assert all(0 <= a <= 1 for a in h.accuracy + h.val_accuracy)
    assert h.loss[-1] < h.loss[0]
    assert h.accuracy[-1] > h.accuracy[0]
    scores = fp.evaluate(model, Xte, yte, fp.SoftmaxCrossEntropy())
    assert scores["loss"] == pytest.approx(h.val_loss[-1], rel=1e-9)
    assert scores["accuracy"] == pytest.approx(h.val_accuracy[-1], rel=1e-9)
    with pytest.raises(AttributeError):
        h.no_such_metric


def test_fit_without_validation_and_mse(digits):
    Xtr, Xte, ytr, yte = digits
    model = digits_model(hidden=(16,))
    Y = np.eye(10, dtype=F32)[ytr]
    h = fp.fit(model, Xtr, Y, loss=fp.MSE(), optimizer=fp.SGD(model.parameters(), lr=0.05),
               epochs=2, progress=False)
    assert len(h.loss) == 2 and h.val_loss == [] and h.val_accuracy == []
    assert h.accuracy == [None, None]


def test_fit_same_seed_same_result(digits):
    m1, h1 = fit_digits(digits, seed=3, validation_data=digits[1::2])
    m2, h2 = fit_digits(digits, seed=3, validation_data=digits[1::2])
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert h1[key] == h2[key]
    assert np.array_equal(flat(m1), flat(m2))
    m3, h3 = fit_digits(digits, seed=4)
    assert h3.loss != h1.loss
    assert not np.array_equal(flat(m3), flat(m1))


def test_fit_shuffle_matters(digits):
    m1, h1 = fit_digits(digits, shuffle=True)
    m2, h2 = fit_digits(digits, shuffle=False)
    assert not np.array_equal(flat(m1), flat(m2))
    assert h1.loss != h2.loss


def test_fit_without_shuffle_is_trainstep_in_order(digits):
    """fit(shuffle=False) == TrainStep over the batches in order; loss = sample-weighted mean."""
    Xtr, _, ytr, _ = digits
    Xs, ys = Xtr[:203], ytr[:203]              # a last partial batch of 11
    model = digits_model(hidden=(32,))
    h = fp.fit(model, Xs, ys, loss=fp.SoftmaxCrossEntropy(),
               optimizer=fp.SGD(model.parameters(), lr=0.05, momentum=0.9), epochs=2,
               batch_size=32, shuffle=False, progress=False)
    twin = digits_model(hidden=(32,))
    step = fp.TrainStep(twin, fp.SoftmaxCrossEntropy(),
                        fp.SGD(twin.parameters(), lr=0.05, momentum=0.9))
    for epoch in range(2):
        total = 0.0
        for a in range(0, 203, 32):
            total += step(Xs[a:a + 32], ys[a:a + 32]) * len(ys[a:a + 32])
        assert h.loss[epoch] == pytest.approx(total / 203, rel=1e-9)
    assert np.array_equal(flat(model), flat(twin))


def test_fit_drop_last(digits):
    Xtr, _, ytr, _ = digits
    m1 = digits_model(hidden=(16,))
    fp.fit(m1, Xtr[:100], ytr[:100], loss=fp.SoftmaxCrossEntropy(),
           optimizer=fp.SGD(m1.parameters(), lr=0.05), epochs=2, batch_size=32, shuffle=False,
           progress=False, drop_last=True)
    m2 = digits_model(hidden=(16,))
    fp.fit(m2, Xtr[:96], ytr[:96], loss=fp.SoftmaxCrossEntropy(),
           optimizer=fp.SGD(m2.parameters(), lr=0.05), epochs=2, batch_size=32, shuffle=False,
           progress=False)
    assert np.array_equal(flat(m1), flat(m2))


def test_fit_zero_epochs_changes_nothing(digits):
    model = digits_model(hidden=(16,))
    before = flat(model).copy()
    h = fp.fit(model, digits[0], digits[2], loss=fp.SoftmaxCrossEntropy(),
               optimizer=fp.SGD(model.parameters(), lr=0.1), epochs=0, progress=False)
    assert h.loss == [] and h.epoch == []
    assert np.array_equal(flat(model), before)


def test_fit_bad_arguments(digits):
    Xtr, _, ytr, _ = digits
    model = digits_model(hidden=(16,))
    before = flat(model).copy()
    kw = dict(loss=fp.SoftmaxCrossEntropy(), optimizer=fp.SGD(model.parameters(), lr=0.1),
              progress=False)
    Xnan = Xtr.copy()
    Xnan[5, 5] = np.nan
    for args, extra in [((Xtr, ytr[:-1]), {}), ((Xnan, ytr), {}), ((Xtr, ytr), {"batch_size": 0}),
                        ((Xtr, ytr), {"epochs": -1}), ((Xtr[0], ytr), {}),
                        ((Xtr, ytr), {"validation_data": (Xtr,)}),
                        ((Xtr, ytr), {"validation_data": (Xtr, ytr[:3])})]:
        with pytest.raises(ValueError):
            fp.fit(model, *args, **kw, **extra)
        assert np.array_equal(flat(model), before)
    with pytest.raises(ValueError):                  # a label of 10 for 10 classes
        fp.fit(model, Xtr, np.where(ytr == 9, 10, ytr), **kw)


def test_fit_progress_false_prints_nothing(digits, capsys):
    fit_digits(digits, epochs=2, progress=False, validation_data=digits[1::2])
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_fit_progress_plain_fallback(digits, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)        # `import tqdm` raises ImportError
    _, h = fit_digits(digits, epochs=2, progress=True, validation_data=digits[1::2])
    out, err = capsys.readouterr()
    text = out + err
    assert "epoch 1/2" in text and "epoch 2/2" in text
    assert f"loss {h.loss[0]:.4f}" in text and f"loss {h.loss[1]:.4f}" in text
    assert f"val_loss {h.val_loss[1]:.4f}" in text


def test_fit_diverging_raises_floating_point_error(digits):
    # with softmax cross-entropy the loss of a ReLU net stays finite however large the
    # weights get; the square of MSE overflows, which is what this test needs
    Xtr, _, ytr, _ = digits
    Y = np.eye(10, dtype=F32)[ytr]

    def run(**kw):
        model = digits_model(hidden=(32,))
        return fp.fit(model, Xtr, Y, loss=fp.MSE(), optimizer=fp.SGD(model.parameters(), lr=1e6),
                      epochs=2, progress=False, **kw)

    with pytest.raises(FloatingPointError, match="epoch 1"):
        run()
    h = run(stop_on_nonfinite=False)
    assert len(h.loss) == 2 and not np.isfinite(h.loss[-1])


def test_predict_predict_proba_evaluate(digits):
    Xtr, Xte, ytr, yte = digits
    model, _ = fit_digits(digits, epochs=2)
    out = model(Xte)
    p = fp.predict(model, Xte)
    assert p.shape == (len(Xte), 10) and p.dtype == F32
    assert_close(p, out, F32)
    assert_close(fp.predict(model, Xte, batch_size=7), out, F32)
    assert_close(fp.predict(model, Xte.astype(F64)), out, F32)
    proba = fp.predict_proba(model, Xte, batch_size=50)
    assert proba.shape == out.shape
    assert np.all(proba >= 0)
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    e = np.exp(out.astype(F64) - out.max(axis=1, keepdims=True))
    assert_close(proba, e / e.sum(axis=1, keepdims=True), F32)
    loss = fp.SoftmaxCrossEntropy()
    scores = fp.evaluate(model, Xte, yte, loss, batch_size=100)
    assert scores["loss"] == pytest.approx(fp.SoftmaxCrossEntropy()(out, yte), rel=1e-5)
    assert scores["accuracy"] == pytest.approx(np.mean(out.argmax(1) == yte), abs=1e-12)
    # one output column: the sigmoid
    binary = fp.Sequential(fp.Linear(64, 8, rng=0), fp.Tanh(), fp.Linear(8, 1, rng=1))
    z = binary(Xte).astype(F64)
    pb = fp.predict_proba(binary, Xte)
    assert pb.shape == (len(Xte), 1)
    assert_close(pb, 1 / (1 + np.exp(-z)), F32)
    t = (yte[:, None] > 4).astype(F32)
    s = fp.evaluate(binary, Xte, t, fp.SigmoidBCE())
    assert s["accuracy"] == pytest.approx(np.mean((z > 0) == (t > 0.5)), abs=1e-12)
    assert fp.evaluate(binary, Xte, t, fp.MSE())["accuracy"] is None


def test_predict_bad_input(digits):
    model = digits_model(hidden=(8,))
    with pytest.raises(ValueError):
        fp.predict(model, digits[1][:, :10])
    with pytest.raises(ValueError):
        fp.predict(model, digits[1][0])
    with pytest.raises(ValueError):
        fp.predict(model, digits[1], batch_size=0)


def test_digits_reach_95_percent(digits):
    """The demo's recipe: 64-128-128-10 ReLU, SGD lr 0.05 momentum 0.9, batch 32, 20 epochs."""
    Xtr, Xte, ytr, yte = digits
    model = digits_model(seed=0)
    loss = fp.SoftmaxCrossEntropy()
    h = fp.fit(model, Xtr, ytr, loss=loss,
               optimizer=fp.SGD(model.parameters(), lr=0.05, momentum=0.9), epochs=20,
               batch_size=32, seed=0, progress=False)
    assert h.loss[-1] < 0.1 * h.loss[0]
    acc = fp.evaluate(model, Xte, yte, loss)["accuracy"]
    assert acc >= 0.95, acc


# =========================================================================== gradcheck

def tanh_model(dtype=F64):
    return fp.Sequential(fp.Linear(4, 6, dtype=dtype, rng=0, bias_init=0.1), fp.Tanh(),
                         fp.Linear(6, 3, dtype=dtype, rng=1, bias_init=-0.1))


def test_gradcheck_passes_on_a_correct_model():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 4)), rng.integers(0, 3, 5)
    for dtype in (F64, F32):
        model = tanh_model(dtype)
        before = flat(model).copy()
        err = fp.gradcheck(model, fp.SoftmaxCrossEntropy(), x, y)
        assert 0 <= err < 1e-4
        assert model.dtype == dtype and np.array_equal(flat(model), before)   # untouched
    t = rng.standard_normal((5, 3))
    assert fp.gradcheck(tanh_model(), fp.MSE(), x, t) < 1e-4
    assert fp.gradcheck(tanh_model(), fp.SigmoidBCE(), x, (t > 0).astype(F64),
                        max_checks=10) < 1e-4


def test_gradcheck_detects_a_broken_backward(monkeypatch):
    """A backward that scales the weight gradient by 1.5 must be caught.

    gradcheck runs on a float64 REBUILD of the model, so patching one instance would go
    unseen; the class is patched, and the patch is first shown to change the gradients.
    """
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 4)), rng.integers(0, 3, 5)
    model = tanh_model()
    loss = fp.SoftmaxCrossEntropy()
    model.zero_grad()
    loss(model(x), y)
    model.backward(loss.backward())
    good = model[2].weight.grad.copy()
    assert np.any(good != 0)
    original = fp.Linear._backward

    def broken(self, g, need_input_grad):
        saved = self.weight.grad.copy()
        gx = original(self, g, need_input_grad)
        self.weight.grad[...] = saved + 1.5 * (self.weight.grad - saved)
        return gx

    monkeypatch.setattr(fp.Linear, "_backward", broken)
    model.zero_grad()
    loss(model(x), y)
    model.backward(loss.backward())
    assert_close(model[2].weight.grad, 1.5 * good, F64)            # the patch is live
    err = fp.gradcheck(tanh_model(), fp.SoftmaxCrossEntropy(), x, y)
    assert err > 1e-2
    assert err == pytest.approx(1 / 3, rel=1e-3)                  # |1.5a − a| / 1.5|a|
    monkeypatch.undo()
    assert fp.gradcheck(tanh_model(), fp.SoftmaxCrossEntropy(), x, y) < 1e-4


def test_gradcheck_checks_the_gradient_training_runs(monkeypatch):
    """The fused chain's or tape's gradient (TrainStep's) is checked as well as the modules':
    a wrong one shows, whatever path it came from."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    original = fp.TrainStep.__call__
    paths = []

    def scaled(self, *a, **k):
        J = original(self, *a, **k)
        paths.append(self.path)
        for p in self.model.parameters():
            p.grad[...] *= 1.5
        return J
    monkeypatch.setattr(fp.TrainStep, "__call__", scaled)
    g = fp.Graph()
    h = g.input("x", 4)
    graph_model = g.build(g.add(fp.Linear(4, 3, rng=1), g.add(fp.Add(), h, g.add(fp.Tanh(), h))))
    for model in (tanh_model(), graph_model):
        assert fp.gradcheck(model, fp.SoftmaxCrossEntropy(), x, y) == pytest.approx(1 / 3, rel=1e-3)
    assert paths == ["chain", "tape"]
    monkeypatch.undo()
    for model in (tanh_model(), graph_model):
        assert fp.gradcheck(model, fp.SoftmaxCrossEntropy(), x, y) < 1e-4


def test_gradcheck_is_central_difference_accurate():
    """Its result really is the worst relative error: one wrong entry is reported."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 4)), rng.integers(0, 3, 5)
    original = fp.Linear._backward

    def off_by_one_entry(self, g, need_input_grad):
        gx = original(self, g, need_input_grad)
        if self.bias is not None and self.out_features == 3:
            self.bias.grad[0] += 1e-3 * max(abs(self.bias.grad[0]), 1.0)
        return gx

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(fp.Linear, "_backward", off_by_one_entry)
        err = fp.gradcheck(tanh_model(), fp.SoftmaxCrossEntropy(), x, y)
    finally:
        mp.undo()
    assert 5e-4 < err <= 1.0          # a shift of >= 1e-3 of max(|a|, 1) in one entry
    assert math.isfinite(err)
