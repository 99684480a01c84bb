#include "fuse/file_parent.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/assert.h"
#include "common/thread_signals.h"

namespace cru::fuse {

namespace {
// Guest reads queued for the worker: FUSE keeps far fewer requests in flight (its
// congestion threshold), so reaching this is a bug, not load.
constexpr size_t kMaxQueuedReads = 65536;
constexpr const char* kKey = "volume.read_only_parent.file";
}  // namespace

Result<std::unique_ptr<FileParent>> FileParent::open(const std::string& path, uint32_t block_size,
                                                     Post post) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return fail(ErrorCode::kNotFound,
                fmt::format("{}: cannot open {}: {}", kKey, path, std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{}: {} is not a regular file", kKey, path));
  }
  return std::unique_ptr<FileParent>(
      new FileParent(path, fd, static_cast<uint64_t>(st.st_size), block_size, std::move(post)));
}

FileParent::FileParent(std::string path, int fd, uint64_t size_bytes, uint32_t block_size,
                       Post post)
    : path_(std::move(path)),
      fd_(fd),
      size_bytes_(size_bytes),
      block_size_(block_size),
      post_(std::move(post)),
      thread_([this] { worker(); }) {}

FileParent::~FileParent() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
  ::close(fd_);
}

Result<Bytes> FileParent::read_sync(BlockIndex start, uint64_t count) {
  const uint64_t offset = start.value * block_size_;
  const uint64_t len = count * block_size_;
  CRU_ASSERT(offset <= size_bytes_ && len <= size_bytes_ - offset, "a read past the parent's end");
  ByteBuffer buf(len);
  uint64_t done = 0;
  while (done < len) {
    ssize_t n = ::pread(fd_, buf.data() + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      return fail(ErrorCode::kIo, fmt::format("reading the parent {} at byte {}: {}", path_,
                                              offset + done, std::strerror(errno)));
    if (n == 0)
      return fail(ErrorCode::kIo,
                  fmt::format("the parent {} ends at byte {}: it shrank after the mount", path_,
                              offset + done));
    done += static_cast<uint64_t>(n);
  }
  return Bytes(std::move(buf));
}

void FileParent::read(BlockIndex start, uint64_t count, upstairs::BlockDevice::ReadFn done) {
  {
    std::lock_guard lock(mu_);
    CRU_ASSERT(queue_.size() < kMaxQueuedReads, "more parent reads queued than FUSE sends");
    queue_.push_back(Request{start, count, std::move(done)});
  }
  wake_.notify_one();
}

void FileParent::worker() {
  block_async_signals_in_this_thread();
  for (;;) {
    Request r;
    {
      std::unique_lock lock(mu_);
      wake_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      r = std::move(queue_.front());
      queue_.pop_front();
    }
    auto data = read_sync(r.start, r.count);
    post_([done = std::move(r.done), data = std::move(data)]() mutable { done(std::move(data)); });
  }
}

}  // namespace cru::fuse
