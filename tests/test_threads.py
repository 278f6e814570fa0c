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


def test_a_layer_or_the_optimizer_of_a_model_in_use_is_refused_too():
    """A layer shares the model's workspaces and an optimizer its buffers: both are guarded
    by the model's guard, so they cannot change a model another thread is running."""
    model, step = make(0)
    opt = step.optimizer
    x = np.ones((4, 64), np.float32)
    model(x)
    before = [p.data.copy() for p in model.parameters()]
    model._busy.acquire()
    try:
        for call in (lambda: model[0](x), lambda: model[2](np.ones((4, 96), np.float32)),
                     lambda: model[0].backward(np.ones((4, 96), np.float32)), opt.step):
            with pytest.raises(RuntimeError, match="another thread"):
                call()
    finally:
        model._busy.release()
    assert all(np.array_equal(a, p.data) for a, p in zip(before, model.parameters()))
    assert opt.step_count == 0
    opt.step()  # free again: nothing was left held by the refused calls
    model[0](x)


def test_nested_and_shallow_copies_share_the_guard_deep_copies_do_not():
    import copy
    import pickle
    inner = fp.Sequential(fp.Linear(3, 4, rng=0), fp.ReLU())
    model = fp.Sequential(inner, fp.Linear(4, 2, rng=1))
    guard = model._busy
    assert all(m._busy is guard for m in model.modules())
    assert all(p._guard is guard for p in model.parameters())
    shallow = copy.copy(model)
    assert shallow._busy is guard
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone._busy is not guard
        assert all(m._busy is clone._busy for m in clone.modules())
        assert all(p._guard is clone._busy for p in clone.parameters())


def test_every_kernel_call_releases_the_gil():
    """Each call of a C function of csrc/fastprop.h in the bindings sits in a `with nogil:`
    block (a kernel holding the GIL would serialise the threads of the test above)."""
    import re
    from pathlib import Path
    folder = Path(fp.__file__).parent
    declared = set(re.findall(r"^\s+(?:int|int64_t|void)\s+(\w+)\(", (folder / "_kernels.pxd").read_text(), re.M))
    declared -= {"fp_set_blas"}  # called once at import
    assert len(declared) > 30
    # the bindings: _kernels.pyx and the family files it includes
    sources = [folder / "_kernels.pyx"] + sorted(folder.glob("_*.pxi"))
    included = set(re.findall(r'^include "(\w+\.pxi)"', sources[0].read_text(), re.M))
    assert included and included <= {s.name for s in sources[1:]}, included
    lines = [line for s in sources for line in s.read_text().splitlines()]
    called = set()
    for i, line in enumerate(lines):
        for name in declared:
            if re.search(rf"\b{name}\(", line) and not line.lstrip().startswith(("#", "cdef extern")):
                called.add(name)
                indent, inside = len(line) - len(line.lstrip()), False
                for prev in reversed(lines[:i]):  # the enclosing blocks, innermost first
                    stripped = prev.strip()
                    level = len(prev) - len(prev.lstrip())
                    if stripped and level < indent:
                        inside |= stripped == "with nogil:"
                        indent = level
                        if stripped.startswith(("def ", "cdef ", "cpdef ")):
                            break
                assert inside, f"line {i + 1} calls {name} holding the GIL: {line.strip()}"
    # a kernel's NAME_f32/NAME_f64 pair is reached through its dtype dispatch c_NAME
    called |= {f"{name[2:]}_{s}" for name in called if name.startswith("c_") for s in ("f32", "f64")}
    assert called == declared, f"not called through the bindings: {declared - called}"
