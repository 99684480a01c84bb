#include "upstairs/tracing.h"

#include <type_traits>

#include "common/assert.h"
#include "common/overloaded.h"

namespace cru::upstairs {

namespace {

using trace::Attribute;
using trace::Span;

const char* job_name(const proto::Message& m) {
  switch (proto::tag_of(m)) {
    case proto::Tag::kWrite:
      return "write job";
    case proto::Tag::kWriteUnwritten:
      return "write_unwritten job";
    case proto::Tag::kRead:
      return "read job";
    case proto::Tag::kDiscard:
      return "discard job";
    case proto::Tag::kFlush:
      return "flush job";
    default:
      return "job";
  }
}

std::string result_of(const Status& s) {
  return s ? "ok" : std::string(error_code_name(s.error().code));
}

int64_t micros(Duration d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

}  // namespace

GuestTracing::GuestTracing(std::shared_ptr<trace::Tracer> tracer)
    : tracer_(std::move(tracer)), starts_(kTraceStartRingSlots) {
  CRU_ASSERT(tracer_ != nullptr);
}

void GuestTracing::on_submit(GuestId id, GuestOp& op, uint32_t block_size, TimePoint now) {
  GuestSpan g;
  trace::SpanContext* slot = std::visit(
      Overloaded{
          [&](ReadOp& r) -> trace::SpanContext* {
            g = {{}, "read", r.start.value * block_size, uint64_t{r.count} * block_size, now};
            return &r.trace;
          },
          [&](WriteOp& w) -> trace::SpanContext* {
            g = {{},
                 w.only_unwritten ? "write_unwritten" : "write",
                 w.start.value * block_size,
                 w.data.size(),
                 now};
            return &w.trace;
          },
          [&](DiscardOp& d) -> trace::SpanContext* {
            g = {{}, "discard", d.start.value * block_size, uint64_t{d.count} * block_size, now};
            return &d.trace;
          },
          [&](FlushOp& f) -> trace::SpanContext* {
            g = {{}, "flush", 0, 0, now};
            return &f.trace;
          },
          [](auto&) -> trace::SpanContext* { return nullptr; },
      },
      op);
  if (slot == nullptr) return;  // activation and the like: not guest IO
  starts_[id.value % starts_.size()] = StartSlot{id, now, g.name};
  if (!tracer_->sample()) return;
  g.context = tracer_->new_root();
  *slot = g.context;
  guests_.emplace(id, g);
}

void GuestTracing::on_send(ClientId client, const proto::Message& m, TimePoint now) {
  const proto::TraceContext* t = std::visit(
      [](const auto& v) -> const proto::TraceContext* {
        if constexpr (requires { v.trace; }) return v.trace ? &*v.trace : nullptr;
        return nullptr;
      },
      m);
  if (t == nullptr) return;
  const JobId job = std::visit(
      [](const auto& v) -> JobId {
        if constexpr (requires { v.job_id; }) return v.job_id;
        return JobId{};
      },
      m);
  const std::pair key{job.value, client.value};
  if (auto it = jobs_.find(key); it != jobs_.end()) {
    // Replayed to a downstairs that reconnected: the same span, resent.
    it->second.resends.push_back({tracer_->unix_us(now), "resent"});
    return;
  }
  if (jobs_.size() >= kOpenJobSpansMax) {
    jobs_.erase(jobs_.begin());  // the oldest job: its reply is not coming
    tracer_->count_drop();
  }
  JobSpan s;
  s.context = {{t->trace_id_high, t->trace_id_low}, t->parent_span_id, true};
  s.name = job_name(m);
  s.queued = now;
  jobs_.emplace(key, std::move(s));
}

void GuestTracing::on_reply(ClientId client, const proto::Message& m, TimePoint now) {
  if (jobs_.empty()) return;
  std::pair<JobId, const proto::WireStatus*> reply{JobId{}, nullptr};
  if (const auto* a = std::get_if<proto::Ack>(&m)) reply = {a->job_id, &a->status};
  if (const auto* r = std::get_if<proto::ReadResponse>(&m)) reply = {r->job_id, &r->status};
  if (reply.second == nullptr) return;
  auto it = jobs_.find({reply.first.value, client.value});
  if (it == jobs_.end()) return;
  finish_job(it->first, it->second, *reply.second, now);
  jobs_.erase(it);
}

void GuestTracing::finish_job(std::pair<uint64_t, uint8_t> key, JobSpan& js,
                              const proto::WireStatus& status, TimePoint now) {
  Span s;
  s.trace = js.context.trace;
  s.span_id = js.context.span_id;
  s.parent_id = trace::root_span_id(js.context.trace);
  s.name = js.name;
  s.start_unix_us = tracer_->unix_us(js.queued);
  s.duration_us = micros(now - js.queued);
  s.attributes = {
      Attribute{"job.id", static_cast<int64_t>(key.first)},
      Attribute{"client", static_cast<int64_t>(key.second)},
      Attribute{"result", result_of(status.to_status())},
  };
  s.events.push_back({s.start_unix_us, "queued"});
  for (auto& e : js.resends) s.events.push_back(std::move(e));
  s.events.push_back({tracer_->unix_us(now), "acked"});
  s.error = !status.is_ok();
  tracer_->record(std::move(s));
}

void GuestTracing::on_done(const GuestDone& done, TimePoint now) {
  Span s;
  if (auto it = guests_.find(done.id); it != guests_.end()) {
    const GuestSpan& g = it->second;
    s.trace = g.context.trace;
    s.span_id = g.context.span_id;
    s.name = g.name;
    s.start_unix_us = tracer_->unix_us(g.start);
    s.duration_us = micros(now - g.start);
    s.attributes = {Attribute{"offset", static_cast<int64_t>(g.offset_bytes)},
                    Attribute{"size", static_cast<int64_t>(g.size_bytes)}};
    guests_.erase(it);
  } else {
    // Not sampled: reported only if it failed (errors are always traced), from its slot.
    const StartSlot& slot = starts_[done.id.value % starts_.size()];
    if (done.status || slot.id != done.id) return;
    trace::SpanContext root = tracer_->new_root();
    s.trace = root.trace;
    s.span_id = root.span_id;
    s.name = slot.name;
    s.start_unix_us = tracer_->unix_us(slot.start);
    s.duration_us = micros(now - slot.start);
    s.attributes = {Attribute{"sampled_for", std::string("error")}};
  }
  s.attributes.push_back(Attribute{"result", result_of(done.status)});
  if (!done.status) s.attributes.push_back(Attribute{"error.message", done.status.error().message});
  s.error = !done.status;
  tracer_->record(std::move(s));
}

}  // namespace cru::upstairs
