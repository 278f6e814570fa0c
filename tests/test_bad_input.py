"""The bad-input matrix: every public entry point, every argument, every way it can be wrong.

Each case expects the documented exception (TypeError for a dtype, ValueError for a shape,
a value, a layout or an overlap) with a message naming the argument, and checks that
nothing was written: every array of the call, or the model's parameters, gradients and
optimizer state, are bit for bit what they were. Inputs that are valid but unusual
(Fortran order, negative strides, strided views, NaN in ops) give the same results as
the plain contiguous call or the reference. tests/test_ops_bad_input.py has the
hand-written cases of fastprop.ops this matrix generalises.
"""
import re

import numpy as np
import pytest
from conftest import assert_unchanged, snapshot

import fastprop as fp
from fastprop import ops, reference

F32 = np.float32


def arr(*shape, seed=0, lo=-1.0, hi=1.0):
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(F32)


# ============================================================== fastprop.ops, argument by argument
# role of each array argument: "in" a read-only input of fixed ndim, "any" a read-only
# elementwise input (any shape), "out" an output buffer, "state" an array updated in place,
# "target" a real-valued loss target, "labels" integer class labels.

def _ops_specs():
    g = dict
    return {
        "gemm": (ops.gemm, lambda: g(a=arr(3, 4), b=arr(4, 2, seed=1), out=arr(3, 2, seed=2)), {},
                 g(a="in", b="in", out="out")),
        "dense_forward": (ops.dense_forward,
                          lambda: g(x=arr(3, 4), weight=arr(2, 4, seed=1), bias=arr(2, seed=2),
                                    out=arr(3, 2, seed=3), preact_out=arr(3, 2, seed=4)),
                          g(activation="gelu"),
                          g(x="in", weight="in", bias="in", out="out", preact_out="out")),
        "dense_backward": (ops.dense_backward,
                           lambda: g(grad_out=arr(3, 2), x=arr(3, 4, seed=1), weight=arr(2, 4, seed=2),
                                     grad_input=arr(3, 4, seed=3), grad_weight=arr(2, 4, seed=4),
                                     grad_bias=arr(2, seed=5)), g(accumulate=True),
                           g(grad_out="in", x="in", weight="in", grad_input="out", grad_weight="out",
                             grad_bias="out")),
        "activation_forward": (ops.activation_forward, lambda: g(x=arr(3, 4), out=arr(3, 4, seed=1)),
                               g(activation="softplus", beta=2.0), g(x="any", out="out")),
        "activation_backward": (ops.activation_backward,
                                lambda: g(grad=arr(3, 4), x=arr(3, 4, seed=1), y=arr(3, 4, seed=2),
                                          out=arr(3, 4, seed=3)), g(activation="silu"),
                                g(grad="any", x="any", y="any", out="out")),
        "prelu_forward": (ops.prelu_forward, lambda: g(x=arr(3, 4), weight=arr(4, seed=1),
                                                       out=arr(3, 4, seed=2)), {},
                          g(x="in", weight="in", out="out")),
        "prelu_backward": (ops.prelu_backward,
                           lambda: g(grad=arr(3, 4), x=arr(3, 4, seed=1), weight=arr(4, seed=2),
                                     out=arr(3, 4, seed=3), grad_weight=arr(4, seed=4)),
                           g(accumulate=True),
                           g(grad="in", x="in", weight="in", out="out", grad_weight="out")),
        "softmax": (ops.softmax, lambda: g(logits=arr(3, 4), out=arr(3, 4, seed=1)), {},
                    g(logits="in", out="out")),
        "log_softmax": (ops.log_softmax, lambda: g(logits=arr(3, 4), out=arr(3, 4, seed=1)), {},
                        g(logits="in", out="out")),
        "softmax_cross_entropy": (ops.softmax_cross_entropy,
                                  lambda: g(logits=arr(3, 4), target=np.array([0, 3, 1]),
                                            grad_out=arr(3, 4, seed=1)), {},
                                  g(logits="in", target="labels", grad_out="out")),
        "softmax_cross_entropy_soft": (ops.softmax_cross_entropy,
                                       lambda: g(logits=arr(3, 4), target=arr(3, 4, seed=1, lo=0),
                                                 grad_out=arr(3, 4, seed=2)), {},
                                       g(logits="in", target="target", grad_out="out")),
        "sigmoid_bce": (ops.sigmoid_bce, lambda: g(logits=arr(3, 4), target=arr(3, 4, seed=1, lo=0),
                                                   grad_out=arr(3, 4, seed=2)), {},
                        g(logits="any", target="target", grad_out="out")),
        "mse": (ops.mse, lambda: g(pred=arr(3, 4), target=arr(3, 4, seed=1),
                                   grad_out=arr(3, 4, seed=2)), {},
                g(pred="any", target="target", grad_out="out")),
        "sgd_step": (ops.sgd_step, lambda: g(param=arr(5), grad=arr(5, seed=1),
                                             momentum_buffer=arr(5, seed=2)),
                     g(lr=0.1, momentum=0.9, weight_decay=0.01),
                     g(param="state", grad="in", momentum_buffer="state")),
        "adam_step": (ops.adam_step, lambda: g(param=arr(5), grad=arr(5, seed=1), exp_avg=arr(5, seed=2),
                                               exp_avg_sq=arr(5, seed=3, lo=0)),
                      g(step=3, lr=0.01),
                      g(param="state", grad="in", exp_avg="state", exp_avg_sq="state")),
    }


SPECS = _ops_specs()

BAD_DTYPES = {
    "int64": lambda a: a.astype(np.int64), "int32": lambda a: a.astype(np.int32),
    "bool": lambda a: a > 0, "complex": lambda a: a.astype(np.complex128),
    "object": lambda a: a.astype(object), "str": lambda a: a.astype(str),
}
# the dtypes a real target may not have (integers and booleans are cast, as PyTorch)
BAD_TARGET_DTYPES = ("complex", "object", "str")


def _negative_strides(a):
    return np.ascontiguousarray(a[::-1])[::-1]


def _strided(a):
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


LAYOUTS = {"fortran": np.asfortranarray, "negative_strides": _negative_strides, "strided": _strided}


def _bad_variants(role, a, op):
    """(variant id, make(a), expected exception, whether the message must name the argument)."""
    out = []
    dtypes = BAD_TARGET_DTYPES if role == "target" else BAD_DTYPES
    if role == "labels":
        dtypes = ("float",) + tuple(BAD_DTYPES) [2:]  # float labels, bool, complex, object, str
    for d in dtypes:
        make = (lambda a: a.astype(np.float64)) if d == "float" else BAD_DTYPES[d]
        out.append((f"dtype-{d}", make, TypeError, True))
    if role == "labels":
        n = a.shape[0]
        for vid, v in (("label-too-big", 4), ("label-negative", -1), ("label-huge", 10 ** 12)):
            out.append((vid, lambda a, v=v: np.where(np.arange(n) == 1, v, a), ValueError, True))
        out.append(("label-uint64-huge", lambda a: a.astype(np.uint64) + 2 ** 63, ValueError, True))
        out.append(("labels-too-few", lambda a: a[:-1], ValueError, True))
        out.append(("labels-too-many", lambda a: np.append(a, 0), ValueError, True))
        out.append(("labels-3d", lambda a: a.reshape(1, 1, -1), ValueError, True))
        return out
    if role == "target" and op == "sigmoid_bce":
        for vid, v in (("above-1", 1.5), ("below-0", -0.25), ("nan", np.nan), ("inf", np.inf)):
            out.append((f"bce-target-{vid}", lambda a, v=v: np.where(a == a.flat[5], F32(v), a),
                        ValueError, True))
    if role in ("in", "out", "state"):
        out.append(("extra-axis", lambda a: a[None], ValueError, role != "state"))
    if a.ndim == 2 and role in ("in", "out"):
        out.append(("flattened", lambda a: a.reshape(-1), ValueError, True))
    out.append(("wrong-size", lambda a: np.concatenate([a, a[..., :1]], axis=-1), ValueError, False))
    if role in ("out", "state"):
        out.append(("read-only", _read_only, ValueError, True))
        out.append(("a-list", lambda a: a.tolist(), TypeError, True))
        out.append(("float64", lambda a: a.astype(np.float64), TypeError, True))
        for name, make in LAYOUTS.items():
            if name != "fortran" or a.ndim == 2:
                out.append((name, make, ValueError, True))
    return out


def _op_cases():
    cases = []
    for op, (_, build, _, roles) in SPECS.items():
        kw = build()
        for name, role in roles.items():
            for vid, make, exc, named in _bad_variants(role, kw[name], op):
                cases.append(pytest.param(op, name, make, exc, named, id=f"{op}-{name}-{vid}"))
    return cases


def _all_arrays(kw):
    return {k: v for k, v in kw.items() if isinstance(v, np.ndarray)}


def _copies(kw):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kw.items()}


def _assert_same_arrays(kw, saved):
    for k, v in _all_arrays(saved).items():
        got = kw[k]
        assert got.dtype == v.dtype and got.tobytes() == v.tobytes(), f"{k} was written"


def _call(op, kw):
    fn, _, fixed, _ = SPECS[op]
    return fn(**kw, **fixed)


@pytest.mark.parametrize("op,name,make,exc,named", _op_cases())
def test_ops_bad_argument_raises_naming_it_and_writes_nothing(op, name, make, exc, named):
    _, build, _, roles = SPECS[op]
    kw = build()
    _call(op, _copies(kw))  # the good call works
    bad = make(kw[name])
    # keep the base of a view too: a strided or reversed buffer must stay as it was
    bad_base = bad.base.copy() if isinstance(bad, np.ndarray) and bad.base is not None else None
    bad_saved = bad.copy() if isinstance(bad, np.ndarray) else list(bad) if isinstance(bad, list) else None
    kw[name] = bad
    saved = _copies(kw)
    with pytest.raises(exc) as info:
        _call(op, kw)
    message = str(info.value)
    if named:
        assert re.search(rf"\b{name}\b", message), f"{message!r} does not name {name}"
    else:
        assert any(re.search(rf"\b{n}\b", message) for n in roles), message
    _assert_same_arrays(kw, saved)
    if isinstance(bad, np.ndarray):
        assert bad.tobytes() == bad_saved.tobytes()
        if bad_base is not None and isinstance(bad.base, np.ndarray):
            assert bad.base.tobytes() == bad_base.tobytes(), "the rejected view's base was written"
    elif isinstance(bad, list):
        assert bad == bad_saved


def _layout_cases():
    cases = []
    for op, (_, build, _, roles) in SPECS.items():
        kw = build()
        for name, role in roles.items():
            if role in ("in", "any", "target"):
                for lid in LAYOUTS:
                    if lid != "fortran" or kw[name].ndim == 2:
                        cases.append(pytest.param(op, name, lid, id=f"{op}-{name}-{lid}"))
    return cases


def _outputs(result, kw, roles):
    """Everything a call produced: its return values and its out/state arrays."""
    flat = list(result) if isinstance(result, tuple) else [result]
    return flat + [kw[n] for n, r in roles.items() if r in ("out", "state")]


def _same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.asarray(a).tobytes() == np.asarray(b).tobytes()
    return a == b


@pytest.mark.parametrize("op,name,layout", _layout_cases())
def test_ops_non_contiguous_inputs_give_the_contiguous_result(op, name, layout):
    _, build, _, roles = SPECS[op]
    plain, odd = build(), build()
    odd[name] = LAYOUTS[layout](odd[name])
    assert not odd[name].flags.c_contiguous and np.array_equal(odd[name], plain[name])
    expected = _outputs(_call(op, plain), plain, roles)
    got = _outputs(_call(op, odd), odd, roles)
    assert all(_same(a, b) for a, b in zip(got, expected))


def _alias_cases():
    cases = []
    for op, (_, build, _, roles) in SPECS.items():
        kw = build()
        for o, ro in roles.items():
            for i, ri in roles.items():
                if ro in ("out", "state") and ri in ("in", "any", "target") and \
                        kw[o].shape == kw[i].shape:
                    cases.append(pytest.param(op, o, i, id=f"{op}-{o}-is-{i}"))
    return cases


@pytest.mark.parametrize("op,out_name,in_name", _alias_cases())
def test_ops_output_aliasing_an_input(op, out_name, in_name):
    """out IS the input: refused naming out (nothing written) where the kernel cannot
    allow it, else the same result as separate buffers. A shifted overlap is always refused."""
    _, build, _, roles = SPECS[op]
    separate = build()
    expected = _outputs(_call(op, separate), separate, roles)
    aliased = build()
    aliased[out_name] = aliased[in_name]
    saved = _copies(aliased)
    try:
        result = _call(op, aliased)
    except ValueError as e:
        assert re.search(rf"\b{out_name}\b overlaps", str(e)), str(e)
        _assert_same_arrays(aliased, saved)
    else:
        got = _outputs(result, aliased, roles)
        assert all(_same(a, b) for a, b in zip(got, expected))
    # one element apart: the input and the output share all but one element
    shifted = build()
    a = shifted[in_name]
    base = np.concatenate([a.reshape(-1), a.reshape(-1)[:1]])
    shifted[in_name] = base[:-1].reshape(a.shape)
    shifted[out_name] = base[1:].reshape(a.shape)
    before = base.copy()
    with pytest.raises(ValueError, match="overlaps"):
        _call(op, shifted)
    assert base.tobytes() == before.tobytes()


def _nonfinite_cases():
    cases = []
    for op, (_, build, _, roles) in SPECS.items():
        for name, role in roles.items():
            if role in ("in", "any") or (role == "target" and op != "sigmoid_bce"):
                for v in ("nan", "inf", "-inf"):
                    cases.append(pytest.param(op, name, float(v), id=f"{op}-{name}-{v}"))
    return cases


def _reference_call(op, kw):
    fn, _, fixed, _ = SPECS[op]
    if op == "gemm":  # the reference has no gemm: NumPy's matmul in the same precision
        kw["out"][...] = kw["a"] @ kw["b"]
        return kw["out"]
    name = "softmax_cross_entropy" if op.startswith("softmax_cross_entropy") else op
    return getattr(reference, name)(**kw, **fixed)


@pytest.mark.parametrize("op,name,value", _nonfinite_cases())
def test_ops_nan_and_inf_propagate_like_the_reference(op, name, value):
    """ops do not check for NaN (a check costs a pass; TrainStep and fit do it): a NaN or an
    infinity is no error and no crash, and every output the mathematics keeps finite is
    finite and equal to the reference's."""
    _, build, _, roles = SPECS[op]
    ours = build()
    ours[name].flat[1] = value
    theirs = _copies(ours)
    got = _outputs(_call(op, ours), ours, roles)
    with np.errstate(all="ignore"):
        expected = _outputs(_reference_call(op, theirs), theirs, roles)
    for a, b in zip(got, expected):
        if a is None:
            continue
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        keep = np.isfinite(b)
        assert np.all(np.isfinite(a[keep])), "a NaN or infinity spread where the reference has none"
        assert np.allclose(a[keep], b[keep], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("call", [
    lambda: ops.softmax(np.zeros((3, 0), F32)),
    lambda: ops.log_softmax(np.zeros((3, 0), F32)),
    lambda: ops.softmax_cross_entropy(np.zeros((0, 4), F32), np.zeros(0, np.int64)),
    lambda: ops.softmax_cross_entropy(np.zeros((3, 0), F32), np.zeros(3, np.int64)),
    lambda: ops.sigmoid_bce(np.zeros((0, 4), F32), np.zeros((0, 4))),
    lambda: ops.mse(np.zeros((4, 0), F32), np.zeros((4, 0))),
], ids=["softmax-0-classes", "log_softmax-0-classes", "xent-batch-0", "xent-0-classes",
        "bce-empty", "mse-empty"])
def test_ops_empty_where_it_makes_no_sense(call):
    with pytest.raises(ValueError, match="logits|pred|weight|row|class|empty"):
        call()


def test_ops_empty_where_it_makes_sense():
    """Batch 0 or width 0 of a layer are well defined: empty results, or the bias alone."""
    assert ops.dense_forward(np.zeros((0, 4), F32), arr(2, 4)).shape == (0, 2)
    b = arr(2)
    assert np.array_equal(ops.dense_forward(np.zeros((3, 0), F32), np.zeros((2, 0), F32), b),
                          np.tile(b, (3, 1)))
    dx, dw, db = ops.dense_backward(np.zeros((0, 2), F32), np.zeros((0, 4), F32), arr(2, 4))
    assert dx.shape == (0, 4) and not dw.any() and not db.any()
    assert ops.activation_forward(np.zeros((0, 3), F32), "gelu").shape == (0, 3)
    p = arr(0)
    ops.adam_step(p, arr(0), arr(0), arr(0), step=1)


@pytest.mark.parametrize("call", [
    lambda: ops.gemm(np.zeros((0, 2 ** 31), F32), np.zeros((2 ** 31, 0), F32)),
    lambda: ops.dense_forward(np.zeros((0, 2 ** 31), F32), np.zeros((0, 2 ** 31), F32)),
    lambda: ops.dense_forward(np.zeros((2 ** 31, 0), F32), np.zeros((0, 0), F32)),
    lambda: ops.dense_backward(np.zeros((0, 0), F32), np.zeros((0, 2 ** 31), F32),
                               np.zeros((0, 2 ** 31), F32)),
    lambda: ops.dense_backward(np.zeros((2 ** 31, 0), F32), np.zeros((2 ** 31, 0), F32),
                               np.zeros((0, 0), F32)),
], ids=["gemm-k", "dense-in", "dense-batch", "dense-backward-in", "dense-backward-batch"])
def test_sizes_beyond_32_bit_indexing_are_refused(call):
    """Empty arrays with a dimension of 2³¹ take no memory, yet every GEMM size guard must see
    the dimension that does not fit the BLAS's int (or have nothing to compute)."""
    try:
        result = call()
    except ValueError as e:
        assert "32-bit" in str(e)
    else:  # an empty product is fine, as long as nothing was computed out of range
        for r in (result if isinstance(result, tuple) else (result,)):
            assert r is None or r.size == 0 or not np.any(r)


# ============================================================== modules, losses, optimizers, training

def _model(kind):
    """(model, loss, optimizer, x, y) after two steps, so that every state is non-trivial."""
    rng = np.random.default_rng(0)
    if kind == "modular":  # PReLU: TrainStep's modular path
        model = fp.Sequential(fp.Linear(5, 6, rng=0), fp.PReLU(6), fp.Linear(6, 4, rng=1))
    else:
        model = fp.Sequential(fp.Linear(5, 6, rng=0), fp.Tanh(), fp.Linear(6, 4, rng=1))
    loss = {"bce": fp.SigmoidBCE(), "mse": fp.MSE()}.get(kind, fp.SoftmaxCrossEntropy())
    opt = fp.SGD(model.parameters(), lr=0.1, momentum=0.9) if kind == "bce" else \
        fp.Adam(model.parameters(), lr=0.01)
    x = rng.standard_normal((8, 5)).astype(F32)
    y = rng.uniform(0, 1, (8, 4)).astype(F32) if kind in ("bce", "mse") else rng.integers(0, 4, 8)
    step = fp.TrainStep(model, loss, opt)
    assert step.fused is (kind != "modular")
    for _ in range(2):
        step(x, y)
    return model, loss, opt, step, x, y


def _with(x, i, v):
    x = np.array(x, dtype=np.float64 if np.asarray(x).dtype.kind == "f" else None)
    x.flat[i] = v
    return x


# (id, make bad x from good x, exception); NaN and infinity only where a check is made
BAD_X = [
    ("int64", lambda x: x.astype(np.int64), TypeError),
    ("int32", lambda x: x.astype(np.int32), TypeError),
    ("bool", lambda x: x > 0, TypeError),
    ("complex", lambda x: x.astype(np.complex64), TypeError),
    ("object", lambda x: x.astype(object), TypeError),
    ("str", lambda x: x.astype(str), TypeError),
    ("none", lambda x: None, TypeError),
    ("1d", lambda x: x[0], ValueError),
    ("3d", lambda x: x[None], ValueError),
    ("too-wide", lambda x: np.hstack([x, x[:, :1]]), ValueError),
    ("too-narrow", lambda x: x[:, :-1], ValueError),
]
BAD_X_FINITE = [("batch-0", lambda x: x[:0], ValueError),
                ("nan", lambda x: _with(x, 7, np.nan), ValueError),
                ("inf", lambda x: _with(x, 7, np.inf), ValueError),
                ("-inf", lambda x: _with(x, 7, -np.inf), ValueError)]

LABELS = [
    ("too-big", lambda y: _with(y, 2, 4), ValueError),
    ("negative", lambda y: _with(y, 2, -1), ValueError),
    ("huge", lambda y: _with(y, 2, 10 ** 12), ValueError),
    ("uint64-huge", lambda y: y.astype(np.uint64) + 2 ** 63, ValueError),
    ("too-few", lambda y: y[:-1], ValueError),
    ("too-many", lambda y: np.append(y, 0), ValueError),
    ("float", lambda y: y.astype(np.float64), TypeError),
    ("non-integer", lambda y: y + 0.5, TypeError),
    ("bool", lambda y: y > 1, TypeError),
    ("complex", lambda y: y.astype(complex), TypeError),
    ("object", lambda y: y.astype(object), TypeError),
    ("str", lambda y: y.astype(str), TypeError),
    ("soft-too-narrow", lambda y: np.eye(3, dtype=F32)[y % 3], ValueError),
    ("soft-nan", lambda y: _with(np.eye(4, dtype=F32)[y], 3, np.nan), ValueError),
    ("3d", lambda y: y.reshape(1, 1, -1), ValueError),
]
TARGETS = [  # for BCE and MSE, (B, 4) arrays
    ("nan", lambda y: _with(y, 3, np.nan), ValueError),
    ("inf", lambda y: _with(y, 3, np.inf), ValueError),
    ("wrong-width", lambda y: y[:, :3], ValueError),
    ("wrong-batch", lambda y: y[:-1], ValueError),
    ("1d", lambda y: y[:, 0], ValueError),
    ("complex", lambda y: y.astype(complex), TypeError),
    ("object", lambda y: y.astype(object), TypeError),
    ("str", lambda y: y.astype(str), TypeError),
]
BCE_TARGETS = [("above-1", lambda y: _with(y, 3, 1.5), ValueError),
               ("below-0", lambda y: _with(y, 3, -0.5), ValueError)]

Y_NAME = r"\b(y|target|labels?)\b"


def _y_cases(kinds):
    for kind in kinds:
        for vid, make, exc in (LABELS if kind in ("fused", "modular") else
                               TARGETS + (BCE_TARGETS if kind == "bce" else [])):
            yield kind, vid, make, exc


def _batch_cases(x_kinds, y_kinds, x_label):
    """(kind, "x" or "y", make, exc) for every bad x of BAD_X and bad y of the loss's kind."""
    cases = []
    for kind in x_kinds:
        for vid, make, exc in BAD_X + BAD_X_FINITE:
            cases.append(pytest.param(kind, "x", make, exc, id=f"{x_label(kind)}-{vid}"))
    for kind, vid, make, exc in _y_cases(y_kinds):
        cases.append(pytest.param(kind, "y", make, exc, id=f"{kind}-y-{vid}"))
    return cases


@pytest.mark.parametrize("kind,which,make,exc", _batch_cases(
    ("fused", "modular", "bce", "mse"), ("fused", "modular", "bce", "mse"), lambda k: f"{k}-x"))
def test_trainstep_bad_batch_changes_nothing(kind, which, make, exc):
    model, _, opt, step, x, y = _model(kind)
    snap = snapshot(model, opt)
    bad_x, bad_y = (make(x), y) if which == "x" else (x, make(y))
    with pytest.raises(exc, match=r"\bx\b" if which == "x" else Y_NAME):
        step(bad_x, bad_y)
    assert_unchanged(model, snap, opt)


@pytest.mark.parametrize("kind,which,make,exc", _batch_cases(
    ("fused",), ("fused", "bce", "mse"), lambda k: "X"))
def test_fit_bad_data_changes_nothing(kind, which, make, exc):
    model, loss, opt, _, x, y = _model(kind)
    snap = snapshot(model, opt)
    X, Y = (make(x), y) if which == "x" else (x, make(y))
    with pytest.raises(exc, match=r"\bX\b" if which == "x" else Y_NAME + "|samples|targets"):
        fp.fit(model, X, Y, loss=loss, optimizer=opt, epochs=1, batch_size=4, progress=False)
    assert_unchanged(model, snap, opt)


@pytest.mark.parametrize("vid,make,exc", BAD_X, ids=[c[0] for c in BAD_X])
@pytest.mark.parametrize("call", ["forward", "evaluate", "predict", "predict_proba"])
def test_forward_bad_input_changes_nothing(call, vid, make, exc):
    model, loss, opt, _, x, y = _model("fused")
    snap = snapshot(model, opt)
    bad = make(x)
    fn = {"forward": lambda: model(bad), "evaluate": lambda: fp.evaluate(model, bad, y, loss),
          "predict": lambda: fp.predict(model, bad),
          "predict_proba": lambda: fp.predict_proba(model, bad)}[call]
    with pytest.raises(exc, match=r"\b[xX]\b|samples"):
        fn()
    assert_unchanged(model, snap, opt)


@pytest.mark.parametrize("vid,make,exc", BAD_X[:6] + [
    ("1d", lambda g: g[0], ValueError), ("3d", lambda g: g[None], ValueError),
    ("wrong-width", lambda g: g[:, :-1], ValueError), ("wrong-batch", lambda g: g[:-1], ValueError),
], ids=[c[0] for c in BAD_X[:6]] + ["1d", "3d", "wrong-width", "wrong-batch"])
@pytest.mark.parametrize("kind", ["fused", "modular"])
def test_backward_bad_gradient_changes_nothing(kind, vid, make, exc):
    model, _, opt, _, x, _ = _model(kind)
    g = np.ones_like(model(x))
    snap = snapshot(model, opt)
    with pytest.raises(exc, match="grad_output"):
        model.backward(make(g))
    assert_unchanged(model, snap, opt)
    model.backward(g)  # the saved forward is still usable


@pytest.mark.parametrize("loss_cls", [fp.SoftmaxCrossEntropy, fp.SigmoidBCE, fp.MSE])
@pytest.mark.parametrize("vid,make,exc", BAD_X[:7] + [("3d-labels", lambda p: p[None], ValueError)],
                         ids=[c[0] for c in BAD_X[:7]] + ["3d"])
def test_loss_bad_pred_keeps_the_last_gradient(loss_cls, vid, make, exc):
    rng = np.random.default_rng(0)
    pred = rng.standard_normal((6, 4)).astype(F32)
    target = rng.integers(0, 4, 6) if loss_cls is fp.SoftmaxCrossEntropy else \
        rng.uniform(0, 1, (6, 4)).astype(F32)
    loss = loss_cls()
    J = loss(pred, target)
    g = loss.backward()
    with pytest.raises(exc, match=r"\b(pred|logits)\b"):
        loss(make(pred), target)
    assert np.array_equal(loss.backward(), g) and loss(pred, target) == J


@pytest.mark.parametrize("make", [
    lambda ps: fp.SGD(ps, lr=float("nan")), lambda ps: fp.SGD(ps, lr=-0.1),
    lambda ps: fp.SGD(ps, lr="fast"), lambda ps: fp.SGD(ps, lr=0.1, momentum=float("inf")),
    lambda ps: fp.SGD(ps, lr=0.1, nesterov=True), lambda ps: fp.SGD(ps, lr=0.1, weight_decay=-1),
    lambda ps: fp.Adam(ps, betas=(1.0, 0.9)), lambda ps: fp.Adam(ps, betas=(0.9,)),
    lambda ps: fp.Adam(ps, eps=-1e-8), lambda ps: fp.AdamW(ps, weight_decay=float("nan")),
    lambda ps: fp.Adam([]), lambda ps: fp.Adam(ps + ps[:1]), lambda ps: fp.Adam([np.ones(3)]),
], ids=["sgd-lr-nan", "sgd-lr-negative", "sgd-lr-str", "sgd-momentum-inf", "sgd-nesterov",
        "sgd-weight-decay", "adam-beta1", "adam-betas-pair", "adam-eps", "adamw-decay-nan",
        "adam-empty", "adam-duplicate", "adam-array"])
def test_optimizer_bad_hyperparameters_change_nothing(make):
    model, _, opt, _, _, _ = _model("fused")
    snap = snapshot(model, opt)
    with pytest.raises((TypeError, ValueError), match="lr|momentum|nesterov|weight_decay|beta|eps|"
                                                      "parameter"):
        make(model.parameters())
    assert_unchanged(model, snap, opt)


@pytest.mark.parametrize("change", ["shape", "complex", "str", "missing", "extra"])
def test_load_state_dict_bad_entry_changes_nothing(change):
    model, _, opt, _, _, _ = _model("fused")
    state = {k: v + 1 for k, v in model.state_dict().items()}
    name = "2.weight"
    if change == "shape":
        state[name] = state[name][:, :-1]
    elif change == "complex":
        state[name] = state[name].astype(complex)
    elif change == "str":
        state[name] = state[name].astype(str)
    elif change == "missing":
        del state[name]
    else:
        state["3.weight"] = state[name]
    snap = snapshot(model, opt)
    with pytest.raises((KeyError, TypeError, ValueError), match=re.escape(name) + "|3.weight"):
        model.load_state_dict(state)
    assert_unchanged(model, snap, opt)


@pytest.mark.parametrize("value", [np.ones((4, 5)), np.ones(6), np.ones((6, 5, 1))],
                         ids=["transposed", "1d", "3d"])
def test_parameter_assignment_of_the_wrong_shape_changes_nothing(value):
    model, _, opt, _, _, _ = _model("fused")
    snap = snapshot(model, opt)
    for attr in ("data", "grad"):
        with pytest.raises(ValueError, match="shape"):
            setattr(model[0].weight, attr, value)
    assert_unchanged(model, snap, opt)


@pytest.mark.parametrize("make", [
    lambda: fp.Linear(0, 3), lambda: fp.Linear(3, -1), lambda: fp.Linear(2.5, 3),
    lambda: fp.Linear(True, 3), lambda: fp.Linear(3, 3, dtype=np.int32),
    lambda: fp.Linear(3, 3, dtype=np.complex64), lambda: fp.Linear(3, 3, init="zeros"),
    lambda: fp.PReLU(0), lambda: fp.Softplus(beta=0), lambda: fp.LeakyReLU(slope=0.1),
    lambda: fp.Sequential(fp.Linear(3, 4), "relu"), lambda: fp.Sequential(fp.Linear(3, 4), fp.Linear(5, 2)),
], ids=["in-0", "out-negative", "in-float", "in-bool", "dtype-int", "dtype-complex", "init",
        "prelu-0", "softplus-beta-0", "unknown-kwarg", "not-a-module", "widths"])
def test_module_constructors_refuse_bad_arguments(make):
    with pytest.raises((TypeError, ValueError),
                       match="features|dtype|init|num_parameters|beta|unexpected|Modules|layer"):
        make()


@pytest.mark.parametrize("make", [
    lambda m, l, o: fp.TrainStep("model", l, o), lambda m, l, o: fp.TrainStep(m, "xent", o),
    lambda m, l, o: fp.TrainStep(m, l, "adam"),
], ids=["model", "loss", "optimizer"])
def test_trainstep_refuses_non_fastprop_parts(make):
    model, loss, opt, _, _, _ = _model("fused")
    with pytest.raises(TypeError, match="model|loss|optimizer"):
        make(model, loss, opt)


@pytest.mark.parametrize("kw", [dict(batch_size=0), dict(batch_size=2.5), dict(epochs=-1),
                                dict(epochs=1.5), dict(validation_data=(np.ones((2, 5)),)),
                                dict(validation_data=(np.ones((2, 5)), np.zeros(3, int)))],
                         ids=["batch-0", "batch-float", "epochs-negative", "epochs-float",
                              "validation-single", "validation-mismatch"])
def test_fit_bad_arguments_change_nothing(kw):
    model, loss, opt, _, x, y = _model("fused")
    snap = snapshot(model, opt)
    with pytest.raises(ValueError, match="batch_size|epochs|validation_data|X_val"):
        fp.fit(model, x, y, loss=loss, optimizer=opt, progress=False, **kw)
    assert_unchanged(model, snap, opt)


def test_training_after_rejected_calls_equals_a_twin_that_saw_none():
    """The failed calls above leave no trace at all: not in the workspaces either."""
    model, _, _, step, x, y = _model("fused")
    twin, _, _, twin_step, _, _ = _model("fused")
    for bad in (x.astype(np.int64), x[:, :-1], _with(x, 3, np.nan), x[:0]):
        with pytest.raises((TypeError, ValueError)):
            step(bad, y)
    for bad in (_with(y, 0, 4), y[:-1], y.astype(np.float64)):
        with pytest.raises((TypeError, ValueError)):
            step(x, bad)
    for _ in range(3):
        assert step(x, y) == twin_step(x, y)
    assert all(p.data.tobytes() == q.data.tobytes()
               for p, q in zip(model.parameters(), twin.parameters()))


@pytest.mark.parametrize("content", ["dir", "empty", "garbage", "truncated"])
def test_load_bad_files_raise_value_error(tmp_path, content):
    path = tmp_path / "m.npz"
    if content == "dir":
        path.mkdir()
    elif content == "truncated":
        fp.save(fp.Linear(3, 2), path)
        path.write_bytes(path.read_bytes()[:-20])
    else:
        path.write_bytes(b"" if content == "empty" else b"\x00PK\x05\x06" * 10)
    with pytest.raises(ValueError, match="m.npz"):
        fp.load(path)
