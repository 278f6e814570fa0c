"""The small-matrix GEMM path (csrc/small_gemm.c) through fastprop.ops.gemm, against NumPy
in float64: shapes on both sides of the size threshold, all three transpose cases the
library uses (NN, NT, TN; TT goes to the BLAS), both dtypes, alpha and beta.

The threshold is a C global, fp_small_gemm_max_mnk; where ctypes can reach it in the
extension, each shape is also run with the small path forced and with it switched off."""
import ctypes

import numpy as np
import pytest

import fastprop._kernels as _kernels
from fastprop import ops

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
OPS = {"NN": (False, False), "NT": (False, True), "TN": (True, False)}

# (m, n, k): the training shapes of the "tiny" workload, primes, ones, shapes around the
# default threshold m·n·k < 2^19, and k past one 256-long packed panel
UNDER = [(32, 64, 64), (64, 64, 32), (32, 10, 64), (10, 64, 32), (32, 64, 10), (1, 1, 1),
         (1, 7, 1), (7, 1, 13), (13, 17, 31), (31, 33, 65), (65, 64, 33), (2, 3, 5),
         (127, 64, 64), (64, 64, 127), (3, 17, 300), (7, 9, 1000), (1, 256, 784)]
OVER = [(128, 64, 64), (64, 128, 128), (130, 70, 65), (33, 65, 257), (256, 256, 16)]


def _threshold():
    """The ctypes view of fp_small_gemm_max_mnk, or None where the symbol is not exported."""
    try:
        return ctypes.c_int64.in_dll(ctypes.CDLL(_kernels.__file__), "fp_small_gemm_max_mnk")
    except (OSError, ValueError, AttributeError):
        return None


THRESHOLD = _threshold()


@pytest.fixture
def path(request):
    """Runs the test with the small path forced ("small"), off ("blas"), or as built ("default")."""
    if request.param == "default":
        yield request.param
        return
    if THRESHOLD is None:
        pytest.skip("fp_small_gemm_max_mnk is not reachable through ctypes")
    saved = THRESHOLD.value
    THRESHOLD.value = 2**62 if request.param == "small" else 0
    try:
        yield request.param
    finally:
        THRESHOLD.value = saved


def operands(rng, m, n, k, op, dtype):
    ta, tb = OPS[op]
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b


def check(a, b, op, alpha, beta, c0, out, dtype):
    """max |out − ref| ≤ rtol · max(|alpha| |op(A)| |op(B)| + |beta c0|): the relative
    max-norm, scaled by the terms' magnitudes so that a cancelling sum is not a failure."""
    ta, tb = OPS[op]
    A = (a.T if ta else a).astype(np.float64)
    B = (b.T if tb else b).astype(np.float64)
    ref = alpha * (A @ B)
    scale = abs(alpha) * (np.abs(A) @ np.abs(B))
    if beta != 0:
        ref += beta * c0.astype(np.float64)
        scale += abs(beta) * np.abs(c0.astype(np.float64))
    err = np.abs(out.astype(np.float64) - ref).max() / max(scale.max(), 1e-300)
    assert np.all(np.isfinite(out))
    assert err <= RTOL[dtype], f"relative error {err:.3g} > {RTOL[dtype]:.1g}"


@pytest.mark.parametrize("path", ["default", "small", "blas"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("shape", UNDER + OVER, ids=lambda s: "x".join(map(str, s)))
def test_gemm_shapes(path, dtype, op, shape):
    m, n, k = shape
    if path == "small" and m * n * k > 2**21:
        pytest.skip("the forced small path is only run on moderate sizes")
    rng = np.random.default_rng(m * 10007 + n * 101 + k)
    a, b = operands(rng, m, n, k, op, dtype)
    ta, tb = OPS[op]
    c0 = rng.standard_normal((m, n)).astype(dtype)
    for alpha, beta in [(1.0, 0.0), (0.5, 0.0), (1.0, 1.0), (0.5, 2.0)]:
        if beta == 0:
            out = np.full((m, n), np.nan, dtype)  # beta = 0 must not read out
        else:
            out = c0.copy()
        res = ops.gemm(a, b, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta, out=out)
        assert res is out
        check(a, b, op, alpha, beta, c0, out, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", list(OPS))
def test_gemm_new_output(dtype, op):
    """Without out: a fresh C, through the default dispatch."""
    rng = np.random.default_rng(1)
    for m, n, k in [(32, 64, 64), (5, 3, 2), (128, 64, 64)]:
        a, b = operands(rng, m, n, k, op, dtype)
        ta, tb = OPS[op]
        out = ops.gemm(a, b, trans_a=ta, trans_b=tb)
        assert out.shape == (m, n) and out.dtype == dtype
        check(a, b, op, 1.0, 0.0, None, out, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_transposed_both(dtype):
    """TT is the BLAS's, whatever the size."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((7, 5)).astype(dtype)
    b = rng.standard_normal((3, 7)).astype(dtype)
    out = ops.gemm(a, b, trans_a=True, trans_b=True)
    ref = a.T.astype(np.float64) @ b.T.astype(np.float64)
    assert np.abs(out - ref).max() <= RTOL[dtype] * np.abs(ref).max() * 10


@pytest.mark.parametrize("path", ["small", "blas"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_small_and_blas_agree(path, dtype):
    """Both paths on the same tiny products agree with NumPy (each run in its own mode)."""
    rng = np.random.default_rng(3)
    for op in OPS:
        for m, n, k in [(1, 1, 1), (6, 16, 8), (17, 10, 13), (32, 64, 64)]:
            a, b = operands(rng, m, n, k, op, dtype)
            ta, tb = OPS[op]
            check(a, b, op, 1.0, 0.0, None, ops.gemm(a, b, trans_a=ta, trans_b=tb), dtype)


def _has_avx512():
    """x86-64-v4's features (what the widest clone needs), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= set(flags)


def test_threshold_default():
    """The default threshold keeps the training shapes of "tiny" on the small path; with
    AVX-512 also those of "deep" (64×128×128 = 2^20), and the 2^22 products, where a threaded
    BLAS wins, off it; without AVX-512 it stops below 2^19."""
    if THRESHOLD is None:
        pytest.skip("fp_small_gemm_max_mnk is not reachable through ctypes")
    assert 32 * 64 * 64 <= THRESHOLD.value
    if _has_avx512():
        assert 64 * 128 * 128 <= THRESHOLD.value < 2**22
    else:
        assert THRESHOLD.value < 2**19


@pytest.mark.parametrize("dtype", DTYPES)
def test_alpha_zero_reads_neither_operand(dtype):
    """alpha = 0: C = beta C, NaN in A or B does not leak (the BLAS's convention)."""
    a = np.full((4, 3), np.nan, dtype)
    b = np.full((3, 5), np.nan, dtype)
    out = np.arange(20, dtype=dtype).reshape(4, 5)
    ops.gemm(a, b, alpha=0.0, beta=2.0, out=out)
    assert np.array_equal(out, 2 * np.arange(20, dtype=dtype).reshape(4, 5))
    out[...] = np.nan
    ops.gemm(a, b, alpha=0.0, beta=0.0, out=out)
    assert np.array_equal(out, np.zeros((4, 5), dtype))
