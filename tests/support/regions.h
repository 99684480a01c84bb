// Reading regions on disk after a test, every process stopped: one extent file's data, and
// the end-of-test check that replicas are identical (crucible-downstairs dump and verify,
// and the data of every extent file compared). The geometry comes from the ClusterOptions
// the regions were made with. Used from the test thread; gtest expectations report.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "support/cluster.h"

namespace cru::test {

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
