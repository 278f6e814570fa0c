"""Optimizers over flat buffers: one C call per run of a parameter group's parameters.

Update rules are torch.optim's (SGD with momentum, dampening, Nesterov and weight
decay; Adam with L2 weight decay; AdamW with decoupled weight decay; AMSGrad; RMSprop;
Adagrad). Parameters come as a list or as PyTorch's parameter groups (a list of dicts,
each with its own hyperparameters); ``opt.param_groups`` is PyTorch's list of dicts,
which the user and the schedulers may change between steps.
"""
from __future__ import annotations
import math

import numpy as np

from ._kernels import FlatRun, FlatUpdate
from .nn import BufferVersions, Parameter, _Exclusive, flat_runs
from typing import Any, Iterable, Mapping, Union

# what an optimizer takes: parameters, or parameter groups (dicts with "params" and options)
ParamsT = Union[Iterable[Parameter], Iterable[Mapping[str, Any]], Parameter]

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]


def _check_number(name: Any, value: Any, low: float = 0.0, high: Any = None,
                  high_open: bool = False) -> Any:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or v < low or (high is not None and (v >= high if high_open else v > high)):
        bound = "" if high is None else f" and {'<' if high_open else '<='} {high}"
        raise ValueError(f"{name} must be a finite number >= {low}{bound}, got {value!r}")
    return v


def _check_betas(betas: Any) -> Any:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return (_check_number("beta1", betas[0], 0.0, 1.0, True),
            _check_number("beta2", betas[1], 0.0, 1.0, True))


def _group_params(params: Any, where: Any) -> Any:
    """A group's "params" as a list of Parameters (a lone Parameter is a list of one)."""
    if isinstance(params, Parameter):
        return [params]
    if isinstance(params, (set, frozenset, dict)) or isinstance(params, (str, bytes)):
        raise TypeError(f"{where} must be an ordered sequence of Parameters, got "
                        f"{type(params).__name__}")
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"{where} must be a Parameter or a sequence of Parameters, got "
                        f"{type(params).__name__}") from None
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"parameter {i} of {where} is a {type(p).__name__}, not a fastprop "
                            f"Parameter")
    return params


class _Slot:
    """What the optimizer keeps for one parameter group: its flat runs, one dict of state
    buffers per run, its step count, and the cached C-call objects (rebuilt when a buffer
    is added)."""
    __slots__ = ("runs", "state", "step", "fresh", "calls", "key")  # key: the _state_names

    def __init__(self, params: Any) -> None:
        self.runs = flat_runs(params)
        self.state = [{} for _ in self.runs]
        self.step = 0
        self.fresh = set()  # buffers allocated but not yet used (SGD's first step)
        self.calls = None
        self.key = None


class Optimizer:
    """Parameter groups over flat runs (one per consecutive block of one model's buffer).

    The base class of SGD, Adam, AdamW, RMSprop and Adagrad: ``step()``, ``zero_grad()``,
    ``state_dict()``/``load_state_dict()``, ``add_param_group()`` and ``param_groups`` as in
    torch.optim.

    Parameters
    ----------
    params : Parameter, iterable of Parameter, or iterable of dict
        The parameters, or groups ``{"params": [...], "lr": ..., ...}`` whose missing
        hyperparameters come from the constructor's arguments (``opt.defaults``).
    lr : float
        The learning rate (>= 0).
    **defaults
        The subclass's other hyperparameters.

    Raises
    ------
    TypeError
        If params is a set, or holds something other than Parameters.
    ValueError
        If a hyperparameter is out of range, or a parameter appears twice.

    Examples
    --------
    >>> import fastprop as fp
    >>> model = fp.Sequential(fp.Linear(2, 3, rng=0), fp.ReLU(), fp.Linear(3, 1, rng=1))
    >>> opt = fp.SGD([{"params": model[0].parameters()},
    ...               {"params": model[2].parameters(), "lr": 0.01}], lr=0.1)
    >>> isinstance(opt, fp.optim.Optimizer), [g["lr"] for g in opt.param_groups]
    (True, [0.1, 0.01])
    """
    _state_order = ()     # the state buffers' names, in state_arrays() order
    _has_step = True      # a per-parameter "step" in state_dict() (as torch's, not SGD's)

    def __init__(self, params: ParamsT, lr: float, **defaults: Any) -> None:
        self.defaults = self._check_group({"lr": lr, **defaults}, "")
        if isinstance(params, Parameter):
            params = [params]
        if isinstance(params, (set, frozenset)):
            raise TypeError("params must be an ordered sequence, got a set")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups, self._slots = [], []
        self.step_count = 0
        for i, group in enumerate(groups):
            if not isinstance(group, dict):
                raise TypeError(f"params[{i}] is a {type(group).__name__}: give either "
                                f"Parameters or parameter groups (dicts), not both")
            self.add_param_group(group)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        self._guards = None  # (id(held), the guards a step takes), until a buffer's version moves

    # ------------------------------------------------------------------ groups
    def _check_group(self, group: Any, where: Any) -> Any:
        """The group's hyperparameters checked and normalized (a new dict; ValueError or
        TypeError naming the bad one). Subclasses add theirs."""
        out = dict(group)
        out["lr"] = _check_number(where + "lr", group["lr"])
        return out

    def add_param_group(self, param_group: dict[str, Any]) -> Any:
        """Adds a group ({"params": ..., hyperparameters}); nothing changes on an error."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group needs a 'params' entry")
        where = f"param_groups[{len(self.param_groups)}]"
        params = _group_params(param_group["params"], where)
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{where} holds some parameters more than once")
        taken = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in taken for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        group = {**self.defaults, **param_group, "params": params}
        group = self._check_group(group, where + ".")
        slot = _Slot(params)
        self._alloc(slot, group)
        self.param_groups.append(group)
        self._slots.append(slot)
        self._held = BufferVersions(self.params)   # the buffers the runs are views of
        self._guards = None

    @property
    def _runs(self) -> Any:
        """Every group's flat runs, concatenated (what subclasses such as sklearn's read)."""
        return [run for slot in self._slots for run in slot.runs]

    @property
    def params(self) -> list[Parameter]:
        """Every parameter, group after group."""
        return [p for g in self.param_groups for p in g["params"]]

    @property
    def lr(self) -> Any:
        """The first group's lr; setting it sets every group's."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        value = _check_number("lr", value)
        for g in self.param_groups:
            g["lr"] = value

    # ------------------------------------------------------------------ state
    _NONE = ()

    def _state_names(self, group: Any) -> Any:
        """The state buffers a group's update needs: one of the class's constant tuples (the
        cached C calls are rebuilt when it is another one; no allocation per step)."""
        return self._NONE

    def _init_value(self, name: Any, group: Any) -> float:
        return 0.0

    def _alloc(self, slot: Any, group: Any) -> None:
        """Allocates the buffers the group's hyperparameters need and it lacks (once)."""
        for name in self._state_names(group):
            if slot.runs and name not in slot.state[0]:
                for run, st in zip(slot.runs, slot.state):
                    st[name] = np.full_like(run[0], self._init_value(name, group))
                slot.fresh.add(name)
                slot.calls = None

    def _current_runs(self) -> Any:
        """The flat runs, group after group; an error if a parameter was moved to a new
        buffer since."""
        if self._held.changed():
            if self._held.moved():
                raise RuntimeError("the model's parameters were moved to new buffers after the "
                                   "optimizer was created (e.g. by nesting the model in another "
                                   "Sequential); create the optimizer after building the model")
            self._held.renew()
            self._guards = None   # the parameters may have other guards now
        return [run for slot in self._slots for run in slot.runs]

    def zero_grad(self) -> None:
        for _, grad in self._current_runs():
            grad.fill(0)

    def step(self) -> None:
        """One update of every parameter; a RuntimeError while another thread uses their model."""
        self._step_holding(None)

    def _step_holding(self, held: Any) -> None:
        """step() for a caller that already holds the guard `held` (TrainStep holds its model's)."""
        if self._held.changed():   # O(buffers); raises if the parameters moved
            self._current_runs()
        key = id(held)
        if self._guards is None or self._guards[0] != key:  # per step: cached, not recomputed
            guards = []
            for p in self.params:
                g = p.guard
                if g is not None and g is not held and all(g is not h for h in guards):
                    guards.append(g)
            self._guards = (key, guards)
        guards = self._guards[1]
        if not guards:
            self._step()
            return
        with _Exclusive(guards, "model"):
            self._step()

    def _step(self) -> None:
        if self._held.changed():
            self._current_runs()
        for group, slot in zip(self.param_groups, self._slots):
            names = self._state_names(group)
            if names is not slot.key or slot.calls is None:  # the hyperparameters changed
                self._alloc(slot, group)
                slot.key = names
                slot.calls = [self._call(run, st, group) for run, st in zip(slot.runs, slot.state)]
            slot.step += 1
            self._update(group, slot)
            if slot.fresh:
                slot.fresh.clear()
        self.step_count += 1

    def _call(self, run: Any, state: Any, group: Any) -> Any:
        """The object whose method updates one run (FlatUpdate or FlatRun)."""
        raise NotImplementedError

    def _update(self, group: Any, slot: Any) -> Any:
        raise NotImplementedError

    def state_arrays(self) -> Any:
        """The optimizer's state buffers: one list per kind (_state_order), one array per run
        that has it (for tests and checkpoints)."""
        kinds = [[st[name] for slot in self._slots for st in slot.state if name in st]
                 for name in self._state_order]
        return [arrays for arrays in kinds if arrays]

    def state_dict(self) -> dict[str, Any]:
        """PyTorch's layout: {"state": {param index: {"step": ..., buffer name: array}},
        "param_groups": [{hyperparameters..., "params": [param indices]}]} (copies)."""
        state, groups, index = {}, [], 0
        for group, slot in zip(self.param_groups, self._slots):
            params = group["params"]
            ids = list(range(index, index + len(params)))
            index += len(params)
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
            names = [n for n in self._state_order if slot.runs and n in slot.state[0]
                     and n not in slot.fresh]
            if not names and not (self._has_step and slot.step):
                continue
            views = self._param_views(slot, params)
            for pid, view in zip(ids, views):
                entry = {"step": float(slot.step)} if self._has_step else {}
                for n in names:
                    entry[n] = view[n].copy()
                state[pid] = entry
        return {"state": state, "param_groups": groups}

    def _param_views(self, slot: Any, params: Any) -> Any:
        """Per parameter {buffer name: view shaped like the parameter} into the run buffers."""
        out = [None] * len(params)
        for i, p in enumerate(params):  # each parameter's place in its run
            for (data, _), st in zip(slot.runs, slot.state):
                off = _offset_in(p.data, data)
                if off is not None:
                    out[i] = {n: a[off:off + p.size].reshape(p.shape) for n, a in st.items()}
                    break
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Loads state_dict() output (also one that went through a checkpoint); checks
        everything first: on an error nothing has changed."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("state_dict must be a dict with the keys 'state' and 'param_groups'")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups) if isinstance(saved_groups, (list, tuple)) else saved_groups!r} "
                             f"parameter groups, the optimizer has {len(self.param_groups)}")
        if not isinstance(saved_state, dict):
            raise ValueError("state_dict['state'] must be a dict {param index: state}")
        n_params = len(self.params)
        state = {}
        for key, entry in saved_state.items():
            try:
                pid = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"state_dict['state'] has the key {key!r}, not a parameter index") from None
            if not 0 <= pid < n_params or not isinstance(entry, dict):
                raise ValueError(f"state_dict['state'][{key!r}] is not the state of one of the "
                                 f"optimizer's {n_params} parameters")
            state[pid] = entry
        plans, index = [], 0
        for gi, (group, slot, saved) in enumerate(zip(self.param_groups, self._slots, saved_groups)):
            params = group["params"]
            if not isinstance(saved, dict) or len(saved.get("params", ())) != len(params):
                raise ValueError(f"loaded state dict's param_groups[{gi}] does not match the size "
                                 f"of the optimizer's group ({len(params)} parameters)")
            hyper = {k: v for k, v in saved.items() if k != "params"}
            new = self._check_group({**group, **hyper, "params": params}, f"param_groups[{gi}].")
            ids = range(index, index + len(params))
            index += len(params)
            entries = [state.get(pid) for pid in ids]
            have = [e is not None for e in entries]
            if any(have) and not all(have):
                raise ValueError(f"param_groups[{gi}]: some parameters have state and some do not "
                                 f"(fastprop keeps one state per group)")
            names, step, arrays = set(), 0, []
            if all(have) and entries:
                keys = {frozenset(e) for e in entries}
                steps = {float(e.get("step", 0)) for e in entries}
                if len(keys) != 1 or len(steps) != 1:
                    raise ValueError(f"param_groups[{gi}]: the parameters' states differ in their "
                                     f"keys or step counts (fastprop keeps one step per group)")
                step = steps.pop()
                if step != int(step) or step < 0:
                    raise ValueError(f"param_groups[{gi}]: step must be an integer >= 0, got {step}")
                names = set(keys.pop()) - {"step"}
                unknown = names - set(self._state_order)
                if unknown:
                    raise ValueError(f"param_groups[{gi}]: unknown state {sorted(unknown)} for "
                                     f"{type(self).__name__} (it keeps {list(self._state_order)})")
                for p, e, pid in zip(params, entries, ids):
                    a = {}
                    for n in names:
                        v = e[n]
                        if v is None:  # torch's SGD without momentum
                            continue
                        v = np.asarray(v)
                        if v.shape != p.shape or v.dtype.kind not in "fiu":
                            raise ValueError(f"state[{pid}][{n!r}] has shape {v.shape} and dtype "
                                             f"{v.dtype}, expected real numbers of shape {p.shape}")
                        a[n] = v
                    arrays.append(a)
                names = {n for n in names if all(n in a for a in arrays)}
            plans.append((new, names, int(step), arrays))
        for group, slot, (new, names, step, arrays) in zip(self.param_groups, self._slots, plans):
            group.clear()
            group.update(new)
            for n in names:  # buffers the hyperparameters would not allocate
                if slot.runs and n not in slot.state[0]:
                    for run, st in zip(slot.runs, slot.state):
                        st[n] = np.zeros_like(run[0])
                    slot.calls = None
            self._alloc(slot, group)
            for a, view in zip(arrays, self._param_views(slot, group["params"])):
                for n in names:
                    view[n][...] = a[n]
            slot.step = step
            slot.fresh = set(n for st in slot.state[:1] for n in st) - names
            if not arrays:
                for st in slot.state:  # no saved state: the buffers restart
                    for n, buf in st.items():
                        buf[...] = self._init_value(n, group)
        self.step_count = max((s.step for s in self._slots), default=0)


def _offset_in(view: Any, base: Any) -> Any:
    """Element offset of the 1-D-reshaped view inside the 1-D array base, or None."""
    if view.size == 0 or base.size == 0:
        return None
    a = view.__array_interface__["data"][0]
    b = base.__array_interface__["data"][0]
    off, rem = divmod(a - b, base.itemsize)
    if rem or off < 0 or off + view.size > base.size:
        return None
    return off


class SGD(Optimizer):
    """θ ← θ − lr·g with momentum, dampening, Nesterov and weight decay, as torch.optim.SGD.

    Parameters
    ----------
    params : iterable of Parameter, or of dict
        The parameters to update (``model.parameters()``), or parameter groups: dicts with
        a "params" list and any of the options below, which override the defaults.
    lr : float
        The learning rate (≥ 0).
    momentum : float, default 0.0
        The momentum factor μ: b ← μ b + (1 − dampening) g, then θ ← θ − lr·b.
    nesterov : bool, default False
        Nesterov momentum (needs momentum > 0 and dampening = 0).
    weight_decay : float, default 0.0
        An L2 term added to the gradient: g ← g + λ θ.
    dampening : float, default 0.0
        The dampening of the momentum.

    Raises
    ------
    ValueError
        If an option is out of range, or a parameter appears twice.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> layer = fp.Linear(2, 1, bias=False, rng=0)
    >>> layer.weight.data[:] = [[1.0, -2.0]]
    >>> opt = fp.SGD(layer.parameters(), lr=0.1)
    >>> layer.weight.grad[:] = [[0.5, 0.5]]
    >>> opt.step()
    >>> layer.weight.data
    array([[ 0.95, -2.05]], dtype=float32)
    >>> opt.zero_grad()
    >>> layer.weight.grad
    array([[0., 0.]], dtype=float32)
    """
    _state_order = ("momentum_buffer",)
    _has_step = False
    _MOMENTUM = ("momentum_buffer",)

    def __init__(self, params: ParamsT, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, dampening: float = 0.0) -> None:
        super().__init__(params, lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    def _check_group(self, group: Any, where: Any) -> Any:
        out = super()._check_group(group, where)
        for k in ("momentum", "dampening", "weight_decay"):
            out[k] = _check_number(where + k, group[k])
        out["nesterov"] = bool(group["nesterov"])
        if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ValueError(f"{where}nesterov needs momentum > 0 and dampening = 0")
        return out

    def _state_names(self, group: Any) -> Any:
        return self._MOMENTUM if group["momentum"] else self._NONE

    def _call(self, run: Any, state: Any, group: Any) -> Any:
        return FlatUpdate(run[0], run[1], state.get("momentum_buffer"))

    def _update(self, group: Any, slot: Any) -> None:
        first = "momentum_buffer" in slot.fresh
        lr, mu, damp, nest, wd = (group["lr"], group["momentum"], group["dampening"],
                                  group["nesterov"], group["weight_decay"])
        for call in slot.calls:
            call.sgd(lr, mu, damp, nest, wd, first)


class Adam(Optimizer):
    """Adam with bias correction, as torch.optim.Adam (weight_decay is an L2 term in g);
    amsgrad keeps the running maximum of exp_avg_sq for the denominator.

    Parameters
    ----------
    params : iterable of Parameter, or of dict
        The parameters to update (``model.parameters()``), or parameter groups: dicts with
        a "params" list and any of the options below, which override the defaults.
    lr : float, default 1e-3
        The learning rate.
    betas : (float, float), default (0.9, 0.999)
        The decay rates of the first and second moment estimates, in [0, 1).
    eps : float, default 1e-8
        Added to the denominator's square root.
    weight_decay : float, default 0.0
        An L2 term added to the gradient (see :class:`AdamW` for the decoupled form).
    amsgrad : bool, default False
        Whether to use the running maximum of the second moment (AMSGrad).

    Raises
    ------
    ValueError
        If an option is out of range, or a parameter appears twice.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> layer = fp.Linear(2, 1, bias=False, rng=0)
    >>> layer.weight.data[:] = [[1.0, -2.0]]
    >>> opt = fp.Adam(layer.parameters(), lr=0.1)
    >>> layer.weight.grad[:] = [[0.5, -0.5]]
    >>> opt.step()              # the first step moves each weight by lr against its gradient
    >>> layer.weight.data.round(4)
    array([[ 0.9, -1.9]], dtype=float32)
    """
    decoupled = False
    _state_order = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _PLAIN = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: ParamsT, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad)

    def _check_group(self, group: Any, where: Any) -> Any:
        out = super()._check_group(group, where)
        try:
            out["betas"] = _check_betas(group["betas"])
        except ValueError as e:
            raise ValueError(where + str(e)) from None
        out["eps"] = _check_number(where + "eps", group["eps"])
        out["weight_decay"] = _check_number(where + "weight_decay", group["weight_decay"])
        out["amsgrad"] = bool(group["amsgrad"])
        return out

    def _state_names(self, group: Any) -> Any:
        return self._state_order if group["amsgrad"] else self._PLAIN

    def _call(self, run: Any, state: Any, group: Any) -> Any:
        if "max_exp_avg_sq" in state:
            return FlatRun(run[0], run[1], state["exp_avg"], state["exp_avg_sq"],
                           state["max_exp_avg_sq"])
        return FlatUpdate(run[0], run[1], state["exp_avg"], state["exp_avg_sq"])

    def _update(self, group: Any, slot: Any) -> None:
        t, lr, (b1, b2), eps, wd = (slot.step, group["lr"], group["betas"], group["eps"],
                                    group["weight_decay"])
        if group["amsgrad"]:
            for call in slot.calls:
                call.amsgrad(t, lr, b1, b2, eps, wd, self.decoupled)
        else:
            for call in slot.calls:
                call.adam(t, lr, b1, b2, eps, wd, self.decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay (θ ← θ(1 − lr·λ) first), as torch.optim.AdamW.

    Parameters
    ----------
    params : iterable of Parameter, or of dict
        The parameters to update (``model.parameters()``), or parameter groups: dicts with
        a "params" list and any of the options below, which override the defaults.
    lr : float, default 1e-3
        The learning rate.
    betas : (float, float), default (0.9, 0.999)
        The decay rates of the moment estimates.
    eps : float, default 1e-8
        Added to the denominator's square root.
    weight_decay : float, default 1e-2
        λ, applied to θ directly rather than through the gradient.
    amsgrad : bool, default False
        Whether to use AMSGrad's running maximum.

    Raises
    ------
    ValueError
        If an option is out of range, or a parameter appears twice.

    Examples
    --------
    Decay on the weights only, with parameter groups:

    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(4, 3, rng=0), fp.ReLU(), fp.Linear(3, 2, rng=1))
    >>> decay = [p for name, p in model.named_parameters() if name.endswith("weight")]
    >>> no_decay = [p for name, p in model.named_parameters() if name.endswith("bias")]
    >>> opt = fp.AdamW([{"params": decay, "weight_decay": 1e-2},
    ...                 {"params": no_decay, "weight_decay": 0.0}], lr=1e-3)
    >>> [g["weight_decay"] for g in opt.param_groups]
    [0.01, 0.0]
    """
    decoupled = True

    def __init__(self, params: ParamsT, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class RMSprop(Optimizer):
    """RMSprop as torch.optim.RMSprop: v = αv + (1−α)g², θ −= lr·g/(√v + ε).

    Centered: √(v − ḡ²), ḡ the running mean of g; with momentum and weight decay.

    Parameters
    ----------
    params : iterable of Parameter, or of dict
        The parameters to update, or parameter groups (see :class:`Optimizer`).
    lr : float, default 1e-2
        The learning rate (>= 0).
    alpha : float, default 0.99
        The smoothing constant α, in [0, 1].
    eps : float, default 1e-8
        Added to the denominator.
    weight_decay : float, default 0
        An L2 term added to the gradient: g ← g + λ θ.
    momentum : float, default 0
        The momentum factor.
    centered : bool, default False
        Normalise by the estimated variance of the gradient.

    Raises
    ------
    TypeError
        If params holds something other than Parameters, or an option is not a number.
    ValueError
        If an option is out of range, or a parameter appears twice.

    Examples
    --------
    >>> import fastprop as fp
    >>> layer = fp.Linear(2, 1, bias=False, rng=0)
    >>> layer.weight.data[:] = [[1.0, -1.0]]
    >>> opt = fp.RMSprop(layer.parameters(), lr=0.1, alpha=0.0)
    >>> layer.weight.grad[:] = [[2.0, -2.0]]
    >>> opt.step()
    >>> layer.weight.data.round(4)
    array([[ 0.9, -0.9]], dtype=float32)
    """
    _state_order = ("square_avg", "momentum_buffer", "grad_avg")
    _NAMES = {(False, False): ("square_avg",), (True, False): ("square_avg", "momentum_buffer"),
              (False, True): ("square_avg", "grad_avg"), (True, True): _state_order}

    def __init__(self, params: ParamsT, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False) -> None:
        super().__init__(params, lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered)

    def _check_group(self, group: Any, where: Any) -> Any:
        out = super()._check_group(group, where)
        out["alpha"] = _check_number(where + "alpha", group["alpha"], 0.0, 1.0)
        for k in ("eps", "weight_decay", "momentum"):
            out[k] = _check_number(where + k, group[k])
        out["centered"] = bool(group["centered"])
        return out

    def _state_names(self, group: Any) -> Any:
        return self._NAMES[group["momentum"] > 0, group["centered"]]

    def _call(self, run: Any, state: Any, group: Any) -> Any:
        return FlatRun(run[0], run[1], state["square_avg"], state.get("momentum_buffer"),
                       state.get("grad_avg") if group["centered"] else None)

    def _update(self, group: Any, slot: Any) -> None:
        lr, alpha, eps, wd, mu, c = (group["lr"], group["alpha"], group["eps"],
                                     group["weight_decay"], group["momentum"], group["centered"])
        for call in slot.calls:
            call.rmsprop(lr, alpha, eps, wd, mu, c)


class Adagrad(Optimizer):
    """Adagrad as torch.optim.Adagrad: s += g², θ −= lr_t·g/(√s + ε).

    lr_t = lr / (1 + (t − 1)·lr_decay); s starts at initial_accumulator_value.

    Parameters
    ----------
    params : iterable of Parameter, or of dict
        The parameters to update, or parameter groups (see :class:`Optimizer`).
    lr : float, default 1e-2
        The learning rate (>= 0).
    lr_decay : float, default 0
        The learning rate's decay per step.
    weight_decay : float, default 0
        An L2 term added to the gradient: g ← g + λ θ.
    initial_accumulator_value : float, default 0
        The starting value of the sum of squares s.
    eps : float, default 1e-10
        Added to the denominator.

    Raises
    ------
    TypeError
        If params holds something other than Parameters, or an option is not a number.
    ValueError
        If an option is out of range, or a parameter appears twice.

    Examples
    --------
    >>> import fastprop as fp
    >>> layer = fp.Linear(2, 1, bias=False, rng=0)
    >>> layer.weight.data[:] = [[1.0, -1.0]]
    >>> opt = fp.Adagrad(layer.parameters(), lr=0.1)
    >>> layer.weight.grad[:] = [[3.0, -3.0]]
    >>> opt.step()
    >>> layer.weight.data.round(4)
    array([[ 0.9, -0.9]], dtype=float32)
    """
    _state_order = ("sum",)

    def __init__(self, params: ParamsT, lr: float = 1e-2, lr_decay: float = 0,
                 weight_decay: float = 0, initial_accumulator_value: float = 0,
                 eps: float = 1e-10) -> None:
        super().__init__(params, lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps)

    def _check_group(self, group: Any, where: Any) -> Any:
        out = super()._check_group(group, where)
        for k in ("lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            out[k] = _check_number(where + k, group[k])
        return out

    def _state_names(self, group: Any) -> Any:
        return self._state_order

    def _init_value(self, name: Any, group: Any) -> Any:
        return self.defaults["initial_accumulator_value"]  # torch's: not the group's

    def _call(self, run: Any, state: Any, group: Any) -> Any:
        return FlatRun(run[0], run[1], state["sum"])

    def _update(self, group: Any, slot: Any) -> None:
        clr = group["lr"] / (1 + (slot.step - 1) * group["lr_decay"])
        eps, wd = group["eps"], group["weight_decay"]
        for call in slot.calls:
            call.adagrad(clr, eps, wd)
