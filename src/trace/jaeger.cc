#include "trace/jaeger.h"

#include <cstring>

namespace cru::trace {

namespace {

// Thrift compact protocol type ids (TCompactProtocol).
enum CType : uint8_t {
  kTrue = 1,
  kFalse = 2,
  kI32 = 5,
  kI64 = 6,
  kBinary = 8,
  kList = 9,
  kStruct = 12,
};
constexpr uint8_t kProtocolId = 0x82;
constexpr uint8_t kVersion = 1;
constexpr uint8_t kOneway = 4;
// jaeger.thrift enums
constexpr int32_t kTagString = 0;
constexpr int32_t kTagBool = 2;
constexpr int32_t kTagLong = 3;

class Compact {
 public:
  std::vector<uint8_t> out;

  void varint(uint64_t v) {
    while (v >= 0x80) {
      out.push_back(static_cast<uint8_t>(v | 0x80));
      v >>= 7;
    }
    out.push_back(static_cast<uint8_t>(v));
  }
  static uint64_t zigzag(int64_t v) {
    return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63);
  }
  void binary(std::string_view s) {
    varint(s.size());
    out.insert(out.end(), s.begin(), s.end());
  }
  // Field headers carry the id as a delta from the previous field of the struct.
  void field(uint8_t type, int16_t id) {
    int16_t delta = static_cast<int16_t>(id - last_.back());
    if (delta > 0 && delta <= 15) {
      out.push_back(static_cast<uint8_t>(delta << 4 | type));
    } else {
      out.push_back(type);
      varint(zigzag(id));
    }
    last_.back() = id;
  }
  void begin_struct() { last_.push_back(0); }
  void end_struct() {
    out.push_back(0);  // STOP
    last_.pop_back();
  }
  void i64_field(int16_t id, int64_t v) {
    field(kI64, id);
    varint(zigzag(v));
  }
  void i32_field(int16_t id, int32_t v) {
    field(kI32, id);
    varint(zigzag(v));
  }
  void string_field(int16_t id, std::string_view s) {
    field(kBinary, id);
    binary(s);
  }
  void bool_field(int16_t id, bool v) { field(v ? kTrue : kFalse, id); }
  void list_header(uint8_t elem, size_t n) {
    if (n < 15) {
      out.push_back(static_cast<uint8_t>(n << 4 | elem));
    } else {
      out.push_back(static_cast<uint8_t>(0xF0 | elem));
      varint(n);
    }
  }

 private:
  std::vector<int16_t> last_{0};
};

void tag(Compact& c, const std::string& key, const std::variant<int64_t, std::string, bool>& v) {
  c.begin_struct();
  c.string_field(1, key);
  if (const auto* i = std::get_if<int64_t>(&v)) {
    c.i32_field(2, kTagLong);
    c.i64_field(6, *i);
  } else if (const auto* s = std::get_if<std::string>(&v)) {
    c.i32_field(2, kTagString);
    c.string_field(3, *s);
  } else {
    c.i32_field(2, kTagBool);
    c.bool_field(5, std::get<bool>(v));
  }
  c.end_struct();
}

void span(Compact& c, const Span& s) {
  c.begin_struct();
  c.i64_field(1, static_cast<int64_t>(s.trace.low));
  c.i64_field(2, static_cast<int64_t>(s.trace.high));
  c.i64_field(3, static_cast<int64_t>(s.span_id));
  c.i64_field(4, static_cast<int64_t>(s.parent_id));
  c.string_field(5, s.name);
  c.i32_field(7, 1);  // flags: sampled
  c.i64_field(8, s.start_unix_us);
  c.i64_field(9, s.duration_us);
  size_t tags = s.attributes.size() + (s.error ? 1 : 0);
  if (tags > 0) {
    c.field(kList, 10);
    c.list_header(kStruct, tags);
    for (const Attribute& a : s.attributes) tag(c, a.key, a.value);
    if (s.error) tag(c, "error", true);
  }
  if (!s.events.empty()) {
    c.field(kList, 11);
    c.list_header(kStruct, s.events.size());
    for (const Event& e : s.events) {
      c.begin_struct();
      c.i64_field(1, e.unix_us);
      c.field(kList, 2);
      c.list_header(kStruct, 1);
      tag(c, "event", e.name);
      c.end_struct();
    }
  }
  c.end_struct();
}

}  // namespace

std::vector<uint8_t> encode_emit_batch(const std::string& service, std::span<const Span> spans,
                                       int64_t seq_no, const ExportStats& stats) {
  Compact c;
  // Message header: protocol id, version and type, sequence id, method name.
  c.out.push_back(kProtocolId);
  c.out.push_back(static_cast<uint8_t>(kOneway << 5 | kVersion));
  c.varint(0);
  c.binary("emitBatch");
  c.begin_struct();  // emitBatch_args
  c.field(kStruct, 1);
  c.begin_struct();  // Batch
  c.field(kStruct, 1);
  c.begin_struct();  // Process
  c.string_field(1, service);
  c.end_struct();
  c.field(kList, 2);
  c.list_header(kStruct, spans.size());
  for (const Span& s : spans) span(c, s);
  c.i64_field(3, seq_no);
  c.field(kStruct, 4);
  c.begin_struct();  // ClientStats
  c.i64_field(1, static_cast<int64_t>(stats.dropped_queue_full));
  c.i64_field(2, 0);
  c.i64_field(3, static_cast<int64_t>(stats.failed_to_export));
  c.end_struct();
  c.end_struct();  // Batch
  c.end_struct();  // args
  return std::move(c.out);
}

std::vector<std::vector<uint8_t>> encode_emit_batches(const std::string& service,
                                                      std::span<const Span> spans, int64_t& seq_no,
                                                      const ExportStats& stats, size_t max_bytes,
                                                      uint64_t& too_large) {
  std::vector<std::vector<uint8_t>> packets;
  size_t at = 0;
  while (at < spans.size()) {
    size_t n = spans.size() - at;
    for (;;) {
      auto p = encode_emit_batch(service, spans.subspan(at, n), seq_no, stats);
      if (p.size() <= max_bytes) {
        packets.push_back(std::move(p));
        ++seq_no;
        at += n;
        break;
      }
      if (n == 1) {
        ++too_large;
        ++at;
        break;
      }
      n /= 2;
    }
  }
  return packets;
}

}  // namespace cru::trace
