// The scrub's pure plan (upstairs/scrub_plan.h): chunks in order from the resume point and
// never past the parent's end, when progress must be made durable, the token bucket's
// spacing of chunks at the rate limit, and the ETA.
#include "upstairs/scrub_plan.h"

#include <gtest/gtest.h>

namespace cru::upstairs {
namespace {

using namespace std::chrono_literals;

TEST(ScrubPlan, ChunksCoverTheParentInOrderAndStopAtItsEnd) {
  ScrubPlan p(10, 4, 0, 100);
  std::vector<BlockRange> got;
  while (auto r = p.next()) {
    got.push_back(*r);
    p.copied(*r);
  }
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].start, 0u);
  EXPECT_EQ(got[0].count, 4u);
  EXPECT_EQ(got[1].start, 4u);
  EXPECT_EQ(got[2].start, 8u);
  EXPECT_EQ(got[2].count, 2u) << "the last chunk ends at the parent's end";
  EXPECT_TRUE(p.done());
}

TEST(ScrubPlan, ResumesAtTheRecordedPointNotAtZero) {
  ScrubPlan p(100, 8, 40, 1000);
  EXPECT_EQ(p.resumed_from(), 40u);
  EXPECT_EQ(p.durable_block(), 40u);
  ASSERT_TRUE(p.next());
  EXPECT_EQ(p.next()->start, 40u);
  ScrubPlan past(100, 8, 500, 1000);  // a record past the end: nothing left
  EXPECT_TRUE(past.done());
  EXPECT_FALSE(past.next());
}

TEST(ScrubPlan, CheckpointIsDueAfterEnoughBlocksOrTimeOrAtTheEnd) {
  ScrubPlan p(100, 10, 0, 30);
  EXPECT_FALSE(p.checkpoint_due(1h)) << "nothing copied, nothing to record";
  p.copied(*p.next());
  EXPECT_FALSE(p.checkpoint_due(0s));
  EXPECT_TRUE(p.checkpoint_due(kScrubCheckpointInterval)) << "time passed";
  p.copied(*p.next());
  p.copied(*p.next());
  EXPECT_TRUE(p.checkpoint_due(0s)) << "30 blocks copied";
  p.checkpointed();
  EXPECT_EQ(p.durable_block(), 30u);
  EXPECT_FALSE(p.checkpoint_due(0s));
  while (auto r = p.next()) p.copied(*r);
  EXPECT_EQ(p.next_block(), 100u);
  EXPECT_TRUE(p.checkpoint_due(0s)) << "done: the end is recorded at once";
}

TEST(RateLimiter, SpacesChunksAtTheRateAfterTheBurst) {
  const TimePoint t0 = TimePoint{} + 1000h;
  RateLimiter r(1024 * 1024, 1024 * 1024);  // 1 MiB/s, bursts of 1 MiB
  // Idle before: one burst goes at once, then the rest at the rate.
  EXPECT_EQ(r.reserve(1024 * 1024, t0), t0);
  EXPECT_EQ(r.reserve(1024 * 1024, t0), t0 + 1s);
  EXPECT_EQ(r.reserve(512 * 1024, t0), t0 + 1500ms);
  EXPECT_EQ(r.reserve(512 * 1024, t0), t0 + 2s);
  // Over a long run the average is the rate.
  RateLimiter s(4096 * 100, 4096);  // 100 blocks a second
  TimePoint now = t0;
  for (int i = 0; i < 1000; ++i) now = s.reserve(4096, now);
  EXPECT_NEAR(std::chrono::duration<double>(now - t0).count(), 9.99, 0.001);
}

TEST(RateLimiter, IdleTimeEarnsAtMostOneBurst) {
  const TimePoint t0 = TimePoint{} + 1000h;
  RateLimiter r(1000, 2000);  // 1000 bytes/s, bursts of 2000
  const TimePoint later = t0 + 1h;
  EXPECT_EQ(r.reserve(1000, later), later);
  EXPECT_EQ(r.reserve(1000, later), later);
  EXPECT_EQ(r.reserve(1000, later), later + 1s) << "an hour idle is not an hour of credit";
}

TEST(ScrubEta, RemainingBytesOverTheRate) {
  auto e = scrub_eta_s(256, 4096, 1024 * 1024);
  ASSERT_TRUE(e);
  EXPECT_DOUBLE_EQ(*e, 1.0);
  EXPECT_FALSE(scrub_eta_s(10, 4096, 0)) << "no rate measured yet: no ETA";
  EXPECT_EQ(scrub_eta_s(0, 4096, 0), 0.0);
}

}  // namespace
}  // namespace cru::upstairs
