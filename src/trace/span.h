// Spans as the exporters send them: plain values, built by whoever traces (the upstairs
// shell, the downstairs core) and handed to a Tracer (tracer.h), which owns them from then
// on. Times are wall-clock microseconds since the Unix epoch, as Jaeger and OTLP want.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

namespace cru::trace {

// 128 bits; zero is "no trace" (W3C and Jaeger both reserve it).
struct TraceId {
  uint64_t high = 0;
  uint64_t low = 0;
  bool valid() const { return (high | low) != 0; }
  friend bool operator==(const TraceId&, const TraceId&) = default;
};

// What a child needs of its parent: the trace, the parent's span id and whether the trace
// is sampled. Trivially copyable, so carrying one in a job costs no allocation.
struct SpanContext {
  TraceId trace;
  uint64_t span_id = 0;  // 0: none
  bool sampled = false;
  bool valid() const { return trace.valid() && span_id != 0; }
  friend bool operator==(const SpanContext&, const SpanContext&) = default;
};

// A guest operation is the root of its own trace, so its span id is a function of the
// trace id: whoever sees the trace id (the core placing a job) can name the root as parent
// without being told it.
inline uint64_t root_span_id(const TraceId& t) { return t.low != 0 ? t.low : 1; }

// A span id derived from a parent and a salt (a job id and client, say): stable, so the
// pure upstairs core can name a job's span without a random source. SplitMix64's finaliser.
inline uint64_t derive_span_id(uint64_t parent, uint64_t salt) {
  uint64_t z = parent + 0x9e3779b97f4a7c15ULL * (salt + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return z != 0 ? z : 1;
}

struct Attribute {
  std::string key;
  std::variant<int64_t, std::string, bool> value;
};

struct Event {
  int64_t unix_us = 0;
  std::string name;
};

struct Span {
  TraceId trace;
  uint64_t span_id = 0;
  uint64_t parent_id = 0;  // 0: a root span
  std::string name;
  int64_t start_unix_us = 0;
  int64_t duration_us = 0;
  std::vector<Attribute> attributes;
  std::vector<Event> events;
  bool error = false;  // the operation failed (Jaeger tag error=true, OTLP status ERROR)
};

}  // namespace cru::trace
