/*
 * bsmm_internal.h - private interface between csrc/cpu/bsmm.c (driver: checks, tasks,
 * packing) and the per-ISA micro-kernels (bsmm.c portable, bsmm_avx2.c, bsmm_avx512.c).
 *
 * Every op is reduced to "tiles": C[M x N] = (Cin or 0) + sum_seg sum_{s<K} A(m, s) B(s, n)
 * with fp32 operands and accumulation, where for segment `seg`
 *   A(m, s) = A[aoff(seg) + m*ams + s*ass],   aoff(seg) = aidx ? aidx[seg] * ascale : 0
 *   B(s, n) = B[seg*bseg + s*bss + n]
 * and the result goes to C (fp32, or bf16 rounded to nearest even) with row stride ldc.
 * Exactly one of ams/ass is 1 (a_rows: ass == 1, A rows are x/dy rows; otherwise ams == 1).
 *
 * Summation order (the contract that makes every ISA bitwise identical): each output
 * element is acc = Cin or +0.0f, then acc = fmaf(A(m,s), B(s,n), acc) for seg ascending and
 * s ascending. The SIMD kernels vectorise over n (and register-tile m) only.
 */
#ifndef PF_BSMM_INTERNAL_H
#define PF_BSMM_INTERNAL_H

#include <stdint.h>
#include <string.h>

typedef struct {
    const float *A;
    int64_t ams, ass;       /* strides of A over m and over s (one of them is 1) */
    const int64_t *aidx;    /* per-segment block index, NULL: offset 0 */
    int64_t ascale;         /* elements per unit of aidx */
    const float *B;
    int64_t bss, bseg;      /* B row stride (over s) and per-segment stride */
    int b_padded;           /* B rows may be read up to round_up(N, 16) floats */
    int64_t nseg, K;        /* segments, steps per segment (K may be 0: C = Cin or 0) */
    int64_t M, N;           /* tile size */
    const float *Cin;       /* NULL: start from 0; else fp32 [M x N] with stride ldcin */
    int64_t ldcin;
    void *C;                /* output, fp32 or bf16 (uint16_t) */
    int64_t ldc;
    int c_bf16;
    int c_stream;           /* C is large and written once: aligned full vectors may use
                             * non-temporal stores (pf_bsmm_run fences after phase 1) */
} pf_tile;

typedef void (*pf_tile_fn)(const pf_tile *t);

void pf_tile_portable(const pf_tile *t);
void pf_tile_avx2(const pf_tile *t);
void pf_tile_avx512(const pf_tile *t);

/* fp32 -> bf16, round to nearest even; NaN stays a (quiet) NaN with its sign. */
static inline uint16_t pf_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float pf_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* The float64 path (bsmm_f64.c): exact loops, same task protocol, no workspace. */
#include "pixelfly.h"
int64_t pf_bsmm_f64_num_tasks(int op, int phase, const pf_bsmm_args *a);
void pf_bsmm_f64_run(int op, int phase, const pf_bsmm_args *a, int64_t begin, int64_t end);

#endif /* PF_BSMM_INTERNAL_H */
