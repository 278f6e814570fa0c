"""Threads: the kernels release the GIL, separate models train in parallel with results
identical to serial runs, and one model used from two threads at once is refused."""
import threading

import numpy as np
import pytest

import fastprop as fp


def make(seed):
    model = fp.Sequential(fp.Linear(64, 96, rng=seed), fp.Tanh(), fp.Linear(96, 10, rng=seed + 1))
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.Adam(model.parameters(), lr=1e-3))
    return model, step


def train(step, seed, steps=30):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((64, 64)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    return [step(X, y) for _ in range(steps)]


def test_separate_models_in_threads_equal_serial_runs():
    seeds = [0, 10, 20, 30]
    serial = []
    for s in seeds:
        model, step = make(s)
        losses = train(step, s)
        serial.append((losses, np.concatenate([p.data.ravel() for p in model.parameters()])))
    results = [None] * len(seeds)

    def work(i):
        model, step = make(seeds[i])
        losses = train(step, seeds[i])
        results[i] = (losses, np.concatenate([p.data.ravel() for p in model.parameters()]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(seeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (l_serial, p_serial), (l_thread, p_thread) in zip(serial, results):
        assert l_serial == l_thread
        assert np.array_equal(p_serial, p_thread)


def test_one_model_in_use_elsewhere_is_refused_and_unchanged():
    model, step = make(0)
    x = np.ones((8, 64), np.float32)
    y = np.zeros(8, np.int64)
    step(x, y)
    before = [p.data.copy() for p in model.parameters()]
    model._busy.acquire()  # as if another thread were in the middle of a step
    try:
        for call in (lambda: step(x, y), lambda: model(x), lambda: model.backward(np.ones((8, 10))),
                     lambda: fp.evaluate(model, x, y, fp.SoftmaxCrossEntropy())):
            with pytest.raises(RuntimeError, match="another thread"):
                call()
    finally:
        model._busy.release()
    assert all(np.array_equal(a, p.data) for a, p in zip(before, model.parameters()))
    step(x, y)  # usable again once the other user is done


def test_two_threads_hammering_one_model_never_corrupt_it():
    """Each call either completes or is refused; the parameters stay finite."""
    model, step = make(0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 64)).astype(np.float32)
    y = rng.integers(0, 10, 256)
    outcomes = []

    def work():
        for _ in range(50):
            try:
                outcomes.append(np.isfinite(step(x, y)))
            except RuntimeError as e:
                assert "another thread" in str(e)
                outcomes.append("refused")

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 100 and all(o is True or o == "refused" or o for o in outcomes)
    assert all(np.all(np.isfinite(p.data)) for p in model.parameters())


def test_copies_get_their_own_guard():
    import copy
    model, _ = make(0)
    clone = copy.deepcopy(model)
    model._busy.acquire()
    try:
        clone(np.ones((2, 64), np.float32))  # the copy is free to use
    finally:
        model._busy.release()
