// The scrub of a read-only parent (docs/volumes.md "Read-only parent"): the pure plan the
// scrub shell (read_only_parent.h) follows. It copies the parent's blocks [0, total) into
// the volume in chunks, in order, from a resume point; it says when progress should be made
// durable (a flush, then the state file); a token bucket spaces the chunks to the rate
// limit; and it reports progress with an ETA. No IO, no clock (time comes in as arguments).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "upstairs/block_map.h"
#include "upstairs/status.h"

namespace cru::upstairs {

// Progress is made durable (a flush of the copied chunks, then the state file) at least this
// often in blocks' worth of bytes, and at least every kScrubCheckpointInterval: a restart
// repeats at most this much copying, and each checkpoint costs one flush and two fsyncs.
inline constexpr uint64_t kScrubCheckpointBytes = 32 * kMiB;
inline constexpr std::chrono::seconds kScrubCheckpointInterval{2};

class ScrubPlan {
 public:
  // `total_blocks`: the parent's size; `chunk_blocks` per copy (> 0); `resume_at`: the
  // first block not yet known to be copied (from the state file; at most total_blocks).
  ScrubPlan(uint64_t total_blocks, uint64_t chunk_blocks, uint64_t resume_at,
            uint64_t checkpoint_blocks);

  // The next chunk to copy (never past the parent's end), or nullopt when every block was.
  std::optional<BlockRange> next() const;
  // The chunk next() gave was copied (written, not yet flushed).
  void copied(const BlockRange& r);
  // Whether the copied blocks not yet durable should be made so now: enough of them, or
  // the scrub reached the end, or `since_last` is long enough with something to save.
  bool checkpoint_due(Duration since_last) const;
  // Everything below next_block() was flushed and recorded.
  void checkpointed() { durable_ = next_; }

  uint64_t total_blocks() const { return total_; }
  uint64_t next_block() const { return next_; }        // copied (maybe not durable) below this
  uint64_t durable_block() const { return durable_; }  // recorded below this
  uint64_t resumed_from() const { return resumed_; }
  bool done() const { return next_ >= total_; }

 private:
  uint64_t total_;
  uint64_t chunk_;
  uint64_t next_;
  uint64_t durable_;
  uint64_t resumed_;
  uint64_t checkpoint_;
};

// A token bucket over bytes: `rate_bytes_per_s` on average, bursts of at most `burst_bytes`.
class RateLimiter {
 public:
  RateLimiter(uint64_t rate_bytes_per_s, uint64_t burst_bytes);
  // When `bytes` may go, given it is `now`; the bytes are counted as gone then. Calls come
  // in time order.
  TimePoint reserve(uint64_t bytes, TimePoint now);

 private:
  Duration cost(uint64_t bytes) const;
  uint64_t rate_;
  Duration burst_;
  TimePoint tat_{};  // when everything reserved so far would have gone at the rate
};

// What status and metrics show of a scrub.
struct ScrubStatus {
  std::string parent;      // "file PATH" or "targets A, B, C"
  std::string state_file;  // where progress is recorded
  uint32_t block_size = 0;
  uint64_t total_blocks = 0;   // the parent's size
  uint64_t next_block = 0;     // copied below this
  uint64_t durable_block = 0;  // recorded below this (a restart resumes here)
  uint64_t resumed_from = 0;   // where this mount's scrub started
  uint64_t rate_limit_bytes_per_s = 0;
  double rate_bytes_per_s = 0;  // measured over this mount's scrub
  std::optional<double> eta_s;  // none: not running, or no rate measured yet
  bool running = false;         // copying now (false: read-only, done, or stopped)
  bool complete = false;        // every parent block is in the volume, durably recorded
  std::string last_error;       // the latest failed chunk or checkpoint, if any
};

// Seconds left at `rate_bytes_per_s` (the measured rate, capped by the limit); none if
// there is no rate yet.
std::optional<double> scrub_eta_s(uint64_t blocks_left, uint32_t block_size,
                                  double rate_bytes_per_s);

}  // namespace cru::upstairs
