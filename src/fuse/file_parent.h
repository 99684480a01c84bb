// A read-only parent that is a local image file (volume.read_only_parent.file), read with
// pread. Guest reads must not block the volume's io thread on the disk, so they go to one
// worker thread of this parent's, and their completions are posted back to the io thread;
// the scrub's read_sync reads on the caller's (the scrub's) thread.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "upstairs/read_only_parent.h"

namespace cru::fuse {

class FileParent : public upstairs::ParentSource {
 public:
  using Post = std::function<void(std::function<void()>)>;
  // Opens `path` read-only; `block_size` is the volume's; `post` runs a function on the
  // volume's io thread. Errors name the key volume.read_only_parent.file.
  static Result<std::unique_ptr<FileParent>> open(const std::string& path, uint32_t block_size,
                                                  Post post);
  ~FileParent() override;
  FileParent(const FileParent&) = delete;
  FileParent& operator=(const FileParent&) = delete;

  std::string describe() const override { return "file " + path_; }
  uint64_t size_bytes() const override { return size_bytes_; }
  uint32_t block_size() const override { return 0; }
  void read(BlockIndex start, uint64_t count, upstairs::BlockDevice::ReadFn done) override;
  Result<Bytes> read_sync(BlockIndex start, uint64_t count) override;

 private:
  FileParent(std::string path, int fd, uint64_t size_bytes, uint32_t block_size, Post post);
  void worker();

  struct Request {
    BlockIndex start;
    uint64_t count = 0;
    upstairs::BlockDevice::ReadFn done;
  };
  const std::string path_;
  const int fd_;
  const uint64_t size_bytes_;
  const uint32_t block_size_;
  const Post post_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<Request> queue_;  // bounded by the guest's reads in flight (FUSE's limit)
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace cru::fuse
