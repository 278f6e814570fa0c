/* Output units fused with their losses: value and gradient in one pass.
 * Losses are means (over the batch for cross-entropy, over elements otherwise),
 * accumulated in double. The gradient buffer may be NULL (value only) or alias
 * the input (in place). */
#ifndef R
#include "fastprop.h"

int64_t fp_first_bad_label(const int64_t *labels, int64_t n, int64_t classes)
{
    for (int64_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= classes) return i;
    return -1;
}

#define FP_TEMPLATE "loss.c"
#include "template.h"
#else

// first i with a_i outside [lo, hi] (NaN is outside any range), or -1; checked in blocks, as
// an AND over each block vectorizes where a loop that stops early would not
FP_SIMD int64_t F(first_outside)(const R *a, int64_t n, double lo, double hi)
{
    R l = (R)lo, h = (R)hi;
    for (int64_t b = 0; b < n; b += 512) {
        int64_t m = n - b < 512 ? n - b : 512;
        int ok = 1;  /* & of the comparisons, not &&: a branch-free loop gcc vectorizes */
        for (int64_t i = 0; i < m; i++) {
            R v = a[b + i];
            ok &= (v >= l) & (v <= h);  /* false for NaN */
        }
        if (!ok)
            for (int64_t i = 0; i < m; i++)
                if (!(a[b + i] >= l && a[b + i] <= h)) return b + i;
    }
    return -1;
}

/* Reductions run in FP_LANES partial sums (fastmath.h), so these loops vectorize too. */

// max_j a_j for n ≥ 1, in FP_LANES running maxima
FP_INLINE R F(max_of)(const R *a, int64_t n)
{
    R acc[FP_LANES], m = a[0];
    for (int l = 0; l < FP_LANES; l++) acc[l] = m;
    int64_t j = 0;
    for (; j + FP_LANES <= n; j += FP_LANES)
#pragma GCC unroll 1
        for (int l = 0; l < FP_LANES; l++) {
            R v = a[j + l];
            acc[l] = v > acc[l] ? v : acc[l];
        }
    for (; j < n; j++) m = a[j] > m ? a[j] : m;
    for (int l = 0; l < FP_LANES; l++) m = acc[l] > m ? acc[l] : m;
    return m;
}

// Σ_j a_j, in FP_LANES partial sums
FP_INLINE R F(sum_of)(const R *a, int64_t n)
{
    R acc[FP_LANES] = {0}, s = 0;
    int64_t j = 0;
    for (; j + FP_LANES <= n; j += FP_LANES)
        for (int l = 0; l < FP_LANES; l++) acc[l] += a[j + l];
    for (; j < n; j++) s += a[j];
    for (int l = 0; l < FP_LANES; l++) s += acc[l];
    return s;
}

// Σ_j exp(z_j − m), nothing stored; the same order of additions as F(sum_of), so the same sum
FP_INLINE R F(sum_exp)(const R *z, R m, int64_t n)
{
    R acc[FP_LANES] = {0}, s = 0;
    int64_t j = 0;
    for (; j + FP_LANES <= n; j += FP_LANES)
        for (int l = 0; l < FP_LANES; l++) acc[l] += EXPN(z[j + l] - m);
    for (; j < n; j++) s += EXPN(z[j] - m);
    for (int l = 0; l < FP_LANES; l++) s += acc[l];
    return s;
}

// e_j = exp(z_j − m) (e may alias z) and Σ_j e_j
FP_INLINE R F(exp_into)(R *e, const R *z, R m, int64_t n)
{
    for (int64_t j = 0; j < n; j++) e[j] = EXPN(z[j] - m);
    return F(sum_of)(e, n);
}

// z and p are (batch, classes): p = softmax(z) row-wise (or log-softmax), shifted by the row max
FP_SIMD int F(softmax_forward)(R *p, const R *z, int64_t batch, int64_t classes, int log_space)
{
    if (!p || !z || batch < 0 || classes < 1) return FP_ERR_ARG;
    for (int64_t i = 0; i < batch; i++) {
        const R *zi = z + i * classes;
        R *pi = p + i * classes;
        R m = F(max_of)(zi, classes);
        if (log_space) {
            /* (z − m) − log Σ, not z − (m + log Σ): at large |m| the log would round away */
            R log_s = LOG(F(sum_exp)(zi, m, classes));
            for (int64_t j = 0; j < classes; j++) pi[j] = (zi[j] - m) - log_s;
        } else {
            R inv = 1 / F(exp_into)(pi, zi, m, classes);
            for (int64_t j = 0; j < classes; j++) pi[j] *= inv;
        }
    }
    return FP_OK;
}

// J = mean_i [logsumexp(z_i) − Σ_j t_ij z_ij],  dz = (softmax(z) Σ_j t_ij − t) / batch
// Targets are integer labels (labels, t = one-hot) or soft targets (target, (batch, classes)).
FP_SIMD int F(softmax_xent_forward_backward)(double *loss, R *dz, const R *z,
                                             const int64_t *labels, const R *target,
                                             int64_t batch, int64_t classes)
{
    if (!loss || !z || batch < 1 || classes < 1 || !labels == !target) return FP_ERR_ARG;
    if (labels && fp_first_bad_label(labels, batch, classes) >= 0) return FP_ERR_LABEL;
    R inv_batch = (R)(1.0 / (double)batch);
    double total = 0;
    for (int64_t i = 0; i < batch; i++) {
        const R *zi = z + i * classes;
        const R *ti = target ? target + i * classes : NULL;
        R *di = dz ? dz + i * classes : NULL;
        R m = F(max_of)(zi, classes);
        /* Σ t_j (z_j − m) and the target mass, read before dz (which may alias z) is written.
         * z − m in double: a logit 2·FLT_MAX below the maximum overflows float, not double;
         * and a zero target takes no part (0·(−inf) would be NaN). */
        double tz;
        R tsum;
        if (ti) {
            double acc_tz[FP_LANES] = {0};
            R acc_t[FP_LANES] = {0};
            int64_t j = 0;
            tz = 0, tsum = 0;
            for (; j + FP_LANES <= classes; j += FP_LANES)
                for (int l = 0; l < FP_LANES; l++) {
                    R t = ti[j + l];
                    double d = (double)zi[j + l] - (double)m;
                    acc_tz[l] += t != 0 ? (double)t * d : 0, acc_t[l] += t;
                }
            for (; j < classes; j++) {
                double d = (double)zi[j] - (double)m;
                tz += ti[j] != 0 ? (double)ti[j] * d : 0, tsum += ti[j];
            }
            for (int l = 0; l < FP_LANES; l++) tz += acc_tz[l], tsum += acc_t[l];
        } else {
            tz = (double)zi[labels[i]] - (double)m, tsum = 1;
        }
        R s = di ? F(exp_into)(di, zi, m, classes) : F(sum_exp)(zi, m, classes);
        total += (double)LOG(s) * (double)tsum - tz;
        if (di) {
            R scale = tsum / s * inv_batch;
            if (ti) {
                for (int64_t j = 0; j < classes; j++) di[j] *= scale;
                for (int64_t j = 0; j < classes; j++) di[j] -= ti[j] * inv_batch;
            } else {
                /* p_y − 1 as −Σ_{j≠y} p_j: no cancellation when p_y is close to 1 */
                int64_t y = labels[i];
                di[y] = 0;
                R others = F(sum_of)(di, classes);
                for (int64_t j = 0; j < classes; j++) di[j] *= scale;
                di[y] = -others * scale;
            }
        }
    }
    *loss = total / (double)batch;
    return FP_OK;
}

// J = mean(max(z, 0) − z y + log1p(exp(−|z|))),  dz = (σ(z) − y) / n
FP_SIMD int F(sigmoid_bce_forward_backward)(double *loss, R *dz, const R *z, const R *target,
                                            int64_t n)
{
    if (!loss || !z || !target || n < 1) return FP_ERR_ARG;
    R inv_n = (R)(1.0 / (double)n);
    double inv_nd = 1.0 / (double)n;  /* each term is scaled before the sum: a sum of terms
                                        near DBL_MAX would overflow where their mean does not */
    double acc[FP_LANES] = {0}, total = 0;
    R scratch[FP_LANES];  /* where the gradient goes when dz is NULL */
    /* in blocks of FP_LANES elements, element l of each block summed into acc[l] */
    for (int64_t i = 0; i < n; i += FP_LANES) {
        int len = n - i < FP_LANES ? (int)(n - i) : FP_LANES;
        R *d = dz ? dz + i : scratch;
        for (int l = 0; l < len; l++) {
            R zl = z[i + l], yl = target[i + l];
            acc[l] += (double)((zl > 0 ? zl : 0) - zl * yl + LOG1P01(EXPN(-FABS(zl)))) * inv_nd;
            d[l] = (SIGMOID(zl) - yl) * inv_n;  /* SIGMOID's exp(−|z|) is the one above: computed once */
        }
    }
    for (int l = 0; l < FP_LANES; l++) total += acc[l];
    *loss = total;
    return FP_OK;
}

// J = mean((p − t)²),  dp = 2 (p − t) / n
FP_SIMD int F(mse_forward_backward)(double *loss, R *dp, const R *pred, const R *target,
                                    int64_t n)
{
    if (!loss || !pred || !target || n < 1) return FP_ERR_ARG;
    R two_over_n = (R)(2.0 / (double)n);
    double acc[FP_LANES] = {0}, total = 0;
    R scratch[FP_LANES];
    for (int64_t i = 0; i < n; i += FP_LANES) {  /* in blocks, as the BCE above */
        int len = n - i < FP_LANES ? (int)(n - i) : FP_LANES;
        R *d = dp ? dp + i : scratch;
        for (int l = 0; l < len; l++) {
            R dl = pred[i + l] - target[i + l];
            acc[l] += (double)dl * (double)dl;
            d[l] = two_over_n * dl;
        }
    }
    for (int l = 0; l < FP_LANES; l++) total += acc[l];
    *loss = total / (double)n;
    return FP_OK;
}

// z is (batch, 2k) = [μ, s = log σ²], t is (batch, k), n = batch·k:
// J = mean(½ s + ½ (t − μ)² e^{−s}),  dμ = −(t − μ) e^{−s} / n,  ds = ½ (1 − (t − μ)² e^{−s}) / n
// σ² itself is never formed: r = (t − μ) e^{−s/2} is finite for every s where the loss is (e^{−s/2}
// = 0 for s ≫ 0; r = 0 where t = μ even when e^{−s/2} overflows), and r² is squared in double.
FP_SIMD int F(gaussian_nll_forward_backward)(double *loss, R *dz, const R *z, const R *target,
                                             int64_t batch, int64_t k)
{
    if (!loss || !z || !target || batch < 1 || k < 1) return FP_ERR_ARG;
    double n = (double)batch * (double)k;
    R inv_n = (R)(1.0 / n), half_inv_n = (R)(0.5 / n);
    double total = 0;
    for (int64_t i = 0; i < batch; i++) {
        const R *mu = z + i * 2 * k, *s = mu + k, *ti = target + i * k;
        R *dmu = dz ? dz + i * 2 * k : NULL, *ds = dmu ? dmu + k : NULL;
        double acc[FP_LANES] = {0};
        for (int64_t j = 0; j < k; j += FP_LANES) {  /* in blocks, as the BCE above */
            int len = k - j < FP_LANES ? (int)(k - j) : FP_LANES;
            for (int l = 0; l < len; l++) {
                R d = ti[j + l] - mu[j + l], sl = s[j + l];
                R e = EXP((R)-0.5 * sl);
                R r = SELECT(d == 0, (R)0, d * e);
                double r2 = (double)r * (double)r;
                acc[l] += 0.5 * (double)sl + 0.5 * r2;
                if (dmu) {  /* μ and s were read above: dz may alias z */
                    dmu[j + l] = SELECT(r == 0, (R)0, -(r * e) * inv_n);
                    ds[j + l] = (R)((1.0 - r2) * (double)half_inv_n);
                }
            }
        }
        for (int l = 0; l < FP_LANES; l++) total += acc[l];
    }
    *loss = total / n;
    return FP_OK;
}

/* Loss Hessian–vector products: hv = (∂²J/∂z²) v, the R-operator of the gradient above. */

// z, v, hv are (batch, classes); hv = Σ_j t_ij (p ⊙ v − p (pᵀv)) / batch row-wise, p = softmax(z);
// target NULL: labels (Σ_j t_ij = 1). hv must not alias z or v.
FP_SIMD int F(softmax_xent_hvp)(R *hv, const R *z, const R *v, const R *target, int64_t batch,
                                int64_t classes)
{
    if (!hv || !z || !v || batch < 1 || classes < 1) return FP_ERR_ARG;
    R inv_batch = (R)(1.0 / (double)batch);
    for (int64_t i = 0; i < batch; i++) {
        const R *zi = z + i * classes, *vi = v + i * classes;
        R *hi = hv + i * classes;
        R m = F(max_of)(zi, classes);
        R s = F(exp_into)(hi, zi, m, classes);  /* hi = exp(z − m), s its sum */
        R acc[FP_LANES] = {0}, ev = 0;          /* Σ_j e_j v_j */
        int64_t j = 0;
        for (; j + FP_LANES <= classes; j += FP_LANES)
            for (int l = 0; l < FP_LANES; l++) acc[l] += hi[j + l] * vi[j + l];
        for (; j < classes; j++) ev += hi[j] * vi[j];
        for (int l = 0; l < FP_LANES; l++) ev += acc[l];
        R tsum = target ? F(sum_of)(target + i * classes, classes) : 1;
        R pv = ev / s, scale = tsum / s * inv_batch;
        for (int64_t j2 = 0; j2 < classes; j2++) hi[j2] = scale * hi[j2] * (vi[j2] - pv);
    }
    return FP_OK;
}

// hv = σ(z)(1 − σ(z)) v / n = q(1 − q) v / n, q = σ(−|z|) (hv may alias v)
FP_SIMD int F(sigmoid_bce_hvp)(R *hv, const R *z, const R *v, int64_t n)
{
    if (!hv || !z || !v || n < 1) return FP_ERR_ARG;
    R inv_n = (R)(1.0 / (double)n);
    for (int64_t i = 0; i < n; i++) {
        R q = SIGMOID(-FABS(z[i]));
        hv[i] = q * (1 - q) * inv_n * v[i];
    }
    return FP_OK;
}

// hv = 2 v / n (hv may alias v)
FP_SIMD int F(mse_hvp)(R *hv, const R *v, int64_t n)
{
    if (!hv || !v || n < 1) return FP_ERR_ARG;
    R two_over_n = (R)(2.0 / (double)n);
    for (int64_t i = 0; i < n; i++) hv[i] = two_over_n * v[i];
    return FP_OK;
}

#endif
