// A 16-byte UUID: region ids, upstairs ids and session ids. Parses and prints the usual
// 8-4-4-4-12 hex form; random() makes a version-4 UUID from libsodium's CSPRNG.
#pragma once

#include <fmt/format.h>

#include <array>
#include <compare>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace cru {

struct Uuid {
  std::array<uint8_t, 16> bytes{};

  static Uuid random();
  // Accepts 8-4-4-4-12 hex, upper or lower case.
  static Result<Uuid> parse(std::string_view text);
  std::string to_string() const;
  bool is_nil() const;
  friend auto operator<=>(const Uuid&, const Uuid&) = default;
};

}  // namespace cru

template <>
struct fmt::formatter<cru::Uuid> : fmt::formatter<std::string> {
  auto format(const cru::Uuid& u, format_context& ctx) const {
    return fmt::formatter<std::string>::format(u.to_string(), ctx);
  }
};
