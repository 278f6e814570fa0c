"""Optimizers over flat buffers: one C call per ``step()`` for a model's parameters.

Update rules are torch.optim's (SGD with momentum, dampening, Nesterov and weight
decay; Adam with L2 weight decay; AdamW with decoupled weight decay).
"""
import numpy as np

from ._kernels import FlatUpdate
from .nn import Parameter, _Exclusive, flat_runs, flatten_count, guard_count

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


def _check_number(name, value, low=0.0, high=None, high_open=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or v < low or (high is not None and (v >= high if high_open else v > high)):
        bound = "" if high is None else f" and {'<' if high_open else '<='} {high}"
        raise ValueError(f"{name} must be a finite number >= {low}{bound}, got {value!r}")
    return v


class Optimizer:
    """Holds parameters as flat runs (one per consecutive block of one model's buffer)."""

    def __init__(self, params, lr):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"parameter {i} is a {type(p).__name__}, not a fastprop Parameter")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("some parameters appear more than once")
        self.params = params
        self.lr = _check_number("lr", lr)
        self.step_count = 0
        self._runs = flat_runs(params)
        self._buffers = [p._flat for p in params]
        self._flattens = flatten_count()
        self._guards = None  # ((guard_count(), id(held)), the guards a step takes)

    def _current_runs(self):
        """The flat runs; an error if a parameter was moved to a new buffer since."""
        if self._flattens == flatten_count():
            return self._runs
        if any(p._flat is not f for p, f in zip(self.params, self._buffers)):
            raise RuntimeError("the model's parameters were moved to new buffers after the "
                               "optimizer was created (e.g. by nesting the model in another "
                               "Sequential); create the optimizer after building the model")
        self._flattens = flatten_count()
        return self._runs

    def zero_grad(self):
        for _, grad in self._current_runs():
            grad.fill(0)

    def step(self):
        """One update of every parameter; a RuntimeError while another thread uses their model."""
        self._step_holding(None)

    def _step_holding(self, held):
        """step() for a caller that already holds the guard `held` (TrainStep holds its model's)."""
        key = (guard_count(), id(held))
        if self._guards is None or self._guards[0] != key:  # per step: cached, not recomputed
            guards = []
            for p in self.params:
                g = p._guard
                if g is not None and g is not held and all(g is not h for h in guards):
                    guards.append(g)
            self._guards = (key, guards)
        guards = self._guards[1]
        if not guards:
            self._step()
            return
        with _Exclusive(guards, "model"):
            self._step()

    def state_arrays(self):
        """The optimizer's state buffers, one list per run (for tests and checkpoints)."""
        raise NotImplementedError


class SGD(Optimizer):
    """θ ← θ − lr·g with momentum, dampening, Nesterov and weight decay, as torch.optim.SGD."""

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0):
        super().__init__(params, lr)
        self.momentum = _check_number("momentum", momentum)
        self.dampening = _check_number("dampening", dampening)
        self.weight_decay = _check_number("weight_decay", weight_decay)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening = 0")
        self.momentum_buffers = [np.zeros_like(d) for d, _ in self._runs] if self.momentum else []
        self._updates = [FlatUpdate(d, g, self.momentum_buffers[i] if self.momentum else None)
                         for i, (d, g) in enumerate(self._runs)]

    def _step(self):
        self._current_runs()
        first = self.step_count == 0
        for update in self._updates:
            update.sgd(self.lr, self.momentum, self.dampening, self.nesterov, self.weight_decay,
                       first)
        self.step_count += 1

    def state_arrays(self):
        return [self.momentum_buffers]


class Adam(Optimizer):
    """Adam with bias correction, as torch.optim.Adam (weight_decay is an L2 term in g)."""
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_check_number("beta1", betas[0], 0.0, 1.0, True),
                      _check_number("beta2", betas[1], 0.0, 1.0, True))
        self.eps = _check_number("eps", eps)
        self.weight_decay = _check_number("weight_decay", weight_decay)
        self.exp_avg = [np.zeros_like(d) for d, _ in self._runs]
        self.exp_avg_sq = [np.zeros_like(d) for d, _ in self._runs]
        self._updates = [FlatUpdate(d, g, m, v) for (d, g), m, v in
                         zip(self._runs, self.exp_avg, self.exp_avg_sq)]

    def _step(self):
        self._current_runs()
        t = self.step_count + 1
        for update in self._updates:
            update.adam(t, self.lr, self.betas[0], self.betas[1], self.eps, self.weight_decay,
                        self.decoupled)
        self.step_count = t

    def state_arrays(self):
        return [self.exp_avg, self.exp_avg_sq]


class AdamW(Adam):
    """Adam with decoupled weight decay (θ ← θ(1 − lr·λ) first), as torch.optim.AdamW."""
    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)
