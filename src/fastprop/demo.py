"""``python -m fastprop demo``: an MLP on the 8×8 digits, then the same training in NumPy."""
import time

import numpy as np

from . import reference
from .datasets import load_digits, train_test_split
from .losses import SoftmaxCrossEntropy
from .nn import Linear, ReLU, Sequential
from .optim import SGD
from .train import evaluate, fit

SIZES = (64, 128, 128, 10)


def run(epochs: int = 20, batch_size: int = 32, lr: float = 0.05, momentum: float = 0.9,
        seed: int = 0, progress: bool = True, out=print):
    """Trains fastprop and the NumPy reference from the same initial weights on the same
    batches; prints and returns their test accuracies and wall times."""
    X, y = load_digits()
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, seed=seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers += [Linear(n_in, n_out, rng=seed + i), ReLU()]
    model = Sequential(*layers[:-1])
    ref = reference.NumpyMLPTrainer(list(SIZES), batch_size, lr=lr, momentum=momentum)
    for k, lin in enumerate(model.layers[::2]):  # identical starting point
        ref.weights[k][...] = lin.weight.data
        ref.biases[k][...] = lin.bias.data

    out(f"fastprop demo: 8x8 digits ({len(Xtr)} train / {len(Xte)} test), MLP "
        f"{'-'.join(map(str, SIZES))} (ReLU), SGD lr {lr} momentum {momentum}, "
        f"batch {batch_size}, {epochs} epochs")
    loss = SoftmaxCrossEntropy()
    t0 = time.perf_counter()
    fit(model, Xtr, ytr, loss=loss, optimizer=SGD(model.parameters(), lr=lr, momentum=momentum),
        epochs=epochs, batch_size=batch_size, seed=seed, progress=progress, drop_last=True)
    t_fast = time.perf_counter() - t0
    acc_fast = evaluate(model, Xte, yte, loss)["accuracy"]

    # the NumPy reference: the same shuffles, the same batches, buffers reused
    rng = np.random.default_rng(seed)
    n = len(Xtr) - len(Xtr) % batch_size
    Xs, ys = np.empty_like(Xtr), np.empty_like(ytr)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(Xtr))
        np.take(Xtr, order, axis=0, out=Xs)
        np.take(ytr, order, axis=0, out=ys)
        for a in range(0, n, batch_size):
            ref.step(Xs[a:a + batch_size], ys[a:a + batch_size])
    t_ref = time.perf_counter() - t0
    logits, _ = reference.mlp_forward(Xte, ref.weights, ref.biases, "relu")
    acc_ref = float(np.mean(logits.argmax(axis=1) == yte))

    out(f"  fastprop         test accuracy {100 * acc_fast:5.1f}%   wall time {t_fast:6.2f} s")
    out(f"  NumPy reference  test accuracy {100 * acc_ref:5.1f}%   wall time {t_ref:6.2f} s")
    out(f"  fastprop is {t_ref / t_fast:.1f}x faster than the NumPy reference on this machine")
    return {"accuracy": acc_fast, "time": t_fast, "reference_accuracy": acc_ref,
            "reference_time": t_ref}
