#include "support/process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>

#include "common/assert.h"
#include "proto/codec.h"

extern char** environ;

namespace cru::test {

namespace {

using Clock = std::chrono::steady_clock;

int millis_left(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(std::min<int64_t>(left, INT32_MAX));
}

// poll() one fd until it is ready or the deadline passes; false on timeout.
bool wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, millis_left(deadline));
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR) return true;  // let the caller's read/accept report the error
  }
}

ExitStatus decode_wait_status(int st) {
  ExitStatus s;
  if (WIFEXITED(st)) s.code = WEXITSTATUS(st);
  if (WIFSIGNALED(st)) s.signal = WTERMSIG(st);
  return s;
}

}  // namespace

// ---- paths and directories ----------------------------------------------------------------

std::string bin(const char* name) {
  if (const char* dir = std::getenv("CRUCIBLE_BIN"); dir != nullptr && *dir != '\0')
    return std::string(dir) + "/" + name;
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  CRU_ASSERT(!ec, "cannot read /proc/self/exe to find the binaries; set CRUCIBLE_BIN");
  return (exe.parent_path().parent_path() / "bin" / name).string();
}

TempDir::TempDir() {
  std::string templ = "/tmp/cru-test-XXXXXX";
  CRU_ASSERT(::mkdtemp(templ.data()) != nullptr, "mkdtemp under /tmp failed");
  path_ = templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

// ---- processes ---------------------------------------------------------------------------

std::string ExitStatus::describe() const {
  if (timed_out) return "still running at the timeout";
  if (signal != 0) return fmt::format("killed by signal {} ({})", signal, ::strsignal(signal));
  return fmt::format("exited with code {}", code);
}

Result<std::unique_ptr<Process>> Process::start(std::vector<std::string> argv,
                                                ProcessOptions options) {
  CRU_ASSERT(!argv.empty());
  std::array<int, 2> out{-1, -1}, err{-1, -1}, wake{-1, -1};
  auto close_all = [&] {
    for (auto* p : {&out, &err, &wake})
      for (int& fd : *p)
        if (fd >= 0) ::close(fd), fd = -1;
  };
  if (::pipe2(out.data(), O_CLOEXEC) != 0 || ::pipe2(err.data(), O_CLOEXEC) != 0 ||
      ::pipe2(wake.data(), O_CLOEXEC) != 0) {
    int e = errno;
    close_all();
    return fail(ErrorCode::kIo, fmt::format("pipe: {}", std::strerror(e)));
  }

  // Environment: ours, with the extra entries replacing same-named ones.
  std::map<std::string, std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv = *e;
    env[kv.substr(0, kv.find('='))] = kv;
  }
  for (const auto& kv : options.env) env[kv.substr(0, kv.find('='))] = kv;
  std::vector<std::string> env_strings;
  for (auto& [k, v] : env) env_strings.push_back(v);
  std::vector<char*> envp, args;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  for (auto& s : argv) args.push_back(s.data());
  args.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&fa, err[1], STDERR_FILENO);
  if (!options.cwd.empty()) posix_spawn_file_actions_addchdir_np(&fa, options.cwd.c_str());
  // Own process group (so kill() reaches everything it starts), default signal
  // dispositions and an empty mask whatever the test process has.
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, argv[0].c_str(), &fa, &attr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(out[1]), out[1] = -1;
  ::close(err[1]), err[1] = -1;
  if (rc != 0) {
    close_all();
    return fail(ErrorCode::kIo, fmt::format("spawn {}: {}", argv[0], std::strerror(rc)));
  }

  std::unique_ptr<Process> p(new Process());
  p->pid_ = pid;
  p->pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  CRU_ASSERT(p->pidfd_ >= 0, "pidfd_open failed");
  p->wake_read_ = wake[0];
  p->wake_write_ = wake[1];
  p->reader_ = std::thread(&Process::read_loop, p.get(), out[0], err[0], wake[0]);
  return p;
}

Process::~Process() {
  if (pid_ > 0 && !status_) {
    ::kill(-pid_, SIGKILL);
    int st = 0;
    while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
  }
  if (reader_.joinable()) {
    char c = 1;
    (void)!::write(wake_write_, &c, 1);
    reader_.join();
  }
  for (int fd : {wake_read_, wake_write_, pidfd_})
    if (fd >= 0) ::close(fd);
}

void Process::read_loop(int out_fd, int err_fd, int wake_fd) {
  std::array<int, 2> fds{out_fd, err_fd};
  std::array<char, 16384> buf{};
  while (fds[0] >= 0 || fds[1] >= 0) {
    std::array<pollfd, 3> p{pollfd{fds[0], POLLIN, 0}, pollfd{fds[1], POLLIN, 0},
                            pollfd{wake_fd, POLLIN, 0}};
    if (::poll(p.data(), p.size(), -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[2].revents != 0) break;  // the destructor wants us gone
    for (int i = 0; i < 2; ++i) {
      if (fds[i] < 0 || p[i].revents == 0) continue;
      ssize_t n = ::read(fds[i], buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      std::lock_guard lk(mu_);
      std::string& partial = partial_[i];
      if (n <= 0) {
        ::close(fds[i]);
        fds[i] = -1;
        if (!partial.empty()) lines_.push_back(std::move(partial)), partial.clear();
      } else {
        (i == 0 ? out_ : err_).append(buf.data(), static_cast<size_t>(n));
        partial.append(buf.data(), static_cast<size_t>(n));
        for (size_t nl; (nl = partial.find('\n')) != std::string::npos;) {
          lines_.push_back(partial.substr(0, nl));
          partial.erase(0, nl + 1);
        }
      }
      cv_.notify_all();
    }
  }
  for (int fd : fds)
    if (fd >= 0) ::close(fd);
  // wake_fd stays open until the destructor is done writing to it (no SIGPIPE).
  std::lock_guard lk(mu_);
  output_closed_ = true;
  cv_.notify_all();
}

Result<std::string> Process::wait_for(const std::function<bool(const std::string&)>& match,
                                      const std::string& what, Millis timeout, bool anywhere) {
  auto deadline = Clock::now() + timeout;
  std::unique_lock lk(mu_);
  for (;;) {
    for (size_t i = anywhere ? 0 : cursor_; i < lines_.size(); ++i) {
      if (match(lines_[i])) {
        if (!anywhere) cursor_ = i + 1;
        return lines_[i];
      }
    }
    if (output_closed_)
      return fail(ErrorCode::kDisconnected,
                  fmt::format("output ended without a line {}; output:\n{}", what,
                              fmt::format("--- stdout\n{}--- stderr\n{}", out_, err_)));
    if (cv_.wait_until(lk, deadline) == std::cv_status::timeout && Clock::now() >= deadline) {
      bool found = false;
      for (size_t i = anywhere ? 0 : cursor_; i < lines_.size() && !found; ++i)
        found = match(lines_[i]);
      if (!found)
        return fail(ErrorCode::kTimeout,
                    fmt::format("no line {} within {} ms; output:\n--- stdout\n{}--- stderr\n{}",
                                what, timeout.count(), out_, err_));
    }
  }
}

Result<std::string> Process::wait_for_line(const std::string& needle, Millis timeout) {
  return wait_for([&](const std::string& l) { return l.find(needle) != std::string::npos; },
                  "containing '" + needle + "'", timeout, false);
}

Result<std::string> Process::find_line(const std::string& needle, Millis timeout) {
  return wait_for([&](const std::string& l) { return l.find(needle) != std::string::npos; },
                  "containing '" + needle + "'", timeout, true);
}

Result<std::string> Process::wait_for_line(const std::regex& pattern, Millis timeout) {
  return wait_for([&](const std::string& l) { return std::regex_search(l, pattern); },
                  "matching the pattern", timeout, false);
}

void Process::kill(int signal) {
  if (pid_ > 0 && !status_) ::kill(-pid_, signal);
}

ExitStatus Process::wait(Millis timeout) {
  if (status_) return *status_;
  if (!wait_fd(pidfd_, POLLIN, Clock::now() + timeout)) return ExitStatus{true, -1, 0};
  int st = 0;
  pid_t r;
  while ((r = ::waitpid(pid_, &st, 0)) < 0 && errno == EINTR) {
  }
  CRU_ASSERT(r == pid_, "waitpid on our own child failed");
  status_ = decode_wait_status(st);
  return *status_;
}

bool Process::wait_output_closed(Millis timeout) {
  std::unique_lock lk(mu_);
  return cv_.wait_for(lk, timeout, [&] { return output_closed_; });
}

std::string Process::stdout_text() const {
  std::lock_guard lk(mu_);
  return out_;
}

std::string Process::stderr_text() const {
  std::lock_guard lk(mu_);
  return err_;
}

std::string Process::output() const {
  std::lock_guard lk(mu_);
  return fmt::format("--- stdout\n{}--- stderr\n{}", out_, err_);
}

std::string CommandResult::describe() const {
  return fmt::format("{}\n--- stdout\n{}--- stderr\n{}", status.describe(), out, err);
}

CommandResult run_command(std::vector<std::string> argv, Millis timeout, ProcessOptions options) {
  CommandResult r;
  auto p = Process::start(std::move(argv), std::move(options));
  if (!p) {
    r.err = p.error().to_string();
    return r;
  }
  r.status = (*p)->wait(timeout);
  if (r.status.timed_out) {
    (*p)->kill(SIGKILL);
    (*p)->wait(Millis(10000));
  }
  (*p)->wait_output_closed(Millis(10000));
  r.out = (*p)->stdout_text();
  r.err = (*p)->stderr_text();
  return r;
}

// ---- sockets -----------------------------------------------------------------------------

namespace {

Result<int> bound_socket(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(ErrorCode::kIo, fmt::format("socket: {}", std::strerror(errno)));
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    int e = errno;
    ::close(fd);
    return fail(ErrorCode::kIo, fmt::format("bind: {}", std::strerror(e)));
  }
  return fd;
}

uint16_t local_port(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  CRU_ASSERT(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  return ntohs(a.sin_port);
}

}  // namespace

uint16_t free_port() {
  auto fd = bound_socket(0);
  CRU_ASSERT(fd.has_value(), "cannot bind a loopback socket");
  uint16_t port = local_port(*fd);
  ::close(*fd);
  return port;
}

Result<Peer> Peer::connect(uint16_t port, Millis timeout, const std::string& host) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return fail(ErrorCode::kIo, fmt::format("socket: {}", std::strerror(errno)));
  Peer peer(fd);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (::inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1)
    return fail(ErrorCode::kInvalidArgument, fmt::format("'{}' is not an IPv4 address", host));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    if (errno != EINPROGRESS)
      return fail(ErrorCode::kDisconnected,
                  fmt::format("connect {}:{}: {}", host, port, std::strerror(errno)));
    if (!wait_fd(fd, POLLOUT, Clock::now() + timeout))
      return fail(ErrorCode::kTimeout, fmt::format("connect {}:{}: timed out", host, port));
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0)
      return fail(ErrorCode::kDisconnected,
                  fmt::format("connect {}:{}: {}", host, port, std::strerror(err)));
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return peer;
}

Peer::Peer(Peer&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      reader_(std::move(other.reader_)),
      pending_(std::move(other.pending_)) {}

Peer& Peer::operator=(Peer&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::exchange(other.fd_, -1);
    reader_ = std::move(other.reader_);
    pending_ = std::move(other.pending_);
  }
  return *this;
}

Peer::~Peer() { close(); }

void Peer::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void Peer::shutdown_write() {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_WR);
}

Status Peer::send(const proto::Message& m) {
  auto bytes = proto::encode_flat(m);
  return send_raw(bytes);
}

Status Peer::send(const proto::Message& m, Millis timeout) {
  if (fd_ < 0) return fail(ErrorCode::kDisconnected, "peer is closed");
  auto bytes = proto::encode_flat(m);
  auto deadline = Clock::now() + timeout;
  size_t done = 0;
  while (done < bytes.size()) {
    if (!wait_fd(fd_, POLLOUT, deadline))
      return fail(ErrorCode::kTimeout, fmt::format("send: the other side took {} of {} bytes "
                                                   "and then did not read for {} ms",
                                                   done, bytes.size(), timeout.count()));
    ssize_t n = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return fail(ErrorCode::kDisconnected, fmt::format("send: {}", std::strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

Status Peer::send_raw(std::span<const std::byte> bytes) {
  if (fd_ < 0) return fail(ErrorCode::kDisconnected, "peer is closed");
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(ErrorCode::kDisconnected, fmt::format("send: {}", std::strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

Result<proto::Message> Peer::recv(Millis timeout) {
  if (fd_ < 0) return fail(ErrorCode::kDisconnected, "peer is closed");
  auto deadline = Clock::now() + timeout;
  std::vector<std::byte> buf(256 * 1024);
  for (;;) {
    while (!pending_.empty()) {
      auto fed = reader_.feed(pending_);
      if (!fed) return tl::unexpected(fed.error());
      pending_.erase(pending_.begin(), pending_.begin() + static_cast<ptrdiff_t>(fed->consumed));
      if (fed->message) return std::move(*fed->message);
    }
    if (!wait_fd(fd_, POLLIN, deadline))
      return fail(ErrorCode::kTimeout, fmt::format("no message within {} ms", timeout.count()));
    ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(ErrorCode::kDisconnected, fmt::format("recv: {}", std::strerror(errno)));
    if (n == 0) return fail(ErrorCode::kDisconnected, "the other side closed the connection");
    pending_.insert(pending_.end(), buf.begin(), buf.begin() + n);
  }
}

Result<proto::RegionDefinition> Peer::negotiate(const Uuid& upstairs_id, const Uuid& session_id,
                                                Generation gen, Millis timeout, bool read_only,
                                                bool encrypted) {
  CRU_TRY(send(
      proto::HereIAm{proto::kProtocolVersion, upstairs_id, session_id, gen, read_only, encrypted}));
  if (auto m = recv_as<proto::YesItsMe>(timeout); !m) return tl::unexpected(m.error());
  CRU_TRY(send(proto::PromoteToActive{upstairs_id, session_id, gen}));
  if (auto m = recv_as<proto::YouAreNowActive>(timeout); !m) return tl::unexpected(m.error());
  CRU_TRY(send(proto::RegionInfoPlease{}));
  auto info = recv_as<proto::RegionInfo>(timeout);
  if (!info) return tl::unexpected(info.error());
  CRU_TRY(send(proto::ExtentVersionsPlease{}));
  auto versions = recv_as<proto::ExtentVersions>(timeout);
  if (!versions) return tl::unexpected(versions.error());
  if (versions->extents.size() != info->region.extent_count)
    return fail(ErrorCode::kProtocol,
                fmt::format("{} extent versions for {} extents", versions->extents.size(),
                            info->region.extent_count));
  return info->region;
}

bool Peer::wait_closed(Millis timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    auto m = recv(Millis(millis_left(deadline)));
    if (m) continue;
    return m.error().code == ErrorCode::kDisconnected;
  }
}

Result<Listener> Listener::listen() {
  auto fd = bound_socket(0);
  if (!fd) return tl::unexpected(fd.error());
  if (::listen(*fd, 16) != 0) {
    int e = errno;
    ::close(*fd);
    return fail(ErrorCode::kIo, fmt::format("listen: {}", std::strerror(e)));
  }
  return Listener(*fd, local_port(*fd));
}

Listener::Listener(Listener&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), port_(other.port_) {}

Listener::~Listener() {
  if (fd_ >= 0) ::close(fd_);
}

Result<Peer> Listener::accept(Millis timeout) {
  if (!wait_fd(fd_, POLLIN, Clock::now() + timeout))
    return fail(ErrorCode::kTimeout, fmt::format("no connection within {} ms", timeout.count()));
  int fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return fail(ErrorCode::kIo, fmt::format("accept: {}", std::strerror(errno)));
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return Peer(fd);
}

}  // namespace cru::test
