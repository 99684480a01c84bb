#include "proto/framed_socket.h"

#include <asio/buffer.hpp>
#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>

#include "common/units.h"

namespace cru::proto {

namespace {
// Small frames are read through a staging buffer (one syscall for many frames); bulk
// data larger than this goes straight into its final buffer. The buffer starts small (so
// a thousand idle or negotiating connections cost little) and doubles whenever one read
// fills it, up to the largest size, for a peer that is streaming jobs.
constexpr size_t kStagingBytesFirst = 8 * kKiB;
constexpr size_t kStagingBytes = 256 * kKiB;
// What an empty queued frame costs besides its bytes: the EncodedFrame, its head
// allocation and the channel's slot, rounded up.
constexpr uint64_t kFrameOverheadBytes = 128;
constexpr size_t kDirectReadMinBytes = 64 * kKiB;
// A direct read waits for this much of the payload (or all that is left) before the
// socket is reported readable: a 1 MiB frame then costs four wake-ups, not one per
// 64 KiB loopback packet (wake-ups of another CPU are what TCP costs most here).
constexpr size_t kDirectReadWakeBytes = 256 * kKiB;
// One gather write takes at most this many frames / bytes (IOV_MAX is 1024 and each
// frame takes up to two iovecs).
constexpr size_t kMaxBatchFrames = 256;
constexpr size_t kMaxBatchBytes = 8 * kMiB;
}  // namespace

FrameSource::FrameSource(Stream& stream) : stream_(stream), staging_(kStagingBytesFirst) {}

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
    auto direct = reader_.direct_span();
    if (direct.size() >= kDirectReadMinBytes) {
      stream_.expect_bytes(std::min(direct.size(), kDirectReadWakeBytes));
      size_t n = co_await stream_.read_some(asio::buffer(direct.data(), direct.size()));
      auto m = reader_.commit_direct(n);
      if (!m) co_return tl::unexpected(m.error());
      if (*m) co_return std::move(**m);
      continue;
    }
    stream_.expect_bytes(1);  // the next frame's size is not known yet
    // Grown only between reads, when nothing is staged, and only for a peer that may
    // send frames larger than the buffer.
    if (staged_end_ == staging_.size() && staging_.size() < kStagingBytes &&
        reader_.frame_bytes_max() > staging_.size())
      staging_.resize(staging_.size() * 2);
    staged_begin_ = 0;
    staged_end_ = co_await stream_.read_some(asio::buffer(staging_));
  }
}

FrameSink::FrameSink(const asio::any_io_executor& executor, size_t capacity_frames,
                     uint64_t capacity_bytes)
    : channel_(executor, capacity_frames), capacity_bytes_(capacity_bytes) {}

uint64_t FrameSink::held_bytes(const EncodedFrame& f) { return f.size() + kFrameOverheadBytes; }

bool FrameSink::try_push(const Message& m) {
  EncodedFrame f = encode(m);
  uint64_t bytes = held_bytes(f);
  if (capacity_bytes_ && queued_bytes_ > 0 && queued_bytes_ + bytes > capacity_bytes_) return false;
  if (!channel_.try_send(asio::error_code{}, std::move(f))) return false;
  ++queued_;
  queued_bytes_ += bytes;
  return true;
}

asio::awaitable<void> FrameSink::push(const Message& m) {
  EncodedFrame f = encode(m);
  uint64_t bytes = held_bytes(f);
  co_await channel_.async_send(asio::error_code{}, std::move(f), asio::use_awaitable);
  ++queued_;
  queued_bytes_ += bytes;
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
    uint64_t batch_bytes = 0;
    for (const auto& f : batch) {
      iov.emplace_back(f.head.data(), f.head.size());
      if (!f.data.empty()) iov.emplace_back(f.data.data(), f.data.size());
      batch_bytes += held_bytes(f);
    }
    co_await stream.write_all(iov);
    // Counted until written: the batch is in memory until now.
    queued_bytes_ -= batch_bytes;
    batch.clear();
    if (on_written_) on_written_();
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
