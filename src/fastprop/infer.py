"""Inference on the tape: the forward-only runner of a model (``_kernels.Inference``), compiled
once and cached per model, for predict, predict_proba, evaluate and ``model(x)`` in eval mode.

A model the tape cannot lower (several outputs, no parameters, only Python modules) gets
None: its callers take the modular path. The runner is built again when the model's
parameters move to new buffers (as TrainStep does it: ``flatten_count``).
"""
import weakref

import numpy as np

from . import _kernels, plan
from .nn import flatten_count

__all__ = ["runner", "forward"]

# model -> (flatten_count at the check, the parameters' flat buffers, Inference or None,
# the Python-callback modules inside it)
_cache = weakref.WeakKeyDictionary()


def _build(model):
    if model.dtype is None:
        return None, ()
    try:
        program = plan.lower(model)
        # Dropout/LayerNorm/BatchNorm1d ops need the training tape's per-run mode sync and
        # saved-state buffers, which Inference does not keep: here they run as their modules
        moded = (plan.DROPOUT, plan.LAYERNORM, plan.BATCHNORM)
        program = program._replace(ops=tuple(o._replace(kind=plan.MODULE) if o.kind in moded
                                             else o for o in program.ops))
        if all(o.kind == plan.MODULE for o in program.ops):
            return None, ()
        run = _kernels.Inference(program, model.dtype)
    except (plan.Unsupported, ValueError):   # a shape the tape does not run: modular path
        return None, ()
    return run, tuple(o.module for o in program.ops if o.kind == plan.MODULE)


def _entry(model):
    entry = _cache.get(model)
    count = flatten_count()
    if entry is not None and entry[0] == count:
        return entry
    flats = [p._flat for p in model.parameters()]
    if entry is None or len(flats) != len(entry[1]) or \
            any(a is not b for a, b in zip(flats, entry[1])):
        entry = (count, flats) + _build(model)
    else:
        entry = (count,) + entry[1:]
    _cache[model] = entry
    return entry


def runner(model):
    """The model's ``_kernels.Inference``, or None where the modular path must run it."""
    return _entry(model)[2]


def forward(model, xs):
    """The model's output for the checked inputs xs (a list of arrays) as a new array, on the
    tape; None where the modular path must run it: a model the tape cannot run, or one with a
    Python module in training mode (its backward would need this forward's own state)."""
    _, _, run, modules = _entry(model)
    if run is None or model.training or any(m.training for m in modules):
        return None
    xs = tuple(xs)
    out = np.empty((xs[0].shape[0], run.n_out), run.dtype)
    return run.run(xs, out)
