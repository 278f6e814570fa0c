/* The small-matrix GEMM (small_gemm.c) against a naive double-precision product, and the
 * dispatch of gemm_f32/gemm_f64 between it and the BLAS (a counting naive gemm stands in).
 * Build and run: make -C csrc test  (make -C csrc test-asan adds the sanitizers).
 * Every operand is its own exact-size heap block, so ASan sees any read or write past it. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../fastprop.h"
#include "../small_gemm.h"

static int failures = 0, checks = 0;
#define CHECK(cond, ...) do { checks++; if (!(cond)) { failures++; if (failures < 30) {          \
                              printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__);  \
                              printf("\n"); } } } while (0)

#include "naive_blas.h"

static double rnd(void) { return (double)rand() / RAND_MAX * 2 - 1; }

/* op(A)[i, p] and op(B)[p, j] of row-major A (m, k) or (k, m), B (k, n) or (n, k) */
#define OPA(a, ta, m, k, i, p) ((ta) == 'N' ? (a)[(i) * (k) + (p)] : (a)[(p) * (m) + (i)])
#define OPB(b, tb, n, k, p, j) ((tb) == 'N' ? (b)[(p) * (n) + (j)] : (b)[(j) * (k) + (p)])

/* One shape and transpose case, every alpha and beta, through fn (small_gemm_* or gemm_*
 * wrapped to return 1 when it succeeded). Checks |C − ref| ≤ 2(k+2)ε (|alpha| |A||B| +
 * |beta c|) elementwise, the usual bound of a k-term dot product; beta = 0 runs on a C
 * full of NaN, which must not leak. */
#define CHECK_SHAPE(NAME, R, EPS)                                                              \
    static void NAME(int (*fn)(char, char, int64_t, int64_t, int64_t, R, const R *, const R *, \
                               R, R *),                                                        \
                     char ta, char tb, int m, int n, int k, const char *what)                  \
    {                                                                                          \
        R *a = malloc(sizeof(R) * m * k), *b = malloc(sizeof(R) * k * n);                      \
        R *c = malloc(sizeof(R) * m * n), *c0 = malloc(sizeof(R) * m * n);                     \
        double *p = malloc(sizeof(double) * m * n), *pa = malloc(sizeof(double) * m * n);      \
        for (int i = 0; i < m * k; i++) a[i] = (R)rnd();                                       \
        for (int i = 0; i < k * n; i++) b[i] = (R)rnd();                                       \
        for (int i = 0; i < m * n; i++) c0[i] = (R)rnd();                                      \
        for (int i = 0; i < m; i++)                                                            \
            for (int j = 0; j < n; j++) {                                                      \
                double s = 0, sa = 0;                                                          \
                for (int q = 0; q < k; q++) {                                                  \
                    double t = (double)OPA(a, ta, m, k, i, q) * OPB(b, tb, n, k, q, j);        \
                    s += t;                                                                    \
                    sa += fabs(t);                                                             \
                }                                                                              \
                p[i * n + j] = s;                                                              \
                pa[i * n + j] = sa;                                                            \
            }                                                                                  \
        const R alphas[] = {1, 0.5}, betas[] = {0, 1, 2};                                      \
        for (int ia = 0; ia < 2; ia++)                                                         \
            for (int ib = 0; ib < 3; ib++) {                                                   \
                R al = alphas[ia], be = betas[ib];                                             \
                for (int i = 0; i < m * n; i++) c[i] = be == 0 ? (R)NAN : c0[i];               \
                int ok = fn(ta, tb, m, n, k, al, a, b, be, c);                                 \
                CHECK(ok, "%s %c%c %dx%dx%d: not computed", what, ta, tb, m, n, k);            \
                double worst = 0;                                                              \
                int bad = -1;                                                                  \
                for (int i = 0; i < m * n; i++) {                                              \
                    double ref = al * p[i] + (be == 0 ? 0 : be * (double)c0[i]);               \
                    double tol = 2.0 * (k + 2) * (EPS) *                                       \
                                 (fabs((double)al) * pa[i] + fabs(be * (double)c0[i])) +       \
                                 1e-300;                                                       \
                    double e = fabs((double)c[i] - ref) / tol;                                 \
                    if (!(e <= worst)) { worst = e; bad = i; }                                 \
                }                                                                              \
                CHECK(worst <= 1 && !isnan(worst), "%s %c%c %dx%dx%d alpha %g beta %g: "        \
                      "error %g of the bound at %d", what, ta, tb, m, n, k, (double)al,        \
                      (double)be, worst, bad);                                                 \
            }                                                                                  \
        /* alpha = 0 reads neither A nor B (NaN there must not leak): C = beta C */            \
        for (int i = 0; i < m * k; i++) a[i] = (R)NAN;                                         \
        for (int i = 0; i < m * n; i++) c[i] = c0[i];                                          \
        fn(ta, tb, m, n, k, 0, a, b, 2, c);                                                    \
        int same = 1;                                                                          \
        for (int i = 0; i < m * n; i++) same &= c[i] == 2 * c0[i];                             \
        CHECK(same, "%s %c%c %dx%dx%d alpha 0: C != beta C", what, ta, tb, m, n, k);           \
        for (int i = 0; i < m * n; i++) c[i] = (R)NAN;                                         \
        fn(ta, tb, m, n, k, 0, a, b, 0, c);                                                    \
        same = 1;                                                                              \
        for (int i = 0; i < m * n; i++) same &= c[i] == 0;                                     \
        CHECK(same, "%s %c%c %dx%dx%d alpha 0 beta 0: C != 0", what, ta, tb, m, n, k);         \
        free(a); free(b); free(c); free(c0); free(p); free(pa);                                \
    }
CHECK_SHAPE(check_shape_f32, float, FLT_EPSILON / 2)
CHECK_SHAPE(check_shape_f64, double, DBL_EPSILON / 2)

/* gemm_* through the dispatch, as the same signature (1 when it returned FP_OK) */
static int via_gemm_f32(char ta, char tb, int64_t m, int64_t n, int64_t k, float al,
                        const float *a, const float *b, float be, float *c)
{
    return gemm_f32(ta, tb, m, n, k, al, a, b, be, c) == FP_OK;
}

static int via_gemm_f64(char ta, char tb, int64_t m, int64_t n, int64_t k, double al,
                        const double *a, const double *b, double be, double *c)
{
    return gemm_f64(ta, tb, m, n, k, al, a, b, be, c) == FP_OK;
}

static const char ops[3][2] = {{'N', 'N'}, {'N', 'T'}, {'T', 'N'}};

/* every m, n, k of the list, the three transpose cases, both precisions, small path forced */
static void test_sweep(void)
{
    static const int sizes[] = {1, 2, 3, 5, 8, 13, 17, 31, 32, 33, 64, 65};
    const int ns = sizeof sizes / sizeof sizes[0];
    int64_t saved = fp_small_gemm_max_mnk;
    fp_small_gemm_max_mnk = INT64_MAX;
    for (int o = 0; o < 3; o++)
        for (int im = 0; im < ns; im++)
            for (int in = 0; in < ns; in++)
                for (int ik = 0; ik < ns; ik++) {
                    int m = sizes[im], n = sizes[in], k = sizes[ik];
                    check_shape_f32(small_gemm_f32, ops[o][0], ops[o][1], m, n, k, "small f32");
                    check_shape_f64(small_gemm_f64, ops[o][0], ops[o][1], m, n, k, "small f64");
                }
    /* k past one packed panel (256): the product is done in k chunks */
    static const int long_k[][3] = {{1, 1, 257}, {3, 17, 300}, {13, 33, 513}, {6, 16, 256},
                                    {7, 9, 1000}, {32, 10, 777}};
    for (int o = 0; o < 3; o++)
        for (unsigned s = 0; s < sizeof long_k / sizeof long_k[0]; s++) {
            int m = long_k[s][0], n = long_k[s][1], k = long_k[s][2];
            check_shape_f32(small_gemm_f32, ops[o][0], ops[o][1], m, n, k, "small f32");
            check_shape_f64(small_gemm_f64, ops[o][0], ops[o][1], m, n, k, "small f64");
        }
    fp_small_gemm_max_mnk = saved;
}

/* gemm_* sends products under the threshold to the small path and the rest (and TT) to
 * the BLAS, with the same results either way */
static void test_dispatch(void)
{
    int64_t max = fp_small_gemm_max_mnk;
    CHECK(max > 0, "the small path is compiled in (threshold %lld)", (long long)max);
    /* under the threshold: no BLAS call */
    blas_calls = 0;
    check_shape_f32(via_gemm_f32, 'N', 'T', 32, 64, 64, "gemm f32");
    check_shape_f64(via_gemm_f64, 'T', 'N', 64, 64, 32, "gemm f64");
    check_shape_f32(via_gemm_f32, 'N', 'N', 32, 64, 10, "gemm f32");
    CHECK(blas_calls == 0, "%d BLAS calls under the threshold", blas_calls);
    /* TT: the BLAS, 8 calls per check_shape (6 alpha/beta + 2 alpha = 0) */
    blas_calls = 0;
    check_shape_f32(via_gemm_f32, 'T', 'T', 5, 7, 3, "gemm f32 TT");
    CHECK(blas_calls == 8, "TT: %d BLAS calls, not 8", blas_calls);
    /* at the threshold and just past it */
    int64_t kk = 8;
    fp_small_gemm_max_mnk = 6 * 10 * kk;  /* m n k = 6·10·8 is in, 6·10·9 is out */
    blas_calls = 0;
    check_shape_f64(via_gemm_f64, 'N', 'T', 6, 10, (int)kk, "gemm f64 at threshold");
    CHECK(blas_calls == 0, "at the threshold: %d BLAS calls", blas_calls);
    check_shape_f64(via_gemm_f64, 'N', 'T', 6, 10, (int)kk + 1, "gemm f64 past threshold");
    CHECK(blas_calls == 8, "past the threshold: %d BLAS calls, not 8", blas_calls);
    /* threshold 0: everything to the BLAS */
    fp_small_gemm_max_mnk = 0;
    blas_calls = 0;
    check_shape_f32(via_gemm_f32, 'N', 'N', 1, 1, 1, "gemm f32 threshold 0");
    CHECK(blas_calls == 8, "threshold 0: %d BLAS calls, not 8", blas_calls);
    fp_small_gemm_max_mnk = max;
    /* a product above the default threshold (2^19 or, with AVX-512, 2^21) goes to the BLAS */
    blas_calls = 0;
    check_shape_f32(via_gemm_f32, 'N', 'N', 256, 128, 64, "gemm f32 above");
    CHECK(blas_calls == 8, "256x128x64: %d BLAS calls, not 8", blas_calls);
    /* k = 0 and m = 0 are handled before either path; the small path alone refuses them */
    CHECK(small_gemm_f32('N', 'N', 2, 2, 0, 1, NULL, NULL, 0, NULL) == 0, "small k = 0");
    CHECK(small_gemm_f64('N', 'T', 0, 2, 2, 1, NULL, NULL, 0, NULL) == 0, "small m = 0");
    CHECK(small_gemm_f32('T', 'T', 2, 2, 2, 1, NULL, NULL, 0, NULL) == 0, "small TT");
    CHECK(small_gemm_f32('C', 'N', 2, 2, 2, 1, NULL, NULL, 0, NULL) == 0, "small 'C'");
    float c[4] = {1, 2, 3, 4}, x = 0;
    CHECK(gemm_f32('N', 'T', 2, 2, 0, 1, &x, &x, 2, c) == FP_OK && c[3] == 8, "k = 0: C = beta C");
    CHECK(gemm_f32('N', 'T', 0, 2, 3, 1, &x, &x, 0, c) == FP_OK && c[0] == 2, "m = 0: nothing");
}

/* the small path on rows of a bigger array: C must be exactly its m × n block; every
 * element after it is untouched */
static void test_bounds(void)
{
    int64_t saved = fp_small_gemm_max_mnk;
    fp_small_gemm_max_mnk = INT64_MAX;
    enum { M = 13, N = 21, K = 19, PAD = 64 };
    static float a[M * K], b[K * N], c[M * N + PAD];
    for (int i = 0; i < M * K; i++) a[i] = (float)rnd();
    for (int i = 0; i < K * N; i++) b[i] = (float)rnd();
    for (int o = 0; o < 3; o++) {
        for (int i = 0; i < M * N + PAD; i++) c[i] = -7;
        small_gemm_f32(ops[o][0], ops[o][1], M, N, K, 1, a, b, 0, c);
        int untouched = 1;
        for (int i = M * N; i < M * N + PAD; i++) untouched &= c[i] == -7;
        CHECK(untouched, "%c%c: wrote past C", ops[o][0], ops[o][1]);
    }
    fp_small_gemm_max_mnk = saved;
}

/* The other backends' calling conventions (fp_blas_register): a row-major (oneDNN-style)
 * and a BLIS-style gemm, both the naive Fortran one with the operands swapped */
#define ROWMAJOR_GEMM(NAME, R, NAIVE)                                                            \
    static int NAME##_rm(char ta, char tb, int64_t m, int64_t n, int64_t k, R alpha, const R *a, \
                         int64_t lda, const R *b, int64_t ldb, R beta, R *c, int64_t ldc)        \
    {                                                                                            \
        int M = (int)m, N = (int)n, K = (int)k, la = (int)lda, lb = (int)ldb, lc = (int)ldc;    \
        NAIVE(&tb, &ta, &N, &M, &K, &alpha, (R *)b, &lb, (R *)a, &la, &beta, c, &lc);          \
        return 0;                                                                                \
    }                                                                                            \
    static void NAME##_blis(int ta, int tb, int m, int n, int k, R alpha, const R *a, int lda,   \
                            const R *b, int ldb, R beta, R *c, int ldc)                          \
    {                                                                                            \
        NAME##_rm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);  \
    }
ROWMAJOR_GEMM(naive_s, float, naive_sgemm)
ROWMAJOR_GEMM(naive_d, double, naive_dgemm)

static void test_backends(void)
{
    int64_t saved = fp_small_gemm_max_mnk;
    fp_small_gemm_max_mnk = 0;  /* every product to the backend */
    CHECK(fp_blas_register(0, FP_BLAS_FORTRAN, (fp_any_fn)naive_sgemm, FP_BLAS_FORTRAN,
                           (fp_any_fn)naive_dgemm) == FP_ERR_ARG, "slot 0 is fp_set_blas's");
    CHECK(fp_blas_register(1, 7, (fp_any_fn)naive_sgemm, FP_BLAS_FORTRAN,
                           (fp_any_fn)naive_dgemm) == FP_ERR_ARG, "an unknown kind");
    CHECK(fp_blas_select(5) == FP_ERR_ARG && fp_blas_selected() == 0, "an empty slot");
    CHECK(fp_blas_register(1, FP_BLAS_ROWMAJOR, (fp_any_fn)naive_s_rm, FP_BLAS_ROWMAJOR,
                           (fp_any_fn)naive_d_rm) == FP_OK, "row-major slot");
    CHECK(fp_blas_register(2, FP_BLAS_BLIS, (fp_any_fn)naive_s_blis, FP_BLAS_BLIS,
                           (fp_any_fn)naive_d_blis) == FP_OK, "BLIS slot");
    CHECK(fp_blas_register(2, FP_BLAS_ROWMAJOR, (fp_any_fn)naive_s_rm, FP_BLAS_ROWMAJOR,
                           (fp_any_fn)naive_d_rm) == FP_ERR_ARG, "a filled slot is kept");
    static const int shapes[][3] = {{1, 1, 1}, {7, 33, 65}, {65, 7, 33}, {130, 131, 129}};
    static const char tr[][2] = {{'N', 'N'}, {'N', 'T'}, {'T', 'N'}, {'T', 'T'}};
    for (int slot = 1; slot <= 2; slot++) {  /* 130·131·129 > 2^21: BLIS's row blocks */
        CHECK(fp_blas_select(slot) == FP_OK && fp_blas_selected() == slot, "select %d", slot);
        for (unsigned s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int t = 0; t < 4; t++) {
                int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
                blas_calls = 0;
                check_shape_f32(via_gemm_f32, tr[t][0], tr[t][1], m, n, k, "backend f32");
                check_shape_f64(via_gemm_f64, tr[t][0], tr[t][1], m, n, k, "backend f64");
                CHECK(blas_calls >= 16, "slot %d: %d calls", slot, blas_calls);
            }
    }
    CHECK(fp_blas_select(0) == FP_OK && fp_blas_selected() == 0, "back to slot 0");
    fp_small_gemm_max_mnk = saved;
}

int main(void)
{
    fp_set_blas(naive_sgemm, naive_dgemm);
    test_dispatch();
    test_bounds();
    test_backends();
    test_sweep();
    printf("small-gemm: %d passed, %d failed\n", checks - failures, failures);
    return failures != 0;
}
