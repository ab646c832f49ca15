/*
 * int8 MEAN, bit-exact with TFLite Micro (see crtforge/int8_mean.h; to be merged into int8.c, whose requantisation
 * helpers below are copies of, same names and same math, so that the merge keeps one of each).
 *
 * Our own code, written from TFLite's published formulas: reference_ops::QuantizedMeanOrSum (an int32 sum of the
 * reduced elements, minus input zero point * count, then MultiplyByQuantizedMultiplier with the 1 / count folded
 * into the multiplier at build time) and gemmlowp's SaturatingRoundingDoublingHighMul and RoundingDivideByPOT.
 */
#include "crtforge/int8.h"
#include "crtforge/int8_mean.h"

/* --- requantisation (as in int8.c) -------------------------------------------------------------------- */

/* gemmlowp's SaturatingRoundingDoublingHighMul without its one saturating case, INT32_MIN * INT32_MIN: the
 * multiplier here is never INT32_MIN (the kernel checks it is >= 0). */
static inline int32_t srdhm_unsaturated(int32_t a, int32_t b) {
  return (int32_t)(((int64_t)a * (int64_t)b + (1 << 30)) >> 31);
}

static inline int32_t rounding_divide_by_pot(int32_t x, int32_t exponent) {
  const int32_t mask = (int32_t)((1u << exponent) - 1u); /* exponent <= 31: no 64-bit shift needed */
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* MultiplyByQuantizedMultiplier for multipliers in [0, 2^31 - 1], the kernels' contract. */
static inline int32_t requantize(int32_t x, int32_t multiplier, int32_t shift) {
  if (shift > 0) {
    /* Shift as unsigned so an overflow wraps (as TFLite's int32 product does in practice) instead of UB. */
    return srdhm_unsaturated((int32_t)((uint32_t)x << shift), multiplier);
  }
  return rounding_divide_by_pot(srdhm_unsaturated(x, multiplier), -shift);
}

static inline int8_t clamp_int8(int32_t v, int32_t lo, int32_t hi) {
  if (v < lo) v = lo;
  if (v > hi) v = hi;
  return (int8_t)v;
}

/* --- mean ---------------------------------------------------------------------------------------------- */

/* The constants checked against what the kernel's arithmetic assumes: offsets that keep x + input_offset within
 * +-255 and the output in int8, a multiplier requantize accepts, a shift that neither shifts a right shift past 31
 * nor a left shift into the sign bit. */
static int32_t bad_mean_params(const crtforge_int8_mean_params* p, int32_t reduced) {
  return p->input_offset < -127 || p->input_offset > 128 || p->output_offset < INT8_MIN ||
         p->output_offset > INT8_MAX || p->multiplier < 0 || p->shift < -31 || p->shift > 30 ||
         p->reduced_count != reduced;
}

int32_t crtforge_int8_mean(const crtforge_int8_mean_params* p, const int8_t* input, int32_t outer, int32_t reduced,
                           int32_t inner, int8_t* out_output) {
  int32_t multiplier, shift, input_offset, output_offset, o, i, r;
  if (p == 0 || input == 0 || out_output == 0 || outer <= 0 || reduced <= 0 || inner <= 0) return -1;
  /* Every index below is an int32: the whole input must fit (64-bit products, no division). */
  if ((int64_t)reduced * inner > INT32_MAX || (int64_t)reduced * inner * outer > INT32_MAX) return -1;
  if (bad_mean_params(p, reduced)) return -1;
  /* Locals: the int8 stores may alias anything, so reading through p would reload the fields after each. */
  multiplier = p->multiplier;
  shift = p->shift;
  input_offset = p->input_offset;
  output_offset = p->output_offset;
  for (o = 0; o < outer; ++o) {
    const int8_t* plane = input + o * reduced * inner;
    for (i = 0; i < inner; ++i) {
      /* TFLM's sum minus zero point * count, in int32; unsigned so that a sum past 2^31 (only possible beyond 2^23
       * reduced elements) wraps as TFLM's does instead of being undefined. */
      uint32_t sum = 0;
      const int8_t* x = plane + i;
      for (r = 0; r < reduced; ++r, x += inner) sum += (uint32_t)((int32_t)*x + input_offset);
      out_output[o * inner + i] =
          clamp_int8(requantize((int32_t)sum, multiplier, shift) + output_offset, INT8_MIN, INT8_MAX);
    }
  }
  return 0;
}
