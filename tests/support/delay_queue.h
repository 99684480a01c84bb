// The pure part of the delaying TCP proxy (delay_proxy.h): the bytes of one direction of
// one connection, waiting for their release time. No clock, no sockets: the caller passes
// `now` and asks what is due. Owned by the proxy's io thread.
//
// TCP delivers a stream in order, so a chunk is never released before one queued earlier:
// its release time is max(arrival + a delay drawn from [delay - jitter, delay + jitter],
// the previous chunk's). The queue holds at most `bytes_max`; a reader asks space() first
// and reads no more than that, so a slow receiver stops the sender (backpressure) instead
// of growing the queue.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <random>
#include <vector>

namespace cru::test {

class DelayQueue {
 public:
  using Clock = std::chrono::steady_clock;
  using TimePoint = Clock::time_point;
  using Micros = std::chrono::microseconds;

  struct Chunk {
    std::vector<std::byte> bytes;
    TimePoint due;
  };

  // bytes_max > 0. jitter <= delay (a negative delay would be a bug in the caller).
  DelayQueue(size_t bytes_max, Micros delay, Micros jitter, uint64_t seed);

  // How many bytes may be pushed now.
  size_t space() const { return bytes_max_ - bytes_; }
  // Queues `bytes` (non-empty, at most space()) that arrived at `now`; returns its due time.
  // With the delay off the chunk is due at once (still after those queued before it).
  TimePoint push(std::vector<std::byte> bytes, TimePoint now, bool delay_on = true);
  bool empty() const { return chunks_.empty(); }
  const Chunk& front() const { return chunks_.front(); }
  // Whether the front chunk may be sent at `now`.
  bool front_due(TimePoint now) const { return !empty() && front().due <= now; }
  void pop();
  size_t bytes() const { return bytes_; }
  // The most bytes ever held at once (never above bytes_max).
  size_t bytes_high_water() const { return high_water_; }

 private:
  Micros draw_delay();

  size_t bytes_max_;
  Micros delay_, jitter_;
  std::mt19937_64 rng_;
  std::deque<Chunk> chunks_;
  size_t bytes_ = 0;
  size_t high_water_ = 0;
  TimePoint last_due_{};
};

}  // namespace cru::test
