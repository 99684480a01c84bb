// Running under a service manager: the version every program reports (`--version`, the
// man pages and the Debian package take it from here) and systemd readiness
// notifications (Type=notify units in packaging/systemd). Outside systemd (no
// NOTIFY_SOCKET) the notifications do nothing.
#pragma once

#include <string>
#include <string_view>

namespace cru {

inline constexpr std::string_view kVersion = "0.1.0";

// "NAME VERSION", what `--version` prints (help2man reads it for the man pages).
std::string version_line(std::string_view program);

// READY=1 with a one-line status (a downstairs listens, a volume is mounted).
void notify_ready(std::string_view status);
// STOPPING=1: the service began its clean stop (final flush, settle), which may take a while.
void notify_stopping(std::string_view status);

}  // namespace cru
