// An end-to-end test cluster: three real crucible-downstairs on 127.0.0.1 (regions in a
// fresh temp dir) and any number of crucible-fuse mounts of their volume, plus the loop
// devices and filesystems a test stacks on disk.img. Owned and used by one test thread.
// The destructor always cleans up, in dependency order, whatever state a failed test left:
// filesystems unmounted, loop devices detached, FUSE mounts unmounted (SIGTERM, then
// `umount -l` and SIGKILL), stopped downstairs resumed and every child killed, temp dir
// removed. Every wait has a hard timeout; nothing sleeps: waits are on output lines,
// process exits or commands.
//
//   auto c = Cluster::start({.extent_count = 8});        // regions created, 3 downstairs up
//   ASSERT_TRUE(c) << c.error().to_string();
//   auto m = (*c)->mount();                                // crucible-fuse -f, "is ready"
//   ASSERT_TRUE(m) << m.error().to_string();
//   int fd = ::open((*m)->disk_path().c_str(), O_RDWR);    // the replicated disk.img
//   (*c)->kill_downstairs(1);                              // SIGKILL; start_downstairs(1) later
//   auto st = (*m)->status();                              // crucible-fuse status --json
//   auto exit = (*m)->unmount();                           // SIGTERM; clean exit is code 0
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/tls_files.h"
#include "support/process.h"

namespace cru::test {

inline constexpr int kDownstairsCount = 3;

// Where downstairs i runs and how the upstairs reaches it (ClusterOptions::placement).
struct DownstairsPlacement {
  std::vector<std::string> exec_prefix;  // run under this, e.g. {"ip", "netns", "exec", NS}
  std::string address = "127.0.0.1";     // it listens here (-a); its repair address too
  uint16_t port = 0;                     // 0: a free port, kept across restarts
  std::string target;                    // what the upstairs connects to; empty: address:port
};

struct ClusterOptions {
  // Region geometry (crucible-downstairs create): 4 KiB blocks x 4096 x 8 extents = 128 MiB.
  uint32_t block_size = 4096;
  uint64_t extent_size_blocks = 4096;
  uint32_t extent_count = 8;
  bool encrypted = false;  // regions made with --encrypted; mounts get a random volume.key
  // Mutual TLS: a throw-away CA and certificates in dir()/tls (common/pki.h, as crucible-dsc
  // create --tls makes them); every downstairs runs with --tls-*, every mount gets volume.tls.
  bool tls = false;
  // By default every downstairs runs here on 127.0.0.1 and is reached directly; a test
  // that puts them elsewhere (network namespaces, behind a proxy) says where. Called with
  // 0..2, any number of times: it must give the same answer each time.
  std::function<DownstairsPlacement(int i)> placement;
  // Where the three regions live (DIR/0, DIR/1, DIR/2): empty for the cluster's temp dir.
  // A test puts them on a filesystem of its own (e.g. XFS with reflink); the cluster never
  // removes them.
  std::string regions_dir;
  // Serve regions that exist already in regions_dir (e.g. another cluster's, with
  // downstairs_args {"--snapshot", NAME}) instead of creating them.
  bool existing_regions = false;
  // Extra arguments for every `crucible-downstairs run` (e.g. {"--lossy"}).
  std::vector<std::string> downstairs_args;
  // Written into every mount's config.
  uint64_t flush_timeout_ms = 500;
  uint64_t activate_timeout_ms = 20000;
  std::string log_level = "info";
  // Limits on the fixture's own waits.
  Millis start_timeout{20000};    // a downstairs listening, a mount ready
  Millis stop_timeout{60000};     // a graceful stop or unmount (final flush included)
  Millis command_timeout{60000};  // helper commands (losetup, mount, umount, ...)
};

struct MountArgs {
  std::vector<std::string> extra_args;  // e.g. {"--read-only"} or {"--generation", "7"}
  std::string extra_yaml;               // appended to the generated config (top-level keys)
  // Replaces the `  targets: [...]` line under volume: (e.g. a `  sub_volumes:` list over
  // several clusters' targets); empty: this cluster's three targets.
  std::string volume_targets_yaml;
  // false: mount() returns once crucible-fuse is started, before it is ready (its control
  // socket may not exist yet); wait on process() for "is ready".
  bool wait_ready = true;
};

class Cluster;

// One `crucible-fuse -f` process and its mount point. Owned by its Cluster; a pointer
// stays valid until the Cluster is destroyed, whether or not the mount is still up.
class Mount {
 public:
  const std::string& mountpoint() const { return mountpoint_; }
  std::string disk_path() const { return mountpoint_ + "/disk.img"; }
  const std::string& config_path() const { return config_; }
  Process& process() { return *process_; }
  // Whether the mount point is in this process's mount table.
  bool mounted() const;
  // `crucible-fuse status --json -c CONFIG`, parsed.
  Result<nlohmann::json> status() const;
  // Polls status() until `done` accepts it (kTimeout with the last status if it does not).
  Result<nlohmann::json> wait_status(const std::function<bool(const nlohmann::json&)>& done,
                                     Millis timeout) const;
  // SIGTERM, then waits for the exit (final flush and deactivation included); the
  // status says how it ended (a clean stop exits 0). kTimeout if it does not end.
  Result<ExitStatus> unmount();
  // SIGKILL (no final flush) and reap; the dead FUSE mount is lazily unmounted.
  void kill();
  bool running() const { return process_ && !exited_; }

 private:
  friend class Cluster;
  Mount(const Cluster& cluster, std::string mountpoint, std::string config)
      : cluster_(cluster), mountpoint_(std::move(mountpoint)), config_(std::move(config)) {}
  void teardown();

  const Cluster& cluster_;
  std::string mountpoint_;
  std::string config_;
  std::unique_ptr<Process> process_;
  bool exited_ = false;
};

class Cluster {
 public:
  // Creates three regions in a new temp dir and starts their downstairs (free ports,
  // `run -p 0`). Errors carry the failing command's output.
  static Result<std::unique_ptr<Cluster>> start(ClusterOptions options = {});
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  const ClusterOptions& options() const { return options_; }
  const std::string& dir() const { return dir_.path(); }  // the cluster's temp dir
  uint64_t size_bytes() const;                            // the volume's size
  std::string region_dir(int i) const;
  uint16_t port(int i) const { return ports_.at(i); }
  std::string target(int i) const;  // "127.0.0.1:PORT", or the placement's target
  // With options().tls: the files of a certificate from the cluster's CA; `name` is
  // "downstairs-0".."downstairs-2" or "upstairs".
  TlsFiles tls_files(const std::string& name) const;
  // The upstairs's --tls-* arguments for `crucible`; empty without TLS.
  std::vector<std::string> upstairs_tls_args() const;

  // ---- downstairs i (0..2) ----
  // Starts it again on the port it had (the first start picks a free one).
  Status start_downstairs(int i);
  // SIGTERM and wait; a clean stop exits 0 (the status says how it ended).
  Result<ExitStatus> stop_downstairs(int i);
  // SIGKILL and reap.
  void kill_downstairs(int i);
  // SIGSTOP / SIGCONT: a hung downstairs whose connection stays open.
  void pause_downstairs(int i);
  void resume_downstairs(int i);
  bool downstairs_running(int i) const;
  bool downstairs_paused(int i) const { return paused_.at(i); }
  Process* downstairs_process(int i) { return downstairs_.at(i).get(); }

  // ---- mounts ----
  // The YAML config for a mount at `mountpoint` (the three targets, the options' values,
  // then `extra_yaml`).
  std::string config_yaml(const std::string& mountpoint, const std::string& extra_yaml = "",
                          const std::string& volume_targets_yaml = "") const;
  // Writes a file in the cluster's dir; returns its path.
  std::string write_file(const std::string& name, const std::string& text) const;
  // A new mount point (dir()/mntN), its config, and `crucible-fuse -c CFG MNT -f`; waits
  // for "is ready". On failure the process is reaped and its output is in the error.
  Result<Mount*> mount(MountArgs args = {});
  // The first mount made (nullptr before any).
  Mount* first_mount() { return mounts_.empty() ? nullptr : mounts_.front().get(); }

  // ---- block devices and filesystems on disk.img (all undone at teardown) ----
  // `losetup -f --show [--direct-io=on] FILE`; returns /dev/loopN.
  Result<std::string> attach_loop(const std::string& file, bool direct_io = false);
  Status detach_loop(const std::string& device);
  // A new directory dir()/fsN with `device` mounted on it (`mount [-o OPTS] DEV DIR`).
  Result<std::string> mount_fs(const std::string& device, const std::string& options = "");
  // Mounts `device` again on an existing directory.
  Status mount_fs_at(const std::string& device, const std::string& dir,
                     const std::string& options = "");
  Status umount_fs(const std::string& dir);

  // Runs a command with the fixture's command timeout.
  CommandResult run(std::vector<std::string> argv) const;

 private:
  explicit Cluster(ClusterOptions options);
  Status create_regions();
  DownstairsPlacement placement(int i) const;
  void teardown();

  ClusterOptions options_;
  TempDir dir_;
  std::array<uint16_t, kDownstairsCount> ports_{};
  std::array<std::unique_ptr<Process>, kDownstairsCount> downstairs_;
  std::array<bool, kDownstairsCount> paused_{};
  std::string key_;  // base64 volume key for encrypted regions
  std::vector<std::unique_ptr<Mount>> mounts_;
  std::vector<std::string> loops_;      // attached by us, not yet detached
  std::vector<std::string> fs_mounts_;  // mounted by us, not yet unmounted
  int next_dir_ = 0;
};

// The path of a system tool (losetup, mount, mkfs.ext4, ...) from $PATH and the sbin dirs.
std::string tool(const std::string& name);

// Whether `path` is a mount point in this process's mount table (/proc/self/mountinfo).
bool is_mounted(const std::string& path);

}  // namespace cru::test
