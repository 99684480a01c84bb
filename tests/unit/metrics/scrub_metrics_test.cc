// ScrubCollector (issue 12, read-only parent): the scrub's progress as crucible_scrub_*
// gauges labelled with the parent; nothing at all without a parent.
#include "metrics/scrub_metrics.h"

#include <gtest/gtest.h>
#include <prometheus/metric_family.h>

namespace cru::metrics {
namespace {

double value_of(const std::vector<prometheus::MetricFamily>& fams, const std::string& name) {
  for (const auto& f : fams)
    if (f.name == name) {
      EXPECT_EQ(f.metric.size(), 1u) << name;
      EXPECT_EQ(f.metric.at(0).label.at(0).name, "parent");
      return f.metric.at(0).gauge.value;
    }
  ADD_FAILURE() << "no family " << name;
  return -1;
}

bool has(const std::vector<prometheus::MetricFamily>& fams, const std::string& name) {
  for (const auto& f : fams)
    if (f.name == name) return true;
  return false;
}

TEST(ScrubMetrics, ProgressTotalsBytesAndCompleteGauge) {
  upstairs::ScrubStatus s;
  s.parent = "file /img";
  s.block_size = 4096;
  s.total_blocks = 100;
  s.next_block = 40;
  s.durable_block = 32;
  s.running = true;
  s.rate_bytes_per_s = 4096 * 10;
  s.eta_s = 6.0;
  auto fams = ScrubCollector::families(s);
  EXPECT_EQ(value_of(fams, "crucible_scrub_blocks_done"), 40);
  EXPECT_EQ(value_of(fams, "crucible_scrub_blocks_recorded"), 32);
  EXPECT_EQ(value_of(fams, "crucible_scrub_blocks_total"), 100);
  EXPECT_EQ(value_of(fams, "crucible_scrub_bytes_done"), 40 * 4096);
  EXPECT_EQ(value_of(fams, "crucible_scrub_bytes_total"), 100 * 4096);
  EXPECT_EQ(value_of(fams, "crucible_scrub_eta_seconds"), 6);
  EXPECT_EQ(value_of(fams, "crucible_scrub_running"), 1);
  EXPECT_EQ(value_of(fams, "crucible_scrub_complete"), 0);
  s.eta_s.reset();
  EXPECT_FALSE(has(ScrubCollector::families(s), "crucible_scrub_eta_seconds"))
      << "no rate yet: no estimate rather than a made-up one";
  s.complete = true;
  EXPECT_EQ(value_of(ScrubCollector::families(s), "crucible_scrub_complete"), 1);
}

TEST(ScrubMetrics, NoParentNoSeries) {
  ScrubCollector c([] { return std::optional<upstairs::ScrubStatus>{}; });
  EXPECT_TRUE(c.Collect().empty());
}

}  // namespace
}  // namespace cru::metrics
