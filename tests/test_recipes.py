"""The README's "Training recipes" (examples/recipe_*.py) reach the accuracy it quotes.

Each recipe runs with fewer epochs than the README's run, so the thresholds are a little
below the quoted accuracies; the runs are seeded (shuffling, initialisation, dropout, noise)."""
import importlib
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def recipes(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the recipes import recipe_digits' split
    return lambda name: importlib.import_module(name)


def test_digits_recipe(recipes):
    r = recipes("recipe_digits").run(epochs=20)
    assert r["accuracy"] > 0.95
    assert 1 <= r["best_epoch"] <= r["epochs_run"] <= 20


def test_imbalanced_recipe(recipes):
    r = recipes("recipe_imbalanced").run(epochs=30)
    assert r["accuracy"] > 0.9 and r["balanced_accuracy"] > 0.9


def test_dp_sgd_recipe(recipes):
    m = recipes("recipe_dp_sgd")
    private, plain = m.run(epochs=30), m.run(epochs=30, sigma=None)
    assert private["accuracy"] > 0.85 and plain["accuracy"] > 0.95
