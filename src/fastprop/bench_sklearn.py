"""``python -m fastprop bench --sklearn``: fit time of fastprop.sklearn.MLPClassifier against
scikit-learn's with the same parameters (the same model: both reach the same accuracy).

Rounds alternate the two estimators; each time is the median over the rounds.
"""
import time
import warnings

import numpy as np

# name: (parameters of both estimators, rounds)
WORKLOADS = {
    "digits": (dict(hidden_layer_sizes=(100,), max_iter=30), 3),
    "classification-100k": (dict(hidden_layer_sizes=(100,), max_iter=2), 1),
}


def dataset(name):
    """(X_train, X_test, y_train, y_test) of a benchmark workload, float64."""
    from sklearn.datasets import load_digits, make_classification
    from sklearn.model_selection import train_test_split
    if name == "digits":
        X, y = load_digits(return_X_y=True)
        X = X / 16.0
    else:
        X, y = make_classification(100_000, 100, n_informative=30, n_classes=10, random_state=0)
    return train_test_split(X, y, test_size=0.2, random_state=0)


def estimators(params):
    """scikit-learn's MLPClassifier and fastprop's, with the same parameters (tol=0 and
    n_iter_no_change=max_iter: both run exactly max_iter epochs)."""
    from sklearn.neural_network import MLPClassifier as SkMLP

    from .sklearn import MLPClassifier
    kw = dict(params, random_state=0, tol=0.0, n_iter_no_change=params["max_iter"])
    return SkMLP(**kw), MLPClassifier(**kw)


def compare(name, dtype, rounds=None):
    """{"sklearn": (seconds, accuracy), "fastprop": (seconds, accuracy)} for one workload."""
    params, default_rounds = WORKLOADS[name]
    X, Xt, y, yt = dataset(name)
    X, Xt = X.astype(dtype), Xt.astype(dtype)
    times = {"sklearn": [], "fastprop": []}
    acc = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: the epoch count is fixed on purpose
        for _ in range(rounds or default_rounds):
            for key, est in zip(("sklearn", "fastprop"), estimators(params)):
                t = time.perf_counter()
                est.fit(X, y)
                times[key].append(time.perf_counter() - t)
                acc[key] = est.score(Xt, yt)
    return {k: (float(np.median(v)), acc[k]) for k, v in times.items()}


def sklearn_table(workloads=None, rounds=None):
    """Prints fit time and test accuracy of both estimators, float64 and float32."""
    print("MLPClassifier fit: scikit-learn against fastprop.sklearn, the same parameters "
          "(adam, batch 200, relu, hidden (100,)); medians of alternating rounds")
    print(f"{'workload':<22}{'dtype':<9}{'epochs':>6}{'sklearn s':>11}{'fastprop s':>12}"
          f"{'speed-up':>10}{'sklearn acc':>13}{'fastprop acc':>14}")
    rows = []
    for name in workloads or list(WORKLOADS):
        for dtype in (np.float64, np.float32):
            r = compare(name, dtype, rounds)
            (ts, a_s), (tf, a_f) = r["sklearn"], r["fastprop"]
            rows.append((name, np.dtype(dtype).name, ts, tf, a_s, a_f))
            print(f"{name:<22}{np.dtype(dtype).name:<9}{WORKLOADS[name][0]['max_iter']:>6}"
                  f"{ts:>11.3f}{tf:>12.3f}{ts / tf:>9.1f}x{a_s:>13.4f}{a_f:>14.4f}", flush=True)
    return rows
