// The status of a volume of sub-volumes (upstairs/sub_volumes.h) as JSON and text. One
// sub-volume: exactly status_json / format_status (the shape tools already read). Several:
// the same top-level keys, summed or combined over them (state "active" only when every
// sub-volume is; downstairs lists every replica with its "sub_volume"), plus
// "sub_volumes": each one's own status_json, and "stripe_bytes".
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "upstairs/scrub_plan.h"
#include "upstairs/status.h"

namespace cru::fuse {

nlohmann::json volume_status_json(const std::vector<upstairs::Snapshot>& sub_volumes,
                                  uint64_t stripe_bytes);
// format_status, then each sub-volume's own lines when there are several, then the
// read-only parent's scrub line when there is one.
std::string format_volume_status(const nlohmann::json& j);

// The "read_only_parent" object of the status JSON (docs/volumes.md lists its keys).
nlohmann::json scrub_status_json(const upstairs::ScrubStatus& s, bool parent_needed);
// Its line in `crucible-fuse status`.
std::string format_scrub_status(const nlohmann::json& p);

}  // namespace cru::fuse
