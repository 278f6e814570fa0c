"""fastprop's own threads (the optimizer updates over large flat buffers): the same bits
whatever the thread count, and the thread setting checked."""
import numpy as np
import pytest

import fastprop as fp
from fastprop import ops


@pytest.fixture
def threads():
    saved = fp.get_num_threads()
    yield
    fp.set_num_threads(saved)


def _state(rng, n, dtype):
    return [rng.standard_normal(n).astype(dtype) for _ in range(4)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_updates_are_bitwise_the_same_on_any_thread_count(threads, dtype):
    rng = np.random.default_rng(0)
    n = 5 * 2**19 + 13  # several pieces, the last one ragged
    base = _state(rng, n, dtype)
    base[3] = np.abs(base[3])  # exp_avg_sq ≥ 0
    results = []
    for t in (1, 2, 3):
        fp.set_num_threads(t)
        p, g, m, v = (a.copy() for a in base)
        ops.sgd_step(p, g, lr=0.05, momentum_buffer=m, momentum=0.9, nesterov=True,
                     weight_decay=1e-3)
        ops.adam_step(p, g, m, v, step=4, lr=1e-3, weight_decay=1e-2, decoupled=True)
        results.append((p, m, v))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)
    # and it is the update rule itself: the same two steps in the float64 reference
    p, g, m, v = (a.astype(np.float64) for a in base)
    fp.reference.sgd_step(p, g, lr=0.05, momentum_buffer=m, momentum=0.9, nesterov=True,
                          weight_decay=1e-3)
    fp.reference.adam_step(p, g, m, v, step=4, lr=1e-3, weight_decay=1e-2, decoupled=True)
    for ours, ref in zip(results[1], (p, m, v)):
        assert np.allclose(ours, ref, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_set_num_threads_checks_its_argument(threads):
    fp.set_num_threads(2)
    assert fp.get_num_threads() == 2
    fp.set_num_threads(0)  # back to one per CPU
    assert 1 <= fp.get_num_threads() <= 8
    for bad in (-1, 9):
        with pytest.raises(ValueError, match="n must be in"):
            fp.set_num_threads(bad)
    with pytest.raises(TypeError):
        fp.set_num_threads("2")
