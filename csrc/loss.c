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

// z and p are (batch, classes): p = softmax(z) row-wise (or log-softmax), shifted by the row max
int F(softmax_forward)(R *p, const R *z, int64_t batch, int64_t classes, int log_space)
{
    if (!p || !z || batch < 0 || classes < 1) return FP_ERR_ARG;
    for (int64_t i = 0; i < batch; i++) {
        const R *zi = z + i * classes;
        R *pi = p + i * classes;
        R m = zi[0];
        for (int64_t j = 1; j < classes; j++) m = zi[j] > m ? zi[j] : m;
        R s = 0;
        for (int64_t j = 0; j < classes; j++) s += EXP(zi[j] - m);
        if (log_space) {
            R lse = m + LOG(s);
            for (int64_t j = 0; j < classes; j++) pi[j] = zi[j] - lse;
        } else {
            R inv = 1 / s;
            for (int64_t j = 0; j < classes; j++) pi[j] = EXP(zi[j] - m) * inv;
        }
    }
    return FP_OK;
}

// J = mean_i [logsumexp(z_i) − Σ_j t_ij z_ij],  dz = (softmax(z) Σ_j t_ij − t) / batch
// Targets are integer labels (labels, t = one-hot) or soft targets (target, (batch, classes)).
int F(softmax_xent_forward_backward)(double *loss, R *dz, const R *z, const int64_t *labels,
                                     const R *target, int64_t batch, int64_t classes)
{
    if (!loss || !z || batch < 1 || classes < 1 || !labels == !target) return FP_ERR_ARG;
    if (labels && fp_first_bad_label(labels, batch, classes) >= 0) return FP_ERR_LABEL;
    R inv_batch = (R)(1.0 / (double)batch);
    double total = 0;
    for (int64_t i = 0; i < batch; i++) {
        const R *zi = z + i * classes;
        const R *ti = target ? target + i * classes : NULL;
        R *di = dz ? dz + i * classes : NULL;
        R m = zi[0];
        for (int64_t j = 1; j < classes; j++) m = zi[j] > m ? zi[j] : m;
        /* Σ t_j (z_j − m) and the target mass, read before dz (which may alias z) is written */
        R tz, tsum;
        if (ti) {
            tz = 0, tsum = 0;
            for (int64_t j = 0; j < classes; j++) tz += ti[j] * (zi[j] - m), tsum += ti[j];
        } else {
            tz = zi[labels[i]] - m, tsum = 1;
        }
        R s = 0;
        if (di)
            for (int64_t j = 0; j < classes; j++) di[j] = EXP(zi[j] - m), s += di[j];
        else
            for (int64_t j = 0; j < classes; j++) s += EXP(zi[j] - m);
        total += (double)LOG(s) * (double)tsum - (double)tz;
        if (di) {
            R scale = tsum / s * inv_batch;
            for (int64_t j = 0; j < classes; j++) di[j] *= scale;
            if (ti)
                for (int64_t j = 0; j < classes; j++) di[j] -= ti[j] * inv_batch;
            else
                di[labels[i]] -= inv_batch;
        }
    }
    *loss = total / (double)batch;
    return FP_OK;
}

// J = mean(max(z, 0) − z y + log1p(exp(−|z|))),  dz = (σ(z) − y) / n
int F(sigmoid_bce_forward_backward)(double *loss, R *dz, const R *z, const R *target,
                                    int64_t n)
{
    if (!loss || !z || !target || n < 1) return FP_ERR_ARG;
    R inv_n = (R)(1.0 / (double)n);
    double total = 0;
    for (int64_t i = 0; i < n; i++) {
        R zi = z[i], yi = target[i];
        R e = EXP(-FABS(zi));
        total += (double)((zi > 0 ? zi : 0) - zi * yi + LOG1P(e));
        if (dz) {
            R r = 1 / (1 + e);
            R sig = zi >= 0 ? r : e * r;
            dz[i] = (sig - yi) * inv_n;
        }
    }
    *loss = total / (double)n;
    return FP_OK;
}

// J = mean((p − t)²),  dp = 2 (p − t) / n
int F(mse_forward_backward)(double *loss, R *dp, const R *pred, const R *target, int64_t n)
{
    if (!loss || !pred || !target || n < 1) return FP_ERR_ARG;
    R two_over_n = (R)(2.0 / (double)n);
    double total = 0;
    for (int64_t i = 0; i < n; i++) {
        R d = pred[i] - target[i];
        total += (double)d * (double)d;
        if (dp) dp[i] = two_over_n * d;
    }
    *loss = total / (double)n;
    return FP_OK;
}

#endif
