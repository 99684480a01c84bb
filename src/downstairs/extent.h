// One extent: a fixed run of blocks stored in one file with per-block contexts and
// per-extent metadata (generation, flush number, dirty flag). Crash safety uses POSIX
// fsync ordering only; see docs/extent-format.md for the layout and the argument.
// Owned by its Region; used from one thread.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "common/ids.h"
#include "common/result.h"
#include "downstairs/file_io.h"
#include "proto/messages.h"

namespace cru::downstairs {

// Bump when the file layout or its meaning changes (docs/extent-format.md, "Format
// version"). Version 2: a flush leaves the dirty flag set and recovery decides dirty from
// next_slot_seq. Metadata of version 1 is still read; what this build writes is version 2.
inline constexpr uint32_t kExtentFormatVersion = 2;
inline constexpr uint32_t kOldestExtentFormatVersion = 1;
// Each block has two context slots (the active one is never overwritten in place).
inline constexpr size_t kSlotBytes = 64;
inline constexpr size_t kSlotPairBytes = 2 * kSlotBytes;
// Two copies of the metadata, written alternately, so a torn metadata write always
// leaves the previous copy intact.
inline constexpr size_t kMetaCopyBytes = 4096;

// Where everything lives in an extent file, from the geometry alone.
struct ExtentLayout {
  uint32_t block_size = 0;
  uint64_t blocks = 0;  // blocks per extent

  uint64_t data_offset(uint64_t block) const { return block * block_size; }
  uint64_t slots_offset(uint64_t block) const {
    return blocks * block_size + block * kSlotPairBytes;
  }
  uint64_t meta_offset(int copy) const {
    uint64_t end_of_slots = slots_offset(blocks);
    uint64_t aligned = (end_of_slots + kMetaCopyBytes - 1) / kMetaCopyBytes * kMetaCopyBytes;
    return aligned + static_cast<uint64_t>(copy) * kMetaCopyBytes;
  }
  uint64_t file_bytes() const { return meta_offset(2); }
};

// A context slot as stored. seq orders writes to the same block: the valid slot with
// the higher seq is the newer one. seq 0 means the slot is empty.
struct Slot {
  uint64_t seq = 0;
  uint64_t hash = 0;       // integrity hash of the stored bytes (see expected_hash)
  bool discarded = false;  // the block was discarded: reads as zeros, unwritten
  std::optional<proto::EncryptionContext> encryption;

  bool empty() const { return seq == 0; }
  // The context a read reports: nullopt for empty and discarded slots.
  std::optional<proto::BlockContext> context() const;
};

// What the extent holds for one block, for dump and verify.
struct BlockReport {
  std::array<Slot, 2> slots;
  int active = -1;  // index into slots, or -1 (never written)
  bool data_matches = false;
  uint64_t data_hash = 0;  // XXH64 of the stored data bytes
};

class Extent {
 public:
  // Creates a new extent file (all blocks unwritten, generation 0, flush 0, clean):
  // written to a temp file, synced and renamed into place, then the directory synced.
  // Space::kKeep allocates the whole file first.
  static Status create(FileSystem& fs, const std::string& path, const ExtentLayout& layout,
                       Space space);

  // Opens an extent. A read-write open of a dirty extent recovers it first: each block
  // gets the newest slot that matches its data (a crash may have kept either). A
  // read-only open never modifies the file; reads of a dirty extent then check hashes.
  // Leftover repair staging files are removed (read-write only).
  // `space` says what a discard does with the blocks' space.
  static Result<std::unique_ptr<Extent>> open(FileSystem& fs, const std::string& path,
                                              const ExtentLayout& layout, ExtentId id,
                                              bool read_only, bool encrypted, Space space);

  ExtentId id() const { return id_; }
  const ExtentLayout& layout() const { return layout_; }
  // (generation, flush, dirty) where dirty means written since the last flush (the flag on
  // disk may still be set after a flush: see settle()).
  proto::ExtentVersion version() const {
    return {generation_, flush_, dirty_, !damaged_blocks_.empty()};
  }
  bool dirty() const { return dirty_; }
  // Blocks (within the extent) whose bytes matched none of their contexts when the extent
  // was recovered: never given a new context (that would make rot or a torn block look
  // valid), they read as kCorrupt until written again or the extent is repaired.
  const std::set<uint64_t>& damaged_blocks() const { return damaged_blocks_; }
  // Whether the dirty flag on disk is set (the extent is scanned if it opens after a crash).
  bool dirty_on_disk() const { return dirty_on_disk_; }

  // Block offsets are relative to the extent; the caller checks ranges and hashes.
  // Reads count blocks: one optional context per block (nullopt: unwritten, zeros). A
  // range holding a damaged block fails with kCorrupt naming the block.
  Status read(uint64_t first, std::span<std::optional<proto::BlockContext>> contexts,
              std::span<std::byte> data);
  // Writes blocks; with only_unwritten, blocks that hold a context are left alone (if all
  // are, only the dirty flag is set: see write() on replays).
  Status write(uint64_t first, std::span<const proto::BlockContext> contexts,
               std::span<const std::byte> data, bool only_unwritten);
  // Makes blocks unwritten (zeros); their space is released or kept (see open()).
  Status discard(uint64_t first, uint64_t count);
  // If dirty: makes data and contexts durable, then records the numbers durably. A clean
  // extent is not touched. The dirty flag stays set on disk (the next write needs no sync
  // to set it); settle() clears it.
  Status flush(FlushNumber flush, Generation generation);
  // flush() in steps, so that a region syncs many extents at once: sync file() (then call
  // synced()), write_flush_meta(), sync file() again (synced()), then flushed(). Until
  // flushed() the extent keeps its old numbers and stays dirty.
  File& file() { return *file_; }
  void synced();
  Status write_flush_meta(FlushNumber flush, Generation generation);
  void flushed(FlushNumber flush, Generation generation);
  // At rest (no write since the last flush) with the flag still set on disk: clears it
  // durably, so that opening after a crash needs no scan and dump shows it clean.
  Status settle();

  // Every block's slots and whether its data matches (verify, dump).
  Result<std::vector<BlockReport>> inspect(uint64_t first, uint64_t count);

  // Opening an extent removes a staging file left at this path by an interrupted repair.
  static std::string staging_path(const std::string& path) { return path + ".repair"; }

 private:
  Extent(std::unique_ptr<File> file, const ExtentLayout& layout, ExtentId id, bool read_only,
         bool encrypted, Space space)
      : file_(std::move(file)),
        layout_(layout),
        id_(id),
        read_only_(read_only),
        encrypted_(encrypted),
        space_(space) {}

  Status load_meta();
  Status write_meta(Generation generation, FlushNumber flush, bool dirty, uint64_t next_slot_seq);
  // Before the first write since the last flush, whose slots start at first_seq.
  Status mark_dirty(uint64_t first_seq);
  // fdatasync, and forget which blocks had unsynced data.
  Status sync();
  // Encrypted only: before a write overwrites the inactive slot of a block, the active
  // slot's data must be durable, else a crash can leave neither context matching the
  // data on disk (the older, overwritten slot described it). Syncs if needed.
  Status sync_before_overwriting(uint64_t first, uint64_t count);
  // A dirty extent after a crash: each block keeps the newest slot that matches its data,
  // and the extent stays dirty only if anything was written since its last flush. With
  // repair false (read-only) nothing is written; only dirty_ is decided.
  Status recover(bool repair);
  Result<std::vector<std::byte>> read_slot_pairs(uint64_t first, uint64_t count);
  // Which of a block's slots is active; with data, only a slot matching it counts.
  int select_slot(std::span<const std::byte> pair, std::span<const std::byte> data,
                  bool check_data) const;

  std::unique_ptr<File> file_;
  ExtentLayout layout_;
  ExtentId id_;
  bool read_only_;
  bool encrypted_;
  Space space_;
  Generation generation_;
  FlushNumber flush_;
  bool dirty_ = false;          // written since the last flush
  bool dirty_on_disk_ = false;  // the flag as written (and synced) to the metadata
  uint64_t meta_seq_ = 0;
  uint64_t next_slot_seq_ = 1;
  uint32_t meta_format_ = kExtentFormatVersion;  // of the metadata copy loaded at open
  std::vector<bool> unsynced_;  // encrypted only: blocks whose data was written since the last sync
  std::set<uint64_t> damaged_blocks_;  // bounded by the blocks per extent
};

// Slot encoding, exposed for tests and tools.
void encode_slot(const Slot& slot, std::span<std::byte, kSlotBytes> out);
// An empty slot for bytes that fail the slot checksum or are all zero.
Slot decode_slot(std::span<const std::byte, kSlotBytes> in);
// The hash a slot must hold for `data` to match it.
uint64_t expected_hash(const Slot& slot, std::span<const std::byte> data);

}  // namespace cru::downstairs
