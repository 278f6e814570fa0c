"""fit's per-step overhead: fit's time per step minus a loop of TrainStep calls on the same
batches, tiny (64-64-64-10, batch 32, SGD momentum 0.9), interleaved rounds, medians;
--model residual: the same widths with each hidden layer a residual block (a tape model).
    python benchmarks/fit_overhead.py [--rounds 5] [--python] [--model {mlp,residual}]
(--python: fit's Python loop, no C epoch)
"""
import argparse
import time

import numpy as np

import fastprop as fp
from fastprop import bench, train


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--python", action="store_true", help="fit's Python loop (no C epoch)")
    ap.add_argument("--model", choices=("mlp", "residual"), default="mlp")
    args = ap.parse_args()
    if args.python:
        train._CEpoch.make = staticmethod(lambda *a: None)
    sizes, batch, n = (64, 64, 64, 10), 32, 32 * 2000
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, sizes[0])).astype(np.float32)
    y = rng.integers(0, 10, n)
    model = bench.mlp(sizes) if args.model == "mlp" else bench.residual_mlp(sizes)
    loss, opt = fp.SoftmaxCrossEntropy(), fp.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    step = fp.TrainStep(model, loss, opt)
    assert step.path == ("chain" if args.model == "mlp" else "tape"), step.path
    batches = [(X[a:a + batch], y[a:a + batch]) for a in range(0, n, batch)]

    def loop():
        t = time.perf_counter()
        for xb, yb in batches:
            step(xb, yb)
        return (time.perf_counter() - t) / len(batches)

    def fit():
        t = time.perf_counter()
        fp.fit(model, X, y, loss=loss, optimizer=opt, epochs=1, batch_size=batch, progress=False)
        return (time.perf_counter() - t) / len(batches)

    print(f"machine: {bench.machine()}; {bench.load()}")
    times = {"TrainStep loop": [], "fit": []}
    for r in range(args.rounds):
        for name, fn in (("TrainStep loop", loop), ("fit", fit))[::1 if r % 2 else -1]:
            times[name].append(fn())
    med = {k: 1e6 * float(np.median(v)) for k, v in times.items()}
    print(f"{args.model} 64-64-64-10 B=32, {len(batches)} steps, {'Python' if args.python else 'C'} epoch: "
          + ", ".join(f"{k} {v:.2f} us/step" for k, v in med.items())
          + f"; fit - loop = {med['fit'] - med['TrainStep loop']:+.2f} us/step")


if __name__ == "__main__":
    main()
