// The downstairs' checks of a request against the region, one test per class of bad
// field: each is refused with its typed code and a message naming the field, before the
// core queues or allocates anything (tests/unit/downstairs/core_test.cc shows the core
// answering with these errors).
#include "downstairs/request_check.h"

#include <gtest/gtest.h>

#include "proto/codec.h"
#include "proto/limits.h"

namespace cru::downstairs {
namespace {

using namespace cru::proto;

// 4 KiB blocks, 16 extents of 16384 blocks (64 MiB): a Read of 100,000 blocks is inside
// the region but its reply (400 MB) is not a frame.
const RegionDefinition kDef{4096, 16384, 16, Uuid{}, false};

void expect_refused(const Message& m, ErrorCode code, const std::string& mentions) {
  Status s = check_request(m, kDef);
  ASSERT_FALSE(s) << describe(m) << " was accepted";
  EXPECT_EQ(s.error().code, code) << s.error().to_string();
  EXPECT_NE(s.error().message.find(mentions), std::string::npos) << s.error().message;
}

Write write_of(uint64_t job, uint64_t start, size_t blocks, uint32_t block_size = 4096) {
  Write w;
  w.job_id = JobId{job};
  w.start = BlockIndex{start};
  w.block_size = block_size;
  w.contexts.resize(blocks);
  w.data = Bytes::zeros(blocks * block_size);
  return w;
}

TEST(RequestCheck, WellFormedRequestsPass) {
  EXPECT_TRUE(check_request(write_of(1000, 0, 4), kDef));
  EXPECT_TRUE(check_request(Read{JobId{1001}, {JobId{1000}}, BlockIndex{5}, 256}, kDef));
  EXPECT_TRUE(check_request(
      Flush{JobId{1002}, {JobId{1001}}, FlushNumber{1}, Generation{1}, std::nullopt, ExtentId{15}},
      kDef));
  EXPECT_TRUE(check_request(ExtentClose{RepairId{1}, ExtentId{3}}, kDef));
  EXPECT_TRUE(check_request(Ruok{}, kDef)) << "not a request: nothing to check";
}

TEST(RequestCheck, AReadWhoseReplyCannotFitAFrameIsIoTooLarge) {
  // The probe from issue 10: 100,000 blocks of 4 KiB.
  expect_refused(Read{JobId{1000}, {}, BlockIndex{0}, 100000}, ErrorCode::kIoTooLarge,
                 "100000 blocks of 4096 bytes");
  const uint32_t most = static_cast<uint32_t>(kMaxIoBytes / 4096);
  EXPECT_TRUE(check_request(Read{JobId{1000}, {}, BlockIndex{0}, most}, kDef));
  expect_refused(Read{JobId{1000}, {}, BlockIndex{0}, most + 1}, ErrorCode::kIoTooLarge,
                 "limit of one IO");
}

TEST(RequestCheck, IoOutsideTheRegionIsOffsetInvalid) {
  const uint64_t total = kDef.total_blocks();
  expect_refused(Read{JobId{1000}, {}, BlockIndex{total}, 1}, ErrorCode::kOffsetInvalid,
                 "outside the region");
  expect_refused(Read{JobId{1000}, {}, BlockIndex{total - 1}, 2}, ErrorCode::kOffsetInvalid,
                 "outside the region");
  // start + count would overflow u64: still outside, not wrapped inside.
  expect_refused(Discard{JobId{1000}, {}, BlockIndex{UINT64_MAX}, 2}, ErrorCode::kOffsetInvalid,
                 "outside the region");
  expect_refused(write_of(1000, total - 1, 2), ErrorCode::kOffsetInvalid, "outside the region");
}

TEST(RequestCheck, AWriteWithAnotherBlockSizeIsABlockSizeMismatch) {
  expect_refused(write_of(1000, 0, 2, 512), ErrorCode::kBlockSizeMismatch, "512-byte blocks");
}

TEST(RequestCheck, WriteDataThatDoesNotMatchItsContextsIsAProtocolError) {
  Write w = write_of(1000, 0, 2);
  w.data = Bytes::zeros(4096 * 2 + 1);
  expect_refused(w, ErrorCode::kProtocol, "not a multiple of the block size");
  w.data = Bytes::zeros(4096 * 3);
  expect_refused(w, ErrorCode::kProtocol, "2 contexts but 3 blocks");
}

TEST(RequestCheck, ExtentNumbersBeyondTheRegionAreInvalidExtent) {
  const ExtentId beyond{16};
  expect_refused(ExtentClose{RepairId{1}, beyond}, ErrorCode::kInvalidExtent, "extent 16");
  expect_refused(ExtentFlush{RepairId{1}, beyond, ClientId{0}, FlushNumber{1}, Generation{1}},
                 ErrorCode::kInvalidExtent, "extent 16");
  expect_refused(ExtentReopen{RepairId{1}, beyond}, ErrorCode::kInvalidExtent, "extent 16");
  expect_refused(ExtentRepair{RepairId{1}, beyond, ClientId{0}, "127.0.0.1:3810", {ClientId{1}}},
                 ErrorCode::kInvalidExtent, "extent 16");
  expect_refused(ExtentLiveClose{JobId{1000}, {}, ExtentId{UINT32_MAX}}, ErrorCode::kInvalidExtent,
                 "does not exist");
  expect_refused(ExtentLiveFlushClose{JobId{1000}, {}, beyond, FlushNumber{1}, Generation{1}},
                 ErrorCode::kInvalidExtent, "extent 16");
  expect_refused(ExtentLiveRepair{JobId{1000}, {}, beyond, ClientId{0}, "127.0.0.1:3810"},
                 ErrorCode::kInvalidExtent, "extent 16");
  expect_refused(ExtentLiveReopen{JobId{1000}, {}, beyond}, ErrorCode::kInvalidExtent, "extent 16");
}

TEST(RequestCheck, AFlushExtentLimitBeyondTheRegionIsInvalidExtent) {
  expect_refused(Flush{JobId{1000}, {}, FlushNumber{1}, Generation{1}, std::nullopt, ExtentId{16}},
                 ErrorCode::kInvalidExtent, "extent 16");
}

TEST(RequestCheck, ARepairSourceThatIsNotHostPortIsInvalidArgument) {
  expect_refused(ExtentRepair{RepairId{1}, ExtentId{0}, ClientId{0}, "no port", {ClientId{1}}},
                 ErrorCode::kInvalidArgument, "repair source");
  expect_refused(ExtentLiveRepair{JobId{1000}, {}, ExtentId{0}, ClientId{0}, ""},
                 ErrorCode::kInvalidArgument, "repair source");
}

TEST(RequestCheck, JobIdZeroAndDependenciesOnLaterJobsAreProtocolErrors) {
  expect_refused(Barrier{JobId{0}, {}}, ErrorCode::kProtocol, "job id 0");
  expect_refused(Barrier{JobId{1000}, {JobId{1000}}}, ErrorCode::kProtocol, "depends on job 1000");
  expect_refused(Read{JobId{1000}, {JobId{999}, JobId{5000}}, BlockIndex{0}, 1},
                 ErrorCode::kProtocol, "depends on job 5000");
}

TEST(RequestCheck, ProtocolLimitsAreCheckedForMessagesNotFromTheDecoder) {
  std::vector<JobId> deps(kMaxDependencies + 1, JobId{1});
  expect_refused(Barrier{JobId{1000}, deps}, ErrorCode::kProtocol, "dependencies exceed");
  expect_refused(ExtentRepair{RepairId{1},
                              ExtentId{0},
                              ClientId{0},
                              std::string(kMaxStringBytes + 1, 'a'),
                              {ClientId{1}}},
                 ErrorCode::kProtocol, "string of");
  expect_refused(Read{JobId{1000}, {}, BlockIndex{0}, 0}, ErrorCode::kProtocol, "zero blocks");
}

TEST(RequestCheck, ErrorRepliesHaveTheShapeOfTheRequestsAnswer) {
  Error e{ErrorCode::kIoTooLarge, "too big"};
  auto r = error_reply(Read{JobId{1000}, {}, BlockIndex{0}, 1}, e);
  ASSERT_TRUE(r && std::holds_alternative<ReadResponse>(*r));
  EXPECT_EQ(std::get<ReadResponse>(*r).status.code, ErrorCode::kIoTooLarge);
  EXPECT_TRUE(validate(*r)) << "an error ReadResponse carries no contexts or data";
  auto a = error_reply(write_of(1001, 0, 1), e);
  ASSERT_TRUE(a && std::holds_alternative<Ack>(*a));
  EXPECT_EQ(std::get<Ack>(*a).job_id, JobId{1001});
  auto lc = error_reply(ExtentLiveClose{JobId{1002}, {}, ExtentId{0}}, e);
  ASSERT_TRUE(lc && std::holds_alternative<ExtentLiveCloseAck>(*lc));
  auto ra = error_reply(ExtentReopen{RepairId{7}, ExtentId{0}}, e);
  ASSERT_TRUE(ra && std::holds_alternative<RepairAck>(*ra));
  EXPECT_EQ(std::get<RepairAck>(*ra).repair_id, RepairId{7});
  EXPECT_FALSE(error_reply(HereIAm{}, e)) << "negotiation is refused by closing, not a reply";
}

}  // namespace
}  // namespace cru::downstairs
