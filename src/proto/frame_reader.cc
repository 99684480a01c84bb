#include "proto/frame_reader.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace cru::proto {

namespace {
// A metadata buffer up to this size is kept for the next frame (most frames' metadata is
// a few hundred bytes; a write of 256 blocks carries about 12 KiB of contexts).
constexpr size_t kKeptMetaBytes = 64 * kKiB;
}  // namespace

void FrameReader::set_frame_bytes_max(uint64_t bytes) {
  CRU_ASSERT(bytes >= kFrameHeaderBytes && bytes <= kMaxFrameBytes);
  frame_bytes_max_ = bytes;
}

Result<FrameReader::FeedResult> FrameReader::feed(std::span<const std::byte> in) {
  FeedResult out;
  while (out.consumed < in.size() && !out.message) {
    auto rest = in.subspan(out.consumed);
    size_t n = 0;
    switch (state_) {
      case State::kFailed:
        return fail(ErrorCode::kProtocol, "frame reader used after a protocol error");
      case State::kHeader:
        n = std::min(rest.size(), header_bytes_.size() - header_filled_);
        std::memcpy(header_bytes_.data() + header_filled_, rest.data(), n);
        header_filled_ += n;
        break;
      case State::kMeta:
        n = std::min(rest.size(), meta_.size() - meta_filled_);
        std::memcpy(meta_.data() + meta_filled_, rest.data(), n);
        meta_filled_ += n;
        break;
      case State::kData:
        n = std::min(rest.size(), data_.size() - data_filled_);
        std::memcpy(data_.data() + data_filled_, rest.data(), n);
        data_filled_ += n;
        break;
    }
    out.consumed += n;
    CRU_TRY_ASSIGN(out.message, advance());
  }
  return out;
}

std::span<std::byte> FrameReader::direct_span() {
  if (state_ != State::kData) return {};
  return data_.span().subspan(data_filled_);
}

Result<std::optional<Message>> FrameReader::commit_direct(size_t n) {
  CRU_ASSERT(state_ == State::kData && n <= data_.size() - data_filled_);
  data_filled_ += n;
  return advance();
}

// Moves through as many states as the buffered bytes allow; returns a message when the
// frame is complete. States with nothing to read (empty metadata or data) are passed
// through immediately.
Result<std::optional<Message>> FrameReader::advance() {
  for (;;) {
    switch (state_) {
      case State::kFailed:
        return fail(ErrorCode::kProtocol, "frame reader used after a protocol error");
      case State::kHeader: {
        if (header_filled_ < header_bytes_.size()) return std::nullopt;
        auto h = parse_header(header_bytes_);
        if (!h) return poison(h);
        if (h->frame_bytes > frame_bytes_max_) {
          state_ = State::kFailed;
          return fail(ErrorCode::kProtocol,
                      fmt::format("frame of {} bytes (tag {}) is over this connection's limit of "
                                  "{} bytes at this stage",
                                  h->frame_bytes, h->tag, frame_bytes_max_));
        }
        header_ = *h;
        meta_.assign(header_.meta_bytes, std::byte{0});
        meta_filled_ = 0;
        state_ = State::kMeta;
        break;
      }
      case State::kMeta:
        if (meta_filled_ < meta_.size()) return std::nullopt;
        // Allocated only now, once the header has passed its checks; never more than
        // the frame's own length.
        data_ = ByteBuffer(header_.data_bytes());
        data_filled_ = 0;
        state_ = State::kData;
        break;
      case State::kData:
        if (data_filled_ < data_.size()) return std::nullopt;
        return finish();
    }
  }
}

Result<std::optional<Message>> FrameReader::finish() {
  auto m = decode(header_, meta_, Bytes(std::move(data_)));
  if (!m) return poison(m);
  state_ = State::kHeader;
  header_filled_ = 0;
  // Metadata buffers are reused between frames, except a large one (a big dependency list
  // or extent list), which would otherwise stay allocated for the connection's life.
  if (meta_.capacity() > kKeptMetaBytes)
    std::vector<std::byte>().swap(meta_);
  else
    meta_.clear();
  return std::optional<Message>(std::move(*m));
}

}  // namespace cru::proto
