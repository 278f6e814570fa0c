"""Small built-in datasets and a train/test split helper.

Everything here uses NumPy only and is deterministic given a ``seed``.

Digits data provenance
----------------------
``fastprop/data/digits.npz`` holds the 8x8 handwritten digits set: 1,797
images of 8x8 pixels (64 integer features in 0..16) labelled 0..9. It is the
test set of the "Optical Recognition of Handwritten Digits" data set from the
UCI Machine Learning Repository (E. Alpaydin and C. Kaynak, 1998,
https://doi.org/10.24432/C50P49), licensed under CC BY 4.0. The file was
exported once from the copy bundled with scikit-learn
(``sklearn.datasets.load_digits()``, scikit-learn 1.9.1) and stores two arrays:
``data`` (uint8, shape (1797, 64)) and ``target`` (uint8, shape (1797,)).
"""
from __future__ import annotations

import math
from importlib import resources
from numbers import Integral, Real

import numpy as np
from typing import Any
from numpy.typing import NDArray, DTypeLike

__all__ = ["xor", "spirals", "load_digits", "train_test_split"]


def xor(dtype: DTypeLike = np.float32) -> tuple[NDArray[Any], NDArray[Any]]:
    """Return the four points of the XOR problem.

    Parameters
    ----------
    dtype : data-type, default np.float32
        Data type of ``X``.

    Returns
    -------
    X : ndarray of shape (4, 2)
        The points ``[0, 0], [0, 1], [1, 0], [1, 1]``.
    y : ndarray of shape (4,), int64
        The labels ``[0, 1, 1, 0]``.
    """
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=dtype)
    y = np.array([0, 1, 1, 0], dtype=np.int64)
    return X, y


def spirals(n: int = 300, classes: int = 3, seed: int = 0, noise: float = 0.2,
            dtype: DTypeLike = np.float32) -> tuple[NDArray[Any], NDArray[Any]]:
    """Generate interleaved 2-D spirals, one arm per class (CS231n style).

    Each arm has radii evenly spaced from 0 to 1 and angles running over
    4 radians, rotated by ``2 * pi * k / classes`` for class ``k``. Gaussian
    noise with standard deviation ``noise`` is added to the angles only, so
    every point stays inside the unit disc. Samples are ordered by class.

    Parameters
    ----------
    n : int, default 300
        Total number of samples, split as evenly as possible among the
        classes (the first ``n % classes`` classes get one extra sample).
    classes : int, default 3
        Number of classes (spiral arms), at least 2.
    seed : int, default 0
        Seed for ``np.random.default_rng``.
    noise : float, default 0.2
        Standard deviation of the angular noise, in radians (>= 0).
    dtype : data-type, default np.float32
        Data type of ``X``.

    Returns
    -------
    X : ndarray of shape (n, 2)
        Point coordinates, each point with norm <= 1.
    y : ndarray of shape (n,), int64
        Class labels in ``0 .. classes - 1``.

    Raises
    ------
    ValueError
        If ``classes < 2``, ``n < classes`` or ``noise < 0``.
    """
    if not isinstance(classes, Integral) or isinstance(classes, bool) or classes < 2:
        raise ValueError(f"classes must be an integer >= 2, got {classes!r}")
    if not isinstance(n, Integral) or isinstance(n, bool) or n < classes:
        raise ValueError(
            f"n must be an integer >= classes ({classes}), got {n!r}"
        )
    if not isinstance(noise, Real) or not noise >= 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")

    rng = np.random.default_rng(seed)
    counts = [n // classes + (k < n % classes) for k in range(classes)]
    xs, ys = [], []
    for k, m in enumerate(counts):
        r = np.linspace(0.0, 1.0, m)
        t = np.linspace(0.0, 4.0, m) + 2 * np.pi * k / classes
        t = t + rng.normal(0.0, noise, m)
        xs.append(np.column_stack([r * np.sin(t), r * np.cos(t)]))
        ys.append(np.full(m, k, dtype=np.int64))
    return np.concatenate(xs).astype(dtype), np.concatenate(ys)


def load_digits(dtype: DTypeLike = np.float32,
                scale: bool = True) -> tuple[NDArray[Any], NDArray[Any]]:
    """Load the 8x8 handwritten digits (1,797 samples, 10 classes).

    See the module docstring for the data source and license.

    Parameters
    ----------
    dtype : data-type, default np.float32
        Data type of ``X``. Must be a floating type when ``scale`` is True.
    scale : bool, default True
        If True, divide pixel values by 16 so they lie in [0, 1];
        otherwise keep the raw integer values 0..16.

    Returns
    -------
    X : ndarray of shape (1797, 64)
        Flattened 8x8 images, row-major.
    y : ndarray of shape (1797,), int64
        Digit labels 0..9.

    Raises
    ------
    ValueError
        If ``scale`` is True and ``dtype`` is not a floating type.
    """
    if scale and not np.issubdtype(dtype, np.floating):
        raise ValueError(f"scale=True needs a floating dtype, got {np.dtype(dtype)}")
    path = resources.files("fastprop") / "data" / "digits.npz"
    with path.open("rb") as f, np.load(f) as npz:
        data, target = npz["data"], npz["target"]
    X = data.astype(dtype)
    if scale:
        X /= 16
    return X, target.astype(np.int64)


def train_test_split(X: NDArray[Any], y: NDArray[Any], test_size: float = 0.25,
                     seed: int = 0) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]:
    """Shuffle and split arrays into train and test parts.

    Parameters
    ----------
    X : array_like of shape (n, ...)
        Samples; the first axis indexes samples.
    y : array_like of shape (n, ...)
        Targets aligned with ``X``.
    test_size : float or int, default 0.25
        A float in (0, 1) is the fraction of samples put in the test set
        (rounded up); an int is the exact number of test samples. Both parts
        must end up non-empty.
    seed : int, default 0
        Seed for ``np.random.default_rng`` used to shuffle.

    Returns
    -------
    X_train : ndarray of shape (n - n_test, ...)
    X_test : ndarray of shape (n_test, ...)
    y_train : ndarray of shape (n - n_test, ...)
    y_test : ndarray of shape (n_test, ...)
        New arrays; the inputs are not modified.

    Raises
    ------
    ValueError
        If ``X`` and ``y`` have different lengths, or ``test_size`` does not
        leave at least one sample in each part.
    """
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim == 0 or y.ndim == 0:
        raise ValueError("X and y must have at least one dimension")
    n = len(X)
    if len(y) != n:
        raise ValueError(f"X and y have different lengths: {n} and {len(y)}")
    if isinstance(test_size, bool):
        raise ValueError(f"test_size must be a float or int, got {test_size!r}")
    if isinstance(test_size, Integral):
        n_test = int(test_size)
    elif isinstance(test_size, Real) and 0 < test_size < 1:
        # round first so that e.g. 0.1 * 30 gives 3, not 4
        n_test = math.ceil(round(test_size * n, 9))
    else:
        raise ValueError(
            f"test_size must be a float in (0, 1) or an int, got {test_size!r}"
        )
    if not 1 <= n_test <= n - 1:
        raise ValueError(
            f"test_size={test_size!r} gives {n_test} test samples out of {n}; "
            "both train and test parts must be non-empty"
        )
    perm = np.random.default_rng(seed).permutation(n)
    test, train = perm[:n_test], perm[n_test:]
    return X[train], X[test], y[train], y[test]
