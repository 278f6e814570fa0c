"""The GEMM backend of fastprop's kernels, and the small-GEMM threshold.

Every product of the C kernels (``gemm_f32``/``gemm_f64`` in csrc/blas.c) goes to the small
kernel of csrc/small_gemm.c below a size threshold and to a BLAS above it. The BLAS is SciPy's
OpenBLAS through ``scipy.linalg.cython_blas``, or MKL on an Intel CPU where the ``mkl`` wheel is
installed (:func:`default_blas`), unless :func:`set_blas` (or ``FASTPROP_BLAS`` at import)
selects another:

``"openblas"``  SciPy's OpenBLAS (every platform SciPy has a wheel for).
``"mkl"``       ``libmkl_rt`` of the ``mkl`` wheel, its Fortran ``sgemm_``/``dgemm_``, on
                Intel's OpenMP (the wheel's ``intel-openmp``; ``MKL_THREADING_LAYER`` is
                respected).
``"onednn"``    ``libdnnl`` of a oneDNN wheel (``onednn-cpu-gomp``), its row-major
                ``dnnl_sgemm``; oneDNN has no double gemm, float64 stays on OpenBLAS.
``"blis"``      the ``blis`` wheel (cython-blis): ``blis.cy``'s C ``sgemm``/``dgemm``, one
                thread a call; fastprop cuts large products into row blocks over its threads.
                Each is checked against NumPy when it loads; a dgemm that fails (the 1.3.4
                wheel's, on AVX-512 CPUs) leaves float64 on OpenBLAS.

The libraries are loaded by fastprop alone (dlopen, no link-time dependency); NumPy's and
SciPy's own BLAS, their threads and the process environment are left as they are. The choice
is read once per product, so a switch between calls is safe; it changes the last bits of the
results (each BLAS sums in its own order), not within one backend.
"""
from __future__ import annotations
import glob
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np

from . import _kernels

__all__ = ["BACKENDS", "set_blas", "get_blas", "default_blas", "available_blas",
           "calibrate_small_gemm", "small_gemm_threshold"]

BACKENDS = ("openblas", "mkl", "onednn", "blis")
_SLOT = {name: i for i, name in enumerate(BACKENDS)}   # slot 0 is fp_set_blas's, SciPy's
_loaded: dict[str, Any] = {}        # name: the handle keeping its library loaded
_active = "openblas"


def _libraries(pattern: str) -> list[str]:
    """Shared libraries matching pattern in the environment's lib/ (where the wheels put them)."""
    found: list[str] = []
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        found += sorted(glob.glob(os.path.join(prefix, "lib", pattern)))
    return found


def _dlopen(patterns: tuple[str, ...], symbols: tuple[str, ...]) -> tuple[Any, list[int]]:
    """The first library of patterns that loads and has every symbol: (handle, addresses)."""
    import ctypes
    errors = []
    for path in [p for pattern in patterns for p in _libraries(pattern)]:
        try:
            lib = ctypes.CDLL(path)
            return lib, [ctypes.cast(getattr(lib, s), ctypes.c_void_p).value or 0 for s in symbols]
        except (OSError, AttributeError) as e:
            errors.append(f"{path}: {e}")
    raise OSError("; ".join(errors) or f"no {' or '.join(patterns)} in {sys.prefix}/lib")


def _load(name: str) -> None:
    """Puts backend name's functions in its slot; OSError/ImportError when it is not installed."""
    if name in _loaded:
        return
    _, openblas_d = _kernels._openblas_addresses()
    if name == "mkl":
        lib, (s, d) = _dlopen(("libmkl_rt.so*", "libmkl_rt.*.dylib", "libmkl_rt.dylib"),
                              ("sgemm_", "dgemm_"))
        if "MKL_THREADING_LAYER" not in os.environ and not _libraries("libiomp5.*"):
            # Intel's OpenMP (MKL's default) comes with the mkl wheel (intel-openmp); without
            # it, GNU OpenMP, whose threads hang a forked child, so only as the fallback
            lib.MKL_Set_Threading_Layer(3)
        _kernels._blas_register(_SLOT[name], "fortran", s, "fortran", d)
    elif name == "onednn":
        lib, (s,) = _dlopen(("libdnnl.so*", "libdnnl.*.dylib", "libdnnl.dylib"), ("dnnl_sgemm",))
        _kernels._blas_register(_SLOT[name], "rowmajor", s, "fortran", openblas_d)
    elif name == "blis":
        import blis.cy
        lib = blis.cy
        capi = blis.cy.__pyx_capi__
        s, d = (_kernels._capsule_address(capi[f]) for f in ("sgemm", "dgemm"))
        # the blis 1.3.4 wheel's dgemm is wrong on AVX-512 CPUs at some edge sizes with B
        # transposed (n = 29, 65, ...): a dtype whose products fail the probe stays on OpenBLAS
        if not _blis_gemm_agrees(s, np.float32):
            raise OSError("the blis wheel's sgemm fails fastprop's known-answer probe")
        if _blis_gemm_agrees(d, np.float64):
            _kernels._blas_register(_SLOT[name], "blis", s, "blis", d)
        else:
            _kernels._blas_register(_SLOT[name], "blis", s, "fortran", openblas_d)
    else:
        lib = None
    _loaded[name] = lib


# (m, n, k) of the probe: edges of the micro-kernels' tiles, where the wheel's dgemm failed
_BLIS_PROBE = ((8, 29, 1), (33, 65, 7), (16, 65, 64), (7, 33, 65), (1, 7, 33))


def _blis_gemm_agrees(address: int, dtype: Any) -> bool:
    """Whether blis.cy's C gemm at address (sgemm for float32, dgemm for float64) gives
    NumPy's products at every transpose combination on _BLIS_PROBE's sizes."""
    import ctypes
    P, I = ctypes.c_void_p, ctypes.c_int
    real = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    fn = ctypes.CFUNCTYPE(None, I, I, I, I, I, real, P, I, P, I, real, P, I)(address)
    rng = np.random.default_rng(0)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for m, n, k in _BLIS_PROBE:
        for ta in (0, 1):
            for tb in (0, 1):
                a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
                b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
                c = np.zeros((m, n), dtype)
                fn(ta, tb, m, n, k, 1.0, a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1],
                   0.0, c.ctypes.data, n)
                want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b)
                if not np.allclose(c, want, rtol=tol, atol=tol * k):
                    return False
    return True


def available_blas() -> list[str]:
    """The backends that load here (each is loaded, not selected).

    Returns
    -------
    list of str
        The names of :data:`BACKENDS` whose libraries load, "openblas" first.

    Examples
    --------
    >>> import fastprop as fp
    >>> "openblas" in fp.blas.available_blas()
    True
    """
    names = []
    for name in BACKENDS:
        try:
            _load(name)
        except (OSError, ImportError):
            continue
        names.append(name)
    return names


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key == "auto":
        return default_blas()
    if key not in BACKENDS:
        raise ValueError(f"unknown BLAS backend {name!r} ({what}); expected one of {BACKENDS} "
                         f"or 'auto'")
    return key


def _cpuinfo(field: str) -> str | None:
    """The first value of field in /proc/cpuinfo ("model name", "vendor_id"), None without one."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith(field)), None)
    except OSError:
        return None


def _cpu_vendor() -> str:
    """The CPU's vendor string ("GenuineIntel", "AuthenticAMD", ...; "" where unknown)."""
    vendor = _cpuinfo("vendor_id")
    if vendor is None:
        return "GenuineIntel" if "Intel" in platform.processor() else ""
    return vendor


def default_blas() -> str:
    """The backend fastprop selects at import: MKL on an Intel x86-64 CPU where the ``mkl``
    wheel loads, OpenBLAS elsewhere. Measured side by side on a 2-core Intel Xeon (AVX-512),
    the training steps ran 1.04-1.32x faster on MKL (as fast on the small-kernel ones); on a
    2-core AMD EPYC 0.61-1.09x (the README's backend tables).

    Returns
    -------
    str
        "mkl" or "openblas".

    Examples
    --------
    >>> import fastprop as fp
    >>> fp.blas.default_blas() in ("mkl", "openblas")
    True
    """
    if platform.machine().lower() not in ("x86_64", "amd64") or _cpu_vendor() != "GenuineIntel":
        return "openblas"
    try:
        _load("mkl")
    except (OSError, ImportError):
        return "openblas"
    return "mkl"


def set_blas(name: str) -> str:
    """Selects the BLAS behind fastprop's GEMMs: one of :data:`BACKENDS`, or "auto" for
    :func:`default_blas`. An optional backend that is not installed raises ``RuntimeError``
    (through ``FASTPROP_BLAS`` it falls back to OpenBLAS silently). NumPy and SciPy are
    unaffected.

    Parameters
    ----------
    name : str
        "openblas", "mkl", "onednn", "blis" or "auto" (case-insensitive).

    Returns
    -------
    str
        The previous backend's name.

    Raises
    ------
    TypeError
        If name is not a string.
    ValueError
        If name is neither one of :data:`BACKENDS` nor "auto".
    RuntimeError
        If that backend's library is not installed.

    Examples
    --------
    >>> import fastprop as fp
    >>> previous = fp.set_blas("openblas")
    >>> fp.get_blas()
    'openblas'
    """
    global _active
    key = _check_name(name, "name")
    try:
        _load(key)
    except (OSError, ImportError) as e:
        wheel = {"mkl": "mkl", "onednn": "onednn-cpu-gomp", "blis": "blis"}[key]
        raise RuntimeError(f"BLAS backend {key!r} is not available (pip install {wheel}): {e}") from None
    previous, _active = _active, key
    _kernels._blas_select(_SLOT[key])
    return previous


def get_blas() -> str:
    """The name of the BLAS behind fastprop's GEMMs (:func:`default_blas` unless :func:`set_blas`).

    Returns
    -------
    str
        One of :data:`BACKENDS`.

    Examples
    --------
    >>> import fastprop as fp
    >>> fp.get_blas() in fp.blas.BACKENDS
    True
    """
    return _active


def small_gemm_threshold() -> int:
    """Products with m·n·k up to this use fastprop's small kernel, larger ones the BLAS.

    Returns
    -------
    int
        The threshold on m·n·k (0: every product goes to the BLAS).
    """
    return int(_kernels.small_gemm_max())


# ---------------------------------------------------------------- the small-GEMM probe

# (m, n, k) of the workloads' steps from 2^15 to 2^23 (batch × width × width), each as the
# forward NT, ∇W TN and ∇x NN product
_PROBE = [(32, 32, 32), (32, 64, 64), (64, 64, 64), (64, 128, 64), (64, 128, 128),
          (128, 128, 128), (128, 256, 128), (256, 256, 128)]


def _probe_times(m: int, n: int, k: int, reps: int, rng: Any) -> tuple[float, float]:
    """Least time of the three products at (m, n, k): small kernel, then the BLAS."""
    from . import ops
    args = []
    for ta, tb in ((False, True), (True, False), (False, False)):
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
        args.append((a, b, ta, tb, np.empty((m, n), np.float32)))
    best = [np.inf, np.inf]
    saved = _kernels.small_gemm_max()
    try:
        for _ in range(reps):   # interleaved, so that noise falls on both sides
            for side, threshold in enumerate((2**62, 0)):
                _kernels._set_small_gemm_max(threshold)
                t = time.perf_counter()
                for a, b, ta, tb, c in args:
                    ops.gemm(a, b, trans_a=ta, trans_b=tb, out=c)
                best[side] = min(best[side], time.perf_counter() - t)
    finally:
        _kernels._set_small_gemm_max(saved)
    return best[0], best[1]


def _cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastprop", "small_gemm.json")


def _cpu_key() -> str:
    model = _cpuinfo("model name") or platform.processor() or platform.machine()
    from ._version import __version__
    return f"{model} | {_kernels.build_info()['simd']} | {os.cpu_count()} cpus | {_active} | {__version__}"


def calibrate_small_gemm(reps: int = 3, cache: bool = True) -> int:
    """Measures where the active BLAS overtakes the small kernel on the workloads' shapes and
    sets the threshold there: the largest probed m·n·k up to which the small kernel is at
    least as fast at every probed size. Takes tens of ms on a quiet machine, more under load;
    the result is kept in ``~/.cache/fastprop/small_gemm.json`` per CPU model and backend
    (``cache=False``: neither read nor written), so that later processes on this machine use the same threshold and
    give the same bits.

    Parameters
    ----------
    reps : int, default 3
        Timings per probed shape (the least is kept).
    cache : bool, default True
        Read and write the per-CPU cache file.

    Returns
    -------
    int
        The threshold now in use (see :func:`small_gemm_threshold`).

    Raises
    ------
    ValueError
        If reps is not a positive int.
    """
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ValueError(f"reps must be a positive int, got {reps!r}")
    key, path, table = _cpu_key(), _cache_path(), {}
    if cache:
        try:
            with open(path) as f:
                table = json.load(f)
            if isinstance(table.get(key), int):
                _kernels._set_small_gemm_max(table[key])
                return int(table[key])
        except (OSError, ValueError, AttributeError):
            table = {}
    rng = np.random.default_rng(0)
    threshold = 0
    for m, n, k in _PROBE:
        small, blas = _probe_times(m, n, k, reps, rng)
        if small > blas:
            break
        threshold = m * n * k
    _kernels._set_small_gemm_max(threshold)
    if cache:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            table[key] = threshold
            tmp = f"{path}.{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(table, f, indent=1)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home: this process keeps the measured value
    return threshold


def _from_env() -> None:
    """FASTPROP_BLAS (a backend; absent or unknown library: OpenBLAS, silently, but a name
    that is no backend is an error) and FASTPROP_SMALL_GEMM_MAX (an m·n·k, or "auto": the
    cached probe), read once at import."""
    key = _check_name(os.environ.get("FASTPROP_BLAS", "").strip() or "auto", "FASTPROP_BLAS")
    try:
        set_blas(key)
    except RuntimeError:
        pass  # not installed here: OpenBLAS stays
    value = os.environ.get("FASTPROP_SMALL_GEMM_MAX", "").strip()
    if value.lower() == "auto":
        calibrate_small_gemm()
    elif value:
        try:
            _kernels._set_small_gemm_max(int(value))
        except ValueError:
            raise ValueError(f"FASTPROP_SMALL_GEMM_MAX must be a whole number >= 0 or 'auto', "
                             f"got {value!r}") from None


def _after_fork_in_child() -> None:
    """A forked child of a process whose Intel OpenMP runs with KMP_INIT_AT_FORK=FALSE (which
    scikit-learn's import sets) would hang in MKL's first threaded call: it goes on with
    OpenBLAS instead (OpenBLAS's threads survive a fork)."""
    global _active
    if _active == "mkl" and os.environ.get("KMP_INIT_AT_FORK", "").strip().lower() in (
            "false", "0", "no", "off"):
        _active = "openblas"
        _kernels._blas_select(_SLOT["openblas"])


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
_from_env()
