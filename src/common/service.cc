#include "common/service.h"

#include <fmt/format.h>
#include <systemd/sd-daemon.h>

#include <cstring>

#include "common/log.h"

namespace cru {

std::string version_line(std::string_view program) {
  return fmt::format("{} {}", program, kVersion);
}

namespace {
void notify(const std::string& message) {
  // Negative: the manager's socket exists but could not be reached. The service still
  // runs; systemd will time the start out and say so, so a warning is enough here.
  if (int rc = sd_notify(0, message.c_str()); rc < 0)
    log::warn("could not notify the service manager: {}", std::string(strerror(-rc)));
}
}  // namespace

void notify_ready(std::string_view status) { notify(fmt::format("READY=1\nSTATUS={}", status)); }

void notify_stopping(std::string_view status) {
  notify(fmt::format("STOPPING=1\nSTATUS={}", status));
}

}  // namespace cru
