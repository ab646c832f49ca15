/*
 * The dense + bias kernel behind crtforge's external codegen 'crtforge_dense' (weights packed as dense.h says).
 */
#include "crtforge/dense.h"

#include <stddef.h>

#define BLOCK CRTFORGE_DENSE_BLOCK

#if defined(__thumb2__) && defined(__ARM_FP) && (__ARM_FP & 4) && !defined(__ARM_FEATURE_MVE)
/* Cortex-M4F/M7/M33 (single-precision FPU): acc[0..8) += x[p] * w[p][0..8) for p < k, in one loop of
 * 12 instructions per 8 MACs. Compilers load the 8 weights one by one (VLDR) and keep fewer values in flight;
 * VLDM post-increments the pointer and fills 8 registers in one instruction. */
static void block8(const float* x, const float* w, int32_t k, float* acc) {
  __asm__ volatile(
      "vldmia %[acc], {s0-s7}\n"
      "1:\n"
      "vldmia %[w]!, {s8-s15}\n"
      "vldmia %[x]!, {s16}\n"
      "vfma.f32 s0, s8, s16\n"
      "vfma.f32 s1, s9, s16\n"
      "vfma.f32 s2, s10, s16\n"
      "vfma.f32 s3, s11, s16\n"
      "vfma.f32 s4, s12, s16\n"
      "vfma.f32 s5, s13, s16\n"
      "vfma.f32 s6, s14, s16\n"
      "vfma.f32 s7, s15, s16\n"
      "subs %[k], %[k], #1\n"
      "bne 1b\n"
      "vstmia %[acc], {s0-s7}\n"
      : [w] "+r"(w), [x] "+r"(x), [k] "+r"(k)
      : [acc] "r"(acc)
      : "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "s12", "s13", "s14", "s15",
        "s16", "cc", "memory");
}
#define GROUP 1 /* blocks per pass over x */
#else
/* Portable: four blocks at a time, each of the fixed width 8, which compilers unroll and vectorise; four
 * independent accumulator sets keep a superscalar core's FMA units busy (one set waits on its own latency). */
#define GROUP 4
static void block8x4(const float* x, const float* w, int32_t k, float* acc) {
  float a0[BLOCK], a1[BLOCK], a2[BLOCK], a3[BLOCK];
  const float *w0 = w, *w1 = w + BLOCK * k, *w2 = w + 2 * BLOCK * k, *w3 = w + 3 * BLOCK * k;
  int32_t p, c;
  for (c = 0; c < BLOCK; ++c) {
    a0[c] = acc[c];
    a1[c] = acc[BLOCK + c];
    a2[c] = acc[2 * BLOCK + c];
    a3[c] = acc[3 * BLOCK + c];
  }
  for (p = 0; p < k; ++p, w0 += BLOCK, w1 += BLOCK, w2 += BLOCK, w3 += BLOCK) {
    const float xv = x[p];
    for (c = 0; c < BLOCK; ++c) a0[c] += xv * w0[c];
    for (c = 0; c < BLOCK; ++c) a1[c] += xv * w1[c];
    for (c = 0; c < BLOCK; ++c) a2[c] += xv * w2[c];
    for (c = 0; c < BLOCK; ++c) a3[c] += xv * w3[c];
  }
  for (c = 0; c < BLOCK; ++c) {
    acc[c] = a0[c];
    acc[BLOCK + c] = a1[c];
    acc[2 * BLOCK + c] = a2[c];
    acc[3 * BLOCK + c] = a3[c];
  }
}

static void block8(const float* x, const float* w, int32_t k, float* acc) {
  float a[BLOCK];
  int32_t p, c;
  for (c = 0; c < BLOCK; ++c) a[c] = acc[c];
  for (p = 0; p < k; ++p, w += BLOCK) {
    const float xv = x[p];
    for (c = 0; c < BLOCK; ++c) a[c] += xv * w[c];
  }
  for (c = 0; c < BLOCK; ++c) acc[c] = a[c];
}
#endif

void crtforge_dense_f32(const float* x, const float* w, const float* bias, float* y, int32_t m, int32_t k,
                        int32_t n) {
  const int32_t blocked = n - n % BLOCK, rest = n % BLOCK;
  int32_t i, j, p, c;
  if (k <= 0) return;
  for (i = 0; i < m; ++i, x += k, y += n) {
    const float* wb = w;
#if GROUP > 1
    for (j = 0; j + GROUP * BLOCK <= blocked; j += GROUP * BLOCK, wb += GROUP * BLOCK * k) {
      for (c = 0; c < GROUP * BLOCK; ++c) y[j + c] = bias[j + c];
      block8x4(x, wb, k, y + j);
    }
#else
    j = 0;
#endif
    for (; j < blocked; j += BLOCK, wb += BLOCK * k) {
      for (c = 0; c < BLOCK; ++c) y[j + c] = bias[j + c];
      block8(x, wb, k, y + j);
    }
    if (rest) { /* the last, narrower block: [k][rest] */
      for (c = 0; c < rest; ++c) y[blocked + c] = bias[blocked + c];
      for (p = 0; p < k; ++p)
        for (c = 0; c < rest; ++c) y[blocked + c] += x[p] * wb[p * rest + c];
    }
  }
}

/* The input column of output pixel (oy, ox): [ky][kx][c], zero where the window leaves the image. A window row
 * inside the image is one run of kernel_w * in_c floats in NHWC (dilation 1), or in_c runs of kernel_w in NCHW. */
static void gather_column(const crtforge_conv2d_f32_shape* s, const float* image, int32_t oy, int32_t ox,
                          float* column) {
  const int32_t h = s->in_h, w = s->in_w, ch = s->in_c, kw = s->kernel_w, dil = s->dilation_w, row = kw * ch;
  const int32_t ix0 = ox * s->stride_w - s->pad_left, ix_last = ix0 + (kw - 1) * dil;
  const int32_t inside = ix0 >= 0 && ix_last < w;
  int32_t ky, kx, c;
  for (ky = 0; ky < s->kernel_h; ++ky, column += row) {
    const int32_t iy = oy * s->stride_h - s->pad_top + ky * s->dilation_h;
    if (iy < 0 || iy >= h) {
      for (c = 0; c < row; ++c) column[c] = 0.0f;
    } else if (s->nchw && inside && dil == 1) {
      const float* src = image + iy * w + ix0;
      for (c = 0; c < ch; ++c, src += h * w)
        for (kx = 0; kx < kw; ++kx) column[kx * ch + c] = src[kx];
    } else if (s->nchw) {
      const float* src = image + iy * w + ix0;
      for (c = 0; c < ch; ++c, src += h * w)
        for (kx = 0; kx < kw; ++kx) {
          const int32_t ix = ix0 + kx * dil;
          column[kx * ch + c] = (ix >= 0 && ix < w) ? src[kx * dil] : 0.0f;
        }
    } else if (inside && dil == 1) {
      const float* src = image + (iy * w + ix0) * ch;
      for (c = 0; c < row; ++c) column[c] = src[c];
    } else {
      for (kx = 0; kx < kw; ++kx) {
        const int32_t ix = ix0 + kx * dil;
        const float* src = image + (iy * w + ix) * ch;
        for (c = 0; c < ch; ++c) column[kx * ch + c] = (ix >= 0 && ix < w) ? src[c] : 0.0f;
      }
    }
  }
}

int32_t crtforge_conv2d_f32(const crtforge_conv2d_f32_shape* s, const float* x, const float* w, const float* bias,
                            float* scratch, float* y) {
  const int32_t k = s->kernel_h * s->kernel_w * s->in_c, pixels = s->out_h * s->out_w, oc = s->out_c;
  float* const column = scratch;
  float* const pixel = scratch + k; /* one pixel's outputs, for NCHW's scatter */
  int32_t b, oy, ox, c;
  if (k <= 0 || oc <= 0 || s->stride_h <= 0 || s->stride_w <= 0 || s->dilation_h <= 0 || s->dilation_w <= 0)
    return -1;
  for (b = 0; b < s->batches; ++b) {
    const float* image = x + b * s->in_h * s->in_w * s->in_c;
    float* out = y + b * pixels * oc;
    for (oy = 0; oy < s->out_h; ++oy) {
      for (ox = 0; ox < s->out_w; ++ox) {
        const int32_t at = oy * s->out_w + ox;
        float* dst = s->nchw ? pixel : out + at * oc;
        gather_column(s, image, oy, ox, column);
        crtforge_dense_f32(column, w, bias, dst, 1, k, oc);
        if (s->relu)
          for (c = 0; c < oc; ++c) dst[c] = dst[c] > 0.0f ? dst[c] : 0.0f;
        if (s->nchw)
          for (c = 0; c < oc; ++c) out[c * pixels + at] = dst[c];
      }
    }
  }
  return 0;
}
