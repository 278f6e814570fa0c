"""save / load (one .npz: the architecture as JSON and the parameters), and gradcheck."""
import copy
import json
import os
import tempfile

import numpy as np

from . import nn

__all__ = ["save", "load", "gradcheck", "architecture", "build"]

FORMAT = "fastprop-model"
VERSION = 1
_ACTIVATIONS = ("Identity", "ReLU", "LeakyReLU", "Abs", "Sigmoid", "Tanh", "Softplus", "Cos",
                "GELU", "SiLU")
_BUILDABLE = {name: getattr(nn, name) for name in _ACTIVATIONS + ("Linear", "PReLU", "Sequential")}


def architecture(module):
    """The module tree as JSON-able data: {"type": ..., "args": {...}, "layers": [...]}."""
    kind = type(module).__name__
    if _BUILDABLE.get(kind) is not type(module):
        raise TypeError(f"cannot save a {kind}: save supports {sorted(_BUILDABLE)}")
    if isinstance(module, nn.Sequential):
        return {"type": kind, "layers": [architecture(m) for m in module.layers]}
    return {"type": kind, "args": module._config()}


def build(arch, dtype=None):
    """A new module from architecture(...) data (dtype overrides the stored one)."""
    if not isinstance(arch, dict) or arch.get("type") not in _BUILDABLE:
        raise ValueError(f"unknown module description {arch!r:.200}")
    cls = _BUILDABLE[arch["type"]]
    if cls is nn.Sequential:
        return nn.Sequential(*[build(a, dtype) for a in arch.get("layers", [])])
    args = dict(arch.get("args", {}))
    if "dtype" in args and dtype is not None:
        args["dtype"] = str(np.dtype(dtype))
    return cls(**args)


def save(model, path):
    """Writes model to path (.npz) atomically: a temporary file in the same folder, then
    os.replace, so an interrupted save never destroys the previous file."""
    arch = json.dumps({"format": FORMAT, "version": VERSION, "model": architecture(model)})
    arrays = {"__architecture__": np.array(arch)}
    for name, p in model.named_parameters():
        arrays["param:" + name] = p.data
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fastprop-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load(path):
    """Reads a model written by save; any damaged or foreign file is a ValueError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "__architecture__" not in f.files:
                raise ValueError("no architecture record")
            meta = json.loads(str(f["__architecture__"]))
            params = {k[len("param:"):]: f[k] for k in f.files if k.startswith("param:")}
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError("not a fastprop model")
        if meta.get("version") != VERSION:
            raise ValueError(f"format version {meta.get('version')} (this fastprop reads {VERSION})")
        model = build(meta["model"])
        model.load_state_dict(params)
    except Exception as e:  # a truncated zip can fail in zipfile, zlib, numpy or json
        raise ValueError(f"{path} is not a readable fastprop model file: "
                         f"{type(e).__name__}: {e}") from None
    return model


def gradcheck(model, loss, x, y, eps=1e-6, max_checks=None, seed=0):
    """Maximum relative error between back-propagated and central-difference gradients.

    Runs on a float64 copy of the model (model itself is untouched). Every parameter
    is perturbed, or max_checks of them chosen at random. The relative error of one
    entry is |a − n| / max(|a|, |n|, 1e-7).
    """
    m64 = build(architecture(model), np.float64)
    m64.load_state_dict(model.state_dict())
    loss = copy.deepcopy(loss)
    x = np.asarray(x, dtype=np.float64)
    m64.zero_grad()
    out = m64.forward(x)
    loss(out, y)
    m64.backward(loss.backward())
    (data, grad), = nn.flat_runs(m64.parameters())
    analytic = grad.copy()
    idx = np.arange(data.size)
    if max_checks is not None and max_checks < data.size:
        idx = np.random.default_rng(seed).choice(data.size, max_checks, replace=False)
    worst = 0.0
    for i in idx:  # one forward per perturbation: a test utility, not a hot path
        old = data[i]
        data[i] = old + eps
        jp = loss(m64.forward(x), y)
        data[i] = old - eps
        jm = loss(m64.forward(x), y)
        data[i] = old
        num = (jp - jm) / (2 * eps)
        err = abs(analytic[i] - num) / max(abs(analytic[i]), abs(num), 1e-7)
        worst = max(worst, err)
    return float(worst)
