// One framed TCP connection, the shape both shells use (the downstairs Server and the
// upstairs Volume): a single coroutine owns the socket, reads frames (FrameSource),
// writes a bounded outbox (FrameSink), optionally drops a silent peer (idle watchdog) and
// optionally connects first (resolve + connect, optional timeout) and optionally speaks
// mutual TLS (handshake before any frame, with a timeout). The owner is told what
// happens through three handlers. Everything, handlers included, runs on the thread that
// runs the socket's io_context; no method may be called from another thread.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "common/address.h"
#include "proto/framed_socket.h"
#include "proto/memory_budget.h"
#include "proto/messages.h"
#include "proto/stream.h"

namespace cru::proto {

class TlsContext;

// A TLS handshake that takes longer is abandoned: a peer that connects and says nothing
// (or speaks plain TCP and waits) must not hold a connection until the idle timeout.
inline constexpr std::chrono::seconds kTlsHandshakeTimeout{10};

// LIFETIME RULE
// - The owner holds a shared_ptr; the connection's own coroutine holds another, so the
//   object lives until that coroutine ends, whatever the owner does meanwhile.
// - Handlers run only from that coroutine, never from inside a method the owner calls:
//   send(), close(), close_after_drain() and disarm() never re-enter the owner. So an
//   owner may close, forget or replace a connection from inside any handler, the
//   connection's own included, and may erase its map entry in on_closed.
// - on_closed runs exactly once, last, after the socket is closed; after close() or
//   close_after_drain() (or a failure) no on_message follows, only on_closed.
// - Handlers may capture the owner by pointer. An owner that stops or goes away while
//   its connections may still run calls disarm() on each first: from then on no handler
//   runs (the coroutine still ends on its own and frees the object).
class FramedConnection {
 public:
  using Ptr = std::shared_ptr<FramedConnection>;
  using Clock = std::chrono::steady_clock;

  struct Options {
    // Frames queued for the peer; send() beyond this drops the connection. Must be > 0.
    size_t outbox_frames = 0;
    // Bytes queued for the peer (FrameSink::held_bytes); a send() beyond this drops the
    // connection, unless the outbox is empty. 0: no byte limit.
    uint64_t outbox_bytes = 0;
    // Shared with the owner's other connections; none: no memory accounting. With one,
    // reading waits (the socket is not read, the peer is slowed by TCP) while this
    // connection or all of them together hold more than the budget allows (logged with
    // the figures), and goes on once memory is freed.
    std::shared_ptr<MemoryBudget> budget;
    // A peer that sends nothing for longer than this is dropped; none: never.
    std::optional<Clock::duration> idle_timeout;
    // connect() gives up if resolving and connecting take longer; none: the OS decides.
    std::optional<Clock::duration> connect_timeout;
    // Mutual TLS with this context (served: as the server; connect(): as the client);
    // none: plain TCP. Either way the peer's certificate must chain to the context's CA.
    std::shared_ptr<TlsContext> tls;
    // connect() with TLS: the server's certificate must also name the host connected to
    // (an address from a config, not one a peer reported).
    bool tls_check_host = false;
  };
  struct Handlers {
    // connect() only: the socket is up, TLS too if used (and send() reaches the peer).
    std::function<void()> on_connected;
    // Every whole message from the peer, in order, until the connection starts closing.
    std::function<void(Message)> on_message;
    // Why it ended: the first of close()'s reason, close_after_drain()'s reason, a socket
    // error, a protocol error, a failed TLS handshake (with OpenSSL's reason), the idle,
    // connect or handshake timeout, a full outbox (with the figures and the limit).
    std::function<void(const std::string& reason)> on_closed;
    // A batch of frames was written to the socket while more wait behind it: the peer is
    // taking a backlog, as fast as the link allows. (A write into an idle socket says
    // nothing: the kernel takes a few MiB even from a stopped peer.)
    std::function<void()> on_sent;
  };

  // Serves an accepted socket (sets TCP_NODELAY); reading starts at once.
  static Ptr serve(asio::ip::tcp::socket socket, Options options, Handlers handlers);
  // Resolves `address` ("host:port") and connects; on_connected once up, otherwise
  // on_closed with why (an unparsable address, the resolver's or connect's error, the
  // timeout). Frames sent before that are written once connected.
  static Ptr connect(const asio::any_io_executor& executor, std::string address, Options options,
                     Handlers handlers);

  ~FramedConnection();
  FramedConnection(const FramedConnection&) = delete;
  FramedConnection& operator=(const FramedConnection&) = delete;

  // Queues a message for the peer. False if the connection is closing, or if the outbox
  // is full (frames or bytes): the connection then closes with a reason that starts
  // "outbox full:" and names the limit and the figures (on_closed follows later, from
  // the coroutine).
  [[nodiscard]] bool send(const Message& m);
  // Closes the socket now; queued frames are dropped. Idempotent.
  void close(std::string reason);
  // Writes the frames queued so far (e.g. a last message), then closes; sends are
  // refused and incoming messages dropped meanwhile. If the outbox is full, as close().
  void close_after_drain(std::string reason);
  // No handler runs after this returns. Does not close the connection.
  void disarm() { armed_ = false; }

  // Frames longer than this are a protocol error from the next header on (the owner
  // raises it once the peer has negotiated). Within [kFrameHeaderBytes, kMaxFrameBytes].
  void set_frame_bytes_max(uint64_t bytes) { source_.set_frame_bytes_max(bytes); }
  // What the owner holds for this peer (e.g. its queued jobs), counted in its budget.
  void set_owner_bytes(uint64_t bytes);
  // A guaranteed connection is never held back by the others' use of the total budget.
  void set_guaranteed(bool guaranteed);
  // What this connection holds now.
  MemoryBudget::Held held() const;
  // Reading waits for memory now.
  bool reading_paused() const { return pause_reason_.has_value(); }

  // close(), close_after_drain() or a failure happened: nothing more is accepted.
  bool closing() const { return !accepting_; }
  // The socket is or was connected (from the start for serve()).
  bool connected() const { return connected_; }
  // The peer's "host:port" for serve(), the address given to connect().
  const std::string& peer() const { return peer_; }

 private:
  FramedConnection(asio::ip::tcp::socket socket, bool connected, std::string peer, Options options,
                   Handlers handlers);
  static void spawn(const Ptr& self);
  static asio::awaitable<void> run(Ptr self);
  asio::awaitable<void> connect_to(HostPort where);
  asio::awaitable<void> connect_deadline();
  // The TLS handshake under kTlsHandshakeTimeout (Stream::handshake).
  asio::awaitable<void> secure(asio::ssl::stream_base::handshake_type type, std::string host);
  asio::awaitable<void> handshake(asio::ssl::stream_base::handshake_type type, std::string host);
  asio::awaitable<void> handshake_deadline();
  asio::awaitable<void> read_loop();
  asio::awaitable<void> write_loop();
  asio::awaitable<void> watchdog();
  // Returns once the budget lets this connection read another frame (or it stopped).
  asio::awaitable<void> wait_for_memory();
  // Tells the budget what this connection holds now.
  void charge();
  void wake_reader();
  // Ends the connection: records the reason if it is the first, closes the socket and
  // the outbox and cancels the timers so every loop returns.
  void stop(std::string reason);

  Stream stream_;
  std::optional<asio::ip::tcp::resolver> resolver_;  // connect() only
  FrameSource source_;
  FrameSink outbox_;
  asio::steady_timer timer_;      // the connect timeout, then the idle watchdog
  asio::steady_timer read_wake_;  // a reader waiting for memory waits on this
  std::string peer_;
  Options options_;
  Handlers handlers_;
  std::optional<std::string> reason_;  // set once, by whatever ends the connection first
  Clock::time_point last_heard_;
  bool connected_ = false;
  bool secured_ = false;   // the TLS handshake completed (TLS only)
  bool accepting_ = true;  // sends accepted and messages delivered
  bool stopped_ = false;   // socket closed
  bool armed_ = true;      // handlers may run
  // Memory accounting (with Options::budget only).
  uint64_t owner_bytes_ = 0;
  uint64_t charged_ = 0;  // what the budget was last told this connection holds
  bool guaranteed_ = false;
  std::optional<std::string> pause_reason_;  // set while reading waits for memory
  bool paused_by_others_ = false;            // ... and only for the total, not its own use
};

}  // namespace cru::proto
