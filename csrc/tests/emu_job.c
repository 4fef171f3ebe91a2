/*
 * emu_job.c - the C core's block-sparse matmul and peak probes as one freestanding
 * program, run by tests/emulator.py on an emulated x86-64 CPU (Bochs' Sapphire Rapids,
 * AVX-512 with AVX512_BF16) so the vdpbf16ps and AVX-512 paths execute on machines whose
 * CPU lacks them. No operating system, no libc: the emulator maps this program and one
 * job block, points rdi at the job and rsp at a stack, and stops at the final hlt.
 *
 * The job block is an array of int64 slots (J_* below, mirrored in tests/emulator.py);
 * a job is one block-sparse matmul, one attention forward / backward or one peak probe;
 * operand slots hold byte offsets from the block's start (-1: NULL). Build (tests do it):
 *   gcc -O3 -std=c11 -fno-math-errno -nostdlib -static -fno-pic -no-pie -fno-stack-protector
 *       -fcf-protection=none [-fsanitize=undefined -fsanitize-undefined-trap-on-error]
 *       -Icsrc/include csrc/tests/emu_job.c (+ every .c of csrc/core, csrc/cpu) -lgcc
 */
#include <stddef.h>
#include <stdint.h>

#include "../cpu/kernels.h"
#include "pixelfly.h"
#include "pixelfly_attn.h"

enum {
    J_KIND,      /* 0: bsmm (op J_OP), 1: pf_peak_dpbf16, 2: pf_peak_fma(J_ISA),
                  * 3: attention (op J_OP: PF_ATTN_FWD / BWD) */
    J_OP, J_DTYPE, J_T, J_R, J_C, J_B1, J_B2, J_NNZ, J_ISA, J_PAIRS, J_TASKS, J_RANK,
    J_LDX, J_LDY, J_LDO, J_LDLR, J_ITERS,
    J_ROW_PTR, J_COL_IDX, J_COL_PTR, J_ROW_IDX, J_CSC_BLK,
    J_X, J_W, J_DY, J_OUT, J_LR_A, J_LR_B, J_BIAS, J_WORK, J_WORK_BYTES,
    J_ERR, J_ERR_BYTES,            /* where an error message goes */
    /* attention: [batch, heads, L, d] contiguous operands; J_R = L / block blocks a side,
     * J_NNZ, J_ROW_PTR .. J_ROW_IDX its index, J_OUT the output (FWD) / input (BWD) */
    J_BATCH, J_HEADS, J_L, J_D, J_BLOCK, J_SCALE /* double bits */, J_CAUSAL, J_PER_PROBLEM,
    J_Q, J_K, J_V, J_DOUT, J_LSE, J_DLSE, J_DQ, J_DK, J_DV, J_FEATURES, J_KEY_MASK,
    /* written by the job */
    J_STATUS,    /* 0 ok, 1 pf_bsmm_check / pf_bsmm_serial refused (message at J_ERR),
                  * 2 workspace larger than J_WORK_BYTES, 3 probe returned < 0 */
    J_HAS_AVX512, J_HAS_BF16,      /* pf_cpu_has_avx512(), pf_cpu_has_avx512_bf16() */
    J_PICKED, J_PAIRS_NATIVE,      /* pf_kernels_pick(J_ISA): its isa and pairs_native */
    J_RESULT,    /* probes: FLOPs done */
    J_SINK,      /* probes: the sink, as the bits of a double */
    J_WORK_NEED, /* bsmm: pf_bsmm_workspace */
    J_SLOTS
};

static void *at(int64_t *j, int slot) { return j[slot] < 0 ? NULL : (char *)j + j[slot]; }

static void put_error(int64_t *j, const char *msg) {
    char *dst = at(j, J_ERR);
    int64_t n = 0;
    for (; dst && msg[n] && n + 1 < j[J_ERR_BYTES]; ++n) dst[n] = msg[n];
    if (dst && j[J_ERR_BYTES] > 0) dst[n] = 0;
}

/* A refused call: status 1 and its message. */
static int refused(int64_t *j, pf_err e) {
    if (!e) return 0;
    j[J_STATUS] = 1;
    put_error(j, e);
    return 1;
}

/* The workspace the call needs, and status 2 if the job block gave less. */
static int no_room(int64_t *j, int64_t need) {
    j[J_WORK_NEED] = need;
    if (need <= j[J_WORK_BYTES]) return 0;
    j[J_STATUS] = 2;
    return 1;
}

static void run_bsmm(int64_t *j) {
    const pf_bsr_index ix = {j[J_R], j[J_C], j[J_B1], j[J_B2], j[J_NNZ],
                             at(j, J_ROW_PTR), at(j, J_COL_IDX), at(j, J_COL_PTR),
                             at(j, J_ROW_IDX), at(j, J_CSC_BLK)};
    pf_bsmm_args a = {0};
    a.dtype = (pf_dtype)j[J_DTYPE];
    a.T = j[J_T];
    a.ix = &ix;
    a.x = at(j, J_X), a.ldx = j[J_LDX];
    a.w = at(j, J_W);
    a.dy = at(j, J_DY), a.ldy = j[J_LDY];
    a.out = at(j, J_OUT), a.ldo = j[J_LDO];
    a.isa = (int)j[J_ISA];
    a.max_tasks = j[J_TASKS];
    a.bf16_pairs = (int)j[J_PAIRS];
    a.rank = j[J_RANK];
    a.lr_a = at(j, J_LR_A), a.ld_lr_a = j[J_LDLR];
    a.lr_b = at(j, J_LR_B);
    a.bias = at(j, J_BIAS);
    const int op = (int)j[J_OP];
    if (refused(j, pf_bsmm_check(op, &a)) || no_room(j, pf_bsmm_workspace(op, &a))) return;
    a.work = at(j, J_WORK);
    if (!refused(j, pf_bsmm_serial(op, &a))) j[J_STATUS] = 0;
}

static void run_probe(int64_t *j) {
    double sink = 0.0;
    j[J_RESULT] = j[J_KIND] == 1 ? pf_peak_dpbf16(j[J_ITERS], &sink)
                                 : pf_peak_fma((int)j[J_ISA], j[J_ITERS], &sink);
    __builtin_memcpy(&j[J_SINK], &sink, sizeof sink);
    j[J_STATUS] = j[J_RESULT] < 0 ? 3 : 0;
}

static pf_attn_tensor dense(int64_t *j, int slot) {
    const int64_t sl = j[J_D], sh = j[J_L] * sl, sb = j[J_HEADS] * sh;
    return (pf_attn_tensor){at(j, slot), sb, sh, sl};
}

static void run_attention(int64_t *j) {
    pf_attn_args a = {0};
    a.dtype = (pf_dtype)j[J_DTYPE];
    a.batch = j[J_BATCH], a.heads = j[J_HEADS], a.L = j[J_L], a.d = j[J_D], a.block = j[J_BLOCK];
    a.nnz = j[J_NNZ];
    a.row_ptr = at(j, J_ROW_PTR), a.col_idx = at(j, J_COL_IDX);
    a.col_ptr = at(j, J_COL_PTR), a.row_idx = at(j, J_ROW_IDX);
    __builtin_memcpy(&a.scale, &j[J_SCALE], sizeof a.scale);
    a.causal = (int)j[J_CAUSAL];
    a.q = dense(j, J_Q), a.k = dense(j, J_K), a.v = dense(j, J_V);
    a.out = dense(j, J_OUT), a.dout = dense(j, J_DOUT);
    a.lse = at(j, J_LSE), a.dlse = at(j, J_DLSE);
    a.dq = dense(j, J_DQ), a.dk = dense(j, J_DK), a.dv = dense(j, J_DV);
    a.max_tasks = j[J_TASKS];
    a.per_problem = (int)j[J_PER_PROBLEM];
    a.isa = (int)j[J_ISA];
    a.rank = j[J_RANK];
    a.features = at(j, J_FEATURES);
    a.key_mask = at(j, J_KEY_MASK);
    const int op = (int)j[J_OP];
    if (refused(j, pf_attn_check(op, &a)) || no_room(j, pf_attn_workspace(op, &a))) return;
    a.work = at(j, J_WORK);
    if (!refused(j, pf_attn_serial(op, &a))) j[J_STATUS] = 0;
}

void pf_emu_job(int64_t *j) {
    j[J_HAS_AVX512] = pf_cpu_has_avx512();
    j[J_HAS_BF16] = pf_cpu_has_avx512_bf16();
    const pf_kernels *k = pf_kernels_pick((int)j[J_ISA]);
    j[J_PICKED] = k->isa;
    j[J_PAIRS_NATIVE] = k->pairs_native;
    if (j[J_KIND] == 0) run_bsmm(j);
    else if (j[J_KIND] == 3) run_attention(j);
    else run_probe(j);
}

/* ---------------------------------------------------------------- the bare runtime */

/* The few libc functions the compiler and the core call. Built like the rest of the
 * program (no -ffreestanding: small copies inline as in the library), so their loops
 * must not be turned back into calls to themselves. */
#define PF_RT __attribute__((optimize("no-tree-loop-distribute-patterns")))

__asm__(".text\n.globl _start\n_start:\n"
        "  and $-64, %rsp\n"
        "  call pf_emu_job\n"
        "1: hlt\n  jmp 1b\n");

PF_RT void *memcpy(void *restrict d, const void *restrict s, size_t n) {
    unsigned char *dp = d;
    const unsigned char *sp = s;
    while (n--) *dp++ = *sp++;
    return d;
}

PF_RT void *memmove(void *d, const void *s, size_t n) {
    unsigned char *dp = d;
    const unsigned char *sp = s;
    if (dp < sp) while (n--) *dp++ = *sp++;
    else while (n--) dp[n] = sp[n];
    return d;
}

PF_RT void *memset(void *d, int c, size_t n) {
    unsigned char *dp = d;
    while (n--) *dp++ = (unsigned char)c;
    return d;
}

PF_RT int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *p = a, *q = b;
    for (; n; --n, ++p, ++q)
        if (*p != *q) return *p < *q ? -1 : 1;
    return 0;
}

/* The double-precision functions the core calls: exp feeds the plan's cost estimates (no
 * result depends on them) and, with log and sqrt, attention's log-sum-exp, which tests
 * compare with tolerance (these are within an ulp or two of glibc's, not bitwise). */
static double pow2i(int k) { /* 2^k, k in [-1022, 1023] */
    union { double d; uint64_t u; } s = {.u = (uint64_t)(k + 1023) << 52};
    return s.d;
}

double exp(double x) {
    if (x != x) return x;
    if (x > 709.78) return __builtin_inf();
    if (x < -745.2) return 0.0;
    const double ln2 = 0.69314718055994530942;
    const int k = (int)(x / ln2 + (x < 0 ? -0.5 : 0.5)); /* e^x = 2^k e^r, |r| <= ln2 / 2 */
    const double r = x - k * ln2;
    double term = 1.0, sum = 1.0;
    for (int n = 1; n < 24; ++n) sum += term *= r / n;
    return k < -1000 ? sum * pow2i(k + 1000) * pow2i(-1000) : k > 1000 ? sum * pow2i(k - 1000) * pow2i(1000)
                                                                     : sum * pow2i(k);
}

double log(double x) {
    if (x != x || x == __builtin_inf()) return x;
    if (x < 0) return __builtin_nan("");
    if (x == 0) return -__builtin_inf();
    int e = 0;
    if (x < 0x1p-1000) x *= 0x1p100, e = -100; /* subnormal: scale into the normal range */
    union { double d; uint64_t u; } m = {.d = x};
    e += (int)((m.u >> 52) & 0x7ff) - 1023;
    m.u = (m.u & ~(0x7ffULL << 52)) | (1023ULL << 52); /* m in [1, 2) */
    if (m.d > 1.41421356237309504880) m.d *= 0.5, ++e;
    const double s = (m.d - 1.0) / (m.d + 1.0), s2 = s * s; /* log m = 2 atanh s */
    double term = s, sum = 0.0;
    for (int n = 1; n < 40; n += 2) sum += term / n, term *= s2;
    return 2.0 * sum + e * 0.69314718055994530942;
}

double sqrt(double x) { return __builtin_sqrt(x); } /* sqrtsd (-fno-math-errno) */

/* Everything else the core links but these jobs never call (the budget solver, the
 * portable ISA's scalar code): reaching one is a bug, so it stops the emulator with #UD. */
#define PF_TRAP(name) void name(void) { __builtin_trap(); }
PF_TRAP(malloc) PF_TRAP(calloc) PF_TRAP(free) PF_TRAP(qsort) PF_TRAP(expf) PF_TRAP(ceil)
PF_TRAP(floor) PF_TRAP(fmaf) PF_TRAP(__assert_fail)
