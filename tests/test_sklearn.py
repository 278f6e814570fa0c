"""fastprop.sklearn: scikit-learn's model (coefs_ and loss_curve_ compared with scikit-learn's own
MLPs trained with the same parameters), its API, its errors, and the extras."""
import io
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn", minversion="1.7")  # its MLP hooks as of 1.7
from sklearn import neural_network as sk  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import (load_digits, make_classification,  # noqa: E402
                              make_multilabel_classification, make_regression)
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import fastprop as fp  # noqa: E402
from fastprop import sklearn as fs  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:600] / 16, y[:600]


@pytest.fixture(scope="module")
def multilabel():
    return make_multilabel_classification(240, 10, n_classes=4, random_state=0)


@pytest.fixture(scope="module")
def regression():
    X, y = make_regression(240, 8, n_targets=3, noise=0.1, random_state=0)
    return X, y / 100


def both(cls, X, y, **kw):
    kw.setdefault("random_state", 0)
    a = getattr(sk, cls)(**kw).fit(X, y)
    b = getattr(fs, cls)(**kw).fit(X, y)
    return a, b


def assert_same_model(a, b):
    assert b.n_iter_ == a.n_iter_ and b.t_ == a.t_
    assert len(b.coefs_) == len(a.coefs_)
    for ca, cb in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        assert cb.shape == ca.shape and cb.dtype == ca.dtype
        np.testing.assert_allclose(cb, ca, rtol=1e-6, atol=1e-6 * np.abs(ca).max())
    if getattr(a, "loss_curve_", None) is not None:
        np.testing.assert_allclose(b.loss_curve_, a.loss_curve_, rtol=0, atol=1e-8)
    else:
        assert b.loss_ == pytest.approx(a.loss_, abs=1e-8)
    for name in ("best_loss_", "best_validation_score_", "validation_scores_", "n_layers_",
                 "n_outputs_", "out_activation_", "n_features_in_"):
        va, vb = getattr(a, name, None), getattr(b, name, None)
        if isinstance(va, (float, list)):
            assert vb == pytest.approx(va, abs=1e-8), name
        else:
            assert vb == va, name


SOLVER_CASES = [
    dict(solver="adam"),
    dict(solver="adam", shuffle=False),
    dict(solver="sgd"),
    dict(solver="sgd", shuffle=False, nesterovs_momentum=False),
    dict(solver="sgd", momentum=0.0),
    dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.2),
    dict(solver="sgd", learning_rate="adaptive", tol=1e-2, n_iter_no_change=2),
    dict(solver="adam", early_stopping=True),
    dict(solver="sgd", early_stopping=True, shuffle=False, batch_size=50),
]


@pytest.mark.parametrize("kw", SOLVER_CASES,
                         ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_same_model_multiclass(digits, kw):
    X, y = digits
    a, b = both("MLPClassifier", X, y, hidden_layer_sizes=(20,), max_iter=12, **kw)
    assert_same_model(a, b)
    np.testing.assert_allclose(b.predict_proba(X), a.predict_proba(X), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
def test_same_model_binary_activations(digits, activation):
    X, y = digits
    a, b = both("MLPClassifier", X, y > 4, hidden_layer_sizes=(12, 7), activation=activation,
                max_iter=6, alpha=1e-2)
    assert_same_model(a, b)
    assert b.out_activation_ == "logistic"


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_same_model_multilabel(multilabel, solver):
    X, y = multilabel
    a, b = both("MLPClassifier", X, y, hidden_layer_sizes=(16,), solver=solver, max_iter=10)
    assert_same_model(a, b)
    np.testing.assert_array_equal(b.predict(X), a.predict(X))


@pytest.mark.parametrize("kw", [dict(solver="sgd", learning_rate_init=0.01),
                                dict(solver="adam", early_stopping=True, validation_fraction=0.2),
                                dict(solver="lbfgs")], ids=["sgd", "adam-early", "lbfgs"])
@pytest.mark.parametrize("outputs", [1, 3])
def test_same_model_regression(regression, kw, outputs):
    X, y = regression
    y = y[:, 0] if outputs == 1 else y
    a, b = both("MLPRegressor", X, y, hidden_layer_sizes=(16,), max_iter=10, **kw)
    assert_same_model(a, b)
    np.testing.assert_allclose(b.predict(X), a.predict(X), rtol=1e-6, atol=1e-9)


def test_same_model_lbfgs_multiclass_and_max_fun(digits):
    X, y = digits
    for kw in (dict(max_iter=15), dict(max_iter=200, max_fun=7)):
        a, b = both("MLPClassifier", X, y, hidden_layer_sizes=(15,), solver="lbfgs", **kw)
        assert_same_model(a, b)


def test_same_model_float32(digits):
    X, y = digits
    a, b = both("MLPClassifier", X.astype(np.float32), y, hidden_layer_sizes=(20,), max_iter=5)
    assert b.coefs_[0].dtype == np.float32
    for ca, cb in zip(a.coefs_, b.coefs_):
        np.testing.assert_allclose(cb, ca, rtol=0, atol=1e-4 * np.abs(ca).max())
    np.testing.assert_allclose(b.loss_curve_, a.loss_curve_, rtol=1e-4)


def test_string_labels_partial_fit_and_warm_start(digits):
    X, y = digits
    labels = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                       "nine"])[y]
    kw = dict(hidden_layer_sizes=(16,), random_state=0, solver="sgd")
    a, b = sk.MLPClassifier(**kw), fs.MLPClassifier(**kw)
    for lo in range(0, 600, 200):
        a.partial_fit(X[lo:lo + 200], labels[lo:lo + 200], classes=np.unique(labels))
        b.partial_fit(X[lo:lo + 200], labels[lo:lo + 200], classes=np.unique(labels))
    assert_same_model(a, b)
    assert list(b.classes_) == sorted(set(labels))
    assert set(b.predict(X)) <= set(labels)
    # warm start: the second fit continues from the first's weights, as scikit-learn's
    kw = dict(hidden_layer_sizes=(16,), random_state=0, warm_start=True, max_iter=4)
    a, b = sk.MLPClassifier(**kw).fit(X, labels), fs.MLPClassifier(**kw).fit(X, labels)
    a.fit(X, labels)
    b.fit(X, labels)
    assert_same_model(a, b)
    # partial_fit after fit keeps Adam's state
    a.partial_fit(X, labels)
    b.partial_fit(X, labels)
    assert_same_model(a, b)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_regressor_partial_fit_and_warm_start_early_stopping(regression, solver):
    X, y = regression
    kw = dict(hidden_layer_sizes=(8,), random_state=0, solver=solver, learning_rate_init=0.01)
    a, b = sk.MLPRegressor(**kw), fs.MLPRegressor(**kw)
    for lo in range(0, 240, 60):
        a.partial_fit(X[lo:lo + 60], y[lo:lo + 60])
        b.partial_fit(X[lo:lo + 60], y[lo:lo + 60])
    assert_same_model(a, b)
    kw.update(warm_start=True, early_stopping=True, max_iter=5)
    a, b = sk.MLPRegressor(**kw).fit(X, y), fs.MLPRegressor(**kw).fit(X, y)
    assert_same_model(a.fit(X, y), b.fit(X, y))


def test_attributes_and_methods(digits):
    X, y = digits
    m = fs.MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0).fit(X, y)
    assert isinstance(m, sk.MLPClassifier)
    assert m.n_layers_ == 3 and m.n_outputs_ == 10 and m.out_activation_ == "softmax"
    assert m.n_features_in_ == 64 and len(m.loss_curve_) == m.n_iter_ == 5
    assert m.coefs_[0].shape == (64, 16) and m.intercepts_[1].shape == (10,)
    p = m.predict_proba(X)
    np.testing.assert_allclose(p.sum(axis=1), 1)
    np.testing.assert_allclose(m.predict_log_proba(X), np.log(p))
    np.testing.assert_array_equal(m.predict(X), m.classes_[p.argmax(axis=1)])
    assert m.score(X, y) == np.mean(m.predict(X) == y)
    assert set(fs.MLPClassifier().get_params()) == set(sk.MLPClassifier().get_params()) | {
        "dtype", "class_weight", "restore_best_weights", "optimizer", "n_jobs"}
    assert set(fs.MLPRegressor().get_params()) == set(sk.MLPRegressor().get_params()) | {
        "dtype", "restore_best_weights", "optimizer", "n_jobs"}
    for name, value in sk.MLPClassifier().get_params().items():
        assert fs.MLPClassifier().get_params()[name] == value


def test_pipeline_grid_search_cv_clone_pickle_joblib(digits):
    joblib = pytest.importorskip("joblib")
    X, y = digits
    pipe = make_pipeline(StandardScaler(), fs.MLPClassifier(hidden_layer_sizes=(16,), max_iter=40,
                                                           learning_rate_init=0.01, random_state=0))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.mean() > 0.75  # scikit-learn's MLP scores the same
    grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1]}, cv=2).fit(X, y)
    assert grid.best_score_ > 0.75
    m = grid.best_estimator_[-1]
    assert isinstance(m, fs.MLPClassifier)
    c = clone(m)
    assert c.get_params() == m.get_params() and not hasattr(c, "coefs_")
    for restored in (pickle.loads(pickle.dumps(grid)),):
        np.testing.assert_array_equal(restored.predict(X), grid.predict(X))
    buf = io.BytesIO()
    joblib.dump(grid, buf)
    buf.seek(0)
    np.testing.assert_array_equal(joblib.load(buf).predict_proba(X), grid.predict_proba(X))


def test_bad_input_as_scikit_learn(digits):
    X, y = digits
    for kw, exc in [(dict(activation="softsign"), ValueError), (dict(solver="newton"), ValueError),
                    (dict(alpha=-1.0), ValueError), (dict(hidden_layer_sizes=(0,)), ValueError),
                    (dict(batch_size=0), ValueError), (dict(dtype="float16"), ValueError),
                    (dict(optimizer="rmsprop"), ValueError), (dict(n_jobs=0), ValueError),
                    (dict(class_weight="some"), ValueError)]:
        with pytest.raises(exc):
            fs.MLPClassifier(**kw).fit(X, y)
        if "class_weight" not in kw:
            with pytest.raises(exc):
                fs.MLPRegressor(**kw).fit(X, y)
    with pytest.raises(NotFittedError):
        fs.MLPClassifier().predict(X)
    m = fs.MLPClassifier(hidden_layer_sizes=(8,), max_iter=2).fit(X, y)
    before = [c.copy() for c in m.coefs_]
    for bad_X, bad_y in [(X[:, :10], y), (X[:-1], y)]:
        with pytest.raises(ValueError):
            m.predict(bad_X) if bad_X.shape[0] == X.shape[0] else m.fit(bad_X, bad_y)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(ValueError):
        fs.MLPClassifier().fit(Xn, y)
    with pytest.raises(ValueError):  # labels never seen by partial_fit's classes
        fs.MLPClassifier().partial_fit(X, y, classes=np.arange(5))
    with pytest.raises(AttributeError):
        fs.MLPClassifier(solver="lbfgs").partial_fit
    with pytest.raises(ValueError):
        fs.MLPClassifier(early_stopping=True, solver="sgd").partial_fit(X, y, classes=np.arange(10))
    for c0, c1 in zip(before, m.coefs_):
        np.testing.assert_array_equal(c0, c1)


@pytest.mark.parametrize("kw", [dict(solver="adam"), dict(solver="sgd", early_stopping=True),
                                dict(solver="lbfgs")], ids=["adam", "sgd-early", "lbfgs"])
def test_same_model_sample_weight(digits, kw):
    X, y = digits
    w = np.linspace(0.2, 3, len(y))
    for target in (y, y > 4):  # softmax and logistic outputs
        a = sk.MLPClassifier(hidden_layer_sizes=(8,), max_iter=4, random_state=0, **kw)
        b = fs.MLPClassifier(hidden_layer_sizes=(8,), max_iter=4, random_state=0, **kw)
        assert_same_model(a.fit(X, target, sample_weight=w), b.fit(X, target, sample_weight=w))
    Xr, yr = make_regression(200, 8, n_targets=2, random_state=0)
    w = w[:200]
    a = sk.MLPRegressor(hidden_layer_sizes=(8,), max_iter=4, random_state=0, **kw)
    b = fs.MLPRegressor(hidden_layer_sizes=(8,), max_iter=4, random_state=0, **kw)
    assert_same_model(a.fit(Xr, yr / 100, sample_weight=w), b.fit(Xr, yr / 100, sample_weight=w))


def test_sparse_and_poisson(digits):
    import scipy.sparse
    X, y = digits
    for kw in (dict(solver="adam"), dict(solver="sgd", shuffle=False), dict(solver="lbfgs")):
        a, b = both("MLPClassifier", scipy.sparse.csr_matrix(X), y, hidden_layer_sizes=(8,),
                    max_iter=3, **kw)  # sparse batches made dense; L-BFGS: scikit-learn's code
        assert_same_model(a, b)
    yp = np.abs(y).astype(float)
    for solver in ("adam", "lbfgs"):
        a, b = both("MLPRegressor", X, yp, loss="poisson", hidden_layer_sizes=(8,), max_iter=3,
                    solver=solver)
        assert_same_model(a, b)


def test_extras(digits):
    X, y = digits
    m32 = fs.MLPClassifier(hidden_layer_sizes=(16,), max_iter=40, random_state=0,
                           learning_rate_init=0.01, dtype="float32").fit(X, y)
    assert m32.coefs_[0].dtype == np.float32 and m32.score(X, y) > 0.9
    # class_weight: the sample weights scikit-learn's linear models would use
    cw = {k: 1.0 + k for k in range(10)}
    a = sk.MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(
        X, y, sample_weight=1.0 + y)
    b = fs.MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0,
                         class_weight=cw).fit(X, y)
    assert_same_model(a, b)
    balanced = fs.MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0,
                                class_weight="balanced").fit(X, y)
    assert balanced.n_iter_ == 3
    with pytest.raises(ValueError, match="balanced"):
        fs.MLPClassifier(class_weight="balanced").partial_fit(X, y, classes=np.arange(10))
    # restore_best_weights=False keeps the last epoch's weights
    kw = dict(hidden_layer_sizes=(16,), max_iter=30, random_state=0, early_stopping=True,
              n_iter_no_change=2, tol=0.0)
    best = fs.MLPClassifier(**kw).fit(X, y)
    last = fs.MLPClassifier(**kw, restore_best_weights=False).fit(X, y)
    assert best.validation_scores_ == last.validation_scores_
    if np.argmax(best.validation_scores_) != len(best.validation_scores_) - 1:
        assert not np.array_equal(best.coefs_[0], last.coefs_[0])
    # adamw: decoupled decay; with alpha = 0 it is Adam exactly
    a, b = (fs.MLPClassifier(hidden_layer_sizes=(8,), max_iter=4, random_state=0, alpha=0.0,
                             optimizer=o).fit(X, y) for o in (None, "adamw"))
    np.testing.assert_allclose(b.coefs_[0], a.coefs_[0], rtol=1e-12, atol=1e-14)
    w = fs.MLPClassifier(hidden_layer_sizes=(8,), max_iter=4, random_state=0, alpha=1.0,
                         optimizer="adamw").fit(X, y)
    assert np.abs(w.coefs_[0]).sum() < np.abs(a.coefs_[0]).sum()
    # n_jobs caps the threads during fit only; the model is the same
    before = fp.get_num_threads()
    a = sk.MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0).fit(X, y)
    b = fs.MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0, n_jobs=1).fit(X, y)
    assert_same_model(a, b)
    assert fp.get_num_threads() == before
    # to_fastprop: the trained network as an fp.Sequential giving the logits
    net = m32.to_fastprop()
    assert isinstance(net, fp.Sequential) and net.dtype == np.float32
    logits = net(X.astype(np.float32))
    np.testing.assert_allclose(fp.ops.softmax(logits), m32.predict_proba(X), rtol=1e-4, atol=1e-6)


def test_validation_data(digits):
    X, y = digits
    Xt, yt, Xv, yv = X[:450], y[:450], X[450:], y[450:]
    kw = dict(hidden_layer_sizes=(16,), max_iter=8, random_state=0, learning_rate_init=0.01)
    plain = fs.MLPClassifier(**kw).fit(Xt, yt)
    watched = fs.MLPClassifier(**kw).fit(Xt, yt, validation_data=(Xv, yv))
    np.testing.assert_array_equal(watched.coefs_[0], plain.coefs_[0])  # monitoring only
    assert watched.loss_curve_ == plain.loss_curve_
    assert len(watched.validation_scores_) == watched.n_iter_ == 8
    assert watched.validation_scores_[-1] == watched.score(Xv, yv)
    assert watched.best_validation_score_ == max(watched.validation_scores_)
    assert plain.validation_scores_ is None
    # with early stopping: the held-out set replaces the validation_fraction split
    es = fs.MLPClassifier(**kw, early_stopping=True).fit(Xt, yt, validation_data=(Xv, yv))
    assert len(es.validation_scores_) == es.n_iter_
    assert es.score(Xv, yv) == es.best_validation_score_ == max(es.validation_scores_)
    with pytest.raises(ValueError):
        fs.MLPClassifier(**kw).fit(Xt, yt, validation_data=(Xv[:, :5], yv))
    with pytest.raises(ValueError):
        fs.MLPClassifier(**kw).fit(Xt, yt, validation_data=(Xv, yv[:-1]))
    with pytest.raises(ValueError):
        fs.MLPClassifier(**kw).fit(Xt, yt, validation_data=Xv)


def test_import_fastprop_does_not_import_sklearn():
    code = "import sys, fastprop; sys.exit('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_convergence_warning_and_verbose(digits, capsys):
    X, y = digits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fs.MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, verbose=True).fit(X, y)
    assert any(issubclass(w.category, ConvergenceWarning) for w in caught)
    assert "Iteration 2, loss = " in capsys.readouterr().out


def test_bigger_problem_matches(digits):
    X, y = make_classification(2000, 30, n_informative=10, n_classes=4, random_state=0)
    a, b = both("MLPClassifier", X, y, hidden_layer_sizes=(32, 16), max_iter=5)
    assert_same_model(a, b)
