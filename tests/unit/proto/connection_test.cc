// FramedConnection's lifetime rules over loopback TCP: handlers never run inside the
// owner's own calls, on_closed comes exactly once and last, close() from inside
// on_message stops delivery, a full outbox or a silent peer ends the connection, and a
// disarmed connection never calls back. The connection runs on an io_context driven by
// the test thread; the other side is a blocking test::Peer (kernel buffers make its
// sends and reads safe to interleave with the io_context).
#include "proto/connection.h"

#include <gtest/gtest.h>

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <chrono>
#include <string>
#include <vector>

#include "proto/limits.h"
#include "proto/memory_budget.h"
#include "support/process.h"
#include "unit/proto/recording.h"

namespace cru::proto {
namespace {

using asio::ip::tcp;
using namespace std::chrono_literals;
using test::Millis;
using test::Peer;

constexpr Millis kTimeout{10000};

FramedConnection::Options options(size_t outbox_frames = 16) {
  FramedConnection::Options o;
  o.outbox_frames = outbox_frames;
  return o;
}

// A served connection and the blocking peer on its other end.
class Served {
 public:
  explicit Served(FramedConnection::Handlers h, FramedConnection::Options o = options())
      : acceptor_(io_, tcp::endpoint(asio::ip::address_v4::loopback(), 0)) {
    auto p = Peer::connect(acceptor_.local_endpoint().port(), kTimeout);
    CRU_ASSERT(p.has_value());
    peer_.emplace(std::move(*p));
    tcp::socket s = acceptor_.accept();  // already queued by the kernel
    conn_ = FramedConnection::serve(std::move(s), o, std::move(h));
  }
  asio::io_context& io() { return io_; }
  Peer& peer() { return *peer_; }
  FramedConnection::Ptr& conn() { return conn_; }

 private:
  asio::io_context io_;  // first: destroyed last
  tcp::acceptor acceptor_;
  std::optional<Peer> peer_;
  FramedConnection::Ptr conn_;
};

TEST(FramedConnection, DeliversMessagesInOrderAndReportsThePeerHangingUpOnce) {
  Record r;
  Served s(recording(r));
  ASSERT_TRUE(s.peer().send(Ruok{}));
  ASSERT_TRUE(s.peer().send(Imok{}));
  s.peer().close();
  ASSERT_TRUE(run_until(s.io(), [&] { return !r.closed.empty(); }));
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_TRUE(std::holds_alternative<Ruok>(r.messages[0]));
  EXPECT_TRUE(std::holds_alternative<Imok>(r.messages[1]));
  EXPECT_EQ(r.connected, 0) << "on_connected is for connect() only";
  run_until(
      s.io(), [] { return false; }, 100ms);
  EXPECT_EQ(r.closed.size(), 1u);
  EXPECT_TRUE(s.conn()->closing());
  EXPECT_FALSE(s.conn()->send(Ruok{}));
}

TEST(FramedConnection, CloseFromInsideOnMessageStopsDeliveryAndReportsThatReason) {
  Record r;
  FramedConnection::Ptr conn;
  auto h = recording(r);
  h.on_message = [&](Message m) {
    r.messages.push_back(std::move(m));
    conn->close("enough");
    EXPECT_TRUE(r.closed.empty()) << "close() never calls back synchronously";
    EXPECT_FALSE(conn->send(Imok{}));
    conn.reset();  // the owner forgets it: the coroutine still holds it
  };
  Served s(std::move(h));
  conn = s.conn();
  std::weak_ptr<FramedConnection> watch = s.conn();
  s.conn().reset();
  // Three frames in one segment: the second and third are already buffered when the
  // first is delivered, and must not be.
  std::vector<std::byte> three;
  for (int i = 0; i < 3; ++i) {
    auto f = encode_flat(Ruok{});
    three.insert(three.end(), f.begin(), f.end());
  }
  ASSERT_TRUE(s.peer().send_raw(three));
  ASSERT_TRUE(run_until(s.io(), [&] { return watch.expired(); }))
      << "the connection is freed once its coroutine ends";
  EXPECT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.closed, std::vector<std::string>{"enough"});
  EXPECT_TRUE(s.peer().wait_closed(kTimeout));
}

TEST(FramedConnection, AFullOutboxClosesLaterFromTheCoroutine) {
  Record r;
  Served s(recording(r), options(2));
  // The writer has not run yet (nothing runs inside serve()), so the third frame finds
  // the outbox full.
  EXPECT_TRUE(s.conn()->send(Imok{}));
  EXPECT_TRUE(s.conn()->send(Imok{}));
  EXPECT_FALSE(s.conn()->send(Imok{}));
  EXPECT_TRUE(s.conn()->closing());
  EXPECT_TRUE(r.closed.empty()) << "send() never calls back synchronously";
  EXPECT_FALSE(s.conn()->send(Imok{}));
  ASSERT_TRUE(run_until(s.io(), [&] { return !r.closed.empty(); }));
  EXPECT_EQ(r.closed, std::vector<std::string>{"outbox full: 2 frames queued, the limit is 2: "
                                               "the peer does not read its replies"});
  EXPECT_TRUE(s.peer().wait_closed(kTimeout));
}

TEST(FramedConnection, AnOutboxOverItsByteLimitClosesNamingTheFigures) {
  Record r;
  auto o = options();
  o.outbox_bytes = 4096;
  Served s(recording(r), o);
  ReadResponse big{
      JobId{1}, {}, 512, std::vector<std::optional<BlockContext>>(6), Bytes(ByteBuffer(6 * 512))};
  // The first frame is taken whatever its size; the second would pass 4 KiB.
  EXPECT_TRUE(s.conn()->send(big));
  EXPECT_FALSE(s.conn()->send(big));
  ASSERT_TRUE(run_until(s.io(), [&] { return !r.closed.empty(); }));
  ASSERT_EQ(r.closed.size(), 1u);
  EXPECT_NE(r.closed[0].find("would exceed the outbox limit of 4 KiB"), std::string::npos)
      << r.closed[0];
}

TEST(FramedConnection, AFrameOverTheConnectionsLimitIsRefusedBeforeItsBody) {
  Record r;
  Served s(recording(r));
  s.conn()->set_frame_bytes_max(1024);
  // Only the header of a 64 KiB write: the limit is checked before the body is awaited.
  Write w;
  w.job_id = JobId{1};
  w.block_size = 512;
  w.contexts.resize(128);
  w.data = Bytes(ByteBuffer(128 * 512));
  auto frame = encode_flat(w);
  ASSERT_TRUE(s.peer().send_raw(std::span(frame).first(kFrameHeaderBytes)));
  ASSERT_TRUE(run_until(s.io(), [&] { return !r.closed.empty(); }));
  EXPECT_NE(r.closed[0].find("over this connection's limit of 1024 bytes"), std::string::npos)
      << r.closed[0];
  EXPECT_TRUE(r.messages.empty());
}

// Two connections share a budget; the first fills its own share with replies its peer
// does not read, and is not read from until the peer reads them.
TEST(FramedConnection, ReadingWaitsWhileThePeerIsOverItsBudgetAndGoesOnOnceUnder) {
  auto budget =
      std::make_shared<MemoryBudget>(MemoryBudget::Limits{4 * kMaxFrameBytes, kMaxFrameBytes});
  Record r;
  auto o = options(1024);
  o.budget = budget;
  Served s(recording(r), o);
  // What the owner holds for this peer, e.g. queued jobs, counts too: just over budget.
  s.conn()->set_owner_bytes(kMaxFrameBytes);
  ASSERT_TRUE(s.peer().send(Ruok{}));
  ASSERT_TRUE(run_until(s.io(), [&] { return s.conn()->reading_paused(); }));
  EXPECT_TRUE(r.messages.empty()) << "not read while over its budget";
  EXPECT_GE(budget->held_bytes(), kMaxFrameBytes);
  s.conn()->set_owner_bytes(0);
  ASSERT_TRUE(run_until(s.io(), [&] { return !r.messages.empty(); }));
  EXPECT_FALSE(s.conn()->reading_paused());
  EXPECT_TRUE(r.closed.empty());
}

TEST(FramedConnection, OthersFillingTheTotalDoNotHoldBackTheGuaranteedConnection) {
  // A total of four frames: others may use three of them, one is kept for the guaranteed.
  auto budget =
      std::make_shared<MemoryBudget>(MemoryBudget::Limits{4 * kMaxFrameBytes, kMaxFrameBytes});
  budget->update(0, 3 * kMaxFrameBytes);  // the others' use
  Record r;
  auto o = options();
  o.budget = budget;
  Served s(recording(r), o);
  ASSERT_TRUE(s.peer().send(Ruok{}));
  ASSERT_TRUE(run_until(s.io(), [&] { return s.conn()->reading_paused(); }))
      << "an ordinary peer waits for the others";
  EXPECT_TRUE(r.messages.empty());
  s.conn()->set_guaranteed(true);
  ASSERT_TRUE(run_until(s.io(), [&] { return !r.messages.empty(); }));
  budget->update(3 * kMaxFrameBytes, 0);
}

TEST(FramedConnection, CloseAfterDrainDeliversWhatWasQueuedThenHangsUp) {
  Record r;
  Served s(recording(r));
  ASSERT_TRUE(s.conn()->send(Imok{}));
  s.conn()->close_after_drain("told to go");
  EXPECT_FALSE(s.conn()->send(Ruok{})) << "nothing is queued after the last message";
  ASSERT_TRUE(run_until(s.io(), [&] { return !r.closed.empty(); }));
  EXPECT_EQ(r.closed, std::vector<std::string>{"told to go"});
  EXPECT_TRUE(s.peer().recv_as<Imok>(kTimeout));
  auto eof = s.peer().recv(kTimeout);
  ASSERT_FALSE(eof);
  EXPECT_EQ(eof.error().code, ErrorCode::kDisconnected);
}

TEST(FramedConnection, DropsAPeerSilentLongerThanTheIdleTimeout) {
  Record r;
  auto o = options();
  o.idle_timeout = 50ms;
  Served s(recording(r), o);
  ASSERT_TRUE(run_until(s.io(), [&] { return !r.closed.empty(); }));
  EXPECT_EQ(r.closed, std::vector<std::string>{"silent for more than 50 ms"});
}

TEST(FramedConnection, ADisarmedConnectionNeverCallsBack) {
  Record r;
  Served s(recording(r));
  std::weak_ptr<FramedConnection> watch = s.conn();
  ASSERT_TRUE(s.peer().send(Ruok{}));
  s.conn()->disarm();
  s.conn()->close("owner gone");
  s.conn().reset();
  ASSERT_TRUE(run_until(s.io(), [&] { return watch.expired(); }));
  EXPECT_TRUE(r.messages.empty());
  EXPECT_TRUE(r.closed.empty());
}

TEST(FramedConnection, ConnectsAndExchangesWithAServedConnection) {
  asio::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  Record client, server;
  FramedConnection::Ptr served, outgoing;
  auto sh = recording(server);
  sh.on_message = [&](Message m) {
    server.messages.push_back(std::move(m));
    EXPECT_TRUE(served->send(Imok{}));
  };
  acceptor.async_accept([&](const asio::error_code& ec, tcp::socket s) {
    ASSERT_FALSE(ec) << ec.message();
    served = FramedConnection::serve(std::move(s), options(), std::move(sh));
  });
  auto ch = recording(client);
  ch.on_connected = [&] {
    ++client.connected;
    EXPECT_TRUE(outgoing->connected());
    EXPECT_TRUE(outgoing->send(Ruok{}));
  };
  ch.on_message = [&](Message m) {
    client.messages.push_back(std::move(m));
    outgoing->close("done");
  };
  auto o = options();
  o.connect_timeout = 5s;
  outgoing = FramedConnection::connect(
      io.get_executor(), fmt::format("127.0.0.1:{}", acceptor.local_endpoint().port()), o,
      std::move(ch));
  EXPECT_FALSE(outgoing->connected());
  ASSERT_TRUE(run_until(io, [&] { return !client.closed.empty() && !server.closed.empty(); }));
  EXPECT_EQ(client.connected, 1);
  ASSERT_EQ(client.messages.size(), 1u);
  EXPECT_TRUE(std::holds_alternative<Imok>(client.messages[0]));
  ASSERT_EQ(server.messages.size(), 1u);
  EXPECT_TRUE(std::holds_alternative<Ruok>(server.messages[0]));
  EXPECT_EQ(client.closed, std::vector<std::string>{"done"});
  EXPECT_EQ(server.closed.size(), 1u);
}

TEST(FramedConnection, ABadAddressIsReportedFromTheCoroutineNotFromConnect) {
  asio::io_context io;
  Record r;
  auto c = FramedConnection::connect(io.get_executor(), "no port here", options(), recording(r));
  EXPECT_TRUE(r.closed.empty());
  ASSERT_TRUE(run_until(io, [&] { return !r.closed.empty(); }));
  EXPECT_EQ(r.connected, 0);
  EXPECT_EQ(r.closed.size(), 1u);
  EXPECT_FALSE(c->connected());
}

TEST(FramedConnection, ClosingWhileConnectingReportsThatReasonOnly) {
  asio::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  Record r;
  auto c = FramedConnection::connect(io.get_executor(),
                                     fmt::format("127.0.0.1:{}", acceptor.local_endpoint().port()),
                                     options(), recording(r));
  c->close("given up");
  ASSERT_TRUE(run_until(io, [&] { return !r.closed.empty(); }));
  run_until(
      io, [] { return false; }, 100ms);
  EXPECT_EQ(r.connected, 0);
  EXPECT_EQ(r.closed, std::vector<std::string>{"given up"});
}

}  // namespace
}  // namespace cru::proto
