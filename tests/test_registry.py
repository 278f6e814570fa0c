"""The registry (fastprop.registry) agrees with the C enums and with what derives from it."""
import re
from pathlib import Path

import numpy as np
import pytest

import fastprop as fp
from fastprop import _kernels, io, ops, reference, registry

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "fastprop.h"


def _c_enum(first):
    """{NAME: value} of the C enum whose first member is `first` (implicit values counted)."""
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    body = re.search(r"enum\s*\{([^}]*\b" + first + r"\b[^}]*)\}", text).group(1)
    values, nxt = {}, 0
    for item in filter(None, (s.strip() for s in body.split(","))):
        name, _, value = (t.strip() for t in item.partition("="))
        nxt = int(value) if value else nxt
        values[name], nxt = nxt, nxt + 1
    return values


@pytest.fixture(scope="module")
def header():
    if not HEADER.exists():
        pytest.skip("csrc/fastprop.h is not beside the tests (an installed copy)")
    return HEADER


def test_activation_codes_are_the_c_enum(header):
    enum = _c_enum("FP_IDENTITY")
    enum.pop("FP_N_ACTIVATIONS")
    assert enum == {f"FP_{a.name.upper()}": a.code for a in registry.ACTIVATIONS}


def test_fused_loss_codes_are_the_c_enum(header):
    enum = _c_enum("FP_LOSS_SOFTMAX_XENT")
    c_names = {"softmax_cross_entropy": "SOFTMAX_XENT", "l1_loss": "L1", "huber_loss": "HUBER",
               "smooth_l1_loss": "SMOOTH_L1"}
    assert enum == {f"FP_LOSS_{c_names.get(l.kernel, l.kernel.upper())}": l.code
                    for l in registry.LOSSES if l.chain}
    gaussian = next(l for l in registry.LOSSES if l.kernel == "gaussian_nll")
    assert _c_enum("FP_LOSS_GAUSSIAN_NLL") == {"FP_LOSS_GAUSSIAN_NLL": gaussian.code}
    assert [l.code for l in registry.LOSSES] == list(range(len(registry.LOSSES)))


def test_bindings_reference_and_ops_take_their_names_from_it():
    names = registry.activation_names()
    assert _kernels.ACTIVATIONS == reference.ACTIVATIONS == ops.ACTIVATIONS == names
    assert len(set(a.code for a in registry.ACTIVATIONS)) == len(names)
    assert _kernels.LOSSES == registry.fused_losses()


@pytest.mark.parametrize("row", registry.ACTIVATIONS, ids=lambda r: r.cls)
def test_each_activation_row(row):
    cls = getattr(fp, row.cls)
    m = cls()
    assert m.name == row.name and m._config() == dict(row.params) and cls.__doc__ == row.doc
    # the row's rule is what the module, the kernel and the reference do: a from-output
    # derivative works with y alone, else the kernel refuses y without x
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    y = ops.activation_forward(x, row.name)
    g = np.ones_like(x)
    assert m.from_output == registry.derivative_from_output(row.name)
    if m.from_output:
        np.testing.assert_allclose(ops.activation_backward(g, row.name, y=y),
                                   reference.activation_backward(g, row.name, x=x), rtol=1e-12)
    else:
        with pytest.raises(ValueError, match="needs x"):
            ops.activation_backward(g, row.name, y=y)
    assert io.build(io.architecture(m)).__class__ is cls   # its save/load name


def test_leaky_relu_rule_depends_on_the_slope():
    assert registry.derivative_from_output("leaky_relu", 0.1)
    assert not registry.derivative_from_output("leaky_relu", 0.0)
    assert not registry.derivative_from_output("leaky_relu", -0.5)
    assert not fp.LeakyReLU(-0.5).from_output
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        registry.derivative_from_output("swish")


def test_layers_and_losses_exist_where_the_registry_says():
    for row in registry.LAYERS:
        assert isinstance(getattr(fp, row.cls), type) and row.cls in registry.buildable()
        for k in row.kernels:
            assert callable(getattr(ops, k)) and callable(getattr(reference, k, None) or getattr(ops, k))
    for row in registry.LOSSES:
        loss = getattr(fp, row.cls)()
        assert loss.kernel == row.kernel and callable(getattr(ops, row.kernel))
        assert callable(getattr(reference, row.kernel))
        assert hasattr(ops, f"{row.kernel}_hvp") == row.hvp
    assert set(io._BUILDABLE) == set(registry.buildable())
