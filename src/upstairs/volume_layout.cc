#include "upstairs/volume_layout.h"

#include <fmt/format.h>

#include <algorithm>

#include "common/assert.h"

namespace cru::upstairs {

VolumeLayout::VolumeLayout(std::vector<uint64_t> sizes, uint64_t stripe_blocks)
    : sizes_(std::move(sizes)), stripe_blocks_(stripe_blocks) {
  for (uint64_t s : sizes_) {
    firsts_.push_back(total_blocks_);
    total_blocks_ += s;
  }
}

Result<VolumeLayout> VolumeLayout::make(std::vector<uint64_t> sub_volume_blocks,
                                        uint64_t stripe_blocks) {
  if (sub_volume_blocks.empty())
    return fail(ErrorCode::kInvalidArgument, "a volume needs at least one sub-volume");
  uint64_t total = 0;
  for (size_t i = 0; i < sub_volume_blocks.size(); ++i) {
    const uint64_t s = sub_volume_blocks[i];
    if (s == 0)
      return fail(ErrorCode::kInvalidArgument, fmt::format("sub-volume {} has no blocks", i));
    if (s > UINT64_MAX - total)
      return fail(ErrorCode::kInvalidArgument, "the sub-volumes' sizes overflow 64 bits");
    total += s;
    if (stripe_blocks == 0) continue;
    if (s != sub_volume_blocks[0])
      return fail(ErrorCode::kInvalidArgument,
                  fmt::format("striped sub-volumes must have the same size: sub-volume {} has "
                              "{} blocks, sub-volume 0 has {}",
                              i, s, sub_volume_blocks[0]));
    if (s % stripe_blocks != 0)
      return fail(ErrorCode::kInvalidArgument,
                  fmt::format("sub-volume {} has {} blocks, not a whole number of {}-block "
                              "stripes",
                              i, s, stripe_blocks));
  }
  return VolumeLayout(std::move(sub_volume_blocks), stripe_blocks);
}

uint64_t VolumeLayout::first_block(size_t i) const {
  CRU_ASSERT(!striped() && i < firsts_.size());
  return firsts_[i];
}

SubRange VolumeLayout::locate(uint64_t b) const {
  CRU_ASSERT(b < total_blocks_);
  if (striped()) {
    const uint64_t stripe = b / stripe_blocks_;
    const uint64_t n = sizes_.size();
    return {static_cast<size_t>(stripe % n), (stripe / n) * stripe_blocks_ + b % stripe_blocks_, 0,
            0};
  }
  const auto it = std::upper_bound(firsts_.begin(), firsts_.end(), b);
  const auto i = static_cast<size_t>(it - firsts_.begin()) - 1;
  return {i, b - firsts_[i], 0, 0};
}

std::vector<SubRange> VolumeLayout::split(uint64_t start, uint64_t count) const {
  CRU_ASSERT(count > 0 && start < total_blocks_ && count <= total_blocks_ - start);
  std::vector<SubRange> out;
  for (uint64_t done = 0; done < count;) {
    SubRange r = locate(start + done);
    // The piece runs to the end of its stripe, or of its sub-volume.
    const uint64_t room = striped() ? stripe_blocks_ - (start + done) % stripe_blocks_
                                    : sizes_[r.sub_volume] - r.start;
    r.count = std::min(room, count - done);
    r.offset = done;
    done += r.count;
    if (!out.empty() && out.back().sub_volume == r.sub_volume &&
        out.back().start + out.back().count == r.start) {
      out.back().count += r.count;  // one sub-volume striped with itself
      continue;
    }
    out.push_back(r);
  }
  return out;
}

std::vector<SubRange> VolumeLayout::split_per_sub_volume(uint64_t start, uint64_t count) const {
  if (!striped()) return split(start, count);  // one piece per sub-volume already
  CRU_ASSERT(count > 0 && start < total_blocks_ && count <= total_blocks_ - start);
  const uint64_t n = sizes_.size();
  const uint64_t sb = stripe_blocks_;
  const uint64_t end = start + count;
  const uint64_t s0 = start / sb, s1 = (end - 1) / sb;
  std::vector<SubRange> out;
  for (uint64_t i = 0; i < n; ++i) {
    // This sub-volume's first and last stripe within [s0, s1]; the stripes between are
    // consecutive rows of it, so its share is one range.
    const uint64_t first = s0 + (i + n - s0 % n) % n;
    if (first > s1) continue;
    const uint64_t last = s1 - (s1 % n + n - i) % n;
    const uint64_t from = (first / n) * sb + (first == s0 ? start % sb : 0);
    const uint64_t to = (last / n) * sb + (last == s1 ? (end - 1) % sb + 1 : sb);
    out.push_back({static_cast<size_t>(i), from, to - from, first == s0 ? 0 : first * sb - start});
  }
  std::sort(out.begin(), out.end(),
            [](const SubRange& a, const SubRange& b) { return a.offset < b.offset; });
  return out;
}

Result<VolumeLayout> VolumeLayout::appended(uint64_t blocks) const {
  if (striped())
    return fail(ErrorCode::kInvalidArgument,
                "a striped volume cannot grow by a sub-volume: every stripe after the first "
                "row would move to another sub-volume (make a new volume and copy instead)");
  std::vector<uint64_t> sizes = sizes_;
  sizes.push_back(blocks);
  return make(std::move(sizes), 0);
}

}  // namespace cru::upstairs
