"""Hessian-free optimization: truncated CG on Gauss–Newton products, Levenberg–Marquardt damping.

Martens (2010), "Deep learning via Hessian-free optimization", simplified: each step
solves (G + λI) p = −∇J approximately by conjugate gradient, where G v is
``fastprop.gnvp`` (exact, positive semi-definite, about one gradient's cost), warm
started from the previous step's direction; then backtracks along p until the loss
falls, and adapts λ by the ratio ρ of the actual to the predicted reduction.

The optimizer needs the batch, not only the gradient, so it takes a closure:
``opt.step(closure)`` with a ``Closure(model, loss, x, y)``. ``TrainStep`` and ``fit``
build that closure themselves for any optimizer with ``needs_closure = True``.
"""
from __future__ import annotations
import numpy as np

from .curvature import _product
from .optim import Optimizer, _check_number
from typing import Any, TYPE_CHECKING
from numpy.typing import NDArray

if TYPE_CHECKING:  # for annotations only: no import cycle at run time
    from .losses import Loss
    from .nn import Module

__all__ = ["Closure", "HessianFree"]


class Closure:
    """One batch for a closure-driven optimizer step.

    ``closure()`` evaluates J at the current parameters and overwrites every ``.grad``
    with ∇J; ``closure(backward=False)`` evaluates J only; ``closure.gnvp(v)`` and
    ``closure.hvp(v)`` are the curvature products at the current parameters (flat
    vectors, the model's flat layout). ``output`` is the model's output at the first
    evaluation (before any update); the counters say how many of each pass ran.
    The caller holds the model (``TrainStep`` does); use ``with model.exclusive():``
    around a step otherwise.

    Parameters
    ----------
    model : Module
        The model.
    loss : Loss
        The loss.
    x : ndarray of shape (batch, in_features)
        The batch's inputs (checked against the model).
    y : ndarray
        The batch's targets, as the loss takes them.

    Raises
    ------
    ValueError
        If x does not match the model.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(2, 3, dtype=np.float64, rng=0), fp.Tanh(),
    ...                       fp.Linear(3, 2, dtype=np.float64, rng=1))
    >>> X, y = np.random.default_rng(0).standard_normal((8, 2)), np.array([0, 1] * 4)
    >>> closure = fp.Closure(model, fp.SoftmaxCrossEntropy(), X, y)
    >>> J = closure()
    >>> closure.gnvp(np.ones(model.num_parameters())).shape, closure.n_grad
    ((17,), 1)
    """

    def __init__(self, model: Module, loss: Loss, x: NDArray[Any], y: NDArray[Any]) -> None:
        self.model, self.loss = model, loss
        self.x = model.check_input(x)
        self.y = np.asarray(y)
        self.output = None
        self.n_loss = self.n_grad = self.n_products = 0

    def __call__(self, backward: bool = True) -> Any:
        model = self.model
        out = model.layer_forward(self.x)
        J = self.loss(out, self.y)
        if self.output is None:
            self.output = out.copy()
        if backward:
            model.zero_grad()
            model.layer_backward(self.loss.backward(), False)
            self.n_grad += 1
        else:
            self.n_loss += 1
        return J

    def gnvp(self, v: NDArray[Any], out: Any = None) -> Any:
        self.n_products += 1
        return _product(self.model, self.loss, self.x, self.y, v, None, True, out, lock=False)

    def hvp(self, v: NDArray[Any], out: Any = None) -> Any:
        self.n_products += 1
        return _product(self.model, self.loss, self.x, self.y, v, None, False, out, lock=False)


class HessianFree(Optimizer):
    """Truncated CG on Gauss–Newton products with Levenberg–Marquardt damping.

    ``step(closure)`` (a ``Closure``; ``fit`` and ``TrainStep`` pass one) runs up to
    ``max_cg_iter`` CG iterations on (G + damping·I) p = −g, stopping once the residual
    is below ``cg_tol``·‖g‖; the start is ``warm_start`` times the previous direction.
    The update θ ← θ + lr·α·p takes the first α in 1, ½, ¼, … (up to ``max_backtracks``)
    that lowers the loss, or none. Damping: ×3/2 when ρ < ¼, ×2/3 when ρ > ¾ (ρ: actual
    over predicted reduction), within [min_damping, max_damping]. Returns the loss before
    the update.

    Parameters
    ----------
    params : iterable of Parameter
        The parameters to update (one dtype).
    lr : float, default 1.0
        Scales the step.
    damping : float, default 1.0
        The initial Levenberg–Marquardt damping.
    max_cg_iter : int, default 50
        CG iterations per step (>= 1).
    cg_tol : float, default 1e-4
        CG's relative residual tolerance.
    warm_start : float, default 0.95
        CG's start as a multiple of the previous direction, in [0, 1].
    max_backtracks : int, default 8
        Halvings of α tried (>= 0).
    min_damping, max_damping : float, default 1e-8 and 1e8
        The damping's range.
    adapt_damping : bool, default True
        Adapt the damping by ρ.

    Raises
    ------
    TypeError
        If an option is not a number.
    ValueError
        If an option is out of range.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> X, y = fp.datasets.spirals(200, classes=2, seed=0)
    >>> model = fp.Sequential(fp.Linear(2, 8, dtype=np.float64, rng=0), fp.Tanh(),
    ...                       fp.Linear(8, 2, dtype=np.float64, rng=1))
    >>> h = fp.fit(model, X, y, fp.SoftmaxCrossEntropy(),
    ...            fp.HessianFree(model.parameters(), max_cg_iter=10),
    ...            epochs=3, batch_size=200, progress=False)
    >>> h["loss"][-1] < h["loss"][0]
    True
    """
    needs_closure = True

    def __init__(self, params: Any, lr: float = 1.0, damping: float = 1.0, max_cg_iter: int = 50,
                 cg_tol: float = 1e-4, warm_start: float = 0.95, max_backtracks: int = 8,
                 min_damping: float = 1e-8, max_damping: float = 1e8,
                 adapt_damping: bool = True) -> None:
        super().__init__(params, lr)
        self.damping = _check_number("damping", damping)
        self.min_damping = _check_number("min_damping", min_damping)
        self.max_damping = _check_number("max_damping", max_damping)
        self.cg_tol = _check_number("cg_tol", cg_tol)
        self.warm_start = _check_number("warm_start", warm_start, 0.0, 1.0)
        for name, value in (("max_cg_iter", max_cg_iter), ("max_backtracks", max_backtracks)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if max_cg_iter < 1:
            raise ValueError(f"max_cg_iter must be at least 1, got {max_cg_iter!r}")
        self.max_cg_iter, self.max_backtracks = int(max_cg_iter), int(max_backtracks)
        self.adapt_damping = bool(adapt_damping)
        n = sum(p.size for p in self.params)
        self.direction = np.zeros(n, self.params[0].dtype)  # the last step's CG solution
        self.last: dict[str, Any] = {}  # what the last step did: cg_iters, alpha, rho, damping

    # the optimizer's parameters as one flat vector (its runs, concatenated)
    def _get(self, which: Any) -> Any:
        return np.concatenate([run[which] for run in self._current_runs()])

    def _set(self, theta: Any) -> None:
        offset = 0
        for data, _ in self._current_runs():
            data[...] = theta[offset:offset + data.size]
            offset += data.size

    def state_arrays(self) -> Any:
        return [[self.direction]]

    def step(self, closure: Any) -> Any:
        if not callable(closure) or not hasattr(closure, "gnvp"):
            raise TypeError("HessianFree.step needs a fastprop Closure(model, loss, x, y) "
                            "(fit and TrainStep build one)")
        model_params = closure.model.parameters()
        if [id(p) for p in model_params] != [id(p) for p in self.params]:
            raise ValueError("HessianFree works on all of the closure's model's parameters, "
                             "in model.parameters() order")
        J0 = closure()
        g = self._get(1)
        theta0 = self._get(0)
        lam = self.damping
        # CG on A p = b, A = G + λI, b = −g, from the warm start
        b = -g
        p = self.warm_start * self.direction
        Ap = closure.gnvp(p) + lam * p if p.any() else np.zeros_like(p)
        r = b - Ap
        d = r.copy()
        rr = float(r @ r)
        stop = (self.cg_tol * float(np.linalg.norm(b))) ** 2
        iters = 0
        while iters < self.max_cg_iter and rr > stop:
            Ad = closure.gnvp(d) + lam * d
            dAd = float(d @ Ad)
            if not dAd > 0:  # only by rounding: A is positive definite for λ > 0
                break
            a = rr / dAd
            p += a * d
            r -= a * Ad
            rr_new = float(r @ r)
            d *= rr_new / rr
            d += r
            rr = rr_new
            iters += 1
        # the undamped quadratic model q(p) = gᵀp + ½ pᵀGp, with Ap = b − r
        gp = float(g @ p)
        pGp = float(p @ (b - r)) - lam * float(p @ p)
        alpha, J1, accepted = 1.0, J0, False
        for _ in range(self.max_backtracks + 1):
            self._set(theta0 + (self.lr * alpha) * p)
            J1 = closure(backward=False)
            if np.isfinite(J1) and J1 < J0:
                accepted = True
                break
            alpha *= 0.5
        s = self.lr * alpha
        predicted = s * gp + 0.5 * s * s * pGp
        rho = (J1 - J0) / predicted if accepted and predicted < 0 else -np.inf
        if not accepted:
            self._set(theta0)
        if self.adapt_damping:
            if rho < 0.25:
                lam *= 1.5
            elif rho > 0.75:
                lam *= 2.0 / 3.0
            self.damping = float(min(max(lam, self.min_damping), self.max_damping))
        self.direction = p if accepted else np.zeros_like(p)
        self.last = {"cg_iters": iters, "alpha": alpha if accepted else 0.0, "rho": rho,
                     "damping": self.damping, "loss_after": J1 if accepted else J0}
        self.step_count += 1
        return J0
