// The simulator's checker: per block, the values a read may legally return and which
// writes a completed flush made durable. Values are guest operation numbers (each write
// stamps its number and the block index into every block it writes, see block_bytes());
// 0 is "never written" (zeros). Owned by one simulation run; single-threaded.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace cru::sim {

using Value = uint64_t;  // the guest operation number of the write, 0 = unwritten

// The bytes a write with operation number `seq` stores in `block`: the number, the block
// index, then a pattern derived from both, so a misplaced or stale block is identified.
void block_bytes(Value seq, uint64_t block, std::span<std::byte> out);
// Which value `bytes` holds for `block`; nullopt if it is none a write could have stored.
std::optional<Value> decode_block(uint64_t block, std::span<const std::byte> bytes);

class Model {
 public:
  explicit Model(uint64_t blocks);

  // Guest operations, numbered in submission order (the upstairs admits in that order).
  void write(uint64_t seq, uint64_t start, uint64_t count, bool only_unwritten);
  void discard(uint64_t seq, uint64_t start, uint64_t count);
  // A flush submitted as operation `seq` was acknowledged: everything before it is durable.
  void flush_acked(uint64_t seq);
  // The upstairs died after operation `seq`: each block may now hold its value at the last
  // acknowledged flush or any value written after it.
  void upstairs_crash(uint64_t seq);

  // Checks a read of `block` submitted as operation `seq`, answered when `last_seq` was the
  // newest operation. Strict: only the value at submission (a read follows every earlier
  // write and precedes every later one). Not strict (the read may have been retried as a
  // new job): any value from then up to last_seq. Returns what is wrong, or nullopt. A
  // strict read of a block with several possible values pins it to the one read.
  std::optional<std::string> check_read(uint64_t block, uint64_t seq, uint64_t last_seq,
                                        std::optional<Value> got, bool strict);

  // A write or discard submitted as `seq` failed: it may have reached some replicas or
  // none, so from then on each block may also hold what it held before.
  void write_failed(uint64_t seq, uint64_t start, uint64_t count);

  // Every value a block may hold for a reader that follows operation `seq` and may see
  // operations up to `last_seq` (what a flush acknowledged at `seq` must keep).
  std::vector<Value> legal(uint64_t block, uint64_t seq, uint64_t last_seq) const;

  // The possible values now (for reports).
  std::string describe(uint64_t block) const;

 private:
  struct Entry {
    uint64_t seq = 0;  // the operation that produced this state
    std::vector<Value> values;
  };
  struct Block {
    std::vector<Entry> history;  // by seq; history[durable] holds at the last acked flush
    size_t durable = 0;
  };
  // Index of the entry in effect just before operation `seq`.
  static size_t at(const Block& b, uint64_t seq);
  static void add(std::vector<Value>& set, Value v);

  std::vector<Block> blocks_;
  uint64_t flushed_seq_ = 0;
};

}  // namespace cru::sim
