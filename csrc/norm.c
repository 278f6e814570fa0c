/* Normalization layers: LayerNorm (over each row's features) and BatchNorm1d (over each
 * feature's batch), each forward next to its backward, and their R-operators.
 *
 * PyTorch's definitions: x̂ = (x − μ) / √(σ² + eps) with the biased variance σ², then
 * y = x̂ w + b (w, b NULL: no affine part). The variance is two-pass, Σ (x − μ)² after μ
 * (with the mean's rounding corrected), so a large mean does not cancel. Row sums run in FP_LANES partial sums (fastmath.h) so
 * that they vectorize; BatchNorm's column sums run along the rows, lanes across the columns.
 * The backward keeps no x̂: it recomputes it from x and the saved (mean, rstd). */
#ifndef R
#define FP_TEMPLATE "norm.c"
#include "template.h"
#else

// s1 = Σ_j a_j·w_j, s2 = Σ_j a_j·w_j·(x_j − mu) over one row of n (w NULL: w_j = 1)
FP_INLINE void F(row_sums)(double *s1, double *s2, const R *a, const R *w, const R *x, R mu,
                           int64_t n)
{
    R acc1[FP_LANES] = {0}, acc2[FP_LANES] = {0};
    int64_t j = 0;
    if (w)   /* two loops: a load under a condition (w ? w[j] : 1) would not vectorize */
        for (; j + FP_LANES <= n; j += FP_LANES)
#pragma GCC unroll 1
            for (int l = 0; l < FP_LANES; l++) {
                R aw = a[j + l] * w[j + l];
                acc1[l] += aw;
                acc2[l] += aw * (x[j + l] - mu);
            }
    else
        for (; j + FP_LANES <= n; j += FP_LANES)
#pragma GCC unroll 1
            for (int l = 0; l < FP_LANES; l++) {
                R aw = a[j + l];
                acc1[l] += aw;
                acc2[l] += aw * (x[j + l] - mu);
            }
    double t1 = 0, t2 = 0;
    for (int l = 0; l < FP_LANES; l++) {
        t1 += acc1[l];
        t2 += acc2[l];
    }
    for (; j < n; j++) {
        R aw = a[j] * (w ? w[j] : 1);
        t1 += aw;
        t2 += aw * (x[j] - mu);
    }
    *s1 = t1;
    *s2 = t2;
}

// the mean and 1/√(σ² + eps) of one row of n ≥ 1: the corrected two-pass algorithm (Chan,
// Golub & LeVeque 1983): μ₀ from a first pass, then d = x − μ₀ gives μ = μ₀ + Σd/n and
// σ² = Σd²/n − (Σd/n)², which stays exact when a float32 μ₀ is off by rounding
FP_INLINE void F(row_stats)(R *mean, R *rstd, const R *x, int64_t n, double eps)
{
    double s, unused;
    F(row_sums)(&s, &unused, x, NULL, x, 0, n);
    R mu = (R)(s / (double)n);
    R acc[FP_LANES] = {0}, acc2[FP_LANES] = {0};
    int64_t j = 0;
    for (; j + FP_LANES <= n; j += FP_LANES)
#pragma GCC unroll 1
        for (int l = 0; l < FP_LANES; l++) {
            R d = x[j + l] - mu;
            acc[l] += d;
            acc2[l] += d * d;
        }
    double sd = 0, ss = 0;
    for (int l = 0; l < FP_LANES; l++) sd += acc[l], ss += acc2[l];
    for (; j < n; j++) {
        R d = x[j] - mu;
        sd += d;
        ss += d * d;
    }
    double c = sd / (double)n, var = ss / (double)n - c * c;
    *mean = (R)(mu + c);
    *rstd = (R)(1.0 / sqrt((var > 0 ? var : 0) + eps));
}

// ------------------------------------------------------------------------------ LayerNorm

// x, y are (batch, n), w, b are (n) or NULL, mean, rstd are (batch): saved for the backward
// y = (x − μ_row)·rstd_row·w + b (y may alias x)
FP_SIMD int F(layernorm_forward)(R *y, R *mean, R *rstd, const R *x, const R *w, const R *b,
                                 int64_t batch, int64_t n, double eps)
{
    if (!y || !mean || !rstd || !x || batch < 0 || n < 1 || !(eps >= 0)) return FP_ERR_ARG;
    for (int64_t i = 0; i < batch; i++) {
        const R *xi = x + i * n;
        R *yi = y + i * n;
        F(row_stats)(mean + i, rstd + i, xi, n, eps);
        R mu = mean[i], r = rstd[i];
        if (w && b) {   /* the common case in one loop; the others in passes over the row (in L1) */
            for (int64_t j = 0; j < n; j++) yi[j] = (xi[j] - mu) * r * w[j] + b[j];
            continue;
        }
        for (int64_t j = 0; j < n; j++) yi[j] = (xi[j] - mu) * r;
        if (w) for (int64_t j = 0; j < n; j++) yi[j] *= w[j];
        if (b) for (int64_t j = 0; j < n; j++) yi[j] += b[j];
    }
    return FP_OK;
}

// g is (batch, n): dx = rstd (d − mean(d) − x̂ mean(d x̂)) with d = g w; dw (+)= Σ_rows g x̂,
// db (+)= Σ_rows g; dx, dw, db may be NULL (skipped); dx may alias g
FP_SIMD int F(layernorm_backward)(R *dx, R *dw, R *db, const R *g, const R *x, const R *mean,
                                  const R *rstd, const R *w, int64_t batch, int64_t n,
                                  int accumulate)
{
    if (!g || !x || !mean || !rstd || batch < 0 || n < 1) return FP_ERR_ARG;
    if (!accumulate) {
        if (dw) for (int64_t j = 0; j < n; j++) dw[j] = 0;
        if (db) for (int64_t j = 0; j < n; j++) db[j] = 0;
    }
    for (int64_t i = 0; i < batch; i++) {
        const R *gi = g + i * n, *xi = x + i * n;
        R mu = mean[i], r = rstd[i];
        double s1, s2;
        F(row_sums)(&s1, &s2, gi, w, xi, mu, n);
        R m1 = (R)(s1 / (double)n), m2 = (R)(s2 / (double)n) * r;
        R *dxi = dx ? dx + i * n : NULL;
        if (dxi && dw && db && w) {   /* the common case: two conditionless loops, which vectorize */
            for (int64_t j = 0; j < n; j++) {
                R gj = gi[j];
                dw[j] += gj * ((xi[j] - mu) * r);
                db[j] += gj;
            }
            for (int64_t j = 0; j < n; j++)   /* after the sums: dxi may be gi */
                dxi[j] = r * (gi[j] * w[j] - m1 - ((xi[j] - mu) * r) * m2);
            continue;
        }
        for (int64_t j = 0; j < n; j++) {
            R gj = gi[j], xh = (xi[j] - mu) * r;
            if (dw) dw[j] += gj * xh;
            if (db) db[j] += gj;
            if (dxi) dxi[j] = r * (gj * (w ? w[j] : 1) - m1 - xh * m2);
        }
    }
    return FP_OK;
}

// R{y} = R{x̂} w + x̂ v_w + v_b with R{x̂} = rstd (R{x} − mean(R{x}) − x̂ mean(x̂ R{x}));
// y and ry (batch, n); rx NULL: a fixed input; w, b, vw, vb NULL: absent
FP_SIMD int F(layernorm_rforward)(R *y, R *ry, const R *x, const R *rx, const R *w, const R *b,
                                  const R *vw, const R *vb, int64_t batch, int64_t n,
                                  double eps)
{
    if (!y || !ry || !x || batch < 0 || n < 1 || !(eps >= 0)) return FP_ERR_ARG;
    for (int64_t i = 0; i < batch; i++) {
        const R *xi = x + i * n, *rxi = rx ? rx + i * n : NULL;
        R *yi = y + i * n, *ryi = ry + i * n;
        R mu, r;
        F(row_stats)(&mu, &r, xi, n, eps);
        R mrx = 0, s = 0;
        if (rxi) {
            double s1, s2;
            F(row_sums)(&s1, &s2, rxi, NULL, xi, mu, n);
            mrx = (R)(s1 / (double)n);
            s = (R)(s2 / (double)n) * r;
        }
        for (int64_t j = 0; j < n; j++) {
            R xh = (xi[j] - mu) * r, wj = w ? w[j] : 1;
            R rxh = rxi ? r * (rxi[j] - mrx - xh * s) : 0;
            yi[j] = xh * wj + (b ? b[j] : 0);
            ryi[j] = rxh * wj + (vw ? xh * vw[j] : 0) + (vb ? vb[j] : 0);
        }
    }
    return FP_OK;
}

// The R-backward of LayerNorm, with d = g w, R{d} = R{g} w + g v_w, m1 = mean(d), m2 = mean(d x̂):
// dx = rstd (d − m1 − x̂ m2);  R{dx} = −rstd s dx + rstd (R{d} − mean(R{d}) − R{x̂} m2 − x̂ R{m2}),
// s = mean(x̂ R{x}), R{m2} = mean(R{d} x̂ + d R{x̂});  hvw (+)= Σ_rows (R{g} x̂ + g R{x̂}),
// hvb (+)= Σ_rows R{g}. g NULL: the Gauss–Newton pass (g's terms dropped, dx not written);
// rx NULL: a fixed input. dx may alias g, rdx rg; dx, rdx, hvw, hvb may be NULL (skipped)
FP_SIMD int F(layernorm_rbackward)(R *dx, R *rdx, R *hvw, R *hvb, const R *g, const R *rg,
                                   const R *x, const R *rx, const R *w, const R *vw,
                                   int64_t batch, int64_t n, double eps, int accumulate)
{
    if (!rg || !x || batch < 0 || n < 1 || !(eps >= 0)) return FP_ERR_ARG;
    if (!accumulate) {
        if (hvw) for (int64_t j = 0; j < n; j++) hvw[j] = 0;
        if (hvb) for (int64_t j = 0; j < n; j++) hvb[j] = 0;
    }
    for (int64_t i = 0; i < batch; i++) {
        const R *xi = x + i * n, *rgi = rg + i * n;
        const R *gi = g ? g + i * n : NULL, *rxi = rx ? rx + i * n : NULL;
        R mu, r;
        F(row_stats)(&mu, &r, xi, n, eps);
        double s1, s2;
        R mrx = 0, s = 0, m1 = 0, m2 = 0;
        if (rxi) {
            F(row_sums)(&s1, &s2, rxi, NULL, xi, mu, n);
            mrx = (R)(s1 / (double)n);
            s = (R)(s2 / (double)n) * r;
        }
        if (gi) {
            F(row_sums)(&s1, &s2, gi, w, xi, mu, n);
            m1 = (R)(s1 / (double)n);
            m2 = (R)(s2 / (double)n) * r;
        }
        // mean(R{d}) and R{m2}
        double t1 = 0, t2 = 0;
        for (int64_t j = 0; j < n; j++) {
            R wj = w ? w[j] : 1, xh = (xi[j] - mu) * r, gj = gi ? gi[j] : 0;
            R rd = rgi[j] * wj + (vw ? gj * vw[j] : 0);
            R rxh = rxi ? r * (rxi[j] - mrx - xh * s) : 0;
            t1 += rd;
            t2 += rd * xh + gj * wj * rxh;
        }
        R mrd = (R)(t1 / (double)n), rm2 = (R)(t2 / (double)n);
        R *dxi = dx ? dx + i * n : NULL, *rdxi = rdx ? rdx + i * n : NULL;
        for (int64_t j = 0; j < n; j++) {
            R wj = w ? w[j] : 1, xh = (xi[j] - mu) * r, gj = gi ? gi[j] : 0, rgj = rgi[j];
            R rd = rgj * wj + (vw ? gj * vw[j] : 0);
            R rxh = rxi ? r * (rxi[j] - mrx - xh * s) : 0;
            R gx = r * (gj * wj - m1 - xh * m2);
            if (hvw) hvw[j] += rgj * xh + gj * rxh;
            if (hvb) hvb[j] += rgj;
            if (rdxi) rdxi[j] = -r * s * gx + r * (rd - mrd - rxh * m2 - xh * rm2);
            if (dxi && gi) dxi[j] = gx;
        }
    }
    return FP_OK;
}

// ------------------------------------------------------------------------------ BatchNorm1d

// x, y are (batch, c); w, b are (c) or NULL; mean, rstd (c) are written and saved for the backward.
// batch_stats: μ and the biased σ² of x's columns (two-pass, batch ≥ 1); running_mean and
// running_var (NULL: not tracked) move by momentum towards μ and the unbiased σ²·B/(B − 1)
// (batch ≥ 2). Else the running statistics normalize. y = (x − μ)·(rstd w) + b
FP_SIMD int F(batchnorm_forward)(R *y, R *mean, R *rstd, R *running_mean, R *running_var,
                                 const R *x, const R *w, const R *b, int64_t batch,
                                 int64_t c, double eps, double momentum, int batch_stats)
{
    if (!y || !mean || !rstd || !x || batch < 0 || c < 0 || !(eps >= 0)) return FP_ERR_ARG;
    if (!batch_stats && (!running_mean || !running_var)) return FP_ERR_ARG;
    if (batch_stats && (batch < 1 || ((running_mean || running_var) &&
                                      (!running_mean || !running_var || batch < 2))))
        return FP_ERR_ARG;
    if (batch_stats) {
        for (int64_t k = 0; k < c; k++) mean[k] = 0, rstd[k] = 0;
        for (int64_t i = 0; i < batch; i++)
            for (int64_t k = 0; k < c; k++) mean[k] += x[i * c + k];
        for (int64_t k = 0; k < c; k++) mean[k] /= (R)batch;
        // the rounding of the float32 mean corrected by the mean of x − μ₀ (as row_stats does)
        for (int64_t i = 0; i < batch; i++)
            for (int64_t k = 0; k < c; k++) rstd[k] += x[i * c + k] - mean[k];
        for (int64_t k = 0; k < c; k++) mean[k] += rstd[k] / (R)batch, rstd[k] = 0;
        for (int64_t i = 0; i < batch; i++)
            for (int64_t k = 0; k < c; k++) {
                R d = x[i * c + k] - mean[k];
                rstd[k] += d * d;   /* Σ (x − μ)² for now */
            }
        for (int64_t k = 0; k < c; k++) {
            double var = (double)rstd[k] / (double)batch;
            if (running_mean) {
                running_mean[k] = (R)((1 - momentum) * running_mean[k] + momentum * mean[k]);
                running_var[k] = (R)((1 - momentum) * running_var[k] +
                                     momentum * var * (double)batch / (double)(batch - 1));
            }
            rstd[k] = (R)(1.0 / sqrt(var + eps));
        }
    } else {
        for (int64_t k = 0; k < c; k++) {
            mean[k] = running_mean[k];
            rstd[k] = (R)(1.0 / sqrt((double)running_var[k] + eps));
        }
    }
    for (int64_t i = 0; i < batch; i++)
        for (int64_t k = 0; k < c; k++)
            y[i * c + k] = (x[i * c + k] - mean[k]) * (rstd[k] * (w ? w[k] : 1)) + (b ? b[k] : 0);
    return FP_OK;
}

// g is (batch, c), ws (2c) scratch: the column sums Σ g and Σ g x̂. dw (+)= Σ g x̂, db (+)= Σ g;
// batch_stats: dx = rstd w (g − Σg/B − x̂ Σ(g x̂)/B), else (running statistics) dx = g rstd w.
// dx may alias g; dx, dw, db may be NULL (skipped)
FP_SIMD int F(batchnorm_backward)(R *dx, R *dw, R *db, R *ws, const R *g, const R *x,
                                  const R *mean, const R *rstd, const R *w, int64_t batch,
                                  int64_t c, int batch_stats, int accumulate)
{
    if (!ws || !g || !x || !mean || !rstd || batch < 0 || c < 0) return FP_ERR_ARG;
    R *sg = ws, *sgx = ws + c;
    for (int64_t k = 0; k < c; k++) sg[k] = 0, sgx[k] = 0;
    for (int64_t i = 0; i < batch; i++)
        for (int64_t k = 0; k < c; k++) {
            R gk = g[i * c + k];
            sg[k] += gk;
            sgx[k] += gk * ((x[i * c + k] - mean[k]) * rstd[k]);
        }
    if (dx) {
        R inv_b = batch_stats && batch > 0 ? (R)1 / (R)batch : 0;
        for (int64_t i = 0; i < batch; i++)
            for (int64_t k = 0; k < c; k++) {
                R xh = (x[i * c + k] - mean[k]) * rstd[k];
                dx[i * c + k] = rstd[k] * (w ? w[k] : 1) *
                                (g[i * c + k] - inv_b * sg[k] - xh * (inv_b * sgx[k]));
            }
    }
    for (int64_t k = 0; k < c; k++) {
        if (dw) dw[k] = (accumulate ? dw[k] : 0) + sgx[k];
        if (db) db[k] = (accumulate ? db[k] : 0) + sg[k];
    }
    return FP_OK;
}

// The R-operator of BatchNorm1d with running statistics (eval: a fixed affine map per column):
// y = x̂ w + b, R{y} = R{x} rstd w + x̂ v_w + v_b; rx NULL: a fixed input
FP_SIMD int F(batchnorm_rforward)(R *y, R *ry, const R *x, const R *rx, const R *mean,
                                  const R *rstd, const R *w, const R *b, const R *vw,
                                  const R *vb, int64_t batch, int64_t c)
{
    if (!y || !ry || !x || !mean || !rstd || batch < 0 || c < 0) return FP_ERR_ARG;
    for (int64_t i = 0; i < batch; i++)
        for (int64_t k = 0; k < c; k++) {
            R xh = (x[i * c + k] - mean[k]) * rstd[k], wk = w ? w[k] : 1;
            y[i * c + k] = xh * wk + (b ? b[k] : 0);
            ry[i * c + k] = (rx ? rx[i * c + k] * rstd[k] * wk : 0) + (vw ? xh * vw[k] : 0) +
                            (vb ? vb[k] : 0);
        }
    return FP_OK;
}

// dx = g rstd w, R{dx} = R{g} rstd w + g rstd v_w, hvw (+)= Σ (R{g} x̂ + g R{x} rstd),
// hvb (+)= Σ R{g}; g NULL: the Gauss–Newton pass. dx may alias g, rdx rg; NULL outputs skipped
FP_SIMD int F(batchnorm_rbackward)(R *dx, R *rdx, R *hvw, R *hvb, const R *g, const R *rg,
                                   const R *x, const R *rx, const R *mean, const R *rstd,
                                   const R *w, const R *vw, int64_t batch, int64_t c,
                                   int accumulate)
{
    if (!rg || !x || !mean || !rstd || batch < 0 || c < 0) return FP_ERR_ARG;
    if (!accumulate) {
        if (hvw) for (int64_t k = 0; k < c; k++) hvw[k] = 0;
        if (hvb) for (int64_t k = 0; k < c; k++) hvb[k] = 0;
    }
    for (int64_t i = 0; i < batch; i++)
        for (int64_t k = 0; k < c; k++) {
            int64_t e = i * c + k;
            R xh = (x[e] - mean[k]) * rstd[k], wk = w ? w[k] : 1;
            R gk = g ? g[e] : 0, rgk = rg[e];
            if (hvw) hvw[k] += rgk * xh + (rx ? gk * rx[e] * rstd[k] : 0);
            if (hvb) hvb[k] += rgk;
            if (rdx) rdx[e] = rgk * rstd[k] * wk + (vw ? gk * rstd[k] * vw[k] : 0);
            if (dx && g) dx[e] = gk * rstd[k] * wk;
        }
    return FP_OK;
}

#endif
