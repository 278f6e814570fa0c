"""Every module takes PyTorch's positional order as well as the keywords (issue 12, item 6)."""
import numpy as np
import pytest

import fastprop as fp


ACTIVATION_ARGS = {  # module: (positional values, the same as keywords)
    "Identity": ((), {}),
    "ReLU": ((), {}),
    "LeakyReLU": ((0.1,), {"negative_slope": 0.1}),
    "Abs": ((), {}),
    "Sigmoid": ((), {}),
    "Tanh": ((), {}),
    "Softplus": ((2.0, 10.0), {"beta": 2.0, "threshold": 10.0}),
    "Cos": ((), {}),
    "GELU": ((), {}),
    "SiLU": ((), {}),
}


def _same_output(a, b, width=3):
    x = np.linspace(-3, 3, 2 * width, dtype=np.float32).reshape(2, width)
    np.testing.assert_array_equal(a(x), b(x))


@pytest.mark.parametrize("name", sorted(ACTIVATION_ARGS))
def test_activation_positional_equals_keyword(name):
    args, kw = ACTIVATION_ARGS[name]
    cls = getattr(fp, name)
    pos, key = cls(*args), cls(**kw)
    assert pos._config() == key._config()
    _same_output(pos, key)


def test_activation_positional_values_land_where_torch_puts_them():
    assert fp.LeakyReLU(0.1)._config() == {"negative_slope": 0.1}
    assert fp.Softplus(2.0, 10.0)._config() == {"beta": 2.0, "threshold": 10.0}
    assert fp.Softplus(3.0)._config() == {"beta": 3.0, "threshold": 20.0}


def test_activation_too_many_or_repeated_arguments():
    with pytest.raises(TypeError, match="positional"):
        fp.LeakyReLU(0.1, 0.2)
    with pytest.raises(TypeError, match="positional"):
        fp.ReLU(1)
    with pytest.raises(TypeError, match="negative_slope"):
        fp.LeakyReLU(0.1, negative_slope=0.2)


def test_prelu_positional():
    a, b = fp.PReLU(3, 0.1), fp.PReLU(num_parameters=3, init=0.1)
    assert a.weight.shape == (3,) and np.all(a.weight.data == np.float32(0.1))
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert fp.PReLU(2, 0.3, np.float64).dtype == np.float64


def test_linear_positional():
    a = fp.Linear(4, 3, False, np.float64, "xavier_normal", 0.0, 0)
    b = fp.Linear(in_features=4, out_features=3, bias=False, dtype=np.float64,
                  init="xavier_normal", bias_init=0.0, rng=0)
    assert [n for n, _ in a.named_parameters()] == ["weight"]
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert fp.Linear(4, 3, False).bias is None


def test_lowrank_linear_positional():
    a = fp.LowRankLinear(6, 5, 2, False, np.float64, 0.0, 1)
    b = fp.LowRankLinear(in_features=6, out_features=5, rank=2, bias=False,
                         dtype=np.float64, bias_init=0.0, rng=1)
    assert a.dtype == np.float64
    for (n, p), (m, q) in zip(a.named_parameters(), b.named_parameters()):
        assert n == m
        np.testing.assert_array_equal(p.data, q.data)


def test_containers_positional():
    lin = fp.Linear(3, 3)
    assert fp.Sequential(lin, fp.ReLU())[0] is lin
    r = fp.Residual(fp.Sequential(fp.Linear(3, 3), fp.ReLU()))
    assert r(np.ones((2, 3), np.float32)).shape == (2, 3)
    for merge in (fp.Add, fp.Mul, fp.Concat):
        merge()


def test_every_exported_module_is_covered():
    covered = set(ACTIVATION_ARGS) | {"PReLU", "Linear", "LowRankLinear", "Sequential",
                                      "Residual", "Add", "Mul", "Concat", "Graph", "Module"}
    modules = {n for n in fp.__all__ if isinstance(getattr(fp, n), type)
               and issubclass(getattr(fp, n), fp.Module)}
    assert modules <= covered, sorted(modules - covered)
