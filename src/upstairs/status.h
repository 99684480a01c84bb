// What users of the upstairs set and read without the core: the admission, fault and
// timing limits (Limits, from the config) and the status snapshot (Snapshot, a copy the
// core hands out). Plain data, no behaviour; the core (upstairs.h) owns the live state.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/ids.h"
#include "common/units.h"
#include "proto/messages.h"

namespace cru::upstairs {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;
using Duration = Clock::duration;

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
  // A flush is issued this long after IO goes quiet, so written data becomes durable
  // even if the guest never flushes.
  Duration flush_timeout = std::chrono::milliseconds(500);
  Duration ping_interval = std::chrono::seconds(5);
  // A downstairs silent this long (not even a ping answer) is disconnected.
  Duration client_timeout = std::chrono::seconds(45);
  Duration connect_timeout = std::chrono::seconds(10);
  Duration reconnect_backoff_max = std::chrono::seconds(10);
  // An Offline downstairs not back within this is faulted, so a volume that lost
  // quorum fails flushes instead of waiting forever.
  Duration offline_timeout = std::chrono::seconds(30);
  // How long the volume waits for a second downstairs able to take IO (one that dropped,
  // or went silent with work outstanding) before writes and flushes fail with EIO: long
  // enough for a reconnect and replay after a brief outage, short enough that a guest
  // is not left hanging (docs/fault-model.md).
  Duration quorum_grace = std::chrono::seconds(5);
};

struct ClientStatus {
  std::string target;
  std::optional<Uuid> region_uuid;  // the region it served, once it said
  std::string state;  // e.g. "active", "offline (...)", "faulted (...)", "live_repair"
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
  ExtentId extent;  // the extent being repaired
  uint32_t extent_count = 0;
  uint64_t extents_repaired = 0;   // copied
  uint64_t extents_confirmed = 0;  // already equal, not copied
  // What the targets received over the network (the chunks that differed), as they
  // reported it (proto/repair_report.h); not whole extents.
  uint64_t bytes_transferred = 0;
  double rate_bytes_per_s = 0;  // bytes_transferred over the time since the repair began
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
  uint64_t reconcile_bytes_transferred = 0;  // as the destinations reported it
  bool reconciling = false;  // at activation, or of all three after the volume was active
  uint64_t live_repairs_completed = 0, live_repairs_aborted = 0;
  RepairStatus repair;
  std::string disabled_reason;
  // Downstairs that hold every write and answer (active, not offline, under repair or
  // silent past the quorum grace); fewer than three while active is "degraded".
  uint32_t complete_copies = 0;
  bool degraded = false;
  // Fewer than two downstairs could take IO for longer than the quorum grace: writes and
  // flushes fail with EIO until one returns.
  bool quorum_lost = false;
};

}  // namespace cru::upstairs
