"""The benchmark helpers compute what they claim (their timings are not asserted)."""
import numpy as np

import fastprop as fp
from fastprop import bench


def test_edges_and_flops():
    assert bench.edges([64, 64, 64, 10]) == 64 * 64 * 2 + 640
    # 2BE forward + 4BE backward, minus the first layer's input gradient (2·B·in·out)
    assert bench.step_flops([3, 4, 2], 5) == 6 * 5 * (12 + 8) - 2 * 5 * 12


def test_step_setup_starts_all_three_from_the_same_weights():
    s = bench.StepSetup([8, 6, 3], 4)
    losses = [s.fused(), s.modular(), s.numpy()]
    assert np.allclose(losses, losses[0], rtol=1e-5)
    # and after one step they still agree (same update rule)
    losses = [s.fused(), s.modular(), s.numpy()]
    assert np.allclose(losses, losses[0], rtol=1e-4)


def test_scaling_writes_csv_and_fits(tmp_path):
    csv_path = tmp_path / "s.csv"
    rows, fits = bench.scaling(widths=(16, 32), depths=(1, 2), width_depth=1, depth_width=16,
                               batch=8, min_time=0.01, csv_path=str(csv_path), png_path=None,
                               out=lambda *a: None)
    assert len(rows) == 4 and csv_path.read_text().count("\n") == 5
    assert set(fits) == {"fastprop", "numpy"}
    assert all(r["edges"] == bench.edges(list(map(int, r["sizes"].split("-")))) for r in rows)


def test_bench_command_runs_one_workload(capsys):
    from fastprop.__main__ import main
    assert main(["bench", "--workloads", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "sgemm ceiling" in out and "tiny" in out


def test_step_memory_stays_within_the_bound():
    """Parameters + gradients + momentum + saved activations + one gradient pair, plus the
    Python objects around them: nothing activation-sized beyond that."""
    for sizes, batch in ([64, 64, 64, 10], 32), ([784, 256, 256, 10], 128), ([128] * 9 + [10], 64):
        fast, numpy_peak, bound = bench.step_memory(sizes, batch)
        assert bound <= fast <= bound + 64 * 1024, (sizes, fast, bound)
        assert numpy_peak > 0


def test_kernel_table_covers_every_family():
    rows = bench.kernel_table(batch=4, n_in=6, n_out=5, classes=3, min_time=0.0, out=lambda *a: None)
    names = " ".join(r["kernel"] for r in rows)
    for family in ("dense forward", "dense backward", "activation backward", "softmax", "sgd", "adam"):
        assert family in names
    assert all(r["fastprop_us"] > 0 and r["reference_us"] > 0 for r in rows)


def test_residual_scaling_compares_the_same_layers(tmp_path):
    sizes = [16, 16, 16, 16, 3]
    res, plain = bench.residual_mlp(sizes), bench.mlp(sizes)
    assert [p.shape for p in res.parameters()] == [p.shape for p in plain.parameters()]
    for p, q in zip(res.parameters(), plain.parameters()):   # the same seeded weights
        assert np.array_equal(p.data, q.data)
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    # h1 = relu(L1 x), h2 = h1 + relu(L2 h1), h3 = h2 + relu(L3 h2), out = L4 h3
    L = [m for m in plain.layers if isinstance(m, fp.Linear)]
    h = np.maximum(L[0](x), 0)
    for lin in L[1:3]:
        h = h + np.maximum(lin(h), 0)
    assert np.allclose(res(x), L[3](h), rtol=1e-5, atol=1e-6)
    csv_path = tmp_path / "r.csv"
    rows = bench.residual_scaling(blocks=(1, 2), width=8, batch=4, min_time=0.0,
                                  csv_path=str(csv_path), out=lambda *a: None)
    assert [r["blocks"] for r in rows] == [1, 2] and csv_path.read_text().count("\n") == 3
    assert rows[1]["edges"] == bench.edges([8] * 4 + [10])
    assert all(r[k] > 0 for r in rows for k in ("residual_s", "plain_fused_s", "plain_modular_s"))


def test_residual_scaling_branches_keep_deep_graphs_finite():
    """32 He-scaled residual blocks blow the outputs up (the variance doubles per block, and
    training the sweep's width-256 net then overflowed to a NaN loss); the sweep's 1/√n
    branches keep their scale."""
    sizes = [64] * 34 + [10]
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    assert np.abs(bench.residual_mlp(sizes)(x)).max() > 1e6
    out = bench.residual_mlp(sizes, branch_scale=32 ** -0.5)(x)
    assert np.all(np.isfinite(out)) and np.abs(out).max() < 1e3
