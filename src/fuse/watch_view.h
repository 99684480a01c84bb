// What `crucible-fuse status --watch` draws: one frame from status samples (the control
// socket's JSON, status.cc) and the times they were taken. Rates (IOPS, MiB/s) come from
// the difference between the previous sample and this one; a repair's or
// reconciliation's rate and ETA from the first sample the watch saw of it. Pure: samples
// in, text out; the loop that takes them and draws is watch.cc.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace cru::fuse {

using WatchClock = std::chrono::steady_clock;

struct WatchSample {
  WatchClock::time_point at;  // when the reply arrived
  nlohmann::json status;      // the "status" reply
};

// What the view keeps from one frame to the next.
struct WatchHistory {
  std::optional<WatchSample> previous;
  // The first sample of the live repair or reconciliation running in the last sample
  // (none when neither runs).
  std::optional<WatchSample> progress_start;
};

struct WatchOptions {
  std::string socket;  // shown in the header
  std::chrono::milliseconds interval{1000};
};

// The width of the progress bar between its brackets.
inline constexpr int kWatchBarColumns = 40;

// The history once `current` has been drawn.
WatchHistory watch_next(const WatchHistory& history, const WatchSample& current);

// One frame, lines ending in '\n' (no terminal escapes): the volume's state (degraded or
// quorum lost said plainly), one line per replica (state, jobs and bytes in flight), IO
// rates, and for a running live repair or reconciliation a progress bar with the bytes
// transferred, rate and ETA; otherwise how the last ones ended; then a read-only parent's
// scrub (its status line, and a bar while it copies).
std::string render_watch(const WatchHistory& history, const WatchSample& current,
                         const WatchOptions& options);

}  // namespace cru::fuse
