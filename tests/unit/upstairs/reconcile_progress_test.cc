// What the status snapshot shows while reconciliation runs at activation (the control
// socket answers with it then: `crucible-fuse status --watch` draws it): the volume is
// "reconciling", extents reconciled of N advance one by one, and the bytes are those the
// destinations report they received, not whole extents.
#include <gtest/gtest.h>

#include "proto/repair_report.h"
#include "unit/upstairs/harness.h"

namespace cru::upstairs {
namespace {

using namespace cru::proto;

constexpr uint64_t kReportedBytes = 4096 * 3;  // a few chunks, less than an extent

// Answers the oldest reconciliation message any downstairs holds; false if none holds one.
bool answer_one(test::Harness& h) {
  for (ClientId c : kAllClients) {
    auto& q = h.inbox(c);
    while (!q.empty()) {
      Message m = std::move(q.front());
      q.pop_front();
      if (auto* f = std::get_if<ExtentFlush>(&m)) {
        h.deliver(c, RepairAck{f->repair_id, WireStatus::ok()});
      } else if (auto* r = std::get_if<ExtentRepair>(&m)) {
        h.deliver(c, RepairAck{r->repair_id, repair_done_status(kReportedBytes)});
      } else if (auto* cl = std::get_if<ExtentClose>(&m)) {
        h.deliver(c, RepairAck{cl->repair_id, WireStatus::ok()});
      } else if (auto* o = std::get_if<ExtentReopen>(&m)) {
        h.deliver(c, RepairAck{o->repair_id, WireStatus::ok()});
      } else {
        continue;  // pings and other chatter
      }
      return true;
    }
  }
  return false;
}

TEST(ReconcileProgress, TheSnapshotShowsExtentsReconciledOfNAndReportedBytesWhileItRuns) {
  test::Harness h;
  ClientData<test::FakeDs> ds;
  for (ClientId c : kAllClients) ds[c].region = ds[test::kC0].region;
  // Extents 0, 1 and 3 are older on C2 (it missed their last flush); 2 matches.
  for (ClientId c : kAllClients)
    for (auto& v : ds[c].versions) v = ExtentVersion{Generation{1}, FlushNumber{5}, false, false};
  for (uint32_t e : {0u, 1u, 3u}) ds[test::kC2].versions[e].flush = FlushNumber{4};
  GuestId g = h.activate(std::nullopt, ds);

  Snapshot s = h.up().snapshot();
  EXPECT_EQ(s.state, "reconciling");
  EXPECT_TRUE(s.reconciling);
  EXPECT_EQ(s.reconcile_extents_total, 3u);
  EXPECT_EQ(s.reconcile_extents_done, 0u);
  EXPECT_EQ(s.reconcile_bytes_transferred, 0u);

  uint64_t last_done = 0;
  bool seen_midway = false;
  for (int step = 0; step < 100 && answer_one(h); ++step) {
    s = h.up().snapshot();
    if (!s.reconciling) break;
    EXPECT_EQ(s.state, "reconciling");
    EXPECT_GE(s.reconcile_extents_done, last_done) << "progress never goes back";
    last_done = s.reconcile_extents_done;
    // One destination (C2) per extent: each copy counts what it reported.
    EXPECT_LE(s.reconcile_bytes_transferred, (last_done + 1) * kReportedBytes);
    EXPECT_GE(s.reconcile_bytes_transferred, last_done * kReportedBytes);
    seen_midway |= last_done > 0 && last_done < 3;
  }
  EXPECT_TRUE(seen_midway) << "a snapshot between the first and the last extent";
  ASSERT_TRUE(h.done(g)) << "activation did not finish";
  ASSERT_TRUE(h.reply(g).status) << h.reply(g).status.error().to_string();
  s = h.up().snapshot();
  EXPECT_EQ(s.state, "active");
  EXPECT_FALSE(s.reconciling);
  EXPECT_EQ(s.reconcile_extents_done, 3u);
  EXPECT_EQ(s.reconcile_bytes_transferred, 3 * kReportedBytes);
}

}  // namespace
}  // namespace cru::upstairs
