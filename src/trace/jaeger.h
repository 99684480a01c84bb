// The Jaeger agent's wire format: Agent.emitBatch (a oneway Thrift call) in the Thrift
// compact protocol, one UDP datagram per call, as jaeger.thrift and agent.thrift (Jaeger's
// IDL) define it. Only what crucible sends is encoded. Pure: bytes in, bytes out.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "trace/span.h"
#include "trace/tracer.h"

namespace cru::trace {

// The agent's UDP listener (6831) reads datagrams of at most 65000 bytes.
inline constexpr size_t kJaegerPacketBytesMax = 65000;

// One emitBatch message (a whole datagram) for `spans`, with the batch's sequence number.
std::vector<uint8_t> encode_emit_batch(const std::string& service, std::span<const Span> spans,
                                       int64_t seq_no, const ExportStats& stats);

// The spans as datagrams of at most max_bytes each (halving a batch until it fits; a single
// span too large on its own is left out and counted in too_large).
std::vector<std::vector<uint8_t>> encode_emit_batches(const std::string& service,
                                                      std::span<const Span> spans, int64_t& seq_no,
                                                      const ExportStats& stats, size_t max_bytes,
                                                      uint64_t& too_large);

}  // namespace cru::trace
