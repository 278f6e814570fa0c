/* GEMM for small matrices, without the BLAS.
 *
 * An OpenBLAS call on a 32×64×64 product costs ~5.5 µs, mostly call overhead, packing and
 * thread hand-off; the arithmetic is ~3 µs of one core at full rate. Below a size threshold
 * gemm_f32/f64 (blas.c) come here instead: one pass, no heap, no threads.
 *
 * C (m, n) = alpha op(A) op(B) + beta C, row-major and contiguous as gemm_*: A is (m, k),
 * or (k, m) when ta is 'T'; B is (k, n), or (n, k) when tb is 'T'. NN, NT and TN are
 * handled here; TT, and anything above the threshold, goes to the BLAS.
 *
 * Register blocking: C is cut into tiles of up to MR = 6 rows by NR = 2 vectors of
 * columns. A tile's 12 vector accumulators stay in registers over the k loop; each step
 * broadcasts 6 elements of op(A) and loads one NR-wide row of a panel of op(B). The panel
 * is B itself (row stride n) for 'N'; for 'T', and for the last, narrower panel, it is
 * packed into a zero-padded kc × NR stack buffer (16 KB), k being done in chunks of
 * SG_PANEL_K. The rows of C are shared evenly between tiles (32 = 6 6 5 5 5 5), as a
 * tile of few rows has too few accumulators to hide the FMA latency.
 *
 * Vectors are gcc vector-extension variables, at three widths from one source (this file
 * includes itself once per width; see the sections below): 64 bytes (16 floats / 8 doubles,
 * 12 zmm accumulators) for AVX-512, 32 bytes (12 ymm accumulators) for AVX2, 16 bytes
 * (SSE2, NEON) otherwise. gcc compiles a vector wider than the target's by splitting it,
 * but builds each broadcast through memory, 50× slower, so the width follows the ISA: the
 * driver is compiled three times (FP_SIMD_GEMM: target_clones, AVX-512, AVX2+FMA and
 * baseline x86-64) and takes the kernel of the clone the loader picked. Elsewhere there is
 * one build, 16 bytes wide.
 *
 * Rounding: each C element is alpha·(Σ_p a_ip b_pj) [+ beta·c_ij], summed over p in order.
 * This file contracts a·b + c into an FMA where the ISA has one (the AVX-512 and AVX2 clones), so the
 * AVX-512, AVX2 and baseline builds differ in the last bits, as the BLAS's kernels do.
 *
 * alpha, beta as the BLAS: beta == 0 never reads C (it may hold NaN), alpha == 0 reads
 * neither A nor B (C = beta C). */
#ifndef R
/* ------------------------------------------------------------------ common part */
#include <stdint.h>
#include <string.h>
#include "fastprop.h"
#include "small_gemm.h"

#if defined(__GNUC__)
#define FP_SMALL_GEMM 1
/* the vector arguments are only ever passed between always-inlined helpers */
#pragma GCC diagnostic ignored "-Wpsabi"
/* acc += a·b as one FMA where the ISA has it: on AVX2 a separate mul + add costs up to
 * 25% of the throughput. In this file only: the elementwise kernels keep -std=c11's
 * -ffp-contract=off. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT ON
#else
#pragma GCC optimize("fp-contract=fast")
#endif
#define SG_INLINE static inline __attribute__((always_inline))
#else  /* no vector extensions: every product goes to the BLAS */
#define FP_SMALL_GEMM 0
#define SG_INLINE static inline
#endif

/* Runtime dispatch of the driver on x86-64 Linux (glibc ifunc), and SG_WIDE_CPU(), true
 * exactly in the clone that was compiled for AVX2. Not fastprop.h's FP_SIMD: the kernel
 * width has to match the clone list, so the list is fixed here. SG_NO_CLONES builds the
 * baseline code alone (make test runs it, as an AVX2 machine never dispatches to it). */
#if FP_SMALL_GEMM && defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) && \
    !defined(SG_NO_CLONES) && defined(__has_attribute)
#if __has_attribute(target_clones)
#if !defined(__clang__) && __GNUC__ >= 12
#define FP_SIMD_GEMM \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define SG_WIDEST_CPU() __builtin_cpu_supports("x86-64-v4")
#define SG_WIDE_CPU() __builtin_cpu_supports("x86-64-v3")
#else  /* older gcc and clang know single features only */
#define FP_SIMD_GEMM __attribute__((target_clones("avx512f", "avx2", "default")))
#define SG_WIDEST_CPU() __builtin_cpu_supports("avx512f")
#define SG_WIDE_CPU() __builtin_cpu_supports("avx2")
#endif
#endif
#endif
/* SG_NO_AVX512 keeps the AVX2 kernel on an AVX-512 machine (make test runs it that way too) */
#if defined(SG_NO_AVX512) && defined(SG_WIDEST_CPU)
#undef SG_WIDEST_CPU
#define SG_WIDEST_CPU() 0
#endif
#ifndef FP_SIMD_GEMM
#define FP_SIMD_GEMM
#define SG_WIDEST_CPU() 0
#define SG_WIDE_CPU() 0
#endif

#define SG_MR 6        /* rows of a tile: 6 × 2 accumulators + 2 B vectors + 1 broadcast ≤ 16 */
#define SG_PANEL_K 256 /* k is done in chunks of this: a packed panel is ≤ PANEL_K × NR */
#define SG_BUF_BYTES (SG_PANEL_K * 128)  /* the packed panel, NR ≤ 128 bytes wide: 32 KB */

/* The small path takes a product (NN, NT or TN, float or double) when m·n·k ≤
 * fp_small_gemm_max_mnk. A plain global so a benchmark can move it (0 sends every product
 * to the BLAS, INT64_MAX all but TT to the small path); it is read once per call. The
 * default, m·n·k < 2^19, is measured through fastprop.ops.gemm (Zen 3, AVX2, 2 cores,
 * SciPy's OpenBLAS, both dtypes): below it OpenBLAS runs on one thread and the small path
 * is faster on every shape tried (×1.03 to ×2.1); from 2^19 on OpenBLAS splits the
 * product over the threads and wins every shape tried (×0.43 to ×0.89). */
#define SG_MAX_MNK ((1 << 19) - 1)         /* the default threshold */
#define SG_MAX_MNK_AVX512 ((1 << 21) - 1)  /* with the AVX-512 kernel (fp_small_gemm_tune) */
int64_t fp_small_gemm_max_mnk = FP_SMALL_GEMM ? SG_MAX_MNK : 0;

/* With AVX-512 the small path runs 16-float vectors, 1.3–1.6× its AVX2 rate: measured on a
 * 2-core Sapphire Rapids (SciPy's OpenBLAS on both threads), it beats the BLAS up to
 * m·n·k = 2^20 on every shape of the workloads (64×128×128: 140–165 against 95–105 GFLOP/s)
 * and loses from 2^22 on (256×128×128: 95–137 against 112–277). Called by fp_set_blas. */
void fp_small_gemm_tune(void)
{
#if FP_SMALL_GEMM
    if (fp_small_gemm_max_mnk == SG_MAX_MNK && SG_WIDEST_CPU())  /* unless moved already */
        fp_small_gemm_max_mnk = SG_MAX_MNK_AVX512;
#endif
}

#if FP_SMALL_GEMM
typedef float sg_f32x8 __attribute__((vector_size(32)));
typedef float sg_f32x4 __attribute__((vector_size(16)));
typedef double sg_f64x4 __attribute__((vector_size(32)));
typedef double sg_f64x2 __attribute__((vector_size(16)));
typedef int32_t sg_i32x8 __attribute__((vector_size(32)));
typedef int32_t sg_i32x4 __attribute__((vector_size(16)));
typedef int64_t sg_i64x4 __attribute__((vector_size(32)));
typedef int64_t sg_i64x2 __attribute__((vector_size(16)));
#if defined(__clang__)
#define SG_SHUF(a, b, MASK, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SG_SHUF(a, b, MASK, ...) __builtin_shuffle(a, b, (MASK){__VA_ARGS__})
#endif
#define SG_LD(v, p) memcpy(&(v), (p), sizeof(v))
#define SG_ST(p, v) memcpy((p), &(v), sizeof(v))

/* Transposes of one vector-square block: dst[p·ldd + j] = src[j·lds + p] for p, j < lanes.
 * Written out: with arrays and loops gcc keeps the vectors on the stack. */

// 8 × 8 floats: unpack, shuffle, swap halves (24 shuffles)
SG_INLINE void sg_tr32_f32(const float *src, int64_t lds, float *dst, int64_t ldd)
{
    sg_f32x8 r0, r1, r2, r3, r4, r5, r6, r7;
    SG_LD(r0, src); SG_LD(r1, src + lds); SG_LD(r2, src + 2 * lds); SG_LD(r3, src + 3 * lds);
    SG_LD(r4, src + 4 * lds); SG_LD(r5, src + 5 * lds); SG_LD(r6, src + 6 * lds);
    SG_LD(r7, src + 7 * lds);
#define SG_LO(a, b) SG_SHUF(a, b, sg_i32x8, 0, 8, 1, 9, 4, 12, 5, 13)
#define SG_HI(a, b) SG_SHUF(a, b, sg_i32x8, 2, 10, 3, 11, 6, 14, 7, 15)
    sg_f32x8 t0 = SG_LO(r0, r1), t1 = SG_HI(r0, r1), t2 = SG_LO(r2, r3), t3 = SG_HI(r2, r3);
    sg_f32x8 t4 = SG_LO(r4, r5), t5 = SG_HI(r4, r5), t6 = SG_LO(r6, r7), t7 = SG_HI(r6, r7);
#undef SG_LO
#undef SG_HI
#define SG_LO(a, b) SG_SHUF(a, b, sg_i32x8, 0, 1, 8, 9, 4, 5, 12, 13)
#define SG_HI(a, b) SG_SHUF(a, b, sg_i32x8, 2, 3, 10, 11, 6, 7, 14, 15)
    sg_f32x8 u0 = SG_LO(t0, t2), u1 = SG_HI(t0, t2), u2 = SG_LO(t1, t3), u3 = SG_HI(t1, t3);
    sg_f32x8 u4 = SG_LO(t4, t6), u5 = SG_HI(t4, t6), u6 = SG_LO(t5, t7), u7 = SG_HI(t5, t7);
#undef SG_LO
#undef SG_HI
#define SG_LO(a, b) SG_SHUF(a, b, sg_i32x8, 0, 1, 2, 3, 8, 9, 10, 11)
#define SG_HI(a, b) SG_SHUF(a, b, sg_i32x8, 4, 5, 6, 7, 12, 13, 14, 15)
    sg_f32x8 o0 = SG_LO(u0, u4), o1 = SG_LO(u1, u5), o2 = SG_LO(u2, u6), o3 = SG_LO(u3, u7);
    sg_f32x8 o4 = SG_HI(u0, u4), o5 = SG_HI(u1, u5), o6 = SG_HI(u2, u6), o7 = SG_HI(u3, u7);
#undef SG_LO
#undef SG_HI
    SG_ST(dst, o0); SG_ST(dst + ldd, o1); SG_ST(dst + 2 * ldd, o2); SG_ST(dst + 3 * ldd, o3);
    SG_ST(dst + 4 * ldd, o4); SG_ST(dst + 5 * ldd, o5); SG_ST(dst + 6 * ldd, o6);
    SG_ST(dst + 7 * ldd, o7);
}

// 16 × 16 floats: the four 8 × 8 blocks, each transposed into the mirrored place
SG_INLINE void sg_tr64_f32(const float *src, int64_t lds, float *dst, int64_t ldd)
{
    for (int bi = 0; bi < 16; bi += 8)
        for (int bj = 0; bj < 16; bj += 8)
            sg_tr32_f32(src + bi * lds + bj, lds, dst + bj * ldd + bi, ldd);
}

// 4 × 4 floats
SG_INLINE void sg_tr16_f32(const float *src, int64_t lds, float *dst, int64_t ldd)
{
    sg_f32x4 r0, r1, r2, r3;
    SG_LD(r0, src); SG_LD(r1, src + lds); SG_LD(r2, src + 2 * lds); SG_LD(r3, src + 3 * lds);
    sg_f32x4 t0 = SG_SHUF(r0, r1, sg_i32x4, 0, 4, 1, 5), t1 = SG_SHUF(r0, r1, sg_i32x4, 2, 6, 3, 7);
    sg_f32x4 t2 = SG_SHUF(r2, r3, sg_i32x4, 0, 4, 1, 5), t3 = SG_SHUF(r2, r3, sg_i32x4, 2, 6, 3, 7);
    sg_f32x4 o0 = SG_SHUF(t0, t2, sg_i32x4, 0, 1, 4, 5), o1 = SG_SHUF(t0, t2, sg_i32x4, 2, 3, 6, 7);
    sg_f32x4 o2 = SG_SHUF(t1, t3, sg_i32x4, 0, 1, 4, 5), o3 = SG_SHUF(t1, t3, sg_i32x4, 2, 3, 6, 7);
    SG_ST(dst, o0); SG_ST(dst + ldd, o1); SG_ST(dst + 2 * ldd, o2); SG_ST(dst + 3 * ldd, o3);
}

// 4 × 4 doubles
SG_INLINE void sg_tr32_f64(const double *src, int64_t lds, double *dst, int64_t ldd)
{
    sg_f64x4 r0, r1, r2, r3;
    SG_LD(r0, src); SG_LD(r1, src + lds); SG_LD(r2, src + 2 * lds); SG_LD(r3, src + 3 * lds);
    sg_f64x4 t0 = SG_SHUF(r0, r1, sg_i64x4, 0, 4, 2, 6), t1 = SG_SHUF(r0, r1, sg_i64x4, 1, 5, 3, 7);
    sg_f64x4 t2 = SG_SHUF(r2, r3, sg_i64x4, 0, 4, 2, 6), t3 = SG_SHUF(r2, r3, sg_i64x4, 1, 5, 3, 7);
    sg_f64x4 o0 = SG_SHUF(t0, t2, sg_i64x4, 0, 1, 4, 5), o1 = SG_SHUF(t1, t3, sg_i64x4, 0, 1, 4, 5);
    sg_f64x4 o2 = SG_SHUF(t0, t2, sg_i64x4, 2, 3, 6, 7), o3 = SG_SHUF(t1, t3, sg_i64x4, 2, 3, 6, 7);
    SG_ST(dst, o0); SG_ST(dst + ldd, o1); SG_ST(dst + 2 * ldd, o2); SG_ST(dst + 3 * ldd, o3);
}

// 8 × 8 doubles: the four 4 × 4 blocks, as sg_tr64_f32
SG_INLINE void sg_tr64_f64(const double *src, int64_t lds, double *dst, int64_t ldd)
{
    for (int bi = 0; bi < 8; bi += 4)
        for (int bj = 0; bj < 8; bj += 4)
            sg_tr32_f64(src + bi * lds + bj, lds, dst + bj * ldd + bi, ldd);
}

// 2 × 2 doubles
SG_INLINE void sg_tr16_f64(const double *src, int64_t lds, double *dst, int64_t ldd)
{
    sg_f64x2 r0, r1;
    SG_LD(r0, src); SG_LD(r1, src + lds);
    sg_f64x2 o0 = SG_SHUF(r0, r1, sg_i64x2, 0, 2), o1 = SG_SHUF(r0, r1, sg_i64x2, 1, 3);
    SG_ST(dst, o0); SG_ST(dst + ldd, o1);
}
#endif

#define FP_TEMPLATE "small_gemm.c"
#include "template.h"

#elif !defined(SG_VB)
/* ------------------------------------------------------------------ per precision R:
 * the kernels at both widths (this file again, with SG_VB set), the driver, the entry */
#if FP_SMALL_GEMM
#define SG_VB 64
#define G(name) F(sg_##name##_x)
#define SG_TR F(sg_tr64)
#include "small_gemm.c"
#undef SG_VB
#undef G
#undef SG_TR
#define SG_VB 32
#define G(name) F(sg_##name##_w)
#define SG_TR F(sg_tr32)
#include "small_gemm.c"
#undef SG_VB
#undef G
#undef SG_TR
#define SG_VB 16
#define G(name) F(sg_##name##_n)
#define SG_TR F(sg_tr16)
#include "small_gemm.c"
#undef SG_VB
#undef G
#undef SG_TR

// the product, through the kernel of the clone's width; one clone per ISA (FP_SIMD_GEMM)
FP_SIMD_GEMM static void F(sg_run)(int ta_t, int tb_t, int64_t m, int64_t n, int64_t k,
                                   R alpha, const R *a, const R *b, R beta, R *c)
{
    R buf[SG_BUF_BYTES / sizeof(R)] __attribute__((aligned(64)));
    if (SG_WIDEST_CPU())
        F(sg_drive_x)(ta_t, tb_t, m, n, k, alpha, a, b, beta, c, buf);
    else if (SG_WIDE_CPU())
        F(sg_drive_w)(ta_t, tb_t, m, n, k, alpha, a, b, beta, c, buf);
    else
        F(sg_drive_n)(ta_t, tb_t, m, n, k, alpha, a, b, beta, c, buf);
}
#endif

// 1 when the small path computed C (the product is small enough, and not TT), 0 when the
// caller should use the BLAS. m, n, k ≥ 1 and fit an int (gemm_* checks it).
int F(small_gemm)(char ta, char tb, int64_t m, int64_t n, int64_t k, R alpha, const R *a,
                  const R *b, R beta, R *c)
{
#if FP_SMALL_GEMM
    int ta_t = ta == 'T', tb_t = tb == 'T';
    int64_t max = fp_small_gemm_max_mnk;
    if ((ta != 'N' && !ta_t) || (tb != 'N' && !tb_t) || (ta_t && tb_t))
        return 0;  /* TT, or a transpose code only the BLAS knows */
    if (m < 1 || n < 1 || k < 1 || m > INT32_MAX || n > INT32_MAX)
        return 0;  /* gemm_* has done these; for direct callers */
    if (m > max || n > max || m * n > max / k)  /* m·n < 2^62 does not overflow */
        return 0;
    if (alpha == 0) {  /* as the BLAS: A and B are not read */
        for (int64_t i = 0; i < m * n; i++) c[i] = beta == 0 ? 0 : beta * c[i];
        return 1;
    }
    F(sg_run)(ta_t, tb_t, m, n, k, alpha, a, b, beta, c);
    return 1;
#else
    (void)ta; (void)tb; (void)m; (void)n; (void)k; (void)alpha; (void)a; (void)b;
    (void)beta; (void)c;
    return 0;
#endif
}

#else
/* ------------------------------------------------------------------ per precision R and
 * vector width SG_VB bytes: G(name) names this width's copy, SG_TR is its transpose */
typedef R G(vec) __attribute__((vector_size(SG_VB)));
#define V G(vec)
#define VL ((int)(SG_VB / sizeof(R)))  /* lanes */
#define NR (2 * VL)                     /* columns of a tile */

SG_INLINE V G(load)(const R *p)
{
    V v;
    memcpy(&v, p, sizeof v);
    return v;
}

// one MR_ × NR tile: C[i0.., j0..] = alpha·op(A)[i0.., :k]·panel (+ beta·C), where a points
// at op(A)[i0, 0] (stored with row stride lda) and the panel is k × NR with row stride ldp.
// MR_ and TA are constants where this is inlined, so acc[][] lives in registers.
SG_INLINE void G(tile)(const int MR_, const int TA, int64_t k, const R *a, int64_t lda,
                       const R *panel, int64_t ldp, R *c, int64_t ldc, int nr, R alpha, R beta)
{
    // alpha and beta pass through memory, read after the k loop: else gcc may hoist their
    // broadcasts out of all the loops and keep them in 2 of the 16 vector registers the
    // loop needs, spilling an operand of B instead (seen with Python's -fwrapv build)
    volatile R alpha_v = alpha, beta_v = beta;
    V acc0[SG_MR], acc1[SG_MR];
    for (int r = 0; r < MR_; r++) acc0[r] = acc1[r] = (V){0};
    // pointers stepped along k rather than indices p·ld, which gcc is slower to simplify
    // under -fwrapv (Python's build flags)
    const R *ap = a, *bp = panel;
    for (int64_t p = 0; p < k; p++) {
        V b0 = G(load)(bp), b1 = G(load)(bp + VL);
        for (int r = 0; r < MR_; r++) {
            R ar = TA ? ap[r] : ap[r * lda];  /* op(A)[i0 + r, p] */
            acc0[r] += ar * b0;
            acc1[r] += ar * b1;
        }
        ap += TA ? lda : 1;
        bp += ldp;
    }
    // C = alpha·acc (+ beta·C); a partial tile goes through a buffer written by whole
    // vectors and read back by elements, so the loads are forwarded from the stores
    alpha = alpha_v;
    beta = beta_v;
    if (nr == NR)
        for (int r = 0; r < MR_; r++) {
            R *cr = c + r * ldc;
            V r0 = alpha * acc0[r], r1 = alpha * acc1[r];
            if (beta != 0) {
                r0 += beta * G(load)(cr);
                r1 += beta * G(load)(cr + VL);
            }
            SG_ST(cr, r0);
            SG_ST(cr + VL, r1);
        }
    else
        for (int r = 0; r < MR_; r++) {
            R *cr = c + r * ldc, t[NR];
            V r0 = alpha * acc0[r], r1 = alpha * acc1[r];
            SG_ST(t, r0);
            SG_ST(t + VL, r1);
            if (beta != 0)
                for (int j = 0; j < nr; j++) cr[j] = t[j] + beta * cr[j];
            else
                for (int j = 0; j < nr; j++) cr[j] = t[j];
        }
}

// all row tiles of one column panel; a points at op(A)[0, 0], c at C[0, j0]. The rows are
// shared evenly between ⌈m/MR⌉ tiles.
SG_INLINE void G(panel)(const int TA, int64_t m, int64_t k, const R *a, int64_t lda,
                        const R *panel, int64_t ldp, R *c, int64_t ldc, int nr, R alpha,
                        R beta)
{
    int64_t tiles = (m + SG_MR - 1) / SG_MR, q = m / tiles, rem = m % tiles;
    for (int64_t t = 0, i = 0; t < tiles; t++) {
        const R *ai = TA ? a + i : a + i * lda;
        R *ci = c + i * ldc;
        int rows = (int)(q + (t < rem));
        switch (rows) {  /* each count with its own unrolled tile */
#define SG_TILE(MR_) G(tile)(MR_, TA, k, ai, lda, panel, ldp, ci, ldc, nr, alpha, beta)
        case 6: SG_TILE(6); break;
        case 5: SG_TILE(5); break;
        case 4: SG_TILE(4); break;
        case 3: SG_TILE(3); break;
        case 2: SG_TILE(2); break;
        default: SG_TILE(1); break;
#undef SG_TILE
        }
        i += rows;
    }
}

// buf = op(B)[p0..p0+kc, j..j+nr) as kc rows of NR, zero-padded past nr
SG_INLINE void G(pack)(int tb_t, const R *b, int64_t ldb, int64_t p0, int64_t kc, int64_t j,
                       int nr, R *buf)
{
    if (nr < NR)
        memset(buf, 0, (size_t)kc * NR * sizeof(R));
    if (!tb_t) {  /* B is (k, n): pieces of its rows */
        for (int64_t p = 0; p < kc; p++)
            memcpy(buf + p * NR, b + (p0 + p) * ldb + j, (size_t)nr * sizeof(R));
        return;
    }
    /* B is (n, k): its row j + jj is column jj of the panel; VL × VL blocks are
     * transposed in registers, the ragged edges one element at a time */
    const R *bj = b + j * ldb + p0;
    int jv = nr / VL * VL;
    int64_t kv = kc / VL * VL;
    for (int jj = 0; jj < jv; jj += VL) {
        for (int64_t p = 0; p < kv; p += VL)
            SG_TR(bj + jj * ldb + p, ldb, buf + p * NR + jj, NR);
        for (int64_t p = kv; p < kc; p++)
            for (int q = 0; q < VL; q++) buf[p * NR + jj + q] = bj[(jj + q) * ldb + p];
    }
    for (int jj = jv; jj < nr; jj++)
        for (int64_t p = 0; p < kc; p++) buf[p * NR + jj] = bj[jj * ldb + p];
}

// the product: C in NR-column panels, each over k in chunks of at most SG_PANEL_K (the
// first chunk applies beta, the later ones add to C). A panel that is whole rows of B
// ('N', nr = NR) is read in place, others are packed into buf (SG_BUF_BYTES).
SG_INLINE void G(drive)(int ta_t, int tb_t, int64_t m, int64_t n, int64_t k, R alpha,
                        const R *a, const R *b, R beta, R *c, R *buf)
{
    int64_t lda = ta_t ? m : k, ldb = tb_t ? k : n;
    for (int64_t j = 0; j < n; j += NR) {
        int nr = n - j < NR ? (int)(n - j) : NR;
        for (int64_t p0 = 0; p0 < k; p0 += SG_PANEL_K) {
            int64_t kc = k - p0 < SG_PANEL_K ? k - p0 : SG_PANEL_K;
            const R *panel = buf;
            int64_t ldp = NR;
            if (!tb_t && nr == NR) {
                panel = b + p0 * ldb + j;
                ldp = ldb;
            } else {
                G(pack)(tb_t, b, ldb, p0, kc, j, nr, buf);
            }
            R be = p0 == 0 ? beta : 1;
            if (ta_t)
                G(panel)(1, m, kc, a + p0 * lda, lda, panel, ldp, c + j, n, nr, alpha, be);
            else
                G(panel)(0, m, kc, a + p0, lda, panel, ldp, c + j, n, nr, alpha, be);
        }
    }
}
#undef V
#undef VL
#undef NR
#endif
