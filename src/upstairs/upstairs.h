// The upstairs core: turns guest reads, writes and flushes into jobs replicated to three
// downstairs and decides when each guest call may return. Pure: `apply(event, now)`
// returns actions (messages to send, connections to open or drop, guest replies); no
// asio, no clock (time comes in with each event), no threads. It owns all upstairs
// state: the job table, dependencies, per-downstairs state, activation, reconciliation,
// replay, live repair and fencing. The shell (volume.h) runs it on one io thread.
#pragma once

#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "common/bytes.h"
#include "common/ids.h"
#include "common/result.h"
#include "common/units.h"
#include "common/uuid.h"
#include "proto/messages.h"
#include "trace/span.h"
#include "upstairs/block_map.h"
#include "upstairs/mend.h"
#include "upstairs/missing_writes.h"
#include "upstairs/states.h"
#include "upstairs/status.h"

namespace cru::upstairs {

using GuestId = StrongId<struct GuestIdTag, uint64_t>;
// Identifies one TCP connection to one downstairs; events from an older connection of
// the same client are ignored. 0 is never used.
using ConnId = StrongId<struct ConnIdTag, uint64_t>;

// The first reconnect after a drop comes soon (most drops are brief); each failure
// doubles the wait up to Limits::reconnect_backoff_max.
inline constexpr std::chrono::milliseconds kReconnectBackoffMin{100};

struct Config {
  std::array<std::string, kClientCount> targets;  // host:port
  bool read_only = false;
  bool encrypted = false;
  Uuid upstairs_id;
  Uuid session_id;
  Limits limits;
};

// ---- guest operations (block units; the volume shell splits and encrypts) -------------
// `trace`: the guest operation's span when it is sampled (the shell decides); its jobs
// carry it to the downstairs. Default: not traced.

struct ReadOp {
  BlockIndex start;
  uint32_t count = 0;
  trace::SpanContext trace{};
};
struct WriteOp {
  BlockIndex start;
  std::vector<proto::BlockContext> contexts;  // one per block, already hashed/encrypted
  Bytes data;
  bool only_unwritten = false;
  trace::SpanContext trace{};
};
struct DiscardOp {
  BlockIndex start;
  uint32_t count = 0;
  trace::SpanContext trace{};
};
struct FlushOp {
  // Also take a snapshot of that name on every downstairs (proto/snapshot_name.h rules).
  std::optional<std::string> snapshot;
  trace::SpanContext trace{};
};
struct ActivateOp {
  std::optional<Generation> generation;  // nullopt: 1 + the highest any downstairs saw
};
struct DeactivateOp {};
struct ReplaceOp {
  std::string old_target;
  std::string new_target;
};
using GuestOp =
    std::variant<ReadOp, WriteOp, DiscardOp, FlushOp, ActivateOp, DeactivateOp, ReplaceOp>;

struct ReadData {
  std::vector<std::optional<proto::BlockContext>> contexts;
  Bytes data;
};

// ---- events ------------------------------------------------------------------------------

struct GuestSubmit {
  GuestId id;
  GuestOp op;
};
struct ClientConnected {
  ClientId client;
  ConnId conn;
};
struct ClientMessage {
  ClientId client;
  ConnId conn;
  proto::Message message;
};
struct ClientDisconnected {
  ClientId client;
  ConnId conn;
  std::string reason;
};
// A backlog of frames to the downstairs is draining: it is taking what it is sent (reading
// its socket) even if it has not answered yet. A slow link is not a stopped process.
struct ClientSent {
  ClientId client;
  ConnId conn;
};
struct Tick {};
using Event =
    std::variant<GuestSubmit, ClientConnected, ClientMessage, ClientDisconnected, ClientSent, Tick>;

// ---- actions -----------------------------------------------------------------------------

struct SendTo {
  ClientId client;
  ConnId conn;
  proto::Message message;
};
struct ConnectTo {
  ClientId client;
  ConnId conn;
  std::string address;
};
struct Disconnect {
  ClientId client;
  ConnId conn;
  std::string reason;
};
struct GuestDone {
  GuestId id;
  Status status;
  ReadData read;  // reads only
};
using Action = std::variant<SendTo, ConnectTo, Disconnect, GuestDone>;

// The core's code is split along its seams, one file each, all members of this one class:
//   upstairs.cc    the entry point, maintenance after every event, status
//   admission.cc   guest operations become jobs: admission, dependencies, placement
//   acks.cc        replies: acks to the guest, read verification, retirement
//   activation.cc  connections, negotiation, activation, replay, deactivation
//   reconcile.cc   reconciliation at activation
//   live_repair.cc live repair of a faulted or replaced downstairs
//   faults.cc      fault and liveness policy: faults, lost connections, fencing, timers
class Upstairs {
 public:
  explicit Upstairs(Config config);

  // The one entry point: everything that happens comes in here, in order.
  std::vector<Action> apply(Event event, TimePoint now);
  // When the next Tick is due (timers: flush, pings, timeouts, reconnects).
  TimePoint next_deadline() const;
  Snapshot snapshot() const;

  bool active() const { return state_ == VolumeState::kActive; }
  const std::optional<proto::RegionDefinition>& region() const { return region_; }

 private:
  enum class JobKind : uint8_t {
    kRead,
    kWrite,
    kWriteUnwritten,
    kDiscard,
    kFlush,
    kBarrier,
    kLiveClose,
    kLiveRepair,
    kLiveReopen,
    kLiveNoOp
  };
  // Per-downstairs job state: kHeld = in progress but not sent (Offline downstairs).
  enum class Io : uint8_t { kNone, kHeld, kSent, kDone, kSkipped, kError };
  static bool in_flight(Io io);          // counted against admission: held or sent
  static bool finished(Io io);           // done, skipped or failed; not yet retired
  static bool writes_blocks(JobKind k);  // a write, write-unwritten or discard

  struct Job {
    JobId id;
    JobKind kind;
    BlockRange range;  // IO and live-repair jobs
    std::vector<JobId> deps;
    ClientData<Io> io{Io::kNone};
    bool acked = false;  // the guest has its answer (or there is no guest)
    std::optional<GuestId> guest;
    uint64_t bytes = 0;  // counted against the in-flight byte limits
    // Write payload
    std::vector<proto::BlockContext> contexts;
    Bytes data;
    // Flush and live flush-close
    FlushNumber flush_number;
    // Flush: the extent limit each downstairs was sent (one under live repair flushes
    // only the extents up to its repair point).
    ClientData<std::optional<ExtentId>> flush_limit;
    // A snapshot flush: the name, and why a downstairs did not take it (kSnapshotFailed; its
    // flush is durable all the same).
    std::optional<std::string> snapshot;
    ClientData<std::string> snapshot_error;
    // Live repair
    ExtentId extent;
    ClientData<proto::ExtentVersion> close_versions;
    std::vector<ClientId> repair_dests;  // live repair job: who copies
    // Reads: which downstairs were tried for this guest read
    std::vector<ClientId> tried;
    // The guest operation's span, if sampled: each downstairs' copy of the job is a child.
    trace::SpanContext trace;
  };

  struct Client {
    std::string target;
    DsState ds = DsState::kIdle;
    DsMode mode = DsMode::kNew;
    ConnId conn;  // 0: none
    TimePoint last_heard{}, last_ping{}, next_connect{}, connect_started{}, offline_since{};
    // When bytes sent to it last left for the network (ClientSent): alive, if slow.
    TimePoint last_sent{};
    // Lag faults: the last reply to a job, and since when it has been too far behind.
    TimePoint last_reply{};
    std::optional<TimePoint> lagging_since;
    Duration backoff = kReconnectBackoffMin;
    Generation highest_generation;
    std::optional<Uuid> region_uuid;
    std::vector<proto::ExtentVersion> versions;
    JobId last_flush;                                  // highest flush id this downstairs completed
    uint64_t jobs_in_flight = 0, bytes_in_flight = 0;  // kHeld or kSent
    uint64_t jobs_finished = 0, bytes_finished = 0;    // done/skipped/error, not retired
    // When it was first sent something after the last message heard from it; a ping to
    // it is unanswered. Together: since when it owes an answer (silent_since()).
    std::optional<TimePoint> waiting_since;
    bool ping_outstanding = false;
    // Writes it may lack: a flush it completed counts toward quorum only without them.
    MissingWrites missing;
    std::string last_error;
    TimePoint last_error_at{};
    void set_error(std::string why, TimePoint at) {
      last_error = std::move(why);
      last_error_at = at;
    }
    uint64_t connects = 0, faults = 0, replays = 0, live_repairs = 0, self_heals = 0;
    // Extents that returned data failing verification: live repair copies them even when
    // their (generation, flush, dirty) match the source's.
    std::set<ExtentId> suspect_extents;
  };

  struct Reconcile {
    std::vector<ExtentMend> plan;
    size_t index = 0;
    enum class Step { kFlush, kClose, kRepair, kReopen } step = Step::kFlush;
    RepairId id;
    std::vector<ClientId> waiting;
    bool while_active = false;  // all three needed repair after the volume was active
  };

  struct LiveRepair {
    std::vector<ClientId> targets;
    ClientId source;
    ExtentId extent;
    enum class Step { kClosing, kRepairing, kReopening, kFinalFlush } step = Step::kClosing;
    JobId close_id, repair_id, reopen_id, final_flush_id;
    std::vector<ClientId> closed_targets;  // targets that closed the extent under repair
    bool aborting = false;
    TimePoint started{};
    uint64_t extents_repaired = 0, extents_confirmed = 0, bytes_transferred = 0;
  };

  // ---- state moves (upstairs.cc): every change of state, ds or mode goes through these,
  // and each asserts that its move is a row of the tables in states.h.
  void set_state(VolumeEvent e, VolumeState to);
  void move(ClientId c, DsEvent e, DsState to);
  void set_mode(ClientId c, ModeEvent e, DsMode to);
  bool takes_io(ClientId c) const;
  // How many downstairs count toward the write quorum: they take IO and have not been
  // unable to for longer than the quorum grace.
  int io_takers() const;
  // Since when c has been unable to take IO (dropped, or silent while it owes an answer);
  // nullopt: it can. TimePoint::min(): it takes none (faulted, not yet active).
  std::optional<TimePoint> unavailable_since(ClientId c) const;
  std::optional<TimePoint> silent_since(ClientId c) const;
  // Unable to take IO for the whole quorum grace: no longer waited for.
  bool given_up(ClientId c) const;
  std::string describe(ClientId c) const;
  // Queues `m` for c's current connection.
  void send(ClientId c, proto::Message m) {
    if (!clients_[c].waiting_since) clients_[c].waiting_since = now_;
    actions_.emplace_back(SendTo{c, clients_[c].conn, std::move(m)});
  }

  // ---- admission.cc
  void on_guest(GuestSubmit g);
  // false: no room yet; the operation waits (and everything behind it).
  bool admit(const GuestSubmit& g);
  bool admit_read(GuestId g, const ReadOp& op);
  bool admit_write(GuestId g, const WriteOp& op);
  bool admit_discard(GuestId g, const DiscardOp& op);
  bool admit_flush(GuestId g, const FlushOp& op);
  bool admit_activate(GuestId g, const ActivateOp& op);
  bool admit_deactivate(GuestId g);
  bool admit_replace(GuestId g, const ReplaceOp& op);
  void admit_waiting();
  // Answers the guest and returns true unless the volume can take IO.
  bool refuse_unless_active(GuestId g);
  // Answers the guest and returns true if the volume is read-only.
  bool refuse_if_read_only(GuestId g);
  Status check_range(BlockIndex start, uint64_t count, uint64_t max_count) const;
  Status check_quorum(const char* what) const;
  // Whether every downstairs that would take `probe` is within its admission limits.
  bool has_room(JobKind kind, BlockRange range, uint64_t bytes) const;
  bool has_room_on(ClientId c, uint64_t bytes) const;
  // The least loaded active downstairs not in `tried`.
  std::optional<ClientId> pick_reader(const std::vector<ClientId>& tried) const;
  JobId new_job_id();
  Job& create_job(JobKind kind, JobId id, std::vector<JobId> deps);
  // Sends, holds or skips the job on each downstairs, as dispatch() says.
  void place(Job& job);
  // The io state of `c` for a new job (send now, hold for replay, or skip).
  Io dispatch(ClientId c, const Job& job) const;
  void send_job(ClientId c, Job& job);
  proto::Message job_message(ClientId c, const Job& job) const;
  // The trace context sent with c's copy of the job (none unless sampled): its parent is
  // the span of that copy, named by the job id and client (trace/span.h derive_span_id).
  static std::optional<proto::TraceContext> wire_trace(ClientId c, const Job& job);
  std::vector<JobId> deps_for(ClientId c, const Job& job) const;
  void set_io(Job& job, ClientId c, Io next);
  void start_read(GuestId g, BlockRange range, uint64_t bytes, std::vector<ClientId> tried,
                  trace::SpanContext trace);
  JobId submit_flush(std::optional<GuestId> guest, std::optional<std::string> snapshot = {},
                     trace::SpanContext trace = {});
  void submit_barrier();
  void note_io();  // a guest IO was admitted: the automatic flush timer restarts

  // ---- acks.cc
  void on_job_reply(ClientId c, JobId id, Status status, proto::Message* reply);
  void on_read_reply(ClientId c, Job& job, const Status& status, proto::ReadResponse* resp);
  void retry_read(Job& failed);
  void ack_check(Job& job);
  // ack_check() of a snapshot flush once two hold the flush: two must hold the snapshot.
  void snapshot_ack_check(Job& job, int possible);
  // Whether c holds every write before `flush` (none is missing there).
  bool holds_writes_before(ClientId c, const Job& flush) const;
  // Whether c may still come to hold `flush` durably with every write before it.
  bool may_still_hold(ClientId c, const Job& flush) const;
  void finish_flush(Job& job, Status status);
  // After time passed or a downstairs came or went: flushes that now have their quorum,
  // or lost the chance of one.
  void revisit_waiting_io();
  // Writes before `flush` that it did not make durable on c (beyond c's extent limit).
  void note_unflushed(ClientId c, const Job& flush);
  bool complete_on_all(const Job& job) const;
  void retire();
  bool flush_or_barrier_pending() const;
  void barrier_if_due();
  void guest_done(GuestId id, Status status, ReadData read = {});

  // ---- activation.cc
  void start_activation(GuestId id, std::optional<Generation> generation);
  void connect_due();
  void on_connected(ClientId c);
  void on_message(ClientId c, proto::Message& m);
  void on_active_message(ClientId c, proto::Message& m);
  void negotiate(ClientId c, proto::Message& m);
  // A refusal during activation fails it (the configuration is wrong); later it only
  // keeps this downstairs out until a retry succeeds.
  void refuse(ClientId c, ErrorCode code, std::string why);
  bool refused(ClientId c, const proto::Message& m);  // a mismatch or error answer
  // c sent something no correct downstairs sends: logged, faulted (when active) and
  // disconnected; it is tried again after the usual backoff.
  void protocol_violation(ClientId c, const std::string& what);
  void on_yes_its_me(ClientId c, const proto::YesItsMe& y);
  void on_now_active(ClientId c, const proto::YouAreNowActive& a);
  void on_region_info(ClientId c, const proto::RegionDefinition& d);
  void on_versions(ClientId c, std::vector<proto::ExtentVersion> versions);
  void promote_all_if_ready();
  Status settle_generation();
  void collate_if_ready();
  void fail_activation(const Error& e);
  void finish_activation();
  void go_active(ClientId c, DsEvent e);
  void replay(ClientId c);
  void progress_deactivation();
  Status deactivation_result() const;
  // Forgets every job, leaving the job table as at construction.
  void clear_jobs();

  // ---- reconcile.cc
  void start_reconcile(std::vector<ExtentMend> plan, bool while_active);
  void reconcile_step();
  // Every client's extent versions, with the extents a repair found damaged marked so.
  ClientData<std::vector<proto::ExtentVersion>> reconcile_versions() const;
  void on_repair_ack(ClientId c, const proto::RepairAck& ack);
  void abort_reconcile(const std::string& why);

  // ---- live_repair.cc
  void start_live_repair_if_ready();
  // All three are ready and none is active: reconcile them as at activation.
  void reconcile_all_ready();
  void repair_begin_extent();
  void repair_progress();
  bool repair_closed();  // each returns false while its step waits on the downstairs
  bool repair_copied();
  bool repair_reopened();
  bool repair_flushed();
  std::vector<ClientId> repair_dests(const Job& close) const;
  void abort_live_repair(const std::string& why);
  std::optional<ExtentId> repair_extent_limit(ClientId c) const;
  bool is_repair_target(ClientId c) const;

  // ---- faults.cc
  void count_fault(ClientId c, const std::string& reason);
  // Faulted from now on: rejoins through live repair (a replaced one stays replaced).
  void mark_faulted(ClientId c);
  // c may lose, with a fault, every write it has not made durable yet.
  void note_lost_writes(ClientId c);
  void ping(ClientId c);
  void fault(ClientId c, const std::string& reason);
  void skip_all(ClientId c);
  void on_disconnected(ClientId c, const std::string& reason);
  // The connection is gone (we dropped it if `emit`): decide how the client rejoins.
  // counted: the caller already accounted for this (a fault, a replacement), so losing a
  // repair target here is not counted as another fault.
  void lose_connection(ClientId c, const std::string& reason, bool emit, bool counted = false);
  void rejoin_after_loss(ClientId c, DsState prev, const std::string& reason, bool counted);
  void go_offline(ClientId c);
  void fence(const std::string& why);
  void on_tick();
  void check_liveness(ClientId c);
  void flush_if_idle();
  void check_limits();
  void check_offline(ClientId c);
  void check_lagging(ClientId c);

  // ---- maintenance after every event (upstairs.cc)
  void maintain();

  ExtentId extent_of(uint64_t block) const {
    return ExtentId{static_cast<uint32_t>(block / region_->extent_size)};
  }

  Config config_;
  TimePoint now_{};
  std::vector<Action> actions_;
  VolumeState state_ = VolumeState::kInitializing;
  Generation generation_;
  std::optional<Generation> requested_generation_;
  bool generation_settled_ = false;  // promoted with generation_ in this activation
  std::optional<GuestId> activation_guest_;
  std::optional<GuestId> deactivation_guest_;
  std::optional<proto::RegionDefinition> region_;
  ClientData<Client> clients_;
  ConnId next_conn_{1};

  std::map<JobId, Job> jobs_;
  JobId next_job_ = kFirstJobId;
  FlushNumber next_flush_{1};
  BlockMap deps_;
  std::set<JobId> fences_;    // flushes and barriers in the job table
  std::set<JobId> reserved_;  // live-repair ids handed out, job not created yet
  std::deque<GuestSubmit> waiting_;
  bool need_flush_ = false;
  TimePoint last_io_{};
  bool can_replay_ = true;
  std::optional<JobId> deactivation_flush_;
  // The deactivation's verdict on the final flush, once decided.
  std::optional<Status> deactivation_status_;
  JobId retired_through_;     // the newest flush or barrier retire() retired through
  bool quorum_lost_ = false;  // as last logged

  std::optional<Reconcile> reconcile_;
  // Extents a repair found damaged on a source (its copy failed the receiver's block
  // check): the next plan treats them as damaged there, so another copy is the source
  // and this one is repaired too. Cleared once a repair rewrote the copy.
  ClientData<std::set<ExtentId>> found_damaged_;
  std::optional<LiveRepair> repair_;
  std::string disabled_reason_;

  uint64_t reads_ = 0, writes_ = 0, discards_ = 0, flushes_ = 0, barriers_ = 0, read_bytes_ = 0,
           write_bytes_ = 0;
  uint64_t reconcile_total_ = 0, reconcile_done_ = 0, repairs_completed_ = 0, repairs_aborted_ = 0;
  uint64_t reconcile_bytes_ = 0;  // transferred by the current (or last) reconciliation
};

}  // namespace cru::upstairs
