"""O(edges) scaling of the training step: ``python benchmarks/scaling.py [--csv F] [--png F]``.

The same as ``python -m fastprop bench --scaling``: sweeps width and depth, writes a CSV
and a PNG (with matplotlib) of step time against the number of weights E for fastprop
and the NumPy reference, and prints the fit time ≈ α·B·E + β with its R² and the
backward/forward time ratio per point.
"""
import argparse

from fastprop.bench import scaling

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", default="scaling.csv")
    parser.add_argument("--png", default="scaling.png")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    scaling(batch=args.batch, csv_path=args.csv, png_path=args.png)
