/* Optimizer updates over one flat buffer, the update rules of torch.optim. */
#ifndef R
#define FP_TEMPLATE "optim.c"
#include "template.h"
#else

// SGD: g = ∇ + λθ; buf = μ buf + (1 − τ) g (buf = g on the first step); g = g + μ buf (Nesterov) or buf; θ −= ε g
FP_SIMD int F(sgd_step)(R *param, const R *grad, R *buf, int64_t n, double lr, double momentum,
                double dampening, int nesterov, double weight_decay, int first_step)
{
    if (!param || !grad || n < 0 || (momentum != 0 && !buf)) return FP_ERR_ARG;
    R eps = (R)lr, mu = (R)momentum, damp = (R)(1 - dampening), wd = (R)weight_decay;
    if (momentum == 0) {
        for (int64_t i = 0; i < n; i++) param[i] -= eps * (grad[i] + wd * param[i]);
        return FP_OK;
    }
    for (int64_t i = 0; i < n; i++) {
        R g = grad[i] + wd * param[i];
        R b = first_step ? g : mu * buf[i] + damp * g;
        buf[i] = b;
        param[i] -= eps * (nesterov ? g + mu * b : b);
    }
    return FP_OK;
}

// Adam: m = β₁m + (1−β₁)g; v = β₂v + (1−β₂)g²; θ −= (ε/(1−β₁ᵗ)) m / (√v/√(1−β₂ᵗ) + δ)
// with g = ∇ + λθ (Adam) or θ *= 1 − ελ first (AdamW, decoupled)
FP_SIMD int F(adam_step)(R *param, const R *grad, R *m, R *v, int64_t n, double lr, double beta1,
                 double beta2, double eps, double weight_decay, int decoupled, int64_t step)
{
    if (!param || !grad || !m || !v || n < 0 || step < 1) return FP_ERR_ARG;
    double bc1 = 1 - pow(beta1, (double)step), bc2 = 1 - pow(beta2, (double)step);
    R step_size = (R)(lr / bc1), bc2_sqrt = (R)sqrt(bc2), delta = (R)eps;
    R b1 = (R)beta1, b2 = (R)beta2, one_b1 = (R)(1 - beta1), one_b2 = (R)(1 - beta2);
    /* torch's lerp(m, g, w = 1 − β₁): m + w(g − m) for w < ½, else g − (1 − w)(g − m), exact
     * for β₁ = 0 (m + (g − m) would cancel to 0 when |g| ≪ |m|) */
    int near_g = one_b1 >= (R)0.5;
    R wd = decoupled ? 0 : (R)weight_decay;
    R shrink = decoupled ? (R)(1 - lr * weight_decay) : 1;
    for (int64_t i = 0; i < n; i++) {
        R p = param[i] * shrink;
        R g = grad[i] + wd * p;
        R diff = g - m[i];
        R mi = near_g ? g - b1 * diff : m[i] + one_b1 * diff;
        R vi = b2 * v[i] + one_b2 * g * g;
        m[i] = mi, v[i] = vi;
        param[i] = p - step_size * (mi / (SQRT(vi) / bc2_sqrt + delta));
    }
    return FP_OK;
}

#endif
