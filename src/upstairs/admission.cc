// Guest operations become jobs: admission (limits, quorum, range checks), one job id per
// job from one counter, dependencies from the block map, and placement on each
// downstairs (sent, held for replay, or skipped).
#include <fmt/format.h>

#include <algorithm>

#include "common/log.h"
#include "common/overloaded.h"
#include "proto/limits.h"
#include "proto/snapshot_name.h"
#include "upstairs/upstairs.h"

namespace cru::upstairs {

using namespace cru::proto;

bool Upstairs::in_flight(Io io) {
  switch (io) {
    case Io::kHeld:
    case Io::kSent:
      return true;
    case Io::kNone:
    case Io::kDone:
    case Io::kSkipped:
    case Io::kError:
      return false;
  }
  CRU_UNREACHABLE("job io state");
}

bool Upstairs::finished(Io io) {
  switch (io) {
    case Io::kDone:
    case Io::kSkipped:
    case Io::kError:
      return true;
    case Io::kNone:
    case Io::kHeld:
    case Io::kSent:
      return false;
  }
  CRU_UNREACHABLE("job io state");
}

bool Upstairs::writes_blocks(JobKind k) {
  return k == JobKind::kWrite || k == JobKind::kWriteUnwritten || k == JobKind::kDiscard;
}

// ---- guest operations ----------------------------------------------------------------

void Upstairs::on_guest(GuestSubmit g) {
  waiting_.push_back(std::move(g));
  // admit_waiting() runs in maintain(): operations are taken strictly in order.
}

void Upstairs::admit_waiting() {
  while (!waiting_.empty()) {
    if (!admit(waiting_.front())) return;  // waits for room; later operations wait behind it
    waiting_.pop_front();
  }
}

bool Upstairs::admit(const GuestSubmit& g) {
  return std::visit(Overloaded{
                        [&](const ReadOp& op) { return admit_read(g.id, op); },
                        [&](const WriteOp& op) { return admit_write(g.id, op); },
                        [&](const DiscardOp& op) { return admit_discard(g.id, op); },
                        [&](const FlushOp& op) { return admit_flush(g.id, op); },
                        [&](const ActivateOp& op) { return admit_activate(g.id, op); },
                        [&](const DeactivateOp&) { return admit_deactivate(g.id); },
                        [&](const ReplaceOp& op) { return admit_replace(g.id, op); },
                    },
                    g.op);
}

bool Upstairs::admit_read(GuestId g, const ReadOp& op) {
  if (refuse_unless_active(g)) return true;
  if (auto s = check_range(op.start, op.count, kMaxIoBytes / region_->block_size); !s) {
    guest_done(g, s);
    return true;
  }
  // The least loaded active downstairs; reads go to one replica and are verified.
  std::optional<ClientId> best = pick_reader({});
  if (!best) {
    guest_done(g, fail(ErrorCode::kQuorumLost, "no downstairs is active to read from"));
    return true;
  }
  uint64_t bytes = static_cast<uint64_t>(op.count) * region_->block_size;
  if (!has_room_on(*best, bytes)) return false;
  start_read(g, BlockRange{op.start.value, op.count}, bytes, {}, op.trace);
  ++reads_;
  read_bytes_ += bytes;
  note_io();
  return true;
}

bool Upstairs::admit_write(GuestId g, const WriteOp& op) {
  if (refuse_unless_active(g) || refuse_if_read_only(g)) return true;
  Status s = check_range(op.start, op.contexts.size(), kMaxIoBytes / region_->block_size);
  if (s && op.data.size() != op.contexts.size() * region_->block_size)
    s = fail(ErrorCode::kInvalidArgument, "write data does not match its block count");
  if (s) s = check_quorum("writes");
  if (!s) {
    guest_done(g, s);
    return true;
  }
  const BlockRange range{op.start.value, op.contexts.size()};
  const JobKind kind = op.only_unwritten ? JobKind::kWriteUnwritten : JobKind::kWrite;
  if (!has_room(kind, range, op.data.size())) return false;
  JobId id = new_job_id();
  Job& job = create_job(kind, id, deps_.add_blocking(id, range));
  job.range = range;
  job.bytes = op.data.size();
  job.contexts = op.contexts;
  job.data = op.data;
  job.acked = true;
  job.trace = op.trace;
  place(job);
  // Write-back: acknowledged once queued; durable at the next flush.
  guest_done(g, {});
  ++writes_;
  write_bytes_ += job.bytes;
  note_io();
  return true;
}

bool Upstairs::admit_discard(GuestId g, const DiscardOp& op) {
  if (refuse_unless_active(g) || refuse_if_read_only(g)) return true;
  Status s = check_range(op.start, op.count, kMaxDiscardBlocks);
  if (s) s = check_quorum("discards");
  if (!s) {
    guest_done(g, s);
    return true;
  }
  const BlockRange range{op.start.value, op.count};
  if (!has_room(JobKind::kDiscard, range, 0)) return false;
  JobId id = new_job_id();
  Job& job = create_job(JobKind::kDiscard, id, deps_.add_blocking(id, range));
  job.range = range;
  job.acked = true;
  job.trace = op.trace;
  place(job);
  guest_done(g, {});
  ++discards_;
  note_io();
  return true;
}

bool Upstairs::admit_flush(GuestId g, const FlushOp& op) {
  if (refuse_unless_active(g)) return true;
  if (op.snapshot) {
    Status s = proto::validate_snapshot_name(*op.snapshot);
    if (s && config_.read_only)
      s = fail(ErrorCode::kReadOnly, "a read-only volume cannot take snapshots");
    if (!s) {
      guest_done(g, s);
      return true;
    }
  }
  if (config_.read_only) {
    guest_done(g, {});  // nothing to make durable
    return true;
  }
  if (auto s = check_quorum("flushes"); !s) {
    guest_done(g, s);
    return true;
  }
  if (!has_room(JobKind::kFlush, BlockRange{}, 0)) return false;
  submit_flush(g, op.snapshot, op.trace);
  return true;
}

bool Upstairs::admit_activate(GuestId g, const ActivateOp& op) {
  switch (state_) {
    case VolumeState::kActive:
      if (op.generation && *op.generation != generation_)
        guest_done(g, fail(ErrorCode::kInvalidArgument,
                           fmt::format("already active with generation {}", generation_)));
      else
        guest_done(g, {});
      return true;
    case VolumeState::kActivating:
    case VolumeState::kDeactivating:
      guest_done(g, fail(ErrorCode::kBusy, "activation or deactivation in progress"));
      return true;
    case VolumeState::kInitializing:
    case VolumeState::kDisabled:
      start_activation(g, op.generation);
      return true;
  }
  CRU_UNREACHABLE("volume state");
}

bool Upstairs::admit_deactivate(GuestId g) {
  if (refuse_unless_active(g)) return true;
  log::info("deactivating");
  set_state(VolumeEvent::kDeactivate, VolumeState::kDeactivating);
  deactivation_guest_ = g;
  deactivation_status_.reset();
  if (!config_.read_only && (need_flush_ || !jobs_.empty())) {
    // Without a quorum the final flush cannot make the acknowledged writes durable: that
    // is the deactivation's answer, not a skipped step.
    if (io_takers() < 2)
      deactivation_status_ =
          fail(ErrorCode::kQuorumLost, fmt::format("only {} downstairs can take IO", io_takers()));
    else
      deactivation_flush_ = submit_flush(std::nullopt);
  }
  return true;
}

bool Upstairs::admit_replace(GuestId g, const ReplaceOp& op) {
  std::optional<ClientId> which;
  for (ClientId c : kAllClients) {
    if (clients_[c].target == op.new_target) {
      guest_done(g, fail(ErrorCode::kInvalidArgument,
                         fmt::format("{} is already a target of this volume", op.new_target)));
      return true;
    }
    if (clients_[c].target == op.old_target) which = c;
  }
  if (!which) {
    guest_done(g, fail(ErrorCode::kNotFound,
                       fmt::format("{} is not a target (targets: {}, {}, {})", op.old_target,
                                   clients_[ClientId{0}].target, clients_[ClientId{1}].target,
                                   clients_[ClientId{2}].target)));
    return true;
  }
  if (state_ != VolumeState::kActive) {
    guest_done(g, fail(ErrorCode::kBusy, "replace needs an active volume"));
    return true;
  }
  for (ClientId c : kAllClients) {
    if (c != *which && clients_[c].ds != DsState::kActive) {
      guest_done(g, fail(ErrorCode::kBusy,
                         fmt::format("{} is not healthy ({}): replace one replica at a time",
                                     describe(c), status_name(clients_[c].ds))));
      return true;
    }
  }
  Client& cl = clients_[*which];
  log::warn("replacing {} with {}", describe(*which), op.new_target);
  set_mode(*which, ModeEvent::kReplace, DsMode::kReplaced);
  cl.missing.add_all(JobId{}, region_->extent_count);  // a new region holds no write at all
  skip_all(*which);
  lose_connection(*which, "replaced by " + op.new_target, true, /*counted=*/true);
  cl.target = op.new_target;
  cl.region_uuid.reset();
  cl.backoff = kReconnectBackoffMin;
  cl.next_connect = now_;
  guest_done(g, {});
  return true;
}

// ---- admission checks ------------------------------------------------------------------

bool Upstairs::refuse_unless_active(GuestId g) {
  if (state_ == VolumeState::kActive) return false;
  if (state_ == VolumeState::kDisabled)
    guest_done(g, fail(ErrorCode::kNoLongerActive, disabled_reason_));
  else
    guest_done(g, fail(ErrorCode::kNotActive, "the volume is not active"));
  return true;
}

bool Upstairs::refuse_if_read_only(GuestId g) {
  if (!config_.read_only) return false;
  guest_done(g, fail(ErrorCode::kReadOnly, "the volume is read-only"));
  return true;
}

Status Upstairs::check_range(BlockIndex start, uint64_t count, uint64_t max_count) const {
  uint64_t total = region_->total_blocks();
  if (count == 0) return fail(ErrorCode::kInvalidArgument, "zero-length IO");
  // A read's reply or a write's data must fit in one frame: the volume splits larger IO.
  if (count > max_count)
    return fail(ErrorCode::kIoTooLarge,
                fmt::format("{} blocks exceed the {}-block limit of one IO", count, max_count));
  if (start.value >= total || count > total - start.value)
    return fail(ErrorCode::kOffsetInvalid,
                fmt::format("blocks [{}, {}) are outside the volume's {} blocks", start.value,
                            start.value + count, total));
  return {};
}

Status Upstairs::check_quorum(const char* what) const {
  int n = io_takers();
  if (n >= 2) return {};
  return fail(ErrorCode::kQuorumLost,
              fmt::format("{} need 2 downstairs but only {} can take IO", what, n));
}

bool Upstairs::has_room_on(ClientId c, uint64_t bytes) const {
  const Client& cl = clients_[c];
  const Limits& l = config_.limits;
  if (cl.jobs_in_flight >= l.jobs_in_flight_max) return false;
  // An IO larger than the byte limit still goes alone.
  return cl.bytes_in_flight == 0 || cl.bytes_in_flight + bytes <= l.bytes_in_flight_max;
}

bool Upstairs::has_room(JobKind kind, BlockRange range, uint64_t bytes) const {
  Job probe;
  probe.kind = kind;
  probe.range = range;
  for (ClientId c : kAllClients)
    if (in_flight(dispatch(c, probe)) && !has_room_on(c, bytes)) return false;
  return true;
}

std::optional<ClientId> Upstairs::pick_reader(const std::vector<ClientId>& tried) const {
  std::optional<ClientId> best;
  for (ClientId c : kAllClients) {
    if (!serves_reads(clients_[c].ds) || given_up(c)) continue;
    if (std::find(tried.begin(), tried.end(), c) != tried.end()) continue;
    if (!best || clients_[c].jobs_in_flight < clients_[*best].jobs_in_flight) best = c;
  }
  return best;
}

void Upstairs::note_io() {
  need_flush_ = true;
  last_io_ = now_;
}

// ---- jobs ------------------------------------------------------------------------------

JobId Upstairs::new_job_id() {
  JobId id = next_job_;
  next_job_ = next_job_.next();
  return id;
}

Upstairs::Job& Upstairs::create_job(JobKind kind, JobId id, std::vector<JobId> deps) {
  // The downstairs refuses more; the barrier and admission limits keep the job table
  // (and so any frontier) far smaller.
  CRU_ASSERT(deps.size() <= kMaxDependencies, "dependency list over the protocol limit");
  auto [it, inserted] = jobs_.try_emplace(id);
  CRU_ASSERT(inserted, "job id reused");
  reserved_.erase(id);
  Job& job = it->second;
  job.id = id;
  job.kind = kind;
  job.deps = std::move(deps);
  if (kind == JobKind::kFlush || kind == JobKind::kBarrier) fences_.insert(id);
  return job;
}

// A read goes to one downstairs (not in `tried`), is skipped on the others.
void Upstairs::start_read(GuestId g, BlockRange range, uint64_t bytes, std::vector<ClientId> tried,
                          trace::SpanContext trace) {
  std::optional<ClientId> reader = pick_reader(tried);
  CRU_ASSERT(reader.has_value(), "a read started with no downstairs to read from");
  JobId id = new_job_id();
  Job& job = create_job(JobKind::kRead, id, deps_.add_read(id, range));
  job.range = range;
  job.bytes = bytes;
  job.guest = g;
  job.tried = std::move(tried);
  job.tried.push_back(*reader);
  job.trace = trace;
  for (ClientId c : kAllClients)
    if (c != *reader) set_io(job, c, Io::kSkipped);
  send_job(*reader, job);
}

void Upstairs::place(Job& job) {
  for (ClientId c : kAllClients) {
    Io io = dispatch(c, job);
    if (io == Io::kSent)
      send_job(c, job);
    else
      set_io(job, c, io);
  }
}

Upstairs::Io Upstairs::dispatch(ClientId c, const Job& job) const {
  const Client& cl = clients_[c];
  switch (cl.ds) {
    case DsState::kActive:
      return Io::kSent;
    case DsState::kLiveRepair:
      switch (job.kind) {
        case JobKind::kRead:
          return Io::kSkipped;
        case JobKind::kWrite:
        case JobKind::kWriteUnwritten:
        case JobKind::kDiscard:
          // Extents above the repair point will be copied whole; IO that starts at or
          // below it must land (IO touching the extent under repair waits for its reopen).
          return extent_of(job.range.start) <= repair_->extent ? Io::kSent : Io::kSkipped;
        case JobKind::kFlush:
        case JobKind::kBarrier:
        case JobKind::kLiveClose:
        case JobKind::kLiveRepair:
        case JobKind::kLiveReopen:
        case JobKind::kLiveNoOp:
          return Io::kSent;
      }
      CRU_UNREACHABLE("job kind");
    case DsState::kIdle:
    case DsState::kDisconnected:
    case DsState::kConnecting:
    case DsState::kWaitYesItsMe:
    case DsState::kWaitPromote:
    case DsState::kWaitActive:
    case DsState::kWaitRegionInfo:
    case DsState::kWaitVersions:
    case DsState::kWaitQuorum:
    case DsState::kReconcile:
    case DsState::kLiveRepairReady:
      // Held for replay while offline (reads go elsewhere); otherwise skipped.
      if (takes_io(c) && job.kind != JobKind::kRead) return Io::kHeld;
      return Io::kSkipped;
  }
  CRU_UNREACHABLE("downstairs state");
}

void Upstairs::set_io(Job& job, ClientId c, Io next) {
  Client& cl = clients_[c];
  Io prev = job.io[c];
  if (in_flight(prev)) {
    cl.jobs_in_flight -= 1;
    cl.bytes_in_flight -= job.bytes;
  } else if (finished(prev)) {
    cl.jobs_finished -= 1;
    cl.bytes_finished -= job.bytes;
  }
  job.io[c] = next;
  if (writes_blocks(job.kind) && (next == Io::kSkipped || next == Io::kError))
    cl.missing.add(extent_of(job.range.start), extent_of(job.range.end() - 1), job.id);
  if (in_flight(next)) {
    cl.jobs_in_flight += 1;
    cl.bytes_in_flight += job.bytes;
  } else if (finished(next)) {
    cl.jobs_finished += 1;
    cl.bytes_finished += job.bytes;
  }
}

std::vector<JobId> Upstairs::deps_for(ClientId c, const Job& job) const {
  // A downstairs can only wait for jobs it was sent and has not answered: drop the ones
  // skipped for it, the retired ones (every downstairs completed them) and the ones it
  // already answered (it ran them before anything sent now). The last matters after a
  // reconnect: the new connection starts with an empty completed set, so a dependency on
  // a job done on the old one would never be met (found by the simulator: a live-repair
  // close waited forever). Replay resends jobs in id order and marks each sent before the
  // next is built, so replayed jobs still follow each other. Keep reserved live-repair
  // ids: those jobs are created and sent later.
  // A job skipped here (e.g. a read sent to another replica) is not simply dropped: its
  // own dependencies stand in for it, or a write after a read would not follow the write
  // before that read on the replicas without the read (the block map keeps only the
  // frontier).
  std::vector<JobId> out;
  std::vector<JobId> todo(job.deps.rbegin(), job.deps.rend());
  std::set<JobId> seen;
  while (!todo.empty()) {
    JobId d = todo.back();
    todo.pop_back();
    if (!seen.insert(d).second) continue;
    auto it = jobs_.find(d);
    if (it == jobs_.end()) {
      if (reserved_.contains(d)) out.push_back(d);
      continue;
    }
    Io io = it->second.io[c];
    if (in_flight(io))
      out.push_back(d);
    else if (io == Io::kSkipped || io == Io::kNone)
      todo.insert(todo.end(), it->second.deps.rbegin(), it->second.deps.rend());
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

Message Upstairs::job_message(ClientId c, const Job& job) const {
  std::vector<JobId> deps = deps_for(c, job);
  const BlockIndex start{job.range.start};
  const auto count = static_cast<uint32_t>(job.range.count);
  switch (job.kind) {
    case JobKind::kRead:
      return Read{job.id, std::move(deps), start, count, wire_trace(c, job)};
    case JobKind::kWrite:
      return Write{{job.id, std::move(deps), start, region_->block_size, job.contexts, job.data,
                    wire_trace(c, job)}};
    case JobKind::kWriteUnwritten:
      return WriteUnwritten{{job.id, std::move(deps), start, region_->block_size, job.contexts,
                             job.data, wire_trace(c, job)}};
    case JobKind::kDiscard:
      return Discard{job.id, std::move(deps), start, count, wire_trace(c, job)};
    case JobKind::kFlush:
      return Flush{job.id,       std::move(deps),        job.flush_number,  generation_,
                   job.snapshot, repair_extent_limit(c), wire_trace(c, job)};
    case JobKind::kBarrier:
      return Barrier{job.id, std::move(deps)};
    case JobKind::kLiveClose:
      if (is_repair_target(c)) return ExtentLiveClose{job.id, std::move(deps), job.extent};
      return ExtentLiveFlushClose{job.id, std::move(deps), job.extent, job.flush_number,
                                  generation_};
    case JobKind::kLiveRepair:
      if (std::find(job.repair_dests.begin(), job.repair_dests.end(), c) != job.repair_dests.end())
        return ExtentLiveRepair{job.id, std::move(deps), job.extent, repair_->source,
                                clients_[repair_->source].target};
      return ExtentLiveNoOp{job.id, std::move(deps)};
    case JobKind::kLiveReopen:
      return ExtentLiveReopen{job.id, std::move(deps), job.extent};
    case JobKind::kLiveNoOp:
      return ExtentLiveNoOp{job.id, std::move(deps)};
  }
  CRU_UNREACHABLE("job kind");
}

std::optional<proto::TraceContext> Upstairs::wire_trace(ClientId c, const Job& job) {
  if (!job.trace.sampled) return std::nullopt;
  const uint64_t salt = job.id.value * kClientCount + c.value;
  return proto::TraceContext{job.trace.trace.high, job.trace.trace.low,
                             trace::derive_span_id(job.trace.span_id, salt),
                             proto::TraceContext::kSampled};
}

void Upstairs::send_job(ClientId c, Job& job) {
  set_io(job, c, Io::kSent);
  if (job.kind == JobKind::kFlush) job.flush_limit[c] = repair_extent_limit(c);
  send(c, job_message(c, job));
}

JobId Upstairs::submit_flush(std::optional<GuestId> guest, std::optional<std::string> snapshot,
                             trace::SpanContext trace) {
  JobId id = new_job_id();
  const BlockRange all{0, region_->total_blocks()};
  Job& job = create_job(JobKind::kFlush, id, deps_.add_blocking(id, all));
  job.range = all;
  if (snapshot) log::info("flush {} takes snapshot '{}'", id, *snapshot);
  job.snapshot = std::move(snapshot);
  job.flush_number = next_flush_;
  next_flush_ = next_flush_.next();
  job.guest = guest;
  job.trace = trace;
  job.acked = false;  // decided by ack_check(), with or without a guest waiting
  place(job);
  need_flush_ = false;
  ++flushes_;
  ack_check(job);  // e.g. skipped everywhere
  return id;
}

void Upstairs::submit_barrier() {
  JobId id = new_job_id();
  const BlockRange all{0, region_->total_blocks()};
  Job& job = create_job(JobKind::kBarrier, id, deps_.add_blocking(id, all));
  job.range = all;
  job.acked = true;
  place(job);
  ++barriers_;
  log::debug("barrier {} so finished jobs can retire", id);
}

}  // namespace cru::upstairs
