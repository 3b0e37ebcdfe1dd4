/* m4_semihost_io.c - newlib's stdio on the emulated Cortex-M4 of firmware_bridge/tests/m4/
 * (startup.c's semihosting): _write sends stdout/stderr to the host, _sbrk serves malloc from a
 * static heap. Lets the C unit tests (printf) run there unchanged. */
#include <errno.h>
#include <stddef.h>
#include <string.h>
void semi_write0(const char *s);
int _write(int fd, const char *buf, int len);
void *_sbrk(ptrdiff_t incr);

int _write(int fd, const char *buf, int len)
{
    char chunk[65];
    int done = 0;
    (void)fd;
    while (done < len) {
        int n = len - done < 64 ? len - done : 64;
        memcpy(chunk, buf + done, (size_t)n);
        chunk[n] = 0;
        semi_write0(chunk);
        done += n;
    }
    return len;
}

void *_sbrk(ptrdiff_t incr)
{
    static unsigned char heap[256 * 1024];
    static size_t used;
    void *p;
    if (incr < 0 || used + (size_t)incr > sizeof heap) {
        errno = ENOMEM;
        return (void *)-1;
    }
    p = heap + used;
    used += (size_t)incr;
    return p;
}
