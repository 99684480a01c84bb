// Live repair (DESIGN.md section 4, "Faults while active"; issue 6): the mend choice per
// extent (mend.h), the upstairs core's live-repair state machine against hand-written
// event sequences (close / repair / reopen per extent, then a final flush; guest IO
// around the repair point; progress counters), abort at each step, and replacing a
// downstairs. The test plays guest, downstairs and clock (harness.h).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "proto/repair_report.h"
#include "unit/upstairs/harness.h"
#include "upstairs/mend.h"

namespace cru::upstairs::test {
namespace {

ExtentVersion ver(uint64_t gen, uint64_t flush, bool dirty = false) {
  return ExtentVersion{Generation{gen}, FlushNumber{flush}, dirty};
}

bool contains(const std::vector<ClientId>& v, ClientId c) {
  return std::find(v.begin(), v.end(), c) != v.end();
}

// ---- 1. the mend choice ------------------------------------------------------------------

const std::vector<ClientId> kThree = {kC0, kC1, kC2};

struct MendCase {
  const char* rule;
  std::array<ExtentVersion, kClientCount> v;
  std::vector<ClientId> present;
  std::optional<ClientId> source;  // nullopt: the extent needs no repair
  std::vector<ClientId> dests;
};

const std::vector<MendCase> kMendCases = {
    {"equal clean copies are not copied", {ver(1, 5), ver(1, 5), ver(1, 5)}, kThree, {}, {}},
    {"never-flushed equal copies are not copied",
     {ver(0, 0), ver(0, 0), ver(0, 0)},
     kThree,
     {},
     {}},
    {"highest flush is the source; copies equal to it are not destinations",
     {ver(1, 5), ver(1, 7), ver(1, 7)},
     kThree,
     kC1,
     {kC0}},
    {"highest flush is the source; every differing copy is a destination",
     {ver(1, 5), ver(1, 4), ver(1, 7)},
     kThree,
     kC2,
     {kC0, kC1}},
    {"generation outranks flush number",
     {ver(1, 9), ver(2, 1), ver(1, 9)},
     kThree,
     kC1,
     {kC0, kC2}},
    {"differing generations alone need repair",
     {ver(3, 4), ver(3, 4), ver(2, 4)},
     kThree,
     kC0,
     {kC2}},
    {"one dirty copy needs repair, is preferred at equal numbers, and every other copy receives it",
     {ver(1, 5), ver(1, 5, true), ver(1, 5)},
     kThree,
     kC1,
     {kC0, kC2}},
    {"a dirty copy with a lower flush is not the source but is a destination",
     {ver(1, 4, true), ver(1, 5), ver(1, 5)},
     kThree,
     kC1,
     {kC0}},
    {"a dirty copy with a lower generation loses to a clean higher one",
     {ver(2, 1), ver(1, 9, true), ver(2, 1)},
     kThree,
     kC0,
     {kC1}},
    {"dirty is preferred only among the highest numbers",
     {ver(1, 5), ver(1, 6, true), ver(1, 7)},
     kThree,
     kC2,
     {kC0, kC1}},
    {"two dirty copies at the highest numbers: the lower client",
     {ver(1, 5), ver(1, 5, true), ver(1, 5, true)},
     kThree,
     kC1,
     {kC0, kC2}},
    {"all dirty and equal: client 0 is the source, both others receive",
     {ver(1, 5, true), ver(1, 5, true), ver(1, 5, true)},
     kThree,
     kC0,
     {kC1, kC2}},
    {"a tie goes to the lowest client (1 over 2)",
     {ver(1, 3), ver(1, 6), ver(1, 6)},
     kThree,
     kC1,
     {kC0}},
    {"a tie goes to the lowest client (0 over 1)",
     {ver(2, 2), ver(2, 2), ver(1, 1)},
     kThree,
     kC0,
     {kC2}},
    {"an absent client's copy is ignored",
     {ver(1, 5), ver(9, 9, true), ver(1, 5)},
     {kC0, kC2},
     {},
     {}},
    {"the source is the highest present copy",
     {ver(1, 5), ver(9, 9), ver(1, 6)},
     {kC0, kC2},
     kC2,
     {kC0}},
    {"with two present a tie goes to the lower present client",
     {ver(7, 7), ver(1, 5, true), ver(1, 5, true)},
     {kC1, kC2},
     kC1,
     {kC2}},
};

TEST(MendTable, EachRuleChoosesTheExpectedSourceAndDestinations) {
  for (const MendCase& k : kMendCases) {
    SCOPED_TRACE(k.rule);
    ClientData<ExtentVersion> v;
    for (ClientId c : kAllClients) v[c] = k.v[c.value];
    auto m = mend_extent(ExtentId{7}, v, k.present);
    if (!k.source) {
      EXPECT_FALSE(m) << "source " << int(m->source.value);
      continue;
    }
    ASSERT_TRUE(m) << "the extent was not repaired";
    EXPECT_EQ(m->extent, ExtentId{7});
    EXPECT_EQ(m->source, *k.source);
    EXPECT_EQ(m->dests, k.dests);
  }
}

TEST(MendTable, PlanHoldsExactlyTheExtentsThatNeedRepairWithTheSameChoice) {
  // One extent per three-client case, in table order.
  ClientData<std::vector<ExtentVersion>> versions;
  std::vector<const MendCase*> used;
  for (const MendCase& k : kMendCases) {
    if (k.present != kThree) continue;
    used.push_back(&k);
    for (ClientId c : kAllClients) versions[c].push_back(k.v[c.value]);
  }
  auto plan = plan_mend(versions, kThree);
  size_t p = 0;
  for (size_t e = 0; e < used.size(); ++e) {
    SCOPED_TRACE(used[e]->rule);
    if (!used[e]->source) {
      EXPECT_TRUE(p == plan.size() || plan[p].extent != ExtentId{static_cast<uint32_t>(e)})
          << "a matching extent is copied";
      continue;
    }
    ASSERT_LT(p, plan.size());
    EXPECT_EQ(plan[p].extent, ExtentId{static_cast<uint32_t>(e)});
    EXPECT_EQ(plan[p].source, *used[e]->source);
    EXPECT_EQ(plan[p].dests, used[e]->dests);
    ++p;
  }
  EXPECT_EQ(p, plan.size()) << "the plan holds extents that need no repair";
}

// The rules written out independently, checked against every combination of
// generation {1, 2} x flush {1, 2} x dirty, for all three and for each pair present.
TEST(MendTable, AgreesWithTheRulesOnEveryCombination) {
  const std::vector<std::vector<ClientId>> presents = {kThree, {kC0, kC1}, {kC0, kC2}, {kC1, kC2}};
  auto decode = [](int x) { return ver(1 + (x & 1), 1 + ((x >> 1) & 1), (x & 4) != 0); };
  int checked = 0;
  for (int a = 0; a < 8; ++a)
    for (int b = 0; b < 8; ++b)
      for (int c = 0; c < 8; ++c)
        for (const auto& present : presents) {
          ClientData<ExtentVersion> v;
          v[kC0] = decode(a);
          v[kC1] = decode(b);
          v[kC2] = decode(c);
          bool needed = false;
          for (ClientId x : present)
            needed |= v[x].dirty || std::tie(v[x].generation, v[x].flush) !=
                                        std::tie(v[present[0]].generation, v[present[0]].flush);
          std::optional<ClientId> source;
          for (ClientId x : present) {
            if (!source) {
              source = x;
              continue;
            }
            auto kx = std::tie(v[x].generation, v[x].flush),
                 ks = std::tie(v[*source].generation, v[*source].flush);
            if (kx > ks || (kx == ks && v[x].dirty && !v[*source].dirty)) source = x;
          }
          std::vector<ClientId> dests;
          for (ClientId x : present)
            if (x != *source && (v[*source].dirty || v[x] != v[*source])) dests.push_back(x);
          auto m = mend_extent(ExtentId{0}, v, present);
          SCOPED_TRACE(testing::Message()
                       << "case " << a << "," << b << "," << c << " present " << present.size());
          ASSERT_EQ(m.has_value(), needed);
          if (m) {
            EXPECT_EQ(m->source, *source);
            EXPECT_EQ(m->dests, dests);
          }
          ++checked;
        }
  EXPECT_EQ(checked, 512 * 4);
}

// ---- 2. the live-repair state machine ------------------------------------------------------

// An active volume over three downstairs the test answers; a helper faults one and brings
// it back, after which the core live-repairs it.
class LiveRepair : public ::testing::Test {
 protected:
  // What a target reports it received for one copied extent: less than the extent, as
  // only its differing chunks cross the network.
  static constexpr uint64_t kReportedBytes = kExtentSize * kBs / 3;

  void SetUp() override {
    GuestId g = h.activate(std::nullopt, ds);
    ASSERT_TRUE(h.done(g));
    ASSERT_TRUE(h.reply(g).status) << h.reply(g).status.error().to_string();
    ASSERT_TRUE(h.up().active());
    close_version = ClientData<ExtentVersion>(ver(1, 1));
  }

  Snapshot snap() { return h.up().snapshot(); }
  std::string state(ClientId c) { return snap().clients[c].state; }
  bool faulted(ClientId c) { return state(c).find("faulted") != std::string::npos; }

  // The connection to `c` is gone: so is everything it was sent and had not answered.
  void drop(ClientId c) {
    h.inbox(c).clear();
    answered[c].clear();
  }

  // Drops the inboxes of the connections the core has closed since the last call.
  void drop_disconnected() {
    for (; disconnects_seen < h.disconnects().size(); ++disconnects_seen) {
      const Disconnect& d = h.disconnects()[disconnects_seen];
      ConnId latest;
      for (const ConnectTo& c : h.connects())
        if (c.client == d.client) latest = c.conn;
      if (d.conn == latest) drop(d.client);
    }
  }

  // `c` fails a write (by default on the last block, which reads in these tests never
  // touch): the core faults it and drops its connection. A flush then settles the others
  // so no timer fires an automatic flush later.
  void fault(ClientId c, uint64_t block = kTotalBlocks - 1) {
    GuestId w = h.submit(write_op(block, 1, 99));
    ASSERT_TRUE(h.done(w));
    for (ClientId o : kAllClients) {
      ASSERT_FALSE(h.inbox(o).empty());
      Message m = h.inbox(o).front();
      h.inbox(o).pop_front();
      reply(o, m,
            o == c ? WireStatus{ErrorCode::kIo, "test: injected write error"} : WireStatus::ok());
    }
    drop(c);
    GuestId f = h.submit(FlushOp{});
    answer_all();
    ASSERT_TRUE(h.done(f));
    ASSERT_TRUE(h.reply(f).status);
    ASSERT_TRUE(faulted(c)) << state(c);
    for (ClientId o : kAllClients) ASSERT_TRUE(h.inbox(o).empty()) << describe(h.inbox(o).front());
  }

  // Runs the clock until each of `cs` was sent a new connect, playing each through
  // negotiation as it comes. With `answer_others`, the live downstairs answer whatever
  // the ticks produce (e.g. an automatic flush) along the way.
  void reconnect(std::vector<ClientId> cs, bool answer_others = true) {
    std::set<ClientId> want(cs.begin(), cs.end());
    size_t seen = h.connects().size();
    for (int i = 0; i < 200 && !want.empty(); ++i) {
      TimePoint d = h.up().next_deadline();
      ASSERT_NE(d, TimePoint::max()) << "no timer is due";
      h.tick_at(d);
      h.drop_pings();
      if (answer_others) answer_all();
      if (h.connects().size() == seen) continue;
      for (; seen < h.connects().size(); ++seen) {
        want.erase(h.connects()[seen].client);
        answered[h.connects()[seen].client].clear();  // a new connection remembers nothing
      }
      h.negotiate(ds);
    }
    ASSERT_TRUE(want.empty()) << "a downstairs was never reconnected";
  }

  // Answers one job message the way a downstairs would (reads return zeros: the tests
  // only read never-written blocks).
  void reply(ClientId c, const Message& m, WireStatus st = WireStatus::ok()) {
    auto v = job_view(m);
    ASSERT_TRUE(v) << "not a job: " << describe(m);
    answered[c].insert(v->id);
    if (std::holds_alternative<ExtentLiveClose>(m) ||
        std::holds_alternative<ExtentLiveFlushClose>(m)) {
      h.deliver(c, ExtentLiveCloseAck{v->id, st, close_version[c]});
    } else if (auto* r = std::get_if<Read>(&m)) {
      ReadResponse resp;
      resp.job_id = r->job_id;
      resp.status = st;
      resp.block_size = kBs;
      if (st.is_ok()) {
        resp.contexts.assign(r->block_count, std::nullopt);
        resp.data = Bytes::zeros(r->block_count * kBs);
      }
      h.deliver(c, std::move(resp));
    } else {
      h.ack(c, v->id, st);
    }
  }

  // Every downstairs answers, oldest first, every job whose dependencies it has already
  // answered (as a real one would run them), until nothing more can run. Jobs in `hold`
  // are left unanswered.
  void answer_all(const std::set<JobId>& hold = {}) {
    for (bool progress = true; progress;) {
      progress = false;
      h.drop_pings();
      drop_disconnected();
      for (ClientId c : kAllClients) progress |= answer_next(c, hold);
    }
  }
  // Answers one job (the first that can run, trying the downstairs in order); false if
  // none can.
  bool answer_one(const std::set<JobId>& hold = {}) {
    h.drop_pings();
    drop_disconnected();
    for (ClientId c : kAllClients)
      if (answer_next(c, hold)) return true;
    return false;
  }
  // `c` answers its oldest job whose dependencies it has answered, if any.
  bool answer_next(ClientId c, const std::set<JobId>& hold) {
    auto& q = h.inbox(c);
    for (auto it = q.begin(); it != q.end(); ++it) {
      auto v = job_view(*it);
      if (!v || hold.contains(v->id)) continue;  // negotiation is not ours to answer
      if (!std::all_of(v->deps.begin(), v->deps.end(),
                       [&](JobId d) { return answered[c].contains(d); }))
        continue;
      Message m = std::move(*it);
      q.erase(it);
      reply(c, m);
      return true;
    }
    return false;
  }
  // Jobs some downstairs holds but can never run (a dependency it will never see).
  std::string stuck() {
    std::string out;
    for (ClientId c : kAllClients)
      for (const Message& m : h.inbox(c))
        if (job_view(m)) out += fmt::format("ds{}: {}; ", int(c.value), describe(m));
    return out;
  }

  // Removes and returns the message with job id `id` from `c`'s inbox.
  std::optional<Message> take_job(ClientId c, JobId id) {
    auto& q = h.inbox(c);
    for (auto it = q.begin(); it != q.end(); ++it)
      if (auto v = job_view(*it); v && v->id == id) {
        Message m = std::move(*it);
        q.erase(it);
        return m;
      }
    return std::nullopt;
  }

  // Checks the close of extent `e` waiting in the inboxes: ExtentLiveClose to each
  // target, ExtentLiveFlushClose (this generation) to the others, one job id everywhere.
  JobId expect_close(uint32_t e, const std::vector<ClientId>& targets,
                     const std::vector<ClientId>& healthy) {
    std::optional<JobId> id;
    auto same = [&](JobId x) {
      if (!id) id = x;
      EXPECT_EQ(x, *id) << "the close has one id on every downstairs";
    };
    for (ClientId c : kAllClients) {
      bool is_target = contains(targets, c);
      if (!is_target && !contains(healthy, c)) continue;
      bool found = false;
      for (const Message& m : h.inbox(c)) {
        if (auto* lc = std::get_if<ExtentLiveClose>(&m)) {
          EXPECT_TRUE(is_target) << "ExtentLiveClose to healthy downstairs " << int(c.value);
          EXPECT_EQ(lc->extent, ExtentId{e});
          same(lc->job_id);
          found = true;
          break;
        }
        if (auto* fc = std::get_if<ExtentLiveFlushClose>(&m)) {
          EXPECT_FALSE(is_target) << "ExtentLiveFlushClose to the repair target " << int(c.value);
          EXPECT_EQ(fc->extent, ExtentId{e});
          EXPECT_EQ(fc->generation, snap().generation);
          same(fc->job_id);
          found = true;
          break;
        }
      }
      EXPECT_TRUE(found) << "downstairs " << int(c.value) << " was sent no close of extent " << e;
    }
    return id.value_or(JobId{});
  }

  // Plays extent `e` of a repair through close (each answers with close_version),
  // repair (ExtentLiveRepair to `copy_to` from `source`, a no-op to the others) and
  // reopen, checking each step's messages. Downstairs in `gone` are not connected.
  void run_extent(uint32_t e, const std::vector<ClientId>& targets,
                  const std::vector<ClientId>& copy_to, ClientId source,
                  const std::vector<ClientId>& gone = {}) {
    std::vector<ClientId> live, healthy;
    for (ClientId c : kAllClients) {
      if (contains(gone, c)) continue;
      live.push_back(c);
      if (!contains(targets, c)) healthy.push_back(c);
    }
    JobId close = expect_close(e, targets, healthy);
    for (ClientId c : live) {
      auto m = take_job(c, close);
      ASSERT_TRUE(m);
      reply(c, *m);
    }
    JobId rep = close.next();
    for (ClientId c : live) {
      auto m = take_job(c, rep);
      ASSERT_TRUE(m) << "no repair step for extent " << e << " on downstairs " << int(c.value);
      if (contains(copy_to, c)) {
        auto* lr = std::get_if<ExtentLiveRepair>(&*m);
        ASSERT_TRUE(lr) << "downstairs " << int(c.value) << " differs but was sent "
                        << describe(*m);
        EXPECT_EQ(lr->extent, ExtentId{e});
        EXPECT_EQ(lr->source, source);
        EXPECT_EQ(lr->source_addr, snap().clients[source].target);
        reply(c, *m, repair_done_status(kReportedBytes));
      } else {
        EXPECT_TRUE(std::holds_alternative<ExtentLiveNoOp>(*m))
            << "downstairs " << int(c.value) << " needs no copy but was sent " << describe(*m);
        reply(c, *m);
      }
    }
    JobId reopen = rep.next();
    for (ClientId c : live) {
      auto m = take_job(c, reopen);
      ASSERT_TRUE(m) << "no reopen of extent " << e << " on downstairs " << int(c.value);
      auto* ro = std::get_if<ExtentLiveReopen>(&*m);
      ASSERT_TRUE(ro) << describe(*m);
      EXPECT_EQ(ro->extent, ExtentId{e});
      reply(c, *m);
    }
  }

  // Answers the final flush of a repair: a Flush to all three with no extent limit.
  void run_final_flush() {
    for (ClientId c : kAllClients) {
      auto& q = h.inbox(c);
      ASSERT_EQ(q.size(), 1u) << "downstairs " << int(c.value) << ": " << stuck();
      auto* f = std::get_if<Flush>(&q.front());
      ASSERT_TRUE(f) << describe(q.front());
      EXPECT_FALSE(f->extent_limit) << "the final flush covers every extent";
    }
    answer_all();
  }

  ClientData<FakeDs> ds;
  Harness h;
  ClientData<ExtentVersion> close_version;
  ClientData<std::set<JobId>> answered;
  size_t disconnects_seen = 0;
};

TEST_F(LiveRepair, FaultedDownstairsIsRepairedExtentByExtentThenAFinalFlushMakesItActive) {
  fault(kC2);
  EXPECT_EQ(snap().live_repairs_completed, 0u);
  reconnect({kC2});
  Snapshot s = snap();
  EXPECT_EQ(s.clients[kC2].state, "live_repair");
  EXPECT_EQ(s.clients[kC2].live_repairs, 1u);
  ASSERT_TRUE(s.repair.running);
  EXPECT_EQ(s.repair.targets, (std::vector<ClientId>{kC2}));
  EXPECT_EQ(s.repair.source, kC0);
  EXPECT_EQ(s.repair.extent, ExtentId{0});
  EXPECT_EQ(s.repair.extent_count, kExtents);
  EXPECT_EQ(s.repair.extents_repaired + s.repair.extents_confirmed + s.repair.bytes_transferred,
            0u);

  // Extents 0 and 2 differ on the target (0: older flush, 2: dirty); 1 and 3 match.
  const ExtentVersion healthy = ver(1, 3);
  const ExtentVersion target[kExtents] = {ver(1, 2), ver(1, 3), ver(1, 3, true), ver(1, 3)};
  uint64_t copied = 0, confirmed = 0;
  for (uint32_t e = 0; e < kExtents; ++e) {
    SCOPED_TRACE(testing::Message() << "extent " << e);
    close_version = ClientData<ExtentVersion>(healthy);
    close_version[kC2] = target[e];
    bool copy = target[e] != healthy;
    run_extent(e, {kC2}, copy ? std::vector<ClientId>{kC2} : std::vector<ClientId>{}, kC0);
    (copy ? copied : confirmed) += 1;
    s = snap();
    ASSERT_TRUE(s.repair.running);
    EXPECT_EQ(s.repair.extents_repaired, copied);
    EXPECT_EQ(s.repair.extents_confirmed, confirmed);
    EXPECT_EQ(s.repair.bytes_transferred, copied * kReportedBytes)
        << "what the targets report they received counts, not whole extents";
    EXPECT_EQ(s.clients[kC2].state, "live_repair") << "not active before the final flush";
    if (e + 1 < kExtents) {
      EXPECT_EQ(s.repair.extent, ExtentId{static_cast<uint32_t>(e + 1)});
    }
  }
  run_final_flush();
  s = snap();
  EXPECT_EQ(s.clients[kC2].state, "active");
  EXPECT_FALSE(s.repair.running);
  EXPECT_EQ(s.live_repairs_completed, 1u);
  EXPECT_EQ(s.live_repairs_aborted, 0u);
  for (ClientId c : kAllClients) EXPECT_TRUE(h.inbox(c).empty()) << describe(h.inbox(c).front());
  // Back in full service: a write goes to all three again.
  GuestId w = h.submit(write_op(kExtentSize * 3, 1, 5));
  ASSERT_TRUE(h.done(w));
  EXPECT_EQ(h.newest(kC2), h.newest(kC0));
}

TEST_F(LiveRepair, ExtentsWhoseTuplesMatchAreNeverCopied) {
  fault(kC2);
  reconnect({kC2});
  for (uint32_t e = 0; e < kExtents; ++e) run_extent(e, {kC2}, {}, kC0);
  run_final_flush();
  EXPECT_EQ(state(kC2), "active");
  for (const Message& m : h.jobs_sent(kC2))
    EXPECT_FALSE(std::holds_alternative<ExtentLiveRepair>(m)) << describe(m);
  EXPECT_EQ(snap().live_repairs_completed, 1u);
}

TEST_F(LiveRepair, OnlyTheDestinationIsToldToCopyAndNeverTheSource) {
  fault(kC2);
  reconnect({kC2});
  close_version[kC2] = ver(1, 0);
  for (uint32_t e = 0; e < kExtents; ++e) run_extent(e, {kC2}, {kC2}, kC0);
  run_final_flush();
  for (ClientId c : {kC0, kC1})
    for (const Message& m : h.jobs_sent(c))
      EXPECT_FALSE(std::holds_alternative<ExtentLiveRepair>(m)) << describe(m);
  EXPECT_EQ(state(kC2), "active");
}

TEST_F(LiveRepair, GuestIoWaitsForTheReopenOfTheExtentUnderRepairAndSkipsTheTargetAboveIt) {
  fault(kC2);
  reconnect({kC2});
  close_version[kC2] = ver(1, 0);
  run_extent(0, {kC2}, {kC2}, kC0);
  JobId close1 = expect_close(1, {kC2}, {kC0, kC1});
  JobId reopen1 = close1.next().next();
  ASSERT_EQ(snap().repair.extent, ExtentId{1});

  // At the extent under repair: sent to all three, and ordered after its reopen.
  GuestId w_at = h.submit(write_op(kExtentSize + 1, 2, 1));
  JobId at = h.newest(kC0);
  for (ClientId c : kAllClients) {
    ASSERT_TRUE(h.sent(c, at)) << "downstairs " << int(c.value);
    auto d = h.deps(c, at);
    EXPECT_TRUE(std::find(d.begin(), d.end(), reopen1) != d.end())
        << "downstairs " << int(c.value) << ": the write does not wait for the reopen";
  }
  // Below the repair point: repaired already, so the target gets it, with no wait.
  h.submit(write_op(2, 1, 2));
  JobId below = h.newest(kC0);
  ASSERT_TRUE(h.sent(kC2, below)) << "IO below the repair point reaches the repairing downstairs";
  for (ClientId c : kAllClients) {
    auto d = h.deps(c, below);
    EXPECT_TRUE(std::find(d.begin(), d.end(), reopen1) == d.end());
  }
  // Above: it will be copied later, so the target is skipped.
  h.submit(write_op(kExtentSize * 3 + 2, 2, 3));
  JobId above = h.newest(kC0);
  EXPECT_TRUE(h.sent(kC1, above));
  EXPECT_FALSE(h.sent(kC2, above)) << "IO above the repair point skips the repairing downstairs";
  // A read of the extent under repair: never from the target, and after the reopen.
  GuestId r = h.submit(ReadOp{BlockIndex{kExtentSize + 4}, 2});
  std::optional<ClientId> reader;
  for (ClientId c : kAllClients)
    if (std::holds_alternative<Read>(h.jobs_sent(c).back())) reader = c;
  ASSERT_TRUE(reader);
  EXPECT_NE(*reader, kC2) << "reads never go to the repairing downstairs";
  auto rd = h.deps(*reader, h.newest(*reader));
  EXPECT_TRUE(std::find(rd.begin(), rd.end(), reopen1) != rd.end())
      << "the read does not wait for the reopen";
  // A flush: the target flushes only the extents up to the repair point.
  GuestId f = h.submit(FlushOp{});
  JobId fid = h.newest(kC0);
  for (ClientId c : kAllClients) {
    auto m = h.sent(c, fid);
    ASSERT_TRUE(m && std::holds_alternative<Flush>(*m));
    if (c == kC2)
      EXPECT_EQ(std::get<Flush>(*m).extent_limit, ExtentId{1});
    else
      EXPECT_FALSE(std::get<Flush>(*m).extent_limit);
  }

  // Nothing that waits on the reopen can complete before it: with the close of extent 1
  // held, the downstairs answer all they can, and the read and flush stay unanswered.
  answer_all({close1});
  EXPECT_FALSE(h.done(r)) << "the read completed before the extent was reopened";
  EXPECT_FALSE(h.done(f));
  EXPECT_TRUE(h.done(w_at)) << "writes are acknowledged once queued";
  // Finish the repair; every guest operation completes, and the target becomes active.
  for (int i = 0; i < 10 && state(kC2) != "active"; ++i) answer_all();
  EXPECT_EQ(stuck(), "");
  ASSERT_TRUE(h.done(r));
  ASSERT_TRUE(h.reply(r).status);
  EXPECT_EQ(h.reply(r).read.data, Bytes::zeros(2 * kBs));
  ASSERT_TRUE(h.done(f));
  EXPECT_TRUE(h.reply(f).status);
  EXPECT_EQ(state(kC2), "active");
  EXPECT_EQ(snap().live_repairs_completed, 1u);
}

TEST_F(LiveRepair, ReconnectingWhileAnAbortedRepairWindsDownWaitsInLiveRepairReady) {
  fault(kC2);
  reconnect({kC2});
  JobId close0 = expect_close(0, {kC2}, {kC0, kC1});
  // The target fails its close; the healthy ones have not answered theirs yet.
  reply(kC2, *take_job(kC2, close0), WireStatus{ErrorCode::kIo, "test: close failed"});
  drop(kC2);
  EXPECT_TRUE(faulted(kC2)) << state(kC2);
  ASSERT_TRUE(snap().repair.running) << "the healthy downstairs still hold the extent closed";
  reconnect({kC2}, /*answer_others=*/false);
  EXPECT_NE(state(kC2).find("live_repair_ready"), std::string::npos) << state(kC2);
  EXPECT_EQ(snap().repair.extent, ExtentId{0});
  EXPECT_EQ(snap().live_repairs_aborted, 0u);
  // The old repair finishes with no-ops and a reopen on the healthy ones; then the new one
  // starts from extent 0.
  for (ClientId c : {kC0, kC1}) reply(c, *take_job(c, close0));
  for (ClientId c : {kC0, kC1}) {
    auto m = take_job(c, close0.next());
    ASSERT_TRUE(m);
    EXPECT_TRUE(std::holds_alternative<ExtentLiveNoOp>(*m)) << describe(*m);
    reply(c, *m);
  }
  for (ClientId c : {kC0, kC1}) {
    auto m = take_job(c, close0.next().next());
    ASSERT_TRUE(m);
    EXPECT_TRUE(std::holds_alternative<ExtentLiveReopen>(*m)) << describe(*m);
    reply(c, *m);
  }
  EXPECT_TRUE(h.inbox(kC2).empty())
      << "the waiting downstairs is sent nothing: " << describe(h.inbox(kC2).front());
  for (ClientId c : {kC0, kC1}) {  // the aborted repair's final flush
    ASSERT_EQ(h.inbox(c).size(), 1u);
    ASSERT_TRUE(std::holds_alternative<Flush>(h.inbox(c).front())) << describe(h.inbox(c).front());
    reply(c, *take_job(c, job_view(h.inbox(c).front())->id));
  }
  Snapshot s = snap();
  EXPECT_EQ(s.live_repairs_aborted, 1u);
  ASSERT_TRUE(s.repair.running) << "the new repair starts at once";
  EXPECT_EQ(s.repair.extent, ExtentId{0});
  EXPECT_EQ(s.clients[kC2].state, "live_repair");
  for (uint32_t e = 0; e < kExtents; ++e) run_extent(e, {kC2}, {}, kC0);
  run_final_flush();
  EXPECT_EQ(state(kC2), "active");
  EXPECT_EQ(snap().live_repairs_completed, 1u);
}

// ---- aborts --------------------------------------------------------------------------------

enum class Step { kClose, kRepair, kReopen };
enum class Cause { kTargetFails, kSourceFails, kTargetDisconnects, kSourceDisconnects };

std::string name_of(Step s) {
  return s == Step::kClose ? "Close" : s == Step::kRepair ? "Repair" : "Reopen";
}
std::string name_of(Cause c) {
  switch (c) {
    case Cause::kTargetFails:
      return "TargetFails";
    case Cause::kSourceFails:
      return "SourceFails";
    case Cause::kTargetDisconnects:
      return "TargetDisconnects";
    case Cause::kSourceDisconnects:
      return "SourceDisconnects";
  }
  return "?";
}

void PrintTo(Step s, std::ostream* os) { *os << name_of(s); }
void PrintTo(Cause c, std::ostream* os) { *os << name_of(c); }

class LiveRepairAbort : public LiveRepair,
                        public ::testing::WithParamInterface<std::tuple<Step, Cause>> {};

// Extent 0 is repaired; during extent 1 guest IO queues behind the repair; then the
// repair breaks at one step. Whatever is left of it must run as no-ops so every guest
// operation completes; the lost downstairs are faulted; the abort is counted; and once
// they return, repair starts again from extent 0 and finishes.
TEST_P(LiveRepairAbort, LeavesNoGuestIoStrandedAndRestartsFromTheFirstExtent) {
  const auto [step, cause] = GetParam();
  const bool source_lost = cause == Cause::kSourceFails || cause == Cause::kSourceDisconnects;
  const ClientId lost = source_lost ? kC0 : kC2;
  fault(kC2);
  reconnect({kC2});
  close_version[kC2] = ver(1, 0);  // every extent differs on the target: copies happen
  run_extent(0, {kC2}, {kC2}, kC0);
  JobId close1 = expect_close(1, {kC2}, {kC0, kC1});
  const JobId repair1 = close1.next(), reopen1 = repair1.next();

  GuestId w = h.submit(write_op(kExtentSize + 1, 1, 7));  // the extent under repair
  GuestId r = h.submit(ReadOp{BlockIndex{kExtentSize + 4}, 2});
  GuestId f = h.submit(FlushOp{});
  ASSERT_TRUE(h.done(w));
  ASSERT_FALSE(h.done(r));
  ASSERT_FALSE(h.done(f));

  // Walk the extent up to the failing step.
  JobId at = close1;
  if (step != Step::kClose) {
    for (ClientId c : kAllClients) reply(c, *take_job(c, close1));
    at = repair1;
    auto m = take_job(kC2, repair1);
    ASSERT_TRUE(m && std::holds_alternative<ExtentLiveRepair>(*m))
        << "the target differs: it copies";
    h.inbox(kC2).push_front(*m);
  }
  if (step == Step::kReopen) {
    for (ClientId c : kAllClients) reply(c, *take_job(c, repair1));
    at = reopen1;
  }
  size_t sent_before[kClientCount];
  for (ClientId c : kAllClients) sent_before[c.value] = h.jobs_sent(c).size();

  switch (cause) {
    case Cause::kTargetFails:
    case Cause::kSourceFails: {
      auto m = take_job(lost, at);
      ASSERT_TRUE(m) << "downstairs " << int(lost.value) << " holds no job " << at.value;
      reply(lost, *m, WireStatus{ErrorCode::kIo, "test: injected repair-step error"});
      EXPECT_TRUE(std::any_of(h.disconnects().begin(), h.disconnects().end(),
                              [&](const Disconnect& d) { return d.client == lost; }))
          << "the failing downstairs is dropped";
      break;
    }
    case Cause::kTargetDisconnects:
    case Cause::kSourceDisconnects:
      h.disconnect(lost);
      break;
  }
  drop(lost);
  EXPECT_TRUE(faulted(lost)) << state(lost);
  EXPECT_TRUE(faulted(kC2)) << "the target goes back to faulted: " << state(kC2);

  // The survivors answer everything they can run.
  answer_all();
  EXPECT_EQ(stuck(), "") << "jobs left waiting for something that never comes";
  ASSERT_TRUE(h.done(r)) << "the read is stranded";
  ASSERT_TRUE(h.reply(r).status) << h.reply(r).status.error().to_string();
  EXPECT_EQ(h.reply(r).read.data, Bytes::zeros(2 * kBs));
  ASSERT_TRUE(h.done(f)) << "the flush is stranded";
  // (With the source lost too only one downstairs is left, and the flush fails.)
  if (!source_lost) {
    EXPECT_TRUE(h.reply(f).status) << "two healthy downstairs made it durable";
  }
  for (ClientId c : kAllClients)
    EXPECT_EQ(snap().clients[c].jobs_in_flight, 0u) << "downstairs " << int(c.value);

  // After the failure no copy was started and no further extent was closed; the
  // extent the healthy downstairs had closed was reopened.
  for (ClientId c : kAllClients)
    for (size_t i = sent_before[c.value]; i < h.jobs_sent(c).size(); ++i) {
      const Message& m = h.jobs_sent(c)[i];
      EXPECT_FALSE(std::holds_alternative<ExtentLiveRepair>(m))
          << int(c.value) << ": " << describe(m);
      EXPECT_FALSE(std::holds_alternative<ExtentLiveClose>(m))
          << int(c.value) << ": " << describe(m);
      EXPECT_FALSE(std::holds_alternative<ExtentLiveFlushClose>(m))
          << int(c.value) << ": " << describe(m);
    }
  if (step == Step::kClose) {
    auto m = h.sent(kC1, repair1);
    ASSERT_TRUE(m);
    EXPECT_TRUE(std::holds_alternative<ExtentLiveNoOp>(*m))
        << "the repair job became a no-op: " << describe(*m);
  }
  auto reopen = h.sent(kC1, reopen1);
  ASSERT_TRUE(reopen) << "the extent closed on the healthy downstairs is reopened";
  EXPECT_TRUE(std::holds_alternative<ExtentLiveReopen>(*reopen));

  Snapshot s = snap();
  EXPECT_FALSE(s.repair.running);
  EXPECT_EQ(s.live_repairs_aborted, 1u);
  EXPECT_EQ(s.live_repairs_completed, 0u);
  EXPECT_EQ(s.clients[kC1].state, "active");
  if (cause == Cause::kTargetFails) {
    EXPECT_EQ(s.clients[kC2].faults, 2u) << "the write error, then the failed step";
  }
  if (cause == Cause::kTargetDisconnects) {
    EXPECT_EQ(s.clients[kC2].faults, 2u)
        << "the write error, then the disconnect during its repair";
  }
  if (cause == Cause::kSourceFails) {
    EXPECT_EQ(s.clients[kC0].faults, 1u);
  }

  // They come back; repair starts over at extent 0 with fresh counters and finishes.
  std::vector<ClientId> back =
      source_lost ? std::vector<ClientId>{kC0, kC2} : std::vector<ClientId>{kC2};
  reconnect(back, /*answer_others=*/false);
  s = snap();
  ASSERT_TRUE(s.repair.running);
  EXPECT_EQ(s.repair.extent, ExtentId{0}) << "repair restarts from the beginning";
  EXPECT_EQ(s.repair.extents_repaired + s.repair.extents_confirmed + s.repair.bytes_transferred,
            0u);
  EXPECT_EQ(s.repair.source, kC1)
      << "after an abort the next healthy downstairs is the source (or the only one)";
  bool saw_close0 = false;
  for (ClientId c : kAllClients)
    for (const Message& m : h.inbox(c))
      if (auto* lc = std::get_if<ExtentLiveClose>(&m)) saw_close0 |= lc->extent == ExtentId{0};
  EXPECT_TRUE(saw_close0) << "the new repair closes extent 0 first";
  for (int i = 0; i < 20 && !(state(kC0) == "active" && state(kC2) == "active"); ++i) answer_all();
  for (ClientId c : kAllClients) EXPECT_EQ(state(c), "active") << "downstairs " << int(c.value);
  EXPECT_EQ(snap().live_repairs_aborted, 1u);
  EXPECT_GE(snap().live_repairs_completed, 1u);
  EXPECT_EQ(snap().clients[kC2].live_repairs, 2u);
}

INSTANTIATE_TEST_SUITE_P(
    EachStepAndCause, LiveRepairAbort,
    ::testing::Combine(::testing::Values(Step::kClose, Step::kRepair, Step::kReopen),
                       ::testing::Values(Cause::kTargetFails, Cause::kSourceFails,
                                         Cause::kTargetDisconnects, Cause::kSourceDisconnects)),
    [](const auto& p) {
      return name_of(std::get<0>(p.param)) + "_" + name_of(std::get<1>(p.param));
    });

// A healthy downstairs that is not the source failing its flush-close also stops the
// repair cleanly (it no longer holds a faithful replica).
TEST_F(LiveRepair, AbortWhenTheOtherHealthyDownstairsFailsItsFlushClose) {
  fault(kC2);
  reconnect({kC2});
  JobId close0 = expect_close(0, {kC2}, {kC0, kC1});
  GuestId w = h.submit(write_op(3, 1, 7));
  reply(kC1, *take_job(kC1, close0), WireStatus{ErrorCode::kIo, "test: flush-close failed"});
  drop(kC1);
  answer_all();
  EXPECT_EQ(stuck(), "");
  EXPECT_TRUE(h.done(w));
  Snapshot s = snap();
  EXPECT_FALSE(s.repair.running);
  EXPECT_EQ(s.live_repairs_aborted, 1u);
  EXPECT_TRUE(faulted(kC1)) << state(kC1);
  EXPECT_TRUE(faulted(kC2)) << state(kC2);
  EXPECT_EQ(state(kC0), "active");
  reconnect({kC1, kC2}, false);
  for (int i = 0; i < 20 && !(state(kC1) == "active" && state(kC2) == "active"); ++i) answer_all();
  for (ClientId c : kAllClients) EXPECT_EQ(state(c), "active") << "downstairs " << int(c.value);
}

// The third downstairs (neither source nor target) dropping does not stop the repair:
// the source still copies to the target, and the dropped one waits its turn.
TEST_F(LiveRepair, TheOtherHealthyDownstairsDroppingLeavesTheRepairRunning) {
  fault(kC2);
  reconnect({kC2});
  close_version[kC2] = ver(1, 0);
  run_extent(0, {kC2}, {kC2}, kC0);
  h.disconnect(kC1);
  drop(kC1);
  EXPECT_TRUE(faulted(kC1)) << "replay is impossible across a repair: " << state(kC1);
  Snapshot s = snap();
  ASSERT_TRUE(s.repair.running);
  EXPECT_EQ(s.live_repairs_aborted, 0u);
  GuestId f = h.submit(FlushOp{});
  for (uint32_t e = 1; e < kExtents; ++e) run_extent(e, {kC2}, {kC2}, kC0, {kC1});
  answer_all();
  ASSERT_TRUE(h.done(f));
  EXPECT_TRUE(h.reply(f).status);
  EXPECT_EQ(state(kC2), "active");
  EXPECT_EQ(snap().live_repairs_completed, 1u);
  reconnect({kC1});
  EXPECT_EQ(state(kC1), "live_repair");
  EXPECT_EQ(snap().repair.extent, ExtentId{0});
}

// ---- the flush quorum with a replica under repair (docs/fault-model.md) -------------------

class RepairQuorum : public LiveRepair {
 protected:
  // kC2 faulted by a failed write to extent 0, back under live repair with extent 0
  // repaired; then kC1 drops (faulted: no replay across a repair). One good replica and
  // one under repair, at extent 1.
  void SetUp() override {
    LiveRepair::SetUp();
    fault(kC2, 0);
    reconnect({kC2});
    close_version[kC2] = ver(1, 0);  // every extent differs: each is copied
    run_extent(0, {kC2}, {kC2}, kC0);
    h.disconnect(kC1);
    drop(kC1);
    ASSERT_TRUE(faulted(kC1)) << state(kC1);
    ASSERT_EQ(state(kC2), "live_repair");
    ASSERT_EQ(snap().repair.extent, ExtentId{1});
  }
  // Whether kC2 was sent the reopen of extent `e` (its repair step completed everywhere).
  bool reopen_sent(uint32_t e) {
    for (const Message& m : h.jobs_sent(kC2))
      if (auto* r = std::get_if<ExtentLiveReopen>(&m); r && r->extent == ExtentId{e}) return true;
    return false;
  }
};

TEST_F(RepairQuorum, AFlushOfWritesBelowTheRepairPointIsAcknowledgedByTheGoodOneAndTheTarget) {
  GuestId w = h.submit(write_op(1, 1, 5));  // extent 0, repaired: the target takes it
  ASSERT_TRUE(h.sent(kC2, h.newest(kC0)));
  GuestId f = h.submit(FlushOp{});
  ASSERT_TRUE(h.done(w) && h.reply(w).status);
  while (!h.done(f) && answer_one()) {
  }
  ASSERT_TRUE(h.done(f)) << stuck();
  EXPECT_TRUE(h.reply(f).status) << h.reply(f).status.error().to_string();
  EXPECT_FALSE(reopen_sent(2)) << "it did not wait for the repair to pass further extents";
}

TEST_F(RepairQuorum, AFlushOfAWriteAboveTheRepairPointWaitsUntilTheRepairPassedItsExtent) {
  GuestId w = h.submit(write_op(3 * kExtentSize + 1, 1, 6));  // extent 3: the target skips it
  ASSERT_FALSE(h.sent(kC2, h.newest(kC0)));
  ASSERT_TRUE(h.done(w) && h.reply(w).status);
  GuestId f = h.submit(FlushOp{});
  JobId fid = h.newest(kC0);
  bool flushed_on_both = false;
  while (!h.done(f) && answer_one()) {
    flushed_on_both = answered[kC0].contains(fid) && answered[kC2].contains(fid);
    if (h.done(f)) break;
  }
  EXPECT_TRUE(flushed_on_both);
  ASSERT_TRUE(h.done(f)) << stuck();
  EXPECT_TRUE(h.reply(f).status) << h.reply(f).status.error().to_string();
  EXPECT_TRUE(reopen_sent(3))
      << "acknowledged while the write existed on one replica only (the repair had not "
         "copied extent 3 yet)";
}

TEST_F(RepairQuorum, AFlushWaitingOnTheTargetFailsIfTheTargetIsLost) {
  h.submit(write_op(3 * kExtentSize + 1, 1, 6));
  GuestId f = h.submit(FlushOp{});
  JobId fid = h.newest(kC0);
  while (!(answered[kC0].contains(fid) && answered[kC2].contains(fid)) && answer_one()) {
  }
  ASSERT_FALSE(h.done(f));
  h.disconnect(kC2);
  drop(kC2);
  answer_all();
  ASSERT_TRUE(h.done(f));
  EXPECT_FALSE(h.reply(f).status) << "one replica holds the write";
}

// ---- 3. replacement -------------------------------------------------------------------------

using Replace = LiveRepair;

TEST_F(Replace, RefusedWhileAnotherReplicaIsFaulted) {
  fault(kC1);
  GuestId g = h.submit(ReplaceOp{"127.0.0.1:3803", "127.0.0.1:3900"});
  ASSERT_TRUE(h.done(g));
  ASSERT_FALSE(h.reply(g).status);
  EXPECT_EQ(h.reply(g).status.error().code, ErrorCode::kBusy);
  EXPECT_EQ(snap().clients[kC2].target, "127.0.0.1:3803");
  EXPECT_EQ(state(kC2), "active");
}

TEST_F(Replace, RefusedWhileAnotherReplicaIsOffline) {
  h.disconnect(kC0);
  drop(kC0);
  ASSERT_NE(state(kC0).find("offline"), std::string::npos) << state(kC0);
  GuestId g = h.submit(ReplaceOp{"127.0.0.1:3803", "127.0.0.1:3900"});
  ASSERT_TRUE(h.done(g));
  ASSERT_FALSE(h.reply(g).status);
  EXPECT_EQ(h.reply(g).status.error().code, ErrorCode::kBusy);
  EXPECT_EQ(snap().clients[kC2].target, "127.0.0.1:3803");
}

TEST_F(Replace, RefusedWhileAnotherReplicaIsBeingRepaired) {
  fault(kC1);
  reconnect({kC1});
  ASSERT_EQ(state(kC1), "live_repair");
  GuestId g = h.submit(ReplaceOp{"127.0.0.1:3803", "127.0.0.1:3900"});
  ASSERT_TRUE(h.done(g));
  ASSERT_FALSE(h.reply(g).status);
  EXPECT_EQ(h.reply(g).status.error().code, ErrorCode::kBusy);
  EXPECT_EQ(state(kC2), "active");
  EXPECT_TRUE(snap().repair.running);
}

TEST_F(Replace, RefusedForAnUnknownOldTarget) {
  GuestId g = h.submit(ReplaceOp{"127.0.0.1:9999", "127.0.0.1:3900"});
  ASSERT_TRUE(h.done(g));
  ASSERT_FALSE(h.reply(g).status);
  EXPECT_EQ(h.reply(g).status.error().code, ErrorCode::kNotFound);
  EXPECT_NE(h.reply(g).status.error().message.find("127.0.0.1:9999"), std::string::npos);
  for (ClientId c : kAllClients) EXPECT_EQ(state(c), "active");
  EXPECT_TRUE(h.disconnects().empty());
}

TEST_F(Replace, RefusedForANewTargetAlreadyInUse) {
  GuestId g = h.submit(ReplaceOp{"127.0.0.1:3803", "127.0.0.1:3801"});
  ASSERT_TRUE(h.done(g));
  ASSERT_FALSE(h.reply(g).status);
  EXPECT_EQ(h.reply(g).status.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(snap().clients[kC2].target, "127.0.0.1:3803");
  EXPECT_TRUE(h.disconnects().empty());
}

TEST_F(Replace, AcceptedNewTargetIsLiveRepairedAndGuestIoNeverStops) {
  // A write in flight on the old replica when it is replaced.
  GuestId w = h.submit(write_op(0, 1, 4));
  ASSERT_TRUE(h.done(w));
  const size_t before = h.connects().size();
  GuestId g = h.submit(ReplaceOp{"127.0.0.1:3803", "127.0.0.1:3900"});
  ASSERT_TRUE(h.done(g));
  ASSERT_TRUE(h.reply(g).status) << h.reply(g).status.error().to_string();
  EXPECT_TRUE(std::any_of(h.disconnects().begin(), h.disconnects().end(), [](const Disconnect& d) {
    return d.client == kC2;
  })) << "the old replica is dropped";
  drop(kC2);
  EXPECT_EQ(snap().clients[kC2].target, "127.0.0.1:3900");
  // The write and a flush complete on the other two meanwhile.
  GuestId f = h.submit(FlushOp{});
  answer_all();
  ASSERT_TRUE(h.done(f));
  EXPECT_TRUE(h.reply(f).status);

  // The new downstairs: a different, empty region.
  ds[kC2] = FakeDs{};
  if (h.connects().size() > before && h.connects().back().client == kC2)
    h.negotiate(ds);
  else
    reconnect({kC2});
  bool to_new = false;
  for (const ConnectTo& c : h.connects())
    if (c.client == kC2 && c.address == "127.0.0.1:3900") to_new = true;
  EXPECT_TRUE(to_new) << "connects to the new address";
  Snapshot s = snap();
  EXPECT_EQ(s.clients[kC2].state, "live_repair");
  ASSERT_TRUE(s.repair.running);
  EXPECT_EQ(s.repair.targets, (std::vector<ClientId>{kC2}));
  close_version = ClientData<ExtentVersion>(ver(1, 2));
  close_version[kC2] = ver(0, 0);  // empty: every extent is copied
  for (uint32_t e = 0; e < kExtents; ++e) run_extent(e, {kC2}, {kC2}, kC0);
  run_final_flush();
  s = snap();
  EXPECT_EQ(s.clients[kC2].state, "active");
  EXPECT_EQ(s.live_repairs_completed, 1u);
  EXPECT_EQ(s.clients[kC2].target, "127.0.0.1:3900");
}

TEST_F(Replace, AReplacementWithTheSameNumbersStillHasEveryExtentCopied) {
  GuestId g = h.submit(ReplaceOp{"127.0.0.1:3803", "127.0.0.1:3900"});
  ASSERT_TRUE(h.done(g));
  ASSERT_TRUE(h.reply(g).status) << h.reply(g).status.error().to_string();
  drop(kC2);
  answer_all();
  // A used region from elsewhere whose (generation, flush, dirty) happen to match.
  ds[kC2] = FakeDs{};
  reconnect({kC2}, false);
  ASSERT_TRUE(snap().repair.running);
  close_version = ClientData<ExtentVersion>(ver(1, 2));
  for (uint32_t e = 0; e < kExtents; ++e) run_extent(e, {kC2}, {kC2}, kC0);
  run_final_flush();
  EXPECT_EQ(state(kC2), "active");
}

TEST_F(Replace, ReplacingTheDownstairsUnderRepairAbortsThatRepairAndRepairsTheNewOne) {
  fault(kC2);
  reconnect({kC2});
  expect_close(0, {kC2}, {kC0, kC1});
  GuestId w = h.submit(write_op(2, 1, 4));
  const size_t before = h.connects().size();
  GuestId g = h.submit(ReplaceOp{"127.0.0.1:3803", "127.0.0.1:3900"});
  ASSERT_TRUE(h.done(g));
  ASSERT_TRUE(h.reply(g).status) << h.reply(g).status.error().to_string();
  drop(kC2);
  ds[kC2] = FakeDs{};
  answer_all();  // the old repair winds down on the healthy two
  EXPECT_EQ(stuck(), "");
  EXPECT_TRUE(h.done(w));
  EXPECT_EQ(snap().live_repairs_aborted, 1u);
  if (h.connects().size() > before && h.connects().back().client == kC2)
    h.negotiate(ds);
  else
    reconnect({kC2}, false);
  EXPECT_EQ(h.connects().back().address, "127.0.0.1:3900");
  Snapshot s = snap();
  ASSERT_TRUE(s.repair.running);
  EXPECT_EQ(s.repair.extent, ExtentId{0});
  close_version[kC2] = ver(0, 0);
  EXPECT_EQ(s.repair.source, kC1) << "after an abort the next healthy downstairs is the source";
  for (uint32_t e = 0; e < kExtents; ++e) run_extent(e, {kC2}, {kC2}, kC1);
  run_final_flush();
  EXPECT_EQ(state(kC2), "active");
  EXPECT_EQ(snap().live_repairs_completed, 1u);
}

}  // namespace
}  // namespace cru::upstairs::test
