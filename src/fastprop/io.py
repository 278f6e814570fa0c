"""save / load (one .npz: the architecture as JSON and the parameters), and gradcheck."""
from __future__ import annotations
import copy
import json
import os
import tempfile

import numpy as np

from . import graph, layers, nn, registry
from typing import TYPE_CHECKING, Any
from numpy.typing import ArrayLike, NDArray, DTypeLike

if TYPE_CHECKING:  # for annotations only: no import cycle at run time
    from .losses import Loss
    from .nn import Module

__all__ = ["save", "load", "gradcheck", "architecture", "build"]

FORMAT = "fastprop-model"
VERSION = 1
# every activation, layer and container of the registry, by its save/load type name
_BUILDABLE = {a.cls: getattr(nn, a.cls) for a in registry.ACTIVATIONS}
_MODULES = {"nn": nn, "graph": graph, "layers": layers}
_BUILDABLE.update({l.cls: getattr(_MODULES[l.module], l.cls) for l in registry.LAYERS})


def architecture(module: Module) -> dict[str, Any]:
    """The module tree as JSON-able data: {"type": ..., "args": {...}, "layers": [...]}.

    A Graph is {"type": "Graph", "inputs": [{"name", "width"}], "modules": [...],
    "nodes": [{"name", "module": index into modules, "inputs": [names]}], "outputs": [names]}:
    nodes in the order they were added, each module once (a shared module is one entry
    that several nodes name). A Residual is {"type": "Residual", "module": ...}.

    Parameters
    ----------
    module : Module
        A model of fastprop's built-in modules (a user's own Module has no description).

    Returns
    -------
    dict
        JSON-able data that :func:`build` turns back into an equal model (without the
        parameters' values).

    Raises
    ------
    TypeError
        If the model holds a module that cannot be described.

    Examples
    --------
    >>> import fastprop as fp
    >>> from fastprop.io import architecture, build
    >>> arch = architecture(fp.Sequential(fp.Linear(3, 2, rng=0), fp.Tanh()))
    >>> arch["type"], [layer["type"] for layer in arch["layers"]]
    ('Sequential', ['Linear', 'Tanh'])
    >>> build(arch)(fp.datasets.xor()[0][:, [0, 1, 1]]).shape
    (4, 2)
    """
    kind = type(module).__name__
    if _BUILDABLE.get(kind) is not type(module):
        raise TypeError(f"cannot save a {kind}: save supports {sorted(_BUILDABLE)}")
    if isinstance(module, nn.Sequential):
        return {"type": kind, "layers": [architecture(m) for m in module.layers]}
    if isinstance(module, graph.Residual):
        return {"type": kind, "module": architecture(module.module)}
    if isinstance(module, graph.Graph):
        inputs: list[Any] = []
        nodes: list[Any] = []
        modules: list[Any] = []
        index: dict[Any, Any] = {}
        for name, kind_, what, refs in module._specs:
            if kind_ == "input":
                inputs.append({"name": name, "width": what})
                continue
            origin = module._origin[name]
            if origin not in index:
                index[origin] = len(modules)
                modules.append(architecture(dict(module.named_children())[origin]))
            nodes.append({"name": name, "module": index[origin], "inputs": list(refs)})
        return {"type": kind, "inputs": inputs, "modules": modules, "nodes": nodes,
                "outputs": module.output_names}
    return {"type": kind, "args": module._config()}


def _graph_parts(arch: Any) -> Any:
    """The checked fields of a Graph description."""
    inputs, modules, nodes = arch.get("inputs"), arch.get("modules"), arch.get("nodes")
    outputs = arch.get("outputs")
    if not all(isinstance(v, list) for v in (inputs, modules, nodes, outputs)):
        raise ValueError("a Graph description needs the lists inputs, modules, nodes, outputs")
    for node in nodes:
        if not isinstance(node, dict) or not isinstance(node.get("module"), int) or \
                not 0 <= node["module"] < len(modules) or not isinstance(node.get("inputs"), list):
            raise ValueError(f"bad graph node description {node!r:.200}")
    return inputs, modules, nodes, outputs


def build(arch: Any, dtype: DTypeLike | None = None) -> Module:
    """Return a new module built from :func:`architecture` data.

    Parameters
    ----------
    arch : dict
        A description written by :func:`architecture`.
    dtype : {np.float32, np.float64}, optional
        Overrides the stored dtype.

    Returns
    -------
    Module
        A new model of that architecture, freshly initialised.

    Raises
    ------
    ValueError
        If arch is not a description of a known module.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> from fastprop.io import architecture, build
    >>> arch = architecture(fp.Sequential(fp.Linear(3, 2, rng=0)))
    >>> build(arch, dtype=np.float64).dtype
    dtype('float64')
    """
    if not isinstance(arch, dict) or arch.get("type") not in _BUILDABLE:
        raise ValueError(f"unknown module description {arch!r:.200}")
    cls = _BUILDABLE[arch["type"]]
    if cls is nn.Sequential:
        return nn.Sequential(*[build(a, dtype) for a in arch.get("layers", [])])
    if cls is graph.Residual:
        return graph.Residual(build(arch.get("module"), dtype))
    if cls is graph.Graph:
        inputs, modules, nodes, outputs = _graph_parts(arch)
        built = [build(a, dtype) for a in modules]   # a shared module: one object, several nodes
        g = graph.Graph()
        for spec in inputs:
            g.input(spec["name"], spec.get("width"))
        for node in nodes:
            g.add(built[node["module"]], *node["inputs"], name=node["name"])
        return g.build(outputs=outputs)
    args = dict(arch.get("args", {}))
    if "dtype" in args and dtype is not None:
        args["dtype"] = str(np.dtype(dtype))
    return cls(**args)


def save(model: Module, path: str | os.PathLike[str]) -> None:
    """Write model to path (.npz) atomically.

    A temporary file in the same folder, then os.replace, so an interrupted save never
    destroys the previous file.

    Parameters
    ----------
    model : Module
        The model: its architecture (as JSON), parameters and buffers are saved.
    path : str or os.PathLike
        The file to write.

    Raises
    ------
    TypeError
        If the model holds a module that save cannot describe (a user's own Module).

    See Also
    --------
    load

    Examples
    --------
    >>> import os, tempfile, numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 2, rng=0), fp.Tanh())
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> fp.save(model, path)
    >>> again = fp.load(path)
    >>> x = np.ones((2, 3), np.float32)
    >>> np.array_equal(model(x), again(x))
    True
    """
    arch = json.dumps({"format": FORMAT, "version": VERSION, "model": architecture(model)})
    arrays = {"__architecture__": np.array(arch)}
    for name, p in model.named_parameters():
        arrays["param:" + name] = p.data
    for name, b in model.named_buffers():   # BatchNorm1d's running statistics
        arrays["buffer:" + name] = b
    savez_atomic(path, arrays)


def savez_atomic(path: str | os.PathLike[str], arrays: Any) -> Any:
    """np.savez(path, **arrays) through a temporary file in the same folder and os.replace."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fastprop-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600; keep the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _file_mode(path: Any) -> Any:
    """The existing file's permissions, or what open() would give a new file (0666 & ~umask)."""
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _parameter_shapes(arch: Any, prefix: str = "") -> Any:
    """{name: shape} that architecture data declares, checked before anything is built."""
    kind, args = arch.get("type"), arch.get("args", {})
    if kind == "Sequential":
        shapes = {}
        for i, a in enumerate(arch.get("layers", [])):
            if not isinstance(a, dict):
                raise ValueError(f"layer {i} is not a module description")
            shapes.update(_parameter_shapes(a, f"{prefix}{i}."))
        return shapes
    if kind == "Residual":
        return _parameter_shapes(arch.get("module"), prefix + "module.")
    if kind == "Graph":
        _, modules, nodes, _ = _graph_parts(arch)
        shapes, named = {}, set()
        for node in nodes:   # a module's parameters are named after its first node
            if node["module"] not in named:
                named.add(node["module"])
                shapes.update(_parameter_shapes(modules[node["module"]], f"{prefix}{node['name']}."))
        return shapes
    if kind == "Linear":
        n_in, n_out = int(args["in_features"]), int(args["out_features"])
        shapes = {prefix + "weight": (n_out, n_in)}
        if args.get("bias", True):
            shapes[prefix + "bias"] = (n_out,)
        return shapes
    if kind == "LowRankLinear":
        n_in, n_out, rank = int(args["in_features"]), int(args["out_features"]), int(args["rank"])
        shapes = {prefix + "U": (rank, n_in), prefix + "V": (n_out, rank)}
        if args.get("bias", True):
            shapes[prefix + "bias"] = (n_out,)
        return shapes
    if kind == "PReLU":
        return {prefix + "weight": (int(args.get("num_parameters", 1)),)}
    if kind == "LayerNorm" and args.get("elementwise_affine", True):
        shape = tuple(int(n) for n in args["normalized_shape"])
        return {prefix + "weight": shape, **({prefix + "bias": shape} if args.get("bias", True) else {})}
    if kind == "BatchNorm1d" and args.get("affine", True):
        shape = (int(args["num_features"]),)
        return {prefix + "weight": shape, prefix + "bias": shape}
    return {}


def load(path: str | os.PathLike[str]) -> Module:
    """Read a model written by save; any damaged or foreign file is a ValueError.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save`.

    Returns
    -------
    Module
        A new model with the saved architecture, dtype, parameters and buffers.

    Raises
    ------
    FileNotFoundError
        If path does not exist.
    ValueError
        If the file is damaged or was not written by save.

    See Also
    --------
    save

    Examples
    --------
    >>> import os, tempfile, numpy as np, fastprop as fp
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> fp.save(fp.Sequential(fp.Linear(3, 2, dtype=np.float64, rng=0)), path)
    >>> fp.load(path).dtype
    dtype('float64')
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "__architecture__" not in f.files:
                raise ValueError("no architecture record")
            meta = json.loads(str(f["__architecture__"]))
            params = {k[len("param:"):]: f[k] for k in f.files if k.startswith("param:")}
            buffers = {k[len("buffer:"):]: f[k] for k in f.files if k.startswith("buffer:")}
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError("not a fastprop model")
        if meta.get("version") != VERSION:
            raise ValueError(f"format version {meta.get('version')} (this fastprop reads {VERSION})")
        declared = _parameter_shapes(meta["model"])
        if set(declared) != set(params):
            raise ValueError(f"parameters {sorted(params)} do not match the architecture's "
                             f"{sorted(declared)}")
        for name, shape in declared.items():
            if params[name].shape != shape:
                raise ValueError(f"{name} has shape {params[name].shape}, the architecture "
                                 f"declares {shape}")
        model = build(meta["model"])
        model.load_state_dict({**params, **buffers})
    except Exception as e:  # a truncated zip can fail in zipfile, zlib, numpy or json
        raise ValueError(f"{path} is not a readable fastprop model file: "
                         f"{type(e).__name__}: {e}") from None
    return model


def gradcheck(model: Module, loss: Loss, x: ArrayLike, y: ArrayLike, eps: float = 1e-6,
              max_checks: int | None = None, seed: int = 0) -> float:
    """Maximum relative error between back-propagated and central-difference gradients.

    Runs on a float64 copy of the model (model itself is untouched). Every parameter
    is perturbed, or max_checks of them chosen at random. Two back-propagated gradients
    are checked, the worst reported: ``TrainStep``'s (the fused chain or the tape in C, what
    training runs) and the modules' own ``forward``/``backward`` (each module's hooks).

    Parameters
    ----------
    model : Module
        The model (any Module that save/load can rebuild).
    loss : Loss
        The loss J(model(x), y).
    x : array of shape (B, in_features)
        The input.
    y : array
        The target, as ``loss`` takes it.
    eps : float, default 1e-6
        The step of the central differences.
    max_checks : int, optional
        How many parameter entries to check, chosen at random (None: all).
    seed : int, default 0
        The seed of that choice.

    Returns
    -------
    float
        The largest relative error ``abs(a − n) / max(abs(a), abs(n), 1e-7)`` over the checked
        entries, a the back-propagated and n the numerical derivative.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 4, rng=0), fp.Tanh(), fp.Linear(4, 2, rng=1))
    >>> X = np.random.default_rng(0).standard_normal((8, 3))
    >>> y = np.array([0, 1] * 4)
    >>> fp.gradcheck(model, fp.SoftmaxCrossEntropy(), X, y) < 1e-6
    True
    """
    m64 = build(architecture(model), np.float64)
    m64.load_state_dict(model.state_dict())
    # the same modes, and every forward below draws the same dropout masks
    rngs = []
    for a, b in zip(model.modules(), m64.modules()):
        b.training = a.training
        if hasattr(a, "rng_state"):
            b.set_rng_state(a.rng_state())
            rngs.append((b, a.rng_state()))

    def rewind() -> None:
        for b, state in rngs:
            b.set_rng_state(state)
    loss = copy.deepcopy(loss)
    if isinstance(x, dict):   # the named inputs of a Graph
        x = {k: np.asarray(v, dtype=np.float64) for k, v in x.items()}
    elif isinstance(x, (tuple, list)):
        x = tuple(np.asarray(v, dtype=np.float64) for v in x)
    else:
        x = np.asarray(x, dtype=np.float64)
    from .optim import SGD   # train and optim build on this module
    from .train import TrainStep
    (data, grad), = nn.flat_runs(m64.parameters())
    rewind()   # TrainStep's gradient; an SGD step of lr 0 leaves the parameters as they are
    TrainStep(m64, loss, SGD(m64.parameters(), lr=0.0), stop_on_nonfinite=False)(x, y)
    fused = grad.copy()
    m64.zero_grad()
    rewind()
    out = m64.forward(x)
    loss(out, y)
    m64.backward(loss.backward())
    analytic = grad.copy()
    idx = np.arange(data.size)
    if max_checks is not None and max_checks < data.size:
        idx = np.random.default_rng(seed).choice(data.size, max_checks, replace=False)
    worst = 0.0
    for i in idx:  # one forward per perturbation: a test utility, not a hot path
        old = data[i]
        data[i] = old + eps
        rewind()
        jp = loss(m64.forward(x), y)
        data[i] = old - eps
        rewind()
        jm = loss(m64.forward(x), y)
        data[i] = old
        num = (jp - jm) / (2 * eps)
        for a in (fused[i], analytic[i]):
            worst = max(worst, abs(a - num) / max(abs(a), abs(num), 1e-7))
    return float(worst)
