// alloc_counter.hpp — counts heap allocations and live heap bytes of the benchmark binaries, by
// replacing the global operator new/delete (alloc_counter.cpp). Used to prove "0 allocations per L1
// hit" and to measure bytes per entry. Counters are per thread (allocations) and global (live
// bytes, measured with malloc_usable_size so allocator rounding is included).
#pragma once

#include <cstdint>

namespace layercache::bench {

// Allocations made by the calling thread since it started.
std::uint64_t thread_allocations() noexcept;
// Bytes currently allocated through operator new by all threads (usable sizes).
std::int64_t live_heap_bytes() noexcept;

}  // namespace layercache::bench
