// Reconciliation's choice per extent, from each downstairs' (generation, flush, dirty,
// damaged): an extent needs repair if any copy is dirty or damaged or the copies differ;
// the source is the undamaged copy with the highest (generation, flush), a dirty one
// preferred, ties to the lowest client; the destinations are the copies that differ from
// it (all others if it is dirty), so every damaged copy. With every copy damaged there is
// no source and no mend. Pure.
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

// The mend for one extent (nullopt if every present copy is clean and equal, or every
// present copy is damaged).
std::optional<ExtentMend> mend_extent(ExtentId extent, const ClientData<proto::ExtentVersion>& v,
                                      const std::vector<ClientId>& present);

}  // namespace cru::upstairs
