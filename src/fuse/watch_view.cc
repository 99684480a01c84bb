#include "fuse/watch_view.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "common/units.h"
#include "fuse/volume_status.h"

namespace cru::fuse {

namespace {

using nlohmann::json;

// The repair or reconciliation a sample shows running, in extents and bytes.
struct Work {
  enum class Kind { kNone, kLiveRepair, kReconcile } kind = Kind::kNone;
  uint64_t done = 0, total = 0, bytes = 0;
  // Tells one run from the next: live repairs ended so far, or the generation.
  uint64_t serial = 0;
};

const json& member(const json& j, const char* key) {
  static const json kEmpty = json::object();
  auto it = j.find(key);
  return it != j.end() && it->is_object() ? *it : kEmpty;
}

uint64_t u64(const json& j, const char* key) { return j.value(key, uint64_t{0}); }

Work work_of(const json& s) {
  const json& r = member(s, "live_repair");
  if (r.value("running", false))
    // `extent` is the one under repair: those before it are done.
    return {Work::Kind::kLiveRepair, u64(r, "extent"), u64(r, "extent_count"),
            u64(r, "bytes_transferred"), u64(r, "completed") + u64(r, "aborted")};
  const json& c = member(s, "reconcile");
  if (c.value("running", false))
    return {Work::Kind::kReconcile, u64(c, "extents_done"), u64(c, "extents_total"),
            u64(c, "bytes_transferred"), u64(s, "generation")};
  return {};
}

// Whether `later` continues the run `earlier` showed.
bool continues(const Work& earlier, const Work& later) {
  return earlier.kind != Work::Kind::kNone && earlier.kind == later.kind &&
         earlier.serial == later.serial && earlier.total == later.total &&
         later.done >= earlier.done && later.bytes >= earlier.bytes;
}

double seconds_between(const WatchSample& a, const WatchSample& b) {
  return std::chrono::duration<double>(b.at - a.at).count();
}

std::string rate(double bytes_per_s) {
  return format_size(static_cast<uint64_t>(std::max(0.0, bytes_per_s))) + "/s";
}

std::string duration_text(double s) {
  const auto whole = static_cast<uint64_t>(std::ceil(s));
  if (whole < 60) return fmt::format("{} s", whole);
  if (whole < 3600) return fmt::format("{} min {:02} s", whole / 60, whole % 60);
  return fmt::format("{} h {:02} min", whole / 3600, whole % 3600 / 60);
}

std::string bar(uint64_t done, uint64_t total) {
  const double f =
      total == 0 ? 0 : std::min(1.0, static_cast<double>(done) / static_cast<double>(total));
  const int filled = static_cast<int>(f * kWatchBarColumns);
  return fmt::format("[{}{}] {:3.0f}%", std::string(filled, '#'),
                     std::string(kWatchBarColumns - filled, '.'), std::floor(f * 100));
}

std::string replica_list(const json& ids) {
  std::string out;
  if (!ids.is_array()) return out;
  for (const auto& id : ids) {
    if (!id.is_number_unsigned()) continue;
    out += (out.empty() ? "" : ", ") + std::to_string(id.get<uint64_t>());
  }
  return out;
}

std::string volume_lines(const json& s) {
  std::string out =
      fmt::format("volume    {}  generation {}", s.value("state", "?"), u64(s, "generation"));
  const json& region = member(s, "region");
  if (!region.empty())
    out += fmt::format("  {} in {}-byte blocks{}", format_size(u64(region, "size_bytes")),
                       u64(region, "block_size"),
                       region.value("encrypted", false) ? ", encrypted" : "");
  out += "\n";
  const uint64_t copies = u64(s, "complete_copies");
  if (s.value("quorum_lost", false))
    out += fmt::format(
        "          QUORUM LOST: {} of 3 copies complete; writes and flushes fail (EIO) until a "
        "replica returns\n",
        copies);
  else if (s.value("degraded", false))
    out += fmt::format("          DEGRADED: {} of 3 copies complete\n", copies);
  else if (s.value("state", "") == "active")
    out += fmt::format("          {} of 3 copies complete\n", copies);
  if (s.contains("disabled_reason") && s["disabled_reason"].is_string())
    out += fmt::format("          stopped: {}\n", s["disabled_reason"].get<std::string>());
  return out;
}

std::string replica_lines(const json& s) {
  std::string out = fmt::format("{:<9} {:<22} {:<28} {:>6} {:>12}\n", "replica", "target", "state",
                                "jobs", "in flight");
  auto it = s.find("downstairs");
  if (it == s.end() || !it->is_array()) return out;
  int i = 0;
  for (const auto& d : *it) {
    if (!d.is_object()) continue;
    out += fmt::format("{:<9} {:<22} {:<28} {:>6} {:>12}\n", i++, d.value("target", ""),
                       d.value("state", ""), u64(d, "jobs_in_flight"),
                       format_size(u64(d, "bytes_in_flight")));
  }
  return out;
}

std::string io_line(const std::optional<WatchSample>& previous, const WatchSample& current) {
  const json& now = member(current.status, "counters");
  const double dt = previous ? seconds_between(*previous, current) : 0;
  std::string waiting = fmt::format("  {} waiting", u64(current.status, "guest_waiting"));
  if (!previous || dt <= 0 ||
      u64(previous->status, "generation") != u64(current.status, "generation"))
    return "io        (rates from the next sample)" + waiting + "\n";
  const json& before = member(previous->status, "counters");
  // Counters only grow within one generation; guard anyway (a restarted volume).
  auto per_s = [&](const char* key) {
    const uint64_t a = u64(before, key), b = u64(now, key);
    return b >= a ? static_cast<double>(b - a) / dt : 0.0;
  };
  return fmt::format(
      "io        {:.0f} IOPS: read {:.0f}/s {}, write {:.0f}/s {}, flush {:.0f}/s{}\n",
      per_s("reads") + per_s("writes") + per_s("flushes") + per_s("discards"), per_s("reads"),
      rate(per_s("read_bytes")), per_s("writes"), rate(per_s("write_bytes")), per_s("flushes"),
      waiting);
}

std::string progress_lines(const WatchHistory& next, const WatchSample& current) {
  const json& s = current.status;
  const Work w = work_of(s);
  if (w.kind == Work::Kind::kNone) {
    const json& r = member(s, "live_repair");
    const json& c = member(s, "reconcile");
    std::string out = fmt::format("repair    no live repair running; {} completed, {} aborted\n",
                                  u64(r, "completed"), u64(r, "aborted"));
    if (u64(c, "extents_total") > 0)
      out += fmt::format("          last reconciliation: {} of {} extents, {} transferred\n",
                         u64(c, "extents_done"), u64(c, "extents_total"),
                         format_size(u64(c, "bytes_transferred")));
    return out;
  }
  std::string out;
  if (w.kind == Work::Kind::kLiveRepair) {
    const json& r = member(s, "live_repair");
    out = fmt::format("live repair of replica {} from replica {}: extent {} of {}\n",
                      replica_list(r.value("targets", json::array())), u64(r, "source"), w.done,
                      w.total);
  } else {
    out = fmt::format("reconciliation: {} of {} extents reconciled\n", w.done, w.total);
  }
  out += "  " + bar(w.done, w.total) + fmt::format("  {}/{} extents\n", w.done, w.total);
  std::string speed = "rate and ETA after the next sample";
  if (next.progress_start) {
    const double dt = seconds_between(*next.progress_start, current);
    const Work start = work_of(next.progress_start->status);
    const uint64_t left = w.total > w.done ? w.total - w.done : 0;
    if (dt > 0) {
      const double extents_per_s = static_cast<double>(w.done - start.done) / dt;
      speed =
          fmt::format("at {}, {:.1f} extents/s, ETA {}",
                      rate(static_cast<double>(w.bytes - start.bytes) / dt), extents_per_s,
                      extents_per_s > 0 ? duration_text(static_cast<double>(left) / extents_per_s)
                                        : std::string("unknown (no extent done yet)"));
    }
  }
  out += fmt::format("  {} transferred {}\n", format_size(w.bytes), speed);
  return out;
}

// The read-only parent's scrub, when the volume has one: status's line and, while it
// copies, a bar of the parent's blocks.
std::string scrub_lines(const json& s) {
  if (!s.contains("read_only_parent")) return "";
  const json& p = s["read_only_parent"];
  std::string out = format_scrub_status(p);
  if (!p.value("complete", false))
    out += "  " + bar(u64(p, "blocks_done"), u64(p, "blocks_total")) +
           fmt::format("  {}/{} blocks\n", u64(p, "blocks_done"), u64(p, "blocks_total"));
  return out;
}

}  // namespace

WatchHistory watch_next(const WatchHistory& history, const WatchSample& current) {
  WatchHistory next;
  next.previous = current;
  const Work w = work_of(current.status);
  if (history.progress_start && continues(work_of(history.progress_start->status), w))
    next.progress_start = history.progress_start;
  else if (w.kind != Work::Kind::kNone)
    next.progress_start = current;
  return next;
}

std::string render_watch(const WatchHistory& history, const WatchSample& current,
                         const WatchOptions& options) {
  std::string out = fmt::format("crucible-fuse status --watch  {}  (every {} ms; Ctrl-C quits)\n\n",
                                options.socket, options.interval.count());
  out += volume_lines(current.status);
  out += "\n" + replica_lines(current.status) + "\n";
  out += io_line(history.previous, current);
  out += progress_lines(watch_next(history, current), current);
  out += scrub_lines(current.status);
  return out;
}

}  // namespace cru::fuse
