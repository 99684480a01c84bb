// Strong types for the ids and indices the protocol and both sides share, so a JobId can
// never be passed where an ExtentId is expected. Each is a thin wrapper over its wire
// integer: compare, hash and format it, and reach the number with .value.
#pragma once

#include <fmt/format.h>

#include <array>
#include <compare>
#include <cstdint>
#include <functional>

#include "common/assert.h"

namespace cru {

template <typename Tag, typename Int>
struct StrongId {
  using value_type = Int;
  Int value{};

  constexpr StrongId() = default;
  constexpr explicit StrongId(Int v) : value(v) {}
  // NOLINTNEXTLINE(modernize-use-nullptr): clang-tidy 14 misreads a defaulted <=>.
  friend constexpr auto operator<=>(StrongId, StrongId) = default;
  constexpr StrongId next() const { return StrongId(static_cast<Int>(value + 1)); }
};

using JobId = StrongId<struct JobIdTag, uint64_t>;            // one counter for every job
using RepairId = StrongId<struct RepairIdTag, uint64_t>;      // reconciliation steps
using ExtentId = StrongId<struct ExtentIdTag, uint32_t>;      // extent index in a region
using BlockIndex = StrongId<struct BlockIndexTag, uint64_t>;  // absolute block in a region
using Generation = StrongId<struct GenerationTag, uint64_t>;  // upstairs activation number
using FlushNumber = StrongId<struct FlushNumberTag, uint64_t>;

// Jobs start at 1000 as in the original, so that small numbers in logs are never job ids.
inline constexpr JobId kFirstJobId{1000};

// Which of the three downstairs: 0, 1 or 2.
struct ClientId {
  uint8_t value = 0;
  constexpr ClientId() = default;
  constexpr explicit ClientId(uint8_t v) : value(v) {}
  friend constexpr auto operator<=>(ClientId, ClientId) = default;
};
inline constexpr int kClientCount = 3;
inline constexpr std::array<ClientId, kClientCount> kAllClients = {ClientId{0}, ClientId{1},
                                                                   ClientId{2}};

// One value per downstairs, indexed by ClientId.
template <typename T>
class ClientData {
 public:
  ClientData() = default;
  explicit ClientData(const T& v) : slots_{v, v, v} {}
  T& operator[](ClientId c) {
    CRU_ASSERT(c.value < kClientCount);
    return slots_[c.value];
  }
  const T& operator[](ClientId c) const {
    CRU_ASSERT(c.value < kClientCount);
    return slots_[c.value];
  }
  auto begin() { return slots_.begin(); }
  auto end() { return slots_.end(); }
  auto begin() const { return slots_.begin(); }
  auto end() const { return slots_.end(); }

 private:
  std::array<T, kClientCount> slots_{};
};

}  // namespace cru

template <typename Tag, typename Int>
struct std::hash<cru::StrongId<Tag, Int>> {
  size_t operator()(cru::StrongId<Tag, Int> id) const noexcept {
    return std::hash<Int>{}(id.value);
  }
};

template <typename Tag, typename Int>
struct fmt::formatter<cru::StrongId<Tag, Int>> : fmt::formatter<Int> {
  auto format(cru::StrongId<Tag, Int> id, format_context& ctx) const {
    return fmt::formatter<Int>::format(id.value, ctx);
  }
};

template <>
struct fmt::formatter<cru::ClientId> : fmt::formatter<unsigned> {
  auto format(cru::ClientId id, format_context& ctx) const {
    return fmt::formatter<unsigned>::format(id.value, ctx);
  }
};
