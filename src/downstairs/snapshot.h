// Snapshots of a region: immutable copies of the region as of one flush, each under
// DIR/snapshots/NAME/ as a region of its own (region.json, extent files, snapshot.json) that
// `crucible-downstairs run --snapshot NAME` serves read-only. The core makes one right after
// a flush that carries the name; the CLI lists and deletes them. Everything goes through the
// FileSystem seam; one thread.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/ids.h"
#include "common/result.h"
#include "downstairs/file_io.h"
#include "downstairs/region.h"
#include "proto/snapshot_name.h"

namespace cru::downstairs {

// Under the region directory.
inline constexpr std::string_view kSnapshotsDir = "snapshots";
// A full copy reads and writes this much at a time: large enough to stream, small enough
// to hold on the downstairs thread.
inline constexpr uint64_t kSnapshotCopyChunkBytes = 1 << 20;

using proto::validate_snapshot_name;  // names: proto/snapshot_name.h

// DIR/snapshots/NAME (the name is not checked).
std::string snapshot_dir(const std::string& region_dir, std::string_view name);

enum class SnapshotMethod { kReflink, kCopy };
std::string_view snapshot_method_name(SnapshotMethod m);

struct SnapshotInfo {
  std::string name;
  FlushNumber flush;
  Generation generation;
  SnapshotMethod method = SnapshotMethod::kCopy;
  uint64_t bytes_copied = 0;  // data bytes written by a full copy (0 for a reflink)
  // Non-empty: snapshot.json could not be read (the directory was changed by hand).
  std::string problem;
};

struct SnapshotProgress {
  uint32_t extents_done = 0;
  uint32_t extents_total = 0;
  uint64_t bytes_copied = 0;
  SnapshotMethod method = SnapshotMethod::kReflink;
};

// Records the region as it is now (right after a flush: every extent at rest) as snapshot
// `name`, stamped with `flush` and `generation`. Extents are settled first (so the
// snapshot's extents open without scans), then reflinked where the filesystem can, else
// copied (holes stay holes), into DIR/snapshots/.NAME.partial, every file and directory
// synced, then renamed to DIR/snapshots/NAME and that directory synced: a crash leaves
// either no snapshot or a whole one, and a leftover staging directory is removed by the
// next attempt. `progress` is called once per extent. Errors: kInvalidArgument (name),
// kAlreadyExists, kReadOnly, kBusy (an extent is closed for repair or damaged: it would
// not hold the flushed data), kIo.
Result<SnapshotInfo> make_snapshot(Region& region, std::string_view name, FlushNumber flush,
                                   Generation generation,
                                   const std::function<void(const SnapshotProgress&)>& progress);

// Every complete snapshot, by name; staging and deleting directories are not listed.
Result<std::vector<SnapshotInfo>> list_snapshots(FileSystem& fs, const std::string& region_dir);

// Removes a snapshot: renamed aside first (so it is never listed half deleted), then its
// files. kNotFound if there is none by that name.
Status delete_snapshot(FileSystem& fs, const std::string& region_dir, std::string_view name);

}  // namespace cru::downstairs
