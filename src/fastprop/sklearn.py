"""scikit-learn's ``MLPClassifier`` and ``MLPRegressor`` on fastprop's fused training step.

``from fastprop.sklearn import MLPClassifier`` instead of ``from sklearn.neural_network import
MLPClassifier``: the same parameters, defaults, attributes and methods (these classes subclass
scikit-learn's), the same model (scikit-learn's Glorot initialisation from the same
``random_state`` draws, its shuffling, early-stopping split, stopping rule, learning-rate
schedules, its SGD-momentum/Nesterov and Adam formulations, its L2 term
``alpha/(2·n_batch)·‖W‖²``), trained on fastprop's fused C step: per minibatch one C call for
forward + loss + backward, one vectorised pass over the flat gradient for the loss scale and the
L2 term, and one C call for the optimizer update.

``sample_weight`` (and ``class_weight``, which becomes sample weights) and
``MLPRegressor(loss="poisson")`` take fastprop's modular path: its forward and backward (the
layer loop in Python, each layer one C kernel), scikit-learn's output delta and loss in NumPy.
Sparse ``X``: each minibatch is made dense; L-BFGS on sparse ``X`` runs scikit-learn's code.
Keyword-only extras whose defaults keep scikit-learn's behaviour: ``dtype``, ``class_weight``
(classifier), ``restore_best_weights``, ``optimizer="adamw"``, ``n_jobs``, and
``fit(..., validation_data=(X_val, y_val))``; ``to_fastprop()`` returns the
trained network as an ``fp.Sequential`` (its outputs are the logits: the output activation is
in the loss, as everywhere in fastprop).
"""
from __future__ import annotations
import os
import warnings
from numbers import Integral

import numpy as np
import scipy.sparse
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as _SkMLPClassifier
from sklearn.neural_network import MLPRegressor as _SkMLPRegressor
from sklearn.neural_network._base import ACTIVATIONS, LOSS_FUNCTIONS
from sklearn.neural_network._stochastic_optimizers import AdamOptimizer, SGDOptimizer
from sklearn.utils import gen_batches, shuffle
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.validation import check_is_fitted, validate_data

from . import get_num_threads, ops, set_num_threads
from .losses import MSE, SigmoidBCE, SoftmaxCrossEntropy
from .nn import Identity, Linear, ReLU, Sequential, Sigmoid, Tanh
from .optim import Optimizer
from .train import TrainStep
from typing import Any, Sequence
from numpy.typing import DTypeLike

__all__ = ["MLPClassifier", "MLPRegressor"]

if tuple(int(p) for p in sklearn.__version__.split(".")[:2] if p.isdigit()) < (1, 7):
    raise ImportError(f"fastprop.sklearn needs scikit-learn >= 1.7 (its MLPs' training hooks), "
                      f"found {sklearn.__version__}")


def pairwise(units: Any) -> Any:
    """(fan_in, fan_out) of each layer (itertools.pairwise is Python 3.10+)."""
    return list(zip(units[:-1], units[1:]))


_HIDDEN = {"identity": Identity, "logistic": Sigmoid, "tanh": Tanh, "relu": ReLU}

_EXTRA_CONSTRAINTS = {
    "dtype": [None, StrOptions({"float32", "float64"})],
    "restore_best_weights": ["boolean"],
    "optimizer": [None, StrOptions({"adamw"})],
    "n_jobs": [None, Options(Integral, {-1}), Interval(Integral, 1, None, closed="left")],
}


def _layout(layer_units: Any) -> Any:
    """For each position of fastprop's flat buffer ([W0 (out, in), b0, W1, b1, ...]): its index
    in scikit-learn's packed vector ([coefs_ (in, out) ..., intercepts_ ...]); and the weight
    mask (True on weights, False on biases)."""
    shapes = list(pairwise(layer_units))
    n_coefs = sum(a * b for a, b in shapes)
    parts, start, bias_start = [], 0, n_coefs
    for a, b in shapes:
        parts.append(np.arange(start, start + a * b).reshape(a, b).T.ravel())
        parts.append(np.arange(bias_start, bias_start + b))
        start, bias_start = start + a * b, bias_start + b
    perm = np.concatenate(parts)
    return perm, perm < n_coefs


def _pack(arrays: Any) -> Any:
    return np.concatenate([a.ravel() for a in arrays])


class _Update(Optimizer):
    """scikit-learn's update of one flat parameter buffer, as a fastprop optimizer for TrainStep.

    The fused step leaves the gradient of fastprop's loss; scikit-learn's differs by a constant
    (``grad_scale``), then gets the L2 term alpha·W/n_batch (weights only), then the update:
    "sgd" (scikit-learn's momentum written as torch's buffer, buf = −velocity/lr, one C call),
    "adam" (scikit-learn's ε outside √v̂ is torch's ε/√(1−β₂ᵗ): one C call), "adamw" (the same
    Adam with the decay lr·alpha·W decoupled from the gradient), or None (L-BFGS: only the gradient).
    """

    def __init__(self, params: Any, rule: Any, weight_mask: Any, alpha: Any, grad_scale: Any,
                 sk_optimizer: Any) -> None:
        super().__init__(params, getattr(sk_optimizer, "learning_rate", 1.0))
        if len(self._runs) != 1:
            raise RuntimeError("the model's parameters are not one flat buffer")
        self.theta, self.grad = self._runs[0]
        self.rule, self.alpha, self.grad_scale, self.sk = rule, alpha, grad_scale, sk_optimizer
        self.mask = weight_mask.astype(self.theta.dtype)
        self.tmp = np.empty_like(self.theta)
        self.l2_scale = {}       # batch size -> alpha/n on the weights, 0 on the biases
        self.batch = 1
        self.penalty = 0.0       # the L2 term of the latest step's loss
        self.buf = self.m = self.v = None
        self.buf_lr = None       # the learning rate the momentum buffer is expressed in

    def _l2(self, n: Any) -> Any:
        vec = self.l2_scale.get(n)
        if vec is None:
            if len(self.l2_scale) > 3:  # weighted batches: n is the sum of their weights
                self.l2_scale.clear()
            vec = self.l2_scale[n] = self.mask * (self.alpha / n)
        return vec

    def _step(self) -> None:
        g, theta = self.grad, self.theta
        if self.grad_scale != 1.0:
            g *= self.grad_scale
        self.penalty = 0.0
        if self.alpha:  # adamw reports the same penalised loss; its decay is applied below
            np.multiply(theta, self._l2(self.batch), out=self.tmp)
            if self.rule != "adamw":
                g += self.tmp
            # a sum, not np.dot: a BLAS ddot this long starts threads (ms on a busy machine)
            self.penalty = 0.5 * float(np.multiply(self.tmp, theta, out=self.tmp).sum())
        if self.rule == "sgd":
            sk = self.sk
            lr = sk.learning_rate
            if self.buf_lr != lr:  # velocity = −lr·buf: keep the velocity when lr changes
                self.buf *= self.buf_lr / lr
                self.buf_lr = lr
            mom = sk.momentum
            ops.sgd_step(theta, g, lr=lr, momentum_buffer=self.buf if mom else None,
                         momentum=mom, nesterov=bool(sk.nesterov and mom > 0))
        elif self.rule in ("adam", "adamw"):
            sk = self.sk
            sk.t += 1
            t = sk.t
            bc2 = 1.0 - sk.beta_2 ** t
            sk.learning_rate = sk.learning_rate_init * np.sqrt(bc2) / (1.0 - sk.beta_1 ** t)
            if self.rule == "adamw" and self.alpha:
                np.multiply(theta, self.mask, out=self.tmp)
                theta -= (sk.learning_rate_init * self.alpha) * self.tmp
            ops.adam_step(theta, g, self.m, self.v, step=t, lr=sk.learning_rate_init,
                          beta1=sk.beta_1, beta2=sk.beta_2, eps=sk.epsilon / np.sqrt(bc2))
        self.step_count += 1

    # scikit-learn's optimizer state <-> the flat buffers
    def load_state(self, perm: Any) -> None:
        sk = self.sk
        dt = self.theta.dtype
        if self.rule == "sgd":
            v = _pack(sk.velocities)[perm]
            self.buf_lr = sk.learning_rate
            self.buf = np.ascontiguousarray(-v / sk.learning_rate, dt)
        elif self.rule in ("adam", "adamw"):
            self.m = np.ascontiguousarray(_pack(sk.ms)[perm], dt)
            self.v = np.ascontiguousarray(_pack(sk.vs)[perm], dt)

    def store_state(self, est: Any, perm: Any) -> None:
        sk = self.sk
        if self.rule == "sgd":
            sk.velocities = est._unflat((-self.buf_lr) * self.buf, perm)
        elif self.rule in ("adam", "adamw"):
            sk.ms = est._unflat(self.m, perm)
            sk.vs = est._unflat(self.v, perm)


class _FastMLP:
    """The fused training loop shared by both estimators (a mixin before scikit-learn's class)."""

    # ------------------------------------------------------------ what runs where
    def _fused(self, sample_weight: Any) -> Any:
        """The fused step has no per-row weights and no Poisson loss: those take the modular
        path (fastprop's forward and backward, scikit-learn's output delta and loss in NumPy)."""
        return sample_weight is None and getattr(self, "loss", None) != "poisson"

    def fit(self, X: Any, y: Any, sample_weight: Any = None, *, validation_data: Any = None) -> Any:
        """scikit-learn's fit. ``validation_data=(X_val, y_val)`` (fastprop's extra, sgd and
        adam): with ``early_stopping`` the held-out set instead of the ``validation_fraction``
        split; without, monitored only: its score after each epoch in ``validation_scores_``
        (and the best in ``best_validation_score_``)."""
        if validation_data is None:
            return super().fit(X, y, sample_weight=sample_weight)
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be a pair (X_val, y_val)")
        self._validation_data = validation_data
        try:
            return super().fit(X, y, sample_weight=sample_weight)
        finally:
            del self._validation_data

    def _held_out(self, X: Any) -> Any:
        """The checked (X_val, y_val) of fit's validation_data, or None."""
        data = self.__dict__.get("_validation_data")
        if data is None:
            return None
        X_val = validate_data(self, data[0], accept_sparse=["csr", "csc"], dtype=X.dtype,
                              reset=False)
        y_val = np.asarray(data[1])
        if y_val.shape[0] != X_val.shape[0]:
            raise ValueError(f"validation_data has {X_val.shape[0]} samples in X_val but "
                             f"{y_val.shape[0]} in y_val")
        return X_val, y_val

    def _fit(self, X: Any, y: Any, sample_weight: Any = None, incremental: bool = False) -> Any:
        if self.n_jobs is None:
            return super()._fit(X, y, sample_weight=sample_weight, incremental=incremental)
        from threadpoolctl import threadpool_limits  # a dependency of scikit-learn
        n = (os.cpu_count() or 1) if self.n_jobs == -1 else self.n_jobs
        before = get_num_threads()
        set_num_threads(min(n, 8))  # fastprop's cap (FP_MAX_THREADS)
        try:
            with threadpool_limits(limits=n, user_api="blas"):
                return super()._fit(X, y, sample_weight=sample_weight, incremental=incremental)
        finally:
            set_num_threads(before)

    def _validate_input(self, X: Any, y: Any, incremental: Any, reset: Any) -> Any:
        X, y = super()._validate_input(X, y, incremental, reset)
        if self.dtype is not None and X.dtype != np.dtype(self.dtype):
            X = X.astype(self.dtype)
        return X, y

    def _output(self) -> Any:
        """fastprop's loss for out_activation_, and the factors from its loss and gradient to
        scikit-learn's (mean over elements vs. sum over outputs of the mean over samples; ½ in
        the squared error)."""
        k = self.n_outputs_
        if self.out_activation_ == "softmax":
            return SoftmaxCrossEntropy(), 1.0, 1.0
        if self.out_activation_ == "logistic":
            return SigmoidBCE(), float(k), float(k)
        return MSE(), 0.5, 0.5 * k

    def _network(self, layer_units: Any, dtype: Any) -> Any:
        """An fp.Sequential holding coefs_ and intercepts_ (as fastprop's (out, in) weights)."""
        layers = []
        for i, (a, b) in enumerate(pairwise(layer_units)):
            lin = Linear(a, b, dtype=dtype, rng=0)
            layers.append(lin)
            if i < len(layer_units) - 2:
                layers.append(_HIDDEN[self.activation]())
        model = Sequential(*layers)
        for lin, W, b in zip([m for m in model.layers if isinstance(m, Linear)], self.coefs_,
                             self.intercepts_):
            lin.weight.data = W.T
            lin.bias.data = b
        return model

    def _unflat(self, flat: Any, perm: Any) -> Any:
        """scikit-learn's list coefs_ + intercepts_ (C-contiguous arrays) from a flat buffer."""
        packed = np.empty(flat.shape, flat.dtype)
        packed[perm] = flat
        out, start = [], 0
        units = self._units
        for a, b in pairwise(units):
            out.append(packed[start:start + a * b].reshape(a, b))
            start += a * b
        for b in units[1:]:
            out.append(packed[start:start + b])
            start += b
        return out

    def _set_params_from(self, flat: Any, perm: Any) -> None:
        params = self._unflat(flat, perm)
        n = len(self._units) - 1
        self.coefs_, self.intercepts_ = params[:n], params[n:]

    def _trainer(self, X: Any, y: Any, layer_units: Any, rule: Any, sk_optimizer: Any,
                 sample_weight: Any) -> Any:
        """(step, update, perm, target, loss_scale): ``J = step(x, y, w)`` is one training step
        returning scikit-learn's data loss; ``update`` holds the flat buffers and the L2 term."""
        dtype = X.dtype
        self._units = list(layer_units)
        perm, mask = _layout(layer_units)
        model = self._network(layer_units, dtype)
        loss, loss_scale, grad_scale = self._output()
        fused = self._fused(sample_weight)
        update = _Update(model.parameters(), rule, mask, float(self.alpha),
                         grad_scale if fused else 1.0, sk_optimizer)
        target = np.ascontiguousarray(y, dtype=dtype)
        if fused:
            train_step = TrainStep(model, loss, update, stop_on_nonfinite=False)
            train_step._check_batches = False  # validate_data checked X finite, as fp.fit does
            step = lambda x, t, w: train_step(x, t)  # noqa: E731
            return step, update, perm, target, loss_scale
        out_activation = ACTIVATIONS[self.out_activation_]
        name = self.loss
        if name == "log_loss" and self.out_activation_ == "logistic":
            name = "binary_log_loss"
        loss_fn = LOSS_FUNCTIONS[name]

        def step(x: Any, t: Any, w: Any) -> Any:  # scikit-learn's _backprop with fastprop's forward and backward
            model.zero_grad()
            p = model.forward(x)
            out_activation(p)
            J = loss_fn(t, p, w)
            delta = np.subtract(p, t, out=p)
            if w is not None:
                delta *= w.reshape(-1, 1)
            delta /= update.batch  # the sum of the weights (scikit-learn's sw_sum)
            model.backward(delta)
            update.step()
            return J
        return step, update, perm, target, 1.0

    # ------------------------------------------------------------ stochastic solvers
    def _fit_stochastic(self, X: Any, y: Any, sample_weight: Any, activations: Any, deltas: Any,
                        coef_grads: Any, intercept_grads: Any, layer_units: Any,
                        incremental: Any) -> Any:
        params = self.coefs_ + self.intercepts_
        if not incremental or not hasattr(self, "_optimizer"):
            if self.solver == "sgd":
                self._optimizer = SGDOptimizer(params, self.learning_rate_init,
                                               self.learning_rate, self.momentum,
                                               self.nesterovs_momentum, self.power_t)
            else:
                self._optimizer = AdamOptimizer(params, self.learning_rate_init, self.beta_1,
                                                self.beta_2, self.epsilon)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        sw_train = sw_val = sample_weight
        held_out = None if incremental else self._held_out(X)
        monitor = held_out is not None and not early_stopping
        if held_out is not None:
            X_train, y_train, sw_val = X, y, None
            X_val, y_val = held_out
            if monitor:
                self.validation_scores_ = self.validation_scores_ or []
        elif early_stopping:
            stratify = y if (self._is_classifier() and self.n_outputs_ == 1) else None
            arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
            split = train_test_split(*arrays, random_state=self._random_state,
                                     test_size=self.validation_fraction, stratify=stratify)
            X_train, X_val, y_train, y_val = split[:4]
            sw_train, sw_val = split[4:] if sample_weight is not None else (None, None)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                                 "or the size of your dataset.")
            if self._is_classifier():
                y_val = self._label_binarizer.inverse_transform(y_val)
        else:
            X_train, y_train, X_val, y_val = X, y, None, None

        n_samples = X_train.shape[0]
        sample_idx = np.arange(n_samples, dtype=int)
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than "
                              "sample size. It is going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_samples))

        rule = "adamw" if (self.solver == "adam" and self.optimizer == "adamw") else self.solver
        step, update, perm, target, loss_scale = self._trainer(
            X_train, y_train, layer_units, rule, self._optimizer, sw_train)
        update.load_state(perm)
        theta = update.theta
        sparse = scipy.sparse.issparse(X_train)  # sparse X: each batch is made dense
        X_train = X_train.tocsr() if sparse else np.ascontiguousarray(X_train)
        # shuffled batches are gathered into one reused buffer (scikit-learn indexes a new copy)
        xb = np.empty((batch_size, X_train.shape[1]), X_train.dtype)
        yb = np.empty((batch_size, target.shape[1]), target.dtype)
        try:
            self.n_iter_ = 0
            for it in range(self.max_iter):
                if self.shuffle:
                    sample_idx = shuffle(sample_idx, random_state=self._random_state)
                accumulated_loss = 0.0
                for batch_slice in gen_batches(n_samples, batch_size):
                    n = batch_slice.stop - batch_slice.start
                    idx = sample_idx[batch_slice] if self.shuffle else batch_slice
                    w = None if sw_train is None else sw_train[idx]
                    update.batch = n if w is None else w.sum()
                    if sparse:
                        J = step(X_train[idx].toarray(), target[idx], w)
                    elif self.shuffle:
                        J = step(np.take(X_train, idx, axis=0, out=xb[:n]),
                                 np.take(target, idx, axis=0, out=yb[:n]), w)
                    else:
                        J = step(X_train[batch_slice], target[batch_slice], w)
                    accumulated_loss += (J * loss_scale + update.penalty) * n
                self.n_iter_ += 1
                self.loss_ = np.float64(accumulated_loss / n_samples)  # scikit-learn's type
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                if early_stopping:  # scikit-learn's validation score and best copy read coefs_
                    self._set_params_from(theta, perm)
                self._update_no_improvement_count(early_stopping, X_val, y_val, sw_val)
                if monitor:
                    self._set_params_from(theta, perm)
                    self.validation_scores_.append(self._score(X_val, y_val))
                    self.best_validation_score_ = max(self.validation_scores_)
                self._optimizer.iteration_ends(self.t_)
                if self._no_improvement_count > self.n_iter_no_change:
                    if early_stopping:
                        msg = ("Validation score did not improve more than tol=%f for %d "
                               "consecutive epochs." % (self.tol, self.n_iter_no_change))
                    else:
                        msg = ("Training loss did not improve more than tol=%f"
                               " for %d consecutive epochs." % (self.tol, self.n_iter_no_change))
                    if self._optimizer.trigger_stopping(msg, self.verbose):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the "
                                  "optimization hasn't converged yet." % self.max_iter,
                                  ConvergenceWarning)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        update.store_state(self, perm)
        self._set_params_from(theta, perm)
        if early_stopping and self.restore_best_weights:
            self.coefs_, self.intercepts_ = self._best_coefs, self._best_intercepts

    # ------------------------------------------------------------ L-BFGS
    def _fit_lbfgs(self, X: Any, y: Any, sample_weight: Any, activations: Any, deltas: Any,
                   coef_grads: Any, intercept_grads: Any, layer_units: Any) -> Any:
        if scipy.sparse.issparse(X):  # L-BFGS takes the whole X: kept sparse, scikit-learn's code
            return super()._fit_lbfgs(X, y, sample_weight, activations, deltas, coef_grads,
                                      intercept_grads, layer_units)
        X = np.ascontiguousarray(X)
        step, update, perm, target, loss_scale = self._trainer(
            X, y, layer_units, None, None, sample_weight)
        update.batch = X.shape[0] if sample_weight is None else sample_weight.sum()
        self._lbfgs = (step, update, perm, target, loss_scale)
        try:
            super()._fit_lbfgs(X, y, sample_weight, activations, deltas, coef_grads,
                               intercept_grads, layer_units)
        finally:
            del self._lbfgs

    def _loss_grad_lbfgs(self, packed: Any, X: Any, y: Any, sample_weight: Any, activations: Any,
                         deltas: Any, coef_grads: Any, intercept_grads: Any) -> Any:
        ctx = self.__dict__.get("_lbfgs")
        if ctx is None:
            return super()._loss_grad_lbfgs(packed, X, y, sample_weight, activations, deltas,
                                            coef_grads, intercept_grads)
        step, update, perm, target, loss_scale = ctx
        update.theta[...] = packed[perm]
        J = step(X, target, sample_weight)
        grad = np.empty(packed.shape, np.float64)
        grad[perm] = update.grad
        return J * loss_scale + update.penalty, grad

    # ------------------------------------------------------------ extras
    def _is_classifier(self) -> Any:
        return isinstance(self, _SkMLPClassifier)

    def to_fastprop(self) -> Any:
        """The trained network as an ``fp.Sequential`` of the coefs_' dtype; its outputs are
        the logits (apply softmax/sigmoid for probabilities, as fastprop's losses do)."""
        check_is_fitted(self)
        units = [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]
        return self._network(units, self.coefs_[0].dtype)


class MLPClassifier(_FastMLP, _SkMLPClassifier):
    """scikit-learn's MLPClassifier (same parameters, attributes and model) on fastprop.

    Parameters
    ----------
    hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate, \
learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose, warm_start, \
momentum, nesterovs_momentum, early_stopping, validation_fraction, beta_1, beta_2, epsilon, \
n_iter_no_change, max_fun : as scikit-learn's
        As :class:`sklearn.neural_network.MLPClassifier`'s, with its defaults.
    dtype : {None, "float32", "float64"}, default None
        None: X's (as scikit-learn); otherwise X is cast. Keyword-only, as the extras below.
    class_weight : dict, "balanced" or None, default None
        Sample weights by class, as in scikit-learn's linear models.
    restore_best_weights : bool, default True
        With early stopping, end with the best validation score's weights (False: the last).
    optimizer : {None, "adamw"}, default None
        "adamw" with solver="adam": the L2 term becomes AdamW's decoupled decay lr·alpha·W.
    n_jobs : int, optional
        None: the BLAS's and fastprop's thread settings as they are; n, or -1 for every CPU:
        both capped at n during fit.

    Attributes
    ----------
    classes_, coefs_, intercepts_, loss_, loss_curve_, n_iter_, n_layers_, n_outputs_, \
out_activation_
        As scikit-learn's.

    Examples
    --------
    >>> import numpy as np
    >>> from fastprop.sklearn import MLPClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 2))
    >>> y = (X[:, 0] + X[:, 1] > 0).astype(int)
    >>> clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01, max_iter=300,
    ...                     random_state=0).fit(X, y)
    >>> clf.score(X, y) > 0.95
    True
    >>> [w.shape for w in clf.coefs_]
    [(2, 16), (16, 1)]
    >>> clf.predict_proba(X[:3]).shape
    (3, 2)
    """
    _parameter_constraints = {
        **_SkMLPClassifier._parameter_constraints, **_EXTRA_CONSTRAINTS,
        "class_weight": [None, dict, StrOptions({"balanced"})],
    }

    def __init__(self, hidden_layer_sizes: int | Sequence[int] = (100,), activation: str = "relu",
                 *, solver: str = "adam", alpha: float = 0.0001, batch_size: int | str = "auto",
                 learning_rate: str = "constant", learning_rate_init: float = 0.001,
                 power_t: float = 0.5, max_iter: int = 200, shuffle: bool = True,
                 random_state: int | np.random.RandomState | None = None, tol: float = 1e-4,
                 verbose: bool = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, n_iter_no_change: int = 10, max_fun: int = 15000,
                 dtype: DTypeLike | None = None,
                 class_weight: dict[Any, float] | str | None = None,
                 restore_best_weights: bool = True, optimizer: str | None = None,
                 n_jobs: int | None = None) -> None:
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            max_fun=max_fun)
        self.dtype = dtype
        self.class_weight = class_weight
        self.restore_best_weights = restore_best_weights
        self.optimizer = optimizer
        self.n_jobs = n_jobs

    def _fit(self, X: Any, y: Any, sample_weight: Any = None, incremental: bool = False) -> Any:
        if self.class_weight is not None:
            if incremental and self.class_weight == "balanced":
                raise ValueError("class_weight 'balanced' is not supported for partial_fit: "
                                 "pass a dict of class weights")
            y_arr = np.asarray(y) if not scipy.sparse.issparse(y) else y.toarray()
            w = compute_sample_weight(self.class_weight, y_arr)
            sample_weight = w if sample_weight is None else np.asarray(sample_weight) * w
        return super()._fit(X, y, sample_weight=sample_weight, incremental=incremental)


class MLPRegressor(_FastMLP, _SkMLPRegressor):
    """scikit-learn's MLPRegressor (same parameters, attributes and model) on fastprop.

    Parameters
    ----------
    loss, hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate, \
learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose, warm_start, \
momentum, nesterovs_momentum, early_stopping, validation_fraction, beta_1, beta_2, epsilon, \
n_iter_no_change, max_fun : as scikit-learn's
        As :class:`sklearn.neural_network.MLPRegressor`'s, with its defaults;
        ``loss="poisson"`` runs scikit-learn's own code.
    dtype, restore_best_weights, optimizer, n_jobs : as MLPClassifier's
        Keyword-only extras, as :class:`MLPClassifier`'s.

    Examples
    --------
    >>> import numpy as np
    >>> from fastprop.sklearn import MLPRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((100, 3))
    >>> y = X @ np.array([1.0, -2.0, 0.5])
    >>> reg = MLPRegressor(hidden_layer_sizes=(16,), max_iter=1000, random_state=0).fit(X, y)
    >>> reg.score(X, y) > 0.95
    True
    >>> reg.predict(X[:2]).shape
    (2,)
    """
    _parameter_constraints = {**_SkMLPRegressor._parameter_constraints, **_EXTRA_CONSTRAINTS}

    def __init__(self, loss: str = "squared_error",
                 hidden_layer_sizes: int | Sequence[int] = (100,), activation: str = "relu", *,
                 solver: str = "adam", alpha: float = 0.0001, batch_size: int | str = "auto",
                 learning_rate: str = "constant", learning_rate_init: float = 0.001,
                 power_t: float = 0.5, max_iter: int = 200, shuffle: bool = True,
                 random_state: int | np.random.RandomState | None = None, tol: float = 1e-4,
                 verbose: bool = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, n_iter_no_change: int = 10, max_fun: int = 15000,
                 dtype: DTypeLike | None = None, restore_best_weights: bool = True,
                 optimizer: str | None = None, n_jobs: int | None = None) -> None:
        super().__init__(
            loss=loss, hidden_layer_sizes=hidden_layer_sizes, activation=activation,
            solver=solver, alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            max_fun=max_fun)
        self.dtype = dtype
        self.restore_best_weights = restore_best_weights
        self.optimizer = optimizer
        self.n_jobs = n_jobs
