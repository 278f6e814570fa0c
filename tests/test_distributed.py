"""Data-parallel training over MPI: tests/mpi/worker.py runs under ``mpiexec -n 2`` and
``-n 3`` and each rank writes its results; here they are checked against one process."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "mpi"))
import scenarios  # noqa: E402

import fastprop as fp  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "mpi", "worker.py")


def mpiexec():
    """The mpiexec next to this Python (the mpich wheel's), else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


@pytest.fixture(scope="module", params=[2, 3])
def ranks(request, tmp_path_factory):
    """[(json report, npz arrays)] of every rank of one mpiexec run."""
    pytest.importorskip("mpi4py")
    if mpiexec() is None:
        pytest.skip("no mpiexec (pip install 'fastprop-nn[mpi]')")
    n, out = request.param, tmp_path_factory.mktemp(f"mpi{request.param}")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    # sys.executable, not "python": a pyenv shim in front of mpiexec would pick another one
    run = subprocess.run([mpiexec(), "-n", str(n), sys.executable, WORKER, str(out)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    return [(json.load(open(out / f"rank{r}.json")), dict(np.load(out / f"rank{r}.npz")))
            for r in range(n)]


def relative(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def test_import_fastprop_does_not_import_mpi4py():
    code = "import sys, fastprop; sys.exit('mpi4py' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("name", list(scenarios.SETUPS))
def test_n_ranks_equal_one_process(ranks, name):
    """sgd / adam / graph, uneven shards (10 rows on 3 ranks), ranks without rows (2 rows on
    3 ranks), the overlapped backward and DP-SGD (clipped per example, noised once): 20
    steps give one process's parameters and losses."""
    theta, losses = scenarios.train(name)
    for report, arrays in ranks:
        assert report["size"] == len(ranks)
        assert relative(arrays[name], theta) < 1e-10
        np.testing.assert_allclose(report[name], losses, rtol=1e-10)
    for _, arrays in ranks[1:]:  # every rank holds the same parameters, to the bit
        assert np.array_equal(arrays[name], ranks[0][1][name])


def test_mismatched_models_raise_on_every_rank(ranks):
    last = len(ranks) - 1
    for report, _ in ranks:
        kind, message = report["mismatch_shape"]
        assert kind == "ValueError"
        assert f"rank {last} has ('0.weight', (9, 5), 'float64'), rank 0 has ('0.weight', (8, 5)" \
            in message
        kind, message = report["mismatch_dtype"]
        assert kind == "ValueError" and "'float32'), rank 0 has" in message


def test_random_streams_are_distinct_per_rank_and_reproducible(ranks):
    keys = [report["stream"]["key"] for report, _ in ranks]
    assert keys[0] == 11  # root keeps its stream
    for rank, (report, _) in enumerate(ranks[1:], 1):
        seq = np.random.SeedSequence([11, rank])  # from root's key and the rank only
        assert report["stream"] == {"key": int(seq.generate_state(1, np.uint64)[0]), "counter": 3}
    assert len(set(keys)) == len(keys)


def test_broadcast_optimizer_state(ranks):
    for report, arrays in ranks:
        assert report["adam_step_count"] == 1  # rank 0 took one step, the others more
        assert np.array_equal(arrays["adam_state"], ranks[0][1]["adam_state"])
        kind, message = report["mismatch_optimizer"]
        assert kind == "ValueError"
        assert message.startswith(f"the optimizers differ across ranks: rank {len(ranks) - 1} "
                                  f"has SGD, rank 0 has Adam")


def test_bad_arguments(ranks):
    for report, _ in ranks:
        assert report["bad_comm"] == ["TypeError", "comm must be an mpi4py communicator or "
                                      "distributed.Overlap, got str"]
        assert report["overlap_graph"][0] == "TypeError"
        assert report["bad_bucket"] == ["ValueError", "bucket_bytes must be a positive integer, got 0"]


def test_a_failing_rank_makes_every_rank_raise(ranks):
    last = len(ranks) - 1
    for report, _ in ranks:
        assert report["fault_nan_input"] == ["ValueError", f"rank {last}: x[1, 2] = nan is not finite"]
        assert report["fault_bad_shape"] == ["ValueError", f"rank {last}: x has shape (4, 4), expected (batch, 5)"]
        kind, message = report["fault_inf_loss"]
        assert kind == "FloatingPointError" and message.startswith(f"rank {last}: the loss became inf")
        assert report["fault_unchanged"]  # no rank updated
        assert report["fault_then_step"] == ranks[0][0]["fault_then_step"]  # still in step


def test_fit_equals_one_process_and_prints_on_rank_0_only(ranks):
    X, y = scenarios.data("sgd", 50)
    model = scenarios.sequential(seed=0)
    opt = fp.SGD(model.parameters(), 0.1, momentum=0.9)
    hist = fp.fit(model, X, y, fp.SoftmaxCrossEntropy(), opt, epochs=3, batch_size=7,
                  validation_data=(X[:13], y[:13]), progress=False)
    theta = fp.parameters_to_vector(model)
    for rank, (report, arrays) in enumerate(ranks):
        assert relative(arrays["fit"], theta) < 1e-10
        for key, values in report["fit_history"].items():
            np.testing.assert_allclose(values, hist.history[key], rtol=1e-10, err_msg=key)
        assert ("epoch 3/3" in report["fit_output"]) == (rank == 0), report["fit_output"]
        kind, message = report["fit_own_shards"]
        assert kind == "ValueError" and message.startswith("the data sets (every rank must pass "
                                                           "the same X and y) differ across ranks")


def test_example_under_mpiexec_matches_one_process():
    pytest.importorskip("mpi4py")
    if mpiexec() is None:
        pytest.skip("no mpiexec")
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "distributed.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    two = subprocess.run([mpiexec(), "-n", "2", sys.executable, example, "3"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr
    one = subprocess.run([sys.executable, example, "3"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert two.stdout.count("saved") == 1  # rank 0 only
    assert two.stdout.splitlines()[0] == one.stdout.splitlines()[0].replace("1 rank", "2 rank")


def test_benchmark_script_runs():
    """benchmarks/distributed.py on the tiny workload, one round: its table has both rank counts."""
    pytest.importorskip("mpi4py")
    if mpiexec() is None:
        pytest.skip("no mpiexec")
    bench = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "distributed.py")
    run = subprocess.run([sys.executable, bench, "--workloads", "tiny", "--rounds", "1"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines() if line.startswith("tiny")]
    assert [r[1] for r in rows] == ["1", "2"]
    assert all(float(v) > 0 for r in rows for v in r[2:6])  # the four step times, in ms
