"""Command line: ``python -m fastprop demo``, ``bench``, ``info``."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastprop")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train an MLP on the digits, and the NumPy reference")
    demo.add_argument("--epochs", type=int, default=20)
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--lr", type=float, default=0.05)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true")
    bench = sub.add_parser("bench", help="time the training step against the NumPy reference")
    bench.add_argument("--workloads", nargs="*", default=None,
                       help="tiny small medium large deep (default: all)")
    bench.add_argument("--scaling", action="store_true",
                       help="sweep width and depth: step time against the number of weights")
    bench.add_argument("--kernels", action="store_true",
                       help="fastprop.ops against fastprop.reference, one line per kernel family")
    bench.add_argument("--memory", action="store_true",
                       help="also report each workload's peak memory per step")
    bench.add_argument("--sklearn", action="store_true",
                       help="fastprop.sklearn.MLPClassifier's fit against scikit-learn's")
    bench.add_argument("--peers", action="store_true",
                       help="TrainStep against NumPy, PyTorch eager, torch.compile and JAX jit")
    bench.add_argument("--gemm", action="store_true",
                       help="GFLOP/s of each GEMM backend at every shape the workloads use")
    bench.add_argument("--blas", action="store_true",
                       help="TrainStep time of each workload with each GEMM backend (set_blas)")
    bench.add_argument("--rounds", type=int, default=None,
                       help="with --peers or --gemm: interleaved rounds (default 3 and 2)")
    bench.add_argument("--batches", type=int, nargs="*", default=None,
                       help="with --gemm: batch sizes instead of each workload's own")
    bench.add_argument("--csv", default="scaling.csv", help="with --scaling: the CSV to write")
    bench.add_argument("--png", default="scaling.png", help="with --scaling: the plot to write")
    sub.add_parser("info", help="version, build flags, SIMD clone, BLAS and threads (for bug reports)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import demo as demo_module
        result = demo_module.run(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                 seed=args.seed, progress=not args.no_progress)
        return 0 if result["accuracy"] >= 0.95 else 1
    if args.command == "info":
        from .info import print_info
        print_info()
        return 0
    if args.command == "bench":
        from . import bench as bench_module
        if args.scaling:
            bench_module.scaling(csv_path=args.csv, png_path=args.png)
        elif args.kernels:
            bench_module.kernel_table()
        elif args.sklearn:
            from . import bench_sklearn
            bench_sklearn.sklearn_table()
        elif args.peers:
            bench_module.peer_table(args.workloads, rounds=args.rounds or 3)
        elif args.blas:
            bench_module.blas_step_table(args.workloads, rounds=args.rounds or 2)
        elif args.gemm:
            bench_module.gemm_table(args.workloads, args.batches, rounds=args.rounds or 2)
        else:
            bench_module.step_table(args.workloads)
            if args.memory:
                bench_module.memory_table(args.workloads)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
