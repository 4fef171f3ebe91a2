/* The C tests' seeded random stream: the core's splitmix64 (csrc/core/rng.h) from one fixed
 * seed, and the draws the tests use. */
#ifndef PIXELFLY_TESTS_RNG_H
#define PIXELFLY_TESTS_RNG_H

#include <stdint.h>

#include "../core/rng.h"

static pf_rng test_rng = {0x9E3779B97F4A7C15ull};
static inline uint64_t rnd(void) { return pf_rng_next(&test_rng); }
/* uniform in [lo, hi] */
static inline int64_t rint_in(int64_t lo, int64_t hi) { return lo + (int64_t)(rnd() % (uint64_t)(hi - lo + 1)); }
/* uniform in [0, 1) */
static inline double runif(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }

#endif
