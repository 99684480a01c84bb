// Fault and liveness policy: what losing a connection means for a downstairs (offline
// with replay, or faulted and live-repaired later), faults from errors and limits,
// fencing by a newer upstairs, and the timers (connect and silence timeouts, pings, the
// automatic flush).
#include <fmt/format.h>

#include <algorithm>

#include "common/log.h"
#include "common/units.h"
#include "upstairs/upstairs.h"

namespace cru::upstairs {

using namespace cru::proto;

namespace {

int64_t whole_seconds(Duration d) {
  return std::chrono::duration_cast<std::chrono::seconds>(d).count();
}

}  // namespace

// ---- faults ----------------------------------------------------------------------------

void Upstairs::skip_all(ClientId c) {
  std::vector<JobId> reads_to_retry;
  for (auto& [id, job] : jobs_) {
    if (!in_flight(job.io[c])) continue;
    set_io(job, c, Io::kSkipped);
    if (job.kind == JobKind::kRead && !job.acked) reads_to_retry.push_back(id);
    ack_check(job);
  }
  for (JobId id : reads_to_retry) retry_read(jobs_.at(id));
}

void Upstairs::mark_faulted(ClientId c) {
  note_lost_writes(c);
  if (clients_[c].mode != DsMode::kReplaced) set_mode(c, ModeEvent::kFault, DsMode::kFaulted);
}

void Upstairs::note_lost_writes(ClientId c) {
  Client& cl = clients_[c];
  if (!region_) return;
  // A barrier retired jobs after its last flush: which extents they wrote is gone.
  if (retired_through_ > cl.last_flush)
    return cl.missing.add_all(cl.last_flush.next(), region_->extent_count);
  for (auto& [id, job] : jobs_) {
    if (id <= cl.last_flush) continue;
    if (writes_blocks(job.kind) && (in_flight(job.io[c]) || job.io[c] == Io::kDone))
      cl.missing.add(extent_of(job.range.start), extent_of(job.range.end() - 1), id);
  }
}

// Marks it Faulted (a replaced one stays Replaced) and counts it, once per fault.
void Upstairs::count_fault(ClientId c, const std::string& reason) {
  Client& cl = clients_[c];
  log::warn("{} faulted: {}", describe(c), reason);
  ++cl.faults;
  cl.set_error(reason, now_);
  mark_faulted(c);
}

void Upstairs::fault(ClientId c, const std::string& reason) {
  Client& cl = clients_[c];
  if (state_ != VolumeState::kActive && state_ != VolumeState::kDeactivating) {
    lose_connection(c, reason, true);
    return;
  }
  if (cl.mode == DsMode::kFaulted && cl.ds != DsState::kActive && cl.ds != DsState::kLiveRepair) {
    skip_all(c);
    return;  // already faulted
  }
  count_fault(c, reason);
  bool was_repairing = cl.ds == DsState::kLiveRepair;
  skip_all(c);
  // Drop the connection before aborting a repair: the abort runs the repair's remaining
  // steps, and a job placed while this downstairs still looked active would be sent to
  // it and never answered (found by the simulator: the aborted repair, and with it every
  // later repair, waited forever on the faulted source).
  if (cl.conn != ConnId{}) lose_connection(c, reason, true, /*counted=*/true);
  if (repair_ && (was_repairing || c == repair_->source))
    abort_live_repair(describe(c) + " faulted");
}

void Upstairs::on_disconnected(ClientId c, const std::string& reason) {
  clients_[c].set_error(reason, now_);
  lose_connection(c, reason, false);
}

void Upstairs::lose_connection(ClientId c, const std::string& reason, bool emit, bool counted) {
  Client& cl = clients_[c];
  const DsState prev = cl.ds;
  if (cl.conn != ConnId{} && emit) actions_.emplace_back(Disconnect{c, cl.conn, reason});
  cl.conn = ConnId{};
  if (prev == DsState::kIdle) return;
  const bool wanted = state_ == VolumeState::kActivating || state_ == VolumeState::kActive ||
                      state_ == VolumeState::kDeactivating;
  if (wanted)
    move(c, DsEvent::kLost, DsState::kDisconnected);
  else
    move(c, DsEvent::kStop, DsState::kIdle);
  cl.next_connect = now_ + cl.backoff;
  cl.backoff = std::min(cl.backoff * 2, config_.limits.reconnect_backoff_max);
  if (prev != DsState::kDisconnected && prev != DsState::kConnecting)
    log::info("{} disconnected ({}): {}", describe(c), status_name(prev), reason);
  rejoin_after_loss(c, prev, reason, counted);
}

// How a downstairs that lost its connection in state `prev` will come back.
void Upstairs::rejoin_after_loss(ClientId c, DsState prev, const std::string& reason,
                                 bool counted) {
  Client& cl = clients_[c];
  if (state_ == VolumeState::kActivating) {
    set_mode(c, ModeEvent::kActivate, DsMode::kNew);
    if (reconcile_) abort_reconcile(describe(c) + " disconnected");
    return;
  }
  if (prev == DsState::kActive && cl.mode != DsMode::kFaulted && cl.mode != DsMode::kReplaced) {
    if (can_replay_ && !repair_) {
      go_offline(c);
    } else {
      count_fault(c, reason + "; its jobs cannot be replayed");
      skip_all(c);
    }
  } else if (prev == DsState::kLiveRepair) {
    if (!counted) count_fault(c, reason + ", during its live repair");
    skip_all(c);
    abort_live_repair(describe(c) + " disconnected during its repair");
  } else if (prev == DsState::kReconcile || reconcile_) {
    mark_faulted(c);
    if (reconcile_) abort_reconcile(describe(c) + " disconnected");
  }
  if (repair_ && c == repair_->source)
    abort_live_repair("the repair source " + describe(c) + " is gone");
}

// Offline: new jobs are held for it and replayed when it returns; reads it had are
// retried elsewhere.
void Upstairs::go_offline(ClientId c) {
  set_mode(c, ModeEvent::kWentOffline, DsMode::kOffline);
  clients_[c].offline_since = now_;
  for (auto& [id, job] : jobs_) {
    if (job.io[c] != Io::kSent) continue;
    job.io[c] = Io::kHeld;  // both count as in flight
    if (job.kind == JobKind::kRead && !job.acked) {
      set_io(job, c, Io::kSkipped);
      retry_read(job);
    }
  }
}

void Upstairs::fence(const std::string& why) {
  if (state_ == VolumeState::kDisabled) return;
  log::error("fenced: {}; failing all IO from now on", why);
  set_state(VolumeEvent::kFenced, VolumeState::kDisabled);
  disabled_reason_ = why;
  Error e{ErrorCode::kNoLongerActive, why};
  for (auto& [id, job] : jobs_)
    if (!job.acked && job.guest) guest_done(*job.guest, tl::unexpected(e));
  for (auto& g : waiting_) guest_done(g.id, tl::unexpected(e));
  waiting_.clear();
  if (activation_guest_)
    guest_done(*std::exchange(activation_guest_, std::nullopt), tl::unexpected(e));
  if (deactivation_guest_)
    guest_done(*std::exchange(deactivation_guest_, std::nullopt), tl::unexpected(e));
  clear_jobs();
  reconcile_.reset();
  repair_.reset();
  for (ClientId c : kAllClients) lose_connection(c, "fenced", true);
}

// ---- timers ----------------------------------------------------------------------------

void Upstairs::on_tick() {
  for (ClientId c : kAllClients) check_liveness(c);
  flush_if_idle();
}

void Upstairs::check_liveness(ClientId c) {
  Client& cl = clients_[c];
  const Limits& l = config_.limits;
  if (cl.ds == DsState::kConnecting && now_ >= cl.connect_started + l.connect_timeout) {
    cl.set_error("connect timed out", now_);
    return lose_connection(c, "connect timed out", true);
  }
  if (cl.conn == ConnId{} || cl.ds == DsState::kConnecting) return;
  if (now_ >= cl.last_heard + l.client_timeout) {
    std::string why = fmt::format("silent for {} s", whole_seconds(l.client_timeout));
    cl.set_error(why, now_);
    return lose_connection(c, why, true);
  }
  if (now_ >= cl.last_ping + l.ping_interval) return ping(c);
  // Silent for half the quorum grace with work outstanding: a ping tells a downstairs
  // that is merely waiting (for a dependency, for a repair copy) from one whose process
  // or disk is stuck; only the latter stays silent until given up.
  auto silent = silent_since(c);
  if ((cl.ds == DsState::kActive || cl.ds == DsState::kLiveRepair) && silent &&
      !cl.ping_outstanding && now_ >= *silent + l.quorum_grace / 2)
    ping(c);
}

void Upstairs::ping(ClientId c) {
  clients_[c].last_ping = now_;
  clients_[c].ping_outstanding = true;
  send(c, Ruok{});
}

// Written data becomes durable soon after IO goes quiet, even if the guest never flushes.
void Upstairs::flush_if_idle() {
  if (state_ != VolumeState::kActive || !need_flush_ || config_.read_only ||
      now_ < last_io_ + config_.limits.flush_timeout)
    return;
  if (io_takers() >= 2)
    submit_flush(std::nullopt);
  else
    need_flush_ = false;
}

// ---- limits ----------------------------------------------------------------------------

namespace {

bool over_fault_limits(uint64_t jobs, uint64_t bytes, const Limits& l) {
  return jobs > l.fault_jobs || bytes > l.fault_bytes;
}

}  // namespace

void Upstairs::check_limits() {
  if (state_ != VolumeState::kActive && state_ != VolumeState::kDeactivating) return;
  for (ClientId c : kAllClients) {
    const Client& cl = clients_[c];
    if (cl.mode == DsMode::kOffline && cl.ds != DsState::kActive && cl.ds != DsState::kIdle)
      check_offline(c);
    else if (state_ == VolumeState::kDeactivating &&
             (cl.ds == DsState::kActive || cl.ds == DsState::kLiveRepair) && given_up(c))
      // Nothing waits for it any more; its jobs are skipped so deactivation can finish.
      fault(c, fmt::format("silent for {} s at deactivation",
                           whole_seconds(config_.limits.quorum_grace)));
    else
      check_lagging(c);
  }
}

// An Offline downstairs is faulted once replaying it would cost too much or cannot work.
void Upstairs::check_offline(ClientId c) {
  const Client& cl = clients_[c];
  const Limits& l = config_.limits;
  if (over_fault_limits(cl.jobs_in_flight, cl.bytes_in_flight, l))
    fault(c, fmt::format("offline with {} jobs ({}) waiting", cl.jobs_in_flight,
                         format_size(cl.bytes_in_flight)));
  else if (!can_replay_)
    fault(c, "offline, and a barrier retired jobs it would need replayed");
  else if (now_ >= cl.offline_since + l.offline_timeout)
    fault(c, "offline too long");
  else if (state_ == VolumeState::kDeactivating)
    fault(c, "offline at deactivation");
}

// Lagging far behind the others (stopped, or a slow disk): fault it so the guest does not
// wait on it. Under heavy load all three legitimately hold a lot, so the limit applies to
// how far it is behind the other two, and only while both of them are healthy.
void Upstairs::check_lagging(ClientId c) {
  Client& cl = clients_[c];
  const Limits& l = config_.limits;
  if (cl.ds != DsState::kActive || !over_fault_limits(cl.jobs_in_flight, cl.bytes_in_flight, l)) {
    cl.lagging_since.reset();
    return;
  }
  int healthy = 0;
  uint64_t others_jobs = UINT64_MAX, others_bytes = UINT64_MAX;
  for (ClientId o : kAllClients) {
    if (o == c || clients_[o].ds != DsState::kActive) continue;
    ++healthy;
    others_jobs = std::min<uint64_t>(others_jobs, clients_[o].jobs_in_flight);
    others_bytes = std::min<uint64_t>(others_bytes, clients_[o].bytes_in_flight);
  }
  const uint64_t lag_jobs = cl.jobs_in_flight - std::min<uint64_t>(cl.jobs_in_flight, others_jobs);
  const uint64_t lag_bytes =
      cl.bytes_in_flight - std::min<uint64_t>(cl.bytes_in_flight, others_bytes);
  if (healthy < 2 || !over_fault_limits(lag_jobs, lag_bytes, l)) {
    cl.lagging_since.reset();
    return;
  }
  if (!cl.lagging_since) cl.lagging_since = now_;
  if (now_ - std::max(cl.last_reply, *cl.lagging_since) >= l.stall_timeout)
    fault(c, fmt::format("{} jobs ({}) behind the others and no reply for {} s", lag_jobs,
                         format_size(lag_bytes), whole_seconds(now_ - cl.last_reply)));
}

}  // namespace cru::upstairs
