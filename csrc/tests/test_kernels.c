/* The C kernels without Python: a naive column-major gemm stands in for the BLAS.
 * Build and run: make -C csrc test  (make -C csrc test-asan adds the sanitizers). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <float.h>
#include "../fastprop.h"
#include "../fastmath.h"

static int failures = 0, checks = 0;
#define CHECK(cond, ...) do { checks++; if (!(cond)) { failures++; printf("FAIL %s:%d: ", __FILE__, __LINE__); \
                                              printf(__VA_ARGS__); printf("\n"); } } while (0)

#include "naive_blas.h"

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

/* every activation's f″ against a central difference of its fused backward, and the fused
 * R-backward against its definition rg ⊙ f′ + g ⊙ f″ ⊙ rx */
static void test_second_derivatives(void)
{
    fp_act_params p = {0.2, 1.5, 4.0};
    enum { N = 64 };
    double x[N], g[N], rg[N], rx[N], ones[N], d2[N], dp[N], dm[N], xp[N], dx[N], rdx[N], d1[N];
    for (int i = 0; i < N; i++) {
        x[i] = 3 * rnd();
        if (fabs(x[i]) < 1e-3) x[i] += 0.1;
        if (fabs(1.5 * x[i] - 4.0) < 1e-3) x[i] += 0.1;
        g[i] = rnd(), rg[i] = rnd(), rx[i] = rnd(), ones[i] = 1;
    }
    for (int act = 0; act < FP_N_ACTIVATIONS; act++) {
        CHECK(activation_second_f64(d2, g, x, N, act, &p) == FP_OK, "second %d", act);
        double h = 1e-6;
        for (int i = 0; i < N; i++) xp[i] = x[i] + h;
        activation_backward_f64(dp, ones, xp, NULL, N, act, &p);
        for (int i = 0; i < N; i++) xp[i] = x[i] - h;
        activation_backward_f64(dm, ones, xp, NULL, N, act, &p);
        for (int i = 0; i < N; i++) {
            double num = g[i] * (dp[i] - dm[i]) / (2 * h);
            CHECK(fabs(d2[i] - num) < 1e-6 * (1 + fabs(num)), "f'' of act %d at %g: %g vs %g", act, x[i],
                  d2[i], num);
        }
        CHECK(activation_rbackward_f64(dx, rdx, g, rg, rx, x, N, act, &p) == FP_OK, "rbackward %d", act);
        activation_backward_f64(d1, ones, x, NULL, N, act, &p);
        activation_second_f64(d2, ones, x, N, act, &p);
        for (int i = 0; i < N; i++) {
            CHECK(fabs(dx[i] - g[i] * d1[i]) <= 1e-14 * (1 + fabs(dx[i])), "rbackward dx %d", act);
            double want = rg[i] * d1[i] + g[i] * d2[i] * rx[i];
            CHECK(fabs(rdx[i] - want) <= 1e-14 * (1 + fabs(want)), "rbackward rdx %d", act);
        }
    }
    CHECK(activation_second_f64(d2, g, NULL, N, FP_GELU, &p) == FP_ERR_ARG, "second without x");
    CHECK(activation_rbackward_f64(dx, rdx, g, rg, rx, x, N, 99, &p) == FP_ERR_ACT, "bad activation");
}

/* each loss's Hessian–vector product against a central difference of its gradient along v */
static void test_loss_hvps(void)
{
    enum { B = 3, C = 4, N = B * C };
    double z[N], v[N], t[N], zp[N], gp[N], gm[N], hv[N], loss;
    int64_t labels[B] = {0, 3, 2};
    for (int i = 0; i < N; i++) z[i] = 2 * rnd(), v[i] = rnd(), t[i] = 0.5 * (rnd() + 1);
    double h = 1e-6;
    for (int kind = 0; kind < 4; kind++) {  /* labels, soft targets, BCE, MSE */
        for (int sign = -1; sign <= 1; sign += 2) {
            for (int i = 0; i < N; i++) zp[i] = z[i] + sign * h * v[i];
            double *g = sign > 0 ? gp : gm;
            if (kind == 0) softmax_xent_forward_backward_f64(&loss, g, zp, labels, NULL, B, C);
            if (kind == 1) softmax_xent_forward_backward_f64(&loss, g, zp, NULL, t, B, C);
            if (kind == 2) sigmoid_bce_forward_backward_f64(&loss, g, zp, t, N);
            if (kind == 3) mse_forward_backward_f64(&loss, g, zp, t, N);
        }
        int rc = kind == 0 ? softmax_xent_hvp_f64(hv, z, v, NULL, B, C)
               : kind == 1 ? softmax_xent_hvp_f64(hv, z, v, t, B, C)
               : kind == 2 ? sigmoid_bce_hvp_f64(hv, z, v, N) : mse_hvp_f64(hv, v, N);
        CHECK(rc == FP_OK, "loss hvp %d", kind);
        for (int i = 0; i < N; i++) {
            double num = (gp[i] - gm[i]) / (2 * h);
            CHECK(fabs(hv[i] - num) < 1e-7 * (1 + fabs(num)), "loss hvp %d [%d]: %g vs %g", kind, i, hv[i],
                  num);
        }
    }
    CHECK(softmax_xent_hvp_f64(hv, z, v, NULL, 0, C) == FP_ERR_ARG, "empty batch");
    CHECK(mse_hvp_f64(NULL, v, N) == FP_ERR_ARG, "no output");
}

/* the weighted losses' Hessian–vector products against central differences of their gradients
 * (sample weights, class weights, label smoothing); a weight sum of 0 is FP_ERR_ARG */
static void test_weighted_loss_hvps(void)
{
    enum { B = 3, C = 4, N = B * C };
    double z[N], v[N], t[N], zp[N], gp[N], gm[N], hv[N], loss;
    double sw[B] = {0.5, 2.0, 1.0}, cw[C] = {1.0, 0.3, 2.0, 0.7}, zero[B] = {0, 0, 0};
    int64_t labels[B] = {0, 3, 2};
    for (int i = 0; i < N; i++) z[i] = 2 * rnd(), v[i] = rnd(), t[i] = z[i] + 0.9 * rnd();
    double h = 1e-6;
    /* kinds 1..5: the pointwise losses (param 0.6: no residual sits at its kink); 6: xent */
    for (int kind = FP_LOSS_SIGMOID_BCE; kind <= FP_LOSS_SMOOTH_L1 + 1; kind++) {
        int xent = kind > FP_LOSS_SMOOTH_L1;
        for (int sign = -1; sign <= 1; sign += 2) {
            for (int i = 0; i < N; i++) zp[i] = z[i] + sign * h * v[i];
            double *g = sign > 0 ? gp : gm;
            int rc = xent ? softmax_xent_weighted_forward_backward_f64(&loss, g, zp, labels, NULL, cw,
                                                                        sw, 0.2, B, C)
                          : pointwise_loss_forward_backward_f64(&loss, g, zp, t, sw, B, C, kind, 0.6);
            CHECK(rc == FP_OK, "weighted loss %d", kind);
        }
        int rc = xent ? softmax_xent_weighted_hvp_f64(hv, z, v, labels, NULL, cw, sw, 0.2, B, C)
                      : pointwise_loss_hvp_f64(hv, z, t, v, sw, B, C, kind, 0.6);
        CHECK(rc == FP_OK, "weighted loss hvp %d", kind);
        for (int i = 0; i < N; i++) {
            double num = (gp[i] - gm[i]) / (2 * h);
            CHECK(fabs(hv[i] - num) < 1e-7 * (1 + fabs(num)), "weighted loss hvp %d [%d]: %g vs %g",
                  kind, i, hv[i], num);
        }
        rc = xent ? softmax_xent_weighted_forward_backward_f64(&loss, gp, z, labels, NULL, cw, zero,
                                                               0.2, B, C)
                  : pointwise_loss_forward_backward_f64(&loss, gp, z, t, zero, B, C, kind, 0.6);
        CHECK(rc == FP_ERR_ARG, "weights summing to 0, loss %d", kind);
    }
    CHECK(pointwise_loss_forward_backward_f64(&loss, gp, z, t, NULL, B, C, FP_LOSS_HUBER, 0) == FP_ERR_ARG,
          "huber delta 0");
    CHECK(softmax_xent_weighted_forward_backward_f64(&loss, gp, z, labels, NULL, NULL, NULL, 1.5, B, C) ==
          FP_ERR_ARG, "label smoothing > 1");
}

/* PReLU's R-forward and R-backward against central differences of its forward and backward
 * along (rx, vw), with one slope and one per channel */
static void test_prelu_r(void)
{
    enum { PB = 4, PC = 3, N = PB * PC };
    double x[N], rx[N], g[N], rg[N], ry[N], dx[N], rdx[N], yp[N], ym[N], xp[N], gp[N], dp[N], dm[N];
    double w[PC], vw[PC], wp[PC], dw[PC], dwp[PC], dwm[PC];
    for (int i = 0; i < N; i++) {
        x[i] = rnd(), rx[i] = rnd(), g[i] = rnd(), rg[i] = rnd();
        if (fabs(x[i]) < 1e-3) x[i] += 0.1;
    }
    for (int c = 0; c < PC; c++) w[c] = rnd(), vw[c] = rnd();
    double h = 1e-6;
    for (int n_w = 1; n_w <= PC; n_w += PC - 1) {
        CHECK(prelu_rforward_f64(ry, rx, x, w, vw, PB, PC, n_w) == FP_OK, "prelu_rforward");
        for (int sign = -1; sign <= 1; sign += 2) {
            for (int i = 0; i < N; i++) xp[i] = x[i] + sign * h * rx[i], gp[i] = g[i] + sign * h * rg[i];
            for (int c = 0; c < n_w; c++) wp[c] = w[c] + sign * h * vw[c];
            prelu_forward_f64(sign > 0 ? yp : ym, xp, wp, PB, PC, n_w);
            prelu_backward_f64(sign > 0 ? dp : dm, sign > 0 ? dwp : dwm, gp, xp, wp, PB, PC, n_w, 0);
        }
        for (int i = 0; i < N; i++) {
            double num = (yp[i] - ym[i]) / (2 * h);
            CHECK(fabs(ry[i] - num) < 1e-7 * (1 + fabs(num)), "prelu R{y}[%d]: %g vs %g", i, ry[i], num);
        }
        CHECK(prelu_rbackward_f64(dx, rdx, dw, g, rg, x, rx, w, vw, PB, PC, n_w, 0) == FP_OK, "prelu_rbackward");
        for (int i = 0; i < N; i++) {
            double num = (dp[i] - dm[i]) / (2 * h);
            CHECK(fabs(rdx[i] - num) < 1e-7 * (1 + fabs(num)), "prelu R{dx}[%d]: %g vs %g", i, rdx[i], num);
        }
        for (int c = 0; c < n_w; c++) {
            double num = (dwp[c] - dwm[c]) / (2 * h);
            CHECK(fabs(dw[c] - num) < 1e-7 * (1 + fabs(num)), "prelu R{dw}[%d]: %g vs %g", c, dw[c], num);
        }
    }
    CHECK(prelu_rforward_f64(ry, rx, x, w, vw, PB, PC, 2) == FP_ERR_ARG, "slopes neither 1 nor channels");
    CHECK(prelu_rbackward_f64(dx, rdx, NULL, g, rg, x, rx, w, vw, PB, PC, 1, 0) == FP_ERR_ARG, "no dw");
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
    CHECK(network_train_f32(&loss, blocks, 2, x, B, FP_LOSS_SOFTMAX_XENT, labels, NULL, NULL, g0, g1) == FP_OK,
          "network_train");
    double direct;
    softmax_xent_forward_backward_f32(&direct, NULL, y1, labels, NULL, B, C);
    CHECK(fabs(loss - direct) < 1e-6, "network loss %g vs %g", loss, direct);
    double sum_db1 = 0;
    for (int i = 0; i < C; i++) sum_db1 += db1[i];
    CHECK(fabs(sum_db1) < 1e-6, "the output bias gradient sums to 0 (softmax rows), got %g", sum_db1);
}

/* ---------------------------------------------------------------- fastmath accuracy */

/* The float result f against the double reference ref (libm on the same float input).
 * Where ref is a normal float the error is measured in ulps of ref (as a float) and relatively;
 * below FLT_MIN (flushed or subnormal) only the absolute error counts; NaN must give NaN,
 * an infinite or overflowing ref must give a float at least FLT_MAX in size, of its sign. */
typedef struct {
    const char *name;
    double bound;           /* the relative error allowed */
    double max_ulp, max_rel, at;
    long n, bad;
} fm_stats;

static double ulp_of(double ref)
{
    float r = fabsf((float)ref);
    return (double)nextafterf(r, INFINITY) - (double)r;
}

static void fm_check(fm_stats *st, float x, float f, double ref)
{
    int ok;
    st->n++;
    if (isnan(ref)) {
        ok = isnan(f);
    } else if (fabs(ref) >= FLT_MAX) {
        ok = fabsf(f) >= FLT_MAX * (1 - st->bound) && (f > 0) == (ref > 0);
    } else if (fabs(ref) < FLT_MIN) {
        ok = fabs(f - ref) <= FLT_MIN;  /* the brief's bound is 1e-30; flushing stays below 1.2e-38 */
    } else {
        double err = fabs((double)f - ref), rel = err / fabs(ref), ulp = err / ulp_of(ref);
        if (ulp > st->max_ulp) st->max_ulp = ulp, st->at = x;
        if (rel > st->max_rel) st->max_rel = rel;
        ok = rel <= st->bound;
    }
    if (!ok && st->bad++ < 3) printf("  %s(%.9g) = %.9g, expected %.17g\n", st->name, x, f, ref);
}

/* the points of every sweep: dense over [lo, hi], dense in log scale near 0, and the special values */
static long fm_points(float *x, long cap, double lo, double hi)
{
    long n = 0;
    for (long i = 0; i < 1000000 && n < cap; i++) x[n++] = (float)(lo + (hi - lo) * i / 999999.0);
    for (long i = 0; i < 200000 && n < cap; i++) {  /* ±10^[-45, 0] */
        float v = (float)pow(10.0, -45.0 + 45.0 * i / 199999.0);
        if (v >= lo && v <= hi) x[n++] = v;
        if (-v >= lo && -v <= hi) x[n++] = -v;
    }
    const float special[] = {0.0f, -0.0f, FLT_MIN, -FLT_MIN, 1e-45f, -1e-45f, 1e-30f, -1e-30f,
                             1e-7f, -1e-7f, 1e38f, -1e38f, FLT_MAX, -FLT_MAX, INFINITY, -INFINITY, NAN};
    for (size_t i = 0; i < sizeof special / sizeof *special && n < cap; i++)
        if (isnan(special[i]) || (special[i] >= lo && special[i] <= hi)) x[n++] = special[i];
    /* NaNs with a payload, negative, signalling: fp_expf adds to the exponent bits, NaN must stay NaN */
    const uint32_t nans[] = {0x7fc00001u, 0xffc12345u, 0x7f800001u, 0xff800fffu, 0x7fffffffu};
    for (size_t i = 0; i < sizeof nans / sizeof *nans && n < cap; i++) x[n++] = fp_from_bits(nans[i]);
    return n;
}

static double ref_sigmoid(double x) { return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)); }
static double ref_phi(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }
static double ref_gauss(double x) { return exp(-0.5 * x * x); }
static double ref_log1p01(double u) { return log1p(u); }

static void fm_report(fm_stats *st)
{
    printf("  %-15s %8ld points: max %.2f ulp, max relative %.2e (%s %.3g)%s\n", st->name, st->n,
           st->max_ulp, st->max_rel, "at x =", st->at, st->bad ? "  FAILED" : "");
    CHECK(st->bad == 0, "%s: %ld points beyond relative error %g", st->name, st->bad, st->bound);
}

/* each fastmath function over a million points against double libm */
static void test_fastmath(void)
{
    enum { CAP = 1500000 };
    float *x = malloc(CAP * sizeof *x);
    if (!x) { CHECK(0, "out of memory"); return; }
    printf("fastmath against double libm:\n");
    struct { const char *name; double (*ref)(double); double lo, hi; } fns[] = {
        {"fp_expf", exp, -100, 100},
        {"fp_expf_nonpos", exp, -100, 0},
        {"fp_log1pf01", ref_log1p01, 0, 1},
        {"fp_sigmoidf", ref_sigmoid, -100, 100},
        {"fp_tanhf", tanh, -100, 100},
        {"fp_phif", ref_phi, -100, 100},
        {"fp_gaussf", ref_gauss, -100, 100},
        {"fp_sinf", sin, -100, 100},
        {"fp_cosf", cos, -100, 100},
        {"fp_sinf", sin, -FP_TRIG_MAX, FP_TRIG_MAX},  /* the whole range of the fast reduction */
        {"fp_cosf", cos, -FP_TRIG_MAX, FP_TRIG_MAX},
    };
    for (size_t k = 0; k < sizeof fns / sizeof *fns; k++) {
        fm_stats st = {fns[k].name, 1e-6, 0, 0, 0, 0, 0};
        long n = fm_points(x, CAP, fns[k].lo, fns[k].hi);
        for (long i = 0; i < n; i++) {
            float v = x[i], f;
            switch (k) {  /* direct calls: the functions are inline, not addressable as one */
            case 0: f = fp_expf(v); break;
            case 1: f = fp_expf_nonpos(v); break;
            case 2: f = fp_log1pf01(v); break;
            case 3: f = fp_sigmoidf(v); break;
            case 4: f = fp_tanhf(v); break;
            case 5: f = fp_phif(v); break;
            case 6: f = fp_gaussf(v); break;
            case 7: case 9: f = fp_sinf(v); break;
            default: f = fp_cosf(v); break;
            }
            fm_check(&st, v, f, fns[k].ref((double)v));
        }
        /* exp: also every float of the under- and overflow boundaries */
        if (k <= 1)
            for (float v = -88.5f; v <= -86.0f; v = nextafterf(v, INFINITY))
                fm_check(&st, v, k ? fp_expf_nonpos(v) : fp_expf(v), exp(v));
        if (k == 0)
            for (float v = 88.0f; v <= 89.0f; v = nextafterf(v, INFINITY)) fm_check(&st, v, fp_expf(v), exp(v));
        fm_report(&st);
    }
    free(x);
}

/* ---------------------------------------------------------------- float kernels against double */

static int same_bits(float a, float b) { return fp_bits(a) == fp_bits(b) || (isnan(a) && isnan(b)); }

/* max over i of |a_i − b_i| / (rel |b_i| + floor_i): within 1 passes; NaN and inf must match.
 * Prints the largest relative error where |b_i| ≥ 1e-30, the tolerance used, and the worst ratio. */
static int within(const char *what, const float *a, const double *b, int64_t n, double rel,
                  double floor, const float *floor_scale)
{
    double worst = 0, max_rel = 0;
    int64_t at = -1;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(b[i]) || isnan(a[i]) || isinf(b[i]) || isinf(a[i])) {
            int same = isnan(b[i]) ? isnan(a[i]) : a[i] == b[i];
            if (!same) { worst = INFINITY, at = i; break; }
            continue;
        }
        double err = fabs((double)a[i] - b[i]);
        if (fabs(b[i]) >= 1e-30 && err / fabs(b[i]) > max_rel) max_rel = err / fabs(b[i]);
        /* 1e-30: where the true value is below FLT_MIN, float may flush it to 0 */
        double tol = rel * fabs(b[i]) + floor * (floor_scale ? fabsf(floor_scale[i]) : 1) + 1e-30;
        if (err / tol > worst) worst = err / tol, at = i;
    }
    printf("  %-34s max relative %.2e (tolerance %.0e%s), worst %.2f of it\n", what, max_rel, rel,
           floor ? " + floor" : "", worst);
    CHECK(worst <= 1, "%s: error %.3g of the tolerance at %lld (%.9g vs %.17g)", what, worst,
          (long long)at, at >= 0 ? a[at] : 0.0, at >= 0 ? b[at] : 0.0);
    return worst <= 1;
}

/* One element through the scalar fastmath function, compiled as the kernels are (FP_SIMD: the
 * clone the kernels run is picked here too, so a * b + c is contracted into an FMA alike) and
 * called one element at a time (noinline: it is not vectorized into the caller's loop). */
#if defined(__clang__) && defined(FP_CLONES)
#define TEST_NOINLINE  /* clang refuses noinline on a clone, and never inlines one anyway */
#else
#define TEST_NOINLINE __attribute__((noinline))
#endif
FP_SIMD TEST_NOINLINE static float scalar_activation(int act, float v)
{
    return act == FP_SIGMOID ? fp_sigmoidf(v) : act == FP_TANH ? fp_tanhf(v)
         : act == FP_GELU ? v * fp_phif(v) : v * fp_sigmoidf(v);
}

/* Every activation and loss in float (vectorized, fastmath.h) against double (libm) over a dense
 * sweep with the special values; lengths are odd, so the vector loops' tails run too. And bitwise
 * against the scalar fastmath functions in the same clone: the vector loop must compute
 * exactly what scalar code does. */
static void test_float_kernels(void)
{
    enum { N = 200003 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y), *g = malloc(N * sizeof *g);
    float *dx = malloc(N * sizeof *dx), *t = malloc(N * sizeof *t);
    double *xd = malloc(N * sizeof *xd), *yd = malloc(N * sizeof *yd), *gd = malloc(N * sizeof *gd);
    double *dxd = malloc(N * sizeof *dxd), *td = malloc(N * sizeof *td);
    if (!x || !y || !g || !dx || !t || !xd || !yd || !gd || !dxd || !td) { CHECK(0, "out of memory"); return; }
    const float special[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-45f, INFINITY, -INFINITY, NAN,
                             88.8f, -88.8f, 100, -100, 20, 20.000002f, 19.999998f, 1e30f, -1e30f};
    int n_special = (int)(sizeof special / sizeof *special);
    for (int64_t i = 0; i < N; i++) {
        x[i] = i < n_special ? special[i] : (float)(-40 + 80.0 * (double)i / (N - 1));
        g[i] = (float)rnd();
        xd[i] = x[i], gd[i] = g[i];
    }
    fp_act_params p = {0.01, 1.0, 20.0};
    printf("float kernels against double:\n");
    const char *names[FP_N_ACTIVATIONS] = {"identity", "relu", "leaky_relu", "abs", "sigmoid", "tanh",
                                           "softplus", "cos", "gelu", "silu"};
    char what[64];
    for (int act = 0; act < FP_N_ACTIVATIONS; act++) {
        CHECK(activation_forward_f32(y, x, N, act, &p) == FP_OK, "forward %d", act);
        activation_forward_f64(yd, xd, N, act, &p);
        snprintf(what, sizeof what, "%s forward", names[act]);
        within(what, y, yd, N, 2e-6, 0, NULL);
        /* the backward from x (y NULL): f′ is computed, not read off y */
        CHECK(activation_backward_f32(dx, g, x, NULL, N, act, &p) == FP_OK, "backward %d", act);
        activation_backward_f64(dxd, gd, xd, NULL, N, act, &p);
        snprintf(what, sizeof what, "%s backward (from x)", names[act]);
        /* gelu′ = Φ + xφ and silu′ = σ(1 + x(1 − σ)) cancel near their roots (x ≈ −0.75, −1.28):
         * an absolute floor there */
        within(what, dx, dxd, N, 2e-6, act == FP_GELU || act == FP_SILU ? 1e-7 : 0, g);
        /* in place gives the same bits */
        memcpy(t, x, N * sizeof *t);
        activation_forward_f32(t, t, N, act, &p);
        int same = 1;
        for (int64_t i = 0; i < N; i++) same &= same_bits(t[i], y[i]);
        CHECK(same, "%s forward in place differs", names[act]);
        memcpy(t, g, N * sizeof *t);
        activation_backward_f32(t, t, x, NULL, N, act, &p);
        same = 1;
        for (int64_t i = 0; i < N; i++) same &= same_bits(t[i], dx[i]);
        CHECK(same, "%s backward in place differs", names[act]);
    }
    /* vector loops against the scalar functions, bit for bit */
    for (int act = FP_SIGMOID; act < FP_N_ACTIVATIONS; act++) {
        if (act == FP_SOFTPLUS || act == FP_COS) continue;
        activation_forward_f32(y, x, N, act, &p);
        int64_t bad = 0;
        for (int64_t i = 0; i < N; i++) {
            bad += !same_bits(scalar_activation(act, x[i]), y[i]);
        }
        CHECK(bad == 0, "%s: %lld vector results differ from the scalar function", names[act], (long long)bad);
    }

    /* losses: rows of an odd width, soft targets, BCE and MSE over odd lengths */
    enum { B = 37, C = 1003 };
    int64_t labels[B];
    double l32, l64, l32_nograd;
    for (int i = 0; i < B * C; i++) x[i] = (float)(8 * rnd()), xd[i] = x[i];
    for (int i = 0; i < B; i++) labels[i] = rand() % C;
    CHECK(softmax_xent_forward_backward_f32(&l32, dx, x, labels, NULL, B, C) == FP_OK, "xent f32");
    softmax_xent_forward_backward_f64(&l64, dxd, xd, labels, NULL, B, C);
    softmax_xent_forward_backward_f32(&l32_nograd, NULL, x, labels, NULL, B, C);
    CHECK(fabs(l32 - l64) <= 1e-5 * fabs(l64), "xent loss %.9g vs %.17g", l32, l64);
    CHECK(l32 == l32_nograd, "xent loss without the gradient %.9g vs %.9g", l32_nograd, l32);
    within("xent gradient", dx, dxd, B * C, 1e-5, 1e-7 / B, NULL);
    memcpy(t, x, B * C * sizeof *t);
    softmax_xent_forward_backward_f32(&l32_nograd, t, t, labels, NULL, B, C);  /* in place */
    int same = l32_nograd == l32;
    for (int i = 0; i < B * C; i++) same &= same_bits(t[i], dx[i]);
    CHECK(same, "xent in place differs");
    for (int i = 0; i < B; i++) {  /* soft targets: positive, each row summing to 1 */
        double row = 0;
        for (int j = 0; j < C; j++) td[i * C + j] = fabs(rnd()), row += td[i * C + j];
        for (int j = 0; j < C; j++) t[i * C + j] = (float)(td[i * C + j] / row), td[i * C + j] = t[i * C + j];
    }
    softmax_xent_forward_backward_f32(&l32, dx, x, NULL, t, B, C);
    softmax_xent_forward_backward_f64(&l64, dxd, xd, NULL, td, B, C);
    CHECK(fabs(l32 - l64) <= 1e-5 * fabs(l64), "soft xent loss %.9g vs %.17g", l32, l64);
    within("soft xent gradient", dx, dxd, B * C, 1e-5, 1e-7 / B, NULL);
    for (int log_space = 0; log_space < 2; log_space++) {
        softmax_forward_f32(y, x, B, C, log_space);
        softmax_forward_f64(yd, xd, B, C, log_space);
        within(log_space ? "log_softmax" : "softmax", y, yd, B * C, 1e-5, 1e-7, NULL);
    }
    enum { M = 100003 };
    for (int i = 0; i < M; i++) {
        x[i] = i < n_special ? special[i] : (float)(30 * rnd());
        if (isnan(x[i]) || isinf(x[i])) x[i] = 0;  /* the loss must stay finite */
        t[i] = (float)fabs(rnd()), xd[i] = x[i], td[i] = t[i];
    }
    sigmoid_bce_forward_backward_f32(&l32, dx, x, t, M);
    sigmoid_bce_forward_backward_f64(&l64, dxd, xd, td, M);
    sigmoid_bce_forward_backward_f32(&l32_nograd, NULL, x, t, M);
    CHECK(fabs(l32 - l64) <= 1e-6 * fabs(l64), "bce loss %.9g vs %.17g", l32, l64);
    CHECK(l32 == l32_nograd, "bce loss without the gradient %.9g vs %.9g", l32_nograd, l32);
    within("bce gradient", dx, dxd, M, 2e-6, 1e-7 / M, NULL);
    mse_forward_backward_f32(&l32, dx, x, t, M);
    mse_forward_backward_f64(&l64, dxd, xd, td, M);
    CHECK(fabs(l32 - l64) <= 1e-6 * fabs(l64), "mse loss %.9g vs %.17g", l32, l64);
    within("mse gradient", dx, dxd, M, 1e-6, 0, NULL);

    /* prelu, one slope and one per channel */
    enum { PB = 33, PC = 37 };
    float w[PC], dw[PC];
    double wd[PC], dwd[PC];
    for (int c = 0; c < PC; c++) w[c] = (float)(0.5 * rnd()), wd[c] = w[c];
    for (int i = 0; i < PB * PC; i++) x[i] = (float)rnd(), xd[i] = x[i];
    for (int n_w = 1; n_w <= PC; n_w += PC - 1) {
        prelu_forward_f32(y, x, w, PB, PC, n_w);
        prelu_forward_f64(yd, xd, wd, PB, PC, n_w);
        printf("  prelu with %d slope%s:\n", n_w, n_w > 1 ? "s" : "");
        within("prelu forward", y, yd, PB * PC, 1e-6, 0, NULL);
        prelu_backward_f32(dx, dw, g, x, w, PB, PC, n_w, 0);
        prelu_backward_f64(dxd, dwd, gd, xd, wd, PB, PC, n_w, 0);
        within("prelu backward dx", dx, dxd, PB * PC, 1e-6, 0, NULL);
        within("prelu backward dw", dw, dwd, n_w, 1e-5, 1e-6, NULL);
    }
    free(x), free(y), free(g), free(dx), free(t), free(xd), free(yd), free(gd), free(dxd), free(td);
}

/* the optimizer updates cut into pieces on threads: the same bits as one pass, every
 * element written once (n is not a multiple of the piece size or of 64), and fp_parallel_for
 * covers [0, n) exactly for any thread count */
static void count_piece(void *ctx, int64_t lo, int64_t hi)
{
    unsigned char *hits = ctx;
    for (int64_t i = lo; i < hi; i++) hits[i]++;
}

static void test_parallel_updates(void)
{
    const int64_t n = 3 * ((int64_t)1 << 19) + 77;
    float *p1 = malloc(n * sizeof *p1), *p2 = malloc(n * sizeof *p2), *g = malloc(n * sizeof *g);
    float *b1 = malloc(n * sizeof *b1), *b2 = malloc(n * sizeof *b2);
    float *m1 = malloc(n * sizeof *m1), *m2 = malloc(n * sizeof *m2);
    float *v1 = malloc(n * sizeof *v1), *v2 = malloc(n * sizeof *v2);
    unsigned char *hits = calloc(n, 1);
    for (int64_t i = 0; i < n; i++) {
        p1[i] = p2[i] = (float)rnd(), g[i] = (float)rnd();
        b1[i] = b2[i] = (float)rnd(), m1[i] = m2[i] = (float)rnd(), v1[i] = v2[i] = (float)(rnd() + 1);
    }
    int saved = fp_num_threads;
    fp_num_threads = 1;
    sgd_step_f32(p1, g, b1, n, 0.1, 0.9, 0.0, 1, 1e-4, 0);
    adam_step_f32(p1, g, m1, v1, n, 1e-3, 0.9, 0.999, 1e-8, 1e-2, 1, 3);
    fp_num_threads = 3;
    sgd_step_f32(p2, g, b2, n, 0.1, 0.9, 0.0, 1, 1e-4, 0);
    adam_step_f32(p2, g, m2, v2, n, 1e-3, 0.9, 0.999, 1e-8, 1e-2, 1, 3);
    CHECK(!memcmp(p1, p2, n * sizeof *p1) && !memcmp(b1, b2, n * sizeof *b1) &&
          !memcmp(m1, m2, n * sizeof *m1) && !memcmp(v1, v2, n * sizeof *v1),
          "threaded optimizer updates differ from one pass");
    for (int t = 1; t <= FP_MAX_THREADS; t++) {
        fp_num_threads = t;
        memset(hits, 0, n);
        fp_parallel_for(n, 1000, count_piece, hits);
        int once = 1;
        for (int64_t i = 0; i < n; i++) once &= hits[i] == 1;
        CHECK(once, "fp_parallel_for with %d threads: an element not visited exactly once", t);
    }
    fp_num_threads = saved;
    free(p1), free(p2), free(g), free(b1), free(b2), free(m1), free(m2), free(v1), free(v2), free(hits);
}

/* AMSGrad, RMSprop, Adagrad against their formulas (double), the same bits on 1 and 3
 * threads (float), the gradient norms and clamps, and bad arguments refused */
static void test_more_updates(void)
{
    enum { N = 7 };
    double p[N], g[N], m[N], v[N], vm[N], q[N], s[N], b[N], ga[N];
    for (int i = 0; i < N; i++)
        p[i] = q[i] = rnd(), g[i] = rnd(), m[i] = 0.1 * rnd(), v[i] = 0.5 + rnd() * rnd(),
        vm[i] = v[i] + 0.01 * (i % 2), s[i] = v[i], b[i] = 0.1 * rnd(), ga[i] = 0.1 * rnd();
    double P[N], M[N], V[N], VM[N], S[N], B[N], GA[N];
    memcpy(P, p, sizeof p), memcpy(M, m, sizeof m), memcpy(V, v, sizeof v), memcpy(VM, vm, sizeof vm);
    CHECK(amsgrad_step_f64(p, g, m, v, vm, N, 1e-2, 0.9, 0.99, 1e-8, 0.1, 0, 3) == FP_OK, "amsgrad");
    double err = 0;
    for (int i = 0; i < N; i++) {
        double gi = g[i] + 0.1 * P[i], mi = 0.9 * M[i] + 0.1 * gi, vi = 0.99 * V[i] + 0.01 * gi * gi;
        double vmi = fmax(VM[i], vi);
        double pi = P[i] - 1e-2 / (1 - pow(0.9, 3)) * mi / (sqrt(vmi) / sqrt(1 - pow(0.99, 3)) + 1e-8);
        err = fmax(err, fabs(pi - p[i]) + fabs(vmi - vm[i]));
    }
    CHECK(err < 1e-14, "amsgrad vs formula: %g", err);
    memcpy(P, q, sizeof q), memcpy(S, s, sizeof s), memcpy(B, b, sizeof b), memcpy(GA, ga, sizeof ga);
    CHECK(rmsprop_step_f64(q, g, s, b, ga, N, 1e-2, 0.9, 1e-8, 0.01, 0.5) == FP_OK, "rmsprop");
    err = 0;
    for (int i = 0; i < N; i++) {
        double gi = g[i] + 0.01 * P[i], si = 0.9 * S[i] + 0.1 * gi * gi, gai = GA[i] + 0.1 * (gi - GA[i]);
        double bi = 0.5 * B[i] + gi / (sqrt(si - gai * gai) + 1e-8);
        err = fmax(err, fabs(P[i] - 1e-2 * bi - q[i]) + fabs(bi - b[i]) + fabs(gai - ga[i]));
    }
    CHECK(err < 1e-14, "rmsprop vs formula: %g", err);
    memcpy(P, q, sizeof q), memcpy(S, s, sizeof s);
    CHECK(adagrad_step_f64(q, g, s, N, 0.05, 1e-10, 0.2) == FP_OK, "adagrad");
    err = 0;
    for (int i = 0; i < N; i++) {
        double gi = g[i] + 0.2 * P[i], si = S[i] + gi * gi;
        err = fmax(err, fabs(P[i] - 0.05 * gi / (sqrt(si) + 1e-10) - q[i]));
    }
    CHECK(err < 1e-14, "adagrad vs formula: %g", err);
    /* refused: NULL state, a negative size, p <= 0, a negative clamp */
    double out;
    CHECK(amsgrad_step_f64(p, g, m, v, NULL, N, 1e-2, 0.9, 0.99, 1e-8, 0, 0, 1) == FP_ERR_ARG, "amsgrad NULL");
    CHECK(rmsprop_step_f64(p, g, s, NULL, NULL, N, 1e-2, 0.9, 1e-8, 0, 0.5) == FP_ERR_ARG, "rmsprop NULL buf");
    CHECK(adagrad_step_f64(p, g, s, -1, 0.1, 1e-10, 0) == FP_ERR_ARG, "adagrad n < 0");
    CHECK(grad_norm_pow_f64(&out, g, N, 0) == FP_ERR_ARG, "norm p = 0");
    CHECK(grad_clamp_f64(g, N, -1) == FP_ERR_ARG, "clamp c < 0");
    /* norms against the plain sums (n not a multiple of 8), NaN propagation, the clamp */
    enum { K = 1003 };
    float *x = malloc(K * sizeof *x);
    double s2 = 0, s1 = 0, s3 = 0, mx = 0;
    for (int i = 0; i < K; i++) {
        x[i] = (float)rnd();
        s2 += (double)x[i] * x[i], s1 += fabs(x[i]), s3 += pow(fabs(x[i]), 3), mx = fmax(mx, fabs(x[i]));
    }
    grad_norm_pow_f32(&out, x, K, 2);
    CHECK(fabs(out - s2) < 1e-12 * s2, "norm 2: %g vs %g", out, s2);
    grad_norm_pow_f32(&out, x, K, 1);
    CHECK(fabs(out - s1) < 1e-12 * s1, "norm 1");
    grad_norm_pow_f32(&out, x, K, 3);
    CHECK(fabs(out - s3) < 1e-12 * s3, "norm 3");
    grad_norm_pow_f32(&out, x, K, INFINITY);
    CHECK(out == mx, "norm inf");
    x[500] = NAN;
    grad_norm_pow_f32(&out, x, K, INFINITY);
    CHECK(isnan(out), "norm inf with a NaN");
    grad_clamp_f32(x, K, 0.25);
    int ok = isnan(x[500]);
    for (int i = 0; i < K; i++) ok &= i == 500 || fabsf(x[i]) <= 0.25f;
    CHECK(ok, "clamp");
    free(x);
    /* threaded: the same bits as one pass */
    const int64_t n = 3 * ((int64_t)1 << 19) + 77;
    float *a[2][5];
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 5; j++) a[k][j] = malloc(n * sizeof(float));
    float *gr = malloc(n * sizeof *gr);
    for (int64_t i = 0; i < n; i++) {
        gr[i] = (float)rnd();
        for (int j = 0; j < 5; j++) a[0][j][i] = a[1][j][i] = (float)(j == 0 ? rnd() : 0.5 + 0.1 * rnd());
    }
    int saved = fp_num_threads;
    for (int k = 0; k < 2; k++) {
        fp_num_threads = k ? 3 : 1;
        float **t = a[k];
        amsgrad_step_f32(t[0], gr, t[1], t[2], t[3], n, 1e-3, 0.9, 0.999, 1e-8, 1e-2, 1, 4);
        rmsprop_step_f32(t[0], gr, t[2], t[3], t[4], n, 1e-3, 0.99, 1e-8, 0, 0.9);
        adagrad_step_f32(t[0], gr, t[4], n, 1e-2, 1e-10, 0);
    }
    fp_num_threads = saved;
    int same = 1;
    for (int j = 0; j < 5; j++) same &= !memcmp(a[0][j], a[1][j], n * sizeof(float));
    CHECK(same, "threaded AMSGrad/RMSprop/Adagrad differ from one pass");
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 5; j++) free(a[k][j]);
    free(gr);
}

/* the graph's merge kernels and the Gaussian output unit, against their formulas */
static void test_merge_and_gaussian(void)
{
    enum { B = 3, W1 = 4, W2 = 2, N = B * W1 };
    double a[N], b[N], c[N], g[N], y[N], da[N], db[N], x2[B * W2], cat[B * (W1 + W2)], dx2[B * W2];
    for (int i = 0; i < N; i++) a[i] = rnd(), b[i] = rnd(), c[i] = rnd(), g[i] = rnd();
    for (int i = 0; i < B * W2; i++) x2[i] = rnd();
    const double *xs[3] = {a, b, c};
    CHECK(add_forward_f64(y, xs, 3, N) == FP_OK, "add_forward");
    for (int i = 0; i < N; i++) CHECK(y[i] == (a[i] + b[i]) + c[i], "add %d", i);
    CHECK(add_forward_f64(y, xs, 0, N) == FP_ERR_ARG, "add of no inputs");
    memcpy(da, a, sizeof da);
    CHECK(add_backward_f64(da, g, N, 1) == FP_OK, "add_backward");
    for (int i = 0; i < N; i++) CHECK(da[i] == a[i] + g[i], "accumulate %d", i);
    CHECK(mul_forward_f64(y, a, b, N) == FP_OK, "mul_forward");
    CHECK(mul_backward_f64(da, db, g, a, b, N, 0, 0) == FP_OK, "mul_backward");
    for (int i = 0; i < N; i++)
        CHECK(y[i] == a[i] * b[i] && da[i] == g[i] * b[i] && db[i] == g[i] * a[i], "mul %d", i);
    memcpy(da, c, sizeof da);  /* x ⊙ x into one buffer: c + g x + g x */
    CHECK(mul_backward_f64(da, da, g, a, a, N, 1, 1) == FP_OK, "mul_backward aliased");
    for (int i = 0; i < N; i++) CHECK(fabs(da[i] - (c[i] + 2 * g[i] * a[i])) < 1e-15, "x*x %d", i);
    CHECK(concat_forward_f64(cat, a, B, W1 + W2, 0, W1) == FP_OK, "concat a");
    CHECK(concat_forward_f64(cat, x2, B, W1 + W2, W1, W2) == FP_OK, "concat x2");
    CHECK(concat_forward_f64(cat, x2, B, W1 + W2, W1 + 1, W2) == FP_ERR_ARG, "concat out of range");
    CHECK(concat_backward_f64(dx2, cat, B, W1 + W2, W1, W2, 0) == FP_OK, "concat_backward");
    for (int i = 0; i < B * W2; i++) CHECK(dx2[i] == x2[i], "concat round trip %d", i);
    for (int r = 0; r < B; r++)
        for (int j = 0; j < W1; j++) CHECK(cat[r * (W1 + W2) + j] == a[r * W1 + j], "concat %d %d", r, j);
    /* Gaussian NLL: loss and gradient against the formula, and against central differences */
    double z[B * 2 * W2], dz[B * 2 * W2], loss, lp, lm, zz[B * 2 * W2];
    for (int i = 0; i < B * 2 * W2; i++) z[i] = rnd();
    CHECK(gaussian_nll_forward_backward_f64(&loss, dz, z, x2, B, W2) == FP_OK, "gaussian_nll");
    double ref = 0;
    for (int r = 0; r < B; r++)
        for (int j = 0; j < W2; j++) {
            double mu = z[r * 2 * W2 + j], s = z[r * 2 * W2 + W2 + j], d = x2[r * W2 + j];
            ref += 0.5 * s + 0.5 * (d - mu) * (d - mu) / exp(s);
        }
    CHECK(fabs(loss - ref / (B * W2)) < 1e-14, "gaussian loss %g vs %g", loss, ref / (B * W2));
    for (int i = 0; i < B * 2 * W2; i++) {
        memcpy(zz, z, sizeof zz);
        zz[i] += 1e-6;
        gaussian_nll_forward_backward_f64(&lp, NULL, zz, x2, B, W2);
        zz[i] -= 2e-6;
        gaussian_nll_forward_backward_f64(&lm, NULL, zz, x2, B, W2);
        double num = (lp - lm) / 2e-6;
        CHECK(fabs(dz[i] - num) < 1e-7, "gaussian grad %d: %g vs %g", i, dz[i], num);
    }
    float zf[2] = {0.0f, -1000.0f}, tf[1] = {0.0f}, dzf[2];
    CHECK(gaussian_nll_forward_backward_f32(&loss, dzf, zf, tf, 1, 1) == FP_OK, "gaussian f32");
    CHECK(loss == -500 && dzf[0] == 0 && fabs(dzf[1] - 0.5f) < 1e-7, "t = mu with sigma^2 = e^-1000");
}

// DP-SGD's noise (dropout.c): moments of 2¹⁶ normals, ranges, accumulate, float vs double, errors
static void test_gaussian_noise(void)
{
    enum { N = 1 << 16 };
    static double z[N], w[N];
    static float zf[N];
    CHECK(gaussian_noise_f64(z, N, 1.0, 42, 7, 0, 0) == FP_OK, "gaussian_noise");
    double m1 = 0, m2 = 0, m4 = 0, amax = 0;
    for (int i = 0; i < N; i++) {
        m1 += z[i];
        m2 += z[i] * z[i];
        m4 += z[i] * z[i] * z[i] * z[i];
        amax = fabs(z[i]) > amax ? fabs(z[i]) : amax;
    }
    m1 /= N, m2 /= N, m4 /= N;
    double se = 1 / sqrt((double)N);   /* 5 standard errors: mean, variance, fourth moment (3 ± √96/√N) */
    CHECK(fabs(m1) < 5 * se && fabs(m2 - 1) < 5 * sqrt(2.0) * se && fabs(m4 - 3) < 5 * sqrt(96.0) * se,
          "moments %g %g %g", m1, m2, m4);
    CHECK(amax <= 6.67, "max |z| %g", amax);
    /* [0, 1000) and [1000, N) as two calls, the second accumulating onto 2: the same values */
    for (int i = 0; i < N; i++) w[i] = 2;
    CHECK(gaussian_noise_f64(w, 1000, 0.5, 42, 7, 0, 0) == FP_OK, "first range");
    CHECK(gaussian_noise_f64(w + 1000, N - 1000, 0.5, 42, 7, 1000, 1) == FP_OK, "second range");
    int same = 1;
    for (int i = 0; i < N; i++) same &= w[i] == (i < 1000 ? 0.5 * z[i] : 2 + 0.5 * z[i]);
    CHECK(same, "ranges and accumulate");
    CHECK(gaussian_noise_f32(zf, N, 1.0, 42, 7, 0, 0) == FP_OK, "gaussian_noise_f32");
    double dmax = 0;
    for (int i = 0; i < N; i++) dmax = fabs(zf[i] - z[i]) > dmax ? fabs(zf[i] - z[i]) : dmax;
    CHECK(dmax < 2e-5, "float vs double %g", dmax);
    CHECK(gaussian_noise_f64(NULL, 1, 1.0, 0, 0, 0, 0) == FP_ERR_ARG, "NULL");
    CHECK(gaussian_noise_f64(z, -1, 1.0, 0, 0, 0, 0) == FP_ERR_ARG, "negative n");
    CHECK(gaussian_noise_f64(z, 1, 1.0, 0, 0, -1, 0) == FP_ERR_ARG, "negative offset");
    CHECK(gaussian_noise_f64(z, 2, 1.0, 0, 0, INT64_MAX - 1, 0) == FP_ERR_ARG, "offset + n overflows");
    CHECK(gaussian_noise_f64(z, 1, NAN, 0, 0, 0, 0) == FP_ERR_ARG, "NaN scale");
}

int main(void)
{
    fp_set_blas(naive_sgemm, naive_dgemm);
    test_fastmath();
    test_float_kernels();
    test_dense();
    test_activations();
    test_second_derivatives();
    test_loss_hvps();
    test_weighted_loss_hvps();
    test_prelu_r();
    test_losses_and_network();
    test_parallel_updates();
    test_more_updates();
    test_merge_and_gaussian();
    test_gaussian_noise();
    printf("c-kernels: %d passed, %d failed\n", checks - failures, failures);
    return failures != 0;
}
