// What the downstairs core counts about its own work, for the metrics endpoint: plain
// data, no metrics library. The core (one thread) writes; the metrics shell reads from
// its HTTP thread. Every field is a relaxed atomic rather than a copy posted back from
// the io thread: a scrape then never waits on a busy or stuck io thread, and a single
// writer needs no more ordering than "each value whole" (a scrape may see one counter a
// job ahead of another, which metrics tolerate).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/latency_histogram.h"
#include "common/result.h"

namespace cru::downstairs {

enum class JobKind : uint8_t {
  kRead,
  kWrite,
  kWriteUnwritten,
  kDiscard,
  kFlush,
  kBarrier,
  kLiveClose,
  kLiveFlushClose,
  kLiveRepair,
  kLiveReopen,
  kLiveNoOp,
};
inline constexpr size_t kJobKinds = 11;

// The metric label: snake_case, as the protocol names the messages.
constexpr std::string_view job_kind_name(JobKind k) {
  constexpr std::array<std::string_view, kJobKinds> kNames = {
      "read",        "write",       "write_unwritten", "discard",
      "flush",       "barrier",     "live_close",      "live_flush_close",
      "live_repair", "live_reopen", "live_noop"};
  return kNames[static_cast<size_t>(k)];
}

struct CoreStats {
  using Counter = std::atomic<uint64_t>;

  struct PerKind {
    Counter jobs{0};
    // Time in the core's disk work for the job (the region call), when the core has a clock.
    LatencyHistogram disk_seconds;
  };
  std::array<PerKind, kJobKinds> kinds;
  // Failed job replies, by the code the upstairs was sent.
  std::array<Counter, kErrorCodeMax + 1> errors{};
  Counter read_bytes{0};     // block data read for read jobs
  Counter written_bytes{0};  // block data of writes that succeeded
  // Repair chunk data that crossed the network (a chunk both sides hold is not sent).
  Counter repair_sent_bytes{0};
  Counter repair_received_bytes{0};
  std::atomic<uint64_t> connections{0};  // open: upstairs, repair peers, our repair fetches

  PerKind& operator[](JobKind k) { return kinds[static_cast<size_t>(k)]; }
  const PerKind& operator[](JobKind k) const { return kinds[static_cast<size_t>(k)]; }
  static void add(Counter& c, uint64_t n) { c.fetch_add(n, std::memory_order_relaxed); }
  static uint64_t get(const Counter& c) { return c.load(std::memory_order_relaxed); }
};

}  // namespace cru::downstairs
