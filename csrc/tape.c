/* The tape: a flat list of ops over numbered values, planned in Python (fastprop/plan.py),
 * executed here with no Python per op. The forward runs the ops in order; the backward runs
 * them in reverse with the grad table of algorithm 6.2 of Deep Learning: each op hands every
 * input its share of the gradient, written by the first share and added by the others (the
 * op's acc flags), a value's gradient buffer is shared with its consumer's where the plan
 * aliases them (then the share is computed in place), and an input of the model has none
 * (its ∇x is never formed). Parameter gradients are written, or added where the op's
 * acc_params says (a shared module's second node) or the call asks for it. */
#ifndef R
#include <string.h>
#define FP_TEMPLATE "tape.c"
#include "template.h"
#else

// forward of ops [a, b): value v is val[v], (batch, width[v])
int F(tape_forward)(const fp_op *ops, int a, int b, void *const *val, const int64_t *width,
                    int64_t batch)
{
    if (!ops || !val || !width || batch < 0 || a < 0 || b < a) return FP_ERR_ARG;
    int rc = FP_OK;
    for (int i = a; i < b && rc == FP_OK; i++) {
        const fp_op *o = &ops[i];
        R *y = (R *)val[o->out];
        const R *x = (const R *)val[o->in[0]];
        int64_t n = batch * width[o->out];
        switch (o->kind) {
        case FP_OP_DENSE:
            rc = F(dense_forward)(y, (R *)o->preact, x, (const R *)o->w, (const R *)o->b, batch,
                                  width[o->in[0]], width[o->out], o->act, &o->p);
            break;
        case FP_OP_ACT:
            rc = F(activation_forward)(y, x, n, o->act, &o->p);
            break;
        case FP_OP_PRELU:
            rc = F(prelu_forward)(y, x, (const R *)o->w, batch, width[o->out], o->n_w);
            break;
        case FP_OP_ADD:
            if (o->n_in > FP_OP_MAX_IN) return FP_ERR_ARG;
            {
                const R *xs[FP_OP_MAX_IN];
                for (int k = 0; k < o->n_in; k++) xs[k] = (const R *)val[o->in[k]];
                rc = F(add_forward)(y, xs, o->n_in, n);
            }
            break;
        case FP_OP_MUL:
            rc = F(mul_forward)(y, x, (const R *)val[o->in[1]], n);
            break;
        case FP_OP_CONCAT:
            for (int k = 0, off = 0; k < o->n_in && rc == FP_OK; off += width[o->in[k]], k++)
                rc = F(concat_forward)(y, (const R *)val[o->in[k]], batch, width[o->out], off,
                                       width[o->in[k]]);
            break;
        case FP_OP_DROPOUT:   // the module's stream, advanced as Dropout._draw advances it
            if (!o->active) {
                memcpy(y, x, (size_t)n * sizeof(R));   // eval mode or p = 0: the identity
            } else if (!o->rng || !o->mask) {
                rc = FP_ERR_ARG;
            } else {
                rc = F(dropout_forward)(y, o->mask, x, n, o->prob, o->rng[0], o->rng[1]);
                o->rng[1] += FP_DROPOUT_BLOCKS(n);
            }
            break;
        case FP_OP_LAYERNORM:
            rc = F(layernorm_forward)(y, (R *)o->mean, (R *)o->rstd, x, (const R *)o->w,
                                      (const R *)o->b, batch, width[o->out], o->eps);
            break;
        case FP_OP_BATCHNORM:
            // BatchNorm1d._forward's call: the running statistics normalize (eval) or are
            // moved (training, tracked); momentum=None averages over num_batches_tracked
            if (o->track && !o->tracked) return FP_ERR_ARG;
            {
                int run = !o->active || o->track;
                double m = !o->track ? 0.0 : o->momentum >= 0 ? o->momentum
                                                              : 1.0 / (double)(*o->tracked + 1);
                rc = F(batchnorm_forward)(y, (R *)o->mean, (R *)o->rstd,
                                          run ? (R *)o->run_mean : NULL,
                                          run ? (R *)o->run_var : NULL, x, (const R *)o->w,
                                          (const R *)o->b, batch, width[o->out], o->eps, m,
                                          o->active);
            }
            if (rc == FP_OK && o->track) *o->tracked += 1;
            break;
        default:
            rc = FP_ERR_ARG;
        }
    }
    return rc;
}

// dx (+)= t, unless dx is t itself (an aliased buffer: the share is already in place)
static int F(deposit)(R *dx, const R *t, int64_t n, int acc)
{
    if (!dx || dx == t) return FP_OK;
    return F(add_backward)(dx, t, n, acc);
}

// backward of ops [a, b), the last first: grad[v] is ∂J/∂val[v] (NULL: not needed)
int F(tape_backward)(const fp_op *ops, int a, int b, void *const *val, void *const *grad,
                     const int64_t *width, int64_t batch, int accumulate)
{
    if (!ops || !val || !grad || !width || batch < 0 || a < 0 || b < a) return FP_ERR_ARG;
    int rc = FP_OK;
    for (int i = b - 1; i >= a && rc == FP_OK; i--) {
        const fp_op *o = &ops[i];
        R *g = (R *)grad[o->out];   // dead after this op: the elementwise shares go in place
        R *dx = (R *)grad[o->in[0]];
        const R *x = (const R *)val[o->in[0]];
        int64_t n = batch * width[o->out];
        int acc_p = accumulate || o->acc_params;
        if (!g) continue;           // nothing downstream depends on this op's output
        switch (o->kind) {
        case FP_OP_DENSE:
            if (o->act != FP_IDENTITY)
                rc = F(activation_backward)(g, g, (const R *)o->preact, (const R *)val[o->out], n,
                                            o->act, &o->p);
            if (rc == FP_OK)
                rc = F(dense_backward)(dx, (R *)o->dw, (R *)o->db, g, x, (const R *)o->w, batch,
                                       width[o->in[0]], width[o->out], acc_p, o->acc[0]);
            break;
        case FP_OP_ACT:
            if (!dx) break;
            rc = F(activation_backward)(g, g, x, (const R *)val[o->out], n, o->act, &o->p);
            if (rc == FP_OK) rc = F(deposit)(dx, g, n, o->acc[0]);
            break;
        case FP_OP_PRELU:
            rc = F(prelu_backward)(g, (R *)o->dw, g, x, (const R *)o->w, batch, width[o->out],
                                   o->n_w, acc_p);
            if (rc == FP_OK) rc = F(deposit)(dx, g, n, o->acc[0]);
            break;
        case FP_OP_ADD:
            for (int k = 0; k < o->n_in && rc == FP_OK; k++)
                rc = F(deposit)((R *)grad[o->in[k]], g, n, o->acc[k]);
            break;
        case FP_OP_MUL:
            rc = F(mul_backward)(dx, (R *)grad[o->in[1]], g, x, (const R *)val[o->in[1]], n,
                                 o->acc[0], o->acc[1]);
            break;
        case FP_OP_CONCAT:
            for (int k = 0, off = 0; k < o->n_in && rc == FP_OK; off += width[o->in[k]], k++)
                if (grad[o->in[k]])
                    rc = F(concat_backward)((R *)grad[o->in[k]], g, batch, width[o->out], off,
                                            width[o->in[k]], o->acc[k]);
            break;
        case FP_OP_DROPOUT:   // the shares below are computed in place on g, as ACT's
            if (!dx) break;
            if (o->active) rc = F(dropout_backward)(g, g, o->mask, n, o->prob);
            if (rc == FP_OK) rc = F(deposit)(dx, g, n, o->acc[0]);
            break;
        case FP_OP_LAYERNORM:
            rc = F(layernorm_backward)(dx ? g : NULL, (R *)o->dw, (R *)o->db, g, x,
                                       (const R *)o->mean, (const R *)o->rstd, (const R *)o->w,
                                       batch, width[o->out], acc_p);
            if (rc == FP_OK) rc = F(deposit)(dx, g, n, o->acc[0]);
            break;
        case FP_OP_BATCHNORM:
            rc = F(batchnorm_backward)(dx ? g : NULL, (R *)o->dw, (R *)o->db, (R *)o->ws, g, x,
                                       (const R *)o->mean, (const R *)o->rstd, (const R *)o->w,
                                       batch, width[o->out], o->active, acc_p);
            if (rc == FP_OK) rc = F(deposit)(dx, g, n, o->acc[0]);
            break;
        default:
            rc = FP_ERR_ARG;
        }
    }
    return rc;
}

// J and g = ∂J/∂z of the loss of kind FP_LOSS_* at z (batch, n_out), in one fused pass
int F(tape_loss)(double *loss, R *g, const R *z, int64_t batch, int64_t n_out, int loss_kind,
                 const int64_t *labels, const R *target)
{
    switch (loss_kind) {
    case FP_LOSS_SOFTMAX_XENT:
        return F(softmax_xent_forward_backward)(loss, g, z, labels, target, batch, n_out);
    case FP_LOSS_SIGMOID_BCE:
        return F(sigmoid_bce_forward_backward)(loss, g, z, target, batch * n_out);
    case FP_LOSS_MSE:
        return F(mse_forward_backward)(loss, g, z, target, batch * n_out);
    case FP_LOSS_GAUSSIAN_NLL:
        if (n_out % 2) return FP_ERR_ARG;
        return F(gaussian_nll_forward_backward)(loss, g, z, target, batch, n_out / 2);
    }
    return FP_ERR_ARG;
}

#endif
