#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <liburing.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/assert.h"
#include "common/units.h"
#include "downstairs/file_io.h"

namespace cru::downstairs {

namespace {

// Writes go to the page cache in pieces of at most this, aligned to it (see write_at).
constexpr uint64_t kWriteChunkBytes = 16 * kKiB;
constexpr uint64_t kPageBytes = 4 * kKiB;

// cachestat(2) (Linux 6.5), not yet in Debian 12's headers; the number is the same on every
// architecture.
constexpr long kSysCachestat = 451;
struct CachestatRange {
  uint64_t off, len;
};
struct Cachestat {
  uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};
std::atomic<bool> cachestat_missing{false};

// Whether every page of [offset, offset + len) is in the page cache; false when the kernel
// cannot tell (and where pages are larger than 4 KiB: nr_cache counts the kernel's pages).
bool all_cached(int fd, uint64_t offset, uint64_t len) {
  if (cachestat_missing.load(std::memory_order_relaxed)) return false;
  const uint64_t first = offset / kPageBytes, end = (offset + len + kPageBytes - 1) / kPageBytes;
  CachestatRange range{first * kPageBytes, (end - first) * kPageBytes};
  Cachestat st{};
  if (::syscall(kSysCachestat, fd, &range, &st, 0) != 0) {
    if (errno == ENOSYS) cachestat_missing.store(true, std::memory_order_relaxed);
    return false;
  }
  return st.nr_cache >= end - first;
}

tl::unexpected<Error> errno_error(std::string_view what, const std::string& path, int err) {
  return fail(ErrorCode::kIo, fmt::format("{} {}: {}", what, path, std::strerror(err)));
}

class PosixFile final : public File {
 public:
  PosixFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~PosixFile() override { ::close(fd_); }
  PosixFile(const PosixFile&) = delete;
  PosixFile& operator=(const PosixFile&) = delete;

  Status read_at(uint64_t offset, std::span<std::byte> out) override {
    size_t done = 0;
    while (done < out.size()) {
      ssize_t n =
          ::pread(fd_, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno_error("read", path_, errno);
      }
      if (n == 0)
        return fail(ErrorCode::kIo, fmt::format("read {}: unexpected end of file at offset {}",
                                                path_, offset + done));
      done += static_cast<size_t>(n);
    }
    return {};
  }

  // Into pages not in the cache, in pieces of kWriteChunkBytes: the kernel sizes a
  // page-cache folio by the write that creates it (ext4 on Linux 6.16+), and a later small
  // write into a large folio walks all of its blocks: a 4 KiB write into a 1 MiB folio cost
  // 9 us, into a 16 KiB one 2 us. 16 KiB measured best for both (docs/performance.md).
  // Into pages all cached (folios exist already) in one call: a 1 MiB write costs 100 us
  // of CPU here, in 16 KiB pieces 230 us (a system call costs over 1 us in this VM).
  Status write_at(uint64_t offset, std::span<const std::byte> data) override {
    const bool whole = data.size() <= kWriteChunkBytes || all_cached(fd_, offset, data.size());
    size_t done = 0;
    while (done < data.size()) {
      const uint64_t at = offset + done;
      const size_t piece =
          whole ? data.size() - done
                : std::min<uint64_t>(data.size() - done, kWriteChunkBytes - at % kWriteChunkBytes);
      ssize_t n = ::pwrite(fd_, data.data() + done, piece, static_cast<off_t>(at));
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno_error("write", path_, errno);
      }
      done += static_cast<size_t>(n);
    }
    return {};
  }

  Status sync() override {
    if (::fdatasync(fd_) != 0) return errno_error("fdatasync", path_, errno);
    return {};
  }

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }

  Status zero_range(uint64_t offset, uint64_t len, Space space) override {
    if (len == 0) return {};
    // Zeroing a range that stays allocated is an extent-tree change on ext4 and XFS (the
    // blocks become unwritten): 1 MiB in 30 us here, where punching it out costs 550 us.
    const int mode = space == Space::kKeep ? FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
                                           : FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    if (::fallocate(fd_, mode, static_cast<off_t>(offset), static_cast<off_t>(len)) == 0) return {};
    if (errno != EOPNOTSUPP)
      return errno_error(space == Space::kKeep ? "zero range in" : "punch hole in", path_, errno);
    // A filesystem without either: write zeros instead (same contents).
    static const std::vector<std::byte> kZeros(kMiB);
    while (len > 0) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(len, kZeros.size()));
      CRU_TRY(write_at(offset, std::span(kZeros).first(n)));
      offset += n;
      len -= n;
    }
    return {};
  }

  Status reserve(uint64_t bytes) override {
    if (bytes == 0) return {};
    if (::fallocate(fd_, 0, 0, static_cast<off_t>(bytes)) == 0) return {};
    if (errno == ENOSPC)
      return fail(ErrorCode::kIo, fmt::format("allocating {} for {}: no space left on device",
                                              format_size(bytes), path_));
    return errno_error("allocate space for", path_, errno);
  }

  Result<uint64_t> size() override {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) return errno_error("stat", path_, errno);
    return static_cast<uint64_t>(st.st_size);
  }

  Status truncate(uint64_t size) override {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0)
      return errno_error("truncate", path_, errno);
    return {};
  }

 private:
  int fd_;
  std::string path_;
};

class PosixFileSystem final : public FileSystem {
 public:
  Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) override {
    int flags = O_CLOEXEC;
    switch (mode) {
      case OpenMode::kReadOnly:
        flags |= O_RDONLY;
        break;
      case OpenMode::kReadWrite:
        flags |= O_RDWR;
        break;
      case OpenMode::kCreateExclusive:
        flags |= O_RDWR | O_CREAT | O_EXCL;
        break;
    }
    int fd = ::open(path.c_str(), flags, 0644);
    if (fd < 0) {
      if (errno == EEXIST)
        return fail(ErrorCode::kAlreadyExists, fmt::format("{} already exists", path));
      if (errno == ENOENT)
        return fail(ErrorCode::kNotFound, fmt::format("{} does not exist", path));
      return errno_error("open", path, errno);
    }
    // Extents are read in the order the guest asks, mostly at random: readahead would only
    // fill the page cache with large folios nobody asked for (see write_at).
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
    return std::make_unique<PosixFile>(fd, path);
  }

  Result<bool> exists(const std::string& path) override {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0) return true;
    if (errno == ENOENT || errno == ENOTDIR) return false;
    return errno_error("stat", path, errno);
  }

  Status rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0)
      return errno_error("rename to " + to + ":", from, errno);
    return {};
  }

  Status remove(const std::string& path) override {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return errno_error("remove", path, errno);
    return {};
  }

  Status remove_dir(const std::string& path) override {
    if (::rmdir(path.c_str()) != 0 && errno != ENOENT)
      return errno_error("remove directory", path, errno);
    return {};
  }

  Result<bool> clone_file(const std::string& from, const std::string& to) override {
    int src = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
    if (src < 0) return errno_error("open", from, errno);
    int dst = ::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (dst < 0) {
      const int err = errno;
      ::close(src);
      if (err == EEXIST)
        return fail(ErrorCode::kAlreadyExists, fmt::format("{} already exists", to));
      return errno_error("create", to, err);
    }
    const int rc = ::ioctl(dst, FICLONE, src);
    const int err = errno;
    ::close(src);
    ::close(dst);
    if (rc == 0) return true;
    ::unlink(to.c_str());
    // No shared blocks on this filesystem (or across two): the caller copies.
    if (err == EOPNOTSUPP || err == ENOTTY || err == EXDEV || err == EINVAL || err == ENOSYS)
      return false;
    return errno_error(fmt::format("clone {} to", from), to, err);
  }

  // Each directory it creates is made durable in its parent, so a file created inside
  // and fsynced is reachable after a crash.
  Status make_dirs(const std::string& path) override {
    std::filesystem::path p(path);
    if (p.empty() || std::filesystem::is_directory(p)) return {};
    if (p.has_parent_path() && p.parent_path() != p) CRU_TRY(make_dirs(p.parent_path().string()));
    if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST)
      return errno_error("create directory", path, errno);
    return sync_dir(p.has_parent_path() ? p.parent_path().string() : std::string("."));
  }

  Status sync_dir(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return errno_error("open directory", path, errno);
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    if (rc != 0) return errno_error("fsync directory", path, err);
    return {};
  }

  Result<std::vector<std::string>> list_dir(const std::string& path) override {
    DIR* d = ::opendir(path.c_str());
    if (d == nullptr) return errno_error("list", path, errno);
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(std::move(name));
    }
    ::closedir(d);
    return names;
  }

  // All the fdatasyncs in flight at once through io_uring: a flush of many extents then
  // costs about one device cache flush, not one per extent in turn.
  Status sync_all(std::span<File* const> files) override {
    if (files.size() <= 1) return FileSystem::sync_all(files);
    SyncRing* ring = SyncRing::for_this_thread();
    if (ring == nullptr) return FileSystem::sync_all(files);  // io_uring unavailable
    for (size_t at = 0; at < files.size(); at += SyncRing::kDepth) {
      auto batch = files.subspan(at, std::min<size_t>(SyncRing::kDepth, files.size() - at));
      CRU_TRY(ring->sync(batch));
    }
    return {};
  }

 private:
  class SyncRing {
   public:
    // Syncs submitted together; a flush rarely has more dirty extents than this.
    static constexpr unsigned kDepth = 64;

    // One ring per thread (the downstairs has one), made on first use; nullptr if the
    // kernel refuses io_uring (e.g. kernel.io_uring_disabled).
    static SyncRing* for_this_thread() {
      thread_local SyncRing ring;
      return ring.ok_ ? &ring : nullptr;
    }
    ~SyncRing() {
      if (ok_) io_uring_queue_exit(&ring_);
    }
    SyncRing(const SyncRing&) = delete;
    SyncRing& operator=(const SyncRing&) = delete;

    Status sync(std::span<File* const> files) {
      for (size_t i = 0; i < files.size(); ++i) {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        CRU_ASSERT(sqe != nullptr, "more syncs than the ring holds");
        io_uring_prep_fsync(sqe, static_cast<PosixFile*>(files[i])->fd(), IORING_FSYNC_DATASYNC);
        io_uring_sqe_set_data64(sqe, i);
      }
      int submitted = io_uring_submit_and_wait(&ring_, static_cast<unsigned>(files.size()));
      if (submitted < 0)
        return fail(ErrorCode::kIo, fmt::format("io_uring submit: {}", std::strerror(-submitted)));
      Status first_error;
      for (size_t done = 0; done < files.size(); ++done) {
        io_uring_cqe* cqe = nullptr;
        if (int rc = io_uring_wait_cqe(&ring_, &cqe); rc < 0)
          return fail(ErrorCode::kIo, fmt::format("io_uring wait: {}", std::strerror(-rc)));
        const int res = cqe->res;
        const auto* f = static_cast<PosixFile*>(files[io_uring_cqe_get_data64(cqe)]);
        io_uring_cqe_seen(&ring_, cqe);
        if (res < 0 && first_error) first_error = errno_error("fdatasync", f->path(), -res);
      }
      return first_error;
    }

   private:
    SyncRing() : ok_(io_uring_queue_init(kDepth, &ring_, 0) == 0) {}
    io_uring ring_{};
    bool ok_;
  };
};

}  // namespace

FileSystem& posix_fs() {
  static PosixFileSystem fs;
  return fs;
}

std::string parent_dir(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

Result<std::string> read_whole_file(FileSystem& fs, const std::string& path, size_t max_bytes) {
  CRU_TRY_ASSIGN(auto f, fs.open(path, OpenMode::kReadOnly));
  CRU_TRY_ASSIGN(const uint64_t size, f->size());
  if (size > max_bytes)
    return fail(ErrorCode::kCorrupt,
                fmt::format("{} is {} bytes, more than the {} expected", path, size, max_bytes));
  std::string s(static_cast<size_t>(size), '\0');
  CRU_TRY(f->read_at(0, std::as_writable_bytes(std::span(s))));
  return s;
}

Status write_file_atomic(FileSystem& fs, const std::string& path, std::string_view contents) {
  std::string tmp = path + ".tmp";
  CRU_TRY(fs.remove(tmp));
  CRU_TRY_ASSIGN(auto f, fs.open(tmp, OpenMode::kCreateExclusive));
  CRU_TRY(f->write_at(0, std::as_bytes(std::span(contents))));
  CRU_TRY(f->sync());
  f.reset();
  CRU_TRY(fs.rename(tmp, path));
  return fs.sync_dir(parent_dir(path));
}

}  // namespace cru::downstairs
