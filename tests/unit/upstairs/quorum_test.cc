// The flush and write quorum (docs/fault-model.md, issue 15): when a flush is acknowledged,
// when writes and flushes fail because fewer than two downstairs can take IO (after the
// quorum grace, not the 30 s offline or 45 s silence timeouts), recovery when a replica
// returns within the grace, the status's count of complete copies, and deactivation
// failing when its final flush cannot reach two downstairs. The live-repair cases (a
// replica under repair counts only once the repair passed the extents) are in
// live_repair_test.cc. The test plays guest, downstairs and clock (harness.h).
#include <gtest/gtest.h>

#include <algorithm>

#include "unit/upstairs/harness.h"

namespace cru::upstairs::test {
namespace {

constexpr Duration kGrace = Limits{}.quorum_grace;

class Quorum : public ::testing::Test {
 protected:
  void SetUp() override {
    GuestId g = h.activate(std::nullopt, ds);
    ASSERT_TRUE(h.done(g) && h.reply(g).status);
  }

  // Every downstairs in `who` answers every job and ping waiting in its inbox, oldest
  // first (reads with zeros); others stay silent.
  void answer(std::initializer_list<ClientId> who) {
    for (ClientId c : who) {
      auto& q = h.inbox(c);
      while (!q.empty()) {
        Message m = std::move(q.front());
        q.pop_front();
        if (std::holds_alternative<Ruok>(m)) {
          h.deliver(c, Imok{});
        } else if (auto* r = std::get_if<Read>(&m)) {
          h.read_reply(c, *r, Bytes::zeros(r->block_count * kBs));
        } else if (auto v = job_view(m)) {
          h.ack(c, v->id);
        }
      }
    }
  }
  // Moves the clock to `t` one timer at a time; `live` answer whatever each tick sends
  // them (pings, automatic flushes), the others say nothing.
  void run_to(TimePoint t, std::initializer_list<ClientId> live) {
    for (;;) {
      answer(live);
      TimePoint d = h.up().next_deadline();
      if (d > t) break;
      h.tick_at(d);
    }
    h.tick_at(t);
    answer(live);
  }
  // Every downstairs answers what it holds; then kC1 and kC2 drop. Returns when.
  TimePoint lose_two() {
    answer({kC0, kC1, kC2});
    const TimePoint lost = h.now();
    h.disconnect(kC1);
    h.disconnect(kC2);
    return lost;
  }
  GuestId write(uint64_t start, uint8_t seed) { return h.submit(write_op(start, 1, seed)); }
  bool ok(GuestId g) { return h.done(g) && h.reply(g).status; }
  bool failed_with_eio(GuestId g) {
    return h.done(g) && !h.reply(g).status &&
           (h.reply(g).status.error().code == ErrorCode::kIo ||
            h.reply(g).status.error().code == ErrorCode::kQuorumLost);
  }
  Snapshot snap() { return h.up().snapshot(); }

  ClientData<FakeDs> ds;  // the regions the downstairs serve, also after a reconnect
  Harness h;
};

TEST_F(Quorum, ThreeGoodAcknowledgeAFlushOnceTwoMadeItDurable) {
  GuestId w = write(0, 1);
  GuestId f = h.submit(FlushOp{});
  EXPECT_TRUE(ok(w)) << "writes are acknowledged once queued on three";
  answer({kC0});
  EXPECT_FALSE(h.done(f)) << "one copy is not a quorum";
  answer({kC2});
  EXPECT_TRUE(ok(f));
  EXPECT_EQ(snap().complete_copies, 3u);
  EXPECT_FALSE(snap().degraded);
  EXPECT_FALSE(snap().quorum_lost);
}

TEST_F(Quorum, TwoGoodAndOneOfflineKeepWorkingPastTheGrace) {
  const TimePoint lost = h.now();
  h.disconnect(kC2);
  EXPECT_EQ(snap().complete_copies, 2u);
  EXPECT_TRUE(snap().degraded);
  run_to(lost + 2 * kGrace, {kC0, kC1});
  GuestId w = write(0, 1);
  GuestId f = h.submit(FlushOp{});
  answer({kC0, kC1});
  EXPECT_TRUE(ok(w));
  EXPECT_TRUE(ok(f)) << "two replicas hold every write before it";
  EXPECT_FALSE(snap().quorum_lost);
}

TEST_F(Quorum, OneGoodAndTwoOfflineFailAFlushWithEioAfterTheGraceNotBefore) {
  GuestId w0 = write(0, 1);
  const TimePoint lost = lose_two();
  GuestId w = write(1, 2);
  EXPECT_TRUE(ok(w0));
  EXPECT_TRUE(ok(w)) << "within the grace a write is queued for the offline replicas' replay";
  GuestId f = h.submit(FlushOp{});
  run_to(lost + kGrace - 1ms, {kC0});
  EXPECT_FALSE(h.done(f)) << "a replica may still come back within the grace";
  run_to(lost + kGrace, {kC0});
  ASSERT_TRUE(h.done(f)) << "fails at the grace, not at the 30 s offline timeout";
  EXPECT_TRUE(failed_with_eio(f)) << h.reply(f).status.error().to_string();
  EXPECT_TRUE(snap().quorum_lost);
  // From now on writes and flushes fail at once; reads are still served by the good one.
  GuestId w2 = write(2, 3);
  GuestId f2 = h.submit(FlushOp{});
  EXPECT_TRUE(failed_with_eio(w2));
  EXPECT_NE(h.reply(w2).status.error().message.find("2 downstairs"), std::string::npos)
      << h.reply(w2).status.error().message;
  EXPECT_TRUE(failed_with_eio(f2));
  GuestId r = h.submit(ReadOp{BlockIndex{0}, 1});
  answer({kC0});
  EXPECT_TRUE(ok(r));
}

TEST_F(Quorum, TwoSilentButConnectedReplicasFailAFlushAfterTheGraceNot45s) {
  answer({kC0, kC1, kC2});
  GuestId w = write(0, 1);
  GuestId f = h.submit(FlushOp{});
  const TimePoint sent = h.now();
  EXPECT_TRUE(ok(w));
  // kC1 and kC2 are stopped (SIGSTOP): connected, everything sent to them unanswered.
  run_to(sent + kGrace - 1ms, {kC0});
  EXPECT_FALSE(h.done(f));
  run_to(sent + kGrace, {kC0});
  ASSERT_TRUE(h.done(f)) << "fails at the grace, not at the 45 s silence timeout";
  EXPECT_TRUE(failed_with_eio(f)) << h.reply(f).status.error().to_string();
  EXPECT_TRUE(failed_with_eio(write(1, 2)));
  EXPECT_TRUE(h.disconnects().empty()) << "silence alone does not drop them before 45 s";
  EXPECT_EQ(snap().complete_copies, 1u) << "silent copies are not counted";
  EXPECT_TRUE(snap().quorum_lost);
}

TEST_F(Quorum, ReplicasThatStillTakeBytesAreSlowNotGivenUp) {
  answer({kC0, kC1, kC2});
  GuestId w = write(0, 1);
  GuestId f = h.submit(FlushOp{});
  const TimePoint sent = h.now();
  EXPECT_TRUE(ok(w));
  // kC1 and kC2 sit behind a slow link: no answer for twice the grace, but what they are
  // sent keeps leaving for the network (found by the netns test under a bandwidth cap).
  for (TimePoint t = sent; t < sent + 2 * kGrace; t += kGrace / 4) {
    run_to(t, {kC0});
    h.sent(kC1);
    h.sent(kC2);
  }
  EXPECT_FALSE(h.done(f)) << "a slow replica is waited for";
  EXPECT_EQ(snap().complete_copies, 3u);
  EXPECT_FALSE(snap().quorum_lost);
  GuestId w2 = write(1, 2);
  answer({kC0, kC1});
  EXPECT_TRUE(ok(f));
  EXPECT_TRUE(ok(w2));
  // Once nothing leaves any more (the process stopped), the grace runs from there.
  GuestId f2 = h.submit(FlushOp{});
  const TimePoint last = h.now();
  run_to(last + kGrace - 1ms, {kC0});
  EXPECT_FALSE(h.done(f2));
  run_to(last + kGrace, {kC0});
  EXPECT_TRUE(failed_with_eio(f2));
}

TEST_F(Quorum, AnIdleSilentReplicaIsNotGivenUpWhileItHasNothingToAnswer) {
  // Nothing outstanding: pings go out every 5 s and are answered; a write long after the
  // last message heard is still admitted and acknowledged by two.
  run_to(h.now() + 4 * kGrace, {kC0, kC1, kC2});
  GuestId w = write(0, 1);
  GuestId f = h.submit(FlushOp{});
  answer({kC0, kC1});
  EXPECT_TRUE(ok(w));
  EXPECT_TRUE(ok(f));
}

TEST_F(Quorum, AReplicaBackWithinTheGraceCompletesThePendingFlush) {
  const TimePoint lost = lose_two();
  GuestId w = write(0, 1);
  GuestId f = h.submit(FlushOp{});
  answer({kC0});
  // kC1 reconnects before the grace ends and is replayed what it missed.
  for (int i = 0; i < 100 && snap().clients[kC1].state != "active"; ++i) {
    TimePoint d = h.up().next_deadline();
    ASSERT_LT(d, lost + kGrace) << "kC1 was not reconnected within the grace";
    h.tick_at(d);
    answer({kC0});
    h.negotiate(ds);
  }
  ASSERT_EQ(snap().clients[kC1].state, "active");
  EXPECT_EQ(snap().clients[kC1].replays, 1u);
  h.take<LastFlush>(kC1);
  answer({kC1});
  EXPECT_TRUE(ok(w));
  EXPECT_TRUE(ok(f)) << "two replicas hold every write before it";
  run_to(lost + 2 * kGrace, {kC0, kC1});
  EXPECT_FALSE(snap().quorum_lost);
  EXPECT_TRUE(ok(write(1, 2)));
}

TEST_F(Quorum, WritesWorkAgainOnceAReplicaReturnsAfterTheGrace) {
  const TimePoint lost = lose_two();
  run_to(lost + kGrace, {kC0});
  EXPECT_TRUE(failed_with_eio(write(0, 1)));
  // kC1 returns (offline for less than the 30 s offline timeout: replayed, not repaired).
  for (int i = 0; i < 100 && snap().clients[kC1].state != "active"; ++i) {
    h.tick_at(h.up().next_deadline());
    answer({kC0});
    h.negotiate(ds);
  }
  ASSERT_EQ(snap().clients[kC1].state, "active");
  EXPECT_FALSE(snap().quorum_lost);
  h.take<LastFlush>(kC1);
  GuestId w = write(0, 2);
  GuestId f = h.submit(FlushOp{});
  answer({kC0, kC1});
  EXPECT_TRUE(ok(w));
  EXPECT_TRUE(ok(f));
}

TEST_F(Quorum, DeactivationFailsWhenItsFinalFlushCannotReachTwo) {
  lose_two();
  EXPECT_TRUE(ok(write(0, 1)));
  GuestId d = h.submit(DeactivateOp{});
  answer({kC0});
  run_to(h.now() + 2 * kGrace, {kC0});
  ASSERT_TRUE(h.done(d));
  ASSERT_FALSE(h.reply(d).status) << "the final flush reached one downstairs";
  EXPECT_NE(h.reply(d).status.error().message.find("final flush"), std::string::npos)
      << h.reply(d).status.error().message;
}

TEST_F(Quorum, DeactivationWithQuorumLostFailsEvenWithNothingLeftToSend) {
  const TimePoint lost = lose_two();
  EXPECT_TRUE(ok(write(0, 1)));
  run_to(lost + kGrace, {kC0});
  EXPECT_TRUE(snap().quorum_lost);
  GuestId d = h.submit(DeactivateOp{});
  run_to(h.now() + kGrace, {kC0});
  ASSERT_TRUE(h.done(d));
  EXPECT_FALSE(h.reply(d).status) << "an acknowledged write never reached two replicas";
}

TEST_F(Quorum, DeactivationWithTwoSilentReplicasEndsWithinTheGraceAndFails) {
  answer({kC0, kC1, kC2});
  EXPECT_TRUE(ok(write(0, 1)));
  GuestId d = h.submit(DeactivateOp{});
  run_to(h.now() + kGrace, {kC0});
  ASSERT_TRUE(h.done(d)) << "not after the 45 s silence timeout";
  EXPECT_FALSE(h.reply(d).status);
}

TEST_F(Quorum, DeactivationSucceedsWhenTheFinalFlushReachesTwo) {
  h.disconnect(kC2);
  EXPECT_TRUE(ok(write(0, 1)));
  GuestId d = h.submit(DeactivateOp{});
  answer({kC0, kC1});
  run_to(h.now() + 10ms, {kC0, kC1});
  ASSERT_TRUE(h.done(d));
  EXPECT_TRUE(h.reply(d).status) << h.reply(d).status.error().to_string();
}

TEST(QuorumGrace, IsConfigurable) {
  Limits l;
  l.quorum_grace = 1s;
  Harness h(l);
  h.activate_fresh();
  const TimePoint lost = h.now();
  h.disconnect(kC1);
  h.disconnect(kC2);
  GuestId f = h.submit(FlushOp{});
  for (TimePoint d = h.up().next_deadline(); d < lost + 1s; d = h.up().next_deadline()) {
    h.tick_at(d);
    h.drop_pings();
  }
  h.tick_at(lost + 1s - 1ms);
  EXPECT_FALSE(h.done(f));
  h.tick_at(lost + 1s);
  ASSERT_TRUE(h.done(f));
  EXPECT_FALSE(h.reply(f).status);
}

}  // namespace
}  // namespace cru::upstairs::test
