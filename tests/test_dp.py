"""DP-SGD's Gaussian noise (csrc/dropout.c's gaussian_noise) and per-example gradients of
weighted losses (sample_weight, class weights, label smoothing)."""
import copy

import numpy as np
import pytest
from conftest import assert_close, assert_unchanged, snapshot
from test_autodiff import chain, gradient

import fastprop as fp
from fastprop import _kernels
from fastprop.reference import gaussian_noise as reference_noise

F64 = np.float64
N = 200_000


# ---------------------------------------------------------------- the generator

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noise_is_standard_normal(dtype):
    stats = pytest.importorskip("scipy.stats")
    z = _kernels.gaussian_noise(np.empty(N, dtype), 2026, 7)
    assert z.dtype == dtype and np.all(np.isfinite(z))
    se = 1 / np.sqrt(N)
    # moments within 5 standard errors: mean 1/√N, variance √(2/N), skewness √(6/N), kurtosis √(24/N)
    assert abs(z.mean()) < 5 * se
    assert abs(z.var() - 1) < 5 * np.sqrt(2) * se
    assert abs(stats.skew(z)) < 5 * np.sqrt(6) * se
    assert abs(stats.kurtosis(z)) < 5 * np.sqrt(24) * se
    assert stats.kstest(z.astype(F64), "norm").pvalue > 1e-3
    # the pairs of one Box–Muller draw (normals r and r + 128 of a chunk) are uncorrelated
    pairs = z[:N // 256 * 256].reshape(-1, 2, 128)
    assert abs(np.corrcoef(pairs[:, 0].ravel(), pairs[:, 1].ravel())[0, 1]) < 5 * np.sqrt(2 / N)
    # tails: P(|z| > 3) = 0.0027, within 5 standard errors; nothing beyond the 6.66 bound
    p3 = np.mean(np.abs(z) > 3)
    assert abs(p3 - 0.0027) < 5 * np.sqrt(0.0027 / N)
    assert np.abs(z).max() <= 6.67


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noise_equals_the_numpy_reference(dtype):
    z = _kernels.gaussian_noise(np.empty(3000, dtype), 2 ** 64 - 5, 2 ** 64 - 100)  # the counter wraps
    want = reference_noise(3000, 2 ** 64 - 5, 2 ** 64 - 100)
    # float64 is libm's log/cos/sin; float32 fastmath's, relative 1e-6 of ρ ≤ 6.66
    assert np.abs(z - want).max() <= (1e-12 if dtype == F64 else 2e-5)


def test_noise_is_reproducible_and_splits_into_ranges():
    a = _kernels.gaussian_noise(np.empty(1000), 5, 64)
    assert np.array_equal(a, _kernels.gaussian_noise(np.empty(1000), 5, 64))
    assert not np.allclose(a, _kernels.gaussian_noise(np.empty(1000), 6, 64))   # another key
    assert not np.allclose(a, _kernels.gaussian_noise(np.empty(1000), 5, 128))  # another counter
    # ranges [0, 300) and [300, 1000) give the values of one call (any cut, inside a chunk too)
    b = np.empty(1000)
    _kernels.gaussian_noise(b[:300], 5, 64)
    _kernels.gaussian_noise(b[300:], 5, 64, offset=300)
    assert np.array_equal(a, b)
    # the next chunk of normals is the stream 64 blocks on
    assert np.array_equal(a[256:512], _kernels.gaussian_noise(np.empty(256), 5, 128))
    # float32 and float64 draw the same normals, to float32's rounding
    a32 = _kernels.gaussian_noise(np.empty(1000, np.float32), 5, 64)
    assert np.abs(a32 - a).max() < 2e-5


def test_noise_on_threads_is_the_one_thread_noise():
    """Above 2 × 2¹⁹ normals the kernel cuts the range into pieces on fastprop's threads."""
    n = 2 ** 20 + 1000
    old = fp.get_num_threads()
    try:
        fp.set_num_threads(1)
        one = _kernels.gaussian_noise(np.empty(n, np.float32), 9, 3)
        fp.set_num_threads(2)
        two = _kernels.gaussian_noise(np.empty(n, np.float32), 9, 3)
    finally:
        fp.set_num_threads(old)
    assert np.array_equal(one, two)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noise_scaled_and_accumulated(dtype):
    z = _kernels.gaussian_noise(np.empty((30, 7), dtype), 1, 2)
    g = np.arange(210, dtype=dtype).reshape(30, 7)
    out = _kernels.gaussian_noise(g, 1, 2, scale=0.25, accumulate=True)
    assert out is g
    assert_close(g, np.arange(210).reshape(30, 7) + 0.25 * z.astype(F64), rtol=1e-6)
    _kernels.gaussian_noise(g, 1, 2, scale=-3.0)
    assert np.array_equal(g, dtype(-3.0) * z)
    _kernels.gaussian_noise(np.empty(0, dtype), 1, 2)  # nothing to draw


def test_noise_bad_input():
    g = np.zeros(10)
    for bad, error, name in ((np.zeros(10, np.int64), TypeError, "out"), ([0.0] * 10, TypeError, "out")):
        with pytest.raises(error, match=name):
            _kernels.gaussian_noise(bad, 1, 2)
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        _kernels.gaussian_noise(np.zeros((10, 2))[:, 0], 1, 2)
    ro = np.zeros(10)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        _kernels.gaussian_noise(ro, 1, 2)
    for kw, error, name in ((dict(key=-1), ValueError, "key"), (dict(key=2 ** 64), ValueError, "key"),
                            (dict(key=1.5), TypeError, "key"), (dict(counter=True), TypeError, "counter"),
                            (dict(offset=-1), ValueError, "offset"),
                            (dict(offset=2 ** 63 - 5), ValueError, "offset"),
                            (dict(scale=np.nan), ValueError, "scale"), (dict(scale="1"), TypeError, "scale")):
        args = dict(key=1, counter=2) | kw
        with pytest.raises(error, match=name):
            _kernels.gaussian_noise(g, args.pop("key"), args.pop("counter"), **args)
    assert not g.any()


# ---------------------------------------------------------------- DP-SGD with noise

def clipped_mean(model, loss, x, y, clip, sample_weight=None):
    G = fp.per_example_grads(model, loss, x, y, sample_weight=sample_weight).astype(F64)
    G *= np.minimum(1, clip / np.linalg.norm(G, axis=1))[:, None]
    return G.sum(axis=0) / len(y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [7, "generator"])
def test_dp_step_adds_exactly_the_generators_noise(rng, dtype, seed):
    """∇ = clipped sum / B + (σC/B)·z with z the C generator's normals for the stream the
    seed gives (key = default_rng(seed).integers(2⁶⁴), as Dropout's), the counter moving on
    by dropout_blocks(n) each step."""
    model = chain(dtype)
    ref = copy.deepcopy(model)
    n = model.num_parameters()
    x = rng.standard_normal((9, 5)).astype(dtype)
    y = rng.integers(0, 3, 9)
    loss, clip, sigma = fp.SoftmaxCrossEntropy(), 0.5, 1.3
    given = 7 if seed == 7 else np.random.default_rng(7)
    step = fp.TrainStep(model, loss, fp.SGD(model.parameters(), lr=0.0), per_example_clip=clip,
                        noise_multiplier=sigma, rng=given)
    key = int(np.random.default_rng(7).integers(0, 2 ** 64, dtype=np.uint64))
    assert step._dp.rng_state() == {"key": key, "counter": 0}
    tol = 1e-10 if dtype == F64 else 1e-5
    for t in range(3):
        step(x, y)
        z = _kernels.gaussian_noise(np.empty(n, dtype), key, t * _kernels.dropout_blocks(n))
        want = clipped_mean(ref, loss, x, y, clip) + sigma * clip / 9 * z.astype(F64)
        got = np.concatenate([p.grad.ravel() for p in model.parameters()])
        assert got.dtype == dtype
        assert np.abs(got - want).max() <= tol * max(1, np.abs(want).max())
    assert step._dp.rng_state()["counter"] == 3 * _kernels.dropout_blocks(n)
    # the same seed again: the same noise, bit for bit
    again = copy.deepcopy(ref)
    step2 = fp.TrainStep(again, loss, fp.SGD(again.parameters(), lr=0.0), per_example_clip=clip,
                         noise_multiplier=sigma, rng=7)
    first = copy.deepcopy(ref)
    step1 = fp.TrainStep(first, loss, fp.SGD(first.parameters(), lr=0.0), per_example_clip=clip,
                         noise_multiplier=sigma, rng=7)
    step1(x, y), step2(x, y)
    assert all(np.array_equal(a.grad, b.grad) for a, b in zip(first.parameters(), again.parameters()))


# ---------------------------------------------------------------- weighted losses

def weighted_loop(model, loss, x, y, sample_weight):
    """Row i = B wᵢ ∇lᵢ / Σ wⱼ from one-row batches: the one-row loss is wᵢlᵢ / wᵢ = lᵢ
    (its weight cancels; for a class-weighted cross-entropy wᵢ = sᵢ c_{yᵢ}, and lᵢ keeps the
    c_j of label smoothing's other classes), so the row is B wᵢ / Σ w times its gradient."""
    s = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, F64)
    c = np.ones(len(y)) if getattr(loss, "weight", None) is None else loss.weight[y]
    w = s * c
    rows = [gradient(model, loss, x[i:i + 1], y[i:i + 1]) for i in range(len(y))]
    return len(y) * np.array(rows) * (w / w.sum())[:, None]


LOSSES = {
    "sample_weight": lambda: fp.SoftmaxCrossEntropy(),
    "class_weight": lambda: fp.SoftmaxCrossEntropy(weight=[0.5, 2.0, 1.0]),
    "label_smoothing": lambda: fp.SoftmaxCrossEntropy(label_smoothing=0.2),
    "all": lambda: fp.SoftmaxCrossEntropy(weight=[0.5, 2.0, 1.0], label_smoothing=0.1),
}


@pytest.mark.parametrize("kind", list(LOSSES))
def test_per_example_grads_of_weighted_losses(rng, kind):
    model = chain()
    x = rng.standard_normal((7, 5))
    y = np.array([0, 1, 2, 1, 0, 2, 2])
    loss = LOSSES[kind]()
    sw = rng.uniform(0.2, 3.0, 7) if kind in ("sample_weight", "all") else None
    snap = snapshot(model)
    G = fp.per_example_grads(model, loss, x, y, sample_weight=sw)
    norms = fp.per_example_grad_norms(model, loss, x, y, sample_weight=sw)
    assert_unchanged(model, snap)
    want = weighted_loop(model, loss, x, y, sw)
    assert_close(G, want, F64)
    assert_close(norms, np.linalg.norm(want, axis=1), F64)
    # the rows' mean is the weighted batch loss's gradient
    m = copy.deepcopy(model)
    m.zero_grad()
    loss(m(x), y, sw)
    m.backward(loss.backward())
    assert_close(G.mean(axis=0), np.concatenate([p.grad.ravel() for p in m.parameters()]), F64)


def test_sample_weight_of_ones_changes_nothing(rng):
    model, x, y = chain(), rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    loss = fp.SoftmaxCrossEntropy()
    assert_close(fp.per_example_grads(model, loss, x, y, sample_weight=np.ones(6)),
                 fp.per_example_grads(model, loss, x, y), F64)


def test_per_example_grads_of_a_weighted_mse_in_a_graph(rng):
    from test_graph import two_input_network
    model = two_input_network()
    x = (rng.standard_normal((5, 4)), rng.standard_normal((5, 3)))
    out = model(*x)
    y = rng.standard_normal(out.shape)
    sw = rng.uniform(0.5, 2.0, 5)
    loss = fp.MSE()
    G = fp.per_example_grads(model, loss, x, y, sample_weight=sw)
    m = copy.deepcopy(model)
    rows = []
    for i in range(5):
        m.zero_grad()
        loss(m(x[0][i:i + 1], x[1][i:i + 1]), y[i:i + 1])
        m.backward(loss.backward())
        rows.append(np.concatenate([p.grad.ravel() for p in m.parameters()]))
    assert_close(G, 5 * np.array(rows) * (sw / sw.sum())[:, None], F64)


def test_dp_step_with_sample_weight(rng):
    """TrainStep(per_example_clip=...)(x, y, sample_weight) clips the weighted rows."""
    model = chain()
    ref = copy.deepcopy(model)
    x, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    sw = rng.uniform(0.1, 2.0, 8)
    loss = fp.SoftmaxCrossEntropy(weight=[1.0, 3.0, 0.5])
    step = fp.TrainStep(model, loss, fp.SGD(model.parameters(), lr=0.1), per_example_clip=0.3)
    J = step(x, y, sw)
    assert_close(J, loss(ref(x), y, sw), F64)
    g = clipped_mean(ref, loss, x, y, 0.3, sw)
    assert_close(fp.parameters_to_vector(model), fp.parameters_to_vector(ref) - 0.1 * g, F64)


def test_bad_sample_weight_is_refused(rng):
    model, x, y = chain(), rng.standard_normal((4, 5)), rng.integers(0, 3, 4)
    loss = fp.SoftmaxCrossEntropy()
    snap = snapshot(model)
    with pytest.raises(ValueError, match="sample_weight has shape"):
        fp.per_example_grads(model, loss, x, y, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="sample_weight"):
        fp.per_example_grad_norms(model, loss, x, y, sample_weight=[1, -1, 1, 1])
    opt = fp.SGD(model.parameters(), lr=0.1)
    step = fp.TrainStep(model, loss, opt, per_example_clip=1.0, noise_multiplier=1.0, rng=0)
    with pytest.raises(ValueError, match="sample_weight"):
        step(x, y, [1.0, np.nan, 1.0, 1.0])
    assert_unchanged(model, snap)
    assert step._dp.rng_state()["counter"] == 0  # no noise was drawn
