// Reconciliation: before the volume serves IO (or when all three need repair and none is
// active), every extent whose copies differ is made equal, one extent at a time: flush the
// source, close it on all, copy the source to the others, reopen it on all.
#include <fmt/format.h>

#include <algorithm>

#include "common/log.h"
#include "proto/repair_report.h"
#include "upstairs/upstairs.h"

namespace cru::upstairs {

using namespace cru::proto;

void Upstairs::start_reconcile(std::vector<ExtentMend> plan, bool while_active) {
  log::info("reconciliation: {} of {} extents differ between the downstairs", plan.size(),
            region_->extent_count);
  reconcile_total_ = plan.size();
  reconcile_done_ = 0;
  reconcile_bytes_ = 0;
  reconcile_ =
      Reconcile{std::move(plan), 0, Reconcile::Step::kFlush, RepairId{0}, {}, while_active};
  for (ClientId c : kAllClients) move(c, DsEvent::kReconcile, DsState::kReconcile);
  reconcile_step();
}

void Upstairs::reconcile_step() {
  Reconcile& r = *reconcile_;
  if (r.index >= r.plan.size()) {
    bool while_active = r.while_active;
    reconcile_.reset();
    log::info("reconciliation complete: {} extents repaired", reconcile_done_);
    if (!while_active) return finish_activation();
    for (ClientId c : kAllClients) go_active(c, DsEvent::kInSync);
    return;
  }
  const ExtentMend& m = r.plan[r.index];
  r.id = r.id.next();
  r.waiting.clear();
  auto ask = [&](ClientId c, Message msg) {
    r.waiting.push_back(c);
    send(c, std::move(msg));
  };
  switch (r.step) {
    case Reconcile::Step::kFlush:
      ask(m.source, ExtentFlush{r.id, m.extent, m.source, next_flush_, generation_});
      next_flush_ = next_flush_.next();
      break;
    case Reconcile::Step::kClose:
      for (ClientId c : kAllClients) ask(c, ExtentClose{r.id, m.extent});
      break;
    case Reconcile::Step::kRepair:
      for (ClientId d : m.dests)
        ask(d, ExtentRepair{r.id, m.extent, m.source, clients_[m.source].target, m.dests});
      break;
    case Reconcile::Step::kReopen:
      for (ClientId c : kAllClients) ask(c, ExtentReopen{r.id, m.extent});
      break;
  }
}

void Upstairs::on_repair_ack(ClientId c, const RepairAck& ack) {
  if (!reconcile_ || ack.repair_id != reconcile_->id) return;
  auto& w = reconcile_->waiting;
  auto it = std::find(w.begin(), w.end(), c);
  if (it == w.end()) return;
  if (!ack.status.is_ok()) {
    const ExtentMend& m = reconcile_->plan[reconcile_->index];
    if (reconcile_->step == Reconcile::Step::kRepair &&
        ack.status.code == ErrorCode::kHashMismatch) {
      // The source's bytes fail their own hashes: never take that copy again; the
      // re-plan repairs it from another one (or, with none left, its blocks read EIO).
      log::error("{}'s copy of extent {} is damaged (found by {} during repair)",
                 describe(m.source), m.extent, describe(c));
      found_damaged_[m.source].insert(m.extent);
    }
    return abort_reconcile(fmt::format("{} failed a reconciliation step on extent {}: {}",
                                       describe(c), reconcile_->plan[reconcile_->index].extent,
                                       Error{ack.status.code, ack.status.message}.to_string()));
  }
  if (reconcile_->step == Reconcile::Step::kRepair)
    reconcile_bytes_ += repair_transferred_bytes(ack.status).value_or(0);
  w.erase(it);
  if (!w.empty()) return;
  Reconcile& r = *reconcile_;
  switch (r.step) {
    case Reconcile::Step::kFlush:
      r.step = Reconcile::Step::kClose;
      break;
    case Reconcile::Step::kClose:
      r.step = Reconcile::Step::kRepair;
      break;
    case Reconcile::Step::kRepair:
      r.step = Reconcile::Step::kReopen;
      break;
    case Reconcile::Step::kReopen:
      for (ClientId d : r.plan[r.index].dests) found_damaged_[d].erase(r.plan[r.index].extent);
      r.step = Reconcile::Step::kFlush;
      ++r.index;
      ++reconcile_done_;
      break;
  }
  reconcile_step();
}

ClientData<std::vector<ExtentVersion>> Upstairs::reconcile_versions() const {
  ClientData<std::vector<ExtentVersion>> versions;
  for (ClientId c : kAllClients) {
    versions[c] = clients_[c].versions;
    for (ExtentId e : found_damaged_[c])
      if (e.value < versions[c].size()) versions[c][e.value].damaged = true;
  }
  return versions;
}

void Upstairs::abort_reconcile(const std::string& why) {
  if (!reconcile_) return;
  log::warn("reconciliation aborted: {}; it restarts when the downstairs reconnect", why);
  bool while_active = reconcile_->while_active;
  reconcile_.reset();
  // Every downstairs renegotiates; extents already repaired will then compare equal.
  for (ClientId c : kAllClients) {
    Client& cl = clients_[c];
    if (cl.ds == DsState::kIdle) continue;
    if (cl.conn != ConnId{})
      actions_.emplace_back(Disconnect{c, cl.conn, "reconciliation aborted"});
    cl.conn = ConnId{};
    move(c, DsEvent::kLost, DsState::kDisconnected);
    cl.next_connect = now_ + cl.backoff;
    if (while_active)
      mark_faulted(c);
    else
      set_mode(c, ModeEvent::kActivate, DsMode::kNew);
  }
}

}  // namespace cru::upstairs
