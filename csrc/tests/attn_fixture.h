/* attn_fixture.h - what the attention tests share: a random generator, problems (layouts and
 * their block-CSR/CSC), operands in the kernel's interleaved layout with double copies, and
 * the naive double reference (sparse part, low-rank part, key mask). Static: include once. */
#ifndef PF_ATTN_FIXTURE_H
#define PF_ATTN_FIXTURE_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pixelfly_attn.h"

#include "../cpu/kernels.h"

static uint64_t g_rng = 88172645463325252ull;
static uint64_t rnd(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}
static double urand(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }
static double nrand(void) {
    double u = urand() + 1e-12, v = urand();
    return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

typedef struct {
    int64_t B, H, L, d, b, R, nnz;
    int64_t *row_ptr, *col_idx, *col_ptr, *row_idx;
    uint8_t *layout;
} problem;

static void build_index(problem *p) {
    const int64_t R = p->R;
    p->nnz = 0;
    for (int64_t i = 0; i < R * R; ++i) p->nnz += p->layout[i];
    p->row_ptr = calloc((size_t)R + 1, 8);
    p->col_ptr = calloc((size_t)R + 1, 8);
    p->col_idx = calloc((size_t)p->nnz + 1, 8);
    p->row_idx = calloc((size_t)p->nnz + 1, 8);
    int64_t k = 0;
    for (int64_t i = 0; i < R; ++i) {
        for (int64_t j = 0; j < R; ++j)
            if (p->layout[i * R + j]) p->col_idx[k++] = j;
        p->row_ptr[i + 1] = k;
    }
    k = 0;
    for (int64_t j = 0; j < R; ++j) {
        for (int64_t i = 0; i < R; ++i)
            if (p->layout[i * R + j]) p->row_idx[k++] = i;
        p->col_ptr[j + 1] = k;
    }
}

static void free_problem(problem *p) {
    free(p->row_ptr); free(p->col_ptr); free(p->col_idx); free(p->row_idx); free(p->layout);
}

enum { LAY_RANDOM, LAY_BUTTERFLY, LAY_EMPTY_ROWS };

static void make_layout(problem *p, int kind, double density) {
    const int64_t R = p->R;
    p->layout = calloc((size_t)(R * R), 1);
    if (kind == LAY_BUTTERFLY) { /* flat butterfly, m = 2 factors, n = largest power of two <= R */
        int64_t n = 1;
        while (n * 2 <= R) n *= 2;
        for (int64_t i = 0; i < R; ++i)
            for (int64_t j = 0; j < R; ++j) {
                const int64_t x = (i * n / R) ^ (j * n / R);
                p->layout[i * R + j] = (x == 0 || x == 1 || x == 2);
            }
    } else {
        for (int64_t i = 0; i < R; ++i)
            for (int64_t j = 0; j < R; ++j) p->layout[i * R + j] = urand() < density;
        if (kind == LAY_EMPTY_ROWS && R > 1) /* one empty row, one row with only an above-diagonal block */
            for (int64_t j = 0; j < R; ++j) {
                p->layout[0 * R + j] = 0;
                p->layout[(R / 2) * R + j] = (j == R - 1 && R / 2 != R - 1);
            }
    }
    build_index(p);
}

/* dense double operand [B, H, L, d] stored contiguously in the reference; the kernel sees
 * the same values in storage dtype with layout [B, L, H, d] (interleaved heads). */
typedef struct {
    double *ref;
    void *buf;
} operand;

static int64_t ref_at(const problem *p, int64_t n, int64_t i) { return (n * p->L + i) * p->d; }

static void fill_operand(const problem *p, operand *o, pf_dtype dt, double sigma) {
    const int64_t N = p->B * p->H, total = N * p->L * p->d;
    const size_t es = dt == PF_FLOAT64 ? 8 : dt == PF_FLOAT32 ? 4 : 2;
    o->ref = malloc((size_t)total * 8);
    o->buf = malloc((size_t)total * es);
    for (int64_t n0 = 0; n0 < p->B; ++n0)
        for (int64_t h = 0; h < p->H; ++h)
            for (int64_t i = 0; i < p->L; ++i)
                for (int64_t c = 0; c < p->d; ++c) {
                    double x = nrand() * sigma;
                    const int64_t s = ((n0 * p->L + i) * p->H + h) * p->d + c; /* [B, L, H, d] */
                    if (dt == PF_FLOAT64) ((double *)o->buf)[s] = x;
                    else if (dt == PF_FLOAT32) { ((float *)o->buf)[s] = (float)x; x = (float)x; }
                    else { uint16_t hb = pf_f32_to_bf16((float)x); ((uint16_t *)o->buf)[s] = hb; x = pf_bf16_to_f32(hb); }
                    o->ref[ref_at(p, n0 * p->H + h, i) + c] = x;
                }
}

static pf_attn_tensor view_blhd(const problem *p, void *buf) {
    pf_attn_tensor t = {buf, p->L * p->H * p->d, p->d, p->H * p->d};
    return t;
}
static pf_attn_tensor view_bhld(const problem *p, void *buf) {
    pf_attn_tensor t = {buf, p->H * p->L * p->d, p->L * p->d, p->d};
    return t;
}

static double get_elem(const void *buf, pf_dtype dt, int64_t s) {
    if (dt == PF_FLOAT64) return ((const double *)buf)[s];
    if (dt == PF_FLOAT32) return ((const float *)buf)[s];
    return pf_bf16_to_f32(((const uint16_t *)buf)[s]);
}

/* Naive double reference of every problem: out, lse and (if dout) dq, dk, dv, with L x L
 * matrices. Kept entries (layout, causal) weigh exp(s_ij); with rank > 0 the other allowed
 * entries weigh phi(q_i) . phi(k_j), phi(x) = exp(W x - |x|^2 / 2) / sqrt(rank) for
 * x = sqrt(scale) * (q or k) (W: [rank][d]); keys with kmask[batch][j] == 0 weigh nothing. */
static void reference(const problem *p, int causal, double scale, const double *q, const double *k,
                      const double *v, const double *dout, const double *dlse, const double *W,
                      int64_t rank, const uint8_t *kmask, double *out, double *lse, double *dq,
                      double *dk, double *dv) {
    const int64_t L = p->L, d = p->d, b = p->b, N = p->B * p->H;
    const double rs = sqrt(scale);
    double *P = malloc((size_t)(L * L) * 8), *dP = malloc((size_t)(L * L) * 8);
    uint8_t *kind = malloc((size_t)(L * L)); /* 0 none, 1 kept, 2 low rank */
    double *fq = malloc((size_t)(L * (rank + 1)) * 8), *fk = malloc((size_t)(L * (rank + 1)) * 8);
    double *gq = malloc((size_t)(L * (rank + 1)) * 8), *gk = malloc((size_t)(L * (rank + 1)) * 8);
    for (int64_t n = 0; n < N; ++n) {
        const double *Q = q + n * L * d, *K = k + n * L * d, *V = v + n * L * d;
        const uint8_t *km = kmask ? kmask + (n / p->H) * L : NULL;
        for (int64_t i = 0; i < L && rank > 0; ++i) /* features */
            for (int side = 0; side < 2; ++side) {
                const double *X = (side ? K : Q) + i * d;
                double *F = (side ? fk : fq) + i * rank, sq = 0;
                for (int64_t c = 0; c < d; ++c) sq += rs * X[c] * rs * X[c];
                for (int64_t c = 0; c < rank; ++c) {
                    double a = 0;
                    for (int64_t e = 0; e < d; ++e) a += W[c * d + e] * rs * X[e];
                    F[c] = exp(a - 0.5 * sq) / sqrt((double)rank);
                }
            }
        for (int64_t i = 0; i < L; ++i) {
            double mx = -INFINITY;
            for (int64_t j = 0; j < L; ++j) {
                const int allowed = (!causal || j <= i) && (!km || km[j]);
                const int keep = allowed && p->layout[(i / b) * p->R + j / b];
                kind[i * L + j] = keep ? 1 : allowed && rank > 0 ? 2 : 0;
                double s = -INFINITY;
                if (keep) {
                    s = 0;
                    for (int64_t c = 0; c < d; ++c) s += Q[i * d + c] * K[j * d + c];
                    s *= scale;
                }
                P[i * L + j] = s;
                if (s > mx) mx = s;
            }
            if (mx == -INFINITY) mx = 0;
            double sum = 0;
            for (int64_t j = 0; j < L; ++j) {
                double w = 0;
                if (kind[i * L + j] == 1) w = exp(P[i * L + j] - mx);
                if (kind[i * L + j] == 2)
                    for (int64_t c = 0; c < rank; ++c) w += fq[i * rank + c] * fk[j * rank + c] * exp(-mx);
                P[i * L + j] = w;
                sum += w;
            }
            lse[n * L + i] = sum > 0 ? mx + log(sum) : -INFINITY;
            for (int64_t j = 0; j < L; ++j) P[i * L + j] = sum > 0 ? P[i * L + j] / sum : 0;
            for (int64_t c = 0; c < d; ++c) {
                double acc = 0;
                for (int64_t j = 0; j < L; ++j) acc += P[i * L + j] * V[j * d + c];
                out[(n * L + i) * d + c] = acc;
            }
        }
        if (!dout) continue;
        const double *dO = dout + n * L * d;
        /* dP holds dS on kept entries, dL/dk_ij on low-rank ones */
        for (int64_t i = 0; i < L; ++i) {
            double D = 0;
            for (int64_t c = 0; c < d; ++c) D += dO[i * d + c] * out[(n * L + i) * d + c];
            if (dlse) D -= dlse[n * L + i];
            const double Z = exp(lse[n * L + i]);
            for (int64_t j = 0; j < L; ++j) {
                double s = 0;
                for (int64_t c = 0; c < d; ++c) s += dO[i * d + c] * V[j * d + c];
                const int t = kind[i * L + j];
                dP[i * L + j] = t == 1 ? P[i * L + j] * (s - D) : t == 2 ? (s - D) / Z : 0;
            }
        }
        for (int64_t i = 0; i < L; ++i)
            for (int64_t c = 0; c < d; ++c) {
                double aq = 0, ak = 0, av = 0;
                for (int64_t j = 0; j < L; ++j) {
                    if (kind[i * L + j] == 1) aq += dP[i * L + j] * K[j * d + c];
                    if (kind[j * L + i] == 1) ak += dP[j * L + i] * Q[j * d + c];
                    av += P[j * L + i] * dO[j * d + c];
                }
                dq[(n * L + i) * d + c] = scale * aq;
                dk[(n * L + i) * d + c] = scale * ak;
                dv[(n * L + i) * d + c] = av;
            }
        if (rank == 0) continue;
        for (int64_t i = 0; i < L; ++i) /* d phi, times phi */
            for (int64_t c = 0; c < rank; ++c) {
                double a = 0, bk = 0;
                for (int64_t j = 0; j < L; ++j) {
                    if (kind[i * L + j] == 2) a += dP[i * L + j] * fk[j * rank + c];
                    if (kind[j * L + i] == 2) bk += dP[j * L + i] * fq[j * rank + c];
                }
                gq[i * rank + c] = a * fq[i * rank + c];
                gk[i * rank + c] = bk * fk[i * rank + c];
            }
        for (int64_t i = 0; i < L; ++i) /* dx = g W - rowsum(g) x, x = rs * input */
            for (int side = 0; side < 2; ++side) {
                const double *X = (side ? K : Q) + i * d, *G = (side ? gk : gq) + i * rank;
                double *dst = (side ? dk : dq) + (n * L + i) * d, gs = 0;
                for (int64_t c = 0; c < rank; ++c) gs += G[c];
                for (int64_t e = 0; e < d; ++e) {
                    double a = 0;
                    for (int64_t c = 0; c < rank; ++c) a += G[c] * W[c * d + e];
                    dst[e] += rs * (a - gs * rs * X[e]);
                }
            }
    }
    free(P); free(dP); free(kind); free(fq); free(fk); free(gq); free(gk);
}

/* max |kernel - ref| / max(1, max |ref|) over a [B, H, L, d] output stored as [B, H, L, d] */
static double err_bhld(const problem *p, const void *buf, pf_dtype dt, const double *ref) {
    const int64_t total = p->B * p->H * p->L * p->d;
    double e = 0, m = 1;
    for (int64_t s = 0; s < total; ++s) {
        const double x = get_elem(buf, dt, s), r = ref[s];
        if (!(fabs(x - r) <= e)) e = fabs(x - r); /* NaN propagates as failure */
        if (fabs(r) > m) m = fabs(r);
    }
    return e / m;
}

#endif /* PF_ATTN_FIXTURE_H */
