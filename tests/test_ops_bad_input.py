"""Bad input to fastprop.ops: a clear TypeError/ValueError naming the argument, nothing written.

Non-contiguous inputs are copied and give the same result as contiguous ones.
"""
import numpy as np
import pytest

from fastprop import ops

F32 = np.float32


def filled(shape, dtype=F32, value=7.0):
    return np.full(shape, value, dtype)


def x_():
    return np.arange(12, dtype=F32).reshape(3, 4) / 10 - 0.5


def w_():
    return np.arange(8, dtype=F32).reshape(2, 4) / 10 - 0.3


BAD_DTYPES = [np.int64, np.int32, np.bool_, np.complex128, object, np.float16]


@pytest.mark.parametrize("dtype", BAD_DTYPES)
@pytest.mark.parametrize("call", [
    lambda a: ops.dense_forward(a, np.ones((2, 4))),
    lambda a: ops.dense_backward(a, np.ones((3, 4)), np.ones((2, 4))),
    lambda a: ops.activation_forward(a, "relu"),
    lambda a: ops.activation_backward(a, "relu", y=np.ones((3, 2))),
    lambda a: ops.prelu_forward(a, np.ones(1)),
    lambda a: ops.softmax(a),
    lambda a: ops.softmax_cross_entropy(a, np.zeros(3, np.int64)),
    lambda a: ops.sigmoid_bce(a, np.zeros((3, 2))),
    lambda a: ops.mse(a, np.zeros((3, 2))),
])
def test_wrong_dtype_is_a_type_error(call, dtype):
    a = np.ones((3, 2)).astype(dtype) if dtype is not object else np.ones((3, 2), dtype=object)
    with pytest.raises(TypeError, match="float32 or float64"):
        call(a)


def test_strings_and_none_are_type_errors():
    with pytest.raises(TypeError, match="x"):
        ops.dense_forward([["a", "b"]], np.ones((2, 2)))
    with pytest.raises(TypeError, match="x must be"):
        ops.dense_forward(None, np.ones((2, 2)))
    with pytest.raises(TypeError, match="activation must be a string"):
        ops.activation_forward(np.ones(2), 3)


def test_mixed_dtypes_are_rejected():
    with pytest.raises(TypeError, match="weight has dtype float64 but x has dtype float32"):
        ops.dense_forward(x_(), w_().astype(np.float64))
    with pytest.raises(TypeError, match="grad"):
        ops.sgd_step(filled(3), np.ones(3), lr=0.1)


@pytest.mark.parametrize("call,match", [
    (lambda: ops.dense_forward(np.ones(4, F32), w_()), "x must be 2-D"),
    (lambda: ops.dense_forward(x_(), np.ones(4, F32)), "weight must be 2-D"),
    (lambda: ops.dense_forward(x_(), np.ones((2, 5), F32)), r"weight has shape \(2, 5\)"),
    (lambda: ops.dense_forward(x_(), w_(), np.ones(3, F32)), r"bias has shape \(3,\)"),
    (lambda: ops.dense_backward(np.ones((3, 2), F32), np.ones((4, 4), F32), w_()), "x has 4 rows"),
    (lambda: ops.dense_backward(np.ones((3, 3), F32), x_(), w_()), "weight has shape"),
    (lambda: ops.activation_backward(np.ones((3, 2), F32), "gelu", x=np.ones((2, 3), F32)), "x has shape"),
    (lambda: ops.activation_backward(np.ones(3, F32), "gelu", y=np.ones(3, F32)), "needs x"),
    (lambda: ops.activation_backward(np.ones(3, F32), "relu"), "needs x"),
    (lambda: ops.activation_forward(np.ones(3, F32), "swish"), "unknown activation 'swish'"),
    (lambda: ops.activation_forward(np.ones(3, F32), "softplus", beta=0.0), "beta"),
    (lambda: ops.prelu_forward(x_(), np.ones(3, F32)), "weight has shape"),
    (lambda: ops.softmax_cross_entropy(x_(), np.array([0, 1])), "2 labels but logits has 3 rows"),
    (lambda: ops.softmax_cross_entropy(x_(), np.array([0, 1, 4])), r"target\[2\] = 4"),
    (lambda: ops.softmax_cross_entropy(x_(), np.array([0, -1, 2])), r"target\[1\] = -1"),
    (lambda: ops.softmax_cross_entropy(x_(), np.array([0, 1, 2], np.uint64) + 2**63), "outside"),
    (lambda: ops.softmax_cross_entropy(x_(), np.ones((3, 5), F32)), "target has shape"),
    (lambda: ops.softmax_cross_entropy(x_(), np.ones((3, 4, 1), F32)), "target must be labels"),
    (lambda: ops.softmax_cross_entropy(np.ones((0, 4), F32), np.zeros(0, np.int64)), "at least one row"),
    (lambda: ops.sigmoid_bce(x_(), np.ones((4, 3))), "target has shape"),
    (lambda: ops.mse(np.ones(0, F32), np.ones(0)), "empty"),
    (lambda: ops.gemm(x_(), x_()), "inner dimensions"),
    (lambda: ops.gemm(x_(), x_().T, beta=1.0), "beta != 0 reads out"),
    (lambda: ops.sgd_step(filled(3), filled(4), lr=0.1), "grad has shape"),
    (lambda: ops.sgd_step(filled(3), filled(3), lr=-1.0), "lr must be"),
    (lambda: ops.sgd_step(filled(3), filled(3), lr=float("nan")), "lr must be"),
    (lambda: ops.sgd_step(filled(3), filled(3), lr=0.1, momentum=0.9), "momentum_buffer"),
    (lambda: ops.sgd_step(filled(3), filled(3), lr=0.1, nesterov=True), "nesterov"),
    (lambda: ops.adam_step(filled(3), filled(3), filled(3), filled(3), step=0), "step must be"),
    (lambda: ops.adam_step(filled(3), filled(3), filled(3), filled(3), step=1.5), "step must be"),
    (lambda: ops.adam_step(filled(3), filled(3), filled(3), filled(3), step=1, beta1=1.0), "beta1"),
    (lambda: ops.adam_step(filled(3), filled(3), filled(3), filled(2), step=1), "exp_avg_sq has shape"),
])
def test_bad_shapes_and_values_are_value_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match) as info:
        call()
    assert info.type in (ValueError, TypeError)


def test_float_labels_are_a_type_error():
    with pytest.raises(TypeError, match="integer class labels"):
        ops.softmax_cross_entropy(x_(), np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="integer class labels"):
        ops.softmax_cross_entropy(x_(), np.array([True, False, True]))
    with pytest.raises(TypeError, match="real-valued"):
        ops.mse(x_(), np.full((3, 4), "a"))


# ---------------------------------------------------------------- output buffers: nothing written

def out_cases():
    """(name, call taking the buffer, good shape, dtype) for every out-style argument."""
    return [
        ("out", lambda o: ops.dense_forward(x_(), w_(), out=o), (3, 2)),
        ("preact_out", lambda o: ops.dense_forward(x_(), w_(), preact_out=o), (3, 2)),
        ("grad_weight", lambda o: ops.dense_backward(filled((3, 2)), x_(), w_(), grad_weight=o), (2, 4)),
        ("grad_bias", lambda o: ops.dense_backward(filled((3, 2)), x_(), w_(), grad_bias=o), (2,)),
        ("grad_input", lambda o: ops.dense_backward(filled((3, 2)), x_(), w_(), grad_input=o), (3, 4)),
        ("out", lambda o: ops.activation_forward(x_(), "tanh", out=o), (3, 4)),
        ("out", lambda o: ops.activation_backward(x_(), "gelu", x=x_(), out=o), (3, 4)),
        ("out", lambda o: ops.prelu_forward(x_(), np.ones(1, F32), out=o), (3, 4)),
        ("grad_weight", lambda o: ops.prelu_backward(x_(), x_(), np.ones(4, F32), grad_weight=o), (4,)),
        ("out", lambda o: ops.softmax(x_(), out=o), (3, 4)),
        ("grad_out", lambda o: ops.softmax_cross_entropy(x_(), np.array([0, 1, 2]), grad_out=o), (3, 4)),
        ("grad_out", lambda o: ops.sigmoid_bce(x_(), np.zeros((3, 4)), grad_out=o), (3, 4)),
        ("grad_out", lambda o: ops.mse(x_(), np.zeros((3, 4)), grad_out=o), (3, 4)),
        ("out", lambda o: ops.gemm(x_(), w_(), trans_b=True, out=o), (3, 2)),
        ("momentum_buffer", lambda o: ops.sgd_step(filled(4), filled(4), lr=0.1, momentum=0.9,
                                                   momentum_buffer=o), (4,)),
        ("exp_avg", lambda o: ops.adam_step(filled(4), filled(4), o, filled(4), step=1), (4,)),
    ]


@pytest.mark.parametrize("case", range(len(out_cases())))
def test_bad_output_buffers_raise_and_stay_untouched(case):
    name, call, shape = out_cases()[case]
    good = filled(shape)
    call(good)  # the good buffer is accepted
    bad_buffers = [
        (filled(shape, np.float64), TypeError, f"{name} must have dtype float32"),
        (filled(shape, np.int32), TypeError, name),
        (filled(tuple(s + 1 for s in shape)), ValueError, f"{name} has shape"),
        (filled(shape + (2,))[..., 0], ValueError, f"{name} must be C-contiguous"),
        ([7.0] * int(np.prod(shape)), TypeError, f"{name} must be a numpy array"),
    ]
    ro = filled(shape)
    ro.flags.writeable = False
    bad_buffers.append((ro, ValueError, f"{name} is read-only"))
    if len(shape) == 2:
        bad_buffers.append((np.asfortranarray(filled(shape)) if shape[0] > 1 and shape[1] > 1 else
                            filled(shape), ValueError, "C-contiguous"))
        bad_buffers.append((filled(shape)[::-1], ValueError, "C-contiguous"))
    for buf, exc, match in bad_buffers:
        if isinstance(buf, np.ndarray) and buf.flags.c_contiguous and buf.shape == shape \
                and buf.dtype == F32 and buf.flags.writeable:
            continue  # a degenerate case that is in fact valid
        before = np.array(buf, copy=True)
        with pytest.raises(exc, match=match):
            call(buf)
        assert np.array_equal(np.asarray(buf), before), "a rejected buffer was written"


def test_overlapping_outputs_are_rejected_and_untouched():
    x, w = x_(), w_()
    with pytest.raises(ValueError, match="out overlaps x"):
        ops.dense_forward(x, np.ones((4, 4), F32), out=x)
    buf = np.arange(16, dtype=F32)  # an output that is a shifted window of the input
    with pytest.raises(ValueError, match="out overlaps x"):
        ops.dense_forward(buf[:8].reshape(2, 4), w, out=buf[6:10].reshape(2, 2))
    assert np.array_equal(buf, np.arange(16, dtype=F32))
    # elementwise kernels allow an exact alias but not a shifted one
    g = np.arange(10, dtype=F32)
    with pytest.raises(ValueError, match="out overlaps grad"):
        ops.activation_backward(g[:9], "relu", y=g[:9], out=g[1:])
    assert np.array_equal(g, np.arange(10, dtype=F32))
    gw = np.zeros(4, F32)
    with pytest.raises(ValueError, match="grad_weight overlaps weight"):
        ops.prelu_backward(x, x, gw, grad_weight=gw)
    p = filled(6)
    with pytest.raises(ValueError, match="momentum_buffer overlaps param"):
        ops.sgd_step(p, filled(6), lr=0.1, momentum=0.9, momentum_buffer=p)
    assert np.array_equal(p, filled(6))


def test_bad_labels_write_nothing():
    z = x_()
    g = filled((3, 4))
    with pytest.raises(ValueError):
        ops.softmax_cross_entropy(z, np.array([0, 9, 1]), grad_out=g)
    assert np.array_equal(g, filled((3, 4)))


# ---------------------------------------------------------------- non-contiguous inputs are copied

@pytest.mark.parametrize("view", ["fortran", "reversed", "strided"])
def test_non_contiguous_inputs_give_the_contiguous_result(view):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((8, 10))

    def make(a):
        if view == "fortran":
            return np.asfortranarray(a)
        if view == "reversed":
            return np.ascontiguousarray(a[::-1])[::-1]
        big = np.zeros((a.shape[0], 2 * a.shape[1]))
        big[:, ::2] = a
        return big[:, ::2]

    x = base[:, :6]
    w = base[:4, 4:]
    x_nc, w_nc = make(x), make(w)
    assert not x_nc.flags.c_contiguous and np.array_equal(x_nc, x)
    assert np.array_equal(ops.dense_forward(x_nc, w_nc, None, "tanh"), ops.dense_forward(x, w, None, "tanh"))
    g = base[:, :4]
    for a, b in zip(ops.dense_backward(make(g), x_nc, w_nc), ops.dense_backward(g, x, w)):
        assert np.array_equal(a, b)
    assert ops.softmax_cross_entropy(make(g), np.arange(8) % 4)[0] == \
        ops.softmax_cross_entropy(g, np.arange(8) % 4)[0]
    labels = np.arange(16)[::2] % 4
    assert ops.softmax_cross_entropy(g, labels)[0] == ops.softmax_cross_entropy(g, labels.copy())[0]


def test_dimension_beyond_blas_int_is_rejected():
    # empty arrays whose other dimension exceeds the BLAS's int: nothing is allocated
    wide = np.zeros((0, 2**31), F32)
    with pytest.raises(ValueError, match="32-bit int"):
        ops.gemm(wide, np.zeros((2**31, 0), F32))
    with pytest.raises(ValueError, match="32-bit int"):
        ops.dense_forward(wide, np.zeros((0, 2**31), F32))


# ---------------------------------------------------------------- graph merge kernels

def test_merge_kernels_bad_input_names_the_argument_and_writes_nothing():
    a, b = x_(), x_() + 1
    out = filled((3, 4))
    with pytest.raises(ValueError, match=r"inputs\[1\] has shape"):
        ops.add_forward([a, b[:, :3]], out=out)
    with pytest.raises(TypeError, match=r"inputs\[1\] has dtype float64"):
        ops.add_forward([a, b.astype(np.float64)], out=out)
    with pytest.raises(TypeError, match="non-empty list"):
        ops.add_forward(a, out=out)
    with pytest.raises(ValueError, match="out overlaps"):
        ops.add_forward([a, out], out=out)
    with pytest.raises(ValueError, match="b has shape"):
        ops.mul_forward(a, b[:2], out=out)
    with pytest.raises(ValueError, match="grad_a overlaps"):
        ops.mul_backward(a, b, out, grad_a=out)
    with pytest.raises(ValueError, match=r"inputs\[1\] has 2 rows"):
        ops.concat_forward([a, b[:2]])
    with pytest.raises(ValueError, match="widths"):
        ops.concat_backward(a, [2, 1])
    with pytest.raises(ValueError, match=r"outs\[0\] has shape"):
        ops.concat_backward(a, [2, 2], outs=[out, None])
    with pytest.raises(ValueError, match="read-only"):
        ro = filled((3, 4))
        ro.flags.writeable = False
        ops.add_backward(a, out=ro)
    assert np.all(out == 7.0)


def test_merge_kernels_against_the_reference():
    from fastprop import reference as ref
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        a, b, c = (rng.standard_normal((4, 5)).astype(dtype) for _ in range(3))
        g = rng.standard_normal((4, 5)).astype(dtype)
        assert np.array_equal(ops.add_forward([a, b, c]), ref.add_forward([a, b, c]))
        assert np.array_equal(ops.mul_forward(a, b), ref.mul_forward(a, b))
        acc = c.copy()
        ops.add_backward(g, out=acc, accumulate=True)
        assert np.array_equal(acc, c + g)
        for x, y in zip(ops.mul_backward(g, a, b), ref.mul_backward(g, a, b)):
            assert np.array_equal(x, y)
        da = c.copy()   # x ⊙ x: both sides into one buffer, added to what is there
        ops.mul_backward(g, a, a, grad_a=da, grad_b=da, accumulate_a=True, accumulate_b=True)
        assert np.allclose(da, c + 2 * g * a, rtol=1e-6)
        cat = ops.concat_forward([a, b[:, :2]])
        assert np.array_equal(cat, np.concatenate([a, b[:, :2]], axis=1))
        gc = rng.standard_normal((4, 7)).astype(dtype)
        outs = ops.concat_backward(gc, [5, 2], needed=[False, True])
        assert outs[0] is None and np.array_equal(outs[1], gc[:, 5:])
        both = c.copy()   # [x, x]: both blocks added into x's one buffer
        ops.concat_backward(np.concatenate([g, g], axis=1), [5, 5],
                            outs=[both, both], accumulate=[False, True])
        assert np.array_equal(both, g + g)
