/*
 * int8 kernels for TFLite's full-integer scheme, bit-exact with TFLite Micro's reference integer kernels.
 *
 * Scheme: activations int8 with a per-tensor scale and zero point; weights int8, symmetric (zero point 0),
 * one scale per output channel (per-tensor is the case of one multiplier for all); bias int32.
 * Every op computes `acc = sum(w * (x + input_offset)) + bias` in int32, then
 * `requantize(acc, multiplier[c], shift[c]) + output_offset`, clamped to [act_min, act_max].
 * The build-time constants (multipliers, shifts, offsets, activation limits, packed weights) come from
 * tasks/compile/quantize.py, which computes them exactly as TFLite does.
 *
 * Ownership: the kernels keep no state and allocate nothing; every buffer belongs to the caller and is only
 * read or written during the call. Tensors are dense, row-major; images are NHWC.
 * Status: every kernel returns 0, or -1 when its arguments cannot describe a valid op (then nothing is written,
 * except by avg_pool2d, which finds an empty window only when it reaches it, as TFLite does).
 *
 * Builds: portable C11. Where __ARM_FEATURE_DSP is defined (Cortex-M4/M7/M33 with DSP) fully connected and
 * conv2d use SMLAD (2 MACs per instruction) on a register block of 4 output channels x 4 k, and depthwise
 * conv2d SMLABB/SMLATT on 4 channels at a time; the results are identical to the portable build's. Add, mul
 * and the pools are portable code in both. Signed right shifts are assumed arithmetic (gcc, clang).
 * Not provided: broadcasting add/mul, grouped conv.
 */
#ifndef CRTFORGE_INT8_H_
#define CRTFORGE_INT8_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* --- requantisation ----------------------------------------------------------------------------------- */

/** TFLite's SaturatingRoundingDoublingHighMul: a * b / 2^31 rounded to nearest, ties toward +infinity (its
 *  nudge-then-truncate: 1.5 -> 2, -1.5 -> -1); saturates only INT32_MIN * INT32_MIN (to INT32_MAX). */
int32_t crtforge_int8_srdhm(int32_t a, int32_t b);

/** TFLite's RoundingDivideByPOT: x / 2^exponent rounded to nearest, ties away from zero. exponent in [0, 31]. */
int32_t crtforge_int8_rounding_divide_by_pot(int32_t x, int32_t exponent);

/** TFLite's MultiplyByQuantizedMultiplier with its default double rounding:
 *  rounding_divide_by_pot(srdhm(x * 2^max(shift, 0), multiplier), max(-shift, 0)).
 *  shift > 0 shifts left (the product wraps as TFLite's does on two's-complement machines); shift >= -31. */
int32_t crtforge_int8_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int32_t shift);

/** out[i] = saturate(round_half_even(x[i] / scale) + zero_point), as onnxruntime's QuantizeLinear computes it
 *  (float32 division): a QDQ model's float input into int8. Returns -1 for a null pointer, a negative size or a
 *  scale that is not positive. */
int32_t crtforge_int8_quantize(const float* x, int32_t size, float scale, int32_t zero_point, int8_t* out);

/** dst[b][j][i] = src[b][i][j] for b < batches, i < rows, j < cols: NCHW to NHWC with rows = C and
 *  cols = H * W, and back with the two swapped. ONNX's convolutions are NCHW; the kernels are NHWC. */
void crtforge_int8_transpose(const int8_t* src, int32_t batches, int32_t rows, int32_t cols, int8_t* dst);

/* --- fully connected and convolution ------------------------------------------------------------------- */

/** Requantisation of a weighted op (fully connected, conv2d, depthwise conv2d). */
typedef struct crtforge_int8_channel_quant {
  int32_t input_offset;      /**< minus the input's zero point */
  int32_t output_offset;     /**< the output's zero point */
  int32_t act_min;           /**< fused activation, already in the output's int8 domain */
  int32_t act_max;
  const int32_t* multiplier; /**< [out channels], or [1] when per_channel is 0; each in [0, 2^31 - 1] */
  const int32_t* shift;      /**< same length as multiplier; > 0 is a left shift */
  int32_t per_channel;       /**< nonzero: one multiplier/shift per output channel */
  /** NULL, or the same requantisation as one multiply, [len(multiplier)][4] int32 from tasks/compile/quantize.py
   *  `fast_requant` (every shift in [-31, -1]): nudge low word, nudge high word, multiplier, high shift. Then
   *  requant(acc) = high32(nudge - (acc < 0 ? 2^31 : 0) + acc * multiplier) >> high shift, which equals TFLite's
   *  two roundings (srdhm, then RoundingDivideByPOT by e = -shift) for every int32 acc: the nudge is
   *  2^30 + 2^(30+e), both roundings' halves moved above the product's 31 fraction bits, and the 2^31 taken for
   *  a negative acc is RoundingDivideByPOT's tie toward zero. One SMLAL instead of about fifteen instructions. */
  const int32_t* fast;
  /** NULL (TFLite's integer requantisation above), or onnxruntime's: one float32 per multiplier entry,
   *  fl32(fl32(s_in * s_w[c]) / s_out), and requant(acc) = round_half_even((float)acc * scale[c]), with the
   *  output offset added after. multiplier, shift and fast are then unused and may be NULL. */
  const float* scale;
} crtforge_int8_channel_quant;

/** Packed weights: the layout fully connected and conv2d read (both builds), made by
 *  tasks/compile/quantize.py `pack_weights` from a row-major [rows][k] matrix (FC [out][in]; conv OHWI
 *  [out_c][KH*KW*in_c]). Rows go in groups of four: for each group, each whole quad of k holds 16 bytes
 *  (row 0's four k, row 1's, row 2's, row 3's), then the k % 4 leftover bytes of row 0, 1, 2, 3.
 *  The rows % 4 last rows follow, row-major. Why: one base pointer walks four rows with word loads and no
 *  shuffles. Same size as the input: rows * k bytes; the buffer must be 4-byte aligned. */
#define CRTFORGE_INT8_PACK_ROWS 4

/** Scratch for fully connected and conv2d: the offset input column as int16, k entries. */
#define CRTFORGE_INT8_SCRATCH_BYTES(k) ((uint32_t)(k) * 2u)
/** The input column of crtforge_int8_conv2d: k = kernel_h * kernel_w * in_c in whole quads. */
#define CRTFORGE_INT8_CONV_COLUMN(k) (((k) + 3) & ~3)

/** Scratch for depthwise conv2d: one output pixel's int32 sums, requantised together. */
#define CRTFORGE_INT8_DEPTHWISE_SCRATCH_BYTES(out_c) ((uint32_t)(out_c) * 4u)

/**
 * Fully connected (TFLite FULLY_CONNECTED, keep_num_dims irrelevant): y[b][n] = requant(sum_k w[n][k] *
 * (x[b][k] + input_offset) + bias[n]).
 * \param[in]  q          requantisation (per channel: one entry per output feature)
 * \param[in]  input      [batches][in_features]
 * \param[in]  weights    packed (see CRTFORGE_INT8_PACK_ROWS) from [out_features][in_features], 4-aligned
 * \param[in]  bias       [out_features], or NULL for none
 * \param[in]  scratch    CRTFORGE_INT8_SCRATCH_BYTES(in_features) bytes, 4-byte aligned
 * \param[out] out_output [batches][out_features]
 */
int32_t crtforge_int8_fully_connected(const crtforge_int8_channel_quant* q, const int8_t* input, int32_t batches,
                                      int32_t in_features, const int8_t* weights, const int32_t* bias,
                                      int32_t out_features, int16_t* scratch, int8_t* out_output);

/** Fully connected with the weights widened to int16 (quantize.py `pack_weights_wide`: pack_weights' layout with
 *  int16 entries, each whole quad of k in the order k0 k2 k1 k3, the column's): no widening in the inner loop,
 *  for twice the weights' bytes; the build picks it for small layers. Arguments as crtforge_int8_fully_connected. */
int32_t crtforge_int8_fully_connected_wide(const crtforge_int8_channel_quant* q, const int8_t* input,
                                           int32_t batches, int32_t in_features, const int16_t* weights,
                                           const int32_t* bias, int32_t out_features, int16_t* scratch,
                                           int8_t* out_output);

/** Geometry of conv2d, depthwise conv2d and the pools (NHWC). Padding is given by its top/left amount; taps
 *  outside the image are skipped (TFLite's rule, equal to padding with the input zero point). */
typedef struct crtforge_int8_conv_shape {
  int32_t batches;
  int32_t in_h, in_w, in_c;
  int32_t out_h, out_w, out_c;
  int32_t kernel_h, kernel_w;
  int32_t stride_h, stride_w;
  int32_t dilation_h, dilation_w; /**< 1 for the pools */
  int32_t pad_top, pad_left;
  int32_t depth_multiplier;       /**< depthwise only: out_c == in_c * depth_multiplier */
} crtforge_int8_conv_shape;

/**
 * Conv2d (TFLite CONV_2D, no groups): filter OHWI [out_c][kernel_h][kernel_w][in_c] (TFLite's own layout),
 * packed as a [out_c][CRTFORGE_INT8_CONV_COLUMN(kernel_h*kernel_w*in_c)] matrix, each row zero-padded to whole
 * quads (`conv_matrix`).
 * \param[in]  s          geometry (depth_multiplier ignored)
 * \param[in]  q          requantisation (per output channel)
 * \param[in]  input      [batches][in_h][in_w][in_c]
 * \param[in]  filter     packed OHWI, 4-byte aligned
 * \param[in]  bias       [out_c] or NULL
 * \param[in]  scratch    CRTFORGE_INT8_SCRATCH_BYTES(CRTFORGE_INT8_CONV_COLUMN(kernel_h * kernel_w * in_c))
 *                        bytes, 4-byte aligned
 * \param[out] out_output [batches][out_h][out_w][out_c]
 */
int32_t crtforge_int8_conv2d(const crtforge_int8_conv_shape* s, const crtforge_int8_channel_quant* q,
                             const int8_t* input, const int8_t* filter, const int32_t* bias, int16_t* scratch,
                             int8_t* out_output);

/** Conv2d with the filter widened to int16 (`pack_weights_wide`, as crtforge_int8_fully_connected_wide). */
int32_t crtforge_int8_conv2d_wide(const crtforge_int8_conv_shape* s, const crtforge_int8_channel_quant* q,
                                  const int8_t* input, const int16_t* filter, const int32_t* bias, int16_t* scratch,
                                  int8_t* out_output);

/**
 * Depthwise conv2d (TFLite DEPTHWISE_CONV_2D): output channel c * depth_multiplier + m reads input channel c.
 * \param[in]  s          geometry; out_c == in_c * depth_multiplier
 * \param[in]  q          requantisation (per output channel)
 * \param[in]  input      [batches][in_h][in_w][in_c]
 * \param[in]  filter     TFLite's [1][KH][KW][C*M] widened to int16 and reordered, 4-byte aligned (quantize.py
 *                        `pack_depthwise`): when depth_multiplier is 1, each whole quad of channels has its
 *                        taps together, [quad][KH][KW][4] in the order c0 c2 c1 c3 (the halves SXTB16 makes of
 *                        a word of inputs); the in_c % 4 last channels, or every channel when depth_multiplier
 *                        > 1, follow as [KH][KW][rest]. Why: one LDRD per tap and quad, no widening in the loop,
 *                        for twice the (small) filter's bytes.
 * \param[in]  bias       [out_c] or NULL
 * \param[in]  scratch    CRTFORGE_INT8_DEPTHWISE_SCRATCH_BYTES(out_c) bytes, 4-byte aligned: one pixel's sums
 * \param[out] out_output [batches][out_h][out_w][out_c]
 */
int32_t crtforge_int8_depthwise_conv2d(const crtforge_int8_conv_shape* s, const crtforge_int8_channel_quant* q,
                                       const int8_t* input, const int16_t* filter, const int32_t* bias,
                                       int32_t* scratch, int8_t* out_output);

/* --- elementwise -------------------------------------------------------------------------------------- */

/** TFLite's int8 ADD: both inputs shifted left by left_shift (20), scaled to a common scale, summed, and
 *  rescaled to the output. Shifts here are <= 0 (multipliers below one); every multiplier of the kernels is in
 *  [0, 2^31 - 1], as QuantizeMultiplier gives. */
typedef struct crtforge_int8_add_params {
  int32_t input1_offset, input2_offset; /**< minus the inputs' zero points */
  int32_t output_offset;
  int32_t left_shift;
  int32_t input1_multiplier, input1_shift;
  int32_t input2_multiplier, input2_shift;
  int32_t output_multiplier, output_shift;
  int32_t act_min, act_max;
} crtforge_int8_add_params;

/** out[i] = a[i] + b[i] in the output's quantisation. Same shapes only (no broadcast).
 *  \param[in] a, b [size]  \param[out] out_output [size] (may alias a or b) */
int32_t crtforge_int8_add(const crtforge_int8_add_params* p, const int8_t* a, const int8_t* b, int32_t size,
                          int8_t* out_output);

/** TFLite's int8 MUL: one multiplier, s1 * s2 / s_out. */
typedef struct crtforge_int8_mul_params {
  int32_t input1_offset, input2_offset; /**< minus the inputs' zero points */
  int32_t output_offset;
  int32_t output_multiplier, output_shift;
  int32_t act_min, act_max;
} crtforge_int8_mul_params;

/** out[i] = a[i] * b[i] in the output's quantisation. Same shapes only (no broadcast).
 *  \param[in] a, b [size]  \param[out] out_output [size] (may alias a or b) */
int32_t crtforge_int8_mul(const crtforge_int8_mul_params* p, const int8_t* a, const int8_t* b, int32_t size,
                          int8_t* out_output);

/* --- pooling (input and output share scale and zero point, as TFLite requires) ------------------------ */

/**
 * Average pool (TFLite AVERAGE_POOL_2D): the mean of the taps inside the image, rounded half away from zero;
 * returns -1 if a window holds no tap. dilation and depth_multiplier ignored; out_c == in_c.
 * \param[in]  input      [batches][in_h][in_w][in_c]
 * \param[out] out_output [batches][out_h][out_w][in_c]
 */
int32_t crtforge_int8_avg_pool2d(const crtforge_int8_conv_shape* s, int32_t act_min, int32_t act_max,
                                 const int8_t* input, int8_t* out_output);

/** Max pool (TFLite MAX_POOL_2D): the largest tap inside the image, then clamped; layouts as avg_pool2d. */
int32_t crtforge_int8_max_pool2d(const crtforge_int8_conv_shape* s, int32_t act_min, int32_t act_max,
                                 const int8_t* input, int8_t* out_output);

/* --- mean --------------------------------------------------------------------------------------------- */

/** Build-time constants of one MEAN (tasks/compile/int8_mean.py `mean_params`, as TFLM's reduce Prepare). */
typedef struct crtforge_int8_mean_params {
  int32_t input_offset;  /**< minus the input's zero point, in [-127, 128] */
  int32_t output_offset; /**< the output's zero point, in [-128, 127] */
  int32_t multiplier;    /**< s_in / s_out / reduced_count as multiplier * 2^shift / 2^31, in [0, 2^31 - 1]; below
                          *   2^30 (not normalised) where the fold's division left it so, as in TFLM */
  int32_t shift;         /**< in [-31, 30]; > 0 shifts left */
  int32_t reduced_count; /**< the element count the 1 / count was folded for: must equal `reduced` */
} crtforge_int8_mean_params;

/**
 * Mean over the middle axis (TFLite MEAN, int8 in and out).
 * out[o][i] = clamp(requantize(sum_r (input[o][r][i] + input_offset), multiplier, shift) + output_offset), with the
 * sum wrapping like TFLM's int32 one (it cannot overflow for reduced <= 2^23).
 * Returns -1 (writing nothing) for NULL pointers, outer, reduced or inner <= 0, outer * reduced * inner above
 * INT32_MAX, reduced != p->reduced_count, or a field outside its range above.
 * \param[in]  p          constants from mean_params
 * \param[in]  input      [outer][reduced][inner]
 * \param[out] out_output [outer][inner]; may be the same buffer as input (each output is written after every
 *                        input at or before its address has been read)
 */
int32_t crtforge_int8_mean(const crtforge_int8_mean_params* p, const int8_t* input, int32_t outer, int32_t reduced,
                           int32_t inner, int8_t* out_output);


/* --- softmax ------------------------------------------------------------------------------------------- */

/* TFLite's int8 SOFTMAX over the last axis, seen as [rows][depth]: int8 input with any scale and zero point;
 * int8 output at scale 1/256 and zero point -128 (the only output quantisation TFLite accepts), so the output is
 * round(p * 256) - 128, clamped. The input zero point cancels in x - max(x). Per element: exp(beta * s_in *
 * (x - max)) in Q0.31 (gemmlowp's exp_on_negative_values on a Q5.26 argument), the row's sum in Q12.19, its
 * reciprocal by Newton-Raphson, their product. Elements with x - max < diff_min count as exp = 0 and give -128.
 * Constants from tasks/compile/int8_softmax.py `softmax_params`. int32 arithmetic with 32x32->64 multiplies and
 * shifts only (no division, float, table or scratch). */

/** Build-time constants of one SOFTMAX (TFLite's SoftmaxParams for int8). */
typedef struct crtforge_int8_softmax_params {
  int32_t input_multiplier; /**< beta * s_in * 2^26 as TFLite's QuantizeMultiplierGreaterThanOne: [2^30, 2^31 - 1] */
  int32_t input_left_shift; /**< its exponent, in [0, 31]; > 0 shifts left */
  int32_t diff_min;         /**< <= 0: x - max below it gives exp = 0 (minus CalculateInputRadius(5, left_shift)) */
} crtforge_int8_softmax_params;

/** Largest depth: the row's sum of exps (up to depth * 2^19 in Q12.19) must fit in int32. */
#define CRTFORGE_INT8_SOFTMAX_MAX_DEPTH 4095

/**
 * Softmax over each row (TFLite SOFTMAX, int8 in, int8 out at scale 1/256, zero point -128).
 * Returns -1 (writing nothing) for NULL pointers, rows or depth <= 0, depth > CRTFORGE_INT8_SOFTMAX_MAX_DEPTH,
 * a multiplier < 0, a left shift outside [0, 31] or diff_min > 0.
 * Beyond TFLM: a row whose sum of exps reaches 512 (only possible with depth >= 512) makes TFLM's final shift
 * exceed 31, which TFLM rejects with a failed TFLITE_CHECK; here every output of such a row is the exactly
 * rounded value, -128 (each probability is then at most 1/512, half an output step).
 * \param[in]  p          constants from softmax_params
 * \param[in]  input      [rows][depth]
 * \param[out] out_output [rows][depth]; may be the same buffer as input (each element is read before its own
 *                        output is written, and after the row's maximum and sum are known)
 */
int32_t crtforge_int8_softmax(const crtforge_int8_softmax_params* p, const int8_t* input, int32_t rows,
                              int32_t depth, int8_t* out_output);

#ifdef __cplusplus
}
#endif

#endif /* CRTFORGE_INT8_H_ */
