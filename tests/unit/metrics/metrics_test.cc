// The collectors' output as Prometheus text (what /metrics serves): the series, their
// labels and values, from hand-made statistics; and the listen addresses the endpoints
// accept.
#include "metrics/metrics.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "common/address.h"
#include "common/latency_histogram.h"
#include "metrics/downstairs_metrics.h"
#include "metrics/upstairs_metrics.h"

namespace cru::metrics {
namespace {

using namespace std::chrono_literals;

// Whether the exposition has exactly this line (a series and its value).
::testing::AssertionResult has_line(const std::string& text, const std::string& line) {
  if (("\n" + text).find("\n" + line + "\n") != std::string::npos)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "no line '" << line << "' in:\n" << text;
}

TEST(LatencyHistogram, SamplesLandInTheFirstBucketNotBelowThem) {
  LatencyHistogram h;
  h.record(10us);  // <= 50 us
  h.record(50us);  // exactly on a bound: that bucket
  h.record(3ms);   // <= 5 ms
  h.record(1min);  // past the last bound: +Inf
  EXPECT_EQ(h.bucket(0), 2u);
  EXPECT_EQ(h.bucket(6), 1u);  // 0.005
  EXPECT_EQ(h.bucket(LatencyHistogram::kBuckets - 1), 1u);
  EXPECT_NEAR(h.sum_seconds(), 60.00306, 1e-9);
}

TEST(DownstairsCollector, ExportsJobsBytesErrorsConnectionsAndCumulativeBuckets) {
  downstairs::CoreStats stats;
  auto& write = stats[downstairs::JobKind::kWrite];
  write.jobs = 3;
  write.disk_seconds.record(40us);
  write.disk_seconds.record(800us);
  write.disk_seconds.record(2s);
  stats[downstairs::JobKind::kFlush].jobs = 1;
  stats.errors[static_cast<size_t>(ErrorCode::kIo)] = 2;
  stats.read_bytes = 4096;
  stats.written_bytes = 12288;
  stats.repair_sent_bytes = 1 << 20;
  stats.repair_received_bytes = 5;
  stats.connections = 2;
  const std::string text = to_text(DownstairsCollector(stats).Collect());

  EXPECT_TRUE(has_line(text, "# TYPE crucible_downstairs_jobs_total counter"));
  EXPECT_TRUE(has_line(text, "crucible_downstairs_jobs_total{type=\"write\"} 3"));
  EXPECT_TRUE(has_line(text, "crucible_downstairs_jobs_total{type=\"flush\"} 1"));
  EXPECT_TRUE(has_line(text, "crucible_downstairs_jobs_total{type=\"read\"} 0"));
  EXPECT_TRUE(has_line(text, "# TYPE crucible_downstairs_job_disk_seconds histogram"));
  EXPECT_TRUE(
      has_line(text, "crucible_downstairs_job_disk_seconds_bucket{type=\"write\",le=\"5e-05\"} 1"));
  EXPECT_TRUE(
      has_line(text, "crucible_downstairs_job_disk_seconds_bucket{type=\"write\",le=\"0.001\"} 2"));
  EXPECT_TRUE(
      has_line(text, "crucible_downstairs_job_disk_seconds_bucket{type=\"write\",le=\"1\"} 2"));
  EXPECT_TRUE(
      has_line(text, "crucible_downstairs_job_disk_seconds_bucket{type=\"write\",le=\"+Inf\"} 3"));
  EXPECT_TRUE(has_line(text, "crucible_downstairs_job_disk_seconds_count{type=\"write\"} 3"));
  EXPECT_TRUE(has_line(text, "crucible_downstairs_errors_total{code=\"io_error\"} 2"));
  EXPECT_TRUE(has_line(text, "crucible_downstairs_errors_total{code=\"generation_too_low\"} 0"));
  EXPECT_EQ(text.find("code=\"ok\""), std::string::npos) << "success is not an error";
  EXPECT_TRUE(has_line(text, "crucible_downstairs_read_bytes_total 4096"));
  EXPECT_TRUE(has_line(text, "crucible_downstairs_written_bytes_total 12288"));
  EXPECT_TRUE(has_line(text, "crucible_downstairs_repair_sent_bytes_total 1048576"));
  EXPECT_TRUE(has_line(text, "crucible_downstairs_repair_received_bytes_total 5"));
  EXPECT_TRUE(has_line(text, "# TYPE crucible_downstairs_connections gauge"));
  EXPECT_TRUE(has_line(text, "crucible_downstairs_connections 2"));
}

upstairs::Snapshot sample_snapshot() {
  upstairs::Snapshot s;
  s.state = "active";
  s.generation = Generation{7};
  const char* states[] = {"active", "faulted (connecting)", "live_repair"};
  for (ClientId id : kAllClients) {
    auto& c = s.clients[id];
    c.target = "127.0.0.1:381" + std::to_string(id.value);
    c.state = states[id.value];
    c.jobs_in_flight = 10u + id.value;
    c.bytes_in_flight = 4096u * id.value;
    c.connects = 1;
    c.faults = id.value == 1 ? 2 : 0;
  }
  s.reads = 5;
  s.writes = 9;
  s.write_bytes = 9 * 4096;
  s.reconcile_extents_total = 8;
  s.reconcile_extents_done = 8;
  s.reconcile_bytes_transferred = 5 << 20;
  s.repair.running = true;
  s.repair.extent_count = 16;
  s.repair.extents_repaired = 3;
  s.repair.extents_confirmed = 4;
  s.repair.bytes_transferred = 3 << 20;
  s.repair.eta_s = 12.5;
  s.live_repairs_completed = 1;
  return s;
}

TEST(UpstairsCollector, ExportsReplicaStatesInFlightRepairAndVolumeCounts) {
  const std::string text = to_text(UpstairsCollector::families(sample_snapshot(), nullptr));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_volume_state{state=\"active\"} 1"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_generation 7"));
  // The state without its detail, one series per replica.
  EXPECT_TRUE(has_line(text,
                       "crucible_upstairs_replica_state{replica=\"0\",target=\"127.0.0.1:3810\","
                       "state=\"active\"} 1"));
  EXPECT_TRUE(has_line(text,
                       "crucible_upstairs_replica_state{replica=\"1\",target=\"127.0.0.1:3811\","
                       "state=\"faulted\"} 1"));
  EXPECT_TRUE(has_line(
      text, "crucible_upstairs_replica_active{replica=\"0\",target=\"127.0.0.1:3810\"} 1"));
  EXPECT_TRUE(has_line(
      text, "crucible_upstairs_replica_active{replica=\"2\",target=\"127.0.0.1:3812\"} 0"));
  EXPECT_TRUE(has_line(
      text,
      "crucible_upstairs_replica_jobs_in_flight{replica=\"2\",target=\"127.0.0.1:3812\"} 12"));
  EXPECT_TRUE(has_line(
      text,
      "crucible_upstairs_replica_bytes_in_flight{replica=\"1\",target=\"127.0.0.1:3811\"} 4096"));
  EXPECT_TRUE(has_line(
      text, "crucible_upstairs_replica_faults_total{replica=\"1\",target=\"127.0.0.1:3811\"} 2"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_volume_ops_total{op=\"write\"} 9"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_volume_bytes_total{op=\"write\"} 36864"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_reconcile_extents 8"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_reconcile_extents_done 8"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_reconcile_running 0"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_reconcile_bytes 5242880"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_live_repair_running 1"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_live_repair_extents 16"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_live_repair_extents_done{how=\"copied\"} 3"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_live_repair_extents_done{how=\"equal\"} 4"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_live_repair_bytes 3145728"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_live_repair_eta_seconds 12.5"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_live_repairs_total{result=\"completed\"} 1"));
  // Without the FUSE layer's stats there are no guest series.
  EXPECT_EQ(text.find("crucible_upstairs_guest_op"), std::string::npos);
}

TEST(UpstairsCollector, ExportsGuestOpsTimedByTheFuseLayer) {
  fuse::GuestIoStats io;
  const auto start = fuse::GuestIoStats::Clock::now() - 2ms;
  io.record(fuse::GuestOp::kWrite, start, 4096, true);
  io.record(fuse::GuestOp::kWrite, start, 0, false);
  io.record(fuse::GuestOp::kFlush, start, 0, true);
  const std::string text = to_text(UpstairsCollector::families(sample_snapshot(), &io));
  EXPECT_TRUE(has_line(text, "# TYPE crucible_upstairs_guest_op_seconds histogram"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_guest_op_seconds_count{op=\"write\"} 2"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_guest_op_seconds_count{op=\"flush\"} 1"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_guest_op_seconds_count{op=\"read\"} 0"));
  // 2 ms ago: not in the 1 ms bucket, in the 2.5 ms one (unless this machine took 0.5 ms
  // between the two clock reads, which the bound below tolerates).
  EXPECT_TRUE(
      has_line(text, "crucible_upstairs_guest_op_seconds_bucket{op=\"write\",le=\"0.001\"} 0"));
  EXPECT_TRUE(
      has_line(text, "crucible_upstairs_guest_op_seconds_bucket{op=\"write\",le=\"10\"} 2"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_guest_bytes_total{op=\"write\"} 4096"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_guest_errors_total{op=\"write\"} 1"));
  EXPECT_TRUE(has_line(text, "crucible_upstairs_guest_errors_total{op=\"flush\"} 0"));
}

TEST(ListenAddress, IpAndPortZeroAcceptedNamesRefused) {
  auto any = parse_listen_address("127.0.0.1:0");
  ASSERT_TRUE(any) << any.error().to_string();
  EXPECT_EQ(any->port, 0);
  auto v6 = parse_listen_address("[::1]:9100");
  ASSERT_TRUE(v6) << v6.error().to_string();
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 9100);
  EXPECT_FALSE(parse_listen_address("localhost:9100"));
  EXPECT_FALSE(parse_listen_address("127.0.0.1"));
  EXPECT_FALSE(parse_listen_address("127.0.0.1:65536"));
  EXPECT_FALSE(parse_listen_address("127.0.0.1:-1"));
}

TEST(Endpoint, ServesOnAFreePortAndRefusesABusyOneNamingTheOption) {
  auto e = Endpoint::start("127.0.0.1:0", "--metrics", {});
  ASSERT_TRUE(e) << e.error().to_string();
  const uint16_t port = (*e)->port();
  EXPECT_NE(port, 0);
  auto busy = Endpoint::start("127.0.0.1:" + std::to_string(port), "--metrics", {});
  ASSERT_FALSE(busy);
  EXPECT_NE(busy.error().message.find("--metrics: cannot serve metrics on 127.0.0.1:"),
            std::string::npos)
      << busy.error().message;
  auto bad = Endpoint::start("localhost:1", "metrics.listen", {});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message.rfind("metrics.listen: ", 0), 0u) << bad.error().message;
}

}  // namespace
}  // namespace cru::metrics
