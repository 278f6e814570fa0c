/* Elementwise activations: forward y = f(x) and fused backward dx = g ⊙ f′ in one pass.
 * y may alias x, dx may alias g (in place). Where f′ follows from the saved output
 * (relu, leaky_relu with slope > 0, sigmoid, tanh) the backward uses y, so the
 * pre-activation need not be kept; otherwise it needs x. */
#ifndef R
#define FP_TEMPLATE "activation.c"
#include "template.h"
#else

// σ(x) without overflow: e = exp(−|x|) ≤ 1
static inline R F(sigmoid_of)(R x)
{
    R e = EXP(-FABS(x));
    R r = 1 / (1 + e);
    return x >= 0 ? r : e * r;
}

// softplus(x) = log(1 + exp(βx))/β, and x where βx > threshold (PyTorch)
static inline R F(softplus_of)(R x, R beta, R threshold)
{
    R bx = beta * x;
    if (bx > threshold) return x;
    return ((bx > 0 ? bx : 0) + LOG1P(EXP(-FABS(bx)))) / beta;
}

// y = f(x)
int F(activation_forward)(R *y, const R *x, int64_t n, int act, const fp_act_params *p)
{
    if (!y || !x || n < 0) return FP_ERR_ARG;
    R slope = p ? (R)p->negative_slope : (R)0.01;
    R beta = p ? (R)p->beta : 1, threshold = p ? (R)p->threshold : 20;
    const R inv_sqrt2 = (R)0.70710678118654752440;
    switch (act) {
    case FP_IDENTITY:
        if (y != x) for (int64_t i = 0; i < n; i++) y[i] = x[i];
        break;
    case FP_RELU:  /* x < 0 ? 0 : x keeps NaN, as torch.relu does */
        for (int64_t i = 0; i < n; i++) {
            R xi = x[i];
            y[i] = xi < 0 ? 0 : xi;
        }
        break;
    case FP_LEAKY_RELU:
        for (int64_t i = 0; i < n; i++) {
            R xi = x[i];
            y[i] = xi > 0 ? xi : xi * slope;
        }
        break;
    case FP_ABS:
        for (int64_t i = 0; i < n; i++) y[i] = FABS(x[i]);
        break;
    case FP_SIGMOID:
        for (int64_t i = 0; i < n; i++) y[i] = F(sigmoid_of)(x[i]);
        break;
    case FP_TANH:
        for (int64_t i = 0; i < n; i++) y[i] = TANH(x[i]);
        break;
    case FP_SOFTPLUS:
        if (!(beta != 0)) return FP_ERR_ARG;
        for (int64_t i = 0; i < n; i++) y[i] = F(softplus_of)(x[i], beta, threshold);
        break;
    case FP_COS:
        for (int64_t i = 0; i < n; i++) y[i] = COS(x[i]);
        break;
    case FP_GELU:  /* x Φ(x), the exact erf form */
        for (int64_t i = 0; i < n; i++) y[i] = (R)0.5 * x[i] * (1 + ERF(x[i] * inv_sqrt2));
        break;
    case FP_SILU:
        for (int64_t i = 0; i < n; i++) y[i] = x[i] * F(sigmoid_of)(x[i]);
        break;
    default:
        return FP_ERR_ACT;
    }
    return FP_OK;
}

// dx = g ⊙ f′(x), from y where it can be
int F(activation_backward)(R *dx, const R *g, const R *x, const R *y, int64_t n, int act,
                           const fp_act_params *p)
{
    if (!dx || !g || n < 0) return FP_ERR_ARG;
    R slope = p ? (R)p->negative_slope : (R)0.01;
    R beta = p ? (R)p->beta : 1, threshold = p ? (R)p->threshold : 20;
    const R inv_sqrt2 = (R)0.70710678118654752440;
    const R inv_sqrt_2pi = (R)0.39894228040143267794;
    /* the array f′ is read from: y for the output-based rules, else x */
    const R *s = x;
    if (act == FP_RELU || act == FP_SIGMOID || act == FP_TANH) s = y ? y : x;
    if (act == FP_LEAKY_RELU && slope > 0 && y) s = y;
    if (act != FP_IDENTITY && !s) return FP_ERR_ACT;
    switch (act) {
    case FP_IDENTITY:
        if (dx != g) for (int64_t i = 0; i < n; i++) dx[i] = g[i];
        break;
    case FP_RELU:  /* relu′(0) = 0 */
        for (int64_t i = 0; i < n; i++) {
            R gi = g[i];  /* loaded unconditionally: the select becomes a vector blend */
            dx[i] = s[i] > 0 ? gi : 0;
        }
        break;
    case FP_LEAKY_RELU:
        for (int64_t i = 0; i < n; i++) {
            R gi = g[i];
            dx[i] = s[i] > 0 ? gi : gi * slope;
        }
        break;
    case FP_ABS:  /* sign(x), 0 at 0 */
        for (int64_t i = 0; i < n; i++) {
            R gi = g[i], si = s[i];
            dx[i] = si > 0 ? gi : (si < 0 ? -gi : 0);
        }
        break;
    case FP_SIGMOID:
        if (s == y)
            for (int64_t i = 0; i < n; i++) dx[i] = g[i] * s[i] * (1 - s[i]);
        else
            for (int64_t i = 0; i < n; i++) {
                R si = F(sigmoid_of)(s[i]);
                dx[i] = g[i] * si * (1 - si);
            }
        break;
    case FP_TANH:
        if (s == y)
            for (int64_t i = 0; i < n; i++) dx[i] = g[i] * (1 - s[i] * s[i]);
        else
            for (int64_t i = 0; i < n; i++) {
                R t = TANH(s[i]);
                dx[i] = g[i] * (1 - t * t);
            }
        break;
    case FP_SOFTPLUS:  /* σ(βx), and 1 above the threshold */
        if (!(beta != 0)) return FP_ERR_ARG;
        for (int64_t i = 0; i < n; i++) {
            R gi = g[i], bx = beta * s[i];
            R d = gi * F(sigmoid_of)(bx);
            dx[i] = bx > threshold ? gi : d;
        }
        break;
    case FP_COS:
        for (int64_t i = 0; i < n; i++) dx[i] = -g[i] * SIN(s[i]);
        break;
    case FP_GELU:  /* Φ(x) + x φ(x) */
        for (int64_t i = 0; i < n; i++) {
            R xi = s[i];
            R cdf = (R)0.5 * (1 + ERF(xi * inv_sqrt2));
            R pdf = inv_sqrt_2pi * EXP((R)-0.5 * xi * xi);
            dx[i] = g[i] * (cdf + xi * pdf);
        }
        break;
    case FP_SILU:  /* σ(x)(1 + x(1 − σ(x))) */
        for (int64_t i = 0; i < n; i++) {
            R si = F(sigmoid_of)(s[i]);
            dx[i] = g[i] * si * (1 + s[i] * (1 - si));
        }
        break;
    default:
        return FP_ERR_ACT;
    }
    return FP_OK;
}

// x and y are (batch, channels), w is (n_w) with n_w 1 or channels: y = x > 0 ? x : w_c x
int F(prelu_forward)(R *y, const R *x, const R *w, int64_t batch, int64_t channels,
                     int64_t n_w)
{
    if (!y || !x || !w || batch < 0 || channels < 0) return FP_ERR_ARG;
    if (n_w != 1 && n_w != channels) return FP_ERR_ARG;
    for (int64_t i = 0; i < batch; i++)
        for (int64_t c = 0; c < channels; c++) {
            R xi = x[i * channels + c], a = w[n_w == 1 ? 0 : c];
            y[i * channels + c] = xi > 0 ? xi : a * xi;  /* both loaded: a blend */
        }
    return FP_OK;
}

// dx = x > 0 ? g : w_c g;  dw_c (+)= Σ_{x ≤ 0} g x
int F(prelu_backward)(R *dx, R *dw, const R *g, const R *x, const R *w, int64_t batch,
                      int64_t channels, int64_t n_w, int accumulate)
{
    if (!g || !x || !w || batch < 0 || channels < 0) return FP_ERR_ARG;
    if (n_w != 1 && n_w != channels) return FP_ERR_ARG;
    if (dw) {
        if (!accumulate)
            for (int64_t c = 0; c < n_w; c++) dw[c] = 0;
        for (int64_t i = 0; i < batch; i++)
            for (int64_t c = 0; c < channels; c++) {
                R xi = x[i * channels + c];
                if (!(xi > 0)) dw[n_w == 1 ? 0 : c] += g[i * channels + c] * xi;
            }
    }
    if (dx)  /* after dw: dx may alias g */
        for (int64_t i = 0; i < batch; i++)
            for (int64_t c = 0; c < channels; c++) {
                int64_t k = i * channels + c;
                R gk = g[k], a = w[n_w == 1 ? 0 : c];
                dx[k] = x[k] > 0 ? gk : a * gk;
            }
    return FP_OK;
}

#endif
