/* The test programs' stand-in for the BLAS: a naive Fortran gemm, counted per call. */
#ifndef FASTPROP_TESTS_NAIVE_BLAS_H
#define FASTPROP_TESTS_NAIVE_BLAS_H

/* Fortran gemm standing in for the BLAS: C(m,n) = alpha op(A) op(B) + beta C, column-major */
static int blas_calls = 0;
#define NAIVE_GEMM(NAME, R)                                                                   \
    static void NAME(char *ta, char *tb, int *m, int *n, int *k, R *alpha, R *a, int *lda,   \
                     R *b, int *ldb, R *beta, R *c, int *ldc)                                 \
    {                                                                                         \
        blas_calls++;                                                                         \
        if (*alpha == 0) { /* as the BLAS: A and B are not read */                            \
            for (int j = 0; j < *n; j++)                                                      \
                for (int i = 0; i < *m; i++)                                                  \
                    c[i + j * *ldc] = *beta == 0 ? 0 : *beta * c[i + j * *ldc];               \
            return;                                                                           \
        }                                                                                     \
        for (int j = 0; j < *n; j++)                                                          \
            for (int i = 0; i < *m; i++) {                                                    \
                double s = 0;                                                                 \
                for (int p = 0; p < *k; p++) {                                                \
                    R av = *ta == 'N' ? a[i + p * *lda] : a[p + i * *lda];                    \
                    R bv = *tb == 'N' ? b[p + j * *ldb] : b[j + p * *ldb];                    \
                    s += (double)av * bv;                                                     \
                }                                                                             \
                c[i + j * *ldc] = (R)(*alpha * s + (*beta == 0 ? 0 : *beta * c[i + j * *ldc])); \
            }                                                                                 \
    }
NAIVE_GEMM(naive_sgemm, float)
NAIVE_GEMM(naive_dgemm, double)

#endif
