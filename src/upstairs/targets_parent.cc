#include "upstairs/targets_parent.h"

#include <fmt/format.h>

namespace cru::upstairs {

Result<std::unique_ptr<TargetsParent>> TargetsParent::open(VolumeOptions options,
                                                           std::chrono::milliseconds timeout) {
  options.read_only = true;
  Targets t = options.targets;
  auto v = std::make_unique<Volume>(std::move(options));
  if (Status s = v->activate(std::nullopt, timeout); !s)
    return fail(s.error().code, fmt::format("volume.read_only_parent.targets: the parent did not "
                                            "activate: {}",
                                            s.error().message));
  return std::unique_ptr<TargetsParent>(new TargetsParent(std::move(t), std::move(v)));
}

TargetsParent::~TargetsParent() {
  // Read-only: nothing to flush; the connections close as the volume goes.
  static_cast<void>(volume_->deactivate(std::chrono::seconds(5)));
}

std::string TargetsParent::describe() const {
  return fmt::format("targets {}, {}, {}", targets_[0], targets_[1], targets_[2]);
}

void TargetsParent::read(BlockIndex start, uint64_t count, BlockDevice::ReadFn done) {
  volume_->read(start, count, std::move(done));
}

Result<Bytes> TargetsParent::read_sync(BlockIndex start, uint64_t count) {
  return volume_->read_sync(start, count);
}

}  // namespace cru::upstairs
