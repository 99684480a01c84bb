#include "fuse/control.h"

#include <fmt/format.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/assert.h"
#include "common/log.h"
#include "common/thread_signals.h"

namespace cru::fuse {

namespace {

// A client that does not finish its request line within this is dropped, so one stuck
// client cannot block the control socket for others.
constexpr int kRequestTimeoutMs = 5000;
// Replies (a status snapshot) are small; this bounds what a client reads.
constexpr size_t kMaxReplyBytes = 1 << 20;
// A client gives up on a server that does not answer within this (a hung crucible-fuse
// must not hang `status --watch` past Ctrl-C).
constexpr timeval kReplyTimeout{10, 0};

Result<sockaddr_un> unix_address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path)
    return fail(
        ErrorCode::kInvalidArgument,
        fmt::format("control socket path '{}' must be 1..{} bytes", path, sizeof a.sun_path - 1));
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

Result<int> connect_to(const std::string& path) {
  CRU_TRY_ASSIGN(sockaddr_un a, unix_address(path));
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(ErrorCode::kIo, fmt::format("socket: {}", std::strerror(errno)));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    int err = errno;
    ::close(fd);
    return fail(
        err == ENOENT || err == ECONNREFUSED ? ErrorCode::kNotFound : ErrorCode::kIo,
        fmt::format("control socket {}: {} (is crucible-fuse running?)", path, std::strerror(err)));
  }
  return fd;
}

bool write_all(int fd, std::string_view s) {
  while (!s.empty()) {
    ssize_t n = ::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    s.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

}  // namespace

ControlServer::~ControlServer() { stop(); }

Status ControlServer::start(const std::string& path, Handler handler) {
  CRU_ASSERT(listen_fd_ < 0);
  CRU_TRY_ASSIGN(sockaddr_un a, unix_address(path));
  if (auto probe = connect_to(path); probe) {
    ::close(*probe);
    return fail(ErrorCode::kAlreadyExists,
                fmt::format("control socket {} is served by another process", path));
  }
  ::unlink(path.c_str());  // stale: its server is gone
  listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return fail(ErrorCode::kIo, fmt::format("socket: {}", std::strerror(errno)));
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::listen(listen_fd_, 8) != 0) {
    int err = errno;
    ::close(listen_fd_);
    listen_fd_ = -1;
    return fail(ErrorCode::kIo, fmt::format("control socket {}: {}", path, std::strerror(err)));
  }
  ::chmod(path.c_str(), 0600);  // it can replace replicas: owner only
  stop_fd_ = ::eventfd(0, EFD_CLOEXEC);
  CRU_ASSERT(stop_fd_ >= 0);
  path_ = path;
  handler_ = std::move(handler);
  thread_ = std::thread([this] {
    block_async_signals_in_this_thread();
    serve();
  });
  return {};
}

void ControlServer::stop() {
  if (listen_fd_ < 0) return;
  // Unlinked first: a client that cannot connect then finds the socket gone, which
  // `status --watch` takes as the volume stopping (not as crucible-fuse dying).
  ::unlink(path_.c_str());
  uint64_t one = 1;
  CRU_ASSERT(::write(stop_fd_, &one, sizeof one) == sizeof one);
  thread_.join();
  ::close(listen_fd_);
  ::close(stop_fd_);
  listen_fd_ = stop_fd_ = -1;
}

void ControlServer::serve() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      log::error("control socket: poll: {}", std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    handle(fd);
    ::close(fd);
  }
}

void ControlServer::handle(int fd) {
  std::string line;
  char buf[512];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, kRequestTimeoutMs) <= 0) return;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return;
    line.append(buf, static_cast<size_t>(n));
    if (auto nl = line.find('\n'); nl != std::string::npos) {
      line.resize(nl);
      break;
    }
    if (line.size() > kMaxControlLineBytes) {
      write_all(fd, fmt::format("error: request longer than {} bytes\n", kMaxControlLineBytes));
      return;
    }
  }
  std::string reply = handler_(line);
  if (reply.empty() || reply.back() != '\n') reply += '\n';
  write_all(fd, reply);
}

Result<std::string> control_request(const std::string& path, const std::string& request) {
  CRU_TRY_ASSIGN(const int fd, connect_to(path));
  for (int opt : {SO_RCVTIMEO, SO_SNDTIMEO})
    CRU_ASSERT(::setsockopt(fd, SOL_SOCKET, opt, &kReplyTimeout, sizeof kReplyTimeout) == 0);
  std::string reply;
  bool sent = write_all(fd, request + "\n");
  char buf[4096];
  while (sent && reply.size() < kMaxReplyBytes) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    reply.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  if (!sent || reply.empty())
    return fail(ErrorCode::kIo, fmt::format("control socket {}: no reply", path));
  return reply;
}

}  // namespace cru::fuse
