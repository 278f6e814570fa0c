"""Dropout, LayerNorm and BatchNorm1d as C ops of the tape (plan.DROPOUT, LAYERNORM, BATCHNORM):
the fused TrainStep against the modular path (same kernels in the same order: bitwise) and
against fastprop.reference, in Sequential, Graph and Residual models, both dtypes, both modes,
every option of the two norms; the mode and settings read at each step; no allocation per step."""
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import fastprop as fp
from fastprop import plan, reference

F32, F64 = np.float32, np.float64


def seq(dtype, ln=None, bn=None, p=0.3):
    """Linear, LayerNorm, ReLU, Dropout, Linear, BatchNorm1d, Tanh, Dropout, Linear."""
    return fp.Sequential(fp.Linear(8, 12, dtype=dtype, rng=0, bias_init=0.1),
                         fp.LayerNorm(12, dtype=dtype, **(ln or {})), fp.ReLU(), fp.Dropout(p, rng=1),
                         fp.Linear(12, 6, dtype=dtype, rng=2), fp.BatchNorm1d(6, dtype=dtype, **(bn or {})),
                         fp.Tanh(), fp.Dropout(0.1, rng=5), fp.Linear(6, 3, dtype=dtype, rng=3))


def graph(dtype):
    """A DAG with fan-out and fan-in around the three layers, and a Residual inside it."""
    g = fp.Graph()
    x = g.input("x", 8)
    h = g.add(fp.Linear(8, 10, dtype=dtype, rng=0), x)
    n = g.add(fp.LayerNorm(10, dtype=dtype), h)
    b = g.add(fp.BatchNorm1d(10, momentum=None, dtype=dtype), h)
    s = g.add(fp.Add(), n, g.add(fp.Dropout(0.4, rng=1), b))
    r = g.add(fp.Residual(fp.Sequential(fp.LayerNorm(10, bias=False, dtype=dtype),
                                        fp.Linear(10, 10, dtype=dtype, rng=2), fp.GELU(),
                                        fp.Dropout(0.2, rng=3))), g.add(fp.Tanh(), s))
    return g.build(outputs=g.add(fp.Linear(10, 3, dtype=dtype, rng=4), r))


def residual_seq(dtype):
    return fp.Sequential(fp.Linear(8, 10, dtype=dtype, rng=0),
                         fp.Residual(fp.Sequential(fp.BatchNorm1d(10, dtype=dtype), fp.ReLU(),
                                                   fp.Dropout(0.25, rng=1), fp.Linear(10, 10, dtype=dtype, rng=2))),
                         fp.LayerNorm(10, elementwise_affine=False, dtype=dtype), fp.Linear(10, 3, dtype=dtype, rng=3))


def batches(dtype, n=5, batch=16):
    r = np.random.default_rng(7)
    return [(r.standard_normal((batch, 8)).astype(dtype), r.integers(0, 3, batch)) for _ in range(n)]


def state(model):
    return ([p.data.copy() for p in model.parameters()], [b.copy() for b in model.buffers()],
            [m.rng_state() for m in model.modules() if isinstance(m, fp.Dropout)])


def assert_same(a, b):
    for u, v in zip(a[0] + a[1], b[0] + b[1]):
        np.testing.assert_array_equal(u, v)
    assert a[2] == b[2]


def modular_step(model, loss, opt, x, y):
    opt.zero_grad()
    J = loss(model(x), y)
    model.backward(loss.backward())
    opt.step()
    return J


def run_both(make, dtype, modes, loss=fp.SoftmaxCrossEntropy):
    """Fused TrainStep and the modular path on two copies, the modes switched between steps."""
    a, b = make(dtype), make(dtype)
    la, lb = loss(), loss()
    oa, ob = fp.Adam(a.parameters(), 1e-2), fp.Adam(b.parameters(), 1e-2)
    step = fp.TrainStep(a, la, oa)
    assert step.path == "tape"
    for mode, (x, y) in zip(modes, batches(dtype, len(modes))):
        a.train(mode)
        b.train(mode)
        assert step(x, y) == modular_step(b, lb, ob, x, y)
    return a, b


# ---------------------------------------------------------------- lowering

def test_the_layers_lower_to_their_c_ops():
    kinds = [o.kind for o in plan.lower(seq(F32)).ops]
    assert kinds == [plan.DENSE, plan.LAYERNORM, plan.ACT, plan.DROPOUT, plan.DENSE, plan.BATCHNORM,
                     plan.ACT, plan.DROPOUT, plan.DENSE]
    assert plan.MODULE not in [o.kind for o in plan.lower(graph(F64)).ops]
    assert plan.MODULE not in [o.kind for o in plan.lower(residual_seq(F32)).ops]


def test_the_op_codes_are_the_c_enum():
    header = (Path(fp.__file__).parents[2] / "csrc" / "fastprop.h")
    if not header.exists():
        pytest.skip("csrc/ is not beside the installed package")
    enum = re.search(r"enum \{ (FP_OP_DENSE = 0,[^}]*)\}", header.read_text()).group(1)
    names = [n.strip().split()[0] for n in enum.split(",") if n.strip()]
    assert {n: i for i, n in enumerate(names)}["FP_OP_DROPOUT"] == plan.DROPOUT
    assert names.index("FP_OP_LAYERNORM") == plan.LAYERNORM
    assert names.index("FP_OP_BATCHNORM") == plan.BATCHNORM


# ---------------------------------------------------------------- fused == modular

@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("make", [seq, graph, residual_seq], ids=["sequential", "graph", "residual"])
def test_fused_equals_modular_over_steps_and_mode_changes(make, dtype):
    a, b = run_both(make, dtype, [True, True, False, True, False, False, True])
    assert_same(state(a), state(b))


@pytest.mark.parametrize("ln, bn", [
    ({"elementwise_affine": False}, {"affine": False}),
    ({"bias": False}, {"track_running_stats": False}),
    ({"eps": 1e-3}, {"momentum": None}),
    ({}, {"momentum": 0.5, "eps": 1e-2}),
])
def test_every_norm_option_fused_equals_modular(ln, bn):
    a, b = run_both(lambda d: seq(d, ln, bn), F64, [True, True, False, True])
    assert_same(state(a), state(b))
    bn_a = a[5]
    if bn_a.track_running_stats:
        assert int(bn_a.num_batches_tracked) == 3


def test_batchnorm_running_statistics_follow_the_modular_path_exactly():
    a, b = run_both(lambda d: seq(d, bn={"momentum": None}), F32, [True] * 4)
    assert int(a[5].num_batches_tracked) == 4
    np.testing.assert_array_equal(a[5].running_mean, b[5].running_mean)
    np.testing.assert_array_equal(a[5].running_var, b[5].running_var)
    assert not np.all(a[5].running_var == 1)


def test_settings_changed_between_steps_apply_to_the_next_one():
    a, b = seq(F64), seq(F64)
    loss = fp.SoftmaxCrossEntropy()
    oa, ob = fp.SGD(a.parameters(), 0.1), fp.SGD(b.parameters(), 0.1)
    step = fp.TrainStep(a, loss, oa)
    for k, (x, y) in enumerate(batches(F64, 4)):
        for m in (a, b):
            m[3].p = (0.3, 0.0, 1.0, 0.6)[k]
            m[1].eps = 10.0 ** -(k + 1)
            m[5].momentum = (0.1, None, 0.9, 0.0)[k]
        assert step(x, y) == modular_step(b, loss, ob, x, y)
    assert_same(state(a), state(b))


def shared(dtype):
    """One Dropout and one BatchNorm1d at two nodes of a Graph (the second runs a twin)."""
    g = fp.Graph()
    x = g.input("x", 8)
    d, bn = fp.Dropout(0.5, rng=3), fp.BatchNorm1d(8, momentum=None, dtype=dtype)
    h = g.add(fp.Tanh(), g.add(bn, g.add(d, g.add(fp.Linear(8, 8, dtype=dtype, rng=0), x))))
    h = g.add(bn, g.add(d, g.add(fp.Linear(8, 8, dtype=dtype, rng=1), h)))
    return g.build(outputs=g.add(fp.Linear(8, 3, dtype=dtype, rng=2), h))


def test_a_module_shared_by_two_graph_nodes_fused_equals_modular():
    a, b = run_both(shared, F64, [True, True, False, True])
    assert_same(state(a), state(b))
    assert int(a.buffers()[-1]) == int(b.buffers()[-1]) > 0


def test_the_stream_continues_from_set_rng_state_and_matches_a_fresh_module():
    a, b = seq(F32), seq(F32)
    x, y = batches(F32, 1)[0]
    step = fp.TrainStep(a, fp.SoftmaxCrossEntropy(), fp.SGD(a.parameters(), 0.0))
    a[3].set_rng_state({"key": 12345, "counter": 2 ** 64 - 64})   # wraps round, as the module's
    b[3].set_rng_state({"key": 12345, "counter": 2 ** 64 - 64})
    step(x, y)
    b(x)
    assert a[3].rng_state() == b[3].rng_state()
    assert a[3].rng_state()["counter"] < 2 ** 64


# ---------------------------------------------------------------- against fastprop.reference

def test_one_fused_step_against_the_reference_chain_float64():
    model = seq(F64)
    x, y = batches(F64, 1, batch=10)[0]
    lin1, ln, drop1, lin2, bn, drop2, lin3 = (model[i] for i in (0, 1, 3, 4, 5, 7, 8))
    keys = [d.rng_state() for d in (drop1, drop2)]
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    P = [p.data.copy() for p in model.parameters()]
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.SGD(model.parameters(), 0.0))
    J = step(x, y)
    R = reference
    a1 = R.dense_forward(x, P[0], P[1])
    h1, m1, s1 = R.layernorm_forward(a1, P[2], P[3])
    r1 = R.activation_forward(h1, "relu")
    d1, k1 = R.dropout_forward(r1, 0.3, keys[0]["key"], keys[0]["counter"])
    a2 = R.dense_forward(d1, P[4], P[5])
    h2, m2, s2 = R.batchnorm_forward(a2, P[6], P[7], rm, rv)
    t2 = R.activation_forward(h2, "tanh")
    d2, k2 = R.dropout_forward(t2, 0.1, keys[1]["key"], keys[1]["counter"])
    z = R.dense_forward(d2, P[8], P[9])
    Jr, g = R.softmax_cross_entropy(z, y)
    assert J == pytest.approx(Jr, rel=1e-12)
    g, gw3, gb3 = R.dense_backward(g, d2, P[8])
    g = R.dropout_backward(g, k2, 0.1)
    g = R.activation_backward(g, "tanh", y=t2)
    g, gw2n, gb2n = R.batchnorm_backward(g, a2, m2, s2, P[6], grad_weight=np.zeros(6), grad_bias=np.zeros(6))
    g, gw2, gb2 = R.dense_backward(g, d1, P[4])
    g = R.dropout_backward(g, k1, 0.3)
    g = R.activation_backward(g, "relu", y=r1)
    g, gw1n, gb1n = R.layernorm_backward(g, a1, m1, s1, P[2], grad_weight=np.zeros(12), grad_bias=np.zeros(12))
    _, gw1, gb1 = R.dense_backward(g, x, P[0], input_grad=False)
    for p, want in zip(model.parameters(), [gw1, gb1, gw1n, gb1n, gw2, gb2, gw2n, gb2n, gw3, gb3]):
        np.testing.assert_allclose(p.grad, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(bn.running_var, rv, rtol=1e-12)


# ---------------------------------------------------------------- bad input, allocation

def test_batchnorm_on_one_row_in_training_changes_nothing():
    model = seq(F32)
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.SGD(model.parameters(), 0.1))
    step(*batches(F32, 1)[0])
    before = state(model)
    x, y = batches(F32, 1, batch=1)[0]
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        step(x, y)
    assert_same(before, state(model))
    model.eval()
    step(x, y)   # fine in eval mode, as the module's forward


@pytest.mark.parametrize("make", [seq, graph], ids=["sequential", "graph"])
def test_a_fused_step_with_the_layers_allocates_nothing(make):
    model = make(F32)
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.SGD(model.parameters(), lr=0.01, momentum=0.9))
    assert step.path == "tape"
    data = batches(F32, 4, batch=32)
    for b in data:
        step(*b)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        for i in range(20):
            step(*data[i % 4])
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # no buffer per step; the peak holds transient small objects only (each Dropout's new
    # counter is a Python int, 32 bytes, the old one freed)
    assert peak - start < 1024, f"a step allocated {peak - start} bytes at its peak"
    assert end - start < 512
