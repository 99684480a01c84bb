// Connections and negotiation (HereIAm -> YesItsMe -> PromoteToActive -> RegionInfo ->
// ExtentVersions), activation with its generation, replay for a downstairs that comes
// back from Offline, and deactivation.
#include <fmt/format.h>

#include <algorithm>

#include "common/address.h"
#include "common/log.h"
#include "proto/codec.h"
#include "upstairs/upstairs.h"

namespace cru::upstairs {

using namespace cru::proto;

// ---- activation ------------------------------------------------------------------------

void Upstairs::start_activation(GuestId id, std::optional<Generation> generation) {
  log::info("activating: connecting to {}, {}, {}", config_.targets[0], config_.targets[1],
            config_.targets[2]);
  set_state(VolumeEvent::kActivate, VolumeState::kActivating);
  activation_guest_ = id;
  requested_generation_ = generation;
  generation_settled_ = false;
  disabled_reason_.clear();
  region_.reset();
  for (ClientId c : kAllClients) {
    Client& cl = clients_[c];
    move(c, DsEvent::kActivate, DsState::kDisconnected);
    set_mode(c, ModeEvent::kActivate, DsMode::kNew);
    cl.next_connect = now_;
    cl.backoff = kReconnectBackoffMin;
    cl.last_error.clear();
    cl.missing.clear();  // reconciliation makes the three agree before any IO
  }
}

void Upstairs::connect_due() {
  for (ClientId c : kAllClients) {
    Client& cl = clients_[c];
    if (cl.ds != DsState::kDisconnected || now_ < cl.next_connect) continue;
    cl.conn = next_conn_;
    next_conn_ = next_conn_.next();
    move(c, DsEvent::kConnectDue, DsState::kConnecting);
    cl.connect_started = now_;
    ++cl.connects;
    actions_.emplace_back(ConnectTo{c, cl.conn, cl.target});
  }
}

void Upstairs::on_connected(ClientId c) {
  Client& cl = clients_[c];
  if (cl.ds != DsState::kConnecting) return;
  move(c, DsEvent::kConnected, DsState::kWaitYesItsMe);
  cl.last_heard = cl.last_ping = now_;
  cl.waiting_since.reset();
  cl.ping_outstanding = false;
  send(c,
       HereIAm{kProtocolVersion, config_.upstairs_id, config_.session_id,
               requested_generation_.value_or(generation_), config_.read_only, config_.encrypted});
}

void Upstairs::on_message(ClientId c, Message& m) {
  Client& cl = clients_[c];
  cl.last_heard = now_;
  cl.waiting_since.reset();
  cl.ping_outstanding = false;
  if (std::holds_alternative<Imok>(m)) return;
  if (std::holds_alternative<Ruok>(m)) {
    send(c, Imok{});
    return;
  }
  if (auto* gone = std::get_if<YouAreNoLongerActive>(&m)) {
    return fence(fmt::format("upstairs {} with generation {} took over (reported by {})",
                             gone->new_upstairs_id, gone->new_generation, describe(c)));
  }
  switch (cl.ds) {
    case DsState::kWaitYesItsMe:
    case DsState::kWaitActive:
    case DsState::kWaitRegionInfo:
    case DsState::kWaitVersions:
      return negotiate(c, m);
    case DsState::kReconcile:
      if (auto* ack = std::get_if<RepairAck>(&m)) return on_repair_ack(c, *ack);
      break;
    case DsState::kActive:
    case DsState::kLiveRepair:
      return on_active_message(c, m);
    case DsState::kIdle:
    case DsState::kDisconnected:
    case DsState::kConnecting:
    case DsState::kWaitPromote:
    case DsState::kWaitQuorum:
    case DsState::kLiveRepairReady:
      break;
  }
  lose_connection(
      c,
      fmt::format("protocol error: unexpected {} while {}", proto::describe(m), status_name(cl.ds)),
      true);
}

void Upstairs::on_active_message(ClientId c, Message& m) {
  if (auto* a = std::get_if<Ack>(&m)) return on_job_reply(c, a->job_id, a->status.to_status(), &m);
  if (auto* r = std::get_if<ReadResponse>(&m))
    return on_job_reply(c, r->job_id, r->status.to_status(), &m);
  if (auto* k = std::get_if<ExtentLiveCloseAck>(&m))
    return on_job_reply(c, k->job_id, k->status.to_status(), &m);
  if (auto* e = std::get_if<ErrorReport>(&m)) {
    if (e->status.code == ErrorCode::kNoLongerActive ||
        e->status.code == ErrorCode::kGenerationTooLow)
      return fence(fmt::format("{}: {}", describe(c), e->status.message));
    // Damaged extents said outside a job (a downstairs says it at the first flush after a
    // replay, as that flush's error): a live repair copies them from the others.
    if (e->status.code == ErrorCode::kCorrupt)
      return fault(c, "reports damaged extents: " + e->status.message);
    log::warn("{} reports: {}", describe(c), Error{e->status.code, e->status.message}.to_string());
    return;
  }
  lose_connection(c,
                  fmt::format("protocol error: unexpected {} while {}", proto::describe(m),
                              status_name(clients_[c].ds)),
                  true);
}

// ---- negotiation -----------------------------------------------------------------------

void Upstairs::negotiate(ClientId c, Message& m) {
  if (refused(c, m)) return;
  switch (clients_[c].ds) {
    case DsState::kWaitYesItsMe:
      if (auto* y = std::get_if<YesItsMe>(&m)) return on_yes_its_me(c, *y);
      break;
    case DsState::kWaitActive:
      if (auto* a = std::get_if<YouAreNowActive>(&m)) return on_now_active(c, *a);
      break;
    case DsState::kWaitRegionInfo:
      if (auto* ri = std::get_if<RegionInfo>(&m)) return on_region_info(c, ri->region);
      break;
    case DsState::kWaitVersions:
      if (auto* ev = std::get_if<ExtentVersions>(&m)) return on_versions(c, std::move(ev->extents));
      break;
    default:
      CRU_UNREACHABLE("negotiate() called outside negotiation");
  }
  lose_connection(c,
                  fmt::format("protocol error: unexpected {} during negotiation ({})",
                              proto::describe(m), status_name(clients_[c].ds)),
                  true);
}

void Upstairs::refuse(ClientId c, ErrorCode code, std::string why) {
  clients_[c].set_error(why, now_);
  if (state_ == VolumeState::kActivating)
    return fail_activation(Error{code, describe(c) + ": " + why});
  log::warn("{}: {}", describe(c), why);
  if (state_ == VolumeState::kActive || state_ == VolumeState::kDeactivating) fault(c, why);
  lose_connection(c, why, true);
}

bool Upstairs::refused(ClientId c, const Message& m) {
  if (auto* v = std::get_if<VersionMismatch>(&m)) {
    refuse(c, ErrorCode::kVersionMismatch,
           fmt::format("speaks protocol version {}, this upstairs speaks version {}", v->version,
                       kProtocolVersion));
  } else if (auto* ro = std::get_if<ReadOnlyMismatch>(&m)) {
    refuse(c, ErrorCode::kReadOnlyMismatch,
           fmt::format("the downstairs is {} but this volume is {}",
                       ro->expected ? "read-only" : "read-write",
                       config_.read_only ? "read-only" : "read-write"));
  } else if (auto* en = std::get_if<EncryptedMismatch>(&m)) {
    refuse(c, ErrorCode::kEncryptionMismatch,
           fmt::format("the region is {} but this volume {}",
                       en->expected ? "encrypted" : "not encrypted",
                       config_.encrypted ? "has a key" : "has no key"));
  } else if (auto* er = std::get_if<ErrorReport>(&m)) {
    // Refused for its generation once active: another upstairs has a newer one (or took
    // over and left). Writing on through the other two would split the volume: stop.
    if (er->status.code == ErrorCode::kGenerationTooLow &&
        (state_ == VolumeState::kActive || state_ == VolumeState::kDeactivating))
      fence(fmt::format("{} refused generation {}: {}", describe(c), generation_,
                        er->status.message));
    else
      refuse(c, er->status.code, er->status.message);
  } else if (std::holds_alternative<UuidMismatch>(m)) {
    refuse(c, ErrorCode::kUuidMismatch, "the downstairs reports an id mismatch");
  } else {
    return false;
  }
  return true;
}

void Upstairs::protocol_violation(ClientId c, const std::string& what) {
  std::string why = "protocol error: " + what;
  clients_[c].set_error(why, now_);
  log::warn("{}: {}", describe(c), why);
  // Active: a downstairs that breaks the protocol no longer holds a trusted replica.
  fault(c, why);
}

void Upstairs::on_yes_its_me(ClientId c, const YesItsMe& y) {
  Client& cl = clients_[c];
  // Handed to the other downstairs as a repair source: it must be a usable address.
  if (auto a = parse_address(y.repair_addr); !a)
    return protocol_violation(c, "YesItsMe repair address: " + a.error().message);
  cl.highest_generation = y.highest_generation;
  if (state_ == VolumeState::kActivating) {
    move(c, DsEvent::kYesItsMe, DsState::kWaitPromote);
    return promote_all_if_ready();
  }
  // Reconnecting: a replica that has seen a newer generation has a newer upstairs.
  if (y.highest_generation > generation_)
    return fence(fmt::format("{} has seen generation {}, above ours ({})", describe(c),
                             y.highest_generation, generation_));
  move(c, DsEvent::kYesItsMe, DsState::kWaitActive);
  send(c, PromoteToActive{config_.upstairs_id, config_.session_id, generation_});
}

void Upstairs::on_now_active(ClientId c, const YouAreNowActive& a) {
  if (a.upstairs_id != config_.upstairs_id || a.session_id != config_.session_id ||
      a.generation != generation_)
    return refuse(c, ErrorCode::kUuidMismatch,
                  "YouAreNowActive does not echo our ids and generation");
  move(c, DsEvent::kNowActive, DsState::kWaitRegionInfo);
  send(c, RegionInfoPlease{});
}

void Upstairs::on_region_info(ClientId c, const RegionDefinition& d) {
  Client& cl = clients_[c];
  // Checked before anything divides by it or sizes a table with it.
  if (Status s = check_region(d); !s) return protocol_violation(c, s.error().message);
  if (d.encrypted != config_.encrypted)
    return refuse(c, ErrorCode::kEncryptionMismatch,
                  fmt::format("the region is {}encrypted but this volume is {}",
                              d.encrypted ? "" : "not ", config_.encrypted ? "encrypted" : "not"));
  if (region_ && (d.block_size != region_->block_size || d.extent_size != region_->extent_size ||
                  d.extent_count != region_->extent_count))
    return refuse(c, ErrorCode::kInvalidArgument,
                  fmt::format("geometry mismatch: this region has {} extents x {} blocks x {} "
                              "bytes, the others {} x {} x {}",
                              d.extent_count, d.extent_size, d.block_size, region_->extent_count,
                              region_->extent_size, region_->block_size));
  if (cl.region_uuid && *cl.region_uuid != d.uuid && cl.mode != DsMode::kReplaced)
    return refuse(
        c, ErrorCode::kUuidMismatch,
        fmt::format("now serves region {}, it served {} before", d.uuid, *cl.region_uuid));
  if (!region_) region_ = d;
  cl.region_uuid = d.uuid;
  if (cl.mode == DsMode::kOffline && state_ != VolumeState::kActivating) return replay(c);
  move(c, DsEvent::kRegionInfo, DsState::kWaitVersions);
  send(c, ExtentVersionsPlease{});
}

void Upstairs::on_versions(ClientId c, std::vector<ExtentVersion> versions) {
  if (versions.size() != region_->extent_count)
    return refuse(c, ErrorCode::kProtocol,
                  fmt::format("reported {} extents, the region has {}", versions.size(),
                              region_->extent_count));
  clients_[c].versions = std::move(versions);
  if (auto n = std::count_if(clients_[c].versions.begin(), clients_[c].versions.end(),
                             [](const ExtentVersion& v) { return v.damaged; });
      n > 0)
    log::warn("{} reports {} damaged extents: they are repaired from the other downstairs",
              describe(c), n);
  if (state_ == VolumeState::kActivating) {
    move(c, DsEvent::kVersions, DsState::kWaitQuorum);
    return collate_if_ready();
  }
  if (config_.read_only) return go_active(c, DsEvent::kVersions);  // nobody writes: no repair
  move(c, DsEvent::kVersions, DsState::kLiveRepairReady);
  log::info("{} is ready for live repair", describe(c));
}

void Upstairs::promote_all_if_ready() {
  for (const Client& cl : clients_)
    if (cl.ds != DsState::kWaitPromote) return;
  if (!generation_settled_) {
    if (Status s = settle_generation(); !s) return fail_activation(s.error());
    generation_settled_ = true;
  }
  for (ClientId c : kAllClients) {
    move(c, DsEvent::kPromote, DsState::kWaitActive);
    send(c, PromoteToActive{config_.upstairs_id, config_.session_id, generation_});
  }
}

// The activation's generation: the one asked for, which must be higher than any the
// downstairs have seen, or one above the highest.
Status Upstairs::settle_generation() {
  Generation seen;
  ClientId who;
  for (ClientId c : kAllClients) {
    if (clients_[c].highest_generation >= seen) {
      seen = clients_[c].highest_generation;
      who = c;
    }
  }
  if (!requested_generation_) {
    generation_ = seen.next();
    return {};
  }
  if (requested_generation_->value == 0)
    return fail(ErrorCode::kGenerationTooLow, "generation 0 is not allowed");
  if (*requested_generation_ <= seen)
    return fail(ErrorCode::kGenerationTooLow,
                fmt::format("generation {} is not higher than generation {} already used on {}",
                            *requested_generation_, seen, describe(who)));
  generation_ = *requested_generation_;
  return {};
}

void Upstairs::collate_if_ready() {
  for (const Client& cl : clients_)
    if (cl.ds != DsState::kWaitQuorum) return;
  uint64_t max_flush = 0;
  for (const Client& cl : clients_)
    for (const auto& v : cl.versions) max_flush = std::max(max_flush, v.flush.value);
  next_flush_ = FlushNumber{max_flush + 1};
  if (config_.read_only) return finish_activation();
  auto versions = reconcile_versions();
  for (size_t e = 0; e < region_->extent_count; ++e)
    if (std::all_of(kAllClients.begin(), kAllClients.end(),
                    [&](ClientId c) { return versions[c][e].damaged; }))
      log::error(
          "extent {} is damaged on every downstairs: no copy to repair it from; its "
          "damaged blocks read as errors",
          e);
  auto plan = plan_mend(versions, {kAllClients.begin(), kAllClients.end()});
  if (plan.empty()) return finish_activation();
  start_reconcile(std::move(plan), false);
}

void Upstairs::fail_activation(const Error& e) {
  log::error("activation failed: {}", e.to_string());
  set_state(VolumeEvent::kActivationFailed, VolumeState::kInitializing);
  reconcile_.reset();
  if (activation_guest_)
    guest_done(*std::exchange(activation_guest_, std::nullopt), tl::unexpected(e));
  for (ClientId c : kAllClients) lose_connection(c, "activation failed", true);
}

void Upstairs::go_active(ClientId c, DsEvent e) {
  move(c, e, DsState::kActive);
  set_mode(c, ModeEvent::kRejoined, DsMode::kNew);
  // Replayed, reconciled or live-repaired to the end: it holds every write.
  clients_[c].missing.clear();
  clients_[c].backoff = kReconnectBackoffMin;
}

void Upstairs::finish_activation() {
  for (ClientId c : kAllClients) go_active(c, DsEvent::kInSync);
  set_state(VolumeEvent::kActivated, VolumeState::kActive);
  log::info("active: generation {}, {} extents x {} blocks x {} bytes", generation_,
            region_->extent_count, region_->extent_size, region_->block_size);
  if (activation_guest_) guest_done(*std::exchange(activation_guest_, std::nullopt), {});
}

// Back from Offline: it is told its last completed flush and sent every job after it.
void Upstairs::replay(ClientId c) {
  Client& cl = clients_[c];
  send(c, LastFlush{cl.last_flush});
  go_active(c, DsEvent::kRegionInfo);
  ++cl.replays;
  uint64_t n = 0;
  for (auto& [id, job] : jobs_) {
    if (id <= cl.last_flush) continue;
    Io io = job.io[c];
    if (io == Io::kSkipped || io == Io::kNone) continue;
    send_job(c, job);  // in id order, including jobs it had done: it may have lost them
    ++n;
  }
  log::info("{} is back: replayed {} jobs after job {}", describe(c), n, cl.last_flush);
  // Its first flush after the replay tells whether damage is left that the replay could
  // not heal (see LastFlush in the downstairs): make sure one comes, even if idle.
  need_flush_ = true;
}

// ---- deactivation ----------------------------------------------------------------------

void Upstairs::progress_deactivation() {
  if (state_ != VolumeState::kDeactivating || !waiting_.empty()) return;
  for (const auto& [id, job] : jobs_)
    for (ClientId c : kAllClients)
      if (in_flight(job.io[c])) return;
  Status result = deactivation_result();
  log::info("deactivated");
  set_state(VolumeEvent::kDeactivated, VolumeState::kInitializing);
  repair_.reset();
  deactivation_flush_.reset();
  deactivation_status_.reset();
  clear_jobs();
  for (ClientId c : kAllClients) lose_connection(c, "deactivated", true);
  if (deactivation_guest_) guest_done(*std::exchange(deactivation_guest_, std::nullopt), result);
}

Status Upstairs::deactivation_result() const {
  if (deactivation_status_) {
    if (*deactivation_status_) return {};
    return fail(ErrorCode::kIo,
                "the final flush did not reach quorum: " + deactivation_status_->error().message);
  }
  // Nothing in flight and still undecided: waiting on a live repair that stopped here.
  if (deactivation_flush_)
    return fail(ErrorCode::kIo,
                "the final flush did not reach quorum: fewer than 2 downstairs hold every write "
                "before it");
  return {};
}

void Upstairs::clear_jobs() {
  jobs_.clear();
  fences_.clear();
  reserved_.clear();
  deps_ = BlockMap{};
  for (Client& cl : clients_)
    cl.jobs_in_flight = cl.bytes_in_flight = cl.jobs_finished = cl.bytes_finished = 0;
}

}  // namespace cru::upstairs
