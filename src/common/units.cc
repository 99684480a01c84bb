#include "common/units.h"

#include <fmt/format.h>

#include <array>
#include <cctype>
#include <utility>

namespace cru {

Result<uint64_t> parse_size(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return fail(ErrorCode::kInvalidArgument, fmt::format("'{}' is not a size: {}", text, why));
  };
  size_t i = 0;
  uint64_t n = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    uint64_t digit = static_cast<uint64_t>(text[i] - '0');
    if (n > (UINT64_MAX - digit) / 10) return bad("too large");
    n = n * 10 + digit;
    ++i;
  }
  if (i == 0) return bad("expected digits, e.g. 64MiB");
  while (i < text.size() && text[i] == ' ') ++i;
  std::string unit;
  for (; i < text.size(); ++i)
    unit += static_cast<char>(std::tolower(static_cast<unsigned char>(text[i])));
  static constexpr std::array<std::pair<std::string_view, uint64_t>, 13> kUnits = {{
      {"", 1},
      {"b", 1},
      {"k", kKiB},
      {"kb", kKiB},
      {"kib", kKiB},
      {"m", kMiB},
      {"mb", kMiB},
      {"mib", kMiB},
      {"g", kGiB},
      {"gb", kGiB},
      {"gib", kGiB},
      {"t", kTiB},
      {"tib", kTiB},
  }};
  for (auto [name, mult] : kUnits) {
    if (unit != name) continue;
    if (n > UINT64_MAX / mult) return bad("too large");
    return n * mult;
  }
  return bad("unknown unit (use K, M, G or T, binary multiples)");
}

std::string format_size(uint64_t bytes) {
  static constexpr std::array<std::string_view, 5> kNames = {"B", "KiB", "MiB", "GiB", "TiB"};
  size_t u = 0;
  double v = static_cast<double>(bytes);
  while (v >= 1024.0 && u + 1 < kNames.size()) {
    v /= 1024.0;
    ++u;
  }
  if (u == 0) return fmt::format("{} B", bytes);
  if (v == static_cast<double>(static_cast<uint64_t>(v)))
    return fmt::format("{} {}", static_cast<uint64_t>(v), kNames[u]);
  return fmt::format("{:.1f} {}", v, kNames[u]);
}

}  // namespace cru
