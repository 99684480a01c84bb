#include "metrics/downstairs_metrics.h"

#include "metrics/metrics.h"

namespace cru::metrics {

namespace {

// "generation too low" -> "generation_too_low": label values as names, not prose.
std::string code_label(ErrorCode c) {
  std::string s(error_code_name(c));
  for (char& ch : s)
    if (ch == ' ' || ch == '-') ch = '_';
  return s;
}

}  // namespace

using downstairs::CoreStats;
using downstairs::JobKind;

std::vector<prometheus::MetricFamily> DownstairsCollector::Collect() const {
  auto jobs = counter("crucible_downstairs_jobs_total", "Jobs executed, by type.");
  auto disk = histogram("crucible_downstairs_job_disk_seconds",
                        "Time in the disk work of one job (the region call), by type.");
  for (size_t i = 0; i < downstairs::kJobKinds; ++i) {
    const auto kind = static_cast<JobKind>(i);
    const auto name = downstairs::job_kind_name(kind);
    add(jobs, {{"type", name}}, static_cast<double>(CoreStats::get(stats_[kind].jobs)));
    add(disk, {{"type", name}}, stats_[kind].disk_seconds);
  }
  auto errors = counter("crucible_downstairs_errors_total",
                        "Jobs answered with an error, by the error code sent.");
  for (uint16_t c = 1; c <= kErrorCodeMax; ++c)
    add(errors, {{"code", code_label(static_cast<ErrorCode>(c))}},
        static_cast<double>(CoreStats::get(stats_.errors[c])));
  auto bytes = [](const char* name, const char* help, const CoreStats::Counter& c) {
    auto f = counter(name, help);
    add(f, {}, static_cast<double>(CoreStats::get(c)));
    return f;
  };
  auto conns = gauge("crucible_downstairs_connections",
                     "Open connections: upstairs, repair peers and our own repair fetches.");
  add(conns, {}, static_cast<double>(stats_.connections.load(std::memory_order_relaxed)));
  return {jobs,
          disk,
          errors,
          bytes("crucible_downstairs_read_bytes_total", "Block data read by read jobs.",
                stats_.read_bytes),
          bytes("crucible_downstairs_written_bytes_total",
                "Block data written by write jobs that succeeded.", stats_.written_bytes),
          bytes("crucible_downstairs_repair_sent_bytes_total",
                "Repair chunk data sent to repairing peers (chunks they hold are not sent).",
                stats_.repair_sent_bytes),
          bytes("crucible_downstairs_repair_received_bytes_total",
                "Repair chunk data received from repair sources.", stats_.repair_received_bytes),
          conns};
}

}  // namespace cru::metrics
