"""A deep residual MLP trains where the same plain MLP stalls (skip connections ease the
gradient's flow, *Deep Learning* §6.4.2).

Both networks are 64 → 32, then DEPTH blocks of Linear(32, 32) + tanh, then 32 → 10, with the
same weights; the residual one adds each block's input to its output (``fp.Residual``). At
initialisation the gradient that reaches the first layer of the plain network has vanished
through the tanh derivatives and the weight products; through the identity paths of the
residual network it has not, and the residual network learns the digits while the plain one
stays at chance.

    python examples/residual.py
"""
import numpy as np

import fastprop as fp

DEPTH, WIDTH = 32, 32


def build(skip, depth=DEPTH, width=WIDTH, seed=0, scale=0.5):
    """The MLP with or without skip connections, from the same seeded weights (each block's
    He-uniform weights scaled by `scale`, which keeps the residual sum from growing with depth)."""
    blocks = []
    for k in range(depth):
        lin = fp.Linear(width, width, rng=seed + k + 1)
        lin.weight.data *= scale
        body = fp.Sequential(lin, fp.Tanh())
        blocks.append(fp.Residual(body) if skip else body)
    return fp.Sequential(fp.Linear(64, width, rng=seed), fp.Tanh(), *blocks,
                         fp.Linear(width, 10, rng=seed + depth + 1))


def first_layer_gradient(model, X, y):
    """‖∂J/∂W₁‖ at the current weights, on a batch."""
    loss = fp.SoftmaxCrossEntropy()
    model.zero_grad()
    loss(model(X), y)
    model.backward(loss.backward())
    return float(np.linalg.norm(model[0].weight.grad))


def train(skip, epochs=10, seed=0):
    X, y = fp.datasets.load_digits()
    X_train, X_test, y_train, y_test = fp.datasets.train_test_split(X, y, test_size=0.25, seed=0)
    model = build(skip, seed=seed)
    grad0 = first_layer_gradient(model, X_train[:256], y_train[:256])
    history = fp.fit(model, X_train, y_train, loss=fp.SoftmaxCrossEntropy(),
                     optimizer=fp.SGD(model.parameters(), lr=0.01, momentum=0.9),
                     epochs=epochs, batch_size=32, progress=False,
                     validation_data=(X_test, y_test))
    return model, history, grad0


if __name__ == "__main__":
    print(f"digits, {DEPTH} blocks of Linear({WIDTH}, {WIDTH}) + tanh, SGD lr 0.01 momentum 0.9, "
          f"batch 32")
    for skip in (False, True):
        _, history, grad0 = train(skip)
        name = "residual" if skip else "plain   "
        print(f"  {name}  |dJ/dW1| at init {grad0:9.2e}   train loss "
              f"{history['loss'][0]:.3f} -> {history['loss'][-1]:.3f}   test accuracy "
              f"{100 * history['val_accuracy'][-1]:5.1f}%")
