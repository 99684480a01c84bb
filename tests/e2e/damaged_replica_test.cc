// A replica whose region was damaged on disk (an extent file truncated, or a block's bytes
// overwritten in a dirty extent) still starts, reports the damage, and the upstairs
// repairs it from the other two at activation: the guest reads back exactly what it wrote,
// and afterwards the three regions are identical. Real binaries, real FUSE.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "support/cluster.h"
#include "support/process.h"
#include "support/regions.h"

namespace cru::test {
namespace {

namespace fs = std::filesystem;

constexpr Millis kToolTimeout{120000};
constexpr Millis kSettleTimeout{60000};
// A reconnect (backoff up to 10 s) and a live repair of a 4 MiB volume on a busy machine.
constexpr Millis kRepairTimeout{120000};

// 4 extents of 1 MiB (256 blocks of 4 KiB): small enough to write and compare whole.
constexpr uint32_t kBlockSize = 4096;
constexpr uint64_t kExtentBlocks = 256;
constexpr uint32_t kExtentCount = 4;
constexpr uint64_t kExtentBytes = kBlockSize * kExtentBlocks;
constexpr uint64_t kVolumeBytes = kExtentBytes * kExtentCount;

ClusterOptions small_volume() {
  ClusterOptions o;
  o.block_size = kBlockSize;
  o.extent_size_blocks = kExtentBlocks;
  o.extent_count = kExtentCount;
  return o;
}

// The whole of disk.img written with `data` and fsynced; "" or what failed.
std::string write_disk(const std::string& disk, const std::string& data) {
  int fd = ::open(disk.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return fmt::format("open {}: {}", disk, std::strerror(errno));
  std::string err;
  for (size_t off = 0; off < data.size() && err.empty();) {
    ssize_t n = ::pwrite(fd, data.data() + off, data.size() - off, static_cast<off_t>(off));
    if (n <= 0) err = fmt::format("pwrite at {}: {}", off, std::strerror(errno));
    off += n > 0 ? static_cast<size_t>(n) : 0;
  }
  if (err.empty() && ::fsync(fd) != 0) err = fmt::format("fsync: {}", std::strerror(errno));
  ::close(fd);
  return err;
}

// The whole of disk.img, read with O_DIRECT so that every byte comes from the upstairs.
// A read error is returned as the error text (the guest-visible error this test forbids).
Result<std::string> read_disk(const std::string& disk, size_t size) {
  int fd = ::open(disk.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return fail(ErrorCode::kIo, fmt::format("open {}: {}", disk, std::strerror(errno)));
  void* p = nullptr;
  if (::posix_memalign(&p, kBlockSize, size) != 0) {
    ::close(fd);
    return fail(ErrorCode::kIo, "posix_memalign");
  }
  std::unique_ptr<char, decltype(&std::free)> buf(static_cast<char*>(p), &std::free);
  for (size_t off = 0; off < size;) {
    ssize_t n = ::pread(fd, buf.get() + off, size - off, static_cast<off_t>(off));
    if (n <= 0) {
      int e = errno;
      ::close(fd);
      return fail(ErrorCode::kIo, fmt::format("pread at {}: {}", off, std::strerror(e)));
    }
    off += static_cast<size_t>(n);
  }
  ::close(fd);
  return std::string(buf.get(), size);
}

std::string extent_file(const std::string& region, uint32_t n) {
  return fmt::format("{}/00/000/{:03X}", region, n);
}

// The data area of extent n of a region (what the guest sees, before the contexts).
std::string extent_data(const std::string& region, uint32_t n) {
  std::ifstream in(extent_file(region, n), std::ios::binary);
  std::string data(kExtentBytes, '\0');
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  return in ? data : std::string();
}

// With every process stopped: the three regions have the same extent metadata (dump),
// the same data, and each verifies clean.
void expect_replicas_identical(const Cluster& c) {
  std::vector<std::string> args = {bin("crucible-downstairs"), "dump", "--only-diffs"};
  for (int i = 0; i < kDownstairsCount; ++i) args.insert(args.end(), {"-d", c.region_dir(i)});
  auto dump = run_command(args, kToolTimeout);
  EXPECT_EQ(dump.exit_code(), 0) << "the regions' metadata differ:\n" << dump.describe();
  for (uint32_t e = 0; e < kExtentCount; ++e) {
    std::string first = extent_data(c.region_dir(0), e);
    EXPECT_FALSE(first.empty()) << "extent " << e << " of region 0 is unreadable";
    for (int i = 1; i < kDownstairsCount; ++i)
      EXPECT_TRUE(extent_data(c.region_dir(i), e) == first)
          << "extent " << e << " of region " << i << " holds other data than region 0";
  }
  for (int i = 0; i < kDownstairsCount; ++i) {
    auto v =
        run_command({bin("crucible-downstairs"), "verify", "-d", c.region_dir(i)}, kToolTimeout);
    EXPECT_EQ(v.exit_code(), 0) << "verify region " << i << ":\n" << v.describe();
  }
}

// The whole volume read back through `m` equals `written`, without an error.
void expect_reads_back(Mount& m, const std::string& written) {
  auto got = read_disk(m.disk_path(), written.size());
  ASSERT_TRUE(got) << "the guest saw an error: " << got.error().to_string();
  size_t bad = 0;
  for (size_t off = 0; off < written.size(); off += kBlockSize)
    bad += got->compare(off, kBlockSize, written, off, kBlockSize) != 0 ? 1 : 0;
  EXPECT_EQ(bad, 0u) << "blocks that read back other than written";
}

// Unmounts cleanly and stops every downstairs, so that the regions can be compared.
void stop_all(Cluster& c, Mount& m) {
  auto exit = m.unmount();
  ASSERT_TRUE(exit) << exit.error().to_string();
  EXPECT_TRUE(exit->exited() && exit->code == 0) << exit->describe();
  for (int i = 0; i < kDownstairsCount; ++i) {
    auto s = c.stop_downstairs(i);
    ASSERT_TRUE(s) << s.error().to_string();
  }
}

// Mounts (activation reconciles), reads the whole volume back and compares it with
// `written`, then stops everything.
void expect_guest_reads_back(Cluster& c, const std::string& written) {
  auto m = c.mount();
  ASSERT_TRUE(m) << m.error().to_string();
  expect_reads_back(**m, written);
  auto st = (*m)->status();
  ASSERT_TRUE(st) << st.error().to_string();
  EXPECT_GE((*st)["reconcile"].value("extents_done", uint64_t{0}), uint64_t{1})
      << "activation repaired nothing: " << st->dump();
  stop_all(c, **m);
}

// Writes the whole volume through a mount and waits until all three downstairs completed
// every job (so each holds the data); returns what was written.
std::string fill_volume(Cluster& c, Mount*& m, uint64_t seed) {
  auto mounted = c.mount();
  EXPECT_TRUE(mounted) << mounted.error().to_string();
  if (!mounted) return "";
  m = *mounted;
  std::string data = pattern(seed, kVolumeBytes);
  std::string err = write_disk(m->disk_path(), data);
  EXPECT_EQ(err, "");
  auto idle = m->wait_status(
      [](const nlohmann::json& j) {
        for (const auto& d : j["downstairs"])
          if (d.value("jobs_in_flight", uint64_t{1}) != 0) return false;
        return true;
      },
      kSettleTimeout);
  EXPECT_TRUE(idle) << idle.error().to_string();
  return data;
}

TEST(DamagedReplica, ATruncatedExtentFileIsRepairedAtActivation) {
  auto c = Cluster::start(small_volume());
  ASSERT_TRUE(c) << c.error().to_string();
  Mount* m = nullptr;
  std::string written = fill_volume(**c, m, 15);
  ASSERT_FALSE(written.empty());
  auto exit = m->unmount();
  ASSERT_TRUE(exit && exit->exited() && exit->code == 0) << m->process().output();
  auto stopped = (*c)->stop_downstairs(1);
  ASSERT_TRUE(stopped) << stopped.error().to_string();
  const std::string victim = extent_file((*c)->region_dir(1), 2);
  fs::resize_file(victim, fs::file_size(victim) / 2);

  ASSERT_TRUE((*c)->start_downstairs(1)) << "a downstairs with a truncated extent must start";
  Process* ds = (*c)->downstairs_process(1);
  auto logged = ds->find_line("extent 2 (", kSettleTimeout);
  EXPECT_TRUE(logged) << "the damaged extent is not in the log:\n" << ds->output();
  expect_guest_reads_back(**c, written);
  EXPECT_EQ(fs::file_size(victim), fs::file_size(extent_file((*c)->region_dir(0), 2)))
      << "the repair did not rewrite the file whole";
  expect_replicas_identical(**c);
}

TEST(DamagedReplica, AGarbageBlockInADirtyExtentIsRepairedNotSpread) {
  auto c = Cluster::start(small_volume());
  ASSERT_TRUE(c) << c.error().to_string();
  Mount* m = nullptr;
  std::string written = fill_volume(**c, m, 16);
  ASSERT_FALSE(written.empty());
  // Killed with its extents written since they settled: their dirty flag stays set on
  // disk, so the next start scans them.
  (*c)->kill_downstairs(1);
  auto exit = m->unmount();
  ASSERT_TRUE(exit && exit->exited() && exit->code == 0) << m->process().output();
  for (int i : {0, 2}) ASSERT_TRUE((*c)->stop_downstairs(i));
  // Block 5 of extent 1 overwritten in place with bytes no context describes.
  {
    std::fstream f(extent_file((*c)->region_dir(1), 1),
                   std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f);
    std::string junk(kBlockSize, '\xa7');
    f.seekp(5 * kBlockSize);
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
    ASSERT_TRUE(f.flush());
  }
  auto before =
      run_command({bin("crucible-downstairs"), "verify", "-d", (*c)->region_dir(1)}, kToolTimeout);
  EXPECT_NE(before.exit_code(), 0) << "verify misses the garbage block:\n" << before.describe();

  for (int i = 0; i < kDownstairsCount; ++i) ASSERT_TRUE((*c)->start_downstairs(i));
  Process* ds = (*c)->downstairs_process(1);
  auto logged = ds->find_line("match none of their contexts", kSettleTimeout);
  EXPECT_TRUE(logged) << "the damaged block is not in the log:\n" << ds->output();
  expect_guest_reads_back(**c, written);
  expect_replicas_identical(**c);
}

// Restarted under an active volume, a downstairs comes back through a replay, which
// exchanges no extent versions: it fails the first flush after the replay naming its
// damage, is faulted, and live repair copies the extent from the others.
TEST(DamagedReplica, ADownstairsRestartedWithATruncatedExtentIsRepairedLive) {
  auto c = Cluster::start(small_volume());
  ASSERT_TRUE(c) << c.error().to_string();
  Mount* m = nullptr;
  std::string written = fill_volume(**c, m, 17);
  ASSERT_FALSE(written.empty());
  (*c)->kill_downstairs(1);
  const std::string victim = extent_file((*c)->region_dir(1), 3);
  fs::resize_file(victim, fs::file_size(victim) / 2);
  ASSERT_TRUE((*c)->start_downstairs(1));
  auto repaired = m->wait_status(
      [](const nlohmann::json& j) {
        if (j.value("state", "") != "active" ||
            j["live_repair"].value("completed", uint64_t{0}) == 0)
          return false;
        for (const auto& d : j["downstairs"])
          if (d.value("state", "") != "active") return false;
        return true;
      },
      kRepairTimeout);
  ASSERT_TRUE(repaired) << repaired.error().to_string();
  EXPECT_TRUE(m->process().find_line("extents are damaged", kSettleTimeout))
      << m->process().output();
  expect_reads_back(*m, written);
  stop_all(**c, *m);
  EXPECT_EQ(fs::file_size(victim), fs::file_size(extent_file((*c)->region_dir(0), 3)))
      << "the repair did not rewrite the file whole";
  expect_replicas_identical(**c);
}

}  // namespace
}  // namespace cru::test
