// disk.img's bytes over the replicated volume: byte offsets and lengths in, block IO out.
// Unaligned writes and the unaligned edges of a zeroed range are read-modify-write under
// a range lock. Independent of FUSE so the rules live in one testable place. Nothing here
// blocks: every call takes a completion. All calls, and all completions, run on the
// volume's io thread (one thread for all its sub-volumes) (the FUSE session is served there, see
// Volume::watch); a completion may also run before the call returns (early errors, or nothing to
// do).
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "common/bytes.h"
#include "common/result.h"
#include "fuse/range_lock.h"
#include "upstairs/block_device.h"

namespace cru::fuse {

class Disk {
 public:
  using DoneFn = std::function<void(Status)>;
  using ReadFn = std::function<void(Result<Bytes>)>;

  explicit Disk(upstairs::BlockDevice& volume);

  uint64_t size_bytes() const { return size_bytes_; }
  uint32_t block_size() const { return block_size_; }

  // Reads [offset, offset + len) clipped to the end of the disk (short or empty at EOF).
  void read(uint64_t offset, uint64_t len, ReadFn done);
  // Writes all of `data` or nothing: a range reaching past the end is refused (ENOSPC, as
  // a block device does). `data` is borrowed for the call only.
  void write(uint64_t offset, std::span<const std::byte> data, DoneFn done);
  // The range reads as zeros afterwards; whole blocks are discarded (space released),
  // partial ones zeroed.
  void zero_range(uint64_t offset, uint64_t len, DoneFn done);
  // Makes every acknowledged write durable on at least two replicas.
  void flush(DoneFn done);
  // Takes the volume's new size after it grew (io thread; the volume only grows).
  void grown();
  // Whether anything was written since the last flush began (close needs no flush if not).
  bool dirty() const { return dirty_; }

 private:
  Status check_range(uint64_t offset, uint64_t len) const;
  // Holds the blocks [offset, offset + len) touch, then runs `body` with a function that
  // releases them and answers `done`.
  void locked(uint64_t offset, uint64_t len, DoneFn done,
              std::function<void(DoneFn release_and_done)> body);
  // Read the blocks the range touches, patch in `data`, write them back; the caller holds
  // the blocks. `data` must stay valid until `done`.
  void patch(uint64_t offset, Bytes data, DoneFn done);

  upstairs::BlockDevice& volume_;
  const uint32_t block_size_;
  uint64_t size_bytes_;
  RangeLock locks_;
  bool dirty_ = false;
};

}  // namespace cru::fuse
