"""Automatic differentiation beyond the gradient: forward mode, vector–Jacobian products,
Jacobians, the full Hessian, per-example gradients and the DP-SGD gradient.

``jvp`` is forward-mode accumulation: Pearlmutter's R-forward pass (``fastprop.curvature``)
carries the directional derivative next to every activation, so y and J v come out of
one pass. ``vjp`` is reverse mode on the same pass's workspaces: the R-backward of the
zero direction with the first-order terms dropped (the Gauss–Newton form) is exactly
the chain of vector–Jacobian products, so no ``.grad`` is touched.

``hessian`` pushes a BLOCK of k directions through the R-passes at once: the R-values
are (k, B, width) arrays, so ``x Vᵀ`` for all k directions is one GEMM with k·out
columns and ``R{x} Wᵀ`` one GEMM with k·B rows. The Hessian is H·V for V = the identity,
block by block.

Per-example gradients of a dense layer are outer products gᵢ hᵢᵀ (gᵢ the gradient at
the layer's output for example i's own loss, hᵢ its input), so their squared norms are
‖gᵢ‖²‖hᵢ‖² (plus ‖gᵢ‖² for the bias) and never need a (B × parameters) array
(Goodfellow, "Efficient per-example gradient computations", 2015). DP-SGD (Abadi et
al. 2016) scales the rows of g by each example's clip factor before the ∇W GEMM.

Everything runs on the R-pass's own workspaces (``Module._rws``): the parameters,
every ``.grad`` and the last ordinary forward are left as they were.
"""
from __future__ import annotations
import math

import numpy as np

from . import _kernels, ops
from .curvature import _check as _check_curvature
from .curvature import hvp, vector_views
from .losses import Loss
from .nn import Activation, Linear, LowRankLinear, Module, PReLU, Sequential, as_input, flat_runs
from typing import Any
from numpy.typing import ArrayLike, NDArray

__all__ = ["jvp", "vjp", "jacobian", "hessian", "per_example_grads", "per_example_grad_norms"]


# ---------------------------------------------------------------- the seam: today's R-passes
# The per-module R-passes of fastprop.curvature, as they run today; the C tape will
# replace these three functions (and nothing else here needs to know).

def _rforward(model: Any, x: Any, rx: Any, v: Any) -> Any:
    """(y, R{y}) as workspace views: x moving by rx (None: fixed), parameters by v (dict)."""
    return model.layer_rforward(x, rx, v)


def _rbackward(model: Any, g: Any, rg: Any, v: Any, hv: Any, need_input_grad: Any) -> Any:
    """(gx, R{gx}); adds R{∂J/∂θ} into hv (dict). g None: the Gauss–Newton form."""
    return model.layer_rbackward(g, rg, v, hv, need_input_grad)


def _buf(model: Any, key: Any, shape: Any, dtype: Any) -> Any:
    """A workspace of this module's passes, kept on the model per key (and shape)."""
    return model.r_workspace(("autodiff",) + key, shape, dtype)


# ---------------------------------------------------------------- checks

def _check_model(model: Any, what: Any) -> Any:
    """The parameters of a model the R-pass supports (one output), else a TypeError."""
    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastprop Module, got {type(model).__name__}")
    for m in model.modules():
        if not m.r_supported and not m.children():
            raise TypeError(f"{type(m).__name__} has no R-operator: {what} works on Sequential "
                            f"and Graph models of Linear, PReLU, the activations, Add, Concat "
                            f"and Mul")
    if not model.r_supported:
        raise TypeError(f"{what} needs a built Sequential or Graph of Linear, PReLU, the "
                        f"activations, Add, Concat and Mul")
    outputs = getattr(model, "output_names", ())
    if len(outputs) > 1:
        raise TypeError(f"model has {len(outputs)} outputs {outputs}: {what} needs a model "
                        f"with one output")
    return model.parameters()


def _dtype(x: Any) -> Any:
    return (x[0] if isinstance(x, list) else x).dtype


def _rows(x: Any) -> Any:
    return (x[0] if isinstance(x, list) else x).shape[0]


def _zero_direction(params: Any, dtype: Any) -> Any:
    n = sum(p.size for p in params)
    return dict(zip(params, vector_views(np.zeros(n, dtype), params)))


def _param_direction(params: Any, v: Any, dtype: Any) -> Any:
    n = sum(p.size for p in params)
    arr = as_input(v, dtype, "v")
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"v has shape {arr.shape}, expected ({n},): the model's {n} "
                         f"parameters, flat (see parameters_to_vector)")
    return dict(zip(params, vector_views(arr, params)))


def _input_direction(model: Any, x: Any, vx: Any) -> Any:
    """vx checked against the checked input x: the same structure, shapes and dtype."""
    if isinstance(x, list):  # a Graph's several inputs: vx as a tuple or dict like them
        try:
            vx = model.check_input(vx)
        except ValueError as e:
            raise ValueError(f"vx: {e}") from None
        pairs = zip(x, vx)
    else:
        vx = as_input(vx, x.dtype, "vx")
        pairs = [(x, vx)]
    for a, b in pairs:
        if a.shape != b.shape:
            raise ValueError(f"vx has shape {b.shape}, expected {a.shape} (the shape of x)")
    return vx


def _targets(x: Any, y: Any) -> Any:
    y = np.asarray(y)
    if y.ndim == 0 or y.shape[0] != _rows(x):
        raise ValueError(f"x has {_rows(x)} rows but y has shape {y.shape}")
    return y


# ---------------------------------------------------------------- jvp, vjp, jacobian

def jvp(model: Module, x: ArrayLike, v: ArrayLike | None = None,
        vx: ArrayLike | None = None) -> tuple[NDArray[Any], NDArray[Any]]:
    """Forward mode: the outputs and their directional derivative, in one R-forward pass.

    Parameters
    ----------
    model : Module
        A Sequential (nested ones too) of Linear, PReLU and the activations, or a Graph
        with one output of those, Add, Concat and Mul.
    x : array_like of shape (B, in_features), or tuple or dict of them
        The inputs (several for a Graph with several inputs).
    v : array_like of shape (n,), optional
        A flat parameter direction (the layout of ``parameters_to_vector``).
    vx : array_like, optional
        An input direction shaped like x. At least one of v and vx.

    Returns
    -------
    y : ndarray of shape (B, out)
        model(x).
    Jv : ndarray of shape (B, out)
        d/dr model(x + r vx; θ + r v) at r = 0.

    Raises
    ------
    TypeError
        If the model has a module without an R-pass.
    ValueError
        If neither v nor vx is given, or x, v or vx has the wrong shape.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 4, dtype=np.float64, rng=0), fp.Tanh(),
    ...                       fp.Linear(4, 2, dtype=np.float64, rng=1))
    >>> x = np.random.default_rng(0).standard_normal((5, 3))
    >>> y, Jv = fp.jvp(model, x, vx=np.ones((5, 3)))
    >>> np.allclose(Jv, fp.jacobian(model, x).sum(axis=2))
    True
    """
    params = _check_model(model, "jvp")
    x = model.check_input(x)
    dtype = _dtype(x)
    if v is None and vx is None:
        raise ValueError("jvp needs a direction: v (the parameters'), vx (the input's) or both")
    V = _zero_direction(params, dtype) if v is None else _param_direction(params, v, dtype)
    rx = None if vx is None else _input_direction(model, x, vx)
    with model.exclusive():
        y, ry = _rforward(model, x, rx, V)
        return y.copy(), (np.zeros_like(y) if ry is None else ry.copy())


def vjp(model: Module, x: ArrayLike,
        gy: ArrayLike) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any] | tuple[NDArray[Any], ...]]:
    """Reverse mode: (y, gy·∂y/∂θ flat, gy·∂y/∂x), every ``.grad`` left as it was.

    Parameters
    ----------
    model : Module
        As :func:`jvp`.
    x : array_like of shape (B, in_features), or tuple or dict of them
        The inputs.
    gy : array_like of shape (B, out)
        The cotangent of the outputs.

    Returns
    -------
    y : ndarray of shape (B, out)
        model(x).
    grad_params : ndarray of shape (n,)
        gy·∂y/∂θ, in the layout of ``parameters_to_vector``.
    grad_x : ndarray or tuple of ndarray
        gy·∂y/∂x, shaped like x (a tuple for several inputs).

    Raises
    ------
    TypeError
        If the model has a module without an R-pass.
    ValueError
        If gy does not have the output's shape.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 4, dtype=np.float64, rng=0), fp.Tanh(),
    ...                       fp.Linear(4, 2, dtype=np.float64, rng=1))
    >>> x = np.random.default_rng(0).standard_normal((5, 3))
    >>> y, grad_params, grad_x = fp.vjp(model, x, np.ones((5, 2)))
    >>> grad_params.shape, np.allclose(grad_x, fp.jacobian(model, x).sum(axis=1))
    ((26,), True)
    """
    params = _check_model(model, "vjp")
    x = model.check_input(x)
    dtype = _dtype(x)
    gy = as_input(gy, dtype, "gy")
    n = sum(p.size for p in params)
    zero = _zero_direction(params, dtype)
    grad = np.zeros(n, dtype)
    with model.exclusive():
        y, _ = _rforward(model, x, None, zero)
        if gy.shape != y.shape:
            raise ValueError(f"gy has shape {gy.shape}, expected {y.shape} (the output's)")
        y = y.copy()
        _, gx = _rbackward(model, None, gy.copy(), zero, dict(zip(params, vector_views(grad, params))),
                           True)
        gx = tuple(a.copy() for a in gx) if isinstance(gx, tuple) else gx.copy()
    return y, grad, gx


def jacobian(model: Module, x: ArrayLike) -> NDArray[Any]:
    """∂y/∂x per example: (B, out, in) for a model with one input and one output.

    The unit directions go along the batch axis (the rows of a model are independent):
    forward mode with in·B rows when in ≤ out, reverse mode with out·B rows otherwise,
    in chunks of examples that keep the stacked batch near 2¹⁶ rows.

    Parameters
    ----------
    model : Module
        As :func:`jvp`, with one input.
    x : array_like of shape (B, in_features)
        The inputs.

    Returns
    -------
    ndarray of shape (B, out, in_features)
        ``J[i, k, j] = ∂y[i, k]/∂x[i, j]``.

    Raises
    ------
    TypeError
        If the model has several inputs, or a module without an R-pass.
    ValueError
        If x does not match the model.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 4, dtype=np.float64, rng=0), fp.Tanh(),
    ...                       fp.Linear(4, 2, dtype=np.float64, rng=1))
    >>> x = np.random.default_rng(0).standard_normal((5, 3))
    >>> fp.jacobian(model, x).shape
    (5, 2, 3)
    """
    params = _check_model(model, "jacobian")
    x = model.check_input(x)
    if isinstance(x, list):
        raise TypeError(f"jacobian needs a model with one input, this one has {len(x)}")
    B, d_in = x.shape
    zero = _zero_direction(params, x.dtype)
    with model.exclusive():
        y, _ = _rforward(model, x[:1], None, zero)
        d_out = y.shape[1]
        J = np.empty((B, d_out, d_in), x.dtype)
        d = min(d_in, d_out)
        step = max(1, 2 ** 16 // d)
        for a in range(0, B, step):
            xa = x[a:a + step]
            b = xa.shape[0]
            xt = np.tile(xa, (d, 1))                       # row j·b + i: example i, direction j
            eye = np.repeat(np.eye(d, dtype=x.dtype), b, axis=0)
            if d_in <= d_out:
                _, ry = _rforward(model, xt, eye, zero)
                J[a:a + b] = ry.reshape(d, b, d_out).transpose(1, 2, 0)
            else:
                hv = _zero_direction(params, x.dtype)  # ∂/∂θ, unused
                _rforward(model, xt, None, zero)
                _, gx = _rbackward(model, None, eye, zero, hv, True)
                J[a:a + b] = gx.reshape(d, b, d_in).transpose(1, 0, 2)
    return J


# ---------------------------------------------------------------- the chain of leaves

def _leaves(model: Any) -> Any:
    """The modules of a (nested) Sequential in order, or (None, the first one that is not
    Linear, LowRankLinear, PReLU or an activation)."""
    if isinstance(model, Sequential):
        out = []
        for m in model.layers:
            sub, bad = _leaves(m)
            if sub is None:
                return None, bad
            out += sub
        return out, None
    if isinstance(model, (Linear, LowRankLinear, Activation, PReLU)):
        return [model], None
    return None, model


# ---------------------------------------------------------------- the Hessian

def hessian(model: Module, loss: Loss, X: ArrayLike, y: ArrayLike, *,
            max_bytes: int = 2 ** 30) -> NDArray[Any]:
    """The (n, n) Hessian of the mean loss over (X, y) w.r.t. the flat parameters.

    Columns H eᵢ come from the R-passes with a block of unit directions at once (GEMMs
    with k directions side by side) for a Sequential (nested) of Linear, PReLU and the
    activations; a Graph takes one exact ``hvp`` per column. The result is exact (no
    finite differences); its rounding-level asymmetry is removed by (H + Hᵀ)/2.
    ``max_bytes``: a ValueError when n² entries of the model's dtype would take more.

    Parameters
    ----------
    model : Module
        As :func:`fastprop.curvature.hvp`.
    loss : Loss
        As :func:`fastprop.curvature.hvp`.
    X : array_like of shape (samples, in_features)
        The inputs.
    y : array_like
        The loss's targets.
    max_bytes : int, default 2**30
        The largest Hessian to form, in bytes.

    Returns
    -------
    ndarray of shape (n, n)
        The symmetric Hessian, of the model's dtype.

    Raises
    ------
    TypeError
        If the model or loss has no R-pass.
    ValueError
        If the Hessian would take more than max_bytes, or X or y does not match.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 4, dtype=np.float64, rng=0), fp.Tanh(),
    ...                       fp.Linear(4, 2, dtype=np.float64, rng=1))
    >>> x = np.random.default_rng(0).standard_normal((5, 3))
    >>> H = fp.hessian(model, fp.SoftmaxCrossEntropy(), x, np.array([0, 1, 0, 1, 1]))
    >>> H.shape, np.array_equal(H, H.T)
    ((26, 26), True)
    """
    params = _check_curvature(model, loss, on_tape=False)   # its block path is modular
    dtype = params[0].dtype
    n = sum(p.size for p in params)
    size = n * n * dtype.itemsize
    if size > max_bytes:
        raise ValueError(f"the Hessian of {n} parameters takes {size:,} bytes, more than "
                         f"max_bytes={max_bytes:,}: pass a larger max_bytes to allow it")
    X = model.check_input(X)
    y = _targets(X, y)
    leaves, _ = _leaves(model)
    if leaves is None:  # a Graph: one exact H eᵢ per column
        H = np.empty((n, n), dtype)
        e = np.zeros(n, dtype)
        for i in range(n):
            e[i] = 1
            hvp(model, loss, X, y, e, out=H[i])
            e[i] = 0
    else:
        with model.exclusive():
            H = _block_hessian(leaves, params, loss, X, y)
    H += H.T
    H *= dtype.type(0.5)
    return H


def _block_hessian(leaves: Any, params: Any, loss: Any, x: Any, y: Any) -> Any:
    """Rows k of the unsymmetrised Hessian, H·V for V blocks of the identity (H[i] = H eᵢ)."""
    dtype = params[0].dtype
    n = sum(p.size for p in params)
    B = x.shape[0]
    width = max([x.shape[1]] + [m.out_features for m in leaves if isinstance(m, Linear)])
    # about 2²⁰ R-values a block: cache-sized, which ran faster than larger blocks
    k = max(1, min(n, 2 ** 20 // (4 * B * width * len(leaves))))
    H = np.zeros((n, n), dtype)
    for a in range(0, n, k):
        b = min(a + k, n)
        V = np.zeros((b - a, n), dtype)
        V[np.arange(b - a), np.arange(a, b)] = 1
        _block_rpass(leaves, params, loss, x, y, V, H[a:b])
    return H


def _block_views(M: Any, params: Any) -> Any:
    """{parameter: (k, *shape) view of M's columns}, M (k, n) in the flat layout."""
    out, offset = {}, 0
    for p in params:
        out[p] = M[:, offset:offset + p.size].reshape((M.shape[0],) + p.shape)
        offset += p.size
    return out


def _block_rpass(leaves: Any, params: Any, loss: Any, x: Any, y: Any, V: Any, HV: Any) -> Any:
    """HV (k, n) += H·V for k directions V (k, n): R-forward and R-backward with R-values
    of shape (k, B, width), k directions side by side in each GEMM."""
    Vp, Hp = _block_views(V, params), _block_views(HV, params)
    k, B = V.shape[0], x.shape[0]
    # a parameter no direction of the block moves adds no x Vᵀ (forward) or g V (backward)
    # term: R{x} stays None up to the first layer the block moves
    live = {p: bool(Vp[p].any()) for p in params}
    saved, rx = [], None
    for m in leaves:  # R-forward
        if isinstance(m, Linear):
            W, out = m.weight.data, m.out_features
            bias = m.bias_enabled
            y_ = ops.dense_forward(x, W, m.bias.data if bias else None)
            ry = None
            if live[m.weight]:  # x V_kᵀ for every k: one (B, in) × (in, k·out) GEMM
                ry = np.ascontiguousarray((x @ Vp[m.weight].reshape(k * out, -1).T)
                                          .reshape(B, k, out).transpose(1, 0, 2))
            if bias and live[m.bias]:
                vb = np.broadcast_to(Vp[m.bias][:, None, :], (k, B, out))
                ry = vb.copy() if ry is None else ry + vb
            if rx is not None:
                rxw = (rx.reshape(k * B, -1) @ W.T).reshape(k, B, out)
                ry = rxw if ry is None else ry + rxw
            saved.append((x, rx, None))
        elif isinstance(m, Activation):
            y_ = ops.activation_forward(x, m.name, **m.params)
            d1 = ops.activation_backward(np.ones_like(x), m.name, x=x, **m.params)  # f′(x)
            ry = None if rx is None else rx * d1
            saved.append((x, rx, d1))
        else:  # PReLU: R{y} = f′ R{x} + [x ≤ 0] x v_a
            neg = x <= 0
            d1 = np.where(neg, m.weight.data, 1).astype(x.dtype)
            y_ = x * d1
            ry = None if rx is None else rx * d1
            if live[m.weight]:
                va = np.where(neg, x, 0)[None] * Vp[m.weight][:, None, :]
                ry = va if ry is None else ry + va
            saved.append((x, rx, d1))
        x, rx = y_, ry
    z, rz = x, rx
    if rz is None:  # the block moves nothing
        return HV
    args = loss.kernel_args(z.dtype)  # the loss's options: class weights, Huber's delta, ...
    _, g = getattr(ops, loss.kernel)(z, y, **args)
    # the hvp kernel takes the mean over its k·B rows: k times the mean over B
    rg = getattr(ops, f"{loss.kernel}_hvp")(np.tile(z, (k, 1)), np.tile(y, (k,) + (1,) * (y.ndim - 1)),
                                            rz.reshape(k * B, -1), **args)
    rg = rg.reshape(k, B, -1) * z.dtype.type(k)
    first = next(i for i, m in enumerate(leaves) if m.parameters())
    for i in range(len(leaves) - 1, first - 1, -1):  # R-backward
        m, (x, rx, d1) = leaves[i], saved[i]
        if isinstance(m, Linear):
            W = m.weight.data
            out, n_in = W.shape
            # Hv_W += R{g}ᵀ x + gᵀ R{x}, for every k at once
            Hp[m.weight][...] += (rg.transpose(0, 2, 1).reshape(k * out, B) @ x).reshape(k, out, n_in)
            if rx is not None:
                Hp[m.weight][...] += (g.T @ rx.transpose(1, 0, 2).reshape(B, k * n_in)) \
                    .reshape(out, k, n_in).transpose(1, 0, 2)
            if m.bias_enabled:
                Hp[m.bias][...] += rg.sum(axis=1)
            if i == first:
                break
            # R{gx} = R{g} W + g V;  gx = g W
            rgx = (rg.reshape(k * B, out) @ W).reshape(k, B, n_in)
            if live[m.weight]:
                rgx += (g @ Vp[m.weight].transpose(1, 0, 2).reshape(out, k * n_in)) \
                    .reshape(B, k, n_in).transpose(1, 0, 2)
            g, rg = g @ W, rgx
        elif isinstance(m, Activation):
            # R{gx} = R{g} ⊙ f′ + g ⊙ f″ ⊙ R{x}
            rgx = rg * d1
            if rx is not None:
                rgx += rx * ops.activation_second(g, m.name, x=x, **m.params)
            g, rg = g * d1, rgx
        else:  # PReLU: R{gx} = f′ R{g} + [x ≤ 0] v_a g;  Hv_a += Σ_{x ≤ 0} (R{g} x + g R{x})
            neg = x <= 0
            va = Vp[m.weight][:, None, :]
            t = rg * np.where(neg, x, 0)
            if rx is not None:
                t += np.where(neg, g, 0) * rx
            t = t.sum(axis=1)
            Hp[m.weight][...] += t.sum(axis=1, keepdims=True) if m.num_parameters == 1 else t
            if i == first:
                break
            rgx = rg * d1
            if live[m.weight]:
                rgx += np.where(neg, g, 0) * va
            g, rg = g * d1, rgx
    return HV


# ---------------------------------------------------------------- per-example gradients

def _per_example_check(model: Any, loss: Any, x: Any, y: Any,
                       sample_weight: Any = None) -> Any:
    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastprop Module, got {type(model).__name__}")
    if not isinstance(loss, Loss):
        raise TypeError(f"loss must be a fastprop loss, got {type(loss).__name__}")
    params = model.parameters()
    if not params:
        raise ValueError("the model has no parameters")
    leaves, bad = _leaves(model)
    if leaves is None:
        _check_model(model, "per-example gradients")
    x = model.check_input(x)
    if _rows(x) < 1:
        raise ValueError("x must have at least one row")
    y = _targets(x, y)
    if sample_weight is not None:  # the loss kernel checks the values (finite, ≥ 0, Σ > 0)
        sample_weight = np.asarray(sample_weight)
        if sample_weight.shape != (_rows(x),):
            raise ValueError(f"sample_weight has shape {sample_weight.shape}, expected "
                             f"({_rows(x)},): one weight per row of x")
    return params, leaves, x, y, sample_weight


def _chain_forward(model: Any, leaves: Any, x: Any) -> Any:
    """The forward of a chain on this module's workspaces; returns (output, saved)."""
    saved = []
    dtype = x.dtype
    for i, m in enumerate(leaves):
        B = x.shape[0]
        if isinstance(m, Linear):
            y = ops.dense_forward(x, m.weight.data, m.bias.data if m.bias_enabled else None,
                                  out=_buf(model, (i, "y"), (B, m.out_features), dtype))
            saved.append(x)
        elif isinstance(m, LowRankLinear):
            h = ops.dense_forward(x, m.U.data, None, out=_buf(model, (i, "h"), (B, m.rank), dtype))
            y = ops.dense_forward(h, m.V.data, m.bias.data if m.bias_enabled else None,
                                  out=_buf(model, (i, "y"), (B, m.out_features), dtype))
            saved.append((x, h))
        elif isinstance(m, Activation):
            y = ops.activation_forward(x, m.name, out=_buf(model, (i, "y"), x.shape, dtype),
                                       **m.params)
            saved.append((x, y))
        else:
            y = ops.prelu_forward(x, m.weight.data, out=_buf(model, (i, "y"), x.shape, dtype))
            saved.append(x)
        x = y
    return x, saved


def _chain_backward(model: Any, leaves: Any, saved: Any, g: Any) -> Any:
    """Back-propagates g (B, out), each row an example's own output gradient, and returns
    the per-example gradients as records: (weight, bias or None, gᵢ rows, hᵢ rows) for the
    outer products gᵢ hᵢᵀ, or (parameter, None, rows, None) for explicit rows."""
    records = []
    first = next(i for i, m in enumerate(leaves) if m.parameters())
    for i in range(len(leaves) - 1, first - 1, -1):
        m, s = leaves[i], saved[i]
        B = g.shape[0]
        need = i > first
        if isinstance(m, Linear):
            records.append((m.weight, m.bias, g, s))
            if need:
                g = ops.gemm(g, m.weight.data, out=_buf(model, (i, "gx"), (B, m.in_features), g.dtype))
        elif isinstance(m, LowRankLinear):
            x, h = s
            records.append((m.V, m.bias, g, h))
            gh = ops.gemm(g, m.V.data, out=_buf(model, (i, "gh"), (B, m.rank), g.dtype))
            records.append((m.U, None, gh, x))
            if need:
                g = ops.gemm(gh, m.U.data, out=_buf(model, (i, "gx"), (B, m.in_features), g.dtype))
        elif isinstance(m, Activation):
            x, y = s
            g = ops.activation_backward(g, m.name, x=x, y=y, out=g, **m.params)
        else:  # PReLU: ∂/∂a of example i = Σ over its features with x ≤ 0 of g x
            rows = np.where(s <= 0, g * s, 0)
            if m.num_parameters == 1:
                rows = rows.sum(axis=1, keepdims=True)
            records.append((m.weight, None, rows, None))
            g = ops.prelu_backward(g, s, m.weight.data, out=g,
                                   grad_weight=np.empty_like(m.weight.data))[0]
    return records


def _row_sq(a: Any) -> Any:
    return np.einsum("ij,ij->i", a, a)


def _squared_norms(records: Any, B: Any, dtype: Any) -> Any:
    sq = np.zeros(B, dtype)
    for w, b, g, h in records:
        gg = _row_sq(g)
        if h is None:
            sq += gg
        else:
            sq += gg * (_row_sq(h) + (1 if b is not None else 0))
    return sq


def _per_example_chain(model: Any, leaves: Any, loss: Any, x: Any, y: Any,
                       sample_weight: Any = None) -> Any:
    """The loss and the records of the per-example gradients: B times example i's part of
    the batch loss's gradient (for an unweighted loss, a mean over rows, its own loss's)."""
    z, saved = _chain_forward(model, leaves, x)
    J, g = getattr(ops, loss.kernel)(z, y, grad_out=_buf(model, ("loss_g",), z.shape, z.dtype),
                                     sample_weight=sample_weight, **loss.kernel_args(z.dtype))
    g *= g.dtype.type(g.shape[0])
    return J, z, _chain_backward(model, leaves, saved, g)


def _rows_by_vjp(model: Any, params: Any, loss: Any, x: Any, y: Any,
                 sample_weight: Any = None) -> Any:
    """(B, n) per-example gradients of a Graph: one reverse pass per example."""
    dtype = _dtype(x)
    B = _rows(x)
    zero = _zero_direction(params, dtype)
    z, _ = _rforward(model, x, None, zero)
    _, g = getattr(ops, loss.kernel)(z, y, sample_weight=sample_weight, **loss.kernel_args(z.dtype))
    g *= dtype.type(B)
    G = np.zeros((B, sum(p.size for p in params)), dtype)
    for i in range(B):
        xi = [t[i:i + 1] for t in x] if isinstance(x, list) else x[i:i + 1]
        _rforward(model, xi, None, zero)
        _rbackward(model, None, g[i:i + 1].copy(), zero, dict(zip(params, vector_views(G[i], params))),
                   False)
    return G


def per_example_grads(model: Module, loss: Loss, x: ArrayLike, y: ArrayLike,
                      sample_weight: ArrayLike | None = None) -> NDArray[Any]:
    """(B, n): row i is the gradient of example i's own loss (not divided by B) w.r.t. the
    flat parameters, in ``parameters()`` order (the layout of ``parameters_to_vector``).

    With weights (``sample_weight`` s, a class-weighted cross-entropy's c, label smoothing)
    the batch loss is J = Σᵢ wᵢ lᵢ / Σᵢ wᵢ and row i is B times example i's part of ∇J,
    B wᵢ ∇lᵢ / Σⱼ wⱼ: the rows' mean is still ∇J, and this is Opacus' ``grad_sample`` for
    ``loss_reduction="mean"``. Unweighted (all wᵢ equal) it is ∇lᵢ; label smoothing alone
    changes lᵢ, not the weights.

    model: a Sequential (nested) of Linear, LowRankLinear, PReLU and the activations (one
    forward and one backward, the rows formed from the outer products), or a Graph the
    R-pass supports (one reverse pass per example). loss: any fastprop loss (a mean over rows).

    Parameters
    ----------
    model : Module
        The model (see above).
    loss : Loss
        Any fastprop loss.
    x : array_like of shape (B, in_features)
        The inputs.
    y : array_like
        The loss's targets.
    sample_weight : array_like of shape (B,), optional
        Per-example weights of the loss.

    Returns
    -------
    ndarray of shape (B, n)
        One gradient per example, in the flat layout.

    Raises
    ------
    TypeError
        If the model holds a module this cannot differentiate per example.
    ValueError
        If x, y or sample_weight does not match.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 4, dtype=np.float64, rng=0), fp.Tanh(),
    ...                       fp.Linear(4, 2, dtype=np.float64, rng=1))
    >>> x = np.random.default_rng(0).standard_normal((5, 3))
    >>> labels, loss_fn = np.array([0, 1, 0, 1, 1]), fp.SoftmaxCrossEntropy()
    >>> G = fp.per_example_grads(model, loss_fn, x, labels)
    >>> _ = loss_fn(model(x), labels)
    >>> model.zero_grad()
    >>> _ = model.backward(loss_fn.backward())
    >>> grad = np.concatenate([p.grad.ravel() for p in model.parameters()])
    >>> G.shape, np.allclose(G.mean(axis=0), grad)
    ((5, 26), True)
    """
    params, leaves, x, y, sw = _per_example_check(model, loss, x, y, sample_weight)
    with model.exclusive():
        if leaves is None:
            return _rows_by_vjp(model, params, loss, x, y, sw)
        _, _, records = _per_example_chain(model, leaves, loss, x, y, sw)
        B = x.shape[0]
        G = np.empty((B, sum(p.size for p in params)), x.dtype)
        cols = _block_views(G, params)
        for w, b, g, h in records:
            if h is None:
                cols[w][...] = g.reshape(cols[w].shape)
                continue
            np.multiply(g[:, :, None], h[:, None, :], out=cols[w])
            if b is not None:
                cols[b][...] = g
    return G


def per_example_grad_norms(model: Module, loss: Loss, x: ArrayLike, y: ArrayLike,
                           sample_weight: ArrayLike | None = None) -> NDArray[Any]:
    """(B,): the 2-norm of each example's own loss gradient over all parameters (with
    weights: of per_example_grads' rows, B wᵢ ∇lᵢ / Σⱼ wⱼ).

    For a chain (as per_example_grads) no per-example gradient is formed: a dense
    layer's is the outer product gᵢ hᵢᵀ, of squared norm ‖gᵢ‖²‖hᵢ‖² (‖gᵢ‖² for its bias);
    the cost is one forward and one backward without the ∇W GEMMs. A Graph takes the
    norms of per_example_grads' rows.

    Parameters
    ----------
    model : Module
        As :func:`per_example_grads`.
    loss : Loss
        Any fastprop loss.
    x : array_like of shape (B, in_features)
        The inputs.
    y : array_like
        The loss's targets.
    sample_weight : array_like of shape (B,), optional
        Per-example weights of the loss.

    Returns
    -------
    ndarray of shape (B,)
        The norms.

    Raises
    ------
    TypeError
        As :func:`per_example_grads`.
    ValueError
        As :func:`per_example_grads`.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 4, dtype=np.float64, rng=0), fp.Tanh(),
    ...                       fp.Linear(4, 2, dtype=np.float64, rng=1))
    >>> x = np.random.default_rng(0).standard_normal((5, 3))
    >>> labels, loss_fn = np.array([0, 1, 0, 1, 1]), fp.SoftmaxCrossEntropy()
    >>> norms = fp.per_example_grad_norms(model, loss_fn, x, labels)
    >>> np.allclose(norms, np.linalg.norm(fp.per_example_grads(model, loss_fn, x, labels), axis=1))
    True
    """
    params, leaves, x, y, sw = _per_example_check(model, loss, x, y, sample_weight)
    with model.exclusive():
        if leaves is None:
            return np.sqrt(_row_sq(_rows_by_vjp(model, params, loss, x, y, sw)))
        _, _, records = _per_example_chain(model, leaves, loss, x, y, sw)
        return np.sqrt(_squared_norms(records, x.shape[0], x.dtype))


# ---------------------------------------------------------------- DP-SGD

class DPGradient:
    """The DP-SGD gradient of Abadi et al. (2016), written into every ``.grad``:

        ∇ = ( Σᵢ gᵢ · min(1, C / ‖gᵢ‖)  +  σ C ξ ) / B

    gᵢ the gradient of example i's own loss over all parameters (with weights, the rows of
    ``per_example_grads``: B wᵢ ∇lᵢ / Σⱼ wⱼ), C = per_example_clip, σ = noise_multiplier,
    B the batch's rows, and ξ n standard normals (flat in ``parameters()`` order), drawn in C
    (csrc/dropout.c's ``gaussian_noise``: Philox4x32-10 and Box–Muller) and added to the
    gradient in the same pass. The stream's key comes from ``rng`` (an int seed or a NumPy
    Generator, as Dropout's); each step takes the next ``dropout_blocks(n)`` counter values,
    so the noise is reproducible from the seed (none is drawn when σ = 0).
    This is Opacus' normalisation for ``loss_reduction="mean"`` with B the actual batch
    size (Opacus divides by the expected batch size of its Poisson sampling, and uses
    C / (‖gᵢ‖ + 1e-6)). The clip factors scale the rows of g before each ∇W GEMM, so a
    layer still costs two GEMMs in the backward.
    """

    def __init__(self, model: Module, loss: Loss, per_example_clip: Any,
                 noise_multiplier: float = 0.0,
                 rng: np.random.Generator | int | None = None) -> None:
        if per_example_clip is None:
            raise ValueError("per_example_clip must be given for DP-SGD")
        clip, sigma = _positive(per_example_clip, "per_example_clip"), \
            _positive(noise_multiplier, "noise_multiplier", zero=True)
        leaves, bad = _leaves(model)
        if leaves is None:
            raise TypeError(f"per_example_clip needs a Sequential (nested) of Linear, "
                            f"LowRankLinear, PReLU and the activations; got a "
                            f"{type(bad).__name__}")
        if not model.parameters():
            raise ValueError("the model has no parameters")
        if not isinstance(loss, Loss):
            raise TypeError(f"loss must be a fastprop loss, got {type(loss).__name__}")
        if rng is not None and not isinstance(rng, np.random.Generator) and \
                (isinstance(rng, bool) or not isinstance(rng, (int, np.integer))):
            raise TypeError(f"rng must be a numpy Generator, an int seed or None, got "
                            f"{type(rng).__name__}")
        self.model, self.loss, self.leaves = model, loss, leaves
        self.clip, self.sigma = clip, sigma
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self._key = int(rng.integers(0, 2 ** 64, dtype=np.uint64))
        self._counter = 0

    def rng_state(self) -> dict:
        """The noise stream's position: {"key": int, "counter": int}."""
        return {"key": self._key, "counter": self._counter}

    def add_noise(self, grads: Any, scale: float, accumulate: bool = True) -> None:
        """grads (the flat runs of the parameters' gradients, in order) += scale·ξ (= when
        not accumulate), ξ the stream's next n normals; one C pass, and the stream advances."""
        offset = 0
        for g in grads:
            _kernels.gaussian_noise(g, self._key, self._counter, scale=scale, offset=offset,
                                    accumulate=accumulate)
            offset += g.size
        self._counter = (self._counter + _kernels.dropout_blocks(offset)) % 2 ** 64

    def __call__(self, x: NDArray[Any], y: NDArray[Any], sample_weight: Any = None) -> Any:
        """(J, output): the loss and the model's output (a workspace view); x is checked."""
        model, B = self.model, x.shape[0]
        J, z, records = _per_example_chain(model, self.leaves, self.loss, x, y, sample_weight)
        norms = np.sqrt(_squared_norms(records, B, x.dtype))
        dt = x.dtype.type
        # the clip factor and the 1/B of the mean, on the rows of g
        scale = np.minimum(dt(1), dt(self.clip) / np.maximum(norms, np.finfo(x.dtype).tiny))
        scale *= dt(1 / B)
        for w, b, g, h in records:
            g *= scale[:, None]
            if h is None:
                w.grad[...] = g.sum(axis=0).reshape(w.shape)
            else:
                ops.dense_backward(g, h, w.data, bias=b is not None, input_grad=False,
                                   grad_weight=w.grad, grad_bias=None if b is None else b.grad)
        if self.sigma > 0:
            self.add_noise([g for _, g in flat_runs(model.parameters())], self.sigma * self.clip / B)
        return J, z


def _positive(value: Any, name: Any, zero: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{name} must be a finite number {'>= 0' if zero else '> 0'}, "
                         f"got {value!r}")
    return value
