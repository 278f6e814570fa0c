# Bindings of csrc/dropout.c and csrc/norm.c (included from _kernels.pyx).
#
# Each public function checks its arrays with the helpers of _kernels.pyx (naming the
# argument, nothing written on error), then hands them to a `_c_*` function whose typed
# memoryviews take float32 or float64 through one fused type: Cython picks the precision
# from the first argument (so each `_c_*` takes an array that is never None first, even where
# the C kernel puts an output that may be NULL first), and `if floating is float` picks the
# C symbol.
from cython cimport floating
from libc.stdint cimport uint8_t, uint64_t


cdef inline floating* _v1(floating[::1] a) noexcept nogil:
    return NULL if a is None else &a[0]


cdef inline floating* _v2(floating[:, ::1] a) noexcept nogil:
    return NULL if a is None else &a[0, 0]


cdef inline const floating* _c1(const floating[::1] a) noexcept nogil:
    return NULL if a is None else &a[0]


cdef inline const floating* _c2(const floating[:, ::1] a) noexcept nogil:
    return NULL if a is None else &a[0, 0]


cdef double _probability(object p) except -1.0:
    """p as a float in [0, 1] (TypeError for a non-number, ValueError outside)."""
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"p must be a number in [0, 1], got {type(p).__name__}")
    cdef double v = float(p)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"p must be in [0, 1], got {v}")
    return v


cdef object _vector(object a, str name, int64_t n, object like):
    """An optional (n,) float input of like's dtype."""
    if a is None:
        return None
    A = _floats(a, name, 1, like, "x")
    if A.shape[0] != n:
        raise ValueError(f"{name} has shape {A.shape}, expected ({n},)")
    return A


cdef object _same_shape(object a, str name, object like, str like_name):
    """An optional float input of like's shape and dtype."""
    if a is None:
        return None
    A = _floats(a, name, like.ndim, like, like_name)
    if A.shape != like.shape:
        raise ValueError(f"{name} has shape {A.shape}, expected {like.shape} ({like_name}'s)")
    return A


cdef object _vec_out(object o, str name, int64_t n, object like, bint zero):
    return _out(o, name, (n,), like, zero)


# ---------------------------------------------------------------- dropout

def _c_dropout_forward(floating[::1] y, uint8_t[::1] mask, const floating[::1] x, double p,
                       uint64_t key, uint64_t counter):
    cdef int rc
    cdef int64_t n = x.shape[0]
    with nogil:
        if floating is float:
            rc = dropout_forward_f32(_v1(y), &mask[0], _c1(x), n, p, key, counter)
        else:
            rc = dropout_forward_f64(_v1(y), &mask[0], _c1(x), n, p, key, counter)
    _check(rc, "dropout_forward")


def _c_dropout_backward(floating[::1] dx, const floating[::1] g, const uint8_t[::1] mask, double p):
    cdef int rc
    cdef int64_t n = g.shape[0]
    with nogil:
        if floating is float:
            rc = dropout_backward_f32(_v1(dx), _c1(g), &mask[0], n, p)
        else:
            rc = dropout_backward_f64(_v1(dx), _c1(g), &mask[0], n, p)
    _check(rc, "dropout_backward")


def dropout_blocks(int64_t n):
    """How far one dropout_forward call of n units advances the Philox counter."""
    return 64 * ((n + 255) // 256)


def dropout_forward(x, p, key, counter, *, out=None, mask_out=None):
    """Inverted dropout: ``mask = u < 1 − p`` (Philox4x32-10 words u of the stream
    (key, counter), see csrc/dropout.c), ``out = mask ? x / (1 − p) : 0``.

    x, out : any shape; mask_out : uint8 of x's shape. out=x works in place. The call uses
    ``dropout_blocks(x.size)`` counter values. Returns (out, mask).

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
    X = _floats(x, "x", -1)
    cdef double q = _probability(p)
    cdef uint64_t k = int(key), c = int(counter)
    Y = _out(out, "out", X.shape, X)
    _separate(Y, "out", ((X, "x"),), True)
    if mask_out is None:
        M = np.empty(X.shape, np.uint8)
    else:
        M = _out(mask_out, "mask_out", X.shape, np.empty(0, np.uint8))
        _separate(M, "mask_out", ((X, "x"), (Y, "out")))
    if X.size:
        _c_dropout_forward(Y.reshape(-1), M.reshape(-1), X.reshape(-1), q, k, c)
    return Y, M


def dropout_backward(grad, mask, p, *, out=None):
    """``out = mask ? grad / (1 − p) : 0``, the forward's mask reused (also R{y} from R{x}).
    out=grad works in place.

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
    G = _floats(grad, "grad", -1)
    cdef double q = _probability(p)
    if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8 or mask.shape != G.shape:
        raise ValueError(f"mask must be a uint8 array of grad's shape {G.shape}, got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)} {getattr(mask, 'shape', '')}")
    M = np.ascontiguousarray(mask)
    D = _out(out, "out", G.shape, G)
    _separate(D, "out", ((G, "grad"),), True)
    _separate(D, "out", ((M, "mask"),))
    if G.size:
        _c_dropout_backward(D.reshape(-1), G.reshape(-1), M.reshape(-1), q)
    return D


# ---------------------------------------------------------------- LayerNorm

def _c_layernorm_forward(floating[:, ::1] y, floating[::1] mean, floating[::1] rstd,
                         const floating[:, ::1] x, const floating[::1] w, const floating[::1] b,
                         double eps):
    cdef int rc
    cdef int64_t batch = x.shape[0], n = x.shape[1]
    with nogil:
        if floating is float:
            rc = layernorm_forward_f32(_v2(y), _v1(mean), _v1(rstd), _c2(x), _c1(w), _c1(b),
                                       batch, n, eps)
        else:
            rc = layernorm_forward_f64(_v2(y), _v1(mean), _v1(rstd), _c2(x), _c1(w), _c1(b),
                                       batch, n, eps)
    _check(rc, "layernorm_forward")


def _c_layernorm_backward(const floating[:, ::1] g, floating[:, ::1] dx, floating[::1] dw,
                          floating[::1] db, const floating[:, ::1] x,
                          const floating[::1] mean, const floating[::1] rstd,
                          const floating[::1] w, bint accumulate):
    cdef int rc
    cdef int64_t batch = g.shape[0], n = g.shape[1]
    with nogil:
        if floating is float:
            rc = layernorm_backward_f32(_v2(dx), _v1(dw), _v1(db), _c2(g), _c2(x), _c1(mean),
                                        _c1(rstd), _c1(w), batch, n, accumulate)
        else:
            rc = layernorm_backward_f64(_v2(dx), _v1(dw), _v1(db), _c2(g), _c2(x), _c1(mean),
                                        _c1(rstd), _c1(w), batch, n, accumulate)
    _check(rc, "layernorm_backward")


def _c_layernorm_rforward(floating[:, ::1] y, floating[:, ::1] ry, const floating[:, ::1] x,
                          const floating[:, ::1] rx, const floating[::1] w, const floating[::1] b,
                          const floating[::1] vw, const floating[::1] vb, double eps):
    cdef int rc
    cdef int64_t batch = x.shape[0], n = x.shape[1]
    with nogil:
        if floating is float:
            rc = layernorm_rforward_f32(_v2(y), _v2(ry), _c2(x), _c2(rx), _c1(w), _c1(b),
                                        _c1(vw), _c1(vb), batch, n, eps)
        else:
            rc = layernorm_rforward_f64(_v2(y), _v2(ry), _c2(x), _c2(rx), _c1(w), _c1(b),
                                        _c1(vw), _c1(vb), batch, n, eps)
    _check(rc, "layernorm_rforward")


def _c_layernorm_rbackward(const floating[:, ::1] rg, floating[:, ::1] dx, floating[:, ::1] rdx,
                           floating[::1] hvw, floating[::1] hvb, const floating[:, ::1] g,
                           const floating[:, ::1] x, const floating[:, ::1] rx,
                           const floating[::1] w, const floating[::1] vw, double eps,
                           bint accumulate):
    cdef int rc
    cdef int64_t batch = rg.shape[0], n = rg.shape[1]
    with nogil:
        if floating is float:
            rc = layernorm_rbackward_f32(_v2(dx), _v2(rdx), _v1(hvw), _v1(hvb), _c2(g), _c2(rg),
                                         _c2(x), _c2(rx), _c1(w), _c1(vw), batch, n, eps,
                                         accumulate)
        else:
            rc = layernorm_rbackward_f64(_v2(dx), _v2(rdx), _v1(hvw), _v1(hvb), _c2(g), _c2(rg),
                                         _c2(x), _c2(rx), _c1(w), _c1(vw), batch, n, eps,
                                         accumulate)
    _check(rc, "layernorm_rbackward")


cdef double _eps(object eps) except -1.0:
    cdef double e = float(eps)
    if not (e >= 0):
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    return e


cdef object _rows2d(object x, str name):
    X = _floats(x, name, 2)
    if X.shape[1] < 1:
        raise ValueError(f"{name} must have at least one feature, got shape {X.shape}")
    return X


def layernorm_forward(x, weight=None, bias=None, *, eps=1e-5, out=None, mean_out=None,
                      rstd_out=None):
    """``y = (x − μ) / √(σ² + eps) · weight + bias`` over each row of x (B, n), σ² biased.

    weight, bias : (n,) or None. Returns (y, mean, rstd), mean and rstd (B,) for the
    backward. out=x works in place.

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
    X = _rows2d(x, "x")
    cdef double e = _eps(eps)
    cdef int64_t batch = X.shape[0], n = X.shape[1]
    W, B = _vector(weight, "weight", n, X), _vector(bias, "bias", n, X)
    Y = _out(out, "out", X.shape, X)
    _separate(Y, "out", ((X, "x"),), True)
    _separate(Y, "out", ((W, "weight"), (B, "bias")))
    M = _vec_out(mean_out, "mean_out", batch, X, False)
    S = _vec_out(rstd_out, "rstd_out", batch, X, False)
    _separate(M, "mean_out", ((X, "x"), (Y, "out"), (W, "weight"), (B, "bias")))
    _separate(S, "rstd_out", ((X, "x"), (Y, "out"), (W, "weight"), (B, "bias"), (M, "mean_out")))
    _c_layernorm_forward(Y, M, S, X, W, B, e)
    return Y, M, S


def layernorm_backward(grad, x, mean, rstd, weight=None, *, input_grad=True, out=None,
                       grad_weight=None, grad_bias=None, accumulate=False):
    """LayerNorm's backward: grad_input = rstd (d − mean(d) − x̂ mean(d x̂)), d = grad·weight;
    grad_weight (+)= Σ_rows grad·x̂ and grad_bias (+)= Σ_rows grad when given (or, with
    accumulate False, allocated when None... only the given ones are written).
    Returns (grad_input or None, grad_weight, grad_bias). out=grad works in place.

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
    G = _rows2d(grad, "grad")
    X = _same_shape(x, "x", G, "grad")
    cdef int64_t batch = G.shape[0], n = G.shape[1]
    M, S = _vector(mean, "mean", batch, G), _vector(rstd, "rstd", batch, G)
    if M is None or S is None:
        raise TypeError("mean and rstd (the forward's) are required")
    W = _vector(weight, "weight", n, G)
    inputs = ((G, "grad"), (X, "x"), (M, "mean"), (S, "rstd"), (W, "weight"))
    cdef bint acc = bool(accumulate)
    dW = None if grad_weight is None else _vec_out(grad_weight, "grad_weight", n, G, acc)
    dB = None if grad_bias is None else _vec_out(grad_bias, "grad_bias", n, G, acc)
    if dW is not None:
        _separate(dW, "grad_weight", inputs)
    if dB is not None:
        _separate(dB, "grad_bias", inputs + ((dW, "grad_weight"),))
    D = None
    if input_grad:
        D = _out(out, "out", G.shape, G)
        _separate(D, "out", ((G, "grad"),), True)
        _separate(D, "out", inputs[1:] + ((dW, "grad_weight"), (dB, "grad_bias")))
    _c_layernorm_backward(G, D, dW, dB, X, M, S, W, acc)
    return D, dW, dB


def layernorm_rforward(x, rx, weight=None, bias=None, v_weight=None, v_bias=None, *, eps=1e-5,
                       out=None, rout=None):
    """LayerNorm's R-operator: y and R{y} = R{x̂} weight + x̂ v_weight + v_bias, with
    R{x̂} = rstd (R{x} − mean(R{x}) − x̂ mean(x̂ R{x})). rx None: a fixed input. Returns (y, ry).

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
    X = _rows2d(x, "x")
    cdef double e = _eps(eps)
    cdef int64_t n = X.shape[1]
    RX = _same_shape(rx, "rx", X, "x")
    vecs = [_vector(a, name, n, X) for a, name in ((weight, "weight"), (bias, "bias"),
                                                    (v_weight, "v_weight"), (v_bias, "v_bias"))]
    inputs = ((X, "x"), (RX, "rx")) + tuple(zip(vecs, ("weight", "bias", "v_weight", "v_bias")))
    Y = _out(out, "out", X.shape, X)
    _separate(Y, "out", inputs)
    RY = _out(rout, "rout", X.shape, X)
    _separate(RY, "rout", inputs + ((Y, "out"),))
    _c_layernorm_rforward(Y, RY, X, RX, vecs[0], vecs[1], vecs[2], vecs[3], e)
    return Y, RY


def layernorm_rbackward(grad, rgrad, x, rx=None, weight=None, v_weight=None, *, eps=1e-5,
                        input_grad=True, out=None, rout=None, hv_weight=None, hv_bias=None,
                        accumulate=False):
    """LayerNorm's R-backward (csrc/norm.c): (grad_input, R{grad_input}) and
    hv_weight (+)= Σ (R{g} x̂ + g R{x̂}), hv_bias (+)= Σ R{g} when given. grad None: the
    Gauss–Newton pass (grad_input None). out=grad, rout=rgrad work in place.
    Returns (out, rout, hv_weight, hv_bias); out and rout None without input_grad.

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
    RG = _rows2d(rgrad, "rgrad")
    cdef double e = _eps(eps)
    cdef int64_t n = RG.shape[1]
    G = _same_shape(grad, "grad", RG, "rgrad")
    X = _same_shape(x, "x", RG, "rgrad")
    RX = _same_shape(rx, "rx", RG, "rgrad")
    W, VW = _vector(weight, "weight", n, RG), _vector(v_weight, "v_weight", n, RG)
    inputs = ((X, "x"), (RX, "rx"), (W, "weight"), (VW, "v_weight"))
    cdef bint acc = bool(accumulate)
    dW = None if hv_weight is None else _vec_out(hv_weight, "hv_weight", n, RG, acc)
    dB = None if hv_bias is None else _vec_out(hv_bias, "hv_bias", n, RG, acc)
    grads = ((G, "grad"), (RG, "rgrad"))
    if dW is not None:
        _separate(dW, "hv_weight", inputs + grads)
    if dB is not None:
        _separate(dB, "hv_bias", inputs + grads + ((dW, "hv_weight"),))
    D = RD = None
    if input_grad:
        if G is not None:
            D = _out(out, "out", RG.shape, RG)
            _separate(D, "out", ((G, "grad"),), True)
            _separate(D, "out", inputs + ((RG, "rgrad"), (dW, "hv_weight"), (dB, "hv_bias")))
        RD = _out(rout, "rout", RG.shape, RG)
        _separate(RD, "rout", ((RG, "rgrad"),), True)
        _separate(RD, "rout", inputs + ((G, "grad"), (D, "out"), (dW, "hv_weight"),
                                        (dB, "hv_bias")))
    _c_layernorm_rbackward(RG, D, RD, dW, dB, G, X, RX, W, VW, e, acc)
    return D, RD, dW, dB


# ---------------------------------------------------------------- BatchNorm1d

def _c_batchnorm_forward(floating[:, ::1] y, floating[::1] mean, floating[::1] rstd,
                         floating[::1] running_mean, floating[::1] running_var,
                         const floating[:, ::1] x, const floating[::1] w, const floating[::1] b,
                         double eps, double momentum, bint batch_stats):
    cdef int rc
    cdef int64_t batch = x.shape[0], c = x.shape[1]
    with nogil:
        if floating is float:
            rc = batchnorm_forward_f32(_v2(y), _v1(mean), _v1(rstd), _v1(running_mean),
                                       _v1(running_var), _c2(x), _c1(w), _c1(b), batch, c, eps,
                                       momentum, batch_stats)
        else:
            rc = batchnorm_forward_f64(_v2(y), _v1(mean), _v1(rstd), _v1(running_mean),
                                       _v1(running_var), _c2(x), _c1(w), _c1(b), batch, c, eps,
                                       momentum, batch_stats)
    _check(rc, "batchnorm_forward")


def _c_batchnorm_backward(const floating[:, ::1] g, floating[:, ::1] dx, floating[::1] dw,
                          floating[::1] db, floating[::1] ws, const floating[:, ::1] x,
                          const floating[::1] mean, const floating[::1] rstd,
                          const floating[::1] w, bint batch_stats, bint accumulate):
    cdef int rc
    cdef int64_t batch = g.shape[0], c = g.shape[1]
    with nogil:
        if floating is float:
            rc = batchnorm_backward_f32(_v2(dx), _v1(dw), _v1(db), _v1(ws), _c2(g), _c2(x),
                                        _c1(mean), _c1(rstd), _c1(w), batch, c, batch_stats,
                                        accumulate)
        else:
            rc = batchnorm_backward_f64(_v2(dx), _v1(dw), _v1(db), _v1(ws), _c2(g), _c2(x),
                                        _c1(mean), _c1(rstd), _c1(w), batch, c, batch_stats,
                                        accumulate)
    _check(rc, "batchnorm_backward")


def _c_batchnorm_rforward(floating[:, ::1] y, floating[:, ::1] ry, const floating[:, ::1] x,
                          const floating[:, ::1] rx, const floating[::1] mean,
                          const floating[::1] rstd, const floating[::1] w, const floating[::1] b,
                          const floating[::1] vw, const floating[::1] vb):
    cdef int rc
    cdef int64_t batch = x.shape[0], c = x.shape[1]
    with nogil:
        if floating is float:
            rc = batchnorm_rforward_f32(_v2(y), _v2(ry), _c2(x), _c2(rx), _c1(mean), _c1(rstd),
                                        _c1(w), _c1(b), _c1(vw), _c1(vb), batch, c)
        else:
            rc = batchnorm_rforward_f64(_v2(y), _v2(ry), _c2(x), _c2(rx), _c1(mean), _c1(rstd),
                                        _c1(w), _c1(b), _c1(vw), _c1(vb), batch, c)
    _check(rc, "batchnorm_rforward")


def _c_batchnorm_rbackward(const floating[:, ::1] rg, floating[:, ::1] dx, floating[:, ::1] rdx,
                           floating[::1] hvw, floating[::1] hvb, const floating[:, ::1] g,
                           const floating[:, ::1] x, const floating[:, ::1] rx,
                           const floating[::1] mean, const floating[::1] rstd,
                           const floating[::1] w, const floating[::1] vw, bint accumulate):
    cdef int rc
    cdef int64_t batch = rg.shape[0], c = rg.shape[1]
    with nogil:
        if floating is float:
            rc = batchnorm_rbackward_f32(_v2(dx), _v2(rdx), _v1(hvw), _v1(hvb), _c2(g), _c2(rg),
                                         _c2(x), _c2(rx), _c1(mean), _c1(rstd), _c1(w), _c1(vw),
                                         batch, c, accumulate)
        else:
            rc = batchnorm_rbackward_f64(_v2(dx), _v2(rdx), _v1(hvw), _v1(hvb), _c2(g), _c2(rg),
                                         _c2(x), _c2(rx), _c1(mean), _c1(rstd), _c1(w), _c1(vw),
                                         batch, c, accumulate)
    _check(rc, "batchnorm_rbackward")


def batchnorm_forward(x, weight=None, bias=None, running_mean=None, running_var=None, *,
                      batch_stats=True, eps=1e-5, momentum=0.1, out=None, mean_out=None,
                      rstd_out=None):
    """BatchNorm over the batch: x (B, C); weight, bias, running_mean, running_var (C,) or None.

    batch_stats: normalize by the batch's mean and biased variance (B ≥ 1), and move the
    running statistics (when given, B ≥ 2) by momentum towards the mean and the unbiased
    variance, in place; else normalize by the running statistics. Returns (y, mean, rstd),
    the statistics used (for the backward).

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
    X = _floats(x, "x", 2)
    cdef double e = _eps(eps), m = float(momentum)
    cdef int64_t batch = X.shape[0], c = X.shape[1]
    W, B = _vector(weight, "weight", c, X), _vector(bias, "bias", c, X)
    RM = None if running_mean is None else _vec_out(running_mean, "running_mean", c, X, False)
    RV = None if running_var is None else _vec_out(running_var, "running_var", c, X, False)
    if (RM is None) != (RV is None):
        raise ValueError("running_mean and running_var come together")
    if not batch_stats and RM is None:
        raise ValueError("batch_stats=False normalizes by running_mean and running_var: pass them")
    if batch_stats and batch < 1:
        raise ValueError(f"x must have at least one row, got shape {X.shape}")
    if batch_stats and RM is not None and batch < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input "
                         f"size {X.shape}")
    Y = _out(out, "out", X.shape, X)
    M = _vec_out(mean_out, "mean_out", c, X, False)
    S = _vec_out(rstd_out, "rstd_out", c, X, False)
    inputs = ((X, "x"), (W, "weight"), (B, "bias"))
    _separate(Y, "out", ((X, "x"),), True)
    _separate(Y, "out", inputs[1:] + ((RM, "running_mean"), (RV, "running_var")))
    for arr, name in ((M, "mean_out"), (S, "rstd_out"), (RM, "running_mean"), (RV, "running_var")):
        if arr is not None:
            _separate(arr, name, inputs + ((Y, "out"),))
    _separate(S, "rstd_out", ((M, "mean_out"), (RM, "running_mean"), (RV, "running_var")))
    _separate(M, "mean_out", ((RM, "running_mean"), (RV, "running_var")))
    if RM is not None:
        _separate(RM, "running_mean", ((RV, "running_var"),))
    _c_batchnorm_forward(Y, M, S, RM, RV, X, W, B, e, m, bool(batch_stats))
    return Y, M, S


def batchnorm_backward(grad, x, mean, rstd, weight=None, *, batch_stats=True, input_grad=True,
                       out=None, grad_weight=None, grad_bias=None, accumulate=False,
                       workspace=None):
    """BatchNorm's backward with the forward's (mean, rstd): batch_stats gives
    grad_input = rstd w (g − Σg/B − x̂ Σ(g x̂)/B), else g·rstd·w; grad_weight (+)= Σ g x̂ and
    grad_bias (+)= Σ g when given. workspace: (2C,) scratch (allocated when None).
    Returns (grad_input or None, grad_weight, grad_bias). out=grad works in place.

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
        (2C,) scratch buffer of the C kernel; allocated when None.

    Returns
    -------
    out : ndarray or None
        (B, C) the input's gradient; None without input_grad.
    grad_weight : ndarray or None
        (C,): the sum over the rows of ``grad xhat``; None when not given.
    grad_bias : ndarray or None
        (C,): the sum over the rows of grad; None when not given.
    """
    G = _floats(grad, "grad", 2)
    X = _same_shape(x, "x", G, "grad")
    cdef int64_t c = G.shape[1]
    M, S = _vector(mean, "mean", c, G), _vector(rstd, "rstd", c, G)
    if M is None or S is None or X is None:
        raise TypeError("x, mean and rstd (the forward's) are required")
    W = _vector(weight, "weight", c, G)
    inputs = ((G, "grad"), (X, "x"), (M, "mean"), (S, "rstd"), (W, "weight"))
    cdef bint acc = bool(accumulate)
    WS = _out(workspace, "workspace", (2 * c,), G)
    _separate(WS, "workspace", inputs)
    dW = None if grad_weight is None else _vec_out(grad_weight, "grad_weight", c, G, acc)
    dB = None if grad_bias is None else _vec_out(grad_bias, "grad_bias", c, G, acc)
    if dW is not None:
        _separate(dW, "grad_weight", inputs + ((WS, "workspace"),))
    if dB is not None:
        _separate(dB, "grad_bias", inputs + ((WS, "workspace"), (dW, "grad_weight")))
    D = None
    if input_grad:
        D = _out(out, "out", G.shape, G)
        _separate(D, "out", ((G, "grad"),), True)
        _separate(D, "out", inputs[1:] + ((WS, "workspace"), (dW, "grad_weight"),
                                          (dB, "grad_bias")))
    _c_batchnorm_backward(G, D, dW, dB, WS, X, M, S, W, bool(batch_stats), acc)
    return D, dW, dB


def batchnorm_rforward(x, rx, mean, rstd, weight=None, bias=None, v_weight=None, v_bias=None, *,
                       out=None, rout=None):
    """BatchNorm's R-operator with fixed statistics (eval mode): y and
    R{y} = R{x} rstd w + x̂ v_weight + v_bias. rx None: a fixed input. Returns (y, ry).

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
    X = _floats(x, "x", 2)
    cdef int64_t c = X.shape[1]
    RX = _same_shape(rx, "rx", X, "x")
    names = ("mean", "rstd", "weight", "bias", "v_weight", "v_bias")
    vecs = [_vector(a, name, c, X) for a, name in zip((mean, rstd, weight, bias, v_weight, v_bias),
                                                       names)]
    if vecs[0] is None or vecs[1] is None:
        raise TypeError("mean and rstd are required")
    inputs = ((X, "x"), (RX, "rx")) + tuple(zip(vecs, names))
    Y = _out(out, "out", X.shape, X)
    _separate(Y, "out", inputs)
    RY = _out(rout, "rout", X.shape, X)
    _separate(RY, "rout", inputs + ((Y, "out"),))
    _c_batchnorm_rforward(Y, RY, X, RX, *vecs)
    return Y, RY


def batchnorm_rbackward(grad, rgrad, x, rx, mean, rstd, weight=None, v_weight=None, *,
                        input_grad=True, out=None, rout=None, hv_weight=None, hv_bias=None,
                        accumulate=False):
    """BatchNorm's R-backward with fixed statistics: grad_input = g rstd w,
    R{grad_input} = R{g} rstd w + g rstd v_weight, hv_weight (+)= Σ (R{g} x̂ + g R{x} rstd),
    hv_bias (+)= Σ R{g}. grad None: the Gauss–Newton pass. Returns (out, rout, hv_weight, hv_bias).

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
    RG = _floats(rgrad, "rgrad", 2)
    cdef int64_t c = RG.shape[1]
    G = _same_shape(grad, "grad", RG, "rgrad")
    X = _same_shape(x, "x", RG, "rgrad")
    RX = _same_shape(rx, "rx", RG, "rgrad")
    names = ("mean", "rstd", "weight", "v_weight")
    vecs = [_vector(a, name, c, RG) for a, name in zip((mean, rstd, weight, v_weight), names)]
    if X is None or vecs[0] is None or vecs[1] is None:
        raise TypeError("x, mean and rstd are required")
    inputs = ((X, "x"), (RX, "rx")) + tuple(zip(vecs, names))
    cdef bint acc = bool(accumulate)
    dW = None if hv_weight is None else _vec_out(hv_weight, "hv_weight", c, RG, acc)
    dB = None if hv_bias is None else _vec_out(hv_bias, "hv_bias", c, RG, acc)
    grads = ((G, "grad"), (RG, "rgrad"))
    if dW is not None:
        _separate(dW, "hv_weight", inputs + grads)
    if dB is not None:
        _separate(dB, "hv_bias", inputs + grads + ((dW, "hv_weight"),))
    D = RD = None
    if input_grad:
        if G is not None:
            D = _out(out, "out", RG.shape, RG)
            _separate(D, "out", ((G, "grad"),), True)
            _separate(D, "out", inputs + ((RG, "rgrad"), (dW, "hv_weight"), (dB, "hv_bias")))
        RD = _out(rout, "rout", RG.shape, RG)
        _separate(RD, "rout", ((RG, "rgrad"),), True)
        _separate(RD, "rout", inputs + ((G, "grad"), (D, "out"), (dW, "hv_weight"),
                                        (dB, "hv_bias")))
    _c_batchnorm_rbackward(RG, D, RD, dW, dB, G, X, RX, vecs[0], vecs[1], vecs[2], vecs[3], acc)
    return D, RD, dW, dB
