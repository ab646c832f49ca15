/*
 * Output channel of crtforge's generated test programs: plain text lines on stdout.
 */
#include "crtforge/harness.h"

#include <stdio.h>

static void print_hex_line(const void* data, size_t nbytes) {
  const unsigned char* bytes = (const unsigned char*)data;
  size_t i;
  for (i = 0; i < nbytes; ++i) printf("%02x", bytes[i]);
  printf("\n");
}

void crtforge_harness_print_output(int index, const void* data, size_t nbytes) {
  printf("crtforge-output %d %lu ", index, (unsigned long)nbytes);
  print_hex_line(data, nbytes);
}

/* The bisector's trace (crtforge/crt.h). A test-only build (-DCRTFORGE_FAULT_CALL=i) first flips a high bit of
 * the last byte of call i's first output element (its exponent, for a float), as a wrong kernel would. */
void crtforge_trace_output(uint32_t call, uint32_t output, void* data, size_t nbytes, size_t itemsize) {
#ifdef CRTFORGE_FAULT_CALL
  if (call == CRTFORGE_FAULT_CALL && output == 0 && nbytes >= itemsize) ((unsigned char*)data)[itemsize - 1] ^= 0x40;
#else
  (void)itemsize;
#endif
  printf("crtforge-trace %lu %lu %lu ", (unsigned long)call, (unsigned long)output, (unsigned long)nbytes);
  print_hex_line(data, nbytes);
}

int crtforge_harness_check_registry(const TVMModule* module, uint16_t count) {
  const TVMFuncRegistry* registry = module->registry;
  uint16_t i;
  if (crtforge_registry_size(registry) != count) {
    printf("crtforge-error registry holds %u functions, expected %u\n", crtforge_registry_size(registry), count);
    return -1;
  }
  for (i = 0; i < count; ++i) {
    const char* name = crtforge_registry_name(registry, i);
    if (crtforge_registry_lookup(registry, name) != registry->funcs[i]) {
      printf("crtforge-error registry lookup of '%s' failed\n", name);
      return -1;
    }
  }
  printf("crtforge-registry %u\n", count);
  return 0;
}

void crtforge_harness_print_error(int32_t status) {
  printf("crtforge-error %ld %s\n", (long)status, crtforge_last_error());
}

void crtforge_harness_print_model(int index) { printf("crtforge-model %d\n", index); }

void crtforge_harness_print_stack(long bytes) { printf("crtforge-stack %ld\n", bytes); }

void crtforge_harness_done(void) {
  printf("crtforge-done\n");
  fflush(stdout);
}

__attribute__((noinline)) void crtforge_bench_start(void) { __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void crtforge_bench_stop(void) { __asm__ volatile("" ::: "memory"); }
/* The profile build's mark before each kernel call (crtforge/crt.h): only its address matters to the counter. */
__attribute__((noinline)) void crtforge_profile_mark(uint32_t call) { __asm__ volatile("" ::"r"(call) : "memory"); }

/* Boards whose start-up code owns the stack (crt/boards/cortex-m/startup.c) replace these. */
__attribute__((weak)) void crtforge_stack_paint(void) {}
__attribute__((weak)) long crtforge_stack_used(void) { return -1; }
