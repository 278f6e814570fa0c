#define _POSIX_C_SOURCE 200809L  /* sysconf */
/* Fork-join for the memory-bound passes over a model's flat buffers (the optimizer
 * updates): one core cannot draw all the memory bandwidth, two draw more. Threads are
 * started per call and only for large n, where a thread's start (~20 µs) is a rounding
 * error; small calls never leave the calling thread (threads for small work lose, see
 * pytorch#80777). Pieces are disjoint, so the results are the same bits as one pass. */
#include <pthread.h>
#include <unistd.h>
#include "fastprop.h"

/* the most pieces one call is cut into (the caller's thread runs one); 0 until set: the
 * online CPU count, capped at FP_MAX_THREADS */
int fp_num_threads = 0;

int fp_threads(void)
{
    if (fp_num_threads < 1) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        fp_num_threads = n < 1 ? 1 : n > FP_MAX_THREADS ? FP_MAX_THREADS : (int)n;
    }
    return fp_num_threads;
}

typedef struct {
    fp_range_fn fn;
    void *ctx;
    int64_t lo, hi;
} fp_piece;

static void *run_piece(void *arg)
{
    fp_piece *p = arg;
    p->fn(p->ctx, p->lo, p->hi);
    return NULL;
}

void fp_parallel_for(int64_t n, int64_t min_piece, fp_range_fn fn, void *ctx)
{
    int64_t t = fp_threads();
    if (min_piece < 1) min_piece = 1;
    if (t > n / min_piece) t = n / min_piece;
    if (t <= 1) {
        fn(ctx, 0, n);
        return;
    }
    fp_piece pieces[FP_MAX_THREADS];
    pthread_t threads[FP_MAX_THREADS];
    int started[FP_MAX_THREADS] = {0};
    /* piece boundaries on multiples of 64 elements: whole cache lines and vectors */
    int64_t step = (n / t + 63) / 64 * 64;
    for (int64_t i = 0; i < t; i++) {
        int64_t lo = i * step, hi = i == t - 1 ? n : (i + 1) * step;
        pieces[i] = (fp_piece){fn, ctx, lo < n ? lo : n, hi < n ? hi : n};
    }
    for (int64_t i = 1; i < t; i++)
        started[i] = pthread_create(&threads[i], NULL, run_piece, &pieces[i]) == 0;
    run_piece(&pieces[0]);
    for (int64_t i = 1; i < t; i++) {
        if (started[i])
            pthread_join(threads[i], NULL);
        else
            run_piece(&pieces[i]);  /* no thread to be had: this one does it */
    }
}
