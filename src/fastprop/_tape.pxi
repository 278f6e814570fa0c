# Bindings of csrc/tape.c: Tape runs a planned op list (fastprop/plan.py) in C; an op of a
# Python module in it is a call back into the module's _forward/_backward, between C runs.
# Included by _kernels.pyx (one extension module); the shared checks live there.

cdef _check_op(int i, object o, tuple widths, object P):
    """Op i of a program reads and writes values that exist, with the widths its kernel
    assumes: C trusts these numbers (ValueError naming the op otherwise)."""
    n_val = len(widths)
    if not 0 <= o.out < n_val or not o.ins or not all(0 <= v < n_val for v in o.ins) or \
            o.out in o.ins:
        raise ValueError(f"op {i} names values outside [0, {n_val}) or writes its own input")
    w_in, w_out = [widths[v] for v in o.ins], widths[o.out]
    if o.kind == P.DENSE:
        ok = len(o.ins) == 1 and o.w is not None and o.w.shape == (w_out, w_in[0]) and \
            o.dw is not None and o.dw.shape == o.w.shape and (o.b is None) == (o.db is None) and \
            (o.b is None or (o.b.shape == (w_out,) and o.db.shape == (w_out,)))
    elif o.kind == P.PRELU:
        ok = len(o.ins) == 1 and w_in[0] == w_out and o.w is not None and o.w.ndim == 1 and \
            o.w.size in (1, w_out) and o.dw is not None and o.dw.shape == o.w.shape
    elif o.kind in (P.ACT, P.MODULE):
        ok = len(o.ins) == 1 and (o.kind == P.MODULE or w_in[0] == w_out)
    elif o.kind in (P.ADD, P.MUL):
        ok = all(w == w_out for w in w_in) and (o.kind == P.ADD or len(o.ins) == 2)
    elif o.kind == P.CONCAT:
        ok = sum(w_in) == w_out
    else:
        ok = False
    if not ok:
        raise ValueError(f"op {i} (kind {o.kind}) has inputs of widths {w_in}, output {w_out} "
                         f"and parameters that its kernel cannot run")


cdef class Tape:
    """A model's tape: ``forward(xs)`` and ``train(xs, target, loss)`` with the grad table.

    program, grads: ``plan.lower(model)`` and ``plan.plan_grads(program)``. The parameter
    arrays are views of the model's flat buffers, kept alive here. Value and gradient
    workspaces are allocated once per batch size (the two most recent are kept).
    """
    cdef fp_op *ops
    cdef int64_t *width
    cdef void **val
    cdef void **grad
    cdef int n_ops, n_val, out
    cdef readonly object dtype
    cdef readonly int64_t batch, n_out
    cdef readonly int loss_code      # the FP_LOSS_* its owner trains with (-1: none)
    cdef object program, plan
    cdef tuple inputs, runs          # runs: (a, b) of C ops, or a callback's op index
    cdef list arrays, modules
    cdef dict spaces
    cdef list values, gviews         # per value: its (batch, width) array / gradient view

    def __cinit__(self):
        self.ops = NULL
        self.width = NULL
        self.val = self.grad = NULL

    def __init__(self, program, grads, dtype, int loss_code=-1):
        from fastprop import plan as P
        self.program, self.plan, self.dtype = program, grads, np.dtype(dtype)
        self.loss_code = loss_code
        self.n_ops, self.n_val = len(program.ops), len(program.widths)
        self.ops = <fp_op*>calloc(max(self.n_ops, 1), sizeof(fp_op))
        self.width = <int64_t*>calloc(self.n_val, sizeof(int64_t))
        self.val = <void**>calloc(self.n_val, sizeof(void*))
        self.grad = <void**>calloc(self.n_val, sizeof(void*))
        if not (self.ops and self.width and self.val and self.grad):
            raise MemoryError()
        for v, w in enumerate(program.widths):
            self.width[v] = w
        self.arrays, self.modules, runs, start = [], [], [], 0
        like = np.empty(0, self.dtype)
        cdef fp_op *k
        for i, o in enumerate(program.ops):
            _check_op(i, o, program.widths, P)
            k = &self.ops[i]
            k.kind, k.out, k.n_in = o.kind, o.out, len(o.ins)
            if k.n_in > FP_OP_MAX_IN:
                raise ValueError(f"op {i} has {k.n_in} inputs, at most {FP_OP_MAX_IN}")
            for s, v in enumerate(o.ins):
                k.in_[s], k.acc[s] = v, grads.acc[i][s]
            k.acc_params = grads.acc_params[i]
            k.act = _act(o.act)
            k.p = _params(o.params.get("negative_slope", 0.01), o.params.get("beta", 1.0),
                          o.params.get("threshold", 20.0))
            for name, a in (("w", o.w), ("b", o.b), ("dw", o.dw), ("db", o.db)):
                if a is not None:
                    self.arrays.append(_out(a, f"op {i} {name}", a.shape, like))
            k.w, k.b, k.dw, k.db = _ptr(o.w), _ptr(o.b), _ptr(o.dw), _ptr(o.db)
            k.n_w = 0 if o.w is None else o.w.size
            if o.kind == P.MODULE:
                if start < i:
                    runs.append((start, i))
                runs.append(i)
                start = i + 1
                self.modules.append(o.module)
        if start < self.n_ops:
            runs.append((start, self.n_ops))
        self.runs = tuple(runs)
        self.inputs, self.out = tuple(program.inputs), program.output
        self.n_out = program.widths[program.output]
        self.batch = -1
        self.spaces = {}

    def __dealloc__(self):
        free(self.ops)
        free(self.width)
        free(self.val)
        free(self.grad)

    cdef _workspace(self, int64_t batch):
        """Each value's array, the gradient slots and the kept pre-activations, per batch size."""
        from fastprop import plan as P
        if batch == self.batch:
            return
        if batch not in self.spaces:
            widths, slots = self.program.widths, self.plan.slot
            values = [None if v in self.inputs else np.empty((batch, w), self.dtype)
                      for v, w in enumerate(widths)]
            bufs = [np.empty(batch * w, self.dtype) for w in self.plan.slot_width]
            gviews = [None if s is None else bufs[s][:batch * widths[v]].reshape(batch, widths[v])
                      for v, s in enumerate(slots)]
            preacts = [np.empty((batch, widths[o.out]), self.dtype) if P.needs_preact(o) else None
                       for o in self.program.ops]
            if len(self.spaces) >= 2:
                del self.spaces[next(iter(self.spaces))]
            self.spaces[batch] = (values, gviews, preacts, bufs)
        self.values, self.gviews, preacts, _ = self.spaces[batch]
        for v in range(self.n_val):
            self.val[v] = _ptr(self.values[v])
            self.grad[v] = _ptr(self.gviews[v])
        for i in range(self.n_ops):
            self.ops[i].preact = _ptr(preacts[i])
        self.batch = batch

    cdef _inputs(self, tuple xs):
        """Points the input values at xs (checked C-contiguous arrays of the tape's dtype)."""
        if len(xs) != len(self.inputs):
            raise ValueError(f"the tape takes {len(self.inputs)} inputs, got {len(xs)}")
        cdef int64_t batch = -1
        for v, x in zip(self.inputs, xs):
            X = _floats(x, "x", 2)
            if X.dtype != self.dtype or X.shape[1] != self.width[v] or \
                    (batch >= 0 and X.shape[0] != batch):
                raise ValueError(f"x has shape {X.shape} and dtype {X.dtype}, expected "
                                 f"(batch, {self.width[v]}) of {self.dtype}")
            batch = X.shape[0]
        self._workspace(batch)
        for v, x in zip(self.inputs, xs):
            self.values[v] = x
            self.val[v] = _ptr(x)
        return batch

    cdef _run_forward(self, int64_t batch):
        cdef int rc, a, b
        cdef bint f64 = not _f32(self.values[self.out])
        for run in self.runs:
            if isinstance(run, tuple):
                a, b = run
                with nogil:
                    rc = c_tape_forward(f64, self.ops, a, b, self.val, self.width, batch)
                _check(rc, "Tape.forward")
            else:
                o = self.program.ops[run]
                y = o.module._forward(self.values[o.ins[0]])
                np.copyto(self.values[o.out], y)

    @property
    def output(self):
        """The output value of the latest pass (a view of the workspace)."""
        return None if self.batch < 0 else self.values[self.out]

    def forward(self, tuple xs):
        """Runs the ops on the inputs xs; returns the output workspace (batch, n_out)."""
        self._run_forward(self._inputs(xs))
        return self.values[self.out]

    def train(self, tuple xs, target, int loss_kind, bint accumulate=False, bint finite_only=False):
        """Forward, the loss (FP_LOSS_*) and its gradient, the backward: every parameter's
        gradient written (added with accumulate). Returns the loss; nothing is written when
        an argument is invalid, and no gradient when finite_only and the loss is not finite."""
        cdef int64_t batch = self._inputs(xs)
        if batch < 1:
            raise ValueError("x must have at least one row: the loss is a mean")
        if loss_kind == FP_LOSS_GAUSSIAN_NLL and self.n_out % 2:
            raise ValueError(f"gaussian_nll needs an even number of outputs, got {self.n_out}")
        labels, T = _loss_target(loss_kind, target, batch, self.n_out, self.dtype)
        self._run_forward(batch)
        cdef double value = 0
        cdef int rc, a, b, acc = accumulate
        cdef bint f64 = not _f32(self.values[self.out])
        cdef vptr pg = self.grad[self.out], pz = self.val[self.out], pl = _ptr(labels), pt = _ptr(T)
        with nogil:
            rc = c_tape_loss(f64, &value, pg, pz, batch, self.n_out, loss_kind, pl, pt)
        _check(rc, "Tape.train")
        if finite_only and not (value - value == 0):   # NaN or ±inf
            return value
        if not accumulate:
            for m in self.modules:   # a Python module's _backward adds into its gradients
                m.zero_grad()
        for run in reversed(self.runs):
            if isinstance(run, tuple):
                a, b = run
                with nogil:
                    rc = c_tape_backward(f64, self.ops, a, b, self.val, self.grad, self.width,
                                         batch, acc)
                _check(rc, "Tape.train")
            else:
                self._module_backward(run)
        return value

    cdef _module_backward(self, int i):
        o = self.program.ops[i]
        dest = self.gviews[o.ins[0]]
        gx = o.module._backward(self.gviews[o.out], dest is not None)
        if dest is None:
            return
        if self.plan.acc[i][0]:
            dest += gx
        else:
            np.copyto(dest, gx)
