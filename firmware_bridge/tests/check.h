/* check.h - the few assertions the C unit tests need (no framework: they run on any host). */
#ifndef FT_CHECK_H
#define FT_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures = 0;
static int check_count = 0;

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        check_count++;                                                                    \
        if (!(cond)) {                                                                    \
            check_failures++;                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);     \
        }                                                                                 \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                \
    do {                                                                                  \
        long check_a_ = (long)(a), check_b_ = (long)(b);                                  \
        check_count++;                                                                    \
        if (check_a_ != check_b_) {                                                       \
            check_failures++;                                                             \
            fprintf(stderr, "%s:%d: %s == %ld, expected %s == %ld\n", __FILE__, __LINE__, \
                    #a, check_a_, #b, check_b_);                                          \
        }                                                                                 \
    } while (0)

#define CHECK_MEM(a, b, n) CHECK(memcmp((a), (b), (n)) == 0)

static int check_report(const char *name)
{
    printf("%s: %d checks, %d failed\n", name, check_count, check_failures);
    return check_failures == 0 ? 0 : 1;
}

/* Hex string to bytes; returns the byte count. */
#if defined(__GNUC__)
__attribute__((unused))
#endif
static size_t unhex(const char *hex, unsigned char *out)
{
    size_t n = 0;
    unsigned v;
    while (hex[0] && hex[1]) {
        if (sscanf(hex, "%2x", &v) != 1) {
            abort();
        }
        out[n++] = (unsigned char)v;
        hex += 2;
    }
    return n;
}

#endif
