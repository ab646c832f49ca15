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
/* Two rows of x at once (a convolution's neighbouring pixels): each VLDM of weights feeds 16 VFMA, 21
 * instructions per 16 MACs. acc holds the two rows' 8 sums each, x1 is the second row. */
static void block8_rows2(const float* x0, const float* x1, const float* w, int32_t k, float* acc0, float* acc1) {
  __asm__ volatile(
      "vldmia %[acc0], {s0-s7}\n"
      "vldmia %[acc1], {s16-s23}\n"
      "1:\n"
      "vldmia %[w]!, {s8-s15}\n"
      "vldmia %[x0]!, {s24}\n"
      "vldmia %[x1]!, {s25}\n"
      "vfma.f32 s0, s8, s24\n"
      "vfma.f32 s1, s9, s24\n"
      "vfma.f32 s2, s10, s24\n"
      "vfma.f32 s3, s11, s24\n"
      "vfma.f32 s4, s12, s24\n"
      "vfma.f32 s5, s13, s24\n"
      "vfma.f32 s6, s14, s24\n"
      "vfma.f32 s7, s15, s24\n"
      "vfma.f32 s16, s8, s25\n"
      "vfma.f32 s17, s9, s25\n"
      "vfma.f32 s18, s10, s25\n"
      "vfma.f32 s19, s11, s25\n"
      "vfma.f32 s20, s12, s25\n"
      "vfma.f32 s21, s13, s25\n"
      "vfma.f32 s22, s14, s25\n"
      "vfma.f32 s23, s15, s25\n"
      "subs %[k], %[k], #1\n"
      "bne 1b\n"
      "vstmia %[acc0], {s0-s7}\n"
      "vstmia %[acc1], {s16-s23}\n"
      : [w] "+r"(w), [x0] "+r"(x0), [x1] "+r"(x1), [k] "+r"(k)
      : [acc0] "r"(acc0), [acc1] "r"(acc1)
      : "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "s12", "s13", "s14", "s15",
        "s16", "s17", "s18", "s19", "s20", "s21", "s22", "s23", "s24", "s25", "cc", "memory");
}
#define ROWS2 1
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

/* y[c] = bias[c] + x . w[.][c] for the last, narrower block: w is [k][width]. Called with a constant width, so
 * the sums stay in registers: summed in y, which the compiler must assume may alias x and w, each step was a
 * load and a store. */
static inline __attribute__((always_inline)) void narrow_sums(const float* x, const float* w, const float* bias,
                                                              int32_t k, const int32_t width, float* y) {
  float a[BLOCK];
  int32_t p, c;
  for (c = 0; c < width; ++c) a[c] = bias[c];
  for (p = 0; p < k; ++p, w += width) {
    const float xv = x[p];
    for (c = 0; c < width; ++c) a[c] += xv * w[c];
  }
  for (c = 0; c < width; ++c) y[c] = a[c];
}

static void narrow_block(const float* x, const float* w, const float* bias, int32_t k, int32_t width, float* y) {
  switch (width) {
    case 1: narrow_sums(x, w, bias, k, 1, y); break;
    case 2: narrow_sums(x, w, bias, k, 2, y); break;
    case 3: narrow_sums(x, w, bias, k, 3, y); break;
    case 4: narrow_sums(x, w, bias, k, 4, y); break;
    case 5: narrow_sums(x, w, bias, k, 5, y); break;
    case 6: narrow_sums(x, w, bias, k, 6, y); break;
    default: narrow_sums(x, w, bias, k, 7, y); break;
  }
}

void crtforge_dense_f32(const float* x, const float* w, const float* bias, float* y, int32_t m, int32_t k,
                        int32_t n) {
  const int32_t blocked = n - n % BLOCK, rest = n % BLOCK;
  int32_t i = 0, j, c;
  if (k <= 0) return;
#ifdef ROWS2
  for (; i + 2 <= m && blocked; i += 2, x += 2 * k, y += 2 * n) {
    const float* wb = w;
    for (j = 0; j < blocked; j += BLOCK, wb += BLOCK * k) {
      for (c = 0; c < BLOCK; ++c) y[j + c] = y[n + j + c] = bias[j + c];
      block8_rows2(x, x + k, wb, k, y + j, y + n + j);
    }
    if (rest) {
      narrow_block(x, wb, bias + blocked, k, rest, y + blocked);
      narrow_block(x + k, wb, bias + blocked, k, rest, y + n + blocked);
    }
  }
#endif
  for (; i < m; ++i, x += k, y += n) {
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
    if (rest) narrow_block(x, wb, bias + blocked, k, rest, y + blocked);
  }
}

/* The input columns of output row oy, one per pixel: [ox][ky][kx][c], zero where the window leaves the image.
 * A window row inside the image is one run of kernel_w * in_c floats in NHWC (dilation 1), or in_c runs of
 * kernel_w in NCHW. */
static void gather_row(const crtforge_conv2d_f32_shape* s, const float* image, int32_t oy, float* columns) {
  const int32_t h = s->in_h, w = s->in_w, ch = s->in_c, kh = s->kernel_h, kw = s->kernel_w;
  const int32_t dil = s->dilation_w, row = kw * ch, stride = s->stride_w, nchw = s->nchw, plane = h * w;
  const int32_t iy0 = oy * s->stride_h - s->pad_top, dil_h = s->dilation_h;
  /* Every window row of this output row inside the image (most rows): NHWC pixels away from the left and right
   * edges are then kernel_h plain copies. */
  const int32_t rows_inside = iy0 >= 0 && iy0 + (kh - 1) * dil_h < h;
  const int32_t row_step = dil_h * w * ch; /* NHWC floats between window rows */
  int32_t ox, ky, kx, c;
  for (ox = 0; ox < s->out_w; ++ox) {
    const int32_t ix0 = ox * stride - s->pad_left;
    const int32_t inside = ix0 >= 0 && ix0 + (kw - 1) * dil < w && dil == 1;
    if (inside && rows_inside && !nchw) {
      const float* src = image + (iy0 * w + ix0) * ch;
      for (ky = 0; ky < kh; ++ky, columns += row, src += row_step)
        for (c = 0; c < row; ++c) columns[c] = src[c];
      continue;
    }
    if (inside && rows_inside) { /* NCHW: in_c runs of kernel_w a window row */
      const float* src = image + iy0 * w + ix0;
      for (ky = 0; ky < kh; ++ky, columns += row, src += dil_h * w) {
        const float* plane_src = src;
        for (c = 0; c < ch; ++c, plane_src += plane)
          for (kx = 0; kx < kw; ++kx) columns[kx * ch + c] = plane_src[kx];
      }
      continue;
    }
    for (ky = 0; ky < kh; ++ky, columns += row) {
      const int32_t iy = iy0 + ky * dil_h;
      if (iy < 0 || iy >= h) {
        for (c = 0; c < row; ++c) columns[c] = 0.0f;
      } else if (nchw && inside) {
        const float* src = image + iy * w + ix0;
        for (c = 0; c < ch; ++c, src += plane)
          for (kx = 0; kx < kw; ++kx) columns[kx * ch + c] = src[kx];
      } else if (nchw) {
        const float* src = image + iy * w + ix0;
        for (c = 0; c < ch; ++c, src += plane)
          for (kx = 0; kx < kw; ++kx) {
            const int32_t ix = ix0 + kx * dil;
            columns[kx * ch + c] = (ix >= 0 && ix < w) ? src[kx * dil] : 0.0f;
          }
      } else if (inside) {
        const float* src = image + (iy * w + ix0) * ch;
        for (c = 0; c < row; ++c) columns[c] = src[c];
      } else {
        for (kx = 0; kx < kw; ++kx) {
          const int32_t ix = ix0 + kx * dil;
          const float* src = image + (iy * w + ix) * ch;
          for (c = 0; c < ch; ++c) columns[kx * ch + c] = (ix >= 0 && ix < w) ? src[c] : 0.0f;
        }
      }
    }
  }
}

int32_t crtforge_conv2d_f32(const crtforge_conv2d_f32_shape* s, const float* x, const float* w, const float* bias,
                            float* scratch, float* y) {
  const int32_t k = s->kernel_h * s->kernel_w * s->in_c, ow = s->out_w, pixels = s->out_h * ow, oc = s->out_c;
  float* const columns = scratch;
  float* const outputs = scratch + ow * k; /* one output row's pixels, [ox][oc], for NCHW's scatter */
  int32_t b, oy, ox, c;
  if (k <= 0 || oc <= 0 || s->stride_h <= 0 || s->stride_w <= 0 || s->dilation_h <= 0 || s->dilation_w <= 0)
    return -1;
  for (b = 0; b < s->batches; ++b) {
    const float* image = x + b * s->in_h * s->in_w * s->in_c;
    float* out = y + b * pixels * oc;
    for (oy = 0; oy < s->out_h; ++oy) {
      float* dst = s->nchw ? outputs : out + oy * ow * oc;
      gather_row(s, image, oy, columns);
      crtforge_dense_f32(columns, w, bias, dst, ow, k, oc);
      if (s->relu)
        for (c = 0; c < ow * oc; ++c) dst[c] = dst[c] > 0.0f ? dst[c] : 0.0f;
      if (s->nchw)
        for (c = 0; c < oc; ++c)
          for (ox = 0; ox < ow; ++ox) out[c * pixels + oy * ow + ox] = dst[ox * oc + c];
    }
  }
  return 0;
}

/* Depthwise: each channel convolved with its own kernel_h x kernel_w filter, NHWC. Four channels accumulate in
 * registers over the window (two loads and a multiply-add per MAC; gcc vectorises the four on the host), the
 * remainder one at a time; taps outside the image are skipped, as padding with zeros would add nothing. */
int32_t crtforge_depthwise_f32(const crtforge_conv2d_f32_shape* s, const float* x, const float* w, const float* bias,
                               float* y) {
  const int32_t ch = s->in_c, h = s->in_h, iw = s->in_w, kh = s->kernel_h, kw = s->kernel_w;
  int32_t b, oy, ox, ky, kx, c;
  if (s->nchw || ch <= 0 || s->out_c != ch || s->stride_h <= 0 || s->stride_w <= 0 || s->dilation_h <= 0 ||
      s->dilation_w <= 0)
    return -1;
  for (b = 0; b < s->batches; ++b) {
    const float* image = x + b * h * iw * ch;
    for (oy = 0; oy < s->out_h; ++oy) {
      const int32_t iy0 = oy * s->stride_h - s->pad_top;
      for (ox = 0; ox < s->out_w; ++ox, y += ch) {
        const int32_t ix0 = ox * s->stride_w - s->pad_left;
        for (c = 0; c + 4 <= ch; c += 4) {
          float a0 = bias[c], a1 = bias[c + 1], a2 = bias[c + 2], a3 = bias[c + 3];
          for (ky = 0; ky < kh; ++ky) {
            const int32_t iy = iy0 + ky * s->dilation_h;
            if (iy < 0 || iy >= h) continue;
            for (kx = 0; kx < kw; ++kx) {
              const int32_t ix = ix0 + kx * s->dilation_w;
              const float* in = image + (iy * iw + ix) * ch + c;
              const float* f = w + (ky * kw + kx) * ch + c;
              if (ix < 0 || ix >= iw) continue;
              a0 += in[0] * f[0];
              a1 += in[1] * f[1];
              a2 += in[2] * f[2];
              a3 += in[3] * f[3];
            }
          }
          if (s->relu) {
            a0 = a0 > 0.0f ? a0 : 0.0f;
            a1 = a1 > 0.0f ? a1 : 0.0f;
            a2 = a2 > 0.0f ? a2 : 0.0f;
            a3 = a3 > 0.0f ? a3 : 0.0f;
          }
          y[c] = a0;
          y[c + 1] = a1;
          y[c + 2] = a2;
          y[c + 3] = a3;
        }
        for (; c < ch; ++c) {
          float a = bias[c];
          for (ky = 0; ky < kh; ++ky) {
            const int32_t iy = iy0 + ky * s->dilation_h;
            if (iy < 0 || iy >= h) continue;
            for (kx = 0; kx < kw; ++kx) {
              const int32_t ix = ix0 + kx * s->dilation_w;
              if (ix >= 0 && ix < iw) a += image[(iy * iw + ix) * ch + c] * w[(ky * kw + kx) * ch + c];
            }
          }
          y[c] = s->relu && a < 0.0f ? 0.0f : a;
        }
      }
    }
  }
  return 0;
}
