#include "metrics/sub_volume_metrics.h"

#include <prometheus/metric_family.h>

#include <string>
#include <unordered_map>

#include "metrics/upstairs_metrics.h"

namespace cru::metrics {

std::vector<prometheus::MetricFamily> SubVolumeCollector::Collect() const {
  return families(snapshots_(), io_);
}

std::vector<prometheus::MetricFamily> SubVolumeCollector::families(
    const std::vector<upstairs::Snapshot>& snapshots, const fuse::GuestIoStats* io) {
  if (snapshots.size() == 1) return UpstairsCollector::families(snapshots.front(), io);
  std::vector<prometheus::MetricFamily> out;
  std::unordered_map<std::string, size_t> index;  // family name -> position in out
  for (size_t i = 0; i < snapshots.size(); ++i) {
    // The guest's own operations are counted once, with the first sub-volume's families,
    // and carry no sub_volume label: they are the volume's.
    auto fams = UpstairsCollector::families(snapshots[i], nullptr);
    for (auto& f : fams) {
      for (auto& m : f.metric) m.label.push_back({"sub_volume", std::to_string(i)});
      auto [it, added] = index.try_emplace(f.name, out.size());
      if (added) {
        out.push_back(std::move(f));
      } else {
        auto& into = out[it->second].metric;
        into.insert(into.end(), f.metric.begin(), f.metric.end());
      }
    }
  }
  if (io != nullptr) {
    // families() with only the guest stats: the ones the snapshot families lack.
    for (auto& f : UpstairsCollector::families(snapshots.front(), io))
      if (!index.contains(f.name)) out.push_back(std::move(f));
  }
  return out;
}

}  // namespace cru::metrics
