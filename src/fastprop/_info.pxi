# How the extension was built (csrc/info.c), for `python -m fastprop info`.
cdef extern from "fastprop.h":
    const char *fp_build_compiler()
    const char *fp_build_flags()
    const char *fp_simd_clone()


def build_info():
    """The compiler and flags the kernels were built with, and the SIMD clone this CPU runs."""
    return {"compiler": fp_build_compiler().decode(), "flags": fp_build_flags().decode(),
            "simd": fp_simd_clone().decode()}
