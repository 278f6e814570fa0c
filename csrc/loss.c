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

// hi = scale (p ⊙ v − p (pᵀv)) for one row, p = softmax(z)
FP_INLINE void F(softmax_hvp_row)(R *hi, const R *zi, const R *vi, R scale, int64_t classes)
{
    R m = F(max_of)(zi, classes);
    R s = F(exp_into)(hi, zi, m, classes);  /* hi = exp(z − m), s its sum */
    R acc[FP_LANES] = {0}, ev = 0;          /* Σ_j e_j v_j */
    int64_t j = 0;
    for (; j + FP_LANES <= classes; j += FP_LANES)
        for (int l = 0; l < FP_LANES; l++) acc[l] += hi[j + l] * vi[j + l];
    for (; j < classes; j++) ev += hi[j] * vi[j];
    for (int l = 0; l < FP_LANES; l++) ev += acc[l];
    R pv = ev / s, scale_s = scale / s;
    for (int64_t j2 = 0; j2 < classes; j2++) hi[j2] = scale_s * hi[j2] * (vi[j2] - pv);
}

/* ---------------------------------------------------------------- weighted and robust losses
 * The losses below take an optional sample_weight s (batch,): J = Σ_i s_i l_i / Σ_i s_i, where
 * a row's l_i is the mean over its k elements (so s = 1 gives the plain mean over elements).
 * NULL s is the plain mean. A weight sum that is not > 0 is FP_ERR_ARG, before anything is
 * written; the caller checks that each weight is finite and ≥ 0. */

// Σ_i s_i, or batch when s is NULL
FP_INLINE double F(weight_sum)(const R *s, int64_t batch)
{
    if (!s) return (double)batch;
    double acc = 0;
    for (int64_t i = 0; i < batch; i++) acc += s[i];
    return acc;
}

// one element of a pointwise loss at d = p − t (BCE: at z = p, y = t): its value, gradient and
// second derivative; kind is a constant where this is inlined, so the switch folds away
FP_INLINE void F(pointwise_term)(double *value, R *grad, R *second, R p, R t, int kind, R param)
{
    R d = p - t, a = FABS(d), sign = SELECT(d > 0, (R)1, SELECT(d < 0, (R)-1, (R)0));
    switch (kind) {
    case FP_LOSS_SIGMOID_BCE: {
        R e = EXPN(-FABS(p));  /* SIGMOID's exp(−|z|) is this one: computed once */
        *value = (double)((p > 0 ? p : 0) - p * t + LOG1P01(e));
        R q = SIGMOID(-FABS(p));
        *grad = SIGMOID(p) - t, *second = q * (1 - q);
        break;
    }
    case FP_LOSS_MSE:
        *value = (double)d * (double)d, *grad = 2 * d, *second = 2;
        break;
    case FP_LOSS_L1:
        *value = (double)a, *grad = sign, *second = 0;
        break;
    case FP_LOSS_HUBER: {  /* param = δ > 0: ½ d² inside |d| < δ, δ (|d| − ½ δ) outside */
        int in = a < param;  /* both sides computed and blended: a ?: on floats stays scalar */
        *value = (double)SELECT(in, (R)0.5 * d * d, param * (a - (R)0.5 * param));
        *grad = SELECT(in, d, param * sign), *second = SELECT(in, (R)1, (R)0);
        break;
    }
    default: {  /* FP_LOSS_SMOOTH_L1, param = β > 0: ½ d²/β inside |d| < β, |d| − ½ β outside */
        int in = a < param;
        R inv = 1 / param;
        *value = (double)SELECT(in, (R)0.5 * d * d * inv, a - (R)0.5 * param);
        *grad = SELECT(in, d * inv, sign), *second = SELECT(in, inv, (R)0);
        break;
    }
    }
}

// acc[l] += scale · l(p_j, t_j) for the j ≡ l of n elements; d = grad_scale · ∂l (d may be
// NULL: value only; d may alias p)
FP_INLINE void F(pointwise_block)(double acc[FP_LANES], R *d, const R *p, const R *t, int64_t n,
                                  double scale, R grad_scale, int kind, R param)
{
    R scratch[FP_LANES], h;
    for (int64_t i = 0; i < n; i += FP_LANES) {  /* in blocks of FP_LANES: vectorizes */
        int len = n - i < FP_LANES ? (int)(n - i) : FP_LANES;
        R *dl = d ? d + i : scratch;
        for (int l = 0; l < len; l++) {
            double v;
            R g;
            F(pointwise_term)(&v, &g, &h, p[i + l], t[i + l], kind, param);
            acc[l] += v * scale;  /* scaled before the sum: near DBL_MAX the sum would overflow */
            dl[l] = g * grad_scale;
        }
    }
}

// the rows of a pointwise loss, each scaled by s_i / (k Σ s), or all as one block of n = batch·k
FP_INLINE double F(pointwise_rows)(R *dp, const R *pred, const R *target, const R *s,
                                   double s_sum, int64_t batch, int64_t k, int kind, R param)
{
    double acc[FP_LANES] = {0}, total = 0;
    if (!s) {
        double n = (double)batch * (double)k;
        F(pointwise_block)(acc, dp, pred, target, batch * k, 1.0 / n, (R)(1.0 / n), kind, param);
    } else {
        for (int64_t i = 0; i < batch; i++) {
            double c = (double)s[i] / ((double)k * s_sum);
            F(pointwise_block)(acc, dp ? dp + i * k : NULL, pred + i * k, target + i * k, k, c,
                               (R)c, kind, param);
        }
    }
    for (int l = 0; l < FP_LANES; l++) total += acc[l];
    return total;
}

// pred, target, dp are (batch, k), s is (batch,) or NULL; kind: FP_LOSS_SIGMOID_BCE (pred are
// logits), _MSE, _L1, _HUBER (param δ > 0), _SMOOTH_L1 (param β ≥ 0; β = 0 is L1, as torch's)
// J = Σ_i s_i mean_j l(p_ij, t_ij) / Σ_i s_i,  dp_ij = s_i l′(p_ij, t_ij) / (k Σ s)
FP_SIMD int F(pointwise_loss_forward_backward)(double *loss, R *dp, const R *pred, const R *target,
                                               const R *sample_weight, int64_t batch, int64_t k,
                                               int kind, double param)
{
    if (!loss || !pred || !target || batch < 1 || k < 1) return FP_ERR_ARG;
    if (kind == FP_LOSS_SMOOTH_L1 && param == 0) kind = FP_LOSS_L1;
    if ((kind == FP_LOSS_HUBER && !(param > 0)) || (kind == FP_LOSS_SMOOTH_L1 && !(param > 0)))
        return FP_ERR_ARG;
    double s_sum = F(weight_sum)(sample_weight, batch);
    if (!(s_sum > 0)) return FP_ERR_ARG;
    /* each case passes its kind as a constant: pointwise_term folds to that loss's own loop */
#define FP_POINTWISE_CASE(KIND)                                                                  \
    case KIND:                                                                                 \
        *loss = F(pointwise_rows)(dp, pred, target, sample_weight, s_sum, batch, k, KIND, (R)param); \
        break;
    switch (kind) {
    FP_POINTWISE_CASE(FP_LOSS_SIGMOID_BCE)
    FP_POINTWISE_CASE(FP_LOSS_MSE)
    FP_POINTWISE_CASE(FP_LOSS_L1)
    FP_POINTWISE_CASE(FP_LOSS_HUBER)
    FP_POINTWISE_CASE(FP_LOSS_SMOOTH_L1)
#undef FP_POINTWISE_CASE
    default: return FP_ERR_ARG;
    }
    return FP_OK;
}

// hv_ij = s_i l″(p_ij, t_ij) v_ij / (k Σ s): Huber 1 inside |d| < δ, SmoothL1 1/β inside |d| < β,
// both 0 outside, L1 0, MSE 2, BCE σ(z)(1 − σ(z)); target may be NULL for MSE and BCE (hv may alias v)
FP_SIMD int F(pointwise_loss_hvp)(R *hv, const R *pred, const R *target, const R *v,
                                  const R *sample_weight, int64_t batch, int64_t k, int kind,
                                  double param)
{
    if (!hv || !pred || !v || batch < 1 || k < 1) return FP_ERR_ARG;
    if (!target && kind != FP_LOSS_MSE && kind != FP_LOSS_SIGMOID_BCE) return FP_ERR_ARG;
    if (kind == FP_LOSS_SMOOTH_L1 && param == 0) kind = FP_LOSS_L1;
    if (kind < FP_LOSS_SIGMOID_BCE || kind > FP_LOSS_SMOOTH_L1 ||
        ((kind == FP_LOSS_HUBER || kind == FP_LOSS_SMOOTH_L1) && !(param > 0)))
        return FP_ERR_ARG;
    double s_sum = F(weight_sum)(sample_weight, batch);
    if (!(s_sum > 0)) return FP_ERR_ARG;
    double n = (double)batch * (double)k;
    for (int64_t i = 0; i < batch; i++) {
        R c = (R)(sample_weight ? (double)sample_weight[i] / ((double)k * s_sum) : 1.0 / n);
        for (int64_t j = i * k; j < (i + 1) * k; j++) {
            double value;
            R g, h;
            F(pointwise_term)(&value, &g, &h, pred[j], target ? target[j] : 0, kind, (R)param);
            hv[j] = c * h * v[j];
        }
    }
    return FP_OK;
}

// z is (batch, 2k) = [μ, s = log σ²], t is (batch, k), w (batch,) or NULL:
// J = Σ_i w_i mean_j(½ s_ij + ½ (t_ij − μ_ij)² e^{−s_ij}) / Σ w,  with c_i = w_i / (k Σ w):
// dμ = −c_i (t − μ) e^{−s},  ds = ½ c_i (1 − (t − μ)² e^{−s})
// σ² itself is never formed: r = (t − μ) e^{−s/2} is finite for every s where the loss is (e^{−s/2}
// = 0 for s ≫ 0; r = 0 where t = μ even when e^{−s/2} overflows), and r² is squared in double.
FP_SIMD int F(gaussian_nll_weighted_forward_backward)(double *loss, R *dz, const R *z,
                                                      const R *target, const R *sample_weight,
                                                      int64_t batch, int64_t k)
{
    if (!loss || !z || !target || batch < 1 || k < 1) return FP_ERR_ARG;
    double w_sum = F(weight_sum)(sample_weight, batch);
    if (!(w_sum > 0)) return FP_ERR_ARG;
    double n = (double)k * w_sum, total = 0;
    for (int64_t i = 0; i < batch; i++) {
        double w = sample_weight ? (double)sample_weight[i] : 1.0;
        R c = (R)(w / n), half_c = (R)(0.5 * w / n);
        const R *mu = z + i * 2 * k, *s = mu + k, *ti = target + i * k;
        R *dmu = dz ? dz + i * 2 * k : NULL, *ds = dmu ? dmu + k : NULL;
        double acc[FP_LANES] = {0}, row = 0;
        for (int64_t j = 0; j < k; j += FP_LANES) {  /* in blocks, as pointwise_block */
            int len = k - j < FP_LANES ? (int)(k - j) : FP_LANES;
            for (int l = 0; l < len; l++) {
                R d = ti[j + l] - mu[j + l], sl = s[j + l];
                R e = EXP((R)-0.5 * sl);
                R r = SELECT(d == 0, (R)0, d * e);
                double r2 = (double)r * (double)r;
                acc[l] += 0.5 * (double)sl + 0.5 * r2;
                if (dmu) {  /* μ and s were read above: dz may alias z */
                    dmu[j + l] = SELECT(r == 0, (R)0, -(r * e) * c);
                    ds[j + l] = (R)((1.0 - r2) * (double)half_c);
                }
            }
        }
        for (int l = 0; l < FP_LANES; l++) row += acc[l];
        total += w * row;
    }
    *loss = total / n;
    return FP_OK;
}

/* Cross-entropy with class weights c (classes,), label smoothing ε and sample weights s, as
 * torch.nn.CrossEntropyLoss (s is ours). Each row's loss is Σ_j q_ij (−log p_ij), p = softmax(z),
 * with the effective target q:
 *   labels y: q_ij = (1 − ε) c_y [j = y] + (ε/C) c_j,   and the row counts d_i = c_{y_i};
 *   soft t:   q_ij = c_j ((1 − ε) t_ij + ε/C),           and d_i = 1 (torch divides by B).
 * J = Σ_i s_i Σ_j q_ij (−log p_ij) / D, D = Σ_i s_i d_i;  dz_ij = s_i (Q_i p_ij − q_ij) / D,
 * Q_i = Σ_j q_ij. c, s NULL: all ones. */

// D = Σ_i s_i d_i (d_i = c_{y_i} for labels, 1 for soft targets)
FP_INLINE double F(xent_denominator)(const int64_t *labels, const R *class_weight,
                                     const R *sample_weight, int64_t batch)
{
    if (!labels || !class_weight) return F(weight_sum)(sample_weight, batch);
    double acc = 0;
    for (int64_t i = 0; i < batch; i++)
        acc += (sample_weight ? (double)sample_weight[i] : 1.0) * (double)class_weight[labels[i]];
    return acc;
}

// Q_i = Σ_j q_ij of row i (labels: y ≥ 0, ti NULL; soft: ti), c_sum = Σ_j c_j
FP_INLINE double F(xent_target_mass)(int64_t y, const R *ti, const R *cw, double c_sum,
                                     double eps, int64_t classes)
{
    if (!ti) return (1 - eps) * (cw ? (double)cw[y] : 1.0) + eps / (double)classes * c_sum;
    double q = 0;
    for (int64_t j = 0; j < classes; j++)
        q += (cw ? (double)cw[j] : 1.0) * ((1 - eps) * (double)ti[j] + eps / (double)classes);
    return q;
}

// z, dz, target are (batch, classes); labels, sample_weight (batch,); class_weight (classes,);
// exactly one of labels and target; dz may be NULL (value only) or alias z
FP_SIMD int F(softmax_xent_weighted_forward_backward)(double *loss, R *dz, const R *z,
                                                      const int64_t *labels, const R *target,
                                                      const R *class_weight, const R *sample_weight,
                                                      double label_smoothing, int64_t batch,
                                                      int64_t classes)
{
    if (!loss || !z || batch < 1 || classes < 1 || !labels == !target ||
        !(label_smoothing >= 0 && label_smoothing <= 1))
        return FP_ERR_ARG;
    if (labels && fp_first_bad_label(labels, batch, classes) >= 0) return FP_ERR_LABEL;
    double D = F(xent_denominator)(labels, class_weight, sample_weight, batch);
    if (!(D > 0)) return FP_ERR_ARG;
    const R *cw = class_weight;
    double eps = label_smoothing, eps_c = eps / (double)classes, c_sum = 0;
    for (int64_t j = 0; j < classes; j++) c_sum += cw ? (double)cw[j] : 1.0;
    double total = 0;
    for (int64_t i = 0; i < batch; i++) {
        const R *zi = z + i * classes;
        const R *ti = target ? target + i * classes : NULL;
        R *di = dz ? dz + i * classes : NULL;
        int64_t y = labels ? labels[i] : -1;
        R m = F(max_of)(zi, classes);
        /* Σ_j q_j (z_j − m) in double (z − m overflows float for logits far apart), read before
         * dz (which may alias z) is written; a zero q takes no part (0·(−inf) would be NaN) */
        double qz = 0, Q = F(xent_target_mass)(y, ti, cw, c_sum, eps, classes);
        for (int64_t j = 0; j < classes; j++) {
            double cj = cw ? (double)cw[j] : 1.0;
            double q = ti ? cj * ((1 - eps) * (double)ti[j] + eps_c) : eps_c * cj;
            if (q != 0) qz += q * ((double)zi[j] - (double)m);
        }
        if (!ti) qz += (1 - eps) * (cw ? (double)cw[y] : 1.0) * ((double)zi[y] - (double)m);
        R S = di ? F(exp_into)(di, zi, m, classes) : F(sum_exp)(zi, m, classes);
        double s = sample_weight ? (double)sample_weight[i] : 1.0;
        total += s * (Q * (double)LOG(S) - qz);
        if (!di) continue;
        R c = (R)(s / D), cQ_S = (R)(s * Q / D) / S;
        if (ti) {
            for (int64_t j = 0; j < classes; j++) {
                R q = (R)((cw ? (double)cw[j] : 1.0) * ((1 - eps) * (double)ti[j] + eps_c));
                di[j] = cQ_S * di[j] - c * q;
            }
        } else {
            /* Q p_y − q_y = (1 − ε) c_y (p_y − 1) + (ε/C)(Σc p_y − c_y), with p_y − 1 as
             * −Σ_{j≠y} p_j: no cancellation when p_y is close to 1 */
            R e_y = di[y], cy = cw ? cw[y] : (R)1;
            di[y] = 0;
            R others = F(sum_of)(di, classes);
            for (int64_t j = 0; j < classes; j++)
                di[j] = cQ_S * di[j] - c * (R)(eps_c * (cw ? (double)cw[j] : 1.0));
            di[y] = c * ((R)(1 - eps) * cy * (-others / S) +
                         (R)eps_c * ((R)c_sum * (e_y / S) - cy));
        }
    }
    *loss = total / D;
    return FP_OK;
}

// hv_i = (s_i Q_i / D) (p ⊙ v − p (pᵀv)) row-wise, p = softmax(z): the R-operator of the gradient
// above (the same arguments; hv must not alias z or v)
FP_SIMD int F(softmax_xent_weighted_hvp)(R *hv, const R *z, const R *v, const int64_t *labels,
                                         const R *target, const R *class_weight,
                                         const R *sample_weight, double label_smoothing,
                                         int64_t batch, int64_t classes)
{
    if (!hv || !z || !v || batch < 1 || classes < 1 || !labels == !target ||
        !(label_smoothing >= 0 && label_smoothing <= 1))
        return FP_ERR_ARG;
    if (labels && fp_first_bad_label(labels, batch, classes) >= 0) return FP_ERR_LABEL;
    double D = F(xent_denominator)(labels, class_weight, sample_weight, batch);
    if (!(D > 0)) return FP_ERR_ARG;
    double c_sum = 0;
    for (int64_t j = 0; j < classes; j++) c_sum += class_weight ? (double)class_weight[j] : 1.0;
    for (int64_t i = 0; i < batch; i++) {
        const R *ti = target ? target + i * classes : NULL;
        double Q = F(xent_target_mass)(labels ? labels[i] : -1, ti, class_weight, c_sum,
                                       label_smoothing, classes);
        double s = sample_weight ? (double)sample_weight[i] : 1.0;
        F(softmax_hvp_row)(hv + i * classes, z + i * classes, v + i * classes, (R)(s * Q / D),
                           classes);
    }
    return FP_OK;
}

// J = mean(max(z, 0) − z y + log1p(exp(−|z|))),  dz = (σ(z) − y) / n; its own loop, not
// pointwise_loss_forward_backward's: that one measured 15 % slower here (gcc 12, AVX2)
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

// J = mean((p − t)²),  dp = 2 (p − t) / n  (pred, target: n elements)
FP_SIMD int F(mse_forward_backward)(double *loss, R *dp, const R *pred, const R *target,
                                    int64_t n)
{
    return F(pointwise_loss_forward_backward)(loss, dp, pred, target, NULL, n, 1, FP_LOSS_MSE, 0);
}

// z is (batch, 2k) = [μ, log σ²], t is (batch, k): the unweighted gaussian_nll_weighted below
FP_SIMD int F(gaussian_nll_forward_backward)(double *loss, R *dz, const R *z, const R *target,
                                             int64_t batch, int64_t k)
{
    return F(gaussian_nll_weighted_forward_backward)(loss, dz, z, target, NULL, batch, k);
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
        R tsum = target ? F(sum_of)(target + i * classes, classes) : 1;
        F(softmax_hvp_row)(hv + i * classes, z + i * classes, v + i * classes, tsum * inv_batch,
                           classes);
    }
    return FP_OK;
}

// hv = σ(z)(1 − σ(z)) v / n (hv may alias v)
FP_SIMD int F(sigmoid_bce_hvp)(R *hv, const R *z, const R *v, int64_t n)
{
    return F(pointwise_loss_hvp)(hv, z, NULL, v, NULL, n, 1, FP_LOSS_SIGMOID_BCE, 0);
}

// hv = 2 v / n (hv may alias v)
FP_SIMD int F(mse_hvp)(R *hv, const R *v, int64_t n)
{
    return F(pointwise_loss_hvp)(hv, v, NULL, v, NULL, n, 1, FP_LOSS_MSE, 0);
}

#endif
