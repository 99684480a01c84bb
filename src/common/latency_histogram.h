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
  // Upper bounds in seconds: 50 us (a page-cache write) to 10 s (a stalled disk); slower
  // ones land in the implicit +Inf bucket.
  static constexpr std::array<double, 16> kBoundsSeconds = {
      0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
      0.025,   0.05,   0.1,     0.25,   0.5,   1.0,    2.5,   10.0};
  static constexpr size_t kBuckets = kBoundsSeconds.size() + 1;  // the last is +Inf

  void record(std::chrono::nanoseconds d) {
    const double s = std::chrono::duration<double>(d).count();
    size_t i = 0;
    while (i < kBoundsSeconds.size() && s > kBoundsSeconds[i]) ++i;
    counts_[i].fetch_add(1, std::memory_order_relaxed);
    sum_ns_.fetch_add(static_cast<uint64_t>(d.count() < 0 ? 0 : d.count()),
                      std::memory_order_relaxed);
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
