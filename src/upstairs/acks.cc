// Replies from the downstairs: job results, read verification and self-healing retries,
// the 2-of-3 flush acknowledgement, and retirement of jobs once a flush or barrier has
// completed everywhere.
#include <fmt/format.h>

#include <algorithm>

#include "common/log.h"
#include "proto/integrity.h"
#include "upstairs/upstairs.h"

namespace cru::upstairs {

using namespace cru::proto;

void Upstairs::guest_done(GuestId id, Status status, ReadData read) {
  actions_.emplace_back(GuestDone{id, std::move(status), std::move(read)});
}

void Upstairs::on_job_reply(ClientId c, JobId id, Status status, Message* reply) {
  auto it = jobs_.find(id);
  // Ids are never reused: one past the counter, or one this downstairs was never sent, can
  // only come from a broken or hostile peer.
  if (id >= next_job_ ||
      (it != jobs_.end() && (it->second.io[c] == Io::kNone || it->second.io[c] == Io::kHeld)))
    return protocol_violation(c, fmt::format("reply for job {}, which it was never sent", id));
  if (it == jobs_.end() || it->second.io[c] != Io::kSent) {
    // Retired, or answered before its connection was lost and the job skipped here.
    log::debug("{}: reply for job {} that is not in flight there", describe(c), id);
    return;
  }
  Job& job = it->second;
  clients_[c].last_reply = now_;
  const bool read_reply = reply && std::holds_alternative<ReadResponse>(*reply);
  if (read_reply != (job.kind == JobKind::kRead))
    return protocol_violation(
        c, fmt::format("job {} is {}a read, the reply is {}", id,
                       job.kind == JobKind::kRead ? "" : "not ", proto::describe(*reply)));
  if (read_reply) return on_read_reply(c, job, status, &std::get<ReadResponse>(*reply));
  bool close_ack = reply && std::holds_alternative<ExtentLiveCloseAck>(*reply);
  if (close_ack != (job.kind == JobKind::kLiveClose))
    return protocol_violation(
        c, fmt::format("wrong reply type {} for job {}", proto::describe(*reply), id));
  if (!status) {
    set_io(job, c, Io::kError);
    log::warn("{}: job {} failed: {}", describe(c), id, status.error().to_string());
    if (job.kind == JobKind::kLiveRepair || job.kind == JobKind::kLiveClose ||
        job.kind == JobKind::kLiveReopen)
      abort_live_repair(
          fmt::format("{} failed a repair step: {}", describe(c), status.error().to_string()));
    // A downstairs that cannot write (or flush) no longer holds a faithful replica.
    fault(c, fmt::format("job {} failed: {}", id, status.error().to_string()));
  } else {
    set_io(job, c, Io::kDone);
    if (job.kind == JobKind::kFlush) clients_[c].last_flush = std::max(clients_[c].last_flush, id);
    if (close_ack) job.close_versions[c] = std::get<ExtentLiveCloseAck>(*reply).version;
  }
  ack_check(job);
  repair_progress();
}

void Upstairs::on_read_reply(ClientId c, Job& job, const Status& status, ReadResponse* resp) {
  Status s = status;
  if (s && (resp->contexts.size() != job.range.count || resp->block_size != region_->block_size ||
            resp->data.size() != job.range.count * region_->block_size)) {
    // Not data that failed a check: an answer to another question. The read is retried
    // elsewhere before this downstairs is dropped.
    set_io(job, c, Io::kError);
    if (!job.acked) retry_read(job);
    return protocol_violation(
        c, fmt::format("read job {} of {} blocks of {} bytes answered with {} blocks of {} bytes "
                       "and {} bytes of data",
                       job.id, job.range.count, region_->block_size, resp->contexts.size(),
                       resp->block_size, resp->data.size()));
  }
  bool corrupt = false;
  if (s && !job.acked) {
    // Every block is checked before it can reach the guest.
    s = verify_blocks(job.range.start, region_->block_size, resp->contexts, resp->data.span(),
                      config_.encrypted);
    corrupt = !s;
  }
  if (s) {
    set_io(job, c, Io::kDone);
    if (!job.acked) {
      job.acked = true;
      guest_done(*job.guest, {}, ReadData{std::move(resp->contexts), std::move(resp->data)});
    }
    return;
  }
  set_io(job, c, Io::kError);
  log::warn("{}: read job {} failed: {}", describe(c), job.id, s.error().to_string());
  if (!job.acked) retry_read(job);
  if (corrupt) {
    // Self-healing: the read is served from another replica; this one gets repaired.
    ++clients_[c].self_heals;
    const uint64_t es = region_->extent_size;
    for (uint64_t b = job.range.start; b < job.range.end(); b += es - b % es)
      clients_[c].suspect_extents.insert(extent_of(b));
    fault(c, "returned data that failed verification: " + s.error().message);
  }
}

void Upstairs::retry_read(Job& failed) {
  failed.acked = true;  // the guest's answer moves to the new job
  if (!pick_reader(failed.tried)) {
    guest_done(*failed.guest, fail(ErrorCode::kIo,
                                   fmt::format("read of blocks [{}, {}) failed on every downstairs",
                                               failed.range.start, failed.range.end())));
    return;
  }
  // A new job (not a resend): it follows any write queued since, which is a legal answer
  // for a read that was concurrent with that write.
  start_read(*failed.guest, failed.range, failed.bytes, failed.tried);
}

void Upstairs::ack_check(Job& job) {
  if (job.acked || job.kind != JobKind::kFlush) return;
  int done = 0, failed = 0;
  for (ClientId c : kAllClients) {
    if (job.io[c] == Io::kDone) ++done;
    if (job.io[c] == Io::kSkipped || job.io[c] == Io::kError) ++failed;
  }
  if (done >= 2) {
    job.acked = true;
    guest_done(*job.guest, {});
  } else if (failed >= 2) {
    job.acked = true;
    guest_done(
        *job.guest,
        fail(ErrorCode::kIo,
             fmt::format("flush failed: only {} of 3 downstairs could make it durable", done)));
  }
}

bool Upstairs::complete_on_all(const Job& job) const {
  return std::all_of(kAllClients.begin(), kAllClients.end(),
                     [&](ClientId c) { return finished(job.io[c]); });
}

bool Upstairs::flush_or_barrier_pending() const {
  return std::any_of(fences_.begin(), fences_.end(),
                     [&](JobId f) { return !complete_on_all(jobs_.at(f)); });
}

void Upstairs::retire() {
  // The newest flush or barrier complete on all three: everything up to it is complete
  // everywhere (it depended on all of it), so none of it can be needed for a replay
  // that a flush or this barrier does not already cover.
  std::optional<JobId> through;
  bool through_is_flush = false;
  for (JobId f : fences_) {
    const Job& j = jobs_.at(f);
    if (!complete_on_all(j)) break;
    through = f;
    through_is_flush = j.kind == JobKind::kFlush;
  }
  if (!through) return;
  for (auto it = jobs_.begin(); it != jobs_.end() && it->first <= *through;) {
    Job& job = it->second;
    // Normally everything older than a completed fence is complete (the fence depended
    // on it); only when the fence was skipped everywhere can a live-repair job lag.
    if (!complete_on_all(job) || !job.acked) {
      ++it;
      continue;
    }
    for (ClientId c : kAllClients) set_io(job, c, Io::kNone);
    fences_.erase(job.id);
    it = jobs_.erase(it);
  }
  deps_.retire_through(*through);
  // After a barrier, jobs since some downstairs' last flush may be gone: no replay.
  can_replay_ = through_is_flush;
}

// Finished jobs are kept for replay until a flush or barrier retires them: a barrier
// bounds that memory when the guest does not flush.
void Upstairs::barrier_if_due() {
  if (state_ != VolumeState::kActive || config_.read_only || flush_or_barrier_pending()) return;
  const Limits& l = config_.limits;
  for (const Client& cl : clients_) {
    if (cl.jobs_finished >= l.barrier_jobs || cl.bytes_finished >= l.barrier_bytes) {
      submit_barrier();
      return;
    }
  }
}

}  // namespace cru::upstairs
