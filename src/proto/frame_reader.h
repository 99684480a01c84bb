// Incremental frame reader: accepts a byte stream in arbitrary pieces and yields whole
// messages. Owned by one connection, used from one thread. Bulk data is received
// straight into the buffer that becomes the message's data: direct_span() exposes the
// unfilled part so a socket can read into it without a staging copy. After any error the
// reader is poisoned and the connection must be closed.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <span>
#include <vector>

#include "common/bytes.h"
#include "common/result.h"
#include "proto/codec.h"
#include "proto/messages.h"

namespace cru::proto {

class FrameReader {
 public:
  struct FeedResult {
    size_t consumed = 0;             // bytes taken from the input
    std::optional<Message> message;  // set when a frame completed
  };

  // Consumes bytes from `in` up to the end of the current frame. Call again with the
  // rest of the input until consumed covers it all.
  Result<FeedResult> feed(std::span<const std::byte> in);

  // While receiving bulk data: the unfilled part of the data buffer (empty otherwise).
  std::span<std::byte> direct_span();
  // Records that n bytes were written into direct_span().
  Result<std::optional<Message>> commit_direct(size_t n);

  // True between frames (no partial frame buffered).
  bool idle() const { return state_ == State::kHeader && header_filled_ == 0; }

  // Frames longer than this (at most kMaxFrameBytes) are a protocol error from the next
  // header on, before anything is allocated for them: a peer that may only negotiate
  // cannot make us hold a 64 MiB frame.
  void set_frame_bytes_max(uint64_t bytes);
  uint64_t frame_bytes_max() const { return frame_bytes_max_; }
  // Bytes allocated for the frame being received (metadata and bulk data buffers).
  uint64_t buffered_bytes() const { return meta_.capacity() + data_.size(); }

 private:
  enum class State { kHeader, kMeta, kData, kFailed };

  Result<std::optional<Message>> advance();
  Result<std::optional<Message>> finish();
  template <typename T>
  tl::unexpected<Error> poison(const Result<T>& r) {
    state_ = State::kFailed;
    return tl::unexpected(r.error());
  }

  State state_ = State::kHeader;
  uint64_t frame_bytes_max_ = kMaxFrameBytes;
  std::array<std::byte, kFrameHeaderBytes> header_bytes_{};
  size_t header_filled_ = 0;
  FrameHeader header_;
  std::vector<std::byte> meta_;
  size_t meta_filled_ = 0;
  ByteBuffer data_;
  size_t data_filled_ = 0;
};

}  // namespace cru::proto
