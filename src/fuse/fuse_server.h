// The FUSE side of crucible-fuse: a directory holding one regular file, disk.img, served
// with libfuse3's low-level API on the volume's io thread (Volume::watch): a request is
// read, handed to the Disk and answered on that one thread, with no hand-off between
// threads. The thread calling run() only waits for the end. Every open is direct IO (no
// page cache in this daemon's kernel mount): the filesystem or loop device above has its
// own cache, and a fenced or failed volume must fail reads too, not serve stale pages.
#pragma once

#include <atomic>
#include <ctime>
#include <string>

#include "common/result.h"
#include "fuse/disk.h"
#include "fuse/io_stats.h"

struct fuse_session;

namespace cru::fuse {

struct MountOptions {
  std::string mountpoint;
  bool allow_other = false;
  bool read_only = false;
  // Guest operations are timed and counted here (the metrics endpoint reads it); none:
  // nothing is timed. Must outlive the server.
  GuestIoStats* io_stats = nullptr;
};

class FuseServer {
 public:
  FuseServer(Disk& disk, MountOptions options);
  ~FuseServer();  // unmounts if still mounted
  FuseServer(const FuseServer&) = delete;
  FuseServer& operator=(const FuseServer&) = delete;

  // Mounts; the error names the mountpoint and the reason.
  Status mount();
  // Serves on `io`'s thread until unmounted or SIGINT/SIGTERM/SIGHUP (which end it);
  // then unmounts. Other threads of the process must block those signals
  // (thread_signals.h). `io` is the volume the Disk is over.
  Status run(upstairs::BlockDevice& io);
  // Tells the kernel that disk.img's size changed (the volume grew): its cached attributes
  // are dropped, so the next stat or lookup asks again. Io thread, while serving.
  void size_changed();

  struct Impl;

 private:
  Disk& disk_;
  MountOptions options_;
  fuse_session* session_ = nullptr;
  bool mounted_ = false;
  bool handlers_ = false;
  // Set by run() while the io thread serves the session (size_changed reads it there).
  std::atomic<bool> serving_{false};
  timespec mounted_at_{};
};

}  // namespace cru::fuse
