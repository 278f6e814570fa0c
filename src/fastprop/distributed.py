"""Synchronous data-parallel training over MPI (mpi4py): every rank holds the model, trains
on its shard of each batch, and the gradients are averaged before every update.

Launch one process per rank (``mpiexec -n 2 python train.py``) and pass the communicator::

    from mpi4py import MPI
    from fastprop import distributed
    comm = MPI.COMM_WORLD
    distributed.broadcast_parameters(model, comm)      # rank 0's initial weights everywhere
    step = fp.TrainStep(model, loss_fn, opt, comm=comm)
    J = step(x_shard, y_shard)                          # the global mean loss over all rows
    fp.fit(model, X, y, loss=loss_fn, optimizer=opt, comm=comm)   # every rank passes all of X, y

A step's gradient is the mean over ALL ranks' rows: each rank's mean gradient weighted by
its row count (or its samples' total weight, where the loss is a weighted mean), so
uneven shards are exact and a rank may have no rows; then one in-place
Allreduce of the model's flat gradient buffer. The ranks first agree on one small vector
(an error flag, their row counts and loss sums), so a rank that fails (bad input, a
non-finite loss) makes every rank raise the same error instead of leaving the others
waiting in the all-reduce.
"""
from __future__ import annotations
import importlib

import numpy as np
from typing import Any, TYPE_CHECKING
from numpy.typing import NDArray

if TYPE_CHECKING:  # for annotations only: no import cycle at run time
    from .losses import Loss
    from .optim import Optimizer

try:
    from mpi4py import MPI
except ImportError as e:  # the optional extra
    raise ImportError("fastprop.distributed needs mpi4py: pip install 'fastprop-nn[mpi]'") from e

from .nn import Module, Sequential, flat_runs

__all__ = ["broadcast_parameters", "broadcast_optimizer_state", "allreduce_gradients",
           "Overlap", "evaluate", "check_same_data", "shard", "rows_of", "sum_over_ranks", "is_root"]


def is_root(comm: Any, root: int = 0) -> Any:
    """Whether this is the rank that prints and writes files.

    Parameters
    ----------
    comm : mpi4py communicator or None
        The communicator; None: a single process.
    root : int, default 0
        The rank that prints.

    Returns
    -------
    bool
        True on ``root``, and without a communicator.

    Examples
    --------
    >>> from mpi4py import MPI
    >>> from fastprop import distributed
    >>> comm = MPI.COMM_WORLD.Dup()   # run under mpiexec for several ranks
    >>> distributed.is_root(None), distributed.is_root(comm) == (comm.Get_rank() == 0)
    (True, True)
    """
    return comm is None or comm.Get_rank() == root


def shard(n: int, comm: Any) -> Any:
    """Return (lo, hi): this rank's part of n rows; the parts differ by at most one row.

    Parameters
    ----------
    n : int
        The number of rows.
    comm : mpi4py communicator
        The ranks sharing them.

    Returns
    -------
    tuple of int
        This rank's rows ``lo:hi``.

    Examples
    --------
    >>> from mpi4py import MPI
    >>> from fastprop import distributed
    >>> comm = MPI.COMM_WORLD.Dup()   # run under mpiexec for several ranks
    >>> lo, hi = distributed.shard(10, comm)
    >>> comm.allreduce(hi - lo)
    10
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    return n * rank // size, n * (rank + 1) // size


def rows_of(lo: Any, hi: Any, comm: Any) -> Any:
    """Return this rank's (lo, hi) part of the rows lo:hi (see shard).

    Parameters
    ----------
    lo, hi : int
        The rows ``lo:hi``.
    comm : mpi4py communicator
        The ranks sharing them.

    Returns
    -------
    tuple of int
        This rank's part.

    Examples
    --------
    >>> from mpi4py import MPI
    >>> from fastprop import distributed
    >>> comm = MPI.COMM_WORLD.Dup()   # run under mpiexec for several ranks
    >>> a, b = distributed.rows_of(5, 15, comm)
    >>> 5 <= a <= b <= 15, comm.allreduce(b - a)
    (True, 10)
    """
    a, b = shard(hi - lo, comm)
    return lo + a, lo + b


def sum_over_ranks(comm: Any, *values: Any) -> Any:
    """Return the sums over all ranks of a few numbers (one small Allreduce).

    Parameters
    ----------
    comm : mpi4py communicator
        The ranks.
    *values : float
        This rank's numbers.

    Returns
    -------
    tuple of float
        Their sums over the ranks.

    Examples
    --------
    >>> from mpi4py import MPI
    >>> from fastprop import distributed
    >>> comm = MPI.COMM_WORLD.Dup()   # run under mpiexec for several ranks
    >>> distributed.sum_over_ranks(comm, 1.0, 2.0) == (comm.Get_size(), 2.0 * comm.Get_size())
    True
    """
    buf = np.array(values, dtype=np.float64)
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    return tuple(buf.tolist())


def evaluate(model: Module, X: NDArray[Any], y: NDArray[Any], loss: Loss, comm: Any,
             batch_size: int = 4096) -> Any:
    """Return fastprop.evaluate over all ranks' rows.

    Each rank scores its shard of (X, y), and the loss and accuracy are the means over all
    rows (every rank passes the same X, y).

    Parameters
    ----------
    model : Module
        The model (the same on every rank).
    X : ndarray of shape (samples, in_features)
        The inputs, the same on every rank.
    y : ndarray
        The targets, as the loss takes them.
    loss : Loss
        The loss.
    comm : mpi4py communicator
        The ranks.
    batch_size : int, default 4096
        Rows per forward pass.

    Returns
    -------
    dict
        ``{"loss": mean loss, "accuracy": fraction correct, or None}``, the same on every rank.

    Raises
    ------
    ValueError
        As :func:`fastprop.evaluate`.

    Examples
    --------
    >>> from mpi4py import MPI
    >>> from fastprop import distributed
    >>> comm = MPI.COMM_WORLD.Dup()   # run under mpiexec for several ranks
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(2, 3, rng=comm.Get_rank()), fp.ReLU(), fp.Linear(3, 2, rng=1))
    >>> X, y = fp.datasets.xor()
    >>> sorted(distributed.evaluate(model, X, y, fp.SoftmaxCrossEntropy(), comm))
    ['accuracy', 'loss']
    """
    from .train import evaluate as local_evaluate
    lo, hi = shard(len(X), comm)
    total, correct, has_acc = 0.0, 0.0, False
    if hi > lo:
        scores = local_evaluate(model, X[lo:hi], y[lo:hi], loss, batch_size)
        total = scores["loss"] * (hi - lo)
        has_acc = scores["accuracy"] is not None
        correct = scores["accuracy"] * (hi - lo) if has_acc else 0.0
    total, correct, has_acc = sum_over_ranks(comm, total, correct, has_acc)
    return {"loss": total / len(X), "accuracy": correct / len(X) if has_acc else None}


def check_same_data(comm: Any, *arrays: Any, root: int = 0) -> None:
    """Check that every rank holds the same arrays (by shape, dtype and a sum of ~64 rows).

    fit(comm=...) splits every batch itself, so ranks that each pass their own shard would
    train on the wrong rows, or wait forever for a rank that has fewer batches.

    Parameters
    ----------
    comm : mpi4py communicator
        The ranks.
    *arrays : array_like
        This rank's arrays.
    root : int, default 0
        The rank the others are compared with.

    Raises
    ------
    ValueError
        On every rank, if some rank's arrays differ from root's.

    Examples
    --------
    >>> from mpi4py import MPI
    >>> from fastprop import distributed
    >>> comm = MPI.COMM_WORLD.Dup()   # run under mpiexec for several ranks
    >>> import numpy as np
    >>> distributed.check_same_data(comm, np.arange(6.0).reshape(3, 2))
    """
    sig = []
    for a in arrays:
        a = np.asarray(a)
        step = max(1, len(a) // 64) if a.ndim else 1
        sig.append((a.shape, str(a.dtype), float(np.sum(a[::step], dtype=np.float64))))
    _agree_signatures("data sets (every rank must pass the same X and y)", sig, comm, root)


def _agree_signatures(what: Any, sig: Any, comm: Any, root: Any) -> Any:
    """Every rank raises the same ValueError if some rank's signature differs from root's."""
    sigs = comm.allgather(sig)
    for rank, s in enumerate(sigs):
        if s == sigs[root]:
            continue
        i = next((i for i, (a, b) in enumerate(zip(s, sigs[root])) if a != b), None)
        if i is None:
            detail = f"{len(s)} entries, rank {root} has {len(sigs[root])}"
        else:
            detail = f"{s[i]}, rank {root} has {sigs[root][i]}"
        raise ValueError(f"the {what} differ across ranks: rank {rank} has {detail}")


def broadcast_parameters(model: Module, comm: Any, root: int = 0) -> Any:
    """Copy root's parameters into every rank's model (one Bcast per flat buffer).

    Its buffers (running statistics) too; a Dropout's mask stream becomes root's, made
    distinct per rank.

    Parameters
    ----------
    model : Module
        This rank's model.
    comm : mpi4py communicator
        The ranks.
    root : int, default 0
        The rank whose parameters are copied.

    Raises
    ------
    TypeError
        If model is not a Module.
    ValueError
        On every rank (and nothing changed), if the models' parameter names, shapes or
        dtypes differ across ranks.

    Examples
    --------
    >>> from mpi4py import MPI
    >>> from fastprop import distributed
    >>> comm = MPI.COMM_WORLD.Dup()   # run under mpiexec for several ranks
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(2, 3, rng=comm.Get_rank()), fp.ReLU(), fp.Linear(3, 2, rng=1))
    >>> distributed.broadcast_parameters(model, comm)
    >>> w = model[0].weight.data
    >>> bool(np.all(comm.allgather(w.sum()) == w.sum()))
    True
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastprop Module, got {type(model).__name__}")
    buffers: list[Any] = getattr(model, "named_buffers", list)()  # BatchNorm's running statistics
    sig: list[Any] = [(name, p.shape, str(p.dtype)) for name, p in model.named_parameters()]
    sig += [(name, np.shape(b), str(b.dtype)) for name, b in buffers]
    sig.append(("modules", [type(m).__name__ for m in model.modules()]))
    _agree_signatures("models", sig, comm, root)
    for data, _ in flat_runs(model.parameters()):
        comm.Bcast(data, root=root)
    for _, b in buffers:
        comm.Bcast(b, root=root)
    _distinct_streams(model, comm, root)


def _distinct_streams(model: Any, comm: Any, root: Any) -> None:
    """Modules with a random stream (Dropout: rng_state / set_rng_state) get one per rank,
    derived from root's and the rank: distinct masks on every rank, reproducible from the
    seed (root keeps its own stream, so one rank trains as one process)."""
    for m in model.modules():
        if not callable(getattr(m, "set_rng_state", None)):
            continue
        state = comm.bcast(m.rng_state(), root=root)
        if comm.Get_rank() != root:
            seq = np.random.SeedSequence([state["key"], comm.Get_rank()])
            state = {"key": int(seq.generate_state(1, np.uint64)[0]), "counter": state["counter"]}
        m.set_rng_state(state)


def broadcast_optimizer_state(optimizer: Optimizer, comm: Any, root: int = 0) -> None:
    """Copy root's optimizer state (step count, momentum / moment buffers) to every rank.

    Parameters
    ----------
    optimizer : Optimizer
        This rank's optimizer.
    comm : mpi4py communicator
        The ranks.
    root : int, default 0
        The rank whose state is copied.

    Raises
    ------
    ValueError
        On every rank (and nothing changed), if the optimizers' types or parameter shapes
        and dtypes differ across ranks.

    Examples
    --------
    >>> from mpi4py import MPI
    >>> from fastprop import distributed
    >>> comm = MPI.COMM_WORLD.Dup()   # run under mpiexec for several ranks
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(2, 3, rng=comm.Get_rank()), fp.ReLU(), fp.Linear(3, 2, rng=1))
    >>> opt = fp.Adam(model.parameters())
    >>> distributed.broadcast_optimizer_state(opt, comm)
    """
    sig = [type(optimizer).__name__] + [(p.shape, str(p.dtype)) for p in optimizer.params]
    if hasattr(optimizer, "state_dict"):  # torch's layout: hyperparameters and buffers
        _agree_signatures("optimizers", sig, comm, root)
        state = comm.bcast(optimizer.state_dict() if comm.Get_rank() == root else None, root=root)
        if comm.Get_rank() != root:
            optimizer.load_state_dict(state)
        return
    arrays = [a for kind in optimizer.state_arrays() for a in kind]
    sig += [(a.shape, str(a.dtype)) for a in arrays]  # e.g. momentum buffers or none
    _agree_signatures("optimizers", sig, comm, root)
    for a in arrays:
        comm.Bcast(a, root=root)
    optimizer.step_count = comm.bcast(optimizer.step_count, root=root)


def allreduce_gradients(model: Module, comm: Any) -> None:
    """Replace every ``.grad`` by its mean over the ranks.

    One in-place Allreduce per flat gradient buffer (one for a model).

    Parameters
    ----------
    model : Module
        This rank's model, its gradients computed.
    comm : mpi4py communicator
        The ranks.

    Examples
    --------
    >>> from mpi4py import MPI
    >>> from fastprop import distributed
    >>> comm = MPI.COMM_WORLD.Dup()   # run under mpiexec for several ranks
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(2, 3, rng=comm.Get_rank()), fp.ReLU(), fp.Linear(3, 2, rng=1))
    >>> model[0].weight.grad[...] = 1.0
    >>> distributed.allreduce_gradients(model, comm)
    >>> float(model[0].weight.grad[0, 0])
    1.0
    """
    size = comm.Get_size()
    for _, grad in flat_runs(model.parameters()):
        comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
        grad *= 1.0 / size


def _rows(x: Any) -> Any:
    """The number of rows of a batch x: one array (or nested lists), or a Graph's inputs
    (a dict, list or tuple of 2-D arrays)."""
    if isinstance(x, dict):
        x = next(iter(x.values()), None)
    elif isinstance(x, (list, tuple)) and x and all(isinstance(v, np.ndarray) and v.ndim == 2
                                                    for v in x):
        x = x[0]
    shape = np.shape(x)
    return shape[0] if shape else 1


def _mass(loss: Any, x: Any, y: Any, sample_weight: Any) -> Any:
    """A batch's weight in the global mean: its rows, or the sum of its samples' weights
    where the loss is a weighted mean (sample_weight, class weights: loss.weight_total)."""
    if sample_weight is None and getattr(loss, "weight", None) is None:
        return _rows(x)
    return float(loss.weight_total(np.asarray(y), sample_weight))


def _agree(comm: Any, error: Any, mass: Any, loss_sum: Any) -> Any:
    """One small Allreduce: (the number of failed ranks, Σ mass, Σ mass·loss) over all ranks.

    If some rank failed, every rank raises the first failed rank's error (its type and
    message), so none is left waiting in a collective."""
    stats = np.array([error is not None, mass, loss_sum], dtype=np.float64)
    comm.Allreduce(MPI.IN_PLACE, stats, op=MPI.SUM)
    if stats[0]:
        kind = type(error)
        info = None if error is None else (kind.__module__, kind.__qualname__, str(error))
        errors = comm.allgather(info)  # plain strings: any exception class can be sent
        rank = next(r for r, e in enumerate(errors) if e is not None)
        module, name, message = errors[rank]
        try:
            agreed = getattr(importlib.import_module(module), name)(f"rank {rank}: {message}")
            if not isinstance(agreed, Exception):
                raise TypeError
        except Exception:  # a class that is not importable here, or another constructor
            agreed = RuntimeError(f"rank {rank}: {module}.{name}: {message}")
        raise agreed from error
    return stats[1], stats[2]


class Overlap:
    """``TrainStep(..., comm=distributed.Overlap(comm, bucket_bytes))``: DDP-style overlap.

    The backward runs layer by layer (a Sequential's modular path, not the fused C chain),
    and as soon as the last layers' gradients are final they are all-reduced with a
    non-blocking Iallreduce in buckets of about ``bucket_bytes``, while the earlier layers'
    backward runs; the step waits for all buckets before the update. Measured on one
    machine it does not beat the fused path plus one Allreduce (benchmarks/distributed.py),
    which is why ``comm=comm`` alone takes the latter. MPICH progresses the reductions only
    inside MPI calls (between layers, here) unless MPIR_CVAR_ASYNC_PROGRESS=1.

    Parameters
    ----------
    comm : mpi4py communicator
        The ranks.
    bucket_bytes : int, default 1 << 20
        The size of a bucket of gradients reduced at once.

    Raises
    ------
    ValueError
        If bucket_bytes is not a positive integer.

    Examples
    --------
    >>> from mpi4py import MPI
    >>> from fastprop import distributed
    >>> comm = MPI.COMM_WORLD.Dup()   # run under mpiexec for several ranks
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(2, 3, rng=comm.Get_rank()), fp.ReLU(), fp.Linear(3, 2, rng=1))
    >>> step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.SGD(model.parameters(), lr=0.1),
    ...                     comm=distributed.Overlap(comm, bucket_bytes=4096))
    >>> X, y = fp.datasets.xor()
    >>> isinstance(step(X, y), float)
    True
    """

    def __init__(self, comm: Any, bucket_bytes: Any = 1 << 20) -> None:
        if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, (int, np.integer)) \
                or bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be a positive integer, got {bucket_bytes!r}")
        self.comm, self.bucket_bytes = comm, int(bucket_bytes)


class GradientSync:
    """The data-parallel part of a TrainStep (TrainStep(..., comm=...) makes one)."""

    def __init__(self, step: Any, comm: Any) -> None:
        if not isinstance(comm, (MPI.Comm, Overlap)):
            raise TypeError(f"comm must be an mpi4py communicator or distributed.Overlap, "
                            f"got {type(comm).__name__}")
        self.overlap = isinstance(comm, Overlap)
        self.bucket_bytes = comm.bucket_bytes if isinstance(comm, Overlap) else None
        self.comm: Any = comm.comm if isinstance(comm, Overlap) else comm
        self.step = step
        self.reached = False
        if step.closure:
            raise TypeError("TrainStep(comm=...) does not take an optimizer that needs a "
                            "closure (HessianFree)")
        # DP-SGD (per_example_clip): each rank clips its own examples, and the noise σCξ is
        # added once, by the last rank (fit's shards always give it rows), as in one process
        dp = getattr(step, "_dp", None)
        self.noise: Any = None
        if dp is not None:
            if self.overlap:
                raise TypeError("distributed.Overlap does not take per_example_clip (DP-SGD)")
            if self.comm.Get_rank() == self.comm.Get_size() - 1:
                self.noise = dp if dp.sigma > 0 else None
            else:
                dp.sigma = 0.0
        if self.overlap and not isinstance(step.model, Sequential):
            raise TypeError(f"distributed.Overlap needs a Sequential model (its layers' backward "
                            f"runs one by one), got {type(step.model).__name__}")

    def __call__(self, x: NDArray[Any], y: NDArray[Any],
                 sample_weight: NDArray[Any] | None = None) -> Any:
        """One data-parallel step (inside TrainStep.__call__, which holds the model)."""
        ts = self.step
        self.reached = False
        try:
            # (a ragged x raises here: on this rank only, so it is agreed on below)
            self.mass = _mass(ts.loss, x, y, sample_weight)
            if self.overlap:
                return self._overlapped(x, y, sample_weight)
            if not self.mass:  # no rows (or no weight): a zero gradient and no loss
                return self.before_update(0.0)
            weighted = () if sample_weight is None else (sample_weight,)
            return ts._step(x, y, *weighted)  # calls before_update between backward and update
        except Exception as e:
            if self.reached:  # the ranks already agreed: every rank raises this error
                raise
            _agree(self.comm, e, 0.0, 0.0)

    def before_update(self, J: Any) -> Any:
        """Called by TrainStep between the local backward and the update: agree, then the
        gradient becomes all ranks' mean; returns the global loss. A rank without rows runs
        no TrainStep part, so its update is made here."""
        ts, comm, mass = self.step, self.comm, self.mass
        self.reached = True
        total, loss_sum = _agree(comm, None, mass, mass * J if mass else 0.0)
        grads = [g for _, g in flat_runs(ts.model.parameters())]
        noise_only = not mass and self.noise is not None and total
        if noise_only:  # no rows, but DP-SGD's noise, once a step
            dp = self.noise
            dp.add_noise(grads, dp.sigma * dp.clip / total, accumulate=False)
        for grad in grads:
            if mass:
                grad *= mass / total  # this rank's weight in the global mean
            elif not noise_only:
                grad.fill(0)
            comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
        J = loss_sum / total if total else float("nan")
        ts._diverged(J)
        if not mass:
            ts.optimizer._step_holding(ts.model.guard)
        return J

    # ---------------------------------------------------------------- DDP-style overlap
    def _overlapped(self, x: Any, y: Any, sample_weight: Any) -> Any:
        from .train import _finite_batch
        ts, comm, model, mass = self.step, self.comm, self.step.model, self.mass
        J = 0.0
        if mass:
            x = model.check_input(x)
            if ts._check_batches:
                _finite_batch(x, y)
            out = model.layer_forward(x)
            J = ts.loss(out, y) if sample_weight is None else ts.loss(out, y, sample_weight)
            ts._diverged(J)
        self.reached = True
        total, loss_sum = _agree(comm, None, mass, mass * J)
        model.zero_grad()
        (_, grad), = flat_runs(model.parameters())
        buckets, starts = self._buckets(model, grad)
        pending, b = [], 0
        if mass:
            g = ts.loss.backward()
            g *= mass / total  # every parameter gradient comes out weighted for the global mean
        for i in range(len(model.layers) - 1, -1, -1):
            if mass:
                g = model.layers[i].layer_backward(g, i > 0)
            while b < len(buckets) and buckets[b][0] >= starts[i]:  # this bucket is final
                lo, hi = buckets[b]
                pending.append(comm.Iallreduce(MPI.IN_PLACE, grad[lo:hi], op=MPI.SUM))
                b += 1
            if pending:
                MPI.Request.Testall(pending)  # lets MPI progress the reductions meanwhile
        MPI.Request.Waitall(pending)
        if mass:
            ts._out = out
        J = loss_sum / total if total else float("nan")
        ts._diverged(J)
        ts.optimizer._step_holding(model.guard)
        return J

    def _buckets(self, model: Any, grad: Any) -> Any:
        """[(lo, hi)] of the flat gradient from its end, each about bucket_bytes at layer
        boundaries, and each layer's first offset (a bucket is final once the backward
        has passed the layer holding its first element)."""
        key = (id(grad), self.bucket_bytes)
        if getattr(self, "_bucket_key", None) != key:
            base = grad.__array_interface__["data"][0]
            starts, offset = [], grad.size
            for layer in reversed(model.layers):
                ps = layer.parameters()
                if ps:
                    offset = (ps[0].grad.__array_interface__["data"][0] - base) // grad.itemsize
                starts.append(offset)
            starts.reverse()
            per = max(1, self.bucket_bytes // grad.itemsize)
            buckets, hi = [], grad.size
            for s in sorted(set(starts), reverse=True):
                if hi - s >= per or s == 0:
                    if hi > s:
                        buckets.append((s, hi))
                    hi = s
            self._bucket_key, self._bucket_plan = key, (buckets, starts)
        return self._bucket_plan
