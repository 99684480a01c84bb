#include "trace/otlp.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

namespace cru::trace {

namespace {

using nlohmann::json;

// OTLP enums (trace.proto): SPAN_KIND_INTERNAL, STATUS_CODE_ERROR.
constexpr int kSpanKindInternal = 1;
constexpr int kStatusCodeError = 2;

std::string hex(uint64_t v) { return fmt::format("{:016x}", v); }

// 64-bit integers travel as decimal strings in the protobuf JSON mapping.
std::string nanos(int64_t unix_us) { return std::to_string(unix_us * 1000); }

json value(const std::variant<int64_t, std::string, bool>& v) {
  if (const auto* i = std::get_if<int64_t>(&v)) return {{"intValue", std::to_string(*i)}};
  if (const auto* s = std::get_if<std::string>(&v)) return {{"stringValue", *s}};
  return {{"boolValue", std::get<bool>(v)}};
}

json attributes(const std::vector<Attribute>& attrs) {
  json out = json::array();
  for (const Attribute& a : attrs) out.push_back({{"key", a.key}, {"value", value(a.value)}});
  return out;
}

}  // namespace

std::string encode_otlp_json(const std::string& service, std::span<const Span> spans) {
  json list = json::array();
  for (const Span& s : spans) {
    json j = {
        {"traceId", hex(s.trace.high) + hex(s.trace.low)},
        {"spanId", hex(s.span_id)},
        {"name", s.name},
        {"kind", kSpanKindInternal},
        {"startTimeUnixNano", nanos(s.start_unix_us)},
        {"endTimeUnixNano", nanos(s.start_unix_us + s.duration_us)},
        {"attributes", attributes(s.attributes)},
    };
    if (s.parent_id != 0) j["parentSpanId"] = hex(s.parent_id);
    if (!s.events.empty()) {
      json events = json::array();
      for (const Event& e : s.events)
        events.push_back({{"timeUnixNano", nanos(e.unix_us)}, {"name", e.name}});
      j["events"] = std::move(events);
    }
    if (s.error) j["status"] = {{"code", kStatusCodeError}};
    list.push_back(std::move(j));
  }
  json body = {
      {"resourceSpans",
       json::array({{
           {"resource",
            {{"attributes",
              json::array({{{"key", "service.name"}, {"value", {{"stringValue", service}}}}})}}},
           {"scopeSpans", json::array({{{"scope", {{"name", "crucible"}}}, {"spans", list}}})},
       }})},
  };
  return body.dump();
}

}  // namespace cru::trace
