// The non-blocking range lock (range_lock.h): overlapping holders wait and are granted in
// order when the range frees; disjoint ranges go at once; a grant may lock or unlock again.
#include "fuse/range_lock.h"

#include <gtest/gtest.h>

#include <vector>

namespace cru::fuse {
namespace {

TEST(RangeLock, DisjointRangesAreHeldAtOnce) {
  RangeLock l;
  auto a = l.try_lock(0, 4);
  auto b = l.try_lock(4, 8);
  ASSERT_TRUE(a);
  ASSERT_TRUE(b);
  l.unlock(*a);
  l.unlock(*b);
}

TEST(RangeLock, AnOverlappingRequestWaitsForTheUnlock) {
  RangeLock l;
  auto a = l.try_lock(0, 4);
  ASSERT_TRUE(a);
  EXPECT_FALSE(l.try_lock(3, 5));
  std::optional<RangeLock::Token> granted;
  l.lock(2, 6, [&](RangeLock::Token t) { granted = t; });
  EXPECT_FALSE(granted);
  EXPECT_EQ(l.waiting(), 1u);
  l.unlock(*a);
  ASSERT_TRUE(granted);
  EXPECT_EQ(l.waiting(), 0u);
  l.unlock(*granted);
}

TEST(RangeLock, WaitersAreGrantedInOrderAndNobodyOvertakesThem) {
  RangeLock l;
  auto held = l.try_lock(0, 10);
  ASSERT_TRUE(held);
  std::vector<int> order;
  std::vector<RangeLock::Token> tokens;
  l.lock(0, 2, [&](RangeLock::Token t) {
    order.push_back(1);
    tokens.push_back(t);
  });
  l.lock(1, 3, [&](RangeLock::Token t) {
    order.push_back(2);
    tokens.push_back(t);
  });
  // Free of what is held, but it overlaps a waiter that came first: it waits too.
  EXPECT_FALSE(l.try_lock(2, 12));
  l.unlock(*held);
  EXPECT_EQ(order, std::vector<int>{1}) << "the second overlaps the first, now held";
  l.unlock(tokens[0]);
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
  l.unlock(tokens[1]);
  EXPECT_EQ(l.waiting(), 0u);
}

TEST(RangeLock, AGrantThatFinishesAtOnceLetsTheNextWaiterGo) {
  RangeLock l;
  auto held = l.try_lock(0, 4);
  ASSERT_TRUE(held);
  int done = 0;
  // Each holder finishes inside its grant (an early error, say), unlocking re-entrantly.
  for (int i = 0; i < 3; ++i) {
    l.lock(0, 4, [&](RangeLock::Token t) {
      ++done;
      l.unlock(t);
    });
  }
  l.unlock(*held);
  EXPECT_EQ(done, 3);
  EXPECT_EQ(l.waiting(), 0u);
  EXPECT_TRUE(l.try_lock(0, 4)) << "everything released";
}

}  // namespace
}  // namespace cru::fuse
