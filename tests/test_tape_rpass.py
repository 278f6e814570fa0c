"""The tape's R-passes (csrc/tape.c tape_rforward/tape_rbackward, planned by fastprop.plan):
the planner's pure functions, then hvp/gnvp on the tape against the modular path (the oracle),
central differences of the gradient, fastprop.reference's Hessian and torch, on random DAGs
of every op kind, a user's Python module inside, and chunked batches."""
import copy
import tracemalloc

import numpy as np
import pytest
from conftest import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastprop as fp
from fastprop import curvature, plan, registry

F32, F64 = np.float32, np.float64
ACTS = [getattr(fp, a.cls) for a in registry.ACTIVATIONS]


def lin(a, b, seed, dtype=F64):
    return fp.Linear(a, b, dtype=dtype, rng=seed, bias_init=0.1)


class RSquare(fp.Module):
    """A user's module in Python with its own R-operator: y = x², R{y} = 2 x R{x}."""
    width_preserving = True
    in_features = out_features = None
    r_supported = True

    def _forward(self, x):
        self._x, self._ready = x.copy(), True
        return x * x

    def _backward(self, g, need_input_grad):
        return 2 * self._x * g if need_input_grad else None

    def _output_like(self):
        return self._x

    def _rforward(self, x, rx, v):
        self._rsaved = (x.copy(), None if rx is None else rx.copy())
        return x * x, None if rx is None else 2 * x * rx

    def _rbackward(self, g, rg, v, hv, need_input_grad):
        x, rx = self._rsaved
        rgx = 2 * x * rg + (0 if g is None or rx is None else 2 * rx * g)
        return (None if g is None else 2 * x * g), rgx


def modular(fn, *args, **kw):
    """fn on the modular path (the R tape switched off): the oracle."""
    saved = curvature._rtape, curvature._rtapes_callbacks
    curvature._rtape, curvature._rtapes_callbacks = (lambda m: None), (lambda m: None)
    try:
        return fn(*args, **kw)
    finally:
        curvature._rtape, curvature._rtapes_callbacks = saved


def flat_grad(model, loss, x, y):
    model.zero_grad()
    loss(model.forward(x), y)
    model.backward(loss.backward())
    return np.concatenate([p.grad.reshape(-1) for p in model.parameters()])


def numeric_hvp(model, loss, x, y, v, eps=1e-6):
    """(∇J(θ + εv) − ∇J(θ − εv)) / 2ε, float64."""
    theta = fp.parameters_to_vector(model)
    grads = []
    for s in (1, -1):
        fp.vector_to_parameters(theta + s * eps * v, model)
        grads.append(flat_grad(model, loss, x, y))
    fp.vector_to_parameters(theta, model)
    return (grads[0] - grads[1]) / (2 * eps)


# ---------------------------------------------------------------- the planner

def test_lower_unfused_keeps_each_activation_its_own_op():
    model = fp.Sequential(lin(4, 5, 0), fp.Tanh(), lin(5, 3, 1))
    assert [o.kind for o in plan.lower(model, fused=False).ops] == [plan.DENSE, plan.ACT, plan.DENSE]
    assert [o.kind for o in plan.lower(model).ops] == [plan.DENSE, plan.DENSE]


def test_rvalue_plan_of_a_chain():
    model = fp.Sequential(fp.Tanh(), lin(4, 5, 0), fp.ReLU(), lin(5, 3, 1))
    p = plan.lower(model, fused=False)
    r = plan.plan_rvalues(p)
    # the input and tanh(x) do not move; each later value does and is kept to the backward
    assert r.moving == (False, False, True, True, True)
    assert r.slot[:2] == (None, None) and len(set(r.slot[2:])) == 3
    assert r.slot_width == (5, 5, 3)


def test_rvalues_read_only_by_linear_ops_share_a_buffer():
    # x -> lin -> tanh -> [Add with lin's value] -> lin: R{tanh} is read by the Add alone
    # (its R-backward does not read it): freed after the Add, the head's R-value takes it
    g = fp.Graph()
    x = g.input("x", 4)
    h = g.add(lin(4, 4, 0), x)
    s = g.add(fp.Add(), h, g.add(fp.Tanh(), h))
    model = g.build(g.add(lin(4, 4, 1), s))
    p = plan.lower(model, fused=False)
    r = plan.plan_rvalues(p)
    tanh = next(o.out for o in p.ops if o.kind == plan.ACT)
    assert r.slot[tanh] == r.slot[p.output]
    assert len(r.slot_width) == 3


def test_an_output_that_does_not_move_is_unsupported():
    # a program whose only op is an activation of the input: nothing moves
    program = plan.Program((plan.Op(plan.ACT, (0,), 1, "tanh", {}, None, None, None, None, None),),
                           (3, 3), (0,), 1)
    with pytest.raises(plan.Unsupported):
        plan.plan_rvalues(program)


def test_offsets_follow_the_flat_layout():
    model = fp.Sequential(fp.LowRankLinear(4, 6, 2, dtype=F64, rng=0), fp.PReLU(6, 0.2, F64),
                          fp.LayerNorm(6, dtype=F64), fp.Linear(6, 2, bias=False, dtype=F64, rng=1))
    params = model.parameters()
    off = plan.plan_offsets(plan.lower(model, fused=False), params)
    starts = np.cumsum([0] + [p.size for p in params])[:-1].tolist()
    assert off.n == model.num_parameters()
    # U; V and its bias; the slopes; LayerNorm's weight and bias; the head without a bias
    assert off.ops == ((starts[0], -1), (starts[1], starts[2]), (starts[3], -1),
                       (starts[4], starts[5]), (starts[6], -1))


# ---------------------------------------------------------------- random DAGs

@st.composite
def random_dag(draw, kinds=("linear", "act", "prelu", "add", "mul", "concat", "shared",
                            "python", "layernorm", "lowrank")):
    width0 = draw(st.integers(1, 4))
    nodes, w = [], [width0]
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(kinds))
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
        else:   # prelu, shared (a square Linear used twice), python, layernorm
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
        elif kind == "layernorm":
            m = fp.LayerNorm(w[srcs[0]], elementwise_affine=extra == 1, dtype=dtype)
            if m.weight is not None:   # a trained one's: at width 1 the output is the bias
                r = np.random.default_rng(seed + n)   # alone, and 0 would sit on ReLU's kink
                m.weight.data, m.bias.data = 1 + 0.5 * r.standard_normal((2, w[srcs[0]]))
            h, wd = g.add(m, *ins), w[srcs[0]]
        elif kind in ("add", "mul", "concat"):
            m = {"add": fp.Add, "mul": fp.Mul, "concat": fp.Concat}[kind]()
            h = g.add(m, *ins)
            wd = sum(w[i] for i in srcs) if kind == "concat" else w[srcs[0]]
        elif kind == "shared":
            m = lin(w[srcs[0]], w[srcs[0]], seed + n, dtype)
            h, wd = g.add(m, g.add(fp.Tanh(), g.add(m, *ins))), w[srcs[0]]
        else:
            h, wd = g.add(RSquare(), *ins), w[srcs[0]]
        handles.append(h)
        w.append(wd)
    read = {i for _, srcs, _ in nodes for i in srcs}
    last = [i for i in range(len(handles)) if i not in read]
    top = handles[last[0]] if len(last) == 1 else g.add(fp.Concat(), *[handles[i] for i in last])
    width = w[last[0]] if len(last) == 1 else sum(w[i] for i in last)
    return g.build(g.add(lin(width, n_out, seed + 999, dtype), top))


LOSSES = {"MSE": lambda rng, b: rng.standard_normal((b, 2)),
          "SoftmaxCrossEntropy": lambda rng, b: rng.integers(0, 2, b),
          "SigmoidBCE": lambda rng, b: rng.random((b, 2)),
          "HuberLoss": lambda rng, b: rng.standard_normal((b, 2))}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dag(kinds=("linear", "act", "prelu", "add", "mul", "concat", "shared", "python",
                         "layernorm")),
       st.sampled_from([F64, F32]), st.integers(1, 4), st.sampled_from(sorted(LOSSES)))
def test_random_dag_tape_equals_the_modular_path(dag, dtype, batch, loss_name):
    width0, nodes, seed = dag
    model = build_dag(width0, nodes, seed, dtype)
    assert curvature._rtape(model) is not None
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, width0)).astype(dtype)
    y = LOSSES[loss_name](rng, batch)
    v = rng.standard_normal(model.num_parameters()).astype(dtype)
    loss = getattr(fp, loss_name)()
    for product in (fp.hvp, fp.gnvp):
        ours = product(model, loss, x, y, v)
        theirs = modular(product, model, loss, x, y, v)
        scale = float(np.abs(theirs).max()) if dtype == F32 else None
        assert_close(ours, theirs, dtype, rtol=1e-10 if dtype == F64 else 2e-5, scale=scale)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dag(), st.integers(1, 4))
def test_random_dag_hvp_against_central_differences(dag, batch):
    """Every kind, LowRankLinear too (on the tape only: it has no modular R-operator)."""
    width0, nodes, seed = dag
    model = build_dag(width0, nodes, seed, F64)
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((batch, width0)), rng.standard_normal((batch, 2))
    v = rng.standard_normal(model.num_parameters())
    loss = fp.MSE()
    hv = fp.hvp(model, loss, x, y, v)
    num = numeric_hvp(model, loss, x, y, v)
    assert np.abs(hv - num).max() <= 1e-5 * max(1.0, np.abs(num).max())


@pytest.mark.parametrize("act", ACTS, ids=lambda a: a.__name__)
@pytest.mark.parametrize("dtype", [F64, F32])
def test_every_activation_on_the_tape_equals_the_modular_path_and_the_hessian(act, dtype):
    model = fp.Sequential(lin(3, 5, 0, dtype), act(), lin(5, 4, 1, dtype), act(), lin(4, 3, 2, dtype))
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((6, 3)).astype(dtype), rng.integers(0, 3, 6)
    v = rng.standard_normal(model.num_parameters()).astype(dtype)
    loss = fp.SoftmaxCrossEntropy()
    hv = fp.hvp(model, loss, x, y, v)
    assert_close(hv, modular(fp.hvp, model, loss, x, y, v), dtype, rtol=1e-10 if dtype == F64 else 1e-5)
    if dtype == F64:   # fastprop.hessian (autodiff's block Hessian, built on its own R passes)
        assert_close(hv, fp.hessian(model, loss, x, y) @ v, dtype, rtol=1e-9)


def layers_model(dtype):
    return fp.Sequential(lin(4, 6, 0, dtype), fp.LayerNorm(6, dtype=dtype), fp.GELU(),
                         fp.Dropout(0.3, rng=5), fp.PReLU(6, 0.2, dtype),
                         fp.BatchNorm1d(6, dtype=dtype), lin(6, 3, 1, dtype))


@pytest.mark.parametrize("dtype", [F64, F32])
def test_layernorm_batchnorm_eval_and_dropout_in_training_mode(dtype):
    """Dropout in training mode draws one mask per R pass from its stream, as the modular
    path does: both give the same product, and leave the stream at the same place."""
    model = layers_model(dtype)
    model.train()
    model.layers[5].eval()   # BatchNorm1d: its running statistics (an affine map)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((9, 4)).astype(dtype), rng.integers(0, 3, 9)
    v = rng.standard_normal(model.num_parameters()).astype(dtype)
    twin = copy.deepcopy(model)
    loss = fp.SoftmaxCrossEntropy()
    for product in (fp.hvp, fp.gnvp):
        ours = product(model, loss, x, y, v)
        theirs = modular(product, twin, loss, x, y, v)
        assert_close(ours, theirs, dtype, rtol=1e-10 if dtype == F64 else 2e-5)
    assert model.layers[3].rng_state() == twin.layers[3].rng_state()


def test_batchnorm_in_training_mode_is_refused_on_the_tape_too():
    model = layers_model(F64)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((9, 4)), rng.integers(0, 3, 9)
    with pytest.raises(TypeError, match="BatchNorm1d"):
        fp.hvp(model, fp.SoftmaxCrossEntropy(), x, y, np.ones(model.num_parameters()))


def test_a_graph_with_several_inputs_chunked_equals_the_whole_batch():
    g = fp.Graph()
    a, b = g.input("a", 3), g.input("b", 2)
    h = g.add(fp.Concat(), g.add(fp.Tanh(), g.add(lin(3, 4, 0), a)), b)
    r = g.add(fp.Residual(fp.Sequential(lin(6, 6, 1), fp.SiLU())), h)
    model = g.build(g.add(lin(6, 2, 2), g.add(fp.Mul(), r, g.add(lin(2, 6, 3), b))))
    rng = np.random.default_rng(1)
    xa, xb, y = rng.standard_normal((11, 3)), rng.standard_normal((11, 2)), rng.standard_normal((11, 2))
    v = rng.standard_normal(model.num_parameters())
    loss = fp.MSE()
    whole = fp.hvp(model, loss, (xa, xb), y, v)
    assert_close(fp.hvp(model, loss, {"a": xa, "b": xb}, y, v, batch_size=4), whole, F64, rtol=1e-12)
    assert_close(whole, modular(fp.hvp, model, loss, (xa, xb), y, v), F64, rtol=1e-12)
    assert_close(whole, numeric_hvp(model, loss, [xa, xb], y, v), F64, rtol=1e-6)


def test_a_weighted_loss_in_chunks_on_the_tape():
    model = fp.Sequential(lin(3, 5, 0), fp.Tanh(), fp.Residual(fp.Sequential(lin(5, 5, 1), fp.ReLU())),
                          lin(5, 3, 2))
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((10, 3)), rng.integers(0, 3, 10)
    v = rng.standard_normal(model.num_parameters())
    loss = fp.SoftmaxCrossEntropy(weight=np.array([1.0, 2.0, 0.5]), label_smoothing=0.1)
    ours = fp.gnvp(model, loss, x, y, v, batch_size=3)
    assert_close(ours, modular(fp.gnvp, model, loss, x, y, v), F64, rtol=1e-12)


def test_residual_hvp_matches_torch():
    torch = pytest.importorskip("torch")
    model = fp.Sequential(lin(4, 6, 0), fp.Tanh(),
                          fp.Residual(fp.Sequential(lin(6, 6, 1), fp.GELU(), lin(6, 6, 2))),
                          fp.LayerNorm(6, dtype=F64), lin(6, 3, 3))
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
    v = rng.standard_normal(model.num_parameters())
    params = model.parameters()
    shapes, sizes = [p.shape for p in params], [p.size for p in params]

    def J(theta):
        P = [t.reshape(s) for t, s in zip(torch.split(theta, sizes), shapes)]
        h = torch.tanh(torch.tensor(x) @ P[0].T + P[1])
        r = torch.nn.functional.gelu(h @ P[2].T + P[3]) @ P[4].T + P[5]
        h = torch.nn.functional.layer_norm(h + r, (6,), P[6], P[7])
        return torch.nn.functional.cross_entropy(h @ P[8].T + P[9], torch.tensor(y))

    theta = torch.tensor(fp.parameters_to_vector(model))
    _, theirs = torch.autograd.functional.hvp(J, theta, torch.tensor(v))
    assert curvature._rtape(model) is not None
    assert_close(fp.hvp(model, fp.SoftmaxCrossEntropy(), x, y, v), theirs.numpy(), F64, rtol=1e-9)


def test_hessian_free_and_the_eigenvalues_run_on_the_tape():
    def make():
        return fp.Sequential(lin(3, 6, 0), fp.Tanh(), fp.Residual(fp.Sequential(lin(6, 6, 1), fp.ReLU())),
                             lin(6, 2, 2))
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((20, 3)), rng.integers(0, 2, 20)
    loss = fp.SoftmaxCrossEntropy()
    a, b = make(), make()
    for model, run in ((a, lambda f: f()), (b, lambda f: modular(f))):
        opt = fp.HessianFree(model.parameters(), max_cg_iter=5)
        step = fp.TrainStep(model, loss, opt)
        for _ in range(3):
            run(lambda: step(x, y))
    for p, q in zip(a.parameters(), b.parameters()):
        assert_close(p.data, q.data, F64, rtol=1e-10)
    top = fp.hessian_eigs(a, loss, x, y, k=1)[0]
    assert abs(top - modular(fp.hessian_eigs, a, loss, x, y, k=1)[0]) <= 1e-8 * abs(top)


def test_the_product_leaves_parameters_grads_and_the_training_tape_alone():
    model = fp.Sequential(lin(3, 5, 0), fp.ReLU(), lin(5, 2, 1))
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((4, 3)), rng.integers(0, 2, 4)
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.SGD(model.parameters(), lr=0.0))
    step(x, y)
    out = step.output.copy()
    before = [(p.data.copy(), p.grad.copy()) for p in model.parameters()]
    fp.hvp(model, fp.SoftmaxCrossEntropy(), x, y, np.ones(model.num_parameters()))
    np.testing.assert_array_equal(step.output, out)
    for p, (d, g) in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, d)
        np.testing.assert_array_equal(p.grad, g)


def test_the_tape_is_rebuilt_when_the_parameters_move():
    model = fp.Sequential(lin(3, 4, 0), fp.Tanh(), lin(4, 2, 1))
    first = curvature._rtape(model)
    assert first is not None and curvature._rtape(model) is first
    fp.nn.flatten_parameters(model.parameters())   # new buffers: the old tape's pointers are stale
    assert curvature._rtape(model) is not first
    rng = np.random.default_rng(7)
    x, y, v = rng.standard_normal((5, 3)), rng.standard_normal((5, 2)), rng.standard_normal(26)
    assert_close(fp.hvp(model, fp.MSE(), x, y, v), modular(fp.hvp, model, fp.MSE(), x, y, v), F64)


def test_an_r_pass_allocates_nothing():
    model = fp.Sequential(lin(16, 32, 0, F32), fp.ReLU(),
                          fp.Residual(fp.Sequential(lin(32, 32, 1, F32), fp.Tanh())), lin(32, 4, 2, F32))
    tape = curvature._rtape(model)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((64, 16)).astype(F32)
    v = rng.standard_normal(model.num_parameters()).astype(F32)
    hv = np.zeros_like(v)
    for _ in range(2):
        tape.rforward((x,), v)
        tape.rbackward(v, hv, True)
    tracemalloc.start()
    for _ in range(20):
        tape.rforward((x,), v)
        tape.rbackward(v, hv, True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4096, peak


def test_the_r_passes_refuse_bad_vectors_and_order():
    model = fp.Sequential(lin(3, 4, 0), fp.Tanh(), lin(4, 2, 1))
    tape = curvature._rtape(model)
    fresh = copy.deepcopy(model)
    x, n = np.zeros((2, 3)), model.num_parameters()
    with pytest.raises(ValueError, match="R-forward"):
        curvature._rtape(fresh).rbackward(np.zeros(n), np.zeros(n))
    for bad in (np.zeros(n - 1), np.zeros(n, F32), np.zeros((n, 1))):
        with pytest.raises(ValueError, match="v must be"):
            tape.rforward((x,), bad)
    tape.rforward((x,), np.zeros(n))
    with pytest.raises(ValueError, match="hv must be"):
        tape.rbackward(np.zeros(n), np.zeros(n)[::-1])
    program = plan.lower(model, fused=False)
    bad_offsets = plan.Offsets(((0, 12), (-1, -1), (n - 2, 24)), n)   # the head's W past the end
    with pytest.raises(ValueError, match="offsets"):
        fp._kernels.Tape(program, plan.plan_grads(program), F64, -1, plan.plan_rvalues(program),
                         bad_offsets)

