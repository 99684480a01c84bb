// crucible-fuse as users meet it (issue 5): disk.img on a real FUSE mount over three real
// downstairs, used through dd, fio, O_DIRECT, loop devices (buffered and direct IO),
// mkfs.ext4, e2fsck and fstrim; persistence across restarts of every downstairs; a
// downstairs killed mid-copy; a second mount fencing the first; refusals (EPERM, ENOSPC,
// bad configs); SIGTERM. Each test has its own Cluster (temp dir, free ports), which
// unmounts, detaches and kills everything even when the test fails.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <latch>
#include <map>
#include <random>
#include <thread>
#include <tuple>
#include <utility>

#include "support/cluster.h"
#include "support/process.h"

namespace cru::test {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr Millis kFenceTimeout{20000};

// ---- small helpers ------------------------------------------------------------------------

std::vector<char> pattern(size_t bytes, uint64_t seed) {
  std::vector<char> data(bytes);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < bytes; i += 8) {
    uint64_t v = rng();
    std::memcpy(data.data() + i, &v, std::min<size_t>(8, bytes - i));
  }
  return data;
}

// An open file descriptor closed on scope exit.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const std::string& path, int flags) : fd_(::open(path.c_str(), flags | O_CLOEXEC, 0644)) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  bool ok() const { return fd_ >= 0; }
  // close() and its result (it reports errors of writes that were buffered).
  int close() { return ::close(std::exchange(fd_, -1)); }

 private:
  int fd_;
};

// pwrite/pread of the whole buffer; false (errno set) on an error or a short transfer.
template <typename Op, typename Ptr>
bool transfer_all(Op op, int fd, Ptr p, size_t len, uint64_t off) {
  while (len > 0) {
    ssize_t n = op(fd, p, len, static_cast<off_t>(off));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n, len -= static_cast<size_t>(n), off += static_cast<uint64_t>(n);
  }
  return true;
}
bool pwrite_all(int fd, const void* data, size_t len, uint64_t off) {
  return transfer_all(::pwrite, fd, static_cast<const char*>(data), len, off);
}
bool pread_all(int fd, void* data, size_t len, uint64_t off) {
  return transfer_all(::pread, fd, static_cast<char*>(data), len, off);
}

std::vector<char> read_at(const std::string& path, uint64_t off, size_t len) {
  Fd fd(path, O_RDONLY);
  std::vector<char> out(len);
  EXPECT_TRUE(fd.ok() && pread_all(fd.get(), out.data(), len, off))
      << path << ": " << std::strerror(errno);
  return out;
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const std::string& path, const std::vector<char>& data) {
  std::ofstream(path, std::ios::binary)
      .write(data.data(), static_cast<std::streamsize>(data.size()));
}

bool all_zero(const std::vector<char>& v) {
  return std::all_of(v.begin(), v.end(), [](char c) { return c == 0; });
}

// Runs a command, asserting exit 0 (with its output on failure).
#define ASSERT_RUNS(cluster, ...)                  \
  do {                                             \
    auto r_ = (cluster).run(__VA_ARGS__);          \
    ASSERT_EQ(r_.exit_code(), 0) << r_.describe(); \
  } while (0)

// A directory tree of `files` files (0 B .. 1 MiB, a few empty, nested three deep) and a
// symlink; ~`files`/2 MiB in all. Deterministic for a seed.
void make_tree(const std::string& root, int files, uint64_t seed) {
  std::mt19937_64 rng(seed);
  fs::create_directories(root);
  for (int i = 0; i < files; ++i) {
    std::string dir = fmt::format("{}/d{}/e{}", root, i % 4, i % 3);
    fs::create_directories(dir);
    size_t size = i % 10 == 0 ? 0 : rng() % (1 * kMiB);
    write_file(fmt::format("{}/f{}.bin", dir, i),
               pattern(size, seed * 1000 + static_cast<uint64_t>(i)));
  }
  fs::create_directories(root + "/empty/dir");
  fs::create_symlink("d0/e0/f0.bin", root + "/link");
}

// Relative path -> content hash (files), "dir", or "-> target" (symlinks).
std::map<std::string, std::string> tree_digest(const std::string& root) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    // Lexically: fs::relative would resolve a symlink to its target's path.
    std::string rel = e.path().lexically_relative(root).string();
    if (rel == "lost+found" || rel.rfind("lost+found/", 0) == 0) continue;
    if (e.is_symlink()) {
      out[rel] = "-> " + fs::read_symlink(e.path()).string();
    } else if (e.is_directory()) {
      out[rel] = "dir";
    } else {
      auto data = read_file(e.path().string());
      out[rel] =
          fmt::format("{} bytes, xxh64 {:016x}", data.size(), XXH64(data.data(), data.size(), 0));
    }
  }
  return out;
}

// A cluster with one mount, or a failed test.
#define START_MOUNTED(cluster_var, mount_var, ...)                     \
  auto cluster_var##_r = Cluster::start(__VA_ARGS__);                  \
  ASSERT_TRUE(cluster_var##_r) << cluster_var##_r.error().to_string(); \
  Cluster& cluster_var = **cluster_var##_r;                            \
  auto mount_var##_r = cluster_var.mount();                            \
  ASSERT_TRUE(mount_var##_r) << mount_var##_r.error().to_string();     \
  Mount& mount_var = **mount_var##_r

// ---- the mount --------------------------------------------------------------------------

TEST(FuseMount, StatShowsTheVolumeSize) {
  ClusterOptions options;
  options.extent_count = 6;
  START_MOUNTED(c, m, options);
  struct stat st {};
  ASSERT_EQ(::stat(m.disk_path().c_str(), &st), 0) << std::strerror(errno);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), 6 * 4096 * 4096ull);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), c.size_bytes());
  // `stat` the program says the same.
  auto r = c.run({tool("stat"), "-c", "%s", m.disk_path()});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(r.out, fmt::format("{}\n", c.size_bytes()));
  // disk.img is the mount's only entry.
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(m.mountpoint()))
    names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"disk.img"});
}

TEST(FuseMount, DdPatternReadsBackAtAlignedAndUnalignedOffsets) {
  START_MOUNTED(c, m);
  const std::string disk = m.disk_path();
  // Background so the bytes around an unaligned write can be checked.
  {
    Fd fd(disk, O_WRONLY);
    ASSERT_TRUE(fd.ok()) << std::strerror(errno);
    std::vector<char> bg(8 * kMiB, static_cast<char>(0xAB));
    ASSERT_TRUE(pwrite_all(fd.get(), bg.data(), bg.size(), 0)) << std::strerror(errno);
  }
  const auto pat = pattern(1 * kMiB, 1);
  const std::string pat_file = c.write_file("pattern", "");
  write_file(pat_file, pat);

  // Aligned: 1 MiB at 1 MiB in 4 KiB blocks; dd must not truncate (disk.img cannot).
  ASSERT_RUNS(c, {tool("dd"), "if=" + pat_file, "of=" + disk, "bs=4096", "seek=256",
                  "conv=notrunc,fsync", "status=none"});
  const std::string out1 = c.write_file("out1", "");
  ASSERT_RUNS(c, {tool("dd"), "if=" + disk, "of=" + out1, "bs=4096", "skip=256", "count=256",
                  "status=none"});
  EXPECT_TRUE(read_file(out1) == pat) << "aligned dd read back different bytes";

  // Unaligned: 100000 bytes in 1000-byte writes at byte 5000003 (inside a block, ends
  // inside another).
  const uint64_t off = 5000003, len = 100000;
  ASSERT_RUNS(
      c, {tool("dd"), "if=" + pat_file, "of=" + disk, "bs=1000", "count=100", "oflag=seek_bytes",
          fmt::format("seek={}", off), "conv=notrunc,fsync", "status=none"});
  const std::string out2 = c.write_file("out2", "");
  ASSERT_RUNS(c, {tool("dd"), "if=" + disk, "of=" + out2, "bs=777", "iflag=skip_bytes,count_bytes",
                  fmt::format("skip={}", off), fmt::format("count={}", len), "status=none"});
  EXPECT_TRUE(read_file(out2) == std::vector<char>(pat.begin(), pat.begin() + len))
      << "unaligned dd read back different bytes";
  // The rest of the blocks the unaligned write touched kept the background.
  const uint64_t first = off / 4096 * 4096, end = (off + len + 4095) / 4096 * 4096;
  EXPECT_EQ(read_at(disk, first, off - first),
            std::vector<char>(off - first, static_cast<char>(0xAB)));
  EXPECT_EQ(read_at(disk, off + len, end - off - len),
            std::vector<char>(end - off - len, static_cast<char>(0xAB)));
  // And the aligned write is still there.
  EXPECT_TRUE(read_at(disk, 1 * kMiB, pat.size()) == pat);
}

class FuseFio : public ::testing::TestWithParam<bool> {};  // mutual TLS

TEST_P(FuseFio, VerifyWithDirectIoPasses) {
  ClusterOptions options;
  options.tls = GetParam();
  START_MOUNTED(c, m, options);
  for (const char* bs : {"--bs=4k", "--bsrange=4k-256k"}) {
    auto r = c.run({tool("fio"), "--name=verify", "--filename=" + m.disk_path(), "--direct=1",
                    "--ioengine=libaio", "--iodepth=16", "--rw=randwrite", bs, "--size=24M",
                    "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--randrepeat=0",
                    "--verify_state_save=0", "--output-format=terse"});
    ASSERT_EQ(r.exit_code(), 0) << bs << ": " << r.describe();
    EXPECT_EQ(r.err.find("verify"), std::string::npos) << r.describe();
  }
}

INSTANTIATE_TEST_SUITE_P(Fuse, FuseFio, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "OverTls" : "Plain";
                         });

TEST(FuseMount, ODirectOpenReadsAndWrites) {
  START_MOUNTED(c, m);
  Fd fd(m.disk_path(), O_RDWR | O_DIRECT);
  ASSERT_TRUE(fd.ok()) << "open O_DIRECT: " << std::strerror(errno);
  void* raw = nullptr;
  ASSERT_EQ(::posix_memalign(&raw, 4096, 256 * kKiB), 0);
  std::unique_ptr<char, decltype(&std::free)> buf(static_cast<char*>(raw), &std::free);
  const auto pat = pattern(256 * kKiB, 7);
  std::memcpy(buf.get(), pat.data(), pat.size());
  ASSERT_TRUE(pwrite_all(fd.get(), buf.get(), pat.size(), 3 * kMiB)) << std::strerror(errno);
  ASSERT_EQ(::fdatasync(fd.get()), 0) << std::strerror(errno);
  std::memset(buf.get(), 0, pat.size());
  ASSERT_TRUE(pread_all(fd.get(), buf.get(), pat.size(), 3 * kMiB)) << std::strerror(errno);
  EXPECT_EQ(std::memcmp(buf.get(), pat.data(), pat.size()), 0);
  // A buffered reader sees the same bytes.
  EXPECT_TRUE(read_at(m.disk_path(), 3 * kMiB, pat.size()) == pat);
}

TEST(FuseMount, RefusesShapeChangesWithEpermAndWritesPastTheEndWithEnospc) {
  START_MOUNTED(c, m);
  const std::string disk = m.disk_path();
  const uint64_t size = c.size_bytes();
  errno = 0;
  EXPECT_EQ(::truncate(disk.c_str(), 4096), -1);
  EXPECT_EQ(errno, EPERM) << std::strerror(errno);
  errno = 0;
  EXPECT_EQ(::truncate(disk.c_str(), static_cast<off_t>(size + 4096)), -1);
  EXPECT_EQ(errno, EPERM) << std::strerror(errno);
  // Truncating to its own size changes nothing and is allowed.
  EXPECT_EQ(::truncate(disk.c_str(), static_cast<off_t>(size)), 0) << std::strerror(errno);
  errno = 0;
  const int trunc_fd = ::open(disk.c_str(), O_WRONLY | O_TRUNC);
  EXPECT_EQ(trunc_fd, -1);
  EXPECT_EQ(errno, EPERM) << std::strerror(errno);
  if (trunc_fd >= 0) ::close(trunc_fd);
  {
    // Nor does the kernel believe the file shrank.
    struct stat st {};
    ASSERT_EQ(::stat(disk.c_str(), &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), size);
  }
  errno = 0;
  EXPECT_EQ(::open((m.mountpoint() + "/new.img").c_str(), O_WRONLY | O_CREAT, 0644), -1);
  EXPECT_EQ(errno, EPERM) << std::strerror(errno);
  errno = 0;
  EXPECT_EQ(::unlink(disk.c_str()), -1);
  EXPECT_EQ(errno, EPERM) << std::strerror(errno);
  errno = 0;
  EXPECT_EQ(::mkdir((m.mountpoint() + "/d").c_str(), 0755), -1);
  EXPECT_EQ(errno, EPERM) << std::strerror(errno);
  errno = 0;
  EXPECT_EQ(::rename(disk.c_str(), (m.mountpoint() + "/other.img").c_str()), -1);
  EXPECT_EQ(errno, EPERM) << std::strerror(errno);

  Fd fd(disk, O_RDWR);
  ASSERT_TRUE(fd.ok()) << std::strerror(errno);
  // The last byte can be written; anything reaching past the end cannot, even in part.
  const std::vector<char> tail(4096, 'x');
  std::vector<char> before(4096);
  ASSERT_TRUE(pread_all(fd.get(), before.data(), before.size(), size - 4096));
  errno = 0;
  EXPECT_EQ(::pwrite(fd.get(), tail.data(), tail.size(), static_cast<off_t>(size)), -1);
  EXPECT_EQ(errno, ENOSPC) << std::strerror(errno);
  errno = 0;
  EXPECT_EQ(::pwrite(fd.get(), tail.data(), tail.size(), static_cast<off_t>(size - 100)), -1);
  EXPECT_EQ(errno, ENOSPC) << std::strerror(errno);
  EXPECT_EQ(read_at(disk, size - 4096, 4096), before) << "a refused write changed the last block";
  EXPECT_EQ(::pwrite(fd.get(), "z", 1, static_cast<off_t>(size - 1)), 1) << std::strerror(errno);
  EXPECT_EQ(read_at(disk, size - 1, 1), std::vector<char>{'z'});
  // Reading at the end is EOF, not an error.
  char b;
  EXPECT_EQ(::pread(fd.get(), &b, 1, static_cast<off_t>(size)), 0);
  // The file is still there with its size.
  struct stat st {};
  ASSERT_EQ(::stat(disk.c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), size);
}

TEST(FuseMount, SigtermFlushesExitsZeroAndUnmounts) {
  START_MOUNTED(c, m);
  {
    Fd fd(m.disk_path(), O_WRONLY);
    const auto pat = pattern(64 * kKiB, 3);
    ASSERT_TRUE(pwrite_all(fd.get(), pat.data(), pat.size(), 0)) << std::strerror(errno);
  }
  ASSERT_TRUE(m.mounted());
  auto st = m.unmount();
  ASSERT_TRUE(st) << st.error().to_string();
  EXPECT_TRUE(st->exited() && st->code == 0) << st->describe() << "\n" << m.process().output();
  EXPECT_FALSE(m.mounted());
  EXPECT_TRUE(m.process().find_line("volume flushed and deactivated", Millis(0)))
      << m.process().output();
}

// Eight threads write disjoint, unaligned byte ranges that share blocks with their
// neighbours (owned by other threads), each range several times. Without the range lock
// a read-modify-write would put back a neighbour's stale bytes; with it, every byte ends
// as its owner's last write.
TEST(FuseMount, ConcurrentUnalignedWritersLoseNothing) {
  START_MOUNTED(c, m);
  constexpr int kThreads = 8, kRounds = 6;
  constexpr uint64_t kBase = 40 * 4096 + 123;  // unaligned start
  constexpr char kBackground = 0x5A;
  struct Chunk {
    uint64_t off;
    size_t len;
  };
  std::vector<Chunk> chunks;
  std::mt19937_64 rng(11);
  uint64_t off = kBase;
  for (int i = 0; i < 400; ++i) {
    size_t len = 100 + rng() % 3000;  // ranges of 100..3099 bytes: one to three per block
    chunks.push_back({off, len});
    off += len;
  }
  const uint64_t span_end = off;
  const uint64_t first = kBase / 4096 * 4096, last = (span_end + 4095) / 4096 * 4096 + 4096;
  auto data_for = [](size_t chunk, int round, size_t len) {
    return pattern(len, static_cast<uint64_t>(chunk) * 100 + static_cast<uint64_t>(round) + 1);
  };
  {
    Fd fd(m.disk_path(), O_WRONLY);
    std::vector<char> bg(last - first, kBackground);
    ASSERT_TRUE(pwrite_all(fd.get(), bg.data(), bg.size(), first)) << std::strerror(errno);
  }
  std::latch go(kThreads);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Fd fd(m.disk_path(), O_WRONLY);
      go.arrive_and_wait();
      for (int round = 0; round < kRounds; ++round)
        for (size_t i = static_cast<size_t>(t); i < chunks.size(); i += kThreads) {
          auto d = data_for(i, round, chunks[i].len);
          if (!fd.ok() || !pwrite_all(fd.get(), d.data(), d.size(), chunks[i].off)) ++failures;
        }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(failures.load(), 0);
  std::vector<char> expected(last - first, kBackground);
  for (size_t i = 0; i < chunks.size(); ++i) {
    auto d = data_for(i, kRounds - 1, chunks[i].len);
    std::memcpy(expected.data() + (chunks[i].off - first), d.data(), d.size());
  }
  const auto got = read_at(m.disk_path(), first, last - first);
  ASSERT_EQ(got.size(), expected.size());
  size_t wrong = 0, first_wrong = SIZE_MAX;
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != expected[i]) ++wrong, first_wrong = std::min(first_wrong, i);
  EXPECT_EQ(wrong, 0u) << "first wrong byte at disk offset " << first + first_wrong;
}

// ---- loop devices and ext4 ---------------------------------------------------------------

// (direct IO on the loop device, mutual TLS to the downstairs)
class FuseLoop : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

TEST_P(FuseLoop, Ext4CopyFsckRemountChecksumsEqual) {
  const auto [direct_io, tls] = GetParam();
  ClusterOptions options;
  options.tls = tls;
  START_MOUNTED(c, m, options);
  const std::string src = c.dir() + "/src";
  make_tree(src, 40, 5);
  const auto want = tree_digest(src);

  auto dev = c.attach_loop(m.disk_path(), direct_io);
  ASSERT_TRUE(dev) << dev.error().to_string();
  if (direct_io) {
    // The loop device really does direct IO on disk.img (losetup does not fail when the
    // kernel refuses it; it only warns).
    auto r = c.run({tool("losetup"), "--list", "--noheadings", "--output", "DIO", *dev});
    ASSERT_EQ(r.exit_code(), 0) << r.describe();
    ASSERT_NE(r.out.find('1'), std::string::npos) << "no direct IO: " << r.describe();
  }
  ASSERT_RUNS(c, {tool("mkfs.ext4"), "-q", "-F", "-b", "4096", *dev});
  auto dir = c.mount_fs(*dev);
  ASSERT_TRUE(dir) << dir.error().to_string();
  ASSERT_RUNS(c, {tool("cp"), "-a", src + "/.", *dir});
  ASSERT_RUNS(c, {tool("sync"), "-f", *dir});
  ASSERT_TRUE(c.umount_fs(*dir));
  {
    auto r = c.run({tool("e2fsck"), "-fn", *dev});
    EXPECT_EQ(r.exit_code(), 0) << "e2fsck found problems:\n" << r.describe();
  }
  ASSERT_TRUE(c.mount_fs_at(*dev, *dir));
  EXPECT_EQ(tree_digest(*dir), want);
}

INSTANTIATE_TEST_SUITE_P(Fuse, FuseLoop, ::testing::Combine(::testing::Bool(), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<bool, bool>>& p) {
                           return std::string(std::get<0>(p.param) ? "DirectIo" : "Buffered") +
                                  (std::get<1>(p.param) ? "OverTls" : "");
                         });

TEST(FusePersistence, DataSurvivesUnmountAndRestartOfAllDownstairs) {
  START_MOUNTED(c, m);
  const auto a = pattern(3 * kMiB + 777, 21), b = pattern(5000, 22);
  {
    Fd fd(m.disk_path(), O_WRONLY);
    ASSERT_TRUE(pwrite_all(fd.get(), a.data(), a.size(), 12345)) << std::strerror(errno);
    ASSERT_TRUE(pwrite_all(fd.get(), b.data(), b.size(), c.size_bytes() - b.size()))
        << std::strerror(errno);
    // No fsync: the unmount's final flush makes it durable.
  }
  auto st = m.unmount();
  ASSERT_TRUE(st) << st.error().to_string();
  ASSERT_EQ(st->code, 0) << st->describe() << "\n" << m.process().output();
  for (int i = 0; i < kDownstairsCount; ++i) {
    auto s = c.stop_downstairs(i);
    ASSERT_TRUE(s) << s.error().to_string();
    EXPECT_EQ(s->code, 0) << "downstairs " << i << ": " << s->describe();
  }
  for (int i = 0; i < kDownstairsCount; ++i) {
    auto s = c.start_downstairs(i);
    ASSERT_TRUE(s) << s.error().to_string();
  }
  auto m2 = c.mount();
  ASSERT_TRUE(m2) << m2.error().to_string();
  EXPECT_TRUE(read_at((*m2)->disk_path(), 12345, a.size()) == a);
  EXPECT_TRUE(read_at((*m2)->disk_path(), c.size_bytes() - b.size(), b.size()) == b);
  EXPECT_TRUE(all_zero(read_at((*m2)->disk_path(), 0, 12345)));
}

// The physical byte ranges (offset, length) of a file on its block device.
std::vector<std::pair<uint64_t, uint64_t>> physical_extents(const std::string& path) {
  Fd fd(path, O_RDONLY);
  EXPECT_TRUE(fd.ok()) << std::strerror(errno);
  constexpr size_t kMaxExtents = 512;
  std::vector<char> buf(sizeof(fiemap) + kMaxExtents * sizeof(fiemap_extent));
  auto* fm = reinterpret_cast<fiemap*>(buf.data());
  fm->fm_start = 0;
  fm->fm_length = FIEMAP_MAX_OFFSET;
  fm->fm_flags = FIEMAP_FLAG_SYNC;
  fm->fm_extent_count = kMaxExtents;
  std::vector<std::pair<uint64_t, uint64_t>> out;
  EXPECT_EQ(::ioctl(fd.get(), FS_IOC_FIEMAP, fm), 0) << std::strerror(errno);
  for (uint32_t i = 0; i < fm->fm_mapped_extents; ++i)
    out.emplace_back(fm->fm_extents[i].fe_physical, fm->fm_extents[i].fe_length);
  return out;
}

TEST(FuseTrim, FstrimSucceedsAndFreedBlocksReadAsZeros) {
  START_MOUNTED(c, m);
  auto dev = c.attach_loop(m.disk_path());
  ASSERT_TRUE(dev) << dev.error().to_string();
  ASSERT_RUNS(c, {tool("mkfs.ext4"), "-q", "-F", "-b", "4096", *dev});
  auto dir = c.mount_fs(*dev);
  ASSERT_TRUE(dir) << dir.error().to_string();
  const auto data = pattern(6 * kMiB, 31);
  const std::string file = *dir + "/victim.bin";
  {
    Fd fd(file, O_WRONLY | O_CREAT);
    ASSERT_TRUE(fd.ok() && pwrite_all(fd.get(), data.data(), data.size(), 0))
        << std::strerror(errno);
    ASSERT_EQ(::fsync(fd.get()), 0) << std::strerror(errno);
  }
  const auto extents = physical_extents(file);
  ASSERT_FALSE(extents.empty());
  // The extents are where the file's bytes are on disk.img (so checking them later means
  // something).
  uint64_t logical = 0;
  for (auto [phys, len] : extents) {
    ASSERT_LE(logical + len, data.size());
    EXPECT_TRUE(read_at(m.disk_path(), phys, len) ==
                std::vector<char>(data.begin() + logical, data.begin() + logical + len))
        << "extent at " << phys;
    logical += len;
  }
  ASSERT_EQ(logical, data.size());
  ASSERT_EQ(::unlink(file.c_str()), 0) << std::strerror(errno);
  ASSERT_RUNS(c, {tool("sync"), "-f", *dir});
  auto r = c.run({tool("fstrim"), "-v", *dir});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  for (auto [phys, len] : extents)
    EXPECT_TRUE(all_zero(read_at(m.disk_path(), phys, len)))
        << "freed extent at " << phys << " not zero";
  // The filesystem is still sound.
  ASSERT_TRUE(c.umount_fs(*dir));
  auto f = c.run({tool("e2fsck"), "-fn", *dev});
  EXPECT_EQ(f.exit_code(), 0) << f.describe();
}

// ---- failures ------------------------------------------------------------------------------

// Copies a tree file by file in 256 KiB writes; at half the bytes, SIGKILLs downstairs 1.
TEST(FuseFailure, CopyCompletesWhenADownstairsIsKilledMidway) {
  START_MOUNTED(c, m);
  const std::string src = c.dir() + "/src";
  make_tree(src, 60, 9);
  const auto want = tree_digest(src);
  uint64_t total = 0;
  for (const auto& e : fs::recursive_directory_iterator(src))
    if (e.is_regular_file() && !e.is_symlink()) total += e.file_size();

  auto dev = c.attach_loop(m.disk_path());
  ASSERT_TRUE(dev) << dev.error().to_string();
  ASSERT_RUNS(c, {tool("mkfs.ext4"), "-q", "-F", "-b", "4096", *dev});
  auto dir = c.mount_fs(*dev);
  ASSERT_TRUE(dir) << dir.error().to_string();

  uint64_t copied = 0;
  bool killed = false;
  for (const auto& e : fs::recursive_directory_iterator(src)) {
    const std::string to = *dir + "/" + e.path().lexically_relative(src).string();
    if (e.is_symlink()) {
      fs::create_symlink(fs::read_symlink(e.path()), to);
    } else if (e.is_directory()) {
      fs::create_directories(to);
    } else {
      auto bytes = read_file(e.path().string());
      Fd out(to, O_WRONLY | O_CREAT | O_TRUNC);
      ASSERT_TRUE(out.ok()) << to << ": " << std::strerror(errno);
      for (size_t off = 0; off < bytes.size(); off += 256 * kKiB) {
        size_t n = std::min<size_t>(256 * kKiB, bytes.size() - off);
        ASSERT_TRUE(pwrite_all(out.get(), bytes.data() + off, n, off))
            << to << ": " << std::strerror(errno);
        copied += n;
        if (!killed && copied >= total / 2) {
          c.kill_downstairs(1);
          killed = true;
        }
      }
      ASSERT_EQ(out.close(), 0) << to << ": " << std::strerror(errno);
    }
  }
  ASSERT_TRUE(killed);
  ASSERT_RUNS(c, {tool("sync"), "-f", *dir});
  EXPECT_EQ(tree_digest(*dir), want);
  ASSERT_TRUE(c.umount_fs(*dir));
  auto f = c.run({tool("e2fsck"), "-fn", *dev});
  EXPECT_EQ(f.exit_code(), 0) << f.describe();
  // The volume noticed and carries on with two replicas.
  auto st = m.status();
  ASSERT_TRUE(st) << st.error().to_string();
  EXPECT_EQ((*st)["state"], "active") << st->dump();
  EXPECT_NE((*st)["downstairs"][1]["state"], "active") << st->dump();
}

TEST(FuseFencing, NewerMountFencesTheOlderWhichFailsWithEioAndWritesNothing) {
  START_MOUNTED(c, old_mount);
  const auto a = pattern(1 * kMiB, 41), b = pattern(1 * kMiB, 42);
  Fd fd(old_mount.disk_path(), O_RDWR);
  ASSERT_TRUE(fd.ok()) << std::strerror(errno);
  ASSERT_TRUE(pwrite_all(fd.get(), a.data(), a.size(), 2 * kMiB)) << std::strerror(errno);
  ASSERT_EQ(::fsync(fd.get()), 0) << std::strerror(errno);

  // The same targets, generation auto: one higher than the old mount's.
  auto newer = c.mount();
  ASSERT_TRUE(newer) << newer.error().to_string();
  auto fenced = old_mount.process().find_line("fenced", kFenceTimeout);
  ASSERT_TRUE(fenced) << fenced.error().to_string();

  std::vector<char> buf(64 * kKiB);
  errno = 0;
  EXPECT_EQ(::pread(fd.get(), buf.data(), buf.size(), 2 * kMiB), -1);
  EXPECT_EQ(errno, EIO) << std::strerror(errno);
  errno = 0;
  EXPECT_EQ(::pwrite(fd.get(), b.data(), b.size(), 2 * kMiB), -1);
  EXPECT_EQ(errno, EIO) << std::strerror(errno);
  errno = 0;
  EXPECT_EQ(::pwrite(fd.get(), b.data(), 1000, 2 * kMiB + 5), -1);  // read-modify-write
  EXPECT_EQ(errno, EIO) << std::strerror(errno);
  errno = 0;
  EXPECT_EQ(::fsync(fd.get()), -1);
  EXPECT_EQ(errno, EIO) << std::strerror(errno);
  auto st = old_mount.status();
  ASSERT_TRUE(st) << st.error().to_string();
  EXPECT_EQ((*st)["state"], "disabled") << st->dump();

  // The newer mount sees what the older wrote before it was fenced, nothing after.
  EXPECT_TRUE(read_at((*newer)->disk_path(), 2 * kMiB, a.size()) == a);
  // Still nothing once the older is gone (no late write lands at its exit either).
  auto exit = old_mount.unmount();
  ASSERT_TRUE(exit) << exit.error().to_string();
  EXPECT_FALSE(old_mount.mounted());
  EXPECT_TRUE(read_at((*newer)->disk_path(), 2 * kMiB, a.size()) == a);
  // The newer mount works.
  {
    Fd nfd((*newer)->disk_path(), O_RDWR);
    ASSERT_TRUE(pwrite_all(nfd.get(), b.data(), b.size(), 2 * kMiB)) << std::strerror(errno);
    ASSERT_EQ(::fsync(nfd.get()), 0) << std::strerror(errno);
  }
  EXPECT_TRUE(read_at((*newer)->disk_path(), 2 * kMiB, b.size()) == b);
}

// ---- quorum (docs/fault-model.md) ---------------------------------------------------------

// Two of three downstairs gone (killed, or stopped: connected but silent): the volume
// waits the quorum grace for one to return, then fails fsync with EIO (not after the 30 s
// offline or 45 s silence timeouts); the unmount cannot make the acknowledged writes
// durable on two replicas, says so and exits non-zero.
class FuseQuorum : public ::testing::TestWithParam<bool> {};  // stopped (SIGSTOP), not killed

TEST_P(FuseQuorum, TwoDownstairsGoneFailFsyncWithEioAndTheUnmountReportsIt) {
  START_MOUNTED(c, m);
  const auto before = pattern(256 * kKiB, 51), after = pattern(256 * kKiB, 52);
  Fd fd(m.disk_path(), O_RDWR);
  ASSERT_TRUE(fd.ok()) << std::strerror(errno);
  ASSERT_TRUE(pwrite_all(fd.get(), before.data(), before.size(), 0)) << std::strerror(errno);
  ASSERT_EQ(::fsync(fd.get()), 0) << std::strerror(errno);

  for (int i : {1, 2}) {
    if (GetParam())
      c.pause_downstairs(i);
    else
      c.kill_downstairs(i);
  }
  // Within the grace the write may be acknowledged (write-back) or already refused; the
  // fsync after it cannot reach two replicas either way.
  const bool written = pwrite_all(fd.get(), after.data(), after.size(), 1 * kMiB);
  EXPECT_TRUE(written || errno == EIO) << std::strerror(errno);
  errno = 0;
  EXPECT_EQ(::fsync(fd.get()), -1) << "fsync acknowledged with one replica left";
  EXPECT_EQ(errno, EIO) << std::strerror(errno);
  auto st = m.wait_status([](const nlohmann::json& j) { return j.value("quorum_lost", false); },
                          Millis(20000));
  ASSERT_TRUE(st) << st.error().to_string();
  EXPECT_EQ((*st)["complete_copies"], 1) << st->dump();
  EXPECT_EQ((*st)["degraded"], true) << st->dump();
  // Reads are still served by the good replica.
  EXPECT_TRUE(read_at(m.disk_path(), 0, before.size()) == before);
  static_cast<void>(fd.close());  // its flush fails too

  auto exit = m.unmount();
  ASSERT_TRUE(exit) << exit.error().to_string();
  EXPECT_TRUE(exit->exited() && exit->code != 0) << exit->describe() << "\n"
                                                 << m.process().output();
  EXPECT_TRUE(
      m.process().find_line("unmount failed: the final flush did not reach quorum", Millis(0)))
      << m.process().output();
  EXPECT_FALSE(m.process().find_line("volume flushed", Millis(0))) << m.process().output();
  EXPECT_FALSE(m.mounted());
}

INSTANTIATE_TEST_SUITE_P(Fuse, FuseQuorum, ::testing::Bool(),
                         [](const auto& p) { return p.param ? "Stopped" : "Killed"; });

// ---- refusals at start -------------------------------------------------------------------

struct BadStart {
  const char* name;
  std::string yaml;      // empty: no config file at all
  std::string expected;  // after "crucible-fuse: "; FILE and MNT are replaced
  bool missing_mountpoint = false;
};

class FuseRefusesToStart : public ::testing::TestWithParam<BadStart> {};

TEST_P(FuseRefusesToStart, ExitsNonZeroWithTheMessageAndNoMount) {
  const BadStart& p = GetParam();
  TempDir dir;
  const std::string mnt = dir.file(p.missing_mountpoint ? "no-such-dir" : "mnt");
  if (!p.missing_mountpoint) fs::create_directory(mnt);
  const std::string cfg = dir.file("crucible.yaml");
  if (!p.yaml.empty()) std::ofstream(cfg) << p.yaml;
  std::string expected = p.expected;
  for (auto [from, to] : {std::pair<std::string, std::string>{"FILE", cfg}, {"MNT", mnt}})
    if (auto at = expected.find(from); at != std::string::npos)
      expected.replace(at, from.size(), to);
  // Foreground and daemonized: both report the error and exit non-zero.
  for (bool foreground : {true, false}) {
    std::vector<std::string> argv = {bin("crucible-fuse"), "-c", cfg, mnt};
    if (foreground) argv.push_back("-f");
    auto r = run_command(argv, Millis(30000));
    EXPECT_FALSE(r.status.timed_out) << r.describe();
    EXPECT_NE(r.exit_code(), 0) << r.describe();
    EXPECT_NE(r.err.find("crucible-fuse: " + expected), std::string::npos)
        << (foreground ? "-f" : "daemon") << ": expected '" << expected << "' in\n"
        << r.describe();
    EXPECT_FALSE(is_mounted(mnt));
    if (is_mounted(mnt)) run_command({tool("umount"), "-l", mnt}, Millis(10000));
  }
}

const std::string kGoodTargets =
    "volume:\n  targets: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\n";

INSTANTIATE_TEST_SUITE_P(
    Fuse, FuseRefusesToStart,
    ::testing::Values(
        BadStart{"UnknownKey", kGoodTargets + "mount:\n  colour: red\n",
                 "FILE: mount.colour: unknown key (expected one of: path, allow_other)"},
        BadStart{"TwoTargets", "volume:\n  targets: [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n",
                 "FILE: volume.targets: expected exactly 3 host:port addresses, got 2"},
        BadStart{"BadAddress",
                 "volume:\n  targets: [\"127.0.0.1:1\", \"127.0.0.1:99999\", \"127.0.0.1:3\"]\n",
                 "FILE: volume.targets[1]: "},
        BadStart{"BadType", kGoodTargets + "  limits: { bytes_in_flight: lots }\n",
                 "FILE: volume.limits.bytes_in_flight: 'lots' is not a size"},
        BadStart{"BadBool", kGoodTargets + "  read_only: maybe\n",
                 "FILE: volume.read_only: 'maybe' is not true or false"},
        BadStart{"SyntaxError", kGoodTargets + "mount: [\n", "FILE: line "},
        BadStart{"MissingFile", "", "FILE: cannot open the config file"},
        BadStart{"MissingMountPoint", kGoodTargets, "mount point MNT is not an existing directory",
                 true}),
    [](const ::testing::TestParamInfo<BadStart>& p) { return p.param.name; });

}  // namespace
}  // namespace cru::test
