#include "proto/connection.h"

#include <fmt/format.h>

#include <asio/co_spawn.hpp>
#include <asio/connect.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/post.hpp>
#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>
#include <utility>

#include "common/assert.h"
#include "common/log.h"
#include "common/units.h"
#include "proto/tls.h"

namespace cru::proto {

using asio::ip::tcp;
using namespace asio::experimental::awaitable_operators;

namespace {

std::string endpoint_string(const tcp::socket& s) {
  asio::error_code ec;
  auto ep = s.remote_endpoint(ec);
  return ec ? std::string("?") : fmt::format("{}:{}", ep.address().to_string(), ep.port());
}

std::string describe(FramedConnection::Clock::duration d) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  return ms % 1000 == 0 ? fmt::format("{} s", ms / 1000) : fmt::format("{} ms", ms);
}

}  // namespace

FramedConnection::FramedConnection(tcp::socket socket, bool connected, std::string peer,
                                   Options options, Handlers handlers)
    : stream_(std::move(socket)),
      source_(stream_),
      outbox_(stream_.socket().get_executor(), options.outbox_frames, options.outbox_bytes),
      timer_(stream_.socket().get_executor()),
      read_wake_(stream_.socket().get_executor()),
      peer_(std::move(peer)),
      options_(std::move(options)),
      handlers_(std::move(handlers)),
      last_heard_(Clock::now()),
      connected_(connected) {
  CRU_ASSERT(options_.outbox_frames > 0);
  if (options_.tls) stream_.use_tls(*options_.tls);
  outbox_.on_written([this] {
    // Written frames free memory another connection may be waiting for.
    if (options_.budget) charge();
    if (armed_ && handlers_.on_sent && outbox_.queued_frames() > 0) handlers_.on_sent();
  });
}

FramedConnection::~FramedConnection() = default;

FramedConnection::Ptr FramedConnection::serve(tcp::socket socket, Options options,
                                              Handlers handlers) {
  tune_socket(socket);
  std::string peer = endpoint_string(socket);
  Ptr self(new FramedConnection(std::move(socket), true, std::move(peer), std::move(options),
                                std::move(handlers)));
  spawn(self);
  return self;
}

FramedConnection::Ptr FramedConnection::connect(const asio::any_io_executor& executor,
                                                std::string address, Options options,
                                                Handlers handlers) {
  Ptr self(new FramedConnection(tcp::socket(executor), false, std::move(address),
                                std::move(options), std::move(handlers)));
  self->resolver_.emplace(executor);
  spawn(self);
  return self;
}

void FramedConnection::spawn(const Ptr& self) {
  asio::co_spawn(self->stream_.socket().get_executor(), run(self), asio::detached);
}

bool FramedConnection::send(const Message& m) {
  if (!accepting_) return false;
  if (outbox_.try_push(m)) {
    charge();
    return true;
  }
  if (outbox_.queued_frames() >= options_.outbox_frames)
    close(
        fmt::format("outbox full: {} frames queued, the limit is {}: the peer does not read "
                    "its replies",
                    outbox_.queued_frames(), options_.outbox_frames));
  else
    close(fmt::format(
        "outbox full: {} queued and a {} frame would exceed the outbox limit of "
        "{}: the peer does not read its replies",
        format_size(outbox_.queued_bytes()), describe(m), format_size(options_.outbox_bytes)));
  return false;
}

void FramedConnection::set_owner_bytes(uint64_t bytes) {
  owner_bytes_ = bytes;
  charge();
}

void FramedConnection::set_guaranteed(bool guaranteed) {
  if (guaranteed_ == guaranteed) return;
  // Its bytes move to the other pool.
  if (options_.budget) {
    options_.budget->update(charged_, 0, guaranteed_);
    options_.budget->update(0, charged_, guaranteed);
  }
  guaranteed_ = guaranteed;
  if (guaranteed) wake_reader();  // it may go on now
}

MemoryBudget::Held FramedConnection::held() const {
  return {source_.buffered_bytes(), outbox_.queued_bytes(), owner_bytes_};
}

void FramedConnection::charge() {
  if (!options_.budget) return;
  uint64_t now = stopped_ ? 0 : held().sum();
  uint64_t before = std::exchange(charged_, now);
  options_.budget->update(before, now, guaranteed_);
  // Its own memory went down: the budget woke the waiters, this reader included.
}

void FramedConnection::wake_reader() { read_wake_.cancel(); }

void FramedConnection::close(std::string reason) { stop(std::move(reason)); }

void FramedConnection::close_after_drain(std::string reason) {
  if (!accepting_) return;
  accepting_ = false;
  reason_ = std::move(reason);
  // The write loop ends after the queued frames; its end stops the rest.
  outbox_.close_after_drain();
}

void FramedConnection::stop(std::string reason) {
  if (!reason_) reason_ = std::move(reason);
  accepting_ = false;
  if (stopped_) return;
  stopped_ = true;
  outbox_.close();
  asio::error_code ignored;
  stream_.socket().close(ignored);
  timer_.cancel();
  read_wake_.cancel();
  charge();  // holds nothing from now on
  if (resolver_) resolver_->cancel();
}

// The root: owns `self` (the object lives until this returns), calls the handlers and
// catches what the branches do not.
asio::awaitable<void> FramedConnection::run(Ptr self) {
  // co_spawn runs a coroutine inline up to its first suspension when called on the io
  // thread; starting from the queue keeps every handler out of serve() and connect().
  co_await asio::post(self->stream_.socket().get_executor(), asio::use_awaitable);
  try {
    if (!self->connected_ && !self->stopped_) {
      auto where = parse_address(self->peer_);
      if (!where) {
        self->stop(where.error().message);
      } else {
        // The name to check in the server's certificate; empty: the CA alone decides.
        std::string host = self->options_.tls_check_host ? where->host : "";
        if (self->options_.connect_timeout) {
          self->timer_.expires_after(*self->options_.connect_timeout);
          co_await (self->connect_to(std::move(*where)) || self->connect_deadline());
        } else {
          co_await self->connect_to(std::move(*where));
        }
        if (self->stream_.tls() && !self->stopped_)
          co_await self->secure(asio::ssl::stream_base::client, std::move(host));
      }
      if (!self->stopped_ && self->accepting_ && self->armed_ && self->handlers_.on_connected)
        self->handlers_.on_connected();
    } else if (self->stream_.tls() && !self->stopped_) {
      co_await self->secure(asio::ssl::stream_base::server, "");
    }
    // asio 1.22's || waits for one branch to *succeed*; a branch that threw would leave
    // the others running. So each branch catches its own end, calls stop() (which makes
    // the others return too) and returns normally.
    if (!self->stopped_) {
      if (self->options_.idle_timeout)
        co_await (self->read_loop() || self->write_loop() || self->watchdog());
      else
        co_await (self->read_loop() || self->write_loop());
    }
  } catch (const std::exception& e) {
    self->stop(e.what());
  }
  self->stop("closed");
  if (self->armed_ && self->handlers_.on_closed) self->handlers_.on_closed(*self->reason_);
  // Whatever the handlers captured is released now, not when the owner lets go.
  self->handlers_ = Handlers{};
}

asio::awaitable<void> FramedConnection::connect_to(HostPort where) {
  try {
    auto endpoints =
        co_await resolver_->async_resolve(where.host, where.port_string(), asio::use_awaitable);
    // async_connect would reopen a socket that stop() closed meanwhile.
    if (stopped_) co_return;
    co_await asio::async_connect(stream_.socket(), endpoints, asio::use_awaitable);
  } catch (const std::exception& e) {
    stop(e.what());
    co_return;
  }
  // A success queued before stop() ran (e.g. the connect deadline fired in the same turn).
  if (stopped_) co_return;
  connected_ = true;
  last_heard_ = Clock::now();
  tune_socket(stream_.socket());
  timer_.cancel();
}

asio::awaitable<void> FramedConnection::connect_deadline() {
  asio::error_code ec;
  co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  // Closing the socket fails the connect even if it ignores the cancellation.
  if (!ec && !connected_) stop("timed out after " + describe(*options_.connect_timeout));
}

// Both ends verify: the server requires a certificate from the CA, the client checks the
// server's against the CA and the host it connected to. Nothing is read or written as a
// frame before this succeeds, so a peer without the CA's certificate never reaches the core.
asio::awaitable<void> FramedConnection::secure(asio::ssl::stream_base::handshake_type type,
                                               std::string host) {
  timer_.expires_after(kTlsHandshakeTimeout);
  co_await (handshake(type, std::move(host)) || handshake_deadline());
}

asio::awaitable<void> FramedConnection::handshake(asio::ssl::stream_base::handshake_type type,
                                                  std::string host) {
  try {
    co_await stream_.handshake(type, host);
  } catch (const std::exception& e) {
    stop(e.what());
    co_return;
  }
  if (stopped_) co_return;
  secured_ = true;
  last_heard_ = Clock::now();
  timer_.cancel();
}

asio::awaitable<void> FramedConnection::handshake_deadline() {
  asio::error_code ec;
  co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  if (!ec && !secured_) stop("TLS handshake timed out after " + describe(kTlsHandshakeTimeout));
}

asio::awaitable<void> FramedConnection::read_loop() {
  try {
    for (;;) {
      co_await wait_for_memory();
      if (stopped_) co_return;
      auto m = co_await source_.next();
      if (!m) {
        stop("protocol error: " + m.error().message);
        co_return;
      }
      // The frame's buffers moved into the message: the owner counts what it keeps.
      charge();
      last_heard_ = Clock::now();
      // While draining (close_after_drain) the peer's messages are read and dropped.
      if (accepting_ && armed_ && handlers_.on_message) handlers_.on_message(std::move(*m));
    }
  } catch (const std::exception& e) {
    stop(e.what());
  }
}

asio::awaitable<void> FramedConnection::write_loop() {
  try {
    co_await outbox_.run(stream_);
  } catch (const std::exception& e) {
    stop(std::string("write failed: ") + e.what());
    co_return;
  }
  stop("closed");  // the outbox was closed or drained: the reason is already set
}

asio::awaitable<void> FramedConnection::watchdog() {
  const Clock::duration limit = *options_.idle_timeout;
  while (!stopped_) {
    timer_.expires_at(last_heard_ + limit);
    asio::error_code ec;
    co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (stopped_ || ec) co_return;
    // Held back by the others' memory, not its own doing: its silence is ours.
    if (paused_by_others_) last_heard_ = Clock::now();
    if (Clock::now() - last_heard_ >= limit) {
      // A peer over its own budget is not read, so it falls silent here: say why.
      stop(pause_reason_ ? fmt::format("silent for more than {} while not read: {}",
                                       describe(limit), *pause_reason_)
                         : "silent for more than " + describe(limit));
      co_return;
    }
  }
}

asio::awaitable<void> FramedConnection::wait_for_memory() {
  if (!options_.budget) co_return;
  charge();
  auto why = options_.budget->over(held(), guaranteed_, source_.frame_bytes_max());
  if (!why) co_return;
  const auto paused_at = Clock::now();
  log::warn("connection from {}: reading paused: {}", peer_, why->why);
  while (why && !stopped_) {
    pause_reason_ = std::move(why->why);
    paused_by_others_ = !why->own;
    // Woken when any connection frees memory, by stop(), or by set_guaranteed().
    auto waiter = options_.budget->wait([this] { wake_reader(); });
    read_wake_.expires_at(Clock::time_point::max());
    asio::error_code ignored;
    co_await read_wake_.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    options_.budget->cancel(waiter);
    why = options_.budget->over(held(), guaranteed_, source_.frame_bytes_max());
  }
  pause_reason_.reset();
  paused_by_others_ = false;
  if (!stopped_)
    log::info("connection from {}: reading resumed after {}", peer_,
              describe(Clock::now() - paused_at));
}

}  // namespace cru::proto
