#include "trace/tracer.h"

#include <gtest/gtest.h>

#include <future>
#include <mutex>
#include <set>
#include <vector>

#include "trace/export.h"

namespace cru::trace {
namespace {

Span span_named(std::string name) {
  Span s;
  s.trace = TraceId{1, 2};
  s.span_id = 3;
  s.name = std::move(name);
  return s;
}

TracerOptions options(double ratio, size_t queue = kQueueSpansMax) {
  TracerOptions o;
  o.service = "test";
  o.sample_ratio = ratio;
  o.queue_spans_max = queue;
  o.seed = 42;
  return o;
}

TEST(Tracer, SamplesNothingAtZeroAndEverythingAtOne) {
  Tracer none(options(0), nullptr);
  Tracer all(options(1), nullptr);
  for (int i = 0; i < 1000; ++i) {
    EXPECT_FALSE(none.sample());
    EXPECT_TRUE(all.sample());
  }
}

TEST(Tracer, SamplesAboutTheRatio) {
  Tracer t(options(0.25), nullptr);
  int sampled = 0;
  for (int i = 0; i < 20000; ++i) sampled += t.sample() ? 1 : 0;
  // Seeded, so deterministic; the bound only says the draws are spread as the ratio says.
  EXPECT_GT(sampled, 4500);
  EXPECT_LT(sampled, 5500);
}

TEST(Tracer, IdsAreNonZeroAndDistinct) {
  Tracer t(options(1), nullptr);
  std::set<uint64_t> spans, traces;
  for (int i = 0; i < 10000; ++i) {
    uint64_t s = t.new_span_id();
    EXPECT_NE(s, 0u);
    spans.insert(s);
    SpanContext root = t.new_root();
    EXPECT_TRUE(root.valid() && root.sampled);
    EXPECT_EQ(root.span_id, root_span_id(root.trace));
    traces.insert(root.trace.high ^ root.trace.low);
  }
  EXPECT_EQ(spans.size(), 10000u);
  EXPECT_EQ(traces.size(), 10000u);
}

TEST(Tracer, DerivedSpanIdsDifferPerSaltAndAreStable) {
  std::set<uint64_t> ids;
  for (uint64_t salt = 0; salt < 3000; ++salt) ids.insert(derive_span_id(77, salt));
  EXPECT_EQ(ids.size(), 3000u);
  EXPECT_EQ(derive_span_id(77, 5), derive_span_id(77, 5));
  EXPECT_NE(derive_span_id(77, 5), derive_span_id(78, 5));
}

TEST(Tracer, DropsAndCountsSpansBeyondTheQueueBound) {
  Tracer t(options(1, 4), nullptr);
  for (int i = 0; i < 6; ++i) t.record(span_named("s" + std::to_string(i)));
  EXPECT_EQ(t.queued(), 4u);
  EXPECT_EQ(t.dropped(), 2u);
  auto taken = t.take(10);
  ASSERT_EQ(taken.size(), 4u);
  EXPECT_EQ(taken.front().name, "s0");  // the oldest are kept, the newest dropped
}

// What a FakeExporter saw, kept by the test past the exporter's life.
struct Seen {
  std::mutex mu;
  std::vector<std::string> names;
};

// Records every batch; send() can be held to play a collector that does not answer.
class FakeExporter : public Exporter {
 public:
  explicit FakeExporter(std::shared_ptr<Seen> seen, std::shared_future<void> release = {})
      : seen_(std::move(seen)), release_(std::move(release)) {}
  Status send(const std::string& service, std::span<const Span> spans,
              const ExportStats&) override {
    if (release_.valid()) release_.wait();
    std::lock_guard lock(seen_->mu);
    for (const auto& s : spans) seen_->names.push_back(service + "/" + s.name);
    return {};
  }

 private:
  std::shared_ptr<Seen> seen_;
  std::shared_future<void> release_;
};

TEST(Tracer, SendsEverythingQueuedBeforeItStops) {
  auto seen = std::make_shared<Seen>();
  {
    Tracer t(options(1), std::make_unique<FakeExporter>(seen));
    for (int i = 0; i < 1200; ++i) t.record(span_named(std::to_string(i)));
  }  // ~Tracer: the rest goes out in batches of kBatchSpansMax
  ASSERT_EQ(seen->names.size(), 1200u);
  EXPECT_EQ(seen->names.front(), "test/0");
  EXPECT_EQ(seen->names.back(), "test/1199");
}

TEST(Tracer, RecordNeverWaitsForASlowCollector) {
  std::promise<void> release;
  Tracer t(options(1, 8),
           std::make_unique<FakeExporter>(std::make_shared<Seen>(), release.get_future().share()));
  // The sender takes at most one batch and then hangs in send(); the rest fills the queue
  // and is dropped, and every record() returns meanwhile.
  for (size_t i = 0; i < kBatchSpansMax + 100; ++i) t.record(span_named("x"));
  EXPECT_GT(t.dropped(), 0u);
  EXPECT_LE(t.queued(), 8u);
  release.set_value();
}

// Fails every batch; the second call proves the first one finished (one sender thread).
class FailingExporter : public Exporter {
 public:
  Status send(const std::string&, std::span<const Span>, const ExportStats& stats) override {
    if (++calls_ == 2) {
      failed_before_second_ = stats.failed_to_export;
      second_.set_value();
    }
    return fail(ErrorCode::kIo, "collector down");
  }
  std::future<void> second() { return second_.get_future(); }
  uint64_t failed_before_second() const { return failed_before_second_; }

 private:
  int calls_ = 0;
  uint64_t failed_before_second_ = 0;
  std::promise<void> second_;
};

TEST(Tracer, CountsFailedExportsAndReportsThemInTheNextBatch) {
  auto exporter = std::make_unique<FailingExporter>();
  FailingExporter* e = exporter.get();
  auto second = e->second();
  TracerOptions o = options(1);
  o.batch_spans_max = 1;  // each span is a batch of its own, sent at once
  Tracer t(o, std::move(exporter));
  t.record(span_named("a"));
  t.record(span_named("b"));
  second.wait();
  EXPECT_GE(t.export_errors(), 1u);
  EXPECT_EQ(e->failed_before_second(), 1u);  // Jaeger's ClientStats.failedToEmitSpans
  EXPECT_EQ(t.exported(), 0u);
}

TEST(Endpoint, ParsesBothForms) {
  auto j = parse_endpoint("localhost:6831", "--trace-endpoint");
  ASSERT_TRUE(j) << j.error().message;
  EXPECT_EQ(j->kind, Endpoint::Kind::kJaegerAgent);
  EXPECT_EQ(j->host, "localhost");
  EXPECT_EQ(j->port, 6831);
  auto h = parse_endpoint("http://127.0.0.1:4318", "--trace-endpoint");
  ASSERT_TRUE(h) << h.error().message;
  EXPECT_EQ(h->kind, Endpoint::Kind::kOtlpHttp);
  EXPECT_EQ(h->host, "127.0.0.1");
  EXPECT_EQ(h->port, 4318);
  EXPECT_TRUE(parse_endpoint("http://[::1]:4318/", "x"));
}

TEST(Endpoint, RefusesOtherFormsNamingTheFlag) {
  for (const char* bad : {"localhost", "ftp://h:1", "https://h:4318", "http://h:4318/v1/traces",
                          "h:0", "h:70000", ""}) {
    auto e = parse_endpoint(bad, "trace.endpoint");
    ASSERT_FALSE(e) << bad;
    EXPECT_NE(e.error().message.find("trace.endpoint '"), std::string::npos) << e.error().message;
    EXPECT_EQ(e.error().code, ErrorCode::kInvalidArgument);
  }
}

TEST(SampleRatio, AcceptsZeroToOneOnly) {
  EXPECT_EQ(parse_sample_ratio("0.01", "r").value(), 0.01);
  EXPECT_EQ(parse_sample_ratio("1", "r").value(), 1.0);
  EXPECT_EQ(parse_sample_ratio("0", "r").value(), 0.0);
  for (const char* bad : {"", "1.5", "-0.1", "abc", "0.5x", "nan"}) {
    auto r = parse_sample_ratio(bad, "--trace-sample-ratio");
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().message.find("--trace-sample-ratio"), std::string::npos);
  }
}

}  // namespace
}  // namespace cru::trace
