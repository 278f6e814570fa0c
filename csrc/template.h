/* Instantiates a kernel source file for float and for double.
 * A family file does:   #ifndef R
 *                       #define FP_TEMPLATE "dense.c"
 *                       #include "template.h"
 *                       #else ...kernels written with R, F(name), the math macros... #endif
 * and this header includes it back twice, once per precision.
 *
 * float takes its transcendentals from fastmath.h (branch-free, so its loops vectorize);
 * double keeps libm, the accuracy path. Some take a restricted domain, where fastmath.h
 * saves work: EXPN is exp of x ≤ 0 (exp(−|x|), exp(z − max z)), LOG1P01 is log1p on
 * [0, 1] (of exp(−|x|)), COS and SIN take |x| ≤ TRIG_MAX (COS_LIBM, SIN_LIBM any x).
 * SELECT(c, a, b) is c ? a : b without a branch, for a and b that are computed (see
 * fastmath.h); plain ternaries remain where both sides are loaded values or constants. */
#include <math.h>
#include <stddef.h>
#include "fastprop.h"
#include "fastmath.h"

#define R float
#define F(name) name##_f32
#define EXP fp_expf
#define EXPN fp_expf_nonpos  /* exp of x ≤ 0 only */
#define LOG logf
#define LOG1P01 fp_log1pf01
#define TANH fp_tanhf
#define SIGMOID fp_sigmoidf
#define PHI fp_phif      /* Φ, the standard normal CDF */
#define GAUSS fp_gaussf  /* exp(−x²/2) */
#define COS fp_cosf        /* |x| ≤ TRIG_MAX only */
#define SIN fp_sinf
#define COS_LIBM cosf     /* any x */
#define SIN_LIBM sinf
#define TRIG_MAX FP_TRIG_MAX
#define SQRT sqrtf
#define FABS fabsf
#define SELECT fp_selectf
#include FP_TEMPLATE
#undef R
#undef F
#undef EXP
#undef EXPN
#undef LOG
#undef LOG1P01
#undef TANH
#undef SIGMOID
#undef PHI
#undef GAUSS
#undef COS
#undef SIN
#undef COS_LIBM
#undef SIN_LIBM
#undef TRIG_MAX
#undef SQRT
#undef FABS
#undef SELECT

#define R double
#define F(name) name##_f64
#define EXP exp
#define EXPN exp
#define LOG log
#define LOG1P01 log1p
#define TANH tanh
#define SIGMOID fp_sigmoid
#define PHI fp_phi
#define GAUSS fp_gauss
#define COS cos
#define SIN sin
#define COS_LIBM cos
#define SIN_LIBM sin
#define TRIG_MAX INFINITY
#define SQRT sqrt
#define FABS fabs
#define SELECT fp_select
#include FP_TEMPLATE
#undef R
#undef F
#undef EXP
#undef EXPN
#undef LOG
#undef LOG1P01
#undef TANH
#undef SIGMOID
#undef PHI
#undef GAUSS
#undef COS
#undef SIN
#undef COS_LIBM
#undef SIN_LIBM
#undef TRIG_MAX
#undef SQRT
#undef FABS
#undef SELECT
