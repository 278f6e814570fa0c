"""The functional API: every C kernel on NumPy arrays, with ``out=`` buffers.

Each function checks its arrays (dtype, ndim, shape, contiguity, overlap) and
raises ``TypeError``/``ValueError`` naming the argument before writing anything,
then releases the GIL and runs one C kernel. ``fastprop.reference`` has the
same functions, with the same signatures, in plain NumPy.
"""
from ._kernels import (
    ACTIVATIONS,
    FROM_OUTPUT,
    activation_backward,
    activation_forward,
    activation_rbackward,
    activation_second,
    adam_step,
    dense_backward,
    dense_forward,
    gemm,
    log_softmax,
    mse,
    mse_hvp,
    prelu_backward,
    prelu_forward,
    prelu_rbackward,
    prelu_rforward,
    sgd_step,
    sigmoid_bce,
    sigmoid_bce_hvp,
    softmax,
    softmax_cross_entropy,
    softmax_cross_entropy_hvp,
)

__all__ = [
    "gemm",
    "dense_forward",
    "dense_backward",
    "activation_forward",
    "activation_backward",
    "activation_second",
    "activation_rbackward",
    "prelu_forward",
    "prelu_backward",
    "prelu_rforward",
    "prelu_rbackward",
    "softmax",
    "log_softmax",
    "softmax_cross_entropy",
    "sigmoid_bce",
    "mse",
    "softmax_cross_entropy_hvp",
    "sigmoid_bce_hvp",
    "mse_hvp",
    "sgd_step",
    "adam_step",
]
