// A volume over a read-only parent (issue 12; docs/volumes.md "Read-only parent"): the
// guest's block device is the volume (SubVolumes) with the parent showing through every
// block the volume never wrote, and a scrub thread copying the parent into the volume with
// WriteUnwritten until the parent is no longer needed. No asio and no Volume here (so unit
// tests drive it over an in-memory device); the three-downstairs parent is
// targets_parent.h, the file parent fuse/file_parent.h.
//
// Threads: the BlockDevice calls run on the volume's io thread (the Disk calls them from
// the FUSE handlers), as do the parent's read completions. The scrub runs on a thread of
// its own and reaches the volume through `post` (onto the io thread). start_scrub,
// stop_scrub, scrub_status and the destructor are for any other thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "common/units.h"
#include "upstairs/block_device.h"
#include "upstairs/scrub_plan.h"

namespace cru::upstairs {

// Where a parent's blocks come from: an image file (fuse/file_parent.h) or three read-only
// downstairs (targets_parent.h). Block numbers are the volume's; reads stay within
// size_bytes().
class ParentSource {
 public:
  virtual ~ParentSource() = default;
  // "file PATH" or "targets A, B, C": for logs, status, and the state file (a volume's
  // parent never changes).
  virtual std::string describe() const = 0;
  virtual uint64_t size_bytes() const = 0;
  // 0 for a file (any volume block size that divides its size will do).
  virtual uint32_t block_size() const = 0;
  // From the volume's io thread; `done` runs on it.
  virtual void read(BlockIndex start, uint64_t count, BlockDevice::ReadFn done) = 0;
  // Blocks; never from the io thread (the scrub thread).
  virtual Result<Bytes> read_sync(BlockIndex start, uint64_t count) = 0;
};

struct ScrubOptions {
  uint64_t rate_bytes_per_s = 16 * kMiB;
  uint64_t chunk_bytes = 1 * kMiB;  // at most one job (upstairs::kMaxJobBytes)
  // The first parent block not yet known to be in the volume (the state file's record).
  uint64_t resume_at = 0;
  // For status: where progress is recorded.
  std::string state_file;
  // Records durably that every parent block below `next_block` is in the volume (flushed
  // already), and with `complete` that all are. Called on the scrub thread.
  std::function<Status(uint64_t next_block, bool complete)> record;
};

class ParentedVolume : public BlockDevice {
 public:
  // Runs a function on the volume's io thread, after what was posted before it.
  using Post = std::function<void(std::function<void()>)>;
  // `volume` is active and outlives this; `parent` covers the volume's first
  // parent->size_bytes() / block_size blocks (check_parent_geometry passed).
  ParentedVolume(BlockDevice& volume, Post post, std::unique_ptr<ParentSource> parent,
                 ScrubOptions options);
  // Stops the scrub (stop_scrub). Not from the io thread.
  ~ParentedVolume() override;
  ParentedVolume(const ParentedVolume&) = delete;
  ParentedVolume& operator=(const ParentedVolume&) = delete;

  uint32_t block_size() const override { return volume_.block_size(); }
  uint64_t total_blocks() const override { return volume_.total_blocks(); }

  void read(BlockIndex start, uint64_t count, ReadFn done) override;
  // The volume's own mask (the parent's blocks count as unwritten).
  void read_masked(BlockIndex start, uint64_t count, MaskedReadFn done) override;
  void write(BlockIndex start, std::span<const std::byte> data, DoneFn done) override;
  void write_unwritten(BlockIndex start, std::span<const std::byte> data, DoneFn done) override;
  // While the parent is attached, the parent's blocks are overwritten with zeros instead of
  // discarded: a discarded block is unwritten, and the parent (and later the scrub) would
  // show through it. Past the parent's end, and once the scrub completed, a real discard.
  void discard(BlockIndex start, uint64_t count, DoneFn done) override;
  void flush(DoneFn done) override;
  void watch(int fd, std::function<void()> on_readable) override;
  void unwatch() override;

  // Starts copying the parent into the volume (at most once). Not for a read-only volume.
  void start_scrub();
  // Ends the scrub: the chunk in hand finishes, what was copied is flushed and recorded.
  void stop_scrub();
  ScrubStatus scrub_status() const;
  // Whether reads still consult the parent (false once the scrub completed).
  bool parent_needed() const { return attached_.load(); }

 private:
  void scrub_loop();
  // Runs `call(done)` on the io thread and waits for `done`. Scrub thread only.
  Status on_io(const std::function<void(DoneFn)>& call);
  // Flushes the volume and records the plan's progress; marks the parent unneeded at the end.
  Status checkpoint(ScrubPlan& plan);
  // Waits until `t` or a stop; false on a stop.
  bool wait_until(TimePoint t);
  void guest_started() { guest_in_flight_.fetch_add(1); }
  void guest_ended() { guest_in_flight_.fetch_sub(1); }
  void set_error(const std::string& e);

  BlockDevice& volume_;
  const Post post_;
  std::unique_ptr<ParentSource> parent_;
  const ScrubOptions options_;
  const uint64_t parent_blocks_;
  Bytes zeros_;  // one job of zeros, shared by every zero-fill
  // Reads consult the parent, discards write zeros (cleared on the io thread, read there;
  // atomic for status from other threads).
  std::atomic<bool> attached_{true};
  std::atomic<int> guest_in_flight_{0};

  mutable std::mutex mu_;  // guards stop_, status_ and the wait below
  std::condition_variable wake_;
  bool stop_ = false;
  ScrubStatus status_;
  TimePoint scrub_started_{};
  std::thread scrub_;
};

}  // namespace cru::upstairs
