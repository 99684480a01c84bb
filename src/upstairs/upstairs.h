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
#include "upstairs/block_map.h"
#include "upstairs/mend.h"

namespace cru::upstairs {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;
using Duration = Clock::duration;
using GuestId = StrongId<struct GuestIdTag, uint64_t>;
// Identifies one TCP connection to one downstairs; events from an older connection of
// the same client are ignored.
using ConnId = uint64_t;

struct Limits {
  // Guest admission, per downstairs: the guest waits beyond these.
  uint64_t jobs_in_flight_max = 1500;
  uint64_t bytes_in_flight_max = 75 * kMiB;
  // A downstairs this far behind (Offline, or Active but lagging the others) is faulted
  // and later live-repaired. Below the admission limits so the guest never blocks on it.
  uint64_t fault_jobs = 1000;
  uint64_t fault_bytes = 50 * kMiB;
  // An Active downstairs that far behind the others is faulted only once it has also
  // answered no job for this long: a replica that is merely slower (a busy disk, a
  // loaded host) slows the guest through admission instead of costing a live repair.
  Duration stall_timeout = std::chrono::seconds(5);
  // Finished jobs kept for replay before a barrier lets them retire.
  uint64_t barrier_jobs = 10000;
  uint64_t barrier_bytes = 64 * kMiB;
  Duration flush_timeout = std::chrono::milliseconds(500);
  Duration ping_interval = std::chrono::seconds(5);
  Duration client_timeout = std::chrono::seconds(45);
  Duration connect_timeout = std::chrono::seconds(10);
  Duration reconnect_backoff_max = std::chrono::seconds(10);
  // An Offline downstairs not back within this is faulted, so a volume that lost
  // quorum fails flushes instead of waiting forever.
  Duration offline_timeout = std::chrono::seconds(30);
};

struct Config {
  std::array<std::string, kClientCount> targets;  // host:port
  bool read_only = false;
  bool encrypted = false;
  Uuid upstairs_id;
  Uuid session_id;
  Limits limits;
};

// ---- guest operations (block units; the volume shell splits and encrypts) -------------

struct ReadOp {
  BlockIndex start;
  uint32_t count = 0;
};
struct WriteOp {
  BlockIndex start;
  std::vector<proto::BlockContext> contexts;  // one per block, already hashed/encrypted
  Bytes data;
  bool only_unwritten = false;
};
struct DiscardOp {
  BlockIndex start;
  uint32_t count = 0;
};
struct FlushOp {};
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
struct Tick {};
using Event = std::variant<GuestSubmit, ClientConnected, ClientMessage, ClientDisconnected, Tick>;

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

// ---- status --------------------------------------------------------------------------------

struct ClientStatus {
  std::string target;
  std::string state;  // e.g. "active", "offline", "faulted", "live_repair"
  uint64_t jobs_in_flight = 0;
  uint64_t bytes_in_flight = 0;
  std::string last_error;
  double last_error_age_s = 0;  // how long ago last_error happened (it may be history)
  uint64_t connects = 0, faults = 0, replays = 0, live_repairs = 0, self_heals = 0;
};

struct RepairStatus {
  bool running = false;
  std::vector<ClientId> targets;
  ClientId source;
  uint32_t extent = 0;  // the extent being repaired
  uint32_t extent_count = 0;
  uint64_t extents_repaired = 0;   // copied
  uint64_t extents_confirmed = 0;  // already equal, not copied
  uint64_t bytes_copied = 0;
  double rate_bytes_per_s = 0;
  double eta_s = 0;
};

struct Snapshot {
  std::string state;  // initializing, activating, reconciling, active, deactivating, disabled
  Generation generation;
  std::optional<proto::RegionDefinition> region;
  ClientData<ClientStatus> clients;
  uint64_t jobs = 0;           // in the job table
  uint64_t guest_waiting = 0;  // guest operations waiting for admission
  uint64_t reads = 0, writes = 0, discards = 0, flushes = 0, barriers = 0;
  uint64_t read_bytes = 0, write_bytes = 0;
  uint64_t reconcile_extents_total = 0, reconcile_extents_done = 0;
  uint64_t live_repairs_completed = 0, live_repairs_aborted = 0;
  RepairStatus repair;
  std::string disabled_reason;
};

class Upstairs {
 public:
  explicit Upstairs(Config config);

  // The one entry point: everything that happens comes in here, in order.
  std::vector<Action> apply(Event event, TimePoint now);
  // When the next Tick is due (timers: flush, pings, timeouts, reconnects).
  TimePoint next_deadline() const;
  Snapshot snapshot() const;

  bool active() const { return state_ == State::kActive; }
  const std::optional<proto::RegionDefinition>& region() const { return region_; }

 private:
  enum class State { kInitializing, kActivating, kActive, kDeactivating, kDisabled };
  // Per-downstairs connection/negotiation state.
  enum class Ds {
    kIdle,             // not wanted (upstairs inactive or disabled)
    kDisconnected,     // waiting for the next connect attempt
    kConnecting,       // ConnectTo issued
    kWaitYesItsMe,     // HereIAm sent
    kWaitPromote,      // waiting for the activation's generation to be settled
    kWaitActive,       // PromoteToActive sent
    kWaitRegionInfo,   // RegionInfoPlease sent
    kWaitVersions,     // ExtentVersionsPlease sent
    kWaitQuorum,       // versions in hand (mode New), waiting for the others
    kReconcile,        // taking part in reconciliation
    kLiveRepairReady,  // versions in hand (mode Faulted/Replaced)
    kLiveRepair,       // being live-repaired
    kActive,
  };
  // How a (re)connecting downstairs rejoins.
  enum class Mode { kNew, kOffline, kFaulted, kReplaced };
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
    // Live repair
    ExtentId extent;
    ClientData<proto::ExtentVersion> close_versions;
    std::vector<ClientId> repair_dests;  // live repair job: who copies
    // Reads: which downstairs were tried for this guest read
    std::vector<ClientId> tried;
  };

  struct Client {
    std::string target;
    Ds ds = Ds::kIdle;
    Mode mode = Mode::kNew;
    ConnId conn = 0;  // 0: none
    TimePoint last_heard{}, last_ping{}, next_connect{}, connect_started{}, offline_since{};
    // Lag faults: the last reply to a job, and since when it has been too far behind.
    TimePoint last_reply{};
    std::optional<TimePoint> lagging_since;
    Duration backoff = std::chrono::milliseconds(100);
    Generation highest_generation;
    std::optional<Uuid> region_uuid;
    std::vector<proto::ExtentVersion> versions;
    JobId last_flush;                                  // highest flush id this downstairs completed
    uint64_t jobs_in_flight = 0, bytes_in_flight = 0;  // kHeld or kSent
    uint64_t jobs_finished = 0, bytes_finished = 0;    // done/skipped/error, not retired
    std::string last_error;
    TimePoint last_error_at{};
    void set_error(std::string why, TimePoint at) {
      last_error = std::move(why);
      last_error_at = at;
    }
    uint64_t connects = 0, faults = 0, replays = 0, live_repairs = 0, self_heals = 0;
    // Extents that returned data failing verification: live repair copies them even when
    // their (generation, flush, dirty) match the source's.
    std::set<uint32_t> suspect_extents;
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
    uint32_t extent = 0;
    enum class Step { kClosing, kRepairing, kReopening, kFinalFlush } step = Step::kClosing;
    JobId close_id, repair_id, reopen_id, final_flush_id;
    bool aborting = false;
    TimePoint started{};
    uint64_t extents_repaired = 0, extents_confirmed = 0, bytes_copied = 0;
  };

  // The io state of `c` for a new job (send now, hold for replay, or skip).
  Io dispatch(ClientId c, const Job& job) const;
  bool takes_io(ClientId c) const;  // Active, LiveRepair or Offline
  bool is_connected_state(Ds ds) const;
  std::string describe(ClientId c) const;

  // ---- events
  void on_guest(GuestSubmit g);
  void on_connected(ClientId c, ConnId conn);
  void on_message(ClientId c, proto::Message& m);
  void on_disconnected(ClientId c, const std::string& reason);
  // The connection is gone (we dropped it if `emit`): decide how the client rejoins.
  // counted: the caller already accounted for this (a fault, a replacement), so losing a
  // repair target here is not counted as another fault.
  void lose_connection(ClientId c, const std::string& reason, bool emit, bool counted = false);
  void on_tick();

  // ---- negotiation and activation
  void start_activation(GuestId id, std::optional<Generation> generation);
  void negotiate(ClientId c, proto::Message& m);
  void promote_all_if_ready();
  void collate_if_ready();
  void fail_activation(const Error& e);
  void finish_activation();
  void go_active(ClientId c);
  void replay(ClientId c);
  void fence(const std::string& why);

  // ---- reconciliation
  void start_reconcile(std::vector<ExtentMend> plan, bool while_active);
  void reconcile_step();
  void on_repair_ack(ClientId c, const proto::RepairAck& ack);
  void abort_reconcile(const std::string& why);

  // ---- jobs
  bool admit(const GuestSubmit& g);
  Job& create_job(JobKind kind, JobId id, std::vector<JobId> deps);
  void send_job(ClientId c, Job& job);
  proto::Message job_message(ClientId c, const Job& job) const;
  std::vector<JobId> deps_for(ClientId c, const Job& job) const;
  void set_io(Job& job, ClientId c, Io next);
  void on_job_reply(ClientId c, JobId id, Status status, proto::Message* reply);
  void on_read_reply(ClientId c, Job& job, const Status& status, proto::ReadResponse* resp);
  void retry_read(Job& failed);
  void ack_check(Job& job);
  bool complete_on_all(const Job& job) const;
  void retire();
  JobId submit_flush(std::optional<GuestId> guest);
  void submit_barrier();
  bool flush_or_barrier_pending() const;
  void guest_done(GuestId id, Status status, ReadData read = {});

  // ---- faults
  void count_fault(ClientId c, const std::string& reason);
  void fault(ClientId c, const std::string& reason);
  void skip_all(ClientId c);

  // ---- live repair
  void start_live_repair_if_ready();
  void repair_begin_extent();
  void repair_progress();
  void abort_live_repair(const std::string& why);
  std::optional<ExtentId> repair_extent_limit(ClientId c) const;

  // ---- maintenance after every event
  void maintain();
  void admit_waiting();
  void check_limits();
  void connect_due();
  void progress_deactivation();

  uint32_t extent_of(uint64_t block) const {
    return static_cast<uint32_t>(block / region_->extent_size);
  }

  Config config_;
  TimePoint now_{};
  std::vector<Action> actions_;
  State state_ = State::kInitializing;
  Generation generation_;
  std::optional<Generation> requested_generation_;
  bool generation_settled_ = false;  // promoted with generation_ in this activation
  std::optional<GuestId> activation_guest_;
  std::optional<GuestId> deactivation_guest_;
  std::optional<proto::RegionDefinition> region_;
  ClientData<Client> clients_;
  ConnId next_conn_ = 1;

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

  std::optional<Reconcile> reconcile_;
  std::optional<LiveRepair> repair_;
  std::string disabled_reason_;

  uint64_t reads_ = 0, writes_ = 0, discards_ = 0, flushes_ = 0, barriers_ = 0, read_bytes_ = 0,
           write_bytes_ = 0;
  uint64_t reconcile_total_ = 0, reconcile_done_ = 0, repairs_completed_ = 0, repairs_aborted_ = 0;
};

}  // namespace cru::upstairs
