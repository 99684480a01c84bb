// SubVolumeCollector (issue 12): one sub-volume's metrics are exactly the plain upstairs
// ones; several give every series a `sub_volume` label, one family per name.
#include "metrics/sub_volume_metrics.h"

#include <gtest/gtest.h>
#include <prometheus/metric_family.h>

#include <set>

#include "metrics/upstairs_metrics.h"

namespace cru::metrics {
namespace {

upstairs::Snapshot snapshot(uint64_t generation) {
  upstairs::Snapshot s;
  s.state = "active";
  s.generation = Generation{generation};
  return s;
}

const prometheus::MetricFamily* find(const std::vector<prometheus::MetricFamily>& fams,
                                     const std::string& name) {
  for (const auto& f : fams)
    if (f.name == name) return &f;
  return nullptr;
}

TEST(SubVolumeMetrics, OneSubVolumeHasNoExtraLabel) {
  const auto plain = UpstairsCollector::families(snapshot(4), nullptr);
  const auto one = SubVolumeCollector::families({snapshot(4)}, nullptr);
  ASSERT_EQ(one.size(), plain.size());
  const auto* g = find(one, "crucible_upstairs_generation");
  ASSERT_NE(g, nullptr);
  ASSERT_EQ(g->metric.size(), 1u);
  EXPECT_TRUE(g->metric[0].label.empty());
}

TEST(SubVolumeMetrics, SeveralAreLabelledAndMergedPerFamily) {
  const auto fams = SubVolumeCollector::families({snapshot(4), snapshot(9)}, nullptr);
  std::set<std::string> names;
  for (const auto& f : fams) EXPECT_TRUE(names.insert(f.name).second) << "twice: " << f.name;
  const auto* g = find(fams, "crucible_upstairs_generation");
  ASSERT_NE(g, nullptr);
  ASSERT_EQ(g->metric.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    ASSERT_EQ(g->metric[i].label.size(), 1u);
    EXPECT_EQ(g->metric[i].label[0].name, "sub_volume");
    EXPECT_EQ(g->metric[i].label[0].value, std::to_string(i));
  }
  EXPECT_EQ(g->metric[1].gauge.value, 9.0);
}

}  // namespace
}  // namespace cru::metrics
