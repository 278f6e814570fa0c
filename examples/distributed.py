"""Data-parallel training over MPI: ``mpiexec -n 2 python examples/distributed.py``.

Every rank loads the same data and builds the same model; fit(..., comm=comm) broadcasts
rank 0's weights, splits each batch of 64 rows across the ranks and averages the gradient
over the whole batch, so the result is the one process's training (to float rounding)
whatever the number of ranks. Only rank 0 prints and saves. Without mpiexec (or without
mpi4py) the script trains in one process.
"""
import os
import sys
import tempfile

import fastprop as fp

try:
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
except ImportError:
    comm = None
root = comm is None or comm.Get_rank() == 0

X, y = fp.datasets.load_digits()
X_train, X_test, y_train, y_test = fp.datasets.train_test_split(X, y, test_size=0.25, seed=0)
model = fp.Sequential(fp.Linear(64, 128, rng=0), fp.ReLU(), fp.Linear(128, 10, rng=1))
loss = fp.SoftmaxCrossEntropy()
history = fp.fit(model, X_train, y_train, loss=loss, optimizer=fp.Adam(model.parameters(), 1e-3),
                 epochs=int(sys.argv[1]) if len(sys.argv) > 1 else 20, batch_size=64,
                 validation_data=(X_test, y_test), progress=False, comm=comm)
if root:
    ranks = 1 if comm is None else comm.Get_size()
    print(f"{ranks} rank(s): loss {history.loss[-1]:.4f}, "
          f"test accuracy {100 * history.val_accuracy[-1]:.1f}%")
    path = os.path.join(tempfile.mkdtemp(), "digits.npz")
    fp.save(model, path)  # one writer: rank 0
    print("saved", path)
