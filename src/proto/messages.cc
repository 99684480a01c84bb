#include "proto/messages.h"

#include <fmt/format.h>

namespace cru::proto {

Tag tag_of(const Message& m) {
  return std::visit([](const auto& v) { return std::decay_t<decltype(v)>::kTag; }, m);
}

std::string_view tag_name(Tag tag) {
  switch (tag) {
    case Tag::kHereIAm:
      return "HereIAm";
    case Tag::kYesItsMe:
      return "YesItsMe";
    case Tag::kVersionMismatch:
      return "VersionMismatch";
    case Tag::kReadOnlyMismatch:
      return "ReadOnlyMismatch";
    case Tag::kEncryptedMismatch:
      return "EncryptedMismatch";
    case Tag::kPromoteToActive:
      return "PromoteToActive";
    case Tag::kYouAreNowActive:
      return "YouAreNowActive";
    case Tag::kYouAreNoLongerActive:
      return "YouAreNoLongerActive";
    case Tag::kUuidMismatch:
      return "UuidMismatch";
    case Tag::kRegionInfoPlease:
      return "RegionInfoPlease";
    case Tag::kRegionInfo:
      return "RegionInfo";
    case Tag::kExtentVersionsPlease:
      return "ExtentVersionsPlease";
    case Tag::kExtentVersions:
      return "ExtentVersions";
    case Tag::kLastFlush:
      return "LastFlush";
    case Tag::kWrite:
      return "Write";
    case Tag::kWriteUnwritten:
      return "WriteUnwritten";
    case Tag::kRead:
      return "Read";
    case Tag::kReadResponse:
      return "ReadResponse";
    case Tag::kDiscard:
      return "Discard";
    case Tag::kFlush:
      return "Flush";
    case Tag::kBarrier:
      return "Barrier";
    case Tag::kAck:
      return "Ack";
    case Tag::kExtentFlush:
      return "ExtentFlush";
    case Tag::kExtentClose:
      return "ExtentClose";
    case Tag::kExtentRepair:
      return "ExtentRepair";
    case Tag::kExtentReopen:
      return "ExtentReopen";
    case Tag::kRepairAck:
      return "RepairAck";
    case Tag::kExtentLiveClose:
      return "ExtentLiveClose";
    case Tag::kExtentLiveFlushClose:
      return "ExtentLiveFlushClose";
    case Tag::kExtentLiveRepair:
      return "ExtentLiveRepair";
    case Tag::kExtentLiveReopen:
      return "ExtentLiveReopen";
    case Tag::kExtentLiveNoOp:
      return "ExtentLiveNoOp";
    case Tag::kExtentLiveCloseAck:
      return "ExtentLiveCloseAck";
    case Tag::kRepairHello:
      return "RepairHello";
    case Tag::kExtentFetch:
      return "ExtentFetch";
    case Tag::kExtentChunk:
      return "ExtentChunk";
    case Tag::kExtentFetchDone:
      return "ExtentFetchDone";
    case Tag::kRuok:
      return "Ruok";
    case Tag::kImok:
      return "Imok";
    case Tag::kErrorReport:
      return "ErrorReport";
  }
  return "Unknown";
}

std::string describe(const Message& m) {
  return std::visit(
      [](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        std::string s(tag_name(T::kTag));
        if constexpr (requires { v.job_id; }) s += fmt::format(" job {}", v.job_id);
        if constexpr (requires { v.repair_id; }) s += fmt::format(" repair {}", v.repair_id);
        if constexpr (requires { v.extent; }) s += fmt::format(" extent {}", v.extent);
        if constexpr (requires { v.start; }) s += fmt::format(" at block {}", v.start);
        if constexpr (requires { v.contexts; }) s += fmt::format(" ({} blocks)", v.contexts.size());
        if constexpr (requires { v.block_count; }) s += fmt::format(" ({} blocks)", v.block_count);
        if constexpr (requires { v.status; }) {
          if (!v.status.is_ok())
            s += fmt::format(": {}", Error{v.status.code, v.status.message}.to_string());
        }
        return s;
      },
      m);
}

}  // namespace cru::proto
