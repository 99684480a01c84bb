// disk.img's bytes over the replicated volume: byte offsets and lengths in, block IO out.
// Unaligned writes and the unaligned edges of a discard are read-modify-write under a
// range lock. Independent of FUSE so the rules live in one testable place. Every call may
// come from any thread; `done` may run on the caller's thread (early errors) or the
// volume's io thread, and must not block.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <span>

#include "common/bytes.h"
#include "common/result.h"
#include "fuse/range_lock.h"
#include "upstairs/volume.h"

namespace cru::fuse {

class Disk {
 public:
  using DoneFn = std::function<void(Status)>;
  using ReadFn = std::function<void(Result<Bytes>)>;

  explicit Disk(upstairs::Volume& volume);

  uint64_t size_bytes() const { return size_bytes_; }
  uint32_t block_size() const { return block_size_; }

  // Reads [offset, offset + len) clipped to the end of the disk (short or empty at EOF).
  void read(uint64_t offset, uint64_t len, ReadFn done);
  // Writes all of `data` or nothing: a range reaching past the end is refused (ENOSPC, as
  // a block device does). May block the caller for the read of a read-modify-write.
  void write(uint64_t offset, std::span<const std::byte> data, DoneFn done);
  // The range reads as zeros afterwards; whole blocks are discarded (space released),
  // partial ones zeroed. Blocks the caller until done.
  Status zero_range(uint64_t offset, uint64_t len);
  // Makes every acknowledged write durable on at least two replicas.
  void flush(DoneFn done);
  // Whether anything was written since the last flush began (close needs no flush if not).
  bool dirty() const { return dirty_.load(std::memory_order_acquire); }

 private:
  Status check_range(uint64_t offset, uint64_t len) const;
  Status write_partial(uint64_t offset, std::span<const std::byte> data);

  upstairs::Volume& volume_;
  const uint32_t block_size_;
  const uint64_t size_bytes_;
  RangeLock locks_;
  std::atomic<bool> dirty_{false};
};

}  // namespace cru::fuse
