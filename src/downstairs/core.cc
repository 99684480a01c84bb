#include "downstairs/core.h"

#include <fmt/format.h>

#include <algorithm>

#include "common/hash.h"
#include "common/log.h"
#include "common/units.h"
#include "downstairs/request_check.h"
#include "downstairs/snapshot.h"
#include "proto/codec.h"
#include "proto/limits.h"
#include "proto/repair_report.h"

namespace cru::downstairs {

using namespace cru::proto;

namespace {

template <typename T>
const T* as(const Message& m) {
  return std::get_if<T>(&m);
}

// Jobs: the requests that carry a job id and dependencies.
std::optional<std::pair<JobId, std::vector<JobId>*>> job_header(Message& m) {
  return std::visit(
      [](auto& v) -> std::optional<std::pair<JobId, std::vector<JobId>*>> {
        using T = std::decay_t<decltype(v)>;
        if constexpr (requires { v.deps; } && !std::is_same_v<T, Ack>)
          return std::pair{v.job_id, &v.deps};
        return std::nullopt;
      },
      m);
}

// The generation a message asks to write to disk, if it carries one.
std::optional<Generation> carried_generation(const Message& m) {
  if (auto* f = std::get_if<Flush>(&m)) return f->generation;
  if (auto* ef = std::get_if<ExtentFlush>(&m)) return ef->generation;
  if (auto* lfc = std::get_if<ExtentLiveFlushClose>(&m)) return lfc->generation;
  return std::nullopt;
}

JobKind job_kind(const Message& m) {
  if (std::holds_alternative<Read>(m)) return JobKind::kRead;
  if (std::holds_alternative<Write>(m)) return JobKind::kWrite;
  if (std::holds_alternative<WriteUnwritten>(m)) return JobKind::kWriteUnwritten;
  if (std::holds_alternative<Discard>(m)) return JobKind::kDiscard;
  if (std::holds_alternative<Flush>(m)) return JobKind::kFlush;
  if (std::holds_alternative<Barrier>(m)) return JobKind::kBarrier;
  if (std::holds_alternative<ExtentLiveClose>(m)) return JobKind::kLiveClose;
  if (std::holds_alternative<ExtentLiveFlushClose>(m)) return JobKind::kLiveFlushClose;
  if (std::holds_alternative<ExtentLiveRepair>(m)) return JobKind::kLiveRepair;
  if (std::holds_alternative<ExtentLiveReopen>(m)) return JobKind::kLiveReopen;
  CRU_ASSERT(std::holds_alternative<ExtentLiveNoOp>(m));
  return JobKind::kLiveNoOp;
}

bool is_reconcile(const Message& m) {
  return std::holds_alternative<ExtentFlush>(m) || std::holds_alternative<ExtentClose>(m) ||
         std::holds_alternative<ExtentRepair>(m) || std::holds_alternative<ExtentReopen>(m);
}

// "N extents are damaged (first: extent E: why)", or nullopt if none is.
std::optional<std::string> describe_damage(const Region& region) {
  uint32_t n = 0;
  std::optional<std::string> first;
  for (uint32_t e = 0; e < region.def().extent_count; ++e) {
    auto why = region.damage(ExtentId{e});
    if (!why) continue;
    if (n++ == 0) first = fmt::format("extent {}: {}", e, *why);
  }
  if (n == 0) return std::nullopt;
  return fmt::format("{} extents are damaged (first: {}); they need repair", n, *first);
}

}  // namespace

Core::Core(Region& region, CoreOptions options)
    : region_(region), options_(std::move(options)), rng_(options_.faults.seed) {
  // A promotion below a generation already on disk can only be a stale upstairs.
  for (const auto& v : region_.versions())
    highest_generation_ = std::max(highest_generation_, v.generation);
  if (const auto& last = region_.last_promotion())
    highest_generation_ = std::max(highest_generation_, last->generation);
}

ConnectionId Core::new_connection() {
  ConnectionId id{next_conn_++};
  conns_[id];
  stats_.connections.store(conns_.size(), std::memory_order_relaxed);
  return id;
}

bool Core::inject(double probability) {
  return probability > 0 && std::uniform_real_distribution<double>(0, 1)(rng_) < probability;
}

void Core::protocol_error(Output& out, ConnectionId conn, const std::string& what) {
  drop(out, conn, "protocol error: " + what);
}

void Core::drop(Output& out, ConnectionId conn, const std::string& reason) {
  auto it = conns_.find(conn);
  if (it == conns_.end()) return;
  out.closes.push_back({conn, reason});
  // Fetches started for this connection's jobs are abandoned (their staging removed).
  for (auto f = fetches_.begin(); f != fetches_.end();) {
    if (f->second.owner == conn) {
      out.closes.push_back({f->first, "the upstairs that asked for this repair is gone"});
      conns_.erase(f->first);
      stats_.connections.store(conns_.size(), std::memory_order_relaxed);
      f = fetches_.erase(f);
    } else {
      ++f;
    }
  }
  std::erase_if(deferred_, [&](const auto& d) { return d.first == conn; });
  if (active_ == conn) {
    active_.reset();
    // Nobody writes until the next upstairs: settle the extents at rest, so that this
    // region opens without scans and compares clean if it is left now.
    if (Status s = region_.settle(); !s)
      log::warn("settling the extents after the upstairs left: {}", s.error().message);
  }
  conns_.erase(it);
  stats_.connections.store(conns_.size(), std::memory_order_relaxed);
}

Output Core::on_disconnect(ConnectionId conn, const std::string& reason) {
  Output out;
  if (auto f = fetches_.find(conn); f != fetches_.end()) {
    finish_fetch(out, conn, fail(ErrorCode::kRepair, "repair source connection lost: " + reason));
    return out;
  }
  if (!conns_.contains(conn)) return out;
  if (active_ == conn)
    log::info("upstairs connection {} closed ({}); no active upstairs", conn, reason);
  drop(out, conn, reason);
  std::erase_if(out.closes,
                [&](const Output::Close& c) { return c.conn == conn; });  // already gone
  return out;
}

Output Core::on_connected(ConnectionId conn) {
  Output out;
  if (fetches_.contains(conn)) out.send(conn, RepairHello{});
  return out;
}

Output Core::on_tick() {
  Output out;
  auto deferred = std::move(deferred_);
  deferred_.clear();
  std::set<ConnectionId> touched;
  for (auto& [conn, job] : deferred) {
    if (!conns_.contains(conn)) continue;
    Conn& c = conns_.at(conn);
    JobId id = job.id;
    if (execute(out, conn, job))
      complete(c, id,
               std::holds_alternative<Flush>(job.request) ||
                   std::holds_alternative<Barrier>(job.request));
    touched.insert(conn);
  }
  for (auto conn : touched)
    if (conns_.contains(conn)) run_ready(out, conn);
  out.tick_soon = !deferred_.empty();
  return out;
}

Output Core::on_message(ConnectionId conn, Message m) {
  Output out;
  auto it = conns_.find(conn);
  if (it == conns_.end()) return out;  // closed while the message was in flight
  if (std::holds_alternative<Ruok>(m)) {
    out.send(conn, Imok{});  // in every state
    return out;
  }
  switch (it->second.state) {
    case State::kNew:
      handle_new(out, conn, m);
      break;
    case State::kHello:
      if (auto p = as<PromoteToActive>(m))
        handle_promote(out, conn, *p);
      else
        protocol_error(out, conn, fmt::format("expected PromoteToActive, got {}", describe(m)));
      break;
    case State::kPromoted:
      if (as<RegionInfoPlease>(m)) {
        out.send(conn, RegionInfo{region_.def()});
        it->second.state = State::kRegionInfoSent;
      } else {
        protocol_error(out, conn, fmt::format("expected RegionInfoPlease, got {}", describe(m)));
      }
      break;
    case State::kRegionInfoSent:
      if (as<ExtentVersionsPlease>(m)) {
        it->second.state = State::kRunning;
        reset_completed(it->second, std::nullopt);
        out.send(conn, ExtentVersions{region_.versions()});
      } else if (auto lf = as<LastFlush>(m)) {
        // A reconnecting upstairs replays everything after its last flush, also jobs that
        // ran here already: each must leave what it left the first time. Data converges by
        // running in order again; a flush run again stamps extents that later jobs had
        // dirtied, so every write-type job dirties its extents even when it changes no
        // block (Extent::write, Extent::discard) and the next flush stamps them again.
        it->second.state = State::kRunning;
        reset_completed(it->second, lf->last_flushed);
        log::info("upstairs {} replays jobs after {}", conn, lf->last_flushed);
        // A replay restores only the jobs since the last flush. A block torn by a crash
        // was being written by one of them, and the replay writes it whole again; other
        // damage (a lost extent file, a rotten block) it cannot restore. So the first
        // flush after the replay (which follows every replayed write) fails if damage is
        // still left, and the upstairs repairs this downstairs rather than trusting the
        // replay (a replaying upstairs asks for no extent versions). Reporting at once
        // faulted replicas whose replay was about to heal them.
        it->second.damage_check_at_flush = true;
      } else {
        protocol_error(
            out, conn,
            fmt::format("expected ExtentVersionsPlease or LastFlush, got {}", describe(m)));
      }
      break;
    case State::kRunning:
      handle_running(out, conn, m);
      break;
    case State::kRepairPeer:
      handle_repair_peer(out, conn, m);
      break;
    case State::kFetching:
      handle_fetching(out, conn, m);
      break;
  }
  out.tick_soon = !deferred_.empty();
  return out;
}

// ---- negotiation ---------------------------------------------------------------------------

void Core::handle_new(Output& out, ConnectionId conn, Message& m) {
  Conn& c = conns_.at(conn);
  if (auto rh = as<RepairHello>(m)) {
    if (auto s = check_version(rh->version); !s) {
      out.send(conn, VersionMismatch{kProtocolVersion});
      drop(out, conn, "repair peer: " + s.error().message);
      return;
    }
    c.state = State::kRepairPeer;
    out.send(conn, RegionInfo{region_.def()});
    return;
  }
  auto hi = as<HereIAm>(m);
  if (!hi) return protocol_error(out, conn, fmt::format("expected HereIAm, got {}", describe(m)));
  if (auto s = check_version(hi->version); !s) {
    out.send(conn, VersionMismatch{kProtocolVersion});
    return drop(out, conn, s.error().message);
  }
  if (hi->read_only != options_.read_only) {
    out.send(conn, ReadOnlyMismatch{options_.read_only});
    return drop(out, conn,
                fmt::format("upstairs is {} but this downstairs is {}",
                            hi->read_only ? "read-only" : "read-write",
                            options_.read_only ? "read-only" : "read-write"));
  }
  if (hi->encrypted != region_.def().encrypted) {
    out.send(conn, EncryptedMismatch{region_.def().encrypted});
    return drop(out, conn,
                fmt::format("upstairs is {} but the region is {}",
                            hi->encrypted ? "encrypted" : "not encrypted",
                            region_.def().encrypted ? "encrypted" : "not encrypted"));
  }
  c.hello = *hi;
  c.state = State::kHello;
  out.send(conn, YesItsMe{kProtocolVersion, options_.repair_addr, highest_generation_});
  log::info("upstairs {} session {} connected (connection {}, generation {})", hi->upstairs_id,
            hi->session_id, conn, hi->generation);
}

void Core::handle_promote(Output& out, ConnectionId conn, const PromoteToActive& p) {
  Conn& c = conns_.at(conn);
  if (p.upstairs_id != c.hello.upstairs_id || p.session_id != c.hello.session_id) {
    out.send(conn, UuidMismatch{c.hello.upstairs_id});
    return drop(out, conn, "PromoteToActive ids differ from HereIAm's");
  }
  auto refuse = [&](std::string why) {
    out.send(conn, ErrorReport{JobId{}, WireStatus{ErrorCode::kGenerationTooLow, why}});
    log::warn("refused promotion of upstairs {} (connection {}): {}", p.upstairs_id, conn, why);
    drop(out, conn, why);
  };
  if (!options_.read_only) {
    if (p.generation.value == 0) return refuse("generation 0 is not allowed");
    // Strictly above every generation seen, or the very promotion last recorded coming
    // back (the same upstairs and session reconnecting): anything else would let a second
    // upstairs write beside the first.
    const auto& last = region_.last_promotion();
    const bool same_session = last && last->generation == p.generation &&
                              last->upstairs_id == p.upstairs_id &&
                              last->session_id == p.session_id;
    if (p.generation < highest_generation_ ||
        (p.generation == highest_generation_ && !same_session))
      return refuse(fmt::format("generation {} does not exceed generation {} already seen{}",
                                p.generation, highest_generation_,
                                last && last->generation == highest_generation_
                                    ? fmt::format(" (promoted by upstairs {} session {})",
                                                  last->upstairs_id, last->session_id)
                                    : std::string()));
    if (active_ && *active_ != conn) {
      const Conn& old = conns_.at(*active_);
      log::warn("upstairs {} (generation {}) takes over from upstairs {} (generation {})",
                p.upstairs_id, p.generation, old.hello.upstairs_id, old.generation);
      ConnectionId old_conn = *active_;
      out.send(old_conn, YouAreNoLongerActive{p.upstairs_id, p.session_id, p.generation});
      drop(
          out, old_conn,
          fmt::format("taken over by upstairs {} with generation {}", p.upstairs_id, p.generation));
    }
    // Recorded before the answer: after a crash the promotion is still known.
    if (auto s = region_.record_promotion({p.generation, p.upstairs_id, p.session_id}); !s) {
      log::error("recording the promotion of upstairs {}: {}", p.upstairs_id,
                 s.error().to_string());
      out.send(conn, ErrorReport{JobId{}, WireStatus::from(s.error())});
      return drop(out, conn, "cannot record the promotion: " + s.error().message);
    }
    active_ = conn;
    highest_generation_ = p.generation;
    // A new session starts from a whole region, whatever the last one left closed.
    if (auto s = region_.reopen_all(); !s) {
      log::error("reopening extents for upstairs {}: {}", p.upstairs_id, s.error().to_string());
      out.send(conn, ErrorReport{JobId{}, WireStatus::from(s.error())});
      return drop(out, conn, "cannot reopen extents: " + s.error().message);
    }
  }
  c.generation = p.generation;
  c.state = State::kPromoted;
  out.send(conn, YouAreNowActive{p.upstairs_id, p.session_id, p.generation});
  log::info("upstairs {} is active with generation {} (connection {})", p.upstairs_id, p.generation,
            conn);
}

// ---- jobs ------------------------------------------------------------------------------------

void Core::handle_running(Output& out, ConnectionId conn, Message& m) {
  // Only the generation this connection was promoted with may reach the disk: anything
  // else is a confused or hostile peer, never a legitimate upstairs.
  if (auto g = carried_generation(m); g && *g != conns_.at(conn).generation)
    return protocol_error(out, conn,
                          fmt::format("{} carries generation {} but this connection was promoted "
                                      "with generation {}",
                                      describe(m), *g, conns_.at(conn).generation));
  // Every field is checked against the region before anything is queued, allocated or
  // read from disk; a bad request is answered with the error and never runs.
  if (Status s = check_request(m, region_.def()); !s) {
    auto reply = error_reply(m, s.error());
    if (!reply) return protocol_error(out, conn, s.error().message);
    log::warn("connection {}: refused {}: {}", conn, describe(m), s.error().to_string());
    out.send(conn, std::move(*reply));
    // As after a failed read: a read changes nothing, so what waits for it may run.
    if (auto r = as<Read>(m)) {
      complete(conns_.at(conn), r->job_id, false);
      run_ready(out, conn);
    }
    return;
  }
  if (is_reconcile(m)) return handle_reconcile(out, conn, m);
  auto header = job_header(m);
  if (!header)
    return protocol_error(out, conn, fmt::format("unexpected {} while running jobs", describe(m)));
  if (options_.read_only && !std::holds_alternative<Read>(m) && !std::holds_alternative<Flush>(m) &&
      !std::holds_alternative<Barrier>(m)) {
    // Answered, not dropped: the upstairs sees why.
    out.send(conn,
             Ack{header->first, WireStatus{ErrorCode::kReadOnly, "this downstairs is read-only"}});
    return;
  }
  Conn& c = conns_.at(conn);
  if (c.pending.size() >= kMaxQueuedJobs)
    return protocol_error(out, conn, fmt::format("more than {} jobs queued", kMaxQueuedJobs));
  Job job{header->first, std::move(*header->second), std::move(m)};
  if (tracing()) {
    std::visit(
        [&](const auto& v) {
          if constexpr (requires { v.trace; }) {
            if (v.trace)
              job.trace = JobTrace{
                  {{v.trace->trace_id_high, v.trace->trace_id_low}, v.trace->parent_span_id, true},
                  options_.clock()};
          }
        },
        job.request);
  }
  enqueue_job(out, conn, std::move(job));
}

bool Core::ready(const Conn& c, const Job& job) const {
  return std::all_of(job.deps.begin(), job.deps.end(),
                     [&](JobId d) { return c.completed.contains(d); });
}

void Core::enqueue_job(Output& out, ConnectionId conn, Job job) {
  Conn& c = conns_.at(conn);
  c.pending_bytes += job_bytes(job);
  c.pending.push_back(std::move(job));
  run_ready(out, conn);
}

void Core::run_ready(Output& out, ConnectionId conn) {
  // Jobs usually arrive in an order that lets each run at once. A completion mostly
  // unblocks jobs queued after it, so one pass continues past it; another pass runs only
  // if this one made progress (a later job may have unblocked an earlier one).
  bool progress = true;
  while (progress && conns_.contains(conn)) {
    progress = false;
    Conn& c = conns_.at(conn);
    for (auto it = c.pending.begin(); it != c.pending.end();) {
      if (!ready(c, *it)) {
        ++it;
        continue;
      }
      Job job = std::move(*it);
      it = c.pending.erase(it);
      c.pending_bytes -= job_bytes(job);
      progress = true;
      if (options_.faults.lossy && inject(0.25)) {
        deferred_.emplace_back(conn, std::move(job));
        continue;
      }
      bool resets = std::holds_alternative<Flush>(job.request) ||
                    std::holds_alternative<Barrier>(job.request);
      JobId id = job.id;
      if (execute(out, conn, job)) complete(c, id, resets);
      if (!conns_.contains(conn)) return;  // the job's failure closed the connection
    }
  }
}

void Core::complete(Conn& c, JobId id, bool resets) {
  c.running.erase(id);
  // After a flush or barrier the upstairs names no job older than it as a dependency.
  if (resets) reset_completed(c, std::nullopt);
  if (!c.completed.insert(id).second) return;
  c.completed_order.push_back(id);
  if (c.completed_order.size() > kMaxCompletedJobs) {
    c.completed.erase(c.completed_order.front());
    c.completed_order.pop_front();
  }
}

void Core::reset_completed(Conn& c, std::optional<JobId> only) {
  c.completed.clear();
  c.completed_order.clear();
  if (only) {
    c.completed.insert(*only);
    c.completed_order.push_back(*only);
  }
}

uint64_t Core::job_bytes(const Job& job) const {
  // The deque slot, the message's fixed part and the dependency list.
  uint64_t bytes = sizeof(Job) + job.deps.capacity() * sizeof(JobId);
  std::visit(
      [&](const auto& m) {
        using T = std::decay_t<decltype(m)>;
        if constexpr (requires { m.data.size() + m.contexts.size(); })
          bytes += m.data.size() + m.contexts.size() * sizeof(m.contexts[0]);
        if constexpr (std::is_same_v<T, Read>)
          bytes += uint64_t{m.block_count} * (region_.def().block_size + sizeof(BlockContext));
      },
      job.request);
  return bytes;
}

uint64_t Core::held_bytes(ConnectionId conn) const {
  auto it = conns_.find(conn);
  if (it == conns_.end()) return 0;
  return it->second.pending_bytes + it->second.completed_order.size() * kCompletedJobBytes;
}

uint64_t Core::frame_bytes_max(ConnectionId conn) const {
  auto it = conns_.find(conn);
  if (it == conns_.end()) return kNegotiationFrameBytesMax;
  switch (it->second.state) {
    case State::kNew:
    case State::kHello:
    case State::kPromoted:
    case State::kRegionInfoSent:
    case State::kRepairPeer:  // asks for chunks; sends no data
      return kNegotiationFrameBytesMax;
    case State::kRunning:
      return options_.read_only ? kJobFrameWithoutDataBytesMax : kMaxFrameBytes;
    case State::kFetching:
      return kChunkFrameBytesMax;
  }
  CRU_UNREACHABLE("connection state");
}

bool Core::negotiated(ConnectionId conn) const {
  auto it = conns_.find(conn);
  return it != conns_.end() && it->second.state != State::kNew;
}

bool Core::execute(Output& out, ConnectionId conn, Job& job) {
  const JobKind kind = job_kind(job.request);
  uint64_t write_bytes = 0;
  if (auto w = as<Write>(job.request)) write_bytes = w->data.size();
  if (auto wu = as<WriteUnwritten>(job.request)) write_bytes = wu->data.size();
  const size_t sends_before = out.sends.size();
  const auto start = options_.clock ? options_.clock() : std::chrono::steady_clock::time_point{};
  const bool done = execute_job(out, conn, job);
  const auto end = options_.clock ? options_.clock() : std::chrono::steady_clock::time_point{};
  if (options_.clock) stats_[kind].disk_seconds.record(end - start);
  CoreStats::add(stats_[kind].jobs, 1);
  bool ok = true;
  // The job's reply (and, for a read, its data): errors by the code the upstairs sees.
  for (size_t i = sends_before; i < out.sends.size(); ++i) {
    std::visit(
        [&](const auto& reply) {
          if constexpr (requires { reply.status.code; }) {
            if (!reply.status.is_ok()) ok = false;
            if (!reply.status.is_ok())
              CoreStats::add(stats_.errors[static_cast<size_t>(reply.status.code)], 1);
            else if constexpr (std::is_same_v<std::decay_t<decltype(reply)>, ReadResponse>)
              CoreStats::add(stats_.read_bytes, reply.data.size());
            else
              CoreStats::add(stats_.written_bytes, write_bytes);
          }
        },
        out.sends[i].message);
  }
  if (tracing()) trace_job(job, ok, start, end);
  return done;
}

void Core::trace_job(const Job& job, bool ok, SteadyTime start, SteadyTime end) {
  if (!job.trace && ok) return;  // neither sampled nor failed
  trace::Tracer& t = *options_.tracer;
  auto us = [&](SteadyTime at) { return t.unix_us(at); };
  auto micros = [](auto d) {
    return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
  };
  trace::Span s;
  s.name = fmt::format("{} job", job_kind_name(job_kind(job.request)));
  s.span_id = t.new_span_id();
  const SteadyTime received = job.trace ? job.trace->received : start;
  if (job.trace) {
    s.trace = job.trace->parent.trace;
    s.parent_id = job.trace->parent.span_id;
  } else {
    s.trace = t.new_trace_id();  // a failure nobody sampled: a trace of its own
    s.attributes.push_back({"sampled_for", std::string("error")});
  }
  s.start_unix_us = us(received);
  s.duration_us = micros(end - received);
  s.attributes.push_back({"job.id", static_cast<int64_t>(job.id.value)});
  s.attributes.push_back({"result", std::string(ok ? "ok" : "error")});
  s.events = {
      {us(received), "decoded"}, {us(start), "dependencies met"}, {us(end), "reply queued"}};
  s.error = !ok;
  // The two phases as children: waiting for the jobs it depends on, then the disk.
  trace::Span wait{s.trace,      t.new_span_id(),          s.span_id, "wait for dependencies",
                   us(received), micros(start - received), {},        {},
                   false};
  trace::Span disk{
      s.trace, t.new_span_id(), s.span_id, "disk", us(start), micros(end - start), {}, {}, !ok};
  t.record(std::move(s));
  t.record(std::move(wait));
  t.record(std::move(disk));
}

void Core::trace_repair(const Fetch& f, const Status& result) {
  trace::Tracer& t = *options_.tracer;
  const SteadyTime end = options_.clock();
  trace::SpanContext root = t.new_root();  // repairs are always traced, each a trace
  trace::Span s;
  s.trace = root.trace;
  s.span_id = root.span_id;
  s.name = "repair extent";
  s.start_unix_us = t.unix_us(f.started);
  s.duration_us = std::chrono::duration_cast<std::chrono::microseconds>(end - f.started).count();
  s.attributes = {{"extent", static_cast<int64_t>(f.extent.value)},
                  {"kind", std::string(f.job ? "live repair" : "reconciliation")},
                  {"bytes_transferred", static_cast<int64_t>(f.network_bytes)},
                  {"result", result ? std::string("ok") : result.error().to_string()}};
  s.error = !result;
  t.record(std::move(s));
}

bool Core::execute_job(Output& out, ConnectionId conn, Job& job) {
  Message& m = job.request;
  const JobId id = job.id;
  auto injected = [&](const char* what) {
    log::warn("injected {} error for job {}", what, id);
    return WireStatus{ErrorCode::kInjected, fmt::format("injected {} error", what)};
  };
  // A write, discard or flush that failed is answered but never counts as completed:
  // jobs that depend on it (above all a later flush) must not run on this connection, or
  // the flush would stamp the extent with a current flush number while it lacks the
  // write, and repair (which compares flush numbers) would skip it: found by the
  // simulator as a stale read after an EIO. The upstairs faults this downstairs on the
  // error and drops the connection, taking the waiting jobs with it.
  if (auto w = std::get_if<Write>(&m)) {
    WireStatus st = inject(options_.faults.write_error)
                        ? injected("write")
                        : WireStatus::from(region_.write(w->start, w->block_size, w->contexts,
                                                         w->data.span(), false));
    out.send(conn, Ack{id, st});
    return st.is_ok();
  }
  if (auto wu = std::get_if<WriteUnwritten>(&m)) {
    WireStatus st = inject(options_.faults.write_error)
                        ? injected("write")
                        : WireStatus::from(region_.write(wu->start, wu->block_size, wu->contexts,
                                                         wu->data.span(), true));
    out.send(conn, Ack{id, st});
    return st.is_ok();
  }
  if (auto r = std::get_if<Read>(&m)) {
    ReadResponse resp{id, {}, region_.def().block_size, {}, {}};
    if (inject(options_.faults.read_error)) {
      resp.status = injected("read");
    } else if (auto res = region_.read(r->start, r->block_count); !res) {
      resp.status = WireStatus::from(res.error());
    } else {
      resp.contexts = std::move(res->contexts);
      resp.data = Bytes(std::move(res->data));
    }
    out.send(conn, std::move(resp));
    return true;
  }
  if (auto d = std::get_if<Discard>(&m)) {
    WireStatus st = inject(options_.faults.write_error)
                        ? injected("discard")
                        : WireStatus::from(region_.discard(d->start, d->block_count));
    out.send(conn, Ack{id, st});
    return st.is_ok();
  }
  if (auto f = std::get_if<Flush>(&m)) {
    WireStatus st;
    if (inject(options_.faults.flush_error)) {
      st = injected("flush");
    } else if (options_.read_only) {
      st = WireStatus::ok();  // nothing can be dirty
    } else if (auto damaged = std::exchange(conns_.at(conn).damage_check_at_flush, false)
                                  ? describe_damage(region_)
                                  : std::nullopt) {
      st = WireStatus{ErrorCode::kCorrupt, *damaged};  // see LastFlush
    } else {
      st = WireStatus::from(region_.flush(f->flush_number, f->generation, f->extent_limit));
    }
    // The snapshot is complete before the ack, so the guest sees it taken at this flush.
    // Its failure leaves the flush durable: answered kSnapshotFailed, and the job counts as
    // completed (what depends on it may run; the upstairs does not fault this replica).
    if (st.is_ok() && f->snapshot) st = take_snapshot(*f);
    out.send(conn, Ack{id, st});
    return st.is_ok() || st.code == ErrorCode::kSnapshotFailed;
  }
  if (std::holds_alternative<Barrier>(m)) {
    out.send(conn, Ack{id, WireStatus::ok()});
    return true;
  }
  if (auto lc = std::get_if<ExtentLiveClose>(&m)) {
    auto v = region_.close_extent(lc->extent);
    out.send(conn, ExtentLiveCloseAck{id, v ? WireStatus::ok() : WireStatus::from(v.error()),
                                      v.value_or(ExtentVersion{})});
    return true;
  }
  if (auto lfc = std::get_if<ExtentLiveFlushClose>(&m)) {
    Status s = region_.flush_extent(lfc->extent, lfc->flush_number, lfc->generation);
    Result<ExtentVersion> v = s ? region_.close_extent(lfc->extent) : tl::unexpected(s.error());
    out.send(conn, ExtentLiveCloseAck{id, v ? WireStatus::ok() : WireStatus::from(v.error()),
                                      v.value_or(ExtentVersion{})});
    return true;
  }
  if (auto lr = std::get_if<ExtentLiveRepair>(&m)) {
    conns_.at(conn).running.insert(id);
    start_fetch(out, conn, id, std::nullopt, lr->extent, lr->source_addr);
    return false;
  }
  if (auto lo = std::get_if<ExtentLiveReopen>(&m)) {
    out.send(conn, Ack{id, WireStatus::from(region_.reopen_extent(lo->extent))});
    return true;
  }
  if (std::holds_alternative<ExtentLiveNoOp>(m)) {
    out.send(conn, Ack{id, WireStatus::ok()});
    return true;
  }
  CRU_UNREACHABLE("job_header accepted a message execute() does not know");
}

WireStatus Core::take_snapshot(const Flush& f) {
  const std::string& name = *f.snapshot;
  auto failed = [&](const std::string& why) {
    log::error("snapshot '{}' at flush {} failed: {} (the flush itself is durable)", name,
               f.flush_number, why);
    return WireStatus{ErrorCode::kSnapshotFailed,
                      fmt::format("snapshot '{}' on {}: {}", name, region_.dir(), why)};
  };
  if (options_.read_only) return failed("this downstairs is read-only");
  // A live-repair flush covers only extents up to the repair point: the rest are not this
  // flush's data here.
  if (f.extent_limit) return failed("this replica is under live repair");
  const auto start = options_.clock ? options_.clock() : std::chrono::steady_clock::time_point{};
  uint32_t logged_tenth = 0;
  auto progress = [&](const SnapshotProgress& p) {
    if (p.method != SnapshotMethod::kCopy) return;
    const uint32_t tenth = p.extents_done * 10 / p.extents_total;
    if (tenth == logged_tenth) return;
    logged_tenth = tenth;
    log::info("snapshot '{}': full copy, {} of {} extents, {} written", name, p.extents_done,
              p.extents_total, format_size(p.bytes_copied));
  };
  auto made = make_snapshot(region_, name, f.flush_number, f.generation, progress);
  if (!made) return failed(made.error().to_string());
  const std::string took =
      options_.clock
          ? fmt::format(" in {} ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                                         options_.clock() - start)
                                         .count())
          : std::string();
  if (made->method == SnapshotMethod::kReflink)
    log::info("snapshot '{}' at flush {} taken by reflink of {} extents{}", name, f.flush_number,
              region_.def().extent_count, took);
  else
    log::info(
        "snapshot '{}' at flush {} taken by full copy ({} written; this filesystem cannot "
        "reflink){}",
        name, f.flush_number, format_size(made->bytes_copied), took);
  return WireStatus::ok();
}

// ---- reconciliation (one step at a time, no dependencies) --------------------------------------

void Core::handle_reconcile(Output& out, ConnectionId conn, Message& m) {
  if (auto f = as<ExtentFlush>(m)) {
    out.send(conn, RepairAck{f->repair_id, WireStatus::from(region_.flush_extent(
                                               f->extent, f->flush_number, f->generation))});
  } else if (auto c = as<ExtentClose>(m)) {
    auto v = region_.close_extent(c->extent);
    out.send(conn, RepairAck{c->repair_id, v ? WireStatus::ok() : WireStatus::from(v.error())});
  } else if (auto r = as<ExtentRepair>(m)) {
    start_fetch(out, conn, std::nullopt, r->repair_id, r->extent, r->source_addr);
  } else if (auto o = as<ExtentReopen>(m)) {
    out.send(conn, RepairAck{o->repair_id, WireStatus::from(region_.reopen_extent(o->extent))});
  }
}

// ---- repair: source side -----------------------------------------------------------------------

void Core::handle_repair_peer(Output& out, ConnectionId conn, const Message& m) {
  auto req = as<ExtentFetch>(m);
  if (!req) return protocol_error(out, conn, fmt::format("repair peer sent {}", describe(m)));
  Conn& c = conns_.at(conn);
  auto done_with_error = [&](const Error& e) {
    log::warn("repair peer {}: extent {}: {}", conn, req->extent, e.to_string());
    out.send(conn, ExtentFetchDone{req->extent, WireStatus::from(e), 0, 0});
    c.stream.reset();
  };
  if (req->offset == 0) {
    auto file = region_.open_for_transfer(req->extent);
    if (!file) return done_with_error(file.error());
    // Not emplace(): clang (clang-tidy) cannot default-construct this nested struct there.
    c.stream = Stream{};
    c.stream->extent = req->extent;
    c.stream->file = std::move(*file);
    c.stream->file_bytes = region_.extent_file_bytes();
    c.stream->epoch = region_.extent_epoch(req->extent);
  }
  if (!c.stream || c.stream->extent != req->extent || c.stream->next_offset != req->offset)
    return done_with_error(Error{
        ErrorCode::kRepair, fmt::format("chunk at offset {} asked out of order", req->offset)});
  Stream& s = *c.stream;
  uint64_t n = std::min<uint64_t>(kRepairChunkBytes, s.file_bytes - s.next_offset);
  ByteBuffer chunk(n);
  if (auto r = s.file->read_at(s.next_offset, chunk.span()); !r) return done_with_error(r.error());
  s.hash.update(chunk.span());
  if (req->have_hash && *req->have_hash == integrity_hash(chunk.span()))
    out.send(conn, ExtentChunk{req->extent, s.next_offset, true, Bytes{}});
  else {
    CoreStats::add(stats_.repair_sent_bytes, chunk.size());
    out.send(conn, ExtentChunk{req->extent, s.next_offset, false, Bytes(std::move(chunk))});
  }
  s.next_offset += n;
  if (s.next_offset < s.file_bytes) return;
  // The extent was closed throughout only if it was never reopened meanwhile.
  if (region_.extent_epoch(s.extent) != s.epoch || region_.is_open(s.extent))
    return done_with_error(
        Error{ErrorCode::kRepair, "the extent was reopened during the transfer"});
  out.send(conn, ExtentFetchDone{s.extent, WireStatus::ok(), s.file_bytes, s.hash.digest()});
  log::info("sent extent {} ({} bytes) to repair peer {}", s.extent, s.file_bytes, conn);
  c.stream.reset();
}

// ---- repair: target side -----------------------------------------------------------------------

void Core::start_fetch(Output& out, ConnectionId owner, std::optional<JobId> job,
                       std::optional<RepairId> repair, ExtentId extent,
                       const std::string& source_addr) {
  auto staging = region_.begin_repair(extent);
  if (!staging) {
    Error e = staging.error();
    log::warn("cannot repair extent {}: {}", extent, e.to_string());
    if (job) {
      out.send(owner, Ack{*job, WireStatus::from(e)});
      complete(conns_.at(owner), *job, false);
    } else {
      out.send(owner, RepairAck{*repair, WireStatus::from(e)});
    }
    return;
  }
  auto local = region_.open_for_transfer(extent);
  if (!local)
    log::warn("extent {}: cannot read our own copy, fetching all of it: {}", extent,
              local.error().to_string());
  ConnectionId fc = new_connection();
  conns_.at(fc).state = State::kFetching;
  fetches_[fc] = Fetch{owner,
                       job,
                       repair,
                       extent,
                       std::move(*staging),
                       0,
                       false,
                       local ? std::move(*local) : nullptr,
                       {},
                       0};
  if (tracing()) fetches_[fc].started = options_.clock();
  out.connects.push_back({fc, source_addr});
  log::info("repairing extent {} from {}", extent, source_addr);
}

void Core::request_chunks(Output& out, ConnectionId fetch_conn, Fetch& f) {
  uint64_t file_bytes = region_.extent_file_bytes();
  uint64_t window = f.staging->received_bytes() + kFetchPipelineChunks * kRepairChunkBytes;
  while (f.requested < file_bytes && f.requested < window) {
    uint64_t n = std::min<uint64_t>(kRepairChunkBytes, file_bytes - f.requested);
    std::optional<ByteBuffer> mine;
    if (f.local) {
      mine.emplace(n);
      if (auto r = f.local->read_at(f.requested, mine->span()); !r) {
        log::warn("extent {}: reading our copy at {}: {}; fetching the rest whole", f.extent,
                  f.requested, r.error().to_string());
        mine.reset();
        f.local.reset();
      }
    }
    std::optional<uint64_t> have =
        mine ? std::optional(integrity_hash(mine->span())) : std::nullopt;
    f.offered.push_back(std::move(mine));
    out.send(fetch_conn, ExtentFetch{f.extent, f.requested, have});
    f.requested += n;
  }
}

void Core::handle_fetching(Output& out, ConnectionId conn, Message& m) {
  auto it = fetches_.find(conn);
  CRU_ASSERT(it != fetches_.end());
  Fetch& f = it->second;
  if (auto info = as<RegionInfo>(m)) {
    const auto& mine = region_.def();
    const auto& theirs = info->region;
    if (f.got_info || theirs.block_size != mine.block_size ||
        theirs.extent_size != mine.extent_size || theirs.encrypted != mine.encrypted ||
        theirs.extent_count <= f.extent.value)
      return finish_fetch(
          out, conn,
          fail(ErrorCode::kRepair, "the repair source's region geometry differs from ours"));
    f.got_info = true;
    return request_chunks(out, conn, f);
  }
  if (auto chunk = as<ExtentChunk>(m)) {
    if (!f.got_info || chunk->extent != f.extent || f.offered.empty())
      return finish_fetch(out, conn,
                          fail(ErrorCode::kRepair, "unexpected chunk from the repair source"));
    std::optional<ByteBuffer> mine = std::move(f.offered.front());
    f.offered.pop_front();
    if (chunk->unchanged && !mine)
      return finish_fetch(
          out, conn,
          fail(ErrorCode::kRepair, "the repair source called a chunk we did not offer unchanged"));
    std::span<const std::byte> bytes = chunk->unchanged ? mine->span() : chunk->data.span();
    if (auto s = f.staging->append(chunk->offset, bytes); !s) return finish_fetch(out, conn, s);
    f.network_bytes += chunk->data.size();
    CoreStats::add(stats_.repair_received_bytes, chunk->data.size());
    return request_chunks(out, conn, f);
  }
  if (auto done = as<ExtentFetchDone>(m)) {
    if (!done->status.is_ok()) return finish_fetch(out, conn, done->status.to_status());
    return finish_fetch(out, conn, f.staging->commit(done->file_bytes, done->file_hash));
  }
  if (as<VersionMismatch>(m))
    return finish_fetch(
        out, conn,
        fail(ErrorCode::kVersionMismatch, "repair source speaks another protocol version"));
  finish_fetch(out, conn,
               fail(ErrorCode::kRepair, fmt::format("repair source sent {}", describe(m))));
}

void Core::finish_fetch(Output& out, ConnectionId fetch_conn, const Status& result) {
  auto it = fetches_.find(fetch_conn);
  CRU_ASSERT(it != fetches_.end());
  Fetch f = std::move(it->second);
  fetches_.erase(it);
  conns_.erase(fetch_conn);
  stats_.connections.store(conns_.size(), std::memory_order_relaxed);
  out.closes.push_back(
      {fetch_conn, result ? "repair transfer complete" : "repair transfer failed"});
  if (result) {
    log::info("extent {} repaired ({} of its {} bytes differed and were copied)", f.extent,
              f.network_bytes, f.staging->received_bytes());
  } else {
    log::warn("repair of extent {} failed: {}", f.extent, result.error().to_string());
  }
  if (tracing()) trace_repair(f, result);
  f.staging.reset();  // removes the staging file unless committed
  if (!conns_.contains(f.owner)) return;
  // A success tells the upstairs what crossed the network, for its repair progress.
  WireStatus st = result ? proto::repair_done_status(f.network_bytes) : WireStatus::from(result);
  if (f.job) {
    out.send(f.owner, Ack{*f.job, st});
    complete(conns_.at(f.owner), *f.job, false);
    run_ready(out, f.owner);
  } else {
    out.send(f.owner, RepairAck{*f.repair, st});
  }
}

}  // namespace cru::downstairs
