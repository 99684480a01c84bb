// The delaying TCP proxy of tests/support (the netns test and the 1 ms bench rows rely on
// it): the pure DelayQueue with a fake clock (order, delay and jitter bounds, the byte
// bound), then the proxy over real loopback sockets: bytes intact and in order both ways,
// a half-close passed on after the queued bytes, a reset passed on, a receiver that stops
// reading bounds what the proxy holds, a refused target, and the delay applied (a lower
// bound on a round trip, which a correct proxy cannot miss). Every socket wait has a
// hard timeout.
#include "support/delay_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "support/delay_queue.h"

namespace cru::test {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;
using TimePoint = DelayQueue::TimePoint;

std::vector<std::byte> bytes_of(size_t n, uint8_t v) {
  return std::vector<std::byte>(n, std::byte{v});
}

// ---- DelayQueue ------------------------------------------------------------------------------

TEST(DelayQueue, ChunksAreDueWithinTheJitterAndNeverBeforeAnEarlierOne) {
  const microseconds delay(500), jitter(400);
  DelayQueue q(1 << 20, delay, jitter, 7);
  TimePoint now{};
  TimePoint last{};
  for (int i = 0; i < 1000; ++i) {
    now += microseconds(i % 3 == 0 ? 0 : 37);  // bursts and gaps
    const TimePoint due = q.push(bytes_of(10, 1), now);
    EXPECT_GE(due, now + delay - jitter);
    EXPECT_GE(due, last) << "chunk " << i << " would overtake the one before it";
    // Later than its own draw only when an earlier chunk holds it back.
    EXPECT_TRUE(due <= now + delay + jitter || due == last) << "chunk " << i;
    last = due;
  }
}

TEST(DelayQueue, WithTheDelayOffAChunkIsDueAtOnceUnlessAnEarlierOneIsLater) {
  DelayQueue q(1 << 20, microseconds(1000), microseconds(0), 1);
  const TimePoint t0{};
  EXPECT_EQ(q.push(bytes_of(4, 1), t0, true), t0 + microseconds(1000));
  // Off now, but the bytes before it are still held: it waits for them.
  EXPECT_EQ(q.push(bytes_of(4, 2), t0 + microseconds(10), false), t0 + microseconds(1000));
  q.pop();
  q.pop();
  EXPECT_EQ(q.push(bytes_of(4, 3), t0 + microseconds(2000), false), t0 + microseconds(2000));
}

TEST(DelayQueue, HoldsAtMostItsBoundAndReleasesInOrder) {
  DelayQueue q(100, microseconds(50), microseconds(0), 1);
  const TimePoint t0{};
  q.push(bytes_of(60, 1), t0);
  EXPECT_EQ(q.space(), 40u);
  q.push(bytes_of(40, 2), t0 + microseconds(5));
  EXPECT_EQ(q.space(), 0u);
  EXPECT_EQ(q.bytes_high_water(), 100u);
  EXPECT_FALSE(q.front_due(t0 + microseconds(49)));
  ASSERT_TRUE(q.front_due(t0 + microseconds(50)));
  EXPECT_EQ(q.front().bytes.front(), std::byte{1});
  q.pop();
  EXPECT_EQ(q.space(), 60u);
  EXPECT_FALSE(q.front_due(t0 + microseconds(54)));
  ASSERT_TRUE(q.front_due(t0 + microseconds(55)));
  EXPECT_EQ(q.front().bytes.front(), std::byte{2});
  q.pop();
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.bytes_high_water(), 100u);
}

// ---- blocking socket helpers -----------------------------------------------------------------

constexpr milliseconds kIoTimeout{20000};

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    reset();
    fd_ = std::exchange(o.fd_, -1);
    return *this;
  }
  ~Fd() { reset(); }
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  }

 private:
  int fd_;
};

sockaddr_in loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

// A listening socket on 127.0.0.1 and its port.
std::pair<Fd, uint16_t> listen_any() {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = loopback(0);
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  EXPECT_EQ(::listen(fd.get(), 16), 0);
  socklen_t len = sizeof a;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  return {std::move(fd), ntohs(a.sin_port)};
}

bool wait_fd(int fd, short events, milliseconds timeout) {
  pollfd p{fd, events, 0};
  return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
}

Fd accept_one(const Fd& listener) {
  if (!wait_fd(listener.get(), POLLIN, kIoTimeout)) return Fd();
  return Fd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
}

Fd connect_to(uint16_t port) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = loopback(port);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return Fd();
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

bool send_all(int fd, const std::string& data) {
  for (size_t off = 0; off < data.size();) {
    if (!wait_fd(fd, POLLOUT, kIoTimeout)) return false;
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

// Reads until EOF (or `limit` bytes); `error` is set on a reset or a timeout.
std::string recv_until_eof(int fd, size_t limit, std::string* error) {
  std::string out;
  char buf[65536];
  while (out.size() < limit) {
    if (!wait_fd(fd, POLLIN, kIoTimeout)) {
      *error = "timed out";
      return out;
    }
    ssize_t n = ::recv(fd, buf, std::min(sizeof buf, limit - out.size()), 0);
    if (n == 0) return out;
    if (n < 0) {
      if (errno == EINTR) continue;
      *error = std::strerror(errno);
      return out;
    }
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

std::string random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::unique_ptr<DelayProxy> proxy_to(uint16_t target, DelayProxyOptions o = {}) {
  o.target_port = target;
  auto p = DelayProxy::start(o);
  EXPECT_TRUE(p) << p.error().to_string();
  return p ? std::move(*p) : nullptr;
}

// ---- DelayProxy ------------------------------------------------------------------------------

TEST(DelayProxy, ForwardsBytesIntactAndInOrderBothWaysAndPassesTheHalfCloseOn) {
  auto [listener, port] = listen_any();
  DelayProxyOptions o;
  o.one_way_delay = microseconds(300);
  o.jitter = microseconds(300);  // every chunk gets another delay: order must still hold
  o.queue_bytes_max = 256 * 1024;
  auto proxy = proxy_to(port, o);
  ASSERT_TRUE(proxy);
  Fd client = connect_to(proxy->port());
  ASSERT_GE(client.get(), 0);
  Fd server = accept_one(listener);
  ASSERT_GE(server.get(), 0);

  const std::string up = random_bytes(6 << 20, 1), down = random_bytes(5 << 20, 2);
  // Both ways at once, each side closing its sending half when done.
  std::string got_up, got_down, err_up, err_down;
  std::thread server_side([&] {
    std::thread reader([&] { got_up = recv_until_eof(server.get(), SIZE_MAX, &err_up); });
    EXPECT_TRUE(send_all(server.get(), down));
    ::shutdown(server.get(), SHUT_WR);
    reader.join();
  });
  EXPECT_TRUE(send_all(client.get(), up));
  ::shutdown(client.get(), SHUT_WR);
  got_down = recv_until_eof(client.get(), SIZE_MAX, &err_down);
  server_side.join();
  EXPECT_EQ(err_up, "");
  EXPECT_EQ(err_down, "");
  EXPECT_TRUE(got_up == up) << got_up.size() << " of " << up.size() << " bytes, or others";
  EXPECT_TRUE(got_down == down) << got_down.size() << " of " << down.size() << " bytes, or others";
  const auto st = proxy->stats();
  EXPECT_EQ(st.accepted, 1u);
  EXPECT_EQ(st.bytes_to_target, up.size());
  EXPECT_EQ(st.bytes_from_target, down.size());
  EXPECT_LE(st.queue_high_water, o.queue_bytes_max);
}

TEST(DelayProxy, AReceiverThatStopsReadingStopsTheSenderAtTheQueueBound) {
  auto [listener, port] = listen_any();
  DelayProxyOptions o;
  o.queue_bytes_max = 128 * 1024;
  auto proxy = proxy_to(port, o);
  ASSERT_TRUE(proxy);
  Fd client = connect_to(proxy->port());
  Fd server = accept_one(listener);
  ASSERT_GE(server.get(), 0);
  // The server reads nothing: the sender may fill the socket buffers and the proxy's
  // queue, no more. Write until the proxy's queue is full (its high-water mark reaches
  // the bound), bounded in time.
  const std::string chunk = random_bytes(64 * 1024, 3);
  std::string sent;
  const auto deadline = std::chrono::steady_clock::now() + kIoTimeout;
  while (proxy->stats().queue_high_water < o.queue_bytes_max) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline)
        << "the proxy's queue never filled; " << sent.size() << " bytes sent";
    if (!wait_fd(client.get(), POLLOUT, milliseconds(50))) continue;
    ssize_t n = ::send(client.get(), chunk.data(), chunk.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) sent.append(chunk.data(), static_cast<size_t>(n));
  }
  EXPECT_EQ(proxy->stats().queue_high_water, o.queue_bytes_max);
  // Now the server reads: everything arrives, in order, and the queue never held more.
  ::shutdown(client.get(), SHUT_WR);
  std::string err;
  std::string got = recv_until_eof(server.get(), SIZE_MAX, &err);
  EXPECT_EQ(err, "");
  EXPECT_TRUE(got == sent) << got.size() << " of " << sent.size() << " bytes, or others";
  EXPECT_EQ(proxy->stats().queue_high_water, o.queue_bytes_max);
}

TEST(DelayProxy, AResetOnOneSideResetsTheOther) {
  auto [listener, port] = listen_any();
  auto proxy = proxy_to(port);
  ASSERT_TRUE(proxy);
  Fd client = connect_to(proxy->port());
  Fd server = accept_one(listener);
  ASSERT_GE(server.get(), 0);
  ASSERT_TRUE(send_all(server.get(), "hello"));
  std::string err;
  EXPECT_EQ(recv_until_eof(client.get(), 5, &err), "hello");
  linger l{1, 0};  // close with a reset
  ::setsockopt(server.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
  server.reset();
  std::string rest = recv_until_eof(client.get(), SIZE_MAX, &err);
  EXPECT_EQ(rest, "");
  EXPECT_EQ(err, std::strerror(ECONNRESET));
}

TEST(DelayProxy, AClientOfATargetThatIsNotListeningIsClosed) {
  uint16_t dead_port = 0;
  {
    auto [l, p] = listen_any();
    dead_port = p;  // closed again at the end of this block
  }
  auto proxy = proxy_to(dead_port);
  ASSERT_TRUE(proxy);
  Fd client = connect_to(proxy->port());
  ASSERT_GE(client.get(), 0);
  std::string err;
  EXPECT_EQ(recv_until_eof(client.get(), SIZE_MAX, &err), "");
  EXPECT_NE(err, "timed out");
  EXPECT_EQ(proxy->stats().refused, 1u);
  EXPECT_EQ(proxy->stats().accepted, 0u);
}

TEST(DelayProxy, ARoundTripTakesAtLeastTwiceTheOneWayDelayOnlyWhileTheDelayIsOn) {
  auto [listener, port] = listen_any();
  DelayProxyOptions o;
  o.one_way_delay = microseconds(20000);
  o.jitter = microseconds(0);
  auto proxy = proxy_to(port, o);
  ASSERT_TRUE(proxy);
  Fd client = connect_to(proxy->port());
  Fd server = accept_one(listener);
  ASSERT_GE(server.get(), 0);
  auto ping = [&] {
    std::string err;
    EXPECT_TRUE(send_all(client.get(), "p"));
    EXPECT_EQ(recv_until_eof(server.get(), 1, &err), "p");
    EXPECT_TRUE(send_all(server.get(), "q"));
    EXPECT_EQ(recv_until_eof(client.get(), 1, &err), "q");
  };
  const auto t0 = std::chrono::steady_clock::now();
  ping();
  // A timer never fires early: this lower bound holds however loaded the machine is.
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 2 * o.one_way_delay);
  // Off: forwarded at once (nothing to assert about speed; the bytes still arrive).
  proxy->set_delay_on(false);
  ping();
}

TEST(DelayProxy, RefusesAJitterLargerThanTheDelay) {
  DelayProxyOptions o;
  o.target_port = 1;
  o.one_way_delay = microseconds(100);
  o.jitter = microseconds(101);
  auto p = DelayProxy::start(o);
  ASSERT_FALSE(p);
  EXPECT_NE(p.error().message.find("jitter"), std::string::npos) << p.error().message;
}

}  // namespace
}  // namespace cru::test
