// The downstairs core: everything a downstairs decides, as a pure state machine over one
// Region. The shell (server.h) owns the sockets and feeds the core connection events and
// decoded messages; the core answers with Output: messages to send, connections to
// close, and outgoing connections to open (to fetch an extent from a repair source).
// No asio, no clock; randomness (fault injection) comes from a seeded generator.
// Owned by one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/ids.h"
#include "common/result.h"
#include "common/units.h"
#include "downstairs/region.h"
#include "downstairs/stats.h"
#include "proto/limits.h"
#include "proto/messages.h"
#include "trace/tracer.h"

namespace cru::downstairs {

using ConnectionId = StrongId<struct ConnectionIdTag, uint64_t>;

// A job queue longer than this is a misbehaving upstairs: it admits at most 1500 jobs
// per downstairs, plus flushes, barriers and live-repair reservations.
inline constexpr size_t kMaxQueuedJobs = 16384;
// A repairing downstairs asks for this many chunks ahead of the one it is receiving.
inline constexpr uint64_t kFetchPipelineChunks = 4;
// Completed job ids remembered per connection (a read-only upstairs never sends the flush
// or barrier that resets the set): beyond this the earliest completed is forgotten. The
// upstairs names as dependencies only jobs it has not seen answered, at most its 1500
// admitted ones plus a few, so a job this many completions old is never named again.
inline constexpr size_t kMaxCompletedJobs = 65536;
// What one remembered completed job costs (a set node and a deque slot), for budgets.
inline constexpr uint64_t kCompletedJobBytes = 64;
// Before a peer runs jobs it sends only negotiation messages (fixed fields and strings of
// at most 4 KiB): a longer frame is refused before anything is allocated for it, so a
// peer that has not negotiated cannot make us hold a 64 MiB frame.
inline constexpr uint64_t kNegotiationFrameBytesMax = 16 * kKiB;
// A read-only upstairs sends no bulk data: a job with the longest dependency list, and room.
inline constexpr uint64_t kJobFrameWithoutDataBytesMax = 1 * kMiB;
// A repair source sends one chunk per frame, with its small header.
inline constexpr uint64_t kChunkFrameBytesMax =
    proto::kRepairChunkBytes + kNegotiationFrameBytesMax;

struct FaultInjection {
  double read_error = 0;   // probability a read fails with kInjected
  double write_error = 0;  // write, write-unwritten, discard
  double flush_error = 0;
  bool lossy = false;  // defer a quarter of ready jobs, so they complete out of order
  uint64_t seed = 0;
};

struct CoreOptions {
  bool read_only = false;
  // host:port of this downstairs, told to upstairs as the repair address.
  std::string repair_addr;
  FaultInjection faults;
  // Read around each job's disk work for CoreStats' latency histograms; none (tests, the
  // simulator): no latency is recorded and the core stays free of time.
  std::function<std::chrono::steady_clock::time_point()> clock;
  // Spans of jobs that carry a sampled trace context, of failed jobs and of every extent
  // repair (--trace-endpoint); needs `clock`. None: nothing traced, nothing timed for it.
  std::shared_ptr<trace::Tracer> tracer;
};

struct Output {
  struct Send {
    ConnectionId conn;
    proto::Message message;
  };
  struct Close {
    ConnectionId conn;
    std::string reason;  // logged by the shell
  };
  struct Connect {
    ConnectionId conn;
    std::string address;  // host:port of a repair source
  };
  // In order: sends to a connection precede its close (the shell delivers them first).
  std::vector<Send> sends;
  std::vector<Close> closes;
  std::vector<Connect> connects;
  // Deferred (lossy) jobs are waiting: call on_tick() soon.
  bool tick_soon = false;

  void send(ConnectionId c, proto::Message m) { sends.push_back({c, std::move(m)}); }
};

class Core {
 public:
  Core(Region& region, CoreOptions options);

  // Ids for connections the shell accepted. The core makes its own for outgoing ones.
  ConnectionId new_connection();
  Output on_message(ConnectionId conn, proto::Message message);
  // An outgoing connection (from Output::connects) is up.
  Output on_connected(ConnectionId conn);
  // The connection is gone (or an outgoing one failed to connect).
  Output on_disconnect(ConnectionId conn, const std::string& reason);
  // Runs jobs deferred by fault injection.
  Output on_tick();

  // Known once the listener is bound (after the core exists).
  void set_repair_addr(std::string addr) { options_.repair_addr = std::move(addr); }

  // What the core holds for this connection (queued jobs, with the replies reads will
  // make, and remembered completed ids), for memory budgets. 0 for an unknown one.
  uint64_t held_bytes(ConnectionId conn) const;
  // The longest frame this connection may send in its current state.
  uint64_t frame_bytes_max(ConnectionId conn) const;
  // Past its first message (HereIAm or RepairHello), or an outgoing connection.
  bool negotiated(ConnectionId conn) const;

  // For status logs and tests.
  std::optional<ConnectionId> active_upstairs() const { return active_; }
  size_t connection_count() const { return conns_.size(); }
  const Region& region() const { return region_; }
  // Counters and histograms, readable from any thread (stats.h).
  const CoreStats& stats() const { return stats_; }

 private:
  enum class State {
    kNew,             // waiting for HereIAm or RepairHello
    kHello,           // HereIAm accepted; waiting for PromoteToActive
    kPromoted,        // waiting for RegionInfoPlease
    kRegionInfoSent,  // waiting for ExtentVersionsPlease or LastFlush
    kRunning,         // jobs
    kRepairPeer,      // a repairing downstairs fetching extents from us
    kFetching,        // our outgoing connection to a repair source
  };

  using SteadyTime = std::chrono::steady_clock::time_point;
  // A job of a sampled trace: its upstairs span (the parent) and when it arrived.
  struct JobTrace {
    trace::SpanContext parent;
    SteadyTime received{};
  };

  struct Job {
    JobId id;
    std::vector<JobId> deps;
    proto::Message request;
    std::optional<JobTrace> trace{};
  };

  // The source side of one transfer to a repairing peer.
  struct Stream {
    ExtentId extent;
    std::unique_ptr<File> file;
    uint64_t file_bytes = 0;
    uint64_t next_offset = 0;
    uint64_t epoch = 0;
    StreamHash hash;
  };

  // The target side: an extent being fetched for an upstairs job.
  struct Fetch {
    ConnectionId owner;              // the upstairs connection whose job this is
    std::optional<JobId> job;        // live repair
    std::optional<RepairId> repair;  // reconciliation
    ExtentId extent;
    std::unique_ptr<RepairStaging> staging;
    uint64_t requested = 0;  // bytes asked for so far
    bool got_info = false;
    // Our own copy of the (closed) extent, offered chunk by chunk so the source sends
    // only chunks that differ; null if it cannot be read (then everything is fetched).
    std::unique_ptr<File> local;
    // Per chunk asked for and not yet answered, in order: our bytes if offered.
    std::deque<std::optional<ByteBuffer>> offered;
    uint64_t network_bytes = 0;  // chunk data that actually crossed the network
    SteadyTime started{};        // traced: when the repair of this extent began
  };

  struct Conn {
    State state = State::kNew;
    proto::HereIAm hello;
    Generation generation;
    // Jobs: completed ids since the last flush or barrier (and in completion order, to
    // forget the earliest beyond kMaxCompletedJobs), and those waiting.
    std::set<JobId> completed;
    std::deque<JobId> completed_order;
    std::deque<Job> pending;
    uint64_t pending_bytes = 0;  // job_bytes() of every pending job
    std::set<JobId> running;     // started, completing later (live repair fetches)
    std::optional<Stream> stream;
    // Set by a replaying reconnect: the next flush fails if an extent is still damaged.
    bool damage_check_at_flush = false;
  };

  void protocol_error(Output& out, ConnectionId conn, const std::string& what);
  void drop(Output& out, ConnectionId conn, const std::string& reason);
  void handle_new(Output& out, ConnectionId conn, proto::Message& m);
  void handle_promote(Output& out, ConnectionId conn, const proto::PromoteToActive& p);
  void handle_running(Output& out, ConnectionId conn, proto::Message& m);
  void handle_repair_peer(Output& out, ConnectionId conn, const proto::Message& m);
  void handle_fetching(Output& out, ConnectionId conn, proto::Message& m);
  void handle_reconcile(Output& out, ConnectionId conn, proto::Message& m);

  void enqueue_job(Output& out, ConnectionId conn, Job job);
  bool ready(const Conn& c, const Job& job) const;
  // Runs every ready job of conn until none is left.
  void run_ready(Output& out, ConnectionId conn);
  // Executes one job; false if it completes later (a fetch) or failed (a failed write,
  // discard or flush never counts as completed, so nothing depending on it runs here).
  bool execute(Output& out, ConnectionId conn, Job& job);
  // execute() without the statistics it keeps.
  bool execute_job(Output& out, ConnectionId conn, Job& job);
  // Makes the snapshot a flush asks for (the flush succeeded): ok, or kSnapshotFailed.
  proto::WireStatus take_snapshot(const proto::Flush& f);
  void complete(Conn& c, JobId id, bool resets);
  static void reset_completed(Conn& c, std::optional<JobId> only);
  // Memory a queued job holds, and for a read the reply it will make.
  uint64_t job_bytes(const Job& job) const;
  bool inject(double probability);
  bool tracing() const { return options_.tracer && options_.clock; }
  // The job's spans (when traced, or failed) once execute() ran it from start to end.
  void trace_job(const Job& job, bool ok, SteadyTime start, SteadyTime end);
  void trace_repair(const Fetch& f, const Status& result);

  void start_fetch(Output& out, ConnectionId owner, std::optional<JobId> job,
                   std::optional<RepairId> repair, ExtentId extent, const std::string& source_addr);
  void finish_fetch(Output& out, ConnectionId fetch_conn, const Status& result);
  void request_chunks(Output& out, ConnectionId fetch_conn, Fetch& f);

  Region& region_;
  CoreOptions options_;
  std::mt19937_64 rng_;
  uint64_t next_conn_ = 1;
  std::map<ConnectionId, Conn> conns_;
  std::map<ConnectionId, Fetch> fetches_;               // keyed by the outgoing connection
  std::optional<ConnectionId> active_;                  // the read-write upstairs
  Generation highest_generation_;                       // highest ever promoted or found on disk
  std::vector<std::pair<ConnectionId, Job>> deferred_;  // lossy mode
  CoreStats stats_;
};

}  // namespace cru::downstairs
