// crucible-dsc: local downstairs for demos and tests. `create` makes regions DIR/0 ..
// DIR/N-1 with crucible-downstairs; `start` (no index) runs and supervises one
// downstairs per region in the foreground; the other commands talk to that supervisor
// through its control socket DIR/dsc.sock.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/log.h"
#include "common/pki.h"
#include "common/result.h"
#include "common/service.h"
#include "common/tls_files.h"
#include "common/uuid.h"
#include "tools/dsc/control.h"
#include "tools/dsc/supervisor.h"

extern char** environ;

namespace {

using namespace cru;
using namespace cru::dsc;
namespace fs = std::filesystem;

// Plenty for a local demo; each downstairs is a process with a port and open extents.
constexpr uint32_t kMaxDownstairs = 32;
constexpr const char* kDefaultDir = "var";
// create --tls writes the CA and certificates here, inside --dir; start uses them.
constexpr const char* kTlsSubdir = "tls";
constexpr const char* kUpstairsCertName = "upstairs";

std::string tls_dir(const std::string& dir) { return fmt::format("{}/{}", dir, kTlsSubdir); }
std::string downstairs_cert_name(uint32_t i) { return fmt::format("downstairs-{}", i); }

int fail_with(const std::string& message) {
  std::fprintf(stderr, "crucible-dsc: %s\n", message.c_str());
  return 1;
}

// --ds-bin, or crucible-downstairs next to this binary.
Result<std::string> downstairs_bin(const std::string& flag) {
  std::string path = flag;
  if (path.empty()) {
    std::error_code ec;
    auto self = fs::read_symlink("/proc/self/exe", ec);
    if (ec)
      return fail(ErrorCode::kNotFound, "cannot find this binary's directory; pass --ds-bin PATH");
    path = (self.parent_path() / "crucible-downstairs").string();
  }
  if (::access(path.c_str(), X_OK) != 0)
    return fail(ErrorCode::kNotFound,
                fmt::format("crucible-downstairs: {} is not executable ({}); build it or pass "
                            "--ds-bin PATH",
                            path, std::strerror(errno)));
  return path;
}

// The region numbers present in dir: entries named by a decimal number.
std::vector<uint32_t> region_numbers(const std::string& dir) {
  std::vector<uint32_t> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    uint32_t n = 0;
    auto [end, err] = std::from_chars(name.data(), name.data() + name.size(), n);
    if (err == std::errc{} && end == name.data() + name.size()) found.push_back(n);
  }
  std::sort(found.begin(), found.end());
  return found;
}

std::string region_dir(const std::string& dir, uint32_t i) { return fmt::format("{}/{}", dir, i); }

// DIR/0 .. DIR/N-1, each holding a region.
Result<std::vector<std::string>> find_regions(const std::string& dir) {
  if (!fs::is_directory(dir))
    return fail(
        ErrorCode::kNotFound,
        fmt::format("--dir {}: no such directory (make regions with: crucible-dsc create --dir {})",
                    dir, dir));
  auto numbers = region_numbers(dir);
  if (numbers.empty())
    return fail(ErrorCode::kNotFound,
                fmt::format("--dir {}: no regions (make them with: crucible-dsc create --dir {})",
                            dir, dir));
  std::vector<std::string> regions;
  for (uint32_t i = 0; i < numbers.size(); ++i) {
    if (numbers[i] != i)
      return fail(ErrorCode::kInvalidArgument,
                  fmt::format("--dir {}: regions must be numbered 0 to {} but {} is missing", dir,
                              numbers.size() - 1, region_dir(dir, i)));
    std::string region = region_dir(dir, i);
    if (!fs::exists(region + "/region.json"))
      return fail(ErrorCode::kInvalidArgument,
                  fmt::format("{} holds no region (no region.json)", region));
    regions.push_back(region);
  }
  if (regions.size() > kMaxDownstairs)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("--dir {}: {} regions, at most {} are supported", dir, regions.size(),
                            kMaxDownstairs));
  return regions;
}

// Runs a command with our stdout and stderr; its exit code, or -1 if it did not exit.
int run_to_completion(std::vector<std::string> args) {
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  if (int rc = ::posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ); rc != 0)
    return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

struct CreateArgs {
  std::string dir = kDefaultDir, ds_bin, size;
  uint32_t count = 3;
  std::optional<uint32_t> block_size, extent_count;
  std::optional<uint64_t> extent_size;
  bool encrypted = false;
  bool sparse = false;
  bool tls = false;
};

int cmd_create(const CreateArgs& a) {
  auto bin = downstairs_bin(a.ds_bin);
  if (!bin) return fail_with(bin.error().message);
  std::error_code ec;
  fs::create_directories(a.dir, ec);
  if (ec) return fail_with(fmt::format("--dir {}: {}", a.dir, ec.message()));
  if (auto existing = region_numbers(a.dir); !existing.empty())
    return fail_with(
        fmt::format("--dir {} already holds regions ({}); remove them or pick another directory",
                    a.dir, fmt::join(existing, ", ")));
  std::vector<std::string> geometry;
  if (a.block_size)
    geometry.insert(geometry.end(), {"--block-size", std::to_string(*a.block_size)});
  if (a.extent_size)
    geometry.insert(geometry.end(), {"--extent-size", std::to_string(*a.extent_size)});
  if (a.extent_count)
    geometry.insert(geometry.end(), {"--extent-count", std::to_string(*a.extent_count)});
  if (!a.size.empty()) geometry.insert(geometry.end(), {"--size", a.size});
  if (a.encrypted) geometry.emplace_back("--encrypted");
  if (a.sparse) geometry.emplace_back("--sparse");
  for (uint32_t i = 0; i < a.count; ++i) {
    std::vector<std::string> args = {
        *bin, "create", "-u", Uuid::random().to_string(), "-d", region_dir(a.dir, i)};
    args.insert(args.end(), geometry.begin(), geometry.end());
    if (int rc = run_to_completion(args); rc != 0)
      return fail_with(fmt::format(
          "crucible-downstairs create for region {} failed (exit {}){}", i, rc,
          i == 0 ? "" : fmt::format("; regions 0 to {} were created in {}", i - 1, a.dir)));
  }
  std::printf("created %u regions in %s; run them with: crucible-dsc start --dir %s\n", a.count,
              a.dir.c_str(), a.dir.c_str());
  if (a.tls) {
    std::vector<std::string> names;
    for (uint32_t i = 0; i < a.count; ++i) names.push_back(downstairs_cert_name(i));
    names.emplace_back(kUpstairsCertName);
    if (Status s = write_local_pki(tls_dir(a.dir), names); !s)
      return fail_with("--tls: " + s.error().message);
    TlsFiles up = local_pki_files(tls_dir(a.dir), kUpstairsCertName);
    std::printf(
        "wrote a throw-away CA and certificates to %s (start uses them); for the upstairs:\n"
        "  volume.tls: {cert: %s, key: %s, ca: %s}\n"
        "  crucible --tls-cert %s --tls-key %s --tls-ca %s\n",
        tls_dir(a.dir).c_str(), up.cert.c_str(), up.key.c_str(), up.ca.c_str(), up.cert.c_str(),
        up.key.c_str(), up.ca.c_str());
  }
  return 0;
}

// --tls-* (the same files for every downstairs), else the certificates create --tls wrote,
// else none.
Result<std::vector<TlsFiles>> downstairs_tls(const std::string& dir, size_t count,
                                             const std::optional<TlsFiles>& flags) {
  std::vector<TlsFiles> out;
  if (flags) {
    out.assign(count, *flags);
  } else if (fs::exists(tls_dir(dir) + "/ca.pem")) {
    for (uint32_t i = 0; i < count; ++i) {
      out.push_back(local_pki_files(tls_dir(dir), downstairs_cert_name(i)));
      if (!fs::exists(out.back().cert))
        return fail(ErrorCode::kNotFound,
                    fmt::format("{} has no certificate for downstairs {} ({}); pass --tls-cert, "
                                "--tls-key and --tls-ca",
                                tls_dir(dir), i, out.back().cert));
    }
  }
  return out;
}

struct StartArgs {
  std::string dir = kDefaultDir, ds_bin, address = "127.0.0.1";
  std::string tls_cert, tls_key, tls_ca;
  uint32_t port_base = 3810, port_step = 10;
  uint32_t metrics_port_base = 0;
};

int cmd_supervise(const StartArgs& a) {
  auto bin = downstairs_bin(a.ds_bin);
  if (!bin) return fail_with(bin.error().message);
  auto regions = find_regions(a.dir);
  if (!regions) return fail_with(regions.error().message);
  if (a.port_base != 0) {
    uint64_t last = a.port_base + uint64_t{a.port_step} * (regions->size() - 1);
    if (a.port_step == 0 && regions->size() > 1)
      return fail_with("--port-step 0: the downstairs need distinct ports (use 1 or more)");
    if (last > UINT16_MAX)
      return fail_with(
          fmt::format("--port-base {} --port-step {}: downstairs {} would get port {}, above 65535",
                      a.port_base, a.port_step, regions->size() - 1, last));
  }
  if (a.metrics_port_base != 0) {
    uint64_t last = a.metrics_port_base + uint64_t{a.port_step} * (regions->size() - 1);
    if (last > UINT16_MAX)
      return fail_with(fmt::format(
          "--metrics-port-base {} --port-step {}: downstairs {} would get port {}, above 65535",
          a.metrics_port_base, a.port_step, regions->size() - 1, last));
  }
  auto flags = tls_files_from_flags(a.tls_cert, a.tls_key, a.tls_ca);
  if (!flags) return fail_with(flags.error().message);
  auto tls = downstairs_tls(a.dir, regions->size(), *flags);
  if (!tls) return fail_with(tls.error().message);
  SupervisorOptions o;
  o.dir = a.dir;
  o.tls = std::move(*tls);
  o.regions = std::move(*regions);
  o.downstairs_bin = std::move(*bin);
  o.address = a.address;
  o.port_base = static_cast<uint16_t>(a.port_base);
  o.port_step = static_cast<uint16_t>(std::min<uint32_t>(a.port_step, UINT16_MAX));
  o.metrics_port_base = static_cast<uint16_t>(a.metrics_port_base);
  return run_supervisor(o);
}

int cmd_control(const std::string& dir, const Request& r) {
  auto reply = call(dir, r, kCallTimeout);
  if (!reply) return fail_with(reply.error().message);
  std::fputs(reply->c_str(), stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  cru::log::init("dsc");
  CLI::App app{"crucible-dsc: create and supervise local downstairs (demos and tests)"};
  app.set_version_flag("--version", cru::version_line("crucible-dsc"));
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));

  CreateArgs ca;
  auto* create = app.add_subcommand(
      "create", "create regions DIR/0 .. DIR/N-1 (refuses a DIR that holds regions)");
  create->add_option("--dir", ca.dir, "directory for the regions")->capture_default_str();
  create->add_option("--count", ca.count, "number of regions")
      ->check(CLI::Range(uint32_t{1}, kMaxDownstairs))
      ->capture_default_str();
  create->add_option("--block-size", ca.block_size,
                     "bytes per block (crucible-downstairs create's default if absent)");
  create->add_option("--extent-size", ca.extent_size, "blocks per extent");
  create->add_option("--extent-count", ca.extent_count, "extents per region");
  create->add_option("--size", ca.size, "region size, e.g. 1G (picks the extent count)");
  create->add_flag("--encrypted", ca.encrypted, "the upstairs encrypts every block");
  create->add_flag("--sparse", ca.sparse,
                   "allocate disk space on first write (crucible-downstairs create --sparse)");
  create->add_flag("--tls", ca.tls,
                   "also write a throw-away CA and certificates to DIR/tls (start then serves "
                   "mutual TLS with them)");
  create->add_option("--ds-bin", ca.ds_bin,
                     "crucible-downstairs binary (default: next to crucible-dsc)");

  StartArgs sa;
  std::optional<uint32_t> start_index;
  auto* start = app.add_subcommand(
      "start",
      "without INDEX: run and supervise every region of DIR in the foreground (Ctrl-C stops them "
      "all); "
      "with INDEX: ask the running supervisor to start that downstairs again on its port");
  start->add_option("index", start_index, "downstairs to start (talks to the running supervisor)");
  start->add_option("--dir", sa.dir, "directory holding the regions and the control socket")
      ->capture_default_str();
  auto* port_base = start
                        ->add_option("--port-base", sa.port_base,
                                     "port of downstairs 0; 0: free ports, kept across restarts")
                        ->check(CLI::Range(0, 65535))
                        ->capture_default_str();
  auto* port_step =
      start->add_option("--port-step", sa.port_step, "port distance between downstairs")
          ->check(CLI::Range(0, 65535))
          ->capture_default_str();
  auto* metrics_port_base =
      start
          ->add_option("--metrics-port-base", sa.metrics_port_base,
                       "Prometheus metrics of downstairs 0 on this port (the others at "
                       "--port-step from it); 0: off")
          ->check(CLI::Range(0, 65535))
          ->capture_default_str();
  auto* address = start->add_option("--address", sa.address, "address the downstairs listen on")
                      ->capture_default_str();
  auto* start_ds_bin = start->add_option(
      "--ds-bin", sa.ds_bin, "crucible-downstairs binary (default: next to crucible-dsc)");
  auto* tls_cert = start->add_option(
      "--tls-cert", sa.tls_cert,
      "mutual TLS for every downstairs: certificate (PEM; with --tls-key, --tls-ca; default: "
      "DIR/tls from create --tls, if present)");
  auto* tls_key = start->add_option("--tls-key", sa.tls_key, "mutual TLS: private key (PEM)");
  auto* tls_ca = start->add_option("--tls-ca", sa.tls_ca, "mutual TLS: the CA (PEM)");

  // stop, restart, kill INDEX; kill-random and status: requests to the supervisor.
  struct ControlCommand {
    Command command;
    const char* help;
    CLI::App* app = nullptr;
    std::string dir = kDefaultDir;
    uint32_t index = 0;
  };
  std::vector<ControlCommand> controls = {
      {Command::kStop, "stop a downstairs gracefully (SIGTERM; SIGKILL after 10 s)"},
      {Command::kRestart, "stop a downstairs if it runs, then start it on its port"},
      {Command::kKill, "kill a downstairs with SIGKILL"},
      {Command::kKillRandom, "kill a random running downstairs with SIGKILL"},
      {Command::kStatus, "show each downstairs: index, address, state, pid, restarts"},
  };
  for (auto& c : controls) {
    c.app = app.add_subcommand(std::string(command_name(c.command)), c.help);
    if (command_takes_index(c.command))
      c.app->add_option("index", c.index, "downstairs index")->required();
    c.app->add_option("--dir", c.dir, "directory of the running supervisor")->capture_default_str();
  }

  CLI11_PARSE(app, argc, argv);
  cru::log::set_level(log_level);
  if (create->parsed()) return cmd_create(ca);
  if (start->parsed()) {
    if (!start_index) return cmd_supervise(sa);
    for (auto* o : {port_base, port_step, metrics_port_base, address, start_ds_bin, tls_cert,
                    tls_key, tls_ca})
      if (o->count() > 0)
        return fail_with(fmt::format("{} applies to starting the supervisor, not to 'start {}'",
                                     o->get_name(), *start_index));
    return cmd_control(sa.dir, Request{Command::kStart, start_index});
  }
  for (const auto& c : controls) {
    if (!c.app->parsed()) continue;
    Request r{c.command, std::nullopt};
    if (command_takes_index(c.command)) r.index = c.index;
    return cmd_control(c.dir, r);
  }
  return 2;
}
