"""Callbacks for fit.

The protocol (every method optional; a plain object with some of them is a callback):

- ``set_model(model)``: called first, with the model being trained;
- ``on_train_begin(logs)``: before the first epoch (logs: {}; when fit resumes, it loads
  the callbacks' saved states right after this call);
- ``on_epoch_end(epoch, logs)``: after each epoch (1-based), logs = {"loss", "accuracy",
  "val_loss", "val_accuracy", "lr"}; returning True stops training after this epoch;
- ``on_train_end(logs)``: after the last epoch (logs: the last epoch's metrics).

A callback with ``state_dict()``/``load_state_dict(state)`` has its state in fit's
checkpoints (so early stopping counts on after ``resume``). A callback with a ``monitor``
attribute names one of the logs' keys; fit checks it before training.
"""
from __future__ import annotations
import math

import numpy as np

from . import io
import os
from typing import Any, TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: no import cycle at run time
    from .nn import Module

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint"]


class Callback:
    """A callback that does nothing: subclass it and override what you need.

    ``fit`` calls ``set_model(model)``, then ``on_train_begin(logs)``,
    ``on_epoch_end(epoch, logs)`` after each epoch (returning True stops training) and
    ``on_train_end(logs)``; ``logs`` holds the epoch's metrics (``"loss"``, ``"val_loss"``, …).

    Examples
    --------
    >>> import fastprop as fp
    >>> class Stop(fp.Callback):
    ...     def on_epoch_end(self, epoch, logs):
    ...         return epoch >= 2   # epochs count from 1
    >>> X, y = fp.datasets.xor()
    >>> model = fp.Sequential(fp.Linear(2, 2, rng=0))
    >>> h = fp.fit(model, X, y.astype(int).ravel(), fp.SoftmaxCrossEntropy(),
    ...            fp.SGD(model.parameters(), lr=0.1), epochs=10, progress=False, callbacks=[Stop()])
    >>> len(h["loss"])
    2
    """
    model: Module = None  # type: ignore[assignment]  # set by set_model before any hook

    def set_model(self, model: Module) -> None:
        self.model = model

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> bool:
        return False

    def on_train_end(self, logs: dict[str, Any]) -> None:
        pass


def _mode(mode: Any) -> Any:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return mode


def _monitor(monitor: Any) -> Any:
    if not isinstance(monitor, str):
        raise TypeError(f"monitor must be a str (a key of fit's logs), got {type(monitor).__name__}")
    return monitor


def _value(logs: Any, monitor: Any, who: Any) -> Any:
    if monitor not in logs:
        raise ValueError(f"{who}: unknown monitor {monitor!r}; fit logs {sorted(logs)}")
    v = logs[monitor]
    return None if v is None else float(v)


class EarlyStopping(Callback):
    """Stops fit once ``monitor`` has not improved by more than min_delta for ``patience``
    epochs; with restore_best_weights, the model ends with the state of its best epoch
    (also when training ran to the last epoch).

    Parameters
    ----------
    monitor : str, default "val_loss"
        The key of fit's logs to watch.
    patience : int, default 10
        Epochs without improvement before stopping (>= 0).
    min_delta : float, default 0.0
        The least change that counts as an improvement (>= 0).
    mode : {"min", "max"}, default "min"
        Whether the monitored value should fall or rise.
    restore_best_weights : bool, default True
        End with the model's state of its best epoch.

    Raises
    ------
    TypeError
        If monitor is not a str.
    ValueError
        If patience, min_delta or mode is out of range; from fit, if monitor is not a
        key of its logs.

    Examples
    --------
    >>> import fastprop as fp
    >>> X, y = fp.datasets.spirals(200, classes=2, seed=0)
    >>> X_train, X_val, y_train, y_val = fp.datasets.train_test_split(X, y, seed=0)
    >>> model = fp.Sequential(fp.Linear(2, 3, rng=0), fp.ReLU(), fp.Linear(3, 2, rng=1))
    >>> history = fp.fit(model, X_train, y_train, fp.SoftmaxCrossEntropy(),
    ...                  fp.Adam(model.parameters(), lr=1e-2), epochs=200, batch_size=32,
    ...                  validation_data=(X_val, y_val), progress=False,
    ...                  callbacks=[fp.EarlyStopping(patience=2)])
    >>> len(history.history["loss"]) < 200
    True
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 10, min_delta: float = 0.0,
                 mode: str = "min", restore_best_weights: bool = True) -> None:
        self.monitor = _monitor(monitor)
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}")
        self.patience = int(patience)
        md = float(min_delta)
        if not md >= 0 or math.isinf(md):
            raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
        self.min_delta = md
        self.mode = _mode(mode)
        self.restore_best_weights = bool(restore_best_weights)
        self._reset()

    def _reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.stopped_epoch = 0
        self.best_weights: dict[str, Any] | None = None

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        self._reset()

    def _better(self, v: Any) -> Any:
        if self.mode == "min":
            return v < self.best - self.min_delta
        return v > self.best + self.min_delta

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> bool:
        v = _value(logs, self.monitor, "EarlyStopping")
        if v is not None and self._better(v):
            self.best, self.best_epoch, self.wait = v, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.state_dict()
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.stopped_epoch, self.best_weights = state["stopped_epoch"], state["best_weights"]


class ModelCheckpoint(Callback):
    """Save the model (fp.save) after each epoch, or only when ``monitor`` improved.

    Parameters
    ----------
    path : str or os.PathLike
        The file; it may hold ``{epoch}`` and the logs' keys (``"m-{epoch:03d}.npz"``).
    monitor : str, default "val_loss"
        The key of fit's logs that save_best_only watches.
    save_best_only : bool, default False
        Save only when ``monitor`` improved.
    mode : {"min", "max"}, default "min"
        Whether the monitored value should fall or rise.

    Raises
    ------
    TypeError
        If monitor is not a str.
    ValueError
        If mode is not "min" or "max"; from fit, if monitor is not a key of its logs.

    Examples
    --------
    >>> import os, tempfile, fastprop as fp
    >>> X, y = fp.datasets.xor()
    >>> model = fp.Sequential(fp.Linear(2, 2, rng=0))
    >>> folder = tempfile.mkdtemp()
    >>> cb = fp.ModelCheckpoint(os.path.join(folder, "m-{epoch}.npz"), monitor="loss")
    >>> _ = fp.fit(model, X, y.astype(int).ravel(), fp.SoftmaxCrossEntropy(),
    ...            fp.SGD(model.parameters(), lr=0.1), epochs=2, progress=False, callbacks=[cb])
    >>> sorted(os.listdir(folder))
    ['m-1.npz', 'm-2.npz']
    """

    def __init__(self, path: str | os.PathLike[str], monitor: str = "val_loss",
                 save_best_only: bool = False, mode: str = "min") -> None:
        self.path = path
        self.monitor = _monitor(monitor)
        self.save_best_only = bool(save_best_only)
        self.mode = _mode(mode)
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> bool:
        v = _value(logs, self.monitor, "ModelCheckpoint")
        if self.save_best_only:
            if v is None or not (v < self.best if self.mode == "min" else v > self.best):
                return False
            self.best = v
        path = str(self.path)
        if "{" in path:
            path = path.format(epoch=epoch, **logs)
        io.save(self.model, path)
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
