// Guest operations as crucible-fuse serves them (count, bytes, errors, latency from the
// FUSE request to its reply), for the metrics endpoint. Plain data: the io thread records,
// the metrics HTTP thread reads (relaxed atomics, see common/latency_histogram.h). The
// cost per operation is one clock read at each end and a few uncontended atomic adds.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/latency_histogram.h"

namespace cru::fuse {

enum class GuestOp : uint8_t { kRead, kWrite, kFlush, kDiscard };
inline constexpr size_t kGuestOps = 4;

constexpr std::string_view guest_op_name(GuestOp op) {
  constexpr std::array<std::string_view, kGuestOps> kNames = {"read", "write", "flush", "discard"};
  return kNames[static_cast<size_t>(op)];
}

struct GuestIoStats {
  using Clock = std::chrono::steady_clock;

  struct PerOp {
    LatencyHistogram seconds;  // its count is the number of operations answered
    std::atomic<uint64_t> bytes{0};
    std::atomic<uint64_t> errors{0};
  };
  std::array<PerOp, kGuestOps> ops;

  const PerOp& operator[](GuestOp op) const { return ops[static_cast<size_t>(op)]; }
  void record(GuestOp op, Clock::time_point start, uint64_t bytes, bool ok) {
    PerOp& p = ops[static_cast<size_t>(op)];
    p.seconds.record(Clock::now() - start);
    p.bytes.fetch_add(bytes, std::memory_order_relaxed);
    if (!ok) p.errors.fetch_add(1, std::memory_order_relaxed);
  }
};

}  // namespace cru::fuse
