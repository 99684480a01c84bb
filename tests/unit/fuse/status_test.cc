// fuse::status_json and format_status: what `crucible-fuse status` shows of a snapshot.
#include "fuse/status.h"

#include <gtest/gtest.h>

namespace cru::fuse {
namespace {

upstairs::Snapshot snapshot_with_history() {
  upstairs::Snapshot s;
  s.state = "active";
  s.generation = Generation{3};
  for (auto& c : s.clients) c.state = "active";
  s.clients[ClientId{1}].target = "127.0.0.1:3820";
  s.clients[ClientId{1}].last_error = "End of file";
  s.clients[ClientId{1}].last_error_age_s = 37.2;
  s.clients[ClientId{1}].faults = 1;
  return s;
}

TEST(Status, ALastErrorSaysHowLongAgoItHappened) {
  auto j = status_json(snapshot_with_history());
  EXPECT_EQ(j["downstairs"][1]["last_error"], "End of file");
  EXPECT_DOUBLE_EQ(j["downstairs"][1]["last_error_age_s"].get<double>(), 37.2);
  std::string text = format_status(j);
  EXPECT_NE(text.find("127.0.0.1:3820"), std::string::npos) << text;
  EXPECT_NE(text.find("last error 37 s ago: End of file"), std::string::npos) << text;
}

TEST(Status, NoErrorShowsNoErrorClause) {
  upstairs::Snapshot s = snapshot_with_history();
  s.clients[ClientId{1}].last_error.clear();
  std::string text = format_status(status_json(s));
  EXPECT_EQ(text.find("last error"), std::string::npos) << text;
}

TEST(Status, AFullVolumeIsNotDegraded) {
  upstairs::Snapshot s = snapshot_with_history();
  s.complete_copies = 3;
  auto j = status_json(s);
  EXPECT_EQ(j["complete_copies"], 3);
  EXPECT_EQ(j["degraded"], false);
  EXPECT_EQ(j["quorum_lost"], false);
  std::string text = format_status(j);
  EXPECT_EQ(text.find("degraded"), std::string::npos) << text;
  EXPECT_EQ(text.find("quorum lost"), std::string::npos) << text;
}

TEST(Status, ADegradedVolumeSaysHowManyCompleteCopiesExist) {
  upstairs::Snapshot s = snapshot_with_history();
  s.complete_copies = 2;
  s.degraded = true;
  auto j = status_json(s);
  EXPECT_EQ(j["complete_copies"], 2);
  EXPECT_EQ(j["degraded"], true);
  std::string text = format_status(j);
  EXPECT_NE(text.find("degraded: 2 of 3 copies complete"), std::string::npos) << text;
}

TEST(Status, QuorumLostSaysIoFails) {
  upstairs::Snapshot s = snapshot_with_history();
  s.complete_copies = 1;
  s.degraded = true;
  s.quorum_lost = true;
  std::string text = format_status(status_json(s));
  EXPECT_NE(text.find("quorum lost: 1 of 3 copies complete"), std::string::npos) << text;
  EXPECT_NE(text.find("EIO"), std::string::npos) << text;
}

TEST(Status, ARunningReconciliationSaysExtentsReconciledOfNAndBytesTransferred) {
  upstairs::Snapshot s = snapshot_with_history();
  s.state = "reconciling";
  s.reconciling = true;
  s.reconcile_extents_total = 64;
  s.reconcile_extents_done = 10;
  s.reconcile_bytes_transferred = 3 * kMiB;
  auto j = status_json(s);
  EXPECT_EQ(j["reconcile"]["running"], true);
  EXPECT_EQ(j["reconcile"]["bytes_transferred"], 3 * kMiB);
  std::string text = format_status(j);
  EXPECT_NE(text.find("reconciliation: 10 of 64 extents reconciled, 3 MiB transferred"),
            std::string::npos)
      << text;
  s.reconciling = false;
  EXPECT_EQ(format_status(status_json(s)).find("reconciliation:"), std::string::npos);
}

}  // namespace
}  // namespace cru::fuse
