#include "fuse/range_lock.h"

#include <algorithm>

#include "common/assert.h"

namespace cru::fuse {

bool RangeLock::free_for(const Range& r, std::list<Waiter>::const_iterator before) const {
  auto overlaps = [&](const Range& o) { return r.overlaps(o); };
  return std::none_of(held_.begin(), held_.end(), overlaps) &&
         std::none_of(waiters_.begin(), before, [&](const Waiter& w) { return overlaps(w.range); });
}

std::optional<RangeLock::Token> RangeLock::try_lock(uint64_t first, uint64_t end) {
  CRU_ASSERT(first < end);
  Range r{first, end};
  if (!free_for(r, waiters_.end())) return std::nullopt;
  held_.push_front(r);
  return held_.begin();
}

void RangeLock::lock(uint64_t first, uint64_t end, Granted granted) {
  if (auto t = try_lock(first, end)) return granted(*t);
  waiters_.push_back(Waiter{Range{first, end}, std::move(granted)});
}

void RangeLock::unlock(Token t) {
  held_.erase(t);
  // Each grant may lock or unlock again (a holder that finishes at once), so look afresh
  // after every one.
  while (grant_one()) {
  }
}

bool RangeLock::grant_one() {
  for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
    if (!free_for(it->range, it)) continue;
    held_.push_front(it->range);
    Granted granted = std::move(it->granted);
    waiters_.erase(it);
    granted(held_.begin());
    return true;
  }
  return false;
}

}  // namespace cru::fuse
