"""O(edges) scaling of the training step: ``python benchmarks/scaling.py [--csv F] [--png F]``.

The same as ``python -m fastprop bench --scaling``: sweeps width and depth, writes a CSV
and a PNG (with matplotlib) of step time against the number of weights E for fastprop
and the NumPy reference, and prints the fit time ≈ α·B·E + β with its R² and the
backward/forward time ratio per point. ``--residual`` sweeps residual MLPs (fastprop.Graph)
against the plain MLPs of the same layers instead (``--csv`` then names its CSV).
"""
import argparse

from fastprop.bench import residual_scaling, scaling

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", default="scaling.csv")
    parser.add_argument("--png", default="scaling.png")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--residual", action="store_true",
                        help="residual MLPs (graphs) against plain MLPs of the same layers")
    args = parser.parse_args()
    if args.residual:
        residual_scaling(batch=args.batch, csv_path=args.csv)
    else:
        scaling(batch=args.batch, csv_path=args.csv, png_path=args.png)
