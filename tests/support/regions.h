// Checking data end to end: the fio workload that writes a volume and verifies every block,
// and, after a test with every process stopped, one extent file's data and the check that
// replicas are identical (crucible-downstairs dump and verify, and the data of every
// extent file compared). The geometry comes from the ClusterOptions the regions were made
// with. Used from the test thread; gtest expectations report.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "support/cluster.h"

namespace cru::test {

// fio over `size_bytes` of `file`: random 4-64 KiB writes, O_DIRECT, iodepth 16, fsync
// every 32, then every block read back and its crc32c checked (the first mismatch fails
// it). `extra`: e.g. --verify_only (the same seed checks what that run wrote).
// Deterministic contents for test files: `size` bytes from a seeded generator (a tail
// shorter than 8 bytes stays zero).
std::string pattern(uint64_t seed, size_t size);

// Writes `data` at `offset` of the file at `path` (e.g. disk.img) and fsyncs it; the
// failure says which call failed.
::testing::AssertionResult write_synced(const std::string& path, std::string_view data,
                                        uint64_t offset);
// Up to `len` bytes at `offset` (fewer at the end of the file; empty if it cannot be opened).
std::string read_range(const std::string& path, size_t len, uint64_t offset);

std::vector<std::string> fio_verify_args(const std::string& file, uint64_t size_bytes, int seed,
                                         const std::vector<std::string>& extra = {});

// Extent n's file in a region directory (docs/extent-format.md: XX/YYY/ZZZ, upper hex).
std::string extent_file(const std::string& region, uint32_t n);
// The data area (blocks 0..N-1) of one extent file, holes as zeros; empty if unreadable.
std::string extent_data(const std::string& region, uint32_t n, const ClusterOptions& geometry);
// The extents whose data differs between two regions (dump compares metadata only).
std::vector<uint32_t> differing_data(const std::string& a, const std::string& b,
                                     const ClusterOptions& geometry);
// The regions agree in metadata, data and hashes (EXPECT failures say where not).
void expect_regions_equal(const std::vector<std::string>& regions, const ClusterOptions& geometry);

}  // namespace cru::test
