/*
 * The dense + bias kernel behind crtforge's external codegen 'crtforge_dense'.
 */
#include "crtforge/dense.h"

#include <stddef.h>

/* An FFI tensor object holds its DLTensor after a 24-byte object header (as TVM's own kernels assume). */
#define CRTFORGE_FFI_TENSOR_DLTENSOR_OFFSET 24

DLTensor* crtforge_arg_tensor(const TVMFFIAny* arg) {
  if (arg->type_index == kTVMFFIDLTensorPtr) return (DLTensor*)arg->v_ptr;
  if (arg->type_index == kTVMFFITensor) return (DLTensor*)((char*)arg->v_ptr + CRTFORGE_FFI_TENSOR_DLTENSOR_OFFSET);
  return NULL;
}

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
