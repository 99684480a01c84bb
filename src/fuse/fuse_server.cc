#define FUSE_USE_VERSION 312
#include "fuse/fuse_server.h"

#include <fcntl.h>
#include <fuse3/fuse_lowlevel.h>
#include <linux/falloc.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string_view>

#include "common/assert.h"
#include "common/log.h"
#include "common/units.h"

namespace cru::fuse {

namespace {

constexpr fuse_ino_t kRootIno = FUSE_ROOT_ID;
constexpr fuse_ino_t kDiskIno = 2;
constexpr std::string_view kDiskName = "disk.img";
// The largest read or write the kernel sends us (DESIGN.md: 1 MiB, one upstairs job).
constexpr unsigned kMaxRequestBytes = 1 * kMiB;
// Asynchronous direct IO (io_submit, a loop device) reaches us as background requests; the
// kernel's default of 12 in flight would cap a queue depth of 32 at 12. The volume's own
// admission limits bound what is outstanding beyond this.
constexpr unsigned kMaxBackgroundRequests = 128;
// The file and directory never change shape; the kernel may cache attributes for long.
constexpr double kAttrTimeoutS = 3600.0;
// IO errors are logged, but a failed volume fails every request: log the first ones
// and then one in this many.
constexpr uint64_t kErrorLogEvery = 1000;
constexpr uint64_t kErrorsLoggedFirst = 10;

int to_errno(const Error& e) {
  switch (e.code) {
    case ErrorCode::kOffsetInvalid:
      return ENOSPC;
    case ErrorCode::kReadOnly:
      return EROFS;
    case ErrorCode::kInvalidArgument:
      return EINVAL;
    default:
      return EIO;
  }
}

// Times one guest operation into the server's GuestIoStats, if it has one: a clock read
// when the request arrives and one when it is answered.
class OpTimer {
 public:
  OpTimer(GuestIoStats* stats, GuestOp op)
      : stats_(stats),
        op_(op),
        start_(stats ? GuestIoStats::Clock::now() : GuestIoStats::Clock::time_point{}) {}
  void done(uint64_t bytes, bool ok) const {
    if (stats_ != nullptr) stats_->record(op_, start_, bytes, ok);
  }

 private:
  GuestIoStats* stats_;
  GuestOp op_;
  GuestIoStats::Clock::time_point start_;
};

}  // namespace

struct FuseServer::Impl {
  static FuseServer& self(fuse_req_t req) {
    return *static_cast<FuseServer*>(fuse_req_userdata(req));
  }

  static std::atomic<uint64_t>& error_count() {
    static std::atomic<uint64_t> n{0};
    return n;
  }

  static int fail_errno(const char* op, const Error& e) {
    uint64_t n = error_count().fetch_add(1, std::memory_order_relaxed);
    if (n < kErrorsLoggedFirst || n % kErrorLogEvery == 0)
      log::warn("{} failed: {} ({} IO errors so far)", op, e.message, n + 1);
    return to_errno(e);
  }

  static struct stat attr(const FuseServer& s, fuse_ino_t ino) {
    struct stat st {};
    st.st_ino = ino;
    st.st_uid = ::getuid();
    st.st_gid = ::getgid();
    st.st_atim = st.st_mtim = st.st_ctim = s.mounted_at_;
    if (ino == kRootIno) {
      st.st_mode = S_IFDIR | 0755;
      st.st_nlink = 2;
    } else {
      st.st_mode = S_IFREG | (s.options_.read_only ? 0444 : 0644);
      st.st_nlink = 1;
      st.st_size = static_cast<off_t>(s.disk_.size_bytes());
      st.st_blocks = static_cast<blkcnt_t>(s.disk_.size_bytes() / 512);
      st.st_blksize = s.disk_.block_size();
    }
    return st;
  }

  static void init(void* userdata, fuse_conn_info* conn) {
    auto& s = *static_cast<FuseServer*>(userdata);
    // No writeback cache: a write returns only once the volume accepted it.
    conn->want &= ~static_cast<unsigned>(FUSE_CAP_WRITEBACK_CACHE);
    if (conn->capable & FUSE_CAP_ASYNC_DIO) conn->want |= FUSE_CAP_ASYNC_DIO;
    if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
    conn->max_write = kMaxRequestBytes;
    conn->max_readahead = kMaxRequestBytes;
    conn->max_background = kMaxBackgroundRequests;
    conn->congestion_threshold = kMaxBackgroundRequests * 3 / 4;
    log::info("FUSE session started: max request {} (kernel protocol {}.{})",
              format_size(conn->max_write), conn->proto_major, conn->proto_minor);
    static_cast<void>(s);
  }

  static void lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
    if (parent != kRootIno || kDiskName != name)
      return static_cast<void>(fuse_reply_err(req, ENOENT));
    fuse_entry_param e{};
    e.ino = kDiskIno;
    e.attr = attr(self(req), kDiskIno);
    e.attr_timeout = e.entry_timeout = kAttrTimeoutS;
    fuse_reply_entry(req, &e);
  }

  static void getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
    if (ino != kRootIno && ino != kDiskIno) return static_cast<void>(fuse_reply_err(req, ENOENT));
    struct stat st = attr(self(req), ino);
    fuse_reply_attr(req, &st, kAttrTimeoutS);
  }

  static void setattr(fuse_req_t req, fuse_ino_t ino, struct stat* to, int to_set,
                      fuse_file_info*) {
    FuseServer& s = self(req);
    if (ino != kDiskIno) return static_cast<void>(fuse_reply_err(req, EPERM));
    if ((to_set & FUSE_SET_ATTR_SIZE) &&
        static_cast<uint64_t>(to->st_size) != s.disk_.size_bytes()) {
      log::warn("refused to resize disk.img from {} to {} bytes: the volume's size is fixed",
                s.disk_.size_bytes(), to->st_size);
      return static_cast<void>(fuse_reply_err(req, EPERM));
    }
    if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))
      return static_cast<void>(fuse_reply_err(req, EPERM));
    // Timestamps (touch) are accepted and not kept: they carry no meaning for a volume.
    struct stat st = attr(s, ino);
    fuse_reply_attr(req, &st, kAttrTimeoutS);
  }

  static void readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
    if (ino != kRootIno) return static_cast<void>(fuse_reply_err(req, ENOTDIR));
    char buf[512];
    size_t used = 0;
    struct Entry {
      const char* name;
      fuse_ino_t ino;
      mode_t mode;
    };
    const Entry entries[] = {
        {".", kRootIno, S_IFDIR}, {"..", kRootIno, S_IFDIR}, {kDiskName.data(), kDiskIno, S_IFREG}};
    for (off_t i = off; i < static_cast<off_t>(std::size(entries)); ++i) {
      struct stat st {};
      st.st_ino = entries[i].ino;
      st.st_mode = entries[i].mode;
      size_t n = fuse_add_direntry(req, buf + used, std::min(size, sizeof buf) - used,
                                   entries[i].name, &st, i + 1);
      if (used + n > std::min(size, sizeof buf)) break;
      used += n;
    }
    fuse_reply_buf(req, buf, used);
  }

  static void open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    FuseServer& s = self(req);
    if (ino == kRootIno) return static_cast<void>(fuse_reply_err(req, EISDIR));
    if (ino != kDiskIno) return static_cast<void>(fuse_reply_err(req, ENOENT));
    if (s.options_.read_only && (fi->flags & O_ACCMODE) != O_RDONLY)
      return static_cast<void>(fuse_reply_err(req, EROFS));
    // With atomic O_TRUNC (libfuse's default) the kernel sends no setattr for O_TRUNC: it
    // trusts open to truncate and then caches size 0. The volume's size is fixed.
    if (fi->flags & O_TRUNC) return static_cast<void>(fuse_reply_err(req, EPERM));
    fi->direct_io = 1;
    fi->keep_cache = 0;
    fuse_reply_open(req, fi);
  }

  static void read(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info*) {
    if (off < 0) return static_cast<void>(fuse_reply_err(req, EINVAL));
    FuseServer& s = self(req);
    const OpTimer timer(s.options_.io_stats, GuestOp::kRead);
    s.disk_.read(static_cast<uint64_t>(off), size, [req, timer](Result<Bytes> r) {
      timer.done(r ? r->size() : 0, r.has_value());
      if (!r) return static_cast<void>(fuse_reply_err(req, fail_errno("read", r.error())));
      fuse_reply_buf(req, reinterpret_cast<const char*>(r->data()), r->size());
    });
  }

  static void write(fuse_req_t req, fuse_ino_t, const char* buf, size_t size, off_t off,
                    fuse_file_info*) {
    FuseServer& s = self(req);
    if (s.options_.read_only) return static_cast<void>(fuse_reply_err(req, EROFS));
    if (off < 0) return static_cast<void>(fuse_reply_err(req, EINVAL));
    const OpTimer timer(s.options_.io_stats, GuestOp::kWrite);
    s.disk_.write(
        static_cast<uint64_t>(off), std::as_bytes(std::span(buf, size)),
        [req, size, timer](Status st) {
          timer.done(st ? size : 0, st.has_value());
          if (!st) return static_cast<void>(fuse_reply_err(req, fail_errno("write", st.error())));
          fuse_reply_write(req, size);
        });
  }

  static void reply_flush(fuse_req_t req, const char* op, const Status& st) {
    fuse_reply_err(req, st ? 0 : fail_errno(op, st.error()));
  }

  // close(): flush only if something was written, so readers' closes cost nothing.
  static void flush(fuse_req_t req, fuse_ino_t, fuse_file_info*) {
    FuseServer& s = self(req);
    if (!s.disk_.dirty()) return static_cast<void>(fuse_reply_err(req, 0));
    const OpTimer timer(s.options_.io_stats, GuestOp::kFlush);
    s.disk_.flush([req, timer](const Status& st) {
      timer.done(0, st.has_value());
      reply_flush(req, "flush on close", st);
    });
  }

  static void fsync(fuse_req_t req, fuse_ino_t, int, fuse_file_info*) {
    FuseServer& s = self(req);
    const OpTimer timer(s.options_.io_stats, GuestOp::kFlush);
    s.disk_.flush([req, timer](const Status& st) {
      timer.done(0, st.has_value());
      reply_flush(req, "fsync", st);
    });
  }

  static void fallocate(fuse_req_t req, fuse_ino_t, int mode, off_t off, off_t len,
                        fuse_file_info*) {
    FuseServer& s = self(req);
    if (off < 0 || len <= 0) return static_cast<void>(fuse_reply_err(req, EINVAL));
    if (s.options_.read_only) return static_cast<void>(fuse_reply_err(req, EROFS));
    const uint64_t size = s.disk_.size_bytes(), start = static_cast<uint64_t>(off);
    const uint64_t end = start + static_cast<uint64_t>(len) < start
                             ? UINT64_MAX
                             : start + static_cast<uint64_t>(len);
    if (mode == 0 || mode == FALLOC_FL_KEEP_SIZE) {
      // Preallocation: every block of the volume exists already; growing is refused.
      return static_cast<void>(
          fuse_reply_err(req, end <= size || (mode & FALLOC_FL_KEEP_SIZE) ? 0 : ENOSPC));
    }
    const bool punch = mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
    const bool zero = (mode & ~FALLOC_FL_KEEP_SIZE) == FALLOC_FL_ZERO_RANGE;
    if (!punch && !zero) return static_cast<void>(fuse_reply_err(req, EOPNOTSUPP));
    if (zero && !(mode & FALLOC_FL_KEEP_SIZE) && end > size)
      return static_cast<void>(fuse_reply_err(req, ENOSPC));
    // Past the end there is nothing to zero (as for a regular file's hole punch).
    const uint64_t clipped_end = std::min(end, size);
    if (start >= clipped_end) return static_cast<void>(fuse_reply_err(req, 0));
    const OpTimer timer(s.options_.io_stats, GuestOp::kDiscard);
    s.disk_.zero_range(start, clipped_end - start,
                       [req, timer, n = clipped_end - start](const Status& st) {
                         timer.done(st ? n : 0, st.has_value());
                         reply_flush(req, "fallocate", st);
                       });
  }

  static void statfs(fuse_req_t req, fuse_ino_t) {
    FuseServer& s = self(req);
    struct statvfs sv {};
    sv.f_bsize = sv.f_frsize = s.disk_.block_size();
    sv.f_blocks = s.disk_.size_bytes() / s.disk_.block_size();
    sv.f_files = 2;
    sv.f_namemax = 255;
    fuse_reply_statfs(req, &sv);
  }

  // The directory's contents are fixed.
  static void refuse_entry(fuse_req_t req) { fuse_reply_err(req, EPERM); }
  static void mknod(fuse_req_t req, fuse_ino_t, const char*, mode_t, dev_t) { refuse_entry(req); }
  static void mkdir(fuse_req_t req, fuse_ino_t, const char*, mode_t) { refuse_entry(req); }
  static void unlink(fuse_req_t req, fuse_ino_t, const char*) { refuse_entry(req); }
  static void rmdir(fuse_req_t req, fuse_ino_t, const char*) { refuse_entry(req); }
  static void symlink(fuse_req_t req, const char*, fuse_ino_t, const char*) { refuse_entry(req); }
  static void rename(fuse_req_t req, fuse_ino_t, const char*, fuse_ino_t, const char*, unsigned) {
    refuse_entry(req);
  }
  static void link(fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) { refuse_entry(req); }
  static void create(fuse_req_t req, fuse_ino_t, const char*, mode_t, fuse_file_info*) {
    refuse_entry(req);
  }

  static fuse_lowlevel_ops ops() {
    fuse_lowlevel_ops o{};
    o.init = init;
    o.lookup = lookup;
    o.getattr = getattr;
    o.setattr = setattr;
    o.readdir = readdir;
    o.open = open;
    o.read = read;
    o.write = write;
    o.flush = flush;
    o.fsync = fsync;
    o.fallocate = fallocate;
    o.statfs = statfs;
    o.mknod = mknod;
    o.mkdir = mkdir;
    o.unlink = unlink;
    o.rmdir = rmdir;
    o.symlink = symlink;
    o.rename = rename;
    o.link = link;
    o.create = create;
    return o;
  }
};

FuseServer::FuseServer(Disk& disk, MountOptions options)
    : disk_(disk), options_(std::move(options)) {
  ::clock_gettime(CLOCK_REALTIME, &mounted_at_);
}

FuseServer::~FuseServer() {
  if (session_ == nullptr) return;
  if (handlers_) fuse_remove_signal_handlers(session_);
  if (mounted_) fuse_session_unmount(session_);
  fuse_session_destroy(session_);
}

Status FuseServer::mount() {
  CRU_ASSERT(session_ == nullptr);
  struct stat st {};
  if (::stat(options_.mountpoint.c_str(), &st) != 0 && errno == ENOTCONN) {
    // A FUSE mount whose daemon died (a crash, SIGKILL): nothing serves it, and it would
    // stop a restarted service from ever mounting again. Detach it and mount afresh.
    log::warn("{} is a FUSE mount nobody serves (its crucible-fuse died?): detaching it",
              options_.mountpoint);
    if (::umount2(options_.mountpoint.c_str(), MNT_DETACH) != 0)
      return fail(ErrorCode::kIo,
                  fmt::format("mount point {} is a dead FUSE mount and could not "
                              "be detached: {} (try: umount -l {})",
                              options_.mountpoint, std::strerror(errno), options_.mountpoint));
  }
  if (::stat(options_.mountpoint.c_str(), &st) != 0)
    return fail(ErrorCode::kNotFound,
                fmt::format("mount point {}: {}", options_.mountpoint, std::strerror(errno)));
  if (!S_ISDIR(st.st_mode))
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("mount point {} is not a directory", options_.mountpoint));
  std::string opts = "fsname=crucible,subtype=crucible,default_permissions";
  if (options_.allow_other) opts += ",allow_other";
  if (options_.read_only) opts += ",ro";
  const char* argv[] = {"crucible-fuse", "-o", opts.c_str()};
  fuse_args args = FUSE_ARGS_INIT(3, const_cast<char**>(argv));
  fuse_lowlevel_ops o = Impl::ops();
  session_ = fuse_session_new(&args, &o, sizeof o, this);
  if (session_ == nullptr)
    return fail(ErrorCode::kIo, "could not create the FUSE session (see the message above)");
  // Before mounting: from here on SIGINT/SIGTERM/SIGHUP end the session cleanly, never
  // kill the process with the mount left behind.
  if (fuse_set_signal_handlers(session_) != 0)
    return fail(ErrorCode::kIo, "could not install signal handlers");
  handlers_ = true;
  if (fuse_session_mount(session_, options_.mountpoint.c_str()) != 0)
    return fail(ErrorCode::kIo,
                fmt::format("could not mount {} (is /dev/fuse there, is it already mounted?)",
                            options_.mountpoint));
  mounted_ = true;
  return {};
}

namespace {

// What the thread that calls run() waits on: SIGINT/SIGTERM/SIGHUP (blocked in this thread
// and taken through a signalfd) or the end of the session, which the io thread tells
// through an eventfd. Restores the signal mask when it goes.
class StopWait {
 public:
  StopWait() {
    sigemptyset(&signals_);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&signals_, sig);
    pthread_sigmask(SIG_BLOCK, &signals_, &old_mask_);
    signal_fd_ = ::signalfd(-1, &signals_, SFD_CLOEXEC);
    if (signal_fd_ < 0) error_ = errno;
    ended_fd_ = ::eventfd(0, EFD_CLOEXEC);
    if (ended_fd_ < 0) error_ = errno;
  }
  ~StopWait() {
    for (int f : {signal_fd_, ended_fd_})
      if (f >= 0) ::close(f);
    pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
  }
  StopWait(const StopWait&) = delete;
  StopWait& operator=(const StopWait&) = delete;

  Status status() const {
    if (error_ != 0)
      return fail(ErrorCode::kIo, fmt::format("signalfd/eventfd: {}", std::strerror(error_)));
    return {};
  }
  // From any thread.
  void end() const {
    const uint64_t one = 1;
    static_cast<void>(::write(ended_fd_, &one, sizeof one));
  }
  void wait() const {
    pollfd fds[] = {{signal_fd_, POLLIN, 0}, {ended_fd_, POLLIN, 0}};
    while (::poll(fds, 2, -1) < 0 && errno == EINTR) {
    }
    signalfd_siginfo info{};
    if ((fds[0].revents & POLLIN) && ::read(signal_fd_, &info, sizeof info) == sizeof info)
      log::info("signal {}: unmounting", info.ssi_signo);
  }

 private:
  sigset_t signals_{};
  sigset_t old_mask_{};
  int signal_fd_ = -1;
  int ended_fd_ = -1;
  int error_ = 0;
};

}  // namespace

void FuseServer::size_changed() {
  if (!serving_) return;  // a grow that ends after unmounting: nobody to tell
  // Attributes only (a negative offset): invalidating pages would wait for page locks the
  // kernel may hold while it waits for this very thread, and direct IO keeps none anyway.
  if (int e = fuse_lowlevel_notify_inval_inode(session_, kDiskIno, -1, 0); e != 0 && e != -ENOENT)
    log::warn("could not tell the kernel disk.img's new size: {}", std::strerror(-e));
}

Status FuseServer::run(upstairs::BlockDevice& io) {
  CRU_ASSERT(mounted_);
  const int fd = fuse_session_fd(session_);
  if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) != 0)
    return fail(ErrorCode::kIo, fmt::format("/dev/fuse: {}", std::strerror(errno)));
  int loop_error = 0;
  {
    StopWait stop;
    CRU_TRY(stop.status());
    fuse_buf buf{};
    // On the io thread, whenever /dev/fuse is readable: every request there, in turn.
    auto drain = [&] {
      for (;;) {
        int res = fuse_session_receive_buf(session_, &buf);
        if (res == -EINTR) continue;
        if (res == -EAGAIN) return;
        if (res > 0) fuse_session_process_buf(session_, &buf);
        if (res < 0) loop_error = -res;
        if (res <= 0 || fuse_session_exited(session_)) return stop.end();  // unmounted, failed
      }
    };
    // A signal that came between mount() and here was taken by libfuse's handler.
    if (!fuse_session_exited(session_)) {
      serving_ = true;
      io.watch(fd, drain);
      stop.wait();
      io.unwatch();
      serving_ = false;
    }
    std::free(buf.mem);
    // Default handlers again (before the mask is restored): a second signal during the
    // final flush kills the process.
    fuse_remove_signal_handlers(session_);
    handlers_ = false;
  }
  fuse_session_unmount(session_);
  mounted_ = false;
  if (loop_error != 0)
    return fail(ErrorCode::kIo,
                fmt::format("reading FUSE requests failed: {}", std::strerror(loop_error)));
  return {};
}

}  // namespace cru::fuse
