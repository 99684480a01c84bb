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

#include "support/process.h"

namespace cru::proto {
namespace {

using asio::ip::tcp;
using namespace std::chrono_literals;
using test::Millis;
using test::Peer;

constexpr Millis kTimeout{10000};

// What the handlers saw, in order.
struct Record {
  int connected = 0;
  std::vector<Message> messages;
  std::vector<std::string> closed;  // reasons; exactly one when the connection ended
};

FramedConnection::Handlers recording(Record& r) {
  FramedConnection::Handlers h;
  h.on_connected = [&r] { ++r.connected; };
  h.on_message = [&r](Message m) { r.messages.push_back(std::move(m)); };
  h.on_closed = [&r](const std::string& reason) { r.closed.push_back(reason); };
  return h;
}

FramedConnection::Options options(size_t outbox_frames = 16) {
  FramedConnection::Options o;
  o.outbox_frames = outbox_frames;
  return o;
}

// Runs the io_context until `done` holds or the timeout passes; true if it holds.
template <typename Pred>
bool run_until(asio::io_context& io, Pred done, Millis timeout = kTimeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    if (io.stopped()) io.restart();
    io.run_one_for(10ms);
  }
  return done();
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
  EXPECT_EQ(r.closed, std::vector<std::string>{"outbox full: the peer does not read its replies"});
  EXPECT_TRUE(s.peer().wait_closed(kTimeout));
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
