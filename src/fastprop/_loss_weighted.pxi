# Bindings of csrc/loss.c's weighted and robust losses: L1, Huber, SmoothL1, sample weights
# for every loss, class weights and label smoothing for cross-entropy, and their hvps.
# Included by _kernels.pyx (one extension module); the shared checks live there.

# the pointwise kernels' kinds, by the name of their ops function
POINTWISE = {"sigmoid_bce": FP_LOSS_SIGMOID_BCE, "mse": FP_LOSS_MSE, "l1_loss": FP_LOSS_L1,
             "huber_loss": FP_LOSS_HUBER, "smooth_l1_loss": FP_LOSS_SMOOTH_L1}


# ---------------------------------------------------------------- checks

cdef object _weights(object w, str name, int64_t n, object like, str what):
    """None, or the weights w as a C-contiguous (n,) array of like's dtype, each finite and ≥ 0."""
    if w is None:
        return None
    arr = np.asarray(w)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real-valued array, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {arr.shape}, expected ({n},): {what}")
    W = np.ascontiguousarray(arr, dtype=like.dtype)
    _check_range(W, name, 0, FLT_MAX if _f32(like) else DBL_MAX,
                 "is not a weight: weights must be finite and >= 0")
    return W


def check_weights(w, str name, int64_t n, str what):
    """w as a float64 (n,) array of finite weights ≥ 0 (TypeError/ValueError naming name)."""
    return _weights(w, name, n, np.empty(0), what)


def check_label_smoothing(label_smoothing):
    """label_smoothing as a float in [0, 1] (TypeError/ValueError naming it)."""
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float, np.integer, np.floating)):
        raise TypeError(f"label_smoothing must be a number in [0, 1], got "
                        f"{type(label_smoothing).__name__}")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    return eps


def check_loss_param(value, str name, bint zero_ok):
    """Huber's delta (> 0) or SmoothL1's beta (≥ 0) as a float, as torch refuses the others."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not (v >= 0 if zero_ok else v > 0) or v == float("inf"):
        raise ValueError(f"{name} must be {'>= 0' if zero_ok else '> 0'} and finite, got {value}")
    return v


cdef int _check_weighted(int rc, str where) except -1:
    """_check, where FP_ERR_ARG (every other argument checked) means the weights sum to 0."""
    if rc == FP_ERR_ARG:
        raise ValueError(f"{where}: the weights of this batch sum to 0 (sample_weight, and for "
                         f"cross-entropy weight[target]): the weighted mean is undefined")
    return _check(rc, where)


cdef inline int64_t _rows(object A):
    return A.shape[0] if A.ndim else 1


# ---------------------------------------------------------------- the losses

cdef tuple _pointwise_loss(str name, str pname, pred, target, grad_out, bint compute_grad,
                           sample_weight, double param):
    P = _floats(pred, pname, -1)
    if P.size < 1:
        raise ValueError(f"{pname} is empty: the loss is a mean over its elements")
    T = _target(target, "target", P.shape, P.dtype, pname)
    if name == "sigmoid_bce":
        _check_range(T, "target", 0, 1, "is outside [0, 1] (BCE targets are probabilities)")
    cdef int64_t batch = _rows(P)
    S = _weights(sample_weight, "sample_weight", batch, P, "one weight per row")
    D = _loss_grad(grad_out, compute_grad, P, pname, ((T, "target"),))
    cdef double loss = 0
    cdef int rc, kind = POINTWISE[name]
    cdef int64_t k = P.size // batch
    cdef vptr p_D = _ptr(D), p_P = _ptr(P), p_T = _ptr(T), p_S = _ptr(S)
    cdef bint f64 = not _f32(P)
    with nogil:
        rc = c_pointwise_loss_forward_backward(f64, &loss, p_D, p_P, p_T, p_S, batch, k, kind, param)
    _check_weighted(rc, name)
    return loss, D


cdef object _pointwise_hvp(str name, str pname, pred, target, v, out, sample_weight, double param):
    P, T, V, D = _hvp_args(pred, pname, target, v, out)
    _separate(D, "out", ((V, "v"),), True)
    cdef int64_t batch = _rows(P)
    S = _weights(sample_weight, "sample_weight", batch, P, "one weight per row")
    cdef int rc, kind = POINTWISE[name]
    cdef int64_t k = P.size // batch
    cdef vptr p_D = _ptr(D), p_P = _ptr(P), p_T = _ptr(T), p_V = _ptr(V), p_S = _ptr(S)
    cdef bint f64 = not _f32(P)
    with nogil:
        rc = c_pointwise_loss_hvp(f64, p_D, p_P, p_T, p_V, p_S, batch, k, kind, param)
    _check_weighted(rc, f"{name}_hvp")
    return D


def l1_loss(pred, target, *, grad_out=None, compute_grad=True, sample_weight=None):
    """Mean absolute error (torch's L1Loss): loss = mean(abs(pred − target)); grad = sign(pred − target) / n
    (0 where they are equal). sample_weight (B,): Σ_i w_i mean_j l_ij / Σ_i w_i, as every loss here.
    Returns (loss as float, grad or None); grad_out=pred works in place.

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
    return _pointwise_loss("l1_loss", "pred", pred, target, grad_out, compute_grad, sample_weight, 0)


def huber_loss(pred, target, *, grad_out=None, compute_grad=True, sample_weight=None, delta=1.0):
    """torch's HuberLoss: mean of ½ d² where abs(d) < delta, delta (abs(d) − ½ delta) elsewhere (d = pred − target).

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
    d = check_loss_param(delta, "delta", False)
    return _pointwise_loss("huber_loss", "pred", pred, target, grad_out, compute_grad, sample_weight, d)


def smooth_l1_loss(pred, target, *, grad_out=None, compute_grad=True, sample_weight=None, beta=1.0):
    """torch's SmoothL1Loss: mean of ½ d²/beta where abs(d) < beta, abs(d) − ½ beta elsewhere; beta = 0 is L1.

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
    b = check_loss_param(beta, "beta", True)
    return _pointwise_loss("smooth_l1_loss", "pred", pred, target, grad_out, compute_grad, sample_weight, b)


def l1_loss_hvp(pred, target, v, *, out=None, sample_weight=None):
    """``(∂²J/∂p²) v`` of l1_loss: 0 (the loss is piecewise linear).

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
    return _pointwise_hvp("l1_loss", "pred", pred, target, v, out, sample_weight, 0)


def huber_loss_hvp(pred, target, v, *, out=None, sample_weight=None, delta=1.0):
    """``(∂²J/∂p²) v`` of huber_loss: v / n where abs(pred − target) < delta, 0 elsewhere.

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
    d = check_loss_param(delta, "delta", False)
    return _pointwise_hvp("huber_loss", "pred", pred, target, v, out, sample_weight, d)


def smooth_l1_loss_hvp(pred, target, v, *, out=None, sample_weight=None, beta=1.0):
    """``(∂²J/∂p²) v`` of smooth_l1_loss: v / (beta n) where abs(pred − target) < beta, 0 elsewhere.

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
    b = check_loss_param(beta, "beta", True)
    return _pointwise_hvp("smooth_l1_loss", "pred", pred, target, v, out, sample_weight, b)


cdef tuple _gaussian_nll_weighted(pred, target, grad_out, bint compute_grad, sample_weight):
    Z = _floats(pred, "pred", 2)
    cdef int64_t batch = Z.shape[0], k = Z.shape[1] // 2
    if batch < 1 or Z.shape[1] < 2 or Z.shape[1] % 2:
        raise ValueError(f"pred must be (batch >= 1, 2k) = [mean, log variance], got shape {Z.shape}")
    T = _target(target, "target", (batch, k), Z.dtype, "pred's mean half")
    S = _weights(sample_weight, "sample_weight", batch, Z, "one weight per row")
    D = _loss_grad(grad_out, compute_grad, Z, "pred", ((T, "target"),))
    cdef double loss = 0
    cdef int rc
    cdef vptr p_D = _ptr(D), p_Z = _ptr(Z), p_T = _ptr(T), p_S = _ptr(S)
    cdef bint f64 = not _f32(Z)
    with nogil:
        rc = c_gaussian_nll_weighted_forward_backward(f64, &loss, p_D, p_Z, p_T, p_S, batch, k)
    _check_weighted(rc, "gaussian_nll")
    return loss, D


cdef tuple _xent_options(Z, target, weight, label_smoothing, sample_weight):
    """(labels, soft, class weights, sample weights, ε) of a weighted cross-entropy, all checked."""
    labels, soft = _xent_target(target, Z)
    C = _weights(weight, "weight", Z.shape[1], Z, "one weight per class")
    S = _weights(sample_weight, "sample_weight", Z.shape[0], Z, "one weight per row")
    return labels, soft, C, S, check_label_smoothing(label_smoothing)


cdef tuple _xent_weighted(logits, target, grad_out, bint compute_grad, weight, label_smoothing,
                          sample_weight):
    Z = _floats(logits, "logits", 2)
    cdef int64_t batch = Z.shape[0], classes = Z.shape[1]
    if batch < 1 or classes < 1:
        raise ValueError(f"logits must have at least one row and one class, got shape {Z.shape}")
    labels, soft, C, S, eps = _xent_options(Z, target, weight, label_smoothing, sample_weight)
    D = _loss_grad(grad_out, compute_grad, Z, "logits", ((soft, "target"), (labels, "target")))
    cdef double loss = 0
    cdef int rc
    cdef double smoothing = eps
    cdef vptr p_D = _ptr(D), p_Z = _ptr(Z), p_L = _ptr(labels), p_T = _ptr(soft)
    cdef vptr p_C = _ptr(C), p_S = _ptr(S)
    cdef bint f64 = not _f32(Z)
    with nogil:
        rc = c_softmax_xent_weighted_forward_backward(f64, &loss, p_D, p_Z, p_L, p_T, p_C, p_S,
                                                      smoothing, batch, classes)
    _check_weighted(rc, "softmax_cross_entropy")
    return loss, D


cdef object _xent_weighted_hvp(logits, target, v, out, weight, label_smoothing, sample_weight):
    Z = _floats(logits, "logits", 2)
    cdef int64_t batch = Z.shape[0], classes = Z.shape[1]
    if batch < 1 or classes < 1:
        raise ValueError(f"logits must have at least one row and one class, got shape {Z.shape}")
    labels, soft, C, S, eps = _xent_options(Z, target, weight, label_smoothing, sample_weight)
    V = _floats(v, "v", 2, Z, "logits")
    if V.shape != Z.shape:
        raise ValueError(f"v has shape {V.shape}, expected {Z.shape} (the shape of logits)")
    D = _out(out, "out", Z.shape, Z)
    _separate(D, "out", ((Z, "logits"), (V, "v"), (soft, "target")))
    cdef int rc
    cdef double smoothing = eps
    cdef vptr p_D = _ptr(D), p_Z = _ptr(Z), p_V = _ptr(V), p_L = _ptr(labels), p_T = _ptr(soft)
    cdef vptr p_C = _ptr(C), p_S = _ptr(S)
    cdef bint f64 = not _f32(Z)
    with nogil:
        rc = c_softmax_xent_weighted_hvp(f64, p_D, p_Z, p_V, p_L, p_T, p_C, p_S, smoothing, batch,
                                         classes)
    _check_weighted(rc, "softmax_cross_entropy_hvp")
    return D
