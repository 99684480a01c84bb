#include "proto/framed_socket.h"

#include <asio/buffer.hpp>
#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>

#include "common/units.h"

namespace cru::proto {

namespace {
// Small frames are read through a staging buffer (one syscall for many frames); bulk
// data larger than this goes straight into its final buffer.
constexpr size_t kStagingBytes = 256 * kKiB;
constexpr size_t kDirectReadMinBytes = 64 * kKiB;
// One gather write takes at most this many frames / bytes (IOV_MAX is 1024 and each
// frame takes up to two iovecs).
constexpr size_t kMaxBatchFrames = 256;
constexpr size_t kMaxBatchBytes = 8 * kMiB;
}  // namespace

FrameSource::FrameSource(Stream& stream) : stream_(stream), staging_(kStagingBytes) {}

asio::awaitable<Result<Message>> FrameSource::next() {
  for (;;) {
    // Drain what is already staged.
    while (staged_begin_ < staged_end_) {
      auto fed =
          reader_.feed(std::span(staging_).subspan(staged_begin_, staged_end_ - staged_begin_));
      if (!fed) co_return tl::unexpected(fed.error());
      staged_begin_ += fed->consumed;
      if (fed->message) co_return std::move(*fed->message);
    }
    staged_begin_ = staged_end_ = 0;
    auto direct = reader_.direct_span();
    if (direct.size() >= kDirectReadMinBytes) {
      size_t n = co_await stream_.read_some(asio::buffer(direct.data(), direct.size()));
      auto m = reader_.commit_direct(n);
      if (!m) co_return tl::unexpected(m.error());
      if (*m) co_return std::move(**m);
      continue;
    }
    staged_end_ = co_await stream_.read_some(asio::buffer(staging_));
  }
}

FrameSink::FrameSink(const asio::any_io_executor& executor, size_t capacity_frames)
    : channel_(executor, capacity_frames) {}

bool FrameSink::try_push(const Message& m) {
  if (!channel_.try_send(asio::error_code{}, encode(m))) return false;
  ++queued_;
  return true;
}

asio::awaitable<void> FrameSink::push(const Message& m) {
  co_await channel_.async_send(asio::error_code{}, encode(m), asio::use_awaitable);
  ++queued_;
}

asio::awaitable<void> FrameSink::run(Stream& stream) {
  std::vector<EncodedFrame> batch;
  std::vector<asio::const_buffer> iov;
  for (;;) {
    asio::error_code ec;
    EncodedFrame first =
        co_await channel_.async_receive(asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;                  // closed
    if (first.head.empty()) co_return;  // the end marker of close_after_drain()
    batch.clear();
    size_t bytes = first.size();
    batch.push_back(std::move(first));
    bool closed = false;
    while (!closed && batch.size() < kMaxBatchFrames && bytes < kMaxBatchBytes &&
           channel_.try_receive([&](asio::error_code rec, EncodedFrame f) {
             if (rec || f.head.empty()) {
               closed = true;
               return;
             }
             bytes += f.size();
             batch.push_back(std::move(f));
           })) {
    }
    queued_ -= batch.size();
    iov.clear();
    for (const auto& f : batch) {
      iov.emplace_back(f.head.data(), f.head.size());
      if (!f.data.empty()) iov.emplace_back(f.data.data(), f.data.size());
    }
    co_await stream.write_all(iov);
    if (closed) co_return;
  }
}

void FrameSink::close() { channel_.close(); }

void FrameSink::close_after_drain() {
  // An empty frame never comes from encode(): it marks the end.
  if (!channel_.try_send(asio::error_code{}, EncodedFrame{})) close();
}

void tune_socket(asio::ip::tcp::socket& socket) {
  asio::error_code ignored;  // not fatal: only latency
  socket.set_option(asio::ip::tcp::no_delay(true), ignored);
}

}  // namespace cru::proto
