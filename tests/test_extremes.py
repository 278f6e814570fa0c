"""Numerical extremes: the saturating functions and the losses at ±1e4 and at the float32
limits give finite values and finite gradients equal to float64 references; a training
run that diverges is stopped with a clear message, before the diverged update."""
import numpy as np
import pytest
from conftest import assert_unchanged, snapshot

import fastprop as fp
from fastprop import ops, reference

F32, F64 = np.float32, np.float64
FMAX = float(np.finfo(F32).max)
FTINY = float(np.finfo(F32).tiny)
SUB = float(np.finfo(F32).smallest_subnormal)
# ±1e4, the float32 limits (the largest finite, the smallest normal and subnormal), ±0, ordinary
EXTREMES = np.array([1e4, -1e4, FMAX, -FMAX, FTINY, -FTINY, SUB, -SUB, 0.0, -0.0, 1.0, -3.0, 88.7, -103.9])
ACTS = ["sigmoid", "tanh", "softplus", "gelu", "silu", "relu", "leaky_relu", "abs", "identity", "cos"]


def close(ours, ref, dtype, rel=64, absolute=0.0):
    """Finite, and within rel ulp of the float64 reference (plus absolute, e.g. flushed subnormals)."""
    ours, ref = np.asarray(ours, F64), np.asarray(ref, F64)
    assert np.all(np.isfinite(ours)), ours
    bound = rel * np.finfo(dtype).eps * np.abs(ref) + absolute + 2 * np.finfo(dtype).tiny
    assert np.all(np.abs(ours - ref) <= bound), (ours, ref)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("act", ACTS)
def test_activations_at_the_extremes(act, dtype):
    x = EXTREMES.astype(dtype)
    y = ops.activation_forward(x, act)
    ref = reference.activation_forward(x.astype(F64), act)
    close(y, ref, dtype, absolute=4 * np.finfo(dtype).eps if act == "cos" else 0)
    g = np.ones_like(x)
    dx = ops.activation_backward(g, act, x=x)
    with np.errstate(all="ignore"):
        rdx = reference.activation_backward(g.astype(F64), act, x=x.astype(F64))
    close(dx, rdx, dtype, absolute=4 * np.finfo(dtype).eps)
    if act in ops.FROM_OUTPUT:  # the derivative from the saved output, as the fused step does
        dy = ops.activation_backward(g, act, y=y)
        close(dy, reference.activation_backward(g.astype(F64), act, y=y.astype(F64)), dtype,
              absolute=4 * np.finfo(dtype).eps)


def extreme_logits(dtype):
    """Rows mixing ±1e4, ±FLT_MAX, tiny values and zeros (each row's classes are 6)."""
    rows = [[1e4, -1e4, 0.0, 1.0, -1.0, 2.0], [FMAX, -FMAX, 0.0, FTINY, -SUB, 1e4],
            [-FMAX, -FMAX, -FMAX, -FMAX, -FMAX, -FMAX], [FMAX, FMAX, FMAX, 0.0, -1e4, FMAX],
            [-1e4, -1e4, -1e4, -1e4, -1e4, 1e4], [SUB, -SUB, 0.0, -0.0, FTINY, -FTINY]]
    return np.array(rows, dtype)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("log", [False, True])
def test_softmax_at_the_extremes(dtype, log):
    z = extreme_logits(dtype)
    ours = (ops.log_softmax if log else ops.softmax)(z)
    with np.errstate(all="ignore"):
        ref = (reference.log_softmax if log else reference.softmax)(z.astype(F64))
    if log:  # log-probabilities of −2·FLT_MAX round to −inf in float32: that is their value
        with np.errstate(over="ignore"):
            keep = np.isfinite(ref.astype(dtype))
        assert np.all(np.isneginf(ours[~keep])) and np.all(np.isfinite(ours[keep]))
        close(ours[keep], ref[keep], dtype)
    else:
        close(ours, ref, dtype)
        assert np.allclose(ours.sum(1), 1)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("soft", [False, True])
def test_softmax_cross_entropy_at_the_extremes(dtype, soft):
    z = extreme_logits(dtype)
    if soft:
        t = np.array([[0.5, 0, 0, 0.5, 0, 0], [0, 0, 0.25, 0, 0, 0.75], [1, 0, 0, 0, 0, 0],
                      [0, 0, 0, 1, 0, 0], [0.5, 0, 0, 0, 0, 0.5], [0, 0, 0, 0, 0, 1]], dtype)
    else:
        t = np.array([1, 1, 3, 4, 0, 2])
    loss, g = ops.softmax_cross_entropy(z, t)
    rloss, rg = reference.softmax_cross_entropy(z.astype(F64), t.astype(F64) if soft else t)
    # the loss is a float (double): −log p of a logit 2·FLT_MAX below the largest is finite
    assert np.isfinite(loss) and abs(loss - rloss) <= 1e-6 * abs(rloss)
    close(g, rg, dtype)
    xent = fp.SoftmaxCrossEntropy()
    assert xent(z, t) == loss and np.array_equal(xent.backward(), g)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_sigmoid_bce_at_the_extremes(dtype):
    z = np.tile(EXTREMES, (3, 1)).astype(dtype)
    t = np.array([[0.0], [1.0], [0.3]]) * np.ones_like(z)
    loss, g = ops.sigmoid_bce(z, t)
    rloss, rg = reference.sigmoid_bce(z.astype(F64), t)
    assert np.isfinite(loss) and abs(loss - rloss) <= 1e-6 * abs(rloss)
    close(g, rg, dtype, absolute=4 * np.finfo(dtype).eps / z.size)


def test_a_network_at_the_extremes_trains_on_finite_values():
    """Logits of ±1e4 through the fused step: a finite loss, finite gradients, finite update."""
    model = fp.Sequential(fp.Linear(2, 3, rng=0, bias=False))
    model[0].weight.data = np.array([[1e4, 0], [-1e4, 0], [0, 1e4]], F32)
    step = fp.TrainStep(model, fp.SoftmaxCrossEntropy(), fp.SGD(model.parameters(), lr=1e-3))
    J = step(np.array([[1, 0], [0, -1], [-1, 1]], F32), np.array([1, 2, 0]))
    assert np.isfinite(J) and J > 1e3
    assert all(np.all(np.isfinite(p.data)) and np.all(np.isfinite(p.grad)) for p in model.parameters())


# ---------------------------------------------------------------- divergence

def diverging(stop=True, fused=True):
    """MSE with a huge learning rate: the loss overflows within a few steps."""
    rng = np.random.default_rng(0)
    layers = [fp.Linear(8, 16, rng=0), fp.ReLU() if fused else fp.PReLU(16), fp.Linear(16, 4, rng=1)]
    model = fp.Sequential(*layers)
    opt = fp.SGD(model.parameters(), lr=1e6, momentum=0.9)
    step = fp.TrainStep(model, fp.MSE(), opt, stop_on_nonfinite=stop)
    assert step.fused is fused
    return model, opt, step, rng.standard_normal((32, 8)).astype(F32), rng.standard_normal((32, 4)).astype(F32)


@pytest.mark.parametrize("fused", [True, False])
def test_trainstep_stops_before_the_diverged_update(fused):
    model, opt, step, x, y = diverging(fused=fused)
    for n in range(1, 50):
        snap = snapshot(model, opt)
        try:
            step(x, y)
        except FloatingPointError as e:
            assert "diverged" in str(e) and "lower learning rate" in str(e)
            break
    else:
        pytest.fail("the training never diverged")
    assert n > 1
    # the model holds the last finite step: the update of the diverged one was not applied
    params, state, count = snap
    assert opt.step_count == count
    assert all(p.data.tobytes() == d.tobytes() for p, (d, _) in zip(model.parameters(), params))
    assert all(np.all(np.isfinite(p.data)) for p in model.parameters())
    if not fused:  # the modular path had not even zeroed the gradients yet
        assert_unchanged(model, snap, opt)


def test_trainstep_can_be_told_to_go_on():
    model, opt, step, x, y = diverging(stop=False)
    losses = [step(x, y) for _ in range(20)]
    assert not np.isfinite(losses[-1])
    assert opt.step_count == 20


def test_fit_reports_divergence_and_keeps_the_last_finite_model():
    model, opt, _, x, y = diverging()
    with pytest.raises(FloatingPointError, match=r"epoch \d+, samples \d+:\d+: the loss became (nan|inf)"):
        fp.fit(model, x, y, loss=fp.MSE(), optimizer=opt, epochs=50, batch_size=8, progress=False)
    assert all(np.all(np.isfinite(p.data)) for p in model.parameters())
    h = fp.fit(model, x, y, loss=fp.MSE(), optimizer=opt, epochs=3, batch_size=8, progress=False,
               stop_on_nonfinite=False)
    assert len(h.loss) == 3 and not np.isfinite(h.loss[-1])
