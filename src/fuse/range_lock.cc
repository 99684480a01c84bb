#include "fuse/range_lock.h"

#include <algorithm>

#include "common/assert.h"

namespace cru::fuse {

RangeLock::Token RangeLock::lock(uint64_t first, uint64_t end) {
  CRU_ASSERT(first < end);
  std::unique_lock lk(mu_);
  released_.wait(lk, [&] {
    return std::none_of(held_.begin(), held_.end(),
                        [&](const Range& r) { return r.first < end && first < r.end; });
  });
  held_.push_front(Range{first, end});
  return held_.begin();
}

void RangeLock::unlock(Token t) {
  {
    std::lock_guard lk(mu_);
    held_.erase(t);
  }
  released_.notify_all();
}

}  // namespace cru::fuse
