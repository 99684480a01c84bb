// The helpers the end-to-end tests stand on (tests/support/process.h): child processes,
// output capture, timeouts, cleanup, temp dirs and the protocol peer.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "support/process.h"

namespace cru::test {
namespace {

constexpr Millis kLong{10000};

std::unique_ptr<Process> shell(const std::string& script) {
  auto p = Process::start({"/bin/sh", "-c", script});
  EXPECT_TRUE(p) << p.error().to_string();
  return p ? std::move(*p) : nullptr;
}

TEST(SupportProcess, RunCommandCapturesBothStreamsAndTheExitCode) {
  auto r = run_command({"/bin/sh", "-c", "echo out; echo err >&2; exit 3"}, kLong);
  EXPECT_EQ(r.exit_code(), 3) << r.describe();
  EXPECT_EQ(r.out, "out\n");
  EXPECT_EQ(r.err, "err\n");
}

TEST(SupportProcess, RunCommandKillsACommandThatOutlivesItsTimeout) {
  auto r = run_command({"/bin/sh", "-c", "exec sleep 30"}, Millis(100));
  EXPECT_TRUE(r.status.timed_out);
  EXPECT_EQ(r.exit_code(), -1);
}

TEST(SupportProcess, RunCommandReportsAMissingProgram) {
  auto r = run_command({"/nonexistent/program"}, kLong);
  EXPECT_EQ(r.exit_code(), -1);
  EXPECT_NE(r.err.find("/nonexistent/program"), std::string::npos) << r.err;
}

TEST(SupportProcess, WaitForLineFindsLinesInOrder) {
  auto p = shell("echo starting; echo 'listening on 127.0.0.1:4567'; echo second; exec sleep 30");
  auto first = p->wait_for_line("starting", kLong);
  ASSERT_TRUE(first) << first.error().to_string();
  // (The regex overload is exercised by the end-to-end tests: constructing a std::regex
  // trips a false -Wmaybe-uninitialized in GCC 12's <regex> in sanitizer builds.)
  auto line = p->wait_for_line("listening on", kLong);
  ASSERT_TRUE(line) << line.error().to_string();
  EXPECT_EQ(*line, "listening on 127.0.0.1:4567");
  EXPECT_TRUE(p->wait_for_line("second", kLong));
  EXPECT_FALSE(p->wait_for_line("starting", Millis(50)))
      << "lines before the last match are consumed";
  EXPECT_TRUE(p->find_line("starting", Millis(50))) << "find_line looks at every line";
  p->kill(SIGTERM);
  auto status = p->wait(kLong);
  EXPECT_EQ(status.signal, SIGTERM) << status.describe();
}

TEST(SupportProcess, WaitForLineSeesStandardError) {
  auto p = shell("echo 'a log line' >&2; exec sleep 30");
  auto line = p->wait_for_line("log line", kLong);
  ASSERT_TRUE(line) << line.error().to_string();
  EXPECT_EQ(*line, "a log line");
  EXPECT_EQ(p->stderr_text(), "a log line\n");
  EXPECT_EQ(p->stdout_text(), "");
}

TEST(SupportProcess, WaitForLineFailsWithTheOutputWhenTheOutputEnds) {
  auto p = shell("echo hello; echo oops >&2");
  auto line = p->wait_for_line("never printed", kLong);
  ASSERT_FALSE(line);
  EXPECT_EQ(line.error().code, ErrorCode::kDisconnected);
  EXPECT_NE(line.error().message.find("hello"), std::string::npos) << line.error().message;
  EXPECT_NE(line.error().message.find("oops"), std::string::npos) << line.error().message;
  EXPECT_EQ(p->wait(kLong).code, 0);
}

TEST(SupportProcess, WaitForLineTimesOut) {
  auto p = shell("echo something; exec sleep 30");
  auto line = p->wait_for_line("never printed", Millis(100));
  ASSERT_FALSE(line);
  EXPECT_EQ(line.error().code, ErrorCode::kTimeout);
  EXPECT_NE(line.error().message.find("something"), std::string::npos);
}

TEST(SupportProcess, WaitTimesOutWhileTheChildRuns) {
  auto p = shell("exec sleep 30");
  EXPECT_TRUE(p->wait(Millis(50)).timed_out);
  p->kill(SIGKILL);
  EXPECT_EQ(p->wait(kLong).signal, SIGKILL);
  EXPECT_EQ(p->wait(Millis(0)).signal, SIGKILL) << "the status is kept";
}

TEST(SupportProcess, DestructorKillsTheWholeProcessGroup) {
  auto p = shell("sleep 30 & echo pid $!; wait");
  auto line = p->wait_for_line("pid ", kLong);
  ASSERT_TRUE(line) << line.error().to_string();
  pid_t grandchild = std::stoi(line->substr(4));
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, grandchild, 0));
  ASSERT_GE(pidfd, 0);
  p.reset();
  pollfd pfd{pidfd, POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 10000), 1) << "the background child was killed too";
  ::close(pidfd);
}

TEST(SupportProcess, ChildrenGetTheExtraEnvironmentAndWorkingDirectory) {
  TempDir tmp;
  auto p = Process::start({"/bin/sh", "-c", "echo \"$CRU_PROBE $(pwd)\""},
                          ProcessOptions{{"CRU_PROBE=42"}, tmp.path()});
  ASSERT_TRUE(p);
  auto line = (*p)->wait_for_line("42", kLong);
  ASSERT_TRUE(line) << line.error().to_string();
  EXPECT_EQ(*line, "42 " + tmp.path());
}

TEST(SupportProcess, TempDirIsRemovedWithEverythingInIt) {
  std::string path;
  {
    TempDir tmp;
    path = tmp.path();
    std::filesystem::create_directories(tmp.file("a/b"));
    std::ofstream(tmp.file("a/b/c")) << "x";
    EXPECT_TRUE(std::filesystem::exists(tmp.file("a/b/c")));
  }
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(SupportProcess, BinResolvesUnderCrucibleBin) {
  const char* old = std::getenv("CRUCIBLE_BIN");
  std::string saved = old ? old : "";
  ::setenv("CRUCIBLE_BIN", "/opt/cru/bin", 1);
  EXPECT_EQ(bin("crucible-downstairs"), "/opt/cru/bin/crucible-downstairs");
  ::unsetenv("CRUCIBLE_BIN");
  EXPECT_TRUE(bin("crucible-downstairs").ends_with("/bin/crucible-downstairs"));
  if (old) ::setenv("CRUCIBLE_BIN", saved.c_str(), 1);
}

TEST(SupportPeer, ReceiveTimesOutThenSeesTheHangUp) {
  auto listener = Listener::listen();
  ASSERT_TRUE(listener);
  auto client = Peer::connect(listener->port(), kLong);
  ASSERT_TRUE(client) << client.error().to_string();
  auto server = listener->accept(kLong);
  ASSERT_TRUE(server);
  auto nothing = client->recv(Millis(50));
  ASSERT_FALSE(nothing);
  EXPECT_EQ(nothing.error().code, ErrorCode::kTimeout);
  ASSERT_TRUE(server->send(proto::Ruok{}));
  EXPECT_TRUE(client->recv_as<proto::Ruok>(kLong));
  ASSERT_TRUE(server->send(proto::Imok{}));
  auto wrong = client->recv_as<proto::Ruok>(kLong);
  ASSERT_FALSE(wrong);
  EXPECT_EQ(wrong.error().code, ErrorCode::kProtocol);
  server->close();
  EXPECT_TRUE(client->wait_closed(kLong));
}

TEST(SupportPeer, ConnectToAClosedPortFails) {
  uint16_t port = free_port();
  auto p = Peer::connect(port, kLong);
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error().code, ErrorCode::kDisconnected);
}

}  // namespace
}  // namespace cru::test
