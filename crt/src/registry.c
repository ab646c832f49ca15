/*
 * Lookups in the const function registry that a generated metadata module defines.
 */
#include "crtforge/registry.h"

#include <string.h>

uint16_t crtforge_registry_size(const TVMFuncRegistry* registry) {
  const unsigned char* blob = (const unsigned char*)registry->names;
  return (uint16_t)(blob[0] | (blob[1] << 8));
}

const char* crtforge_registry_name(const TVMFuncRegistry* registry, uint16_t index) {
  const char* name = registry->names + 2;
  uint16_t i;
  if (index >= crtforge_registry_size(registry)) return NULL;
  for (i = 0; i < index; ++i) name += strlen(name) + 1;
  return name;
}

crtforge_packed_fn crtforge_registry_lookup(const TVMFuncRegistry* registry, const char* name) {
  uint16_t count = crtforge_registry_size(registry);
  const char* entry = registry->names + 2;
  uint16_t i;
  for (i = 0; i < count; ++i) {
    if (strcmp(entry, name) == 0) return registry->funcs[i];
    entry += strlen(entry) + 1;
  }
  return NULL;
}
