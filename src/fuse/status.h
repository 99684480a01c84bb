// The volume's status as JSON (the control socket's "status" reply) and as the text
// `crucible-fuse status` prints.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "upstairs/status.h"

namespace cru::fuse {

nlohmann::json status_json(const upstairs::Snapshot& s);
// A few lines for people: state, each downstairs, repair progress, counters.
std::string format_status(const nlohmann::json& j);

}  // namespace cru::fuse
