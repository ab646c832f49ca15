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
/* Prints "crtforge-done". */
void crtforge_harness_done(void);

#endif /* CRTFORGE_HARNESS_H_ */
