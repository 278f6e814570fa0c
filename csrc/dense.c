/* Dense (fully connected) layer: forward and backward. */
#ifndef R
#define FP_TEMPLATE "dense.c"
#include "template.h"
#else

// x is (batch, in), w is (out, in), b is (out) or NULL, y and preact are (batch, out)
// y = f(x wᵀ + b): one GEMM, then bias and activation in one pass per row (the row is in L1)
int F(dense_forward)(R *y, R *preact, const R *x, const R *w, const R *b,
                     int64_t batch, int64_t in, int64_t out, int act,
                     const fp_act_params *p)
{
    if (!y || !x || !w || batch < 0 || in < 0 || out < 0) return FP_ERR_ARG;
    if (act < 0 || act >= FP_N_ACTIVATIONS) return FP_ERR_ACT;
    int rc = F(gemm)('N', 'T', batch, out, in, 1, x, w, 0, y);
    if (rc) return rc;
    for (int64_t i = 0; i < batch; i++) {
        R *yi = y + i * out;
        if (b)
            for (int64_t j = 0; j < out; j++) yi[j] += b[j];
        if (preact)
            for (int64_t j = 0; j < out; j++) preact[i * out + j] = yi[j];
        if (act != FP_IDENTITY) {
            rc = F(activation_forward)(yi, yi, out, act, p);
            if (rc) return rc;
        }
    }
    return FP_OK;
}

// g is (batch, out): dw (+)= gᵀ x, db (+)= Σ_rows g, dx (+)= g w; dw, db, dx may be NULL (skipped)
// accumulate adds into dw and db, accumulate_dx into dx (a graph node's gradient sums its consumers)
int F(dense_backward)(R *dx, R *dw, R *db, const R *g, const R *x, const R *w,
                      int64_t batch, int64_t in, int64_t out, int accumulate, int accumulate_dx)
{
    if (!g || (dw && !x) || (dx && !w) || batch < 0 || in < 0 || out < 0) return FP_ERR_ARG;
    R beta = accumulate ? 1 : 0;
    int rc;
    if (dw && (rc = F(gemm)('T', 'N', out, in, batch, 1, g, x, beta, dw))) return rc;
    if (dx && (rc = F(gemm)('N', 'N', batch, in, out, 1, g, w, accumulate_dx ? 1 : 0, dx)))
        return rc;
    if (db) {
        if (!accumulate)
            for (int64_t j = 0; j < out; j++) db[j] = 0;
        for (int64_t i = 0; i < batch; i++) {
            const R *gi = g + i * out;
            for (int64_t j = 0; j < out; j++) db[j] += gi[j];
        }
    }
    return FP_OK;
}

#endif
