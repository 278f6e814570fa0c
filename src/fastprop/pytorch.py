"""PyTorch models in and out: ``from_torch(torch_module)``, ``to_torch(model)``, and the
conversion behind ``Module.load_torch_state_dict``. torch is imported only when called.

The layers that map one to one (torch.nn → fastprop): Sequential (nested), Linear, ReLU,
LeakyReLU, PReLU, Sigmoid, Tanh, Softplus, GELU (approximate="none"), SiLU, Identity, Dropout,
LayerNorm, BatchNorm1d, and Flatten, which is the identity on fastprop's (batch, features)
input (to_torch gives it back as Identity). Parameters and buffers are copied bit for bit, in
the module's dtype (float32 or float64), with each layer's training mode.
"""
from __future__ import annotations
from collections.abc import Mapping

import numpy as np

from . import layers, nn
from typing import Any, TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: no import cycle at run time
    from .nn import Module

__all__ = ["from_torch", "to_torch", "numpy_state_dict"]


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ImportError("this needs PyTorch: pip install torch") from None
    return torch


def numpy_state_dict(state_dict: Mapping[str, Any]) -> Any:
    """Return {name: ndarray} from a state dict of torch tensors or arrays.

    The arrays may share memory with the tensors: load_state_dict copies them into the
    model.

    Parameters
    ----------
    state_dict : mapping of str to tensor or array
        A torch ``state_dict()``, or names to arrays.

    Returns
    -------
    dict of str to ndarray
        The same entries as NumPy arrays.

    Raises
    ------
    TypeError
        If state_dict is not a mapping of str to tensors or arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from fastprop.pytorch import numpy_state_dict
    >>> numpy_state_dict({"0.weight": np.zeros((2, 3))})["0.weight"].shape
    (2, 3)
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors or arrays, got "
                        f"{type(state_dict).__name__}")
    out = {}
    for name, v in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"state_dict keys must be str, got {name!r}")
        if hasattr(v, "detach") and hasattr(v, "numpy"):   # a torch tensor
            v = v.detach().cpu()
            if str(v.dtype) == "torch.bfloat16":   # NumPy has no bfloat16; float32 holds it exactly
                v = v.float()
            v = v.numpy()
        out[name] = v
    return out


# ---------------------------------------------------------------- torch -> fastprop

def _dtype_of(module: Any) -> Any:
    """The one float dtype of a torch module's floating parameters and buffers (float32 if none)."""
    torch = _torch()
    kinds = {t.dtype for t in list(module.parameters()) + list(module.buffers())
             if t.is_floating_point()}
    if not kinds:
        return np.float32
    names = {torch.float32: np.float32, torch.float64: np.float64}
    if len(kinds) > 1 or not kinds <= set(names):
        raise TypeError(f"from_torch converts float32 or float64 modules (one dtype per model), "
                        f"got parameters of {sorted(str(k) for k in kinds)}")
    return names[kinds.pop()]


def _flatten_is_identity(m: Any) -> bool:
    """Flatten(start_dim, end_dim) leaves a (batch, features) input as it is."""
    return m.start_dim in (1, -1) and m.end_dim in (1, -1)


def _from_layer(m: Any, path: Any, dtype: Any) -> Any:
    """The fastprop module of torch module m (its structure; parameters are copied after)."""
    tnn = _torch().nn
    kind = type(m)
    simple = {tnn.ReLU: "ReLU", tnn.Sigmoid: "Sigmoid", tnn.Tanh: "Tanh", tnn.SiLU: "SiLU",
              tnn.Identity: "Identity"}
    if kind is tnn.Sequential:
        return nn.Sequential(*[_from_layer(c, f"{path}.{name}" if path else name, dtype)
                               for name, c in m.named_children()])
    if kind is tnn.Linear:
        return nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=dtype)
    if kind in simple:
        return getattr(nn, simple[kind])()
    if kind is tnn.LeakyReLU:
        return nn.LeakyReLU(negative_slope=m.negative_slope)
    if kind is tnn.PReLU:
        return nn.PReLU(num_parameters=m.num_parameters, dtype=dtype)
    if kind is tnn.Softplus:
        return nn.Softplus(beta=m.beta, threshold=m.threshold)
    if kind is tnn.GELU:
        if m.approximate != "none":
            raise ValueError(f"from_torch: the GELU at {path!r} has approximate={m.approximate!r}; "
                             f"fastprop's GELU is the exact (erf) form, approximate='none'")
        return nn.GELU()
    if kind is tnn.Flatten:
        if not _flatten_is_identity(m):
            raise ValueError(f"from_torch: the Flatten at {path!r} (start_dim={m.start_dim}, "
                             f"end_dim={m.end_dim}) changes a (batch, features) input; only "
                             f"Flatten(start_dim=1) is the identity there")
        return nn.Identity()
    if kind is tnn.Dropout and hasattr(layers, "Dropout"):
        return layers.Dropout(p=m.p)
    if kind is tnn.LayerNorm and hasattr(layers, "LayerNorm"):
        return layers.LayerNorm(tuple(m.normalized_shape), eps=m.eps,
                            elementwise_affine=m.elementwise_affine,
                            bias=m.bias is not None if m.elementwise_affine else True, dtype=dtype)
    if kind is tnn.BatchNorm1d and hasattr(layers, "BatchNorm1d"):
        return layers.BatchNorm1d(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                              track_running_stats=m.track_running_stats, dtype=dtype)
    where = f" at {path!r}" if path else ""
    raise TypeError(f"from_torch cannot convert {kind.__module__}.{kind.__name__}{where}: it "
                    f"converts torch.nn.Sequential (nested) of {', '.join(_FROM_NAMES)}")


_FROM_NAMES = ("Linear", "ReLU", "LeakyReLU", "PReLU", "Sigmoid", "Tanh", "Softplus", "GELU",
               "SiLU", "Identity", "Flatten", "Dropout", "LayerNorm", "BatchNorm1d")


def _pairs(torch_module: Any, fp_module: Any) -> Any:
    """(torch layer, fastprop layer) over both trees, containers included."""
    yield torch_module, fp_module
    if isinstance(fp_module, nn.Sequential):
        for t, f in zip(torch_module.children(), fp_module):
            yield from _pairs(t, f)


def _set_mode(module: Any, training: Any) -> None:
    """A fastprop module's training mode (where this build has modes); called on a container
    before its layers, which then set their own."""
    if hasattr(module, "train") and hasattr(module, "training"):
        module.train(bool(training))


def from_torch(module: Module) -> Module:
    """The fastprop model equivalent to ``module``, a ``torch.nn.Sequential`` (nested allowed)
    of the layers this module lists, or one such layer: the same parameters and buffers bit for
    bit, in the module's dtype (float32 or float64), each layer in its training mode.

    Parameter names follow fastprop's Sequential ("0.weight", "1.0.bias"): the same as
    torch's for a Sequential built from positional layers.

    Parameters
    ----------
    module : torch.nn.Module
        A ``torch.nn.Sequential`` (nested allowed) of the supported layers, or one of them.

    Returns
    -------
    Module
        The equivalent fastprop model, a copy of the parameters and buffers.

    Raises
    ------
    ImportError
        If PyTorch is not installed.
    TypeError
        If module is not a torch module, or holds an unsupported layer (named, with
        where it is; nothing is built).

    See Also
    --------
    to_torch

    Examples
    --------
    >>> import numpy as np, torch, fastprop as fp
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> model = fp.from_torch(net)
    >>> x = np.ones((2, 3), np.float32)
    >>> np.allclose(model(x), net(torch.from_numpy(x)).detach().numpy(), atol=1e-6)
    True
    """
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch takes a torch.nn.Module, got {type(module).__name__}")
    dtype = _dtype_of(module)
    model = _from_layer(module, "", dtype)
    for t, f in _pairs(module, model):
        if not isinstance(f, nn.Sequential):   # each layer's own names: "weight", "running_mean"
            f.load_torch_state_dict(t.state_dict())
        _set_mode(f, t.training)
    return model


# ---------------------------------------------------------------- fastprop -> torch

def _to_layer(m: Any, path: Any, dtype: Any) -> Any:
    torch = _torch()
    tnn = torch.nn
    name = type(m).__name__
    kind = name if type(m) is (getattr(nn, name, None) or getattr(layers, name, None)) else None
    if kind == "Sequential":
        return tnn.Sequential(*[_to_layer(c, f"{path}.{i}" if path else str(i), dtype)
                                for i, c in enumerate(m)])
    if kind == "Linear":
        return tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=dtype)
    if kind in ("ReLU", "Sigmoid", "Tanh", "SiLU", "Identity", "GELU"):
        return getattr(tnn, kind)()
    if kind == "LeakyReLU":
        return tnn.LeakyReLU(negative_slope=_param(m, "negative_slope"))
    if kind == "Softplus":
        return tnn.Softplus(beta=_param(m, "beta"), threshold=_param(m, "threshold"))
    if kind == "PReLU":
        return tnn.PReLU(num_parameters=m.num_parameters, dtype=dtype)
    if kind == "Dropout":
        return tnn.Dropout(p=m.p)
    if kind == "LayerNorm":
        return tnn.LayerNorm(m.normalized_shape, eps=m.eps, elementwise_affine=m.elementwise_affine,
                             bias=getattr(m, "bias", None) is not None, dtype=dtype)
    if kind == "BatchNorm1d":
        return tnn.BatchNorm1d(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                               track_running_stats=m.track_running_stats, dtype=dtype)
    where = f" at {path!r}" if path else ""
    raise TypeError(f"to_torch cannot convert {type(m).__name__}{where}: it converts a fastprop "
                    f"Sequential (nested) of {', '.join(_TO_NAMES)} (torch.nn has no layer for "
                    f"the others)")


_TO_NAMES = ("Linear", "ReLU", "LeakyReLU", "PReLU", "Sigmoid", "Tanh", "Softplus", "GELU", "SiLU",
             "Identity", "Dropout", "LayerNorm", "BatchNorm1d")


def _param(m: Any, name: Any) -> Any:
    return float(getattr(m, name)) if hasattr(m, name) else float(m.params[name])


def to_torch(model: Module) -> Any:
    """The ``torch.nn`` module equivalent to ``model``.

    ``model`` is a fastprop Sequential (nested allowed) of the layers this module lists, or
    one such layer: the same parameters and buffers bit for bit, in the model's dtype, each
    layer in its training mode.

    Parameters
    ----------
    model : Module
        The fastprop model.

    Returns
    -------
    torch.nn.Module
        The equivalent torch module.

    Raises
    ------
    ImportError
        If PyTorch is not installed.
    TypeError
        If model is not a Module, or holds an unsupported layer (Abs, Cos, LowRankLinear,
        Graph, Residual, a Python Module), named.

    See Also
    --------
    from_torch

    Examples
    --------
    >>> import numpy as np, torch, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 4, rng=0), fp.Tanh(), fp.Linear(4, 2, rng=1))
    >>> net = fp.to_torch(model)
    >>> x = np.ones((2, 3), np.float32)
    >>> np.allclose(net(torch.from_numpy(x)).detach().numpy(), model(x), atol=1e-6)
    True
    """
    torch = _torch()
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_torch takes a fastprop Module, got {type(model).__name__}")
    dtype = torch.float64 if np.dtype(model.dtype or np.float32) == np.float64 else torch.float32
    out = _to_layer(model, "", dtype)
    for t, f in _pairs(out, model):
        if not isinstance(f, nn.Sequential):
            own = t.state_dict()
            state = {}
            for name, v in f.state_dict().items():
                v = torch.from_numpy(np.array(v, copy=True))   # bit for bit, its own memory
                state[name] = v.reshape(own[name].shape) if name in own else v
            t.load_state_dict(state)
        t.training = bool(getattr(f, "training", True))
    return out
