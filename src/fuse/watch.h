// `crucible-fuse status --watch`: asks the control socket for the status every interval
// and redraws the view (watch_view.h) until Ctrl-C or the volume goes away. On a terminal
// each frame replaces the last (cursor home, clear); otherwise each frame is printed after
// the last, with a blank line between, and no escapes.
#pragma once

#include <chrono>
#include <string>

namespace cru::fuse {

// The shortest interval: the status snapshot runs on the volume's io thread.
inline constexpr std::chrono::milliseconds kMinWatchInterval{100};

// Exit codes: 0 after Ctrl-C (SIGINT, SIGTERM, SIGHUP) or when the volume stopped (its
// control socket was removed: crucible-fuse unmounted); 1 if the first request fails, or
// the socket is still there but stops answering (crucible-fuse died or hangs).
int run_watch(const std::string& socket, std::chrono::milliseconds interval);

}  // namespace cru::fuse
