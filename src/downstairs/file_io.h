// The disk seam: every byte the downstairs stores goes through File and FileSystem, so
// tests substitute an in-memory, fault-injecting implementation that can simulate a
// power cut (tests/support/fault_fs.h). The POSIX implementation is posix_fs().
// Implementations are used from one thread at a time per object.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"

namespace cru::downstairs {

// Whether a region's files hold their space: kKeep allocates every extent file whole at
// create (a full disk is found then, not mid-write) and a discard keeps the space (the
// range reads zeros, still allocated); kRelease (--sparse) allocates on first write and a
// discard gives the space back.
enum class Space : uint8_t { kRelease, kKeep };

class File {
 public:
  virtual ~File() = default;
  // Reads exactly out.size() bytes at offset; reading past the end is an error.
  virtual Status read_at(uint64_t offset, std::span<std::byte> out) = 0;
  virtual Status write_at(uint64_t offset, std::span<const std::byte> data) = 0;
  // Makes every completed write to this file durable (fdatasync).
  virtual Status sync() = 0;
  // [offset, offset + len) reads as zeros afterwards; its space is released (a hole) or
  // kept allocated. Not durable until sync().
  virtual Status zero_range(uint64_t offset, uint64_t len, Space space) = 0;
  // Allocates the file's first `bytes` (extending it if shorter) without changing what it
  // reads; fails (kIo, naming ENOSPC) when the filesystem cannot hold them.
  virtual Status reserve(uint64_t bytes) = 0;
  virtual Result<uint64_t> size() = 0;
  virtual Status truncate(uint64_t size) = 0;
};

enum class OpenMode {
  kReadOnly,
  kReadWrite,
  kCreateExclusive,  // read-write; fails with kAlreadyExists if the file exists
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;
  virtual Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) = 0;
  virtual Result<bool> exists(const std::string& path) = 0;
  // Atomically replaces `to` with `from`. Durable once the directory is synced.
  virtual Status rename(const std::string& from, const std::string& to) = 0;
  virtual Status remove(const std::string& path) = 0;
  // Creates the directory and its parents (no error if it exists).
  virtual Status make_dirs(const std::string& path) = 0;
  // Makes creations, renames and removals in the directory durable.
  virtual Status sync_dir(const std::string& path) = 0;
  // Names (not paths) of the entries of a directory.
  virtual Result<std::vector<std::string>> list_dir(const std::string& path) = 0;
  // Removes an empty directory (no error if it is missing).
  virtual Status remove_dir(const std::string& path) = 0;
  // Creates `to` (which must not exist) sharing `from`'s blocks (a reflink, FICLONE): an
  // instant copy that later writes to either file do not show in the other. Durable once
  // `to` is synced and its directory is. false, with nothing created, when the filesystem
  // cannot share blocks (ext4, tmpfs, another filesystem): copy instead.
  virtual Result<bool> clone_file(const std::string& from, const std::string& to) {
    (void)from;
    (void)to;
    return false;
  }
  // File::sync() of each of `files` (opened by this filesystem); an implementation may
  // run them concurrently. Fails if any failed; then any of them may or may not be done.
  virtual Status sync_all(std::span<File* const> files) {
    for (File* f : files) CRU_TRY(f->sync());
    return {};
  }
};

// The real filesystem. Shared; stateless.
FileSystem& posix_fs();

// Helpers over the seam.
std::string parent_dir(const std::string& path);
std::string join_path(const std::string& dir, const std::string& name);
Result<std::string> read_whole_file(FileSystem& fs, const std::string& path, size_t max_bytes);
// Writes `contents` to `path` atomically: temp file, sync, rename, sync the directory.
Status write_file_atomic(FileSystem& fs, const std::string& path, std::string_view contents);

}  // namespace cru::downstairs
