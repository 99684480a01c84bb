// OTLP/HTTP's JSON encoding of spans: the body of a POST to /v1/traces (an
// ExportTraceServiceRequest in the protobuf JSON mapping, with trace and span ids as hex,
// as the OTLP specification says). Pure.
#pragma once

#include <span>
#include <string>

#include "trace/span.h"

namespace cru::trace {

std::string encode_otlp_json(const std::string& service, std::span<const Span> spans);

}  // namespace cru::trace
