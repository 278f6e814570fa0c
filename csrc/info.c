/* How this copy of the kernels was built and which clone the CPU runs: for `python -m fastprop info`. */
#include "fastprop.h"

#ifndef FP_BUILD_FLAGS
#define FP_BUILD_FLAGS "(not recorded)"
#endif

const char *fp_build_compiler(void)
{
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "gcc " __VERSION__;
#else
    return "unknown";
#endif
}

const char *fp_build_flags(void) { return FP_BUILD_FLAGS; }

// the clone the ifunc resolver picks for FP_SIMD kernels (the same tests as its target list)
const char *fp_simd_clone(void)
{
#if defined(FP_CLONES)
#if __GNUC__ >= 12
    if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
    if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2 + FMA)";
#else
    if (__builtin_cpu_supports("avx512f")) return "avx512f";
    if (__builtin_cpu_supports("avx2")) return "avx2";
#endif
    return "x86-64 baseline (SSE2)";
#elif defined(__aarch64__)
    return "aarch64 NEON (no clones: NEON is the baseline)";
#elif defined(__x86_64__)
    return "x86-64 baseline (no clones in this build)";
#else
    return "portable C (no clones in this build)";
#endif
}
