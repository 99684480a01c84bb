// Activation with a downstairs that reports a damaged extent (ExtentVersion.damaged: it
// cannot vouch for its copy): reconciliation takes a healthy copy as the source and
// repairs only the damaged one. The pure choice is in mend_test.cc (MendDamaged).
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>

#include "unit/upstairs/harness.h"

namespace cru::upstairs {
namespace {

using namespace cru::proto;
using test::Harness;
using test::kC0;
using test::kC1;
using test::kC2;

ExtentVersion v(uint64_t gen, uint64_t flush) {
  return ExtentVersion{Generation{gen}, FlushNumber{flush}, false, false};
}

// Answers every reconciliation step in the inboxes once, recording the flushes and
// repairs asked for; a repair is answered `repair_status(r)`. Returns whether any was.
bool answer_reconcile(Harness& h, std::vector<ExtentFlush>& flushes,
                      std::vector<ExtentRepair>& repairs,
                      const std::function<WireStatus(const ExtentRepair&)>& repair_status) {
  bool answered = false;
  for (ClientId c : kAllClients) {
    auto& q = h.inbox(c);
    while (!q.empty()) {
      Message m = std::move(q.front());
      q.pop_front();
      std::optional<RepairId> id;
      WireStatus st = WireStatus::ok();
      if (auto* f = std::get_if<ExtentFlush>(&m)) {
        flushes.push_back(*f);
        id = f->repair_id;
      } else if (auto* r = std::get_if<ExtentRepair>(&m)) {
        repairs.push_back(*r);
        id = r->repair_id;
        st = repair_status(*r);
      } else if (auto* cl = std::get_if<ExtentClose>(&m)) {
        id = cl->repair_id;
      } else if (auto* o = std::get_if<ExtentReopen>(&m)) {
        id = o->repair_id;
      }
      if (!id) continue;
      h.deliver(c, RepairAck{*id, st});
      answered = true;
    }
  }
  return answered;
}

// Activation with a downstairs that reports a damaged extent with the highest numbers:
// reconciliation flushes and copies from a healthy one, never from the damaged one.
TEST(ReconcileDamaged, ActivationRepairsADamagedExtentFromAHealthyCopy) {
  Harness h;
  ClientData<test::FakeDs> ds;
  for (ClientId c : kAllClients) ds[c].region = ds[kC0].region;
  ds[kC0].versions[2] = ExtentVersion{Generation{1}, FlushNumber{9}, true, true};
  ds[kC1].versions[2] = v(1, 4);
  ds[kC2].versions[2] = v(1, 4);
  GuestId g = h.activate(std::nullopt, ds);
  std::vector<ExtentRepair> repairs;
  std::vector<ExtentFlush> flushes;
  // Answer every reconciliation step until nothing more is asked.
  auto ok = [](const ExtentRepair&) { return WireStatus::ok(); };
  while (answer_reconcile(h, flushes, repairs, ok)) {
  }
  ASSERT_TRUE(h.done(g)) << "activation did not finish";
  ASSERT_TRUE(h.reply(g).status) << h.reply(g).status.error().to_string();
  ASSERT_EQ(flushes.size(), 1u);
  EXPECT_EQ(flushes[0].extent, ExtentId{2});
  EXPECT_EQ(flushes[0].source, kC1);
  ASSERT_EQ(repairs.size(), 1u) << "only the damaged copy receives a copy";
  EXPECT_EQ(repairs[0].extent, ExtentId{2});
  EXPECT_EQ(repairs[0].source, kC1);
  EXPECT_EQ(repairs[0].dests, (std::vector<ClientId>{kC0}));
}

// Damage found only during the repair: C0 has the highest numbers on extent 2 and opened
// clean, but its bytes fail their hashes, so the receivers refuse the copy
// (kHashMismatch). The re-plan must take a healthy copy as the source and repair C0
// too, instead of retrying C0 forever.
TEST(ReconcileDamaged, ASourceFoundDamagedDuringRepairIsRepairedFromAnotherCopy) {
  Harness h;
  ClientData<test::FakeDs> ds;
  for (ClientId c : kAllClients) ds[c].region = ds[kC0].region;
  ds[kC0].versions[2] = v(1, 9);
  ds[kC1].versions[2] = v(1, 4);
  ds[kC2].versions[2] = v(1, 4);
  GuestId g = h.activate(std::nullopt, ds);
  std::vector<ExtentRepair> repairs;
  std::vector<ExtentFlush> flushes;
  // Bounded: before the fix every round retried C0 and activation never finished.
  for (int round = 0; round < 50 && !h.done(g); ++round) {
    auto c0_damaged = [](const ExtentRepair& r) {
      return r.source == kC0 ? WireStatus{ErrorCode::kHashMismatch,
                                          "block 3 of the received copy does not match"}
                             : WireStatus::ok();
    };
    if (answer_reconcile(h, flushes, repairs, c0_damaged)) continue;
    // The abort dropped every downstairs: let them reconnect and renegotiate.
    TimePoint d = h.up().next_deadline();
    ASSERT_NE(d, TimePoint::max()) << "no timer is due";
    h.tick_at(d);
    h.drop_pings();
    h.negotiate(ds);
  }
  ASSERT_TRUE(h.done(g)) << "activation did not finish after " << repairs.size() << " repairs";
  ASSERT_TRUE(h.reply(g).status) << h.reply(g).status.error().to_string();
  ASSERT_GE(repairs.size(), 2u);
  EXPECT_EQ(repairs.front().source, kC0) << "first the highest numbers are trusted";
  const ExtentRepair& last = repairs.back();
  EXPECT_EQ(last.extent, ExtentId{2});
  EXPECT_NE(last.source, kC0);
  EXPECT_NE(std::find(last.dests.begin(), last.dests.end(), kC0), last.dests.end())
      << "the damaged copy is repaired too";
  size_t from_c0 = std::count_if(repairs.begin(), repairs.end(),
                                 [](const ExtentRepair& r) { return r.source == kC0; });
  EXPECT_LE(from_c0, 2u) << "C0 was retried as the source";  // one ask per dest, once
}

// A downstairs that comes back through a replay (no extent versions) and reports damaged
// extents is faulted, so that live repair copies them.
TEST(ReconcileDamaged, AReplayedDownstairsReportingDamageIsFaultedForRepair) {
  Harness h;
  h.activate_fresh();
  h.deliver(kC1, ErrorReport{JobId{}, WireStatus{ErrorCode::kCorrupt, "1 extents are damaged"}});
  EXPECT_EQ(h.up().snapshot().clients[kC1].faults, 1u);
  EXPECT_EQ(h.up().snapshot().clients[kC0].faults, 0u);
}

}  // namespace
}  // namespace cru::upstairs
