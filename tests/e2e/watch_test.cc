// `crucible-fuse status --watch` as a person sees it: the view runs in a detached tmux
// session (a real terminal, 120x40) and the test reads the screen with `tmux
// capture-pane`, waiting for conditions with deadlines. A live repair, and reconciliation
// at activation, are made slow enough to watch without timing guesses: the upstairs
// reaches each downstairs through a delaying proxy (25 ms each way), and each repaired
// extent costs at least three (live repair) or four (reconciliation) round trips in
// sequence, so 64 extents take at least 9.6 s (12.8 s) while the view redraws every
// 200 ms.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "support/cluster.h"
#include "support/delay_proxy.h"
#include "support/process.h"
#include "support/regions.h"

namespace cru::test {
namespace {

using namespace std::chrono_literals;

constexpr Millis kCommandTimeout{30000};
// A repair or reconciliation of the whole volume through the proxies, with room for a
// loaded machine; the waits end as soon as the screen shows what they wait for.
constexpr Millis kScreenTimeout{120000};
constexpr Millis kPollInterval{100};  // between two reads of the screen
// 64 extents of 1 MiB: writing all of it while a replica is down passes the upstairs's
// 50 MiB fault limit, so that replica needs a live repair when it returns.
constexpr uint32_t kExtents = 64;
constexpr uint64_t kExtentBlocks = 256;
constexpr uint32_t kBlockSize = 4096;
constexpr std::chrono::microseconds kOneWay{25000};

bool have(const std::string& tool) {
  return run_command({"/bin/sh", "-c", "command -v " + tool}, kCommandTimeout).exit_code() == 0;
}

// The three downstairs behind delaying proxies (delay off until delay(true)). Declared
// before the cluster in each test, so the proxies outlive the mounts that use them.
struct Proxies {
  std::array<uint16_t, kDownstairsCount> ds_ports{};
  std::array<std::unique_ptr<DelayProxy>, kDownstairsCount> proxies;

  Status start() {
    for (int i = 0; i < kDownstairsCount; ++i) {
      ds_ports[i] = free_port();
      auto p = DelayProxy::start(
          {.target_port = ds_ports[i], .one_way_delay = kOneWay, .jitter = 0us, .delay_on = false});
      if (!p) return tl::unexpected(p.error());
      proxies[i] = std::move(*p);
    }
    return {};
  }
  void delay(bool on) {
    for (auto& p : proxies) p->set_delay_on(on);
  }
  ClusterOptions cluster_options() const {
    ClusterOptions o;
    o.block_size = kBlockSize;
    o.extent_size_blocks = kExtentBlocks;
    o.extent_count = kExtents;
    // Reconciliation through the proxies is part of activation here.
    o.activate_timeout_ms = static_cast<uint64_t>(kScreenTimeout.count());
    o.placement = [this](int i) {
      return DownstairsPlacement{
          {}, "127.0.0.1", ds_ports.at(i), "127.0.0.1:" + std::to_string(proxies.at(i)->port())};
    };
    return o;
  }
};

// A private tmux server (its socket in `dir`) running one command in a 120x40 session;
// the destructor kills that server, whatever the test left. After the command ends the
// pane stays, showing "[watch exited N]".
class Tmux {
 public:
  explicit Tmux(const std::string& dir) : socket_(dir + "/tmux.sock") {}
  ~Tmux() {
    if (started_) run_command({tool("tmux"), "-S", socket_, "kill-server"}, kCommandTimeout);
  }
  Tmux(const Tmux&) = delete;
  Tmux& operator=(const Tmux&) = delete;

  Status start(const std::string& command) {
    started_ = true;
    auto r = run_command(
        {tool("tmux"), "-S", socket_, "-f", "/dev/null", "new-session", "-d", "-s", "watch", "-x",
         "120", "-y", "40", command + "; echo \"[watch exited $?]\"; exec cat"},
        kCommandTimeout);
    if (r.exit_code() != 0) return fail(ErrorCode::kIo, "tmux new-session: " + r.describe());
    return {};
  }
  std::string screen() const {
    auto r = run_command({tool("tmux"), "-S", socket_, "capture-pane", "-p", "-t", "watch"},
                         kCommandTimeout);
    return r.exit_code() == 0 ? r.out : "(capture-pane failed: " + r.describe() + ")";
  }
  // Reads the screen until `done` accepts it; the last screen either way.
  std::pair<bool, std::string> await(const std::function<bool(const std::string&)>& done,
                                     Millis timeout = kScreenTimeout) const {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string s;
    do {
      s = screen();
      if (done(s)) return {true, s};
      std::this_thread::sleep_for(kPollInterval);
    } while (std::chrono::steady_clock::now() < deadline);
    return {false, s};
  }

 private:
  std::string socket_;
  bool started_ = false;
};

std::string watch_command(const std::string& socket) {
  return "'" + bin("crucible-fuse") + "' status --watch --interval-ms 200 --socket '" + socket +
         "'";
}

bool has(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// "<label> N of M ..." on the screen: N, or -1.
long shown_count(const std::string& screen, const std::string& label) {
  std::smatch m;
  if (!std::regex_search(screen, m, std::regex(label + " ([0-9]+) of ([0-9]+)"))) return -1;
  return std::stol(m[1]);
}

bool has_bar(const std::string& screen) {
  return std::regex_search(screen, std::regex("\\[[#.]{40}\\] +[0-9]+%"));
}

// The replica line of replica i on the screen (empty if none).
std::string replica_row(const std::string& screen, int i) {
  std::smatch m;
  std::regex row("\\n" + std::to_string(i) + " +127\\.0\\.0\\.1:[0-9]+ +([^\\n]*)");
  return std::regex_search(screen, m, row) ? m[1].str() : "";
}

// Writes the whole volume (distinct data per extent), then fsyncs; an error message or "".
std::string write_volume(const std::string& disk) {
  int fd = ::open(disk.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return "open " + disk + ": " + std::strerror(errno);
  const uint64_t extent_bytes = kExtentBlocks * kBlockSize;
  std::string err;
  for (uint32_t e = 0; e < kExtents && err.empty(); ++e) {
    const std::string data = pattern(1000 + e, extent_bytes);
    if (::pwrite(fd, data.data(), data.size(), static_cast<off_t>(e * extent_bytes)) !=
        static_cast<ssize_t>(data.size()))
      err = "write of extent " + std::to_string(e) + " failed";
  }
  if (err.empty() && ::fsync(fd) != 0) err = std::string("fsync: ") + std::strerror(errno);
  ::close(fd);
  return err;
}

// A cluster behind the proxies, a tmux server for the view, and a first mount that wrote
// the whole volume while replica 2 was stopped: every extent is newer on replicas 0 and 1.
class Watch : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have("tmux")) GTEST_SKIP() << "tmux is not installed (make deps installs it)";
    ASSERT_TRUE(proxies_.start());
    auto c = Cluster::start(proxies_.cluster_options());
    ASSERT_TRUE(c) << c.error().to_string();
    cluster_ = std::move(*c);
    tmux_ = std::make_unique<Tmux>(cluster_->dir());
    auto m = cluster_->mount();
    ASSERT_TRUE(m) << m.error().to_string();
    mount_ = *m;
    ASSERT_TRUE(cluster_->stop_downstairs(2));
    const std::string err = write_volume(mount_->disk_path());
    ASSERT_TRUE(err.empty()) << err;
  }

  // Declared in this order so they go in the reverse one: the view, then the cluster
  // (its mounts talk through the proxies), then the proxies.
  Proxies proxies_;
  std::unique_ptr<Cluster> cluster_;
  std::unique_ptr<Tmux> tmux_;
  Mount* mount_ = nullptr;
};

TEST_F(Watch, ShowsALiveRepairProgressingToDone) {
  // Over the fault limit, replica 2 needs a live repair when it returns.
  auto faulted = mount_->wait_status(
      [](const nlohmann::json& s) {
        return s["downstairs"][2].value("state", "").starts_with("faulted");
      },
      kScreenTimeout);
  ASSERT_TRUE(faulted) << faulted.error().to_string();

  ASSERT_TRUE(tmux_->start(watch_command(mount_->mountpoint() + ".sock")));
  auto [degraded, screen] = tmux_->await([](const std::string& s) {
    return has(s, "DEGRADED: 2 of 3 copies complete") && has(replica_row(s, 2), "faulted");
  });
  ASSERT_TRUE(degraded) << screen;

  proxies_.delay(true);
  ASSERT_TRUE(cluster_->start_downstairs(2));
  // The bar while it runs, partway through (the repair takes at least 9.6 s here).
  auto [midway, during] = tmux_->await([](const std::string& s) {
    const long n = shown_count(s, "live repair of replica 2 from replica [01]: extent");
    return has_bar(s) && n > 0 && n < static_cast<long>(kExtents) &&
           has(replica_row(s, 2), "live_repair") && has(s, "transferred at");
  });
  ASSERT_TRUE(midway) << during;
  std::cout << "the watch during the live repair:\n" << during;
  // Then done: replica 2 active again, no bar, the repair counted as completed.
  auto [done, after] = tmux_->await([](const std::string& s) {
    return has(s, "no live repair running; 1 completed, 0 aborted") &&
           has(replica_row(s, 2), "active") && has(s, "3 of 3 copies complete") && !has_bar(s);
  });
  ASSERT_TRUE(done) << after;
  proxies_.delay(false);

  // The volume unmounts: the view says so and exits 0.
  auto exit = mount_->unmount();
  ASSERT_TRUE(exit) << exit.error().to_string();
  auto [gone, last] = tmux_->await([](const std::string& s) {
    return has(s, "the volume stopped") && has(s, "[watch exited 0]");
  });
  EXPECT_TRUE(gone) << last;
}

TEST_F(Watch, ShowsReconciliationAtActivationWhileItRuns) {
  auto exit = mount_->unmount();
  ASSERT_TRUE(exit) << exit.error().to_string();
  ASSERT_TRUE(cluster_->start_downstairs(2));

  // A new mount reconciles the 64 extents before it serves IO.
  proxies_.delay(true);
  MountArgs starting;
  starting.wait_ready = false;
  auto m = cluster_->mount(starting);
  ASSERT_TRUE(m) << m.error().to_string();
  // The control socket exists before activation; the view starts on it at once.
  const std::string socket = (*m)->mountpoint() + ".sock";
  const auto deadline = std::chrono::steady_clock::now() + kScreenTimeout;
  while (!std::filesystem::exists(socket) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(kPollInterval);
  ASSERT_TRUE(std::filesystem::exists(socket)) << (*m)->process().output();
  ASSERT_TRUE(tmux_->start(watch_command(socket)));

  auto [midway, during] = tmux_->await([](const std::string& s) {
    const long n = shown_count(s, "reconciliation:");
    return has(s, "volume    reconciling") && has_bar(s) && n > 0 &&
           n < static_cast<long>(kExtents) && has(s, "transferred at");
  });
  ASSERT_TRUE(midway) << during << (*m)->process().output();
  std::cout << "the watch during reconciliation:\n" << during;
  EXPECT_TRUE(has(during, "of 64 extents reconciled")) << during;

  auto ready = (*m)->process().wait_for_line("is ready", kScreenTimeout);
  ASSERT_TRUE(ready) << ready.error().to_string();
  auto [active, after] = tmux_->await([](const std::string& s) {
    return has(s, "volume    active") && has(s, "last reconciliation: 64 of 64 extents") &&
           !has_bar(s);
  });
  EXPECT_TRUE(active) << after;
  proxies_.delay(false);

  // Not on a terminal: one frame after another, no escapes; Ctrl-C (SIGINT) exits 0.
  auto plain = Process::start(
      {bin("crucible-fuse"), "status", "--watch", "--interval-ms", "100", "--socket", socket});
  ASSERT_TRUE(plain) << plain.error().to_string();
  for (int frame = 0; frame < 2; ++frame) {
    auto header = (*plain)->wait_for_line("crucible-fuse status --watch", kCommandTimeout);
    ASSERT_TRUE(header) << header.error().to_string();
  }
  (*plain)->kill(SIGINT);
  ExitStatus plain_exit = (*plain)->wait(kCommandTimeout);
  EXPECT_TRUE(plain_exit.exited() && plain_exit.code == 0) << plain_exit.describe();
  EXPECT_FALSE(has((*plain)->stdout_text(), "\x1b")) << (*plain)->stdout_text();

  // crucible-fuse dies (its socket stays behind): the view says so and exits 1.
  (*m)->kill();
  auto [lost, last] = tmux_->await(
      [](const std::string& s) { return has(s, "lost the volume") && has(s, "[watch exited 1]"); });
  EXPECT_TRUE(lost) << last;
}

}  // namespace
}  // namespace cru::test
