#include "upstairs/missing_writes.h"

#include <algorithm>

#include "common/assert.h"

namespace cru::upstairs {

void MissingWrites::add(ExtentId first, ExtentId last, JobId job) {
  CRU_ASSERT(first <= last, "an empty extent range");
  for (uint64_t v = first.value; v <= last.value; ++v) {
    auto [it, inserted] = extents_.try_emplace(ExtentId{static_cast<uint32_t>(v)}, job);
    if (inserted) {
      oldest_.insert(job);
    } else if (job < it->second) {
      oldest_.erase(oldest_.find(it->second));
      oldest_.insert(job);
      it->second = job;
    }
  }
}

void MissingWrites::add_all(JobId job, uint32_t extent_count) {
  all_job_ = all_job_ ? std::min(*all_job_, job) : job;
  all_from_ = ExtentId{0};
  extent_count_ = extent_count;
  if (extent_count_ == 0) all_job_.reset();
}

void MissingWrites::repaired(ExtentId e) {
  if (auto it = extents_.find(e); it != extents_.end()) {
    oldest_.erase(oldest_.find(it->second));
    extents_.erase(it);
  }
  if (all_job_ && e == all_from_) {
    all_from_ = e.next();
    if (all_from_.value >= extent_count_) all_job_.reset();
  }
}

std::optional<JobId> MissingWrites::oldest() const {
  std::optional<JobId> o = all_job_;
  if (!oldest_.empty() && (!o || *oldest_.begin() < *o)) o = *oldest_.begin();
  return o;
}

void MissingWrites::clear() {
  extents_.clear();
  oldest_.clear();
  all_job_.reset();
  all_from_ = ExtentId{0};
}

}  // namespace cru::upstairs
