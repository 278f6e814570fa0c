"""fastprop.sklearn.MLPClassifier's fit against scikit-learn's with the same parameters, on the
digits and on make_classification(100_000, 100, n_classes=10), float64 and float32. Both
estimators train the same model: their test accuracies are checked equal before timing.

    pytest benchmarks/test_sklearn.py --benchmark-only --benchmark-group-by=group
"""
import numpy as np
import pytest

pytest.importorskip("sklearn", minversion="1.7")  # its MLP hooks as of 1.7
from fastprop.bench_sklearn import WORKLOADS, dataset, estimators  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

_data = {}


def data(name, dtype):
    if name not in _data:
        _data.clear()
        _data[name] = dataset(name)
    return [a.astype(dtype) if a.dtype.kind == "f" else a for a in _data[name]]


@pytest.mark.parametrize("impl", ["sklearn", "fastprop"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_sklearn_fit(benchmark, name, dtype, impl):
    benchmark.group = f"sklearn-fit-{name}-{dtype}"
    benchmark.name = {"sklearn": "scikit-learn MLPClassifier", "fastprop": "fastprop.sklearn"}[impl]
    X, Xt, y, yt = data(name, np.dtype(dtype))
    params, _ = WORKLOADS[name]
    if benchmark.disabled:  # CI: one epoch on at most 5000 rows, results checked
        params, X, y = dict(params, max_iter=1), X[:5000], y[:5000]
    sk_est, fp_est = estimators(params)
    est = sk_est if impl == "sklearn" else fp_est
    benchmark.pedantic(est.fit, args=(X, y), rounds=1 if name != "digits" else 3, iterations=1)
    other = fp_est if impl == "sklearn" else sk_est
    if benchmark.disabled or name == "digits":  # the same model: the same test accuracy
        other.fit(X, y)
        assert abs(est.score(Xt, yt) - other.score(Xt, yt)) <= 0.01
