/* Writes the float activations (forward and backward) and softmax cross-entropy of a fixed
 * sweep to stdout, raw. `make test` runs it from two builds, the dispatching one (AVX-512 on
 * a machine that has it) and one compiled for AVX2 + FMA alone, and compares the bytes: the
 * vector width must change no result (both contract a·b + c into the same FMAs). */
#include <stdio.h>
#include <stdlib.h>
#include "../fastprop.h"

int main(void)
{
    enum { N = 200003, B = 1000, C = 200 };
    float *x = malloc(N * sizeof *x), *g = malloc(N * sizeof *g), *d = malloc(N * sizeof *d);
    if (!x || !g || !d) return 1;
    for (int i = 0; i < N; i++) {
        x[i] = -40.0f + 80.0f * (float)i / (N - 1);
        g[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
    }
    fp_act_params p = {0.01, 1.0, 20.0};
    for (int act = 0; act < FP_N_ACTIVATIONS; act++) {
        if (activation_forward_f32(d, x, N, act, &p) != FP_OK) return 1;
        fwrite(d, sizeof *d, N, stdout);
        if (activation_backward_f32(d, g, x, NULL, N, act, &p) != FP_OK) return 1;
        fwrite(d, sizeof *d, N, stdout);
    }
    int64_t labels[B];
    for (int i = 0; i < B; i++) labels[i] = i % C;
    double loss;
    if (softmax_xent_forward_backward_f32(&loss, d, x, labels, NULL, B, C) != FP_OK) return 1;
    fwrite(d, sizeof *d, B * C, stdout);
    fwrite(&loss, sizeof loss, 1, stdout);
    free(x), free(g), free(d);
    return 0;
}
