// MemoryBudget's rules without sockets: a peer over its own share, the others over the
// total less the share kept for the guaranteed connection, negotiating connections never
// held back, and waiters woken only when memory is freed.
#include "proto/memory_budget.h"

#include <gtest/gtest.h>

#include "proto/limits.h"

namespace cru::proto {
namespace {

constexpr uint64_t kPeer = kMaxFrameBytes;
constexpr uint64_t kTotal = 4 * kMaxFrameBytes;

TEST(MemoryBudget, APeerOverItsShareIsOverWhateverTheTotal) {
  MemoryBudget b({kTotal, kPeer});
  MemoryBudget::Held held{0, kPeer, 0};
  b.update(0, held.sum());
  auto over = b.over(held, true, kMaxFrameBytes);
  ASSERT_TRUE(over);
  EXPECT_TRUE(over->own);
  EXPECT_NE(over->why.find("peer memory budget"), std::string::npos) << over->why;
}

TEST(MemoryBudget, OthersMayNotUseTheShareKeptForTheGuaranteedConnection) {
  MemoryBudget b({kTotal, kPeer});
  b.update(0, kTotal - kPeer);  // others, at their limit together
  auto other = b.over({}, false, kMaxFrameBytes);
  ASSERT_TRUE(other);
  EXPECT_FALSE(other->own);
  EXPECT_FALSE(b.over({}, true, kMaxFrameBytes)) << "the guaranteed one still has its share";
  // The guaranteed connection using its share does not hold the others back.
  b.update(kTotal - kPeer, 0);
  b.update(0, kPeer - 1, true);
  EXPECT_FALSE(b.over({}, false, kMaxFrameBytes));
}

TEST(MemoryBudget, ANegotiatingConnectionIsNeverHeldBackByOthers) {
  MemoryBudget b({kTotal, kPeer});
  b.update(0, kTotal);
  EXPECT_FALSE(b.over({8 * kKiB, 0, 0}, false, 16 * kKiB));
  EXPECT_TRUE(b.over({8 * kKiB, 0, 0}, false, kMaxFrameBytes));
}

TEST(MemoryBudget, WaitersAreWokenOnceWhenMemoryIsFreed) {
  MemoryBudget b({kTotal, kPeer});
  int woken = 0;
  b.wait([&] { ++woken; });
  auto cancelled = b.wait([&] { woken += 100; });
  b.cancel(cancelled);
  b.update(0, 10);
  EXPECT_EQ(woken, 0) << "nothing was freed";
  b.update(10, 5);
  EXPECT_EQ(woken, 1);
  b.update(5, 0);
  EXPECT_EQ(woken, 1) << "a waiter is woken once";
  EXPECT_EQ(b.peak_bytes(), 10u);
}

}  // namespace
}  // namespace cru::proto
