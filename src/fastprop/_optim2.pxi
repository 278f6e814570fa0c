# ---------------------------------------------------------------- RMSprop, Adagrad, AMSGrad, clipping
# Included from _kernels.pyx. The C kernels are csrc/optim.c's.

# the float/double choice written once, as _kernels.pxd's c_NAME: c_NAME(f64, ...) calls
# NAME_f64 or NAME_f32 (declared in csrc/fastprop.h) with the same arguments
cdef extern from *:
    """
    #ifndef FP_BY_DTYPE
    #define FP_BY_DTYPE(name, f64, ...) ((f64) ? name##_f64(__VA_ARGS__) : name##_f32(__VA_ARGS__))
    #endif
    #define c_amsgrad_step(f64, ...) FP_BY_DTYPE(amsgrad_step, f64, __VA_ARGS__)
    #define c_rmsprop_step(f64, ...) FP_BY_DTYPE(rmsprop_step, f64, __VA_ARGS__)
    #define c_adagrad_step(f64, ...) FP_BY_DTYPE(adagrad_step, f64, __VA_ARGS__)
    #define c_grad_norm_pow(f64, ...) FP_BY_DTYPE(grad_norm_pow, f64, __VA_ARGS__)
    #define c_grad_scale(f64, ...) FP_BY_DTYPE(grad_scale, f64, __VA_ARGS__)
    #define c_grad_clamp(f64, ...) FP_BY_DTYPE(grad_clamp, f64, __VA_ARGS__)
    """
    int c_amsgrad_step(bint f64, void *param, const void *grad, void *m, void *v, void *vmax,
        int64_t n, double lr, double beta1, double beta2, double eps, double weight_decay,
        int decoupled, int64_t step) nogil
    int c_rmsprop_step(bint f64, void *param, const void *grad, void *square_avg,
        void *momentum_buf, void *grad_avg, int64_t n, double lr, double alpha, double eps,
        double weight_decay, double momentum) nogil
    int c_adagrad_step(bint f64, void *param, const void *grad, void *sum, int64_t n,
        double clr, double eps, double weight_decay) nogil
    int c_grad_norm_pow(bint f64, double *out, const void *g, int64_t n, double p) nogil
    int c_grad_scale(bint f64, void *g, int64_t n, double c) nogil
    int c_grad_clamp(bint f64, void *g, int64_t n, double c) nogil


cdef class FlatRun:
    """One flat run's parameter, gradient and up to three optimizer state buffers, checked
    once here and kept alive, so a step is one GIL-free C call without per-step checks.

    amsgrad: (exp_avg, exp_avg_sq, max_exp_avg_sq); rmsprop: (square_avg, momentum_buffer
    or None, grad_avg or None); adagrad: (sum,).
    """
    cdef object param, grad, states
    cdef void *pp
    cdef void *pg
    cdef void *s[3]
    cdef int64_t n
    cdef bint f32

    def __init__(self, param, grad, *states):
        P = _param(param)
        if not cnp.PyArray_IS_C_CONTIGUOUS(P):
            raise ValueError("param must be C-contiguous")
        G = _out(grad, "grad", P.shape, P)
        _separate(G, "grad", ((P, "param"),))
        if len(states) > 3:
            raise ValueError(f"at most 3 state buffers, got {len(states)}")
        checked = [None if a is None else _state(a, "state", P) for a in states]
        for a in checked:
            if a is not None:
                _separate(a, "state", ((P, "param"), (G, "grad")))
        self.param, self.grad, self.states = P, G, tuple(checked)
        self.pp, self.pg = _ptr(P), _ptr(G)
        for i in range(3):
            self.s[i] = _ptr(checked[i]) if i < len(checked) else NULL
        self.n = P.size
        self.f32 = _f32(P)

    def amsgrad(self, int64_t step, double lr, double beta1, double beta2, double eps,
                double weight_decay, bint decoupled):
        if self.s[0] == NULL or self.s[1] == NULL or self.s[2] == NULL:
            raise ValueError("amsgrad needs exp_avg, exp_avg_sq and max_exp_avg_sq buffers")
        cdef int rc
        with nogil:
            rc = c_amsgrad_step(not self.f32, self.pp, self.pg, self.s[0], self.s[1], self.s[2],
                                self.n, lr, beta1, beta2, eps, weight_decay, decoupled, step)
        _check(rc, "amsgrad")

    def rmsprop(self, double lr, double alpha, double eps, double weight_decay, double momentum,
                bint centered):
        if self.s[0] == NULL or (momentum > 0 and self.s[1] == NULL) or \
                (centered != (self.s[2] != NULL)):
            raise ValueError("rmsprop needs square_avg, a momentum buffer for momentum > 0 and "
                             "grad_avg exactly when centered")
        cdef int rc
        with nogil:
            rc = c_rmsprop_step(not self.f32, self.pp, self.pg, self.s[0], self.s[1], self.s[2],
                                self.n, lr, alpha, eps, weight_decay, momentum)
        _check(rc, "rmsprop")

    def adagrad(self, double clr, double eps, double weight_decay):
        if self.s[0] == NULL:
            raise ValueError("adagrad needs its sum buffer")
        cdef int rc
        with nogil:
            rc = c_adagrad_step(not self.f32, self.pp, self.pg, self.s[0], self.n, clr, eps,
                                weight_decay)
        _check(rc, "adagrad")


cdef object _grad_array(object g):
    if not isinstance(g, np.ndarray):
        raise TypeError(f"grad must be a numpy array, got {type(g).__name__}")
    G = g
    if cnp.PyArray_TYPE(G) != cnp.NPY_FLOAT32 and cnp.PyArray_TYPE(G) != cnp.NPY_FLOAT64:
        raise TypeError(f"grad must have dtype float32 or float64, got {G.dtype}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(G):
        raise ValueError("grad must be C-contiguous")
    return G


def grad_norm_pow(grad, double norm_type):
    """Σ |g|^p over grad (any shape), or max |g| for p = inf, accumulated in double."""
    G = _grad_array(grad)
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0 (or inf), got {norm_type}")
    cdef double out = 0
    cdef int rc
    cdef void *p = _ptr(G)
    cdef int64_t n = G.size
    cdef bint f64 = not _f32(G)
    with nogil:
        rc = c_grad_norm_pow(f64, &out, p, n, norm_type)
    _check(rc, "grad_norm_pow")
    return out


def grad_scale(grad, double c, bint clamp=False):
    """In place: grad *= c, or with clamp grad = clamp(grad, -c, c) (c >= 0)."""
    G = _grad_array(grad)
    if not G.flags.writeable:
        raise ValueError("grad must be writeable")
    if clamp and not c >= 0:
        raise ValueError(f"clip_value must be >= 0, got {c}")
    cdef int rc
    cdef void *p = _ptr(G)
    cdef int64_t n = G.size
    cdef bint f64 = not _f32(G)
    with nogil:
        rc = c_grad_clamp(f64, p, n, c) if clamp else c_grad_scale(f64, p, n, c)
    _check(rc, "grad_scale")


# ---------------------------------------------------------------- the functional API (fastprop.ops)
cdef tuple _update_arrays(param, grad, tuple states):
    """param, grad (cast to param's dtype) and the in-place state buffers, checked: shapes,
    dtypes, contiguity, and no two of them overlapping."""
    P = _param(param)
    G = _floats(grad, "grad", P.ndim, P, "param")
    if G.shape != P.shape:
        raise ValueError(f"grad has shape {G.shape}, expected {P.shape} (param's)")
    if not G.flags.writeable or not G.flags.c_contiguous:  # FlatRun holds grads it may write
        G = np.array(G, order="C")
    arrays = [(P, "param")]
    for a, name in states:
        if a is not None:
            arrays.append((_state(a, name, P), name))
    for i, (a, name) in enumerate(arrays):
        _separate(a, name, ((G, "grad"),) + tuple(o for j, o in enumerate(arrays) if j != i))
    return P, G, [a for a, _ in arrays[1:]]


cdef _step_number(step):
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be an integer >= 1, got {step!r}")


def amsgrad_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *, step, double lr=1e-3,
                 double beta1=0.9, double beta2=0.999, double eps=1e-8, double weight_decay=0.0,
                 decoupled=False):
    """One Adam/AdamW update with amsgrad=True in place, as torch.optim: the denominator
    uses max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq). step counts from 1.

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
    if exp_avg is None or exp_avg_sq is None or max_exp_avg_sq is None:
        raise TypeError("exp_avg, exp_avg_sq and max_exp_avg_sq must be arrays shaped like param")
    P, G, (M, V, VM) = _update_arrays(param, grad, ((exp_avg, "exp_avg"),
                                                     (exp_avg_sq, "exp_avg_sq"),
                                                     (max_exp_avg_sq, "max_exp_avg_sq")))
    _step_number(step)
    for v, name in ((lr, "lr"), (eps, "eps"), (weight_decay, "weight_decay")):
        _nonneg(v, name)
    for v, name in ((beta1, "beta1"), (beta2, "beta2")):
        if not 0 <= v < 1:
            raise ValueError(f"{name} must be in [0, 1), got {v}")
    FlatRun(P, G, M, V, VM).amsgrad(step, lr, beta1, beta2, eps, weight_decay, bool(decoupled))


def rmsprop_step(param, grad, square_avg, *, double lr=1e-2, double alpha=0.99, double eps=1e-8,
                 double weight_decay=0.0, double momentum=0.0, momentum_buffer=None,
                 grad_avg=None):
    """One RMSprop update in place, as torch.optim.RMSprop; centered when grad_avg is given,
    momentum > 0 needs momentum_buffer.

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
    if square_avg is None:
        raise TypeError("square_avg must be an array shaped like param")
    if momentum > 0 and momentum_buffer is None:
        raise ValueError("rmsprop_step with momentum needs momentum_buffer")
    P, G, states = _update_arrays(param, grad, ((square_avg, "square_avg"),
                                                (momentum_buffer if momentum > 0 else None,
                                                 "momentum_buffer"),
                                                (grad_avg, "grad_avg")))
    for v, name in ((lr, "lr"), (eps, "eps"), (weight_decay, "weight_decay"),
                    (momentum, "momentum")):
        _nonneg(v, name)
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    S = states[0]
    B = states[1] if momentum > 0 else None
    A = states[len(states) - 1] if grad_avg is not None else None  # (no wraparound in bindings)
    FlatRun(P, G, S, B, A).rmsprop(lr, alpha, eps, weight_decay, momentum, A is not None)


def adagrad_step(param, grad, state_sum, *, step, double lr=1e-2, double lr_decay=0.0,
                 double eps=1e-10, double weight_decay=0.0):
    """One Adagrad update in place, as torch.optim.Adagrad: the step size is
    lr / (1 + (step − 1)·lr_decay); step counts from 1.

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
    if state_sum is None:
        raise TypeError("state_sum must be an array shaped like param")
    P, G, (S,) = _update_arrays(param, grad, ((state_sum, "state_sum"),))
    _step_number(step)
    for v, name in ((lr, "lr"), (lr_decay, "lr_decay"), (eps, "eps"),
                    (weight_decay, "weight_decay")):
        _nonneg(v, name)
    FlatRun(P, G, S).adagrad(lr / (1 + (step - 1) * lr_decay), eps, weight_decay)
