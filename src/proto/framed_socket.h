// Frames over a TCP socket or TLS stream (asio, C++20 coroutines). A connection owns one
// FrameSource (reading) and one FrameSink (a bounded outbox drained by a write loop), all on the io
// thread that owns the socket. Socket failures throw asio::system_error (caught at the root of the
// connection's task); protocol violations come back as Result errors.
#pragma once

#include <asio/awaitable.hpp>
#include <asio/experimental/channel.hpp>
#include <asio/ip/tcp.hpp>
#include <cstddef>
#include <functional>
#include <vector>

#include "common/result.h"
#include "proto/codec.h"
#include "proto/frame_reader.h"
#include "proto/messages.h"
#include "proto/stream.h"

namespace cru::proto {

class FrameSource {
 public:
  // The stream must outlive this object.
  explicit FrameSource(Stream& stream);
  // The next whole message. Throws asio::system_error on EOF or a socket error; returns
  // kProtocol on a malformed frame (the reader is then poisoned).
  asio::awaitable<Result<Message>> next();

  // See FrameReader::set_frame_bytes_max. Also caps the staging buffer: a peer held to
  // small frames never grows it beyond its first size.
  void set_frame_bytes_max(uint64_t bytes) { reader_.set_frame_bytes_max(bytes); }
  uint64_t frame_bytes_max() const { return reader_.frame_bytes_max(); }
  // Memory held for reading: the staging buffer and the frame being received.
  uint64_t buffered_bytes() const { return staging_.size() + reader_.buffered_bytes(); }

 private:
  Stream& stream_;
  FrameReader reader_;
  std::vector<std::byte> staging_;
  size_t staged_begin_ = 0;
  size_t staged_end_ = 0;
};

class FrameSink {
 public:
  // Capacity in frames; push() waits and try_push() fails beyond it. try_push() also
  // fails when the frame would take queued_bytes() above capacity_bytes (0: no limit),
  // unless nothing is queued (a frame is never refused for its size alone).
  FrameSink(const asio::any_io_executor& executor, size_t capacity_frames,
            uint64_t capacity_bytes = 0);

  // Memory a queued frame holds: its bytes plus the bookkeeping of an empty one, so a
  // flood of tiny frames is counted too.
  static uint64_t held_bytes(const EncodedFrame& f);

  // Queues a message; false when the outbox is full or closed.
  [[nodiscard]] bool try_push(const Message& m);
  // Queues a message, waiting for room. Throws if the sink is closed.
  asio::awaitable<void> push(const Message& m);
  // Writes queued frames in order, batching whatever is queued into one gather write,
  // until close(). Throws on socket errors. The stream must outlive the loop.
  asio::awaitable<void> run(Stream& stream);
  // Makes run() return; frames still queued are dropped. Idempotent.
  void close();
  // Makes run() return after writing the frames queued so far (e.g. a last message before
  // hanging up). If the outbox is full they are dropped, as with close().
  void close_after_drain();
  size_t queued_frames() const { return queued_; }
  // held_bytes() of every frame queued or being written.
  uint64_t queued_bytes() const { return queued_bytes_; }
  // Called after a write completes (with queued_bytes() already lowered), so the owner can
  // let a reader that waited for memory go on.
  void on_written(std::function<void()> f) { on_written_ = std::move(f); }

 private:
  using Channel = asio::experimental::channel<void(asio::error_code, EncodedFrame)>;
  Channel channel_;
  uint64_t capacity_bytes_;
  size_t queued_ = 0;
  uint64_t queued_bytes_ = 0;
  std::function<void()> on_written_;
};

// Sets TCP_NODELAY: frames are whole requests; batching is done by FrameSink.
void tune_socket(asio::ip::tcp::socket& socket);

}  // namespace cru::proto
