#include "downstairs/server.h"

#include <fmt/format.h>

#include <algorithm>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <utility>
#include <vector>

#include "common/assert.h"
#include "common/log.h"
#include "common/units.h"
#include "proto/limits.h"

namespace cru::downstairs {

using asio::ip::tcp;
using proto::FramedConnection;

namespace {
// How long a lossy (fault-injecting) downstairs holds deferred jobs.
constexpr std::chrono::milliseconds kLossyDelay{5};
// After a failed accept (EMFILE and friends) the listener waits this long: the condition
// rarely clears at once, and retrying at full speed would spin the io thread.
constexpr std::chrono::milliseconds kAcceptRetryDelay{100};
// Refused and evicted connections are logged at most this often (with a count of the
// others), so that a flood of connections does not flood the log.
constexpr std::chrono::seconds kLimitLogInterval{1};
}  // namespace

Status validate_server_options(const ServerOptions& o) {
  if (o.max_connections < 1)
    return fail(ErrorCode::kInvalidArgument, "--max-connections must be at least 1");
  if (o.memory.peer_bytes < proto::kMaxFrameBytes)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("--peer-memory-budget {} is below one largest frame ({}): a peer "
                            "could never send it",
                            format_size(o.memory.peer_bytes), format_size(proto::kMaxFrameBytes)));
  if (o.memory.total_bytes / 2 < o.memory.peer_bytes)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("--memory-budget {} must be at least twice --peer-memory-budget {} "
                            "(one peer's share is kept for the active upstairs)",
                            format_size(o.memory.total_bytes), format_size(o.memory.peer_bytes)));
  return {};
}

Server::Server(asio::io_context& io, Core& core, const tcp::endpoint& listen, ServerOptions options)
    : io_(io),
      core_(core),
      options_(std::move(options)),
      acceptor_(io, listen),
      budget_(std::make_shared<proto::MemoryBudget>(options_.memory)) {}

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
    if (conns_.size() >= options_.max_connections && !evict_one_unnegotiated()) {
      asio::error_code ep_ec;
      auto ep = s.remote_endpoint(ep_ec);
      log_limited(
          fmt::format("refused a connection from {}: {} connections open, the maximum "
                      "(--max-connections), and every one has negotiated",
                      ep_ec ? std::string("?") : ep.address().to_string(), conns_.size()));
      s.close(ep_ec);
      continue;
    }
    ConnectionId id = core_.new_connection();
    auto c = FramedConnection::serve(std::move(s), connection_options(), handlers(id));
    log::info("connection {} from {}", id, c->peer());
    conns_[id] = std::move(c);
    refresh(id);
  }
}

bool Server::evict_one_unnegotiated() {
  // Ids grow with time: the first one found is the oldest.
  for (auto& [id, c] : conns_) {
    if (core_.negotiated(id) || c->closing()) continue;
    log_limited(
        fmt::format("closing connection {} ({}) to make room: {} connections open, the "
                    "maximum (--max-connections), and it has not negotiated",
                    id, c->peer(), conns_.size()));
    c->close("closed to make room for a new connection (the connection limit is reached)");
    return true;
  }
  return false;
}

void Server::log_limited(const std::string& line) {
  auto now = std::chrono::steady_clock::now();
  if (now - last_limit_log_ < kLimitLogInterval) {
    ++unlogged_limit_events_;
    return;
  }
  last_limit_log_ = now;
  if (unlogged_limit_events_ > 0)
    log::warn("{} (and {} more refused or closed for the connection limit since the last line)",
              line, std::exchange(unlogged_limit_events_, 0));
  else
    log::warn("{}", line);
}

FramedConnection::Options Server::connection_options() const {
  FramedConnection::Options o;
  o.outbox_frames = options_.outbox_frames;
  o.outbox_bytes = options_.memory.peer_bytes + proto::kMaxFrameBytes;
  o.budget = budget_;
  o.idle_timeout = options_.idle_timeout;
  o.connect_timeout = kConnectTimeout;  // outgoing (repair) connections only
  // Repair sources are reached at an address a peer reported (possibly 0.0.0.0): the CA
  // alone vouches for them.
  o.tls = options_.tls;
  return o;
}

// The handlers capture the server: stop() disarms every connection before it can go.
FramedConnection::Handlers Server::handlers(ConnectionId id) {
  FramedConnection::Handlers h;
  h.on_connected = [this, id] { apply_for(id, core_.on_connected(id)); };
  h.on_message = [this, id](proto::Message m) {
    apply_for(id, core_.on_message(id, std::move(m)));
  };
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
    apply_for(id, core_.on_disconnect(id, fmt::format("connecting to {}: {}", c->peer(), reason)));
    return;
  }
  log::info("connection {} ({}) closed: {}", id, c->peer(), reason);
  apply_for(id, core_.on_disconnect(id, reason));
}

void Server::apply_for(ConnectionId conn, Output out) {
  // Whose core memory may have changed: this one, those it answers (a finished repair
  // completes its owner's job), and the active upstairs (it may have changed hands).
  std::vector<ConnectionId> touched{conn};
  for (const auto& s : out.sends) touched.push_back(s.conn);
  apply(std::move(out));
  std::sort(touched.begin(), touched.end());
  touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
  for (ConnectionId c : touched) refresh(c);
  auto active = core_.active_upstairs();
  if (active != guaranteed_) {
    if (guaranteed_) refresh(*guaranteed_);
    guaranteed_ = active;
    if (active) refresh(*active);
  }
}

void Server::refresh(ConnectionId conn) {
  auto it = conns_.find(conn);
  if (it == conns_.end()) return;
  FramedConnection& c = *it->second;
  c.set_frame_bytes_max(core_.frame_bytes_max(conn));
  c.set_guaranteed(core_.active_upstairs() == conn);
  c.set_owner_bytes(core_.held_bytes(conn));
}

asio::awaitable<void> Server::tick_later(std::shared_ptr<const bool> open) {
  asio::steady_timer t(io_, kLossyDelay);
  co_await t.async_wait(asio::use_awaitable);
  if (!*open) co_return;
  tick_scheduled_ = false;
  Output out = core_.on_tick();
  std::vector<ConnectionId> touched;
  for (const auto& s : out.sends) touched.push_back(s.conn);
  apply(std::move(out));
  for (ConnectionId c : touched) refresh(c);
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
