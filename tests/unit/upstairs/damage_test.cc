// Activation with a downstairs that reports a damaged extent (ExtentVersion.damaged: it
// cannot vouch for its copy): reconciliation takes a healthy copy as the source and
// repairs only the damaged one. The pure choice is in mend_test.cc (MendDamaged).
#include <gtest/gtest.h>

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
  for (bool progress = true; progress;) {
    progress = false;
    for (ClientId c : kAllClients) {
      auto& q = h.inbox(c);
      while (!q.empty()) {
        Message m = std::move(q.front());
        q.pop_front();
        std::optional<RepairId> id;
        if (auto* f = std::get_if<ExtentFlush>(&m)) {
          flushes.push_back(*f);
          id = f->repair_id;
        } else if (auto* r = std::get_if<ExtentRepair>(&m)) {
          repairs.push_back(*r);
          id = r->repair_id;
        } else if (auto* cl = std::get_if<ExtentClose>(&m)) {
          id = cl->repair_id;
        } else if (auto* o = std::get_if<ExtentReopen>(&m)) {
          id = o->repair_id;
        }
        if (!id) continue;
        h.deliver(c, RepairAck{*id, WireStatus::ok()});
        progress = true;
      }
    }
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
