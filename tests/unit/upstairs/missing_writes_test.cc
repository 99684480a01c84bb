// The per-downstairs record of writes it may lack (missing_writes.h): the oldest one is
// what the flush quorum compares against; a live repair clears an extent, and "every
// extent" clears as the repair passes them in order.
#include "upstairs/missing_writes.h"

#include <gtest/gtest.h>

namespace cru::upstairs {
namespace {

TEST(MissingWrites, StartsEmpty) {
  MissingWrites m;
  EXPECT_TRUE(m.empty());
  EXPECT_FALSE(m.oldest());
}

TEST(MissingWrites, OldestIsTheOldestWriteOverEveryExtent) {
  MissingWrites m;
  m.add(ExtentId{3}, ExtentId{3}, JobId{1010});
  m.add(ExtentId{1}, ExtentId{2}, JobId{1005});
  m.add(ExtentId{2}, ExtentId{2}, JobId{1020});  // later write to an extent already missing one
  EXPECT_EQ(m.oldest(), JobId{1005});
  m.repaired(ExtentId{1});
  EXPECT_EQ(m.oldest(), JobId{1005}) << "extent 2 still misses job 1005";
  m.repaired(ExtentId{2});
  EXPECT_EQ(m.oldest(), JobId{1010});
  m.repaired(ExtentId{3});
  EXPECT_TRUE(m.empty());
}

TEST(MissingWrites, EveryExtentClearsAsTheRepairPassesThemInOrder) {
  MissingWrites m;
  m.add_all(JobId{1100}, 3);
  m.add(ExtentId{2}, ExtentId{2}, JobId{1200});
  EXPECT_EQ(m.oldest(), JobId{1100});
  m.repaired(ExtentId{1});  // not the next extent of the repair: proves nothing for extent 0
  EXPECT_EQ(m.oldest(), JobId{1100});
  m.repaired(ExtentId{0});
  m.repaired(ExtentId{1});
  EXPECT_EQ(m.oldest(), JobId{1100});
  m.repaired(ExtentId{2});
  EXPECT_TRUE(m.empty());
}

TEST(MissingWrites, ClearForgetsEverything) {
  MissingWrites m;
  m.add_all(JobId{1100}, 3);
  m.add(ExtentId{0}, ExtentId{1}, JobId{1001});
  m.clear();
  EXPECT_TRUE(m.empty());
}

}  // namespace
}  // namespace cru::upstairs
