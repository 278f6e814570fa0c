"""Command line: ``python -m fastprop demo``."""
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
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import demo as demo_module
        result = demo_module.run(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                 seed=args.seed, progress=not args.no_progress)
        return 0 if result["accuracy"] >= 0.95 else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
