"""Training recipe: imbalanced classes, weighted by their inverse frequency.

The digits with classes 0–4 cut to a fifth of their samples in the training set (the test set
keeps all of them), trained with class weights n / (classes · count) in the cross-entropy,
BatchNorm1d, Adam, ReduceLROnPlateau on the validation loss and early stopping that restores
the best weights. Prints the test accuracy and the balanced accuracy (the mean of the
per-class recalls) beside the same recipe without class weights.
``python examples/recipe_imbalanced.py``
"""
import time

import numpy as np

import fastprop as fp
from recipe_digits import split


def imbalanced(X, y, seed=0, keep=0.2):
    """Keeps a fraction ``keep`` of each of the classes 0–4, all of 5–9."""
    rng = np.random.default_rng(seed)
    rows = np.concatenate([np.flatnonzero(y == k)[:max(2, int(keep * np.sum(y == k)))] if k < 5
                           else np.flatnonzero(y == k) for k in range(10)])
    rows = rng.permutation(rows)
    return X[rows], y[rows]


def balanced_accuracy(pred, y):
    return float(np.mean([np.mean(pred[y == k] == k) for k in np.unique(y)]))


def run(epochs=80, weighted=True, seed=0, progress=False):
    """Returns {"accuracy", "balanced_accuracy", "seconds"} on the (balanced) test set."""
    (X, y), (X_val, y_val), (X_test, y_test) = split(seed)
    X, y = imbalanced(X, y, seed)
    X_val, y_val = imbalanced(X_val, y_val, seed + 1)  # validation as skewed as training
    counts = np.bincount(y, minlength=10)
    weight = len(y) / (10 * counts) if weighted else None   # sklearn's class_weight="balanced"
    model = fp.Sequential(fp.Linear(64, 256, rng=seed), fp.BatchNorm1d(256), fp.ReLU(),
                          fp.Linear(256, 10, rng=seed + 1))
    opt = fp.Adam(model.parameters(), lr=1e-3)
    loss = fp.SoftmaxCrossEntropy(weight=weight)
    t = time.perf_counter()
    fp.fit(model, X, y, loss=loss, optimizer=opt, epochs=epochs, batch_size=32, seed=seed, drop_last=True,
           validation_data=(X_val, y_val), progress=progress,
           callbacks=[fp.EarlyStopping(patience=15, restore_best_weights=True)],
           scheduler=fp.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=5))
    seconds = time.perf_counter() - t
    pred = fp.predict(model, X_test).argmax(axis=1)
    return {"accuracy": float(np.mean(pred == y_test)),
            "balanced_accuracy": balanced_accuracy(pred, y_test), "seconds": seconds}


if __name__ == "__main__":
    for weighted in (True, False):
        r = run(weighted=weighted)
        print(f"{'class weights' if weighted else 'unweighted   '}: test accuracy {r['accuracy']:.4f}, "
              f"balanced accuracy {r['balanced_accuracy']:.4f} ({r['seconds']:.1f} s)")
