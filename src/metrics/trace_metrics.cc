#include "metrics/trace_metrics.h"

#include "metrics/metrics.h"

namespace cru::metrics {

std::vector<prometheus::MetricFamily> TraceCollector::Collect() const {
  const std::string& service = tracer_->service();
  auto exported = counter("crucible_trace_spans_exported_total",
                          "Spans handed to the collector (--trace-endpoint).");
  auto dropped = counter("crucible_trace_spans_dropped_total",
                         "Spans dropped: the export queue was full or the collector too slow.");
  auto errors = counter("crucible_trace_export_errors_total",
                        "Export calls that failed (their spans are lost).");
  add(exported, {{"service", service}}, static_cast<double>(tracer_->exported()));
  add(dropped, {{"service", service}}, static_cast<double>(tracer_->dropped()));
  add(errors, {{"service", service}}, static_cast<double>(tracer_->export_errors()));
  return {std::move(exported), std::move(dropped), std::move(errors)};
}

}  // namespace cru::metrics
