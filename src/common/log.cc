#include "common/log.h"

#include <spdlog/sinks/stdout_sinks.h>

#include <array>

#include "common/assert.h"

namespace cru::log {

namespace {
constexpr std::array<std::string_view, 7> kLevelNames = {"trace", "debug",    "info", "warn",
                                                         "error", "critical", "off"};
}  // namespace

bool valid_level(std::string_view name) {
  for (auto n : kLevelNames)
    if (n == name) return true;
  return false;
}

void set_level(std::string_view name) {
  CRU_ASSERT(valid_level(name));
  spdlog::set_level(spdlog::level::from_str(std::string(name)));
}

void init(std::string_view component) {
  auto logger = spdlog::stderr_logger_mt(std::string(component));
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%L%$ [%n] %v");
}

}  // namespace cru::log
