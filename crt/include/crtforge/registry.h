/*
 * The C-runtime function registry: what TVMSystemLibEntryPoint() returns.
 * Layout (as TVM's C runtime had it): `names` is a blob of a little-endian uint16 count followed by that
 * many NUL-terminated names; funcs[i] is the kernel called names[i]. Everything is const: nothing is
 * registered or parsed at start-up.
 */
#ifndef CRTFORGE_REGISTRY_H_
#define CRTFORGE_REGISTRY_H_

#include <stdint.h>

#include "crtforge/crt.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct TVMFuncRegistry {
  const char* names;
  const crtforge_packed_fn* funcs;
} TVMFuncRegistry;

typedef struct TVMModule {
  const TVMFuncRegistry* registry;
} TVMModule;

/* Defined by the generated metadata module. */
const TVMModule* TVMSystemLibEntryPoint(void);

/* Number of functions in the registry. */
uint16_t crtforge_registry_size(const TVMFuncRegistry* registry);
/* Name of function `index`, or NULL past the end. */
const char* crtforge_registry_name(const TVMFuncRegistry* registry, uint16_t index);
/* The function called `name`, or NULL. */
crtforge_packed_fn crtforge_registry_lookup(const TVMFuncRegistry* registry, const char* name);

#ifdef __cplusplus
}
#endif

#endif /* CRTFORGE_REGISTRY_H_ */
