/* A feed-forward chain of dense blocks: the layer loop of a training step in C,
 * so a step costs no Python per layer (algorithms 6.3 and 6.4 of Deep Learning). */
#ifndef R
#define FP_TEMPLATE "network.c"
#include "template.h"
#else

// x is (batch, blocks[0].in); block i reads block i−1's y and writes its own y (and preact)
int F(network_forward)(const fp_dense_block *blocks, int n_blocks, const R *x, int64_t batch)
{
    if (!blocks || n_blocks < 1 || !x || batch < 0) return FP_ERR_ARG;
    const R *h = x;
    for (int i = 0; i < n_blocks; i++) {
        const fp_dense_block *k = &blocks[i];
        if (i > 0 && k->in != blocks[i - 1].out) return FP_ERR_ARG;
        int rc = F(dense_forward)((R *)k->y, (R *)k->preact, h, (const R *)k->w,
                                  (const R *)k->b, batch, k->in, k->out, k->act, &k->p);
        if (rc) return rc;
        h = (const R *)k->y;
    }
    return FP_OK;
}

// forward; J and g = ∂J/∂(last y) in one fused pass; then for each block from the last:
// g ← g ⊙ f′ (in place), ∇W = gᵀh, ∇b = Σ g, g ← g W (into the other buffer; skipped for block 0).
// g0 and g1 are (batch, max width) each; the loss gradient is written into g0.
// opts (NULL: none) holds the loss's weights, label smoothing and Huber δ / SmoothL1 β.
int F(network_train)(double *loss, const fp_dense_block *blocks, int n_blocks, const R *x,
                     int64_t batch, int loss_kind, const int64_t *labels, const R *target,
                     const fp_loss_opts *opts, R *g0, R *g1)
{
    if (!loss || !g0 || !g1 || batch < 1) return FP_ERR_ARG;
    static const fp_loss_opts none = {NULL, NULL, 0.0, 1.0};
    const fp_loss_opts *o = opts ? opts : &none;
    const R *cw = (const R *)o->class_weight, *sw = (const R *)o->sample_weight;
    const fp_dense_block *last = &blocks[n_blocks - 1];
    if (loss_kind == FP_LOSS_SOFTMAX_XENT && labels &&
        fp_first_bad_label(labels, batch, last->out) >= 0)
        return FP_ERR_LABEL;  /* checked before anything is written */
    int rc = F(network_forward)(blocks, n_blocks, x, batch);
    if (rc) return rc;
    const R *z = (const R *)last->y;
    if (loss_kind == FP_LOSS_SOFTMAX_XENT && !cw && !sw && o->label_smoothing == 0)
        rc = F(softmax_xent_forward_backward)(loss, g0, z, labels, target, batch, last->out);
    else if (loss_kind == FP_LOSS_SOFTMAX_XENT)
        rc = F(softmax_xent_weighted_forward_backward)(loss, g0, z, labels, target, cw, sw,
                                                       o->label_smoothing, batch, last->out);
    else if (loss_kind == FP_LOSS_SIGMOID_BCE && !sw)
        rc = F(sigmoid_bce_forward_backward)(loss, g0, z, target, batch * last->out);
    else
        rc = F(pointwise_loss_forward_backward)(loss, g0, z, target, sw, batch, last->out,
                                                loss_kind, o->delta);
    if (rc) return rc;
    R *g = g0, *other = g1;
    for (int i = n_blocks - 1; i >= 0; i--) {
        const fp_dense_block *k = &blocks[i];
        if (k->act != FP_IDENTITY) {
            rc = F(activation_backward)(g, g, (const R *)k->preact, (const R *)k->y,
                                        batch * k->out, k->act, &k->p);
            if (rc) return rc;
        }
        const R *h = i > 0 ? (const R *)blocks[i - 1].y : x;
        rc = F(dense_backward)(i > 0 ? other : NULL, (R *)k->dw, (R *)k->db, g, h,
                               (const R *)k->w, batch, k->in, k->out, 0, 0);
        if (rc) return rc;
        R *t = g; g = other; other = t;
    }
    return FP_OK;
}

#endif
