# Forward-only runs of a tape (inference: predict, evaluate, model(x) in eval mode). The ops
# are the tape's (built and checked by Tape), without the pre-activations a backward needs;
# the values live in the buffers of plan.plan_values, each reused once its value is dead, and
# the inputs and the output are the caller's arrays: a run allocates nothing. Dropout,
# LayerNorm and BatchNorm1d run in C too, in eval mode: each run first reads their settings
# from their modules (as Tape._sync does for a training run).
# Included by _kernels.pyx (one extension module); the shared checks live there.

cdef class Inference:
    """``run(xs, out)``: the program's forward on the inputs xs into out (batch, n_out).

    program: ``plan.lower(model)``. The workspace holds any batch up to the largest seen
    (a chunked run's last, partial chunk takes a prefix of each buffer)."""
    cdef Tape tape                   # the ops, checked, and the parameter arrays kept alive
    cdef fp_op *ops
    cdef void **val
    cdef readonly object dtype
    cdef readonly int64_t n_out, capacity
    cdef tuple slot, slot_width, inputs, runs
    cdef int out
    cdef list bufs
    cdef object values               # per value, for the Python ops: its (batch, width) array
    cdef int64_t values_batch
    cdef bint has_modules
    cdef tuple stateful              # (op index, kind, module) of Dropout, LayerNorm, BatchNorm1d
    cdef list saved                  # their statistics' scratch (LayerNorm's grow with the batch)

    def __cinit__(self):
        self.ops = NULL
        self.val = NULL

    def __init__(self, program, dtype):
        from fastprop import plan as P
        self.tape = Tape(program, P.plan_grads(program), dtype)
        cdef Tape t = self.tape
        self.dtype = t.dtype
        self.ops = <fp_op*>calloc(max(t.n_ops, 1), sizeof(fp_op))
        self.val = <void**>calloc(t.n_val, sizeof(void*))
        if not (self.ops and self.val):
            raise MemoryError()
        stateful, self.saved = [], []
        for i in range(t.n_ops):
            self.ops[i] = t.ops[i]
            self.ops[i].preact = NULL   # kept for a backward only
            self.ops[i].mask, self.ops[i].ws = NULL, NULL
            o = program.ops[i]
            if o.kind in (P.DROPOUT, P.LAYERNORM, P.BATCHNORM):
                stateful.append((i, o.kind, o.module))
            if o.kind == P.BATCHNORM:   # per feature: sized once
                w = program.widths[o.out]
                mean, rstd = np.empty(w, t.dtype), np.empty(w, t.dtype)
                self.saved += [mean, rstd]
                self.ops[i].mean, self.ops[i].rstd = _ptr(mean), _ptr(rstd)
        self.stateful = tuple(stateful)
        vp = P.plan_values(program)
        if vp.slot[t.out] is None:
            raise ValueError("the program's output is one of its inputs: nothing to run")
        self.slot, self.slot_width = vp.slot, vp.slot_width
        self.inputs, self.out, self.runs, self.n_out = t.inputs, t.out, t.runs, t.n_out
        self.has_modules = any(not isinstance(r, tuple) for r in self.runs)
        self.capacity, self.bufs, self.values_batch = 0, [], -1

    def __dealloc__(self):
        free(self.ops)
        free(self.val)

    cdef _reserve(self, int64_t batch):
        if batch <= self.capacity:
            return
        self.bufs = [np.empty(batch * w, self.dtype) for w in self.slot_width]
        for v, s in enumerate(self.slot):
            self.val[v] = NULL if s is None else _ptr(self.bufs[s])
        cdef fp_op *k
        for i, kind, m in self.stateful:
            if kind == FP_OP_LAYERNORM:   # per row: grows with the batch
                k = &self.ops[i]
                mean, rstd = np.empty(batch, self.dtype), np.empty(batch, self.dtype)
                self.saved += [mean, rstd]
                k.mean, k.rstd = _ptr(mean), _ptr(rstd)
        self.capacity, self.values_batch = batch, -1

    cdef _sync(self):
        """Each Dropout, LayerNorm and BatchNorm1d op takes its module's settings for this run
        (p, eps, momentum, track_running_stats), in eval mode: a module in training mode is a
        ValueError (its forward would draw a mask or move statistics: the modular path's job)."""
        cdef fp_op *k
        for i, kind, m in self.stateful:
            if m.training:
                raise ValueError(f"{type(m).__name__} is in training mode: inference runs eval "
                                 f"mode only (call model.eval(), or use the modular forward)")
        for i, kind, m in self.stateful:
            k = &self.ops[i]
            if kind == FP_OP_DROPOUT:   # eval mode: the identity
                k.prob, k.active, k.track = m._p, 0, 0
            elif kind == FP_OP_LAYERNORM:
                k.eps = m.eps
            else:   # BatchNorm1d._forward's flags in eval mode: running statistics if tracked
                k.eps = m.eps
                k.momentum = -1.0 if m.momentum is None else m.momentum
                k.track, k.active = 0, not m.track_running_stats

    cdef _python_values(self, int64_t batch, tuple xs, object out):
        """Each value as an array, for the Python ops' callbacks (a view of its buffer)."""
        if self.values_batch != batch:
            widths = self.tape.program.widths
            self.values = [None if s is None else self.bufs[s][:batch * widths[v]].reshape(batch, widths[v])
                           for v, s in enumerate(self.slot)]
            self.values_batch = batch
        for v, x in zip(self.inputs, xs):
            self.values[v] = x
        self.values[self.out] = out if out is not None else \
            self.bufs[self.slot[self.out]][:batch * self.n_out].reshape(batch, self.n_out)

    @property
    def n_inputs(self):
        return len(self.inputs)

    def run(self, tuple xs, out=None):
        """Runs the forward on xs (C-contiguous (batch, width) arrays of the dtype, one per
        input); writes out (C-contiguous (batch, n_out), written in place), or, when out is
        None, returns the output's workspace view (valid until the next run)."""
        if len(xs) != len(self.inputs):
            raise ValueError(f"the model takes {len(self.inputs)} inputs, got {len(xs)}")
        cdef int64_t batch = -1
        cdef Tape t = self.tape
        for v, x in zip(self.inputs, xs):
            if not isinstance(x, np.ndarray) or x.dtype != self.dtype or x.ndim != 2 or \
                    x.shape[1] != t.width[v] or not x.flags.c_contiguous or \
                    (batch >= 0 and x.shape[0] != batch):
                raise ValueError(f"x must be a C-contiguous (batch, {t.width[v]}) array of "
                                 f"{self.dtype}, got {getattr(x, 'shape', type(x).__name__)}")
            batch = x.shape[0]
        if out is not None:
            out = _out(out, "out", (batch, self.n_out), np.empty(0, self.dtype))
        self._sync()
        self._reserve(max(batch, 1))
        for v, x in zip(self.inputs, xs):
            self.val[v] = _ptr(x)
        s = self.slot[self.out]
        self.val[self.out] = _ptr(out) if out is not None else _ptr(self.bufs[s])
        if self.has_modules:
            self._python_values(batch, xs, out)
        cdef int rc, a, b
        cdef bint f64 = self.dtype == np.float64
        for run in self.runs:
            if isinstance(run, tuple):
                a, b = run
                with nogil:
                    rc = c_tape_forward(f64, self.ops, a, b, self.val, t.width, batch)
                _check(rc, "Inference.run")
            else:
                o = t.program.ops[run]
                np.copyto(self.values[o.out], o.module._forward(self.values[o.ins[0]]))
        if out is not None:
            return out
        return self.bufs[s][:batch * self.n_out].reshape(batch, self.n_out)
