// Spans of the upstairs: one per guest operation (read, write, flush, discard), with a
// child per downstairs job it became (trace/span.h). The volume shell calls it on the io
// thread as operations are submitted, jobs sent, replies received and operations
// answered; it watches those, never steers them. Sampling is decided at submission (the
// Tracer's ratio); an unsampled operation that fails is still reported (errors are always
// traced). Unsampled operations cost a ring-slot store and nothing is allocated for them.
// Owned by the volume's io thread; the Tracer it writes to is thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "trace/tracer.h"
#include "upstairs/upstairs.h"

namespace cru::upstairs {

// Guest operations remembered for error spans of unsampled operations: a slot per id
// modulo this, so an operation this many submissions old has lost its start time (its
// error span then starts when it ended). Above the 4096 calls a volume has outstanding.
inline constexpr size_t kTraceStartRingSlots = 8192;
// Job spans waiting for their reply: beyond it the oldest is dropped (counted by the
// Tracer as a drop), e.g. jobs of a downstairs that went away and was replaced.
inline constexpr size_t kOpenJobSpansMax = 16384;

class GuestTracing {
 public:
  explicit GuestTracing(std::shared_ptr<trace::Tracer> tracer);

  // Before the core sees the operation: samples it and, if so, sets op's trace.
  void on_submit(GuestId id, GuestOp& op, uint32_t block_size, TimePoint now);
  // A message the core sends: a sampled job's copy for one downstairs starts (or, when
  // resent after a reconnect, notes it).
  void on_send(ClientId client, const proto::Message& m, TimePoint now);
  // A message from a downstairs: the reply that ends a job span.
  void on_reply(ClientId client, const proto::Message& m, TimePoint now);
  // The guest's answer: ends the operation's span.
  void on_done(const GuestDone& done, TimePoint now);

  size_t open_guest_spans() const { return guests_.size(); }
  size_t open_job_spans() const { return jobs_.size(); }

 private:
  struct GuestSpan {
    trace::SpanContext context;
    const char* name = "";
    uint64_t offset_bytes = 0;
    uint64_t size_bytes = 0;
    TimePoint start{};
  };
  struct JobSpan {
    trace::SpanContext context;  // span_id: this job's span on this downstairs
    const char* name = "";
    TimePoint queued{};
    std::vector<trace::Event> resends;
  };
  struct StartSlot {
    GuestId id;
    TimePoint start{};
    const char* name = "";
  };

  void finish_job(std::pair<uint64_t, uint8_t> key, JobSpan& span, const proto::WireStatus& status,
                  TimePoint now);

  std::shared_ptr<trace::Tracer> tracer_;
  std::unordered_map<GuestId, GuestSpan> guests_;         // sampled, unanswered
  std::map<std::pair<uint64_t, uint8_t>, JobSpan> jobs_;  // (job id, client) -> span
  std::vector<StartSlot> starts_;                         // kTraceStartRingSlots
};

}  // namespace cru::upstairs
