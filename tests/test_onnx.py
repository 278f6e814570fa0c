"""export_onnx: every exportable module and random Graph models run in ONNX Runtime and
compared with model(x) (max-norm relative: float32 1e-5, float64 1e-12), at several batch
sizes in one session (the batch dimension is dynamic); the graph passes onnx.checker; bad
input is a clear error and writes nothing."""
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_close

import fastprop as fp

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

F32, F64 = np.float32, np.float64
DTYPES = [F32, F64]
BATCHES = (1, 5, 64)


def session(model, tmp_path, **kw):
    path = tmp_path / "model.onnx"
    fp.export_onnx(model, path, **kw)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check(model, tmp_path, dtype, scale=1.0, seed=0, **kw):
    """ONNX Runtime against model(x) at every batch size of BATCHES, in one session (the
    inputs' widths as the exported graph declares them, 3 where it leaves them open)."""
    s = session(model, tmp_path, **kw)
    rng = np.random.default_rng(seed)
    names = [i.name for i in s.get_inputs()]
    widths = [i.shape[1] if isinstance(i.shape[1], int) else 3 for i in s.get_inputs()]
    for batch in BATCHES:
        xs = [(scale * rng.standard_normal((batch, w))).astype(dtype) for w in widths]
        want = model(*xs)
        want = list(want) if isinstance(want, tuple) else [want]
        got = s.run(None, dict(zip(names, xs)))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.dtype == dtype and g.shape == w.shape
            assert_close(g, w, dtype)
    return s


ACTIVATIONS = [
    fp.Identity(), fp.ReLU(), fp.LeakyReLU(negative_slope=0.1), fp.LeakyReLU(negative_slope=-0.3),
    fp.Abs(), fp.Sigmoid(), fp.Tanh(), fp.Softplus(), fp.Softplus(beta=2.0, threshold=5.0),
    fp.Softplus(beta=-1.5, threshold=3.0), fp.Cos(), fp.GELU(), fp.SiLU(),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: f"{type(a).__name__}{a.params}")
def test_every_activation_in_onnxruntime(act, dtype, tmp_path):
    model = fp.Sequential(fp.Linear(6, 9, dtype=dtype, rng=1), act, fp.Linear(9, 4, dtype=dtype, rng=2))
    check(model, tmp_path, dtype, scale=3.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [fp.Softplus(), fp.Softplus(beta=2.0, threshold=5.0),
                                 fp.Softplus(beta=-0.5, threshold=4.0), fp.GELU(), fp.Tanh(),
                                 fp.Cos()], ids=lambda a: f"{type(a).__name__}{a.params}")
def test_activation_tails_elementwise(act, dtype, tmp_path):
    """Each element to its own magnitude, across the thresholds and far into the tails (the
    Softplus's log1p and float64 GELU's erfc keep the relative accuracy where a naive form
    would round the tail to 0; float32 GELU is ONNX's Erf form, relative above x = −1.5).
    Not Sigmoid and SiLU: ONNX Runtime's Sigmoid is accurate to its magnitude near 1 only."""
    x = np.linspace(-30, 30, 601).astype(dtype).reshape(-1, 1)
    if isinstance(act, fp.GELU):
        x = x[np.abs(x[:, 0]) < 12]   # beyond, x Φ(x) underflows in float32
        if dtype == F32:   # ½ x (1 + Erf): 1 + erf cancels in the negative tail, absolutely small
            x = x[x[:, 0] > -1.5]
    one = fp.Linear(1, 1, dtype=dtype)   # y = x exactly: the model's dtype is dtype
    one.weight.data = np.ones((1, 1))
    model = fp.Sequential(one, type(act)(**act.params))
    y = model(x)
    (got,) = session(model, tmp_path).run(None, {"x": x})
    tol = {F32: 2e-6, F64: 1e-13}[dtype]
    big = np.abs(y) > 1e-30
    rel = np.abs(got[big] - y[big]) / np.abs(y[big])
    assert rel.max() <= tol, (x[big][np.argmax(rel)], rel.max())
    assert np.array_equal(got[~big] == 0, y[~big] == 0)


def arch_cases(dtype):
    d = {"dtype": dtype}
    return {
        "linear": fp.Linear(7, 3, **d),
        "linear_no_bias": fp.Linear(7, 3, bias=False, **d),
        "low_rank": fp.LowRankLinear(8, 6, 2, **d),
        "low_rank_no_bias": fp.LowRankLinear(8, 6, 3, bias=False, **d),
        "prelu_one": fp.Sequential(fp.Linear(4, 5, **d), fp.PReLU(init=-0.4, dtype=dtype)),
        "prelu_per_feature": fp.Sequential(fp.Linear(4, 5, **d),
                                           fp.PReLU(num_parameters=5, dtype=dtype)),
        "nested": fp.Sequential(fp.Linear(5, 8, **d), fp.Sequential(
            fp.GELU(), fp.Sequential(fp.Linear(8, 8, **d), fp.SiLU())), fp.Linear(8, 2, **d)),
        "residual": fp.Sequential(fp.Linear(6, 10, **d), fp.Residual(fp.Sequential(
            fp.Linear(10, 10, **d), fp.ReLU(), fp.Linear(10, 10, **d))), fp.Tanh()),
        "residual_top": fp.Residual(fp.Sequential(fp.Linear(4, 4, **d), fp.Softplus())),
        "empty_sequential_after_linear": fp.Sequential(fp.Linear(3, 3, **d), fp.Sequential()),
        "mlp": fp.Sequential(fp.Linear(64, 128, **d), fp.ReLU(), fp.Linear(128, 128, **d),
                             fp.ReLU(), fp.Linear(128, 10, **d)),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(arch_cases(F32)))
def test_every_architecture_in_onnxruntime(case, dtype, tmp_path):
    model = arch_cases(dtype)[case]
    check(model, tmp_path, dtype)


def test_a_model_without_parameters_is_float32(tmp_path):
    model = fp.Sequential(fp.Tanh(), fp.Softplus())
    s = check(model, tmp_path, F32)
    assert s.get_inputs()[0].type == "tensor(float)"
    assert s.get_inputs()[0].shape == ["batch", "x_features"]


def several_io_graph(dtype):
    """Two inputs, three outputs (one node twice), a shared Linear, Add of three, Mul, Concat,
    a Residual and a built graph as nodes, a LowRankLinear."""
    d = {"dtype": dtype}
    inner = fp.Graph()
    u = inner.input("u", 12)
    v = inner.add(fp.Linear(12, 12, **d), u)
    inner.build(outputs=inner.add(fp.Mul(), u, inner.add(fp.Sigmoid(), v)))
    g = fp.Graph()
    a, c = g.input("a", 4), g.input("c", 3)
    shared = fp.Linear(4, 6, **d)
    h, h2 = g.add(shared, a, name="fc"), g.add(shared, a, name="fc_again")
    s = g.add(fp.Add(), h, h2, h)
    m = g.add(fp.Mul(), s, g.add(fp.Linear(3, 6, **d), c))
    cat = g.add(fp.Concat(), m, g.add(fp.Cos(), s), name="cat")
    r = g.add(fp.Residual(fp.Sequential(fp.Linear(12, 12, **d), fp.PReLU(12, dtype=dtype))), cat)
    gated = g.add(inner, r, name="gate")
    out = g.add(fp.LowRankLinear(12, 2, 3, **d), gated, name="out")
    return g.build(outputs=[gated, out, "out"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_graph_with_several_inputs_and_outputs(dtype, tmp_path):
    model = several_io_graph(dtype)
    s = check(model, tmp_path, dtype)
    assert [i.name for i in s.get_inputs()] == ["a", "c"]
    assert [o.name for o in s.get_outputs()] == ["gate", "out", "out_1"]
    assert [i.shape for i in s.get_inputs()] == [["batch", 4], ["batch", 3]]
    # the shared Linear is one initializer, under its parameter's name
    inits = {t.name for t in onnx.load(str(tmp_path / "model.onnx")).graph.initializer}
    assert {"fc.weight", "fc.bias"} <= inits and not any(n.startswith("fc_again") for n in inits)


def test_graph_input_of_open_width(tmp_path):
    g = fp.Graph()
    x = g.input("x")
    g.build(outputs=g.add(fp.Add(), x, g.add(fp.Tanh(), x), name="sum"))
    s = check(g, tmp_path, F32)
    assert s.get_inputs()[0].shape == ["batch", "x_features"]
    assert s.get_outputs()[0].shape == ["batch", "sum_features"]


def random_graph(rng, dtype):
    """A random DAG: 1–3 inputs, 3–9 nodes of Linear, an activation, PReLU, Add, Mul, Concat;
    every node without a consumer is an output."""
    d = {"dtype": dtype}
    g = fp.Graph()
    nodes, consumed = [], set()
    for k in range(int(rng.integers(1, 4))):
        w = int(rng.integers(1, 6))
        x = g.input(f"in{k}", w)
        width = int(rng.integers(2, 7))
        nodes.append((g.add(fp.Linear(w, width, rng=rng, **d), x), width))
    for _ in range(int(rng.integers(3, 10))):
        kind = rng.choice(["linear", "act", "prelu", "add", "mul", "concat"])
        i = int(rng.integers(len(nodes)))
        node, width = nodes[i]
        same = [j for j, (_, w) in enumerate(nodes) if w == width and j != i]
        if kind in ("add", "mul") and same:
            j = int(rng.choice(same))
            k = [i, j] + ([int(rng.choice(same))] if kind == "add" and rng.random() < 0.5 else [])
            new = g.add(fp.Add() if kind == "add" else fp.Mul(), *[nodes[q][0] for q in k])
            consumed.update(k)
        elif kind == "concat" and len(nodes) > 1:
            j = int(rng.choice([q for q in range(len(nodes)) if q != i]))
            new, width = g.add(fp.Concat(), node, nodes[j][0]), width + nodes[j][1]
            consumed.update((i, j))
        elif kind == "act":
            act = ACTIVATIONS[int(rng.integers(len(ACTIVATIONS)))]
            new = g.add(type(act)(**act.params), node)
            consumed.add(i)
        elif kind == "prelu":
            new = g.add(fp.PReLU(num_parameters=width, init=float(rng.uniform(-1, 1)), **d), node)
            consumed.add(i)
        else:
            out = int(rng.integers(1, 7))
            new, width = g.add(fp.Linear(width, out, rng=rng, **d), node), out
            consumed.add(i)
        nodes.append((new, width))
    outputs = [n for q, (n, _) in enumerate(nodes) if q not in consumed]
    return g.build(outputs=outputs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_graphs_in_onnxruntime(dtype, tmp_path):
    rng = np.random.default_rng(7)
    for trial in range(12):
        model = random_graph(rng, dtype)
        check(model, tmp_path, dtype, seed=trial)


# ---------------------------------------------------------------- options

@pytest.mark.parametrize("opset", [13, 17, 18, None])
def test_opsets(opset, tmp_path):
    model = arch_cases(F32)["nested"]
    s = check(model, tmp_path, F32, opset=opset)
    proto = onnx.load(str(tmp_path / "model.onnx"))
    assert proto.opset_import[0].version == (opset or fp.onnx.DEFAULT_OPSET)
    assert s.get_outputs()[0].shape == ["batch", 2]


def test_fixed_and_named_batch_dim(tmp_path):
    model = fp.Sequential(fp.Linear(3, 2))
    s = session(model, tmp_path, batch_dim="N")
    assert s.get_inputs()[0].shape == ["N", 3]
    s = session(model, tmp_path, batch_dim=4)
    assert s.get_inputs()[0].shape == [4, 3] and s.get_outputs()[0].shape == [4, 2]
    x = np.ones((4, 3), F32)
    assert_close(s.run(None, {"x": x})[0], model(x), F32)


def test_parameters_are_the_initializers_bit_for_bit(tmp_path):
    model = arch_cases(F64)["residual"]
    proto = fp.export_onnx(model, tmp_path / "m.onnx")
    assert onnx.load(str(tmp_path / "m.onnx")) == proto
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for name, p in model.named_parameters():
        assert inits[name].dtype == F64 and inits[name].tobytes() == p.data.tobytes()
    assert proto.producer_name == "fastprop"


@pytest.mark.parametrize("dtype", DTYPES)
def test_with_output_unit(dtype, tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 5)).astype(dtype)
    multi = fp.Sequential(fp.Linear(5, 4, dtype=dtype), fp.Tanh(), fp.Linear(4, 3, dtype=dtype))
    single = fp.Sequential(fp.Linear(5, 1, dtype=dtype))
    for model, unit, want in [
            (multi, True, fp.predict_proba(multi, x)),             # the rule: softmax
            (single, True, fp.predict_proba(single, x)),           # one column: sigmoid
            (multi, fp.SoftmaxCrossEntropy(), fp.predict_proba(multi, x)),
            (multi, fp.SigmoidBCE, 1 / (1 + np.exp(-multi(x).astype(F64)))),
            (multi, "sigmoid", 1 / (1 + np.exp(-multi(x).astype(F64)))),
            (multi, fp.MSE(), multi(x)),
            (multi, False, multi(x))]:
        (got,) = session(model, tmp_path, with_output_unit=unit).run(None, {"x": x})
        assert_close(got, want, dtype)


def test_output_unit_on_every_output_of_a_graph(tmp_path):
    model = several_io_graph(F64)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((6, 4)), rng.standard_normal((6, 3))]
    got = session(model, tmp_path, with_output_unit="softmax").run(None, {"a": xs[0], "c": xs[1]})
    for g, y in zip(got, model(*xs)):
        e = np.exp(y - y.max(axis=1, keepdims=True))
        assert_close(g, e / e.sum(axis=1, keepdims=True), F64)


# ---------------------------------------------------------------- layers from the training toolkit

def needs(name):
    return pytest.mark.skipif(not hasattr(fp, name), reason=f"no fp.{name} in this build")


needs_dropout, needs_layer_norm, needs_batch_norm = needs("Dropout"), needs("LayerNorm"), needs("BatchNorm1d")


@needs_dropout
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_is_the_identity(dtype, tmp_path):
    model = fp.Sequential(fp.Linear(5, 8, dtype=dtype), fp.Dropout(p=0.5), fp.Linear(8, 2, dtype=dtype))
    model.train()
    proto = fp.export_onnx(model, None)
    assert "Dropout" not in {n.op_type for n in proto.graph.node}
    model.eval()
    check(model, tmp_path, dtype)


@needs_layer_norm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine, bias", [(True, True), (True, False), (False, True)])
def test_layer_norm(dtype, affine, bias, tmp_path):
    ln = fp.LayerNorm(8, eps=1e-3, elementwise_affine=affine, bias=bias, dtype=dtype)
    rng = np.random.default_rng(1)
    if affine:
        ln.weight.data = rng.standard_normal(8)
        if bias:
            ln.bias.data = rng.standard_normal(8)
    model = fp.Sequential(fp.Linear(5, 8, dtype=dtype), ln, fp.ReLU(), fp.Linear(8, 3, dtype=dtype))
    check(model, tmp_path, dtype, scale=4.0)
    ops = {n.op_type for n in fp.export_onnx(model, None).graph.node}
    assert ("LayerNormalization" in ops) == (dtype == F32)   # float64: written out
    check(model, tmp_path, dtype, scale=4.0, opset=13)       # before LayerNormalization


@needs_batch_norm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_eval_uses_running_statistics(dtype, affine, tmp_path):
    bn = fp.BatchNorm1d(8, eps=1e-3, affine=affine, dtype=dtype)
    model = fp.Sequential(fp.Linear(5, 8, dtype=dtype), bn, fp.Tanh(), fp.Linear(8, 3, dtype=dtype))
    rng = np.random.default_rng(2)
    model.train()
    for _ in range(3):   # the running statistics move away from 0 and 1
        model(3 * rng.standard_normal((16, 5)) + 1)
    if affine:
        bn.weight.data = rng.standard_normal(8)
        bn.bias.data = rng.standard_normal(8)
    model.eval()
    assert not np.allclose(np.asarray(getattr(bn.running_mean, "data", bn.running_mean)), 0)
    check(model, tmp_path, dtype)
    ops = {n.op_type for n in fp.export_onnx(model, None).graph.node}
    assert ("BatchNormalization" in ops) == (dtype == F32)   # float64: written out


@needs_batch_norm
@pytest.mark.parametrize("opset", [17, 18])
def test_batch_norm_without_running_statistics_uses_the_batch(opset, tmp_path):
    model = fp.Sequential(fp.Linear(5, 8, dtype=F64),
                          fp.BatchNorm1d(8, track_running_stats=False, dtype=F64))
    model.eval()
    s = session(model, tmp_path, opset=opset)
    x = np.random.default_rng(0).standard_normal((10, 5))
    assert_close(s.run(None, {"x": x})[0], model(x), F64)


# ---------------------------------------------------------------- bad input

class Doubler(fp.Module):
    """A user's own Python module: no ONNX form."""

    def _forward(self, x):
        self._y = 2 * x
        return self._y


def test_a_python_module_is_a_type_error_naming_it(tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(TypeError, match="Doubler at '1'"):
        fp.export_onnx(fp.Sequential(fp.Linear(3, 3), Doubler()), path)
    with pytest.raises(TypeError, match=r"Doubler at '2\.0'"):
        fp.export_onnx(fp.Sequential(fp.Linear(3, 3), fp.ReLU(), fp.Sequential(Doubler())), path)
    g = fp.Graph()
    x = g.input("x", 3)
    g.build(outputs=g.add(Doubler(), g.add(fp.Linear(3, 3), x), name="double"))
    with pytest.raises(TypeError, match="Doubler at 'double'"):
        fp.export_onnx(g, path)
    assert not path.exists()


def test_a_graph_node_with_two_outputs_is_a_type_error(tmp_path):
    inner = fp.Graph()
    u = inner.input("u", 3)
    inner.build(outputs=[inner.add(fp.Tanh(), u), inner.add(fp.ReLU(), u)])
    with pytest.raises(TypeError, match="one input and one output"):
        fp.export_onnx(fp.Sequential(fp.Linear(3, 3), inner), tmp_path / "m.onnx")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"opset": 12}, ValueError, "opset"), ({"opset": 10_000}, ValueError, "opset"),
    ({"opset": "17"}, TypeError, "opset"), ({"batch_dim": ""}, TypeError, "batch_dim"),
    ({"batch_dim": 0}, TypeError, "batch_dim"), ({"batch_dim": 2.5}, TypeError, "batch_dim"),
    ({"with_output_unit": "relu"}, ValueError, "with_output_unit"),
])
def test_bad_arguments_write_nothing(kwargs, error, match, tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(error, match=match):
        fp.export_onnx(fp.Sequential(fp.Linear(3, 2)), path, **kwargs)
    assert not path.exists()


def test_bad_model_and_path(tmp_path):
    with pytest.raises(TypeError, match="fastprop Module"):
        fp.export_onnx(object(), tmp_path / "m.onnx")
    g = fp.Graph()
    g.input("x", 2)
    with pytest.raises(ValueError, match="unbuilt"):
        fp.export_onnx(g, tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="path"):
        fp.export_onnx(fp.Linear(2, 2), 3)


def test_import_fastprop_imports_neither_onnx_nor_torch():
    code = ("import sys, fastprop; bad = [m for m in ('onnx', 'onnxruntime', 'torch') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
