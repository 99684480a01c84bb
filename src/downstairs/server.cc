#include "downstairs/server.h"

#include <fmt/format.h>

#include <asio/co_spawn.hpp>
#include <asio/connect.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>

#include "common/address.h"
#include "common/log.h"
#include "proto/codec.h"

namespace cru::downstairs {

using asio::ip::tcp;
using namespace asio::experimental::awaitable_operators;

namespace {
// How long a lossy (fault-injecting) downstairs holds deferred jobs.
constexpr std::chrono::milliseconds kLossyDelay{5};
// How often the watchdog checks a connection's silence.
constexpr std::chrono::seconds kWatchdogPeriod{5};

std::string endpoint_string(const tcp::socket& s) {
  asio::error_code ec;
  auto ep = s.remote_endpoint(ec);
  return ec ? std::string("?") : fmt::format("{}:{}", ep.address().to_string(), ep.port());
}

}  // namespace

Server::Connection::Connection(tcp::socket s, ConnectionId i, std::string p, size_t outbox_frames)
    : socket(std::move(s)),
      id(i),
      peer(std::move(p)),
      sink(socket.get_executor(), outbox_frames),
      watchdog(socket.get_executor()),
      last_heard(std::chrono::steady_clock::now()) {}

Server::Server(asio::io_context& io, Core& core, const tcp::endpoint& listen, ServerOptions options)
    : io_(io), core_(core), options_(options), acceptor_(io, listen) {}

Server::~Server() { stop(); }

void Server::start() { asio::co_spawn(io_, accept_loop(), asio::detached); }

void Server::stop() {
  if (stopped_) return;
  stopped_ = true;
  asio::error_code ignored;
  acceptor_.close(ignored);
  auto conns = conns_;
  for (auto& [id, c] : conns) shutdown(c, "server stopping");
}

asio::awaitable<void> Server::accept_loop() {
  while (!stopped_) {
    asio::error_code ec;
    tcp::socket s = co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      if (stopped_ || ec == asio::error::operation_aborted) co_return;
      // EMFILE and friends: log, back off briefly, keep serving the others.
      log::warn("accept failed: {}", ec.message());
      asio::steady_timer t(io_, std::chrono::milliseconds(100));
      co_await t.async_wait(asio::use_awaitable);
      continue;
    }
    proto::tune_socket(s);
    std::string peer = endpoint_string(s);
    auto c = std::make_shared<Connection>(std::move(s), core_.new_connection(), peer,
                                          options_.outbox_frames);
    log::info("connection {} from {}", c->id, c->peer);
    attach(c);
  }
}

void Server::attach(ConnPtr c) {
  conns_[c->id] = c;
  asio::co_spawn(io_, reader(c), asio::detached);
  asio::co_spawn(io_, writer(c), asio::detached);
  asio::co_spawn(io_, watchdog(c), asio::detached);
}

asio::awaitable<void> Server::reader(ConnPtr c) {
  proto::FrameSource source(c->socket);
  std::string reason = "peer closed the connection";
  try {
    while (!c->closed) {
      auto m = co_await source.next();
      if (!m) {
        reason = "protocol error: " + m.error().message;
        break;
      }
      c->last_heard = std::chrono::steady_clock::now();
      apply(core_.on_message(c->id, std::move(*m)));
    }
  } catch (const std::exception& e) {
    if (!c->closed) reason = e.what();
  }
  shutdown(c, reason);
}

asio::awaitable<void> Server::writer(ConnPtr c) {
  std::string reason = "closed";
  try {
    co_await c->sink.run(c->socket);
  } catch (const std::exception& e) {
    reason = std::string("write failed: ") + e.what();
  }
  shutdown(c, reason);
}

asio::awaitable<void> Server::watchdog(ConnPtr c) {
  while (!c->closed) {
    c->watchdog.expires_after(kWatchdogPeriod);
    asio::error_code ec;
    co_await c->watchdog.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (c->closed) co_return;
    if (std::chrono::steady_clock::now() - c->last_heard > kIdleTimeout) {
      shutdown(c, fmt::format("silent for more than {} s", kIdleTimeout.count()));
      co_return;
    }
  }
}

void Server::shutdown(const ConnPtr& c, const std::string& reason) {
  if (c->closed) return;
  c->closed = true;
  log::info("connection {} ({}) closed: {}", c->id, c->peer, reason);
  c->sink.close();
  asio::error_code ignored;
  c->socket.close(ignored);
  c->watchdog.cancel();
  conns_.erase(c->id);
  apply(core_.on_disconnect(c->id, reason));
}

asio::awaitable<void> Server::connect_out(ConnectionId id, std::string address) {
  auto parts = parse_address(address);
  std::string error;
  if (parts) {
    try {
      tcp::resolver resolver(io_);
      auto endpoints =
          co_await resolver.async_resolve(parts->host, parts->port_string(), asio::use_awaitable);
      tcp::socket s(io_);
      asio::steady_timer timer(io_, kConnectTimeout);
      auto result = co_await (asio::async_connect(s, endpoints, asio::use_awaitable) ||
                              timer.async_wait(asio::use_awaitable));
      if (result.index() == 1) {
        error = fmt::format("connecting to {} timed out", address);
      } else {
        proto::tune_socket(s);
        auto c = std::make_shared<Connection>(std::move(s), id, address, options_.outbox_frames);
        attach(c);
        apply(core_.on_connected(id));
        co_return;
      }
    } catch (const std::exception& e) {
      error = fmt::format("connecting to {}: {}", address, e.what());
    }
  } else {
    error = parts.error().message;
  }
  apply(core_.on_disconnect(id, error));
}

asio::awaitable<void> Server::tick_later() {
  asio::steady_timer t(io_, kLossyDelay);
  co_await t.async_wait(asio::use_awaitable);
  tick_scheduled_ = false;
  apply(core_.on_tick());
}

void Server::apply(Output out) {
  for (auto& s : out.sends) {
    auto it = conns_.find(s.conn);
    if (it == conns_.end()) continue;  // closed meanwhile
    if (!it->second->sink.try_push(s.message))
      shutdown(it->second, "outbox full: the peer does not read its replies");
  }
  for (auto& cl : out.closes) {
    auto it = conns_.find(cl.conn);
    if (it == conns_.end()) continue;
    log::info("closing connection {} ({}): {}", cl.conn, it->second->peer, cl.reason);
    // Deliver what was queued (e.g. YouAreNoLongerActive), then the writer hangs up.
    it->second->sink.close_after_drain();
  }
  for (auto& co : out.connects)
    asio::co_spawn(io_, connect_out(co.conn, co.address), asio::detached);
  if (out.tick_soon && !tick_scheduled_) {
    tick_scheduled_ = true;
    asio::co_spawn(io_, tick_later(), asio::detached);
  }
}

}  // namespace cru::downstairs
