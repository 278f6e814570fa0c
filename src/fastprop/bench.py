"""Benchmarks: ``python -m fastprop bench`` (the training-step table) and ``--scaling``.

Every speed is a median over repeated runs and is quoted as a ratio against the
NumPy reference (``reference.NumpyMLPTrainer``, buffers reused, in-place ufuncs,
``@`` for the GEMMs) measured in the same run.
"""
from __future__ import annotations
import csv
import os
import platform
import time

import numpy as np

from . import ops, reference
from .losses import SoftmaxCrossEntropy
from .nn import Linear, ReLU, Sequential
from .optim import SGD
from .train import TrainStep
from typing import Any, Sequence
from numpy.typing import NDArray, DTypeLike

# name: (layer sizes, batch)
WORKLOADS = {
    "tiny": ([64, 64, 64, 10], 32),
    "small": ([784, 256, 256, 10], 128),
    "medium": ([1024, 1024, 1024, 1024, 10], 256),
    "large": ([4096, 4096, 4096, 10], 512),
    "deep": ([128] + [128] * 16 + [10], 64),
}


def edges(sizes: Sequence[int]) -> Any:
    """E, the number of weights (connections) of the MLP."""
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def step_flops(sizes: Sequence[int], batch: int) -> Any:
    """The training step's GEMM FLOPs: 2BE forward, 4BE backward, minus the first layer's ∇x."""
    return 6 * batch * edges(sizes) - 2 * batch * sizes[0] * sizes[1]


def repeat_times(fn: Any, min_time: float = 0.2, max_reps: int = 1000, min_reps: int = 3) -> Any:
    """Wall times of fn() over repeats filling about min_time seconds, after one warm-up call."""
    fn()  # warm-up: workspaces, caches, BLAS threads, JIT compilation
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def median_time(fn: Any, min_time: float = 0.2, max_reps: int = 1000, min_reps: int = 3) -> Any:
    """Median wall time of fn() over repeats filling about min_time seconds."""
    return float(np.median(repeat_times(fn, min_time, max_reps, min_reps)))


def mlp(sizes: Sequence[int], dtype: DTypeLike = np.float32, seed: int = 0) -> Any:
    """A fastprop ReLU MLP (linear output) with He-uniform weights."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [Linear(a, b, dtype=dtype, rng=seed + i), ReLU()]
    return Sequential(*layers[:-1])


class StepSetup:
    """One workload three ways from the same weights: TrainStep, the modular path, NumPy."""

    def __init__(self, sizes: Sequence[int], batch: int, lr: float = 1e-3, momentum: float = 0.9,
                 dtype: DTypeLike = np.float32, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.sizes, self.batch = sizes, batch
        self.x = rng.standard_normal((batch, sizes[0])).astype(dtype)
        self.y = rng.integers(0, sizes[-1], batch)
        self.model = mlp(sizes, dtype, seed)
        self.modular_model = mlp(sizes, dtype, seed)
        self.loss = SoftmaxCrossEntropy()
        self.modular_loss = SoftmaxCrossEntropy()
        self.train_step = TrainStep(self.model, self.loss,
                                    SGD(self.model.parameters(), lr=lr, momentum=momentum))
        self.modular_opt = SGD(self.modular_model.parameters(), lr=lr, momentum=momentum)
        self.reference = reference.NumpyMLPTrainer(sizes, batch, lr=lr, momentum=momentum,
                                                   dtype=dtype, seed=seed)
        for k, lin in enumerate(self.model.layers[::2]):
            self.reference.weights[k][...] = lin.weight.data
            self.reference.biases[k][...] = lin.bias.data

    def fused(self) -> Any:
        return self.train_step(self.x, self.y)

    def modular(self) -> Any:
        out = self.modular_model(self.x)
        J = self.modular_loss(out, self.y)
        self.modular_opt.zero_grad()
        self.modular_model.backward(self.modular_loss.backward())
        self.modular_opt.step()
        return J

    def numpy(self) -> Any:
        return self.reference.step(self.x, self.y)


def gemm_ceiling(m: int = 512, n: int = 4096, k: int = 4096, dtype: DTypeLike = np.float32,
                 min_time: float = 0.5) -> Any:
    """The machine's GEMM GFLOP/s through the BLAS fastprop uses (a large square-ish sgemm)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k)).astype(dtype)
    c = np.empty((m, n), dtype)
    t = median_time(lambda: ops.gemm(a, b, trans_b=True, out=c), min_time=min_time)
    return 2 * m * n * k / t / 1e9


def machine() -> str:
    """A one-line description of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, " \
           f"Python {platform.python_version()}, NumPy {np.__version__}"


def step_table(names: Any = None, min_time: float = 0.3, out: Any = print) -> Any:
    """Median step times of TrainStep, the modular path and the NumPy reference per workload."""
    from .blas import available_blas, get_blas
    names = list(WORKLOADS) if names is None else names
    rates = {}
    for name in available_blas():   # the peak: the best sgemm of every backend here
        with _blas_selected(name):
            time.sleep(0.2)   # the previous backend's threads stop spinning
            rates[name] = gemm_ceiling()
    best = max(rates, key=rates.__getitem__)
    ceiling = rates[best]
    out(f"machine: {machine()}")
    out(f"sgemm ceiling (512x4096x4096, the best backend here: {best}): {ceiling:.1f} GFLOP/s; "
        + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()) + f"; TrainStep on {get_blas()}")
    out(f"{'workload':8s} {'TrainStep us':>13s} {'modular us':>11s} {'NumPy us':>10s} "
        f"{'speed-up':>9s} {'GFLOP/s':>8s} {'of peak':>8s}")
    rows = []
    for name in names:
        sizes, batch = WORKLOADS[name]
        setup = StepSetup(sizes, batch)
        t = {kind: median_time(getattr(setup, kind), min_time) for kind in ("fused", "modular", "numpy")}
        gflops = step_flops(sizes, batch) / t["fused"] / 1e9
        row = {"workload": name, "sizes": "-".join(map(str, sizes)), "batch": batch,
               "trainstep_us": 1e6 * t["fused"], "modular_us": 1e6 * t["modular"],
               "numpy_us": 1e6 * t["numpy"], "speedup": t["numpy"] / t["fused"],
               "gflops": gflops, "fraction_of_peak": gflops / ceiling}
        rows.append(row)
        out(f"{name:8s} {row['trainstep_us']:13.1f} {row['modular_us']:11.1f} "
            f"{row['numpy_us']:10.1f} {row['speedup']:8.2f}x {gflops:8.1f} "
            f"{100 * row['fraction_of_peak']:7.1f}%")
        del setup
    return rows, ceiling


# ---------------------------------------------------------------- kernels

def kernel_table(batch: int = 128, n_in: int = 784, n_out: int = 256, classes: int = 10,
                 min_time: float = 0.2, out: Any = print) -> Any:
    """fastprop.ops against fastprop.reference, one line per kernel family, at one mid size."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    x = rng.standard_normal((batch, n_in)).astype(f32)
    w = (0.05 * rng.standard_normal((n_out, n_in))).astype(f32)
    b = rng.standard_normal(n_out).astype(f32)
    g = rng.standard_normal((batch, n_out)).astype(f32)
    y = np.empty((batch, n_out), f32)
    gw, gb, gx, ga = np.empty_like(w), np.empty_like(b), np.empty_like(x), np.empty_like(g)
    h = ops.dense_forward(x, w, b, "tanh")
    z = (3 * rng.standard_normal((batch, classes))).astype(f32)
    labels = rng.integers(0, classes, batch)
    gz = np.empty_like(z)
    p, m1, m2 = w.copy(), np.zeros_like(w), np.zeros_like(w)
    cases = [
        ("dense forward + relu", f"{batch}x{n_in}->{n_out}",
         lambda: ops.dense_forward(x, w, b, "relu", out=y),
         lambda: reference.dense_forward(x, w, b, "relu", out=y)),
        ("dense backward", f"{batch}x{n_in}->{n_out}",
         lambda: ops.dense_backward(g, x, w, grad_weight=gw, grad_bias=gb, grad_input=gx),
         lambda: reference.dense_backward(g, x, w, grad_weight=gw, grad_bias=gb, grad_input=gx)),
        ("activation backward relu", f"{batch}x{n_out}",
         lambda: ops.activation_backward(g, "relu", y=h, out=ga),
         lambda: reference.activation_backward(g, "relu", y=h, out=ga)),
        ("activation backward tanh", f"{batch}x{n_out}",
         lambda: ops.activation_backward(g, "tanh", y=h, out=ga),
         lambda: reference.activation_backward(g, "tanh", y=h, out=ga)),
        ("activation backward gelu", f"{batch}x{n_out}",
         lambda: ops.activation_backward(g, "gelu", x=h, out=ga),
         lambda: reference.activation_backward(g, "gelu", x=h, out=ga)),
        ("softmax cross-entropy", f"{batch}x{classes}",
         lambda: ops.softmax_cross_entropy(z, labels, grad_out=gz),
         lambda: reference.softmax_cross_entropy(z, labels, grad_out=gz)),
        ("sgd momentum step", f"{w.size:,} params",
         lambda: ops.sgd_step(p, gw, lr=1e-3, momentum=0.9, momentum_buffer=m1),
         lambda: reference.sgd_step(p, gw, lr=1e-3, momentum=0.9, momentum_buffer=m1)),
        ("adam step", f"{w.size:,} params",
         lambda: ops.adam_step(p, gw, m1, m2, step=10, lr=1e-3),
         lambda: reference.adam_step(p, gw, m1, m2, step=10, lr=1e-3)),
    ]
    out(f"{'kernel':26s} {'shape':>16s} {'fastprop us':>12s} {'reference us':>13s} {'ratio':>7s}")
    rows = []
    for name, shape, fast, ref in cases:
        tf, tr = median_time(fast, min_time), median_time(ref, min_time)
        rows.append({"kernel": name, "shape": shape, "fastprop_us": 1e6 * tf,
                     "reference_us": 1e6 * tr, "ratio": tr / tf})
        out(f"{name:26s} {shape:>16s} {1e6 * tf:12.1f} {1e6 * tr:13.1f} {tr / tf:6.2f}x")
    return rows


# ---------------------------------------------------------------- memory

def memory_bound(sizes: Sequence[int], batch: int, itemsize: int = 4,
                 optimizer_buffers: int = 1) -> Any:
    """Parameters + gradients + optimizer state + saved activations (B·Σ widths) +
    one gradient ping-pong pair (2·B·max width; the input's gradient is never formed), in bytes."""
    n_params = edges(sizes) + sum(sizes[1:])
    return itemsize * ((2 + optimizer_buffers) * n_params + batch * sum(sizes[1:])
                       + 2 * batch * max(sizes[1:]))


def step_memory(sizes: Sequence[int], batch: int, dtype: DTypeLike = np.float32) -> Any:
    """Peak bytes live during one training step (after a warm-up step), fastprop and NumPy.

    Everything the implementation holds counts: parameters, gradients, optimizer state,
    workspaces, and whatever a step allocates on top.
    """
    import gc
    import tracemalloc
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], batch)
    peaks = {}
    for impl in ("fastprop", "numpy"):
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        if impl == "fastprop":
            model = mlp(sizes, dtype)
            step = TrainStep(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=1e-3, momentum=0.9))
            run = lambda: step(x, y)  # noqa: E731
        else:
            trainer = reference.NumpyMLPTrainer(sizes, batch, lr=1e-3, momentum=0.9, dtype=dtype)
            run = lambda: trainer.step(x, y)  # noqa: E731
        run()
        tracemalloc.reset_peak()
        run()
        peaks[impl] = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        del run
        model = step = trainer = None  # noqa: F841
    return peaks["fastprop"], peaks["numpy"], memory_bound(sizes, batch, np.dtype(dtype).itemsize)


def memory_table(names: Any = None, out: Any = print) -> Any:
    """Peak memory of a step per workload, against the bound and the NumPy reference."""
    names = list(WORKLOADS) if names is None else names
    out(f"{'workload':8s} {'fastprop MB':>12s} {'bound MB':>9s} {'NumPy MB':>9s}")
    rows = []
    for name in names:
        fast, numpy_peak, bound = step_memory(*WORKLOADS[name])
        rows.append({"workload": name, "fastprop_bytes": fast, "bound_bytes": bound,
                     "numpy_bytes": numpy_peak})
        out(f"{name:8s} {fast / 1e6:12.2f} {bound / 1e6:9.2f} {numpy_peak / 1e6:9.2f}")
    return rows


# ---------------------------------------------------------------- O(edges) scaling

def write_csv(path: str | os.PathLike[str], rows: Any, out: Any = print) -> None:
    """rows (dicts with the same keys) as a CSV file with a header."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out(f"wrote {path}")


def _forward_backward_times(sizes: Any, batch: Any, min_time: Any) -> Any:
    """(step, forward, backward, NumPy step) seconds for one MLP shape."""
    setup = StepSetup(sizes, batch)
    net = setup.train_step._net
    t_step = median_time(setup.fused, min_time)
    t_fwd = median_time(lambda: net.forward(setup.x), min_time)
    t_train = median_time(lambda: net.train(setup.x, setup.y, "softmax_cross_entropy"), min_time)
    t_ref = median_time(setup.numpy, min_time)
    return t_step, t_fwd, max(t_train - t_fwd, 0.0), t_ref


def scaling(widths: Any = (64, 128, 256, 512, 1024, 2048), depths: Any = (1, 2, 4, 8, 16, 32),
            width_depth: int = 4, depth_width: int = 256, batch: int = 128, classes: int = 10,
            min_time: float = 0.2, csv_path: str = "scaling.csv", png_path: str = "scaling.png",
            out: Any = print) -> Any:
    """Training-step time against the number of weights E, sweeping width and depth.

    Writes a CSV and (with matplotlib) a PNG; prints the least-squares fit
    time ≈ α·B·E + β with R², and the backward/forward time ratio per point.
    """
    shapes = [("width", w, [w] * (width_depth + 1) + [classes]) for w in widths]
    shapes += [("depth", d, [depth_width] * (d + 1) + [classes]) for d in depths]
    rows = []
    out(f"{'sweep':6s} {'value':>6s} {'E':>10s} {'fastprop us':>12s} {'NumPy us':>10s} "
        f"{'speed-up':>9s} {'bwd/fwd':>8s}")
    for sweep, value, sizes in shapes:
        t_step, t_fwd, t_bwd, t_ref = _forward_backward_times(sizes, batch, min_time)
        row = {"sweep": sweep, "value": value, "sizes": "-".join(map(str, sizes)), "batch": batch,
               "edges": edges(sizes), "fastprop_s": t_step, "numpy_s": t_ref,
               "forward_s": t_fwd, "backward_s": t_bwd, "bwd_over_fwd": t_bwd / t_fwd}
        rows.append(row)
        out(f"{sweep:6s} {value:6d} {row['edges']:10d} {1e6 * t_step:12.1f} {1e6 * t_ref:10.1f} "
            f"{t_ref / t_step:8.2f}x {row['bwd_over_fwd']:8.2f}")
    fits = {}
    for impl in ("fastprop", "numpy"):
        be = np.array([batch * r["edges"] for r in rows], dtype=np.float64)
        t = np.array([r[f"{impl}_s"] for r in rows])
        A = np.stack([be, np.ones_like(be)], axis=1)
        (alpha, beta), *_ = np.linalg.lstsq(A, t, rcond=None)
        pred = A @ np.array([alpha, beta])
        r2 = 1 - np.sum((t - pred) ** 2) / np.sum((t - t.mean()) ** 2)
        fits[impl] = (alpha, beta, r2)
        out(f"{impl:8s} time ≈ {alpha * 1e12:.3f} ps · B·E + {beta * 1e6:.1f} us   (R² = {r2:.4f}; "
            f"{2 * 3 / alpha / 1e9:.1f} GFLOP/s per 6 flops/edge/sample)")
    if csv_path:
        write_csv(csv_path, rows, out)
    if png_path:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            out("matplotlib is not installed (pip install matplotlib): no plot written")
        else:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for impl, color in (("fastprop", "tab:blue"), ("numpy", "tab:orange")):
                for sweep, marker in (("width", "o"), ("depth", "s")):
                    pts = [r for r in rows if r["sweep"] == sweep]
                    ax.loglog([r["edges"] for r in pts], [1e6 * r[f"{impl}_s"] for r in pts],
                              marker=marker, color=color, linestyle="none",
                              label=f"{'NumPy reference' if impl == 'numpy' else 'fastprop'} ({sweep} sweep)")
                alpha, beta, r2 = fits[impl]
                e = np.logspace(np.log10(min(r["edges"] for r in rows)),
                                np.log10(max(r["edges"] for r in rows)), 100)
                ax.loglog(e, 1e6 * (alpha * batch * e + beta), color=color, alpha=0.5,
                          label=f"fit α·B·E + β (R² = {r2:.3f})")
            ax.set_xlabel("weights E (edges of the network)")
            ax.set_ylabel(f"training-step time, µs (batch {batch}, float32)")
            ax.set_title("A training step costs O(edges)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(png_path, dpi=110)
            out(f"wrote {png_path}")
    return rows, fits


# ---------------------------------------------------------------- residual networks (graphs)

def residual_mlp(sizes: Sequence[int], dtype: DTypeLike = np.float32, seed: int = 0,
                 branch_scale: float = 1.0) -> Any:
    """A Graph with the Linear layers of ``mlp(sizes)`` (equal hidden widths): the first hidden
    layer, then ``h ← h + relu(Linear(h))`` for every further one, then the linear head; the
    branches' weights are multiplied by branch_scale."""
    from .graph import Add, Graph
    g = Graph()
    h = g.input("x", sizes[0])
    h = g.add(ReLU(), g.add(Linear(sizes[0], sizes[1], dtype=dtype, rng=seed), h))
    for i in range(1, len(sizes) - 2):
        branch = Linear(sizes[i], sizes[i + 1], dtype=dtype, rng=seed + i)
        branch.weight.data *= branch_scale
        r = g.add(ReLU(), g.add(branch, h))
        h = g.add(Add(), h, r)
    k = len(sizes) - 2
    return g.build(outputs=g.add(Linear(sizes[k], sizes[k + 1], dtype=dtype, rng=seed + k), h))


def residual_scaling(blocks: Any = (1, 2, 4, 8, 16, 32), width: int = 256, batch: int = 128,
                     classes: int = 10, min_time: float = 0.2, csv_path: Any = None,
                     out: Any = print) -> Any:
    """Step time of residual MLPs (a Graph, TrainStep's modular path) against the plain MLP of
    the same Linear layers (TrainStep's fused C path and the modular path), sweeping the
    number of residual blocks; prints the fit time ≈ α·B·E + β of each. Returns the rows."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, width)).astype(np.float32)
    y = rng.integers(0, classes, batch)
    rows = []
    out(f"{'blocks':>6s} {'E':>10s} {'residual us':>12s} {'plain fused us':>15s} "
        f"{'plain modular us':>17s} {'res/fused':>10s}")
    for n in blocks:
        sizes = [width] * (n + 2) + [classes]
        times = {}
        # a chain nested in a Sequential takes TrainStep's modular path, as a graph does
        # branches scaled by 1/√n keep the sum's scale: He-scaled ones double the variance
        # per block, and 32 blocks overflow float32 (the step would stop on a NaN loss)
        for kind, model in (("residual", residual_mlp(sizes, branch_scale=n ** -0.5)),
                            ("plain_fused", mlp(sizes)),
                            ("plain_modular", Sequential(mlp(sizes)))):
            step = TrainStep(model, SoftmaxCrossEntropy(), SGD(model.parameters(), lr=1e-3, momentum=0.9))
            times[kind] = median_time(lambda: step(x, y), min_time)
        row = {"blocks": n, "sizes": "-".join(map(str, sizes)), "batch": batch,
               "edges": edges(sizes), **{f"{k}_s": t for k, t in times.items()}}
        rows.append(row)
        out(f"{n:6d} {row['edges']:10d} {1e6 * times['residual']:12.1f} "
            f"{1e6 * times['plain_fused']:15.1f} {1e6 * times['plain_modular']:17.1f} "
            f"{times['residual'] / times['plain_fused']:9.2f}x")
    be = np.array([batch * r["edges"] for r in rows], dtype=np.float64)
    for kind in ("residual", "plain_fused", "plain_modular"):
        t = np.array([r[f"{kind}_s"] for r in rows])
        alpha, beta = np.polyfit(be, t, 1) if len(rows) > 1 else (t[0] / be[0], 0.0)
        out(f"{kind:14s} time ≈ {alpha * 1e12:.2f} ps · B·E + {beta * 1e6:.1f} us")
    if csv_path:
        write_csv(csv_path, rows, out)
    return rows


# ---------------------------------------------------------------- peers: PyTorch, torch.compile, JAX

def load() -> str:
    """The 1-minute load average against the core count: above the cores, timings are noisy."""
    try:
        return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except (AttributeError, OSError):   # not on Windows
        return "load average unknown"


PEERS = ("numpy", "torch", "torch.compile", "jax")


def initial_weights(sizes: Sequence[int], dtype: DTypeLike = np.float32, seed: int = 0) -> Any:
    """[(W, b), ...]: copies of the initial weights StepSetup's models start from."""
    return [(lin.weight.data.copy(), lin.bias.data.copy()) for lin in mlp(sizes, dtype, seed).layers[::2]]


def torch_mlp(weights: Any) -> Any:
    """The ReLU MLP of initial_weights' (W, b) pairs as a torch.nn.Sequential (torch needed)."""
    import torch
    layers = []
    for W, b in weights:
        lin = torch.nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
            lin.bias.copy_(torch.from_numpy(b))
        layers += [lin, torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def torch_step(weights: Any, x: NDArray[Any], y: NDArray[Any], lr: float = 1e-3,
               momentum: float = 0.9, compiled: bool = False) -> Any:
    """One PyTorch training step as a callable returning the loss (eager, or torch.compile'd
    model + loss and optimizer step); None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    model = torch_mlp(weights)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    tx, ty = torch.from_numpy(x), torch.from_numpy(np.asarray(y, np.int64))

    def loss_fn(a: Any, labels: Any) -> Any:
        return torch.nn.functional.cross_entropy(model(a), labels)

    update = opt.step
    if compiled:
        # a fresh cache per workload: the last one's guards would count toward dynamo's
        # recompile limit, after which the optimizer step falls back to eager
        torch._dynamo.reset()
        loss_fn, update = torch.compile(loss_fn), torch.compile(opt.step)

    def step() -> Any:
        opt.zero_grad()
        loss = loss_fn(tx, ty)
        loss.backward()
        update()
        return loss.item()
    return step


def jax_step(weights: Any, x: NDArray[Any], y: NDArray[Any], lr: float = 1e-3,
             momentum: float = 0.9) -> Any:
    """One JAX training step (jax.jit of value_and_grad + the SGD-momentum update, parameter and
    momentum buffers donated) as a callable returning the loss; None when JAX is not installed."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None

    def loss_fn(params: Any, a: Any, labels: Any) -> Any:
        for i, (W, b) in enumerate(params):
            a = a @ W.T + b
            if i < len(params) - 1:
                a = jax.nn.relu(a)
        logp = jax.nn.log_softmax(a)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))

    def update(params: Any, bufs: Any, a: Any, labels: Any) -> Any:
        loss, grads = jax.value_and_grad(loss_fn)(params, a, labels)
        # torch's rule: buf = momentum·buf + g (the first step sets buf = g: buf starts at 0)
        bufs = jax.tree_util.tree_map(lambda m, g: momentum * m + g, bufs, grads)
        params = jax.tree_util.tree_map(lambda p, m: p - lr * m, params, bufs)
        return params, bufs, loss

    update = jax.jit(update, donate_argnums=(0, 1))
    state = {"params": [(jnp.array(W), jnp.array(b)) for W, b in weights],
             "bufs": [(jnp.zeros(W.shape, W.dtype), jnp.zeros(b.shape, b.dtype)) for W, b in weights]}
    jx, jy = jnp.array(x), jnp.array(np.asarray(y, np.int32))

    def step() -> Any:
        state["params"], state["bufs"], loss = update(state["params"], state["bufs"], jx, jy)
        return float(loss)  # waits for the step: one executable produces every output
    return step


def peer_steps(sizes: Sequence[int], batch: int, peers: Any = PEERS, seed: int = 0) -> Any:
    """{name: step()} for fastprop's TrainStep and each installed peer, all from the same initial
    weights and batch; plus the names of the peers that are not installed."""
    setup = StepSetup(sizes, batch, seed=seed)
    weights = initial_weights(sizes, seed=seed)
    steps = {"fastprop": setup.fused}
    makers = {"numpy": lambda: setup.numpy,
              "torch": lambda: torch_step(weights, setup.x, setup.y),
              "torch.compile": lambda: torch_step(weights, setup.x, setup.y, compiled=True),
              "jax": lambda: jax_step(weights, setup.x, setup.y)}
    missing = []
    for name in peers:
        step = makers[name]()
        if step is None:
            missing.append(name)
        else:
            steps[name] = step
    return steps, missing


def peer_table(names: Any = None, peers: Any = PEERS, rounds: int = 3, min_time: float = 0.3,
               settle: float = 0.2, out: Any = print) -> Any:
    """Median step times per workload of fastprop's TrainStep, the NumPy reference, PyTorch eager,
    torch.compile and JAX jit (those installed): the libraries take turns in each of ``rounds``
    rounds and every round's times are pooled into one median; each library uses its default
    threads; each turn starts after ``settle`` seconds of sleep (see gemm_table). Returns the rows."""
    names = list(WORKLOADS) if names is None else names
    out(f"machine: {machine()}")
    out(load())
    out(f"float32, one training step (forward, softmax cross-entropy, backward, SGD momentum 0.9); "
        f"median us over {rounds} interleaved rounds, each library's default threads")
    rows, header = [], False
    for name in names:
        sizes, batch = WORKLOADS[name]
        steps, missing = peer_steps(sizes, batch, peers)
        if not header:
            for peer in missing:
                out(f"{peer} is not installed: skipped")
            cols = list(steps)
            out(f"{'workload':8s} " + " ".join(f"{c:>13s}" for c in cols) + "  fastprop vs best peer")
            header = True
        times = {k: [] for k in steps}
        for r in range(rounds):
            order = list(steps)[r % len(steps):] + list(steps)[:r % len(steps)]  # rotate who goes first
            for k in order:
                time.sleep(settle)
                try:
                    times[k] += repeat_times(steps[k], min_time)
                except Exception as e:   # e.g. torch.compile without a working C++ compiler
                    out(f"{k} failed on {name} ({type(e).__name__}: {str(e)[:200]}): skipped")
                    del steps[k], times[k]
        med = {k: float(np.median(v)) for k, v in times.items()}
        best = min((k for k in med if k != "fastprop"), key=med.get, default=None)
        row = {"workload": name, "sizes": "-".join(map(str, sizes)), "batch": batch,
               **{f"{k}_us": 1e6 * t for k, t in med.items()}, "best_peer": best,
               "ratio": med[best] / med["fastprop"] if best else float("nan")}
        rows.append(row)
        out(f"{name:8s} " + " ".join(f"{1e6 * med[c]:13.1f}" if c in med else f"{'-':>13s}" for c in cols)
            + (f"  {row['ratio']:.2f}x ({best})" if best else ""))
        del steps
    return rows


# ---------------------------------------------------------------- GEMM backends

def gemm_shapes(names: Any = None, batches: Any = None) -> Any:
    """[(op, m, n, k, workload)]: every GEMM a training step of the workloads makes (distinct
    ones, first user named), at each workload's batch or at each of ``batches``.
    op: "NT" forward y = x Wᵀ, "TN" ∇W = gᵀ x, "NN" ∇x = g W (not for the first layer)."""
    names = list(WORKLOADS) if names is None else names
    shapes, seen = [], set()
    for name in names:
        sizes, batch = WORKLOADS[name]
        for B in batches or [batch]:
            for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
                for shape in (("NT", B, n_out, n_in), ("TN", n_out, n_in, B)) + \
                        ((("NN", B, n_in, n_out),) if i else ()):
                    if shape not in seen:
                        seen.add(shape)
                        shapes.append(shape + (name,))
    return shapes


def _ctypes_sgemm(kind: Any) -> Any:
    """A row-major sgemm(ta, tb, m, n, k, a, b, c) through a BLAS wheel's shared library in
    sys.prefix/lib (``mkl``: cblas_sgemm of libmkl_rt; ``onednn``: dnnl_sgemm of libdnnl), or None."""
    import ctypes
    import glob
    import sys
    pattern = {"mkl": "libmkl_rt.so*", "onednn": "libdnnl.so*"}[kind]
    paths = sorted(glob.glob(os.path.join(sys.prefix, "lib", pattern)))
    if not paths:
        return None
    try:
        lib = ctypes.CDLL(paths[0])
    except OSError:
        return None
    P, F, L = ctypes.c_void_p, ctypes.c_float, ctypes.c_int64
    if kind == "mkl":
        # the library fastprop.blas loaded, on the threading layer it chose
        fn = lib.cblas_sgemm   # (layout, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc), LP64
        I = ctypes.c_int
        fn.argtypes = [I, I, I, I, I, I, F, P, I, P, I, F, P, I]

        def sgemm(ta: Any, tb: Any, m: Any, n: Any, k: Any, a: Any, b: Any, c: Any) -> Any:
            fn(101, 112 if ta else 111, 112 if tb else 111, m, n, k, 1.0, a.ctypes.data,
               a.shape[1], b.ctypes.data, b.shape[1], 0.0, c.ctypes.data, n)
            return c
    else:
        fn = lib.dnnl_sgemm    # row-major (ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
        C = ctypes.c_char
        fn.argtypes = [C, C, L, L, L, F, P, L, P, L, F, P, L]

        def sgemm(ta: Any, tb: Any, m: Any, n: Any, k: Any, a: Any, b: Any, c: Any) -> Any:
            fn(b"T" if ta else b"N", b"T" if tb else b"N", m, n, k, 1.0, a.ctypes.data,
               a.shape[1], b.ctypes.data, b.shape[1], 0.0, c.ctypes.data, n)
            return c
    return sgemm


def gemm_backends() -> Any:
    """{name: gemm(ta, tb, a, b, c)} for every backend importable here, and the notes on those
    that are not. Each returns op(a) op(b) in float32, written into c except by JAX;
    "fastprop" is ``fastprop.ops.gemm`` (SciPy's OpenBLAS via cython_blas, and the small-matrix
    kernel below its threshold)."""
    backends = {"fastprop": lambda ta, tb, a, b, c: ops.gemm(a, b, trans_a=ta, trans_b=tb, out=c),
                "numpy": lambda ta, tb, a, b, c: np.matmul(a.T if ta else a, b.T if tb else b, out=c)}
    notes = []
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        notes.append("threadpoolctl is not installed: no fixed-thread OpenBLAS columns")
    else:
        def limited(threads: Any) -> Any:
            def gemm(ta: Any, tb: Any, a: Any, b: Any, c: Any) -> Any:
                return ops.gemm(a, b, trans_a=ta, trans_b=tb, out=c)
            gemm.blas_threads = threads  # gemm_table sets it around the timing: setting costs ~1 ms
            return gemm
        backends["fastprop 1t"], backends["fastprop 2t"] = limited(1), limited(2)
    try:
        import torch
    except ImportError:
        notes.append("torch is not installed: no torch.mm column")
    else:
        def torch_mm(ta: Any, tb: Any, a: Any, b: Any, c: Any) -> Any:
            ta_, tb_ = torch.from_numpy(a), torch.from_numpy(b)
            return torch.mm(ta_.T if ta else ta_, tb_.T if tb else tb_, out=torch.from_numpy(c))
        backends["torch"] = torch_mm
    try:
        import jax
    except ImportError:
        notes.append("jax is not installed: no JAX column")
    else:
        ops_jit = {(ta, tb): jax.jit(lambda a, b, ta=ta, tb=tb: (a.T if ta else a) @ (b.T if tb else b))
                   for ta in (False, True) for tb in (False, True)}
        cache = [None, None, None]   # the last operands (held, so `is` is safe) and their copies

        def jax_mm(ta: Any, tb: Any, a: Any, b: Any, c: Any) -> Any:
            # the operands are put on the device once; the product stays there
            if cache[0] is not a or cache[1] is not b:
                cache[:] = a, b, (jax.device_put(a), jax.device_put(b))
            return ops_jit[ta, tb](*cache[2]).block_until_ready()
        backends["jax"] = jax_mm
    try:
        import blis.py
    except ImportError:
        notes.append("blis is not installed (pip install blis): no BLIS column")
    else:
        backends["blis"] = lambda ta, tb, a, b, c: blis.py.gemm(a, b, out=c, trans1=ta, trans2=tb,
                                                                 beta=0.0)
    from . import blas
    for name in blas.available_blas():
        if name != "openblas":
            def through(ta: Any, tb: Any, a: Any, b: Any, c: Any) -> Any:
                return ops.gemm(a, b, trans_a=ta, trans_b=tb, out=c)
            through.blas_backend = name   # gemm_table selects it around the timing
            backends[f"fastprop {name}"] = through
    for kind, wheel in (("mkl", "mkl"), ("onednn", "onednn-cpu-gomp")):
        sgemm = _ctypes_sgemm(kind)
        if sgemm is None:
            notes.append(f"no {kind} library in sys.prefix/lib (pip install {wheel}): no {kind} column")
        else:
            backends[kind] = lambda ta, tb, a, b, c, f=sgemm: f(ta, tb, c.shape[0], c.shape[1],
                                                               a.shape[0] if ta else a.shape[1], a, b, c)
    return backends, notes


class _blas_selected:
    """A context in which fastprop's GEMMs use BLAS backend name (fastprop.set_blas)."""

    def __init__(self, name: str) -> None:
        self.name, self.previous = name, "openblas"

    def __enter__(self) -> None:
        from .blas import set_blas
        self.previous = set_blas(self.name)

    def __exit__(self, *exc: Any) -> None:
        from .blas import set_blas
        set_blas(self.previous)


def blas_step_table(names: Any = None, rounds: int = 2, min_time: float = 0.3,
                    settle: float = 0.2, out: Any = print) -> Any:
    """TrainStep time of each workload with each GEMM backend fastprop can select here
    (fastprop.set_blas), float32; the backends take turns in each round, the rounds' times are
    pooled into one median, quoted as ms and as a ratio against OpenBLAS. Returns the rows."""
    from .blas import available_blas
    backends = available_blas()
    out(f"machine: {machine()}")
    out(load())
    out(f"TrainStep ms (median over {rounds} interleaved rounds), and OpenBLAS time / backend time")
    out(f"{'workload':8s} " + " ".join(f"{b:>9s}" for b in backends) + "  "
        + " ".join(f"{b:>9s}" for b in backends if b != "openblas"))
    rows = []
    for name in names or WORKLOADS:
        sizes, batch = WORKLOADS[name]
        setup = StepSetup(sizes, batch)
        times: dict[str, list[float]] = {b: [] for b in backends}
        for r in range(rounds):
            for b in backends[r % len(backends):] + backends[:r % len(backends)]:
                time.sleep(settle)
                with _blas_selected(b):
                    times[b] += repeat_times(setup.fused, min_time)
        ms = {b: 1e3 * float(np.median(t)) for b, t in times.items()}
        row = {"workload": name, **{f"{b}_ms": v for b, v in ms.items()},
               **{f"{b}_speedup": ms["openblas"] / v for b, v in ms.items() if b != "openblas"}}
        rows.append(row)
        out(f"{name:8s} " + " ".join(f"{ms[b]:9.3f}" for b in backends) + "  "
            + " ".join(f"{row[b + '_speedup']:8.2f}x" for b in backends if b != "openblas"))
    return rows


def gemm_table(names: Any = None, batches: Any = None, rounds: int = 2, min_time: float = 0.1,
               settle: float = 0.2, backends: Any = None, out: Any = print) -> Any:
    """GFLOP/s of each GEMM backend at every shape the workloads' steps use, float32; the
    backends take turns in each round and the rounds' times are pooled into one median.
    Each turn starts after ``settle`` seconds of sleep, so that the thread pools of the backend
    before it (OpenBLAS, OpenMP) have stopped spinning and do not take the next one's cores.
    Returns the rows."""
    import contextlib
    found, notes = gemm_backends()
    backends = found if backends is None else {k: found[k] for k in backends if k in found}
    out(f"machine: {machine()}")
    out(load())
    for note in notes:
        out(note)
    out(f"float32 GFLOP/s, median over {rounds} interleaved rounds; NT: y = x Wᵀ, TN: ∇W = gᵀx, "
        f"NN: ∇x = g W; 'fastprop Nt': its OpenBLAS held to N threads")
    cols = list(backends)
    out(f"{'op':2s} {'m':>5s} {'n':>5s} {'k':>5s} {'workload':8s} " + " ".join(f"{c:>11s}" for c in cols)
        + "  fastprop vs best")
    rng = np.random.default_rng(0)
    rows = []
    for op, m, n, k, name in gemm_shapes(names, batches):
        ta, tb = op[0] == "T", op[1] == "T"
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
        c = np.empty((m, n), np.float32)
        times = {col: [] for col in cols}
        for r in range(rounds):
            for col in cols[r % len(cols):] + cols[:r % len(cols)]:
                threads = getattr(backends[col], "blas_threads", None)
                backend = getattr(backends[col], "blas_backend", None)
                if threads:
                    from threadpoolctl import threadpool_limits
                    limit = threadpool_limits(limits=threads, user_api="blas")
                elif backend:
                    limit = _blas_selected(backend)
                else:
                    limit = contextlib.nullcontext()
                time.sleep(settle)
                with limit:
                    times[col] += repeat_times(lambda: backends[col](ta, tb, a, b, c), min_time)
        gflops = {col: 2 * m * n * k / float(np.median(t)) / 1e9 for col, t in times.items()}
        best = max((col for col in gflops if not col.startswith("fastprop")), key=gflops.get, default=None)
        row = {"op": op, "m": m, "n": n, "k": k, "workload": name,
               **{f"{col}_gflops": g for col, g in gflops.items()},
               "best_peer": best, "ratio": gflops["fastprop"] / gflops[best] if best and "fastprop" in gflops
               else float("nan")}
        rows.append(row)
        out(f"{op:2s} {m:5d} {n:5d} {k:5d} {name:8s} " + " ".join(f"{gflops[col]:11.1f}" for col in cols)
            + (f"  {row['ratio']:.2f}x ({best})" if best else ""))
    return rows
