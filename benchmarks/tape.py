"""The tape's step against the fused chain of the same layers (issue 12's targets).

    python benchmarks/tape.py [--rounds 7]

Each row is a ratio of TrainStep step times measured in the same run, interleaved: every
round times each variant once (a median over ~0.1 s of steps), and the table gives the
median over the rounds. "modular" is the same model on TrainStep's modular Python path
(the tape switched off), the path these models took before the tape.
"""
import argparse

import numpy as np

import fastprop as fp
from fastprop.bench import median_time, mlp, residual_mlp


def step_of(model, loss, modular=False):
    step = fp.TrainStep(model, loss, fp.SGD(model.parameters(), lr=1e-3, momentum=0.9))
    if modular:
        step._tape, step.path = None, "modular"
    return step


def mlp_of(sizes, hidden):
    """Linear layers of sizes, each hidden one followed by hidden() (a module)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(fp.Linear(a, b, rng=i))
        if i < len(sizes) - 2:
            layers.append(hidden(b))
    return fp.Sequential(*layers)


def lowrank_mlp(sizes, rank):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(fp.LowRankLinear(a, b, rank, rng=i) if i < len(sizes) - 2 else fp.Linear(a, b, rng=i))
        if i < len(sizes) - 2:
            layers.append(fp.ReLU())
    return fp.Sequential(*layers)


def cases():
    rng = np.random.default_rng(0)
    for width, batch in ((64, 64), (256, 128)):
        sizes = [width] * 18 + [10]   # 16 residual blocks between the stem and the head
        x, y = rng.standard_normal((batch, width)).astype(np.float32), rng.integers(0, 10, batch)
        xent = fp.SoftmaxCrossEntropy
        yield (f"residual 16 blocks w{width} b{batch}", x, y, {
            "chain": step_of(mlp(sizes), xent()),
            "tape": step_of(residual_mlp(sizes, branch_scale=0.25), xent()),
            "modular": step_of(residual_mlp(sizes, branch_scale=0.25), xent(), modular=True)})
    sizes, batch = [784, 256, 256, 10], 128
    x = rng.standard_normal((batch, 784)).astype(np.float32)
    y = rng.standard_normal((batch, 10)).astype(np.float32)
    base = step_of(mlp(sizes), fp.MSE())
    yield ("PReLU MLP 784-256-256-10 b128", x, y, {
        "chain": base, "tape": step_of(mlp_of(sizes, lambda w: fp.PReLU(w)), fp.MSE()),
        "modular": step_of(mlp_of(sizes, lambda w: fp.PReLU(w)), fp.MSE(), modular=True)})
    yield ("LowRank(64) MLP 784-256-256-10 b128", x, y, {
        "chain": base, "tape": step_of(lowrank_mlp(sizes, 64), fp.MSE()),
        "modular": step_of(lowrank_mlp(sizes, 64), fp.MSE(), modular=True)})
    y5 = y[:, :5].copy()
    yield ("GaussianNLL MLP 784-256-256-10 b128", x, {"chain": y, "tape": y5, "modular": y5}, {
        "chain": base, "tape": step_of(mlp(sizes), fp.GaussianNLL()),
        "modular": step_of(mlp(sizes), fp.GaussianNLL(), modular=True)})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.1)
    args = parser.parse_args()
    print(f"{'model':38s} {'chain us':>9s} {'tape us':>9s} {'modular us':>11s} {'tape/chain':>11s} "
          f"{'modular/chain':>14s}")
    for name, x, y, steps in cases():
        assert steps["tape"].path == "tape" and steps["chain"].path == "chain"
        times = {k: [] for k in steps}
        for _ in range(args.rounds):
            for kind, step in steps.items():
                yk = y[kind] if isinstance(y, dict) else y
                times[kind].append(median_time(lambda: step(x, yk), args.min_time))
        med = {k: float(np.median(v)) for k, v in times.items()}
        print(f"{name:38s} {1e6 * med['chain']:9.1f} {1e6 * med['tape']:9.1f} "
              f"{1e6 * med['modular']:11.1f} {med['tape'] / med['chain']:10.2f}x "
              f"{med['modular'] / med['chain']:13.2f}x", flush=True)


if __name__ == "__main__":
    main()
