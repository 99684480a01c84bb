// How many bytes one repair of one extent moved over the network: the target downstairs
// counts the chunks its source actually sent (only those that differed from its own
// copy) and tells the upstairs in the success status of its answer (the Ack of an
// ExtentLiveRepair, the RepairAck of an ExtentRepair), as the status message
// "transferred=N". An ok status's message was always empty, so a peer that does not
// report reads as "not reported" and nothing else changes on the wire (docs/protocol.md).
// Pure.
#pragma once

#include <cstdint>
#include <optional>

#include "proto/messages.h"

namespace cru::proto {

// The success status of a repair that received `network_bytes` from its source.
WireStatus repair_done_status(uint64_t network_bytes);

// The bytes an ok repair status reports; nullopt if the status is an error or reports
// none (an older peer, or a message that is not exactly "transferred=<decimal>").
std::optional<uint64_t> repair_transferred_bytes(const WireStatus& status);

}  // namespace cru::proto
