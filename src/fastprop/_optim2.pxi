# ---------------------------------------------------------------- RMSprop, Adagrad, AMSGrad, clipping
# Included from _kernels.pyx. The C kernels are csrc/optim.c's; each binding is written once
# over the fused type `real` (the float/double choice is the C symbol's suffix).

cdef extern from "fastprop.h" nogil:
    int amsgrad_step_f32(float *param, const float *grad, float *m, float *v, float *vmax,
                         int64_t n, double lr, double beta1, double beta2, double eps,
                         double weight_decay, int decoupled, int64_t step)
    int amsgrad_step_f64(double *param, const double *grad, double *m, double *v, double *vmax,
                         int64_t n, double lr, double beta1, double beta2, double eps,
                         double weight_decay, int decoupled, int64_t step)
    int rmsprop_step_f32(float *param, const float *grad, float *square_avg, float *momentum_buf,
                         float *grad_avg, int64_t n, double lr, double alpha, double eps,
                         double weight_decay, double momentum)
    int rmsprop_step_f64(double *param, const double *grad, double *square_avg,
                         double *momentum_buf, double *grad_avg, int64_t n, double lr,
                         double alpha, double eps, double weight_decay, double momentum)
    int adagrad_step_f32(float *param, const float *grad, float *sum, int64_t n, double clr,
                         double eps, double weight_decay)
    int adagrad_step_f64(double *param, const double *grad, double *sum, int64_t n, double clr,
                         double eps, double weight_decay)
    int grad_norm_pow_f32(double *out, const float *g, int64_t n, double p)
    int grad_norm_pow_f64(double *out, const double *g, int64_t n, double p)
    int grad_scale_f32(float *g, int64_t n, double c)
    int grad_scale_f64(double *g, int64_t n, double c)
    int grad_clamp_f32(float *g, int64_t n, double c)
    int grad_clamp_f64(double *g, int64_t n, double c)

ctypedef fused real:
    float
    double


cdef int _amsgrad(real *param, FlatRun r, int64_t step, double lr, double beta1, double beta2,
                  double eps, double weight_decay, bint decoupled) noexcept nogil:
    if real is float:
        return amsgrad_step_f32(param, <float*>r.pg, <float*>r.s[0], <float*>r.s[1],
                                <float*>r.s[2], r.n, lr, beta1, beta2, eps, weight_decay,
                                decoupled, step)
    return amsgrad_step_f64(param, <double*>r.pg, <double*>r.s[0], <double*>r.s[1],
                            <double*>r.s[2], r.n, lr, beta1, beta2, eps, weight_decay,
                            decoupled, step)


cdef int _rmsprop(real *param, FlatRun r, double lr, double alpha, double eps,
                  double weight_decay, double momentum) noexcept nogil:
    if real is float:
        return rmsprop_step_f32(param, <float*>r.pg, <float*>r.s[0], <float*>r.s[1],
                                <float*>r.s[2], r.n, lr, alpha, eps, weight_decay, momentum)
    return rmsprop_step_f64(param, <double*>r.pg, <double*>r.s[0], <double*>r.s[1],
                            <double*>r.s[2], r.n, lr, alpha, eps, weight_decay, momentum)


cdef int _adagrad(real *param, FlatRun r, double clr, double eps,
                  double weight_decay) noexcept nogil:
    if real is float:
        return adagrad_step_f32(param, <float*>r.pg, <float*>r.s[0], r.n, clr, eps, weight_decay)
    return adagrad_step_f64(param, <double*>r.pg, <double*>r.s[0], r.n, clr, eps, weight_decay)


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
            if self.f32:
                rc = _amsgrad(<float*>self.pp, self, step, lr, beta1, beta2, eps, weight_decay,
                              decoupled)
            else:
                rc = _amsgrad(<double*>self.pp, self, step, lr, beta1, beta2, eps, weight_decay,
                              decoupled)
        _check(rc, "amsgrad")

    def rmsprop(self, double lr, double alpha, double eps, double weight_decay, double momentum,
                bint centered):
        if self.s[0] == NULL or (momentum > 0 and self.s[1] == NULL) or \
                (centered != (self.s[2] != NULL)):
            raise ValueError("rmsprop needs square_avg, a momentum buffer for momentum > 0 and "
                             "grad_avg exactly when centered")
        cdef int rc
        with nogil:
            if self.f32:
                rc = _rmsprop(<float*>self.pp, self, lr, alpha, eps, weight_decay, momentum)
            else:
                rc = _rmsprop(<double*>self.pp, self, lr, alpha, eps, weight_decay, momentum)
        _check(rc, "rmsprop")

    def adagrad(self, double clr, double eps, double weight_decay):
        if self.s[0] == NULL:
            raise ValueError("adagrad needs its sum buffer")
        cdef int rc
        with nogil:
            if self.f32:
                rc = _adagrad(<float*>self.pp, self, clr, eps, weight_decay)
            else:
                rc = _adagrad(<double*>self.pp, self, clr, eps, weight_decay)
        _check(rc, "adagrad")


cdef int _norm_pow(double *out, real *g, int64_t n, double p) noexcept nogil:
    if real is float:
        return grad_norm_pow_f32(out, g, n, p)
    return grad_norm_pow_f64(out, g, n, p)


cdef int _scale(real *g, int64_t n, double c, bint clamp) noexcept nogil:
    if real is float:
        return grad_clamp_f32(g, n, c) if clamp else grad_scale_f32(g, n, c)
    return grad_clamp_f64(g, n, c) if clamp else grad_scale_f64(g, n, c)


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
    cdef bint f32 = _f32(G)
    with nogil:
        if f32:
            rc = _norm_pow(&out, <float*>p, n, norm_type)
        else:
            rc = _norm_pow(&out, <double*>p, n, norm_type)
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
    cdef bint f32 = _f32(G)
    with nogil:
        if f32:
            rc = _scale(<float*>p, n, c, clamp)
        else:
            rc = _scale(<double*>p, n, c, clamp)
    _check(rc, "grad_scale")
