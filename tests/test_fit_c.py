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


def residual(dtype, n_out=4):
    """A tape model: residual blocks with LayerNorm, BatchNorm1d and Dropout (their modes,
    running statistics and streams carried through the C epoch)."""
    return fp.Sequential(fp.Linear(6, 16, dtype=dtype, rng=0),
                         fp.Residual(fp.Sequential(fp.LayerNorm(16, dtype=dtype), fp.ReLU(),
                                                   fp.Dropout(0.2, rng=4),
                                                   fp.Linear(16, 16, dtype=dtype, rng=1))),
                         fp.BatchNorm1d(16, dtype=dtype), fp.Tanh(),
                         fp.Linear(16, n_out, dtype=dtype, rng=2))


def graph(dtype, n_out=4):
    """A tape model: a DAG with a shared module, Concat, Mul and PReLU."""
    g = fp.Graph()
    x = g.input("x", 6)
    shared = fp.Linear(8, 8, dtype=dtype, rng=3)
    h = g.add(fp.Linear(6, 8, dtype=dtype, rng=0), x)
    a = g.add(fp.Tanh(), g.add(shared, h))
    b = g.add(shared, g.add(fp.PReLU(dtype=dtype), h))
    m = g.add(fp.Mul(), a, b)
    return g.build(g.add(fp.Linear(16, n_out, dtype=dtype, rng=1), g.add(fp.Concat(), m, h)))


def run(monkeypatch, c_epoch, make_opt, loss, y, dtype, model=chain, n=203, **kw):
    model = model(dtype, 4 if y.ndim == 1 else y.shape[1])
    opt = make_opt(model.parameters())
    calls = []
    real = train._CEpoch.run

    def spy(self, *a):
        calls.append(1)
        return real(self, *a)
    monkeypatch.setattr(train._CEpoch, "run", spy)
    if not c_epoch:
        monkeypatch.setattr(train._CEpoch, "make", staticmethod(lambda *a: None))
    X = np.random.default_rng(0).standard_normal((n, 6)).astype(dtype)
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
    same_fit(run(monkeypatch, True, OPTS[opt], loss, y, dtype),
             run(monkeypatch, False, OPTS[opt], loss, y, dtype))


def same_fit(a, b):
    (ma, opt_a, ha, calls), (mb, opt_b, hb, none) = a, b
    assert calls > 0 and none == 0
    for p, q in zip(ma.parameters(), mb.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    for sa, sb in zip(opt_a.state_arrays(), opt_b.state_arrays()):
        for u, v in zip(sa, sb):
            np.testing.assert_array_equal(u, v)
    steps = [{k: v.get("step") for k, v in o.state_dict()["state"].items()} for o in (opt_a, opt_b)]
    assert steps[0] == steps[1] and opt_a.step_count == opt_b.step_count
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert ha[key] == hb[key], key
    for u, v in zip(ma.modules(), mb.modules()):   # BatchNorm1d's statistics, Dropout's stream
        for name in ("running_mean", "running_var", "num_batches_tracked", "_counter"):
            if hasattr(u, name) and getattr(u, name) is not None:
                np.testing.assert_array_equal(getattr(u, name), getattr(v, name))


@pytest.mark.parametrize("model", [residual, graph])
@pytest.mark.parametrize("opt", ["momentum", "adamw"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss_name", ["xent", "mse"])
def test_fit_of_a_tape_model_in_c_gives_the_bits_of_the_python_loop(monkeypatch, model, opt,
                                                                     dtype, loss_name):
    rng = np.random.default_rng(1)
    if loss_name == "xent":
        loss, y = fp.SoftmaxCrossEntropy(), rng.integers(0, 4, 203).astype(np.int32)
    else:
        loss, y = fp.MSE(), rng.standard_normal((203, 3)).astype(dtype)
    same_fit(run(monkeypatch, True, OPTS[opt], loss, y, dtype, model),
             run(monkeypatch, False, OPTS[opt], loss, y, dtype, model))


def test_a_last_batch_of_one_row_under_batchnorm_raises_as_the_python_loop(monkeypatch):
    y = np.random.default_rng(1).integers(0, 4, 193)   # 12 batches of 16, then one row
    errors = []
    for c_epoch in (True, False):
        with pytest.raises(ValueError) as e:
            run(monkeypatch, c_epoch, OPTS["sgd"], fp.SoftmaxCrossEntropy(), y, np.float32,
                residual, n=193)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "samples 192:193" in errors[0]


def test_fit_in_eval_mode_runs_the_tape_in_c(monkeypatch):
    """Dropout off and BatchNorm1d on its running statistics: a batch of one row is fine."""
    y = np.random.default_rng(1).integers(0, 4, 193)

    def frozen(dtype, n_out):
        return residual(dtype, n_out).eval()
    same_fit(run(monkeypatch, True, OPTS["nesterov"], fp.SoftmaxCrossEntropy(), y, np.float32,
                 frozen, n=193),
             run(monkeypatch, False, OPTS["nesterov"], fp.SoftmaxCrossEntropy(), y, np.float32,
                 frozen, n=193))


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
    assert s.path == "tape" and train._CEpoch.make(s, fp.MSE(), s.optimizer, y, False) is not None

    class Twice(fp.Module):   # a Python module inside the tape: its op calls back, not C
        width_preserving = True
        in_features = out_features = None

        def _forward(self, x):
            self._x, self._ready = x, True
            return 2 * x

        def _backward(self, g, need_input_grad):
            return 2 * g if need_input_grad else None

        def _output_like(self):
            return self._x
    python_op = fp.Sequential(fp.Linear(6, 4, rng=0), Twice(), fp.Linear(4, 2, rng=1))
    s = fp.TrainStep(python_op, fp.MSE(), fp.SGD(python_op.parameters(), lr=0.1))
    assert s.path == "tape" and train._CEpoch.make(s, fp.MSE(), s.optimizer, y, False) is None
    g = fp.Graph()
    u, v = g.input("u", 3), g.input("v", 3)
    two_inputs = g.build(g.add(fp.Linear(6, 2, rng=0), g.add(fp.Concat(), u, v)))
    s = fp.TrainStep(two_inputs, fp.MSE(), fp.SGD(two_inputs.parameters(), lr=0.1))
    assert s.path == "tape" and train._CEpoch.make(s, fp.MSE(), s.optimizer, y, False) is None


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


def test_tape_fit_checks_its_arguments():
    """tape_fit takes network_fit's checks, and refuses a tape with a Python op or two
    inputs; a refused call changes no parameter."""
    from fastprop import _kernels
    model = residual(np.float32)
    opt = fp.SGD(model.parameters(), lr=0.1)
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), opt)
    assert step.path == "tape"
    X, y = np.ones((8, 6), np.float32), np.zeros(8, np.int64)
    step(X, y)
    upd, o = opt._slots[0].calls[0], {"kind": 0, "lr": 0.1, "weight_decay": 0.0}
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(ValueError, match="labels"):
        _kernels.tape_fit(step._tape, upd, o, X, np.full(8, 9), None, 0, 8, 4, 2, True, 0.0, 0.0)
    with pytest.raises(ValueError, match="rows"):
        _kernels.tape_fit(step._tape, upd, o, X, y, None, 0, 9, 4, 2, True, 0.0, 0.0)
    with pytest.raises(ValueError, match="X"):
        _kernels.tape_fit(step._tape, upd, o, X[:, :5], y, None, 0, 8, 4, 2, True, 0.0, 0.0)
    with pytest.raises(ValueError, match="kind"):
        _kernels.tape_fit(step._tape, upd, {"kind": 7, "lr": 0.1, "weight_decay": 0.0}, X, y,
                          None, 0, 8, 4, 2, True, 0.0, 0.0)
    with pytest.raises(TypeError, match="dtypes"):
        other = residual(np.float64)
        s64 = fp.TrainStep(other, fp.SoftmaxCrossEntropy(), fp.SGD(other.parameters(), lr=0.1))
        _kernels.tape_fit(s64._tape, upd, o, X.astype(np.float64), y, None, 0, 8, 4, 2, True,
                          0.0, 0.0)
    assert all(np.array_equal(p.data, q) for p, q in zip(model.parameters(), before))
    g = fp.Graph()
    u, v = g.input("u", 3), g.input("v", 3)
    two = g.build(g.add(fp.Linear(6, 2, rng=0), g.add(fp.Concat(), u, v)))
    s2 = fp.TrainStep(two, fp.MSE(), fp.SGD(two.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="one input"):
        _kernels.tape_fit(s2._tape, upd, o, X, y, None, 0, 8, 4, 2, True, 0.0, 0.0)
