#include "downstairs/server.h"

#include <fmt/format.h>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include "common/assert.h"
#include "common/log.h"

namespace cru::downstairs {

using asio::ip::tcp;
using proto::FramedConnection;

namespace {
// How long a lossy (fault-injecting) downstairs holds deferred jobs.
constexpr std::chrono::milliseconds kLossyDelay{5};
// After a failed accept (EMFILE and friends) the listener waits this long: the condition
// rarely clears at once, and retrying at full speed would spin the io thread.
constexpr std::chrono::milliseconds kAcceptRetryDelay{100};
}  // namespace

Server::Server(asio::io_context& io, Core& core, const tcp::endpoint& listen, ServerOptions options)
    : io_(io), core_(core), options_(std::move(options)), acceptor_(io, listen) {}

Server::~Server() { stop(); }

void Server::start() { asio::co_spawn(io_, accept_loop(open_), asio::detached); }

void Server::stop() {
  if (stopped_) return;
  stopped_ = true;
  *open_ = false;
  asio::error_code ignored;
  acceptor_.close(ignored);
  auto conns = std::move(conns_);
  conns_.clear();
  const std::string reason = "server stopping";
  for (auto& [id, c] : conns) {
    c->disarm();
    c->close(reason);
    if (c->connected()) log::info("connection {} ({}) closed: {}", id, c->peer(), reason);
    apply(core_.on_disconnect(id, reason));
  }
}

asio::awaitable<void> Server::accept_loop(std::shared_ptr<const bool> open) {
  for (;;) {
    asio::error_code ec;
    tcp::socket s = co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (!*open) co_return;
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      // EMFILE and friends: log, back off briefly, keep serving the others.
      log::warn("accept failed: {}", ec.message());
      asio::steady_timer t(io_, kAcceptRetryDelay);
      co_await t.async_wait(asio::use_awaitable);
      if (!*open) co_return;
      continue;
    }
    ConnectionId id = core_.new_connection();
    auto c = FramedConnection::serve(std::move(s), connection_options(), handlers(id));
    log::info("connection {} from {}", id, c->peer());
    conns_[id] = std::move(c);
  }
}

FramedConnection::Options Server::connection_options() const {
  FramedConnection::Options o;
  o.outbox_frames = options_.outbox_frames;
  o.idle_timeout = kIdleTimeout;
  o.connect_timeout = kConnectTimeout;  // outgoing (repair) connections only
  // Repair sources are reached at an address a peer reported (possibly 0.0.0.0): the CA
  // alone vouches for them.
  o.tls = options_.tls;
  return o;
}

// The handlers capture the server: stop() disarms every connection before it can go.
FramedConnection::Handlers Server::handlers(ConnectionId id) {
  FramedConnection::Handlers h;
  h.on_connected = [this, id] { apply(core_.on_connected(id)); };
  h.on_message = [this, id](proto::Message m) { apply(core_.on_message(id, std::move(m))); };
  h.on_closed = [this, id](const std::string& reason) { closed(id, reason); };
  return h;
}

void Server::closed(ConnectionId id, const std::string& reason) {
  auto it = conns_.find(id);
  CRU_ASSERT(it != conns_.end(), "on_closed from a connection the server no longer holds");
  FramedConnection::Ptr c = std::move(it->second);
  conns_.erase(it);
  if (!c->connected()) {
    // An outgoing connection that never came up; it was never logged as open.
    apply(core_.on_disconnect(id, fmt::format("connecting to {}: {}", c->peer(), reason)));
    return;
  }
  log::info("connection {} ({}) closed: {}", id, c->peer(), reason);
  apply(core_.on_disconnect(id, reason));
}

asio::awaitable<void> Server::tick_later(std::shared_ptr<const bool> open) {
  asio::steady_timer t(io_, kLossyDelay);
  co_await t.async_wait(asio::use_awaitable);
  if (!*open) co_return;
  tick_scheduled_ = false;
  apply(core_.on_tick());
}

void Server::apply(Output out) {
  for (auto& s : out.sends) {
    auto it = conns_.find(s.conn);
    if (it == conns_.end()) continue;  // closed meanwhile
    // False when closing (or just closed for a full outbox): on_closed follows and
    // tells the core, from the connection's coroutine, never from here.
    (void)it->second->send(s.message);
  }
  for (auto& cl : out.closes) {
    auto it = conns_.find(cl.conn);
    if (it == conns_.end()) continue;
    log::info("closing connection {} ({}): {}", cl.conn, it->second->peer(), cl.reason);
    // Deliver what was queued (e.g. YouAreNoLongerActive), then hang up.
    it->second->close_after_drain(cl.reason);
  }
  if (stopped_) return;
  for (auto& co : out.connects)
    conns_[co.conn] = FramedConnection::connect(io_.get_executor(), co.address,
                                                connection_options(), handlers(co.conn));
  if (out.tick_soon && !tick_scheduled_) {
    tick_scheduled_ = true;
    asio::co_spawn(io_, tick_later(open_), asio::detached);
  }
}

}  // namespace cru::downstairs
