"""fastprop: exact back-propagation for multilayer perceptrons, fused C kernels on the CPU."""
from __future__ import annotations
from . import datasets, ops, reference
from ._kernels import get_num_threads, set_num_threads
from .blas import calibrate_small_gemm, get_blas, set_blas
from .graph import Add, Concat, Graph, Mul, Residual
from .autodiff import hessian, jacobian, jvp, per_example_grad_norms, per_example_grads, vjp
from .curvature import (gnvp, hessian_eigs, hessian_trace, hvp, parameters_to_vector,
                        vector_to_parameters, vector_views)
from .hessian_free import Closure, HessianFree
from .io import gradcheck, load, save
from .layers import BatchNorm1d, Dropout, LayerNorm
from .losses import MSE, GaussianNLL, HuberLoss, L1Loss, SigmoidBCE, SmoothL1Loss, SoftmaxCrossEntropy
from .nn import (GELU, Abs, Cos, Identity, LeakyReLU, Linear, LowRankLinear, Module, Parameter,
                 PReLU, ReLU, Sequential, Sigmoid, SiLU, Softplus, Tanh)
from .onnx import export_onnx
from .pytorch import from_torch, to_torch
from .optim import SGD, Adagrad, Adam, AdamW, RMSprop
from . import lr_scheduler
from .callbacks import Callback, EarlyStopping, ModelCheckpoint
from .checkpoint import load_checkpoint, save_checkpoint
from .clip import clip_grad_norm_, clip_grad_value_
from .train import History, TrainStep, evaluate, fit, predict, predict_proba

from ._version import __version__
__all__ = [
    "ops", "reference", "datasets",
    "Parameter", "Module", "Linear", "LowRankLinear", "Sequential", "Identity", "ReLU", "LeakyReLU", "PReLU",
    "Graph", "Add", "Concat", "Mul", "Residual",
    "Abs", "Sigmoid", "Tanh", "Softplus", "Cos", "GELU", "SiLU",
    "SoftmaxCrossEntropy", "SigmoidBCE", "MSE", "GaussianNLL", "SGD", "Adam", "AdamW",
    "TrainStep", "fit", "History", "predict", "predict_proba", "evaluate",
    "save", "load", "gradcheck", "set_num_threads", "get_num_threads",
    "hvp", "gnvp", "hessian_eigs", "hessian_trace", "parameters_to_vector",
    "vector_to_parameters", "vector_views", "HessianFree", "Closure",
    "export_onnx", "from_torch", "to_torch",
    "Dropout", "LayerNorm", "BatchNorm1d",
    "RMSprop", "Adagrad", "lr_scheduler", "clip_grad_norm_", "clip_grad_value_",
    "Callback", "EarlyStopping", "ModelCheckpoint", "save_checkpoint", "load_checkpoint",
    "jvp", "vjp", "jacobian", "hessian", "per_example_grads", "per_example_grad_norms",
    "L1Loss", "HuberLoss", "SmoothL1Loss",
    "set_blas", "get_blas", "calibrate_small_gemm",
]
