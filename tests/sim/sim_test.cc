// The seeded simulator's scenarios. Each test runs many seeds of one scenario; a failure
// prints the seed and the line that replays it alone.
//
//   CRU_SIM_SEEDS=N   seeds per scenario (default kDefaultSeeds)
//   CRU_SIM_SEED=N    run only seed N (in every scenario the filter selects)
//   CRU_SIM_LOG=debug the cores' logs (to stderr), for a replayed seed
//   CRU_SIM_TRACE=1   every delivery and fault (to stderr), for a replayed seed
//
// 100k seeds: run scenarios in parallel, one process per scenario and seed range, e.g.
//   for f in Clean LostForGood Network Crashes StorageErrors BitFlips UpstairsCrashes Mixed; do
//     CRU_SIM_SEEDS=12500 build/tests/sim --gtest_filter="Sim.$f" & done; wait
// (CRU_SIM_FIRST_SEED=N shifts a process's seed range, to split one scenario further.)
#include "sim/sim.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <string>

#include "common/log.h"

namespace cru::sim {
namespace {

// Seeds per scenario by default: 8 scenarios x 150 = 1200 seeds in CI (the issue asks for
// at least 500): about 10 s in a release build, a few minutes under ASan.
constexpr uint64_t kDefaultSeeds = 150;
// Seed ranges of the scenarios do not overlap, so a seed names one run of one scenario.
constexpr uint64_t kScenarioStride = 1'000'000'000;

std::optional<uint64_t> env_number(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::strtoull(v, nullptr, 10);
}

void quiet_logs() {
  const char* level = std::getenv("CRU_SIM_LOG");
  log::set_level(level && log::valid_level(level) ? level : "off");
}

void run_scenario(const char* name, uint64_t scenario, std::vector<FaultKind> kinds,
                  int fault_count, int ops) {
  quiet_logs();
  std::vector<uint64_t> seeds;
  if (auto one = env_number("CRU_SIM_SEED")) {
    seeds.push_back(*one);
  } else {
    uint64_t n = env_number("CRU_SIM_SEEDS").value_or(kDefaultSeeds);
    uint64_t first = scenario * kScenarioStride + env_number("CRU_SIM_FIRST_SEED").value_or(1);
    for (uint64_t i = 0; i < n; ++i) seeds.push_back(first + i);
  }
  SimResult total;
  auto started = std::chrono::steady_clock::now();
  int failures = 0;
  for (uint64_t seed : seeds) {
    SimOptions o;
    o.seed = seed;
    o.kinds = kinds;
    o.fault_count = fault_count;
    o.ops = ops;
    o.trace = env_number("CRU_SIM_TRACE").value_or(0) != 0;
    SimResult r = run_sim(o);
    if (!r.ok) {
      ADD_FAILURE() << "seed " << seed << ": " << r.failure << "\n  replay: CRU_SIM_SEED=" << seed
                    << " build/tests/sim --gtest_filter=Sim." << name;
      if (++failures >= 5) break;  // enough to go on with
    }
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
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  started)
                .count();
  std::printf(
      "[   SIM    ] %s: %zu seeds, %llu ops, %llu reads, %llu faults, %llu replays, %llu live "
      "repairs, "
      "%llu extents reconciled, %llu self-heals, %llu latent flips, %llu deliveries, %lld s "
      "virtual, %lld ms\n",
      name, seeds.size(), static_cast<unsigned long long>(total.ops),
      static_cast<unsigned long long>(total.reads),
      static_cast<unsigned long long>(total.faults_injected),
      static_cast<unsigned long long>(total.replays),
      static_cast<unsigned long long>(total.live_repairs),
      static_cast<unsigned long long>(total.reconciles),
      static_cast<unsigned long long>(total.self_heals),
      static_cast<unsigned long long>(total.latent_corruptions),
      static_cast<unsigned long long>(total.deliveries),
      static_cast<long long>(total.virtual_time.count() / 1000), static_cast<long long>(ms));
}

using enum FaultKind;

TEST(Sim, Clean) { run_scenario("Clean", 1, {}, 0, 400); }

TEST(Sim, LostForGood) { run_scenario("LostForGood", 2, {kLoseForGood}, 1, 400); }

TEST(Sim, Network) {
  run_scenario("Network", 3, {kDisconnect, kPartition, kDelay, kStall}, 4, 300);
}

TEST(Sim, Crashes) { run_scenario("Crashes", 4, {kCrash}, 3, 300); }

TEST(Sim, StorageErrors) { run_scenario("StorageErrors", 5, {kStorageErrors}, 3, 300); }

TEST(Sim, BitFlips) { run_scenario("BitFlips", 6, {kBitFlip}, 6, 300); }

TEST(Sim, UpstairsCrashes) { run_scenario("UpstairsCrashes", 7, {kUpstairsCrash}, 3, 300); }

TEST(Sim, Mixed) {
  run_scenario("Mixed", 8,
               {kDisconnect, kPartition, kDelay, kStall, kCrash, kStorageErrors, kUpstairsCrash}, 5,
               300);
}

}  // namespace
}  // namespace cru::sim
