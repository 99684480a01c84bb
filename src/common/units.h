// Byte units and human-readable sizes ("75MiB", "1G", "4096") for flags and config.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace cru {

inline constexpr uint64_t kKiB = 1024;
inline constexpr uint64_t kMiB = 1024 * kKiB;
inline constexpr uint64_t kGiB = 1024 * kMiB;
inline constexpr uint64_t kTiB = 1024 * kGiB;

// Parses a non-negative size: digits followed by an optional unit K, KB, KiB, M, MB, MiB,
// G, GB, GiB, T, TB, TiB (case-insensitive, all binary multiples) or B. Overflow and
// anything else is an error naming the text.
Result<uint64_t> parse_size(std::string_view text);
// "64 MiB", "1.5 GiB", "512 B".
std::string format_size(uint64_t bytes);

}  // namespace cru
