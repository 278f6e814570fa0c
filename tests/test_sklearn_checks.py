"""scikit-learn's own estimator checks on fastprop.sklearn's estimators."""
import pytest

pytest.importorskip("sklearn", minversion="1.7")  # its MLP hooks as of 1.7
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastprop.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


# the default parameters, as scikit-learn checks its own MLPs
@parametrize_with_checks([MLPClassifier(random_state=0),
                          MLPRegressor(random_state=0)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
