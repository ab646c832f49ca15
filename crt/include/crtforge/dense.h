/*
 * A float32 dense layer with bias, the kernel that crtforge's external codegen 'crtforge_dense'
 * (tasks/compile/offload.py) offloads matmul + add patterns to.
 */
#ifndef CRTFORGE_DENSE_H_
#define CRTFORGE_DENSE_H_

#include <stdint.h>

#include <dlpack/dlpack.h>
#include <tvm/ffi/c_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Output columns per block of the packed weights. */
#define CRTFORGE_DENSE_BLOCK 8

/**
 * y = x * W + bias, with W [k][n] packed at build time by tasks/compile/offload.py `pack_dense`: for each block
 * of CRTFORGE_DENSE_BLOCK output columns (the last one n % CRTFORGE_DENSE_BLOCK wide when that is not 0), the
 * block's [k][width] values, row-major. The inner loop then reads the weights once, in order, a block's row
 * at a time: one VLDM of 8 registers and 8 VFMA per input value on Cortex-M4F.
 * \param[in] x [m][k]
 * \param[in] w the packed weights, k * n values
 * \param[in] bias [n]
 * \param[out] y [m][n]
 */
void crtforge_dense_f32(const float* x, const float* w, const float* bias, float* y, int32_t m, int32_t k,
                        int32_t n);

/** A float32 convolution's geometry (groups 1). */
typedef struct crtforge_conv2d_f32_shape {
  int32_t batches, in_h, in_w, in_c, out_h, out_w, out_c;
  int32_t kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left;
  int32_t nchw; /**< nonzero: input and output are NCHW (ONNX), else NHWC (TFLite) */
  int32_t relu; /**< nonzero: max(0, .) fused */
} crtforge_conv2d_f32_shape;

/** Floats of scratch crtforge_conv2d_f32 needs: one output row's input columns, and its outputs. */
#define CRTFORGE_CONV2D_F32_SCRATCH(s) ((s)->out_w * ((s)->kernel_h * (s)->kernel_w * (s)->in_c + (s)->out_c))

/**
 * y = conv2d(x, W) + bias (then ReLU when s->relu), one output row at a time: each pixel's input column
 * ([kernel_h][kernel_w][in_c], zeros in the padding) is gathered into scratch, then the row is multiplied by W
 * as a dense layer (crtforge_dense_f32) of out_w rows, k = kernel_h * kernel_w * in_c inputs and out_c outputs
 * (on Cortex-M4F two pixels share each load of weights).
 * \param[in] w W as [k][out_c] (rows in the column's order) packed by tasks/compile/offload.py `pack_dense`
 * \param scratch CRTFORGE_CONV2D_F32_SCRATCH(s) floats
 * \return 0, or -1 for a shape it does not take
 */
int32_t crtforge_conv2d_f32(const crtforge_conv2d_f32_shape* s, const float* x, const float* w, const float* bias,
                            float* scratch, float* y);

/**
 * Depthwise y = conv2d(x, W, groups = channels) + bias (then ReLU when s->relu), NHWC, one filter per channel
 * (depth multiplier 1: s->in_c == s->out_c).
 * \param[in] w W as [kernel_h][kernel_w][channels]
 * \return 0, or -1 for a shape it does not take (NCHW, or out_c != in_c)
 */
int32_t crtforge_depthwise_f32(const crtforge_conv2d_f32_shape* s, const float* x, const float* w, const float* bias,
                               float* y);

#ifdef __cplusplus
}
#endif

#endif /* CRTFORGE_DENSE_H_ */
