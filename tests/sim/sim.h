// The seeded cluster simulator: one upstairs core and three downstairs cores (the real
// request handler over a Region on a fault-injecting in-memory FaultFs), a fake network of
// per-connection FIFO queues, a virtual clock, a random guest workload and a checker
// (model.h). Every choice (which message moves next, latencies, the workload, faults)
// comes from one generator seeded by the run's seed, so a seed replays exactly.
// Single-threaded; no sleeps, no wall clock.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace cru::sim {

// Faults the simulator can inject. Without `overlap` the next fault waits until every
// downstairs is active again; with it, faults come whenever they are due (sooner while a
// repair runs), at most two downstairs impaired at once.
enum class FaultKind : uint8_t {
  kDisconnect,     // the upstairs' connection to one downstairs breaks; it reconnects
  kPartition,      // broken, and reconnects are refused for a while
  kDelay,          // every message to and from one downstairs is slow for a while
  kStall,          // one downstairs stops processing for a while (SIGSTOP), maybe past timeouts
  kCrash,          // power cut: writes not covered by a completed flush may be lost
  kStorageErrors,  // one downstairs' disk fails reads, writes and syncs (EIO) for a while
  kBitFlip,        // one stored data byte of one replica flips (caught by the block hash)
  kUpstairsCrash,  // the upstairs dies; a new one activates (and reconciles)
  kLoseForGood,    // one downstairs disconnects and never comes back
  kPartitionTwo,   // two downstairs partitioned away at once (IO may fail with EIO)
  kCrashTwo,       // power cuts of two downstairs, one shortly after the other
  kReplace,        // one downstairs is lost and replaced by an empty one (live repair)
  kTakeover,       // a second upstairs with a higher generation takes over from the first
};
const char* fault_name(FaultKind kind);

struct SimOptions {
  uint64_t seed = 1;
  // The kinds this run draws its faults from (empty: a clean run) and how many it injects.
  std::vector<FaultKind> kinds;
  int fault_count = 0;
  // Guest operations at least (more while faults are still to come).
  int ops = 300;
  // Encode and decode every message with the real codec on its way.
  bool codec = true;
  // Faults overlap (a second one during a repair, storage errors during repair, ...).
  bool overlap = false;
  // The region's block size; FaultFs tears unsynced writes at 512 bytes, so 4096 gives
  // torn blocks after a power cut.
  uint32_t block_size = 512;
  // An encrypted region: the guest seals and opens blocks as the volume shell does.
  bool encrypted = false;
  // Print every delivery and fault to stderr (for replaying one seed).
  bool trace = false;
};

struct SimResult {
  bool ok = true;
  std::string failure;  // the first thing that went wrong, with context
  // Counters, for the test log and for checking that scenarios do what they say.
  uint64_t ops = 0, reads = 0, writes = 0, flushes = 0, deliveries = 0;
  uint64_t faults_injected = 0, replays = 0, live_repairs = 0, self_heals = 0;
  uint64_t reconciles = 0;          // extents repaired by reconciliation at activation
  uint64_t latent_corruptions = 0;  // flipped blocks never read, so never detected
  uint64_t eio = 0;                 // guest calls failed while two replicas were impaired
  uint64_t durability_checks = 0;   // acknowledged flushes checked on every pair of replicas
  uint64_t faults_during_repair = 0, double_faults = 0, replacements = 0, takeovers = 0;
  uint64_t fenced_writes = 0;  // writes to a taken-over upstairs (they must never land)
  std::chrono::milliseconds virtual_time{0};
};

SimResult run_sim(const SimOptions& options);

}  // namespace cru::sim
