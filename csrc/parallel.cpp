#include "parallel.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace ssondo {
namespace {

int default_threads() {
  const unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

std::atomic<int> g_num_threads{0};  // 0 = default

}  // namespace

int get_num_threads() {
  const int n = g_num_threads.load();
  return n > 0 ? n : default_threads();
}

void set_num_threads(int n) { g_num_threads.store(n > 0 ? n : 0); }

void parallel_for(std::size_t n, std::size_t min_chunk,
                  const std::function<void(std::size_t, std::size_t)>& fn) {
  if (n == 0) return;
  min_chunk = std::max<std::size_t>(min_chunk, 1);
  const std::size_t max_workers = (n + min_chunk - 1) / min_chunk;
  const std::size_t workers =
      std::min<std::size_t>(static_cast<std::size_t>(get_num_threads()), max_workers);
  if (workers <= 1) {
    fn(0, n);
    return;
  }
  const std::size_t chunk = (n + workers - 1) / workers;
  std::exception_ptr first_error;
  std::mutex error_mutex;
  auto run_chunk = [&](std::size_t w) {
    const std::size_t begin = w * chunk;
    const std::size_t end = std::min(n, begin + chunk);
    if (begin >= end) return;
    try {
      fn(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!first_error) first_error = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  for (std::size_t w = 1; w < workers; ++w) threads.emplace_back(run_chunk, w);
  run_chunk(0);
  for (auto& t : threads) t.join();
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace ssondo
