/* Inverted dropout: forward (mask drawn, kept units scaled by 1/(1 − p)) next to its backward.
 *
 * The mask comes from Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as
 * 1, 2, 3", SC 2011), a counter-based generator: block c of the stream is a pure function
 * of (key, c), so a call needs no state beyond the counter it starts at, and the lanes of a
 * chunk are independent (the round loop runs across 64 lanes, which vectorizes).
 * Element i of a call takes word k of block counter + 64·(i / 256) + l, where
 * r = i mod 256, k = r / 64, l = r mod 64; a call of n elements uses
 * 64·⌈n / 256⌉ blocks, the amount the caller advances its counter by.
 * A unit is kept when its 32-bit word is below keep·2³², so p has 2⁻³² resolution.
 * The mask is one byte per unit (0 or 1), never floats.
 *
 * gaussian_noise (DP-SGD's noise, fastprop.autodiff) draws standard normals from the same
 * stream: chunk c = j / 256 of normals j takes the 256 words of blocks counter + 64c, …, and
 * Box–Muller turns words r and r + 128 (r < 128) into normals r and r + 128 of the chunk. */
#ifndef R
#include <math.h>
#include "fastprop.h"
#include "fastmath.h"
#define PHILOX_LANES 64
#define PHILOX_CHUNK (4 * PHILOX_LANES)   /* units per chunk: four words per block */

// out[k·64 + l] = word k of Philox4x32-10 block (counter + l) under key
FP_INLINE void fp_philox_chunk(uint32_t *out, uint64_t key, uint64_t counter)
{
    uint32_t c0[PHILOX_LANES], c1[PHILOX_LANES], c2[PHILOX_LANES], c3[PHILOX_LANES];
    for (int l = 0; l < PHILOX_LANES; l++) {
        uint64_t c = counter + (uint64_t)l;
        c0[l] = (uint32_t)c;
        c1[l] = (uint32_t)(c >> 32);
        c2[l] = 0;
        c3[l] = 0;
    }
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int round = 0; round < 10; round++) {
        for (int l = 0; l < PHILOX_LANES; l++) {
            uint64_t p0 = (uint64_t)0xD2511F53u * c0[l], p1 = (uint64_t)0xCD9E8D57u * c2[l];
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[l] ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3[l] ^ k1;
            c1[l] = (uint32_t)p1;
            c3[l] = (uint32_t)p0;
            c0[l] = n0;
            c2[l] = n2;
        }
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    for (int l = 0; l < PHILOX_LANES; l++) {
        out[l] = c0[l];
        out[PHILOX_LANES + l] = c1[l];
        out[2 * PHILOX_LANES + l] = c2[l];
        out[3 * PHILOX_LANES + l] = c3[l];
    }
}

// the threshold of a kept unit: keep·2³², at most 2³² − 1 (p below 2⁻³² keeps nearly all)
FP_INLINE uint32_t fp_keep_threshold(double p)
{
    double t = (1.0 - p) * 4294967296.0;
    return t >= 4294967295.0 ? 4294967295u : (uint32_t)t;
}

// −2 log u for u ∈ (0, 1]: u = 2^k m with m ∈ [√½, √2) (musl's reduction), so log m =
// log1p(m − 1) with m − 1 ∈ [−0.29, 0.41]; fp_log1pf01's 2 atanh(s) is odd in s and its fit
// covers |s| ≤ 1/3, which holds there (|s| ≤ 0.18). No cancellation near u = 1 (k = 0).
FP_INLINE float fp_neg2log_f32(float u)
{
    uint32_t ix = fp_bits(u) + (0x3f800000u - 0x3f3504f3u);
    float k = (float)((int32_t)(ix >> 23) - 127);
    float m = fp_from_bits((ix & 0x007fffffu) + 0x3f3504f3u);
    return -2.0f * (k * 0.69314718f + fp_log1pf01(m - 1.0f));
}

FP_INLINE double fp_neg2log_f64(double u)
{
    return -2.0 * log(u);
}

#define FP_TEMPLATE "dropout.c"
#include "template.h"
#else

// x, y, mask are (n): mask = word < keep·2³², y = mask ? x·1/(1 − p) : 0 (y may alias x)
// p in [0, 1); p = 1 is all zeros (mask 0); the stream starts at block `counter`
FP_SIMD int F(dropout_forward)(R *y, uint8_t *mask, const R *x, int64_t n, double p,
                               uint64_t key, uint64_t counter)
{
    if (!y || !mask || !x || n < 0 || !(p >= 0 && p <= 1)) return FP_ERR_ARG;
    if (p == 1) {
        for (int64_t i = 0; i < n; i++) {
            mask[i] = 0;
            y[i] = 0;
        }
        return FP_OK;
    }
    uint32_t words[PHILOX_CHUNK], t = fp_keep_threshold(p);
    R scale = (R)1 / (R)(1 - p);   /* torch's: 1 / (1 − p) in the tensor's precision */
    for (int64_t a = 0; a < n; a += PHILOX_CHUNK) {
        int64_t m = n - a < PHILOX_CHUNK ? n - a : PHILOX_CHUNK;
        fp_philox_chunk(words, key, counter + (uint64_t)(a / PHILOX_CHUNK) * PHILOX_LANES);
        for (int64_t i = 0; i < m; i++) {
            uint8_t keep = words[i] < t;
            R xi = x[a + i];
            mask[a + i] = keep;
            y[a + i] = keep ? xi * scale : 0;
        }
    }
    return FP_OK;
}

// g, dx, mask are (n): dx = mask ? g·1/(1 − p) : 0 (dx may alias g); also R{y} from R{x}
FP_SIMD int F(dropout_backward)(R *dx, const R *g, const uint8_t *mask, int64_t n, double p)
{
    if (!dx || !g || !mask || n < 0 || !(p >= 0 && p <= 1)) return FP_ERR_ARG;
    R scale = p < 1 ? (R)1 / (R)(1 - p) : 0;
    for (int64_t i = 0; i < n; i++) {
        R gi = g[i];
        dx[i] = mask[i] ? gi * scale : 0;
    }
    return FP_OK;
}

// z (256): the chunk's normals from its Philox words w (256), Box–Muller on words r, r + 128:
// u₁ = (w_r/2 + ½)·2⁻³¹ ∈ (0, 1) (31 bits through a signed conversion, which vectorizes), so
// |z| ≤ √(−2 log 2⁻³²) = 6.66; θ = 2π(w_{r+128}·2⁻³² − ½) ∈ [−π, π), where fastmath's cos/sin hold
FP_INLINE void F(box_muller)(R *z, const uint32_t *w)
{
    const R two_pi = (R)6.283185307179586, inv31 = (R)4.656612873077393e-10;
    for (int r = 0; r < PHILOX_CHUNK / 2; r++) {
        R u1 = ((R)(int32_t)(w[r] >> 1) + (R)0.5) * inv31;
        R t = two_pi * (((R)(int32_t)(w[r + PHILOX_CHUNK / 2] >> 1) + (R)0.5) * inv31 - (R)0.5);
        R rho = SQRT(F(fp_neg2log)(u1));
        z[r] = rho * COS(t);
        z[r + PHILOX_CHUNK / 2] = rho * SIN(t);
    }
}

/* below this many normals a piece stays on the calling thread: a piece is ~1 ms of work, far
 * above a thread's start (fp_parallel_for starts its threads per call), which on a loaded
 * machine also waits for a core; smaller pieces measured slower than one thread there */
#define FP_NOISE_MIN_PIECE ((int64_t)1 << 19)

typedef struct {
    R *g;
    R scale;
    uint64_t key, counter;
    int64_t offset;
    int accumulate;
} F(noise_args);

// g[lo, hi) of gaussian_noise: normal j of the stream depends on j alone, so pieces on
// several threads (fp_parallel_for) give the bits of one pass
FP_SIMD static void F(noise_piece)(void *ctx, int64_t lo, int64_t hi)
{
    const F(noise_args) *a = ctx;
    uint32_t words[PHILOX_CHUNK];
    R z[PHILOX_CHUNK], s = a->scale;
    for (int64_t i = lo; i < hi;) {
        int64_t j = a->offset + i, r0 = j % PHILOX_CHUNK;
        int64_t m = hi - i < PHILOX_CHUNK - r0 ? hi - i : PHILOX_CHUNK - r0;
        fp_philox_chunk(words, a->key, a->counter + (uint64_t)(j / PHILOX_CHUNK) * PHILOX_LANES);
        F(box_muller)(z, words);
        R *gi = a->g + i;
        const R *zi = z + r0;
        if (a->accumulate)
            for (int64_t k = 0; k < m; k++) gi[k] += s * zi[k];
        else
            for (int64_t k = 0; k < m; k++) gi[k] = s * zi[k];
        i += m;
    }
}

// g is (n): g[i] = (accumulate ? g[i] : 0) + scale·z[offset + i], z the standard normals of the
// stream (key, counter) (see the top of this file); a call over [offset, offset + n) of the
// stream gives the same values however the range is split into calls (or threads)
int F(gaussian_noise)(R *g, int64_t n, double scale, uint64_t key, uint64_t counter,
                      int64_t offset, int accumulate)
{
    if (!g || n < 0 || offset < 0 || n > INT64_MAX - offset || !isfinite(scale)) return FP_ERR_ARG;
    F(noise_args) a = {.g = g, .scale = (R)scale, .key = key, .counter = counter, .offset = offset,
                       .accumulate = accumulate};
    fp_parallel_for(n, FP_NOISE_MIN_PIECE, F(noise_piece), &a);
    return FP_OK;
}

#endif
