# Bindings of csrc/fit.c: fit's epoch in C on the fused chain (train.py's _CEpoch uses it).
# Included by _kernels.pyx (one extension module); the shared checks live there.

def network_fit(Network net, FlatUpdate update, dict opt, X, labels, target, int64_t first,
                int64_t n_rows, int64_t batch, int64_t max_steps, bint stop_nonfinite,
                double loss_sum, double correct):
    """Up to max_steps steps of fit's epoch: the batches of rows [first, n_rows) of X in order,
    each net.train with softmax cross-entropy on int labels (labels given) or MSE on target,
    then update's SGD (opt["kind"] FP_FIT_SGD, after its first step) or Adam step. loss_sum and
    correct are fit's running sums, continued. Returns (loss_sum, correct, steps, bad_row, step):
    bad_row the first row of the batch whose loss was not finite (-1: none), step Adam's count."""
    Xa = _fit_rows(X, net.dtype, net.n_in, first, n_rows, batch, max_steps)
    L, T, code = _fit_targets(labels, target, n_rows, net.n_out, net.dtype)
    cdef int kind = code
    cdef fp_fit_update u = _fit_update(update, opt, net.dtype)
    net._workspace(batch)   # a last, partial batch runs in a prefix of each buffer
    cdef int64_t steps = 0, bad = -1
    cdef vptr px = _ptr(Xa), pl = _ptr(L), pt = _ptr(T), g0 = _ptr(net.g0), g1 = _ptr(net.g1)
    cdef bint f64 = net.dtype == np.float64
    cdef int rc
    with nogil:
        rc = c_network_fit(f64, &loss_sum, &correct, &steps, &bad, net.blocks, net.n, px,
                           <const int64_t *>pl, pt, n_rows, first, batch, max_steps, kind,
                           &net.opts, &u, stop_nonfinite, g0, g1)
    _check(rc, "network_fit")
    return loss_sum, correct, steps, bad, u.step


def tape_fit(Tape tape, FlatUpdate update, dict opt, X, labels, target, int64_t first,
             int64_t n_rows, int64_t batch, int64_t max_steps, bint stop_nonfinite,
             double loss_sum, double correct):
    """network_fit's steps on a tape of C ops only, with one input: each batch forward, the
    loss (softmax cross-entropy on labels or MSE on target), backward and update's step.
    Returns as network_fit. Dropout, LayerNorm and BatchNorm1d take their modules' modes as
    in Tape.train; a last batch of one row stops the run (steps short of it) where a
    BatchNorm1d is training, for Tape.train to raise its error."""
    if tape.modules or len(tape.inputs) != 1:
        raise ValueError("tape_fit runs a tape of C ops with one input")
    cdef int in_v = tape.inputs[0]
    Xa = _fit_rows(X, tape.dtype, tape.width[in_v], first, n_rows, batch, max_steps)
    L, T, code = _fit_targets(labels, target, n_rows, tape.n_out, tape.dtype)
    cdef int kind = code
    cdef fp_fit_update u = _fit_update(update, opt, tape.dtype)
    cdef bint bn = any(k == FP_OP_BATCHNORM and m.training for _, k, m in tape.stateful)
    if bn and (n_rows - first) % batch == 1:
        n_rows -= 1
    cdef int64_t steps = 0, bad = -1
    if n_rows <= first or bn and batch < 2:
        return loss_sum, correct, steps, bad, u.step
    tape._workspace(batch)   # a last, partial batch runs in a prefix of each buffer
    tape._sync(batch)
    cdef vptr px = _ptr(Xa), pl = _ptr(L), pt = _ptr(T)
    cdef bint f64 = tape.dtype == np.float64
    cdef int rc
    try:
        with nogil:
            rc = c_tape_fit(f64, &loss_sum, &correct, &steps, &bad, tape.ops, tape.n_ops,
                            tape.val, tape.grad, tape.width, in_v, tape.out, px,
                            <const int64_t *>pl, pt, n_rows, first, batch, max_steps, kind, &u,
                            stop_nonfinite)
    finally:   # the input value is the last batch's rows, the streams' positions the modules'
        a = bad if bad >= 0 else first + max(steps - 1, 0) * batch
        tape.values[in_v] = Xa[a:min(a + batch, n_rows)]
        tape.val[in_v] = _ptr(tape.values[in_v])
        tape._save_streams()
    _check(rc, "tape_fit")
    return loss_sum, correct, steps, bad, u.step


cdef _fit_rows(X, dtype, int64_t width, int64_t first, int64_t n_rows, int64_t batch,
               int64_t max_steps):
    """X checked: (rows, width) of dtype, holding rows [first, n_rows) in batches of batch."""
    Xa = _floats(X, "X", 2)
    if Xa.dtype != dtype or Xa.shape[1] != width:
        raise ValueError(f"X has shape {Xa.shape} and dtype {Xa.dtype}, expected (rows, {width}) "
                         f"of {dtype}")
    if not (0 <= first and n_rows <= Xa.shape[0] and batch >= 1 and max_steps >= 0):
        raise ValueError(f"rows [{first}, {n_rows}) in batches of {batch} do not fit X's "
                         f"{Xa.shape[0]} rows")
    return Xa


cdef tuple _fit_targets(labels, target, int64_t n_rows, int64_t n_out, dtype):
    """(labels, target, FP_LOSS_*): int labels for softmax cross-entropy, else MSE's target."""
    if labels is not None:
        L = np.ascontiguousarray(labels, np.int64)
        if L.ndim != 1 or L.shape[0] < n_rows or _first_bad_label(L[:n_rows], n_out) >= 0:
            raise ValueError(f"labels must be ({n_rows},) class labels in [0, {n_out})")
        return L, None, FP_LOSS_SOFTMAX_XENT
    T = _floats(target, "target", 2)
    if T.dtype != dtype or T.shape[1] != n_out or T.shape[0] < n_rows:
        raise ValueError(f"target must be ({n_rows}, {n_out}) of {dtype}")
    return None, T, FP_LOSS_MSE


cdef fp_fit_update _fit_update(FlatUpdate update, dict opt, dtype) except *:
    """opt (the optimizer's group: kind FP_FIT_SGD or FP_FIT_ADAM, lr, ...) over update's run."""
    if update.f32 != (dtype == np.float32):
        raise TypeError("the update's parameters and the network have different dtypes")
    cdef fp_fit_update u
    u.kind = opt["kind"]
    if u.kind != FP_FIT_SGD and u.kind != FP_FIT_ADAM:
        raise ValueError(f"opt['kind'] must be {FP_FIT_SGD} (SGD) or {FP_FIT_ADAM} (Adam), got {u.kind}")
    if u.kind == FP_FIT_SGD and opt["momentum"] != 0 and update.p1 == NULL or \
            u.kind == FP_FIT_ADAM and (update.p1 == NULL or update.p2 == NULL):
        raise ValueError("the update lacks the optimizer's state buffers")
    u.param, u.grad, u.s1, u.s2, u.n = update.pp, update.pg, update.p1, update.p2, update.n
    u.step = opt.get("step", 0)
    u.lr, u.momentum, u.dampening = opt["lr"], opt.get("momentum", 0), opt.get("dampening", 0)
    u.weight_decay, u.nesterov = opt["weight_decay"], opt.get("nesterov", False)
    u.beta1, u.beta2, u.eps = opt.get("beta1", 0.9), opt.get("beta2", 0.999), opt.get("eps", 1e-8)
    u.decoupled = opt.get("decoupled", False)
    return u
