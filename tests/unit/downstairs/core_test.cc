// The downstairs core, driven directly with messages (no sockets): negotiation, takeover,
// read-only serving, job dependencies, fault injection, and live repair / reconciliation
// between two cores wired together by the test.
#include "downstairs/core.h"

#include <gtest/gtest.h>

#include <deque>
#include <functional>
#include <set>

#include "common/hash.h"
#include "downstairs/extent.h"
#include "proto/limits.h"
#include "proto/repair_report.h"
#include "support/fault_fs.h"

namespace cru::downstairs {
namespace {

using namespace cru::proto;
using test::FaultFs;

constexpr uint32_t kBs = 512;
constexpr uint64_t kExtentSize = 8;
constexpr uint32_t kExtents = 4;

// ---- helpers --------------------------------------------------------------------------------

std::unique_ptr<Region> make_region(FaultFs& fs, const std::string& dir, bool encrypted = false,
                                    uint64_t extent_size = kExtentSize) {
  RegionOptions o;
  o.def = {kBs, extent_size, kExtents, Uuid::random(), encrypted};
  auto r = Region::create(fs, dir, o);
  CRU_ASSERT(r.has_value(), "creating a test region");
  return std::move(*r);
}

// n blocks of bytes derived from seed, with their (plain) contexts.
std::pair<std::vector<BlockContext>, Bytes> blocks(size_t n, uint8_t seed) {
  ByteBuffer data(n * kBs);
  for (size_t i = 0; i < data.size(); ++i)
    data.data()[i] = static_cast<std::byte>(seed + 1 + i / kBs * 13 + i % 97);
  std::vector<BlockContext> contexts;
  for (size_t i = 0; i < n; ++i)
    contexts.push_back({integrity_hash(data.span().subspan(i * kBs, kBs)), std::nullopt});
  return {std::move(contexts), Bytes(std::move(data))};
}

Write make_write(uint64_t job, std::vector<JobId> deps, uint64_t start, size_t n, uint8_t seed) {
  Write w;
  w.job_id = JobId{job};
  w.deps = std::move(deps);
  w.start = BlockIndex{start};
  w.block_size = kBs;
  std::tie(w.contexts, w.data) = blocks(n, seed);
  return w;
}

Read make_read(uint64_t job, std::vector<JobId> deps, uint64_t start, uint32_t n) {
  return Read{JobId{job}, std::move(deps), BlockIndex{start}, n};
}

Flush make_flush(uint64_t job, std::vector<JobId> deps, uint64_t flush, uint64_t gen) {
  return Flush{JobId{job},      std::move(deps), FlushNumber{flush},
               Generation{gen}, std::nullopt,    std::nullopt};
}

std::vector<JobId> ids(std::initializer_list<uint64_t> l) {
  std::vector<JobId> v;
  for (auto x : l) v.push_back(JobId{x});
  return v;
}

// Messages sent to one connection, in order.
std::vector<Message> to(const Output& out, ConnectionId c) {
  std::vector<Message> v;
  for (const auto& s : out.sends)
    if (s.conn == c) v.push_back(s.message);
  return v;
}

template <typename T>
std::vector<T> sent(const Output& out, ConnectionId c) {
  std::vector<T> v;
  for (const auto& m : to(out, c))
    if (auto* t = std::get_if<T>(&m)) v.push_back(*t);
  return v;
}

// The one message sent to c, which must be a T.
template <typename T>
T only(const Output& out, ConnectionId c) {
  auto all = to(out, c);
  EXPECT_EQ(all.size(), 1u);
  EXPECT_TRUE(!all.empty() && std::holds_alternative<T>(all[0]))
      << "expected " << tag_name(T::kTag) << ", got "
      << (all.empty() ? std::string("nothing") : describe(all[0]));
  if (all.empty() || !std::holds_alternative<T>(all[0])) return T{};
  return std::get<T>(all[0]);
}

std::optional<std::string> closed(const Output& out, ConnectionId c) {
  for (const auto& cl : out.closes)
    if (cl.conn == c) return cl.reason;
  return std::nullopt;
}

std::vector<JobId> acked(const Output& out, ConnectionId c) {
  std::vector<JobId> v;
  for (const auto& a : sent<Ack>(out, c)) v.push_back(a.job_id);
  return v;
}

Output merge(Output a, Output b) {
  for (auto& s : b.sends) a.sends.push_back(std::move(s));
  for (auto& c : b.closes) a.closes.push_back(std::move(c));
  for (auto& c : b.connects) a.connects.push_back(std::move(c));
  a.tick_soon = b.tick_soon;
  return a;
}

CoreOptions options(bool read_only, std::string repair_addr = "") {
  CoreOptions o;
  o.read_only = read_only;
  o.repair_addr = std::move(repair_addr);
  return o;
}

struct Upstairs {
  Uuid id = Uuid::random();
  Uuid session = Uuid::random();
  HereIAm hello(uint64_t gen, bool read_only = false, bool encrypted = false) const {
    return HereIAm{kProtocolVersion, id, session, Generation{gen}, read_only, encrypted};
  }
  PromoteToActive promote(uint64_t gen) const { return {id, session, Generation{gen}}; }
};

struct Fixture {
  FaultFs fs;
  std::unique_ptr<Region> region;
  std::unique_ptr<Core> core;

  explicit Fixture(CoreOptions o = {}, bool encrypted = false) {
    region = make_region(fs, "r", encrypted);
    if (o.repair_addr.empty()) o.repair_addr = "127.0.0.1:3810";
    core = std::make_unique<Core>(*region, o);
  }

  // Full negotiation; the connection is then running jobs.
  ConnectionId negotiate(const Upstairs& u, uint64_t gen, bool read_only = false) {
    ConnectionId c = core->new_connection();
    auto o1 = core->on_message(c, u.hello(gen, read_only, region->def().encrypted));
    EXPECT_EQ(only<YesItsMe>(o1, c).version, kProtocolVersion);
    auto o2 = core->on_message(c, u.promote(gen));
    EXPECT_EQ(only<YouAreNowActive>(o2, c).generation, Generation{gen});
    auto o3 = core->on_message(c, RegionInfoPlease{});
    EXPECT_EQ(only<RegionInfo>(o3, c).region, region->def());
    auto o4 = core->on_message(c, ExtentVersionsPlease{});
    EXPECT_EQ(only<ExtentVersions>(o4, c).extents, region->versions());
    return c;
  }
};

// ---- negotiation ------------------------------------------------------------------------------

TEST(CoreNegotiation, HappyPathAnswersEveryStep) {
  Fixture f;
  Upstairs u;
  ConnectionId c = f.core->new_connection();
  auto yes = only<YesItsMe>(f.core->on_message(c, u.hello(3)), c);
  EXPECT_EQ(yes.version, kProtocolVersion);
  EXPECT_EQ(yes.repair_addr, "127.0.0.1:3810");
  auto active = only<YouAreNowActive>(f.core->on_message(c, u.promote(3)), c);
  EXPECT_EQ(active, (YouAreNowActive{u.id, u.session, Generation{3}}));
  EXPECT_EQ(f.core->active_upstairs(), c);
  EXPECT_EQ(only<RegionInfo>(f.core->on_message(c, RegionInfoPlease{}), c).region, f.region->def());
  auto versions = only<ExtentVersions>(f.core->on_message(c, ExtentVersionsPlease{}), c);
  ASSERT_EQ(versions.extents.size(), kExtents);
  for (const auto& v : versions.extents)
    EXPECT_EQ(v, (ExtentVersion{Generation{0}, FlushNumber{0}, false}));
}

TEST(CoreNegotiation, AVersionMismatchIsAnsweredAndClosed) {
  Fixture f;
  ConnectionId c = f.core->new_connection();
  auto hello = Upstairs{}.hello(1);
  hello.version = kProtocolVersion + 1;
  auto out = f.core->on_message(c, hello);
  EXPECT_EQ(only<VersionMismatch>(out, c).version, kProtocolVersion);
  auto reason = closed(out, c);
  ASSERT_TRUE(reason);
  EXPECT_NE(reason->find(std::to_string(kProtocolVersion + 1)), std::string::npos) << *reason;
  EXPECT_EQ(f.core->connection_count(), 0u);
}

TEST(CoreNegotiation, AReadOnlyMismatchIsAnsweredAndClosed) {
  {
    Fixture f;
    ConnectionId c = f.core->new_connection();
    auto out = f.core->on_message(c, Upstairs{}.hello(1, /*read_only=*/true));
    EXPECT_EQ(only<ReadOnlyMismatch>(out, c).expected, false);
    EXPECT_TRUE(closed(out, c));
  }
  {
    Fixture f(options(true));
    ConnectionId c = f.core->new_connection();
    auto out = f.core->on_message(c, Upstairs{}.hello(1, /*read_only=*/false));
    EXPECT_EQ(only<ReadOnlyMismatch>(out, c).expected, true);
    EXPECT_TRUE(closed(out, c));
  }
}

TEST(CoreNegotiation, AnEncryptionMismatchIsAnsweredAndClosed) {
  for (bool region_encrypted : {false, true}) {
    Fixture f({}, region_encrypted);
    ConnectionId c = f.core->new_connection();
    auto out = f.core->on_message(c, Upstairs{}.hello(1, false, !region_encrypted));
    EXPECT_EQ(only<EncryptedMismatch>(out, c).expected, region_encrypted);
    EXPECT_TRUE(closed(out, c));
  }
}

TEST(CoreNegotiation, PromoteWithOtherIdsIsAUuidMismatch) {
  Fixture f;
  Upstairs u, other;
  for (auto promote : {PromoteToActive{other.id, u.session, Generation{1}},
                       PromoteToActive{u.id, other.session, Generation{1}}}) {
    ConnectionId c = f.core->new_connection();
    f.core->on_message(c, u.hello(1));
    auto out = f.core->on_message(c, promote);
    EXPECT_EQ(only<UuidMismatch>(out, c).expected, u.id);
    EXPECT_TRUE(closed(out, c));
    EXPECT_FALSE(f.core->active_upstairs());
  }
}

TEST(CoreNegotiation, OutOfOrderMessagesCloseWithAReason) {
  Upstairs u;
  // Each case: how many negotiation steps to take first, then the wrong message.
  struct Case {
    int steps;
    Message wrong;
  };
  std::vector<Case> cases = {
      {0, make_write(1000, {}, 0, 1, 1)},
      {0, PromoteToActive{}},
      {0, RegionInfoPlease{}},
      {1, RegionInfoPlease{}},
      {1, u.hello(1)},
      {1, make_read(1000, {}, 0, 1)},
      {2, ExtentVersionsPlease{}},
      {2, make_write(1000, {}, 0, 1, 1)},
      {3, make_read(1000, {}, 0, 1)},
      {3, RegionInfoPlease{}},
      {4, u.hello(1)},
      {4, u.promote(1)},
      {4, Imok{}},
      {4, RepairHello{}},
      {0, ExtentFetch{}},
  };
  for (auto& c : cases) {
    SCOPED_TRACE(fmt::format("after {} steps: {}", c.steps, describe(c.wrong)));
    Fixture f;
    ConnectionId conn = f.core->new_connection();
    std::vector<Message> steps = {u.hello(1), u.promote(1), RegionInfoPlease{},
                                  ExtentVersionsPlease{}};
    for (int i = 0; i < c.steps; ++i)
      ASSERT_FALSE(closed(f.core->on_message(conn, steps[i]), conn));
    auto out = f.core->on_message(conn, c.wrong);
    auto reason = closed(out, conn);
    ASSERT_TRUE(reason);
    EXPECT_NE(reason->find("protocol error"), std::string::npos) << *reason;
    EXPECT_EQ(f.core->connection_count(), 0u);
  }
}

TEST(CoreNegotiation, RuokIsAnsweredInEveryState) {
  Fixture f;
  Upstairs u;
  ConnectionId c = f.core->new_connection();
  std::vector<Message> steps = {u.hello(1), u.promote(1), RegionInfoPlease{},
                                ExtentVersionsPlease{}};
  for (size_t i = 0; i <= steps.size(); ++i) {
    auto out = f.core->on_message(c, Ruok{});
    only<Imok>(out, c);
    EXPECT_FALSE(closed(out, c)) << "after " << i << " steps";
    if (i < steps.size()) f.core->on_message(c, steps[i]);
  }
  ConnectionId peer = f.core->new_connection();
  f.core->on_message(peer, RepairHello{});
  only<Imok>(f.core->on_message(peer, Ruok{}), peer);
}

TEST(CoreNegotiation, LastFlushInsteadOfExtentVersionsStartsJobsWithoutAReply) {
  Fixture f;
  Upstairs u;
  ConnectionId c = f.core->new_connection();
  f.core->on_message(c, u.hello(1));
  f.core->on_message(c, u.promote(1));
  f.core->on_message(c, RegionInfoPlease{});
  auto out = f.core->on_message(c, LastFlush{JobId{1500}});
  EXPECT_TRUE(to(out, c).empty());
  EXPECT_FALSE(closed(out, c));
  // The completed set holds the last flush: a job depending on it runs at once.
  auto w = f.core->on_message(c, make_write(1501, ids({1500}), 0, 1, 1));
  EXPECT_EQ(acked(w, c), ids({1501}));
  EXPECT_TRUE(sent<Ack>(w, c)[0].status.is_ok());
}

// A damaged region reopened under `f` (its core restarted) and replaying from job 1500.
ConnectionId replay_after_reopen(Fixture& f, const Upstairs& u) {
  f.core.reset();
  f.region.reset();
  auto r = Region::open(f.fs, "r", false);
  EXPECT_TRUE(r) << r.error().to_string();
  if (r) f.region = std::move(*r);
  f.core = std::make_unique<Core>(*f.region, options(false, "127.0.0.1:3810"));
  ConnectionId c = f.core->new_connection();
  f.core->on_message(c, u.hello(1));
  f.core->on_message(c, u.promote(1));
  f.core->on_message(c, RegionInfoPlease{});
  auto out = f.core->on_message(c, LastFlush{JobId{1500}});
  EXPECT_TRUE(to(out, c).empty()) << "damage is told at the first flush, after the replay";
  return c;
}

TEST(CoreNegotiation, ADamagedRegionFailsTheFirstFlushOfAReplay) {
  Fixture f;
  f.core.reset();
  const std::string path = f.region->extent_path(ExtentId{1});
  f.region.reset();
  ASSERT_TRUE(f.fs.remove(path));
  Upstairs u;
  ConnectionId c = replay_after_reopen(f, u);
  auto out = f.core->on_message(c, make_flush(1501, ids({1500}), 3, 1));
  const auto& ack = only<Ack>(out, c);
  EXPECT_EQ(ack.status.code, ErrorCode::kCorrupt);
  EXPECT_NE(ack.status.message.find("extent 1"), std::string::npos) << ack.status.message;
  EXPECT_FALSE(closed(out, c)) << "the upstairs decides: it repairs this downstairs";
}

// A block torn by a crash was being written by a job the upstairs replays: written whole
// again, it is no longer damaged, and the replica is not faulted for it.
TEST(CoreNegotiation, AReplayThatRewritesATornBlockHealsIt) {
  Fixture f;
  Upstairs u;
  ConnectionId c0 = f.negotiate(u, 1);
  f.core->on_message(c0, make_write(1000, {}, 2, 1, 5));
  const std::string path = f.region->extent_path(ExtentId{0});
  f.core.reset();
  f.region.reset();  // killed with the extent dirty: the next open scans it
  {
    auto file = f.fs.open(path, OpenMode::kReadWrite);
    ASSERT_TRUE(file);
    std::vector<std::byte> torn(kBs, std::byte{0xa7});
    ASSERT_TRUE((*file)->write_at(ExtentLayout{kBs, kExtentSize}.data_offset(2), torn));
  }
  ConnectionId c = replay_after_reopen(f, u);
  ASSERT_TRUE(f.region->versions()[0].damaged);
  auto w = f.core->on_message(c, make_write(1501, ids({1500}), 2, 1, 5));
  EXPECT_TRUE(sent<Ack>(w, c)[0].status.is_ok());
  auto out = f.core->on_message(c, make_flush(1502, ids({1501}), 3, 1));
  EXPECT_TRUE(only<Ack>(out, c).status.is_ok()) << only<Ack>(out, c).status.message;
  EXPECT_FALSE(f.region->versions()[0].damaged);
}

// ---- takeover -----------------------------------------------------------------------------------

TEST(CoreTakeover, AHigherGenerationTakesOver) {
  Fixture f;
  Upstairs a, b;
  ConnectionId ca = f.negotiate(a, 1);
  ConnectionId cb = f.core->new_connection();
  only<YesItsMe>(f.core->on_message(cb, b.hello(2)), cb);
  auto out = f.core->on_message(cb, b.promote(2));
  EXPECT_EQ(only<YouAreNowActive>(out, cb).generation, Generation{2});
  EXPECT_EQ(only<YouAreNoLongerActive>(out, ca),
            (YouAreNoLongerActive{b.id, b.session, Generation{2}}));
  ASSERT_TRUE(closed(out, ca));
  EXPECT_FALSE(closed(out, cb));
  EXPECT_EQ(f.core->active_upstairs(), cb);
  // The old connection is gone: whatever it still sends is ignored.
  auto late = f.core->on_message(ca, make_write(1000, {}, 0, 1, 1));
  EXPECT_TRUE(late.sends.empty());
  EXPECT_TRUE(late.closes.empty());
}

TEST(CoreTakeover, AReconnectOfTheSameSessionWithTheSameGenerationTakesOver) {
  Fixture f;
  Upstairs a;
  ConnectionId c1 = f.negotiate(a, 4);
  ConnectionId c2 = f.core->new_connection();
  f.core->on_message(c2, a.hello(4));
  auto out = f.core->on_message(c2, a.promote(4));
  only<YouAreNowActive>(out, c2);
  EXPECT_TRUE(closed(out, c1));
  EXPECT_EQ(f.core->active_upstairs(), c2);
}

void expect_refused(Fixture& f, const Upstairs& u, uint64_t gen) {
  ConnectionId c = f.core->new_connection();
  f.core->on_message(c, u.hello(gen));
  auto before = f.core->active_upstairs();
  auto out = f.core->on_message(c, u.promote(gen));
  auto report = only<ErrorReport>(out, c);
  EXPECT_EQ(report.status.code, ErrorCode::kGenerationTooLow);
  EXPECT_EQ(report.job_id, JobId{0});
  EXPECT_TRUE(closed(out, c));
  EXPECT_EQ(out.closes.size(), 1u) << "only the refused connection closes";
  EXPECT_EQ(f.core->active_upstairs(), before);
}

TEST(CoreTakeover, AnEqualGenerationFromAnotherUpstairsIsRefused) {
  Fixture f;
  ConnectionId a = f.negotiate(Upstairs{}, 3);
  expect_refused(f, Upstairs{}, 3);
  EXPECT_EQ(f.core->active_upstairs(), a);
}

TEST(CoreTakeover, AnEqualGenerationFromAnotherSessionOfTheSameUpstairsIsRefused) {
  Fixture f;
  Upstairs a;
  f.negotiate(a, 3);
  Upstairs again = a;
  again.session = Uuid::random();
  expect_refused(f, again, 3);
}

TEST(CoreTakeover, ALowerGenerationIsRefused) {
  Fixture f;
  ConnectionId a = f.negotiate(Upstairs{}, 5);
  expect_refused(f, Upstairs{}, 4);
  EXPECT_EQ(f.core->active_upstairs(), a);
}

TEST(CoreTakeover, ALowerOrEqualGenerationFromAnotherUpstairsIsRefusedAfterTheActiveOneLeft) {
  for (uint64_t gen : {4, 5}) {
    Fixture f;
    ConnectionId a = f.negotiate(Upstairs{}, 5);
    f.core->on_disconnect(a, "gone");
    EXPECT_FALSE(f.core->active_upstairs());
    expect_refused(f, Upstairs{}, gen);
  }
}

TEST(CoreTakeover, AGenerationLowerThanOneOnDiskIsRefused) {
  FaultFs fs;
  auto region = make_region(fs, "r");
  auto [ctx, data] = blocks(1, 1);
  ASSERT_TRUE(region->write(BlockIndex{0}, kBs, ctx, data.span(), false));
  ASSERT_TRUE(region->flush(FlushNumber{1}, Generation{7}, std::nullopt));
  Core core(*region, {});
  Upstairs u;
  ConnectionId c = core.new_connection();
  EXPECT_EQ(only<YesItsMe>(core.on_message(c, u.hello(6)), c).highest_generation, Generation{7})
      << "the upstairs learns the generation to beat";
  auto out = core.on_message(c, u.promote(6));
  EXPECT_EQ(only<ErrorReport>(out, c).status.code, ErrorCode::kGenerationTooLow);
  EXPECT_TRUE(closed(out, c));
  ConnectionId c2 = core.new_connection();
  core.on_message(c2, u.hello(8));
  only<YouAreNowActive>(core.on_message(c2, u.promote(8)), c2);
}

TEST(CoreTakeover, APromotionOutlivesARestartWithoutAnyFlush) {
  Fixture f;
  Upstairs a;
  f.negotiate(a, 4);
  // The downstairs restarts: a new core over the region reopened from disk.
  f.core.reset();
  f.region.reset();
  auto region = Region::open(f.fs, "r", false);
  ASSERT_TRUE(region) << region.error().to_string();
  f.region = std::move(*region);
  ASSERT_TRUE(f.region->last_promotion());
  EXPECT_EQ(*f.region->last_promotion(), (Promotion{Generation{4}, a.id, a.session}));
  f.core = std::make_unique<Core>(*f.region, CoreOptions{});
  // A stranger learns 4 is the generation to beat and cannot use 4 (or 3) itself.
  ConnectionId probe = f.core->new_connection();
  EXPECT_EQ(
      only<YesItsMe>(f.core->on_message(probe, Upstairs{}.hello(3)), probe).highest_generation,
      Generation{4});
  expect_refused(f, Upstairs{}, 4);
  expect_refused(f, Upstairs{}, 3);
  // The upstairs that was promoted comes back with its generation and session.
  f.negotiate(a, 4);
}

TEST(CoreTakeover, APromotionThatCannotBeRecordedIsRefused) {
  Fixture f;
  f.fs.fail_next(FaultFs::Op::kRename);  // promotion.json.tmp -> promotion.json
  Upstairs u;
  ConnectionId c = f.core->new_connection();
  f.core->on_message(c, u.hello(1));
  auto out = f.core->on_message(c, u.promote(1));
  EXPECT_EQ(only<ErrorReport>(out, c).status.code, ErrorCode::kIo);
  EXPECT_TRUE(closed(out, c));
  EXPECT_FALSE(f.core->active_upstairs());
}

TEST(CoreTakeover, AFlushCarryingAnotherGenerationIsRefusedAndTouchesNothing) {
  for (uint64_t gen : {2, 9, 3}) {
    Fixture f;
    ConnectionId c = f.negotiate(Upstairs{}, 3);
    ASSERT_EQ(acked(f.core->on_message(c, make_write(1000, {}, 0, 1, 1)), c), ids({1000}));
    auto out = f.core->on_message(c, make_flush(1001, ids({1000}), 1, gen));
    if (gen == 3) {  // the connection's own generation
      EXPECT_EQ(acked(out, c), ids({1001}));
      EXPECT_EQ(f.region->versions()[0].generation, Generation{3});
      continue;
    }
    EXPECT_TRUE(acked(out, c).empty());
    ASSERT_TRUE(closed(out, c));
    EXPECT_NE(closed(out, c)->find("carries generation " + std::to_string(gen)), std::string::npos)
        << *closed(out, c);
    EXPECT_EQ(f.region->versions()[0].generation, Generation{0}) << "nothing reached the disk";
  }
}

TEST(CoreTakeover, AReconciliationFlushCarryingAnotherGenerationIsRefused) {
  Fixture f;
  ConnectionId c = f.negotiate(Upstairs{}, 3);
  auto out = f.core->on_message(
      c, ExtentFlush{RepairId{1}, ExtentId{0}, ClientId{0}, FlushNumber{1}, Generation{4}});
  EXPECT_TRUE(sent<RepairAck>(out, c).empty());
  EXPECT_TRUE(closed(out, c));
}

TEST(CoreTakeover, GenerationZeroIsRefused) {
  Fixture f;
  expect_refused(f, Upstairs{}, 0);
  EXPECT_FALSE(f.core->active_upstairs());
}

TEST(CoreTakeover, ANewSessionStartsWithEveryExtentOpen) {
  Fixture f;
  ConnectionId a = f.negotiate(Upstairs{}, 1);
  auto out = f.core->on_message(a, ExtentLiveClose{JobId{1000}, {}, ExtentId{2}});
  ASSERT_TRUE(only<ExtentLiveCloseAck>(out, a).status.is_ok());
  EXPECT_FALSE(f.region->is_open(ExtentId{2}));
  ConnectionId b = f.negotiate(Upstairs{}, 2);
  EXPECT_TRUE(f.region->is_open(ExtentId{2}));
  auto rd = f.core->on_message(b, make_read(1000, {}, 2 * kExtentSize, 1));
  EXPECT_TRUE(only<ReadResponse>(rd, b).status.is_ok());
}

// ---- read-only downstairs ---------------------------------------------------------------------

TEST(CoreReadOnly, SeveralUpstairsCoexistAndWritesAreRefusedReadsServed) {
  FaultFs fs;
  auto rw = make_region(fs, "r");
  auto [ctx, data] = blocks(2, 9);
  ASSERT_TRUE(rw->write(BlockIndex{3}, kBs, ctx, data.span(), false));
  ASSERT_TRUE(rw->flush(FlushNumber{1}, Generation{1}, std::nullopt));
  rw.reset();
  auto ro = Region::open(fs, "r", true);
  ASSERT_TRUE(ro);
  Core core(**ro, options(true));
  std::vector<ConnectionId> conns;
  for (int i = 0; i < 3; ++i) {
    Upstairs u;
    ConnectionId c = core.new_connection();
    only<YesItsMe>(core.on_message(c, u.hello(1, true)), c);
    auto out = core.on_message(c, u.promote(1));
    only<YouAreNowActive>(out, c);
    EXPECT_TRUE(out.closes.empty()) << "nobody is displaced";
    core.on_message(c, RegionInfoPlease{});
    core.on_message(c, ExtentVersionsPlease{});
    conns.push_back(c);
  }
  EXPECT_EQ(core.connection_count(), 3u);
  for (ConnectionId c : conns) {
    auto w = core.on_message(c, make_write(1000, {}, 0, 1, 1));
    EXPECT_EQ(only<Ack>(w, c).status.code, ErrorCode::kReadOnly);
    EXPECT_FALSE(closed(w, c));
    auto d = core.on_message(c, Discard{JobId{1001}, {}, BlockIndex{0}, 1});
    EXPECT_EQ(only<Ack>(d, c).status.code, ErrorCode::kReadOnly);
    auto r = only<ReadResponse>(core.on_message(c, make_read(1002, {}, 3, 2)), c);
    ASSERT_TRUE(r.status.is_ok());
    EXPECT_EQ(r.data, data);
    EXPECT_EQ(r.contexts[1], std::optional<BlockContext>(ctx[1]));
    EXPECT_TRUE(
        only<Ack>(core.on_message(c, make_flush(1003, ids({1002}), 2, 1)), c).status.is_ok());
  }
}

// ---- jobs
// -------------------------------------------------------------------------------------------

TEST(CoreJobs, AJobWaitsForADependencyThatArrivesLater) {
  Fixture f;
  ConnectionId c = f.negotiate(Upstairs{}, 1);
  auto first = f.core->on_message(c, make_write(1001, ids({1000}), 0, 1, 2));
  EXPECT_TRUE(first.sends.empty()) << "1001 waits for 1000";
  auto second = f.core->on_message(c, make_write(1000, {}, 0, 1, 1));
  EXPECT_EQ(acked(second, c), ids({1000, 1001}));
  for (const auto& a : sent<Ack>(second, c)) EXPECT_TRUE(a.status.is_ok());
  // They ran in dependency order: the block holds 1001's data.
  auto r = only<ReadResponse>(f.core->on_message(c, make_read(1002, ids({1001}), 0, 1)), c);
  EXPECT_EQ(r.data, make_write(1001, {}, 0, 1, 2).data);
}

TEST(CoreJobs, AChainArrivingInReverseRunsInOrder) {
  Fixture f;
  ConnectionId c = f.negotiate(Upstairs{}, 1);
  Output all;
  for (uint64_t j = 1009; j > 1000; --j)
    all = merge(std::move(all),
                f.core->on_message(c, make_write(j, ids({j - 1}), 0, 1, static_cast<uint8_t>(j))));
  EXPECT_TRUE(all.sends.empty());
  auto out = f.core->on_message(c, make_write(1000, {}, 0, 1, 0));
  std::vector<JobId> want;
  for (uint64_t j = 1000; j < 1010; ++j) want.push_back(JobId{j});
  EXPECT_EQ(acked(out, c), want);
}

TEST(CoreJobs, AnUnmetDependencyStaysPending) {
  Fixture f;
  ConnectionId c = f.negotiate(Upstairs{}, 1);
  auto out = f.core->on_message(c, make_write(1001, ids({999}), 0, 1, 1));
  EXPECT_TRUE(out.sends.empty());
  EXPECT_FALSE(closed(out, c));
  only<Imok>(f.core->on_message(c, Ruok{}), c);
  auto other = f.core->on_message(c, make_read(1002, {}, 8, 1));
  EXPECT_TRUE(only<ReadResponse>(other, c).status.is_ok()) << "independent jobs still run";
  EXPECT_FALSE(f.region->versions()[0].dirty) << "the waiting write has not run";
}

TEST(CoreJobs, ACompletedFlushResetsTheCompletedSet) {
  Fixture f;
  ConnectionId c = f.negotiate(Upstairs{}, 1);
  EXPECT_EQ(acked(f.core->on_message(c, make_write(1000, {}, 0, 1, 1)), c), ids({1000}));
  auto fl = f.core->on_message(c, make_flush(1001, ids({1000}), 1, 1));
  EXPECT_TRUE(only<Ack>(fl, c).status.is_ok());
  EXPECT_FALSE(f.region->versions()[0].dirty);
  EXPECT_EQ(acked(f.core->on_message(c, make_write(1002, ids({1001}), 1, 1, 2)), c), ids({1002}));
  // A dependency on a job from before the flush is an upstairs bug; it must not crash
  // the downstairs or its connection.
  auto stale = f.core->on_message(c, make_write(1003, ids({1000}), 2, 1, 3));
  EXPECT_FALSE(closed(stale, c));
  only<Imok>(f.core->on_message(c, Ruok{}), c);
}

TEST(CoreJobs, ABarrierResetsTheCompletedSetLikeAFlush) {
  Fixture f;
  ConnectionId c = f.negotiate(Upstairs{}, 1);
  f.core->on_message(c, make_write(1000, {}, 0, 1, 1));
  EXPECT_TRUE(
      only<Ack>(f.core->on_message(c, Barrier{JobId{1001}, ids({1000})}), c).status.is_ok());
  EXPECT_TRUE(f.region->versions()[0].dirty) << "a barrier makes nothing durable";
  EXPECT_EQ(acked(f.core->on_message(c, make_write(1002, ids({1001}), 1, 1, 2)), c), ids({1002}));
}

TEST(CoreJobs, IoErrorsComeBackInTheAckNotAsAClose) {
  Fixture f;
  ConnectionId c = f.negotiate(Upstairs{}, 1);
  const uint64_t total = kExtentSize * kExtents;
  auto outside = f.core->on_message(c, make_write(1000, {}, total, 1, 1));
  EXPECT_EQ(only<Ack>(outside, c).status.code, ErrorCode::kOffsetInvalid);
  auto wrong_size = make_write(1001, {}, 0, 1, 1);
  wrong_size.block_size = 1024;
  wrong_size.data = Bytes::zeros(1024);
  wrong_size.contexts[0].hash = integrity_hash(wrong_size.data.span());
  EXPECT_EQ(only<Ack>(f.core->on_message(c, wrong_size), c).status.code,
            ErrorCode::kBlockSizeMismatch);
  auto bad_hash = make_write(1002, {}, 0, 2, 1);
  bad_hash.contexts[1].hash ^= 1;
  EXPECT_EQ(only<Ack>(f.core->on_message(c, bad_hash), c).status.code, ErrorCode::kHashMismatch);
  auto read = only<ReadResponse>(f.core->on_message(c, make_read(1003, {}, total - 1, 2)), c);
  EXPECT_EQ(read.status.code, ErrorCode::kOffsetInvalid);
  EXPECT_TRUE(read.contexts.empty());
  EXPECT_TRUE(read.data.empty());
  auto limit = make_flush(1004, {}, 1, 1);
  limit.extent_limit = ExtentId{kExtents};
  EXPECT_EQ(only<Ack>(f.core->on_message(c, limit), c).status.code, ErrorCode::kInvalidExtent);
  EXPECT_EQ(f.core->connection_count(), 1u);
  // A failed write or flush never completes: a job depending on it does not run (a later
  // flush must not stamp an extent that lacks a failed write). Jobs without it still run.
  EXPECT_TRUE(acked(f.core->on_message(c, make_write(1005, ids({1004}), 0, 1, 1)), c).empty());
  EXPECT_EQ(acked(f.core->on_message(c, make_write(1006, ids({1003}), 0, 1, 1)), c), ids({1006}));
}

TEST(CoreJobs, MoreThanTheQueueLimitCloses) {
  Fixture f;
  ConnectionId c = f.negotiate(Upstairs{}, 1);
  for (uint64_t i = 0; i < kMaxQueuedJobs; ++i) {
    auto out = f.core->on_message(c, ExtentLiveNoOp{JobId{2000 + i}, ids({1000})});
    ASSERT_TRUE(out.sends.empty() && out.closes.empty()) << "job " << i;
  }
  auto out = f.core->on_message(c, ExtentLiveNoOp{JobId{2000 + kMaxQueuedJobs}, ids({1000})});
  auto reason = closed(out, c);
  ASSERT_TRUE(reason);
  EXPECT_NE(reason->find(std::to_string(kMaxQueuedJobs)), std::string::npos) << *reason;
  EXPECT_EQ(f.core->connection_count(), 0u);
  EXPECT_FALSE(f.core->active_upstairs());
}

TEST(CoreMemory, QueuedJobsAreCountedWithTheRepliesReadsWillMake) {
  Fixture f;
  ConnectionId c = f.negotiate(Upstairs{}, 1);
  uint64_t idle = f.core->held_bytes(c);
  // Both wait for job 999: a 4-block write holds its data, a 4-block read its reply.
  f.core->on_message(c, make_write(1000, ids({999}), 0, 4, 1));
  uint64_t with_write = f.core->held_bytes(c);
  EXPECT_GE(with_write - idle, 4 * kBs);
  f.core->on_message(c, make_read(1001, ids({999}), 0, 4));
  EXPECT_GE(f.core->held_bytes(c) - with_write, 4 * kBs);
  // Once they run, only the remembered completed ids are left.
  f.core->on_message(c, make_write(999, {}, 8, 1, 2));
  EXPECT_EQ(f.core->held_bytes(c), idle + 3 * kCompletedJobBytes);
}

TEST(CoreMemory, TheCompletedSetForgetsTheEarliestBeyondItsLimit) {
  // Read-only: the upstairs never flushes, so nothing else empties the set.
  CoreOptions o;
  o.read_only = true;
  Fixture ro(o);
  ConnectionId c = ro.negotiate(Upstairs{}, 1, true);
  for (uint64_t i = 0; i < kMaxCompletedJobs + 10; ++i)
    ASSERT_EQ(ro.core->on_message(c, make_read(1000 + i, {}, 0, 1)).sends.size(), 1u);
  EXPECT_EQ(ro.core->held_bytes(c), kMaxCompletedJobs * kCompletedJobBytes);
  // The latest are still known (a job depending on one runs); the earliest are forgotten.
  uint64_t last = 1000 + kMaxCompletedJobs + 9;
  EXPECT_EQ(
      sent<ReadResponse>(ro.core->on_message(c, make_read(last + 1, ids({last}), 0, 1)), c).size(),
      1u);
  EXPECT_TRUE(ro.core->on_message(c, make_read(last + 2, ids({1000}), 0, 1)).sends.empty());
}

TEST(CoreMemory, OnlyARunningReadWriteUpstairsMaySendLargeFrames) {
  Fixture f;
  ConnectionId c = f.core->new_connection();
  EXPECT_EQ(f.core->frame_bytes_max(c), kNegotiationFrameBytesMax);
  EXPECT_FALSE(f.core->negotiated(c));
  Upstairs u;
  f.core->on_message(c, u.hello(1));
  EXPECT_TRUE(f.core->negotiated(c));
  EXPECT_EQ(f.core->frame_bytes_max(c), kNegotiationFrameBytesMax);
  ConnectionId running = f.negotiate(Upstairs{}, 2);
  EXPECT_EQ(f.core->frame_bytes_max(running), kMaxFrameBytes);
  CoreOptions o;
  o.read_only = true;
  Fixture ro(o);
  EXPECT_EQ(ro.core->frame_bytes_max(ro.negotiate(Upstairs{}, 1, true)),
            kJobFrameWithoutDataBytesMax);
}

TEST(CoreJobs, InjectedErrorsAreReturnedAsInjected) {
  CoreOptions o;
  o.faults = FaultInjection{1.0, 1.0, 1.0, false, 7};
  Fixture f(o);
  ConnectionId c = f.negotiate(Upstairs{}, 1);
  auto w = only<Ack>(f.core->on_message(c, make_write(1000, {}, 0, 1, 1)), c);
  EXPECT_EQ(w.status.code, ErrorCode::kInjected);
  WriteUnwritten wu{make_write(1001, {}, 0, 1, 1)};
  EXPECT_EQ(only<Ack>(f.core->on_message(c, wu), c).status.code, ErrorCode::kInjected);
  auto r = only<ReadResponse>(f.core->on_message(c, make_read(1002, {}, 0, 1)), c);
  EXPECT_EQ(r.status.code, ErrorCode::kInjected);
  EXPECT_TRUE(r.data.empty());
  EXPECT_EQ(
      only<Ack>(f.core->on_message(c, Discard{JobId{1003}, {}, BlockIndex{0}, 1}), c).status.code,
      ErrorCode::kInjected);
  EXPECT_EQ(only<Ack>(f.core->on_message(c, make_flush(1004, {}, 1, 1)), c).status.code,
            ErrorCode::kInjected);
  EXPECT_FALSE(f.region->versions()[0].dirty) << "an injected write error writes nothing";
}

// ---- statistics (stats.h, read by the metrics endpoint) ----------------------------------

TEST(CoreStats, JobsBytesConnectionsAndDiskTimeAreCounted) {
  // A clock that advances 2 ms at every read: each job's disk work takes 2 ms.
  auto t = std::make_shared<std::chrono::steady_clock::time_point>();
  CoreOptions o;
  o.clock = [t] { return *t += std::chrono::milliseconds(2); };
  Fixture f(o);
  ConnectionId c = f.negotiate(Upstairs{}, 1);
  EXPECT_EQ(f.core->stats().connections.load(), 1u);
  ASSERT_TRUE(only<Ack>(f.core->on_message(c, make_write(1000, {}, 0, 2, 1)), c).status.is_ok());
  ASSERT_TRUE(
      only<ReadResponse>(f.core->on_message(c, make_read(1001, {}, 0, 1)), c).status.is_ok());
  ASSERT_TRUE(only<Ack>(f.core->on_message(c, make_flush(1002, {}, 1, 1)), c).status.is_ok());
  const CoreStats& s = f.core->stats();
  EXPECT_EQ(s[JobKind::kWrite].jobs.load(), 1u);
  EXPECT_EQ(s[JobKind::kRead].jobs.load(), 1u);
  EXPECT_EQ(s[JobKind::kFlush].jobs.load(), 1u);
  EXPECT_EQ(s[JobKind::kDiscard].jobs.load(), 0u);
  EXPECT_EQ(s.written_bytes.load(), 2u * f.region->def().block_size);
  EXPECT_EQ(s.read_bytes.load(), f.region->def().block_size);
  // 2 ms: in the (1 ms, 2.5 ms] bucket, index 5.
  EXPECT_EQ(s[JobKind::kWrite].disk_seconds.bucket(5), 1u);
  EXPECT_NEAR(s[JobKind::kWrite].disk_seconds.sum_seconds(), 0.002, 1e-9);
  for (const auto& e : s.errors) EXPECT_EQ(e.load(), 0u);
  f.core->on_disconnect(c, "test");
  EXPECT_EQ(f.core->stats().connections.load(), 0u);
}

TEST(CoreStats, ErrorsAreCountedByCodeAndFailedWritesWriteNoBytes) {
  CoreOptions o;
  o.faults = FaultInjection{1.0, 1.0, 0.0, false, 7};
  Fixture f(o);  // no clock: no latency recorded
  ConnectionId c = f.negotiate(Upstairs{}, 1);
  f.core->on_message(c, make_write(1000, {}, 0, 1, 1));
  f.core->on_message(c, make_read(1001, {}, 0, 1));
  const CoreStats& s = f.core->stats();
  EXPECT_EQ(s.errors[static_cast<size_t>(ErrorCode::kInjected)].load(), 2u);
  EXPECT_EQ(s.written_bytes.load(), 0u);
  EXPECT_EQ(s.read_bytes.load(), 0u);
  EXPECT_EQ(s[JobKind::kWrite].jobs.load(), 1u);
  for (size_t b = 0; b < LatencyHistogram::kBuckets; ++b)
    EXPECT_EQ(s[JobKind::kWrite].disk_seconds.bucket(b), 0u);
}

// A replay resends every job after the upstairs' last flush, also those this downstairs
// had already run: each must leave what it left the first time. A flush that runs again
// stamps extents that later jobs had dirtied; those jobs must dirty them again when they
// run again, even where their blocks already hold what they write (found by the
// simulator: a write-unwritten and a discard that changed nothing the second time left
// an extent one flush behind the other replicas).
TEST(CoreReplay, RunningJobsAgainLeavesWhatRunningThemOnceLeft) {
  auto prefix = [](Fixture& f, ConnectionId c) {
    f.core->on_message(c, make_write(1000, {}, 2 * kExtentSize, 2, 1));
    f.core->on_message(c, make_flush(1001, ids({1000}), 1, 1));
  };
  std::vector<Message> after;
  after.push_back(make_flush(1002, ids({1001}), 2, 1));
  WriteUnwritten wu;
  static_cast<WriteFields&>(wu) = make_write(1003, ids({1002}), kExtentSize, 1, 2);
  after.push_back(wu);  // blocks never written: it writes
  after.push_back(Discard{JobId{1004}, ids({1002}), BlockIndex{2 * kExtentSize + 1}, 1});
  const Message last = make_flush(1005, ids({1003, 1004}), 3, 1);

  // Once: the upstairs hears every ack.
  Fixture once;
  Upstairs u1;
  ConnectionId c1 = once.negotiate(u1, 1);
  prefix(once, c1);
  for (const auto& m : after)
    EXPECT_TRUE(sent<Ack>(once.core->on_message(c1, m), c1)[0].status.is_ok());
  once.core->on_message(c1, last);

  // Twice: the acks after job 1001 are lost with the connection, the upstairs comes back
  // and replays everything after that flush.
  Fixture twice;
  Upstairs u2;
  ConnectionId c2 = twice.negotiate(u2, 1);
  prefix(twice, c2);
  for (const auto& m : after) twice.core->on_message(c2, m);
  twice.core->on_disconnect(c2, "network failure");
  ConnectionId c3 = twice.core->new_connection();
  twice.core->on_message(c3, u2.hello(1));
  twice.core->on_message(c3, u2.promote(1));
  twice.core->on_message(c3, RegionInfoPlease{});
  twice.core->on_message(c3, LastFlush{JobId{1001}});
  for (const auto& m : after)
    EXPECT_TRUE(sent<Ack>(twice.core->on_message(c3, m), c3)[0].status.is_ok()) << describe(m);
  EXPECT_TRUE(only<Ack>(twice.core->on_message(c3, last), c3).status.is_ok());

  EXPECT_EQ(twice.region->versions(), once.region->versions());
  EXPECT_EQ(once.region->versions()[1].flush, FlushNumber{3});
  EXPECT_EQ(once.region->versions()[2].flush, FlushNumber{3});
  auto a = once.region->read(BlockIndex{0}, kExtentSize * kExtents);
  auto b = twice.region->read(BlockIndex{0}, kExtentSize * kExtents);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->contexts, b->contexts);
  EXPECT_TRUE(std::ranges::equal(a->data.span(), b->data.span()));
}

TEST(CoreJobs, LossyModeStillCompletesEverythingAfterTicks) {
  CoreOptions o;
  o.faults.lossy = true;
  o.faults.seed = 42;
  Fixture f(o);
  ConnectionId c = f.negotiate(Upstairs{}, 1);
  Output all;
  const uint64_t n = 60;
  for (uint64_t j = 0; j < n; ++j) {
    std::vector<JobId> deps;
    if (j > 0 && j % 3 == 0) deps.push_back(JobId{1000 + j - 1});
    all = merge(std::move(all), f.core->on_message(c, make_write(1000 + j, deps, j % 16, 1,
                                                                 static_cast<uint8_t>(j))));
  }
  std::vector<JobId> everything;
  for (uint64_t j = 0; j < n; ++j) everything.push_back(JobId{1000 + j});
  all = merge(std::move(all), f.core->on_message(c, make_flush(1000 + n, everything, 1, 1)));
  int ticks = 0;
  while (all.tick_soon) {
    ASSERT_LT(++ticks, 1000) << "deferred jobs never finish";
    all = merge(std::move(all), f.core->on_tick());
  }
  EXPECT_GT(ticks, 0) << "lossy mode deferred nothing";
  auto done = acked(all, c);
  std::sort(done.begin(), done.end());
  std::vector<JobId> want;
  for (uint64_t j = 0; j <= n; ++j) want.push_back(JobId{1000 + j});
  EXPECT_EQ(done, want) << "every job acked exactly once";
  // Dependencies held: each job acked after the one it depends on.
  auto order = acked(all, c);
  auto pos = [&](uint64_t j) {
    return std::find(order.begin(), order.end(), JobId{j}) - order.begin();
  };
  for (uint64_t j = 3; j < n; j += 3) EXPECT_LT(pos(1000 + j - 1), pos(1000 + j));
  EXPECT_EQ(pos(1000 + n), static_cast<ptrdiff_t>(n)) << "the flush is last";
}

// ---- live repair and reconciliation between two cores ---------------------------------------

// A source and a target downstairs wired together the way two shells would be: the
// target's outgoing fetch connections become connections on the source.
struct RepairPair {
  FaultFs fs;
  std::unique_ptr<Region> src_region, dst_region;
  std::unique_ptr<Core> src, dst;
  ConnectionId src_up, dst_up;  // the upstairs connections on each
  std::map<ConnectionId, ConnectionId> fetch_to_peer, peer_to_fetch;
  Output src_upstairs, dst_upstairs;   // what each core sent its upstairs
  std::set<ConnectionId> cut_fetches;  // links the test broke
  int chunks_seen = 0;
  int data_chunks_seen = 0;  // chunks that carried data (not "unchanged")
  // Set to cut the link after this many chunks have reached the target.
  std::optional<int> cut_after_chunks;

  explicit RepairPair(uint64_t extent_size = kExtentSize, uint64_t src_extent_size = 0) {
    src_region = make_region(fs, "src", false, src_extent_size ? src_extent_size : extent_size);
    dst_region = make_region(fs, "dst", false, extent_size);
    src = std::make_unique<Core>(*src_region, options(false, "src:1"));
    dst = std::make_unique<Core>(*dst_region, options(false, "dst:1"));
  }

  // Negotiates an upstairs on each core.
  void activate() {
    src_up = negotiate(*src, *src_region);
    dst_up = negotiate(*dst, *dst_region);
  }
  // Generation 2 by default: the one the tests' live flushes and repairs carry.
  static ConnectionId negotiate(Core& core, Region& region, uint64_t gen = 2) {
    Upstairs u;
    ConnectionId c = core.new_connection();
    core.on_message(c, u.hello(gen, false, region.def().encrypted));
    core.on_message(c, u.promote(gen));
    core.on_message(c, RegionInfoPlease{});
    core.on_message(c, ExtentVersionsPlease{});
    return c;
  }

  // Delivers outputs until nothing moves. Messages to the upstairs are collected.
  void pump(Output from_dst, Output from_src = {}) {
    std::deque<std::pair<bool, Output>> q;  // (from target?, output)
    q.emplace_back(true, std::move(from_dst));
    q.emplace_back(false, std::move(from_src));
    while (!q.empty()) {
      auto [from_target, out] = std::move(q.front());
      q.pop_front();
      if (from_target) {
        for (auto& co : out.connects) {
          ConnectionId peer = src->new_connection();
          fetch_to_peer[co.conn] = peer;
          peer_to_fetch[peer] = co.conn;
          EXPECT_EQ(co.address, "src:1");
          q.emplace_back(true, dst->on_connected(co.conn));
        }
        for (auto& s : out.sends) {
          auto it = fetch_to_peer.find(s.conn);
          if (it == fetch_to_peer.end()) {
            dst_upstairs.sends.push_back(std::move(s));
          } else {
            q.emplace_back(false, src->on_message(it->second, std::move(s.message)));
          }
        }
        for (auto& cl : out.closes) {
          auto it = fetch_to_peer.find(cl.conn);
          if (it == fetch_to_peer.end()) {
            if (!cut_fetches.contains(cl.conn)) dst_upstairs.closes.push_back(cl);
            continue;
          }
          q.emplace_back(false, src->on_disconnect(it->second, cl.reason));
          peer_to_fetch.erase(it->second);
          fetch_to_peer.erase(it);
        }
      } else {
        for (auto& s : out.sends) {
          auto it = peer_to_fetch.find(s.conn);
          if (it == peer_to_fetch.end()) {
            src_upstairs.sends.push_back(std::move(s));
            continue;
          }
          if (std::holds_alternative<ExtentChunk>(s.message) && cut_after_chunks &&
              chunks_seen == *cut_after_chunks) {
            // The link breaks: both sides see it.
            ConnectionId fetch = it->second, peer = it->first;
            peer_to_fetch.erase(it);
            fetch_to_peer.erase(fetch);
            cut_fetches.insert(fetch);
            q.emplace_back(true, dst->on_disconnect(fetch, "link cut by the test"));
            q.emplace_back(false, src->on_disconnect(peer, "link cut by the test"));
            break;
          }
          if (auto* c = std::get_if<ExtentChunk>(&s.message)) {
            ++chunks_seen;
            if (!c->unchanged) ++data_chunks_seen;
          }
          q.emplace_back(true, dst->on_message(it->second, std::move(s.message)));
        }
        for (auto& cl : out.closes) {
          auto it = peer_to_fetch.find(cl.conn);
          if (it == peer_to_fetch.end()) {
            src_upstairs.closes.push_back(cl);
            continue;
          }
          q.emplace_back(true, dst->on_disconnect(it->second, cl.reason));
          fetch_to_peer.erase(it->second);
          peer_to_fetch.erase(it);
        }
      }
    }
  }

  Output to_dst(Message m) {
    dst_upstairs = {};
    pump(dst->on_message(dst_up, std::move(m)));
    return std::move(dst_upstairs);
  }
  Output to_src(Message m) {
    src_upstairs = {};
    pump(Output{}, src->on_message(src_up, std::move(m)));
    return std::move(src_upstairs);
  }

  void fill(Region& r, uint8_t seed, uint64_t flush, uint64_t gen) {
    auto [ctx, data] = blocks(r.def().extent_size * 2, seed);  // extents 0 and 1
    ASSERT_TRUE(r.write(BlockIndex{0}, kBs, ctx, data.span(), false));
    ASSERT_TRUE(r.flush(FlushNumber{flush}, Generation{gen}, std::nullopt));
  }
  // Different contents on the two, both negotiated, extent 0 closed on both; returns the
  // target's extent 0 as it was.
  ByteBuffer diverge_and_close() {
    fill(*src_region, 10, 7, 2);
    fill(*dst_region, 20, 3, 1);
    auto before = extent_data(*dst_region, 0);
    activate();
    to_src(ExtentLiveClose{JobId{1000}, {}, ExtentId{0}});
    to_dst(ExtentLiveClose{JobId{1000}, {}, ExtentId{0}});
    return before;
  }
  ByteBuffer extent_data(Region& r, uint32_t e) {
    auto got = r.read(BlockIndex{e * r.def().extent_size}, r.def().extent_size);
    EXPECT_TRUE(got) << got.error().to_string();
    return got ? std::move(got->data) : ByteBuffer{};
  }
};

bool same(const ByteBuffer& a, const ByteBuffer& b) {
  return a.size() == b.size() && std::equal(a.data(), a.data() + a.size(), b.data());
}

TEST(CoreLiveRepair, CloseAcksCarryTheExtentVersions) {
  RepairPair p;
  p.fill(*p.dst_region, 1, 4, 1);
  p.activate();
  Write w = make_write(1000, {}, 1, 1, 3);
  EXPECT_TRUE(only<Ack>(p.to_dst(w), p.dst_up).status.is_ok());
  auto close = only<ExtentLiveCloseAck>(
      p.to_dst(ExtentLiveClose{JobId{1001}, ids({1000}), ExtentId{0}}), p.dst_up);
  EXPECT_TRUE(close.status.is_ok());
  EXPECT_EQ(close.version, (ExtentVersion{Generation{1}, FlushNumber{4}, true}))
      << "closed without a flush";

  auto flush_close = only<ExtentLiveCloseAck>(
      p.to_dst(ExtentLiveFlushClose{JobId{1002}, {}, ExtentId{1}, FlushNumber{9}, Generation{2}}),
      p.dst_up);
  EXPECT_TRUE(flush_close.status.is_ok());
  EXPECT_EQ(flush_close.version, (ExtentVersion{Generation{1}, FlushNumber{4}, false}))
      << "a clean extent keeps its numbers";
  ASSERT_TRUE(p.dst_region->reopen_extent(ExtentId{0}));
  EXPECT_TRUE(only<Ack>(p.to_dst(make_write(1003, {}, 0, 1, 5)), p.dst_up).status.is_ok());
  auto dirty_flush_close =
      only<ExtentLiveCloseAck>(p.to_dst(ExtentLiveFlushClose{JobId{1004}, ids({1003}), ExtentId{0},
                                                             FlushNumber{9}, Generation{2}}),
                               p.dst_up);
  EXPECT_EQ(dirty_flush_close.version, (ExtentVersion{Generation{2}, FlushNumber{9}, false}));

  auto again =
      only<ExtentLiveCloseAck>(p.to_dst(ExtentLiveClose{JobId{1005}, {}, ExtentId{0}}), p.dst_up);
  EXPECT_EQ(again.status.code, ErrorCode::kExtentClosed);
  EXPECT_EQ(only<Ack>(p.to_dst(ExtentLiveNoOp{JobId{1006}, ids({1005})}), p.dst_up).status,
            WireStatus::ok());
}

TEST(CoreLiveRepair, RepairCopiesTheExtentSoBothRegionsMatch) {
  RepairPair p;
  p.fill(*p.src_region, 10, 7, 2);
  p.fill(*p.dst_region, 20, 3, 1);
  p.activate();
  auto src_close = only<ExtentLiveCloseAck>(
      p.to_src(ExtentLiveFlushClose{JobId{1000}, {}, ExtentId{0}, FlushNumber{8}, Generation{2}}),
      p.src_up);
  ASSERT_TRUE(src_close.status.is_ok());
  auto dst_close =
      only<ExtentLiveCloseAck>(p.to_dst(ExtentLiveClose{JobId{1000}, {}, ExtentId{0}}), p.dst_up);
  ASSERT_TRUE(dst_close.status.is_ok());
  EXPECT_NE(src_close.version, dst_close.version);

  auto repair =
      p.to_dst(ExtentLiveRepair{JobId{1001}, ids({1000}), ExtentId{0}, ClientId{0}, "src:1"});
  auto ack = only<Ack>(repair, p.dst_up);
  EXPECT_EQ(ack.job_id, JobId{1001});
  EXPECT_TRUE(ack.status.is_ok()) << ack.status.message;
  EXPECT_GE(p.chunks_seen, 1);
  EXPECT_TRUE(p.fetch_to_peer.empty()) << "the fetch connection was closed";
  EXPECT_FALSE(*p.fs.exists(Extent::staging_path(p.dst_region->extent_path(ExtentId{0}))));

  EXPECT_TRUE(only<Ack>(p.to_dst(ExtentLiveReopen{JobId{1002}, ids({1001}), ExtentId{0}}), p.dst_up)
                  .status.is_ok());
  EXPECT_TRUE(only<Ack>(p.to_src(ExtentLiveReopen{JobId{1001}, ids({1000}), ExtentId{0}}), p.src_up)
                  .status.is_ok());
  EXPECT_EQ(p.dst_region->versions()[0], p.src_region->versions()[0]);
  EXPECT_EQ(p.dst_region->versions()[0], src_close.version);
  EXPECT_TRUE(same(p.extent_data(*p.dst_region, 0), p.extent_data(*p.src_region, 0)));
  EXPECT_FALSE(same(p.extent_data(*p.dst_region, 1), p.extent_data(*p.src_region, 1)))
      << "extent 1 untouched";
  auto r = only<ReadResponse>(p.to_dst(make_read(1003, ids({1002}), 0, kExtentSize)), p.dst_up);
  ASSERT_TRUE(r.status.is_ok());
  auto [ctx, data] = blocks(kExtentSize * 2, 10);
  EXPECT_EQ(r.data, data.slice(0, kExtentSize * kBs));
}

TEST(CoreLiveRepair, OnlyChunksThatDifferCrossTheNetwork) {
  // 8192 blocks of 512 bytes: an extent file of six repair chunks (4 MiB of data, 1 MiB
  // of context slots, then the metadata).
  constexpr uint64_t kBig = 8192;
  RepairPair p(kBig);
  p.fill(*p.src_region, 10, 7, 2);
  p.fill(*p.dst_region, 10, 7, 2);
  // The target missed one write to the first block: its data (chunk 0), its context
  // slot (chunk 4) and the metadata (chunk 5) differ; chunks 1-3 are the same.
  auto [ctx, data] = blocks(1, 99);
  ASSERT_TRUE(p.src_region->write(BlockIndex{0}, kBs, ctx, data.span(), false));
  p.activate();
  ASSERT_TRUE(
      only<ExtentLiveCloseAck>(p.to_src(ExtentLiveFlushClose{
                                   JobId{1000}, {}, ExtentId{0}, FlushNumber{8}, Generation{2}}),
                               p.src_up)
          .status.is_ok());
  ASSERT_TRUE(
      only<ExtentLiveCloseAck>(p.to_dst(ExtentLiveClose{JobId{1000}, {}, ExtentId{0}}), p.dst_up)
          .status.is_ok());
  auto ack = only<Ack>(
      p.to_dst(ExtentLiveRepair{JobId{1001}, ids({1000}), ExtentId{0}, ClientId{0}, "src:1"}),
      p.dst_up);
  ASSERT_TRUE(ack.status.is_ok()) << ack.status.message;
  uint64_t chunks = (p.dst_region->extent_file_bytes() + kRepairChunkBytes - 1) / kRepairChunkBytes;
  EXPECT_EQ(p.chunks_seen, static_cast<int>(chunks));
  EXPECT_EQ(chunks, 6u);
  EXPECT_EQ(p.data_chunks_seen, 3) << "only the chunks that differ carry data";
  // The answer tells the upstairs those bytes: chunks 0 and 4 whole, and the last one.
  const uint64_t file_bytes = p.dst_region->extent_file_bytes();
  EXPECT_EQ(repair_transferred_bytes(ack.status),
            2 * kRepairChunkBytes + (file_bytes - 5 * kRepairChunkBytes));
  EXPECT_TRUE(only<Ack>(p.to_dst(ExtentLiveReopen{JobId{1002}, ids({1001}), ExtentId{0}}), p.dst_up)
                  .status.is_ok());
  EXPECT_TRUE(only<Ack>(p.to_src(ExtentLiveReopen{JobId{1001}, ids({1000}), ExtentId{0}}), p.src_up)
                  .status.is_ok());
  EXPECT_EQ(p.dst_region->versions()[0], (ExtentVersion{Generation{2}, FlushNumber{8}, false}));
  EXPECT_TRUE(same(p.extent_data(*p.dst_region, 0), p.extent_data(*p.src_region, 0)));
}

TEST(CoreLiveRepair, ADamagedBlockOnTheSourceIsNotCopied) {
  RepairPair p;
  auto before = p.diverge_and_close();
  // A latent media error in the source's block 3.
  p.fs.corrupt(p.src_region->extent_path(ExtentId{0}), 3 * kBs + 17, 0x10);
  auto ack = only<Ack>(
      p.to_dst(ExtentLiveRepair{JobId{1001}, ids({1000}), ExtentId{0}, ClientId{0}, "src:1"}),
      p.dst_up);
  EXPECT_EQ(ack.status.code, ErrorCode::kHashMismatch);
  EXPECT_NE(ack.status.message.find("block 3 of the received copy does not match its hash"),
            std::string::npos)
      << ack.status.message;
  EXPECT_FALSE(*p.fs.exists(Extent::staging_path(p.dst_region->extent_path(ExtentId{0}))));
  EXPECT_TRUE(only<Ack>(p.to_dst(ExtentLiveReopen{JobId{1002}, ids({1001}), ExtentId{0}}), p.dst_up)
                  .status.is_ok());
  EXPECT_EQ(p.dst_region->versions()[0], (ExtentVersion{Generation{1}, FlushNumber{3}, false}));
  EXPECT_TRUE(same(p.extent_data(*p.dst_region, 0), before)) << "the target keeps its own copy";
}

TEST(CoreLiveRepair, AChunkBeyondThoseAskedForFailsTheRepair) {
  RepairPair p;
  p.activate();
  p.to_dst(ExtentLiveClose{JobId{1000}, {}, ExtentId{0}});
  auto started = p.dst->on_message(
      p.dst_up, ExtentLiveRepair{JobId{1001}, ids({1000}), ExtentId{0}, ClientId{0}, "src:1"});
  ASSERT_EQ(started.connects.size(), 1u);
  ConnectionId fetch = started.connects[0].conn;
  auto hello = to(p.dst->on_connected(fetch), fetch);
  ASSERT_EQ(hello.size(), 1u);
  auto asked = to(p.dst->on_message(fetch, RegionInfo{p.dst_region->def()}), fetch);
  ASSERT_EQ(asked.size(), 1u) << "a one-chunk extent";
  EXPECT_TRUE(std::get<ExtentFetch>(asked[0]).have_hash) << "our own bytes are offered";
  // The one chunk asked for is answered "unchanged"; a second answer is a broken source.
  (void)p.dst->on_message(fetch, ExtentChunk{ExtentId{0}, 0, true, Bytes{}});
  auto out = p.dst->on_message(fetch, ExtentChunk{ExtentId{0}, 0, true, Bytes{}});
  EXPECT_EQ(only<Ack>(out, p.dst_up).status.code, ErrorCode::kRepair);
}

TEST(CoreLiveRepair, JobsDependingOnARepairWaitForItsEnd) {
  RepairPair p;
  p.fill(*p.src_region, 10, 7, 2);
  p.activate();
  p.to_src(ExtentLiveClose{JobId{1000}, {}, ExtentId{0}});
  p.to_dst(ExtentLiveClose{JobId{1000}, {}, ExtentId{0}});
  // Start the repair but do not let anything move yet.
  auto started = p.dst->on_message(
      p.dst_up, ExtentLiveRepair{JobId{1001}, ids({1000}), ExtentId{0}, ClientId{0}, "src:1"});
  ASSERT_EQ(started.connects.size(), 1u);
  auto waiting =
      p.dst->on_message(p.dst_up, ExtentLiveReopen{JobId{1002}, ids({1001}), ExtentId{0}});
  EXPECT_TRUE(waiting.sends.empty()) << "the reopen waits for the repair";
  p.dst_upstairs = {};
  p.pump(std::move(started));
  EXPECT_EQ(acked(p.dst_upstairs, p.dst_up), ids({1001, 1002}));
  EXPECT_TRUE(p.dst_region->is_open(ExtentId{0}));
  EXPECT_EQ(p.dst_region->versions()[0], p.src_region->versions()[0]);
}

TEST(CoreLiveRepair, ASourceLostMidTransferFailsTheJobAndKeepsTheOldExtent) {
  // 2048 blocks of 512 bytes: an extent file of more than one repair chunk.
  constexpr uint64_t kBig = 2048;
  RepairPair p(kBig);
  ASSERT_GT(p.dst_region->extent_file_bytes(), kRepairChunkBytes);
  auto before = p.diverge_and_close();
  p.cut_after_chunks = 1;
  auto out =
      p.to_dst(ExtentLiveRepair{JobId{1001}, ids({1000}), ExtentId{0}, ClientId{0}, "src:1"});
  EXPECT_EQ(p.chunks_seen, 1);
  auto ack = only<Ack>(out, p.dst_up);
  EXPECT_EQ(ack.job_id, JobId{1001});
  EXPECT_EQ(ack.status.code, ErrorCode::kRepair);
  EXPECT_NE(ack.status.message.find("lost"), std::string::npos) << ack.status.message;
  EXPECT_FALSE(closed(out, p.dst_up)) << "a failed repair is an answer, not a hang-up";
  EXPECT_FALSE(*p.fs.exists(Extent::staging_path(p.dst_region->extent_path(ExtentId{0}))));
  EXPECT_TRUE(only<Ack>(p.to_dst(ExtentLiveReopen{JobId{1002}, ids({1001}), ExtentId{0}}), p.dst_up)
                  .status.is_ok());
  EXPECT_EQ(p.dst_region->versions()[0], (ExtentVersion{Generation{1}, FlushNumber{3}, false}));
  EXPECT_TRUE(same(p.extent_data(*p.dst_region, 0), before));
  // The source is still serving: a second try succeeds.
  ASSERT_TRUE(p.dst_region->close_extent(ExtentId{0}));
  p.cut_after_chunks.reset();
  auto retry = only<Ack>(
      p.to_dst(ExtentLiveRepair{JobId{1003}, ids({1002}), ExtentId{0}, ClientId{0}, "src:1"}),
      p.dst_up);
  EXPECT_TRUE(retry.status.is_ok()) << retry.status.message;
}

TEST(CoreLiveRepair, TheSourceRefusesAnOpenExtent) {
  RepairPair p;
  p.fill(*p.src_region, 10, 7, 2);
  p.activate();
  p.to_dst(ExtentLiveClose{JobId{1000}, {}, ExtentId{0}});
  auto ack = only<Ack>(
      p.to_dst(ExtentLiveRepair{JobId{1001}, ids({1000}), ExtentId{0}, ClientId{0}, "src:1"}),
      p.dst_up);
  EXPECT_EQ(ack.status.code, ErrorCode::kRepair);
  EXPECT_NE(ack.status.message.find("open"), std::string::npos) << ack.status.message;
  EXPECT_EQ(p.src->connection_count(), 1u) << "only the upstairs is left on the source";
}

TEST(CoreLiveRepair, ASourceWithAnotherGeometryIsRefused) {
  RepairPair p(kExtentSize, kExtentSize * 2);
  p.activate();
  p.to_src(ExtentLiveClose{JobId{1000}, {}, ExtentId{0}});
  p.to_dst(ExtentLiveClose{JobId{1000}, {}, ExtentId{0}});
  auto ack = only<Ack>(
      p.to_dst(ExtentLiveRepair{JobId{1001}, ids({1000}), ExtentId{0}, ClientId{0}, "src:1"}),
      p.dst_up);
  EXPECT_EQ(ack.status.code, ErrorCode::kRepair);
  EXPECT_NE(ack.status.message.find("geometry"), std::string::npos) << ack.status.message;
  EXPECT_EQ(p.chunks_seen, 0);
  EXPECT_TRUE(only<Ack>(p.to_dst(ExtentLiveReopen{JobId{1002}, ids({1001}), ExtentId{0}}), p.dst_up)
                  .status.is_ok());
}

TEST(CoreLiveRepair, ASecondRepairOfTheSameExtentIsBusyAndAReopenWaits) {
  RepairPair p;
  p.fill(*p.src_region, 10, 7, 2);
  p.activate();
  p.to_src(ExtentLiveClose{JobId{1000}, {}, ExtentId{0}});
  p.to_dst(ExtentLiveClose{JobId{1000}, {}, ExtentId{0}});
  auto started = p.dst->on_message(
      p.dst_up, ExtentLiveRepair{JobId{1001}, ids({1000}), ExtentId{0}, ClientId{0}, "src:1"});
  ASSERT_EQ(started.connects.size(), 1u);
  auto second = p.dst->on_message(
      p.dst_up, ExtentLiveRepair{JobId{1002}, ids({1000}), ExtentId{0}, ClientId{0}, "src:1"});
  EXPECT_EQ(only<Ack>(second, p.dst_up).status.code, ErrorCode::kBusy);
  auto early = p.dst->on_message(p.dst_up, ExtentLiveReopen{JobId{1003}, ids({1000}), ExtentId{0}});
  EXPECT_EQ(only<Ack>(early, p.dst_up).status.code, ErrorCode::kBusy)
      << "no reopen under a running repair";
  p.dst_upstairs = {};
  p.pump(std::move(started));
  EXPECT_TRUE(only<Ack>(p.dst_upstairs, p.dst_up).status.is_ok());
}

TEST(CoreLiveRepair, RepairOfAnOpenExtentOnTheTargetIsRefused) {
  RepairPair p;
  p.activate();
  auto out = p.to_dst(ExtentLiveRepair{JobId{1001}, {}, ExtentId{0}, ClientId{0}, "src:1"});
  EXPECT_EQ(only<Ack>(out, p.dst_up).status.code, ErrorCode::kRepair);
  EXPECT_TRUE(p.fetch_to_peer.empty()) << "no fetch was started";
}

TEST(CoreLiveRepair, AnUpstairsThatLeavesAbandonsItsFetch) {
  RepairPair p;
  p.fill(*p.src_region, 10, 7, 2);
  p.activate();
  p.to_src(ExtentLiveClose{JobId{1000}, {}, ExtentId{0}});
  p.to_dst(ExtentLiveClose{JobId{1000}, {}, ExtentId{0}});
  auto started = p.dst->on_message(
      p.dst_up, ExtentLiveRepair{JobId{1001}, ids({1000}), ExtentId{0}, ClientId{0}, "src:1"});
  ASSERT_EQ(started.connects.size(), 1u);
  ConnectionId fetch = started.connects[0].conn;
  auto gone = p.dst->on_disconnect(p.dst_up, "upstairs went away");
  EXPECT_TRUE(closed(gone, fetch)) << "the fetch connection is closed with its owner";
  EXPECT_FALSE(*p.fs.exists(Extent::staging_path(p.dst_region->extent_path(ExtentId{0}))));
  // Late events for the abandoned fetch are ignored.
  EXPECT_TRUE(p.dst->on_connected(fetch).sends.empty());
  EXPECT_TRUE(p.dst->on_disconnect(fetch, "late").sends.empty());
  ConnectionId next = RepairPair::negotiate(*p.dst, *p.dst_region, 3);
  EXPECT_TRUE(p.dst_region->is_open(ExtentId{0})) << "the next session reopens it";
  (void)next;
}

TEST(CoreReconciliation, RepairStepsCopyTheSourceExtent) {
  RepairPair p;
  p.fill(*p.src_region, 10, 7, 2);
  p.fill(*p.dst_region, 20, 3, 1);
  p.activate();
  // The source is dirty: flush it with the reconciliation's numbers first.
  auto w = make_write(1000, {}, 2, 1, 33);
  ASSERT_TRUE(only<Ack>(p.to_src(w), p.src_up).status.is_ok());
  auto flushed = only<RepairAck>(
      p.to_src(ExtentFlush{RepairId{1}, ExtentId{0}, ClientId{0}, FlushNumber{8}, Generation{2}}),
      p.src_up);
  EXPECT_EQ(flushed, (RepairAck{RepairId{1}, WireStatus::ok()}));
  EXPECT_EQ(p.src_region->versions()[0], (ExtentVersion{Generation{2}, FlushNumber{8}, false}));
  EXPECT_TRUE(
      only<RepairAck>(p.to_src(ExtentClose{RepairId{2}, ExtentId{0}}), p.src_up).status.is_ok());
  EXPECT_TRUE(
      only<RepairAck>(p.to_dst(ExtentClose{RepairId{2}, ExtentId{0}}), p.dst_up).status.is_ok());
  auto repaired = only<RepairAck>(
      p.to_dst(ExtentRepair{RepairId{3}, ExtentId{0}, ClientId{0}, "src:1", {ClientId{1}}}),
      p.dst_up);
  EXPECT_EQ(repaired.repair_id, RepairId{3});
  EXPECT_TRUE(repaired.status.is_ok()) << repaired.status.message;
  EXPECT_TRUE(
      only<RepairAck>(p.to_dst(ExtentReopen{RepairId{4}, ExtentId{0}}), p.dst_up).status.is_ok());
  EXPECT_TRUE(
      only<RepairAck>(p.to_src(ExtentReopen{RepairId{4}, ExtentId{0}}), p.src_up).status.is_ok());
  EXPECT_EQ(p.dst_region->versions()[0], p.src_region->versions()[0]);
  EXPECT_TRUE(same(p.extent_data(*p.dst_region, 0), p.extent_data(*p.src_region, 0)));
  auto reopen_open = only<RepairAck>(p.to_dst(ExtentReopen{RepairId{5}, ExtentId{0}}), p.dst_up);
  EXPECT_FALSE(reopen_open.status.is_ok()) << "reopening an open extent is an error, not a crash";
}

TEST(CoreRepairSource, ChunksAskedOutOfOrderEndTheTransferWithAnError) {
  RepairPair p;
  ASSERT_TRUE(p.src_region->close_extent(ExtentId{0}));
  ConnectionId peer = p.src->new_connection();
  EXPECT_EQ(only<RegionInfo>(p.src->on_message(peer, RepairHello{}), peer).region,
            p.src_region->def());
  auto done = only<ExtentFetchDone>(
      p.src->on_message(peer, ExtentFetch{ExtentId{0}, 4096, std::nullopt}), peer);
  EXPECT_EQ(done.status.code, ErrorCode::kRepair);
  auto bad_extent = only<ExtentFetchDone>(
      p.src->on_message(peer, ExtentFetch{ExtentId{99}, 0, std::nullopt}), peer);
  EXPECT_EQ(bad_extent.status.code, ErrorCode::kInvalidExtent);
  auto chunk = p.src->on_message(peer, ExtentFetch{ExtentId{0}, 0, std::nullopt});
  auto msgs = to(chunk, peer);
  ASSERT_EQ(msgs.size(), 2u) << "a small extent is one chunk, then done";
  EXPECT_TRUE(std::holds_alternative<ExtentChunk>(msgs[0]));
  auto fin = std::get<ExtentFetchDone>(msgs[1]);
  EXPECT_TRUE(fin.status.is_ok());
  EXPECT_EQ(fin.file_bytes, p.src_region->extent_file_bytes());
  EXPECT_EQ(fin.file_hash, integrity_hash(std::get<ExtentChunk>(msgs[0]).data.span()));
  EXPECT_TRUE(closed(p.src->on_message(peer, make_read(1000, {}, 0, 1)), peer))
      << "a repair peer only fetches";
}

TEST(CoreRepairSource, ARepairHelloOfAnotherVersionIsRefused) {
  RepairPair p;
  ConnectionId peer = p.src->new_connection();
  auto out = p.src->on_message(peer, RepairHello{kProtocolVersion + 1});
  EXPECT_EQ(only<VersionMismatch>(out, peer).version, kProtocolVersion);
  EXPECT_TRUE(closed(out, peer));
}

// ---- validation before allocation ----------------------------------------------------------

// The probe from issue 10 against a read-only downstairs: a read whose reply could not be
// one frame is answered with kIoTooLarge (not allocated, never encoded), and the
// connection goes on serving.
TEST(CoreValidation, AReadTooLargeForOneFrameIsRefusedAndTheConnectionServesOn) {
  FaultFs fs;
  RegionOptions o;
  // 32 KiB blocks, so a region just over kMaxIoBytes stays small in memory.
  const uint32_t bs = kMaxBlockSize;
  const uint64_t extent_blocks = kMaxIoBytes / bs / 2 + 1;
  o.def = {bs, extent_blocks, 2, Uuid::random(), false};
  ASSERT_TRUE(Region::create(fs, "big", o));
  auto region = Region::open(fs, "big", /*read_only=*/true);
  ASSERT_TRUE(region);
  Core core(**region, options(true, "127.0.0.1:3810"));
  Upstairs u;
  ConnectionId c = core.new_connection();
  only<YesItsMe>(core.on_message(c, u.hello(1, /*read_only=*/true)), c);
  only<YouAreNowActive>(core.on_message(c, u.promote(1)), c);
  only<RegionInfo>(core.on_message(c, RegionInfoPlease{}), c);
  only<ExtentVersions>(core.on_message(c, ExtentVersionsPlease{}), c);
  const auto too_many = static_cast<uint32_t>(kMaxIoBytes / bs + 1);
  auto out = core.on_message(c, make_read(1000, {}, 0, too_many));
  auto r = only<ReadResponse>(out, c);
  EXPECT_EQ(r.status.code, ErrorCode::kIoTooLarge) << r.status.message;
  EXPECT_TRUE(r.data.empty());
  EXPECT_FALSE(closed(out, c));
  auto ok = only<ReadResponse>(core.on_message(c, make_read(1001, {}, 0, 2)), c);
  EXPECT_TRUE(ok.status.is_ok()) << ok.status.message;
  EXPECT_EQ(ok.data.size(), 2u * bs);
}

TEST(CoreValidation, ARefusedJobIsAnsweredNeverRunsAndWhatDependsOnItWaits) {
  Fixture f;
  ConnectionId c = f.negotiate(Upstairs{}, 1);
  const uint64_t total = kExtentSize * kExtents;
  auto out = f.core->on_message(c, make_write(1000, {}, total - 1, 2, 1));
  EXPECT_EQ(only<Ack>(out, c).status.code, ErrorCode::kOffsetInvalid);
  EXPECT_FALSE(closed(out, c));
  for (const auto& v : f.region->versions()) EXPECT_FALSE(v.dirty) << "nothing was written";
  EXPECT_TRUE(f.core->on_message(c, make_write(1001, ids({1000}), 0, 1, 2)).sends.empty())
      << "a job depending on a refused one waits, as after a failed one";
  only<Imok>(f.core->on_message(c, Ruok{}), c);
}

TEST(CoreValidation, ADependencyOnALaterJobIsRefusedNotQueuedForever) {
  Fixture f;
  ConnectionId c = f.negotiate(Upstairs{}, 1);
  auto out = f.core->on_message(c, make_write(1001, ids({999999}), 0, 1, 1));
  auto ack = only<Ack>(out, c);
  EXPECT_EQ(ack.status.code, ErrorCode::kProtocol);
  EXPECT_NE(ack.status.message.find("depends on job 999999"), std::string::npos)
      << ack.status.message;
}

TEST(CoreValidation, ReconciliationOfAnExtentBeyondTheRegionIsRefusedInTheAck) {
  Fixture f;
  ConnectionId c = f.negotiate(Upstairs{}, 1);
  auto out = f.core->on_message(
      c, ExtentRepair{RepairId{5}, ExtentId{kExtents}, ClientId{0}, "127.0.0.1:1", {ClientId{1}}});
  auto ack = only<RepairAck>(out, c);
  EXPECT_EQ(ack.repair_id, RepairId{5});
  EXPECT_EQ(ack.status.code, ErrorCode::kInvalidExtent);
  EXPECT_TRUE(out.connects.empty()) << "no fetch was started";
}

}  // namespace
}  // namespace cru::downstairs
