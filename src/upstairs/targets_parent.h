// A read-only parent served by three read-only downstairs (volume.read_only_parent.targets),
// typically a snapshot (`crucible-downstairs run --snapshot NAME`): driven as a Volume of
// its own, read-only, on the volume's io thread (VolumeOptions::io_thread), so its reads
// complete where the volume's do.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "upstairs/read_only_parent.h"
#include "upstairs/sub_volumes.h"
#include "upstairs/volume.h"

namespace cru::upstairs {

class TargetsParent : public ParentSource {
 public:
  // Activates read-only (a generation above any the downstairs saw) within `timeout`.
  // `options.read_only` is forced on; its io_thread should be the volume's.
  static Result<std::unique_ptr<TargetsParent>> open(VolumeOptions options,
                                                     std::chrono::milliseconds timeout);
  // Deactivates (read-only: nothing to flush) and closes. Not from the io thread.
  ~TargetsParent() override;

  std::string describe() const override;
  uint64_t size_bytes() const override { return volume_->size_bytes(); }
  uint32_t block_size() const override { return volume_->block_size(); }
  void read(BlockIndex start, uint64_t count, BlockDevice::ReadFn done) override;
  Result<Bytes> read_sync(BlockIndex start, uint64_t count) override;

 private:
  TargetsParent(Targets targets, std::unique_ptr<Volume> v)
      : targets_(std::move(targets)), volume_(std::move(v)) {}
  Targets targets_;
  std::unique_ptr<Volume> volume_;
};

}  // namespace cru::upstairs
