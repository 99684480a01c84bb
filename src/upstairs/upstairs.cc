// The entry point, the state moves every other file goes through, maintenance after every
// event, and the status snapshot.
#include "upstairs/upstairs.h"

#include <fmt/format.h>

#include <algorithm>

#include "common/log.h"
#include "common/overloaded.h"

namespace cru::upstairs {

Upstairs::Upstairs(Config config) : config_(std::move(config)) {
  for (ClientId c : kAllClients) clients_[c].target = config_.targets[c.value];
}

std::string Upstairs::describe(ClientId c) const {
  return fmt::format("downstairs {} ({})", c, clients_[c].target);
}

// ---- the entry point -------------------------------------------------------------------

std::vector<Action> Upstairs::apply(Event event, TimePoint now) {
  now_ = now;
  actions_.clear();
  // Events from a connection the core already gave up on are stale.
  auto current = [&](ClientId c, ConnId conn) {
    return conn == clients_[c].conn && conn != ConnId{};
  };
  std::visit(Overloaded{
                 [&](GuestSubmit& g) { on_guest(std::move(g)); },
                 [&](ClientConnected& e) {
                   if (current(e.client, e.conn)) on_connected(e.client);
                 },
                 [&](ClientMessage& e) {
                   if (current(e.client, e.conn)) on_message(e.client, e.message);
                 },
                 [&](ClientDisconnected& e) {
                   if (current(e.client, e.conn)) on_disconnected(e.client, e.reason);
                 },
                 [&](ClientSent& e) {
                   if (current(e.client, e.conn)) clients_[e.client].last_sent = now_;
                 },
                 [&](Tick&) { on_tick(); },
             },
             event);
  maintain();
  return std::move(actions_);
}

void Upstairs::maintain() {
  check_limits();
  start_live_repair_if_ready();
  // Before retire(): a live-repair step whose job just completed everywhere (also by being
  // skipped, when a downstairs faulted) takes it now, or retire() could drop the job the
  // step still reads (found by tests/fuzz/fuzz_upstairs.cc: the close job of an extent
  // retired behind a flush, then abort_live_repair() looked it up).
  repair_progress();
  revisit_waiting_io();
  retire();
  barrier_if_due();
  admit_waiting();
  progress_deactivation();
  connect_due();
}

TimePoint Upstairs::next_deadline() const {
  const Limits& l = config_.limits;
  TimePoint d = TimePoint::max();
  if (state_ == VolumeState::kActive && need_flush_ && !config_.read_only)
    d = std::min(d, last_io_ + l.flush_timeout);
  for (const Client& cl : clients_) {
    if (cl.ds == DsState::kDisconnected) d = std::min(d, cl.next_connect);
    if (cl.ds == DsState::kConnecting) d = std::min(d, cl.connect_started + l.connect_timeout);
    if (cl.conn != ConnId{} && cl.ds != DsState::kConnecting) {
      d = std::min(d, cl.last_ping + l.ping_interval);
      d = std::min(d, cl.last_heard + l.client_timeout);
    }
    if (cl.mode == DsMode::kOffline && cl.ds != DsState::kActive && state_ == VolumeState::kActive)
      d = std::min(d, cl.offline_since + l.offline_timeout);
    if (cl.lagging_since)
      d = std::min(d, std::max(cl.last_reply, *cl.lagging_since) + l.stall_timeout);
  }
  // The quorum grace: when a downstairs unable to take IO is given up, and the ping that
  // tells a silent one (its disk or process stuck) from one that waits for a dependency.
  if (state_ == VolumeState::kActive || state_ == VolumeState::kDeactivating) {
    for (ClientId c : kAllClients) {
      auto since = unavailable_since(c);
      if (!since) continue;
      if (*since + l.quorum_grace > now_) d = std::min(d, *since + l.quorum_grace);
      const Client& cl = clients_[c];
      const bool serving_io = cl.ds == DsState::kActive || cl.ds == DsState::kLiveRepair;
      if (serving_io && !cl.ping_outstanding && *since + l.quorum_grace / 2 > now_)
        d = std::min(d, *since + l.quorum_grace / 2);
    }
  }
  return d;
}

// ---- state moves -----------------------------------------------------------------------

void Upstairs::set_state(VolumeEvent e, VolumeState to) {
  if (state_ == to) return;
  if (!is_legal(state_, e, to))
    CRU_UNREACHABLE(
        fmt::format("volume: no move from {} on {} to {}", name(state_), name(e), name(to)));
  state_ = to;
}

void Upstairs::move(ClientId c, DsEvent e, DsState to) {
  DsState& ds = clients_[c].ds;
  if (ds == to) return;
  if (!is_legal(ds, e, to))
    CRU_UNREACHABLE(
        fmt::format("{}: no move from {} on {} to {}", describe(c), name(ds), name(e), name(to)));
  ds = to;
}

void Upstairs::set_mode(ClientId c, ModeEvent e, DsMode to) {
  DsMode& mode = clients_[c].mode;
  if (mode == to) return;
  if (!is_legal(mode, e, to))
    CRU_UNREACHABLE(fmt::format("{}: no mode move from {} on {} to {}", describe(c), name(mode),
                                name(e), name(to)));
  mode = to;
}

bool Upstairs::takes_io(ClientId c) const {
  return counts_for_write_quorum(clients_[c].ds, clients_[c].mode);
}

int Upstairs::io_takers() const {
  return static_cast<int>(std::count_if(kAllClients.begin(), kAllClients.end(),
                                        [&](ClientId c) { return takes_io(c) && !given_up(c); }));
}

std::optional<TimePoint> Upstairs::silent_since(ClientId c) const {
  const Client& cl = clients_[c];
  if (cl.jobs_in_flight == 0 && !cl.ping_outstanding) return std::nullopt;
  // A downstairs still taking bytes is slow (a loaded link, a deep queue), not stuck: only
  // one that neither answers nor reads (a stopped process, a dead host) is given up.
  return std::max(cl.waiting_since.value_or(cl.last_heard), cl.last_sent);
}

std::optional<TimePoint> Upstairs::unavailable_since(ClientId c) const {
  const Client& cl = clients_[c];
  if (cl.ds == DsState::kActive || cl.ds == DsState::kLiveRepair) return silent_since(c);
  if (cl.mode == DsMode::kOffline) return cl.offline_since;  // its jobs wait for replay
  return TimePoint::min();
}

bool Upstairs::given_up(ClientId c) const {
  auto since = unavailable_since(c);
  return since && *since + config_.limits.quorum_grace <= now_;
}

// ---- status ----------------------------------------------------------------------------

namespace {

std::string volume_status(VolumeState s, bool reconciling) {
  if (s == VolumeState::kActivating && reconciling) return "reconciling";
  return std::string(name(s));
}

std::string client_status(DsState ds, DsMode mode) {
  std::string state(status_name(ds));
  if (ds == DsState::kActive || ds == DsState::kIdle) return state;
  switch (mode) {
    case DsMode::kNew:
      return state;
    case DsMode::kOffline:
      return "offline (" + state + ")";
    case DsMode::kFaulted:
    case DsMode::kReplaced:
      if (ds == DsState::kLiveRepair) return state;
      return std::string(name(mode)) + " (" + state + ")";
  }
  CRU_UNREACHABLE("downstairs mode");
}

}  // namespace

Snapshot Upstairs::snapshot() const {
  Snapshot s;
  s.state = volume_status(state_, reconcile_.has_value());
  s.generation = generation_;
  s.region = region_;
  for (ClientId c : kAllClients) {
    const Client& cl = clients_[c];
    ClientStatus& o = s.clients[c];
    o.target = cl.target;
    o.region_uuid = cl.region_uuid;
    o.state = client_status(cl.ds, cl.mode);
    o.jobs_in_flight = cl.jobs_in_flight;
    o.bytes_in_flight = cl.bytes_in_flight;
    o.last_error = cl.last_error;
    if (!cl.last_error.empty())
      o.last_error_age_s = std::chrono::duration<double>(now_ - cl.last_error_at).count();
    o.connects = cl.connects;
    o.faults = cl.faults;
    o.replays = cl.replays;
    o.live_repairs = cl.live_repairs;
    o.self_heals = cl.self_heals;
  }
  s.jobs = jobs_.size();
  s.guest_waiting = waiting_.size();
  s.reads = reads_;
  s.writes = writes_;
  s.discards = discards_;
  s.flushes = flushes_;
  s.barriers = barriers_;
  s.read_bytes = read_bytes_;
  s.write_bytes = write_bytes_;
  s.reconcile_extents_total = reconcile_total_;
  s.reconcile_extents_done = reconcile_done_;
  s.reconcile_bytes_transferred = reconcile_bytes_;
  s.reconciling = reconcile_.has_value();
  s.live_repairs_completed = repairs_completed_;
  s.live_repairs_aborted = repairs_aborted_;
  s.disabled_reason = disabled_reason_;
  s.complete_copies =
      static_cast<uint32_t>(std::count_if(kAllClients.begin(), kAllClients.end(), [&](ClientId c) {
        return clients_[c].ds == DsState::kActive && !given_up(c);
      }));
  const bool serving = state_ == VolumeState::kActive || state_ == VolumeState::kDeactivating;
  s.degraded = serving && s.complete_copies < kClientCount;
  s.quorum_lost = serving && !config_.read_only && io_takers() < 2;
  if (repair_ && region_) {
    RepairStatus& r = s.repair;
    r.running = true;
    r.targets = repair_->targets;
    r.source = repair_->source;
    r.extent = repair_->extent;
    r.extent_count = region_->extent_count;
    r.extents_repaired = repair_->extents_repaired;
    r.extents_confirmed = repair_->extents_confirmed;
    r.bytes_transferred = repair_->bytes_transferred;
    double secs = std::chrono::duration<double>(now_ - repair_->started).count();
    if (secs > 0 && repair_->extent.value > 0) {
      r.rate_bytes_per_s = static_cast<double>(r.bytes_transferred) / secs;
      double per_extent = secs / repair_->extent.value;
      r.eta_s = per_extent * (region_->extent_count - repair_->extent.value);
    }
  }
  return s;
}

}  // namespace cru::upstairs
