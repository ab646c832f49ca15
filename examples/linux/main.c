/*
 * Example program for embedded Linux: crtforge's `sine` model (models/sine_float.tflite) evaluated at every
 * number given on the command line. The model is linked from its package, found by CMake (CMakeLists.txt) or
 * pkg-config (Makefile).
 */
#include <stdio.h>
#include <stdlib.h>

#include "crtforge/crt.h" /* crtforge_last_error */
#include "sine.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s X [X ...]\n", argv[0]);
    return 2;
  }
  for (int i = 1; i < argc; ++i) {
    const float x = strtof(argv[i], NULL);
    float y = 0.0f;
    const sine_inputs_t inputs = {.serving_default_dense_input_0 = &x};
    sine_outputs_t outputs = {.output_0 = &y};
    int32_t status = sine_run(&inputs, &outputs);
    if (status != CRTFORGE_OK) {
      fprintf(stderr, "sine_run failed (%ld): %s\n", (long)status, crtforge_last_error());
      return 1;
    }
    printf("sine(%.6f) = %.6f\n", (double)x, (double)y);
  }
  return 0;
}
