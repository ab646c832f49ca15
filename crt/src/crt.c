/*
 * crtforge C runtime: error reporting and the kernels' workspace pool.
 */
#include "crtforge/crt.h"

#include <string.h>

#include <tvm/runtime/c_backend_api.h>

#define CRTFORGE_ERROR_CAPACITY 256
#define CRTFORGE_WORKSPACE_ALIGN 64

static char crtforge_error[CRTFORGE_ERROR_CAPACITY];

static void crtforge_error_append(size_t* len, const char* text) {
  size_t room = CRTFORGE_ERROR_CAPACITY - 1 - *len;
  size_t n = strlen(text);
  if (n > room) n = room;
  memcpy(crtforge_error + *len, text, n);
  *len += n;
  crtforge_error[*len] = '\0';
}

const char* crtforge_last_error(void) { return crtforge_error; }

void crtforge_clear_error(void) { crtforge_error[0] = '\0'; }

void crtforge_set_error(const char* kind, const char* message) {
  size_t len = 0;
  crtforge_error[0] = '\0';
  crtforge_error_append(&len, kind);
  crtforge_error_append(&len, ": ");
  crtforge_error_append(&len, message);
}

/* Kernels report failures here before returning non-zero. Truncates rather than allocating. */
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** message_parts, int32_t num_parts) {
  size_t len = 0;
  int32_t i;
  crtforge_error[0] = '\0';
  crtforge_error_append(&len, kind);
  crtforge_error_append(&len, ": ");
  for (i = 0; i < num_parts; ++i) crtforge_error_append(&len, message_parts[i]);
}

/* Workspace: one LIFO pool; TVM frees workspaces in reverse order of allocation. */
static uint8_t* crtforge_pool_base;
static size_t crtforge_pool_size;
static size_t crtforge_pool_top;

void crtforge_workspace_init(void* base, size_t size) {
  crtforge_pool_base = (uint8_t*)base;
  crtforge_pool_size = size;
  crtforge_pool_top = 0;
}

void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                               int dtype_bits_hint) {
  size_t start = (crtforge_pool_top + CRTFORGE_WORKSPACE_ALIGN - 1) & ~(size_t)(CRTFORGE_WORKSPACE_ALIGN - 1);
  (void)device_type;
  (void)device_id;
  (void)dtype_code_hint;
  (void)dtype_bits_hint;
  if (crtforge_pool_base == NULL || start > crtforge_pool_size || nbytes > crtforge_pool_size - start) {
    crtforge_set_error("MemoryError", "kernel workspace exhausted: the arena's workspace region is too small");
    return NULL;
  }
  crtforge_pool_top = start + (size_t)nbytes;
  return crtforge_pool_base + start;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {
  uint8_t* p = (uint8_t*)ptr;
  (void)device_type;
  (void)device_id;
  if (crtforge_pool_base == NULL || p < crtforge_pool_base || p > crtforge_pool_base + crtforge_pool_top) {
    crtforge_set_error("MemoryError", "TVMBackendFreeWorkspace: pointer not from the workspace pool");
    return -1;
  }
  crtforge_pool_top = (size_t)(p - crtforge_pool_base);
  return 0;
}

/* TVM's LLVM kernels call the workspace functions through these pointers, which kernels.o defines weak
 * and null (a dlopen-ed library would have them filled in at load time). Defined strongly here, the
 * static link resolves them to the functions above; C kernels call the functions directly. Const, so that
 * on a bare-metal board they live in flash, where the worst-case stack (tasks/toolchain/callees.py) may read
 * which function a kernel calls through them. */
void* (*const __TVMBackendAllocWorkspace)(int, int, uint64_t, int, int) = TVMBackendAllocWorkspace;
int (*const __TVMBackendFreeWorkspace)(int, int, void*) = TVMBackendFreeWorkspace;

/* An FFI tensor object holds its DLTensor after a 24-byte object header (as TVM's own kernels assume). */
#define CRTFORGE_FFI_TENSOR_DLTENSOR_OFFSET 24

DLTensor* crtforge_arg_tensor(const TVMFFIAny* arg) {
  if (arg->type_index == kTVMFFIDLTensorPtr) return (DLTensor*)arg->v_ptr;
  if (arg->type_index == kTVMFFITensor) return (DLTensor*)((char*)arg->v_ptr + CRTFORGE_FFI_TENSOR_DLTENSOR_OFFSET);
  return NULL;
}
