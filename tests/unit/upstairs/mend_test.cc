// Reconciliation's per-extent choice (mend.h): which extents need repair, which copy is
// the source, which copies receive it.
#include "upstairs/mend.h"

#include <gtest/gtest.h>

namespace cru::upstairs {
namespace {

using proto::ExtentVersion;
constexpr ClientId kC0{0}, kC1{1}, kC2{2};
const std::vector<ClientId> kThree = {kC0, kC1, kC2};

ExtentVersion v(uint64_t gen, uint64_t flush, bool dirty = false) {
  return ExtentVersion{Generation{gen}, FlushNumber{flush}, dirty};
}

ClientData<ExtentVersion> three(ExtentVersion a, ExtentVersion b, ExtentVersion c) {
  ClientData<ExtentVersion> d;
  d[kC0] = a;
  d[kC1] = b;
  d[kC2] = c;
  return d;
}

TEST(Mend, EqualCleanCopiesNeedNothing) {
  EXPECT_FALSE(mend_extent(ExtentId{0}, three(v(1, 5), v(1, 5), v(1, 5)), kThree));
  EXPECT_FALSE(mend_extent(ExtentId{0}, three(v(0, 0), v(0, 0), v(0, 0)), kThree));
}

TEST(Mend, HighestFlushIsTheSourceAndOnlyDifferingCopiesAreDestinations) {
  auto m = mend_extent(ExtentId{3}, three(v(1, 5), v(1, 7), v(1, 5)), kThree);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->extent, ExtentId{3});
  EXPECT_EQ(m->source, kC1);
  EXPECT_EQ(m->dests, (std::vector<ClientId>{kC0, kC2}));
  m = mend_extent(ExtentId{0}, three(v(1, 7), v(1, 7), v(1, 5)), kThree);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->source, kC0);
  EXPECT_EQ(m->dests, (std::vector<ClientId>{kC2}));
}

TEST(Mend, GenerationOutranksFlushNumber) {
  auto m = mend_extent(ExtentId{0}, three(v(1, 9), v(2, 1), v(1, 9)), kThree);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->source, kC1);
  EXPECT_EQ(m->dests, (std::vector<ClientId>{kC0, kC2}));
}

TEST(Mend, DirtyCopyIsPreferredAtEqualNumbersAndEveryOtherCopyReceivesIt) {
  auto m = mend_extent(ExtentId{0}, three(v(1, 5), v(1, 5), v(1, 5, true)), kThree);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->source, kC2);
  EXPECT_EQ(m->dests, (std::vector<ClientId>{kC0, kC1}));
}

TEST(Mend, DirtyCopyWithLowerNumbersIsNotTheSourceButIsRepaired) {
  auto m = mend_extent(ExtentId{0}, three(v(1, 4, true), v(1, 5), v(1, 5)), kThree);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->source, kC1);
  EXPECT_EQ(m->dests, (std::vector<ClientId>{kC0}));
}

TEST(Mend, TiesGoToTheLowestClient) {
  auto m = mend_extent(ExtentId{0}, three(v(1, 5, true), v(1, 5, true), v(1, 5, true)), kThree);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->source, kC0);
  EXPECT_EQ(m->dests, (std::vector<ClientId>{kC1, kC2}));
  m = mend_extent(ExtentId{0}, three(v(1, 3), v(1, 6), v(1, 6)), kThree);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->source, kC1);
  EXPECT_EQ(m->dests, (std::vector<ClientId>{kC0}));
}

TEST(Mend, OnlyPresentClientsTakePart) {
  // Client 1 is absent: its (wildly different) version is ignored.
  auto d = three(v(1, 5), v(9, 9, true), v(1, 5));
  EXPECT_FALSE(mend_extent(ExtentId{0}, d, {kC0, kC2}));
  auto m = mend_extent(ExtentId{0}, three(v(1, 5), v(9, 9), v(1, 6)), {kC0, kC2});
  ASSERT_TRUE(m);
  EXPECT_EQ(m->source, kC2);
  EXPECT_EQ(m->dests, (std::vector<ClientId>{kC0}));
}

TEST(Mend, PlanListsOnlyExtentsThatNeedRepairInOrder) {
  ClientData<std::vector<ExtentVersion>> versions;
  versions[kC0] = {v(1, 1), v(1, 2), v(1, 3), v(1, 4, true)};
  versions[kC1] = {v(1, 1), v(1, 1), v(1, 3), v(1, 4)};
  versions[kC2] = {v(1, 1), v(1, 2), v(2, 1), v(1, 4)};
  auto plan = plan_mend(versions, kThree);
  ASSERT_EQ(plan.size(), 3u);
  EXPECT_EQ(plan[0].extent, ExtentId{1});
  EXPECT_EQ(plan[0].source, kC0);
  EXPECT_EQ(plan[0].dests, (std::vector<ClientId>{kC1}));
  EXPECT_EQ(plan[1].extent, ExtentId{2});
  EXPECT_EQ(plan[1].source, kC2);
  EXPECT_EQ(plan[1].dests, (std::vector<ClientId>{kC0, kC1}));
  EXPECT_EQ(plan[2].extent, ExtentId{3});
  EXPECT_EQ(plan[2].source, kC0);
  EXPECT_EQ(plan[2].dests, (std::vector<ClientId>{kC1, kC2}));
}

TEST(Mend, FreshRegionsNeedNoPlan) {
  ClientData<std::vector<ExtentVersion>> versions(std::vector<ExtentVersion>(16));
  EXPECT_TRUE(plan_mend(versions, kThree).empty());
}

// ---- damaged copies ----------------------------------------------------------------------

// A copy its downstairs cannot vouch for (file unreadable, or a block matching no context).
ExtentVersion damaged(uint64_t gen, uint64_t flush, bool dirty = false) {
  return ExtentVersion{Generation{gen}, FlushNumber{flush}, dirty, true};
}

TEST(MendDamaged, ADamagedCopyWithTheHighestNumbersIsNotTheSource) {
  auto m = mend_extent(ExtentId{0}, three(damaged(2, 9, true), v(1, 5), v(1, 5)), kThree);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->source, kC1);
  EXPECT_EQ(m->dests, (std::vector<ClientId>{kC0}));
}

TEST(MendDamaged, ADamagedCopyWithEqualCleanNumbersIsStillRepaired) {
  auto m = mend_extent(ExtentId{1}, three(v(1, 5), damaged(1, 5), v(1, 5)), kThree);
  ASSERT_TRUE(m) << "equal numbers say nothing about a damaged copy's bytes";
  EXPECT_EQ(m->source, kC0);
  EXPECT_EQ(m->dests, (std::vector<ClientId>{kC1}));
}

TEST(MendDamaged, AnUnreadableFileIsRepairedFromTheHealthyCopies) {
  // A file that could not be opened reports (0, 0, clean, damaged).
  auto m = mend_extent(ExtentId{0}, three(v(3, 7), v(3, 7), damaged(0, 0)), kThree);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->source, kC0);
  EXPECT_EQ(m->dests, (std::vector<ClientId>{kC2}));
}

TEST(MendDamaged, TheOnlyHealthyCopyIsTheSourceForBothOthers) {
  auto m = mend_extent(ExtentId{0}, three(damaged(1, 9), damaged(1, 8, true), v(1, 2)), kThree);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->source, kC2);
  EXPECT_EQ(m->dests, (std::vector<ClientId>{kC0, kC1}));
}

TEST(MendDamaged, WithEveryCopyDamagedThereIsNoSource) {
  EXPECT_FALSE(
      mend_extent(ExtentId{0}, three(damaged(1, 9), damaged(1, 8, true), damaged(0, 0)), kThree));
}

TEST(MendDamaged, TwoPresentCopiesOneDamaged) {
  auto m = mend_extent(ExtentId{0}, three(damaged(4, 4), v(0, 0), v(1, 1)), {kC0, kC2});
  ASSERT_TRUE(m);
  EXPECT_EQ(m->source, kC2);
  EXPECT_EQ(m->dests, (std::vector<ClientId>{kC0}));
}

TEST(MendDamaged, PlanRepairsEveryDamagedExtentAndNoOther) {
  ClientData<std::vector<ExtentVersion>> versions;
  versions[kC0] = {v(1, 3), damaged(1, 3), v(1, 3)};
  versions[kC1] = {v(1, 3), v(1, 3), v(1, 3)};
  versions[kC2] = {v(1, 3), v(1, 3), damaged(0, 0)};
  auto plan = plan_mend(versions, kThree);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].extent, ExtentId{1});
  EXPECT_EQ(plan[0].dests, (std::vector<ClientId>{kC0}));
  EXPECT_NE(plan[0].source, kC0);
  EXPECT_EQ(plan[1].extent, ExtentId{2});
  EXPECT_EQ(plan[1].dests, (std::vector<ClientId>{kC2}));
  EXPECT_NE(plan[1].source, kC2);
}

}  // namespace
}  // namespace cru::upstairs
