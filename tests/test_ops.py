"""Every kernel of fastprop.ops against fastprop.reference and central differences."""
import numpy as np
import pytest
from conftest import RTOL, assert_close, central_diff
from hypothesis import given, settings
from hypothesis import strategies as st

from fastprop import ops, reference

DTYPES = [np.float32, np.float64]
ACTS = list(ops.ACTIVATIONS)
# parameters other than PyTorch's defaults, so that they are really passed through
ACT_PARAMS = {"leaky_relu": {"negative_slope": 0.2}, "softplus": {"beta": 1.5, "threshold": 4.0}}


def randn(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def away_from_kinks(x, act):
    """Keep finite-difference points off the kinks of relu/leaky_relu/abs/softplus-threshold."""
    x = x.copy()
    if act in ("relu", "leaky_relu", "abs"):
        x[np.abs(x) < 1e-3] += 0.1
    if act == "softplus":
        bx = ACT_PARAMS["softplus"]["beta"] * x
        x[np.abs(bx - ACT_PARAMS["softplus"]["threshold"]) < 1e-3] += 0.1
    return x


def test_ops_all_lists_the_kernels():
    for name in ops.__all__:
        assert callable(getattr(ops, name))
    for name in ["dense_forward", "dense_backward", "activation_forward", "activation_backward",
                 "softmax_cross_entropy", "sigmoid_bce", "mse", "sgd_step", "adam_step"]:
        assert name in ops.__all__


def test_reference_has_the_same_signatures():
    import inspect
    for name in ops.__all__:
        if name == "gemm":
            continue
        ref = inspect.signature(getattr(reference, name))
        ours = inspect.signature(getattr(ops, name))
        assert list(ours.parameters) == list(ref.parameters), name


# ---------------------------------------------------------------- GEMM

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_transposes(rng, dtype, trans_a, trans_b):
    m, n, k = 13, 7, 29
    a = randn(rng, (k, m) if trans_a else (m, k), dtype)
    b = randn(rng, (n, k) if trans_b else (k, n), dtype)
    c0 = randn(rng, (m, n), dtype)
    expected = 0.5 * (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b) + 2 * c0
    out = c0.copy()
    res = ops.gemm(a, b, trans_a=trans_a, trans_b=trans_b, alpha=0.5, beta=2.0, out=out)
    assert res is out
    assert_close(out, expected, dtype)


def test_gemm_empty_inner_dimension_scales_out(rng):
    out = np.ones((3, 4))
    ops.gemm(np.zeros((3, 0)), np.zeros((0, 4)), beta=3.0, out=out)
    assert np.array_equal(out, np.full((3, 4), 3.0))


# ---------------------------------------------------------------- dense

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_dense_forward_matches_reference(rng, dtype, act):
    x, w, b = randn(rng, (9, 11), dtype), randn(rng, (5, 11), dtype), randn(rng, 5, dtype)
    p = ACT_PARAMS.get(act, {})
    pre = np.empty((9, 5), dtype)
    y = ops.dense_forward(x, w, b, act, preact_out=pre, **p)
    assert y.dtype == dtype and y.shape == (9, 5)
    x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    assert_close(y, reference.dense_forward(x64, w64, b64, act, **p), dtype)
    assert_close(pre, x64 @ w64.T + b64, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward_without_bias(rng, dtype):
    x, w = randn(rng, (4, 3), dtype), randn(rng, (6, 3), dtype)
    assert_close(ops.dense_forward(x, w), x.astype(np.float64) @ w.T.astype(np.float64), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_matches_reference(rng, dtype):
    g, x, w = randn(rng, (9, 5), dtype), randn(rng, (9, 11), dtype), randn(rng, (5, 11), dtype)
    dx, dw, db = ops.dense_backward(g, x, w)
    rdx, rdw, rdb = reference.dense_backward(*(a.astype(np.float64) for a in (g, x, w)))
    assert_close(dx, rdx, dtype)
    assert_close(dw, rdw, dtype)
    assert_close(db, rdb, dtype)


def test_dense_backward_finite_differences(rng):
    x, w, b = randn(rng, (4, 6), np.float64), randn(rng, (3, 6), np.float64), randn(rng, 3, np.float64)
    r = randn(rng, (4, 3), np.float64)  # J = Σ r ⊙ y makes ∂J/∂y = r

    def J(x_=x, w_=w, b_=b):
        return float((ops.dense_forward(x_, w_, b_) * r).sum())

    dx, dw, db = ops.dense_backward(r, x, w)
    assert_close(dx, central_diff(lambda v: J(x_=v), x), rtol=1e-8)
    assert_close(dw, central_diff(lambda v: J(w_=v), w), rtol=1e-8)
    assert_close(db, central_diff(lambda v: J(b_=v), b), rtol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_accumulates_and_skips(rng, dtype):
    g, x, w = randn(rng, (6, 4), dtype), randn(rng, (6, 3), dtype), randn(rng, (4, 3), dtype)
    gw0, gb0, gx0 = randn(rng, (4, 3), dtype), randn(rng, 4, dtype), randn(rng, (6, 3), dtype)
    gw, gb, gx = gw0.copy(), gb0.copy(), gx0.copy()
    ops.dense_backward(g, x, w, grad_weight=gw, grad_bias=gb, grad_input=gx, accumulate=True)
    rdx, rdw, rdb = reference.dense_backward(g.astype(np.float64), x.astype(np.float64),
                                             w.astype(np.float64))
    assert_close(gw, gw0 + rdw, dtype)
    assert_close(gb, gb0 + rdb, dtype)
    assert_close(gx, gx0 + rdx, dtype)
    # parameters accumulate while the input gradient is overwritten (a Linear inside a model)
    gx = gx0.copy()
    ops.dense_backward(g, x, w, grad_weight=gw, grad_input=gx, accumulate=True, accumulate_input=False)
    assert_close(gx, rdx, dtype)
    assert_close(gw, gw0 + 2 * rdw, dtype)
    # overwrite (the default), no input gradient, no bias gradient
    dx, dw2, db = ops.dense_backward(g, x, w, grad_weight=gw, bias=False, input_grad=False)
    assert dx is None and db is None and dw2 is gw
    assert_close(gw, rdw, dtype)


def test_dense_batch_of_zero_rows():
    w = np.ones((3, 2))
    assert ops.dense_forward(np.zeros((0, 2)), w, np.ones(3), "relu").shape == (0, 3)
    dx, dw, db = ops.dense_backward(np.zeros((0, 3)), np.zeros((0, 2)), w)
    assert dx.shape == (0, 2) and np.array_equal(dw, np.zeros((3, 2))) and np.array_equal(db, np.zeros(3))


# ---------------------------------------------------------------- activations

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_activation_forward_backward_match_reference(rng, dtype, act):
    p = ACT_PARAMS.get(act, {})
    x = randn(rng, (7, 13), dtype, 3.0)
    g = randn(rng, (7, 13), dtype)
    y = ops.activation_forward(x, act, **p)
    x64 = x.astype(np.float64)
    y64 = reference.activation_forward(x64, act, **p)
    assert_close(y, y64, dtype)
    expected = reference.activation_backward(g.astype(np.float64), act, x=x64, **p)
    assert_close(ops.activation_backward(g, act, x=x, **p), expected, dtype)
    if act in ops.FROM_OUTPUT or act == "leaky_relu":  # from the saved output alone
        assert_close(ops.activation_backward(g, act, y=y, **p), expected, dtype)


@pytest.mark.parametrize("act", ACTS)
def test_activation_backward_finite_differences(rng, act):
    p = ACT_PARAMS.get(act, {})
    x = away_from_kinks(randn(rng, (3, 5), np.float64, 2.0), act)
    r = randn(rng, (3, 5), np.float64)
    num = central_diff(lambda v: float((ops.activation_forward(v, act, **p) * r).sum()), x)
    assert_close(ops.activation_backward(r, act, x=x, **p), num, rtol=1e-8)


@pytest.mark.parametrize("act", ACTS)
def test_activation_in_place(rng, act):
    p = ACT_PARAMS.get(act, {})
    x = randn(rng, (4, 6), np.float64)
    g = randn(rng, (4, 6), np.float64)
    expected_y = ops.activation_forward(x, act, **p)
    expected_g = ops.activation_backward(g, act, x=x, **p)
    xc = x.copy()
    assert ops.activation_forward(xc, act, out=xc, **p) is xc
    assert np.array_equal(xc, expected_y)
    gc = g.copy()
    assert ops.activation_backward(gc, act, x=x, out=gc, **p) is gc
    assert np.array_equal(gc, expected_g)


def test_activation_conventions_at_zero():
    z = np.zeros(3)
    g = np.ones(3)
    assert np.array_equal(ops.activation_backward(g, "relu", y=ops.activation_forward(z, "relu")), z)
    assert np.array_equal(ops.activation_backward(g, "relu", x=z), z)
    assert np.array_equal(ops.activation_backward(g, "abs", x=z), z)
    assert np.allclose(ops.activation_backward(g, "leaky_relu", x=z), 0.01)


def test_activation_keeps_any_shape(rng):
    x = randn(rng, (2, 3, 4), np.float32)
    assert_close(ops.activation_forward(x, "tanh"), np.tanh(x.astype(np.float64)), np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [1, 6])
def test_prelu_matches_reference_and_differences(rng, dtype, channels):
    x, g = randn(rng, (5, 6), dtype), randn(rng, (5, 6), dtype)
    w = (0.25 + 0.1 * rng.standard_normal(channels)).astype(dtype)
    assert_close(ops.prelu_forward(x, w), reference.prelu_forward(x.astype(np.float64), w.astype(np.float64)), dtype)
    dx, dw = ops.prelu_backward(g, x, w)
    rdx, rdw = reference.prelu_backward(*(a.astype(np.float64) for a in (g, x, w)))
    assert_close(dx, rdx, dtype)
    assert_close(dw, rdw, dtype)
    if dtype == np.float64:
        x = away_from_kinks(x, "relu")
        dx, dw = ops.prelu_backward(g, x, w)
        assert_close(dx, central_diff(lambda v: float((ops.prelu_forward(v, w) * g).sum()), x), rtol=1e-8)
        assert_close(dw, central_diff(lambda v: float((ops.prelu_forward(x, v) * g).sum()), w), rtol=1e-8)


# ---------------------------------------------------------------- softmax and losses

@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_and_log_softmax(rng, dtype):
    z = randn(rng, (6, 9), dtype, 5.0)
    z64 = z.astype(np.float64)
    assert_close(ops.softmax(z), reference.softmax(z64), dtype)
    assert_close(ops.log_softmax(z), reference.log_softmax(z64), dtype)
    assert np.allclose(ops.softmax(z).sum(1), 1, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("soft", [False, True])
def test_softmax_cross_entropy_matches_reference(rng, dtype, soft):
    z = randn(rng, (8, 5), dtype, 3.0)
    t = rng.dirichlet(np.ones(5), 8).astype(dtype) if soft else rng.integers(0, 5, 8)
    loss, g = ops.softmax_cross_entropy(z, t)
    rloss, rg = reference.softmax_cross_entropy(z.astype(np.float64), t if not soft else t.astype(np.float64))
    assert isinstance(loss, float)
    assert abs(loss - rloss) <= RTOL[dtype] * max(1.0, abs(rloss))
    assert_close(g, rg, dtype)
    loss2, none = ops.softmax_cross_entropy(z, t, compute_grad=False)
    assert none is None and loss2 == loss


@pytest.mark.parametrize("soft", [False, True])
def test_softmax_cross_entropy_finite_differences(rng, soft):
    z = randn(rng, (4, 3), np.float64, 2.0)
    t = rng.dirichlet(np.ones(3), 4) * 1.5 if soft else np.array([2, 0, 1, 2])  # soft mass ≠ 1 too
    _, g = ops.softmax_cross_entropy(z, t)
    assert_close(g, central_diff(lambda v: ops.softmax_cross_entropy(v, t)[0], z), rtol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_bce_and_mse_match_reference(rng, dtype):
    z = randn(rng, (6, 4), dtype, 3.0)
    y = rng.random((6, 4)).astype(dtype)
    for fn, rfn in ((ops.sigmoid_bce, reference.sigmoid_bce), (ops.mse, reference.mse)):
        loss, g = fn(z, y)
        rloss, rg = rfn(z.astype(np.float64), y.astype(np.float64))
        assert abs(loss - rloss) <= RTOL[dtype] * max(1.0, abs(rloss))
        assert_close(g, rg, dtype)


@pytest.mark.parametrize("name", ["sigmoid_bce", "mse"])
def test_elementwise_losses_finite_differences(rng, name):
    fn = getattr(ops, name)
    z, y = randn(rng, (3, 4), np.float64, 2.0), rng.random((3, 4))
    _, g = fn(z, y)
    assert_close(g, central_diff(lambda v: fn(v, y)[0], z), rtol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_at_extreme_logits(dtype):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], dtype)
    loss, g = ops.softmax_cross_entropy(z, np.array([1, 2]))
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    assert abs(loss - 2e4 / 2) < 1e-3 * 1e4  # row 0 pays 2e4, row 1 pays 0
    loss, g = ops.sigmoid_bce(z, (z > 0).astype(dtype))
    assert abs(loss - np.log(2) / 6) < 1e-6  # only the logit 0 costs anything: log 2
    assert np.all(np.isfinite(g))
    loss, g = ops.sigmoid_bce(z, (z < 0).astype(dtype))
    assert np.isfinite(loss) and abs(loss - (5e4 + np.log(2)) / 6) < 1e-3
    for act in ("sigmoid", "tanh", "softplus", "gelu", "silu"):
        y = ops.activation_forward(z, act)
        d = ops.activation_backward(np.ones_like(z), act, x=z)
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(d)), act


def test_losses_in_place_gradient(rng):
    z = randn(rng, (5, 4), np.float64)
    expected = ops.softmax_cross_entropy(z, np.arange(5) % 4)
    zc = z.copy()
    loss, g = ops.softmax_cross_entropy(zc, np.arange(5) % 4, grad_out=zc)
    assert g is zc and loss == expected[0] and np.array_equal(zc, expected[1])
    t = rng.random((5, 4))
    for fn in (ops.sigmoid_bce, ops.mse):
        expected = fn(z, t)
        zc = z.copy()
        loss, g = fn(zc, t, grad_out=zc)
        assert g is zc and loss == expected[0] and np.array_equal(zc, expected[1])


# ---------------------------------------------------------------- optimizers

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
                                dict(momentum=0.8, dampening=0.3, weight_decay=0.01),
                                dict(weight_decay=0.1)])
def test_sgd_step_matches_reference(rng, dtype, kw):
    p = randn(rng, (4, 5), dtype)
    rp = p.astype(np.float64)
    buf, rbuf = np.zeros_like(p), np.zeros_like(rp)
    for t in range(4):
        g = randn(rng, (4, 5), dtype)
        ops.sgd_step(p, g, lr=0.1, momentum_buffer=buf, first_step=t == 0, **kw)
        reference.sgd_step(rp, g.astype(np.float64), lr=0.1, momentum_buffer=rbuf, first_step=t == 0, **kw)
    assert_close(p, rp, dtype, rtol=10 * RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_updates_flush_denormals(dtype):
    """The updates run with denormals flushed to zero (csrc/optim.c: a momentum decaying through
    the denormal range costs ~45x otherwise): a subnormal momentum times 0.9 becomes 0, a normal
    one is kept; Adam's subnormal g² adds nothing to v; the caller's FP mode is restored."""
    sub = np.finfo(dtype).smallest_normal / 4
    p = np.ones(64, dtype)
    buf = np.full(64, sub, dtype)
    buf[0] = 1.0
    ops.sgd_step(p, np.zeros(64, dtype), lr=0.0, momentum=0.9, momentum_buffer=buf)
    assert buf[0] == dtype(0.9) and not buf[1:].any()
    m, v = np.zeros(64, dtype), np.zeros(64, dtype)
    ops.adam_step(p, np.full(64, np.sqrt(sub), dtype), m, v, step=1, lr=0.0)
    assert not v.any() and m.all()
    tiny = np.array([np.finfo(dtype).smallest_normal], dtype)
    assert (tiny / dtype(4))[0] > 0   # NumPy's own arithmetic still makes subnormals


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decoupled,wd", [(False, 0.0), (False, 0.05), (True, 0.01)])
def test_adam_step_matches_reference(rng, dtype, decoupled, wd):
    p = randn(rng, 50, dtype)
    rp = p.astype(np.float64)
    state = [np.zeros_like(p), np.zeros_like(p)]
    rstate = [np.zeros_like(rp), np.zeros_like(rp)]
    for t in range(1, 6):
        g = randn(rng, 50, dtype)
        ops.adam_step(p, g, *state, step=t, lr=0.01, weight_decay=wd, decoupled=decoupled)
        reference.adam_step(rp, g.astype(np.float64), *rstate, step=t, lr=0.01,
                            weight_decay=wd, decoupled=decoupled)
    assert_close(p, rp, dtype, rtol=10 * RTOL[dtype])
    assert_close(state[1], rstate[1], dtype, rtol=10 * RTOL[dtype])


def test_optimizers_match_torch(rng):
    torch = pytest.importorskip("torch")
    cases = [("sgd", dict(momentum=0.9, nesterov=True, weight_decay=0.01)),
             ("sgd", dict(momentum=0.9, dampening=0.1)),
             ("adam", dict(weight_decay=0.01)), ("adamw", dict(weight_decay=0.05))]
    for kind, kw in cases:
        p0 = rng.standard_normal(30)
        grads = rng.standard_normal((5, 30))
        tp = torch.tensor(p0.copy(), requires_grad=True)
        if kind == "sgd":
            topt = torch.optim.SGD([tp], lr=0.05, **kw)
        else:
            cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
            topt = cls([tp], lr=0.05, **kw)
        p, s1, s2 = p0.copy(), np.zeros(30), np.zeros(30)
        for t, g in enumerate(grads):
            tp.grad = torch.tensor(g)
            topt.step()
            if kind == "sgd":
                ops.sgd_step(p, g, lr=0.05, momentum_buffer=s1, first_step=t == 0, **kw)
            else:
                ops.adam_step(p, g, s1, s2, step=t + 1, lr=0.05, decoupled=kind == "adamw", **kw)
        assert_close(p, tp.detach().numpy(), rtol=1e-12)


def test_losses_match_torch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    z = rng.standard_normal((6, 4)) * 3
    labels = rng.integers(0, 4, 6)
    soft = rng.dirichlet(np.ones(4), 6)
    y01 = rng.random((6, 4))
    for ours, theirs in [
        (ops.softmax_cross_entropy(z, labels), lambda t: F.cross_entropy(t, torch.tensor(labels))),
        (ops.softmax_cross_entropy(z, soft), lambda t: F.cross_entropy(t, torch.tensor(soft))),
        (ops.sigmoid_bce(z, y01), lambda t: F.binary_cross_entropy_with_logits(t, torch.tensor(y01))),
        (ops.mse(z, y01), lambda t: F.mse_loss(t, torch.tensor(y01))),
    ]:
        tz = torch.tensor(z, requires_grad=True)
        loss = theirs(tz)
        loss.backward()
        assert abs(ours[0] - loss.item()) <= 1e-12 * max(1, abs(loss.item()))
        assert_close(ours[1], tz.grad.numpy(), rtol=1e-12)


# ---------------------------------------------------------------- property tests over shapes

SIZES = st.sampled_from([1, 2, 3, 5, 7, 13, 31, 64, 97])


@settings(max_examples=40, deadline=None)
@given(batch=SIZES, n_in=SIZES, n_out=SIZES, dtype=st.sampled_from(DTYPES),
       act=st.sampled_from(ACTS), seed=st.integers(0, 2**32 - 1))
def test_dense_property(batch, n_in, n_out, dtype, act, seed):
    rng = np.random.default_rng(seed)
    x, w, b = randn(rng, (batch, n_in), dtype), randn(rng, (n_out, n_in), dtype), randn(rng, n_out, dtype)
    g = randn(rng, (batch, n_out), dtype)
    f64 = [a.astype(np.float64) for a in (x, w, b, g)]
    pre = np.empty((batch, n_out), dtype)
    y = ops.dense_forward(x, w, b, act, preact_out=pre)
    # GEMM + bias against exact arithmetic; the fused activation and its backward against
    # the oracle on the same pre-activation and output (cos of a large, rounded argument or
    # 1 − y² from a saturated output are ill-conditioned whatever computes them)
    # each sum relative to the sum of its terms' magnitudes (a sum that cancels is not
    # computed more exactly than that, by fastprop or by the BLAS)
    a64 = [np.abs(a) for a in f64]
    assert_close(pre, f64[0] @ f64[1].T + f64[2], dtype, scale=(a64[0] @ a64[1].T + a64[2]).max())
    pre64 = pre.astype(np.float64)
    assert_close(y, reference.activation_forward(pre64, act), dtype)
    ga = ops.activation_backward(g, act, x=pre, y=y)
    ref_ga = reference.activation_backward(f64[3], act, x=pre64, y=y.astype(np.float64))
    assert_close(ga, ref_ga, dtype)
    dx, dw, db = ops.dense_backward(g, x, w)
    scales = ((a64[3] @ a64[1]).max(), (a64[3].T @ a64[0]).max(), a64[3].sum(axis=0).max())
    for ours, ref, scale in zip((dx, dw, db), reference.dense_backward(f64[3], f64[0], f64[1]), scales):
        assert_close(ours, ref, dtype, scale=scale)


@settings(max_examples=30, deadline=None)
@given(batch=SIZES, classes=SIZES, dtype=st.sampled_from(DTYPES), scale=st.sampled_from([0.1, 3.0, 1e4]),
       seed=st.integers(0, 2**32 - 1))
def test_softmax_cross_entropy_property(batch, classes, dtype, scale, seed):
    rng = np.random.default_rng(seed)
    z = randn(rng, (batch, classes), dtype, scale)
    labels = rng.integers(0, classes, batch)
    loss, g = ops.softmax_cross_entropy(z, labels)
    rloss, rg = reference.softmax_cross_entropy(z.astype(np.float64), labels)
    assert np.isfinite(loss) and abs(loss - rloss) <= RTOL[dtype] * max(1.0, abs(rloss))
    assert_close(g, rg, dtype)
    assert np.allclose(g.sum(1), 0, atol=10 * RTOL[dtype] / batch)  # each row of p − y sums to 0


@pytest.mark.parametrize("gap", [3.0, 8.0, 15.0])
def test_softmax_cross_entropy_confident_label_gradient(gap):
    """p_y − 1 for p_y close to 1 is computed without cancellation: every element of the
    float32 gradient has a small relative error, including the tiny ones."""
    z = np.array([[gap, 0.0], [0.0, gap], [gap, gap - 1.0]], np.float32)
    labels = np.array([0, 1, 0])
    _, g = ops.softmax_cross_entropy(z, labels)
    _, rg = reference.softmax_cross_entropy(z.astype(np.float64), labels)
    assert np.all(np.abs(g - rg) <= 4e-7 * np.abs(rg)), (g, rg)


def test_tanh_backward_from_a_saturated_output_is_accurate():
    """1 − y² from y close to ±1 is formed as (1 − |y|)(1 + |y|), which does not cancel:
    each element within a few float32 ulp of the float64 value on the same y."""
    rng = np.random.default_rng(0)
    y = (1 - rng.uniform(0.5, 1, 200) * 2.0 ** -rng.integers(1, 20, 200)).astype(np.float32)
    y = np.concatenate([y, -y])  # 1 − y*y in float32 is off by up to ~700 ulp here
    g = np.ones_like(y)
    ours = ops.activation_backward(g, "tanh", y=y)
    exact = 1 - y.astype(np.float64) ** 2
    assert np.all(np.abs(ours - exact) <= 4 * np.finfo(np.float32).eps * exact), (ours, exact)


def test_dense_property_cancelling_input_gradient_case():
    """The case hypothesis found: ∇x of one input through 7 outputs cancels to 1/10 of its terms."""
    test_dense_property.hypothesis.inner_test(1, 1, 7, np.float32, "identity", 109193)


def test_dense_property_saturated_tanh_case():
    """The case hypothesis found for test_dense_property (a saturated tanh, n_out = 1)."""
    test_dense_property.hypothesis.inner_test(1, 97, 1, np.float32, "tanh", 722208)


def test_dense_property_gelu_negative_tail_case():
    """The case hypothesis found: gelu(−5.77) = x Φ(x) with Φ ≈ 4e-9, where the oracle's
    ½(1 + erf) cancelled (4e-9 relative error); both now use ½ erfc(−x/√2)."""
    test_dense_property.hypothesis.inner_test(1, 31, 1, np.float64, "gelu", 655669347)


def test_softmax_cross_entropy_confident_float64_case():
    """The case hypothesis found: p_y − 1 ≈ −1.8e-5 in float64, where the oracle's p_y − 1
    cancelled (7.6e-12 relative error); it now sums the other classes' exponentials."""
    test_softmax_cross_entropy_property.hypothesis.inner_test(1, 3, np.float64, 3.0, 2279)
