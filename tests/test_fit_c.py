"""fit's epoch in C (train._CEpoch, csrc/fit.c): the same bits as fit's Python loop of TrainStep
calls for the same seed (parameters, optimizer state, history), and where it steps aside."""
import numpy as np
import pytest

import fastprop as fp
from fastprop import train


def chain(dtype, n_out=4):
    return fp.Sequential(fp.Linear(6, 16, dtype=dtype, rng=0), fp.ReLU(),
                         fp.Linear(16, 16, dtype=dtype, rng=1), fp.Tanh(),
                         fp.Linear(16, n_out, dtype=dtype, rng=2))


def run(monkeypatch, c_epoch, make_opt, loss, y, dtype, **kw):
    model = chain(dtype, 4 if y.ndim == 1 else y.shape[1])
    opt = make_opt(model.parameters())
    calls = []
    real = train._CEpoch.run

    def spy(self, *a):
        calls.append(1)
        return real(self, *a)
    monkeypatch.setattr(train._CEpoch, "run", spy)
    if not c_epoch:
        monkeypatch.setattr(train._CEpoch, "make", staticmethod(lambda *a: None))
    X = np.random.default_rng(0).standard_normal((203, 6)).astype(dtype)
    h = fp.fit(model, X, y, loss=loss, optimizer=opt, epochs=3, batch_size=16, seed=7,
               progress=False, validation_data=(X[:50], y[:50]), **kw)
    monkeypatch.undo()
    return model, opt, h, len(calls)


OPTS = {
    "sgd": lambda p: fp.SGD(p, lr=0.05),
    "momentum": lambda p: fp.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "nesterov": lambda p: fp.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: fp.Adam(p, lr=1e-2, weight_decay=1e-3),
    "adamw": lambda p: fp.AdamW(p, lr=1e-2),
}


@pytest.mark.parametrize("opt", sorted(OPTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss_name", ["xent", "mse"])
def test_fit_in_c_gives_the_bits_of_the_python_loop(monkeypatch, opt, dtype, loss_name):
    rng = np.random.default_rng(1)
    if loss_name == "xent":
        loss, y = fp.SoftmaxCrossEntropy(), rng.integers(0, 4, 203).astype(np.int32)
    else:
        loss, y = fp.MSE(), rng.standard_normal((203, 3)).astype(dtype)
    a, opt_a, ha, calls = run(monkeypatch, True, OPTS[opt], loss, y, dtype)
    b, opt_b, hb, none = run(monkeypatch, False, OPTS[opt], loss, y, dtype)
    assert calls > 0 and none == 0
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    for sa, sb in zip(opt_a.state_arrays(), opt_b.state_arrays()):
        for u, v in zip(sa, sb):
            np.testing.assert_array_equal(u, v)
    steps = [{k: v.get("step") for k, v in o.state_dict()["state"].items()} for o in (opt_a, opt_b)]
    assert steps[0] == steps[1] and opt_a.step_count == opt_b.step_count
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert ha[key] == hb[key], key


def test_divergence_stops_at_the_same_batch_with_the_same_error(monkeypatch):
    y = np.random.default_rng(2).standard_normal((203, 3)).astype(np.float32) * 1e3
    errors = []
    for c_epoch in (True, False):
        with pytest.raises(FloatingPointError) as e:
            run(monkeypatch, c_epoch, lambda p: fp.SGD(p, lr=2.0, momentum=0.9), fp.MSE(), y,
                np.float32)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "samples" in errors[0]
    assert "samples 0:" not in errors[0]   # a batch the C loop ran into


def test_other_setups_take_the_python_loop():
    model = chain(np.float32)
    y = np.zeros(10, int)
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.SGD(model.parameters(), lr=0.1))
    assert train._CEpoch.make(step, fp.SoftmaxCrossEntropy(), step.optimizer, y, False) is not None
    assert train._CEpoch.make(step, fp.SoftmaxCrossEntropy(label_smoothing=0.1), step.optimizer, y, False) is None
    assert train._CEpoch.make(step, fp.SoftmaxCrossEntropy(), step.optimizer, y, True) is None
    rms = fp.RMSprop(model.parameters())
    assert train._CEpoch.make(fp.TrainStep(model, fp.MSE(), rms), fp.MSE(), rms, y, False) is None
    g = fp.Graph()
    x = g.input("x", 6)
    tape_model = g.build(g.add(fp.Linear(6, 2, rng=0), g.add(fp.Tanh(), x)))
    s = fp.TrainStep(tape_model, fp.MSE(), fp.SGD(tape_model.parameters(), lr=0.1))
    assert train._CEpoch.make(s, fp.MSE(), s.optimizer, y, False) is None


def test_network_fit_checks_its_arguments():
    from fastprop import _kernels
    model = chain(np.float32)
    opt = fp.SGD(model.parameters(), lr=0.1)
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), opt)
    X, y = np.ones((8, 6), np.float32), np.zeros(8, np.int64)
    step(X, y)
    upd, o = opt._slots[0].calls[0], {"kind": 0, "lr": 0.1, "weight_decay": 0.0}
    with pytest.raises(ValueError, match="labels"):
        _kernels.network_fit(step._net, upd, o, X, np.full(8, 9), None, 0, 8, 4, 2, True, 0.0, 0.0)
    with pytest.raises(ValueError, match="rows"):
        _kernels.network_fit(step._net, upd, o, X, y, None, 0, 9, 4, 2, True, 0.0, 0.0)
    with pytest.raises(ValueError, match="X"):
        _kernels.network_fit(step._net, upd, o, X[:, :5], y, None, 0, 8, 4, 2, True, 0.0, 0.0)
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(ValueError):
        _kernels.network_fit(step._net, upd, {"kind": 1, "lr": 0.1, "weight_decay": 0.0}, X, y,
                             None, 0, 8, 4, 2, True, 0.0, 0.0)   # adam without its buffers
    with pytest.raises(ValueError, match="kind"):
        _kernels.network_fit(step._net, upd, {"kind": 7, "lr": 0.1, "weight_decay": 0.0}, X, y,
                             None, 0, 8, 4, 2, True, 0.0, 0.0)
    assert all(np.array_equal(p.data, q) for p, q in zip(model.parameters(), before))
