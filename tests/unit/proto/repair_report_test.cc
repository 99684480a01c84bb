// proto::repair_done_status / repair_transferred_bytes: how a repair target tells the
// upstairs the bytes that crossed the network.
#include "proto/repair_report.h"

#include <gtest/gtest.h>

namespace cru::proto {
namespace {

TEST(RepairReport, TheCountRoundTripsInAnOkStatus) {
  for (uint64_t n : {uint64_t{0}, uint64_t{1} << 20, UINT64_MAX}) {
    WireStatus s = repair_done_status(n);
    EXPECT_TRUE(s.is_ok());
    EXPECT_EQ(repair_transferred_bytes(s), n);
  }
}

TEST(RepairReport, AnOlderPeersEmptyOkStatusReportsNothing) {
  EXPECT_EQ(repair_transferred_bytes(WireStatus::ok()), std::nullopt);
}

TEST(RepairReport, AnErrorOrAMalformedMessageReportsNothing) {
  EXPECT_EQ(repair_transferred_bytes(WireStatus{ErrorCode::kIo, "transferred=5"}), std::nullopt);
  for (const char* m : {"transferred=", "transferred=-1", "transferred=12x", "transferred= 1",
                        "transferred=99999999999999999999", "Transferred=5", "sent=5"})
    EXPECT_EQ(repair_transferred_bytes(WireStatus{ErrorCode::kOk, m}), std::nullopt) << m;
}

}  // namespace
}  // namespace cru::proto
