#include "proto/codec.h"

#include <fmt/format.h>

#include <cstring>
#include <type_traits>

namespace cru::proto {

namespace {

// ---- field encoding ------------------------------------------------------------------

template <typename T>
concept HasFields = requires(T t) {
  t.fields();
};

template <typename T>
struct IsOptional : std::false_type {};
template <typename T>
struct IsOptional<std::optional<T>> : std::true_type {};
template <typename T>
struct IsVector : std::false_type {};
template <typename T>
struct IsVector<std::vector<T>> : std::true_type {};
template <typename T>
struct IsByteArray : std::false_type {};
template <size_t N>
struct IsByteArray<std::array<uint8_t, N>> : std::true_type {};
template <typename T>
struct IsStrongId : std::false_type {};
template <typename Tag, typename Int>
struct IsStrongId<StrongId<Tag, Int>> : std::true_type {};

class Writer {
 public:
  explicit Writer(std::vector<std::byte>& out) : out_(out) {}

  template <typename Int>
  requires std::is_integral_v<Int>
  void integer(Int v) {
    using U = std::make_unsigned_t<Int>;
    auto u = static_cast<U>(v);
    for (size_t i = 0; i < sizeof(U); ++i) out_.push_back(static_cast<std::byte>(u >> (8 * i)));
  }
  void raw(std::span<const std::byte> bytes) {
    out_.insert(out_.end(), bytes.begin(), bytes.end());
  }

  template <typename T>
  void put(const T& v) {
    if constexpr (std::is_same_v<T, bool>) {
      integer<uint8_t>(v ? 1 : 0);
    } else if constexpr (std::is_integral_v<T>) {
      integer(v);
    } else if constexpr (std::is_enum_v<T>) {
      integer(static_cast<std::underlying_type_t<T>>(v));
    } else if constexpr (IsStrongId<T>::value) {
      integer(v.value);
    } else if constexpr (std::is_same_v<T, ClientId>) {
      integer(v.value);
    } else if constexpr (std::is_same_v<T, Uuid>) {
      raw(std::as_bytes(std::span(v.bytes)));
    } else if constexpr (IsByteArray<T>::value) {
      raw(std::as_bytes(std::span(v)));
    } else if constexpr (std::is_same_v<T, std::string>) {
      integer(static_cast<uint32_t>(v.size()));
      raw(as_bytes(v));
    } else if constexpr (IsOptional<T>::value) {
      integer<uint8_t>(v.has_value() ? 1 : 0);
      if (v) put(*v);
    } else if constexpr (IsVector<T>::value) {
      integer(static_cast<uint32_t>(v.size()));
      for (const auto& e : v) put(e);
    } else if constexpr (HasFields<T>) {
      std::apply([this](const auto&... f) { (put(f), ...); }, v.fields());
    } else {
      static_assert(sizeof(T) == 0, "no wire encoding for this type");
    }
  }

 private:
  std::vector<std::byte>& out_;
};

// The fewest bytes one encoded T can take: bounds a vector's count before allocating.
template <typename T>
constexpr size_t min_wire_bytes() {
  if constexpr (std::is_same_v<T, bool>) {
    return 1;
  } else if constexpr (std::is_integral_v<T>) {
    return sizeof(T);
  } else if constexpr (std::is_enum_v<T>) {
    return sizeof(std::underlying_type_t<T>);
  } else if constexpr (IsStrongId<T>::value) {
    return sizeof(typename T::value_type);
  } else if constexpr (std::is_same_v<T, ClientId>) {
    return 1;
  } else if constexpr (std::is_same_v<T, Uuid>) {
    return 16;
  } else if constexpr (IsByteArray<T>::value) {
    return std::tuple_size_v<T>;
  } else if constexpr (IsOptional<T>::value) {
    return 1;
  } else if constexpr (std::is_same_v<T, std::string> || IsVector<T>::value) {
    return 4;
  } else if constexpr (HasFields<T>) {
    using Tuple = decltype(std::declval<T&>().fields());
    return []<size_t... I>(std::index_sequence<I...>) {
      return (size_t{0} + ... +
              min_wire_bytes<std::remove_cvref_t<std::tuple_element_t<I, Tuple>>>());
    }
    (std::make_index_sequence<std::tuple_size_v<Tuple>>{});
  } else {
    static_assert(sizeof(T) == 0, "no wire encoding for this type");
  }
}

class Reader {
 public:
  Reader(std::span<const std::byte> in, std::string_view context) : in_(in), context_(context) {}

  size_t remaining() const { return in_.size() - pos_; }

  Status error(std::string what) const {
    return fail(ErrorCode::kProtocol, fmt::format("{}: {}", context_, what));
  }

  template <typename Int>
  Status integer(Int& out) {
    using U = std::make_unsigned_t<Int>;
    if (remaining() < sizeof(U))
      return error(fmt::format("truncated: needs {} more bytes, {} left", sizeof(U), remaining()));
    U u = 0;
    for (size_t i = 0; i < sizeof(U); ++i)
      u = static_cast<U>(u | static_cast<U>(std::to_integer<uint8_t>(in_[pos_ + i])) << (8 * i));
    pos_ += sizeof(U);
    out = static_cast<Int>(u);
    return {};
  }

  Status raw(std::span<std::byte> out) {
    if (remaining() < out.size())
      return error(fmt::format("truncated: needs {} more bytes, {} left", out.size(), remaining()));
    std::memcpy(out.data(), in_.data() + pos_, out.size());
    pos_ += out.size();
    return {};
  }

  template <typename T>
  Status get(T& v) {
    if constexpr (std::is_same_v<T, bool>) {
      uint8_t b = 0;
      CRU_TRY(integer(b));
      if (b > 1) return error(fmt::format("boolean byte is {}, not 0 or 1", b));
      v = b == 1;
    } else if constexpr (std::is_integral_v<T>) {
      CRU_TRY(integer(v));
    } else if constexpr (std::is_same_v<T, ErrorCode>) {
      uint16_t c = 0;
      CRU_TRY(integer(c));
      if (c > kErrorCodeMax) return error(fmt::format("unknown error code {}", c));
      v = static_cast<ErrorCode>(c);
    } else if constexpr (IsStrongId<T>::value) {
      CRU_TRY(integer(v.value));
    } else if constexpr (std::is_same_v<T, ClientId>) {
      CRU_TRY(integer(v.value));
      if (v.value >= kClientCount)
        return error(fmt::format("client id {} is not 0, 1 or 2", v.value));
    } else if constexpr (std::is_same_v<T, Uuid>) {
      CRU_TRY(raw(std::as_writable_bytes(std::span(v.bytes))));
    } else if constexpr (IsByteArray<T>::value) {
      CRU_TRY(raw(std::as_writable_bytes(std::span(v))));
    } else if constexpr (std::is_same_v<T, std::string>) {
      uint32_t n = 0;
      CRU_TRY(integer(n));
      if (n > kMaxStringBytes)
        return error(fmt::format("string of {} bytes exceeds the limit {}", n, kMaxStringBytes));
      if (n > remaining())
        return error(fmt::format("string of {} bytes but only {} left", n, remaining()));
      v.assign(reinterpret_cast<const char*>(in_.data() + pos_), n);
      pos_ += n;
    } else if constexpr (IsOptional<T>::value) {
      bool present = false;
      CRU_TRY(get(present));
      v.reset();
      if (present) CRU_TRY(get(v.emplace()));
    } else if constexpr (IsVector<T>::value) {
      uint32_t n = 0;
      CRU_TRY(integer(n));
      if (n > kMaxVectorElements)
        return error(
            fmt::format("vector of {} elements exceeds the limit {}", n, kMaxVectorElements));
      constexpr size_t kMin = min_wire_bytes<typename T::value_type>();
      // Refuse before allocating: n elements cannot fit in fewer than n * kMin bytes.
      if (static_cast<uint64_t>(n) * kMin > remaining())
        return error(fmt::format("vector of {} elements needs at least {} bytes but only {} left",
                                 n, static_cast<uint64_t>(n) * kMin, remaining()));
      v.clear();
      v.resize(n);
      for (auto& e : v) CRU_TRY(get(e));
    } else if constexpr (HasFields<T>) {
      return std::apply(
          [this](auto&... f) -> Status {
            Status s;
            static_cast<void>(((s = get(f), s.has_value()) && ...));
            return s;
          },
          v.fields());
    } else {
      static_assert(sizeof(T) == 0, "no wire encoding for this type");
    }
    return {};
  }

 private:
  std::span<const std::byte> in_;
  size_t pos_ = 0;
  std::string_view context_;
};

// ---- tag <-> type --------------------------------------------------------------------

template <size_t I = 0>
Result<Message> make_for_tag(uint32_t tag) {
  if constexpr (I == std::variant_size_v<Message>) {
    return fail(ErrorCode::kProtocol, fmt::format("unknown message tag {}", tag));
  } else {
    using T = std::variant_alternative_t<I, Message>;
    if (static_cast<uint32_t>(T::kTag) == tag) return Message(std::in_place_index<I>);
    return make_for_tag<I + 1>(tag);
  }
}

bool tag_has_data(const Message& m) {
  return std::visit([](const auto& v) { return HasData<std::decay_t<decltype(v)>>; }, m);
}

// ---- semantic limits -------------------------------------------------------------------

Status bad(const char* name, std::string what) {
  return fail(ErrorCode::kProtocol, fmt::format("{}: {}", name, what));
}

template <typename T>
Status check_deps(const char* name, const T& m) {
  if constexpr (requires { m.deps; }) {
    if (m.deps.size() > kMaxDependencies)
      return bad(name, fmt::format("{} dependencies exceed the limit {}", m.deps.size(),
                                   kMaxDependencies));
  }
  return {};
}

// A trace context names a real trace and span, with only the flags this version knows.
template <typename T>
Status check_trace(const char* name, const T& m) {
  if constexpr (requires { m.trace; }) {
    if (!m.trace) return {};
    const TraceContext& t = *m.trace;
    if (t.trace_id_high == 0 && t.trace_id_low == 0) return bad(name, "trace id is zero");
    if (t.parent_span_id == 0) return bad(name, "trace parent span id is zero");
    if (t.flags != TraceContext::kSampled)
      return bad(name, fmt::format("trace flags {:#x} are not {:#x} (sampled)", t.flags,
                                   TraceContext::kSampled));
  }
  return {};
}

Status check_blocks(const char* name, uint64_t count, uint64_t max) {
  if (count == 0) return bad(name, "zero blocks");
  if (count > max) return bad(name, fmt::format("{} blocks exceed the limit {}", count, max));
  return {};
}

Status check_data(const char* name, uint32_t block_size, size_t contexts, size_t data_bytes) {
  if (!valid_block_size(block_size))
    return bad(name, fmt::format("block size {} is not a power of two in [{}, {}]", block_size,
                                 kMinBlockSize, kMaxBlockSize));
  if (data_bytes % block_size != 0)
    return bad(name, fmt::format("data of {} bytes is not a multiple of the block size {}",
                                 data_bytes, block_size));
  if (data_bytes / block_size != contexts)
    return bad(name,
               fmt::format("{} contexts but {} blocks of data", contexts, data_bytes / block_size));
  return {};
}

Status validate_one(const WriteFields& m, const char* name) {
  CRU_TRY(check_blocks(name, m.contexts.size(), kMaxIoBlocks));
  return check_data(name, m.block_size, m.contexts.size(), m.data.size());
}
Status validate_one(const Write& m, const char* name) {
  return validate_one(static_cast<const WriteFields&>(m), name);
}
Status validate_one(const WriteUnwritten& m, const char* name) {
  return validate_one(static_cast<const WriteFields&>(m), name);
}
Status validate_one(const Read& m, const char* name) {
  return check_blocks(name, m.block_count, kMaxIoBlocks);
}
Status validate_one(const Discard& m, const char* name) {
  return check_blocks(name, m.block_count, kMaxDiscardBlocks);
}
Status validate_one(const ReadResponse& m, const char* name) {
  if (!m.status.is_ok()) {
    if (!m.contexts.empty() || !m.data.empty())
      return bad(name, "an error response carries contexts or data");
    return {};
  }
  CRU_TRY(check_blocks(name, m.contexts.size(), kMaxIoBlocks));
  return check_data(name, m.block_size, m.contexts.size(), m.data.size());
}
Status validate_one(const ExtentVersions& m, const char* name) {
  if (m.extents.size() > kMaxExtents)
    return bad(name, fmt::format("{} extents exceed the limit {}", m.extents.size(), kMaxExtents));
  return {};
}
Status validate_one(const ExtentRepair& m, const char* name) {
  if (m.dests.empty() || m.dests.size() >= kClientCount)
    return bad(name, fmt::format("{} destinations (expected 1 or 2)", m.dests.size()));
  for (auto d : m.dests)
    if (d == m.source) return bad(name, "the source is also a destination");
  return {};
}
Status validate_one(const ExtentChunk& m, const char* name) {
  if (m.data.size() > kRepairChunkBytes)
    return bad(name, fmt::format("chunk of {} bytes exceeds the limit {}", m.data.size(),
                                 kRepairChunkBytes));
  if (m.unchanged && !m.data.empty()) return bad(name, "an unchanged chunk carries data");
  return {};
}
template <typename T>
Status validate_one(const T&, const char*) {
  return {};
}

// Whether a T can contain a string or a client id, the field-level checks below.
template <typename T>
constexpr bool has_checked_fields() {
  if constexpr (std::is_same_v<T, std::string> || std::is_same_v<T, ClientId>) {
    return true;
  } else if constexpr (IsOptional<T>::value || IsVector<T>::value) {
    return has_checked_fields<typename T::value_type>();
  } else if constexpr (HasFields<T>) {
    using Tuple = decltype(std::declval<T&>().fields());
    return []<size_t... I>(std::index_sequence<I...>) {
      return (false || ... ||
              has_checked_fields<std::remove_cvref_t<std::tuple_element_t<I, Tuple>>>());
    }
    (std::make_index_sequence<std::tuple_size_v<Tuple>>{});
  } else {
    return false;
  }
}

// What the decoder checks field by field (string lengths, client ids), checked on the
// sending side too so encode() never produces a frame the peer must refuse.
template <typename T>
Status check_fields(const char* name, const T& v) {
  if constexpr (std::is_same_v<T, std::string>) {
    if (v.size() > kMaxStringBytes)
      return bad(name,
                 fmt::format("string of {} bytes exceeds the limit {}", v.size(), kMaxStringBytes));
  } else if constexpr (std::is_same_v<T, ClientId>) {
    if (v.value >= kClientCount)
      return bad(name, fmt::format("client id {} is not 0, 1 or 2", v.value));
  } else if constexpr (IsOptional<T>::value) {
    if (v) return check_fields(name, *v);
  } else if constexpr (IsVector<T>::value) {
    if (v.size() > kMaxVectorElements)
      return bad(name, fmt::format("vector of {} elements exceeds the limit {}", v.size(),
                                   kMaxVectorElements));
    // Block contexts and extent versions hold nothing to check: skip the walk.
    if constexpr (has_checked_fields<typename T::value_type>())
      for (const auto& e : v) CRU_TRY(check_fields(name, e));
  } else if constexpr (HasFields<T>) {
    return std::apply(
        [name](const auto&... f) -> Status {
          Status s;
          static_cast<void>(((s = check_fields(name, f), s.has_value()) && ...));
          return s;
        },
        v.fields());
  }
  return {};
}

Status validate_impl(const Message& m) {
  return std::visit(
      [](const auto& v) -> Status {
        using T = std::decay_t<decltype(v)>;
        const char* name = tag_name(T::kTag).data();
        CRU_TRY(check_deps(name, v));
        CRU_TRY(check_trace(name, v));
        CRU_TRY(validate_one(v, name));
        return check_fields(name, v);
      },
      m);
}

}  // namespace

// ---- public --------------------------------------------------------------------------

EncodedFrame encode(const Message& m) {
  CRU_ASSERT(validate_impl(m).has_value(), "encoding a message that breaks a protocol limit");
  EncodedFrame f;
  f.head.reserve(64);
  Writer w(f.head);
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        w.integer<uint32_t>(0);  // frame length, patched below
        w.integer(static_cast<uint32_t>(T::kTag));
        w.integer<uint32_t>(0);  // metadata length, patched below
        w.put(v);
        if constexpr (HasData<T>) f.data = v.data;
      },
      m);
  uint64_t meta = f.head.size() - kFrameHeaderBytes;
  uint64_t total = f.size();
  CRU_ASSERT(meta <= kMaxMetaBytes && total <= kMaxFrameBytes);
  auto patch = [&](size_t at, uint32_t v) {
    for (size_t i = 0; i < 4; ++i) f.head[at + i] = static_cast<std::byte>(v >> (8 * i));
  };
  patch(0, static_cast<uint32_t>(total));
  patch(8, static_cast<uint32_t>(meta));
  return f;
}

std::vector<std::byte> encode_flat(const Message& m) {
  EncodedFrame f = encode(m);
  std::vector<std::byte> out = std::move(f.head);
  out.insert(out.end(), f.data.span().begin(), f.data.span().end());
  return out;
}

Result<FrameHeader> parse_header(std::span<const std::byte, kFrameHeaderBytes> bytes) {
  FrameHeader h;
  Reader r(bytes, "frame header");
  CRU_TRY(r.integer(h.frame_bytes));
  CRU_TRY(r.integer(h.tag));
  CRU_TRY(r.integer(h.meta_bytes));
  if (h.frame_bytes < kFrameHeaderBytes)
    return fail(ErrorCode::kProtocol,
                fmt::format("frame length {} is shorter than the {}-byte header", h.frame_bytes,
                            kFrameHeaderBytes));
  if (h.frame_bytes > kMaxFrameBytes)
    return fail(ErrorCode::kProtocol,
                fmt::format("frame length {} exceeds the limit {}", h.frame_bytes, kMaxFrameBytes));
  if (h.meta_bytes > h.frame_bytes - kFrameHeaderBytes)
    return fail(ErrorCode::kProtocol, fmt::format("metadata length {} exceeds the frame's {} bytes",
                                                  h.meta_bytes, h.frame_bytes - kFrameHeaderBytes));
  if (h.meta_bytes > kMaxMetaBytes)
    return fail(ErrorCode::kProtocol, fmt::format("metadata length {} exceeds the limit {}",
                                                  h.meta_bytes, kMaxMetaBytes));
  CRU_TRY_ASSIGN(const Message probe, make_for_tag(h.tag));
  if (!tag_has_data(probe) && h.data_bytes() != 0)
    return fail(ErrorCode::kProtocol,
                fmt::format("{}: {} trailing bytes after the message",
                            tag_name(static_cast<Tag>(h.tag)), h.data_bytes()));
  return h;
}

Result<Message> decode(const FrameHeader& header, std::span<const std::byte> meta, Bytes data) {
  CRU_ASSERT(meta.size() == header.meta_bytes && data.size() == header.data_bytes());
  auto msg = make_for_tag(header.tag);
  if (!msg) return msg;
  Status s = std::visit(
      [&](auto& v) -> Status {
        using T = std::decay_t<decltype(v)>;
        Reader r(meta, tag_name(T::kTag));
        CRU_TRY(r.get(v));
        if (r.remaining() != 0) return r.error(fmt::format("{} trailing bytes", r.remaining()));
        if constexpr (HasData<T>) {
          v.data = std::move(data);
        } else {
          if (!data.empty()) return r.error(fmt::format("{} trailing bytes", data.size()));
        }
        return {};
      },
      *msg);
  CRU_TRY(s);
  CRU_TRY(validate_impl(*msg));
  return msg;
}

Result<Message> decode_frame(std::span<const std::byte> frame) {
  if (frame.size() < kFrameHeaderBytes)
    return fail(ErrorCode::kProtocol,
                fmt::format("truncated frame: {} bytes, the header alone is {}", frame.size(),
                            kFrameHeaderBytes));
  CRU_TRY_ASSIGN(const FrameHeader h, parse_header(frame.first<kFrameHeaderBytes>()));
  if (frame.size() != h.frame_bytes)
    return fail(ErrorCode::kProtocol,
                fmt::format("{} frame: header says {} bytes, buffer holds {}",
                            frame.size() < h.frame_bytes ? "truncated" : "oversized", h.frame_bytes,
                            frame.size()));
  auto meta = frame.subspan(kFrameHeaderBytes, h.meta_bytes);
  auto data = Bytes::copy_of(frame.subspan(kFrameHeaderBytes + h.meta_bytes));
  return decode(h, meta, std::move(data));
}

Status validate(const Message& m) { return validate_impl(m); }

Status check_region(const RegionDefinition& def) {
  const char* name = "RegionInfo";
  if (!valid_block_size(def.block_size))
    return bad(name, fmt::format("block size {} is not a power of two in [{}, {}]", def.block_size,
                                 kMinBlockSize, kMaxBlockSize));
  if (def.extent_size == 0 || def.extent_size > kMaxExtentBytes / def.block_size)
    return bad(name, fmt::format("extent size {} blocks of {} bytes is not 1 to {} bytes",
                                 def.extent_size, def.block_size, kMaxExtentBytes));
  if (def.extent_count == 0 || def.extent_count > kMaxExtents)
    return bad(name, fmt::format("extent count {} is not 1 to {}", def.extent_count, kMaxExtents));
  return {};
}

Status check_version(uint32_t peer_version) {
  if (peer_version == kProtocolVersion) return {};
  return fail(ErrorCode::kVersionMismatch,
              fmt::format("peer speaks protocol version {}, this build speaks version {}",
                          peer_version, kProtocolVersion));
}

}  // namespace cru::proto
