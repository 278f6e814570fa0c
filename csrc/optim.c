/* Optimizer updates over one flat buffer, the update rules of torch.optim.
 * Each update is elementwise, so a large buffer is cut into pieces updated on several
 * threads (fp_parallel_for, parallel.c): the same bits as one pass. */
#ifndef R
#include "fastprop.h"
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

/* The updates run with denormals flushed to zero (FTZ and DAZ, this thread's MXCSR or FPCR,
 * restored after): a momentum or second moment decaying through the denormal range (a dead
 * unit's, whose gradient is 0) otherwise costs ~45x per element (SGD over 8,906 floats:
 * 1.5 us, 67.5 us with denormal buffers). A value below the smallest normal becomes 0. */
typedef struct {
    fp_range_fn fn;
    void *ctx;
} optim_flushed;

static void optim_run_flushed(void *ctx, int64_t lo, int64_t hi)
{
    const optim_flushed *f = ctx;
#if defined(__x86_64__) || defined(__i386__)
    unsigned int saved = _mm_getcsr();
    _mm_setcsr(saved | 0x8040);   /* FTZ (bit 15) and DAZ (bit 6) */
    f->fn(f->ctx, lo, hi);
    _mm_setcsr(saved);
#elif defined(__aarch64__)
    uint64_t saved;
    __asm__ volatile("mrs %0, fpcr" : "=r"(saved));
    __asm__ volatile("msr fpcr, %0" : : "r"(saved | ((uint64_t)1 << 24)));   /* FZ */
    f->fn(f->ctx, lo, hi);
    __asm__ volatile("msr fpcr, %0" : : "r"(saved));
#else
    f->fn(f->ctx, lo, hi);
#endif
}

/* below this many elements per piece an update stays on the calling thread */
#define FP_OPTIM_MIN_PIECE ((int64_t)1 << 19)

/* fp_parallel_for of an update's pieces, each with denormals flushed */
static void optim_for(int64_t n, fp_range_fn fn, void *ctx)
{
    optim_flushed f = {fn, ctx};
    fp_parallel_for(n, FP_OPTIM_MIN_PIECE, optim_run_flushed, &f);
}

#define FP_TEMPLATE "optim.c"
#include "template.h"
#else

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
    optim_for(n, F(sgd_piece), &a);
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

// Adam's and AMSGrad's constants for step `step` (vmax: AMSGrad's running max, else NULL)
static F(optim_args) F(adam_args)(R *param, const R *grad, R *m, R *v, R *vmax, double lr,
                                  double beta1, double beta2, double eps, double weight_decay,
                                  int decoupled, int64_t step)
{
    double bc1 = 1 - pow(beta1, (double)step), bc2 = 1 - pow(beta2, (double)step);
    F(optim_args) a = {.param = param, .grad = grad, .m = m, .v = v, .buf = vmax,
                       .eps = (R)(lr / bc1), .bc2_sqrt = (R)sqrt(bc2), .delta = (R)eps,
                       .b1 = (R)beta1, .b2 = (R)beta2, .one_b1 = (R)(1 - beta1),
                       .one_b2 = (R)(1 - beta2), .wd = decoupled ? 0 : (R)weight_decay,
                       /* torch's lerp(m, g, w = 1 − β₁): m + w(g − m) for w < ½, else
                        * g − (1 − w)(g − m), exact for β₁ = 0 (m + (g − m) would cancel to 0
                        * when |g| ≪ |m|) */
                       .near_g = (R)(1 - beta1) >= (R)0.5,
                       .shrink = decoupled ? (R)(1 - lr * weight_decay) : 1};
    return a;
}

int F(adam_step)(R *param, const R *grad, R *m, R *v, int64_t n, double lr, double beta1,
                 double beta2, double eps, double weight_decay, int decoupled, int64_t step)
{
    if (!param || !grad || !m || !v || n < 0 || step < 1) return FP_ERR_ARG;
    F(optim_args) a = F(adam_args)(param, grad, m, v, NULL, lr, beta1, beta2, eps, weight_decay,
                                   decoupled, step);
    optim_for(n, F(adam_piece), &a);
    return FP_OK;
}

// AMSGrad (Adam/AdamW with amsgrad=True): as adam_piece, with vmax = max(vmax, v) in the denominator
FP_SIMD static void F(amsgrad_piece)(void *ctx, int64_t lo, int64_t hi)
{
    const F(optim_args) *a = ctx;
    R *param = a->param, *m = a->m, *v = a->v, *vmax = a->buf;
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
        R vm = vmax[i] > vi ? vmax[i] : vi;
        m[i] = mi, v[i] = vi, vmax[i] = vm;
        param[i] = p - step_size * (mi / (SQRT(vm) / bc2_sqrt + delta));
    }
}

int F(amsgrad_step)(R *param, const R *grad, R *m, R *v, R *vmax, int64_t n, double lr,
                    double beta1, double beta2, double eps, double weight_decay, int decoupled,
                    int64_t step)
{
    if (!param || !grad || !m || !v || !vmax || n < 0 || step < 1) return FP_ERR_ARG;
    F(optim_args) a = F(adam_args)(param, grad, m, v, vmax, lr, beta1, beta2, eps, weight_decay,
                                   decoupled, step);
    optim_for(n, F(amsgrad_piece), &a);
    return FP_OK;
}

// RMSprop: g = ∇ + λθ; v = αv + (1−α)g²; centered: ḡ = lerp(ḡ, g, 1−α), d = √(v − ḡ²) + δ, else
// d = √v + δ; momentum μ > 0: buf = μ buf + g/d, θ −= ε buf; else θ −= ε g/d (torch.optim.RMSprop)
FP_SIMD static void F(rmsprop_piece)(void *ctx, int64_t lo, int64_t hi)
{
    const F(optim_args) *a = ctx;
    R *param = a->param, *sq = a->v, *buf = a->buf, *gavg = a->m;
    const R *grad = a->grad;
    R lr = a->eps, alpha = a->b2, one_alpha = a->one_b2, delta = a->delta, wd = a->wd, mu = a->mu;
    int near_g = a->near_g;
    for (int64_t i = lo; i < hi; i++) {
        R g = grad[i] + wd * param[i];
        R s = alpha * sq[i] + one_alpha * g * g;
        sq[i] = s;
        R d;
        if (gavg) {
            R diff = g - gavg[i];
            R ga = near_g ? g - alpha * diff : gavg[i] + one_alpha * diff;
            gavg[i] = ga;
            d = SQRT(s - ga * ga) + delta;
        } else {
            d = SQRT(s) + delta;
        }
        if (buf) {
            R b = mu * buf[i] + g / d;
            buf[i] = b;
            param[i] -= lr * b;
        } else {
            param[i] -= lr * (g / d);
        }
    }
}

int F(rmsprop_step)(R *param, const R *grad, R *square_avg, R *momentum_buf, R *grad_avg,
                    int64_t n, double lr, double alpha, double eps, double weight_decay,
                    double momentum)
{
    if (!param || !grad || !square_avg || n < 0 || (momentum > 0 && !momentum_buf))
        return FP_ERR_ARG;
    F(optim_args) a = {.param = param, .grad = grad, .v = square_avg,
                       .buf = momentum > 0 ? momentum_buf : NULL, .m = grad_avg,
                       .eps = (R)lr, .b2 = (R)alpha, .one_b2 = (R)(1 - alpha), .delta = (R)eps,
                       .wd = (R)weight_decay, .mu = (R)momentum,
                       .near_g = (R)(1 - alpha) >= (R)0.5};  /* torch's lerp, as in adam */
    optim_for(n, F(rmsprop_piece), &a);
    return FP_OK;
}

// Adagrad: g = ∇ + λθ; s += g²; θ −= ε_t g / (√s + δ), ε_t = lr / (1 + (t − 1)·lr_decay) (torch.optim.Adagrad)
FP_SIMD static void F(adagrad_piece)(void *ctx, int64_t lo, int64_t hi)
{
    const F(optim_args) *a = ctx;
    R *param = a->param, *sum = a->v;
    const R *grad = a->grad;
    R clr = a->eps, delta = a->delta, wd = a->wd;
    for (int64_t i = lo; i < hi; i++) {
        R g = grad[i] + wd * param[i];
        R s = sum[i] + g * g;
        sum[i] = s;
        param[i] -= clr * (g / (SQRT(s) + delta));
    }
}

int F(adagrad_step)(R *param, const R *grad, R *sum, int64_t n, double clr, double eps,
                    double weight_decay)
{
    if (!param || !grad || !sum || n < 0) return FP_ERR_ARG;
    F(optim_args) a = {.param = param, .grad = grad, .v = sum, .eps = (R)clr, .delta = (R)eps,
                       .wd = (R)weight_decay};
    optim_for(n, F(adagrad_piece), &a);
    return FP_OK;
}

// ---------------------------------------------------------------- gradient clipping
// g is (n). *out = Σ|gᵢ|^p (p = 2: Σgᵢ², p = 1: Σ|gᵢ|) or max|gᵢ| (p = ∞), summed in double; NaN propagates
FP_SIMD int F(grad_norm_pow)(double *out, const R *g, int64_t n, double p)
{
    if (!out || (!g && n > 0) || n < 0 || !(p > 0)) return FP_ERR_ARG;
    double s = 0;
    if (isinf(p)) {
        int nan = 0;
        for (int64_t i = 0; i < n; i++) {
            double x = FABS(g[i]);
            nan |= x != x;
            s = x > s ? x : s;
        }
        if (nan) s = NAN;  /* as torch's: a NaN anywhere makes the norm NaN */
    } else if (p == 2) {  /* 8 partial sums in a fixed order: vectorizes, same bits every run */
        double acc[8] = {0};
        int64_t i = 0;
        for (; i + 8 <= n; i += 8)
            for (int k = 0; k < 8; k++) acc[k] += (double)g[i + k] * g[i + k];
        for (; i < n; i++) acc[0] += (double)g[i] * g[i];
        s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    } else if (p == 1) {
        for (int64_t i = 0; i < n; i++) s += FABS(g[i]);
    } else {
        for (int64_t i = 0; i < n; i++) s += pow(FABS(g[i]), p);
    }
    *out = s;
    return FP_OK;
}

// g is (n): g *= c (clip_grad_norm_), or g = clamp(g, −c, c) (clip_grad_value_, NaN stays NaN)
FP_SIMD int F(grad_scale)(R *g, int64_t n, double c)
{
    if ((!g && n > 0) || n < 0) return FP_ERR_ARG;
    R cr = (R)c;
    for (int64_t i = 0; i < n; i++) g[i] *= cr;
    return FP_OK;
}

FP_SIMD int F(grad_clamp)(R *g, int64_t n, double c)
{
    if ((!g && n > 0) || n < 0 || !(c >= 0)) return FP_ERR_ARG;
    R hi = (R)c, lo = -hi;
    for (int64_t i = 0; i < n; i++) {
        R x = g[i];
        g[i] = x < lo ? lo : (x > hi ? hi : x);
    }
    return FP_OK;
}

#endif
