// What the FUSE disk needs from a volume: block IO with completions, a flush, and a way
// to serve a file descriptor on the thread the completions run on. A Volume (one
// three-replica region set) and SubVolumes (several, concatenated or striped) both are
// one. Offsets and lengths are in blocks; data lengths must be whole blocks.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "common/bytes.h"
#include "common/ids.h"
#include "common/result.h"

namespace cru::upstairs {

class BlockDevice {
 public:
  using DoneFn = std::function<void(Status)>;
  using ReadFn = std::function<void(Result<Bytes>)>;

  virtual ~BlockDevice() = default;

  // Geometry, known once active.
  virtual uint32_t block_size() const = 0;
  virtual uint64_t total_blocks() const = 0;
  uint64_t size_bytes() const { return total_blocks() * block_size(); }

  // Completions run on the device's io thread and must not block. `data` is borrowed for
  // the call only.
  virtual void read(BlockIndex start, uint64_t count, ReadFn done) = 0;
  virtual void write(BlockIndex start, std::span<const std::byte> data, DoneFn done) = 0;
  virtual void discard(BlockIndex start, uint64_t count, DoneFn done) = 0;
  // Every write acknowledged before the call is durable on at least two replicas.
  virtual void flush(DoneFn done) = 0;

  // `on_readable` runs on the io thread whenever the non-blocking `fd` is readable (see
  // Volume::watch); unwatch() ends that, not from the io thread.
  virtual void watch(int fd, std::function<void()> on_readable) = 0;
  virtual void unwatch() = 0;
};

}  // namespace cru::upstairs
