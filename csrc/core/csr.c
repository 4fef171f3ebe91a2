/*
 * csr.c - element masks and the block-CSR / block-CSC index of a layout.
 *
 * All functions validate every argument before writing anything. Layout and mask
 * cells are read as "kept" when nonzero. Grids may be empty (R or C == 0).
 */
#include "pixelfly.h"

/* 0 <= R, C <= PF_MAX_GRID and R * C <= PF_MAX_CELLS. */
static pf_err check_grid0(int64_t R, int64_t C) {
    if (R < 0 || R > PF_MAX_GRID) return "rows (R) must be in [0, PF_MAX_GRID (2^20)]";
    if (C < 0 || C > PF_MAX_GRID) return "cols (C) must be in [0, PF_MAX_GRID (2^20)]";
    if (R * C > PF_MAX_CELLS) return "rows * cols must be <= PF_MAX_CELLS (2^30)";
    return NULL;
}

pf_err pf_layout_to_mask(const uint8_t *layout, int64_t R, int64_t C, int64_t b1,
                         int64_t b2, uint8_t *mask) {
    pf_err e = check_grid0(R, C);
    if (e) return e;
    if (b1 < 1 || b1 > PF_MAX_CELLS) return "block size b1 must be in [1, PF_MAX_CELLS (2^30)]";
    if (b2 < 1 || b2 > PF_MAX_CELLS) return "block size b2 must be in [1, PF_MAX_CELLS (2^30)]";
    const int64_t M = R * b1, N = C * b2; /* each <= 2^50 */
    if (M > PF_MAX_CELLS || N > PF_MAX_CELLS || (M > 0 && N > PF_MAX_CELLS / M))
        return "mask size (rows*b1) * (cols*b2) must be <= PF_MAX_CELLS (2^30)";
    if (!layout) return "layout must not be NULL";
    if (!mask) return "mask must not be NULL";
    for (int64_t i = 0; i < M; i++) {
        const uint8_t *lrow = layout + (i / b1) * C;
        uint8_t *mrow = mask + i * N;
        for (int64_t j = 0; j < N; j++) mrow[j] = (uint8_t)(lrow[j / b2] != 0);
    }
    return NULL;
}

pf_err pf_mask_to_layout(const uint8_t *mask, int64_t M, int64_t N, int64_t b1,
                         int64_t b2, uint8_t *layout) {
    if (M < 0 || M > PF_MAX_CELLS) return "mask rows (M) must be in [0, PF_MAX_CELLS (2^30)]";
    if (N < 0 || N > PF_MAX_CELLS) return "mask cols (N) must be in [0, PF_MAX_CELLS (2^30)]";
    if (M > 0 && N > PF_MAX_CELLS / M) return "mask size M * N must be <= PF_MAX_CELLS (2^30)";
    if (b1 < 1) return "block size b1 must be >= 1";
    if (b2 < 1) return "block size b2 must be >= 1";
    if (M % b1 != 0) return "block size b1 must divide the mask's row count M";
    if (N % b2 != 0) return "block size b2 must divide the mask's column count N";
    const int64_t R = M / b1, C = N / b2;
    pf_err e = check_grid0(R, C);
    if (e) return e;
    if (!mask) return "mask must not be NULL";
    if (!layout) return "layout must not be NULL";
    /* Validate first (a partially set block is an error) so nothing is half written. */
    for (int64_t bi = 0; bi < R; bi++)
        for (int64_t bj = 0; bj < C; bj++) {
            const uint8_t first = mask[(bi * b1) * N + bj * b2] != 0;
            for (int64_t i = bi * b1; i < (bi + 1) * b1; i++)
                for (int64_t j = bj * b2; j < (bj + 1) * b2; j++)
                    if ((mask[i * N + j] != 0) != first)
                        return "mask is not block-aligned: a b1 x b2 block is partially set";
        }
    for (int64_t bi = 0; bi < R; bi++)
        for (int64_t bj = 0; bj < C; bj++)
            layout[bi * C + bj] = (uint8_t)(mask[(bi * b1) * N + bj * b2] != 0);
    return NULL;
}

int64_t pf_layout_nnz(const uint8_t *layout, int64_t R, int64_t C) {
    if (check_grid0(R, C) || !layout) return -1;
    int64_t nnz = 0;
    for (int64_t c = 0; c < R * C; c++) nnz += layout[c] != 0;
    return nnz;
}

pf_err pf_layout_to_csr(const uint8_t *layout, int64_t R, int64_t C, int64_t *row_ptr,
                        int64_t *col_idx) {
    pf_err e = check_grid0(R, C);
    if (e) return e;
    if (!layout) return "layout must not be NULL";
    if (!row_ptr) return "row_ptr must not be NULL";
    const int64_t nnz = pf_layout_nnz(layout, R, C);
    if (nnz > 0 && !col_idx) return "col_idx must not be NULL (the layout has blocks)";
    int64_t k = 0;
    row_ptr[0] = 0;
    for (int64_t i = 0; i < R; i++) {
        for (int64_t j = 0; j < C; j++)
            if (layout[i * C + j]) col_idx[k++] = j;
        row_ptr[i + 1] = k;
    }
    return NULL;
}

pf_err pf_csr_transpose(int64_t R, int64_t C, const int64_t *row_ptr, const int64_t *col_idx,
                        int64_t *col_ptr, int64_t *row_idx, int64_t *csc_blk) {
    pf_err e = check_grid0(R, C);
    if (e) return e;
    if (!row_ptr) return "row_ptr must not be NULL";
    if (!col_ptr) return "col_ptr must not be NULL";
    if (row_ptr[0] != 0) return "row_ptr[0] must be 0";
    for (int64_t i = 0; i < R; i++) {
        if (row_ptr[i + 1] < row_ptr[i]) return "row_ptr must be non-decreasing";
        /* row_ptr[i] is in [0, i*C] by induction, so the difference cannot overflow. */
        if (row_ptr[i + 1] - row_ptr[i] > C) return "row_ptr: a row holds more than cols blocks";
    }
    const int64_t nnz = row_ptr[R];
    if (nnz > 0 && !col_idx) return "col_idx must not be NULL (row_ptr says there are blocks)";
    if (nnz > 0 && !row_idx) return "row_idx must not be NULL (row_ptr says there are blocks)";
    if (nnz > 0 && !csc_blk) return "csc_blk must not be NULL (row_ptr says there are blocks)";
    for (int64_t i = 0; i < R; i++)
        for (int64_t k = row_ptr[i]; k < row_ptr[i + 1]; k++) {
            if (col_idx[k] < 0 || col_idx[k] >= C) return "col_idx entries must be in [0, cols)";
            if (k > row_ptr[i] && col_idx[k] <= col_idx[k - 1])
                return "col_idx must be strictly ascending within each row";
        }
    /* Counting sort by column; rows are visited in order so each column's rows ascend. */
    for (int64_t j = 0; j <= C; j++) col_ptr[j] = 0;
    for (int64_t k = 0; k < nnz; k++) col_ptr[col_idx[k] + 1]++;
    for (int64_t j = 0; j < C; j++) col_ptr[j + 1] += col_ptr[j];
    for (int64_t i = 0; i < R; i++)
        for (int64_t k = row_ptr[i]; k < row_ptr[i + 1]; k++) {
            const int64_t pos = col_ptr[col_idx[k]]++;
            row_idx[pos] = i;
            csc_blk[pos] = k;
        }
    for (int64_t j = C; j > 0; j--) col_ptr[j] = col_ptr[j - 1];
    col_ptr[0] = 0;
    return NULL;
}
