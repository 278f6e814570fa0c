"""Parameter groups, state_dict/load_state_dict, RMSprop, Adagrad and AMSGrad: step for step
against torch.optim (float64, 25 steps, two groups with their own hyperparameters), and
bad input that changes nothing."""
import copy
import tracemalloc

import numpy as np
import pytest
from conftest import assert_close, assert_unchanged, snapshot

import fastprop as fp
from fastprop.nn import flat_runs

F32, F64 = np.float32, np.float64
STEPS = 25


def mlp(dtype=F64, seed=0, sizes=(5, 8, 6, 3)):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(fp.Linear(a, b, dtype=dtype, rng=seed + i, bias_init=0.05))
        if i < len(sizes) - 2:
            layers.append(fp.Tanh())
    return fp.Sequential(*layers)


# (fastprop class, torch name, defaults, group 0 overrides, group 1 overrides)
CASES = [
    ("SGD", dict(lr=0.05, momentum=0.9), dict(weight_decay=0.1), dict(lr=0.02, momentum=0.5)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True), dict(), dict(weight_decay=0.3)),
    ("SGD", dict(lr=0.1, momentum=0.8, dampening=0.3), dict(), dict(momentum=0.0)),
    ("Adam", dict(lr=0.01), dict(weight_decay=0.1), dict(lr=0.003, betas=(0.8, 0.99))),
    ("Adam", dict(lr=0.01, amsgrad=True), dict(eps=1e-6), dict(weight_decay=0.05)),
    ("AdamW", dict(lr=0.01), dict(weight_decay=0.0), dict(weight_decay=0.2)),
    ("AdamW", dict(lr=0.02, amsgrad=True, betas=(0.5, 0.9)), dict(), dict(lr=0.005)),
    ("RMSprop", dict(lr=0.01), dict(), dict(alpha=0.9, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.005, momentum=0.9), dict(centered=True), dict(eps=1e-4)),
    ("RMSprop", dict(lr=0.003, centered=True, momentum=0.5, weight_decay=0.01), dict(),
     dict(alpha=0.4)),
    ("Adagrad", dict(lr=0.1), dict(lr_decay=0.01), dict(initial_accumulator_value=0.5)),
    ("Adagrad", dict(lr=0.05, weight_decay=0.1, eps=1e-6), dict(), dict(lr=0.2)),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


def split(params):
    """Weights in group 0, biases in group 1 (the AdamW no-decay-on-biases recipe)."""
    return [p for p in params if len(p.shape) == 2], [p for p in params if len(p.shape) == 1]


def gradients(model, steps, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(p.shape) * (1 + t % 3) for p in model.parameters()]
            for t in range(steps)]


def torch_pair(kind, defaults, g0, g1, model):
    torch = pytest.importorskip("torch")
    params = model.parameters()
    w, b = split(params)
    opt = getattr(fp, kind)([{"params": w, **g0}, {"params": b, **g1}], **defaults)
    tw = [torch.tensor(p.data.copy(), requires_grad=True) for p in w]
    tb = [torch.tensor(p.data.copy(), requires_grad=True) for p in b]
    topt = getattr(torch.optim, kind)([{"params": tw, **g0}, {"params": tb, **g1}], **defaults)
    return opt, topt, w + b, tw + tb


def set_grads(params, tparams, grads, order):
    import torch
    for p, tp, i in zip(params, tparams, order):
        p.grad[...] = grads[i]
        tp.grad = torch.tensor(grads[i])


@pytest.mark.parametrize("kind,defaults,g0,g1", CASES, ids=IDS)
def test_groups_step_for_step_vs_torch(kind, defaults, g0, g1):
    model = mlp()
    opt, topt, params, tparams = torch_pair(kind, defaults, g0, g1, model)
    all_params = model.parameters()
    order = [next(i for i, q in enumerate(all_params) if q is p) for p in params]
    assert len(opt.param_groups) == 2
    for t, grads in enumerate(gradients(model, STEPS)):
        if t == 10:  # a scheduler-like change between steps, in both
            for g, tg in zip(opt.param_groups, topt.param_groups):
                g["lr"] *= 0.5
                tg["lr"] *= 0.5
        set_grads(params, tparams, grads, order)
        opt.step()
        topt.step()
        for p, tp in zip(params, tparams):
            assert_close(p.data, tp.detach().numpy(), rtol=1e-12)
    assert opt.step_count == STEPS
    # the state_dict has torch's layout, names and values
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [g["params"] for g in tsd["param_groups"]]
    for g, tg in zip(sd["param_groups"], tsd["param_groups"]):
        for k in ("lr", "weight_decay", "momentum", "betas", "eps", "alpha", "centered",
                  "amsgrad", "lr_decay", "nesterov", "dampening"):
            if k in tg:
                assert g[k] == (tuple(tg[k]) if k == "betas" else tg[k]), k
    assert set(sd["state"]) == set(tsd["state"])
    for pid, entry in tsd["state"].items():
        for name, value in entry.items():
            if value is None:
                continue
            if name == "step":
                assert sd["state"][pid]["step"] == float(value)
            else:
                assert_close(sd["state"][pid][name], value.numpy(), rtol=1e-12)


@pytest.mark.parametrize("kind,defaults,g0,g1", CASES, ids=IDS)
def test_state_dict_round_trip_continues_the_same(kind, defaults, g0, g1):
    """Steps 1-10 in one optimizer, its state_dict into a fresh one, steps 11-25 there: the
    same bits as 25 steps in one."""
    grads = gradients(mlp(), STEPS, seed=3)

    def run(model, opt, seq):
        for gs in seq:
            for p, g in zip(model.parameters(), gs):
                p.grad[...] = g
            opt.step()

    def make(model):
        w, b = split(model.parameters())
        return getattr(fp, kind)([{"params": w, **g0}, {"params": b, **g1}], **defaults)

    a = mlp()
    oa = make(a)
    run(a, oa, grads)
    b = mlp()
    ob = make(b)
    run(b, ob, grads[:10])
    c = mlp()
    c.load_state_dict(b.state_dict())
    oc = make(c)
    oc.load_state_dict(copy.deepcopy(ob.state_dict()))
    run(c, oc, grads[10:])
    for p, q in zip(a.parameters(), c.parameters()):
        assert p.data.tobytes() == q.data.tobytes()


def test_torch_state_dict_loads_into_fastprop():
    torch = pytest.importorskip("torch")
    model = mlp()
    opt, topt, params, tparams = torch_pair("Adam", dict(lr=0.01), dict(), dict(lr=0.002), model)
    grads = gradients(model, 8)
    order = [next(i for i, q in enumerate(model.parameters()) if q is p) for p in params]
    for gs in grads[:5]:
        set_grads(params, tparams, gs, order)
        topt.step()
    with torch.no_grad():
        for p, tp in zip(params, tparams):
            p.data = tp.numpy()
    sd = topt.state_dict()
    sd = {"state": {k: {n: (v.numpy() if n != "step" else float(v)) for n, v in e.items()}
                    for k, e in sd["state"].items()}, "param_groups": sd["param_groups"]}
    opt.load_state_dict(sd)
    for gs in grads[5:]:
        set_grads(params, tparams, gs, order)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        assert_close(p.data, tp.detach().numpy(), rtol=1e-12)


def test_param_groups_are_one_c_call_per_run():
    model = mlp()
    params = model.parameters()
    opt = fp.AdamW([{"params": params[:4]}, {"params": params[4:], "weight_decay": 0.0}])
    assert [len(s.runs) for s in opt._slots] == [1, 1]  # each group one contiguous run
    w, b = split(params)
    opt = fp.AdamW([{"params": w}, {"params": b}])
    assert [len(s.runs) for s in opt._slots] == [3, 3]
    assert opt.param_groups[1]["weight_decay"] == 1e-2  # the default fills in
    assert len(opt.state_arrays()) == 2 and all(len(a) == 6 for a in opt.state_arrays())


def test_add_param_group():
    torch = pytest.importorskip("torch")
    model = mlp()
    w, b = split(model.parameters())
    opt = fp.SGD(w, lr=0.1, momentum=0.9)
    tw = [torch.tensor(p.data.copy(), requires_grad=True) for p in w]
    tb = [torch.tensor(p.data.copy(), requires_grad=True) for p in b]
    topt = torch.optim.SGD(tw, lr=0.1, momentum=0.9)
    grads = gradients(model, 12)
    for t, gs in enumerate(grads):
        if t == 4:
            opt.add_param_group({"params": b, "lr": 0.01})
            topt.add_param_group({"params": tb, "lr": 0.01})
        ps, tps = (w, tw) if t < 4 else (w + b, tw + tb)
        allp = model.parameters()
        set_grads(ps, tps, gs, [next(i for i, q in enumerate(allp) if q is p) for p in ps])
        opt.step()
        topt.step()
    for p, tp in zip(w + b, tw + tb):
        assert_close(p.data, tp.detach().numpy(), rtol=1e-12)


def test_fused_step_with_groups_and_clip_allocates_nothing():
    model = fp.Sequential(fp.Linear(64, 128, rng=0), fp.ReLU(), fp.Linear(128, 10, rng=1))
    w, b = split(model.parameters())
    for opt in (fp.AdamW([{"params": w}, {"params": b, "weight_decay": 0.0}], amsgrad=True),
                fp.RMSprop([{"params": w, "centered": True}, {"params": b}], momentum=0.9),
                fp.Adagrad(model.parameters())):
        step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), opt, clip_grad_norm=1.0)
        assert step.fused
        rng = np.random.default_rng(0)
        X = rng.standard_normal((128, 64)).astype(F32)
        y = rng.integers(0, 10, 128)
        batches = [(X[i:i + 32], y[i:i + 32]) for i in range(0, 128, 32)]
        for i in range(3):
            step(*batches[i % 4])
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            start, _ = tracemalloc.get_traced_memory()
            for i in range(10):
                step(*batches[i % 4])
            end, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak - start < 512, f"{type(opt).__name__}: a step allocated {peak - start} bytes"
        assert end - start < 512


@pytest.mark.parametrize("dtype", [F32, F64])
def test_float32_matches_float64_run(dtype):
    """The fused kernels in both precisions follow the same trajectory (float32 within its
    rounding)."""
    results = {}
    for dt in (F32, F64):
        model = mlp(dtype=dt)
        opt = fp.RMSprop(model.parameters(), lr=0.01, momentum=0.5, centered=True)
        for gs in gradients(model, 10):
            for p, g in zip(model.parameters(), gs):
                p.grad[...] = g
            opt.step()
        results[dt] = np.concatenate([p.data.ravel() for p in model.parameters()]).astype(F64)
    assert_close(results[dtype], results[F64], rtol=2e-5 if dtype == F32 else 0)


# ---------------------------------------------------------------- bad input, nothing changed
BAD = [
    (lambda ps: fp.RMSprop(ps, lr=-1), "lr"),
    (lambda ps: fp.RMSprop(ps, alpha=1.5), "alpha"),
    (lambda ps: fp.RMSprop(ps, eps=float("nan")), "eps"),
    (lambda ps: fp.Adagrad(ps, lr_decay=-0.1), "lr_decay"),
    (lambda ps: fp.Adagrad(ps, initial_accumulator_value=-1), "initial_accumulator_value"),
    (lambda ps: fp.Adam(ps, betas=(0.9, 1.0)), "beta2"),
    (lambda ps: fp.AdamW(ps, betas=(0.9,)), "betas"),
    (lambda ps: fp.AdamW([{"params": ps[:2], "betas": (1.2, 0.9)}, {"params": ps[2:]}]), "beta1"),
    (lambda ps: fp.SGD([{"params": ps[:3]}, {"params": ps[2:]}], lr=0.1), "more than one"),
    (lambda ps: fp.SGD([{"params": ps[:3], "lr": "x"}], lr=0.1), "lr"),
    (lambda ps: fp.Adam([{"params": ps}, ps[0]]), "dicts"),
    (lambda ps: fp.Adam([{"lr": 0.1}]), "params"),
    (lambda ps: fp.Adam(set(ps)), "ordered"),
    (lambda ps: fp.Adam([{"params": [ps[0], ps[0]]}]), "more than once"),
]


@pytest.mark.parametrize("make,match", BAD, ids=[m for _, m in BAD])
def test_bad_hyperparameters_and_groups(make, match):
    model = mlp()
    snap = snapshot(model)
    with pytest.raises((TypeError, ValueError), match=match):
        make(model.parameters())
    assert_unchanged(model, snap)


def test_add_param_group_errors_change_nothing():
    model = mlp()
    params = model.parameters()
    opt = fp.Adam(params[:4])
    before = opt.state_dict()
    for bad, match in ((lambda: opt.add_param_group({"params": params[3:]}), "more than one"),
                       (lambda: opt.add_param_group({"params": params[4:], "eps": -1}), "eps"),
                       (lambda: opt.add_param_group([params[4]]), "dict")):
        with pytest.raises((TypeError, ValueError), match=match):
            bad()
        assert len(opt.param_groups) == 1
    assert opt.state_dict()["param_groups"] == before["param_groups"]


def test_load_state_dict_mismatch_changes_nothing():
    model = mlp()
    w, b = split(model.parameters())
    opt = fp.Adam([{"params": w}, {"params": b, "lr": 0.1}])
    for gs in gradients(model, 3):
        for p, g in zip(model.parameters(), gs):
            p.grad[...] = g
        opt.step()
    snap = snapshot(model, opt)
    def groups_of(o):
        return [({k: v for k, v in g.items() if k != "params"}, [id(p) for p in g["params"]])
                for g in o.param_groups]
    groups = groups_of(opt)
    good = opt.state_dict()
    bads = []
    one_group = fp.Adam(model.parameters()).state_dict()
    bads.append((one_group, "parameter groups"))
    wrong_shape = copy.deepcopy(good)
    wrong_shape["state"][1]["exp_avg"] = np.zeros(3)
    bads.append((wrong_shape, "shape"))
    bad_beta = copy.deepcopy(good)
    bad_beta["param_groups"][1]["betas"] = (0.9, 2.0)
    bads.append((bad_beta, "beta2"))
    foreign = copy.deepcopy(good)
    foreign["state"][0]["momentum_buffer"] = foreign["state"][0]["exp_avg"]
    for e in foreign["state"].values():
        e.setdefault("momentum_buffer", e["exp_avg"])
    bads.append((foreign, "unknown state"))
    missing = copy.deepcopy(good)
    del missing["state"][0]
    bads.append((missing, "some parameters have state"))
    bads.append(({"state": {}}, "keys"))
    out_of_range = copy.deepcopy(good)
    out_of_range["state"][99] = out_of_range["state"][0]
    bads.append((out_of_range, "99"))
    for sd, match in bads:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(sd)
        assert_unchanged(model, snap, opt)
        assert groups_of(opt) == groups


def test_every_kernel_call_in_optim2_releases_the_gil():
    """_optim2.pxi's C calls (its c_NAME dispatchers) each sit in a `with nogil:` block."""
    import re
    from pathlib import Path
    text = (Path(fp.__file__).parent / "_optim2.pxi").read_text()
    declared = set(re.findall(r"^\s+int\s+(c_\w+)\(", text, re.M))
    assert len(declared) == 6
    lines = text.splitlines()
    called = set()
    for i, line in enumerate(lines):
        for name in declared:
            if not re.search(rf"\b{name}\(", line) or line.lstrip().startswith(("int ", "#")):
                continue
            called.add(name)
            indent, inside = len(line) - len(line.lstrip()), False
            for prev in reversed(lines[:i]):
                stripped, level = prev.strip(), len(prev) - len(prev.lstrip())
                if stripped and level < indent:
                    inside |= stripped == "with nogil:"
                    indent = level
                    if stripped.startswith(("def ", "cdef ")):
                        break
            assert inside, f"line {i + 1} calls {name} holding the GIL: {line.strip()}"
    assert called == declared


# ---------------------------------------------------------------- fastprop.ops vs reference
from fastprop import ops, reference  # noqa: E402

OPS_CASES = [
    ("amsgrad_step", dict(lr=0.01, beta1=0.8, beta2=0.9, weight_decay=0.1), 3),
    ("amsgrad_step", dict(lr=0.01, weight_decay=0.2, decoupled=True), 3),
    ("rmsprop_step", dict(lr=0.01, alpha=0.9, weight_decay=0.1), 1),
    ("rmsprop_step", dict(lr=0.01, momentum=0.9, centered=True), 3),
    ("adagrad_step", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1), 1),
]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("name,kw,n_states", OPS_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(OPS_CASES)])
def test_ops_updates_vs_reference(name, kw, n_states, dtype):
    rng = np.random.default_rng(5)
    kw = dict(kw)
    centered = kw.pop("centered", False)

    def arrays():
        p = rng.standard_normal((4, 7)).astype(dtype)
        states = [np.abs(rng.standard_normal((4, 7))).astype(dtype) * 0.1 for _ in range(3)]
        return p, states

    p, states = arrays()
    states[2][...] = 0  # grad_avg (centered RMSprop) starts at 0, as in torch
    q, qs = p.astype(F64), [s.astype(F64) for s in states]
    for t in range(1, 8):
        g = rng.standard_normal(p.shape).astype(dtype)
        for mod, par, st in ((ops, p, states), (reference, q, qs)):
            gg = g if mod is ops else g.astype(F64)
            if name == "amsgrad_step":
                mod.amsgrad_step(par, gg, st[0], st[1], st[2], step=t, **kw)
            elif name == "rmsprop_step":
                mod.rmsprop_step(par, gg, st[0], grad_avg=st[2] if centered else None,
                                 momentum_buffer=st[1] if kw.get("momentum") else None, **kw)
            else:
                mod.adagrad_step(par, gg, st[0], step=t, **kw)
    assert_close(p, q, rtol=2e-5 if dtype == F32 else 1e-12)
    for s, r in zip(states[:n_states], qs[:n_states]):
        assert_close(s, r, rtol=2e-5 if dtype == F32 else 1e-12)


@pytest.mark.parametrize("call,match", [
    (lambda p, g, s: ops.rmsprop_step(p, g[:, :3], s), "grad has shape"),
    (lambda p, g, s: ops.rmsprop_step(p, g, s, momentum=0.9), "momentum_buffer"),
    (lambda p, g, s: ops.rmsprop_step(p, g, p), "overlaps"),
    (lambda p, g, s: ops.rmsprop_step(p, g, s, alpha=2.0), "alpha"),
    (lambda p, g, s: ops.adagrad_step(p, g, s, step=0), "step"),
    (lambda p, g, s: ops.adagrad_step(p, g, s.astype(F32), step=1), "dtype"),
    (lambda p, g, s: ops.adagrad_step(p, g, s, step=1, lr=-1.0), "lr"),
    (lambda p, g, s: ops.amsgrad_step(p, g, s, s.copy(), None, step=1), "max_exp_avg_sq"),
    (lambda p, g, s: ops.amsgrad_step(p, g, s, s.copy(), s[:2].copy(), step=1), "shape"),
    (lambda p, g, s: ops.amsgrad_step(p, g, s, s.copy(), s.copy(), step=1, beta1=1.0), "beta1"),
], ids=range(10))
def test_ops_updates_bad_input_change_nothing(call, match):
    p = np.random.default_rng(0).standard_normal((3, 4))
    s = np.abs(p) + 1
    g = p[::-1].copy()
    p0, s0 = p.copy(), s.copy()
    with pytest.raises((TypeError, ValueError), match=match):
        call(p, g, s)
    assert p.tobytes() == p0.tobytes() and s.tobytes() == s0.tobytes()
