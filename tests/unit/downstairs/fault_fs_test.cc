// The fault-injecting file system itself: the crash model the downstairs crash tests rely
// on must do what it claims, or those tests prove nothing.
#include "support/fault_fs.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace cru::test {
namespace {

using downstairs::File;
using downstairs::OpenMode;

std::vector<std::byte> filled(size_t n, uint8_t v) {
  return std::vector<std::byte>(n, std::byte{v});
}

std::unique_ptr<File> create(FaultFs& fs, const std::string& path) {
  auto f = fs.open(path, OpenMode::kCreateExclusive);
  EXPECT_TRUE(f) << f.error().to_string();
  return f ? std::move(*f) : nullptr;
}

// A durable 4 KiB file of 0x11 bytes at d/f.
std::unique_ptr<File> durable_file(FaultFs& fs) {
  EXPECT_TRUE(fs.make_dirs("d"));
  auto f = create(fs, "d/f");
  EXPECT_TRUE(f->write_at(0, filled(4096, 0x11)));
  EXPECT_TRUE(f->sync());
  EXPECT_TRUE(fs.sync_dir("d"));
  return f;
}

TEST(FaultFs, SyncedWritesSurviveEveryCrash) {
  for (uint64_t seed = 0; seed < 50; ++seed) {
    FaultFs fs;
    auto f = durable_file(fs);
    std::mt19937_64 rng(seed);
    fs.crash(rng);
    ASSERT_EQ(fs.contents("d/f"), filled(4096, 0x11)) << "seed " << seed;
  }
}

TEST(FaultFs, UnsyncedWriteIsKeptOrDroppedPerAtomicUnit) {
  bool saw_old = false, saw_new = false, saw_torn = false;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    FaultFs fs(512);
    auto f = durable_file(fs);
    ASSERT_TRUE(f->write_at(0, filled(4096, 0x22)));
    EXPECT_TRUE(fs.has_unsynced_data("d/f"));
    std::mt19937_64 rng(seed);
    fs.crash(rng);
    auto c = *fs.contents("d/f");
    ASSERT_EQ(c.size(), 4096u);
    int pieces_new = 0;
    for (size_t piece = 0; piece < 8; ++piece) {
      auto first = c[piece * 512];
      ASSERT_TRUE(first == std::byte{0x11} || first == std::byte{0x22});
      // Never torn inside an atomic unit.
      ASSERT_TRUE(std::all_of(c.begin() + piece * 512, c.begin() + (piece + 1) * 512,
                              [&](std::byte b) { return b == first; }))
          << "seed " << seed << " piece " << piece;
      pieces_new += first == std::byte{0x22};
    }
    saw_old |= pieces_new == 0;
    saw_new |= pieces_new == 8;
    saw_torn |= pieces_new > 0 && pieces_new < 8;
    EXPECT_FALSE(fs.has_unsynced_data("d/f"));
  }
  EXPECT_TRUE(saw_old && saw_new && saw_torn);
}

TEST(FaultFs, AtomicUnitOfBlockSizeNeverTearsABlock) {
  for (uint64_t seed = 0; seed < 100; ++seed) {
    FaultFs fs(4096);
    auto f = durable_file(fs);
    ASSERT_TRUE(f->write_at(0, filled(4096, 0x22)));
    std::mt19937_64 rng(seed);
    fs.crash(rng);
    auto c = *fs.contents("d/f");
    ASSERT_TRUE(c == filled(4096, 0x11) || c == filled(4096, 0x22)) << "seed " << seed;
  }
}

TEST(FaultFs, SyncThroughAnyHandleCoversEveryHandle) {
  FaultFs fs;
  auto a = durable_file(fs);
  auto b = fs.open("d/f", OpenMode::kReadWrite);
  ASSERT_TRUE(b);
  ASSERT_TRUE(a->write_at(0, filled(512, 0x33)));
  ASSERT_TRUE((*b)->sync());
  fs.crash_drop_all();
  EXPECT_EQ((*fs.contents("d/f"))[0], std::byte{0x33});
}

TEST(FaultFs, LaterWriteCanSurviveWhileEarlierOneIsLost) {
  bool saw_only_later = false;
  for (uint64_t seed = 0; seed < 200 && !saw_only_later; ++seed) {
    FaultFs fs(512);
    auto f = durable_file(fs);
    ASSERT_TRUE(f->write_at(0, filled(512, 0x22)));
    ASSERT_TRUE(f->write_at(1024, filled(512, 0x33)));
    std::mt19937_64 rng(seed);
    fs.crash(rng);
    auto c = *fs.contents("d/f");
    saw_only_later = c[0] == std::byte{0x11} && c[1024] == std::byte{0x33};
  }
  EXPECT_TRUE(saw_only_later) << "POSIX does not order unsynced writes";
}

TEST(FaultFs, PunchAndTruncateAreLoggedLikeWrites) {
  FaultFs fs;
  auto f = durable_file(fs);
  ASSERT_TRUE(f->zero_range(512, 512, downstairs::Space::kRelease));
  ASSERT_TRUE(f->truncate(8192));
  std::vector<std::byte> now(8192);
  ASSERT_TRUE(f->read_at(0, now));
  EXPECT_EQ(now[512], std::byte{0});
  EXPECT_EQ(now[0], std::byte{0x11});
  fs.crash_drop_all();
  EXPECT_EQ(*fs.contents("d/f"), filled(4096, 0x11));
}

TEST(FaultFs, ReserveExtendsWithZerosAndIsLoggedLikeATruncate) {
  FaultFs fs;
  auto f = durable_file(fs);
  ASSERT_TRUE(f->reserve(1024));  // shorter than the file: nothing changes
  EXPECT_FALSE(fs.has_unsynced_data("d/f"));
  ASSERT_TRUE(f->reserve(8192));
  EXPECT_EQ(*f->size(), 8192u);
  std::vector<std::byte> now(8192);
  ASSERT_TRUE(f->read_at(0, now));
  EXPECT_EQ(now[0], std::byte{0x11});
  EXPECT_EQ(now[8191], std::byte{0});
  EXPECT_EQ(fs.stats().count(FaultFs::Op::kTruncate), 2u);
  fs.crash_drop_all();
  EXPECT_EQ(*fs.contents("d/f"), filled(4096, 0x11));
}

TEST(FaultFs, KeepAllCrashKeepsEveryUnsyncedChange) {
  FaultFs fs;
  auto f = durable_file(fs);
  ASSERT_TRUE(f->write_at(0, filled(4096, 0x22)));
  ASSERT_TRUE(f->zero_range(0, 512, downstairs::Space::kKeep));
  fs.crash_keep_all();
  auto c = *fs.contents("d/f");
  EXPECT_EQ(c[0], std::byte{0});
  EXPECT_EQ(c[512], std::byte{0x22});
}

TEST(FaultFs, CreationNeedsADirectorySyncToSurvive) {
  FaultFs fs;
  ASSERT_TRUE(fs.make_dirs("d"));
  auto f = create(fs, "d/new");
  ASSERT_TRUE(f->write_at(0, filled(10, 1)));
  ASSERT_TRUE(f->sync());
  EXPECT_TRUE(*fs.exists("d/new"));
  fs.crash_drop_all();
  EXPECT_FALSE(*fs.exists("d/new"));

  auto g = create(fs, "d/new");
  ASSERT_TRUE(g->sync());
  ASSERT_TRUE(fs.sync_dir("d"));
  fs.crash_drop_all();
  EXPECT_TRUE(*fs.exists("d/new"));
}

TEST(FaultFs, UnsyncedRenameLeavesOldOrNewNameNeverBoth) {
  bool saw_old = false, saw_new = false;
  for (uint64_t seed = 0; seed < 100; ++seed) {
    FaultFs fs;
    ASSERT_TRUE(fs.make_dirs("d"));
    auto f = create(fs, "d/tmp");
    ASSERT_TRUE(f->write_at(0, filled(10, 7)));
    ASSERT_TRUE(f->sync());
    ASSERT_TRUE(fs.sync_dir("d"));
    ASSERT_TRUE(fs.rename("d/tmp", "d/final"));
    EXPECT_FALSE(*fs.exists("d/tmp"));
    std::mt19937_64 rng(seed);
    fs.crash(rng);
    bool old_name = *fs.exists("d/tmp"), new_name = *fs.exists("d/final");
    ASSERT_NE(old_name, new_name) << "seed " << seed;
    saw_old |= old_name;
    saw_new |= new_name;
    EXPECT_EQ(*fs.contents(new_name ? "d/final" : "d/tmp"), filled(10, 7));
  }
  EXPECT_TRUE(saw_old && saw_new);
}

TEST(FaultFs, RemovalIsUndoneByACrashBeforeTheDirectorySync) {
  FaultFs fs;
  auto f = durable_file(fs);
  ASSERT_TRUE(fs.remove("d/f"));
  EXPECT_FALSE(*fs.exists("d/f"));
  EXPECT_TRUE(fs.remove("d/f")) << "removing a missing file succeeds, as with posix_fs";
  fs.crash_drop_all();
  EXPECT_TRUE(*fs.exists("d/f"));
  ASSERT_TRUE(fs.remove("d/f"));
  ASSERT_TRUE(fs.sync_dir("d"));
  fs.crash_keep_all();
  EXPECT_FALSE(*fs.exists("d/f"));
}

TEST(FaultFs, FilesOpenedBeforeACrashFailWithoutCrashing) {
  FaultFs fs;
  auto f = durable_file(fs);
  std::mt19937_64 rng(1);
  fs.crash(rng);
  std::vector<std::byte> buf(16);
  EXPECT_EQ(f->read_at(0, buf).error().code, ErrorCode::kIo);
  EXPECT_EQ(f->write_at(0, buf).error().code, ErrorCode::kIo);
  EXPECT_FALSE(f->sync());
  EXPECT_FALSE(f->zero_range(0, 16, downstairs::Space::kKeep));
  EXPECT_FALSE(f->truncate(0));
  EXPECT_FALSE(f->reserve(64));
  EXPECT_FALSE(f->size());
  auto again = fs.open("d/f", OpenMode::kReadWrite);
  ASSERT_TRUE(again);
  EXPECT_TRUE((*again)->read_at(0, buf));
}

TEST(FaultFs, OpenModesBehaveLikePosix) {
  FaultFs fs;
  auto f = durable_file(fs);
  EXPECT_EQ(fs.open("d/f", OpenMode::kCreateExclusive).error().code, ErrorCode::kAlreadyExists);
  EXPECT_EQ(fs.open("d/missing", OpenMode::kReadOnly).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(fs.open("nodir/x", OpenMode::kCreateExclusive).error().code, ErrorCode::kNotFound);
  auto ro = fs.open("d/f", OpenMode::kReadOnly);
  ASSERT_TRUE(ro);
  EXPECT_FALSE((*ro)->write_at(0, filled(1, 1)));
  std::vector<std::byte> past(10);
  EXPECT_FALSE((*ro)->read_at(4090, past)) << "reading past the end is an error";
}

TEST(FaultFs, DirectoriesAreListedWithTheirFiles) {
  FaultFs fs;
  ASSERT_TRUE(fs.make_dirs("r/00/000"));
  create(fs, "r/00/000/000");
  create(fs, "r/region.json");
  EXPECT_EQ(*fs.list_dir("r"), (std::vector<std::string>{"00", "region.json"}));
  EXPECT_EQ(*fs.list_dir("r/00/000"), (std::vector<std::string>{"000"}));
  EXPECT_TRUE(*fs.exists("r/00"));
  EXPECT_FALSE(fs.list_dir("nope"));
}

TEST(FaultFs, FailNextInjectsIoErrorsAfterTheGivenCalls) {
  FaultFs fs;
  auto f = durable_file(fs);
  fs.fail_next(FaultFs::Op::kWrite, 2, 1);
  EXPECT_TRUE(f->write_at(0, filled(1, 1)));
  for (int i = 0; i < 2; ++i) {
    auto s = f->write_at(0, filled(1, 1));
    ASSERT_FALSE(s);
    EXPECT_EQ(s.error().code, ErrorCode::kIo);
    EXPECT_NE(s.error().message.find("injected"), std::string::npos);
  }
  EXPECT_TRUE(f->write_at(0, filled(1, 1)));
  EXPECT_EQ(fs.stats().injected, 2u);
  EXPECT_EQ(fs.stats().count(FaultFs::Op::kWrite), 5u);
}

TEST(FaultFs, FailedWriteChangesNothing) {
  FaultFs fs;
  auto f = durable_file(fs);
  fs.fail_next(FaultFs::Op::kWrite);
  EXPECT_FALSE(f->write_at(0, filled(16, 0x99)));
  EXPECT_EQ(*fs.contents("d/f"), filled(4096, 0x11));
  EXPECT_FALSE(fs.has_unsynced_data("d/f"));
}

TEST(FaultFs, ProbabilityOneFailsEveryCall) {
  FaultFs fs;
  auto f = durable_file(fs);
  fs.set_failure_probability(FaultFs::Op::kSync, 1.0);
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(f->sync());
  fs.clear_faults();
  EXPECT_TRUE(f->sync());
}

TEST(FaultFs, PowerCutFailsEverythingAfterTheGivenMutations) {
  FaultFs fs;
  auto f = durable_file(fs);
  fs.cut_power_after(2);
  std::vector<std::byte> buf(8);
  EXPECT_TRUE(f->read_at(0, buf)) << "reads are not mutations";
  EXPECT_TRUE(f->write_at(0, filled(8, 0x44)));
  EXPECT_TRUE(f->sync());
  EXPECT_FALSE(fs.power_cut());
  EXPECT_FALSE(f->write_at(8, filled(8, 0x55)));
  EXPECT_TRUE(fs.power_cut());
  EXPECT_FALSE(f->read_at(0, buf));
  EXPECT_FALSE(fs.exists("d/f").has_value()) << "namespace calls fail too";
  fs.crash_keep_all();
  EXPECT_FALSE(fs.power_cut());
  auto c = *fs.contents("d/f");
  EXPECT_EQ(c[0], std::byte{0x44});
  EXPECT_EQ(c[8], std::byte{0x11});
}

TEST(FaultFs, CountsSyncs) {
  FaultFs fs;
  auto f = durable_file(fs);
  uint64_t before = fs.syncs();
  ASSERT_TRUE(f->sync());
  ASSERT_TRUE(f->sync());
  EXPECT_EQ(fs.syncs(), before + 2);
  EXPECT_EQ(fs.stats().crashes, 0u);
  fs.crash_drop_all();
  EXPECT_EQ(fs.stats().crashes, 1u);
}

}  // namespace
}  // namespace cru::test
