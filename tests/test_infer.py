"""Inference on the tape (fastprop.infer, _kernels.Inference): the forward-only workspace plan,
predict / predict_proba / evaluate / model(x) in eval mode against the modular path and
fastprop.reference, Python modules inside, the cache, and no allocation but the output."""
import pickle
import tracemalloc

import numpy as np
import pytest
from conftest import assert_close

import fastprop as fp
from fastprop import infer, plan, reference

F32, F64 = np.float32, np.float64


class Square(fp.Module):
    """A user's module in Python (a callback op on the tape)."""
    width_preserving = True

    def _forward(self, x):
        self._x, self._ready = x.copy(), True
        return x * x

    def _backward(self, g, need_input_grad):
        return 2 * self._x * g

    def _output_like(self):
        return self._x


def lin(a, b, seed, dtype):
    return fp.Linear(a, b, dtype=dtype, rng=seed, bias_init=0.1)


def residual(dtype):
    return fp.Sequential(lin(5, 8, 0, dtype), fp.ReLU(),
                         fp.Residual(fp.Sequential(lin(8, 8, 1, dtype), fp.Tanh())),
                         fp.Residual(fp.Sequential(lin(8, 8, 2, dtype), fp.GELU())), lin(8, 3, 3, dtype))


def graph(dtype):
    g = fp.Graph()
    x = g.input("x", 5)
    h = g.add(lin(5, 6, 0, dtype), x)
    a = g.add(fp.Sigmoid(), h)
    m = g.add(fp.Mul(), h, a)
    c = g.add(fp.Concat(), m, g.add(fp.ReLU(), h))
    return g.build(g.add(lin(12, 3, 1, dtype), c))


MODELS = {
    "chain": lambda d: fp.Sequential(lin(5, 16, 0, d), fp.ReLU(), lin(16, 16, 1, d), fp.Tanh(), lin(16, 3, 2, d)),
    "residual": residual,
    "graph": graph,
    "prelu": lambda d: fp.Sequential(lin(5, 8, 0, d), fp.PReLU(8, dtype=d), lin(8, 3, 1, d)),
    "lowrank": lambda d: fp.Sequential(fp.LowRankLinear(5, 8, 2, dtype=d, rng=0), fp.SiLU(), lin(8, 3, 1, d)),
    "python": lambda d: fp.Sequential(lin(5, 8, 0, d), Square(), lin(8, 3, 1, d)),
    "dropout": lambda d: fp.Sequential(lin(5, 8, 0, d), fp.ReLU(), fp.Dropout(0.5, rng=0), lin(8, 3, 1, d)),
}


def modular(model, X, batch_size):
    """The modular Python path, chunk by chunk, in eval mode."""
    with fp.nn.evaluating(model):
        return np.concatenate([model._forward(X[a:a + batch_size]).copy()
                               for a in range(0, X.shape[0], batch_size)])


def ref_forward(m, x):
    """fastprop.reference's forward of a Sequential / Residual / layer (float64)."""
    if isinstance(m, fp.Sequential):
        for layer in m.layers:
            x = ref_forward(layer, x)
        return x
    if isinstance(m, fp.Residual):
        return x + ref_forward(m._steps[1].module, x)
    if isinstance(m, fp.Linear):
        return reference.dense_forward(x, m.weight.data.astype(F64), m.bias.data.astype(F64))
    if isinstance(m, fp.LowRankLinear):
        return reference.low_rank_forward(x, m.U.data.astype(F64), m.V.data.astype(F64),
                                          m.bias.data.astype(F64))
    if isinstance(m, fp.PReLU):
        return reference.prelu_forward(x, m.weight.data.astype(F64))
    if isinstance(m, fp.nn.Activation):
        return reference.activation_forward(x, m.name, **m.params)
    if isinstance(m, (Square,)):
        return x * x
    if isinstance(m, fp.Dropout):
        return x
    raise TypeError(type(m).__name__)


# ---------------------------------------------------------------- the plan

def test_a_chain_runs_in_two_buffers():
    model = fp.Sequential(*[m for i in range(6) for m in (lin(8, 8, i, F64), fp.GELU())])
    p = plan.lower(model)
    vp = plan.plan_values(p)
    assert vp.slot[p.inputs[0]] is None and len(vp.slot_width) == 2
    outs = [o.out for o in p.ops]
    assert all(vp.slot[a] != vp.slot[b] for a, b in zip(outs, outs[1:]))   # never its input's


def test_a_value_read_later_keeps_its_buffer():
    p = plan.lower(graph(F64))
    vp = plan.plan_values(p)
    h = p.ops[0].out                  # read by the Sigmoid, the Mul and the ReLU
    last = max(i for i, o in enumerate(p.ops) if h in o.ins)
    for i, o in enumerate(p.ops[1:last + 1], 1):
        assert vp.slot[o.out] != vp.slot[h], f"op {i} overwrote h while it was live"
    assert len(vp.slot_width) < len([o for o in p.ops])


# ---------------------------------------------------------------- results

@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dtype", [F32, F64])
def test_predict_matches_the_modular_path_and_the_reference(name, dtype):
    model = MODELS[name](dtype)
    assert infer.runner(model) is not None
    X = np.random.default_rng(1).standard_normal((77, 5)).astype(dtype)
    got = fp.predict(model, X, batch_size=16)          # 4 full chunks and a partial one
    assert got.dtype == dtype and got.shape == (77, 3)
    np.testing.assert_array_equal(got, modular(model, X, 16))
    want = ref_forward(model, X.astype(F64)) if name != "graph" else modular(graph(F64), X.astype(F64), 77)
    assert_close(got, want, dtype)
    assert model.training                               # the modes are given back
    proba = fp.predict_proba(model, X, batch_size=30)
    assert_close(proba, reference.softmax(want), dtype)


@pytest.mark.parametrize("name", ["chain", "graph", "python"])
def test_evaluate_matches_the_modular_path(name):
    model = MODELS[name](F32)
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((45, 5)).astype(F32), rng.integers(0, 3, 45)
    w = rng.random(45)
    loss = fp.SoftmaxCrossEntropy()
    out = modular(model, X, 45)
    got = fp.evaluate(model, X, y, loss, batch_size=45, sample_weight=w)
    assert got["loss"] == pytest.approx(fp.SoftmaxCrossEntropy()(out, y, w.astype(F32)), rel=1e-6)
    assert got["accuracy"] == np.mean(out.argmax(1) == y)
    chunked = fp.evaluate(model, X, y, loss, batch_size=8, sample_weight=w)
    assert chunked["loss"] == pytest.approx(got["loss"], rel=1e-5)
    assert chunked["accuracy"] == got["accuracy"]


@pytest.mark.parametrize("name", ["chain", "graph", "python", "dropout"])
def test_model_call_in_eval_mode_runs_on_the_tape_and_backward_still_works(name):
    a, b = MODELS[name](F64), MODELS[name](F64)
    a.eval(), b.eval()
    x = np.random.default_rng(3).standard_normal((7, 5))
    x0 = x.copy()
    y = a(x)
    assert a._replay is not None                        # it ran on the tape
    np.testing.assert_array_equal(y, modular(b, x, 7))
    x += 1                                              # the caller's array changes: no effect
    gy = np.random.default_rng(4).standard_normal(y.shape)
    with fp.nn.evaluating(b):
        b._public_forward(x0)
    assert_close(a.backward(gy), b.backward(gy), F64)
    for p, q in zip(a.parameters(), b.parameters()):
        assert_close(p.grad, q.grad, F64)


def test_training_mode_and_unsupported_models_take_the_modular_path():
    model = MODELS["chain"](F32)
    model(np.ones((2, 5), F32))
    assert model._replay is None                        # training mode: modular
    model.eval()
    model[2].train()                                    # a C op in training mode changes nothing
    model(np.ones((2, 5), F32))
    assert model._replay is not None
    drop = MODELS["dropout"](F32).eval()
    drop[2].train()                                     # a Python op in training mode: modular
    drop(np.ones((2, 5), F32))
    assert drop._replay is None
    g = fp.Graph()
    x = g.input("x", 2)
    two = g.build([g.add(lin(2, 2, 0, F32), x), g.add(lin(2, 2, 1, F32), x)])
    assert infer.runner(two) is None
    out = fp.predict(fp.Sequential(Square(), Square()), np.full((3, 2), 2.0))
    np.testing.assert_array_equal(out, np.full((3, 2), 16.0))


def test_a_two_input_graph_in_eval_mode():
    g = fp.Graph()
    x1, x2 = g.input("a", 3), g.input("b", 3)
    model = g.build(g.add(lin(3, 2, 0, F64), g.add(fp.Add(), x1, x2))).eval()
    a, b = np.ones((4, 3)), np.arange(12.0).reshape(4, 3)
    got = model(a, b)
    assert model._replay is not None
    np.testing.assert_array_equal(got, model({"a": a, "b": b}))
    model.train()
    np.testing.assert_array_equal(got, model(a, b))


def test_the_runner_is_cached_and_rebuilt_when_parameters_move():
    model = MODELS["chain"](F32)
    run = infer.runner(model)
    assert infer.runner(model) is run
    fp.Sequential(lin(2, 2, 0, F32))                    # someone else's flatten: still valid
    assert infer.runner(model) is run
    X = np.random.default_rng(5).standard_normal((9, 5)).astype(F32)
    before = fp.predict(model, X)
    outer = fp.Sequential(model, lin(3, 2, 9, F32))     # moves model's parameters
    assert infer.runner(model) is not run
    np.testing.assert_array_equal(fp.predict(model, X), before)
    model[0].weight.data[...] = 0                       # written in place: seen by the runner
    np.testing.assert_array_equal(fp.predict(model, X), modular(model, X, 9))
    assert fp.predict(outer, X).shape == (9, 2)
    clone = pickle.loads(pickle.dumps(model))           # the cache is not part of a model
    np.testing.assert_array_equal(fp.predict(clone, X), fp.predict(model, X))


def test_bad_input_raises_and_names_it():
    model = MODELS["chain"](F32)
    with pytest.raises(ValueError, match="features"):
        fp.predict(model, np.ones((3, 4), F32))
    with pytest.raises(ValueError, match="no samples"):
        fp.predict(model, np.ones((0, 5), F32))
    run = infer.runner(model)
    with pytest.raises(ValueError, match="out"):
        run.run((np.ones((3, 5), F32),), np.empty((3, 2), F32))
    with pytest.raises(ValueError, match="C-contiguous"):
        run.run((np.ones((3, 10), F32)[:, ::2],))
    with pytest.raises(TypeError, match="out"):
        run.run((np.ones((3, 5), F32),), np.empty((3, 3), F64))


def test_predict_allocates_only_its_output():
    model = fp.Sequential(lin(32, 64, 0, F32), fp.ReLU(), lin(64, 64, 1, F32), fp.ReLU(), lin(64, 10, 2, F32))
    X = np.random.default_rng(6).standard_normal((1000, 32)).astype(F32)
    fp.predict(model, X, batch_size=256)                # the workspace, once
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        out = fp.predict(model, X, batch_size=256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - start < out.nbytes + 4096, f"peak {peak - start} bytes for a {out.nbytes}-byte output"
    model.eval()
    x = X[:64]
    model(x)
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        y = model(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - start < y.nbytes + 4096


# ---------------------------------------------------------------- Dropout, LayerNorm, BatchNorm1d in C

def normed(dtype, track=True, affine=True):
    return fp.Sequential(lin(5, 8, 0, dtype), fp.LayerNorm(8, dtype=dtype), fp.ReLU(),
                         fp.Dropout(0.3, rng=0), lin(8, 8, 1, dtype),
                         fp.BatchNorm1d(8, momentum=0.3, affine=affine, track_running_stats=track,
                                        dtype=dtype),
                         fp.Tanh(), lin(8, 3, 2, dtype))


def trained(model, steps=3):
    """Some training steps (on the tape), so the running statistics and weights are not their
    initial values."""
    rng = np.random.default_rng(7)
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.SGD(model.parameters(), lr=0.1))
    for _ in range(steps):
        step(rng.standard_normal((16, 5)).astype(model.dtype), rng.integers(0, 3, 16))
    return model


def no_python_forward(model, monkeypatch):
    """The three layers' own forwards raise: what runs below runs in C."""
    def refuse(self, x):
        raise AssertionError(f"{type(self).__name__}._forward was called")
    for cls in (fp.Dropout, fp.LayerNorm, fp.BatchNorm1d):
        monkeypatch.setattr(cls, "_forward", refuse)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("track", [True, False])
def test_dropout_layernorm_batchnorm_run_in_c_in_eval_mode(dtype, track, monkeypatch):
    model = trained(normed(dtype, track))
    X = np.random.default_rng(1).standard_normal((37, 5)).astype(dtype)
    want = modular(model, X, 16)
    want_call = modular(model, X[:7], 7)
    counter = model[3]._counter
    no_python_forward(model, monkeypatch)
    got = fp.predict(model, X, batch_size=16)
    np.testing.assert_array_equal(got, want)
    model.eval()
    np.testing.assert_array_equal(model(X[:7]), want_call)
    assert model._replay is not None                  # model(x) ran on the tape
    assert model[3]._counter == counter               # eval mode draws no mask
    if track:
        assert int(model[5].num_batches_tracked) == 3  # nor moves the statistics


def test_settings_changed_or_loaded_after_the_runner_was_built(monkeypatch):
    model = trained(normed(F64))
    X = np.random.default_rng(2).standard_normal((20, 5))
    before = fp.predict(model, X)
    run = infer.runner(model)
    model[1].eps, model[5].eps = 0.5, 2.0
    model[3].p = 0.9                                     # eval mode: still the identity
    changed = fp.predict(model, X)
    assert infer.runner(model) is run                    # read at each run, no rebuild
    assert not np.allclose(changed, before)
    np.testing.assert_array_equal(changed, modular(model, X, 20))
    other = trained(normed(F64), steps=5)
    other[1].eps, other[5].eps = 0.5, 2.0
    model.load_state_dict(other.state_dict())           # new weights and running statistics
    np.testing.assert_array_equal(fp.predict(model, X), modular(other, X, 20))
    assert infer.runner(model) is run


def test_batchnorm_momentum_none_and_no_affine_in_eval_mode():
    model = normed(F32, affine=False)
    model[5].momentum = None                             # the cumulative average
    trained(model, steps=4)
    X = np.random.default_rng(3).standard_normal((9, 5)).astype(F32)
    np.testing.assert_array_equal(fp.predict(model, X), modular(model, X, 9))
    np.testing.assert_array_equal(fp.predict(model, X[:1]), modular(model, X[:1], 1))  # one row


def test_training_mode_still_takes_the_modular_path():
    model = trained(normed(F64))
    x = np.random.default_rng(4).standard_normal((6, 5))
    twin = copy_model(model)
    counter, tracked = model[3]._counter, int(model[5].num_batches_tracked)
    y = model(x)                                         # training mode: masks, batch statistics
    assert model._replay is None
    assert model[3]._counter > counter
    assert int(model[5].num_batches_tracked) == tracked + 1
    np.testing.assert_array_equal(y, twin(x))            # the same stream, the same statistics
    model.eval()
    model[5].train()                                     # one moded layer in training mode
    model(x)
    assert model._replay is None and int(model[5].num_batches_tracked) == tracked + 2
    run = infer.runner(model)
    with pytest.raises(ValueError, match="BatchNorm1d is in training mode"):
        run.run((x,))


def copy_model(model):
    import copy
    return copy.deepcopy(model)


def test_eval_backward_after_a_tape_forward_matches_the_modular_one():
    a = trained(normed(F64))
    b = copy_model(a)
    a.eval(), b.eval()
    x = np.random.default_rng(5).standard_normal((8, 5))
    ya = a(x)
    assert a._replay is not None
    with fp.nn.evaluating(b):
        yb = b._public_forward(x)
    np.testing.assert_array_equal(ya, yb)
    g = np.random.default_rng(6).standard_normal(ya.shape)
    np.testing.assert_array_equal(a.backward(g), b.backward(g))
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)
