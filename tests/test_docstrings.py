"""Every public name has a numpydoc docstring (issue 19): a summary, Parameters matching the
signature, Returns where it returns something, and an Examples section for the main entry
points. Checked with ``numpydoc.validate`` (the docs extra installs numpydoc); skipped
cleanly without it. The examples themselves run in .ci/run (``pytest --doctest-modules``)."""
import importlib
import inspect

import pytest

from fastprop import registry

validate = pytest.importorskip("numpydoc.validate").validate

# The public modules whose ``__all__`` is checked; the optional-dependency ones are skipped
# when their dependency is missing. fastprop.ops re-exports the C bindings of
# fastprop._kernels (their docstrings live in the Cython sources); fastprop.reference has
# the same functions in NumPy, with the same Parameters.
MODULES = ["fastprop", "fastprop.nn", "fastprop.graph", "fastprop.layers", "fastprop.losses",
           "fastprop.optim", "fastprop.lr_scheduler", "fastprop.train", "fastprop.io",
           "fastprop.curvature", "fastprop.hessian_free", "fastprop.autodiff",
           "fastprop.datasets", "fastprop.clip", "fastprop.checkpoint", "fastprop.callbacks",
           "fastprop.onnx", "fastprop.pytorch", "fastprop.info", "fastprop.ops",
           "fastprop.reference"]
OPTIONAL = {"fastprop.sklearn": "sklearn", "fastprop.distributed": "mpi4py"}

# numpydoc checks not enforced: layout and wording conventions (where the docstring starts,
# the summary's mood, length and punctuation, capitals and full stops in descriptions,
# "See Also" and an extended summary being present), not content.
NOT_ENFORCED = {
    "GL01", "GL02", "GL03",                 # blank lines around the docstring's text
    "SS02", "SS03", "SS05", "SS06",         # summary: a capital (``y = …`` formulas), full stop,
                                            # infinitive verb, one line
    "ES01", "SA01", "SA04",                 # an extended summary, See Also and its descriptions
    "PR06", "PR08", "PR09",                 # wording of parameter types and descriptions
    "RT02", "RT03", "RT04", "RT05",         # wording of the Returns section
    "EX01",                                 # Examples: required for MAIN below only
    "YD01",
}

# the main entry points: these must have an Examples section (doctested in .ci/run)
MAIN = ["fastprop.train.TrainStep", "fastprop.train.fit", "fastprop.train.predict",
        "fastprop.train.predict_proba", "fastprop.train.evaluate", "fastprop.train.History",
        "fastprop.curvature.hvp", "fastprop.curvature.gnvp", "fastprop.graph.Graph",
        "fastprop.io.save", "fastprop.io.load", "fastprop.optim.SGD", "fastprop.optim.Adam",
        "fastprop.optim.AdamW", "fastprop.optim.RMSprop", "fastprop.optim.Adagrad",
        "fastprop.lr_scheduler.StepLR", "fastprop.lr_scheduler.CosineAnnealingLR",
        "fastprop.lr_scheduler.OneCycleLR", "fastprop.lr_scheduler.ReduceLROnPlateau",
        "fastprop.nn.Linear", "fastprop.nn.Sequential", "fastprop.losses.SoftmaxCrossEntropy",
        "fastprop.checkpoint.save_checkpoint", "fastprop.checkpoint.load_checkpoint",
        "fastprop.autodiff.jvp", "fastprop.autodiff.vjp", "fastprop.autodiff.jacobian",
        "fastprop.autodiff.hessian", "fastprop.autodiff.per_example_grads"]


def _is_function(obj):
    """A Python function or a Cython one (compiled with binding=True, Cython 3's default, so
    inspect.signature reads its parameters)."""
    return inspect.isfunction(obj) or type(obj).__name__ == "cython_function_or_method"


def _public(modules):
    """{dotted name where defined: object} for the classes and functions in the modules'
    ``__all__`` (a re-exported name once, under the module that defines it)."""
    out = {}
    for mod_name in modules:
        mod = importlib.import_module(mod_name)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not (inspect.isclass(obj) or _is_function(obj)):
                continue   # submodules and constants
            out.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return out


def _names():
    names = dict(_public(MODULES))
    for mod_name, dep in OPTIONAL.items():
        try:
            importlib.import_module(dep)
        except ImportError:
            continue
        names.update(_public([mod_name]))
    return sorted(names)


NAMES = _names()


def test_the_public_names_are_found():
    assert len(NAMES) > 80
    assert "fastprop.train.fit" in NAMES and "fastprop.nn.ReLU" in NAMES
    assert "fastprop._kernels.dense_forward" in NAMES           # fastprop.ops, the C bindings
    assert "fastprop.reference.dense_forward" in NAMES


def _sections(obj):
    from numpydoc.docscrape import FunctionDoc
    doc = FunctionDoc(obj)
    return [[(p.name, p.type) for p in doc[s]] for s in ("Parameters", "Returns")]


@pytest.mark.parametrize("name", importlib.import_module("fastprop.ops").__all__)
def test_ops_and_reference_document_the_same_parameters(name):
    ops, reference = (importlib.import_module(m) for m in ("fastprop.ops", "fastprop.reference"))
    if not hasattr(reference, name):
        pytest.skip(f"{name} has no NumPy reference")
    assert _sections(getattr(ops, name)) == _sections(getattr(reference, name)), name


# the activations are made from registry rows with an ``__init__(*args, **kw)`` (PyTorch's
# positional order, checked at run time): their parameters are the row's, not the signature's
ACTIVATIONS = {f"fastprop.nn.{row.cls}": row for row in registry.ACTIVATIONS}


@pytest.mark.parametrize("name", NAMES)
def test_numpydoc_docstring(name):
    result = validate(name)
    skip = NOT_ENFORCED | ({"PR01", "PR02"} if name in ACTIVATIONS else set())
    errors = [f"{code}: {msg}" for code, msg in result["errors"] if code not in skip]
    assert not errors, f"{name}:\n" + "\n".join(errors)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_docstrings_document_the_row_parameters(name):
    from numpydoc.docscrape import ClassDoc
    cls = importlib.import_module("fastprop.nn").__dict__[name.rsplit(".", 1)[1]]
    documented = [p.name for p in ClassDoc(cls)["Parameters"]]
    assert documented == [k for k, _ in ACTIVATIONS[name].params], name


@pytest.mark.parametrize("name", MAIN)
def test_main_entry_points_have_examples(name):
    codes = [code for code, _ in validate(name)["errors"]]
    assert "EX01" not in codes, f"{name} has no Examples section"
