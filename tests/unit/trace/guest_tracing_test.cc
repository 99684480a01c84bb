// The upstairs' guest spans (upstairs/tracing.h) over a Tracer without an exporter, whose
// queue the test reads.
#include <gtest/gtest.h>

#include "upstairs/tracing.h"

namespace cru::upstairs {
namespace {

constexpr uint32_t kBlock = 4096;

std::shared_ptr<trace::Tracer> tracer(double ratio) {
  trace::TracerOptions o;
  o.service = "crucible-upstairs";
  o.sample_ratio = ratio;
  o.seed = 7;
  return std::make_shared<trace::Tracer>(o, nullptr);
}

GuestOp write_op() {
  WriteOp w;
  w.start = BlockIndex{3};
  w.contexts.resize(2);
  w.data = Bytes::zeros(2 * kBlock);
  return w;
}

// What the core would send client c for the job (Upstairs::wire_trace's rule).
proto::Message write_message(const trace::SpanContext& guest, JobId job, ClientId c) {
  proto::Write w;
  w.job_id = job;
  w.trace = proto::TraceContext{guest.trace.high, guest.trace.low,
                                trace::derive_span_id(guest.span_id, job.value * 3 + c.value),
                                proto::TraceContext::kSampled};
  return w;
}

const trace::Attribute* attr(const trace::Span& s, const std::string& key) {
  for (const auto& a : s.attributes)
    if (a.key == key) return &a;
  return nullptr;
}

TEST(GuestTracing, ASampledWriteIsARootWithAChildPerDownstairsJob) {
  auto t = tracer(1);
  GuestTracing g(t);
  TimePoint now{};
  GuestOp op = write_op();
  g.on_submit(GuestId{1}, op, kBlock, now);
  const trace::SpanContext ctx = std::get<WriteOp>(op).trace;
  ASSERT_TRUE(ctx.valid() && ctx.sampled);
  for (ClientId c : kAllClients) g.on_send(c, write_message(ctx, JobId{1000}, c), now);
  g.on_done(GuestDone{GuestId{1}, {}, {}}, now + std::chrono::microseconds(5));
  for (ClientId c : kAllClients)
    g.on_reply(c, proto::Ack{JobId{1000}, proto::WireStatus::ok()},
               now + std::chrono::milliseconds(1 + c.value));
  EXPECT_EQ(g.open_guest_spans(), 0u);
  EXPECT_EQ(g.open_job_spans(), 0u);

  auto spans = t->take(100);
  ASSERT_EQ(spans.size(), 4u);
  const trace::Span& root = spans[0];
  EXPECT_EQ(root.name, "write");
  EXPECT_EQ(root.parent_id, 0u);
  EXPECT_EQ(root.span_id, ctx.span_id);
  EXPECT_EQ(std::get<int64_t>(attr(root, "offset")->value), 3 * kBlock);
  EXPECT_EQ(std::get<int64_t>(attr(root, "size")->value), 2 * kBlock);
  EXPECT_EQ(std::get<std::string>(attr(root, "result")->value), "ok");
  for (int i = 1; i <= 3; ++i) {
    const trace::Span& job = spans[i];
    EXPECT_EQ(job.name, "write job");
    EXPECT_EQ(job.trace, ctx.trace);
    EXPECT_EQ(job.parent_id, root.span_id);
    EXPECT_EQ(job.span_id, trace::derive_span_id(ctx.span_id, 1000 * 3 + (i - 1)));
    EXPECT_EQ(std::get<int64_t>(attr(job, "client")->value), i - 1);
    EXPECT_EQ(std::get<int64_t>(attr(job, "job.id")->value), 1000);
    EXPECT_EQ(job.duration_us, 1000 * i);
    ASSERT_EQ(job.events.size(), 2u);
    EXPECT_EQ(job.events[0].name, "queued");
    EXPECT_EQ(job.events[1].name, "acked");
  }
}

TEST(GuestTracing, AnUnsampledOperationLeavesNothingUnlessItFails) {
  auto t = tracer(0);
  GuestTracing g(t);
  GuestOp ok = write_op(), failed = write_op();
  g.on_submit(GuestId{1}, ok, kBlock, TimePoint{});
  g.on_submit(GuestId{2}, failed, kBlock, TimePoint{});
  EXPECT_FALSE(std::get<WriteOp>(ok).trace.valid());
  EXPECT_EQ(g.open_guest_spans(), 0u);
  g.on_done(GuestDone{GuestId{1}, {}, {}}, TimePoint{} + std::chrono::milliseconds(1));
  EXPECT_EQ(t->queued(), 0u);
  g.on_done(GuestDone{GuestId{2}, fail(ErrorCode::kQuorumLost, "two downstairs gone"), {}},
            TimePoint{} + std::chrono::milliseconds(2));
  auto spans = t->take(10);
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_TRUE(spans[0].error);
  EXPECT_EQ(spans[0].name, "write");
  EXPECT_EQ(spans[0].duration_us, 2000);
  EXPECT_EQ(std::get<std::string>(attr(spans[0], "sampled_for")->value), "error");
  EXPECT_EQ(std::get<std::string>(attr(spans[0], "result")->value), "quorum lost");
}

TEST(GuestTracing, AResentJobIsOneSpanAndAFailedReplyMarksIt) {
  auto t = tracer(1);
  GuestTracing g(t);
  GuestOp op = write_op();
  g.on_submit(GuestId{1}, op, kBlock, TimePoint{});
  const auto ctx = std::get<WriteOp>(op).trace;
  g.on_send(ClientId{1}, write_message(ctx, JobId{5}, ClientId{1}), TimePoint{});
  g.on_send(ClientId{1}, write_message(ctx, JobId{5}, ClientId{1}), TimePoint{});
  EXPECT_EQ(g.open_job_spans(), 1u);
  g.on_reply(ClientId{1}, proto::Ack{JobId{5}, proto::WireStatus{ErrorCode::kIo, "EIO"}},
             TimePoint{});
  auto spans = t->take(10);
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_TRUE(spans[0].error);
  ASSERT_EQ(spans[0].events.size(), 3u);
  EXPECT_EQ(spans[0].events[1].name, "resent");
}

TEST(GuestTracing, JobsWithoutATraceContextAreNotFollowed) {
  auto t = tracer(1);
  GuestTracing g(t);
  proto::Write w;
  w.job_id = JobId{9};
  g.on_send(ClientId{0}, w, TimePoint{});
  EXPECT_EQ(g.open_job_spans(), 0u);
  g.on_reply(ClientId{0}, proto::Ack{JobId{9}, proto::WireStatus::ok()}, TimePoint{});
  EXPECT_EQ(t->queued(), 0u);
}

}  // namespace
}  // namespace cru::upstairs
