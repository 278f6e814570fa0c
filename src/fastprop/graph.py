"""Computation graphs: DAG models with skip connections, several inputs and outputs, and
modules shared between nodes; ``Residual(module)``; the merge nodes Add, Concat and Mul.

Back-propagation is algorithm 6.2 of *Deep Learning* (Goodfellow et al.): the forward pass
visits the nodes in topological order and keeps each node's value; the backward pass visits
them in reverse order, and the gradient of a node is the SUM over its consumers (the grad
table), accumulated in place into one buffer per node: the first consumer the backward visits
overwrites it, the others add into it (a C pass each, no temporaries). A node with a single
consumer needs no buffer of its own: it takes the array its consumer hands back, as a chain
does. Every node's module runs through its ordinary ``_forward``/``_backward``, so the cost is
one visit per node and one accumulation per edge: O(edges).

A module used at several nodes (shared weights) keeps ONE set of parameters, so each node's
contribution lands in its one ``.grad``; each further node runs a twin of it that shares the
parameters and has its own workspaces (a layer keeps its activations for the backward).

The R-operator of a graph (``fastprop.hvp``/``gnvp``) is the same traversal: R{value} beside
each value forward, and two grad tables backward, for g and R{g}, on the same plan of
buffers and aliases; each merge node has its R pieces, and a shared module's nodes all add
into its parameters' one Hv view. A graph with several outputs has none (one loss).
"""
from __future__ import annotations
import threading

import numpy as np

from . import ops, plan
from .nn import Module, as_input, flatten_parameters
from typing import Any

__all__ = ["Graph", "Node", "Merge", "Add", "Concat", "Mul", "Residual"]


# ---------------------------------------------------------------- merge nodes

class Merge(Module):
    """A parameter-free node with several inputs (Add, Concat, Mul); it lives in a Graph.

    ``_forward(xs)`` takes the list of input values; ``_backward_into(g, dests, accumulate)``
    writes the gradient of input k into ``dests[k]`` (added into it where ``accumulate[k]``;
    skipped where ``dests[k]`` is None), the grad table's buffers.

    The R-operator (curvature): ``_rforward(xs, rxs, v)`` -> (y, R{y}) with ``rxs[k]`` None
    for an input that does not move, and ``_rbackward_into(g, rg, dests, rdests, accumulate)``
    writes g's and R{g}'s shares as ``_backward_into`` does (g None: the Gauss–Newton pass).
    Both keep their own workspaces (``_rbuf``), apart from the forward's.

    Examples
    --------
    >>> import fastprop as fp
    >>> from fastprop.graph import Merge
    >>> all(issubclass(c, Merge) for c in (fp.Add, fp.Concat, fp.Mul))
    True
    """
    min_inputs, max_inputs = 2, None
    _workspace_keys = ("_y", "_xs")

    def __init__(self) -> None:
        super().__init__()
        self._y = self._xs = None

    def forward(self, *xs: Any) -> Any:
        raise TypeError(f"{type(self).__name__} is a graph node: g.add(fp.{type(self).__name__}(), a, b)")

    backward = forward

    def _workspace(self, shape: Any, dtype: Any) -> Any:
        if self._y is None or self._y.shape != shape or self._y.dtype != dtype:
            self._y = np.empty(shape, dtype)
        return self._y

    def _output_like(self) -> Any:
        return self._y

    def out_width(self, widths: Any) -> Any:
        """The output width for these input widths (None where unknown); ValueError on a mismatch."""
        known = {w for w in widths if w is not None}
        if len(known) > 1:
            raise ValueError(f"inputs of different widths {list(widths)}")
        return known.pop() if known else None


class Add(Merge):
    """``y = Σ_k x_k`` over n inputs of one shape: the skip connection's merge.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> g = fp.Graph()
    >>> a, b = g.input("a", 2), g.input("b", 2)
    >>> model = g.build(outputs=g.add(fp.Add(), a, b))
    >>> model(np.ones((1, 2)), np.full((1, 2), 2.0))
    array([[3., 3.]])
    """

    def _forward(self, xs: Any) -> Any:
        y = ops.add_forward(xs, out=self._workspace(xs[0].shape, xs[0].dtype))
        self._ready = True
        return y

    def _backward_into(self, g: Any, dests: Any, accumulate: Any) -> None:
        for d, acc in zip(dests, accumulate):
            if d is not None:
                ops.add_backward(g, out=d, accumulate=acc)

    r_supported = True

    def _rforward(self, xs: Any, rxs: Any, v: Any) -> Any:
        # R{Σ x_k} = Σ R{x_k}, the inputs that do not move left out
        shape, dtype = xs[0].shape, xs[0].dtype
        y = ops.add_forward(xs, out=self._rbuf("y", shape, dtype))
        moving = [r for r in rxs if r is not None]
        ry = ops.add_forward(moving, out=self._rbuf("ry", shape, dtype)) if moving else None
        return y, ry

    def _rbackward_into(self, g: Any, rg: Any, dests: Any, rdests: Any, accumulate: Any) -> None:
        # linear: every input gets g, and R{g}
        if g is not None:
            self._backward_into(g, dests, accumulate)
        self._backward_into(rg, rdests, accumulate)


class Mul(Merge):
    """``y = a ⊙ b`` elementwise (two inputs of one shape): a gate.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> g = fp.Graph()
    >>> a, b = g.input("a", 2), g.input("b", 2)
    >>> model = g.build(outputs=g.add(fp.Mul(), a, b))
    >>> model(np.full((1, 2), 3.0), np.full((1, 2), 2.0))
    array([[6., 6.]])
    """
    max_inputs = 2
    min_inputs = 2

    def _forward(self, xs: Any) -> Any:
        a, b = xs
        y = ops.mul_forward(a, b, out=self._workspace(a.shape, a.dtype))
        self._xs, self._ready = (a, b), True
        return y

    def _backward_into(self, g: Any, dests: Any, accumulate: Any) -> None:
        a, b = self._xs
        self._into(g, a, b, dests, accumulate)

    @staticmethod
    def _into(g: Any, a: Any, b: Any, dests: Any, accumulate: Any) -> None:
        """dests[0] (+)= g ⊙ b, dests[1] (+)= g ⊙ a (a None dest skipped)."""
        if dests[0] is not None or dests[1] is not None:
            ops.mul_backward(g, a, b, grad_a=dests[0], grad_b=dests[1],
                             need_a=dests[0] is not None, need_b=dests[1] is not None,
                             accumulate_a=accumulate[0], accumulate_b=accumulate[1])

    r_supported = True

    def _rforward(self, xs: Any, rxs: Any, v: Any) -> Any:
        # R{a ⊙ b} = R{a} ⊙ b + a ⊙ R{b}
        (a, b), (ra, rb) = xs, rxs
        y = ops.mul_forward(a, b, out=self._rbuf("y", a.shape, a.dtype))
        ry = None
        if ra is not None or rb is not None:
            ry = self._rbuf("ry", a.shape, a.dtype)
            if ra is not None:
                ops.mul_forward(ra, b, out=ry)
            if rb is not None:   # ry (+)= R{b} ⊙ a
                ops.mul_backward(rb, a, a, grad_b=ry, need_a=False, accumulate_b=ra is not None)
        self._rsaved = (a, b, ra, rb)
        return y, ry

    def _rbackward_into(self, g: Any, rg: Any, dests: Any, rdests: Any, accumulate: Any) -> None:
        # g_a = g ⊙ b:  R{g_a} = R{g} ⊙ b + g ⊙ R{b};  g_b = g ⊙ a:  R{g_b} = R{g} ⊙ a + g ⊙ R{a}
        a, b, ra, rb = self._rsaved
        self._into(rg, a, b, rdests, accumulate)
        if g is None:   # Gauss–Newton: R{g} back-propagated as a gradient, no g ⊙ R{·} terms
            return
        self._into(g, a, b, dests, accumulate)
        second = [rdests[0] if rb is not None else None, rdests[1] if ra is not None else None]
        self._into(g, g if ra is None else ra, g if rb is None else rb, second, (True, True))


class Concat(Merge):
    """``y = [x_1, x_2, ...]`` along the features: (batch, Σ widths).

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> g = fp.Graph()
    >>> a, b = g.input("a", 2), g.input("b", 2)
    >>> model = g.build(outputs=g.add(fp.Concat(), a, b))
    >>> model(np.ones((1, 2)), np.zeros((1, 2)))
    array([[1., 1., 0., 0.]])
    """
    _workspace_keys = ("_y", "_xs", "_widths")

    def _forward(self, xs: Any) -> Any:
        self._widths = [x.shape[1] for x in xs]
        y = ops.concat_forward(xs, out=self._workspace((xs[0].shape[0], sum(self._widths)),
                                                       xs[0].dtype))
        self._ready = True
        return y

    def _backward_into(self, g: Any, dests: Any, accumulate: Any, widths: Any = None) -> None:
        ops.concat_backward(g, self._widths if widths is None else widths, outs=dests,
                            needed=[d is not None for d in dests], accumulate=list(accumulate))

    r_supported = True

    def _rforward(self, xs: Any, rxs: Any, v: Any) -> Any:
        # R{[x_1, x_2, ...]} = [R{x_1}, R{x_2}, ...], zeros for an input that does not move
        widths = [x.shape[1] for x in xs]
        shape, dtype = (xs[0].shape[0], sum(widths)), xs[0].dtype
        y = ops.concat_forward(xs, out=self._rbuf("y", shape, dtype))
        ry = None
        if any(r is not None for r in rxs):
            parts = []
            for k, (x, r) in enumerate(zip(xs, rxs)):
                if r is None:
                    r = self._rbuf(("zero", k), x.shape, dtype)
                    r.fill(0)
                parts.append(r)
            ry = ops.concat_forward(parts, out=self._rbuf("ry", shape, dtype))
        self._rsaved = widths
        return y, ry

    def _rbackward_into(self, g: Any, rg: Any, dests: Any, rdests: Any, accumulate: Any) -> None:
        # linear: split g and R{g} along the features
        if g is not None:
            self._backward_into(g, dests, accumulate, self._rsaved)
        self._backward_into(rg, rdests, accumulate, self._rsaved)

    def out_width(self, widths: Any) -> Any:
        return None if any(w is None for w in widths) else sum(widths)


# ---------------------------------------------------------------- the graph

class Node:
    """A handle on a graph node, returned by ``g.input`` and ``g.add``.

    Pass it (or its name) as another node's input; it is not made by hand.

    Parameters
    ----------
    graph : Graph
        The graph the node belongs to.
    name : str
        The node's name.

    Examples
    --------
    >>> import fastprop as fp
    >>> g = fp.Graph()
    >>> x = g.input("x", 3)
    >>> x.name
    'x'
    """
    __slots__ = ("graph", "name")

    def __init__(self, graph: Any, name: str) -> None:
        self.graph, self.name = graph, name

    def __repr__(self) -> str:
        return f"Node({self.name!r})"


class _Step:
    """One node of the built graph, in topological order."""
    __slots__ = ("name", "kind", "module", "inputs", "width", "accumulate", "alias")

    def __init__(self, name: Any, kind: Any, module: Any, inputs: Any, width: Any) -> None:
        self.name, self.kind, self.module, self.inputs, self.width = name, kind, module, inputs, width
        self.accumulate = [False] * len(inputs)  # per input slot: add into the grad table's buffer
        self.alias = [False] * len(inputs)       # per input slot: hand the array over, no buffer


def _deposit(table: Any, bufs: Any, j: Any, a: Any, alias: Any, accumulate: Any) -> None:
    """One consumer's share a of node j's gradient into the grad table: handed over (alias),
    or written or added into j's buffer. None (nothing to pass) is skipped."""
    if a is None:
        return
    table[j] = a if alias else ops.add_backward(a, out=bufs[j], accumulate=accumulate)


def _twin(module: Any) -> Any:
    """The same module at another node: the same Parameter objects, its own workspaces."""
    t = object.__new__(type(module))
    t.__dict__.update(Module.__getstate__(module))  # workspaces and saved values reset
    t._busy = threading.Lock()
    t._children = {name: _twin(c) for name, c in module._children.items()}
    if hasattr(t, "layers"):  # Sequential keeps its children in a list too
        t.layers = list(t._children.values())
    if isinstance(t, Graph):
        t._retwin(module)
    return t


class Graph(Module):
    """A model built from nodes of a directed acyclic computation graph.

    Build it with :meth:`input`, :meth:`add` and :meth:`build`; the built graph is a
    :class:`~fastprop.nn.Module` (``model(x)``, ``model.backward(gy)``, ``parameters()``).

    Nodes: any single-input Module, ``Add`` (n inputs), ``Concat`` (n inputs, along the
    features), ``Mul`` (two inputs). Inputs of a node are Node handles or node names (a name
    may refer to a node added later; ``build`` sorts the nodes topologically). Several inputs:
    ``model(x1, x2)`` or ``model({"x1": x1, "x2": x2})``; several outputs: the forward returns
    a tuple and ``backward`` takes one gradient per output. A module added at several nodes
    shares its parameters. Parameters are named after the first node of their module
    (``"fc1.weight"``), and the model owns one flat parameter buffer, as a Sequential.

    Raises
    ------
    ValueError
        From :meth:`build`, if the graph has a cycle, an unknown input name, or widths that
        do not match.

    Examples
    --------
    A skip connection:

    >>> import numpy as np, fastprop as fp
    >>> g = fp.Graph()
    >>> x = g.input("x", 4)
    >>> h = g.add(fp.Linear(4, 8, rng=0), x, name="fc1")
    >>> h = g.add(fp.ReLU(), h)
    >>> r = g.add(fp.ReLU(), g.add(fp.Linear(8, 8, rng=1), h))
    >>> s = g.add(fp.Add(), h, r)
    >>> model = g.build(outputs=g.add(fp.Linear(8, 3, rng=2), s))
    >>> model(np.ones((5, 4), np.float32)).shape
    (5, 3)
    >>> [name for name, _ in model.named_parameters()][:2]
    ['fc1.weight', 'fc1.bias']
    >>> model.backward(np.ones((5, 3), np.float32)).shape
    (5, 4)
    """
    _workspace_keys = ("_values", "_table", "_gbufs", "_gbatch")

    def __init__(self) -> None:
        super().__init__()
        self._specs = []    # in the order added: (name, kind, module or width, input refs)
        self._names = {}
        self._built = False
        self._values = self._table = self._gbufs = self._gbatch = None

    # ------------------------------------------------------------ construction
    def _new_name(self, name: Any, module: Any) -> Any:
        if name is None:
            base = "input" if module is None else type(module).__name__.lower()
            i = sum(1 for n in self._names if n.startswith(base))
            while f"{base}{i}" in self._names:
                i += 1
            name = f"{base}{i}"
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"a node name must be a non-empty string without '.', got {name!r}")
        if name in self._names:
            raise ValueError(f"the graph already has a node named {name!r}")
        return name

    def _open(self) -> Any:
        if self._built:
            raise RuntimeError("this graph is built: nodes cannot be added any more")

    def input(self, name: str, width: int | None = None) -> Node:
        """An input node of ``width`` features (None: any); returns its Node."""
        self._open()
        if width is not None and (isinstance(width, bool) or not isinstance(width, (int, np.integer))
                                  or width < 1):
            raise ValueError(f"input {name!r}: width must be a positive integer or None, got {width!r}")
        name = self._new_name(name, None)
        self._names[name] = len(self._specs)
        self._specs.append((name, "input", None if width is None else int(width), []))
        return Node(self, name)

    def add(self, module: Module, *inputs: Any, name: str | None = None) -> Node:
        """A node computing ``module`` of its inputs (Node handles or names); returns its Node."""
        self._open()
        if not isinstance(module, Module):
            raise TypeError(f"a graph node takes a fastprop Module, got {type(module).__name__}")
        if isinstance(module, Graph) and not module._built:
            raise ValueError("a graph used as a node must be built first")
        refs = []
        for i, ref in enumerate(inputs):
            if isinstance(ref, Node):
                if ref.graph is not self:
                    raise ValueError(f"input {i} ({ref.name!r}) is a node of another graph")
                refs.append(ref.name)
            elif isinstance(ref, str):
                refs.append(ref)
            else:
                raise TypeError(f"input {i} must be a Node or a node name, got {type(ref).__name__}")
        name = self._new_name(name, module)
        self._names[name] = len(self._specs)
        self._specs.append((name, "merge" if isinstance(module, Merge) else "module", module, refs))
        return Node(self, name)

    def build(self, outputs: Any) -> Graph:
        """Checks the graph and makes it a model; returns self.

        Raises ValueError naming the nodes for: unknown input names, a wrong number of inputs,
        cycles, width mismatches between producer and consumer (where widths are known),
        inputs that are never used, and nodes that reach no output (dangling).
        """
        self._open()
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        if not outputs:
            raise ValueError("a graph needs at least one output")
        out_names = []
        for ref in outputs:
            name = ref.name if isinstance(ref, Node) else ref
            if isinstance(ref, Node) and ref.graph is not self:
                raise ValueError(f"output {name!r} is a node of another graph")
            if name not in self._names:
                raise ValueError(f"output {name!r} is not a node of this graph")
            out_names.append(name)
        specs = self._specs
        n = len(specs)
        ins = []
        for name, kind, what, refs in specs:
            for r in refs:
                if r not in self._names:
                    raise ValueError(f"node {name!r} takes {r!r}, which is not a node of this graph")
            ins.append([self._names[r] for r in refs])
            if kind == "module" and len(refs) != 1:
                raise ValueError(f"node {name!r} ({type(what).__name__}) takes one input, got {len(refs)}")
            if kind == "merge":
                lo, hi = what.min_inputs, what.max_inputs
                if len(refs) < lo or (hi is not None and len(refs) > hi):
                    need = f"{lo}" if lo == hi else f"at least {lo}"
                    raise ValueError(f"node {name!r} ({type(what).__name__}) takes {need} inputs, "
                                     f"got {len(refs)}")
        order = self._topological_order(ins)
        # widths along the order: every known producer width must match its consumer
        width = [None] * n
        for i in order:
            name, kind, what, refs = specs[i]
            if kind == "input":
                width[i] = what
            elif kind == "module":
                w, n_in = width[ins[i][0]], what.in_features
                if n_in is not None and w is not None and n_in != w:
                    raise ValueError(f"node {name!r} ({type(what).__name__}) takes {n_in} features "
                                     f"but its input {refs[0]!r} gives {w}")
                width[i] = what.out_features if what.out_features is not None else (
                    w if what.width_preserving else None)
            else:
                try:
                    width[i] = what.out_width([width[j] for j in ins[i]])
                except ValueError:
                    given = ", ".join(f"{r!r} gives {width[j]}" for r, j in zip(refs, ins[i]))
                    raise ValueError(f"node {name!r} ({type(what).__name__}) needs inputs of one "
                                     f"width: {given}") from None
        # every input used, every node on a path to an output
        consumers = [[] for _ in range(n)]
        for i in range(n):
            for slot, j in enumerate(ins[i]):
                consumers[j].append((i, slot))
        outs = [self._names[o] for o in out_names]
        unused = [specs[i][0] for i in range(n) if specs[i][1] == "input" and not consumers[i]
                  and i not in outs]
        if unused:
            raise ValueError(f"input(s) {unused} are never used: connect them or remove them")
        live = set(outs)
        stack = list(outs)
        while stack:
            for j in ins[stack.pop()]:
                if j not in live:
                    live.add(j)
                    stack.append(j)
        dangling = [specs[i][0] for i in range(n) if i not in live]
        if dangling:
            raise ValueError(f"node(s) {dangling} reach no output (dangling): make them outputs "
                             f"or remove them")
        self._check_sharing()
        self._make_steps(order, ins, width, outs)
        flatten_parameters(self.parameters())
        self._share_guard()   # one lock and one flat run for the model: its parts are its own
        params = self.parameters()
        self._dtype = params[0].dtype if params else None
        self._built = True
        return self

    def _topological_order(self, ins: Any) -> Any:
        """plan.topological_order; a cycle is a ValueError naming its nodes."""
        order, cycle = plan.topological_order(ins)
        if cycle:
            names = " <- ".join(repr(self._specs[k][0]) for k in cycle)
            raise ValueError(f"the graph has a cycle: {names} (each node takes the next as input)")
        return order

    def _check_sharing(self) -> Any:
        """A module may be used at several nodes, but not also inside another node's module."""
        owner, tops = {}, set()
        for name, kind, what, _ in self._specs:
            if kind == "input" or id(what) in tops:
                continue
            tops.add(id(what))
            for sub in what.modules():
                if id(sub) in owner:
                    raise ValueError(f"nodes {owner[id(sub)]!r} and {name!r} hold the same "
                                     f"{type(sub).__name__} inside different modules: share "
                                     f"whole modules only (add the module itself at both nodes)")
                owner[id(sub)] = name

    def _make_steps(self, order: Any, ins: Any, width: Any, outs: Any) -> None:
        """The node list in topological order and the backward's plan for the grad table."""
        specs = self._specs
        pos = {i: k for k, i in enumerate(order)}
        steps, seen = [], {}
        self._children = {}
        self._origin = {}   # node name -> the first node of its module (where its parameters are named)
        for i in sorted(i for i in range(len(specs)) if specs[i][1] != "input"):
            name, kind, module, _ = specs[i]
            if id(module) in seen:
                module = _twin(module)
            else:
                seen[id(module)] = name
                self._children[name] = module
            self._origin[name] = seen[id(specs[i][2])]
            specs[i] = (name, kind, module, specs[i][3])
        for i in order:
            name, kind, what, _ = specs[i]
            steps.append(_Step(name, kind, None if kind == "input" else what,
                               [pos[j] for j in ins[i]], width[i]))
        self._outputs = [pos[i] for i in outs]
        table = plan.graph_grad_table([s.inputs for s in steps],
                                      [s.kind == "module" for s in steps],
                                      [isinstance(s.module, Add) for s in steps], self._outputs)
        for s, acc, alias in zip(steps, table.accumulate, table.alias):
            s.accumulate, s.alias = list(acc), list(alias)
        self._dedicated = list(table.dedicated)
        self._output_accumulate = list(table.output_accumulate)
        self._output_alias = list(table.output_alias)
        self._steps = steps
        self._inputs = [k for k, s in enumerate(steps) if s.kind == "input"]
        self._inputs.sort(key=lambda k: self._names[steps[k].name])

    def _retwin(self, original: Any) -> None:
        """After _twin copied a Graph's fields: its steps run the twin's own child modules."""
        twins = dict(self._children)
        steps = []
        for s in original._steps:
            t = _Step(s.name, s.kind, None, s.inputs, s.width)
            t.accumulate, t.alias = s.accumulate, s.alias
            if s.kind != "input":
                t.module = twins[s.name] if s.name in twins else _twin(s.module)
            steps.append(t)
        self._steps = steps

    # ------------------------------------------------------------ shapes and names
    dtype = property(lambda self: self._dtype if self._built else None)

    @property
    def input_names(self) -> Any:
        return [self._steps[k].name for k in self._inputs]

    @property
    def output_names(self) -> Any:
        return [self._steps[k].name for k in self._outputs]

    @property
    def in_features(self) -> Any:
        return self._steps[self._inputs[0]].width if self._built and len(self._inputs) == 1 else None

    @property
    def out_features(self) -> Any:
        return self._steps[self._outputs[0]].width if self._built and len(self._outputs) == 1 else None

    def __getitem__(self, name: Any) -> Any:
        """The module at the node of this name."""
        for s in self._steps:
            if s.name == name and s.kind != "input":
                return s.module
        raise KeyError(name)

    # ------------------------------------------------------------ the two passes (algorithm 6.2)
    def _forward(self, x: Any) -> Any:
        """Visits the nodes in topological order, keeping every node's value."""
        steps = self._steps
        if self._values is None:
            self._values = [None] * len(steps)
        v = self._values
        xs = x if len(self._inputs) > 1 else (x,)
        for k, i in enumerate(self._inputs):
            v[i] = xs[k]
        for i, s in enumerate(steps):
            if s.kind == "module":
                v[i] = s.module._forward(v[s.inputs[0]])
            elif s.kind == "merge":
                v[i] = s.module._forward([v[j] for j in s.inputs])
        self._ready = True
        return self._pick(v, self._outputs)

    def _backward(self, g: Any, need_input_grad: Any) -> Any:
        """Visits the nodes in reverse topological order; a node's gradient is the sum over its
        consumers, accumulated in place into its buffer (the grad table). Returns ∂J/∂inputs
        (None unless need_input_grad) and adds into every parameter's .grad."""
        steps = self._steps
        gs = g if len(self._outputs) > 1 else (g,)
        table = self._grad_table(gs[0].shape[0], gs[0].dtype)
        bufs = self._gbufs
        for k, i in enumerate(self._outputs):
            _deposit(table, bufs, i, gs[k], self._output_alias[k], self._output_accumulate[k])
        for i in range(len(steps) - 1, -1, -1):
            s = steps[i]
            if s.kind == "input":
                continue
            gi = table[i]
            if s.kind == "module":
                j = s.inputs[0]
                need = need_input_grad or steps[j].kind != "input"
                gx = s.module._backward(gi, need)
                if need:
                    _deposit(table, bufs, j, gx, s.alias[0], s.accumulate[0])
            else:
                s.module._backward_into(gi, self._merge_dests(i, need_input_grad, table, bufs),
                                        s.accumulate)
        if not need_input_grad:
            return None
        return self._pick(table, self._inputs)

    def _mode_children(self) -> Any:
        # a module shared by several nodes runs as copies (_twin) beside the original
        mods = list(self._children.values())
        if self._built:
            mods += [s.module for s in self._steps
                     if s.kind != "input" and all(s.module is not m for m in mods)]
        return mods

    # ------------------------------------------------------------ the R-operator (curvature)
    @property
    def r_supported(self) -> Any:
        return self._built and all(s.module.r_supported for s in self._steps if s.kind != "input")

    def _rforward(self, x: Any, rx: Any, v: Any) -> Any:
        """The forward in topological order with R{value} beside every value (None for a
        value that does not move: the inputs when rx is None, and what depends on them only)."""
        if len(self._outputs) > 1:
            raise TypeError(f"this graph has {len(self._outputs)} outputs {self.output_names}: "
                            f"Hessian–vector products need a graph with one output (one loss)")
        steps = self._steps
        val, rval = [None] * len(steps), [None] * len(steps)
        many = len(self._inputs) > 1
        xs = x if many else (x,)
        rxs = (None,) * len(xs) if rx is None else (rx if many else (rx,))
        for k, i in enumerate(self._inputs):
            val[i], rval[i] = xs[k], rxs[k]
        for i, s in enumerate(steps):
            if s.kind == "module":
                j = s.inputs[0]
                val[i], rval[i] = s.module._rforward(val[j], rval[j], v)
            elif s.kind == "merge":
                val[i], rval[i] = s.module._rforward([val[j] for j in s.inputs],
                                                     [rval[j] for j in s.inputs], v)
        self._rsaved = val
        o = self._outputs[0]
        return val[o], rval[o]

    def _rbackward(self, g: Any, rg: Any, v: Any, hv: Any, need_input_grad: Any) -> Any:
        """The backward in reverse order with two grad tables, for g and R{g}: each node's
        entry is the sum over its consumers, accumulated in place into its buffers as in
        _backward (the same plan of buffers and aliases). g None: the Gauss–Newton pass."""
        steps, val = self._steps, self._rsaved
        batch, dtype = rg.shape[0], rg.dtype
        gt, rt = [None] * len(steps), [None] * len(steps)
        gb, rb = [], []
        for j, dedicated in enumerate(self._dedicated):
            shape = (batch, val[j].shape[1])
            gb.append(self._rbuf(("g", j), shape, dtype) if dedicated and g is not None else None)
            rb.append(self._rbuf(("rg", j), shape, dtype) if dedicated else None)
        o = self._outputs[0]
        for table, bufs, a in ((gt, gb, g), (rt, rb, rg)):
            _deposit(table, bufs, o, a, self._output_alias[0], self._output_accumulate[0])
        for i in range(len(steps) - 1, -1, -1):
            s = steps[i]
            if s.kind == "input":
                continue
            gi, rgi = gt[i], rt[i]
            if s.kind == "module":
                j = s.inputs[0]
                need = need_input_grad or steps[j].kind != "input"
                gx, rgx = s.module._rbackward(gi, rgi, v, hv, need)
                if need:
                    _deposit(gt, gb, j, gx, s.alias[0], s.accumulate[0])
                    _deposit(rt, rb, j, rgx, s.alias[0], s.accumulate[0])
                continue
            s.module._rbackward_into(gi, rgi, self._merge_dests(i, need_input_grad, gt, gb),
                                     self._merge_dests(i, need_input_grad, rt, rb), s.accumulate)
        if not need_input_grad:
            return None, None
        return (None if g is None else self._pick(gt, self._inputs)), self._pick(rt, self._inputs)

    def _merge_dests(self, i: Any, need_input_grad: Any, table: Any, bufs: Any) -> Any:
        """Where merge node i writes its inputs' shares: each input's buffer, or None where
        the share is not needed (a graph input) or handed over whole (the table then holds
        node i's own array for that input)."""
        steps = self._steps
        dests = []
        for slot, j in enumerate(steps[i].inputs):
            if not need_input_grad and steps[j].kind == "input":
                dests.append(None)
            elif steps[i].alias[slot]:
                dests.append(None)
                table[j] = table[i]
            else:
                dests.append(bufs[j])
                table[j] = bufs[j]
        return dests

    def _pick(self, values: Any, ids: Any) -> Any:
        return values[ids[0]] if len(ids) == 1 else tuple(values[i] for i in ids)

    def _grad_table(self, batch: Any, dtype: Any) -> Any:
        """One gradient buffer per node that sums several consumers, allocated once per batch size."""
        n = len(self._steps)
        if self._gbatch != (batch, dtype):
            self._gbufs = [np.empty((batch, self._value_width(i)), dtype) if self._dedicated[i]
                           else None for i in range(n)]
            self._gbatch = (batch, dtype)
        if self._table is None:
            self._table = [None] * n
        return self._table

    def _value_width(self, i: Any) -> Any:
        return self._values[i].shape[1]

    def _output_like(self) -> Any:
        return self._pick(self._values, self._outputs) if self._values is not None else None

    # ------------------------------------------------------------ the public pass
    def __call__(self, *xs: Any) -> Any:
        return self.forward(*xs)

    def forward(self, *xs: Any) -> Any:
        """The outputs for the inputs: ``model(x)``, ``model(x1, x2)`` or ``model({"x1": x1, ...})``;
        one new array per output (a tuple when there are several)."""
        if not self._built:
            raise RuntimeError("build the graph first: g.build(outputs=...)")
        x = xs[0] if len(xs) == 1 else xs
        with self.exclusive():
            if not self.training:   # forward-only on the tape (Module._tape_forward)
                y = self._tape_forward(x)
                if y is not None:
                    return y
            return self._public_forward(x)

    def _check_input(self, x: Any) -> Any:
        """The inputs as checked contiguous arrays: one array, or a list for several inputs."""
        names = self.input_names
        if isinstance(x, dict):
            missing, extra = sorted(set(names) - set(x)), sorted(set(x) - set(names))
            if missing or extra:
                raise ValueError(f"the inputs are {names}: missing {missing}, unexpected {extra}")
            x = [x[name] for name in names]
        elif len(names) == 1:
            x = [x[0] if isinstance(x, (tuple, list)) and len(x) == 1 else x]
        elif not isinstance(x, (tuple, list)) or len(x) != len(names):
            got = len(x) if isinstance(x, (tuple, list)) else 1
            raise ValueError(f"this graph takes {len(names)} inputs {names}, got {got}")
        dtype = self.dtype
        if dtype is None:
            first = np.asarray(x[0])
            dtype = first.dtype if first.dtype.kind == "f" else np.float32
        out = []
        for name, a, k in zip(names, x, self._inputs):
            a = as_input(a, dtype, name)
            if a.ndim != 2:
                raise ValueError(f"input {name!r} must be 2-D (batch, features), got shape {a.shape}")
            w = self._steps[k].width
            if w is not None and a.shape[1] != w:
                raise ValueError(f"input {name!r} has {a.shape[1]} features, expected {w}")
            if out and a.shape[0] != out[0].shape[0]:
                raise ValueError(f"input {name!r} has {a.shape[0]} rows but {names[0]!r} has "
                                 f"{out[0].shape[0]}")
            out.append(a)
        return out[0] if len(out) == 1 else out

    def _public_forward(self, x: Any) -> Any:
        given = list(x.values()) if isinstance(x, dict) else (
            list(x) if isinstance(x, (tuple, list)) else [x])
        xs = self._check_input(x)
        many = len(self._inputs) > 1
        xs = list(xs) if many else [xs]
        if self._xin is None:
            self._xin = [None] * len(xs)
        for k, a in enumerate(xs):  # the caller's own arrays: keep copies for the backward
            if any(a is b for b in given):
                keep = self._xin[k]
                if keep is None or keep.shape != a.shape or keep.dtype != a.dtype:
                    keep = self._xin[k] = np.empty_like(a)
                np.copyto(keep, a)
                xs[k] = keep
        self._replay = None
        out = self._forward(xs if many else xs[0])
        return tuple(o.copy() for o in out) if isinstance(out, tuple) else out.copy()

    def backward(self, *grads: Any) -> Any:
        """∂J/∂inputs (a tuple when there are several) for one gradient per output; ADDS
        ∂J/∂θ into every ``.grad``."""
        with self.exclusive():
            return self._public_backward(*grads)

    def _public_backward(self, *grads: Any) -> Any:
        self._replay_forward()
        if not self._ready:
            raise RuntimeError("Graph.backward called before forward")
        outs = [self._values[i] for i in self._outputs]
        if len(grads) == 1 and isinstance(grads[0], (tuple, list)) and len(outs) > 1:
            grads = tuple(grads[0])
        if len(grads) != len(outs):
            raise ValueError(f"backward takes one gradient per output {self.output_names}, "
                             f"got {len(grads)}")
        gs = []
        for name, g, o in zip(self.output_names, grads, outs):
            g = as_input(g, o.dtype, f"gradient of {name!r}")
            if g.shape != o.shape:
                raise ValueError(f"the gradient of output {name!r} has shape {g.shape}, expected "
                                 f"{o.shape} (the shape of the last forward's output)")
            gs.append(g.copy())
        r = self._backward(gs if len(gs) > 1 else gs[0], True)
        return tuple(a.copy() for a in r) if isinstance(r, tuple) else r.copy()

    # ------------------------------------------------------------ printing
    def __repr__(self) -> str:
        if not self._built:
            return f"Graph(unbuilt, {len(self._specs)} nodes)"
        lines = []
        for s in self._steps:
            if s.kind == "input":
                lines.append(f"  {s.name}: input({s.width})")
            else:
                args = ", ".join(self._steps[j].name for j in s.inputs)
                lines.append(f"  {s.name}: {s.module!r}({args})".replace("\n", "\n  "))
        n = self.num_parameters()
        dtype = f", {self.dtype}" if self.dtype is not None else ""
        return ("Graph(\n" + "\n".join(lines) + f"\n  outputs: {', '.join(self.output_names)}"
                f"\n)  # {n:,} parameters{dtype}")


class Residual(Graph):
    """``y = x + module(x)``: a skip connection around module, usable inside a Sequential.

    module must give as many features as it takes (checked where they are known). Its
    parameters are named ``module.weight``, …

    Parameters
    ----------
    module : Module
        The residual branch; its output has its input's width.

    Raises
    ------
    TypeError
        If module is not a Module.
    ValueError
        If module's output width differs from its input width.

    Examples
    --------
    >>> import numpy as np, fastprop as fp
    >>> block = fp.Residual(fp.Sequential(fp.Linear(4, 4, rng=0), fp.Tanh()))
    >>> model = fp.Sequential(fp.Linear(2, 4, rng=1), block, fp.Linear(4, 1, rng=2))
    >>> model(np.ones((3, 2), np.float32)).shape
    (3, 1)
    >>> [name for name, _ in block.named_parameters()]
    ['module.0.weight', 'module.0.bias']
    """
    width_preserving = True

    def __init__(self, module: Module) -> None:
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"Residual takes a fastprop Module, got {type(module).__name__}")
        n_in, n_out = module.in_features, module.out_features
        if n_in is not None and n_out is not None and n_in != n_out:
            raise ValueError(f"Residual needs a module whose output has its input's width: "
                             f"{type(module).__name__} maps {n_in} features to {n_out}")
        x = self.input("x", n_in if n_in is not None else n_out)
        h = self.add(module, x, name="module")
        self.build(outputs=self.add(Add(), x, h, name="add"))

    module = property(lambda self: self._children["module"])

    def __repr__(self) -> str:
        return f"Residual({self.module!r})"
