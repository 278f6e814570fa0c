# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Bindings: check every array, release the GIL, call the C kernels.

The only place where C meets Python. Read-only inputs that are not C-contiguous
are copied; output buffers (``out=``, ``grad_*=``, optimizer state) are written
in place, so they must already be C-contiguous, writeable, of the right dtype
and shape, and must not overlap the inputs (an exact alias is allowed where the
kernel is elementwise). Any violation raises ``TypeError``/``ValueError`` naming
the argument before anything is written.
"""
import numpy as np
cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer
from libc.float cimport DBL_MAX, FLT_MAX
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uintptr_t
from libc.stdlib cimport calloc, free

cnp.import_array()

from fastprop import registry

ACTIVATIONS = registry.activation_names()
# activations whose derivative follows from the saved output y (leaky_relu too, when its slope > 0)
FROM_OUTPUT = tuple(a.name for a in registry.ACTIVATIONS if a.from_output == "always")
_ACT_CODE = {a.name: a.code for a in registry.ACTIVATIONS}


def _load_blas():
    """Hand SciPy's BLAS gemm to the C side as function pointers."""
    from scipy.linalg import cython_blas
    s = cython_blas.__pyx_capi__["sgemm"]
    d = cython_blas.__pyx_capi__["dgemm"]
    fp_set_blas(<fp_sgemm_fn>PyCapsule_GetPointer(s, PyCapsule_GetName(s)),
                <fp_dgemm_fn>PyCapsule_GetPointer(d, PyCapsule_GetName(d)))


_load_blas()


def set_num_threads(int n):
    """Caps the threads of fastprop's own large passes (the optimizer updates over
    buffers of 2^20 elements and more); 0 means one per online CPU. The BLAS keeps its own
    setting (OPENBLAS_NUM_THREADS, threadpoolctl).

    Parameters
    ----------
    n : int
        The cap, in [0, 8]; 0 means one per online CPU.
    """
    global fp_num_threads
    if n < 0 or n > FP_MAX_THREADS:
        raise ValueError(f"n must be in [0, {FP_MAX_THREADS}], got {n}")
    fp_num_threads = n


def get_num_threads():
    """The threads fastprop's own large passes use at most.

    Returns
    -------
    n : int
        The threads used at most.
    """
    cdef int n
    with nogil:
        n = fp_threads()
    return n


def _threads_from_env():
    import os
    value = os.environ.get("FASTPROP_NUM_THREADS")
    if value:
        try:
            set_num_threads(int(value))
        except ValueError:
            raise ValueError(f"FASTPROP_NUM_THREADS must be a whole number in "
                             f"[0, {FP_MAX_THREADS}], got {value!r}") from None


_threads_from_env()


# ---------------------------------------------------------------- checks

cdef inline bint _f32(cnp.ndarray a):
    return cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32


ctypedef void *vptr  # the data pointers a binding hands to C, several to a line


cdef inline void* _ptr(a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef object _floats(object a, str name, int ndim, object like=None,
                         str like_name=None):
    """A read-only float input, C-contiguous (copied when it is not)."""
    if not isinstance(a, np.ndarray):
        if a is None:
            raise TypeError(f"{name} must be a float32 or float64 array, got None")
        try:
            a = np.asarray(a, dtype=None if like is None else like.dtype)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be a float32 or float64 array: {e}") from None
    arr = a
    cdef int t = cnp.PyArray_TYPE(arr)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    if like is not None and t != cnp.PyArray_TYPE(like):
        raise TypeError(f"{name} has dtype {arr.dtype} but {like_name} has dtype "
                        f"{like.dtype}: one call uses one dtype (cast with .astype)")
    if ndim >= 0 and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        arr = np.ascontiguousarray(arr)
    return arr


cdef object _target(object t, str name, tuple shape, object dtype, str like_name):
    """A loss target of the given shape: any real dtype, cast to dtype."""
    arr = np.asarray(t)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real-valued array, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {shape} "
                         f"(the shape of {like_name})")
    return np.ascontiguousarray(arr, dtype=dtype)


cdef object _out(object o, str name, tuple shape, object like, bint zero=False):
    """An output buffer: allocated when None, else checked to be written in place."""
    if o is None:
        return np.zeros(shape, like.dtype) if zero else np.empty(shape, like.dtype)
    if not isinstance(o, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(o).__name__}")
    arr = o
    if cnp.PyArray_TYPE(arr) != cnp.PyArray_TYPE(like):
        raise TypeError(f"{name} must have dtype {like.dtype}, got {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{name} must be C-contiguous: it is written in place")
    if not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name} is read-only: it is written in place")
    return arr


cdef inline bint _overlap(cnp.ndarray a, cnp.ndarray b):
    cdef uintptr_t a0 = <uintptr_t>cnp.PyArray_DATA(a), b0 = <uintptr_t>cnp.PyArray_DATA(b)
    cdef uintptr_t a1 = a0 + <uintptr_t>cnp.PyArray_NBYTES(a)
    cdef uintptr_t b1 = b0 + <uintptr_t>cnp.PyArray_NBYTES(b)
    return a0 < b1 and b0 < a1


cdef _separate(cnp.ndarray out, str name, tuple others, bint alias_ok=False):
    """out must not overlap the arrays of `others` ((array, name) pairs, None skipped);
    an exact alias (same memory, same size) is allowed for elementwise kernels."""
    for pair in others:
        if pair is None or pair[0] is None:
            continue
        other = <cnp.ndarray>pair[0]
        if not _overlap(out, other):
            continue
        if alias_ok and cnp.PyArray_DATA(out) == cnp.PyArray_DATA(other) and \
                cnp.PyArray_NBYTES(out) == cnp.PyArray_NBYTES(other):
            continue
        raise ValueError(f"{name} overlaps {pair[1]} in memory; "
                         f"pass a separate buffer" + ("" if not alias_ok else
                                                      " or exactly the same array"))


cdef int64_t _first_bad_label(object labels, int64_t classes):
    """The first index of the int64 labels outside [0, classes), or -1 (without the GIL)."""
    cdef int64_t *p = <int64_t*>_ptr(labels)
    cdef int64_t n = labels.size, i
    with nogil:
        i = fp_first_bad_label(p, n, classes)
    return i


cdef int64_t _first_outside(object A, double lo, double hi):
    """The first flat index of A (C-contiguous float32/float64) outside [lo, hi] (NaN too), or -1."""
    cdef void *p = _ptr(A)
    cdef int64_t n = A.size, i
    cdef bint f64 = not _f32(A)
    with nogil:
        i = c_first_outside(f64, p, n, lo, hi)
    return i


cdef _check_range(object A, str name, double lo, double hi, str what):
    cdef int64_t i = _first_outside(A, lo, hi)
    if i >= 0:
        where = np.unravel_index(i, A.shape)
        raise ValueError(f"{name}[{', '.join(map(str, where))}] = {A.reshape(-1)[i]} {what}")


def check_range(a, str name, double lo, double hi, str what):
    """ValueError naming ``name`` and ``what`` is wrong when the float array a holds a value
    outside [lo, hi] or a NaN."""
    _check_range(_floats(a, name, -1), name, lo, hi, what)


def check_finite(a, str name):
    """ValueError naming ``name`` when the float array a holds a NaN or an infinity."""
    A = _floats(a, name, -1)
    cdef double big = FLT_MAX if _f32(A) else DBL_MAX
    _check_range(A, name, -big, big, "is not finite")


cdef int _act(object activation) except -1:
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a string, got {type(activation).__name__}")
    code = _ACT_CODE.get(activation)
    if code is None:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    return code


cdef fp_act_params _params(double negative_slope, double beta, double threshold) except *:
    if beta == 0 or beta != beta:
        raise ValueError(f"softplus beta must be a nonzero number, got {beta}")
    cdef fp_act_params p
    p.negative_slope = negative_slope
    p.beta = beta
    p.threshold = threshold
    return p


cdef int _check(int rc, str where) except -1:
    if rc == FP_OK:
        return 0
    if rc == FP_ERR_SIZE:
        raise ValueError(f"{where}: a dimension exceeds the BLAS's 32-bit int limit")
    if rc == FP_ERR_NOBLAS:
        raise RuntimeError(f"{where}: no BLAS was loaded")
    if rc == FP_ERR_LABEL:
        raise ValueError(f"{where}: a label is outside [0, classes)")
    if rc == FP_ERR_ACT:
        raise ValueError(f"{where}: unknown activation or missing input for its derivative")
    raise ValueError(f"{where}: invalid arguments (error {rc})")


# ---------------------------------------------------------------- the kernel families
# One family a file; a new family adds its own .pxi and one include line here.
include "_dense.pxi"
include "_activation.pxi"
include "_loss.pxi"
include "_loss_weighted.pxi"
include "_optim.pxi"
include "_network.pxi"
include "_merge.pxi"
include "_info.pxi"
include "_tape.pxi"
include "_norm.pxi"
include "_optim2.pxi"
include "_infer.pxi"
include "_fit.pxi"
include "_noise.pxi"
include "_blas.pxi"
