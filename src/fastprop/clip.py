"""Gradient clipping, as ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``: one C pass per
flat run of the gradients (one for a model's parameters), no temporaries."""
from __future__ import annotations
import math

from . import _kernels
from .nn import Parameter, _Exclusive, flat_runs
from typing import Any, Iterable

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _guards(params: Any) -> Any:
    """The locks of the models the parameters belong to (as an optimizer step takes them)."""
    out: list[Any] = []
    for p in params:
        g = p.guard
        if g is not None and all(g is not h for h in out):
            out.append(g)
    return out


def _grad_runs(parameters: Any) -> Any:
    """The gradient views of the parameters' flat runs, and their models' locks."""
    if isinstance(parameters, Parameter):
        parameters = [parameters]
    try:
        params = list(parameters)
    except TypeError:
        raise TypeError(f"parameters must be a Parameter or an iterable of Parameters, got "
                        f"{type(parameters).__name__}") from None
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"parameters[{i}] is a {type(p).__name__}, not a fastprop Parameter")
    return [grad for _, grad in flat_runs(params)], _guards(params)


def _norm_type(norm_type: Any) -> Any:
    try:
        p = float(norm_type)
    except (TypeError, ValueError):
        raise TypeError(f"norm_type must be a number, got {norm_type!r}") from None
    if not p > 0:
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type!r}")
    return p


def _max_norm(max_norm: Any) -> Any:
    try:
        m = float(max_norm)
    except (TypeError, ValueError):
        raise TypeError(f"max_norm must be a number, got {max_norm!r}") from None
    if not m >= 0:
        raise ValueError(f"max_norm must be a number >= 0, got {max_norm!r}")
    return m


def total_norm(grads: Any, p: float) -> Any:
    """The p-norm of all the gradient arrays together (the norm of their norms)."""
    if math.isinf(p):
        return max((_kernels.grad_norm_pow(g, p) for g in grads), default=0.0)
    s = 0.0
    for g in grads:
        s += _kernels.grad_norm_pow(g, p)
    return math.sqrt(s) if p == 2 else s ** (1.0 / p)


def clip_by_norm(grads: Any, max_norm: float, p: float, error_if_nonfinite: Any) -> Any:
    """clip_grad_norm_ on checked gradient arrays (TrainStep calls this each step)."""
    norm = total_norm(grads, p)
    if error_if_nonfinite and not math.isfinite(norm):
        raise RuntimeError(f"The total norm of order {p} for gradients from `parameters` is "
                           f"non-finite, so it cannot be clipped. To disable this error and "
                           f"scale the gradients by the non-finite norm anyway, set "
                           f"`error_if_nonfinite=False`")
    coef = max_norm / (norm + 1e-6)
    if not coef >= 1.0:  # torch multiplies by min(coef, 1): by 1 changes nothing; NaN scales
        for g in grads:
            _kernels.grad_scale(g, coef)
    return norm


def clip_grad_norm_(parameters: Iterable[Parameter] | Parameter, max_norm: float,
                    norm_type: float = 2.0, error_if_nonfinite: bool = False) -> float:
    """Scales the gradients in place so that their total norm is at most max_norm.

    The total norm is that of all the gradients concatenated (order norm_type, inf for the
    largest magnitude); the gradients are multiplied by min(1, max_norm / (norm + 1e-6)).

    Parameters
    ----------
    parameters : Parameter or iterable of Parameter
        Whose ``grad`` to clip (``model.parameters()``).
    max_norm : float
        The largest total norm allowed.
    norm_type : float, default 2.0
        The order of the norm (``float("inf")``: the largest magnitude).
    error_if_nonfinite : bool, default False
        Raise instead of scaling when the total norm is NaN or infinite.

    Returns
    -------
    float
        The total norm before clipping.

    Raises
    ------
    RuntimeError
        With error_if_nonfinite, if the norm is not finite (nothing changes).

    Examples
    --------
    >>> import fastprop as fp
    >>> layer = fp.Linear(2, 1, bias=False, rng=0)
    >>> layer.weight.grad[:] = [[3.0, 4.0]]
    >>> fp.clip_grad_norm_(layer.parameters(), max_norm=1.0)
    5.0
    >>> layer.weight.grad.round(4)
    array([[0.6, 0.8]], dtype=float32)
    """
    grads, guards = _grad_runs(parameters)
    max_norm, norm_type = _max_norm(max_norm), _norm_type(norm_type)
    with _Exclusive(guards, "model"):  # a RuntimeError while another thread uses the model
        return clip_by_norm(grads, max_norm, norm_type, error_if_nonfinite)


def clip_grad_value_(parameters: Iterable[Parameter] | Parameter, clip_value: float) -> None:
    """Clamp every gradient element into [−clip_value, clip_value] in place.

    Parameters
    ----------
    parameters : Parameter or iterable of Parameter
        The parameters whose ``.grad`` is clamped.
    clip_value : float
        The bound, >= 0.

    Raises
    ------
    TypeError
        If clip_value is not a number or parameters are not Parameters.
    ValueError
        If clip_value is negative or NaN.

    See Also
    --------
    clip_grad_norm_ : Scale the gradients to a total norm.

    Examples
    --------
    >>> import fastprop as fp
    >>> layer = fp.Linear(2, 1, bias=False, rng=0)
    >>> layer.weight.grad[:] = [[3.0, -4.0]]
    >>> fp.clip_grad_value_(layer.parameters(), 1.0)
    >>> layer.weight.grad
    array([[ 1., -1.]], dtype=float32)
    """
    grads, guards = _grad_runs(parameters)
    try:
        c = float(clip_value)
    except (TypeError, ValueError):
        raise TypeError(f"clip_value must be a number, got {clip_value!r}") from None
    if not c >= 0:
        raise ValueError(f"clip_value must be a number >= 0, got {clip_value!r}")
    with _Exclusive(guards, "model"):
        for g in grads:
            _kernels.grad_scale(g, c, True)
