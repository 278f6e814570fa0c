"""Curvature: exact Hessian–vector products, Gauss–Newton products, eigenvalues, trace.

``hvp(model, loss, x, y, v)`` is Pearlmutter's R-operator: one forward pass that
carries the directional derivatives R{·} along v next to the activations, then one
backward pass that carries R{∂J/∂·} next to the gradient. The Hessian is never
formed; the cost is a small multiple of one gradient (about 2× in GEMM FLOPs for
an MLP). ``gnvp`` is the same pass with the first-order terms dropped: J_outᵀ H_loss
J_out v, positive semi-definite for the three losses.

Vectors ``v`` and the results are flat, in the model's flat-parameter layout
(``model.parameters()`` concatenated, each raveled): ``parameters_to_vector``,
``vector_to_parameters`` and ``vector_views`` move between that and the parameters.

Neither the parameters nor any ``.grad`` is touched, and neither is the last
ordinary forward's workspace: the R pass has its own.

Both passes run on the model's tape (csrc/tape.c: the R-forward and R-backward of every op
in C, a Python module's own ``_rforward``/``_rbackward`` called back for its op only), built
once per model and kept until its parameters move; a model the tape cannot lower takes the
modular path (each module's ``_rforward``/``_rbackward``, workspaces in ``Module._rws``).
"""
from __future__ import annotations
import weakref

import numpy as np

from . import _kernels, ops, plan
from .losses import Loss
from .nn import BufferVersions, Module, Parameter, as_input
from typing import Any, Iterable
from numpy.typing import ArrayLike, NDArray

__all__ = ["hvp", "gnvp", "hessian_eigs", "hessian_trace", "parameters_to_vector",
           "vector_to_parameters", "vector_views"]


# ---------------------------------------------------------------- the flat layout

def _params(model_or_params: Any) -> Any:
    if isinstance(model_or_params, Module):
        return model_or_params.parameters()
    return list(model_or_params)


def parameters_to_vector(model_or_params: Module | Iterable[Parameter]) -> NDArray[Any]:
    """Return the parameters as one new flat vector, in the model's flat layout.

    Parameters
    ----------
    model_or_params : Module or iterable of Parameter
        The model, or its parameters in order.

    Returns
    -------
    ndarray of shape (n,)
        A copy of every parameter, raveled and concatenated (n parameters in all).

    Raises
    ------
    ValueError
        If there are no parameters.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 4, dtype=np.float64, rng=0), fp.Tanh(),
    ...                       fp.Linear(4, 2, dtype=np.float64, rng=1))
    >>> fp.parameters_to_vector(model).shape
    (26,)
    """
    params = _params(model_or_params)
    if not params:
        raise ValueError("no parameters")
    return np.concatenate([p.data.reshape(-1) for p in params])


def vector_views(vec: NDArray[Any],
                 model_or_params: Module | Iterable[Parameter]) -> list[NDArray[Any]]:
    """Return views of the flat vector vec, one per parameter and shaped like it (no copy).

    Parameters
    ----------
    vec : ndarray of shape (n,)
        A vector in the flat layout of ``parameters_to_vector``.
    model_or_params : Module or iterable of Parameter
        The model, or its parameters in order.

    Returns
    -------
    list of ndarray
        One view of ``vec`` per parameter, of that parameter's shape.

    Raises
    ------
    ValueError
        If vec is not of shape (n,), n the number of parameters.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 4, dtype=np.float64, rng=0), fp.Tanh(),
    ...                       fp.Linear(4, 2, dtype=np.float64, rng=1))
    >>> [v.shape for v in fp.vector_views(np.zeros(26), model)]
    [(4, 3), (4,), (2, 4), (2,)]
    """
    params = _params(model_or_params)
    n = sum(p.size for p in params)
    vec = np.asarray(vec)
    if vec.ndim != 1 or vec.shape[0] != n:
        raise ValueError(f"the vector has shape {vec.shape}, expected ({n},): one entry per "
                         f"parameter of the model")
    out, offset = [], 0
    for p in params:
        out.append(vec[offset:offset + p.size].reshape(p.shape))
        offset += p.size
    return out


def vector_to_parameters(vec: NDArray[Any], model_or_params: Module | Iterable[Parameter]) -> None:
    """Copy the flat vector vec into the parameters (checked before anything is written).

    Parameters
    ----------
    vec : ndarray of shape (n,)
        A vector in the flat layout of ``parameters_to_vector``.
    model_or_params : Module or iterable of Parameter
        The model, or its parameters in order.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        If vec is not of shape (n,), n the number of parameters (nothing is written).

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 4, dtype=np.float64, rng=0), fp.Tanh(),
    ...                       fp.Linear(4, 2, dtype=np.float64, rng=1))
    >>> fp.vector_to_parameters(np.arange(26.0), model)
    >>> float(model.parameters()[-1].data[1])
    25.0
    """
    params = _params(model_or_params)
    for p, view in zip(params, vector_views(vec, params)):
        p.data[...] = view


# ---------------------------------------------------------------- the R pass

def _check(model: Any, loss: Any, on_tape: bool = True) -> Any:
    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastprop Module, got {type(model).__name__}")
    # on the tape the C ops have their R-ops (LowRankLinear too): only a Python module's
    # op needs its own _rforward/_rbackward (on_tape=False: every module, the modular R pass)
    callbacks = _rtapes_callbacks(model) if on_tape else None
    for m in model.modules():
        why = getattr(m, "r_unsupported", None)   # a module that says why (BatchNorm1d in training)
        if why:
            raise TypeError(why)
        if callbacks is not None and id(m) not in callbacks:
            continue
        if not m.r_supported and not m.children():
            raise TypeError(f"{type(m).__name__} has no R-operator: Hessian–vector products "
                            f"support Sequential and Graph models of Linear, PReLU, the "
                            f"activations, Add, Concat and Mul")
    outputs = getattr(model, "output_names", ())
    if len(outputs) > 1:
        raise TypeError(f"model has {len(outputs)} outputs {outputs}: Hessian–vector products "
                        f"need a model with one output (one loss)")
    if not isinstance(loss, Loss) or not hasattr(ops, f"{loss.kernel}_hvp"):
        raise TypeError(f"loss must be SoftmaxCrossEntropy, SigmoidBCE, MSE, L1Loss, HuberLoss "
                        f"or SmoothL1Loss, got {type(loss).__name__}")
    params = model.parameters()
    if not params:
        raise ValueError("the model has no parameters")
    return params


def _vector(v: Any, n: Any, dtype: Any) -> Any:
    arr = as_input(v, dtype, "v")
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"v has shape {arr.shape}, expected ({n},): the model's "
                         f"{n} parameters, flat (see parameters_to_vector)")
    return arr


# model -> (BufferVersions of its parameters, its R tape or None,
# the ids of the modules its Python callbacks run, and of the modules inside them)
_tapes: Any = weakref.WeakKeyDictionary()


def _build_rtape(model: Any) -> Any:
    if model.dtype is None:
        return None, None
    try:
        program = plan.lower(model, fused=False)
        if all(o.kind == plan.MODULE for o in program.ops):
            return None, None
        tape = _kernels.Tape(program, plan.plan_grads(program), model.dtype, -1,
                             plan.plan_rvalues(program),
                             plan.plan_offsets(program, model.parameters()))
    except (plan.Unsupported, ValueError):   # a shape the tape does not run: modular path
        return None, None
    return tape, {id(s) for o in program.ops if o.kind == plan.MODULE for s in o.module.modules()}


def _rtape_entry(model: Any) -> Any:
    entry = _tapes.get(model)
    if entry is not None:
        held = entry[0]
        if not held.changed():
            return entry
        if not held.moved():
            held.renew()
            return entry
    entry = (BufferVersions(model.parameters()),) + _build_rtape(model)
    _tapes[model] = entry
    return entry


def _rtape(model: Any) -> Any:
    """The model's tape for the R-passes (built again when its parameters move), or None."""
    return _rtape_entry(model)[1]


def _rtapes_callbacks(model: Any) -> Any:
    """The ids of the modules the R tape's Python callbacks run (None: no tape)."""
    return _rtape_entry(model)[2]


def _rpass(model: Any, loss: Any, x: Any, y: Any, v: Any, hv: Any, gauss_newton: Any) -> None:
    """Adds the Hessian (or Gauss–Newton) product of J(x, y) with v into hv (flat)."""
    tape = _rtape(model)
    V = H = None
    if tape is None or tape.has_callbacks:   # what the modules' own R-passes take
        params = model.parameters()
        V = dict(zip(params, vector_views(v, params)))
        H = dict(zip(params, vector_views(hv, params)))
    args = loss.kernel_args(v.dtype)  # class weights, label smoothing, Huber's delta, ...
    if tape is not None:
        z, rz = tape.rforward(tuple(x) if isinstance(x, list) else (x,), v, V)
        g, rg = tape.output_grads
        if not gauss_newton:
            getattr(ops, loss.kernel)(z, y, grad_out=g, **args)
        getattr(ops, f"{loss.kernel}_hvp")(z, y, rz, out=rg, **args)
        tape.rbackward(v, hv, gauss_newton, V, H)
        return
    z, rz = model.layer_rforward(x, None, V)
    g = None
    if not gauss_newton:
        _, g = getattr(ops, loss.kernel)(z, y, grad_out=model.r_workspace("loss_g", z.shape, z.dtype), **args)
    rg = getattr(ops, f"{loss.kernel}_hvp")(z, y, rz, out=model.r_workspace("loss_rg", z.shape, z.dtype),
                                             **args)
    model.layer_rbackward(g, rg, V, H, False)


def _product(model: Any, loss: Any, x: Any, y: Any, v: Any, batch_size: Any, gauss_newton: Any,
             out: Any, lock: bool = True) -> Any:
    params = _check(model, loss)
    dtype = params[0].dtype
    n = sum(p.size for p in params)
    v = _vector(v, n, dtype)
    x = model.check_input(x)
    y = np.asarray(y)
    rows = _rows(x)
    if y.ndim == 0 or y.shape[0] != rows:
        raise ValueError(f"x has {rows} rows but y has shape {y.shape}")
    if out is None:
        out = np.zeros(n, dtype)
    else:
        out = _out_vector(out, n, dtype)
        out.fill(0)
    step = rows if batch_size is None else int(batch_size)
    if step < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if lock:  # the caller (a closure inside a training step) may hold the model already
        with model.exclusive():
            return _chunks(model, loss, x, y, v, step, gauss_newton, out)
    return _chunks(model, loss, x, y, v, step, gauss_newton, out)


def _rows(x: Any) -> Any:
    """The batch size of checked input: one array, or a list of them (a Graph's inputs)."""
    return (x[0] if isinstance(x, list) else x).shape[0]


def _chunks(model: Any, loss: Any, x: Any, y: Any, v: Any, step: Any, gauss_newton: Any,
            out: Any) -> Any:
    rows = _rows(x)
    if step >= rows:
        _rpass(model, loss, x, y, v, out, gauss_newton)
        return out
    # the loss is a mean over rows (weighted by class for a class-weighted cross-entropy): the
    # full batch's product is the mean of the chunks' weighted by their share of the denominator
    part = np.zeros_like(out)
    total = loss.weight_total(y)
    for a in range(0, rows, step):
        b = min(a + step, rows)
        share = loss.weight_total(y[a:b]) / total
        if share == 0:
            continue  # a chunk of zero-weight classes adds nothing
        part.fill(0)
        xa = [t[a:b] for t in x] if isinstance(x, list) else x[a:b]
        _rpass(model, loss, xa, y[a:b], v, part, gauss_newton)
        out += part * out.dtype.type(share)
    return out


def _out_vector(out: Any, n: Any, dtype: Any) -> Any:
    if not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != (n,) or \
            not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writeable C-contiguous ({n},) array of {dtype}")
    return out


def hvp(model: Module, loss: Loss, x: ArrayLike, y: ArrayLike, v: ArrayLike, *,
        batch_size: int | None = None, out: ArrayLike | None = None) -> NDArray[Any]:
    """The exact Hessian–vector product H v of J(θ) = loss(model(x), y) at the current θ.

    Parameters
    ----------
    model : Module
        A Sequential (nested ones too) of Linear, PReLU and the activations of
        fastprop.nn, or a Graph with one output of those, Add, Concat, Mul, Residual and
        nested models (shared modules too).
    loss : Loss
        SoftmaxCrossEntropy, SigmoidBCE or MSE (or another loss with an ``_hvp`` kernel).
    x : array_like of shape (B, in_features), or tuple or dict of them
        The inputs (for a Graph with several inputs, as ``model(...)`` takes them).
    y : array_like
        The loss's targets for x.
    v : array_like of shape (n,)
        A flat vector in the model's flat-parameter layout (see parameters_to_vector).
    batch_size : int, optional
        Evaluate in chunks of this many rows (the same product: the loss is a mean).
    out : ndarray of shape (n,), optional
        A writeable C-contiguous array of the model's dtype to write into.

    Returns
    -------
    ndarray of shape (n,)
        H v, of the model's dtype. The parameters, every ``.grad`` and the last
        forward's workspaces are left as they were.

    Raises
    ------
    TypeError
        If model is not a Module, or it or the loss has no R-pass.
    ValueError
        If x, y, v or out has the wrong shape or dtype.

    Examples
    --------
    H v agrees with the full Hessian's product:

    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 4, dtype=np.float64, rng=0), fp.Tanh(),
    ...                       fp.Linear(4, 2, dtype=np.float64, rng=1))
    >>> X = np.random.default_rng(0).standard_normal((16, 3))
    >>> y = np.array([0, 1] * 8)
    >>> loss_fn = fp.SoftmaxCrossEntropy()
    >>> v = np.random.default_rng(1).standard_normal(model.num_parameters())
    >>> hv = fp.hvp(model, loss_fn, X, y, v)
    >>> hv.shape
    (26,)
    >>> np.allclose(fp.hessian(model, loss_fn, X, y) @ v, hv)
    True
    """
    return _product(model, loss, x, y, v, batch_size, False, out)


def gnvp(model: Module, loss: Loss, x: ArrayLike, y: ArrayLike, v: ArrayLike, *,
         batch_size: int | None = None, out: ArrayLike | None = None) -> NDArray[Any]:
    """The Gauss–Newton product G v = J_outᵀ H_loss J_out v (positive semi-definite).

    R-forward, then H_loss R{z} back-propagated as an ordinary gradient (the
    activations' f″ terms and the δ·V terms dropped).

    Parameters
    ----------
    model : Module
        As :func:`hvp`.
    loss : Loss
        As :func:`hvp`.
    x : array_like of shape (B, in_features), or tuple or dict of them
        The inputs.
    y : array_like
        The loss's targets for x.
    v : array_like of shape (n,)
        A flat vector in the model's flat-parameter layout.
    batch_size : int, optional
        Evaluate in chunks of this many rows.
    out : ndarray of shape (n,), optional
        An array of the model's dtype to write into.

    Returns
    -------
    ndarray of shape (n,)
        G v, of the model's dtype.

    Raises
    ------
    TypeError
        As :func:`hvp`.
    ValueError
        As :func:`hvp`.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 4, dtype=np.float64, rng=0), fp.Tanh(),
    ...                       fp.Linear(4, 2, dtype=np.float64, rng=1))
    >>> X, y = np.random.default_rng(0).standard_normal((8, 3)), np.array([0, 1] * 4)
    >>> v = np.ones(model.num_parameters())
    >>> float(v @ fp.gnvp(model, fp.SoftmaxCrossEntropy(), X, y, v)) >= 0
    True
    """
    return _product(model, loss, x, y, v, batch_size, True, out)


# ---------------------------------------------------------------- tools on top

def _operator(model: Any, loss: Any, X: Any, y: Any, batch_size: Any, gauss_newton: Any) -> Any:
    from scipy.sparse.linalg import LinearOperator
    params = _check(model, loss)
    n = sum(p.size for p in params)
    dtype = params[0].dtype
    X = model.check_input(X)

    def matvec(v: Any) -> Any:
        v = np.ascontiguousarray(np.asarray(v).reshape(-1), dtype=dtype)
        return _product(model, loss, X, y, v, batch_size, gauss_newton, None).astype(np.float64)

    return LinearOperator((n, n), matvec=matvec, rmatvec=matvec, dtype=np.float64), n


def hessian_eigs(model: Module, loss: Loss, X: ArrayLike, y: ArrayLike, k: int = 1,
                 which: str = "LA", *, batch_size: int | None = None, tol: float = 0.0,
                 maxiter: int | None = None, seed: int = 0, return_eigenvectors: bool = False,
                 gauss_newton: bool = False) -> Any:
    """k eigenvalues of the Hessian of the mean loss over (X, y), by Lanczos.

    ``scipy.sparse.linalg.eigsh`` over a LinearOperator whose matvec is ``hvp`` (or
    ``gnvp`` with gauss_newton=True). which: "LA" (largest algebraic, the default: the
    top eigenvalue), "SA", "LM", "SM", "BE", as eigsh.

    Parameters
    ----------
    model : Module
        As :func:`hvp`.
    loss : Loss
        As :func:`hvp`.
    X : array_like of shape (samples, in_features)
        The inputs.
    y : array_like
        The loss's targets.
    k : int, default 1
        How many eigenvalues (1 <= k < n, the number of parameters).
    which : {"LA", "SA", "LM", "SM", "BE"}, default "LA"
        Which eigenvalues, as ``eigsh``.
    batch_size : int, optional
        Evaluate each product in chunks of this many rows.
    tol : float, default 0.0
        eigsh's relative accuracy (0: machine precision).
    maxiter : int, optional
        eigsh's iteration limit.
    seed : int, default 0
        Seed of the starting vector.
    return_eigenvectors : bool, default False
        Return the eigenvectors too.
    gauss_newton : bool, default False
        The Gauss–Newton matrix instead of the Hessian.

    Returns
    -------
    ndarray of shape (k,), or tuple of ndarray of shapes (k,) and (n, k)
        The eigenvalues in ascending order (as eigsh and numpy.linalg.eigvalsh), and with
        return_eigenvectors the eigenvectors, in the flat layout.

    Raises
    ------
    ValueError
        If k is not an integer in [1, n).

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 4, dtype=np.float64, rng=0), fp.Tanh(),
    ...                       fp.Linear(4, 2, dtype=np.float64, rng=1))
    >>> X, y = np.random.default_rng(0).standard_normal((16, 3)), np.array([0, 1] * 8)
    >>> loss_fn = fp.SoftmaxCrossEntropy()
    >>> top = fp.hessian_eigs(model, loss_fn, X, y, k=1)
    >>> bool(np.isclose(top[0], np.linalg.eigvalsh(fp.hessian(model, loss_fn, X, y))[-1]))
    True
    """
    from scipy.sparse.linalg import eigsh
    op, n = _operator(model, loss, X, y, batch_size, gauss_newton)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < n:
        raise ValueError(f"k must be an integer in [1, {n}) (the model has {n} parameters), "
                         f"got {k!r}")
    v0 = np.random.default_rng(seed).standard_normal(n)
    result = eigsh(op, k=int(k), which=which, tol=tol, maxiter=maxiter, v0=v0,
                   return_eigenvectors=return_eigenvectors)
    if return_eigenvectors:
        vals, vecs = result
        order = np.argsort(vals)
        return vals[order], vecs[:, order]
    return np.sort(result)


def hessian_trace(model: Module, loss: Loss, X: ArrayLike, y: ArrayLike, n_samples: int = 64,
                  *, seed: int = 0, batch_size: int | None = None, gauss_newton: bool = False,
                  return_std: bool = False) -> Any:
    """Hutchinson's estimate of tr H: the mean of vᵀ H v over Rademacher vectors v.

    Unbiased; its standard error falls as 1/√n_samples (exact when H is diagonal).

    Parameters
    ----------
    model : Module
        As :func:`hvp`.
    loss : Loss
        As :func:`hvp`.
    X : array_like of shape (samples, in_features)
        The inputs.
    y : array_like
        The loss's targets.
    n_samples : int, default 64
        How many Rademacher vectors.
    seed : int, default 0
        Their seed.
    batch_size : int, optional
        Evaluate each product in chunks of this many rows.
    gauss_newton : bool, default False
        The Gauss–Newton matrix's trace instead of the Hessian's.
    return_std : bool, default False
        Return the estimate's standard error too.

    Returns
    -------
    float, or tuple of float
        The estimate, or (estimate, standard error of the estimate) with return_std.

    Raises
    ------
    ValueError
        If n_samples is not a positive integer.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 4, dtype=np.float64, rng=0), fp.Tanh(),
    ...                       fp.Linear(4, 2, dtype=np.float64, rng=1))
    >>> X, y = np.random.default_rng(0).standard_normal((16, 3)), np.array([0, 1] * 8)
    >>> loss_fn = fp.SoftmaxCrossEntropy()
    >>> est, err = fp.hessian_trace(model, loss_fn, X, y, n_samples=400, return_std=True)
    >>> exact = float(np.trace(fp.hessian(model, loss_fn, X, y)))
    >>> abs(est - exact) < 5 * err
    True
    """
    params = _check(model, loss)
    n = sum(p.size for p in params)
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    dtype = params[0].dtype
    X = model.check_input(X)
    rng = np.random.default_rng(seed)
    hv = np.empty(n, dtype)
    samples = np.empty(n_samples)
    for i in range(n_samples):
        v = rng.choice(np.array([-1.0, 1.0], dtype), n)
        _product(model, loss, X, y, v, batch_size, gauss_newton, hv)
        samples[i] = float(np.dot(v.astype(np.float64), hv.astype(np.float64)))
    estimate = float(samples.mean())
    if return_std:
        std = float(samples.std(ddof=1) / np.sqrt(n_samples)) if n_samples > 1 else float("inf")
        return estimate, std
    return estimate
