// fuse::render_watch and watch_next: the frames `crucible-fuse status --watch` draws from
// status samples (built with status_json from snapshots, as the control socket makes them).
#include "fuse/watch_view.h"

#include <gtest/gtest.h>

#include <sstream>

#include "fuse/status.h"
#include "fuse/volume_status.h"

namespace cru::fuse {
namespace {

using namespace std::chrono_literals;

const WatchClock::time_point kT0{std::chrono::seconds(1000)};
const WatchOptions kOptions{"/mnt/vol.sock", 1000ms};

upstairs::Snapshot active_volume() {
  upstairs::Snapshot s;
  s.state = "active";
  s.generation = Generation{4};
  s.complete_copies = 3;
  proto::RegionDefinition r;
  r.block_size = 4096;
  r.extent_size = 256;
  r.extent_count = 64;
  s.region = r;
  for (uint8_t i = 0; i < 3; ++i) {
    s.clients[ClientId{i}].target = "127.0.0.1:381" + std::to_string(i);
    s.clients[ClientId{i}].state = "active";
  }
  return s;
}

WatchSample at(std::chrono::milliseconds t, const upstairs::Snapshot& s) {
  return {kT0 + t, status_json(s)};
}

// A bar with `filled` of its columns filled.
std::string bar(int filled) {
  return "[" + std::string(filled, '#') + std::string(kWatchBarColumns - filled, '.') + "]";
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// The line of `text` that contains `part` (empty if none).
std::string line_with(const std::string& text, const std::string& part) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (has(line, part)) return line;
  return "";
}

TEST(WatchView, EachReplicaShowsItsStateJobsAndBytesInFlight) {
  upstairs::Snapshot s = active_volume();
  s.clients[ClientId{1}].state = "offline (connecting)";
  s.clients[ClientId{1}].jobs_in_flight = 17;
  s.clients[ClientId{1}].bytes_in_flight = 3 * kMiB;
  const std::string text = render_watch({}, at(0ms, s), kOptions);
  EXPECT_TRUE(has(text, "/mnt/vol.sock")) << text;
  EXPECT_TRUE(has(text, "volume    active  generation 4  64 MiB in 4096-byte blocks")) << text;
  const std::string r1 = line_with(text, "127.0.0.1:3811");
  EXPECT_TRUE(has(r1, "offline (connecting)")) << text;
  EXPECT_TRUE(has(r1, " 17 ")) << r1;
  EXPECT_TRUE(has(r1, "3 MiB")) << r1;
  EXPECT_TRUE(has(line_with(text, "127.0.0.1:3810"), "active")) << text;
  EXPECT_FALSE(has(text, "\x1b")) << "the view has no terminal escapes of its own";
}

TEST(WatchView, IopsAndMibPerSecondComeFromTheDifferenceBetweenTwoSamples) {
  upstairs::Snapshot s = active_volume();
  s.reads = 100;
  s.writes = 50;
  s.read_bytes = 10 * kMiB;
  s.write_bytes = 2 * kMiB;
  const WatchSample first = at(0ms, s);
  EXPECT_TRUE(has(render_watch({}, first, kOptions), "rates from the next sample"));
  const WatchHistory h = watch_next({}, first);
  s.reads += 400;   // over 2 s: 200 reads/s, 8 MiB/s
  s.writes += 100;  // 50 writes/s, 1 MiB/s
  s.flushes += 4;   // 2 flushes/s
  s.read_bytes += 16 * kMiB;
  s.write_bytes += 2 * kMiB;
  const std::string text = render_watch(h, at(2000ms, s), kOptions);
  const std::string io = line_with(text, "IOPS");
  EXPECT_TRUE(has(io, "252 IOPS")) << io;
  EXPECT_TRUE(has(io, "read 200/s 8 MiB/s")) << io;
  EXPECT_TRUE(has(io, "write 50/s 1 MiB/s")) << io;
  EXPECT_TRUE(has(io, "flush 2/s")) << io;
}

TEST(WatchView, ANewGenerationRestartsTheRates) {
  upstairs::Snapshot s = active_volume();
  s.reads = 1000;
  const WatchHistory h = watch_next({}, at(0ms, s));
  s.generation = Generation{5};
  s.reads = 3;
  EXPECT_TRUE(has(render_watch(h, at(1000ms, s), kOptions), "rates from the next sample"));
}

TEST(WatchView, DegradedAndQuorumLostAreSaidPlainly) {
  upstairs::Snapshot s = active_volume();
  EXPECT_TRUE(has(render_watch({}, at(0ms, s), kOptions), "3 of 3 copies complete"));
  s.complete_copies = 2;
  s.degraded = true;
  EXPECT_TRUE(has(render_watch({}, at(0ms, s), kOptions), "DEGRADED: 2 of 3 copies complete"));
  s.complete_copies = 1;
  s.quorum_lost = true;
  const std::string text = render_watch({}, at(0ms, s), kOptions);
  EXPECT_TRUE(has(text, "QUORUM LOST: 1 of 3 copies complete")) << text;
  EXPECT_FALSE(has(text, "DEGRADED")) << text;
}

upstairs::Snapshot repairing(uint32_t extent, uint64_t bytes) {
  upstairs::Snapshot s = active_volume();
  s.clients[ClientId{2}].state = "live_repair";
  s.complete_copies = 2;
  s.degraded = true;
  s.repair.running = true;
  s.repair.targets = {ClientId{2}};
  s.repair.source = ClientId{0};
  s.repair.extent = ExtentId{extent};
  s.repair.extent_count = 64;
  s.repair.bytes_transferred = bytes;
  return s;
}

TEST(WatchView, ALiveRepairShowsABarWithRateAndEta) {
  const WatchSample first = at(0ms, repairing(8, 8 * kMiB));
  std::string text = render_watch({}, first, kOptions);
  EXPECT_TRUE(has(text, "live repair of replica 2 from replica 0: extent 8 of 64")) << text;
  EXPECT_TRUE(has(text, bar(5) + "  12%  8/64 extents")) << text;
  EXPECT_TRUE(has(text, "rate and ETA after the next sample")) << text;

  // 16 more extents and 4 MiB more in 2 s: 8 extents/s, 2 MiB/s, 40 extents left: 5 s.
  WatchHistory h = watch_next({}, first);
  h = watch_next(h, at(1000ms, repairing(16, 10 * kMiB)));
  text = render_watch(h, at(2000ms, repairing(24, 12 * kMiB)), kOptions);
  EXPECT_TRUE(has(text, bar(15) + "  37%  24/64 extents")) << text;
  EXPECT_TRUE(has(text, "12 MiB transferred at 2 MiB/s, 8.0 extents/s, ETA 5 s")) << text;
  EXPECT_TRUE(has(line_with(text, "127.0.0.1:3812"), "live_repair")) << text;
}

TEST(WatchView, ARepairThatHasNotAdvancedHasNoEtaYet) {
  const WatchHistory h = watch_next({}, at(0ms, repairing(0, 0)));
  const std::string text = render_watch(h, at(1000ms, repairing(0, 0)), kOptions);
  EXPECT_TRUE(has(text, bar(0) + "   0%  0/64 extents")) << text;
  EXPECT_TRUE(has(text, "ETA unknown")) << text;
}

TEST(WatchView, ANewRepairRestartsItsRate) {
  WatchHistory h = watch_next({}, at(0ms, repairing(60, 60 * kMiB)));
  // The first one ended (aborted) and a second began from extent 0.
  upstairs::Snapshot second = repairing(2, 1 * kMiB);
  second.live_repairs_aborted = 1;
  h = watch_next(h, at(1000ms, second));
  ASSERT_TRUE(h.progress_start);
  EXPECT_EQ(h.progress_start->at, kT0 + 1000ms);
  upstairs::Snapshot later = second;
  later.repair.extent = ExtentId{4};
  later.repair.bytes_transferred = 3 * kMiB;
  const std::string text = render_watch(h, at(2000ms, later), kOptions);
  EXPECT_TRUE(has(text, "at 2 MiB/s, 2.0 extents/s, ETA 30 s")) << text;
}

TEST(WatchView, AFinishedRepairSaysHowTheRepairsEnded) {
  WatchHistory h = watch_next({}, at(0ms, repairing(63, 1 * kMiB)));
  upstairs::Snapshot done = active_volume();
  done.live_repairs_completed = 1;
  const std::string text = render_watch(h, at(1000ms, done), kOptions);
  EXPECT_TRUE(has(text, "no live repair running; 1 completed, 0 aborted")) << text;
  EXPECT_FALSE(has(text, "[")) << text;
  EXPECT_FALSE(watch_next(h, at(1000ms, done)).progress_start);
}

upstairs::Snapshot reconciling(uint64_t done, uint64_t bytes) {
  upstairs::Snapshot s = active_volume();
  s.state = "reconciling";
  s.complete_copies = 0;
  s.reconciling = true;
  s.reconcile_extents_total = 20;
  s.reconcile_extents_done = done;
  s.reconcile_bytes_transferred = bytes;
  return s;
}

TEST(WatchView, AReconciliationShowsExtentsReconciledOfNWithABar) {
  const WatchHistory h = watch_next({}, at(0ms, reconciling(0, 0)));
  const std::string text = render_watch(h, at(4000ms, reconciling(10, 6 * kMiB)), kOptions);
  EXPECT_TRUE(has(text, "volume    reconciling")) << text;
  EXPECT_TRUE(has(text, "reconciliation: 10 of 20 extents reconciled")) << text;
  EXPECT_TRUE(has(text, bar(20) + "  50%  10/20 extents")) << text;
  EXPECT_TRUE(has(text, "6 MiB transferred at 1.5 MiB/s, 2.5 extents/s, ETA 4 s")) << text;
  EXPECT_FALSE(has(text, "copies complete")) << "not serving yet: " << text;
}

TEST(WatchView, AReadOnlyParentsScrubShowsItsLineAndABar) {
  WatchSample s = at(0ms, active_volume());
  EXPECT_FALSE(has(render_watch({}, s, kOptions), "read-only parent")) << "no parent, no line";
  upstairs::ScrubStatus scrub;
  scrub.parent = "file /img";
  scrub.block_size = 4096;
  scrub.total_blocks = 1000;
  scrub.next_block = 500;
  scrub.running = true;
  scrub.rate_limit_bytes_per_s = 16 * kMiB;
  s.status["read_only_parent"] = scrub_status_json(scrub, true);
  std::string text = render_watch({}, s, kOptions);
  EXPECT_TRUE(has(text, "read-only parent (file /img): scrub")) << text;
  EXPECT_TRUE(has(text, bar(20) + "  50%  500/1000 blocks")) << text;
  scrub.next_block = scrub.durable_block = 1000;
  scrub.running = false;
  scrub.complete = true;
  s.status["read_only_parent"] = scrub_status_json(scrub, false);
  text = render_watch({}, s, kOptions);
  EXPECT_TRUE(has(text, "no longer needed")) << text;
  EXPECT_FALSE(has(text, "/1000 blocks")) << "no bar once complete: " << text;
}

TEST(WatchView, LongEtasAreInMinutesOrHours) {
  const WatchHistory h = watch_next({}, at(0ms, repairing(0, 0)));
  // One extent in 10 s, 63 left: 630 s.
  EXPECT_TRUE(has(render_watch(h, at(10000ms, repairing(1, 0)), kOptions), "ETA 10 min 30 s"));
  // One extent in 100 s: 6300 s.
  EXPECT_TRUE(has(render_watch(h, at(100000ms, repairing(1, 0)), kOptions), "ETA 1 h 45 min"));
}

TEST(WatchView, AnActivatingVolumeWithoutRegionOrRepliesStillRenders) {
  upstairs::Snapshot s;
  s.state = "activating";
  const std::string text = render_watch({}, at(0ms, s), kOptions);
  EXPECT_TRUE(has(text, "volume    activating  generation 0")) << text;
  EXPECT_TRUE(has(text, "no live repair running")) << text;
  // A reply from some other version with missing or odd members does not throw either.
  EXPECT_NO_THROW(render_watch({}, {kT0, nlohmann::json::object()}, kOptions));
  EXPECT_NO_THROW(render_watch({}, {kT0, {{"downstairs", 3}, {"live_repair", "x"}}}, kOptions));
}

}  // namespace
}  // namespace cru::fuse
