/* fit's epoch in C (train.py's fit on the fused chain or a tape): consecutive batches of the
 * epoch's shuffled rows, each one step (network_train or the tape's passes, then the
 * optimizer's update of the model's one flat parameter run), the epoch's loss and accuracy
 * summed as fit sums them in Python: loss_sum += J · rows, correct += (count / rows) · rows,
 * so the bits are fit's own. */
#ifndef R
#define FP_TEMPLATE "fit.c"
#include "template.h"
#else

// index of the first maximum of row z (n); a NaN is the maximum, as NumPy's argmax has it
static int64_t F(argmax)(const R *z, int64_t n)
{
    int64_t best = 0;
    for (int64_t j = 0; j < n; j++) {
        if (z[j] != z[j]) return j;
        if (z[j] > z[best]) best = j;
    }
    return best;
}

// the optimizer's update of the flat run u, after a step's gradients are written
static int F(fit_update)(fp_fit_update *u)
{
    if (u->kind == FP_FIT_SGD)
        return F(sgd_step)((R *)u->param, (const R *)u->grad, (R *)u->s1, u->n, u->lr,
                           u->momentum, u->dampening, u->nesterov, u->weight_decay, 0);
    if (u->kind == FP_FIT_ADAM)
        return F(adam_step)((R *)u->param, (const R *)u->grad, (R *)u->s1, (R *)u->s2, u->n,
                            u->lr, u->beta1, u->beta2, u->eps, u->weight_decay, u->decoupled,
                            ++u->step);
    return FP_ERR_ARG;
}

// fit's running sums after the batch of rows labels[0..rows) with outputs z (rows, out)
static void F(fit_sums)(double *loss_sum, double *correct, double J, const R *z,
                        const int64_t *labels, int64_t rows, int64_t out)
{
    *loss_sum += J * (double)rows;
    if (!labels) return;
    int64_t hits = 0;
    for (int64_t i = 0; i < rows; i++)
        hits += F(argmax)(z + i * out, out) == labels[i];
    *correct += ((double)hits / (double)rows) * (double)rows;
}

// X is (n_rows, blocks[0].in) and labels (n_rows) or target (n_rows, out); batch k of this
// call is rows [first + k·batch, …) up to n_rows, for at most max_steps batches. *steps: the
// steps taken; *bad_row: the first row of a batch whose loss was not finite (its update not
// applied, the run stopped there) when stop_nonfinite, else -1. u->step counts Adam's steps.
int F(network_fit)(double *loss_sum, double *correct, int64_t *steps, int64_t *bad_row,
                   const fp_dense_block *blocks, int n_blocks, const R *X, const int64_t *labels,
                   const R *target, int64_t n_rows, int64_t first, int64_t batch,
                   int64_t max_steps, int loss_kind, const fp_loss_opts *opts, fp_fit_update *u,
                   int stop_nonfinite, R *g0, R *g1)
{
    if (!loss_sum || !correct || !steps || !bad_row || !blocks || n_blocks < 1 || !X || !u ||
        batch < 1 || first < 0 || (!labels && !target))
        return FP_ERR_ARG;
    int64_t in = blocks[0].in, out = blocks[n_blocks - 1].out;
    const R *z = (const R *)blocks[n_blocks - 1].y;
    *steps = 0;
    *bad_row = -1;
    for (int64_t a = first; a < n_rows && *steps < max_steps; a += batch) {
        int64_t rows = a + batch < n_rows ? batch : n_rows - a;
        double J = 0;
        int rc = F(network_train)(&J, blocks, n_blocks, X + a * in, rows, loss_kind,
                                  labels ? labels + a : NULL, target ? target + a * out : NULL,
                                  opts, g0, g1);
        if (rc) return rc;
        if (stop_nonfinite && !(J - J == 0)) {   // NaN or ±inf: no update
            *bad_row = a;
            return FP_OK;
        }
        if ((rc = F(fit_update)(u))) return rc;
        F(fit_sums)(loss_sum, correct, J, z, labels ? labels + a : NULL, rows, out);
        ++*steps;
    }
    return FP_OK;
}

// The same epoch on a tape of C ops [0, n_ops) (no Python op): each batch's rows of X
// (n_rows, width[in_v]) become the input value in_v (val[in_v] is left at the last batch),
// the output value out_v takes the loss (tape_loss) whose ∂J/∂z goes in grad[out_v], the
// backward writes the parameters' gradients, then u's update. val and grad are laid out for
// batch rows; a last, partial batch runs in a prefix of each buffer.
int F(tape_fit)(double *loss_sum, double *correct, int64_t *steps, int64_t *bad_row,
                const fp_op *ops, int n_ops, void **val, void *const *grad, const int64_t *width,
                int in_v, int out_v, const R *X, const int64_t *labels, const R *target,
                int64_t n_rows, int64_t first, int64_t batch, int64_t max_steps, int loss_kind,
                fp_fit_update *u, int stop_nonfinite)
{
    if (!loss_sum || !correct || !steps || !bad_row || !ops || n_ops < 1 || !val || !grad ||
        !width || in_v < 0 || out_v < 0 || !X || !u || batch < 1 || first < 0 ||
        (!labels && !target) || !grad[out_v])
        return FP_ERR_ARG;
    int64_t in = width[in_v], out = width[out_v];
    *steps = 0;
    *bad_row = -1;
    for (int64_t a = first; a < n_rows && *steps < max_steps; a += batch) {
        int64_t rows = a + batch < n_rows ? batch : n_rows - a;
        double J = 0;
        val[in_v] = (void *)(X + a * in);
        int rc = F(tape_forward)(ops, 0, n_ops, val, width, rows);
        if (rc == FP_OK)
            rc = F(tape_loss)(&J, (R *)grad[out_v], (const R *)val[out_v], rows, out, loss_kind,
                              labels ? labels + a : NULL, target ? target + a * out : NULL);
        if (rc) return rc;
        if (stop_nonfinite && !(J - J == 0)) {   // NaN or ±inf: no backward, no update
            *bad_row = a;
            return FP_OK;
        }
        if ((rc = F(tape_backward)(ops, 0, n_ops, val, grad, width, rows, 0))) return rc;
        if ((rc = F(fit_update)(u))) return rc;
        F(fit_sums)(loss_sum, correct, J, (const R *)val[out_v], labels ? labels + a : NULL, rows,
                    out);
        ++*steps;
    }
    return FP_OK;
}

#endif
