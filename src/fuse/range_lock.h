// Exclusive locks on ranges of blocks, without blocking: a write holds its blocks from
// before it reads (for read-modify-write) until the volume accepted it, so concurrent
// writers that share a block never lose each other's bytes. A request that overlaps a held
// range, or an earlier request still waiting, waits its turn (first come, first served, so
// no writer starves) and is granted by the unlock that frees it. Holders never take a
// second range, so there is no lock-order deadlock. One thread (the volume's io thread).
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <optional>

namespace cru::fuse {

class RangeLock {
 public:
  struct Range {
    uint64_t first = 0;
    uint64_t end = 0;  // exclusive
    bool overlaps(const Range& o) const { return first < o.end && o.first < end; }
  };
  using Token = std::list<Range>::iterator;
  using Granted = std::function<void(Token)>;

  // Holds [first, end) now if nothing held or waiting overlaps it.
  std::optional<Token> try_lock(uint64_t first, uint64_t end);
  // Runs `granted` with the held range once nothing held or waiting before it overlaps
  // (right away if nothing does).
  void lock(uint64_t first, uint64_t end, Granted granted);
  // Releases a range; grants the waiters that can now go, in order, before returning.
  void unlock(Token t);

  size_t waiting() const { return waiters_.size(); }

 private:
  struct Waiter {
    Range range;
    Granted granted;
  };
  bool free_for(const Range& r, std::list<Waiter>::const_iterator before) const;
  // Grants the first waiter that may go now; false if none may.
  bool grant_one();

  std::list<Range> held_;  // few at a time: the requests the kernel has in flight
  std::list<Waiter> waiters_;
};

}  // namespace cru::fuse
