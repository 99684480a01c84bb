// Hard limits of the wire protocol. Each bounds what a peer can make us allocate or do
// with one frame; the decoder checks all of them before allocating.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/units.h"

namespace cru::proto {

// Block sizes a region may use: powers of two in [512, 32768] (sector size up to the
// largest block a filesystem on top would reasonably use).
inline constexpr uint32_t kMinBlockSize = 512;
inline constexpr uint32_t kMaxBlockSize = 32 * 1024;
constexpr bool valid_block_size(uint64_t bs) {
  return bs >= kMinBlockSize && bs <= kMaxBlockSize && (bs & (bs - 1)) == 0;
}

// One IO carries at most 64 MiB of data: far above the 1 MiB the FUSE layer sends, and
// small enough that a frame fits comfortably in memory thrice (three downstairs).
inline constexpr uint64_t kMaxIoBytes = 64 * kMiB;
inline constexpr uint32_t kMaxIoBlocks = static_cast<uint32_t>(kMaxIoBytes / kMinBlockSize);
// A discard carries no data, so it may cover more; bounded so one job's work is bounded
// (4 GiB at 4 KiB blocks).
inline constexpr uint32_t kMaxDiscardBlocks = 1u << 20;
// A flush depends on every unretired job; the upstairs retires jobs by a barrier after
// 10000 finished ones and admits at most 1500 more per downstairs, so 65536 is ample.
inline constexpr uint32_t kMaxDependencies = 65536;
// Strings are names, addresses and error messages, never data.
inline constexpr uint32_t kMaxStringBytes = 4096;
// One extent file holds at most 1 GiB of data: bounds the time to repair or recover one
// extent, and the memory of one transfer's bookkeeping.
inline constexpr uint64_t kMaxExtentBytes = 1ull << 30;
// One ExtentVersions entry (18 B) per extent, so the list must fit in kMaxMetaBytes;
// 2^18 extents of 64 MiB is a 16 TiB region.
inline constexpr uint32_t kMaxExtents = 1u << 18;
// No vector field may hold more elements than the largest semantic limit above; checked
// before allocating, so a small frame cannot make the decoder allocate much more than
// its own size (an absent context is 1 byte on the wire but 64 in memory).
inline constexpr uint32_t kMaxVectorElements =
    kMaxExtents > kMaxIoBlocks ? kMaxExtents : kMaxIoBlocks;
// The fixed part of a frame: u32 frame length, u32 tag, u32 metadata length.
inline constexpr size_t kFrameHeaderBytes = 12;
// Metadata (everything but bulk data): contexts of the largest IO (49 B per block for
// kMaxIoBlocks) plus the largest dependency list, rounded up.
inline constexpr uint64_t kMaxMetaBytes = 8 * kMiB;
inline constexpr uint64_t kMaxFrameBytes = kFrameHeaderBytes + kMaxMetaBytes + kMaxIoBytes;
// Repair streams an extent file in chunks of this size (bounded memory per transfer).
inline constexpr uint32_t kRepairChunkBytes = static_cast<uint32_t>(1 * kMiB);

}  // namespace cru::proto
