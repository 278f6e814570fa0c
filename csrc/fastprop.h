/* fastprop C kernels: public declarations.
 *
 * Pure C11, no Python headers. Arrays are row-major (C order), batch-major:
 * x is (B, in), a weight is (out, in). Every kernel exists for float (_f32)
 * and double (_f64), generated from one source (see template.h). Kernels never
 * allocate: callers hand them every buffer. They return FP_OK or a negative
 * error code, never abort. Sizes are int64_t; GEMM dimensions must fit in the
 * BLAS's 32-bit int, which the kernels check (FP_ERR_SIZE). */
#ifndef FASTPROP_H
#define FASTPROP_H

#include <stdint.h>

/* FP_SIMD marks the elementwise kernels: gcc compiles each three times, for AVX-512
 * (x86-64-v4), AVX2 (x86-64-v3) and baseline x86-64, and the dynamic loader picks the
 * widest the CPU has (an ifunc, resolved once at load time). So a portable wheel, built
 * without -march, still runs 8- or 16-float vectors. The loops are elementwise and their
 * reductions keep a fixed order, so the vector width changes no result. The build passes
 * -ffp-contract=fast: in the AVX2 and AVX-512 clones a·b + c is one FMA (one rounding, not
 * two; the polynomials of fastmath.h run 24–28 % faster), so a CPU without FMA (the
 * baseline clone) can differ from one with it in the last bit. ifunc needs glibc on x86-64
 * Linux (musl has none); elsewhere FP_SIMD is empty and the baseline build is all there is.
 * clang builds no clones: it wants the attribute on every declaration of an extern clone,
 * which FP_DECLARE does not carry (the wheels are built with gcc; macOS has no ifunc).
 * -DFP_NO_CLONES builds the baseline alone (the C tests run it: an AVX2 machine never would). */
#if defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) && defined(__has_attribute) && \
    !defined(FP_NO_CLONES)
#if __has_attribute(target_clones) && !defined(__clang__)
#if __GNUC__ >= 12
#define FP_SIMD __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else  /* older gcc dispatches on single features */
#define FP_SIMD __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#define FP_CLONES 1
#endif
#endif
#ifndef FP_SIMD
#define FP_SIMD
#endif

enum {
    FP_OK = 0,
    FP_ERR_ARG = -1,      /* negative size, NULL required buffer, bad parameter */
    FP_ERR_SIZE = -2,     /* a dimension does not fit the BLAS's int */
    FP_ERR_NOBLAS = -3,   /* fp_set_blas was never called */
    FP_ERR_LABEL = -4,    /* a class label outside [0, C) */
    FP_ERR_ACT = -5,      /* unknown activation, or the buffer it needs is missing */
};

/* Activations, in the order of the Python names in fastprop/_kernels.pyx. */
enum {
    FP_IDENTITY = 0, FP_RELU, FP_LEAKY_RELU, FP_ABS, FP_SIGMOID, FP_TANH,
    FP_SOFTPLUS, FP_COS, FP_GELU, FP_SILU, FP_N_ACTIVATIONS
};

/* Parameters of the parametrised activations (PyTorch's defaults: 0.01, 1, 20). */
typedef struct {
    double negative_slope;   /* leaky_relu */
    double beta, threshold;  /* softplus */
} fp_act_params;

/* Loss kinds of the fused training step. */
enum { FP_LOSS_SOFTMAX_XENT = 0, FP_LOSS_SIGMOID_BCE, FP_LOSS_MSE, FP_LOSS_L1, FP_LOSS_HUBER,
       FP_LOSS_SMOOTH_L1 };

/* The options of a loss in the fused step: NULL weights are all ones. Pointers are to float or
 * double, as the network's precision. */
typedef struct {
    const void *class_weight;   /* (classes,), cross-entropy */
    const void *sample_weight;  /* (batch,) */
    double label_smoothing;     /* cross-entropy, in [0, 1] */
    double delta;               /* HuberLoss's delta, SmoothL1Loss's beta */
} fp_loss_opts;
/* Losses the tape runs that the chain does not. */
enum { FP_LOSS_GAUSSIAN_NLL = 6 };

/* One block of a feed-forward chain: y = f(x wᵀ + b). Buffers are (batch, out);
 * preact is kept only for activations whose derivative needs the input (NULL otherwise).
 * Pointers are to float or double, as the network's precision. */
typedef struct {
    int64_t in, out;
    int act;
    fp_act_params p;
    const void *w, *b;   /* b may be NULL */
    void *dw, *db;       /* gradients, overwritten by the backward; db NULL without bias */
    void *y, *preact;
} fp_dense_block;

/* One op of the tape (tape.c): out = kind(in[0..n_in)) over numbered values; the plan
 * (fastprop/plan.py) fills it. acc[k]: input k's gradient share is added (1) or written (0);
 * acc_params: the parameters' gradients are added (a shared module's later node). */
enum { FP_OP_DENSE = 0, FP_OP_ACT, FP_OP_PRELU, FP_OP_ADD, FP_OP_MUL, FP_OP_CONCAT,
       FP_OP_DROPOUT, FP_OP_LAYERNORM, FP_OP_BATCHNORM };
#define FP_OP_MAX_IN 16
typedef struct {
    int kind, act;
    fp_act_params p;
    int out, n_in;
    int in[FP_OP_MAX_IN], acc[FP_OP_MAX_IN];
    int acc_params;
    int64_t n_w;             /* PReLU: 1 or one slope per channel */
    const void *w, *b;       /* dense: (out, in) and (out) or NULL; PReLU: the slopes */
    void *dw, *db;
    void *preact;            /* dense whose activation's derivative needs its input, else NULL */
    /* Dropout, LayerNorm, BatchNorm1d: the module's settings (refreshed before each run, so
     * train()/eval() take effect at once) and the state saved for the backward */
    int active;              /* Dropout: masks (training, p > 0); BatchNorm: batch statistics */
    int track;               /* BatchNorm: moves the running statistics (training) */
    double prob, eps, momentum;  /* Dropout's p; momentum < 0: the cumulative average */
    uint64_t *rng;           /* Dropout: {key, counter}; a masked forward advances the counter */
    uint8_t *mask;           /* Dropout: (batch, width) */
    void *mean, *rstd, *ws;  /* LayerNorm: (batch) each; BatchNorm: (c) each, ws (2c) scratch */
    void *run_mean, *run_var;   /* BatchNorm: running statistics (NULL: not tracked) */
    int64_t *tracked;        /* BatchNorm: num_batches_tracked */
    int64_t off_w, off_b;    /* the R-pass: w's and b's offsets in the flat v and hv (-1: none) */
} fp_op;

/* Philox blocks one dropout_forward call of n units uses: its stream advances by this much */
#define FP_DROPOUT_BLOCKS(n) ((uint64_t)64 * (((uint64_t)(n) + 255) / 256))

/* Fortran BLAS gemm, as scipy.linalg.cython_blas exports it. */
typedef void (*fp_sgemm_fn)(char *ta, char *tb, int *m, int *n, int *k, float *alpha,
                            float *a, int *lda, float *b, int *ldb, float *beta,
                            float *c, int *ldc);
typedef void (*fp_dgemm_fn)(char *ta, char *tb, int *m, int *n, int *k, double *alpha,
                            double *a, int *lda, double *b, int *ldb, double *beta,
                            double *c, int *ldc);
void fp_set_blas(fp_sgemm_fn sgemm, fp_dgemm_fn dgemm);

/* Other GEMM backends (fastprop.set_blas). A backend is a calling convention and a gemm
 * function per precision, cast to fp_any_fn:
 *   FP_BLAS_FORTRAN   fp_sgemm_fn / fp_dgemm_fn (SciPy's OpenBLAS, MKL's sgemm_),
 *   FP_BLAS_ROWMAJOR  fp_sgemm_rm_fn / fp_dgemm_rm_fn (oneDNN's dnnl_sgemm),
 *   FP_BLAS_BLIS      fp_sgemm_blis_fn / fp_dgemm_blis_fn (cython-blis's blis.cy sgemm/dgemm:
 *                     one thread each; gemm_* cuts a large C into row blocks over
 *                     fp_parallel_for). */
enum { FP_BLAS_FORTRAN = 0, FP_BLAS_ROWMAJOR = 1, FP_BLAS_BLIS = 2 };
typedef void (*fp_any_fn)(void);
typedef int (*fp_sgemm_rm_fn)(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha,
                              const float *a, int64_t lda, const float *b, int64_t ldb,
                              float beta, float *c, int64_t ldc);
typedef int (*fp_dgemm_rm_fn)(char ta, char tb, int64_t m, int64_t n, int64_t k, double alpha,
                              const double *a, int64_t lda, const double *b, int64_t ldb,
                              double beta, double *c, int64_t ldc);
typedef void (*fp_sgemm_blis_fn)(int ta, int tb, int m, int n, int k, float alpha,
                                 const float *a, int lda, const float *b, int ldb, float beta,
                                 float *c, int ldc);
typedef void (*fp_dgemm_blis_fn)(int ta, int tb, int m, int n, int k, double alpha,
                                 const double *a, int lda, const double *b, int ldb,
                                 double beta, double *c, int ldc);
#define FP_BLAS_SLOTS 8  /* slot 0 is fp_set_blas's (the default) */
/* Fills backend slot 1..FP_BLAS_SLOTS-1 once (both functions non-NULL, kinds known);
 * FP_ERR_ARG otherwise, or when the slot holds other functions already. */
int fp_blas_register(int slot, int kind_s, fp_any_fn sgemm, int kind_d, fp_any_fn dgemm);
/* Makes a filled slot the one gemm_* calls (read once per call: a plain swap between
 * calls); FP_ERR_ARG for an empty one. */
int fp_blas_select(int slot);
int fp_blas_selected(void);

/* Declarations for one precision: R is the element type, S the suffix. */
#define FP_DECLARE(R, S)                                                              \
    /* C = alpha op(A) op(B) + beta C, row-major; op is a transpose when t is 'T'. */ \
    int gemm_##S(char ta, char tb, int64_t m, int64_t n, int64_t k, R alpha,          \
                 const R *a, const R *b, R beta, R *c);                               \
    int dense_forward_##S(R *y, R *preact, const R *x, const R *w, const R *b,        \
                          int64_t batch, int64_t in, int64_t out, int act,            \
                          const fp_act_params *p);                                    \
    int dense_backward_##S(R *dx, R *dw, R *db, const R *g, const R *x, const R *w,   \
                           int64_t batch, int64_t in, int64_t out, int accumulate,    \
                           int accumulate_dx);   \
    int activation_forward_##S(R *y, const R *x, int64_t n, int act,                  \
                               const fp_act_params *p);                               \
    int activation_backward_##S(R *dx, const R *g, const R *x, const R *y, int64_t n, \
                                int act, const fp_act_params *p);                     \
    int activation_second_##S(R *d2x, const R *g, const R *x, int64_t n, int act,      \
                              const fp_act_params *p);                                \
    int activation_rbackward_##S(R *dx, R *rdx, const R *g, const R *rg, const R *rx,  \
                                 const R *x, int64_t n, int act,                      \
                                 const fp_act_params *p);                             \
    int prelu_forward_##S(R *y, const R *x, const R *w, int64_t batch,                \
                          int64_t channels, int64_t n_w);                             \
    int prelu_backward_##S(R *dx, R *dw, const R *g, const R *x, const R *w,          \
                           int64_t batch, int64_t channels, int64_t n_w,              \
                           int accumulate);                                           \
    int prelu_rforward_##S(R *ry, const R *rx, const R *x, const R *w, const R *vw,     \
                           int64_t batch, int64_t channels, int64_t n_w);             \
    int prelu_rbackward_##S(R *dx, R *rdx, R *dw, const R *g, const R *rg, const R *x,  \
                            const R *rx, const R *w, const R *vw, int64_t batch,      \
                            int64_t channels, int64_t n_w, int accumulate);           \
    int softmax_forward_##S(R *p, const R *z, int64_t batch, int64_t classes,         \
                            int log_space);                                           \
    int softmax_xent_forward_backward_##S(double *loss, R *dz, const R *z,            \
                                          const int64_t *labels, const R *target,     \
                                          int64_t batch, int64_t classes);            \
    int sigmoid_bce_forward_backward_##S(double *loss, R *dz, const R *z,             \
                                         const R *target, int64_t n);                 \
    int mse_forward_backward_##S(double *loss, R *dp, const R *pred, const R *target, \
                                 int64_t n);                                          \
    int gaussian_nll_forward_backward_##S(double *loss, R *dz, const R *z,             \
                                          const R *target, int64_t batch, int64_t k); \
    /* graph merge nodes (merge.c): forward, and backward into the grad table */       \
    int add_forward_##S(R *y, const R *const *xs, int k, int64_t n);                  \
    int add_backward_##S(R *dx, const R *g, int64_t n, int accumulate);               \
    int mul_forward_##S(R *y, const R *a, const R *b, int64_t n);                     \
    int mul_backward_##S(R *da, R *db, const R *g, const R *a, const R *b, int64_t n, \
                         int accumulate_a, int accumulate_b);                         \
    int concat_forward_##S(R *y, const R *x, int64_t batch, int64_t width,            \
                           int64_t offset, int64_t w);                                \
    int concat_backward_##S(R *dx, const R *g, int64_t batch, int64_t width,          \
                            int64_t offset, int64_t w, int accumulate);               \
    int softmax_xent_hvp_##S(R *hv, const R *z, const R *v, const R *target,           \
                             int64_t batch, int64_t classes);                         \
    int sigmoid_bce_hvp_##S(R *hv, const R *z, const R *v, int64_t n);                 \
    int mse_hvp_##S(R *hv, const R *v, int64_t n);                                    \
    /* first i with a[i] outside [lo, hi] (NaN included), or -1 */                    \
    int64_t first_outside_##S(const R *a, int64_t n, double lo, double hi);          \
    int sgd_step_##S(R *param, const R *grad, R *buf, int64_t n, double lr,           \
                     double momentum, double dampening, int nesterov,                 \
                     double weight_decay, int first_step);                            \
    int adam_step_##S(R *param, const R *grad, R *m, R *v, int64_t n, double lr,      \
                      double beta1, double beta2, double eps, double weight_decay,    \
                      int decoupled, int64_t step);                                   \
    int amsgrad_step_##S(R *param, const R *grad, R *m, R *v, R *vmax, int64_t n,      \
                         double lr, double beta1, double beta2, double eps,           \
                         double weight_decay, int decoupled, int64_t step);           \
    int rmsprop_step_##S(R *param, const R *grad, R *square_avg, R *momentum_buf,      \
                         R *grad_avg, int64_t n, double lr, double alpha, double eps, \
                         double weight_decay, double momentum);                       \
    int adagrad_step_##S(R *param, const R *grad, R *sum, int64_t n, double clr,       \
                         double eps, double weight_decay);                            \
    /* Σ|g|^p (max |g| for p = ∞) in double; g *= c; g = clamp(g, −c, c) */            \
    int grad_norm_pow_##S(double *out, const R *g, int64_t n, double p);              \
    int grad_scale_##S(R *g, int64_t n, double c);                                    \
    int grad_clamp_##S(R *g, int64_t n, double c);                                    \
    /* forward through the blocks, loss value and gradient, backward (no ∇x of the input) */ \
    int network_forward_##S(const fp_dense_block *blocks, int n_blocks, const R *x,      \
                            int64_t batch);                                               \
    int network_train_##S(double *loss, const fp_dense_block *blocks, int n_blocks,      \
                          const R *x, int64_t batch, int loss_kind,                       \
                          const int64_t *labels, const R *target, const fp_loss_opts *opts, \
                          R *g0, R *g1); \
    /* the tape (tape.c): ops [a, b) forward, or backward into the grad table */          \
    int tape_forward_##S(const fp_op *ops, int a, int b, void *const *val,                 \
                         const int64_t *width, int64_t batch);                             \
    int tape_backward_##S(const fp_op *ops, int a, int b, void *const *val,                \
                          void *const *grad, const int64_t *width, int64_t batch,          \
                          int accumulate);                                                 \
    int tape_loss_##S(double *loss, R *g, const R *z, int64_t batch, int64_t n_out,        \
                      int loss_kind, const int64_t *labels, const R *target);              \
    /* the tape's R-passes: R-forward of ops [a, b), R-backward into both grad tables */  \
    int tape_rforward_##S(const fp_op *ops, int a, int b, void *const *val,                \
                          void *const *rval, const int64_t *width, int64_t batch,          \
                          const R *v);                                                     \
    int tape_rbackward_##S(const fp_op *ops, int a, int b, void *const *val,               \
                           void *const *rval, void *const *grad, void *const *rgrad,       \
                           const int64_t *width, int64_t batch, const R *v, R *hv);

FP_DECLARE(float, f32)
FP_DECLARE(double, f64)
#undef FP_DECLARE

/* Dropout (dropout.c) and the normalization layers (norm.c), for one precision. */
#define FP_DECLARE_LAYERS(R, S)                                                       \
    int dropout_forward_##S(R *y, uint8_t *mask, const R *x, int64_t n, double p,      \
                            uint64_t key, uint64_t counter);                          \
    int dropout_backward_##S(R *dx, const R *g, const uint8_t *mask, int64_t n,        \
                             double p);                                               \
    int layernorm_forward_##S(R *y, R *mean, R *rstd, const R *x, const R *w,          \
                              const R *b, int64_t batch, int64_t n, double eps);      \
    int layernorm_backward_##S(R *dx, R *dw, R *db, const R *g, const R *x,            \
                               const R *mean, const R *rstd, const R *w,              \
                               int64_t batch, int64_t n, int accumulate);             \
    int layernorm_rforward_##S(R *y, R *ry, const R *x, const R *rx, const R *w,       \
                               const R *b, const R *vw, const R *vb, int64_t batch,   \
                               int64_t n, double eps);                                \
    int layernorm_rbackward_##S(R *dx, R *rdx, R *hvw, R *hvb, const R *g,             \
                                const R *rg, const R *x, const R *rx, const R *w,     \
                                const R *vw, int64_t batch, int64_t n, double eps,    \
                                int accumulate);                                      \
    int batchnorm_forward_##S(R *y, R *mean, R *rstd, R *running_mean,                 \
                              R *running_var, const R *x, const R *w, const R *b,     \
                              int64_t batch, int64_t c, double eps, double momentum,  \
                              int batch_stats);                                       \
    int batchnorm_backward_##S(R *dx, R *dw, R *db, R *ws, const R *g, const R *x,     \
                               const R *mean, const R *rstd, const R *w,              \
                               int64_t batch, int64_t c, int batch_stats,             \
                               int accumulate);                                       \
    int batchnorm_rforward_##S(R *y, R *ry, const R *x, const R *rx, const R *mean,    \
                               const R *rstd, const R *w, const R *b, const R *vw,    \
                               const R *vb, int64_t batch, int64_t c);                \
    int batchnorm_rbackward_##S(R *dx, R *rdx, R *hvw, R *hvb, const R *g,             \
                                const R *rg, const R *x, const R *rx, const R *mean,  \
                                const R *rstd, const R *w, const R *vw,               \
                                int64_t batch, int64_t c, int accumulate);

FP_DECLARE_LAYERS(float, f32)
FP_DECLARE_LAYERS(double, f64)
#undef FP_DECLARE_LAYERS
/* Weighted and robust losses (loss.c): sample_weight (batch,) and class_weight (classes,) may
 * be NULL (all ones); kind is an FP_LOSS_ code other than SOFTMAX_XENT, param Huber's δ or
 * SmoothL1's β. */
#define FP_DECLARE_LOSSES(R, S)                                                               \
    int pointwise_loss_forward_backward_##S(double *loss, R *dp, const R *pred,              \
                                            const R *target, const R *sample_weight,         \
                                            int64_t batch, int64_t k, int kind, double param); \
    int pointwise_loss_hvp_##S(R *hv, const R *pred, const R *target, const R *v,            \
                               const R *sample_weight, int64_t batch, int64_t k, int kind,   \
                               double param);                                                \
    int gaussian_nll_weighted_forward_backward_##S(double *loss, R *dz, const R *z,          \
                                                   const R *target, const R *sample_weight,  \
                                                   int64_t batch, int64_t k);                \
    int softmax_xent_weighted_forward_backward_##S(double *loss, R *dz, const R *z,          \
                                                   const int64_t *labels, const R *target,   \
                                                   const R *class_weight,                    \
                                                   const R *sample_weight,                   \
                                                   double label_smoothing, int64_t batch,    \
                                                   int64_t classes);                         \
    int softmax_xent_weighted_hvp_##S(R *hv, const R *z, const R *v, const int64_t *labels,  \
                                      const R *target, const R *class_weight,                \
                                      const R *sample_weight, double label_smoothing,        \
                                      int64_t batch, int64_t classes);

FP_DECLARE_LOSSES(float, f32)
FP_DECLARE_LOSSES(double, f64)
#undef FP_DECLARE_LOSSES

/* fp_parallel_for(n, min_piece, fn, ctx) runs fn(ctx, lo, hi) over [0, n) cut into at most
 * fp_threads() disjoint pieces of at least min_piece elements, the first on the calling
 * thread (parallel.c). fp_num_threads caps the pieces; 0 means the online CPU count. */
#define FP_MAX_THREADS 8
typedef void (*fp_range_fn)(void *ctx, int64_t lo, int64_t hi);
extern int fp_num_threads;
int fp_threads(void);
void fp_parallel_for(int64_t n, int64_t min_piece, fp_range_fn fn, void *ctx);

/* How the kernels were built, and the SIMD clone this CPU runs (info.c). */
const char *fp_build_compiler(void);
const char *fp_build_flags(void);
const char *fp_simd_clone(void);

/* First label outside [0, classes), or -1 when all are valid. */
int64_t fp_first_bad_label(const int64_t *labels, int64_t n, int64_t classes);

/* The optimizer's update of one flat run inside fit's epoch (fit.c): SGD (momentum, after its
 * first step) or Adam / AdamW; step is Adam's count of the steps so far. */
enum { FP_FIT_SGD = 0, FP_FIT_ADAM = 1 };
typedef struct {
    int kind;
    void *param, *s1, *s2;   /* s1: momentum buffer or exp_avg; s2: exp_avg_sq */
    const void *grad;
    int64_t n, step;
    double lr, momentum, dampening, weight_decay, beta1, beta2, eps;
    int nesterov, decoupled;
} fp_fit_update;
#define FP_DECLARE_FIT(R, S)                                                                  \
    int network_fit_##S(double *loss_sum, double *correct, int64_t *steps, int64_t *bad_row,  \
                        const fp_dense_block *blocks, int n_blocks, const R *X,               \
                        const int64_t *labels, const R *target, int64_t n_rows, int64_t first, \
                        int64_t batch, int64_t max_steps, int loss_kind,                     \
                        const fp_loss_opts *opts, fp_fit_update *u, int stop_nonfinite,      \
                        R *g0, R *g1);                                                \
    int tape_fit_##S(double *loss_sum, double *correct, int64_t *steps, int64_t *bad_row,     \
                     const fp_op *ops, int n_ops, void **val, void *const *grad,              \
                     const int64_t *width, int in_v, int out_v, const R *X,                   \
                     const int64_t *labels, const R *target, int64_t n_rows, int64_t first,   \
                     int64_t batch, int64_t max_steps, int loss_kind, fp_fit_update *u,       \
                     int stop_nonfinite);
FP_DECLARE_FIT(float, f32)
FP_DECLARE_FIT(double, f64)
#undef FP_DECLARE_FIT

/* DP-SGD's noise: g = (accumulate ? g : 0) + scale·z, z the standard normals [offset, offset + n)
 * of the Philox stream (key, counter) of dropout.c, by Box–Muller. */
int gaussian_noise_f32(float *g, int64_t n, double scale, uint64_t key, uint64_t counter,
                       int64_t offset, int accumulate);
int gaussian_noise_f64(double *g, int64_t n, double scale, uint64_t key, uint64_t counter,
                       int64_t offset, int accumulate);

#endif
