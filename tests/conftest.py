import numpy as np
import pytest

# max-norm relative tolerance of a kernel against the float64-accurate oracle
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def assert_close(actual, expected, dtype=None, rtol=None):
    """max |actual − expected| <= rtol · max(|expected|, tiny): the BLAS tests' criterion."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if rtol is None:
        rtol = RTOL[np.dtype(dtype).type]
    if expected.size == 0:
        return
    scale = max(np.abs(expected).max(), 1e-30)
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


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
