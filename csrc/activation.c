/* Elementwise activations: forward y = f(x) and fused backward dx = g ⊙ f′ in one pass.
 * y may alias x, dx may alias g (in place). Where f′ follows from the saved output
 * (relu, leaky_relu with slope > 0, sigmoid, tanh) the backward uses y, so the
 * pre-activation need not be kept; otherwise it needs x.
 * Every loop is branch-free, so that the float ones vectorize: inputs are
 * loaded unconditionally into locals, selects pick between loaded values (a ternary) or
 * computed ones (SELECT), and the transcendentals are fastmath.h's (template.h). */
#ifndef R
#define TRIG_BLOCK 512  /* cos and sin check the range of their arguments per block of this many */
#define FP_TEMPLATE "activation.c"
#include "template.h"
#else

// 1 when every |x_i| ≤ TRIG_MAX, the range of COS and SIN (an OR over the block, so it vectorizes; NaN passes)
FP_INLINE int F(trig_in_range)(const R *x, int64_t n)
{
    int out = 0;
    for (int64_t i = 0; i < n; i++) out |= FABS(x[i]) > TRIG_MAX;
    return !out;
}

// softplus(x) = (max(βx, 0) + log1p(exp(−|βx|)))/β, and x where βx > threshold (PyTorch)
FP_INLINE R F(softplus_of)(R x, R beta, R threshold)
{
    R bx = beta * x;
    R sp = ((bx > 0 ? bx : 0) + LOG1P01(EXPN(-FABS(bx)))) / beta;
    return SELECT(bx > threshold, x, sp);
}

// y = f(x)
FP_SIMD int F(activation_forward)(R *y, const R *x, int64_t n, int act, const fp_act_params *p)
{
    if (!y || !x || n < 0) return FP_ERR_ARG;
    R slope = p ? (R)p->negative_slope : (R)0.01;
    R beta = p ? (R)p->beta : 1, threshold = p ? (R)p->threshold : 20;
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
            y[i] = SELECT(xi > 0, xi, xi * slope);
        }
        break;
    case FP_ABS:
        for (int64_t i = 0; i < n; i++) y[i] = FABS(x[i]);
        break;
    case FP_SIGMOID:
        for (int64_t i = 0; i < n; i++) y[i] = SIGMOID(x[i]);
        break;
    case FP_TANH:
        for (int64_t i = 0; i < n; i++) y[i] = TANH(x[i]);
        break;
    case FP_SOFTPLUS:
        if (!(beta != 0)) return FP_ERR_ARG;
        for (int64_t i = 0; i < n; i++) y[i] = F(softplus_of)(x[i], beta, threshold);
        break;
    case FP_COS:  /* in blocks: one with an |x| beyond TRIG_MAX takes libm */
        for (int64_t b = 0; b < n; b += TRIG_BLOCK) {
            int64_t m = n - b < TRIG_BLOCK ? n - b : TRIG_BLOCK;
            const R *xb = x + b;
            R *yb = y + b;
            if (F(trig_in_range)(xb, m))
                for (int64_t i = 0; i < m; i++) yb[i] = COS(xb[i]);
            else
                for (int64_t i = 0; i < m; i++) yb[i] = COS_LIBM(xb[i]);
        }
        break;
    case FP_GELU:  /* x Φ(x), the exact (erf) form */
        for (int64_t i = 0; i < n; i++) {
            R xi = x[i];
            y[i] = xi * PHI(xi);
        }
        break;
    case FP_SILU:
        for (int64_t i = 0; i < n; i++) {
            R xi = x[i];
            y[i] = xi * SIGMOID(xi);
        }
        break;
    default:
        return FP_ERR_ACT;
    }
    return FP_OK;
}

// dx = g ⊙ f′(x), from y where it can be
FP_SIMD int F(activation_backward)(R *dx, const R *g, const R *x, const R *y, int64_t n, int act,
                                   const fp_act_params *p)
{
    if (!dx || !g || n < 0) return FP_ERR_ARG;
    R slope = p ? (R)p->negative_slope : (R)0.01;
    R beta = p ? (R)p->beta : 1, threshold = p ? (R)p->threshold : 20;
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
            dx[i] = SELECT(s[i] > 0, gi, gi * slope);
        }
        break;
    case FP_ABS:  /* sign(x), 0 at 0 (−g is a sign flip, which a ternary may hold) */
        for (int64_t i = 0; i < n; i++) {
            R gi = g[i], si = s[i];
            dx[i] = si > 0 ? gi : (si < 0 ? -gi : 0);
        }
        break;
    case FP_SIGMOID:  /* σ(1 − σ); from x as q(1 − q), q = σ(−|x|) ≤ ½: 1 − σ(x) would cancel for large x */
        if (s == y)
            for (int64_t i = 0; i < n; i++) dx[i] = g[i] * s[i] * (1 - s[i]);
        else
            for (int64_t i = 0; i < n; i++) {
                R q = SIGMOID(-FABS(s[i]));
                dx[i] = g[i] * q * (1 - q);
            }
        break;
    case FP_TANH:  /* 1 − tanh²; from y as (1 − |y|)(1 + |y|): 1 − |y| is exact for |y| ≥ ½, so a
                    * saturated output does not cancel; from x as 4q(1 − q), q = σ(−2|x|) */
        if (s == y)
            for (int64_t i = 0; i < n; i++) {
                R a = FABS(s[i]);
                dx[i] = g[i] * ((1 - a) * (1 + a));
            }
        else
            for (int64_t i = 0; i < n; i++) {
                R q = SIGMOID(-2 * FABS(s[i]));
                dx[i] = g[i] * (4 * q * (1 - q));
            }
        break;
    case FP_SOFTPLUS:  /* σ(βx), and 1 above the threshold */
        if (!(beta != 0)) return FP_ERR_ARG;
        for (int64_t i = 0; i < n; i++) {
            R gi = g[i], bx = beta * s[i];
            dx[i] = SELECT(bx > threshold, gi, gi * SIGMOID(bx));
        }
        break;
    case FP_COS:  /* −sin x, in blocks as the forward */
        for (int64_t b = 0; b < n; b += TRIG_BLOCK) {
            int64_t m = n - b < TRIG_BLOCK ? n - b : TRIG_BLOCK;
            const R *gb = g + b, *sb = s + b;
            R *db = dx + b;
            if (F(trig_in_range)(sb, m))
                for (int64_t i = 0; i < m; i++) db[i] = -gb[i] * SIN(sb[i]);
            else
                for (int64_t i = 0; i < m; i++) db[i] = -gb[i] * SIN_LIBM(sb[i]);
        }
        break;
    case FP_GELU:  /* Φ(x) + x φ(x), φ(x) = exp(−x²/2)/√(2π) */
        for (int64_t i = 0; i < n; i++) {
            R xi = s[i];
            R pdf = inv_sqrt_2pi * GAUSS(xi);
            dx[i] = g[i] * (PHI(xi) + xi * pdf);
        }
        break;
    case FP_SILU:  /* σ(x)(1 + x(1 − σ(x))) */
        for (int64_t i = 0; i < n; i++) {
            R xi = s[i], si = SIGMOID(xi);
            dx[i] = g[i] * si * (1 + xi * (1 - si));
        }
        break;
    default:
        return FP_ERR_ACT;
    }
    return FP_OK;
}

// x and y are (batch, channels), w is (n_w) with n_w 1 or channels: y = x > 0 ? x : w_c x
FP_SIMD int F(prelu_forward)(R *y, const R *x, const R *w, int64_t batch, int64_t channels,
                             int64_t n_w)
{
    if (!y || !x || !w || batch < 0 || channels < 0) return FP_ERR_ARG;
    if (n_w != 1 && n_w != channels) return FP_ERR_ARG;
    if (n_w == 1) {  /* one slope: a flat loop, a leaky relu */
        R a = w[0];
        for (int64_t k = 0; k < batch * channels; k++) {
            R xk = x[k];
            y[k] = SELECT(xk > 0, xk, a * xk);
        }
        return FP_OK;
    }
    for (int64_t i = 0; i < batch; i++) {
        const R *xi = x + i * channels;
        R *yi = y + i * channels;
        for (int64_t c = 0; c < channels; c++) {
            R xc = xi[c], a = w[c];
            yi[c] = SELECT(xc > 0, xc, a * xc);
        }
    }
    return FP_OK;
}

// dx = x > 0 ? g : w_c g;  dw_c (+)= Σ_{x ≤ 0} g x
FP_SIMD int F(prelu_backward)(R *dx, R *dw, const R *g, const R *x, const R *w, int64_t batch,
                              int64_t channels, int64_t n_w, int accumulate)
{
    if (!g || !x || !w || batch < 0 || channels < 0) return FP_ERR_ARG;
    if (n_w != 1 && n_w != channels) return FP_ERR_ARG;
    int64_t n = batch * channels;
    if (dw) {
        if (!accumulate)
            for (int64_t c = 0; c < n_w; c++) dw[c] = 0;
        if (n_w == 1) {  /* one sum over everything, in FP_LANES partial sums */
            R acc[FP_LANES] = {0}, sum = 0;
            int64_t k = 0;
            for (; k + FP_LANES <= n; k += FP_LANES)
                for (int l = 0; l < FP_LANES; l++) {
                    R xk = x[k + l], gk = g[k + l];
                    acc[l] += SELECT(xk > 0, 0, gk * xk);
                }
            for (; k < n; k++) {
                R xk = x[k], gk = g[k];
                sum += SELECT(xk > 0, 0, gk * xk);
            }
            for (int l = 0; l < FP_LANES; l++) sum += acc[l];
            dw[0] += sum;
        } else {
            for (int64_t i = 0; i < batch; i++) {
                const R *gi = g + i * channels, *xi = x + i * channels;
                for (int64_t c = 0; c < channels; c++) {
                    R xc = xi[c], gc = gi[c];
                    dw[c] += SELECT(xc > 0, 0, gc * xc);  /* + 0 where x > 0: the sum is unchanged */
                }
            }
        }
    }
    if (dx) {  /* after dw: dx may alias g */
        if (n_w == 1) {
            R a = w[0];
            for (int64_t k = 0; k < n; k++) {
                R gk = g[k];
                dx[k] = SELECT(x[k] > 0, gk, a * gk);
            }
            return FP_OK;
        }
        for (int64_t i = 0; i < batch; i++) {
            const R *gi = g + i * channels, *xi = x + i * channels;
            R *di = dx + i * channels;
            for (int64_t c = 0; c < channels; c++) {
                R gc = gi[c], a = w[c];
                di[c] = SELECT(xi[c] > 0, gc, a * gc);
            }
        }
    }
    return FP_OK;
}

#endif
