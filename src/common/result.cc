#include "common/result.h"

#include <array>

namespace cru {

std::string_view error_code_name(ErrorCode code) {
  static constexpr std::array<std::string_view, kErrorCodeMax + 1> kNames = {
      "ok",
      "io error",
      "offset invalid",
      "offset unaligned",
      "data length unaligned",
      "block size mismatch",
      "invalid extent",
      "extent closed",
      "hash mismatch",
      "read-only",
      "uuid mismatch",
      "generation too low",
      "version mismatch",
      "encryption mismatch",
      "read-only mismatch",
      "not active",
      "no longer active",
      "protocol error",
      "repair failed",
      "injected error",
      "decryption failed",
      "timeout",
      "disconnected",
      "quorum lost",
      "invalid argument",
      "unsupported",
      "corrupt",
      "already exists",
      "not found",
      "busy",
      "shutting down",
      "io too large",
      "snapshot failed"};
  auto i = static_cast<size_t>(code);
  return i < kNames.size() ? kNames[i] : "unknown error";
}

std::string Error::to_string() const {
  std::string s(error_code_name(code));
  if (!message.empty()) {
    s += ": ";
    s += message;
  }
  return s;
}

}  // namespace cru
