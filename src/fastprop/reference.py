"""Plain NumPy reference implementation of the fastprop operations ("the maths").

Every function of ``fastprop.ops`` (see ``docs/ops_spec.md``) is implemented here
with the same name and arguments, using only vectorised NumPy (and
``scipy.special.erfc`` for the exact GELU).  It is the test oracle for the C kernels
and the baseline for the benchmarks.

Conventions: arrays are batch-major, ``x`` is (B, in), ``weight`` is (out, in)
(PyTorch convention) and ``bias`` is (out,).  Results keep the dtype of the inputs
(float32 stays float32, float64 stays float64); loss values are Python floats.
When a buffer argument (``out=``, ``grad_out=``, ``grad_weight=``, ...) is given,
the result is written into it and that buffer is returned; ``accumulate=True``
adds into the buffer instead.  The optimizer steps (``sgd_step``, ``adam_step``, ...) work in place.

The module also contains a small fully-connected network written with these
formulas (``mlp_forward`` / ``mlp_backward``, after algorithms 6.3 and 6.4 of
Goodfellow, Bengio and Courville, *Deep Learning*) and ``NumpyMLPTrainer``, an
MLP training step written the way a careful NumPy user would (preallocated
buffers, ``out=`` everywhere), used as the benchmark baseline.
"""

import math

import numpy as np
from scipy.special import erfc

from . import registry

__all__ = [
    "ACTIVATIONS",
    "dense_forward",
    "dense_backward",
    "activation_forward",
    "activation_backward",
    "activation_second",
    "activation_rbackward",
    "prelu_forward",
    "prelu_backward",
    "prelu_rforward",
    "prelu_rbackward",
    "softmax",
    "log_softmax",
    "softmax_cross_entropy",
    "sigmoid_bce",
    "mse",
    "gaussian_nll",
    "add_forward",
    "add_backward",
    "mul_forward",
    "mul_backward",
    "concat_forward",
    "concat_backward",
    "low_rank_forward",
    "low_rank_backward",
    "graph_forward",
    "graph_backward",
    "softmax_cross_entropy_hvp",
    "sigmoid_bce_hvp",
    "mse_hvp",
    "l1_loss",
    "huber_loss",
    "smooth_l1_loss",
    "l1_loss_hvp",
    "huber_loss_hvp",
    "smooth_l1_loss_hvp",
    "sgd_step",
    "adam_step",
    "amsgrad_step",
    "rmsprop_step",
    "adagrad_step",
    "mlp_forward",
    "mlp_backward",
    "NumpyMLPTrainer",
    "dropout_forward",
    "dropout_backward",
    "layernorm_forward",
    "layernorm_backward",
    "layernorm_rforward",
    "layernorm_rbackward",
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_rforward",
    "batchnorm_rbackward",
]

ACTIVATIONS = registry.activation_names()

# Python floats (not NumPy float64 scalars) so that float32 arrays stay float32.
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# --------------------------------------------------------------------------- helpers

def _into(buf, value, accumulate=False):
    """Return ``value``, or write (or add, if ``accumulate``) it into ``buf`` and return ``buf``."""
    if buf is None:
        return value
    if accumulate:
        buf += value
    else:
        buf[...] = value
    return buf


def _sigmoid(z):
    """Logistic function 1 / (1 + exp(-z)) that never overflows."""
    e = np.exp(-np.abs(z))  # in (0, 1]
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _log1p_exp(z):
    """log(1 + exp(z)) computed without overflow."""
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


# --------------------------------------------------------------------------- activations

def activation_forward(x, activation, *, out=None, negative_slope=0.01, beta=1.0,
                       threshold=20.0):
    """Apply the named elementwise activation f to ``x``.

    Parameters
    ----------
    x : ndarray
        The inputs, any shape.
    activation : str
        The activation's name, one of ``ACTIVATIONS`` (identity, relu, leaky_relu, abs,
        sigmoid, tanh, softplus, cos, gelu, silu).
    out : ndarray or None
        Buffer for the result, of x's shape (may be x itself); allocated when None.
    negative_slope : float
        leaky_relu's slope for inputs below 0.
    beta : float
        softplus's beta (nonzero): ``log(1 + exp(beta x)) / beta``.
    threshold : float
        softplus is the identity where ``beta x > threshold``.

    Returns
    -------
    out : ndarray
        ``f(x)``, of x's shape.
    """
    x = np.asarray(x)
    if activation == "identity":
        y = x.copy()
    elif activation == "relu":
        y = np.maximum(x, 0)
    elif activation == "leaky_relu":
        y = np.where(x > 0, x, negative_slope * x)
    elif activation == "abs":
        y = np.abs(x)
    elif activation == "sigmoid":
        y = _sigmoid(x)
    elif activation == "tanh":
        y = np.tanh(x)
    elif activation == "softplus":
        bx = beta * x
        y = np.where(bx > threshold, x, _log1p_exp(bx) / beta)
    elif activation == "cos":
        y = np.cos(x)
    elif activation == "gelu":
        y = 0.5 * x * erfc(-x * _INV_SQRT2)   # Φ = ½ erfc(−x/√2): ½(1 + erf) cancels for x ≪ 0
    elif activation == "silu":
        y = x * _sigmoid(x)
    else:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    return _into(out, y)


def activation_backward(grad, activation, *, x=None, y=None, out=None, negative_slope=0.01,
                        beta=1.0, threshold=20.0):
    """Return grad * f'(x); relu, leaky_relu (slope > 0), sigmoid, tanh, identity need only y.

    Parameters
    ----------
    grad : ndarray
        The gradient of the output, any shape.
    activation : str
        The activation's name, one of ``ACTIVATIONS`` (identity, relu, leaky_relu, abs,
        sigmoid, tanh, softplus, cos, gelu, silu).
    x : ndarray or None
        The forward's input, of grad's shape; needed unless y is given and the activation is
        identity, relu, leaky_relu (slope > 0), sigmoid or tanh.
    y : ndarray or None
        The forward's output ``f(x)``, of grad's shape; enough for identity, relu, leaky_relu
        (slope > 0), sigmoid and tanh.
    out : ndarray or None
        Buffer for the result, of grad's shape (may be grad itself); allocated when None.
    negative_slope : float
        leaky_relu's slope for inputs below 0.
    beta : float
        softplus's beta (nonzero): ``log(1 + exp(beta x)) / beta``.
    threshold : float
        softplus is the identity where ``beta x > threshold``.

    Returns
    -------
    out : ndarray
        ``grad f'(x)``, of grad's shape.
    """
    grad = np.asarray(grad)
    x = None if x is None else np.asarray(x)
    y = None if y is None else np.asarray(y)

    def need_x():
        if x is None:
            raise ValueError(f"activation_backward({activation!r}) needs x")
        return x

    if activation == "identity":                       # f' = 1
        result = grad.copy()
    elif activation == "relu":                         # f' = [x > 0] = [y > 0]
        positive = (y if y is not None else need_x()) > 0
        result = np.where(positive, grad, 0)
    elif activation == "leaky_relu":                   # f' = 1 if x > 0 else slope
        use_y = y is not None and negative_slope > 0   # then y has the sign of x
        positive = (y if use_y else need_x()) > 0
        result = np.where(positive, grad, negative_slope * grad)
    elif activation == "sigmoid":                      # f' = y (1 - y)
        s = y if y is not None else _sigmoid(need_x())
        result = grad * (s * (1 - s))
    elif activation == "tanh":                         # f' = 1 - y^2
        t = y if y is not None else np.tanh(need_x())
        result = grad * ((1 - t) * (1 + t))             # no cancellation near |y| = 1
    elif activation == "abs":                          # f' = sign(x), 0 at 0
        result = grad * np.sign(need_x())
    elif activation == "softplus":                     # f' = sigmoid(beta x), 1 where linear
        bx = beta * need_x()
        d = _sigmoid(bx)
        d[bx > threshold] = 1
        result = grad * d
    elif activation == "cos":                          # f' = -sin(x)
        result = grad * -np.sin(need_x())
    elif activation == "gelu":                         # f' = Phi(x) + x phi(x)
        x = need_x()
        cdf = 0.5 * erfc(-x * _INV_SQRT2)
        pdf = _INV_SQRT_2PI * np.exp(-0.5 * x * x)
        result = grad * (cdf + x * pdf)
    elif activation == "silu":                         # f' = s (1 + x (1 - s)), s = sigmoid(x)
        x = need_x()
        s = _sigmoid(x)
        result = grad * (s * (1 + x * (1 - s)))
    else:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    return _into(out, result)


def _second_derivative(x, activation, negative_slope, beta, threshold):
    """f''(x) of the named activation (0 almost everywhere for the piecewise-linear ones)."""
    if activation in ("identity", "relu", "leaky_relu", "abs"):
        return np.zeros_like(x)
    if activation == "sigmoid":                        # s (1 - s) (1 - 2 s)
        s = _sigmoid(x)
        return s * (1 - s) * (1 - 2 * s)
    if activation == "tanh":                           # -2 t (1 - t^2)
        t = np.tanh(x)
        return -2 * t * (1 - t * t)
    if activation == "softplus":                       # beta s (1 - s), s = sigmoid(beta x); 0 where linear
        bx = beta * x
        s = _sigmoid(bx)
        return np.where(bx > threshold, 0, beta * s * (1 - s)).astype(x.dtype, copy=False)
    if activation == "cos":                            # -cos(x)
        return -np.cos(x)
    if activation == "gelu":                           # phi(x) (2 - x^2)
        return _INV_SQRT_2PI * np.exp(-0.5 * x * x) * (2 - x * x)
    if activation == "silu":                           # s (1 - s) (2 + x (1 - 2 s))
        s = _sigmoid(x)
        return s * (1 - s) * (2 + x * (1 - 2 * s))
    raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")


def activation_second(grad, activation, *, x, out=None, negative_slope=0.01, beta=1.0,
                      threshold=20.0):
    """Return grad * f''(x) (x is the input, the pre-activation).

    Parameters
    ----------
    grad : ndarray
        The vector multiplied by f'', any shape.
    activation : str
        The activation's name, one of ``ACTIVATIONS`` (identity, relu, leaky_relu, abs,
        sigmoid, tanh, softplus, cos, gelu, silu).
    x : ndarray
        The forward's input (the pre-activation), of grad's shape.
    out : ndarray or None
        Buffer for the result, of grad's shape (may be grad itself); allocated when None.
    negative_slope : float
        leaky_relu's slope for inputs below 0.
    beta : float
        softplus's beta (nonzero): ``log(1 + exp(beta x)) / beta``.
    threshold : float
        softplus is the identity where ``beta x > threshold``.

    Returns
    -------
    out : ndarray
        ``grad f''(x)``, of grad's shape.
    """
    grad, x = np.asarray(grad), np.asarray(x)
    return _into(out, grad * _second_derivative(x, activation, negative_slope, beta, threshold))


def activation_rbackward(grad, rgrad, activation, *, x, rx, out=None, rout=None,
                         negative_slope=0.01, beta=1.0, threshold=20.0):
    """Return (grad * f'(x), rgrad * f'(x) + grad * f''(x) * rx): the backward and its R-operator.

    Parameters
    ----------
    grad : ndarray
        The gradient of the output, any shape.
    rgrad : ndarray
        R{grad}, the gradient's directional derivative, of grad's shape.
    activation : str
        The activation's name, one of ``ACTIVATIONS`` (identity, relu, leaky_relu, abs,
        sigmoid, tanh, softplus, cos, gelu, silu).
    x : ndarray
        The forward's input, of grad's shape.
    rx : ndarray
        R{x}, the input's direction, of grad's shape.
    out : ndarray or None
        Buffer for the backward, of grad's shape (may be grad itself); allocated when None.
    rout : ndarray or None
        Buffer for its R-operator, of grad's shape (may be rgrad itself); allocated when None.
    negative_slope : float
        leaky_relu's slope for inputs below 0.
    beta : float
        softplus's beta (nonzero): ``log(1 + exp(beta x)) / beta``.
    threshold : float
        softplus is the identity where ``beta x > threshold``.

    Returns
    -------
    out : ndarray
        ``grad f'(x)``, of grad's shape.
    rout : ndarray
        ``rgrad f'(x) + grad f''(x) rx``, of grad's shape.
    """
    grad, rgrad, x, rx = (np.asarray(a) for a in (grad, rgrad, x, rx))
    params = {"negative_slope": negative_slope, "beta": beta, "threshold": threshold}
    d1 = activation_backward(np.ones_like(x), activation, x=x, **params)
    d2 = _second_derivative(x, activation, **params)
    result = grad * d1
    rresult = rgrad * d1 + grad * d2 * rx
    return _into(out, result), _into(rout, rresult)


# --------------------------------------------------------------------------- dense layer

def dense_forward(x, weight, bias=None, activation="identity", *, out=None, preact_out=None,
                  negative_slope=0.01, beta=1.0, threshold=20.0):
    """y = f(x @ weight.T + bias); the pre-activation is stored in ``preact_out`` if given.

    Parameters
    ----------
    x : ndarray
        (B, in) inputs.
    weight : ndarray
        (out, in) weights.
    bias : ndarray or None
        (out,) biases, or None for none.
    activation : str
        The activation's name, one of ``ACTIVATIONS`` (identity, relu, leaky_relu, abs,
        sigmoid, tanh, softplus, cos, gelu, silu).
    out : ndarray or None
        Buffer for the result, (B, out); allocated when None.
    preact_out : ndarray or None
        (B, out) buffer that receives the pre-activation ``x @ weight.T + bias``; not kept
        when None.
    negative_slope : float
        leaky_relu's slope for inputs below 0.
    beta : float
        softplus's beta (nonzero): ``log(1 + exp(beta x)) / beta``.
    threshold : float
        softplus is the identity where ``beta x > threshold``.

    Returns
    -------
    out : ndarray
        (B, out): ``f(x @ weight.T + bias)``.
    """
    a = x @ weight.T
    if bias is not None:
        a += bias
    if preact_out is not None:
        preact_out[...] = a
    return activation_forward(a, activation, out=out, negative_slope=negative_slope,
                              beta=beta, threshold=threshold)


def dense_backward(grad_out, x, weight, *, bias=True, input_grad=True, grad_input=None,
                   grad_weight=None, grad_bias=None, accumulate=False, accumulate_input=None):
    """Gradients of a linear layer: (grad_out @ weight, grad_out.T @ x, grad_out.sum(0)).

    Parameters
    ----------
    grad_out : ndarray
        (B, out) gradient of the pre-activation ``x @ weight.T + bias``.
    x : ndarray
        (B, in) the forward's inputs.
    weight : ndarray
        (out, in) weights.
    bias : bool
        Compute grad_bias (else None is returned for it).
    input_grad : bool
        Compute grad_input (else None is returned for it).
    grad_input : ndarray or None
        (B, in) buffer for grad_input; allocated when None.
    grad_weight : ndarray or None
        (out, in) buffer for grad_weight; allocated when None.
    grad_bias : ndarray or None
        (out,) buffer for grad_bias; allocated when None.
    accumulate : bool
        Add into grad_weight and grad_bias instead of overwriting them.
    accumulate_input : bool or None
        Add into grad_input; None: as accumulate.

    Returns
    -------
    grad_input : ndarray or None
        (B, in): ``grad_out @ weight``; None without input_grad.
    grad_weight : ndarray
        (out, in): ``grad_out.T @ x``.
    grad_bias : ndarray or None
        (out,): ``grad_out.sum(0)``; None without bias.
    """
    acc_x = accumulate if accumulate_input is None else accumulate_input
    gw = _into(grad_weight, grad_out.T @ x, accumulate)
    gb = _into(grad_bias, grad_out.sum(axis=0), accumulate) if bias else None
    gi = _into(grad_input, grad_out @ weight, acc_x) if input_grad else None
    return gi, gw, gb


# --------------------------------------------------------------------------- PReLU

def _per_channel(weight, x):
    """View ``weight`` ((1,) or (C,)) so that it broadcasts along axis 1 of ``x``."""
    weight = np.asarray(weight)
    if weight.size == 1:
        return weight.reshape(())
    if x.ndim < 2 or weight.size != x.shape[1]:
        raise ValueError(f"prelu weight of size {weight.size} does not match input {x.shape}")
    return weight.reshape((1, -1) + (1,) * (x.ndim - 2))


def prelu_forward(x, weight, *, out=None):
    """y = x where x > 0, else weight[c] * x (c = channel = axis 1).

    Parameters
    ----------
    x : ndarray
        (B, C) inputs.
    weight : ndarray
        (1,) or (C,): the slope below 0, shared or one per channel.
    out : ndarray or None
        Buffer for the result, (B, C) (may be x itself); allocated when None.

    Returns
    -------
    out : ndarray
        (B, C): x where x > 0, else ``weight[c] x``.
    """
    x = np.asarray(x)
    return _into(out, np.where(x > 0, x, _per_channel(weight, x) * x))


def prelu_backward(grad, x, weight, *, out=None, grad_weight=None, accumulate=False):
    """Return (grad_input, grad_weight) of PReLU; grad_weight[c] = sum over x <= 0 of grad * x.

    Parameters
    ----------
    grad : ndarray
        (B, C) gradient of the output.
    x : ndarray
        (B, C) the forward's inputs.
    weight : ndarray
        (1,) or (C,): the slope below 0, shared or one per channel.
    out : ndarray or None
        (B, C) buffer for grad_input (may be grad itself); allocated when None.
    grad_weight : ndarray or None
        Buffer for grad_weight, of weight's shape; allocated when None.
    accumulate : bool
        Add into grad_weight instead of overwriting it.

    Returns
    -------
    out : ndarray
        (B, C) grad_input: grad where x > 0, else ``weight[c] grad``.
    grad_weight : ndarray
        Of weight's shape: the sum over x <= 0 of ``grad x``.
    """
    grad, x = np.asarray(grad), np.asarray(x)
    weight = np.asarray(weight)
    positive = x > 0
    gi = np.where(positive, grad, _per_channel(weight, x) * grad)
    contrib = np.where(positive, 0, grad * x)
    if weight.size == 1:
        gw = contrib.sum().reshape(weight.shape)
    else:
        gw = contrib.sum(axis=tuple(i for i in range(x.ndim) if i != 1)).reshape(weight.shape)
    return _into(out, gi), _into(grad_weight, gw, accumulate)


def prelu_rforward(x, weight, v_weight, *, rx=None, out=None):
    """R{y} of PReLU: where x > 0, rx; elsewhere weight[c] * rx + x * v_weight[c].

    Parameters
    ----------
    x : ndarray
        (B, C) inputs.
    weight : ndarray
        (1,) or (C,): the slope below 0, shared or one per channel.
    v_weight : ndarray
        The slopes' direction, of weight's shape.
    rx : ndarray or None
        (B, C) R{x}, the input's direction; None for a fixed input (R{x} = 0).
    out : ndarray or None
        Buffer for the result, (B, C) (may be rx itself); allocated when None.

    Returns
    -------
    out : ndarray
        (B, C) R{y}: rx where x > 0, else ``weight[c] rx + x v_weight[c]``.
    """
    x = np.asarray(x)
    rx = np.zeros_like(x) if rx is None else np.asarray(rx)
    a, va = _per_channel(weight, x), _per_channel(v_weight, x)
    return _into(out, np.where(x > 0, rx, a * rx + x * va))


def prelu_rbackward(grad, rgrad, x, weight, v_weight, *, rx=None, out=None, rout=None,
                    hv_weight=None, accumulate=False):
    """(grad * f'(x), rgrad * f'(x) + [x <= 0] v_weight grad, sum over x <= 0 of rgrad x + grad rx).

    Parameters
    ----------
    grad : ndarray or None
        (B, C) gradient of the output; None (the Gauss-Newton pass) drops its terms.
    rgrad : ndarray
        (B, C) R{grad}, the gradient's directional derivative.
    x : ndarray
        (B, C) the forward's inputs.
    weight : ndarray
        (1,) or (C,): the slope below 0, shared or one per channel.
    v_weight : ndarray
        The slopes' direction, of weight's shape.
    rx : ndarray or None
        (B, C) R{x}, the input's direction; None drops its terms.
    out : ndarray or None
        (B, C) buffer for grad_input (may be grad itself); allocated when None.
    rout : ndarray or None
        (B, C) buffer for R{grad_input} (may be rgrad itself); allocated when None.
    hv_weight : ndarray or None
        Buffer for R{grad_weight}, of weight's shape; allocated when None.
    accumulate : bool
        Add into hv_weight instead of overwriting it.

    Returns
    -------
    out : ndarray or None
        (B, C) grad_input; None when grad is None.
    rout : ndarray
        (B, C) R{grad_input}.
    hv_weight : ndarray
        Of weight's shape: the sum over x <= 0 of ``rgrad x + grad rx``.
    """
    rgrad, x = np.asarray(rgrad), np.asarray(x)
    g = np.zeros_like(x) if grad is None else np.asarray(grad)
    rx = np.zeros_like(x) if rx is None else np.asarray(rx)
    weight = np.asarray(weight)
    a, va = _per_channel(weight, x), _per_channel(v_weight, x)
    positive = x > 0
    gi = np.where(positive, g, a * g)
    rgi = np.where(positive, rgrad, a * rgrad + va * g)
    contrib = np.where(positive, 0, rgrad * x + g * rx)
    if weight.size == 1:
        hw = contrib.sum().reshape(weight.shape)
    else:
        hw = contrib.sum(axis=0).reshape(weight.shape)
    return (None if grad is None else _into(out, gi)), _into(rout, rgi), \
        _into(hv_weight, hw, accumulate)


# --------------------------------------------------------------------------- softmax and losses

def softmax(logits, *, out=None):
    """Row-wise softmax, shifted by the row max.

    Parameters
    ----------
    logits : ndarray
        (B, C) logits.
    out : ndarray or None
        Buffer for the result, (B, C) (may be logits itself); allocated when None.

    Returns
    -------
    out : ndarray
        (B, C): each row's softmax.
    """
    z = np.asarray(logits)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return _into(out, e / e.sum(axis=-1, keepdims=True))


def log_softmax(logits, *, out=None):
    """Row-wise log-softmax: z - logsumexp(z).

    Parameters
    ----------
    logits : ndarray
        (B, C) logits.
    out : ndarray or None
        Buffer for the result, (B, C) (may be logits itself); allocated when None.

    Returns
    -------
    out : ndarray
        (B, C): each row's log-softmax.
    """
    z = np.asarray(logits)
    shifted = z - z.max(axis=-1, keepdims=True)
    return _into(out, shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)))


def _targets_as_matrix(z, target):
    """Integer labels (B,) as one-hot rows, or soft targets (B, C) in the dtype of ``z``."""
    target = np.asarray(target)
    if np.issubdtype(target.dtype, np.integer):
        if target.shape != z.shape[:1]:
            raise ValueError(f"labels of shape {target.shape} do not match logits {z.shape}")
        if target.size and (target.min() < 0 or target.max() >= z.shape[1]):
            raise ValueError(f"labels must lie in [0, {z.shape[1]})")
        t = np.zeros_like(z)
        t[np.arange(z.shape[0]), target] = 1
        return t
    if target.shape != z.shape:
        raise ValueError(f"soft targets of shape {target.shape} do not match logits {z.shape}")
    return target.astype(z.dtype, copy=False)


def _xent_weights(z, target, weight, label_smoothing, sample_weight):
    """(q, s / D): torch's effective targets q_ij = c_j ((1 - eps) t_ij + eps / C) (t one-hot for
    labels) and each row's factor s_i / D, D = sum_i s_i c_{y_i} for labels, sum_i s_i for soft."""
    t = _targets_as_matrix(z, target)
    c = np.ones(z.shape[1]) if weight is None else np.asarray(weight, np.float64)
    q = (c * ((1 - label_smoothing) * t + label_smoothing / z.shape[1])).astype(z.dtype)
    s = np.ones(z.shape[0]) if sample_weight is None else np.asarray(sample_weight, np.float64)
    d = c[np.asarray(target)] if np.asarray(target).ndim == 1 else np.ones(z.shape[0])
    return q, s / np.sum(s * d)


def softmax_cross_entropy(logits, target, *, grad_out=None, compute_grad=True, weight=None,
                          label_smoothing=0.0, sample_weight=None):
    """loss = mean_i[-t_i . log_softmax(z_i)]; grad = (softmax(z) * sum_j t_ij - t) / B.

    ``target`` is integer labels (B,) or soft targets (B, C).  When the rows of ``t`` sum
    to 1 (always for labels) the loss is mean_i[logsumexp(z_i) - t_i . z_i].
    ``weight`` (C,), ``label_smoothing`` and ``sample_weight`` (B,): torch's CrossEntropyLoss
    with t replaced by q (_xent_weights) and the mean by sum_i s_i (...) / D.

    Parameters
    ----------
    logits : ndarray
        (B, C) logits.
    target : array_like
        (B,) integer labels in [0, C), or (B, C) soft targets.
    grad_out : ndarray or None
        Buffer for the gradient, of logits's shape (may be logits itself); allocated when None.
    compute_grad : bool
        False skips the gradient (None is returned for it).
    weight : array_like or None
        (C,) class weights, finite and >= 0 (torch's CrossEntropyLoss weight); None: all 1.
    label_smoothing : float
        In [0, 1]: the targets become ``(1 - eps) t + eps / C``.
    sample_weight : array_like or None
        (B,) weights of the rows, finite and >= 0: the loss is ``sum_i w_i l_i / sum_i w_i``
        with l_i row i's mean loss.

    Returns
    -------
    loss : float
        The mean loss.
    grad : ndarray or None
        d loss / d logits, of logits's shape; None without compute_grad.
    """
    z = np.asarray(logits)
    if z.ndim != 2:
        raise ValueError(f"logits must be (B, C), got shape {z.shape}")
    if weight is not None or label_smoothing or sample_weight is not None:
        q, r = _xent_weights(z, target, weight, label_smoothing, sample_weight)
        shifted = z - z.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        sum_e = e.sum(axis=1, keepdims=True)
        q_sum = q.sum(axis=1, keepdims=True)
        per_row = q_sum * np.log(sum_e) - (np.where(q != 0, q * shifted, 0)).sum(axis=1, keepdims=True)
        loss = float(r @ per_row[:, 0])
        if not compute_grad:
            return loss, None
        return loss, _into(grad_out, ((e / sum_e * q_sum - q) * r[:, None]).astype(z.dtype))
    t = _targets_as_matrix(z, target)
    batch = z.shape[0]
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    sum_e = e.sum(axis=1, keepdims=True)
    t_sum = t.sum(axis=1, keepdims=True)
    # -t . log_softmax(z) = sum(t) * log(sum e) - t . shifted  (the row max cancels)
    per_row = t_sum * np.log(sum_e) - (t * shifted).sum(axis=1, keepdims=True)
    loss = float(np.mean(per_row))
    if not compute_grad:
        return loss, None
    grad = e / sum_e * t_sum - t
    if np.asarray(target).ndim == 1:   # labels: p_y − 1 = −Σ_{j≠y} e_j / Σ e, which does not cancel
        rows = np.arange(batch)
        grad[rows, np.asarray(target)] = -(e * (1 - t)).sum(axis=1) / sum_e[:, 0]
    return loss, _into(grad_out, grad / batch)


def _row_weighted(values, grads, sample_weight, compute_grad):
    """(sum_i s_i mean_j values_ij / sum s, grads_ij s_i / (k sum s)): the weighted mean over
    rows (axis 0) of elementwise values (B, k...) and their gradients (B, ...)."""
    s = np.asarray(sample_weight, np.float64)
    v = values.reshape(s.shape[0], -1).astype(np.float64)
    c = s / (v.shape[1] * s.sum())
    loss = float(c @ v.sum(axis=1))
    if not compute_grad:
        return loss, None
    return loss, (grads.reshape(s.shape[0], -1) * c[:, None]).reshape(grads.shape).astype(grads.dtype)


def sigmoid_bce(logits, target, *, grad_out=None, compute_grad=True, sample_weight=None):
    """Mean BCE on logits, max(z,0) - z*y + log1p(exp(-abs(z))); grad = (sigmoid(z) - y) / n.

    Parameters
    ----------
    logits : ndarray
        Logits, any shape with the rows on axis 0.
    target : array_like
        Probabilities in [0, 1], of logits' shape (any real dtype, cast to the logits').
    grad_out : ndarray or None
        Buffer for the gradient, of logits's shape (may be logits itself); allocated when None.
    compute_grad : bool
        False skips the gradient (None is returned for it).
    sample_weight : array_like or None
        (B,) weights of the rows, finite and >= 0: the loss is ``sum_i w_i l_i / sum_i w_i``
        with l_i row i's mean loss.

    Returns
    -------
    loss : float
        The mean loss.
    grad : ndarray or None
        d loss / d logits, of logits's shape; None without compute_grad.
    """
    z = np.asarray(logits)
    y = np.asarray(target).astype(z.dtype, copy=False)
    if y.shape != z.shape:
        raise ValueError(f"target of shape {y.shape} does not match logits {z.shape}")
    if sample_weight is not None:
        loss, g = _row_weighted(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))),
                                _sigmoid(z) - y, sample_weight, compute_grad)
        return loss, None if g is None else _into(grad_out, g)
    loss = float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))
    if not compute_grad:
        return loss, None
    return loss, _into(grad_out, (_sigmoid(z) - y) / z.size)


def mse(pred, target, *, grad_out=None, compute_grad=True, sample_weight=None):
    """loss = mean((pred - target)**2); grad = 2 * (pred - target) / n.

    Parameters
    ----------
    pred : ndarray
        (B, ...) predictions, any shape with the rows on axis 0.
    target : array_like
        The targets, of pred's shape (any real dtype, cast to pred's).
    grad_out : ndarray or None
        Buffer for the gradient, of pred's shape (may be pred itself); allocated when None.
    compute_grad : bool
        False skips the gradient (None is returned for it).
    sample_weight : array_like or None
        (B,) weights of the rows, finite and >= 0: the loss is ``sum_i w_i l_i / sum_i w_i``
        with l_i row i's mean loss.

    Returns
    -------
    loss : float
        The mean loss.
    grad : ndarray or None
        d loss / d pred, of pred's shape; None without compute_grad.
    """
    pred = np.asarray(pred)
    diff = pred - np.asarray(target).astype(pred.dtype, copy=False)
    if sample_weight is not None:
        loss, g = _row_weighted(diff.astype(np.float64) ** 2, 2 * diff, sample_weight, compute_grad)
        return loss, None if g is None else _into(grad_out, g)
    loss = float(np.mean(diff * diff))
    if not compute_grad:
        return loss, None
    return loss, _into(grad_out, 2 * diff / diff.size)


def gaussian_nll(pred, target, *, grad_out=None, compute_grad=True, sample_weight=None):
    """pred = [mu, s = log sigma^2] (B, 2k), target (B, k): loss = mean(s/2 + (t - mu)^2 e^-s / 2).

    The Gaussian negative log-likelihood without its constant log(2 pi)/2 (torch's
    GaussianNLLLoss with full=False, var = e^s); grad = [-(t - mu) e^-s, (1 - (t - mu)^2 e^-s)/2] / n.

    Parameters
    ----------
    pred : ndarray
        (B, 2k): the means and the log-variances ``[mu, log sigma^2]``.
    target : array_like
        (B, k) targets (any real dtype, cast to pred's).
    grad_out : ndarray or None
        Buffer for the gradient, of pred's shape (may be pred itself); allocated when None.
    compute_grad : bool
        False skips the gradient (None is returned for it).
    sample_weight : array_like or None
        (B,) weights of the rows, finite and >= 0: the loss is ``sum_i w_i l_i / sum_i w_i``
        with l_i row i's mean loss.

    Returns
    -------
    loss : float
        The mean loss.
    grad : ndarray or None
        d loss / d pred, of pred's shape; None without compute_grad.
    """
    z = np.asarray(pred)
    k = z.shape[1] // 2
    mu, s = z[:, :k], z[:, k:]
    d = np.asarray(target).astype(z.dtype, copy=False) - mu
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.where(d == 0, 0, d * np.exp(-0.5 * s))   # (t - mu) / sigma, sigma^2 never formed
        if sample_weight is not None:
            grad = np.concatenate([np.where(r == 0, 0, -r * np.exp(-0.5 * s)), 0.5 * (1 - r * r)],
                                  axis=1).astype(z.dtype, copy=False)
            loss, g = _row_weighted(0.5 * s.astype(np.float64) + 0.5 * r.astype(np.float64) ** 2,
                                    grad, sample_weight, compute_grad)
            return loss, None if g is None else _into(grad_out, g)
        loss = float(np.mean(0.5 * s.astype(np.float64) + 0.5 * r.astype(np.float64) ** 2))
        if not compute_grad:
            return loss, None
        n = d.size
        grad = np.concatenate([np.where(r == 0, 0, -r * np.exp(-0.5 * s)) / n,
                               0.5 * (1 - r * r) / n], axis=1).astype(z.dtype, copy=False)
    return loss, _into(grad_out, grad)


def _pointwise(name, pred, target, param):
    """(values, first derivatives, second derivatives) of a pointwise loss at d = pred - target."""
    p = np.asarray(pred)
    d = p - np.asarray(target).astype(p.dtype, copy=False)
    a = np.abs(d)
    if name == "l1_loss" or (name == "smooth_l1_loss" and param == 0):  # torch: beta = 0 is L1
        return a, np.sign(d), np.zeros_like(d)
    inside = a < param
    if name == "huber_loss":
        return (np.where(inside, 0.5 * d * d, param * (a - 0.5 * param)),
                np.where(inside, d, param * np.sign(d)), inside.astype(d.dtype))
    return (np.where(inside, 0.5 * d * d / param, a - 0.5 * param),
            np.where(inside, d / param, np.sign(d)), inside / d.dtype.type(param))


def _pointwise_loss(name, pred, target, grad_out, compute_grad, sample_weight, param):
    v, g, _ = _pointwise(name, pred, target, param)
    s = np.ones(v.shape[0] if v.ndim else 1) if sample_weight is None else sample_weight
    loss, g = _row_weighted(v, g, s, compute_grad)
    return loss, None if g is None else _into(grad_out, g)


def l1_loss(pred, target, *, grad_out=None, compute_grad=True, sample_weight=None):
    """loss = mean(abs(pred - target)) (torch's L1Loss); grad = sign(pred - target) / n.

    Parameters
    ----------
    pred : ndarray
        (B, ...) predictions, any shape with the rows on axis 0.
    target : array_like
        The targets, of pred's shape (any real dtype, cast to pred's).
    grad_out : ndarray or None
        Buffer for the gradient, of pred's shape (may be pred itself); allocated when None.
    compute_grad : bool
        False skips the gradient (None is returned for it).
    sample_weight : array_like or None
        (B,) weights of the rows, finite and >= 0: the loss is ``sum_i w_i l_i / sum_i w_i``
        with l_i row i's mean loss.

    Returns
    -------
    loss : float
        The mean loss.
    grad : ndarray or None
        d loss / d pred, of pred's shape; None without compute_grad.
    """
    return _pointwise_loss("l1_loss", pred, target, grad_out, compute_grad, sample_weight, 0)


def huber_loss(pred, target, *, grad_out=None, compute_grad=True, sample_weight=None, delta=1.0):
    """torch's HuberLoss: mean of d^2/2 where abs(d) < delta, delta (abs(d) - delta/2) elsewhere.

    Parameters
    ----------
    pred : ndarray
        (B, ...) predictions, any shape with the rows on axis 0.
    target : array_like
        The targets, of pred's shape (any real dtype, cast to pred's).
    grad_out : ndarray or None
        Buffer for the gradient, of pred's shape (may be pred itself); allocated when None.
    compute_grad : bool
        False skips the gradient (None is returned for it).
    sample_weight : array_like or None
        (B,) weights of the rows, finite and >= 0: the loss is ``sum_i w_i l_i / sum_i w_i``
        with l_i row i's mean loss.
    delta : float
        Where abs(pred - target) turns from quadratic to linear; > 0.

    Returns
    -------
    loss : float
        The mean loss.
    grad : ndarray or None
        d loss / d pred, of pred's shape; None without compute_grad.
    """
    return _pointwise_loss("huber_loss", pred, target, grad_out, compute_grad, sample_weight, delta)


def smooth_l1_loss(pred, target, *, grad_out=None, compute_grad=True, sample_weight=None, beta=1.0):
    """torch's SmoothL1Loss: mean of d^2/(2 beta) where abs(d) < beta, abs(d) - beta/2 elsewhere.

    Parameters
    ----------
    pred : ndarray
        (B, ...) predictions, any shape with the rows on axis 0.
    target : array_like
        The targets, of pred's shape (any real dtype, cast to pred's).
    grad_out : ndarray or None
        Buffer for the gradient, of pred's shape (may be pred itself); allocated when None.
    compute_grad : bool
        False skips the gradient (None is returned for it).
    sample_weight : array_like or None
        (B,) weights of the rows, finite and >= 0: the loss is ``sum_i w_i l_i / sum_i w_i``
        with l_i row i's mean loss.
    beta : float
        Where abs(pred - target) turns from quadratic to linear; >= 0 (0 is L1).

    Returns
    -------
    loss : float
        The mean loss.
    grad : ndarray or None
        d loss / d pred, of pred's shape; None without compute_grad.
    """
    return _pointwise_loss("smooth_l1_loss", pred, target, grad_out, compute_grad, sample_weight, beta)


# --------------------------------------------------------------------------- graph merge nodes

def add_forward(inputs, *, out=None):
    """y = sum of the inputs (one shape).

    Parameters
    ----------
    inputs : list of ndarray
        The summands, of one shape and dtype.
    out : ndarray or None
        Buffer for the result, of the inputs' shape (may be exactly inputs[0]); allocated when
        None.

    Returns
    -------
    out : ndarray
        The elementwise sum.
    """
    y = np.asarray(inputs[0]).copy()
    for x in inputs[1:]:
        y += x
    return _into(out, y)


def add_backward(grad, *, out=None, accumulate=False):
    """The gradient of each summand of a sum: grad itself (added into ``out`` with accumulate).

    Parameters
    ----------
    grad : ndarray
        The gradient of the sum, any shape.
    out : ndarray or None
        Buffer for the result, of grad's shape; allocated when None.
    accumulate : bool
        Add grad into out instead of overwriting it.

    Returns
    -------
    out : ndarray
        Each summand's gradient (grad, or out + grad).
    """
    return _into(out, np.array(grad, copy=True), accumulate)


def mul_forward(a, b, *, out=None):
    """y = a * b elementwise.

    Parameters
    ----------
    a : ndarray
        Any shape.
    b : ndarray
        Of a's shape.
    out : ndarray or None
        Buffer for the result, of a's shape (may be exactly a or b); allocated when None.

    Returns
    -------
    out : ndarray
        ``a b`` elementwise.
    """
    return _into(out, np.asarray(a) * np.asarray(b))


def mul_backward(grad, a, b, *, grad_a=None, grad_b=None, need_a=True, need_b=True,
                 accumulate_a=False, accumulate_b=False):
    """(grad * b, grad * a), each written or added into its buffer when given.

    Parameters
    ----------
    grad : ndarray
        The gradient of the product, any shape.
    a : ndarray
        The forward's first factor, of grad's shape.
    b : ndarray
        The forward's second factor, of grad's shape.
    grad_a : ndarray or None
        Buffer for grad_a; allocated when None.
    grad_b : ndarray or None
        Buffer for grad_b (may be exactly grad_a: both are added into it); allocated when None.
    need_a : bool
        Compute grad_a (else None is returned for it).
    need_b : bool
        Compute grad_b (else None is returned for it).
    accumulate_a : bool
        Add into grad_a instead of overwriting it.
    accumulate_b : bool
        Add into grad_b instead of overwriting it.

    Returns
    -------
    grad_a : ndarray or None
        ``grad b``; None without need_a.
    grad_b : ndarray or None
        ``grad a``; None without need_b.
    """
    ga = _into(grad_a, grad * b, accumulate_a) if need_a else None
    if need_b and grad_b is not None and grad_b is grad_a:
        return ga, _into(ga, grad * a, True)
    gb = _into(grad_b, grad * a, accumulate_b) if need_b else None
    return ga, gb


def concat_forward(inputs, *, out=None):
    """y = the inputs side by side along the features.

    Parameters
    ----------
    inputs : list of ndarray
        (B, n_i) arrays of one dtype.
    out : ndarray or None
        Buffer for the result, (B, sum n_i); allocated when None.

    Returns
    -------
    out : ndarray
        (B, sum n_i): the inputs side by side.
    """
    return _into(out, np.concatenate(inputs, axis=1))


def concat_backward(grad, widths, *, outs=None, needed=None, accumulate=False):
    """The column blocks of grad, one per input of the given widths.

    Parameters
    ----------
    grad : ndarray
        (B, sum widths) gradient of the concatenation.
    widths : list of int
        The inputs' widths n_i, in order.
    outs : list or None
        One (B, widths[i]) buffer or None (allocated) per input; None: all allocated.
    needed : list of bool or None
        One flag per input (False: skipped, None returned); None: all needed.
    accumulate : bool or list of bool
        Add into the buffers instead of overwriting them; one flag for all or one per input.

    Returns
    -------
    grads : list
        Per input, the (B, widths[i]) column block of grad, or None.
    """
    n = len(widths)
    outs = [None] * n if outs is None else outs
    needed = [True] * n if needed is None else needed
    acc = accumulate if isinstance(accumulate, (list, tuple)) else [accumulate] * n
    result, offset = [], 0
    for i, w in enumerate(widths):
        block = grad[:, offset:offset + w]
        result.append(_into(outs[i], block.copy(), acc[i]) if needed[i] else None)
        offset += w
    return result


# --------------------------------------------------------------------------- low-rank dense layer

def low_rank_forward(x, u, v, bias=None):
    """y = x (V U)^T + b with U (rank, in), V (out, rank): W = V U of rank <= rank.

    Parameters
    ----------
    x : ndarray
        (B, in) inputs.
    u : ndarray
        (rank, in) the first factor U.
    v : ndarray
        (out, rank) the second factor V.
    bias : ndarray or None
        (out,) biases, or None for none.

    Returns
    -------
    y : ndarray
        (B, out): ``x (V U)^T + bias``.
    """
    y = (x @ u.T) @ v.T
    return y if bias is None else y + bias


def low_rank_backward(grad_out, x, u, v, bias=True):
    """Returns (grad_x, grad_u, grad_v, grad_bias) of low_rank_forward.

    Parameters
    ----------
    grad_out : ndarray
        (B, out) gradient of the output.
    x : ndarray
        (B, in) the forward's inputs.
    u : ndarray
        (rank, in) the first factor U.
    v : ndarray
        (out, rank) the second factor V.
    bias : bool
        Compute grad_bias (else None is returned for it).

    Returns
    -------
    grad_x : ndarray
        (B, in).
    grad_u : ndarray
        (rank, in).
    grad_v : ndarray
        (out, rank).
    grad_bias : ndarray or None
        (out,); None without bias.
    """
    h = x @ u.T
    gh = grad_out @ v
    return gh @ u, gh.T @ x, grad_out.T @ h, grad_out.sum(axis=0) if bias else None


# --------------------------------------------------------------------------- computation graphs

def graph_forward(nodes, inputs):
    """Evaluates a computation graph (algorithm 6.1 of *Deep Learning*).

    nodes : dicts in topological order, each {"name", "op", "inputs": [names]} with op
    "linear" (and "weight", "bias" or None), "add", "concat", "mul", or an activation name
    (and optional "params", its keyword arguments); inputs : {name: array}.
    Returns {name: value} for the inputs and every node.

    Parameters
    ----------
    nodes : list of dict
        The nodes in topological order (see above).
    inputs : dict
        {name: array} of the graph's inputs.

    Returns
    -------
    values : dict
        {name: array} of the inputs and every node's value.
    """
    values = dict(inputs)
    for node in nodes:
        xs = [values[name] for name in node["inputs"]]
        op = node["op"]
        if op == "linear":
            y = xs[0] @ node["weight"].T
            if node.get("bias") is not None:
                y = y + node["bias"]
        elif op == "add":
            y = add_forward(xs)
        elif op == "concat":
            y = concat_forward(xs)
        elif op == "mul":
            y = mul_forward(xs[0], xs[1])
        else:
            y = activation_forward(xs[0], op, **node.get("params", {}))
        values[node["name"]] = y
    return values


def graph_backward(nodes, values, output_grads):
    """Back-propagation through graph_forward's graph (algorithm 6.2): in reverse order, the
    gradient of a node is the sum over its consumers (the grad table).

    output_grads : {name: dJ/d value}. Returns (grads, param_grads): grads {name: dJ/d value}
    for every node reached (inputs included), param_grads {key: (grad_weight, grad_bias)} for
    the linear nodes, summed over the nodes sharing a "key" (default: the node's name).

    Parameters
    ----------
    nodes : list of dict
        graph_forward's nodes.
    values : dict
        graph_forward's values.
    output_grads : dict
        {name: dJ/d value} of the outputs.

    Returns
    -------
    grads : dict
        {name: dJ/d value} of every node reached, inputs included.
    param_grads : dict
        {key: (grad_weight, grad_bias)} of the linear nodes, summed over the nodes sharing a
        key.
    """
    table = {name: np.array(g, copy=True) for name, g in output_grads.items()}
    param_grads = {}

    def contribute(name, g):
        table[name] = table[name] + g if name in table else g

    for node in reversed(nodes):
        g = table.get(node["name"])
        if g is None:
            continue
        xs = [values[name] for name in node["inputs"]]
        op = node["op"]
        if op == "linear":
            gw = g.T @ xs[0]
            gb = g.sum(axis=0) if node.get("bias") is not None else None
            key = node.get("key", node["name"])
            if key in param_grads:
                old_w, old_b = param_grads[key]
                gw, gb = old_w + gw, None if gb is None else old_b + gb
            param_grads[key] = (gw, gb)
            contribute(node["inputs"][0], g @ node["weight"])
        elif op == "add":
            for name in node["inputs"]:
                contribute(name, g)
        elif op == "concat":
            for name, gx in zip(node["inputs"], concat_backward(g, [x.shape[1] for x in xs])):
                contribute(name, gx)
        elif op == "mul":
            ga, gb = mul_backward(g, xs[0], xs[1])
            contribute(node["inputs"][0], ga)
            contribute(node["inputs"][1], gb)
        else:
            contribute(node["inputs"][0], activation_backward(
                g, op, x=xs[0], y=values[node["name"]], **node.get("params", {})))
    return table, param_grads


def softmax_cross_entropy_hvp(logits, target, v, *, out=None, weight=None, label_smoothing=0.0,
                              sample_weight=None):
    """(d^2 J / dz^2) v = sum_j t_ij (p * v - p (p . v)) / B row-wise, p = softmax(z)
    (sum_j q_ij s_i / D in place of sum_j t_ij / B with the options, see _xent_weights).

    Parameters
    ----------
    logits : ndarray
        (B, C) logits.
    target : array_like
        (B,) integer labels in [0, C), or (B, C) soft targets.
    v : ndarray
        The direction, of logits's shape.
    out : ndarray or None
        Buffer for the result, (B, C) (must not overlap logits or v); allocated when None.
    weight : array_like or None
        (C,) class weights, finite and >= 0 (torch's CrossEntropyLoss weight); None: all 1.
    label_smoothing : float
        In [0, 1]: the targets become ``(1 - eps) t + eps / C``.
    sample_weight : array_like or None
        (B,) weights of the rows, finite and >= 0: the loss is ``sum_i w_i l_i / sum_i w_i``
        with l_i row i's mean loss.

    Returns
    -------
    out : ndarray
        The Hessian-vector product ``(d^2 loss / d logits^2) v``, of logits's shape.
    """
    z, v = np.asarray(logits), np.asarray(v)
    q, r = _xent_weights(z, target, weight, label_smoothing, sample_weight)
    p = softmax(z)
    pv = (p * v).sum(axis=1, keepdims=True)
    return _into(out, (q.sum(axis=1) * r)[:, None] * p * (v - pv))


def _row_scaled(h, v, sample_weight):
    """h * v scaled by s_i / (k sum s) per row (1 / n without weights)."""
    v = np.asarray(v)
    s = np.ones(v.shape[0] if v.ndim else 1) if sample_weight is None else np.asarray(sample_weight, np.float64)
    c = s / (v.size // s.shape[0] * s.sum())
    return ((h * v).reshape(s.shape[0], -1) * c[:, None]).reshape(v.shape).astype(v.dtype)


def sigmoid_bce_hvp(logits, target, v, *, out=None, sample_weight=None):
    """(d^2 J / dz^2) v = sigmoid(z) (1 - sigmoid(z)) v / n (target does not enter).

    Parameters
    ----------
    logits : ndarray
        Logits, any shape with the rows on axis 0.
    target : array_like
        Of logits' shape; only checked (the Hessian does not depend on it).
    v : ndarray
        The direction, of logits's shape.
    out : ndarray or None
        Buffer for the result, of logits's shape (may be v itself); allocated when None.
    sample_weight : array_like or None
        (B,) weights of the rows, finite and >= 0: the loss is ``sum_i w_i l_i / sum_i w_i``
        with l_i row i's mean loss.

    Returns
    -------
    out : ndarray
        The Hessian-vector product ``(d^2 loss / d logits^2) v``, of logits's shape.
    """
    s = _sigmoid(np.asarray(logits))
    return _into(out, _row_scaled(s * (1 - s), v, sample_weight))


def mse_hvp(pred, target, v, *, out=None, sample_weight=None):
    """(d^2 J / dp^2) v = 2 v / n.

    Parameters
    ----------
    pred : ndarray
        (B, ...) predictions, any shape with the rows on axis 0.
    target : array_like
        Of pred's shape; only checked (the Hessian does not depend on it).
    v : ndarray
        The direction, of pred's shape.
    out : ndarray or None
        Buffer for the result, of pred's shape (may be v itself); allocated when None.
    sample_weight : array_like or None
        (B,) weights of the rows, finite and >= 0: the loss is ``sum_i w_i l_i / sum_i w_i``
        with l_i row i's mean loss.

    Returns
    -------
    out : ndarray
        The Hessian-vector product ``(d^2 loss / d pred^2) v``, of pred's shape.
    """
    return _into(out, _row_scaled(2, v, sample_weight))


def l1_loss_hvp(pred, target, v, *, out=None, sample_weight=None):
    """(d^2 J / dp^2) v = 0.

    Parameters
    ----------
    pred : ndarray
        (B, ...) predictions, any shape with the rows on axis 0.
    target : array_like
        Of pred's shape; only checked (the Hessian does not depend on it).
    v : ndarray
        The direction, of pred's shape.
    out : ndarray or None
        Buffer for the result, of pred's shape (may be v itself); allocated when None.
    sample_weight : array_like or None
        (B,) weights of the rows, finite and >= 0: the loss is ``sum_i w_i l_i / sum_i w_i``
        with l_i row i's mean loss.

    Returns
    -------
    out : ndarray
        The Hessian-vector product ``(d^2 loss / d pred^2) v``, of pred's shape.
    """
    return _into(out, _row_scaled(0, v, sample_weight))


def huber_loss_hvp(pred, target, v, *, out=None, sample_weight=None, delta=1.0):
    """(d^2 J / dp^2) v = v / n where abs(pred - target) < delta, else 0.

    Parameters
    ----------
    pred : ndarray
        (B, ...) predictions, any shape with the rows on axis 0.
    target : array_like
        The targets, of pred's shape.
    v : ndarray
        The direction, of pred's shape.
    out : ndarray or None
        Buffer for the result, of pred's shape (may be v itself); allocated when None.
    sample_weight : array_like or None
        (B,) weights of the rows, finite and >= 0: the loss is ``sum_i w_i l_i / sum_i w_i``
        with l_i row i's mean loss.
    delta : float
        Where abs(pred - target) turns from quadratic to linear; > 0.

    Returns
    -------
    out : ndarray
        The Hessian-vector product ``(d^2 loss / d pred^2) v``, of pred's shape.
    """
    return _into(out, _row_scaled(_pointwise("huber_loss", pred, target, delta)[2], v, sample_weight))


def smooth_l1_loss_hvp(pred, target, v, *, out=None, sample_weight=None, beta=1.0):
    """(d^2 J / dp^2) v = v / (beta n) where abs(pred - target) < beta, else 0.

    Parameters
    ----------
    pred : ndarray
        (B, ...) predictions, any shape with the rows on axis 0.
    target : array_like
        The targets, of pred's shape.
    v : ndarray
        The direction, of pred's shape.
    out : ndarray or None
        Buffer for the result, of pred's shape (may be v itself); allocated when None.
    sample_weight : array_like or None
        (B,) weights of the rows, finite and >= 0: the loss is ``sum_i w_i l_i / sum_i w_i``
        with l_i row i's mean loss.
    beta : float
        Where abs(pred - target) turns from quadratic to linear; >= 0 (0 is L1).

    Returns
    -------
    out : ndarray
        The Hessian-vector product ``(d^2 loss / d pred^2) v``, of pred's shape.
    """
    return _into(out, _row_scaled(_pointwise("smooth_l1_loss", pred, target, beta)[2], v, sample_weight))


# --------------------------------------------------------------------------- optimisers

def sgd_step(param, grad, *, lr, momentum_buffer=None, momentum=0.0, dampening=0.0,
             nesterov=False, weight_decay=0.0, first_step=False):
    """One in-place step of torch.optim.SGD (momentum, dampening, Nesterov, weight decay).

    Parameters
    ----------
    param : ndarray
        The parameters, updated in place.
    grad : ndarray
        The gradient, of param's shape.
    lr : float
        The learning rate, >= 0.
    momentum_buffer : ndarray or None
        The momentum state, of param's shape, updated in place; needed when momentum != 0.
    momentum : float
        The momentum factor, >= 0.
    dampening : float
        The dampening of the momentum.
    nesterov : bool
        Nesterov momentum (needs momentum > 0 and dampening = 0).
    weight_decay : float
        L2 penalty >= 0 (``grad + weight_decay param``).
    first_step : bool
        The buffer's first step: ``buf = g``, as torch starts it.
    """
    g = grad + weight_decay * param if weight_decay else grad
    if momentum:
        if momentum_buffer is None:
            raise ValueError("sgd_step with momentum needs momentum_buffer")
        buf = momentum_buffer
        if first_step:
            buf[...] = g
        else:
            buf *= momentum
            buf += (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    param -= lr * g


def _adam_moments(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, weight_decay,
                  decoupled):
    """Adam's weight decay and moment updates, in place (shared with amsgrad_step)."""
    if step < 1:
        raise ValueError(f"step is 1-based, got {step}")
    g = grad
    if weight_decay:
        if decoupled:
            param *= 1 - lr * weight_decay
        else:
            g = grad + weight_decay * param
    exp_avg *= beta1
    exp_avg += (1 - beta1) * g
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * g * g


def adam_step(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, decoupled=False):
    """One in-place step of torch.optim.Adam (AdamW if ``decoupled``); ``step`` counts from 1.

    Parameters
    ----------
    param : ndarray
        The parameters, updated in place.
    grad : ndarray
        The gradient, of param's shape.
    exp_avg : ndarray
        The first moment, of param's shape, updated in place.
    exp_avg_sq : ndarray
        The second moment, of param's shape, updated in place.
    step : int
        This update's 1-based count (for the bias corrections).
    lr : float
        The learning rate, >= 0.
    beta1 : float
        The first moment's decay, in [0, 1).
    beta2 : float
        The second moment's decay, in [0, 1).
    eps : float
        Added to the denominator, >= 0.
    weight_decay : float
        Weight decay >= 0: L2 (Adam) or decoupled (AdamW).
    decoupled : bool
        AdamW's decoupled weight decay (``param -= lr weight_decay param``).
    """
    _adam_moments(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, weight_decay, decoupled)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    denom = np.sqrt(exp_avg_sq) / math.sqrt(bias_correction2) + eps
    param -= (lr / bias_correction1) * exp_avg / denom


def amsgrad_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *, step, lr=1e-3, beta1=0.9,
                 beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
    """adam_step with amsgrad=True: the denominator uses the running maximum of exp_avg_sq.

    Parameters
    ----------
    param : ndarray
        The parameters, updated in place.
    grad : ndarray
        The gradient, of param's shape.
    exp_avg : ndarray
        The first moment, of param's shape, updated in place.
    exp_avg_sq : ndarray
        The second moment, of param's shape, updated in place.
    max_exp_avg_sq : ndarray
        The running maximum of exp_avg_sq, of param's shape, updated in place.
    step : int
        This update's 1-based count (for the bias corrections).
    lr : float
        The learning rate, >= 0.
    beta1 : float
        The first moment's decay, in [0, 1).
    beta2 : float
        The second moment's decay, in [0, 1).
    eps : float
        Added to the denominator, >= 0.
    weight_decay : float
        Weight decay >= 0: L2 (Adam) or decoupled (AdamW).
    decoupled : bool
        AdamW's decoupled weight decay (``param -= lr weight_decay param``).
    """
    _adam_moments(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, weight_decay, decoupled)
    np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
    denom = np.sqrt(max_exp_avg_sq) / math.sqrt(1 - beta2 ** step) + eps
    param -= (lr / (1 - beta1 ** step)) * exp_avg / denom


def rmsprop_step(param, grad, square_avg, *, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, momentum_buffer=None, grad_avg=None):
    """One in-place step of torch.optim.RMSprop (centered when grad_avg is given).

    Parameters
    ----------
    param : ndarray
        The parameters, updated in place.
    grad : ndarray
        The gradient, of param's shape.
    square_avg : ndarray
        The running average of grad squared, of param's shape, updated in place.
    lr : float
        The learning rate, >= 0.
    alpha : float
        The smoothing constant, in [0, 1].
    eps : float
        Added to the denominator, >= 0.
    weight_decay : float
        L2 penalty >= 0 (``grad + weight_decay param``).
    momentum : float
        The momentum factor, >= 0.
    momentum_buffer : ndarray or None
        The momentum state, of param's shape, updated in place; needed when momentum > 0.
    grad_avg : ndarray or None
        The running average of grad, of param's shape, updated in place; given: the centered
        variant.
    """
    g = grad + weight_decay * param if weight_decay else grad
    square_avg *= alpha
    square_avg += (1 - alpha) * g * g
    if grad_avg is not None:
        grad_avg += (1 - alpha) * (g - grad_avg)
        avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = np.sqrt(square_avg) + eps
    if momentum > 0:
        if momentum_buffer is None:
            raise ValueError("rmsprop_step with momentum needs momentum_buffer")
        momentum_buffer *= momentum
        momentum_buffer += g / avg
        param -= lr * momentum_buffer
    else:
        param -= lr * (g / avg)


def adagrad_step(param, grad, state_sum, *, step, lr=1e-2, lr_decay=0.0, eps=1e-10,
                 weight_decay=0.0):
    """One in-place step of torch.optim.Adagrad; step counts from 1.

    Parameters
    ----------
    param : ndarray
        The parameters, updated in place.
    grad : ndarray
        The gradient, of param's shape.
    state_sum : ndarray
        The sum of grad squared, of param's shape, updated in place.
    step : int
        This update's 1-based count.
    lr : float
        The learning rate, >= 0.
    lr_decay : float
        The step size is ``lr / (1 + (step - 1) lr_decay)``; >= 0.
    eps : float
        Added to the denominator, >= 0.
    weight_decay : float
        L2 penalty >= 0 (``grad + weight_decay param``).
    """
    if step < 1:
        raise ValueError(f"step is 1-based, got {step}")
    g = grad + weight_decay * param if weight_decay else grad
    state_sum += g * g
    param -= (lr / (1 + (step - 1) * lr_decay)) * g / (np.sqrt(state_sum) + eps)


# ------------------------------------------------------------- MLP (Goodfellow 6.3 / 6.4)

def mlp_forward(x, weights, biases, activation="relu", **act_params):
    """Forward pass of an MLP (hidden layers use ``activation``, the last layer is linear).

    Returns ``(out, cache)``; ``weights[i]`` is (out_i, in_i) and ``biases`` may be None.

    Parameters
    ----------
    x : ndarray
        (B, in_0) inputs.
    weights : list of ndarray
        Layer i's (out_i, in_i) weights.
    biases : list or None
        Layer i's (out_i,) biases or None; None: no biases.
    activation : str
        The hidden layers' activation (the last layer is linear).
    **act_params
        The activation's keyword arguments (negative_slope, beta, threshold).

    Returns
    -------
    out : ndarray
        (B, out_last) outputs.
    cache : dict
        What mlp_backward needs: each layer's inputs, pre-activations, outputs.
    """
    n_layers = len(weights)
    if biases is None:
        biases = [None] * n_layers
    h = np.asarray(x)
    inputs, preacts = [], []
    for k, (w, b) in enumerate(zip(weights, biases)):
        inputs.append(h)
        a = h @ w.T if b is None else h @ w.T + b   # a(k) = b(k) + W(k) h(k-1)
        preacts.append(a)
        h = activation_forward(a, activation, **act_params) if k < n_layers - 1 else a
    cache = {"inputs": inputs, "preacts": preacts, "outputs": inputs[1:] + [h],
             "activation": activation, "act_params": dict(act_params),
             "has_bias": [b is not None for b in biases]}
    return h, cache


def mlp_backward(grad_out, cache, weights, **act_params):
    """Back-propagate ``grad_out`` (dJ/d out) through the MLP of ``mlp_forward``.

    Returns ``(grad_x, grad_weights, grad_biases)``; ``act_params`` default to those of the
    forward pass.

    Parameters
    ----------
    grad_out : ndarray
        (B, out_last) gradient of the output.
    cache : dict
        mlp_forward's cache.
    weights : list of ndarray
        The forward's weights.
    **act_params
        The activation's keyword arguments; default: the forward's.

    Returns
    -------
    grad_x : ndarray
        (B, in_0) the input's gradient.
    grad_weights : list of ndarray
        Each layer's weight gradient.
    grad_biases : list
        Each layer's bias gradient, None for a layer without bias.
    """
    params = {**cache["act_params"], **act_params}
    n_layers = len(weights)
    grad_weights, grad_biases = [None] * n_layers, [None] * n_layers
    g = np.asarray(grad_out)
    for k in reversed(range(n_layers)):
        if k < n_layers - 1:  # g <- g * f'(a(k)); the output layer is linear
            g = activation_backward(g, cache["activation"], x=cache["preacts"][k],
                                    y=cache["outputs"][k], **params)
        grad_weights[k] = g.T @ cache["inputs"][k]      # grad W(k) = g h(k-1)^T
        if cache["has_bias"][k]:
            grad_biases[k] = g.sum(axis=0)              # grad b(k) = g
        g = g @ weights[k]                              # g <- W(k)^T g
    return g, grad_weights, grad_biases


class NumpyMLPTrainer:
    """SGD-with-momentum training of a ReLU MLP with softmax cross-entropy, in careful NumPy.

    All activation, gradient and optimiser buffers are allocated once for ``batch_size``;
    ``step`` then works with ``out=`` arguments and in-place ufuncs.

    Parameters
    ----------
    sizes : list of int
        The layer widths, input first (at least two).
    batch_size : int
        The rows of every batch ``step`` takes.
    lr : float
        The learning rate.
    momentum : float
        The SGD momentum.
    dtype : numpy.dtype
        The dtype of the weights and buffers.
    seed : int
        Seed of the weights' initialization.
    """

    def __init__(self, sizes, batch_size, lr=0.01, momentum=0.9, dtype=np.float32, seed=0):
        """Create He-uniform weights, zero biases and every buffer for ``batch_size`` rows."""
        if len(sizes) < 2:
            raise ValueError("sizes needs at least an input and an output size")
        self.sizes = list(sizes)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.weights, self.biases = [], []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = math.sqrt(6.0 / fan_in)  # He (Kaiming) uniform for ReLU
            self.weights.append(rng.uniform(-bound, bound, (fan_out, fan_in)).astype(self.dtype))
            self.biases.append(np.zeros(fan_out, dtype=self.dtype))
        B = self.batch_size
        self._acts = [np.empty((B, n), self.dtype) for n in sizes[1:]]    # h(k); last = logits
        self._grads = [np.empty((B, n), self.dtype) for n in sizes[1:]]   # dJ/da(k)
        self._masks = [np.empty((B, n), bool) for n in sizes[1:-1]]       # h(k) <= 0
        self._grad_weights = [np.empty_like(w) for w in self.weights]
        self._grad_biases = [np.empty_like(b) for b in self.biases]
        self._buf_weights = [np.zeros_like(w) for w in self.weights]
        self._buf_biases = [np.zeros_like(b) for b in self.biases]
        self._row_max = np.empty((B, 1), self.dtype)
        self._row_sum = np.empty((B, 1), self.dtype)
        self._rows = np.arange(B)
        self._steps = 0

    def params(self):
        """The parameters as [W0, b0, W1, b1, ...] (the live arrays)."""
        return [p for wb in zip(self.weights, self.biases) for p in wb]

    def step(self, x, labels):
        """One forward / backward / SGD-momentum step on a batch; returns the mean loss."""
        x = np.asarray(x, dtype=self.dtype)
        labels = np.asarray(labels)
        if x.shape != (self.batch_size, self.sizes[0]) or labels.shape != (self.batch_size,):
            raise ValueError(f"expected x of shape {(self.batch_size, self.sizes[0])} and "
                             f"labels of shape {(self.batch_size,)}")
        if labels.min() < 0 or labels.max() >= self.sizes[-1]:
            raise ValueError(f"labels must lie in [0, {self.sizes[-1]})")
        n_layers = len(self.weights)

        # forward: h(k) = relu(h(k-1) @ W(k).T + b(k)), the last layer is linear
        h = x
        for k in range(n_layers):
            a = self._acts[k]
            np.matmul(h, self.weights[k].T, out=a)
            np.add(a, self.biases[k], out=a)
            if k < n_layers - 1:
                np.maximum(a, 0, out=a)
            h = a

        # softmax cross-entropy; g = dJ/dlogits = (softmax - onehot) / B
        logits, g = self._acts[-1], self._grads[-1]
        np.max(logits, axis=1, keepdims=True, out=self._row_max)
        np.subtract(logits, self._row_max, out=g)
        picked = g[self._rows, labels]                 # shifted logit of the true class
        np.exp(g, out=g)
        np.sum(g, axis=1, keepdims=True, out=self._row_sum)
        np.divide(g, self._row_sum, out=g)
        np.log(self._row_sum, out=self._row_sum)
        loss = float(self._row_sum.mean() - picked.mean())
        g[self._rows, labels] -= 1
        np.divide(g, self.batch_size, out=g)

        # backward, from the output to the first layer (no gradient wrt x)
        for k in reversed(range(n_layers)):
            g = self._grads[k]
            h_in = x if k == 0 else self._acts[k - 1]
            np.matmul(g.T, h_in, out=self._grad_weights[k])
            np.sum(g, axis=0, out=self._grad_biases[k])
            if k > 0:
                g_below = self._grads[k - 1]
                np.matmul(g, self.weights[k], out=g_below)
                # relu'(a) = (a > 0), read from h = relu(a): zero g where the unit was off
                inactive = np.less_equal(self._acts[k - 1], 0, out=self._masks[k - 1])
                np.copyto(g_below, 0, where=inactive)

        # SGD with momentum (torch semantics: the first step sets buf = g)
        first = self._steps == 0
        for p, grad, buf in zip(self.params(), self._all_grads(), self._all_bufs()):
            if self.momentum:
                if first:
                    np.copyto(buf, grad)
                else:
                    np.multiply(buf, self.momentum, out=buf)
                    np.add(buf, grad, out=buf)
                np.multiply(buf, self.lr, out=grad)      # grad is free now: reuse it
            else:
                np.multiply(grad, self.lr, out=grad)
            np.subtract(p, grad, out=p)
        self._steps += 1
        return loss

    def _all_grads(self):
        """Gradients in the order of ``params()``."""
        return [g for gg in zip(self._grad_weights, self._grad_biases) for g in gg]

    def _all_bufs(self):
        """Momentum buffers in the order of ``params()``."""
        return [b for bb in zip(self._buf_weights, self._buf_biases) for b in bb]


# --------------------------------------------------------------------------- Dropout, LayerNorm, BatchNorm1d

_M32 = np.uint64(0xFFFFFFFF)


def _philox_words(n, key, counter):
    """The n 32-bit words of csrc/dropout.c's stream: Philox4x32-10 over blocks counter,
    counter + 1, …; element i takes word k of block counter + 64·(i // 256) + l, where
    r = i % 256, k = r // 64, l = r % 64."""
    chunks = -(-n // 256)
    with np.errstate(over="ignore"):
        blocks = (np.uint64(counter) + np.arange(chunks * 64, dtype=np.uint64)).reshape(chunks, 64)
        c = [blocks & _M32, blocks >> np.uint64(32), np.zeros_like(blocks), np.zeros_like(blocks)]
        k0, k1 = np.uint64(int(key) & 0xFFFFFFFF), np.uint64(int(key) >> 32)
        for _ in range(10):
            p0, p1 = np.uint64(0xD2511F53) * c[0], np.uint64(0xCD9E8D57) * c[2]
            c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & _M32, (p0 >> np.uint64(32)) ^ c[3] ^ k1,
                 p0 & _M32]
            k0, k1 = (k0 + np.uint64(0x9E3779B9)) & _M32, (k1 + np.uint64(0xBB67AE85)) & _M32
    return np.stack(c, axis=1).reshape(-1)[:n]


def dropout_forward(x, p, key, counter, *, out=None, mask_out=None):
    """(x·mask/(1 − p), mask) with mask = word < (1 − p)·2³² of the Philox stream.

    Parameters
    ----------
    x : ndarray
        The inputs, any shape.
    p : float
        The drop probability, in [0, 1].
    key : int
        The Philox key of the random stream.
    counter : int
        The stream's first counter; a call uses ``64 ceil(x.size / 256)`` counter values.
    out : ndarray or None
        Buffer for the result, of x's shape (may be x itself); allocated when None.
    mask_out : ndarray or None
        uint8 buffer for the mask, of x's shape; allocated when None.

    Returns
    -------
    out : ndarray
        ``x / (1 - p)`` where kept, else 0.
    mask : ndarray
        uint8, of x's shape: 1 where kept.
    """
    x = np.asarray(x)
    if p == 1:
        mask = np.zeros(x.shape, np.uint8)
    else:
        t = min(int((1 - p) * 4294967296.0), 4294967295)
        mask = (_philox_words(x.size, key, counter) < t).astype(np.uint8).reshape(x.shape)
    scale = x.dtype.type(1) / x.dtype.type(1 - p) if p < 1 else 0
    y = np.where(mask == 1, x * scale, 0).astype(x.dtype)
    return _into(out, y), _into(mask_out, mask)


def dropout_backward(grad, mask, p, *, out=None):
    """grad·mask/(1 − p), the forward's mask.

    Parameters
    ----------
    grad : ndarray
        The gradient of the output, any shape.
    mask : ndarray
        The forward's uint8 mask, of grad's shape.
    p : float
        The forward's drop probability, in [0, 1].
    out : ndarray or None
        Buffer for the result, of grad's shape (may be grad itself); allocated when None.

    Returns
    -------
    out : ndarray
        ``grad / (1 - p)`` where kept, else 0.
    """
    grad = np.asarray(grad)
    scale = grad.dtype.type(1) / grad.dtype.type(1 - p) if p < 1 else 0
    return _into(out, np.where(np.asarray(mask) == 1, grad * scale, 0).astype(grad.dtype))


def _row_stats(x, eps):
    mean = x.mean(axis=1)
    return mean, 1 / np.sqrt(((x - mean[:, None]) ** 2).mean(axis=1) + eps)


def layernorm_forward(x, weight=None, bias=None, *, eps=1e-5, out=None, mean_out=None,
                      rstd_out=None):
    """((x − μ)·rstd·weight + bias per row, μ, rstd) with the biased variance.

    Parameters
    ----------
    x : ndarray
        (B, n) inputs, normalized over each row.
    weight : ndarray or None
        (n,) scale; None: 1.
    bias : ndarray or None
        (n,) shift; None: 0.
    eps : float
        Added to the variance, > 0.
    out : ndarray or None
        Buffer for the result, (B, n) (may be x itself); allocated when None.
    mean_out : ndarray or None
        (B,) buffer for the rows' means; allocated when None.
    rstd_out : ndarray or None
        (B,) buffer for the rows' ``1 / sqrt(var + eps)``; allocated when None.

    Returns
    -------
    out : ndarray
        (B, n): ``(x - mean) rstd weight + bias``.
    mean : ndarray
        (B,) the rows' means.
    rstd : ndarray
        (B,) the rows' ``1 / sqrt(var + eps)`` (biased variance).
    """
    x = np.asarray(x)
    mean, rstd = _row_stats(x, eps)
    y = (x - mean[:, None]) * rstd[:, None]
    y = y * (1 if weight is None else weight) + (0 if bias is None else bias)
    return _into(out, y), _into(mean_out, mean), _into(rstd_out, rstd)


def layernorm_backward(grad, x, mean, rstd, weight=None, *, input_grad=True, out=None,
                       grad_weight=None, grad_bias=None, accumulate=False):
    """(rstd (d − mean(d) − x̂ mean(d x̂)) with d = grad·weight, Σ grad x̂, Σ grad).

    Parameters
    ----------
    grad : ndarray
        (B, n) gradient of the output.
    x : ndarray
        (B, n) the forward's inputs.
    mean : ndarray
        (B,) the forward's row means.
    rstd : ndarray
        (B,) the forward's row ``1 / sqrt(var + eps)``.
    weight : ndarray or None
        (n,) scale; None: 1.
    input_grad : bool
        Compute the input's gradient (else None is returned for it).
    out : ndarray or None
        (B, n) buffer for the input's gradient (may be grad itself); allocated when None.
    grad_weight : ndarray or None
        (n,) buffer for weight's gradient; only written when given.
    grad_bias : ndarray or None
        (n,) buffer for bias's gradient; only written when given.
    accumulate : bool
        Add into grad_weight and grad_bias instead of overwriting them.

    Returns
    -------
    out : ndarray or None
        (B, n) the input's gradient; None without input_grad.
    grad_weight : ndarray or None
        (n,): the sum over the rows of ``grad xhat``; None when not given.
    grad_bias : ndarray or None
        (n,): the sum over the rows of grad; None when not given.
    """
    grad, x = np.asarray(grad), np.asarray(x)
    xh = (x - mean[:, None]) * rstd[:, None]
    d = grad * (1 if weight is None else weight)
    gx = rstd[:, None] * (d - d.mean(1, keepdims=True) - xh * (d * xh).mean(1, keepdims=True))
    gw = None if grad_weight is None else _into(grad_weight, (grad * xh).sum(0), accumulate)
    gb = None if grad_bias is None else _into(grad_bias, grad.sum(0), accumulate)
    return (_into(out, gx) if input_grad else None), gw, gb


def _layernorm_rxh(x, rx, eps):
    mean, rstd = _row_stats(x, eps)
    xh = (x - mean[:, None]) * rstd[:, None]
    if rx is None:
        return xh, rstd, np.zeros_like(x), np.zeros(x.shape[0], x.dtype)
    s = (xh * rx).mean(1)
    return xh, rstd, rstd[:, None] * (rx - rx.mean(1, keepdims=True) - xh * s[:, None]), s


def layernorm_rforward(x, rx, weight=None, bias=None, v_weight=None, v_bias=None, *, eps=1e-5,
                       out=None, rout=None):
    """(y, R{y} = R{x̂} weight + x̂ v_weight + v_bias).

    Parameters
    ----------
    x : ndarray
        (B, n) inputs.
    rx : ndarray or None
        (B, n) R{x}, the input's direction; None for a fixed input.
    weight : ndarray or None
        (n,) scale; None: 1.
    bias : ndarray or None
        (n,) shift; None: 0.
    v_weight : ndarray or None
        (n,) weight's direction; None: 0.
    v_bias : ndarray or None
        (n,) bias's direction; None: 0.
    eps : float
        Added to the variance, > 0.
    out : ndarray or None
        Buffer for the result, (B, n); allocated when None.
    rout : ndarray or None
        (B, n) buffer for R{y}; allocated when None.

    Returns
    -------
    out : ndarray
        (B, n) y, as layernorm_forward's.
    rout : ndarray
        (B, n) R{y}: ``R{xhat} weight + xhat v_weight + v_bias``.
    """
    x = np.asarray(x)
    xh, _, rxh, _ = _layernorm_rxh(x, rx, eps)
    w = 1 if weight is None else weight
    y = xh * w + (0 if bias is None else bias)
    ry = rxh * w + (0 if v_weight is None else xh * v_weight) + (0 if v_bias is None else v_bias)
    return _into(out, y), _into(rout, ry)


def layernorm_rbackward(grad, rgrad, x, rx=None, weight=None, v_weight=None, *, eps=1e-5,
                        input_grad=True, out=None, rout=None, hv_weight=None, hv_bias=None,
                        accumulate=False):
    """LayerNorm's R-backward: the derivative along (R{x}, v) of its backward (csrc/norm.c).

    Parameters
    ----------
    grad : ndarray or None
        (B, n) The gradient of the output; None (the Gauss-Newton pass) drops its terms.
    rgrad : ndarray
        (B, n) R{grad}, the gradient's directional derivative.
    x : ndarray
        (B, n) the forward's inputs.
    rx : ndarray or None
        (B, n) R{x}, the input's direction; None for a fixed input.
    weight : ndarray or None
        (n,) scale; None: 1.
    v_weight : ndarray or None
        (n,) weight's direction; None: 0.
    eps : float
        Added to the variance, > 0.
    input_grad : bool
        Compute the input's gradient (else None is returned for it).
    out : ndarray or None
        (B, n) buffer for the input's gradient (may be grad itself); allocated when None.
    rout : ndarray or None
        (B, n) buffer for R{input's gradient} (may be rgrad itself); allocated when None.
    hv_weight : ndarray or None
        (n,) buffer for R{weight's gradient}; only written when given.
    hv_bias : ndarray or None
        (n,) buffer for R{bias's gradient}; only written when given.
    accumulate : bool
        Add into hv_weight and hv_bias instead of overwriting them.

    Returns
    -------
    out : ndarray or None
        (B, n) the input's gradient; None when grad is None or without input_grad.
    rout : ndarray or None
        (B, n) R{input's gradient}; None without input_grad.
    hv_weight : ndarray or None
        (n,) R{weight's gradient}; None when not given.
    hv_bias : ndarray or None
        (n,) R{bias's gradient}: the sum over the rows of rgrad; None when not given.
    """
    x, rg = np.asarray(x), np.asarray(rgrad)
    g = np.zeros_like(rg) if grad is None else np.asarray(grad)
    xh, rstd, rxh, s = _layernorm_rxh(x, rx, eps)
    w = 1 if weight is None else weight
    d, rd = g * w, rg * w + (0 if v_weight is None else g * v_weight)
    m1, m2 = d.mean(1, keepdims=True), (d * xh).mean(1, keepdims=True)
    gx = rstd[:, None] * (d - m1 - xh * m2)
    rm2 = (rd * xh + d * rxh).mean(1, keepdims=True)
    rgx = -(rstd * s)[:, None] * gx + rstd[:, None] * (rd - rd.mean(1, keepdims=True) - rxh * m2 - xh * rm2)
    hw = None if hv_weight is None else _into(hv_weight, (rg * xh + g * rxh).sum(0), accumulate)
    hb = None if hv_bias is None else _into(hv_bias, rg.sum(0), accumulate)
    if not input_grad:
        return None, None, hw, hb
    return (None if grad is None else _into(out, gx)), _into(rout, rgx), hw, hb


def batchnorm_forward(x, weight=None, bias=None, running_mean=None, running_var=None, *,
                      batch_stats=True, eps=1e-5, momentum=0.1, out=None, mean_out=None,
                      rstd_out=None):
    """torch's batch_norm over the batch; moves the running statistics in place.

    Parameters
    ----------
    x : ndarray
        (B, C) inputs, normalized over the batch per feature.
    weight : ndarray or None
        (C,) scale; None: 1.
    bias : ndarray or None
        (C,) shift; None: 0.
    running_mean : ndarray or None
        (C,) running mean, updated in place with batch_stats; both running statistics or
        neither.
    running_var : ndarray or None
        (C,) running variance (unbiased), updated in place with batch_stats.
    batch_stats : bool
        Normalize by the batch's mean and biased variance and move the running statistics (B >=
        2); else normalize by the running statistics.
    eps : float
        Added to the variance, > 0.
    momentum : float
        ``running = (1 - momentum) running + momentum batch_statistic``.
    out : ndarray or None
        Buffer for the result, (B, C); allocated when None.
    mean_out : ndarray or None
        (C,) buffer for the mean used; allocated when None.
    rstd_out : ndarray or None
        (C,) buffer for the ``1 / sqrt(var + eps)`` used; allocated when None.

    Returns
    -------
    out : ndarray
        (B, C): ``(x - mean) rstd weight + bias``.
    mean : ndarray
        (C,) the mean used.
    rstd : ndarray
        (C,) the ``1 / sqrt(var + eps)`` used.
    """
    x = np.asarray(x)
    if batch_stats:
        mean, var = x.mean(0), x.var(0)
        if running_mean is not None:
            n = x.shape[0]
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * var * n / (n - 1)
    else:
        mean, var = np.array(running_mean), np.array(running_var)
    rstd = (1 / np.sqrt(var + eps)).astype(x.dtype)
    y = (x - mean) * (rstd * (1 if weight is None else weight)) + (0 if bias is None else bias)
    return _into(out, y), _into(mean_out, mean), _into(rstd_out, rstd)


def batchnorm_backward(grad, x, mean, rstd, weight=None, *, batch_stats=True, input_grad=True,
                       out=None, grad_weight=None, grad_bias=None, accumulate=False,
                       workspace=None):
    """(grad_input, Σ grad x̂, Σ grad) of batch_norm with the forward's statistics.

    Parameters
    ----------
    grad : ndarray
        (B, C) gradient of the output.
    x : ndarray
        (B, C) the forward's inputs.
    mean : ndarray
        (C,) the forward's mean (the statistics used).
    rstd : ndarray
        (C,) the forward's ``1 / sqrt(var + eps)``.
    weight : ndarray or None
        (C,) scale; None: 1.
    batch_stats : bool
        As the forward's: the statistics depend on x (True) or are fixed.
    input_grad : bool
        Compute the input's gradient (else None is returned for it).
    out : ndarray or None
        (B, C) buffer for the input's gradient (may be grad itself); allocated when None.
    grad_weight : ndarray or None
        (C,) buffer for weight's gradient; only written when given.
    grad_bias : ndarray or None
        (C,) buffer for bias's gradient; only written when given.
    accumulate : bool
        Add into grad_weight and grad_bias instead of overwriting them.
    workspace : ndarray or None
        Ignored here (the C kernel's (2C,) scratch buffer).

    Returns
    -------
    out : ndarray or None
        (B, C) the input's gradient; None without input_grad.
    grad_weight : ndarray or None
        (C,): the sum over the rows of ``grad xhat``; None when not given.
    grad_bias : ndarray or None
        (C,): the sum over the rows of grad; None when not given.
    """
    grad, x = np.asarray(grad), np.asarray(x)
    xh = (x - mean) * rstd
    sg, sgx = grad.sum(0), (grad * xh).sum(0)
    a = rstd * (1 if weight is None else weight)
    gx = a * (grad - sg / len(x) - xh * sgx / len(x)) if batch_stats else grad * a
    gw = None if grad_weight is None else _into(grad_weight, sgx, accumulate)
    gb = None if grad_bias is None else _into(grad_bias, sg, accumulate)
    return (_into(out, gx) if input_grad else None), gw, gb


def batchnorm_rforward(x, rx, mean, rstd, weight=None, bias=None, v_weight=None, v_bias=None, *,
                       out=None, rout=None):
    """(y, R{y} = R{x} rstd w + x̂ v_weight + v_bias) with fixed statistics.

    Parameters
    ----------
    x : ndarray
        (B, C) inputs.
    rx : ndarray or None
        (B, C) R{x}, the input's direction; None for a fixed input.
    mean : ndarray
        (C,) the fixed mean.
    rstd : ndarray
        (C,) the fixed ``1 / sqrt(var + eps)``.
    weight : ndarray or None
        (C,) scale; None: 1.
    bias : ndarray or None
        (C,) shift; None: 0.
    v_weight : ndarray or None
        (C,) weight's direction; None: 0.
    v_bias : ndarray or None
        (C,) bias's direction; None: 0.
    out : ndarray or None
        Buffer for the result, (B, C); allocated when None.
    rout : ndarray or None
        (B, C) buffer for R{y}; allocated when None.

    Returns
    -------
    out : ndarray
        (B, C) y, with the fixed statistics.
    rout : ndarray
        (B, C) R{y}: ``rx rstd weight + xhat v_weight + v_bias``.
    """
    x = np.asarray(x)
    xh, w = (x - mean) * rstd, 1 if weight is None else weight
    y = xh * w + (0 if bias is None else bias)
    ry = (0 if rx is None else rx * rstd * w) + (0 if v_weight is None else xh * v_weight) + \
        (0 if v_bias is None else v_bias)
    return _into(out, y), _into(rout, np.broadcast_to(ry, x.shape).astype(x.dtype))


def batchnorm_rbackward(grad, rgrad, x, rx, mean, rstd, weight=None, v_weight=None, *,
                        input_grad=True, out=None, rout=None, hv_weight=None, hv_bias=None,
                        accumulate=False):
    """BatchNorm's R-backward with fixed statistics (eval mode: an affine map per feature).

    Parameters
    ----------
    grad : ndarray or None
        (B, C) The gradient of the output; None (the Gauss-Newton pass) drops its terms.
    rgrad : ndarray
        (B, C) R{grad}, the gradient's directional derivative.
    x : ndarray
        (B, C) the forward's inputs.
    rx : ndarray or None
        (B, C) R{x}, the input's direction; None for a fixed input.
    mean : ndarray
        (C,) the fixed mean.
    rstd : ndarray
        (C,) the fixed ``1 / sqrt(var + eps)``.
    weight : ndarray or None
        (C,) scale; None: 1.
    v_weight : ndarray or None
        (C,) weight's direction; None: 0.
    input_grad : bool
        Compute the input's gradient (else None is returned for it).
    out : ndarray or None
        (B, C) buffer for the input's gradient (may be grad itself); allocated when None.
    rout : ndarray or None
        (B, C) buffer for R{input's gradient} (may be rgrad itself); allocated when None.
    hv_weight : ndarray or None
        (C,) buffer for R{weight's gradient}; only written when given.
    hv_bias : ndarray or None
        (C,) buffer for R{bias's gradient}; only written when given.
    accumulate : bool
        Add into hv_weight and hv_bias instead of overwriting them.

    Returns
    -------
    out : ndarray or None
        (B, C) the input's gradient; None when grad is None or without input_grad.
    rout : ndarray or None
        (B, C) R{input's gradient}; None without input_grad.
    hv_weight : ndarray or None
        (C,) R{weight's gradient}; None when not given.
    hv_bias : ndarray or None
        (C,) R{bias's gradient}: the sum over the rows of rgrad; None when not given.
    """
    x, rg = np.asarray(x), np.asarray(rgrad)
    g = np.zeros_like(rg) if grad is None else np.asarray(grad)
    xh, w = (x - mean) * rstd, 1 if weight is None else weight
    rgx = rg * rstd * w + (0 if v_weight is None else g * rstd * v_weight)
    hw = None if hv_weight is None else _into(
        hv_weight, (rg * xh + (0 if rx is None else g * rx * rstd)).sum(0), accumulate)
    hb = None if hv_bias is None else _into(hv_bias, rg.sum(0), accumulate)
    if not input_grad:
        return None, None, hw, hb
    return (None if grad is None else _into(out, g * rstd * w)), _into(rout, rgx), hw, hb


# --------------------------------------------------------------------------- DP-SGD's noise

def gaussian_noise(n, key, counter, offset=0, dtype=np.float64):
    """Standard normals offset … offset + n − 1 of csrc/dropout.c's gaussian_noise: chunk
    c = j // 256 takes the Philox words of blocks counter + 64c, …, and Box–Muller maps words
    r, r + 128 (r < 128) of a chunk to its normals r (ρ cos θ) and r + 128 (ρ sin θ), with
    u₁ = (w_r // 2 + ½)·2⁻³¹, θ = 2π((w_{r+128} // 2 + ½)·2⁻³¹ − ½), ρ = √(−2 log u₁)."""
    first, last = offset // 256, -(-(offset + n) // 256)
    w = _philox_words((last - first) * 256, key, int(counter) + 64 * first).reshape(-1, 2, 128)
    u = ((w >> np.uint64(1)).astype(np.float64) + 0.5) * 2.0 ** -31
    rho, theta = np.sqrt(-2 * np.log(u[:, 0])), 2 * np.pi * (u[:, 1] - 0.5)
    z = np.concatenate([rho * np.cos(theta), rho * np.sin(theta)], axis=1).reshape(-1)
    start = offset - 256 * first
    return z[start:start + n].astype(dtype)
