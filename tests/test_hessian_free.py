"""HessianFree and its Closure: truncated CG on Gauss–Newton products, through fit."""
import numpy as np
import pytest
from conftest import assert_close

import fastprop as fp


def regression(n=256, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, (n, 2))
    y = np.sin(2 * X[:, :1]) * np.cos(X[:, 1:]) + 0.5 * X[:, :1] ** 2
    return X, y


def tanh_net(seed=1):
    return fp.Sequential(fp.Linear(2, 32, dtype=np.float64, rng=seed), fp.Tanh(),
                         fp.Linear(32, 32, dtype=np.float64, rng=seed + 1), fp.Tanh(),
                         fp.Linear(32, 1, dtype=np.float64, rng=seed + 2))


def final_loss(model, X, y):
    return fp.evaluate(model, X, y, fp.MSE())["loss"]


def best_sgd_loss(X, y, epochs, batch_size):
    """SGD with momentum 0.9 at the best of a few learning rates (the ones that do not diverge)."""
    losses = []
    for lr in (0.01, 0.03, 0.1, 0.3):
        model = tanh_net()
        try:
            fp.fit(model, X, y, loss=fp.MSE(), optimizer=fp.SGD(model.parameters(), lr, momentum=0.9),
                   epochs=epochs, batch_size=batch_size, progress=False)
        except FloatingPointError:
            continue
        losses.append(final_loss(model, X, y))
    return min(losses)


def test_hessian_free_beats_sgd_in_the_same_number_of_passes():
    X, y = regression()
    epochs = 20
    model = tanh_net()
    opt = fp.HessianFree(model.parameters())
    passes = []
    step = opt.step

    def counting(closure):   # every gradient, Gauss–Newton product and loss evaluation
        J = step(closure)
        passes.append(closure.n_grad + closure.n_products + closure.n_loss)
        return J

    opt.step = counting
    history = fp.fit(model, X, y, loss=fp.MSE(), optimizer=opt, epochs=epochs, batch_size=256,
                     progress=False)
    hf = final_loss(model, X, y)
    assert history["loss"][-1] < history["loss"][0] / 100
    # the same epochs, full batch or minibatches of 32 (8 times the steps)
    assert hf < best_sgd_loss(X, y, epochs, 256) / 10
    assert hf < best_sgd_loss(X, y, epochs, 32) / 10
    # and full-batch SGD given as many passes as HF made in all (one pass per gradient,
    # Gauss–Newton product or loss evaluation)
    assert hf < best_sgd_loss(X, y, sum(passes), 256) / 2


def test_closure_evaluates_the_loss_gradient_and_products(rng):
    X, y = regression(40)
    model = tanh_net()
    closure = fp.Closure(model, fp.MSE(), X, y)
    for p in model.parameters():
        p.grad[...] = 7.0
    J = closure()
    loss = fp.MSE()
    assert J == pytest.approx(loss(model.forward(X), y), rel=1e-14)
    grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model.backward(loss.backward())
    for g, p in zip(grads, model.parameters()):
        assert_close(g, p.grad, np.float64)   # overwritten, not added to the 7s
    assert closure(backward=False) == J
    for g, p in zip(grads, model.parameters()):
        assert np.array_equal(g, p.grad)   # the loss alone leaves the gradient
    v = rng.standard_normal(model.num_parameters())
    assert_close(closure.gnvp(v), fp.gnvp(model, fp.MSE(), X, y, v), np.float64)
    assert_close(closure.hvp(v), fp.hvp(model, fp.MSE(), X, y, v), np.float64)
    assert (closure.n_grad, closure.n_loss, closure.n_products) == (1, 1, 2)
    assert closure.output.shape == (40, 1)


def test_a_step_that_cannot_lower_the_loss_is_undone():
    X, y = regression(64)
    model = tanh_net()
    before = fp.parameters_to_vector(model)
    opt = fp.HessianFree(model.parameters(), lr=1e7, max_backtracks=2, damping=1e-6)
    step = fp.TrainStep(model, fp.MSE(), opt)
    J0 = step(X, y)
    assert opt.last["alpha"] == 0.0
    assert np.array_equal(fp.parameters_to_vector(model), before)
    assert opt.damping == pytest.approx(1.5e-6)
    assert J0 == pytest.approx(final_loss(model, X, y), rel=1e-12)


def test_a_step_lowers_the_loss_and_adapts_the_damping():
    X, y = regression(64)
    model = tanh_net()
    opt = fp.HessianFree(model.parameters(), damping=10.0, max_cg_iter=5)
    step = fp.TrainStep(model, fp.MSE(), opt)
    assert not step.fused
    J0 = step(X, y)
    assert final_loss(model, X, y) < J0
    assert 1 <= opt.last["cg_iters"] <= 5
    assert opt.last["rho"] > 0.75 and opt.damping == pytest.approx(10.0 * 2 / 3)


def test_hessian_free_refuses_a_plain_closure():
    model = tanh_net()
    opt = fp.HessianFree(model.parameters())
    with pytest.raises(TypeError, match="Closure"):
        opt.step(lambda: 0.0)
    other = tanh_net(seed=5)
    X, y = regression(8)
    with pytest.raises(ValueError, match="all of the closure's model's parameters"):
        opt.step(fp.Closure(other, fp.MSE(), X, y))
    with pytest.raises(ValueError, match="max_cg_iter"):
        fp.HessianFree(model.parameters(), max_cg_iter=0)


def test_fit_with_hessian_free_reports_accuracy_from_the_step_output():
    X, y = fp.datasets.xor()
    X = np.repeat(X, 8, axis=0).astype(np.float64)
    y = np.repeat(y, 8, axis=0)
    model = fp.Sequential(fp.Linear(2, 8, dtype=np.float64, rng=0), fp.Tanh(),
                          fp.Linear(8, 2, dtype=np.float64, rng=1))
    history = fp.fit(model, X, y, loss=fp.SoftmaxCrossEntropy(),
                     optimizer=fp.HessianFree(model.parameters()), epochs=10, batch_size=32,
                     progress=False)
    assert history["accuracy"][-1] == 1.0
    assert history["loss"][-1] < 0.05
