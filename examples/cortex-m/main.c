/*
 * Example firmware for a Cortex-M board: crtforge's `sine` model (models/sine_float.tflite, TFLM's hello-world)
 * evaluated at a few points, printed over semihosting. The model is linked from its package, found by CMake
 * (CMakeLists.txt) or pkg-config (Makefile); nothing of crtforge's build is needed here but that package.
 */
#include <stdio.h>

#include "crtforge/crt.h" /* crtforge_last_error */
#include "sine.h"

int main(void) {
  static const float xs[] = {0.5f, 1.0f, 2.0f, 3.0f, 4.5f, 6.0f};
  for (unsigned i = 0; i < sizeof xs / sizeof xs[0]; ++i) {
    float y = 0.0f;
    const sine_inputs_t inputs = {.serving_default_dense_input_0 = &xs[i]};
    sine_outputs_t outputs = {.output_0 = &y};
    int32_t status = sine_run(&inputs, &outputs);
    if (status != CRTFORGE_OK) {
      printf("sine_run failed (%ld): %s\n", (long)status, crtforge_last_error());
      return 1;
    }
    printf("sine(%.6f) = %.6f\n", (double)xs[i], (double)y);
  }
  return 0;
}
