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
