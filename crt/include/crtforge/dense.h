/*
 * A float32 dense layer with bias, the kernel that crtforge's external codegen 'crtforge_dense'
 * (tasks/offload.py) offloads matmul + add patterns to.
 */
#ifndef CRTFORGE_DENSE_H_
#define CRTFORGE_DENSE_H_

#include <stdint.h>

#include <dlpack/dlpack.h>
#include <tvm/ffi/c_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * y = x * w + bias, row-major.
 * \param[in] x [m][k]
 * \param[in] w [k][n]
 * \param[in] bias [n]
 * \param[out] y [m][n]
 */
void crtforge_dense_f32(const float* x, const float* w, const float* bias, float* y, int32_t m, int32_t k,
                        int32_t n);

#ifdef __cplusplus
}
#endif

#endif /* CRTFORGE_DENSE_H_ */
