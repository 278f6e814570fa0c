"""The one table of fastprop's activations, layers and losses.

Each entry is declared once here; the bindings (``fastprop._kernels``), ``nn``, ``losses``,
``reference`` and ``io`` read it. The C side has its own enums in ``csrc/fastprop.h``
(``FP_RELU``, ``FP_LOSS_MSE``, ...): ``tests/test_registry.py`` checks they agree with the
``code`` fields below. Plain data, no imports of the rest of the package.

Adding an activation: its C forward/backward/second derivative in ``csrc/activation.c``
under a new ``FP_`` enum value, one ``Activation`` row here, its case in
``reference.activation_forward``/``_backward``/``_second_derivative``; ``nn`` makes its
``Module`` class and ``io`` its save/load entry from the row.
"""
from __future__ import annotations
from collections import namedtuple
from typing import Any

__all__ = ["Activation", "Layer", "Loss", "ACTIVATIONS", "LAYERS", "LOSSES", "activation",
           "activation_names", "derivative_from_output", "fused_losses", "buildable"]

# name: the kernel name (ops, reference, the C enum FP_<NAME>); cls: the Module class and its
# save/load "type"; code: the C enum value; params: (name, default) in PyTorch's positional
# order; from_output: "always", "never" or "positive_slope" (leaky_relu: the output has the
# input's sign only when the slope is > 0); doc: the Module's docstring.
Activation = namedtuple("Activation", "name cls code params from_output doc")



def _activation_doc(cls: str, formula: str, same_as: str, params: str = "", args: str = "") -> str:
    """An activation Module's numpydoc docstring: the formula, its parameters, an example
    comparing it with NumPy's ``same_as`` (an expression in x)."""
    head = f"Elementwise {formula}\n\nInput and output are (batch, features), of one dtype.\n"
    if params:
        head += f"\nParameters\n----------\n{params}"
        head += "\nRaises\n------\nTypeError\n    If an argument is unknown or given twice.\n"
        if "beta" in params:
            head += "ValueError\n    If beta is 0.\n"
    return (head + "\nExamples\n--------\n>>> import math, numpy as np, fastprop as fp\n"
            ">>> x = np.linspace(-3, 3, 7).reshape(1, 7)\n"
            f">>> np.allclose(fp.{cls}({args})(x), {same_as}, atol=1e-6)\nTrue\n")


ACTIVATIONS = (
    Activation("identity", "Identity", 0, (), "always",
               _activation_doc("Identity", "y = x.", "x")),
    Activation("relu", "ReLU", 1, (), "always",
               _activation_doc("ReLU", "y = max(x, 0); relu′(0) = 0.", "np.maximum(x, 0)")),
    Activation("leaky_relu", "LeakyReLU", 2, (("negative_slope", 0.01),), "positive_slope",
               _activation_doc("LeakyReLU", "y = x if x > 0 else negative_slope·x.",
                               "np.where(x > 0, x, 0.1 * x)",
                               "negative_slope : float, default 0.01\n    The slope for x <= 0.\n",
                               "0.1")),
    Activation("abs", "Abs", 3, (), "never",
               _activation_doc("Abs", "y = abs(x); abs′(0) = 0.", "np.abs(x)")),
    Activation("sigmoid", "Sigmoid", 4, (), "always",
               _activation_doc("Sigmoid", "y = 1 / (1 + exp(−x)).", "1 / (1 + np.exp(-x))")),
    Activation("tanh", "Tanh", 5, (), "always",
               _activation_doc("Tanh", "y = tanh(x).", "np.tanh(x)")),
    Activation("softplus", "Softplus", 6, (("beta", 1.0), ("threshold", 20.0)), "never",
               _activation_doc("Softplus", "y = log(1 + exp(βx))/β, and x where βx > threshold.",
                               "np.log1p(np.exp(2 * x)) / 2",
                               "beta : float, default 1.0\n    β (nonzero).\n"
                               "threshold : float, default 20.0\n    Above it (βx), y = x.\n",
                               "beta=2.0")),
    Activation("cos", "Cos", 7, (), "never",
               _activation_doc("Cos", "y = cos(x).", "np.cos(x)")),
    Activation("gelu", "GELU", 8, (), "never",
               _activation_doc("GELU", "y = x Φ(x) (the exact erf form).",
                               "x * (1 + np.vectorize(math.erf)(x / np.sqrt(2))) / 2")),
    Activation("silu", "SiLU", 9, (), "never",
               _activation_doc("SiLU", "y = x σ(x).", "x / (1 + np.exp(-x))")),
)

# The parametrised modules and containers: cls is the Module class (in module "nn" or
# "graph") and the save/load type; kernels the ops they run (the tape's op kinds).
Layer = namedtuple("Layer", "cls module kernels")

LAYERS = (
    Layer("Linear", "nn", ("dense_forward", "dense_backward")),
    Layer("LowRankLinear", "nn", ("dense_forward", "dense_backward")),
    Layer("PReLU", "nn", ("prelu_forward", "prelu_backward", "prelu_rforward", "prelu_rbackward")),
    Layer("Sequential", "nn", ()),
    Layer("Add", "graph", ("add_forward", "add_backward")),
    Layer("Concat", "graph", ("concat_forward", "concat_backward")),
    Layer("Mul", "graph", ("mul_forward", "mul_backward")),
    Layer("Graph", "graph", ()),
    Layer("Residual", "graph", ()),
    Layer("Dropout", "layers", ("dropout_forward", "dropout_backward")),
    Layer("LayerNorm", "layers", ("layernorm_forward", "layernorm_backward", "layernorm_rforward",
                                  "layernorm_rbackward")),
    Layer("BatchNorm1d", "layers", ("batchnorm_forward", "batchnorm_backward", "batchnorm_rforward",
                                    "batchnorm_rbackward")),
)

# kernel: the fused value+gradient kernel in ops (and reference); code: its FP_LOSS_*; chain:
# the dense chain's step (csrc/network.c) runs it; tape: the tape's loss (csrc/tape.c) runs it;
# hvp: whether ops has <kernel>_hvp (Hessian-free, gnvp).
Loss = namedtuple("Loss", "kernel cls code chain tape hvp")

LOSSES = (
    Loss("softmax_cross_entropy", "SoftmaxCrossEntropy", 0, True, True, True),
    Loss("sigmoid_bce", "SigmoidBCE", 1, True, True, True),
    Loss("mse", "MSE", 2, True, True, True),
    Loss("l1_loss", "L1Loss", 3, True, False, True),
    Loss("huber_loss", "HuberLoss", 4, True, False, True),
    Loss("smooth_l1_loss", "SmoothL1Loss", 5, True, False, True),
    Loss("gaussian_nll", "GaussianNLL", 6, False, True, False),
)

_BY_NAME = {a.name: a for a in ACTIVATIONS}


def activation_names() -> tuple[str, ...]:
    """The kernel names of the activations, in C enum order."""
    return tuple(a.name for a in sorted(ACTIVATIONS, key=lambda a: a.code))


def activation(name: str) -> Any:
    """The registry row of the activation called name (a ValueError naming the known ones)."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}; expected one of {activation_names()}") from None


def derivative_from_output(name: str, negative_slope: float = 0.01) -> Any:
    """Whether f′ follows from the saved output y alone (so the input need not be kept)."""
    rule = activation(name).from_output
    return rule == "always" or (rule == "positive_slope" and negative_slope > 0)


def fused_losses() -> Any:
    """The kernel names of the losses the chain's fused step runs, in FP_LOSS_* order."""
    return tuple(l.kernel for l in sorted((l for l in LOSSES if l.chain), key=lambda l: l.code))


def buildable() -> Any:
    """The save/load type names: every activation, layer and container."""
    return tuple(a.cls for a in ACTIVATIONS) + tuple(l.cls for l in LAYERS)
