# Bindings of csrc/dense.c and blas.c: GEMM, the dense layer's forward and backward.
# Included by _kernels.pyx (one extension module); the shared checks live there.

# ---------------------------------------------------------------- GEMM

def gemm(a, b, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None):
    """``out = alpha * op(a) @ op(b) + beta * out`` through the BLAS (row-major).

    a : (m, k), or (k, m) with trans_a; b : (k, n), or (n, k) with trans_b;
    out : (m, n), read when beta != 0 (it must then be given).

    Parameters
    ----------
    a : ndarray
        (m, k), or (k, m) with trans_a.
    b : ndarray
        (k, n), or (n, k) with trans_b; a's dtype.
    trans_a : bool
        Multiply by ``a.T`` in place of a.
    trans_b : bool
        Multiply by ``b.T`` in place of b.
    alpha : float
        The scale of the product.
    beta : float
        The scale of out's old values; nonzero reads out, which must then be given.
    out : ndarray or None
        Buffer for the result, (m, n); allocated when None.

    Returns
    -------
    out : ndarray
        (m, n): ``alpha op(a) @ op(b) + beta out``.
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
    cdef vptr p_A = _ptr(A), p_Bm = _ptr(Bm), p_C = _ptr(C)
    cdef bint f64 = not _f32(A)
    with nogil:
        rc = c_gemm(f64, ta, tb, m, n, k, al, p_A, p_Bm, be, p_C)
    _check(rc, "gemm")
    return C


# ---------------------------------------------------------------- dense

def dense_forward(x, weight, bias=None, activation="identity", *, out=None, preact_out=None,
                  double negative_slope=0.01, double beta=1.0, double threshold=20.0):
    """``y = f(x @ weight.T + bias)``: one GEMM, then bias and activation fused in one pass.

    x : (B, in); weight : (out, in); bias : (out,) or None; returns y : (B, out).
    preact_out : (B, out), receives ``x @ weight.T + bias`` when given.

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
        (B, out) buffer that receives the pre-activation ``x @ weight.T + bias``; not kept when
        None.
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
    cdef vptr p_Y = _ptr(Y), p_Z = _ptr(Z), p_X = _ptr(X), p_W = _ptr(W), p_b = _ptr(b)
    cdef bint f64 = not _f32(X)
    with nogil:
        rc = c_dense_forward(f64, p_Y, p_Z, p_X, p_W, p_b, batch, n_in, n_out, act, &p)
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
    cdef vptr p_dX = _ptr(dX), p_dW = _ptr(dW), p_db = _ptr(db), p_G = _ptr(G), p_X = _ptr(X)
    cdef void *p_W = _ptr(W)
    cdef bint f64 = not _f32(G)
    with nogil:
        rc = c_dense_backward(f64, p_dX, p_dW, p_db, p_G, p_X, p_W, batch, n_in, n_out, acc, acc_x)
    _check(rc, "dense_backward")
    return dX, dW, db
