/*
 * Start-up for Cortex-M boards under qemu-system-arm with semihosting: the vector table, a reset
 * handler that copies .data from flash to RAM and enables the FPU, then newlib's _start (rdimon's crt0:
 * zeroes .bss, opens the semihosting console, calls main, exits). A fault prints one line and stops.
 */
#include <stdint.h>

extern uint32_t __stack_top;
extern uint32_t __data_load;
extern uint32_t __data_start;
extern uint32_t __data_end;
extern void _start(void);

void crtforge_reset_handler(void);
void crtforge_fault_handler(void);

/* Semihosting: r0 = operation, r1 = argument; the debugger (qemu) services BKPT 0xAB. */
static void semihosting_call(uint32_t op, const void* arg) {
  register uint32_t r0 __asm__("r0") = op;
  register const void* r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
}

#define SYS_WRITE0 0x04
#define SYS_EXIT 0x18
#define ADP_STOPPED_RUNTIME_ERROR 0x20023

void crtforge_fault_handler(void) {
  semihosting_call(SYS_WRITE0, "\ncrtforge-fault hard fault (or another exception without a handler)\n");
  semihosting_call(SYS_EXIT, (const void*)ADP_STOPPED_RUNTIME_ERROR);
  for (;;) {
  }
}

void crtforge_reset_handler(void) {
  uint32_t* src = &__data_load;
  uint32_t* dst = &__data_start;
  while (dst < &__data_end) *dst++ = *src++;
#if defined(__ARM_FP)
  /* CPACR: full access to CP10 and CP11 (the FPU) before any float instruction runs. */
  *(volatile uint32_t*)0xE000ED88 |= (0xFu << 20);
  __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
  _start();
  crtforge_fault_handler(); /* _start does not return */
}

/* LLVM's Arm objects carry unwind tables that name these personality routines. C never unwinds, so they
 * are never called; defining them keeps libgcc's unwinder (about 4 KB) out of the program. */
void __aeabi_unwind_cpp_pr0(void);
void __aeabi_unwind_cpp_pr1(void);
void __aeabi_unwind_cpp_pr0(void) { crtforge_fault_handler(); }
void __aeabi_unwind_cpp_pr1(void) { crtforge_fault_handler(); }

/* Initial stack pointer, reset, then every exception: 16 system entries and 16 interrupts. */
__attribute__((section(".vectors"), used)) static const void* const crtforge_vectors[32] = {
    &__stack_top,           (void*)crtforge_reset_handler, (void*)crtforge_fault_handler,
    (void*)crtforge_fault_handler, (void*)crtforge_fault_handler, (void*)crtforge_fault_handler,
    (void*)crtforge_fault_handler, 0, 0, 0, 0,
    (void*)crtforge_fault_handler, (void*)crtforge_fault_handler, 0,
    (void*)crtforge_fault_handler, (void*)crtforge_fault_handler,
    (void*)crtforge_fault_handler, (void*)crtforge_fault_handler, (void*)crtforge_fault_handler,
    (void*)crtforge_fault_handler, (void*)crtforge_fault_handler, (void*)crtforge_fault_handler,
    (void*)crtforge_fault_handler, (void*)crtforge_fault_handler, (void*)crtforge_fault_handler,
    (void*)crtforge_fault_handler, (void*)crtforge_fault_handler, (void*)crtforge_fault_handler,
    (void*)crtforge_fault_handler, (void*)crtforge_fault_handler, (void*)crtforge_fault_handler,
    (void*)crtforge_fault_handler,
};
