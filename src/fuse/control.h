// crucible-fuse's control socket: a UNIX stream socket that answers one-line requests
// ("status", "replace OLD NEW") with one reply, so a running volume can be watched and
// steered (`crucible-fuse status`, `crucible-fuse replace`). Served by its own thread, one
// client at a time; requests are short and bounded.
#pragma once

#include <functional>
#include <string>
#include <thread>

#include "common/result.h"

namespace cru::fuse {

// The longest request line accepted; longer ones are refused and the client dropped.
inline constexpr size_t kMaxControlLineBytes = 4096;

class ControlServer {
 public:
  // Handler: request line (without newline) -> reply text. Runs on the server's thread.
  using Handler = std::function<std::string(const std::string&)>;

  ControlServer() = default;
  ~ControlServer();  // stops the thread and removes the socket
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Binds `path` (refusing one a live process serves; replacing a stale one) and starts.
  Status start(const std::string& path, Handler handler);
  void stop();

 private:
  void serve();
  void handle(int fd);

  std::string path_;
  Handler handler_;
  int listen_fd_ = -1;
  int stop_fd_ = -1;  // eventfd: wakes the thread to stop
  std::thread thread_;
};

// Sends one request to the socket at `path` and returns the reply.
Result<std::string> control_request(const std::string& path, const std::string& request);

}  // namespace cru::fuse
