/*
 * The subset of QEMU's TCG plugin API (include/qemu/qemu-plugin.h, QEMU 7.2, QEMU_PLUGIN_VERSION 1)
 * that crtforge_insns.c uses, declared by hand.
 *
 * Why this file exists: Debian 12's qemu 7.2 packages load plugins (`-plugin x.so`) but ship neither
 * plugins nor qemu-plugin.h, and we don't want to download QEMU's source for one header. Everything
 * below must match QEMU 7.2 exactly (enum values, struct layout, prototypes); the functions are
 * resolved against the qemu binary when it dlopen()s the plugin. Do not add glib: none is needed.
 */
#ifndef CRTFORGE_QEMU_PLUGIN_API_H
#define CRTFORGE_QEMU_PLUGIN_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
#define QEMU_PLUGIN_VERSION 1

typedef uint64_t qemu_plugin_id_t;

/* Passed to qemu_plugin_install; we only read it, never allocate it. Layout as in QEMU 7.2. */
typedef struct qemu_info_t {
  const char *target_name; /* e.g. "arm", "aarch64" */
  struct {
    int min;
    int cur;
  } version; /* plugin API levels this QEMU supports */
  bool system_emulation;
  union {
    struct {
      int smp_vcpus;
      int max_vcpus;
    } system;
  };
} qemu_info_t;

/* Opaque handles, valid only inside the translation callback. */
struct qemu_plugin_tb;
struct qemu_plugin_insn;

enum qemu_plugin_cb_flags {
  QEMU_PLUGIN_CB_NO_REGS, /* callback does not access the CPU's registers */
  QEMU_PLUGIN_CB_R_REGS,
  QEMU_PLUGIN_CB_RW_REGS,
};

enum qemu_plugin_op {
  QEMU_PLUGIN_INLINE_ADD_U64, /* *ptr += imm, emitted as TCG ops (no call) */
};

typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);

/* Implemented by the plugin. */
extern QEMU_PLUGIN_EXPORT int qemu_plugin_version;
QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                           char **argv);

/* Implemented by QEMU. */
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn, enum qemu_plugin_op op,
                                                void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
/* In 7.2 this writes to QEMU's log under the "plugin" mask: run qemu with `-d plugin` to see it. */
void qemu_plugin_outs(const char *string);

#endif /* CRTFORGE_QEMU_PLUGIN_API_H */
