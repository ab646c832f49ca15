/*
 * A float32 dense layer with bias, the kernel that crtforge's external codegen 'crtforge_dense'
 * (tasks/compile/offload.py) offloads matmul + add patterns to.
 */
#ifndef CRTFORGE_DENSE_H_
#define CRTFORGE_DENSE_H_

#include <stdint.h>

#include <dlpack/dlpack.h>
#include <tvm/ffi/c_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Output columns per block of the packed weights. */
#define CRTFORGE_DENSE_BLOCK 8

/**
 * y = x * W + bias, with W [k][n] packed at build time by tasks/compile/offload.py `pack_dense`: for each block
 * of CRTFORGE_DENSE_BLOCK output columns (the last one n % CRTFORGE_DENSE_BLOCK wide when that is not 0), the
 * block's [k][width] values, row-major. The inner loop then reads the weights once, in order, a block's row
 * at a time: one VLDM of 8 registers and 8 VFMA per input value on Cortex-M4F.
 * \param[in] x [m][k]
 * \param[in] w the packed weights, k * n values
 * \param[in] bias [n]
 * \param[out] y [m][n]
 */
void crtforge_dense_f32(const float* x, const float* w, const float* bias, float* y, int32_t m, int32_t k,
                        int32_t n);

#ifdef __cplusplus
}
#endif

#endif /* CRTFORGE_DENSE_H_ */
