"""Computation graphs (fastprop.Graph, Add, Concat, Mul, Residual): back-propagation against
float64 central differences and the NumPy graph evaluator of fastprop.reference, a random-DAG
property test, the cost in kernel calls, the build-time errors, and the model API
(TrainStep, optimizers, fit, save/load, gradcheck, copies)."""
import copy
import pickle

import numpy as np
import pytest
from conftest import assert_close, central_diff
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastprop as fp
from fastprop import ops
from fastprop import reference as ref

F32, F64 = np.float32, np.float64


def lin(a, b, seed, dtype=F64, bias=True):
    return fp.Linear(a, b, dtype=dtype, rng=seed, bias=bias, bias_init=0.1)


def residual_mlp(blocks=2, width=8, n_in=5, n_out=3, dtype=F64, act=fp.Tanh):
    """x → Linear → act, then `blocks` times h ← h + act(Linear(h)), then Linear."""
    g = fp.Graph()
    x = g.input("x", n_in)
    h = g.add(act(), g.add(lin(n_in, width, 0, dtype), x, name="stem"), name="stem_act")
    for k in range(blocks):
        r = g.add(lin(width, width, k + 1, dtype), h, name=f"fc{k}")
        r = g.add(act(), r, name=f"act{k}")
        h = g.add(fp.Add(), h, r, name=f"skip{k}")
    g.add(lin(width, n_out, 99, dtype), h, name="head")
    return g.build(outputs="head")


def reference_nodes(model):
    """The graph as fastprop.reference.graph_forward's node list (shared modules share a key)."""
    nodes, keys = [], {}
    for s in model._steps:
        if s.kind == "input":
            continue
        inputs = [model._steps[j].name for j in s.inputs]
        m = s.module
        node = {"name": s.name, "inputs": inputs}
        if isinstance(m, fp.Linear):
            key = keys.setdefault(id(m.weight), s.name)
            node.update(op="linear", weight=m.weight.data.copy(),
                        bias=None if m.bias is None else m.bias.data.copy(), key=key)
        elif isinstance(m, fp.Add):
            node["op"] = "add"
        elif isinstance(m, fp.Concat):
            node["op"] = "concat"
        elif isinstance(m, fp.Mul):
            node["op"] = "mul"
        else:
            node.update(op=m.name, params=dict(m.params))
        nodes.append(node)
    return nodes


def check_against_reference(model, xs, rng, dtype=F64):
    """Outputs, input gradients and parameter gradients equal the reference evaluator's."""
    xs = [np.asarray(x, dtype) for x in xs]
    outs = model(*xs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gys = [rng.standard_normal(o.shape).astype(dtype) for o in outs]
    model.zero_grad()
    gxs = model.backward(*gys)
    gxs = gxs if isinstance(gxs, tuple) else (gxs,)
    # the reference in float64 on the same numbers (the float64-accurate oracle RTOL assumes)
    nodes = reference_nodes(model)
    for node in nodes:
        for k in ("weight", "bias"):
            if node.get(k) is not None:
                node[k] = node[k].astype(F64)
    values = ref.graph_forward(nodes, {n: x.astype(F64) for n, x in zip(model.input_names, xs)})
    table, pgrads = ref.graph_backward(
        nodes, values, {n: g.astype(F64) for n, g in zip(model.output_names, gys)})
    for name, o in zip(model.output_names, outs):
        assert_close(o, values[name], dtype)
    # an input's gradient sums its paths, which can cancel far below the terms summed: float32
    # rounding is relative to the largest gradient in the grad table, not to that sum
    scale = max(np.abs(g).max() for g in table.values() if g.size) if dtype == F32 else None
    for name, gx in zip(model.input_names, gxs):
        assert_close(gx, table[name], dtype, scale=scale)
    for key, (gw, gb) in pgrads.items():
        m = model[key]
        assert_close(m.weight.grad, gw, dtype)
        if gb is not None:
            assert_close(m.bias.grad, gb, dtype)
    return outs, gys


def check_central_differences(model, xs, rng, tol=1e-6):
    """J = Σ_k <gy_k, y_k>: every ∂J/∂θ and ∂J/∂x_i against central differences, float64."""
    xs = [np.asarray(x, F64) for x in xs]
    outs = model(*xs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gys = [rng.standard_normal(o.shape) for o in outs]

    def J(*args):
        o = model(*args)
        o = o if isinstance(o, tuple) else (o,)
        return sum(float(np.sum(a * b)) for a, b in zip(o, gys))

    model.zero_grad()
    gxs = model.backward(*gys)
    gxs = gxs if isinstance(gxs, tuple) else (gxs,)
    for i in range(len(xs)):
        num = central_diff(lambda v: J(*(xs[:i] + [v] + xs[i + 1:])), xs[i])
        assert_close(gxs[i], num, rtol=tol)
    (data, grad), = fp.nn.flat_runs(model.parameters())
    analytic = grad.copy()

    def J_of_params(theta):
        data[...] = theta
        return J(*xs)

    theta0 = data.copy()
    num = central_diff(J_of_params, theta0)
    data[...] = theta0
    assert_close(analytic, num, rtol=tol)


# ---------------------------------------------------------------- the three networks of the issue

def test_residual_mlp_central_differences_and_reference(rng):
    model = residual_mlp(blocks=3)
    x = rng.standard_normal((6, 5))
    check_central_differences(model, [x], rng)
    check_against_reference(model, [x], rng)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_residual_mlp_reference_both_dtypes(dtype, rng):
    model = residual_mlp(blocks=4, width=16, dtype=dtype, act=fp.ReLU)
    check_against_reference(model, [rng.standard_normal((7, 5))], rng, dtype)


def two_input_network(dtype=F64):
    """x1 (4) and x2 (3): a = tanh(L x1), b = sigmoid(L x2), y = L([a, b, a ⊙ c]) with c = L x2."""
    g = fp.Graph()
    x1, x2 = g.input("x1", 4), g.input("x2", 3)
    a = g.add(fp.Tanh(), g.add(lin(4, 6, 0, dtype), x1))
    b = g.add(fp.Sigmoid(), g.add(lin(3, 5, 1, dtype), x2))
    c = g.add(lin(3, 6, 2, dtype), x2)
    gate = g.add(fp.Mul(), a, c, name="gate")
    cat = g.add(fp.Concat(), a, b, gate, name="cat")
    y = g.add(lin(17, 2, 3, dtype), cat, name="y")
    return g.build(outputs=y)


def test_two_input_network(rng):
    model = two_input_network()
    x1, x2 = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    check_central_differences(model, [x1, x2], rng)
    check_against_reference(model, [x1, x2], rng)
    # a dict of named inputs is the same call
    assert np.array_equal(model({"x2": x2, "x1": x1}), model(x1, x2))


def shared_layer_network(dtype=F64):
    """One Linear at two places: y = L(tanh(L x)) + L x (shared weights, one .grad)."""
    shared = lin(5, 5, 0, dtype)
    g = fp.Graph()
    x = g.input("x", 5)
    a = g.add(shared, x, name="first")
    b = g.add(shared, g.add(fp.Tanh(), a), name="second")
    y = g.add(fp.Add(), a, b, name="y")
    return g.build(outputs=y), shared


def test_shared_layer_network(rng):
    model, shared = shared_layer_network()
    assert model.parameters() == shared.parameters()   # the weights appear once
    assert [n for n, _ in model.named_parameters()] == ["first.weight", "first.bias"]
    x = rng.standard_normal((4, 5))
    check_central_differences(model, [x], rng)
    check_against_reference(model, [x], rng)


def test_shared_layer_gradient_is_the_sum_of_both_places(rng):
    model, shared = shared_layer_network()
    x = rng.standard_normal((4, 5))
    out = model(x)
    gy = rng.standard_normal(out.shape)
    model.zero_grad()
    model.backward(gy)
    # by hand: a = W x + b, t = tanh(a), y = a + W t + b
    W, bias = shared.weight.data, shared.bias.data
    a = x @ W.T + bias
    t = np.tanh(a)
    g_a = gy + (gy @ W) * (1 - t * t)
    expected = gy.T @ t + g_a.T @ x
    assert_close(shared.weight.grad, expected, F64)
    assert_close(shared.bias.grad, gy.sum(0) + g_a.sum(0), F64)


def test_the_same_input_twice(rng):
    """Add(h, h), Mul(h, h) and Concat(h, h): both slots land in h's one buffer."""
    g = fp.Graph()
    x = g.input("x", 3)
    h = g.add(lin(3, 4, 0), x)
    s = g.add(fp.Add(), h, h)
    m = g.add(fp.Mul(), h, h)
    c = g.add(fp.Concat(), h, h)
    y = g.add(fp.Concat(), s, m, c)
    model = g.build(outputs=y)
    x = rng.standard_normal((3, 3))
    check_central_differences(model, [x], rng)
    check_against_reference(model, [x], rng)


def test_several_outputs(rng):
    g = fp.Graph()
    x = g.input("x", 4)
    h = g.add(fp.Tanh(), g.add(lin(4, 6, 0), x), name="h")
    y1 = g.add(lin(6, 2, 1), h, name="y1")
    model = g.build(outputs=[y1, h])   # an output that other nodes also consume
    x = rng.standard_normal((5, 4))
    outs = model(x)
    assert isinstance(outs, tuple) and [o.shape for o in outs] == [(5, 2), (5, 6)]
    check_central_differences(model, [x], rng)
    check_against_reference(model, [x], rng)
    with pytest.raises(ValueError, match="one gradient per output"):
        model.backward(np.ones((5, 2)))


def test_output_that_is_an_input(rng):
    g = fp.Graph()
    x = g.input("x", 3)
    y = g.add(lin(3, 2, 0), x)
    model = g.build(outputs=[y, x])
    x = rng.standard_normal((2, 3))
    check_central_differences(model, [x], rng)


def test_forward_references_by_name(rng):
    """Inputs may name nodes added later: build sorts topologically."""
    g = fp.Graph()
    g.add(lin(4, 2, 1), "h", name="y")
    g.add(fp.Tanh(), "a", name="h")
    x = g.input("x", 3)
    g.add(lin(3, 4, 0), x, name="a")
    model = g.build(outputs="y")
    assert [s.name for s in model._steps] == ["x", "a", "h", "y"]
    x = rng.standard_normal((2, 3))
    expected = np.tanh(x @ model["a"].weight.data.T + model["a"].bias.data) @ \
        model["y"].weight.data.T + model["y"].bias.data
    assert_close(model(x), expected, F64)


# ---------------------------------------------------------------- random DAGs

ACT_CHOICES = [fp.ReLU, fp.Tanh, fp.Sigmoid, fp.GELU, fp.Identity]


@st.composite
def random_dag(draw):
    """A random DAG of Linear / activation / Add / Concat nodes over one or two inputs."""
    n_inputs = draw(st.integers(1, 2))
    widths = [draw(st.integers(1, 5)) for _ in range(n_inputs)]
    n_nodes = draw(st.integers(1, 9))
    ops_ = []   # (kind, input indices, extra)
    w = list(widths)
    for _ in range(n_nodes):
        kind = draw(st.sampled_from(["linear", "act", "add", "concat"]))
        k = len(w)
        if kind == "linear":
            src = draw(st.integers(0, k - 1))
            ops_.append(("linear", [src], draw(st.integers(1, 5))))
            w.append(ops_[-1][2])
        elif kind == "act":
            src = draw(st.integers(0, k - 1))
            ops_.append(("act", [src], draw(st.integers(0, len(ACT_CHOICES) - 1))))
            w.append(w[src])
        elif kind == "add":
            src = draw(st.integers(0, k - 1))
            same = [i for i in range(k) if w[i] == w[src]]
            others = draw(st.lists(st.sampled_from(same), min_size=1, max_size=3))
            ops_.append(("add", [src] + others, None))
            w.append(w[src])
        else:
            srcs = draw(st.lists(st.integers(0, k - 1), min_size=2, max_size=3))
            ops_.append(("concat", srcs, None))
            w.append(sum(w[i] for i in srcs))
    return widths, ops_, draw(st.integers(0, 2 ** 16))


def build_dag(widths, ops_, seed, dtype):
    """The drawn DAG as a Graph; every node that nothing consumes is an output."""
    g = fp.Graph()
    handles = [g.input(f"x{i}", wd) for i, wd in enumerate(widths)]
    w = list(widths)
    for n, (kind, srcs, extra) in enumerate(ops_):
        ins = [handles[i] for i in srcs]
        if kind == "linear":
            m = fp.Linear(w[srcs[0]], extra, dtype=dtype, rng=seed + n, bias_init=0.1)
            w.append(extra)
        elif kind == "act":
            m = ACT_CHOICES[extra]()
            w.append(w[srcs[0]])
        elif kind == "add":
            m = fp.Add()
            w.append(w[srcs[0]])
        else:
            m = fp.Concat()
            w.append(sum(w[i] for i in srcs))
        handles.append(g.add(m, *ins))
    used = {i for _, srcs, _ in ops_ for i in srcs}
    outputs = [h for i, h in enumerate(handles) if i not in used]
    return g.build(outputs=outputs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dag(), st.sampled_from([F64, F32]), st.integers(1, 4))
def test_random_dag_matches_the_numpy_evaluator(dag, dtype, batch):
    widths, ops_, seed = dag
    model = build_dag(widths, ops_, seed, dtype)
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((batch, wd)) for wd in widths]
    check_against_reference(model, xs, rng, dtype)


# ---------------------------------------------------------------- the cost: O(edges) kernel calls

COUNTED = ("dense_forward", "dense_backward", "activation_forward", "activation_backward",
           "add_forward", "add_backward", "mul_forward", "mul_backward", "concat_forward",
           "concat_backward", "gemm")


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls of every fastprop.ops kernel the modules make."""
    counts = dict.fromkeys(COUNTED, 0)
    for name in COUNTED:
        real = getattr(ops, name)

        def counted(*a, _real=real, _name=name, **kw):
            counts[_name] += 1
            return _real(*a, **kw)
        monkeypatch.setattr(ops, name, counted)
    return counts


@pytest.mark.parametrize("blocks", [1, 4, 16])
def test_kernel_calls_are_linear_in_the_edges(blocks, kernel_calls, rng):
    """A residual MLP of B blocks: per forward + backward, one kernel per node on each pass and
    one grad-table accumulation per extra consumer; nothing grows faster than the graph."""
    model = residual_mlp(blocks=blocks, dtype=F32, act=fp.ReLU)
    x = rng.standard_normal((4, 5)).astype(F32)
    out = model(x)
    counts_fwd = dict(kernel_calls)
    model.backward(np.ones_like(out))
    n_linear, n_act, n_add = blocks + 2, blocks + 1, blocks
    assert counts_fwd["dense_forward"] == n_linear
    assert counts_fwd["activation_forward"] == n_act
    assert counts_fwd["add_forward"] == n_add
    assert kernel_calls["dense_backward"] == n_linear
    assert kernel_calls["activation_backward"] == n_act
    # each Add hands g itself to its residual branch and copies it once into h's buffer; h's
    # other consumer (the block's Linear) adds its ∇x into that buffer: 2 passes per block
    assert kernel_calls["add_backward"] == 2 * blocks
    assert kernel_calls["gemm"] == 0 and kernel_calls["concat_forward"] == 0


def test_backward_allocates_nothing_after_the_first_batch(rng):
    import tracemalloc
    model = residual_mlp(blocks=4, width=64, dtype=F32, act=fp.ReLU)
    x = rng.standard_normal((32, 5)).astype(F32)
    g = np.ones((32, 3), F32)
    for _ in range(2):
        model._forward(x)
        model._backward(g.copy(), False)
    gc = g.copy()
    tracemalloc.start()
    model._forward(x)
    model._backward(gc, False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32 * 64 * 4  # not one activation-sized array


# ---------------------------------------------------------------- bad graphs

def test_cycle_is_named():
    g = fp.Graph()
    x = g.input("x", 3)
    g.add(fp.Add(), x, "c", name="a")
    g.add(fp.Tanh(), "a", name="b")
    g.add(fp.Tanh(), "b", name="c")
    g.add(lin(3, 2, 0), "c", name="y")
    with pytest.raises(ValueError, match="cycle") as e:
        g.build(outputs="y")
    assert "'a'" in str(e.value) and "'b'" in str(e.value) and "'c'" in str(e.value)


def test_shape_mismatch_names_both_nodes():
    g = fp.Graph()
    x = g.input("x", 3)
    h = g.add(lin(3, 4, 0), x, name="h")
    g.add(lin(5, 2, 1), h, name="y")
    with pytest.raises(ValueError, match="'y'.*5 features.*'h' gives 4"):
        g.build(outputs="y")


def test_add_of_different_widths_names_the_inputs():
    g = fp.Graph()
    x = g.input("x", 3)
    a = g.add(lin(3, 4, 0), x, name="a")
    b = g.add(lin(3, 5, 1), x, name="b")
    g.add(fp.Add(), a, b, name="s")
    with pytest.raises(ValueError, match="'s'.*'a' gives 4.*'b' gives 5"):
        g.build(outputs="s")
    g2 = fp.Graph()
    x = g2.input("x", 3)
    g2.add(fp.Mul(), g2.add(lin(3, 4, 0), x, name="p"), x, name="m")
    with pytest.raises(ValueError, match="'m'"):
        g2.build(outputs="m")


def test_unused_input_is_named():
    g = fp.Graph()
    x = g.input("x", 3)
    g.input("extra", 2)
    y = g.add(lin(3, 2, 0), x)
    with pytest.raises(ValueError, match="'extra'.*never used"):
        g.build(outputs=y)


def test_dangling_nodes_are_named():
    g = fp.Graph()
    x = g.input("x", 3)
    h = g.add(lin(3, 4, 0), x, name="h")
    g.add(fp.Tanh(), h, name="lost")
    y = g.add(lin(4, 2, 1), h, name="y")
    with pytest.raises(ValueError, match="'lost'.*dangling"):
        g.build(outputs=y)


@pytest.mark.parametrize("make, match", [
    (lambda g, x: g.add(fp.Mul(), x, name="m"), "'m'.*2 inputs"),
    (lambda g, x: g.add(fp.Add(), x, name="m"), "'m'.*at least 2"),
    (lambda g, x: g.add(fp.Tanh(), x, x, name="m"), "'m'.*one input"),
    (lambda g, x: g.add(fp.Tanh(), "nowhere", name="m"), "'m' takes 'nowhere'"),
], ids=["mul-of-one", "add-of-one", "module-of-two", "unknown-name"])
def test_wrong_inputs_are_named(make, match):
    g = fp.Graph()
    make(g, g.input("x", 3))
    with pytest.raises(ValueError, match=match):
        g.build(outputs="m")


def test_construction_errors():
    g = fp.Graph()
    x = g.input("x", 3)
    with pytest.raises(ValueError, match="already has a node named 'x'"):
        g.input("x", 3)
    with pytest.raises(ValueError, match="without '.'"):
        g.add(fp.Tanh(), x, name="a.b")
    with pytest.raises(TypeError):
        g.add("relu", x)
    with pytest.raises(ValueError, match="width"):
        g.input("z", 0)
    other = fp.Graph()
    with pytest.raises(ValueError, match="another graph"):
        other.add(fp.Tanh(), x)
    g.build(outputs=g.add(lin(3, 2, 0), x))
    with pytest.raises(RuntimeError, match="built"):
        g.add(fp.Tanh(), x)
    with pytest.raises(TypeError, match="graph node"):
        fp.Add()(np.ones((2, 2)))


def test_partly_shared_modules_are_refused():
    inner = lin(3, 3, 0)
    g = fp.Graph()
    x = g.input("x", 3)
    a = g.add(inner, x, name="a")
    b = g.add(fp.Sequential(inner, fp.Tanh()), a, name="b")
    with pytest.raises(ValueError, match="'a' and 'b'"):
        g.build(outputs=b)


def test_bad_calls_raise_and_change_nothing(rng):
    model = two_input_network()
    x1, x2 = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    out = model(x1, x2)
    model.zero_grad()
    model.backward(np.ones_like(out))
    snap = [(p.data.copy(), p.grad.copy()) for p in model.parameters()]
    for bad in [(x1,), (x1, x2[:4]), (x1, rng.standard_normal((5, 4))), ({"x1": x1},),
                (x1, x2.astype(np.int64))]:
        with pytest.raises((ValueError, TypeError)):
            model(*bad)
    with pytest.raises(ValueError, match="shape"):
        model.backward(np.ones((5, 3)))
    for p, (d, g) in zip(model.parameters(), snap):
        assert np.array_equal(p.data, d) and np.array_equal(p.grad, g)


def test_backward_before_forward_raises():
    with pytest.raises(RuntimeError):
        residual_mlp().backward(np.ones((2, 3)))


# ---------------------------------------------------------------- Residual

def test_residual_in_a_sequential(rng):
    model = fp.Sequential(lin(5, 6, 0), fp.Tanh(),
                          fp.Residual(fp.Sequential(lin(6, 6, 1), fp.Tanh(), lin(6, 6, 2))),
                          fp.Residual(fp.Tanh()), lin(6, 2, 3))
    assert [n for n, _ in model.named_parameters()][2:4] == ["2.module.0.weight", "2.module.0.bias"]
    x = rng.standard_normal((4, 5))
    check_central_differences(model, [x], rng)
    # y = x + f(x) exactly
    block = model[2]
    h = rng.standard_normal((3, 6))
    assert_close(block(h), h + block.module(h), F64)


def test_residual_rejects_a_width_changing_module():
    with pytest.raises(ValueError, match="width"):
        fp.Residual(fp.Linear(4, 5))
    with pytest.raises(ValueError):
        fp.Sequential(fp.Linear(3, 4), fp.Residual(fp.Linear(5, 5)))


# ---------------------------------------------------------------- the model API

def test_one_flat_buffer_and_copies(rng):
    model, shared = shared_layer_network()
    (data, grad), = fp.nn.flat_runs(model.parameters())
    assert data.size == model.num_parameters() == 30
    x = rng.standard_normal((3, 5))
    expected = model(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert len(clone.parameters()) == 2          # still shared in the copy
        twin = clone._steps[-2].module               # the second place of the shared Linear
        assert twin.weight is clone["first"].weight
        assert_close(clone(x), expected, F64)
        clone["first"].weight.data[...] = 0          # independent of the original
        assert_close(model(x), expected, F64)
        assert fp.nn.flat_runs(clone.parameters())[0][0].size == 30


def test_trainstep_and_optimizers_on_a_graph(rng):
    """TrainStep (modular path) gives the parameters of zero_grad/forward/backward/step."""
    for make_opt in (lambda p: fp.SGD(p, lr=0.1, momentum=0.9), lambda p: fp.Adam(p, lr=0.01)):
        a, b = residual_mlp(dtype=F32), residual_mlp(dtype=F32)
        loss_a, loss_b = fp.SoftmaxCrossEntropy(), fp.SoftmaxCrossEntropy()
        opt_a, opt_b = make_opt(a.parameters()), make_opt(b.parameters())
        step = fp.TrainStep(a, loss_a, opt_a)
        assert not step.fused
        for _ in range(4):
            x = rng.standard_normal((8, 5)).astype(F32)
            y = rng.integers(0, 3, 8)
            Ja = step(x, y)
            Jb = loss_b(b(x), y)
            opt_b.zero_grad()
            b.backward(loss_b.backward())
            opt_b.step()
            assert Ja == pytest.approx(Jb, rel=1e-6)
        for p, q in zip(a.parameters(), b.parameters()):
            assert np.array_equal(p.data, q.data)


def test_trainstep_two_inputs(rng):
    model = two_input_network(F32)
    opt = fp.SGD(model.parameters(), lr=0.05)
    step = fp.TrainStep(model, fp.MSE(), opt)
    x1, x2 = rng.standard_normal((16, 4)), rng.standard_normal((16, 3))
    y = rng.standard_normal((16, 2))
    first = step((x1, x2), y)
    for _ in range(50):
        last = step({"x1": x1, "x2": x2}, y)
    assert last < first
    assert fp.gradcheck(model, fp.MSE(), (x1[:4], x2[:4]), y[:4]) < 1e-5


def test_fit_and_evaluate_a_residual_graph():
    X, y = fp.datasets.load_digits()
    Xt, Xv, yt, yv = fp.datasets.train_test_split(X, y, test_size=0.25, seed=0)
    g = fp.Graph()
    x = g.input("x", 64)
    h = g.add(fp.ReLU(), g.add(fp.Linear(64, 64, rng=0), x))
    for k in range(3):
        r = g.add(fp.ReLU(), g.add(fp.Linear(64, 64, rng=k + 1), h))
        h = g.add(fp.Add(), h, r)
    model = g.build(outputs=g.add(fp.Linear(64, 10, rng=9), h))
    loss = fp.SoftmaxCrossEntropy()
    hist = fp.fit(model, Xt, yt, loss=loss,
                  optimizer=fp.SGD(model.parameters(), lr=0.05, momentum=0.9),
                  epochs=10, batch_size=32, progress=False, validation_data=(Xv, yv))
    assert hist["loss"][-1] < 0.05 < hist["loss"][0]
    assert hist["val_accuracy"][-1] > 0.9
    assert fp.evaluate(model, Xv, yv, loss)["accuracy"] == hist["val_accuracy"][-1]


def test_gradcheck_on_graphs(rng):
    for model in (residual_mlp(dtype=F32), shared_layer_network(F32)[0]):
        x = rng.standard_normal((4, 5))
        y = rng.integers(0, model.out_features, 4)
        loss = fp.SoftmaxCrossEntropy()
        assert fp.gradcheck(model, loss, x, y) < 1e-5


def test_save_load_round_trip(tmp_path, rng):
    for model in (residual_mlp(dtype=F32), shared_layer_network(F32)[0], two_input_network(F32),
                  fp.Sequential(fp.Linear(5, 6), fp.Residual(fp.Sequential(fp.Linear(6, 6), fp.ReLU())),
                                fp.Residual(fp.Tanh()))):
        fp.save(model, tmp_path / "g.npz")
        back = fp.load(tmp_path / "g.npz")
        assert type(back) is type(model)
        assert [n for n, _ in back.named_parameters()] == [n for n, _ in model.named_parameters()]
        for (_, p), (_, q) in zip(model.named_parameters(), back.named_parameters()):
            assert p.data.tobytes() == q.data.tobytes()
        xs = [rng.standard_normal((3, w)) for w in
              ([s.width for s in model._steps if s.kind == "input"] if isinstance(model, fp.Graph)
               else [5])]
        assert np.array_equal(back(*xs), model(*xs))
    shared = fp.load(tmp_path / "g.npz")  # the last: nothing shared; check the shared one again
    model = shared_layer_network(F32)[0]
    fp.save(model, tmp_path / "s.npz")
    back = fp.load(tmp_path / "s.npz")
    assert len(back.parameters()) == 2 and back._steps[-2].module.weight is back["first"].weight


def test_graphs_as_nodes_and_a_shared_residual(rng):
    """A Residual (itself a Graph) at two nodes: one set of weights, two sets of workspaces."""
    block = fp.Residual(fp.Sequential(lin(4, 4, 0), fp.Tanh()))
    g = fp.Graph()
    x = g.input("x", 4)
    a = g.add(block, x, name="a")
    b = g.add(block, g.add(fp.Sigmoid(), a), name="b")
    y = g.add(fp.Concat(), a, b)
    model = g.build(outputs=y)
    assert len(model.parameters()) == 2
    assert model._steps[-2].module is not block and model._steps[-2].module.module.parameters() == \
        block.parameters()
    x = rng.standard_normal((3, 4))
    check_central_differences(model, [x], rng)
    inner = block.module
    s = 1 / (1 + np.exp(-(x + inner(x))))
    assert_close(model(x), np.concatenate([x + inner(x), s + inner(s)], axis=1), F64)


def test_residual_mlp_vs_torch(rng):
    torch = pytest.importorskip("torch")
    model = residual_mlp(blocks=3)
    x = rng.standard_normal((6, 5))
    gy = rng.standard_normal((6, 3))
    model.zero_grad()
    model(x)
    gx = model.backward(gy)
    P = {name: torch.tensor(p.data.copy(), requires_grad=True) for name, p in model.named_parameters()}
    xt = torch.tensor(x, requires_grad=True)

    def layer(name, h):
        return h @ P[name + ".weight"].T + P[name + ".bias"]
    h = torch.tanh(layer("stem", xt))
    for k in range(3):
        h = h + torch.tanh(layer(f"fc{k}", h))
    (layer("head", h) * torch.tensor(gy)).sum().backward()
    assert_close(gx, xt.grad.numpy(), rtol=1e-12)
    for name, p in model.named_parameters():
        assert_close(p.grad, P[name].grad.numpy(), rtol=1e-12)


def test_load_refuses_damaged_graph_descriptions(tmp_path):
    import json
    model = residual_mlp(blocks=1, dtype=F32)
    fp.save(model, tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz") as f:
        arch = json.loads(str(f["__architecture__"]))
        params = {k: f[k] for k in f.files if k.startswith("param:")}

    def damaged(edit):
        a = json.loads(json.dumps(arch))
        edit(a["model"])
        path = tmp_path / "bad.npz"
        np.savez(path, __architecture__=np.array(json.dumps(a)), **params)
        return path

    edits = {
        "module index": lambda m: m["nodes"][0].update(module=99),
        "cycle": lambda m: m["nodes"][0].update(inputs=["head"]),
        "unknown output": lambda m: m.update(outputs=["nowhere"]),
        "nodes not a list": lambda m: m.update(nodes={}),
        "wrong shape": lambda m: m["modules"][0]["args"].update(out_features=9),
    }
    for what, edit in edits.items():
        with pytest.raises(ValueError, match="not a readable fastprop model"):
            fp.load(damaged(edit))
    assert isinstance(fp.load(damaged(lambda m: None)), fp.Graph)
