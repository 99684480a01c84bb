// The seeded simulator's scenarios. Each test runs many seeds of one scenario; a failure
// prints the seed and the line that replays it alone.
//
//   CRU_SIM_SEEDS=N   seeds per scenario (default kDefaultSeeds)
//   CRU_SIM_SEED=N    run only seed N (in every scenario the filter selects)
//   CRU_SIM_LOG=debug the cores' logs (to stderr), for a replayed seed
//   CRU_SIM_TRACE=1   every delivery and fault (to stderr), for a replayed seed
//   CRU_SIM_MAX_FAILURES=N  stop a scenario after N failed seeds (default 5; a sweep
//                     raises it to list every failing seed)
//
// 100k seeds: run scenarios in parallel, one process per scenario and seed range, e.g.
//   for f in $(build/tests/sim --gtest_list_tests | grep '^  ' | tr -d ' '); do
//     CRU_SIM_SEEDS=6000 nice build/tests/sim --gtest_filter="Sim.$f" > sim.$f.log &
//     done; wait
// (17 scenarios x 6000 = 102,000 seeds; CRU_SIM_FIRST_SEED=N shifts a process's seed
// range, to split one scenario further.)
#include "sim/sim.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <string>

#include "common/log.h"

namespace cru::sim {
namespace {

// Seeds per scenario by default: 17 scenarios x 170 = 2890 seeds (2040 while 5 wait for
// fixes on other branches); the issue asks for at least 2000 in under 3 minutes. About a
// minute on a shared 2-core machine.
constexpr uint64_t kDefaultSeeds = 170;
// Under ASan or TSan (make asan | tsan) the cores run 5-20 times slower: fewer seeds keep
// the binary well inside the runner's 900 s (the release run is what counts seeds).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr uint64_t kSeedsPerScenario = 40;
#else
constexpr uint64_t kSeedsPerScenario = kDefaultSeeds;
#endif
// Seed ranges of the scenarios do not overlap, so a seed names one run of one scenario.
constexpr uint64_t kScenarioStride = 1'000'000'000;
// A scenario's counters are asserted over at least this many seeds: what it is for
// (replays, repairs, ...) happens in most seeds, but not necessarily in each.
constexpr size_t kCountersMinSeeds = 20;

std::optional<uint64_t> env_number(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::strtoull(v, nullptr, 10);
}

void quiet_logs() {
  const char* level = std::getenv("CRU_SIM_LOG");
  log::set_level(level && log::valid_level(level) ? level : "off");
}

struct Scenario {
  const char* name;
  uint64_t number;  // its seed range
  std::vector<FaultKind> kinds{};
  int fault_count = 0;
  int ops = 300;
  bool overlap = false;
  uint32_t block_size = 512;
  bool encrypted = false;
  // Counters that must not stay zero (by name, see counter()).
  std::vector<const char*> expect{};
};

uint64_t counter(const SimResult& r, const std::string& name) {
  if (name == "faults") return r.faults_injected;
  if (name == "replays") return r.replays;
  if (name == "live_repairs") return r.live_repairs;
  if (name == "self_heals") return r.self_heals;
  if (name == "reconciles") return r.reconciles;
  if (name == "durability_checks") return r.durability_checks;
  if (name == "faults_during_repair") return r.faults_during_repair;
  if (name == "double_faults") return r.double_faults;
  if (name == "replacements") return r.replacements;
  if (name == "takeovers") return r.takeovers;
  if (name == "fenced_writes") return r.fenced_writes;
  ADD_FAILURE() << "no counter named " << name;
  return 0;
}

void add(SimResult& total, const SimResult& r) {
  total.ops += r.ops;
  total.reads += r.reads;
  total.faults_injected += r.faults_injected;
  total.replays += r.replays;
  total.live_repairs += r.live_repairs;
  total.reconciles += r.reconciles;
  total.self_heals += r.self_heals;
  total.latent_corruptions += r.latent_corruptions;
  total.deliveries += r.deliveries;
  total.virtual_time += r.virtual_time;
  total.eio += r.eio;
  total.durability_checks += r.durability_checks;
  total.faults_during_repair += r.faults_during_repair;
  total.double_faults += r.double_faults;
  total.replacements += r.replacements;
  total.takeovers += r.takeovers;
  total.fenced_writes += r.fenced_writes;
}

void run_scenario(const Scenario& sc) {
  quiet_logs();
  std::vector<uint64_t> seeds;
  if (auto one = env_number("CRU_SIM_SEED")) {
    seeds.push_back(*one);
  } else {
    uint64_t n = env_number("CRU_SIM_SEEDS").value_or(kSeedsPerScenario);
    uint64_t first = sc.number * kScenarioStride + env_number("CRU_SIM_FIRST_SEED").value_or(1);
    for (uint64_t i = 0; i < n; ++i) seeds.push_back(first + i);
  }
  SimResult total;
  auto started = std::chrono::steady_clock::now();
  int failures = 0;
  for (uint64_t seed : seeds) {
    SimOptions o;
    o.seed = seed;
    o.kinds = sc.kinds;
    o.fault_count = sc.fault_count;
    o.ops = sc.ops;
    o.overlap = sc.overlap;
    o.block_size = sc.block_size;
    o.encrypted = sc.encrypted;
    o.trace = env_number("CRU_SIM_TRACE").value_or(0) != 0;
    SimResult r = run_sim(o);
    if (!r.ok) {
      ADD_FAILURE() << "seed " << seed << ": " << r.failure << "\n  replay: CRU_SIM_SEED=" << seed
                    << " build/tests/sim --gtest_filter=Sim." << sc.name;
      if (++failures >= static_cast<int>(env_number("CRU_SIM_MAX_FAILURES").value_or(5)))
        break;  // enough to go on with
    }
    add(total, r);
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  started)
                .count();
  std::printf(
      "[   SIM    ] %s: %zu seeds (%d failed), %llu ops, %llu reads, %llu faults (%llu during "
      "repair, %llu "
      "double), %llu replays, %llu live repairs, %llu extents reconciled, %llu self-heals, %llu "
      "replacements, %llu takeovers (%llu fenced writes), %llu EIO, %llu durability checks, %llu "
      "latent flips, %llu "
      "deliveries, %lld s virtual, %lld ms\n",
      sc.name, seeds.size(), failures, static_cast<unsigned long long>(total.ops),
      static_cast<unsigned long long>(total.reads),
      static_cast<unsigned long long>(total.faults_injected),
      static_cast<unsigned long long>(total.faults_during_repair),
      static_cast<unsigned long long>(total.double_faults),
      static_cast<unsigned long long>(total.replays),
      static_cast<unsigned long long>(total.live_repairs),
      static_cast<unsigned long long>(total.reconciles),
      static_cast<unsigned long long>(total.self_heals),
      static_cast<unsigned long long>(total.replacements),
      static_cast<unsigned long long>(total.takeovers),
      static_cast<unsigned long long>(total.fenced_writes),
      static_cast<unsigned long long>(total.eio),
      static_cast<unsigned long long>(total.durability_checks),
      static_cast<unsigned long long>(total.latent_corruptions),
      static_cast<unsigned long long>(total.deliveries),
      static_cast<long long>(total.virtual_time.count() / 1000), static_cast<long long>(ms));
  if (seeds.size() < kCountersMinSeeds || failures > 0) return;
  // A scenario that never did what it is for proves nothing.
  EXPECT_GT(total.durability_checks, 0u) << sc.name;
  for (const char* name : sc.expect)
    EXPECT_GT(counter(total, name), 0u)
        << sc.name << ": no " << name << " in " << seeds.size() << " seeds";
}

using enum FaultKind;

TEST(Sim, Clean) { run_scenario({.name = "Clean", .number = 1, .ops = 400}); }

TEST(Sim, LostForGood) {
  run_scenario({.name = "LostForGood",
                .number = 2,
                .kinds = {kLoseForGood},
                .fault_count = 1,
                .ops = 400,
                .expect = {"faults"}});
}

TEST(Sim, Network) {
  run_scenario({.name = "Network",
                .number = 3,
                .kinds = {kDisconnect, kPartition, kDelay, kStall},
                .fault_count = 4,
                .expect = {"replays", "live_repairs"}});
}

TEST(Sim, Crashes) {
  run_scenario(
      {.name = "Crashes", .number = 4, .kinds = {kCrash}, .fault_count = 3, .expect = {"replays"}});
}

TEST(Sim, StorageErrors) {
  run_scenario({.name = "StorageErrors",
                .number = 5,
                .kinds = {kStorageErrors},
                .fault_count = 3,
                .expect = {"live_repairs"}});
}

TEST(Sim, BitFlips) {
  run_scenario({.name = "BitFlips",
                .number = 6,
                .kinds = {kBitFlip},
                .fault_count = 6,
                .expect = {"self_heals"}});
}

TEST(Sim, UpstairsCrashes) {
  run_scenario({.name = "UpstairsCrashes",
                .number = 7,
                .kinds = {kUpstairsCrash},
                .fault_count = 3,
                .expect = {"reconciles"}});
}

TEST(Sim, Mixed) {
  run_scenario(
      {.name = "Mixed",
       .number = 8,
       .kinds = {kDisconnect, kPartition, kDelay, kStall, kCrash, kStorageErrors, kUpstairsCrash},
       .fault_count = 5,
       .expect = {"replays", "live_repairs"}});
}

// A second fault while the first is still going on or being repaired.
TEST(Sim, Overlapping) {
  run_scenario({.name = "Overlapping",
                .number = 9,
                .kinds = {kDisconnect, kPartition, kDelay, kStall, kCrash, kStorageErrors},
                .fault_count = 6,
                .overlap = true,
                .expect = {"replays", "live_repairs", "faults_during_repair", "double_faults"}});
}

// Two replicas partitioned away or power-cut at once: IO may fail (EIO), never lie.
TEST(Sim, TwoDown) {
  run_scenario({.name = "TwoDown",
                .number = 10,
                .kinds = {kPartitionTwo, kCrashTwo, kPartition, kCrash},
                .fault_count = 4,
                .overlap = true,
                .expect = {"replays", "double_faults"}});
}

// Disks that fail while a repair runs (on its source or its target).
TEST(Sim, StorageErrorsDuringRepair) {
  run_scenario({.name = "StorageErrorsDuringRepair",
                .number = 11,
                .kinds = {kStorageErrors, kStorageErrors, kPartition},
                .fault_count = 6,
                .overlap = true,
                .expect = {"live_repairs", "faults_during_repair"}});
}

// 4 KiB blocks on disks that tear unsynced writes at 512 bytes.
TEST(Sim, TornBlocks) {
  run_scenario({.name = "TornBlocks",
                .number = 12,
                .kinds = {kCrash, kCrashTwo},
                .fault_count = 3,
                .block_size = 4096,
                .expect = {"replays"}});
}

TEST(Sim, Encrypted) {
  run_scenario({.name = "Encrypted",
                .number = 13,
                .kinds = {kDisconnect, kCrash, kStorageErrors, kUpstairsCrash},
                .fault_count = 5,
                .encrypted = true,
                .expect = {"replays", "live_repairs", "reconciles"}});
}

TEST(Sim, EncryptedBitFlips) {
  run_scenario({.name = "EncryptedBitFlips",
                .number = 16,
                .kinds = {kBitFlip},
                .fault_count = 6,
                .encrypted = true,
                .expect = {"self_heals"}});
}

// A latent flip, then a power cut or a new upstairs: reconciliation must not take the
// damaged copy as its source.
TEST(Sim, FlipsThenCrashes) {
  run_scenario({.name = "FlipsThenCrashes",
                .number = 17,
                .kinds = {kBitFlip, kBitFlip, kCrash, kUpstairsCrash},
                .fault_count = 6,
                .encrypted = true,
                .expect = {"reconciles"}});
}

// A replica lost with its disk and replaced by an empty one.
TEST(Sim, Replace) {
  run_scenario({.name = "Replace",
                .number = 14,
                .kinds = {kReplace, kReplace, kDisconnect},
                .fault_count = 3,
                .expect = {"replacements", "live_repairs"}});
}

// A second upstairs with a higher generation takes over while the first still runs.
TEST(Sim, Takeover) {
  run_scenario({.name = "Takeover",
                .number = 15,
                .kinds = {kTakeover, kDisconnect},
                .fault_count = 3,
                .expect = {"takeovers", "reconciles", "fenced_writes"}});
}

}  // namespace
}  // namespace cru::sim
