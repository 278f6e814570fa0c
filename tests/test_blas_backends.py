"""The GEMM backends of fastprop.set_blas (csrc/blas.c, fastprop/blas.py): each one that
loads here against NumPy in float64 at every transpose combination, odd sizes, alpha/beta and
k = 0, with the small path off so the backend computes every product; a TrainStep on each
against the same step on OpenBLAS; the fallback when a backend's library is absent; bad names.
Backends whose wheel is not installed (mkl, onednn-cpu-gomp, blis) are skipped."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastprop as fp
import fastprop._kernels as _kernels
from fastprop import blas, ops

AVAILABLE = blas.available_blas()
RTOL = {np.float32: 2e-5, np.float64: 1e-12}
SIZES = [(1, 1, 1), (7, 1, 13), (1, 7, 33), (7, 33, 65), (33, 65, 7), (65, 33, 129),
         (130, 67, 257), (257, 129, 64)]   # the last ones cross BLIS's row split


@pytest.fixture(params=blas.BACKENDS)
def backend(request):
    """Selects each backend in turn (skipped when absent), small path off; restores both."""
    name = request.param
    if name not in AVAILABLE:
        pytest.skip(f"{name} is not installed")
    saved_max = blas.small_gemm_threshold()
    previous = fp.set_blas(name)
    _kernels._set_small_gemm_max(0)
    try:
        yield name
    finally:
        _kernels._set_small_gemm_max(saved_max)
        fp.set_blas(previous)


def _expected(a, b, ta, tb, alpha, beta, c0):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    r = alpha * ((a64.T if ta else a64) @ (b64.T if tb else b64))
    return r + beta * c0.astype(np.float64) if beta else r


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_backend_gemm(backend, dtype, ta, tb):
    assert fp.get_blas() == backend
    rng = np.random.default_rng(1)
    for m, n, k in SIZES:
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
        for alpha, beta in ((1.0, 0.0), (-0.5, 2.0), (0.0, 0.5)):
            c0 = rng.standard_normal((m, n)).astype(dtype)
            if beta == 0:
                c0[0, 0] = np.nan   # beta = 0 does not read C
            out = c0.copy()
            ops.gemm(a, b, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta, out=out)
            want = _expected(a, b, ta, tb, alpha, beta, c0 if beta else np.zeros_like(c0))
            scale = np.abs(a).max() * np.abs(b).max() * k + 1
            np.testing.assert_allclose(out, want, rtol=RTOL[dtype],
                                       atol=RTOL[dtype] * scale, err_msg=f"{backend} {m, n, k}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backend_k_zero(backend, dtype):
    """k = 0: C = beta C without a BLAS call."""
    c = np.full((5, 3), 2.0, dtype)
    ops.gemm(np.empty((5, 0), dtype), np.empty((0, 3), dtype), beta=0.5, out=c)
    np.testing.assert_array_equal(c, np.ones((5, 3), dtype))


def _train(seed=0, steps=3):
    """Losses and weights of a few TrainSteps of a ReLU MLP big enough to reach the BLAS."""
    rng = np.random.default_rng(seed)
    model = fp.Sequential(fp.Linear(96, 160, rng=1), fp.ReLU(), fp.Linear(160, 130, rng=2),
                          fp.ReLU(), fp.Linear(130, 10, rng=3))
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.SGD(model.parameters(), lr=0.05))
    x = rng.standard_normal((128, 96)).astype(np.float32)
    y = rng.integers(0, 10, 128)
    losses = [float(step(x, y)) for _ in range(steps)]
    return losses, [p.data.copy() for p in model.parameters()]


def test_backend_train_step(backend):
    """A TrainStep on the backend matches the one on OpenBLAS to float32 rounding."""
    losses, weights = _train()
    fp.set_blas("openblas")
    ref_losses, ref_weights = _train()
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for w, r in zip(weights, ref_weights):
        np.testing.assert_allclose(w, r, rtol=1e-4, atol=1e-6)


def test_set_blas_bad_input():
    before = fp.get_blas()
    with pytest.raises(ValueError, match="openblas"):
        fp.set_blas("cublas")
    with pytest.raises(TypeError, match="name"):
        fp.set_blas(3)
    assert fp.get_blas() == before


def test_absent_backend(monkeypatch):
    """A backend whose library cannot be found: set_blas raises RuntimeError, nothing changes."""
    monkeypatch.setattr(blas, "_libraries", lambda pattern: ["/nonexistent/libmkl_rt.so.3"])
    monkeypatch.setattr(blas, "_loaded", {k: v for k, v in blas._loaded.items()
                                          if k not in ("mkl", "onednn")})
    before = fp.get_blas()
    with pytest.raises(RuntimeError, match="mkl"):
        fp.set_blas("mkl")
    with pytest.raises(RuntimeError, match="onednn"):
        fp.set_blas("onednn")
    assert fp.get_blas() == before
    assert "mkl" not in blas.available_blas()


def _in_subprocess(code, **env):
    run_env = {k: v for k, v in os.environ.items()
               if not k.startswith(("FASTPROP_", "KMP_", "MKL_"))}   # KMP_: scikit-learn's
    run_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=run_env, timeout=120)


def test_env_fallback_silent(monkeypatch):
    """FASTPROP_BLAS naming a backend whose library is absent: OpenBLAS stays, silently."""
    monkeypatch.setattr(blas, "_libraries", lambda pattern: [])
    monkeypatch.setattr(blas, "_loaded", {"openblas": None})
    monkeypatch.setitem(sys.modules, "blis.cy", None)   # import blis.cy: ImportError
    before = fp.get_blas()
    for name in ("mkl", "onednn", "blis"):
        monkeypatch.setenv("FASTPROP_BLAS", name)
        blas._from_env()
        assert fp.get_blas() == before
    with pytest.raises(RuntimeError, match="blis"):
        fp.set_blas("blis")


def test_env_selects():
    r = _in_subprocess("import fastprop as fp; print(fp.get_blas(), fp.blas.small_gemm_threshold())",
                       FASTPROP_BLAS=AVAILABLE[-1], FASTPROP_SMALL_GEMM_MAX="12345")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [AVAILABLE[-1], "12345"]


def test_env_bad_values():
    r = _in_subprocess("import fastprop", FASTPROP_BLAS="nope")
    assert r.returncode != 0 and "FASTPROP_BLAS" in r.stderr
    r = _in_subprocess("import fastprop", FASTPROP_SMALL_GEMM_MAX="big")
    assert r.returncode != 0 and "FASTPROP_SMALL_GEMM_MAX" in r.stderr


def test_calibrate_small_gemm(tmp_path, monkeypatch):
    """The probe sets a threshold on the probe's grid, writes it to the cache, and a second
    call reads it back (the same value, not a new measurement)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    saved = blas.small_gemm_threshold()
    try:
        t = fp.calibrate_small_gemm()
        assert t == blas.small_gemm_threshold()
        assert t in [0] + [m * n * k for m, n, k in blas._PROBE]
        assert (tmp_path / "fastprop" / "small_gemm.json").exists()
        monkeypatch.setattr(blas, "_probe_times", lambda *a: pytest.fail("re-measured"))
        _kernels._set_small_gemm_max(7)
        assert fp.calibrate_small_gemm() == t == blas.small_gemm_threshold()
        with pytest.raises(ValueError, match="reps"):
            fp.calibrate_small_gemm(reps=0)
    finally:
        _kernels._set_small_gemm_max(saved)


def test_info_names_backend():
    from fastprop.info import info
    facts = info()
    assert fp.get_blas() in facts["gemm backend"]
    assert str(blas.small_gemm_threshold()) in facts["small gemm"]


@pytest.mark.skipif("blis" not in AVAILABLE, reason="blis is not installed")
def test_blis_probe_rejects_a_wrong_gemm():
    """The load-time probe passes BLIS's sgemm and refuses a function that is not the dtype's
    gemm (sgemm's address asked to multiply doubles): a wrong dgemm leaves float64 on OpenBLAS."""
    import blis.cy
    capi = blis.cy.__pyx_capi__
    sgemm = _kernels._capsule_address(capi["sgemm"])
    assert blas._blis_gemm_agrees(sgemm, np.float32)
    assert not blas._blis_gemm_agrees(sgemm, np.float64)


def test_default_blas_rule(monkeypatch):
    """MKL on an Intel x86-64 CPU where it loads; OpenBLAS on another vendor, another
    architecture, or without the mkl wheel; "auto" selects that default."""
    monkeypatch.setattr(blas.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(blas, "_cpu_vendor", lambda: "AuthenticAMD")
    assert blas.default_blas() == "openblas"
    monkeypatch.setattr(blas, "_cpu_vendor", lambda: "GenuineIntel")
    assert blas.default_blas() == ("mkl" if "mkl" in AVAILABLE else "openblas")
    monkeypatch.setattr(blas.platform, "machine", lambda: "aarch64")
    assert blas.default_blas() == "openblas"
    monkeypatch.setattr(blas.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(blas, "_libraries", lambda pattern: [])
    monkeypatch.setattr(blas, "_loaded", {"openblas": None})
    assert blas.default_blas() == "openblas"
    before = fp.set_blas("auto")
    try:
        assert fp.get_blas() == "openblas"
    finally:
        monkeypatch.undo()
        fp.set_blas(before)


def test_import_selects_the_default():
    """With no FASTPROP_BLAS, import selects default_blas(); FASTPROP_BLAS=openblas overrides."""
    code = "import fastprop as fp; print(fp.get_blas(), fp.blas.default_blas())"
    r = _in_subprocess(code)
    assert r.returncode == 0, r.stderr
    active, default = r.stdout.split()
    assert active == default
    r = _in_subprocess(code, FASTPROP_BLAS="openblas")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "openblas"


@pytest.mark.skipif("mkl" not in AVAILABLE or not hasattr(os, "fork"), reason="mkl is not installed")
@pytest.mark.parametrize("init_at_fork", [None, "FALSE"])
def test_mkl_gemm_in_a_forked_child(init_at_fork):
    """A forked child's threaded GEMM after the parent's returns: MKL runs on Intel's OpenMP (under
    GNU's it hung), and where KMP_INIT_AT_FORK=FALSE (scikit-learn's import sets it), under which
    Intel's OpenMP hangs too, the child goes on with OpenBLAS."""
    code = """
import os, numpy as np, fastprop as fp
from fastprop import ops
fp.set_blas("mkl")
a = np.ones((512, 512), np.float32); c = np.empty_like(a)
ops.gemm(a, a, out=c)
pid = os.fork()
if pid == 0:
    ops.gemm(a, a, out=c)
    os._exit(0 if c[0, 0] != 512 else 10 + fp.blas.BACKENDS.index(fp.get_blas()))
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""
    env = {} if init_at_fork is None else {"KMP_INIT_AT_FORK": init_at_fork}
    r = _in_subprocess(code, **env)
    child_blas = "openblas" if init_at_fork else "mkl"
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(10 + blas.BACKENDS.index(child_blas))], (r.stdout, r.stderr)
