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
    : socket_(std::move(socket)),
      outbox_(socket_.get_executor(), options.outbox_frames),
      timer_(socket_.get_executor()),
      peer_(std::move(peer)),
      options_(options),
      handlers_(std::move(handlers)),
      last_heard_(Clock::now()),
      connected_(connected) {
  CRU_ASSERT(options_.outbox_frames > 0);
}

FramedConnection::~FramedConnection() = default;

FramedConnection::Ptr FramedConnection::serve(tcp::socket socket, Options options,
                                              Handlers handlers) {
  tune_socket(socket);
  std::string peer = endpoint_string(socket);
  Ptr self(
      new FramedConnection(std::move(socket), true, std::move(peer), options, std::move(handlers)));
  spawn(self);
  return self;
}

FramedConnection::Ptr FramedConnection::connect(const asio::any_io_executor& executor,
                                                std::string address, Options options,
                                                Handlers handlers) {
  Ptr self(new FramedConnection(tcp::socket(executor), false, std::move(address), options,
                                std::move(handlers)));
  self->resolver_.emplace(executor);
  spawn(self);
  return self;
}

void FramedConnection::spawn(const Ptr& self) {
  asio::co_spawn(self->socket_.get_executor(), run(self), asio::detached);
}

bool FramedConnection::send(const Message& m) {
  if (!accepting_) return false;
  if (outbox_.try_push(m)) return true;
  close("outbox full: the peer does not read its replies");
  return false;
}

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
  socket_.close(ignored);
  timer_.cancel();
  if (resolver_) resolver_->cancel();
}

// The root: owns `self` (the object lives until this returns), calls the handlers and
// catches what the branches do not.
asio::awaitable<void> FramedConnection::run(Ptr self) {
  // co_spawn runs a coroutine inline up to its first suspension when called on the io
  // thread; starting from the queue keeps every handler out of serve() and connect().
  co_await asio::post(self->socket_.get_executor(), asio::use_awaitable);
  try {
    if (!self->connected_ && !self->stopped_) {
      auto where = parse_address(self->peer_);
      if (!where) {
        self->stop(where.error().message);
      } else if (self->options_.connect_timeout) {
        self->timer_.expires_after(*self->options_.connect_timeout);
        co_await (self->connect_to(std::move(*where)) || self->connect_deadline());
      } else {
        co_await self->connect_to(std::move(*where));
      }
      if (!self->stopped_ && self->accepting_ && self->armed_ && self->handlers_.on_connected)
        self->handlers_.on_connected();
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
    co_await asio::async_connect(socket_, endpoints, asio::use_awaitable);
  } catch (const std::exception& e) {
    stop(e.what());
    co_return;
  }
  // A success queued before stop() ran (e.g. the connect deadline fired in the same turn).
  if (stopped_) co_return;
  connected_ = true;
  last_heard_ = Clock::now();
  tune_socket(socket_);
  timer_.cancel();
}

asio::awaitable<void> FramedConnection::connect_deadline() {
  asio::error_code ec;
  co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  // Closing the socket fails the connect even if it ignores the cancellation.
  if (!ec && !connected_) stop("timed out after " + describe(*options_.connect_timeout));
}

asio::awaitable<void> FramedConnection::read_loop() {
  FrameSource source(socket_);
  try {
    for (;;) {
      auto m = co_await source.next();
      if (!m) {
        stop("protocol error: " + m.error().message);
        co_return;
      }
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
    co_await outbox_.run(socket_);
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
    if (Clock::now() - last_heard_ >= limit) {
      stop("silent for more than " + describe(limit));
      co_return;
    }
  }
}

}  // namespace cru::proto
