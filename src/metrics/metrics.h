// The Prometheus side shared by crucible-fuse and crucible-downstairs (prometheus-cpp from
// Debian): an HTTP endpoint serving /metrics, and helpers that build metric families from
// the plain numbers the cores keep. Lives apart from every core: only the shells (the
// fuse mount, the downstairs main) link it.
#pragma once

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/latency_histogram.h"
#include "common/result.h"

namespace prometheus {
class Exposer;
}

namespace cru::metrics {

// GET /metrics on an address, answered from HTTP threads of its own.
class Endpoint {
 public:
  // Binds `listen` (common/address.h: parse_listen_address); the error names `what` (the
  // option), the address and why. Every collectable is asked
  // for its families on each scrape, from an HTTP thread.
  static Result<std::unique_ptr<Endpoint>> start(
      const std::string& listen, std::string_view what,
      std::vector<std::shared_ptr<prometheus::Collectable>> collectables);
  ~Endpoint();
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  uint16_t port() const;  // the bound port (useful with port 0)

 private:
  Endpoint() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
};

using Labels = std::initializer_list<std::pair<std::string_view, std::string_view>>;

// A family of one type; add samples with add().
prometheus::MetricFamily counter(std::string name, std::string help);
prometheus::MetricFamily gauge(std::string name, std::string help);
prometheus::MetricFamily histogram(std::string name, std::string help);
// A counter or gauge sample (by the family's type).
void add(prometheus::MetricFamily& family, Labels labels, double value);
// A histogram sample from fixed buckets (cumulated here, as the exposition wants).
void add(prometheus::MetricFamily& family, Labels labels, const LatencyHistogram& h);

// The families as Prometheus text (what /metrics serves), for tests and tools.
std::string to_text(const std::vector<prometheus::MetricFamily>& families);

}  // namespace cru::metrics
