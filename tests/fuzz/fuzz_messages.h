// Builds protocol messages from fuzz input for the stateful fuzzers (fuzz_downstairs.cc,
// fuzz_upstairs.cc). Every field of every message is filled from the input, walking the
// same CRU_FIELDS lists the codec walks, so a new field is fuzzed without changing this
// file. Integers are mostly small (so ranges, ids and counts land near the region's
// geometry and reach deep states) and sometimes arbitrary. Messages built here are NOT
// checked against the protocol limits: the cores must refuse what breaks them.
#pragma once

#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "common/bytes.h"
#include "proto/codec.h"
#include "proto/integrity.h"
#include "proto/messages.h"

namespace cru::fuzz {

// The region both stateful fuzzers use: small, so every block, extent and edge is a few
// events away.
inline constexpr uint32_t kBlockSize = 512;
inline constexpr uint64_t kExtentBlocks = 8;
inline constexpr uint32_t kExtentCount = 4;
// Bounds one input's run (libFuzzer also caps the input's length).
inline constexpr int kMaxEvents = 4000;
// Raw frames fed through the decoder: long enough for any message of a few blocks.
inline constexpr size_t kMaxRawFrameBytes = 4096;

// Few elements per vector and few bytes per string: enough to hit every check, small
// enough that one input runs thousands of events.
inline constexpr size_t kMaxFuzzElements = 8;
inline constexpr size_t kMaxFuzzStringBytes = 24;
// Bulk data: at most this many bytes (a few blocks), rarely a byte count that is no
// multiple of any block size.
inline constexpr size_t kMaxFuzzDataBytes = 8 * 512;

class MessageFuzzer {
 public:
  explicit MessageFuzzer(FuzzedDataProvider& in) : in_(in) {}

  // Small most of the time, near a boundary sometimes, anything otherwise.
  template <typename Int>
  Int integer() {
    switch (in_.ConsumeIntegralInRange<int>(0, 7)) {
      case 0:
        return in_.ConsumeIntegral<Int>();
      case 1:
        return static_cast<Int>(std::numeric_limits<Int>::max() -
                                in_.ConsumeIntegralInRange<Int>(0, 2));
      default:
        return in_.ConsumeIntegralInRange<Int>(0, 40);
    }
  }

  template <typename T>
  void fill(T& v) {
    if constexpr (std::is_same_v<T, bool>) {
      v = in_.ConsumeBool();
    } else if constexpr (std::is_same_v<T, ErrorCode>) {
      v = static_cast<ErrorCode>(in_.ConsumeIntegralInRange<uint16_t>(0, kErrorCodeMax));
    } else if constexpr (std::is_integral_v<T>) {
      v = integer<T>();
    } else if constexpr (std::is_same_v<T, ClientId>) {
      v.value = in_.ConsumeIntegralInRange<uint8_t>(0, kClientCount - 1);
    } else if constexpr (requires {
                           typename T::value_type;
                           v.value;
                         }) {
      v.value = integer<typename T::value_type>();  // StrongId
    } else if constexpr (std::is_same_v<T, Uuid>) {
      // One of two ids, so a peer's ids sometimes match what the core expects.
      v = Uuid{};
      v.bytes[0] = in_.ConsumeIntegralInRange<uint8_t>(0, 1);
    } else if constexpr (requires {
                           std::tuple_size<T>::value;
                           v.data();
                         }) {
      for (auto& b : v) b = in_.ConsumeIntegral<uint8_t>();  // nonce, tag
    } else if constexpr (std::is_same_v<T, std::string>) {
      v = in_.ConsumeRandomLengthString(kMaxFuzzStringBytes);
    } else if constexpr (requires {
                           v.has_value();
                           v.reset();
                         }) {
      if (in_.ConsumeBool())
        fill(v.emplace());
      else
        v.reset();
    } else if constexpr (requires { v.push_back(std::declval<typename T::value_type>()); }) {
      v.resize(in_.ConsumeIntegralInRange<size_t>(0, kMaxFuzzElements));
      for (auto& e : v) fill(e);
    } else if constexpr (requires { v.fields(); }) {
      std::apply([this](auto&... f) { (fill(f), ...); }, v.fields());
    } else {
      static_assert(sizeof(T) == 0, "no fuzz filler for this type");
    }
  }

  Bytes data(size_t bytes) {
    std::vector<uint8_t> raw = in_.ConsumeBytes<uint8_t>(bytes);
    raw.resize(bytes);  // zero-padded when the input runs out
    return Bytes::copy_of(std::as_bytes(std::span(raw)));
  }

  // Any message, every field from the input. Bulk data is a whole number of `block_size`
  // blocks, one per context where there are contexts, or any length sometimes.
  proto::Message any(uint32_t block_size) {
    auto m = make(in_.ConsumeIntegralInRange<size_t>(0, std::variant_size_v<proto::Message> - 1));
    std::visit(
        [&](auto& v) {
          fill(v);
          if constexpr (requires { v.data; }) {
            size_t n = 0;
            if constexpr (requires { v.contexts; }) n = v.contexts.size();
            size_t bytes = in_.ConsumeIntegralInRange<int>(0, 15) == 0
                               ? in_.ConsumeIntegralInRange<size_t>(0, kMaxFuzzDataBytes)
                               : n * block_size;
            v.data = data(std::min(bytes, kMaxFuzzDataBytes * 8));
          }
        },
        m);
    return m;
  }

  // Contexts that match `data` (so writes and reads get past hash checks to the disk).
  static std::vector<proto::BlockContext> contexts_for(std::span<const std::byte> data,
                                                       uint32_t block_size, bool encrypted) {
    std::vector<proto::BlockContext> out;
    for (size_t off = 0; off + block_size <= data.size(); off += block_size) {
      proto::BlockContext c;
      if (encrypted) c.encryption.emplace();
      c.hash = proto::block_hash(c.encryption, data.subspan(off, block_size));
      out.push_back(c);
    }
    return out;
  }

  // Bytes from the input through the frame decoder, as a shell would receive them:
  // nullopt unless they are one valid frame.
  std::optional<proto::Message> raw_frame() {
    std::vector<uint8_t> raw =
        in_.ConsumeBytes<uint8_t>(in_.ConsumeIntegralInRange<size_t>(0, kMaxRawFrameBytes));
    auto m = proto::decode_frame(std::as_bytes(std::span(raw)));
    if (!m) return std::nullopt;
    return std::move(*m);
  }

 private:
  template <size_t I = 0>
  static proto::Message make(size_t index) {
    if constexpr (I + 1 == std::variant_size_v<proto::Message>) {
      return proto::Message(std::in_place_index<I>);
    } else {
      if (index == I) return proto::Message(std::in_place_index<I>);
      return make<I + 1>(index);
    }
  }

  FuzzedDataProvider& in_;
};

// The shell encodes every message a core sends; encode() asserts that the message keeps
// the protocol limits. Doing it here makes "a core sent a frame it could not encode" a
// fuzzer crash, as it is a crash in the real process.
inline void encode_as_the_shell_would(const proto::Message& m) {
  proto::EncodedFrame f = proto::encode(m);
  static_cast<void>(f);
}

}  // namespace cru::fuzz
