// Volumes of several sub-volumes (issue 12) as users meet them: disk.img over two
// three-replica sets (six real downstairs), used through a loop device with ext4 (copy,
// e2fsck, remount, compare); one replica of each sub-volume killed with SIGKILL at once
// while files are copied, with no guest error and both repaired after they return; an
// online grow by a third sub-volume (`crucible-fuse grow`), picked up by `losetup -c` and
// `resize2fs` on the mounted filesystem; striping; and the refusals. Each Cluster is one
// sub-volume's three downstairs; the mount lives in the cluster declared last, so it goes
// (unmounted, loop devices detached) before the downstairs of the others.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "support/cluster.h"
#include "support/process.h"
#include "support/regions.h"

namespace cru::test {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kMiB = 1024 * 1024;
// 4 KiB blocks x 4096 x 4 extents: 64 MiB per sub-volume, enough for ext4 and a tree.
constexpr uint32_t kExtents = 4;
constexpr uint64_t kSubVolumeBytes = 4096ull * 4096 * kExtents;
constexpr Millis kRepairTimeout{120000};

ClusterOptions sub_volume_options() {
  ClusterOptions o;
  o.extent_count = kExtents;
  return o;
}

// Three clusters' worth of downstairs, each started, or a failed test.
#define START_CLUSTER(var)                             \
  auto var##_r = Cluster::start(sub_volume_options()); \
  ASSERT_TRUE(var##_r) << var##_r.error().to_string(); \
  Cluster& var = **var##_r

std::string targets_of(const Cluster& c) {
  return fmt::format("[\"{}\", \"{}\", \"{}\"]", c.target(0), c.target(1), c.target(2));
}

// A mount whose volume section lists `volume_yaml` instead of one cluster's targets.
MountArgs volume_args(std::string volume_yaml) {
  MountArgs a;
  a.volume_targets_yaml = std::move(volume_yaml);
  return a;
}

// volume.sub_volumes over these clusters, in order.
std::string sub_volumes_yaml(const std::vector<const Cluster*>& clusters) {
  std::string y = "  sub_volumes:\n";
  for (const Cluster* c : clusters) y += "    - targets: " + targets_of(*c) + "\n";
  return y;
}

#define ASSERT_RUNS(cluster, ...)                  \
  do {                                             \
    auto r_ = (cluster).run(__VA_ARGS__);          \
    ASSERT_EQ(r_.exit_code(), 0) << r_.describe(); \
  } while (0)

// `files` files of 0..2 MiB in a few directories, deterministic for a seed.
void make_files(const std::string& root, int files, uint64_t seed) {
  for (int i = 0; i < files; ++i) {
    const std::string dir = fmt::format("{}/d{}", root, i % 5);
    fs::create_directories(dir);
    const uint64_t n = static_cast<uint64_t>(i) + seed;
    const size_t size = i % 7 == 0 ? 0 : static_cast<size_t>((n * 2654435761u) % (2 * kMiB));
    std::ofstream(fmt::format("{}/f{}.bin", dir, i), std::ios::binary) << pattern(n, size);
  }
}

// diff -r: the trees are equal (lost+found aside).
void expect_same_tree(const Cluster& c, const std::string& want, const std::string& got) {
  auto r = c.run({tool("diff"), "-r", "-x", "lost+found", want, got});
  EXPECT_EQ(r.exit_code(), 0) << "the trees differ:\n" << r.describe();
}

// Unmounts the filesystem, checks it with e2fsck, mounts it again and compares the two
// copied trees ("before" and "after" under `src`) with what it holds.
void expect_fsck_clean_and_trees_kept(Cluster& c, const std::string& dev, const std::string& dir,
                                      const std::string& src) {
  ASSERT_TRUE(c.umount_fs(dir));
  auto f = c.run({tool("e2fsck"), "-fn", dev});
  EXPECT_EQ(f.exit_code(), 0) << "e2fsck found problems:\n" << f.describe();
  ASSERT_TRUE(c.mount_fs_at(dev, dir));
  expect_same_tree(c, src + "/before", dir + "/before");
  expect_same_tree(c, src + "/after", dir + "/after");
}

uint64_t file_size(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return static_cast<uint64_t>(st.st_size);
}

// Whether this process may resize a mounted ext4 (EXT4_IOC_RESIZE_FS needs it).
bool has_cap_sys_resource() {
  constexpr int kCapSysResource = 24;  // linux/capability.h
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("CapEff:", 0) == 0)
      return (std::stoull(line.substr(7), nullptr, 16) >> kCapSysResource) & 1;
  return false;
}

bool all_active(const nlohmann::json& j) {
  if (j.value("state", "") != "active") return false;
  for (const auto& d : j["downstairs"])
    if (d.value("state", "") != "active") return false;
  return true;
}

TEST(SubVolumes, TwoSubVolumesCarryExt4AndSurviveAReplicaOfEachKilledAtOnce) {
  START_CLUSTER(second);
  START_CLUSTER(c);
  auto m = c.mount(volume_args(sub_volumes_yaml({&c, &second})));
  ASSERT_TRUE(m) << m.error().to_string();
  EXPECT_EQ(file_size((*m)->disk_path()), 2 * kSubVolumeBytes);
  {
    auto st = (*m)->status();
    ASSERT_TRUE(st) << st.error().to_string();
    ASSERT_EQ((*st)["sub_volumes"].size(), 2u) << st->dump();
    ASSERT_EQ((*st)["downstairs"].size(), 6u) << st->dump();
    EXPECT_EQ((*st)["region"]["size_bytes"], 2 * kSubVolumeBytes) << st->dump();
  }

  const std::string src = c.dir() + "/src";
  make_files(src + "/before", 24, 1);
  make_files(src + "/after", 24, 2);
  auto dev = c.attach_loop((*m)->disk_path(), true);
  ASSERT_TRUE(dev) << dev.error().to_string();
  ASSERT_RUNS(c, {tool("mkfs.ext4"), "-q", "-F", "-b", "4096", *dev});
  auto dir = c.mount_fs(*dev);
  ASSERT_TRUE(dir) << dir.error().to_string();
  ASSERT_RUNS(c, {tool("cp"), "-a", src + "/before", *dir});
  ASSERT_RUNS(c, {tool("sync"), "-f", *dir});

  // One replica of each sub-volume at once; the copy goes on with two of three in each.
  c.kill_downstairs(1);
  second.kill_downstairs(2);
  ASSERT_RUNS(c, {tool("cp"), "-a", src + "/after", *dir});
  ASSERT_RUNS(c, {tool("sync"), "-f", *dir});
  {
    auto st = (*m)->status();
    ASSERT_TRUE(st) << st.error().to_string();
    EXPECT_EQ((*st)["state"], "active") << st->dump();
    EXPECT_NE((*st)["sub_volumes"][0]["downstairs"][1]["state"], "active") << st->dump();
    EXPECT_NE((*st)["sub_volumes"][1]["downstairs"][2]["state"], "active") << st->dump();
    // Both sub-volumes took writes: the filesystem spans them.
    EXPECT_GT((*st)["sub_volumes"][0]["counters"]["writes"].get<uint64_t>(), 0u);
    EXPECT_GT((*st)["sub_volumes"][1]["counters"]["writes"].get<uint64_t>(), 0u);
  }

  // Back, and repaired: every replica of both sub-volumes active again.
  ASSERT_TRUE(c.start_downstairs(1));
  ASSERT_TRUE(second.start_downstairs(2));
  auto healed = (*m)->wait_status(all_active, kRepairTimeout);
  ASSERT_TRUE(healed) << healed.error().to_string();

  expect_fsck_clean_and_trees_kept(c, *dev, *dir, src);
}

TEST(SubVolumes, GrowsOnlineByAThirdSubVolumeAndResize2fsUsesIt) {
  START_CLUSTER(second);
  START_CLUSTER(third);
  START_CLUSTER(c);
  auto m = c.mount(volume_args(sub_volumes_yaml({&c, &second})));
  ASSERT_TRUE(m) << m.error().to_string();
  const std::string src = c.dir() + "/src";
  make_files(src + "/before", 20, 3);
  make_files(src + "/after", 20, 4);
  auto dev = c.attach_loop((*m)->disk_path(), true);
  ASSERT_TRUE(dev) << dev.error().to_string();
  ASSERT_RUNS(c, {tool("mkfs.ext4"), "-q", "-F", "-b", "4096", *dev});
  auto dir = c.mount_fs(*dev);
  ASSERT_TRUE(dir) << dir.error().to_string();
  ASSERT_RUNS(c, {tool("cp"), "-a", src + "/before", *dir});

  // Grown while the filesystem is mounted and in use.
  auto g = c.run({bin("crucible-fuse"), "grow", third.target(0), third.target(1), third.target(2),
                  "-c", (*m)->config_path()});
  ASSERT_EQ(g.exit_code(), 0) << g.describe();
  EXPECT_NE(g.out.find("volume.sub_volumes"), std::string::npos)
      << "the reply says how to keep it: " << g.out;
  EXPECT_EQ(file_size((*m)->disk_path()), 3 * kSubVolumeBytes);
  ASSERT_RUNS(c, {tool("losetup"), "-c", *dev});
  {
    auto r = c.run({tool("blockdev"), "--getsize64", *dev});
    ASSERT_EQ(r.exit_code(), 0) << r.describe();
    EXPECT_EQ(std::stoull(r.out), 3 * kSubVolumeBytes) << "losetup -c did not see the new size";
  }
  if (has_cap_sys_resource()) {
    ASSERT_RUNS(c, {tool("resize2fs"), *dev});  // online: the filesystem stays mounted
  } else {
    // The kernel refuses an online resize without CAP_SYS_RESOURCE (as in containers
    // that drop it): resized offline on the same loop device, the volume still serving.
    std::cout << "no CAP_SYS_RESOURCE: resize2fs runs with the filesystem unmounted\n";
    ASSERT_TRUE(c.umount_fs(*dir));
    ASSERT_RUNS(c, {tool("e2fsck"), "-fy", *dev});
    ASSERT_RUNS(c, {tool("resize2fs"), *dev});
    ASSERT_TRUE(c.mount_fs_at(*dev, *dir));
  }
  {
    auto r = c.run({tool("df"), "-B1", "--output=size", *dir});
    ASSERT_EQ(r.exit_code(), 0) << r.describe();
    const uint64_t fs_bytes = std::stoull(r.out.substr(r.out.find('\n') + 1));
    EXPECT_GT(fs_bytes, 2 * kSubVolumeBytes) << "the filesystem did not grow: " << r.out;
  }
  // Enough data that ext4 places some of it in the new third.
  ASSERT_RUNS(c, {tool("cp"), "-a", src + "/after", *dir});
  ASSERT_RUNS(c, {tool("sync"), "-f", *dir});
  auto st = (*m)->status();
  ASSERT_TRUE(st) << st.error().to_string();
  ASSERT_EQ((*st)["sub_volumes"].size(), 3u) << st->dump();
  EXPECT_TRUE(all_active(*st)) << st->dump();
  // resize2fs put the new block groups' metadata there, ext4 maybe some files.
  EXPECT_GT((*st)["sub_volumes"][2]["counters"]["writes"].get<uint64_t>(), 0u) << st->dump();

  expect_fsck_clean_and_trees_kept(c, *dev, *dir, src);
}

// Written through disk.img at offsets crossing every stripe and both sub-volumes, read
// back the same; a grow is refused with the reason and changes nothing.
TEST(SubVolumes, StripedVolumeReadsBackAndRefusesToGrow) {
  START_CLUSTER(second);
  START_CLUSTER(third);
  START_CLUSTER(c);
  auto m = c.mount(volume_args(sub_volumes_yaml({&c, &second}) + "  stripe_kib: 64\n"));
  ASSERT_TRUE(m) << m.error().to_string();
  const std::string disk = (*m)->disk_path();
  ASSERT_EQ(file_size(disk), 2 * kSubVolumeBytes);
  const std::string data = pattern(7, 3 * kMiB + 12345);
  {
    int fd = ::open(disk.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    const off_t off = static_cast<off_t>(5 * kMiB + 777);  // unaligned: read-modify-write
    ASSERT_EQ(::pwrite(fd, data.data(), data.size(), off), static_cast<ssize_t>(data.size()));
    ASSERT_EQ(::fsync(fd), 0);
    std::string back(data.size(), '\0');
    ASSERT_EQ(::pread(fd, back.data(), back.size(), off), static_cast<ssize_t>(back.size()));
    ::close(fd);
    EXPECT_TRUE(back == data) << "striped data did not read back";
  }
  auto st = (*m)->status();
  ASSERT_TRUE(st) << st.error().to_string();
  EXPECT_EQ((*st)["stripe_bytes"], 64 * 1024);
  EXPECT_GT((*st)["sub_volumes"][0]["counters"]["writes"].get<uint64_t>(), 0u);
  EXPECT_GT((*st)["sub_volumes"][1]["counters"]["writes"].get<uint64_t>(), 0u);

  auto g = c.run({bin("crucible-fuse"), "grow", third.target(0), third.target(1), third.target(2),
                  "-c", (*m)->config_path()});
  EXPECT_NE(g.exit_code(), 0) << g.describe();
  EXPECT_NE(g.err.find("striped"), std::string::npos) << g.describe();
  EXPECT_EQ(file_size(disk), 2 * kSubVolumeBytes);
}

// A grow whose downstairs never answer fails after the activation timeout, naming them;
// the half-made sub-volume goes away while the others keep serving on the shared thread,
// and disk.img keeps its size and data.
TEST(SubVolumes, AGrowThatCannotActivateChangesNothing) {
  ClusterOptions o = sub_volume_options();
  o.activate_timeout_ms = 3000;  // also the grow's
  auto c_r = Cluster::start(o);
  ASSERT_TRUE(c_r) << c_r.error().to_string();
  Cluster& c = **c_r;
  auto m = c.mount();
  ASSERT_TRUE(m) << m.error().to_string();
  const std::string disk = (*m)->disk_path();
  const std::string data = pattern(11, 256 * 1024);
  {
    int fd = ::open(disk.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
    ASSERT_EQ(::fsync(fd), 0);
    ::close(fd);
  }
  // Ports nobody listens on (free a moment ago).
  std::vector<std::string> nowhere;
  for (int i = 0; i < 3; ++i) nowhere.push_back(fmt::format("127.0.0.1:{}", free_port()));
  auto g = c.run({bin("crucible-fuse"), "grow", nowhere[0], nowhere[1], nowhere[2], "-c",
                  (*m)->config_path()});
  EXPECT_NE(g.exit_code(), 0) << g.describe();
  EXPECT_NE(g.err.find("did not activate"), std::string::npos) << g.describe();
  EXPECT_NE(g.err.find(nowhere[0]), std::string::npos) << g.describe();
  EXPECT_EQ(file_size(disk), kSubVolumeBytes);
  int fd = ::open(disk.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  std::string back(data.size(), '\0');
  EXPECT_EQ(::pread(fd, back.data(), back.size(), 0), static_cast<ssize_t>(back.size()));
  EXPECT_TRUE(back == data);
  EXPECT_EQ(::pwrite(fd, data.data(), data.size(), 4096), static_cast<ssize_t>(data.size()));
  EXPECT_EQ(::fsync(fd), 0);
  ::close(fd);
  auto st = (*m)->status();
  ASSERT_TRUE(st) << st.error().to_string();
  EXPECT_FALSE(st->contains("sub_volumes")) << st->dump();
  EXPECT_EQ((*st)["state"], "active") << st->dump();
  auto exit = (*m)->unmount();
  ASSERT_TRUE(exit) << exit.error().to_string();
  EXPECT_EQ(exit->code, 0);
}

// Both volume.targets and volume.sub_volumes: refused naming both keys, nothing mounted.
TEST(SubVolumes, TargetsAndSubVolumesTogetherAreRefused) {
  START_CLUSTER(c);
  auto m = c.mount(volume_args("  targets: " + targets_of(c) + "\n" + sub_volumes_yaml({&c})));
  ASSERT_FALSE(m);
  EXPECT_NE(m.error().message.find("volume.targets"), std::string::npos) << m.error().message;
  EXPECT_NE(m.error().message.find("volume.sub_volumes"), std::string::npos) << m.error().message;
}

}  // namespace
}  // namespace cru::test
