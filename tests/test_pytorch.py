"""from_torch / to_torch / load_torch_state_dict: torch models in and out with the same
parameters and buffers bit for bit, the same outputs and gradients to rounding; clear errors
for what has no counterpart, with nothing changed."""
import numpy as np
import pytest
from conftest import assert_close, assert_unchanged, snapshot

import fastprop as fp

torch = pytest.importorskip("torch")
tnn = torch.nn

F32, F64 = np.float32, np.float64
TORCH_DTYPE = {F32: torch.float32, F64: torch.float64}


def torch_mlp():
    """Every activation fastprop shares with torch, nested Sequentials, Flatten, no-bias Linear."""
    return tnn.Sequential(
        tnn.Linear(5, 8), tnn.ReLU(),
        tnn.Sequential(tnn.Linear(8, 8), tnn.LeakyReLU(0.2), tnn.PReLU(8),
                       tnn.Sequential(tnn.Linear(8, 8), tnn.PReLU())),
        tnn.Softplus(2.0, 5.0), tnn.GELU(), tnn.SiLU(), tnn.Flatten(), tnn.Identity(), tnn.Tanh(),
        tnn.Linear(8, 8, bias=False), tnn.Sigmoid(), tnn.Softplus(), tnn.Linear(8, 3))


def assert_same_state(t, model):
    """The fastprop model holds torch's parameters bit for bit, under torch's names."""
    sd = t.state_dict()
    named = dict(model.named_parameters())
    assert list(named) == list(sd)
    for name, v in sd.items():
        a = named[name].data
        assert a.dtype == v.numpy().dtype and a.tobytes() == v.numpy().tobytes(), name


@pytest.mark.parametrize("dtype", [F32, F64])
def test_from_torch_same_parameters_outputs_and_gradients(dtype):
    torch.manual_seed(0)
    t = torch_mlp().to(TORCH_DTYPE[dtype])
    model = fp.from_torch(t)
    assert model.dtype == dtype
    assert_same_state(t, model)
    x = torch.randn(11, 5, dtype=TORCH_DTYPE[dtype], requires_grad=True)
    y = t(x)
    assert_close(model(x.detach().numpy()), y.detach().numpy(), dtype)
    # the same function: backward agrees with torch's autograd
    gy = torch.randn_like(y)
    y.backward(gy)
    gx = model.backward(gy.numpy())
    assert_close(gx, x.grad.numpy(), dtype)
    for (name, p), (_, q) in zip(model.named_parameters(), t.named_parameters()):
        assert_close(p.grad, q.grad.numpy(), dtype)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_round_trips_are_bit_exact(dtype):
    torch.manual_seed(1)
    t = torch_mlp().to(TORCH_DTYPE[dtype])
    back = fp.to_torch(fp.from_torch(t))
    assert list(back.state_dict()) == list(t.state_dict())
    for (name, a), b in zip(t.state_dict().items(), back.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert type(back[7]) is tnn.Identity      # Flatten of 2-D input: the identity
    assert back[3].beta == 2.0 and back[3].threshold == 5.0 and back[2][1].negative_slope == 0.2
    x = torch.randn(4, 5, dtype=TORCH_DTYPE[dtype])
    assert torch.equal(back(x), t(x))
    # and fastprop -> torch -> fastprop
    model = fp.Sequential(fp.Linear(3, 4, dtype=dtype, rng=0), fp.PReLU(4, dtype=dtype),
                          fp.Sequential(fp.Linear(4, 2, bias=False, dtype=dtype), fp.GELU()))
    again = fp.from_torch(fp.to_torch(model))
    for (n, p), (m, q) in zip(model.named_parameters(), again.named_parameters()):
        assert n == m and p.data.dtype == q.data.dtype and p.data.tobytes() == q.data.tobytes()


def test_named_sequential_converts_by_position():
    """nn.Sequential(OrderedDict): fastprop's Sequential names its layers 0, 1, ...; the
    weights go across layer by layer."""
    from collections import OrderedDict
    torch.manual_seed(5)
    t = tnn.Sequential(OrderedDict(fc=tnn.Linear(3, 4), act=tnn.Tanh(), out=tnn.Linear(4, 2)))
    model = fp.from_torch(t)
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert model[2].weight.data.tobytes() == t.out.weight.detach().numpy().tobytes()
    x = torch.randn(6, 3)
    assert_close(model(x.numpy()), t(x).detach().numpy(), F32)


def test_to_torch_is_its_own_memory_and_a_single_layer_converts():
    lin = fp.Linear(3, 2, rng=0)
    t = fp.to_torch(lin)
    assert type(t) is tnn.Linear
    with torch.no_grad():
        t.weight.add_(1.0)
    assert not np.array_equal(lin.weight.data, t.weight.detach().numpy())
    back = fp.from_torch(tnn.Tanh())
    assert type(back) is fp.Tanh and back.dtype is None


def test_a_model_from_torch_trains_with_fit_and_goes_back():
    torch.manual_seed(0)
    t = tnn.Sequential(tnn.Linear(2, 16), tnn.Tanh(), tnn.Linear(16, 2))
    model = fp.from_torch(t)
    X, y = fp.datasets.spirals(200, 2, seed=0)
    before = fp.evaluate(model, X, y, fp.SoftmaxCrossEntropy())["loss"]
    fp.fit(model, X, y, loss=fp.SoftmaxCrossEntropy(), optimizer=fp.Adam(model.parameters(), 1e-2),
           epochs=5, batch_size=32, progress=False)
    back = fp.to_torch(model)
    logits = back(torch.from_numpy(X)).detach().numpy()
    assert_close(logits, model(X), F32)
    after = float(tnn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)))
    assert after < before


# ---------------------------------------------------------------- load_torch_state_dict

def test_load_torch_state_dict_from_tensors_and_arrays():
    torch.manual_seed(2)
    t = tnn.Sequential(tnn.Linear(4, 3), tnn.ReLU(), tnn.Linear(3, 2))
    model = fp.Sequential(fp.Linear(4, 3), fp.ReLU(), fp.Linear(3, 2))
    model.load_torch_state_dict(t.state_dict())
    assert_same_state(t, model)
    sd = {k: v.numpy() * 2 for k, v in t.state_dict().items()}     # plain arrays too
    model.load_torch_state_dict(sd)
    assert np.array_equal(model[0].weight.data, sd["0.weight"])
    # tensors that need grad, and bfloat16 (exact in float32)
    w = torch.ones(3, 4, requires_grad=True)
    half = t.state_dict()
    half["0.weight"] = w
    half["2.weight"] = torch.full((2, 3), 0.5, dtype=torch.bfloat16)
    model.load_torch_state_dict(half)
    assert np.all(model[0].weight.data == 1) and np.all(model[2].weight.data == 0.5)


def test_load_torch_state_dict_bad_input_changes_nothing():
    torch.manual_seed(3)
    t = tnn.Sequential(tnn.Linear(4, 3), tnn.ReLU(), tnn.Linear(3, 2))
    model = fp.Sequential(fp.Linear(4, 3, rng=0), fp.ReLU(), fp.Linear(3, 2, rng=1))
    snap = snapshot(model)
    sd = t.state_dict()
    missing = {k: v for k, v in sd.items() if k != "2.bias"}
    with pytest.raises(KeyError, match=r"missing \['2.bias'\]"):
        model.load_torch_state_dict(missing)
    with pytest.raises(KeyError, match=r"unexpected \['9.weight'\]"):
        model.load_torch_state_dict({**sd, "9.weight": torch.zeros(1)})
    wrong = dict(sd)
    wrong["2.weight"] = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"2.weight: shape \(3, 2\)"):
        model.load_torch_state_dict(wrong)
    with pytest.raises(TypeError, match="mapping"):
        model.load_torch_state_dict([("0.weight", sd["0.weight"])])
    with pytest.raises(TypeError, match="keys must be str"):
        model.load_torch_state_dict({0: sd["0.weight"]})
    assert_unchanged(model, snap)


# ---------------------------------------------------------------- what has no counterpart

class TorchNet(tnn.Module):
    def forward(self, x):
        return x


class Doubler(fp.Module):
    def _forward(self, x):
        return 2 * x


@pytest.mark.parametrize("module, error, match", [
    (tnn.Sequential(tnn.Linear(2, 2), tnn.Conv1d(1, 1, 1)), TypeError,
     r"torch\.nn\.modules\.conv\.Conv1d at '1'"),
    (tnn.Sequential(tnn.Linear(2, 2), tnn.Sequential(tnn.ReLU(), TorchNet())), TypeError,
     "TorchNet at '1.1'"),
    (TorchNet(), TypeError, "TorchNet"),
    (tnn.Sequential(tnn.GELU(approximate="tanh")), ValueError, "approximate='tanh'"),
    (tnn.Sequential(tnn.Flatten(0)), ValueError, "Flatten at '0'"),
    (tnn.Sequential(tnn.Linear(2, 2).half()), TypeError, "float16"),
    (tnn.Sequential(tnn.Linear(2, 2), tnn.Linear(2, 2).double()), TypeError, "one dtype"),
    ("not a module", TypeError, "torch.nn.Module"),
])
def test_from_torch_refuses_what_fastprop_lacks(module, error, match):
    with pytest.raises(error, match=match):
        fp.from_torch(module)


@pytest.mark.parametrize("model, match", [
    (fp.Sequential(fp.Linear(2, 2), fp.Abs()), "Abs at '1'"),
    (fp.Sequential(fp.Sequential(fp.Cos())), r"Cos at '0\.0'"),
    (fp.LowRankLinear(4, 4, 2), "LowRankLinear"),
    (fp.Residual(fp.Linear(3, 3)), "Residual"),
    (fp.Sequential(fp.Linear(2, 2), Doubler()), "Doubler at '1'"),
    ("not a module", "fastprop Module"),
])
def test_to_torch_refuses_what_torch_lacks(model, match):
    with pytest.raises(TypeError, match=match):
        fp.to_torch(model)


# ---------------------------------------------------------------- layers from the training toolkit

@pytest.mark.skipif(not all(hasattr(fp, n) for n in ("Dropout", "LayerNorm", "BatchNorm1d")),
                    reason="no Dropout / LayerNorm / BatchNorm1d in this build")
@pytest.mark.parametrize("dtype", [F32, F64])
def test_dropout_layer_norm_batch_norm_round_trip(dtype):
    torch.manual_seed(4)
    t = tnn.Sequential(tnn.Linear(5, 8), tnn.BatchNorm1d(8, eps=1e-3, momentum=0.2), tnn.ReLU(),
                       tnn.Dropout(0.3), tnn.Linear(8, 6), tnn.LayerNorm(6, eps=1e-4),
                       tnn.LayerNorm(6, bias=False), tnn.LayerNorm(6, elementwise_affine=False),
                       tnn.BatchNorm1d(6, affine=False), tnn.Linear(6, 2)).to(TORCH_DTYPE[dtype])
    t.train()
    for _ in range(3):                        # running statistics away from 0 and 1
        t(torch.randn(16, 5, dtype=TORCH_DTYPE[dtype]) * 3 + 1)
    with torch.no_grad():
        for m in t.modules():
            if isinstance(m, (tnn.LayerNorm, tnn.BatchNorm1d)) and m.weight is not None:
                m.weight.normal_()
    t.eval()
    model = fp.from_torch(t)
    assert not model.training and model[3].p == 0.3 and model[1].momentum == 0.2
    assert model[7].elementwise_affine is False and model[8].affine is False
    want = t.state_dict()
    got = model.state_dict()
    assert list(got) == list(want)
    for name, v in want.items():
        assert np.array_equal(np.asarray(got[name]), v.numpy()), name
    x = torch.randn(9, 5, dtype=TORCH_DTYPE[dtype])
    assert_close(model(x.numpy()), t(x).detach().numpy(), dtype)
    back = fp.to_torch(model)
    assert not back.training and not back[3].training
    for (name, a), b in zip(want.items(), back.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    model.train()
    assert fp.to_torch(model)[1].training
