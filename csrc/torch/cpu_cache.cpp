// cpu_cache.cpp - see cpu_cache.h.
#include "cpu_cache.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

namespace pixelfly {
namespace {

constexpr int64_t kMinBytes = int64_t(4) << 20;     // smaller buffers: glibc reuses them well
constexpr int64_t kDefaultLimit = int64_t(512) << 20;  // PIXELFLY_CPU_CACHE_MB overrides
constexpr size_t kAlign = 4096;

struct Cache {
  std::mutex mu;
  std::multimap<size_t, void *> free_bufs;  // size -> buffer (free, ready for reuse)
  int64_t held = 0;
  int64_t limit = -1;  // -1: not read from the environment yet

  int64_t get_limit() {  // under mu
    if (limit < 0) {
      const char *e = std::getenv("PIXELFLY_CPU_CACHE_MB");
      limit = kDefaultLimit;
      if (e && *e) {
        char *end = nullptr;
        const long long mb = std::strtoll(e, &end, 10);
        if (end && *end == '\0' && mb >= 0 && mb < (1LL << 40)) limit = int64_t(mb) << 20;
      }
    }
    return limit;
  }
};

Cache &cache() {
  static Cache *c = new Cache();  // never destroyed: buffers may be freed at exit
  return *c;
}

// Keeps a freed buffer, evicting other free buffers (largest first) to stay under the
// limit; a buffer larger than the limit itself is freed.
void give_back(void *p, size_t bytes) {
  Cache &c = cache();
  std::vector<void *> evicted;
  {
    std::lock_guard<std::mutex> g(c.mu);
    const int64_t limit = c.get_limit();
    if (int64_t(bytes) <= limit) {
      while (c.held + int64_t(bytes) > limit && !c.free_bufs.empty()) {
        auto last = std::prev(c.free_bufs.end());
        c.held -= int64_t(last->first);
        evicted.push_back(last->second);
        c.free_bufs.erase(last);
      }
      c.free_bufs.emplace(bytes, p);
      c.held += int64_t(bytes);
      p = nullptr;
    }
  }
  for (void *q : evicted) std::free(q);
  std::free(p);
}

// A buffer of `bytes` (cached if one is free, else new); nullptr if the cache is off.
void *take(size_t bytes, bool *fresh) {
  Cache &c = cache();
  {
    std::lock_guard<std::mutex> g(c.mu);
    if (c.get_limit() == 0) return nullptr;
    auto it = c.free_bufs.find(bytes);
    if (it != c.free_bufs.end()) {
      void *p = it->second;
      c.free_bufs.erase(it);
      c.held -= int64_t(bytes);
      *fresh = false;
      return p;
    }
  }
  void *p = std::aligned_alloc(kAlign, bytes);
  TORCH_CHECK(p != nullptr, "pixelfly: out of memory allocating ", bytes, " bytes");
  return p;
}

}  // namespace

at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions &opts, bool *fresh) {
  bool fresh_local = true;
  if (!fresh) fresh = &fresh_local;
  *fresh = true;
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const int64_t nbytes = numel * int64_t(at::elementSize(at::typeMetaToScalarType(opts.dtype())));
  if (nbytes < kMinBytes) return at::empty(sizes, opts);
  const size_t bytes = (size_t(nbytes) + kAlign - 1) / kAlign * kAlign;
  void *p = take(bytes, fresh);
  if (!p) return at::empty(sizes, opts);  // the cache is off
  return at::from_blob(p, sizes, [bytes](void *q) { give_back(q, bytes); }, opts);
}

int64_t cache_clear() {
  Cache &c = cache();
  std::multimap<size_t, void *> bufs;
  int64_t released;
  {
    std::lock_guard<std::mutex> g(c.mu);
    bufs.swap(c.free_bufs);
    released = c.held;
    c.held = 0;
  }
  for (auto &kv : bufs) std::free(kv.second);
  return released;
}

int64_t cache_set_limit(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes >= 0, "pixelfly: the cache limit must be >= 0 bytes, got ", bytes);
  int64_t old;
  {
    Cache &c = cache();
    std::lock_guard<std::mutex> g(c.mu);
    old = c.get_limit();
    c.limit = bytes;
  }
  cache_clear();
  return old;
}

int64_t cache_held() {
  Cache &c = cache();
  std::lock_guard<std::mutex> g(c.mu);
  return c.held;
}

}  // namespace pixelfly
