/*
 * QEMU TCG plugin: exact guest instruction count between two marker functions.
 *
 *   qemu-... -d plugin -plugin crtforge_insns.so,start=0xADDR,stop=0xADDR ...
 *
 * Every instruction adds 1 to `total` inline (TCG ops, no helper call); only the instructions at
 * `start` and `stop` get a callback, which samples `total`. Whether QEMU runs an instruction's callback
 * before or after its inline add, both samples shift alike, so stop - start counts the instructions
 * from the start marker's first instruction up to but not including the stop marker's first one;
 * subtracting 1 drops the start marker's first instruction too. A region's count is therefore the
 * instructions executed strictly between the two marker entries: the rest of the start marker (its
 * return), the measured code, and the call into the stop marker. A start while a region is open
 * restarts it; a stop with none open is ignored. One counter: a single vCPU/thread is assumed.
 *
 * At exit: "crtforge-insns <sum over regions> regions=<n>" and "crtforge-insns-total <all insns>".
 *
 * With mark=0xADDR too (the profile build's crtforge_profile_mark), `total` is also sampled at every entry of
 * that function while a region is open, and each region's samples are printed when it closes as
 * "crtforge-marks <start> <mark>... <stop>": differences of neighbours split the region without a gap.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_api.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

static uint64_t start_addr, stop_addr;
static uint64_t total;      /* every instruction executed, bumped inline */
static uint64_t opened_at;  /* `total` when the open region started */
static bool open_region;
static uint64_t region_sum, regions;
static uint64_t mark_addr;
static bool have_mark;
#define MAX_MARKS 4096
static uint64_t marks[MAX_MARKS];
static size_t n_marks;
static bool marks_overflowed;  /* in the open region */

static void on_start(unsigned int vcpu, void *udata) {
  (void)vcpu, (void)udata;
  opened_at = total;
  open_region = true;
  n_marks = 0;
  marks_overflowed = false;
}

static void on_mark(unsigned int vcpu, void *udata) {
  (void)vcpu, (void)udata;
  if (!open_region) return;
  if (n_marks == MAX_MARKS) {
    marks_overflowed = true;
    return;
  }
  marks[n_marks++] = total;
}

static void on_stop(unsigned int vcpu, void *udata) {
  (void)vcpu, (void)udata;
  if (!open_region) return;
  region_sum += total - opened_at - 1;
  regions++;
  open_region = false;
  if (!have_mark) return;
  if (marks_overflowed) {
    qemu_plugin_outs("crtforge-marks-overflow\n");
    return;
  }
  /* The start sample shifted like the region's count (plus 1), so that neighbours' differences sum to it. */
  char sample[32];
  snprintf(sample, sizeof sample, "crtforge-marks %" PRIu64, opened_at + 1);
  qemu_plugin_outs(sample);
  for (size_t i = 0; i < n_marks; i++) {
    snprintf(sample, sizeof sample, " %" PRIu64, marks[i]);
    qemu_plugin_outs(sample);
  }
  snprintf(sample, sizeof sample, " %" PRIu64 "\n", total);
  qemu_plugin_outs(sample);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  for (size_t i = 0, n = qemu_plugin_tb_n_insns(tb); i < n; i++) {
    struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
    uint64_t pc = qemu_plugin_insn_vaddr(insn);
    qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &total, 1);
    if (pc == start_addr) qemu_plugin_register_vcpu_insn_exec_cb(insn, on_start, QEMU_PLUGIN_CB_NO_REGS, NULL);
    if (pc == stop_addr) qemu_plugin_register_vcpu_insn_exec_cb(insn, on_stop, QEMU_PLUGIN_CB_NO_REGS, NULL);
    if (have_mark && pc == mark_addr)
      qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mark, QEMU_PLUGIN_CB_NO_REGS, NULL);
  }
}

static void on_exit_report(qemu_plugin_id_t id, void *udata) {
  (void)id, (void)udata;
  char line[128];
  snprintf(line, sizeof line, "crtforge-insns %" PRIu64 " regions=%" PRIu64 "\ncrtforge-insns-total %" PRIu64 "\n",
           region_sum, regions, total);
  qemu_plugin_outs(line);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
  (void)info;
  bool have_start = false, have_stop = false;
  for (int i = 0; i < argc; i++) {
    if (strncmp(argv[i], "start=", 6) == 0) start_addr = strtoull(argv[i] + 6, NULL, 16), have_start = true;
    else if (strncmp(argv[i], "stop=", 5) == 0) stop_addr = strtoull(argv[i] + 5, NULL, 16), have_stop = true;
    else if (strncmp(argv[i], "mark=", 5) == 0) mark_addr = strtoull(argv[i] + 5, NULL, 16), have_mark = true;
    else {
      fprintf(stderr, "crtforge_insns: unknown argument '%s' (want start=0xADDR,stop=0xADDR[,mark=0xADDR])\n", argv[i]);
      return -1;
    }
  }
  if (!have_start || !have_stop || start_addr == stop_addr) {
    fprintf(stderr, "crtforge_insns: need distinct start=0xADDR and stop=0xADDR\n");
    return -1;
  }
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, on_exit_report, NULL);
  return 0;
}
