// Test-side helpers for talking to real programs: a child process with captured output
// (end-to-end tests), a temporary directory, a one-shot command runner, and a blocking
// protocol peer over loopback TCP (scripted upstairs or repair source). Every wait has a
// hard timeout and nothing here sleeps: waits are on output, process exit or sockets.
// Each object is used from the thread that made it (Process has one internal reader
// thread of its own).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "common/result.h"
#include "proto/frame_reader.h"
#include "proto/messages.h"

namespace cru::test {

using Millis = std::chrono::milliseconds;

// $CRUCIBLE_BIN/name, or else <build>/bin/name next to the running test binary
// (<build>/tests/<binary>).
std::string bin(const char* name);

// A fresh directory under /tmp, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// How a child ended. Exactly one of: exited (code), killed (signal), or still running
// when the wait timed out.
struct ExitStatus {
  bool timed_out = false;
  int code = -1;   // exit code if it exited
  int signal = 0;  // signal number if a signal ended it
  bool exited() const { return !timed_out && signal == 0 && code >= 0; }
  std::string describe() const;
};

struct ProcessOptions {
  std::vector<std::string> env;  // extra NAME=VALUE entries on top of ours
  std::string cwd;               // working directory; empty: ours
};

class Process {
 public:
  // Spawns argv[0] (a path) in its own process group, stdin from /dev/null, stdout and
  // stderr captured.
  static Result<std::unique_ptr<Process>> start(std::vector<std::string> argv,
                                                ProcessOptions options = {});
  // SIGKILLs the process group and reaps the child if it is still running.
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  // The first output line (stdout or stderr, in the order the reader saw them; the two
  // streams are not ordered against each other) after the last line a wait_for_line
  // returned that contains `needle` / matches `pattern` (regex_search). Fails with
  // kTimeout, or kDisconnected when the output ends first; the error message carries
  // everything captured so far.
  Result<std::string> wait_for_line(const std::string& needle, Millis timeout);
  Result<std::string> wait_for_line(const std::regex& pattern, Millis timeout);
  // Any line containing `needle`, captured earlier or arriving within the timeout; does
  // not move the position wait_for_line searches from. For lines of the other stream,
  // which may be read later than lines already matched.
  Result<std::string> find_line(const std::string& needle, Millis timeout);
  // Signals the child's process group (no-op once reaped).
  void kill(int signal);
  // Waits for the child to end (timed_out if it does not) and reaps it.
  ExitStatus wait(Millis timeout);
  // Waits until both output pipes are closed (after exit, normally at once).
  bool wait_output_closed(Millis timeout);
  std::string stdout_text() const;
  std::string stderr_text() const;
  // Both streams, labelled, for failure messages.
  std::string output() const;

 private:
  Process() = default;
  void read_loop(int out_fd, int err_fd, int wake_fd);
  Result<std::string> wait_for(const std::function<bool(const std::string&)>& match,
                               const std::string& what, Millis timeout, bool anywhere);

  pid_t pid_ = -1;
  int pidfd_ = -1;
  int wake_read_ = -1;  // wakes the reader thread for shutdown
  int wake_write_ = -1;
  std::optional<ExitStatus> status_;
  std::thread reader_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string out_, err_;
  std::string partial_[2];
  std::vector<std::string> lines_;
  size_t cursor_ = 0;
  bool output_closed_ = false;
};

struct CommandResult {
  ExitStatus status;
  std::string out;
  std::string err;
  int exit_code() const { return status.exited() ? status.code : -1; }
  std::string describe() const;  // status and both streams, for failure messages
};
// Runs a command to completion; a command still running at the timeout is killed and
// reported as timed_out.
CommandResult run_command(std::vector<std::string> argv, Millis timeout,
                          ProcessOptions options = {});

// A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close).
uint16_t free_port();

// A blocking protocol peer: one TCP connection speaking frames.
class Peer {
 public:
  static Result<Peer> connect(uint16_t port, Millis timeout, const std::string& host = "127.0.0.1");
  explicit Peer(int fd) : fd_(fd) {}
  Peer(Peer&& other) noexcept;
  Peer& operator=(Peer&& other) noexcept;
  ~Peer();

  Status send(const proto::Message& m);
  Status send_raw(std::span<const std::byte> bytes);
  // As send(), but kTimeout if the other side stops reading long enough that the frame
  // cannot be handed to the socket within `timeout` (part of it may have been sent).
  Status send(const proto::Message& m, Millis timeout);
  // The next message. Errors: kTimeout, kDisconnected (EOF or reset), kProtocol (a bad
  // frame from the other side).
  Result<proto::Message> recv(Millis timeout);
  // The next message, which must be a T (kProtocol naming what came instead).
  template <typename T>
  Result<T> recv_as(Millis timeout) {
    auto m = recv(timeout);
    if (!m) return tl::unexpected(m.error());
    if (auto* t = std::get_if<T>(&*m)) return std::move(*t);
    return fail(ErrorCode::kProtocol, "expected " + std::string(proto::tag_name(T::kTag)) +
                                          ", got " + proto::describe(*m));
  }
  // The upstairs side of a full negotiation (HereIAm, PromoteToActive, RegionInfoPlease,
  // ExtentVersionsPlease), each answer checked; returns the region's definition.
  Result<proto::RegionDefinition> negotiate(const Uuid& upstairs_id, const Uuid& session_id,
                                            Generation gen, Millis timeout, bool read_only = false,
                                            bool encrypted = false);
  // True if the other side closes the connection within the timeout; messages that
  // arrive first are skipped.
  bool wait_closed(Millis timeout);
  void shutdown_write();
  void close();
  bool is_open() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
  proto::FrameReader reader_;
  std::vector<std::byte> pending_;  // received, not yet fed to the reader
};

// A listening socket on 127.0.0.1 (port 0: any free port), for a test playing a server.
class Listener {
 public:
  static Result<Listener> listen();
  Listener(Listener&& other) noexcept;
  Listener& operator=(Listener&& other) = delete;
  ~Listener();
  uint16_t port() const { return port_; }
  Result<Peer> accept(Millis timeout);

 private:
  Listener(int fd, uint16_t port) : fd_(fd), port_(port) {}
  int fd_ = -1;
  uint16_t port_ = 0;
};

}  // namespace cru::test
