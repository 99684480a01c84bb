// libFuzzer target for the protocol decoder (built by `make fuzz` with clang and
// ASan/UBSan). Each input is decoded twice: as one frame by decode_frame(), and as a
// stream by a FrameReader fed in pieces (some through direct_span()/commit_direct())
// whose sizes come from the input's own bytes. Every decoded message must re-encode to
// exactly the bytes it came from (the encoding is canonical) and decode back to itself;
// both paths must agree. Any disagreement aborts, which libFuzzer reports as a crash.
// No logging: spdlog is linked but would only slow the fuzzer down.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "proto/codec.h"
#include "proto/frame_reader.h"
#include "proto/messages.h"

namespace {

using cru::proto::FrameReader;
using cru::proto::Message;

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "fuzz_decode: %s\n", what);
  std::abort();
}

// `m` was decoded from `frame`: re-encoding gives the same bytes, which decode to `m`.
void check_round_trip(const Message& m, std::span<const std::byte> frame) {
  std::vector<std::byte> again = cru::proto::encode_flat(m);
  if (again.size() != frame.size() || !std::equal(again.begin(), again.end(), frame.begin()))
    die("re-encoding a decoded message changed its bytes");
  auto d = cru::proto::decode_frame(again);
  if (!d) die("a re-encoded message does not decode");
  if (!(*d == m)) die("decode(encode(m)) != m");
}

// Piece sizes and the choice of feed() or the direct path, read backwards from the
// input's last byte so they vary with the input but never need extra bytes.
class Splitter {
 public:
  explicit Splitter(std::span<const std::byte> input) : input_(input) {}
  size_t next_size() { return 1 + byte(); }
  bool next_direct() { return (byte() & 1) != 0; }

 private:
  uint8_t byte() {
    if (input_.empty()) return 0;
    uint8_t b = std::to_integer<uint8_t>(input_[input_.size() - 1 - (i_ % input_.size())]);
    ++i_;
    return b;
  }
  std::span<const std::byte> input_;
  size_t i_ = 0;
};

struct Decoded {
  Message message;
  size_t begin = 0;  // the frame's bytes in the input
  size_t end = 0;
};

// Reads the whole input as a stream of frames; stops at the first error.
std::vector<Decoded> read_stream(std::span<const std::byte> input, bool& failed) {
  FrameReader reader;
  Splitter split(input);
  std::vector<Decoded> out;
  size_t pos = 0, frame_begin = 0;
  failed = false;
  while (pos < input.size()) {
    size_t n = std::min(split.next_size(), input.size() - pos);
    std::optional<Message> message;
    auto direct = reader.direct_span();
    if (!direct.empty() && split.next_direct()) {
      n = std::min(n, direct.size());
      std::memcpy(direct.data(), input.data() + pos, n);
      auto m = reader.commit_direct(n);
      if (!m) {
        failed = true;
        return out;
      }
      pos += n;
      message = std::move(*m);
    } else {
      auto fed = reader.feed(input.subspan(pos, n));
      if (!fed) {
        failed = true;
        return out;
      }
      if (fed->consumed == 0 || fed->consumed > n) die("feed() consumed a wrong byte count");
      pos += fed->consumed;
      message = std::move(fed->message);
    }
    if (message) {
      if (!reader.idle()) die("reader not idle after a message");
      out.push_back(Decoded{std::move(*message), frame_begin, pos});
      frame_begin = pos;
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto input = std::as_bytes(std::span(data, size));

  auto whole = cru::proto::decode_frame(input);
  if (whole) {
    check_round_trip(*whole, input);
  } else if (whole.error().code != cru::ErrorCode::kProtocol || whole.error().message.empty()) {
    die("decode_frame failed without a named protocol error");
  }

  bool failed = false;
  std::vector<Decoded> stream = read_stream(input, failed);
  for (const auto& d : stream) {
    auto frame = input.subspan(d.begin, d.end - d.begin);
    check_round_trip(d.message, frame);
    auto alone = cru::proto::decode_frame(frame);
    if (!alone || !(*alone == d.message)) die("FrameReader and decode_frame disagree on a frame");
  }
  if (whole) {
    // One valid frame: the reader must yield exactly that message.
    if (failed || stream.size() != 1 || !(stream[0].message == *whole))
      die("decode_frame accepted a frame the reader did not yield alone");
  }
  return 0;
}
