/*
 * int8 MEAN, bit-exact with TFLite Micro (to be merged into crtforge/int8.h, after the softmax section).
 */
#ifndef CRTFORGE_INT8_MEAN_H_
#define CRTFORGE_INT8_MEAN_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* --- mean ---------------------------------------------------------------------------------------------- */

/* TFLite's int8 MEAN over one contiguous range of axes, the input seen as [outer][reduced][inner] (NHWC over H
 * and W: outer = N, reduced = H * W, inner = C; tasks/compile/int8_mean.py `reduction_layout`), the output
 * [outer][inner] (keep_dims only changes the output's shape, not its bytes). TFLM's kernel (QuantizedMeanOrSum,
 * the one it runs for every int8 MEAN, also when input and output share scale and zero point) sums
 * x + input_offset over the reduced elements in int32 and requantises the sum once with s_in / s_out / reduced:
 * TFLM's multiplier for s_in / s_out with the 1 / reduced folded in at build time. The rounding is therefore
 * requantize's (srdhm's tie toward +infinity, then RoundingDivideByPOT's tie away from zero), not one rounding
 * of the true mean: with equal quantisation and reduced = 4 a mean of +0.25 gives +1 and -0.25 gives 0.
 * Constants from tasks/compile/int8_mean.py `mean_params`. No division, float, table or scratch. */

/** Build-time constants of one MEAN (TFLM's OpDataReduce after QuantizedMeanOrSum's 1 / count fold). */
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

#ifdef __cplusplus
}
#endif

#endif /* CRTFORGE_INT8_MEAN_H_ */
