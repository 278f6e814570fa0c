"""The examples and the demo do what the README says."""
import importlib.util
import pathlib

import numpy as np
import pytest

import fastprop as fp
from fastprop import demo

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_xor_book_network_is_exact():
    xor = load_example("xor")
    X, y = fp.datasets.xor(np.float64)
    assert np.array_equal(xor.book_network()(X).ravel(), y.astype(np.float64))


def test_xor_is_learned_from_random_weights():
    xor = load_example("xor")
    model, seed, J = xor.learn_xor()
    X, y = fp.datasets.xor(np.float64)
    assert J < 1e-6
    assert np.array_equal(np.round(model(X).ravel()), y)


def test_demo_reaches_95_percent_and_matches_the_reference(capsys):
    result = demo.run(epochs=20, progress=False)
    printed = capsys.readouterr()
    assert result["accuracy"] >= 0.95
    # same weights, same batches: the two implementations agree to float32 rounding
    assert abs(result["accuracy"] - result["reference_accuracy"]) <= 0.01
    assert "test accuracy" in printed.out and "NumPy reference" in printed.out
    assert printed.err == ""


def test_command_line_demo_exit_code(capsys):
    from fastprop.__main__ import main
    assert main(["demo", "--epochs", "20", "--no-progress"]) == 0
    assert "fastprop is" in capsys.readouterr().out


def test_demo_command_runs_from_the_clone():
    """`python -m fastprop demo` as the README gives it, from the clone's root: the
    source folder must not shadow the installed package (the src/ layout)."""
    import subprocess
    import sys
    root = pathlib.Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-m", "fastprop", "demo", "--epochs", "2", "--no-progress"],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "test accuracy" in run.stdout


def test_residual_example_trains_where_the_plain_mlp_stalls():
    residual = load_example("residual")
    plain_model, plain, plain_grad = residual.train(skip=False)
    res_model, res, res_grad = residual.train(skip=True)
    assert plain_grad < 1e-4 < 1 < res_grad          # the gradient vanished without the skips
    assert plain["val_accuracy"][-1] < 0.2           # chance is 0.1
    assert res["val_accuracy"][-1] > 0.9 and res["loss"][-1] < 0.2
    # the same weights: without skips the models differ only in the connections
    for p, q in zip(plain_model.parameters(), residual.build(True).parameters()):
        assert p.shape == q.shape


def test_curvature_example_tracks_a_true_eigenpair(capsys):
    curvature = load_example("curvature")
    model, (Xc, yc, loss_fn), rows = curvature.track(epochs=2)
    assert len(rows) == 2 and "top eigenvalue" in capsys.readouterr().out
    (vals, vecs) = fp.hessian_eigs(model, loss_fn, Xc, yc, k=1, return_eigenvectors=True)
    assert vals[0] == rows[-1][1] and vals[0] > 0
    v = vecs[:, 0]
    residual = fp.hvp(model, loss_fn, Xc, yc, v) - vals[0] * v
    assert np.linalg.norm(residual) <= 1e-3 * vals[0]
    assert 0 < vals[0] < rows[-1][2]   # the top eigenvalue is below the trace (nearly PSD here)


def test_onnx_export_example_gives_the_same_predictions_in_onnxruntime(capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    fp_proba, onnx_proba, y_test = load_example("onnx_export").main(epochs=6)
    assert np.abs(onnx_proba - fp_proba).max() <= 1e-5
    assert np.array_equal(onnx_proba.argmax(1), fp_proba.argmax(1))
    assert np.mean(fp_proba.argmax(1) == y_test) > 0.9
    assert "same predictions: True" in capsys.readouterr().out


def test_from_torch_example_trains_in_fastprop_and_evaluates_in_torch():
    torch = pytest.importorskip("torch")
    model, trained, (X_test, y_test), accuracy = load_example("from_torch").main(epochs=6)
    assert accuracy > 0.9
    with torch.no_grad():
        logits = trained(torch.from_numpy(X_test)).numpy()
    assert np.abs(logits - model(X_test)).max() <= 1e-5 * np.abs(logits).max()
    for (name, p), (tname, q) in zip(model.named_parameters(), trained.named_parameters()):
        assert name == tname and p.data.tobytes() == q.detach().numpy().tobytes()
