// The tracing front: decides which operations are sampled, makes ids, and takes finished
// spans into a bounded queue that a background sender thread batches to an Exporter
// (export.h). record() never blocks on the network: when the queue is full the span is
// dropped and counted. Every member may be called from any thread. Processes hold at most
// one, made from --trace-endpoint; without one nothing is traced (callers test a pointer).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>

#include "common/result.h"
#include "trace/span.h"

namespace cru::trace {

// The default: one guest operation in a hundred; repairs and errors always.
inline constexpr double kDefaultSampleRatio = 0.01;
// Spans waiting for the sender: a few seconds of a fully sampled busy volume (some 3000
// spans a second per process); beyond it spans are dropped, never waited for.
inline constexpr size_t kQueueSpansMax = 16384;
// Spans per export call: one OTLP request, or the Jaeger packets they split into.
inline constexpr size_t kBatchSpansMax = 512;
// A partial batch waits at most this long, so a quiet process's spans still arrive soon.
inline constexpr std::chrono::milliseconds kBatchInterval{500};

// How many spans were lost, for the exporters that report it (Jaeger's ClientStats).
struct ExportStats {
  uint64_t dropped_queue_full = 0;
  uint64_t failed_to_export = 0;
};

// Sends one batch; called from the sender thread only, one call at a time. An error is
// counted (the spans are lost), never retried: a slow or absent collector must not pile up.
class Exporter {
 public:
  virtual ~Exporter() = default;
  virtual Status send(const std::string& service, std::span<const Span> spans,
                      const ExportStats& stats) = 0;
};

struct TracerOptions {
  std::string service;                        // crucible-upstairs or crucible-downstairs
  double sample_ratio = kDefaultSampleRatio;  // 0..1
  size_t queue_spans_max = kQueueSpansMax;
  size_t batch_spans_max = kBatchSpansMax;
  std::chrono::milliseconds batch_interval = kBatchInterval;
  uint64_t seed = 0;  // ids and sampling; 0: from std::random_device
};

// Checks a ratio given on a command line or in a config; names `what`.
Status check_sample_ratio(double ratio, std::string_view what);
// "0.01", "1", "0": a ratio from 0 to 1; anything else is an error naming `what`.
Result<double> parse_sample_ratio(std::string_view text, std::string_view what);

class Tracer {
 public:
  // Starts the sender thread. exporter may be null (tests): spans stay queued until taken.
  Tracer(TracerOptions options, std::unique_ptr<Exporter> exporter);
  // Sends what is queued (one last batch round), then stops the thread.
  ~Tracer();
  Tracer(const Tracer&) = delete;
  Tracer& operator=(const Tracer&) = delete;

  const std::string& service() const { return options_.service; }
  // Whether the next guest operation is sampled (sample_ratio of them, evenly spread).
  bool sample();
  TraceId new_trace_id();
  uint64_t new_span_id();
  // A new root: a fresh trace whose root span id is root_span_id(trace).
  SpanContext new_root();

  // Queues a finished span, or drops it (counted) when the queue is full.
  void record(Span span);
  // A span given up before it was finished (its caller's own bound): counted as dropped.
  void count_drop() { dropped_.fetch_add(1, std::memory_order_relaxed); }
  // Wall-clock microseconds for a steady-clock instant (spans are timed with the steady
  // clock, which does not jump, and exported on the wall clock).
  int64_t unix_us(std::chrono::steady_clock::time_point t) const;

  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  uint64_t exported() const { return exported_.load(std::memory_order_relaxed); }
  uint64_t export_errors() const { return export_errors_.load(std::memory_order_relaxed); }
  size_t queued() const;
  // Takes up to `max` queued spans (tests without an exporter).
  std::vector<Span> take(size_t max);

 private:
  uint64_t next_random();
  void run();

  TracerOptions options_;
  std::unique_ptr<Exporter> exporter_;
  std::atomic<uint64_t> counter_;
  const uint64_t seed_;
  const uint64_t sample_threshold_;  // sampled: a draw below this
  const std::chrono::steady_clock::time_point steady_anchor_;
  const int64_t unix_anchor_us_;

  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<Span> queue_;  // bounded by options_.queue_spans_max
  bool stopping_ = false;
  std::atomic<uint64_t> dropped_{0}, exported_{0}, export_errors_{0}, export_failed_spans_{0};
  std::thread sender_;
};

}  // namespace cru::trace
