/* fit's epoch in C (train.py's fit on the fused chain): consecutive batches of the epoch's
 * shuffled rows, each one step (network_train, then the optimizer's update of the model's
 * one flat parameter run), the epoch's loss and accuracy summed as fit sums them in Python:
 * loss_sum += J · rows, correct += (count / rows) · rows, so the bits are fit's own. */
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
        if (u->kind == FP_FIT_SGD)
            rc = F(sgd_step)((R *)u->param, (const R *)u->grad, (R *)u->s1, u->n, u->lr,
                             u->momentum, u->dampening, u->nesterov, u->weight_decay, 0);
        else if (u->kind == FP_FIT_ADAM)
            rc = F(adam_step)((R *)u->param, (const R *)u->grad, (R *)u->s1, (R *)u->s2, u->n,
                              u->lr, u->beta1, u->beta2, u->eps, u->weight_decay, u->decoupled,
                              ++u->step);
        else
            rc = FP_ERR_ARG;
        if (rc) return rc;
        *loss_sum += J * (double)rows;
        if (labels) {
            int64_t hits = 0;
            for (int64_t i = 0; i < rows; i++)
                hits += F(argmax)(z + i * out, out) == labels[a + i];
            *correct += ((double)hits / (double)rows) * (double)rows;
        }
        ++*steps;
    }
    return FP_OK;
}

#endif
