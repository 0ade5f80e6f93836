// Thread pool-free parallel loops for the core. The thread count is a process-wide setting
// (set_num_threads), never read from the environment at load time.
#pragma once

#include <cstddef>
#include <functional>

namespace ssondo {

// Number of threads parallel_for may use (>= 1). Defaults to the hardware concurrency.
int get_num_threads();
// Sets the thread count; n <= 0 restores the default (hardware concurrency).
void set_num_threads(int n);

// Calls fn(begin, end) on disjoint chunks covering [0, n), on up to get_num_threads() threads.
// Chunks are contiguous and at least min_chunk long; the calling thread does one chunk itself.
// The first exception thrown by any chunk is rethrown after all threads have joined.
void parallel_for(std::size_t n, std::size_t min_chunk,
                  const std::function<void(std::size_t, std::size_t)>& fn);

}  // namespace ssondo
