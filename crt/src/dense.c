/*
 * The dense + bias kernel behind crtforge's external codegen 'crtforge_dense'.
 */
#include "crtforge/dense.h"

#include <stddef.h>

void crtforge_dense_f32(const float* x, const float* w, const float* bias, float* y, int32_t m, int32_t k,
                        int32_t n) {
  int32_t i, j, p;
  for (i = 0; i < m; ++i) {
    for (j = 0; j < n; ++j) {
      float acc = bias[j];
      for (p = 0; p < k; ++p) acc += x[i * k + p] * w[p * n + j];
      y[i * n + j] = acc;
    }
  }
}
