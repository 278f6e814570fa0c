/* The tape: a flat list of ops over numbered values, planned in Python (fastprop/plan.py),
 * executed here with no Python per op. The forward runs the ops in order; the backward runs
 * them in reverse with the grad table of algorithm 6.2 of Deep Learning: each op hands every
 * input its share of the gradient, written by the first share and added by the others (the
 * op's acc flags), a value's gradient buffer is shared with its consumer's where the plan
 * aliases them (then the share is computed in place), and an input of the model has none
 * (its ∇x is never formed). Parameter gradients are written, or added where the op's
 * acc_params says (a shared module's second node) or the call asks for it.
 *
 * The R-passes (Pearlmutter's R-operator, R{·} = ∂/∂r (·)(θ + r v) at r = 0) run the same ops
 * on an unfused tape: the R-forward carries rval[v] = R{val[v]} beside each value (NULL: a
 * value that does not move), the R-backward the grad table of g and a second one of R{g} in
 * buffers planned alike, and adds every R{∂J/∂θ} into the flat hv (laid out as v). A NULL
 * grad table is the Gauss–Newton pass: the terms of g dropped, R{g} back-propagated as a
 * gradient. */
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

static void F(zero_cols)(R *y, int64_t batch, int64_t width, int64_t off, int64_t w)
{
    for (int64_t i = 0; i < batch; i++) memset(y + i * width + off, 0, (size_t)w * sizeof(R));
}

// R-forward of ops [a, b): val as tape_forward, rval[v] = R{val[v]} along the direction v of the
// parameters (flat; op o's at v + o->off_w, v + o->off_b), NULL where val[v] does not move.
// Dense ops carry no activation (their own ACT op follows); BatchNorm1d normalizes by its
// running statistics (eval).
int F(tape_rforward)(const fp_op *ops, int a, int b, void *const *val, void *const *rval,
                     const int64_t *width, int64_t batch, const R *v)
{
    if (!ops || !val || !rval || !width || !v || batch < 0 || a < 0 || b < a) return FP_ERR_ARG;
    int rc = FP_OK;
    for (int i = a; i < b && rc == FP_OK; i++) {
        const fp_op *o = &ops[i];
        R *y = (R *)val[o->out], *ry = (R *)rval[o->out];
        const R *x = (const R *)val[o->in[0]], *rx = (const R *)rval[o->in[0]];
        const R *vw = o->off_w >= 0 ? v + o->off_w : NULL, *vb = o->off_b >= 0 ? v + o->off_b : NULL;
        int64_t in = width[o->in[0]], out = width[o->out], n = batch * out;
        if ((o->w && !vw) || (o->b && !vb)) return FP_ERR_ARG;
        switch (o->kind) {
        case FP_OP_DENSE:   // (batch, in) -> (batch, out): a = x Wᵀ + b;  R{a} = x Vᵀ + v_b + R{x} Wᵀ
            if (o->act != FP_IDENTITY || !ry) return FP_ERR_ARG;
            rc = F(dense_forward)(y, NULL, x, (const R *)o->w, (const R *)o->b, batch, in, out,
                                  FP_IDENTITY, &o->p);
            if (rc == FP_OK)
                rc = F(dense_forward)(ry, NULL, x, vw, vb, batch, in, out, FP_IDENTITY, &o->p);
            if (rc == FP_OK && rx)
                rc = F(gemm)('N', 'T', batch, out, in, 1, rx, (const R *)o->w, 1, ry);
            break;
        case FP_OP_ACT:     // y = f(x);  R{y} = f′(x) R{x}
            if (ry && !rx) return FP_ERR_ARG;
            rc = F(activation_forward)(y, x, n, o->act, &o->p);
            if (rc == FP_OK && ry) rc = F(activation_backward)(ry, rx, x, y, n, o->act, &o->p);
            break;
        case FP_OP_PRELU:   // R{y} = x > 0 ? R{x} : a R{x} + x v_a
            if (!ry) return FP_ERR_ARG;
            rc = F(prelu_forward)(y, x, (const R *)o->w, batch, out, o->n_w);
            if (rc == FP_OK)
                rc = F(prelu_rforward)(ry, rx, x, (const R *)o->w, vw, batch, out, o->n_w);
            break;
        case FP_OP_ADD:     // R{Σ x_k} = Σ R{x_k} over the inputs that move
            if (o->n_in > FP_OP_MAX_IN) return FP_ERR_ARG;
            {
                const R *xs[FP_OP_MAX_IN];
                int k_r = 0;
                for (int k = 0; k < o->n_in; k++) {
                    xs[k] = (const R *)val[o->in[k]];
                    if (rval[o->in[k]]) k_r++;
                }
                rc = F(add_forward)(y, xs, o->n_in, n);
                if (rc != FP_OK || !ry) break;
                if (!k_r) return FP_ERR_ARG;
                for (int k = 0, j = 0; k < o->n_in; k++)
                    if (rval[o->in[k]]) xs[j++] = (const R *)rval[o->in[k]];
                rc = F(add_forward)(ry, xs, k_r, n);
            }
            break;
        case FP_OP_MUL:     // R{x₀ ⊙ x₁} = R{x₀} ⊙ x₁ + x₀ ⊙ R{x₁}
            {
                const R *x1 = (const R *)val[o->in[1]], *rx1 = (const R *)rval[o->in[1]];
                rc = F(mul_forward)(y, x, x1, n);
                if (rc != FP_OK || !ry) break;
                if (!rx && !rx1) return FP_ERR_ARG;
                if (rx) rc = F(mul_forward)(ry, rx, x1, n);
                if (rc == FP_OK && rx1)   // ry (+)= R{x₁} ⊙ x₀
                    rc = F(mul_backward)(NULL, ry, rx1, x, x, n, 0, rx != NULL);
            }
            break;
        case FP_OP_CONCAT:  // R{[x₀, x₁, ...]} = [R{x₀}, R{x₁}, ...], zeros where x_k does not move
            for (int k = 0, off = 0; k < o->n_in && rc == FP_OK; off += width[o->in[k]], k++) {
                int64_t w = width[o->in[k]];
                rc = F(concat_forward)(y, (const R *)val[o->in[k]], batch, out, off, w);
                if (rc != FP_OK || !ry) continue;
                if (rval[o->in[k]])
                    rc = F(concat_forward)(ry, (const R *)rval[o->in[k]], batch, out, off, w);
                else
                    F(zero_cols)(ry, batch, out, off, w);
            }
            break;
        case FP_OP_DROPOUT: // linear: the mask applies to R{x} as to x (the stream as tape_forward)
            if (ry && !rx) return FP_ERR_ARG;
            if (!o->active) {
                memcpy(y, x, (size_t)n * sizeof(R));
                if (ry) memcpy(ry, rx, (size_t)n * sizeof(R));
            } else if (!o->rng || !o->mask) {
                rc = FP_ERR_ARG;
            } else {
                rc = F(dropout_forward)(y, o->mask, x, n, o->prob, o->rng[0], o->rng[1]);
                o->rng[1] += FP_DROPOUT_BLOCKS(n);
                if (rc == FP_OK && ry) rc = F(dropout_backward)(ry, rx, o->mask, n, o->prob);
            }
            break;
        case FP_OP_LAYERNORM:
            if (ry)
                rc = F(layernorm_rforward)(y, ry, x, rx, (const R *)o->w, (const R *)o->b, vw, vb,
                                           batch, out, o->eps);
            else
                rc = F(layernorm_forward)(y, (R *)o->mean, (R *)o->rstd, x, (const R *)o->w,
                                          (const R *)o->b, batch, out, o->eps);
            break;
        case FP_OP_BATCHNORM:   // eval: a fixed affine map per column, its statistics first
            if (o->active || o->track || !o->run_mean || !o->run_var) return FP_ERR_ARG;
            rc = F(batchnorm_forward)(y, (R *)o->mean, (R *)o->rstd, (R *)o->run_mean,
                                      (R *)o->run_var, x, (const R *)o->w, (const R *)o->b,
                                      batch, out, o->eps, 0.0, 0);
            if (rc == FP_OK && ry)
                rc = F(batchnorm_rforward)(y, ry, x, rx, (const R *)o->mean, (const R *)o->rstd,
                                           (const R *)o->w, (const R *)o->b, vw, vb, batch, out);
            break;
        default:
            rc = FP_ERR_ARG;
        }
    }
    return rc;
}

// R-backward of ops [a, b), the last first: grad[v] = ∂J/∂val[v] as tape_backward (grad NULL:
// the Gauss–Newton pass) and rgrad[v] = R{grad[v]} (NULL: not needed), each share written or
// added by the op's acc flags, in place where the plan aliases; R{∂J/∂θ} added into hv
int F(tape_rbackward)(const fp_op *ops, int a, int b, void *const *val, void *const *rval,
                      void *const *grad, void *const *rgrad, const int64_t *width, int64_t batch,
                      const R *v, R *hv)
{
    if (!ops || !val || !rval || !rgrad || !width || !v || !hv || batch < 0 || a < 0 || b < a)
        return FP_ERR_ARG;
    int rc = FP_OK;
    for (int i = b - 1; i >= a && rc == FP_OK; i--) {
        const fp_op *o = &ops[i];
        R *g = grad ? (R *)grad[o->out] : NULL, *rg = (R *)rgrad[o->out];
        R *dx = grad ? (R *)grad[o->in[0]] : NULL, *rdx = (R *)rgrad[o->in[0]];
        const R *x = (const R *)val[o->in[0]], *rx = (const R *)rval[o->in[0]];
        const R *y = (const R *)val[o->out];
        const R *vw = o->off_w >= 0 ? v + o->off_w : NULL;
        R *hvw = o->off_w >= 0 ? hv + o->off_w : NULL, *hvb = o->off_b >= 0 ? hv + o->off_b : NULL;
        int64_t in = width[o->in[0]], out = width[o->out], n = batch * out;
        if (!rg) continue;   // nothing downstream depends on this op's output
        if ((o->w && !vw) || (o->b && !hvb)) return FP_ERR_ARG;
        switch (o->kind) {
        case FP_OP_DENSE:   // Hv_W += R{g}ᵀ x + gᵀ R{x};  Hv_b += Σ R{g};  dx = g W;  R{dx} = R{g} W + g V
            rc = F(dense_backward)(rdx, hvw, hvb, rg, x, (const R *)o->w, batch, in, out, 1,
                                   o->acc[0]);
            if (!g) break;
            if (rc == FP_OK && rx) rc = F(gemm)('T', 'N', out, in, batch, 1, g, rx, 1, hvw);
            if (rc == FP_OK && dx)
                rc = F(gemm)('N', 'N', batch, in, out, 1, g, (const R *)o->w, o->acc[0] ? 1 : 0, dx);
            if (rc == FP_OK && rdx) rc = F(gemm)('N', 'N', batch, in, out, 1, g, vw, 1, rdx);
            break;
        case FP_OP_ACT:     // dx = g f′(x);  R{dx} = R{g} f′(x) + g f″(x) R{x}, in place
            if (!rdx) break;
            if (g && rx) {
                rc = F(activation_rbackward)(g, rg, g, rg, rx, x, n, o->act, &o->p);
            } else {
                if (g) rc = F(activation_backward)(g, g, x, y, n, o->act, &o->p);
                if (rc == FP_OK) rc = F(activation_backward)(rg, rg, x, y, n, o->act, &o->p);
            }
            if (rc == FP_OK && g) rc = F(deposit)(dx, g, n, o->acc[0]);
            if (rc == FP_OK) rc = F(deposit)(rdx, rg, n, o->acc[0]);
            break;
        case FP_OP_PRELU:   // R{dx} = f′ R{g} + [x ≤ 0] v_a g;  Hv_a += Σ_{x ≤ 0} (R{g} x + g R{x})
            rc = F(prelu_rbackward)(g, rg, hvw, g, rg, x, rx, (const R *)o->w, vw, batch, out,
                                    o->n_w, 1);
            if (rc == FP_OK && g) rc = F(deposit)(dx, g, n, o->acc[0]);
            if (rc == FP_OK) rc = F(deposit)(rdx, rg, n, o->acc[0]);
            break;
        case FP_OP_ADD:
            for (int k = 0; k < o->n_in && rc == FP_OK; k++) {
                if (g) rc = F(deposit)((R *)grad[o->in[k]], g, n, o->acc[k]);
                if (rc == FP_OK) rc = F(deposit)((R *)rgrad[o->in[k]], rg, n, o->acc[k]);
            }
            break;
        case FP_OP_MUL:     // R{dx₀} = R{g} ⊙ x₁ + g ⊙ R{x₁};  R{dx₁} = R{g} ⊙ x₀ + g ⊙ R{x₀}
            {
                const R *x1 = (const R *)val[o->in[1]], *rx1 = (const R *)rval[o->in[1]];
                R *dx1 = grad ? (R *)grad[o->in[1]] : NULL, *rdx1 = (R *)rgrad[o->in[1]];
                rc = F(mul_backward)(rdx, rdx1, rg, x, x1, n, o->acc[0], o->acc[1]);
                if (!g) break;
                if (rc == FP_OK) rc = F(mul_backward)(dx, dx1, g, x, x1, n, o->acc[0], o->acc[1]);
                if (rc == FP_OK && rdx && rx1) rc = F(mul_backward)(rdx, NULL, g, x, rx1, n, 1, 0);
                if (rc == FP_OK && rdx1 && rx) rc = F(mul_backward)(NULL, rdx1, g, rx, x1, n, 0, 1);
            }
            break;
        case FP_OP_CONCAT:
            for (int k = 0, off = 0; k < o->n_in && rc == FP_OK; off += width[o->in[k]], k++) {
                int64_t w = width[o->in[k]];
                if (g && grad[o->in[k]])
                    rc = F(concat_backward)((R *)grad[o->in[k]], g, batch, out, off, w, o->acc[k]);
                if (rc == FP_OK && rgrad[o->in[k]])
                    rc = F(concat_backward)((R *)rgrad[o->in[k]], rg, batch, out, off, w, o->acc[k]);
            }
            break;
        case FP_OP_DROPOUT: // linear: g and R{g} masked alike, in place
            if (!rdx) break;
            if (o->active && g) rc = F(dropout_backward)(g, g, o->mask, n, o->prob);
            if (o->active && rc == FP_OK) rc = F(dropout_backward)(rg, rg, o->mask, n, o->prob);
            if (rc == FP_OK && g) rc = F(deposit)(dx, g, n, o->acc[0]);
            if (rc == FP_OK) rc = F(deposit)(rdx, rg, n, o->acc[0]);
            break;
        case FP_OP_LAYERNORM:
            rc = F(layernorm_rbackward)(dx ? g : NULL, rdx ? rg : NULL, hvw, hvb, g, rg, x, rx,
                                        (const R *)o->w, vw, batch, out, o->eps, 1);
            if (rc == FP_OK && g) rc = F(deposit)(dx, g, n, o->acc[0]);
            if (rc == FP_OK) rc = F(deposit)(rdx, rg, n, o->acc[0]);
            break;
        case FP_OP_BATCHNORM:
            if (o->active) return FP_ERR_ARG;
            rc = F(batchnorm_rbackward)(dx ? g : NULL, rdx ? rg : NULL, hvw, hvb, g, rg, x, rx,
                                        (const R *)o->mean, (const R *)o->rstd, (const R *)o->w,
                                        vw, batch, out, 1);
            if (rc == FP_OK && g) rc = F(deposit)(dx, g, n, o->acc[0]);
            if (rc == FP_OK) rc = F(deposit)(rdx, rg, n, o->acc[0]);
            break;
        default:
            rc = FP_ERR_ARG;
        }
    }
    return rc;
}

#endif
