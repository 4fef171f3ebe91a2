/*
 * rng.h - the core's seeded pseudo-random generator (internal, not public API).
 *
 * splitmix64 (Steele, Lea, Flood 2014): a 64-bit state advanced by a fixed odd constant
 * and scrambled by two xor-shift-multiply rounds. Pure integer arithmetic on uint64_t,
 * so a seed gives the same stream on every platform and compiler.
 */
#ifndef PF_RNG_H
#define PF_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t state;
} pf_rng;

static inline void pf_rng_seed(pf_rng *r, uint64_t seed) { r->state = seed; }

static inline uint64_t pf_rng_next(pf_rng *r) {
    uint64_t z = (r->state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* Uniform integer in [0, n) for n >= 1, without modulo bias (rejection sampling). */
static inline uint64_t pf_rng_below(pf_rng *r, uint64_t n) {
    /* limit = q * n where UINT64_MAX = q * n + rem: accepting x < limit keeps q full cycles. */
    uint64_t limit = UINT64_MAX - (UINT64_MAX % n);
    uint64_t x;
    do {
        x = pf_rng_next(r);
    } while (x >= limit);
    return x % n;
}

#endif /* PF_RNG_H */
