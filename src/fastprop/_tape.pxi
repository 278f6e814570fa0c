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
    elif o.kind == P.DROPOUT:
        ok = len(o.ins) == 1 and w_in[0] == w_out
    elif o.kind in (P.LAYERNORM, P.BATCHNORM):
        ok = len(o.ins) == 1 and w_in[0] == w_out and (o.w is None) == (o.dw is None) and \
            (o.b is None) == (o.db is None) and (o.b is None or o.w is not None) and \
            all(a is None or a.shape == (w_out,) for a in (o.w, o.b, o.dw, o.db))
    else:
        ok = False
    if not ok:
        raise ValueError(f"op {i} (kind {o.kind}) has inputs of widths {w_in}, output {w_out} "
                         f"and parameters that its kernel cannot run")


cdef class Tape:
    """A model's tape: ``forward(xs)`` and ``train(xs, target, loss)`` with the grad table.

    program, grads: ``plan.lower(model)`` and ``plan.plan_grads(program)``. The parameter
    arrays are views of the model's flat buffers, kept alive here. Value and gradient
    workspaces, and what Dropout, LayerNorm and BatchNorm1d ops save for the backward (mask,
    statistics), are allocated once per batch size (the two most recent are kept).

    Each run first reads those three layers' modes and settings from their modules
    (``training``, p, eps, momentum, ...: a few attribute reads), so ``train()``/``eval()``
    apply to the next step without re-planning; Dropout's stream position goes from the
    module into the op and back (one stream per module, the modular path's), BatchNorm1d's
    running statistics and num_batches_tracked are written in the module's own buffers.

    The R-passes (curvature): built with ``rvalues=plan.plan_rvalues(program)`` and
    ``offsets=plan.plan_offsets(program, params)`` from an unfused program (``lower(model,
    fused=False)``), ``rforward(xs, v)`` then ``rbackward(v, hv, gauss_newton)`` add the
    Hessian (or Gauss–Newton) product with the flat direction v into hv, the loss's
    ``*_hvp`` kernel between them writing ``output_grads``. Their R-values and R{g} slots
    are allocated once per batch size too.
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
    cdef tuple stateful, drops       # (op index, kind, module) of the moded layers; the Dropouts
    cdef object rng                  # (len(drops), 2) uint64: each Dropout's {key, counter}
    cdef void **rval
    cdef void **rgrad
    cdef object rplan                # plan.RValuePlan, or None: no R-passes
    cdef readonly int64_t n_params   # the length of v and hv (R-passes)
    cdef int64_t rbatch, rdone       # the R workspace's batch; the batch of the last R-forward
    cdef dict rspaces
    cdef list rvalues, rgviews       # per value: its R-value / R{g} view (None: none)

    def __cinit__(self):
        self.ops = NULL
        self.width = NULL
        self.val = self.grad = NULL
        self.rval = self.rgrad = NULL

    def __init__(self, program, grads, dtype, int loss_code=-1, rvalues=None, offsets=None):
        from fastprop import plan as P
        self.program, self.plan, self.dtype = program, grads, np.dtype(dtype)
        self.loss_code = loss_code
        self.n_ops, self.n_val = len(program.ops), len(program.widths)
        self.ops = <fp_op*>calloc(max(self.n_ops, 1), sizeof(fp_op))
        self.width = <int64_t*>calloc(self.n_val, sizeof(int64_t))
        self.val = <void**>calloc(self.n_val, sizeof(void*))
        self.grad = <void**>calloc(self.n_val, sizeof(void*))
        self.rval = <void**>calloc(self.n_val, sizeof(void*))
        self.rgrad = <void**>calloc(self.n_val, sizeof(void*))
        if not (self.ops and self.width and self.val and self.grad and self.rval and self.rgrad):
            raise MemoryError()
        for v, w in enumerate(program.widths):
            self.width[v] = w
        self.arrays, self.modules, runs, start = [], [], [], 0
        like = np.empty(0, self.dtype)
        cdef fp_op *k
        drops, stateful = [], []
        for o in program.ops:
            if o.kind == P.DROPOUT and not any(d is o.module for d in drops):
                drops.append(o.module)
        self.drops = tuple(drops)
        self.rng = np.zeros((max(len(drops), 1), 2), np.uint64)
        cdef uint64_t *rng = <uint64_t*>_ptr(self.rng)
        cdef int slot
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
            k.off_w = k.off_b = -1
            if offsets is not None:   # checked: each parameter inside v, as large as the op's
                ow, ob = offsets.ops[i]
                for off, a in ((ow, o.w), (ob, o.b)):
                    if (a is None) != (off < 0) or \
                            (a is not None and not 0 <= off <= offsets.n - a.size):
                        raise ValueError(f"op {i}: parameter offsets {offsets.ops[i]} outside "
                                         f"the {offsets.n} parameters")
                k.off_w, k.off_b = ow, ob
            if o.kind in (P.DROPOUT, P.LAYERNORM, P.BATCHNORM):
                stateful.append((i, o.kind, o.module))
            if o.kind == P.DROPOUT:
                slot = next(s for s, d in enumerate(drops) if d is o.module)
                k.rng = rng + 2 * slot
            if o.kind == P.BATCHNORM and o.module.running_mean is not None:
                m, w = o.module, program.widths[o.out]
                rm = _out(m.running_mean, f"op {i} running_mean", (w,), like)
                rv = _out(m.running_var, f"op {i} running_var", (w,), like)
                nt = _out(m.num_batches_tracked, f"op {i} num_batches_tracked", (),
                          np.empty(0, np.int64))
                self.arrays += [rm, rv, nt]
                k.run_mean, k.run_var, k.tracked = _ptr(rm), _ptr(rv), <int64_t*>_ptr(nt)
            if o.kind == P.MODULE:
                if start < i:
                    runs.append((start, i))
                runs.append(i)
                start = i + 1
                self.modules.append(o.module)
        if start < self.n_ops:
            runs.append((start, self.n_ops))
        self.runs = tuple(runs)
        self.stateful = tuple(stateful)
        self.inputs, self.out = tuple(program.inputs), program.output
        self.n_out = program.widths[program.output]
        self.batch = -1
        self.spaces = {}
        self.rplan = rvalues
        self.n_params = -1 if offsets is None else offsets.n
        if rvalues is not None and (offsets is None or len(rvalues.slot) != self.n_val):
            raise ValueError("the R-passes need the offsets and an R-value plan of this program")
        self.rbatch = self.rdone = -1
        self.rspaces = {}

    def __dealloc__(self):
        free(self.ops)
        free(self.width)
        free(self.val)
        free(self.grad)
        free(self.rval)
        free(self.rgrad)

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
            saved = [_saved(o.kind, batch, widths[o.out], self.dtype, P) for o in self.program.ops]
            if len(self.spaces) >= 2:
                del self.spaces[next(iter(self.spaces))]
            self.spaces[batch] = (values, gviews, preacts, bufs, saved)
        self.values, self.gviews, preacts, _, saved = self.spaces[batch]
        for v in range(self.n_val):
            self.val[v] = _ptr(self.values[v])
            self.grad[v] = _ptr(self.gviews[v])
        cdef fp_op *k
        for i in range(self.n_ops):
            k = &self.ops[i]
            k.preact = _ptr(preacts[i])
            mask, k.mean, k.rstd, k.ws = saved[i][0], _ptr(saved[i][1]), _ptr(saved[i][2]), _ptr(saved[i][3])
            k.mask = <uint8_t*>_ptr(mask)
        self.batch = batch

    cdef _save_streams(self):
        """Each Dropout's stream position back from the run, as its own forward leaves it."""
        cdef uint64_t *rng = <uint64_t*>_ptr(self.rng)
        for s, m in enumerate(self.drops):
            m._counter = rng[2 * s + 1]

    cdef _sync(self, int64_t batch):
        """Each Dropout, LayerNorm and BatchNorm1d op takes its module's mode and settings
        for this run, each Dropout stream its position. Raises (nothing written) where the
        module's forward would: BatchNorm1d in training mode on a batch of one row."""
        cdef fp_op *k
        cdef uint64_t *rng = <uint64_t*>_ptr(self.rng)   # no memoryview: a step allocates nothing
        cdef bint training
        for i, kind, m in self.stateful:
            if kind == FP_OP_BATCHNORM and m.training and batch < 2:
                raise ValueError(f"Expected more than 1 value per channel when training, got "
                                 f"input size ({batch}, {self.width[self.ops[i].out]})")
        for s, m in enumerate(self.drops):
            rng[2 * s], rng[2 * s + 1] = m._key, m._counter
        for i, kind, m in self.stateful:
            k = &self.ops[i]
            if kind == FP_OP_LAYERNORM:
                k.eps = m.eps
                continue
            training = m.training
            if kind == FP_OP_DROPOUT:
                k.prob = m._p
                k.active = training and k.prob > 0
            else:   # BatchNorm1d._forward's two flags
                k.eps = m.eps
                k.momentum = -1.0 if m.momentum is None else m.momentum
                k.track = training and m.track_running_stats
                k.active = training or not m.track_running_stats

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
        self._sync(batch)
        try:
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
        finally:
            self._save_streams()

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

    # ------------------------------------------------------------ the R-passes (curvature)
    cdef _rworkspace(self, int64_t batch):
        """The R-values' buffers (plan.plan_rvalues) and the R{g} slots (the grad table's
        plan again), per batch size; the value workspace is _workspace's."""
        if batch == self.rbatch:
            return
        widths = self.program.widths
        if batch not in self.rspaces:
            rbufs = [np.empty(batch * w, self.dtype) for w in self.rplan.slot_width]
            rvalues = [None if s is None else rbufs[s][:batch * widths[v]].reshape(batch, widths[v])
                       for v, s in enumerate(self.rplan.slot)]
            gbufs = [np.empty(batch * w, self.dtype) for w in self.plan.slot_width]
            rgviews = [None if s is None else gbufs[s][:batch * widths[v]].reshape(batch, widths[v])
                       for v, s in enumerate(self.plan.slot)]
            if len(self.rspaces) >= 2:
                del self.rspaces[next(iter(self.rspaces))]
            self.rspaces[batch] = (rvalues, rgviews)
        self.rvalues, self.rgviews = self.rspaces[batch]
        for v in range(self.n_val):
            self.rval[v] = _ptr(self.rvalues[v])
            self.rgrad[v] = _ptr(self.rgviews[v])
        self.rbatch = batch

    cdef _direction(self, a, str name, bint write):
        if not isinstance(a, np.ndarray) or a.dtype != self.dtype or a.shape != (self.n_params,) \
                or not a.flags.c_contiguous or (write and not a.flags.writeable):
            raise ValueError(f"{name} must be a{' writeable' if write else ''} C-contiguous "
                             f"({self.n_params},) array of {self.dtype}")
        return a

    @property
    def n_inputs(self):
        """The number of the model's inputs (arrays each pass takes)."""
        return len(self.inputs)

    @property
    def has_callbacks(self):
        """Whether some op is a Python module's (its R-passes then take vdict and hdict)."""
        return bool(self.modules)

    @property
    def output_grads(self):
        """(∂J/∂z, R{∂J/∂z}) of the latest R-forward's output: the loss writes them."""
        if self.rdone < 0:
            return None
        return self.gviews[self.out], self.rgviews[self.out]

    def rforward(self, tuple xs, v, vdict=None):
        """The R-forward along the flat direction v: returns (z, R{z}), workspace views.
        vdict (Parameter -> view of v) is what the Python modules' _rforward take."""
        if self.rplan is None:
            raise ValueError("this tape was built without the R-passes' plan")
        cdef int64_t batch = self._inputs(xs)
        V = self._direction(v, "v", False)
        self._rworkspace(batch)
        self.rdone = -1
        cdef int rc, a, b
        cdef bint f64 = self.dtype == np.float64
        cdef vptr pv = _ptr(V)
        self._sync(batch)
        try:
            for run in self.runs:
                if isinstance(run, tuple):
                    a, b = run
                    with nogil:
                        rc = c_tape_rforward(f64, self.ops, a, b, self.val, self.rval, self.width,
                                             batch, pv)
                    _check(rc, "Tape.rforward")
                else:
                    o = self.program.ops[run]
                    y, ry = o.module._rforward(self.values[o.ins[0]], self.rvalues[o.ins[0]], vdict)
                    np.copyto(self.values[o.out], y)
                    if ry is None:
                        self.rvalues[o.out].fill(0)
                    else:
                        np.copyto(self.rvalues[o.out], ry)
        finally:
            self._save_streams()
        self.rdone = batch
        return self.values[self.out], self.rvalues[self.out]

    def rbackward(self, v, hv, bint gauss_newton=False, vdict=None, hdict=None):
        """The R-backward of the latest rforward (the same v) from output_grads: adds
        R{∂J/∂θ} into hv (flat). gauss_newton: ∂J/∂z is not read (the Gauss–Newton pass).
        vdict, hdict: Parameter -> views of v and hv, for the Python modules' _rbackward."""
        if self.rdone < 0 or self.rdone != self.batch or self.rdone != self.rbatch:
            raise ValueError("rbackward needs the R-forward of this batch first")
        V, H = self._direction(v, "v", False), self._direction(hv, "hv", True)
        cdef int rc, a, b
        cdef int64_t batch = self.rdone
        cdef bint f64 = self.dtype == np.float64
        cdef vptr pv = _ptr(V), ph = _ptr(H)
        cdef void **grad = NULL if gauss_newton else self.grad
        for run in reversed(self.runs):
            if isinstance(run, tuple):
                a, b = run
                with nogil:
                    rc = c_tape_rbackward(f64, self.ops, a, b, self.val, self.rval, grad,
                                          self.rgrad, self.width, batch, pv, ph)
                _check(rc, "Tape.rbackward")
            else:
                self._module_rbackward(run, gauss_newton, vdict, hdict)

    cdef _module_rbackward(self, int i, bint gauss_newton, vdict, hdict):
        o = self.program.ops[i]
        dest, rdest = self.gviews[o.ins[0]], self.rgviews[o.ins[0]]
        g = None if gauss_newton else self.gviews[o.out]
        gx, rgx = o.module._rbackward(g, self.rgviews[o.out], vdict, hdict, rdest is not None)
        if rdest is None:
            return
        acc = self.plan.acc[i][0]
        for d, t in ((None if gauss_newton else dest, gx), (rdest, rgx)):
            if d is None:
                continue
            if t is None:   # a share that is zero
                if not acc:
                    d.fill(0)
            elif acc:
                d += t
            else:
                np.copyto(d, t)

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


cdef tuple _saved(int kind, int64_t batch, int64_t width, object dtype, object P):
    """What an op keeps for its backward: (mask, mean, rstd, ws), None where it keeps nothing."""
    if kind == P.DROPOUT:
        return np.empty(batch * width, np.uint8), None, None, None
    if kind == P.LAYERNORM:
        return None, np.empty(batch, dtype), np.empty(batch, dtype), None
    if kind == P.BATCHNORM:
        return None, np.empty(width, dtype), np.empty(width, dtype), np.empty(2 * width, dtype)
    return None, None, None, None
