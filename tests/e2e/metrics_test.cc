// Prometheus metrics (issue 11) with the real tools: a cluster with every endpoint on
// (crucible-downstairs run --metrics, crucible-fuse metrics.listen), IO through the FUSE
// disk.img, `promtool check metrics` on each endpoint's output, and a real Prometheus
// server (Debian's `prometheus`) scraping all four whose query API must return the
// expected series and values. Everything runs from the cluster's temp dir and is stopped
// when the test ends, failed or not.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "support/cluster.h"
#include "support/process.h"

namespace cru::test {
namespace {

constexpr Millis kCommandTimeout{30000};
// Prometheus starts, scrapes every second and answers within this on a loaded machine.
constexpr Millis kPrometheusTimeout{90000};
// The port range this test's Prometheus may use (fixed ports apart from other tests').
constexpr uint16_t kPrometheusPortFirst = 45100, kPrometheusPortLast = 45199;

bool have(const std::string& tool) {
  return run_command({"/bin/sh", "-c", "command -v " + tool}, kCommandTimeout).exit_code() == 0;
}

// "metrics on http://127.0.0.1:PORT/metrics" (downstairs) or "metrics:  http://..." (fuse).
Result<uint16_t> metrics_port(Process& p) {
  auto line = p.find_line("/metrics", Millis{20000});
  if (!line) return tl::unexpected(line.error());
  std::smatch m;
  if (!std::regex_search(*line, m, std::regex(":([0-9]+)/metrics")))
    return fail(ErrorCode::kProtocol, "no metrics port in: " + *line);
  return static_cast<uint16_t>(std::stoi(m[1]));
}

CommandResult curl(std::vector<std::string> args) {
  std::vector<std::string> argv = {"/usr/bin/curl", "-sS", "--fail", "--max-time", "10"};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv, kCommandTimeout);
}

uint16_t free_port_in_range() {
  for (uint16_t p = kPrometheusPortFirst; p <= kPrometheusPortLast; ++p) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(p);
    ::inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    if (ok) return p;
  }
  return 0;
}

// The value of the series line `name{labels} VALUE` in an exposition, or -1.
double series_value(const std::string& text, const std::string& series) {
  const std::string needle = "\n" + series + " ";
  auto at = ("\n" + text).find(needle);
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + needle.size() - 1));
}

// One instant query's vector result: {labels of each sample (as JSON), value}.
Result<std::vector<std::pair<nlohmann::json, double>>> query(uint16_t port,
                                                             const std::string& promql) {
  auto r = curl({"-G", "--data-urlencode", "query=" + promql,
                 "http://127.0.0.1:" + std::to_string(port) + "/api/v1/query"});
  if (r.exit_code() != 0) return fail(ErrorCode::kIo, "query failed: " + r.describe());
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  if (j.is_discarded() || j.value("status", "") != "success")
    return fail(ErrorCode::kProtocol, "query answer: " + r.out);
  std::vector<std::pair<nlohmann::json, double>> out;
  for (const auto& s : j["data"]["result"])
    out.emplace_back(s["metric"], std::stod(s["value"][1].get<std::string>()));
  return out;
}

// Polls `promql` until `ok` accepts its samples, or the deadline; the error carries the
// last answer.
Status await_query(
    uint16_t port, const std::string& promql,
    const std::function<bool(const std::vector<std::pair<nlohmann::json, double>>&)>& ok) {
  const auto deadline = std::chrono::steady_clock::now() + kPrometheusTimeout;
  std::string last = "no answer";
  while (std::chrono::steady_clock::now() < deadline) {
    auto r = query(port, promql);
    if (r && ok(*r)) return {};
    if (r) {
      last.clear();
      for (const auto& [labels, v] : *r) last += labels.dump() + " = " + std::to_string(v) + "\n";
      if (last.empty()) last = "an empty result";
    } else {
      last = r.error().message;
    }
    // Prometheus scrapes once a second; polling faster only loads the machine.
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  return fail(ErrorCode::kTimeout, "'" + promql + "' never held; last answer:\n" + last);
}

TEST(Metrics, EveryEndpointPassesPromtoolAndARealPrometheusScrapesTheCluster) {
  if (!have("promtool") || !have("curl"))
    GTEST_SKIP() << "promtool or curl is not installed (Debian packages prometheus and curl; "
                    "make deps installs them)";
  ClusterOptions options;
  options.downstairs_args = {"--metrics", "127.0.0.1:0"};
  auto c = Cluster::start(options);
  ASSERT_TRUE(c) << c.error().to_string();
  MountArgs mount_args;
  mount_args.extra_yaml = "metrics:\n  listen: 127.0.0.1:0\n";
  auto m = (*c)->mount(mount_args);
  ASSERT_TRUE(m) << m.error().to_string();

  // name -> port: the upstairs and the three downstairs.
  std::vector<std::pair<std::string, uint16_t>> endpoints;
  auto up = metrics_port((*m)->process());
  ASSERT_TRUE(up) << up.error().to_string();
  endpoints.emplace_back("upstairs", *up);
  for (int i = 0; i < kDownstairsCount; ++i) {
    auto p = metrics_port(*(*c)->downstairs_process(i));
    ASSERT_TRUE(p) << "downstairs " << i << ": " << p.error().to_string();
    endpoints.emplace_back("downstairs-" + std::to_string(i), *p);
  }

  // Guest IO: 64 writes of 4 KiB, an fsync, and the reads back.
  constexpr int kWrites = 64;
  {
    const int fd = ::open((*m)->disk_path().c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    std::vector<char> block(4096, 'm');
    for (int i = 0; i < kWrites; ++i)
      ASSERT_EQ(::pwrite(fd, block.data(), block.size(), static_cast<off_t>(i) * 4096), 4096);
    ASSERT_EQ(::fsync(fd), 0);
    for (int i = 0; i < kWrites; ++i)
      ASSERT_EQ(::pread(fd, block.data(), block.size(), static_cast<off_t>(i) * 4096), 4096);
    ::close(fd);
  }

  // Each endpoint's exposition passes promtool's checks (format and naming lints).
  for (const auto& [name, port] : endpoints) {
    const std::string file = (*c)->dir() + "/" + name + ".prom";
    auto got = curl({"-o", file, "http://127.0.0.1:" + std::to_string(port) + "/metrics"});
    ASSERT_EQ(got.exit_code(), 0) << name << ": " << got.describe();
    auto check =
        run_command({"/bin/sh", "-c", "promtool check metrics < " + file}, kCommandTimeout);
    EXPECT_EQ(check.exit_code(), 0) << name << ": " << check.describe();
  }
  // The guest writes were counted by the FUSE layer, and every downstairs wrote them.
  auto upstairs_text = curl({"http://127.0.0.1:" + std::to_string(*up) + "/metrics"});
  ASSERT_EQ(upstairs_text.exit_code(), 0) << upstairs_text.describe();
  EXPECT_GE(
      series_value(upstairs_text.out, "crucible_upstairs_guest_op_seconds_count{op=\"write\"}"),
      kWrites)
      << upstairs_text.out;
  EXPECT_GE(series_value(upstairs_text.out, "crucible_upstairs_guest_bytes_total{op=\"read\"}"),
            kWrites * 4096)
      << upstairs_text.out;

  if (!have("prometheus")) {
    std::cout << "[ SKIPPED  ] the Prometheus server part: `prometheus` is not installed "
                 "(Debian package prometheus; make deps installs it)\n";
    return;
  }
  const uint16_t prom_port = free_port_in_range();
  ASSERT_NE(prom_port, 0) << "no free port in " << kPrometheusPortFirst << ".."
                          << kPrometheusPortLast;
  std::string targets;
  for (const auto& [name, port] : endpoints)
    targets += "      - targets: ['127.0.0.1:" + std::to_string(port) + "']\n" +
               "        labels: { component: '" + name + "' }\n";
  const std::string config =
      (*c)->write_file("prometheus.yml",
                       "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                       "scrape_configs:\n  - job_name: crucible\n    static_configs:\n" +
                           targets);
  const std::string data = (*c)->dir() + "/prometheus-data";
  auto prom = Process::start({"/usr/bin/prometheus", "--config.file=" + config,
                              "--storage.tsdb.path=" + data,
                              "--web.listen-address=127.0.0.1:" + std::to_string(prom_port)});
  ASSERT_TRUE(prom) << prom.error().to_string();
  // Stopped before the cluster goes (the Process destructor SIGKILLs it if this fails).
  struct Stop {
    Process& p;
    ~Stop() {
      p.kill(SIGTERM);
      p.wait(Millis{30000});
    }
  } stop{**prom};
  auto ready =
      (*prom)->wait_for_line("Server is ready to receive web requests", kPrometheusTimeout);
  ASSERT_TRUE(ready) << ready.error().to_string();

  using Samples = std::vector<std::pair<nlohmann::json, double>>;
  // All four targets scraped successfully.
  EXPECT_TRUE(await_query(prom_port, "sum(up{job=\"crucible\"})", [](const Samples& s) {
                return s.size() == 1 && s[0].second == 4;
              }).has_value());
  // Three replicas active, seen through the upstairs.
  auto three_active =
      await_query(prom_port, "sum(crucible_upstairs_replica_active)",
                  [](const Samples& s) { return s.size() == 1 && s[0].second == 3; });
  EXPECT_TRUE(three_active) << three_active.error().message;
  // The guest writes, counted.
  auto writes =
      await_query(prom_port, "crucible_upstairs_guest_op_seconds_count{op=\"write\"}",
                  [](const Samples& s) { return s.size() == 1 && s[0].second >= kWrites; });
  EXPECT_TRUE(writes) << writes.error().message;
  // Every downstairs wrote the data and has the upstairs connected.
  auto written = await_query(
      prom_port, "crucible_downstairs_written_bytes_total >= " + std::to_string(kWrites * 4096),
      [](const Samples& s) { return s.size() == 3; });
  EXPECT_TRUE(written) << written.error().message;
  auto connected = await_query(prom_port, "crucible_downstairs_connections >= 1",
                               [](const Samples& s) { return s.size() == 3; });
  EXPECT_TRUE(connected) << connected.error().message;
  // A histogram query as docs/observability.md shows it answers with a number.
  auto p99 = await_query(prom_port,
                         "histogram_quantile(0.99, sum by (le) "
                         "(crucible_upstairs_guest_op_seconds_bucket{op=\"write\"}))",
                         [](const Samples& s) { return s.size() == 1 && s[0].second > 0; });
  EXPECT_TRUE(p99) << p99.error().message;
}

// The control socket and the metrics endpoint answer from the moment crucible-fuse starts:
// while activation waits for a downstairs that is down, `status` says "activating" and the
// metrics say so too; once it is back the volume activates and mounts.
TEST(Metrics, StatusAndMetricsAnswerWhileActivationWaits) {
  if (!have("curl")) GTEST_SKIP() << "curl is not installed (make deps installs it)";
  auto c = Cluster::start();
  ASSERT_TRUE(c) << c.error().to_string();
  auto stopped = (*c)->stop_downstairs(0);
  ASSERT_TRUE(stopped) << stopped.error().to_string();

  const std::string mnt = (*c)->dir() + "/mnt-early";
  ASSERT_TRUE(std::filesystem::create_directory(mnt));
  const std::string config =
      (*c)->write_file("early.yaml", (*c)->config_yaml(mnt, "metrics:\n  listen: 127.0.0.1:0\n"));
  auto fuse = Process::start({bin("crucible-fuse"), "-c", config, mnt, "-f"});
  ASSERT_TRUE(fuse) << fuse.error().to_string();
  // Unmounted and stopped whatever happens below (the cluster's own teardown does not
  // know this mount).
  struct Unmount {
    Process& p;
    std::string mnt;
    ~Unmount() {
      p.kill(SIGTERM);
      if (p.wait(Millis{60000}).timed_out) p.kill(SIGKILL);
      run_command({"/bin/umount", "-l", mnt}, kCommandTimeout);
    }
  } unmount{**fuse, mnt};

  const std::string socket = mnt + ".sock";
  const auto deadline = std::chrono::steady_clock::now() + Millis{20000};
  CommandResult status;
  std::string state;
  while (std::chrono::steady_clock::now() < deadline) {
    status = run_command({bin("crucible-fuse"), "status", "--json", "--socket", socket},
                         kCommandTimeout);
    if (status.exit_code() == 0) {
      auto j = nlohmann::json::parse(status.out, nullptr, false);
      if (!j.is_discarded()) state = j.value("state", "");
      if (state == "activating") break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(state, "activating") << status.describe() << (*fuse)->output();
  auto port = metrics_port(**fuse);
  ASSERT_TRUE(port) << port.error().to_string();
  auto text = curl({"http://127.0.0.1:" + std::to_string(*port) + "/metrics"});
  ASSERT_EQ(text.exit_code(), 0) << text.describe();
  EXPECT_EQ(series_value(text.out, "crucible_upstairs_volume_state{state=\"activating\"}"), 1)
      << text.out;
  EXPECT_FALSE((*fuse)->find_line("is ready", Millis{0})) << "ready with a downstairs down";

  ASSERT_TRUE((*c)->start_downstairs(0));
  auto ready = (*fuse)->wait_for_line("is ready", Millis{60000});
  ASSERT_TRUE(ready) << ready.error().to_string();
  auto active =
      run_command({bin("crucible-fuse"), "status", "--json", "--socket", socket}, kCommandTimeout);
  ASSERT_EQ(active.exit_code(), 0) << active.describe();
  EXPECT_EQ(nlohmann::json::parse(active.out).value("state", ""), "active") << active.out;
}

}  // namespace
}  // namespace cru::test
