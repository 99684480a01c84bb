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
#include <string>

#include "downstairs/core.h"
#include "proto/connection.h"

namespace cru::downstairs {

// A peer that sends nothing (not even a ping answer) for this long is gone.
inline constexpr std::chrono::seconds kIdleTimeout{45};
// Connecting to a repair source gives up after this long.
inline constexpr std::chrono::seconds kConnectTimeout{10};
// Replies queued for one connection; the upstairs bounds its jobs well below this.
inline constexpr size_t kOutboxFrames = 20000;

struct ServerOptions {
  // Frames queued for one connection before it is dropped as not reading (kOutboxFrames).
  size_t outbox_frames = kOutboxFrames;
  // Mutual TLS on every connection, served and outgoing (repair); none: plain TCP.
  std::shared_ptr<proto::TlsContext> tls;
};

class Server {
 public:
  // Binds now (so port() is known); serves after start().
  Server(asio::io_context& io, Core& core, const asio::ip::tcp::endpoint& listen,
         ServerOptions options = {});
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  uint16_t port() const { return acceptor_.local_endpoint().port(); }
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

  asio::io_context& io_;
  Core& core_;
  ServerOptions options_;
  asio::ip::tcp::acceptor acceptor_;
  // Every live connection, outgoing ones still connecting included; an entry leaves in
  // its connection's on_closed or in stop().
  std::map<ConnectionId, proto::FramedConnection::Ptr> conns_;
  bool tick_scheduled_ = false;
  bool stopped_ = false;
  // The gate: true until stop(); shared with the coroutines above.
  std::shared_ptr<bool> open_ = std::make_shared<bool>(true);
};

}  // namespace cru::downstairs
