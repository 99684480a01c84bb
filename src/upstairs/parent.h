// A volume's read-only parent (issue 12, docs/volumes.md "Read-only parent"): the pure rules
// of reading through it. A block the volume never wrote reads from the parent; a block it
// wrote reads from the volume. Here: the written mask from a read's per-block contexts, the
// merge of parent and volume data, and the geometry checks. No IO, no threads; the shell is
// read_only_parent.h.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "common/result.h"
#include "proto/messages.h"
#include "upstairs/block_device.h"

namespace cru::upstairs {

// One entry per context: whether that block holds data (a never-written or discarded block
// comes back from the downstairs without a context).
WrittenMask written_mask(std::span<const std::optional<proto::BlockContext>> contexts);

// The blocks of a read as the guest must see them: the volume's where it wrote them, the
// parent's elsewhere. `parent` holds the parent's data for the read's first
// parent.size() / block_size blocks (a parent shorter than the volume ends early: past its
// end the volume's data, zeros where unwritten, is the answer); `volume` is the volume's
// read of the whole range. Copies nothing when every block comes from one side; otherwise
// copies each block once into a new buffer.
// Preconditions: volume.data is volume.written.size() blocks of `block_size` bytes, and
// `parent` is at most that long, in whole blocks.
Bytes merge_parent(const Bytes& parent, const MaskedRead& volume, uint32_t block_size);

// The parent's geometry against the volume's: the parent covers blocks [0, its size) of the
// volume, so it must be a whole number of the volume's blocks and no larger than the
// volume. `key` names the config key in errors (e.g. volume.read_only_parent.file).
// `parent_block_size` 0: a file (only its byte size matters). Returns the parent's size in
// blocks.
Result<uint64_t> check_parent_geometry(const std::string& key, uint64_t parent_bytes,
                                       uint32_t parent_block_size, uint64_t volume_blocks,
                                       uint32_t volume_block_size);

}  // namespace cru::upstairs
