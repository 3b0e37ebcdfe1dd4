/* A qemu-user TCG plugin (plugin API version 1, qemu 7.2) that counts the guest instructions
 * executed between marker system calls, so a guest program can measure one piece of its own
 * work in instructions instead of seconds.
 *
 * Marker: a system call whose first argument is the file descriptor -1 and whose second or
 * third argument is FEDTINY_INSN_MAGIC; from Python, os.lseek(-1, 0x46544D4B, 0) (lseek on
 * aarch64: the offset is argument 2; _llseek on armhf: the low word of the offset is argument 3).
 * The call fails with EBADF and changes nothing. At each marker the plugin prints one line,
 *     fedtiny-insn <k> <instructions since marker k-1>
 * (k counts from 1; the first line counts from the start of the process).
 *
 * Counting: every translated block adds its instruction count to one counter when it starts
 * (an inline add, no helper call). That is exact for blocks that run to their end; a guest
 * whose threads run at the same time would race on the counter, so the measured program keeps
 * one thread (OPENBLAS_NUM_THREADS=1).
 *
 * The declarations below are the subset of qemu's include/qemu/qemu-plugin.h (API version 1)
 * that this plugin uses, so it builds with a C compiler and no qemu sources:
 *     cc -shared -fPIC -O2 -o qemu_insn_count.so qemu_insn_count.c
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define EXPORT __attribute__((visibility("default")))
#define FEDTINY_INSN_MAGIC 0x46544D4Bu

typedef uint64_t qemu_plugin_id_t;
typedef struct {
    const char *target_name;
    struct { int min, cur; } version;
    _Bool system_emulation;
    union { struct { int smp_vcpus, max_vcpus; } system; };
} qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*tb_trans_cb_t)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*syscall_cb_t)(qemu_plugin_id_t, unsigned int, int64_t, uint64_t, uint64_t, uint64_t,
                             uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, tb_trans_cb_t);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *, enum qemu_plugin_op, void *, uint64_t);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t, syscall_cb_t);
void qemu_plugin_outs(const char *);

EXPORT int qemu_plugin_version = 1;

static uint64_t executed;      /* instructions of every block started so far */
static uint64_t at_last_marker;
static unsigned markers;

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed,
                                             qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    (void)id; (void)vcpu; (void)num; (void)a4; (void)a5; (void)a6; (void)a7; (void)a8;
    if ((uint32_t)a1 != UINT32_MAX || (a2 != FEDTINY_INSN_MAGIC && a3 != FEDTINY_INSN_MAGIC))
        return;
    char line[64];
    snprintf(line, sizeof line, "fedtiny-insn %u %" PRIu64 "\n", ++markers, executed - at_last_marker);
    qemu_plugin_outs(line);
    at_last_marker = executed;
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info; (void)argv;
    if (argc != 0) {
        fprintf(stderr, "qemu_insn_count: takes no arguments\n");
        return 1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    return 0;
}
