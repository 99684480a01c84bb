// Reconciliation's choice per extent, from each downstairs' (generation, flush, dirty):
// an extent needs repair if any copy is dirty or the copies differ; the source is the
// copy with the highest (generation, flush), a dirty one preferred, ties to the lowest
// client; the destinations are the copies that differ from it (all others if it is
// dirty). Pure.
#pragma once

#include <optional>
#include <vector>

#include "common/ids.h"
#include "proto/messages.h"

namespace cru::upstairs {

struct ExtentMend {
  ExtentId extent;
  ClientId source;
  std::vector<ClientId> dests;
};

// versions[c] is client c's vector for the clients in `present` (2 or 3 of them); the
// vectors must have equal lengths. Returns the extents that need repair, in order.
std::vector<ExtentMend> plan_mend(const ClientData<std::vector<proto::ExtentVersion>>& versions,
                                  const std::vector<ClientId>& present);

// The mend for one extent (nullopt if every present copy is clean and equal).
std::optional<ExtentMend> mend_extent(ExtentId extent, const ClientData<proto::ExtentVersion>& v,
                                      const std::vector<ClientId>& present);

}  // namespace cru::upstairs
