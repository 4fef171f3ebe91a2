/* The C tests' shared harness: CHECK(cond, fmt, ...) counts a pass or prints the failure. */
#ifndef PIXELFLY_TESTS_CHECK_H
#define PIXELFLY_TESTS_CHECK_H

#include <stdio.h>

static int n_pass, n_fail;
#define CHECK(cond, ...)                                                          \
    do {                                                                          \
        if (cond) n_pass++;                                                       \
        else {                                                                    \
            n_fail++;                                                             \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);       \
            fprintf(stderr, __VA_ARGS__);                                         \
            fputc('\n', stderr);                                                  \
        }                                                                         \
    } while (0)

#endif
