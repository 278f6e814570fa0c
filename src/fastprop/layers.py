"""Dropout, LayerNorm and BatchNorm1d: PyTorch's definitions, each pass one C kernel.

They keep the modules' protocol of fastprop.nn (``_forward``/``_backward`` on workspaces,
``_rforward``/``_rbackward`` for curvature) and depend on the mode (``train()``/``eval()``):
Dropout is the identity in eval mode, BatchNorm1d normalizes by its running statistics.
"""
from __future__ import annotations
import numpy as np

from . import _kernels
from .nn import Module, Parameter, as_dtype, flatten_parameters
from typing import Any
from numpy.typing import DTypeLike

__all__ = ["Dropout", "LayerNorm", "BatchNorm1d"]

_U64 = 1 << 64

# The training step's hot path calls the kernels' typed entries (_kernels._c_*) directly: the
# module owns every buffer but x and g, whose shapes it checks below, and the typed memoryviews
# refuse a wrong dtype or layout; the public bindings' full checks cost more than the kernels on
# small batches. The R passes and fastprop.ops keep the checked bindings.


def _same_shape(a: Any, like: Any, what: Any) -> Any:
    if a.shape != like.shape:
        raise ValueError(f"{what} has shape {a.shape}, expected {like.shape}")


def _positive_int(value: Any, name: Any) -> Any:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _eps(eps: Any) -> Any:
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"eps must be a number, got {type(eps).__name__}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    return float(eps)


def _probability(p: Any) -> Any:
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"p must be a number in [0, 1], got {type(p).__name__}")
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got p={p!r}")
    return float(p)


def _workspace(current: Any, shape: Any, dtype: Any) -> Any:
    return current if current is not None and current.shape == shape and current.dtype == dtype \
        else np.empty(shape, dtype)


class Dropout(Module):
    """Inverted dropout, as torch.nn.Dropout: in training mode each unit is zeroed with
    probability p and the kept ones are scaled by 1/(1 − p); in eval mode (and for p = 0) it
    is the identity. p = 1 zeroes everything.

    The mask is drawn in C from a Philox4x32-10 stream (csrc/dropout.c), one byte per unit;
    the stream's key comes from ``rng`` (an int seed or a NumPy Generator, as Linear's) and
    its position advances with every training forward, so the masks are reproducible from
    the seed. ``rng_state()`` / ``set_rng_state(state)`` save and restore the position
    (``copy.deepcopy`` and ``pickle`` copy it too). The backward applies the forward's mask.

    Curvature (hvp, gnvp): in training mode dropout is a fixed linear map for a given mask.
    The R-forward draws one mask from the stream (advancing it, as a forward does) and applies
    it to both y and R{y}; the R-backward applies the same mask to g and R{g}.

    Parameters
    ----------
    p : float, default 0.5
        The probability of zeroing a unit, in [0, 1].
    rng : numpy.random.Generator or int, optional
        The mask stream's key (a generator or a seed).

    Raises
    ------
    ValueError
        If p is not a number in [0, 1].

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> drop = fp.Dropout(0.5, rng=0)
    >>> y = drop(np.ones((2, 1000), np.float32))
    >>> sorted(set(y.ravel().tolist()))
    [0.0, 2.0]
    >>> _ = drop.eval()
    >>> float(drop(np.ones((2, 3), np.float32)).sum())
    6.0
    """
    width_preserving = True
    r_supported = True
    _workspace_keys = ("_y", "_ybuf", "_mask")

    def __init__(self, p: float = 0.5, rng: np.random.Generator | int | None = None) -> None:
        super().__init__()
        self.p = p
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self._key = int(rng.integers(0, _U64, dtype=np.uint64))
        self._counter = 0
        self._y = self._ybuf = self._mask = None   # the last output; the masked output's workspace
        self._masked = False   # the last forward applied a mask (training mode and p > 0)

    @property
    def p(self) -> Any:
        return self._p

    @p.setter
    def p(self, value: Any) -> None:
        self._p = _probability(value)

    def rng_state(self) -> Any:
        """The mask stream's position: {"key": int, "counter": int} (JSON-serialisable)."""
        return {"key": self._key, "counter": self._counter}

    def set_rng_state(self, state: dict[str, Any]) -> Any:
        """Continues the mask stream from a ``rng_state()``; checked before anything changes."""
        if not isinstance(state, dict) or set(state) != {"key", "counter"}:
            raise ValueError(f"state must be a dict with the keys 'key' and 'counter' "
                             f"(from rng_state()), got {state!r:.200}")
        values = {}
        for name in ("key", "counter"):
            v = state[name]
            if isinstance(v, np.ndarray) and v.shape == ():
                v = v.item()
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"state[{name!r}] must be an integer, got {type(v).__name__}")
            if not 0 <= int(v) < _U64:
                raise ValueError(f"state[{name!r}] must be in [0, 2**64), got {v}")
            values[name] = int(v)
        self._key, self._counter = values["key"], values["counter"]

    def _draw(self, x: Any, y: Any, mask: Any) -> Any:
        """y = the mask of the stream's next block applied to x; advances the stream."""
        _kernels._c_dropout_forward(y.reshape(-1), mask.reshape(-1), x.reshape(-1), self._p,
                                    self._key, self._counter)
        self._counter = (self._counter + _kernels.dropout_blocks(x.size)) % _U64
        return y

    def _forward(self, x: Any) -> Any:
        self._masked = self.training and self._p > 0
        if not self._masked:
            self._y, self._ready = x, True
            return x
        self._y = self._ybuf = y = _workspace(self._ybuf, x.shape, x.dtype)
        self._mask = _workspace(self._mask, x.shape, np.uint8)
        self._ready = True
        return self._draw(x, y, self._mask)

    def _backward(self, g: Any, need_input_grad: Any) -> Any:
        if not self._masked:
            return g
        _same_shape(g, self._mask, "the gradient")
        g = np.ascontiguousarray(g)   # written in place through a flat view
        _kernels._c_dropout_backward(g.reshape(-1), g.reshape(-1), self._mask.reshape(-1), self._p)
        return g

    def _output_like(self) -> Any:
        return self._y

    def _rforward(self, x: Any, rx: Any, v: Any) -> Any:
        if not (self.training and self._p > 0):
            self._rsaved = None
            return x, rx
        mask = self._rbuf("mask", x.shape, np.uint8)
        y = self._draw(x, self._rbuf("y", x.shape, x.dtype), mask)
        ry = None
        if rx is not None:
            ry = _kernels.dropout_backward(rx, mask, self._p, out=self._rbuf("ry", x.shape, x.dtype))
        self._rsaved = mask
        return y, ry

    def _rbackward(self, g: Any, rg: Any, v: Any, hv: Any, need_input_grad: Any) -> Any:
        mask = self._rsaved
        if mask is None:
            return g, rg
        if g is not None:
            g = _kernels.dropout_backward(g, mask, self._p, out=g)
        return g, _kernels.dropout_backward(rg, mask, self._p, out=rg)

    def _config(self) -> Any:
        return {"p": self._p}


class LayerNorm(Module):
    """torch.nn.LayerNorm over the features of (batch, features) input:
    y = (x − mean) / √(var + eps) · weight + bias, per row, var biased.

    normalized_shape: the number of features (an int or a 1-tuple: inputs are 2-D).
    weight (ones) and bias (zeros) are Parameters when elementwise_affine (bias=False drops
    the bias); else both are None. Forward and backward are each one C pass over the batch
    (csrc/norm.c, two-pass variance), and so are the R-operator's two passes (hvp, gnvp).

    Parameters
    ----------
    normalized_shape : int or tuple of one int
        The number of features (inputs are 2-D).
    eps : float, default 1e-5
        Added to the variance (> 0).
    elementwise_affine : bool, default True
        Learnable weight and bias.
    bias : bool, default True
        With elementwise_affine, whether there is a bias.
    dtype : numpy dtype, default float32
        float32 or float64.

    Raises
    ------
    TypeError
        If normalized_shape is not an int or a tuple of ints, or dtype is not a float type.
    ValueError
        If normalized_shape is not one positive integer, or eps is not positive.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> norm = fp.LayerNorm(4)
    >>> y = norm(np.array([[1.0, 2.0, 3.0, 4.0]], np.float32))
    >>> np.allclose(y.mean(axis=1), 0, atol=1e-6), np.allclose(y.std(axis=1), 1, atol=1e-4)
    (True, True)
    """
    width_preserving = True
    r_supported = True
    _workspace_keys = ("_x", "_y", "_mean", "_rstd")

    def __init__(self, normalized_shape: Any, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, dtype: DTypeLike = np.float32) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) and \
            not isinstance(normalized_shape, (bool, np.bool_)) else normalized_shape
        try:
            shape = tuple(shape)
        except TypeError:
            raise TypeError(f"normalized_shape must be an int or a tuple of ints, got "
                            f"{type(normalized_shape).__name__}") from None
        if len(shape) != 1:
            raise ValueError(f"normalized_shape must be (features,) for fastprop's 2-D "
                             f"(batch, features) inputs, got {normalized_shape!r}")
        self.normalized_shape = (_positive_int(shape[0], "normalized_shape"),)
        self.eps = _eps(eps)
        self.elementwise_affine, self.bias_enabled = bool(elementwise_affine), bool(bias)
        self._dtype = as_dtype(dtype)
        n = self.normalized_shape[0]
        if self.elementwise_affine:
            self._params["weight"] = Parameter(np.ones(n, self._dtype))
            if self.bias_enabled:
                self._params["bias"] = Parameter(np.zeros(n, self._dtype))
        self._x = self._y = self._mean = self._rstd = None
        flatten_parameters(self.parameters())
        self._share_guard()

    weight = property(lambda self: self._params.get("weight"))
    bias = property(lambda self: self._params.get("bias"))
    dtype = property(lambda self: self._dtype)
    in_features = property(lambda self: self.normalized_shape[0])
    out_features = in_features

    def _vectors(self) -> Any:
        w, b = self.weight, self.bias
        return (None if w is None else w.data), (None if b is None else b.data)

    def _forward(self, x: Any) -> Any:
        batch = x.shape[0]
        self._y = _workspace(self._y, x.shape, x.dtype)
        self._mean = _workspace(self._mean, (batch,), x.dtype)
        self._rstd = _workspace(self._rstd, (batch,), x.dtype)
        if x.ndim != 2 or x.shape[1] != self.normalized_shape[0]:
            raise ValueError(f"x has shape {x.shape}, expected (batch, {self.normalized_shape[0]})")
        w, b = self._vectors()
        _kernels._c_layernorm_forward(self._y, self._mean, self._rstd, x, w, b, self.eps)
        self._x, self._ready = x, True
        return self._y

    def _backward(self, g: Any, need_input_grad: Any) -> Any:
        w, b = self.weight, self.bias
        _same_shape(g, self._x, "the gradient")
        gx = g if need_input_grad else None
        _kernels._c_layernorm_backward(g, gx, None if w is None else w.grad,
                                       None if b is None else b.grad, self._x, self._mean,
                                       self._rstd, None if w is None else w.data, True)
        return gx

    def _output_like(self) -> Any:
        return self._y

    def _rforward(self, x: Any, rx: Any, v: Any) -> Any:
        w, b = self.weight, self.bias
        y, ry = _kernels.layernorm_rforward(
            x, rx, *self._vectors(), None if w is None else v[w], None if b is None else v[b],
            eps=self.eps, out=self._rbuf("y", x.shape, x.dtype), rout=self._rbuf("ry", x.shape, x.dtype))
        self._rsaved = (x, rx)
        return y, (ry if rx is not None or w is not None else None)

    def _rbackward(self, g: Any, rg: Any, v: Any, hv: Any, need_input_grad: Any) -> Any:
        x, rx = self._rsaved
        w, b = self.weight, self.bias
        gx, rgx, _, _ = _kernels.layernorm_rbackward(
            g, rg, x, rx, None if w is None else w.data, None if w is None else v[w],
            eps=self.eps, input_grad=need_input_grad, out=g, rout=rg,
            hv_weight=None if w is None else hv[w], hv_bias=None if b is None else hv[b],
            accumulate=True)
        return gx, rgx

    def _config(self) -> Any:
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self.bias_enabled,
                "dtype": str(self._dtype)}

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, " \
               f"elementwise_affine={self.elementwise_affine}"


class BatchNorm1d(Module):
    """torch.nn.BatchNorm1d over (batch, num_features) input.

    Training mode: normalize by the batch's mean and biased variance, and (with
    track_running_stats) move running_mean and running_var by momentum towards the mean and
    the unbiased variance; momentum=None is the cumulative average (1/num_batches_tracked).
    A batch of one row is a ValueError in training mode, as in torch. Eval mode normalizes
    by the running statistics (by the batch's when they are not tracked). weight (ones) and
    bias (zeros) are Parameters when affine, else None. running_mean, running_var and
    num_batches_tracked are buffers: in state_dict(), save/load and copies, not in
    parameters(). Curvature: in eval mode with tracked statistics (an affine map); batch
    statistics are a TypeError in hvp/gnvp.

    Parameters
    ----------
    num_features : int
        The number of features (positive).
    eps : float, default 1e-5
        Added to the variance (> 0).
    momentum : float or None, default 0.1
        The running statistics' update factor, in [0, 1]; None: the cumulative average.
    affine : bool, default True
        Learnable weight and bias.
    track_running_stats : bool, default True
        Keep running_mean and running_var (used in eval mode).
    dtype : numpy dtype, default float32
        float32 or float64.

    Raises
    ------
    TypeError
        If momentum is not a number or None, or dtype is not a float type.
    ValueError
        If num_features is not a positive integer, eps is not positive or momentum is not
        in [0, 1]; from a training forward, a batch of one row.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> bn = fp.BatchNorm1d(2)
    >>> y = bn(np.array([[1.0, 10.0], [3.0, 30.0]], np.float32))
    >>> np.allclose(y, [[-1, -1], [1, 1]], atol=1e-4)
    True
    >>> bn.running_mean
    array([0.2, 2. ], dtype=float32)
    """
    width_preserving = True
    _workspace_keys = ("_x", "_y", "_mean", "_rstd", "_ws")

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 dtype: DTypeLike = np.float32) -> None:
        super().__init__()
        self.num_features = _positive_int(num_features, "num_features")
        self.eps = _eps(eps)
        if momentum is not None:
            if isinstance(momentum, (bool, np.bool_)) or \
                    not isinstance(momentum, (int, float, np.integer, np.floating)):
                raise TypeError(f"momentum must be a number or None, got {type(momentum).__name__}")
            momentum = float(momentum)
            if not 0 <= momentum <= 1:
                raise ValueError(f"momentum must be in [0, 1] or None, got {momentum}")
        self.momentum = momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self._dtype = dt = as_dtype(dtype)
        c = self.num_features
        if self.affine:
            self._params["weight"] = Parameter(np.ones(c, dt))
            self._params["bias"] = Parameter(np.zeros(c, dt))
        if self.track_running_stats:
            self._buffers = {"running_mean": np.zeros(c, dt), "running_var": np.ones(c, dt),
                             "num_batches_tracked": np.zeros((), np.int64)}
        self._x = self._y = self._mean = self._rstd = self._ws = None
        self._batch_stats = True   # what the last forward normalized by
        flatten_parameters(self.parameters())
        self._share_guard()

    weight = property(lambda self: self._params.get("weight"))
    bias = property(lambda self: self._params.get("bias"))
    dtype = property(lambda self: self._dtype)
    running_mean = property(lambda self: self._buffers.get("running_mean"))
    running_var = property(lambda self: self._buffers.get("running_var"))
    num_batches_tracked = property(lambda self: self._buffers.get("num_batches_tracked"))
    in_features = property(lambda self: self.num_features)
    out_features = in_features

    def _uses_batch_stats(self) -> Any:
        return self.training or not self.track_running_stats

    @property
    def r_supported(self) -> bool:
        return not self._uses_batch_stats()

    @property
    def r_unsupported(self) -> Any:
        """Why hvp/gnvp refuse this module now (None when they accept it)."""
        if self._uses_batch_stats():
            return ("BatchNorm1d normalizes by batch statistics (training mode, or "
                    "track_running_stats=False): Hessian–vector products support it in eval "
                    "mode with running statistics (call model.eval())")
        return None

    def _vectors(self) -> Any:
        w, b = self.weight, self.bias
        return (None if w is None else w.data), (None if b is None else b.data)

    def _forward(self, x: Any) -> Any:
        batch_stats = self._uses_batch_stats()
        if self.training and x.shape[0] < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got "
                             f"input size {x.shape}")
        c = self.num_features
        self._y = _workspace(self._y, x.shape, x.dtype)
        self._mean = _workspace(self._mean, (c,), x.dtype)
        self._rstd = _workspace(self._rstd, (c,), x.dtype)
        track = self.training and self.track_running_stats
        momentum = 0.0
        if track:
            n = int(self.num_batches_tracked)
            momentum = 1.0 / (n + 1) if self.momentum is None else self.momentum
        _kernels.batchnorm_forward(x, *self._vectors(), self.running_mean, self.running_var,
                                   batch_stats=batch_stats, eps=self.eps, momentum=momentum,
                                   out=self._y, mean_out=self._mean, rstd_out=self._rstd)
        if track:
            self.num_batches_tracked[...] += 1
        self._x, self._batch_stats, self._ready = x, batch_stats, True
        return self._y

    def _backward(self, g: Any, need_input_grad: Any) -> Any:
        w, b = self.weight, self.bias
        self._ws = _workspace(self._ws, (2 * self.num_features,), g.dtype)
        gx, _, _ = _kernels.batchnorm_backward(
            g, self._x, self._mean, self._rstd, None if w is None else w.data,
            batch_stats=self._batch_stats, input_grad=need_input_grad, out=g,
            grad_weight=None if w is None else w.grad, grad_bias=None if b is None else b.grad,
            accumulate=True, workspace=self._ws)
        return gx

    def _output_like(self) -> Any:
        return self._y

    def _rforward(self, x: Any, rx: Any, v: Any) -> Any:
        if self._uses_batch_stats():
            raise TypeError(self.r_unsupported)
        c, w, b = self.num_features, self.weight, self.bias
        mean, rstd = self._rbuf("mean", (c,), x.dtype), self._rbuf("rstd", (c,), x.dtype)
        y = self._rbuf("y", x.shape, x.dtype)
        _kernels.batchnorm_forward(x, None, None, self.running_mean, self.running_var,
                                   batch_stats=False, eps=self.eps, out=y, mean_out=mean,
                                   rstd_out=rstd)
        y, ry = _kernels.batchnorm_rforward(
            x, rx, mean, rstd, *self._vectors(), None if w is None else v[w],
            None if b is None else v[b], out=y, rout=self._rbuf("ry", x.shape, x.dtype))
        self._rsaved = (x, rx, mean, rstd)
        return y, (ry if rx is not None or w is not None else None)

    def _rbackward(self, g: Any, rg: Any, v: Any, hv: Any, need_input_grad: Any) -> Any:
        x, rx, mean, rstd = self._rsaved
        w, b = self.weight, self.bias
        gx, rgx, _, _ = _kernels.batchnorm_rbackward(
            g, rg, x, rx, mean, rstd, None if w is None else w.data, None if w is None else v[w],
            input_grad=need_input_grad, out=g, rout=rg, hv_weight=None if w is None else hv[w],
            hv_bias=None if b is None else hv[b], accumulate=True)
        return gx, rgx

    def _config(self) -> Any:
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "track_running_stats": self.track_running_stats,
                "dtype": str(self._dtype)}

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, " \
               f"affine={self.affine}, track_running_stats={self.track_running_stats}"
