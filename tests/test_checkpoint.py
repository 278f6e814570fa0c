"""fit's callbacks and schedulers, EarlyStopping, ModelCheckpoint, save_checkpoint /
load_checkpoint, and fit(checkpoint=, resume=): a fit killed with SIGKILL in the middle of
an epoch and resumed ends with bitwise the parameters of an uninterrupted fit."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import assert_unchanged, snapshot

import fastprop as fp
from fastprop import lr_scheduler as fls

F64 = np.float64


def data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64) + (X[:, 3] > 1)
    return X, y


def build(dtype=F64, seed=0, act=fp.Tanh):
    return fp.Sequential(fp.Linear(5, 12, dtype=dtype, rng=seed), act(),
                         fp.Linear(12, 3, dtype=dtype, rng=seed + 1))


def flat(model):
    return np.concatenate([p.data.ravel() for p in model.parameters()])


class Recorder:
    def __init__(self, stop_at=None):
        self.calls, self.stop_at = [], stop_at

    def set_model(self, model):
        self.calls.append(("set_model", model))

    def on_train_begin(self, logs):
        self.calls.append(("begin", dict(logs)))

    def on_epoch_end(self, epoch, logs):
        self.calls.append(("epoch", epoch, dict(logs)))
        return epoch == self.stop_at

    def on_train_end(self, logs):
        self.calls.append(("end", dict(logs)))


def test_callback_protocol_and_history_lr():
    X, y = data()
    model = build()
    opt = fp.SGD(model.parameters(), lr=0.2, momentum=0.5)
    sched = fls.StepLR(opt, step_size=2, gamma=0.5)
    rec = Recorder(stop_at=4)
    h = fp.fit(model, X, y, fp.SoftmaxCrossEntropy(), opt, epochs=10, batch_size=16,
               validation_data=data(30, 1), progress=False, callbacks=[rec], scheduler=sched)
    kinds = [c[0] for c in rec.calls]
    assert kinds == ["set_model", "begin", "epoch", "epoch", "epoch", "epoch", "end"]
    assert rec.calls[0][1] is model
    assert h.epoch == [1, 2, 3, 4]
    assert h["lr"] == [0.2, 0.2, 0.1, 0.1]
    logs = rec.calls[2][2]
    assert set(logs) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert logs["val_loss"] == h["val_loss"][0]
    assert opt.lr == 0.05


def test_scheduler_per_step_is_stepped_once_per_batch():
    torch = pytest.importorskip("torch")
    X, y = data()
    model = build()
    opt = fp.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = fls.OneCycleLR(opt, max_lr=0.5, epochs=3, steps_per_epoch=6)
    h = fp.fit(model, X, y, fp.SoftmaxCrossEntropy(), opt, epochs=3, batch_size=16,
               progress=False, scheduler=sched, scheduler_interval="step")
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    ts = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=0.5, epochs=3, steps_per_epoch=6)
    lrs = []
    for _ in range(18):
        lrs.append(ts.get_last_lr()[0])
        topt.step()
        ts.step()
    assert h["lr"] == [lrs[0], lrs[6], lrs[12]]
    assert sched.get_last_lr() == ts.get_last_lr()


def test_reduce_lr_on_plateau_gets_the_monitored_value():
    X, y = data()
    model = build()
    opt = fp.SGD(model.parameters(), lr=1e-30)  # nothing moves: the loss never improves
    sched = fls.ReduceLROnPlateau(opt, patience=1, factor=0.5, eps=0.0)
    h = fp.fit(model, X, y, fp.SoftmaxCrossEntropy(), opt, epochs=5, batch_size=32,
               validation_data=data(20, 2), progress=False, scheduler=sched)
    assert sched.best == h["val_loss"][0]
    assert h["lr"] == [1e-30, 1e-30, 1e-30, 0.5e-30, 0.5e-30]


def test_early_stopping_restores_the_best_weights():
    X, y = data()
    Xv, yv = data(40, 3)
    model = build()
    opt = fp.Adam(model.parameters(), lr=0.3)  # a high lr: the validation loss goes up
    snaps = []

    class Snap:
        def on_epoch_end(self, epoch, logs):
            snaps.append(flat(model).copy())

    es = fp.EarlyStopping(monitor="val_loss", patience=3)
    h = fp.fit(model, X, y, fp.SoftmaxCrossEntropy(), opt, epochs=60, batch_size=8,
               validation_data=(Xv, yv), progress=False, callbacks=[Snap(), es])
    best = int(np.argmin(h["val_loss"]))
    assert len(h.epoch) < 60 and es.stopped_epoch == len(h.epoch)
    assert len(h.epoch) - 1 - best == 3
    assert es.best == h["val_loss"][best] and es.best_epoch == best + 1
    assert np.array_equal(flat(model), snaps[best])


def test_early_stopping_max_mode_and_min_delta():
    es = fp.EarlyStopping(monitor="val_accuracy", patience=2, mode="max", min_delta=0.05)
    es.set_model(build())
    es.on_train_begin({})
    stops = [es.on_epoch_end(e, {"val_accuracy": a}) for e, a in
             enumerate([0.5, 0.54, 0.6, 0.62, 0.64], 1)]
    assert stops == [False, False, False, False, True]
    assert es.best == 0.6


def test_model_checkpoint(tmp_path):
    X, y = data()
    Xv, yv = data(30, 4)
    model = build()
    opt = fp.Adam(model.parameters(), lr=0.3)
    every = fp.ModelCheckpoint(str(tmp_path / "m-{epoch:02d}.npz"), monitor="loss")
    best = fp.ModelCheckpoint(tmp_path / "best.npz", save_best_only=True)
    h = fp.fit(model, X, y, fp.SoftmaxCrossEntropy(), opt, epochs=6, batch_size=8,
               validation_data=(Xv, yv), progress=False, callbacks=[every, best])
    assert sorted(os.listdir(tmp_path)) == ["best.npz"] + [f"m-{e:02d}.npz" for e in range(1, 7)]
    assert np.array_equal(flat(fp.load(tmp_path / "m-06.npz")), flat(model))
    b = int(np.argmin(h["val_loss"]))
    assert np.array_equal(flat(fp.load(tmp_path / f"m-{b + 1:02d}.npz")),
                          flat(fp.load(tmp_path / "best.npz")))


def test_fit_bad_callbacks_and_scheduler_change_nothing():
    X, y = data()
    model = build()
    opt = fp.SGD(model.parameters(), lr=0.1, momentum=0.9)
    other = fp.SGD(build().parameters(), lr=0.1)
    snap = snapshot(model, opt)
    loss = fp.SoftmaxCrossEntropy()
    cases = [
        (dict(callbacks=[fp.EarlyStopping()]), ValueError, "val_loss.*validation_data"),
        (dict(callbacks=[fp.EarlyStopping(monitor="val_los")], validation_data=data(10)),
         ValueError, "val_los"),
        (dict(callbacks=[fp.ModelCheckpoint("x.npz", monitor="acc")]), ValueError, "acc"),
        (dict(scheduler=fls.StepLR(other, 2)), ValueError, "another optimizer"),
        (dict(scheduler=fls.StepLR(opt, 2), scheduler_interval="batch"), ValueError,
         "scheduler_interval"),
        (dict(scheduler=fls.ReduceLROnPlateau(opt), scheduler_interval="step"), ValueError,
         "ReduceLROnPlateau"),
        (dict(scheduler=object()), TypeError, "scheduler"),
    ]
    lr = opt.lr
    for kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            fp.fit(model, X, y, loss, opt, epochs=2, progress=False, **kw)
        assert_unchanged(model, snap, opt)
    opt.lr = lr
    with pytest.raises(ValueError, match="monitor|mode"):
        fp.EarlyStopping(mode="median")
    with pytest.raises(ValueError, match="patience"):
        fp.EarlyStopping(patience=-1)


# ---------------------------------------------------------------- checkpoints
def trained(steps=5, seed=0):
    X, y = data()
    model = build(seed=seed)
    opt = fp.AdamW([{"params": model.parameters()[0::2]},
                    {"params": model.parameters()[1::2], "weight_decay": 0.0}], lr=0.01)
    sched = fls.SequentialLR(opt, [fls.LinearLR(opt, 0.1, total_iters=3),
                                   fls.CosineAnnealingLR(opt, T_max=20)], milestones=[3])
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), opt)
    for i in range(steps):
        step(X[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16])
        sched.step()
    return model, opt, sched, step, X, y


def test_save_and_load_checkpoint_continue_bitwise(tmp_path):
    path = tmp_path / "ck.npz"
    a, oa, sa, step_a, X, y = trained()
    fp.save_checkpoint(path, a, oa, sa, epoch=3, note="hi", arr=np.arange(3.0))
    b, ob, sb, step_b, _, _ = trained(steps=0, seed=7)
    extra = fp.load_checkpoint(path, b, ob, sb)
    assert extra["epoch"] == 3 and extra["note"] == "hi"
    assert np.array_equal(extra["arr"], np.arange(3.0))
    assert ob.step_count == oa.step_count and sb.get_last_lr() == sa.get_last_lr()
    for _ in range(3):
        step_a(X[:16], y[:16])
        sa.step()
        step_b(X[:16], y[:16])
        sb.step()
    assert flat(a).tobytes() == flat(b).tobytes()
    assert [g["lr"] for g in oa.param_groups] == [g["lr"] for g in ob.param_groups]


class Counter:
    """A module-like RNG holder: the checkpoint stores whatever rng_state() returns."""

    def __init__(self):
        self.state = {"n": 0}

    def rng_state(self):
        return dict(self.state)

    def set_rng_state(self, s):
        self.state = dict(s)


def test_checkpoint_stores_module_rng_states(tmp_path, monkeypatch):
    from fastprop import checkpoint
    a, oa, sa, _, _, _ = trained(steps=1)
    holders = [Counter()]
    holders[0].state["n"] = 17
    monkeypatch.setattr(checkpoint, "_rng_modules", lambda model: holders)
    fp.save_checkpoint(tmp_path / "c.npz", a, oa)
    holders[0].state["n"] = 0
    fp.load_checkpoint(tmp_path / "c.npz", a, oa)
    assert holders[0].state == {"n": 17}


def test_load_checkpoint_mismatches_change_nothing(tmp_path):
    path = tmp_path / "ck.npz"
    a, oa, sa, _, _, _ = trained()
    fp.save_checkpoint(path, a, oa, sa)
    wide = fp.Sequential(fp.Linear(5, 13, dtype=F64), fp.Tanh(), fp.Linear(13, 3, dtype=F64))
    relu = build(act=fp.ReLU)
    cases = []
    for model, match in ((wide, "another architecture"), (relu, "another architecture")):
        cases.append((model, fp.AdamW(model.parameters()), None, match))
    m = build()
    cases.append((m, fp.Adam(m.parameters()), None, "AdamW"))
    m = build()
    o = fp.AdamW(m.parameters())  # one group, the checkpoint has two
    cases.append((m, o, None, "parameter groups"))
    m = build()
    o = fp.AdamW([{"params": m.parameters()[0::2]}, {"params": m.parameters()[1::2]}])
    cases.append((m, o, fls.StepLR(o, 3), "StepLR"))
    cases.append((m, o, fls.StepLR(fp.SGD(build().parameters(), lr=0.1), 3), "another optimizer"))
    for model, opt, sched, match in cases:
        snap = snapshot(model, opt)
        groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        with pytest.raises(ValueError, match=match):
            fp.load_checkpoint(path, model, opt, sched)
        assert_unchanged(model, snap, opt)
        assert groups == [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        fp.load_checkpoint(tmp_path / "junk.npz", a, oa)
    with pytest.raises(FileNotFoundError):
        fp.load_checkpoint(tmp_path / "none.npz", a, oa)
    with pytest.raises(TypeError, match="cannot store"):
        fp.save_checkpoint(tmp_path / "x.npz", a, oa, bad=object())
    assert not (tmp_path / "x.npz").exists()


SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import fastprop as fp
    from fastprop import lr_scheduler as fls

    mode, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 5))
    y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)
    model = fp.Sequential(fp.Linear(5, 16, rng=0), fp.ReLU(), fp.Linear(16, 2, rng=1))
    opt = fp.AdamW([{"params": model.parameters()[0::2]},
                    {"params": model.parameters()[1::2], "weight_decay": 0.0}], lr=0.01,
                   amsgrad=True)
    calls = [0]

    def lam(step):  # the kill: SIGKILL in the middle of epoch 3 (batch 16 of 7 per epoch)
        calls[0] += 1
        if mode == "kill" and calls[0] == 17:
            os.kill(os.getpid(), signal.SIGKILL)
        return 1.0 / (1.0 + 0.05 * step)

    sched = fls.LambdaLR(opt, lam)
    es = fp.EarlyStopping(monitor="loss", patience=50)
    kw = dict(epochs=5, batch_size=16, shuffle=True, seed=3, progress=False, callbacks=[es],
              scheduler=sched, scheduler_interval="step", validation_data=(X[:20], y[:20]))
    if mode == "resume":
        kw["resume"] = path
    if mode != "plain":
        kw["checkpoint"] = path
    h = fp.fit(model, X, y, fp.SoftmaxCrossEntropy(), opt, **kw)
    np.save(out, np.concatenate([p.data.ravel() for p in model.parameters()]))
    print(h.epoch, h["lr"])
""")


def test_fit_killed_mid_epoch_and_resumed_is_bitwise_the_uninterrupted_fit(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    ck = str(tmp_path / "ck.npz")

    def run(mode, out):
        return subprocess.run([sys.executable, str(script), mode, ck, str(tmp_path / out)],
                              capture_output=True, text=True, timeout=120)

    plain = run("plain", "plain.npy")
    assert plain.returncode == 0, plain.stderr
    killed = run("kill", "never.npy")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert os.path.exists(ck) and not os.path.exists(tmp_path / "never.npy")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    resumed = run("resume", "resumed.npy")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == plain.stdout  # the whole history: epochs and lrs
    a, b = np.load(tmp_path / "plain.npy"), np.load(tmp_path / "resumed.npy")
    assert a.tobytes() == b.tobytes()


def test_resume_errors_change_nothing(tmp_path):
    a, oa, sa, _, X, y = trained()
    fp.save_checkpoint(tmp_path / "c.npz", a, oa)
    fp.fit(a, X, y, fp.SoftmaxCrossEntropy(), oa, epochs=1, progress=False,
           checkpoint=tmp_path / "f.npz", callbacks=[fp.EarlyStopping(monitor="loss")])
    b, ob, _, _, _, _ = trained(steps=2, seed=5)
    snap = snapshot(b, ob)
    with pytest.raises(ValueError, match="not by fit"):
        fp.fit(b, X, y, fp.SoftmaxCrossEntropy(), ob, epochs=2, progress=False,
               resume=tmp_path / "c.npz")
    assert_unchanged(b, snap, ob)
    with pytest.raises(ValueError, match="1 callbacks, fit got 0"):
        fp.fit(b, X, y, fp.SoftmaxCrossEntropy(), ob, epochs=2, progress=False,
               resume=tmp_path / "f.npz")
    assert_unchanged(b, snap, ob)
