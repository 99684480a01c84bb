// Replies from a downstairs are untrusted: a RegionInfo with an impossible geometry,
// ExtentVersions of the wrong length, read replies of the wrong size or kind, and acks for
// jobs never sent each drop (and, once active, fault) the downstairs that sent them, with
// a reason naming what was wrong; never an assert or a division by zero. Also: the core
// refuses guest IO whose data or reply would not fit in one frame.
#include <gtest/gtest.h>

#include <algorithm>

#include "proto/limits.h"
#include "unit/upstairs/harness.h"

namespace cru::upstairs::test {
namespace {

// The reason c was disconnected for, if it was.
std::optional<std::string> dropped(const Harness& h, ClientId c) {
  for (const Disconnect& d : h.disconnects())
    if (d.client == c) return d.reason;
  return std::nullopt;
}

void expect_dropped_for(const Harness& h, ClientId c, const std::string& mentions) {
  auto why = dropped(h, c);
  ASSERT_TRUE(why) << "downstairs " << int(c.value) << " was not disconnected";
  EXPECT_NE(why->find(mentions), std::string::npos) << *why;
}

// Activation where downstairs 1 reports `bad` as its region: it is dropped, the
// activation waits for it (it reconnects), and nothing crashes.
void activate_with_bad_region(RegionDefinition bad, const std::string& mentions) {
  Harness h;
  ClientData<FakeDs> ds;
  ds[kC1].region = bad;
  GuestId g = h.activate(std::nullopt, ds);
  expect_dropped_for(h, kC1, mentions);
  EXPECT_FALSE(h.done(g)) << "two good downstairs and one reconnecting: still activating";
  EXPECT_FALSE(h.up().region() && h.up().region()->extent_size == 0);
}

TEST(UntrustedRegionInfo, ExtentSizeZeroDropsTheDownstairs) {
  activate_with_bad_region({kBs, 0, kExtents, Uuid::random(), false}, "extent size 0");
}

TEST(UntrustedRegionInfo, AnInvalidBlockSizeDropsTheDownstairs) {
  activate_with_bad_region({1000, kExtentSize, kExtents, Uuid::random(), false}, "block size 1000");
  activate_with_bad_region({0, kExtentSize, kExtents, Uuid::random(), false}, "block size 0");
}

TEST(UntrustedRegionInfo, TooManyOrNoExtentsDropTheDownstairs) {
  activate_with_bad_region({kBs, kExtentSize, kMaxExtents + 1, Uuid::random(), false},
                           "extent count");
  activate_with_bad_region({kBs, kExtentSize, 0, Uuid::random(), false}, "extent count 0");
}

TEST(UntrustedRegionInfo, AGeometryWhoseSizeOverflowsDropsTheDownstairs) {
  activate_with_bad_region({kBs, UINT64_MAX / 2, kExtents, Uuid::random(), false}, "extent size");
}

TEST(UntrustedRegionInfo, TheFirstReporterCannotSetABadGeometryForTheOthers) {
  // Downstairs 0 answers first: were its geometry adopted, the good ones would be refused.
  Harness h;
  ClientData<FakeDs> ds;
  ds[kC0].region = {kBs, 0, kExtents, Uuid::random(), false};
  h.activate(std::nullopt, ds);
  expect_dropped_for(h, kC0, "extent size 0");
  EXPECT_FALSE(dropped(h, kC1));
  EXPECT_FALSE(dropped(h, kC2));
}

TEST(UntrustedRegionInfo, ExtentVersionsOfTheWrongLengthAreRefused) {
  Harness h;
  ClientData<FakeDs> ds;
  ds[kC2].versions.resize(kExtents + 1);
  GuestId g = h.activate(std::nullopt, ds);
  // During activation a refusal fails the activation (the configuration is wrong).
  ASSERT_TRUE(h.done(g));
  ASSERT_FALSE(h.reply(g).status);
  EXPECT_NE(h.reply(g).status.error().message.find("reported 5 extents, the region has 4"),
            std::string::npos)
      << h.reply(g).status.error().message;
}

class ActiveVolume : public ::testing::Test {
 protected:
  void SetUp() override { h.activate_fresh(); }

  // A one-block write acked everywhere, then a read: returns the read's guest id, the
  // downstairs holding it and the Read.
  std::tuple<GuestId, ClientId, Read> pending_read() {
    GuestId w = h.submit(write_op(0, 1, 7));
    EXPECT_TRUE(h.done(w));
    for (ClientId c : kAllClients) h.ack_next(c);
    GuestId g = h.submit(ReadOp{BlockIndex{0}, 1});
    for (ClientId c : kAllClients)
      if (auto r = take_read(c)) return {g, c, *r};
    ADD_FAILURE() << "no read was sent";
    return {g, kC0, Read{}};
  }

  // Pops the Read waiting in c's inbox, if there is one.
  std::optional<Read> take_read(ClientId c) {
    auto& q = h.inbox(c);
    auto it = std::find_if(q.begin(), q.end(),
                           [](const Message& m) { return std::holds_alternative<Read>(m); });
    if (it == q.end()) return std::nullopt;
    Read r = std::get<Read>(*it);
    q.erase(it);
    return r;
  }

  // The read went elsewhere and the guest still gets the right data from there.
  void expect_retried_elsewhere(GuestId g, ClientId bad) {
    EXPECT_FALSE(h.done(g));
    for (ClientId c : kAllClients) {
      if (c == bad) continue;
      auto r = take_read(c);
      if (!r) continue;
      h.read_reply(c, *r, pattern(1, 7));
      ASSERT_TRUE(h.done(g));
      EXPECT_TRUE(h.reply(g).status);
      EXPECT_EQ(h.reply(g).read.data, pattern(1, 7));
      return;
    }
    ADD_FAILURE() << "the read was not retried on another downstairs";
  }

  Harness h;
};

TEST_F(ActiveVolume, AReadReplyWithTheWrongBlockCountFaultsTheDownstairs) {
  auto [g, c, r] = pending_read();
  ReadResponse resp{
      r.job_id, WireStatus::ok(), kBs, {std::nullopt, std::nullopt}, Bytes::zeros(2 * kBs)};
  h.deliver(c, std::move(resp));
  expect_dropped_for(h, c, "answered with 2 blocks");
  EXPECT_EQ(h.up().snapshot().clients[c].faults, 1u);
  expect_retried_elsewhere(g, c);
}

TEST_F(ActiveVolume, AReadReplyWithTheWrongDataLengthFaultsTheDownstairs) {
  auto [g, c, r] = pending_read();
  // Not from the decoder (which checks this too): the core must not trust it either.
  ReadResponse resp{r.job_id, WireStatus::ok(), kBs, {std::nullopt}, Bytes::zeros(kBs - 1)};
  h.deliver(c, std::move(resp));
  expect_dropped_for(h, c, "511 bytes of data");
  expect_retried_elsewhere(g, c);
}

TEST_F(ActiveVolume, AReadReplyWithAnotherBlockSizeFaultsTheDownstairs) {
  auto [g, c, r] = pending_read();
  h.deliver(c, ReadResponse{r.job_id, WireStatus::ok(), 4096, {std::nullopt}, Bytes::zeros(4096)});
  expect_dropped_for(h, c, "of 4096 bytes");
  expect_retried_elsewhere(g, c);
}

TEST_F(ActiveVolume, AnAckForAReadFaultsTheDownstairs) {
  auto [g, c, r] = pending_read();
  h.ack(c, r.job_id);
  expect_dropped_for(h, c, "is a read");
}

TEST_F(ActiveVolume, AReadReplyForAWriteFaultsTheDownstairs) {
  GuestId w = h.submit(write_op(0, 1, 7));
  ASSERT_TRUE(h.done(w));
  Write sent = h.take<Write>(kC1);
  h.deliver(kC1,
            ReadResponse{sent.job_id, WireStatus::ok(), kBs, {std::nullopt}, Bytes::zeros(kBs)});
  expect_dropped_for(h, kC1, "is not a read");
  EXPECT_EQ(h.up().snapshot().clients[kC1].faults, 1u);
}

TEST_F(ActiveVolume, AnAckForAJobNeverSentFaultsTheDownstairs) {
  h.ack(kC2, JobId{kFirstJobId.value + 1000000});
  expect_dropped_for(h, kC2, "never sent");
  EXPECT_EQ(h.up().snapshot().clients[kC2].faults, 1u);
  EXPECT_FALSE(dropped(h, kC0));
}

TEST_F(ActiveVolume, AGuestIoLargerThanAFrameIsRefusedNotSent) {
  const auto too_many = static_cast<uint32_t>(kMaxIoBytes / kBs + 1);
  GuestId g = h.submit(ReadOp{BlockIndex{0}, too_many});
  ASSERT_TRUE(h.done(g));
  ASSERT_FALSE(h.reply(g).status);
  EXPECT_EQ(h.reply(g).status.error().code, ErrorCode::kIoTooLarge);
  for (ClientId c : kAllClients) EXPECT_TRUE(h.jobs_sent(c).empty());
}

}  // namespace
}  // namespace cru::upstairs::test
