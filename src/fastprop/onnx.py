"""ONNX export: ``export_onnx(model, path)`` writes a fastprop model as an ONNX graph that ONNX
Runtime (or any ONNX runtime) runs with the model's outputs.

The exported graph is the model at inference: Dropout is the identity and BatchNorm1d uses its
running statistics (its batch statistics where it keeps none), whatever ``model.training`` is.
Each module becomes standard ONNX operators (default opset 17):

- ``Linear`` → ``Gemm`` (transB = 1, the (out, in) weight as it is); ``LowRankLinear`` → two
  ``Gemm`` (x Uᵀ, then · Vᵀ + b, as fastprop computes it).
- ``ReLU``, ``Sigmoid``, ``Tanh``, ``Abs``, ``Cos``, ``Identity`` → the ONNX operator of that name;
  ``PReLU`` → ``PRelu`` (its (num_parameters,) weight broadcasts over the features);
  ``LeakyReLU`` → ``LeakyRelu`` (``PRelu`` with a constant slope where the float attribute
  of ``LeakyRelu`` cannot hold a float64 slope exactly).
- ``SiLU`` → ``x · Sigmoid(x)``.
- ``GELU`` → the exact form x Φ(x): ½ x (1 + ``Erf(x/√2)``) in float32; in float64 (ONNX
  Runtime has no float64 ``Erf``) Φ from Cephes' rational approximations of erf and erfc
  (relative error < 2e-15), built from Mul/Add/Div/Exp.
- ``Softplus(beta, threshold)`` → fastprop's definition (csrc/activation.c): with b = βx,
  (max(b, 0) + log1p(exp(−|b|)))/β, and x where b > threshold (any sign of β); log1p through
  Goldberg's log(u)·t/(u − 1), u = 1 + t, so the negative tail keeps its relative accuracy.
- ``Dropout`` → ``Identity``; ``LayerNorm`` → ``LayerNormalization``; ``BatchNorm1d`` →
  ``BatchNormalization`` (with running statistics; without, the batch's mean and variance).
  In float64 both are written out as (x − mean)/√(var + ε)·γ + β: ONNX's epsilon attribute is
  a float32, and ONNX Runtime's LayerNormalization takes the variance as E[x²] − E[x]², each
  worth ~1e-11 of relative error; so is LayerNorm before opset 17.
- ``Sequential`` → the chain; ``Residual`` → x + f(x) (``Add``); ``Graph`` → its nodes, ``Add``
  (n inputs summed left to right), ``Concat`` (axis 1) and ``Mul``, with one ONNX input per
  graph input and one output per graph output, named as in the graph.

Anything else, a user's own ``Module`` included, is a ``TypeError`` naming it (and where it is).
"""
from __future__ import annotations
import os

import numpy as np

from . import graph, layers, nn
from .graph import Add, Concat, Graph, Merge, Mul, Residual
from .losses import Loss, SigmoidBCE, SoftmaxCrossEntropy
from typing import Any, TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: no import cycle at run time
    from .nn import Module

__all__ = ["export_onnx", "DEFAULT_OPSET", "MIN_OPSET"]

DEFAULT_OPSET = 17   # LayerNormalization's first opset
MIN_OPSET = 13       # Softmax over one axis (its semantics before 13 differ)

# Cephes' erf on [0, 1]: erf(z) = z T(z²)/U(z²); erfc(z) = exp(−z²) P(z)/Q(z) on [1, 8] and
# exp(−z²) R(z)/S(z) beyond (U, Q, S monic: their leading 1 is written out)
_ERF_T = (9.60497373987051638749E0, 9.00260197203842689217E1, 2.23200534594684319226E3,
          7.00332514112805075473E3, 5.55923013010394962768E4)
_ERF_U = (1.0, 3.35617141647503099647E1, 5.21357949780152679795E2, 4.59432382970980127987E3,
          2.26290000613890934246E4, 4.92673942608635921086E4)
_ERFC_P = (2.46196981473530512524E-10, 5.64189564831068821977E-1, 7.46321056442269912687E0,
           4.86371970985681366614E1, 1.96520832956077098242E2, 5.26445194995477358631E2,
           9.34528527171957607540E2, 1.02755188689515710272E3, 5.57535335369399327526E2)
_ERFC_Q = (1.0, 1.32281951154744992508E1, 8.67072140885989742329E1, 3.54937778887819891062E2,
           9.75708501743205489753E2, 1.82390916687909736289E3, 2.24633760818710981792E3,
           1.65666309194161350182E3, 5.57535340817727675546E2)
_ERFC_R = (5.64189583547755073984E-1, 1.27536670759978104416E0, 5.01905042251180477414E0,
           6.16021097993053585195E0, 7.40974269950448939160E0, 2.97886665372100240670E0)
_ERFC_S = (1.0, 2.26052863220117276590E0, 9.39603524938001434673E0, 1.20489539808096656605E1,
           1.70814450747565897222E1, 9.60896809063285878198E0, 3.36907645100081516050E0)


def export_onnx(model: Module, path: str | os.PathLike[str], opset: Any = None,
                batch_dim: str = "batch", with_output_unit: bool = False) -> Any:
    """Write ``model`` to ``path`` as an ONNX model, checked with ``onnx.checker``.

    The inputs and outputs are (batch, features) tensors of the model's dtype (float32 for a
    model without parameters), named "x" and "y" for a single module, and after the graph's
    input and output nodes for a Graph.

    Parameters
    ----------
    model : Module
        A Sequential, Graph, Residual, or a single layer.
    path : str or os.PathLike or None
        The file to write; None only returns the ModelProto.
    opset : int, optional
        The ONNX opset, from 13; default 17 (or the newest the installed onnx knows).
    batch_dim : str or int, default "batch"
        A named dynamic batch dimension (str) or a fixed batch size (int).
    with_output_unit : bool, str, Loss or Loss class, default False
        False (the raw outputs), True (predict_proba's rule: Sigmoid for one output
        column, else Softmax over the features), "softmax", "sigmoid", or the loss the
        model was trained with (SoftmaxCrossEntropy → Softmax, SigmoidBCE → Sigmoid, any
        other → nothing); applied to every output.

    Returns
    -------
    onnx.ModelProto
        The model written.

    Raises
    ------
    ImportError
        If onnx is not installed.
    TypeError
        If the model holds a module ONNX export does not support.
    ValueError
        If opset, batch_dim or with_output_unit is not valid.

    Examples
    --------
    >>> import fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 4, rng=0), fp.ReLU(), fp.Linear(4, 2, rng=1))
    >>> proto = fp.export_onnx(model, None, with_output_unit=True)
    >>> [n.op_type for n in proto.graph.node]
    ['Gemm', 'Relu', 'Gemm', 'Softmax', 'Identity']
    """
    try:
        import onnx
    except ImportError:
        raise ImportError("export_onnx needs the onnx package: pip install 'fastprop-nn[onnx]'") from None
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a fastprop Module, got {type(model).__name__}")
    if isinstance(model, Graph) and not model._built:
        raise ValueError("model is an unbuilt Graph: call g.build(outputs=...) first")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    max_opset = onnx.defs.onnx_opset_version()
    if opset is None:
        opset = DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"opset must be an int, got {type(opset).__name__}")
    if not MIN_OPSET <= opset <= max_opset:
        raise ValueError(f"opset must be in [{MIN_OPSET}, {max_opset}] (the installed onnx's "
                         f"newest), got {opset}")
    if isinstance(batch_dim, bool) or not isinstance(batch_dim, (str, int, np.integer)) or \
            (isinstance(batch_dim, str) and not batch_dim) or \
            (not isinstance(batch_dim, str) and batch_dim < 1):
        raise TypeError(f"batch_dim must be a non-empty str (a dynamic dimension) or a positive "
                        f"int, got {batch_dim!r}")
    unit = _output_unit(with_output_unit)

    b = _Builder(onnx, model, int(opset))
    if isinstance(model, Graph) and type(model) is not Residual:
        inputs, outputs = b.graph_io(model)
    else:
        b.used.update(("x", "y"))
        inputs = [("x", model.in_features)]
        outputs = [("y", b.module(model, "x", ""), model.out_features)]
    graph_outputs = []
    for name, value, width in outputs:
        if unit is not None:
            rule = unit if unit != "auto" else ("sigmoid" if width == 1 else "softmax")
            value = b.op("Sigmoid", [value], name) if rule == "sigmoid" else \
                b.op("Softmax", [value], name, axis=1)
        graph_outputs.append((name, value, width))
    proto = b.finish(inputs, graph_outputs, batch_dim)
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto


def _output_unit(unit: Any) -> Any:
    """None, "auto", "softmax" or "sigmoid" for export_onnx's with_output_unit."""
    if unit is False or unit is None:
        return None
    if unit is True:
        return "auto"
    if isinstance(unit, str) and unit.lower() in ("softmax", "sigmoid"):
        return unit.lower()
    if isinstance(unit, Loss):
        unit = type(unit)
    if isinstance(unit, type) and issubclass(unit, Loss):
        return "softmax" if issubclass(unit, SoftmaxCrossEntropy) else (
            "sigmoid" if issubclass(unit, SigmoidBCE) else None)
    raise ValueError(f"with_output_unit must be False, True, 'softmax', 'sigmoid' or a fastprop "
                     f"loss, got {unit!r}")


def _array(v: Any) -> Any:
    """A parameter's or buffer's values as an ndarray (a Parameter, an array, a scalar)."""
    if isinstance(v, nn.Parameter):
        return v.data
    return np.asarray(v)


def _act_param(m: Any, name: Any) -> Any:
    """An activation's constructor argument (an attribute, or its params dict)."""
    if hasattr(m, name):
        return float(getattr(m, name))
    return float(m.params[name])


class _Builder:
    """Collects ONNX nodes and initializers; ``module(m, x, path)`` emits m applied to the
    tensor named x and returns the name of its output."""

    def __init__(self, onnx: Any, model: Any, opset: Any) -> None:
        self.onnx, self.opset = onnx, opset
        self.dtype = np.dtype(model.dtype or np.float32)
        self.elem = onnx.helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.used = set()
        self.consts: dict[int, Any] = {}  # id of a Parameter or buffer -> its initializer
        self.param_names = {id(p): name for name, p in model.named_parameters()}
        for name in self.param_names.values():
            self.used.add(name)

    # ------------------------------------------------------------ names and constants
    def fresh(self, hint: Any) -> Any:
        name, k = hint, 1
        while name in self.used:
            name, k = f"{hint}_{k}", k + 1
        self.used.add(name)
        return name

    def tensor(self, value: Any, hint: Any, key: Any = None) -> Any:
        """An initializer of the model's dtype; key (an object) makes it shared by identity."""
        if key is not None and id(key) in self.consts:
            return self.consts[id(key)]
        name = self.param_names.get(id(key)) if key is not None else None
        name = name or self.fresh(hint)
        arr = np.ascontiguousarray(np.asarray(value, dtype=self.dtype))
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        if key is not None:
            self.consts[id(key)] = name
        return name

    def param(self, p: Any, hint: Any) -> Any:
        return self.tensor(_array(p), hint, key=p)

    def scalar(self, value: Any, hint: Any) -> Any:
        return self.tensor(np.asarray(value, self.dtype), hint)

    def op(self, op_type: Any, inputs: Any, hint: Any, **attrs: Any) -> Any:
        out = self.fresh(f"{hint}/{op_type}" if hint else op_type)
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out],
                                                     name=out, **attrs))
        return out

    def finish(self, inputs: Any, outputs: Any, batch_dim: Any) -> Any:
        helper = self.onnx.helper
        def info(name: Any, width: Any) -> Any:
            dims = [batch_dim if isinstance(batch_dim, str) else int(batch_dim),
                    width if width is not None else f"{name}_features"]
            return helper.make_tensor_value_info(name, self.elem, dims)
        graph_outputs, taken = [], set()
        for name, value, width in outputs:
            # every output its own tensor under its own name (an output may be an input, or
            # the same node as another output: "y", "y_1")
            name = name if name not in taken else self.fresh(name)
            taken.add(name)
            self.nodes.append(helper.make_node("Identity", [value], [name], name=f"{name}/output"))
            graph_outputs.append(info(name, width))
        body = helper.make_graph(self.nodes, "fastprop", [info(n, w) for n, w in inputs],
                                  graph_outputs, self.inits)
        opsets = [helper.make_opsetid("", self.opset)]
        from . import __version__
        return helper.make_model(body, opset_imports=opsets, producer_name="fastprop",
                                 producer_version=__version__,
                                 ir_version=helper.find_min_ir_version_for(opsets))

    # ------------------------------------------------------------ graphs
    def graph_io(self, g: Any) -> Any:
        """The top-level graph's inputs [(name, width)] and outputs [(name, value, width)]."""
        nodes, outs = _graph_nodes(g)
        self.used.update(g.input_names + g.output_names)
        values = self.graph_body(g, {name: name for name in g.input_names}, "")
        width = {name: w for name, _, _, w in nodes}
        inputs = [(n, width[n]) for n in g.input_names]
        outputs = [(nodes[i][0], v, nodes[i][3]) for i, v in zip(outs, values)]
        return inputs, outputs

    def graph_body(self, g: Any, given: Any, path: Any) -> Any:
        """Emits g's nodes in topological order; given maps input names to tensors. Returns
        the tensors of g's outputs."""
        nodes, outs = _graph_nodes(g)
        value: list[Any] = []
        for name, module, inputs, _ in nodes:
            xs = [value[j] for j in inputs]
            if module is None:
                value.append(given[name])
            elif isinstance(module, Merge):
                value.append(self.merge(module, xs, path + name))
            else:
                value.append(self.module(module, xs[0], path + name))
        return [value[i] for i in outs]

    def merge(self, m: Any, xs: Any, path: Any) -> Any:
        kind = type(m)
        if kind is Add:  # left to right, as fastprop sums
            y = xs[0]
            for x in xs[1:]:
                y = self.op("Add", [y, x], path)
            return y
        if kind is Concat:
            return self.op("Concat", xs, path, axis=1)
        if kind is Mul:
            return self.op("Mul", xs, path)
        raise TypeError(f"export_onnx cannot export the merge node {kind.__name__} at "
                        f"{path!r}: it exports Add, Concat and Mul")

    # ------------------------------------------------------------ modules
    def module(self, m: Any, x: Any, path: Any) -> Any:
        export = _EXPORTERS.get(type(m).__name__)
        if export is None or _module_class(type(m).__name__) is not type(m):
            where = f" at {path!r}" if path else ""
            known = sorted(n for n in _EXPORTERS if _module_class(n))
            raise TypeError(f"export_onnx cannot export {type(m).__name__}{where}: it exports "
                            f"the built-in modules {known} (a Python Module has no ONNX form)")
        return export(self, m, x, path)


def _module_class(name: Any) -> Any:
    """The fastprop class of this name, if this build has it (LayerNorm, ... may be absent)."""
    return getattr(nn, name, None) or getattr(graph, name, None) or getattr(layers, name, None)


def _graph_nodes(g: Any) -> Any:
    """A built Graph's nodes in topological order, [(name, module or None for an input, input
    positions, width)], and its outputs' positions: the one place that reads Graph's plan."""
    nodes = [(s.name, None if s.kind == "input" else s.module, list(s.inputs), s.width)
             for s in g._steps]
    return nodes, list(g._outputs)


def _child(path: Any, name: Any) -> Any:
    return f"{path}.{name}" if path else str(name)


# ---------------------------------------------------------------- one exporter per module

def _linear(b: Any, m: Any, x: Any, path: Any) -> Any:
    ins = [x, b.param(m.weight, f"{path}.weight")]
    if m.bias is not None:
        ins.append(b.param(m.bias, f"{path}.bias"))
    return b.op("Gemm", ins, path, transB=1)


def _low_rank_linear(b: Any, m: Any, x: Any, path: Any) -> Any:
    h = b.op("Gemm", [x, b.param(m.U, f"{path}.U")], path, transB=1)
    ins = [h, b.param(m.V, f"{path}.V")]
    if m.bias is not None:
        ins.append(b.param(m.bias, f"{path}.bias"))
    return b.op("Gemm", ins, path, transB=1)


def _sequential(b: Any, m: Any, x: Any, path: Any) -> Any:
    if len(m) == 0:
        return b.op("Identity", [x], path)
    for i, layer in enumerate(m):
        x = b.module(layer, x, _child(path, i))
    return x


def _graph(b: Any, m: Any, x: Any, path: Any) -> Any:
    if len(m.input_names) != 1 or len(m.output_names) != 1:
        raise TypeError(f"export_onnx: the Graph at {path!r} is a node of another model, so it "
                        f"needs one input and one output, not {m.input_names} → {m.output_names}")
    return b.graph_body(m, {m.input_names[0]: x}, path + "." if path else "")[0]


def _elementwise(op_type: Any) -> Any:
    return lambda b, m, x, path: b.op(op_type, [x], path)


def _leaky_relu(b: Any, m: Any, x: Any, path: Any) -> Any:
    slope = _act_param(m, "negative_slope")
    if float(np.float32(slope)) == float(b.dtype.type(slope)):  # the float attribute is exact
        return b.op("LeakyRelu", [x], path, alpha=slope)
    return b.op("PRelu", [x, b.tensor([slope], f"{path}.negative_slope")], path)


def _prelu(b: Any, m: Any, x: Any, path: Any) -> Any:
    return b.op("PRelu", [x, b.param(m.weight, f"{path}.weight")], path)


def _silu(b: Any, m: Any, x: Any, path: Any) -> Any:
    return b.op("Mul", [x, b.op("Sigmoid", [x], path)], path)


def _log1p(b: Any, t: Any, path: Any) -> Any:
    """log1p(t) for t ≥ 0: log(u)·t/(u − 1) with u = 1 + t (Goldberg), t itself where u = 1."""
    one = b.scalar(1, f"{path}.one")
    u = b.op("Add", [one, t], path)
    d = b.op("Sub", [u, one], path)
    ratio = b.op("Div", [b.op("Mul", [b.op("Log", [u], path), t], path), d], path)
    return b.op("Where", [b.op("Equal", [d, b.scalar(0, f"{path}.zero")], path), t, ratio], path)


def _softplus(b: Any, m: Any, x: Any, path: Any) -> Any:
    beta, threshold = _act_param(m, "beta"), _act_param(m, "threshold")
    bx = b.op("Mul", [x, b.scalar(beta, f"{path}.beta")], path)
    t = b.op("Exp", [b.op("Neg", [b.op("Abs", [bx], path)], path)], path)
    sp = b.op("Div", [b.op("Add", [b.op("Relu", [bx], path), _log1p(b, t, path)], path),
                      b.scalar(beta, f"{path}.beta")], path)
    above = b.op("Greater", [bx, b.scalar(threshold, f"{path}.threshold")], path)
    return b.op("Where", [above, x, sp], path)


def _poly(b: Any, z: Any, coeffs: Any, path: Any) -> Any:
    """Σ c_k z^(n−k) by Horner's rule (coeffs from the highest power down)."""
    y = b.scalar(coeffs[0], f"{path}.c")
    for c in coeffs[1:]:
        y = b.op("Add", [b.op("Mul", [y, z], path), b.scalar(c, f"{path}.c")], path)
    return y


def _phi64(b: Any, x: Any, path: Any) -> Any:
    """Φ(x) = ½(1 + erf(x/√2)) for |x|/√2 < 1, else ½ erfc(|x|/√2) mirrored: Cephes' ndtr."""
    s = b.op("Mul", [x, b.scalar(np.sqrt(0.5), f"{path}.sqrt_half")], path)
    z = b.op("Abs", [s], path)
    # each branch on clipped arguments, so the one Where drops holds no inf or NaN
    sc = b.op("Clip", [s, b.scalar(-1, f"{path}.lo"), b.scalar(1, f"{path}.hi")], path)
    sc2 = b.op("Mul", [sc, sc], path)
    erf = b.op("Div", [b.op("Mul", [sc, _poly(b, sc2, _ERF_T, path)], path),
                       _poly(b, sc2, _ERF_U, path)], path)
    half = b.scalar(0.5, f"{path}.half")
    inner = b.op("Add", [half, b.op("Mul", [half, erf], path)], path)
    zc = b.op("Clip", [z, b.scalar(1, f"{path}.lo"), b.scalar(40, f"{path}.hi")], path)
    mid = b.op("Div", [_poly(b, zc, _ERFC_P, path), _poly(b, zc, _ERFC_Q, path)], path)
    far = b.op("Div", [_poly(b, zc, _ERFC_R, path), _poly(b, zc, _ERFC_S, path)], path)
    eight = b.scalar(8, f"{path}.eight")
    ratio = b.op("Where", [b.op("Less", [zc, eight], path), mid, far], path)
    gauss = b.op("Exp", [b.op("Neg", [b.op("Mul", [zc, zc], path)], path)], path)
    q = b.op("Mul", [half, b.op("Mul", [gauss, ratio], path)], path)      # Φ(−|x|)
    zero = b.scalar(0, f"{path}.zero")
    outer = b.op("Where", [b.op("Less", [x, zero], path), q,
                           b.op("Sub", [b.scalar(1, f"{path}.one"), q], path)], path)
    return b.op("Where", [b.op("Less", [z, b.scalar(1, f"{path}.one")], path), inner, outer], path)


def _gelu(b: Any, m: Any, x: Any, path: Any) -> Any:
    if b.dtype == np.float64:
        return b.op("Mul", [x, _phi64(b, x, path)], path)
    erf = b.op("Erf", [b.op("Mul", [x, b.scalar(np.sqrt(0.5), f"{path}.sqrt_half")], path)], path)
    phi = b.op("Mul", [b.scalar(0.5, f"{path}.half"),
                       b.op("Add", [b.scalar(1, f"{path}.one"), erf], path)], path)
    return b.op("Mul", [x, phi], path)


def _dropout(b: Any, m: Any, x: Any, path: Any) -> Any:
    return b.op("Identity", [x], path)   # inference: no units dropped, no scaling


def _features(m: Any, what: Any) -> Any:
    """The one normalized width of a LayerNorm over (batch, features) input."""
    shape = m.normalized_shape
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    if len(shape) != 1:
        raise TypeError(f"export_onnx: {what} normalizes over {shape}: fastprop's input is "
                        f"(batch, features)")
    return int(shape[0])


def _written_out(b: Any) -> Any:
    """Normalizations as elementary operators rather than ONNX's, in float64: ONNX's epsilon
    attribute is a float32, and ONNX Runtime's LayerNormalization takes the variance as
    E[x²] − E[x]²."""
    return b.dtype == np.float64


def _mean(b: Any, x: Any, axis: Any, path: Any) -> Any:
    """The mean along axis (0: over the batch, 1: over the features), kept as a 2-D tensor."""
    if b.opset >= 18:  # axes became an input
        axes = b.fresh(f"{path}.axes")
        b.inits.append(b.onnx.numpy_helper.from_array(np.array([axis], np.int64), axes))
        return b.op("ReduceMean", [x, axes], path, keepdims=1)
    return b.op("ReduceMean", [x], path, axes=[axis], keepdims=1)


def _normalize(b: Any, x: Any, mean: Any, var: Any, eps: Any, scale: Any, shift: Any,
               path: Any) -> Any:
    """(x − mean)/√(var + eps) · scale + shift; mean and var None: x's own along axis 0 or 1
    (var = the mean of (x − mean)², two passes); scale and shift None: left out."""
    if isinstance(mean, int):
        axis = mean
        mean = _mean(b, x, axis, path)
        d = b.op("Sub", [x, mean], path)
        var = _mean(b, b.op("Mul", [d, d], path), axis, path)
    else:
        d = b.op("Sub", [x, mean], path)
    std = b.op("Sqrt", [b.op("Add", [var, b.scalar(eps, f"{path}.eps")], path)], path)
    y = b.op("Div", [d, std], path)
    if scale is not None:
        y = b.op("Mul", [y, scale], path)
    if shift is not None:
        y = b.op("Add", [y, shift], path)
    return y


def _layer_norm(b: Any, m: Any, x: Any, path: Any) -> Any:
    n = _features(m, f"the LayerNorm at {path!r}")
    affine = getattr(m, "elementwise_affine", True)
    scale = b.param(m.weight, f"{path}.weight") if affine and m.weight is not None else None
    shift = b.param(m.bias, f"{path}.bias") if affine and m.bias is not None else None
    if _written_out(b) or b.opset < 17:
        return _normalize(b, x, 1, None, float(m.eps), scale, shift, path)
    ins = [x, scale if scale is not None else b.tensor(np.ones(n), f"{path}.ones")]
    if shift is not None:
        ins.append(shift)
    return b.op("LayerNormalization", ins, path, axis=-1, epsilon=float(m.eps))


def _batch_norm(b: Any, m: Any, x: Any, path: Any) -> Any:
    n, eps = int(m.num_features), float(m.eps)
    scale = b.param(m.weight, f"{path}.weight") if m.affine else None
    shift = b.param(m.bias, f"{path}.bias") if m.affine else None
    if not m.track_running_stats or m.running_mean is None:
        # no running statistics: the batch's own, at inference too (as PyTorch does)
        return _normalize(b, x, 0, None, eps, scale, shift, path)
    mean = b.tensor(_array(m.running_mean), f"{path}.running_mean", key=m.running_mean)
    var = b.tensor(_array(m.running_var), f"{path}.running_var", key=m.running_var)
    if _written_out(b):
        return _normalize(b, x, mean, var, eps, scale, shift, path)
    scale = scale if scale is not None else b.tensor(np.ones(n), f"{path}.ones")
    shift = shift if shift is not None else b.tensor(np.zeros(n), f"{path}.zeros")
    return b.op("BatchNormalization", [x, scale, shift, mean, var], path, epsilon=eps)


_EXPORTERS = {
    "Linear": _linear, "LowRankLinear": _low_rank_linear, "Sequential": _sequential,
    "Graph": _graph, "Residual": _graph,
    "Identity": _elementwise("Identity"), "ReLU": _elementwise("Relu"),
    "Sigmoid": _elementwise("Sigmoid"), "Tanh": _elementwise("Tanh"), "Abs": _elementwise("Abs"),
    "Cos": _elementwise("Cos"), "LeakyReLU": _leaky_relu, "PReLU": _prelu, "SiLU": _silu,
    "Softplus": _softplus, "GELU": _gelu,
    "Dropout": _dropout, "LayerNorm": _layer_norm, "BatchNorm1d": _batch_norm,
}
