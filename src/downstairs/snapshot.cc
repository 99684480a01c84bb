#include "downstairs/snapshot.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>

#include "common/bytes.h"
#include "common/log.h"
#include "common/units.h"

namespace cru::downstairs {

namespace {

constexpr std::string_view kInfoFile = "snapshot.json";
constexpr std::string_view kRegionFile = "region.json";
constexpr std::string_view kPartialSuffix = ".partial";
constexpr std::string_view kDeletingSuffix = ".deleting";
// snapshot.json is a few hundred bytes; anything larger is not ours.
constexpr size_t kMaxInfoFileBytes = 64 * kKiB;
// Files synced together (FileSystem::sync_all): as many as a flush syncs at once, and few
// enough descriptors held open.
constexpr size_t kSyncBatchFiles = 64;
// A snapshot is region.json, snapshot.json and XX/YYY/ZZZ extent files: removal never
// descends deeper than this (nothing we make is deeper; a deeper tree is not ours).
constexpr int kMaxTreeDepth = 3;

std::string snapshots_root(const std::string& region_dir) {
  return join_path(region_dir, std::string(kSnapshotsDir));
}

std::string staging_dir(const std::string& region_dir, std::string_view name,
                        std::string_view suffix) {
  return join_path(snapshots_root(region_dir), fmt::format(".{}{}", name, suffix));
}

// Removes a directory tree we made. FileSystem has no stat: an entry that lists is a
// directory, one that does not is a file.
Status remove_tree(FileSystem& fs, const std::string& path, int depth) {
  CRU_TRY_ASSIGN(auto names, fs.list_dir(path));
  for (const auto& n : names) {
    const std::string p = join_path(path, n);
    if (auto sub = fs.list_dir(p); sub) {
      if (depth >= kMaxTreeDepth)
        return fail(ErrorCode::kInvalidArgument,
                    fmt::format("{} is deeper than a snapshot's layout: not removing it", p));
      CRU_TRY(remove_tree(fs, p, depth + 1));
    } else {
      CRU_TRY(fs.remove(p));
    }
  }
  CRU_TRY(fs.sync_dir(path));
  return fs.remove_dir(path);
}

bool all_zero(std::span<const std::byte> b) {
  return std::all_of(b.begin(), b.end(), [](std::byte x) { return x == std::byte{0}; });
}

// Copies `from` to a new file `to`, leaving all-zero chunks as holes (an extent's unwritten
// blocks), and returns the new file (not yet synced) and the bytes written.
Result<std::pair<std::unique_ptr<File>, uint64_t>> copy_file(FileSystem& fs,
                                                             const std::string& from,
                                                             const std::string& to) {
  CRU_TRY_ASSIGN(auto src, fs.open(from, OpenMode::kReadOnly));
  CRU_TRY_ASSIGN(const uint64_t size, src->size());
  CRU_TRY_ASSIGN(auto dst, fs.open(to, OpenMode::kCreateExclusive));
  CRU_TRY(dst->truncate(size));
  ByteBuffer chunk(static_cast<size_t>(std::min<uint64_t>(size, kSnapshotCopyChunkBytes)));
  uint64_t written = 0;
  for (uint64_t at = 0; at < size; at += kSnapshotCopyChunkBytes) {
    auto piece =
        chunk.span().first(static_cast<size_t>(std::min(kSnapshotCopyChunkBytes, size - at)));
    CRU_TRY(src->read_at(at, piece));
    if (all_zero(piece)) continue;
    CRU_TRY(dst->write_at(at, piece));
    written += piece.size();
  }
  return std::pair{std::move(dst), written};
}

std::string encode_info(const SnapshotInfo& info) {
  nlohmann::ordered_json j;
  j["name"] = info.name;
  j["flush_number"] = info.flush.value;
  j["generation"] = info.generation.value;
  j["method"] = std::string(snapshot_method_name(info.method));
  j["bytes_copied"] = info.bytes_copied;
  return j.dump(2) + "\n";
}

Result<SnapshotInfo> read_info(FileSystem& fs, const std::string& dir, const std::string& name) {
  const std::string path = join_path(dir, std::string(kInfoFile));
  CRU_TRY_ASSIGN(std::string text, read_whole_file(fs, path, kMaxInfoFileBytes));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return fail(ErrorCode::kCorrupt, fmt::format("{}: not a JSON object", path));
  try {
    SnapshotInfo info;
    info.name = name;
    info.flush = FlushNumber{j.at("flush_number").get<uint64_t>()};
    info.generation = Generation{j.at("generation").get<uint64_t>()};
    info.method = j.at("method").get<std::string>() == "reflink" ? SnapshotMethod::kReflink
                                                                 : SnapshotMethod::kCopy;
    info.bytes_copied = j.value("bytes_copied", uint64_t{0});
    return info;
  } catch (const nlohmann::json::exception& e) {
    return fail(ErrorCode::kCorrupt, fmt::format("{}: {}", path, e.what()));
  }
}

// Writes a small file inside a staging directory (synced with the rest before the rename).
Status write_new_file(FileSystem& fs, const std::string& path, std::string_view contents) {
  CRU_TRY_ASSIGN(auto f, fs.open(path, OpenMode::kCreateExclusive));
  CRU_TRY(f->write_at(0, std::as_bytes(std::span(contents))));
  return f->sync();
}

}  // namespace

std::string snapshot_dir(const std::string& region_dir, std::string_view name) {
  return join_path(snapshots_root(region_dir), std::string(name));
}

std::string_view snapshot_method_name(SnapshotMethod m) {
  return m == SnapshotMethod::kReflink ? "reflink" : "copy";
}

Result<SnapshotInfo> make_snapshot(Region& region, std::string_view name, FlushNumber flush,
                                   Generation generation,
                                   const std::function<void(const SnapshotProgress&)>& progress) {
  CRU_TRY(validate_snapshot_name(name));
  if (region.read_only()) return fail(ErrorCode::kReadOnly, "the region is open read-only");
  FileSystem& fs = region.fs();
  const std::string& dir = region.dir();
  const uint32_t extents = region.def().extent_count;
  for (uint32_t i = 0; i < extents; ++i) {
    const ExtentId e{i};
    if (auto why = region.damage(e))
      return fail(ErrorCode::kBusy,
                  fmt::format("extent {} is damaged ({}): this replica does not hold the flushed "
                              "data until it is repaired",
                              e, *why));
    if (!region.is_open(e))
      return fail(ErrorCode::kBusy,
                  fmt::format("extent {} is closed for repair: this replica does not hold the "
                              "flushed data until the repair is done",
                              e));
  }
  const std::string final_dir = snapshot_dir(dir, name);
  CRU_TRY_ASSIGN(bool taken, fs.exists(final_dir));
  if (taken) {
    // The same flush again (an upstairs replaying after a lost ack): already done.
    auto existing = read_info(fs, final_dir, std::string(name));
    if (existing && existing->flush == flush && existing->generation == generation)
      return *existing;
    return fail(ErrorCode::kAlreadyExists, fmt::format("a snapshot named '{}' exists", name));
  }

  // Clean flags on disk, so the snapshot's extents open without a scan; nothing is written
  // between the flush and here.
  CRU_TRY(region.settle());

  const std::string partial = staging_dir(dir, name, kPartialSuffix);
  CRU_TRY_ASSIGN(bool leftover, fs.exists(partial));
  if (leftover) {
    log::info("removing {}, left by an interrupted snapshot", partial);
    CRU_TRY(remove_tree(fs, partial, 0));
  }
  CRU_TRY(fs.make_dirs(partial));

  SnapshotInfo info{std::string(name), flush, generation, SnapshotMethod::kReflink, 0, {}};
  CRU_TRY_ASSIGN(std::string region_json,
                 read_whole_file(fs, join_path(dir, std::string(kRegionFile)), kMaxInfoFileBytes));
  CRU_TRY(write_new_file(fs, join_path(partial, std::string(kRegionFile)), region_json));

  std::set<std::string> dirs{partial};
  std::vector<std::unique_ptr<File>> unsynced;
  auto sync_batch = [&]() -> Status {
    std::vector<File*> files;
    files.reserve(unsynced.size());
    for (auto& f : unsynced) files.push_back(f.get());
    CRU_TRY(fs.sync_all(files));
    unsynced.clear();
    return {};
  };
  SnapshotProgress p{0, extents, 0, SnapshotMethod::kReflink};
  for (uint32_t i = 0; i < extents; ++i) {
    const std::string from = region.extent_path(ExtentId{i});
    CRU_ASSERT(from.starts_with(dir));
    const std::string to = join_path(partial, from.substr(dir.size() + 1));
    if (dirs.insert(parent_dir(to)).second) CRU_TRY(fs.make_dirs(parent_dir(to)));
    bool cloned = false;
    if (info.method == SnapshotMethod::kReflink) {
      CRU_TRY_ASSIGN(cloned, fs.clone_file(from, to));
      if (!cloned) info.method = p.method = SnapshotMethod::kCopy;  // the first says for all
    }
    if (cloned) {
      CRU_TRY_ASSIGN(auto f, fs.open(to, OpenMode::kReadWrite));
      unsynced.push_back(std::move(f));
    } else {
      CRU_TRY_ASSIGN(auto copied, copy_file(fs, from, to));
      unsynced.push_back(std::move(copied.first));
      info.bytes_copied += copied.second;
    }
    if (unsynced.size() >= kSyncBatchFiles) CRU_TRY(sync_batch());
    p.extents_done = i + 1;
    p.bytes_copied = info.bytes_copied;
    if (progress) progress(p);
  }
  CRU_TRY(sync_batch());
  CRU_TRY(write_new_file(fs, join_path(partial, std::string(kInfoFile)), encode_info(info)));
  // Deepest first: each directory's entries, then the directory's own entry in its parent
  // (make_dirs made the parents durable already).
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) CRU_TRY(fs.sync_dir(*it));
  CRU_TRY(fs.rename(partial, final_dir));
  CRU_TRY(fs.sync_dir(snapshots_root(dir)));
  return info;
}

Result<std::vector<SnapshotInfo>> list_snapshots(FileSystem& fs, const std::string& region_dir) {
  const std::string root = snapshots_root(region_dir);
  std::vector<SnapshotInfo> out;
  CRU_TRY_ASSIGN(bool there, fs.exists(root));
  if (!there) return out;
  CRU_TRY_ASSIGN(auto names, fs.list_dir(root));
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    if (!validate_snapshot_name(n)) continue;  // staging, deleting, or not ours
    auto info = read_info(fs, join_path(root, n), n);
    if (info) {
      out.push_back(std::move(*info));
    } else {
      SnapshotInfo broken;
      broken.name = n;
      broken.problem = info.error().message;
      out.push_back(std::move(broken));
    }
  }
  return out;
}

Status delete_snapshot(FileSystem& fs, const std::string& region_dir, std::string_view name) {
  CRU_TRY(validate_snapshot_name(name));
  const std::string dir = snapshot_dir(region_dir, name);
  CRU_TRY_ASSIGN(bool there, fs.exists(dir));
  if (!there)
    return fail(ErrorCode::kNotFound,
                fmt::format("no snapshot named '{}' in {}", name, snapshots_root(region_dir)));
  const std::string aside = staging_dir(region_dir, name, kDeletingSuffix);
  CRU_TRY_ASSIGN(bool leftover, fs.exists(aside));
  if (leftover) CRU_TRY(remove_tree(fs, aside, 0));
  CRU_TRY(fs.rename(dir, aside));
  CRU_TRY(fs.sync_dir(snapshots_root(region_dir)));
  return remove_tree(fs, aside, 0);
}

}  // namespace cru::downstairs
