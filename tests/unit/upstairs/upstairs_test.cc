// The sans-IO upstairs core against hand-written event sequences: job ids and
// dependencies (DESIGN.md section 4), write-back and 2-of-3 flush acks, admission limits,
// verified single-replica reads with retry, retirement, the idle flush and the barrier,
// activation (generation, geometry, encryption), running on two downstairs, losing
// quorum, and fencing. The test plays guest, downstairs and clock (see harness.h).
#include <gtest/gtest.h>

#include <algorithm>

#include "unit/upstairs/harness.h"

namespace cru::upstairs::test {
namespace {

// An active volume over three fresh downstairs.
class Active : public ::testing::Test {
 protected:
  explicit Active(Limits limits = {}) : h(limits) {}
  // Default limits but one.
  template <typename T, typename V>
  static Limits with(T Limits::*field, V value) {
    Limits l;
    l.*field = static_cast<T>(value);
    return l;
  }
  void SetUp() override { h.activate_fresh(); }

  // The job ids each downstairs was sent, in order.
  std::vector<JobId> ids_sent(ClientId c) {
    std::vector<JobId> out;
    for (const Message& m : h.jobs_sent(c)) out.push_back(job_view(m)->id);
    return out;
  }
  // Acks every Write/Flush/Barrier waiting in every inbox (reads stay).
  void ack_all_but_reads() {
    for (ClientId c : kAllClients) {
      auto& q = h.inbox(c);
      std::deque<Message> keep;
      while (!q.empty()) {
        Message m = std::move(q.front());
        q.pop_front();
        if (std::holds_alternative<Read>(m) || !job_view(m)) {
          keep.push_back(std::move(m));
          continue;
        }
        h.ack(c, job_view(m)->id);
      }
      for (auto& m : keep) q.push_back(std::move(m));
    }
  }
  // Submits a write and checks it was acknowledged at once; returns its job id.
  JobId write(uint64_t start, size_t n, uint8_t seed) {
    GuestId g = h.submit(write_op(start, n, seed));
    EXPECT_TRUE(h.done(g) && h.reply(g).status) << "write not acknowledged";
    return h.newest(kC0);
  }
  // Submits a read; returns its guest id and the job id (from whichever replica got it).
  std::pair<GuestId, JobId> read(uint64_t start, uint32_t n) {
    GuestId g = h.submit(ReadOp{BlockIndex{start}, n});
    std::optional<JobId> id;
    for (ClientId c : kAllClients)
      if (!h.jobs_sent(c).empty() && std::holds_alternative<Read>(h.jobs_sent(c).back())) {
        JobId j = job_view(h.jobs_sent(c).back())->id;
        if (!id || j > *id) id = j;
      }
    EXPECT_TRUE(id) << "no read was sent";
    return {g, id.value_or(JobId{})};
  }
  // Pops and returns the Read waiting in `c`'s inbox.
  Read take_read(ClientId c) {
    auto& q = h.inbox(c);
    auto it = std::find_if(q.begin(), q.end(),
                           [](const Message& m) { return std::holds_alternative<Read>(m); });
    if (it == q.end()) {
      ADD_FAILURE() << "downstairs " << int(c.value) << " holds no read";
      return Read{};
    }
    Read r = std::get<Read>(*it);
    q.erase(it);
    return r;
  }

  Harness h;
};

// ---- job ids and order ---------------------------------------------------------------------

TEST_F(Active, EveryJobGoesToAllThreeWithTheSameIdInIdOrder) {
  write(0, 2, 1);
  write(4, 2, 2);
  h.submit(FlushOp{});
  write(8, 1, 3);
  h.submit(DiscardOp{BlockIndex{12}, 2});
  auto ids = ids_sent(kC0);
  ASSERT_EQ(ids.size(), 5u);
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
  EXPECT_EQ(std::adjacent_find(ids.begin(), ids.end()), ids.end()) << "ids are unique";
  EXPECT_EQ(ids_sent(kC1), ids);
  EXPECT_EQ(ids_sent(kC2), ids);
  for (ClientId c : kAllClients) {
    const auto& m = h.jobs_sent(c);
    EXPECT_TRUE(std::holds_alternative<Write>(m[0]));
    EXPECT_TRUE(std::holds_alternative<Write>(m[1]));
    EXPECT_TRUE(std::holds_alternative<Flush>(m[2]));
    EXPECT_TRUE(std::holds_alternative<Write>(m[3]));
    EXPECT_TRUE(std::holds_alternative<Discard>(m[4]));
  }
}

TEST_F(Active, FlushCarriesTheActivationGenerationAndRisingFlushNumbers) {
  write(0, 1, 1);
  h.submit(FlushOp{});
  write(1, 1, 2);
  h.submit(FlushOp{});
  std::vector<Flush> flushes;
  for (const Message& m : h.jobs_sent(kC1))
    if (auto* f = std::get_if<Flush>(&m)) flushes.push_back(*f);
  ASSERT_EQ(flushes.size(), 2u);
  EXPECT_EQ(flushes[0].generation, h.up().snapshot().generation);
  EXPECT_EQ(flushes[1].generation, h.up().snapshot().generation);
  EXPECT_LT(flushes[0].flush_number, flushes[1].flush_number);
}

// ---- dependencies --------------------------------------------------------------------------

TEST_F(Active, WriteDependsOnTheLatestEarlierOverlappingWrite) {
  JobId a = write(0, 4, 1);   // [0, 4)
  JobId b = write(8, 4, 2);   // [8, 12)
  JobId c = write(2, 8, 3);   // [2, 10) overlaps both
  JobId d = write(20, 2, 4);  // [20, 22) overlaps nothing
  JobId e = write(3, 1, 5);   // [3, 4): the latest write there is c, not a
  for (ClientId cl : kAllClients) {
    SCOPED_TRACE(::testing::Message() << "downstairs " << int(cl.value));
    EXPECT_TRUE(h.deps(cl, a).empty());
    EXPECT_TRUE(h.deps(cl, b).empty());
    EXPECT_EQ(h.deps(cl, c), (std::vector<JobId>{a, b}));
    EXPECT_TRUE(h.deps(cl, d).empty());
    EXPECT_EQ(h.deps(cl, e), (std::vector<JobId>{c}));
  }
}

TEST_F(Active, ReadDependsOnTheLatestOverlappingWritesAndNotOnOtherReads) {
  JobId a = write(0, 4, 1);     // [0, 4)
  JobId b = write(4, 4, 2);     // [4, 8)
  auto [g1, r1] = read(2, 4);   // [2, 6): both writes
  auto [g2, r2] = read(10, 2);  // nothing written there
  auto [g3, r3] = read(0, 2);   // only a; not r1
  auto deps_anywhere = [&](JobId id) {
    for (ClientId c : kAllClients)
      if (auto m = h.sent(c, id)) return job_view(*m)->deps;
    ADD_FAILURE() << "read " << id.value << " was not sent";
    return std::vector<JobId>{};
  };
  EXPECT_EQ(deps_anywhere(r1), (std::vector<JobId>{a, b}));
  EXPECT_TRUE(deps_anywhere(r2).empty());
  EXPECT_EQ(deps_anywhere(r3), (std::vector<JobId>{a}));
}

// DESIGN.md: "a write depends on the latest earlier overlapping write and on reads of its
// range issued since then". The read went to one replica only; on the other two the new
// write must still follow the earlier write, or a downstairs that runs ready jobs out of
// order (crucible-downstairs --lossy does) can apply the two writes in the wrong order.
// Regression: at commit 153db2c this failed: the core sent the write a dependency on the
// read alone (BlockMap's frontier) and deps_for() dropped the read where it was skipped,
// so on the two replicas without the read the second write carried no dependency at all.
TEST_F(Active, WriteAfterAReadStillFollowsThePreviousWriteOnEveryDownstairs) {
  JobId a = write(0, 4, 1);
  auto [g, r] = read(0, 4);
  JobId b = write(0, 4, 2);
  for (ClientId c : kAllClients) {
    SCOPED_TRACE(::testing::Message() << "downstairs " << int(c.value));
    EXPECT_TRUE(h.precedes(c, a, b)) << "write " << b.value << " does not follow write " << a.value;
    if (h.sent(c, r)) {
      EXPECT_TRUE(h.precedes(c, r, b))
          << "write " << b.value << " does not follow read " << r.value;
    }
  }
}

// A flush depends on everything outstanding (directly or through other jobs), on every
// downstairs, and every later job depends on it.
// Regression: at commit 153db2c this failed for the same cause as above: on the replicas
// that did not get the read, the flush did not follow the write before the read, so it
// could complete before that write was applied (and still count towards the 2-of-3 ack).
TEST_F(Active, FlushFollowsEverythingOutstandingAndEverythingLaterFollowsIt) {
  write(0, 4, 1);
  read(0, 4);
  write(10, 2, 2);
  write(11, 4, 3);
  read(30, 2);
  h.submit(FlushOp{});
  JobId f = h.newest(kC0);
  write(0, 1, 4);
  read(12, 1);
  write(31, 1, 5);
  for (ClientId c : kAllClients) {
    SCOPED_TRACE(::testing::Message() << "downstairs " << int(c.value));
    for (JobId id : ids_sent(c)) {
      if (id < f) {
        EXPECT_TRUE(h.precedes(c, id, f))
            << "flush " << f.value << " does not follow job " << id.value;
      } else if (id > f) {
        EXPECT_TRUE(h.precedes(c, f, id))
            << "job " << id.value << " does not follow flush " << f.value;
      }
    }
  }
}

TEST_F(Active, WritesToDisjointRangesAreIndependent) {
  JobId a = write(0, 8, 1);
  JobId b = write(8, 8, 2);
  JobId c = write(16, 1, 3);
  for (ClientId cl : kAllClients) {
    EXPECT_TRUE(h.deps(cl, a).empty());
    EXPECT_TRUE(h.deps(cl, b).empty());
    EXPECT_TRUE(h.deps(cl, c).empty());
  }
}

// ---- write-back and admission ---------------------------------------------------------------

TEST_F(Active, WriteIsAcknowledgedOnceQueuedBeforeAnyDownstairsAnswers) {
  GuestId g = h.submit(write_op(3, 2, 7));
  ASSERT_TRUE(h.done(g));
  EXPECT_TRUE(h.reply(g).status);
  for (ClientId c : kAllClients) {
    Write w = h.take<Write>(c);
    EXPECT_EQ(w.start, BlockIndex{3});
    EXPECT_EQ(w.contexts.size(), 2u);
    EXPECT_EQ(w.data, pattern(2, 7));
  }
}

// The scrub of a read-only parent submits WriteUnwritten (docs/volumes.md): it travels as
// its own message to all three, ordered like a write, so a guest write before it wins and
// one after it overwrites it.
TEST_F(Active, WriteUnwrittenGoesToAllThreeAsWriteUnwrittenOrderedLikeAWrite) {
  JobId before = write(4, 2, 1);
  WriteOp wu = write_op(4, 4, 9);
  wu.only_unwritten = true;
  GuestId g = h.submit(wu);
  ASSERT_TRUE(h.done(g));
  EXPECT_TRUE(h.reply(g).status);
  const JobId scrub = h.newest(kC0);
  JobId after = write(6, 1, 2);
  for (ClientId c : kAllClients) {
    auto m = h.sent(c, scrub);
    ASSERT_TRUE(m && std::holds_alternative<WriteUnwritten>(*m)) << "sent as WriteUnwritten";
    const auto& w = std::get<WriteUnwritten>(*m);
    EXPECT_EQ(w.start, BlockIndex{4});
    EXPECT_EQ(w.contexts.size(), 4u);
    EXPECT_EQ(w.data, pattern(4, 9));
    EXPECT_TRUE(h.precedes(c, before, scrub)) << "the earlier overlapping write runs first";
    EXPECT_TRUE(h.precedes(c, scrub, after)) << "a later overlapping write runs after it";
  }
}

TEST_F(Active, WriteUnwrittenBeforeActivationIsRefusedLikeAWrite) {
  Harness ro(Limits{});
  WriteOp wu = write_op(0, 1, 1);
  wu.only_unwritten = true;
  GuestId g = ro.submit(wu);
  ASSERT_TRUE(ro.done(g));
  EXPECT_FALSE(ro.reply(g).status) << "not active";
}

class SmallJobLimit : public Active {
 protected:
  SmallJobLimit() : Active(with(&Limits::jobs_in_flight_max, 2)) {}
};

TEST_F(SmallJobLimit, GuestWaitsBeyondTheJobLimitUntilJobsFinish) {
  GuestId w1 = h.submit(write_op(0, 1, 1));
  GuestId w2 = h.submit(write_op(1, 1, 2));
  GuestId w3 = h.submit(write_op(2, 1, 3));
  GuestId r = h.submit(ReadOp{BlockIndex{0}, 1});
  EXPECT_TRUE(h.done(w1));
  EXPECT_TRUE(h.done(w2));
  EXPECT_FALSE(h.done(w3)) << "a third job in flight exceeds the limit of 2";
  EXPECT_FALSE(h.done(r)) << "later operations wait behind the waiting one";
  EXPECT_EQ(h.up().snapshot().guest_waiting, 2u);
  for (ClientId c : kAllClients) EXPECT_EQ(h.jobs_sent(c).size(), 2u);
  // One downstairs finishing is not enough: the limit holds per downstairs.
  h.ack_next(kC0);
  EXPECT_FALSE(h.done(w3));
  h.ack_next(kC1);
  h.ack_next(kC2);
  ASSERT_TRUE(h.done(w3));
  EXPECT_TRUE(h.reply(w3).status);
  for (ClientId c : kAllClients) EXPECT_EQ(h.jobs_sent(c).size(), 3u);
  // Two in flight again: the read still waits; finishing more lets it through.
  ack_all_but_reads();
  EXPECT_EQ(h.up().snapshot().guest_waiting, 0u);
  EXPECT_EQ(h.holding_read().size(), 1u);
}

class SmallByteLimit : public Active {
 protected:
  SmallByteLimit() : Active(with(&Limits::bytes_in_flight_max, 4 * kBs)) {}
};

TEST_F(SmallByteLimit, GuestWaitsBeyondTheByteLimitUntilBytesFinish) {
  GuestId w1 = h.submit(write_op(0, 3, 1));  // 3 blocks in flight
  GuestId w2 = h.submit(write_op(8, 2, 2));  // 3 + 2 > 4
  EXPECT_TRUE(h.done(w1));
  EXPECT_FALSE(h.done(w2));
  EXPECT_EQ(h.up().snapshot().clients[kC0].bytes_in_flight, 3 * kBs);
  for (ClientId c : kAllClients) h.ack_next(c);
  ASSERT_TRUE(h.done(w2));
  EXPECT_TRUE(h.reply(w2).status);
}

TEST_F(SmallByteLimit, OneWriteLargerThanTheByteLimitIsAdmittedAloneRatherThanNever) {
  GuestId w = h.submit(write_op(0, 8, 1));
  ASSERT_TRUE(h.done(w));
  EXPECT_TRUE(h.reply(w).status);
}

// ---- flush acks ------------------------------------------------------------------------------

TEST_F(Active, FlushIsAcknowledgedWhenTwoOfThreeMadeItDurable) {
  write(0, 2, 1);
  GuestId f = h.submit(FlushOp{});
  for (ClientId c : kAllClients) h.ack_next(c);  // the write, everywhere
  EXPECT_FALSE(h.done(f));
  h.ack_next(kC0);
  EXPECT_FALSE(h.done(f)) << "one of three is not enough";
  h.ack_next(kC2);
  ASSERT_TRUE(h.done(f)) << "two of three is";
  EXPECT_TRUE(h.reply(f).status);
  EXPECT_EQ(h.replies_for(f), 1u);
  h.ack_next(kC1);
  EXPECT_EQ(h.replies_for(f), 1u) << "acknowledged once";
}

TEST_F(Active, FlushFailsWhenTwoDownstairsFailIt) {
  write(0, 2, 1);
  GuestId f = h.submit(FlushOp{});
  for (ClientId c : kAllClients) h.ack_next(c);
  Flush f0 = h.take<Flush>(kC0);
  Flush f1 = h.take<Flush>(kC1);
  h.ack(kC0, f0.job_id, WireStatus{ErrorCode::kIo, "test: disk on fire"});
  EXPECT_FALSE(h.done(f));
  h.ack(kC1, f1.job_id, WireStatus{ErrorCode::kIo, "test: disk on fire"});
  ASSERT_TRUE(h.done(f)) << "two failures: the flush can never reach 2 of 3";
  ASSERT_FALSE(h.reply(f).status);
  EXPECT_EQ(h.reply(f).status.error().code, ErrorCode::kIo);
  EXPECT_NE(h.reply(f).status.error().message.find("flush"), std::string::npos)
      << h.reply(f).status.error().message;
}

// ---- snapshot flushes ----------------------------------------------------------------------

TEST_F(Active, SnapshotFlushCarriesTheNameAndIsDoneWhenTwoTookIt) {
  write(0, 2, 1);
  GuestId f = h.submit(FlushOp{"s1"});
  for (ClientId c : kAllClients) h.ack_next(c);  // the write
  Flush f0 = h.take<Flush>(kC0);
  EXPECT_EQ(f0.snapshot, std::optional<std::string>("s1"));
  h.ack(kC0, f0.job_id, WireStatus{ErrorCode::kSnapshotFailed, "test: no space for it"});
  h.ack_next(kC1);
  EXPECT_FALSE(h.done(f)) << "two hold the flush but only one the snapshot";
  h.ack_next(kC2);
  ASSERT_TRUE(h.done(f));
  EXPECT_TRUE(h.reply(f).status) << h.reply(f).status.error().message;
  // The replica that could not take it holds the flush: not faulted.
  EXPECT_EQ(h.up().snapshot().clients[kC0].faults, 0u);
  EXPECT_EQ(h.up().snapshot().clients[kC0].state, "active");
}

TEST_F(Active, SnapshotFlushFailsWhenTwoCannotTakeItButFaultsNobody) {
  GuestId f = h.submit(FlushOp{"s1"});
  Flush f0 = h.take<Flush>(kC0);
  Flush f1 = h.take<Flush>(kC1);
  h.ack(kC0, f0.job_id, WireStatus{ErrorCode::kSnapshotFailed, "a snapshot named 's1' exists"});
  h.ack(kC1, f1.job_id, WireStatus{ErrorCode::kSnapshotFailed, "a snapshot named 's1' exists"});
  ASSERT_TRUE(h.done(f));
  ASSERT_FALSE(h.reply(f).status);
  EXPECT_EQ(h.reply(f).status.error().code, ErrorCode::kSnapshotFailed);
  const std::string& why = h.reply(f).status.error().message;
  EXPECT_NE(why.find("taken on only 0 of 3"), std::string::npos) << why;
  EXPECT_NE(why.find("'s1' exists"), std::string::npos) << why;
  for (ClientId c : kAllClients) EXPECT_EQ(h.up().snapshot().clients[c].faults, 0u);
}

TEST_F(Active, SnapshotWithABadNameIsRefusedBeforeAnythingIsSent) {
  GuestId f = h.submit(FlushOp{"a/b"});
  ASSERT_TRUE(h.done(f));
  EXPECT_EQ(h.reply(f).status.error().code, ErrorCode::kInvalidArgument);
  for (ClientId c : kAllClients) EXPECT_TRUE(h.jobs_sent(c).empty());
}

// ---- reads ---------------------------------------------------------------------------------

TEST_F(Active, ReadGoesToOneReplicaAndReturnsItsVerifiedData) {
  write(4, 2, 9);
  ack_all_but_reads();
  auto [g, id] = read(4, 2);
  auto holders = h.holding_read();
  ASSERT_EQ(holders.size(), 1u) << "a read goes to one replica, not three";
  Read r = take_read(holders[0]);
  EXPECT_EQ(r.start, BlockIndex{4});
  EXPECT_EQ(r.block_count, 2u);
  EXPECT_FALSE(h.done(g));
  h.read_reply(holders[0], r, pattern(2, 9));
  ASSERT_TRUE(h.done(g));
  ASSERT_TRUE(h.reply(g).status);
  EXPECT_EQ(h.reply(g).read.data, pattern(2, 9));
}

TEST_F(Active, ReadsGoToTheLeastLoadedReplica) {
  read(0, 1);
  read(1, 1);
  read(2, 1);
  auto holders = h.holding_read();
  std::sort(holders.begin(), holders.end());
  EXPECT_EQ(holders, (std::vector<ClientId>{kC0, kC1, kC2}))
      << "each read went to a replica with less in flight";
}

TEST_F(Active, ReadOfNeverWrittenBlocksWithoutContextsReturnsZeros) {
  auto [g, id] = read(20, 2);
  ClientId c = h.holding_read().at(0);
  Read r = take_read(c);
  ReadResponse resp;
  resp.job_id = r.job_id;
  resp.block_size = kBs;
  resp.contexts = {std::nullopt, std::nullopt};
  resp.data = Bytes::zeros(2 * kBs);
  h.deliver(c, resp);
  ASSERT_TRUE(h.done(g));
  ASSERT_TRUE(h.reply(g).status);
  EXPECT_EQ(h.reply(g).read.data, Bytes::zeros(2 * kBs));
}

TEST_F(Active, ReadFailingHashVerificationIsRetriedOnAnotherReplicaAndTheBadOneFaulted) {
  write(0, 2, 3);
  ack_all_but_reads();
  auto [g, id] = read(0, 2);
  ClientId bad = h.holding_read().at(0);
  Read r = take_read(bad);
  ByteBuffer corrupt(2 * kBs);
  std::memcpy(corrupt.data(), pattern(2, 3).data(), 2 * kBs);
  corrupt.data()[kBs + 17] ^= std::byte{0x40};  // one bit in the second block
  h.read_reply(bad, r, Bytes(std::move(corrupt)), contexts_of(pattern(2, 3)));
  EXPECT_FALSE(h.done(g)) << "a block that fails verification is never returned";
  auto holders = h.holding_read();
  ASSERT_EQ(holders.size(), 1u) << "retried on one other replica";
  ClientId good = holders[0];
  EXPECT_NE(good, bad);
  Read r2 = take_read(good);
  EXPECT_EQ(r2.start, BlockIndex{0});
  EXPECT_EQ(r2.block_count, 2u);
  h.read_reply(good, r2, pattern(2, 3));
  ASSERT_TRUE(h.done(g));
  ASSERT_TRUE(h.reply(g).status);
  EXPECT_EQ(h.reply(g).read.data, pattern(2, 3));
  EXPECT_EQ(h.up().snapshot().clients[bad].faults, 1u);
  EXPECT_EQ(h.up().snapshot().clients[bad].self_heals, 1u);
  EXPECT_TRUE(std::any_of(h.disconnects().begin(), h.disconnects().end(), [&](const Disconnect& d) {
    return d.client == bad;
  })) << "the bad replica is dropped (to be repaired)";
}

TEST_F(Active, ReadErrorIsRetriedOnAnotherReplica) {
  write(0, 1, 3);
  ack_all_but_reads();
  auto [g, id] = read(0, 1);
  ClientId first = h.holding_read().at(0);
  h.read_error(first, take_read(first));
  EXPECT_FALSE(h.done(g));
  ASSERT_EQ(h.holding_read().size(), 1u);
  ClientId second = h.holding_read()[0];
  EXPECT_NE(second, first);
  h.read_reply(second, take_read(second), pattern(1, 3));
  ASSERT_TRUE(h.done(g));
  ASSERT_TRUE(h.reply(g).status);
  EXPECT_EQ(h.reply(g).read.data, pattern(1, 3));
}

TEST_F(Active, ReadFailingOnEveryReplicaFailsTheGuestInsteadOfHanging) {
  auto [g, id] = read(0, 1);
  std::set<ClientId> tried;
  for (int i = 0; i < 3; ++i) {
    ASSERT_FALSE(h.done(g));
    ASSERT_EQ(h.holding_read().size(), 1u) << "attempt " << i;
    ClientId c = h.holding_read()[0];
    EXPECT_TRUE(tried.insert(c).second) << "each replica is tried once";
    h.read_error(c, take_read(c));
  }
  ASSERT_TRUE(h.done(g));
  ASSERT_FALSE(h.reply(g).status);
  EXPECT_EQ(h.reply(g).status.error().code, ErrorCode::kIo);
  EXPECT_TRUE(h.holding_read().empty());
}

// ---- retirement, the idle flush and the barrier ------------------------------------------------

TEST_F(Active, JobsRetireOnlyWhenAFlushCompletedOnAllThree) {
  write(0, 1, 1);
  write(1, 1, 2);
  GuestId f = h.submit(FlushOp{});
  EXPECT_EQ(h.up().snapshot().jobs, 3u);
  for (ClientId c : {kC0, kC1})
    for (int i = 0; i < 3; ++i) h.ack_next(c);
  ASSERT_TRUE(h.done(f));
  EXPECT_EQ(h.up().snapshot().jobs, 3u) << "kept for a replay to downstairs 2";
  h.ack_next(kC2);
  h.ack_next(kC2);
  EXPECT_EQ(h.up().snapshot().jobs, 3u);
  h.ack_next(kC2);
  EXPECT_EQ(h.up().snapshot().jobs, 0u) << "retired once the flush completed everywhere";
  // Nothing retired is named as a dependency afterwards.
  JobId w = write(0, 1, 3);
  for (ClientId c : kAllClients) EXPECT_TRUE(h.deps(c, w).empty());
}

TEST_F(Active, FlushIsIssuedAutomaticallyAboutHalfASecondAfterIoGoesQuiet) {
  TimePoint t0 = h.now();
  write(0, 1, 1);
  ack_all_but_reads();
  h.tick_at(t0 + 400ms);
  h.drop_pings();
  for (ClientId c : kAllClients) EXPECT_TRUE(h.inbox(c).empty()) << "no flush while IO is recent";
  TimePoint due = h.up().next_deadline();
  EXPECT_GT(due, t0 + 400ms);
  EXPECT_LE(due, t0 + 500ms);
  h.tick_at(due);
  h.drop_pings();
  for (ClientId c : kAllClients) {
    h.ack(c, h.take<Flush>(c).job_id);
    EXPECT_TRUE(h.inbox(c).empty());
  }
  EXPECT_EQ(h.up().snapshot().flushes, 1u);
  EXPECT_EQ(h.up().snapshot().jobs, 0u);
  // Quiet and clean: no further flushes.
  h.tick_at(h.now() + 2s);
  h.drop_pings();
  for (ClientId c : kAllClients) EXPECT_TRUE(h.inbox(c).empty());
}

TEST_F(Active, NoAutomaticFlushWithoutIo) {
  h.tick_at(h.now() + 3s);
  h.drop_pings();
  for (ClientId c : kAllClients) EXPECT_TRUE(h.inbox(c).empty());
  EXPECT_EQ(h.up().snapshot().flushes, 0u);
}

class SmallBarrierJobs : public Active {
 protected:
  SmallBarrierJobs() : Active(with(&Limits::barrier_jobs, 4)) {}
};

TEST_F(SmallBarrierJobs, BarrierAfterTheFinishedJobLimitLetsJobsRetire) {
  for (uint8_t i = 0; i < 4; ++i) write(i * 2, 2, i);
  for (ClientId c : kAllClients)
    for (int i = 0; i < 3; ++i) h.ack_next(c);
  for (ClientId c : kAllClients)
    EXPECT_EQ(h.jobs_sent(c).size(), 4u) << "3 finished jobs: no barrier yet";
  h.ack_next(kC0);  // the 4th finished job on downstairs 0
  for (ClientId c : kAllClients) {
    ASSERT_FALSE(h.inbox(c).empty());
    EXPECT_TRUE(std::holds_alternative<Barrier>(h.inbox(c).back())) << describe(h.inbox(c).back());
  }
  EXPECT_EQ(h.up().snapshot().barriers, 1u);
  EXPECT_EQ(h.up().snapshot().jobs, 5u);
  ack_all_but_reads();
  EXPECT_EQ(h.up().snapshot().jobs, 0u) << "the barrier completed everywhere: everything retired";
  EXPECT_EQ(h.up().snapshot().flushes, 0u) << "a barrier, not a flush";
}

class SmallBarrierBytes : public Active {
 protected:
  SmallBarrierBytes() : Active(with(&Limits::barrier_bytes, 4 * kBs)) {}
};

TEST_F(SmallBarrierBytes, BarrierAfterTheFinishedByteLimit) {
  write(0, 3, 1);
  for (ClientId c : kAllClients) h.ack_next(c);
  EXPECT_EQ(h.up().snapshot().barriers, 0u);
  write(8, 1, 2);
  h.ack_next(kC0);  // 4 blocks finished on downstairs 0
  h.ack_next(kC1);
  h.ack_next(kC2);
  for (ClientId c : kAllClients) h.take<Barrier>(c);
  EXPECT_EQ(h.up().snapshot().barriers, 1u);
}

// A barrier orders like a flush: it follows everything before it and everything after it
// follows it, on every downstairs.
TEST_F(SmallBarrierJobs, BarrierFollowsEverythingBeforeAndEverythingLaterFollowsIt) {
  for (uint8_t i = 0; i < 4; ++i) write(i, 1, i);
  for (ClientId c : kAllClients)
    for (int i = 0; i < 3; ++i) h.ack_next(c);
  h.ack_next(kC0);  // 4 finished on downstairs 0: barrier; the 4th write still in flight on 1 and 2
  JobId b = h.newest(kC0);
  ASSERT_TRUE(std::holds_alternative<Barrier>(h.jobs_sent(kC0).back()));
  JobId later = write(2, 1, 9);
  for (ClientId c : kAllClients) {
    SCOPED_TRACE(::testing::Message() << "downstairs " << int(c.value));
    for (JobId id : ids_sent(c))
      if (id < b) {
        EXPECT_TRUE(h.precedes(c, id, b)) << "barrier does not follow job " << id.value;
      }
    EXPECT_TRUE(h.precedes(c, b, later));
  }
}

// ---- activation ------------------------------------------------------------------------------

TEST(Activation, AutoGenerationIsOnePlusTheHighestAnyDownstairsSaw) {
  Harness h;
  ClientData<FakeDs> ds;
  ds[kC0].highest_generation = Generation{3};
  ds[kC1].highest_generation = Generation{7};
  ds[kC2].highest_generation = Generation{5};
  GuestId g = h.activate(std::nullopt, ds);
  ASSERT_TRUE(h.done(g));
  ASSERT_TRUE(h.reply(g).status) << h.reply(g).status.error().to_string();
  for (ClientId c : kAllClients) EXPECT_EQ(h.promoted(c), Generation{8});
  EXPECT_EQ(h.up().snapshot().generation, Generation{8});
  EXPECT_EQ(h.up().snapshot().state, "active");
}

TEST(Activation, FreshDownstairsActivateWithGenerationOne) {
  Harness h;
  GuestId g = h.activate(std::nullopt);
  ASSERT_TRUE(h.done(g) && h.reply(g).status);
  EXPECT_EQ(h.up().snapshot().generation, Generation{1});
}

TEST(Activation, ExplicitGenerationLowerThanOnDiskIsRefusedNamingBothNumbers) {
  Harness h;
  ClientData<FakeDs> ds;
  ds[kC1].highest_generation = Generation{57};
  GuestId g = h.activate(Generation{41}, ds);
  ASSERT_TRUE(h.done(g));
  ASSERT_FALSE(h.reply(g).status);
  const Error& e = h.reply(g).status.error();
  EXPECT_EQ(e.code, ErrorCode::kGenerationTooLow);
  EXPECT_NE(e.message.find("41"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("57"), std::string::npos) << e.message;
  EXPECT_FALSE(h.up().active());
  for (ClientId c : kAllClients) EXPECT_FALSE(h.promoted(c)) << "nobody was promoted";
  EXPECT_EQ(h.disconnects().size(), 3u);
}

TEST(Activation, ExplicitGenerationEqualToOnDiskIsRefused) {
  Harness h;
  ClientData<FakeDs> ds;
  ds[kC2].highest_generation = Generation{12};
  GuestId g = h.activate(Generation{12}, ds);
  ASSERT_TRUE(h.done(g));
  ASSERT_FALSE(h.reply(g).status);
  EXPECT_EQ(h.reply(g).status.error().code, ErrorCode::kGenerationTooLow);
}

TEST(Activation, ExplicitGenerationHigherThanOnDiskIsUsed) {
  Harness h;
  ClientData<FakeDs> ds;
  ds[kC1].highest_generation = Generation{57};
  GuestId g = h.activate(Generation{100}, ds);
  ASSERT_TRUE(h.done(g) && h.reply(g).status);
  for (ClientId c : kAllClients) EXPECT_EQ(h.promoted(c), Generation{100});
}

TEST(Activation, GeometryMismatchBetweenDownstairsIsRefused) {
  Harness h;
  ClientData<FakeDs> ds;
  ds[kC2].region.extent_count = kExtents + 1;
  GuestId g = h.activate(std::nullopt, ds);
  ASSERT_TRUE(h.done(g));
  ASSERT_FALSE(h.reply(g).status);
  const std::string& m = h.reply(g).status.error().message;
  EXPECT_NE(m.find("geometry"), std::string::npos) << m;
  EXPECT_NE(m.find(std::to_string(kExtents + 1)), std::string::npos) << m;
  EXPECT_FALSE(h.up().active());
}

TEST(Activation, BlockSizeMismatchBetweenDownstairsIsRefused) {
  Harness h;
  ClientData<FakeDs> ds;
  ds[kC1].region.block_size = 4096;
  GuestId g = h.activate(std::nullopt, ds);
  ASSERT_TRUE(h.done(g));
  ASSERT_FALSE(h.reply(g).status);
  EXPECT_NE(h.reply(g).status.error().message.find("geometry"), std::string::npos)
      << h.reply(g).status.error().message;
}

TEST(Activation, EncryptedRegionWithAnUnencryptedVolumeIsRefused) {
  Harness h;
  ClientData<FakeDs> ds;
  ds[kC1].region.encrypted = true;
  GuestId g = h.activate(std::nullopt, ds);
  ASSERT_TRUE(h.done(g));
  ASSERT_FALSE(h.reply(g).status);
  EXPECT_EQ(h.reply(g).status.error().code, ErrorCode::kEncryptionMismatch);
  EXPECT_NE(h.reply(g).status.error().message.find("encrypted"), std::string::npos)
      << h.reply(g).status.error().message;
  EXPECT_FALSE(h.up().active());
}

TEST(Activation, DownstairsRefusingTheEncryptionFlagFailsActivationWithAReason) {
  Harness h;
  ClientData<FakeDs> ds;
  ds[kC0].refuse_hello = EncryptedMismatch{true};
  GuestId g = h.activate(std::nullopt, ds);
  ASSERT_TRUE(h.done(g));
  ASSERT_FALSE(h.reply(g).status);
  EXPECT_EQ(h.reply(g).status.error().code, ErrorCode::kEncryptionMismatch);
  EXPECT_NE(h.reply(g).status.error().message.find("127.0.0.1:3801"), std::string::npos)
      << "names the downstairs: " << h.reply(g).status.error().message;
}

TEST(Activation, IoBeforeActivationFailsAsNotActive) {
  Harness h;
  GuestId w = h.submit(write_op(0, 1, 1));
  GuestId f = h.submit(FlushOp{});
  ASSERT_TRUE(h.done(w) && h.done(f));
  EXPECT_EQ(h.reply(w).status.error().code, ErrorCode::kNotActive);
  EXPECT_EQ(h.reply(f).status.error().code, ErrorCode::kNotActive);
}

// ---- faults ---------------------------------------------------------------------------------

TEST_F(Active, OneDownstairsDisconnectingLeavesReadsWritesAndFlushesWorkingOnTwo) {
  write(0, 2, 1);
  ack_all_but_reads();
  h.disconnect(kC2);
  EXPECT_NE(h.up().snapshot().clients[kC2].state.find("offline"), std::string::npos)
      << h.up().snapshot().clients[kC2].state;
  GuestId w = h.submit(write_op(4, 2, 2));
  ASSERT_TRUE(h.done(w));
  EXPECT_TRUE(h.reply(w).status);
  GuestId f = h.submit(FlushOp{});
  h.ack_next(kC0);
  h.ack_next(kC1);
  h.ack_next(kC0);
  EXPECT_FALSE(h.done(f));
  h.ack_next(kC1);
  ASSERT_TRUE(h.done(f)) << "two of three made it durable";
  EXPECT_TRUE(h.reply(f).status);
  auto [g, id] = read(0, 2);
  auto holders = h.holding_read();
  ASSERT_EQ(holders.size(), 1u);
  EXPECT_NE(holders[0], kC2) << "reads go to a connected replica";
  h.read_reply(holders[0], take_read(holders[0]), pattern(2, 1));
  ASSERT_TRUE(h.done(g));
  EXPECT_EQ(h.reply(g).read.data, pattern(2, 1));
}

TEST_F(Active, ReadInFlightOnADownstairsThatDropsIsRetriedOnAnother) {
  write(0, 1, 3);
  ack_all_but_reads();
  auto [g, id] = read(0, 1);
  ClientId c = h.holding_read().at(0);
  h.disconnect(c);
  h.inbox(c).clear();  // that connection is gone with whatever it was sent
  EXPECT_FALSE(h.done(g));
  auto holders = h.holding_read();
  ASSERT_EQ(holders.size(), 1u);
  EXPECT_NE(holders[0], c);
  h.read_reply(holders[0], take_read(holders[0]), pattern(1, 3));
  ASSERT_TRUE(h.done(g));
  ASSERT_TRUE(h.reply(g).status);
  EXPECT_EQ(h.reply(g).read.data, pattern(1, 3));
}

// Drives fake time forward, tick by tick, until `pred` holds or `limit` of fake time passed.
template <typename Pred>
bool run_until(Harness& h, Pred pred, Duration limit) {
  TimePoint end = h.now() + limit;
  while (!pred()) {
    TimePoint d = h.up().next_deadline();
    if (d == TimePoint::max() || d > end) return false;
    h.tick_at(d + 1ms);
    h.drop_pings();
  }
  return true;
}

TEST_F(Active, WithFewerThanTwoDownstairsFlushesAndWritesFailWithAClearErrorAndNeverHang) {
  write(0, 1, 1);
  ack_all_but_reads();
  h.disconnect(kC1);
  h.disconnect(kC2);
  GuestId f = h.submit(FlushOp{});
  h.ack_next(kC0);
  // The flush cannot reach 2 of 3: it must fail (after the others are given up on), not wait
  // forever.
  ASSERT_TRUE(run_until(
      h, [&] { return h.done(f); }, 5min))
      << "the flush never finished";
  ASSERT_FALSE(h.reply(f).status);
  EXPECT_EQ(h.reply(f).status.error().code, ErrorCode::kIo);
  EXPECT_NE(h.reply(f).status.error().message.find("flush"), std::string::npos)
      << h.reply(f).status.error().message;
  // From now on writes and flushes fail at once.
  GuestId w = h.submit(write_op(2, 1, 2));
  GuestId f2 = h.submit(FlushOp{});
  ASSERT_TRUE(h.done(w));
  ASSERT_FALSE(h.reply(w).status);
  EXPECT_EQ(h.reply(w).status.error().code, ErrorCode::kQuorumLost);
  EXPECT_NE(h.reply(w).status.error().message.find("2 downstairs"), std::string::npos)
      << h.reply(w).status.error().message;
  ASSERT_TRUE(h.done(f2));
  ASSERT_FALSE(h.reply(f2).status);
  EXPECT_EQ(h.reply(f2).status.error().code, ErrorCode::kQuorumLost);
}

TEST_F(Active, HigherGenerationElsewhereFencesThisUpstairsAndFailsAllIo) {
  write(0, 1, 1);
  GuestId f = h.submit(FlushOp{});
  GuestId waiting_read = h.submit(ReadOp{BlockIndex{0}, 1});
  h.deliver(kC1, YouAreNoLongerActive{Uuid::random(), Uuid::random(), Generation{9}});
  ASSERT_TRUE(h.done(f)) << "the outstanding flush is failed";
  ASSERT_FALSE(h.reply(f).status);
  EXPECT_EQ(h.reply(f).status.error().code, ErrorCode::kNoLongerActive);
  EXPECT_NE(h.reply(f).status.error().message.find("9"), std::string::npos)
      << h.reply(f).status.error().message;
  ASSERT_TRUE(h.done(waiting_read));
  EXPECT_FALSE(h.reply(waiting_read).status);
  EXPECT_EQ(h.up().snapshot().state, "disabled");
  EXPECT_FALSE(h.up().active());
  for (ClientId c : kAllClients)
    EXPECT_TRUE(std::any_of(h.disconnects().begin(), h.disconnects().end(),
                            [&](const Disconnect& d) { return d.client == c; }))
        << "downstairs " << int(c.value) << " is dropped";
  size_t sent_before = h.jobs_sent(kC0).size();
  GuestId w = h.submit(write_op(0, 1, 2));
  GuestId r = h.submit(ReadOp{BlockIndex{0}, 1});
  GuestId f2 = h.submit(FlushOp{});
  for (GuestId g : {w, r, f2}) {
    ASSERT_TRUE(h.done(g));
    ASSERT_FALSE(h.reply(g).status);
    EXPECT_EQ(h.reply(g).status.error().code, ErrorCode::kNoLongerActive);
  }
  EXPECT_EQ(h.jobs_sent(kC0).size(), sent_before) << "never writes again";
  // Nor does it reconnect on its own.
  h.tick_at(h.now() + 1min);
  EXPECT_TRUE(h.connects().size() == 3u) << "connects after fencing: " << h.connects().size() - 3;
}

TEST_F(Active, DownstairsReportingAHigherGenerationFencesThisUpstairs) {
  GuestId f = h.submit(FlushOp{});
  h.deliver(kC0, ErrorReport{JobId{0}, WireStatus{ErrorCode::kGenerationTooLow,
                                                  "generation 1 is lower than 4"}});
  ASSERT_TRUE(h.done(f));
  EXPECT_EQ(h.reply(f).status.error().code, ErrorCode::kNoLongerActive);
  GuestId w = h.submit(write_op(0, 1, 2));
  ASSERT_TRUE(h.done(w));
  EXPECT_EQ(h.reply(w).status.error().code, ErrorCode::kNoLongerActive);
}

// Drops downstairs `c` and runs the clock until the core connects to it again, then plays
// the negotiation with `ds` answering.
void reconnect_with(Harness& h, ClientId c, ClientData<FakeDs> ds) {
  h.disconnect(c);
  const size_t seen = h.connects().size();
  for (int i = 0; i < 100 && h.connects().size() == seen; ++i) {
    TimePoint d = h.up().next_deadline();
    ASSERT_NE(d, TimePoint::max()) << "no timer is due";
    h.tick_at(d);
    h.drop_pings();
  }
  ASSERT_GT(h.connects().size(), seen) << "never reconnected";
  h.negotiate(ds);
}

void expect_fenced(Harness& h, GuestId pending) {
  EXPECT_EQ(h.up().snapshot().state, "disabled");
  ASSERT_TRUE(h.done(pending)) << "the outstanding IO is failed";
  EXPECT_EQ(h.reply(pending).status.error().code, ErrorCode::kNoLongerActive);
  GuestId w = h.submit(write_op(0, 1, 2));
  ASSERT_TRUE(h.done(w));
  EXPECT_EQ(h.reply(w).status.error().code, ErrorCode::kNoLongerActive);
}

TEST_F(Active, AGenerationTooLowRefusalDuringAReconnectFencesThisUpstairs) {
  GuestId f = h.submit(FlushOp{});
  ClientData<FakeDs> ds;
  ds[kC1].refuse_hello =
      ErrorReport{JobId{0}, WireStatus{ErrorCode::kGenerationTooLow,
                                       "generation 1 does not exceed generation 1 already seen"}};
  ASSERT_NO_FATAL_FAILURE(reconnect_with(h, kC1, ds));
  expect_fenced(h, f);
}

TEST_F(Active, AReplicaThatHasSeenANewerGenerationOnReconnectFencesThisUpstairs) {
  GuestId f = h.submit(FlushOp{});
  ClientData<FakeDs> ds;
  ds[kC2].highest_generation = Generation{h.up().snapshot().generation.value + 1};
  ASSERT_NO_FATAL_FAILURE(reconnect_with(h, kC2, ds));
  expect_fenced(h, f);
  EXPECT_TRUE(h.inbox(kC2).empty() || !std::holds_alternative<PromoteToActive>(h.inbox(kC2).back()))
      << "never asks to be promoted over the newer upstairs";
}

}  // namespace
}  // namespace cru::upstairs::test
