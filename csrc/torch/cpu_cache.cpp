// cpu_cache.cpp - see cpu_cache.h.
//
// Buffers are mapped with mmap and unmapped with munmap (never glibc's heap), so memory the
// cache gives up goes back to the OS at once. Sizes are rounded up to size classes, four per
// power of two (at most 25% over the request, 12% on average), so outputs whose row count
// varies from call to call (T = 900..1150) share a few classes and are reused, instead of
// each new size mapping a new buffer.
#include "cpu_cache.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace pixelfly {
namespace {

constexpr int64_t kMinBytes = int64_t(4) << 20;        // smaller buffers: glibc reuses them well
constexpr int64_t kDefaultLimit = int64_t(512) << 20;  // PIXELFLY_CPU_CACHE_MB overrides
constexpr int64_t kMaxLimitMB = int64_t(1) << 40;
constexpr size_t kPage = 4096;

// The size class of a request: rounded up to a multiple of a quarter of its power of two.
size_t size_class(size_t bytes) {
  size_t top = 1;
  while (top <= bytes / 2) top <<= 1;   // largest power of two <= bytes
  size_t step = top / 4 < kPage ? kPage : top / 4;
  return (bytes + step - 1) / step * step;
}

// PIXELFLY_CPU_CACHE_MB: a non-negative integer number of MiB; anything else is an error.
int64_t limit_from_env() {
  const char *e = std::getenv("PIXELFLY_CPU_CACHE_MB");
  if (!e) return kDefaultLimit;
  const std::string s(e);
  bool digits = !s.empty() && s.size() <= 13;
  for (char ch : s) digits = digits && ch >= '0' && ch <= '9';
  TORCH_CHECK_VALUE(digits, "pixelfly: PIXELFLY_CPU_CACHE_MB must be a non-negative integer "
                    "number of MiB (0 turns the CPU output cache off), got '", s, "'");
  const int64_t mb = std::strtoll(e, nullptr, 10);
  TORCH_CHECK_VALUE(mb < kMaxLimitMB, "pixelfly: PIXELFLY_CPU_CACHE_MB must be < 2^40, got ", s);
  return mb << 20;
}

struct Cache {
  std::mutex mu;
  std::multimap<size_t, void *> free_bufs;  // size class -> buffer (free, ready for reuse)
  int64_t held = 0;
  int64_t limit = -1;  // -1: not read from the environment yet

  int64_t get_limit() {  // under mu
    if (limit < 0) limit = limit_from_env();
    return limit;
  }
};

Cache &cache() {
  static Cache *c = new Cache();  // never destroyed: buffers may be freed at exit
  return *c;
}

void unmap(void *p, size_t bytes) { munmap(p, bytes); }

// Keeps a freed buffer, evicting other free buffers (largest first) to stay under the
// limit; a buffer larger than the limit itself is unmapped.
void give_back(void *p, size_t bytes) {
  Cache &c = cache();
  std::vector<std::pair<void *, size_t>> evicted;
  {
    std::lock_guard<std::mutex> g(c.mu);
    const int64_t limit = c.limit;  // read by take()
    if (int64_t(bytes) <= limit) {
      while (c.held + int64_t(bytes) > limit && !c.free_bufs.empty()) {
        auto last = std::prev(c.free_bufs.end());
        c.held -= int64_t(last->first);
        evicted.emplace_back(last->second, last->first);
        c.free_bufs.erase(last);
      }
      c.free_bufs.emplace(bytes, p);
      c.held += int64_t(bytes);
      p = nullptr;
    }
  }
  for (auto &e : evicted) unmap(e.first, e.second);
  if (p) unmap(p, bytes);
}

// A buffer of `bytes` (a size class; cached if one is free, else freshly mapped); nullptr
// if the cache is off.
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
  void *p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED && cache_clear() > 0)  // give the cached buffers back, try again
    p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK(p != MAP_FAILED, "pixelfly: cannot get ", double(bytes) / double(1 << 20),
              " MiB of memory for an output tensor (", std::strerror(errno), ")");
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
  const size_t bytes = size_class(size_t(nbytes));
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
  for (auto &kv : bufs) unmap(kv.second, kv.first);
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
