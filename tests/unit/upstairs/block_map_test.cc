// The dependency frontier over block ranges (block_map.h): which earlier jobs a new
// blocking job (write, discard, flush, barrier) or read must follow, and forgetting
// retired jobs.
#include "upstairs/block_map.h"

#include <gtest/gtest.h>

namespace cru::upstairs {
namespace {

using Ids = std::vector<JobId>;
JobId j(uint64_t n) { return JobId{n}; }

TEST(BlockMap, FirstJobsHaveNoDependencies) {
  BlockMap m;
  EXPECT_TRUE(m.add_blocking(j(1), {0, 4}).empty());
  EXPECT_TRUE(m.add_read(j(2), {10, 2}).empty());
}

TEST(BlockMap, WriteDependsOnEachOverlappedEarlierWrite) {
  BlockMap m;
  m.add_blocking(j(1), {0, 4});
  m.add_blocking(j(2), {8, 4});
  EXPECT_EQ(m.add_blocking(j(3), {2, 8}), (Ids{j(1), j(2)}));
}

TEST(BlockMap, WriteDependsOnlyOnTheLatestWriteOfABlock) {
  BlockMap m;
  m.add_blocking(j(1), {0, 4});
  m.add_blocking(j(2), {0, 4});
  EXPECT_EQ(m.add_blocking(j(3), {1, 1}), (Ids{j(2)}));
}

TEST(BlockMap, PartlyOverwrittenRangeKeepsTheOlderWriteWhereItSurvives) {
  BlockMap m;
  m.add_blocking(j(1), {0, 8});
  m.add_blocking(j(2), {2, 2});  // [2, 4)
  EXPECT_EQ(m.add_blocking(j(3), {0, 1}), (Ids{j(1)}));
  EXPECT_EQ(m.add_blocking(j(4), {3, 1}), (Ids{j(2)}));
  EXPECT_EQ(m.add_blocking(j(5), {6, 2}), (Ids{j(1)}));
}

TEST(BlockMap, AdjacentButNotOverlappingRangesAreIndependent) {
  BlockMap m;
  m.add_blocking(j(1), {0, 4});
  EXPECT_TRUE(m.add_blocking(j(2), {4, 4}).empty());
  EXPECT_TRUE(m.add_read(j(3), {8, 1}).empty());
}

TEST(BlockMap, ReadDependsOnOverlappingWritesNotOnReads) {
  BlockMap m;
  m.add_blocking(j(1), {0, 4});
  m.add_blocking(j(2), {4, 4});
  EXPECT_EQ(m.add_read(j(3), {2, 4}), (Ids{j(1), j(2)}));
  EXPECT_EQ(m.add_read(j(4), {0, 8}), (Ids{j(1), j(2)}));
}

TEST(BlockMap, WriteAfterReadsDependsOnThoseReads) {
  BlockMap m;
  m.add_blocking(j(1), {0, 4});
  m.add_read(j(2), {0, 2});
  m.add_read(j(3), {1, 2});
  auto deps = m.add_blocking(j(4), {0, 4});
  EXPECT_TRUE(std::find(deps.begin(), deps.end(), j(2)) != deps.end());
  EXPECT_TRUE(std::find(deps.begin(), deps.end(), j(3)) != deps.end());
  // Block 3 had no read since write 1: the new write must follow write 1 there.
  EXPECT_TRUE(std::find(deps.begin(), deps.end(), j(1)) != deps.end())
      << "block 3 was only written by job 1";
}

TEST(BlockMap, WriteAfterAReadOfUnwrittenBlocksDependsOnTheRead) {
  BlockMap m;
  m.add_read(j(1), {0, 4});
  EXPECT_EQ(m.add_blocking(j(2), {2, 4}), (Ids{j(1)}));
  EXPECT_TRUE(m.add_blocking(j(3), {8, 1}).empty());
}

TEST(BlockMap, ReadsAfterAWriteAreForgottenByTheNextWrite) {
  BlockMap m;
  m.add_read(j(1), {0, 4});
  m.add_blocking(j(2), {0, 4});
  EXPECT_EQ(m.add_blocking(j(3), {0, 4}), (Ids{j(2)}));
}

TEST(BlockMap, FlushOverEverythingIsFollowedByEveryLaterJob) {
  BlockMap m;
  m.add_blocking(j(1), {0, 4});
  m.add_blocking(j(2), {100, 4});
  EXPECT_EQ(m.add_blocking(j(3), {0, 1000}), (Ids{j(1), j(2)}));
  EXPECT_EQ(m.add_read(j(4), {500, 1}), (Ids{j(3)}));
  EXPECT_EQ(m.add_blocking(j(5), {900, 10}), (Ids{j(3)}));
}

TEST(BlockMap, DependenciesAreSortedAndUnique) {
  BlockMap m;
  m.add_blocking(j(5), {0, 1});
  m.add_blocking(j(2), {1, 1});
  m.add_blocking(j(9), {2, 1});
  m.add_blocking(j(2 + 100), {3, 1});
  auto deps = m.add_blocking(j(200), {0, 4});
  EXPECT_EQ(deps, (Ids{j(2), j(5), j(9), j(102)}));
}

TEST(BlockMap, RetiredJobsAreForgotten) {
  BlockMap m;
  m.add_blocking(j(1), {0, 4});
  m.add_read(j(2), {0, 4});
  m.add_blocking(j(3), {10, 4});
  m.add_blocking(j(4), {0, 100});  // a flush
  m.retire_through(j(4));
  EXPECT_EQ(m.ranges(), 0u);
  EXPECT_TRUE(m.add_blocking(j(5), {0, 4}).empty());
  EXPECT_TRUE(m.add_read(j(6), {10, 4}).empty());
}

TEST(BlockMap, RetiringKeepsNewerJobs) {
  BlockMap m;
  m.add_blocking(j(1), {0, 4});
  m.add_blocking(j(2), {4, 4});
  m.retire_through(j(1));
  EXPECT_TRUE(m.add_blocking(j(3), {0, 4}).empty());
  EXPECT_EQ(m.add_blocking(j(4), {0, 8}), (Ids{j(2), j(3)}));
}

TEST(BlockMap, ManyWritesOverTheSameRangeStayOneRange) {
  BlockMap m;
  for (uint64_t i = 1; i <= 1000; ++i) m.add_blocking(j(i), {0, 16});
  EXPECT_EQ(m.ranges(), 1u);
}

TEST(BlockMap, NeighbouringRangesWithTheSameOwnerMerge) {
  BlockMap m;
  m.add_blocking(j(1), {0, 4});
  m.add_blocking(j(2), {4, 4});
  m.add_blocking(j(3), {0, 8});
  EXPECT_EQ(m.ranges(), 1u);
}

}  // namespace
}  // namespace cru::upstairs
