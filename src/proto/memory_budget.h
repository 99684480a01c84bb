// Bytes held on behalf of peers, per connection and in total, and the connections waiting
// for memory before they read more. One per server (the downstairs), shared by its
// connections; pure bookkeeping (no asio), used from the io thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "common/units.h"

namespace cru::proto {

// What a connection may hold, its next frame included, and still read whatever the others
// hold: a negotiating connection (16 KiB frames, an 8 KiB staging buffer, a few replies).
inline constexpr uint64_t kAlwaysReadableBytes = 64 * kKiB;

class MemoryBudget {
 public:
  struct Limits {
    // Everything held for all peers together.
    uint64_t total_bytes = 0;
    // Everything held for one peer. At least one frame (kMaxFrameBytes), so any frame a
    // peer may send can be taken once the peer is otherwise idle; at most total_bytes / 2,
    // so the total can keep one peer's share for the guaranteed peer.
    uint64_t peer_bytes = 0;
  };
  // What one connection holds, by where it is held.
  struct Held {
    uint64_t reading = 0;  // staging buffer and the frame being received
    uint64_t outbox = 0;   // frames queued or being written
    uint64_t owner = 0;    // the owner's (e.g. the core's pending jobs and completed set)
    uint64_t sum() const { return reading + outbox + owner; }
  };
  struct Over {
    bool own = false;  // the peer's own use is over its budget (not only the total)
    std::string why;   // names the limit and the figures
  };
  using WaiterId = uint64_t;

  // Precondition: limits as documented above (callers validate flags first).
  explicit MemoryBudget(Limits limits);

  const Limits& limits() const { return limits_; }
  uint64_t held_bytes() const { return held_; }
  // The most held at once so far.
  uint64_t peak_bytes() const { return peak_; }

  // One connection's holding went from `before` to `after` bytes; `guaranteed` says which
  // pool it is counted in (the guaranteed connection's or the others'). Wakes every waiter
  // when memory was freed, so each can check again.
  void update(uint64_t before, uint64_t after, bool guaranteed = false);

  // Why a connection holding `held` whose next frame may be `frame_bytes_max` long must
  // not read more now, or nullopt if it may. The others together may hold the total less
  // one peer's budget, so they can never starve the guaranteed connection (the active
  // upstairs); it is checked against the total. One that holds little and may only send
  // small frames (still negotiating) is checked against nothing: the real upstairs must
  // always be able to negotiate, and the connection limit bounds what those hold.
  std::optional<Over> over(const Held& held, bool guaranteed, uint64_t frame_bytes_max) const;

  // `wake` runs (once) at the next update() that frees memory, unless cancelled first.
  WaiterId wait(std::function<void()> wake);
  void cancel(WaiterId id);

 private:
  Limits limits_;
  uint64_t held_ = 0;
  uint64_t held_guaranteed_ = 0;  // the part of held_ the guaranteed connection holds
  uint64_t peak_ = 0;
  WaiterId next_waiter_ = 1;
  std::map<WaiterId, std::function<void()>> waiters_;
};

}  // namespace cru::proto
