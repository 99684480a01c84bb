// crucible-fuse's metrics: one upstairs snapshot per scrape (upstairs/status.h: replica
// states, jobs and bytes in flight, repair and reconciliation progress, volume counters)
// plus the guest operations as the FUSE layer timed them (fuse/io_stats.h). Names are
// crucible_upstairs_*; docs/observability.md lists them.
#pragma once

#include <prometheus/collectable.h>

#include <functional>

#include "fuse/io_stats.h"
#include "upstairs/status.h"

namespace cru::metrics {

class UpstairsCollector : public prometheus::Collectable {
 public:
  // `snapshot` is called from the HTTP thread on every scrape (Volume::snapshot() is safe
  // from any thread); `io` (may be null) must outlive the collector.
  UpstairsCollector(std::function<upstairs::Snapshot()> snapshot, const fuse::GuestIoStats* io)
      : snapshot_(std::move(snapshot)), io_(io) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

  // The families for one snapshot and the guest stats (what Collect() returns), for tests.
  static std::vector<prometheus::MetricFamily> families(const upstairs::Snapshot& s,
                                                        const fuse::GuestIoStats* io);

 private:
  std::function<upstairs::Snapshot()> snapshot_;
  const fuse::GuestIoStats* io_;
};

}  // namespace cru::metrics
