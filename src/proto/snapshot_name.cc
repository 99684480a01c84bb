#include "proto/snapshot_name.h"

#include <fmt/format.h>

namespace cru::proto {

Status validate_snapshot_name(std::string_view name) {
  auto bad = [&](std::string_view why) {
    return fail(ErrorCode::kInvalidArgument, fmt::format("snapshot name '{}' {}", name, why));
  };
  if (name.empty()) return fail(ErrorCode::kInvalidArgument, "a snapshot name must not be empty");
  if (name.size() > kSnapshotNameBytesMax)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("a snapshot name is at most {} bytes; this one is {}",
                            kSnapshotNameBytesMax, name.size()));
  for (char c : name) {
    const auto u = static_cast<unsigned char>(c);
    // Not echoed: the name may hold control characters.
    if (u <= 0x20 || u >= 0x7f)
      return fail(ErrorCode::kInvalidArgument,
                  fmt::format("a snapshot name takes printable ASCII without spaces; byte 0x{:02x} "
                              "is not",
                              u));
    if (c == '/' || c == '\\') return bad("contains a path separator");
  }
  if (name.front() == '.') return bad("starts with '.'");
  if (name.front() == '-') return bad("starts with '-'");
  return {};
}

}  // namespace cru::proto
