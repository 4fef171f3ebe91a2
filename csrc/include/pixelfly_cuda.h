/*
 * pixelfly_cuda.h - host launchers of the torch-free CUDA kernels (csrc/cuda/bsmm.cu and
 * the kernel headers beside it).
 *
 * Same argument struct and semantics as the CPU kernels of pixelfly.h (section
 * "block-sparse matmul"), with these differences:
 *   - every data pointer (x, w, dy, out, work) and every index pointer of a->ix
 *     (row_ptr, col_idx, col_ptr, row_idx, csc_blk) is a DEVICE pointer of the current
 *     device; the pf_bsr_index struct itself and the pf_bsmm_args struct live on the host;
 *   - dtypes: PF_FLOAT32, PF_BFLOAT16 and PF_FLOAT16 (16-bit types as raw uint16_t);
 *     accumulation is always fp32;
 *   - a->isa is ignored.
 * Index contents are trusted (validate them on the host, e.g. pf_csr_transpose, before
 * copying them to the device): the kernels do not re-check them. pixelfly's Python index
 * (BlockIndex) is validated once when it is built (pixelfly/index_check.py).
 *
 * Tensor cores: fp16 / bf16 use mma.sync m16n8k16 with fp32 accumulation; fp32 uses TF32
 * mma.sync m16n8k8 when allow_tf32 != 0 and exact fp32 FFMA otherwise. Square blocks of
 * 16, 32 and 64 with 16-byte aligned pointers and row strides take the tiled tensor-core
 * kernels; everything else takes a generic (correct, slower) SIMT kernel. The tile
 * configurations and their shared memory are in pixelfly_cuda_config.h; the number of
 * pipeline stages is chosen from the device's opt-in shared-memory limit.
 */
#ifndef PIXELFLY_CUDA_H
#define PIXELFLY_CUDA_H

#include <cuda_runtime.h>

#include "pixelfly.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sizes, strides, dtype and null pointers (host-side only; no device access). */
pf_err pf_cuda_bsmm_check(int op, const pf_bsmm_args *a);

/* Bytes of device scratch the op wants in a->work on the current device (BWD_W splits
 * T across CTAs when there are few blocks; 0 otherwise). With a->work == NULL the op
 * still runs correctly, without the split. */
int64_t pf_cuda_bsmm_workspace(int op, const pf_bsmm_args *a);

/* Which kernels a call ran: none (an empty problem), the tiled tensor-core kernels, or the
 * generic kernel (block shape, alignment, or no tile configuration fits the device's
 * shared memory). */
typedef enum { PF_CUDA_NOTHING = 0, PF_CUDA_TILED = 1, PF_CUDA_GENERIC = 2 } pf_cuda_path;

/* Check, then enqueue the op on `stream` (asynchronous). Outputs are fully overwritten.
 * Returns NULL on success or a static message: pf_cuda_bsmm_check's (argument errors), or
 * else a CUDA error. An error left pending by earlier, unrelated CUDA calls is cleared first
 * so that it is not reported as this op's. *path (if not NULL) says which kernels ran. */
pf_err pf_cuda_bsmm(int op, const pf_bsmm_args *a, int allow_tf32, cudaStream_t stream,
                    pf_cuda_path *path);

#ifdef __cplusplus
}
#endif
#endif /* PIXELFLY_CUDA_H */
