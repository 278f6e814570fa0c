"""Data-parallel step time over MPI: ``python benchmarks/distributed.py [--workloads small large]``.

Launches itself under ``mpiexec -n 1`` and ``-n 2`` (one BLAS thread per rank) and prints,
per workload (fastprop.bench.WORKLOADS, float32, SGD with momentum) and rank count, the
median time of one step of the GLOBAL batch (each rank trains batch/N rows):

  compute     TrainStep without comm on this rank's rows (no communication)
  allreduce   TrainStep(comm=comm): the fused C step, then one Allreduce of the flat gradient
  overlap     TrainStep(comm=Overlap(comm, bucket)): layer-by-layer backward, each bucket's
              Iallreduce posted as soon as its layers are done (DDP's scheme)
  one bucket  the same layer-by-layer path with one bucket posted after the backward
              (what overlap is measured against: the same compute, no overlap)
  Allreduce   the all-reduce of the gradient buffer alone; its share of the allreduce step,
              and the bandwidth in the cost model's terms, 2(N-1)/N·bytes / time.

The modes run interleaved in rounds (medians over rounds), so a noisy machine affects them alike.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def worker(names, rounds, bucket_bytes):
    from mpi4py import MPI

    import fastprop as fp
    from fastprop import distributed
    from fastprop.bench import WORKLOADS, mlp

    fp.set_num_threads(1)
    comm = MPI.COMM_WORLD
    size = comm.Get_size()
    results = {}
    for name in names:
        sizes, batch = WORKLOADS[name]
        lo, hi = distributed.shard(batch, comm)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, sizes[0])).astype(np.float32)[lo:hi]
        y = rng.integers(0, sizes[-1], batch)[lo:hi]
        steps = {}
        for mode, c in [("compute", None), ("allreduce", comm),
                        ("overlap", distributed.Overlap(comm, bucket_bytes)),
                        ("one bucket", distributed.Overlap(comm, 1 << 62))]:
            model = mlp(sizes)
            opt = fp.SGD(model.parameters(), lr=1e-4, momentum=0.9)
            steps[mode] = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), opt, comm=c)
        grad = np.zeros(fp.parameters_to_vector(model).size, np.float32)
        fns = {mode: (lambda s=s: s(x, y)) for mode, s in steps.items()}
        fns["Allreduce"] = lambda: comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
        reps = 2 if name == "large" else 10
        times = {mode: [] for mode in fns}
        for fn in fns.values():
            fn()  # warm-up: workspaces
        for _ in range(rounds):
            for mode, fn in fns.items():
                comm.Barrier()
                t = time.perf_counter()
                for _ in range(reps):
                    fn()
                dt = (time.perf_counter() - t) / reps
                times[mode].append(comm.allreduce(dt, op=MPI.MAX))  # the slowest rank's time
        results[name] = {mode: float(np.median(v)) for mode, v in times.items()}
        results[name]["bytes"] = grad.nbytes
    if comm.Get_rank() == 0:
        print(json.dumps({"size": size, "results": results}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["small", "large"])
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bucket-mb", type=float, default=1.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    bucket = max(1, int(args.bucket_mb * 2**20))
    if args.worker:
        return worker(args.workloads, args.rounds, bucket)
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = here if os.path.exists(here) else "mpiexec"
    runs = {}
    for n in args.ranks:
        cmd = [mpiexec, "-n", str(n), sys.executable, __file__, "--worker", "--rounds",
               str(args.rounds), "--bucket-mb", str(args.bucket_mb), "--workloads", *args.workloads]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                             env=dict(os.environ, **WORKER_ENV)).stdout
        runs[n] = json.loads(out.strip().splitlines()[-1])["results"]
    print(f"step time of the global batch, ms (median of {args.rounds} interleaved rounds; "
          f"one BLAS thread per rank; overlap buckets of {args.bucket_mb:g} MB)")
    print(f"{'workload':9} {'ranks':>5} {'compute':>9} {'allreduce':>9} {'overlap':>9} "
          f"{'one bucket':>10} {'Allreduce':>9} {'share':>6} {'speed-up':>8} {'GB/s':>6}")
    for name in args.workloads:
        base = runs[args.ranks[0]][name]["allreduce"]
        for n in args.ranks:
            r = runs[n][name]
            share = r["Allreduce"] / r["allreduce"]
            bw = 2 * (n - 1) / n * r["bytes"] / r["Allreduce"] / 1e9 if n > 1 else float("nan")
            print(f"{name:9} {n:5d} {1e3 * r['compute']:9.2f} {1e3 * r['allreduce']:9.2f} "
                  f"{1e3 * r['overlap']:9.2f} {1e3 * r['one bucket']:10.2f} "
                  f"{1e3 * r['Allreduce']:9.2f} {100 * share:5.1f}% {base / r['allreduce']:8.2f} "
                  f"{bw:6.2f}")
        print(f"{'':9} gradient {runs[args.ranks[0]][name]['bytes'] / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
