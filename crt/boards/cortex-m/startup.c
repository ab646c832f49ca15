/*
 * Start-up for Cortex-M boards under qemu-system-arm with semihosting: the vector table, and a reset
 * handler that copies .data from flash to RAM, zeroes .bss, enables the FPU, opens the semihosting console
 * and runs main. Not newlib's _start: it moves the stack to where semihosting's HEAPINFO says, away from
 * the stack the linker script reserves (and measures). A fault prints one line and stops.
 */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t __stack_top;
extern uint32_t __stack_bottom;
extern uint32_t __data_load;
extern uint32_t __data_start;
extern uint32_t __data_end;
extern uint32_t __bss_start__;
extern uint32_t __bss_end__;
extern void initialise_monitor_handles(void); /* librdimon: stdin, stdout, stderr over semihosting */
extern int main(void);

void crtforge_reset_handler(void);
void crtforge_fault_handler(void);
void crtforge_stack_paint(void);
long crtforge_stack_used(void);

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
  for (dst = &__bss_start__; dst < &__bss_end__;) *dst++ = 0;
#if defined(__ARM_FP)
  /* CPACR: full access to CP10 and CP11 (the FPU) before any float instruction runs. */
  *(volatile uint32_t*)0xE000ED88 |= (0xFu << 20);
  __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
  initialise_monitor_handles();
  exit(main()); /* semihosting SYS_EXIT: qemu exits with main's status */
}

/* Stack high-water: paint the free stack below the caller's frame, then find the deepest word overwritten. */
#define CRTFORGE_STACK_PAINT 0xA5A5A5A5u
#define CRTFORGE_STACK_MARGIN 64 /* bytes below the painter's own frame left alone */
static uint32_t* crtforge_painted_top;

__attribute__((noinline)) void crtforge_stack_paint(void) {
  /* A local's address is inside this frame, which is the lowest live one (no frame pointer to ask). */
  volatile uint32_t here = 0;
  uint32_t* word = &__stack_bottom;
  crtforge_painted_top = (uint32_t*)(((uintptr_t)&here - CRTFORGE_STACK_MARGIN) & ~(uintptr_t)3);
  while (word < crtforge_painted_top) *word++ = CRTFORGE_STACK_PAINT;
  (void)here;
}

long crtforge_stack_used(void) {
  uint32_t* word = &__stack_bottom;
  if (crtforge_painted_top == 0) return -1;
  while (word < crtforge_painted_top && *word == CRTFORGE_STACK_PAINT) ++word;
  /* Bytes below the painted top that were written, plus the margin the paint did not cover. */
  return (long)((uintptr_t)crtforge_painted_top - (uintptr_t)word) + CRTFORGE_STACK_MARGIN;
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
