/* GEMM through the BLAS handed over at import (scipy.linalg.cython_blas).
 * Row-major C = A B is column-major C^T = B^T A^T: swap the operands.
 * Small products skip the BLAS: small_gemm.c computes them when they are under its
 * threshold, where a BLAS call costs more in overhead than in arithmetic. */
#ifndef R
#include <limits.h>
#include <stddef.h>
#include "fastprop.h"
#include "small_gemm.h"

static fp_sgemm_fn blas_sgemm;
static fp_dgemm_fn blas_dgemm;

void fp_set_blas(fp_sgemm_fn sgemm, fp_dgemm_fn dgemm)
{
    blas_sgemm = sgemm;
    blas_dgemm = dgemm;
    fp_small_gemm_tune();
}

static int fits_int(int64_t m, int64_t n, int64_t k)
{
    return m >= 0 && n >= 0 && k >= 0 && m <= INT_MAX && n <= INT_MAX && k <= INT_MAX;
}

#define FP_TEMPLATE "blas.c"
#include "template.h"
#else

// C (m, n) = alpha op(A) op(B) + beta C; op(A) is (m, k), op(B) is (k, n), all row-major
int F(gemm)(char ta, char tb, int64_t m, int64_t n, int64_t k, R alpha,
            const R *a, const R *b, R beta, R *c)
{
    if (!fits_int(m, n, k)) return FP_ERR_SIZE;
    if (m == 0 || n == 0) return FP_OK;
    if (k == 0) {  /* the product is empty: C = beta C */
        for (int64_t i = 0; i < m * n; i++) c[i] = beta == 0 ? 0 : beta * c[i];
        return FP_OK;
    }
    if (F(small_gemm)(ta, tb, m, n, k, alpha, a, b, beta, c)) return FP_OK;
    int M = (int)m, N = (int)n, K = (int)k;
    int lda = ta == 'N' ? K : M;     /* row length of A as stored */
    int ldb = tb == 'N' ? N : K;
    int ldc = N;
    char tA = ta, tB = tb;
    if (sizeof(R) == sizeof(float)) {
        if (!blas_sgemm) return FP_ERR_NOBLAS;
        float al = (float)alpha, be = (float)beta;
        blas_sgemm(&tB, &tA, &N, &M, &K, &al, (float *)b, &ldb, (float *)a, &lda, &be,
                   (float *)c, &ldc);
    } else {
        if (!blas_dgemm) return FP_ERR_NOBLAS;
        double al = (double)alpha, be = (double)beta;
        blas_dgemm(&tB, &tA, &N, &M, &K, &al, (double *)b, &ldb, (double *)a, &lda, &be,
                   (double *)c, &ldc);
    }
    return FP_OK;
}

#endif
