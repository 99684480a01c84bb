#include "support/delay_proxy.h"

#include <fmt/format.h>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/post.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <atomic>
#include <exception>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "common/assert.h"
#include "support/delay_queue.h"

namespace cru::test {

using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;
using namespace asio::experimental::awaitable_operators;

namespace {

// One read: large enough for a 1 MiB write to cross in a few reads, small enough that the
// delay applies to pieces (as packets) rather than to whole frames.
constexpr size_t kReadChunkBytes = 64 * kKiB;

// One direction of a connection: bytes read from `from`, delayed, written to `to`.
struct Pipe {
  Pipe(asio::io_context& io, tcp::socket& from_, tcp::socket& to_, const DelayProxyOptions& o,
       uint64_t seed)
      : from(from_),
        to(to_),
        queue(o.queue_bytes_max, o.one_way_delay, o.jitter, seed),
        data_ready(io),
        space_ready(io),
        due(io) {}
  tcp::socket& from;
  tcp::socket& to;
  DelayQueue queue;
  // Wake-ups between the reader and the writer: a wait is a timer set to "never",
  // cancelled by the other side.
  asio::steady_timer data_ready, space_ready, due;
  bool eof = false;
  std::atomic<uint64_t>* bytes = nullptr;  // the proxy's counter for this direction
};

awaitable<void> wait_for_wake(asio::steady_timer& t) {
  std::error_code ignored;
  t.expires_at(asio::steady_timer::time_point::max());
  co_await t.async_wait(asio::redirect_error(use_awaitable, ignored));
}

}  // namespace

struct DelayProxy::Impl {
  explicit Impl(DelayProxyOptions o) : options(std::move(o)), acceptor(io) {}

  struct Link {
    Link(Impl& proxy, tcp::socket c, uint64_t seed)
        : client(std::move(c)),
          target(proxy.io),
          up(proxy.io, client, target, proxy.options, seed),
          down(proxy.io, target, client, proxy.options, seed + 1) {
      up.bytes = &proxy.bytes_to_target;
      down.bytes = &proxy.bytes_from_target;
    }
    tcp::socket client, target;
    Pipe up, down;  // client -> target, target -> client
    bool closed = false;

    // Ends the connection: both sockets reset (linger 0), every wait woken.
    void abort() {
      if (closed) return;
      closed = true;
      for (tcp::socket* s : {&client, &target}) {
        std::error_code ignored;
        if (s->is_open()) {
          s->set_option(asio::socket_base::linger(true, 0), ignored);
          s->close(ignored);
        }
      }
      for (Pipe* p : {&up, &down}) {
        p->data_ready.cancel();
        p->space_ready.cancel();
        p->due.cancel();
      }
    }
  };

  DelayProxyOptions options;
  asio::io_context io;
  tcp::acceptor acceptor;
  std::thread thread;
  std::set<std::shared_ptr<Link>> links;  // io thread only
  std::atomic<bool> delay_on{true};
  std::atomic<uint64_t> accepted{0}, refused{0}, bytes_to_target{0}, bytes_from_target{0};
  std::atomic<size_t> high_water{0}, open{0};
  uint64_t next_seed = 0;
  uint16_t port = 0;     // bound at start
  bool stopped = false;  // test thread only

  void note_high_water(size_t n) {
    size_t seen = high_water.load();
    while (n > seen && !high_water.compare_exchange_weak(seen, n)) {
    }
  }
};

namespace {

using Impl = DelayProxy::Impl;
using Link = Impl::Link;

awaitable<void> read_side(Impl& proxy, std::shared_ptr<Link> link, bool up) {
  Pipe& p = up ? link->up : link->down;
  std::vector<std::byte> buf;
  for (;;) {
    while (p.queue.space() == 0 && !link->closed) co_await wait_for_wake(p.space_ready);
    if (link->closed) co_return;
    buf.resize(std::min(kReadChunkBytes, p.queue.space()));
    std::error_code ec;
    const size_t n =
        co_await p.from.async_read_some(asio::buffer(buf), asio::redirect_error(use_awaitable, ec));
    if (ec == asio::error::eof) {
      p.eof = true;
      p.data_ready.cancel();
      co_return;
    }
    if (ec) throw std::system_error(ec, "read");
    buf.resize(n);
    p.queue.push(std::move(buf), DelayQueue::Clock::now(), proxy.delay_on.load());
    proxy.note_high_water(p.queue.bytes());
    buf = {};
    p.data_ready.cancel();
  }
}

awaitable<void> write_side(std::shared_ptr<Link> link, bool up) {
  Pipe& p = up ? link->up : link->down;
  for (;;) {
    if (link->closed) co_return;
    if (p.queue.empty()) {
      if (p.eof) {
        // The sender closed its side: pass the half-close on once everything is out.
        std::error_code ignored;
        p.to.shutdown(tcp::socket::shutdown_send, ignored);
        co_return;
      }
      co_await wait_for_wake(p.data_ready);
      continue;
    }
    if (!p.queue.front_due(DelayQueue::Clock::now())) {
      std::error_code ignored;
      p.due.expires_at(p.queue.front().due);
      co_await p.due.async_wait(asio::redirect_error(use_awaitable, ignored));
      continue;
    }
    const size_t n = p.queue.front().bytes.size();
    co_await asio::async_write(p.to, asio::buffer(p.queue.front().bytes), use_awaitable);
    p.queue.pop();
    *p.bytes += n;
    p.space_ready.cancel();
  }
}

awaitable<void> pipe_loop(Impl& proxy, std::shared_ptr<Link> link, bool up) {
  co_await (read_side(proxy, link, up) && write_side(link, up));
}

awaitable<void> serve(Impl& proxy, std::shared_ptr<Link> link) {
  bool forwarding = false;
  try {
    const tcp::endpoint target(asio::ip::make_address(proxy.options.target_address),
                               proxy.options.target_port);
    asio::steady_timer timeout(proxy.io, proxy.options.connect_timeout);
    // The error as a value: `||` waits for the first to succeed, so a refused connect
    // that threw would wait for the timeout.
    std::error_code ec;
    auto connected =
        co_await (link->target.async_connect(target, asio::redirect_error(use_awaitable, ec)) ||
                  timeout.async_wait(use_awaitable));
    if (connected.index() != 0) throw std::runtime_error("connect to the target timed out");
    if (ec) throw std::system_error(ec, "connect to the target");
    link->target.set_option(tcp::no_delay(true));
    link->client.set_option(tcp::no_delay(true));
    ++proxy.accepted;
    forwarding = true;
    co_await (pipe_loop(proxy, link, true) && pipe_loop(proxy, link, false));
    // Both directions ended with EOF: a graceful close.
    std::error_code ignored;
    link->client.close(ignored);
    link->target.close(ignored);
    link->closed = true;
  } catch (const std::exception&) {
    // A reset, a refused or timed-out connect, or stop(): the other side is reset too.
    if (!forwarding) ++proxy.refused;
    link->abort();
  }
  proxy.links.erase(link);
  --proxy.open;
}

awaitable<void> accept_loop(Impl& proxy) {
  for (;;) {
    std::error_code ec;
    tcp::socket s = co_await proxy.acceptor.async_accept(asio::redirect_error(use_awaitable, ec));
    if (ec == asio::error::operation_aborted || !proxy.acceptor.is_open()) co_return;
    if (ec) continue;  // e.g. the client reset before accept: keep serving the others
    if (proxy.links.size() >= proxy.options.connections_max) {
      ++proxy.refused;
      std::error_code ignored;
      s.close(ignored);
      continue;
    }
    auto link = std::make_shared<Link>(proxy, std::move(s), proxy.next_seed);
    proxy.next_seed += 2;
    proxy.links.insert(link);
    ++proxy.open;
    asio::co_spawn(proxy.io, serve(proxy, link), asio::detached);
  }
}

}  // namespace

Result<std::unique_ptr<DelayProxy>> DelayProxy::start(DelayProxyOptions o) {
  if (o.jitter < std::chrono::microseconds(0) || o.jitter > o.one_way_delay)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("jitter {} us: must lie within [0, the delay {} us]", o.jitter.count(),
                            o.one_way_delay.count()));
  if (o.queue_bytes_max == 0 || o.connections_max == 0)
    return fail(ErrorCode::kInvalidArgument, "queue_bytes_max and connections_max must be > 0");
  std::error_code ec;
  const auto listen = asio::ip::make_address(o.listen_address, ec);
  if (ec)
    return fail(ErrorCode::kInvalidArgument,
                "listen address '" + o.listen_address + "': " + ec.message());
  asio::ip::make_address(o.target_address, ec);
  if (ec)
    return fail(ErrorCode::kInvalidArgument,
                "target address '" + o.target_address + "': " + ec.message());
  if (o.target_port == 0) return fail(ErrorCode::kInvalidArgument, "target port 0");

  auto impl = std::make_unique<Impl>(std::move(o));
  impl->delay_on = impl->options.delay_on;
  const tcp::endpoint at(listen, impl->options.listen_port);
  impl->acceptor.open(at.protocol(), ec);
  if (!ec) impl->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(at, ec);
  if (!ec) impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    return fail(ErrorCode::kIo,
                fmt::format("cannot listen on {}:{}: {}", impl->options.listen_address,
                            impl->options.listen_port, ec.message()));
  impl->port = impl->acceptor.local_endpoint().port();
  asio::co_spawn(impl->io, accept_loop(*impl), asio::detached);
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->io.run(); });
  return std::unique_ptr<DelayProxy>(new DelayProxy(std::move(impl)));
}

DelayProxy::DelayProxy(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

DelayProxy::~DelayProxy() { stop(); }

uint16_t DelayProxy::port() const { return impl_->port; }

void DelayProxy::set_delay_on(bool on) { impl_->delay_on = on; }

DelayProxyStats DelayProxy::stats() const {
  const Impl& i = *impl_;
  return {i.accepted.load(),          i.refused.load(),    i.bytes_to_target.load(),
          i.bytes_from_target.load(), i.high_water.load(), i.open.load()};
}

void DelayProxy::stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  Impl* raw = impl_.get();
  asio::post(raw->io, [raw] {
    std::error_code ignored;
    raw->acceptor.close(ignored);
    // Copies: abort() makes each serve() erase its link.
    for (const auto& link :
         std::vector<std::shared_ptr<Link>>(raw->links.begin(), raw->links.end()))
      link->abort();
  });
  impl_->thread.join();
}

}  // namespace cru::test
