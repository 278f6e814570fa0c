"""clip_grad_norm_ / clip_grad_value_ against torch.nn.utils, TrainStep(clip_grad_norm=)
against the modular path with explicit clipping, and bad input."""
import math

import numpy as np
import pytest
from conftest import assert_close, assert_unchanged, snapshot

import fastprop as fp

F32, F64 = np.float32, np.float64


def model_with_grads(dtype=F64, seed=0, scale=1.0):
    model = fp.Sequential(fp.Linear(6, 9, dtype=dtype, rng=0), fp.Tanh(),
                          fp.Linear(9, 4, dtype=dtype, rng=1))
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.grad[...] = rng.standard_normal(p.shape) * scale
    return model


def torch_grads(model):
    torch = pytest.importorskip("torch")
    ts = []
    for p in model.parameters():
        t = torch.tensor(p.data.copy(), requires_grad=True)
        t.grad = torch.tensor(p.grad.copy())
        ts.append(t)
    return ts, torch


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_vs_torch(norm_type, max_norm, dtype):
    model = model_with_grads(dtype)
    ts, torch = torch_grads(model)
    norm = fp.clip_grad_norm_(model.parameters(), max_norm, norm_type)
    tnorm = torch.nn.utils.clip_grad_norm_(ts, max_norm, norm_type)
    rtol = 1e-6 if dtype == F32 else 1e-13
    assert isinstance(norm, float)
    assert abs(norm - float(tnorm)) <= rtol * float(tnorm)
    for p, t in zip(model.parameters(), ts):
        assert_close(p.grad, t.grad.numpy(), rtol=rtol * 3)


def test_clip_grad_norm_over_a_subset_in_another_order():
    model = model_with_grads()
    params = model.parameters()
    subset = [params[3], params[0]]
    ts, torch = torch_grads(model)
    norm = fp.clip_grad_norm_(subset, 0.1)
    tnorm = torch.nn.utils.clip_grad_norm_([ts[3], ts[0]], 0.1)
    assert abs(norm - float(tnorm)) <= 1e-13 * float(tnorm)
    for p, t in zip(params, ts):
        assert_close(p.grad, t.grad.numpy(), rtol=1e-13)


def test_clip_grad_norm_nonfinite():
    model = model_with_grads()
    model.parameters()[1].grad[2] = np.nan
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match="non-finite"):
        fp.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)
    assert_unchanged(model, snap)
    assert math.isnan(fp.clip_grad_norm_(model.parameters(), 1.0))  # torch: scales by NaN
    assert all(np.isnan(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("dtype", [F32, F64])
def test_clip_grad_value_vs_torch(dtype):
    model = model_with_grads(dtype, scale=2.0)
    ts, torch = torch_grads(model)
    fp.clip_grad_value_(model.parameters(), 0.7)
    torch.nn.utils.clip_grad_value_(ts, 0.7)
    for p, t in zip(model.parameters(), ts):
        assert p.grad.tobytes() == t.grad.numpy().tobytes()


@pytest.mark.parametrize("call,match", [
    (lambda ps: fp.clip_grad_norm_(ps, -1.0), "max_norm"),
    (lambda ps: fp.clip_grad_norm_(ps, "a"), "max_norm"),
    (lambda ps: fp.clip_grad_norm_(ps, 1.0, norm_type=0), "norm_type"),
    (lambda ps: fp.clip_grad_norm_(ps, 1.0, norm_type=-math.inf), "norm_type"),
    (lambda ps: fp.clip_grad_norm_([ps[0], np.zeros(3)], 1.0), "Parameter"),
    (lambda ps: fp.clip_grad_value_(ps, -0.1), "clip_value"),
    (lambda ps: fp.clip_grad_value_(ps, float("nan")), "clip_value"),
], ids=["neg", "str", "p0", "-inf", "array", "negvalue", "nanvalue"])
def test_clip_bad_input_changes_nothing(call, match):
    model = model_with_grads()
    snap = snapshot(model)
    with pytest.raises((TypeError, ValueError), match=match):
        call(model.parameters())
    assert_unchanged(model, snap)


@pytest.mark.parametrize("opt_kind", ["SGD", "AdamW"])
def test_trainstep_clip_equals_modular_clip(opt_kind):
    """The fused step with clip_grad_norm gives the bits of forward/backward, clip_grad_norm_,
    step done by hand."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 6)) * 3
    y = rng.integers(0, 4, 40)

    def build():
        model = fp.Sequential(fp.Linear(6, 9, dtype=F64, rng=0), fp.ReLU(),
                              fp.Linear(9, 4, dtype=F64, rng=1))
        kw = dict(lr=0.5, momentum=0.9) if opt_kind == "SGD" else dict(lr=0.05)
        return model, getattr(fp, opt_kind)(model.parameters(), **kw)

    a, oa = build()
    step = fp.TrainStep(a, fp.SoftmaxCrossEntropy(), oa, clip_grad_norm=0.3)
    assert step.fused
    b, ob = build()
    loss = fp.SoftmaxCrossEntropy()
    norms = []
    for i in range(0, 40, 8):
        step(X[i:i + 8], y[i:i + 8])
        b.zero_grad()
        loss(b(X[i:i + 8]), y[i:i + 8])
        b.backward(loss.backward())
        norms.append(fp.clip_grad_norm_(b.parameters(), 0.3))
        ob.step()
    assert max(norms) > 0.3  # the clipping did something
    for p, q in zip(a.parameters(), b.parameters()):
        assert_close(p.data, q.data, rtol=1e-12)


def test_trainstep_clip_bad_input():
    model = fp.Sequential(fp.Linear(3, 2))
    opt = fp.SGD(model.parameters(), lr=0.1)
    for bad, exc in ((-1.0, ValueError), ("x", TypeError), (True, TypeError), (math.inf, ValueError)):
        with pytest.raises(exc, match="clip_grad_norm"):
            fp.TrainStep(model, fp.MSE(), opt, clip_grad_norm=bad)
    with pytest.raises(ValueError, match="closure"):
        fp.TrainStep(model, fp.MSE(), fp.HessianFree(model.parameters()), clip_grad_norm=1.0)


def test_kernel_bindings_refuse_bad_arrays():
    """The bindings check what C would read or write: shapes, dtypes, contiguity, aliasing."""
    from fastprop import _kernels
    p, g = np.zeros(6), np.zeros(6)
    for args, exc in (((p, g, np.zeros(5)), ValueError), ((p, g, np.zeros(6, F32)), (TypeError, ValueError)),
                      ((p, g, p), ValueError), ((p, np.zeros(5)), ValueError),
                      ((p.astype(int), g), TypeError), ((p, g, g), ValueError),
                      ((p, g, None, None, None, None), ValueError)):
        with pytest.raises(exc):
            _kernels.FlatRun(*args)
    run = _kernels.FlatRun(p, g, np.zeros(6))
    with pytest.raises(ValueError, match="amsgrad"):
        run.amsgrad(1, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)
    with pytest.raises(ValueError, match="rmsprop"):
        run.rmsprop(1e-2, 0.99, 1e-8, 0.0, 0.9, False)   # momentum without its buffer
    for bad, exc in ((np.zeros((4, 4))[:, ::2], ValueError), (np.zeros(3, int), TypeError),
                     ([1.0, 2.0], TypeError)):
        with pytest.raises(exc):
            _kernels.grad_norm_pow(bad, 2.0)
        with pytest.raises(exc):
            _kernels.grad_scale(bad, 0.5)
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        _kernels.grad_scale(ro, 0.5)
    assert _kernels.grad_norm_pow(ro, 2.0) == 0.0


def test_trainstep_clip_on_the_modular_path():
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((16, 6)) * 3, rng.integers(0, 4, 16)

    def build():
        model = fp.Sequential(fp.LowRankLinear(6, 9, rank=2, dtype=F64, rng=0), fp.ReLU(),
                              fp.Linear(9, 4, dtype=F64, rng=1))
        return model, fp.SGD(model.parameters(), lr=0.5)

    a, oa = build()
    step = fp.TrainStep(a, fp.SoftmaxCrossEntropy(), oa, clip_grad_norm=0.2)
    assert not step.fused
    b, ob = build()
    loss = fp.SoftmaxCrossEntropy()
    for _ in range(3):
        step(X, y)
        b.zero_grad()
        loss(b(X), y)
        b.backward(loss.backward())
        assert fp.clip_grad_norm_(b.parameters(), 0.2) > 0.2
        ob.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert p.data.tobytes() == q.data.tobytes()


def test_clipping_while_another_thread_uses_the_model_is_refused():
    model = model_with_grads()
    snap = snapshot(model)
    with model.exclusive():  # as a training thread holds it
        with pytest.raises(RuntimeError):
            fp.clip_grad_norm_(model.parameters(), 0.1)
        with pytest.raises(RuntimeError):
            fp.clip_grad_value_(model.parameters(), 0.1)
    assert_unchanged(model, snap)
    fp.clip_grad_norm_(model.parameters(), 0.1)
