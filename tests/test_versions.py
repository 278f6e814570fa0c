"""Explicit ownership of the flat parameter buffers (nn.FlatBuffer, nn.BufferVersions): each
holder (TrainStep, an optimizer, the inference cache) checks the versions of the buffers it
holds, and only those; and the public layer protocol other modules call."""
import copy
import threading

import numpy as np
import pytest

import fastprop as fp
from fastprop import infer, nn

F32, F64 = np.float32, np.float64


def mlp(seed=0, dtype=F32):
    return fp.Sequential(fp.Linear(3, 6, dtype=dtype, rng=seed), fp.Tanh(),
                         fp.Linear(6, 4, dtype=dtype, rng=seed + 1))


def data(seed=0, n=16):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3)).astype(F32), rng.integers(0, 4, n)


def test_a_model_owns_one_buffer_and_a_lone_parameter_its_own():
    model = mlp()
    bufs = {id(p.buffer) for p in model.parameters()}
    assert len(bufs) == 1
    buf = model.parameters()[0].buffer
    assert isinstance(buf, nn.FlatBuffer) and buf.data.size == model.num_parameters()
    assert [p.offset for p in model.parameters()] == [0, 18, 24, 48]
    p = nn.Parameter(np.ones(3))
    assert p.buffer.data.size == 3 and p.offset == 0
    p.data = [1.0, 2.0, 3.0]
    np.testing.assert_array_equal(p.buffer.data, [1, 2, 3])   # a view, not a copy
    assert len(nn.BufferVersions(model.parameters()).buffers) == 1   # O(1) per step


def test_versions_move_only_for_the_buffers_that_change():
    model = mlp()
    buf = model.parameters()[0].buffer
    v = buf.version
    held = nn.BufferVersions(model.parameters())
    mlp(5)                                   # someone else's model: no global state
    fp.Sequential(fp.Linear(2, 2))
    assert buf.version == v and not held.changed()
    model.load_state_dict(mlp(7).state_dict())   # copied in place: nothing moves
    assert buf.version == v and not held.changed()
    copy.copy(model)                         # a shallow copy hands the same guard again
    assert buf.version > v and held.changed() and not held.moved()
    held.renew()
    assert not held.changed()
    outer = fp.Sequential(model, fp.Linear(4, 2))   # nesting moves the parameters
    assert held.changed() and held.moved()
    assert model.parameters()[0].buffer is outer.parameters()[0].buffer is not buf


def test_the_old_global_counters_are_gone():
    assert not hasattr(nn, "flatten_count") and not hasattr(nn, "guard_count")


def test_train_step_and_optimizer_see_parameters_move():
    model = mlp()
    opt = fp.SGD(model.parameters(), lr=0.1)
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), opt)
    x, y = data()
    step(x, y)
    fp.Sequential(model, fp.Linear(4, 2))    # moves them after both were made
    with pytest.raises(RuntimeError, match="moved to new buffers"):
        step(x, y)
    with pytest.raises(RuntimeError, match="moved to new buffers"):
        opt.zero_grad()


def test_a_train_step_made_after_the_move_trains_the_new_buffers():
    model = mlp()
    fp.TrainStep(model, fp.MSE(), fp.SGD(model.parameters(), lr=0.1))
    outer = fp.Sequential(model, fp.Linear(4, 2, rng=3))
    ref = copy.deepcopy(outer)
    x, _ = data()
    t = np.random.default_rng(1).standard_normal((16, 2)).astype(F32)
    for m in (outer, ref):
        step = fp.TrainStep(m, fp.MSE(), fp.SGD(m.parameters(), lr=0.1))
        for _ in range(3):
            step(x, t)
    for p, q in zip(outer.parameters(), ref.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    # the inner model's own views are the outer buffer's: it trained too
    np.testing.assert_array_equal(model[0].weight.data, outer[0][0].weight.data)


def test_load_state_dict_is_seen_by_every_holder():
    model, other = mlp(0), mlp(9)
    opt = fp.Adam(model.parameters(), lr=1e-2)
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), opt)
    x, y = data()
    step(x, y)
    before = fp.predict(model, x)
    model.load_state_dict(other.state_dict())
    np.testing.assert_array_equal(fp.predict(model, x), other(x))   # the inference cache
    assert not np.array_equal(before, fp.predict(model, x))
    ref = mlp(9)
    ref_opt = fp.Adam(ref.parameters(), lr=1e-2)
    ref_opt.load_state_dict(opt.state_dict())
    step(x, y)                                          # continues from the loaded values
    fp.TrainStep(ref, fp.SoftmaxCrossEntropy(), ref_opt)(x, y)
    for p, q in zip(model.parameters(), ref.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-6, atol=1e-7)


def test_two_train_steps_on_one_model_each_hold_their_own():
    a, b = mlp(), mlp()
    opt_a = fp.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt_b = fp.SGD(b.parameters(), lr=0.1, momentum=0.9)
    s1 = fp.TrainStep(a, fp.SoftmaxCrossEntropy(), opt_a)
    s2 = fp.TrainStep(a, fp.SoftmaxCrossEntropy(), opt_a, clip_grad_norm=1e9)
    only = fp.TrainStep(b, fp.SoftmaxCrossEntropy(), opt_b)
    for i in range(4):
        x, y = data(i)
        (s1 if i % 2 else s2)(x, y)
        only(x, y)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-6, atol=1e-7)


def test_optimizers_sharing_parameters():
    model = mlp()
    first = model[0].parameters()
    whole = fp.SGD(model.parameters(), lr=0.1)
    part = fp.SGD(first, lr=0.1)
    model.zero_grad()
    for p in model.parameters():
        p.grad = np.ones(p.shape)
    w0 = model[0].weight.data.copy()
    w2 = model[2].weight.data.copy()
    whole.step()
    part.step()
    np.testing.assert_allclose(model[0].weight.data, w0 - 0.2, rtol=1e-6)
    np.testing.assert_allclose(model[2].weight.data, w2 - 0.1, rtol=1e-6)
    # a layer taken out into another model: both optimizers refuse, nothing written
    fp.Sequential(model[0])
    for opt in (whole, part):
        with pytest.raises(RuntimeError, match="moved"):
            opt.step()


def test_the_optimizer_takes_the_guards_of_the_model_it_holds():
    model = mlp()
    opt = fp.SGD(model.parameters(), lr=0.1)
    opt.step()                                 # guards cached
    shallow = copy.copy(model)                 # the same guard handed out again
    assert shallow.guard is model.guard
    held = threading.Event()
    release = threading.Event()

    def hold():
        with model.exclusive():
            held.set()
            release.wait(5)
    t = threading.Thread(target=hold)
    t.start()
    try:
        held.wait(5)
        with pytest.raises(RuntimeError, match="another thread"):
            opt.step()
    finally:
        release.set()
        t.join()
    opt.step()


def test_the_inference_cache_follows_its_models_buffers():
    model = mlp()
    run = infer.runner(model)
    mlp(3)
    assert infer.runner(model) is run
    copy.copy(model)                             # a new version, nothing moved: kept
    assert infer.runner(model) is run
    fp.Sequential(model)                         # moved: rebuilt
    assert infer.runner(model) is not run
    g = fp.Graph()                               # no parameters before build: not cached
    x = g.input("x", 3)
    node = g.add(fp.Linear(3, 2, rng=0), x)
    assert infer.runner(g) is None
    g.build(node)
    assert infer.runner(g) is not None


# ---------------------------------------------------------------- the layer protocol

class Twice(fp.Module):
    """A user's module implementing the hooks (as README's "How to add a layer" says)."""
    width_preserving = True

    def _forward(self, x):
        self._ready = True
        self._y = 2 * x
        return self._y

    def _backward(self, g, need_input_grad):
        return 2 * g

    def _output_like(self):
        return self._y


def test_the_public_protocol_delegates_to_the_hooks():
    model = fp.Sequential(fp.Linear(3, 4, dtype=F64, rng=0), Twice(), fp.Linear(4, 2, dtype=F64, rng=1))
    x = np.random.default_rng(0).standard_normal((5, 3))
    xc = model.check_input(x)
    y = model.layer_forward(xc)
    np.testing.assert_array_equal(y, model(x))
    g = np.ones((5, 2))
    model.zero_grad()
    gx = model.layer_backward(g.copy(), True).copy()
    grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model(x)
    np.testing.assert_array_equal(model.backward(g), gx)
    for p, want in zip(model.parameters(), grads):
        np.testing.assert_array_equal(p.grad, want)
    assert [n for n, _ in model.named_children()] == ["0", "1", "2"]
    assert model.children()[1] is model[1]
    assert all(m.guard is model.guard for m in model.modules())
    assert all(p.guard is model.guard for p in model.parameters())
    with pytest.raises(ValueError, match="features"):
        model.check_input(np.ones((2, 4)))
    ws = model.r_workspace("k", (2, 3), F64)
    assert model.r_workspace("k", (2, 3), F64) is ws


def test_a_graph_hands_its_guard_to_its_parts():
    """Graph.build, like Sequential: one lock for the model, its modules (a shared one's twin
    too) and parameters, so a layer in use counts as the model in use."""
    g = fp.Graph()
    x = g.input("x", 3)
    shared = fp.Linear(3, 3, rng=0)
    model = g.build(g.add(fp.Add(), g.add(shared, x), g.add(shared, g.add(fp.Tanh(), x))))
    assert all(m.guard is model.guard for m in model.modules())
    assert all(p.guard is model.guard for p in model.parameters())
    with model.guard:
        with pytest.raises(RuntimeError):
            shared(np.ones((2, 3), F32))
