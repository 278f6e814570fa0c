import numpy as np
import pytest

from fastprop import datasets


def test_all_lists_public_names():
    assert sorted(datasets.__all__) == sorted(
        ["xor", "spirals", "load_digits", "train_test_split"]
    )
    for name in datasets.__all__:
        assert callable(getattr(datasets, name))


# --- xor -------------------------------------------------------------------


def test_xor_values_and_dtypes():
    X, y = datasets.xor()
    assert X.shape == (4, 2) and X.dtype == np.float32
    assert y.shape == (4,) and y.dtype == np.int64
    np.testing.assert_array_equal(X, [[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(y, [0, 1, 1, 0])
    # the label really is the XOR of the two inputs
    np.testing.assert_array_equal(y, X[:, 0].astype(int) ^ X[:, 1].astype(int))


def test_xor_dtype_argument():
    X, _ = datasets.xor(dtype=np.float64)
    assert X.dtype == np.float64


# --- spirals ---------------------------------------------------------------


def test_spirals_default_shapes_and_dtypes():
    X, y = datasets.spirals()
    assert X.shape == (300, 2) and X.dtype == np.float32
    assert y.shape == (300,) and y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y), [100, 100, 100])
    assert np.all(np.isfinite(X))


def test_spirals_uneven_split_and_dtype():
    X, y = datasets.spirals(n=10, classes=3, dtype=np.float64)
    assert X.shape == (10, 2) and X.dtype == np.float64
    np.testing.assert_array_equal(np.bincount(y), [4, 3, 3])
    # samples are ordered by class
    np.testing.assert_array_equal(y, np.sort(y))


def test_spirals_minimum_size():
    X, y = datasets.spirals(n=2, classes=2)
    assert X.shape == (2, 2)
    np.testing.assert_array_equal(y, [0, 1])


def test_spirals_radii_span_unit_disc():
    # noise acts on the angle only, so radii are exactly linspace(0, 1, m)
    X, y = datasets.spirals(n=150, classes=3, noise=0.5, dtype=np.float64)
    for k in range(3):
        r = np.linalg.norm(X[y == k], axis=1)
        np.testing.assert_allclose(r, np.linspace(0, 1, 50), atol=1e-12)


def test_spirals_arms_are_rotations_without_noise():
    classes = 4
    X, y = datasets.spirals(n=200, classes=classes, noise=0.0, dtype=np.float64)
    arm0 = X[y == 0]
    for k in range(1, classes):
        a = 2 * np.pi * k / classes
        # (r sin t, r cos t) -> (r sin(t + a), r cos(t + a))
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        np.testing.assert_allclose(arm0 @ rot, X[y == k], atol=1e-12)
        assert not np.allclose(arm0, X[y == k])


def test_spirals_noise_zero_ignores_seed():
    X1, _ = datasets.spirals(noise=0.0, seed=1)
    X2, _ = datasets.spirals(noise=0.0, seed=2)
    np.testing.assert_array_equal(X1, X2)


def test_spirals_deterministic_with_seed():
    X1, y1 = datasets.spirals(seed=123)
    X2, y2 = datasets.spirals(seed=123)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    X3, y3 = datasets.spirals(seed=124)
    np.testing.assert_array_equal(y1, y3)
    assert not np.allclose(X1, X3)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(classes=1),
        dict(classes=0),
        dict(n=2, classes=3),
        dict(n=0),
        dict(n=-5),
        dict(n=10.5),
        dict(classes=2.0),
        dict(noise=-0.1),
        dict(noise=float("nan")),
    ],
)
def test_spirals_validation(kwargs):
    with pytest.raises(ValueError):
        datasets.spirals(**kwargs)


# --- digits ----------------------------------------------------------------


def test_digits_shapes_dtypes_and_range():
    X, y = datasets.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    # scaled values are exactly k / 16 for integer k
    np.testing.assert_array_equal(X * 16, np.round(X * 16))


def test_digits_class_counts():
    _, y = datasets.load_digits()
    counts = np.bincount(y)
    assert counts.shape == (10,)
    assert counts.sum() == 1797
    assert np.all((counts >= 170) & (counts <= 190))
    np.testing.assert_array_equal(
        counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    )


def test_digits_unscaled_content():
    X, y = datasets.load_digits(dtype=np.float64, scale=False)
    assert X.dtype == np.float64
    assert X.min() == 0 and X.max() == 16
    np.testing.assert_array_equal(X, np.round(X))
    # known content of the scikit-learn / UCI copy
    assert X.sum() == 561718
    np.testing.assert_array_equal(y[:20], np.tile(np.arange(10), 2))
    first = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0]
    np.testing.assert_array_equal(X[0, :16], first)


def test_digits_scaled_matches_unscaled():
    Xs, ys = datasets.load_digits(dtype=np.float64)
    Xu, yu = datasets.load_digits(dtype=np.float64, scale=False)
    np.testing.assert_array_equal(Xs * 16, Xu)
    np.testing.assert_array_equal(ys, yu)


def test_digits_integer_dtype_unscaled():
    X, _ = datasets.load_digits(dtype=np.int32, scale=False)
    assert X.dtype == np.int32 and X.max() == 16


def test_digits_integer_dtype_with_scale_rejected():
    with pytest.raises(ValueError):
        datasets.load_digits(dtype=np.int32, scale=True)


# --- train_test_split ------------------------------------------------------


def _toy(n=100):
    X = np.arange(n * 3, dtype=np.float64).reshape(n, 3)
    y = np.arange(n) * 10
    return X, y


def test_split_shapes_and_alignment():
    X, y = _toy()
    X_tr, X_te, y_tr, y_te = datasets.train_test_split(X, y)
    assert X_tr.shape == (75, 3) and X_te.shape == (25, 3)
    assert y_tr.shape == (75,) and y_te.shape == (25,)
    # rows stay aligned with their labels
    np.testing.assert_array_equal(X_tr[:, 0] / 3 * 10, y_tr)
    np.testing.assert_array_equal(X_te[:, 0] / 3 * 10, y_te)
    # train and test form a partition of the samples
    np.testing.assert_array_equal(np.sort(np.concatenate([y_tr, y_te])), y)


def test_split_is_shuffled():
    X, y = _toy()
    _, _, y_tr, y_te = datasets.train_test_split(X, y)
    assert not np.array_equal(np.concatenate([y_tr, y_te]), y)


def test_split_does_not_modify_inputs():
    X, y = _toy()
    X0, y0 = X.copy(), y.copy()
    X_tr, _, _, _ = datasets.train_test_split(X, y)
    X_tr[:] = -1
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)


@pytest.mark.parametrize(
    "test_size, n_test", [(0.25, 25), (0.1, 10), (0.333, 34), (1, 1), (99, 99)]
)
def test_split_sizes(test_size, n_test):
    X, y = _toy()
    X_tr, X_te, _, _ = datasets.train_test_split(X, y, test_size=test_size)
    assert len(X_te) == n_test and len(X_tr) == 100 - n_test


def test_split_float_rounding():
    # 0.07 * 100 == 7.000000000000001 in floating point; must still give 7
    X, y = _toy(100)
    _, X_te, _, _ = datasets.train_test_split(X, y, test_size=0.07)
    assert len(X_te) == 7


def test_split_accepts_lists_and_multidim_y():
    X = [[i, i] for i in range(8)]
    y = np.eye(8)
    X_tr, X_te, y_tr, y_te = datasets.train_test_split(X, y, test_size=2)
    assert X_tr.shape == (6, 2) and X_te.shape == (2, 2)
    assert y_tr.shape == (6, 8) and y_te.shape == (2, 8)
    np.testing.assert_array_equal(np.argmax(y_te, axis=1), X_te[:, 0])


def test_split_deterministic_with_seed():
    X, y = _toy()
    a = datasets.train_test_split(X, y, seed=7)
    b = datasets.train_test_split(X, y, seed=7)
    c = datasets.train_test_split(X, y, seed=8)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[3], c[3])


@pytest.mark.parametrize(
    "test_size", [0, 0.0, 1.0, 1.5, -0.2, 100, 101, -1, True, "0.25", None]
)
def test_split_invalid_test_size(test_size):
    X, y = _toy()
    with pytest.raises(ValueError):
        datasets.train_test_split(X, y, test_size=test_size)


def test_split_length_mismatch():
    X, y = _toy()
    with pytest.raises(ValueError):
        datasets.train_test_split(X, y[:-1])


def test_split_too_few_samples():
    with pytest.raises(ValueError):
        datasets.train_test_split(np.zeros((1, 2)), np.zeros(1))
