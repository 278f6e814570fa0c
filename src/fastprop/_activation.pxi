# Bindings of csrc/activation.c: the elementwise activations, their derivatives and R-ops, PReLU.
# Included by _kernels.pyx (one extension module); the shared checks live there.

# ---------------------------------------------------------------- activations

def activation_forward(x, activation, *, out=None, double negative_slope=0.01,
                       double beta=1.0, double threshold=20.0):
    """``y = f(x)`` elementwise, any shape; out=x works in place.

    Parameters
    ----------
    x : ndarray
        The inputs, any shape.
    activation : str
        The activation's name, one of ``ACTIVATIONS`` (identity, relu, leaky_relu, abs,
        sigmoid, tanh, softplus, cos, gelu, silu).
    out : ndarray or None
        Buffer for the result, of x's shape (may be x itself); allocated when None.
    negative_slope : float
        leaky_relu's slope for inputs below 0.
    beta : float
        softplus's beta (nonzero): ``log(1 + exp(beta x)) / beta``.
    threshold : float
        softplus is the identity where ``beta x > threshold``.

    Returns
    -------
    out : ndarray
        ``f(x)``, of x's shape.
    """
    X = _floats(x, "x", -1)
    cdef int act = _act(activation)
    cdef fp_act_params p = _params(negative_slope, beta, threshold)
    Y = _out(out, "out", X.shape, X)
    _separate(Y, "out", ((X, "x"),), True)
    cdef int64_t n = X.size
    cdef int rc
    cdef vptr p_Y = _ptr(Y), p_X = _ptr(X)
    cdef bint f64 = not _f32(X)
    with nogil:
        rc = c_activation_forward(f64, p_Y, p_X, n, act, &p)
    _check(rc, "activation_forward")
    return Y


def activation_backward(grad, activation, *, x=None, y=None, out=None,
                        double negative_slope=0.01, double beta=1.0, double threshold=20.0):
    """``grad ⊙ f′`` in one pass; out=grad works in place.

    relu, leaky_relu (slope > 0), sigmoid, tanh and identity need only y, the saved
    output; the others need x, the input.

    Parameters
    ----------
    grad : ndarray
        The gradient of the output, any shape.
    activation : str
        The activation's name, one of ``ACTIVATIONS`` (identity, relu, leaky_relu, abs,
        sigmoid, tanh, softplus, cos, gelu, silu).
    x : ndarray or None
        The forward's input, of grad's shape; needed unless y is given and the activation is
        identity, relu, leaky_relu (slope > 0), sigmoid or tanh.
    y : ndarray or None
        The forward's output ``f(x)``, of grad's shape; enough for identity, relu, leaky_relu
        (slope > 0), sigmoid and tanh.
    out : ndarray or None
        Buffer for the result, of grad's shape (may be grad itself); allocated when None.
    negative_slope : float
        leaky_relu's slope for inputs below 0.
    beta : float
        softplus's beta (nonzero): ``log(1 + exp(beta x)) / beta``.
    threshold : float
        softplus is the identity where ``beta x > threshold``.

    Returns
    -------
    out : ndarray
        ``grad f'(x)``, of grad's shape.
    """
    G = _floats(grad, "grad", -1)
    cdef int act = _act(activation)
    cdef fp_act_params p = _params(negative_slope, beta, threshold)
    X = None if x is None else _floats(x, "x", -1, G, "grad")
    Y = None if y is None else _floats(y, "y", -1, G, "grad")
    for arr, name in ((X, "x"), (Y, "y")):
        if arr is not None and arr.shape != G.shape:
            raise ValueError(f"{name} has shape {arr.shape}, expected {G.shape} (grad's)")
    from_output = registry.derivative_from_output(activation, negative_slope)
    if X is None and not (from_output and Y is not None) and activation != "identity":
        need = "x (the input) or y (the output)" if from_output else "x (the input)"
        raise ValueError(f"the backward of {activation!r} needs {need}")
    D = _out(out, "out", G.shape, G)
    _separate(D, "out", ((G, "grad"), (X, "x"), (Y, "y")), True)
    cdef int64_t n = G.size
    cdef int rc
    cdef vptr p_D = _ptr(D), p_G = _ptr(G), p_X = _ptr(X), p_Y = _ptr(Y)
    cdef bint f64 = not _f32(G)
    with nogil:
        rc = c_activation_backward(f64, p_D, p_G, p_X, p_Y, n, act, &p)
    _check(rc, "activation_backward")
    return D


def activation_second(grad, activation, *, x, out=None, double negative_slope=0.01,
                      double beta=1.0, double threshold=20.0):
    """``grad ⊙ f″(x)`` in one pass (0 for relu, leaky_relu and abs, almost everywhere);
    out=grad works in place. x is the input (the pre-activation).

    Parameters
    ----------
    grad : ndarray
        The vector multiplied by f'', any shape.
    activation : str
        The activation's name, one of ``ACTIVATIONS`` (identity, relu, leaky_relu, abs,
        sigmoid, tanh, softplus, cos, gelu, silu).
    x : ndarray
        The forward's input (the pre-activation), of grad's shape.
    out : ndarray or None
        Buffer for the result, of grad's shape (may be grad itself); allocated when None.
    negative_slope : float
        leaky_relu's slope for inputs below 0.
    beta : float
        softplus's beta (nonzero): ``log(1 + exp(beta x)) / beta``.
    threshold : float
        softplus is the identity where ``beta x > threshold``.

    Returns
    -------
    out : ndarray
        ``grad f''(x)``, of grad's shape.
    """
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
    cdef vptr p_D = _ptr(D), p_G = _ptr(G), p_X = _ptr(X)
    cdef bint f64 = not _f32(G)
    with nogil:
        rc = c_activation_second(f64, p_D, p_G, p_X, n, act, &p)
    _check(rc, "activation_second")
    return D


def activation_rbackward(grad, rgrad, activation, *, x, rx, out=None, rout=None,
                         double negative_slope=0.01, double beta=1.0, double threshold=20.0):
    """The backward ``grad ⊙ f′(x)`` and its R-operator in one pass.

    Along a direction where the input moves by rx and the upstream gradient by rgrad:
    out = grad ⊙ f′(x), rout = rgrad ⊙ f′(x) + grad ⊙ f″(x) ⊙ rx. All arrays have one
    shape; out=grad and rout=rgrad work in place. Returns (out, rout).

    Parameters
    ----------
    grad : ndarray
        The gradient of the output, any shape.
    rgrad : ndarray
        R{grad}, the gradient's directional derivative, of grad's shape.
    activation : str
        The activation's name, one of ``ACTIVATIONS`` (identity, relu, leaky_relu, abs,
        sigmoid, tanh, softplus, cos, gelu, silu).
    x : ndarray
        The forward's input, of grad's shape.
    rx : ndarray
        R{x}, the input's direction, of grad's shape.
    out : ndarray or None
        Buffer for the backward, of grad's shape (may be grad itself); allocated when None.
    rout : ndarray or None
        Buffer for its R-operator, of grad's shape (may be rgrad itself); allocated when None.
    negative_slope : float
        leaky_relu's slope for inputs below 0.
    beta : float
        softplus's beta (nonzero): ``log(1 + exp(beta x)) / beta``.
    threshold : float
        softplus is the identity where ``beta x > threshold``.

    Returns
    -------
    out : ndarray
        ``grad f'(x)``, of grad's shape.
    rout : ndarray
        ``rgrad f'(x) + grad f''(x) rx``, of grad's shape.
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
    cdef vptr p_D = _ptr(D), p_RD = _ptr(RD), p_G = _ptr(G), p_RG = _ptr(RG), p_X = _ptr(X)
    cdef void *p_RX = _ptr(RX)
    cdef bint f64 = not _f32(G)
    with nogil:
        rc = c_activation_rbackward(f64, p_D, p_RD, p_G, p_RG, p_RX, p_X, n, act, &p)
    _check(rc, "activation_rbackward")
    return D, RD


cdef tuple _prelu_shapes(object X, object W):
    if W.shape[0] != 1 and W.shape[0] != X.shape[1]:
        raise ValueError(f"weight has shape {W.shape}, expected (1,) or ({X.shape[1]},) "
                         f"for x of shape {X.shape}")
    return X.shape[0], X.shape[1], W.shape[0]


def prelu_forward(x, weight, *, out=None):
    """``y = x if x > 0 else weight[c] * x``; x : (B, C), weight : (1,) or (C,).

    Parameters
    ----------
    x : ndarray
        (B, C) inputs.
    weight : ndarray
        (1,) or (C,): the slope below 0, shared or one per channel.
    out : ndarray or None
        Buffer for the result, (B, C) (may be x itself); allocated when None.

    Returns
    -------
    out : ndarray
        (B, C): x where x > 0, else ``weight[c] x``.
    """
    X = _floats(x, "x", 2)
    W = _floats(weight, "weight", 1, X, "x")
    cdef int64_t batch, channels, n_w
    batch, channels, n_w = _prelu_shapes(X, W)
    Y = _out(out, "out", X.shape, X)
    _separate(Y, "out", ((X, "x"),), True)
    _separate(Y, "out", ((W, "weight"),))
    cdef int rc
    cdef vptr p_Y = _ptr(Y), p_X = _ptr(X), p_W = _ptr(W)
    cdef bint f64 = not _f32(X)
    with nogil:
        rc = c_prelu_forward(f64, p_Y, p_X, p_W, batch, channels, n_w)
    _check(rc, "prelu_forward")
    return Y


def prelu_backward(grad, x, weight, *, out=None, grad_weight=None, accumulate=False):
    """grad_input = grad if x > 0 else weight[c]*grad; grad_weight[c] (+)= Σ_{x≤0} grad·x.

    Returns (grad_input, grad_weight); out=grad works in place.

    Parameters
    ----------
    grad : ndarray
        (B, C) gradient of the output.
    x : ndarray
        (B, C) the forward's inputs.
    weight : ndarray
        (1,) or (C,): the slope below 0, shared or one per channel.
    out : ndarray or None
        (B, C) buffer for grad_input (may be grad itself); allocated when None.
    grad_weight : ndarray or None
        Buffer for grad_weight, of weight's shape; allocated when None.
    accumulate : bool
        Add into grad_weight instead of overwriting it.

    Returns
    -------
    out : ndarray
        (B, C) grad_input: grad where x > 0, else ``weight[c] grad``.
    grad_weight : ndarray
        Of weight's shape: the sum over x <= 0 of ``grad x``.
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
    cdef vptr p_D = _ptr(D), p_dW = _ptr(dW), p_G = _ptr(G), p_X = _ptr(X), p_W = _ptr(W)
    cdef bint f64 = not _f32(G)
    with nogil:
        rc = c_prelu_backward(f64, p_D, p_dW, p_G, p_X, p_W, batch, channels, n_w, acc)
    _check(rc, "prelu_backward")
    return D, dW


def prelu_rforward(x, weight, v_weight, *, rx=None, out=None):
    """The R-operator of PReLU: ``(x > 0 ? rx : weight[c]·rx) + (x > 0 ? 0 : x·v_weight[c])``.

    x, rx, out : (B, C); weight, v_weight : (1,) or (C,). rx None: a fixed input (R{x} = 0).

    Parameters
    ----------
    x : ndarray
        (B, C) inputs.
    weight : ndarray
        (1,) or (C,): the slope below 0, shared or one per channel.
    v_weight : ndarray
        The slopes' direction, of weight's shape.
    rx : ndarray or None
        (B, C) R{x}, the input's direction; None for a fixed input (R{x} = 0).
    out : ndarray or None
        Buffer for the result, (B, C) (may be rx itself); allocated when None.

    Returns
    -------
    out : ndarray
        (B, C) R{y}: rx where x > 0, else ``weight[c] rx + x v_weight[c]``.
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
    cdef vptr p_Y = _ptr(Y), p_RX = _ptr(RX), p_X = _ptr(X), p_W = _ptr(W), p_VW = _ptr(VW)
    cdef bint f64 = not _f32(X)
    with nogil:
        rc = c_prelu_rforward(f64, p_Y, p_RX, p_X, p_W, p_VW, batch, channels, n_w)
    _check(rc, "prelu_rforward")
    return Y


def prelu_rbackward(grad, rgrad, x, weight, v_weight, *, rx=None, out=None, rout=None,
                    hv_weight=None, accumulate=False):
    """The R-backward of PReLU, with R{x} = rx and the slopes' direction v_weight.

    out = (x > 0 ? grad : weight[c]·grad); rout = (x > 0 ? rgrad : weight[c]·rgrad +
    v_weight[c]·grad); hv_weight[c] (+)= Σ_{x ≤ 0} (rgrad·x + grad·rx). grad None (the
    Gauss–Newton pass) drops grad's terms and gives out None; rx None drops rx's.
    out=grad and rout=rgrad work in place. Returns (out, rout, hv_weight).

    Parameters
    ----------
    grad : ndarray or None
        (B, C) gradient of the output; None (the Gauss-Newton pass) drops its terms.
    rgrad : ndarray
        (B, C) R{grad}, the gradient's directional derivative.
    x : ndarray
        (B, C) the forward's inputs.
    weight : ndarray
        (1,) or (C,): the slope below 0, shared or one per channel.
    v_weight : ndarray
        The slopes' direction, of weight's shape.
    rx : ndarray or None
        (B, C) R{x}, the input's direction; None drops its terms.
    out : ndarray or None
        (B, C) buffer for grad_input (may be grad itself); allocated when None.
    rout : ndarray or None
        (B, C) buffer for R{grad_input} (may be rgrad itself); allocated when None.
    hv_weight : ndarray or None
        Buffer for R{grad_weight}, of weight's shape; allocated when None.
    accumulate : bool
        Add into hv_weight instead of overwriting it.

    Returns
    -------
    out : ndarray or None
        (B, C) grad_input; None when grad is None.
    rout : ndarray
        (B, C) R{grad_input}.
    hv_weight : ndarray
        Of weight's shape: the sum over x <= 0 of ``rgrad x + grad rx``.
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
    cdef vptr p_D = _ptr(D), p_RD = _ptr(RD), p_dW = _ptr(dW), p_G = _ptr(G), p_RG = _ptr(RG)
    cdef vptr p_X = _ptr(X), p_RX = _ptr(RX), p_W = _ptr(W), p_VW = _ptr(VW)
    cdef bint f64 = not _f32(RG)
    with nogil:
        rc = c_prelu_rbackward(f64, p_D, p_RD, p_dW, p_G, p_RG, p_X, p_RX, p_W, p_VW, batch,
                     channels, n_w, acc)
    _check(rc, "prelu_rbackward")
    return D, RD, dW
