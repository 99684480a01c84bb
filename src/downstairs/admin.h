// Offline operations on regions, behind the crucible-downstairs subcommands: import a
// file into a region, export blocks to a file, compare replicas (dump), and check every
// block against its context (verify). Each returns a value the CLI prints; none exits.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "downstairs/region.h"

namespace cru::downstairs {

struct ImportStats {
  uint32_t extents_created = 0;  // extents added to fit the file
  uint64_t blocks_copied = 0;    // blocks written (the last one zero-padded)
  uint64_t zero_blocks = 0;      // all-zero blocks left unwritten (they read as zeros)
  uint64_t file_bytes = 0;
};

// Copies `file` into the region from block 0, growing the region to fit, then flushes
// (flush number 1). Refuses encrypted regions (the downstairs never has the key).
Result<ImportStats> import_file(Region& region, const std::string& file);

// Writes `count` blocks (all when nullopt) starting at block `skip` to a flat file.
Result<uint64_t> export_file(Region& region, const std::string& file, uint64_t skip,
                             std::optional<uint64_t> count);

struct DumpOptions {
  std::optional<uint32_t> extent;  // only this extent
  std::optional<uint64_t> block;   // show this block's contexts in each region
  bool only_diffs = false;
};
struct DumpReport {
  std::string text;
  bool differ = false;  // the regions' metadata (or the block's data) differ
};
// Per extent, each region's generation, flush number and dirty flag side by side.
Result<DumpReport> dump(const std::vector<Region*>& regions, const std::vector<std::string>& names,
                        const DumpOptions& options);

struct VerifyReport {
  uint64_t blocks = 0;
  uint64_t written = 0;
  uint64_t mismatches = 0;
  uint64_t damaged_extents = 0;  // files that could not be opened; their blocks are not counted
  std::string text;              // one line per mismatch or damaged extent, then a summary line
};
// Every block's data against its active context (or zeros for unwritten blocks). An extent
// whose file could not be opened is reported damaged, not an error of verify itself.
Result<VerifyReport> verify(Region& region);

}  // namespace cru::downstairs
