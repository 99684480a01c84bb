// The tracer's own counters (trace/tracer.h) as metrics, for crucible-fuse and
// crucible-downstairs when both --trace-endpoint and metrics are on: spans exported,
// dropped (queue full, or given up by their owner) and failed export calls. Names are
// crucible_trace_*; docs/observability.md lists them.
#pragma once

#include <prometheus/collectable.h>

#include <memory>

#include "trace/tracer.h"

namespace cru::metrics {

class TraceCollector : public prometheus::Collectable {
 public:
  explicit TraceCollector(std::shared_ptr<const trace::Tracer> tracer)
      : tracer_(std::move(tracer)) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  std::shared_ptr<const trace::Tracer> tracer_;
};

}  // namespace cru::metrics
