/* The small-matrix GEMM of small_gemm.c, which gemm_f32/gemm_f64 (blas.c) try first. */
#ifndef FASTPROP_SMALL_GEMM_H
#define FASTPROP_SMALL_GEMM_H

#include <stdint.h>

/* C (m, n) = alpha op(A) op(B) + beta C, as gemm_*, when ta tb is NN, NT or TN and
 * 1 ≤ m·n·k ≤ fp_small_gemm_max_mnk: returns 1. Otherwise returns 0 and touches nothing
 * (the caller uses the BLAS). Row-major, contiguous: A is (m, k) or (k, m) for 'T', B is
 * (k, n) or (n, k), C is (m, n); beta == 0 does not read C, alpha == 0 neither A nor B. */
int small_gemm_f32(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha,
                   const float *a, const float *b, float beta, float *c);
int small_gemm_f64(char ta, char tb, int64_t m, int64_t n, int64_t k, double alpha,
                   const double *a, const double *b, double beta, double *c);

/* The size threshold; 0 sends every product to the BLAS (benchmarks and tests move it). */
extern int64_t fp_small_gemm_max_mnk;

/* Moves the default threshold to what this CPU's widest kernel measured (fp_set_blas calls it). */
void fp_small_gemm_tune(void);

#endif
