"""XOR, the network of Deep Learning §6.1 (Goodfellow, Bengio, Courville).

f(x) = wᵀ max(0, Wᵀx + c) + b with W = [[1, 1], [1, 1]], c = [0, −1], w = [1, −2], b = 0
computes XOR exactly. First that network is evaluated with the book's weights, then
the same architecture is learned from random weights by minimising the MSE.
"""
import numpy as np

import fastprop as fp


def book_network():
    """The §6.1 solution as a fastprop model (float64)."""
    model = fp.Sequential(fp.Linear(2, 2, dtype=np.float64), fp.ReLU(),
                          fp.Linear(2, 1, dtype=np.float64))
    model[0].weight.data = [[1, 1], [1, 1]]   # Linear stores Wᵀ as (out, in); W is symmetric
    model[0].bias.data = [0, -1]
    model[2].weight.data = [[1, -2]]
    model[2].bias.data = [0]
    return model


def learn_xor(seed=0, hidden=2, steps=1500, lr=0.02, max_restarts=20):
    """Trains the same architecture from random initial weights (Adam on the MSE).

    With two ReLU units some initialisations have a dead unit and cannot fit XOR; like
    the book's remark on local minima, we then restart from the next seed.
    Returns (model, seed used, final loss).
    """
    X, y = fp.datasets.xor(np.float64)
    target = y.reshape(-1, 1).astype(np.float64)
    for s in range(seed, seed + max_restarts):
        model = fp.Sequential(fp.Linear(2, hidden, dtype=np.float64, rng=s, bias_init=0.1),
                              fp.ReLU(), fp.Linear(hidden, 1, dtype=np.float64, rng=s + 1000))
        step = fp.TrainStep(model, fp.MSE(), fp.Adam(model.parameters(), lr=lr))
        for _ in range(steps):
            J = step(X, target)
        if J < 1e-6:
            return model, s, J
    raise RuntimeError("XOR was not learned from any of the initialisations tried")


def main():
    X, y = fp.datasets.xor(np.float64)
    exact = book_network()(X).ravel()
    print("the book's network:  ", exact, "(XOR:", y, ")")
    model, seed, J = learn_xor()
    print(f"learned (seed {seed}):   ", np.round(model(X).ravel(), 4), f"MSE {J:.2e}")


if __name__ == "__main__":
    main()
