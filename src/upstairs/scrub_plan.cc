#include "upstairs/scrub_plan.h"

#include <algorithm>

#include "common/assert.h"

namespace cru::upstairs {

ScrubPlan::ScrubPlan(uint64_t total_blocks, uint64_t chunk_blocks, uint64_t resume_at,
                     uint64_t checkpoint_blocks)
    : total_(total_blocks),
      chunk_(chunk_blocks),
      next_(std::min(resume_at, total_blocks)),
      durable_(next_),
      resumed_(next_),
      checkpoint_(std::max<uint64_t>(1, checkpoint_blocks)) {
  CRU_ASSERT(chunk_blocks > 0, "a scrub chunk has at least one block");
}

std::optional<BlockRange> ScrubPlan::next() const {
  if (done()) return std::nullopt;
  return BlockRange{next_, std::min(chunk_, total_ - next_)};
}

void ScrubPlan::copied(const BlockRange& r) {
  CRU_ASSERT(r.start == next_ && r.count > 0 && r.end() <= total_,
             "scrub chunks are copied in order");
  next_ = r.end();
}

bool ScrubPlan::checkpoint_due(Duration since_last) const {
  if (next_ == durable_) return false;
  return done() || next_ - durable_ >= checkpoint_ || since_last >= kScrubCheckpointInterval;
}

RateLimiter::RateLimiter(uint64_t rate_bytes_per_s, uint64_t burst_bytes)
    : rate_(rate_bytes_per_s), burst_(cost(burst_bytes)) {
  CRU_ASSERT(rate_bytes_per_s > 0, "a rate limit of zero would never let anything go");
}

Duration RateLimiter::cost(uint64_t bytes) const {
  return std::chrono::duration_cast<Duration>(
      std::chrono::duration<double>(static_cast<double>(bytes) / static_cast<double>(rate_)));
}

TimePoint RateLimiter::reserve(uint64_t bytes, TimePoint now) {
  // The bytes' theoretical send time, never earlier than now: idle time earns no credit
  // beyond the burst the tolerance below allows.
  tat_ = std::max(tat_, now) + cost(bytes);
  return std::max(now, tat_ - burst_);
}

std::optional<double> scrub_eta_s(uint64_t blocks_left, uint32_t block_size,
                                  double rate_bytes_per_s) {
  if (blocks_left == 0) return 0.0;
  if (rate_bytes_per_s <= 0) return std::nullopt;
  return static_cast<double>(blocks_left) * block_size / rate_bytes_per_s;
}

}  // namespace cru::upstairs
