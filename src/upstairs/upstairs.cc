#include "upstairs/upstairs.h"

#include <fmt/format.h>

#include <algorithm>

#include "common/log.h"
#include "proto/integrity.h"
#include "proto/limits.h"

namespace cru::upstairs {

using namespace cru::proto;

namespace {

template <typename... Ts>
struct Overloaded : Ts... {
  using Ts::operator()...;
};
template <typename... Ts>
Overloaded(Ts...) -> Overloaded<Ts...>;

bool in_flight(uint8_t io) { return io == 1 || io == 2; }  // kHeld, kSent
bool finished(uint8_t io) { return io >= 3; }              // kDone, kSkipped, kError

const char* ds_name(int ds) {
  static constexpr const char* kNames[] = {"idle",        "disconnected",      "connecting",
                                           "negotiating", "waiting_promote",   "negotiating",
                                           "negotiating", "negotiating",       "wait_quorum",
                                           "reconciling", "live_repair_ready", "live_repair",
                                           "active"};
  return kNames[ds];
}

}  // namespace

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
  std::visit(Overloaded{
                 [&](GuestSubmit& g) { on_guest(std::move(g)); },
                 [&](ClientConnected& e) {
                   if (e.conn == clients_[e.client].conn) on_connected(e.client, e.conn);
                 },
                 [&](ClientMessage& e) {
                   if (e.conn == clients_[e.client].conn && e.conn != 0)
                     on_message(e.client, e.message);
                 },
                 [&](ClientDisconnected& e) {
                   if (e.conn == clients_[e.client].conn && e.conn != 0)
                     on_disconnected(e.client, e.reason);
                 },
                 [&](Tick&) { on_tick(); },
             },
             event);
  maintain();
  return std::move(actions_);
}

TimePoint Upstairs::next_deadline() const {
  TimePoint d = TimePoint::max();
  if (state_ == State::kActive && need_flush_ && !config_.read_only)
    d = std::min(d, last_io_ + config_.limits.flush_timeout);
  for (const Client& cl : clients_) {
    if (cl.ds == Ds::kDisconnected) d = std::min(d, cl.next_connect);
    if (cl.ds == Ds::kConnecting)
      d = std::min(d, cl.connect_started + config_.limits.connect_timeout);
    if (cl.conn != 0 && cl.ds != Ds::kConnecting) {
      d = std::min(d, cl.last_ping + config_.limits.ping_interval);
      d = std::min(d, cl.last_heard + config_.limits.client_timeout);
    }
    if (cl.mode == Mode::kOffline && cl.ds != Ds::kActive && state_ == State::kActive)
      d = std::min(d, cl.offline_since + config_.limits.offline_timeout);
    if (cl.lagging_since)
      d = std::min(d, std::max(cl.last_reply, *cl.lagging_since) + config_.limits.stall_timeout);
  }
  return d;
}

// ---- guest operations ----------------------------------------------------------------------

void Upstairs::on_guest(GuestSubmit g) {
  waiting_.push_back(std::move(g));
  // admit_waiting() runs in maintain(): operations are taken strictly in order.
}

void Upstairs::guest_done(GuestId id, Status status, ReadData read) {
  actions_.push_back(GuestDone{id, std::move(status), std::move(read)});
}

bool Upstairs::takes_io(ClientId c) const {
  const Client& cl = clients_[c];
  if (cl.ds == Ds::kActive || cl.ds == Ds::kLiveRepair) return true;
  return cl.mode == Mode::kOffline && cl.ds != Ds::kIdle;
}

Upstairs::Io Upstairs::dispatch(ClientId c, const Job& job) const {
  const Client& cl = clients_[c];
  switch (cl.ds) {
    case Ds::kActive:
      return Io::kSent;
    case Ds::kLiveRepair:
      switch (job.kind) {
        case JobKind::kRead:
          return Io::kSkipped;
        case JobKind::kWrite:
        case JobKind::kWriteUnwritten:
        case JobKind::kDiscard:
          // Extents above the repair point will be copied whole; IO that starts at or
          // below it must land (IO touching the extent under repair waits for its reopen).
          return extent_of(job.range.start) <= repair_->extent ? Io::kSent : Io::kSkipped;
        default:
          return Io::kSent;
      }
    default:
      if (cl.mode == Mode::kOffline && cl.ds != Ds::kIdle && job.kind != JobKind::kRead)
        return Io::kHeld;
      return Io::kSkipped;
  }
}

void Upstairs::set_io(Job& job, ClientId c, Io next) {
  Client& cl = clients_[c];
  uint8_t prev = static_cast<uint8_t>(job.io[c]);
  if (in_flight(prev)) {
    cl.jobs_in_flight -= 1;
    cl.bytes_in_flight -= job.bytes;
  } else if (finished(prev)) {
    cl.jobs_finished -= 1;
    cl.bytes_finished -= job.bytes;
  }
  job.io[c] = next;
  uint8_t n = static_cast<uint8_t>(next);
  if (in_flight(n)) {
    cl.jobs_in_flight += 1;
    cl.bytes_in_flight += job.bytes;
  } else if (finished(n)) {
    cl.jobs_finished += 1;
    cl.bytes_finished += job.bytes;
  }
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
    if (io == Io::kSent || io == Io::kHeld)
      out.push_back(d);
    else if (io == Io::kSkipped || io == Io::kNone)
      todo.insert(todo.end(), it->second.deps.rbegin(), it->second.deps.rend());
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::optional<ExtentId> Upstairs::repair_extent_limit(ClientId c) const {
  if (!repair_ || clients_[c].ds != Ds::kLiveRepair) return std::nullopt;
  if (repair_->extent >= region_->extent_count) return std::nullopt;
  // Extents above the repair point have not been copied yet: stamping them with new
  // flush numbers would make them look current and skip their copy.
  return ExtentId{repair_->extent};
}

Message Upstairs::job_message(ClientId c, const Job& job) const {
  std::vector<JobId> deps = deps_for(c, job);
  bool is_target = repair_ && std::find(repair_->targets.begin(), repair_->targets.end(), c) !=
                                  repair_->targets.end();
  switch (job.kind) {
    case JobKind::kRead:
      return Read{job.id, std::move(deps), BlockIndex{job.range.start},
                  static_cast<uint32_t>(job.range.count)};
    case JobKind::kWrite:
      return Write{{job.id, std::move(deps), BlockIndex{job.range.start}, region_->block_size,
                    job.contexts, job.data}};
    case JobKind::kWriteUnwritten:
      return WriteUnwritten{{job.id, std::move(deps), BlockIndex{job.range.start},
                             region_->block_size, job.contexts, job.data}};
    case JobKind::kDiscard:
      return Discard{job.id, std::move(deps), BlockIndex{job.range.start},
                     static_cast<uint32_t>(job.range.count)};
    case JobKind::kFlush:
      return Flush{job.id,      std::move(deps), job.flush_number,
                   generation_, std::nullopt,    repair_extent_limit(c)};
    case JobKind::kBarrier:
      return Barrier{job.id, std::move(deps)};
    case JobKind::kLiveClose:
      if (is_target) return ExtentLiveClose{job.id, std::move(deps), job.extent};
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

void Upstairs::send_job(ClientId c, Job& job) {
  set_io(job, c, Io::kSent);
  actions_.push_back(SendTo{c, clients_[c].conn, job_message(c, job)});
}

bool Upstairs::admit(const GuestSubmit& g) {
  auto not_active = [&]() -> bool {
    std::string why = state_ == State::kDisabled ? disabled_reason_ : "the volume is not active";
    guest_done(
        g.id,
        fail(state_ == State::kDisabled ? ErrorCode::kNoLongerActive : ErrorCode::kNotActive, why));
    return true;
  };
  auto check_range = [&](BlockIndex start, uint64_t count, uint64_t max) -> Status {
    uint64_t total = region_->total_blocks();
    if (count == 0) return fail(ErrorCode::kInvalidArgument, "zero-length IO");
    if (count > max)
      return fail(ErrorCode::kInvalidArgument,
                  fmt::format("{} blocks exceed the {}-block limit of one IO", count, max));
    if (start.value >= total || count > total - start.value)
      return fail(ErrorCode::kOffsetInvalid,
                  fmt::format("blocks [{}, {}) are outside the volume's {} blocks", start.value,
                              start.value + count, total));
    return {};
  };
  auto quorum = [&](const char* what) -> Status {
    int n = 0;
    for (ClientId c : kAllClients) n += takes_io(c) ? 1 : 0;
    if (n >= 2) return {};
    return fail(ErrorCode::kQuorumLost,
                fmt::format("{} need 2 downstairs but only {} can take IO", what, n));
  };
  // Whether every downstairs that would take `job` is within its admission limits.
  auto room = [&](const Job& probe) {
    for (ClientId c : kAllClients) {
      Io io = dispatch(c, probe);
      if (io != Io::kSent && io != Io::kHeld) continue;
      const Client& cl = clients_[c];
      if (cl.jobs_in_flight >= config_.limits.jobs_in_flight_max) return false;
      if (cl.bytes_in_flight > 0 &&
          cl.bytes_in_flight + probe.bytes > config_.limits.bytes_in_flight_max)
        return false;
    }
    return true;
  };
  // Places an IO-like job: deps from the block map, sent or held per downstairs.
  auto place = [&](Job& job) {
    for (ClientId c : kAllClients) {
      Io io = dispatch(c, job);
      if (io == Io::kSent)
        send_job(c, job);
      else
        set_io(job, c, io);
    }
  };

  return std::visit(
      Overloaded{
          [&](const ReadOp& op) -> bool {
            if (state_ != State::kActive) return not_active();
            if (auto s = check_range(op.start, op.count, kMaxIoBlocks); !s) {
              guest_done(g.id, s);
              return true;
            }
            // The least loaded active downstairs; reads go to one replica and are verified.
            std::optional<ClientId> best;
            for (ClientId c : kAllClients)
              if (clients_[c].ds == Ds::kActive &&
                  (!best || clients_[c].jobs_in_flight < clients_[*best].jobs_in_flight))
                best = c;
            if (!best) {
              guest_done(g.id,
                         fail(ErrorCode::kQuorumLost, "no downstairs is active to read from"));
              return true;
            }
            uint64_t bytes = static_cast<uint64_t>(op.count) * region_->block_size;
            const Client& cl = clients_[*best];
            if (cl.jobs_in_flight >= config_.limits.jobs_in_flight_max ||
                (cl.bytes_in_flight > 0 &&
                 cl.bytes_in_flight + bytes > config_.limits.bytes_in_flight_max))
              return false;
            JobId id = next_job_;
            next_job_ = next_job_.next();
            BlockRange range{op.start.value, op.count};
            Job& job = create_job(JobKind::kRead, id, deps_.add_read(id, range));
            job.range = range;
            job.bytes = bytes;
            job.guest = g.id;
            job.tried = {*best};
            for (ClientId c : kAllClients)
              if (c != *best) set_io(job, c, Io::kSkipped);
            send_job(*best, job);
            ++reads_;
            read_bytes_ += bytes;
            need_flush_ = true;
            last_io_ = now_;
            return true;
          },
          [&](const WriteOp& op) -> bool {
            if (state_ != State::kActive) return not_active();
            if (config_.read_only) {
              guest_done(g.id, fail(ErrorCode::kReadOnly, "the volume is read-only"));
              return true;
            }
            Status s = check_range(op.start, op.contexts.size(), kMaxIoBlocks);
            if (s && op.data.size() != op.contexts.size() * region_->block_size)
              s = fail(ErrorCode::kInvalidArgument, "write data does not match its block count");
            if (s) s = quorum("writes");
            if (!s) {
              guest_done(g.id, s);
              return true;
            }
            Job probe;
            probe.kind = JobKind::kWrite;
            probe.range = BlockRange{op.start.value, op.contexts.size()};
            probe.bytes = op.data.size();
            if (!room(probe)) return false;
            JobId id = next_job_;
            next_job_ = next_job_.next();
            Job& job = create_job(op.only_unwritten ? JobKind::kWriteUnwritten : JobKind::kWrite,
                                  id, deps_.add_blocking(id, probe.range));
            job.range = probe.range;
            job.bytes = probe.bytes;
            job.contexts = op.contexts;
            job.data = op.data;
            job.acked = true;
            place(job);
            // Write-back: acknowledged once queued; durable at the next flush.
            guest_done(g.id, {});
            ++writes_;
            write_bytes_ += probe.bytes;
            need_flush_ = true;
            last_io_ = now_;
            return true;
          },
          [&](const DiscardOp& op) -> bool {
            if (state_ != State::kActive) return not_active();
            if (config_.read_only) {
              guest_done(g.id, fail(ErrorCode::kReadOnly, "the volume is read-only"));
              return true;
            }
            Status s = check_range(op.start, op.count, kMaxDiscardBlocks);
            if (s) s = quorum("discards");
            if (!s) {
              guest_done(g.id, s);
              return true;
            }
            Job probe;
            probe.kind = JobKind::kDiscard;
            probe.range = BlockRange{op.start.value, op.count};
            if (!room(probe)) return false;
            JobId id = next_job_;
            next_job_ = next_job_.next();
            Job& job = create_job(JobKind::kDiscard, id, deps_.add_blocking(id, probe.range));
            job.range = probe.range;
            job.acked = true;
            place(job);
            guest_done(g.id, {});
            ++discards_;
            need_flush_ = true;
            last_io_ = now_;
            return true;
          },
          [&](const FlushOp&) -> bool {
            if (state_ != State::kActive) return not_active();
            if (config_.read_only) {
              guest_done(g.id, {});  // nothing to make durable
              return true;
            }
            if (auto s = quorum("flushes"); !s) {
              guest_done(g.id, s);
              return true;
            }
            Job probe;
            probe.kind = JobKind::kFlush;
            if (!room(probe)) return false;
            submit_flush(g.id);
            return true;
          },
          [&](const ActivateOp& op) -> bool {
            if (state_ == State::kActive) {
              if (op.generation && *op.generation != generation_)
                guest_done(g.id,
                           fail(ErrorCode::kInvalidArgument,
                                fmt::format("already active with generation {}", generation_)));
              else
                guest_done(g.id, {});
              return true;
            }
            if (state_ == State::kActivating || state_ == State::kDeactivating) {
              guest_done(g.id, fail(ErrorCode::kBusy, "activation or deactivation in progress"));
              return true;
            }
            start_activation(g.id, op.generation);
            return true;
          },
          [&](const DeactivateOp&) -> bool {
            if (state_ != State::kActive) return not_active();
            log::info("deactivating");
            state_ = State::kDeactivating;
            deactivation_guest_ = g.id;
            if (!config_.read_only && (need_flush_ || !jobs_.empty()) && quorum("flushes"))
              deactivation_flush_ = submit_flush(std::nullopt);
            return true;
          },
          [&](const ReplaceOp& op) -> bool {
            std::optional<ClientId> which;
            for (ClientId c : kAllClients) {
              if (clients_[c].target == op.new_target) {
                guest_done(g.id, fail(ErrorCode::kInvalidArgument,
                                      fmt::format("{} is already a target of this volume",
                                                  op.new_target)));
                return true;
              }
              if (clients_[c].target == op.old_target) which = c;
            }
            if (!which) {
              guest_done(
                  g.id, fail(ErrorCode::kNotFound,
                             fmt::format("{} is not a target (targets: {}, {}, {})", op.old_target,
                                         clients_[ClientId{0}].target, clients_[ClientId{1}].target,
                                         clients_[ClientId{2}].target)));
              return true;
            }
            if (state_ != State::kActive) {
              guest_done(g.id, fail(ErrorCode::kBusy, "replace needs an active volume"));
              return true;
            }
            for (ClientId c : kAllClients) {
              if (c != *which && clients_[c].ds != Ds::kActive) {
                guest_done(g.id, fail(ErrorCode::kBusy,
                                      fmt::format(
                                          "{} is not healthy ({}): replace one replica at a time",
                                          describe(c), ds_name(static_cast<int>(clients_[c].ds)))));
                return true;
              }
            }
            Client& cl = clients_[*which];
            log::warn("replacing {} with {}", describe(*which), op.new_target);
            std::string old = cl.target;
            cl.mode = Mode::kReplaced;
            skip_all(*which);
            lose_connection(*which, "replaced by " + op.new_target, true, /*counted=*/true);
            cl.target = op.new_target;
            cl.region_uuid.reset();
            cl.backoff = std::chrono::milliseconds(100);
            cl.next_connect = now_;
            guest_done(g.id, {});
            return true;
          },
      },
      g.op);
}

void Upstairs::admit_waiting() {
  while (!waiting_.empty()) {
    if (!admit(waiting_.front())) return;  // waits for room; later operations wait behind it
    waiting_.pop_front();
  }
}

JobId Upstairs::submit_flush(std::optional<GuestId> guest) {
  JobId id = next_job_;
  next_job_ = next_job_.next();
  Job& job = create_job(JobKind::kFlush, id,
                        deps_.add_blocking(id, BlockRange{0, region_->total_blocks()}));
  job.range = BlockRange{0, region_->total_blocks()};
  job.flush_number = next_flush_;
  next_flush_ = next_flush_.next();
  job.guest = guest;
  job.acked = !guest.has_value();
  for (ClientId c : kAllClients) {
    Io io = dispatch(c, job);
    if (io == Io::kSent)
      send_job(c, job);
    else
      set_io(job, c, io);
  }
  need_flush_ = false;
  ++flushes_;
  ack_check(job);  // e.g. skipped everywhere
  return id;
}

void Upstairs::submit_barrier() {
  JobId id = next_job_;
  next_job_ = next_job_.next();
  Job& job = create_job(JobKind::kBarrier, id,
                        deps_.add_blocking(id, BlockRange{0, region_->total_blocks()}));
  job.range = BlockRange{0, region_->total_blocks()};
  job.acked = true;
  for (ClientId c : kAllClients) {
    Io io = dispatch(c, job);
    if (io == Io::kSent)
      send_job(c, job);
    else
      set_io(job, c, io);
  }
  ++barriers_;
  log::debug("barrier {} so finished jobs can retire", id);
}

bool Upstairs::complete_on_all(const Job& job) const {
  for (ClientId c : kAllClients)
    if (!finished(static_cast<uint8_t>(job.io[c]))) return false;
  return true;
}

bool Upstairs::flush_or_barrier_pending() const {
  for (JobId f : fences_)
    if (!complete_on_all(jobs_.at(f))) return true;
  return false;
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

// ---- job replies ------------------------------------------------------------------------------

void Upstairs::on_job_reply(ClientId c, JobId id, Status status, Message* reply) {
  auto it = jobs_.find(id);
  if (it == jobs_.end() || it->second.io[c] != Io::kSent) {
    log::debug("{}: reply for job {} that is not in flight there", describe(c), id);
    return;
  }
  Job& job = it->second;
  clients_[c].last_reply = now_;
  if (job.kind == JobKind::kRead) {
    auto* resp = reply ? std::get_if<ReadResponse>(reply) : nullptr;
    if (!resp)
      return lose_connection(
          c, fmt::format("protocol error: job {} is a read, the reply is not", id), true);
    return on_read_reply(c, job, status, resp);
  }
  bool close_ack = reply && std::holds_alternative<ExtentLiveCloseAck>(*reply);
  if (close_ack != (job.kind == JobKind::kLiveClose))
    return lose_connection(c, fmt::format("protocol error: wrong reply type for job {}", id), true);
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
  if (s && (resp->contexts.size() != job.range.count || resp->block_size != region_->block_size))
    s = fail(ErrorCode::kProtocol, fmt::format("read job {} answered with {} blocks of {} bytes",
                                               job.id, resp->contexts.size(), resp->block_size));
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
    for (uint64_t b = job.range.start; b < job.range.end();
         b += region_->extent_size - b % region_->extent_size)
      clients_[c].suspect_extents.insert(extent_of(b));
    fault(c, "returned data that failed verification: " + s.error().message);
  }
}

void Upstairs::retry_read(Job& failed) {
  failed.acked = true;  // the guest's answer moves to the new job
  GuestId guest = *failed.guest;
  std::optional<ClientId> best;
  for (ClientId c : kAllClients) {
    if (clients_[c].ds != Ds::kActive) continue;
    if (std::find(failed.tried.begin(), failed.tried.end(), c) != failed.tried.end()) continue;
    if (!best || clients_[c].jobs_in_flight < clients_[*best].jobs_in_flight) best = c;
  }
  if (!best) {
    guest_done(guest, fail(ErrorCode::kIo,
                           fmt::format("read of blocks [{}, {}) failed on every downstairs",
                                       failed.range.start, failed.range.end())));
    return;
  }
  JobId id = next_job_;
  next_job_ = next_job_.next();
  // A new job (not a resend): it follows any write queued since, which is a legal answer
  // for a read that was concurrent with that write.
  BlockRange range = failed.range;
  uint64_t bytes = failed.bytes;
  std::vector<ClientId> tried = failed.tried;
  Job& job = create_job(JobKind::kRead, id, deps_.add_read(id, range));
  job.range = range;
  job.bytes = bytes;
  job.guest = guest;
  job.tried = std::move(tried);
  job.tried.push_back(*best);
  for (ClientId c : kAllClients)
    if (c != *best) set_io(job, c, Io::kSkipped);
  send_job(*best, job);
}

// ---- faults
// ---------------------------------------------------------------------------------------

void Upstairs::skip_all(ClientId c) {
  std::vector<JobId> reads_to_retry;
  for (auto& [id, job] : jobs_) {
    if (!in_flight(static_cast<uint8_t>(job.io[c]))) continue;
    set_io(job, c, Io::kSkipped);
    if (job.kind == JobKind::kRead && !job.acked) reads_to_retry.push_back(id);
    ack_check(job);
  }
  for (JobId id : reads_to_retry) retry_read(jobs_.at(id));
}

// Marks it Faulted (a replaced one stays Replaced) and counts it, once per fault.
void Upstairs::count_fault(ClientId c, const std::string& reason) {
  Client& cl = clients_[c];
  log::warn("{} faulted: {}", describe(c), reason);
  ++cl.faults;
  cl.set_error(reason, now_);
  if (cl.mode != Mode::kReplaced) cl.mode = Mode::kFaulted;
}

void Upstairs::fault(ClientId c, const std::string& reason) {
  Client& cl = clients_[c];
  if (state_ != State::kActive && state_ != State::kDeactivating) {
    lose_connection(c, reason, true);
    return;
  }
  if (cl.mode == Mode::kFaulted && cl.ds != Ds::kActive && cl.ds != Ds::kLiveRepair) {
    skip_all(c);
    return;  // already faulted
  }
  count_fault(c, reason);
  bool was_repairing = cl.ds == Ds::kLiveRepair;
  skip_all(c);
  if (repair_ && (was_repairing || c == repair_->source))
    abort_live_repair(describe(c) + " faulted");
  if (cl.conn != 0) lose_connection(c, reason, true, /*counted=*/true);
}

void Upstairs::lose_connection(ClientId c, const std::string& reason, bool emit, bool counted) {
  Client& cl = clients_[c];
  Ds prev = cl.ds;
  if (cl.conn != 0 && emit) actions_.push_back(Disconnect{c, cl.conn, reason});
  cl.conn = 0;
  if (prev == Ds::kIdle) return;
  bool wanted =
      state_ == State::kActivating || state_ == State::kActive || state_ == State::kDeactivating;
  cl.ds = wanted ? Ds::kDisconnected : Ds::kIdle;
  cl.next_connect = now_ + cl.backoff;
  cl.backoff = std::min(cl.backoff * 2, config_.limits.reconnect_backoff_max);
  if (prev != Ds::kDisconnected && prev != Ds::kConnecting)
    log::info("{} disconnected ({}): {}", describe(c), ds_name(static_cast<int>(prev)), reason);
  if (state_ == State::kActivating) {
    cl.mode = Mode::kNew;
    if (reconcile_) abort_reconcile(describe(c) + " disconnected");
    return;
  }
  if (prev == Ds::kActive && cl.mode != Mode::kFaulted && cl.mode != Mode::kReplaced) {
    if (can_replay_ && !repair_) {
      // Offline: new jobs are held for it and replayed when it returns.
      cl.mode = Mode::kOffline;
      cl.offline_since = now_;
      for (auto& [id, job] : jobs_)
        if (job.io[c] == Io::kSent) {
          job.io[c] = Io::kHeld;  // both count as in flight
          if (job.kind == JobKind::kRead && !job.acked) {
            set_io(job, c, Io::kSkipped);
            retry_read(job);
          }
        }
    } else {
      count_fault(c, reason + "; its jobs cannot be replayed");
      skip_all(c);
    }
  } else if (prev == Ds::kLiveRepair) {
    if (!counted) count_fault(c, reason + ", during its live repair");
    skip_all(c);
    abort_live_repair(describe(c) + " disconnected during its repair");
  } else if (prev == Ds::kReconcile || reconcile_) {
    cl.mode = Mode::kFaulted;
    if (reconcile_) abort_reconcile(describe(c) + " disconnected");
  }
  if (repair_ && c == repair_->source)
    abort_live_repair("the repair source " + describe(c) + " is gone");
}

void Upstairs::on_disconnected(ClientId c, const std::string& reason) {
  clients_[c].set_error(reason, now_);
  lose_connection(c, reason, false);
}

void Upstairs::fence(const std::string& why) {
  if (state_ == State::kDisabled) return;
  log::error("fenced: {}; failing all IO from now on", why);
  state_ = State::kDisabled;
  disabled_reason_ = why;
  Error e{ErrorCode::kNoLongerActive, why};
  for (auto& [id, job] : jobs_)
    if (!job.acked && job.guest) guest_done(*job.guest, tl::unexpected(e));
  jobs_.clear();
  fences_.clear();
  reserved_.clear();
  deps_ = BlockMap{};
  for (auto& g : waiting_) guest_done(g.id, tl::unexpected(e));
  waiting_.clear();
  if (activation_guest_)
    guest_done(*std::exchange(activation_guest_, std::nullopt), tl::unexpected(e));
  if (deactivation_guest_)
    guest_done(*std::exchange(deactivation_guest_, std::nullopt), tl::unexpected(e));
  reconcile_.reset();
  repair_.reset();
  for (ClientId c : kAllClients) {
    Client& cl = clients_[c];
    cl.jobs_in_flight = cl.bytes_in_flight = cl.jobs_finished = cl.bytes_finished = 0;
    lose_connection(c, "fenced", true);
  }
}

// ---- connections and negotiation
// -------------------------------------------------------------------

void Upstairs::start_activation(GuestId id, std::optional<Generation> generation) {
  log::info("activating: connecting to {}, {}, {}", config_.targets[0], config_.targets[1],
            config_.targets[2]);
  state_ = State::kActivating;
  activation_guest_ = id;
  requested_generation_ = generation;
  generation_settled_ = false;
  disabled_reason_.clear();
  region_.reset();
  for (ClientId c : kAllClients) {
    Client& cl = clients_[c];
    cl.ds = Ds::kDisconnected;
    cl.mode = Mode::kNew;
    cl.next_connect = now_;
    cl.backoff = std::chrono::milliseconds(100);
    cl.last_error.clear();
  }
}

void Upstairs::connect_due() {
  for (ClientId c : kAllClients) {
    Client& cl = clients_[c];
    if (cl.ds != Ds::kDisconnected || now_ < cl.next_connect) continue;
    cl.conn = next_conn_++;
    cl.ds = Ds::kConnecting;
    cl.connect_started = now_;
    ++cl.connects;
    actions_.push_back(ConnectTo{c, cl.conn, cl.target});
  }
}

void Upstairs::on_connected(ClientId c, ConnId) {
  Client& cl = clients_[c];
  if (cl.ds != Ds::kConnecting) return;
  cl.ds = Ds::kWaitYesItsMe;
  cl.last_heard = cl.last_ping = now_;
  actions_.push_back(SendTo{
      c, cl.conn,
      HereIAm{kProtocolVersion, config_.upstairs_id, config_.session_id,
              requested_generation_.value_or(generation_), config_.read_only, config_.encrypted}});
}

void Upstairs::on_message(ClientId c, Message& m) {
  Client& cl = clients_[c];
  cl.last_heard = now_;
  if (std::holds_alternative<Imok>(m)) return;
  if (std::holds_alternative<Ruok>(m)) {
    actions_.push_back(SendTo{c, cl.conn, Imok{}});
    return;
  }
  if (auto* gone = std::get_if<YouAreNoLongerActive>(&m)) {
    return fence(fmt::format("upstairs {} with generation {} took over (reported by {})",
                             gone->new_upstairs_id, gone->new_generation, describe(c)));
  }
  switch (cl.ds) {
    case Ds::kWaitYesItsMe:
    case Ds::kWaitActive:
    case Ds::kWaitRegionInfo:
    case Ds::kWaitVersions:
      return negotiate(c, m);
    case Ds::kReconcile:
      if (auto* ack = std::get_if<RepairAck>(&m)) return on_repair_ack(c, *ack);
      break;
    case Ds::kActive:
    case Ds::kLiveRepair:
      if (auto* a = std::get_if<Ack>(&m))
        return on_job_reply(c, a->job_id, a->status.to_status(), &m);
      if (auto* r = std::get_if<ReadResponse>(&m))
        return on_job_reply(c, r->job_id, r->status.to_status(), &m);
      if (auto* k = std::get_if<ExtentLiveCloseAck>(&m))
        return on_job_reply(c, k->job_id, k->status.to_status(), &m);
      if (auto* e = std::get_if<ErrorReport>(&m)) {
        if (e->status.code == ErrorCode::kNoLongerActive ||
            e->status.code == ErrorCode::kGenerationTooLow)
          return fence(fmt::format("{}: {}", describe(c), e->status.message));
        log::warn("{} reports: {}", describe(c),
                  Error{e->status.code, e->status.message}.to_string());
        return;
      }
      break;
    default:
      break;
  }
  lose_connection(c,
                  fmt::format("protocol error: unexpected {} while {}", proto::describe(m),
                              ds_name(static_cast<int>(cl.ds))),
                  true);
}

void Upstairs::negotiate(ClientId c, Message& m) {
  Client& cl = clients_[c];
  // A refusal during activation fails it (the configuration is wrong); later it only
  // keeps this downstairs out until a retry succeeds.
  auto refuse = [&](ErrorCode code, std::string why) {
    cl.set_error(why, now_);
    if (state_ == State::kActivating) return fail_activation(Error{code, describe(c) + ": " + why});
    log::warn("{}: {}", describe(c), why);
    if (state_ == State::kActive || state_ == State::kDeactivating) fault(c, why);
    lose_connection(c, why, true);
  };
  if (auto* v = std::get_if<VersionMismatch>(&m))
    return refuse(ErrorCode::kVersionMismatch,
                  fmt::format("speaks protocol version {}, this upstairs speaks version {}",
                              v->version, kProtocolVersion));
  if (auto* ro = std::get_if<ReadOnlyMismatch>(&m))
    return refuse(ErrorCode::kReadOnlyMismatch,
                  fmt::format("the downstairs is {} but this volume is {}",
                              ro->expected ? "read-only" : "read-write",
                              config_.read_only ? "read-only" : "read-write"));
  if (auto* en = std::get_if<EncryptedMismatch>(&m))
    return refuse(ErrorCode::kEncryptionMismatch,
                  fmt::format("the region is {} but this volume {}",
                              en->expected ? "encrypted" : "not encrypted",
                              config_.encrypted ? "has a key" : "has no key"));
  if (auto* er = std::get_if<ErrorReport>(&m)) return refuse(er->status.code, er->status.message);
  if (std::get_if<UuidMismatch>(&m))
    return refuse(ErrorCode::kUuidMismatch, "the downstairs reports an id mismatch");

  switch (cl.ds) {
    case Ds::kWaitYesItsMe:
      if (auto* y = std::get_if<YesItsMe>(&m)) {
        cl.highest_generation = y->highest_generation;
        if (state_ == State::kActivating) {
          cl.ds = Ds::kWaitPromote;
          return promote_all_if_ready();
        }
        cl.ds = Ds::kWaitActive;
        actions_.push_back(SendTo{
            c, cl.conn, PromoteToActive{config_.upstairs_id, config_.session_id, generation_}});
        return;
      }
      break;
    case Ds::kWaitActive:
      if (auto* a = std::get_if<YouAreNowActive>(&m)) {
        if (a->upstairs_id != config_.upstairs_id || a->session_id != config_.session_id ||
            a->generation != generation_)
          return refuse(ErrorCode::kUuidMismatch,
                        "YouAreNowActive does not echo our ids and generation");
        cl.ds = Ds::kWaitRegionInfo;
        actions_.push_back(SendTo{c, cl.conn, RegionInfoPlease{}});
        return;
      }
      break;
    case Ds::kWaitRegionInfo:
      if (auto* ri = std::get_if<RegionInfo>(&m)) {
        const RegionDefinition& d = ri->region;
        if (d.encrypted != config_.encrypted)
          return refuse(
              ErrorCode::kEncryptionMismatch,
              fmt::format("the region is {}encrypted but this volume is {}",
                          d.encrypted ? "" : "not ", config_.encrypted ? "encrypted" : "not"));
        if (region_ &&
            (d.block_size != region_->block_size || d.extent_size != region_->extent_size ||
             d.extent_count != region_->extent_count))
          return refuse(
              ErrorCode::kInvalidArgument,
              fmt::format("geometry mismatch: this region has {} extents x {} blocks x {} bytes, "
                          "the others "
                          "{} x {} x {}",
                          d.extent_count, d.extent_size, d.block_size, region_->extent_count,
                          region_->extent_size, region_->block_size));
        if (cl.region_uuid && *cl.region_uuid != d.uuid && cl.mode != Mode::kReplaced)
          return refuse(
              ErrorCode::kUuidMismatch,
              fmt::format("now serves region {}, it served {} before", d.uuid, *cl.region_uuid));
        if (!region_) region_ = d;
        cl.region_uuid = d.uuid;
        if (cl.mode == Mode::kOffline && state_ != State::kActivating) return replay(c);
        cl.ds = Ds::kWaitVersions;
        actions_.push_back(SendTo{c, cl.conn, ExtentVersionsPlease{}});
        return;
      }
      break;
    case Ds::kWaitVersions:
      if (auto* ev = std::get_if<ExtentVersions>(&m)) {
        if (ev->extents.size() != region_->extent_count)
          return refuse(ErrorCode::kProtocol,
                        fmt::format("reported {} extents, the region has {}", ev->extents.size(),
                                    region_->extent_count));
        cl.versions = ev->extents;
        if (state_ == State::kActivating) {
          cl.ds = Ds::kWaitQuorum;
          return collate_if_ready();
        }
        if (config_.read_only) return go_active(c);  // nothing to repair: nobody writes
        cl.ds = Ds::kLiveRepairReady;
        log::info("{} is ready for live repair", describe(c));
        return;
      }
      break;
    default:
      break;
  }
  lose_connection(c,
                  fmt::format("protocol error: unexpected {} during negotiation ({})",
                              proto::describe(m), ds_name(static_cast<int>(cl.ds))),
                  true);
}

void Upstairs::promote_all_if_ready() {
  for (const Client& cl : clients_)
    if (cl.ds != Ds::kWaitPromote) return;
  if (!generation_settled_) {
    Generation seen;
    ClientId who;
    for (ClientId c : kAllClients)
      if (clients_[c].highest_generation >= seen) {
        seen = clients_[c].highest_generation;
        who = c;
      }
    if (requested_generation_) {
      if (requested_generation_->value == 0)
        return fail_activation(Error{ErrorCode::kGenerationTooLow, "generation 0 is not allowed"});
      if (*requested_generation_ <= seen)
        return fail_activation(
            Error{ErrorCode::kGenerationTooLow,
                  fmt::format("generation {} is not higher than generation {} already used on {}",
                              *requested_generation_, seen, describe(who))});
      generation_ = *requested_generation_;
    } else {
      generation_ = seen.next();
    }
    generation_settled_ = true;
  }
  for (ClientId c : kAllClients) {
    clients_[c].ds = Ds::kWaitActive;
    actions_.push_back(
        SendTo{c, clients_[c].conn,
               PromoteToActive{config_.upstairs_id, config_.session_id, generation_}});
  }
}

void Upstairs::collate_if_ready() {
  for (const Client& cl : clients_)
    if (cl.ds != Ds::kWaitQuorum) return;
  uint64_t max_flush = 0;
  for (const Client& cl : clients_)
    for (const auto& v : cl.versions) max_flush = std::max(max_flush, v.flush.value);
  next_flush_ = FlushNumber{max_flush + 1};
  if (config_.read_only) return finish_activation();
  ClientData<std::vector<ExtentVersion>> versions;
  for (ClientId c : kAllClients) versions[c] = clients_[c].versions;
  auto plan = plan_mend(versions, {kAllClients.begin(), kAllClients.end()});
  if (plan.empty()) return finish_activation();
  start_reconcile(std::move(plan), false);
}

void Upstairs::fail_activation(const Error& e) {
  log::error("activation failed: {}", e.to_string());
  state_ = State::kInitializing;
  reconcile_.reset();
  if (activation_guest_)
    guest_done(*std::exchange(activation_guest_, std::nullopt), tl::unexpected(e));
  for (ClientId c : kAllClients) {
    lose_connection(c, "activation failed", true);
    clients_[c].ds = Ds::kIdle;
  }
}

void Upstairs::go_active(ClientId c) {
  Client& cl = clients_[c];
  cl.ds = Ds::kActive;
  cl.mode = Mode::kNew;
  cl.backoff = std::chrono::milliseconds(100);
}

void Upstairs::finish_activation() {
  for (ClientId c : kAllClients) go_active(c);
  state_ = State::kActive;
  log::info("active: generation {}, {} extents x {} blocks x {} bytes", generation_,
            region_->extent_count, region_->extent_size, region_->block_size);
  if (activation_guest_) guest_done(*std::exchange(activation_guest_, std::nullopt), {});
}

void Upstairs::replay(ClientId c) {
  Client& cl = clients_[c];
  actions_.push_back(SendTo{c, cl.conn, LastFlush{cl.last_flush}});
  cl.ds = Ds::kActive;
  cl.mode = Mode::kNew;
  cl.backoff = std::chrono::milliseconds(100);
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
}

// ---- reconciliation
// ----------------------------------------------------------------------------------

void Upstairs::start_reconcile(std::vector<ExtentMend> plan, bool while_active) {
  log::info("reconciliation: {} of {} extents differ between the downstairs", plan.size(),
            region_->extent_count);
  reconcile_total_ = plan.size();
  reconcile_done_ = 0;
  reconcile_ =
      Reconcile{std::move(plan), 0, Reconcile::Step::kFlush, RepairId{0}, {}, while_active};
  for (Client& cl : clients_) cl.ds = Ds::kReconcile;
  reconcile_step();
}

void Upstairs::reconcile_step() {
  Reconcile& r = *reconcile_;
  if (r.index >= r.plan.size()) {
    bool while_active = r.while_active;
    reconcile_.reset();
    log::info("reconciliation complete: {} extents repaired", reconcile_done_);
    if (!while_active) return finish_activation();
    for (ClientId c : kAllClients) go_active(c);
    return;
  }
  const ExtentMend& m = r.plan[r.index];
  r.id = r.id.next();
  r.waiting.clear();
  auto send = [&](ClientId c, Message msg) {
    r.waiting.push_back(c);
    actions_.push_back(SendTo{c, clients_[c].conn, std::move(msg)});
  };
  switch (r.step) {
    case Reconcile::Step::kFlush:
      send(m.source, ExtentFlush{r.id, m.extent, m.source, next_flush_, generation_});
      next_flush_ = next_flush_.next();
      break;
    case Reconcile::Step::kClose:
      for (ClientId c : kAllClients) send(c, ExtentClose{r.id, m.extent});
      break;
    case Reconcile::Step::kRepair:
      for (ClientId d : m.dests)
        send(d, ExtentRepair{r.id, m.extent, m.source, clients_[m.source].target, m.dests});
      break;
    case Reconcile::Step::kReopen:
      for (ClientId c : kAllClients) send(c, ExtentReopen{r.id, m.extent});
      break;
  }
}

void Upstairs::on_repair_ack(ClientId c, const RepairAck& ack) {
  if (!reconcile_ || ack.repair_id != reconcile_->id) return;
  auto& w = reconcile_->waiting;
  auto it = std::find(w.begin(), w.end(), c);
  if (it == w.end()) return;
  if (!ack.status.is_ok()) {
    return abort_reconcile(fmt::format("{} failed a reconciliation step on extent {}: {}",
                                       describe(c), reconcile_->plan[reconcile_->index].extent,
                                       Error{ack.status.code, ack.status.message}.to_string()));
  }
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
      r.step = Reconcile::Step::kFlush;
      ++r.index;
      ++reconcile_done_;
      break;
  }
  reconcile_step();
}

void Upstairs::abort_reconcile(const std::string& why) {
  if (!reconcile_) return;
  log::warn("reconciliation aborted: {}; it restarts when the downstairs reconnect", why);
  bool while_active = reconcile_->while_active;
  reconcile_.reset();
  // Every downstairs renegotiates; extents already repaired will then compare equal.
  for (ClientId c : kAllClients) {
    Client& cl = clients_[c];
    if (cl.ds == Ds::kIdle) continue;
    if (cl.conn != 0) actions_.push_back(Disconnect{c, cl.conn, "reconciliation aborted"});
    cl.conn = 0;
    cl.ds = Ds::kDisconnected;
    cl.next_connect = now_ + cl.backoff;
    cl.mode = while_active ? Mode::kFaulted : Mode::kNew;
  }
}

// ---- live repair
// ----------------------------------------------------------------------------------------

void Upstairs::start_live_repair_if_ready() {
  if (state_ != State::kActive || repair_ || reconcile_ || config_.read_only) return;
  std::vector<ClientId> targets, sources;
  for (ClientId c : kAllClients) {
    if (clients_[c].ds == Ds::kLiveRepairReady) targets.push_back(c);
    if (clients_[c].ds == Ds::kActive) sources.push_back(c);
  }
  if (targets.empty()) return;
  if (sources.empty()) {
    if (targets.size() < kClientCount) return;  // wait for the others to come back
    // Nobody is left to copy from: reconcile the three as at activation.
    ClientData<std::vector<ExtentVersion>> versions;
    for (ClientId c : kAllClients) versions[c] = clients_[c].versions;
    auto plan = plan_mend(versions, {kAllClients.begin(), kAllClients.end()});
    if (plan.empty()) {
      for (ClientId c : kAllClients) go_active(c);
      return;
    }
    return start_reconcile(std::move(plan), true);
  }
  // Replay is impossible across a repair: an Offline downstairs is faulted now.
  for (ClientId c : kAllClients)
    if (clients_[c].mode == Mode::kOffline && clients_[c].ds != Ds::kActive)
      fault(c, "offline when a live repair started");
  repair_ = LiveRepair{};
  repair_->targets = targets;
  // Each abort moves to the next healthy source, so one with a damaged extent (the
  // target refuses a copy that fails its hashes) cannot fail every attempt.
  repair_->source = sources[repairs_aborted_ % sources.size()];
  repair_->started = now_;
  for (ClientId t : targets) {
    clients_[t].ds = Ds::kLiveRepair;
    ++clients_[t].live_repairs;
  }
  log::info("live repair of {} from {}: {} extents", describe(targets.front()),
            describe(repair_->source), region_->extent_count);
  repair_begin_extent();
}

void Upstairs::repair_begin_extent() {
  LiveRepair& r = *repair_;
  const uint64_t es = region_->extent_size;
  BlockRange range{static_cast<uint64_t>(r.extent) * es, es};
  r.close_id = next_job_;
  r.repair_id = next_job_.next();
  r.reopen_id = r.repair_id.next();
  next_job_ = r.reopen_id.next();
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
  close.extent = ExtentId{r.extent};
  close.flush_number = next_flush_;
  next_flush_ = next_flush_.next();
  close.acked = true;
  for (ClientId c : kAllClients) {
    Io io = dispatch(c, close);
    if (io == Io::kSent)
      send_job(c, close);
    else
      set_io(close, c, io);
  }
  r.step = LiveRepair::Step::kClosing;
}

void Upstairs::repair_progress() {
  while (repair_) {
    LiveRepair& r = *repair_;
    switch (r.step) {
      case LiveRepair::Step::kClosing: {
        Job& close = jobs_.at(r.close_id);
        if (!complete_on_all(close)) return;
        // Copy only where the target differs from the source (or is dirty). A replacement
        // is another region whose equal numbers prove nothing: every extent is copied
        // (only its chunks that differ cross the network).
        std::vector<ClientId> dests;
        if (!r.aborting && close.io[r.source] == Io::kDone) {
          const ExtentVersion& src = close.close_versions[r.source];
          for (ClientId t : r.targets)
            if (close.io[t] == Io::kDone &&
                (close.close_versions[t].dirty || close.close_versions[t] != src ||
                 clients_[t].mode == Mode::kReplaced ||
                 clients_[t].suspect_extents.contains(r.extent)))
              dests.push_back(t);
        }
        Job& repair = create_job(dests.empty() ? JobKind::kLiveNoOp : JobKind::kLiveRepair,
                                 r.repair_id, {r.close_id});
        repair.range = close.range;
        repair.extent = close.extent;
        repair.repair_dests = dests;
        repair.acked = true;
        if (!r.aborting) {
          if (dests.empty()) {
            ++r.extents_confirmed;
          } else {
            ++r.extents_repaired;
            r.bytes_copied += region_->extent_bytes();
          }
        }
        for (ClientId c : kAllClients) {
          Io io = dispatch(c, repair);
          if (io == Io::kSent)
            send_job(c, repair);
          else
            set_io(repair, c, io);
        }
        r.step = LiveRepair::Step::kRepairing;
        break;
      }
      case LiveRepair::Step::kRepairing: {
        Job& repair = jobs_.at(r.repair_id);
        if (!complete_on_all(repair)) return;
        for (ClientId t : repair.repair_dests)
          if (repair.io[t] == Io::kDone) clients_[t].suspect_extents.erase(r.extent);
        Job& reopen = create_job(JobKind::kLiveReopen, r.reopen_id, {r.repair_id});
        reopen.range = repair.range;
        reopen.extent = repair.extent;
        reopen.acked = true;
        for (ClientId c : kAllClients) {
          Io io = dispatch(c, reopen);
          if (io == Io::kSent)
            send_job(c, reopen);
          else
            set_io(reopen, c, io);
        }
        r.step = LiveRepair::Step::kReopening;
        break;
      }
      case LiveRepair::Step::kReopening:
        if (!complete_on_all(jobs_.at(r.reopen_id))) return;
        ++r.extent;
        if (r.extent < region_->extent_count && !r.aborting) {
          repair_begin_extent();
        } else {
          r.final_flush_id = submit_flush(std::nullopt);
          r.step = LiveRepair::Step::kFinalFlush;
        }
        break;
      case LiveRepair::Step::kFinalFlush: {
        Job& flush = jobs_.at(r.final_flush_id);
        if (!complete_on_all(flush)) return;
        if (r.aborting) {
          ++repairs_aborted_;
          log::warn("live repair aborted after {} extents; it restarts when the downstairs returns",
                    r.extent);
        } else {
          ++repairs_completed_;
          for (ClientId t : r.targets) {
            if (clients_[t].ds == Ds::kLiveRepair && flush.io[t] == Io::kDone) {
              go_active(t);
              log::info("live repair of {} complete: {} extents copied, {} already equal",
                        describe(t), r.extents_repaired, r.extents_confirmed);
            }
          }
        }
        repair_.reset();
        return;
      }
    }
  }
}

void Upstairs::abort_live_repair(const std::string& why) {
  if (!repair_ || repair_->aborting) return;
  log::warn("aborting live repair: {}", why);
  repair_->aborting = true;
  // Jobs already issued may depend on the reserved ids: the machine runs on with no-ops
  // (see repair_progress), and the targets come back through LiveRepairReady.
  for (ClientId t : repair_->targets)
    if (clients_[t].ds == Ds::kLiveRepair) fault(t, "live repair aborted: " + why);
  repair_progress();
}

// ---- timers and maintenance
// --------------------------------------------------------------------------------

void Upstairs::on_tick() {
  for (ClientId c : kAllClients) {
    Client& cl = clients_[c];
    if (cl.ds == Ds::kConnecting && now_ >= cl.connect_started + config_.limits.connect_timeout) {
      cl.set_error("connect timed out", now_);
      lose_connection(c, "connect timed out", true);
      continue;
    }
    if (cl.conn == 0 || cl.ds == Ds::kConnecting) continue;
    if (now_ >= cl.last_heard + config_.limits.client_timeout) {
      cl.set_error("no reply for 45 s", now_);
      lose_connection(
          c,
          fmt::format("silent for {} s", std::chrono::duration_cast<std::chrono::seconds>(
                                             config_.limits.client_timeout)
                                             .count()),
          true);
      continue;
    }
    if (now_ >= cl.last_ping + config_.limits.ping_interval) {
      cl.last_ping = now_;
      actions_.push_back(SendTo{c, cl.conn, Ruok{}});
    }
  }
  if (state_ == State::kActive && need_flush_ && !config_.read_only &&
      now_ >= last_io_ + config_.limits.flush_timeout) {
    int takers = 0;
    for (ClientId c : kAllClients) takers += takes_io(c) ? 1 : 0;
    if (takers >= 2)
      submit_flush(std::nullopt);
    else
      need_flush_ = false;
  }
}

void Upstairs::check_limits() {
  if (state_ != State::kActive && state_ != State::kDeactivating) return;
  const Limits& l = config_.limits;
  auto over = [&](const Client& cl) {
    return cl.jobs_in_flight > l.fault_jobs || cl.bytes_in_flight > l.fault_bytes;
  };
  for (ClientId c : kAllClients) {
    Client& cl = clients_[c];
    if (cl.mode == Mode::kOffline && cl.ds != Ds::kActive && cl.ds != Ds::kIdle) {
      if (over(cl))
        fault(c, fmt::format("offline with {} jobs ({}) waiting", cl.jobs_in_flight,
                             format_size(cl.bytes_in_flight)));
      else if (!can_replay_)
        fault(c, "offline, and a barrier retired jobs it would need replayed");
      else if (now_ >= cl.offline_since + l.offline_timeout)
        fault(c, "offline too long");
      else if (state_ == State::kDeactivating)
        fault(c, "offline at deactivation");
    } else if (cl.ds != Ds::kActive || !over(cl)) {
      cl.lagging_since.reset();
    } else {
      // Lagging far behind the others (stopped, or a slow disk): fault it so the guest
      // does not wait on it. Under heavy load all three legitimately hold a lot, so the
      // limit applies to how far it is behind the other two, and only while both of
      // them are healthy.
      int healthy = 0;
      uint64_t others_jobs = UINT64_MAX, others_bytes = UINT64_MAX;
      for (ClientId o : kAllClients) {
        if (o == c || clients_[o].ds != Ds::kActive) continue;
        ++healthy;
        others_jobs = std::min<uint64_t>(others_jobs, clients_[o].jobs_in_flight);
        others_bytes = std::min<uint64_t>(others_bytes, clients_[o].bytes_in_flight);
      }
      const uint64_t lag_jobs =
          cl.jobs_in_flight - std::min<uint64_t>(cl.jobs_in_flight, others_jobs);
      const uint64_t lag_bytes =
          cl.bytes_in_flight - std::min<uint64_t>(cl.bytes_in_flight, others_bytes);
      if (healthy < 2 || (lag_jobs <= l.fault_jobs && lag_bytes <= l.fault_bytes)) {
        cl.lagging_since.reset();
        continue;
      }
      if (!cl.lagging_since) cl.lagging_since = now_;
      if (now_ - std::max(cl.last_reply, *cl.lagging_since) >= l.stall_timeout)
        fault(c,
              fmt::format(
                  "{} jobs ({}) behind the others and no reply for {} s", lag_jobs,
                  format_size(lag_bytes),
                  std::chrono::duration_cast<std::chrono::seconds>(now_ - cl.last_reply).count()));
    }
  }
}

void Upstairs::progress_deactivation() {
  if (state_ != State::kDeactivating) return;
  for (const auto& [id, job] : jobs_)
    for (ClientId c : kAllClients)
      if (in_flight(static_cast<uint8_t>(job.io[c]))) return;
  if (!waiting_.empty()) return;
  Status result;
  if (deactivation_flush_) {
    auto it = jobs_.find(*deactivation_flush_);
    if (it != jobs_.end()) {
      int done = 0;
      for (ClientId c : kAllClients) done += it->second.io[c] == Io::kDone ? 1 : 0;
      if (done < 2)
        result = fail(ErrorCode::kIo, "the final flush reached fewer than 2 downstairs");
    }
  }
  log::info("deactivated");
  state_ = State::kInitializing;
  repair_.reset();
  deactivation_flush_.reset();
  jobs_.clear();
  fences_.clear();
  reserved_.clear();
  deps_ = BlockMap{};
  for (ClientId c : kAllClients) {
    Client& cl = clients_[c];
    lose_connection(c, "deactivated", true);
    cl.ds = Ds::kIdle;
    cl.jobs_in_flight = cl.bytes_in_flight = cl.jobs_finished = cl.bytes_finished = 0;
  }
  if (deactivation_guest_) guest_done(*std::exchange(deactivation_guest_, std::nullopt), result);
}

void Upstairs::maintain() {
  check_limits();
  start_live_repair_if_ready();
  retire();
  if (state_ == State::kActive && !config_.read_only && !flush_or_barrier_pending()) {
    for (const Client& cl : clients_) {
      if (cl.jobs_finished >= config_.limits.barrier_jobs ||
          cl.bytes_finished >= config_.limits.barrier_bytes) {
        submit_barrier();
        break;
      }
    }
  }
  admit_waiting();
  progress_deactivation();
  connect_due();
}

// ---- status
// ----------------------------------------------------------------------------------------------

Snapshot Upstairs::snapshot() const {
  Snapshot s;
  switch (state_) {
    case State::kInitializing:
      s.state = "initializing";
      break;
    case State::kActivating:
      s.state = reconcile_ ? "reconciling" : "activating";
      break;
    case State::kActive:
      s.state = "active";
      break;
    case State::kDeactivating:
      s.state = "deactivating";
      break;
    case State::kDisabled:
      s.state = "disabled";
      break;
  }
  s.generation = generation_;
  s.region = region_;
  for (ClientId c : kAllClients) {
    const Client& cl = clients_[c];
    ClientStatus& o = s.clients[c];
    o.target = cl.target;
    o.state = ds_name(static_cast<int>(cl.ds));
    if (cl.ds != Ds::kActive && cl.ds != Ds::kIdle) {
      if (cl.mode == Mode::kOffline) o.state = "offline (" + o.state + ")";
      if (cl.mode == Mode::kFaulted && cl.ds != Ds::kLiveRepair)
        o.state = "faulted (" + o.state + ")";
      if (cl.mode == Mode::kReplaced && cl.ds != Ds::kLiveRepair)
        o.state = "replaced (" + o.state + ")";
    }
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
  s.live_repairs_completed = repairs_completed_;
  s.live_repairs_aborted = repairs_aborted_;
  s.disabled_reason = disabled_reason_;
  if (repair_ && region_) {
    RepairStatus& r = s.repair;
    r.running = true;
    r.targets = repair_->targets;
    r.source = repair_->source;
    r.extent = repair_->extent;
    r.extent_count = region_->extent_count;
    r.extents_repaired = repair_->extents_repaired;
    r.extents_confirmed = repair_->extents_confirmed;
    r.bytes_copied = repair_->bytes_copied;
    double secs = std::chrono::duration<double>(now_ - repair_->started).count();
    if (secs > 0 && repair_->extent > 0) {
      r.rate_bytes_per_s = static_cast<double>(r.bytes_copied) / secs;
      double per_extent = secs / repair_->extent;
      r.eta_s = per_extent * (region_->extent_count - repair_->extent);
    }
  }
  return s;
}

}  // namespace cru::upstairs
