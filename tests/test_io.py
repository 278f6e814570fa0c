"""save / load: bit-exact round trips, atomic writes, and damaged or foreign files."""
import io
import json
import os
import pathlib
import stat

import numpy as np
import pytest

import fastprop as fp
import fastprop.io as fio

F32, F64 = np.float32, np.float64


def every_layer_model(dtype=F32):
    """One of each module type, activation parameters away from their defaults."""
    return fp.Sequential(
        fp.Linear(5, 8, dtype=dtype, rng=0, bias_init=0.1), fp.ReLU(),
        fp.Linear(8, 8, dtype=dtype, rng=1), fp.LeakyReLU(negative_slope=0.2),
        fp.Linear(8, 8, dtype=dtype, rng=2), fp.PReLU(8, init=0.1, dtype=dtype),
        fp.Linear(8, 8, dtype=dtype, rng=3), fp.PReLU(dtype=dtype),
        fp.Linear(8, 8, dtype=dtype, rng=4), fp.Softplus(beta=2.0, threshold=3.0),
        fp.Linear(8, 8, bias=False, dtype=dtype, rng=5), fp.GELU(),
        fp.Linear(8, 8, dtype=dtype, rng=6), fp.SiLU(),
        fp.Linear(8, 8, dtype=dtype, rng=7), fp.Tanh(),
        fp.Linear(8, 8, dtype=dtype, rng=8), fp.Sigmoid(),
        fp.Linear(8, 8, dtype=dtype, rng=9), fp.Abs(),
        fp.Linear(8, 8, dtype=dtype, rng=10), fp.Cos(),
        fp.Linear(8, 3, dtype=dtype, rng=11), fp.Identity())


def trained(model, steps=5):
    """Parameters that are no longer their initial values (incl. the PReLU slopes)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, model.in_features))
    y = rng.integers(0, model.out_features, 16)
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.Adam(model.parameters(), lr=0.01))
    for _ in range(steps):
        step(x, y)
    return model


def assert_same_model(a, b):
    assert type(a) is type(b)
    assert a.dtype == b.dtype
    if isinstance(a, fp.Sequential):
        assert len(a) == len(b)
        for la, lb in zip(a, b):
            assert type(la) is type(lb)
            assert la._config() == lb._config()
            if hasattr(la, "params"):
                assert la.params == lb.params
    na, nb = a.named_parameters(), b.named_parameters()
    assert [n for n, _ in na] == [n for n, _ in nb]
    for (_, p), (_, q) in zip(na, nb):
        assert p.dtype == q.dtype and p.shape == q.shape
        assert p.data.tobytes() == q.data.tobytes()          # bit-exact


@pytest.mark.parametrize("dtype", [F32, F64])
def test_round_trip_bit_exact(tmp_path, dtype):
    model = trained(every_layer_model(dtype))
    assert not np.all(model[5].weight.data == np.asarray(0.1, dtype))
    path = tmp_path / "model.npz"
    fp.save(model, path)
    loaded = fp.load(path)
    assert_same_model(model, loaded)
    x = np.random.default_rng(1).standard_normal((7, 5)).astype(dtype)
    assert model(x).tobytes() == loaded(x).tobytes()
    # and the loaded model is a working, independent model with one flat buffer
    assert len(fp.nn.flat_runs(loaded.parameters())) == 1
    trained(loaded, steps=1)
    assert model(x).tobytes() != loaded(x).tobytes()
    assert os.listdir(tmp_path) == ["model.npz"]


def test_round_trip_single_modules(tmp_path):
    for m in (fp.Linear(3, 2, rng=0, dtype=F64), fp.Linear(3, 2, bias=False), fp.PReLU(4),
              fp.Softplus(beta=0.5, threshold=7.0), fp.Sequential()):
        path = str(tmp_path / "m.npz")             # a str path as well as a Path
        fp.save(m, path)
        loaded = fp.load(path)
        assert_same_model(m, loaded)
        if isinstance(m, fp.Softplus):
            assert loaded.params == {"beta": 0.5, "threshold": 7.0}


def test_round_trip_nested_sequential(tmp_path):
    model = fp.Sequential(fp.Sequential(fp.Linear(3, 4, rng=0), fp.PReLU(4)),
                          fp.Sequential(fp.Linear(4, 4, rng=1), fp.Softplus(beta=3.0)),
                          fp.Linear(4, 2, rng=2))
    trained(model, steps=2)
    fp.save(model, tmp_path / "n.npz")
    loaded = fp.load(tmp_path / "n.npz")
    assert [n for n, _ in loaded.named_parameters()] == ["0.0.weight", "0.0.bias", "0.1.weight",
                                                         "1.0.weight", "1.0.bias", "2.weight",
                                                         "2.bias"]
    assert_same_model(model, loaded)
    for a, b in zip(model, loaded):
        assert_same_model(a, b)
    x = np.random.default_rng(0).standard_normal((3, 3)).astype(F32)
    assert model(x).tobytes() == loaded(x).tobytes()


def test_save_gives_the_usual_file_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(1))
    assert stat.S_IMODE(os.stat(plain).st_mode) == expected
    fp.save(fp.Linear(2, 2), tmp_path / "new.npz")
    assert stat.S_IMODE(os.stat(tmp_path / "new.npz").st_mode) == expected
    os.chmod(plain, 0o644)
    fp.save(fp.Linear(2, 2), plain)                 # overwriting keeps the existing mode
    assert stat.S_IMODE(os.stat(plain).st_mode) == 0o644


def test_save_overwrites(tmp_path):
    path = tmp_path / "m.npz"
    a, b = fp.Linear(3, 2, rng=0), fp.Linear(4, 5, rng=1)
    fp.save(a, path)
    fp.save(b, path)
    assert_same_model(b, fp.load(path))
    assert os.listdir(tmp_path) == ["m.npz"]


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()],
                         ids=["OSError", "KeyboardInterrupt"])
def test_save_is_atomic(tmp_path, monkeypatch, exc):
    path = tmp_path / "model.npz"
    old = trained(every_layer_model())
    fp.save(old, path)
    old_bytes = path.read_bytes()
    calls = []

    def failing_savez(file, *args, **kwds):
        calls.append(file)
        data = io.BytesIO()
        real_savez(data, *args, **kwds)
        file.write(data.getvalue()[:len(data.getvalue()) // 2])   # half a file, then fail
        file.flush()
        raise exc

    real_savez = np.savez
    monkeypatch.setattr(fio.np, "savez", failing_savez)
    new = fp.Sequential(fp.Linear(5, 3, rng=7))
    with pytest.raises(type(exc)):
        fp.save(new, path)
    assert calls, "the patched np.savez was not used by save"
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == ["model.npz"]        # no temporary file left behind
    assert_same_model(old, fp.load(path))
    # a failed first save leaves nothing at all
    monkeypatch.setattr(fio.np, "savez", failing_savez)
    with pytest.raises(type(exc)):
        fp.save(new, tmp_path / "fresh.npz")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.npz"]


def test_save_into_a_missing_folder_fails_cleanly(tmp_path):
    with pytest.raises(OSError):
        fp.save(fp.Linear(2, 2), tmp_path / "no" / "such" / "m.npz")
    assert os.listdir(tmp_path) == []


def test_load_every_truncation_raises_value_error(tmp_path):
    path = tmp_path / "tiny.npz"
    fp.save(fp.Sequential(fp.Linear(2, 1, rng=0), fp.Tanh()), path)
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    for n in range(len(data)):
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError):
            fp.load(cut)
    cut.write_bytes(data)
    assert_same_model(fp.load(path), fp.load(cut))


def test_load_single_byte_corruption_is_detected_or_harmless(tmp_path):
    """Any one flipped byte: a ValueError, or (in a field nothing reads) the same model."""
    path = tmp_path / "tiny.npz"
    model = fp.Sequential(fp.Linear(2, 2, rng=0), fp.LeakyReLU(negative_slope=0.3))
    fp.save(model, path)
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad.npz"
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x5A
        bad.write_bytes(bytes(flipped))
        try:
            loaded = fp.load(bad)
        except ValueError:
            continue
        assert_same_model(model, loaded)


def test_load_foreign_npz(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, a=np.arange(3), b=np.ones((2, 2)))
    with pytest.raises(ValueError):
        fp.load(path)


def write_npz(path, arch, **params):
    arrays = {"__architecture__": np.array(arch if isinstance(arch, str) else json.dumps(arch))}
    arrays.update({"param:" + k: v for k, v in params.items()})
    with open(path, "wb") as f:
        np.savez(f, **arrays)


LINEAR = {"type": "Linear", "args": {"in_features": 2, "out_features": 1, "bias": True,
                                     "dtype": "float32"}}
GOOD_PARAMS = {"weight": np.ones((1, 2), F32), "bias": np.zeros(1, F32)}


def test_load_hand_written_valid_file(tmp_path):
    """The format checked by the failure cases below really is the one load reads."""
    path = tmp_path / "ok.npz"
    write_npz(path, {"format": "fastprop-model", "version": 1, "model": LINEAR}, **GOOD_PARAMS)
    m = fp.load(path)
    assert isinstance(m, fp.Linear)
    assert np.array_equal(m.weight.data, [[1, 1]])


@pytest.mark.parametrize("arch,params", [
    ("this is not json", GOOD_PARAMS),
    ({"format": "keras-model", "version": 1, "model": LINEAR}, GOOD_PARAMS),
    ({"version": 1, "model": LINEAR}, GOOD_PARAMS),
    ({"format": "fastprop-model", "version": 2, "model": LINEAR}, GOOD_PARAMS),
    ({"format": "fastprop-model", "version": 1}, GOOD_PARAMS),
    ({"format": "fastprop-model", "version": 1, "model": {"type": "Conv2d", "args": {}}}, {}),
    ({"format": "fastprop-model", "version": 1, "model": {"type": "Module"}}, {}),
    ({"format": "fastprop-model", "version": 1, "model": {"type": "Sequential",
                                                          "layers": ["Linear"]}}, {}),
    ({"format": "fastprop-model", "version": 1,
      "model": {"type": "Linear", "args": {"in_features": -2, "out_features": 1}}}, {}),
    ({"format": "fastprop-model", "version": 1,
      "model": {"type": "Linear", "args": {"in_features": 2, "out_features": 1,
                                           "evil": "os.system"}}}, GOOD_PARAMS),
    ({"format": "fastprop-model", "version": 1,
      "model": {"type": "Linear", "args": {"in_features": 2, "out_features": 1,
                                           "dtype": "int8"}}}, GOOD_PARAMS),
    ({"format": "fastprop-model", "version": 1, "model": LINEAR},
     {"weight": GOOD_PARAMS["weight"]}),
    ({"format": "fastprop-model", "version": 1, "model": LINEAR},
     {"weight": np.ones((2, 1), F32), "bias": np.zeros(1, F32)}),
    ({"format": "fastprop-model", "version": 1, "model": LINEAR},
     dict(GOOD_PARAMS, extra=np.zeros(3, F32))),
    ({"format": "fastprop-model", "version": 1, "model": LINEAR},
     {"weight": np.array([["a", "b"]]), "bias": np.zeros(1, F32)}),
    ([1, 2, 3], GOOD_PARAMS),
    ("null", GOOD_PARAMS),
], ids=["not-json", "other-format", "no-format", "version-2", "no-model", "unknown-type",
        "base-module", "bad-layers", "bad-args", "unknown-arg", "int-dtype", "missing-param",
        "wrong-shape", "extra-param", "string-param", "json-list", "json-null"])
def test_load_wrong_format_raises_value_error(tmp_path, arch, params):
    path = tmp_path / "bad.npz"
    write_npz(path, arch, **params)
    with pytest.raises(ValueError):
        fp.load(path)


def test_load_object_arrays_are_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    arch = {"format": "fastprop-model", "version": 1, "model": LINEAR}
    with open(path, "wb") as f:
        np.savez(f, __architecture__=np.array(json.dumps(arch)),
                 **{"param:weight": np.array([[1, 2]], dtype=object),
                    "param:bias": np.zeros(1, F32)})
    with pytest.raises(ValueError):
        fp.load(path)


@pytest.mark.parametrize("content", [
    b"hello, this is a text file\n",
    json.dumps({"format": "fastprop-model", "version": 1, "model": LINEAR}).encode(),
    b"",
    b"\x93NUMPY",
    b"PK\x03\x04" + b"\x00" * 40,
], ids=["text", "json", "empty", "npy-magic", "zip-magic"])
def test_load_non_npz_files_raise_value_error(tmp_path, content):
    path = tmp_path / "model.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        fp.load(path)


def test_load_a_plain_npy_raises_value_error(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.arange(5.0))
    with pytest.raises(ValueError):
        fp.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        fp.load(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError):
        fp.load(str(tmp_path / "nope.npz"))


class Custom(fp.Module):
    pass


class MyLinear(fp.Linear):
    pass


@pytest.mark.parametrize("make", [
    lambda: Custom(),
    lambda: MyLinear(2, 2),
    lambda: fp.Sequential(fp.Linear(2, 2), Custom()),
    lambda: fp.Sequential(fp.Sequential(MyLinear(2, 2), fp.ReLU())),
    lambda: "not a model",
], ids=["custom-module", "linear-subclass", "custom-in-sequential", "nested-subclass", "str"])
def test_save_unsupported_module_raises_type_error(tmp_path, make):
    with pytest.raises(TypeError):
        fp.save(make(), tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


def test_save_accepts_pathlike(tmp_path):
    class P(os.PathLike):
        def __fspath__(self):
            return str(tmp_path / "p.npz")

    fp.save(fp.Linear(2, 3, rng=0), P())
    assert (tmp_path / "p.npz").exists()
    assert isinstance(fp.load(pathlib.Path(tmp_path / "p.npz")), fp.Linear)


def test_load_checks_declared_shapes_before_building(tmp_path):
    """A crafted file declaring a huge Linear but holding small arrays is refused up front."""
    import json
    path = tmp_path / "crafted.npz"
    arch = {"format": "fastprop-model", "version": 1,
            "model": {"type": "Sequential", "layers": [
                {"type": "Linear", "args": {"in_features": 30000, "out_features": 30000,
                                            "bias": True, "dtype": "float32"}}]}}
    np.savez(path, __architecture__=np.array(json.dumps(arch)),
             **{"param:0.weight": np.zeros((2, 2), np.float32), "param:0.bias": np.zeros(2, np.float32)})
    import tracemalloc
    tracemalloc.start()
    with pytest.raises(ValueError, match="shape"):
        fp.load(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50_000_000  # nothing near the 3.6 GB the declaration asks for


# ---------------------------------------------------------------- nothing lost

@pytest.mark.parametrize("fails", ["fsync", "chmod", "replace"])
def test_save_failing_between_write_and_rename_keeps_the_old_file(tmp_path, monkeypatch, fails):
    """A failure after the new file is written, before or in the rename: the old file stays."""
    path = tmp_path / "model.npz"
    old = trained(every_layer_model())
    fp.save(old, path)
    old_bytes = path.read_bytes()

    def broken(*args, **kwds):
        raise OSError(f"injected failure in os.{fails}")

    monkeypatch.setattr(fio.os, fails, broken)
    with pytest.raises(OSError, match="injected"):
        fp.save(fp.Sequential(fp.Linear(5, 3, rng=7)), path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == ["model.npz"]


CHILD = """
import sys, numpy as np, fastprop as fp
path = sys.argv[1]
models = [fp.Sequential(fp.Linear(300, 300, rng=s), fp.Tanh(), fp.Linear(300, 10, rng=s + 1)) for s in (0, 2)]
fp.save(models[0], path)
print("ready", flush=True)
i = 1
while True:  # the parent kills this process somewhere in here
    fp.save(models[i % 2], path)
    i += 1
"""


def test_save_killed_at_random_moments_leaves_the_old_or_the_new_file(tmp_path):
    """SIGKILL a process that saves two models in turn, at random moments: the file on disk
    is always one of the two, complete (a killed save can only leave its temporary file)."""
    import random
    import signal
    import subprocess
    import sys
    import time
    expected = [fp.Sequential(fp.Linear(300, 300, rng=s), fp.Tanh(), fp.Linear(300, 10, rng=s + 1))
                for s in (0, 2)]
    path = tmp_path / "model.npz"
    rnd = random.Random(0)
    for _ in range(6):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0, 0.2))  # a random moment of the save loop, not a timing check
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        loaded = fp.load(path)
        assert any(_same_parameters(loaded, m) for m in expected)
        leftovers = set(os.listdir(tmp_path)) - {"model.npz"}
        assert all(n.startswith(".fastprop-") and n.endswith(".tmp") for n in leftovers), leftovers
        for n in leftovers:
            os.unlink(tmp_path / n)


def _same_parameters(a, b):
    return all(p.data.tobytes() == q.data.tobytes() for p, q in zip(a.parameters(), b.parameters()))


def test_load_truncations_of_a_larger_file_raise_value_error(tmp_path):
    """Every cut of the first and last 300 bytes (headers, the zip directory) and every 37th
    in between, of a file holding many arrays: a ValueError each time, never a crash."""
    path = tmp_path / "big.npz"
    fp.save(trained(every_layer_model(F64)), path)
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    for n in sorted(set(range(300)) | set(range(300, len(data) - 300, 37)) | set(range(len(data) - 300, len(data)))):
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError, match="not a readable fastprop model"):
            fp.load(cut)
