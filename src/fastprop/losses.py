"""Output units fused with their losses: ``J = loss(pred, target)``, ``g = loss.backward()``.

Each call runs one C kernel computing the loss and its gradient in the same pass,
with PyTorch's mean reductions (CrossEntropyLoss, BCEWithLogitsLoss, MSELoss).
"""
import numpy as np

from . import ops
from .nn import as_input

__all__ = ["Loss", "SoftmaxCrossEntropy", "SigmoidBCE", "MSE", "GaussianNLL"]


class Loss:
    """Base class: ``__call__`` returns the loss as a float and keeps ∂J/∂pred for ``backward``."""
    kernel = None     # the name of the fused kernel in fastprop.ops
    _workspace_keys = ("_grad",)

    def __init__(self):
        self._grad = None
        self._ready = False

    def __call__(self, pred, target):
        pred = np.asarray(pred)
        dtype = pred.dtype if pred.dtype.kind == "f" and pred.dtype.itemsize >= 4 else np.float32
        pred = as_input(pred, dtype, "pred")
        if self._grad is None or self._grad.shape != pred.shape or self._grad.dtype != pred.dtype:
            grad = np.empty_like(pred)
        else:
            grad = self._grad
        loss, grad = getattr(ops, self.kernel)(pred, target, grad_out=grad)
        self._grad, self._ready = grad, True
        return loss

    forward = __call__

    def backward(self):
        """∂J/∂pred of the last call, as a new array."""
        if not self._ready:
            raise RuntimeError(f"{type(self).__name__}.backward called before computing the loss")
        return self._grad.copy()

    def accuracy(self, pred, target):
        """The fraction of correct predictions, or None where it has no meaning (MSE)."""
        return None

    def target_width(self, n_out):
        """The width of a (non-label) target for a model with n_out outputs."""
        return n_out

    def __repr__(self):
        return f"{type(self).__name__}()"

    def __getstate__(self):
        return {"_grad": None, "_ready": False}


class SoftmaxCrossEntropy(Loss):
    """Softmax + cross-entropy from logits (B, C); targets: int labels (B,) or soft (B, C).

    J = mean_i [logsumexp(z_i) − Σ_j t_ij z_ij], ∂J/∂z = (softmax(z) − t)/B.
    """
    kernel = "softmax_cross_entropy"

    def accuracy(self, pred, target):
        target = np.asarray(target)
        labels = target if target.ndim == 1 else target.argmax(axis=1)
        return float(np.mean(np.asarray(pred).argmax(axis=1) == labels))


class SigmoidBCE(Loss):
    """Sigmoid + binary cross-entropy from logits; targets in [0, 1]; mean over elements."""
    kernel = "sigmoid_bce"

    def accuracy(self, pred, target):
        return float(np.mean((np.asarray(pred) > 0) == (np.asarray(target) > 0.5)))


class MSE(Loss):
    """Mean over elements of (pred − target)²."""
    kernel = "mse"


class GaussianNLL(Loss):
    """A Gaussian output unit: the network predicts the mean and the variance of
    p(y | x) = N(y; μ(x), σ²(x)) (*Deep Learning* §6.2.2.4).

    pred is (B, 2k) = [μ, log σ²] (the log-variance keeps σ² positive with no constraint),
    target is (B, k); J = mean over the B·k elements of ½ log σ² + ½ (y − μ)² / σ².
    This is the negative log-likelihood without its constant ½ log 2π, and equals
    ``torch.nn.GaussianNLLLoss()(μ, y, exp(log σ²))`` (full=False, mean reduction) wherever
    σ² ≥ its eps (1e-6; torch clamps below, this loss does not). One C pass computes the
    value and the gradient without forming σ², so |log σ²| in the hundreds neither
    overflows nor divides by zero.
    """
    kernel = "gaussian_nll"

    def target_width(self, n_out):
        return n_out // 2  # [μ, log σ²] for each target column
