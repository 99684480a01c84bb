#include "proto/repair_report.h"

#include <charconv>
#include <string>
#include <string_view>

namespace cru::proto {

namespace {
constexpr std::string_view kTransferredPrefix = "transferred=";
}  // namespace

WireStatus repair_done_status(uint64_t network_bytes) {
  return WireStatus{ErrorCode::kOk,
                    std::string(kTransferredPrefix) + std::to_string(network_bytes)};
}

std::optional<uint64_t> repair_transferred_bytes(const WireStatus& status) {
  if (!status.is_ok()) return std::nullopt;
  std::string_view m = status.message;
  if (!m.starts_with(kTransferredPrefix)) return std::nullopt;
  m.remove_prefix(kTransferredPrefix.size());
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(m.data(), m.data() + m.size(), n);
  if (ec != std::errc{} || end != m.data() + m.size() || m.empty()) return std::nullopt;
  return n;
}

}  // namespace cru::proto
