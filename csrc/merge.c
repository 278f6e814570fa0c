/* The merge nodes of a computation graph: Add, Mul and Concat, each forward next to its
 * backward. A backward writes into the grad table: the gradient buffer of an input node,
 * overwritten by the first consumer the backward visits and added into (accumulate) by the
 * others, so a node's gradient is the sum over its consumers with no temporaries. */
#ifndef R
#define FP_TEMPLATE "merge.c"
#include "template.h"
#else

// xs[0..k) and y are (n): y = Σ_k xs[k] (y may alias xs[0] or xs[1], not a later summand)
FP_SIMD int F(add_forward)(R *y, const R *const *xs, int k, int64_t n)
{
    if (!y || !xs || k < 1 || n < 0) return FP_ERR_ARG;
    for (int j = 0; j < k; j++)
        if (!xs[j]) return FP_ERR_ARG;
    const R *x0 = xs[0];
    if (k == 1) {
        if (y != x0) for (int64_t i = 0; i < n; i++) y[i] = x0[i];
        return FP_OK;
    }
    const R *x1 = xs[1];
    for (int64_t i = 0; i < n; i++) y[i] = x0[i] + x1[i];
    for (int j = 2; j < k; j++) {
        const R *xj = xs[j];
        for (int64_t i = 0; i < n; i++) y[i] += xj[i];
    }
    return FP_OK;
}

// g and dx are (n): dx (+)= g, the gradient of each summand (and any grad-table accumulation)
FP_SIMD int F(add_backward)(R *dx, const R *g, int64_t n, int accumulate)
{
    if (!dx || !g || n < 0) return FP_ERR_ARG;
    if (accumulate)
        for (int64_t i = 0; i < n; i++) dx[i] += g[i];
    else if (dx != g)
        for (int64_t i = 0; i < n; i++) dx[i] = g[i];
    return FP_OK;
}

// a, b, y are (n): y = a ⊙ b
FP_SIMD int F(mul_forward)(R *y, const R *a, const R *b, int64_t n)
{
    if (!y || !a || !b || n < 0) return FP_ERR_ARG;
    for (int64_t i = 0; i < n; i++) y[i] = a[i] * b[i];
    return FP_OK;
}

// da (+)= g ⊙ b, db (+)= g ⊙ a; da or db may be NULL (skipped). da may alias db (y = x ⊙ x):
// per element, da is written before db is read, so both contributions land in it.
int F(mul_backward)(R *da, R *db, const R *g, const R *a, const R *b, int64_t n,
                    int accumulate_a, int accumulate_b)
{
    if (!g || !a || !b || n < 0) return FP_ERR_ARG;
    if (da == db && da) {  /* one buffer: da (+)= g b, then += g a */
        for (int64_t i = 0; i < n; i++)
            da[i] = (accumulate_a ? da[i] : 0) + g[i] * b[i] + g[i] * a[i];
        return FP_OK;
    }
    if (da) {
        if (accumulate_a) for (int64_t i = 0; i < n; i++) da[i] += g[i] * b[i];
        else for (int64_t i = 0; i < n; i++) da[i] = g[i] * b[i];
    }
    if (db) {
        if (accumulate_b) for (int64_t i = 0; i < n; i++) db[i] += g[i] * a[i];
        else for (int64_t i = 0; i < n; i++) db[i] = g[i] * a[i];
    }
    return FP_OK;
}

// x is (batch, w), y is (batch, width): y[:, offset:offset + w] = x (one input of a Concat)
int F(concat_forward)(R *y, const R *x, int64_t batch, int64_t width, int64_t offset, int64_t w)
{
    if (!y || !x || batch < 0 || w < 0 || offset < 0 || offset + w > width) return FP_ERR_ARG;
    for (int64_t r = 0; r < batch; r++) {
        R *yr = y + r * width + offset;
        const R *xr = x + r * w;
        for (int64_t j = 0; j < w; j++) yr[j] = xr[j];
    }
    return FP_OK;
}

// g is (batch, width), dx is (batch, w): dx (+)= g[:, offset:offset + w]
int F(concat_backward)(R *dx, const R *g, int64_t batch, int64_t width, int64_t offset, int64_t w,
                       int accumulate)
{
    if (!dx || !g || batch < 0 || w < 0 || offset < 0 || offset + w > width) return FP_ERR_ARG;
    for (int64_t r = 0; r < batch; r++) {
        const R *gr = g + r * width + offset;
        R *dr = dx + r * w;
        if (accumulate) for (int64_t j = 0; j < w; j++) dr[j] += gr[j];
        else for (int64_t j = 0; j < w; j++) dr[j] = gr[j];
    }
    return FP_OK;
}

#endif
