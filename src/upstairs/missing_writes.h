// Which writes one downstairs may lack, per extent: the bookkeeping behind the flush
// quorum (docs/fault-model.md). A write is missing on a downstairs that skipped it, failed
// it, or may have lost it with a fault before a flush made it durable there; only a live
// repair of the extent (a copy from, or a match with, a replica holding every write before
// the extent's close) makes it whole again. A flush done there counts toward the quorum
// only if no write before it is missing. Plain data owned by the upstairs core (one per
// downstairs); no thread of its own.
#pragma once

#include <map>
#include <optional>
#include <set>

#include "common/ids.h"

namespace cru::upstairs {

class MissingWrites {
 public:
  // The write `job`, touching extents first..last (inclusive), may be missing here.
  void add(ExtentId first, ExtentId last, JobId job);
  // Every extent may miss writes from `job` on (which ones is no longer known).
  void add_all(JobId job, uint32_t extent_count);
  // A live repair made extent `e` whole: it holds every write before the extent's close,
  // and every later write to it was sent here. Repairs go from extent 0 upwards.
  void repaired(ExtentId e);
  // The oldest write that may be missing here; nullopt: none.
  std::optional<JobId> oldest() const;
  bool empty() const { return !oldest().has_value(); }
  void clear();

 private:
  std::map<ExtentId, JobId> extents_;  // the oldest missing write per extent
  std::multiset<JobId> oldest_;        // the values of extents_, smallest first
  // Every extent from all_from_ on may miss writes from all_job_ on (add_all).
  std::optional<JobId> all_job_;
  ExtentId all_from_;
  uint32_t extent_count_ = 0;
};

}  // namespace cru::upstairs
