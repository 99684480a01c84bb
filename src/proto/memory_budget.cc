#include "proto/memory_budget.h"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "common/assert.h"
#include "common/units.h"
#include "proto/limits.h"

namespace cru::proto {

MemoryBudget::MemoryBudget(Limits limits) : limits_(limits) {
  CRU_ASSERT(limits_.peer_bytes >= kMaxFrameBytes && limits_.peer_bytes <= limits_.total_bytes / 2);
}

void MemoryBudget::update(uint64_t before, uint64_t after, bool guaranteed) {
  CRU_ASSERT(held_ >= before, "a connection releases more than it held");
  held_ = held_ - before + after;
  if (guaranteed) {
    CRU_ASSERT(held_guaranteed_ >= before, "the guaranteed connection releases more than it held");
    held_guaranteed_ = held_guaranteed_ - before + after;
  }
  peak_ = std::max(peak_, held_);
  if (after >= before || waiters_.empty()) return;
  // Every waiter checks again; one that is still over waits anew.
  auto waiters = std::exchange(waiters_, {});
  for (auto& [id, wake] : waiters) wake();
}

std::optional<MemoryBudget::Over> MemoryBudget::over(const Held& held, bool guaranteed,
                                                     uint64_t frame_bytes_max) const {
  if (held.sum() + frame_bytes_max <= kAlwaysReadableBytes) return std::nullopt;
  if (held.sum() >= limits_.peer_bytes)
    return Over{
        true,
        fmt::format(
            "this peer holds {} (reading {}, outbox {}, jobs {}), its budget is {} (peer memory "
            "budget)",
            format_size(held.sum()), format_size(held.reading), format_size(held.outbox),
            format_size(held.owner), format_size(limits_.peer_bytes))};
  if (guaranteed && held_ >= limits_.total_bytes)
    return Over{false, fmt::format("all peers hold {}, the memory budget is {}", format_size(held_),
                                   format_size(limits_.total_bytes))};
  const uint64_t others = held_ - held_guaranteed_;
  const uint64_t others_max = limits_.total_bytes - limits_.peer_bytes;
  if (!guaranteed && others >= others_max)
    return Over{false, fmt::format("peers other than the active upstairs hold {}, they may hold {} "
                                   "(the memory budget {} less one peer budget kept for the active "
                                   "upstairs)",
                                   format_size(others), format_size(others_max),
                                   format_size(limits_.total_bytes))};
  return std::nullopt;
}

MemoryBudget::WaiterId MemoryBudget::wait(std::function<void()> wake) {
  WaiterId id = next_waiter_++;
  waiters_.emplace(id, std::move(wake));
  return id;
}

void MemoryBudget::cancel(WaiterId id) { waiters_.erase(id); }

}  // namespace cru::proto
