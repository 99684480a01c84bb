#include "tools/dsc/supervisor.h"

#include <fcntl.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/read_until.hpp>
#include <asio/redirect_error.hpp>
#include <asio/signal_set.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <random>

#include "common/assert.h"
#include "common/log.h"
#include "common/result.h"
#include "tools/dsc/control.h"

namespace cru::dsc {

namespace {

using namespace asio::experimental::awaitable_operators;
using asio::local::stream_protocol;
using Clock = std::chrono::steady_clock;

constexpr auto kNothrow = [](std::error_code& ec) {
  return asio::redirect_error(asio::use_awaitable, ec);
};

// A failed accept (e.g. out of descriptors) is retried after this pause, not in a spin.
constexpr std::chrono::milliseconds kAcceptRetryPause{100};
// The exit code of a child that could not become crucible-downstairs.
constexpr int kExecFailed = 127;

enum class State { kStarting, kRunning, kStopping, kStopped, kExited };

struct Downstairs {
  uint32_t index = 0;
  std::string region;
  uint16_t port = 0;  // 0 until a child started with -p 0 reports its port
  State state = State::kStopped;
  pid_t pid = -1;     // the child, until it is reaped
  int exit_code = 0;  // how the last child ended, for kExited
  int exit_signal = 0;
  uint32_t restarts = 0;  // starts after the first
  bool started_once = false;
  bool busy = false;  // a control command (or the initial start) is working on it
};

struct Reply {
  std::string text;
  std::optional<std::string> error;
};

Reply ok(std::string text) { return Reply{std::move(text), std::nullopt}; }
Reply error(std::string message) { return Reply{{}, std::move(message)}; }

std::string signal_name(int sig) {
  const char* abbrev = ::sigabbrev_np(sig);
  return abbrev != nullptr ? fmt::format("SIG{}", abbrev) : fmt::format("signal {}", sig);
}

std::string describe_wait_status(int status) {
  if (WIFSIGNALED(status)) return fmt::format("killed by {}", signal_name(WTERMSIG(status)));
  return fmt::format("exited with code {}", WEXITSTATUS(status));
}

std::string state_name(const Downstairs& d) {
  switch (d.state) {
    case State::kStarting:
      return "starting";
    case State::kRunning:
      return "running";
    case State::kStopping:
      return "stopping";
    case State::kStopped:
      return "stopped";
    case State::kExited:
      if (d.exit_signal != 0) return fmt::format("killed({})", signal_name(d.exit_signal));
      return fmt::format("exited({})", d.exit_code);
  }
  CRU_UNREACHABLE("bad downstairs state");
}

// One line for the user on stdout (addresses, exits); diagnostics go to the log.
void say(const std::string& line) {
  std::fputs((line + "\n").c_str(), stdout);
  std::fflush(stdout);
}

// The child between fork and exec: only async-signal-safe calls from here on.
[[noreturn]] void exec_child(pid_t parent, int stdin_fd, int out_fd, char* const* argv) {
  // Die with the supervisor. If it died before prctl took effect we have already been
  // re-parented, which getppid() shows.
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent) ::_exit(kExecFailed);
  // Out of the terminal's foreground group: Ctrl-C reaches the supervisor only, which
  // then stops every child in order (and reports them as stopped, not as crashed).
  ::setpgid(0, 0);
  if (::dup2(stdin_fd, STDIN_FILENO) < 0 || ::dup2(out_fd, STDOUT_FILENO) < 0 ||
      ::dup2(out_fd, STDERR_FILENO) < 0)
    ::_exit(kExecFailed);
  // asio opens sockets without close-on-exec: the control socket must not leak into a
  // downstairs (it would keep the address busy after the supervisor is gone).
  if (::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0)
    for (int fd = 3; fd < 1024; ++fd) ::close(fd);
  // Undo what the supervisor's signal handling may have left behind.
  sigset_t none;
  ::sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  ::sigaction(SIGPIPE, &dfl, nullptr);
  ::execv(argv[0], argv);
  static constexpr char kMessage[] = "crucible-dsc: cannot execute crucible-downstairs\n";
  (void)!::write(STDERR_FILENO, kMessage, sizeof kMessage - 1);
  ::_exit(kExecFailed);
}

class Supervisor {
 public:
  Supervisor(asio::io_context& io, const SupervisorOptions& options)
      : io_(io),
        options_(options),
        signals_(io, SIGINT, SIGTERM),
        sigchld_(io, SIGCHLD),
        acceptor_(io),
        changed_(io, Clock::time_point::max()),
        rng_(std::random_device{}()) {
    CRU_ASSERT(!options.regions.empty());
    CRU_ASSERT(options.tls.empty() || options.tls.size() == options.regions.size());
    for (uint32_t i = 0; i < options.regions.size(); ++i) {
      Downstairs d;
      d.index = i;
      d.region = options.regions[i];
      uint32_t port =
          options.port_base == 0 ? 0 : options.port_base + i * uint32_t{options.port_step};
      CRU_ASSERT(port <= UINT16_MAX);
      d.port = static_cast<uint16_t>(port);
      ds_.push_back(d);
    }
  }

  ~Supervisor() {
    if (lock_fd_ >= 0) ::close(lock_fd_);
  }

  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  int run() {
    if (auto s = lock_dir(); !s) return fail_start(s.error().message);
    auto path = socket_path(options_.dir);
    if (!path) return fail_start(path.error().message);
    socket_path_ = *path;
    // We hold the directory lock, so a socket file left here belongs to a dead supervisor.
    std::error_code ec;
    if (std::filesystem::remove(socket_path_, ec))
      log::info("replaced the stale control socket {}", socket_path_);
    try {
      acceptor_.open();
      acceptor_.bind(stream_protocol::endpoint(socket_path_));
      acceptor_.listen();
    } catch (const std::system_error& e) {
      return fail_start(
          fmt::format("cannot serve the control socket {}: {}", socket_path_, e.what()));
    }
    // Watch for exits before the first fork, so no exit goes unseen.
    watch_children();
    watch_signals();
    asio::co_spawn(io_, start_all(), asio::detached);
    asio::co_spawn(io_, accept_loop(), asio::detached);
    io_.run();
    remove_socket();
    return exit_code_;
  }

 private:
  static int fail_start(const std::string& message) {
    std::fprintf(stderr, "crucible-dsc: %s\n", message.c_str());
    return 1;
  }

  // One supervisor per directory: an flock on the directory itself, which the kernel
  // drops when we die however we die, so there is no lock file to go stale.
  Status lock_dir() {
    lock_fd_ = ::open(options_.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (lock_fd_ < 0)
      return fail(ErrorCode::kIo, fmt::format("--dir {}: {}", options_.dir, std::strerror(errno)));
    if (::flock(lock_fd_, LOCK_EX | LOCK_NB) == 0) return {};
    if (errno == EWOULDBLOCK)
      return fail(
          ErrorCode::kBusy,
          fmt::format("another crucible-dsc supervises {} (ask it: crucible-dsc status --dir {})",
                      options_.dir, options_.dir));
    return fail(ErrorCode::kIo,
                fmt::format("cannot lock {}: {}", options_.dir, std::strerror(errno)));
  }

  void remove_socket() {
    if (socket_path_.empty()) return;
    std::error_code ec;
    std::filesystem::remove(socket_path_, ec);
    socket_path_.clear();
  }

  // Wakes every coroutine in wait_until(): a child changed state.
  void notify() { changed_.cancel(); }

  // Waits until done() holds or the deadline passes; returns done().
  asio::awaitable<bool> wait_until(std::function<bool()> done, Clock::time_point deadline) {
    asio::steady_timer timer(io_, deadline);
    while (!done() && Clock::now() < deadline) {
      std::error_code changed_ec, timer_ec;
      co_await (changed_.async_wait(kNothrow(changed_ec)) || timer.async_wait(kNothrow(timer_ec)));
    }
    co_return done();
  }

  asio::awaitable<bool> wait_reaped(const Downstairs& d, pid_t pid, std::chrono::seconds timeout) {
    std::function<bool()> reaped = [&d, pid] { return d.pid != pid; };
    co_return co_await wait_until(reaped, Clock::now() + timeout);
  }

  // ---- children ------------------------------------------------------------------------

  Status spawn(Downstairs& d) {
    CRU_ASSERT(d.pid < 0);
    std::vector<std::string> args = {
        options_.downstairs_bin, "run", "-d", d.region, "-p", std::to_string(d.port), "-a",
        options_.address};
    if (options_.metrics_port_base != 0)
      args.insert(args.end(),
                  {"--metrics", fmt::format("{}:{}", options_.address,
                                            options_.metrics_port_base +
                                                d.index * uint32_t{options_.port_step})});
    if (!options_.tls.empty()) {
      auto flags = tls_flags(options_.tls[d.index]);
      args.insert(args.end(), flags.begin(), flags.end());
    }
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::array<int, 2> out{-1, -1};
    if (::pipe2(out.data(), O_CLOEXEC) != 0)
      return fail(ErrorCode::kIo, fmt::format("pipe: {}", std::strerror(errno)));
    int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    pid_t parent = ::getpid();
    pid_t pid = devnull < 0 ? -1 : ::fork();
    if (pid == 0) exec_child(parent, devnull, out[1], argv.data());
    int fork_errno = errno;
    ::close(out[1]);
    if (devnull >= 0) ::close(devnull);
    if (pid < 0) {
      ::close(out[0]);
      return fail(ErrorCode::kIo, fmt::format("cannot start downstairs {}: {}", d.index,
                                              std::strerror(fork_errno)));
    }
    d.pid = pid;
    d.state = State::kStarting;
    if (d.started_once) ++d.restarts;
    d.started_once = true;
    log::debug("downstairs {}: started pid {}: {}", d.index, pid, fmt::join(args, " "));
    auto output = std::make_shared<asio::posix::stream_descriptor>(io_, out[0]);
    asio::co_spawn(io_, forward_output(d.index, pid, output), asio::detached);
    return {};
  }

  void watch_children() {
    sigchld_.async_wait([this](const std::error_code& ec, int) {
      if (ec) return;
      // Signals coalesce: one SIGCHLD may stand for several exits.
      for (;;) {
        int status = 0;
        pid_t pid = ::waitpid(-1, &status, WNOHANG);
        if (pid <= 0) break;
        on_exit(pid, status);
      }
      watch_children();
    });
  }

  void on_exit(pid_t pid, int status) {
    Downstairs* d = nullptr;
    for (auto& x : ds_)
      if (x.pid == pid) d = &x;
    if (d == nullptr) return;
    d->pid = -1;
    if (d->state == State::kStopping) {
      d->state = State::kStopped;
      say(fmt::format("downstairs {}: stopped (pid {} {})", d->index, pid,
                      describe_wait_status(status)));
    } else {
      d->state = State::kExited;
      d->exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      d->exit_signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
      say(fmt::format("downstairs {}: pid {} {}", d->index, pid, describe_wait_status(status)));
    }
    notify();
  }

  // Forwards a child's output (stdout and stderr share one pipe) line by line, and turns
  // its "listening on ADDR:PORT" line into the running state.
  asio::awaitable<void> forward_output(uint32_t index, pid_t pid,
                                       std::shared_ptr<asio::posix::stream_descriptor> out) {
    std::array<char, 4096> buf{};
    std::string pending;
    for (;;) {
      std::error_code ec;
      size_t n = co_await out->async_read_some(asio::buffer(buf), kNothrow(ec));
      if (ec) break;  // end of output: the child is gone
      pending.append(buf.data(), n);
      for (size_t nl; (nl = pending.find('\n')) != std::string::npos;) {
        on_child_line(index, pid, pending.substr(0, nl));
        pending.erase(0, nl + 1);
      }
      if (pending.size() >= kMaxChildLineBytes) {
        on_child_line(index, pid, pending);
        pending.clear();
      }
    }
    if (!pending.empty()) on_child_line(index, pid, pending);
  }

  void on_child_line(uint32_t index, pid_t pid, const std::string& line) {
    Downstairs& d = ds_[index];
    constexpr std::string_view kListening = "listening on ";
    if (line.starts_with(kListening) && d.pid == pid && d.state == State::kStarting) {
      size_t colon = line.rfind(':');
      uint16_t port = 0;
      auto [end, ec] = std::from_chars(line.data() + colon + 1, line.data() + line.size(), port);
      if (colon == std::string::npos || ec != std::errc{} || end != line.data() + line.size() ||
          (d.port != 0 && port != d.port))
        log::warn("downstairs {}: unexpected '{}' (its port is {})", index, line, d.port);
      else
        d.port = port;
      d.state = State::kRunning;
      say(fmt::format("downstairs {}: {} pid {}", index, address(d), pid));
      notify();
      return;
    }
    std::fprintf(stderr, "ds%u| %s\n", index, line.c_str());
  }

  std::string address(const Downstairs& d) const {
    return d.port == 0 ? options_.address + ":?" : fmt::format("{}:{}", options_.address, d.port);
  }

  bool alive(const Downstairs& d) const { return d.pid > 0; }

  // ---- start-up and shutdown -------------------------------------------------------------

  asio::awaitable<void> start_all() {
    for (auto& d : ds_) d.busy = true;
    bool ok = true;
    for (auto& d : ds_) {
      if (auto s = spawn(d); !s) {
        log::error("{}", s.error().message);
        ok = false;
        break;
      }
    }
    // Settled: every child listens, or one is already gone.
    std::function<bool()> settled = [this] {
      bool all_running = true;
      for (const auto& d : ds_) {
        if (!alive(d)) return true;
        all_running = all_running && d.state == State::kRunning;
      }
      return all_running;
    };
    if (ok) co_await wait_until(settled, Clock::now() + kStartTimeout);
    for (auto& d : ds_) {
      ok = ok && d.state == State::kRunning;
      d.busy = false;
    }
    if (shutting_down_) co_return;
    if (!ok) {
      std::fprintf(stderr,
                   "crucible-dsc: not every downstairs started (see above); stopping the others\n");
      exit_code_ = 1;
      co_await shutdown();
      co_return;
    }
    say(fmt::format("supervising {} downstairs; control socket {}", ds_.size(), socket_path_));
  }

  void watch_signals() {
    signals_.async_wait([this](const std::error_code& ec, int sig) {
      if (ec) return;
      if (shutting_down_) {
        log::warn("{} again: killing every downstairs now", signal_name(sig));
        signal_all(SIGKILL);
      } else {
        log::info("{}: stopping every downstairs", signal_name(sig));
        asio::co_spawn(io_, shutdown(), asio::detached);
      }
      watch_signals();
    });
  }

  void signal_all(int sig) {
    for (auto& d : ds_)
      if (alive(d)) ::kill(d.pid, sig);
  }

  asio::awaitable<void> shutdown() {
    if (shutting_down_) co_return;
    shutting_down_ = true;
    std::error_code ec;
    acceptor_.close(ec);
    remove_socket();
    for (auto& d : ds_)
      if (alive(d)) d.state = State::kStopping;
    signal_all(SIGTERM);
    std::function<bool()> none_alive = [this] {
      for (const auto& d : ds_)
        if (alive(d)) return false;
      return true;
    };
    if (!co_await wait_until(none_alive, Clock::now() + kStopTimeout)) {
      log::warn("downstairs still running {} s after SIGTERM: SIGKILL", kStopTimeout.count());
      signal_all(SIGKILL);
      if (!co_await wait_until(none_alive, Clock::now() + kKillTimeout))
        log::error("a downstairs survived SIGKILL for {} s; it dies with us (PR_SET_PDEATHSIG)",
                   kKillTimeout.count());
    }
    say("all downstairs stopped");
    io_.stop();
  }

  // ---- control ---------------------------------------------------------------------------

  asio::awaitable<void> accept_loop() {
    while (acceptor_.is_open()) {
      std::error_code ec;
      stream_protocol::socket s = co_await acceptor_.async_accept(kNothrow(ec));
      if (ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
      if (ec) {
        log::warn("control socket accept: {}", ec.message());
        asio::steady_timer pause(io_, kAcceptRetryPause);
        co_await pause.async_wait(kNothrow(ec));
        continue;
      }
      if (connections_ >= kMaxControlConnections) {
        // Best effort and never blocking: the client may not be reading.
        std::string msg =
            fmt::format("error more than {} control connections at once\n", kMaxControlConnections);
        s.non_blocking(true, ec);
        s.send(asio::buffer(msg), 0, ec);
        continue;
      }
      asio::co_spawn(io_, serve(std::move(s)), asio::detached);
    }
  }

  asio::awaitable<void> serve(stream_protocol::socket s) {
    ++connections_;
    try {
      std::string answer = co_await answer_one(s);
      if (!answer.empty()) co_await asio::async_write(s, asio::buffer(answer), asio::use_awaitable);
    } catch (const std::exception& e) {
      log::warn("control connection: {}", e.what());
    }
    --connections_;
  }

  // Reads one request line and returns the full answer (empty: just hang up).
  asio::awaitable<std::string> answer_one(stream_protocol::socket& s) {
    std::string line;
    asio::steady_timer timer(io_, kRequestTimeout);
    std::error_code read_ec, timer_ec;
    auto got = co_await (asio::async_read_until(s, asio::dynamic_buffer(line, kMaxRequestBytes + 1),
                                                '\n', kNothrow(read_ec)) ||
                         timer.async_wait(kNothrow(timer_ec)));
    if (got.index() == 1)
      co_return fmt::format("error no request within {} s\n", kRequestTimeout.count());
    if (read_ec == asio::error::not_found)
      co_return fmt::format("error request line longer than {} bytes\n", kMaxRequestBytes);
    if (read_ec) co_return std::string{};
    std::string_view request(line.data(), std::get<0>(got) - 1);
    if (request.ends_with('\r')) request.remove_suffix(1);
    auto parsed = parse_request(request);
    if (!parsed) co_return "error " + parsed.error().message + "\n";
    log::info("control: {}", request);
    Reply reply = co_await execute(*parsed);
    if (reply.error) {
      std::string message = *reply.error;
      std::replace(message.begin(), message.end(), '\n', ' ');
      log::info("control: {}: {}", request, message);
      co_return reply.text + "error " + message + "\n";
    }
    co_return reply.text + "ok\n";
  }

  asio::awaitable<Reply> execute(Request r) {
    if (shutting_down_) co_return error("the supervisor is shutting down");
    if (r.command == Command::kStatus) co_return ok(status());
    if (r.command == Command::kKillRandom) {
      std::vector<uint32_t> candidates;
      for (const auto& d : ds_)
        if (alive(d) && !d.busy) candidates.push_back(d.index);
      if (candidates.empty()) co_return error("no downstairs is running (or all are busy)");
      r = Request{
          Command::kKill,
          candidates[std::uniform_int_distribution<size_t>(0, candidates.size() - 1)(rng_)]};
    }
    CRU_ASSERT(r.index.has_value());
    if (*r.index >= ds_.size())
      co_return error(fmt::format("no downstairs {}: this supervisor runs {} (0 to {})", *r.index,
                                  ds_.size(), ds_.size() - 1));
    Downstairs& d = ds_[*r.index];
    if (d.busy)
      co_return error(
          fmt::format("downstairs {} is busy with another command; try again", d.index));
    d.busy = true;
    Reply reply;
    try {
      switch (r.command) {
        case Command::kStart:
          reply = co_await start(d);
          break;
        case Command::kStop:
          reply = co_await stop(d, false);
          break;
        case Command::kKill:
          reply = co_await stop(d, true);
          break;
        case Command::kRestart:
          if (alive(d)) reply = co_await stop(d, false);
          if (!reply.error) {
            Reply started = co_await start(d);
            started.text = reply.text + started.text;
            reply = std::move(started);
          }
          break;
        case Command::kStatus:
        case Command::kKillRandom:
          CRU_UNREACHABLE("handled above");
      }
    } catch (const std::exception& e) {
      reply = error(e.what());
    }
    d.busy = false;
    co_return reply;
  }

  std::string status() const {
    std::string out;
    for (const auto& d : ds_)
      out += fmt::format("downstairs {}: {} {} pid {} restarts {}\n", d.index, address(d),
                         state_name(d), alive(d) ? std::to_string(d.pid) : "-", d.restarts);
    return out;
  }

  asio::awaitable<Reply> start(Downstairs& d) {
    if (alive(d))
      co_return error(
          fmt::format("downstairs {} is already {} (pid {})", d.index, state_name(d), d.pid));
    if (auto s = spawn(d); !s) co_return error(s.error().message);
    pid_t pid = d.pid;
    std::function<bool()> settled = [&d, pid] {
      return d.pid != pid || d.state != State::kStarting;
    };
    co_await wait_until(settled, Clock::now() + kStartTimeout);
    if (d.pid == pid && d.state == State::kRunning)
      co_return ok(fmt::format("downstairs {}: {} pid {}\n", d.index, address(d), pid));
    if (d.pid != pid)
      co_return error(
          fmt::format("downstairs {} {} before it listened; see the supervisor's output", d.index,
                      state_name(d)));
    co_return error(
        fmt::format("downstairs {} (pid {}) did not listen within {} s; it is still starting",
                    d.index, pid, kStartTimeout.count()));
  }

  // kill: SIGKILL. Otherwise SIGTERM, and SIGKILL if that takes longer than kStopTimeout.
  // Either way the answer comes once the child is reaped, so its port is closed by then.
  asio::awaitable<Reply> stop(Downstairs& d, bool kill) {
    if (!alive(d))
      co_return error(fmt::format("downstairs {} is not running ({})", d.index, state_name(d)));
    pid_t pid = d.pid;
    if (!kill) d.state = State::kStopping;
    ::kill(pid, kill ? SIGKILL : SIGTERM);
    bool gone = co_await wait_reaped(d, pid, kill ? kKillTimeout : kStopTimeout);
    if (!gone && !kill) {
      log::warn("downstairs {} (pid {}) ignored SIGTERM for {} s: SIGKILL", d.index, pid,
                kStopTimeout.count());
      ::kill(pid, SIGKILL);
      gone = co_await wait_reaped(d, pid, kKillTimeout);
    }
    if (!gone)
      co_return error(
          fmt::format("downstairs {} (pid {}) is still there after SIGKILL", d.index, pid));
    co_return ok(
        fmt::format("{} downstairs {} (pid {})\n", kill ? "killed" : "stopped", d.index, pid));
  }

  asio::io_context& io_;
  const SupervisorOptions& options_;
  asio::signal_set signals_;
  asio::signal_set sigchld_;
  stream_protocol::acceptor acceptor_;
  asio::steady_timer changed_;  // never expires; cancel() wakes its waiters
  std::vector<Downstairs> ds_;  // never resized: coroutines hold references into it
  std::mt19937 rng_;
  std::string socket_path_;
  int lock_fd_ = -1;
  size_t connections_ = 0;
  bool shutting_down_ = false;
  int exit_code_ = 0;
};

}  // namespace

int run_supervisor(const SupervisorOptions& options) {
  asio::io_context io;
  Supervisor supervisor(io, options);
  return supervisor.run();
}

}  // namespace cru::dsc
