// The verify workload's write log: per block, how many times it was written (its data
// is a pure function of block, count and seed), the count at the last acknowledged
// flush, so a later run can check every block, even across crashes: a block may then
// hold any count between its last flushed one and its last written one. Saved as a
// small binary file (4+4 bytes per block).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"

namespace cru::tools {

class WriteLog {
 public:
  WriteLog(uint32_t block_size, uint64_t blocks, uint64_t seed);
  static Result<WriteLog> load(const std::string& path);
  Status save(const std::string& path) const;

  uint32_t block_size() const { return block_size_; }
  uint64_t blocks() const { return current_.size(); }
  uint64_t seed() const { return seed_; }

  // Records a write of `count` blocks from `first` and fills `out` with their new data.
  void write(uint64_t first, uint64_t count, std::span<std::byte> out);
  // Every recorded write is durable now.
  void flushed();
  // Checks blocks read back from `first`; a block never written is not checked.
  // Errors name the first wrong block.
  Status check(uint64_t first, std::span<const std::byte> data) const;
  uint64_t written_blocks() const;

  // The data of `block` after its `count`th write.
  void fill(uint64_t block, uint32_t count, std::span<std::byte> out) const;

 private:
  uint32_t block_size_;
  uint64_t seed_;
  std::vector<uint32_t> current_;  // writes issued
  std::vector<uint32_t> durable_;  // writes covered by an acknowledged flush
};

}  // namespace cru::tools
