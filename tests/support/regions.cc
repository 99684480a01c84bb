#include "support/regions.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>

namespace cru::test {

namespace {

// dump and verify read every extent of a test-sized region.
constexpr Millis kToolTimeout{600000};

}  // namespace

std::string pattern(uint64_t seed, size_t size) {
  std::mt19937_64 rng(seed);
  std::string s(size, '\0');
  for (size_t i = 0; i + 8 <= size; i += 8) {
    uint64_t v = rng();
    std::memcpy(s.data() + i, &v, 8);
  }
  return s;
}

::testing::AssertionResult write_synced(const std::string& path, std::string_view data,
                                        uint64_t offset) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    return ::testing::AssertionFailure() << "open " << path << ": " << std::strerror(errno);
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n =
        ::pwrite(fd, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
    if (n <= 0) {
      const int e = errno;
      ::close(fd);
      return ::testing::AssertionFailure() << "pwrite " << path << ": " << std::strerror(e);
    }
    done += static_cast<size_t>(n);
  }
  const bool synced = ::fsync(fd) == 0;
  const int e = errno;
  ::close(fd);
  if (!synced) return ::testing::AssertionFailure() << "fsync " << path << ": " << std::strerror(e);
  return ::testing::AssertionSuccess();
}

std::string read_range(const std::string& path, size_t len, uint64_t offset) {
  std::string out(len, '\0');
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  size_t done = 0;
  while (done < len) {
    ssize_t n = ::pread(fd, out.data() + done, len - done, static_cast<off_t>(offset + done));
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  out.resize(done);
  return out;
}

std::vector<std::string> fio_verify_args(const std::string& file, uint64_t size_bytes, int seed,
                                         const std::vector<std::string>& extra) {
  std::vector<std::string> a = {tool("fio"),
                                "--name=verify",
                                "--filename=" + file,
                                fmt::format("--size={}", size_bytes),
                                "--rw=randwrite",
                                "--bsrange=4k-64k",
                                "--direct=1",
                                "--ioengine=libaio",
                                "--iodepth=16",
                                "--fsync=32",
                                "--verify=crc32c",
                                "--verify_fatal=1",
                                "--do_verify=1",
                                "--verify_state_save=0",  // no state file in the working directory
                                fmt::format("--randseed={}", seed)};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

std::string extent_file(const std::string& region, uint32_t n) {
  return fmt::format("{}/{:02X}/{:03X}/{:03X}", region, (n >> 24) & 0xff, (n >> 12) & 0xfff,
                     n & 0xfff);
}

std::string extent_data(const std::string& region, uint32_t n, const ClusterOptions& geometry) {
  std::ifstream in(extent_file(region, n), std::ios::binary);
  std::string data(geometry.block_size * geometry.extent_size_blocks, '\0');
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  return in ? data : std::string();
}

std::vector<uint32_t> differing_data(const std::string& a, const std::string& b,
                                     const ClusterOptions& geometry) {
  std::vector<uint32_t> out;
  for (uint32_t e = 0; e < geometry.extent_count; ++e) {
    std::string da = extent_data(a, e, geometry), db = extent_data(b, e, geometry);
    if (da.empty() || db.empty() || da != db) out.push_back(e);
  }
  return out;
}

void expect_regions_equal(const std::vector<std::string>& regions, const ClusterOptions& geometry) {
  std::vector<std::string> args = {bin("crucible-downstairs"), "dump", "--only-diffs"};
  for (const auto& r : regions) args.insert(args.end(), {"-d", r});
  auto dump = run_command(args, kToolTimeout);
  EXPECT_EQ(dump.exit_code(), 0) << "the regions differ:\n" << dump.describe();
  for (size_t i = 1; i < regions.size(); ++i) {
    auto diff = differing_data(regions[0], regions[i], geometry);
    EXPECT_TRUE(diff.empty()) << regions[i] << " holds other data than " << regions[0]
                              << " in extents " << fmt::format("{}", fmt::join(diff, ", "));
  }
  for (const auto& r : regions) {
    auto v = run_command({bin("crucible-downstairs"), "verify", "-d", r}, kToolTimeout);
    EXPECT_EQ(v.exit_code(), 0) << "verify " << r << ":\n" << v.describe();
  }
}

}  // namespace cru::test
