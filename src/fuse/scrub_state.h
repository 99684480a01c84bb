// The scrub's progress record (docs/volumes.md "Read-only parent"): a small JSON file,
// rewritten atomically (temp file, fsync, rename, fsync of the directory) at every scrub
// checkpoint, read once at mount. It says which volume it belongs to (its regions' UUIDs),
// which parent, how far the scrub got, and whether it completed: a mount without the parent
// is refused while it says the scrub is incomplete. Owned by whoever calls; no threads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace cru::fuse {

// Per sub-volume, in volume order, the region UUIDs of its replicas (each replica's region
// has its own).
using VolumeIdentity = std::vector<std::vector<std::string>>;

struct ScrubState {
  VolumeIdentity volume;
  std::string parent;  // ParentSource::describe() of the parent
  uint64_t parent_bytes = 0;
  uint32_t block_size = 0;
  uint64_t next_block = 0;  // every parent block below this is in the volume, durably
  bool complete = false;
  friend bool operator==(const ScrubState&, const ScrubState&) = default;
};

// Whether a record made for `recorded` is this volume's (`now`): every recorded sub-volume
// is still there (a grow appends more) and shares at least one replica's region with it (a
// replaced downstairs brings a new region; the record is rewritten with the new one at
// the next checkpoint).
bool same_volume(const VolumeIdentity& recorded, const VolumeIdentity& now);

// The record as JSON text, and back; errors name `source` and the field.
std::string scrub_state_json(const ScrubState& s);
Result<ScrubState> parse_scrub_state(std::string_view text, std::string_view source);

// nullopt if there is no file at `path`; an error if it cannot be read or parsed.
Result<std::optional<ScrubState>> load_scrub_state(const std::string& path);
// Replaces the file atomically and durably.
Status save_scrub_state(const std::string& path, const ScrubState& s);

}  // namespace cru::fuse
