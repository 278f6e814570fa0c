/* Branch-free float math that gcc vectorizes.
 *
 * libm's expf, tanhf, erff, log1pf, sinf and cosf are opaque calls, so a loop calling
 * them runs one element at a time. These are plain arithmetic on floats and their bits: inlined into a
 * loop, gcc turns it into SSE/AVX2/AVX-512 code (each target_clones clone of a kernel
 * gets its own width, see FP_SIMD in fastprop.h). Every lane computes every branch and
 * a select keeps one, so there is no control flow in the loop.
 *
 * Accuracy (csrc/tests/test_kernels.c measures it against double libm): 2.5 ulp or less,
 * 8.5 for Φ; relative error below 6e-7 wherever the result is a normal float. Results below
 * FLT_MIN are flushed to 0 rather than computed as subnormals (slow on x86).
 * NaN stays NaN, ±inf gives the limit.
 *
 * Selects: `c ? a : b` where a or b is computed arithmetic is not written as a ternary.
 * gcc moves the arithmetic into a branch arm, and with -ftrapping-math (the default)
 * it will not execute a float operation speculatively, so the loop keeps its branch
 * and stays scalar. fp_selectf blends the bits instead: both sides are computed, no
 * branch, and gcc emits a vector compare and blend.
 *
 * The double twins at the end use libm: double is the accuracy path. */
#ifndef FASTPROP_FASTMATH_H
#define FASTPROP_FASTMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* always inlined: a helper left out of line would be compiled for the baseline ISA only,
 * not for the AVX2/AVX-512 clone of the kernel calling it, and would stop the vectorizer */
#if defined(__GNUC__)
#define FP_INLINE static inline __attribute__((always_inline))
#else
#define FP_INLINE static inline
#endif

/* Reductions keep FP_LANES independent partial sums (or maxima): lane k takes elements
 * k, k + FP_LANES, … So the vectorizer needs no reassociation (which it may not do
 * without -ffast-math) and the order of the additions is fixed by the code, the same
 * in every clone. 16 floats fill one AVX-512 register. */
#define FP_LANES 16

// the bits of a float, and back (memcpy is the defined way to type-pun; it compiles to nothing)
FP_INLINE uint32_t fp_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

FP_INLINE float fp_from_bits(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

// c ? a : b, blending the bits so both sides are computed and no branch is left
FP_INLINE float fp_selectf(int c, float a, float b)
{
    uint32_t m = -(uint32_t)(c != 0);
    return fp_from_bits((fp_bits(a) & m) | (fp_bits(b) & ~m));
}

// c ? a : b for double, the same blend
FP_INLINE double fp_select(int c, double a, double b)
{
    uint64_t ua, ub, m = -(uint64_t)(c != 0);
    memcpy(&ua, &a, sizeof ua);
    memcpy(&ub, &b, sizeof ub);
    ua = (ua & m) | (ub & ~m);
    memcpy(&a, &ua, sizeof a);
    return a;
}

// exp(r) for x = hi + lo = n ln 2 + r, n = round(x/ln 2), |r| ≤ ln2/2; *nbits = n (two's complement)
// lo is a small correction carried apart from hi (fp_phif needs x²/2 to more than float precision).
FP_INLINE float fp_exp_reduced(float hi, float lo, uint32_t *nbits)
{
    /* adding 1.5·2²³ rounds x/ln 2 to an integer held in the low mantissa bits of k */
    const float shifter = 0x1.8p23f;
    float k = (hi + lo) * 0x1.715476p+0f + shifter;
    float n = k - shifter;
    *nbits = fp_bits(k) - fp_bits(shifter);
    /* Cody–Waite: ln 2 = C1 + C2 with C1 = 0.693359375 of 9 bits, so n·C1 and hi − n·C1 are exact */
    float r = (hi - n * 0.693359375f) - n * -2.12194440e-4f + lo;
    /* near-minimax on [−ln2/2, ln2/2], relative error 3e-9: exp(r) ≈ 1 + r + r²q(r), degree 6;
     * q in Estrin's form, pairs of terms in parallel: a shorter chain of dependent operations
     * than Horner's, so the loop's iterations overlap more */
    float r2 = r * r;
    float q = (0.49999994f + r * 0.16666521f) +
              r2 * ((0.041668389f + r * 0.0083687101f) + r2 * 0.0013814613f);
    return 1.0f + (r + r2 * q);
}

// exp(hi + lo) = 2^n exp(r), any hi + lo: below −87.34 it gives 0, above 88.72 +inf
FP_INLINE float fp_expf_hilo(float hi, float lo)
{
    float x = hi + lo;
    uint32_t nbits;
    float p = fp_exp_reduced(hi, lo, &nbits);
    /* 2^n p: n added to the exponent field of p ∈ [0.7, 1.5]. For every x the selects below keep,
     * that field stays in [1, 254]: where n = −126, x ≥ −126 ln 2 + 4e-6 so r > 0 and p ≥ 1; where
     * n = 128, x ≤ 128 ln 2 − 7e-6 so p < 1. Unsigned arithmetic: elsewhere it wraps, never UB. */
    float y = fp_from_bits(fp_bits(p) + (nbits << 23));
    /* the ends, selected on x (no clamp is needed before: whatever was computed is replaced) */
    y = fp_selectf(x < -87.33654022216797f, 0.0f, y);  /* below −126 ln 2: subnormal, flushed to 0 */
    y = fp_selectf(x <= 88.72283172607422f, y, x + INFINITY);  /* overflow: +inf; NaN: x + inf is NaN */
    return y;
}

// exp(x); x < −87.34 gives 0, x > 88.72 gives +inf (x + (−0) is exactly x, so the lo terms fold away)
FP_INLINE float fp_expf(float x)
{
    return fp_expf_hilo(x, -0.0f);
}

// exp(hi + lo) for hi + lo ≤ 0 (or NaN), what sigmoid, tanh, Φ and the Gaussian need: nothing
// overflows, so 2^n (n ∈ [−126, 0] where kept) is one normal float and a multiply, which also
// carries NaN through; one select fewer than fp_expf_hilo
FP_INLINE float fp_expf_nonpos_hilo(float hi, float lo)
{
    float x = hi + lo;
    uint32_t nbits;
    float p = fp_exp_reduced(hi, lo, &nbits);
    float y = p * fp_from_bits((nbits + 127) << 23);
    return fp_selectf(x < -87.33654022216797f, 0.0f, y);  /* subnormal, flushed to 0 */
}

// exp(x) for x ≤ 0 (or NaN)
FP_INLINE float fp_expf_nonpos(float x)
{
    return fp_expf_nonpos_hilo(x, -0.0f);
}

// log1p(u) for u ∈ [0, 1]: s = u/(2 + u) ∈ [0, 1/3], log1p(u) = 2 atanh(s) = 2s + s³Q(s²)
// (relative accuracy holds down to the tiniest u: nothing is subtracted from 1)
FP_INLINE float fp_log1pf01(float u)
{
    float s = u / (2.0f + u), s2 = s * s;
    /* near-minimax on s² ∈ [0, 1/9], relative error 4e-9; the series would be 2/3, 2/5, 2/7, … */
    float q = 0.66666418f + s2 * (0.40021527f + s2 * (0.28001806f + s2 * 0.28011987f));
    return 2.0f * s + s * s2 * q;
}

// σ(x) = 1/(1 + e^−x), from e = exp(−|x|) ≤ 1 so nothing overflows: σ = e/(1 + e) for x < 0, 1 − that for x ≥ 0
// (1 − small has a single rounding near 1, where σ′ = σ(1 − σ) computed from σ magnifies any error)
FP_INLINE float fp_sigmoidf(float x)
{
    float e = fp_expf_nonpos(-fabsf(x));
    float q = e / (1.0f + e);
    return fp_selectf(x >= 0, 1.0f - q, q);
}

// tanh(x) = x + x³P(x²) for |x| < 0.55, else sign(x)(1 − 2e/(1 + e)) with e = exp(−2|x|)
// (the exp form loses relative accuracy to cancellation near 0, the series converges slowly far from
// it; 1 − small rounds once near ±1, where tanh′ = 1 − tanh² computed from tanh magnifies any error)
FP_INLINE float fp_tanhf(float x)
{
    float ax = fabsf(x), x2 = x * x;
    /* near-minimax on [0, 0.55], relative error 1e-9; the series would be −1/3, 2/15, −17/315, … */
    float p = -0.33333316f + x2 * (0.13332586f + x2 * (-0.053852309f + x2 * (0.021071680f +
              x2 * -0.0062742396f)));
    float small = x + x * x2 * p;
    float e = fp_expf_nonpos(-2.0f * ax);  /* 0 for large |x|: saturates to ±1 */
    float big = 1.0f - 2.0f * e / (1.0f + e);
    big = fp_selectf(x < 0, -big, big);
    return fp_selectf(ax < 0.55f, small, big);
}

// x² split as xh² + xl(|x| + xh) with xh = |x| cut to 12 significant bits, so xh² is exact:
// exp(−x²/2) then keeps its relative accuracy where x²/2 is large (a rounded x² would lose 1e-5)
FP_INLINE void fp_half_square(float ax, float *hi, float *lo)
{
    float xh = fp_from_bits(fp_bits(ax) & 0xfffff000u);
    float xl = ax - xh;
    *hi = -0.5f * (xh * xh);
    *lo = -0.5f * (xl * (ax + xh));
}

// exp(−x²/2), the Gaussian kernel (0 for |x| > 13.2, below FLT_MIN)
FP_INLINE float fp_gaussf(float x)
{
    float ax = fabsf(x), hi, lo;
    ax = fp_selectf(ax > 14.0f, 14.0f, ax);  /* ±inf would make xl = inf − inf; exp(−98) is 0 anyway */
    fp_half_square(ax, &hi, &lo);
    return fp_expf_nonpos_hilo(hi, lo);
}

// Φ(x) = ½ erfc(−x/√2): q = ½ erfc(|x|/√2) is Φ(−|x|), so Φ(x) = q for x < 0 and 1 − q for x ≥ 0
// erfc(z) = t exp(−z² + P(t)), t = 1/(1 + z/2): "erfcc" of Numerical Recipes, a Chebyshev fit
// with fractional error < 1.2e-7 everywhere, so the negative tail is relatively accurate too.
FP_INLINE float fp_phif(float x)
{
    float ax = fabsf(x), hi, lo;
    ax = fp_selectf(ax > 14.0f, 14.0f, ax);  /* Φ(−14) ≈ 8e-45 is 0 in float; NaN stays NaN */
    float z = ax * 0x1.6a09e6p-1f;  /* |x|/√2 */
    float t = 1.0f / (1.0f + 0.5f * z);
    /* P(t), degree 9, in Estrin's form (as in fp_exp_reduced): 4 dependent steps instead of 9 */
    float t2 = t * t, t4 = t2 * t2, t8 = t4 * t4;
    float p = ((-1.26551223f + t * 1.00002368f) + t2 * (0.37409196f + t * 0.09678418f)) +
              t4 * ((-0.18628806f + t * 0.27886807f) + t2 * (-1.13520398f + t * 1.48851587f)) +
              t8 * (-0.82215223f + t * 0.17087277f);
    fp_half_square(ax, &hi, &lo);  /* −z² = −x²/2 = hi + lo */
    float q = 0.5f * t * fp_expf_nonpos_hilo(hi, lo + p);  /* p < 0 */
    return fp_selectf(x < 0, q, 1.0f - q);
}

/* sin and cos reduce x = n π/2 + r with π/2 in four parts (Cody–Waite), the first three of
 * 11 bits or less: for |n| < 2¹³ every product n·Pᵢ but the last is exact, and so is the
 * difference up to the third, so r keeps its relative accuracy even next to a zero of sin
 * or cos. Hence |x| ≤ FP_TRIG_MAX = 8192 (|n| ≤ 5216); callers take libm beyond it
 * (activation.c checks each block). */
#define FP_TRIG_MAX 8192.0f

// r = x − n π/2 with n = round(2x/π), |r| ≤ π/4 (+ 5e-4 where 2x/π rounds the other way); *q = n mod 4
FP_INLINE float fp_trig_reduce(float x, uint32_t *q)
{
    const float shifter = 0x1.8p23f;
    float k = x * 0x1.45f306p-1f + shifter;  /* 2x/π rounded to an integer in the low bits of k */
    float n = k - shifter;
    *q = fp_bits(k) & 3;  /* the low bits of n, two's complement: n mod 4 */
    return (((x - n * 0x1.92p0f) - n * 0x1.fb4p-12f) - n * 0x1.444p-24f) - n * 0x1.68c234p-39f;
}

// sin r = r + r³S(r²) for |r| ≤ π/4, near-minimax, relative error 4e-9
FP_INLINE float fp_sin_poly(float r)
{
    float z = r * r;
    return r + r * z * (-0.16666654f + z * (0.0083320998f + z * -0.00019506943f));
}

// cos r = 1 − r²/2 + r⁴C(r²) for |r| ≤ π/4, near-minimax, relative error 1.3e-10
FP_INLINE float fp_cos_poly(float r)
{
    float z = r * r;
    return (1.0f - 0.5f * z) + z * z * (0.041666646f + z * (-0.0013887234f + z * 2.4423625e-05f));
}

// cos x, |x| ≤ FP_TRIG_MAX: by n mod 4, cos r, −sin r, −cos r, sin r
FP_INLINE float fp_cosf(float x)
{
    uint32_t q;
    float r = fp_trig_reduce(x, &q);
    float v = fp_selectf(q & 1, fp_sin_poly(r), fp_cos_poly(r));
    return fp_from_bits(fp_bits(v) ^ (((q + 1) & 2) << 30));  /* sign bit set for q = 1, 2 */
}

// sin x, |x| ≤ FP_TRIG_MAX: by n mod 4, sin r, cos r, −sin r, −cos r
FP_INLINE float fp_sinf(float x)
{
    uint32_t q;
    float r = fp_trig_reduce(x, &q);
    float v = fp_selectf(q & 1, fp_cos_poly(r), fp_sin_poly(r));
    return fp_from_bits(fp_bits(v) ^ ((q & 2) << 30));  /* sign bit set for q = 2, 3 */
}

/* ---- double twins on libm: the accuracy path, the same formulas ---- */

// σ(x) from e = exp(−|x|), as fp_sigmoidf
FP_INLINE double fp_sigmoid(double x)
{
    double e = exp(-fabs(x));
    double q = e / (1 + e);
    return fp_select(x >= 0, 1 - q, q);
}

// exp(−x²/2)
FP_INLINE double fp_gauss(double x)
{
    return exp(-0.5 * x * x);
}

// Φ(x) = ½ erfc(−x/√2), relatively accurate in the negative tail where ½(1 + erf) cancels
FP_INLINE double fp_phi(double x)
{
    return 0.5 * erfc(-x * 0.70710678118654752440);
}

#endif
