"""Train an MLP on the 8×8 digits, export it to ONNX with its softmax, and run it in ONNX
Runtime: the same class probabilities (to float32 rounding) and the same predictions.

    pip install "fastprop-nn[onnx]"     # onnx and onnxruntime
    python examples/onnx_export.py
"""
import os
import tempfile

import numpy as np
import onnxruntime as ort

import fastprop as fp


def train(epochs=15):
    X, y = fp.datasets.load_digits()
    X_train, X_test, y_train, y_test = fp.datasets.train_test_split(X, y, test_size=0.25, seed=0)
    model = fp.Sequential(fp.Linear(64, 128, rng=0), fp.GELU(),
                          fp.Linear(128, 64, rng=1), fp.ReLU(),
                          fp.Linear(64, 10, rng=2))
    loss = fp.SoftmaxCrossEntropy()
    fp.fit(model, X_train, y_train, loss=loss, optimizer=fp.Adam(model.parameters(), lr=1e-3),
           epochs=epochs, batch_size=32, progress=False)
    return model, loss, X_test, y_test


def export_and_run(model, loss, X, path):
    """Exports model with the output unit of its loss (softmax) and runs it in ONNX Runtime,
    with the whole test set as one batch (the batch dimension is dynamic)."""
    fp.export_onnx(model, path, with_output_unit=loss)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {"x": X})
    return probabilities


def main(epochs=15):
    model, loss, X_test, y_test = train(epochs)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "digits.onnx")
        onnx_proba = export_and_run(model, loss, X_test, path)
        print(f"exported {path} ({os.path.getsize(path):,} bytes)")
    fp_proba = fp.predict_proba(model, X_test)
    err = np.abs(onnx_proba - fp_proba).max()
    same = np.array_equal(onnx_proba.argmax(1), fp_proba.argmax(1))
    print(f"test accuracy: fastprop {np.mean(fp_proba.argmax(1) == y_test):.1%}, "
          f"ONNX Runtime {np.mean(onnx_proba.argmax(1) == y_test):.1%}")
    print(f"largest probability difference {err:.1e}; same predictions: {same}")
    return fp_proba, onnx_proba, y_test


if __name__ == "__main__":
    main()
