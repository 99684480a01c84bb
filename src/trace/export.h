// Where spans go: --trace-endpoint's two forms, and the exporters behind them.
//   HOST:PORT         a Jaeger agent: emitBatch datagrams over UDP (jaeger.h)
//   http://HOST:PORT  an OTLP/HTTP receiver: JSON POSTs to /v1/traces (otlp.h)
// The exporters run on the Tracer's sender thread and give up quickly (a datagram is sent
// without waiting; an HTTP request times out in seconds), so a slow or absent collector
// costs dropped spans, never IO.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/result.h"
#include "trace/tracer.h"

namespace cru::trace {

// An OTLP request (connect, send, answer) is given up after this long: the sender thread
// falls behind and spans are dropped rather than waited for.
inline constexpr std::chrono::seconds kHttpTimeout{2};

struct Endpoint {
  enum class Kind { kJaegerAgent, kOtlpHttp } kind = Kind::kJaegerAgent;
  std::string host;
  uint16_t port = 0;
};

// Parses an endpoint; the error names `flag` (the option it came from), the text and the
// forms expected.
Result<Endpoint> parse_endpoint(std::string_view text, std::string_view flag);

// The exporter for an endpoint. A Jaeger agent's host is resolved here (an unknown name is
// an error now, not silence later).
Result<std::unique_ptr<Exporter>> make_exporter(const Endpoint& endpoint);

// The tracer of a process: service name, --trace-endpoint and the sample ratio. The error
// names `flag`.
Result<std::unique_ptr<Tracer>> make_tracer(std::string service, std::string_view endpoint,
                                            double sample_ratio, std::string_view flag);

}  // namespace cru::trace
