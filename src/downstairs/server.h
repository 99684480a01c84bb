// The downstairs shell: a TCP listener and connections (asio, one io thread) around the
// Core. Each connection is a proto::FramedConnection (frames -> core, bounded outbox ->
// socket, drops a peer silent for 45 s). Outgoing connections to repair sources are
// opened when the core asks. Everything runs on the io_context's thread.
#pragma once

#include <asio/awaitable.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "common/result.h"
#include "common/units.h"
#include "downstairs/core.h"
#include "proto/connection.h"
#include "proto/memory_budget.h"

namespace cru::downstairs {

// A peer that sends nothing (not even a ping answer) for this long is gone.
inline constexpr std::chrono::seconds kIdleTimeout{45};
// Connecting to a repair source gives up after this long.
inline constexpr std::chrono::seconds kConnectTimeout{10};
// Replies queued for one connection; the upstairs bounds its jobs well below this.
inline constexpr size_t kOutboxFrames = 20000;
// Connections at once: one read-write upstairs, a few read-only ones and repair peers
// need far fewer; each costs a descriptor and some 20 KiB while idle. At the limit a new
// connection replaces the oldest one that has not said HereIAm, or is closed at once.
inline constexpr size_t kMaxConnections = 1024;
// Memory held for one peer (its queued jobs and the replies reads will make, its outbox,
// the frame being read): the active upstairs admits at most 75 MiB of jobs, and one frame
// may be 72 MiB, so it is never held back by this; a peer past it is not read until it
// is back under. Its outbox may pass this by one largest frame (replies to jobs read
// before the pause); past that the peer is dropped.
inline constexpr uint64_t kPeerMemoryBudgetBytes = 256 * kMiB;
// Memory held for all peers: the active upstairs's budget (always kept for it) plus room
// for read-only upstairs and repair peers.
inline constexpr uint64_t kMemoryBudgetBytes = 1 * kGiB;

struct ServerOptions {
  // Frames queued for one connection before it is dropped as not reading (kOutboxFrames).
  size_t outbox_frames = kOutboxFrames;
  size_t max_connections = kMaxConnections;
  // Must satisfy MemoryBudget::Limits (validate_server_options checks).
  proto::MemoryBudget::Limits memory{kMemoryBudgetBytes, kPeerMemoryBudgetBytes};
  std::chrono::steady_clock::duration idle_timeout = kIdleTimeout;  // tests shorten it
  // Mutual TLS on every connection, served and outgoing (repair); none: plain TCP.
  std::shared_ptr<proto::TlsContext> tls;
};

// Checks flags before a server is built: names the flag, the value and what is expected.
Status validate_server_options(const ServerOptions& options);

class Server {
 public:
  // Binds now (so port() is known); serves after start().
  Server(asio::io_context& io, Core& core, const asio::ip::tcp::endpoint& listen,
         ServerOptions options = {});
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  uint16_t port() const { return acceptor_.local_endpoint().port(); }
  // Memory held for peers (io thread only).
  const proto::MemoryBudget& memory() const { return *budget_; }
  void start();
  // Closes the listener and every connection and tells the core they are gone. Nothing
  // calls back into the server afterwards (connections are disarmed, the accept loop and
  // a pending tick check a gate), so it may be destroyed once stop() returns, even while
  // the io_context still runs. The destructor stops.
  void stop();

 private:
  // Both take the gate and return without touching the server once it is closed.
  asio::awaitable<void> accept_loop(std::shared_ptr<const bool> open);
  asio::awaitable<void> tick_later(std::shared_ptr<const bool> open);
  proto::FramedConnection::Options connection_options() const;
  proto::FramedConnection::Handlers handlers(ConnectionId id);
  // A connection's on_closed: forget it and tell the core.
  void closed(ConnectionId id, const std::string& reason);
  void apply(Output out);
  // Applies the output of an event on `conn` and brings the budgets of the connections it
  // touched up to date with the core.
  void apply_for(ConnectionId conn, Output out);
  // Tells a connection what the core holds for it, its longest frame, and whether it is
  // the active upstairs.
  void refresh(ConnectionId conn);
  // At max_connections: makes room by closing the oldest connection that has not
  // negotiated; false if there is none.
  bool evict_one_unnegotiated();
  // Logs a refused or evicted connection, at most once a second (a flood must not flood
  // the log), counting those not logged.
  void log_limited(const std::string& line);

  asio::io_context& io_;
  Core& core_;
  ServerOptions options_;
  asio::ip::tcp::acceptor acceptor_;
  // Every live connection, outgoing ones still connecting included; an entry leaves in
  // its connection's on_closed or in stop().
  std::map<ConnectionId, proto::FramedConnection::Ptr> conns_;
  std::shared_ptr<proto::MemoryBudget> budget_;
  std::optional<ConnectionId> guaranteed_;  // the connection told it is the active upstairs
  std::chrono::steady_clock::time_point last_limit_log_{};
  uint64_t unlogged_limit_events_ = 0;
  bool tick_scheduled_ = false;
  bool stopped_ = false;
  // The gate: true until stop(); shared with the coroutines above.
  std::shared_ptr<bool> open_ = std::make_shared<bool>(true);
};

}  // namespace cru::downstairs
