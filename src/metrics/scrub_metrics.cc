#include "metrics/scrub_metrics.h"

#include "metrics/metrics.h"

namespace cru::metrics {

std::vector<prometheus::MetricFamily> ScrubCollector::families(const upstairs::ScrubStatus& s) {
  const Labels l = {{"parent", s.parent}};
  auto g = [&](const char* name, const char* help, double v) {
    auto f = gauge(name, help);
    add(f, l, v);
    return f;
  };
  std::vector<prometheus::MetricFamily> out;
  out.push_back(g("crucible_scrub_blocks_done",
                  "Parent blocks copied into the volume (from block 0 up).",
                  static_cast<double>(s.next_block)));
  out.push_back(g("crucible_scrub_blocks_recorded",
                  "Parent blocks copied, flushed and recorded in the state file (a restart "
                  "resumes here).",
                  static_cast<double>(s.durable_block)));
  out.push_back(g("crucible_scrub_blocks_total", "Blocks of the read-only parent.",
                  static_cast<double>(s.total_blocks)));
  out.push_back(g("crucible_scrub_bytes_done", "Bytes of the parent copied into the volume.",
                  static_cast<double>(s.next_block) * s.block_size));
  out.push_back(g("crucible_scrub_bytes_total", "Bytes of the read-only parent.",
                  static_cast<double>(s.total_blocks) * s.block_size));
  out.push_back(g("crucible_scrub_rate_bytes_per_second",
                  "The scrub's measured copy rate over this mount.", s.rate_bytes_per_s));
  out.push_back(g("crucible_scrub_rate_limit_bytes_per_second",
                  "volume.read_only_parent.scrub_rate.",
                  static_cast<double>(s.rate_limit_bytes_per_s)));
  if (s.eta_s)
    out.push_back(
        g("crucible_scrub_eta_seconds", "Estimated seconds until the scrub completes.", *s.eta_s));
  out.push_back(g("crucible_scrub_running", "1 while the scrub is copying.", s.running ? 1 : 0));
  out.push_back(g("crucible_scrub_complete",
                  "1 once every parent block is in the volume and recorded: the parent is no "
                  "longer needed.",
                  s.complete ? 1 : 0));
  return out;
}

std::vector<prometheus::MetricFamily> ScrubCollector::Collect() const {
  auto s = status_();
  if (!s) return {};
  return families(*s);
}

}  // namespace cru::metrics
