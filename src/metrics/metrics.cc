#include "metrics/metrics.h"

#include <fmt/format.h>
#include <prometheus/exposer.h>
#include <prometheus/text_serializer.h>

#include <csignal>
#include <sstream>

#include "common/address.h"
#include "common/thread_signals.h"

namespace cru::metrics {

namespace {

prometheus::MetricFamily family(std::string name, std::string help, prometheus::MetricType t) {
  prometheus::MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = t;
  return f;
}

prometheus::ClientMetric sample(Labels labels) {
  prometheus::ClientMetric m;
  for (const auto& [k, v] : labels) m.label.push_back({std::string(k), std::string(v)});
  return m;
}

}  // namespace

Result<std::unique_ptr<Endpoint>> Endpoint::start(
    const std::string& listen, std::string_view what,
    std::vector<std::shared_ptr<prometheus::Collectable>> collectables) {
  if (auto a = parse_listen_address(listen); !a)
    return fail(ErrorCode::kInvalidArgument, fmt::format("{}: {}", what, a.error().message));
  std::unique_ptr<Endpoint> e(new Endpoint());
  // The HTTP threads start here and inherit this mask: signals meant for the process's
  // own waits (SIGINT, SIGTERM, ...) must never run on them.
  sigset_t old_mask;
  pthread_sigmask(SIG_SETMASK, nullptr, &old_mask);
  block_async_signals_in_this_thread();
  // One thread: a scrape is small and rare; two would only contend on the snapshot.
  constexpr size_t kHttpThreads = 1;
  try {
    e->exposer_ = std::make_unique<prometheus::Exposer>(listen, kHttpThreads);
  } catch (const std::exception& ex) {
    pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
    return fail(ErrorCode::kIo,
                fmt::format("{}: cannot serve metrics on {}: {}", what, listen, ex.what()));
  }
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  e->collectables_ = std::move(collectables);
  for (const auto& c : e->collectables_) e->exposer_->RegisterCollectable(c);
  return e;
}

Endpoint::~Endpoint() = default;

uint16_t Endpoint::port() const {
  auto ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : static_cast<uint16_t>(ports.front());
}

prometheus::MetricFamily counter(std::string name, std::string help) {
  return family(std::move(name), std::move(help), prometheus::MetricType::Counter);
}
prometheus::MetricFamily gauge(std::string name, std::string help) {
  return family(std::move(name), std::move(help), prometheus::MetricType::Gauge);
}
prometheus::MetricFamily histogram(std::string name, std::string help) {
  return family(std::move(name), std::move(help), prometheus::MetricType::Histogram);
}

void add(prometheus::MetricFamily& f, Labels labels, double value) {
  auto m = sample(labels);
  if (f.type == prometheus::MetricType::Counter)
    m.counter.value = value;
  else
    m.gauge.value = value;
  f.metric.push_back(std::move(m));
}

void add(prometheus::MetricFamily& f, Labels labels, const LatencyHistogram& h) {
  auto m = sample(labels);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < LatencyHistogram::kBuckets; ++i) {
    cumulative += h.bucket(i);
    const double bound = i < LatencyHistogram::kBoundsNs.size()
                             ? LatencyHistogram::bound_seconds(i)
                             : std::numeric_limits<double>::infinity();
    m.histogram.bucket.push_back({cumulative, bound});
  }
  m.histogram.sample_count = cumulative;
  m.histogram.sample_sum = h.sum_seconds();
  f.metric.push_back(std::move(m));
}

std::string to_text(const std::vector<prometheus::MetricFamily>& families) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

}  // namespace cru::metrics
