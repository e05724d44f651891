#include "common/alloc_counter.hpp"

#include <malloc.h>

#include <atomic>
#include <cstdlib>
#include <new>

namespace layercache::bench {
namespace {
thread_local std::uint64_t t_allocations = 0;
std::atomic<std::int64_t> g_live_bytes{0};

void* counted_alloc(std::size_t n) {
  void* p = std::malloc(n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  ++t_allocations;
  g_live_bytes.fetch_add(static_cast<std::int64_t>(malloc_usable_size(p)),
                         std::memory_order_relaxed);
  return p;
}
void counted_free(void* p) noexcept {
  if (p == nullptr) return;
  g_live_bytes.fetch_sub(static_cast<std::int64_t>(malloc_usable_size(p)),
                         std::memory_order_relaxed);
  std::free(p);
}
}  // namespace

std::uint64_t thread_allocations() noexcept { return t_allocations; }
std::int64_t live_heap_bytes() noexcept { return g_live_bytes.load(std::memory_order_relaxed); }

}  // namespace layercache::bench

void* operator new(std::size_t n) { return layercache::bench::counted_alloc(n); }
void* operator new[](std::size_t n) { return layercache::bench::counted_alloc(n); }
void operator delete(void* p) noexcept { layercache::bench::counted_free(p); }
void operator delete[](void* p) noexcept { layercache::bench::counted_free(p); }
void operator delete(void* p, std::size_t) noexcept { layercache::bench::counted_free(p); }
void operator delete[](void* p, std::size_t) noexcept { layercache::bench::counted_free(p); }
