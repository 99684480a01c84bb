// The downstairs server over loopback TCP: a real Server on its own io thread, and
// scripted peers (blocking sockets with receive timeouts) in the test thread.
#include "downstairs/server.h"

#include <gtest/gtest.h>

#include <asio/post.hpp>
#include <future>
#include <thread>

#include "common/hash.h"
#include "proto/codec.h"
#include "proto/limits.h"
#include "support/fault_fs.h"
#include "support/process.h"

namespace cru::downstairs {
namespace {

using namespace cru::proto;
using test::Millis;
using test::Peer;

constexpr uint32_t kBs = 512;
constexpr uint64_t kExtentSize = 1024;
constexpr Millis kTimeout{10000};

// A server on 127.0.0.1:<any port> over a region in memory, running on its own thread.
// The core and region belong to that thread once it starts.
class ServerFixture {
 public:
  explicit ServerFixture(ServerOptions options = {}) {
    RegionOptions o;
    o.def = {kBs, kExtentSize, 4, Uuid::random(), false};
    auto r = Region::create(fs_, "r", o);
    CRU_ASSERT(r.has_value());
    region_ = std::move(*r);
    core_ = std::make_unique<Core>(*region_, CoreOptions{});
    server_ = std::make_unique<Server>(
        io_, *core_, asio::ip::tcp::endpoint(asio::ip::address_v4::loopback(), 0), options);
    port_ = server_->port();
    core_->set_repair_addr(fmt::format("127.0.0.1:{}", port_));
    server_->start();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~ServerFixture() {
    asio::post(io_, [this] {
      server_->stop();
      io_.stop();
    });
    thread_.join();
  }
  uint16_t port() const { return port_; }
  // Runs f on the server's thread and returns its result.
  template <typename F>
  auto on_io(F f) {
    std::packaged_task<decltype(f())()> task(std::move(f));
    auto result = task.get_future();
    asio::post(io_, [&task] { task(); });
    return result.get();
  }
  uint64_t peak_memory_bytes() {
    return on_io([this] { return server_->memory().peak_bytes(); });
  }
  size_t connections() {
    return on_io([this] { return core_->connection_count(); });
  }

 private:
  asio::io_context io_;  // destroyed last: everything below uses it
  test::FaultFs fs_;
  std::unique_ptr<Region> region_;
  std::unique_ptr<Core> core_;
  std::unique_ptr<Server> server_;
  uint16_t port_ = 0;
  std::thread thread_;
};

struct Upstairs {
  Uuid id = Uuid::random();
  Uuid session = Uuid::random();
};

// Connects and negotiates; any unexpected answer is an error naming it.
Result<Peer> negotiated(uint16_t port, const Upstairs& u, uint64_t gen) {
  auto p = Peer::connect(port, kTimeout);
  if (!p) return p;
  if (auto def = p->negotiate(u.id, u.session, Generation{gen}, kTimeout); !def)
    return tl::unexpected(def.error());
  return p;
}

Write make_write(uint64_t job, uint64_t start, size_t n, uint8_t seed) {
  ByteBuffer data(n * kBs);
  for (size_t i = 0; i < data.size(); ++i) data.data()[i] = static_cast<std::byte>(seed + i % 253);
  Write w;
  w.job_id = JobId{job};
  w.start = BlockIndex{start};
  w.block_size = kBs;
  for (size_t i = 0; i < n; ++i)
    w.contexts.push_back({integrity_hash(data.span().subspan(i * kBs, kBs)), std::nullopt});
  w.data = Bytes(std::move(data));
  return w;
}

// One write and a read of it back on a negotiated peer; job ids from `job`.
void expect_write_and_read(Peer& p, uint64_t job, uint64_t start, size_t n, uint8_t seed) {
  Write w = make_write(job, start, n, seed);
  ASSERT_TRUE(p.send(w));
  auto ack = p.recv_as<Ack>(kTimeout);
  ASSERT_TRUE(ack) << ack.error().to_string();
  EXPECT_EQ(ack->job_id, JobId{job});
  EXPECT_TRUE(ack->status.is_ok()) << ack->status.message;
  ASSERT_TRUE(
      p.send(Read{JobId{job + 1}, {JobId{job}}, BlockIndex{start}, static_cast<uint32_t>(n)}));
  auto rr = p.recv_as<ReadResponse>(kTimeout);
  ASSERT_TRUE(rr) << rr.error().to_string();
  EXPECT_EQ(rr->job_id, JobId{job + 1});
  ASSERT_TRUE(rr->status.is_ok()) << rr->status.message;
  EXPECT_EQ(rr->data, w.data);
  ASSERT_EQ(rr->contexts.size(), n);
  EXPECT_EQ(rr->contexts[n - 1], std::optional<BlockContext>(w.contexts[n - 1]));
}

TEST(Server, NegotiatesAndAnswersWriteReadAndFlush) {
  ServerFixture s;
  auto p = negotiated(s.port(), Upstairs{}, 1);
  ASSERT_TRUE(p) << p.error().to_string();
  expect_write_and_read(*p, 1000, 5, 3, 1);
  ASSERT_TRUE(p->send(Flush{
      JobId{1002}, {JobId{1001}}, FlushNumber{1}, Generation{1}, std::nullopt, std::nullopt}));
  auto ack = p->recv_as<Ack>(kTimeout);
  ASSERT_TRUE(ack) << ack.error().to_string();
  EXPECT_EQ(ack->job_id, JobId{1002});
  EXPECT_TRUE(ack->status.is_ok());
  ASSERT_TRUE(p->send(Ruok{}));
  EXPECT_TRUE(p->recv_as<Imok>(kTimeout));
}

TEST(Server, CarriesALargeWriteAndReadIntact) {
  ServerFixture s;
  auto p = negotiated(s.port(), Upstairs{}, 1);
  ASSERT_TRUE(p) << p.error().to_string();
  expect_write_and_read(*p, 1000, 100, 2048, 7);  // 1 MiB across three extents
}

TEST(Server, AnswersRuokBeforeNegotiation) {
  ServerFixture s;
  auto p = Peer::connect(s.port(), kTimeout);
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->send(Ruok{}));
  EXPECT_TRUE(p->recv_as<Imok>(kTimeout));
}

TEST(Server, ATakeoverTellsTheOldPeerAndThenHangsUp) {
  ServerFixture s;
  Upstairs a, b;
  auto old_peer = negotiated(s.port(), a, 1);
  ASSERT_TRUE(old_peer) << old_peer.error().to_string();
  auto new_peer = negotiated(s.port(), b, 2);
  ASSERT_TRUE(new_peer) << new_peer.error().to_string();
  auto told = old_peer->recv_as<YouAreNoLongerActive>(kTimeout);
  ASSERT_TRUE(told) << told.error().to_string();
  EXPECT_EQ(*told, (YouAreNoLongerActive{b.id, b.session, Generation{2}}));
  auto eof = old_peer->recv(kTimeout);
  ASSERT_FALSE(eof);
  EXPECT_EQ(eof.error().code, ErrorCode::kDisconnected) << eof.error().to_string();
  expect_write_and_read(*new_peer, 1000, 0, 1, 3);
}

TEST(Server, ARefusedPromotionIsExplainedBeforeTheHangUp) {
  ServerFixture s;
  auto a = negotiated(s.port(), Upstairs{}, 5);
  ASSERT_TRUE(a);
  Upstairs b;
  auto p = Peer::connect(s.port(), kTimeout);
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->send(HereIAm{kProtocolVersion, b.id, b.session, Generation{4}, false, false}));
  ASSERT_TRUE(p->recv_as<YesItsMe>(kTimeout));
  ASSERT_TRUE(p->send(PromoteToActive{b.id, b.session, Generation{4}}));
  auto report = p->recv_as<ErrorReport>(kTimeout);
  ASSERT_TRUE(report) << report.error().to_string();
  EXPECT_EQ(report->status.code, ErrorCode::kGenerationTooLow);
  EXPECT_TRUE(p->wait_closed(kTimeout));
  expect_write_and_read(*a, 1000, 0, 1, 3);
}

// A negotiated peer sends 200 reads of 512 KiB (100 MiB of replies, beyond the socket
// buffers) and never reads; the server must drop it and go on serving a second upstairs.
// The requests are small: the socket takes them all at once.
void expect_a_peer_that_never_reads_dropped(ServerFixture& s) {
  auto greedy = negotiated(s.port(), Upstairs{}, 1);
  ASSERT_TRUE(greedy) << greedy.error().to_string();
  for (uint64_t job = 1000; job < 1200; ++job)
    if (!greedy->send(Read{JobId{job}, {}, BlockIndex{0}, 1024})) break;
  EXPECT_TRUE(greedy->wait_closed(kTimeout)) << "the server drops the connection";
  auto polite = negotiated(s.port(), Upstairs{}, 2);
  ASSERT_TRUE(polite) << polite.error().to_string();
  expect_write_and_read(*polite, 2000, 0, 2, 5);
}

// The replies fill its outbox up to its byte budget; the server then stops reading it and
// drops it once it has been silent for the idle timeout. Memory held for peers never
// passes the budget by more than the last frames read before the pause.
TEST(Server, PeerThatStopsReadingLosesOnlyItsConnection) {
  ServerOptions o;
  o.memory = {2 * kMaxFrameBytes, kMaxFrameBytes};
  o.idle_timeout = std::chrono::seconds(1);
  ServerFixture s(o);
  ASSERT_NO_FATAL_FAILURE(expect_a_peer_that_never_reads_dropped(s));
  EXPECT_LE(s.peak_memory_bytes(), kMaxFrameBytes + kMaxFrameBytes / 8);
  EXPECT_GE(s.peak_memory_bytes(), kMaxFrameBytes / 2) << "the outbox did fill up";
}

// The outbox's frame count still closes the connection (the count bounds the channel,
// the bytes bound memory).
TEST(Server, AnOutboxOverItsFrameCountLosesOnlyThatConnection) {
  ServerOptions o;
  o.outbox_frames = 4;
  ServerFixture s(o);
  expect_a_peer_that_never_reads_dropped(s);
}

// At the connection limit a new connection replaces the oldest one that has not
// negotiated; when every one has, the new one is closed at once.
TEST(Server, AtTheConnectionLimitTheOldestUnnegotiatedMakesRoom) {
  ServerOptions o;
  o.max_connections = 3;
  ServerFixture s(o);
  // Says HereIAm (and no more): negotiated from then on.
  auto hello = [&]() -> Result<Peer> {
    auto p = Peer::connect(s.port(), kTimeout);
    if (!p) return p;
    CRU_TRY(p->send(
        HereIAm{kProtocolVersion, Uuid::random(), Uuid::random(), Generation{1}, false, false}));
    CRU_TRY(p->recv_as<YesItsMe>(kTimeout));
    return p;
  };
  auto idle1 = Peer::connect(s.port(), kTimeout);
  auto idle2 = Peer::connect(s.port(), kTimeout);
  ASSERT_TRUE(idle1 && idle2);
  auto a = hello();
  ASSERT_TRUE(a) << a.error().to_string();
  auto b = hello();  // the oldest idle one makes room
  ASSERT_TRUE(b) << b.error().to_string();
  EXPECT_TRUE(idle1->wait_closed(kTimeout));
  auto c = hello();  // the other idle one makes room
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_TRUE(idle2->wait_closed(kTimeout));
  auto refused = Peer::connect(s.port(), kTimeout);
  ASSERT_TRUE(refused);
  EXPECT_TRUE(refused->wait_closed(kTimeout)) << "closed at once: every connection negotiated";
  for (Peer* p : {&*a, &*b, &*c}) {
    ASSERT_TRUE(p->send(Ruok{}));
    EXPECT_TRUE(p->recv_as<Imok>(kTimeout));
  }
}

// A peer that breaks the protocol costs its own connection and nothing else.
void expect_only_that_connection_dropped(std::span<const std::byte> bytes, bool hang_up) {
  ServerFixture s;
  auto good = negotiated(s.port(), Upstairs{}, 1);
  ASSERT_TRUE(good) << good.error().to_string();
  expect_write_and_read(*good, 1000, 0, 2, 1);
  auto bad = Peer::connect(s.port(), kTimeout);
  ASSERT_TRUE(bad);
  ASSERT_TRUE(bad->send_raw(bytes));
  if (hang_up) bad->shutdown_write();
  EXPECT_TRUE(bad->wait_closed(kTimeout)) << "the server drops the bad connection";
  expect_write_and_read(*good, 1002, 8, 2, 2);
  // The server still accepts new connections.
  auto third = Peer::connect(s.port(), kTimeout);
  ASSERT_TRUE(third);
  ASSERT_TRUE(third->send(Ruok{}));
  EXPECT_TRUE(third->recv_as<Imok>(kTimeout));
}

std::vector<std::byte> header(uint32_t frame_bytes, uint32_t tag, uint32_t meta_bytes) {
  std::vector<std::byte> h(12);
  for (int i = 0; i < 4; ++i) {
    h[i] = static_cast<std::byte>(frame_bytes >> (8 * i));
    h[4 + i] = static_cast<std::byte>(tag >> (8 * i));
    h[8 + i] = static_cast<std::byte>(meta_bytes >> (8 * i));
  }
  return h;
}

TEST(Server, GarbageCostsOnlyThatConnection) {
  auto bytes = header(40, 0xdeadbeef, 28);  // a plausible length, an unknown tag
  bytes.resize(40, std::byte{0x5a});
  expect_only_that_connection_dropped(bytes, false);
}

TEST(Server, MalformedMetadataCostsOnlyThatConnection) {
  auto whole = encode_flat(HereIAm{});
  std::vector<std::byte> frame(whole.begin(),
                               whole.end() - 3);  // metadata cut short, lengths patched to match
  auto h = header(static_cast<uint32_t>(frame.size()), static_cast<uint32_t>(Tag::kHereIAm),
                  static_cast<uint32_t>(frame.size() - 12));
  std::copy(h.begin(), h.end(), frame.begin());
  expect_only_that_connection_dropped(frame, false);
}

TEST(Server, AnOversizedFrameLengthCostsOnlyThatConnection) {
  expect_only_that_connection_dropped(header(0xffffffffu, static_cast<uint32_t>(Tag::kWrite), 100),
                                      false);
}

TEST(Server, AHalfFrameThenAHangUpCostsOnlyThatConnection) {
  auto frame = encode_flat(make_write(1000, 0, 4, 9));
  expect_only_that_connection_dropped(std::span(frame).first(frame.size() / 2), true);
}

TEST(Server, AJobBeforeNegotiationCostsOnlyThatConnection) {
  auto frame = encode_flat(make_write(1000, 0, 1, 9));
  expect_only_that_connection_dropped(frame, false);
}

}  // namespace
}  // namespace cru::downstairs
