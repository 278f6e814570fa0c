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
    adam_step,
    add_backward,
    add_forward,
    concat_backward,
    concat_forward,
    dense_backward,
    dense_forward,
    gaussian_nll,
    gemm,
    log_softmax,
    mse,
    mul_backward,
    mul_forward,
    prelu_backward,
    prelu_forward,
    sgd_step,
    sigmoid_bce,
    softmax,
    softmax_cross_entropy,
)

__all__ = [
    "gemm",
    "dense_forward",
    "dense_backward",
    "activation_forward",
    "activation_backward",
    "prelu_forward",
    "prelu_backward",
    "softmax",
    "log_softmax",
    "softmax_cross_entropy",
    "sigmoid_bce",
    "mse",
    "gaussian_nll",
    "add_forward",
    "add_backward",
    "mul_forward",
    "mul_backward",
    "concat_forward",
    "concat_backward",
    "sgd_step",
    "adam_step",
]
