// The downstairs shell: a TCP listener and connections (asio, one io thread) around the
// Core. Each connection has a reader (frames -> core), a writer (bounded outbox ->
// socket) and a watchdog (drops a peer silent for 45 s). Outgoing connections to repair
// sources are opened when the core asks. Everything runs on the io_context's thread.
#pragma once

#include <asio/awaitable.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "downstairs/core.h"
#include "proto/framed_socket.h"

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
  // Closes the listener and every connection.
  void stop();

 private:
  struct Connection {
    Connection(asio::ip::tcp::socket s, ConnectionId i, std::string p, size_t outbox_frames);
    asio::ip::tcp::socket socket;
    ConnectionId id;
    std::string peer;
    proto::FrameSink sink;
    asio::steady_timer watchdog;
    std::chrono::steady_clock::time_point last_heard;
    bool closed = false;
  };
  using ConnPtr = std::shared_ptr<Connection>;

  asio::awaitable<void> accept_loop();
  void attach(ConnPtr c);
  asio::awaitable<void> reader(ConnPtr c);
  asio::awaitable<void> writer(ConnPtr c);
  asio::awaitable<void> watchdog(ConnPtr c);
  asio::awaitable<void> connect_out(ConnectionId id, std::string address);
  asio::awaitable<void> tick_later();
  void shutdown(const ConnPtr& c, const std::string& reason);
  void apply(Output out);

  asio::io_context& io_;
  Core& core_;
  ServerOptions options_;
  asio::ip::tcp::acceptor acceptor_;
  std::map<ConnectionId, ConnPtr> conns_;
  bool tick_scheduled_ = false;
  bool stopped_ = false;
};

}  // namespace cru::downstairs
