// The trace context in job messages (protocol 5): a sampled guest operation's jobs carry
// its trace id and, per downstairs, the span id of that copy of the job, derived from the
// guest span, job id and client (upstairs/tracing.h names the same span); an unsampled
// operation's jobs carry none.
#include <gtest/gtest.h>

#include <set>

#include "unit/upstairs/harness.h"

namespace cru::upstairs::test {
namespace {

const trace::SpanContext kGuest{trace::TraceId{0x1111, 0x2222}, 0x2222, true};

std::optional<TraceContext> trace_of(const Message& m) {
  return std::visit(
      [](const auto& v) -> std::optional<TraceContext> {
        if constexpr (requires { v.trace; }) return v.trace;
        return std::nullopt;
      },
      m);
}

TEST(TraceContext, ASampledWriteCarriesItsTraceToEachDownstairsUnderItsOwnSpan) {
  Harness h;
  h.activate_fresh();
  WriteOp w = write_op(0, 2, 1);
  w.trace = kGuest;
  h.submit(std::move(w));
  std::set<uint64_t> parents;
  for (ClientId c : kAllClients) {
    const Message& m = h.jobs_sent(c).back();
    ASSERT_TRUE(std::holds_alternative<Write>(m));
    auto t = trace_of(m);
    ASSERT_TRUE(t) << "client " << int(c.value);
    EXPECT_EQ(t->trace_id_high, 0x1111u);
    EXPECT_EQ(t->trace_id_low, 0x2222u);
    EXPECT_EQ(t->flags, TraceContext::kSampled);
    const uint64_t job = std::get<Write>(m).job_id.value;
    EXPECT_EQ(t->parent_span_id, trace::derive_span_id(kGuest.span_id, job * 3 + c.value));
    parents.insert(t->parent_span_id);
  }
  EXPECT_EQ(parents.size(), 3u);
}

TEST(TraceContext, SampledReadsDiscardsAndFlushesCarryItUnsampledOperationsDoNot) {
  Harness h;
  h.activate_fresh();
  h.submit(write_op(0, 1, 1));
  for (ClientId c : kAllClients) EXPECT_FALSE(trace_of(h.jobs_sent(c).back())) << "untraced";
  h.submit(DiscardOp{BlockIndex{4}, 1, kGuest});
  h.submit(FlushOp{.snapshot = std::nullopt, .trace = kGuest});
  for (ClientId c : kAllClients) {
    const auto& sent = h.jobs_sent(c);
    ASSERT_GE(sent.size(), 3u);
    EXPECT_TRUE(std::holds_alternative<Discard>(sent[sent.size() - 2]));
    EXPECT_TRUE(trace_of(sent[sent.size() - 2]));
    EXPECT_TRUE(std::holds_alternative<Flush>(sent.back()));
    EXPECT_TRUE(trace_of(sent.back()));
  }
  h.submit(ReadOp{BlockIndex{0}, 1, kGuest});
  int reads = 0;
  for (ClientId c : kAllClients) {
    const Message& m = h.jobs_sent(c).back();
    if (!std::holds_alternative<Read>(m)) continue;
    ++reads;
    EXPECT_TRUE(trace_of(m));
  }
  EXPECT_EQ(reads, 1);  // one replica serves a read
}

}  // namespace
}  // namespace cru::upstairs::test
