#include "support/delay_queue.h"

#include <algorithm>
#include <utility>

#include "common/assert.h"

namespace cru::test {

DelayQueue::DelayQueue(size_t bytes_max, Micros delay, Micros jitter, uint64_t seed)
    : bytes_max_(bytes_max), delay_(delay), jitter_(jitter), rng_(seed) {
  CRU_ASSERT(bytes_max > 0, "a delay queue must hold at least one byte");
  CRU_ASSERT(jitter >= Micros(0) && jitter <= delay, "jitter must lie within [0, delay]");
}

DelayQueue::Micros DelayQueue::draw_delay() {
  if (jitter_ == Micros(0)) return delay_;
  std::uniform_int_distribution<int64_t> d(-jitter_.count(), jitter_.count());
  return delay_ + Micros(d(rng_));
}

DelayQueue::TimePoint DelayQueue::push(std::vector<std::byte> bytes, TimePoint now, bool delay_on) {
  CRU_ASSERT(!bytes.empty() && bytes.size() <= space(), "push beyond the queue's space");
  const TimePoint due = std::max(delay_on ? now + draw_delay() : now, last_due_);
  last_due_ = due;
  bytes_ += bytes.size();
  high_water_ = std::max(high_water_, bytes_);
  chunks_.push_back(Chunk{std::move(bytes), due});
  return due;
}

void DelayQueue::pop() {
  CRU_ASSERT(!chunks_.empty(), "pop from an empty delay queue");
  bytes_ -= chunks_.front().bytes.size();
  chunks_.pop_front();
}

}  // namespace cru::test
