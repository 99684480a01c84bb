// Snapshots: name rules, making one by copy and by reflink (FaultFs), what a snapshot holds
// after the live region moves on, refusals, list/delete, power cuts at every step of making
// one, and the core's answer to a flush that carries a snapshot name.
#include "downstairs/snapshot.h"

#include <gtest/gtest.h>

#include <random>

#include "common/hash.h"
#include "downstairs/core.h"
#include "support/fault_fs.h"

namespace cru::downstairs {
namespace {

using proto::BlockContext;
using test::FaultFs;

constexpr uint32_t kBs = 512;
constexpr uint64_t kExtentSize = 8;
constexpr uint32_t kExtents = 4;

std::unique_ptr<Region> make_region(FileSystem& fs, const std::string& dir = "r") {
  RegionOptions o;
  o.def = {kBs, kExtentSize, kExtents, Uuid::random(), false};
  auto r = Region::create(fs, dir, o);
  CRU_ASSERT(r.has_value(), "creating a test region");
  return std::move(*r);
}

// n blocks of bytes derived from seed, with their contexts.
std::pair<std::vector<BlockContext>, std::vector<std::byte>> blocks(size_t n, uint8_t seed) {
  std::vector<std::byte> data(n * kBs);
  for (size_t i = 0; i < data.size(); ++i)
    data[i] = static_cast<std::byte>(seed + 1 + i / kBs * 13 + i % 97);
  std::vector<BlockContext> contexts;
  for (size_t i = 0; i < n; ++i)
    contexts.push_back({integrity_hash(std::span(data).subspan(i * kBs, kBs)), std::nullopt});
  return {contexts, data};
}

void write(Region& r, uint64_t start, size_t n, uint8_t seed) {
  auto [contexts, data] = blocks(n, seed);
  ASSERT_TRUE(r.write(BlockIndex{start}, kBs, contexts, data, false));
}

std::vector<std::byte> read_all(Region& r) {
  auto res = r.read(BlockIndex{0}, kExtentSize * kExtents);
  EXPECT_TRUE(res) << res.error().to_string();
  if (!res) return {};
  return std::vector<std::byte>(res->data.span().begin(), res->data.span().end());
}

// A region with data in two extents, flushed (flush 1, generation 1).
std::unique_ptr<Region> flushed_region(FileSystem& fs) {
  auto r = make_region(fs);
  write(*r, 2, 3, 1);
  write(*r, 3 * kExtentSize + 1, 2, 2);
  EXPECT_TRUE(r->flush(FlushNumber{1}, Generation{1}, std::nullopt));
  return r;
}

Result<SnapshotInfo> snap(Region& r, const std::string& name, uint64_t flush = 1) {
  return make_snapshot(r, name, FlushNumber{flush}, Generation{1}, {});
}

// ---- names ---------------------------------------------------------------------------------

TEST(SnapshotName, AcceptsOrdinaryNames) {
  for (const char* n : {"a", "before-upgrade", "2026-12-01T10:00", "v1.2_final", "A~b+c@d"})
    EXPECT_TRUE(validate_snapshot_name(n)) << n;
  EXPECT_TRUE(validate_snapshot_name(std::string(proto::kSnapshotNameBytesMax, 'x')));
}

TEST(SnapshotName, RefusesPathsHiddenNamesAndOddBytes) {
  struct Case {
    std::string name, says;
  };
  for (const auto& c : std::vector<Case>{
           {"", "empty"},
           {"a/b", "path separator"},
           {"..", "starts with '.'"},
           {".hidden", "starts with '.'"},
           {"a\\b", "path separator"},
           {"-rf", "starts with '-'"},
           {"with space", "byte 0x20"},
           {"tab\there", "byte 0x09"},
           {"nul" + std::string(1, '\0'), "byte 0x00"},
           {"caf\xc3\xa9", "byte 0xc3"},
           {std::string(proto::kSnapshotNameBytesMax + 1, 'x'), "at most 128 bytes"},
       }) {
    Status s = validate_snapshot_name(c.name);
    ASSERT_FALSE(s) << c.name;
    EXPECT_EQ(s.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(s.error().message.find(c.says), std::string::npos) << s.error().message;
  }
}

// ---- making one ----------------------------------------------------------------------------

TEST(Snapshot, CopyHoldsTheDataAsOfTheFlushAfterTheRegionMovesOn) {
  FaultFs fs;
  auto r = flushed_region(fs);
  const auto before = read_all(*r);
  std::vector<SnapshotProgress> progress;
  auto info = make_snapshot(*r, "s1", FlushNumber{1}, Generation{1},
                            [&](const SnapshotProgress& p) { progress.push_back(p); });
  ASSERT_TRUE(info) << info.error().to_string();
  EXPECT_EQ(info->method, SnapshotMethod::kCopy);  // FaultFs without reflink
  EXPECT_GT(info->bytes_copied, 0u);
  ASSERT_EQ(progress.size(), kExtents);
  EXPECT_EQ(progress.back().extents_done, kExtents);
  EXPECT_EQ(progress.back().bytes_copied, info->bytes_copied);

  write(*r, 2, 4, 9);  // the live region moves on
  ASSERT_TRUE(r->flush(FlushNumber{2}, Generation{1}, std::nullopt));
  EXPECT_NE(read_all(*r), before);

  auto s = Region::open(fs, snapshot_dir("r", "s1"), /*read_only=*/true);
  ASSERT_TRUE(s) << s.error().to_string();
  EXPECT_EQ((*s)->def(), r->def());
  EXPECT_EQ(read_all(**s), before);
  // As the live region was at the flush: the written extents stamped (flush 1), all clean.
  const auto versions = (*s)->versions();
  EXPECT_EQ(versions[0], (proto::ExtentVersion{Generation{1}, FlushNumber{1}, false}));
  EXPECT_EQ(versions[3], (proto::ExtentVersion{Generation{1}, FlushNumber{1}, false}));
  for (const auto& v : versions) EXPECT_FALSE(v.dirty);
}

TEST(Snapshot, ReflinkWhereTheFilesystemCanAndTheDataMatches) {
  FaultFs fs;
  fs.set_reflink(true);
  auto r = flushed_region(fs);
  const auto before = read_all(*r);
  auto info = snap(*r, "s1");
  ASSERT_TRUE(info) << info.error().to_string();
  EXPECT_EQ(info->method, SnapshotMethod::kReflink);
  EXPECT_EQ(info->bytes_copied, 0u);
  auto s = Region::open(fs, snapshot_dir("r", "s1"), true);
  ASSERT_TRUE(s);
  EXPECT_EQ(read_all(**s), before);
}

TEST(Snapshot, ADuplicateNameIsRefusedButTheSameFlushAgainIsDone) {
  FaultFs fs;
  auto r = flushed_region(fs);
  ASSERT_TRUE(snap(*r, "s1"));
  // A replayed flush (its ack was lost) asks again: already taken.
  EXPECT_TRUE(snap(*r, "s1"));
  auto again = snap(*r, "s1", 2);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, ErrorCode::kAlreadyExists);
  EXPECT_NE(again.error().message.find("'s1' exists"), std::string::npos);
}

TEST(Snapshot, RefusedWhileAnExtentIsClosedForRepairOrNameIsBad) {
  FaultFs fs;
  auto r = flushed_region(fs);
  ASSERT_TRUE(r->close_extent(ExtentId{2}));
  auto s = snap(*r, "s1");
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, ErrorCode::kBusy);
  EXPECT_NE(s.error().message.find("extent 2 is closed"), std::string::npos) << s.error().message;
  ASSERT_TRUE(r->reopen_extent(ExtentId{2}));
  EXPECT_EQ(snap(*r, "../x").error().code, ErrorCode::kInvalidArgument);
  auto list = list_snapshots(fs, "r");
  ASSERT_TRUE(list);
  EXPECT_TRUE(list->empty());
}

TEST(Snapshot, ADiskErrorFailsItAndLeavesNothingListed) {
  FaultFs fs;
  auto r = flushed_region(fs);
  fs.fail_next(FaultFs::Op::kWrite, 1, 3);  // a write in the middle of the copy
  auto s = snap(*r, "s1");
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, ErrorCode::kIo);
  auto list = list_snapshots(fs, "r");
  ASSERT_TRUE(list);
  EXPECT_TRUE(list->empty());
  // The next attempt clears the leftover staging directory and succeeds.
  ASSERT_TRUE(snap(*r, "s1"));
  list = list_snapshots(fs, "r");
  ASSERT_TRUE(list);
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "s1");
}

TEST(Snapshot, ListAndDelete) {
  FaultFs fs;
  auto r = flushed_region(fs);
  ASSERT_TRUE(snap(*r, "b"));
  ASSERT_TRUE(make_snapshot(*r, "a", FlushNumber{1}, Generation{1}, {}));
  auto list = list_snapshots(fs, "r");
  ASSERT_TRUE(list);
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].name, "a");
  EXPECT_EQ((*list)[1].flush, FlushNumber{1});
  EXPECT_TRUE((*list)[1].problem.empty());

  ASSERT_TRUE(delete_snapshot(fs, "r", "a"));
  list = list_snapshots(fs, "r");
  ASSERT_TRUE(list);
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "b");
  EXPECT_FALSE(*fs.exists(snapshot_dir("r", "a")));
  for (const auto& f : fs.files()) EXPECT_EQ(f.find("snapshots/.a"), std::string::npos) << f;
  auto missing = delete_snapshot(fs, "r", "a");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  // The live region is untouched by either.
  EXPECT_TRUE(Region::open(fs, "r", true));
}

// A power cut at every mutating step of making a snapshot: afterwards it is either not
// listed, or listed and whole (its data is the flushed data).
TEST(Snapshot, APowerCutAtAnyStepLeavesNoSnapshotOrAWholeOne) {
  std::vector<std::byte> expected;
  {
    FaultFs fs;
    auto r = flushed_region(fs);
    expected = read_all(*r);
  }
  // Making one takes a few dozen mutating calls; past this bound something loops.
  constexpr uint64_t kMaxSteps = 10000;
  std::mt19937_64 rng(7);
  int whole = 0, absent = 0;
  bool completed = false;
  for (uint64_t cut = 0; !completed && cut < kMaxSteps; ++cut) {
    FaultFs fs;
    auto r = flushed_region(fs);
    fs.cut_power_after(cut);
    completed = snap(*r, "s1").has_value();  // the cut came after the last step
    r.reset();
    fs.crash(rng);
    auto list = list_snapshots(fs, "r");
    ASSERT_TRUE(list) << list.error().to_string();
    if (list->empty()) {
      ++absent;
      continue;
    }
    ASSERT_EQ(list->size(), 1u);
    ASSERT_TRUE((*list)[0].problem.empty()) << "cut " << cut << ": " << (*list)[0].problem;
    auto s = Region::open(fs, snapshot_dir("r", "s1"), true);
    ASSERT_TRUE(s) << "cut " << cut << ": " << s.error().to_string();
    for (uint32_t e = 0; e < kExtents; ++e)
      ASSERT_FALSE((*s)->damage(ExtentId{e})) << "cut " << cut << " extent " << e;
    EXPECT_EQ(read_all(**s), expected) << "cut " << cut;
    ++whole;
  }
  EXPECT_TRUE(completed);
  EXPECT_GT(whole, 0);
  EXPECT_GT(absent, 10);
}

// ---- the core --------------------------------------------------------------------------------

struct CoreFixture {
  FaultFs fs;
  std::unique_ptr<Region> region = make_region(fs);
  Core core{*region, CoreOptions{}};
  Uuid id = Uuid::random(), session = Uuid::random();
  ConnectionId conn = core.new_connection();

  CoreFixture() {
    (void)core.on_message(
        conn, proto::HereIAm{proto::kProtocolVersion, id, session, Generation{1}, false, false});
    (void)core.on_message(conn, proto::PromoteToActive{id, session, Generation{1}});
    (void)core.on_message(conn, proto::RegionInfoPlease{});
    (void)core.on_message(conn, proto::ExtentVersionsPlease{});
  }
  proto::Ack run(proto::Message m) {
    auto out = core.on_message(conn, std::move(m));
    EXPECT_EQ(out.sends.size(), 1u);
    auto* ack = out.sends.empty() ? nullptr : std::get_if<proto::Ack>(&out.sends[0].message);
    EXPECT_NE(ack, nullptr);
    return ack ? *ack : proto::Ack{};
  }
  proto::Ack flush(uint64_t job, std::vector<JobId> deps, uint64_t number,
                   std::optional<std::string> snapshot) {
    return run(proto::Flush{JobId{job}, std::move(deps), FlushNumber{number}, Generation{1},
                            std::move(snapshot), std::nullopt});
  }
  proto::Ack write_job(uint64_t job, std::vector<JobId> deps, uint8_t seed) {
    auto [contexts, data] = blocks(2, seed);
    proto::Write w;
    w.job_id = JobId{job};
    w.deps = std::move(deps);
    w.start = BlockIndex{0};
    w.block_size = kBs;
    w.contexts = contexts;
    w.data = Bytes::copy_of(data);
    return run(std::move(w));
  }
};

TEST(CoreSnapshot, AFlushWithANameTakesTheSnapshotBeforeItsAck) {
  CoreFixture f;
  ASSERT_TRUE(f.write_job(1000, {}, 3).status.is_ok());
  auto ack = f.flush(1001, {JobId{1000}}, 1, "s1");
  EXPECT_TRUE(ack.status.is_ok()) << ack.status.message;
  auto list = list_snapshots(f.fs, "r");
  ASSERT_TRUE(list);
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].flush, FlushNumber{1});
  auto s = Region::open(f.fs, snapshot_dir("r", "s1"), true);
  ASSERT_TRUE(s);
  EXPECT_EQ(read_all(**s), read_all(*f.region));
}

TEST(CoreSnapshot, AFailedSnapshotIsSnapshotFailedAndTheFlushStillCompletes) {
  CoreFixture f;
  ASSERT_TRUE(f.flush(1000, {}, 1, "s1").status.is_ok());
  auto dup = f.flush(1001, {JobId{1000}}, 2, "s1");
  EXPECT_EQ(dup.status.code, ErrorCode::kSnapshotFailed);
  EXPECT_NE(dup.status.message.find("'s1' exists"), std::string::npos) << dup.status.message;
  // The flush counts as completed here: a job depending on it runs.
  EXPECT_TRUE(f.write_job(1002, {JobId{1001}}, 4).status.is_ok());
}

}  // namespace
}  // namespace cru::downstairs
