// VolumeLayout (issue 12, sub-volumes): concatenation and striping map every volume block
// to exactly one (sub-volume, block), splits cover an IO exactly once in order, and the
// per-sub-volume grouping agrees with the block-by-block map. Checked exhaustively on
// small layouts against a block-at-a-time reference.
#include "upstairs/volume_layout.h"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <utility>

namespace cru::upstairs {
namespace {

// The reference: volume block -> (sub-volume, block), one block at a time.
std::pair<size_t, uint64_t> reference(const std::vector<uint64_t>& sizes, uint64_t stripe,
                                      uint64_t b) {
  if (stripe == 0) {
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (b < sizes[i]) return {i, b};
      b -= sizes[i];
    }
    ADD_FAILURE() << "block past the end";
    return {0, 0};
  }
  const uint64_t s = b / stripe;
  return {s % sizes.size(), (s / sizes.size()) * stripe + b % stripe};
}

// Every range [start, start + count) of the layout, split both ways, against the reference.
void check_all_ranges(const std::vector<uint64_t>& sizes, uint64_t stripe) {
  auto l = VolumeLayout::make(sizes, stripe);
  ASSERT_TRUE(l) << l.error().message;
  const uint64_t total = l->total_blocks();
  std::set<std::pair<size_t, uint64_t>> image;
  for (uint64_t b = 0; b < total; ++b) image.insert(reference(sizes, stripe, b));
  ASSERT_EQ(image.size(), total) << "the reference maps two blocks to one place";
  for (uint64_t start = 0; start < total; ++start) {
    for (uint64_t count = 1; start + count <= total; ++count) {
      auto pieces = l->split(start, count);
      uint64_t next = 0;
      for (size_t p = 0; p < pieces.size(); ++p) {
        const SubRange& r = pieces[p];
        ASSERT_EQ(r.offset, next) << "pieces out of order or overlapping";
        ASSERT_GT(r.count, 0u);
        ASSERT_LT(r.sub_volume, sizes.size());
        ASSERT_LE(r.start + r.count, sizes[r.sub_volume]);
        for (uint64_t k = 0; k < r.count; ++k)
          ASSERT_EQ(reference(sizes, stripe, start + r.offset + k),
                    std::make_pair(r.sub_volume, r.start + k))
              << "start " << start << " count " << count << " piece " << p;
        next += r.count;
      }
      ASSERT_EQ(next, count);
      if (stripe != 0) {
        ASSERT_LE(pieces.size(), count / stripe + 2);
      }

      // Grouped: the same set of (sub-volume, block), one range per sub-volume at most.
      std::set<std::pair<size_t, uint64_t>> want, got;
      for (uint64_t k = 0; k < count; ++k) want.insert(reference(sizes, stripe, start + k));
      std::set<size_t> seen;
      for (const SubRange& r : l->split_per_sub_volume(start, count)) {
        ASSERT_TRUE(seen.insert(r.sub_volume).second) << "two ranges for one sub-volume";
        ASSERT_EQ(reference(sizes, stripe, start + r.offset), std::make_pair(r.sub_volume, r.start))
            << "a group's offset is not its first block";
        for (uint64_t k = 0; k < r.count; ++k) got.insert({r.sub_volume, r.start + k});
      }
      ASSERT_EQ(got, want) << "start " << start << " count " << count;
    }
  }
}

TEST(VolumeLayout, ConcatenationMapsEveryRangeLikeTheReference) {
  check_all_ranges({5}, 0);
  check_all_ranges({3, 1, 4}, 0);
  check_all_ranges({2, 7, 2, 3}, 0);
}

TEST(VolumeLayout, StripingMapsEveryRangeLikeTheReference) {
  check_all_ranges({4, 4}, 2);
  check_all_ranges({6, 6, 6}, 2);
  check_all_ranges({9, 9, 9}, 3);
  check_all_ranges({8, 8, 8, 8}, 1);
  check_all_ranges({6}, 3);  // one sub-volume striped with itself: one piece
}

TEST(VolumeLayout, AnIoCrossingASubVolumeBoundaryIsSplitThere) {
  auto l = VolumeLayout::make({10, 20}, 0);
  ASSERT_TRUE(l);
  EXPECT_EQ(l->total_blocks(), 30u);
  EXPECT_EQ(l->split(8, 4), (std::vector<SubRange>{{0, 8, 2, 0}, {1, 0, 2, 2}}));
  EXPECT_EQ(l->first_block(1), 10u);
}

TEST(VolumeLayout, StripesGoRoundRobin) {
  auto l = VolumeLayout::make({4, 4, 4}, 2);
  ASSERT_TRUE(l);
  // Volume blocks 0..11: stripes of 2 on sub-volumes 0,1,2,0,1,2.
  EXPECT_EQ(l->split(1, 6),
            (std::vector<SubRange>{{0, 1, 1, 0}, {1, 0, 2, 1}, {2, 0, 2, 3}, {0, 2, 1, 5}}));
  EXPECT_EQ(l->split_per_sub_volume(1, 6),
            (std::vector<SubRange>{{0, 1, 2, 0}, {1, 0, 2, 1}, {2, 0, 2, 3}}));
}

TEST(VolumeLayout, OneOnOneSubVolumeIsTheIdentity) {
  auto l = VolumeLayout::make({100}, 0);
  ASSERT_TRUE(l);
  EXPECT_EQ(l->split(7, 93), (std::vector<SubRange>{{0, 7, 93, 0}}));
}

TEST(VolumeLayout, RefusesBadShapesNamingTheSubVolume) {
  EXPECT_FALSE(VolumeLayout::make({}, 0));
  auto empty = VolumeLayout::make({4, 0}, 0);
  ASSERT_FALSE(empty);
  EXPECT_NE(empty.error().message.find("sub-volume 1"), std::string::npos);
  auto unequal = VolumeLayout::make({8, 4}, 2);
  ASSERT_FALSE(unequal);
  EXPECT_NE(unequal.error().message.find("same size"), std::string::npos)
      << unequal.error().message;
  auto partial = VolumeLayout::make({6, 6}, 4);
  ASSERT_FALSE(partial);
  EXPECT_NE(partial.error().message.find("whole number"), std::string::npos)
      << partial.error().message;
}

TEST(VolumeLayout, AppendingKeepsEveryExistingBlockWhereItWas) {
  auto l = VolumeLayout::make({3, 5}, 0);
  ASSERT_TRUE(l);
  auto grown = l->appended(4);
  ASSERT_TRUE(grown) << grown.error().message;
  EXPECT_EQ(grown->total_blocks(), 12u);
  EXPECT_EQ(grown->sub_volume_count(), 3u);
  for (uint64_t b = 0; b < l->total_blocks(); ++b) EXPECT_EQ(grown->split(b, 1), l->split(b, 1));
  EXPECT_EQ(grown->split(8, 4), (std::vector<SubRange>{{2, 0, 4, 0}}));
}

TEST(VolumeLayout, AStripedVolumeRefusesToGrow) {
  auto l = VolumeLayout::make({4, 4}, 2);
  ASSERT_TRUE(l);
  auto grown = l->appended(4);
  ASSERT_FALSE(grown);
  EXPECT_NE(grown.error().message.find("striped"), std::string::npos);
}

}  // namespace
}  // namespace cru::upstairs
