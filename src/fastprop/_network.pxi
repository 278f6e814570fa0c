# Bindings of csrc/network.c: the fused layer loop of a dense chain (TrainStep's C path).
# Included by _kernels.pyx (one extension module); the shared checks live there.

# ---------------------------------------------------------------- the fused training step


LOSSES = registry.fused_losses()  # in FP_LOSS_* order


cdef tuple _loss_target(int kind, object target, int64_t batch, int64_t n_out, object dtype):
    """(labels, targets) of a fused loss at an output (batch, n_out): int64 labels (batch,)
    in [0, n_out) and None for cross-entropy's labels, else None and the targets cast to
    dtype, (batch, n_out // 2) for gaussian_nll's [mean, log variance] output."""
    cdef int64_t bad
    t = np.asarray(target)
    if kind == FP_LOSS_SOFTMAX_XENT and t.ndim == 1:
        if t.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers, got dtype {t.dtype}")
        if t.shape[0] != batch:
            raise ValueError(f"got {t.shape[0]} labels for {batch} rows of x")
        labels = np.ascontiguousarray(t, dtype=np.int64)
        if t.dtype.kind == "u" and labels.size and t.max() >= n_out:
            bad = int(np.argmax(t >= n_out))
        else:
            bad = _first_bad_label(labels, n_out)
        if bad >= 0:
            raise ValueError(f"label {t[bad]} at index {bad} is outside [0, {n_out})")
        return labels, None
    width = n_out // 2 if kind == FP_LOSS_GAUSSIAN_NLL else n_out
    T = _target(t, "target", (batch, width), dtype, "the network's output")
    if kind == FP_LOSS_SIGMOID_BCE:
        _check_range(T, "target", 0, 1, "is outside [0, 1] (BCE targets are probabilities)")
    return None, T


cdef class Network:
    """The layer loop of a chain of dense blocks ``y = f(x Wᵀ + b)`` in C.

    blocks: a list of (weight, bias or None, grad_weight, grad_bias or None, activation,
    {negative_slope, beta, threshold}). The arrays are views into a model's flat
    buffers and are kept alive here; gradients are overwritten by ``train``.
    Workspaces (outputs, kept pre-activations, two gradient buffers) are allocated
    once per batch size.
    """
    cdef fp_dense_block *blocks
    cdef int n
    cdef readonly object dtype
    cdef readonly int64_t n_in, n_out, batch
    cdef int64_t width
    cdef list arrays, ys, preacts
    cdef object g0, g1
    cdef dict spaces
    cdef fp_loss_opts opts
    cdef object class_weight

    def __cinit__(self):
        self.blocks = NULL
        self.opts.class_weight = NULL
        self.opts.sample_weight = NULL
        self.opts.label_smoothing = 0.0
        self.opts.delta = 1.0

    def __init__(self, list blocks):
        if not blocks:
            raise ValueError("a Network needs at least one dense block")
        self.n = len(blocks)
        self.blocks = <fp_dense_block*>calloc(self.n, sizeof(fp_dense_block))
        if self.blocks == NULL:
            raise MemoryError()
        self.arrays = []
        self.dtype = np.asarray(blocks[0][0]).dtype
        self.width = 0
        cdef fp_dense_block *k
        for i, (w, b, dw, db, activation, params) in enumerate(blocks):
            W = _out(w, f"block {i} weight", np.shape(w), np.empty(0, self.dtype))
            if W.ndim != 2:
                raise ValueError(f"block {i} weight must be 2-D, got shape {W.shape}")
            dW = _out(dw, f"block {i} grad_weight", W.shape, W)
            k = &self.blocks[i]
            k.in_ = W.shape[1]
            k.out = W.shape[0]
            if i > 0 and k.in_ != self.blocks[i - 1].out:
                raise ValueError(f"block {i} takes {k.in_} features but block {i - 1} "
                                 f"gives {self.blocks[i - 1].out}")
            k.act = _act(activation)
            k.p = _params(params.get("negative_slope", 0.01), params.get("beta", 1.0),
                          params.get("threshold", 20.0))
            k.w = _ptr(W)
            k.dw = _ptr(dW)
            self.arrays += [W, dW]
            if b is not None:
                B = _out(b, f"block {i} bias", (k.out,), W)
                dB = _out(db, f"block {i} grad_bias", (k.out,), W)
                k.b = _ptr(B)
                k.db = _ptr(dB)
                self.arrays += [B, dB]
            self.width = max(self.width, k.out)  # ∇x of block 0 is never formed
        self.n_in = self.blocks[0].in_
        self.n_out = self.blocks[self.n - 1].out
        self.batch = -1
        self.spaces = {}

    def __dealloc__(self):
        free(self.blocks)

    cdef _workspace(self, int64_t batch):
        """Outputs, kept pre-activations and the gradient ping-pong pair for this batch size.

        The two most recent batch sizes keep their buffers (an epoch's last partial batch
        does not reallocate the full-size ones)."""
        if batch == self.batch:
            return
        if batch not in self.spaces:
            ys, preacts = [], []
            for i in range(self.n):
                act = ACTIVATIONS[self.blocks[i].act]
                needs_x = not registry.derivative_from_output(act, self.blocks[i].p.negative_slope)
                ys.append(np.empty((batch, self.blocks[i].out), self.dtype))
                preacts.append(np.empty((batch, self.blocks[i].out), self.dtype) if needs_x else None)
            if len(self.spaces) >= 2:
                del self.spaces[next(iter(self.spaces))]
            self.spaces[batch] = (ys, preacts, np.empty(batch * self.width, self.dtype),
                                  np.empty(batch * self.width, self.dtype))
        self.ys, self.preacts, self.g0, self.g1 = self.spaces[batch]
        cdef fp_dense_block *k
        for i in range(self.n):
            k = &self.blocks[i]
            k.y = _ptr(self.ys[i])
            k.preact = _ptr(self.preacts[i])
        self.batch = batch

    cdef _input(self, x):
        X = _floats(x, "x", 2)
        if X.dtype != self.dtype:
            raise TypeError(f"x has dtype {X.dtype}, expected {self.dtype} (the network's)")
        if X.shape[1] != self.n_in:
            raise ValueError(f"x has shape {X.shape}, expected (batch, {self.n_in})")
        return X

    @property
    def output(self):
        """The last block's output of the latest forward (a view of the workspace)."""
        return None if self.batch < 0 else self.ys[self.n - 1]

    def forward(self, x):
        """Runs the chain on x (batch, n_in); returns the output workspace (batch, n_out)."""
        X = self._input(x)
        cdef int64_t batch = X.shape[0]
        self._workspace(batch)
        cdef void *px = _ptr(X)
        cdef int rc
        cdef bint f64 = not _f32(X)
        with nogil:
            rc = c_network_forward(f64, self.blocks, self.n, px, batch)
        _check(rc, "Network.forward")
        return self.ys[self.n - 1]

    def loss_options(self, weight=None, label_smoothing=0.0, delta=1.0):
        """The options of the loss that ``train`` runs, kept until changed: cross-entropy's
        class weight (n_out,) and label_smoothing, huber_loss's delta or smooth_l1_loss's beta."""
        C = _weights(weight, "weight", self.n_out, np.empty(0, self.dtype), "one weight per class")
        eps = check_label_smoothing(label_smoothing)
        self.opts.delta = check_loss_param(delta, "delta", True)
        self.opts.label_smoothing = eps
        self.class_weight = C
        self.opts.class_weight = _ptr(C)

    def train(self, x, target, str loss, sample_weight=None):
        """Forward, the loss and its gradient, and the backward; overwrites every gradient.

        target: integer labels (batch,) or soft targets (batch, n_out) for
        softmax_cross_entropy; an array shaped like the output for the other losses.
        sample_weight (batch,): the loss is Σ_i w_i l_i / Σ_i w_i (see loss_options for the rest).
        Returns the loss. Nothing is written when an argument is invalid.
        """
        X = self._input(x)
        cdef int64_t batch = X.shape[0]
        if batch < 1:
            raise ValueError("x must have at least one row: the loss is a mean")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
        cdef int kind = LOSSES.index(loss)
        labels, T = _loss_target(kind, target, batch, self.n_out, self.dtype)
        if kind == FP_LOSS_HUBER and not self.opts.delta > 0:
            raise ValueError(f"delta must be > 0 for huber_loss, got {self.opts.delta}")
        S = _weights(sample_weight, "sample_weight", batch, X, "one weight per row of x")
        cdef fp_loss_opts opts = self.opts
        opts.sample_weight = _ptr(S)
        self._workspace(batch)
        cdef double value = 0
        cdef vptr px = _ptr(X), pl = _ptr(labels), pt = _ptr(T), g0 = _ptr(self.g0)
        cdef void *g1 = _ptr(self.g1)
        cdef int rc
        cdef bint f64 = not _f32(X)
        with nogil:
            rc = c_network_train(f64, &value, self.blocks, self.n, px, batch, kind, pl, pt, &opts,
                                 g0, g1)
        _check_weighted(rc, "Network.train")
        return value
