# C declarations of csrc/fastprop.h, for the bindings in _kernels.pyx.
from libc.stdint cimport int64_t
from libc.stdint cimport uint8_t, uint64_t

cdef extern from "fastprop.h" nogil:
    enum:
        FP_OK
        FP_ERR_ARG
        FP_ERR_SIZE
        FP_ERR_NOBLAS
        FP_ERR_LABEL
        FP_ERR_ACT

    ctypedef struct fp_act_params:
        double negative_slope
        double beta
        double threshold

    enum:
        FP_LOSS_SOFTMAX_XENT
        FP_LOSS_SIGMOID_BCE
        FP_LOSS_MSE
        FP_LOSS_L1
        FP_LOSS_HUBER
        FP_LOSS_SMOOTH_L1
        FP_LOSS_GAUSSIAN_NLL

    ctypedef struct fp_loss_opts:
        const void *class_weight
        const void *sample_weight
        double label_smoothing
        double delta

    ctypedef struct fp_dense_block:
        int64_t in_ "in"
        int64_t out
        int act
        fp_act_params p
        const void *w
        const void *b
        void *dw
        void *db
        void *y
        void *preact

    ctypedef void (*fp_sgemm_fn)(char*, char*, int*, int*, int*, float*, float*, int*,
                                 float*, int*, float*, float*, int*)
    ctypedef void (*fp_dgemm_fn)(char*, char*, int*, int*, int*, double*, double*, int*,
                                 double*, int*, double*, double*, int*)
    void fp_set_blas(fp_sgemm_fn sgemm, fp_dgemm_fn dgemm)
    int64_t fp_first_bad_label(const int64_t *labels, int64_t n, int64_t classes)
    int fp_num_threads
    int fp_threads()
    int FP_MAX_THREADS

    int gemm_f32(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha,
                 const float *a, const float *b, float beta, float *c)
    int gemm_f64(char ta, char tb, int64_t m, int64_t n, int64_t k, double alpha,
                 const double *a, const double *b, double beta, double *c)
    int dense_forward_f32(float *y, float *preact, const float *x, const float *w, const float *b,
                          int64_t batch, int64_t n_in, int64_t n_out, int act, const fp_act_params *p)
    int dense_forward_f64(double *y, double *preact, const double *x, const double *w, const double *b,
                          int64_t batch, int64_t n_in, int64_t n_out, int act, const fp_act_params *p)
    int dense_backward_f32(float *dx, float *dw, float *db, const float *g, const float *x,
                           const float *w, int64_t batch, int64_t n_in, int64_t n_out, int accumulate,
                           int accumulate_dx)
    int dense_backward_f64(double *dx, double *dw, double *db, const double *g, const double *x,
                           const double *w, int64_t batch, int64_t n_in, int64_t n_out, int accumulate,
                           int accumulate_dx)
    int activation_forward_f32(float *y, const float *x, int64_t n, int act, const fp_act_params *p)
    int activation_forward_f64(double *y, const double *x, int64_t n, int act, const fp_act_params *p)
    int activation_backward_f32(float *dx, const float *g, const float *x, const float *y, int64_t n,
                                int act, const fp_act_params *p)
    int activation_backward_f64(double *dx, const double *g, const double *x, const double *y, int64_t n,
                                int act, const fp_act_params *p)
    int activation_second_f32(float *d2x, const float *g, const float *x, int64_t n, int act,
                              const fp_act_params *p)
    int activation_second_f64(double *d2x, const double *g, const double *x, int64_t n, int act,
                              const fp_act_params *p)
    int activation_rbackward_f32(float *dx, float *rdx, const float *g, const float *rg,
                                 const float *rx, const float *x, int64_t n, int act,
                                 const fp_act_params *p)
    int activation_rbackward_f64(double *dx, double *rdx, const double *g, const double *rg,
                                 const double *rx, const double *x, int64_t n, int act,
                                 const fp_act_params *p)
    int prelu_forward_f32(float *y, const float *x, const float *w, int64_t batch, int64_t channels, int64_t n_w)
    int prelu_forward_f64(double *y, const double *x, const double *w, int64_t batch, int64_t channels, int64_t n_w)
    int prelu_backward_f32(float *dx, float *dw, const float *g, const float *x, const float *w,
                           int64_t batch, int64_t channels, int64_t n_w, int accumulate)
    int prelu_backward_f64(double *dx, double *dw, const double *g, const double *x, const double *w,
                           int64_t batch, int64_t channels, int64_t n_w, int accumulate)
    int prelu_rforward_f32(float *ry, const float *rx, const float *x, const float *w,
                           const float *vw, int64_t batch, int64_t channels, int64_t n_w)
    int prelu_rforward_f64(double *ry, const double *rx, const double *x, const double *w,
                           const double *vw, int64_t batch, int64_t channels, int64_t n_w)
    int prelu_rbackward_f32(float *dx, float *rdx, float *dw, const float *g, const float *rg,
                            const float *x, const float *rx, const float *w, const float *vw,
                            int64_t batch, int64_t channels, int64_t n_w, int accumulate)
    int prelu_rbackward_f64(double *dx, double *rdx, double *dw, const double *g, const double *rg,
                            const double *x, const double *rx, const double *w, const double *vw,
                            int64_t batch, int64_t channels, int64_t n_w, int accumulate)
    int softmax_forward_f32(float *p, const float *z, int64_t batch, int64_t classes, int log_space)
    int softmax_forward_f64(double *p, const double *z, int64_t batch, int64_t classes, int log_space)
    int softmax_xent_forward_backward_f32(double *loss, float *dz, const float *z, const int64_t *labels,
                                          const float *target, int64_t batch, int64_t classes)
    int softmax_xent_forward_backward_f64(double *loss, double *dz, const double *z, const int64_t *labels,
                                          const double *target, int64_t batch, int64_t classes)
    int sigmoid_bce_forward_backward_f32(double *loss, float *dz, const float *z, const float *target, int64_t n)
    int sigmoid_bce_forward_backward_f64(double *loss, double *dz, const double *z, const double *target, int64_t n)
    int mse_forward_backward_f32(double *loss, float *dp, const float *pred, const float *target, int64_t n)
    int mse_forward_backward_f64(double *loss, double *dp, const double *pred, const double *target, int64_t n)
    int gaussian_nll_forward_backward_f32(double *loss, float *dz, const float *z, const float *target,
                                          int64_t batch, int64_t k)
    int gaussian_nll_forward_backward_f64(double *loss, double *dz, const double *z, const double *target,
                                          int64_t batch, int64_t k)
    int add_forward_f32(float *y, const float *const *xs, int k, int64_t n)
    int add_forward_f64(double *y, const double *const *xs, int k, int64_t n)
    int add_backward_f32(float *dx, const float *g, int64_t n, int accumulate)
    int add_backward_f64(double *dx, const double *g, int64_t n, int accumulate)
    int mul_forward_f32(float *y, const float *a, const float *b, int64_t n)
    int mul_forward_f64(double *y, const double *a, const double *b, int64_t n)
    int mul_backward_f32(float *da, float *db, const float *g, const float *a, const float *b, int64_t n,
                         int accumulate_a, int accumulate_b)
    int mul_backward_f64(double *da, double *db, const double *g, const double *a, const double *b,
                         int64_t n, int accumulate_a, int accumulate_b)
    int concat_forward_f32(float *y, const float *x, int64_t batch, int64_t width, int64_t offset, int64_t w)
    int concat_forward_f64(double *y, const double *x, int64_t batch, int64_t width, int64_t offset, int64_t w)
    int concat_backward_f32(float *dx, const float *g, int64_t batch, int64_t width, int64_t offset, int64_t w,
                            int accumulate)
    int concat_backward_f64(double *dx, const double *g, int64_t batch, int64_t width, int64_t offset,
                            int64_t w, int accumulate)
    int softmax_xent_hvp_f32(float *hv, const float *z, const float *v, const float *target,
                             int64_t batch, int64_t classes)
    int softmax_xent_hvp_f64(double *hv, const double *z, const double *v, const double *target,
                             int64_t batch, int64_t classes)
    int sigmoid_bce_hvp_f32(float *hv, const float *z, const float *v, int64_t n)
    int sigmoid_bce_hvp_f64(double *hv, const double *z, const double *v, int64_t n)
    int mse_hvp_f32(float *hv, const float *v, int64_t n)
    int mse_hvp_f64(double *hv, const double *v, int64_t n)
    int64_t first_outside_f32(const float *a, int64_t n, double lo, double hi)
    int64_t first_outside_f64(const double *a, int64_t n, double lo, double hi)
    int sgd_step_f32(float *param, const float *grad, float *buf, int64_t n, double lr, double momentum,
                     double dampening, int nesterov, double weight_decay, int first_step)
    int sgd_step_f64(double *param, const double *grad, double *buf, int64_t n, double lr, double momentum,
                     double dampening, int nesterov, double weight_decay, int first_step)
    int adam_step_f32(float *param, const float *grad, float *m, float *v, int64_t n, double lr,
                      double beta1, double beta2, double eps, double weight_decay, int decoupled, int64_t step)
    int adam_step_f64(double *param, const double *grad, double *m, double *v, int64_t n, double lr,
                      double beta1, double beta2, double eps, double weight_decay, int decoupled, int64_t step)
    int network_forward_f32(const fp_dense_block *blocks, int n_blocks, const float *x, int64_t batch)
    int network_forward_f64(const fp_dense_block *blocks, int n_blocks, const double *x, int64_t batch)
    int network_train_f32(double *loss, const fp_dense_block *blocks, int n_blocks, const float *x,
                          int64_t batch, int loss_kind, const int64_t *labels, const float *target,
                          const fp_loss_opts *opts, float *g0, float *g1)
    int network_train_f64(double *loss, const fp_dense_block *blocks, int n_blocks, const double *x,
                          int64_t batch, int loss_kind, const int64_t *labels, const double *target,
                          const fp_loss_opts *opts, double *g0, double *g1)
    # weighted and robust losses (loss.c), bound in _loss_weighted.pxi
    int pointwise_loss_forward_backward_f32(double *loss, float *dp, const float *pred,
                                            const float *target, const float *sample_weight,
                                            int64_t batch, int64_t k, int kind, double param)
    int pointwise_loss_forward_backward_f64(double *loss, double *dp, const double *pred,
                                            const double *target, const double *sample_weight,
                                            int64_t batch, int64_t k, int kind, double param)
    int pointwise_loss_hvp_f32(float *hv, const float *pred, const float *target, const float *v,
                               const float *sample_weight, int64_t batch, int64_t k, int kind,
                               double param)
    int pointwise_loss_hvp_f64(double *hv, const double *pred, const double *target, const double *v,
                               const double *sample_weight, int64_t batch, int64_t k, int kind,
                               double param)
    int gaussian_nll_weighted_forward_backward_f32(double *loss, float *dz, const float *z,
                                                   const float *target, const float *sample_weight,
                                                   int64_t batch, int64_t k)
    int gaussian_nll_weighted_forward_backward_f64(double *loss, double *dz, const double *z,
                                                   const double *target, const double *sample_weight,
                                                   int64_t batch, int64_t k)
    int softmax_xent_weighted_forward_backward_f32(double *loss, float *dz, const float *z,
                                                   const int64_t *labels, const float *target,
                                                   const float *class_weight, const float *sample_weight,
                                                   double label_smoothing, int64_t batch, int64_t classes)
    int softmax_xent_weighted_forward_backward_f64(double *loss, double *dz, const double *z,
                                                   const int64_t *labels, const double *target,
                                                   const double *class_weight, const double *sample_weight,
                                                   double label_smoothing, int64_t batch, int64_t classes)
    int softmax_xent_weighted_hvp_f32(float *hv, const float *z, const float *v, const int64_t *labels,
                                      const float *target, const float *class_weight,
                                      const float *sample_weight, double label_smoothing,
                                      int64_t batch, int64_t classes)
    int softmax_xent_weighted_hvp_f64(double *hv, const double *z, const double *v, const int64_t *labels,
                                      const double *target, const double *class_weight,
                                      const double *sample_weight, double label_smoothing,
                                      int64_t batch, int64_t classes)

    # Dropout (dropout.c) and the normalization layers (norm.c)
    int dropout_forward_f32(float *y, uint8_t *mask, const float *x, int64_t n, double p,
                            uint64_t key, uint64_t counter)
    int dropout_forward_f64(double *y, uint8_t *mask, const double *x, int64_t n, double p,
                            uint64_t key, uint64_t counter)
    int dropout_backward_f32(float *dx, const float *g, const uint8_t *mask, int64_t n, double p)
    int dropout_backward_f64(double *dx, const double *g, const uint8_t *mask, int64_t n, double p)
    int layernorm_forward_f32(float *y, float *mean, float *rstd, const float *x, const float *w,
                              const float *b, int64_t batch, int64_t n, double eps)
    int layernorm_forward_f64(double *y, double *mean, double *rstd, const double *x, const double *w,
                              const double *b, int64_t batch, int64_t n, double eps)
    int layernorm_backward_f32(float *dx, float *dw, float *db, const float *g, const float *x,
                               const float *mean, const float *rstd, const float *w, int64_t batch,
                               int64_t n, int accumulate)
    int layernorm_backward_f64(double *dx, double *dw, double *db, const double *g, const double *x,
                               const double *mean, const double *rstd, const double *w, int64_t batch,
                               int64_t n, int accumulate)
    int layernorm_rforward_f32(float *y, float *ry, const float *x, const float *rx, const float *w,
                               const float *b, const float *vw, const float *vb, int64_t batch,
                               int64_t n, double eps)
    int layernorm_rforward_f64(double *y, double *ry, const double *x, const double *rx, const double *w,
                               const double *b, const double *vw, const double *vb, int64_t batch,
                               int64_t n, double eps)
    int layernorm_rbackward_f32(float *dx, float *rdx, float *hvw, float *hvb, const float *g,
                                const float *rg, const float *x, const float *rx, const float *w,
                                const float *vw, int64_t batch, int64_t n, double eps, int accumulate)
    int layernorm_rbackward_f64(double *dx, double *rdx, double *hvw, double *hvb, const double *g,
                                const double *rg, const double *x, const double *rx, const double *w,
                                const double *vw, int64_t batch, int64_t n, double eps, int accumulate)
    int batchnorm_forward_f32(float *y, float *mean, float *rstd, float *running_mean,
                              float *running_var, const float *x, const float *w, const float *b,
                              int64_t batch, int64_t c, double eps, double momentum, int batch_stats)
    int batchnorm_forward_f64(double *y, double *mean, double *rstd, double *running_mean,
                              double *running_var, const double *x, const double *w, const double *b,
                              int64_t batch, int64_t c, double eps, double momentum, int batch_stats)
    int batchnorm_backward_f32(float *dx, float *dw, float *db, float *ws, const float *g,
                               const float *x, const float *mean, const float *rstd, const float *w,
                               int64_t batch, int64_t c, int batch_stats, int accumulate)
    int batchnorm_backward_f64(double *dx, double *dw, double *db, double *ws, const double *g,
                               const double *x, const double *mean, const double *rstd, const double *w,
                               int64_t batch, int64_t c, int batch_stats, int accumulate)
    int batchnorm_rforward_f32(float *y, float *ry, const float *x, const float *rx, const float *mean,
                               const float *rstd, const float *w, const float *b, const float *vw,
                               const float *vb, int64_t batch, int64_t c)
    int batchnorm_rforward_f64(double *y, double *ry, const double *x, const double *rx, const double *mean,
                               const double *rstd, const double *w, const double *b, const double *vw,
                               const double *vb, int64_t batch, int64_t c)
    int batchnorm_rbackward_f32(float *dx, float *rdx, float *hvw, float *hvb, const float *g,
                                const float *rg, const float *x, const float *rx, const float *mean,
                                const float *rstd, const float *w, const float *vw, int64_t batch,
                                int64_t c, int accumulate)
    int batchnorm_rbackward_f64(double *dx, double *rdx, double *hvw, double *hvb, const double *g,
                                const double *rg, const double *x, const double *rx, const double *mean,
                                const double *rstd, const double *w, const double *vw, int64_t batch,
                                int64_t c, int accumulate)

# The float/double choice, written once: c_NAME(f64, ...) calls NAME_f64 or NAME_f32 with the
# same arguments (C converts the void pointers), so a binding has one call, not two branches.
# A new kernel NAME adds one #define line below and one c_NAME declaration (its _f32 signature
# with float* as void*, float as double, after a leading bint f64).
cdef extern from *:
    """
    #define FP_BY_DTYPE(name, f64, ...) ((f64) ? name##_f64(__VA_ARGS__) : name##_f32(__VA_ARGS__))
    #define c_gemm(f64, ...) FP_BY_DTYPE(gemm, f64, __VA_ARGS__)
    #define c_dense_forward(f64, ...) FP_BY_DTYPE(dense_forward, f64, __VA_ARGS__)
    #define c_dense_backward(f64, ...) FP_BY_DTYPE(dense_backward, f64, __VA_ARGS__)
    #define c_activation_forward(f64, ...) FP_BY_DTYPE(activation_forward, f64, __VA_ARGS__)
    #define c_activation_backward(f64, ...) FP_BY_DTYPE(activation_backward, f64, __VA_ARGS__)
    #define c_activation_second(f64, ...) FP_BY_DTYPE(activation_second, f64, __VA_ARGS__)
    #define c_activation_rbackward(f64, ...) FP_BY_DTYPE(activation_rbackward, f64, __VA_ARGS__)
    #define c_prelu_forward(f64, ...) FP_BY_DTYPE(prelu_forward, f64, __VA_ARGS__)
    #define c_prelu_backward(f64, ...) FP_BY_DTYPE(prelu_backward, f64, __VA_ARGS__)
    #define c_prelu_rforward(f64, ...) FP_BY_DTYPE(prelu_rforward, f64, __VA_ARGS__)
    #define c_prelu_rbackward(f64, ...) FP_BY_DTYPE(prelu_rbackward, f64, __VA_ARGS__)
    #define c_softmax_forward(f64, ...) FP_BY_DTYPE(softmax_forward, f64, __VA_ARGS__)
    #define c_softmax_xent_forward_backward(f64, ...) FP_BY_DTYPE(softmax_xent_forward_backward, f64, __VA_ARGS__)
    #define c_sigmoid_bce_forward_backward(f64, ...) FP_BY_DTYPE(sigmoid_bce_forward_backward, f64, __VA_ARGS__)
    #define c_mse_forward_backward(f64, ...) FP_BY_DTYPE(mse_forward_backward, f64, __VA_ARGS__)
    #define c_gaussian_nll_forward_backward(f64, ...) FP_BY_DTYPE(gaussian_nll_forward_backward, f64, __VA_ARGS__)
    #define c_add_forward(f64, ...) FP_BY_DTYPE(add_forward, f64, __VA_ARGS__)
    #define c_add_backward(f64, ...) FP_BY_DTYPE(add_backward, f64, __VA_ARGS__)
    #define c_mul_forward(f64, ...) FP_BY_DTYPE(mul_forward, f64, __VA_ARGS__)
    #define c_mul_backward(f64, ...) FP_BY_DTYPE(mul_backward, f64, __VA_ARGS__)
    #define c_concat_forward(f64, ...) FP_BY_DTYPE(concat_forward, f64, __VA_ARGS__)
    #define c_concat_backward(f64, ...) FP_BY_DTYPE(concat_backward, f64, __VA_ARGS__)
    #define c_softmax_xent_hvp(f64, ...) FP_BY_DTYPE(softmax_xent_hvp, f64, __VA_ARGS__)
    #define c_sigmoid_bce_hvp(f64, ...) FP_BY_DTYPE(sigmoid_bce_hvp, f64, __VA_ARGS__)
    #define c_mse_hvp(f64, ...) FP_BY_DTYPE(mse_hvp, f64, __VA_ARGS__)
    #define c_first_outside(f64, ...) FP_BY_DTYPE(first_outside, f64, __VA_ARGS__)
    #define c_sgd_step(f64, ...) FP_BY_DTYPE(sgd_step, f64, __VA_ARGS__)
    #define c_adam_step(f64, ...) FP_BY_DTYPE(adam_step, f64, __VA_ARGS__)
    #define c_network_forward(f64, ...) FP_BY_DTYPE(network_forward, f64, __VA_ARGS__)
    #define c_network_train(f64, ...) FP_BY_DTYPE(network_train, f64, __VA_ARGS__)
    #define c_pointwise_loss_forward_backward(f64, ...) FP_BY_DTYPE(pointwise_loss_forward_backward, f64, __VA_ARGS__)
    #define c_pointwise_loss_hvp(f64, ...) FP_BY_DTYPE(pointwise_loss_hvp, f64, __VA_ARGS__)
    #define c_gaussian_nll_weighted_forward_backward(f64, ...) FP_BY_DTYPE(gaussian_nll_weighted_forward_backward, f64, __VA_ARGS__)
    #define c_softmax_xent_weighted_forward_backward(f64, ...) FP_BY_DTYPE(softmax_xent_weighted_forward_backward, f64, __VA_ARGS__)
    #define c_softmax_xent_weighted_hvp(f64, ...) FP_BY_DTYPE(softmax_xent_weighted_hvp, f64, __VA_ARGS__)
    """
    int c_gemm(bint f64, char ta, char tb, int64_t m, int64_t n, int64_t k, double alpha,
        const void *a, const void *b, double beta, void *c) nogil
    int c_dense_forward(bint f64, void *y, void *preact, const void *x, const void *w,
        const void *b, int64_t batch, int64_t n_in, int64_t n_out, int act,
        const fp_act_params *p) nogil
    int c_dense_backward(bint f64, void *dx, void *dw, void *db, const void *g, const void *x,
        const void *w, int64_t batch, int64_t n_in, int64_t n_out, int accumulate,
        int accumulate_dx) nogil
    int c_activation_forward(bint f64, void *y, const void *x, int64_t n, int act,
        const fp_act_params *p) nogil
    int c_activation_backward(bint f64, void *dx, const void *g, const void *x, const void *y,
        int64_t n, int act, const fp_act_params *p) nogil
    int c_activation_second(bint f64, void *d2x, const void *g, const void *x, int64_t n, int act,
        const fp_act_params *p) nogil
    int c_activation_rbackward(bint f64, void *dx, void *rdx, const void *g, const void *rg,
        const void *rx, const void *x, int64_t n, int act, const fp_act_params *p) nogil
    int c_prelu_forward(bint f64, void *y, const void *x, const void *w, int64_t batch,
        int64_t channels, int64_t n_w) nogil
    int c_prelu_backward(bint f64, void *dx, void *dw, const void *g, const void *x, const void *w,
        int64_t batch, int64_t channels, int64_t n_w, int accumulate) nogil
    int c_prelu_rforward(bint f64, void *ry, const void *rx, const void *x, const void *w,
        const void *vw, int64_t batch, int64_t channels, int64_t n_w) nogil
    int c_prelu_rbackward(bint f64, void *dx, void *rdx, void *dw, const void *g, const void *rg,
        const void *x, const void *rx, const void *w, const void *vw, int64_t batch,
        int64_t channels, int64_t n_w, int accumulate) nogil
    int c_softmax_forward(bint f64, void *p, const void *z, int64_t batch, int64_t classes,
        int log_space) nogil
    int c_softmax_xent_forward_backward(bint f64, double *loss, void *dz, const void *z,
        const void *labels, const void *target, int64_t batch, int64_t classes) nogil
    int c_sigmoid_bce_forward_backward(bint f64, double *loss, void *dz, const void *z,
        const void *target, int64_t n) nogil
    int c_mse_forward_backward(bint f64, double *loss, void *dp, const void *pred,
        const void *target, int64_t n) nogil
    int c_gaussian_nll_forward_backward(bint f64, double *loss, void *dz, const void *z,
        const void *target, int64_t batch, int64_t k) nogil
    int c_add_forward(bint f64, void *y, const void *xs, int k, int64_t n) nogil
    int c_add_backward(bint f64, void *dx, const void *g, int64_t n, int accumulate) nogil
    int c_mul_forward(bint f64, void *y, const void *a, const void *b, int64_t n) nogil
    int c_mul_backward(bint f64, void *da, void *db, const void *g, const void *a, const void *b,
        int64_t n, int accumulate_a, int accumulate_b) nogil
    int c_concat_forward(bint f64, void *y, const void *x, int64_t batch, int64_t width,
        int64_t offset, int64_t w) nogil
    int c_concat_backward(bint f64, void *dx, const void *g, int64_t batch, int64_t width,
        int64_t offset, int64_t w, int accumulate) nogil
    int c_softmax_xent_hvp(bint f64, void *hv, const void *z, const void *v, const void *target,
        int64_t batch, int64_t classes) nogil
    int c_sigmoid_bce_hvp(bint f64, void *hv, const void *z, const void *v, int64_t n) nogil
    int c_mse_hvp(bint f64, void *hv, const void *v, int64_t n) nogil
    int64_t c_first_outside(bint f64, const void *a, int64_t n, double lo, double hi) nogil
    int c_sgd_step(bint f64, void *param, const void *grad, void *buf, int64_t n, double lr,
        double momentum, double dampening, int nesterov, double weight_decay, int first_step) nogil
    int c_adam_step(bint f64, void *param, const void *grad, void *m, void *v, int64_t n, double lr,
        double beta1, double beta2, double eps, double weight_decay, int decoupled,
        int64_t step) nogil
    int c_network_forward(bint f64, const fp_dense_block *blocks, int n_blocks, const void *x,
        int64_t batch) nogil
    int c_network_train(bint f64, double *loss, const fp_dense_block *blocks, int n_blocks,
        const void *x, int64_t batch, int loss_kind, const void *labels, const void *target,
        const fp_loss_opts *opts, void *g0, void *g1) nogil
    int c_pointwise_loss_forward_backward(bint f64, double *loss, void *dp, const void *pred,
        const void *target, const void *sample_weight, int64_t batch, int64_t k, int kind,
        double param) nogil
    int c_pointwise_loss_hvp(bint f64, void *hv, const void *pred, const void *target,
        const void *v, const void *sample_weight, int64_t batch, int64_t k, int kind,
        double param) nogil
    int c_gaussian_nll_weighted_forward_backward(bint f64, double *loss, void *dz, const void *z,
        const void *target, const void *sample_weight, int64_t batch, int64_t k) nogil
    int c_softmax_xent_weighted_forward_backward(bint f64, double *loss, void *dz, const void *z,
        const void *labels, const void *target, const void *class_weight,
        const void *sample_weight, double label_smoothing, int64_t batch, int64_t classes) nogil
    int c_softmax_xent_weighted_hvp(bint f64, void *hv, const void *z, const void *v,
        const void *labels, const void *target, const void *class_weight,
        const void *sample_weight, double label_smoothing, int64_t batch, int64_t classes) nogil


# the tape (csrc/tape.c, bindings in _tape.pxi)
cdef extern from "fastprop.h" nogil:
    enum:
        FP_OP_MAX_IN
        FP_OP_DROPOUT
        FP_OP_LAYERNORM
        FP_OP_BATCHNORM

    ctypedef struct fp_op:
        int kind, act
        fp_act_params p
        int out, n_in
        int in_ "in"[16]
        int acc[16]
        int acc_params
        int64_t n_w
        const void *w
        const void *b
        void *dw
        void *db
        void *preact
        int active, track
        double prob, eps, momentum
        uint64_t *rng
        uint8_t *mask
        void *mean
        void *rstd
        void *ws
        void *run_mean
        void *run_var
        int64_t *tracked
        int64_t off_w, off_b

cdef extern from *:
    """
    #define c_tape_forward(f64, ...) FP_BY_DTYPE(tape_forward, f64, __VA_ARGS__)
    #define c_tape_backward(f64, ...) FP_BY_DTYPE(tape_backward, f64, __VA_ARGS__)
    #define c_tape_loss(f64, ...) FP_BY_DTYPE(tape_loss, f64, __VA_ARGS__)
    #define c_tape_rforward(f64, ...) FP_BY_DTYPE(tape_rforward, f64, __VA_ARGS__)
    #define c_tape_rbackward(f64, ...) FP_BY_DTYPE(tape_rbackward, f64, __VA_ARGS__)
    """
    int c_tape_forward(bint f64, const fp_op *ops, int a, int b, void **val,
        const int64_t *width, int64_t batch) nogil
    int c_tape_backward(bint f64, const fp_op *ops, int a, int b, void **val, void **grad,
        const int64_t *width, int64_t batch, int accumulate) nogil
    int c_tape_loss(bint f64, double *loss, void *g, const void *z, int64_t batch, int64_t n_out,
        int loss_kind, const void *labels, const void *target) nogil
    int c_tape_rforward(bint f64, const fp_op *ops, int a, int b, void **val, void **rval,
        const int64_t *width, int64_t batch, const void *v) nogil
    int c_tape_rbackward(bint f64, const fp_op *ops, int a, int b, void **val, void **rval,
        void **grad, void **rgrad, const int64_t *width, int64_t batch, const void *v,
        void *hv) nogil

# fit's epoch in C (csrc/fit.c, bindings in _fit.pxi)
cdef extern from "fastprop.h":
    enum:
        FP_FIT_SGD
        FP_FIT_ADAM
    ctypedef struct fp_fit_update:
        int kind
        void *param
        void *s1
        void *s2
        const void *grad
        int64_t n, step
        double lr, momentum, dampening, weight_decay, beta1, beta2, eps
        int nesterov, decoupled

cdef extern from *:
    """
    #define c_network_fit(f64, ...) FP_BY_DTYPE(network_fit, f64, __VA_ARGS__)
    #define c_tape_fit(f64, ...) FP_BY_DTYPE(tape_fit, f64, __VA_ARGS__)
    """
    int c_network_fit(bint f64, double *loss_sum, double *correct, int64_t *steps, int64_t *bad_row,
        const fp_dense_block *blocks, int n_blocks, const void *X, const int64_t *labels,
        const void *target, int64_t n_rows, int64_t first, int64_t batch, int64_t max_steps,
        int loss_kind, const fp_loss_opts *opts, fp_fit_update *u, int stop_nonfinite,
        void *g0, void *g1) nogil
    int c_tape_fit(bint f64, double *loss_sum, double *correct, int64_t *steps, int64_t *bad_row,
        const fp_op *ops, int n_ops, void **val, void **grad, const int64_t *width, int in_v,
        int out_v, const void *X, const int64_t *labels, const void *target, int64_t n_rows,
        int64_t first, int64_t batch, int64_t max_steps, int loss_kind, fp_fit_update *u,
        int stop_nonfinite) nogil

cdef extern from "fastprop.h" nogil:
    # DP-SGD's Gaussian noise (dropout.c's Philox stream)
    int gaussian_noise_f32(float *g, int64_t n, double scale, uint64_t key, uint64_t counter,
                           int64_t offset, int accumulate)
    int gaussian_noise_f64(double *g, int64_t n, double scale, uint64_t key, uint64_t counter,
                           int64_t offset, int accumulate)
