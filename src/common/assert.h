// Always-on invariant checks. A failed CRU_ASSERT is a bug in this program, never an
// operating error: it logs the condition and location and aborts, in every build mode.
// Operating errors (bad input, IO failures) are Result values instead; see result.h.
#pragma once

#include <string_view>

namespace cru::detail {
[[noreturn]] void assert_failed(std::string_view condition, std::string_view message,
                                const char* file, int line);
}  // namespace cru::detail

#define CRU_ASSERT(cond, ...)                                                                    \
  do {                                                                                           \
    if (!(cond)) [[unlikely]]                                                                    \
      ::cru::detail::assert_failed(#cond, std::string_view{"" __VA_ARGS__}, __FILE__, __LINE__); \
  } while (0)

#define CRU_UNREACHABLE(msg) ::cru::detail::assert_failed("unreachable", msg, __FILE__, __LINE__)
