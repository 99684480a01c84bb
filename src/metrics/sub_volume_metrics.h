// crucible-fuse's metrics for a volume of sub-volumes: the upstairs families
// (upstairs_metrics.h) of every sub-volume, each series labelled `sub_volume` ("0", "1",
// ...), merged family by family; the guest operations once (they are the volume's). One
// sub-volume: exactly UpstairsCollector's output, no extra label.
#pragma once

#include <prometheus/collectable.h>

#include <functional>
#include <vector>

#include "fuse/io_stats.h"
#include "upstairs/status.h"

namespace cru::metrics {

class SubVolumeCollector : public prometheus::Collectable {
 public:
  // `snapshots` is called from the HTTP thread on every scrape (SubVolumes::snapshot() is
  // safe from any thread); `io` (may be null) must outlive the collector.
  SubVolumeCollector(std::function<std::vector<upstairs::Snapshot>()> snapshots,
                     const fuse::GuestIoStats* io)
      : snapshots_(std::move(snapshots)), io_(io) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

  // What Collect() returns for these snapshots, for tests.
  static std::vector<prometheus::MetricFamily> families(
      const std::vector<upstairs::Snapshot>& snapshots, const fuse::GuestIoStats* io);

 private:
  std::function<std::vector<upstairs::Snapshot>()> snapshots_;
  const fuse::GuestIoStats* io_;
};

}  // namespace cru::metrics
