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


# ---------------------------------------------------------------- peers and GEMM backends

def test_peer_steps_take_the_same_steps():
    """Every installed peer starts from fastprop's weights and batch and makes the same
    SGD-momentum steps (torch.compile is left out: compiling takes minutes on a loaded machine)."""
    steps, missing = bench.peer_steps([8, 6, 3], 4, peers=("numpy", "torch", "jax"))
    assert set(steps) | set(missing) == {"fastprop", "numpy", "torch", "jax"} and "numpy" in steps
    for _ in range(3):   # the first step sets the momentum buffers; the later ones use them
        losses = {name: step() for name, step in steps.items()}
        assert all(np.isclose(v, losses["fastprop"], rtol=1e-5) for v in losses.values()), losses
    assert losses["fastprop"] < 1.93   # and it trains: the first loss was 1.930


def test_peer_table_on_tiny_names_the_best_peer():
    lines = []
    rows = bench.peer_table(["tiny"], peers=("numpy", "torch", "jax"), rounds=2, min_time=0.0,
                            settle=0.0, out=lines.append)
    (row,) = rows
    times = {k[:-3]: v for k, v in row.items() if k.endswith("_us")}
    assert "fastprop" in times and "numpy" in times and all(t > 0 for t in times.values())
    peers = {k: v for k, v in times.items() if k != "fastprop"}
    assert row["best_peer"] == min(peers, key=peers.get)
    assert np.isclose(row["ratio"], peers[row["best_peer"]] / times["fastprop"])
    assert lines[-1].startswith("tiny") and f"({row['best_peer']})" in lines[-1]


def test_a_missing_peer_is_skipped_with_a_note(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "jax", None)   # import jax raises ImportError
    steps, missing = bench.peer_steps([8, 6, 3], 4, peers=("numpy", "jax"))
    assert missing == ["jax"] and set(steps) == {"fastprop", "numpy"}
    lines = []
    rows = bench.peer_table(["tiny"], peers=("numpy", "jax"), rounds=1, min_time=0.0, settle=0.0,
                            out=lines.append)
    assert "jax is not installed: skipped" in lines and "jax_us" not in rows[0]
    assert rows[0]["best_peer"] == "numpy"


def test_gemm_shapes_are_the_steps_gemms():
    # tiny 64-64-64-10 at B=32: forward NT (m=B, n=out, k=in), ∇W TN (m=out, n=in, k=B),
    # ∇x NN (m=B, n=in, k=out) except for the first layer; repeats listed once
    shapes = [s[:4] for s in bench.gemm_shapes(["tiny"])]
    assert shapes == [("NT", 32, 64, 64), ("TN", 64, 64, 32), ("NN", 32, 64, 64),
                      ("NT", 32, 10, 64), ("TN", 10, 64, 32), ("NN", 32, 64, 10)]
    assert len(bench.gemm_shapes(["tiny"], batches=[32, 512])) == 12
    for op, m, n, k, name in bench.gemm_shapes():
        sizes, batch = bench.WORKLOADS[name]
        assert batch in (m, k) and {m, n, k} <= set(sizes) | {batch}


def test_every_gemm_backend_computes_the_product():
    rng = np.random.default_rng(0)
    backends, notes = bench.gemm_backends()
    assert {"fastprop", "numpy"} <= set(backends)
    for m, n, k in ((5, 7, 3), (33, 17, 65)):
        for ta in (False, True):
            for tb in (False, True):
                a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
                b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
                want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b)
                for name, gemm in backends.items():
                    got = np.asarray(gemm(ta, tb, a, b, np.full((m, n), np.nan, np.float32)))
                    assert got.shape == (m, n)
                    assert np.allclose(got, want, rtol=1e-4, atol=1e-4 * np.sqrt(k)), (name, ta, tb)


def test_gemm_table_reports_each_shape():
    cols = ("fastprop", "numpy", "fastprop 1t")
    rows = bench.gemm_table(["tiny"], rounds=1, min_time=0.0, settle=0.0, backends=cols,
                            out=lambda *a: None)
    assert [(r["op"], r["m"], r["n"], r["k"]) for r in rows] == [s[:4] for s in bench.gemm_shapes(["tiny"])]
    for r in rows:
        gflops = {c: r[f"{c}_gflops"] for c in cols if f"{c}_gflops" in r}
        assert gflops["fastprop"] > 0 and gflops["numpy"] > 0 and all(np.isfinite(list(gflops.values())))
        assert r["best_peer"] == "numpy" and np.isclose(r["ratio"], gflops["fastprop"] / gflops["numpy"])


def test_bench_command_peers_and_gemm_flags(monkeypatch):
    from fastprop.__main__ import main
    calls = []
    monkeypatch.setattr(bench, "peer_table", lambda *a, **k: calls.append(("peers", a, k)))
    monkeypatch.setattr(bench, "gemm_table", lambda *a, **k: calls.append(("gemm", a, k)))
    assert main(["bench", "--peers", "--workloads", "tiny", "deep", "--rounds", "5"]) == 0
    assert main(["bench", "--gemm", "--batches", "32", "512"]) == 0
    assert calls == [("peers", (["tiny", "deep"],), {"rounds": 5}),
                     ("gemm", (None, [32, 512]), {"rounds": 2})]


def test_a_peer_that_fails_is_dropped_with_a_note(monkeypatch):
    def broken(*args, **kwargs):
        def step():
            raise RuntimeError("no compiler")
        return step
    monkeypatch.setattr(bench, "torch_step", broken)
    lines = []
    rows = bench.peer_table(["tiny"], peers=("numpy", "torch"), rounds=2, min_time=0.0, settle=0.0,
                            out=lines.append)
    assert any(line.startswith("torch failed on tiny (RuntimeError: no compiler)") for line in lines)
    assert "torch_us" not in rows[0] and rows[0]["best_peer"] == "numpy"
