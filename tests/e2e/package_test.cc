// The Debian package (issue 13) as an operator gets it: `make test` builds it (make deb,
// lintian clean of errors) and passes its path in CRUCIBLE_DEB; these tests unpack it into
// a scratch root (dpkg -x) and check what is installed there: the programs run from their
// installed paths and report the package's version, every man page matches its program's
// --help, the systemd units pass `systemd-analyze verify`, and a three-downstairs volume
// runs from the installed binaries. Service.* checks the readiness protocol the units'
// Type=notify relies on, with the build's binaries.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "common/service.h"
#include "support/cluster.h"
#include "support/process.h"

namespace cru::test {
namespace {

namespace fs = std::filesystem;

constexpr Millis kCommandTimeout{60000};
const std::vector<std::string> kPrograms = {"crucible-downstairs", "crucible-fuse", "crucible",
                                            "crucible-dsc"};

CommandResult must_run(std::vector<std::string> argv, ProcessOptions options = {}) {
  auto r = run_command(std::move(argv), kCommandTimeout, std::move(options));
  EXPECT_EQ(r.exit_code(), 0) << r.describe();
  return r;
}

// Sets an environment variable for the scope (the fixtures' children inherit it).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    const char* old = std::getenv(name);
    if (old != nullptr) old_ = old;
    EXPECT_EQ(::setenv(name, value.c_str(), 1), 0);
  }
  ~ScopedEnv() { old_ ? ::setenv(name_, old_->c_str(), 1) : ::unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// The package unpacked into a temporary root, shared by the tests of this file.
class Package : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* deb = std::getenv("CRUCIBLE_DEB");
    if (deb == nullptr || *deb == '\0') return;
    root_ = new TempDir();
    deb_ = deb;
    must_run({tool("dpkg"), "-x", deb_, root_->path()});
  }
  static void TearDownTestSuite() {
    delete root_;
    root_ = nullptr;
  }
  void SetUp() override {
    if (root_ == nullptr)
      GTEST_SKIP() << "CRUCIBLE_DEB is not set: `make test` builds the package (make deb) and "
                      "sets it";
  }
  static std::string path(const std::string& rel) { return root_->path() + rel; }
  static std::string installed(const std::string& program) { return path("/usr/bin/" + program); }
  // The subcommands a program's --help lists.
  static std::vector<std::string> subcommands(const std::string& program) {
    std::string help = must_run({installed(program), "--help"}).out;
    std::vector<std::string> subs;
    auto at = help.find("\nSubcommands:\n");
    if (at == std::string::npos) return subs;
    std::regex line(R"(\n  ([a-z][a-z-]*) )");
    for (std::sregex_iterator it(help.begin() + static_cast<long>(at) + 1, help.end(), line), end;
         it != end; ++it)
      subs.push_back((*it)[1]);
    return subs;
  }

  static inline TempDir* root_ = nullptr;
  static inline std::string deb_;
};

TEST_F(Package, InstalledProgramsRunAndReportThePackagesVersion) {
  std::string version = must_run({tool("dpkg-deb"), "-f", deb_, "Version"}).out;
  while (!version.empty() && std::isspace(static_cast<unsigned char>(version.back())))
    version.pop_back();
  // The package's version is the programs' version (debian/changelog and kVersion agree).
  EXPECT_EQ(version, std::string(kVersion));
  for (const auto& p : kPrograms) {
    ASSERT_TRUE(fs::exists(installed(p))) << p << " is not in the package";
    EXPECT_EQ(must_run({installed(p), "--version"}).out, p + " " + version + "\n");
    EXPECT_NE(must_run({installed(p), "--help"}).out.find("Usage: "), std::string::npos);
  }
}

TEST_F(Package, EveryProgramAndSubcommandHasAManPageMatchingItsHelp) {
  for (const auto& p : kPrograms) {
    std::vector<std::string> pages = {p};
    for (const auto& s : subcommands(p)) pages.push_back(p + " " + s);
    for (const auto& page : pages) {
      std::string name = std::regex_replace(page, std::regex(" "), "-");
      std::string file = path("/usr/share/man/man1/" + name + ".1.gz");
      ASSERT_TRUE(fs::exists(file)) << "no man page for '" << page << "'";
      // The page as text: roff's escaped hyphens and font changes removed.
      std::string text = must_run({tool("zcat"), file}).out;
      text = std::regex_replace(text, std::regex(R"(\\f[BIRP])"), "");
      text = std::regex_replace(text, std::regex(R"(\\-)"), "-");
      std::vector<std::string> argv = {installed(p)};
      if (page != p) argv.push_back(page.substr(p.size() + 1));
      argv.push_back("--help");
      std::string help = must_run(argv).out;
      // Every option and every description line of --help is in the page.
      std::regex option(R"((^|[ ,])(--?[A-Za-z][A-Za-z0-9-]*))");
      int options = 0;
      for (std::sregex_iterator it(help.begin(), help.end(), option), end; it != end; ++it) {
        ++options;
        EXPECT_NE(text.find((*it)[2]), std::string::npos)
            << name << ".1 lacks " << (*it)[2] << " of `" << page << " --help`";
      }
      EXPECT_GT(options, 0) << page;
      EXPECT_NE(text.find(help.substr(0, help.find('\n'))), std::string::npos)
          << name << ".1 lacks the first line of --help";
    }
  }
}

TEST_F(Package, SystemdUnitsPassVerify) {
  const std::string units = path("/usr/lib/systemd/system");
  ASSERT_TRUE(fs::exists(units + "/crucible-downstairs@.service"));
  ASSERT_TRUE(fs::exists(units + "/crucible-fuse@.service"));
  // Verifying inside the scratch root checks the installed ExecStart paths and man pages;
  // the units they depend on (network-online.target, ...) come from this system.
  must_run({tool("cp"), "-an", "/usr/lib/systemd/system/.", units + "/"});
  auto r =
      run_command({tool("systemd-analyze"), "verify", "--root=" + root_->path(),
                   "crucible-downstairs@r0.service", "crucible-fuse@example.service"},
                  kCommandTimeout, {.env = {"MANPATH=" + path("/usr/share/man")}, .cwd = units});
  EXPECT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(r.out + r.err, "") << "systemd-analyze verify complained:\n" << r.describe();
}

TEST_F(Package, RunsAVolumeFromTheInstalledFiles) {
  EXPECT_TRUE(fs::exists(path("/etc/crucible/example.yaml")));
  EXPECT_TRUE(fs::exists(path("/etc/crucible/downstairs/example.conf")));
  EXPECT_TRUE(fs::exists(path("/usr/lib/sysusers.d/crucible.conf")));
  // The cluster fixture runs the binaries found in CRUCIBLE_BIN.
  ScopedEnv env("CRUCIBLE_BIN", path("/usr/bin"));

  ClusterOptions options;
  options.extent_count = 4;
  auto c = Cluster::start(options);
  ASSERT_TRUE(c) << c.error().message;
  auto m = (*c)->mount();
  ASSERT_TRUE(m) << m.error().message;
  const std::string disk = (*m)->disk_path();
  must_run({tool("dd"), "if=/dev/urandom", "of=" + (*c)->dir() + "/data", "bs=1M", "count=4",
            "status=none"});
  must_run({tool("dd"), "if=" + (*c)->dir() + "/data", "of=" + disk, "bs=1M", "oflag=direct",
            "conv=notrunc,fsync", "status=none"});
  must_run({tool("cmp"), "-n", "4194304", (*c)->dir() + "/data", disk});
  auto exit = (*m)->unmount();
  ASSERT_TRUE(exit) << exit.error().message;
  EXPECT_TRUE(exit->exited() && exit->code == 0) << exit->describe();
}

// What systemd's NOTIFY_SOCKET end sees: datagrams on a UNIX socket.
class NotifySocket {
 public:
  explicit NotifySocket(const std::string& path) : path_(path) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    EXPECT_LT(path.size(), sizeof(addr.sun_path));
    path.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
        << std::strerror(errno);
  }
  ~NotifySocket() { ::close(fd_); }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;
  // The next message, or "" if none arrives within the timeout.
  std::string next(Millis timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return "";
    char buf[4096];
    ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  }

 private:
  std::string path_;
  int fd_ = -1;
};

TEST(Service, ReadinessAndStopReachTheServiceManager) {
  TempDir dir;
  NotifySocket manager(dir.file("notify"));
  ScopedEnv env("NOTIFY_SOCKET", dir.file("notify"));
  ClusterOptions options;
  options.extent_count = 4;
  auto c = Cluster::start(options);
  ASSERT_TRUE(c) << c.error().message;
  // Each downstairs is ready once it listens.
  for (int i = 0; i < kDownstairsCount; ++i) {
    std::string m = manager.next(kCommandTimeout);
    EXPECT_NE(m.find("READY=1\n"), std::string::npos) << m;
    EXPECT_NE(m.find("STATUS=serving "), std::string::npos) << m;
  }
  auto m = (*c)->mount();
  ASSERT_TRUE(m) << m.error().message;
  // The volume is ready once disk.img is mounted (so units ordered after it can use it).
  std::string ready = manager.next(kCommandTimeout);
  EXPECT_NE(ready.find("READY=1\n"), std::string::npos) << ready;
  EXPECT_NE(ready.find("disk.img mounted"), std::string::npos) << ready;
  EXPECT_TRUE((*m)->mounted());
  auto exit = (*m)->unmount();
  ASSERT_TRUE(exit) << exit.error().message;
  EXPECT_TRUE(exit->exited() && exit->code == 0) << exit->describe();
  std::string stopping = manager.next(kCommandTimeout);
  EXPECT_NE(stopping.find("STOPPING=1\n"), std::string::npos) << stopping;
}

// Restart=on-failure after a crash: the dead daemon's FUSE mount is still there (every
// access fails with ENOTCONN); the restarted crucible-fuse detaches it and mounts again.
TEST(Service, ARestartMountsOverTheMountACrashLeft) {
  ClusterOptions options;
  options.extent_count = 4;
  auto c = Cluster::start(options);
  ASSERT_TRUE(c) << c.error().message;
  const std::string mnt = (*c)->dir() + "/service-mnt";
  ASSERT_TRUE(fs::create_directory(mnt));
  const std::string config = (*c)->write_file("service.yaml", (*c)->config_yaml(mnt));
  // Whatever happens below, nothing stays mounted here.
  struct Detach {
    std::string dir;
    ~Detach() { run_command({tool("umount"), "-l", dir}, kCommandTimeout); }
  } detach{mnt};
  auto start = [&] {
    auto p = Process::start({bin("crucible-fuse"), "-c", config, mnt, "-f"});
    EXPECT_TRUE(p) << p.error().message;
    if (p) {
      auto ready = (*p)->wait_for_line("is ready", kCommandTimeout);
      EXPECT_TRUE(ready) << ready.error().message;
    }
    return p ? std::move(*p) : nullptr;
  };
  auto first = start();
  ASSERT_NE(first, nullptr);
  first->kill(SIGKILL);
  ASSERT_TRUE(first->wait(kCommandTimeout).signal == SIGKILL);
  struct stat st {};
  ASSERT_NE(::stat(mnt.c_str(), &st), 0);
  ASSERT_EQ(errno, ENOTCONN) << "the crash should leave a dead FUSE mount";

  auto second = start();
  ASSERT_NE(second, nullptr);
  auto line = second->find_line("nobody serves", kCommandTimeout);
  EXPECT_TRUE(line) << line.error().message;
  std::error_code ec;
  EXPECT_TRUE(fs::exists(mnt + "/disk.img", ec)) << ec.message();
  second->kill(SIGTERM);
  auto exit = second->wait(kCommandTimeout);
  EXPECT_TRUE(exit.exited() && exit.code == 0) << exit.describe() << second->output();
}

}  // namespace
}  // namespace cru::test
