# Bindings of csrc/dropout.c's Gaussian noise (DP-SGD's, fastprop.autodiff), included from
# _kernels.pyx. One fused-type `_c_` function; the public one checks its arguments first.
from cython cimport floating
from libc.stdint cimport int64_t, uint64_t


def _c_gaussian_noise(floating[::1] g, double scale, uint64_t key, uint64_t counter,
                      int64_t offset, bint accumulate):
    cdef int rc
    cdef int64_t n = g.shape[0]
    if n == 0:
        return
    with nogil:
        if floating is float:
            rc = gaussian_noise_f32(&g[0], n, scale, key, counter, offset, accumulate)
        else:
            rc = gaussian_noise_f64(&g[0], n, scale, key, counter, offset, accumulate)
    _check(rc, "gaussian_noise")


def _stream_int(v, str name):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    if not 0 <= int(v) < 2 ** 64:
        raise ValueError(f"{name} must be in [0, 2**64), got {v}")
    return int(v)


def gaussian_noise(out, key, counter, *, scale=1.0, offset=0, accumulate=False):
    """``out = (out if accumulate else 0) + scale·z``: z the standard normals
    ``offset, offset + 1, …`` of the Philox4x32-10 stream (key, counter) of csrc/dropout.c,
    by Box–Muller (|z| ≤ 6.66: 31-bit uniforms).

    out : float32 or float64, C-contiguous, writable, any shape (flat order). Normal j of the
    stream depends only on (key, counter, j), so calls over consecutive ranges give the
    values of one call. A call of n normals from offset 0 uses ``dropout_blocks(n)`` counter
    values. Returns out.
    """
    if not isinstance(out, np.ndarray) or out.dtype not in (np.float32, np.float64):
        raise TypeError(f"out must be a float32 or float64 array, got "
                        f"{getattr(out, 'dtype', type(out).__name__)}")
    O = _out(out, "out", out.shape, out)
    k, c = _stream_int(key, "key"), _stream_int(counter, "counter")
    o = _stream_int(offset, "offset")
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"scale must be a number, got {type(scale).__name__}")
    if not np.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale!r}")
    if o + O.size >= 2 ** 63:
        raise ValueError(f"offset + out.size must be below 2**63, got {o} + {O.size}")
    _c_gaussian_noise(O.reshape(-1), float(scale), k, c, o, bool(accumulate))
    return O
