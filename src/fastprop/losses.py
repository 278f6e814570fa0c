"""Output units fused with their losses: ``J = loss(pred, target)``, ``g = loss.backward()``.

Each call runs one C kernel computing the loss and its gradient in the same pass,
with PyTorch's mean reductions (CrossEntropyLoss, BCEWithLogitsLoss, MSELoss, L1Loss,
HuberLoss, SmoothL1Loss). ``loss(pred, target, sample_weight=w)`` is the weighted mean
Σ_i w_i l_i / Σ_i w_i over the rows, l_i being row i's loss (its mean over its elements).
"""
from __future__ import annotations
import numpy as np

from . import _kernels, ops
from .nn import as_input
from typing import Any
from numpy.typing import ArrayLike, NDArray, DTypeLike

__all__ = ["Loss", "SoftmaxCrossEntropy", "SigmoidBCE", "MSE", "GaussianNLL", "L1Loss",
           "HuberLoss", "SmoothL1Loss"]


class Loss:
    """Base class: ``__call__`` returns the loss as a float and keeps ∂J/∂pred for ``backward``.

    Subclasses differ by ``kernel``, the fused C loss and gradient they run.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> loss_fn = fp.MSE()
    >>> isinstance(loss_fn, fp.losses.Loss)
    True
    >>> loss_fn(np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]]))
    2.5
    >>> loss_fn.backward()
    array([[1., 2.]])
    """
    kernel: Any = None  # the name of the fused kernel in fastprop.ops
    _workspace_keys = ("_grad",)

    def __init__(self) -> None:
        self._grad: Any = None
        self._ready = False

    def __call__(self, pred: ArrayLike, target: ArrayLike,
                 sample_weight: ArrayLike | None = None) -> float:
        """The mean loss of pred against target; keeps ∂J/∂pred for :meth:`backward`.

        Parameters
        ----------
        pred : array of shape (B, C)
            The model's output (logits for the cross-entropies), float32 or float64.
        target : array
            Of shape (B,) (integer labels, SoftmaxCrossEntropy only) or of pred's shape.
        sample_weight : array of shape (B,), optional
            Non-negative row weights: the loss is the weighted mean Σ_i w_i l_i / Σ_i w_i.

        Returns
        -------
        float
            The mean loss J; ``backward()`` then returns ∂J/∂pred, of pred's shape and dtype.

        Raises
        ------
        TypeError, ValueError
            If an array has the wrong dtype or shape, or a label is outside [0, C).
        """
        pred = np.asarray(pred)
        dtype = pred.dtype if pred.dtype.kind == "f" and pred.dtype.itemsize >= 4 else np.float32
        pred = as_input(pred, dtype, "pred")
        if self._grad is None or self._grad.shape != pred.shape or self._grad.dtype != pred.dtype:
            grad = np.empty_like(pred)
        else:
            grad = self._grad
        loss, grad = getattr(ops, self.kernel)(pred, target, grad_out=grad,
                                               sample_weight=sample_weight,
                                               **self.kernel_args(pred.dtype))
        self._grad, self._ready = grad, True
        return loss

    def kernel_args(self, dtype: DTypeLike) -> Any:
        """The loss's options as its ops kernel (and ``{kernel}_hvp``) takes them, for arrays of dtype."""
        return {}

    def weight_total(self, target: NDArray[Any], sample_weight: NDArray[Any] | None = None) -> Any:
        """The denominator of the loss's mean over these rows: the row count, Σ_i w_i with
        sample weights (Σ_i w_i c_{y_i} for a class-weighted cross-entropy on labels). The
        mean over several batches is Σ_b J_b weight_total_b / Σ_b weight_total_b."""
        rows = np.shape(target)[0]
        return float(rows) if sample_weight is None else float(np.sum(sample_weight, dtype=np.float64))

    forward = __call__

    def backward(self) -> NDArray[Any]:
        """∂J/∂pred of the last call, as a new array of pred's shape and dtype.

        Raises
        ------
        RuntimeError
            If the loss has not been computed yet.
        """
        if not self._ready:
            raise RuntimeError(f"{type(self).__name__}.backward called before computing the loss")
        return self._grad.copy()

    def accuracy(self, pred: NDArray[Any], target: NDArray[Any]) -> Any:
        """The fraction of correct predictions, or None where it has no meaning (MSE)."""
        return None

    def target_width(self, n_out: Any) -> Any:
        """The width of a (non-label) target for a model with n_out outputs."""
        return n_out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __getstate__(self) -> dict[str, Any]:  # the options are kept, the gradient workspace is not
        return {**self.__dict__, "_grad": None, "_ready": False}


class SoftmaxCrossEntropy(Loss):
    """Softmax + cross-entropy from logits (B, C); targets: int labels (B,) or soft (B, C).

    J = mean_i [logsumexp(z_i) − Σ_j t_ij z_ij], ∂J/∂z = (softmax(z) − t)/B.

    ``weight`` (C,) and ``label_smoothing`` ε are torch.nn.CrossEntropyLoss's: row i's loss is
    Σ_j q_ij (−log p_ij) with q_ij = (1 − ε) c_{y_i} [j = y_i] + (ε/C) c_j for labels, and the
    mean divides by Σ_i c_{y_i}; for soft targets q_ij = c_j ((1 − ε) t_ij + ε/C) and the mean
    divides by B. With ``sample_weight`` s the denominator is Σ_i s_i c_{y_i} (Σ_i s_i).

    Parameters
    ----------
    weight : array of shape (C,), optional
        A weight per class (torch's ``weight``).
    label_smoothing : float, default 0.0
        ε in [0, 1].

    Raises
    ------
    ValueError
        If weight is not (C,) non-negative or label_smoothing is outside [0, 1].

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], np.float32)
    >>> loss_fn = fp.SoftmaxCrossEntropy()
    >>> round(loss_fn(logits, np.array([0, 1])), 4)
    0.3606
    >>> loss_fn.backward().round(3)
    array([[-0.078,  0.057,  0.021],
           [ 0.106, -0.212,  0.106]], dtype=float32)
    """
    kernel = "softmax_cross_entropy"

    def __init__(self, weight: NDArray[Any] | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = _kernels.check_label_smoothing(label_smoothing)
        if weight is not None:
            w = np.asarray(weight)
            if w.ndim != 1 or w.size < 1:
                raise ValueError(f"weight must be a 1-D array of one weight per class, got shape {w.shape}")
            weight = _kernels.check_weights(w, "weight", w.shape[0], "one weight per class")
            weight.flags.writeable = False
        self.weight = weight
        # cast once to each precision: a step passes them as they are, allocating nothing
        self._weights = {} if weight is None else {np.dtype(t): weight.astype(t) for t in (np.float32, np.float64)}

    def kernel_args(self, dtype: DTypeLike) -> Any:
        return {"weight": self._weights.get(np.dtype(dtype)), "label_smoothing": self.label_smoothing}

    def weight_total(self, target: NDArray[Any], sample_weight: NDArray[Any] | None = None) -> Any:
        target = np.asarray(target)
        if self.weight is None or target.ndim != 1:
            return super().weight_total(target, sample_weight)
        c = np.take(self.weight, target, mode="clip")  # a bad label: the loss call raises
        return float(np.sum(c if sample_weight is None else c * np.asarray(sample_weight, np.float64)))

    def __repr__(self) -> str:
        args = [] if self.weight is None else [f"weight={self.weight.tolist()}"]
        args += [f"label_smoothing={self.label_smoothing}"] if self.label_smoothing else []
        return f"SoftmaxCrossEntropy({', '.join(args)})"

    def accuracy(self, pred: NDArray[Any], target: NDArray[Any]) -> Any:
        target = np.asarray(target)
        labels = target if target.ndim == 1 else target.argmax(axis=1)
        return float(np.mean(np.asarray(pred).argmax(axis=1) == labels))


class SigmoidBCE(Loss):
    """Sigmoid + binary cross-entropy from logits; targets in [0, 1]; mean over elements.

    Computed as ``max(z, 0) − z·y + log1p(exp(−abs(z)))``: no overflow for large logits.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> round(fp.SigmoidBCE()(np.array([[0.0], [2.0]]), np.array([[0.0], [1.0]])), 4)
    0.41
    """
    kernel = "sigmoid_bce"

    def accuracy(self, pred: NDArray[Any], target: NDArray[Any]) -> Any:
        return float(np.mean((np.asarray(pred) > 0) == (np.asarray(target) > 0.5)))


class MSE(Loss):
    """Mean over elements of (pred − target)².

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> loss_fn = fp.MSE()
    >>> loss_fn(np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]]))
    2.5
    >>> loss_fn.backward()
    array([[1., 2.]])
    """
    kernel = "mse"


class GaussianNLL(Loss):
    """A Gaussian output unit: the network predicts the mean and the variance of
    p(y | x) = N(y; μ(x), σ²(x)) (*Deep Learning* §6.2.2.4).

    pred is (B, 2k) = [μ, log σ²] (the log-variance keeps σ² positive with no constraint),
    target is (B, k); J = mean over the B·k elements of ½ log σ² + ½ (y − μ)² / σ².
    This is the negative log-likelihood without its constant ½ log 2π, and equals
    ``torch.nn.GaussianNLLLoss()(μ, y, exp(log σ²))`` (full=False, mean reduction) wherever
    σ² ≥ its eps (1e-6; torch clamps below, this loss does not). One C pass computes the
    value and the gradient without forming σ², so a log σ² of ±hundreds neither
    overflows nor divides by zero.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> fp.GaussianNLL()(np.array([[0.0, 0.0]]), np.array([[1.0]]))  # μ = 0, σ² = 1, y = 1
    0.5
    """
    kernel = "gaussian_nll"

    def target_width(self, n_out: Any) -> Any:
        return n_out // 2  # [μ, log σ²] for each target column


class L1Loss(Loss):
    """Mean over elements of ``abs(pred − target)`` (torch.nn.L1Loss); its gradient is 0 where
    they are equal.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> fp.L1Loss()(np.array([[0.5, -3.0]]), np.zeros((1, 2)))
    1.75
    """
    kernel = "l1_loss"


class HuberLoss(Loss):
    """torch.nn.HuberLoss: mean over elements of ½ d² where ``abs(d) < delta``,
    ``delta (abs(d) − ½ delta)`` elsewhere, d = pred − target.

    Parameters
    ----------
    delta : float, default 1.0
        Where the loss turns from quadratic to linear (> 0).

    Raises
    ------
    ValueError
        If delta is not a positive finite number.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> fp.HuberLoss(delta=1.0)(np.array([[0.5, 3.0]]), np.zeros((1, 2)))
    1.3125
    """
    kernel = "huber_loss"

    def __init__(self, delta: float = 1.0) -> None:
        super().__init__()
        self.delta = _kernels.check_loss_param(delta, "delta", False)

    def kernel_args(self, dtype: DTypeLike) -> Any:
        return {"delta": self.delta}

    def __repr__(self) -> str:
        return f"HuberLoss(delta={self.delta})"


class SmoothL1Loss(Loss):
    """torch.nn.SmoothL1Loss: mean over elements of ½ d²/beta where ``abs(d) < beta``,
    ``abs(d) − ½ beta`` elsewhere, d = pred − target.

    Parameters
    ----------
    beta : float, default 1.0
        Where the loss turns from quadratic to linear (≥ 0; beta = 0 is L1Loss, as torch's).

    Raises
    ------
    ValueError
        If beta is negative or not finite.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> fp.SmoothL1Loss(beta=1.0)(np.array([[0.5, 3.0]]), np.zeros((1, 2)))
    1.3125
    """
    kernel = "smooth_l1_loss"

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = _kernels.check_loss_param(beta, "beta", True)

    def kernel_args(self, dtype: DTypeLike) -> Any:
        return {"beta": self.beta}

    def __repr__(self) -> str:
        return f"SmoothL1Loss(beta={self.beta})"
