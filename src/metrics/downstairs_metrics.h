// crucible-downstairs's metrics: the core's own counters (downstairs/stats.h), read on
// each scrape. Names are crucible_downstairs_*; docs/observability.md lists them.
#pragma once

#include <prometheus/collectable.h>

#include "downstairs/stats.h"

namespace cru::metrics {

class DownstairsCollector : public prometheus::Collectable {
 public:
  // `stats` must outlive the collector (the core's; read from the HTTP thread).
  explicit DownstairsCollector(const downstairs::CoreStats& stats) : stats_(stats) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const downstairs::CoreStats& stats_;
};

}  // namespace cru::metrics
