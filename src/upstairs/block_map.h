// Dependency tracking over block ranges. For each range of blocks it remembers the last
// "blocking" job (a write, discard, flush, barrier or live-repair reopen) and the reads
// issued since. A new job depends on the minimal frontier of earlier jobs it must follow:
//   - a blocking job over R depends on the reads since the last blocking job in each
//     overlapping range if there are any, else on that blocking job; it then owns R;
//   - a read over R depends on the blocking job of each overlapping range, and joins it.
// A flush or barrier is a blocking job over every block, so every later job follows it.
// Owned by the upstairs core; one thread.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "common/ids.h"

namespace cru::upstairs {

struct BlockRange {
  uint64_t start = 0;
  uint64_t count = 0;
  uint64_t end() const { return start + count; }
  bool overlaps(const BlockRange& o) const { return start < o.end() && o.start < end(); }
};

class BlockMap {
 public:
  // Dependencies of a blocking job over `range`; the job then owns the range.
  std::vector<JobId> add_blocking(JobId job, BlockRange range);
  // Dependencies of a read over `range`; the read is then remembered there.
  std::vector<JobId> add_read(JobId job, BlockRange range);
  // Forgets every reference to jobs <= `through` (they were retired).
  void retire_through(JobId through);
  // Number of ranges tracked (for tests: stays small after a flush).
  size_t ranges() const { return ranges_.size(); }

 private:
  struct Entry {
    uint64_t end = 0;
    std::optional<JobId> blocking;
    std::vector<JobId> reads;  // since `blocking`, in id order
    bool operator==(const Entry& o) const { return blocking == o.blocking && reads == o.reads; }
  };
  // Splits entries so that `at` is an entry boundary (no-op if it already is).
  void split_at(uint64_t at);
  // Merges equal neighbours around [start, end).
  void merge_around(uint64_t start, uint64_t end);

  // Non-overlapping ranges keyed by start; gaps are blocks no live job touched.
  std::map<uint64_t, Entry> ranges_;
};

}  // namespace cru::upstairs
