"""Dropout, LayerNorm and BatchNorm1d: the two targets of issue 13, in interleaved rounds.

    python benchmarks/layers.py [--rounds 30]
    OPENBLAS_NUM_THREADS=1 python benchmarks/layers.py --threads 1   (one core each, for a loaded machine)

1. Dropout forward + backward on 512x4096 float32: fastprop's C pass (Philox mask, one byte
   per unit) against the NumPy expression (rng.random(x.shape) < keep, multiply, scale, and
   the backward's multiply).
2. The training step of 784-256-256-10, B=128, float32, SGD (momentum 0.9), softmax
   cross-entropy: the plain ReLU chain (TrainStep's fused C path), the same chain with
   LayerNorm and Dropout(0.1) after each hidden layer (TrainStep: the tape, the three layers
   fused as C ops), and that model in PyTorch eager (when torch is installed).
Each round times every contender once, in turn; the tables give medians over the rounds.
"""
import argparse
import time

import numpy as np

import fastprop as fp


def _median_us(fns, rounds, inner):
    """{name: median µs per call}, the contenders interleaved within every round."""
    times = {name: [] for name in fns}
    for fn in fns.values():   # warm up: workspaces, caches, first-call costs
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - t0) / inner * 1e6)
    return {name: float(np.median(t)) for name, t in times.items()}


def dropout_contenders(shape=(512, 4096), p=0.1):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    g = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    keep = np.float32(1 - p)
    rng = np.random.default_rng(2)
    y, gx, mask = np.empty_like(x), np.empty_like(x), np.empty(shape, np.uint8)
    counter = [0]

    def fastprop_pass():   # the functional API: out= buffers, as the NumPy side's
        fp.ops.dropout_forward(x, p, 12345, counter[0], out=y, mask_out=mask)
        counter[0] += fp._kernels.dropout_blocks(x.size)
        fp.ops.dropout_backward(g, mask, p, out=gx)

    def numpy_pass():
        mask = rng.random(x.shape) < keep
        np.multiply(x, mask, out=y)
        y.__imul__(1 / keep)
        np.multiply(g, mask, out=gx)
        gx.__imul__(1 / keep)

    return {"fastprop": fastprop_pass, "numpy": numpy_pass}


def _fp_model(layers, seed=0):
    r = np.random.default_rng(seed)
    mods = []
    sizes = (784, 256, 256, 10)
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append(fp.Linear(a, b, rng=r))
        if i < len(sizes) - 2:
            mods += [fp.LayerNorm(b), fp.ReLU(), fp.Dropout(0.1, rng=r)] if layers else [fp.ReLU()]
    return fp.Sequential(*mods)


def step_contenders(batch=128, with_torch=True):
    r = np.random.default_rng(0)
    x = r.standard_normal((batch, 784)).astype(np.float32)
    y = r.integers(0, 10, batch)
    out = {}
    for name, layers in (("plain ReLU chain (fused)", False), ("plain ReLU chain (tape)", False),
                         ("LayerNorm + Dropout", True)):
        model = _fp_model(layers)
        if "tape" in name:   # a nested Sequential is not a chain of Linear layers: it runs on the tape
            model = fp.Sequential(model)
        step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.SGD(model.parameters(), 0.01, momentum=0.9))
        out[name] = (lambda s=step: s(x, y))
    if with_torch:
        try:
            import torch
        except ImportError:
            return out
        h = [torch.nn.Linear(784, 256), torch.nn.LayerNorm(256), torch.nn.ReLU(), torch.nn.Dropout(0.1),
             torch.nn.Linear(256, 256), torch.nn.LayerNorm(256), torch.nn.ReLU(), torch.nn.Dropout(0.1),
             torch.nn.Linear(256, 10)]
        tm = torch.nn.Sequential(*h)
        topt = torch.optim.SGD(tm.parameters(), 0.01, momentum=0.9)
        tl = torch.nn.CrossEntropyLoss()
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            topt.zero_grad()
            loss = tl(tm(tx), ty)
            loss.backward()
            topt.step()
            return loss.item()
        out["torch eager, LayerNorm + Dropout"] = torch_step
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            pass
    d = _median_us(dropout_contenders(), args.rounds, 3)
    print("Dropout(0.1) forward + backward, 512x4096 float32 (median µs):")
    for name, t in d.items():
        print(f"  {name:12s} {t:10.0f}")
    print(f"  fastprop is {d['numpy'] / d['fastprop']:.1f}x faster than the NumPy expression")
    s = _median_us(step_contenders(), args.rounds, 10)
    base = s["plain ReLU chain (fused)"]
    print("Training step, 784-256-256-10, B=128, float32, SGD momentum 0.9 (median µs):")
    for name, t in s.items():
        print(f"  {name:36s} {t:8.0f}   {t / base:5.2f}x the plain chain")
    if "torch eager, LayerNorm + Dropout" in s:
        print(f"  LayerNorm + Dropout: {s['torch eager, LayerNorm + Dropout'] / s['LayerNorm + Dropout']:.2f}x "
              f"faster than torch eager")


if __name__ == "__main__":
    main()
