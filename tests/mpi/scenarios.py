"""Models, data and training runs shared by the MPI worker (tests/mpi/worker.py, under
mpiexec) and the single-process reference in tests/test_distributed.py."""
import numpy as np

import fastprop as fp

B, STEPS, IN, OUT = 12, 20, 5, 3


def sequential(seed=0, hidden=8):
    rng = np.random.default_rng(seed)
    return fp.Sequential(fp.Linear(IN, hidden, dtype=np.float64, rng=rng), fp.Tanh(),
                         fp.Linear(hidden, hidden, dtype=np.float64, rng=rng), fp.ReLU(),
                         fp.Linear(hidden, OUT, dtype=np.float64, rng=rng))


def graph(seed=0):
    rng = np.random.default_rng(seed)
    g = fp.Graph()
    x = g.input("x", IN)
    h = g.add(fp.Tanh(), g.add(fp.Linear(IN, 8, dtype=np.float64, rng=rng), x))
    r = g.add(fp.ReLU(), g.add(fp.Linear(8, 8, dtype=np.float64, rng=rng), h))
    s = g.add(fp.Add(), h, r)
    return g.build(outputs=g.add(fp.Linear(8, OUT, dtype=np.float64, rng=rng), s))


# name: (model builder, loss, optimizer builder, global batch)
SETUPS = {
    "sgd": (sequential, fp.SoftmaxCrossEntropy, lambda p: fp.SGD(p, 0.1, momentum=0.9), B),
    "adam": (sequential, fp.MSE, lambda p: fp.Adam(p, 1e-2), B),
    "graph": (graph, fp.SoftmaxCrossEntropy, lambda p: fp.Adam(p, 1e-2), B),
    "uneven": (sequential, fp.SoftmaxCrossEntropy, lambda p: fp.SGD(p, 0.1), 10),
    "tiny": (sequential, fp.SoftmaxCrossEntropy, lambda p: fp.SGD(p, 0.1), 2),  # ranks with 0 rows
    "overlap": (lambda seed=0: sequential(seed, hidden=64), fp.SoftmaxCrossEntropy,
                lambda p: fp.Adam(p, 1e-2), B),
    "overlap_tiny": (lambda seed=0: sequential(seed, hidden=64), fp.SoftmaxCrossEntropy,
                     lambda p: fp.Adam(p, 1e-2), 2),
    # DP-SGD: per-example clipping on each rank, the noise once (rank 0's rng)
    "dp_sgd": (sequential, fp.SoftmaxCrossEntropy, lambda p: fp.SGD(p, 0.1), B,
               dict(per_example_clip=0.5, noise_multiplier=1.1, rng=5)),
    # ... with 2 rows on 3 ranks given to the first ranks: the noise comes from a rank without rows
    "dp_sgd_tiny": (sequential, fp.SoftmaxCrossEntropy, lambda p: fp.SGD(p, 0.1), 2,
                    dict(per_example_clip=0.5, noise_multiplier=1.1, rng=5)),
    # sample and class weights: each rank's share of the mean is its rows' total weight
    "weighted": (sequential, lambda: fp.SoftmaxCrossEntropy(weight=np.array([1.0, 3.0, 0.5])),
                 lambda p: fp.SGD(p, 0.1, momentum=0.9), 10),
}


def data(name, n=None):
    """Every step's global batch, the same on every rank."""
    batch = SETUPS[name][3]
    rng = np.random.default_rng(1)
    n = STEPS * batch if n is None else n
    X = rng.standard_normal((n, IN))
    y = rng.standard_normal((n, OUT)) if SETUPS[name][1] is fp.MSE else rng.integers(0, OUT, n)
    return X, y


def train(name, comm=None, shard=None, step_comm=None):
    """STEPS TrainSteps of the global batch; shard(lo, hi) -> this rank's (lo, hi).
    Returns (flat parameters, losses)."""
    build, loss, make_opt, batch, *options = SETUPS[name]
    model = build(seed=0 if comm is None else comm.Get_rank())  # broadcast makes them equal
    opt = make_opt(model.parameters())
    if comm is not None:
        from fastprop import distributed
        distributed.broadcast_parameters(model, comm)
    step = fp.TrainStep(model, loss(), opt, comm=step_comm, **(options[0] if options else {}))
    X, y = data(name)
    losses = []
    for k in range(STEPS):
        lo, hi = k * batch, (k + 1) * batch
        if shard is not None:
            lo, hi = shard(lo, hi)
        w = None if name != "weighted" else np.linspace(0.0, 2.0, STEPS * batch)[lo:hi]
        losses.append(step(X[lo:hi], y[lo:hi], w))
    return fp.parameters_to_vector(model.parameters()), np.array(losses)
