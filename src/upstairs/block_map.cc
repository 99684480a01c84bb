#include "upstairs/block_map.h"

#include <algorithm>

#include "common/assert.h"

namespace cru::upstairs {

namespace {
// Sorted, each id once. Collected with duplicates first: a flush or barrier spans every
// range, and one linear search per id made that quadratic in the reads since the last one.
std::vector<JobId> sorted_unique(std::vector<JobId> ids) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}
}  // namespace

void BlockMap::split_at(uint64_t at) {
  auto it = ranges_.upper_bound(at);
  if (it == ranges_.begin()) return;
  --it;
  if (it->first == at || it->second.end <= at) return;
  Entry right = it->second;
  it->second.end = at;
  ranges_.emplace(at, std::move(right));
}

void BlockMap::merge_around(uint64_t start, uint64_t end) {
  auto it = ranges_.lower_bound(start);
  if (it != ranges_.begin()) --it;
  while (it != ranges_.end() && it->first <= end) {
    auto next = std::next(it);
    if (next == ranges_.end()) break;
    if (it->second.end == next->first && it->second == next->second) {
      it->second.end = next->second.end;
      ranges_.erase(next);
    } else {
      it = next;
    }
  }
}

std::vector<JobId> BlockMap::add_blocking(JobId job, BlockRange range) {
  CRU_ASSERT(range.count > 0);
  std::vector<JobId> deps;
  split_at(range.start);
  split_at(range.end());
  for (auto it = ranges_.lower_bound(range.start);
       it != ranges_.end() && it->first < range.end();) {
    const Entry& e = it->second;
    if (!e.reads.empty()) {
      deps.insert(deps.end(), e.reads.begin(), e.reads.end());
    } else if (e.blocking) {
      deps.push_back(*e.blocking);
    }
    it = ranges_.erase(it);
  }
  ranges_.emplace(range.start, Entry{range.end(), job, {}});
  merge_around(range.start, range.end());
  return sorted_unique(std::move(deps));
}

std::vector<JobId> BlockMap::add_read(JobId job, BlockRange range) {
  CRU_ASSERT(range.count > 0);
  std::vector<JobId> deps;
  split_at(range.start);
  split_at(range.end());
  // Fill gaps so the read is remembered on every block it covers.
  uint64_t cursor = range.start;
  for (auto it = ranges_.lower_bound(range.start); cursor < range.end();) {
    uint64_t gap_end = (it == ranges_.end() || it->first >= range.end()) ? range.end() : it->first;
    if (cursor < gap_end) {
      ranges_.emplace(cursor, Entry{gap_end, std::nullopt, {job}});
      cursor = gap_end;
      continue;
    }
    Entry& e = it->second;
    if (e.blocking) deps.push_back(*e.blocking);
    e.reads.push_back(job);
    cursor = e.end;
    ++it;
  }
  merge_around(range.start, range.end());
  return sorted_unique(std::move(deps));
}

void BlockMap::retire_through(JobId through) {
  for (auto it = ranges_.begin(); it != ranges_.end();) {
    Entry& e = it->second;
    if (e.blocking && *e.blocking <= through) e.blocking.reset();
    std::erase_if(e.reads, [&](JobId r) { return r <= through; });
    if (!e.blocking && e.reads.empty()) {
      it = ranges_.erase(it);
    } else {
      ++it;
    }
  }
  merge_around(0, UINT64_MAX);
}

}  // namespace cru::upstairs
