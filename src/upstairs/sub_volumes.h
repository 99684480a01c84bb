// A volume made of sub-volumes (issue 12): each a three-replica region set with its own
// upstairs core (a Volume: its own faults, reconciliation and live repair), the volume
// their concatenation or their stripes (VolumeLayout). Every sub-volume runs on one shared
// io thread, so, as with a single Volume, every IO call and every completion runs on that
// thread and the FUSE session is served there (watch). A guest IO spanning sub-volumes is
// split; a flush goes to all and succeeds only if every one reached its quorum. Growing
// appends a sub-volume while the volume serves IO (concatenation only).
//
// Threads: read/write/discard/flush from the io thread (the Disk calls them from the FUSE
// handlers); activate, deactivate, snapshot, replace_sync and grow from any other thread.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "upstairs/block_device.h"
#include "upstairs/volume.h"
#include "upstairs/volume_layout.h"

namespace cru::upstairs {

using Targets = std::array<std::string, kClientCount>;

struct SubVolumesOptions {
  std::vector<Targets> targets;  // one entry per sub-volume, in volume order
  uint64_t stripe_bytes = 0;     // 0: concatenated; otherwise a multiple of the block size
  // read_only, key, limits and tls for every sub-volume (its targets and io_thread unused).
  VolumeOptions common;
};

class SubVolumes : public BlockDevice {
 public:
  // Creates the sub-volumes (nothing connects before activate).
  explicit SubVolumes(SubVolumesOptions options);
  // Closes every connection (deactivate first to flush). Not from the io thread.
  ~SubVolumes() override;
  SubVolumes(const SubVolumes&) = delete;
  SubVolumes& operator=(const SubVolumes&) = delete;

  // Activates every sub-volume at once (each within `timeout`), then checks that they share
  // a block size and fit the layout (striping: equal sizes, whole stripes). Errors name
  // the sub-volume and its targets when there are several.
  Status activate(std::optional<Generation> generation, std::chrono::milliseconds timeout);
  // Flushes and disconnects every sub-volume; the first error is reported.
  Status deactivate(std::chrono::milliseconds timeout);

  uint32_t block_size() const override { return block_size_.load(); }
  uint64_t total_blocks() const override { return total_blocks_.load(); }
  size_t sub_volume_count() const { return count_.load(); }
  uint64_t stripe_bytes() const { return options_.stripe_bytes; }

  void read(BlockIndex start, uint64_t count, ReadFn done) override;
  void read_masked(BlockIndex start, uint64_t count, MaskedReadFn done) override;
  void write(BlockIndex start, std::span<const std::byte> data, DoneFn done) override;
  void write_unwritten(BlockIndex start, std::span<const std::byte> data, DoneFn done) override;
  void discard(BlockIndex start, uint64_t count, DoneFn done) override;
  void flush(DoneFn done) override;
  void watch(int fd, std::function<void()> on_readable) override;
  void unwatch() override;

  // The io thread every sub-volume runs on (a read-only parent's volume shares it, so its
  // completions run where the volume's do).
  std::shared_ptr<IoThread> io_thread() const { return io_; }

  // Each sub-volume's state, in volume order.
  std::vector<Snapshot> snapshot() const;
  // The targets of each sub-volume, in volume order.
  std::vector<Targets> targets() const;
  // Replaces `old_target` in whichever sub-volume has it (live repair follows there).
  Status replace_sync(const std::string& old_target, const std::string& new_target);
  // Takes snapshot `name` in every sub-volume at once (Volume::snapshot_flush); fails if
  // any sub-volume's does. Not from the io thread.
  Status snapshot_flush_sync(const std::string& name);

  // Runs on the io thread right after a grow took effect (the new size is total_blocks()),
  // before any IO can reach the new blocks. Set before serving.
  void on_grown(std::function<void()> fn) { grown_ = std::move(fn); }
  // Appends one sub-volume on `targets`, activated first (within `timeout`, with
  // `generation` as activate takes it); returns the new size in blocks. Refused for a
  // striped volume, a block size unlike the others', or targets already in use. The
  // volume serves IO throughout; one grow at a time.
  Result<uint64_t> grow(const Targets& targets, std::optional<Generation> generation,
                        std::chrono::milliseconds timeout);

 private:
  VolumeOptions options_for(const Targets& targets) const;
  // The sub-volumes as the io thread has them (waits for it unless on it).
  std::vector<std::shared_ptr<Volume>> current() const;
  std::string describe(size_t i, const Targets& t) const;
  void write_split(BlockIndex start, std::span<const std::byte> data, bool only_unwritten,
                   DoneFn done);
  // read() and read_masked(): `masked` asks the sub-volumes for the written mask.
  void read_split(BlockIndex start, uint64_t count, bool masked, MaskedReadFn done);

  SubVolumesOptions options_;
  // Declared before the volumes: the thread outlives them.
  std::shared_ptr<IoThread> io_;
  // Changed only on the io thread once activated (grow); read there by every IO.
  std::vector<std::shared_ptr<Volume>> volumes_;
  std::vector<Targets> targets_;
  std::optional<VolumeLayout> layout_;
  std::function<void()> grown_;
  std::atomic<uint32_t> block_size_{0};
  std::atomic<uint64_t> total_blocks_{0};
  std::atomic<size_t> count_{0};
};

}  // namespace cru::upstairs
