#include "trace/tracer.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <random>

#include "common/assert.h"
#include "common/thread_signals.h"

namespace cru::trace {

namespace {

uint64_t splitmix64(uint64_t x) {
  uint64_t z = x + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t pick_seed(uint64_t seed) {
  if (seed != 0) return seed;
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

// Draws are uniform over 64 bits: sampled when below ratio * 2^64 (0 and 1 exactly).
uint64_t threshold(double ratio) {
  if (ratio <= 0) return 0;
  if (ratio >= 1) return UINT64_MAX;
  return static_cast<uint64_t>(std::ldexp(ratio, 64));
}

int64_t unix_now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Status check_sample_ratio(double ratio, std::string_view what) {
  if (std::isnan(ratio) || ratio < 0 || ratio > 1)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{} {} is not a ratio from 0 to 1 (0.01: one guest operation in 100)",
                            what, ratio));
  return {};
}

Result<double> parse_sample_ratio(std::string_view text, std::string_view what) {
  double ratio = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), ratio);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty())
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{} '{}' is not a number from 0 to 1", what, text));
  CRU_TRY(check_sample_ratio(ratio, what));
  return ratio;
}

Tracer::Tracer(TracerOptions options, std::unique_ptr<Exporter> exporter)
    : options_(std::move(options)),
      exporter_(std::move(exporter)),
      counter_(0),
      seed_(pick_seed(options_.seed)),
      sample_threshold_(threshold(options_.sample_ratio)),
      steady_anchor_(std::chrono::steady_clock::now()),
      unix_anchor_us_(unix_now_us()) {
  CRU_ASSERT(check_sample_ratio(options_.sample_ratio, "sample ratio").has_value());
  CRU_ASSERT(options_.queue_spans_max > 0 && options_.batch_spans_max > 0);
  if (exporter_)
    sender_ = std::thread([this] {
      // A SIGTERM taken here would run crucible-fuse's handler on a thread that wakes
      // nothing, and the unmount would never start.
      block_async_signals_in_this_thread();
      run();
    });
}

Tracer::~Tracer() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (sender_.joinable()) sender_.join();
}

uint64_t Tracer::next_random() {
  return splitmix64(seed_ ^ splitmix64(counter_.fetch_add(1, std::memory_order_relaxed)));
}

bool Tracer::sample() {
  if (sample_threshold_ == 0) return false;
  if (sample_threshold_ == UINT64_MAX) return true;
  return next_random() < sample_threshold_;
}

TraceId Tracer::new_trace_id() {
  TraceId t{next_random(), next_random()};
  if (t.low == 0) t.low = 1;
  return t;
}

uint64_t Tracer::new_span_id() {
  uint64_t id = next_random();
  return id != 0 ? id : 1;
}

SpanContext Tracer::new_root() {
  TraceId t = new_trace_id();
  return SpanContext{t, root_span_id(t), true};
}

void Tracer::record(Span span) {
  {
    std::lock_guard lock(mu_);
    if (queue_.size() >= options_.queue_spans_max) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    queue_.push_back(std::move(span));
    if (queue_.size() < options_.batch_spans_max) return;
  }
  wake_.notify_one();
}

int64_t Tracer::unix_us(std::chrono::steady_clock::time_point t) const {
  return unix_anchor_us_ +
         std::chrono::duration_cast<std::chrono::microseconds>(t - steady_anchor_).count();
}

size_t Tracer::queued() const {
  std::lock_guard lock(mu_);
  return queue_.size();
}

std::vector<Span> Tracer::take(size_t max) {
  std::lock_guard lock(mu_);
  std::vector<Span> out;
  while (!queue_.empty() && out.size() < max) {
    out.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  return out;
}

void Tracer::run() {
  std::vector<Span> batch;
  batch.reserve(options_.batch_spans_max);
  for (;;) {
    bool last = false;
    bool stopping = false;
    {
      std::unique_lock lock(mu_);
      wake_.wait_for(lock, options_.batch_interval,
                     [this] { return stopping_ || queue_.size() >= options_.batch_spans_max; });
      while (!queue_.empty() && batch.size() < options_.batch_spans_max) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      // Stopping drains what is queued, unless the collector fails (below).
      last = stopping_ && queue_.empty();
      stopping = stopping_;
    }
    if (!batch.empty()) {
      ExportStats stats{dropped(), export_failed_spans_.load(std::memory_order_relaxed)};
      Status s = exporter_->send(options_.service, batch, stats);
      if (s) {
        exported_.fetch_add(batch.size(), std::memory_order_relaxed);
      } else {
        export_errors_.fetch_add(1, std::memory_order_relaxed);
        export_failed_spans_.fetch_add(batch.size(), std::memory_order_relaxed);
        // A process stopping does not wait on a collector that is not answering.
        if (stopping) last = true;
      }
      batch.clear();
    }
    if (last) return;
  }
}

}  // namespace cru::trace
