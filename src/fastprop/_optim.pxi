# Bindings of csrc/optim.c: one SGD/Adam update in place, and FlatUpdate over a flat run.
# Included by _kernels.pyx (one extension module); the shared checks live there.

# ---------------------------------------------------------------- optimizers

cdef object _state(object a, str name, object param):
    """An in-place optimizer buffer shaped like param."""
    if a is None:
        raise TypeError(f"{name} must be an array shaped like param, got None")
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    return _out(a, name, param.shape, param)


cdef object _param(object param):
    if not isinstance(param, np.ndarray):
        raise TypeError(f"param must be a numpy array, got {type(param).__name__}")
    P = param
    if cnp.PyArray_TYPE(P) != cnp.NPY_FLOAT32 and cnp.PyArray_TYPE(P) != cnp.NPY_FLOAT64:
        raise TypeError(f"param must have dtype float32 or float64, got {P.dtype}")
    return _out(P, "param", P.shape, P)


cdef _nonneg(double v, str name):
    if not v >= 0 or v == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {v}")


def sgd_step(param, grad, *, lr, momentum_buffer=None, double momentum=0.0,
             double dampening=0.0, nesterov=False, double weight_decay=0.0, first_step=False):
    """One SGD update in place, as torch.optim.SGD.

    g = grad + weight_decay·param; with momentum: buf = g on the first step, else
    momentum·buf + (1 − dampening)·g; g = g + momentum·buf (Nesterov) or buf; param −= lr·g.

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
    P = _param(param)
    G = _floats(grad, "grad", P.ndim, P, "param")
    if G.shape != P.shape:
        raise ValueError(f"grad has shape {G.shape}, expected {P.shape} (param's)")
    cdef double lr_ = lr
    _nonneg(lr_, "lr")
    _nonneg(momentum, "momentum")
    _nonneg(weight_decay, "weight_decay")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("nesterov needs momentum > 0 and dampening = 0 (as torch.optim.SGD)")
    Bf = None
    if momentum != 0:
        Bf = _state(momentum_buffer, "momentum_buffer", P)
        _separate(Bf, "momentum_buffer", ((P, "param"), (G, "grad")))
    _separate(P, "param", ((G, "grad"),))
    cdef int64_t n = P.size
    cdef int nest = bool(nesterov), first = bool(first_step)
    cdef int rc
    cdef vptr p_P = _ptr(P), p_G = _ptr(G), p_Bf = _ptr(Bf)
    cdef bint f64 = not _f32(P)
    with nogil:
        rc = c_sgd_step(f64, p_P, p_G, p_Bf, n, lr_, momentum, dampening, nest, weight_decay, first)
    _check(rc, "sgd_step")


def adam_step(param, grad, exp_avg, exp_avg_sq, *, step, double lr=1e-3, double beta1=0.9,
              double beta2=0.999, double eps=1e-8, double weight_decay=0.0, decoupled=False):
    """One Adam (decoupled=False) or AdamW (decoupled=True) update in place, as torch.optim.

    step is the 1-based count of this update (for the bias corrections).

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
    P = _param(param)
    G = _floats(grad, "grad", P.ndim, P, "param")
    if G.shape != P.shape:
        raise ValueError(f"grad has shape {G.shape}, expected {P.shape} (param's)")
    M = _state(exp_avg, "exp_avg", P)
    V = _state(exp_avg_sq, "exp_avg_sq", P)
    for arr, name in ((P, "param"), (M, "exp_avg"), (V, "exp_avg_sq")):
        _separate(arr, name, ((G, "grad"),) + tuple(
            (o, on) for o, on in ((P, "param"), (M, "exp_avg"), (V, "exp_avg_sq")) if o is not arr))
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be an integer >= 1, got {step!r}")
    _nonneg(lr, "lr")
    _nonneg(eps, "eps")
    _nonneg(weight_decay, "weight_decay")
    for v, name in ((beta1, "beta1"), (beta2, "beta2")):
        if not 0 <= v < 1:
            raise ValueError(f"{name} must be in [0, 1), got {v}")
    cdef int64_t n = P.size, t = step
    cdef int dec = bool(decoupled)
    cdef int rc
    cdef vptr p_P = _ptr(P), p_G = _ptr(G), p_M = _ptr(M), p_V = _ptr(V)
    cdef bint f64 = not _f32(P)
    with nogil:
        rc = c_adam_step(f64, p_P, p_G, p_M, p_V, n, lr, beta1, beta2, eps, weight_decay, dec, t)
    _check(rc, "adam_step")


cdef class FlatUpdate:
    """An optimizer's update over one flat run: the arrays are checked once here and
    kept alive, so each step is one GIL-free C call with no per-step checks.

    kind "sgd" takes state (momentum_buffer or None); "adam" takes (exp_avg, exp_avg_sq).
    """
    cdef object param, grad, s1, s2
    cdef void *pp
    cdef void *pg
    cdef void *p1
    cdef void *p2
    cdef int64_t n
    cdef bint f32

    def __init__(self, param, grad, state1=None, state2=None):
        P = _param(param)
        if not cnp.PyArray_IS_C_CONTIGUOUS(P):
            raise ValueError("param must be C-contiguous")
        G = _out(grad, "grad", P.shape, P)
        _separate(G, "grad", ((P, "param"),))
        self.param, self.grad = P, G
        self.s1 = None if state1 is None else _state(state1, "state", P)
        self.s2 = None if state2 is None else _state(state2, "state", P)
        for s in (self.s1, self.s2):
            if s is not None:
                _separate(s, "state", ((P, "param"), (G, "grad")))
        self.pp, self.pg, self.p1, self.p2 = _ptr(P), _ptr(G), _ptr(self.s1), _ptr(self.s2)
        self.n = P.size
        self.f32 = _f32(P)

    def sgd(self, double lr, double momentum, double dampening, bint nesterov,
            double weight_decay, bint first_step):
        if momentum != 0 and self.p1 == NULL:
            raise ValueError("momentum needs a momentum buffer")
        cdef int rc
        with nogil:
            rc = c_sgd_step(not self.f32, self.pp, self.pg, self.p1, self.n, lr, momentum,
                            dampening, nesterov, weight_decay, first_step)
        _check(rc, "sgd")

    def adam(self, int64_t step, double lr, double beta1, double beta2, double eps,
             double weight_decay, bint decoupled):
        if self.p1 == NULL or self.p2 == NULL:
            raise ValueError("adam needs exp_avg and exp_avg_sq buffers")
        cdef int rc
        with nogil:
            rc = c_adam_step(not self.f32, self.pp, self.pg, self.p1, self.p2, self.n, lr, beta1,
                             beta2, eps, weight_decay, decoupled, step)
        _check(rc, "adam")
