"""Run under mpiexec by tests/test_distributed.py: ``worker.py OUTDIR``. Each rank writes
OUTDIR/rank{r}.json (losses, errors, captured output) and OUTDIR/rank{r}.npz (parameters)."""
import io
import json
import os
import sys

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(__file__))
import scenarios  # noqa: E402

import fastprop as fp  # noqa: E402
from fastprop import distributed  # noqa: E402

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
out = sys.argv[1]
arrays, report = {}, {"size": size}


def shard(lo, hi):
    a, b = distributed.shard(hi - lo, comm)
    return lo + a, lo + b


def reversed_shard(lo, hi):  # the last rank gets the first part (none, for fewer rows than ranks)
    n = hi - lo
    r = size - 1 - rank
    return lo + n * r // size, lo + n * (r + 1) // size


def error_of(f):
    """(type name, message) of what f raises on this rank, or None."""
    try:
        f()
    except Exception as e:
        return [type(e).__name__, str(e)]
    return None


# equivalence: N ranks on shards of the global batch (fused and overlapped paths)
for name in scenarios.SETUPS:
    step_comm = distributed.Overlap(comm, bucket_bytes=512) if name.startswith("overlap") else comm
    theta, losses = scenarios.train(name, comm, reversed_shard if name == "dp_sgd_tiny" else shard,
                                    step_comm)
    arrays[name] = theta
    report[name] = losses.tolist()

# mismatched models: every rank raises at broadcast_parameters
wide = scenarios.sequential(hidden=8 + (rank == size - 1))
report["mismatch_shape"] = error_of(lambda: distributed.broadcast_parameters(wide, comm))
m32 = scenarios.sequential()
if rank == size - 1:
    m32 = fp.Sequential(fp.Linear(5, 8), fp.Tanh(), fp.Linear(8, 8), fp.ReLU(), fp.Linear(8, 3))
report["mismatch_dtype"] = error_of(lambda: distributed.broadcast_parameters(m32, comm))

# random streams (Dropout's rng_state / set_rng_state): root's, made distinct per rank
class Stream(fp.Identity):
    def __init__(self, key):
        super().__init__()
        self.state = {"key": key, "counter": 3}

    def rng_state(self):
        return dict(self.state)

    def set_rng_state(self, state):
        self.state = dict(state)


streams = fp.Sequential(fp.Linear(5, 3, dtype=np.float64), Stream(11 if rank == 0 else 100 + rank))
distributed.broadcast_parameters(streams, comm)
report["stream"] = streams[1].state

# optimizer state: rank 0's moments and step count everywhere; a different optimizer is an error
model = scenarios.sequential()
opt = fp.Adam(model.parameters(), 1e-2)
step = fp.TrainStep(model, fp.MSE(), opt)
for _ in range(rank + 1):  # a different state on every rank
    step(np.full((4, 5), rank + 1.0), np.zeros((4, 3)))
distributed.broadcast_optimizer_state(opt, comm)
arrays["adam_state"] = np.concatenate([a for kind in opt.state_arrays() for a in kind])
report["adam_step_count"] = opt.step_count
other = fp.SGD(model.parameters(), 0.1, momentum=0.9) if rank == size - 1 else opt
report["mismatch_optimizer"] = error_of(lambda: distributed.broadcast_optimizer_state(other, comm))
report["bad_comm"] = error_of(lambda: fp.TrainStep(model, fp.MSE(), opt, comm="world"))
report["overlap_graph"] = error_of(lambda: fp.TrainStep(
    scenarios.graph(), fp.MSE(), opt, comm=distributed.Overlap(comm)))
report["bad_bucket"] = error_of(lambda: distributed.Overlap(comm, 0))

# faults: one rank's bad input / non-finite loss raises the same error on every rank,
# nothing is updated, and the ranks go on in step afterwards
model = scenarios.sequential()
opt = fp.Adam(model.parameters(), 1e-2)
step = fp.TrainStep(model, fp.MSE(), opt, comm=comm)
x = np.ones((4, 5))
y = np.zeros((4, 3))
before = fp.parameters_to_vector(model).copy()
bad_x = x.copy()
if rank == size - 1:
    bad_x[1, 2] = np.nan
report["fault_nan_input"] = error_of(lambda: step(bad_x, y))
report["fault_bad_shape"] = error_of(lambda: step(x[:, :4] if rank == size - 1 else x, y))
big_y = y.copy()
if rank == size - 1:
    big_y[:] = 1e200  # finite targets, an infinite loss
report["fault_inf_loss"] = error_of(lambda: step(x, big_y))
report["fault_unchanged"] = bool(np.array_equal(before, fp.parameters_to_vector(model)))
report["fault_then_step"] = step(x, y)

# fit: batches split across ranks, validation reduced, output on rank 0 only
X, y = scenarios.data("sgd", 50)
model = scenarios.sequential(seed=rank)
opt = fp.SGD(model.parameters(), 0.1, momentum=0.9)
captured, sys.stderr = sys.stderr, io.StringIO()
hist = fp.fit(model, X, y, fp.SoftmaxCrossEntropy(), opt, epochs=3, batch_size=7,
              validation_data=(X[:13], y[:13]), progress=True, comm=comm)
report["fit_output"] = sys.stderr.getvalue()
sys.stderr = captured
report["fit_history"] = {k: v for k, v in hist.history.items() if k != "samples_per_s"}
arrays["fit"] = fp.parameters_to_vector(model)
report["fit_own_shards"] = error_of(lambda: fp.fit(  # each rank passing its own rows
    model, X[rank::size], y[rank::size], fp.SoftmaxCrossEntropy(), opt, epochs=1, progress=False,
    comm=comm))

with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(report, f)
np.savez(os.path.join(out, f"rank{rank}.npz"), **arrays)
