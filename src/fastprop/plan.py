"""The tape's plan: a model lowered to a flat list of ops over numbered values, and the
backward's grad table planned from the ops' lifetimes. Pure functions of the model's
structure; ``fastprop._kernels.Tape`` executes the result in C (csrc/tape.c).

``lower(model)`` walks any nesting of Sequential, Graph and Residual: Linear (fused with
the activation that follows it), the activations, PReLU, LowRankLinear (two dense ops),
Dropout, LayerNorm, BatchNorm1d, Add, Mul and Concat become C ops (the three layers'
modes and settings are read from their modules before each run, see _tape.pxi); any other module (a user's own, or one the tape does not
know) becomes a ``"module"`` op that calls back into its Python ``_forward``/``_backward``.
``plan_grads(program)`` then decides, for the backward of algorithm 6.2, which share of a
value's gradient is written and which added (sums at fan-in), which values take their
consumer's buffer (one consumer that works in place), and which buffer slot each gradient
lives in (a slot is reused once the gradient it held is dead).

The R-passes of curvature run an unfused program (``lower(model, fused=False)``: each
activation its own op, so R{a} and R{f(a)} are values): ``plan_rvalues`` says which values
move along a direction of the parameters and where their R-values live, ``plan_offsets``
where each op's parameters sit in the flat vectors v and Hv.
"""
from __future__ import annotations
from collections import namedtuple

from . import nn, registry
from .layers import BatchNorm1d, Dropout, LayerNorm
from .nn import Linear, LowRankLinear, PReLU, Sequential
from typing import Any, TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: no import cycle at run time
    from .nn import Module

__all__ = ["Op", "Program", "GradPlan", "Unsupported", "lower", "fuse", "plan_grads",
           "topological_order", "GraphGradTable", "graph_grad_table", "ValuePlan", "plan_values",
           "RValuePlan", "plan_rvalues", "Offsets", "plan_offsets"]

DENSE, ACT, PRELU, ADD, MUL, CONCAT, DROPOUT, LAYERNORM, BATCHNORM = range(9)   # FP_OP_* of csrc/fastprop.h
MODULE = -1                                      # a Python callback
MAX_IN = 16                                      # FP_OP_MAX_IN
_ACTIVATIONS = {getattr(nn, a.cls) for a in registry.ACTIVATIONS}   # the built-in classes


# ---------------------------------------------------------------- a Graph's plan

def topological_order(ins: Any) -> Any:
    """Kahn's algorithm over nodes whose inputs are ins[i] (node indices), stable in index
    order. Returns (order, None), or (None, cycle): node indices around a cycle, the first
    repeated at the end, each taking the next as input."""
    n = len(ins)
    indegree = [len(set(x)) for x in ins]
    users = [[] for _ in range(n)]
    for i in range(n):
        for j in set(ins[i]):
            users[j].append(i)
    ready = [i for i in range(n) if indegree[i] == 0]
    order = []
    while ready:
        i = min(ready)
        ready.remove(i)
        order.append(i)
        for u in users[i]:
            indegree[u] -= 1
            if indegree[u] == 0:
                ready.append(u)
    if len(order) == n:
        return order, None
    # walk back along inputs that are still waiting: it must come round
    left = set(range(n)) - set(order)
    path, i = [], min(left)
    while i not in path:
        path.append(i)
        i = next(j for j in ins[i] if j in left)
    return None, path[path.index(i):] + [i]


# per node (in topological order) and input slot: accumulate (add into the grad table's buffer)
# and alias (hand the consumer's array over, no buffer); dedicated[j]: node j has a buffer of
# its own; the same two flags for each output's gradient.
GraphGradTable = namedtuple("GraphGradTable",
                            "accumulate alias dedicated output_accumulate output_alias")


def graph_grad_table(inputs: Any, single: Any, is_add: Any, outputs: Any) -> Any:
    """The modular backward's grad table of a Graph in topological order: inputs[c] are node
    c's input nodes, single[c] whether it is a one-input module (which hands its ∂J/∂x over),
    is_add[c] whether it is an Add (one of whose inputs may take g itself), outputs the output
    nodes. The backward visits the output gradients first, then the nodes in reverse order:
    the first contribution to a node overwrites its buffer, the others add into it."""
    n = len(inputs)
    contributions = [[] for _ in range(n)]   # per node: ("out", k) or (consumer, slot), in visit order
    for k, j in enumerate(outputs):
        contributions[j].append(("out", k))
    for c in range(n - 1, -1, -1):
        for slot, j in enumerate(inputs[c]):
            contributions[j].append((c, slot))
    accumulate = [[False] * len(x) for x in inputs]
    alias = [[False] * len(x) for x in inputs]
    dedicated = [True] * n
    out_acc, out_alias = [False] * len(outputs), [False] * len(outputs)
    for j, contribs in enumerate(contributions):
        for rank, (c, slot) in enumerate(contribs):
            if c == "out":
                out_acc[slot] = rank > 0
            else:
                accumulate[c][slot] = rank > 0
        if len(contribs) != 1:
            continue
        c, slot = contribs[0]
        # one contribution: the node takes its consumer's array, if that array is its own
        if c == "out":
            out_alias[slot] = True
        elif single[c]:
            alias[c][slot] = True
        elif is_add[c] and not any(alias[c]):
            alias[c][slot] = True
        else:
            continue
        dedicated[j] = False
    return GraphGradTable(accumulate, alias, dedicated, out_acc, out_alias)


# ---------------------------------------------------------------- the tape's program


class Unsupported(Exception):
    """The model has a shape the tape does not run (several outputs, ...): use the modular path."""


# kind: DENSE...MODULE; ins: value numbers; out: the value it makes; act, params: the activation
# (DENSE fuses one); w, b, dw, db: parameter arrays (views of the flat buffers); module: the
# Python module of a MODULE op, or the Dropout/LayerNorm/BatchNorm1d whose settings the op reads.
Op = namedtuple("Op", "kind ins out act params w b dw db module")


def _op(kind: Any, ins: Any, out: Any, act: str = "identity", params: Any = None, w: Any = None,
        b: Any = None, dw: Any = None, db: Any = None, module: Any = None) -> Any:
    return Op(kind, tuple(ins), out, act, dict(params or {}), w, b, dw, db, module)


# widths[v]: features of value v; inputs: the model's input values; output: its output value
Program = namedtuple("Program", "ops widths inputs output")


def lower(model: Module, fused: bool = True) -> Any:
    """The Program of model (one output; several inputs are fine); fused=False keeps each
    activation its own op (see fuse)."""
    from .graph import Add, Concat, Graph, Mul   # graph.py plans with this module's functions
    kinds = {Add: ADD, Mul: MUL, Concat: CONCAT}
    widths, ops = [], []

    def value(width: Any) -> Any:
        if width is None:
            raise Unsupported("a value of unknown width")
        widths.append(int(width))
        return len(widths) - 1

    def emit(m: Any, ins: Any) -> Any:
        t = type(m)
        if t is Sequential:
            for layer in m.layers:
                ins = [emit(layer, ins)]
            return ins[0]
        if t is Linear or t is LowRankLinear:
            x = ins[0]
            if t is LowRankLinear:   # y = (x Uᵀ) Vᵀ + b
                h = value(m.rank)
                ops.append(_op(DENSE, [x], h, w=m.U.data, dw=m.U.grad))
                x, w = h, m.V
            else:
                w = m.weight
            y = value(m.out_features)
            b = m.bias
            ops.append(_op(DENSE, [x], y, w=w.data, dw=w.grad, b=None if b is None else b.data,
                           db=None if b is None else b.grad))
            return y
        if t in _ACTIVATIONS:
            y = value(widths[ins[0]])
            ops.append(_op(ACT, ins, y, act=m.name, params=m.params))
            return y
        if t is PReLU:
            y = value(widths[ins[0]])
            ops.append(_op(PRELU, ins, y, w=m.weight.data, dw=m.weight.grad))
            return y
        if t is Dropout:
            y = value(widths[ins[0]])
            ops.append(_op(DROPOUT, ins, y, module=m))
            return y
        if (t is LayerNorm or t is BatchNorm1d) and m.in_features == widths[ins[0]] and \
                (t is LayerNorm or (m.running_mean is not None) == m.track_running_stats):
            w, b = m.weight, m.bias   # else a MODULE op: the module's own forward raises
            y = value(widths[ins[0]])
            ops.append(_op(LAYERNORM if t is LayerNorm else BATCHNORM, ins, y, module=m,
                           w=None if w is None else w.data, dw=None if w is None else w.grad,
                           b=None if b is None else b.data, db=None if b is None else b.grad))
            return y
        if isinstance(m, Graph) and type(m)._forward is Graph._forward:
            return emit_graph(m, ins)
        width = getattr(m, "out_features", None)
        if width is None and getattr(m, "width_preserving", False):
            width = widths[ins[0]]
        y = value(width)
        ops.append(_op(MODULE, ins, y, module=m))
        return y

    def emit_graph(g: Any, ins: Any) -> Any:
        if len(g._outputs) != 1:
            raise Unsupported("a graph with several outputs inside a model")
        if len(ins) != len(g._inputs):
            raise Unsupported("a graph node given a different number of inputs")
        v = [None] * len(g._steps)
        for k, i in enumerate(g._inputs):
            v[i] = ins[k]
        for i, s in enumerate(g._steps):
            if s.kind == "module":
                v[i] = emit(s.module, [v[s.inputs[0]]])
            elif s.kind == "merge":
                kind = kinds.get(type(s.module))
                srcs = [v[j] for j in s.inputs]
                if kind is None or len(srcs) > MAX_IN:
                    v[i] = value(s.width)
                    ops.append(_op(MODULE, srcs, v[i], module=s.module))
                    continue
                width = sum(widths[j] for j in srcs) if kind == CONCAT else widths[srcs[0]]
                v[i] = value(width)
                ops.append(_op(kind, srcs, v[i]))
        return v[g._outputs[0]]

    if isinstance(model, Graph) and type(model)._forward is Graph._forward:
        if len(model._outputs) != 1:
            raise Unsupported("a graph with several outputs (one loss needs one output)")
        inputs = [value(model._steps[i].width) for i in model._inputs]
    else:
        inputs = [value(getattr(model, "in_features", None))]
    output = emit(model, list(inputs))
    program = Program(tuple(ops), tuple(widths), tuple(inputs), output)
    return fuse(program) if fused else program


def fuse(program: Any) -> Any:
    """Each activation op whose input is a bias-and-GEMM-only dense op's value that nothing
    else reads becomes that dense op's fused activation (one pass instead of two)."""
    ops, readers = list(program.ops), _readers(program)
    producer = {o.out: i for i, o in enumerate(ops)}
    dead = set()
    for i, o in enumerate(ops):
        if o.kind != ACT:
            continue
        j = producer.get(o.ins[0])
        if j is None or ops[j].kind != DENSE or ops[j].act != "identity" or \
                len(readers[o.ins[0]]) != 1 or o.ins[0] == program.output:
            continue
        ops[j] = ops[j]._replace(out=o.out, act=o.act, params=o.params)
        dead.add(i)
    return program._replace(ops=tuple(o for i, o in enumerate(ops) if i not in dead))


def _readers(program: Any) -> Any:
    """readers[v]: the (op index, slot) pairs that read value v, in op order."""
    readers = [[] for _ in program.widths]
    for i, o in enumerate(program.ops):
        for slot, v in enumerate(o.ins):
            readers[v].append((i, slot))
    return readers


# acc[i][k]: op i adds its share into input k's gradient (else writes it); acc_params[i]: op i
# adds into its parameters' gradients (an earlier-visited op has written them); slot[v]: the
# gradient buffer of value v (None: no gradient, the model's inputs); slot_width[s]: its width;
# loss_acc: False (the loss writes the output's gradient first).
GradPlan = namedtuple("GradPlan", "acc acc_params slot slot_width")

# ops whose input share can be their output gradient itself
_IN_PLACE = (ACT, PRELU, ADD, DROPOUT, LAYERNORM, BATCHNORM)


def plan_grads(program: Any) -> Any:
    """The grad table of the backward (see the module docstring)."""
    ops, n_val = program.ops, len(program.widths)
    inputs = set(program.inputs)
    # contributions in the order the backward makes them: the loss, then ops from the last
    contribs = [[] for _ in range(n_val)]
    contribs[program.output].append(("loss", 0))
    for i in range(len(ops) - 1, -1, -1):
        for slot, v in enumerate(ops[i].ins):
            contribs[v].append((i, slot))
    acc = [[False] * len(o.ins) for o in ops]
    for v in range(n_val):
        for rank, (i, slot) in enumerate(contribs[v]):
            if i != "loss":
                acc[i][slot] = rank > 0
    # parameters: the first op the backward visits writes them, the others add
    acc_params, seen = [False] * len(ops), set()
    for i in range(len(ops) - 1, -1, -1):
        o = ops[i]
        key = None if o.dw is None else (o.dw.__array_interface__["data"][0], o.dw.size)
        if key is not None:
            acc_params[i] = key in seen
            seen.add(key)
    # aliases: one contribution from an in-place op: the value takes that op's output gradient
    parent = list(range(n_val))

    def find(v: Any) -> Any:
        while parent[v] != v:
            v = parent[v]
        return v
    aliased_op = set()
    for v in range(n_val):
        if v in inputs or len(contribs[v]) != 1 or contribs[v][0][0] == "loss":
            continue
        i, slot = contribs[v][0]
        if ops[i].kind in _IN_PLACE and ops[i].ins.count(v) == 1 and \
                not (ops[i].kind == ADD and i in aliased_op):
            parent[v] = find(ops[i].out)
            aliased_op.add(i)
    # lifetimes in backward time (the loss at -1, op i at len(ops) - 1 - i): a gradient is
    # born with its first contribution and dies when its producer's backward has read it
    T = len(ops)
    producer = {o.out: i for i, o in enumerate(ops)}
    born, dies = {}, {}
    live = [v not in inputs and bool(contribs[v]) for v in range(n_val)]  # fused-away: neither
    for v in range(n_val):
        if not live[v]:
            continue
        r = find(v)
        first = contribs[v][0][0]
        b = -1 if first == "loss" else T - 1 - first
        d = T - 1 - producer[v]
        born[r] = min(born.get(r, b), b)
        dies[r] = max(dies.get(r, d), d)
    slot_of_root, slot_width, free_at = {}, [], []   # free_at[s]: when slot s's holder dies
    for r in sorted(born, key=lambda r: (born[r], r)):
        width = max(program.widths[v] for v in range(n_val) if live[v] and find(v) == r)
        s = next((s for s, t in enumerate(free_at) if t < born[r]), None)
        if s is None:
            s = len(slot_width)
            slot_width.append(0)
            free_at.append(0)
        slot_width[s] = max(slot_width[s], width)
        free_at[s] = dies[r]
        slot_of_root[r] = s
    slot = [slot_of_root[find(v)] if live[v] else None for v in range(n_val)]
    return GradPlan(tuple(tuple(a) for a in acc), tuple(acc_params), tuple(slot), tuple(slot_width))


def needs_preact(op: Any) -> Any:
    """A dense op keeps its pre-activation when its activation's derivative needs the input."""
    return op.kind == DENSE and not registry.derivative_from_output(
        op.act, op.params.get("negative_slope", 0.01))


# slot[v]: the forward-only workspace buffer of value v (None: a model input, or a value no op
# makes); slot_width[s]: its width (each buffer holds batch × slot_width[s] elements)
ValuePlan = namedtuple("ValuePlan", "slot slot_width")



def _best_fit(program: Any, wanted: Any, last: Any) -> Any:
    """Buffers for the outputs of the ops with wanted[i], in op order: value v's buffer is
    free for a later op once op last[v] has run (None: never). Each op takes the smallest free
    buffer wide enough, else the widest free one (grown), else a new one. Returns (slot of
    each value, None where it has none; width of each buffer)."""
    slot, slot_width, holder = [None] * len(program.widths), [], []   # holder[s]: its value
    for i, o in enumerate(program.ops):
        if not wanted[i]:
            continue
        width = program.widths[o.out]
        free = [s for s, v in enumerate(holder) if last[v] is not None and last[v] < i]
        fits = [s for s in free if slot_width[s] >= width]
        s = min(fits, key=lambda s: slot_width[s]) if fits else \
            max(free, key=lambda s: slot_width[s], default=None)
        if s is None:
            s = len(slot_width)
            slot_width.append(0)
            holder.append(None)
        slot_width[s] = max(slot_width[s], width)
        holder[s] = o.out
        slot[o.out] = s
    return tuple(slot), tuple(slot_width)

def plan_values(program: Any) -> Any:
    """The workspace of forward-only runs (inference): op i's output takes a buffer whose
    holder is dead, i.e. was last read by an op before i (never one of op i's own inputs:
    a kernel does not write over what it reads)."""
    ops, inputs = program.ops, set(program.inputs)
    last = {}   # value -> the last op that makes or reads it
    for i, o in enumerate(ops):
        last[o.out] = max(last.get(o.out, i), i)
        for v in o.ins:
            last[v] = i
    slot, slot_width = _best_fit(program, [o.out not in inputs for o in ops], last)
    return ValuePlan(slot, slot_width)


# moving[v]: value v changes along a direction of the parameters (R{v} ≠ 0 in general);
# slot[v]: the buffer of R{v} (None: it does not move); slot_width[s]: its width
RValuePlan = namedtuple("RValuePlan", "moving slot slot_width")

# ops whose R-backward does not read their inputs' R-values (linear in them)
_R_UNREAD = (ADD, CONCAT, DROPOUT)


def plan_rvalues(program: Any) -> Any:
    """The R-forward's workspace. A value moves when its op has parameters or reads a value
    that moves (a Python module's output is taken to move); the model's inputs do not. R{v}
    is kept to the backward when an op there reads it (all but Add, Concat, Dropout; the loss
    reads the output's); otherwise its buffer is free once its last reader has run, for a
    later op's R-value (never one of that op's own inputs). Unsupported when the output
    does not move (no parameter reaches it)."""
    ops, inputs = program.ops, set(program.inputs)
    moving = [False] * len(program.widths)
    for o in ops:
        moving[o.out] = o.out not in inputs and (
            o.kind == MODULE or o.w is not None or o.b is not None or any(moving[v] for v in o.ins))
    if not moving[program.output]:
        raise Unsupported("the output does not depend on the parameters")
    last = {}   # R-value -> the last op that reads it in the forward (None: kept)
    for i, o in enumerate(ops):
        for v in o.ins:
            if moving[v] and last.get(v, 0) is not None:
                last[v] = i if o.kind in _R_UNREAD else None
    last[program.output] = None
    slot, slot_width = _best_fit(program, [moving[o.out] for o in ops],
                                 {v: last.get(v, 0) for v in range(len(program.widths))})
    return RValuePlan(tuple(moving), slot, slot_width)


# ops[i]: (offset of op i's w, of its b) in the flat parameter vector, -1 where it has none;
# n: that vector's length
Offsets = namedtuple("Offsets", "ops n")


def plan_offsets(program: Any, params: Any) -> Any:
    """Where each op's parameter arrays sit in the flat layout of params (the model's
    parameters, concatenated raveled as curvature.vector_views lays them out)."""
    at, n = {}, 0
    for p in params:
        at[(p.data.__array_interface__["data"][0], p.size)] = n
        n += p.size

    def offset(a: Any) -> Any:
        if a is None:
            return -1
        key = (a.__array_interface__["data"][0], a.size)
        if key not in at:
            raise Unsupported("an op's parameter is not among the model's parameters")
        return at[key]
    return Offsets(tuple((offset(o.w), offset(o.b)) for o in program.ops), n)

