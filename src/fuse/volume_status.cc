#include "fuse/volume_status.h"

#include <fmt/format.h>

#include "common/assert.h"
#include "common/units.h"
#include "fuse/status.h"

namespace cru::fuse {

namespace {

// Adds b's numbers into a, key by key (objects recursively; other values: a's kept).
void add_numbers(nlohmann::json& a, const nlohmann::json& b) {
  for (auto it = b.begin(); it != b.end(); ++it) {
    if (!a.contains(it.key())) {
      a[it.key()] = *it;
    } else if (it->is_object()) {
      add_numbers(a[it.key()], *it);
    } else if (it->is_number_unsigned() && a[it.key()].is_number_unsigned()) {
      a[it.key()] = a[it.key()].get<uint64_t>() + it->get<uint64_t>();
    } else if (it->is_number() && a[it.key()].is_number()) {
      a[it.key()] = a[it.key()].get<double>() + it->get<double>();
    }
  }
}

}  // namespace

nlohmann::json volume_status_json(const std::vector<upstairs::Snapshot>& subs,
                                  uint64_t stripe_bytes) {
  CRU_ASSERT(!subs.empty());
  if (subs.size() == 1) return status_json(subs.front());
  std::vector<nlohmann::json> each;
  each.reserve(subs.size());
  for (const auto& s : subs) each.push_back(status_json(s));
  nlohmann::json j = each.front();
  j["downstairs"] = nlohmann::json::array();
  j["counters"] = nlohmann::json::object();
  j["reconcile"] = nlohmann::json::object();
  j["jobs"] = 0;
  j["guest_waiting"] = 0;
  uint64_t size_bytes = 0;
  for (size_t i = 0; i < each.size(); ++i) {
    const auto& e = each[i];
    // The volume is as healthy as its least healthy sub-volume.
    if (j["state"] == "active" && e["state"] != "active") j["state"] = e["state"];
    j["complete_copies"] =
        std::min(j["complete_copies"].get<int>(), e["complete_copies"].get<int>());
    j["degraded"] = j["degraded"].get<bool>() || e["degraded"].get<bool>();
    j["quorum_lost"] = j["quorum_lost"].get<bool>() || e["quorum_lost"].get<bool>();
    for (auto d : e["downstairs"]) {
      d["sub_volume"] = i;
      j["downstairs"].push_back(std::move(d));
    }
    add_numbers(j["counters"], e["counters"]);
    const bool reconciling =
        j["reconcile"].value("running", false) || e["reconcile"].value("running", false);
    add_numbers(j["reconcile"], e["reconcile"]);
    j["reconcile"]["running"] = reconciling;  // any sub-volume's (add_numbers keeps the first)
    j["jobs"] = j["jobs"].get<uint64_t>() + e["jobs"].get<uint64_t>();
    j["guest_waiting"] = j["guest_waiting"].get<uint64_t>() + e["guest_waiting"].get<uint64_t>();
    if (e.contains("region")) size_bytes += e["region"]["size_bytes"].get<uint64_t>();
    // The repair shown is one that runs, if any; completed and aborted count them all.
    if (i > 0) {
      auto r = j["live_repair"];
      const auto& er = e["live_repair"];
      if (!r["running"].get<bool>() && er["running"].get<bool>()) r = er;
      r["completed"] =
          j["live_repair"]["completed"].get<uint64_t>() + er["completed"].get<uint64_t>();
      r["aborted"] = j["live_repair"]["aborted"].get<uint64_t>() + er["aborted"].get<uint64_t>();
      j["live_repair"] = r;
    }
    if (i > 0 && e.contains("disabled_reason") && !j.contains("disabled_reason"))
      j["disabled_reason"] =
          fmt::format("sub-volume {}: {}", i, e["disabled_reason"].get<std::string>());
  }
  if (j.contains("region")) {
    j["region"]["size_bytes"] = size_bytes;
    // Each sub-volume has its own region; theirs are under sub_volumes.
    j["region"].erase("uuid");
    j["region"].erase("extent_count");
  }
  j["stripe_bytes"] = stripe_bytes;
  j["sub_volumes"] = each;
  return j;
}

nlohmann::json scrub_status_json(const upstairs::ScrubStatus& s, bool parent_needed) {
  const uint64_t left = s.total_blocks - s.next_block;
  nlohmann::json j = {
      {"parent", s.parent},
      {"state_file", s.state_file},
      {"block_size", s.block_size},
      {"blocks_total", s.total_blocks},
      {"blocks_done", s.next_block},
      {"blocks_recorded", s.durable_block},
      {"resumed_from", s.resumed_from},
      {"bytes_total", s.total_blocks * s.block_size},
      {"bytes_done", s.next_block * s.block_size},
      {"bytes_left", left * s.block_size},
      {"rate_limit_bytes_per_s", s.rate_limit_bytes_per_s},
      {"rate_bytes_per_s", s.rate_bytes_per_s},
      {"eta_s", s.eta_s ? nlohmann::json(*s.eta_s) : nlohmann::json(nullptr)},
      {"running", s.running},
      {"complete", s.complete},
      {"parent_needed", parent_needed},
      {"last_error", s.last_error},
  };
  return j;
}

std::string format_scrub_status(const nlohmann::json& p) {
  const uint64_t total = p.value("blocks_total", uint64_t{0});
  const uint64_t done = p.value("blocks_done", uint64_t{0});
  const std::string parent = p.value("parent", "");
  if (p.value("complete", false))
    return fmt::format(
        "read-only parent ({}): scrub complete, every block is in the volume; the parent is "
        "no longer needed (volume.read_only_parent may be removed from the config)\n",
        parent);
  std::string out =
      fmt::format("read-only parent ({}): scrub {} of {} ({:.1f}%), {}", parent,
                  format_size(done * p.value("block_size", uint64_t{0})),
                  format_size(p.value("bytes_total", uint64_t{0})),
                  total ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 0.0,
                  p.value("running", false) ? "copying" : "not running");
  if (p.value("running", false)) {
    out += fmt::format(" at {}/s (limit {}/s)",
                       format_size(static_cast<uint64_t>(p.value("rate_bytes_per_s", 0.0))),
                       format_size(p.value("rate_limit_bytes_per_s", uint64_t{0})));
    if (p.contains("eta_s") && p["eta_s"].is_number())
      out += fmt::format(", ETA {:.0f} s", p["eta_s"].get<double>());
  }
  out += "; the parent is still needed\n";
  if (!p.value("last_error", "").empty())
    out += fmt::format("  last scrub error: {}\n", p.value("last_error", ""));
  return out;
}

std::string format_volume_status(const nlohmann::json& j) {
  const std::string parent =
      j.contains("read_only_parent") ? format_scrub_status(j["read_only_parent"]) : "";
  if (!j.contains("sub_volumes")) return format_status(j) + parent;
  const auto& subs = j["sub_volumes"];
  const uint64_t stripe = j.value("stripe_bytes", uint64_t{0});
  std::string out = fmt::format(
      "volume: {}, {} sub-volumes {}", j.value("state", "?"), subs.size(),
      stripe > 0 ? fmt::format("striped by {}", format_size(stripe)) : std::string("concatenated"));
  if (j.contains("region"))
    out += fmt::format(", {} in {}-byte blocks",
                       format_size(j["region"].value("size_bytes", uint64_t{0})),
                       j["region"].value("block_size", 0));
  out += "\n";
  for (size_t i = 0; i < subs.size(); ++i)
    out += fmt::format("sub-volume {}: ", i) + format_status(subs[i]);
  return out + parent;
}

}  // namespace cru::fuse
