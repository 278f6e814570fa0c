"""Shared helpers of the benchmark suite.

Run:  pytest benchmarks/ --benchmark-only          (timings; medians, grouped per operation)
      pytest benchmarks/ --benchmark-disable       (each benchmark once, results checked: CI)
"""
import numpy as np
import pytest


def run(benchmark, fn, heavy=False, setup=None):
    """Benchmarks fn; few rounds for the heavy shapes (a large step takes most of a second).
    setup, when given, runs before each round, untimed (one call of fn per round)."""
    if setup is not None:
        return benchmark.pedantic(fn, setup=setup, rounds=20 if heavy else 2000, warmup_rounds=2)
    if heavy:
        return benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    return benchmark(fn)


def close(a, b, rtol=1e-4):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(), 1e-30)
    assert np.abs(a - b).max() <= rtol * scale


@pytest.fixture
def rng():
    return np.random.default_rng(0)
