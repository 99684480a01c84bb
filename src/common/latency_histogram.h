// A latency histogram with fixed buckets and no dependencies, for cores that keep their own
// statistics (the metrics shells export it). One thread records; any thread may read: each
// field is a relaxed atomic, so a reader sees every count eventually and never a torn
// value, though the fields of one read need not be from the same instant (a scrape may
// show a count one ahead of its sum), which metrics tolerate.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>

namespace cru {

class LatencyHistogram {
 public:
  // Upper bounds: 50 us (a page-cache write) to 10 s (a stalled disk); slower ones land
  // in the implicit +Inf bucket. In nanoseconds, so recording compares integers.
  static constexpr std::array<int64_t, 16> kBoundsNs = {
      50'000,      100'000,       250'000,       500'000,       1'000'000,   2'500'000,
      5'000'000,   10'000'000,    25'000'000,    50'000'000,    100'000'000, 250'000'000,
      500'000'000, 1'000'000'000, 2'500'000'000, 10'000'000'000};
  static constexpr size_t kBuckets = kBoundsNs.size() + 1;  // the last is +Inf

  // Bucket i's upper bound in seconds (i < kBoundsNs.size()).
  static double bound_seconds(size_t i) { return static_cast<double>(kBoundsNs[i]) / 1e9; }

  void record(std::chrono::nanoseconds d) {
    const int64_t ns = d.count() < 0 ? 0 : d.count();
    size_t i = 0;
    while (i < kBoundsNs.size() && ns > kBoundsNs[i]) ++i;
    counts_[i].fetch_add(1, std::memory_order_relaxed);
    sum_ns_.fetch_add(static_cast<uint64_t>(ns), std::memory_order_relaxed);
  }

  // Samples in bucket i alone (not cumulative); i == kBuckets - 1 is +Inf.
  uint64_t bucket(size_t i) const { return counts_[i].load(std::memory_order_relaxed); }
  double sum_seconds() const {
    return static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9;
  }

 private:
  std::array<std::atomic<uint64_t>, kBuckets> counts_{};
  std::atomic<uint64_t> sum_ns_{0};
};

}  // namespace cru
