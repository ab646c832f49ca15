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
  const int32_t* fast;
  const float* scale;
  const int32_t* bias;
  int32_t channel_step; /* 1 per channel, 0 per tensor */
  int32_t output_offset, act_min, act_max;
} requant_t;

static inline requant_t requant_of(const crtforge_int8_channel_quant* q, const int32_t* bias) {
  requant_t r = {q->multiplier, q->shift, q->fast, q->scale, bias, q->per_channel ? 1 : 0, q->output_offset,
                 q->act_min, q->act_max};
  return r;
}

/* The one-multiply form of requantize (see crtforge_int8_channel_quant.fast): f is one channel's 4 entries. */
static inline int32_t requantize_fast(int32_t acc, const int32_t* f) {
  int64_t p = (int64_t)(((uint64_t)(uint32_t)f[1] << 32) | (uint32_t)f[0]);
  if (acc < 0) p -= (int64_t)1 << 31;
  p += (int64_t)acc * f[2];
  return (int32_t)(p >> 32) >> f[3];
}

/* onnxruntime's requantisation (crtforge_int8_channel_quant.scale), clamped to [lo, hi]: the product clamped
 * to the limits less the offset, then rounded half to even by adding and taking away 1.5 * 2^23, which leaves
 * an integer in float32 for any |v| < 2^22 (IEEE arithmetic; the kernels are never built with -ffast-math). */
static inline int8_t requantize_float(int32_t acc, float scale, int32_t offset, int32_t lo, int32_t hi) {
  const float magic = 12582912.0f;
  float v = (float)acc * scale;
  const float vlo = (float)(lo - offset), vhi = (float)(hi - offset);
  if (v < vlo) v = vlo;
  if (v > vhi) v = vhi;
  v = (v + magic) - magic;
  return (int8_t)((int32_t)v + offset);
}

/* finish_row for onnxruntime's requantisation: a function of its own, so that the float registers it needs are
 * not saved and restored by finish_row's every call on the integer paths. */
static void __attribute__((noinline)) finish_row_float(const int32_t* acc, int32_t n, const requant_t* r,
                                                       int32_t c0, int8_t* out) {
  const int32_t step = r->channel_step, offset = r->output_offset, lo = r->act_min, hi = r->act_max;
  const int32_t* bias = r->bias ? r->bias + c0 : 0;
  const float* s = r->scale + step * c0;
  int32_t j;
  for (j = 0; j < n; ++j, s += step) out[j] = requantize_float(bias ? acc[j] + bias[j] : acc[j], *s, offset, lo, hi);
}

/* out[j] = finish(acc[j]) for channels c0 .. c0+n: a function of its own so that its loop keeps the offsets,
 * limits and table pointers in registers (inlined into a MAC loop they spill, and cost ten loads per output). */
static void __attribute__((noinline)) finish_row(const int32_t* acc, int32_t n, const requant_t* r, int32_t c0,
                                                 int8_t* out) {
  const int32_t step = r->channel_step, offset = r->output_offset, lo = r->act_min, hi = r->act_max;
  const int32_t* bias = r->bias ? r->bias + c0 : 0;
  int32_t j;
  if (r->fast) {
    const int32_t* f = r->fast + 4 * step * c0;
    for (j = 0; j < n; ++j, f += 4 * step) {
      const int32_t a = bias ? acc[j] + bias[j] : acc[j];
      out[j] = clamp_int8(requantize_fast(a, f) + offset, lo, hi);
    }
  } else if (r->scale) {
    finish_row_float(acc, n, r, c0, out);
  } else {
    const int32_t* m = r->multiplier + step * c0;
    const int32_t* sh = r->shift + step * c0;
    for (j = 0; j < n; ++j, m += step, sh += step) {
      const int32_t a = bias ? acc[j] + bias[j] : acc[j];
      out[j] = clamp_int8(requantize(a, *m, *sh) + offset, lo, hi);
    }
  }
}

/* --- the input column (scratch) ----------------------------------------------------------------------- */

/* Where element kk of a column of k entries lives in the scratch: on DSP cores whole quads in the order
 * x0 x2 x1 x3 (what SXTB16 makes of a weight word), elsewhere in order so that compilers vectorise the dots. */
static inline int32_t column_pos(int32_t kk, int32_t k) {
#if CRTFORGE_INT8_DSP
  if (kk < (k & ~3)) return (kk & ~3) | ((kk & 1) << 1) | ((kk >> 1) & 1);
#else
  (void)k;
#endif
  return kk;
}

/* column[kk0 .. kk0+n) = src[0 .. n) + offset */
static void column_put(int16_t* column, int32_t k, int32_t kk0, const int8_t* src, int32_t n, int32_t offset) {
  int32_t j = 0;
#if CRTFORGE_INT8_DSP
  /* One by one up to a quad boundary, then whole quads: one word in, two SXTB16, two SADD16 (lane-wise, values
   * stay within +-255). */
  for (; j < n && ((kk0 + j) & 3) != 0; ++j) column[column_pos(kk0 + j, k)] = (int16_t)(src[j] + offset);
  {
    const uint32_t off2 = ((uint32_t)(uint16_t)offset << 16) | (uint16_t)offset;
    uint32_t* dst = (uint32_t*)(void*)(column + kk0 + j);
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
/* Two words from p (4-byte aligned), p += 2: one post-indexed LDRD. gcc 12 splits such loads into two LDRs for
 * Cortex-M4 and keeps a separate pointer increment, about a third of the inner loops' instructions. The
 * "memory" clobber keeps it after the stores that wrote the column. */
static inline void load_pair(const uint32_t** p, int32_t* lo, int32_t* hi) {
  __asm__("ldrd %0, %1, [%2], #8" : "=r"(*lo), "=r"(*hi), "+r"(*p) : : "memory");
}

/* Four rows x one quad of k per step: 4 weight words (one pointer, consecutive), 2 column words, 8 SXTB16,
 * 8 SMLAD. */
static void dot4_quads(const uint32_t* w, const uint32_t* x, int32_t quads, int32_t acc[4]) {
  int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  const uint32_t* const end = x + 2 * quads;
  while (x < end) {
    int32_t xe, xo, w0, w1, w2, w3;
    load_pair(&x, &xe, &xo);
    load_pair(&w, &w0, &w1);
    a0 = __smlad(__sxtb16(w0), xe, a0);
    a0 = __smlad(sxtb16_odd((uint32_t)w0), xo, a0);
    a1 = __smlad(__sxtb16(w1), xe, a1);
    a1 = __smlad(sxtb16_odd((uint32_t)w1), xo, a1);
    load_pair(&w, &w2, &w3);
    a2 = __smlad(__sxtb16(w2), xe, a2);
    a2 = __smlad(sxtb16_odd((uint32_t)w2), xo, a2);
    a3 = __smlad(__sxtb16(w3), xe, a3);
    a3 = __smlad(sxtb16_odd((uint32_t)w3), xo, a3);
  }
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
}

/* The same with int16 weights, already in the column's pair order: 5 LDRD and 8 SMLAD per quad of four rows. */
static void dot4_quads_wide(const uint32_t* w, const uint32_t* x, int32_t quads, int32_t acc[4]) {
  int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  const uint32_t* const end = x + 2 * quads;
  while (x < end) {
    int32_t xe, xo, we, wo;
    load_pair(&x, &xe, &xo);
    load_pair(&w, &we, &wo);
    a0 = __smlad(we, xe, a0);
    a0 = __smlad(wo, xo, a0);
    load_pair(&w, &we, &wo);
    a1 = __smlad(we, xe, a1);
    a1 = __smlad(wo, xo, a1);
    load_pair(&w, &we, &wo);
    a2 = __smlad(we, xe, a2);
    a2 = __smlad(wo, xo, a2);
    load_pair(&w, &we, &wo);
    a3 = __smlad(we, xe, a3);
    a3 = __smlad(wo, xo, a3);
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

static int32_t dot1_quads_wide(const int16_t* w, const uint32_t* x, int32_t quads) {
  int32_t a = 0, i;
  for (i = 0; i < 2 * quads; ++i) {
    uint32_t word;
    memcpy(&word, w + 2 * i, 4); /* a row after the groups is 4-byte aligned only when k is even */
    a = __smlad((int32_t)word, (int32_t)x[i], a);
  }
  return a;
}
#else
/* The int16 weights' quads are in the DSP column's order x0 x2 x1 x3 (one layout for all builds): entry j of a
 * quad in natural order is at QUAD_ORDER[j] (the order is its own inverse). */
static const int8_t QUAD_ORDER[4] = {0, 2, 1, 3};

static void dot4_quads(const int8_t* w, const int16_t* x, int32_t quads, int32_t acc[4]) {
  int32_t i, r, j;
  for (r = 0; r < 4; ++r) acc[r] = 0;
  for (i = 0; i < quads; ++i, w += 16, x += 4)
    for (r = 0; r < 4; ++r)
      for (j = 0; j < 4; ++j) acc[r] += (int32_t)w[4 * r + j] * x[j];
}

static void dot4_quads_wide(const int16_t* w, const int16_t* x, int32_t quads, int32_t acc[4]) {
  int32_t i, r, j;
  for (r = 0; r < 4; ++r) acc[r] = 0;
  for (i = 0; i < quads; ++i, w += 16, x += 4)
    for (r = 0; r < 4; ++r)
      for (j = 0; j < 4; ++j) acc[r] += (int32_t)w[4 * r + QUAD_ORDER[j]] * x[j];
}

static int32_t dot1_quads(const int8_t* w, const int16_t* x, int32_t quads) {
  int32_t a = 0, i;
  for (i = 0; i < 4 * quads; ++i) a += (int32_t)w[i] * x[i];
  return a;
}

static int32_t dot1_quads_wide(const int16_t* w, const int16_t* x, int32_t quads) {
  int32_t a = 0, i;
  for (i = 0; i < 4 * quads; ++i) a += (int32_t)w[(i & ~3) + QUAD_ORDER[i & 3]] * x[i];
  return a;
}
#endif

#if CRTFORGE_INT8_DSP
#define AS_WORDS(p) ((const uint32_t*)(const void*)(p))
#else
#define AS_WORDS(p) (p)
#endif

/* out[r] for r in [0, rows): packed weights (see int8.h), int8 `w8` or int16 `w16` (the other NULL), times the
 * column of k entries. */
static void dot_rows(const crtforge_int8_channel_quant* q, const int16_t* column, int32_t k, const int8_t* w8,
                     const int16_t* w16, const int32_t* bias, int32_t rows, int8_t* out) {
  const requant_t rq = requant_of(q, bias);
  const int32_t quads = k / 4, tail = k % 4, grouped = rows - rows % CRTFORGE_INT8_PACK_ROWS;
  const int16_t* const column_tail = column + 4 * quads; /* leftover k: natural order in both layouts */
  int32_t r, i, j;
  for (r = 0; r < grouped; r += 4) {
    int32_t acc[4];
    if (w16) {
      const int16_t* group = w16 + r * k;
      const int16_t* group_tail = group + 16 * quads;
      dot4_quads_wide(AS_WORDS(group), AS_WORDS(column), quads, acc);
      for (i = 0; i < 4; ++i)
        for (j = 0; j < tail; ++j) acc[i] += (int32_t)group_tail[i * tail + j] * column_tail[j];
    } else {
      const int8_t* group = w8 + r * k;
      const int8_t* group_tail = group + 16 * quads;
      dot4_quads(AS_WORDS(group), AS_WORDS(column), quads, acc);
      for (i = 0; i < 4; ++i)
        for (j = 0; j < tail; ++j) acc[i] += (int32_t)group_tail[i * tail + j] * column_tail[j];
    }
    finish_row(acc, 4, &rq, r, out + r);
  }
  for (; r < rows; ++r) { /* the rows after the groups are row-major */
    int32_t acc;
    if (w16) {
      const int16_t* row = w16 + r * k;
      acc = dot1_quads_wide(row, AS_WORDS(column), quads);
      for (j = 0; j < tail; ++j) acc += (int32_t)row[4 * quads + j] * column_tail[j];
    } else {
      const int8_t* row = w8 + r * k;
      acc = dot1_quads(row, AS_WORDS(column), quads);
      for (j = 0; j < tail; ++j) acc += (int32_t)row[4 * quads + j] * column_tail[j];
    }
    finish_row(&acc, 1, &rq, r, out + r);
  }
}

/* --- fully connected, conv2d ------------------------------------------------------------------------- */

static int32_t bad_quant(const crtforge_int8_channel_quant* q) {
  return q == 0 || (q->scale == 0 && (q->multiplier == 0 || q->shift == 0)) || q->act_min > q->act_max;
}

static int32_t fully_connected(const crtforge_int8_channel_quant* q, const int8_t* input, int32_t batches,
                               int32_t in_features, const int8_t* w8, const int16_t* w16, const int32_t* bias,
                               int32_t out_features, int16_t* scratch, int8_t* out_output) {
  int32_t b;
  if (bad_quant(q) || batches <= 0 || in_features <= 0 || out_features <= 0 || scratch == 0) return -1;
  for (b = 0; b < batches; ++b) {
    column_put(scratch, in_features, 0, input + b * in_features, in_features, q->input_offset);
    dot_rows(q, scratch, in_features, w8, w16, bias, out_features, out_output + b * out_features);
  }
  return 0;
}

int32_t crtforge_int8_fully_connected(const crtforge_int8_channel_quant* q, const int8_t* input, int32_t batches,
                                      int32_t in_features, const int8_t* weights, const int32_t* bias,
                                      int32_t out_features, int16_t* scratch, int8_t* out_output) {
  if (weights == 0) return -1;
  return fully_connected(q, input, batches, in_features, weights, 0, bias, out_features, scratch, out_output);
}

int32_t crtforge_int8_fully_connected_wide(const crtforge_int8_channel_quant* q, const int8_t* input,
                                           int32_t batches, int32_t in_features, const int16_t* weights,
                                           const int32_t* bias, int32_t out_features, int16_t* scratch,
                                           int8_t* out_output) {
  if (weights == 0) return -1;
  return fully_connected(q, input, batches, in_features, 0, weights, bias, out_features, scratch, out_output);
}

static int32_t bad_shape(const crtforge_int8_conv_shape* s) {
  return s == 0 || s->batches <= 0 || s->in_h <= 0 || s->in_w <= 0 || s->in_c <= 0 || s->out_h <= 0 ||
         s->out_w <= 0 || s->out_c <= 0 || s->kernel_h <= 0 || s->kernel_w <= 0 || s->stride_h <= 0 ||
         s->stride_w <= 0 || s->pad_top < 0 || s->pad_left < 0;
}

static int32_t bad_dilation(const crtforge_int8_conv_shape* s) { return s->dilation_h <= 0 || s->dilation_w <= 0; }

static int32_t conv2d(const crtforge_int8_conv_shape* s, const crtforge_int8_channel_quant* q, const int8_t* input,
                      const int8_t* w8, const int16_t* w16, const int32_t* bias, int16_t* scratch,
                      int8_t* out_output) {
  int32_t b, oy, ox, fy, fx;
  if (bad_shape(s) || bad_dilation(s) || bad_quant(q) || scratch == 0) return -1;
  /* The shape in locals: every int8 store may alias *s, so reading it in the loops would reload it each time. */
  const int32_t in_h = s->in_h, in_w = s->in_w, in_c = s->in_c, out_h = s->out_h, out_w = s->out_w;
  const int32_t out_c = s->out_c, kernel_h = s->kernel_h, kernel_w = s->kernel_w, offset = q->input_offset;
  const int32_t stride_h = s->stride_h, stride_w = s->stride_w, pad_top = s->pad_top, pad_left = s->pad_left;
  const int32_t dilation_h = s->dilation_h, dilation_w = s->dilation_w, taps = kernel_h * kernel_w * in_c;
  /* The column and the filter rows in whole quads: the padding is zero in both, and stays so in the column. */
  const int32_t k = CRTFORGE_INT8_CONV_COLUMN(taps);
  int8_t* out = out_output;
  column_zero(scratch, k, taps, k - taps);
  for (b = 0; b < s->batches; ++b) {
    const int8_t* image = input + b * in_h * in_w * in_c;
    for (oy = 0; oy < out_h; ++oy) {
      for (ox = 0; ox < out_w; ++ox, out += out_c) {
        /* The patch in OHWI's inner order (ky, kx, c), so it lines up with each filter row. A window row inside
         * the image is one run of kernel_w * in_c values (NHWC): one copy, not one per tap, which for a
         * model's first layer (1 to 3 channels) was most of its cost. */
        const int32_t ix0 = ox * stride_w - pad_left, row = kernel_w * in_c;
        const int32_t row_inside = dilation_w == 1 && ix0 >= 0 && ix0 + kernel_w <= in_w;
        for (fy = 0; fy < kernel_h; ++fy) {
          const int32_t iy = oy * stride_h - pad_top + fy * dilation_h;
          if (iy < 0 || iy >= in_h) {
            column_zero(scratch, k, fy * row, row);
          } else if (row_inside) {
            column_put(scratch, k, fy * row, image + (iy * in_w + ix0) * in_c, row, offset);
          } else {
            for (fx = 0; fx < kernel_w; ++fx) {
              const int32_t ix = ix0 + fx * dilation_w;
              const int32_t kk0 = fy * row + fx * in_c;
              if (ix >= 0 && ix < in_w)
                column_put(scratch, k, kk0, image + (iy * in_w + ix) * in_c, in_c, offset);
              else
                column_zero(scratch, k, kk0, in_c);
            }
          }
        }
        dot_rows(q, scratch, k, w8, w16, bias, out_c, out);
      }
    }
  }
  return 0;
}

int32_t crtforge_int8_conv2d(const crtforge_int8_conv_shape* s, const crtforge_int8_channel_quant* q,
                             const int8_t* input, const int8_t* filter, const int32_t* bias, int16_t* scratch,
                             int8_t* out_output) {
  if (filter == 0) return -1;
  return conv2d(s, q, input, filter, 0, bias, scratch, out_output);
}

int32_t crtforge_int8_conv2d_wide(const crtforge_int8_conv_shape* s, const crtforge_int8_channel_quant* q,
                                  const int8_t* input, const int16_t* filter, const int32_t* bias, int16_t* scratch,
                                  int8_t* out_output) {
  if (filter == 0) return -1;
  return conv2d(s, q, input, 0, filter, bias, scratch, out_output);
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
/* Four channels of one tap: a word of inputs widened by SXTB16 into (c0, c2) and (c1, c3) halves with the input
 * offset added lane-wise, the filter's two words (already those halves, see int8.h) in one LDRD, then one 16x16
 * multiply-accumulate per channel. w is a `const uint32_t*` and moves to the next tap. */
#define DW_TAP4(x, w, off, a0, a1, a2, a3)                                                                       \
  do {                                                                                                         \
    uint32_t xw_;                                                                                              \
    int32_t we_, wo_;                                                                                          \
    memcpy(&xw_, (x), 4);                                                                                      \
    load_pair(&(w), &we_, &wo_);                                                                               \
    const int32_t xe_ = __sadd16(__sxtb16((int32_t)xw_), (int32_t)(off));                                      \
    const int32_t xo_ = __sadd16(sxtb16_odd(xw_), (int32_t)(off));                                             \
    a0 = __smlabb(xe_, we_, a0);                                                                               \
    a2 = __smlatt(xe_, we_, a2);                                                                               \
    a1 = __smlabb(xo_, wo_, a1);                                                                               \
    a3 = __smlatt(xo_, wo_, a3);                                                                               \
  } while (0)
typedef const uint32_t* dw_weights_t; /* a block's filter as the words DW_TAP4 loads */
#define DW_BLOCK_WEIGHTS(p) ((dw_weights_t)(const void*)(p))
#else
#define DW_TAP4(x, w, off, a0, a1, a2, a3)                                                                       \
  do {                                                                                                         \
    const int8_t* x_ = (x);                                                                                    \
    a0 += ((int32_t)x_[0] + (off)) * (w)[0];                                                                   \
    a1 += ((int32_t)x_[1] + (off)) * (w)[2];                                                                   \
    a2 += ((int32_t)x_[2] + (off)) * (w)[1];                                                                   \
    a3 += ((int32_t)x_[3] + (off)) * (w)[3];                                                                   \
    (w) += 4;                                                                                                  \
  } while (0)
typedef const int16_t* dw_weights_t;
#define DW_BLOCK_WEIGHTS(p) (p)
#endif

int32_t crtforge_int8_depthwise_conv2d(const crtforge_int8_conv_shape* s, const crtforge_int8_channel_quant* q,
                                       const int8_t* input, const int16_t* filter, const int32_t* bias,
                                       int32_t* scratch, int8_t* out_output) {
  int32_t b, oy, ox, c, m, ty, tx, fy0, fy1, fx0, fx1;
  if (bad_shape(s) || bad_dilation(s) || bad_quant(q) || s->depth_multiplier <= 0 ||
      s->out_c != s->in_c * s->depth_multiplier || scratch == 0)
    return -1;
  /* The sums start from the bias, so the requantisation adds none. */
  const requant_t rq = requant_of(q, 0);
  /* The shape in locals: every int8 store may alias *s, so reading it in the loops would reload it each time. */
  const int32_t in_h = s->in_h, in_w = s->in_w, in_c = s->in_c, out_h = s->out_h, out_w = s->out_w;
  const int32_t out_c = s->out_c, kernel_h = s->kernel_h, kernel_w = s->kernel_w, mult = s->depth_multiplier;
  const int32_t stride_h = s->stride_h, stride_w = s->stride_w, pad_top = s->pad_top, pad_left = s->pad_left;
  const int32_t dilation_h = s->dilation_h, dilation_w = s->dilation_w, offset = q->input_offset;
  const int32_t taps = kernel_h * kernel_w;
  /* With one filter per channel, input and output channels line up: four at a time (see DW_TAP4). */
  const int32_t blocked = mult == 1 ? in_c & ~3 : 0, rest = out_c - blocked;
  const int16_t* const rest_filter = filter + blocked * taps; /* [taps][rest], after the blocks' [taps][4] */
  const int32_t x_step = dilation_w * in_c, x_row = dilation_h * in_w * in_c;
#if CRTFORGE_INT8_DSP
  const uint32_t off = ((uint32_t)(uint16_t)offset << 16) | (uint16_t)offset;
#else
  const int32_t off = offset;
#endif
  for (b = 0; b < s->batches; ++b) {
    const int8_t* image = input + b * in_h * in_w * in_c;
    int8_t* out = out_output + b * out_h * out_w * out_c;
    for (oy = 0; oy < out_h; ++oy) {
      window(oy, stride_h, pad_top, dilation_h, kernel_h, in_h, &fy0, &fy1);
      const int32_t iy0 = oy * stride_h - pad_top + fy0 * dilation_h;
      for (ox = 0; ox < out_w; ++ox, out += out_c) {
        window(ox, stride_w, pad_left, dilation_w, kernel_w, in_w, &fx0, &fx1);
        /* The first tap inside the image, and the window's extent in taps. */
        const int8_t* const x_first = image + (iy0 * in_w + ox * stride_w - pad_left + fx0 * dilation_w) * in_c;
        const int32_t first_tap = fy0 * kernel_w + fx0, rows = fy1 - fy0, cols = fx1 - fx0;
        for (c = 0; c < blocked; c += 4) {
          /* Accumulators in registers: the macro, not a function taking an array, keeps them there. */
          int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
          if (bias) a0 = bias[c], a1 = bias[c + 1], a2 = bias[c + 2], a3 = bias[c + 3];
          const int8_t* xr = x_first + c;
          const int16_t* wr = filter + (c * taps + 4 * first_tap);
          for (ty = 0; ty < rows; ++ty, xr += x_row, wr += 4 * kernel_w) {
            const int8_t* x = xr;
            dw_weights_t w = DW_BLOCK_WEIGHTS(wr);
            for (tx = 0; tx < cols; ++tx, x += x_step) DW_TAP4(x, w, off, a0, a1, a2, a3);
          }
          scratch[c] = a0;
          scratch[c + 1] = a1;
          scratch[c + 2] = a2;
          scratch[c + 3] = a3;
        }
        for (c = blocked / mult; c < in_c; ++c) {
          for (m = 0; m < mult; ++m) {
            const int32_t oc = c * mult + m;
            int32_t acc = bias ? bias[oc] : 0;
            for (ty = 0; ty < rows; ++ty) {
              const int8_t* x = x_first + ty * x_row + c;
              const int16_t* w = rest_filter + (first_tap + ty * kernel_w) * rest + (oc - blocked);
              for (tx = 0; tx < cols; ++tx, x += x_step, w += rest) acc += (int32_t)*w * ((int32_t)*x + offset);
            }
            scratch[oc] = acc;
          }
        }
        finish_row(scratch, out_c, &rq, 0, out);
      }
    }
  }
  return 0;
}

/* --- layout ------------------------------------------------------------------------------------------ */

int32_t crtforge_int8_quantize(const float* x, int32_t size, float scale, int32_t zero_point, int8_t* out) {
  /* Clamped first, to bounds that are integers, so rounding then gives the saturated value; then rounded by
   * adding and subtracting 1.5 * 2^23 (ties to even, as the FPU rounds), as requantize_float does. */
  const float lo = (float)(-128 - zero_point), hi = (float)(127 - zero_point), magic = 12582912.0f;
  int32_t i;
  if (x == 0 || out == 0 || size < 0 || !(scale > 0.0f)) return -1;
  for (i = 0; i < size; ++i) {
    float v = x[i] / scale;
    if (v < lo) v = lo;
    if (v > hi) v = hi;
    v = (v + magic) - magic;
    out[i] = (int8_t)((int32_t)v + zero_point);
  }
  return 0;
}

void crtforge_int8_transpose(const int8_t* src, int32_t batches, int32_t rows, int32_t cols, int8_t* dst) {
  int32_t b, i, j;
  for (b = 0; b < batches; ++b, src += rows * cols, dst += rows * cols)
    for (i = 0; i < rows; ++i)
      for (j = 0; j < cols; ++j) dst[j * rows + i] = src[i * cols + j];
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

/* --- mean --------------------------------------------------------------------------------------------- */

/* TFLite's reference_ops::QuantizedMeanOrSum: an int32 sum of the reduced elements minus the input zero point
 * times the count, then MultiplyByQuantizedMultiplier with the 1 / count folded into the multiplier at build
 * time (tasks/compile/int8_mean.py). TFLM takes this one path for every int8 MEAN. */

/* The constants checked against what the kernel's arithmetic assumes: offsets that keep x + input_offset within
 * +-255 and the output in int8, a multiplier requantize accepts, a shift in [-31, 30] (RoundingDivideByPOT takes
 * exponents up to 31; a left shift of 31 would overflow TFLite's own 1 << shift, leaving nothing to match). */
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
      /* TFLM's sum minus zero point * count, in int32: the offset times the count first, then the raw values.
       * Unsigned so that a sum past 2^31 (only possible beyond 2^23 reduced elements) wraps as TFLM's does instead
       * of being undefined; a wrapping sum is the same in any order. */
      uint32_t sum = (uint32_t)input_offset * (uint32_t)reduced;
      const int8_t* x = plane + i;
      for (r = 0; r < reduced; ++r, x += inner) sum += (uint32_t)(int32_t)*x;
      out_output[o * inner + i] =
          clamp_int8(requantize((int32_t)sum, multiplier, shift) + output_offset, INT8_MIN, INT8_MAX);
    }
  }
  return 0;
}

/* --- softmax ------------------------------------------------------------------------------------------- */

/* Written from TFLite's reference_ops::Softmax loop, GetReciprocal and MultiplyByQuantizedMultiplierGreaterThanOne,
 * and gemmlowp's fixed-point exp_on_negative_values and one_over_one_plus_x_for_x_in_0_1. Fixed-point values are
 * plain int32; a name's Qm.n says where the binary point is (m integer bits, n = 31 - m fractional bits). Every
 * rounding copies gemmlowp's, since a single differing last bit can move an output by one step. srdhm_unsaturated
 * is safe in every call here: each has an operand that is a constant, an exp or the reciprocal (>= 0), the input
 * multiplier (checked >= 0), a power of x in [-1/8, 1/8) or a Newton-Raphson iterate near [1, 2] in Q2.29.
 * Like TFLM, each exp is computed twice (once for the sum, once for the output): keeping them would need a
 * depth-sized int32 scratch, and the kernel is meant to need nothing but its input and output. */

/* x * 2^exponent, saturated to int32: gemmlowp's SaturatingRoundingMultiplyByPOT for exponent in [1, 30], the
 * move to a format with `exponent` fewer integer bits (its Rescale). */
static inline int32_t saturating_multiply_by_pot(int32_t x, int32_t exponent) {
  const int32_t threshold = (int32_t)((1u << (31 - exponent)) - 1u);
  if (x > threshold) return INT32_MAX;
  if (x < -threshold) return INT32_MIN;
  return (int32_t)((uint32_t)x << exponent); /* fits: |x| < 2^(31 - exponent) */
}

/* --- exp(x) for x <= 0 ------------------------------------------------------------------------------------- */

/* exp(a) for a in [-1/4, 0), a and the result in Q0.31: gemmlowp's Taylor expansion around -1/8 to the 4th
 * order, with x = a + 1/8: exp(-1/8) * (1 + x + x^2/2 + x^3/6 + x^4/24), where the last three terms are
 * evaluated as ((x^4/4 + x^3) / 3 + x^2) / 2 so each step stays in [-1, 1). */
static inline int32_t exp_on_minus_quarter_to_zero(int32_t a) {
  const int32_t exp_of_minus_one_eighth = 1895147668; /* exp(-1/8) in Q0.31 */
  const int32_t one_third = 715827883;                /* 1/3 in Q0.31 */
  const int32_t x = a + (1 << 28);                    /* + 1/8 */
  const int32_t x2 = srdhm_unsaturated(x, x);
  const int32_t x3 = srdhm_unsaturated(x2, x);
  const int32_t x4 = srdhm_unsaturated(x2, x2);
  const int32_t x4_over_4 = rounding_divide_by_pot(x4, 2);
  const int32_t higher_terms = rounding_divide_by_pot(srdhm_unsaturated(x4_over_4 + x3, one_third) + x2, 1);
  return exp_of_minus_one_eighth + srdhm_unsaturated(exp_of_minus_one_eighth, x + higher_terms);
}

/* exp(-2^k) in Q0.31 for k = -2 .. 4: the factors of the barrel shifter below (gemmlowp's constants). */
static const int32_t exp_of_minus_power_of_two[7] = {1672461947, 1302514674, 790015084, 290630308,
                                                     39332535,   720401,     242};

/* exp(a) for a in (-32, 0], a in Q5.26, the result in Q0.31: gemmlowp's exp_on_negative_values for 5 integer
 * bits. a = r - q with r in [-1/4, 0) and q a non-negative multiple of 1/4 below 32; exp(r) by the polynomial,
 * then one factor exp(-2^k) for each bit k set in q (bits 24..30 of the Q5.26 raw value are 1/4 .. 16).
 * exp(0) is the largest Q0.31 value, INT32_MAX (gemmlowp's One() for 0 integer bits). */
static inline int32_t exp_on_negative_q5_26(int32_t a) {
  const int32_t quarter = 1 << 24; /* 1/4 in Q5.26 */
  const int32_t r = (a & (quarter - 1)) - quarter;
  const int32_t multiples_of_quarter = r - a;
  int32_t result, k;
  if (a == 0) return INT32_MAX;
  /* r in [-2^24, 0) in Q5.26 is [-2^29, 0) in Q0.31: the saturating move cannot saturate on this range. */
  result = exp_on_minus_quarter_to_zero(saturating_multiply_by_pot(r, 5));
  for (k = 0; k < 7; ++k) {
    if (multiples_of_quarter & (quarter << k)) result = srdhm_unsaturated(result, exp_of_minus_power_of_two[k]);
  }
  return result;
}

/* --- 1 / sum ----------------------------------------------------------------------------------------------- */

/* 1 / (1 + a) for a in [0, 1), a and the result in Q0.31: gemmlowp's one_over_one_plus_x_for_x_in_0_1, three
 * Newton-Raphson steps on d = (1 + a) / 2 in [1/2, 1) from the start 48/17 - 32/17 * d, all in Q2.29.
 * The start (1 + a + 1) / 2: gemmlowp's RoundingHalfSum(a, One()) = (a + 2^31 - 1 + 1) / 2 for a sum >= 0,
 * which fits in uint32 (no 64-bit division needed). */
static inline int32_t one_over_one_plus_x(int32_t a) {
  const int32_t half_denominator = (int32_t)(((uint32_t)a + 0x80000000u) >> 1);
  const int32_t one_q2_29 = 1 << 29;
  int32_t x = 1515870810 + srdhm_unsaturated(half_denominator, -1010580540); /* 48/17 - 32/17 * d in Q2.29 */
  int32_t i;
  for (i = 0; i < 3; ++i) {
    const int32_t error = one_q2_29 - srdhm_unsaturated(half_denominator, x); /* 1 - d * x, Q2.29 */
    x += saturating_multiply_by_pot(srdhm_unsaturated(x, error), 2);         /* x * error is Q4.27: to Q2.29 */
  }
  /* x ~ 1 / d = 2 / (1 + a) in Q2.29 is 1 / (1 + a) in Q1.30; to Q0.31 (a = 0 gives 1, which saturates to
   * INT32_MAX). */
  return saturating_multiply_by_pot(x, 1);
}

/* Leading zero bits of x > 0 (CLZ on ARMv7-M and most hosts). */
static inline int32_t count_leading_zeros(uint32_t x) {
#if defined(__GNUC__) || defined(__clang__)
  return (int32_t)__builtin_clz(x);
#else
  int32_t n = 0;
  while (!(x & 0x80000000u)) {
    x <<= 1;
    ++n;
  }
  return n;
#endif
}

/* TFLite's GetReciprocal for a Q12.19 sum > 0: sum = 2^bits_over_unit * (1 + f) with f in [0, 1), so
 * 1 / sum = (1 / (1 + f)) / 2^bits_over_unit; returns 1 / (1 + f) in Q0.31 and stores bits_over_unit. */
static inline int32_t reciprocal_of_sum(int32_t sum_q12_19, int32_t* bits_over_unit) {
  const int32_t headroom_plus_one = count_leading_zeros((uint32_t)sum_q12_19);
  /* (sum << headroom_plus_one) is 1 + f in Q1.31, unsigned; minus 1 leaves f in Q0.31. */
  const int32_t f = (int32_t)(((uint32_t)sum_q12_19 << headroom_plus_one) - 0x80000000u);
  *bits_over_unit = 12 - headroom_plus_one;
  return one_over_one_plus_x(f);
}

/* --- the kernel -------------------------------------------------------------------------------------------- */

/* beta * s_in * diff in Q5.26: TFLite's MultiplyByQuantizedMultiplierGreaterThanOne with its default double
 * rounding, srdhm_unsaturated(diff * 2^left_shift, multiplier). diff >= diff_min keeps |diff| * 2^left_shift <= 31 * 2^26,
 * so the shift never overflows and the result is in (-32, 0]. Shifted as unsigned: a negative left shift is
 * undefined in C. */
static inline int32_t scale_difference(int32_t diff, int32_t multiplier, int32_t left_shift) {
  return srdhm_unsaturated((int32_t)((uint32_t)diff << left_shift), multiplier);
}

/* The constants copied into locals: the kernel stores int8 outputs, which may alias anything, so reading
 * through the caller's struct would reload every field after every store. */
typedef struct {
  int32_t multiplier, left_shift, diff_min;
} softmax_t;

static inline int32_t exp_of_difference(const softmax_t* s, int32_t diff) {
  return exp_on_negative_q5_26(scale_difference(diff, s->multiplier, s->left_shift));
}

static int8_t row_max(const int8_t* x, int32_t depth) {
  int8_t m = INT8_MIN;
  int32_t c;
  for (c = 0; c < depth; ++c) m = x[c] > m ? x[c] : m;
  return m;
}

/* Sum of exp(diff) over the row in Q12.19: each Q0.31 exp rounded to Q12.19 first (gemmlowp's Rescale<12>),
 * as TFLite adds them. >= 2^19 (the maximum's exp(0) alone) and < 2^31 for depth <= MAX_DEPTH. */
static int32_t row_sum_of_exps(const softmax_t* s, const int8_t* x, int32_t depth, int32_t max) {
  int32_t sum = 0, c;
  for (c = 0; c < depth; ++c) {
    const int32_t diff = (int32_t)x[c] - max;
    if (diff >= s->diff_min) sum += rounding_divide_by_pot(exp_of_difference(s, diff), 12);
  }
  return sum;
}

static void softmax_row(const softmax_t* s, const int8_t* x, int32_t depth, int8_t* out) {
  const int32_t max = row_max(x, depth);
  int32_t bits_over_unit, c;
  const int32_t reciprocal = reciprocal_of_sum(row_sum_of_exps(s, x, depth, max), &bits_over_unit);
  /* exp * reciprocal is p * 2^bits_over_unit in Q0.31; p * 256 needs a division by 2^(31 - 8 + bits_over_unit).
   * That exponent is in [23, 34]: above 31 (a sum >= 512) every p is <= 1/512 and rounds to 0 (TFLM stops on
   * its TFLITE_CHECK there instead). */
  const int32_t exponent = bits_over_unit + 31 - 8;
  for (c = 0; c < depth; ++c) {
    const int32_t diff = (int32_t)x[c] - max;
    int32_t y = INT8_MIN; /* exp below diff_min counts as 0 */
    if (diff >= s->diff_min && exponent <= 31) {
      /* The rounded p * 256 is in [0, 256]: minus 128, only 256 (p rounding to 1) needs the clamp. */
      y = rounding_divide_by_pot(srdhm_unsaturated(reciprocal, exp_of_difference(s, diff)), exponent) + INT8_MIN;
      if (y > INT8_MAX) y = INT8_MAX;
    }
    out[c] = (int8_t)y;
  }
}

int32_t crtforge_int8_softmax(const crtforge_int8_softmax_params* p, const int8_t* input, int32_t rows,
                              int32_t depth, int8_t* out_output) {
  softmax_t s;
  int32_t r;
  if (p == 0 || input == 0 || out_output == 0 || rows <= 0 || depth <= 0 ||
      depth > CRTFORGE_INT8_SOFTMAX_MAX_DEPTH)
    return -1;
  /* diff_min > 0 would drop the maximum itself and leave a zero sum with no reciprocal. */
  if (p->input_multiplier < 0 || p->input_left_shift < 0 || p->input_left_shift > 31 || p->diff_min > 0) return -1;
  s.multiplier = p->input_multiplier;
  s.left_shift = p->input_left_shift;
  s.diff_min = p->diff_min;
  for (r = 0; r < rows; ++r) softmax_row(&s, input + r * depth, depth, out_output + r * depth);
  return 0;
}
