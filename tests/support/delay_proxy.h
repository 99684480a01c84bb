// A delaying TCP proxy for tests and benchmarks: the kernel here has no netem, so added
// latency comes from this. Every accepted connection is forwarded to one target; each
// direction holds what it read in a bounded DelayQueue (delay_queue.h) until its release
// time, so bytes arrive intact, in order, late by the one-way delay (with jitter), and a
// receiver that stops reading stops the sender. A half-close (EOF) is passed on after the
// queued bytes; an error or reset on either side closes both with a reset.
// The proxy runs on an io thread of its own; its public methods may be called from any
// one other thread (the test's). tests/tools/delay_proxy.cc wraps it as a program.
//
//   auto p = DelayProxy::start({.target_port = 9000});  // 127.0.0.1:p->port() -> :9000
//   p->set_delay_on(false);                              // forward without delay
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/result.h"
#include "common/units.h"

namespace cru::test {

struct DelayProxyOptions {
  std::string listen_address = "127.0.0.1";  // numeric IPv4 or IPv6
  uint16_t listen_port = 0;                  // 0: any free port
  std::string target_address = "127.0.0.1";
  uint16_t target_port = 0;
  // Added to each direction: 500 us each way is a 1 ms round trip.
  std::chrono::microseconds one_way_delay{500};
  std::chrono::microseconds jitter{100};  // at most one_way_delay
  bool delay_on = true;
  // Per direction of one connection: a few frames of the largest IO in flight, so the
  // proxy does not throttle a pipelined stream, and bounded so a stuck receiver costs
  // at most this much memory.
  size_t queue_bytes_max = 8 * kMiB;
  // Connections open at once; a further one is refused (closed at once).
  size_t connections_max = 64;
  // Giving up on the target; the client's connection is then reset.
  std::chrono::milliseconds connect_timeout{10000};
  uint64_t seed = 1;  // the jitter's random sequence
};

struct DelayProxyStats {
  uint64_t accepted = 0;  // connections forwarded to the target
  uint64_t refused = 0;   // over connections_max, or the target did not answer
  uint64_t bytes_to_target = 0;
  uint64_t bytes_from_target = 0;
  size_t queue_high_water = 0;  // most bytes one direction ever held
  size_t open = 0;              // connections open now
};

class DelayProxy {
 public:
  // Binds and starts forwarding. Errors: the listen address does not parse or cannot be
  // bound, or the options are out of range (kInvalidArgument naming the option).
  static Result<std::unique_ptr<DelayProxy>> start(DelayProxyOptions options);
  ~DelayProxy();
  DelayProxy(const DelayProxy&) = delete;
  DelayProxy& operator=(const DelayProxy&) = delete;

  uint16_t port() const;
  // Delay on or off for bytes read from now on (queued bytes keep their release time).
  void set_delay_on(bool on);
  DelayProxyStats stats() const;
  // Closes the listener and resets every connection; waits for the io thread. Idempotent.
  void stop();

  struct Impl;

 private:
  explicit DelayProxy(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cru::test
