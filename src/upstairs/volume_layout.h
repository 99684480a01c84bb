// Where a volume's blocks live when it is made of several sub-volumes (each a three-replica
// region set): either their concatenation, or stripes of `stripe_blocks` dealt round-robin
// over sub-volumes of equal size. Pure arithmetic, no IO and no threads: the sub-volume
// shell (sub_volumes.h) splits each guest IO with it; tests check it exhaustively.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/result.h"

namespace cru::upstairs {

// Room for a volume spread over many hosts; far above what a config lists, low enough that
// a fan-out (a flush reaches every sub-volume) stays cheap.
inline constexpr size_t kMaxSubVolumes = 64;

// One piece of a guest IO: `count` blocks at `start` in sub-volume `sub_volume`, which are
// the IO's blocks from `offset` on (offset counted in blocks from the IO's first block).
struct SubRange {
  size_t sub_volume = 0;
  uint64_t start = 0;
  uint64_t count = 0;
  uint64_t offset = 0;
  friend bool operator==(const SubRange&, const SubRange&) = default;
};

class VolumeLayout {
 public:
  // `sub_volume_blocks`: each sub-volume's size in blocks, in volume order (at least one,
  // none empty). `stripe_blocks` 0: concatenation; otherwise every sub-volume must have
  // the same size, a whole number of stripes. Errors name the sub-volume and the sizes.
  static Result<VolumeLayout> make(std::vector<uint64_t> sub_volume_blocks, uint64_t stripe_blocks);

  uint64_t total_blocks() const { return total_blocks_; }
  size_t sub_volume_count() const { return sizes_.size(); }
  uint64_t stripe_blocks() const { return stripe_blocks_; }
  bool striped() const { return stripe_blocks_ != 0; }
  // The first volume block of sub-volume i (concatenation only).
  uint64_t first_block(size_t i) const;

  // The pieces of [start, start + count) in IO order; adjacent pieces are merged when
  // they continue each other in one sub-volume. At most count / stripe_blocks + 2 pieces
  // (striped) or sub_volume_count() (concatenated). Precondition: the range is inside the
  // volume and count > 0.
  std::vector<SubRange> split(uint64_t start, uint64_t count) const;
  // The same blocks grouped per sub-volume, each group one contiguous range of that
  // sub-volume (striping keeps a sub-volume's share of any volume range contiguous):
  // at most sub_volume_count() ranges, whatever the size. `offset` is that of the group's
  // first block. For IO without data (discard), where the order of blocks does not matter.
  std::vector<SubRange> split_per_sub_volume(uint64_t start, uint64_t count) const;

  // This layout with one more sub-volume at the end. Refused when striped: appending
  // would move most existing blocks to another sub-volume.
  Result<VolumeLayout> appended(uint64_t blocks) const;

 private:
  VolumeLayout(std::vector<uint64_t> sizes, uint64_t stripe_blocks);
  // (sub-volume, block in it) of volume block b.
  SubRange locate(uint64_t b) const;

  std::vector<uint64_t> sizes_;
  std::vector<uint64_t> firsts_;  // concatenation: prefix sums of sizes_
  uint64_t stripe_blocks_ = 0;
  uint64_t total_blocks_ = 0;
};

}  // namespace cru::upstairs
