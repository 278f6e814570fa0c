/* The C kernels without Python: a naive column-major gemm stands in for the BLAS.
 * Build and run: make -C csrc test  (make -C csrc test-asan adds the sanitizers). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../fastprop.h"

static int failures = 0, checks = 0;
#define CHECK(cond, ...) do { checks++; if (!(cond)) { failures++; printf("FAIL %s:%d: ", __FILE__, __LINE__); \
                                              printf(__VA_ARGS__); printf("\n"); } } while (0)

/* Fortran gemm: C(m,n) = alpha op(A) op(B) + beta C, column-major */
#define NAIVE_GEMM(NAME, R)                                                                   \
    static void NAME(char *ta, char *tb, int *m, int *n, int *k, R *alpha, R *a, int *lda,   \
                     R *b, int *ldb, R *beta, R *c, int *ldc)                                 \
    {                                                                                         \
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

static double rnd(void) { return (double)rand() / RAND_MAX * 2 - 1; }

static void test_dense(void)
{
    enum { B = 5, IN = 7, OUT = 3 };
    double x[B * IN], w[OUT * IN], b[OUT], y[B * OUT], pre[B * OUT], g[B * OUT];
    double dx[B * IN], dw[OUT * IN], db[OUT];
    for (int i = 0; i < B * IN; i++) x[i] = rnd();
    for (int i = 0; i < OUT * IN; i++) w[i] = rnd();
    for (int i = 0; i < OUT; i++) b[i] = rnd();
    for (int i = 0; i < B * OUT; i++) g[i] = rnd();
    fp_act_params p = {0.01, 1.0, 20.0};
    CHECK(dense_forward_f64(y, pre, x, w, b, B, IN, OUT, FP_TANH, &p) == FP_OK, "dense_forward");
    for (int r = 0; r < B; r++)
        for (int o = 0; o < OUT; o++) {
            double s = b[o];
            for (int i = 0; i < IN; i++) s += x[r * IN + i] * w[o * IN + i];
            CHECK(fabs(pre[r * OUT + o] - s) < 1e-12, "preact %d %d", r, o);
            CHECK(fabs(y[r * OUT + o] - tanh(s)) < 1e-12, "y %d %d", r, o);
        }
    CHECK(dense_backward_f64(dx, dw, db, g, x, w, B, IN, OUT, 0, 0) == FP_OK, "dense_backward");
    for (int o = 0; o < OUT; o++) {
        double sb = 0;
        for (int r = 0; r < B; r++) sb += g[r * OUT + o];
        CHECK(fabs(db[o] - sb) < 1e-12, "db %d", o);
        for (int i = 0; i < IN; i++) {
            double s = 0;
            for (int r = 0; r < B; r++) s += g[r * OUT + o] * x[r * IN + i];
            CHECK(fabs(dw[o * IN + i] - s) < 1e-12, "dw %d %d", o, i);
        }
    }
    for (int r = 0; r < B; r++)
        for (int i = 0; i < IN; i++) {
            double s = 0;
            for (int o = 0; o < OUT; o++) s += g[r * OUT + o] * w[o * IN + i];
            CHECK(fabs(dx[r * IN + i] - s) < 1e-12, "dx %d %d", r, i);
        }
    /* bad sizes are refused, not run */
    CHECK(dense_forward_f64(y, NULL, x, w, b, -1, IN, OUT, FP_RELU, &p) == FP_ERR_ARG, "negative batch");
    CHECK(dense_forward_f64(y, NULL, x, w, b, B, IN, OUT, 99, &p) == FP_ERR_ACT, "bad activation");
    CHECK(gemm_f64('N', 'N', 1, 1, (int64_t)1 << 31, 1, x, w, 0, y) == FP_ERR_SIZE, "int overflow");
}

/* every activation's fused backward against a central difference of its forward */
static void test_activations(void)
{
    fp_act_params p = {0.2, 1.5, 4.0};
    enum { N = 64 };
    double x[N], y[N], g[N], dx[N], xp[N], yp[N], ym[N];
    for (int i = 0; i < N; i++) {
        x[i] = 3 * rnd();
        if (fabs(x[i]) < 1e-3) x[i] += 0.1;
        if (fabs(1.5 * x[i] - 4.0) < 1e-3) x[i] += 0.1;
        g[i] = rnd();
    }
    for (int act = 0; act < FP_N_ACTIVATIONS; act++) {
        CHECK(activation_forward_f64(y, x, N, act, &p) == FP_OK, "forward %d", act);
        CHECK(activation_backward_f64(dx, g, x, y, N, act, &p) == FP_OK, "backward %d", act);
        double h = 1e-6;
        for (int i = 0; i < N; i++) xp[i] = x[i] + h;
        activation_forward_f64(yp, xp, N, act, &p);
        for (int i = 0; i < N; i++) xp[i] = x[i] - h;
        activation_forward_f64(ym, xp, N, act, &p);
        for (int i = 0; i < N; i++) {
            double num = g[i] * (yp[i] - ym[i]) / (2 * h);
            CHECK(fabs(dx[i] - num) < 1e-6 * (1 + fabs(num)), "act %d at %g: %g vs %g", act, x[i], dx[i], num);
        }
    }
    CHECK(activation_backward_f64(dx, g, NULL, NULL, N, FP_GELU, &p) == FP_ERR_ACT, "gelu without x");
}

static void test_losses_and_network(void)
{
    enum { B = 4, C = 3 };
    float z[B * C] = {1e4f, -1e4f, 0, 1, 2, 3, -1, 0, 1, 0.5f, 0.5f, 0.5f};
    float dz[B * C];
    int64_t labels[B] = {1, 2, 0, 1};
    double loss;
    CHECK(softmax_xent_forward_backward_f32(&loss, dz, z, labels, NULL, B, C) == FP_OK, "xent");
    CHECK(isfinite(loss), "xent finite");
    for (int r = 0; r < B; r++) {
        double s = 0;
        for (int c = 0; c < C; c++) s += dz[r * C + c];
        CHECK(fabs(s) < 1e-6, "row %d of the gradient sums to %g", r, s);
    }
    int64_t bad[B] = {0, 3, 1, 1};
    memset(dz, 0, sizeof dz);
    CHECK(softmax_xent_forward_backward_f32(&loss, dz, z, bad, NULL, B, C) == FP_ERR_LABEL, "bad label");
    for (int i = 0; i < B * C; i++) CHECK(dz[i] == 0, "nothing written on a bad label");

    /* a 2-block network: the train step's loss equals forward + the loss kernel */
    float x[B * 2] = {0.1f, 0.2f, -0.3f, 0.4f, 0.5f, -0.6f, 0.7f, 0.8f};
    float w0[4 * 2], b0[4], w1[C * 4], b1[C], dw0[8], db0[4], dw1[12], db1[3];
    float y0[B * 4], y1[B * C], g0[B * 4], g1[B * 4];
    for (int i = 0; i < 8; i++) w0[i] = (float)rnd();
    for (int i = 0; i < 12; i++) w1[i] = (float)rnd();
    for (int i = 0; i < 4; i++) b0[i] = 0.1f;
    for (int i = 0; i < C; i++) b1[i] = 0;
    fp_dense_block blocks[2] = {
        {2, 4, FP_RELU, {0.01, 1, 20}, w0, b0, dw0, db0, y0, NULL},
        {4, C, FP_IDENTITY, {0.01, 1, 20}, w1, b1, dw1, db1, y1, NULL},
    };
    CHECK(network_train_f32(&loss, blocks, 2, x, B, FP_LOSS_SOFTMAX_XENT, labels, NULL, g0, g1) == FP_OK,
          "network_train");
    double direct;
    softmax_xent_forward_backward_f32(&direct, NULL, y1, labels, NULL, B, C);
    CHECK(fabs(loss - direct) < 1e-6, "network loss %g vs %g", loss, direct);
    double sum_db1 = 0;
    for (int i = 0; i < C; i++) sum_db1 += db1[i];
    CHECK(fabs(sum_db1) < 1e-6, "the output bias gradient sums to 0 (softmax rows), got %g", sum_db1);
}

int main(void)
{
    fp_set_blas(naive_sgemm, naive_dgemm);
    test_dense();
    test_activations();
    test_losses_and_network();
    printf("c-kernels: %d passed, %d failed\n", checks - failures, failures);
    return failures != 0;
}
