// The read-only parent's pure rules (upstairs/parent.h): the written mask from a read's
// contexts, the merge of parent and volume data (the volume's block wherever it was
// written, the parent's elsewhere, the volume's past a shorter parent's end), and the
// geometry checks that name the key.
#include "upstairs/parent.h"

#include <gtest/gtest.h>

#include <cstring>

#include "unit/upstairs/harness.h"

namespace cru::upstairs {
namespace {

using test::kBs;  // uniform_blocks() makes blocks of this size

Bytes blocks(size_t n, uint8_t seed) { return test::uniform_blocks(n, seed); }

uint8_t block_byte(const Bytes& b, size_t i) { return static_cast<uint8_t>(b.data()[i * kBs]); }
bool block_uniform(const Bytes& b, size_t i) {
  for (size_t k = 0; k < kBs; ++k)
    if (b.data()[i * kBs + k] != b.data()[i * kBs]) return false;
  return true;
}

TEST(ParentMerge, WrittenMaskFollowsTheContexts) {
  std::vector<std::optional<proto::BlockContext>> ctx(4);
  ctx[1] = proto::BlockContext{1, std::nullopt};
  ctx[3] = proto::BlockContext{2, std::nullopt};
  EXPECT_EQ(written_mask(ctx), (WrittenMask{false, true, false, true}));
  EXPECT_TRUE(written_mask({}).empty());
}

TEST(ParentMerge, WrittenBlocksComeFromTheVolumeOthersFromTheParent) {
  const Bytes parent = blocks(6, 10);
  MaskedRead v{blocks(6, 100), {false, true, true, false, false, true}};
  const Bytes out = merge_parent(parent, v, kBs);
  ASSERT_EQ(out.size(), 6 * kBs);
  const uint8_t want[] = {10, 101, 102, 13, 14, 105};
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(block_byte(out, i), want[i]) << "block " << i;
    EXPECT_TRUE(block_uniform(out, i)) << "block " << i << " mixes two sources";
  }
}

TEST(ParentMerge, AllWrittenReturnsTheVolumeDataWithoutACopy) {
  const Bytes parent = blocks(3, 10);
  MaskedRead v{blocks(3, 100), {true, true, true}};
  const Bytes out = merge_parent(parent, v, kBs);
  EXPECT_EQ(out.data(), v.data.data()) << "the volume's buffer itself";
}

TEST(ParentMerge, NoneWrittenReturnsTheParentDataWithoutACopy) {
  const Bytes parent = blocks(3, 10);
  MaskedRead v{Bytes::zeros(3 * kBs), {false, false, false}};
  const Bytes out = merge_parent(parent, v, kBs);
  EXPECT_EQ(out.data(), parent.data()) << "the parent's buffer itself";
}

TEST(ParentMerge, PastAShorterParentsEndTheVolumeAnswersZerosOrItsData) {
  // The parent covers 2 of 4 blocks: block 2 unwritten reads the volume's zeros, block 3
  // the volume's data.
  const Bytes parent = blocks(2, 10);
  ByteBuffer vb = ByteBuffer::zeros(4 * kBs);
  std::memset(vb.data() + 3 * kBs, 7, kBs);
  MaskedRead v{Bytes(std::move(vb)), {false, false, false, true}};
  const Bytes out = merge_parent(parent, v, kBs);
  ASSERT_EQ(out.size(), 4 * kBs);
  EXPECT_EQ(block_byte(out, 0), 10);
  EXPECT_EQ(block_byte(out, 1), 11);
  EXPECT_EQ(block_byte(out, 2), 0);
  EXPECT_EQ(block_byte(out, 3), 7);
}

TEST(ParentMerge, AParentEntirelyBeforeTheReadMeansTheVolumeAlone) {
  MaskedRead v{blocks(2, 50), {false, false}};
  const Bytes out = merge_parent(Bytes{}, v, kBs);
  EXPECT_EQ(out.data(), v.data.data());
}

TEST(ParentGeometry, AWholeNumberOfBlocksNoLargerThanTheVolumeIsAccepted) {
  auto b = check_parent_geometry("k", 8 * 4096, 0, 16, 4096);
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(*b, 8u);
  auto same = check_parent_geometry("k", 16 * 4096, 4096, 16, 4096);
  ASSERT_TRUE(same) << same.error().message;
  EXPECT_EQ(*same, 16u);
}

TEST(ParentGeometry, RefusalsNameTheKeyAndTheSizes) {
  auto partial = check_parent_geometry("volume.read_only_parent.file", 4096 + 512, 0, 16, 4096);
  ASSERT_FALSE(partial);
  EXPECT_NE(partial.error().message.find("volume.read_only_parent.file"), std::string::npos);
  EXPECT_NE(partial.error().message.find("4608 bytes"), std::string::npos)
      << partial.error().message;
  auto larger = check_parent_geometry("volume.read_only_parent.file", 17 * 4096, 0, 16, 4096);
  ASSERT_FALSE(larger);
  EXPECT_NE(larger.error().message.find("larger than the volume"), std::string::npos)
      << larger.error().message;
  auto bs = check_parent_geometry("volume.read_only_parent.targets", 8 * 512, 512, 16, 4096);
  ASSERT_FALSE(bs);
  EXPECT_NE(bs.error().message.find("volume.read_only_parent.targets"), std::string::npos);
  EXPECT_NE(bs.error().message.find("512-byte blocks"), std::string::npos) << bs.error().message;
  EXPECT_FALSE(check_parent_geometry("k", 0, 0, 16, 4096));
}

}  // namespace
}  // namespace cru::upstairs
