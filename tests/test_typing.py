"""The typing deliverables: py.typed ships, and the stub of the Cython module (_kernels.pyi)
describes the bindings as they are (names, parameters, kinds, defaults' presence)."""
import ast
import inspect
import os

import pytest

import fastprop
from fastprop import _kernels

HERE = os.path.dirname(fastprop.__file__)


def _stub():
    with open(os.path.join(HERE, "_kernels.pyi"), encoding="utf-8") as f:
        return ast.parse(f.read())


def _stub_params(fn):
    a = fn.args
    pos = a.posonlyargs + a.args
    out = [(p.arg, "positional", i >= len(pos) - len(a.defaults)) for i, p in enumerate(pos)]
    if a.vararg:
        out.append((a.vararg.arg, "var_positional", False))
    out += [(p.arg, "keyword_only", d is not None) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg:
        out.append((a.kwarg.arg, "var_keyword", False))
    return out


def _runtime_params(obj):
    kinds = {inspect.Parameter.POSITIONAL_ONLY: "positional",
             inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
             inspect.Parameter.VAR_POSITIONAL: "var_positional",
             inspect.Parameter.KEYWORD_ONLY: "keyword_only",
             inspect.Parameter.VAR_KEYWORD: "var_keyword"}
    return [(p.name, kinds[p.kind], p.default is not inspect.Parameter.empty)
            for p in inspect.signature(obj).parameters.values()]


def _stubbed():
    """(qualified name, stub def, runtime object) for every def of the stub that inspect can
    compare (Cython's __init__ of a cdef class has no signature: (self, *args, **kwargs))."""
    out = []
    for node in _stub().body:
        if isinstance(node, ast.FunctionDef) and node.name != "__getattr__":
            out.append((node.name, node, getattr(_kernels, node.name, None)))
        elif isinstance(node, ast.ClassDef):
            cls = getattr(_kernels, node.name, None)
            for m in node.body:
                if isinstance(m, ast.FunctionDef) and any(
                        isinstance(d, ast.Name) and d.id == "property" for d in m.decorator_list):
                    out.append((f"{node.name}.{m.name}", None, getattr(cls, m.name, None)))
                elif isinstance(m, ast.FunctionDef) and m.name != "__init__":
                    out.append((f"{node.name}.{m.name}", m, getattr(cls, m.name, None)))
    return out


def test_py_typed_ships():
    assert os.path.isfile(os.path.join(HERE, "py.typed"))
    assert os.path.isfile(os.path.join(HERE, "_kernels.pyi"))


@pytest.mark.parametrize("name,fn,obj", _stubbed(), ids=[n for n, _, _ in _stubbed()])
def test_stub_matches_binding(name, fn, obj):
    assert obj is not None, f"_kernels.pyi declares {name}, which the extension does not have"
    if fn is None:
        assert isinstance(obj, property) or type(obj).__name__ == "getset_descriptor", name
        return
    assert _stub_params(fn) == _runtime_params(obj), name

