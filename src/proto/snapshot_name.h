// Snapshot names (Flush.snapshot): one rule for the upstairs, which refuses a bad name
// before anything is sent, and the downstairs, which makes a directory of it. Pure.
#pragma once

#include <cstddef>
#include <string_view>

#include "common/result.h"

namespace cru::proto {

// A name is one directory entry, shown in logs, status and the CLI: well under NAME_MAX
// (255) so the staging name ".NAME.partial" fits too, and short enough to read.
inline constexpr size_t kSnapshotNameBytesMax = 128;

// 1 to kSnapshotNameBytesMax printable ASCII characters, no space, '/' or '\', not starting
// with '.' (staging directories do) or '-' (it would read as a flag). kInvalidArgument
// naming the problem otherwise.
Status validate_snapshot_name(std::string_view name);

}  // namespace cru::proto
