// cpu_cache.h - a small caching allocator for the large CPU tensors the ops return.
//
// Why: under glibc, an allocation of 32 MiB or more is a fresh mmap every time (the
// dynamic mmap threshold never rises above 32 MiB), so every large output tensor pays a
// page fault and a kernel page-zeroing per 4 KiB page on first touch: about 8 ms per
// 32 MiB on a 2-core VM, which is 10-50% of a block-sparse kernel's time at low density.
// Buffers of at least 4 MiB freed by their tensors are kept (up to a byte limit) and handed
// out again for the same size class (four per power of two), so their pages stay resident;
// they are mmap'ed and munmap'ed directly, so what the cache releases goes back to the OS.
#pragma once

#include <ATen/ATen.h>

namespace pixelfly {

// An uninitialised contiguous CPU tensor of `sizes` and `opts` (CPU, strided). Small
// tensors come from at::empty; large ones from the cache.
// *fresh (if given) says whether the memory is new (its pages may not be faulted in yet)
// rather than a reused buffer.
at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions &opts,
                        bool *fresh = nullptr);

// Frees every cached buffer; returns the bytes released.
int64_t cache_clear();

// Sets the cache limit in bytes (0 disables caching and frees the cache); returns the old one.
int64_t cache_set_limit(int64_t bytes);

// Bytes held by the cache now (free buffers only).
int64_t cache_held();

}  // namespace pixelfly
