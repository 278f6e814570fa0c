"""Inference on the tape: the forward-only runner of a model (``_kernels.Inference``), compiled
once and cached per model, for predict, predict_proba, evaluate and ``model(x)`` in eval mode.

A model the tape cannot lower (several outputs, no parameters, only Python modules) gets
None: its callers take the modular path. The runner is built again when the model's
parameters move to new buffers: each entry keeps the ``nn.BufferVersions`` of the buffers it
was compiled against and compares them at each use (O(1) for a model: its one buffer).
"""
import weakref

import numpy as np

from . import _kernels, plan
from .nn import BufferVersions

__all__ = ["runner", "forward"]

# model -> (BufferVersions of its parameters, Inference or None, the modules whose mode
# decides the path)
_cache = weakref.WeakKeyDictionary()


def _build(model):
    if model.dtype is None:
        return None, ()
    try:
        program = plan.lower(model)
        if all(o.kind == plan.MODULE for o in program.ops):
            return None, ()
        run = _kernels.Inference(program, model.dtype)
    except (plan.Unsupported, ValueError):   # a shape the tape does not run: modular path
        return None, ()
    # the modules whose mode decides the path: Python callbacks, and Dropout/LayerNorm/
    # BatchNorm1d (their C ops run eval mode only; Inference.run reads their settings)
    moded = (plan.MODULE, plan.DROPOUT, plan.LAYERNORM, plan.BATCHNORM)
    return run, tuple({id(o.module): o.module for o in program.ops if o.kind in moded}.values())


_NONE = (None, None, ())


def _entry(model):
    entry = _cache.get(model)
    if entry is not None:
        held = entry[0]
        if not held.changed():
            return entry
        if not held.moved():
            held.renew()
            return entry
    if model.dtype is None:   # no parameters (yet: a Graph before build): nothing cached
        return _NONE
    entry = (BufferVersions(model.parameters()),) + _build(model)
    _cache[model] = entry
    return entry


def runner(model):
    """The model's ``_kernels.Inference``, or None where the modular path must run it."""
    return _entry(model)[1]


def forward(model, xs):
    """The model's output for the checked inputs xs (a list of arrays) as a new array, on the
    tape; None where the modular path must run it: a model the tape cannot run, or one with a
    Python module in training mode (its backward would need this forward's own state), or a
    Dropout, LayerNorm or BatchNorm1d in training mode (the C ops run eval mode only)."""
    _, run, modules = _entry(model)
    if run is None or model.training or any(m.training for m in modules):
        return None
    xs = tuple(xs)
    out = np.empty((xs[0].shape[0], run.n_out), run.dtype)
    return run.run(xs, out)
