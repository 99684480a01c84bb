#include "fuse/watch.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <iostream>

#include "common/assert.h"
#include "fuse/control.h"
#include "fuse/watch_view.h"

namespace cru::fuse {

namespace {

// Cursor home, then after the frame clear what is left of the screen; each line ends
// with clear-to-end-of-line so a shorter line leaves nothing behind (no blank flash).
constexpr const char* kHome = "\x1b[H";
constexpr const char* kClearLineEnd = "\x1b[K";
constexpr const char* kClearScreenEnd = "\x1b[J";

std::string for_terminal(const std::string& frame) {
  std::string out = kHome;
  size_t start = 0;
  for (size_t nl; (nl = frame.find('\n', start)) != std::string::npos; start = nl + 1)
    out += frame.substr(start, nl - start) + kClearLineEnd + "\n";
  return out + kClearScreenEnd;
}

// Waits up to `wait` for one of `signals`; true if one came.
bool signalled(const sigset_t& signals, std::chrono::milliseconds wait) {
  const auto ms = std::max<int64_t>(0, wait.count());
  timespec ts{static_cast<time_t>(ms / 1000), static_cast<long>(ms % 1000) * 1'000'000};
  for (;;) {
    if (::sigtimedwait(&signals, nullptr, &ts) >= 0) return true;
    if (errno == EAGAIN) return false;
    CRU_ASSERT(errno == EINTR, "sigtimedwait failed");
  }
}

}  // namespace

int run_watch(const std::string& socket, std::chrono::milliseconds interval) {
  CRU_ASSERT(interval >= kMinWatchInterval);
  // Ctrl-C and friends are taken synchronously between frames (they cannot interrupt a
  // half-written frame); a request never blocks long (control_request has a timeout).
  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&signals, s);
  CRU_ASSERT(::sigprocmask(SIG_BLOCK, &signals, nullptr) == 0);
  const bool terminal = ::isatty(STDOUT_FILENO) == 1;
  const WatchOptions options{socket, interval};
  WatchHistory history;
  for (bool first = true;; first = false) {
    const auto asked = WatchClock::now();
    auto reply = control_request(socket, "status");
    if (!reply || reply->rfind("error:", 0) == 0) {
      const std::string why = reply ? *reply : reply.error().message;
      if (!first && !std::filesystem::exists(socket)) {
        std::cout << "crucible-fuse: the volume stopped (its control socket " << socket
                  << " is gone)\n";
        return 0;
      }
      std::cerr << (first ? "crucible-fuse: " : "crucible-fuse: lost the volume: ") << why
                << (why.ends_with('\n') ? "" : "\n");
      return 1;
    }
    auto j = nlohmann::json::parse(*reply, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      std::cerr << "crucible-fuse: the status reply is not JSON\n";
      return 1;
    }
    const WatchSample sample{WatchClock::now(), std::move(j)};
    const std::string frame = render_watch(history, sample, options);
    std::cout << (terminal ? for_terminal(frame) : frame + "\n") << std::flush;
    history = watch_next(history, sample);
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(asked + interval - WatchClock::now());
    if (signalled(signals, left)) {
      std::cout << "\n" << std::flush;
      return 0;
    }
  }
}

}  // namespace cru::fuse
