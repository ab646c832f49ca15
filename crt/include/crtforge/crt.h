/*
 * crtforge C runtime: the little that TVM-generated kernels and crtforge-generated executors call.
 * No allocation, no start-up code: every buffer is owned by the generated executor and handed in.
 */
#ifndef CRTFORGE_CRT_H_
#define CRTFORGE_CRT_H_

#include <stddef.h>
#include <stdint.h>

#include <dlpack/dlpack.h>
#include <tvm/ffi/c_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CRTFORGE_ALIGNED(n) __attribute__((aligned(n)))

/* Kernels use TVM's packed-call ABI: int32_t f(void* self, void* args, int32_t num_args, void* result). */
typedef int32_t (*crtforge_packed_fn)(void* self, void* args, int32_t num_args, void* result);

/* Status codes returned by generated <prefix>_run functions. */
#define CRTFORGE_OK 0
#define CRTFORGE_ERR_ARGUMENT 1
#define CRTFORGE_ERR_KERNEL 2

/* The last error a kernel raised (TVMFFIErrorSetRaisedFromCStrParts), or "" if none. */
const char* crtforge_last_error(void);
void crtforge_clear_error(void);
/* Records an error raised outside a kernel (e.g. a NULL input pointer). */
void crtforge_set_error(const char* kind, const char* message);

/* Hands the kernels' workspace pool (TVMBackendAllocWorkspace, LIFO) its memory. */
void crtforge_workspace_init(void* base, size_t size);

/* The DLTensor behind a packed-call argument (a DLTensor pointer, or a TVM FFI tensor object), or NULL: how the
 * external codegens' functions (external.c) read their arguments. */
DLTensor* crtforge_arg_tensor(const TVMFFIAny* arg);

/* Per-kernel profile (tasks/bench/profile.py): an executor compiled with -DCRTFORGE_PROFILE calls
 * crtforge_profile_mark(i) before its kernel call i and once after the last, so that an instruction counter can
 * split one inference at these entries. The test harness defines it; in every other build the mark is nothing. */
#ifdef CRTFORGE_PROFILE
void crtforge_profile_mark(uint32_t call);
#define CRTFORGE_PROFILE_MARK(call) crtforge_profile_mark(call)
#else
#define CRTFORGE_PROFILE_MARK(call) ((void)0)
#endif

/* Bisection (tasks/execute/bisect.py): an executor compiled with -DCRTFORGE_TRACE hands every output of kernel
 * call i to crtforge_trace_output after the call, which the test harness prints; in every other build, nothing. */
#ifdef CRTFORGE_TRACE
void crtforge_trace_output(uint32_t call, uint32_t output, void* data, size_t nbytes, size_t itemsize);
#define CRTFORGE_TRACE_OUTPUT(call, output, data, nbytes, itemsize) \
  crtforge_trace_output(call, output, data, nbytes, itemsize)
#else
#define CRTFORGE_TRACE_OUTPUT(call, output, data, nbytes, itemsize) ((void)0)
#endif

#ifdef __cplusplus
}
#endif

#endif /* CRTFORGE_CRT_H_ */
