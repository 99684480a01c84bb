// The `crucible` client against three real crucible-downstairs on loopback: the default
// one-IO run, rand, big, fill, verify across a restart of all three downstairs, a
// downstairs killed with SIGKILL during rand, and the refusals (geometry, encryption,
// generation, an unreachable target) each with a clear message. Each test has its own
// temp dir and processes; both are cleaned up on every exit path (Process kills its
// process group, TempDir removes itself), and every wait has a hard timeout.
#include <gtest/gtest.h>
#include <signal.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <regex>

#include "common/uuid.h"
#include "support/process.h"

namespace cru::test {
namespace {

constexpr Millis kCommandTimeout{60000};
constexpr Millis kStartTimeout{15000};
// Small regions keep every workload quick: 4 KiB blocks, 1 MiB extents, 24 MiB.
const std::vector<std::string> kGeometry = {"--block-size", "4096",           "--extent-size",
                                            "256",          "--extent-count", "24"};
// A fixed 32-byte key in standard base64.
constexpr const char* kKey = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

std::string crucible() { return bin("crucible"); }
std::string downstairs() { return bin("crucible-downstairs"); }

// Three regions in one temp dir, each served by its own `crucible-downstairs run -p 0`.
class Cluster {
 public:
  // Creates region i with `geometry` plus `extra` flags.
  void create(size_t i, std::vector<std::string> extra = {},
              const std::vector<std::string>& geometry = kGeometry) {
    std::vector<std::string> args = {downstairs(), "create", "-u", Uuid::random().to_string(),
                                     "-d",         dir(i)};
    args.insert(args.end(), geometry.begin(), geometry.end());
    args.insert(args.end(), extra.begin(), extra.end());
    auto r = run_command(args, kCommandTimeout);
    ASSERT_EQ(r.exit_code(), 0) << r.describe();
  }
  void create_all(std::vector<std::string> extra = {}) {
    for (size_t i = 0; i < 3; ++i) ASSERT_NO_FATAL_FAILURE(create(i, extra));
  }
  // Starts region i on a port of its own choosing; waits for its "listening on" line.
  void start(size_t i) {
    auto p = Process::start({downstairs(), "run", "-d", dir(i), "-p", "0"});
    ASSERT_TRUE(p) << p.error().to_string();
    procs_[i] = std::move(*p);
    auto line = procs_[i]->wait_for_line(std::regex("listening on .*:[0-9]+"), kStartTimeout);
    ASSERT_TRUE(line) << line.error().to_string();
    std::smatch m;
    ASSERT_TRUE(std::regex_search(*line, m, std::regex(":([0-9]+)\\s*$"))) << *line;
    ports_[i] = static_cast<uint16_t>(std::stoi(m[1]));
  }
  void start_all() {
    for (size_t i = 0; i < 3; ++i) ASSERT_NO_FATAL_FAILURE(start(i));
  }
  // SIGTERM and a clean exit.
  void stop(size_t i) {
    procs_[i]->kill(SIGTERM);
    auto st = procs_[i]->wait(kStartTimeout);
    EXPECT_TRUE(st.exited() && st.code == 0) << st.describe() << "\n" << procs_[i]->output();
    procs_[i].reset();
  }
  void kill9(size_t i) {
    procs_[i]->kill(SIGKILL);
    auto st = procs_[i]->wait(kStartTimeout);
    EXPECT_EQ(st.signal, SIGKILL) << st.describe();
  }
  std::string target(size_t i) const { return "127.0.0.1:" + std::to_string(ports_[i]); }
  std::string dir(size_t i) const { return tmp_.file("ds" + std::to_string(i)); }
  std::string file(const std::string& name) const { return tmp_.file(name); }
  void set_target(size_t i, uint16_t port) { ports_[i] = port; }
  // kKey in a file of mode 0600, for --key-file.
  std::string key_file() const {
    const std::string path = file("key");
    std::ofstream(path) << kKey << "\n";
    std::filesystem::permissions(
        path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    return path;
  }

  // `crucible -t ... -t ... -t ... <args>`, run to completion.
  std::vector<std::string> argv(std::vector<std::string> args) const {
    std::vector<std::string> out = {crucible()};
    for (size_t i = 0; i < 3; ++i) out.insert(out.end(), {"-t", target(i)});
    out.insert(out.end(), args.begin(), args.end());
    return out;
  }
  CommandResult run(std::vector<std::string> args) const {
    return run_command(argv(std::move(args)), kCommandTimeout);
  }
  // Everything the downstairs printed, for failure messages.
  std::string logs() const {
    std::string s;
    for (size_t i = 0; i < 3; ++i)
      if (procs_[i]) s += "--- downstairs " + std::to_string(i) + "\n" + procs_[i]->output();
    return s;
  }

 private:
  TempDir tmp_;  // declared first: removed after the processes are gone
  std::array<std::unique_ptr<Process>, 3> procs_;
  std::array<uint16_t, 3> ports_{};
};

// A run that must succeed; `expect` must appear on stdout.
void expect_success(const CommandResult& r, const Cluster& c, const std::string& expect) {
  EXPECT_EQ(r.exit_code(), 0) << r.describe() << c.logs();
  EXPECT_NE(r.out.find(expect), std::string::npos) << "missing '" << expect << "' in:\n"
                                                   << r.describe();
}

// A run that must fail with a reason on stderr matching `reason`.
void expect_refused(const CommandResult& r, const std::regex& reason, const std::string& what) {
  EXPECT_FALSE(r.status.timed_out) << r.describe();
  EXPECT_TRUE(r.status.exited() && r.exit_code() != 0) << r.describe();
  EXPECT_TRUE(std::regex_search(r.err, reason)) << "stderr does not explain " << what << ":\n"
                                                << r.describe();
}

class CrucibleE2e : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(c.create_all());
    ASSERT_NO_FATAL_FAILURE(c.start_all());
  }
  Cluster c;
};

// ---- workloads -----------------------------------------------------------------------------

TEST_F(CrucibleE2e, DefaultRunWritesFlushesReadsBackAndVerifies) {
  auto r = c.run({});
  expect_success(r, c, "verified");
  EXPECT_NE(r.out.find("active: generation 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("flushed"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("done"), std::string::npos) << r.out;
  expect_success(c.run({"one"}), c, "verified");
}

TEST_F(CrucibleE2e, MainOptionsAlsoWorkAfterTheSubcommand) {
  auto r = c.run({"one", "--quiet"});
  EXPECT_EQ(r.exit_code(), 0) << r.describe() << c.logs();
  EXPECT_EQ(r.out.find("flushed"), std::string::npos)
      << "--quiet after the subcommand was ignored:\n"
      << r.describe();
}

TEST_F(CrucibleE2e, RandVerifiesEveryRead) {
  auto r = c.run({"rand", "--count", "400"});
  expect_success(r, c, "(all verified)");
}

TEST_F(CrucibleE2e, BigIosAcrossExtentsAreVerified) {
  auto r = c.run({"big"});
  expect_success(r, c, "big: 4 IOs verified");
}

TEST_F(CrucibleE2e, FillWritesEveryBlockAndReadsItBack) {
  auto r = c.run({"fill"});
  expect_success(r, c, "read back every block: verified");
  EXPECT_NE(r.out.find("filled 6144 blocks"), std::string::npos) << r.out;
}

TEST_F(CrucibleE2e, PerfReportsIopsThroughputAndLatency) {
  auto w = c.run({"perf", "--seconds", "1", "--io-size", "64K", "--depth", "4"});
  EXPECT_EQ(w.exit_code(), 0) << w.describe() << c.logs();
  EXPECT_TRUE(std::regex_search(
      w.out,
      std::regex(
          "perf write 64 KiB depth 4: [0-9]+ IOPS, [0-9.]+ MiB/s, p50 [0-9]+ us, p99 [0-9]+ us")))
      << w.out;
  auto r = c.run({"perf", "--seconds", "1", "--io-size", "4K", "--depth", "8", "--read"});
  EXPECT_EQ(r.exit_code(), 0) << r.describe() << c.logs();
  EXPECT_TRUE(std::regex_search(r.out, std::regex("perf read 4 KiB depth 8: [0-9]+ IOPS")))
      << r.out;
}

TEST_F(CrucibleE2e, VerifyLogSurvivesARestartOfAllThreeDownstairs) {
  std::string log = c.file("verify.log");
  auto first = c.run({"verify", "--log", log, "--count", "300"});
  expect_success(first, c, "all match");
  ASSERT_TRUE(std::filesystem::exists(log));
  for (size_t i = 0; i < 3; ++i) c.stop(i);
  ASSERT_NO_FATAL_FAILURE(c.start_all());
  auto again = c.run({"verify", "--log", log, "--verify-only"});
  expect_success(again, c, "all match");
  std::smatch m;
  ASSERT_TRUE(
      std::regex_search(again.out, m, std::regex("verify: ([0-9]+) written blocks checked")))
      << again.out;
  EXPECT_GT(std::stoull(m[1]), 0u) << "the check covered the blocks written before the restart";
  EXPECT_EQ(again.out.find("random writes recorded"), std::string::npos)
      << "--verify-only writes nothing";
}

TEST_F(CrucibleE2e, VerifyOnlyWithoutALogFailsNamingTheFile) {
  std::string log = c.file("missing.log");
  auto r = c.run({"verify", "--log", log, "--verify-only"});
  expect_refused(r, std::regex("missing\\.log"), "the missing log");
}

TEST_F(CrucibleE2e, RandKeepsRunningOnTwoWhenOneDownstairsIsKilled) {
  auto p = Process::start(c.argv({"--log-level", "info", "rand", "--count", "1500"}));
  ASSERT_TRUE(p) << p.error().to_string();
  std::unique_ptr<Process> client = std::move(*p);
  // The volume is active (the core logs it) and the workload is under way.
  auto active = client->wait_for_line("active: generation", kStartTimeout);
  ASSERT_TRUE(active) << active.error().to_string();
  ASSERT_TRUE(client->wait(Millis(0)).timed_out) << "the workload ended before the kill:\n"
                                                 << client->output();
  c.kill9(1);
  // The upstairs notices the loss and carries on.
  auto lost = client->wait_for_line(std::regex("downstairs 1 .*disconnected"), kCommandTimeout);
  EXPECT_TRUE(lost) << lost.error().to_string();
  auto st = client->wait(kCommandTimeout);
  EXPECT_TRUE(st.exited() && st.code == 0) << st.describe() << "\n" << client->output() << c.logs();
  EXPECT_NE(client->stdout_text().find("(all verified)"), std::string::npos) << client->output();
}

// ---- refusals ---------------------------------------------------------------------------------

TEST(CrucibleRefusals, GeometryMismatchBetweenDownstairsIsRefused) {
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(c.create(0));
  ASSERT_NO_FATAL_FAILURE(c.create(1));
  ASSERT_NO_FATAL_FAILURE(
      c.create(2, {}, {"--block-size", "4096", "--extent-size", "256", "--extent-count", "25"}));
  ASSERT_NO_FATAL_FAILURE(c.start_all());
  auto r = c.run({"--activate-timeout", "20", "one"});
  expect_refused(r, std::regex("geometry mismatch"), "the geometry mismatch");
  EXPECT_TRUE(std::regex_search(r.err, std::regex("\\b25\\b")))
      << "names the odd geometry: " << r.err;
}

TEST(CrucibleRefusals, EncryptedRegionWithoutAKeyIsRefused) {
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(c.create(0));
  ASSERT_NO_FATAL_FAILURE(c.create(1, {"--encrypted"}));
  ASSERT_NO_FATAL_FAILURE(c.create(2));
  ASSERT_NO_FATAL_FAILURE(c.start_all());
  auto r = c.run({"--activate-timeout", "20", "one"});
  expect_refused(r, std::regex("encrypt"), "the encryption mismatch");
  EXPECT_NE(r.err.find(c.target(1)), std::string::npos)
      << "names the encrypted downstairs: " << r.err;
}

TEST(CrucibleRefusals, UnencryptedRegionWithAKeyIsRefused) {
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(c.create(0, {"--encrypted"}));
  ASSERT_NO_FATAL_FAILURE(c.create(1, {"--encrypted"}));
  ASSERT_NO_FATAL_FAILURE(c.create(2));
  ASSERT_NO_FATAL_FAILURE(c.start_all());
  auto r = c.run({"--key-file", c.key_file(), "--activate-timeout", "20", "one"});
  expect_refused(r, std::regex("encrypt"), "the encryption mismatch");
  EXPECT_NE(r.err.find(c.target(2)), std::string::npos)
      << "names the unencrypted downstairs: " << r.err;
}

TEST(CrucibleRefusals, EncryptedRegionsWithAKeyWork) {
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(c.create_all({"--encrypted"}));
  ASSERT_NO_FATAL_FAILURE(c.start_all());
  auto r = c.run({"--key-file", c.key_file(), "rand", "--count", "200"});
  expect_success(r, c, "(all verified)");
}

TEST(CrucibleRefusals, KeyOnTheCommandLineIsRefused) {
  Cluster c;
  auto r = run_command({crucible(), "-t", "127.0.0.1:1", "-t", "127.0.0.1:2", "-t", "127.0.0.1:3",
                        "--key", kKey, "one"},
                       kCommandTimeout);
  expect_refused(r, std::regex("--key-file"), "the flag to use instead");
  EXPECT_EQ(r.err.find(kKey), std::string::npos) << "never echoes the key: " << r.err;
}

TEST(CrucibleRefusals, KeyFileReadableByOthersIsRefused) {
  Cluster c;
  const std::string path = c.key_file();
  std::filesystem::permissions(path, std::filesystem::perms::others_read,
                               std::filesystem::perm_options::add);
  auto r = c.run({"--key-file", path, "one"});
  expect_refused(r, std::regex("chmod 600"), "the mode fix");
}

TEST_F(CrucibleE2e, ExplicitGenerationLowerThanOnDiskIsRefusedNamingBothNumbers) {
  expect_success(c.run({"--gen", "29", "one"}), c, "active: generation 29");
  auto r = c.run({"--gen", "13", "one"});
  expect_refused(r, std::regex("generation"), "the generation refusal");
  EXPECT_TRUE(std::regex_search(r.err, std::regex("\\b13\\b")))
      << "names the requested generation: " << r.err;
  EXPECT_TRUE(std::regex_search(r.err, std::regex("\\b29\\b")))
      << "names the generation on disk: " << r.err;
  // The refusal changed nothing: auto takes the next one.
  expect_success(c.run({"one"}), c, "active: generation 30");
}

TEST(CrucibleRefusals, UnreachableTargetFailsNamingIt) {
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(c.create(0));
  ASSERT_NO_FATAL_FAILURE(c.create(1));
  ASSERT_NO_FATAL_FAILURE(c.start(0));
  ASSERT_NO_FATAL_FAILURE(c.start(1));
  c.set_target(2, free_port());  // nothing listens there
  auto r = c.run({"--activate-timeout", "2", "one"});
  expect_refused(r, std::regex("activation"), "the failed activation");
  EXPECT_NE(r.err.find(c.target(2)), std::string::npos)
      << "names the unreachable target: " << r.err;
}

TEST(CrucibleRefusals, WrongNumberOfTargetsIsRefused) {
  auto r =
      run_command({crucible(), "-t", "127.0.0.1:1", "-t", "127.0.0.1:2", "one"}, kCommandTimeout);
  expect_refused(r, std::regex("exactly three"), "the target count");
}

}  // namespace
}  // namespace cru::test
