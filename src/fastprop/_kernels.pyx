# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Bindings: check every array, release the GIL, call the C kernels.

The only place where C meets Python. Read-only inputs that are not C-contiguous
are copied; output buffers (``out=``, ``grad_*=``, optimizer state) are written
in place, so they must already be C-contiguous, writeable, of the right dtype
and shape, and must not overlap the inputs (an exact alias is allowed where the
kernel is elementwise). Any violation raises ``TypeError``/``ValueError`` naming
the argument before anything is written.
"""
import numpy as np
cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer
from libc.float cimport DBL_MAX, FLT_MAX
from libc.stdint cimport int64_t, uintptr_t

cnp.import_array()

ACTIVATIONS = ("identity", "relu", "leaky_relu", "abs", "sigmoid", "tanh",
               "softplus", "cos", "gelu", "silu")
# activations whose derivative follows from the saved output y (leaky_relu too, when its slope > 0)
FROM_OUTPUT = ("identity", "relu", "sigmoid", "tanh")
_ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}


def _load_blas():
    """Hand SciPy's BLAS gemm to the C side as function pointers."""
    from scipy.linalg import cython_blas
    s = cython_blas.__pyx_capi__["sgemm"]
    d = cython_blas.__pyx_capi__["dgemm"]
    fp_set_blas(<fp_sgemm_fn>PyCapsule_GetPointer(s, PyCapsule_GetName(s)),
                <fp_dgemm_fn>PyCapsule_GetPointer(d, PyCapsule_GetName(d)))


_load_blas()


def set_num_threads(int n):
    """Caps the threads of fastprop's own large passes (the optimizer updates over
    buffers of 2^20 elements and more); 0 means one per online CPU. The BLAS keeps its own
    setting (OPENBLAS_NUM_THREADS, threadpoolctl)."""
    global fp_num_threads
    if n < 0 or n > FP_MAX_THREADS:
        raise ValueError(f"n must be in [0, {FP_MAX_THREADS}], got {n}")
    fp_num_threads = n


def get_num_threads():
    """The threads fastprop's own large passes use at most."""
    cdef int n
    with nogil:
        n = fp_threads()
    return n


def _threads_from_env():
    import os
    value = os.environ.get("FASTPROP_NUM_THREADS")
    if value:
        try:
            set_num_threads(int(value))
        except ValueError:
            raise ValueError(f"FASTPROP_NUM_THREADS must be a whole number in "
                             f"[0, {FP_MAX_THREADS}], got {value!r}") from None


_threads_from_env()


# ---------------------------------------------------------------- checks

cdef inline bint _f32(cnp.ndarray a):
    return cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32


cdef inline void* _ptr(a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef object _floats(object a, str name, int ndim, object like=None,
                         str like_name=None):
    """A read-only float input, C-contiguous (copied when it is not)."""
    if not isinstance(a, np.ndarray):
        if a is None:
            raise TypeError(f"{name} must be a float32 or float64 array, got None")
        try:
            a = np.asarray(a, dtype=None if like is None else like.dtype)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be a float32 or float64 array: {e}") from None
    arr = a
    cdef int t = cnp.PyArray_TYPE(arr)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    if like is not None and t != cnp.PyArray_TYPE(like):
        raise TypeError(f"{name} has dtype {arr.dtype} but {like_name} has dtype "
                        f"{like.dtype}: one call uses one dtype (cast with .astype)")
    if ndim >= 0 and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        arr = np.ascontiguousarray(arr)
    return arr


cdef object _target(object t, str name, tuple shape, object dtype, str like_name):
    """A loss target of the given shape: any real dtype, cast to dtype."""
    arr = np.asarray(t)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real-valued array, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {shape} "
                         f"(the shape of {like_name})")
    return np.ascontiguousarray(arr, dtype=dtype)


cdef object _out(object o, str name, tuple shape, object like, bint zero=False):
    """An output buffer: allocated when None, else checked to be written in place."""
    if o is None:
        return np.zeros(shape, like.dtype) if zero else np.empty(shape, like.dtype)
    if not isinstance(o, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(o).__name__}")
    arr = o
    if cnp.PyArray_TYPE(arr) != cnp.PyArray_TYPE(like):
        raise TypeError(f"{name} must have dtype {like.dtype}, got {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{name} must be C-contiguous: it is written in place")
    if not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name} is read-only: it is written in place")
    return arr


cdef inline bint _overlap(cnp.ndarray a, cnp.ndarray b):
    cdef uintptr_t a0 = <uintptr_t>cnp.PyArray_DATA(a), b0 = <uintptr_t>cnp.PyArray_DATA(b)
    cdef uintptr_t a1 = a0 + <uintptr_t>cnp.PyArray_NBYTES(a)
    cdef uintptr_t b1 = b0 + <uintptr_t>cnp.PyArray_NBYTES(b)
    return a0 < b1 and b0 < a1


cdef _separate(cnp.ndarray out, str name, tuple others, bint alias_ok=False):
    """out must not overlap the arrays of `others` ((array, name) pairs, None skipped);
    an exact alias (same memory, same size) is allowed for elementwise kernels."""
    for pair in others:
        if pair is None or pair[0] is None:
            continue
        other = <cnp.ndarray>pair[0]
        if not _overlap(out, other):
            continue
        if alias_ok and cnp.PyArray_DATA(out) == cnp.PyArray_DATA(other) and \
                cnp.PyArray_NBYTES(out) == cnp.PyArray_NBYTES(other):
            continue
        raise ValueError(f"{name} overlaps {pair[1]} in memory; "
                         f"pass a separate buffer" + ("" if not alias_ok else
                                                      " or exactly the same array"))


cdef int64_t _first_bad_label(object labels, int64_t classes):
    """The first index of the int64 labels outside [0, classes), or -1 (without the GIL)."""
    cdef int64_t *p = <int64_t*>_ptr(labels)
    cdef int64_t n = labels.size, i
    with nogil:
        i = fp_first_bad_label(p, n, classes)
    return i


cdef int64_t _first_outside(object A, double lo, double hi):
    """The first flat index of A (C-contiguous float32/float64) outside [lo, hi] (NaN too), or -1."""
    cdef void *p = _ptr(A)
    cdef int64_t n = A.size, i
    if _f32(A):
        with nogil:
            i = first_outside_f32(<float*>p, n, lo, hi)
    else:
        with nogil:
            i = first_outside_f64(<double*>p, n, lo, hi)
    return i


cdef _check_range(object A, str name, double lo, double hi, str what):
    cdef int64_t i = _first_outside(A, lo, hi)
    if i >= 0:
        where = np.unravel_index(i, A.shape)
        raise ValueError(f"{name}[{', '.join(map(str, where))}] = {A.reshape(-1)[i]} {what}")


def check_range(a, str name, double lo, double hi, str what):
    """ValueError naming ``name`` and ``what`` is wrong when the float array a holds a value
    outside [lo, hi] or a NaN."""
    _check_range(_floats(a, name, -1), name, lo, hi, what)


def check_finite(a, str name):
    """ValueError naming ``name`` when the float array a holds a NaN or an infinity."""
    A = _floats(a, name, -1)
    cdef double big = FLT_MAX if _f32(A) else DBL_MAX
    _check_range(A, name, -big, big, "is not finite")


cdef int _act(object activation) except -1:
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a string, got {type(activation).__name__}")
    code = _ACT_CODE.get(activation)
    if code is None:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    return code


cdef fp_act_params _params(double negative_slope, double beta, double threshold) except *:
    if beta == 0 or beta != beta:
        raise ValueError(f"softplus beta must be a nonzero number, got {beta}")
    cdef fp_act_params p
    p.negative_slope = negative_slope
    p.beta = beta
    p.threshold = threshold
    return p


cdef int _check(int rc, str where) except -1:
    if rc == FP_OK:
        return 0
    if rc == FP_ERR_SIZE:
        raise ValueError(f"{where}: a dimension exceeds the BLAS's 32-bit int limit")
    if rc == FP_ERR_NOBLAS:
        raise RuntimeError(f"{where}: no BLAS was loaded")
    if rc == FP_ERR_LABEL:
        raise ValueError(f"{where}: a label is outside [0, classes)")
    if rc == FP_ERR_ACT:
        raise ValueError(f"{where}: unknown activation or missing input for its derivative")
    raise ValueError(f"{where}: invalid arguments (error {rc})")


# ---------------------------------------------------------------- GEMM

def gemm(a, b, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None):
    """``out = alpha * op(a) @ op(b) + beta * out`` through the BLAS (row-major).

    a : (m, k), or (k, m) with trans_a; b : (k, n), or (n, k) with trans_b;
    out : (m, n), read when beta != 0 (it must then be given).
    """
    A = _floats(a, "a", 2)
    Bm = _floats(b, "b", 2, A, "a")
    cdef int64_t m = A.shape[1] if trans_a else A.shape[0]
    cdef int64_t k = A.shape[0] if trans_a else A.shape[1]
    cdef int64_t kb = Bm.shape[1] if trans_b else Bm.shape[0]
    cdef int64_t n = Bm.shape[0] if trans_b else Bm.shape[1]
    if k != kb:
        raise ValueError(f"inner dimensions differ: op(a) is ({m}, {k}), op(b) is ({kb}, {n})")
    if beta != 0 and out is None:
        raise ValueError("beta != 0 reads out, so out must be given")
    C = _out(out, "out", (m, n), A)
    _separate(C, "out", ((A, "a"), (Bm, "b")))
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef double al = alpha, be = beta
    cdef int rc
    cdef void *p_A = _ptr(A)
    cdef void *p_Bm = _ptr(Bm)
    cdef void *p_C = _ptr(C)
    if _f32(A):
        with nogil:
            rc = gemm_f32(ta, tb, m, n, k, <float>al, <float*>p_A, <float*>p_Bm,
                          <float>be, <float*>p_C)
    else:
        with nogil:
            rc = gemm_f64(ta, tb, m, n, k, al, <double*>p_A, <double*>p_Bm, be,
                          <double*>p_C)
    _check(rc, "gemm")
    return C


# ---------------------------------------------------------------- dense

def dense_forward(x, weight, bias=None, activation="identity", *, out=None, preact_out=None,
                  double negative_slope=0.01, double beta=1.0, double threshold=20.0):
    """``y = f(x @ weight.T + bias)``: one GEMM, then bias and activation fused in one pass.

    x : (B, in); weight : (out, in); bias : (out,) or None; returns y : (B, out).
    preact_out : (B, out), receives ``x @ weight.T + bias`` when given.
    """
    X = _floats(x, "x", 2)
    W = _floats(weight, "weight", 2, X, "x")
    cdef int64_t batch = X.shape[0], n_in = X.shape[1], n_out = W.shape[0]
    if W.shape[1] != n_in:
        raise ValueError(f"weight has shape {W.shape}, expected (out_features, {n_in}) "
                         f"for x of shape {X.shape}")
    b = None
    if bias is not None:
        b = _floats(bias, "bias", 1, X, "x")
        if b.shape[0] != n_out:
            raise ValueError(f"bias has shape {b.shape}, expected ({n_out},)")
    cdef int act = _act(activation)
    cdef fp_act_params p = _params(negative_slope, beta, threshold)
    Y = _out(out, "out", (batch, n_out), X)
    _separate(Y, "out", ((X, "x"), (W, "weight"), (b, "bias")))
    Z = None
    if preact_out is not None:
        Z = _out(preact_out, "preact_out", (batch, n_out), X)
        _separate(Z, "preact_out", ((X, "x"), (W, "weight"), (b, "bias"), (Y, "out")))
    cdef int rc
    cdef void *p_Y = _ptr(Y)
    cdef void *p_Z = _ptr(Z)
    cdef void *p_X = _ptr(X)
    cdef void *p_W = _ptr(W)
    cdef void *p_b = _ptr(b)
    if _f32(X):
        with nogil:
            rc = dense_forward_f32(<float*>p_Y, <float*>p_Z, <float*>p_X,
                                   <float*>p_W, <float*>p_b, batch, n_in, n_out, act, &p)
    else:
        with nogil:
            rc = dense_forward_f64(<double*>p_Y, <double*>p_Z, <double*>p_X,
                                   <double*>p_W, <double*>p_b, batch, n_in, n_out, act, &p)
    _check(rc, "dense_forward")
    return Y


def dense_backward(grad_out, x, weight, *, bias=True, input_grad=True, grad_input=None,
                   grad_weight=None, grad_bias=None, accumulate=False, accumulate_input=None):
    """Vector–Jacobian products of ``x @ weight.T + bias``.

    grad_weight (+)= grad_out.T @ x, grad_bias (+)= grad_out.sum(0),
    grad_input (+)= grad_out @ weight (None when input_grad is False).
    grad_out : (B, out); x : (B, in); weight : (out, in).
    accumulate=True adds into grad_weight and grad_bias instead of overwriting them;
    accumulate_input does the same for grad_input (default: as accumulate).
    Returns (grad_input, grad_weight, grad_bias).
    """
    G = _floats(grad_out, "grad_out", 2)
    X = _floats(x, "x", 2, G, "grad_out")
    W = _floats(weight, "weight", 2, G, "grad_out")
    cdef int64_t batch = G.shape[0], n_out = G.shape[1], n_in = X.shape[1]
    if X.shape[0] != batch:
        raise ValueError(f"x has {X.shape[0]} rows but grad_out has {batch}")
    if W.shape != (n_out, n_in):
        raise ValueError(f"weight has shape {W.shape}, expected ({n_out}, {n_in}) "
                         f"for grad_out {G.shape} and x {X.shape}")
    cdef bint acc = bool(accumulate)
    cdef bint acc_x = acc if accumulate_input is None else bool(accumulate_input)
    inputs = ((G, "grad_out"), (X, "x"), (W, "weight"))
    dW = _out(grad_weight, "grad_weight", (n_out, n_in), G, acc)
    _separate(dW, "grad_weight", inputs)
    db = None
    if bias:
        db = _out(grad_bias, "grad_bias", (n_out,), G, acc)
        _separate(db, "grad_bias", inputs + ((dW, "grad_weight"),))
    dX = None
    if input_grad:
        dX = _out(grad_input, "grad_input", (batch, n_in), G, acc_x)
        _separate(dX, "grad_input", inputs + ((dW, "grad_weight"), (db, "grad_bias")))
    cdef int rc
    cdef void *p_dX = _ptr(dX)
    cdef void *p_dW = _ptr(dW)
    cdef void *p_db = _ptr(db)
    cdef void *p_G = _ptr(G)
    cdef void *p_X = _ptr(X)
    cdef void *p_W = _ptr(W)
    if _f32(G):
        with nogil:
            rc = dense_backward_f32(<float*>p_dX, <float*>p_dW, <float*>p_db,
                                    <float*>p_G, <float*>p_X, <float*>p_W,
                                    batch, n_in, n_out, acc, acc_x)
    else:
        with nogil:
            rc = dense_backward_f64(<double*>p_dX, <double*>p_dW, <double*>p_db,
                                    <double*>p_G, <double*>p_X, <double*>p_W,
                                    batch, n_in, n_out, acc, acc_x)
    _check(rc, "dense_backward")
    return dX, dW, db


# ---------------------------------------------------------------- activations

def activation_forward(x, activation, *, out=None, double negative_slope=0.01,
                       double beta=1.0, double threshold=20.0):
    """``y = f(x)`` elementwise, any shape; out=x works in place."""
    X = _floats(x, "x", -1)
    cdef int act = _act(activation)
    cdef fp_act_params p = _params(negative_slope, beta, threshold)
    Y = _out(out, "out", X.shape, X)
    _separate(Y, "out", ((X, "x"),), True)
    cdef int64_t n = X.size
    cdef int rc
    cdef void *p_Y = _ptr(Y)
    cdef void *p_X = _ptr(X)
    if _f32(X):
        with nogil:
            rc = activation_forward_f32(<float*>p_Y, <float*>p_X, n, act, &p)
    else:
        with nogil:
            rc = activation_forward_f64(<double*>p_Y, <double*>p_X, n, act, &p)
    _check(rc, "activation_forward")
    return Y


def activation_backward(grad, activation, *, x=None, y=None, out=None,
                        double negative_slope=0.01, double beta=1.0, double threshold=20.0):
    """``grad ⊙ f′`` in one pass; out=grad works in place.

    relu, leaky_relu (slope > 0), sigmoid, tanh and identity need only y, the saved
    output; the others need x, the input.
    """
    G = _floats(grad, "grad", -1)
    cdef int act = _act(activation)
    cdef fp_act_params p = _params(negative_slope, beta, threshold)
    X = None if x is None else _floats(x, "x", -1, G, "grad")
    Y = None if y is None else _floats(y, "y", -1, G, "grad")
    for arr, name in ((X, "x"), (Y, "y")):
        if arr is not None and arr.shape != G.shape:
            raise ValueError(f"{name} has shape {arr.shape}, expected {G.shape} (grad's)")
    from_output = activation in FROM_OUTPUT or (activation == "leaky_relu" and negative_slope > 0)
    if X is None and not (from_output and Y is not None) and activation != "identity":
        need = "x (the input) or y (the output)" if from_output else "x (the input)"
        raise ValueError(f"the backward of {activation!r} needs {need}")
    D = _out(out, "out", G.shape, G)
    _separate(D, "out", ((G, "grad"), (X, "x"), (Y, "y")), True)
    cdef int64_t n = G.size
    cdef int rc
    cdef void *p_D = _ptr(D)
    cdef void *p_G = _ptr(G)
    cdef void *p_X = _ptr(X)
    cdef void *p_Y = _ptr(Y)
    if _f32(G):
        with nogil:
            rc = activation_backward_f32(<float*>p_D, <float*>p_G, <float*>p_X,
                                         <float*>p_Y, n, act, &p)
    else:
        with nogil:
            rc = activation_backward_f64(<double*>p_D, <double*>p_G, <double*>p_X,
                                         <double*>p_Y, n, act, &p)
    _check(rc, "activation_backward")
    return D


def activation_second(grad, activation, *, x, out=None, double negative_slope=0.01,
                      double beta=1.0, double threshold=20.0):
    """``grad ⊙ f″(x)`` in one pass (0 for relu, leaky_relu and abs, almost everywhere);
    out=grad works in place. x is the input (the pre-activation)."""
    G = _floats(grad, "grad", -1)
    cdef int act = _act(activation)
    cdef fp_act_params p = _params(negative_slope, beta, threshold)
    X = _floats(x, "x", -1, G, "grad")
    if X.shape != G.shape:
        raise ValueError(f"x has shape {X.shape}, expected {G.shape} (grad's)")
    D = _out(out, "out", G.shape, G)
    _separate(D, "out", ((G, "grad"),), True)
    _separate(D, "out", ((X, "x"),))
    cdef int64_t n = G.size
    cdef int rc
    cdef void *p_D = _ptr(D)
    cdef void *p_G = _ptr(G)
    cdef void *p_X = _ptr(X)
    if _f32(G):
        with nogil:
            rc = activation_second_f32(<float*>p_D, <float*>p_G, <float*>p_X, n, act, &p)
    else:
        with nogil:
            rc = activation_second_f64(<double*>p_D, <double*>p_G, <double*>p_X, n, act, &p)
    _check(rc, "activation_second")
    return D


def activation_rbackward(grad, rgrad, activation, *, x, rx, out=None, rout=None,
                         double negative_slope=0.01, double beta=1.0, double threshold=20.0):
    """The backward ``grad ⊙ f′(x)`` and its R-operator in one pass.

    Along a direction where the input moves by rx and the upstream gradient by rgrad:
    out = grad ⊙ f′(x), rout = rgrad ⊙ f′(x) + grad ⊙ f″(x) ⊙ rx. All arrays have one
    shape; out=grad and rout=rgrad work in place. Returns (out, rout).
    """
    G = _floats(grad, "grad", -1)
    RG = _floats(rgrad, "rgrad", -1, G, "grad")
    cdef int act = _act(activation)
    cdef fp_act_params p = _params(negative_slope, beta, threshold)
    X = _floats(x, "x", -1, G, "grad")
    RX = _floats(rx, "rx", -1, G, "grad")
    for arr, name in ((RG, "rgrad"), (X, "x"), (RX, "rx")):
        if arr.shape != G.shape:
            raise ValueError(f"{name} has shape {arr.shape}, expected {G.shape} (grad's)")
    D = _out(out, "out", G.shape, G)
    _separate(D, "out", ((G, "grad"),), True)
    _separate(D, "out", ((RG, "rgrad"), (X, "x"), (RX, "rx")))
    RD = _out(rout, "rout", G.shape, G)
    _separate(RD, "rout", ((RG, "rgrad"),), True)
    _separate(RD, "rout", ((G, "grad"), (X, "x"), (RX, "rx"), (D, "out")))
    cdef int64_t n = G.size
    cdef int rc
    cdef void *p_D = _ptr(D)
    cdef void *p_RD = _ptr(RD)
    cdef void *p_G = _ptr(G)
    cdef void *p_RG = _ptr(RG)
    cdef void *p_X = _ptr(X)
    cdef void *p_RX = _ptr(RX)
    if _f32(G):
        with nogil:
            rc = activation_rbackward_f32(<float*>p_D, <float*>p_RD, <float*>p_G, <float*>p_RG,
                                          <float*>p_RX, <float*>p_X, n, act, &p)
    else:
        with nogil:
            rc = activation_rbackward_f64(<double*>p_D, <double*>p_RD, <double*>p_G,
                                          <double*>p_RG, <double*>p_RX, <double*>p_X, n, act, &p)
    _check(rc, "activation_rbackward")
    return D, RD


cdef tuple _prelu_shapes(object X, object W):
    if W.shape[0] != 1 and W.shape[0] != X.shape[1]:
        raise ValueError(f"weight has shape {W.shape}, expected (1,) or ({X.shape[1]},) "
                         f"for x of shape {X.shape}")
    return X.shape[0], X.shape[1], W.shape[0]


def prelu_forward(x, weight, *, out=None):
    """``y = x if x > 0 else weight[c] * x``; x : (B, C), weight : (1,) or (C,)."""
    X = _floats(x, "x", 2)
    W = _floats(weight, "weight", 1, X, "x")
    cdef int64_t batch, channels, n_w
    batch, channels, n_w = _prelu_shapes(X, W)
    Y = _out(out, "out", X.shape, X)
    _separate(Y, "out", ((X, "x"),), True)
    _separate(Y, "out", ((W, "weight"),))
    cdef int rc
    cdef void *p_Y = _ptr(Y)
    cdef void *p_X = _ptr(X)
    cdef void *p_W = _ptr(W)
    if _f32(X):
        with nogil:
            rc = prelu_forward_f32(<float*>p_Y, <float*>p_X, <float*>p_W,
                                   batch, channels, n_w)
    else:
        with nogil:
            rc = prelu_forward_f64(<double*>p_Y, <double*>p_X, <double*>p_W,
                                   batch, channels, n_w)
    _check(rc, "prelu_forward")
    return Y


def prelu_backward(grad, x, weight, *, out=None, grad_weight=None, accumulate=False):
    """grad_input = grad if x > 0 else weight[c]*grad; grad_weight[c] (+)= Σ_{x≤0} grad·x.

    Returns (grad_input, grad_weight); out=grad works in place.
    """
    G = _floats(grad, "grad", 2)
    X = _floats(x, "x", 2, G, "grad")
    W = _floats(weight, "weight", 1, G, "grad")
    if X.shape != G.shape:
        raise ValueError(f"x has shape {X.shape}, expected {G.shape} (grad's)")
    cdef int64_t batch, channels, n_w
    batch, channels, n_w = _prelu_shapes(X, W)
    cdef bint acc = bool(accumulate)
    dW = _out(grad_weight, "grad_weight", W.shape, G, acc)
    _separate(dW, "grad_weight", ((G, "grad"), (X, "x"), (W, "weight")))
    D = _out(out, "out", G.shape, G)
    _separate(D, "out", ((G, "grad"), (X, "x")), True)
    _separate(D, "out", ((W, "weight"), (dW, "grad_weight")))
    cdef int rc
    cdef void *p_D = _ptr(D)
    cdef void *p_dW = _ptr(dW)
    cdef void *p_G = _ptr(G)
    cdef void *p_X = _ptr(X)
    cdef void *p_W = _ptr(W)
    if _f32(G):
        with nogil:
            rc = prelu_backward_f32(<float*>p_D, <float*>p_dW, <float*>p_G,
                                    <float*>p_X, <float*>p_W, batch, channels, n_w, acc)
    else:
        with nogil:
            rc = prelu_backward_f64(<double*>p_D, <double*>p_dW, <double*>p_G,
                                    <double*>p_X, <double*>p_W, batch, channels, n_w, acc)
    _check(rc, "prelu_backward")
    return D, dW


def prelu_rforward(x, weight, v_weight, *, rx=None, out=None):
    """The R-operator of PReLU: ``(x > 0 ? rx : weight[c]·rx) + (x > 0 ? 0 : x·v_weight[c])``.

    x, rx, out : (B, C); weight, v_weight : (1,) or (C,). rx None: a fixed input (R{x} = 0).
    """
    X = _floats(x, "x", 2)
    W = _floats(weight, "weight", 1, X, "x")
    VW = _floats(v_weight, "v_weight", 1, X, "x")
    cdef int64_t batch, channels, n_w
    batch, channels, n_w = _prelu_shapes(X, W)
    if VW.shape != W.shape:
        raise ValueError(f"v_weight has shape {VW.shape}, expected {W.shape} (weight's)")
    RX = None
    if rx is not None:
        RX = _floats(rx, "rx", 2, X, "x")
        if RX.shape != X.shape:
            raise ValueError(f"rx has shape {RX.shape}, expected {X.shape} (x's)")
    Y = _out(out, "out", X.shape, X)
    _separate(Y, "out", ((RX, "rx"),), True)
    _separate(Y, "out", ((X, "x"), (W, "weight"), (VW, "v_weight")))
    cdef int rc
    cdef void *p_Y = _ptr(Y)
    cdef void *p_RX = _ptr(RX)
    cdef void *p_X = _ptr(X)
    cdef void *p_W = _ptr(W)
    cdef void *p_VW = _ptr(VW)
    if _f32(X):
        with nogil:
            rc = prelu_rforward_f32(<float*>p_Y, <float*>p_RX, <float*>p_X, <float*>p_W,
                                    <float*>p_VW, batch, channels, n_w)
    else:
        with nogil:
            rc = prelu_rforward_f64(<double*>p_Y, <double*>p_RX, <double*>p_X, <double*>p_W,
                                    <double*>p_VW, batch, channels, n_w)
    _check(rc, "prelu_rforward")
    return Y


def prelu_rbackward(grad, rgrad, x, weight, v_weight, *, rx=None, out=None, rout=None,
                    hv_weight=None, accumulate=False):
    """The R-backward of PReLU, with R{x} = rx and the slopes' direction v_weight.

    out = (x > 0 ? grad : weight[c]·grad); rout = (x > 0 ? rgrad : weight[c]·rgrad +
    v_weight[c]·grad); hv_weight[c] (+)= Σ_{x ≤ 0} (rgrad·x + grad·rx). grad None (the
    Gauss–Newton pass) drops grad's terms and gives out None; rx None drops rx's.
    out=grad and rout=rgrad work in place. Returns (out, rout, hv_weight).
    """
    RG = _floats(rgrad, "rgrad", 2)
    X = _floats(x, "x", 2, RG, "rgrad")
    W = _floats(weight, "weight", 1, RG, "rgrad")
    VW = _floats(v_weight, "v_weight", 1, RG, "rgrad")
    cdef int64_t batch, channels, n_w
    batch, channels, n_w = _prelu_shapes(X, W)
    if VW.shape != W.shape:
        raise ValueError(f"v_weight has shape {VW.shape}, expected {W.shape} (weight's)")
    G = None if grad is None else _floats(grad, "grad", 2, RG, "rgrad")
    RX = None if rx is None else _floats(rx, "rx", 2, RG, "rgrad")
    for arr, name in ((G, "grad"), (X, "x"), (RX, "rx")):
        if arr is not None and arr.shape != RG.shape:
            raise ValueError(f"{name} has shape {arr.shape}, expected {RG.shape} (rgrad's)")
    inputs = ((X, "x"), (W, "weight"), (VW, "v_weight"), (RX, "rx"))
    cdef bint acc = bool(accumulate)
    dW = _out(hv_weight, "hv_weight", W.shape, RG, acc)
    _separate(dW, "hv_weight", inputs + ((G, "grad"), (RG, "rgrad")))
    D = None
    if G is not None:
        D = _out(out, "out", RG.shape, RG)
        _separate(D, "out", ((G, "grad"),), True)
        _separate(D, "out", inputs + ((RG, "rgrad"), (dW, "hv_weight")))
    RD = _out(rout, "rout", RG.shape, RG)
    _separate(RD, "rout", ((RG, "rgrad"),), True)
    _separate(RD, "rout", inputs + ((G, "grad"), (D, "out"), (dW, "hv_weight")))
    cdef int rc
    cdef void *p_D = _ptr(D)
    cdef void *p_RD = _ptr(RD)
    cdef void *p_dW = _ptr(dW)
    cdef void *p_G = _ptr(G)
    cdef void *p_RG = _ptr(RG)
    cdef void *p_X = _ptr(X)
    cdef void *p_RX = _ptr(RX)
    cdef void *p_W = _ptr(W)
    cdef void *p_VW = _ptr(VW)
    if _f32(RG):
        with nogil:
            rc = prelu_rbackward_f32(<float*>p_D, <float*>p_RD, <float*>p_dW, <float*>p_G,
                                     <float*>p_RG, <float*>p_X, <float*>p_RX, <float*>p_W,
                                     <float*>p_VW, batch, channels, n_w, acc)
    else:
        with nogil:
            rc = prelu_rbackward_f64(<double*>p_D, <double*>p_RD, <double*>p_dW, <double*>p_G,
                                     <double*>p_RG, <double*>p_X, <double*>p_RX, <double*>p_W,
                                     <double*>p_VW, batch, channels, n_w, acc)
    _check(rc, "prelu_rbackward")
    return D, RD, dW


# ---------------------------------------------------------------- softmax and losses

cdef _softmax(logits, out, bint log_space, str where):
    Z = _floats(logits, "logits", 2)
    if Z.shape[1] < 1:
        raise ValueError(f"logits must have at least one class, got shape {Z.shape}")
    P = _out(out, "out", Z.shape, Z)
    _separate(P, "out", ((Z, "logits"),), True)
    cdef int64_t batch = Z.shape[0], classes = Z.shape[1]
    cdef int rc
    cdef void *p_P = _ptr(P)
    cdef void *p_Z = _ptr(Z)
    if _f32(Z):
        with nogil:
            rc = softmax_forward_f32(<float*>p_P, <float*>p_Z, batch, classes, log_space)
    else:
        with nogil:
            rc = softmax_forward_f64(<double*>p_P, <double*>p_Z, batch, classes, log_space)
    _check(rc, where)
    return P


def softmax(logits, *, out=None):
    """Row-wise softmax of (B, C) logits, shifted by the row maximum."""
    return _softmax(logits, out, False, "softmax")


def log_softmax(logits, *, out=None):
    """Row-wise log-softmax of (B, C) logits (log-sum-exp)."""
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


def softmax_cross_entropy(logits, target, *, grad_out=None, compute_grad=True):
    """Softmax + cross-entropy, value and gradient in one pass.

    logits : (B, C); target : integer labels (B,) in [0, C) or soft targets (B, C).
    loss = mean_i [logsumexp(z_i) − Σ_j t_ij z_ij]; grad = (softmax(z) Σ_j t_ij − t) / B.
    Returns (loss as float, grad or None); grad_out=logits works in place.
    """
    Z = _floats(logits, "logits", 2)
    cdef int64_t batch = Z.shape[0], classes = Z.shape[1]
    if batch < 1 or classes < 1:
        raise ValueError(f"logits must have at least one row and one class, got shape {Z.shape}")
    labels, soft = _xent_target(target, Z)
    D = _loss_grad(grad_out, compute_grad, Z, "logits", ((soft, "target"), (labels, "target")))
    cdef double loss = 0
    cdef int rc
    cdef void *p_D = _ptr(D)
    cdef void *p_Z = _ptr(Z)
    cdef void *p_labels = _ptr(labels)
    cdef void *p_soft = _ptr(soft)
    if _f32(Z):
        with nogil:
            rc = softmax_xent_forward_backward_f32(&loss, <float*>p_D, <float*>p_Z,
                                                   <int64_t*>p_labels, <float*>p_soft,
                                                   batch, classes)
    else:
        with nogil:
            rc = softmax_xent_forward_backward_f64(&loss, <double*>p_D, <double*>p_Z,
                                                   <int64_t*>p_labels, <double*>p_soft,
                                                   batch, classes)
    _check(rc, "softmax_cross_entropy")
    return loss, D


def sigmoid_bce(logits, target, *, grad_out=None, compute_grad=True):
    """Sigmoid + binary cross-entropy from logits, value and gradient in one pass.

    loss = mean(max(z, 0) − z·y + log1p(exp(−|z|))); grad = (σ(z) − y) / n.
    target has the shape of logits (any real dtype, cast to the logits' dtype).
    """
    Z = _floats(logits, "logits", -1)
    if Z.size < 1:
        raise ValueError("logits is empty: the loss is a mean over its elements")
    T = _target(target, "target", Z.shape, Z.dtype, "logits")
    _check_range(T, "target", 0, 1, "is outside [0, 1] (BCE targets are probabilities)")
    D = _loss_grad(grad_out, compute_grad, Z, "logits", ((T, "target"),))
    cdef double loss = 0
    cdef int64_t n = Z.size
    cdef int rc
    cdef void *p_D = _ptr(D)
    cdef void *p_Z = _ptr(Z)
    cdef void *p_T = _ptr(T)
    if _f32(Z):
        with nogil:
            rc = sigmoid_bce_forward_backward_f32(&loss, <float*>p_D, <float*>p_Z,
                                                  <float*>p_T, n)
    else:
        with nogil:
            rc = sigmoid_bce_forward_backward_f64(&loss, <double*>p_D, <double*>p_Z,
                                                  <double*>p_T, n)
    _check(rc, "sigmoid_bce")
    return loss, D


def mse(pred, target, *, grad_out=None, compute_grad=True):
    """Mean squared error: loss = mean((pred − target)²); grad = 2 (pred − target) / n."""
    P = _floats(pred, "pred", -1)
    if P.size < 1:
        raise ValueError("pred is empty: the loss is a mean over its elements")
    T = _target(target, "target", P.shape, P.dtype, "pred")
    D = _loss_grad(grad_out, compute_grad, P, "pred", ((T, "target"),))
    cdef double loss = 0
    cdef int64_t n = P.size
    cdef int rc
    cdef void *p_D = _ptr(D)
    cdef void *p_P = _ptr(P)
    cdef void *p_T = _ptr(T)
    if _f32(P):
        with nogil:
            rc = mse_forward_backward_f32(&loss, <float*>p_D, <float*>p_P,
                                          <float*>p_T, n)
    else:
        with nogil:
            rc = mse_forward_backward_f64(&loss, <double*>p_D, <double*>p_P,
                                          <double*>p_T, n)
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


def softmax_cross_entropy_hvp(logits, target, v, *, out=None):
    """``(∂²J/∂z²) v`` of softmax_cross_entropy at logits z, row-wise:
    ``Σ_j t_ij (p ⊙ v − p (pᵀv)) / B`` with p = softmax(z) (Σ_j t_ij = 1 for labels).

    logits, v, out : (B, C); target : labels (B,) or soft targets (B, C). out must not
    overlap logits or v.
    """
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
    cdef void *p_D = _ptr(D)
    cdef void *p_Z = _ptr(Z)
    cdef void *p_V = _ptr(V)
    cdef void *p_T = _ptr(soft)
    if _f32(Z):
        with nogil:
            rc = softmax_xent_hvp_f32(<float*>p_D, <float*>p_Z, <float*>p_V, <float*>p_T,
                                      batch, classes)
    else:
        with nogil:
            rc = softmax_xent_hvp_f64(<double*>p_D, <double*>p_Z, <double*>p_V, <double*>p_T,
                                      batch, classes)
    _check(rc, "softmax_cross_entropy_hvp")
    return D


def sigmoid_bce_hvp(logits, target, v, *, out=None):
    """``(∂²J/∂z²) v`` of sigmoid_bce: ``σ(z)(1 − σ(z)) v / n``; target only checked."""
    Z, T, V, D = _hvp_args(logits, "logits", target, v, out)
    _separate(D, "out", ((V, "v"),), True)
    cdef int64_t n = Z.size
    cdef int rc
    cdef void *p_D = _ptr(D)
    cdef void *p_Z = _ptr(Z)
    cdef void *p_V = _ptr(V)
    if _f32(Z):
        with nogil:
            rc = sigmoid_bce_hvp_f32(<float*>p_D, <float*>p_Z, <float*>p_V, n)
    else:
        with nogil:
            rc = sigmoid_bce_hvp_f64(<double*>p_D, <double*>p_Z, <double*>p_V, n)
    _check(rc, "sigmoid_bce_hvp")
    return D


def mse_hvp(pred, target, v, *, out=None):
    """``(∂²J/∂p²) v`` of mse: ``2 v / n``; pred and target only checked."""
    P, T, V, D = _hvp_args(pred, "pred", target, v, out)
    _separate(D, "out", ((V, "v"),), True)
    cdef int64_t n = P.size
    cdef int rc
    cdef void *p_D = _ptr(D)
    cdef void *p_V = _ptr(V)
    if _f32(P):
        with nogil:
            rc = mse_hvp_f32(<float*>p_D, <float*>p_V, n)
    else:
        with nogil:
            rc = mse_hvp_f64(<double*>p_D, <double*>p_V, n)
    _check(rc, "mse_hvp")
    return D


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
    cdef void *p_P = _ptr(P)
    cdef void *p_G = _ptr(G)
    cdef void *p_Bf = _ptr(Bf)
    if _f32(P):
        with nogil:
            rc = sgd_step_f32(<float*>p_P, <float*>p_G, <float*>p_Bf, n, lr_,
                              momentum, dampening, nest, weight_decay, first)
    else:
        with nogil:
            rc = sgd_step_f64(<double*>p_P, <double*>p_G, <double*>p_Bf, n, lr_,
                              momentum, dampening, nest, weight_decay, first)
    _check(rc, "sgd_step")


def adam_step(param, grad, exp_avg, exp_avg_sq, *, step, double lr=1e-3, double beta1=0.9,
              double beta2=0.999, double eps=1e-8, double weight_decay=0.0, decoupled=False):
    """One Adam (decoupled=False) or AdamW (decoupled=True) update in place, as torch.optim.

    step is the 1-based count of this update (for the bias corrections).
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
    cdef void *p_P = _ptr(P)
    cdef void *p_G = _ptr(G)
    cdef void *p_M = _ptr(M)
    cdef void *p_V = _ptr(V)
    if _f32(P):
        with nogil:
            rc = adam_step_f32(<float*>p_P, <float*>p_G, <float*>p_M, <float*>p_V,
                               n, lr, beta1, beta2, eps, weight_decay, dec, t)
    else:
        with nogil:
            rc = adam_step_f64(<double*>p_P, <double*>p_G, <double*>p_M,
                               <double*>p_V, n, lr, beta1, beta2, eps, weight_decay, dec, t)
    _check(rc, "adam_step")


# ---------------------------------------------------------------- the fused training step

from libc.stdlib cimport calloc, free

LOSSES = ("softmax_cross_entropy", "sigmoid_bce", "mse")


cdef class Network:
    """The layer loop of a chain of dense blocks ``y = f(x Wᵀ + b)`` in C.

    blocks: a list of (weight, bias or None, grad_weight, grad_bias or None, activation,
    {negative_slope, beta, threshold}). The arrays are views into a model's flat
    buffers and are kept alive here; gradients are overwritten by ``train``.
    Workspaces (outputs, kept pre-activations, two gradient buffers) are allocated
    once per batch size.
    """
    cdef fp_dense_block *blocks
    cdef int n
    cdef readonly object dtype
    cdef readonly int64_t n_in, n_out, batch
    cdef int64_t width
    cdef list arrays, ys, preacts
    cdef object g0, g1
    cdef dict spaces

    def __cinit__(self):
        self.blocks = NULL

    def __init__(self, list blocks):
        if not blocks:
            raise ValueError("a Network needs at least one dense block")
        self.n = len(blocks)
        self.blocks = <fp_dense_block*>calloc(self.n, sizeof(fp_dense_block))
        if self.blocks == NULL:
            raise MemoryError()
        self.arrays = []
        self.dtype = np.asarray(blocks[0][0]).dtype
        self.width = 0
        cdef fp_dense_block *k
        for i, (w, b, dw, db, activation, params) in enumerate(blocks):
            W = _out(w, f"block {i} weight", np.shape(w), np.empty(0, self.dtype))
            if W.ndim != 2:
                raise ValueError(f"block {i} weight must be 2-D, got shape {W.shape}")
            dW = _out(dw, f"block {i} grad_weight", W.shape, W)
            k = &self.blocks[i]
            k.in_ = W.shape[1]
            k.out = W.shape[0]
            if i > 0 and k.in_ != self.blocks[i - 1].out:
                raise ValueError(f"block {i} takes {k.in_} features but block {i - 1} "
                                 f"gives {self.blocks[i - 1].out}")
            k.act = _act(activation)
            k.p = _params(params.get("negative_slope", 0.01), params.get("beta", 1.0),
                          params.get("threshold", 20.0))
            k.w = _ptr(W)
            k.dw = _ptr(dW)
            self.arrays += [W, dW]
            if b is not None:
                B = _out(b, f"block {i} bias", (k.out,), W)
                dB = _out(db, f"block {i} grad_bias", (k.out,), W)
                k.b = _ptr(B)
                k.db = _ptr(dB)
                self.arrays += [B, dB]
            self.width = max(self.width, k.out)  # ∇x of block 0 is never formed
        self.n_in = self.blocks[0].in_
        self.n_out = self.blocks[self.n - 1].out
        self.batch = -1
        self.spaces = {}

    def __dealloc__(self):
        free(self.blocks)

    cdef _workspace(self, int64_t batch):
        """Outputs, kept pre-activations and the gradient ping-pong pair for this batch size.

        The two most recent batch sizes keep their buffers (an epoch's last partial batch
        does not reallocate the full-size ones)."""
        if batch == self.batch:
            return
        if batch not in self.spaces:
            ys, preacts = [], []
            for i in range(self.n):
                act = ACTIVATIONS[self.blocks[i].act]
                needs_x = act not in FROM_OUTPUT and not (
                    act == "leaky_relu" and self.blocks[i].p.negative_slope > 0)
                ys.append(np.empty((batch, self.blocks[i].out), self.dtype))
                preacts.append(np.empty((batch, self.blocks[i].out), self.dtype) if needs_x else None)
            if len(self.spaces) >= 2:
                del self.spaces[next(iter(self.spaces))]
            self.spaces[batch] = (ys, preacts, np.empty(batch * self.width, self.dtype),
                                  np.empty(batch * self.width, self.dtype))
        self.ys, self.preacts, self.g0, self.g1 = self.spaces[batch]
        cdef fp_dense_block *k
        for i in range(self.n):
            k = &self.blocks[i]
            k.y = _ptr(self.ys[i])
            k.preact = _ptr(self.preacts[i])
        self.batch = batch

    cdef _input(self, x):
        X = _floats(x, "x", 2)
        if X.dtype != self.dtype:
            raise TypeError(f"x has dtype {X.dtype}, expected {self.dtype} (the network's)")
        if X.shape[1] != self.n_in:
            raise ValueError(f"x has shape {X.shape}, expected (batch, {self.n_in})")
        return X

    @property
    def output(self):
        """The last block's output of the latest forward (a view of the workspace)."""
        return None if self.batch < 0 else self.ys[self.n - 1]

    def forward(self, x):
        """Runs the chain on x (batch, n_in); returns the output workspace (batch, n_out)."""
        X = self._input(x)
        cdef int64_t batch = X.shape[0]
        self._workspace(batch)
        cdef void *px = _ptr(X)
        cdef int rc
        if _f32(X):
            with nogil:
                rc = network_forward_f32(self.blocks, self.n, <float*>px, batch)
        else:
            with nogil:
                rc = network_forward_f64(self.blocks, self.n, <double*>px, batch)
        _check(rc, "Network.forward")
        return self.ys[self.n - 1]

    def train(self, x, target, str loss):
        """Forward, the loss and its gradient, and the backward; overwrites every gradient.

        target: integer labels (batch,) or soft targets (batch, n_out) for
        softmax_cross_entropy; an array shaped like the output for sigmoid_bce and mse.
        Returns the loss. Nothing is written when an argument is invalid.
        """
        X = self._input(x)
        cdef int64_t batch = X.shape[0]
        if batch < 1:
            raise ValueError("x must have at least one row: the loss is a mean")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
        cdef int kind = LOSSES.index(loss)
        out_shape = (batch, self.n_out)
        labels = None
        T = None
        cdef int64_t bad
        t = np.asarray(target)
        if kind == FP_LOSS_SOFTMAX_XENT and t.ndim == 1:
            if t.dtype.kind not in "iu":
                raise TypeError(f"labels must be integers, got dtype {t.dtype}")
            if t.shape[0] != batch:
                raise ValueError(f"got {t.shape[0]} labels for {batch} rows of x")
            labels = np.ascontiguousarray(t, dtype=np.int64)
            if t.dtype.kind == "u" and labels.size and t.max() >= self.n_out:
                bad = int(np.argmax(t >= self.n_out))
            else:
                bad = _first_bad_label(labels, self.n_out)
            if bad >= 0:
                raise ValueError(f"label {t[bad]} at index {bad} is outside [0, {self.n_out})")
        else:
            T = _target(t, "target", out_shape, self.dtype, "the network's output")
            if kind == FP_LOSS_SIGMOID_BCE:
                _check_range(T, "target", 0, 1, "is outside [0, 1] (BCE targets are probabilities)")
        self._workspace(batch)
        cdef double value = 0
        cdef void *px = _ptr(X)
        cdef void *pl = _ptr(labels)
        cdef void *pt = _ptr(T)
        cdef void *g0 = _ptr(self.g0)
        cdef void *g1 = _ptr(self.g1)
        cdef int rc
        if _f32(X):
            with nogil:
                rc = network_train_f32(&value, self.blocks, self.n, <float*>px, batch, kind,
                                       <int64_t*>pl, <float*>pt, <float*>g0, <float*>g1)
        else:
            with nogil:
                rc = network_train_f64(&value, self.blocks, self.n, <double*>px, batch, kind,
                                       <int64_t*>pl, <double*>pt, <double*>g0, <double*>g1)
        _check(rc, "Network.train")
        return value


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
            if self.f32:
                rc = sgd_step_f32(<float*>self.pp, <float*>self.pg, <float*>self.p1, self.n, lr,
                                  momentum, dampening, nesterov, weight_decay, first_step)
            else:
                rc = sgd_step_f64(<double*>self.pp, <double*>self.pg, <double*>self.p1, self.n, lr,
                                  momentum, dampening, nesterov, weight_decay, first_step)
        _check(rc, "sgd")

    def adam(self, int64_t step, double lr, double beta1, double beta2, double eps,
             double weight_decay, bint decoupled):
        if self.p1 == NULL or self.p2 == NULL:
            raise ValueError("adam needs exp_avg and exp_avg_sq buffers")
        cdef int rc
        with nogil:
            if self.f32:
                rc = adam_step_f32(<float*>self.pp, <float*>self.pg, <float*>self.p1,
                                   <float*>self.p2, self.n, lr, beta1, beta2, eps,
                                   weight_decay, decoupled, step)
            else:
                rc = adam_step_f64(<double*>self.pp, <double*>self.pg, <double*>self.p1,
                                   <double*>self.p2, self.n, lr, beta1, beta2, eps,
                                   weight_decay, decoupled, step)
        _check(rc, "adam")


# ---------------------------------------------------------------- Gaussian output unit

def gaussian_nll(pred, target, *, grad_out=None, compute_grad=True):
    """Gaussian negative log-likelihood (without its constant ½ log 2π), value and gradient in one pass.

    pred : (B, 2k) = [μ, log σ²]; target : (B, k) (any real dtype, cast to pred's).
    loss = mean(½ log σ² + ½ (target − μ)² / σ²) over the B·k elements;
    grad = [−(target − μ)/σ², ½ (1 − (target − μ)²/σ²)] / (B·k). σ² is never formed
    (e^{−log σ²/2} multiplies instead), so large |log σ²| neither overflows nor divides by 0.
    Returns (loss as float, grad or None); grad_out=pred works in place.
    """
    Z = _floats(pred, "pred", 2)
    cdef int64_t batch = Z.shape[0], k = Z.shape[1] // 2
    if batch < 1 or Z.shape[1] < 2 or Z.shape[1] % 2:
        raise ValueError(f"pred must be (batch >= 1, 2k) = [mean, log variance], got shape {Z.shape}")
    T = _target(target, "target", (batch, k), Z.dtype, "pred's mean half")
    D = _loss_grad(grad_out, compute_grad, Z, "pred", ((T, "target"),))
    cdef double loss = 0
    cdef int rc
    cdef void *p_D = _ptr(D)
    cdef void *p_Z = _ptr(Z)
    cdef void *p_T = _ptr(T)
    if _f32(Z):
        with nogil:
            rc = gaussian_nll_forward_backward_f32(&loss, <float*>p_D, <float*>p_Z,
                                                   <float*>p_T, batch, k)
    else:
        with nogil:
            rc = gaussian_nll_forward_backward_f64(&loss, <double*>p_D, <double*>p_Z,
                                                   <double*>p_T, batch, k)
    _check(rc, "gaussian_nll")
    return loss, D


# ---------------------------------------------------------------- graph merge nodes

from cpython.mem cimport PyMem_Malloc, PyMem_Free


cdef list _same_inputs(object inputs, str name):
    """A non-empty sequence of float arrays of one dtype, 2-D with one batch size."""
    if isinstance(inputs, np.ndarray) or not isinstance(inputs, (list, tuple)) or not inputs:
        raise TypeError(f"{name} must be a non-empty list of arrays")
    first = _floats(inputs[0], f"{name}[0]", 2)
    arrays = [first]
    for i in range(1, len(inputs)):
        a = _floats(inputs[i], f"{name}[{i}]", 2, first, f"{name}[0]")
        if a.shape[0] != first.shape[0]:
            raise ValueError(f"{name}[{i}] has {a.shape[0]} rows but {name}[0] has {first.shape[0]}")
        arrays.append(a)
    return arrays


cdef bint _flag(object accumulate, int i, int n) except -1:
    """accumulate as one bool for all, or one per input."""
    if isinstance(accumulate, (list, tuple)):
        if len(accumulate) != n:
            raise ValueError(f"accumulate has {len(accumulate)} entries for {n} inputs")
        return bool(accumulate[i])
    return bool(accumulate)


def add_forward(inputs, *, out=None):
    """``out = Σ_k inputs[k]``; inputs : a list of (B, n) arrays of one shape and dtype.

    out may be exactly inputs[0] (in place); it must not overlap the others."""
    xs = _same_inputs(inputs, "inputs")
    X0 = xs[0]
    for i, a in enumerate(xs):
        if a.shape != X0.shape:
            raise ValueError(f"inputs[{i}] has shape {a.shape}, expected {X0.shape} (inputs[0]'s)")
    Y = _out(out, "out", X0.shape, X0)
    _separate(Y, "out", ((X0, "inputs[0]"),), True)
    _separate(Y, "out", tuple((a, f"inputs[{i}]") for i, a in enumerate(xs) if i > 0))
    cdef int k = len(xs)
    cdef int64_t n = X0.size
    cdef const void **ptrs = <const void**>PyMem_Malloc(k * sizeof(void*))
    if ptrs == NULL:
        raise MemoryError()
    for i in range(k):
        ptrs[i] = _ptr(xs[i])
    cdef int rc
    cdef void *p_Y = _ptr(Y)
    try:
        if _f32(X0):
            with nogil:
                rc = add_forward_f32(<float*>p_Y, <const float**>ptrs, k, n)
        else:
            with nogil:
                rc = add_forward_f64(<double*>p_Y, <const double**>ptrs, k, n)
    finally:
        PyMem_Free(ptrs)
    _check(rc, "add_forward")
    return Y


def add_backward(grad, *, out=None, accumulate=False):
    """The gradient of each summand of an Add: ``out (+)= grad`` (any shape); also the
    grad table's accumulation of one consumer's contribution."""
    G = _floats(grad, "grad", -1)
    cdef bint acc = bool(accumulate)
    D = _out(out, "out", G.shape, G, acc)
    _separate(D, "out", ((G, "grad"),), not acc)
    cdef int64_t n = G.size
    cdef int rc
    cdef void *p_D = _ptr(D)
    cdef void *p_G = _ptr(G)
    if _f32(G):
        with nogil:
            rc = add_backward_f32(<float*>p_D, <float*>p_G, n, acc)
    else:
        with nogil:
            rc = add_backward_f64(<double*>p_D, <double*>p_G, n, acc)
    _check(rc, "add_backward")
    return D


def mul_forward(a, b, *, out=None):
    """``out = a ⊙ b`` elementwise; a and b of one shape; out may be exactly a or b."""
    A = _floats(a, "a", -1)
    Bm = _floats(b, "b", -1, A, "a")
    if Bm.shape != A.shape:
        raise ValueError(f"b has shape {Bm.shape}, expected {A.shape} (a's)")
    Y = _out(out, "out", A.shape, A)
    _separate(Y, "out", ((A, "a"), (Bm, "b")), True)
    cdef int64_t n = A.size
    cdef int rc
    cdef void *p_Y = _ptr(Y)
    cdef void *p_A = _ptr(A)
    cdef void *p_B = _ptr(Bm)
    if _f32(A):
        with nogil:
            rc = mul_forward_f32(<float*>p_Y, <float*>p_A, <float*>p_B, n)
    else:
        with nogil:
            rc = mul_forward_f64(<double*>p_Y, <double*>p_A, <double*>p_B, n)
    _check(rc, "mul_forward")
    return Y


def mul_backward(grad, a, b, *, grad_a=None, grad_b=None, need_a=True, need_b=True,
                 accumulate_a=False, accumulate_b=False):
    """Gradients of ``a ⊙ b``: grad_a (+)= grad ⊙ b, grad_b (+)= grad ⊙ a.

    need_a / need_b False skips that side (None is returned for it). grad_a may be exactly
    grad_b (the gradient of x ⊙ x: both contributions are added into it).
    Returns (grad_a, grad_b)."""
    G = _floats(grad, "grad", -1)
    A = _floats(a, "a", -1, G, "grad")
    Bm = _floats(b, "b", -1, G, "grad")
    for arr, name in ((A, "a"), (Bm, "b")):
        if arr.shape != G.shape:
            raise ValueError(f"{name} has shape {arr.shape}, expected {G.shape} (grad's)")
    inputs = ((G, "grad"), (A, "a"), (Bm, "b"))
    cdef bint acc_a = bool(accumulate_a), acc_b = bool(accumulate_b)
    DA = DB = None
    if need_a:
        DA = _out(grad_a, "grad_a", G.shape, G, acc_a)
        _separate(DA, "grad_a", inputs)
    if need_b:
        if need_a and grad_b is not None and grad_b is grad_a:
            DB = DA
        else:
            DB = _out(grad_b, "grad_b", G.shape, G, acc_b)
            _separate(DB, "grad_b", inputs + ((DA, "grad_a"),))
    cdef int64_t n = G.size
    cdef int rc
    cdef void *p_DA = _ptr(DA)
    cdef void *p_DB = _ptr(DB)
    cdef void *p_G = _ptr(G)
    cdef void *p_A = _ptr(A)
    cdef void *p_B = _ptr(Bm)
    if _f32(G):
        with nogil:
            rc = mul_backward_f32(<float*>p_DA, <float*>p_DB, <float*>p_G, <float*>p_A,
                                  <float*>p_B, n, acc_a, acc_b)
    else:
        with nogil:
            rc = mul_backward_f64(<double*>p_DA, <double*>p_DB, <double*>p_G, <double*>p_A,
                                  <double*>p_B, n, acc_a, acc_b)
    _check(rc, "mul_backward")
    return DA, DB


def concat_forward(inputs, *, out=None):
    """``out = [inputs[0], inputs[1], ...]`` along the features: (B, Σ widths)."""
    xs = _same_inputs(inputs, "inputs")
    X0 = xs[0]
    cdef int64_t batch = X0.shape[0], width = sum(a.shape[1] for a in xs), offset = 0, w
    Y = _out(out, "out", (batch, width), X0)
    _separate(Y, "out", tuple((a, f"inputs[{i}]") for i, a in enumerate(xs)))
    cdef int rc = FP_OK
    cdef void *p_Y = _ptr(Y)
    cdef void *p_X
    cdef bint f32 = _f32(X0)
    for a in xs:
        w = a.shape[1]
        p_X = _ptr(a)
        with nogil:
            if f32:
                rc = concat_forward_f32(<float*>p_Y, <float*>p_X, batch, width, offset, w)
            else:
                rc = concat_forward_f64(<double*>p_Y, <double*>p_X, batch, width, offset, w)
        _check(rc, "concat_forward")
        offset += w
    return Y


def concat_backward(grad, widths, *, outs=None, needed=None, accumulate=False):
    """Gradients of a Concat: outs[i] (+)= grad[:, offset_i:offset_i + widths[i]].

    grad : (B, Σ widths); outs : a list of (B, widths[i]) buffers or None (allocated);
    needed : one bool per input (False: skipped, None returned); accumulate : one bool
    for all or one per input. Returns the list of gradients."""
    G = _floats(grad, "grad", 2)
    ws = [int(w) for w in widths]
    cdef int n_in = len(ws)
    if n_in < 1 or any(w < 0 for w in ws) or sum(ws) != G.shape[1]:
        raise ValueError(f"widths {ws} must be >= 0 and sum to grad's {G.shape[1]} columns")
    if outs is None:
        outs = [None] * n_in
    if needed is None:
        needed = [True] * n_in
    if len(outs) != n_in or len(needed) != n_in:
        raise ValueError(f"outs and needed must have one entry per width ({n_in})")
    cdef int64_t batch = G.shape[0], width = G.shape[1], offset = 0, w
    result = []
    for i in range(n_in):
        if not needed[i]:
            result.append(None)
            continue
        D = _out(outs[i], f"outs[{i}]", (batch, ws[i]), G, _flag(accumulate, i, n_in))
        _separate(D, f"outs[{i}]", ((G, "grad"),))  # outs may repeat (y = [x, x]): added in turn
        _separate(D, f"outs[{i}]", tuple(
            (o, f"outs[{j}]") for j, o in enumerate(result) if o is not None), True)
        result.append(D)
    cdef int rc = FP_OK
    cdef void *p_G = _ptr(G)
    cdef void *p_D
    cdef bint f32 = _f32(G), acc
    for i in range(n_in):
        w = ws[i]
        if result[i] is not None:
            p_D = _ptr(result[i])
            acc = _flag(accumulate, i, n_in)
            with nogil:
                if f32:
                    rc = concat_backward_f32(<float*>p_D, <float*>p_G, batch, width, offset, w, acc)
                else:
                    rc = concat_backward_f64(<double*>p_D, <double*>p_G, batch, width, offset, w, acc)
            _check(rc, "concat_backward")
        offset += w
    return result


include "_optim2.pxi"
