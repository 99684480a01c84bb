// Replies from the downstairs: job results, read verification and self-healing retries,
// the 2-of-3 flush acknowledgement, and retirement of jobs once a flush or barrier has
// completed everywhere.
#include <fmt/format.h>

#include <algorithm>

#include "common/log.h"
#include "proto/integrity.h"
#include "proto/repair_report.h"
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
  if (!status && job.kind == JobKind::kFlush && job.snapshot &&
      status.error().code == ErrorCode::kSnapshotFailed) {
    // The flush is durable there; only the snapshot is missing. Not a fault: the replica is
    // whole, and a full disk or a taken name must not cost it a live repair.
    log::warn("{}: flush {} is durable but its snapshot failed: {}", describe(c), id,
              status.error().message);
    job.snapshot_error[c] = status.error().message;
    status = Status{};
  }
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
    if (job.kind == JobKind::kFlush) {
      clients_[c].last_flush = std::max(clients_[c].last_flush, id);
      note_unflushed(c, job);
    }
    if (close_ack) job.close_versions[c] = std::get<ExtentLiveCloseAck>(*reply).version;
    // What this target received for the repair (a number for people, trusted no further).
    if (job.kind == JobKind::kLiveRepair && repair_ && repair_->repair_id == id && reply &&
        std::holds_alternative<Ack>(*reply))
      repair_->bytes_transferred +=
          repair_transferred_bytes(std::get<Ack>(*reply).status).value_or(0);
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
  start_read(*failed.guest, failed.range, failed.bytes, failed.tried, failed.trace);
}

// The flush quorum (docs/fault-model.md): acknowledged once two downstairs that hold every
// write before it have made it durable; failed once that can no longer happen, because
// too few downstairs can still take IO (for longer than the quorum grace) or hold it.
void Upstairs::ack_check(Job& job) {
  if (job.acked || job.kind != JobKind::kFlush) return;
  int holding = 0, possible = 0;
  for (ClientId c : kAllClients) {
    if (job.io[c] == Io::kDone && holds_writes_before(c, job))
      ++holding;
    else if (may_still_hold(c, job))
      ++possible;
  }
  if (holding >= 2 && job.snapshot) return snapshot_ack_check(job, possible);
  if (holding >= 2) return finish_flush(job, {});
  if (holding + possible < 2)
    finish_flush(job, fail(ErrorCode::kIo,
                           fmt::format("flush failed: only {} of 3 downstairs hold every write "
                                       "before it durably, and {} can take IO",
                                       holding, io_takers())));
}

void Upstairs::snapshot_ack_check(Job& job, int possible) {
  // A snapshot is acknowledged like the flush, by two replicas that hold it: a read-only
  // volume on the snapshot needs every replica's copy, but two can be copied to a third.
  int taken = 0;
  std::string failures;
  for (ClientId c : kAllClients) {
    if (job.io[c] == Io::kDone && holds_writes_before(c, job) && job.snapshot_error[c].empty())
      ++taken;
    else if (!job.snapshot_error[c].empty())
      failures += fmt::format("; {}: {}", describe(c), job.snapshot_error[c]);
  }
  if (taken >= 2) return finish_flush(job, {});
  if (taken + possible >= 2) return;  // another replica may yet take it
  finish_flush(job, fail(ErrorCode::kSnapshotFailed,
                         fmt::format("snapshot '{}' was taken on only {} of 3 downstairs (the "
                                     "flush itself is durable){}",
                                     *job.snapshot, taken, failures)));
}

bool Upstairs::holds_writes_before(ClientId c, const Job& flush) const {
  std::optional<JobId> missing = clients_[c].missing.oldest();
  return !missing || *missing > flush.id;
}

bool Upstairs::may_still_hold(ClientId c, const Job& flush) const {
  if (given_up(c)) return false;
  if (in_flight(flush.io[c])) return takes_io(c);  // sent, or held for replay
  // Done under live repair with writes missing: the repair may yet copy their extents.
  return flush.io[c] == Io::kDone && clients_[c].ds == DsState::kLiveRepair;
}

void Upstairs::finish_flush(Job& job, Status status) {
  job.acked = true;
  if (!status) log::warn("flush {}: {}", job.id, status.error().message);
  if (deactivation_flush_ == job.id) deactivation_status_ = status;
  if (job.guest) guest_done(*job.guest, std::move(status));
}

void Upstairs::revisit_waiting_io() {
  // A read waiting on a downstairs given up is not retried elsewhere: a new read job would
  // follow writes the guest issued after it (found by the simulator, Sim.Network: a read
  // returned a later write's data). It waits until that downstairs is dropped.
  for (JobId f : fences_) ack_check(jobs_.at(f));
  if (state_ != VolumeState::kActive || config_.read_only) {
    quorum_lost_ = false;  // logged while serving IO only
    return;
  }
  const bool lost = io_takers() < 2;
  if (lost == quorum_lost_) return;
  quorum_lost_ = lost;
  if (lost)
    log::error("quorum lost: only {} downstairs can take IO; writes and flushes fail with EIO",
               io_takers());
  else
    log::info("quorum back: {} downstairs can take IO", io_takers());
}

void Upstairs::note_unflushed(ClientId c, const Job& flush) {
  const std::optional<ExtentId> limit = flush.flush_limit[c];
  if (!limit) return;
  // Under live repair it flushed only the extents up to its repair point; a write that
  // reaches beyond (one that starts at or below the point) stays undurable there until
  // the repair copies those extents.
  for (auto& [id, job] : jobs_) {
    if (id >= flush.id) break;
    if (!writes_blocks(job.kind)) continue;
    const ExtentId last = extent_of(job.range.end() - 1);
    if (job.io[c] == Io::kDone && last > *limit) clients_[c].missing.add(limit->next(), last, id);
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
  retired_through_ = std::max(retired_through_, *through);
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
