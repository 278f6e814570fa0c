"""Modules: Parameter, Module, Linear, the activations, PReLU, Sequential.

A model owns ONE contiguous parameter buffer and ONE gradient buffer; every
``Parameter.data`` / ``.grad`` is a view into them, so an optimizer update is one
C call over the flat buffer. Workspaces for activations and gradients are
allocated once per batch size and reused. ``forward``/``backward`` return fresh
arrays (a later call never changes what an earlier one returned); the layer protocol's
``layer_forward``/``layer_backward`` (the hooks ``_forward``/``_backward`` a subclass defines)
pass workspaces along the chain. Each flat buffer is a :class:`FlatBuffer` with a version
that its holders check (see :class:`Module` for the protocol).

The activations (``Identity``, ``ReLU``, ``LeakyReLU(negative_slope=0.01)``, ``Abs``,
``Sigmoid``, ``Tanh``, ``Softplus(beta=1.0, threshold=20.0)``, ``Cos``, ``GELU``, ``SiLU``)
are made from the rows of ``fastprop.registry``, with PyTorch's definitions, parameter names,
defaults and positional order; each maps (batch, features) to the same shape and dtype.

Examples
--------
>>> import numpy as np, fastprop as fp
>>> x = np.array([[-1.0, 0.0, 2.0]], np.float32)
>>> fp.ReLU()(x)
array([[0., 0., 2.]], dtype=float32)
>>> fp.LeakyReLU(0.1)(x)
array([[-0.1,  0. ,  2. ]], dtype=float32)
>>> fp.Tanh()(x).round(4)
array([[-0.7616,  0.    ,  0.964 ]], dtype=float32)
>>> fp.Softplus(beta=2.0)
Softplus(beta=2.0, threshold=20.0)
"""
from __future__ import annotations
import threading

import numpy as np

from . import ops, registry
from typing import TYPE_CHECKING, Any, Iterator, Mapping
from numpy.typing import ArrayLike, DTypeLike, NDArray

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Parameter", "FlatBuffer", "BufferVersions", "Module", "Linear", "LowRankLinear", "Sequential", "Identity", "ReLU", "LeakyReLU",
           "PReLU", "Abs", "Sigmoid", "Tanh", "Softplus", "Cos", "GELU", "SiLU"]

FLOAT_DTYPES = (np.float32, np.float64)


def as_dtype(dtype: DTypeLike) -> np.dtype[Any]:
    """float32 or float64 as np.dtype; anything else is a TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt.type not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def as_input(x: ArrayLike, dtype: DTypeLike, name: str = "x") -> NDArray[Any]:
    """x as a C-contiguous array of dtype: real floating input is cast, anything else refused."""
    arr = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    if arr.dtype != dtype or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=dtype)
    return arr


def _copy_into(view: Any, value: Any, what: Any) -> Any:
    """Writes value into a view of the flat buffers (the same shape only)."""
    value = np.asarray(value)
    if value.shape != view.shape:
        raise ValueError(f"cannot assign shape {value.shape} to {what} of shape {view.shape}")
    view[...] = value


class FlatBuffer:
    """The contiguous ``data`` and ``grad`` arrays that some Parameters are views of (a model
    has one; a lone Parameter is its own).

    ``version`` increases whenever what a holder compiled from these arrays may have stopped
    being true: a parameter moved out of them into new buffers (``flatten_parameters``: the
    model was nested in another container, or copied), or the parameters were handed another
    model's guard. A holder (TrainStep, an optimizer, the inference cache) keeps a
    :class:`BufferVersions` of what it holds and compares it before each use: explicit
    ownership, O(buffers) per step, no global state.

    Parameters
    ----------
    data : ndarray of float32 or float64, shape (n,)
        The parameters' values, contiguous.
    grad : ndarray, shape (n,), of data's dtype
        Their gradients, laid out as data.
    """
    __slots__ = ("data", "grad", "version")

    def __init__(self, data: Any, grad: Any) -> None:
        self.data, self.grad, self.version = data, grad, 0

    def __repr__(self) -> str:
        return f"FlatBuffer(size={self.data.size}, dtype={self.data.dtype}, version={self.version})"


class BufferVersions:
    """What a holder of some parameters compiled against: each parameter's FlatBuffer, and
    the version of every distinct one.

    ``changed()`` (O(buffers), per step) says whether some version moved since; then
    ``moved()`` (O(parameters), rare) says whether a parameter really left its buffer (the
    holder recompiles, or refuses), else ``renew()`` records the new versions.

    Parameters
    ----------
    params : iterable of Parameter
        What the holder holds, in its order.
    """
    __slots__ = ("params", "flats", "buffers", "versions")

    def __init__(self, params: Any) -> None:
        self.params = list(params)
        self.flats = [p._flat for p in self.params]
        seen: dict[int, FlatBuffer] = {}
        for f in self.flats:
            seen.setdefault(id(f), f)
        self.buffers = list(seen.values())
        self.versions = [b.version for b in self.buffers]

    def changed(self) -> bool:
        """Whether some buffer's version moved since this was taken (or renewed)."""
        for b, v in zip(self.buffers, self.versions):
            if b.version != v:
                return True
        return False

    def moved(self) -> bool:
        """Whether some parameter is no longer a view of the buffer it was in."""
        return any(p._flat is not f for p, f in zip(self.params, self.flats))

    def renew(self) -> None:
        """Records the buffers' current versions (after a change that moved no parameter)."""
        self.versions = [b.version for b in self.buffers]


class Parameter:
    """A learnable array: ``data`` and ``grad`` are views into the model's flat buffers.

    Assigning ``p.data = value`` copies into the view (the shape must match), so the
    model and its optimizer keep seeing the same memory. ``p.buffer`` is the
    :class:`FlatBuffer` it is a view of, ``p.offset`` where it starts there.

    Parameters
    ----------
    data : array_like of float32 or float64
        The initial value (copied); its dtype must be float32 or float64.

    Raises
    ------
    TypeError
        If data's dtype is not float32 or float64.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> p = fp.Parameter(np.zeros((2, 3), np.float32))
    >>> p.shape, p.grad.shape
    ((2, 3), (2, 3))
    >>> p.data = np.ones((2, 3))
    >>> float(p.data.sum())
    6.0
    """

    def __init__(self, data: Any) -> None:
        data = np.array(data, dtype=as_dtype(np.asarray(data).dtype), copy=True, order="C")
        self._data = data
        self._grad = np.zeros_like(data)
        self._flat = FlatBuffer(data.reshape(-1), self._grad.reshape(-1))   # its own, alone
        self._offset = 0
        self._guard = None     # the lock of the model it belongs to (Module._share_guard)

    @property
    def data(self) -> Any:
        return self._data

    @data.setter
    def data(self, value: ArrayLike) -> None:
        _copy_into(self._data, value, "a parameter")

    @property
    def grad(self) -> Any:
        return self._grad

    @grad.setter
    def grad(self, value: ArrayLike) -> None:
        _copy_into(self._grad, value, "a gradient")

    shape = property(lambda self: self._data.shape)
    size = property(lambda self: self._data.size)
    dtype = property(lambda self: self._data.dtype)
    buffer = property(lambda self: self._flat, doc="The FlatBuffer this parameter is a view of.")
    offset = property(lambda self: self._offset, doc="Its first element's index in buffer.")
    guard = property(lambda self: self._guard,
                     doc="The lock of the model it belongs to (None: none), as Module.guard.")

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self._data.copy(), "grad": self._grad.copy()}

    def __setstate__(self, state: Any) -> None:
        self._data, self._grad = state["data"], state["grad"]
        self._flat = FlatBuffer(self._data.reshape(-1), self._grad.reshape(-1))
        self._offset, self._guard = 0, None


def flatten_parameters(params: Any) -> Any:
    """Moves params into one new data buffer and one grad buffer; each becomes a view. The
    buffers they leave get a new version (their holders find out at their next use)."""
    if not params:
        return None
    dtypes = {p.dtype for p in params}
    if len(dtypes) > 1:
        raise TypeError(f"one model has one dtype, got parameters of {sorted(map(str, dtypes))}")
    dtype = dtypes.pop()
    total = sum(p.size for p in params)
    data, grad = np.empty(total, dtype), np.empty(total, dtype)
    flat = FlatBuffer(data, grad)
    offset = 0
    left = {}
    for p in params:
        n = p.size
        data[offset:offset + n] = p._data.reshape(-1)
        grad[offset:offset + n] = p._grad.reshape(-1)
        p._data = data[offset:offset + n].reshape(p.shape)
        p._grad = grad[offset:offset + n].reshape(p.shape)
        left[id(p._flat)] = p._flat
        p._flat, p._offset = flat, offset
        offset += n
    for old in left.values():
        old.version += 1
    return data, grad


def flat_runs(params: Any) -> Any:
    """Groups params into runs that are consecutive in one flat buffer.

    Returns a list of (data view, grad view), one per run: one run for a model's
    ``parameters()``, so an optimizer touches all of them in one C call.
    """
    runs = []
    start = None
    for i, p in enumerate(params):
        if start is not None:
            q = params[i - 1]
            if p._flat is params[start]._flat and p._offset == q._offset + q.size:
                continue
            runs.append((start, i))
        start = i
    if start is not None:
        runs.append((start, len(params)))
    out = []
    for a, b in runs:
        first, last = params[a], params[b - 1]
        lo, hi = first._offset, last._offset + last.size
        out.append((first._flat.data[lo:hi], first._flat.grad[lo:hi]))
    return out


class Module:
    """Base class: ``y = m(x)``, ``gx = m.backward(gy)`` (accumulating into every ``.grad``).

    The layer protocol. A subclass defines the hooks ``_forward(x)`` (its output, in a
    workspace it owns; saves what the backward needs), ``_backward(g, need_input_grad)``
    (adds into its parameters' ``.grad``, returns ∂J/∂x or None; g is scratch),
    ``_output_like()``, ``_config()``, and for curvature ``r_supported``, ``_rforward``,
    ``_rbackward``; its constructor puts its Parameters in ``self._params`` (its children in
    ``self._children``), then calls ``flatten_parameters(self.parameters())`` and
    ``self._share_guard()``. Containers (Sequential, Graph) are Modules and call their
    children's hooks; the other modules (TrainStep and the tape, Closure, curvature,
    autodiff, distributed, io) call the public side only: ``layer_forward``,
    ``layer_backward``, ``layer_rforward``, ``layer_rbackward`` (the hooks, on workspaces,
    no copies), ``check_input``, ``r_workspace``, ``guard``/``exclusive()``,
    ``named_children()``, and each Parameter's ``buffer`` (a :class:`FlatBuffer` whose
    ``version`` tells a holder that what it compiled is stale).

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> class Square(fp.Module):
    ...     width_preserving = True
    ...     def _forward(self, x):
    ...         self._x, self._ready = x.copy(), True
    ...         return x * x
    ...     def _backward(self, g, need_input_grad):
    ...         return 2 * self._x * g
    ...     def _output_like(self):
    ...         return self._x
    >>> model = fp.Sequential(fp.Linear(2, 2, rng=0), Square())
    >>> model(np.ones((1, 2), np.float32)).shape
    (1, 2)
    """

    def __init__(self) -> None:
        self._params = {}     # name -> Parameter, in definition order
        self._children = {}   # name -> Module
        self._ready = False   # a forward has run since the last backward-invalidating event
        self._xin = None      # the public forward's copy of its input (kept for backward)
        self._busy = threading.Lock()  # one thread at a time: workspaces are shared state
        self._rws = {}        # workspaces of the R-operator pass (curvature), apart from the forward's
        self._rsaved = None   # what _rforward keeps for _rbackward
        self._buffers = {}    # name -> ndarray: state that is not learned (running statistics)
        self.training = True  # train()/eval(): Dropout and BatchNorm1d behave differently

    # -------------------------------------------------------------- the public pass
    def __call__(self, x: ArrayLike) -> NDArray[Any]:
        return self.forward(x)

    def forward(self, x: ArrayLike) -> NDArray[Any]:
        """Returns f(x) as a new array of the model's dtype; x is (batch, in_features)."""
        with self.exclusive():
            if not self.training:   # forward-only on the tape (fastprop.infer)
                y = self._tape_forward(x)
                if y is not None:
                    return y
            return self._public_forward(x)

    _replay = None   # the input of an eval-mode forward run on the tape (see _tape_forward)
    _xkeep = None    # its copies of the caller's arrays

    def _tape_forward(self, x: Any) -> Any:
        """The output on the tape (None where the modular path runs). A backward then needs
        the modules' own saved state: it first runs the modular forward again on the kept
        input (_replay), in eval mode as this one."""
        from . import infer   # infer builds on plan, which builds on this module
        if infer.runner(self) is None:
            return None
        xs = self._check_input(x)
        xs = list(xs) if isinstance(xs, list) else [xs]
        given = x if isinstance(x, (list, tuple)) else list(x.values()) if isinstance(x, dict) \
            else [x]
        keep = self._xkeep if self._xkeep is not None and len(self._xkeep) == len(xs) else \
            [None] * len(xs)
        for k, a in enumerate(xs):  # the caller's own arrays: keep copies for a backward
            if any(a is b for b in given):
                if keep[k] is None or keep[k].shape != a.shape or keep[k].dtype != a.dtype:
                    keep[k] = np.empty_like(a)
                np.copyto(keep[k], a)
                xs[k] = keep[k]
        y = infer.forward(self, xs)
        if y is not None:
            self._xkeep = keep
            self._replay = xs if len(xs) > 1 else xs[0]
        return y

    def _replay_forward(self) -> Any:
        """Before a backward: the modular forward of an eval-mode forward that ran on the tape."""
        if self._replay is not None:
            x, self._replay = self._replay, None
            with evaluating(self):
                self._forward(x)

    # -------------------------------------------------------------- the layer protocol
    # What other modules call; each delegates to the hook a subclass defines.
    def layer_forward(self, x: Any) -> Any:
        """The hook ``_forward``: f(x) into this module's workspace (valid until its next
        pass), keeping what ``layer_backward`` needs. x is checked (``check_input``)."""
        return self._forward(x)

    def layer_backward(self, g: Any, need_input_grad: bool) -> Any:
        """The hook ``_backward``: ∂J/∂x (None when not need_input_grad, if the module skips
        it) from ∂J/∂y = g of the last ``layer_forward``; ADDS into every ``.grad``. g is
        scratch: the module may overwrite it."""
        return self._backward(g, need_input_grad)

    def layer_rforward(self, x: Any, rx: Any, v: Any) -> Any:
        """The hook ``_rforward``: (y, R{y}) for the input moving by rx and the parameters
        by v (a dict Parameter → array), in the R pass's own workspaces."""
        return self._rforward(x, rx, v)

    def layer_rbackward(self, g: Any, rg: Any, v: Any, hv: Any, need_input_grad: bool) -> Any:
        """The hook ``_rbackward``: (∂J/∂x, R{∂J/∂x}); ADDS R{∂J/∂θ} into hv[p]."""
        return self._rbackward(g, rg, v, hv, need_input_grad)

    def check_input(self, x: Any) -> Any:
        """x as this module's forward takes it (contiguous, of its dtype, the width checked);
        several inputs (a Graph's) as a list. TypeError/ValueError naming x otherwise."""
        return self._check_input(x)

    def r_workspace(self, key: Any, shape: Any, dtype: Any) -> Any:
        """A workspace of the R pass kept on this module per key (reallocated when the shape
        or dtype changes): for callers that run R passes through it (curvature, autodiff)."""
        return self._rbuf(key, shape, dtype)

    @property
    def guard(self) -> Any:
        """The lock every module and parameter of this model shares (see ``exclusive``); a
        runner that holds it for a whole step takes it without waiting."""
        return self._busy

    def named_children(self) -> list[tuple[str, Module]]:
        """[(name, module)] of the modules directly inside this one."""
        return list(self._children.items())

    def children(self) -> list[Module]:
        """The modules directly inside this one."""
        return list(self._children.values())

    def exclusive(self) -> Any:
        """A guard for one call: a second thread using this model meanwhile gets a clear
        RuntimeError instead of overwriting the first one's workspaces."""
        return _Exclusive([self._busy], type(self).__name__)

    def _share_guard(self) -> None:
        """This module's guard for every module and parameter inside it: they share its
        workspaces and buffers, so using a layer of a model counts as using the model. Their
        buffers get a new version (an optimizer caches the guards its step takes)."""
        for m in self.modules():
            m._busy = self._busy
        bumped = set()
        for p in self.parameters():
            p._guard = self._busy
            if id(p._flat) not in bumped:
                bumped.add(id(p._flat))
                p._flat.version += 1

    def _public_forward(self, x: Any) -> Any:
        xc = self._check_input(x)
        if xc is x:  # the caller's own array: keep a copy, so changing x cannot change backward
            if self._xin is None or self._xin.shape != xc.shape or self._xin.dtype != xc.dtype:
                self._xin = np.empty_like(xc)
            np.copyto(self._xin, xc)
            xc = self._xin
        self._replay = None
        return self._forward(xc).copy()

    def backward(self, grad_output: ArrayLike) -> NDArray[Any]:
        """Returns ∂J/∂x for ∂J/∂y = grad_output and ADDS ∂J/∂θ into every ``.grad``."""
        with self.exclusive():
            return self._public_backward(grad_output)

    def _public_backward(self, grad_output: Any) -> Any:
        self._replay_forward()
        if not self._ready:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        out = self._output_like()
        g = as_input(grad_output, out.dtype, "grad_output")
        if g.shape != out.shape:
            raise ValueError(f"grad_output has shape {g.shape}, expected {out.shape} "
                             f"(the shape of the last forward's output)")
        return self._backward(g.copy(), True).copy()

    def _check_input(self, x: Any) -> Any:
        dtype = self.dtype or (np.asarray(x).dtype if np.asarray(x).dtype.kind == "f" else np.float32)
        x = as_input(x, dtype)
        if x.ndim != 2:
            raise ValueError(f"x must be 2-D (batch, features), got shape {x.shape}")
        n_in = self.in_features
        if n_in is not None and x.shape[1] != n_in:
            raise ValueError(f"x has {x.shape[1]} features, expected {n_in}")
        return x

    # -------------------------------------------------------------- what subclasses define
    in_features = None        # None: any width
    out_features = None       # None: not fixed by this module
    width_preserving = False  # the output has the input's width (activations)

    def _forward(self, x: Any) -> Any:
        """f(x) into a workspace; saves what the backward needs. x is checked and contiguous."""
        raise NotImplementedError

    def _backward(self, g: Any, need_input_grad: Any) -> Any:
        """∂J/∂x from ∂J/∂y = g (g is scratch and may be overwritten); adds into .grad."""
        raise NotImplementedError

    def _output_like(self) -> Any:
        """The last forward's output (its shape and dtype)."""
        raise NotImplementedError

    def _config(self) -> Any:
        """The constructor arguments, as JSON-able values (for save/load)."""
        return {}

    # -------------------------------------------------------------- the R-operator (curvature)
    # Pearlmutter's R{·} = ∂/∂r (·)(θ + r v) at r = 0, for exact Hessian–vector products
    # (fastprop.curvature). A model is a chain or graph of modules, each of which maps
    # (x, R{x}) forward and (g, R{g}) backward; the traversal lives in the container
    # (Sequential here, Graph in fastprop.graph), which calls these two per module.
    # The pass keeps its own workspaces (self._rws): the ordinary forward's and every
    # .grad are left as they were.
    r_supported = False       # the module implements _rforward and _rbackward

    def _rforward(self, x: Any, rx: Any, v: Any) -> Any:
        """(y, ry): the forward at x and R{y}, for the input moving by rx (None: a fixed
        input, R{x} = 0) and the parameters by v (a dict Parameter → array of its shape).
        Keeps what _rbackward needs. ry is None when y moves with neither."""
        raise TypeError(f"{type(self).__name__} has no R-operator: Hessian–vector products "
                        f"support Linear, the activations of fastprop.nn, PReLU, Sequential and Graph")

    def _rbackward(self, g: Any, rg: Any, v: Any, hv: Any, need_input_grad: Any) -> Any:
        """(gx, rgx) from g = ∂J/∂y and rg = R{g} (both scratch, may be overwritten):
        gx = ∂J/∂x and rgx = R{gx}; ADDS R{∂J/∂θ} into hv[p] for each parameter p.
        g None gives the Gauss–Newton product (the terms of the first-order gradient
        dropped) and gx None. A Linear skips both (None, None) when need_input_grad
        is False, as its _backward does."""
        raise TypeError(f"{type(self).__name__} has no R-operator")

    def _rbuf(self, key: Any, shape: Any, dtype: Any) -> Any:
        """A workspace of the R pass, kept per key and reallocated when the shape changes."""
        buf = self._rws.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._rws[key] = np.empty(shape, dtype)
        return buf

    # -------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> Self:
        """Sets ``training`` on this module and every module inside it; returns self."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"mode must be a bool, got {type(mode).__name__}")
        self.training = bool(mode)
        for child in self._mode_children():
            child.train(mode)
        return self

    def eval(self) -> Self:
        """``train(False)``: Dropout is the identity, BatchNorm1d uses its running statistics."""
        return self.train(False)

    def _mode_children(self) -> Any:
        """The modules train() reaches from here (a Graph adds the copies of shared modules)."""
        return list(self._children.values())

    # -------------------------------------------------------------- parameters
    def named_parameters(self, prefix: str = "") -> list[tuple[str, Parameter]]:
        out = [(prefix + name, p) for name, p in self._params.items()]
        for cname, child in self._children.items():
            out += child.named_parameters(prefix + cname + ".")
        return out

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def modules(self) -> Any:
        """This module and every module inside it, depth first."""
        out = [self]
        for child in self._children.values():
            out += child.modules()
        return out

    def zero_grad(self) -> None:
        for _, grad in flat_runs(self.parameters()):
            grad.fill(0)

    @property
    def dtype(self) -> np.dtype[Any] | None:
        """The parameters' dtype (None for a module without parameters)."""
        params = self.parameters()
        return params[0].dtype if params else None

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def named_buffers(self, prefix: str = "") -> list[tuple[str, NDArray[Any]]]:
        """[(name, array)] of the buffers (BatchNorm1d's running statistics), as named_parameters."""
        out = [(prefix + name, b) for name, b in self._buffers.items() if b is not None]
        for cname, child in self._children.items():
            out += child.named_buffers(prefix + cname + ".")
        return out

    def buffers(self) -> list[NDArray[Any]]:
        return [b for _, b in self.named_buffers()]

    def state_dict(self) -> dict[str, Any]:
        """{name: copy}: each module's parameters, then its buffers, then its children's (torch's order)."""
        state = {name: p.data.copy() for name, p in self._params.items()}
        state.update((name, b.copy()) for name, b in self._buffers.items() if b is not None)
        for cname, child in self._children.items():
            state.update((cname + "." + k, v) for k, v in child.state_dict().items())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copies arrays into the parameters and buffers; checks every name and shape before
        writing any."""
        own = dict(self.named_parameters())
        own.update(self.named_buffers())
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
        arrays = {}
        for name, p in own.items():
            a = np.asarray(state[name])
            if a.shape != p.shape:
                raise ValueError(f"{name}: shape {a.shape} in state_dict, expected {p.shape}")
            if a.dtype.kind not in "fiu":
                raise TypeError(f"{name}: dtype {a.dtype} in state_dict is not a real number type")
            arrays[name] = a
        for name, p in own.items():
            (p.data if isinstance(p, Parameter) else p)[...] = arrays[name]

    def load_torch_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Loads a PyTorch state dict (torch tensors or arrays, by name) as load_state_dict
        does: every name and shape checked before anything is written."""
        from .pytorch import numpy_state_dict   # torch itself is not needed for arrays
        self.load_state_dict(numpy_state_dict(state_dict))

    # -------------------------------------------------------------- copies and printing
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_ready"] = False
        state["_xin"] = state["_replay"] = state["_xkeep"] = None
        state["_busy"] = None
        state["_rws"], state["_rsaved"] = {}, None
        for key in self._workspace_keys:
            state[key] = None
        return state

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state)
        params = self.parameters()
        # a deep copy or an unpickled model gets its own flat buffers again, and its own
        # guard; a shallow copy shares the original's parameters (as in PyTorch) and must
        # not move them, and shares their guard with them
        if len(flat_runs(params)) > 1:
            flatten_parameters(params)
            shared = None
        else:
            shared = next((p._guard for p in params if p._guard is not None), None)
        self._busy = shared or threading.Lock()
        self._share_guard()  # restored after its parts, a container hands them its guard

    _workspace_keys = ()

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._config().items() if k != "dtype")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


class evaluating:
    """``with evaluating(model):`` runs the block in eval mode, then gives every module
    (Graph copies of shared modules too) back the mode it had."""

    def __init__(self, model: Module) -> None:
        self.model = model

    def __enter__(self) -> Any:
        self.modes, stack = [], [self.model]
        while stack:
            m = stack.pop()
            self.modes.append((m, m.training))
            stack += m._mode_children()
        self.model.eval()
        return self.model

    def __exit__(self, *exc: Any) -> None:
        for m, mode in self.modes:
            m.training = mode


def busy_error(what: str) -> Any:
    """The error of a guard held by another thread; what names the model ("Sequential")."""
    return RuntimeError(
        f"this {what} is in use by another thread: one model must not be used from two "
        f"threads at once (give each thread its own copy.deepcopy)")


class _Exclusive:
    """Holds the guards (locks) of one call, without waiting for any of them: a lock that
    another thread holds is a RuntimeError, and nothing is left held."""
    __slots__ = ("locks", "what")

    def __init__(self, locks: Any, what: Any) -> None:
        self.locks, self.what = locks, what

    def __enter__(self) -> Any:
        for i, lock in enumerate(self.locks):
            if not lock.acquire(blocking=False):
                for held in self.locks[:i]:
                    held.release()
                raise busy_error(self.what)

    def __exit__(self, *exc: Any) -> None:
        for lock in self.locks:
            lock.release()


class Linear(Module):
    """``y = x Wᵀ + b`` with W of shape (out_features, in_features), as torch.nn.Linear.

    Parameters
    ----------
    in_features, out_features : int
        The widths of the input and the output (positive).
    bias : bool, default True
        Whether the layer adds a learnable bias b of shape (out_features,).
    dtype : numpy dtype, default float32
        float32 or float64; a model has one dtype.
    init : str, default "he_uniform"
        The weight's initialisation: "he_uniform", "he_normal", "xavier_uniform",
        "xavier_normal" or "lecun_normal".
    bias_init : float, default 0.0
        The bias's constant initial value (0.1 is a common choice before ReLU).
    rng : numpy.random.Generator or int, optional
        The generator (or its seed) the weight is drawn from.

    Raises
    ------
    ValueError
        If a width is not a positive integer or ``init`` is unknown.

    Notes
    -----
    Input ``x`` is (batch, in_features), the output (batch, out_features). ``weight`` and
    ``bias`` are :class:`Parameter` views into the model's one flat buffer.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> layer = fp.Linear(3, 2, rng=0)
    >>> layer.weight.shape, layer.bias.shape
    ((2, 3), (2,))
    >>> y = layer(np.ones((4, 3), np.float32))
    >>> y.shape, y.dtype
    ((4, 2), dtype('float32'))
    >>> np.allclose(y, np.ones((4, 3)) @ layer.weight.data.T + layer.bias.data)
    True
    """
    INITS = ("he_uniform", "he_normal", "xavier_uniform", "xavier_normal", "lecun_normal")
    _workspace_keys = ("_x", "_y", "_gx")

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: DTypeLike = np.float32, init: str = "he_uniform", bias_init: float = 0.0,
                 rng: np.random.Generator | int | None = None) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if init not in self.INITS:
            raise ValueError(f"unknown init {init!r}; expected one of {self.INITS}")
        dtype = as_dtype(dtype)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.bias_enabled, self.init, self.bias_init = bool(bias), init, float(bias_init)
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        fan_in, fan_out = self.in_features, self.out_features
        if init == "he_uniform":
            w = rng.uniform(-1, 1, (fan_out, fan_in)) * np.sqrt(6.0 / fan_in)
        elif init == "he_normal":
            w = rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)
        elif init == "xavier_uniform":
            w = rng.uniform(-1, 1, (fan_out, fan_in)) * np.sqrt(6.0 / (fan_in + fan_out))
        elif init == "xavier_normal":
            w = rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / (fan_in + fan_out))
        else:
            w = rng.standard_normal((fan_out, fan_in)) * np.sqrt(1.0 / fan_in)
        self._params["weight"] = Parameter(w.astype(dtype))
        if self.bias_enabled:
            self._params["bias"] = Parameter(np.full(fan_out, self.bias_init, dtype))
        self._x = self._y = self._gx = None
        flatten_parameters(self.parameters())
        self._share_guard()

    weight = property(lambda self: self._params["weight"])
    bias = property(lambda self: self._params.get("bias"))
    dtype = property(lambda self: self._params["weight"].dtype)

    def _forward(self, x: Any) -> Any:
        if self._y is None or self._y.shape[0] != x.shape[0]:
            self._y = np.empty((x.shape[0], self.out_features), self.dtype)
        b = self.bias.data if self.bias_enabled else None
        ops.dense_forward(x, self.weight.data, b, out=self._y)
        self._x, self._ready = x, True
        return self._y

    def _backward(self, g: Any, need_input_grad: Any) -> Any:
        gx = None
        if need_input_grad:
            if self._gx is None or self._gx.shape[0] != g.shape[0]:
                self._gx = np.empty((g.shape[0], self.in_features), self.dtype)
            gx = self._gx
        ops.dense_backward(g, self._x, self.weight.data, bias=self.bias_enabled,
                           input_grad=need_input_grad, grad_input=gx,
                           grad_weight=self.weight.grad,
                           grad_bias=self.bias.grad if self.bias_enabled else None,
                           accumulate=True, accumulate_input=False)
        return gx

    def _output_like(self) -> Any:
        return self._y

    r_supported = True

    def _rforward(self, x: Any, rx: Any, v: Any) -> Any:
        # y = x Wᵀ + b;  R{y} = x Vᵀ + v_b + R{x} Wᵀ
        shape = (x.shape[0], self.out_features)
        y, ry = self._rbuf("y", shape, x.dtype), self._rbuf("ry", shape, x.dtype)
        b = self.bias.data if self.bias_enabled else None
        ops.dense_forward(x, self.weight.data, b, out=y)
        ops.dense_forward(x, v[self.weight], v[self.bias] if self.bias_enabled else None, out=ry)
        if rx is not None:
            ops.gemm(rx, self.weight.data, trans_b=True, beta=1.0, out=ry)
        self._rsaved = (x, rx)
        return y, ry

    def _rbackward(self, g: Any, rg: Any, v: Any, hv: Any, need_input_grad: Any) -> Any:
        # Hv_W += R{g}ᵀ x + gᵀ R{x};  Hv_b += Σ R{g};  gx = g W;  R{gx} = R{g} W + g V
        x, rx = self._rsaved
        batch = rg.shape[0]
        rgx = self._rbuf("rgx", (batch, self.in_features), rg.dtype) if need_input_grad else None
        hv_w = hv[self.weight]
        ops.dense_backward(rg, x, self.weight.data, bias=self.bias_enabled,
                           input_grad=need_input_grad, grad_input=rgx, grad_weight=hv_w,
                           grad_bias=hv[self.bias] if self.bias_enabled else None,
                           accumulate=True, accumulate_input=False)
        gx = None
        if g is not None:
            if rx is not None:
                ops.gemm(g, rx, trans_a=True, beta=1.0, out=hv_w)
            if need_input_grad:
                gx = ops.gemm(g, self.weight.data, out=self._rbuf("gx", rgx.shape, rg.dtype))
                ops.gemm(g, v[self.weight], beta=1.0, out=rgx)
        return gx, rgx

    def _config(self) -> Any:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias_enabled, "dtype": str(self.dtype)}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias_enabled}"


class LowRankLinear(Module):
    """``y = x (V U)ᵀ + b``: a dense layer whose weight W = V U has rank ≤ rank.

    U is (rank, in_features) and V is (out_features, rank): rank·(in + out) weights instead
    of in·out. The forward is two GEMMs (h = x Uᵀ, then y = h Vᵀ + b, each one C call through
    the dense kernels) and the backward two more pairs, so it costs O(batch·rank·(in + out)).
    The initialisation gives W the variance of He's (U with variance 1/in, V with 2/rank).

    Parameters
    ----------
    in_features, out_features : int
        The widths of the input and the output (positive).
    rank : int
        The rank of the weight (positive).
    bias : bool, default True
        Whether the layer adds a learnable bias b of shape (out_features,).
    dtype : numpy dtype, default float32
        float32 or float64.
    bias_init : float, default 0.0
        The bias's constant initial value.
    rng : numpy.random.Generator or int, optional
        The generator (or its seed) U and V are drawn from.

    Raises
    ------
    ValueError
        If a width or the rank is not a positive integer.
    TypeError
        If dtype is not float32 or float64.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> layer = fp.LowRankLinear(6, 4, rank=2, rng=0)
    >>> layer.U.shape, layer.V.shape, layer.num_parameters()
    ((2, 6), (4, 2), 24)
    >>> x = np.ones((3, 6), np.float32)
    >>> W = layer.V.data @ layer.U.data
    >>> np.allclose(layer(x), x @ W.T + layer.bias.data, atol=1e-6)
    True
    """
    _workspace_keys = ("_x", "_h", "_y", "_gh", "_gx")

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 dtype: DTypeLike = np.float32, bias_init: float = 0.0,
                 rng: np.random.Generator | int | None = None) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features),
                        ("rank", rank)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        dtype = as_dtype(dtype)
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), int(rank)
        self.bias_enabled, self.bias_init = bool(bias), float(bias_init)
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        u = rng.standard_normal((self.rank, self.in_features)) * np.sqrt(1.0 / self.in_features)
        v = rng.standard_normal((self.out_features, self.rank)) * np.sqrt(2.0 / self.rank)
        self._params["U"] = Parameter(u.astype(dtype))
        self._params["V"] = Parameter(v.astype(dtype))
        if self.bias_enabled:
            self._params["bias"] = Parameter(np.full(self.out_features, self.bias_init, dtype))
        self._x = self._h = self._y = self._gh = self._gx = None
        flatten_parameters(self.parameters())

    U = property(lambda self: self._params["U"])
    V = property(lambda self: self._params["V"])
    bias = property(lambda self: self._params.get("bias"))
    dtype = property(lambda self: self._params["U"].dtype)

    @property
    def weight(self) -> Any:
        """W = V U, (out_features, in_features), as a new array."""
        return self.V.data @ self.U.data

    def _forward(self, x: Any) -> Any:
        batch = x.shape[0]
        if self._y is None or self._y.shape[0] != batch:
            self._h = np.empty((batch, self.rank), self.dtype)
            self._y = np.empty((batch, self.out_features), self.dtype)
        ops.dense_forward(x, self.U.data, None, out=self._h)
        b = self.bias.data if self.bias_enabled else None
        ops.dense_forward(self._h, self.V.data, b, out=self._y)
        self._x, self._ready = x, True
        return self._y

    def _backward(self, g: Any, need_input_grad: Any) -> Any:
        batch = g.shape[0]
        if self._gh is None or self._gh.shape[0] != batch:
            self._gh = np.empty((batch, self.rank), self.dtype)
        # ∇V += gᵀ h, ∇b += Σ g, g_h = g V; then ∇U += g_hᵀ x, ∇x = g_h U
        ops.dense_backward(g, self._h, self.V.data, bias=self.bias_enabled, grad_input=self._gh,
                           grad_weight=self.V.grad,
                           grad_bias=self.bias.grad if self.bias_enabled else None,
                           accumulate=True, accumulate_input=False)
        gx = None
        if need_input_grad:
            if self._gx is None or self._gx.shape[0] != batch:
                self._gx = np.empty((batch, self.in_features), self.dtype)
            gx = self._gx
        ops.dense_backward(self._gh, self._x, self.U.data, bias=False, input_grad=need_input_grad,
                           grad_input=gx, grad_weight=self.U.grad, accumulate=True,
                           accumulate_input=False)
        return gx

    def _output_like(self) -> Any:
        return self._y

    def _config(self) -> Any:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "rank": self.rank, "bias": self.bias_enabled, "dtype": str(self.dtype)}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"rank={self.rank}, bias={self.bias_enabled}"


class Activation(Module):
    """An elementwise activation: a C forward and a fused backward ``g ⊙ f′``, in place on g."""
    name = "identity"
    width_preserving = True
    _workspace_keys = ("_x", "_y")

    def __init__(self, **params: Any) -> None:
        super().__init__()
        self.params = params
        self._x = self._y = None
        # the derivative from the output alone: the input need not be kept
        self.from_output = registry.derivative_from_output(self.name,
                                                           params.get("negative_slope", 0.01))

    def _forward(self, x: Any) -> Any:
        if self._y is None or self._y.shape != x.shape or self._y.dtype != x.dtype:
            self._y = np.empty_like(x)
        ops.activation_forward(x, self.name, out=self._y, **self.params)
        self._x, self._ready = (None if self.from_output else x), True
        return self._y

    def _backward(self, g: Any, need_input_grad: Any) -> Any:
        return ops.activation_backward(g, self.name, x=self._x, y=self._y, out=g, **self.params)

    r_supported = True

    def _rforward(self, x: Any, rx: Any, v: Any) -> Any:
        # y = f(x);  R{y} = f′(x) ⊙ R{x}
        y = ops.activation_forward(x, self.name, out=self._rbuf("y", x.shape, x.dtype),
                                 **self.params)
        ry = None
        if rx is not None:
            ry = ops.activation_backward(rx, self.name, x=x, y=y,
                                         out=self._rbuf("ry", x.shape, x.dtype), **self.params)
        self._rsaved = (x, rx)
        return y, ry

    def _rbackward(self, g: Any, rg: Any, v: Any, hv: Any, need_input_grad: Any) -> Any:
        # gx = g ⊙ f′(x);  R{gx} = R{g} ⊙ f′(x) + g ⊙ f″(x) ⊙ R{x}, one fused pass, in place
        x, rx = self._rsaved
        if g is not None and rx is not None:
            return ops.activation_rbackward(g, rg, self.name, x=x, rx=rx, out=g, rout=rg,
                                            **self.params)
        rgx = ops.activation_backward(rg, self.name, x=x, out=rg, **self.params)
        gx = None if g is None else ops.activation_backward(g, self.name, x=x, out=g,
                                                            **self.params)
        return gx, rgx

    def _output_like(self) -> Any:
        return self._y

    def _config(self) -> Any:
        return dict(self.params)


def _activation(row: Any) -> Any:
    """The Activation subclass of a registry row: PyTorch's parameter names, defaults and
    positional order."""
    cls_name, act, defaults = row.cls, row.name, dict(row.params)

    def __init__(self: Any, *args: Any, **kw: Any) -> None:
        if len(args) > len(defaults):
            raise TypeError(f"{cls_name}() takes {len(defaults)} positional arguments, got {len(args)}")
        for k, v in zip(defaults, args):   # PyTorch's positional order: fp.LeakyReLU(0.1)
            if k in kw:
                raise TypeError(f"{cls_name}() got multiple values for argument {k!r}")
            kw[k] = v
        unknown = set(kw) - set(defaults)
        if unknown:
            raise TypeError(f"{cls_name}() got unexpected arguments {sorted(unknown)}")
        params = {k: float(kw.get(k, v)) for k, v in defaults.items()}
        if act == "softplus" and params["beta"] == 0:
            raise ValueError("Softplus beta must be nonzero")
        Activation.__init__(self, **params)
    return type(cls_name, (Activation,), {"name": act, "__init__": __init__, "__doc__": row.doc})


# Identity, ReLU, LeakyReLU, Abs, Sigmoid, Tanh, Softplus, Cos, GELU, SiLU: one per registry row
globals().update({row.cls: _activation(row) for row in registry.ACTIVATIONS})

if TYPE_CHECKING:  # the classes made above from the registry's rows, spelled out for type checkers
    class Identity(Activation):
        def __init__(self) -> None: ...
    class ReLU(Activation):
        def __init__(self) -> None: ...
    class LeakyReLU(Activation):
        def __init__(self, negative_slope: float = 0.01) -> None: ...
    class Abs(Activation):
        def __init__(self) -> None: ...
    class Sigmoid(Activation):
        def __init__(self) -> None: ...
    class Tanh(Activation):
        def __init__(self) -> None: ...
    class Softplus(Activation):
        def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None: ...
    class Cos(Activation):
        def __init__(self) -> None: ...
    class GELU(Activation):
        def __init__(self) -> None: ...
    class SiLU(Activation):
        def __init__(self) -> None: ...


class PReLU(Module):
    """``y = x if x > 0 else a·x`` with a learnable slope a: one, or one per feature.

    Parameters
    ----------
    num_parameters : int, default 1
        1 (one slope shared by every feature) or the number of features.
    init : float, default 0.25
        The slopes' initial value.
    dtype : numpy dtype, default float32
        float32 or float64.

    Raises
    ------
    ValueError
        If num_parameters is not a positive integer.
    TypeError
        If dtype is not float32 or float64.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> act = fp.PReLU(init=0.5)
    >>> act(np.array([[-2.0, 3.0]], np.float32))
    array([[-1.,  3.]], dtype=float32)
    """
    _workspace_keys = ("_x", "_y")

    def __init__(self, num_parameters: int = 1, init: float = 0.25,
                 dtype: DTypeLike = np.float32) -> None:
        super().__init__()
        if isinstance(num_parameters, bool) or not isinstance(num_parameters, (int, np.integer)) \
                or num_parameters < 1:
            raise ValueError(f"num_parameters must be a positive integer, got {num_parameters!r}")
        self.num_parameters, self.init = int(num_parameters), float(init)
        self._params["weight"] = Parameter(np.full(self.num_parameters, self.init, as_dtype(dtype)))
        self._x = self._y = None
        flatten_parameters(self.parameters())
        self._share_guard()

    weight = property(lambda self: self._params["weight"])
    width_preserving = True

    @property
    def in_features(self) -> Any:
        return None if self.num_parameters == 1 else self.num_parameters

    out_features = in_features

    def _forward(self, x: Any) -> Any:
        if self._y is None or self._y.shape != x.shape:
            self._y = np.empty_like(x)
        ops.prelu_forward(x, self.weight.data, out=self._y)
        self._x, self._ready = x, True
        return self._y

    def _backward(self, g: Any, need_input_grad: Any) -> Any:
        gx, _ = ops.prelu_backward(g, self._x, self.weight.data, out=g,
                                   grad_weight=self.weight.grad, accumulate=True)
        return gx

    r_supported = True

    def _rforward(self, x: Any, rx: Any, v: Any) -> Any:
        # y = x > 0 ? x : a x;  R{y} = x > 0 ? R{x} : a R{x} + x v_a
        y = ops.prelu_forward(x, self.weight.data, out=self._rbuf("y", x.shape, x.dtype))
        ry = ops.prelu_rforward(x, self.weight.data, v[self.weight], rx=rx,
                                out=self._rbuf("ry", x.shape, x.dtype))
        self._rsaved = (x, rx)
        return y, ry

    def _rbackward(self, g: Any, rg: Any, v: Any, hv: Any, need_input_grad: Any) -> Any:
        # gx = f′ g;  R{gx} = f′ R{g} + [x ≤ 0] v_a g;  Hv_a += Σ_{x ≤ 0} (R{g} x + g R{x})
        x, rx = self._rsaved
        gx, rgx, _ = ops.prelu_rbackward(g, rg, x, self.weight.data, v[self.weight], rx=rx,
                                         out=g, rout=rg, hv_weight=hv[self.weight],
                                         accumulate=True)
        return gx, rgx

    def _output_like(self) -> Any:
        return self._y

    def _config(self) -> Any:
        return {"num_parameters": self.num_parameters, "init": self.init, "dtype": str(self.dtype)}


class Sequential(Module):
    """Modules applied in order; the chain owns one flat parameter buffer.

    Parameters
    ----------
    *modules : Module
        The layers, applied first to last; each module may appear once.

    Raises
    ------
    TypeError
        If an argument is not a :class:`Module`.
    ValueError
        If a module appears twice.

    Notes
    -----
    ``model(x)`` maps (batch, in_features) to (batch, out_features) of the model's dtype;
    ``model.backward(gy)`` returns ∂J/∂x and accumulates into every parameter's ``grad``, as
    PyTorch does. Parameters are named "index.name" in definition order.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> model = fp.Sequential(fp.Linear(3, 4, rng=0), fp.ReLU(), fp.Linear(4, 2, rng=1))
    >>> [name for name, _ in model.named_parameters()]
    ['0.weight', '0.bias', '2.weight', '2.bias']
    >>> model.num_parameters()
    26
    >>> x = np.ones((5, 3), np.float32)
    >>> model(x).shape
    (5, 2)
    >>> model.backward(np.ones((5, 2), np.float32)).shape
    (5, 3)
    """

    def __init__(self, *modules: Any) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (list, tuple)):
            modules = tuple(modules[0])
        seen = set()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential takes Modules; argument {i} is {type(m).__name__}")
            for sub in m.modules():
                if id(sub) in seen:
                    raise ValueError(f"layer {i} uses a {type(sub).__name__} that appears earlier "
                                     f"in the model: a layer keeps its own activations, so each "
                                     f"place needs its own module")
                seen.add(id(sub))
            self._children[str(i)] = m
        self.layers = list(modules)
        # follow the width through the chain: every fixed input width must match
        width, source = None, None
        for i, m in enumerate(modules):
            n_in = m.in_features
            if n_in is not None and width is not None and n_in != width:
                raise ValueError(f"layer {i} ({type(m).__name__}) takes {n_in} features but "
                                 f"layer {source} gives {width}")
            if m.out_features is not None:
                width, source = m.out_features, i
            elif not m.width_preserving:
                width, source = None, None
        self._out_features = width
        flatten_parameters(self.parameters())
        self._share_guard()
        self._dtype = self.parameters()[0].dtype if self.parameters() else None

    dtype = property(lambda self: self._dtype)

    def __getitem__(self, i: Any) -> Any:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.layers)

    @property
    def in_features(self) -> Any:
        for m in self.layers:
            if m.in_features is not None:
                return m.in_features
            if not m.width_preserving:
                return None
        return None

    out_features = property(lambda self: self._out_features)

    @property
    def width_preserving(self) -> Any:
        return all(m.width_preserving for m in self.layers)

    def _forward(self, x: Any) -> Any:
        for m in self.layers:
            x = m._forward(x)
        self._ready = True
        return x

    def _backward(self, g: Any, need_input_grad: Any) -> Any:
        for i in range(len(self.layers) - 1, -1, -1):
            if not self.layers[i]._ready:
                raise RuntimeError(f"layer {i} has no saved forward: run forward first")
            g = self.layers[i]._backward(g, need_input_grad or i > 0)
        return g

    def _output_like(self) -> Any:
        return self.layers[-1]._output_like() if self.layers else None

    @property
    def r_supported(self) -> Any:
        return all(m.r_supported for m in self.layers)

    def _rforward(self, x: Any, rx: Any, v: Any) -> Any:
        for m in self.layers:
            x, rx = m._rforward(x, rx, v)
        return x, rx

    def _rbackward(self, g: Any, rg: Any, v: Any, hv: Any, need_input_grad: Any) -> Any:
        for i in range(len(self.layers) - 1, -1, -1):
            g, rg = self.layers[i]._rbackward(g, rg, v, hv, need_input_grad or i > 0)
        return g, rg

    def forward(self, x: ArrayLike) -> NDArray[Any]:
        if not self.layers:
            return np.array(x, copy=True)
        return super().forward(x)

    def __repr__(self) -> str:
        lines = [f"  ({i}): {m!r}".replace("\n", "\n  ") for i, m in enumerate(self.layers)]
        n = self.num_parameters()
        dtype = f", {self.dtype}" if self.dtype is not None else ""
        return "Sequential(\n" + "\n".join(lines) + f"\n)  # {n:,} parameters{dtype}"
