# The GEMM backends behind gemm_* (csrc/blas.c): the slots fastprop.blas fills and selects,
# and the small-path threshold. fastprop/blas.py holds the policy (names, loading, probe).
cdef extern from "fastprop.h":
    ctypedef void (*fp_any_fn)()
    int FP_BLAS_FORTRAN, FP_BLAS_ROWMAJOR, FP_BLAS_BLIS, FP_BLAS_SLOTS
    int fp_blas_register(int slot, int kind_s, fp_any_fn sgemm, int kind_d, fp_any_fn dgemm)
    int fp_blas_select(int slot)
    int fp_blas_selected()

cdef extern from "small_gemm.h":
    int64_t fp_small_gemm_max_mnk

BLAS_KINDS = {"fortran": FP_BLAS_FORTRAN, "rowmajor": FP_BLAS_ROWMAJOR, "blis": FP_BLAS_BLIS}
BLAS_SLOTS = FP_BLAS_SLOTS


def _capsule_address(capsule):
    """The pointer a Cython __pyx_capi__ capsule holds, as an int."""
    return <uintptr_t>PyCapsule_GetPointer(capsule, PyCapsule_GetName(capsule))


def _openblas_addresses():
    """The addresses of SciPy's cython_blas sgemm and dgemm (the default backend, slot 0)."""
    from scipy.linalg import cython_blas
    return (_capsule_address(cython_blas.__pyx_capi__["sgemm"]),
            _capsule_address(cython_blas.__pyx_capi__["dgemm"]))


def _blas_register(int slot, str kind_s, uintptr_t sgemm, str kind_d, uintptr_t dgemm):
    """Fills backend slot `slot` (1..BLAS_SLOTS-1) with gemm functions at these addresses,
    once; kinds are keys of BLAS_KINDS. The caller keeps their library loaded."""
    if fp_blas_register(slot, BLAS_KINDS[kind_s], <fp_any_fn>sgemm, BLAS_KINDS[kind_d],
                        <fp_any_fn>dgemm) != FP_OK:
        raise ValueError(f"backend slot {slot}: bad slot or kind, or filled with other functions")


def _blas_select(int slot):
    """Makes a filled slot the backend of every later gemm call."""
    if fp_blas_select(slot) != FP_OK:
        raise ValueError(f"backend slot {slot} is empty")


def _blas_selected():
    return fp_blas_selected()


def small_gemm_max():
    """The small-path threshold: products with m·n·k up to this skip the BLAS."""
    return fp_small_gemm_max_mnk


def _set_small_gemm_max(int64_t value):
    """Moves the threshold (0: every product to the BLAS); between calls only."""
    global fp_small_gemm_max_mnk
    if value < 0:
        raise ValueError(f"the small-GEMM threshold must be >= 0, got {value}")
    fp_small_gemm_max_mnk = value
