// Codec tests: every message round-trips through encode_flat + decode_frame and through
// encode + FrameReader; the wire layout of the negotiation messages is frozen; every
// malformed frame is refused with kProtocol and a message naming the problem.
#include "proto/codec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "proto/frame_reader.h"
#include "proto/limits.h"
#include "proto/messages.h"

// ---- allocation probe ------------------------------------------------------------------
// The decoder must never allocate more than the frame's own length. Replacing the global
// operator new lets a test measure the largest single allocation made while decoding.
namespace {
std::atomic<size_t> g_largest_allocation{0};
}  // namespace

void* operator new(std::size_t size) {
  size_t seen = g_largest_allocation.load(std::memory_order_relaxed);
  while (size > seen && !g_largest_allocation.compare_exchange_weak(seen, size)) {
  }
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
// GCC cannot see that this operator new pairs with free().
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace cru::proto {

namespace testing {
// Defined in samples.cc.
std::vector<Message> small_samples();
std::vector<Message> huge_samples();
Bytes pattern_bytes(size_t size, uint64_t seed);
}  // namespace testing

namespace {

using testing::huge_samples;
using testing::small_samples;

constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();
constexpr uint32_t kU32Max = std::numeric_limits<uint32_t>::max();

template <typename F>
size_t largest_allocation_during(F&& f) {
  g_largest_allocation.store(0);
  f();
  return g_largest_allocation.load();
}

::testing::AssertionResult same_message(const Message& got, const Message& want) {
  if (got == want) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << describe(got) << ", want " << describe(want);
}

// A kProtocol error whose message contains `needle`.
template <typename T>
::testing::AssertionResult rejected_with(const Result<T>& r, std::string_view needle) {
  if (r)
    return ::testing::AssertionFailure() << "accepted; expected an error naming '" << needle << "'";
  if (r.error().code != ErrorCode::kProtocol)
    return ::testing::AssertionFailure() << "code " << error_code_name(r.error().code)
                                         << ", not protocol error: " << r.error().message;
  if (r.error().message.find(needle) == std::string::npos)
    return ::testing::AssertionFailure()
           << "message '" << r.error().message << "' does not contain '" << needle << "'";
  return ::testing::AssertionSuccess();
}

// Little-endian metadata builder for hand-made (often malformed) frames.
class Meta {
 public:
  Meta& u8(uint8_t v) { return integer(v, 1); }
  Meta& u16(uint16_t v) { return integer(v, 2); }
  Meta& u32(uint32_t v) { return integer(v, 4); }
  Meta& u64(uint64_t v) { return integer(v, 8); }
  Meta& fill(size_t n, uint8_t v) {
    bytes.insert(bytes.end(), n, std::byte{v});
    return *this;
  }
  Meta& text(std::string_view s) {
    for (char c : s) bytes.push_back(static_cast<std::byte>(c));
    return *this;
  }
  std::vector<std::byte> bytes;

 private:
  Meta& integer(uint64_t v, size_t width) {
    for (size_t i = 0; i < width; ++i) bytes.push_back(static_cast<std::byte>(v >> (8 * i)));
    return *this;
  }
};

std::vector<std::byte> header(uint32_t frame_bytes, uint32_t tag, uint32_t meta_bytes) {
  return Meta().u32(frame_bytes).u32(tag).u32(meta_bytes).bytes;
}

// A frame with correct lengths around `meta` and `data_bytes` bytes of bulk data.
std::vector<std::byte> frame(Tag tag, const Meta& meta, size_t data_bytes = 0) {
  auto f = header(static_cast<uint32_t>(kFrameHeaderBytes + meta.bytes.size() + data_bytes),
                  static_cast<uint32_t>(tag), static_cast<uint32_t>(meta.bytes.size()));
  f.insert(f.end(), meta.bytes.begin(), meta.bytes.end());
  auto data = testing::pattern_bytes(data_bytes, 99);
  f.insert(f.end(), data.span().begin(), data.span().end());
  return f;
}

// Write/WriteUnwritten metadata: job, no deps, start, block size, `contexts` plain contexts,
// no trace context.
Meta write_meta(uint32_t block_size, uint32_t contexts) {
  Meta m;
  m.u64(1000).u32(0).u64(0).u32(block_size).u32(contexts);
  for (uint32_t i = 0; i < contexts; ++i) m.u64(i).u8(0);
  m.u8(0);  // no trace context
  return m;
}

// ReadResponse metadata with status kOk and `contexts` absent contexts.
Meta read_response_meta(uint32_t block_size, uint32_t contexts) {
  Meta m;
  m.u64(1000).u16(0).u32(0).u32(block_size).u32(contexts).fill(contexts, 0);
  return m;
}

uint32_t le32(std::span<const std::byte> b, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v |= std::to_integer<uint32_t>(b[at + i]) << (8 * i);
  return v;
}

// Every check a message must pass: it validates, its frame header describes it, both
// decoding paths give it back, and re-encoding gives the same bytes.
void expect_round_trip(const Message& m) {
  SCOPED_TRACE(describe(m));
  ASSERT_TRUE(validate(m)) << validate(m).error().to_string();
  std::vector<std::byte> flat = encode_flat(m);
  EncodedFrame split = encode(m);

  ASSERT_GE(flat.size(), kFrameHeaderBytes);
  EXPECT_EQ(le32(flat, 0), flat.size());
  EXPECT_EQ(le32(flat, 4), static_cast<uint32_t>(tag_of(m)));
  EXPECT_EQ(le32(flat, 8), split.head.size() - kFrameHeaderBytes);
  EXPECT_EQ(split.size(), flat.size());
  EXPECT_TRUE(std::equal(split.head.begin(), split.head.end(), flat.begin()));
  EXPECT_TRUE(std::equal(split.data.span().begin(), split.data.span().end(),
                         flat.begin() + static_cast<ptrdiff_t>(split.head.size())));
  std::visit(
      [&](const auto& v) {
        if constexpr (HasData<std::decay_t<decltype(v)>>) {
          EXPECT_EQ(split.data.data(), v.data.data()) << "encode() copied the bulk data";
        } else {
          EXPECT_TRUE(split.data.empty());
        }
      },
      m);

  auto decoded = decode_frame(flat);
  ASSERT_TRUE(decoded) << decoded.error().to_string();
  EXPECT_TRUE(same_message(*decoded, m));
  EXPECT_TRUE(encode_flat(*decoded) == flat) << "re-encoding changed the bytes";

  // The reader, given the head and the data as separate pieces (as a gather write sends).
  FrameReader reader;
  std::vector<Message> out;
  for (std::span<const std::byte> piece :
       {std::span<const std::byte>(split.head), split.data.span()}) {
    while (!piece.empty()) {
      auto fed = reader.feed(piece);
      ASSERT_TRUE(fed) << fed.error().to_string();
      piece = piece.subspan(fed->consumed);
      if (fed->message) out.push_back(std::move(*fed->message));
    }
  }
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(same_message(out[0], m));
  EXPECT_TRUE(reader.idle());
}

// ---- coverage --------------------------------------------------------------------------

TEST(Codec, SamplesCoverEveryMessageType) {
  std::vector<int> per_index(std::variant_size_v<Message>, 0);
  for (const auto& m : small_samples()) ++per_index[m.index()];
  for (size_t i = 0; i < per_index.size(); ++i)
    EXPECT_GT(per_index[i], 0) << "no sample for Message alternative " << i
                               << "; add one to tests/unit/proto/samples.cc";
}

TEST(Codec, EveryMessageTypeHasADistinctNamedTag) {
  std::vector<uint32_t> tags;
  for (const auto& m : small_samples()) {
    EXPECT_NE(tag_name(tag_of(m)), "Unknown") << describe(m);
    tags.push_back(static_cast<uint32_t>(tag_of(m)));
  }
  std::sort(tags.begin(), tags.end());
  tags.erase(std::unique(tags.begin(), tags.end()), tags.end());
  EXPECT_EQ(tags.size(), std::variant_size_v<Message>);
}

// ---- round trips -------------------------------------------------------------------------

TEST(Codec, RoundTripsEverySample) {
  for (const auto& m : small_samples()) expect_round_trip(m);
}

TEST(Codec, RoundTripsLargestLegalMessages) {
  for (const auto& m : huge_samples()) expect_round_trip(m);
}

TEST(Codec, LargestIoFitsTheFrameLimits) {
  // The largest Write: kMaxIoBlocks encrypted contexts and kMaxDependencies deps.
  auto huge = huge_samples();
  auto it = std::find_if(huge.begin(), huge.end(),
                         [](const Message& m) { return std::holds_alternative<Write>(m); });
  ASSERT_NE(it, huge.end());
  EncodedFrame f = encode(*it);
  EXPECT_EQ(f.data.size(), kMaxIoBytes);
  EXPECT_LE(f.head.size() - kFrameHeaderBytes, kMaxMetaBytes);
  EXPECT_LE(f.size(), kMaxFrameBytes);
}

// Regression: ExtentVersions with kMaxExtents (2^20) entries needs 4 + 17 * 2^20 bytes
// of metadata (~17 MiB) but kMaxMetaBytes is 8 MiB, so encode() aborts on its assert for
// any region with more than 493447 extents, which the downstairs accepts (region.cc).
TEST(Limits, LargestExtentVersionsFitsInMetadata) {
  Message one = ExtentVersions{{ExtentVersion{}}};
  const uint64_t per_extent = encode(one).head.size() - kFrameHeaderBytes - 4;
  EXPECT_EQ(per_extent, 18u);
  EXPECT_LE(4 + per_extent * kMaxExtents, kMaxMetaBytes);
}

// ---- golden bytes ----------------------------------------------------------------------
// These freeze the exact encoding of the first messages two peers exchange. If one fails,
// the wire layout changed: bump kProtocolVersion (proto/messages.h), update these bytes and
// docs/protocol.md. Peers of different versions must still understand these three frames
// well enough to refuse each other by version.

std::vector<std::byte> bytes_of(std::initializer_list<int> v) {
  std::vector<std::byte> out;
  for (int b : v) out.push_back(static_cast<std::byte>(b));
  return out;
}

// A reminder that a version change is deliberate: update docs/protocol.md with it.
TEST(Golden, ProtocolVersionIsFive) { EXPECT_EQ(kProtocolVersion, 5u); }

TEST(Golden, HereIAmEncoding) {
  HereIAm m;
  m.version = 1;
  for (uint8_t i = 0; i < 16; ++i) {
    m.upstairs_id.bytes[i] = i;
    m.session_id.bytes[i] = static_cast<uint8_t>(0x10 + i);
  }
  m.generation = Generation{0x0102030405060708};
  m.read_only = true;
  m.encrypted = false;
  auto expected = bytes_of({
      0x3a, 0x00, 0x00, 0x00,                          // frame length 58
      0x01, 0x00, 0x00, 0x00,                          // tag 1
      0x2e, 0x00, 0x00, 0x00,                          // metadata length 46
      0x01, 0x00, 0x00, 0x00,                          // version
      0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,  // upstairs_id
      0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,  //
      0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17,  // session_id
      0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,  //
      0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,  // generation
      0x01,                                            // read_only
      0x00,                                            // encrypted
  });
  EXPECT_EQ(encode_flat(m), expected);
  auto d = decode_frame(expected);
  ASSERT_TRUE(d);
  EXPECT_TRUE(same_message(*d, m));
}

TEST(Golden, YesItsMeEncoding) {
  YesItsMe m{1, "127.0.0.1:3801", Generation{0x0102030405060708}};
  auto expected = bytes_of({
      0x2a, 0x00, 0x00, 0x00,  // frame length 42
      0x02, 0x00, 0x00, 0x00,  // tag 2
      0x1e, 0x00, 0x00, 0x00,  // metadata length 30
      0x01, 0x00, 0x00, 0x00,  // version
      0x0e, 0x00, 0x00, 0x00,  // repair_addr length 14
      '1',  '2',  '7',  '.',  '0',  '.',  '0',  '.',  '1',  ':',  '3',
      '8',  '0',  '1',  0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,  // highest_generation
  });
  EXPECT_EQ(encode_flat(m), expected);
  auto d = decode_frame(expected);
  ASSERT_TRUE(d);
  EXPECT_TRUE(same_message(*d, m));
}

TEST(Golden, VersionMismatchEncoding) {
  VersionMismatch m{1};
  auto expected = bytes_of({
      0x10, 0x00, 0x00, 0x00,  // frame length 16
      0x03, 0x00, 0x00, 0x00,  // tag 3
      0x04, 0x00, 0x00, 0x00,  // metadata length 4
      0x01, 0x00, 0x00, 0x00,  // version
  });
  EXPECT_EQ(encode_flat(m), expected);
  auto d = decode_frame(expected);
  ASSERT_TRUE(d);
  EXPECT_TRUE(same_message(*d, m));
}

// Not part of the version handshake, but freezes where bulk data and contexts go.
TEST(Golden, WriteEncoding) {
  Write m;
  m.job_id = JobId{1000};
  m.deps = {JobId{999}};
  m.start = BlockIndex{2};
  m.block_size = 512;
  m.contexts = {BlockContext{0x1122334455667788, std::nullopt}};
  ByteBuffer data(512);
  std::memset(data.data(), 0xab, data.size());
  m.data = Bytes(std::move(data));
  auto expected = bytes_of({
      0x3a, 0x02, 0x00, 0x00,                          // frame length 570 (12 + 46 + 512)
      0x14, 0x00, 0x00, 0x00,                          // tag 20
      0x2e, 0x00, 0x00, 0x00,                          // metadata length 46
      0xe8, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // job_id 1000
      0x01, 0x00, 0x00, 0x00,                          // 1 dependency
      0xe7, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // 999
      0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // start block 2
      0x00, 0x02, 0x00, 0x00,                          // block size 512
      0x01, 0x00, 0x00, 0x00,                          // 1 context
      0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,  // hash
      0x00,                                            // no encryption context
      0x00,                                            // no trace context
  });
  expected.insert(expected.end(), 512, std::byte{0xab});
  EXPECT_EQ(encode_flat(m), expected);
}

// Where a job's trace context goes (protocol 5): after the job's own fields.
TEST(Golden, TraceContextEncoding) {
  Barrier m{JobId{7},
            {},
            TraceContext{0x0102030405060708, 0x1112131415161718, 0x2122232425262728,
                         TraceContext::kSampled}};
  auto expected = bytes_of({
      0x32, 0x00, 0x00, 0x00,                          // frame length 50 (12 + 38)
      0x1a, 0x00, 0x00, 0x00,                          // tag 26
      0x26, 0x00, 0x00, 0x00,                          // metadata length 38
      0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // job_id 7
      0x00, 0x00, 0x00, 0x00,                          // no dependencies
      0x01,                                            // a trace context:
      0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,  //   trace id, high 64 bits
      0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11,  //   trace id, low 64 bits
      0x28, 0x27, 0x26, 0x25, 0x24, 0x23, 0x22, 0x21,  //   parent span id
      0x01,                                            //   flags: sampled
  });
  EXPECT_EQ(encode_flat(m), expected);
}

// ---- rejections: the frame ---------------------------------------------------------------

TEST(Codec, RejectsTruncatedFrame) {
  for (const auto& m : small_samples()) {
    auto flat = encode_flat(m);
    for (size_t len = 0; len < flat.size(); ++len) {
      auto r = decode_frame(std::span(flat).first(len));
      ASSERT_TRUE(rejected_with(r, "truncated")) << describe(m) << " cut at " << len;
    }
  }
}

TEST(Codec, RejectsFrameLongerThanItsBuffer) {
  auto flat = encode_flat(Ruok{});
  flat.push_back(std::byte{0});
  EXPECT_TRUE(rejected_with(decode_frame(flat), "oversized frame"));
}

TEST(Codec, RejectsFrameLengthShorterThanHeader) {
  for (uint32_t len : {0u, 4u, 11u}) {
    auto f = header(len, static_cast<uint32_t>(Tag::kRuok), 0);
    EXPECT_TRUE(rejected_with(decode_frame(f), "shorter than the 12-byte header")) << len;
  }
}

TEST(Codec, RejectsFrameLongerThanLimit) {
  for (uint64_t len : {kMaxFrameBytes + 1, uint64_t{kU32Max}}) {
    auto f = header(static_cast<uint32_t>(len), static_cast<uint32_t>(Tag::kWrite), 0);
    EXPECT_TRUE(
        rejected_with(decode_frame(f), "exceeds the limit " + std::to_string(kMaxFrameBytes)));
    // The reader refuses on the header alone, before allocating anything for the body.
    FrameReader reader;
    size_t largest = largest_allocation_during(
        [&] { EXPECT_TRUE(rejected_with(reader.feed(f), "exceeds the limit")); });
    EXPECT_LT(largest, 4096u);
  }
}

TEST(Codec, AcceptsFrameOfExactlyTheLimitInHeader) {
  auto h = parse_header(std::span<const std::byte, kFrameHeaderBytes>(
      header(static_cast<uint32_t>(kMaxFrameBytes), static_cast<uint32_t>(Tag::kWrite),
             static_cast<uint32_t>(kMaxMetaBytes))
          .data(),
      kFrameHeaderBytes));
  ASSERT_TRUE(h) << h.error().to_string();
  EXPECT_EQ(h->data_bytes(), kMaxIoBytes);
}

TEST(Codec, RejectsMetadataLongerThanFrame) {
  auto f = header(20, static_cast<uint32_t>(Tag::kRuok), 9);
  f.resize(20);
  EXPECT_TRUE(rejected_with(decode_frame(f), "metadata length 9 exceeds the frame's 8 bytes"));
}

TEST(Codec, RejectsMetadataLongerThanLimit) {
  auto f = header(static_cast<uint32_t>(kMaxFrameBytes), static_cast<uint32_t>(Tag::kWrite),
                  static_cast<uint32_t>(kMaxMetaBytes + 1));
  EXPECT_TRUE(
      rejected_with(decode_frame(f),
                    "metadata length " + std::to_string(kMaxMetaBytes + 1) + " exceeds the limit"));
}

TEST(Codec, RejectsUnknownTag) {
  for (uint32_t tag : {0u, 15u, 28u, 81u, 999u, kU32Max}) {
    auto f = header(12, tag, 0);
    EXPECT_TRUE(rejected_with(decode_frame(f), "unknown message tag " + std::to_string(tag)));
  }
}

TEST(Codec, RejectsTrailingMetadata) {
  EXPECT_TRUE(
      rejected_with(decode_frame(frame(Tag::kRuok, Meta().u8(0))), "Ruok: 1 trailing bytes"));
  EXPECT_TRUE(rejected_with(decode_frame(frame(Tag::kVersionMismatch, Meta().u32(1).u16(0))),
                            "VersionMismatch: 2 trailing bytes"));
}

TEST(Codec, RejectsTrailingDataOnMessageWithoutData) {
  EXPECT_TRUE(rejected_with(decode_frame(frame(Tag::kRuok, Meta(), 1)),
                            "Ruok: 1 trailing bytes after the message"));
  EXPECT_TRUE(
      rejected_with(decode_frame(frame(Tag::kRead, Meta().u64(1).u32(0).u64(0).u32(1).u8(0), 512)),
                    "Read: 512 trailing bytes after the message"));
}

TEST(Codec, RejectsTruncatedMetadataField) {
  // A VersionMismatch whose metadata is 3 bytes: the u32 does not fit.
  EXPECT_TRUE(rejected_with(decode_frame(frame(Tag::kVersionMismatch, Meta().u16(1).u8(0))),
                            "VersionMismatch: truncated: needs 4 more bytes, 3 left"));
}

// ---- rejections: fields ------------------------------------------------------------------

TEST(Codec, RejectsVectorCountLargerThanBytesLeftWithoutAllocating) {
  // A Barrier claiming 2^32-1 dependencies with 4 bytes behind the count.
  auto f = frame(Tag::kBarrier, Meta().u64(1000).u32(kU32Max).u32(0));
  size_t largest = largest_allocation_during(
      [&] { EXPECT_TRUE(rejected_with(decode_frame(f), "vector of 4294967295 elements")); });
  EXPECT_LT(largest, 4096u);
  // The same for block contexts and extent versions.
  EXPECT_TRUE(rejected_with(
      decode_frame(frame(Tag::kWrite, Meta().u64(1).u32(0).u64(0).u32(512).u32(kU32Max).u64(0))),
      "vector of 4294967295 elements"));
  EXPECT_TRUE(rejected_with(decode_frame(frame(Tag::kExtentVersions, Meta().u32(2).fill(18, 0))),
                            "vector of 2 elements needs at least 36 bytes but only 18 left"));
}

// Regression: the vector check bounds the count by the minimum wire size of an element
// (1 byte for an absent context) but allocates sizeof(std::optional<BlockContext>) (64 B)
// per element before validate() checks the count against kMaxIoBlocks. A ReadResponse
// with 10^6 absent contexts in a 1 MB frame allocates 64 MB; an 8 MiB metadata frame
// makes the decoder allocate 512 MiB. Expected: counts beyond the protocol's limits are
// refused before allocating.
TEST(Codec, DecoderAllocatesNoMoreThanTheFrame) {
  constexpr uint32_t kCount = 1'000'000;
  auto f = frame(Tag::kReadResponse, read_response_meta(512, kCount));
  size_t largest = largest_allocation_during(
      [&] { EXPECT_TRUE(rejected_with(decode_frame(f), "exceeds the limit")); });
  EXPECT_LE(largest, f.size()) << "a " << f.size() << "-byte frame made the decoder allocate "
                               << largest << " bytes";
}

TEST(Codec, RejectsDataNotMultipleOfBlockSize) {
  EXPECT_TRUE(rejected_with(decode_frame(frame(Tag::kWrite, write_meta(512, 1), 513)),
                            "data of 513 bytes is not a multiple of the block size 512"));
  EXPECT_TRUE(rejected_with(decode_frame(frame(Tag::kWriteUnwritten, write_meta(4096, 1), 4095)),
                            "not a multiple of the block size"));
  EXPECT_TRUE(
      rejected_with(decode_frame(frame(Tag::kReadResponse, read_response_meta(512, 1), 100)),
                    "not a multiple of the block size"));
}

TEST(Codec, RejectsContextCountNotMatchingBlockCount) {
  EXPECT_TRUE(rejected_with(decode_frame(frame(Tag::kWrite, write_meta(512, 2), 512)),
                            "2 contexts but 1 blocks of data"));
  EXPECT_TRUE(rejected_with(decode_frame(frame(Tag::kWrite, write_meta(512, 1), 1024)),
                            "1 contexts but 2 blocks of data"));
  EXPECT_TRUE(
      rejected_with(decode_frame(frame(Tag::kReadResponse, read_response_meta(512, 3), 1024)),
                    "3 contexts but 2 blocks of data"));
}

TEST(Codec, RejectsInvalidBlockSize) {
  for (uint32_t bs : {0u, 1u, 256u, 513u, 1000u, 65536u, kU32Max}) {
    const std::string needle = "block size " + std::to_string(bs) + " is not a power of two";
    EXPECT_TRUE(rejected_with(
        decode_frame(frame(Tag::kWrite, write_meta(bs, 1), bs == kU32Max ? 0 : bs)), needle));
    EXPECT_TRUE(rejected_with(
        decode_frame(frame(Tag::kReadResponse, read_response_meta(bs, 1), bs == kU32Max ? 0 : bs)),
        needle));
  }
}

TEST(Codec, RejectsZeroBlockIo) {
  EXPECT_TRUE(
      rejected_with(decode_frame(frame(Tag::kRead, Meta().u64(1).u32(0).u64(0).u32(0).u8(0))),
                    "Read: zero blocks"));
  EXPECT_TRUE(
      rejected_with(decode_frame(frame(Tag::kWrite, write_meta(512, 0))), "Write: zero blocks"));
  EXPECT_TRUE(rejected_with(decode_frame(frame(Tag::kWriteUnwritten, write_meta(512, 0))),
                            "WriteUnwritten: zero blocks"));
  EXPECT_TRUE(
      rejected_with(decode_frame(frame(Tag::kDiscard, Meta().u64(1).u32(0).u64(0).u32(0).u8(0))),
                    "Discard: zero blocks"));
  EXPECT_TRUE(rejected_with(decode_frame(frame(Tag::kReadResponse, read_response_meta(512, 0))),
                            "ReadResponse: zero blocks"));
}

TEST(Codec, RejectsBlockCountAboveLimit) {
  EXPECT_TRUE(rejected_with(
      decode_frame(frame(Tag::kRead, Meta().u64(1).u32(0).u64(0).u32(kMaxIoBlocks + 1).u8(0))),
      std::to_string(kMaxIoBlocks + 1) + " blocks exceed the limit " +
          std::to_string(kMaxIoBlocks)));
  EXPECT_TRUE(rejected_with(
      decode_frame(
          frame(Tag::kDiscard, Meta().u64(1).u32(0).u64(0).u32(kMaxDiscardBlocks + 1).u8(0))),
      "blocks exceed the limit " + std::to_string(kMaxDiscardBlocks)));
}

TEST(Codec, RejectsChunkLargerThanLimit) {
  EXPECT_TRUE(rejected_with(
      decode_frame(frame(Tag::kExtentChunk, Meta().u32(1).u64(0).u8(0), kRepairChunkBytes + 1)),
      "chunk of " + std::to_string(kRepairChunkBytes + 1) + " bytes exceeds the limit"));
}

TEST(Codec, RejectsUnchangedChunkWithData) {
  EXPECT_TRUE(
      rejected_with(decode_frame(frame(Tag::kExtentChunk, Meta().u32(1).u64(0).u8(1), 4096)),
                    "ExtentChunk: an unchanged chunk carries data"));
}

TEST(Codec, RejectsBooleanByteOtherThanZeroOrOne) {
  Meta here;
  here.u32(1).fill(32, 0).u64(1).u8(2).u8(0);  // read_only = 2
  EXPECT_TRUE(
      rejected_with(decode_frame(frame(Tag::kHereIAm, here)), "boolean byte is 2, not 0 or 1"));
  EXPECT_TRUE(rejected_with(decode_frame(frame(Tag::kEncryptedMismatch, Meta().u8(0xff))),
                            "boolean byte is 255"));
  // An optional's presence byte follows the same rule.
  Meta flush;
  flush.u64(1).u32(0).u64(1).u64(1).u8(2);
  EXPECT_TRUE(rejected_with(decode_frame(frame(Tag::kFlush, flush)), "boolean byte is 2"));
}

TEST(Codec, RejectsOutOfRangeClientId) {
  EXPECT_TRUE(rejected_with(
      decode_frame(frame(Tag::kExtentFlush, Meta().u64(1).u32(2).u8(3).u64(1).u64(1))),
      "client id 3 is not 0, 1 or 2"));
  EXPECT_TRUE(rejected_with(
      decode_frame(frame(Tag::kExtentRepair, Meta().u64(1).u32(2).u8(0).u32(0).u32(1).u8(255))),
      "client id 255 is not 0, 1 or 2"));
}

TEST(Codec, RejectsUnknownErrorCode) {
  EXPECT_TRUE(
      rejected_with(decode_frame(frame(Tag::kAck, Meta().u64(1).u16(kErrorCodeMax + 1).u32(0))),
                    "unknown error code " + std::to_string(kErrorCodeMax + 1)));
  EXPECT_TRUE(
      rejected_with(decode_frame(frame(Tag::kErrorReport, Meta().u64(0).u16(0xffff).u32(0))),
                    "unknown error code 65535"));
}

TEST(Codec, RejectsStringLongerThanLimit) {
  Meta m;
  m.u32(1).u32(kMaxStringBytes + 1).fill(kMaxStringBytes + 1, 'x');
  EXPECT_TRUE(rejected_with(decode_frame(frame(Tag::kYesItsMe, m)),
                            "string of 4097 bytes exceeds the limit 4096"));
  EXPECT_TRUE(rejected_with(decode_frame(frame(Tag::kYesItsMe, Meta().u32(1).u32(10).text("abc"))),
                            "string of 10 bytes but only 3 left"));
}

TEST(Codec, AcceptsStringOfExactlyTheLimit) {
  Meta m;
  m.u32(1).u32(kMaxStringBytes).fill(kMaxStringBytes, 'x').u64(0);
  auto d = decode_frame(frame(Tag::kYesItsMe, m));
  ASSERT_TRUE(d) << d.error().to_string();
  EXPECT_EQ(std::get<YesItsMe>(*d).repair_addr.size(), kMaxStringBytes);
}

TEST(Codec, RejectsTooManyDependencies) {
  Meta m;
  m.u64(1).u32(kMaxDependencies + 1).fill(8 * (kMaxDependencies + 1), 0).u8(0);
  EXPECT_TRUE(rejected_with(decode_frame(frame(Tag::kBarrier, m)),
                            "Barrier: 65537 dependencies exceed the limit 65536"));
}

TEST(Codec, RejectsErrorReadResponseWithContextsOrData) {
  Meta m;
  m.u64(1).u16(static_cast<uint16_t>(ErrorCode::kIo)).u32(0).u32(512).u32(1).u8(0);
  EXPECT_TRUE(rejected_with(decode_frame(frame(Tag::kReadResponse, m, 512)),
                            "an error response carries contexts or data"));
  Meta no_contexts;
  no_contexts.u64(1).u16(static_cast<uint16_t>(ErrorCode::kIo)).u32(0).u32(512).u32(0);
  EXPECT_TRUE(rejected_with(decode_frame(frame(Tag::kReadResponse, no_contexts, 512)),
                            "an error response carries contexts or data"));
}

TEST(Codec, RejectsBadRepairDestinations) {
  auto repair = [](uint8_t source, std::vector<uint8_t> dests) {
    Meta m;
    m.u64(1).u32(2).u8(source).u32(0).u32(static_cast<uint32_t>(dests.size()));
    for (auto d : dests) m.u8(d);
    return frame(Tag::kExtentRepair, m);
  };
  EXPECT_TRUE(rejected_with(decode_frame(repair(0, {})), "0 destinations (expected 1 or 2)"));
  EXPECT_TRUE(rejected_with(decode_frame(repair(0, {0, 1, 2})), "3 destinations"));
  EXPECT_TRUE(rejected_with(decode_frame(repair(1, {0, 1})), "the source is also a destination"));
}

TEST(Codec, ChecksVersionNamingBothVersions) {
  EXPECT_TRUE(check_version(kProtocolVersion));
  const uint32_t theirs = kProtocolVersion + 1;
  auto s = check_version(theirs);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, ErrorCode::kVersionMismatch);
  EXPECT_NE(s.error().message.find("version " + std::to_string(theirs)), std::string::npos)
      << s.error().message;
  EXPECT_NE(s.error().message.find("version " + std::to_string(kProtocolVersion)),
            std::string::npos)
      << s.error().message;
  // The version arrives in HereIAm; a decoded HereIAm of another version is checked the same.
  HereIAm here;
  here.version = 0;
  auto d = decode_frame(encode_flat(here));
  ASSERT_TRUE(d);
  auto s0 = check_version(std::get<HereIAm>(*d).version);
  ASSERT_FALSE(s0);
  EXPECT_NE(s0.error().message.find("version 0"), std::string::npos) << s0.error().message;
}

// ---- validate() agrees with the decoder --------------------------------------------------
// encode() asserts validate(m); a message it accepts must decode on the other side.

// Regression: validate() does not check string lengths, so encode() accepts an Ack or
// ErrorReport whose message exceeds kMaxStringBytes and the peer drops the connection
// with a protocol error instead of seeing the error.
TEST(Validate, RejectsStringLongerThanLimit) {
  Message m =
      ErrorReport{JobId{0}, WireStatus{ErrorCode::kIo, std::string(kMaxStringBytes + 1, 'e')}};
  EXPECT_TRUE(rejected_with(validate(m), "exceeds the limit"));
}

// Regression: codec.h says validate() checks client ids, but an ExtentFlush whose source
// is ClientId{3} validates, encodes, and is then refused by the decoder.
TEST(Validate, RejectsOutOfRangeClientId) {
  Message m = ExtentFlush{RepairId{1}, ExtentId{2}, ClientId{3}, FlushNumber{1}, Generation{1}};
  EXPECT_TRUE(rejected_with(validate(m), "client id 3"));
}

TEST(Validate, RejectsWhatTheDecoderRejects) {
  Write w;
  w.job_id = JobId{1};
  w.block_size = 1000;
  w.contexts = {BlockContext{}};
  w.data = Bytes::zeros(1000);
  EXPECT_TRUE(rejected_with(validate(Message(w)), "block size 1000"));
  w.block_size = 512;
  w.data = Bytes::zeros(1024);
  EXPECT_TRUE(rejected_with(validate(Message(w)), "1 contexts but 2 blocks"));
  Barrier b{JobId{1}, std::vector<JobId>(kMaxDependencies + 1)};
  EXPECT_TRUE(rejected_with(validate(Message(b)), "dependencies exceed the limit"));
  ExtentVersions v;
  v.extents.resize(kMaxExtents + 1);
  EXPECT_TRUE(rejected_with(validate(Message(v)), "extents exceed the limit"));
  EXPECT_TRUE(
      rejected_with(validate(Message(Read{JobId{1}, {}, BlockIndex{0}, 0})), "zero blocks"));
}

TEST(Validate, RejectsATraceContextWithoutTraceOrParentOrWithUnknownFlags) {
  Barrier b{JobId{1}, {}, TraceContext{0, 0, 7, TraceContext::kSampled}};
  EXPECT_TRUE(rejected_with(validate(Message(b)), "trace id is zero"));
  b.trace = TraceContext{1, 2, 0, TraceContext::kSampled};
  EXPECT_TRUE(rejected_with(validate(Message(b)), "parent span id is zero"));
  b.trace = TraceContext{1, 2, 3, 0};  // an unsampled context is never sent
  EXPECT_TRUE(rejected_with(validate(Message(b)), "trace flags"));
  b.trace = TraceContext{1, 2, 3, 3};
  EXPECT_TRUE(rejected_with(validate(Message(b)), "trace flags"));
  b.trace = TraceContext{1, 2, 3, TraceContext::kSampled};
  EXPECT_TRUE(validate(Message(b)));
}

TEST(Codec, DecoderRefusesUnknownTraceFlags) {
  std::vector<std::byte> frame = encode_flat(
      Message(Read{JobId{1}, {}, BlockIndex{0}, 1, TraceContext{1, 2, 3, TraceContext::kSampled}}));
  ASSERT_TRUE(decode_frame(frame));
  // The flags byte ends the metadata (a read carries no data).
  frame.back() = std::byte{0x81};
  EXPECT_TRUE(rejected_with(decode_frame(frame), "trace flags 0x81"));
}

}  // namespace
}  // namespace cru::proto
