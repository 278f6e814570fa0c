# Bindings of csrc/loss.c: softmax, the fused losses (value and gradient in one pass), their hvps.
# Included by _kernels.pyx (one extension module); the shared checks live there.

# ---------------------------------------------------------------- softmax and losses

cdef _softmax(logits, out, bint log_space, str where):
    Z = _floats(logits, "logits", 2)
    if Z.shape[1] < 1:
        raise ValueError(f"logits must have at least one class, got shape {Z.shape}")
    P = _out(out, "out", Z.shape, Z)
    _separate(P, "out", ((Z, "logits"),), True)
    cdef int64_t batch = Z.shape[0], classes = Z.shape[1]
    cdef int rc
    cdef vptr p_P = _ptr(P), p_Z = _ptr(Z)
    cdef bint f64 = not _f32(Z)
    with nogil:
        rc = c_softmax_forward(f64, p_P, p_Z, batch, classes, log_space)
    _check(rc, where)
    return P


def softmax(logits, *, out=None):
    """Row-wise softmax of (B, C) logits, shifted by the row maximum.

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
    return _softmax(logits, out, False, "softmax")


def log_softmax(logits, *, out=None):
    """Row-wise log-softmax of (B, C) logits (log-sum-exp).

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
    return _softmax(logits, out, True, "log_softmax")


cdef object _loss_grad(grad_out, bint compute_grad, object Z, str zname, tuple others):
    if not compute_grad:
        return None
    D = _out(grad_out, "grad_out", Z.shape, Z)
    _separate(D, "grad_out", ((Z, zname),), True)
    _separate(D, "grad_out", others)
    return D


cdef tuple _xent_target(object target, object Z):
    """(labels, soft) of a cross-entropy target for logits Z (B, C): int64 labels (B,) in
    [0, C) and None, or None and soft targets (B, C) cast to Z's dtype."""
    cdef int64_t batch = Z.shape[0], classes = Z.shape[1], bad
    T = np.asarray(target)
    if T.ndim == 2:
        return None, _target(T, "target", Z.shape, Z.dtype, "logits")
    if T.ndim != 1:
        raise ValueError(f"target must be labels ({batch},) or soft targets ({batch}, {classes}), "
                         f"got shape {T.shape}")
    if T.dtype.kind not in "iu":
        raise TypeError(f"target of shape {T.shape} must hold integer class labels, got "
                        f"dtype {T.dtype} (soft targets have shape ({batch}, {classes}))")
    if T.shape[0] != batch:
        raise ValueError(f"target has {T.shape[0]} labels but logits has {batch} rows")
    if T.dtype.kind == "u" and T.dtype.itemsize == 8 and T.size and T.max() > classes:
        raise ValueError(f"target holds label {T.max()} outside [0, {classes})")
    labels = np.ascontiguousarray(T, dtype=np.int64)
    bad = _first_bad_label(labels, classes)
    if bad >= 0:
        raise ValueError(f"target[{bad}] = {labels[bad]} is not a class label: outside [0, {classes})")
    return labels, None


def softmax_cross_entropy(logits, target, *, grad_out=None, compute_grad=True, weight=None,
                          label_smoothing=0.0, sample_weight=None):
    """Softmax + cross-entropy, value and gradient in one pass.

    logits : (B, C); target : integer labels (B,) in [0, C) or soft targets (B, C).
    loss = mean_i [logsumexp(z_i) − Σ_j t_ij z_ij]; grad = (softmax(z) Σ_j t_ij − t) / B.
    weight (C,), label_smoothing and sample_weight (B,) as torch's CrossEntropyLoss (see
    losses.SoftmaxCrossEntropy). Returns (loss as float, grad or None); grad_out=logits works in place.

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
    if weight is not None or sample_weight is not None or label_smoothing != 0:
        return _xent_weighted(logits, target, grad_out, compute_grad, weight, label_smoothing,
                              sample_weight)
    Z = _floats(logits, "logits", 2)
    cdef int64_t batch = Z.shape[0], classes = Z.shape[1]
    if batch < 1 or classes < 1:
        raise ValueError(f"logits must have at least one row and one class, got shape {Z.shape}")
    labels, soft = _xent_target(target, Z)
    D = _loss_grad(grad_out, compute_grad, Z, "logits", ((soft, "target"), (labels, "target")))
    cdef double loss = 0
    cdef int rc
    cdef vptr p_D = _ptr(D), p_Z = _ptr(Z), p_labels = _ptr(labels), p_soft = _ptr(soft)
    cdef bint f64 = not _f32(Z)
    with nogil:
        rc = c_softmax_xent_forward_backward(f64, &loss, p_D, p_Z, p_labels, p_soft, batch, classes)
    _check(rc, "softmax_cross_entropy")
    return loss, D


def sigmoid_bce(logits, target, *, grad_out=None, compute_grad=True, sample_weight=None):
    """Sigmoid + binary cross-entropy from logits, value and gradient in one pass.

    loss = mean(max(z, 0) − z·y + log1p(exp(−|z|))); grad = (σ(z) − y) / n.
    target has the shape of logits (any real dtype, cast to the logits' dtype).

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
    if sample_weight is not None:
        return _pointwise_loss("sigmoid_bce", "logits", logits, target, grad_out, compute_grad,
                               sample_weight, 0)
    Z = _floats(logits, "logits", -1)
    if Z.size < 1:
        raise ValueError("logits is empty: the loss is a mean over its elements")
    T = _target(target, "target", Z.shape, Z.dtype, "logits")
    _check_range(T, "target", 0, 1, "is outside [0, 1] (BCE targets are probabilities)")
    D = _loss_grad(grad_out, compute_grad, Z, "logits", ((T, "target"),))
    cdef double loss = 0
    cdef int64_t n = Z.size
    cdef int rc
    cdef vptr p_D = _ptr(D), p_Z = _ptr(Z), p_T = _ptr(T)
    cdef bint f64 = not _f32(Z)
    with nogil:
        rc = c_sigmoid_bce_forward_backward(f64, &loss, p_D, p_Z, p_T, n)
    _check(rc, "sigmoid_bce")
    return loss, D


def mse(pred, target, *, grad_out=None, compute_grad=True, sample_weight=None):
    """Mean squared error: loss = mean((pred − target)²); grad = 2 (pred − target) / n.

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
    if sample_weight is not None:
        return _pointwise_loss("mse", "pred", pred, target, grad_out, compute_grad, sample_weight, 0)
    P = _floats(pred, "pred", -1)
    if P.size < 1:
        raise ValueError("pred is empty: the loss is a mean over its elements")
    T = _target(target, "target", P.shape, P.dtype, "pred")
    D = _loss_grad(grad_out, compute_grad, P, "pred", ((T, "target"),))
    cdef double loss = 0
    cdef int64_t n = P.size
    cdef int rc
    cdef vptr p_D = _ptr(D), p_P = _ptr(P), p_T = _ptr(T)
    cdef bint f64 = not _f32(P)
    with nogil:
        rc = c_mse_forward_backward(f64, &loss, p_D, p_P, p_T, n)
    _check(rc, "mse")
    return loss, D


# ---------------------------------------------------------------- loss Hessian–vector products

cdef tuple _hvp_args(z, str zname, target, v, out):
    """(Z, T, V, D) of a loss hvp: v and out shaped like z; target checked against z."""
    Z = _floats(z, zname, -1)
    if Z.size < 1:
        raise ValueError(f"{zname} is empty: the loss is a mean over its elements")
    V = _floats(v, "v", -1, Z, zname)
    if V.shape != Z.shape:
        raise ValueError(f"v has shape {V.shape}, expected {Z.shape} (the shape of {zname})")
    T = _target(target, "target", Z.shape, Z.dtype, zname)
    D = _out(out, "out", Z.shape, Z)
    _separate(D, "out", ((Z, zname), (T, "target")))
    return Z, T, V, D


def softmax_cross_entropy_hvp(logits, target, v, *, out=None, weight=None, label_smoothing=0.0,
                              sample_weight=None):
    """``(∂²J/∂z²) v`` of softmax_cross_entropy at logits z, row-wise:
    ``Σ_j t_ij (p ⊙ v − p (pᵀv)) / B`` with p = softmax(z) (Σ_j t_ij = 1 for labels).

    logits, v, out : (B, C); target : labels (B,) or soft targets (B, C). out must not
    overlap logits or v. weight, label_smoothing, sample_weight: as softmax_cross_entropy's.

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
    if weight is not None or sample_weight is not None or label_smoothing != 0:
        return _xent_weighted_hvp(logits, target, v, out, weight, label_smoothing, sample_weight)
    Z = _floats(logits, "logits", 2)
    cdef int64_t batch = Z.shape[0], classes = Z.shape[1]
    if batch < 1 or classes < 1:
        raise ValueError(f"logits must have at least one row and one class, got shape {Z.shape}")
    _, soft = _xent_target(target, Z)  # labels: Σ_j t_ij = 1, nothing more is needed
    V = _floats(v, "v", 2, Z, "logits")
    if V.shape != Z.shape:
        raise ValueError(f"v has shape {V.shape}, expected {Z.shape} (the shape of logits)")
    D = _out(out, "out", Z.shape, Z)
    _separate(D, "out", ((Z, "logits"), (V, "v"), (soft, "target")))
    cdef int rc
    cdef vptr p_D = _ptr(D), p_Z = _ptr(Z), p_V = _ptr(V), p_T = _ptr(soft)
    cdef bint f64 = not _f32(Z)
    with nogil:
        rc = c_softmax_xent_hvp(f64, p_D, p_Z, p_V, p_T, batch, classes)
    _check(rc, "softmax_cross_entropy_hvp")
    return D


def sigmoid_bce_hvp(logits, target, v, *, out=None, sample_weight=None):
    """``(∂²J/∂z²) v`` of sigmoid_bce: ``σ(z)(1 − σ(z)) v / n``; target only checked.

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
    if sample_weight is not None:
        return _pointwise_hvp("sigmoid_bce", "logits", logits, target, v, out, sample_weight, 0)
    Z, T, V, D = _hvp_args(logits, "logits", target, v, out)
    _separate(D, "out", ((V, "v"),), True)
    cdef int64_t n = Z.size
    cdef int rc
    cdef vptr p_D = _ptr(D), p_Z = _ptr(Z), p_V = _ptr(V)
    cdef bint f64 = not _f32(Z)
    with nogil:
        rc = c_sigmoid_bce_hvp(f64, p_D, p_Z, p_V, n)
    _check(rc, "sigmoid_bce_hvp")
    return D


def mse_hvp(pred, target, v, *, out=None, sample_weight=None):
    """``(∂²J/∂p²) v`` of mse: ``2 v / n``; pred and target only checked.

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
    if sample_weight is not None:
        return _pointwise_hvp("mse", "pred", pred, target, v, out, sample_weight, 0)
    P, T, V, D = _hvp_args(pred, "pred", target, v, out)
    _separate(D, "out", ((V, "v"),), True)
    cdef int64_t n = P.size
    cdef int rc
    cdef vptr p_D = _ptr(D), p_V = _ptr(V)
    cdef bint f64 = not _f32(P)
    with nogil:
        rc = c_mse_hvp(f64, p_D, p_V, n)
    _check(rc, "mse_hvp")
    return D


# ---------------------------------------------------------------- Gaussian output unit

def gaussian_nll(pred, target, *, grad_out=None, compute_grad=True, sample_weight=None):
    """Gaussian negative log-likelihood (without its constant ½ log 2π), value and gradient in one pass.

    pred : (B, 2k) = [μ, log σ²]; target : (B, k) (any real dtype, cast to pred's).
    loss = mean(½ log σ² + ½ (target − μ)² / σ²) over the B·k elements;
    grad = [−(target − μ)/σ², ½ (1 − (target − μ)²/σ²)] / (B·k). σ² is never formed
    (e^{−log σ²/2} multiplies instead), so a log σ² of ±hundreds neither overflows nor divides by 0.
    sample_weight (B,): Σ_i w_i l_i / Σ_i w_i with l_i row i's mean over its k elements.
    Returns (loss as float, grad or None); grad_out=pred works in place.

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
    if sample_weight is not None:
        return _gaussian_nll_weighted(pred, target, grad_out, compute_grad, sample_weight)
    Z = _floats(pred, "pred", 2)
    cdef int64_t batch = Z.shape[0], k = Z.shape[1] // 2
    if batch < 1 or Z.shape[1] < 2 or Z.shape[1] % 2:
        raise ValueError(f"pred must be (batch >= 1, 2k) = [mean, log variance], got shape {Z.shape}")
    T = _target(target, "target", (batch, k), Z.dtype, "pred's mean half")
    D = _loss_grad(grad_out, compute_grad, Z, "pred", ((T, "target"),))
    cdef double loss = 0
    cdef int rc
    cdef vptr p_D = _ptr(D), p_Z = _ptr(Z), p_T = _ptr(T)
    cdef bint f64 = not _f32(Z)
    with nogil:
        rc = c_gaussian_nll_forward_backward(f64, &loss, p_D, p_Z, p_T, batch, k)
    _check(rc, "gaussian_nll")
    return loss, D
