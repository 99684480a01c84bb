// Clones from a read-only parent (issue 12) as users meet them: a fresh volume whose blocks
// come from a parent until a scrub has copied them all (docs/volumes.md "Read-only parent").
// The parent is a snapshot served by three `crucible-downstairs run --snapshot` (targets:),
// or an image file (file:), here an ext4 made at test time. Real binaries, real FUSE, loop
// devices. Every wait is on a status condition or a process; the scrub is held back by a low
// scrub_rate where a test needs the parent to stay in use, and let go by a high one.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>

#include "support/cluster.h"
#include "support/process.h"
#include "support/regions.h"

namespace cru::test {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kMiB = 1024 * 1024;
// 4 KiB blocks x 4096 x 4 extents: a 64 MiB volume.
constexpr uint32_t kExtents = 4;
constexpr uint64_t kVolumeBytes = 4096ull * 4096 * kExtents;
// The scrub of at most 64 MiB at 256 MiB/s takes well under a second; this bounds a wait on
// it on a loaded machine.
constexpr Millis kScrubTimeout{120000};
// Slow enough that the parent stays in use for the whole of a test step (a 4 KiB block a
// second); fast enough to finish a parent of tens of MiB within a second.
constexpr const char* kHeldBack = "4KiB";
constexpr const char* kLetGo = "256MiB";

ClusterOptions volume_options() {
  ClusterOptions o;
  o.extent_count = kExtents;
  return o;
}

#define START_CLUSTER(var, opts)                       \
  auto var##_r = Cluster::start(opts);                 \
  ASSERT_TRUE(var##_r) << var##_r.error().to_string(); \
  Cluster& var = **var##_r

#define ASSERT_RUNS(cluster, ...)                  \
  do {                                             \
    auto r_ = (cluster).run(__VA_ARGS__);          \
    ASSERT_EQ(r_.exit_code(), 0) << r_.describe(); \
  } while (0)

std::string targets_line(const Cluster& c) {
  return fmt::format("  targets: [\"{}\", \"{}\", \"{}\"]\n", c.target(0), c.target(1),
                     c.target(2));
}

// The volume section of a clone of `clone` over a parent: `parent_yaml` is the body of
// read_only_parent (empty: none), and the scrub record is kept at `state` whatever the
// mount point (each Cluster::mount makes a new one).
MountArgs clone_args(const Cluster& clone, const std::string& parent_yaml,
                     const std::string& state) {
  MountArgs a;
  a.volume_targets_yaml = targets_line(clone) + "  scrub_state_file: " + state + "\n";
  if (!parent_yaml.empty()) a.volume_targets_yaml += "  read_only_parent:\n" + parent_yaml;
  return a;
}

std::string targets_parent(const Cluster& p, const std::string& rate) {
  return fmt::format("    targets: [\"{}\", \"{}\", \"{}\"]\n    scrub_rate: {}\n", p.target(0),
                     p.target(1), p.target(2), rate);
}

std::string file_parent(const std::string& path, const std::string& rate) {
  return fmt::format("    file: {}\n    scrub_rate: {}\n", path, rate);
}

::testing::AssertionResult write_at(const std::string& path, const std::string& data,
                                    uint64_t offset) {
  return write_synced(path, data, offset);
}

std::string read_at(const std::string& path, size_t len, uint64_t offset) {
  return read_range(path, len, offset);
}

// A file of `bytes`, `data` at `offset` in it, zeros elsewhere.
void make_image(const std::string& path, uint64_t bytes,
                const std::vector<std::pair<uint64_t, std::string>>& data) {
  { std::ofstream f(path, std::ios::binary | std::ios::trunc); }
  fs::resize_file(path, bytes);
  for (const auto& [offset, d] : data) ASSERT_TRUE(write_at(path, d, offset));
}

const nlohmann::json& parent_of(const nlohmann::json& st) { return st["read_only_parent"]; }

bool scrub_complete(const nlohmann::json& st) {
  return st.contains("read_only_parent") && parent_of(st).value("complete", false);
}

// The scrub state record, parsed (a test failure and null if unreadable).
nlohmann::json state_record(const std::string& path) {
  std::ifstream in(path);
  auto j = nlohmann::json::parse(in, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << path << " is not JSON";
  return j;
}

// The mount's Prometheus text (its config serves metrics on a free port; the ready message
// names it); empty, with a test failure, if it cannot be fetched.
std::string scrape(Mount& m) {
  auto line = m.process().find_line("/metrics", Millis{20000});
  std::smatch port;
  if (!line || !std::regex_search(*line, port, std::regex(":([0-9]+)/metrics"))) {
    ADD_FAILURE() << "no metrics address in the ready message";
    return {};
  }
  auto r = run_command({tool("curl"), "-sS", "--fail", "--max-time", "10",
                        "http://127.0.0.1:" + port[1].str() + "/metrics"},
                       Millis{20000});
  EXPECT_EQ(r.exit_code(), 0) << r.describe();
  return r.out;
}

MountArgs with_metrics(MountArgs a) {
  a.extra_yaml += "metrics:\n  listen: 127.0.0.1:0\n";
  return a;
}

void expect_clean_unmount(Mount& m) {
  auto exit = m.unmount();
  ASSERT_TRUE(exit) << exit.error().to_string();
  EXPECT_EQ(exit->code, 0) << exit->describe();
}

// (1) The story: data written, a snapshot, more written; the snapshot served by
// three read-only downstairs is the parent of a fresh clone, which shows the old data,
// keeps its own writes across a remount, is refused without its parent while the scrub is
// incomplete, completes the scrub, and then mounts without the parent with everything
// there. The original keeps its new data.
TEST(ReadOnlyParent, ASnapshotServedReadOnlyIsTheParentOfACloneUntilTheScrubCompletes) {
  START_CLUSTER(live, volume_options());
  auto lm = live.mount();
  ASSERT_TRUE(lm) << lm.error().to_string();
  const std::string ldisk = (*lm)->disk_path();
  const std::string old_a = pattern(1, kMiB), old_b = pattern(2, kMiB), old_c = pattern(3, kMiB);
  ASSERT_TRUE(write_at(ldisk, old_a, 0));
  ASSERT_TRUE(write_at(ldisk, old_b, 8 * kMiB));
  ASSERT_TRUE(write_at(ldisk, old_c, kVolumeBytes - kMiB));  // the last MiB
  auto snap = live.run({bin("crucible-fuse"), "snapshot", "base", "-c", (*lm)->config_path()});
  ASSERT_EQ(snap.exit_code(), 0) << snap.describe();
  const std::string newer = pattern(4, kMiB);
  ASSERT_TRUE(write_at(ldisk, newer, 0));

  // The snapshot, served read-only.
  ClusterOptions so = volume_options();
  so.regions_dir = fs::path(live.region_dir(0)).parent_path().string();
  so.existing_regions = true;
  so.downstairs_args = {"--snapshot", "base"};
  auto parent_r = Cluster::start(so);
  ASSERT_TRUE(parent_r) << parent_r.error().to_string();
  Cluster& parent = **parent_r;

  START_CLUSTER(clone, volume_options());
  const std::string state = clone.dir() + "/clone.scrub.json";
  const std::string held = targets_parent(parent, kHeldBack);
  auto cm = clone.mount(clone_args(clone, held, state));
  ASSERT_TRUE(cm) << cm.error().to_string();
  std::string cdisk = (*cm)->disk_path();
  EXPECT_TRUE(read_at(cdisk, kMiB, 0) == old_a) << "the clone shows the snapshot's data";
  EXPECT_TRUE(read_at(cdisk, kMiB, 8 * kMiB) == old_b);
  EXPECT_TRUE(read_at(cdisk, kMiB, kVolumeBytes - kMiB) == old_c);
  EXPECT_TRUE(read_at(cdisk, kMiB, 16 * kMiB) == std::string(kMiB, '\0'));
  {
    auto st = (*cm)->status();
    ASSERT_TRUE(st) << st.error().to_string();
    ASSERT_TRUE(st->contains("read_only_parent")) << st->dump();
    EXPECT_EQ(parent_of(*st)["parent_needed"], true) << st->dump();
    EXPECT_EQ(parent_of(*st)["complete"], false) << st->dump();
    EXPECT_EQ(parent_of(*st)["blocks_total"], kVolumeBytes / 4096) << st->dump();
    auto text = clone.run({bin("crucible-fuse"), "status", "-c", (*cm)->config_path()});
    EXPECT_NE(text.out.find("read-only parent (targets "), std::string::npos) << text.describe();
  }
  // The clone's own writes: a whole MiB over old data, and 100 bytes inside the parent's
  // block (read-modify-write through the parent).
  const std::string own = pattern(5, kMiB), small = pattern(6, 100);
  ASSERT_TRUE(write_at(cdisk, own, 8 * kMiB));
  ASSERT_TRUE(write_at(cdisk, small, kVolumeBytes - kMiB + 10));
  std::string old_c_patched = old_c;
  old_c_patched.replace(10, 100, small);
  EXPECT_TRUE(read_at(cdisk, kMiB, 8 * kMiB) == own);
  EXPECT_TRUE(read_at(cdisk, kMiB, kVolumeBytes - kMiB) == old_c_patched);
  // A snapshot of the clone would miss the parent's blocks: refused while it reads them.
  auto csnap = clone.run({bin("crucible-fuse"), "snapshot", "x", "-c", (*cm)->config_path()});
  EXPECT_NE(csnap.exit_code(), 0);
  EXPECT_NE(csnap.err.find("read-only parent"), std::string::npos) << csnap.describe();
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));
  EXPECT_EQ(state_record(state)["complete"], false);

  // Without the parent while the scrub is incomplete: refused, saying why.
  auto refused = clone.mount(clone_args(clone, "", state));
  ASSERT_FALSE(refused) << "mounted without its parent before the scrub completed";
  EXPECT_NE(refused.error().message.find("still needs its parent"), std::string::npos)
      << refused.error().message;

  // Again with the parent, its own writes still there; the scrub let go and awaited.
  cm = clone.mount(clone_args(clone, targets_parent(parent, kLetGo), state));
  ASSERT_TRUE(cm) << cm.error().to_string();
  cdisk = (*cm)->disk_path();
  EXPECT_TRUE(read_at(cdisk, kMiB, 8 * kMiB) == own) << "the clone's write persisted";
  EXPECT_TRUE(read_at(cdisk, kMiB, kVolumeBytes - kMiB) == old_c_patched);
  auto done = (*cm)->wait_status(scrub_complete, kScrubTimeout);
  ASSERT_TRUE(done) << done.error().to_string();
  EXPECT_EQ(parent_of(*done)["parent_needed"], false) << done->dump();
  EXPECT_EQ(parent_of(*done)["blocks_done"], kVolumeBytes / 4096) << done->dump();
  auto text = clone.run({bin("crucible-fuse"), "status", "-c", (*cm)->config_path()});
  EXPECT_NE(text.out.find("no longer needed"), std::string::npos) << text.describe();
  EXPECT_TRUE(read_at(cdisk, kMiB, 8 * kMiB) == own)
      << "the scrub never overwrites the guest's data";
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));
  EXPECT_EQ(state_record(state)["complete"], true);

  // The parent's downstairs gone, the clone mounts without it and has everything.
  parent_r->reset();
  cm = clone.mount(clone_args(clone, "", state));
  ASSERT_TRUE(cm) << cm.error().to_string();
  cdisk = (*cm)->disk_path();
  EXPECT_TRUE(read_at(cdisk, kMiB, 0) == old_a) << "the scrub copied the parent";
  EXPECT_TRUE(read_at(cdisk, kMiB, 8 * kMiB) == own);
  EXPECT_TRUE(read_at(cdisk, kMiB, kVolumeBytes - kMiB) == old_c_patched);
  {
    auto st = (*cm)->status();
    ASSERT_TRUE(st) << st.error().to_string();
    EXPECT_TRUE(scrub_complete(*st)) << "status still says the scrub completed: " << st->dump();
  }
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));

  // The original has its new data, and the old beside it.
  EXPECT_TRUE(read_at(ldisk, kMiB, 0) == newer);
  EXPECT_TRUE(read_at(ldisk, kMiB, 8 * kMiB) == old_b);
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**lm));
}

// `files` files of up to 1 MiB under `root`, deterministic for a seed.
void make_files(const std::string& root, int files, uint64_t seed) {
  for (int i = 0; i < files; ++i) {
    const std::string dir = fmt::format("{}/d{}", root, i % 3);
    fs::create_directories(dir);
    const uint64_t n = static_cast<uint64_t>(i) + seed;
    const size_t size = static_cast<size_t>((n * 2654435761u) % kMiB);
    std::ofstream(fmt::format("{}/f{}.bin", dir, i), std::ios::binary) << pattern(n, size);
  }
}

void expect_same_tree(const Cluster& c, const std::string& want, const std::string& got) {
  auto r = c.run({tool("diff"), "-r", "-x", "lost+found", want, got});
  EXPECT_EQ(r.exit_code(), 0) << "the trees differ:\n" << r.describe();
}

// disk.img through a loop device: e2fsck clean, mounted, `trees` compared with `src`/T;
// then `add` (if any) copied in and synced; unmounted and detached again.
void check_ext4(Cluster& c, Mount& m, const std::string& src, const std::vector<std::string>& trees,
                const std::string& add) {
  auto dev = c.attach_loop(m.disk_path(), true);
  ASSERT_TRUE(dev) << dev.error().to_string();
  auto f = c.run({tool("e2fsck"), "-fn", *dev});
  EXPECT_EQ(f.exit_code(), 0) << "e2fsck found problems:\n" << f.describe();
  auto dir = c.mount_fs(*dev);
  ASSERT_TRUE(dir) << dir.error().to_string();
  for (const auto& t : trees) expect_same_tree(c, src + "/" + t, *dir + "/" + t);
  if (!add.empty()) {
    ASSERT_RUNS(c, {tool("cp"), "-a", src + "/" + add, *dir});
    ASSERT_RUNS(c, {tool("sync"), "-f", *dir});
  }
  ASSERT_TRUE(c.umount_fs(*dir));
  ASSERT_TRUE(c.detach_loop(*dev));
}

// (2) An ext4 image made at test time is the file parent of a clone, which boots through the
// ext4 checks while every block still comes from the parent, takes files of its own, and
// after the scrub mounts without the parent with both trees intact.
TEST(ReadOnlyParent, AClonesExt4FromAFileParentPassesFsckBeforeAndAfterTheScrub) {
  START_CLUSTER(clone, volume_options());
  const std::string src = clone.dir() + "/src";
  make_files(src + "/base", 16, 7);
  make_files(src + "/own", 12, 8);
  // The image: smaller than the volume (a parent covers the volume's first blocks).
  const std::string image = clone.dir() + "/parent.img";
  ASSERT_NO_FATAL_FAILURE(make_image(image, 48 * kMiB, {}));
  ASSERT_RUNS(clone, {tool("mkfs.ext4"), "-q", "-F", "-b", "4096", image});
  {
    auto dev = clone.attach_loop(image);
    ASSERT_TRUE(dev) << dev.error().to_string();
    auto dir = clone.mount_fs(*dev);
    ASSERT_TRUE(dir) << dir.error().to_string();
    ASSERT_RUNS(clone, {tool("cp"), "-a", src + "/base", *dir});
    ASSERT_TRUE(clone.umount_fs(*dir));
    ASSERT_TRUE(clone.detach_loop(*dev));
  }
  const std::string state = clone.dir() + "/clone.scrub.json";
  auto cm = clone.mount(clone_args(clone, file_parent(image, kHeldBack), state));
  ASSERT_TRUE(cm) << cm.error().to_string();
  ASSERT_NO_FATAL_FAILURE(check_ext4(clone, **cm, src, {"base"}, "own"));
  {
    auto st = (*cm)->status();
    ASSERT_TRUE(st) << st.error().to_string();
    EXPECT_EQ(parent_of(*st)["parent_needed"], true) << st->dump();
    EXPECT_EQ(parent_of(*st)["parent"], "file " + image) << st->dump();
  }
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));

  cm = clone.mount(clone_args(clone, file_parent(image, kLetGo), state));
  ASSERT_TRUE(cm) << cm.error().to_string();
  auto done = (*cm)->wait_status(scrub_complete, kScrubTimeout);
  ASSERT_TRUE(done) << done.error().to_string();
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));

  // The image is no longer needed: gone, and the clone mounts without it.
  fs::remove(image);
  cm = clone.mount(clone_args(clone, "", state));
  ASSERT_TRUE(cm) << cm.error().to_string();
  ASSERT_NO_FATAL_FAILURE(check_ext4(clone, **cm, src, {"base", "own"}, ""));
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));
}

// (3) A discard over blocks the parent holds reads zeros, before the scrub, after it, and
// without the parent: the scrub does not bring the parent's data back.
TEST(ReadOnlyParent, ADiscardOverParentDataReadsZerosAndTheScrubKeepsThem) {
  START_CLUSTER(clone, volume_options());
  const std::string image = clone.dir() + "/parent.img";
  const std::string data = pattern(11, 4 * kMiB);
  ASSERT_NO_FATAL_FAILURE(make_image(image, 16 * kMiB, {{0, data}}));
  const std::string state = clone.dir() + "/clone.scrub.json";
  auto cm = clone.mount(clone_args(clone, file_parent(image, kHeldBack), state));
  ASSERT_TRUE(cm) << cm.error().to_string();
  const std::string disk = (*cm)->disk_path();
  ASSERT_TRUE(read_at(disk, 4 * kMiB, 0) == data);
  // Punch 1 MiB + 4 KiB from 1 MiB - 2 KiB: whole blocks discarded, partial edges zeroed,
  // and a whole 1 MiB past the parent's end (a real discard there).
  int fd = ::open(disk.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  const off_t start = static_cast<off_t>(kMiB - 2048), len = static_cast<off_t>(kMiB + 4096);
  ASSERT_EQ(::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, len), 0)
      << std::strerror(errno);
  ASSERT_EQ(::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                        static_cast<off_t>(20 * kMiB), static_cast<off_t>(kMiB)),
            0)
      << std::strerror(errno);
  ASSERT_EQ(::fsync(fd), 0);
  ::close(fd);
  std::string want = data;
  want.replace(static_cast<size_t>(start), static_cast<size_t>(len),
               std::string(static_cast<size_t>(len), '\0'));
  EXPECT_TRUE(read_at(disk, 4 * kMiB, 0) == want) << "the parent shows through the discard";
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));

  cm = clone.mount(clone_args(clone, file_parent(image, kLetGo), state));
  ASSERT_TRUE(cm) << cm.error().to_string();
  auto done = (*cm)->wait_status(scrub_complete, kScrubTimeout);
  ASSERT_TRUE(done) << done.error().to_string();
  EXPECT_TRUE(read_at((*cm)->disk_path(), 4 * kMiB, 0) == want)
      << "the scrub copied the parent over the discarded blocks";
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));

  cm = clone.mount(clone_args(clone, "", state));
  ASSERT_TRUE(cm) << cm.error().to_string();
  EXPECT_TRUE(read_at((*cm)->disk_path(), 4 * kMiB, 0) == want);
  EXPECT_TRUE(read_at((*cm)->disk_path(), 16 * kMiB, 4 * kMiB) == std::string(16 * kMiB, '\0'));
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));
}

// (4) A scrub stopped part-way (an unmount, at a low rate) resumes after the restart from
// the recorded point, not from block 0, and the finished clone holds the whole parent.
TEST(ReadOnlyParent, AScrubStoppedMidwayResumesFromTheRecordedPoint) {
  START_CLUSTER(clone, volume_options());
  const std::string image = clone.dir() + "/parent.img";
  const std::string data = pattern(21, 32 * kMiB);
  ASSERT_NO_FATAL_FAILURE(make_image(image, 32 * kMiB, {{0, data}}));
  const std::string state = clone.dir() + "/clone.scrub.json";
  auto cm = clone.mount(with_metrics(clone_args(clone, file_parent(image, "1MiB"), state)));
  ASSERT_TRUE(cm) << cm.error().to_string();
  // A checkpoint (every 2 s at this rate) recorded some progress.
  auto some = (*cm)->wait_status(
      [](const nlohmann::json& st) {
        return st.contains("read_only_parent") &&
               parent_of(st).value("blocks_recorded", uint64_t{0}) > 0;
      },
      kScrubTimeout);
  ASSERT_TRUE(some) << some.error().to_string();
  EXPECT_EQ(parent_of(*some)["resumed_from"], 0) << some->dump();
  {
    const std::string m = scrape(**cm);
    const std::string label = "{parent=\"file " + image + "\"}";
    EXPECT_NE(m.find("crucible_scrub_blocks_total" + label + " 8192"), std::string::npos) << m;
    EXPECT_NE(m.find("crucible_scrub_complete" + label + " 0"), std::string::npos) << m;
    EXPECT_NE(m.find("crucible_scrub_blocks_done" + label), std::string::npos) << m;
  }
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));
  const auto record = state_record(state);
  const uint64_t saved = record.value("next_block", uint64_t{0});
  EXPECT_GE(saved, parent_of(*some)["blocks_recorded"].get<uint64_t>())
      << "the unmount recorded at least what the checkpoint had";
  ASSERT_LT(saved, 32 * kMiB / 4096) << "the scrub finished before the restart: " << record.dump();
  EXPECT_EQ(record["complete"], false);
  std::cout << "[ scrub ] stopped at block " << saved << " of " << 32 * kMiB / 4096 << "\n";

  cm = clone.mount(clone_args(clone, file_parent(image, "1MiB"), state));
  ASSERT_TRUE(cm) << cm.error().to_string();
  auto st = (*cm)->status();
  ASSERT_TRUE(st) << st.error().to_string();
  EXPECT_EQ(parent_of(*st)["resumed_from"], saved) << "resumed from the record: " << st->dump();
  EXPECT_GE(parent_of(*st)["blocks_done"].get<uint64_t>(), saved)
      << "progress did not restart from 0: " << st->dump();
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));
  EXPECT_GE(state_record(state).value("next_block", uint64_t{0}), saved);

  cm = clone.mount(with_metrics(clone_args(clone, file_parent(image, kLetGo), state)));
  ASSERT_TRUE(cm) << cm.error().to_string();
  auto done = (*cm)->wait_status(scrub_complete, kScrubTimeout);
  ASSERT_TRUE(done) << done.error().to_string();
  {
    const std::string m = scrape(**cm);
    EXPECT_NE(m.find("crucible_scrub_complete{parent=\"file " + image + "\"} 1"), std::string::npos)
        << m;
  }
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));
  cm = clone.mount(clone_args(clone, "", state));
  ASSERT_TRUE(cm) << cm.error().to_string();
  EXPECT_TRUE(read_at((*cm)->disk_path(), 32 * kMiB, 0) == data)
      << "the resumed scrub copied the whole parent";
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));
}

// A parent under a volume of two sub-volumes (128 MiB): a 96 MiB image spans the boundary;
// reads and a write across it merge per sub-volume, and the scrub fills both.
TEST(ReadOnlyParent, AParentSpansTheSubVolumesOfAVolume) {
  START_CLUSTER(second, volume_options());
  START_CLUSTER(clone, volume_options());
  const std::string image = clone.dir() + "/parent.img";
  const std::string data = pattern(31, 8 * kMiB);
  const uint64_t at = kVolumeBytes - 4 * kMiB;  // 4 MiB each side of the boundary
  ASSERT_NO_FATAL_FAILURE(make_image(image, 96 * kMiB, {{at, data}}));
  const std::string state = clone.dir() + "/clone.scrub.json";
  auto args = [&](const std::string& parent) {
    MountArgs a = clone_args(clone, parent, state);
    const std::string one = targets_line(clone);
    a.volume_targets_yaml.replace(
        0, one.size(),
        "  sub_volumes:\n    -" + one.substr(1) + "    -" + targets_line(second).substr(1));
    return a;
  };
  auto cm = clone.mount(args(file_parent(image, kHeldBack)));
  ASSERT_TRUE(cm) << cm.error().to_string();
  std::string disk = (*cm)->disk_path();
  EXPECT_TRUE(read_at(disk, 8 * kMiB, at) == data) << "the parent read across the boundary";
  const std::string own = pattern(32, 2 * kMiB);
  ASSERT_TRUE(write_at(disk, own, kVolumeBytes - kMiB));
  std::string want = data;
  want.replace(3 * kMiB, 2 * kMiB, own);
  EXPECT_TRUE(read_at(disk, 8 * kMiB, at) == want);
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));

  cm = clone.mount(args(file_parent(image, kLetGo)));
  ASSERT_TRUE(cm) << cm.error().to_string();
  auto done = (*cm)->wait_status(scrub_complete, kScrubTimeout);
  ASSERT_TRUE(done) << done.error().to_string();
  EXPECT_EQ(parent_of(*done)["blocks_total"], 96 * kMiB / 4096) << done->dump();
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));
  cm = clone.mount(args(""));
  ASSERT_TRUE(cm) << cm.error().to_string();
  disk = (*cm)->disk_path();
  EXPECT_TRUE(read_at(disk, 8 * kMiB, at) == want) << "both sub-volumes hold the parent now";
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));
}

// Guest writes while the scrub copies the same range: whichever reaches the downstairs
// first, the guest's data stays (WriteUnwritten skips written blocks; a later guest write
// overwrites a scrubbed one). 4 KiB writes spread over the parent, some partial (a
// read-modify-write through the parent), while the scrub runs at 8 MiB/s over 32 MiB.
TEST(ReadOnlyParent, GuestWritesDuringTheScrubAreNeverOverwritten) {
  START_CLUSTER(clone, volume_options());
  const std::string image = clone.dir() + "/parent.img";
  const uint64_t parent_bytes = 32 * kMiB;
  std::string want = pattern(41, parent_bytes);
  ASSERT_NO_FATAL_FAILURE(make_image(image, parent_bytes, {{0, want}}));
  const std::string state = clone.dir() + "/clone.scrub.json";
  auto cm = clone.mount(clone_args(clone, file_parent(image, "8MiB"), state));
  ASSERT_TRUE(cm) << cm.error().to_string();
  const std::string disk = (*cm)->disk_path();
  int writes = 0;
  for (uint64_t i = 0; i < 400; ++i) {
    // Spread over the parent in a scattered order, so some land before the scrub gets
    // there and some after.
    const uint64_t offset = (i * 2654435761u) % (parent_bytes / 4096) * 4096 + (i % 3) * 100;
    const std::string d = pattern(1000 + i, i % 3 == 0 ? 4096 : 1000);
    ASSERT_TRUE(write_at(disk, d, offset));
    want.replace(offset, d.size(), d);
    ++writes;
  }
  auto done = (*cm)->wait_status(scrub_complete, kScrubTimeout);
  ASSERT_TRUE(done) << done.error().to_string();
  EXPECT_TRUE(read_at(disk, parent_bytes, 0) == want) << "after the scrub, with the parent";
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));
  cm = clone.mount(clone_args(clone, "", state));
  ASSERT_TRUE(cm) << cm.error().to_string();
  EXPECT_TRUE(read_at((*cm)->disk_path(), parent_bytes, 0) == want)
      << "without the parent: " << writes << " guest writes and the parent elsewhere";
  ASSERT_NO_FATAL_FAILURE(expect_clean_unmount(**cm));
}

// A parent that cannot be this volume's is refused at start, naming the key and the sizes:
// an image larger than the volume, one not a whole number of blocks, and three downstairs
// whose region has another block size.
TEST(ReadOnlyParent, AParentOfTheWrongSizeOrBlockSizeIsRefusedNamingTheKey) {
  START_CLUSTER(clone, volume_options());
  const std::string state = clone.dir() + "/clone.scrub.json";
  const std::string large = clone.dir() + "/large.img";
  ASSERT_NO_FATAL_FAILURE(make_image(large, kVolumeBytes + 4096, {}));
  auto too_large = clone.mount(clone_args(clone, file_parent(large, kLetGo), state));
  ASSERT_FALSE(too_large) << "mounted over a parent larger than the volume";
  EXPECT_NE(too_large.error().message.find("volume.read_only_parent.file: the parent"),
            std::string::npos)
      << too_large.error().message;
  EXPECT_NE(too_large.error().message.find("larger than the volume"), std::string::npos)
      << too_large.error().message;
  const std::string ragged = clone.dir() + "/ragged.img";
  ASSERT_NO_FATAL_FAILURE(make_image(ragged, 4096 + 512, {}));
  auto partial = clone.mount(clone_args(clone, file_parent(ragged, kLetGo), state));
  ASSERT_FALSE(partial) << "mounted over a parent that is not a whole number of blocks";
  EXPECT_NE(partial.error().message.find("not a whole number of the volume's 4096-byte blocks"),
            std::string::npos)
      << partial.error().message;

  ClusterOptions small = volume_options();
  small.block_size = 512;
  small.extent_size_blocks = 1024;
  small.downstairs_args = {"--read-only"};  // a parent's downstairs serve read-only
  START_CLUSTER(parent, small);
  auto other_bs = clone.mount(clone_args(clone, targets_parent(parent, kLetGo), state));
  ASSERT_FALSE(other_bs) << "mounted over a parent of another block size";
  EXPECT_NE(other_bs.error().message.find("volume.read_only_parent.targets: the parent has "
                                          "512-byte blocks but the volume has 4096-byte blocks"),
            std::string::npos)
      << other_bs.error().message;
  EXPECT_FALSE(fs::exists(state)) << "a refused mount recorded nothing";
}

}  // namespace
}  // namespace cru::test
