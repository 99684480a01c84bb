// Live repair: a faulted or replaced downstairs is brought back while guest IO goes on,
// extent by extent (close on all / flush-close on the healthy ones, copy where it differs,
// reopen), then a final flush. IO to the extent under repair waits for its reopen; IO
// above the repair point skips the downstairs under repair.
#include <fmt/format.h>

#include <algorithm>

#include "common/log.h"
#include "upstairs/upstairs.h"

namespace cru::upstairs {

using namespace cru::proto;

void Upstairs::start_live_repair_if_ready() {
  if (state_ != VolumeState::kActive || repair_ || reconcile_ || config_.read_only) return;
  std::vector<ClientId> targets, sources;
  for (ClientId c : kAllClients) {
    if (clients_[c].ds == DsState::kLiveRepairReady) targets.push_back(c);
    if (clients_[c].ds == DsState::kActive) sources.push_back(c);
  }
  if (targets.empty()) return;
  if (sources.empty()) {
    if (targets.size() == kClientCount) reconcile_all_ready();
    return;  // else wait for the others to come back
  }
  // Replay is impossible across a repair, so a repair started now would fault an Offline
  // downstairs that is likely back in a moment with everything replayed. Wait for it (or
  // for its offline timeout to fault it): faulting it would leave one complete copy, and
  // every flush would fail until the repair ends (found by the simulator: a replica back
  // from a crash with a torn block was repaired while another had just restarted).
  for (ClientId c : kAllClients)
    if (clients_[c].mode == DsMode::kOffline && clients_[c].ds != DsState::kActive) return;
  repair_ = LiveRepair{};
  repair_->targets = targets;
  // Each abort moves to the next healthy source, so one with a damaged extent (the
  // target refuses a copy that fails its hashes) cannot fail every attempt.
  repair_->source = sources[repairs_aborted_ % sources.size()];
  repair_->started = now_;
  for (ClientId t : targets) {
    move(t, DsEvent::kLiveRepairStart, DsState::kLiveRepair);
    ++clients_[t].live_repairs;
  }
  log::info("live repair of {} from {}: {} extents", describe(targets.front()),
            describe(repair_->source), region_->extent_count);
  repair_begin_extent();
}

void Upstairs::reconcile_all_ready() {
  // Nobody is left to copy from: reconcile the three as at activation.
  auto versions = reconcile_versions();
  auto plan = plan_mend(versions, {kAllClients.begin(), kAllClients.end()});
  if (plan.empty()) {
    for (ClientId c : kAllClients) go_active(c, DsEvent::kInSync);
    return;
  }
  start_reconcile(std::move(plan), true);
}

bool Upstairs::is_repair_target(ClientId c) const {
  return repair_ &&
         std::find(repair_->targets.begin(), repair_->targets.end(), c) != repair_->targets.end();
}

std::optional<ExtentId> Upstairs::repair_extent_limit(ClientId c) const {
  if (!repair_ || clients_[c].ds != DsState::kLiveRepair) return std::nullopt;
  if (repair_->extent.value >= region_->extent_count) return std::nullopt;
  // Extents above the repair point have not been copied yet: stamping them with new
  // flush numbers would make them look current and skip their copy.
  return repair_->extent;
}

void Upstairs::repair_begin_extent() {
  LiveRepair& r = *repair_;
  const uint64_t es = region_->extent_size;
  BlockRange range{static_cast<uint64_t>(r.extent.value) * es, es};
  r.close_id = new_job_id();
  r.repair_id = new_job_id();
  r.reopen_id = new_job_id();
  reserved_.insert(r.repair_id);  // created once the close completes
  // Created once the repair completes on every downstairs: the source must keep the
  // extent closed until every target has copied it, and on the source the repair job is
  // a no-op that completes at once (found by the simulator: the source reopened the
  // extent mid-copy and the copy failed, forever).
  reserved_.insert(r.reopen_id);
  // The close follows every earlier job on the extent; every later one follows the reopen.
  std::vector<JobId> close_deps = deps_.add_blocking(r.close_id, range);
  deps_.add_blocking(r.reopen_id, range);
  Job& close = create_job(JobKind::kLiveClose, r.close_id, std::move(close_deps));
  close.range = range;
  close.extent = r.extent;
  close.flush_number = next_flush_;
  next_flush_ = next_flush_.next();
  close.acked = true;
  place(close);
  r.step = LiveRepair::Step::kClosing;
}

void Upstairs::repair_progress() {
  while (repair_) {
    bool advanced = false;
    switch (repair_->step) {
      case LiveRepair::Step::kClosing:
        advanced = repair_closed();
        break;
      case LiveRepair::Step::kRepairing:
        advanced = repair_copied();
        break;
      case LiveRepair::Step::kReopening:
        advanced = repair_reopened();
        break;
      case LiveRepair::Step::kFinalFlush:
        advanced = repair_flushed();
        break;
    }
    if (!advanced) return;
  }
}

// Copy only where the target differs from the source (or is dirty). A replacement is
// another region whose equal numbers prove nothing: every extent is copied (only its
// chunks that differ cross the network, and only those count as transferred).
std::vector<ClientId> Upstairs::repair_dests(const Job& close) const {
  const LiveRepair& r = *repair_;
  std::vector<ClientId> dests;
  if (r.aborting || close.io[r.source] != Io::kDone) return dests;
  const ExtentVersion& src = close.close_versions[r.source];
  for (ClientId t : r.targets) {
    const ExtentVersion& v = close.close_versions[t];
    if (close.io[t] == Io::kDone && (v.dirty || v != src || clients_[t].mode == DsMode::kReplaced ||
                                     clients_[t].suspect_extents.contains(r.extent)))
      dests.push_back(t);
  }
  return dests;
}

bool Upstairs::repair_closed() {
  LiveRepair& r = *repair_;
  Job& close = jobs_.at(r.close_id);
  if (!complete_on_all(close)) return false;
  std::vector<ClientId> dests = repair_dests(close);
  Job& repair = create_job(dests.empty() ? JobKind::kLiveNoOp : JobKind::kLiveRepair, r.repair_id,
                           {r.close_id});
  repair.range = close.range;
  repair.extent = close.extent;
  repair.repair_dests = std::move(dests);
  repair.acked = true;
  r.closed_targets.clear();
  for (ClientId t : r.targets)
    if (!r.aborting && close.io[t] == Io::kDone) r.closed_targets.push_back(t);
  if (!r.aborting) {
    if (repair.repair_dests.empty()) {
      ++r.extents_confirmed;
    } else {
      ++r.extents_repaired;  // its bytes count as the targets report them (acks.cc)
    }
  }
  place(repair);
  r.step = LiveRepair::Step::kRepairing;
  return true;
}

bool Upstairs::repair_copied() {
  LiveRepair& r = *repair_;
  Job& repair = jobs_.at(r.repair_id);
  if (!complete_on_all(repair)) return false;
  for (ClientId t : repair.repair_dests)
    if (repair.io[t] == Io::kDone) clients_[t].suspect_extents.erase(r.extent);
  // Copied from the source, or found equal to it: the extent holds every write before its
  // close, and every later write to it is sent here (it waits for the reopen).
  for (ClientId t : r.closed_targets)
    if (!r.aborting && repair.io[t] == Io::kDone) clients_[t].missing.repaired(r.extent);
  Job& reopen = create_job(JobKind::kLiveReopen, r.reopen_id, {r.repair_id});
  reopen.range = repair.range;
  reopen.extent = repair.extent;
  reopen.acked = true;
  place(reopen);
  r.step = LiveRepair::Step::kReopening;
  return true;
}

bool Upstairs::repair_reopened() {
  LiveRepair& r = *repair_;
  if (!complete_on_all(jobs_.at(r.reopen_id))) return false;
  r.extent = r.extent.next();
  if (r.extent.value < region_->extent_count && !r.aborting) {
    repair_begin_extent();
  } else {
    r.final_flush_id = submit_flush(std::nullopt);
    r.step = LiveRepair::Step::kFinalFlush;
  }
  return true;
}

bool Upstairs::repair_flushed() {
  LiveRepair& r = *repair_;
  Job& flush = jobs_.at(r.final_flush_id);
  if (!complete_on_all(flush)) return false;
  if (r.aborting) {
    ++repairs_aborted_;
    log::warn("live repair aborted after {} extents; it restarts when the downstairs returns",
              r.extent);
  } else {
    ++repairs_completed_;
    for (ClientId t : r.targets) {
      if (clients_[t].ds == DsState::kLiveRepair && flush.io[t] == Io::kDone) {
        go_active(t, DsEvent::kLiveRepairDone);
        // Its extents now hold the source's bytes: a damage found before is stale, and
        // keeping it could later pass over this good copy as a reconciliation source.
        found_damaged_[t].clear();
        log::info("live repair of {} complete: {} extents copied, {} already equal", describe(t),
                  r.extents_repaired, r.extents_confirmed);
      }
    }
  }
  repair_.reset();
  return true;
}

void Upstairs::abort_live_repair(const std::string& why) {
  if (!repair_ || repair_->aborting) return;
  log::warn("aborting live repair: {}", why);
  repair_->aborting = true;
  // Jobs already issued may depend on the reserved ids: the machine runs on with no-ops
  // (see repair_progress), and the targets come back through LiveRepairReady.
  for (ClientId t : repair_->targets)
    if (clients_[t].ds == DsState::kLiveRepair) fault(t, "live repair aborted: " + why);
  repair_progress();
}

}  // namespace cru::upstairs
