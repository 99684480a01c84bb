// FrameReader tests: a stream of frames yields the same messages in order however it is
// cut into pieces, through feed() and through direct_span()/commit_direct(); after an
// error the reader stays failed.
#include "proto/frame_reader.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "proto/codec.h"
#include "proto/messages.h"

namespace cru::proto {

namespace testing {
// Defined in samples.cc.
std::vector<Message> small_samples();
std::vector<Message> huge_samples();
Bytes pattern_bytes(size_t size, uint64_t seed);
}  // namespace testing

namespace {

using testing::small_samples;

std::vector<std::byte> concat_frames(const std::vector<Message>& messages) {
  std::vector<std::byte> stream;
  for (const auto& m : messages) {
    auto f = encode_flat(m);
    stream.insert(stream.end(), f.begin(), f.end());
  }
  return stream;
}

// Feeds all of `piece`, appending completed messages to `out`.
Status feed_all(FrameReader& reader, std::span<const std::byte> piece, std::vector<Message>& out) {
  while (!piece.empty()) {
    auto fed = reader.feed(piece);
    if (!fed) return tl::unexpected(fed.error());
    if (fed->consumed == 0 && !fed->message)
      return fail(ErrorCode::kInvalidArgument, "feed() made no progress");
    piece = piece.subspan(fed->consumed);
    if (fed->message) out.push_back(std::move(*fed->message));
  }
  return {};
}

::testing::AssertionResult same_messages(const std::vector<Message>& got,
                                         const std::vector<Message>& want) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << got.size() << " messages, want " << want.size();
  for (size_t i = 0; i < got.size(); ++i)
    if (!(got[i] == want[i]))
      return ::testing::AssertionFailure()
             << "message " << i << ": got " << describe(got[i]) << ", want " << describe(want[i]);
  return ::testing::AssertionSuccess();
}

// Reads `stream` the way FrameSource does: bulk data goes straight into direct_span()
// (at most `chunk` bytes per read), everything else through feed() in `chunk`-byte reads.
Status read_direct(FrameReader& reader, std::span<const std::byte> stream, size_t chunk,
                   std::vector<Message>& out, size_t& direct_bytes) {
  size_t pos = 0;
  while (pos < stream.size()) {
    size_t n = std::min(chunk, stream.size() - pos);
    auto direct = reader.direct_span();
    if (!direct.empty()) {
      n = std::min(n, direct.size());
      std::memcpy(direct.data(), stream.data() + pos, n);
      direct_bytes += n;
      auto m = reader.commit_direct(n);
      if (!m) return tl::unexpected(m.error());
      if (*m) out.push_back(std::move(**m));
    } else {
      CRU_TRY(feed_all(reader, stream.subspan(pos, n), out));
    }
    pos += n;
  }
  return {};
}

TEST(FrameReader, YieldsEveryMessageOfAStreamInOrder) {
  auto samples = small_samples();
  auto stream = concat_frames(samples);
  FrameReader reader;
  std::vector<Message> out;
  ASSERT_TRUE(feed_all(reader, stream, out));
  EXPECT_TRUE(same_messages(out, samples));
  EXPECT_TRUE(reader.idle());
}

TEST(FrameReader, SplitAtEveryOffsetYieldsTheSameMessages) {
  auto samples = small_samples();
  auto stream = concat_frames(samples);
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    FrameReader reader;
    std::vector<Message> out;
    auto all = std::span<const std::byte>(stream);
    ASSERT_TRUE(feed_all(reader, all.first(cut), out)) << "cut at " << cut;
    ASSERT_TRUE(feed_all(reader, all.subspan(cut), out)) << "cut at " << cut;
    ASSERT_TRUE(same_messages(out, samples)) << "cut at " << cut;
    ASSERT_TRUE(reader.idle()) << "cut at " << cut;
  }
}

TEST(FrameReader, OneByteAtATimeYieldsTheSameMessages) {
  auto samples = small_samples();
  auto stream = concat_frames(samples);
  FrameReader reader;
  std::vector<Message> out;
  size_t completed_at_frame_end = 0;
  for (size_t i = 0; i < stream.size(); ++i) {
    size_t before = out.size();
    ASSERT_TRUE(feed_all(reader, std::span(stream).subspan(i, 1), out)) << "byte " << i;
    if (out.size() > before) {
      ++completed_at_frame_end;
      EXPECT_TRUE(reader.idle());
    }
  }
  EXPECT_TRUE(same_messages(out, samples));
  EXPECT_EQ(completed_at_frame_end, samples.size());
}

TEST(FrameReader, IdleOnlyBetweenFrames) {
  auto f = encode_flat(Ruok{});
  FrameReader reader;
  EXPECT_TRUE(reader.idle());
  std::vector<Message> out;
  ASSERT_TRUE(feed_all(reader, std::span(f).first(1), out));
  EXPECT_FALSE(reader.idle());
  ASSERT_TRUE(feed_all(reader, std::span(f).subspan(1), out));
  EXPECT_TRUE(reader.idle());
  EXPECT_EQ(out.size(), 1u);
}

TEST(FrameReader, DirectSpanReceivesBulkDataInAnyChunkSize) {
  auto samples = small_samples();
  auto stream = concat_frames(samples);
  size_t data_bytes = 0;
  for (const auto& m : samples)
    std::visit(
        [&](const auto& v) {
          if constexpr (HasData<std::decay_t<decltype(v)>>) data_bytes += v.data.size();
        },
        m);
  ASSERT_GT(data_bytes, 0u);
  for (size_t chunk : {size_t{1}, size_t{3}, size_t{100}, size_t{4096}, stream.size()}) {
    FrameReader reader;
    std::vector<Message> out;
    size_t direct = 0;
    ASSERT_TRUE(read_direct(reader, stream, chunk, out, direct)) << "chunk " << chunk;
    EXPECT_TRUE(same_messages(out, samples)) << "chunk " << chunk;
    EXPECT_TRUE(reader.idle());
    if (chunk < stream.size()) {
      EXPECT_GT(direct, 0u) << "chunk " << chunk;
    }
    EXPECT_LE(direct, data_bytes);
  }
}

TEST(FrameReader, DirectSpanCoversAllDataAfterTheMetadata) {
  Write w;
  w.job_id = JobId{1000};
  w.block_size = 4096;
  w.contexts.resize(16);
  w.data = testing::pattern_bytes(16 * 4096, 5);
  EncodedFrame f = encode(w);
  FrameReader reader;
  EXPECT_TRUE(reader.direct_span().empty());
  std::vector<Message> out;
  ASSERT_TRUE(feed_all(reader, f.head, out));
  EXPECT_TRUE(out.empty());
  auto direct = reader.direct_span();
  ASSERT_EQ(direct.size(), w.data.size());
  // Fill it in two reads, as a socket might.
  std::memcpy(direct.data(), w.data.data(), 1000);
  auto first = reader.commit_direct(1000);
  ASSERT_TRUE(first);
  EXPECT_FALSE(*first);
  ASSERT_EQ(reader.direct_span().size(), w.data.size() - 1000);
  std::memcpy(reader.direct_span().data(), w.data.data() + 1000, w.data.size() - 1000);
  auto second = reader.commit_direct(w.data.size() - 1000);
  ASSERT_TRUE(second);
  ASSERT_TRUE(*second);
  EXPECT_TRUE(**second == Message(w));
  EXPECT_TRUE(reader.idle());
  EXPECT_TRUE(reader.direct_span().empty());
}

TEST(FrameReader, LargestMessagesSplitAtSeveralOffsets) {
  for (const auto& m : testing::huge_samples()) {
    auto flat = encode_flat(m);
    for (size_t cut : {size_t{1}, size_t{12}, size_t{13}, flat.size() / 2, flat.size() - 1}) {
      FrameReader reader;
      std::vector<Message> out;
      ASSERT_TRUE(feed_all(reader, std::span(flat).first(cut), out));
      ASSERT_TRUE(feed_all(reader, std::span(flat).subspan(cut), out));
      ASSERT_EQ(out.size(), 1u);
      EXPECT_TRUE(out[0] == m) << describe(m) << " cut at " << cut;
    }
  }
}

TEST(FrameReader, StaysFailedAfterAnError) {
  auto good = encode_flat(Ruok{});
  std::vector<std::byte> bad(12, std::byte{0xff});  // frame length 2^32-1
  FrameReader reader;
  std::vector<Message> out;
  ASSERT_TRUE(feed_all(reader, good, out));
  auto r = reader.feed(bad);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kProtocol);
  EXPECT_NE(r.error().message.find("exceeds the limit"), std::string::npos) << r.error().message;
  for (int i = 0; i < 2; ++i) {
    auto again = reader.feed(good);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, ErrorCode::kProtocol);
    EXPECT_NE(again.error().message.find("after a protocol error"), std::string::npos)
        << again.error().message;
  }
  EXPECT_TRUE(reader.direct_span().empty());
  EXPECT_EQ(out.size(), 1u);
}

TEST(FrameReader, StaysFailedAfterAMetadataError) {
  // A well-formed header whose metadata holds a boolean byte of 7.
  std::vector<std::byte> bad = encode_flat(ReadOnlyMismatch{true});
  bad.back() = std::byte{7};
  FrameReader reader;
  auto r = reader.feed(bad);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kProtocol);
  EXPECT_NE(r.error().message.find("boolean byte is 7"), std::string::npos) << r.error().message;
  auto again = reader.feed(encode_flat(Imok{}));
  ASSERT_FALSE(again);
  EXPECT_NE(again.error().message.find("after a protocol error"), std::string::npos);
}

TEST(FrameReader, StaysFailedAfterABulkDataError) {
  // A Write whose data is one byte longer than its contexts allow, received directly.
  Write w;
  w.job_id = JobId{1};
  w.block_size = 512;
  w.contexts.resize(1);
  w.data = Bytes::zeros(512);
  auto f = encode_flat(w);
  f.push_back(std::byte{0});
  f[0] = static_cast<std::byte>(std::to_integer<uint32_t>(f[0]) + 1);
  FrameReader reader;
  std::vector<Message> out;
  size_t direct = 0;
  auto r = read_direct(reader, f, encode(w).head.size(), out, direct);
  ASSERT_FALSE(r);
  EXPECT_EQ(direct, 513u);
  EXPECT_EQ(r.error().code, ErrorCode::kProtocol);
  EXPECT_NE(r.error().message.find("not a multiple of the block size"), std::string::npos)
      << r.error().message;
  EXPECT_TRUE(reader.direct_span().empty());
  auto again = reader.feed(encode_flat(Imok{}));
  ASSERT_FALSE(again);
  EXPECT_NE(again.error().message.find("after a protocol error"), std::string::npos);
}

}  // namespace
}  // namespace cru::proto
