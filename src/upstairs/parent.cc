#include "upstairs/parent.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "common/assert.h"
#include "common/units.h"

namespace cru::upstairs {

WrittenMask written_mask(std::span<const std::optional<proto::BlockContext>> contexts) {
  WrittenMask m(contexts.size());
  for (size_t i = 0; i < contexts.size(); ++i) m[i] = contexts[i].has_value();
  return m;
}

Bytes merge_parent(const Bytes& parent, const MaskedRead& volume, uint32_t block_size) {
  const size_t n = volume.written.size();
  CRU_ASSERT(volume.data.size() == n * block_size && parent.size() <= volume.data.size() &&
                 parent.size() % block_size == 0,
             "parent and volume reads that do not fit together");
  const size_t covered = parent.size() / block_size;
  // Block i comes from the volume if written there or past the parent's end.
  auto from_volume = [&](size_t i) { return i >= covered || volume.written[i]; };
  bool any_volume = false, any_parent = false;
  for (size_t i = 0; i < n && !(any_volume && any_parent); ++i)
    (from_volume(i) ? any_volume : any_parent) = true;
  if (!any_parent) return volume.data;
  if (!any_volume) return parent;
  ByteBuffer out(n * block_size);
  // Runs from one side: one copy per run, not per block.
  for (size_t i = 0; i < n;) {
    const bool v = from_volume(i);
    size_t end = i + 1;
    while (end < n && from_volume(end) == v) ++end;
    const std::byte* src = (v ? volume.data.data() : parent.data()) + i * block_size;
    std::memcpy(out.data() + i * block_size, src, (end - i) * block_size);
    i = end;
  }
  return Bytes(std::move(out));
}

Result<uint64_t> check_parent_geometry(const std::string& key, uint64_t parent_bytes,
                                       uint32_t parent_block_size, uint64_t volume_blocks,
                                       uint32_t volume_block_size) {
  CRU_ASSERT(volume_block_size > 0);
  if (parent_block_size != 0 && parent_block_size != volume_block_size)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{}: the parent has {}-byte blocks but the volume has {}-byte "
                            "blocks; a parent must have the volume's block size",
                            key, parent_block_size, volume_block_size));
  if (parent_bytes == 0)
    return fail(ErrorCode::kInvalidArgument, fmt::format("{}: the parent is empty", key));
  if (parent_bytes % volume_block_size != 0)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{}: the parent's size, {} bytes, is not a whole number of the "
                            "volume's {}-byte blocks",
                            key, parent_bytes, volume_block_size));
  const uint64_t blocks = parent_bytes / volume_block_size;
  if (blocks > volume_blocks)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{}: the parent ({}, {} bytes) is larger than the volume ({}, {} "
                            "bytes)",
                            key, format_size(parent_bytes), parent_bytes,
                            format_size(volume_blocks * volume_block_size),
                            volume_blocks * volume_block_size));
  return blocks;
}

}  // namespace cru::upstairs
