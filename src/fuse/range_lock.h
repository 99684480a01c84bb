// Exclusive locks on ranges of blocks. A write holds its blocks from before it reads (for
// read-modify-write) until the volume accepted it, so concurrent writers that share a
// block never lose each other's bytes. Lock holders never take a second range, so there
// is no lock-order deadlock.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <list>
#include <mutex>

namespace cru::fuse {

class RangeLock {
 public:
  struct Range {
    uint64_t first = 0;
    uint64_t end = 0;  // exclusive
  };
  using Token = std::list<Range>::iterator;

  // Blocks until no held range overlaps [first, end), then holds it.
  Token lock(uint64_t first, uint64_t end);
  // Releases a range from lock(); may be called from any thread.
  void unlock(Token t);

 private:
  std::mutex mu_;
  std::condition_variable released_;
  std::list<Range> held_;  // few at a time: one per FUSE worker thread
};

}  // namespace cru::fuse
