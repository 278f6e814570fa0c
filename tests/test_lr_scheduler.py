"""fastprop.lr_scheduler against torch.optim.lr_scheduler: the same lr sequence (and, for
OneCycleLR, momentum/beta1) over 30 steps, with two parameter groups; state_dict round
trips; bad input."""
import copy
import math

import numpy as np
import pytest

import fastprop as fp
from fastprop import lr_scheduler as fls

STEPS = 30


def make_pair(opt_kind="SGD", **kw):
    torch = pytest.importorskip("torch")
    model = fp.Sequential(fp.Linear(3, 4, rng=0), fp.ReLU(), fp.Linear(4, 2, rng=1))
    w, b = model.parameters()[0::2], model.parameters()[1::2]
    tw = [torch.zeros(p.shape, requires_grad=True) for p in w]
    tb = [torch.zeros(p.shape, requires_grad=True) for p in b]
    kw = dict(lr=0.1, momentum=0.9) if opt_kind == "SGD" else dict(lr=0.01)
    opt = getattr(fp, opt_kind)([{"params": w}, {"params": b, "lr": kw["lr"] * 3}], **kw)
    topt = getattr(torch.optim, opt_kind)([{"params": tw}, {"params": tb, "lr": kw["lr"] * 3}],
                                          **kw)
    return opt, topt, torch


def lam(epoch):
    return 0.95 ** epoch + 0.01 * (epoch % 3)


SCHEDULES = {
    "LambdaLR": lambda m, o: m.LambdaLR(o, lam),
    "LambdaLR-list": lambda m, o: m.LambdaLR(o, [lam, lambda e: 1.0 / (1 + e)]),
    "StepLR": lambda m, o: m.StepLR(o, step_size=4, gamma=0.5),
    "MultiStepLR": lambda m, o: m.MultiStepLR(o, milestones=[3, 7, 7, 20], gamma=0.3),
    "ExponentialLR": lambda m, o: m.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, T_max=7, eta_min=0.001),
    "LinearLR": lambda m, o: m.LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=12),
    "OneCycleLR": lambda m, o: m.OneCycleLR(o, max_lr=[0.5, 0.2], total_steps=STEPS + 1),
    "OneCycleLR-3-linear": lambda m, o: m.OneCycleLR(o, max_lr=0.4, epochs=4, steps_per_epoch=8,
                                                     three_phase=True, anneal_strategy="linear"),
    "SequentialLR": lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, start_factor=0.2, total_iters=5),
            m.CosineAnnealingLR(o, T_max=10), m.ExponentialLR(o, 0.8)], milestones=[5, 15]),
}


@pytest.mark.parametrize("opt_kind", ["SGD", "Adam"])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_lr_sequence_vs_torch(name, opt_kind):
    opt, topt, torch = make_pair(opt_kind)
    s = SCHEDULES[name](fls, opt)
    ts = SCHEDULES[name](torch.optim.lr_scheduler, topt)
    seq, tseq = [s.get_last_lr()], [ts.get_last_lr()]
    for _ in range(STEPS):
        topt.step()
        opt.step()
        s.step()
        ts.step()
        seq.append(s.get_last_lr())
        tseq.append(ts.get_last_lr())
        assert [g["lr"] for g in opt.param_groups] == seq[-1]
        if name.startswith("OneCycle"):
            key = "betas" if opt_kind == "Adam" else "momentum"
            for g, tg in zip(opt.param_groups, topt.param_groups):
                assert np.allclose(g[key], tg[key], rtol=1e-13, atol=0)
        assert s.last_epoch == ts.last_epoch
    np.testing.assert_allclose(np.array(seq), np.array(tseq), rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_state_dict_resumes_the_sequence(name):
    """10 steps, state_dict into a new scheduler over a new optimizer (loaded too), 20 more:
    the same lrs as 30 steps in one (the checkpoint path)."""
    pytest.importorskip("torch")

    def fresh():
        opt, _, _ = make_pair()
        return opt, SCHEDULES[name](fls, opt)

    opt, s = fresh()
    full = []
    for _ in range(STEPS):
        opt.step()
        s.step()
        full.append(s.get_last_lr())
    opt, s = fresh()
    for _ in range(10):
        opt.step()
        s.step()
    sd, osd = copy.deepcopy(s.state_dict()), copy.deepcopy(opt.state_dict())
    opt2, s2 = fresh()
    opt2.load_state_dict(osd)
    s2.load_state_dict(sd)
    rest = []
    for _ in range(20):
        opt2.step()
        s2.step()
        rest.append(s2.get_last_lr())
    assert rest == full[10:]


def test_reduce_lr_on_plateau_vs_torch():
    opt, topt, torch = make_pair()
    kw = dict(mode="min", factor=0.5, patience=2, threshold=0.01, cooldown=1, min_lr=[0.01, 0.05])
    s = fls.ReduceLROnPlateau(opt, **kw)
    ts = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kw)
    metrics = [1.0, 0.9, 0.9, 0.95, 0.91, 0.92, 0.5, 0.6, 0.6, 0.6, 0.7, 0.49, 0.5, 0.5, 0.5,
               0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    for m in metrics:
        s.step(m)
        ts.step(m)
        assert s.get_last_lr() == ts.get_last_lr()
        assert s.num_bad_epochs == ts.num_bad_epochs and s.best == ts.best
    assert s.get_last_lr() != [0.1, 0.3]
    s2 = fls.ReduceLROnPlateau(opt, mode="max", threshold_mode="abs")
    s2.load_state_dict(copy.deepcopy(s.state_dict()))
    assert s2.mode == "min" and s2.best == s.best


def test_scheduler_bad_input():
    opt, _, _ = make_pair()
    other, _, _ = make_pair()
    before = [g["lr"] for g in opt.param_groups]
    with pytest.raises(TypeError, match="optimizer"):
        fls.StepLR(object(), 3)
    with pytest.raises(ValueError, match="step_size"):
        fls.StepLR(opt, 0)
    with pytest.raises(ValueError, match="lr_lambdas"):
        fls.LambdaLR(opt, [lam])
    with pytest.raises(ValueError, match="another optimizer|same optimizer"):
        fls.SequentialLR(opt, [fls.StepLR(other, 2), fls.StepLR(other, 3)], milestones=[4])
    with pytest.raises(ValueError, match="Factor"):
        fls.ReduceLROnPlateau(opt, factor=1.5)
    with pytest.raises(ValueError, match="mode"):
        fls.ReduceLROnPlateau(opt, mode="up")
    with pytest.raises(ValueError, match="total_steps"):
        fls.OneCycleLR(opt, max_lr=1.0)
    assert [g["lr"] for g in opt.param_groups] == before
    s = fls.StepLR(opt, 3)
    with pytest.raises(ValueError, match="unknown keys"):
        s.load_state_dict({"T_max": 3})


def test_cosine_warmup_recipe_values():
    """LinearLR warm-up then cosine: the documented recipe's values in closed form."""
    model = fp.Sequential(fp.Linear(2, 2, rng=0))
    opt = fp.AdamW(model.parameters(), lr=1.0)
    s = fls.SequentialLR(opt, [fls.LinearLR(opt, start_factor=0.25, total_iters=3),
                               fls.CosineAnnealingLR(opt, T_max=4)], milestones=[3])
    lrs = [s.get_last_lr()[0]]
    for _ in range(7):
        opt.step()
        s.step()
        lrs.append(s.get_last_lr()[0])
    expected = [0.25, 0.5, 0.75] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12, atol=1e-15)
