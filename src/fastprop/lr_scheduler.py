"""Learning-rate schedulers with torch.optim.lr_scheduler's signatures and sequences.

Each writes every parameter group's ``lr`` (and OneCycleLR the momentum or beta1) at
construction and at each ``step()``; the formulas are torch's, in the same (recursive)
form, so the lr sequences agree to the last bits. ``state_dict()`` holds plain numbers
and lists (no optimizer, no functions), so a checkpoint can store it.
"""
from __future__ import annotations
import math
import types
from bisect import bisect_right
from collections import Counter

from .optim import Optimizer
from typing import Any, Callable, Mapping, Sequence

__all__ = ["LRScheduler", "LambdaLR", "StepLR", "MultiStepLR", "ExponentialLR",
           "CosineAnnealingLR", "LinearLR", "OneCycleLR", "SequentialLR", "ReduceLROnPlateau"]


def _optimizer(optimizer: Any) -> Any:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a fastprop optimizer, got {type(optimizer).__name__}")
    return optimizer


def _positive_int(name: Any, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _per_group(name: Any, optimizer: Any, value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        if len(value) != len(optimizer.param_groups):
            raise ValueError(f"expected {len(optimizer.param_groups)} values for {name}, got {len(value)}")
        return list(value)
    return [value] * len(optimizer.param_groups)


class LRScheduler:
    """The base: ``step()`` advances ``last_epoch`` and writes get_lr() into the groups.

    Subclasses define ``get_lr()``; the built-in schedules below are its subclasses.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer whose groups' ``lr`` the schedule sets.
    last_epoch : int, default -1
        The index of the last epoch (-1: start afresh, from each group's current lr).

    Raises
    ------
    TypeError
        If optimizer is not a fastprop optimizer.
    ValueError
        If last_epoch is not an integer >= -1.
    KeyError
        If resuming (last_epoch >= 0) and a group has no ``initial_lr``.

    Examples
    --------
    >>> import fastprop as fp
    >>> from fastprop.lr_scheduler import LRScheduler
    >>> class Halving(LRScheduler):
    ...     def get_lr(self):
    ...         return [base * 0.5 ** self.last_epoch for base in self.base_lrs]
    >>> sched = Halving(fp.SGD(fp.Linear(2, 1, rng=0).parameters(), lr=1.0))
    >>> sched.step(); sched.step()
    >>> sched.get_last_lr()
    [0.25]
    """
    _is_initial = False

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        self.optimizer = _optimizer(optimizer)
        if isinstance(last_epoch, bool) or not isinstance(last_epoch, int) or last_epoch < -1:
            raise ValueError(f"last_epoch must be an integer >= -1, got {last_epoch!r}")
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}] "
                                   f"when resuming a scheduler with last_epoch >= 0")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self) -> None:
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self) -> list[float]:
        raise NotImplementedError

    def get_last_lr(self) -> list[float]:
        """The learning rates of the last step, one per parameter group."""
        return list(self._last_lr)

    def step(self) -> None:
        self._step_count += 1
        self._update_lr(None)

    def _update_lr(self, epoch: Any) -> Any:
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = epoch
            values = self._get_closed_form_lr() if hasattr(self, "_get_closed_form_lr") \
                else self.get_lr()
        groups = self.optimizer.param_groups
        if len(values) != len(groups):
            raise ValueError(f"the scheduler has {len(values)} learning rates for "
                             f"{len(groups)} parameter groups")
        for group, lr in zip(groups, values):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in groups]

    def _lrs(self) -> Any:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Every attribute but the optimizer (torch's)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        unknown = sorted(set(state_dict) - set(self.__dict__))
        if unknown:
            raise ValueError(f"{type(self).__name__}.load_state_dict: unknown keys {unknown} "
                             f"(a state of another scheduler?)")
        self.__dict__.update(state_dict)


class LambdaLR(LRScheduler):
    """lr = initial_lr · lr_lambda(epoch).

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer whose groups' ``lr`` the schedule sets.
    lr_lambda : callable or list of callables
        epoch ↦ factor, one for all groups or one per group.
    last_epoch : int, default -1
        The index of the last epoch (-1: start afresh, from each group's current lr).

    Examples
    --------
    >>> import fastprop as fp
    >>> from fastprop import lr_scheduler
    >>> opt = fp.SGD(fp.Linear(2, 1, rng=0).parameters(), lr=1.0)
    >>> sched = lr_scheduler.LambdaLR(opt, lambda epoch: 1 / (epoch + 1))
    >>> lrs = []
    >>> for epoch in range(3):
    ...     lrs.append(round(sched.get_last_lr()[0], 4))
    ...     sched.step()
    >>> lrs
    [1.0, 0.5, 0.3333]
    """

    def __init__(self, optimizer: Optimizer,
                 lr_lambda: Callable[[int], float] | Sequence[Callable[[int], float]],
                 last_epoch: int = -1) -> None:
        self.optimizer = _optimizer(optimizer)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != len(optimizer.param_groups):
                raise ValueError(f"Expected {len(optimizer.param_groups)} lr_lambdas, but got "
                                 f"{len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * len(optimizer.param_groups)
        if not all(callable(f) for f in self.lr_lambdas):
            raise TypeError("lr_lambda must be a callable or a list of callables")
        super().__init__(optimizer, last_epoch)

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        state["lr_lambdas"] = [None if isinstance(f, types.FunctionType) else f.__dict__.copy()
                               for f in self.lr_lambdas]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state = dict(state_dict)
        lambdas = state.pop("lr_lambdas", [None] * len(self.lr_lambdas))
        super().load_state_dict(state)
        for f, saved in zip(self.lr_lambdas, lambdas):
            if saved is not None:
                f.__dict__.update(saved)

    def get_lr(self) -> list[float]:
        return [base_lr * f(self.last_epoch) for f, base_lr in zip(self.lr_lambdas, self.base_lrs)]


class StepLR(LRScheduler):
    """lr ×= gamma every step_size epochs.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer whose groups' ``lr`` the schedule sets.
    step_size : int
        The period, in epochs (positive).
    gamma : float, default 0.1
        The factor.
    last_epoch : int, default -1
        The index of the last epoch (-1: start afresh, from each group's current lr).

    Raises
    ------
    ValueError
        If step_size is not a positive integer.

    Examples
    --------
    >>> import fastprop as fp
    >>> from fastprop import lr_scheduler
    >>> opt = fp.SGD(fp.Linear(2, 1, rng=0).parameters(), lr=1.0)
    >>> sched = lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    >>> lrs = []
    >>> for epoch in range(5):
    ...     lrs.append(round(sched.get_last_lr()[0], 4))
    ...     sched.step()
    >>> lrs
    [1.0, 1.0, 0.5, 0.5, 0.25]
    """

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.step_size = _positive_int("step_size", step_size)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._lrs()
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> Any:
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size) for base_lr in self.base_lrs]


class MultiStepLR(LRScheduler):
    """lr ×= gamma at each milestone epoch.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer whose groups' ``lr`` the schedule sets.
    milestones : sequence of int
        The epochs at which lr is multiplied by gamma.
    gamma : float, default 0.1
        The factor.
    last_epoch : int, default -1
        The index of the last epoch (-1: start afresh, from each group's current lr).

    Examples
    --------
    >>> import fastprop as fp
    >>> from fastprop import lr_scheduler
    >>> opt = fp.SGD(fp.Linear(2, 1, rng=0).parameters(), lr=1.0)
    >>> sched = lr_scheduler.MultiStepLR(opt, milestones=[1, 3], gamma=0.1)
    >>> lrs = []
    >>> for epoch in range(4):
    ...     lrs.append(round(sched.get_last_lr()[0], 4))
    ...     sched.step()
    >>> lrs
    [1.0, 0.1, 0.1, 0.01]
    """

    def __init__(self, optimizer: Optimizer, milestones: Sequence[int], gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["milestones"] = dict(self.milestones)
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.milestones = Counter({int(k): v for k, v in dict(self.milestones).items()})

    def get_lr(self) -> list[float]:
        if self.last_epoch not in self.milestones:
            return self._lrs()
        return [group["lr"] * self.gamma ** self.milestones[self.last_epoch]
                for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> Any:
        milestones = sorted(self.milestones.elements())
        return [base_lr * self.gamma ** bisect_right(milestones, self.last_epoch)
                for base_lr in self.base_lrs]


class ExponentialLR(LRScheduler):
    """lr ×= gamma every epoch.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer whose groups' ``lr`` the schedule sets.
    gamma : float
        The factor.
    last_epoch : int, default -1
        The index of the last epoch (-1: start afresh, from each group's current lr).

    Examples
    --------
    >>> import fastprop as fp
    >>> from fastprop import lr_scheduler
    >>> opt = fp.SGD(fp.Linear(2, 1, rng=0).parameters(), lr=1.0)
    >>> sched = lr_scheduler.ExponentialLR(opt, gamma=0.5)
    >>> lrs = []
    >>> for epoch in range(3):
    ...     lrs.append(round(sched.get_last_lr()[0], 4))
    ...     sched.step()
    >>> lrs
    [1.0, 0.5, 0.25]
    """

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self._is_initial:
            return self._lrs()
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> Any:
        return [base_lr * self.gamma ** self.last_epoch for base_lr in self.base_lrs]


class LinearLR(LRScheduler):
    """The factor goes linearly from start_factor to end_factor over total_iters epochs.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer whose groups' ``lr`` the schedule sets.
    start_factor : float, default 1/3
        The factor of the first epoch, in (0, 1].
    end_factor : float, default 1.0
        The factor from total_iters on, in [0, 1].
    total_iters : int, default 5
        The number of epochs of the ramp.
    last_epoch : int, default -1
        The index of the last epoch (-1: start afresh, from each group's current lr).

    Raises
    ------
    ValueError
        If a factor is out of range.

    Examples
    --------
    >>> import fastprop as fp
    >>> from fastprop import lr_scheduler
    >>> opt = fp.SGD(fp.Linear(2, 1, rng=0).parameters(), lr=1.0)
    >>> sched = lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=3)
    >>> lrs = []
    >>> for epoch in range(5):
    ...     lrs.append(round(sched.get_last_lr()[0], 4))
    ...     sched.step()
    >>> lrs
    [0.25, 0.5, 0.75, 1.0, 1.0]
    """

    def __init__(self, optimizer: Optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1) -> None:
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError("start_factor must be in (0, 1]")
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError("end_factor must be in [0, 1]")
        self.start_factor, self.end_factor = start_factor, end_factor
        self.total_iters = _positive_int("total_iters", total_iters)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0:
            return [group["lr"] * self.start_factor for group in self.optimizer.param_groups]
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._lrs()
        d = self.end_factor - self.start_factor
        return [group["lr"] * (1.0 + d / (self.total_iters * self.start_factor
                                          + (self.last_epoch - 1) * d))
                for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> Any:
        return [base_lr * (self.start_factor + (self.end_factor - self.start_factor)
                           * min(self.total_iters, self.last_epoch) / self.total_iters)
                for base_lr in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (initial_lr − eta_min)(1 + cos(π·epoch/T_max))/2, in torch's recursive form.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer whose groups' ``lr`` the schedule sets.
    T_max : int
        The half period, in epochs.
    eta_min : float, default 0.0
        The smallest lr.
    last_epoch : int, default -1
        The index of the last epoch (-1: start afresh, from each group's current lr).

    Examples
    --------
    >>> import fastprop as fp
    >>> from fastprop import lr_scheduler
    >>> opt = fp.SGD(fp.Linear(2, 1, rng=0).parameters(), lr=1.0)
    >>> sched = lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    >>> lrs = []
    >>> for epoch in range(5):
    ...     lrs.append(round(sched.get_last_lr()[0], 4))
    ...     sched.step()
    >>> lrs
    [1.0, 0.8536, 0.5, 0.1464, 0.0]
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.T_max = _positive_int("T_max", T_max)
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        if self._is_initial:
            return self._lrs()
        if self._step_count == 1 and self.last_epoch > 0:
            return [self.eta_min + (base_lr - self.eta_min)
                    * (1 + math.cos(self.last_epoch * math.pi / self.T_max)) / 2
                    for base_lr in self.base_lrs]
        if (self.last_epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            return [group["lr"] + (base_lr - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
                    for base_lr, group in zip(self.base_lrs, groups)]
        return [(1 + math.cos(math.pi * self.last_epoch / self.T_max))
                / (1 + math.cos(math.pi * (self.last_epoch - 1) / self.T_max))
                * (group["lr"] - self.eta_min) + self.eta_min for group in groups]

    def _get_closed_form_lr(self) -> Any:
        return [self.eta_min + (base_lr - self.eta_min)
                * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base_lr in self.base_lrs]


class OneCycleLR(LRScheduler):
    """The 1cycle policy (warm-up to max_lr, then annealing), stepped once per batch;
    cycles the momentum (or Adam's beta1) inversely when cycle_momentum.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer whose groups' ``lr`` the schedule sets.
    max_lr : float or sequence of float
        The peak lr, one for all groups or one per group.
    total_steps : int, optional
        The number of steps of the cycle; or give ``epochs`` and ``steps_per_epoch``.
    epochs, steps_per_epoch : int, optional
        total_steps = epochs · steps_per_epoch, when total_steps is None.
    pct_start : float, default 0.3
        The fraction of the cycle spent warming up.
    anneal_strategy : {"cos", "linear"}, default "cos"
        The shape of the warm-up and the annealing.
    cycle_momentum : bool, default True
        Whether the momentum (Adam's beta1) cycles between max_momentum and base_momentum.
    base_momentum, max_momentum : float, default 0.85, 0.95
        The momentum's range.
    div_factor : float, default 25.0
        The initial lr is max_lr / div_factor.
    final_div_factor : float, default 1e4
        The final lr is the initial lr / final_div_factor.
    three_phase : bool, default False
        torch's three-phase variant (a symmetric warm-up and cool-down, then annihilation).
    last_epoch : int, default -1
        The index of the last epoch (-1: start afresh, from each group's current lr).

    Raises
    ------
    ValueError
        If neither total_steps nor epochs and steps_per_epoch are given, or an option is
        out of range.

    Examples
    --------
    >>> import fastprop as fp
    >>> from fastprop import lr_scheduler
    >>> opt = fp.SGD(fp.Linear(2, 1, rng=0).parameters(), lr=0.1, momentum=0.9)
    >>> sched = lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=5)
    >>> lrs = []
    >>> for batch in range(5):
    ...     lrs.append(round(sched.get_last_lr()[0], 4))
    ...     opt.step()
    ...     sched.step()
    >>> lrs
    [0.04, 0.9505, 0.6113, 0.1883, 0.0]
    """

    def __init__(self, optimizer: Optimizer, max_lr: float | Sequence[float],
                 total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: Any = None, pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = True, base_momentum: float = 0.85,
                 max_momentum: float = 0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1) -> None:
        self.optimizer = _optimizer(optimizer)
        if total_steps is not None:
            self.total_steps = _positive_int("total_steps", total_steps)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = (_positive_int("epochs", epochs)
                                * _positive_int("steps_per_epoch", steps_per_epoch))
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
        if not isinstance(pct_start, float) or not 0 <= pct_start <= 1:
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be one of 'cos' or 'linear', got {anneal_strategy!r}")
        self._anneal_func_type = anneal_strategy
        n = self.total_steps
        if three_phase:
            self._schedule_phases = [
                {"end_step": float(pct_start * n) - 1, "start_lr": "initial_lr", "end_lr": "max_lr",
                 "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
                {"end_step": float(2 * pct_start * n) - 2, "start_lr": "max_lr", "end_lr": "initial_lr",
                 "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
                {"end_step": n - 1, "start_lr": "initial_lr", "end_lr": "min_lr",
                 "start_momentum": "max_momentum", "end_momentum": "max_momentum"}]
        else:
            self._schedule_phases = [
                {"end_step": float(pct_start * n) - 1, "start_lr": "initial_lr", "end_lr": "max_lr",
                 "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
                {"end_step": n - 1, "start_lr": "max_lr", "end_lr": "min_lr",
                 "start_momentum": "base_momentum", "end_momentum": "max_momentum"}]
        max_lrs = _per_group("max_lr", optimizer, max_lr)
        self.cycle_momentum = bool(cycle_momentum)
        defaults = optimizer.defaults
        if self.cycle_momentum and "momentum" not in defaults and "betas" not in defaults:
            raise ValueError("optimizer must support momentum or beta1 with `cycle_momentum` "
                             "option enabled")
        if self.cycle_momentum:
            self.use_beta1 = "betas" in defaults
            max_m = _per_group("max_momentum", optimizer, max_momentum)
            base_m = _per_group("base_momentum", optimizer, base_momentum)
        if last_epoch == -1:
            for i, group in enumerate(optimizer.param_groups):
                group["initial_lr"] = max_lrs[i] / div_factor
                group["max_lr"] = max_lrs[i]
                group["min_lr"] = group["initial_lr"] / final_div_factor
                if self.cycle_momentum:
                    if self.use_beta1:
                        group["betas"] = (max_m[i], *group["betas"][1:])
                    else:
                        group["momentum"] = max_m[i]
                    group["max_momentum"] = max_m[i]
                    group["base_momentum"] = base_m[i]
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start: Any, end: Any, pct: Any) -> Any:
        if self._anneal_func_type == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"Tried to step {step} times. The specified number of total steps "
                             f"is {self.total_steps}")
        lrs = []
        for group in self.optimizer.param_groups:
            start_step = 0.0
            for i, phase in enumerate(self._schedule_phases):
                end_step = phase["end_step"]
                if step <= end_step or i == len(self._schedule_phases) - 1:
                    pct = (step - start_step) / (end_step - start_step)
                    lr = self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct)
                    if self.cycle_momentum:
                        m = self._anneal(group[phase["start_momentum"]],
                                         group[phase["end_momentum"]], pct)
                    break
                start_step = phase["end_step"]
            lrs.append(lr)
            if self.cycle_momentum:
                if self.use_beta1:
                    group["betas"] = (m, *group["betas"][1:])
                else:
                    group["momentum"] = m
        return lrs


class SequentialLR(LRScheduler):
    """schedulers[i] runs from milestones[i − 1] on (e.g. a LinearLR warm-up, then a cosine).

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer whose groups' ``lr`` the schedule sets.
    schedulers : sequence of LRScheduler
        The schedules, each built on ``optimizer``.
    milestones : sequence of int
        The epochs where the next schedule takes over (one fewer than schedulers).
    last_epoch : int, default -1
        The index of the last epoch (-1: start afresh, from each group's current lr).

    Raises
    ------
    ValueError
        If the numbers of schedulers and milestones do not match, or a scheduler has
        another optimizer.

    Examples
    --------
    >>> import fastprop as fp
    >>> from fastprop import lr_scheduler
    >>> opt = fp.SGD(fp.Linear(2, 1, rng=0).parameters(), lr=1.0)
    >>> warmup = lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=2)
    >>> decay = lr_scheduler.ExponentialLR(opt, gamma=0.5)
    >>> sched = lr_scheduler.SequentialLR(opt, [warmup, decay], milestones=[2])
    >>> lrs = []
    >>> for epoch in range(5):
    ...     lrs.append(round(sched.get_last_lr()[0], 4))
    ...     sched.step()
    >>> lrs
    [0.5, 0.75, 1.0, 0.5, 0.25]
    """

    def __init__(self, optimizer: Optimizer, schedulers: Sequence[LRScheduler],
                 milestones: Sequence[int], last_epoch: int = -1) -> None:
        self.optimizer = _optimizer(optimizer)
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError("SequentialLR expects at least one scheduler")
        for i, s in enumerate(schedulers):
            if isinstance(s, ReduceLROnPlateau):
                raise ValueError(f"SequentialLR does not support ReduceLROnPlateau (schedulers[{i}])")
            if not isinstance(s, LRScheduler):
                raise TypeError(f"schedulers[{i}] is a {type(s).__name__}, not a scheduler")
            if s.optimizer is not optimizer:
                raise ValueError(f"schedulers[{i}] belongs to another optimizer: SequentialLR "
                                 f"expects all schedulers to belong to the same optimizer")
        milestones = list(milestones)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR expects one milestone fewer than schedulers, got "
                             f"{len(schedulers)} schedulers and {len(milestones)} milestones")
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        for s in schedulers:  # undo the steps the schedulers took when they were built
            s.last_epoch -= 1
        idx = bisect_right(milestones, 0)
        schedulers[idx]._initial_step()
        self._last_lr = schedulers[idx].get_last_lr()

    def step(self) -> None:
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_schedulers")}
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state = dict(state_dict)
        inner = state.pop("_schedulers", None)
        if not isinstance(inner, (list, tuple)) or len(inner) != len(self._schedulers):
            raise ValueError("SequentialLR.load_state_dict: the state holds another number of "
                             "schedulers")
        super().load_state_dict(state)
        for s, saved in zip(self._schedulers, inner):
            s.load_state_dict(saved)


class ReduceLROnPlateau(LRScheduler):
    """lr ×= factor once the metric passed to ``step(metrics)`` has not improved for
    ``patience`` epochs (torch's semantics: threshold, cooldown, min_lr, eps).

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer whose groups' ``lr`` the schedule sets.
    mode : {"min", "max"}, default "min"
        Whether the metric should decrease or increase.
    factor : float, default 0.1
        The lr's factor at a plateau, in [0, 1).
    patience : int, default 10
        How many epochs without improvement are tolerated.
    threshold : float, default 1e-4
        The smallest change that counts as an improvement.
    threshold_mode : {"rel", "abs"}, default "rel"
        Whether threshold is relative to the best value or absolute.
    cooldown : int, default 0
        Epochs to wait after a reduction before counting again.
    min_lr : float or sequence of float, default 0
        The lr's lower bound, one for all groups or one per group.
    eps : float, default 1e-8
        A reduction smaller than eps is not applied.

    Raises
    ------
    ValueError
        If an option is out of range, or min_lr has the wrong length.

    Examples
    --------
    >>> import fastprop as fp
    >>> from fastprop import lr_scheduler
    >>> opt = fp.SGD(fp.Linear(2, 1, rng=0).parameters(), lr=1.0)
    >>> sched = lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    >>> lrs = []
    >>> for val_loss in [1.0, 0.9, 0.95, 0.95, 0.95]:
    ...     sched.step(val_loss)
    ...     lrs.append(opt.param_groups[0]["lr"])
    >>> lrs
    [1.0, 1.0, 1.0, 0.5, 0.5]
    """

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float = 0, eps: float = 1e-8) -> None:
        if factor >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        self.factor = factor
        self.optimizer = _optimizer(optimizer)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != len(optimizer.param_groups):
                raise ValueError(f"expected {len(optimizer.param_groups)} min_lrs, got {len(min_lr)}")
            self.default_min_lr: float | None = None
            self.min_lrs: list[float] = list(min_lr)
        else:
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * len(optimizer.param_groups)
        self.patience, self.cooldown, self.eps = patience, cooldown, eps
        self.last_epoch = 0
        self._last_lr = self._lrs()
        self._init_is_better(mode, threshold, threshold_mode)
        self._reset()

    def _reset(self) -> None:
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def step(self, metrics: Any) -> None:  # type: ignore[override]  # PyTorch's signature
        current = float(metrics)
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = self._lrs()

    def _reduce_lr(self) -> Any:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError("the optimizer has another number of parameter groups than "
                                   "when ReduceLROnPlateau was built: set min_lrs to match")
            self.min_lrs = [self.default_min_lr] * len(groups)
        for i, group in enumerate(groups):
            old = float(group["lr"])
            new = max(old * self.factor, self.min_lrs[i])
            if old - new > self.eps:
                group["lr"] = new

    @property
    def in_cooldown(self) -> Any:
        return self.cooldown_counter > 0

    def _is_better(self, a: Any, best: Any) -> Any:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def _init_is_better(self, mode: Any, threshold: Any, threshold_mode: Any) -> Any:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.mode, self.threshold, self.threshold_mode = mode, threshold, threshold_mode

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._init_is_better(self.mode, self.threshold, self.threshold_mode)
