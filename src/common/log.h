// Logging: a thin facade over spdlog so call sites stay short and one place decides the
// sink and format. Thread-safe (spdlog's default logger is synchronised). Nothing per-IO
// belongs at info level.
#pragma once

#include <spdlog/spdlog.h>

#include <string_view>

namespace cru::log {

using spdlog::critical;
using spdlog::debug;
using spdlog::error;
using spdlog::info;
using spdlog::trace;
using spdlog::warn;

// Names accepted by set_level: trace, debug, info, warn, error, critical, off.
[[nodiscard]] bool valid_level(std::string_view name);
// Sets the global level; precondition: valid_level(name).
void set_level(std::string_view name);
// Logs to stderr with a component tag, e.g. "downstairs" or "fuse".
void init(std::string_view component);

}  // namespace cru::log
