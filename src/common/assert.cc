#include "common/assert.h"

#include <cstdio>
#include <cstdlib>

#include "common/log.h"

namespace cru::detail {

void assert_failed(std::string_view condition, std::string_view message, const char* file,
                   int line) {
  // Log through spdlog (so it lands in the same sink as everything else) and on stderr
  // (in case logging itself is what broke), then abort for a core dump.
  log::critical("assertion failed: {} ({}) at {}:{}", condition, message, file, line);
  std::fprintf(stderr, "assertion failed: %.*s (%.*s) at %s:%d\n",
               static_cast<int>(condition.size()), condition.data(),
               static_cast<int>(message.size()), message.data(), file, line);
  std::abort();
}

}  // namespace cru::detail
