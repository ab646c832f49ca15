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
    /* The last, narrower block: [k][rest]. */
    for (c = 0; c < rest; ++c) y[blocked + c] = bias[blocked + c];
    for (p = 0; p < k; ++p)
      for (c = 0; c < rest; ++c) y[blocked + c] += x[p] * wb[p * rest + c];
  }
}
