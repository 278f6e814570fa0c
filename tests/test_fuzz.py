"""Fuzzing every kernel of fastprop.ops against fastprop.reference (float64) with hypothesis.

Shapes, dtypes, memory layouts (C, Fortran, negative strides, strided views) and values are
drawn at random; values include ±0, subnormals, and huge and tiny magnitudes (hypothesis
favours such edge cases), over the whole finite range where a kernel is defined on it.
Each result is held to an error bound of the computation it does in its precision, so
a drawn case that fails is a real error, not an ill-conditioned comparison.

FASTPROP_FUZZ_EXAMPLES sets the examples per test (default 30, what CI runs); e.g.
FASTPROP_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py for a long run.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_small_gemm import THRESHOLD

from fastprop import ops, reference

EXAMPLES = int(os.environ.get("FASTPROP_FUZZ_EXAMPLES", "30"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])  # gemm_path holds for all examples

DTYPES = st.sampled_from([np.float32, np.float64])
DIM = st.integers(1, 40)
LAYOUTS = ("C", "fortran", "reversed", "strided")


def eps(dtype):
    return float(np.finfo(dtype).eps)


def tiny(dtype):
    """The smallest normal: results below it may be flushed to 0 (csrc/fastmath.h)."""
    return float(np.finfo(dtype).tiny)


def values(dtype, bound=None):
    """Finite floats of dtype, within ±bound when given (±0, subnormals and the extremes included)."""
    width = 32 if dtype == np.float32 else 64
    if bound is None:
        return st.floats(allow_nan=False, allow_infinity=False, width=width)
    bound = float(np.float32(bound)) if width == 32 else bound  # exactly representable
    return st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=width)


def array(draw, dtype, shape, bound=None, lo=None):
    elements = values(dtype, bound) if lo is None else st.floats(
        lo, bound, allow_nan=False, width=32 if dtype == np.float32 else 64)
    a = draw(hnp.arrays(dtype, shape, elements=elements))
    return relayout(a, draw(st.sampled_from(LAYOUTS)))


def relayout(a, layout):
    """The same values in another memory layout (what the kernels must copy, not misread)."""
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "reversed":
        return np.ascontiguousarray(a[::-1])[::-1]
    if layout == "strided" and a.ndim:
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    return a


def f64(a):
    """A float64 copy (never the array itself: the kernels update some in place)."""
    return np.array(a, np.float64)


def within(ours, ref, bound, what=""):
    """|ours − ref| ≤ bound elementwise, ref rounded to ours' dtype first (overflow to ±inf
    in both is agreement)."""
    ours = np.asarray(ours)
    ref_r = f64(np.asarray(ref, np.float64).astype(ours.dtype)) if ours.dtype != np.float64 else f64(ref)
    ours = f64(ours)
    agree = (np.isinf(ours) & (ours == ref_r)) | (np.isnan(ours) & np.isnan(ref_r))
    with np.errstate(invalid="ignore"):
        err = np.where(agree, 0.0, np.abs(ours - f64(ref)))
    with np.errstate(invalid="ignore"):
        ok = agree | (err <= bound)
    assert np.all(ok), (f"{what}: worst at {np.unravel_index(np.argmax(~ok), ok.shape)}: "
                        f"ours {ours[~ok][:3]}, reference {f64(ref)[~ok][:3]}, bound {np.broadcast_to(bound, ok.shape)[~ok][:3]}")


# ---------------------------------------------------------------- GEMM and the dense layer

@pytest.fixture(params=["small", "blas"])
def gemm_path(request):
    """Each GEMM test runs on the small-matrix path and on the BLAS (where ctypes can switch)."""
    if THRESHOLD is None:
        yield request.param
        return
    old = THRESHOLD.value
    THRESHOLD.value = 1 << 62 if request.param == "small" else 0
    try:
        yield request.param
    finally:
        THRESHOLD.value = old


def gemm_bound(a, b, dtype, k):
    """The classic bound |fl(AB) − AB| ≤ γ_k |A||B| (γ_k ≈ k·eps), plus underflow of the k products."""
    return 2 * (k + 2) * eps(dtype) * (np.abs(f64(a)) @ np.abs(f64(b))) + 4 * k * tiny(dtype)


# magnitudes for GEMM inputs: products and their sums stay finite (1e15² · 40 < 3.4e38)
GEMM_BOUND = 1e15


@fuzz
@given(data=st.data(), dtype=DTYPES, m=DIM, n=DIM, k=st.integers(0, 40),
       trans_a=st.booleans(), trans_b=st.booleans(), alpha=st.sampled_from([1.0, -0.5, 0.0, 3.0]),
       beta=st.sampled_from([0.0, 1.0, -2.0]))
def test_fuzz_gemm(gemm_path, data, dtype, m, n, k, trans_a, trans_b, alpha, beta):
    a = array(data.draw, dtype, (k, m) if trans_a else (m, k), GEMM_BOUND)
    b = array(data.draw, dtype, (n, k) if trans_b else (k, n), GEMM_BOUND)
    c0 = data.draw(hnp.arrays(dtype, (m, n), elements=values(dtype, GEMM_BOUND)))
    out = c0.copy() if beta != 0 else np.full((m, n), np.nan, dtype)  # beta 0 never reads out
    ops.gemm(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, out=out)
    A, B = (a.T if trans_a else a), (b.T if trans_b else b)
    ref = alpha * (f64(A) @ f64(B)) + (beta * f64(c0) if beta != 0 else 0)
    bound = abs(alpha) * gemm_bound(A, B, dtype, k) + 2 * eps(dtype) * abs(beta) * np.abs(f64(c0)) \
        + 2 * eps(dtype) * np.abs(ref)
    within(out, ref, bound, "gemm")


@fuzz
@given(data=st.data(), dtype=DTYPES, batch=st.integers(0, 40), n_in=DIM, n_out=DIM,
       act=st.sampled_from(ops.ACTIVATIONS), bias=st.booleans())
def test_fuzz_dense_forward(gemm_path, data, dtype, batch, n_in, n_out, act, bias):
    x = array(data.draw, dtype, (batch, n_in), GEMM_BOUND)
    w = array(data.draw, dtype, (n_out, n_in), GEMM_BOUND)
    b = array(data.draw, dtype, (n_out,), GEMM_BOUND) if bias else None
    pre = np.empty((batch, n_out), dtype)
    y = ops.dense_forward(x, w, b, act, preact_out=pre)
    ref = f64(x) @ f64(w).T + (f64(b) if bias else 0)
    bound = gemm_bound(x, w.T, dtype, n_in) + 2 * eps(dtype) * (np.abs(ref) + (np.abs(f64(b)) if bias else 0))
    within(pre, ref, bound, "dense_forward pre-activation")
    # the fused activation on that pre-activation (cos switches to libm per block of
    # elements when an argument is out of its fast range, so not always the same bits
    # as activation_forward over the whole array)
    with np.errstate(all="ignore"):
        ref_y = reference.activation_forward(f64(pre), act)
    rel, absolute = act_tolerance(act, pre, dtype)
    within(y, ref_y, rel * np.abs(ref_y) + absolute, f"dense_forward {act}")


@fuzz
@given(data=st.data(), dtype=DTYPES, batch=st.integers(0, 40), n_in=DIM, n_out=DIM,
       accumulate=st.booleans(), input_grad=st.booleans())
def test_fuzz_dense_backward(gemm_path, data, dtype, batch, n_in, n_out, accumulate, input_grad):
    g = array(data.draw, dtype, (batch, n_out), GEMM_BOUND)
    x = array(data.draw, dtype, (batch, n_in), GEMM_BOUND)
    w = array(data.draw, dtype, (n_out, n_in), GEMM_BOUND)
    start = [data.draw(hnp.arrays(dtype, s, elements=values(dtype, GEMM_BOUND)))
             for s in ((batch, n_in), (n_out, n_in), (n_out,))]
    bufs = [s.copy() for s in start]
    dx, dw, db = ops.dense_backward(g, x, w, input_grad=input_grad, grad_input=bufs[0] if input_grad else None,
                                    grad_weight=bufs[1], grad_bias=bufs[2], accumulate=accumulate)
    acc = [f64(s) if accumulate else 0 for s in start]
    e = eps(dtype)
    within(dw, f64(g).T @ f64(x) + acc[1], gemm_bound(g.T, x, dtype, batch) + 2 * e * np.abs(acc[1]), "grad_weight")
    within(db, f64(g).sum(0) + acc[2], 2 * (batch + 2) * e * (np.abs(f64(g)).sum(0) + np.abs(acc[2])) +
           4 * batch * tiny(dtype), "grad_bias")
    if input_grad:
        within(dx, f64(g) @ f64(w) + acc[0], gemm_bound(g, w, dtype, n_out) + 2 * e * np.abs(acc[0]), "grad_input")
    else:
        assert dx is None


# ---------------------------------------------------------------- elementwise

ACT_PARAMS = st.fixed_dictionaries({"negative_slope": st.sampled_from([0.01, 0.2, -0.5, 0.0]),
                                    "beta": st.sampled_from([1.0, 0.5, 3.0]),
                                    "threshold": st.sampled_from([20.0, 2.0])})


def act_tolerance(act, x, dtype, derivative=False):
    """Relative accuracy of the float32 fastmath functions (a few ulp, Φ ~8.5 ulp) or of libm,
    plus an absolute part: results under the smallest normal may be flushed to 0, and cos/sin
    of a rounded argument are good to an absolute, not relative, error."""
    rel = (64 if dtype == np.float32 else 16) * eps(dtype)
    absolute = 2 * tiny(dtype)
    if act == "cos":
        absolute += 4 * eps(dtype)
    if act in ("softplus", "gelu", "silu") and derivative:
        absolute += 8 * eps(dtype)  # Φ(x) + xφ(x) and σ(x)(1 + x(1 − σ)) cancel near their zeros
    if act == "tanh" and derivative:
        absolute += 4 * eps(dtype)  # 1 − y² from a saturated y: y² rounds by eps, then cancels
    # the reference's own cancellations, good to a few eps64: 0.5(1 + erf(x/√2)) for x < 0,
    # σ(1 − σ) and 1 − tanh² for large |x| (the kernels compute these without cancelling)
    if derivative:
        absolute += 8 * eps(np.float64)
    elif act == "gelu":
        absolute = absolute + 4 * eps(np.float64) * np.abs(f64(x))
    return rel, absolute


@fuzz
@given(data=st.data(), dtype=DTYPES, shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=20),
       act=st.sampled_from(ops.ACTIVATIONS), params=ACT_PARAMS, in_place=st.booleans())
def test_fuzz_activation_forward(data, dtype, shape, act, params, in_place):
    x = array(data.draw, dtype, shape)
    x_saved = x.copy()
    if in_place:
        x = np.ascontiguousarray(x)
    y = ops.activation_forward(x, act, out=x if in_place else None, **params)
    with np.errstate(all="ignore"):
        ref = reference.activation_forward(f64(x_saved), act, **params)
    rel, absolute = act_tolerance(act, x_saved, dtype)
    within(y, ref, rel * np.abs(ref) + absolute, act)


@fuzz
@given(data=st.data(), dtype=DTYPES, shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=20),
       act=st.sampled_from(ops.ACTIVATIONS), params=ACT_PARAMS, from_y=st.booleans())
def test_fuzz_activation_backward(data, dtype, shape, act, params, from_y):
    x = array(data.draw, dtype, shape)
    g = array(data.draw, dtype, shape, 1e6)  # gradients of moderate size, tiny ones included
    from_output = act in ops.FROM_OUTPUT or (act == "leaky_relu" and params["negative_slope"] > 0)
    y = ops.activation_forward(x, act, **params) if from_y and from_output else None
    d = ops.activation_backward(g, act, x=None if y is not None else x, y=y, **params)
    with np.errstate(all="ignore"):
        ref = reference.activation_backward(f64(g), act, x=f64(x), y=None if y is None else f64(y), **params)
    rel, absolute = act_tolerance(act, x, dtype, derivative=True)
    within(d, ref, rel * np.abs(ref) + absolute * np.abs(f64(g)) + 2 * tiny(dtype), f"{act}'")


@fuzz
@given(data=st.data(), dtype=DTYPES, batch=st.integers(0, 30), channels=DIM, per_channel=st.booleans(),
       accumulate=st.booleans())
def test_fuzz_prelu(data, dtype, batch, channels, per_channel, accumulate):
    x = array(data.draw, dtype, (batch, channels), 1e15)
    w = array(data.draw, dtype, (channels if per_channel else 1,), 10.0)
    g = array(data.draw, dtype, (batch, channels), 1e15)
    y = ops.prelu_forward(x, w)
    e = eps(dtype)
    ref = reference.prelu_forward(f64(x), f64(w))
    within(y, ref, e * np.abs(ref) + tiny(dtype), "prelu")
    gw0 = np.ones(w.shape, dtype)
    gx, gw = ops.prelu_backward(g, x, w, grad_weight=gw0.copy(), accumulate=accumulate)
    rgx, rgw = reference.prelu_backward(f64(g), f64(x), f64(w), grad_weight=f64(gw0) if accumulate else None,
                                        accumulate=accumulate)
    within(gx, rgx, e * np.abs(rgx) + tiny(dtype), "prelu grad_input")
    contrib = np.where(f64(x) > 0, 0, np.abs(f64(g) * f64(x)))
    total = contrib.sum() if not per_channel else contrib.sum(0)
    within(gw, rgw, 2 * (batch * channels + 2) * e * (total + 1) + 4 * batch * channels * tiny(dtype),
           "prelu grad_weight")


# ---------------------------------------------------------------- softmax and the losses

def SUM_EPS(n):
    """Relative error of a sum of n terms in double (the losses accumulate in double)."""
    return (n + 4) * eps(np.float64)


def shift_bound(z, dtype):
    """z − max z rounds with a relative error eps; exp of it then errs by |z − max| eps."""
    with np.errstate(over="ignore"):  # −DBL_MAX − DBL_MAX: a finite stand-in for the bound
        return np.minimum(np.abs(f64(z) - f64(z).max(axis=1, keepdims=True)), 1e300) + 1


@fuzz
@given(data=st.data(), dtype=DTYPES, batch=st.integers(0, 20), classes=DIM, log=st.booleans())
def test_fuzz_softmax(data, dtype, batch, classes, log):
    z = array(data.draw, dtype, (batch, classes))
    with np.errstate(all="ignore"):
        if log:
            ours, ref = ops.log_softmax(z), reference.log_softmax(f64(z))
        else:
            ours, ref = ops.softmax(z), reference.softmax(f64(z))
    assert np.all(np.isfinite(ours) | (np.isneginf(ours) & log))
    e = 8 * eps(dtype)
    if log:  # z − m − log Σ: the rounding of z − m and of the log
        with np.errstate(over="ignore"):  # a bound beyond DBL_MAX is no bound: inf
            bound = e * (np.abs(f64(z)) + np.abs(f64(z)).max(axis=1, keepdims=True) + classes)
        within(ours, ref, bound, "log_softmax")
    else:
        within(ours, ref, e * shift_bound(z, dtype) * np.abs(ref) + e * classes * np.abs(ref) + 2 * tiny(dtype),
               "softmax")


@fuzz
@given(data=st.data(), dtype=DTYPES, batch=st.integers(1, 20), classes=DIM, soft=st.booleans())
def test_fuzz_softmax_cross_entropy(data, dtype, batch, classes, soft):
    z = array(data.draw, dtype, (batch, classes), 1e30)
    if soft:
        t = array(data.draw, dtype, (batch, classes), 1.0, lo=0.0)
    else:
        t = relayout(np.asarray(data.draw(st.lists(st.integers(0, classes - 1), min_size=batch,
                                                   max_size=batch)), np.int64),
                     data.draw(st.sampled_from(LAYOUTS)))
    loss, g = ops.softmax_cross_entropy(z, t)
    rloss, rg = reference.softmax_cross_entropy(f64(z), f64(t) if soft else np.asarray(t))
    e = 8 * eps(dtype)
    zs = shift_bound(z, dtype)
    tm = f64(t) if soft else np.eye(classes)[np.asarray(t)]
    # Σ t (z − m): each term rounds with |t (z − m)| eps; the log-sum-exp with its shift
    assert np.isfinite(loss)
    assert abs(loss - rloss) <= e * np.mean(((tm * zs).sum(1) + tm.sum(1) * (classes + np.log(classes)))) * 2
    tsum = tm.sum(1, keepdims=True)
    within(g, rg, e * (zs * np.abs(rg) + tsum * classes * np.abs(rg) + tm / batch + tsum / batch * e) + 2 * tiny(dtype),
           "softmax_cross_entropy grad")


@fuzz
@given(data=st.data(), dtype=DTYPES, shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=20))
def test_fuzz_sigmoid_bce(data, dtype, shape):
    z = array(data.draw, dtype, shape)
    t = array(data.draw, dtype, shape, 1.0, lo=0.0)
    loss, g = ops.sigmoid_bce(z, t)
    with np.errstate(over="ignore"):  # the reference's sum of terms near DBL_MAX overflows
        rloss, rg = reference.sigmoid_bce(f64(z), f64(t))
        zmean = np.mean(np.abs(f64(z)))
    n, e = z.size, 8 * eps(dtype)
    # max(z, 0) − z·y rounds with |z| eps per element; the log1p term is accurate to a few ulp
    # (and the sum of n terms in double: (n + 4)·eps64 of their mean)
    assert np.isfinite(loss) and abs(loss - rloss) <= e * (zmean + 1) + SUM_EPS(n) * abs(rloss)
    within(g, rg, e / n, "sigmoid_bce grad")


@fuzz
@given(data=st.data(), dtype=DTYPES, shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=20))
def test_fuzz_mse(data, dtype, shape):
    p = array(data.draw, dtype, shape, 1e18)  # (p − t)² stays finite
    t = array(data.draw, dtype, shape, 1e18)
    loss, g = ops.mse(p, t)
    rloss, rg = reference.mse(f64(p), f64(t))
    e = 4 * eps(dtype)
    scale = np.abs(f64(p)) + np.abs(f64(t))
    assert abs(loss - rloss) <= (e + SUM_EPS(p.size)) * np.mean(scale * (scale + 1)) * 2 + tiny(dtype)
    within(g, rg, e * 2 * scale / p.size + tiny(dtype), "mse grad")


# ---------------------------------------------------------------- optimizers

@fuzz
@given(data=st.data(), dtype=DTYPES, n=st.integers(0, 100), lr=st.sampled_from([0.0, 1e-3, 0.1, 10.0]),
       momentum=st.sampled_from([0.0, 0.9]), dampening=st.sampled_from([0.0, 0.5]),
       nesterov=st.booleans(), weight_decay=st.sampled_from([0.0, 0.01]), first=st.booleans())
def test_fuzz_sgd_step(data, dtype, n, lr, momentum, dampening, nesterov, weight_decay, first):
    if nesterov and (momentum == 0 or dampening != 0):
        nesterov = False
    p = array(data.draw, dtype, (n,), 1e15)
    g = array(data.draw, dtype, (n,), 1e15)
    buf = data.draw(hnp.arrays(dtype, (n,), elements=values(dtype, 1e15)))
    p, rp, rbuf = np.ascontiguousarray(p), f64(p), f64(buf)
    p_old, buf_old = p.copy(), buf.copy()
    kw = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
              weight_decay=weight_decay, first_step=first)
    ops.sgd_step(p, g, momentum_buffer=buf if momentum else None, **kw)
    reference.sgd_step(rp, f64(g), momentum_buffer=rbuf if momentum else None, **kw)
    e = 8 * eps(dtype)
    update = np.abs(f64(g)) + weight_decay * np.abs(f64(p_old)) + np.abs(f64(buf_old))
    within(p, rp, e * (np.abs(f64(p_old)) + 4 * lr * update) + tiny(dtype), "sgd param")
    if momentum:
        within(buf, rbuf, e * 4 * update + tiny(dtype), "sgd momentum_buffer")


@fuzz
@given(data=st.data(), dtype=DTYPES, n=st.integers(0, 100), step=st.integers(1, 1000),
       lr=st.sampled_from([1e-3, 0.1]), betas=st.sampled_from([(0.9, 0.999), (0.0, 0.5)]),
       # not eps 0: then a float32 g of a subnormal size makes v underflow to 0 and the update
       # 0/0 = NaN where float64 keeps it finite (torch's float32 Adam too)
       eps_=st.sampled_from([1e-8, 1e-3]), weight_decay=st.sampled_from([0.0, 0.1]),
       decoupled=st.booleans())
def test_fuzz_adam_step(data, dtype, n, step, lr, betas, eps_, weight_decay, decoupled):
    p = np.ascontiguousarray(array(data.draw, dtype, (n,), 1e6))
    g = array(data.draw, dtype, (n,), 1e6)
    m = data.draw(hnp.arrays(dtype, (n,), elements=values(dtype, 1e6)))
    v = np.abs(data.draw(hnp.arrays(dtype, (n,), elements=values(dtype, 1e12))))
    rp, rm, rv, p_old, m_old = f64(p), f64(m), f64(v), p.copy(), m.copy()
    kw = dict(step=step, lr=lr, beta1=betas[0], beta2=betas[1], eps=eps_, weight_decay=weight_decay,
              decoupled=decoupled)
    with np.errstate(all="ignore"):
        ops.adam_step(p, g, m, v, **kw)
        reference.adam_step(rp, f64(g), rm, rv, **kw)
    e = 16 * eps(dtype)
    within(m, rm, e * (np.abs(rm) + np.abs(f64(g)) + np.abs(f64(p_old)) * weight_decay) + tiny(dtype), "exp_avg")
    # g + λθ may cancel: its error e(|g| + λ|θ|) enters g² as 2|g + λθ|·that
    g_eff = np.abs(f64(g) + (0 if decoupled else weight_decay) * f64(p_old))
    g_err = e * (np.abs(f64(g)) + weight_decay * np.abs(f64(p_old)))
    within(v, rv, e * np.abs(rv) + (1 - betas[1]) * 2 * (g_eff + g_err) * g_err + 2 * tiny(dtype), "exp_avg_sq")
    # the update lr·m̂/(√v̂ + ε) has a relative error of a few eps, as each of its factors,
    # and carries the error of m, which may cancel (β₁m + (1 − β₁)g ≈ 0): |Δ|·err(m)/|m|
    m_err = e * (np.abs(f64(m_old)) + np.abs(f64(g)) + weight_decay * np.abs(f64(p_old)))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        delta = np.abs(rp - f64(p_old))
        carried = np.where(delta > 0, delta * m_err / np.maximum(np.abs(rm), 1e-300), 0)
        within(p, rp, e * (np.abs(f64(p_old)) + 4 * delta) + carried + tiny(dtype), "adam param")
