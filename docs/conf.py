"""Sphinx configuration of fastprop's API reference: ``sphinx-build -W -b html docs docs/_build/html``."""
import fastprop

project = "fastprop"
author = "The fastprop developers"
copyright = "the fastprop developers"
version = release = fastprop.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.mathjax", "sphinx.ext.viewcode", "numpydoc"]
exclude_patterns = ["_build", "ops_spec.md"]
source_suffix = {".rst": "restructuredtext"}

autodoc_default_options = {
    "members": True, "member-order": "bysource", "undoc-members": False,
    "special-members": "__call__",
    # scikit-learn's metadata-routing methods, generated on every estimator (documented there)
    "exclude-members": "set_fit_request, set_partial_fit_request, set_score_request, "
                       "set_predict_request, set_predict_proba_request",
}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
# keep NumPy's aliases as written in the annotations instead of expanding their unions
autodoc_type_aliases = {"ArrayLike": "numpy.typing.ArrayLike", "DTypeLike": "numpy.typing.DTypeLike",
                        "ParamsT": "fastprop.optim.ParamsT"}
autodoc_preserve_defaults = True
numpydoc_show_class_members = False   # each class documents its own methods via autodoc
numpydoc_xref_param_type = False
html_theme = "alabaster"
html_static_path: list = []
