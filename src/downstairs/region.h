// A region: one replica's storage, a directory holding region.json and one file per
// extent. Splits IO that spans extents, validates every request before touching disk,
// and swaps repaired extents in atomically. Owned by the downstairs core; one thread.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "common/hash.h"
#include "common/ids.h"
#include "common/result.h"
#include "downstairs/extent.h"
#include "downstairs/file_io.h"
#include "proto/messages.h"

namespace cru::downstairs {

// Bump when region.json changes incompatibly.
inline constexpr uint32_t kRegionFormatVersion = 1;
using proto::kMaxExtentBytes;
// Defaults: 64 MiB extents of 4 KiB blocks, 16 of them (a 1 GiB volume).
inline constexpr uint32_t kDefaultBlockSize = 4096;
inline constexpr uint64_t kDefaultExtentBytes = 64ull << 20;
inline constexpr uint32_t kDefaultExtentCount = 16;

struct RegionOptions {
  proto::RegionDefinition def;
  uint16_t default_port = 0;  // 0: none recorded
  // Extent files allocated whole at create (a full disk shows then, not mid-write, and a
  // discard keeps the space), or sparse (`create --sparse`: space on first write, given
  // back by a discard). region.json without the key: sparse (regions made before it).
  Space space = Space::kKeep;
};

// Checks geometry limits, naming the offending field as a flag would.
Status validate_geometry(const proto::RegionDefinition& def);

struct ReadResult {
  std::vector<std::optional<proto::BlockContext>> contexts;
  ByteBuffer data;
};

class RepairStaging;

// The last read-write promotion. Kept in promotion.json so that after a restart the
// downstairs still knows which generation was promoted last and by whom: only that
// upstairs and session may come back with the same generation (fencing).
struct Promotion {
  Generation generation;
  Uuid upstairs_id;
  Uuid session_id;
  friend bool operator==(const Promotion&, const Promotion&) = default;
};

class Region {
 public:
  // Creates a region in `dir` (made if missing). Refuses a directory that already
  // holds region.json. Extents are created first and region.json last, so a crash
  // leaves either no region or a whole one.
  static Result<std::unique_ptr<Region>> create(FileSystem& fs, const std::string& dir,
                                                const RegionOptions& options);
  // Opens every extent (recovering dirty ones unless read_only). An extent whose file is
  // missing, has the wrong size or no valid metadata does not stop the region: it is
  // damaged (logged, reported by versions() and damage()), its IO fails with kCorrupt, and
  // a repair from a peer replaces its file.
  static Result<std::unique_ptr<Region>> open(FileSystem& fs, const std::string& dir,
                                              bool read_only);
  // Reads region.json only.
  static Result<RegionOptions> read_options(FileSystem& fs, const std::string& dir);

  const proto::RegionDefinition& def() const { return options_.def; }
  uint16_t default_port() const { return options_.default_port; }
  bool read_only() const { return read_only_; }
  const std::string& dir() const { return dir_; }
  // The filesystem its files live on (snapshots are made beside them).
  FileSystem& fs() const { return fs_; }

  const std::optional<Promotion>& last_promotion() const { return promotion_; }
  // Durable (written atomically and synced) when it returns.
  Status record_promotion(const Promotion& p);

  // Adds extents so the region holds at least `extent_count` (import of a large file).
  Status extend(uint32_t extent_count);

  // ---- IO (absolute blocks; may span extents) -------------------------------------
  // Errors: kOffsetInvalid (outside the region), kExtentClosed, kIo.
  Result<ReadResult> read(BlockIndex start, uint64_t count);
  // Checks block size, range, open extents, and every block's hash before writing any
  // (kBlockSizeMismatch, kOffsetInvalid, kExtentClosed, kEncryptionMismatch,
  // kHashMismatch, kReadOnly).
  Status write(BlockIndex start, uint32_t block_size, std::span<const proto::BlockContext> contexts,
               std::span<const std::byte> data, bool only_unwritten);
  Status discard(BlockIndex start, uint64_t count);
  // Flushes every open dirty extent (only those <= extent_limit when given), syncing
  // their files all at once.
  Status flush(FlushNumber flush, Generation generation, std::optional<ExtentId> extent_limit);
  // Clears the on-disk dirty flag of every open extent at rest (see Extent::settle): when
  // no upstairs is active, so that a region left alone opens without scans.
  Status settle();

  // ---- extents -------------------------------------------------------------------------
  // (generation, flush, dirty, damaged) of every extent; a closed extent reports its state
  // at close; an extent whose file could not be opened reports (0, 0, clean, damaged).
  std::vector<proto::ExtentVersion> versions() const;
  // Why the extent is damaged (its file could not be opened, or blocks that match none of
  // their contexts), or nullopt if it is not.
  std::optional<std::string> damage(ExtentId e) const;
  bool is_open(ExtentId e) const;
  // Closes an extent for repair; one at rest is settled first, so that its file (which a
  // repair copies) is clean. A damaged extent whose file could not be opened closes too.
  Result<proto::ExtentVersion> close_extent(ExtentId e);
  // Flushes one extent if dirty (reconciliation's ExtentFlush; the extent stays open).
  Status flush_extent(ExtentId e, FlushNumber flush, Generation generation);
  // An extent whose file cannot be opened fails and is damaged from then on.
  Status reopen_extent(ExtentId e);
  // Reopens every closed extent (a new upstairs session starts from a whole region). A
  // damaged extent that still cannot be opened stays damaged and is not an error.
  Status reopen_all();
  // Blocks of one extent for verify and dump.
  Result<std::vector<BlockReport>> inspect(ExtentId e, uint64_t first, uint64_t count);

  // ---- repair ------------------------------------------------------------------------
  // Source side: the closed extent's file, read-only, for streaming to a peer. A damaged
  // extent is refused (kCorrupt): it must not spread.
  Result<std::unique_ptr<File>> open_for_transfer(ExtentId e);
  // Changes whenever the extent is reopened: a transfer that saw it change is void.
  uint64_t extent_epoch(ExtentId e) const;
  // Target side: starts receiving a closed extent's replacement.
  Result<std::unique_ptr<RepairStaging>> begin_repair(ExtentId e);
  uint64_t extent_file_bytes() const { return layout_.file_bytes(); }
  std::string extent_path(ExtentId e) const;

 private:
  friend class RepairStaging;
  Region(FileSystem& fs, std::string dir, RegionOptions options, bool read_only);
  Status check_range(BlockIndex start, uint64_t count) const;
  Status check_extent(ExtentId e) const;
  Result<Extent*> open_extent(ExtentId e);  // kExtentClosed if closed, kCorrupt if damaged
  Status check_open(ExtentId e) const;
  // Records that extent e's file cannot be opened (why), and logs it.
  void mark_broken(ExtentId e, const Error& why);
  // fdatasync of every extent's file at once (FileSystem::sync_all).
  Status sync_all(const std::vector<Extent*>& extents);
  void end_repair(ExtentId e) { repairing_.erase(e); }

  FileSystem& fs_;
  std::string dir_;
  RegionOptions options_;
  bool read_only_;
  std::optional<Promotion> promotion_;
  ExtentLayout layout_;
  // nullptr while closed (for repair); closed_versions_ then holds its state at close.
  std::vector<std::unique_ptr<Extent>> extents_;
  std::vector<proto::ExtentVersion> closed_versions_;
  std::vector<uint64_t> epochs_;
  // Non-empty: why the extent's file could not be opened (the extent is then closed).
  std::vector<std::string> broken_;
  std::set<ExtentId> repairing_;
};

// An extent file being received from a peer. Chunks must arrive in order; commit()
// checks the size and end-to-end hash, syncs, and renames the file over the extent
// (atomic: a crash leaves the old extent or the new one). Destroying an uncommitted
// staging removes its file. Must not outlive its Region.
class RepairStaging {
 public:
  ~RepairStaging();
  RepairStaging(const RepairStaging&) = delete;
  RepairStaging& operator=(const RepairStaging&) = delete;

  Status append(uint64_t offset, std::span<const std::byte> data);
  Status commit(uint64_t file_bytes, uint64_t file_hash);
  uint64_t received_bytes() const { return received_; }

 private:
  friend class Region;
  RepairStaging(Region& region, ExtentId extent, std::unique_ptr<File> file, std::string path);

  Region& region_;
  ExtentId extent_;
  std::unique_ptr<File> file_;
  std::string path_;
  uint64_t received_ = 0;
  StreamHash hash_;
  bool committed_ = false;
};

}  // namespace cru::downstairs
