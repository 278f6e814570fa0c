# Bindings of csrc/merge.c: the graph merge nodes Add, Mul and Concat.
# Included by _kernels.pyx (one extension module); the shared checks live there.

# ---------------------------------------------------------------- graph merge nodes


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

    out may be exactly inputs[0] (in place); it must not overlap the others.

    Parameters
    ----------
    inputs : list of ndarray
        The summands, of one shape and dtype.
    out : ndarray or None
        Buffer for the result, of the inputs' shape (may be exactly inputs[0]); allocated when
        None.

    Returns
    -------
    out : ndarray
        The elementwise sum.
    """
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
    cdef bint f64 = not _f32(X0)
    try:
        with nogil:
            rc = c_add_forward(f64, p_Y, <void*>ptrs, k, n)
    finally:
        PyMem_Free(ptrs)
    _check(rc, "add_forward")
    return Y


def add_backward(grad, *, out=None, accumulate=False):
    """The gradient of each summand of an Add: ``out (+)= grad`` (any shape); also the
    grad table's accumulation of one consumer's contribution.

    Parameters
    ----------
    grad : ndarray
        The gradient of the sum, any shape.
    out : ndarray or None
        Buffer for the result, of grad's shape; allocated when None.
    accumulate : bool
        Add grad into out instead of overwriting it.

    Returns
    -------
    out : ndarray
        Each summand's gradient (grad, or out + grad).
    """
    G = _floats(grad, "grad", -1)
    cdef bint acc = bool(accumulate)
    D = _out(out, "out", G.shape, G, acc)
    _separate(D, "out", ((G, "grad"),), not acc)
    cdef int64_t n = G.size
    cdef int rc
    cdef vptr p_D = _ptr(D), p_G = _ptr(G)
    cdef bint f64 = not _f32(G)
    with nogil:
        rc = c_add_backward(f64, p_D, p_G, n, acc)
    _check(rc, "add_backward")
    return D


def mul_forward(a, b, *, out=None):
    """``out = a ⊙ b`` elementwise; a and b of one shape; out may be exactly a or b.

    Parameters
    ----------
    a : ndarray
        Any shape.
    b : ndarray
        Of a's shape.
    out : ndarray or None
        Buffer for the result, of a's shape (may be exactly a or b); allocated when None.

    Returns
    -------
    out : ndarray
        ``a b`` elementwise.
    """
    A = _floats(a, "a", -1)
    Bm = _floats(b, "b", -1, A, "a")
    if Bm.shape != A.shape:
        raise ValueError(f"b has shape {Bm.shape}, expected {A.shape} (a's)")
    Y = _out(out, "out", A.shape, A)
    _separate(Y, "out", ((A, "a"), (Bm, "b")), True)
    cdef int64_t n = A.size
    cdef int rc
    cdef vptr p_Y = _ptr(Y), p_A = _ptr(A), p_B = _ptr(Bm)
    cdef bint f64 = not _f32(A)
    with nogil:
        rc = c_mul_forward(f64, p_Y, p_A, p_B, n)
    _check(rc, "mul_forward")
    return Y


def mul_backward(grad, a, b, *, grad_a=None, grad_b=None, need_a=True, need_b=True,
                 accumulate_a=False, accumulate_b=False):
    """Gradients of ``a ⊙ b``: grad_a (+)= grad ⊙ b, grad_b (+)= grad ⊙ a.

    need_a / need_b False skips that side (None is returned for it). grad_a may be exactly
    grad_b (the gradient of x ⊙ x: both contributions are added into it).
    Returns (grad_a, grad_b).

    Parameters
    ----------
    grad : ndarray
        The gradient of the product, any shape.
    a : ndarray
        The forward's first factor, of grad's shape.
    b : ndarray
        The forward's second factor, of grad's shape.
    grad_a : ndarray or None
        Buffer for grad_a; allocated when None.
    grad_b : ndarray or None
        Buffer for grad_b (may be exactly grad_a: both are added into it); allocated when None.
    need_a : bool
        Compute grad_a (else None is returned for it).
    need_b : bool
        Compute grad_b (else None is returned for it).
    accumulate_a : bool
        Add into grad_a instead of overwriting it.
    accumulate_b : bool
        Add into grad_b instead of overwriting it.

    Returns
    -------
    grad_a : ndarray or None
        ``grad b``; None without need_a.
    grad_b : ndarray or None
        ``grad a``; None without need_b.
    """
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
    cdef vptr p_DA = _ptr(DA), p_DB = _ptr(DB), p_G = _ptr(G), p_A = _ptr(A), p_B = _ptr(Bm)
    cdef bint f64 = not _f32(G)
    with nogil:
        rc = c_mul_backward(f64, p_DA, p_DB, p_G, p_A, p_B, n, acc_a, acc_b)
    _check(rc, "mul_backward")
    return DA, DB


def concat_forward(inputs, *, out=None):
    """``out = [inputs[0], inputs[1], ...]`` along the features: (B, Σ widths).

    Parameters
    ----------
    inputs : list of ndarray
        (B, n_i) arrays of one dtype.
    out : ndarray or None
        Buffer for the result, (B, sum n_i); allocated when None.

    Returns
    -------
    out : ndarray
        (B, sum n_i): the inputs side by side.
    """
    xs = _same_inputs(inputs, "inputs")
    X0 = xs[0]
    cdef int64_t batch = X0.shape[0], width = sum(a.shape[1] for a in xs), offset = 0, w
    Y = _out(out, "out", (batch, width), X0)
    _separate(Y, "out", tuple((a, f"inputs[{i}]") for i, a in enumerate(xs)))
    cdef int rc = FP_OK
    cdef void *p_Y = _ptr(Y)
    cdef void *p_X
    cdef bint f64 = not _f32(X0)
    for a in xs:
        w = a.shape[1]
        p_X = _ptr(a)
        with nogil:
            rc = c_concat_forward(f64, p_Y, p_X, batch, width, offset, w)
        _check(rc, "concat_forward")
        offset += w
    return Y


def concat_backward(grad, widths, *, outs=None, needed=None, accumulate=False):
    """Gradients of a Concat: outs[i] (+)= grad[:, offset_i:offset_i + widths[i]].

    grad : (B, Σ widths); outs : a list of (B, widths[i]) buffers or None (allocated);
    needed : one bool per input (False: skipped, None returned); accumulate : one bool
    for all or one per input. Returns the list of gradients.

    Parameters
    ----------
    grad : ndarray
        (B, sum widths) gradient of the concatenation.
    widths : list of int
        The inputs' widths n_i, in order.
    outs : list or None
        One (B, widths[i]) buffer or None (allocated) per input; None: all allocated.
    needed : list of bool or None
        One flag per input (False: skipped, None returned); None: all needed.
    accumulate : bool or list of bool
        Add into the buffers instead of overwriting them; one flag for all or one per input.

    Returns
    -------
    grads : list
        Per input, the (B, widths[i]) column block of grad, or None.
    """
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
    cdef bint f64 = not _f32(G), acc
    for i in range(n_in):
        w = ws[i]
        if result[i] is not None:
            p_D = _ptr(result[i])
            acc = _flag(accumulate, i, n_in)
            with nogil:
                rc = c_concat_backward(f64, p_D, p_G, batch, width, offset, w, acc)
            _check(rc, "concat_backward")
        offset += w
    return result
