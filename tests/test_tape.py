"""The tape (fastprop.plan + csrc/tape.c): the planner's pure functions, then the tape against
the modular Python path and central differences on random DAGs, a user's Python module inside
a tape, TrainStep on it, and no allocation per step."""
import copy
import tracemalloc

import numpy as np
import pytest
from conftest import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastprop as fp
from fastprop import _kernels, plan, registry

F32, F64 = np.float32, np.float64
LOSS_CODE = {r.cls: r.code for r in registry.LOSSES}


def tape_of(model, loss_name="MSE"):
    program = plan.lower(model)
    return _kernels.Tape(program, plan.plan_grads(program), model.dtype, LOSS_CODE[loss_name])


def lin(a, b, seed, dtype=F64, bias=True):
    return fp.Linear(a, b, dtype=dtype, rng=seed, bias=bias, bias_init=0.1)


# ---------------------------------------------------------------- the planner

def test_lower_fuses_each_linear_with_its_activation():
    model = fp.Sequential(lin(4, 5, 0), fp.Tanh(), lin(5, 3, 1), fp.ReLU(), fp.Sigmoid())
    p = plan.lower(model)
    assert [(o.kind, o.act) for o in p.ops] == [(plan.DENSE, "tanh"), (plan.DENSE, "relu"),
                                                (plan.ACT, "sigmoid")]
    assert p.widths[p.output] == 3 and p.widths[p.inputs[0]] == 4


def test_a_value_read_twice_is_not_fused_into_its_dense_op():
    g = fp.Graph()
    x = g.input("x", 3)
    h = g.add(lin(3, 3, 0), x)
    r = g.add(fp.ReLU(), h)
    model = g.build(g.add(fp.Add(), h, r))
    kinds = [o.kind for o in plan.lower(model).ops]
    assert kinds == [plan.DENSE, plan.ACT, plan.ADD]


def test_grad_plan_of_a_chain_ping_pongs_two_slots():
    model = fp.Sequential(*[m for i in range(6) for m in (lin(8, 8, i), fp.GELU())])
    p = plan.lower(model)
    gp = plan.plan_grads(p)
    assert gp.slot[p.inputs[0]] is None                # no ∇x for the model's input
    assert len(gp.slot_width) == 2 and set(gp.slot_width) == {8}
    assert not any(any(a) for a in gp.acc) and not any(gp.acc_params)


def test_grad_plan_sums_at_fan_in_and_aliases_in_place_ops():
    g = fp.Graph()
    x = g.input("x", 4)
    h = g.add(lin(4, 4, 0), x)
    a = g.add(fp.Tanh(), h)          # h has two readers: a and the Add
    s = g.add(fp.Add(), h, a)
    model = g.build(s)
    p = plan.lower(model)
    gp = plan.plan_grads(p)
    add = next(i for i, o in enumerate(p.ops) if o.kind == plan.ADD)
    act = next(i for i, o in enumerate(p.ops) if o.kind == plan.ACT)
    # the backward visits the Add first: its share of h is written, the Tanh's is added
    assert gp.acc[add] == (False, False) and gp.acc[act] == (True,)
    # h has two readers: a slot of its own; the Tanh's output has one reader, the Add, and
    # takes the Add's output gradient itself (in place)
    assert gp.slot[p.ops[act].out] == gp.slot[p.output]
    assert gp.slot[p.ops[0].out] != gp.slot[p.output]


def test_a_shared_module_adds_into_its_gradients_at_its_second_node():
    g = fp.Graph()
    x = g.input("x", 3)
    shared = lin(3, 3, 0)
    y = g.add(shared, g.add(shared, x))
    p = plan.lower(g.build(y))
    gp = plan.plan_grads(p)
    assert gp.acc_params == (True, False)   # the later op is visited first and writes


def test_slots_are_reused_once_dead():
    # a wide stem then a long narrow chain: the narrow gradients reuse two slots
    model = fp.Sequential(lin(3, 16, 0), fp.ReLU(), *[m for i in range(5) for m in (lin(16 if i == 0 else 4, 4, i + 1), fp.Tanh())])
    gp = plan.plan_grads(plan.lower(model))
    assert len(gp.slot_width) == 2


def test_several_outputs_are_unsupported():
    g = fp.Graph()
    x = g.input("x", 2)
    model = g.build([g.add(lin(2, 2, 0), x), g.add(lin(2, 2, 1), x)])
    with pytest.raises(plan.Unsupported):
        plan.lower(model)


def test_topological_order_is_stable_and_names_a_cycle():
    # 0 <- 2 <- 1: 2 takes 0, 1 takes 2
    assert plan.topological_order([[], [2], [0]]) == ([0, 2, 1], None)
    assert plan.topological_order([[], [0], [0], [1, 2]]) == ([0, 1, 2, 3], None)
    order, cycle = plan.topological_order([[], [2], [1]])
    assert order is None and cycle == [1, 2, 1]


def test_graph_grad_table_of_a_skip_connection():
    # x(0) -> lin(1) -> act(2); add(3) = 1 + 2: node 1 has two consumers, the Add is visited
    # first (it writes), the act second (it adds); act's value goes only to the Add (alias)
    t = plan.graph_grad_table([[], [0], [1], [1, 2]], [False, True, True, False],
                              [False, False, False, True], [3])
    assert t.accumulate == [[], [False], [True], [False, False]]
    assert t.alias == [[], [True], [False], [False, True]]
    assert t.dedicated == [False, True, False, False]
    assert t.output_alias == [True] and t.output_accumulate == [False]


# ---------------------------------------------------------------- random DAGs

ACTS = [getattr(fp, a.cls) for a in registry.ACTIVATIONS]


class Square(fp.Module):
    """A user's module in Python: y = x², the tape calls back into it."""
    width_preserving = True
    in_features = out_features = None

    def _forward(self, x):
        self._x, self._ready = x.copy(), True
        return x * x

    def _backward(self, g, need_input_grad):
        return 2 * self._x * g if need_input_grad else None

    def _output_like(self):
        return self._x


@st.composite
def random_dag(draw):
    """Nodes of every kind over one input, the unread ones concatenated into one head."""
    width0 = draw(st.integers(1, 4))
    nodes, w = [], [width0]
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["linear", "lowrank", "act", "prelu", "add", "mul",
                                     "concat", "shared", "python"]))
        src = draw(st.integers(0, len(w) - 1))
        if kind in ("linear", "lowrank"):
            nodes.append((kind, [src], draw(st.integers(1, 4))))
            w.append(nodes[-1][2])
        elif kind == "act":
            nodes.append((kind, [src], draw(st.integers(0, len(ACTS) - 1))))
            w.append(w[src])
        elif kind in ("add", "mul"):
            same = [i for i in range(len(w)) if w[i] == w[src]]
            n_more = 1 if kind == "mul" else draw(st.integers(1, 2))
            nodes.append((kind, [src] + draw(st.lists(st.sampled_from(same), min_size=n_more,
                                                      max_size=n_more)), None))
            w.append(w[src])
        elif kind == "concat":
            srcs = draw(st.lists(st.integers(0, len(w) - 1), min_size=2, max_size=3))
            nodes.append((kind, srcs, None))
            w.append(sum(w[i] for i in srcs))
        else:   # prelu, shared (a square Linear used twice), python
            nodes.append((kind, [src], draw(st.integers(1, 2))))
            w.append(w[src])
    return width0, nodes, draw(st.integers(0, 2 ** 16))


def build_dag(width0, nodes, seed, dtype, n_out=2):
    g = fp.Graph()
    handles, w = [g.input("x", width0)], [width0]
    for n, (kind, srcs, extra) in enumerate(nodes):
        ins = [handles[i] for i in srcs]
        if kind == "linear":
            h, wd = g.add(lin(w[srcs[0]], extra, seed + n, dtype), *ins), extra
        elif kind == "lowrank":
            h, wd = g.add(fp.LowRankLinear(w[srcs[0]], extra, 2, dtype=dtype, rng=seed + n), *ins), extra
        elif kind == "act":
            h, wd = g.add(ACTS[extra](), *ins), w[srcs[0]]
        elif kind == "prelu":
            h, wd = g.add(fp.PReLU(1 if extra == 1 else w[srcs[0]], 0.2, dtype), *ins), w[srcs[0]]
        elif kind in ("add", "mul", "concat"):
            m = {"add": fp.Add, "mul": fp.Mul, "concat": fp.Concat}[kind]()
            h = g.add(m, *ins)
            wd = sum(w[i] for i in srcs) if kind == "concat" else w[srcs[0]]
        elif kind == "shared":
            m = lin(w[srcs[0]], w[srcs[0]], seed + n, dtype)
            h, wd = g.add(m, g.add(fp.Tanh(), g.add(m, *ins))), w[srcs[0]]
        else:
            h, wd = g.add(Square(), *ins), w[srcs[0]]
        handles.append(h)
        w.append(wd)
    read = {i for _, srcs, _ in nodes for i in srcs}
    last = [i for i in range(len(handles)) if i not in read]
    top = handles[last[0]] if len(last) == 1 else g.add(fp.Concat(), *[handles[i] for i in last])
    width = w[last[0]] if len(last) == 1 else sum(w[i] for i in last)
    return g.build(g.add(lin(width, n_out, seed + 999, dtype), top))


def modular_grads(model, loss, x, y):
    out = model(x)
    J = loss(out, y)
    model.zero_grad()
    model.backward(loss.backward())
    return J, out, [p.grad.copy() for p in model.parameters()]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dag(), st.sampled_from([F64, F32]), st.integers(1, 4),
       st.sampled_from(["MSE", "GaussianNLL", "SoftmaxCrossEntropy", "SigmoidBCE"]))
def test_random_dag_tape_equals_the_modular_path(dag, dtype, batch, loss_name):
    width0, nodes, seed = dag
    model = build_dag(width0, nodes, seed, dtype)
    twin = copy.deepcopy(model)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, width0)).astype(dtype)
    y = {"MSE": rng.standard_normal((batch, 2)), "GaussianNLL": rng.standard_normal((batch, 1)),
         "SoftmaxCrossEntropy": rng.integers(0, 2, batch),
         "SigmoidBCE": rng.random((batch, 2))}[loss_name]
    loss = getattr(fp, loss_name)()
    J_mod, out_mod, grads = modular_grads(twin, loss, x, y)
    tape = tape_of(model, loss_name)
    J = tape.train((x,), y, tape.loss_code)
    rtol = 1e-10 if dtype == F64 else 2e-5
    assert abs(J - J_mod) <= rtol * max(1.0, abs(J_mod))
    assert_close(tape.output, out_mod, dtype)
    scale = max(float(np.abs(g).max()) for g in grads if g.size) if dtype == F32 else None
    for p, g in zip(model.parameters(), grads):
        assert_close(p.grad, g, dtype, scale=scale)
    np.testing.assert_array_equal(tape.forward((x,)), out_mod)   # forward alone, the same values


def test_tape_gradient_against_central_differences():
    """Every op kind and a Python module in one float64 graph, the tape's gradient of the
    GaussianNLL loss against central differences of its own forward."""
    nodes = [("linear", [0], 4), ("prelu", [1], 2), ("lowrank", [2], 4), ("act", [3], 8),
             ("add", [1, 4], None), ("mul", [5, 2], None), ("concat", [6, 1], None),
             ("shared", [2], 1), ("python", [8], 1), ("act", [7], 6)]
    model = build_dag(3, nodes, 5, F64)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 1))
    tape = tape_of(model, "GaussianNLL")
    tape.train((x,), y, tape.loss_code)
    grads = [p.grad.copy() for p in model.parameters()]
    loss = fp.GaussianNLL()
    eps = 1e-6
    for p, g in zip(model.parameters(), grads):
        flat, gflat = p.data.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            keep = flat[i]
            flat[i] = keep + eps
            up = loss(tape.forward((x,)), y)
            flat[i] = keep - eps
            down = loss(tape.forward((x,)), y)
            flat[i] = keep
            assert abs((up - down) / (2 * eps) - gflat[i]) <= 1e-6 * max(1.0, abs(gflat[i]))


# ---------------------------------------------------------------- TrainStep on the tape

def residual(blocks, width, n_in=None, dtype=F32):
    layers = [fp.Linear(n_in or width, width, dtype=dtype, rng=0), fp.ReLU()]
    layers += [fp.Residual(fp.Sequential(fp.Linear(width, width, dtype=dtype, rng=k + 1), fp.ReLU()))
               for k in range(blocks)]
    return fp.Sequential(*layers, fp.Linear(width, 3, dtype=dtype, rng=99))


@pytest.mark.parametrize("make, loss_cls, n_y", [
    (lambda: residual(3, 8, 5), fp.SoftmaxCrossEntropy, None),
    (lambda: fp.Sequential(lin(5, 8, 0, F32), fp.PReLU(8), lin(8, 3, 1, F32)), fp.MSE, 3),
    (lambda: fp.Sequential(fp.LowRankLinear(5, 8, 2, rng=0), fp.ReLU(), lin(8, 3, 1, F32)), fp.SigmoidBCE, 3),
    (lambda: fp.Sequential(lin(5, 8, 0, F32), fp.Tanh(), lin(8, 4, 1, F32)), fp.GaussianNLL, 2),
    (lambda: fp.Sequential(lin(5, 8, 0, F32), Square(), lin(8, 3, 1, F32)), fp.MSE, 3),
])
def test_trainstep_runs_on_the_tape_and_matches_the_modular_path(make, loss_cls, n_y):
    a, b = make(), make()
    step = fp.TrainStep(a, loss_cls(), fp.Adam(a.parameters(), lr=0.01))
    assert step.path == "tape"
    loss_b, opt_b = loss_cls(), fp.Adam(b.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    for i in range(5):
        x = rng.standard_normal((6 + i % 2, 5)).astype(F32)
        y = rng.integers(0, 3, x.shape[0]) if n_y is None else rng.random((x.shape[0], n_y)).astype(F32)
        Ja = step(x, y)
        opt_b.zero_grad()
        Jb = loss_b(b(x), y)
        b.backward(loss_b.backward())
        opt_b.step()
        assert abs(Ja - Jb) <= 1e-5 * max(1.0, abs(Jb))
    for p, q in zip(a.parameters(), b.parameters()):
        assert_close(p.data, q.data, F32)


def test_trainstep_falls_back_where_the_tape_cannot_run():
    g = fp.Graph()
    x = g.input("x", 2)
    two = g.build([g.add(lin(2, 2, 0, F32), x), g.add(lin(2, 2, 1, F32), x)])
    assert fp.TrainStep(two, fp.MSE(), fp.SGD(two.parameters(), lr=0.1)).path == "modular"
    only_python = fp.Sequential(Square(), Square())
    other = fp.Linear(2, 2)
    assert fp.TrainStep(only_python, fp.MSE(), fp.SGD(other.parameters(), lr=0.1)).path == "modular"


def test_bad_target_changes_nothing_on_the_tape():
    model = residual(2, 4)
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.SGD(model.parameters(), lr=0.1))
    before = [p.grad.copy() for p in model.parameters()]
    with pytest.raises(ValueError, match="outside"):
        step(np.ones((3, 4), F32), np.array([0, 1, 7]))
    assert all(np.array_equal(p.grad, g) for p, g in zip(model.parameters(), before))


def test_a_graph_step_allocates_nothing():
    model = residual(4, 32)
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.SGD(model.parameters(), lr=0.01, momentum=0.9))
    assert step.path == "tape"
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((32, 32)).astype(F32), rng.integers(0, 3, 32)) for _ in range(4)]
    for b in batches:
        step(*b)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        for i in range(20):
            step(*batches[i % 4])
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - start < 512, f"a step allocated {peak - start} bytes at its peak"
    assert end - start < 512


def test_a_loss_with_options_takes_the_modular_path():
    model = residual(1, 4)
    loss = fp.MSE()
    loss.weight = np.ones(3, F32)     # an option the tape's C loss does not have
    assert fp.TrainStep(model, loss, fp.SGD(model.parameters(), lr=0.1)).path == "modular"
    assert fp.TrainStep(model, fp.MSE(), fp.SGD(model.parameters(), lr=0.1)).path == "tape"


def test_a_tape_refuses_an_inconsistent_program():
    """C trusts the program's value numbers and widths: the binding checks them first."""
    model = fp.Sequential(lin(3, 4, 0, F32), fp.ReLU(), lin(4, 2, 1, F32))
    p = plan.lower(model)
    gp = plan.plan_grads(p)
    bad_widths = p._replace(widths=(3, 4, 5, 2))   # op 0 makes value 2 from a (4, 3) weight
    with pytest.raises(ValueError, match="op 0"):
        _kernels.Tape(bad_widths, gp, F32)
    bad_value = p._replace(ops=(p.ops[0]._replace(ins=(17,)),) + p.ops[1:])
    with pytest.raises(ValueError, match="op 0"):
        _kernels.Tape(bad_value, gp, F32)
    with pytest.raises(ValueError, match="op 1"):
        _kernels.Tape(p._replace(ops=(p.ops[0], p.ops[1]._replace(kind=plan.MUL))), gp, F32)


def test_a_weighted_step_on_a_tape_model_takes_the_modular_path():
    a, b = residual(1, 4), residual(1, 4)
    step = fp.TrainStep(a, fp.MSE(), fp.SGD(a.parameters(), lr=0.1))
    assert step.path == "tape"
    rng = np.random.default_rng(0)
    x, y, w = (rng.standard_normal((5, 4)).astype(F32), rng.standard_normal((5, 3)).astype(F32),
               rng.random(5).astype(F32))
    J = step(x, y, sample_weight=w)
    loss = fp.MSE()
    assert abs(J - loss(b(x), y, w)) <= 1e-6 * max(1.0, abs(J))
