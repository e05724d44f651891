// l1_hit_allocation_test.cpp — an L1 hit allocates nothing (memory_layer.hpp, cache_stack.hpp).
//
// This file replaces the global operator new/delete FOR THE WHOLE unit-test binary (a replacement
// is program-wide, whatever file defines it). The replacements stay trivial and always on: they
// forward to malloc/free and bump a thread_local counter, so every other test runs as before. They
// are not installed under AddressSanitizer or ThreadSanitizer, whose runtimes provide operator new
// themselves (replacing it would blind their new/delete checks); the tests then skip.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <optional>
#include <string>

#include "layercache/cache_stack.hpp"
#include "support/fake_clock.hpp"
#include "test_byte_layer.hpp"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define LAYERCACHE_TEST_COUNT_ALLOCATIONS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define LAYERCACHE_TEST_COUNT_ALLOCATIONS 0
#endif
#endif
#ifndef LAYERCACHE_TEST_COUNT_ALLOCATIONS
#define LAYERCACHE_TEST_COUNT_ALLOCATIONS 1
#endif

namespace {
// Allocations made by the current thread through operator new (any form). Constant-initialised,
// so reading it from operator new never runs an initialiser.
thread_local std::uint64_t t_allocations = 0;
}  // namespace

#if LAYERCACHE_TEST_COUNT_ALLOCATIONS

namespace {
void* counted_alloc(std::size_t n) noexcept {
  ++t_allocations;
  return std::malloc(n == 0 ? 1 : n);
}
void* counted_aligned_alloc(std::size_t n, std::align_val_t al) noexcept {
  ++t_allocations;
  const auto a = static_cast<std::size_t>(al);
  const std::size_t rounded = ((n == 0 ? 1 : n) + a - 1) / a * a;  // aligned_alloc wants a multiple
  return std::aligned_alloc(a, rounded);
}
}  // namespace

// These replacements pair malloc with free by design; GCC 12 at -O2+ inlines them into callers
// and then reports the (intended) new/free pairing as -Wmismatched-new-delete.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  if (void* p = counted_alloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  if (void* p = counted_alloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n); }
void* operator new(std::size_t n, std::align_val_t al) {
  if (void* p = counted_aligned_alloc(n, al)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t al) {
  if (void* p = counted_aligned_alloc(n, al)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
  return counted_aligned_alloc(n, al);
}
void* operator new[](std::size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
  return counted_aligned_alloc(n, al);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
#pragma GCC diagnostic pop

#endif  // LAYERCACHE_TEST_COUNT_ALLOCATIONS

namespace layercache {
namespace {

constexpr int warm_up = 1'000;
constexpr int measured = 10'000;

#define LAYERCACHE_SKIP_WITHOUT_COUNTING()                                          \
  if (!LAYERCACHE_TEST_COUNT_ALLOCATIONS) {                                         \
    GTEST_SKIP() << "operator new is owned by the sanitizer runtime in this build"; \
  }

TEST(L1AllocationTest, CounterSeesAllocationsOfThisThread) {
  LAYERCACHE_SKIP_WITHOUT_COUNTING();
  const std::uint64_t before = t_allocations;
  void* p = ::operator new(64);  // a direct call: not elidable like a new-expression
  ::operator delete(p);
  EXPECT_EQ(t_allocations - before, 1u);
}

TEST(L1AllocationTest, MissIsSeenAllocating) {
  // Proves the measurement below would see an allocation on the same call path.
  LAYERCACHE_SKIP_WITHOUT_COUNTING();
  cache_stack cache({memory_layer::create({})});
  const std::uint64_t before = t_allocations;
  auto v = cache.get<std::string>("fresh-key", [] { return std::string(100, 'x'); });
  EXPECT_GT(t_allocations - before, 0u);
  EXPECT_NE(v, nullptr);
}

TEST(L1AllocationTest, GetHitsOfAnExistingKeyAllocateNothing) {
  LAYERCACHE_SKIP_WITHOUT_COUNTING();
  cache_stack cache({memory_layer::create({})});
  ASSERT_TRUE(cache.set<std::string>("user:42", std::string(200, 'x')).ok());
  auto fetch = [] { return std::string("never"); };
  for (int i = 0; i < warm_up; ++i) (void)cache.get<std::string>("user:42", fetch);

  int found = 0;
  const std::uint64_t before = t_allocations;
  for (int i = 0; i < measured; ++i) {
    auto v = cache.get<std::string>("user:42", fetch);
    found += v != nullptr ? 1 : 0;
  }
  const std::uint64_t allocations = t_allocations - before;
  EXPECT_EQ(allocations, 0u) << "allocations across " << measured << " L1 hits";
  EXPECT_EQ(found, measured);
  EXPECT_EQ(cache.metrics().fetches, 0u);
}

TEST(L1AllocationTest, HitsOverAByteLayerAndNegativeHitsAllocateNothing) {
  LAYERCACHE_SKIP_WITHOUT_COUNTING();
  auto clock = std::make_shared<test::fake_clock>();
  cache_stack cache(
      {memory_layer::create({.clock = clock}), test::test_byte_layer::create({.clock = clock})},
      {.clock = clock});
  ASSERT_TRUE(cache.set<int>("n:1", 1).ok());
  ASSERT_EQ(cache.get<int>("absent", [] { return std::optional<int>{}; }), nullptr);
  auto fetch = [] { return 0; };
  for (int i = 0; i < warm_up; ++i) {
    (void)cache.get<int>("n:1", fetch);
    (void)cache.get<int>("absent", fetch);
    (void)cache.get_if_present<int>("n:1");
  }

  int values = 0, nulls = 0;
  const std::uint64_t before = t_allocations;
  for (int i = 0; i < measured; ++i) {
    values += cache.get<int>("n:1", fetch) != nullptr ? 1 : 0;
    nulls += cache.get<int>("absent", fetch) == nullptr ? 1 : 0;
    values += cache.get_if_present<int>("n:1") != nullptr ? 1 : 0;
  }
  const std::uint64_t allocations = t_allocations - before;
  EXPECT_EQ(allocations, 0u);
  EXPECT_EQ(values, 2 * measured);
  EXPECT_EQ(nulls, measured);
}

}  // namespace
}  // namespace layercache
