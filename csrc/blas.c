/* GEMM through the BLAS handed over at import (scipy.linalg.cython_blas), or through the
 * backend fastprop.set_blas selected (MKL, oneDNN, BLIS; fastprop.h).
 * Row-major C = A B is column-major C^T = B^T A^T: a Fortran BLAS gets the operands swapped;
 * a row-major one (oneDNN, BLIS) gets them as they are.
 * Small products skip the BLAS: small_gemm.c computes them when they are under its
 * threshold, where a BLAS call costs more in overhead than in arithmetic. */
#ifndef R
#include <limits.h>
#include <stddef.h>
#include "fastprop.h"
#include "small_gemm.h"

typedef struct {
    int kind_s, kind_d;
    fp_any_fn s, d;
} fp_blas_backend;

/* The backends; a filled slot (1..) is never rewritten, so a call that read the selection
 * just before a set_blas finishes on a backend that is still whole. */
static fp_blas_backend blas_slots[FP_BLAS_SLOTS];
static int blas_current;  /* the slot gemm_* calls; read once per call */

void fp_set_blas(fp_sgemm_fn sgemm, fp_dgemm_fn dgemm)
{
    blas_slots[0] = (fp_blas_backend){FP_BLAS_FORTRAN, FP_BLAS_FORTRAN, (fp_any_fn)sgemm,
                                      (fp_any_fn)dgemm};
    fp_small_gemm_tune();
}

static int known_kind(int kind)
{
    return kind == FP_BLAS_FORTRAN || kind == FP_BLAS_ROWMAJOR || kind == FP_BLAS_BLIS;
}

int fp_blas_register(int slot, int kind_s, fp_any_fn sgemm, int kind_d, fp_any_fn dgemm)
{
    if (slot < 1 || slot >= FP_BLAS_SLOTS || !sgemm || !dgemm || !known_kind(kind_s) ||
        !known_kind(kind_d))
        return FP_ERR_ARG;
    fp_blas_backend b = {kind_s, kind_d, sgemm, dgemm}, *old = &blas_slots[slot];
    if (old->s)  /* filled: only the same functions again */
        return old->s == sgemm && old->d == dgemm && old->kind_s == kind_s &&
               old->kind_d == kind_d ? FP_OK : FP_ERR_ARG;
    *old = b;
    return FP_OK;
}

int fp_blas_select(int slot)
{
    if (slot < 0 || slot >= FP_BLAS_SLOTS || !blas_slots[slot].s) return FP_ERR_ARG;
    __atomic_store_n(&blas_current, slot, __ATOMIC_RELEASE);
    return FP_OK;
}

int fp_blas_selected(void) { return __atomic_load_n(&blas_current, __ATOMIC_ACQUIRE); }

static int fits_int(int64_t m, int64_t n, int64_t k)
{
    return m >= 0 && n >= 0 && k >= 0 && m <= INT_MAX && n <= INT_MAX && k <= INT_MAX;
}

/* BLIS runs one thread a call: a product of this many m·n·k or more is cut into row
 * blocks of C, one per fastprop thread (fp_parallel_for; a thread start costs ~20 µs) */
#define BLIS_SPLIT_MNK ((int64_t)1 << 21)
#define BLIS_MIN_ROWS 32

#define FP_TEMPLATE "blas.c"
#include "template.h"
#else

typedef void (*F(fortran_fn))(char *, char *, int *, int *, int *, R *, R *, int *, R *, int *,
                               R *, R *, int *);
typedef int (*F(rowmajor_fn))(char, char, int64_t, int64_t, int64_t, R, const R *, int64_t,
                              const R *, int64_t, R, R *, int64_t);
typedef void (*F(blis_fn))(int, int, int, int, int, R, const R *, int, const R *, int, R, R *,
                           int);

// one BLIS call on C's rows [lo, hi)
typedef struct {
    F(blis_fn) fn;
    int ta, tb, n, k, lda, ldb;
    R alpha, beta;
    const R *a, *b;
    R *c;
} F(blis_job);

static void F(blis_rows)(void *ctx, int64_t lo, int64_t hi)
{
    F(blis_job) *j = ctx;
    const R *a = j->ta ? j->a + lo : j->a + lo * j->lda;  /* op(A)'s rows from lo */
    j->fn(j->ta, j->tb, (int)(hi - lo), j->n, j->k, j->alpha, a, j->lda, j->b, j->ldb, j->beta,
          j->c + lo * j->n, j->n);
}

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
    const fp_blas_backend *be = &blas_slots[fp_blas_selected()];
    int f32 = sizeof(R) == sizeof(float);
    fp_any_fn fn = f32 ? be->s : be->d;
    int kind = f32 ? be->kind_s : be->kind_d;
    if (!fn) return FP_ERR_NOBLAS;
    int M = (int)m, N = (int)n, K = (int)k;
    int lda = ta == 'N' ? K : M;     /* row length of A as stored */
    int ldb = tb == 'N' ? N : K;
    int ldc = N;
    if (kind == FP_BLAS_ROWMAJOR) {
        ((F(rowmajor_fn))fn)(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    } else if (kind == FP_BLAS_BLIS) {
        F(blis_job) job = {(F(blis_fn))fn, ta == 'T', tb == 'T', N, K, lda, ldb, alpha, beta,
                           a, b, c};
        if (m * n * k < BLIS_SPLIT_MNK)
            F(blis_rows)(&job, 0, m);
        else
            fp_parallel_for(m, BLIS_MIN_ROWS, F(blis_rows), &job);
    } else {
        char tA = ta, tB = tb;
        R al = alpha, be_ = beta;
        ((F(fortran_fn))fn)(&tB, &tA, &N, &M, &K, &al, (R *)b, &ldb, (R *)a, &lda, &be_, c,
                            &ldc);
    }
    return FP_OK;
}

#endif
