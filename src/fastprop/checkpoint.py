"""Training checkpoints: the model's state (parameters and buffers), the optimizer's state
and step counts, the scheduler's state, the modules' RNG states and the caller's extras,
in one .npz written atomically (io.savez_atomic). No pickle: nested state is stored as
JSON, its arrays as the file's arrays."""
from __future__ import annotations
import json
import os

import numpy as np

from . import io
from typing import Any, TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: no import cycle at run time
    from .nn import Module
    from .optim import Optimizer

__all__ = ["save_checkpoint", "load_checkpoint"]

FORMAT = "fastprop-checkpoint"
VERSION = 1


# ---------------------------------------------------------------- nested state <-> JSON + arrays
def _encode(obj: Any, arrays: Any, where: Any) -> Any:
    """obj as JSON data; its arrays moved to `arrays` and named {"__array__": key}."""
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__array__": key}
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, arrays, f"{where}[{k!r}]") for k, v in obj.items()}
        return {"__items__": [[_encode(k, arrays, where), _encode(v, arrays, f"{where}[{k!r}]")]
                              for k, v in obj.items()]}
    raise TypeError(f"{where} is a {type(obj).__name__}, which a checkpoint cannot store "
                    f"(numbers, strings, lists, tuples, dicts and numpy arrays can be stored)")


def _decode(obj: Any, arrays: Any) -> Any:
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if "__array__" in obj:
            return arrays[obj["__array__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, arrays) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_decode(k, arrays): _decode(v, arrays) for k, v in obj["__items__"]}
        return {k: _decode(v, arrays) for k, v in obj.items()}
    return obj


def _rng_modules(model: Any) -> Any:
    """The modules with rng_state()/set_rng_state(state) (Dropout), each once, in order."""
    seen, out = set(), []
    for m in model.modules():
        if id(m) not in seen and callable(getattr(m, "rng_state", None)) and \
                callable(getattr(m, "set_rng_state", None)):
            seen.add(id(m))
            out.append(m)
    return out


def _architecture(model: Any) -> Any:
    try:
        return io.architecture(model)
    except TypeError:  # a user's own module: the state's names and shapes are the check
        return None


def write(path: str | os.PathLike[str], model: Module, optimizer: Optimizer, scheduler: Any = None,
          extra: Any = None, fit_state: Any = None) -> Any:
    """Writes a checkpoint (save_checkpoint, and fit's with its own state)."""
    if scheduler is not None and getattr(scheduler, "optimizer", None) is not optimizer:
        raise ValueError("scheduler belongs to another optimizer than the one given")
    arrays: dict[str, Any] = {}
    state = {"model": model.state_dict(),
             "optimizer": optimizer.state_dict(),
             "scheduler": None if scheduler is None else scheduler.state_dict(),
             "rng": [m.rng_state() for m in _rng_modules(model)],
             "extra": dict(extra or {}),
             "fit": fit_state}
    meta = {"format": FORMAT, "version": VERSION, "architecture": _architecture(model),
            "optimizer": type(optimizer).__name__,
            "scheduler": None if scheduler is None else type(scheduler).__name__,
            "state": _encode(state, arrays, "checkpoint")}
    arrays["__checkpoint__"] = np.array(json.dumps(meta))
    io.savez_atomic(path, arrays)


def read(path: str | os.PathLike[str], model: Module, optimizer: Optimizer, scheduler: Any = None,
         check_fit: Any = None) -> Any:
    """Loads a checkpoint into model, optimizer and scheduler; returns (extra, fit state).
    Anything that does not match is a ValueError, with everything as it was (check_fit(fit
    state) runs before anything is loaded: fit's own checks)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    if scheduler is not None and getattr(scheduler, "optimizer", None) is not optimizer:
        raise ValueError("scheduler belongs to another optimizer than the one given")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "__checkpoint__" not in f.files:
                raise ValueError("no checkpoint record")
            meta = json.loads(str(f["__checkpoint__"]))
            arrays = {k: f[k] for k in f.files if k != "__checkpoint__"}
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError("not a fastprop checkpoint")
        if meta.get("version") != VERSION:
            raise ValueError(f"format version {meta.get('version')} (this fastprop reads {VERSION})")
        state = _decode(meta["state"], arrays)
        keys = {"model", "optimizer", "scheduler", "rng", "extra", "fit"}
        if not isinstance(state, dict) or set(state) != keys or \
                not isinstance(state["model"], dict) or not isinstance(state["rng"], list):
            raise ValueError("the checkpoint record is incomplete")
    except Exception as e:  # a truncated zip can fail in zipfile, zlib, numpy or json
        raise ValueError(f"{path} is not a readable fastprop checkpoint: "
                         f"{type(e).__name__}: {e}") from None
    arch = _architecture(model)
    if arch is not None and meta["architecture"] is not None and arch != meta["architecture"]:
        raise ValueError(f"{path} is a checkpoint of another architecture: "
                         f"{json.dumps(meta['architecture'])[:300]}")
    own = model.state_dict()
    saved = state["model"]
    if set(own) != set(saved) or any(np.shape(saved[k]) != np.shape(v) for k, v in own.items()):
        raise ValueError(f"{path} is a checkpoint of another architecture: its state has "
                         f"{sorted((k, np.shape(v)) for k, v in saved.items())}, the model "
                         f"{sorted((k, np.shape(v)) for k, v in own.items())}")
    if meta["optimizer"] != type(optimizer).__name__:
        raise ValueError(f"{path} holds the state of a {meta['optimizer']}, not of a "
                         f"{type(optimizer).__name__}")
    if scheduler is not None and meta["scheduler"] != type(scheduler).__name__:
        raise ValueError(f"{path} holds the state of a {meta['scheduler']} scheduler, not of a "
                         f"{type(scheduler).__name__}")
    rng_modules = _rng_modules(model)
    if len(state["rng"]) != len(rng_modules):
        raise ValueError(f"{path} holds {len(state['rng'])} module RNG states, the model has "
                         f"{len(rng_modules)} modules with one")
    if check_fit is not None:
        check_fit(state["fit"])
    # load; on any error put back what was there
    before = (own, optimizer.state_dict(), None if scheduler is None else scheduler.state_dict(),
              [m.rng_state() for m in rng_modules])
    try:
        model.load_state_dict(saved)
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        for m, s in zip(rng_modules, state["rng"]):
            m.set_rng_state(s)
    except Exception as e:
        model.load_state_dict(before[0])
        optimizer.load_state_dict(before[1])
        if scheduler is not None:
            scheduler.load_state_dict(before[2])
        for m, s in zip(rng_modules, before[3]):
            m.set_rng_state(s)
        raise ValueError(f"{path} does not fit this model, optimizer and scheduler: "
                         f"{type(e).__name__}: {e}") from None
    return state["extra"], state["fit"]


def save_checkpoint(path: str | os.PathLike[str], model: Module, optimizer: Optimizer,
                    scheduler: Any = None, **extra: Any) -> None:
    """Write everything training needs to continue to path (.npz), atomically.

    The model's state_dict() (parameters and buffers), optimizer.state_dict() (state
    buffers, step counts, the groups' hyperparameters), scheduler.state_dict(), the RNG
    state of every module that has rng_state() (Dropout), and extra (numbers, strings,
    lists, dicts, numpy arrays). ``load_checkpoint`` reads it back.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write.
    model : Module
        The model.
    optimizer : Optimizer
        The optimizer over the model's parameters.
    scheduler : LRScheduler, optional
        A learning-rate scheduler over the optimizer.
    **extra
        Anything else to keep (numbers, strings, lists, dicts, numpy arrays).

    Raises
    ------
    TypeError
        If an extra value cannot be stored.
    ValueError
        If scheduler belongs to another optimizer.

    See Also
    --------
    load_checkpoint

    Examples
    --------
    >>> import os, tempfile, numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(2, 3, rng=0), fp.ReLU(), fp.Linear(3, 2, rng=1))
    >>> opt = fp.Adam(model.parameters(), lr=1e-2)
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
    >>> fp.save_checkpoint(path, model, opt, epoch=3, note="warm")
    >>> other = fp.Sequential(fp.Linear(2, 3, rng=5), fp.ReLU(), fp.Linear(3, 2, rng=6))
    >>> fp.load_checkpoint(path, other, fp.Adam(other.parameters(), lr=1e-2))
    {'epoch': 3, 'note': 'warm'}
    >>> all(np.array_equal(a.data, b.data) for a, b in zip(model.parameters(), other.parameters()))
    True
    """
    write(path, model, optimizer, scheduler, extra)


def load_checkpoint(path: str | os.PathLike[str], model: Module, optimizer: Optimizer,
                    scheduler: Any = None) -> dict[str, Any]:
    """Load a save_checkpoint file into model, optimizer (and scheduler).

    A checkpoint of another architecture, optimizer or scheduler is a ValueError and
    nothing changes.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save_checkpoint`.
    model : Module
        The model to load into (of the saved architecture).
    optimizer : Optimizer
        The optimizer to load into (of the saved kind, over ``model``).
    scheduler : LRScheduler, optional
        The scheduler to load into, if one was saved.

    Returns
    -------
    dict
        The ``extra`` keyword arguments given to save_checkpoint.

    Raises
    ------
    FileNotFoundError
        If path does not exist.
    ValueError
        If the file is damaged, or of another architecture, optimizer or scheduler.

    See Also
    --------
    save_checkpoint

    Examples
    --------
    >>> import os, tempfile, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(2, 2, rng=0))
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
    >>> fp.save_checkpoint(path, model, fp.SGD(model.parameters(), lr=0.1), epoch=1)
    >>> fp.load_checkpoint(path, model, fp.SGD(model.parameters(), lr=0.1))
    {'epoch': 1}
    """
    return read(path, model, optimizer, scheduler)[0]
