"""Two output units from the literature: GaussianNLL (a network predicting the mean and the
variance of a Gaussian) and LowRankLinear (W = V U); against fastprop.reference, float64
central differences and (when installed) torch."""
import numpy as np
import pytest
from conftest import RTOL, assert_close, central_diff

import fastprop as fp
from fastprop import ops
from fastprop import reference as ref

F32, F64 = np.float32, np.float64


def gauss_case(rng, dtype, B=5, k=3, scale=1.0):
    z = np.concatenate([rng.standard_normal((B, k)), scale * rng.standard_normal((B, k))], axis=1)
    return z.astype(dtype), rng.standard_normal((B, k)).astype(dtype)


# ---------------------------------------------------------------- GaussianNLL

@pytest.mark.parametrize("dtype", [F32, F64])
def test_gaussian_nll_vs_reference(dtype, rng):
    z, t = gauss_case(rng, dtype, B=17, k=19, scale=3.0)
    J, g = ops.gaussian_nll(z, t)
    Jr, gr = ref.gaussian_nll(z, t)
    assert J == pytest.approx(Jr, rel=RTOL[dtype])
    assert_close(g, gr, dtype)
    # the formula itself, in float64
    mu, s = z[:, :19].astype(F64), z[:, 19:].astype(F64)
    d = t.astype(F64) - mu
    assert J == pytest.approx(np.mean(0.5 * s + 0.5 * d * d / np.exp(s)), rel=10 * RTOL[dtype])
    # value only, and in place
    assert ops.gaussian_nll(z, t, compute_grad=False) == (J, None)
    zc = z.copy()
    J2, g2 = ops.gaussian_nll(zc, t, grad_out=zc)
    assert g2 is zc and J2 == J and np.array_equal(zc, g)


def test_gaussian_nll_central_differences(rng):
    z, t = gauss_case(rng, F64)
    loss = fp.GaussianNLL()
    loss(z, t)
    assert_close(loss.backward(), central_diff(lambda zz: fp.GaussianNLL()(zz, t), z), rtol=1e-7)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_gaussian_nll_is_stable_for_large_log_variance(dtype):
    """|log σ²| in the hundreds or thousands: finite where the true values are, no NaN."""
    mu = np.array([[0.0, 1.0, 0.0, 2.0]], dtype)
    s = np.array([[300.0, 1000.0, -300.0, -1000.0]], dtype)   # σ² = e^s over/underflows
    t = np.array([[1.0, 0.0, 0.0, 2.0]], dtype)               # the last two: t = μ exactly
    z = np.concatenate([mu, s], axis=1)
    J, g = ops.gaussian_nll(z, t)
    # exact: ½ s + ½ (t − μ)² e^{−s}; the e^{−s} terms vanish for s ≫ 0 and t = μ
    assert J == pytest.approx(np.mean(0.5 * s.astype(F64)), rel=1e-6)
    assert np.all(np.isfinite(g))
    n, d, s64 = 4, (t - mu).astype(F64), s.astype(F64)
    with np.errstate(over="ignore"):
        e = np.where(d == 0, 0, np.exp(-s64))
    assert_close(g[0, :4], (-d * e / n)[0], dtype)
    assert_close(g[0, 4:], (0.5 * (1 - d * d * e) / n)[0], dtype)
    assert np.array_equal(g[0, 2:4], np.zeros(2, dtype))   # t = μ: exactly 0 though e^{−s} = inf
    # t ≠ μ with σ² → 0: the loss is +inf (as the true value overflows), never NaN
    J, g = ops.gaussian_nll(np.array([[0.0, -1000.0]], dtype), np.array([[1.0]], dtype))
    assert J == np.inf and not np.any(np.isnan(g))
    # moderate values in float32 that the naive (t − μ)²/σ² would overflow: σ² = e^-100
    J, g = ops.gaussian_nll(np.array([[0.0, -100.0]], dtype), np.array([[1e-10]], dtype))
    assert np.isfinite(J) and J == pytest.approx(-50 + 0.5 * 1e-20 * np.exp(100), rel=1e-4)


def test_gaussian_nll_vs_torch(rng):
    torch = pytest.importorskip("torch")
    z, t = gauss_case(rng, F64, B=6, k=4)
    zt = torch.from_numpy(z.copy()).requires_grad_(True)
    Jt = torch.nn.GaussianNLLLoss()(zt[:, :4], torch.from_numpy(t), torch.exp(zt[:, 4:]))
    Jt.backward()
    loss = fp.GaussianNLL()
    assert loss(z, t) == pytest.approx(Jt.item(), rel=1e-12)
    assert_close(loss.backward(), zt.grad.numpy(), rtol=1e-12)


def test_gaussian_nll_bad_input(rng):
    z, t = gauss_case(rng, F64)
    g = np.zeros_like(z)
    with pytest.raises(ValueError, match="pred must be"):
        ops.gaussian_nll(z[:, :5], t, grad_out=g)
    with pytest.raises(ValueError, match="target has shape"):
        ops.gaussian_nll(z, t[:, :2], grad_out=g)
    with pytest.raises(TypeError, match="pred"):
        ops.gaussian_nll(z.astype(np.int64), t)
    assert not g.any()


def test_gaussian_output_unit_learns_heteroscedastic_noise():
    """A net with a [μ, log σ²] head fits y = x + noise of std 0.1 + |x|: its predicted σ follows."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, (4000, 1))
    Y = X + (0.1 + np.abs(X)) * rng.standard_normal(X.shape)
    model = fp.Sequential(fp.Linear(1, 32, rng=0), fp.Tanh(), fp.Linear(32, 2, rng=1))
    fp.fit(model, X, Y, loss=fp.GaussianNLL(), optimizer=fp.Adam(model.parameters(), lr=0.01),
           epochs=30, batch_size=128, progress=False)
    out = model(np.array([[-1.5], [0.0], [1.5]]))
    sigma = np.exp(0.5 * out[:, 1])
    assert_close(sigma, [1.6, 0.1, 1.6], rtol=0.3)
    assert_close(out[:, 0], [-1.5, 0.0, 1.5], rtol=0.2)


# ---------------------------------------------------------------- LowRankLinear

@pytest.mark.parametrize("dtype", [F32, F64])
def test_low_rank_linear_vs_reference(dtype, rng):
    m = fp.LowRankLinear(7, 5, 2, dtype=dtype, rng=0, bias_init=0.1)
    assert m.num_parameters() == 2 * (7 + 5) + 5
    assert [n for n, _ in m.named_parameters()] == ["U", "V", "bias"]
    x = rng.standard_normal((6, 7)).astype(dtype)
    y = m(x)
    U, V, b = m.U.data, m.V.data, m.bias.data
    assert_close(y, ref.low_rank_forward(x, U, V, b), dtype)
    assert_close(y, x @ m.weight.T + b, dtype)
    assert np.linalg.matrix_rank(V.astype(F64) @ U.astype(F64)) == 2
    gy = rng.standard_normal(y.shape).astype(dtype)
    m.zero_grad()
    gx = m.backward(gy)
    rgx, rgu, rgv, rgb = ref.low_rank_backward(gy, x, U, V)
    for a, e in ((gx, rgx), (m.U.grad, rgu), (m.V.grad, rgv), (m.bias.grad, rgb)):
        assert_close(a, e, dtype)
    m.backward(gy)   # accumulates, as every module does
    assert_close(m.U.grad, 2 * rgu, dtype)


def test_low_rank_linear_central_differences(rng):
    model = fp.Sequential(fp.LowRankLinear(6, 5, 3, dtype=F64, rng=0, bias_init=0.1), fp.Tanh(),
                          fp.LowRankLinear(5, 4, 2, bias=False, dtype=F64, rng=1))
    x = rng.standard_normal((4, 6))
    loss = fp.SoftmaxCrossEntropy()
    y = rng.integers(0, 4, 4)
    assert fp.gradcheck(model, loss, x, y) < 1e-6
    out = model(x)
    gy = rng.standard_normal(out.shape)
    gx = model.backward(gy)
    assert_close(gx, central_diff(lambda v: float(np.sum(model(v) * gy)), x), rtol=1e-7)


def test_low_rank_linear_trains_and_round_trips(tmp_path, rng):
    model = fp.Sequential(fp.Linear(8, 16, rng=0), fp.ReLU(), fp.LowRankLinear(16, 16, 4, rng=1),
                          fp.ReLU(), fp.Linear(16, 3, rng=2))
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.Adam(model.parameters(), lr=0.01))
    assert not step.fused
    x, y = rng.standard_normal((32, 8)), rng.integers(0, 3, 32)
    first = step(x, y)
    for _ in range(60):
        last = step(x, y)
    assert last < 0.5 * first
    fp.save(model, tmp_path / "lr.npz")
    back = fp.load(tmp_path / "lr.npz")
    assert back[2]._config() == model[2]._config()
    assert np.array_equal(back(x), model(x))


def test_low_rank_linear_bad_arguments():
    for bad in [(4, 4, 0), (4, 0, 2), (4, 4, 1.5), (True, 4, 2)]:
        with pytest.raises(ValueError):
            fp.LowRankLinear(*bad)
    with pytest.raises(ValueError, match="features"):
        fp.LowRankLinear(4, 4, 2)(np.ones((2, 3), F32))
