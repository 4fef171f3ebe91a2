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

/* ------------------------------------------------------------ index checks */

/* The messages of one compressed index (CSR or CSC), naming its arrays. */
typedef struct {
    const char *ptr_null, *ptr0, *ptr_order, *ptr_end, *idx_null, *idx_range, *idx_order;
} index_words;

static const index_words CSR_WORDS = {
    "row_ptr/col_idx: row_ptr must not be NULL", "row_ptr/col_idx: row_ptr[0] must be 0",
    "row_ptr/col_idx: row_ptr must be non-decreasing and <= nnz",
    "row_ptr/col_idx: row_ptr[rows] must equal nnz (the number of blocks)",
    "row_ptr/col_idx: col_idx must not be NULL (row_ptr says there are blocks)",
    "row_ptr/col_idx: col_idx entries must be in [0, cols)",
    "row_ptr/col_idx: col_idx must be strictly ascending within each block-row"};
static const index_words CSC_WORDS = {
    "col_ptr/row_idx: col_ptr must not be NULL", "col_ptr/row_idx: col_ptr[0] must be 0",
    "col_ptr/row_idx: col_ptr must be non-decreasing and <= nnz",
    "col_ptr/row_idx: col_ptr[cols] must equal nnz (the number of blocks)",
    "col_ptr/row_idx: row_idx must not be NULL (col_ptr says there are blocks)",
    "col_ptr/row_idx: row_idx entries must be in [0, rows)",
    "col_ptr/row_idx: row_idx must be strictly ascending within each block-column"};

/* ptr [n + 1] and idx [nnz]: ptr[0] = 0, non-decreasing, ptr[n] = nnz; idx in [0, m) and
 * strictly ascending inside each of the n segments. */
static pf_err check_compressed(int64_t n, int64_t m, int64_t nnz, const int64_t *ptr,
                               const int64_t *idx, const index_words *w) {
    if (!ptr) return w->ptr_null;
    if (ptr[0] != 0) return w->ptr0;
    for (int64_t r = 0; r < n; ++r)
        if (ptr[r + 1] < ptr[r] || ptr[r + 1] > nnz) return w->ptr_order;
    if (ptr[n] != nnz) return w->ptr_end;
    if (nnz > 0 && !idx) return w->idx_null;
    for (int64_t r = 0; r < n; ++r)
        for (int64_t k = ptr[r]; k < ptr[r + 1]; ++k) {
            if (idx[k] < 0 || idx[k] >= m) return w->idx_range;
            if (k > ptr[r] && idx[k] <= idx[k - 1]) return w->idx_order;
        }
    return NULL;
}

/* An index may describe a grid larger than PF_MAX_CELLS (it is never expanded). */
static pf_err check_index_sizes(int64_t R, int64_t C, int64_t nnz) {
    if (R < 0 || R > PF_MAX_GRID) return "rows (R) must be in [0, PF_MAX_GRID (2^20)]";
    if (C < 0 || C > PF_MAX_GRID) return "cols (C) must be in [0, PF_MAX_GRID (2^20)]";
    if (nnz < 0 || nnz > R * C) return "nnz must be in [0, rows * cols]";
    return NULL;
}

pf_err pf_csr_check(int64_t R, int64_t C, int64_t nnz, const int64_t *row_ptr,
                    const int64_t *col_idx) {
    pf_err e = check_index_sizes(R, C, nnz);
    return e ? e : check_compressed(R, C, nnz, row_ptr, col_idx, &CSR_WORDS);
}

/* 1 if block-row r of the CSR holds column c (binary search: columns ascend). */
static int csr_has(const int64_t *row_ptr, const int64_t *col_idx, int64_t r, int64_t c) {
    int64_t lo = row_ptr[r], hi = row_ptr[r + 1];
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (col_idx[mid] == c) return 1;
        if (col_idx[mid] < c) lo = mid + 1; else hi = mid;
    }
    return 0;
}

pf_err pf_csc_check(int64_t R, int64_t C, int64_t nnz, const int64_t *row_ptr,
                    const int64_t *col_idx, const int64_t *col_ptr, const int64_t *row_idx,
                    const int64_t *csc_blk, int with_csc_blk) {
    pf_err e = check_index_sizes(R, C, nnz);
    if (!e) e = check_compressed(C, R, nnz, col_ptr, row_idx, &CSC_WORDS);
    if (e) return e;
    if (with_csc_blk && nnz > 0 && !csc_blk) return "csc_blk must not be NULL (col_ptr says there are blocks)";
    /* nnz distinct (row, column) pairs, each found in the CSR's nnz: the same set */
    for (int64_t c = 0; c < C; ++c)
        for (int64_t q = col_ptr[c]; q < col_ptr[c + 1]; ++q) {
            const int64_t r = row_idx[q];
            if (with_csc_blk) {
                const int64_t j = csc_blk[q];
                if (j < row_ptr[r] || j >= row_ptr[r + 1] || col_idx[j] != c)
                    return "csc_blk must be the CSC permutation of the CSR blocks (csc_blk[k] is "
                           "the CSR position of the k-th block in CSC order)";
            } else if (!csr_has(row_ptr, col_idx, r, c)) {
                return "col_ptr/row_idx is not the transpose of row_ptr/col_idx (a block of the "
                       "CSC is missing from the CSR)";
            }
        }
    return NULL;
}

/* ------------------------------------------------------------ transpose */

pf_err pf_csr_transpose(int64_t R, int64_t C, const int64_t *row_ptr, const int64_t *col_idx,
                        int64_t *col_ptr, int64_t *row_idx, int64_t *csc_blk) {
    pf_err e = check_grid0(R, C);
    if (e) return e;
    if (!row_ptr) return "row_ptr must not be NULL";
    if (!col_ptr) return "col_ptr must not be NULL";
    const int64_t nnz = row_ptr[R];
    if (nnz < 0 || nnz > R * C) return "row_ptr[rows] (the number of blocks) must be in [0, rows * cols]";
    if ((e = pf_csr_check(R, C, nnz, row_ptr, col_idx))) return e;
    if (nnz > 0 && !row_idx) return "row_idx must not be NULL (row_ptr says there are blocks)";
    if (nnz > 0 && !csc_blk) return "csc_blk must not be NULL (row_ptr says there are blocks)";
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
