// Extent and region behaviour without crashes: extent versions, write-unwritten, IO that
// spans extents, every refusal, discard, encrypted contexts and repair staging. Mostly on
// FaultFs; a few on the real file system in a temp dir.
#include "downstairs/region.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/hash.h"
#include "downstairs/admin.h"
#include "downstairs/extent.h"
#include "support/fault_fs.h"
#include "support/process.h"

namespace cru::downstairs {
namespace {

using proto::BlockContext;
using proto::ExtentVersion;
using test::FaultFs;

constexpr uint32_t kBs = 512;
constexpr uint64_t kExtentSize = 8;
constexpr uint32_t kExtents = 4;
constexpr uint64_t kTotal = kExtentSize * kExtents;

ExtentVersion ver(uint64_t gen, uint64_t flush, bool dirty) {
  return {Generation{gen}, FlushNumber{flush}, dirty};
}

// n blocks of recognisable bytes (never all zero) and their contexts.
struct Blocks {
  std::vector<BlockContext> contexts;
  std::vector<std::byte> data;
  std::span<const std::byte> block(size_t i, uint32_t bs = kBs) const {
    return std::span(data).subspan(i * bs, bs);
  }
};

Blocks make_blocks(size_t n, uint8_t seed, bool encrypted = false, uint32_t bs = kBs) {
  Blocks b;
  b.data.resize(n * bs);
  for (size_t i = 0; i < b.data.size(); ++i)
    b.data[i] = static_cast<std::byte>(seed + 1 + i / bs * 31 + (i % 251));
  for (size_t i = 0; i < n; ++i) {
    auto d = b.block(i, bs);
    if (!encrypted) {
      b.contexts.push_back({integrity_hash(d), std::nullopt});
      continue;
    }
    proto::EncryptionContext e;
    e.nonce.fill(static_cast<uint8_t>(seed + i));
    e.tag.fill(static_cast<uint8_t>(seed * 3 + i));
    Slot s{1, 0, false, e};
    b.contexts.push_back({expected_hash(s, d), e});
  }
  return b;
}

std::unique_ptr<Region> make_region(FileSystem& fs, const std::string& dir = "r",
                                    bool encrypted = false, uint32_t extents = kExtents,
                                    uint64_t extent_size = kExtentSize, uint32_t bs = kBs) {
  RegionOptions o;
  o.def = {bs, extent_size, extents, Uuid::random(), encrypted};
  auto r = Region::create(fs, dir, o);
  EXPECT_TRUE(r) << r.error().to_string();
  return r ? std::move(*r) : nullptr;
}

Status write(Region& r, uint64_t start, const Blocks& b, bool only_unwritten = false,
             uint32_t bs = kBs) {
  return r.write(BlockIndex{start}, bs, b.contexts, b.data, only_unwritten);
}

ReadResult read(Region& r, uint64_t start, uint64_t count) {
  auto res = r.read(BlockIndex{start}, count);
  EXPECT_TRUE(res) << res.error().to_string();
  return res ? std::move(*res) : ReadResult{};
}

bool is_zero(std::span<const std::byte> d) {
  return std::all_of(d.begin(), d.end(), [](std::byte x) { return x == std::byte{0}; });
}

// Block i of a read holds block j of `b` with its context.
void expect_block(const ReadResult& r, size_t i, const Blocks& b, size_t j) {
  ASSERT_LT(i, r.contexts.size());
  EXPECT_EQ(r.contexts[i], std::optional<BlockContext>(b.contexts[j])) << "block " << i;
  EXPECT_TRUE(std::equal(b.block(j).begin(), b.block(j).end(), r.data.data() + i * kBs))
      << "block " << i;
}

void expect_unwritten(const ReadResult& r, size_t i) {
  ASSERT_LT(i, r.contexts.size());
  EXPECT_EQ(r.contexts[i], std::nullopt) << "block " << i;
  EXPECT_TRUE(is_zero(r.data.span().subspan(i * kBs, kBs))) << "block " << i;
}

// ---- extent versions ----------------------------------------------------------------------

TEST(ExtentVersions, FreshExtentIsGenerationZeroFlushZeroClean) {
  FaultFs fs;
  auto r = make_region(fs);
  for (const auto& v : r->versions()) EXPECT_EQ(v, ver(0, 0, false));
}

TEST(ExtentVersions, WriteMakesOnlyItsExtentDirty) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(write(*r, 1, make_blocks(1, 1)));
  auto v = r->versions();
  EXPECT_EQ(v[0], ver(0, 0, true));
  EXPECT_EQ(v[1], ver(0, 0, false));
}

TEST(ExtentVersions, FlushRecordsFlushAndGenerationAndCleans) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(write(*r, 0, make_blocks(1, 1)));
  ASSERT_TRUE(r->flush(FlushNumber{10}, Generation{3}, std::nullopt));
  EXPECT_EQ(r->versions()[0], ver(3, 10, false));
  EXPECT_EQ(r->versions()[1], ver(0, 0, false)) << "a clean extent keeps its numbers";
}

TEST(ExtentVersions, FlushOfACleanExtentChangesNothingAndSyncsNothing) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(write(*r, 0, make_blocks(1, 1)));
  ASSERT_TRUE(r->flush(FlushNumber{10}, Generation{3}, std::nullopt));
  uint64_t syncs = fs.syncs(), writes = fs.stats().count(FaultFs::Op::kWrite);
  ASSERT_TRUE(r->flush(FlushNumber{11}, Generation{4}, std::nullopt));
  EXPECT_EQ(r->versions()[0], ver(3, 10, false));
  EXPECT_EQ(r->versions()[2], ver(0, 0, false));
  EXPECT_EQ(fs.syncs(), syncs);
  EXPECT_EQ(fs.stats().count(FaultFs::Op::kWrite), writes);
}

TEST(ExtentVersions, FlushingOneExtentLeavesTheOthersDirty) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(write(*r, 0, make_blocks(1, 1)));
  ASSERT_TRUE(write(*r, kExtentSize, make_blocks(1, 2)));
  ASSERT_TRUE(r->flush_extent(ExtentId{0}, FlushNumber{7}, Generation{1}));
  EXPECT_EQ(r->versions()[0], ver(1, 7, false));
  EXPECT_EQ(r->versions()[1], ver(0, 0, true));
}

TEST(ExtentVersions, CloseAndReopenKeepDirty) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(write(*r, 0, make_blocks(1, 1)));
  auto closed = r->close_extent(ExtentId{0});
  ASSERT_TRUE(closed);
  EXPECT_EQ(*closed, ver(0, 0, true));
  EXPECT_FALSE(r->is_open(ExtentId{0}));
  EXPECT_EQ(r->versions()[0], ver(0, 0, true)) << "a closed extent reports its state at close";
  ASSERT_TRUE(r->reopen_extent(ExtentId{0}));
  EXPECT_EQ(r->versions()[0], ver(0, 0, true));
  r.reset();
  auto again = Region::open(fs, "r", false);
  ASSERT_TRUE(again);
  EXPECT_EQ((*again)->versions()[0], ver(0, 0, true));
}

TEST(ExtentVersions, ReopenAfterFlushKeepsTheNumbers) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(write(*r, 0, make_blocks(1, 1)));
  ASSERT_TRUE(r->flush(FlushNumber{10}, Generation{3}, std::nullopt));
  ASSERT_TRUE(r->close_extent(ExtentId{0}));
  ASSERT_TRUE(r->reopen_extent(ExtentId{0}));
  EXPECT_EQ(r->versions()[0], ver(3, 10, false));
  r.reset();
  for (bool read_only : {false, true}) {
    auto again = Region::open(fs, "r", read_only);
    ASSERT_TRUE(again);
    EXPECT_EQ((*again)->versions()[0], ver(3, 10, false));
  }
}

TEST(ExtentVersions, RegionFlushWithExtentLimitFlushesOnlyUpToTheLimit) {
  FaultFs fs;
  auto r = make_region(fs);
  for (uint32_t e = 0; e < kExtents; ++e)
    ASSERT_TRUE(write(*r, e * kExtentSize + 1, make_blocks(1, 1)));
  ASSERT_TRUE(r->flush(FlushNumber{5}, Generation{2}, ExtentId{1}));
  auto v = r->versions();
  EXPECT_EQ(v[0], ver(2, 5, false));
  EXPECT_EQ(v[1], ver(2, 5, false));
  EXPECT_EQ(v[2], ver(0, 0, true));
  EXPECT_EQ(v[3], ver(0, 0, true));
}

// Opens the region read-only, then read-write (which recovers): both must see extent 0
// as `want`.
void expect_reopened_extent0(FaultFs& fs, const ExtentVersion& want) {
  for (bool read_only : {true, false}) {
    auto again = Region::open(fs, "r", read_only);
    ASSERT_TRUE(again) << again.error().to_string();
    EXPECT_EQ((*again)->versions()[0], want) << "read_only " << read_only;
  }
}

// The flag on disk: a flush leaves it set, so the next write needs no sync of its own;
// settle() clears it once the extent is at rest.
TEST(ExtentDirtyFlag, AWriteAfterAFlushSyncsNothing) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(write(*r, 0, make_blocks(1, 1)));
  ASSERT_TRUE(r->flush(FlushNumber{1}, Generation{1}, std::nullopt));
  uint64_t syncs = fs.syncs();
  ASSERT_TRUE(write(*r, 1, make_blocks(1, 2)));
  EXPECT_EQ(fs.syncs(), syncs);
  EXPECT_EQ(r->versions()[0], ver(1, 1, true));
}

TEST(ExtentDirtyFlag, TheFirstWriteAfterSettlingSyncsTheFlag) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(write(*r, 0, make_blocks(1, 1)));
  ASSERT_TRUE(r->flush(FlushNumber{1}, Generation{1}, std::nullopt));
  ASSERT_TRUE(r->settle());
  uint64_t syncs = fs.syncs();
  ASSERT_TRUE(write(*r, 1, make_blocks(1, 2)));
  EXPECT_EQ(fs.syncs(), syncs + 1);
}

TEST(ExtentDirtyFlag, AFlushSyncsEachExtentTwiceWhateverTheirNumber) {
  FaultFs fs;
  auto r = make_region(fs);
  for (uint32_t e = 0; e < kExtents; ++e)
    ASSERT_TRUE(write(*r, e * kExtentSize, make_blocks(1, static_cast<uint8_t>(e + 1))));
  uint64_t syncs = fs.syncs();
  ASSERT_TRUE(r->flush(FlushNumber{1}, Generation{1}, std::nullopt));
  EXPECT_EQ(fs.syncs(), syncs + 2 * kExtents) << "data, then the new numbers";
}

TEST(ExtentDirtyFlag, ReopeningUnsettledIsCleanWhenNothingWasWrittenSinceTheFlush) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(write(*r, 0, make_blocks(2, 1)));
  ASSERT_TRUE(r->flush(FlushNumber{4}, Generation{2}, std::nullopt));
  r.reset();  // as a crash would: the flag is still set on disk
  expect_reopened_extent0(fs, ver(2, 4, false));
}

TEST(ExtentDirtyFlag, ReopeningUnsettledIsDirtyWhenAWriteLandedSinceTheFlush) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(write(*r, 0, make_blocks(2, 1)));
  ASSERT_TRUE(r->flush(FlushNumber{4}, Generation{2}, std::nullopt));
  ASSERT_TRUE(write(*r, 1, make_blocks(1, 9)));
  r.reset();
  expect_reopened_extent0(fs, ver(2, 4, true));
}

TEST(ExtentDirtyFlag, SettledExtentsOpenWithoutAScan) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(write(*r, 0, make_blocks(2, 1)));
  ASSERT_TRUE(r->flush(FlushNumber{4}, Generation{2}, std::nullopt));
  ASSERT_TRUE(r->settle());
  r.reset();
  uint64_t reads = fs.stats().count(FaultFs::Op::kRead);
  auto again = Region::open(fs, "r", false);
  ASSERT_TRUE(again);
  EXPECT_EQ((*again)->versions()[0], ver(2, 4, false));
  // region.json and each extent's metadata, no block data.
  EXPECT_LE(fs.stats().count(FaultFs::Op::kRead) - reads, 1u + kExtents);
}

TEST(ExtentDirtyFlag, ClosingAnExtentAtRestSettlesIt) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(write(*r, 0, make_blocks(1, 1)));
  ASSERT_TRUE(r->flush(FlushNumber{4}, Generation{2}, std::nullopt));
  ASSERT_TRUE(r->close_extent(ExtentId{0}));
  ASSERT_TRUE(r->reopen_extent(ExtentId{0}));
  uint64_t syncs = fs.syncs();
  ASSERT_TRUE(write(*r, 0, make_blocks(1, 2)));
  EXPECT_EQ(fs.syncs(), syncs + 1) << "settled at close: the next write sets the flag again";
}

// ---- format version 1 ---------------------------------------------------------------------

// Rewrites extent 0's newest metadata copy as format version 1 would have written it,
// with next_slot_seq past every slot (version 1 recorded it after the first write's slots).
void make_version_1(FaultFs& fs) {
  ExtentLayout layout{kBs, kExtentSize};
  auto f = fs.open("r/00/000/000", OpenMode::kReadWrite);
  ASSERT_TRUE(f);
  std::array<std::vector<std::byte>, 2> copies;
  for (int c : {0, 1}) {
    copies[c].resize(kMetaCopyBytes);
    ASSERT_TRUE((*f)->read_at(layout.meta_offset(c), copies[c]));
  }
  auto u64 = [](const std::vector<std::byte>& b, size_t at) {
    uint64_t v = 0;
    std::memcpy(&v, b.data() + at, 8);
    return v;
  };
  int newest = u64(copies[0], 24) > u64(copies[1], 24) ? 0 : 1;
  std::vector<std::byte>& m = copies[newest];
  const uint32_t v1 = 1;
  const uint64_t far = 1000;
  std::memcpy(m.data() + 8, &v1, 4);
  std::memcpy(m.data() + 56, &far, 8);
  const uint64_t check = integrity_hash(std::span<const std::byte>(m).first(64));
  std::memcpy(m.data() + 64, &check, 8);
  ASSERT_TRUE((*f)->write_at(layout.meta_offset(newest), m));
}

TEST(ExtentFormat, AVersion1ExtentWithItsFlagSetOpensDirty) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(write(*r, 0, make_blocks(2, 1)));
  ASSERT_TRUE(r->flush(FlushNumber{4}, Generation{2}, std::nullopt));
  r.reset();
  make_version_1(fs);
  for (bool read_only : {true, false}) {
    auto again = Region::open(fs, "r", read_only);
    ASSERT_TRUE(again) << again.error().to_string();
    EXPECT_EQ((*again)->versions()[0], ver(2, 4, true)) << "read_only " << read_only;
    expect_block(read(**again, 0, 2), 1, make_blocks(2, 1), 1);
  }
}

TEST(ExtentFormat, AVersion1ExtentAtRestOpensCleanAndTakesVersion2Writes) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(write(*r, 0, make_blocks(2, 1)));
  ASSERT_TRUE(r->flush(FlushNumber{4}, Generation{2}, std::nullopt));
  ASSERT_TRUE(r->settle());
  r.reset();
  make_version_1(fs);
  auto again = Region::open(fs, "r", false);
  ASSERT_TRUE(again) << again.error().to_string();
  EXPECT_EQ((*again)->versions()[0], ver(2, 4, false));
  ASSERT_TRUE(write(**again, 1, make_blocks(1, 7)));
  ASSERT_TRUE((*again)->flush(FlushNumber{5}, Generation{2}, std::nullopt));
  again->reset();
  auto third = Region::open(fs, "r", false);
  ASSERT_TRUE(third);
  EXPECT_EQ((*third)->versions()[0], ver(2, 5, false));
  expect_block(read(**third, 1, 1), 0, make_blocks(1, 7), 0);
}

TEST(ExtentVersions, RegionFlushLimitBeyondTheLastExtentIsRefused) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(write(*r, 0, make_blocks(1, 1)));
  auto s = r->flush(FlushNumber{5}, Generation{2}, ExtentId{kExtents});
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, ErrorCode::kInvalidExtent);
  EXPECT_EQ(r->versions()[0], ver(0, 0, true)) << "nothing was flushed";
}

// ---- write-unwritten ----------------------------------------------------------------------

TEST(WriteUnwritten, SkipsBlocksAlreadyWritten) {
  // Four blocks across the boundary of extents 0 and 1 (blocks 6..9); each case has a
  // different subset already written.
  const std::vector<std::vector<size_t>> cases = {{0}, {3}, {0, 2}, {1, 3}, {1, 2}};
  for (const auto& written : cases) {
    SCOPED_TRACE(::testing::PrintToString(written));
    FaultFs fs;
    auto r = make_region(fs);
    Blocks old = make_blocks(4, 10), fresh = make_blocks(4, 20);
    for (size_t i : written) {
      Blocks one;
      one.contexts = {old.contexts[i]};
      one.data.assign(old.block(i).begin(), old.block(i).end());
      ASSERT_TRUE(write(*r, 6 + i, one));
    }
    ASSERT_TRUE(write(*r, 6, fresh, true));
    auto got = read(*r, 6, 4);
    for (size_t i = 0; i < 4; ++i) {
      bool was_written = std::find(written.begin(), written.end(), i) != written.end();
      expect_block(got, i, was_written ? old : fresh, i);
    }
  }
}

// Dirty, unlike the Rust downstairs: a replay may run it again after a replayed flush
// stamped the extent, and the next flush must stamp it again (see LastFlush in Core). No
// data or context is written, and no sync is needed (a flush leaves the flag on disk).
TEST(WriteUnwritten, DirtiesTheExtentButWritesNothingWhenEveryBlockIsSkipped) {
  FaultFs fs;
  auto r = make_region(fs);
  Blocks old = make_blocks(3, 1);
  ASSERT_TRUE(write(*r, 2, old));
  ASSERT_TRUE(r->flush(FlushNumber{4}, Generation{1}, std::nullopt));
  uint64_t writes = fs.stats().count(FaultFs::Op::kWrite), syncs = fs.syncs();
  ASSERT_TRUE(write(*r, 2, make_blocks(3, 9), true));
  EXPECT_EQ(r->versions()[0], ver(1, 4, true));
  EXPECT_EQ(fs.stats().count(FaultFs::Op::kWrite), writes);
  EXPECT_EQ(fs.syncs(), syncs);
  auto got = read(*r, 2, 3);
  for (size_t i = 0; i < 3; ++i) expect_block(got, i, old, i);
}

TEST(WriteUnwritten, TreatsADiscardedBlockAsUnwritten) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(write(*r, 3, make_blocks(2, 1)));
  ASSERT_TRUE(r->discard(BlockIndex{3}, 1));
  Blocks fresh = make_blocks(2, 5);
  ASSERT_TRUE(write(*r, 3, fresh, true));
  auto got = read(*r, 3, 2);
  expect_block(got, 0, fresh, 0);
  EXPECT_NE(got.contexts[1], std::optional<BlockContext>(fresh.contexts[1]))
      << "block 4 was written, kept";
}

// ---- IO -----------------------------------------------------------------------------------

TEST(RegionIo, ReadsAndWritesAcrossAnExtentBoundary) {
  FaultFs fs;
  auto r = make_region(fs);
  Blocks b = make_blocks(5, 3);
  ASSERT_TRUE(write(*r, 6, b));  // blocks 6..10: extents 0 and 1
  auto got = read(*r, 5, 7);
  expect_unwritten(got, 0);
  for (size_t i = 0; i < 5; ++i) expect_block(got, i + 1, b, i);
  expect_unwritten(got, 6);
  EXPECT_TRUE(r->versions()[0].dirty);
  EXPECT_TRUE(r->versions()[1].dirty);
}

TEST(RegionIo, NeverWrittenBlocksReadAsZerosWithoutContext) {
  FaultFs fs;
  auto r = make_region(fs);
  auto got = read(*r, 0, kTotal);
  for (size_t i = 0; i < kTotal; ++i) expect_unwritten(got, i);
}

TEST(RegionIo, WritesSpanningEveryExtentReadBackAfterReopen) {
  FaultFs fs;
  auto r = make_region(fs);
  Blocks b = make_blocks(kTotal, 4);
  ASSERT_TRUE(write(*r, 0, b));
  ASSERT_TRUE(r->flush(FlushNumber{1}, Generation{1}, std::nullopt));
  r.reset();
  auto again = Region::open(fs, "r", true);
  ASSERT_TRUE(again);
  auto got = read(**again, 0, kTotal);
  for (size_t i = 0; i < kTotal; ++i) expect_block(got, i, b, i);
}

// ---- refusals -----------------------------------------------------------------------------

TEST(RegionErrors, IoOutsideTheRegionIsOffsetInvalid) {
  FaultFs fs;
  auto r = make_region(fs);
  struct Case {
    uint64_t start, count;
  };
  for (Case c : {Case{kTotal, 1}, Case{kTotal + 100, 1}, Case{kTotal - 2, 3}, Case{0, kTotal + 1},
                 Case{0, 0}, Case{UINT64_MAX, 2}}) {
    SCOPED_TRACE(::testing::Message() << "start " << c.start << " count " << c.count);
    auto rd = r->read(BlockIndex{c.start}, c.count);
    ASSERT_FALSE(rd);
    EXPECT_EQ(rd.error().code, ErrorCode::kOffsetInvalid);
    Blocks b = make_blocks(c.count > kTotal + 1 ? 1 : c.count, 1);
    auto w = write(*r, c.start, b);
    ASSERT_FALSE(w);
    EXPECT_EQ(w.error().code, ErrorCode::kOffsetInvalid);
    auto d = r->discard(BlockIndex{c.start}, c.count);
    ASSERT_FALSE(d);
    EXPECT_EQ(d.error().code, ErrorCode::kOffsetInvalid);
  }
  for (const auto& v : r->versions()) EXPECT_FALSE(v.dirty);
}

TEST(RegionErrors, BlockSizeMismatchIsRefused) {
  FaultFs fs;
  auto r = make_region(fs);
  Blocks b = make_blocks(1, 1, false, 1024);
  auto s = write(*r, 0, b, false, 1024);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, ErrorCode::kBlockSizeMismatch);
  EXPECT_FALSE(r->versions()[0].dirty);
}

TEST(RegionErrors, IoTouchingAClosedExtentIsRefusedAndWritesNothing) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(r->close_extent(ExtentId{1}));
  auto w = write(*r, 6, make_blocks(4, 1));  // extents 0 and 1
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().code, ErrorCode::kExtentClosed);
  auto rd = r->read(BlockIndex{6}, 4);
  ASSERT_FALSE(rd);
  EXPECT_EQ(rd.error().code, ErrorCode::kExtentClosed);
  auto d = r->discard(BlockIndex{6}, 4);
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code, ErrorCode::kExtentClosed);
  EXPECT_FALSE(r->versions()[0].dirty);
  auto got = read(*r, 6, 2);
  expect_unwritten(got, 0);
  expect_unwritten(got, 1);
}

TEST(RegionErrors, ABadHashInAnyBlockWritesNothing) {
  for (size_t bad : {size_t{0}, size_t{2}, size_t{4}}) {
    SCOPED_TRACE(::testing::Message() << "bad block " << bad);
    FaultFs fs;
    auto r = make_region(fs);
    Blocks old = make_blocks(kTotal, 1);
    ASSERT_TRUE(write(*r, 0, old));
    ASSERT_TRUE(r->flush(FlushNumber{1}, Generation{1}, std::nullopt));
    uint64_t writes = fs.stats().count(FaultFs::Op::kWrite);
    Blocks fresh = make_blocks(5, 50);  // blocks 6..10, two extents
    fresh.contexts[bad].hash ^= 1;
    auto s = write(*r, 6, fresh);
    ASSERT_FALSE(s);
    EXPECT_EQ(s.error().code, ErrorCode::kHashMismatch);
    EXPECT_EQ(fs.stats().count(FaultFs::Op::kWrite), writes) << "nothing reached the disk";
    for (const auto& v : r->versions()) EXPECT_FALSE(v.dirty);
    auto got = read(*r, 0, kTotal);
    for (size_t i = 0; i < kTotal; ++i) expect_block(got, i, old, i);
  }
}

TEST(RegionErrors, ABadHashOnAnEncryptedRegionWritesNothing) {
  FaultFs fs;
  auto r = make_region(fs, "r", true);
  Blocks b = make_blocks(3, 7, true);
  b.data[kBs + 5] ^= std::byte{1};  // ciphertext changed after hashing
  auto s = write(*r, 0, b);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, ErrorCode::kHashMismatch);
  auto got = read(*r, 0, 3);
  for (size_t i = 0; i < 3; ++i) expect_unwritten(got, i);
}

TEST(RegionErrors, EncryptionPresenceMismatchIsRefused) {
  FaultFs fs;
  auto plain = make_region(fs, "plain", false);
  auto enc = make_region(fs, "enc", true);
  auto a = write(*plain, 0, make_blocks(2, 1, true));
  ASSERT_FALSE(a);
  EXPECT_EQ(a.error().code, ErrorCode::kEncryptionMismatch);
  auto b = write(*enc, 0, make_blocks(2, 1, false));
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, ErrorCode::kEncryptionMismatch);
  // One plain block among encrypted ones is enough.
  Blocks mixed = make_blocks(2, 1, true);
  mixed.contexts[1].encryption.reset();
  mixed.contexts[1].hash = integrity_hash(mixed.block(1));
  auto c = write(*enc, 0, mixed);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, ErrorCode::kEncryptionMismatch);
  expect_unwritten(read(*enc, 0, 1), 0);
}

TEST(RegionErrors, ModifyingAReadOnlyRegionIsRefused) {
  FaultFs fs;
  auto r = make_region(fs);
  Blocks b = make_blocks(2, 1);
  ASSERT_TRUE(write(*r, 0, b));
  ASSERT_TRUE(r->flush(FlushNumber{1}, Generation{1}, std::nullopt));
  r.reset();
  auto ro = Region::open(fs, "r", true);
  ASSERT_TRUE(ro);
  EXPECT_TRUE((*ro)->read_only());
  for (bool only_unwritten : {false, true}) {
    auto s = write(**ro, 4, make_blocks(1, 3), only_unwritten);
    ASSERT_FALSE(s);
    EXPECT_EQ(s.error().code, ErrorCode::kReadOnly);
  }
  auto d = (*ro)->discard(BlockIndex{0}, 1);
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code, ErrorCode::kReadOnly);
  auto got = read(**ro, 0, 2);
  expect_block(got, 0, b, 0);
  expect_block(got, 1, b, 1);
  EXPECT_FALSE((*ro)->begin_repair(ExtentId{0}));
}

TEST(RegionErrors, ReopeningAnOpenExtentOrClosingAClosedOneIsAnError) {
  FaultFs fs;
  auto r = make_region(fs);
  EXPECT_FALSE(r->reopen_extent(ExtentId{0}));
  ASSERT_TRUE(r->close_extent(ExtentId{0}));
  auto again = r->close_extent(ExtentId{0});
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, ErrorCode::kExtentClosed);
  EXPECT_EQ(r->close_extent(ExtentId{kExtents}).error().code, ErrorCode::kInvalidExtent);
  EXPECT_EQ(r->reopen_extent(ExtentId{kExtents}).error().code, ErrorCode::kInvalidExtent);
  EXPECT_EQ(r->flush_extent(ExtentId{0}, FlushNumber{1}, Generation{1}).error().code,
            ErrorCode::kExtentClosed);
  EXPECT_EQ(r->inspect(ExtentId{0}, 0, 1).error().code, ErrorCode::kExtentClosed);
  ASSERT_TRUE(r->reopen_extent(ExtentId{0}));
  EXPECT_TRUE(r->is_open(ExtentId{0}));
}

TEST(RegionErrors, GeometryOutsideTheLimitsIsRefusedNamingTheFlag) {
  proto::RegionDefinition good{kBs, kExtentSize, kExtents, Uuid::random(), false};
  EXPECT_TRUE(validate_geometry(good));
  struct Case {
    proto::RegionDefinition def;
    const char* flag;
  };
  auto with = [&](auto f) {
    auto d = good;
    f(d);
    return d;
  };
  for (const auto& c : {
           Case{with([](auto& d) { d.block_size = 1000; }), "--block-size"},
           Case{with([](auto& d) { d.block_size = 65536; }), "--block-size"},
           Case{with([](auto& d) { d.block_size = 256; }), "--block-size"},
           Case{with([](auto& d) { d.extent_size = 0; }), "--extent-size"},
           Case{with([](auto& d) { d.extent_size = (kMaxExtentBytes / kBs) + 1; }),
                "--extent-size"},
           Case{with([](auto& d) { d.extent_count = 0; }), "--extent-count"},
       }) {
    auto s = validate_geometry(c.def);
    ASSERT_FALSE(s) << c.flag;
    EXPECT_EQ(s.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(s.error().message.find(c.flag), std::string::npos) << s.error().message;
  }
}

TEST(RegionErrors, CreatingOverAnExistingRegionIsRefused) {
  FaultFs fs;
  auto r = make_region(fs);
  RegionOptions o;
  o.def = {kBs, kExtentSize, kExtents, Uuid::random(), false};
  auto again = Region::create(fs, "r", o);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, ErrorCode::kAlreadyExists);
}

// Extents first, region.json last: a power cut during create leaves no region (and a
// create can start over) or a whole one.
TEST(RegionCreate, APowerCutAtAnyStepLeavesNoRegionOrAWholeOne) {
  bool saw_none = false, saw_whole = false;
  for (uint64_t cut = 0;; ++cut) {
    ASSERT_LT(cut, 500u);
    bool completed = false;
    for (int mode = 0; mode < 3; ++mode) {
      SCOPED_TRACE(::testing::Message()
                   << "cut after " << cut << " mutations, crash mode " << mode);
      FaultFs fs;
      fs.cut_power_after(cut);
      RegionOptions o;
      o.def = {kBs, kExtentSize, kExtents, Uuid::random(), false};
      completed = Region::create(fs, "r", o).has_value();
      std::mt19937_64 rng(cut);
      if (mode == 0) fs.crash_drop_all();
      if (mode == 1) fs.crash_keep_all();
      if (mode == 2) fs.crash(rng);
      auto r = Region::open(fs, "r", false);
      if (!r) {
        EXPECT_EQ(r.error().code, ErrorCode::kNotFound) << r.error().to_string();
        saw_none = true;
        auto again = Region::create(fs, "r", o);
        ASSERT_TRUE(again) << "a create can start over: " << again.error().to_string();
        r = std::move(again);
      } else {
        saw_whole = true;
        EXPECT_EQ((*r)->def(), o.def);
      }
      for (const auto& v : (*r)->versions()) EXPECT_EQ(v, ver(0, 0, false));
      auto got = read(**r, 0, kTotal);
      for (size_t i = 0; i < kTotal; ++i) expect_unwritten(got, i);
    }
    if (completed) break;
  }
  EXPECT_TRUE(saw_none && saw_whole);
}

TEST(RegionErrors, OpeningADirectoryWithoutARegionIsNotFound) {
  FaultFs fs;
  ASSERT_TRUE(fs.make_dirs("empty"));
  auto r = Region::open(fs, "empty", false);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
}

TEST(RegionErrors, DiskErrorsAreReturnedNotFatal) {
  FaultFs fs;
  auto r = make_region(fs);
  Blocks b = make_blocks(2, 1);
  fs.fail_next(FaultFs::Op::kWrite);
  auto w = write(*r, 0, b);
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().code, ErrorCode::kIo);
  EXPECT_NE(w.error().message.find("injected"), std::string::npos);
  fs.fail_next(FaultFs::Op::kRead);
  EXPECT_EQ(r->read(BlockIndex{0}, 1).error().code, ErrorCode::kIo);
  ASSERT_TRUE(write(*r, 0, b));
  fs.fail_next(FaultFs::Op::kSync);
  EXPECT_EQ(r->flush(FlushNumber{1}, Generation{1}, std::nullopt).error().code, ErrorCode::kIo);
  EXPECT_TRUE(r->versions()[0].dirty) << "a failed flush leaves the extent dirty";
  ASSERT_TRUE(r->flush(FlushNumber{1}, Generation{1}, std::nullopt));
  EXPECT_EQ(r->versions()[0], ver(1, 1, false));
  auto got = read(*r, 0, 2);
  expect_block(got, 0, b, 0);
}

// ---- discard ------------------------------------------------------------------------------

TEST(Discard, DiscardedBlocksReadAsZerosWithoutContext) {
  FaultFs fs;
  auto r = make_region(fs);
  Blocks b = make_blocks(6, 1);
  ASSERT_TRUE(write(*r, 5, b));  // 5..10
  ASSERT_TRUE(r->flush(FlushNumber{1}, Generation{1}, std::nullopt));
  ASSERT_TRUE(r->discard(BlockIndex{6}, 4));  // 6..9, across the boundary
  auto got = read(*r, 5, 6);
  expect_block(got, 0, b, 0);
  for (size_t i = 1; i < 5; ++i) expect_unwritten(got, i);
  expect_block(got, 5, b, 5);
  EXPECT_TRUE(r->versions()[0].dirty);
  ASSERT_TRUE(r->flush(FlushNumber{2}, Generation{1}, std::nullopt));
  r.reset();
  auto again = Region::open(fs, "r", false);
  ASSERT_TRUE(again);
  auto after = read(**again, 5, 6);
  for (size_t i = 1; i < 5; ++i) expect_unwritten(after, i);
}

// Dirty for the same reason as a write-unwritten that skips every block.
TEST(Discard, OfUnwrittenBlocksChangesNoBlockButDirtiesTheExtents) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(r->discard(BlockIndex{0}, kTotal));
  for (const auto& v : r->versions()) EXPECT_TRUE(v.dirty);
  auto got = r->read(BlockIndex{0}, kTotal);
  ASSERT_TRUE(got);
  for (const auto& c : got->contexts) EXPECT_FALSE(c.has_value());
  EXPECT_TRUE(std::ranges::all_of(got->data.span(), [](std::byte b) { return b == std::byte{0}; }));
}

TEST(Discard, ThenWriteWorks) {
  FaultFs fs;
  auto r = make_region(fs);
  ASSERT_TRUE(write(*r, 0, make_blocks(3, 1)));
  ASSERT_TRUE(r->discard(BlockIndex{0}, 3));
  Blocks b = make_blocks(3, 9);
  ASSERT_TRUE(write(*r, 0, b));
  auto got = read(*r, 0, 3);
  for (size_t i = 0; i < 3; ++i) expect_block(got, i, b, i);
}

uint64_t allocated_blocks(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return static_cast<uint64_t>(st.st_blocks);
}

// A region of one 1 MiB extent on the real file system, written whole and flushed.
std::unique_ptr<Region> written_posix_region(const std::string& dir, Space space) {
  RegionOptions o;
  o.def = {4096, 256, 1, Uuid::random(), false};
  o.space = space;
  auto r = Region::create(posix_fs(), dir, o);
  EXPECT_TRUE(r) << r.error().to_string();
  if (!r) return nullptr;
  EXPECT_TRUE(write(**r, 0, make_blocks(256, 1, false, 4096), false, 4096));
  EXPECT_TRUE((*r)->flush(FlushNumber{1}, Generation{1}, std::nullopt));
  return std::move(*r);
}

// Discards the whole extent and flushes; returns the 512-byte units allocated before and
// after, having checked that the blocks read as unwritten zeros.
std::pair<uint64_t, uint64_t> discard_all(Region& r) {
  std::string path = r.extent_path(ExtentId{0});
  uint64_t before = allocated_blocks(path);
  EXPECT_TRUE(r.discard(BlockIndex{0}, 256));
  EXPECT_TRUE(r.flush(FlushNumber{2}, Generation{1}, std::nullopt));
  auto got = r.read(BlockIndex{0}, 256);
  EXPECT_TRUE(got);
  if (got) {
    EXPECT_TRUE(is_zero(got->data.span()));
    EXPECT_EQ(got->contexts[255], std::nullopt);
  }
  return {before, allocated_blocks(path)};
}

constexpr uint64_t kMiBIn512 = 2048;  // st_blocks counts 512-byte units

TEST(Discard, ReleasesSpaceOfASparseRegion) {
  test::TempDir tmp;
  auto r = written_posix_region(tmp.file("r"), Space::kRelease);
  ASSERT_TRUE(r);
  auto [before, after] = discard_all(*r);
  EXPECT_GE(before, after + kMiBIn512 * 9 / 10) << "before " << before << " after " << after;
}

TEST(Discard, KeepsTheSpaceOfAnAllocatedRegion) {
  test::TempDir tmp;
  auto r = written_posix_region(tmp.file("r"), Space::kKeep);
  ASSERT_TRUE(r);
  auto [before, after] = discard_all(*r);
  EXPECT_GE(after, kMiBIn512) << "before " << before << " after " << after;
}

TEST(RegionCreate, AllocatesEveryExtentFileWholeUnlessSparse) {
  test::TempDir tmp;
  for (Space space : {Space::kKeep, Space::kRelease}) {
    RegionOptions o;
    o.def = {4096, 256, 3, Uuid::random(), false};
    o.space = space;
    const std::string dir = tmp.file(space == Space::kKeep ? "kept" : "sparse");
    ASSERT_TRUE(Region::create(posix_fs(), dir, o));
    auto r = Region::open(posix_fs(), dir, false);
    ASSERT_TRUE(r) << r.error().to_string();
    for (uint32_t e = 0; e < 3; ++e) {
      uint64_t units = allocated_blocks((*r)->extent_path(ExtentId{e}));
      if (space == Space::kKeep)
        EXPECT_GE(units * 512, (*r)->extent_file_bytes()) << "extent " << e;
      else
        EXPECT_LT(units, kMiBIn512 / 2) << "extent " << e;
    }
  }
}

TEST(RegionCreate, ARegionJsonWithoutTheSparseKeyIsSparse) {
  test::TempDir tmp;
  auto r = written_posix_region(tmp.file("r"), Space::kKeep);
  ASSERT_TRUE(r);
  r.reset();
  // A region.json from before the key existed: the same fields, no "sparse".
  const std::string json_path = tmp.file("r") + "/region.json";
  auto text = read_whole_file(posix_fs(), json_path, 1 << 16);
  ASSERT_TRUE(text);
  auto j = nlohmann::json::parse(*text);
  ASSERT_EQ(j.at("sparse"), false);
  j.erase("sparse");
  ASSERT_TRUE(write_file_atomic(posix_fs(), json_path, j.dump(2)));
  auto again = Region::open(posix_fs(), tmp.file("r"), false);
  ASSERT_TRUE(again) << again.error().to_string();
  auto [before, after] = discard_all(**again);
  EXPECT_GE(before, after + kMiBIn512 * 9 / 10) << "before " << before << " after " << after;
}

TEST(RegionCreate, NoSpaceForAnExtentFailsNamingSparseAndLeavesNoExtentFiles) {
  FaultFs fs;
  RegionOptions o;
  o.def = {kBs, kExtentSize, 4, Uuid::random(), false};
  fs.fail_next(FaultFs::Op::kTruncate, 1, 2);  // the third extent's allocation
  auto r = Region::create(fs, "r", o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("--sparse"), std::string::npos) << r.error().message;
  EXPECT_EQ(fs.files(), std::vector<std::string>{}) << "extent files left behind";
  o.space = Space::kRelease;  // the same failure without preallocation names no flag
  fs.fail_next(FaultFs::Op::kTruncate, 1, 2);
  r = Region::create(fs, "s", o);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message.find("--sparse"), std::string::npos) << r.error().message;
  EXPECT_EQ(fs.files(), std::vector<std::string>{}) << "extent files left behind";
}

// ---- the real file system ------------------------------------------------------------------

TEST(RegionOnPosixFs, WriteFlushReopenRead) {
  test::TempDir tmp;
  auto r = make_region(posix_fs(), tmp.file("r"));
  ASSERT_TRUE(r);
  Blocks b = make_blocks(kTotal, 6);
  ASSERT_TRUE(write(*r, 0, b));
  ASSERT_TRUE(r->flush(FlushNumber{3}, Generation{2}, std::nullopt));
  ASSERT_TRUE(write(*r, 1, make_blocks(1, 8)));
  r.reset();
  auto again = Region::open(posix_fs(), tmp.file("r"), false);
  ASSERT_TRUE(again) << again.error().to_string();
  EXPECT_EQ((*again)->versions()[0], ver(2, 3, true));
  EXPECT_EQ((*again)->versions()[1], ver(2, 3, false));
  auto got = read(**again, 2, kTotal - 2);
  for (size_t i = 0; i + 2 < kTotal; ++i) expect_block(got, i, b, i + 2);
  auto report = verify(**again);
  ASSERT_TRUE(report);
  EXPECT_EQ(report->mismatches, 0u) << report->text;
}

TEST(RegionOnPosixFs, LargeWritesReadBackWhetherOrNotTheirPagesWereCached) {
  // The first write lands in pages not in the cache (written in pieces), the second in
  // the pages the first left there (one call): both must read back whole.
  test::TempDir tmp;
  auto r = make_region(posix_fs(), tmp.file("r"), false, 1, 512, 4096);
  ASSERT_TRUE(r);
  for (uint8_t seed : {uint8_t{3}, uint8_t{4}}) {
    Blocks b = make_blocks(300, seed, false, 4096);
    ASSERT_TRUE(write(*r, 100, b, false, 4096));
    auto got = r->read(BlockIndex{100}, 300);
    ASSERT_TRUE(got) << got.error().to_string();
    EXPECT_TRUE(std::equal(b.data.begin(), b.data.end(), got->data.data())) << "seed " << int{seed};
  }
}

TEST(RegionOnPosixFs, LayoutIsTheOriginalsThreeLevelHexPath) {
  test::TempDir tmp;
  auto r = make_region(posix_fs(), tmp.file("r"), false, 2);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->extent_path(ExtentId{1}), tmp.file("r") + "/00/000/001");
  EXPECT_EQ(r->extent_path(ExtentId{0x12345}), tmp.file("r") + "/00/012/345");
  struct stat st {};
  EXPECT_EQ(::stat((tmp.file("r") + "/region.json").c_str(), &st), 0);
  EXPECT_EQ(::stat((tmp.file("r") + "/00/000/001").c_str(), &st), 0);
}

// ---- encryption ---------------------------------------------------------------------------

TEST(EncryptedRegion, ContextsRoundTripThroughWriteAndRead) {
  FaultFs fs;
  auto r = make_region(fs, "r", true);
  Blocks b = make_blocks(5, 2, true);
  ASSERT_TRUE(write(*r, 6, b));
  auto got = read(*r, 6, 5);
  for (size_t i = 0; i < 5; ++i) {
    expect_block(got, i, b, i);
    ASSERT_TRUE(got.contexts[i]->encryption);
    EXPECT_EQ(got.contexts[i]->hash,
              expected_hash(Slot{1, 0, false, got.contexts[i]->encryption}, b.block(i)));
  }
  ASSERT_TRUE(r->flush(FlushNumber{1}, Generation{1}, std::nullopt));
  r.reset();
  auto again = Region::open(fs, "r", true);
  ASSERT_TRUE(again);
  auto after = read(**again, 6, 5);
  for (size_t i = 0; i < 5; ++i) expect_block(after, i, b, i);
}

TEST(EncryptedRegion, DiscardedBlocksHaveNoContext) {
  FaultFs fs;
  auto r = make_region(fs, "r", true);
  ASSERT_TRUE(write(*r, 0, make_blocks(2, 2, true)));
  ASSERT_TRUE(r->discard(BlockIndex{0}, 1));
  auto got = read(*r, 0, 2);
  expect_unwritten(got, 0);
  EXPECT_TRUE(got.contexts[1]->encryption);
}

// ---- repair staging ------------------------------------------------------------------------

// The bytes of a closed extent's file, as a repair source would send them.
std::vector<std::byte> extent_file(Region& source, ExtentId e) {
  auto f = source.open_for_transfer(e);
  EXPECT_TRUE(f) << f.error().to_string();
  std::vector<std::byte> bytes(source.extent_file_bytes());
  EXPECT_TRUE((*f)->read_at(0, bytes));
  return bytes;
}

struct RepairFixture {
  FaultFs fs;
  std::unique_ptr<Region> source = make_region(fs, "src");
  std::unique_ptr<Region> target = make_region(fs, "dst");
  Blocks good = make_blocks(kExtentSize, 40);
  Blocks stale = make_blocks(kExtentSize, 80);
  std::vector<std::byte> file;

  RepairFixture() {
    EXPECT_TRUE(write(*source, 0, good));
    EXPECT_TRUE(source->flush(FlushNumber{9}, Generation{2}, std::nullopt));
    EXPECT_TRUE(source->close_extent(ExtentId{0}));
    EXPECT_TRUE(write(*target, 0, stale));
    EXPECT_TRUE(target->flush(FlushNumber{3}, Generation{1}, std::nullopt));
    file = extent_file(*source, ExtentId{0});
  }
  void expect_target_is(const Blocks& b, ExtentVersion v) {
    EXPECT_EQ(target->versions()[0], v);
    auto got = read(*target, 0, kExtentSize);
    for (size_t i = 0; i < kExtentSize; ++i) expect_block(got, i, b, i);
  }
  std::string staging() const { return Extent::staging_path(target->extent_path(ExtentId{0})); }
};

TEST(RepairStaging, BeginOnAnOpenExtentIsRefused) {
  RepairFixture f;
  auto s = f.target->begin_repair(ExtentId{0});
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, ErrorCode::kRepair);
  EXPECT_EQ(f.target->begin_repair(ExtentId{kExtents}).error().code, ErrorCode::kInvalidExtent);
}

TEST(RepairStaging, OnlyOneRepairOfAnExtentAtATime) {
  RepairFixture f;
  ASSERT_TRUE(f.target->close_extent(ExtentId{0}));
  auto a = f.target->begin_repair(ExtentId{0});
  ASSERT_TRUE(a);
  auto b = f.target->begin_repair(ExtentId{0});
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, ErrorCode::kBusy);
  EXPECT_EQ(f.target->reopen_extent(ExtentId{0}).error().code, ErrorCode::kBusy);
}

TEST(RepairStaging, AChunkOutOfOrderIsRefused) {
  RepairFixture f;
  ASSERT_TRUE(f.target->close_extent(ExtentId{0}));
  auto s = f.target->begin_repair(ExtentId{0});
  ASSERT_TRUE(s);
  auto bytes = std::span<const std::byte>(f.file);
  auto skipped = (*s)->append(512, bytes.subspan(512, 512));
  ASSERT_FALSE(skipped);
  EXPECT_EQ(skipped.error().code, ErrorCode::kRepair);
  ASSERT_TRUE((*s)->append(0, bytes.first(512)));
  EXPECT_FALSE((*s)->append(0, bytes.first(512))) << "a repeated chunk is out of order too";
  EXPECT_FALSE((*s)->append(512, f.file)) << "more than an extent file";
}

TEST(RepairStaging, CommitWithAWrongHashIsRefusedAndTheOldExtentStays) {
  RepairFixture f;
  ASSERT_TRUE(f.target->close_extent(ExtentId{0}));
  {
    auto s = f.target->begin_repair(ExtentId{0});
    ASSERT_TRUE(s);
    ASSERT_TRUE((*s)->append(0, f.file));
    auto c = (*s)->commit(f.file.size(), integrity_hash(f.file) ^ 1);
    ASSERT_FALSE(c);
    EXPECT_EQ(c.error().code, ErrorCode::kRepair);
  }
  EXPECT_FALSE(*f.fs.exists(f.staging()));
  ASSERT_TRUE(f.target->reopen_extent(ExtentId{0}));
  f.expect_target_is(f.stale, ver(1, 3, false));
}

TEST(RepairStaging, CommitWithAWrongSizeIsRefusedAndTheOldExtentStays) {
  RepairFixture f;
  ASSERT_TRUE(f.target->close_extent(ExtentId{0}));
  {
    auto s = f.target->begin_repair(ExtentId{0});
    ASSERT_TRUE(s);
    auto part = std::span<const std::byte>(f.file).first(f.file.size() - 512);
    ASSERT_TRUE((*s)->append(0, part));
    auto c = (*s)->commit(part.size(), integrity_hash(part));
    ASSERT_FALSE(c);
    EXPECT_EQ(c.error().code, ErrorCode::kRepair);
  }
  ASSERT_TRUE(f.target->reopen_extent(ExtentId{0}));
  f.expect_target_is(f.stale, ver(1, 3, false));
}

TEST(RepairStaging, ACommittedFileReplacesTheExtentAfterReopen) {
  RepairFixture f;
  ASSERT_TRUE(f.target->close_extent(ExtentId{0}));
  {
    auto s = f.target->begin_repair(ExtentId{0});
    ASSERT_TRUE(s);
    ASSERT_TRUE((*s)->append(0, std::span<const std::byte>(f.file).first(4096)));
    ASSERT_TRUE((*s)->append(4096, std::span<const std::byte>(f.file).subspan(4096)));
    EXPECT_EQ((*s)->received_bytes(), f.file.size());
    ASSERT_TRUE((*s)->commit(f.file.size(), integrity_hash(f.file)));
  }
  EXPECT_FALSE(*f.fs.exists(f.staging()));
  ASSERT_TRUE(f.target->reopen_extent(ExtentId{0}));
  f.expect_target_is(f.good, ver(2, 9, false));
  // Durable: a power cut right after the commit keeps the new extent.
  f.target.reset();
  f.fs.crash_drop_all();
  auto again = Region::open(f.fs, "dst", false);
  ASSERT_TRUE(again);
  f.target = std::move(*again);
  f.expect_target_is(f.good, ver(2, 9, false));
}

TEST(RepairStaging, AFileThatIsNotAnExtentIsRefusedAtCommit) {
  RepairFixture f;
  ASSERT_TRUE(f.target->close_extent(ExtentId{0}));
  std::vector<std::byte> junk(f.file.size(), std::byte{0x5a});
  {
    auto s = f.target->begin_repair(ExtentId{0});
    ASSERT_TRUE(s);
    ASSERT_TRUE((*s)->append(0, junk));
    auto c = (*s)->commit(junk.size(), integrity_hash(junk));
    ASSERT_FALSE(c);
    EXPECT_EQ(c.error().code, ErrorCode::kRepair);
  }
  ASSERT_TRUE(f.target->reopen_extent(ExtentId{0}));
  f.expect_target_is(f.stale, ver(1, 3, false));
}

TEST(RepairStaging, DestroyingAnUncommittedStagingRemovesItsFile) {
  RepairFixture f;
  ASSERT_TRUE(f.target->close_extent(ExtentId{0}));
  {
    auto s = f.target->begin_repair(ExtentId{0});
    ASSERT_TRUE(s);
    ASSERT_TRUE((*s)->append(0, std::span<const std::byte>(f.file).first(1000)));
    EXPECT_TRUE(*f.fs.exists(f.staging()));
  }
  EXPECT_FALSE(*f.fs.exists(f.staging()));
  ASSERT_TRUE(f.target->begin_repair(ExtentId{0})) << "the extent is free to repair again";
}

// An interrupted repair (a crash or kill while receiving) leaves a staging file; the
// next open of the extent removes it and the old extent is intact.
TEST(RepairStaging, OpeningTheExtentRemovesALeftoverStagingFile) {
  for (bool whole_region : {false, true}) {
    SCOPED_TRACE(whole_region ? "Region::open" : "reopen_extent");
    RepairFixture f;
    ASSERT_TRUE(f.target->close_extent(ExtentId{0}));
    for (const auto& leftover : {f.staging(), f.target->extent_path(ExtentId{0}) + ".new"}) {
      auto file = f.fs.open(leftover, OpenMode::kCreateExclusive);
      ASSERT_TRUE(file);
      ASSERT_TRUE((*file)->write_at(0, std::span<const std::byte>(f.file).first(3000)));
      ASSERT_TRUE((*file)->sync());
    }
    ASSERT_TRUE(f.fs.sync_dir(parent_dir(f.staging())));
    if (whole_region) {
      f.target.reset();
      auto again = Region::open(f.fs, "dst", false);
      ASSERT_TRUE(again);
      f.target = std::move(*again);
    } else {
      ASSERT_TRUE(f.target->reopen_extent(ExtentId{0}));
    }
    EXPECT_FALSE(*f.fs.exists(f.staging()));
    EXPECT_FALSE(*f.fs.exists(f.target->extent_path(ExtentId{0}) + ".new"));
    f.expect_target_is(f.stale, ver(1, 3, false));
  }
}

TEST(RepairStaging, AReadOnlyOpenLeavesAStagingFileAlone) {
  RepairFixture f;
  std::string staging = f.staging();
  auto file = f.fs.open(staging, OpenMode::kCreateExclusive);
  ASSERT_TRUE(file);
  f.target.reset();
  auto ro = Region::open(f.fs, "dst", true);
  ASSERT_TRUE(ro);
  EXPECT_TRUE(*f.fs.exists(staging)) << "inspection never modifies a region";
}

// A power cut at any step of a commit leaves the old extent or the new one, whole, and
// the next open finishes the job (no staging file left).
TEST(RepairStaging, APowerCutAtAnyStepOfACommitLeavesOldOrNew) {
  bool saw_old = false, saw_new = false;
  for (uint64_t cut = 0; cut < 12; ++cut) {
    for (int mode = 0; mode < 3; ++mode) {
      SCOPED_TRACE(::testing::Message()
                   << "cut after " << cut << " mutations, crash mode " << mode);
      RepairFixture f;
      ASSERT_TRUE(f.target->close_extent(ExtentId{0}));
      {
        auto s = f.target->begin_repair(ExtentId{0});
        ASSERT_TRUE(s);
        f.fs.cut_power_after(cut);
        if ((*s)->append(0, f.file)) (void)(*s)->commit(f.file.size(), integrity_hash(f.file));
      }  // the staging's cleanup fails too once the power is out
      f.target.reset();
      std::mt19937_64 rng(cut * 3 + static_cast<uint64_t>(mode));
      if (mode == 0) f.fs.crash_drop_all();
      if (mode == 1) f.fs.crash_keep_all();
      if (mode == 2) f.fs.crash(rng);
      auto again = Region::open(f.fs, "dst", false);
      ASSERT_TRUE(again) << again.error().to_string();
      f.target = std::move(*again);
      EXPECT_FALSE(*f.fs.exists(f.staging()));
      auto v = f.target->versions()[0];
      if (v == ver(2, 9, false)) {
        saw_new = true;
        f.expect_target_is(f.good, v);
      } else {
        saw_old = true;
        f.expect_target_is(f.stale, ver(1, 3, false));
      }
    }
  }
  EXPECT_TRUE(saw_old && saw_new);
}

// ---- damaged extents -------------------------------------------------------------------------
// A replica with a bad extent file still opens: the extent is damaged (reported, its IO
// refused with kCorrupt) so that the upstairs serves it from the others and repairs it.

enum class Damage { kTruncated, kMissing, kNoValidMetadata };

// A region whose extent 2 is damaged as `how` after its other extents got data.
struct DamagedRegion {
  FaultFs fs;
  Blocks b = make_blocks(kExtentSize, 7);
  std::unique_ptr<Region> r;

  explicit DamagedRegion(Damage how) {
    auto created = make_region(fs);
    EXPECT_TRUE(write(*created, 0, b));
    EXPECT_TRUE(created->flush(FlushNumber{1}, Generation{1}, std::nullopt));
    std::string path = created->extent_path(ExtentId{2});
    ExtentLayout layout{kBs, kExtentSize};
    created.reset();
    if (how == Damage::kMissing) {
      EXPECT_TRUE(fs.remove(path));
    } else {
      auto f = fs.open(path, OpenMode::kReadWrite);
      EXPECT_TRUE(f);
      if (how == Damage::kTruncated) {
        EXPECT_TRUE((*f)->truncate(layout.file_bytes() - 4096));
      } else {
        std::vector<std::byte> junk(2 * kMetaCopyBytes, std::byte{0x5a});
        EXPECT_TRUE((*f)->write_at(layout.meta_offset(0), junk));
      }
    }
    auto again = Region::open(fs, "r", false);
    EXPECT_TRUE(again) << again.error().to_string();
    if (again) r = std::move(*again);
  }
};

class DamagedExtentFile : public ::testing::TestWithParam<Damage> {};

TEST_P(DamagedExtentFile, TheRegionOpensAndReportsOnlyThatExtentDamaged) {
  DamagedRegion d(GetParam());
  ASSERT_TRUE(d.r);
  auto v = d.r->versions();
  for (uint32_t e = 0; e < kExtents; ++e) EXPECT_EQ(v[e].damaged, e == 2) << "extent " << e;
  EXPECT_EQ(v[0], (ExtentVersion{Generation{1}, FlushNumber{1}, false, false}));
  ASSERT_TRUE(d.r->damage(ExtentId{2}));
  EXPECT_FALSE(d.r->damage(ExtentId{1}));
  expect_block(read(*d.r, 0, 1), 0, d.b, 0);
}

TEST_P(DamagedExtentFile, IoToTheDamagedExtentIsCorruptNamingIt) {
  DamagedRegion d(GetParam());
  ASSERT_TRUE(d.r);
  auto rd = d.r->read(BlockIndex{2 * kExtentSize + 1}, 1);
  ASSERT_FALSE(rd);
  EXPECT_EQ(rd.error().code, ErrorCode::kCorrupt);
  EXPECT_NE(rd.error().message.find("extent 2"), std::string::npos) << rd.error().message;
  // A read spanning a good and the damaged extent fails whole.
  EXPECT_EQ(d.r->read(BlockIndex{kExtentSize}, 2 * kExtentSize).error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(write(*d.r, 2 * kExtentSize, make_blocks(1, 3)).error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(d.r->discard(BlockIndex{2 * kExtentSize}, 1).error().code, ErrorCode::kCorrupt);
  EXPECT_TRUE(d.r->flush(FlushNumber{2}, Generation{1}, std::nullopt))
      << "a flush covers the healthy extents";
}

TEST_P(DamagedExtentFile, IsNeverARepairSourceAndClosesAndReopensStillDamaged) {
  DamagedRegion d(GetParam());
  ASSERT_TRUE(d.r);
  auto closed = d.r->close_extent(ExtentId{2});
  ASSERT_TRUE(closed) << closed.error().to_string();
  EXPECT_TRUE(closed->damaged);
  auto src = d.r->open_for_transfer(ExtentId{2});
  ASSERT_FALSE(src);
  EXPECT_EQ(src.error().code, ErrorCode::kCorrupt);
  auto reopened = d.r->reopen_extent(ExtentId{2});
  ASSERT_FALSE(reopened) << "the file is still damaged";
  EXPECT_TRUE(d.r->versions()[2].damaged);
  EXPECT_EQ(d.r->read(BlockIndex{2 * kExtentSize}, 1).error().code, ErrorCode::kCorrupt);
  EXPECT_TRUE(d.r->reopen_all()) << "a new session starts despite the damaged extent";
  EXPECT_TRUE(d.r->versions()[2].damaged);
}

TEST_P(DamagedExtentFile, ARepairRewritesTheFileAndTheExtentIsWholeAgain) {
  DamagedRegion d(GetParam());
  ASSERT_TRUE(d.r);
  auto source = make_region(d.fs, "src");
  Blocks good = make_blocks(kExtentSize, 90);
  ASSERT_TRUE(write(*source, 2 * kExtentSize, good));
  ASSERT_TRUE(source->flush(FlushNumber{4}, Generation{1}, std::nullopt));
  ASSERT_TRUE(source->close_extent(ExtentId{2}));
  std::vector<std::byte> file = extent_file(*source, ExtentId{2});
  ASSERT_TRUE(d.r->close_extent(ExtentId{2}));
  {
    auto s = d.r->begin_repair(ExtentId{2});
    ASSERT_TRUE(s) << s.error().to_string();
    ASSERT_TRUE((*s)->append(0, file));
    auto c = (*s)->commit(file.size(), integrity_hash(file));
    ASSERT_TRUE(c) << c.error().to_string();
  }
  ASSERT_TRUE(d.r->reopen_extent(ExtentId{2}));
  EXPECT_FALSE(d.r->damage(ExtentId{2}));
  EXPECT_EQ(d.r->versions()[2], ver(1, 4, false));
  auto got = read(*d.r, 2 * kExtentSize, kExtentSize);
  for (size_t i = 0; i < kExtentSize; ++i) expect_block(got, i, good, i);
}

TEST_P(DamagedExtentFile, VerifyReportsTheExtentDamaged) {
  DamagedRegion d(GetParam());
  ASSERT_TRUE(d.r);
  d.r.reset();
  auto ro = Region::open(d.fs, "r", true);
  ASSERT_TRUE(ro) << ro.error().to_string();
  EXPECT_TRUE((*ro)->versions()[2].damaged);
  auto report = verify(**ro);
  ASSERT_TRUE(report) << report.error().to_string();
  EXPECT_EQ(report->damaged_extents, 1u);
  EXPECT_NE(report->text.find("extent 2: damaged"), std::string::npos) << report->text;
}

INSTANTIATE_TEST_SUITE_P(Damage, DamagedExtentFile,
                         ::testing::Values(Damage::kTruncated, Damage::kMissing,
                                           Damage::kNoValidMetadata),
                         [](const ::testing::TestParamInfo<Damage>& p) {
                           switch (p.param) {
                             case Damage::kTruncated:
                               return "Truncated";
                             case Damage::kMissing:
                               return "Missing";
                             case Damage::kNoValidMetadata:
                               return "NoValidMetadata";
                           }
                           return "";
                         });

TEST(ExtentDamage, AFailedReopenIsDamagedUntilALaterReopenSucceeds) {
  FaultFs fs;
  auto r = make_region(fs);
  Blocks b = make_blocks(2, 5);
  ASSERT_TRUE(write(*r, kExtentSize, b));
  ASSERT_TRUE(r->flush(FlushNumber{1}, Generation{1}, std::nullopt));
  ASSERT_TRUE(r->close_extent(ExtentId{1}));
  fs.fail_next(FaultFs::Op::kRead);
  auto s = r->reopen_extent(ExtentId{1});
  ASSERT_FALSE(s) << "the failure reaches the upstairs";
  EXPECT_EQ(s.error().code, ErrorCode::kIo);
  EXPECT_TRUE(r->versions()[1].damaged);
  EXPECT_EQ(r->read(BlockIndex{kExtentSize}, 1).error().code, ErrorCode::kCorrupt);
  ASSERT_TRUE(r->reopen_all());
  EXPECT_EQ(r->versions()[1], ver(1, 1, false));
  auto got = read(*r, kExtentSize, 2);
  expect_block(got, 0, b, 0);
  expect_block(got, 1, b, 1);
}

// A dirty extent (written since its last flush, the process killed before settling) in
// which a block's bytes were overwritten on disk with bytes no context describes.
struct GarbageBlock {
  FaultFs fs;
  Blocks b = make_blocks(kExtentSize, 21);
  static constexpr uint64_t kBad = 3;

  GarbageBlock() {
    auto r = make_region(fs);
    EXPECT_TRUE(write(*r, 0, b));
    EXPECT_TRUE(r->flush(FlushNumber{1}, Generation{1}, std::nullopt));
    EXPECT_TRUE(write(*r, 6, make_blocks(1, 60)));  // dirty again: the next open scans it
    std::string path = r->extent_path(ExtentId{0});
    r.reset();  // killed: nothing settles the flag
    auto f = fs.open(path, OpenMode::kReadWrite);
    EXPECT_TRUE(f);
    std::vector<std::byte> junk(kBs, std::byte{0xa7});
    EXPECT_TRUE((*f)->write_at(ExtentLayout{kBs, kExtentSize}.data_offset(kBad), junk));
  }
  std::unique_ptr<Region> open(bool read_only) {
    auto r = Region::open(fs, "r", read_only);
    EXPECT_TRUE(r) << r.error().to_string();
    return r ? std::move(*r) : nullptr;
  }
};

TEST(ExtentDamage, AGarbageBlockInADirtyExtentIsDamagedNotRehashed) {
  GarbageBlock g;
  auto r = g.open(false);
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->versions()[0].damaged);
  EXPECT_TRUE(r->versions()[0].dirty);
  EXPECT_FALSE(r->versions()[1].damaged);
  auto rd = r->read(BlockIndex{GarbageBlock::kBad}, 1);
  ASSERT_FALSE(rd) << "the garbage was given a context";
  EXPECT_EQ(rd.error().code, ErrorCode::kCorrupt);
  EXPECT_NE(rd.error().message.find("block 3"), std::string::npos) << rd.error().message;
  auto good = read(*r, 0, GarbageBlock::kBad);
  for (size_t i = 0; i < GarbageBlock::kBad; ++i) expect_block(good, i, g.b, i);
  // Nothing was written for it: a second open (after a crash that kept every write) finds
  // it damaged again.
  r.reset();
  g.fs.crash_keep_all();
  r = g.open(false);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->read(BlockIndex{GarbageBlock::kBad}, 1).error().code, ErrorCode::kCorrupt);
}

TEST(ExtentDamage, ADamagedExtentIsNeverARepairSource) {
  GarbageBlock g;
  auto r = g.open(false);
  ASSERT_TRUE(r);
  auto closed = r->close_extent(ExtentId{0});
  ASSERT_TRUE(closed);
  EXPECT_TRUE(closed->damaged);
  EXPECT_EQ(r->open_for_transfer(ExtentId{0}).error().code, ErrorCode::kCorrupt);
}

TEST(ExtentDamage, AReadOnlyOpenAndVerifySeeTheDamagedBlock) {
  GarbageBlock g;
  auto r = g.open(true);
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->versions()[0].damaged);
  EXPECT_EQ(r->read(BlockIndex{GarbageBlock::kBad}, 1).error().code, ErrorCode::kCorrupt);
  auto report = verify(*r);
  ASSERT_TRUE(report);
  EXPECT_EQ(report->mismatches, 1u) << report->text;
  EXPECT_NE(report->text.find("block 3 "), std::string::npos) << report->text;
}

TEST(ExtentDamage, WritingTheBlockAgainMakesItWhole) {
  GarbageBlock g;
  auto r = g.open(false);
  ASSERT_TRUE(r);
  Blocks fresh = make_blocks(1, 99);
  ASSERT_TRUE(write(*r, GarbageBlock::kBad, fresh));
  EXPECT_FALSE(r->versions()[0].damaged);
  expect_block(read(*r, GarbageBlock::kBad, 1), 0, fresh, 0);
}

}  // namespace
}  // namespace cru::downstairs
