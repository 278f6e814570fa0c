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

/* f′ and f″ of one element xi into d1 and d2, for the loops below; cos is handled apart
 * (its range check runs per block). Statements only: a macro argument holds no comma. */
#define FP_D12_CASES(LOOP)                                                                   \
    case FP_IDENTITY: LOOP(0, n, d1 = 1; d2 = 0); break;                                     \
    case FP_RELU: LOOP(0, n, d1 = xi > 0 ? 1 : 0; d2 = 0); break;                            \
    case FP_LEAKY_RELU: LOOP(0, n, d1 = xi > 0 ? 1 : slope; d2 = 0); break;                  \
    case FP_ABS: LOOP(0, n, d1 = xi > 0 ? 1 : (xi < 0 ? -1 : 0); d2 = 0); break;             \
    /* σ′ = q(1 − q), σ″ = σ′(1 − 2σ) = ∓q(1 − q)(1 − 2q), q = σ(−|x|): no cancellation */ \
    case FP_SIGMOID:                                                                         \
        LOOP(0, n, R q = SIGMOID(-FABS(xi)); d1 = q * (1 - q);                               \
             d2 = SELECT(xi > 0, -d1, d1) * (1 - 2 * q));                                    \
        break;                                                                               \
    /* tanh′ = 1 − tanh² = 4q(1 − q), q = σ(−2|x|); tanh″ = −2 tanh · tanh′ */               \
    case FP_TANH:                                                                            \
        LOOP(0, n, R q = SIGMOID(-2 * FABS(xi)); d1 = 4 * q * (1 - q);                       \
             d2 = -2 * TANH(xi) * d1);                                                       \
        break;                                                                               \
    /* softplus′ = σ(βx), softplus″ = β σ(βx)(1 − σ(βx)); 1 and 0 above the threshold */     \
    case FP_SOFTPLUS:                                                                        \
        if (!(beta != 0)) return FP_ERR_ARG;                                                 \
        LOOP(0, n, R bx = beta * xi; R q = SIGMOID(-FABS(bx));                               \
             d1 = SELECT(bx > threshold, 1, SIGMOID(bx));                                    \
             d2 = SELECT(bx > threshold, 0, beta * q * (1 - q)));                            \
        break;                                                                               \
    /* cos′ = −sin, cos″ = −cos, in blocks as the forward */                                 \
    case FP_COS:                                                                             \
        for (int64_t b = 0; b < n; b += TRIG_BLOCK) {                                        \
            int64_t m = n - b < TRIG_BLOCK ? n - b : TRIG_BLOCK;                             \
            if (F(trig_in_range)(x + b, m)) {                                                \
                LOOP(b, b + m, d1 = -SIN(xi); d2 = -COS(xi));                                \
            } else {                                                                         \
                LOOP(b, b + m, d1 = -SIN_LIBM(xi); d2 = -COS_LIBM(xi));                      \
            }                                                                                \
        }                                                                                    \
        break;                                                                               \
    /* gelu′ = Φ(x) + x φ(x), gelu″ = φ(x)(2 − x²) */                                        \
    case FP_GELU:                                                                            \
        LOOP(0, n, R pdf = inv_sqrt_2pi * GAUSS(xi); d1 = PHI(xi) + xi * pdf;                \
             d2 = pdf * (2 - xi * xi));                                                      \
        break;                                                                               \
    /* silu′ = σ(1 + x(1 − σ)), silu″ = σ(1 − σ)(2 + x(1 − 2σ)) */                           \
    case FP_SILU:                                                                            \
        LOOP(0, n, R s = SIGMOID(xi); R q = SIGMOID(-FABS(xi)); d1 = s * (1 + xi * (1 - s)); \
             d2 = q * (1 - q) * (2 + xi * (1 - 2 * s)));                                     \
        break;                                                                               \
    default:                                                                                 \
        return FP_ERR_ACT;

// d2x = g ⊙ f″(x)  (relu, leaky_relu, abs: 0 almost everywhere; see FP_D12_CASES)
FP_SIMD int F(activation_second)(R *d2x, const R *g, const R *x, int64_t n, int act,
                                 const fp_act_params *p)
{
    if (!d2x || !g || !x || n < 0) return FP_ERR_ARG;
    R slope = p ? (R)p->negative_slope : (R)0.01;
    R beta = p ? (R)p->beta : 1, threshold = p ? (R)p->threshold : 20;
    const R inv_sqrt_2pi = (R)0.39894228040143267794;
    (void)slope;
#define FP_D2_LOOP(lo, hi, D12)                              \
    for (int64_t i = (lo); i < (hi); i++) {                  \
        R xi = x[i], gi = g[i], d1, d2;                      \
        D12;                                                 \
        (void)xi, (void)d1;                                  \
        d2x[i] = gi * d2;                                    \
    }
    switch (act) { FP_D12_CASES(FP_D2_LOOP) }
#undef FP_D2_LOOP
    return FP_OK;
}

// the R-operator of g ⊙ f′(x) along a direction with R{x} = rx and R{g} = rg:
// dx = g ⊙ f′(x),  rdx = rg ⊙ f′(x) + g ⊙ f″(x) ⊙ rx  (dx may alias g, rdx may alias rg)
FP_SIMD int F(activation_rbackward)(R *dx, R *rdx, const R *g, const R *rg, const R *rx,
                                    const R *x, int64_t n, int act, const fp_act_params *p)
{
    if (!dx || !rdx || !g || !rg || !rx || !x || n < 0) return FP_ERR_ARG;
    R slope = p ? (R)p->negative_slope : (R)0.01;
    R beta = p ? (R)p->beta : 1, threshold = p ? (R)p->threshold : 20;
    const R inv_sqrt_2pi = (R)0.39894228040143267794;
    (void)slope;
#define FP_RB_LOOP(lo, hi, D12)                                          \
    for (int64_t i = (lo); i < (hi); i++) {                              \
        R xi = x[i], gi = g[i], rgi = rg[i], rxi = rx[i], d1, d2;        \
        D12;                                                             \
        (void)xi;                                                        \
        dx[i] = gi * d1;                                                 \
        rdx[i] = rgi * d1 + gi * d2 * rxi;                               \
    }
    switch (act) { FP_D12_CASES(FP_RB_LOOP) }
#undef FP_RB_LOOP
    return FP_OK;
}
#undef FP_D12_CASES

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

// the R-operator of PReLU along rx (NULL: a fixed input) and the slopes' direction vw:
// ry = (x > 0 ? rx : w_c rx) + (x > 0 ? 0 : x vw_c)
FP_SIMD int F(prelu_rforward)(R *ry, const R *rx, const R *x, const R *w, const R *vw,
                              int64_t batch, int64_t channels, int64_t n_w)
{
    if (!ry || !x || !w || !vw || batch < 0 || channels < 0) return FP_ERR_ARG;
    if (n_w != 1 && n_w != channels) return FP_ERR_ARG;
    int64_t step = n_w == 1 ? 0 : 1;
    for (int64_t i = 0; i < batch; i++) {
        const R *xi = x + i * channels, *rxi = rx ? rx + i * channels : NULL;
        R *ri = ry + i * channels;
        for (int64_t c = 0; c < channels; c++) {
            R xc = xi[c], rc = rxi ? rxi[c] : 0, a = w[c * step], va = vw[c * step];
            ri[c] = SELECT(xc > 0, rc, a * rc + xc * va);
        }
    }
    return FP_OK;
}

// the R-backward of PReLU: dx = (x > 0 ? g : w_c g) (when g and dx are given);
// rdx = x > 0 ? rg : w_c rg + vw_c g;  dw_c (+)= Σ_{x ≤ 0} (rg x + g rx).
// g NULL drops its terms (the Gauss–Newton pass), rx NULL those of R{x}. dx may alias g,
// rdx may alias rg.
FP_SIMD int F(prelu_rbackward)(R *dx, R *rdx, R *dw, const R *g, const R *rg, const R *x,
                               const R *rx, const R *w, const R *vw, int64_t batch,
                               int64_t channels, int64_t n_w, int accumulate)
{
    if (!rdx || !rg || !x || !w || !vw || !dw || batch < 0 || channels < 0) return FP_ERR_ARG;
    if (n_w != 1 && n_w != channels) return FP_ERR_ARG;
    if (!accumulate)
        for (int64_t c = 0; c < n_w; c++) dw[c] = 0;
    int64_t step = n_w == 1 ? 0 : 1;
    for (int64_t i = 0; i < batch; i++) {
        int64_t o = i * channels;
        for (int64_t c = 0; c < channels; c++) {
            R xc = x[o + c], rgc = rg[o + c], gc = g ? g[o + c] : 0, rxc = rx ? rx[o + c] : 0;
            R a = w[c * step], va = vw[c * step];
            dw[c * step] += SELECT(xc > 0, 0, rgc * xc + gc * rxc);
            if (dx) dx[o + c] = SELECT(xc > 0, gc, a * gc);
            rdx[o + c] = SELECT(xc > 0, rgc, a * rgc + va * gc);
        }
    }
    return FP_OK;
}

#endif
