#include "downstairs/request_check.h"

#include <fmt/format.h>

#include "common/address.h"
#include "proto/codec.h"
#include "proto/limits.h"

namespace cru::downstairs {

using namespace cru::proto;

namespace {

Status check_range(const char* what, BlockIndex start, uint64_t count,
                   const RegionDefinition& def) {
  const uint64_t total = def.total_blocks();
  if (count == 0 || start.value >= total || count > total - start.value)
    return fail(ErrorCode::kOffsetInvalid,
                fmt::format("{}: blocks [{}, {}+{}) are outside the region's {} blocks", what,
                            start.value, start.value, count, total));
  return {};
}

// The data of one IO (a write's payload, a read's reply) must fit in one frame.
Status check_io_bytes(const char* what, uint64_t count, const RegionDefinition& def) {
  const uint64_t bytes = count * def.block_size;  // count <= kMaxDiscardBlocks: no overflow
  if (bytes > kMaxIoBytes)
    return fail(ErrorCode::kIoTooLarge,
                fmt::format("{}: {} blocks of {} bytes is {} bytes, over the {}-byte limit of one "
                            "IO; split it",
                            what, count, def.block_size, bytes, kMaxIoBytes));
  return {};
}

Status check_extent(const char* what, ExtentId e, const RegionDefinition& def) {
  if (e.value >= def.extent_count)
    return fail(ErrorCode::kInvalidExtent, fmt::format("{}: extent {} does not exist (the region "
                                                       "has {})",
                                                       what, e, def.extent_count));
  return {};
}

Status check_source(const char* what, const std::string& addr) {
  if (auto a = parse_address(addr); !a)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{}: repair source: {}", what, a.error().message));
  return {};
}

// A job names itself with a non-zero id and waits only for earlier jobs: the upstairs
// numbers jobs from one counter, so a dependency on itself or a later id could never be met.
template <typename T>
Status check_job(const char* what, const T& j) {
  if constexpr (requires { j.deps; }) {
    if (j.job_id.value == 0) return fail(ErrorCode::kProtocol, fmt::format("{}: job id 0", what));
    for (JobId d : j.deps)
      if (d >= j.job_id)
        return fail(
            ErrorCode::kProtocol,
            fmt::format("{} job {}: depends on job {}, which is not earlier", what, j.job_id, d));
  }
  return {};
}

Status check_one(const char* what, const WriteFields& w, const RegionDefinition& def) {
  if (w.block_size != def.block_size)
    return fail(ErrorCode::kBlockSizeMismatch,
                fmt::format("{}: {}-byte blocks, the region has {}-byte blocks", what, w.block_size,
                            def.block_size));
  CRU_TRY(check_range(what, w.start, w.contexts.size(), def));
  return check_io_bytes(what, w.contexts.size(), def);
}
Status check_one(const char* what, const Write& w, const RegionDefinition& def) {
  return check_one(what, static_cast<const WriteFields&>(w), def);
}
Status check_one(const char* what, const WriteUnwritten& w, const RegionDefinition& def) {
  return check_one(what, static_cast<const WriteFields&>(w), def);
}
Status check_one(const char* what, const Read& r, const RegionDefinition& def) {
  CRU_TRY(check_range(what, r.start, r.block_count, def));
  return check_io_bytes(what, r.block_count, def);
}
Status check_one(const char* what, const Discard& d, const RegionDefinition& def) {
  return check_range(what, d.start, d.block_count, def);
}
Status check_one(const char* what, const Flush& f, const RegionDefinition& def) {
  if (f.extent_limit) return check_extent(what, *f.extent_limit, def);
  return {};
}
Status check_one(const char* what, const ExtentRepair& r, const RegionDefinition& def) {
  CRU_TRY(check_extent(what, r.extent, def));
  return check_source(what, r.source_addr);
}
Status check_one(const char* what, const ExtentLiveRepair& r, const RegionDefinition& def) {
  CRU_TRY(check_extent(what, r.extent, def));
  return check_source(what, r.source_addr);
}
template <typename T>
Status check_one(const char* what, const T& m, const RegionDefinition& def) {
  if constexpr (requires { m.extent; }) return check_extent(what, m.extent, def);
  return {};
}

}  // namespace

Status check_request(const Message& m, const RegionDefinition& def) {
  // The shell hands over decoded frames, which passed this already; checked again so that
  // no message, however it was built, reaches the region unchecked.
  CRU_TRY(validate(m));
  return std::visit(
      [&](const auto& v) -> Status {
        using T = std::decay_t<decltype(v)>;
        const char* what = tag_name(T::kTag).data();
        CRU_TRY(check_job(what, v));
        return check_one(what, v, def);
      },
      m);
}

std::optional<Message> error_reply(const Message& m, const Error& error) {
  WireStatus st = WireStatus::from(error);
  return std::visit(
      [&](const auto& v) -> std::optional<Message> {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, Read>) {
          return ReadResponse{v.job_id, st, 0, {}, {}};
        } else if constexpr (std::is_same_v<T, ExtentLiveClose> ||
                             std::is_same_v<T, ExtentLiveFlushClose>) {
          return ExtentLiveCloseAck{v.job_id, st, {}};
        } else if constexpr (requires { v.deps; }) {
          return Ack{v.job_id, st};
        } else if constexpr (requires { v.repair_id; } && !std::is_same_v<T, RepairAck>) {
          return RepairAck{v.repair_id, st};
        } else {
          return std::nullopt;
        }
      },
      m);
}

}  // namespace cru::downstairs
