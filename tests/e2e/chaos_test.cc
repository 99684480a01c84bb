// Issue 6 end to end: the volume survives one failing replica at a time with real
// binaries, FUSE, loop devices and ext4. The kill, SIGSTOP and replay loops are short runs of
// scripts/chaos.sh (what `make chaos` runs for ten minutes); the others use the Cluster
// fixture: replacing a downstairs by a fresh empty region while fio runs, kill -9 of the
// upstairs under ext4 followed by a remount, and a block corrupted on one replica's disk.
// Every test ends by comparing the three regions (`crucible-downstairs dump`, and the
// data of every extent file). The scripts are found through CRUCIBLE_ROOT, or else as
// <root>/<build>/bin/.. of the binaries.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <regex>

#include "common/uuid.h"
#include "support/cluster.h"
#include "support/process.h"
#include "support/regions.h"

namespace cru::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// How long the replicas may take to return to active after a fault (a live repair of a
// whole small volume under load on a busy machine included).
constexpr Millis kConvergeTimeout{180000};
// A fio run over a 64 MiB volume, or a tool such as e2fsck.
constexpr Millis kToolTimeout{600000};
// Enough IO must be seen before a fault is injected "mid-write".
constexpr Millis kIoStartTimeout{60000};
// The chaos script cleans up in its trap on SIGTERM; it gets this long before SIGKILL.
constexpr Millis kScriptCleanupTimeout{240000};

// 64 extents of 1 MiB: several extents per fault, a quick full repair.
constexpr uint32_t kBlockSize = 4096;
constexpr uint64_t kExtentBlocks = 256;
constexpr uint32_t kExtentCount = 64;
constexpr uint64_t kVolumeBytes = uint64_t{kBlockSize} * kExtentBlocks * kExtentCount;

ClusterOptions small_volume() {
  ClusterOptions o;
  o.block_size = kBlockSize;
  o.extent_size_blocks = kExtentBlocks;
  o.extent_count = kExtentCount;
  return o;
}

std::string bin_dir() {
  return fs::absolute(fs::path(bin("crucible-fuse")).parent_path()).lexically_normal().string();
}

// The repository: $CRUCIBLE_ROOT, or the parent of the build dir holding the binaries.
std::string repo_root() {
  if (const char* r = std::getenv("CRUCIBLE_ROOT"); r != nullptr && *r != '\0') return r;
  return fs::path(bin_dir()).parent_path().parent_path().string();
}

bool all_active(const json& s) {
  if (s.value("state", "") != "active") return false;
  for (const auto& d : s["downstairs"])
    if (d.value("state", "") != "active") return false;
  return true;
}

uint64_t counter(const json& s, const char* name) { return s["counters"].value(name, uint64_t{0}); }
uint64_t ds_counter(const json& s, int i, const char* name) {
  return s["downstairs"][i].value(name, uint64_t{0});
}

// ---- the chaos script ---------------------------------------------------------------------------

// Runs scripts/chaos.sh and expects it to pass; a run that overstays is sent SIGTERM so
// its trap unmounts and stops what it started.
void run_chaos(const std::string& mode, int seconds, const std::vector<std::string>& extra = {}) {
  const std::string script = repo_root() + "/scripts/chaos.sh";
  ASSERT_TRUE(fs::exists(script)) << script << " not found; set CRUCIBLE_ROOT to the repository";
  ProcessOptions po;
  po.env = {"CRUCIBLE_BIN=" + bin_dir()};
  std::vector<std::string> args = {"/bin/bash", script, "--seconds", std::to_string(seconds),
                                   "--mode",    mode};
  args.insert(args.end(), extra.begin(), extra.end());
  auto p = Process::start(args, po);
  ASSERT_TRUE(p) << p.error().to_string();
  // Faults for `seconds`, then at most one convergence wait, a fio round, a verify pass
  // and a shutdown, each bounded inside the script.
  const Millis budget{(seconds + 900) * 1000};
  ExitStatus st = (*p)->wait(budget);
  if (st.timed_out) {
    (*p)->kill(SIGTERM);
    (*p)->wait(kScriptCleanupTimeout);
    FAIL() << "scripts/chaos.sh --mode " << mode << " ran longer than " << budget.count()
           << " ms:\n"
           << (*p)->output();
  }
  (*p)->wait_output_closed(Millis(10000));
  EXPECT_TRUE(st.exited() && st.code == 0)
      << "scripts/chaos.sh --mode " << mode << " " << st.describe() << ":\n"
      << (*p)->output();
  std::cout << (*p)->stdout_text();
}

TEST(Chaos, KillLoopKeepsEveryWriteAndTheReplicasConverge) { run_chaos("kill", 45); }

TEST(Chaos, StopLoopKeepsEveryWriteAndTheReplicasConverge) { run_chaos("stop", 30); }

// Short outages (a connection reset for 0.5-2 s, within the replay limits): every one must
// end in a replay, none in a fault (the script checks the counters after each).
TEST(Chaos, ReplayLoopReplaysEveryShortOutageAndTheReplicasConverge) { run_chaos("replay", 30); }

// The same kill -9 loop with mutual TLS on every connection, live repairs included.
TEST(Chaos, KillLoopOverTlsKeepsEveryWriteAndTheReplicasConverge) {
  run_chaos("kill", 30, {"--tls"});
}

// ---- helpers for the Cluster tests
// ----------------------------------------------------------------

// fio over the whole volume (support/regions.h).
std::vector<std::string> fio_args(const std::string& file, int seed,
                                  std::vector<std::string> extra = {}) {
  return fio_verify_args(file, kVolumeBytes, seed, extra);
}

// An O_DIRECT-able buffer (block aligned).
struct AlignedBuffer {
  explicit AlignedBuffer(size_t n) : size(n) {
    void* p = nullptr;
    if (::posix_memalign(&p, kBlockSize, n) == 0) data = static_cast<char*>(p);
  }
  ~AlignedBuffer() { std::free(data); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  char* data = nullptr;
  size_t size;
};

// Reads `size` bytes at `offset` of `file` with O_DIRECT (no page cache: every read
// reaches the upstairs). Empty on any error, which the caller reports.
std::string read_direct(const std::string& file, uint64_t offset, size_t size) {
  int fd = ::open(file.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return {};
  AlignedBuffer buf(size);
  ssize_t n = ::pread(fd, buf.data, size, static_cast<off_t>(offset));
  ::close(fd);
  return n == static_cast<ssize_t>(size) ? std::string(buf.data, size) : std::string();
}

// Writes and fsyncs with O_DIRECT; an errno description on failure, empty on success.
std::string write_direct(const std::string& file, uint64_t offset, const std::string& bytes) {
  int fd = ::open(file.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return fmt::format("open {}: {}", file, std::strerror(errno));
  AlignedBuffer buf(bytes.size());
  std::memcpy(buf.data, bytes.data(), bytes.size());
  std::string err;
  if (::pwrite(fd, buf.data, bytes.size(), static_cast<off_t>(offset)) !=
      static_cast<ssize_t>(bytes.size()))
    err = fmt::format("pwrite: {}", std::strerror(errno));
  else if (::fsync(fd) != 0)
    err = fmt::format("fsync: {}", std::strerror(errno));
  ::close(fd);
  return err;
}

// A file written and fsync'ed (then its directory); an errno description on failure.
std::string write_file_synced(const std::string& path, const std::string& bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return fmt::format("open {}: {}", path, std::strerror(errno));
  std::string err;
  if (::write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()))
    err = fmt::format("write {}: {}", path, std::strerror(errno));
  else if (::fsync(fd) != 0)
    err = fmt::format("fsync {}: {}", path, std::strerror(errno));
  ::close(fd);
  if (!err.empty()) return err;
  int dir = ::open(fs::path(path).parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0 || ::fsync(dir) != 0)
    err = fmt::format("fsync of {}'s directory: {}", path, std::strerror(errno));
  if (dir >= 0) ::close(dir);
  return err;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A fourth downstairs on a fresh, empty region of the same geometry (its own UUID).
struct FreshDownstairs {
  std::string dir;
  std::string target;
  std::unique_ptr<Process> process;
};

Result<FreshDownstairs> start_fresh_downstairs(const std::string& dir) {
  auto created =
      run_command({bin("crucible-downstairs"), "create", "-u", Uuid::random().to_string(), "-d",
                   dir, "--block-size", std::to_string(kBlockSize), "--extent-size",
                   std::to_string(kExtentBlocks), "--extent-count", std::to_string(kExtentCount)},
                  kToolTimeout);
  if (created.exit_code() != 0)
    return fail(ErrorCode::kIo, "crucible-downstairs create: " + created.describe());
  auto p = Process::start({bin("crucible-downstairs"), "run", "-d", dir, "-p", "0"});
  if (!p) return tl::unexpected(p.error());
  auto line = (*p)->wait_for_line(std::regex("listening on .*:[0-9]+$"), Millis(30000));
  if (!line) return tl::unexpected(line.error());
  std::smatch m;
  std::regex_search(*line, m, std::regex(":([0-9]+)$"));
  return FreshDownstairs{dir, "127.0.0.1:" + m[1].str(), std::move(*p)};
}

// ---- replacement ------------------------------------------------------------------------------

TEST(Chaos, ReplacementByAFreshRegionIsLiveRepairedWhileFioRuns) {
  // Declared first so it outlives the cluster's mounts: the volume uses it at teardown.
  FreshDownstairs fresh;
  auto c = Cluster::start(small_volume());
  ASSERT_TRUE(c) << c.error().to_string();
  auto m = (*c)->mount();
  ASSERT_TRUE(m) << m.error().to_string();
  auto f = start_fresh_downstairs((*c)->dir() + "/fresh");
  ASSERT_TRUE(f) << f.error().to_string();
  fresh = std::move(*f);

  // Rounds of fio (write the whole volume, then verify it) until the new replica is
  // active: the replacement is asked for during the first round, and its live repair
  // runs under guest IO. No round may see an error.
  const std::string old_target = (*c)->target(2);
  auto replaced = [&](const json& s) {
    return all_active(s) && s["downstairs"][2].value("target", "") == fresh.target &&
           s["live_repair"].value("completed", 0) >= 1;
  };
  constexpr int kMaxRounds = 20;
  int round = 0;
  for (bool done = false; !done;) {
    ++round;
    ASSERT_LE(round, kMaxRounds) << "the new replica is not active after " << kMaxRounds
                                 << " fio rounds";
    auto fio = Process::start(fio_args((*m)->disk_path(), round));
    ASSERT_TRUE(fio) << fio.error().to_string();
    if (round == 1) {
      auto busy = (*m)->wait_status([](const json& s) { return counter(s, "writes") >= 200; },
                                    kIoStartTimeout);
      ASSERT_TRUE(busy) << busy.error().to_string() << "\nfio:\n" << (*fio)->output();
      auto replace = run_command(
          {bin("crucible-fuse"), "replace", old_target, fresh.target, "-c", (*m)->config_path()},
          Millis(60000));
      ASSERT_EQ(replace.exit_code(), 0) << replace.describe();
    }
    ExitStatus fio_exit = (*fio)->wait(kToolTimeout);
    ASSERT_TRUE(fio_exit.exited() && fio_exit.code == 0)
        << "fio round " << round << " " << fio_exit.describe() << ":\n"
        << (*fio)->output();
    auto s = (*m)->status();
    ASSERT_TRUE(s) << s.error().to_string();
    done = replaced(*s);
  }
  auto st = (*m)->wait_status(replaced, kConvergeTimeout);
  ASSERT_TRUE(st) << st.error().to_string();
  EXPECT_GE(ds_counter(*st, 2, "live_repairs"), 1u) << st->dump();
  // The last round's data, read back once more now that the new replica is active.
  auto verify = run_command(fio_args((*m)->disk_path(), round, {"--verify_only"}), kToolTimeout);
  EXPECT_EQ(verify.exit_code(), 0) << verify.describe();

  auto exit = (*m)->unmount();
  ASSERT_TRUE(exit) << exit.error().to_string();
  EXPECT_TRUE(exit->exited() && exit->code == 0) << exit->describe() << "\n"
                                                 << (*m)->process().output();
  for (int i = 0; i < 2; ++i) ASSERT_TRUE((*c)->stop_downstairs(i));
  fresh.process->kill(SIGTERM);
  ASSERT_FALSE(fresh.process->wait(Millis(60000)).timed_out);
  expect_regions_equal({(*c)->region_dir(0), (*c)->region_dir(1), fresh.dir}, small_volume());
}

// ---- upstairs crash ---------------------------------------------------------------------------

TEST(Chaos, UpstairsKill9MidWriteThenRemountKeepsEveryFsyncedFileAndFsckIsClean) {
  auto c = Cluster::start(small_volume());
  ASSERT_TRUE(c) << c.error().to_string();
  auto m = (*c)->mount();
  ASSERT_TRUE(m) << m.error().to_string();
  auto loop = (*c)->attach_loop((*m)->disk_path());
  ASSERT_TRUE(loop) << loop.error().to_string();
  auto mkfs = (*c)->run({tool("mkfs.ext4"), "-q", "-F", *loop});
  ASSERT_EQ(mkfs.exit_code(), 0) << mkfs.describe();
  auto fsdir = (*c)->mount_fs(*loop);
  ASSERT_TRUE(fsdir) << fsdir.error().to_string();

  // Files acknowledged by fsync before the crash: all of them must survive it.
  constexpr int kFiles = 24;
  auto size_of = [](int i) { return size_t{16384} + size_t(i) * 20000; };
  for (int i = 0; i < kFiles; ++i) {
    std::string err =
        write_file_synced(fmt::format("{}/synced-{}", *fsdir, i), pattern(i, size_of(i)));
    ASSERT_TRUE(err.empty()) << err;
  }
  // Then a writer that is still going when the upstairs dies.
  auto before = (*m)->status();
  ASSERT_TRUE(before) << before.error().to_string();
  auto writer =
      Process::start({tool("dd"), "if=/dev/urandom", fmt::format("of={}/in-flight", *fsdir),
                      "bs=64k", "count=100000", "oflag=direct"});
  ASSERT_TRUE(writer) << writer.error().to_string();
  const uint64_t writes_before = counter(*before, "writes");
  auto busy = (*m)->wait_status(
      [&](const json& s) { return counter(s, "writes") >= writes_before + 50; }, kIoStartTimeout);
  ASSERT_TRUE(busy) << busy.error().to_string() << "\ndd:\n" << (*writer)->output();
  (*m)->kill();  // SIGKILL: no final flush; the dead FUSE mount is lazily unmounted
  ASSERT_FALSE((*m)->mounted());

  // The stack above the dead disk.img: the writer fails, ext4 and the loop device go.
  (*writer)->kill(SIGKILL);
  (*writer)->wait(Millis(30000));
  if (!(*c)->umount_fs(*fsdir)) {
    auto lazy = (*c)->run({tool("umount"), "-l", *fsdir});
    ASSERT_EQ(lazy.exit_code(), 0) << lazy.describe();
  }
  ASSERT_TRUE((*c)->detach_loop(*loop));

  // A new upstairs (a higher generation) reconciles the replicas before serving IO.
  auto m2 = (*c)->mount();
  ASSERT_TRUE(m2) << m2.error().to_string();
  auto st = (*m2)->status();
  ASSERT_TRUE(st) << st.error().to_string();
  EXPECT_TRUE(all_active(*st)) << st->dump();
  EXPECT_GT(st->value("generation", 0), before->value("generation", 0)) << st->dump();
  // Reconciliation is finished before the volume serves IO (how many extents it repaired
  // depends on where the crash fell).
  EXPECT_EQ((*st)["reconcile"].value("extents_done", -1),
            (*st)["reconcile"].value("extents_total", -2))
      << st->dump();
  std::cout << "reconciled " << (*st)["reconcile"].value("extents_total", 0)
            << " extents after the crash\n";

  auto loop2 = (*c)->attach_loop((*m2)->disk_path());
  ASSERT_TRUE(loop2) << loop2.error().to_string();
  ASSERT_TRUE((*c)->mount_fs_at(*loop2, *fsdir));  // replays the ext4 journal
  for (int i = 0; i < kFiles; ++i) {
    std::string path = fmt::format("{}/synced-{}", *fsdir, i);
    std::string got = read_file(path);
    EXPECT_TRUE(got == pattern(i, size_of(i)))
        << path << ": " << got.size() << " bytes, not the " << size_of(i)
        << " fsync'ed before the crash (or other bytes)";
  }
  ASSERT_TRUE((*c)->umount_fs(*fsdir));
  auto fsck = (*c)->run({tool("e2fsck"), "-fn", *loop2});
  EXPECT_EQ(fsck.exit_code(), 0) << fsck.describe();
  ASSERT_TRUE((*c)->detach_loop(*loop2));

  auto exit = (*m2)->unmount();
  ASSERT_TRUE(exit) << exit.error().to_string();
  EXPECT_TRUE(exit->exited() && exit->code == 0) << exit->describe() << "\n"
                                                 << (*m2)->process().output();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*c)->stop_downstairs(i));
  expect_regions_equal({(*c)->region_dir(0), (*c)->region_dir(1), (*c)->region_dir(2)},
                       small_volume());
}

// ---- a corrupt block on one replica's disk ------------------------------------------------------

TEST(Chaos, CorruptBlockOnOneReplicaIsReadFromAnotherAndTheReplicaIsRepaired) {
  auto c = Cluster::start(small_volume());
  ASSERT_TRUE(c) << c.error().to_string();
  auto m = (*c)->mount();
  ASSERT_TRUE(m) << m.error().to_string();

  // 1 MiB of known data filling extent 3, flushed to all three replicas.
  constexpr uint32_t kExtent = 3;
  constexpr uint64_t kBlock = 5;  // the corrupted block, inside kExtent
  const uint64_t offset = uint64_t{kExtent} * kExtentBlocks * kBlockSize;
  const std::string data = pattern(42, kExtentBlocks * kBlockSize);
  std::string err = write_direct((*m)->disk_path(), offset, data);
  ASSERT_TRUE(err.empty()) << err;
  // No job left: the flush that made the extent clean completed on every replica.
  auto idle = (*m)->wait_status(
      [](const json& s) { return all_active(s) && s.value("jobs", 1) == 0; }, kConvergeTimeout);
  ASSERT_TRUE(idle) << idle.error().to_string();

  // Reads go to the least loaded replica, the lowest on a tie: on an idle volume, 0.
  constexpr int kVictim = 0;
  auto stopped = (*c)->stop_downstairs(kVictim);
  ASSERT_TRUE(stopped) << stopped.error().to_string();
  const std::string region = (*c)->region_dir(kVictim);
  // Precondition: the extent is clean on disk, so that a read meets the corruption (the
  // self-heal this test is for); in a dirty extent the open's scan would find it first.
  auto meta = run_command(
      {bin("crucible-downstairs"), "dump", "-d", region, "--extent", std::to_string(kExtent)},
      kToolTimeout);
  ASSERT_EQ(meta.exit_code(), 0) << meta.describe();
  ASSERT_TRUE(std::regex_search(
      meta.out, std::regex(fmt::format("\\n\\s*{} \\|\\s+\\d+\\s+\\d+\\s+F\\n", kExtent))))
      << "extent " << kExtent << " is not clean on replica " << kVictim << ":\n"
      << meta.out;
  {
    // Flip 16 bytes in the middle of the block's data (extent file offset kBlock * bs).
    std::fstream ext(extent_file(region, kExtent), std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(ext) << extent_file(region, kExtent);
    const auto at = static_cast<std::streamoff>(kBlock * kBlockSize + 1000);
    char bytes[16];
    ext.seekg(at);
    ext.read(bytes, sizeof bytes);
    for (char& b : bytes) b = static_cast<char>(~b);
    ext.seekp(at);
    ext.write(bytes, sizeof bytes);
    ext.flush();
    ASSERT_TRUE(ext) << "corrupting " << extent_file(region, kExtent);
  }
  ASSERT_TRUE((*c)->start_downstairs(kVictim));
  auto back = (*m)->wait_status(all_active, kConvergeTimeout);
  ASSERT_TRUE(back) << back.error().to_string();
  const uint64_t heals_before = ds_counter(*back, kVictim, "self_heals");
  const uint64_t faults_before = ds_counter(*back, kVictim, "faults");
  const int repairs_before = (*back)["live_repair"].value("completed", 0);

  // The read that meets the corrupt block is answered from another replica. A read may
  // be sent elsewhere while a status or flush job is in flight on replica 0, so read
  // until replica 0 has served one (bounded); every read must be right.
  bool healed = false;
  for (int attempt = 0; attempt < 50 && !healed; ++attempt) {
    std::string got = read_direct((*m)->disk_path(), offset, data.size());
    ASSERT_TRUE(got == data) << "read " << attempt << " of extent " << kExtent << " returned "
                             << (got.empty() ? std::string("an error") : std::string("wrong data"));
    auto s = (*m)->status();
    ASSERT_TRUE(s) << s.error().to_string();
    healed = ds_counter(*s, kVictim, "self_heals") > heals_before;
  }
  ASSERT_TRUE(healed) << "50 reads of the corrupt extent and no self-heal recorded for downstairs "
                      << kVictim;

  // The replica is faulted and live-repaired, and the block is right there too.
  auto repaired = (*m)->wait_status(
      [&](const json& s) {
        return all_active(s) && ds_counter(s, kVictim, "faults") > faults_before &&
               s["live_repair"].value("completed", 0) > repairs_before;
      },
      kConvergeTimeout);
  ASSERT_TRUE(repaired) << repaired.error().to_string();
  EXPECT_TRUE(read_direct((*m)->disk_path(), offset, data.size()) == data);

  auto exit = (*m)->unmount();
  ASSERT_TRUE(exit) << exit.error().to_string();
  EXPECT_TRUE(exit->exited() && exit->code == 0) << exit->describe() << "\n"
                                                 << (*m)->process().output();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*c)->stop_downstairs(i));
  EXPECT_EQ(extent_data(region, kExtent, small_volume()).substr(kBlock * kBlockSize, kBlockSize),
            data.substr(kBlock * kBlockSize, kBlockSize))
      << "the corrupt block is still on replica " << kVictim << "'s disk";
  expect_regions_equal({(*c)->region_dir(0), (*c)->region_dir(1), (*c)->region_dir(2)},
                       small_volume());
}

}  // namespace
}  // namespace cru::test
