// crucible-dsc as a real program: creating regions, supervising three downstairs,
// the control commands (status, kill, start, stop, restart, kill-random), refusals of
// bad requests, and the promise that no downstairs outlives its supervisor. Each test
// works in its own temp dir with free ports (--port-base 0); the test's Process objects
// kill the supervisor's process group (children included) even on failure.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <regex>
#include <set>

#include "support/process.h"

namespace cru::test {
namespace {

namespace fs = std::filesystem;

constexpr Millis kCommandTimeout{60000};
constexpr Millis kStartTimeout{30000};
constexpr Millis kStopTimeout{30000};
constexpr Millis kConnectTimeout{5000};

std::string dsc_bin() { return bin("crucible-dsc"); }

CommandResult dsc(std::vector<std::string> args) {
  args.insert(args.begin(), dsc_bin());
  return run_command(std::move(args), kCommandTimeout);
}

// Three small regions (two extents of 64 blocks) so creating them is quick.
void create_regions(const std::string& dir) {
  auto r =
      dsc({"create", "--dir", dir, "--count", "3", "--extent-size", "64", "--extent-count", "2"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
}

struct Supervisor {
  std::unique_ptr<Process> process;
  std::vector<uint16_t> ports;
  std::vector<pid_t> pids;
};

// Starts `crucible-dsc start` on free ports and waits until all three downstairs listen.
Result<Supervisor> start_supervisor(const std::string& dir) {
  auto p = Process::start({dsc_bin(), "start", "--dir", dir, "--port-base", "0"});
  if (!p) return tl::unexpected(p.error());
  auto ready = (*p)->wait_for_line("supervising 3 downstairs", kStartTimeout);
  if (!ready) return tl::unexpected(ready.error());
  Supervisor s{std::move(*p), {}, {}};
  for (int i = 0; i < 3; ++i) {
    auto line = s.process->find_line(fmt::format("downstairs {}: 127.0.0.1:", i), kStartTimeout);
    if (!line) return tl::unexpected(line.error());
    std::smatch m;
    if (!std::regex_search(*line, m, std::regex(":([0-9]+) pid ([0-9]+)$")))
      return fail(ErrorCode::kProtocol, "unexpected start line: " + *line);
    s.ports.push_back(static_cast<uint16_t>(std::stoi(m[1])));
    s.pids.push_back(std::stoi(m[2]));
  }
  return s;
}

struct Entry {
  uint16_t port = 0;
  std::string state;
  pid_t pid = -1;  // -1: none
  int restarts = -1;
};

// `crucible-dsc status`, parsed; a failed command or an unexpected line fails the test.
std::vector<Entry> status(const std::string& dir) {
  auto r = dsc({"status", "--dir", dir});
  EXPECT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<Entry> entries;
  std::regex line(
      "^downstairs ([0-9]+): 127\\.0\\.0\\.1:([0-9]+) (\\S+) pid (\\S+) restarts ([0-9]+)$");
  std::istringstream in(r.out);
  for (std::string l; std::getline(in, l);) {
    std::smatch m;
    EXPECT_TRUE(std::regex_match(l, m, line)) << "unexpected status line: " << l;
    if (m.empty()) continue;
    EXPECT_EQ(std::stoul(m[1]), entries.size()) << l;
    entries.push_back({static_cast<uint16_t>(std::stoi(m[2])), m[3],
                       m[4] == "-" ? -1 : std::stoi(m[4]), std::stoi(m[5])});
  }
  return entries;
}

bool listening(uint16_t port) { return Peer::connect(port, kConnectTimeout).has_value(); }

// The port refuses connections (nothing listens there any more).
bool refuses(uint16_t port) {
  auto p = Peer::connect(port, kConnectTimeout);
  return !p && p.error().code == ErrorCode::kDisconnected;
}

// The process no longer exists (it was reaped).
bool gone(pid_t pid) { return ::kill(pid, 0) != 0 && errno == ESRCH; }

// Waits, without polling in a loop, until a process that is not our child ends.
bool wait_ended(pid_t pid, Millis timeout) {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return errno == ESRCH;
  pollfd p{fd, POLLIN, 0};
  int n;
  while ((n = ::poll(&p, 1, static_cast<int>(timeout.count()))) < 0 && errno == EINTR) {
  }
  ::close(fd);
  return n > 0;
}

// Sends raw bytes to the control socket and returns everything read back until the
// supervisor closes the connection.
std::string raw_request(const std::string& dir, const std::string& bytes) {
  std::string path = dir + "/dsc.sock";
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  EXPECT_GE(fd, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ADD_FAILURE() << "connect " << path << ": " << std::strerror(errno);
    ::close(fd);
    return {};
  }
  // The supervisor may hang up before reading all of a junk request; that is the point.
  (void)!::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  std::string reply;
  char buf[4096];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(kCommandTimeout.count())) <= 0) {
      ADD_FAILURE() << "no reply from the supervisor";
      break;
    }
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;  // EOF, or ECONNRESET after it dropped our unread junk
    reply.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return reply;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// ---- create ----------------------------------------------------------------------------

TEST(DscE2e, CreateMakesNumberedRegionsAndRefusesToOverwriteThem) {
  TempDir tmp;
  std::string dir = tmp.file("var");
  auto r =
      dsc({"create", "--dir", dir, "--count", "3", "--extent-size", "64", "--extent-count", "2"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::set<std::string> uuids;
  std::regex created("created region ([0-9a-f-]{36})");
  for (std::sregex_iterator it(r.out.begin(), r.out.end(), created), end; it != end; ++it)
    uuids.insert((*it)[1]);
  EXPECT_EQ(uuids.size(), 3u) << "each region gets its own UUID\n" << r.out;
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(fs::exists(fmt::format("{}/{}/region.json", dir, i)));
  EXPECT_FALSE(fs::exists(dir + "/3"));

  auto again = dsc({"create", "--dir", dir, "--count", "3"});
  EXPECT_EQ(again.exit_code(), 1) << again.describe();
  EXPECT_TRUE(contains(again.err, "already holds regions (0, 1, 2)")) << again.err;

  auto zero = dsc({"create", "--dir", tmp.file("other"), "--count", "0"});
  EXPECT_NE(zero.exit_code(), 0) << zero.describe();
  EXPECT_FALSE(fs::exists(tmp.file("other/0")));
}

// create --tls: a CA and one certificate per downstairs and for the upstairs, keys 0600;
// start runs every downstairs with its certificate, so only a TLS upstairs gets through.
TEST(DscE2e, CreateTlsWritesCertificatesThatStartUses) {
  TempDir tmp;
  std::string dir = tmp.file("var");
  auto r = dsc({"create", "--dir", dir, "--count", "3", "--extent-size", "64", "--extent-count",
                "2", "--tls"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_TRUE(contains(r.out, "volume.tls: {cert: " + dir + "/tls/upstairs.pem")) << r.out;
  const auto secret = fs::perms::owner_read | fs::perms::owner_write;
  for (std::string name : {"ca", "downstairs-0", "downstairs-1", "downstairs-2", "upstairs"}) {
    EXPECT_TRUE(fs::exists(dir + "/tls/" + name + ".pem")) << name;
    EXPECT_EQ(fs::status(dir + "/tls/" + name + "-key.pem").permissions(), secret) << name;
  }
  auto s = start_supervisor(dir);
  ASSERT_TRUE(s) << s.error().to_string();
  std::vector<std::string> args = {bin("crucible"), "--activate-timeout", "30"};
  for (auto port : s->ports) args.insert(args.end(), {"-t", fmt::format("127.0.0.1:{}", port)});
  const std::string certs = dir + "/tls/";
  auto plain_args = args;
  plain_args[2] = "3";
  auto plain = run_command(plain_args, kCommandTimeout);
  EXPECT_NE(plain.exit_code(), 0) << plain.describe();
  args.insert(args.end(), {"--tls-cert", certs + "upstairs.pem", "--tls-key",
                           certs + "upstairs-key.pem", "--tls-ca", certs + "ca.pem"});
  auto tls = run_command(args, kCommandTimeout);
  EXPECT_EQ(tls.exit_code(), 0) << tls.describe() << s->process->output();
}

TEST(DscE2e, StartRefusesADirectoryWithoutRegions) {
  TempDir tmp;
  auto r = dsc({"start", "--dir", tmp.path(), "--port-base", "0"});
  EXPECT_EQ(r.exit_code(), 1) << r.describe();
  EXPECT_TRUE(contains(r.err, "no regions")) << r.err;
}

// ---- supervision and control --------------------------------------------------------------

TEST(DscE2e, SupervisorKillsStartsStopsAndRestartsDownstairs) {
  TempDir tmp;
  std::string dir = tmp.file("var");
  ASSERT_NO_FATAL_FAILURE(create_regions(dir));
  auto s = start_supervisor(dir);
  ASSERT_TRUE(s) << s.error().to_string();
  Process& sup = *s->process;
  for (auto port : s->ports) EXPECT_TRUE(listening(port)) << port;
  auto st = status(dir);
  ASSERT_EQ(st.size(), 3u) << sup.output();
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(st[i].state, "running");
    EXPECT_EQ(st[i].port, s->ports[i]);
    EXPECT_EQ(st[i].pid, s->pids[i]);
    EXPECT_EQ(st[i].restarts, 0);
  }

  // kill: SIGKILL, answered once the process is gone.
  auto k = dsc({"kill", "1", "--dir", dir});
  ASSERT_EQ(k.exit_code(), 0) << k.describe();
  EXPECT_TRUE(contains(k.out, fmt::format("killed downstairs 1 (pid {})", s->pids[1]))) << k.out;
  EXPECT_TRUE(gone(s->pids[1]));
  EXPECT_TRUE(refuses(s->ports[1]));
  EXPECT_TRUE(sup.wait_for_line(fmt::format("downstairs 1: pid {} killed by SIGKILL", s->pids[1]),
                                kStopTimeout));
  st = status(dir);
  ASSERT_EQ(st.size(), 3u);
  EXPECT_EQ(st[1].state, "killed(SIGKILL)");
  EXPECT_EQ(st[1].pid, -1);
  EXPECT_EQ(st[0].state, "running");
  EXPECT_EQ(st[2].state, "running");

  // start: back on the same port.
  auto started = dsc({"start", "1", "--dir", dir});
  ASSERT_EQ(started.exit_code(), 0) << started.describe() << sup.output();
  EXPECT_TRUE(contains(started.out, fmt::format("downstairs 1: 127.0.0.1:{} pid", s->ports[1])))
      << started.out;
  EXPECT_TRUE(listening(s->ports[1]));
  st = status(dir);
  ASSERT_EQ(st.size(), 3u);
  EXPECT_EQ(st[1].state, "running");
  EXPECT_EQ(st[1].port, s->ports[1]);
  EXPECT_EQ(st[1].restarts, 1);
  EXPECT_NE(st[1].pid, s->pids[1]);

  // stop: graceful; a second stop is an error.
  auto stopped = dsc({"stop", "2", "--dir", dir});
  ASSERT_EQ(stopped.exit_code(), 0) << stopped.describe();
  EXPECT_TRUE(gone(s->pids[2]));
  EXPECT_TRUE(refuses(s->ports[2]));
  EXPECT_TRUE(sup.wait_for_line(
      fmt::format("downstairs 2: stopped (pid {} exited with code 0)", s->pids[2]), kStopTimeout));
  EXPECT_EQ(status(dir).at(2).state, "stopped");
  auto stop_again = dsc({"stop", "2", "--dir", dir});
  EXPECT_EQ(stop_again.exit_code(), 1) << stop_again.describe();
  EXPECT_TRUE(contains(stop_again.err, "downstairs 2 is not running (stopped)")) << stop_again.err;

  // restart of a stopped one starts it; of a running one, replaces the process.
  auto r2 = dsc({"restart", "2", "--dir", dir});
  ASSERT_EQ(r2.exit_code(), 0) << r2.describe();
  EXPECT_TRUE(listening(s->ports[2]));
  auto r0 = dsc({"restart", "0", "--dir", dir});
  ASSERT_EQ(r0.exit_code(), 0) << r0.describe();
  EXPECT_TRUE(contains(r0.out, fmt::format("stopped downstairs 0 (pid {})", s->pids[0]))) << r0.out;
  EXPECT_TRUE(gone(s->pids[0]));
  EXPECT_TRUE(listening(s->ports[0]));
  st = status(dir);
  ASSERT_EQ(st.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(st[i].state, "running") << i;
    EXPECT_EQ(st[i].port, s->ports[i]) << i;
    EXPECT_EQ(st[i].restarts, 1) << i;
  }

  // kill-random: exactly one of them dies.
  auto kr = dsc({"kill-random", "--dir", dir});
  ASSERT_EQ(kr.exit_code(), 0) << kr.describe();
  std::smatch m;
  ASSERT_TRUE(
      std::regex_search(kr.out, m, std::regex("killed downstairs ([0-2]) \\(pid ([0-9]+)\\)")))
      << kr.out;
  size_t victim = std::stoul(m[1]);
  EXPECT_EQ(pid_t(std::stoi(m[2])), st[victim].pid);
  EXPECT_TRUE(refuses(s->ports[victim]));
  auto after = status(dir);
  ASSERT_EQ(after.size(), 3u);
  std::vector<pid_t> alive;
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(after[i].state, i == victim ? "killed(SIGKILL)" : "running") << i;
    if (i != victim) alive.push_back(after[i].pid);
  }

  // SIGTERM to the supervisor alone: it stops its children, reaps them and removes its socket.
  ASSERT_EQ(::kill(sup.pid(), SIGTERM), 0);
  auto exit = sup.wait(kStopTimeout);
  EXPECT_TRUE(exit.exited() && exit.code == 0) << exit.describe() << "\n" << sup.output();
  for (pid_t pid : alive)
    EXPECT_TRUE(gone(pid)) << "downstairs pid " << pid << " outlived its supervisor";
  for (auto port : s->ports) EXPECT_TRUE(refuses(port)) << port;
  EXPECT_FALSE(fs::exists(dir + "/dsc.sock"));
  EXPECT_TRUE(sup.find_line("all downstairs stopped", kStopTimeout)) << sup.output();
}

TEST(DscE2e, BadRequestsGetClearErrors) {
  TempDir tmp;
  std::string dir = tmp.file("var");
  ASSERT_NO_FATAL_FAILURE(create_regions(dir));

  auto none = dsc({"status", "--dir", dir});
  EXPECT_EQ(none.exit_code(), 1) << none.describe();
  EXPECT_TRUE(contains(none.err, "no supervisor")) << none.err;

  auto s = start_supervisor(dir);
  ASSERT_TRUE(s) << s.error().to_string();

  auto bad_index = dsc({"stop", "7", "--dir", dir});
  EXPECT_EQ(bad_index.exit_code(), 1) << bad_index.describe();
  EXPECT_TRUE(contains(bad_index.err, "no downstairs 7: this supervisor runs 3 (0 to 2)"))
      << bad_index.err;

  auto negative = dsc({"kill", "-1", "--dir", dir});
  EXPECT_NE(negative.exit_code(), 0) << negative.describe();

  auto running = dsc({"start", "0", "--dir", dir});
  EXPECT_EQ(running.exit_code(), 1) << running.describe();
  EXPECT_TRUE(contains(running.err, "downstairs 0 is already running")) << running.err;

  auto misplaced = dsc({"start", "0", "--dir", dir, "--port-base", "4000"});
  EXPECT_EQ(misplaced.exit_code(), 1) << misplaced.describe();
  EXPECT_TRUE(contains(misplaced.err, "--port-base applies to starting the supervisor"))
      << misplaced.err;

  EXPECT_TRUE(contains(raw_request(dir, "frobnicate 1\n"), "error unknown command 'frobnicate'"));
  EXPECT_TRUE(contains(raw_request(dir, "stop\n"), "error stop needs a downstairs index"));
  EXPECT_TRUE(contains(raw_request(dir, "stop one\n"), "error 'one' is not a downstairs index"));
  EXPECT_TRUE(
      contains(raw_request(dir, "stop 99999999999999999999\n"), "is not a downstairs index"));
  EXPECT_TRUE(contains(raw_request(dir, "status now\n"), "error status takes no argument"));
  EXPECT_TRUE(contains(raw_request(dir, std::string("\x01\xff\n", 3)),
                       "error unknown command '?"
                       "?'"));
  EXPECT_TRUE(contains(raw_request(dir, std::string(100000, 'x')),
                       "error request line longer than 64 bytes"));

  // Junk changed nothing, and the supervisor still answers.
  auto st = status(dir);
  ASSERT_EQ(st.size(), 3u);
  for (const auto& e : st) EXPECT_EQ(e.state, "running");

  // A second supervisor on the same directory is refused and leaves the first alone.
  auto second =
      run_command({dsc_bin(), "start", "--dir", dir, "--port-base", "0"}, kCommandTimeout);
  EXPECT_EQ(second.exit_code(), 1) << second.describe();
  EXPECT_TRUE(contains(second.err, "another crucible-dsc supervises")) << second.err;
  EXPECT_EQ(status(dir).size(), 3u);
  for (auto port : s->ports) EXPECT_TRUE(listening(port));

  ASSERT_EQ(::kill(s->process->pid(), SIGINT), 0);
  auto exit = s->process->wait(kStopTimeout);
  EXPECT_TRUE(exit.exited() && exit.code == 0) << exit.describe() << "\n" << s->process->output();
  for (pid_t pid : s->pids) EXPECT_TRUE(gone(pid));
}

TEST(DscE2e, KilledSupervisorTakesItsChildrenAlongAndItsStaleSocketIsReplaced) {
  TempDir tmp;
  std::string dir = tmp.file("var");
  ASSERT_NO_FATAL_FAILURE(create_regions(dir));
  auto s = start_supervisor(dir);
  ASSERT_TRUE(s) << s.error().to_string();
  // SIGKILL to the supervisor alone: the children get SIGKILL from PR_SET_PDEATHSIG.
  ASSERT_EQ(::kill(s->process->pid(), SIGKILL), 0);
  EXPECT_EQ(s->process->wait(kStopTimeout).signal, SIGKILL);
  for (pid_t pid : s->pids)
    EXPECT_TRUE(wait_ended(pid, kStopTimeout)) << "downstairs pid " << pid << " survived";
  EXPECT_TRUE(fs::exists(dir + "/dsc.sock")) << "a SIGKILLed supervisor cannot remove its socket";

  auto stale = dsc({"status", "--dir", dir});
  EXPECT_EQ(stale.exit_code(), 1) << stale.describe();
  EXPECT_TRUE(contains(stale.err, "stale")) << stale.err;

  auto again = start_supervisor(dir);
  ASSERT_TRUE(again) << again.error().to_string();
  EXPECT_EQ(status(dir).size(), 3u);
  ASSERT_EQ(::kill(again->process->pid(), SIGTERM), 0);
  auto exit = again->process->wait(kStopTimeout);
  EXPECT_TRUE(exit.exited() && exit.code == 0) << exit.describe();
  for (pid_t pid : again->pids) EXPECT_TRUE(gone(pid));
  EXPECT_FALSE(fs::exists(dir + "/dsc.sock"));
}

TEST(DscE2e, FailedFirstStartStopsTheOthersAndExitsNonZero) {
  TempDir tmp;
  std::string dir = tmp.file("var");
  ASSERT_NO_FATAL_FAILURE(create_regions(dir));
  auto taken = Listener::listen();  // downstairs 0's port is busy
  ASSERT_TRUE(taken) << taken.error().to_string();
  auto p = Process::start({dsc_bin(), "start", "--dir", dir, "--port-base",
                           std::to_string(taken->port()), "--port-step", "1"});
  ASSERT_TRUE(p) << p.error().to_string();
  auto exit = (*p)->wait(kStartTimeout + kStopTimeout);
  ASSERT_TRUE(exit.exited()) << exit.describe() << "\n" << (*p)->output();
  EXPECT_EQ(exit.code, 1) << (*p)->output();
  ASSERT_TRUE((*p)->wait_output_closed(kStopTimeout));
  EXPECT_TRUE(contains((*p)->stderr_text(), "not every downstairs started")) << (*p)->output();
  // Downstairs 0 cannot listen; on a busy machine a neighbour's port may be taken too,
  // and whichever failure dsc sees first is the one it reports.
  EXPECT_TRUE(std::regex_search((*p)->stdout_text(),
                                std::regex("downstairs [0-9]: pid [0-9]+ exited with code 1")))
      << (*p)->output();
  std::string out = (*p)->stdout_text();
  std::regex started("downstairs [0-9]: 127\\.0\\.0\\.1:[0-9]+ pid ([0-9]+)");
  for (std::sregex_iterator it(out.begin(), out.end(), started), end; it != end; ++it)
    EXPECT_TRUE(gone(std::stoi((*it)[1]))) << (*it)[0];
  EXPECT_FALSE(fs::exists(dir + "/dsc.sock"));
}

}  // namespace
}  // namespace cru::test
