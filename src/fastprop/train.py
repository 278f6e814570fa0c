"""Training: TrainStep (one C call chain per step), fit with progress, History, predict, evaluate."""
from __future__ import annotations
import math
import sys
import time

import numpy as np

from . import _kernels, infer, ops, plan, registry
from . import checkpoint as _checkpoint
from .autodiff import DPGradient
from .clip import clip_by_norm
from .hessian_free import Closure
from .losses import MSE, HuberLoss, L1Loss, Loss, SigmoidBCE, SmoothL1Loss, SoftmaxCrossEntropy
from .lr_scheduler import ReduceLROnPlateau
from .nn import (Activation, BufferVersions, Linear, Module, Sequential, as_input, busy_error,
                 evaluating, flat_runs)
from .optim import SGD, Adam, AdamW, Optimizer
from typing import Any, Sequence, TYPE_CHECKING
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:  # for annotations only: no import cycle at run time
    from .callbacks import Callback

__all__ = ["TrainStep", "fit", "History", "predict", "predict_proba", "evaluate"]


# the losses network_train runs in C (their kernel names are _kernels.LOSSES)
_FUSED_LOSSES = (SoftmaxCrossEntropy, SigmoidBCE, MSE, L1Loss, HuberLoss, SmoothL1Loss)


def _net_options(loss: Any, dtype: Any) -> Any:
    """The loss's options as Network.train takes them (SmoothL1Loss's beta goes in its delta)."""
    args = loss.kernel_args(dtype)
    if "beta" in args:
        args = {"delta": args["beta"]}
    return args


def _chain_blocks(model: Any, loss: Any) -> Any:
    """The dense blocks of a Sequential of Linear (+ one activation each), or None."""
    if not isinstance(model, Sequential) or type(loss) not in _FUSED_LOSSES:
        return None
    layers = list(model.layers)
    blocks, i = [], 0
    while i < len(layers):
        lin = layers[i]
        if type(lin) is not Linear:
            return None
        act, params = "identity", {}
        if i + 1 < len(layers) and isinstance(layers[i + 1], Activation):
            act, params = layers[i + 1].name, layers[i + 1].params
            i += 1
        i += 1
        bias = lin.bias
        blocks.append((lin.weight.data, None if bias is None else bias.data, lin.weight.grad,
                       None if bias is None else bias.grad, act, params))
    return blocks or None


def _default_loss(loss: Any) -> bool:
    """Whether loss is configured as its class's default instance (the tape's C losses have
    no options: a weighted or smoothed loss takes the modular path)."""
    fresh = type(loss)()
    for key, value in vars(loss).items():
        if key in Loss._workspace_keys or key == "_ready":
            continue
        default = getattr(fresh, key, object())
        if isinstance(value, np.ndarray) or isinstance(default, np.ndarray):
            return False
        if not (value is None and default is None) and value != default:
            return False
    return True


def _tape_for(model: Any, loss: Any) -> Any:
    """The tape of model (fastprop.plan), or None where the modular path must run it: a loss
    the tape does not fuse, several outputs, a model of Python modules only."""
    row = next((r for r in registry.LOSSES if type(loss).__name__ == r.cls and
                type(loss).__module__ == Loss.__module__), None)
    if row is None or not row.tape or not _default_loss(loss):
        return None
    try:
        program = plan.lower(model)
    except plan.Unsupported:
        return None
    if all(o.kind == plan.MODULE for o in program.ops) or model.dtype is None:
        return None
    return _kernels.Tape(program, plan.plan_grads(program), model.dtype, row.code)


class TrainStep:
    """``J = step(x, y)``: forward, loss, backward and the optimizer update.

    For a Sequential of Linear layers each followed by at most one activation, with
    one of fastprop's losses, the whole forward/loss/backward is ONE C call (the layer
    loop is in C, the first layer's ∇x is skipped, gradients are overwritten rather
    than zeroed and accumulated), then the optimizer is one more. Other models take
    the modular path (zero_grad, forward, loss, backward, step). Both give the same
    parameters. An optimizer with ``needs_closure`` (HessianFree) gets
    ``optimizer.step(Closure(model, loss, x, y))`` instead, on the modular path.

    x and floating-point targets must be finite (a ValueError naming them, nothing
    changed). With ``stop_on_nonfinite`` (default) a NaN or infinite loss raises a
    FloatingPointError before the update: the parameters and the optimizer's state are
    those before the step (the fused path has overwritten the gradients).

    DP-SGD: with ``per_example_clip=C`` each example's gradient is clipped to norm C, and
    with ``noise_multiplier=σ`` Gaussian noise σC (drawn in C from a Philox stream keyed by
    ``rng``: a Generator or a seed) is added to their sum before dividing by the batch size
    (``fastprop.autodiff.DPGradient`` gives the exact normalisation; with ``sample_weight``
    example i's gradient is B wᵢ ∇lᵢ / Σ w before clipping, as ``per_example_grads``'). It needs a Sequential (nested) of Linear,
    LowRankLinear, PReLU and the activations.

    With ``comm`` (an mpi4py communicator, or ``distributed.Overlap(comm, bucket_bytes)``)
    the step is data-parallel: each rank passes its own rows, the gradient becomes the mean
    over all ranks' rows before the update, and J is the global mean (fastprop.distributed).
    ``clip_grad_norm`` (a max_norm): the gradients of the model's parameters are clipped
    to that total 2-norm (``clip_grad_norm_``) after the backward pass, before the update.

    Parameters
    ----------
    model : Module
        The model to train.
    loss : Loss
        The loss J(model(x), y).
    optimizer : Optimizer
        The optimizer over the model's parameters.
    stop_on_nonfinite : bool, default True
        Raise FloatingPointError, before the update, on a NaN or infinite loss.
    per_example_clip : float, optional
        DP-SGD: each example's gradient is clipped to this 2-norm.
    noise_multiplier : float, default 0.0
        DP-SGD: Gaussian noise of standard deviation noise_multiplier · per_example_clip
        is added to the clipped sum (needs ``per_example_clip``).
    rng : numpy.random.Generator or int, optional
        The DP-SGD noise's generator or seed.
    comm : mpi4py communicator or distributed.Overlap, optional
        Data-parallel steps over the ranks of ``comm``.
    clip_grad_norm : float, optional
        Clip the gradients to this total 2-norm before the update.

    Raises
    ------
    TypeError
        If model is not a Module, loss not a Loss or optimizer not an Optimizer, or
        per_example_clip is given with an optimizer that needs a closure.
    ValueError
        If noise_multiplier is nonzero without per_example_clip. From a call: if x of
        shape (batch, in_features) or y does not match the model, or holds non-finite
        values (nothing is changed).
    FloatingPointError
        From a call, with stop_on_nonfinite, on a non-finite loss.

    See Also
    --------
    fit : The epoch loop over minibatches, built on TrainStep.

    Notes
    -----
    ``step(x, y)`` takes x of shape (batch, in_features) and y as the loss takes it, and
    returns the batch's mean loss (a float) before the update.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> X, y = fp.datasets.spirals(300, classes=3, seed=0)
    >>> model = fp.Sequential(fp.Linear(2, 32, rng=0), fp.Tanh(), fp.Linear(32, 3, rng=1))
    >>> step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.Adam(model.parameters(), lr=1e-2))
    >>> first = step(X[:64], y[:64])
    >>> for _ in range(20):
    ...     last = step(X[:64], y[:64])
    >>> isinstance(first, float), last < first
    (True, True)
    """

    def __init__(self, model: Module, loss: Loss, optimizer: Optimizer,
                 stop_on_nonfinite: bool = True, per_example_clip: Any = None,
                 noise_multiplier: float = 0.0, rng: np.random.Generator | int | None = None,
                 comm: Any = None, clip_grad_norm: Any = None) -> None:
        if not isinstance(model, Module):
            raise TypeError(f"model must be a fastprop Module, got {type(model).__name__}")
        if not isinstance(loss, Loss):
            raise TypeError(f"loss must be a fastprop loss, got {type(loss).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastprop optimizer, got {type(optimizer).__name__}")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.stop_on_nonfinite = bool(stop_on_nonfinite)
        self.clip_grad_norm = _clip_arg(clip_grad_norm, optimizer)
        self._check_batches = True  # fit checks its whole data set once and turns this off
        self._dp = None  # DP-SGD: the clipped, noised gradient instead of the fused chain
        if per_example_clip is not None:
            if getattr(optimizer, "needs_closure", False):
                raise TypeError(f"per_example_clip cannot be used with "
                                f"{type(optimizer).__name__}, which needs a closure")
            self._dp = DPGradient(model, loss, per_example_clip, noise_multiplier, rng)
        elif noise_multiplier != 0.0:
            raise ValueError("noise_multiplier needs per_example_clip: the noise is "
                             "noise_multiplier × per_example_clip")
        self._compile()
        self._sync = None
        if comm is not None:  # data-parallel over MPI: the gradient is all ranks' mean
            from .distributed import GradientSync
            self._sync = GradientSync(self, comm)

    def _compile(self) -> None:
        self._params = self.model.parameters()
        self._held = BufferVersions(self._params)   # what the runner below was compiled against
        # an optimizer that needs the batch (HessianFree) gets a Closure, on the modular path
        self.closure = bool(getattr(self.optimizer, "needs_closure", False))
        special = self.closure or self._dp is not None
        blocks = None if special else _chain_blocks(self.model, self.loss)
        self._net = _kernels.Network(blocks) if blocks is not None else None
        self._tape = None if blocks is not None or special else _tape_for(self.model, self.loss)
        # fused: the chain's one C call (csrc/network.c); path names the runner in use
        self.fused = self._net is not None
        self.path = "chain" if self.fused else "tape" if self._tape is not None else (
            "closure" if self.closure else "dp" if self._dp is not None else "modular")
        if self._net is not None:
            self._net.loss_options(**_net_options(self.loss, self._net.dtype))
        self._out = None
        self._grads = [g for _, g in flat_runs(self._params)]  # clip_grad_norm's

    @property
    def output(self) -> Any:
        """The model's output of the latest step (before the update; a workspace view)."""
        if self._net is not None:
            return self._net.output
        return self._tape.output if self._tape is not None else self._out

    def __call__(self, x: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
        """One step on (x, y); sample_weight (batch,): the loss is Σ_i w_i l_i / Σ_i w_i."""
        busy = self.model.guard  # model.exclusive(), inlined: this is the per-step path
        if not busy.acquire(False):
            raise busy_error(type(self.model).__name__)
        try:
            if self._sync is not None:  # runs _step, whose hook below averages the gradient
                return self._sync(x, y, sample_weight)
            return self._step(x, y, sample_weight)
        finally:
            busy.release()

    def _step(self, x: Any, y: Any, sample_weight: Any = None) -> Any:
        if self._held.changed():   # O(buffers): one version for a model
            if self._held.moved():
                self._compile()  # the parameters moved to new buffers
            else:
                self._held.renew()
        model = self.model
        if self.closure:
            if sample_weight is not None:
                raise TypeError(f"sample_weight is not supported with {type(self.optimizer).__name__}, "
                                f"whose step evaluates the loss itself (its Closure is unweighted)")
            closure = Closure(model, self.loss, x, y)
            J = self.optimizer.step(closure)
            self._out = closure.output
            return J
        if self._dp is not None:
            x = model.check_input(x)
            if self._check_batches:
                _finite_batch(x, y)
            J, self._out = self._dp(x, y, sample_weight)
            self._diverged(J)
        elif self._net is not None:
            x = as_input(x, self._net.dtype)
            if self._check_batches:
                _finite_batch(x, y)
            J = self._net.train(x, y, self.loss.kernel, sample_weight)
            self._diverged(J)
        elif self._tape is not None and sample_weight is None:
            J = self._tape_step(x, y)
            self._diverged(J)
        else:
            x = model.check_input(x)
            if self._check_batches:
                _finite_batch(x, y)
            out = model.layer_forward(x)
            J = self.loss(out, y, sample_weight)
            self._diverged(J)
            model.zero_grad()
            model.layer_backward(self.loss.backward(), False)
            self._out = out
        if self._sync is not None:  # between backward and update: all ranks' mean, global J
            J = self._sync.before_update(J)
        if self.clip_grad_norm is not None:
            clip_by_norm(self._grads, self.clip_grad_norm, 2.0, False)
        self.optimizer._step_holding(model.guard)
        return J

    def _tape_step(self, x: Any, y: Any) -> Any:
        """Forward, loss and backward of any model on its tape (one C run between the
        callbacks of Python modules); the parameters' gradients overwritten."""
        x = self.model.check_input(x)
        if self._check_batches:
            _finite_batch(x, y)
        return self._tape.train(tuple(x) if isinstance(x, list) else (x,), y, self._tape.loss_code,
                                False, self.stop_on_nonfinite)

    def _diverged(self, J: Any) -> Any:
        if self.stop_on_nonfinite and not math.isfinite(J):
            raise FloatingPointError(
                f"the loss became {J}: the training diverged (try a lower learning rate), or "
                f"pass stop_on_nonfinite=False; this step's update was not applied")


def _clip_arg(clip_grad_norm: Any, optimizer: Any) -> Any:
    if clip_grad_norm is None:
        return None
    if isinstance(clip_grad_norm, bool):
        raise TypeError("clip_grad_norm must be a number (the max_norm) or None, got a bool")
    try:
        v = float(clip_grad_norm)
    except (TypeError, ValueError):
        raise TypeError(f"clip_grad_norm must be a number (the max_norm) or None, got "
                        f"{clip_grad_norm!r}") from None
    if not v >= 0 or math.isinf(v):
        raise ValueError(f"clip_grad_norm must be a finite number >= 0, got {clip_grad_norm!r}")
    if getattr(optimizer, "needs_closure", False):
        raise ValueError("clip_grad_norm does not apply to an optimizer that takes a closure "
                         f"({type(optimizer).__name__})")
    return v


def _finite_batch(x: Any, y: Any) -> Any:
    """x has rows, and x and floating-point targets y hold no NaN or infinity (ValueError).
    x may be several inputs (a list, tuple or dict of arrays: a Graph's)."""
    if isinstance(x, dict):
        xs = [(f"x[{k!r}]", v) for k, v in x.items()]
    elif isinstance(x, (list, tuple)):
        xs = [(f"x[{i}]", v) for i, v in enumerate(x)]
    else:
        xs = [("x", x)]
    for name, xi in xs:
        if xi.ndim == 2 and xi.shape[0] < 1:
            raise ValueError(f"{name} must have at least one row: the loss is a mean")
        _kernels.check_finite(xi, name)
    y = np.asarray(y)
    if y.dtype.kind == "f":
        _kernels.check_finite(y, "y")


class History:
    """Per-epoch metrics of ``fit``: ``history["loss"]``, ``history.val_accuracy``, …

    ``fit`` returns one; it is not made by hand.

    Attributes
    ----------
    history : dict of str to list
        One list per metric, one entry per epoch: ``"loss"``, ``"accuracy"``,
        ``"val_loss"``, ``"val_accuracy"`` (None where it has no meaning),
        ``"samples_per_s"`` and ``"lr"`` (the first group's lr at the epoch's start).
    epoch : list of int
        The epochs run.

    Examples
    --------
    >>> import fastprop as fp
    >>> X, y = fp.datasets.xor()
    >>> model = fp.Sequential(fp.Linear(2, 4, rng=0), fp.Tanh(), fp.Linear(4, 2, rng=1))
    >>> h = fp.fit(model, X, y.astype(int).ravel(), fp.SoftmaxCrossEntropy(),
    ...            fp.SGD(model.parameters(), lr=0.1), epochs=2, progress=False)
    >>> len(h["loss"]), h.loss == h.history["loss"]
    (2, True)
    """

    def __init__(self) -> None:
        self.history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": [],
                        "samples_per_s": [], "lr": []}
        self.epoch = []

    def __getitem__(self, key: Any) -> Any:
        return self.history[key]

    def __getattr__(self, key: Any) -> Any:
        try:
            return self.__dict__["history"][key]
        except KeyError:
            raise AttributeError(key) from None

    def __repr__(self) -> str:
        last = {k: v[-1] for k, v in self.history.items() if v and v[-1] is not None}
        return f"History(epochs={len(self.epoch)}, last={last})"


class _Progress:
    """tqdm when installed, else one line rewritten in place on stderr."""

    def __init__(self, enabled: Any, total: Any, epochs: Any) -> None:
        self.enabled, self.total, self.epochs = enabled, total, epochs
        self.bar = None
        self.last_print = 0.0
        try:
            import tqdm  # noqa: F401
            self.tqdm = tqdm.tqdm if enabled else None
        except ImportError:
            self.tqdm = None

    def start(self, epoch: Any) -> None:
        self.epoch, self.done, self.t0 = epoch, 0, time.perf_counter()
        if self.enabled and self.tqdm:
            self.bar = self.tqdm(total=self.total, desc=f"epoch {epoch}/{self.epochs}",
                                 unit="sample", unit_scale=True, leave=True, file=sys.stderr)

    def update(self, n: Any, loss: Any, acc: Any, force: bool = False) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            now = time.perf_counter()
            if force or now - self.last_print > 0.1:
                post = {"loss": f"{loss:.4f}"}
                if acc is not None:
                    post["acc"] = f"{100 * acc:.1f}%"
                self.bar.set_postfix(post, refresh=False)
                self.last_print = now
            return
        now = time.perf_counter()
        if force or now - self.last_print > 0.1:
            rate = self.done / max(now - self.t0, 1e-9)
            frac = self.done / self.total
            bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
            acc_s = "" if acc is None else f" acc {100 * acc:5.1f}%"
            sys.stderr.write(f"\repoch {self.epoch}/{self.epochs} [{bar}] loss {loss:.4f}{acc_s} "
                             f"{rate:,.0f} samples/s")
            sys.stderr.flush()
            self.last_print = now

    def end(self, val: Any = None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            if val:
                self.bar.set_postfix_str(self.bar.postfix + ", " + val if self.bar.postfix else val)
            self.bar.close()
            self.bar = None
        else:
            sys.stderr.write((" " + val if val else "") + "\n")
            sys.stderr.flush()


def _batch_size(batch_size: Any) -> Any:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _dataset(model: Any, X: Any, y: Any, name: str = "X") -> Any:
    X = as_input(X, model.dtype or np.float32, name)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {X.shape}")
    if model.in_features is not None and X.shape[1] != model.in_features:
        raise ValueError(f"{name} has {X.shape[1]} features, expected {model.in_features}")
    y = np.asarray(y)
    if y.ndim == 0 or y.shape[0] != X.shape[0]:
        raise ValueError(f"{name} has {X.shape[0]} samples but its targets have shape {y.shape}")
    _kernels.check_finite(X, name)
    return X, np.ascontiguousarray(y)


def _check_targets(loss: Any, y: Any, n_out: Any, name: str = "y") -> Any:
    """The whole target array checked once, before any training: so a bad target found in a
    later batch cannot leave the model half-trained."""
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be real-valued, got dtype {y.dtype}")
    if isinstance(loss, SoftmaxCrossEntropy) and y.ndim == 1:
        if y.dtype.kind not in "iu":
            raise TypeError(f"{name} holds class labels, which must be integers, got dtype {y.dtype}")
        if n_out is not None and y.size and (y.min() < 0 or y.max() >= n_out):
            bad = int(np.argmax((y < 0) | (y >= n_out)))
            raise ValueError(f"{name}[{bad}] = {y[bad]} is not a class label in [0, {n_out})")
        return
    width = None if n_out is None else loss.target_width(n_out)
    if width is not None and y.shape[1:] != (width,):
        raise ValueError(f"{name} has shape {y.shape}, expected ({y.shape[0]}, {width}) "
                         f"for a model with {n_out} outputs")
    if y.dtype.kind == "f":
        _kernels.check_finite(y, name)
    if isinstance(loss, SigmoidBCE):
        _kernels.check_range(np.asarray(y, np.float64), name, 0, 1,
                             "is outside [0, 1] (BCE targets are probabilities)")


def fit(model: Module, X: ArrayLike, y: ArrayLike, loss: Loss, optimizer: Optimizer,
        epochs: int = 10, batch_size: int = 64, shuffle: bool = True, seed: int = 0,
        validation_data: tuple[ArrayLike, ArrayLike] | None = None, progress: bool = True,
        stop_on_nonfinite: bool = True, drop_last: bool = False,
        sample_weight: ArrayLike | None = None, comm: Any = None,
        callbacks: Sequence[Callback] | None = None, scheduler: Any = None,
        scheduler_interval: str = "epoch", checkpoint: Any = None, resume: Any = None) -> History:
    """Trains model on (X, y) with minibatches; returns a History of per-epoch metrics.

    Each step is a ``TrainStep`` (the fused C path where the model allows it). The data
    is shuffled once per epoch into preallocated buffers (seeded by ``seed``), so the
    batches are contiguous views and a step allocates nothing. With
    ``stop_on_nonfinite`` (default) a NaN or infinite loss stops training with a
    FloatingPointError that says where, instead of training on garbage; the model keeps
    the parameters of the last finite step. ``drop_last``
    skips the last partial batch of each epoch (as torch's DataLoader). ``sample_weight``
    (samples,) weights each sample's loss (shuffled with it; each batch's loss is its weighted
    mean, and the epoch's "loss" the weighted mean over the epoch).

    With ``comm`` (an mpi4py communicator; every rank passes the same X, y and seed) the
    training is data-parallel (fastprop.distributed): rank 0's parameters and optimizer
    state are broadcast first, each batch is split across the ranks and its gradient is
    the mean over the whole batch, the validation metrics are reduced over the ranks, and
    only rank 0 shows progress.
    ``callbacks``: objects with some of ``set_model``, ``on_train_begin(logs)``,
    ``on_epoch_end(epoch, logs)`` (True stops) and ``on_train_end(logs)`` (see
    fastprop.callbacks). ``scheduler`` (fastprop.lr_scheduler, over this optimizer) steps
    after each epoch (ReduceLROnPlateau with val_loss, or loss without validation data)
    or, with ``scheduler_interval="step"``, after each batch. ``history["lr"]`` holds
    the first group's lr at the start of each epoch. ``checkpoint=path`` writes a
    checkpoint (save_checkpoint plus fit's own state: epoch, shuffling RNG, history,
    callbacks) after each epoch; ``resume=path`` loads one and continues with the next
    epoch, so a killed fit resumed gives bitwise the parameters of an uninterrupted one.

    Parameters
    ----------
    model : Module
        The model to train (in place).
    X : array_like of shape (samples, in_features)
        The inputs, converted to the model's dtype.
    y : array_like of shape (samples,) or (samples, out_features)
        The targets: integer labels for SoftmaxCrossEntropy, an array otherwise.
    loss : Loss
        The loss.
    optimizer : Optimizer
        The optimizer over the model's parameters.
    epochs : int, default 10
        Passes over the data.
    batch_size : int, default 64
        Rows per step.
    shuffle : bool, default True
        Shuffle the rows once per epoch.
    seed : int, default 0
        The shuffling's seed.
    validation_data : tuple (X_val, y_val), optional
        Evaluated after each epoch (``val_loss``, ``val_accuracy``).
    progress : bool, default True
        Show a progress bar (tqdm when installed).
    stop_on_nonfinite : bool, default True
        Stop with a FloatingPointError on a non-finite loss.
    drop_last : bool, default False
        Skip the last partial batch of each epoch.
    sample_weight : array_like of shape (samples,), optional
        Per-sample weights of the loss.
    comm : mpi4py communicator, optional
        Data-parallel training over its ranks.
    callbacks : sequence of Callback, optional
        Called at the start, after each epoch and at the end.
    scheduler : LRScheduler, optional
        A learning-rate scheduler over ``optimizer``.
    scheduler_interval : {"epoch", "step"}, default "epoch"
        When the scheduler steps.
    checkpoint : str or path, optional
        A checkpoint file written after each epoch.
    resume : str or path, optional
        A checkpoint file (written by ``checkpoint=``) to continue from.

    Returns
    -------
    History
        The per-epoch metrics: ``history.history["loss"]``, ``["accuracy"]``,
        ``["val_loss"]``, ``["val_accuracy"]``, ``["samples_per_s"]``, ``["lr"]``.

    Raises
    ------
    TypeError
        If model, loss or optimizer has the wrong type.
    ValueError
        If X and y do not match each other or the model, epochs or batch_size is not a
        valid integer, or validation_data is not a pair.
    FloatingPointError
        With stop_on_nonfinite, on a non-finite loss.

    See Also
    --------
    TrainStep : One step, as fit runs it.
    evaluate : The loss and accuracy over a data set.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> X, y = fp.datasets.spirals(300, classes=3, seed=0)
    >>> model = fp.Sequential(fp.Linear(2, 32, rng=0), fp.Tanh(), fp.Linear(32, 3, rng=1))
    >>> history = fp.fit(model, X, y, loss=fp.SoftmaxCrossEntropy(),
    ...                  optimizer=fp.Adam(model.parameters(), lr=1e-2),
    ...                  epochs=3, batch_size=32, progress=False, validation_data=(X, y))
    >>> sorted(history.history)
    ['accuracy', 'loss', 'lr', 'samples_per_s', 'val_accuracy', 'val_loss']
    >>> len(history.history["loss"])
    3
    """
    X, y = _dataset(model, X, y)
    w = _sample_weights(sample_weight, X.shape[0], model.dtype)
    batch_size = _batch_size(batch_size)
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be a pair (X_val, y_val)")
        Xv, yv = _dataset(model, *validation_data, name="X_val")
        _check_targets(loss, yv, model.out_features, "y_val")
    _check_targets(loss, y, model.out_features)
    callbacks = _fit_callbacks(callbacks, scheduler, scheduler_interval, optimizer,
                               validation_data is not None)
    step = TrainStep(model, loss, optimizer, stop_on_nonfinite, comm=comm)
    if comm is not None:
        from . import distributed
        distributed.check_same_data(comm, X, y)
        distributed.broadcast_parameters(model, comm)
        distributed.broadcast_optimizer_state(optimizer, comm)
        progress = progress and distributed.is_root(comm)
    step._check_batches = False  # X and y were checked whole above (_dataset, _check_targets)
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    n_used = n - n % batch_size if drop_last and n >= batch_size else n
    Xs, ys = np.empty_like(X), np.empty_like(y)
    ws = None if w is None else np.empty_like(w)
    weighted = w is not None or getattr(loss, "weight", None) is not None
    history = History()
    for cb in callbacks:
        if callable(getattr(cb, "set_model", None)):
            cb.set_model(model)
        if callable(getattr(cb, "on_train_begin", None)):
            cb.on_train_begin({})
    first, stopped = 1, False
    if resume is not None:
        first, stopped = _resume(resume, model, optimizer, scheduler, rng, history, callbacks)
    per_step = scheduler is not None and scheduler_interval == "step"
    plateau_key = "val_loss" if validation_data is not None else "loss"
    logs = {}
    bar = _Progress(bool(progress), n_used, epochs)
    fast = _CEpoch.make(step, loss, optimizer, y, weighted or comm is not None or per_step)
    for epoch in range(first, epochs + 1):
        if stopped:
            break
        lr = optimizer.param_groups[0]["lr"]
        order = rng.permutation(n) if shuffle else np.arange(n)
        np.take(X, order, axis=0, out=Xs)
        np.take(y, order, axis=0, out=ys)
        if ws is not None:
            np.take(w, order, out=ws)
        bar.start(epoch)
        total_loss, correct, seen, has_acc, loss_mass = 0.0, 0.0, 0, False, 0.0
        mine = 0  # this rank's rows (all of them without comm)
        t0 = time.perf_counter()
        a = 0
        if fast is not None:
            fast.epoch(ys)
        while a < n_used:
            if fast is not None and fast.ready():   # many steps in one C call (_CEpoch)
                total_loss, correct, rows, bad = fast.run(Xs, a, n_used, batch_size, total_loss, correct)
                a, seen, mine, loss_mass = a + rows, seen + rows, mine + rows, loss_mass + rows
                has_acc = has_acc or (rows > 0 and fast.labels is not None)
                if rows:
                    bar.update(rows, total_loss / max(loss_mass, 1e-300),
                               correct / mine if has_acc else None, force=a == n_used)
                if rows and not bad:
                    continue
                # the batch at a diverged (nothing applied), or one C does not run (a row alone
                # under a training BatchNorm1d): the step below takes it, or raises fit's error
            b = min(a + batch_size, n_used)
            a_next = b
            wb = None if ws is None else ws[a:b]
            mass = loss.weight_total(ys[a:b], wb) if weighted else b - a
            if not mass > 0:  # a batch of zero weights has no mean and adds nothing: skipped
                a = a_next
                continue
            lo, hi = (a, b) if comm is None else distributed.rows_of(a, b, comm)
            try:
                J = step(Xs[lo:hi], ys[lo:hi], None if ws is None else ws[lo:hi])
            except (FloatingPointError, ValueError) as e:  # divergence, or a bad target
                bar.end()
                kind = FloatingPointError if isinstance(e, FloatingPointError) else ValueError
                raise kind(f"epoch {epoch}, samples {a}:{b}: {e}") from None
            if per_step:
                scheduler.step()
            acc = loss.accuracy(step.output, ys[lo:hi]) if hi > lo else None
            total_loss += J * mass  # J is the whole batch's mean, also with comm
            seen, mine = seen + b - a, mine + hi - lo
            loss_mass += mass
            if acc is not None:
                correct, has_acc = correct + acc * (hi - lo), True
            bar.update(b - a, total_loss / max(loss_mass, 1e-300), correct / mine if has_acc else None,
                       force=b == n_used)
            a = a_next
        elapsed = time.perf_counter() - t0
        if comm is not None:
            correct, has_acc = distributed.sum_over_ranks(comm, correct, has_acc)
        epoch_acc = correct / max(seen, 1) if has_acc else None
        history.history["loss"].append(total_loss / loss_mass if loss_mass > 0 else 0.0)
        history.history["accuracy"].append(epoch_acc)
        history.history["samples_per_s"].append(seen / max(elapsed, 1e-12))
        val = None
        if validation_data is not None:
            scores = (evaluate(model, Xv, yv, loss) if comm is None
                      else distributed.evaluate(model, Xv, yv, loss, comm))
            history.history["val_loss"].append(scores["loss"])
            history.history["val_accuracy"].append(scores["accuracy"])
            val = f"val_loss {scores['loss']:.4f}" + (
                "" if scores["accuracy"] is None else f" val_acc {100 * scores['accuracy']:.1f}%")
        history.history["lr"].append(lr)
        history.epoch.append(epoch)
        bar.end(val)
        logs = {k: history.history[k][-1] for k in ("loss", "accuracy", "val_loss", "val_accuracy",
                                                     "lr") if history.history[k]}
        if scheduler is not None and not per_step:
            if isinstance(scheduler, ReduceLROnPlateau):
                scheduler.step(logs[plateau_key])
            else:
                scheduler.step()
        for cb in callbacks:  # every callback sees the epoch, even after one said stop
            if callable(getattr(cb, "on_epoch_end", None)) and cb.on_epoch_end(epoch, logs):
                stopped = True
        if checkpoint is not None and (comm is None or distributed.is_root(comm)):  # rank 0 writes
            _checkpoint.write(checkpoint, model, optimizer, scheduler, fit_state={
                "epoch": epoch, "stopped": stopped, "rng": rng.bit_generator.state,
                "history": history.history, "epochs": history.epoch,
                "callbacks": [cb.state_dict() if callable(getattr(cb, "state_dict", None))
                              else None for cb in callbacks]})
    for cb in callbacks:
        if callable(getattr(cb, "on_train_end", None)):
            cb.on_train_end(logs)
    return history


class _CEpoch:
    """fit's batches in C (``_kernels.network_fit``, or ``tape_fit`` for a tape of C ops with
    one input), each C call ~0.1 s of steps: softmax cross-entropy on int labels or MSE
    (their default options), SGD or Adam / AdamW (no amsgrad) with one group over one flat
    run. The same bits as TrainStep's loop: the same kernels in the same order, the sums made
    as fit makes them. ``ready()`` is False
    where a step must go through TrainStep (the optimizer's first step, moved parameters, ...)."""

    def __init__(self, step: Any, optimizer: Any, labels: Any) -> None:
        self.step, self.optimizer, self.labels = step, optimizer, labels
        self.k = 4   # steps per call, then sized to ~0.1 s

    @staticmethod
    def make(step: Any, loss: Any, optimizer: Any, y: Any, other: Any) -> Any:
        if other or step._sync is not None or step.clip_grad_norm is not None:
            return None
        if step.path == "tape":
            if step._tape.has_callbacks or step._tape.n_inputs != 1:
                return None
        elif step.path != "chain":
            return None
        if type(loss) is SoftmaxCrossEntropy and y.ndim == 1 and _default_loss(loss):
            labels = True
        elif type(loss) is MSE:
            labels = None
        else:
            return None
        if type(optimizer) not in (SGD, Adam, AdamW) or len(optimizer.param_groups) != 1:
            return None
        return _CEpoch(step, optimizer, labels)

    def epoch(self, ys: Any) -> Any:
        if self.labels is not None:
            self.labels = np.ascontiguousarray(ys, np.int64)
        self.target = None if self.labels is not None else ys

    def ready(self) -> Any:
        return _flat_update(self.step, self.optimizer) is not None

    def run(self, Xs: Any, a: Any, n_used: Any, batch_size: Any, total_loss: Any,
            correct: Any) -> Any:
        """Steps from row a on, for ~0.1 s; returns (total_loss, correct, rows, diverged)."""
        opt, step = self.optimizer, self.step
        slot = opt._slots[0]
        busy = step.model.guard
        if not busy.acquire(False):
            raise busy_error(type(step.model).__name__)
        try:
            t = time.perf_counter()
            run, runner = ((_kernels.network_fit, step._net) if step._net is not None
                           else (_kernels.tape_fit, step._tape))
            total_loss, correct, steps, bad, adam_step = run(
                runner, *_flat_update(step, opt), Xs, self.labels, self.target, a, n_used,
                batch_size, self.k, step.stop_on_nonfinite, total_loss, correct)
            t = time.perf_counter() - t
        finally:
            busy.release()
        slot.step += steps
        opt.step_count += steps
        if steps:
            self.k = max(1, min(1 << 20, int(self.k * 0.1 / max(t, 1e-9))))
        rows = (bad if bad >= 0 else min(a + steps * batch_size, n_used)) - a
        return total_loss, correct, rows, bad >= 0


def _flat_update(step: Any, opt: Any) -> Any:
    """(FlatUpdate, its options) when opt's update of step's model can run inside fit's C epoch:
    SGD after its first step, or Adam / AdamW without amsgrad, in one group over one flat run,
    taking no guard but the model's; else None. (Inside TrainStep's call it saved nothing: the
    ~1 us this check costs is what the Python update costs around its C pass.)"""
    if type(opt) not in (SGD, Adam, AdamW) or len(opt._slots) != 1:
        return None
    slot, group = opt._slots[0], opt.param_groups[0]
    guards = opt._guards   # the Python step's (id(held), the other guards it takes), or None
    if (step._held.changed() or opt._held.changed() or slot.calls is None
            or len(slot.calls) != 1 or type(slot.calls[0]) is not _kernels.FlatUpdate
            or slot.fresh or opt._state_names(group) is not slot.key
            or group.get("amsgrad", False) or (step._net is None and step._tape is None)
            or guards is None or guards[0] != id(step.model.guard) or guards[1]):
        return None
    if type(opt) is SGD:
        return slot.calls[0], {"kind": 0, "lr": group["lr"], "momentum": group["momentum"],
                               "dampening": group["dampening"], "nesterov": group["nesterov"],
                               "weight_decay": group["weight_decay"]}
    b1, b2 = group["betas"]
    return slot.calls[0], {"kind": 1, "lr": group["lr"], "beta1": b1, "beta2": b2,
                           "eps": group["eps"], "weight_decay": group["weight_decay"],
                           "decoupled": opt.decoupled, "step": slot.step}


_LOG_KEYS = ("loss", "accuracy", "lr")


def _fit_callbacks(callbacks: Any, scheduler: Any, interval: Any, optimizer: Any,
                   has_validation: Any) -> Any:
    """fit's callbacks as a list, with their monitors and the scheduler checked."""
    callbacks = [] if callbacks is None else list(callbacks)
    keys = _LOG_KEYS + (("val_loss", "val_accuracy") if has_validation else ())
    for i, cb in enumerate(callbacks):
        monitor = getattr(cb, "monitor", None)
        if monitor is not None and monitor not in keys:
            raise ValueError(f"callbacks[{i}] ({type(cb).__name__}) monitors {monitor!r}, which "
                             f"fit does not log: it logs {list(keys)}"
                             + ("" if has_validation else " (val_* need validation_data)"))
    if interval not in ("epoch", "step"):
        raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {interval!r}")
    if scheduler is not None:
        if not callable(getattr(scheduler, "step", None)):
            raise TypeError(f"scheduler must be a fastprop.lr_scheduler scheduler, got "
                            f"{type(scheduler).__name__}")
        if getattr(scheduler, "optimizer", None) is not optimizer:
            raise ValueError("scheduler belongs to another optimizer than fit's optimizer")
        if isinstance(scheduler, ReduceLROnPlateau) and interval == "step":
            raise ValueError("ReduceLROnPlateau steps once per epoch (with the monitored "
                             "value): use scheduler_interval='epoch'")
    return callbacks


def _resume(path: Any, model: Any, optimizer: Any, scheduler: Any, rng: Any, history: Any,
            callbacks: Any) -> Any:
    """Loads fit's checkpoint; returns (first epoch to run, whether training had stopped)."""
    def check(state: Any) -> Any:
        if state is None:
            raise ValueError(f"{path} was written by save_checkpoint, not by fit(checkpoint=...): "
                             f"it has no epoch and shuffling state to resume from")
        if len(state["callbacks"]) != len(callbacks):
            raise ValueError(f"{path} holds the states of {len(state['callbacks'])} callbacks, "
                             f"fit got {len(callbacks)}")

    _, state = _checkpoint.read(path, model, optimizer, scheduler, check)
    saved = state["callbacks"]
    rng.bit_generator.state = state["rng"]
    for key, values in state["history"].items():
        history.history[key] = list(values)
    history.epoch = list(state["epochs"])
    for cb, s in zip(callbacks, saved):
        if s is not None and callable(getattr(cb, "load_state_dict", None)):
            cb.load_state_dict(s)
    return state["epoch"] + 1, state["stopped"]


def predict(model: Module, X: ArrayLike, batch_size: int = 4096) -> NDArray[Any]:
    """Return the model's outputs for X, computed in chunks in eval mode.

    The modules' training modes are restored after.

    Parameters
    ----------
    model : Module
        The model.
    X : array_like of shape (samples, in_features)
        The inputs, converted to the model's dtype.
    batch_size : int, default 4096
        Rows per forward pass.

    Returns
    -------
    ndarray of shape (samples, out_features)
        The outputs, a new array of the model's dtype.

    Raises
    ------
    ValueError
        If X is not 2-D, has no samples or does not match the model, or batch_size is
        not a positive integer.

    See Also
    --------
    predict_proba : The class probabilities.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(2, 8, rng=0), fp.ReLU(), fp.Linear(8, 3, rng=1))
    >>> fp.predict(model, np.zeros((4, 2))).shape
    (4, 3)
    """
    X = as_input(X, model.dtype or np.float32)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (samples, features), got shape {X.shape}")
    batch_size = _batch_size(batch_size)
    with evaluating(model):
        run = infer.runner(model)
        if run is None or run.n_inputs != 1 or X.shape[0] == 0:
            chunks = [model.forward(X[a:a + batch_size]) for a in range(0, X.shape[0], batch_size)]
            if not chunks:
                raise ValueError("X has no samples")
            return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        return _predict(model, run, X, batch_size)


def _predict(model: Any, run: Any, X: Any, batch_size: Any) -> Any:
    with model.exclusive():
        X = model.check_input(X)
        out = np.empty((X.shape[0], run.n_out), run.dtype)   # the only allocation
        for a in range(0, X.shape[0], batch_size):   # forward-only, on the tape
            run.run((X[a:a + batch_size],), out[a:a + batch_size])
        return out


def predict_proba(model: Module, X: ArrayLike, batch_size: int = 4096) -> NDArray[Any]:
    """Return class probabilities: softmax of the outputs, or sigmoid for one output column.

    Parameters
    ----------
    model : Module
        The model (its outputs are logits).
    X : array_like of shape (samples, in_features)
        The inputs.
    batch_size : int, default 4096
        Rows per forward pass.

    Returns
    -------
    ndarray of shape (samples, out_features)
        The probabilities (each row sums to 1 for several columns), of the model's dtype.

    Raises
    ------
    ValueError
        As :func:`predict`.

    See Also
    --------
    predict : The raw outputs.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(2, 8, rng=0), fp.ReLU(), fp.Linear(8, 3, rng=1))
    >>> fp.predict_proba(model, np.zeros((2, 2))).sum(axis=1).round(6)
    array([1., 1.], dtype=float32)
    """
    out = predict(model, X, batch_size)
    if out.shape[1] == 1:
        return ops.activation_forward(out, "sigmoid", out=out)
    return ops.softmax(out, out=out)


def evaluate(model: Module, X: ArrayLike, y: ArrayLike, loss: Loss, batch_size: int = 4096,
             sample_weight: ArrayLike | None = None) -> dict[str, float]:
    """Return the mean loss and the accuracy over (X, y), in eval mode.

    The modules' training modes are restored after.

    Parameters
    ----------
    model : Module
        The model.
    X : array_like of shape (samples, in_features)
        The inputs.
    y : array_like
        The targets, as the loss takes them.
    loss : Loss
        The loss.
    batch_size : int, default 4096
        Rows per forward pass.
    sample_weight : array_like of shape (samples,), optional
        Row weights: the loss is the weighted mean Σ_i w_i l_i / Σ_i w_i (the accuracy
        stays the plain fraction).

    Returns
    -------
    dict
        ``{"loss": mean loss, "accuracy": fraction correct, or None for MSE}``.

    Raises
    ------
    ValueError
        If X and y do not match each other or the model, or sample_weight has the
        wrong shape.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> X, y = fp.datasets.spirals(300, classes=3, seed=0)
    >>> model = fp.Sequential(fp.Linear(2, 8, rng=0), fp.ReLU(), fp.Linear(8, 3, rng=1))
    >>> sorted(fp.evaluate(model, X, y, fp.SoftmaxCrossEntropy()))
    ['accuracy', 'loss']
    """
    X, y = _dataset(model, X, y)
    batch_size = _batch_size(batch_size)
    w = _sample_weights(sample_weight, X.shape[0], model.dtype)
    with model.exclusive(), evaluating(model):
        return _evaluate(model, X, y, loss, batch_size, w)


def _sample_weights(sample_weight: Any, n: Any, dtype: Any) -> Any:
    """None, or the (n,) weights of a whole data set checked once (finite, ≥ 0, a positive sum)."""
    if sample_weight is None:
        return None
    w = _kernels.check_weights(sample_weight, "sample_weight", n, "one weight per sample")
    if not w.sum() > 0:
        raise ValueError("sample_weight sums to 0: the weighted mean is undefined")
    return w.astype(dtype or np.float32)


def _evaluate(model: Any, X: Any, y: Any, loss: Any, batch_size: Any,
              sample_weight: Any = None) -> Any:
    total, correct, n, mass = 0.0, 0.0, X.shape[0], 0.0
    has_acc = True
    weighted = sample_weight is not None or getattr(loss, "weight", None) is not None
    run = infer.runner(model)
    run = run if run is not None and run.n_inputs == 1 else None
    for a in range(0, n, batch_size):
        b = min(a + batch_size, n)
        xb = model.check_input(X[a:b])
        out = model.layer_forward(xb) if run is None else run.run((xb,))
        wb = None if sample_weight is None else sample_weight[a:b]
        m = loss.weight_total(y[a:b], wb) if weighted else b - a
        if m > 0:  # a chunk whose weights are all 0 adds nothing (its own mean is undefined)
            total += loss(out, y[a:b], wb) * m
            mass += m
        acc = loss.accuracy(out, y[a:b])
        has_acc = acc is not None
        if has_acc:
            correct += acc * (b - a)
    if not mass > 0:
        raise ValueError("the weights of every sample sum to 0: the weighted mean is undefined")
    return {"loss": total / mass, "accuracy": correct / n if has_acc else None}
