#include "support/cluster.h"

#include <fmt/format.h>
#include <signal.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "common/assert.h"
#include "common/pki.h"
#include "common/uuid.h"

namespace cru::test {

namespace fs = std::filesystem;

namespace {

// Teardown waits less than a test would: the state may be broken, and it escalates to
// SIGKILL and `umount -l` rather than hang.
constexpr Millis kTeardownWait{20000};
// Status polls: often enough that a waiting test reacts quickly, rare enough to be cheap.
constexpr Millis kStatusPollInterval{100};

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return s;
}

Error command_error(const std::string& what, const CommandResult& r) {
  return Error{ErrorCode::kIo, fmt::format("{} failed: {}", what, r.describe())};
}

// The mount points in /proc/self/mountinfo (field 5), octal escapes decoded.
std::vector<std::string> mount_points() {
  std::vector<std::string> out;
  std::ifstream in("/proc/self/mountinfo");
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string id, parent, devno, root, point;
    if (!(fields >> id >> parent >> devno >> root >> point)) continue;
    std::string decoded;
    for (size_t i = 0; i < point.size(); ++i) {
      if (point[i] == '\\' && i + 3 < point.size()) {
        decoded += static_cast<char>(std::stoi(point.substr(i + 1, 3), nullptr, 8));
        i += 3;
      } else {
        decoded += point[i];
      }
    }
    out.push_back(decoded);
  }
  return out;
}

std::string canonical(const std::string& path) {
  std::error_code ec;
  auto p = fs::weakly_canonical(path, ec);
  return ec ? path : p.string();
}

// A random 32-byte key, base64 (what volume.key takes).
std::string random_key() {
  unsigned char key[32];
  randombytes_buf(key, sizeof key);
  char b64[64];
  sodium_bin2base64(b64, sizeof b64, key, sizeof key, sodium_base64_VARIANT_ORIGINAL);
  return b64;
}

}  // namespace

std::string tool(const std::string& name) {
  std::string path = std::getenv("PATH") ? std::getenv("PATH") : "";
  path += ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  std::istringstream dirs(path);
  for (std::string d; std::getline(dirs, d, ':');) {
    if (d.empty()) continue;
    std::string candidate = d + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return name;  // spawning it fails and says so
}

bool is_mounted(const std::string& path) {
  const std::string want = canonical(path);
  auto points = mount_points();
  return std::find(points.begin(), points.end(), want) != points.end();
}

// ---- Mount ---------------------------------------------------------------------------------

bool Mount::mounted() const { return is_mounted(mountpoint_); }

Result<nlohmann::json> Mount::status() const {
  auto r = cluster_.run({bin("crucible-fuse"), "status", "--json", "-c", config_});
  if (r.exit_code() != 0) return tl::unexpected(command_error("crucible-fuse status", r));
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  if (j.is_discarded())
    return fail(ErrorCode::kProtocol, "crucible-fuse status --json printed no JSON: " + r.out);
  return j;
}

Result<nlohmann::json> Mount::wait_status(const std::function<bool(const nlohmann::json&)>& done,
                                          Millis timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string last;
  for (;;) {
    auto s = status();
    if (s && done(*s)) return s;
    last = s ? s->dump() : s.error().to_string();
    if (std::chrono::steady_clock::now() >= deadline)
      return fail(ErrorCode::kTimeout,
                  fmt::format("the status did not reach the expected state within {} ms; last: {}",
                              timeout.count(), last));
    // No event announces a state change to an outside observer: poll the status.
    std::this_thread::sleep_for(kStatusPollInterval);
  }
}

Result<ExitStatus> Mount::unmount() {
  if (!process_ || exited_) return fail(ErrorCode::kInvalidArgument, mountpoint_ + ": not running");
  process_->kill(SIGTERM);
  ExitStatus st = process_->wait(cluster_.options().stop_timeout);
  if (st.timed_out)
    return fail(
        ErrorCode::kTimeout,
        fmt::format("crucible-fuse on {} still running {} ms after SIGTERM:\n{}", mountpoint_,
                    cluster_.options().stop_timeout.count(), process_->output()));
  exited_ = true;
  return st;
}

void Mount::kill() {
  if (process_ && !exited_) {
    process_->kill(SIGKILL);
    process_->wait(kTeardownWait);
    exited_ = true;
  }
  // A killed FUSE daemon leaves a dead mount ("Transport endpoint is not connected").
  if (mounted()) static_cast<void>(cluster_.run({tool("umount"), "-l", mountpoint_}));
}

void Mount::teardown() {
  if (process_ && !exited_) {
    process_->kill(SIGTERM);
    if (process_->wait(kTeardownWait).timed_out) {
      process_->kill(SIGKILL);
      process_->wait(kTeardownWait);
    }
    exited_ = true;
  }
  if (mounted()) static_cast<void>(cluster_.run({tool("umount"), "-l", mountpoint_}));
}

// ---- Cluster -------------------------------------------------------------------------------

Cluster::Cluster(ClusterOptions options) : options_(std::move(options)) {
  if (options_.encrypted) key_ = random_key();
}

Result<std::unique_ptr<Cluster>> Cluster::start(ClusterOptions options) {
  CRU_ASSERT(sodium_init() >= 0);
  std::unique_ptr<Cluster> c(new Cluster(std::move(options)));
  if (!c->options_.existing_regions) CRU_TRY(c->create_regions());
  for (int i = 0; i < kDownstairsCount; ++i) CRU_TRY(c->start_downstairs(i));
  return c;
}

Cluster::~Cluster() { teardown(); }

uint64_t Cluster::size_bytes() const {
  return uint64_t{options_.block_size} * options_.extent_size_blocks * options_.extent_count;
}

std::string Cluster::region_dir(int i) const {
  if (options_.regions_dir.empty()) return dir_.file(std::to_string(i));
  return options_.regions_dir + "/" + std::to_string(i);
}

DownstairsPlacement Cluster::placement(int i) const {
  return options_.placement ? options_.placement(i) : DownstairsPlacement{};
}

std::string Cluster::target(int i) const {
  DownstairsPlacement p = placement(i);
  return p.target.empty() ? fmt::format("{}:{}", p.address, ports_.at(i)) : p.target;
}

CommandResult Cluster::run(std::vector<std::string> argv) const {
  return run_command(std::move(argv), options_.command_timeout);
}

TlsFiles Cluster::tls_files(const std::string& name) const {
  return local_pki_files(dir_.file("tls"), name);
}

std::vector<std::string> Cluster::upstairs_tls_args() const {
  if (!options_.tls) return {};
  return tls_flags(tls_files("upstairs"));
}

Status Cluster::create_regions() {
  if (options_.tls) {
    std::vector<std::string> names = {"upstairs"};
    for (int i = 0; i < kDownstairsCount; ++i) names.push_back(fmt::format("downstairs-{}", i));
    CRU_TRY(write_local_pki(dir_.file("tls"), names));
  }
  for (int i = 0; i < kDownstairsCount; ++i) {
    std::vector<std::string> args = {bin("crucible-downstairs"),
                                     "create",
                                     "-u",
                                     Uuid::random().to_string(),
                                     "-d",
                                     region_dir(i),
                                     "--block-size",
                                     std::to_string(options_.block_size),
                                     "--extent-size",
                                     std::to_string(options_.extent_size_blocks),
                                     "--extent-count",
                                     std::to_string(options_.extent_count)};
    if (options_.encrypted) args.push_back("--encrypted");
    auto r = run(args);
    if (r.exit_code() != 0)
      return tl::unexpected(command_error(fmt::format("creating region {}", i), r));
  }
  return {};
}

Status Cluster::start_downstairs(int i) {
  auto& slot = downstairs_.at(i);
  if (slot && downstairs_running(i))
    return fail(ErrorCode::kInvalidArgument, fmt::format("downstairs {} is already running", i));
  const DownstairsPlacement where = placement(i);
  std::vector<std::string> args = where.exec_prefix;
  args.insert(args.end(),
              {bin("crucible-downstairs"), "run", "-d", region_dir(i), "-a", where.address, "-p",
               std::to_string(ports_[i] ? ports_[i] : where.port)});
  args.insert(args.end(), options_.downstairs_args.begin(), options_.downstairs_args.end());
  if (options_.tls) {
    auto flags = tls_flags(tls_files(fmt::format("downstairs-{}", i)));
    args.insert(args.end(), flags.begin(), flags.end());
  }
  auto p = Process::start(args);
  if (!p) return tl::unexpected(p.error());
  auto line = (*p)->wait_for_line("listening on " + where.address + ":", options_.start_timeout);
  if (!line) return fail(ErrorCode::kIo, fmt::format("downstairs {}: {}", i, line.error().message));
  std::smatch m;
  std::regex_search(*line, m, std::regex(":([0-9]+)\\s*$"));
  const auto port = static_cast<uint16_t>(std::stoi(m[1]));
  CRU_ASSERT(ports_[i] == 0 || ports_[i] == port, "a downstairs restarted on another port");
  ports_[i] = port;
  slot = std::move(*p);
  paused_[i] = false;
  return {};
}

Result<ExitStatus> Cluster::stop_downstairs(int i) {
  auto& p = downstairs_.at(i);
  if (!p || !downstairs_running(i))
    return fail(ErrorCode::kInvalidArgument, fmt::format("downstairs {} is not running", i));
  if (paused_[i]) resume_downstairs(i);
  p->kill(SIGTERM);
  ExitStatus st = p->wait(options_.stop_timeout);
  if (st.timed_out)
    return fail(ErrorCode::kTimeout,
                fmt::format("downstairs {} still running after SIGTERM:\n{}", i, p->output()));
  return st;
}

void Cluster::kill_downstairs(int i) {
  auto& p = downstairs_.at(i);
  if (!p) return;
  p->kill(SIGKILL);
  CRU_ASSERT(!p->wait(kTeardownWait).timed_out, "a SIGKILLed downstairs did not end");
  paused_[i] = false;
}

void Cluster::pause_downstairs(int i) {
  CRU_ASSERT(downstairs_running(i), "pausing a downstairs that is not running");
  downstairs_[i]->kill(SIGSTOP);
  paused_[i] = true;
}

void Cluster::resume_downstairs(int i) {
  if (!downstairs_running(i)) return;
  downstairs_[i]->kill(SIGCONT);
  paused_[i] = false;
}

bool Cluster::downstairs_running(int i) const {
  const auto& p = downstairs_.at(i);
  // wait(0) reaps an exited child without blocking.
  return p && p->wait(Millis(0)).timed_out;
}

std::string Cluster::config_yaml(const std::string& mountpoint, const std::string& extra_yaml,
                                 const std::string& volume_targets_yaml) const {
  std::string key;
  if (!key_.empty()) {
    // What volume.key_file demands: a file only its owner can read.
    const std::string path = write_file("volume.key", key_);
    std::filesystem::permissions(
        path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    key = fmt::format("  key_file: {}\n", path);
  }
  if (options_.tls) {
    TlsFiles t = tls_files("upstairs");
    key += fmt::format("  tls: {{cert: \"{}\", key: \"{}\", ca: \"{}\"}}\n", t.cert, t.key, t.ca);
  }
  return fmt::format(
      "volume:\n"
      "{}"
      "  generation: auto\n"
      "  flush_timeout_ms: {}\n"
      "  activate_timeout_ms: {}\n"
      "{}"
      "mount:\n"
      "  path: {}\n"
      "log:\n"
      "  level: {}\n"
      "{}",
      volume_targets_yaml.empty()
          ? fmt::format("  targets: [\"{}\", \"{}\", \"{}\"]\n", target(0), target(1), target(2))
          : volume_targets_yaml,
      options_.flush_timeout_ms, options_.activate_timeout_ms, key, mountpoint, options_.log_level,
      extra_yaml);
}

std::string Cluster::write_file(const std::string& name, const std::string& text) const {
  std::string path = dir_.file(name);
  std::ofstream(path) << text;
  return path;
}

Result<Mount*> Cluster::mount(MountArgs args) {
  const int n = next_dir_++;
  const std::string mountpoint = dir_.file(fmt::format("mnt{}", n));
  fs::create_directory(mountpoint);
  const std::string config =
      write_file(fmt::format("mnt{}.yaml", n),
                 config_yaml(mountpoint, args.extra_yaml, args.volume_targets_yaml));
  std::unique_ptr<Mount> m(new Mount(*this, mountpoint, config));
  std::vector<std::string> argv = {bin("crucible-fuse"), "-c", config, mountpoint, "-f"};
  argv.insert(argv.end(), args.extra_args.begin(), args.extra_args.end());
  auto p = Process::start(argv);
  if (!p) return tl::unexpected(p.error());
  m->process_ = std::move(*p);
  Mount* raw = m.get();
  mounts_.push_back(std::move(m));  // from here on teardown owns it, ready or not
  if (!args.wait_ready) return raw;
  // Activation has its own timeout; give it that plus the mount.
  auto ready = raw->process_->wait_for_line(
      "disk.img is ready", options_.start_timeout + Millis(options_.activate_timeout_ms));
  if (!ready) {
    raw->teardown();
    return fail(ErrorCode::kIo, fmt::format("crucible-fuse on {} did not get ready: {}", mountpoint,
                                            ready.error().message));
  }
  return raw;
}

Result<std::string> Cluster::attach_loop(const std::string& file, bool direct_io) {
  std::vector<std::string> argv = {tool("losetup"), "-f", "--show"};
  if (direct_io) argv.push_back("--direct-io=on");
  argv.push_back(file);
  auto r = run(argv);
  if (r.exit_code() != 0) return tl::unexpected(command_error("losetup " + file, r));
  std::string dev = trim(r.out);
  if (dev.rfind("/dev/loop", 0) != 0)
    return fail(ErrorCode::kProtocol, "losetup printed no device: " + r.out);
  loops_.push_back(dev);
  return dev;
}

Status Cluster::detach_loop(const std::string& device) {
  auto r = run({tool("losetup"), "-d", device});
  if (r.exit_code() != 0) return tl::unexpected(command_error("losetup -d " + device, r));
  std::erase(loops_, device);
  return {};
}

Result<std::string> Cluster::mount_fs(const std::string& device, const std::string& options) {
  const std::string dir = dir_.file(fmt::format("fs{}", next_dir_++));
  fs::create_directory(dir);
  CRU_TRY(mount_fs_at(device, dir, options));
  return dir;
}

Status Cluster::mount_fs_at(const std::string& device, const std::string& dir,
                            const std::string& options) {
  std::vector<std::string> argv = {tool("mount")};
  if (!options.empty()) argv.insert(argv.end(), {"-o", options});
  argv.insert(argv.end(), {device, dir});
  auto r = run(argv);
  if (r.exit_code() != 0)
    return tl::unexpected(command_error(fmt::format("mount {} {}", device, dir), r));
  fs_mounts_.push_back(dir);
  return {};
}

Status Cluster::umount_fs(const std::string& dir) {
  auto r = run({tool("umount"), dir});
  if (r.exit_code() != 0) return tl::unexpected(command_error("umount " + dir, r));
  std::erase(fs_mounts_, dir);
  return {};
}

void Cluster::teardown() {
  // IO below must be able to finish: no downstairs stays stopped.
  for (int i = 0; i < kDownstairsCount; ++i)
    if (paused_[i]) resume_downstairs(i);
  // Top of the stack first: filesystems, then the loop devices under them, then FUSE.
  for (auto it = fs_mounts_.rbegin(); it != fs_mounts_.rend(); ++it)
    if (run({tool("umount"), *it}).exit_code() != 0)
      static_cast<void>(run({tool("umount"), "-l", *it}));
  fs_mounts_.clear();
  for (auto it = loops_.rbegin(); it != loops_.rend(); ++it) {
    // Only a device still backed by our file: never detach one someone else attached.
    const std::string sys =
        fmt::format("/sys/block/{}/loop/backing_file", fs::path(*it).filename().string());
    std::string backing;
    std::getline(std::ifstream(sys), backing);
    if (backing.rfind(dir_.path(), 0) == 0) static_cast<void>(run({tool("losetup"), "-d", *it}));
  }
  loops_.clear();
  for (auto it = mounts_.rbegin(); it != mounts_.rend(); ++it) (*it)->teardown();
  for (auto& p : downstairs_)
    if (p) p->kill(SIGKILL), p->wait(kTeardownWait);
  // Last guard before the temp dir goes: nothing may stay mounted inside it (remove_all
  // would descend into a live mount).
  for (const auto& point : mount_points())
    if (point.rfind(dir_.path() + "/", 0) == 0)
      static_cast<void>(run({tool("umount"), "-l", point}));
}

}  // namespace cru::test
