/*
 * int8 kernels, bit-exact with TFLite Micro's reference integer kernels (see crtforge/int8.h).
 *
 * Our own code, written from TFLite's published formulas (SaturatingRoundingDoublingHighMul,
 * RoundingDivideByPOT, MultiplyByQuantizedMultiplier, the reference kernels' loop math).
 *
 * Fully connected and conv2d share one core: the input column (a row of x, or a conv patch) is written once
 * into an int16 scratch with the input offset already added (0 for padding taps, which then add nothing,
 * like TFLite's skipped taps), and every output channel is a dot product of a packed weight row with it.
 * On DSP cores the scratch holds each quad of k as (x0, x2), (x1, x3) int16 pairs: exactly the lanes that
 * SXTB16 and SXTB16-ROR-8 give from a weight word, so one SMLAD per pair and no shuffles. Integer sums
 * wrap alike in any order, so the DSP path's results equal the portable path's.
 */
#include "crtforge/int8.h"

#include <string.h>

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#define CRTFORGE_INT8_DSP 1
/* SXTB16 of the odd bytes, (b1, b3): one `sxtb16 rd, rn, ror #8`. clang folds __ror into it; gcc 12's
 * arm_acle.h has no __ror and gcc does not fold a rotate into SXTB16 (one extra ROR per word), so gcc gets
 * the instruction spelled out. */
static inline int32_t sxtb16_odd(uint32_t x) {
#if defined(__clang__)
  return __sxtb16((int32_t)__ror(x, 8));
#else
  int32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
  return r;
#endif
}
#else
#define CRTFORGE_INT8_DSP 0
#endif

/* --- requantisation ----------------------------------------------------------------------------------- */

/* gemmlowp's SaturatingRoundingDoublingHighMul is trunc((ab + (ab >= 0 ? 2^30 : 1 - 2^30)) / 2^31). For ab < 0,
 * trunc((ab + 1 - 2^30) / 2^31) == floor((ab + 2^30) / 2^31), so one nudge and an arithmetic shift give the
 * same value for every product (a single SMLAL on Cortex-M). Only INT32_MIN * INT32_MIN needs the saturation,
 * and a kernel's multiplier is never INT32_MIN (QuantizeMultiplier gives [0, 2^31 - 1]). */
static inline int32_t srdhm_unsaturated(int32_t a, int32_t b) {
  return (int32_t)(((int64_t)a * (int64_t)b + (1 << 30)) >> 31);
}

static inline int32_t srdhm(int32_t a, int32_t b) {
  if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX; /* the one product that does not fit */
  return srdhm_unsaturated(a, b);
}

static inline int32_t rounding_divide_by_pot(int32_t x, int32_t exponent) {
  const int32_t mask = (int32_t)((1u << exponent) - 1u); /* exponent <= 31: no 64-bit shift needed */
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* MultiplyByQuantizedMultiplier for multipliers in [0, 2^31 - 1], the kernels' contract. */
static inline int32_t requantize(int32_t x, int32_t multiplier, int32_t shift) {
  /* A left shift is rare (a real multiplier above one): branch on it rather than compute both products. */
  if (shift > 0) {
    /* Shift as unsigned so an overflow wraps (as TFLite's int32 product does in practice) instead of UB. */
    return srdhm_unsaturated((int32_t)((uint32_t)x << shift), multiplier);
  }
  return rounding_divide_by_pot(srdhm_unsaturated(x, multiplier), -shift);
}

int32_t crtforge_int8_srdhm(int32_t a, int32_t b) { return srdhm(a, b); }

int32_t crtforge_int8_rounding_divide_by_pot(int32_t x, int32_t exponent) {
  return rounding_divide_by_pot(x, exponent);
}

int32_t crtforge_int8_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int32_t shift) {
  const int32_t left = shift > 0 ? shift : 0;
  return rounding_divide_by_pot(srdhm((int32_t)((uint32_t)x << left), multiplier), shift > 0 ? 0 : -shift);
}

static inline int8_t clamp_int8(int32_t v, int32_t lo, int32_t hi) {
  if (v < lo) v = lo;
  if (v > hi) v = hi;
  return (int8_t)v;
}

/* A channel_quant copied into locals: the kernels store int8 outputs, which may alias anything, so reading
 * through the caller's struct would reload every field after every store. */
typedef struct {
  const int32_t* multiplier;
  const int32_t* shift;
  const int32_t* bias;
  int32_t channel_step; /* 1 per channel, 0 per tensor */
  int32_t output_offset, act_min, act_max;
} requant_t;

static inline requant_t requant_of(const crtforge_int8_channel_quant* q, const int32_t* bias) {
  requant_t r = {q->multiplier, q->shift, bias, q->per_channel ? 1 : 0, q->output_offset, q->act_min, q->act_max};
  return r;
}

/* acc of output channel c -> int8: bias, requantise, offset, activation. */
static inline int8_t finish(int32_t acc, const requant_t* r, int32_t c) {
  const int32_t i = c * r->channel_step;
  if (r->bias) acc += r->bias[c];
  return clamp_int8(requantize(acc, r->multiplier[i], r->shift[i]) + r->output_offset, r->act_min, r->act_max);
}

/* --- the input column (scratch) ----------------------------------------------------------------------- */

/* Where element kk of a column of k entries lives in the scratch. */
static inline int32_t column_pos(int32_t kk, int32_t k) {
#if CRTFORGE_INT8_DSP
  if (kk < (k & ~3)) return (kk & ~3) | ((kk & 1) << 1) | ((kk >> 1) & 1); /* quad order x0 x2 x1 x3 */
#else
  (void)k;
#endif
  return kk;
}

/* column[kk0 .. kk0+n) = src[0 .. n) + offset */
static void column_put(int16_t* column, int32_t k, int32_t kk0, const int8_t* src, int32_t n, int32_t offset) {
  int32_t j = 0;
#if CRTFORGE_INT8_DSP
  if ((kk0 & 3) == 0) {
    /* Whole quads: one word in, two SXTB16, two SADD16 (lane-wise, values stay within +-255). */
    const uint32_t off2 = ((uint32_t)(uint16_t)offset << 16) | (uint16_t)offset;
    uint32_t* dst = (uint32_t*)(void*)(column + kk0);
    const int32_t quad_end = (k & ~3) - kk0;
    for (; j + 4 <= n && j + 4 <= quad_end; j += 4) {
      uint32_t word;
      memcpy(&word, src + j, 4); /* one LDR: Cortex-M4 loads unaligned words */
      *dst++ = (uint32_t)__sadd16(__sxtb16((int32_t)word), (int32_t)off2);
      *dst++ = (uint32_t)__sadd16(sxtb16_odd(word), (int32_t)off2);
    }
  }
#endif
  for (; j < n; ++j) column[column_pos(kk0 + j, k)] = (int16_t)(src[j] + offset);
}

/* column[kk0 .. kk0+n) = 0: a padding tap contributes nothing */
static void column_zero(int16_t* column, int32_t k, int32_t kk0, int32_t n) {
  int32_t j;
  for (j = 0; j < n; ++j) column[column_pos(kk0 + j, k)] = 0;
}

/* --- dot products of packed weight rows with the column ----------------------------------------------- */

#if CRTFORGE_INT8_DSP
/* Four rows x one quad of k per step: 4 weight words (one pointer, consecutive), 2 column words, 8 SXTB16,
 * 8 SMLAD. */
static void dot4_quads(const uint32_t* w, const uint32_t* x, int32_t quads, int32_t acc[4]) {
  int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  const uint32_t* const end = x + 2 * quads;
  while (x < end) {
    const int32_t xe = (int32_t)x[0], xo = (int32_t)x[1];
    const uint32_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
    x += 2;
    w += 4;
    a0 = __smlad(__sxtb16((int32_t)w0), xe, a0);
    a0 = __smlad(sxtb16_odd(w0), xo, a0);
    a1 = __smlad(__sxtb16((int32_t)w1), xe, a1);
    a1 = __smlad(sxtb16_odd(w1), xo, a1);
    a2 = __smlad(__sxtb16((int32_t)w2), xe, a2);
    a2 = __smlad(sxtb16_odd(w2), xo, a2);
    a3 = __smlad(__sxtb16((int32_t)w3), xe, a3);
    a3 = __smlad(sxtb16_odd(w3), xo, a3);
  }
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
}

/* One row (row-major, any alignment) x the quads. */
static int32_t dot1_quads(const int8_t* w, const uint32_t* x, int32_t quads) {
  int32_t a = 0, i;
  for (i = 0; i < quads; ++i) {
    uint32_t word;
    memcpy(&word, w + 4 * i, 4);
    a = __smlad(__sxtb16((int32_t)word), (int32_t)x[2 * i], a);
    a = __smlad(sxtb16_odd(word), (int32_t)x[2 * i + 1], a);
  }
  return a;
}
#else
static void dot4_quads(const int8_t* w, const int16_t* x, int32_t quads, int32_t acc[4]) {
  int32_t i, r, j;
  for (r = 0; r < 4; ++r) acc[r] = 0;
  for (i = 0; i < quads; ++i, w += 16, x += 4)
    for (r = 0; r < 4; ++r)
      for (j = 0; j < 4; ++j) acc[r] += (int32_t)w[4 * r + j] * x[j];
}

static int32_t dot1_quads(const int8_t* w, const int16_t* x, int32_t quads) {
  int32_t a = 0, i;
  for (i = 0; i < 4 * quads; ++i) a += (int32_t)w[i] * x[i];
  return a;
}
#endif

/* out[r] for r in [0, rows): packed weights (see int8.h) times the column of k entries. */
static void dot_rows(const crtforge_int8_channel_quant* q, const int16_t* column, int32_t k, const int8_t* w,
                     const int32_t* bias, int32_t rows, int8_t* out) {
  const requant_t rq = requant_of(q, bias);
  const int32_t quads = k / 4, tail = k % 4, grouped = rows - rows % CRTFORGE_INT8_PACK_ROWS;
  const int16_t* const column_tail = column + 4 * quads; /* leftover k: natural order in both layouts */
  int32_t r, i, j;
  for (r = 0; r < grouped; r += 4) {
    const int8_t* group = w + r * k;
    const int8_t* group_tail = group + 16 * quads;
    int32_t acc[4];
#if CRTFORGE_INT8_DSP
    dot4_quads((const uint32_t*)(const void*)group, (const uint32_t*)(const void*)column, quads, acc);
#else
    dot4_quads(group, column, quads, acc);
#endif
    for (i = 0; i < 4; ++i) {
      for (j = 0; j < tail; ++j) acc[i] += (int32_t)group_tail[i * tail + j] * column_tail[j];
      out[r + i] = finish(acc[i], &rq, r + i);
    }
  }
  for (; r < rows; ++r) {
    const int8_t* row = w + r * k; /* the rows after the groups are row-major */
#if CRTFORGE_INT8_DSP
    int32_t acc = dot1_quads(row, (const uint32_t*)(const void*)column, quads);
#else
    int32_t acc = dot1_quads(row, column, quads);
#endif
    for (j = 0; j < tail; ++j) acc += (int32_t)row[4 * quads + j] * column_tail[j];
    out[r] = finish(acc, &rq, r);
  }
}

/* --- fully connected, conv2d ------------------------------------------------------------------------- */

static int32_t bad_quant(const crtforge_int8_channel_quant* q) {
  return q == 0 || q->multiplier == 0 || q->shift == 0 || q->act_min > q->act_max;
}

int32_t crtforge_int8_fully_connected(const crtforge_int8_channel_quant* q, const int8_t* input, int32_t batches,
                                      int32_t in_features, const int8_t* weights, const int32_t* bias,
                                      int32_t out_features, int16_t* scratch, int8_t* out_output) {
  int32_t b;
  if (bad_quant(q) || batches <= 0 || in_features <= 0 || out_features <= 0 || scratch == 0) return -1;
  for (b = 0; b < batches; ++b) {
    column_put(scratch, in_features, 0, input + b * in_features, in_features, q->input_offset);
    dot_rows(q, scratch, in_features, weights, bias, out_features, out_output + b * out_features);
  }
  return 0;
}

static int32_t bad_shape(const crtforge_int8_conv_shape* s) {
  return s == 0 || s->batches <= 0 || s->in_h <= 0 || s->in_w <= 0 || s->in_c <= 0 || s->out_h <= 0 ||
         s->out_w <= 0 || s->out_c <= 0 || s->kernel_h <= 0 || s->kernel_w <= 0 || s->stride_h <= 0 ||
         s->stride_w <= 0 || s->pad_top < 0 || s->pad_left < 0;
}

static int32_t bad_dilation(const crtforge_int8_conv_shape* s) { return s->dilation_h <= 0 || s->dilation_w <= 0; }

int32_t crtforge_int8_conv2d(const crtforge_int8_conv_shape* s, const crtforge_int8_channel_quant* q,
                             const int8_t* input, const int8_t* filter, const int32_t* bias, int16_t* scratch,
                             int8_t* out_output) {
  int32_t b, oy, ox, fy, fx;
  if (bad_shape(s) || bad_dilation(s) || bad_quant(q) || scratch == 0) return -1;
  const int32_t k = s->kernel_h * s->kernel_w * s->in_c;
  for (b = 0; b < s->batches; ++b) {
    const int8_t* image = input + b * s->in_h * s->in_w * s->in_c;
    for (oy = 0; oy < s->out_h; ++oy) {
      for (ox = 0; ox < s->out_w; ++ox) {
        /* The patch in OHWI's inner order (ky, kx, c), so it lines up with each filter row. */
        for (fy = 0; fy < s->kernel_h; ++fy) {
          const int32_t iy = oy * s->stride_h - s->pad_top + fy * s->dilation_h;
          for (fx = 0; fx < s->kernel_w; ++fx) {
            const int32_t ix = ox * s->stride_w - s->pad_left + fx * s->dilation_w;
            const int32_t kk0 = (fy * s->kernel_w + fx) * s->in_c;
            if (iy >= 0 && iy < s->in_h && ix >= 0 && ix < s->in_w)
              column_put(scratch, k, kk0, image + (iy * s->in_w + ix) * s->in_c, s->in_c, q->input_offset);
            else
              column_zero(scratch, k, kk0, s->in_c);
          }
        }
        dot_rows(q, scratch, k, filter, bias, s->out_c,
                 out_output + ((b * s->out_h + oy) * s->out_w + ox) * s->out_c);
      }
    }
  }
  return 0;
}

/* The taps [lo, hi) of one window axis that fall inside the image: output position o, input size n. */
static void window(int32_t o, int32_t stride, int32_t pad, int32_t dilation, int32_t taps, int32_t n, int32_t* lo,
                   int32_t* hi) {
  const int32_t start = o * stride - pad;
  int32_t a = 0, b = taps;
  while (a < b && start + a * dilation < 0) ++a;
  while (b > a && start + (b - 1) * dilation >= n) --b;
  *lo = a;
  *hi = b;
}

#if CRTFORGE_INT8_DSP
/* Four channels of one tap: a word of inputs and a word of weights, widened by SXTB16 into (c0, c2) and (c1, c3)
 * halves with the input offset added lane-wise, then one 16x16 multiply-accumulate per channel. */
#define DW_TAP4(x, w, off, a0, a1, a2, a3)                                                                       \
  do {                                                                                                         \
    uint32_t xw_, ww_;                                                                                         \
    memcpy(&xw_, (x), 4);                                                                                      \
    memcpy(&ww_, (w), 4);                                                                                      \
    const int32_t xe_ = __sadd16(__sxtb16((int32_t)xw_), (int32_t)(off));                                      \
    const int32_t xo_ = __sadd16(sxtb16_odd(xw_), (int32_t)(off));                                             \
    const int32_t we_ = __sxtb16((int32_t)ww_), wo_ = sxtb16_odd(ww_);                                         \
    a0 = __smlabb(xe_, we_, a0);                                                                               \
    a1 = __smlabb(xo_, wo_, a1);                                                                               \
    a2 = __smlatt(xe_, we_, a2);                                                                               \
    a3 = __smlatt(xo_, wo_, a3);                                                                               \
  } while (0)
#else
#define DW_TAP4(x, w, off, a0, a1, a2, a3)                                                                       \
  do {                                                                                                         \
    const int8_t* x_ = (x);                                                                                    \
    const int8_t* w_ = (w);                                                                                    \
    a0 += ((int32_t)x_[0] + (off)) * w_[0];                                                                    \
    a1 += ((int32_t)x_[1] + (off)) * w_[1];                                                                    \
    a2 += ((int32_t)x_[2] + (off)) * w_[2];                                                                    \
    a3 += ((int32_t)x_[3] + (off)) * w_[3];                                                                    \
  } while (0)
#endif

int32_t crtforge_int8_depthwise_conv2d(const crtforge_int8_conv_shape* s, const crtforge_int8_channel_quant* q,
                                       const int8_t* input, const int8_t* filter, const int32_t* bias,
                                       int8_t* out_output) {
  int32_t b, oy, ox, c, m, fy, fx;
  if (bad_shape(s) || bad_dilation(s) || bad_quant(q) || s->depth_multiplier <= 0 ||
      s->out_c != s->in_c * s->depth_multiplier)
    return -1;
  const requant_t rq = requant_of(q, bias);
  const int32_t mult = s->depth_multiplier, in_c = s->in_c, out_c = s->out_c, offset = q->input_offset;
  /* With one filter per channel, input and output channels line up: four at a time (see DW_TAP4). */
  const int32_t blocked = mult == 1 ? in_c & ~3 : 0;
  const int32_t x_step = s->dilation_w * in_c;
#if CRTFORGE_INT8_DSP
  const uint32_t off = ((uint32_t)(uint16_t)offset << 16) | (uint16_t)offset;
#else
  const int32_t off = offset;
#endif
  for (b = 0; b < s->batches; ++b) {
    const int8_t* image = input + b * s->in_h * s->in_w * in_c;
    for (oy = 0; oy < s->out_h; ++oy) {
      int32_t fy0, fy1;
      window(oy, s->stride_h, s->pad_top, s->dilation_h, s->kernel_h, s->in_h, &fy0, &fy1);
      const int32_t iy0 = oy * s->stride_h - s->pad_top;
      for (ox = 0; ox < s->out_w; ++ox) {
        int32_t fx0, fx1;
        window(ox, s->stride_w, s->pad_left, s->dilation_w, s->kernel_w, s->in_w, &fx0, &fx1);
        const int32_t ix0 = ox * s->stride_w - s->pad_left;
        int8_t* out = out_output + ((b * s->out_h + oy) * s->out_w + ox) * out_c;
        for (c = 0; c < blocked; c += 4) {
          /* Accumulators in registers: the macro, not a function taking an array, keeps them there. */
          int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
          for (fy = fy0; fy < fy1; ++fy) {
            const int8_t* x = image + ((iy0 + fy * s->dilation_h) * s->in_w + ix0 + fx0 * s->dilation_w) * in_c + c;
            const int8_t* w = filter + (fy * s->kernel_w + fx0) * out_c + c;
            for (fx = fx0; fx < fx1; ++fx, x += x_step, w += out_c) DW_TAP4(x, w, off, a0, a1, a2, a3);
          }
          out[c] = finish(a0, &rq, c);
          out[c + 1] = finish(a1, &rq, c + 1);
          out[c + 2] = finish(a2, &rq, c + 2);
          out[c + 3] = finish(a3, &rq, c + 3);
        }
        for (c = blocked / mult; c < in_c; ++c) {
          for (m = 0; m < mult; ++m) {
            const int32_t oc = c * mult + m;
            int32_t acc = 0;
            for (fy = fy0; fy < fy1; ++fy) {
              const int32_t iy = iy0 + fy * s->dilation_h;
              for (fx = fx0; fx < fx1; ++fx) {
                const int32_t ix = ix0 + fx * s->dilation_w;
                acc += (int32_t)filter[(fy * s->kernel_w + fx) * out_c + oc] *
                       ((int32_t)image[(iy * s->in_w + ix) * in_c + c] + offset);
              }
            }
            out[oc] = finish(acc, &rq, oc);
          }
        }
      }
    }
  }
  return 0;
}

/* --- elementwise -------------------------------------------------------------------------------------- */

int32_t crtforge_int8_add(const crtforge_int8_add_params* p, const int8_t* a, const int8_t* b, int32_t size,
                          int8_t* out_output) {
  int32_t i;
  if (p == 0 || size < 0 || p->left_shift < 0 || p->left_shift > 30 || p->act_min > p->act_max) return -1;
  for (i = 0; i < size; ++i) {
    const int32_t x1 = (int32_t)((uint32_t)(p->input1_offset + a[i]) << p->left_shift);
    const int32_t x2 = (int32_t)((uint32_t)(p->input2_offset + b[i]) << p->left_shift);
    const int32_t sum = requantize(x1, p->input1_multiplier, p->input1_shift) +
                        requantize(x2, p->input2_multiplier, p->input2_shift);
    out_output[i] = clamp_int8(requantize(sum, p->output_multiplier, p->output_shift) + p->output_offset,
                               p->act_min, p->act_max);
  }
  return 0;
}

int32_t crtforge_int8_mul(const crtforge_int8_mul_params* p, const int8_t* a, const int8_t* b, int32_t size,
                          int8_t* out_output) {
  int32_t i;
  if (p == 0 || size < 0 || p->act_min > p->act_max) return -1;
  for (i = 0; i < size; ++i) {
    const int32_t prod = (p->input1_offset + a[i]) * (p->input2_offset + b[i]);
    out_output[i] = clamp_int8(requantize(prod, p->output_multiplier, p->output_shift) + p->output_offset,
                               p->act_min, p->act_max);
  }
  return 0;
}

/* --- pooling ------------------------------------------------------------------------------------------ */

/* The window of output (oy, ox) clipped to the image: [y0, y1) x [x0, x1). */
static void pool_window(const crtforge_int8_conv_shape* s, int32_t oy, int32_t ox, int32_t* y0, int32_t* y1,
                        int32_t* x0, int32_t* x1) {
  const int32_t iy = oy * s->stride_h - s->pad_top, ix = ox * s->stride_w - s->pad_left;
  *y0 = iy < 0 ? 0 : iy;
  *y1 = iy + s->kernel_h < s->in_h ? iy + s->kernel_h : s->in_h;
  *x0 = ix < 0 ? 0 : ix;
  *x1 = ix + s->kernel_w < s->in_w ? ix + s->kernel_w : s->in_w;
}

/* Both pools: avg when is_max is 0. */
static int32_t pool2d(const crtforge_int8_conv_shape* s, int32_t act_min, int32_t act_max, const int8_t* input,
                      int8_t* out_output, int32_t is_max) {
  int32_t b, oy, ox, c, y, x, y0, y1, x0, x1;
  if (bad_shape(s) || act_min > act_max) return -1;
  for (b = 0; b < s->batches; ++b) {
    const int8_t* image = input + b * s->in_h * s->in_w * s->in_c;
    for (oy = 0; oy < s->out_h; ++oy) {
      for (ox = 0; ox < s->out_w; ++ox) {
        int8_t* out = out_output + ((b * s->out_h + oy) * s->out_w + ox) * s->in_c;
        pool_window(s, oy, ox, &y0, &y1, &x0, &x1);
        const int32_t count = (y1 - y0) * (x1 - x0);
        if (y1 <= y0 || x1 <= x0) return -1;
        for (c = 0; c < s->in_c; ++c) {
          int32_t acc = is_max ? INT8_MIN : 0;
          for (y = y0; y < y1; ++y) {
            for (x = x0; x < x1; ++x) {
              const int32_t v = image[(y * s->in_w + x) * s->in_c + c];
              if (is_max)
                acc = v > acc ? v : acc;
              else
                acc += v;
            }
          }
          /* TFLite's average: round half away from zero, by the sign of the sum. */
          if (!is_max) acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
          out[c] = clamp_int8(acc, act_min, act_max);
        }
      }
    }
  }
  return 0;
}

int32_t crtforge_int8_avg_pool2d(const crtforge_int8_conv_shape* s, int32_t act_min, int32_t act_max,
                                 const int8_t* input, int8_t* out_output) {
  return pool2d(s, act_min, act_max, input, out_output, 0);
}

int32_t crtforge_int8_max_pool2d(const crtforge_int8_conv_shape* s, int32_t act_min, int32_t act_max,
                                 const int8_t* input, int8_t* out_output) {
  return pool2d(s, act_min, act_max, input, out_output, 1);
}
