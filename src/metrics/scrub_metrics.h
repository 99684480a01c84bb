// The read-only parent's scrub as metrics (crucible-fuse with volume.read_only_parent, or a
// volume whose scrub completed): crucible_scrub_* gauges, docs/observability.md lists them.
// No series at all when the volume has no parent record.
#pragma once

#include <prometheus/collectable.h>

#include <functional>
#include <optional>
#include <vector>

#include "upstairs/scrub_plan.h"

namespace cru::metrics {

class ScrubCollector : public prometheus::Collectable {
 public:
  // `status` is called from the HTTP thread on every scrape; nullopt: no parent (yet).
  explicit ScrubCollector(std::function<std::optional<upstairs::ScrubStatus>()> status)
      : status_(std::move(status)) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

  // What Collect() returns for this status, for tests.
  static std::vector<prometheus::MetricFamily> families(const upstairs::ScrubStatus& s);

 private:
  std::function<std::optional<upstairs::ScrubStatus>()> status_;
};

}  // namespace cru::metrics
