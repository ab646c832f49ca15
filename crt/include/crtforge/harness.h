/*
 * Output channel of crtforge's generated test programs (not part of the model library).
 * The runner parses these lines from the program's standard output.
 */
#ifndef CRTFORGE_HARNESS_H_
#define CRTFORGE_HARNESS_H_

#include <stddef.h>
#include <stdint.h>

#include "crtforge/registry.h"

/* Prints "crtforge-output <index> <nbytes> <hex bytes>". */
void crtforge_harness_print_output(int index, const void* data, size_t nbytes);
/* Checks that the registry holds `count` functions, each found by name; prints "crtforge-registry <count>". */
int crtforge_harness_check_registry(const TVMModule* module, uint16_t count);
/* Prints "crtforge-error <status> <message>". */
void crtforge_harness_print_error(int32_t status);
/* Prints "crtforge-model <index>": the outputs that follow are the firmware's index-th model's. */
void crtforge_harness_print_model(int index);
/* Prints "crtforge-stack <bytes>": the inference's stack high-water. */
void crtforge_harness_print_stack(long bytes);
/* Prints "crtforge-done". */
void crtforge_harness_done(void);

/* Marks the start and end of one inference for instruction counting (a qemu plugin, or valgrind): the
 * counters watch the entry of these two functions, so they must stay out of line. */
void crtforge_bench_start(void);
void crtforge_bench_stop(void);

/* Stack high-water of the code between crtforge_stack_paint() and crtforge_stack_used(), in bytes, or -1
 * where the board cannot measure it (only bare-metal start-up code paints its stack). */
void crtforge_stack_paint(void);
long crtforge_stack_used(void);

#endif /* CRTFORGE_HARNESS_H_ */
