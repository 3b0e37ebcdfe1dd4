/* startup.c - the least a Cortex-M4 needs to run bench_m4.c under qemu-system-arm -M mps2-an386:
 * a vector table, .data/.bss set-up, and ARM semihosting (BKPT 0xAB) for output and exit. */
#include <stdint.h>
#include <string.h>

extern uint32_t _data_load, _data_start, _data_end, _bss_start, _bss_end, _stack_top;
int main(void);
void reset_handler(void);
void semi_write0(const char *s);
void semi_exit(int code);

static void fault_handler(void)
{
    semi_write0("fault\n");
    semi_exit(1);
}

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))(uintptr_t)&_stack_top, reset_handler, fault_handler, fault_handler,
    fault_handler, fault_handler, fault_handler, 0, 0, 0, 0, fault_handler, fault_handler, 0,
    fault_handler, fault_handler,
};

static uintptr_t semihost(uintptr_t op, uintptr_t arg)
{
    register uintptr_t r0 __asm__("r0") = op;
    register uintptr_t r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void semi_write0(const char *s) { (void)semihost(0x04, (uintptr_t)s); }

void semi_exit(int code)
{
    (void)semihost(0x18, code == 0 ? 0x20026u : 0x20024u); /* ApplicationExit / RunTimeErrorUnknown */
    for (;;) {
    }
}

void reset_handler(void)
{
    memcpy(&_data_start, &_data_load, (size_t)((char *)&_data_end - (char *)&_data_start));
    memset(&_bss_start, 0, (size_t)((char *)&_bss_end - (char *)&_bss_start));
    semi_exit(main());
}
