/* Instantiates a kernel source file for float and for double.
 * A family file does:   #ifndef R
 *                       #define FP_TEMPLATE "dense.c"
 *                       #include "template.h"
 *                       #else ...kernels written with R, F(name), the math macros... #endif
 * and this header includes it back twice, once per precision. */
#include <math.h>
#include <stddef.h>
#include "fastprop.h"

#define R float
#define F(name) name##_f32
#define EXP expf
#define LOG logf
#define LOG1P log1pf
#define TANH tanhf
#define ERF erff
#define COS cosf
#define SIN sinf
#define SQRT sqrtf
#define FABS fabsf
#include FP_TEMPLATE
#undef R
#undef F
#undef EXP
#undef LOG
#undef LOG1P
#undef TANH
#undef ERF
#undef COS
#undef SIN
#undef SQRT
#undef FABS

#define R double
#define F(name) name##_f64
#define EXP exp
#define LOG log
#define LOG1P log1p
#define TANH tanh
#define ERF erf
#define COS cos
#define SIN sin
#define SQRT sqrt
#define FABS fabs
#include FP_TEMPLATE
#undef R
#undef F
#undef EXP
#undef LOG
#undef LOG1P
#undef TANH
#undef ERF
#undef COS
#undef SIN
#undef SQRT
#undef FABS
