// Snapshots end to end (issue 12): three real downstairs whose regions live on a real
// filesystem of the test's own (an XFS made with reflink=1, or ext4, on a loop device), a
// real FUSE mount; data written, `crucible-fuse snapshot`, more data written; then the
// snapshot served read-only by three `crucible-downstairs run --snapshot` and mounted
// read-only, showing the old data while the live volume shows the new. The downstairs log
// says reflink on XFS and copy on ext4. Then a clone: the snapshot copied into new region
// directories and served read-write as a new volume. The snapshot flush's duration (what the guest
// waits) is printed and recorded as a test property, never asserted.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <random>
#include <regex>

#include "support/cluster.h"
#include "support/process.h"
#include "support/regions.h"

namespace cru::test {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;
constexpr Millis kCommandTimeout{120000};

std::vector<char> pattern(size_t bytes, uint64_t seed) {
  std::vector<char> data(bytes);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    uint64_t v = rng();
    std::memcpy(data.data() + i, &v, 8);
  }
  return data;
}

CommandResult run(std::vector<std::string> argv) {
  return run_command(std::move(argv), kCommandTimeout);
}

// A filesystem of the test's own: an image file in a temp dir on a loop device, made with
// `mkfs_args`, mounted in the temp dir. The destructor unmounts it, detaches the loop
// device and removes the image, whatever state a failed test left.
class LoopFs {
 public:
  static Result<std::unique_ptr<LoopFs>> make(std::vector<std::string> mkfs_args,
                                              uint64_t image_bytes) {
    std::unique_ptr<LoopFs> f(new LoopFs);
    const std::string image = f->dir_.file("image");
    auto fail_cmd = [](const std::string& what, const CommandResult& r) {
      return fail(ErrorCode::kIo, what + ": " + r.describe());
    };
    if (::truncate(image.c_str(), 0) != 0 && errno != ENOENT) {
      // nothing: the file does not exist yet
    }
    {
      int fd = ::open(image.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
      if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(image_bytes)) != 0)
        return fail(ErrorCode::kIo, "creating " + image + ": " + std::strerror(errno));
      ::close(fd);
    }
    auto lo = run({tool("losetup"), "-f", "--show", image});
    if (lo.exit_code() != 0) return fail_cmd("losetup", lo);
    f->device_ = lo.out.substr(0, lo.out.find('\n'));
    mkfs_args.push_back(f->device_);
    if (auto r = run(mkfs_args); r.exit_code() != 0) return fail_cmd(mkfs_args[0], r);
    f->mnt_ = f->dir_.file("mnt");
    if (::mkdir(f->mnt_.c_str(), 0755) != 0)
      return fail(ErrorCode::kIo, "mkdir " + f->mnt_ + ": " + std::strerror(errno));
    if (auto r = run({tool("mount"), f->device_, f->mnt_}); r.exit_code() != 0)
      return fail_cmd("mount", r);
    f->mounted_ = true;
    return f;
  }
  ~LoopFs() {
    if (mounted_ && run({tool("umount"), mnt_}).exit_code() != 0)
      static_cast<void>(run({tool("umount"), "-l", mnt_}));
    if (!device_.empty()) static_cast<void>(run({tool("losetup"), "-d", device_}));
  }
  LoopFs(const LoopFs&) = delete;
  LoopFs& operator=(const LoopFs&) = delete;
  const std::string& path() const { return mnt_; }

 private:
  LoopFs() = default;
  TempDir dir_;
  std::string device_, mnt_;
  bool mounted_ = false;
};

struct Geometry {
  uint64_t extent_size_blocks;
  uint32_t extent_count;
};

ClusterOptions options_for(const std::string& regions_dir, Geometry g) {
  ClusterOptions o;
  o.regions_dir = regions_dir;
  o.block_size = 4096;
  o.extent_size_blocks = g.extent_size_blocks;
  o.extent_count = g.extent_count;
  return o;
}

// Writes `data` at `offset` of disk.img and fsyncs.
::testing::AssertionResult write_at(const std::string& disk, const std::vector<char>& data,
                                    uint64_t offset) {
  return write_synced(disk, {data.data(), data.size()}, offset);
}

std::vector<char> read_at(const std::string& disk, size_t len, uint64_t offset) {
  const std::string s = read_range(disk, len, offset);
  return {s.begin(), s.end()};
}

// `crucible-fuse snapshot NAME` against the mount; returns the command's result.
CommandResult snapshot(const Mount& m, const std::string& name) {
  return run({bin("crucible-fuse"), "snapshot", name, "-c", m.config_path()});
}

// The whole story on one filesystem: old data in every extent, a snapshot, new data over
// part of it; the snapshot served read-only shows the old data, the live volume the new.
// `method` is what each downstairs must log ("reflink" or "full copy").
void snapshot_story(const std::string& regions_dir, Geometry g, const std::string& method,
                    size_t chunk_bytes) {
  auto live = Cluster::start(options_for(regions_dir, g));
  ASSERT_TRUE(live) << live.error().to_string();
  Cluster& c = **live;
  auto m = c.mount();
  ASSERT_TRUE(m) << m.error().to_string();
  const std::string disk = (*m)->disk_path();
  const uint64_t extent_bytes = 4096 * g.extent_size_blocks;

  // Old data: a chunk in every extent, so every extent file has something to keep.
  for (uint32_t e = 0; e < g.extent_count; ++e)
    ASSERT_TRUE(write_at(disk, pattern(chunk_bytes, 100 + e), e * extent_bytes));

  auto taken = snapshot(**m, "before");
  ASSERT_EQ(taken.exit_code(), 0) << taken.describe();
  std::smatch pause;
  ASSERT_TRUE(std::regex_search(taken.out, pause, std::regex("\\(([0-9]+) ms flush\\)")))
      << taken.out;
  std::cout << "[ snapshot ] " << method << ", " << g.extent_count << " extents of "
            << extent_bytes / kMiB << " MiB: the snapshot flush took " << pause[1]
            << " ms (guest-visible pause)\n";
  ::testing::Test::RecordProperty("snapshot_flush_ms", pause[1].str());
  for (int i = 0; i < kDownstairsCount; ++i) {
    auto line = c.downstairs_process(i)->find_line("snapshot 'before' at flush", Millis{10000});
    ASSERT_TRUE(line) << line.error().to_string();
    EXPECT_NE(line->find(method), std::string::npos) << *line;
  }

  // Refusals: the same name again, and a name with a path in it.
  auto dup = snapshot(**m, "before");
  EXPECT_NE(dup.exit_code(), 0);
  EXPECT_NE(dup.err.find("'before' exists"), std::string::npos) << dup.describe();
  auto bad = snapshot(**m, "../up");
  EXPECT_EQ(bad.exit_code(), 2);
  EXPECT_NE(bad.err.find("path separator"), std::string::npos) << bad.describe();
  auto st = (*m)->status();
  ASSERT_TRUE(st) << st.error().to_string();
  ASSERT_EQ((*st)["snapshots"].size(), 2u) << st->dump();
  EXPECT_EQ((*st)["snapshots"][0]["name"], "before");
  EXPECT_EQ((*st)["snapshots"][0]["taken"], true);
  EXPECT_EQ((*st)["snapshots"][1]["taken"], false);

  // New data over the first and last extents' chunks.
  const auto new_first = pattern(chunk_bytes, 900);
  const auto new_last = pattern(chunk_bytes, 901);
  const uint64_t last = (g.extent_count - 1) * extent_bytes;
  ASSERT_TRUE(write_at(disk, new_first, 0));
  ASSERT_TRUE(write_at(disk, new_last, last));

  auto list = run({bin("crucible-downstairs"), "snapshot", "list", "-d", c.region_dir(0)});
  ASSERT_EQ(list.exit_code(), 0) << list.describe();
  EXPECT_NE(list.out.find("before"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find(method == "reflink" ? "reflink" : "copy"), std::string::npos) << list.out;

  // The snapshot, served read-only by three downstairs, mounted read-only.
  ClusterOptions so = options_for(regions_dir, g);
  so.existing_regions = true;
  so.downstairs_args = {"--snapshot", "before"};
  auto snap = Cluster::start(so);
  ASSERT_TRUE(snap) << snap.error().to_string();
  auto refused = (*snap)->mount();  // a read-write upstairs is refused by a snapshot
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("read-only"), std::string::npos)
      << refused.error().message;
  MountArgs ro;
  ro.extra_args = {"--read-only"};
  auto sm = (*snap)->mount(ro);
  ASSERT_TRUE(sm) << sm.error().to_string();
  const std::string sdisk = (*sm)->disk_path();
  for (uint32_t e = 0; e < g.extent_count; ++e)
    EXPECT_TRUE(read_at(sdisk, chunk_bytes, e * extent_bytes) == pattern(chunk_bytes, 100 + e))
        << "snapshot, extent " << e;
  EXPECT_TRUE(read_at(disk, chunk_bytes, 0) == new_first);
  EXPECT_TRUE(read_at(disk, chunk_bytes, last) == new_last);
  EXPECT_TRUE(read_at(disk, chunk_bytes, extent_bytes) == pattern(chunk_bytes, 101));
  EXPECT_LT(::open(sdisk.c_str(), O_WRONLY | O_CLOEXEC), 0) << "the snapshot mount is writable";

  ASSERT_TRUE((*sm)->unmount());
  snap->reset();

  // A clone (docs/volumes.md, "A new volume from a snapshot"): each replica's snapshot
  // directory copied into a new region directory, served read-write by a new cluster. It
  // starts with the old data, takes its own writes, and the original keeps its own.
  const std::string clone_dir = regions_dir + "/clone";
  ASSERT_EQ(::mkdir(clone_dir.c_str(), 0755), 0) << std::strerror(errno);
  for (int i = 0; i < kDownstairsCount; ++i) {
    auto cp = run({tool("cp"), "-a", "--reflink=auto", c.region_dir(i) + "/snapshots/before",
                   clone_dir + "/" + std::to_string(i)});
    ASSERT_EQ(cp.exit_code(), 0) << cp.describe();
  }
  ClusterOptions co = options_for(clone_dir, g);
  co.existing_regions = true;
  auto clone = Cluster::start(co);
  ASSERT_TRUE(clone) << clone.error().to_string();
  auto cm = (*clone)->mount();
  ASSERT_TRUE(cm) << cm.error().to_string();
  const std::string cdisk = (*cm)->disk_path();
  EXPECT_TRUE(read_at(cdisk, chunk_bytes, 0) == pattern(chunk_bytes, 100));
  const auto clone_own = pattern(chunk_bytes, 902);
  ASSERT_TRUE(write_at(cdisk, clone_own, extent_bytes));
  EXPECT_TRUE(read_at(cdisk, chunk_bytes, extent_bytes) == clone_own);
  EXPECT_TRUE(read_at(disk, chunk_bytes, extent_bytes) == pattern(chunk_bytes, 101))
      << "a clone's write reached the original";
  auto cexit = (*cm)->unmount();
  ASSERT_TRUE(cexit);
  EXPECT_EQ(cexit->code, 0) << cexit->describe();
  clone->reset();
  auto del =
      run({bin("crucible-downstairs"), "snapshot", "delete", "-d", c.region_dir(1), "before"});
  EXPECT_EQ(del.exit_code(), 0) << del.describe();
  auto after = run({bin("crucible-downstairs"), "snapshot", "list", "-d", c.region_dir(1)});
  EXPECT_NE(after.out.find("no snapshots"), std::string::npos) << after.describe();
  auto exit = (*m)->unmount();
  ASSERT_TRUE(exit);
  EXPECT_EQ(exit->code, 0) << exit->describe();
}

// A 1 GiB region (16 extents of 64 MiB) on XFS with reflink: every extent is reflinked.
TEST(Snapshot, OnXfsWithReflinkServesTheOldDataReadOnly) {
  auto fs = LoopFs::make({tool("mkfs.xfs"), "-q", "-m", "reflink=1"}, 5ull << 30);
  ASSERT_TRUE(fs) << fs.error().to_string();
  snapshot_story((*fs)->path(), Geometry{16384, 16}, "reflink", 4 * kMiB);
}

// ext4 cannot share blocks: the snapshot is a full copy (a 128 MiB region).
TEST(Snapshot, OnExt4ByFullCopyServesTheOldDataReadOnly) {
  auto fs = LoopFs::make({tool("mkfs.ext4"), "-q"}, 1ull << 30);
  ASSERT_TRUE(fs) << fs.error().to_string();
  snapshot_story((*fs)->path(), Geometry{4096, 8}, "full copy", 1 * kMiB);
}

}  // namespace
}  // namespace cru::test
