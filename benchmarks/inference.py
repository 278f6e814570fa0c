"""Inference throughput: fastprop's predict and eval-mode model(x) (forward-only on the tape)
against PyTorch under torch.inference_mode and JAX jit, the same weights and rows for all,
interleaved rounds, pooled medians, each library's default threads.

    python benchmarks/inference.py [--rounds 3] [--min-time 0.3]
"""
import argparse
import time

import numpy as np

import fastprop as fp
from fastprop import bench

# name: (sizes, rows per call, predict's batch_size or None for one model(x) call)
CASES = {
    "tiny model(x) B=32": ((64, 64, 64, 10), 32, None),
    "small model(x) B=128": ((784, 256, 256, 10), 128, None),
    "small predict 16384 rows": ((784, 256, 256, 10), 16384, 4096),
}


def runners(sizes, rows, batch_size):
    weights = bench.initial_weights(sizes)
    model = bench.mlp(sizes)
    x = np.random.default_rng(0).standard_normal((rows, sizes[0])).astype(np.float32)
    if batch_size is None:
        model.eval()
        fns = {"fastprop": lambda: model(x)}
    else:
        fns = {"fastprop": lambda: fp.predict(model, x, batch_size)}
    try:
        import torch
        tm = bench.torch_mlp(weights).eval()
        tx = torch.from_numpy(x)

        def torch_run():
            with torch.inference_mode():
                return tm(tx).numpy()
        fns["torch"] = torch_run
    except ImportError:
        pass
    try:
        import jax
        import jax.numpy as jnp

        def f(params, a):
            for i, (W, b) in enumerate(params):
                a = a @ W.T + b
                if i < len(params) - 1:
                    a = jax.nn.relu(a)
            return a
        jf = jax.jit(f)
        params = [(jnp.array(W), jnp.array(b)) for W, b in weights]
        jx = jnp.array(x)
        fns["jax"] = lambda: jf(params, jx).block_until_ready()
    except ImportError:
        pass
    want = fns["fastprop"]()
    for k, fn in fns.items():   # the same outputs, up to float32 rounding
        np.testing.assert_allclose(np.asarray(fn()), want, rtol=2e-3, atol=2e-3, err_msg=k)
    return fns


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.3)
    args = ap.parse_args()
    print(f"machine: {bench.machine()}")
    print(bench.load())
    print(f"float32 forward (ReLU MLP), median us per call over {args.rounds} interleaved rounds")
    for name, (sizes, rows, bs) in CASES.items():
        fns = runners(sizes, rows, bs)
        times = {k: [] for k in fns}
        for r in range(args.rounds):
            order = list(fns)[r % len(fns):] + list(fns)[:r % len(fns)]
            for k in order:
                time.sleep(0.2)
                times[k] += bench.repeat_times(fns[k], args.min_time)
        med = {k: float(np.median(v)) for k, v in times.items()}
        cells = "  ".join(f"{k} {1e6 * t:9.1f} us ({rows / t / 1e6:6.2f} M rows/s)" for k, t in med.items())
        ratios = "  ".join(f"{med[k] / med['fastprop']:.2f}x vs {k}" for k in med if k != "fastprop")
        print(f"{name:26s} {cells}  | {ratios}")


if __name__ == "__main__":
    main()
