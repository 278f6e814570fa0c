/* Optimizer updates over one flat buffer, the update rules of torch.optim.
 * Each update is elementwise, so a large buffer is cut into pieces updated on several
 * threads (fp_parallel_for, parallel.c): the same bits as one pass. */
#ifndef R
#define FP_TEMPLATE "optim.c"
#include "template.h"
#else

/* below this many elements per piece an update stays on the calling thread */
#define FP_OPTIM_MIN_PIECE ((int64_t)1 << 19)

typedef struct {
    R *param, *buf, *m, *v;
    const R *grad;
    R eps, mu, damp, wd, shrink, bc2_sqrt, delta, b1, b2, one_b1, one_b2;
    int nesterov, first_step, near_g;
} F(optim_args);

// SGD: g = ∇ + λθ; buf = μ buf + (1 − τ) g (buf = g on the first step); g = g + μ buf (Nesterov) or buf; θ −= ε g
FP_SIMD static void F(sgd_piece)(void *ctx, int64_t lo, int64_t hi)
{
    const F(optim_args) *a = ctx;
    R *param = a->param, *buf = a->buf;
    const R *grad = a->grad;
    R eps = a->eps, mu = a->mu, damp = a->damp, wd = a->wd;
    if (!buf) {  /* no momentum */
        for (int64_t i = lo; i < hi; i++) param[i] -= eps * (grad[i] + wd * param[i]);
        return;
    }
    int first = a->first_step, nesterov = a->nesterov;
    for (int64_t i = lo; i < hi; i++) {
        R g = grad[i] + wd * param[i];
        R b = first ? g : mu * buf[i] + damp * g;
        buf[i] = b;
        param[i] -= eps * (nesterov ? g + mu * b : b);
    }
}

int F(sgd_step)(R *param, const R *grad, R *buf, int64_t n, double lr, double momentum,
                double dampening, int nesterov, double weight_decay, int first_step)
{
    if (!param || !grad || n < 0 || (momentum != 0 && !buf)) return FP_ERR_ARG;
    F(optim_args) a = {.param = param, .grad = grad, .buf = momentum != 0 ? buf : NULL,
                       .eps = (R)lr, .mu = (R)momentum, .damp = (R)(1 - dampening),
                       .wd = (R)weight_decay, .nesterov = nesterov, .first_step = first_step};
    fp_parallel_for(n, FP_OPTIM_MIN_PIECE, F(sgd_piece), &a);
    return FP_OK;
}

// Adam: m = β₁m + (1−β₁)g; v = β₂v + (1−β₂)g²; θ −= (ε/(1−β₁ᵗ)) m / (√v/√(1−β₂ᵗ) + δ)
// with g = ∇ + λθ (Adam) or θ *= 1 − ελ first (AdamW, decoupled)
FP_SIMD static void F(adam_piece)(void *ctx, int64_t lo, int64_t hi)
{
    const F(optim_args) *a = ctx;
    R *param = a->param, *m = a->m, *v = a->v;
    const R *grad = a->grad;
    R step_size = a->eps, bc2_sqrt = a->bc2_sqrt, delta = a->delta, b1 = a->b1, b2 = a->b2;
    R one_b1 = a->one_b1, one_b2 = a->one_b2, wd = a->wd, shrink = a->shrink;
    int near_g = a->near_g;
    for (int64_t i = lo; i < hi; i++) {
        R p = param[i] * shrink;
        R g = grad[i] + wd * p;
        R diff = g - m[i];
        R mi = near_g ? g - b1 * diff : m[i] + one_b1 * diff;
        R vi = b2 * v[i] + one_b2 * g * g;
        m[i] = mi, v[i] = vi;
        param[i] = p - step_size * (mi / (SQRT(vi) / bc2_sqrt + delta));
    }
}

int F(adam_step)(R *param, const R *grad, R *m, R *v, int64_t n, double lr, double beta1,
                 double beta2, double eps, double weight_decay, int decoupled, int64_t step)
{
    if (!param || !grad || !m || !v || n < 0 || step < 1) return FP_ERR_ARG;
    double bc1 = 1 - pow(beta1, (double)step), bc2 = 1 - pow(beta2, (double)step);
    F(optim_args) a = {.param = param, .grad = grad, .m = m, .v = v,
                       .eps = (R)(lr / bc1), .bc2_sqrt = (R)sqrt(bc2), .delta = (R)eps,
                       .b1 = (R)beta1, .b2 = (R)beta2, .one_b1 = (R)(1 - beta1),
                       .one_b2 = (R)(1 - beta2), .wd = decoupled ? 0 : (R)weight_decay,
                       /* torch's lerp(m, g, w = 1 − β₁): m + w(g − m) for w < ½, else
                        * g − (1 − w)(g − m), exact for β₁ = 0 (m + (g − m) would cancel to 0
                        * when |g| ≪ |m|) */
                       .near_g = (R)(1 - beta1) >= (R)0.5,
                       .shrink = decoupled ? (R)(1 - lr * weight_decay) : 1};
    fp_parallel_for(n, FP_OPTIM_MIN_PIECE, F(adam_piece), &a);
    return FP_OK;
}

#undef FP_OPTIM_MIN_PIECE
#endif
