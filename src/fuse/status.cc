#include "fuse/status.h"

#include <fmt/format.h>

#include "common/units.h"

namespace cru::fuse {

nlohmann::json status_json(const upstairs::Snapshot& s) {
  nlohmann::json j;
  j["state"] = s.state;
  j["generation"] = s.generation.value;
  j["complete_copies"] = s.complete_copies;
  j["degraded"] = s.degraded;
  j["quorum_lost"] = s.quorum_lost;
  if (s.region) {
    j["region"] = {
        {"block_size", s.region->block_size},     {"extent_size", s.region->extent_size},
        {"extent_count", s.region->extent_count}, {"size_bytes", s.region->total_bytes()},
        {"encrypted", s.region->encrypted},       {"uuid", s.region->uuid.to_string()}};
  }
  j["downstairs"] = nlohmann::json::array();
  for (const auto& c : s.clients) {
    j["downstairs"].push_back({{"target", c.target},
                               {"state", c.state},
                               {"jobs_in_flight", c.jobs_in_flight},
                               {"bytes_in_flight", c.bytes_in_flight},
                               {"last_error", c.last_error},
                               {"last_error_age_s", c.last_error_age_s},
                               {"connects", c.connects},
                               {"faults", c.faults},
                               {"replays", c.replays},
                               {"live_repairs", c.live_repairs},
                               {"self_heals", c.self_heals}});
  }
  j["jobs"] = s.jobs;
  j["guest_waiting"] = s.guest_waiting;
  j["counters"] = {{"reads", s.reads},
                   {"writes", s.writes},
                   {"discards", s.discards},
                   {"flushes", s.flushes},
                   {"barriers", s.barriers},
                   {"read_bytes", s.read_bytes},
                   {"write_bytes", s.write_bytes}};
  j["reconcile"] = {{"running", s.reconciling},
                    {"extents_total", s.reconcile_extents_total},
                    {"extents_done", s.reconcile_extents_done},
                    {"bytes_transferred", s.reconcile_bytes_transferred}};
  const auto& r = s.repair;
  nlohmann::json targets = nlohmann::json::array();
  for (ClientId t : r.targets) targets.push_back(t.value);
  j["live_repair"] = {{"running", r.running},
                      {"targets", targets},
                      {"source", r.source.value},
                      {"extent", r.extent.value},
                      {"extent_count", r.extent_count},
                      {"extents_repaired", r.extents_repaired},
                      {"extents_confirmed", r.extents_confirmed},
                      {"bytes_transferred", r.bytes_transferred},
                      {"rate_bytes_per_s", r.rate_bytes_per_s},
                      {"eta_s", r.eta_s},
                      {"completed", s.live_repairs_completed},
                      {"aborted", s.live_repairs_aborted}};
  if (!s.disabled_reason.empty()) j["disabled_reason"] = s.disabled_reason;
  return j;
}

std::string format_status(const nlohmann::json& j) {
  std::string out =
      fmt::format("volume: {} (generation {})", j.value("state", "?"), j.value("generation", 0));
  if (j.contains("region"))
    out += fmt::format(", {} in {}-byte blocks{}",
                       format_size(j["region"].value("size_bytes", uint64_t{0})),
                       j["region"].value("block_size", 0),
                       j["region"].value("encrypted", false) ? ", encrypted" : "");
  out += "\n";
  if (j.value("quorum_lost", false))
    out += fmt::format(
        "  quorum lost: {} of 3 copies complete and fewer than 2 downstairs can take IO; "
        "writes and flushes fail with EIO until one returns\n",
        j.value("complete_copies", 0));
  else if (j.value("degraded", false))
    out += fmt::format("  degraded: {} of 3 copies complete\n", j.value("complete_copies", 0));
  if (j.contains("disabled_reason"))
    out += fmt::format("  stopped: {}\n", j["disabled_reason"].get<std::string>());
  int i = 0;
  for (const auto& d : j.value("downstairs", nlohmann::json::array())) {
    out += fmt::format(
        "  downstairs {} {:<22} {:<12} {} jobs, {} in flight; {} connects, {} faults, {} "
        "self-heals",
        i++, d.value("target", ""), d.value("state", ""), d.value("jobs_in_flight", 0),
        format_size(d.value("bytes_in_flight", uint64_t{0})), d.value("connects", 0),
        d.value("faults", 0), d.value("self_heals", 0));
    if (!d.value("last_error", "").empty())
      out += fmt::format("; last error {:.0f} s ago: {}", d.value("last_error_age_s", 0.0),
                         d.value("last_error", ""));
    out += "\n";
  }
  const auto& rc = j["reconcile"];
  if (rc.value("running", false))
    out += fmt::format("  reconciliation: {} of {} extents reconciled, {} transferred\n",
                       rc.value("extents_done", 0), rc.value("extents_total", 0),
                       format_size(rc.value("bytes_transferred", uint64_t{0})));
  const auto& r = j["live_repair"];
  if (r.value("running", false))
    out += fmt::format("  live repair: extent {}/{}, {} transferred at {}/s, about {:.0f} s left\n",
                       r.value("extent", 0), r.value("extent_count", 0),
                       format_size(r.value("bytes_transferred", uint64_t{0})),
                       format_size(static_cast<uint64_t>(r.value("rate_bytes_per_s", 0.0))),
                       r.value("eta_s", 0.0));
  const auto& c = j["counters"];
  out += fmt::format(
      "  io: {} reads ({}), {} writes ({}), {} flushes, {} discards; repairs: {} done, {} "
      "aborted\n",
      c.value("reads", 0), format_size(c.value("read_bytes", uint64_t{0})), c.value("writes", 0),
      format_size(c.value("write_bytes", uint64_t{0})), c.value("flushes", 0),
      c.value("discards", 0), r.value("completed", 0), r.value("aborted", 0));
  return out;
}

}  // namespace cru::fuse
