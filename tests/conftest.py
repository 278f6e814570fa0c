import numpy as np
import pytest

# max-norm relative tolerance of a kernel against the float64-accurate oracle
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def assert_close(actual, expected, dtype=None, rtol=None, scale=None):
    """max |actual − expected| <= rtol · max(|expected|, tiny): the BLAS tests' criterion.
    scale replaces max |expected| where the error is relative to something larger (a sum
    that cancels)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if rtol is None:
        rtol = RTOL[np.dtype(dtype).type]
    if expected.size == 0:
        return
    if scale is None:
        scale = np.abs(expected).max()
    scale = max(scale, 1e-30)
    err = np.abs(actual - expected).max() / scale
    assert err <= rtol, f"relative error {err:.3g} > {rtol:.1g}"


def central_diff(f, x, eps=1e-6):
    """Gradient of the scalar f at x (float64) by central differences."""
    x = np.array(x, dtype=np.float64)
    g = np.empty_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f(x)
        flat[i] = old - eps
        fm = f(x)
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g


def snapshot(model, opt=None):
    """Copies of every parameter and gradient, and of the optimizer's state and step count."""
    params = [(p.data.copy(), p.grad.copy()) for p in model.parameters()]
    if opt is None:
        return params, None, None
    return params, [[a.copy() for a in arrays] for arrays in opt.state_arrays()], opt.step_count


def assert_unchanged(model, snap, opt=None):
    """The model (and opt) hold exactly, bit for bit, what snapshot copied."""
    params, state, count = snap
    for p, (d, g) in zip(model.parameters(), params):
        assert p.data.tobytes() == d.tobytes(), "a parameter changed"
        assert p.grad.tobytes() == g.tobytes(), "a gradient changed"
    if opt is not None:
        assert opt.step_count == count
        for arrays, saved in zip(opt.state_arrays(), state):
            assert len(arrays) == len(saved)
            for a, s in zip(arrays, saved):
                assert a.tobytes() == s.tobytes(), "the optimizer's state changed"


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
