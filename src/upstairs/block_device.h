// What the FUSE disk needs from a volume: block IO with completions, a flush, and a way
// to serve a file descriptor on the thread the completions run on. A Volume (one
// three-replica region set), SubVolumes (several, concatenated or striped) and
// ParentedVolume (either, over a read-only parent) all are one. Offsets and lengths are in
// blocks; data lengths must be whole blocks.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "common/bytes.h"
#include "common/ids.h"
#include "common/result.h"

namespace cru::upstairs {

// Which blocks of a read were written in the volume (true) and which were never written,
// or discarded, and read as zeros (false): one entry per block, from the downstairs'
// per-block contexts (a block without one is unwritten). A read-only parent shows through
// the false ones.
using WrittenMask = std::vector<bool>;
struct MaskedRead {
  Bytes data;
  WrittenMask written;
};

class BlockDevice {
 public:
  using DoneFn = std::function<void(Status)>;
  using ReadFn = std::function<void(Result<Bytes>)>;
  using MaskedReadFn = std::function<void(Result<MaskedRead>)>;

  virtual ~BlockDevice() = default;

  // Geometry, known once active.
  virtual uint32_t block_size() const = 0;
  virtual uint64_t total_blocks() const = 0;
  uint64_t size_bytes() const { return total_blocks() * block_size(); }

  // Completions run on the device's io thread and must not block. `data` is borrowed for
  // the call only.
  virtual void read(BlockIndex start, uint64_t count, ReadFn done) = 0;
  // read() that also says which blocks were written (a parent's merge needs it; plain
  // reads do not pay for it).
  virtual void read_masked(BlockIndex start, uint64_t count, MaskedReadFn done) = 0;
  virtual void write(BlockIndex start, std::span<const std::byte> data, DoneFn done) = 0;
  // Writes only the blocks that hold nothing (never written, or discarded); blocks that
  // hold data are left alone (WriteUnwritten: a scrub never overwrites the guest's data).
  virtual void write_unwritten(BlockIndex start, std::span<const std::byte> data, DoneFn done) = 0;
  virtual void discard(BlockIndex start, uint64_t count, DoneFn done) = 0;
  // Every write acknowledged before the call is durable on at least two replicas.
  virtual void flush(DoneFn done) = 0;

  // `on_readable` runs on the io thread whenever the non-blocking `fd` is readable (see
  // Volume::watch); unwatch() ends that, not from the io thread.
  virtual void watch(int fd, std::function<void()> on_readable) = 0;
  virtual void unwatch() = 0;
};

}  // namespace cru::upstairs
