// crucible-fuse: mounts the replicated volume as MOUNTPOINT/disk.img.
//   crucible-fuse -c etc/crucible.yaml [MOUNTPOINT] [-f] [--read-only] [--generation N|auto]
//   crucible-fuse status  [-c CONFIG | --socket PATH] [--json | --watch [--interval-ms N]]
//   crucible-fuse replace OLD NEW [-c CONFIG | --socket PATH]
//   crucible-fuse grow T1 T2 T3 [-c CONFIG | --socket PATH]
//   crucible-fuse snapshot NAME [-c CONFIG | --socket PATH]
#include <fcntl.h>
#include <fmt/ranges.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <sstream>

#include "common/log.h"
#include "common/memory.h"
#include "common/service.h"
#include "common/units.h"
#include "fuse/config.h"
#include "fuse/control.h"
#include "fuse/disk.h"
#include "fuse/file_parent.h"
#include "fuse/fuse_server.h"
#include "fuse/scrub_state.h"
#include "fuse/status.h"
#include "fuse/volume_status.h"
#include "fuse/watch.h"
#include "metrics/metrics.h"
#include "metrics/scrub_metrics.h"
#include "metrics/sub_volume_metrics.h"
#include "metrics/trace_metrics.h"
#include "proto/snapshot_name.h"
#include "proto/tls.h"
#include "trace/export.h"
#include "upstairs/parent.h"
#include "upstairs/read_only_parent.h"
#include "upstairs/sub_volumes.h"
#include "upstairs/targets_parent.h"

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

namespace {

using namespace cru;
using Ms = std::chrono::milliseconds;

// The final flush and deactivation get this long before the process gives up on them.
constexpr Ms kDeactivateTimeout{60'000};

struct Args {
  std::string config;
  std::string mountpoint;
  bool foreground = false;
  bool read_only = false;
  std::string generation;
  std::string log_level;
  std::string socket;
  bool json = false;
  bool watch = false;
  uint64_t interval_ms = 1000;
  std::string old_target, new_target;
  std::vector<std::string> grow_targets;
  std::string snapshot_name;
  std::string trace_endpoint, trace_sample_ratio;  // empty: as the config says
};

// Tells the shell that started us how the start went: directly in the foreground; through
// a pipe to the waiting parent when daemonized, so errors still reach the terminal.
class Starter {
 public:
  // Forks unless foreground. Returns in the child (or the only process); the parent
  // exits with the child's verdict.
  explicit Starter(bool foreground) {
    if (foreground) return;
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
    pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid > 0) {
      ::close(fds[1]);
      std::string msg;
      char buf[512];
      ssize_t n;
      while ((n = ::read(fds[0], buf, sizeof buf)) > 0) msg.append(buf, static_cast<size_t>(n));
      // "ok ..." or an error; nothing at all means the child died before reporting.
      if (msg.rfind("ok ", 0) == 0) {
        std::cout << msg.substr(3) << std::flush;
        ::_exit(0);
      }
      std::cerr << (msg.empty() ? "crucible-fuse: the daemon exited before mounting\n" : msg)
                << std::flush;
      ::_exit(1);
    }
    ::close(fds[0]);
    fd_ = fds[1];
    ::setsid();
  }

  bool daemon() const { return fd_ >= 0; }

  void ok(const std::string& msg) {
    if (!daemon()) {
      std::cout << msg << std::flush;
      return;
    }
    send("ok " + msg);
    // Detach from the terminal: the parent is gone, logs go to the log sink.
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
      ::dup2(null, 0);
      ::dup2(null, 1);
      ::dup2(null, 2);
      ::close(null);
    }
    ::chdir("/");
  }

  void failed(const std::string& msg) {
    if (daemon())
      send("crucible-fuse: " + msg + "\n");
    else
      std::cerr << "crucible-fuse: " << msg << "\n";
  }

 private:
  void send(const std::string& s) {
    if (::write(fd_, s.data(), s.size()) < 0) { /* the parent is gone: nothing to tell */
    }
    ::close(fd_);
    fd_ = -1;
  }
  int fd_ = -1;
};

std::string absolute(const std::string& p) {
  return p.empty() ? p : std::filesystem::absolute(p).lexically_normal().string();
}

void init_logging(const fuse::Config& c) {
  if (!c.log_file.empty()) {
    spdlog::set_default_logger(spdlog::basic_logger_mt("fuse", c.log_file));
    spdlog::flush_every(std::chrono::seconds(1));
  } else {
    log::init("fuse");
  }
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%L%$ [%n] %v");
  log::set_level(c.log_level);
}

// Command-line flags override the file.
Result<fuse::Config> configure(const Args& a) {
  auto c = fuse::load_config(a.config);
  if (!c) return c;
  if (!a.mountpoint.empty()) c->mount_path = a.mountpoint;
  if (a.read_only) c->read_only = true;
  if (!a.generation.empty()) {
    if (a.generation == "auto") {
      c->generation.reset();
    } else {
      uint64_t g = 0;
      auto [end, ec] =
          std::from_chars(a.generation.data(), a.generation.data() + a.generation.size(), g);
      if (ec != std::errc{} || end != a.generation.data() + a.generation.size() || g == 0)
        return fail(ErrorCode::kInvalidArgument,
                    fmt::format("--generation: '{}' is not auto or a number >= 1", a.generation));
      c->generation = Generation{g};
    }
  }
  if (!a.log_level.empty()) {
    if (!log::valid_level(a.log_level))
      return fail(ErrorCode::kInvalidArgument,
                  fmt::format("--log-level: '{}' is not a log level", a.log_level));
    c->log_level = a.log_level;
  }
  if (!a.trace_endpoint.empty()) {
    CRU_TRY(trace::parse_endpoint(a.trace_endpoint, "--trace-endpoint"));
    c->trace_endpoint = a.trace_endpoint;
  }
  if (!a.trace_sample_ratio.empty()) {
    CRU_TRY_ASSIGN(c->trace_sample_ratio,
                   trace::parse_sample_ratio(a.trace_sample_ratio, "--trace-sample-ratio"));
  }
  if (c->mount_path.empty())
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("no mount point: give MOUNTPOINT or set mount.path in {}", a.config));
  c->mount_path = absolute(c->mount_path);
  std::error_code ec;
  // ENOTCONN: a dead FUSE mount (its crucible-fuse crashed), which mounting detaches.
  if (!std::filesystem::is_directory(c->mount_path, ec) && ec != std::errc::not_connected)
    return fail(ErrorCode::kNotFound,
                fmt::format("mount point {} is not an existing directory", c->mount_path));
  // A daemon has no stderr: its log goes next to the mount point unless configured.
  if (c->log_file.empty() && !a.foreground) c->log_file = c->mount_path + ".log";
  c->log_file = absolute(c->log_file);
  c->control_socket =
      absolute(c->control_socket.empty() ? c->mount_path + ".sock" : c->control_socket);
  c->scrub_state_file =
      absolute(c->scrub_state_file.empty() ? c->mount_path + ".scrub.json" : c->scrub_state_file);
  return c;
}

// Grows the volume by one sub-volume (control thread) and makes the kernel see the new size
// of disk.img at once, so that `losetup -c` right after the reply finds it.
std::string grow_reply(upstairs::SubVolumes& v, const fuse::Config& c, const std::string& config,
                       const upstairs::Targets& t) {
  log::info("control: grow by a sub-volume on {}, {}, {}", t[0], t[1], t[2]);
  auto grown = v.grow(t, c.generation, c.activate_timeout);
  if (!grown) {
    log::warn("grow refused: {}", grown.error().message);
    return "error: " + grown.error().message;
  }
  // The attributes were invalidated (FuseServer::size_changed); a stat fetches them again
  // (served on the io thread, which this thread is not).
  const std::string disk = c.mount_path + "/disk.img";
  struct stat st {};
  if (::stat(disk.c_str(), &st) != 0)
    log::warn("stat {} after growing: {}", disk, std::strerror(errno));
  const uint64_t bytes = *grown * v.block_size();
  log::info("grew to {} bytes in {} sub-volumes", bytes, v.sub_volume_count());
  const std::string keep = fmt::format(
      "add `- targets: [\"{}\", \"{}\", \"{}\"]` at the end of volume.sub_volumes in {} "
      "to keep it after a restart",
      t[0], t[1], t[2], config);
  log::warn("the new sub-volume is not in the config: {}", keep);
  return fmt::format(
      "ok: disk.img is now {} ({} bytes) in {} sub-volumes; `losetup -c` a loop device on it, "
      "then grow its filesystem (resize2fs); {}",
      format_size(bytes), bytes, v.sub_volume_count(), keep);
}

// Snapshots taken through the control socket, newest last, for the status JSON. Only the
// control thread touches it (it serves one request at a time).
struct SnapshotRecord {
  std::string name;
  std::string error;  // empty: taken
  int64_t pause_ms = 0;
};
// Status shows the latest ones; older ones are in the log and `crucible-downstairs snapshot
// list`.
constexpr size_t kSnapshotsShownMax = 32;

std::string take_snapshot(upstairs::SubVolumes& v, const std::string& name,
                          std::deque<SnapshotRecord>& taken) {
  log::info("control: snapshot {}", name);
  const auto start = std::chrono::steady_clock::now();
  Status s = v.snapshot_flush_sync(name);
  // What the guest waits: its IO queues behind this flush until it is acknowledged.
  const auto pause_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::steady_clock::now() - start)
                            .count();
  taken.push_back({name, s ? std::string() : s.error().message, pause_ms});
  if (taken.size() > kSnapshotsShownMax) taken.pop_front();
  if (!s) return "error: " + s.error().message;
  log::info("snapshot {} taken; the flush took {} ms", name, pause_ms);
  return fmt::format(
      "ok: snapshot {} taken ({} ms flush); serve it with `crucible-downstairs run "
      "-d DIR --snapshot {} -p PORT` on each downstairs",
      name, pause_ms, name);
}

// The read-only parent's scrub as status and metrics see it: the live ParentedVolume, or
// the record of a scrub that completed before this mount. Set once after activation, read
// from the control and HTTP threads.
class ScrubView {
 public:
  void set_live(upstairs::ParentedVolume* p) {
    std::lock_guard lock(mu_);
    live_ = p;
  }
  void set_fixed(upstairs::ScrubStatus s) {
    std::lock_guard lock(mu_);
    fixed_ = std::move(s);
  }
  // Before the ParentedVolume goes.
  void clear() {
    std::lock_guard lock(mu_);
    live_ = nullptr;
    fixed_.reset();
  }
  std::optional<upstairs::ScrubStatus> status() const {
    std::lock_guard lock(mu_);
    if (live_) return live_->scrub_status();
    return fixed_;
  }
  // Whether reads still go to the parent (a snapshot would miss its blocks).
  bool parent_needed() const {
    std::lock_guard lock(mu_);
    return live_ && live_->parent_needed();
  }

 private:
  mutable std::mutex mu_;
  upstairs::ParentedVolume* live_ = nullptr;
  std::optional<upstairs::ScrubStatus> fixed_;
};

std::string control_reply(upstairs::SubVolumes& v, const fuse::Config& c, const std::string& config,
                          const std::string& line, std::deque<SnapshotRecord>& taken,
                          const ScrubView& scrub) {
  std::istringstream in(line);
  std::vector<std::string> w;
  for (std::string word; in >> word && w.size() < 5;) w.push_back(word);
  if (w.size() == 1 && w[0] == "status") {
    auto j = fuse::volume_status_json(v.snapshot(), v.stripe_bytes());
    j["snapshots"] = nlohmann::json::array();
    for (const auto& t : taken)
      j["snapshots"].push_back({{"name", t.name},
                                {"taken", t.error.empty()},
                                {"error", t.error},
                                {"pause_ms", t.pause_ms}});
    if (auto st = scrub.status())
      j["read_only_parent"] = fuse::scrub_status_json(*st, scrub.parent_needed());
    return j.dump();
  }
  if (w.size() == 2 && w[0] == "snapshot") {
    // The volume alone does not hold the blocks still read from the parent.
    if (scrub.parent_needed())
      return "error: the volume still reads blocks from its read-only parent, which a snapshot "
             "would not hold; take it once the scrub completes (crucible-fuse status)";
    return take_snapshot(v, w[1], taken);
  }
  if (w.size() == 3 && w[0] == "replace") {
    log::info("control: replace {} with {}", w[1], w[2]);
    Status s = v.replace_sync(w[1], w[2]);
    return s ? "ok: replacing " + w[1] + " with " + w[2] +
                   "; live repair follows (watch `crucible-fuse status`)"
             : "error: " + s.error().message;
  }
  if (w.size() == 4 && w[0] == "grow") return grow_reply(v, c, config, {w[1], w[2], w[3]});
  return "error: unknown request '" + line.substr(0, 80) +
         "' (expected: status | replace OLD NEW | grow T1 T2 T3 | snapshot NAME)";
}

// What a mount serves beside the volume: its read-only parent (with the scrub to run), or
// nothing, or only the record of a scrub that completed (status shows it).
struct ParentSetup {
  std::unique_ptr<upstairs::ParentedVolume> parented;
  std::optional<upstairs::ScrubStatus> completed;
};

// Every replica's region UUID, per sub-volume: what a scrub record is checked against.
fuse::VolumeIdentity volume_identity(const upstairs::SubVolumes& volume) {
  fuse::VolumeIdentity out;
  for (const auto& s : volume.snapshot()) {
    std::vector<std::string> ids;
    for (const auto& c : s.clients)
      if (c.region_uuid) ids.push_back(c.region_uuid->to_string());
    out.push_back(std::move(ids));
  }
  return out;
}

std::string describe_identity(const fuse::VolumeIdentity& v) {
  std::vector<std::string> subs;
  for (const auto& ids : v) subs.push_back(fmt::format("{}", fmt::join(ids, " ")));
  return fmt::format("{}", fmt::join(subs, "; "));
}

upstairs::ScrubStatus completed_status(const fuse::ScrubState& s, const std::string& path) {
  upstairs::ScrubStatus st;
  st.parent = s.parent;
  st.state_file = path;
  st.block_size = s.block_size;
  st.total_blocks = st.next_block = st.durable_block = st.resumed_from =
      s.parent_bytes / s.block_size;
  st.complete = true;
  st.eta_s = 0.0;
  return st;
}

// After activation: checks the scrub record against the config and opens the parent. A
// volume whose record says the scrub is incomplete is refused without its parent; a record
// of another volume, or of another parent, is refused with it.
Result<ParentSetup> attach_parent(upstairs::SubVolumes& volume, const fuse::Config& c,
                                  const std::shared_ptr<proto::TlsContext>& tls,
                                  const std::shared_ptr<trace::Tracer>& tracer) {
  const std::string& path = c.scrub_state_file;
  const fuse::VolumeIdentity uuids = volume_identity(volume);
  CRU_TRY_ASSIGN(auto state, fuse::load_scrub_state(path));
  const bool ours = state && fuse::same_volume(state->volume, uuids);
  ParentSetup out;
  if (!c.read_only_parent) {
    if (state && !ours) log::info("{} records the scrub of another volume; ignored", path);
    if (!ours) return out;
    if (!state->complete)
      return fail(ErrorCode::kInvalidArgument,
                  fmt::format("{}: the scrub of this volume's read-only parent ({}) has copied {} "
                              "of {} blocks, so the volume still needs its parent: put "
                              "volume.read_only_parent back in the config and mount again until "
                              "`crucible-fuse status` says the scrub is complete "
                              "(docs/volumes.md)",
                              path, state->parent, state->next_block,
                              state->parent_bytes / state->block_size));
    log::info("{}: the scrub of the read-only parent ({}) completed; mounting without it", path,
              state->parent);
    out.completed = completed_status(*state, path);
    return out;
  }
  if (state && !ours)
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{}: this scrub record belongs to another volume (regions {}), not to "
                            "this one ({}); set volume.scrub_state_file to a path of this "
                            "volume's own",
                            path, describe_identity(state->volume), describe_identity(uuids)));
  if (state && state->complete) {
    log::info(
        "{}: the scrub of the read-only parent ({}) completed: the parent is no longer needed "
        "and is not opened (volume.read_only_parent may be removed from the config)",
        path, state->parent);
    out.completed = completed_status(*state, path);
    return out;
  }
  const uint32_t bs = volume.block_size();
  const auto& cfg = *c.read_only_parent;
  std::unique_ptr<upstairs::ParentSource> parent;
  std::string key;
  if (!cfg.file.empty()) {
    key = "volume.read_only_parent.file";
    auto io = volume.io_thread();
    CRU_TRY_ASSIGN(parent, fuse::FileParent::open(cfg.file, bs, [io](std::function<void()> fn) {
                     io->post(std::move(fn));
                   }));
  } else {
    key = "volume.read_only_parent.targets";
    upstairs::VolumeOptions vo;
    vo.targets = *cfg.targets;
    vo.key = c.key;
    vo.limits = c.limits;
    vo.tls = tls;
    vo.io_thread = volume.io_thread();
    vo.tracer = tracer;
    CRU_TRY_ASSIGN(parent, upstairs::TargetsParent::open(std::move(vo), c.activate_timeout));
  }
  CRU_TRY_ASSIGN(auto blocks,
                 upstairs::check_parent_geometry(key, parent->size_bytes(), parent->block_size(),
                                                 volume.total_blocks(), bs));
  if (state && (state->parent != parent->describe() || state->parent_bytes != parent->size_bytes()))
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{}: {} is {} ({} bytes), but {} recorded this volume's parent as {} "
                            "({} bytes): a volume's parent cannot change, its blocks came from "
                            "the recorded one",
                            key, key, parent->describe(), parent->size_bytes(), path, state->parent,
                            state->parent_bytes));
  fuse::ScrubState record =
      state ? *state
            : fuse::ScrubState{uuids, parent->describe(), parent->size_bytes(), bs, 0, false};
  // Recorded before the first guest write: from now on a mount without the parent is refused.
  if (!state && !c.read_only) CRU_TRY(fuse::save_scrub_state(path, record));
  log::info("read-only parent: {} ({} blocks of {} in the volume); scrub {} at block {}",
            parent->describe(), blocks, volume.total_blocks(),
            c.read_only ? "off (read-only mount)" : "resumes", record.next_block);
  upstairs::ScrubOptions so;
  so.rate_bytes_per_s = cfg.scrub_rate_bytes_per_s;
  // A chunk is one job at most, and no more than a second's worth at the rate limit.
  so.chunk_bytes = std::clamp<uint64_t>(cfg.scrub_rate_bytes_per_s / bs * bs, bs,
                                        upstairs::kMaxJobBytes / bs * bs);
  so.resume_at = record.next_block;
  so.state_file = path;
  so.record = [path, record, &volume](uint64_t next_block, bool complete) mutable {
    // The regions as they are now: a replaced downstairs serves a new one.
    record.volume = volume_identity(volume);
    record.next_block = next_block;
    record.complete = complete;
    return fuse::save_scrub_state(path, record);
  };
  auto io = volume.io_thread();
  out.parented = std::make_unique<upstairs::ParentedVolume>(
      volume, [io](std::function<void()> fn) { io->post(std::move(fn)); }, std::move(parent), so);
  return out;
}

int mount_volume(const Args& a) {
  auto cfg = configure(a);
  if (!cfg) {
    std::cerr << "crucible-fuse: " << cfg.error().message << "\n";
    return 2;
  }
  const fuse::Config& c = *cfg;
  // Built before anything starts, so a bad certificate is reported on the terminal.
  std::shared_ptr<proto::TlsContext> tls;
  if (c.tls) {
    auto t = proto::TlsContext::load(*c.tls);
    if (!t) {
      std::cerr << "crucible-fuse: " << a.config << ": volume.tls: " << t.error().message << "\n";
      return 2;
    }
    tls = std::move(*t);
  }
  // A closed stderr or control client must not kill us in the middle of a final flush.
  ::signal(SIGPIPE, SIG_IGN);
  Starter starter(a.foreground);
  init_logging(c);
  // Memory reclaim may wait on writeback through us (a loop device on disk.img): as an IO
  // flusher our own allocations do not recurse into that writeback.
  if (::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0)
    log::warn(
        "PR_SET_IO_FLUSHER failed ({}): under memory pressure a loop device on disk.img may stall",
        std::strerror(errno));

  // After the fork (the sender is a thread): spans of guest IO, if configured.
  std::shared_ptr<trace::Tracer> tracer;
  if (!c.trace_endpoint.empty()) {
    auto t = trace::make_tracer("crucible-upstairs", c.trace_endpoint, c.trace_sample_ratio,
                                "trace.endpoint");
    if (!t) {
      starter.failed(t.error().message);
      return 1;
    }
    tracer = std::move(*t);
    log::info("tracing to {} (sample ratio {})", c.trace_endpoint, c.trace_sample_ratio);
  }
  upstairs::SubVolumesOptions so;
  so.targets = c.sub_volumes;
  so.stripe_bytes = c.stripe_bytes;
  so.common.read_only = c.read_only;
  so.common.key = c.key;
  so.common.limits = c.limits;
  so.common.tls = tls;
  so.common.tracer = tracer;
  upstairs::SubVolumes volume(so);
  // The volume over its read-only parent, once activated (volume.read_only_parent).
  std::unique_ptr<upstairs::ParentedVolume> parented;
  ScrubView scrub_view;
  // Metrics from before activation, so reconciliation can be watched. Declared after the
  // volume and the stats it reads, so it stops first.
  fuse::GuestIoStats io_stats;
  std::unique_ptr<metrics::Endpoint> metrics_endpoint;
  std::string metrics_line;
  if (!c.metrics_listen.empty()) {
    std::vector<std::shared_ptr<prometheus::Collectable>> collectors = {
        std::make_shared<metrics::SubVolumeCollector>([&volume] { return volume.snapshot(); },
                                                      &io_stats)};
    if (tracer) collectors.push_back(std::make_shared<metrics::TraceCollector>(tracer));
    collectors.push_back(
        std::make_shared<metrics::ScrubCollector>([&scrub_view] { return scrub_view.status(); }));
    auto e = metrics::Endpoint::start(c.metrics_listen, a.config + ": metrics.listen",
                                      std::move(collectors));
    if (!e) {
      starter.failed(e.error().message);
      return 1;
    }
    metrics_endpoint = std::move(*e);
    const auto host = c.metrics_listen.substr(0, c.metrics_listen.rfind(':'));
    metrics_line =
        fmt::format("  metrics:  http://{}:{}/metrics\n", host, metrics_endpoint->port());
    log::info("metrics on http://{}:{}/metrics", host, metrics_endpoint->port());
  }
  // The control socket answers from here on, so `crucible-fuse status` shows activation
  // and reconciliation while they run (a replace before activation is refused by the volume).
  fuse::ControlServer control;
  std::deque<SnapshotRecord> snapshots_taken;
  if (Status s = control.start(c.control_socket,
                               [&](const std::string& l) {
                                 return control_reply(volume, c, a.config, l, snapshots_taken,
                                                      scrub_view);
                               });
      !s)
    log::warn("no control socket: {}", s.error().message);
  for (size_t i = 0; i < c.sub_volumes.size(); ++i) {
    const auto& t = c.sub_volumes[i];
    log::info("activating {}the volume on {}, {}, {} (generation {})",
              c.sub_volumes.size() > 1 ? fmt::format("sub-volume {} of ", i) : "", t[0], t[1], t[2],
              c.generation ? std::to_string(c.generation->value) : "auto");
  }
  if (Status s = volume.activate(c.generation, c.activate_timeout); !s) {
    starter.failed("activation failed: " + s.error().message);
    return 1;
  }
  auto setup = attach_parent(volume, c, tls, tracer);
  if (!setup) {
    starter.failed(setup.error().message);
    static_cast<void>(volume.deactivate(kDeactivateTimeout));
    return 1;
  }
  parented = std::move(setup->parented);
  if (parented) scrub_view.set_live(parented.get());
  if (setup->completed) scrub_view.set_fixed(*setup->completed);
  upstairs::BlockDevice& device =
      parented ? static_cast<upstairs::BlockDevice&>(*parented) : volume;
  fuse::Disk disk(device);
  fuse::FuseServer server(disk, fuse::MountOptions{c.mount_path, c.allow_other, c.read_only,
                                                   metrics_endpoint ? &io_stats : nullptr});
  // On the io thread, before any IO can reach the new blocks.
  volume.on_grown([&disk, &server] {
    disk.grown();
    server.size_changed();
  });
  if (Status s = server.mount(); !s) {
    starter.failed(s.error().message);
    static_cast<void>(volume.deactivate(kDeactivateTimeout));
    return 1;
  }
  if (parented && !c.read_only) parented->start_scrub();
  auto snaps = volume.snapshot();
  // Which region is where: a sub-volume list edited other than by appending shows here.
  for (size_t i = 0; i < snaps.size(); ++i)
    if (snaps[i].region)
      log::info("sub-volume {}: region {}, {} bytes", i, snaps[i].region->uuid.to_string(),
                snaps[i].region->total_bytes());
  std::string replicas;
  for (size_t i = 0; i < c.sub_volumes.size(); ++i) {
    const auto& t = c.sub_volumes[i];
    replicas += fmt::format("  replicas: {}, {}, {}{}\n", t[0], t[1], t[2],
                            c.sub_volumes.size() > 1 ? fmt::format(" (sub-volume {})", i) : "");
  }
  const uint64_t generation = snaps.front().generation.value;
  std::string ready = fmt::format(
      "crucible-fuse: {}/disk.img is ready: {} in {}-byte blocks, generation {}{}{}\n"
      "{}  status:   crucible-fuse status --socket {}\n{}{}",
      c.mount_path, format_size(disk.size_bytes()), disk.block_size(), generation,
      c.read_only ? ", read-only" : "",
      c.sub_volumes.size() > 1
          ? fmt::format(
                ", {} sub-volumes{}", c.sub_volumes.size(),
                c.stripe_bytes ? fmt::format(" striped by {}", format_size(c.stripe_bytes)) : "")
          : "",
      replicas + (parented ? fmt::format("  parent:   {} (read-only; scrub state in {})\n",
                                         parented->scrub_status().parent, c.scrub_state_file)
                           : std::string()),
      c.control_socket, metrics_line,
      c.log_file.empty() ? "" : fmt::format("  log:      {}\n", c.log_file));
  log::info("mounted {}/disk.img", c.mount_path);
  starter.ok(ready);
  notify_ready(fmt::format("{}/disk.img mounted, generation {}", c.mount_path, generation));

  Status served = server.run(device);
  log::info("unmounted {}; final flush", c.mount_path);
  notify_stopping("unmounted; final flush");
  control.stop();
  // The scrub flushes and records what it copied before the volume goes.
  if (parented) parented->stop_scrub();
  Status done = volume.deactivate(kDeactivateTimeout);
  if (!served) log::error("{}", served.error().message);
  // Never "flushed" unless two downstairs hold every acknowledged write.
  if (!done)
    log::error(
        "unmount failed: {}; writes acknowledged since the last successful fsync may "
        "exist on fewer than two replicas",
        done.error().message);
  else
    log::info("volume flushed and deactivated");
  // The parent closes its connections (and logs) now, while there is a logger.
  scrub_view.clear();
  parented.reset();
  spdlog::shutdown();
  return served && done ? 0 : 1;
}

std::string socket_path(const Args& a) {
  if (!a.socket.empty()) return a.socket;
  auto c = fuse::load_config(a.config);
  if (!c) throw std::runtime_error(c.error().message);
  std::string mount = absolute(a.mountpoint.empty() ? c->mount_path : a.mountpoint);
  return absolute(c->control_socket.empty() ? mount + ".sock" : c->control_socket);
}

int control_command(const Args& a, const std::string& request, bool status) {
  std::string path;
  try {
    path = socket_path(a);
  } catch (const std::exception& e) {
    std::cerr << "crucible-fuse: " << e.what() << "\n";
    return 2;
  }
  auto reply = fuse::control_request(path, request);
  if (!reply) {
    std::cerr << "crucible-fuse: " << reply.error().message << "\n";
    return 1;
  }
  if (reply->rfind("error:", 0) == 0) {
    std::cerr << "crucible-fuse: " << *reply;
    return 1;
  }
  if (status && !a.json) {
    auto j = nlohmann::json::parse(*reply, nullptr, false);
    if (j.is_discarded()) {
      std::cerr << "crucible-fuse: the status reply is not JSON\n";
      return 1;
    }
    std::cout << fuse::format_volume_status(j);
  } else {
    std::cout << *reply;
  }
  return 0;
}

int watch_status(const Args& a) {
  try {
    return fuse::run_watch(socket_path(a), std::chrono::milliseconds(a.interval_ms));
  } catch (const std::exception& e) {
    std::cerr << "crucible-fuse: " << e.what() << "\n";
    return 2;
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  cru::keep_io_buffers_in_heap();
  CLI::App app{
      "crucible-fuse: mounts a volume replicated on three crucible-downstairs as "
      "MOUNTPOINT/disk.img"};
  app.set_version_flag("--version", cru::version_line("crucible-fuse"));
  app.add_option("-c,--config", a.config, "YAML configuration (see etc/crucible.yaml)")->required();
  app.add_option("mountpoint", a.mountpoint,
                 "directory to mount on (default: mount.path from the config)");
  app.add_flag("-f,--foreground", a.foreground, "stay in the foreground and log to stderr");
  app.add_flag("--read-only", a.read_only, "mount read-only (overrides volume.read_only)");
  app.add_option("--generation", a.generation, "auto or a number (overrides volume.generation)");
  app.add_option("--log-level", a.log_level,
                 "trace, debug, info, warn, error (overrides log.level)");
  app.add_option("--trace-endpoint", a.trace_endpoint,
                 "send spans to a Jaeger agent (HOST:PORT, UDP) or an OTLP/HTTP receiver "
                 "(http://HOST:PORT) (overrides trace.endpoint)");
  app.add_option("--trace-sample-ratio", a.trace_sample_ratio,
                 "share of guest operations traced, 0 to 1 (default 0.01; errors always) "
                 "(overrides trace.sample_ratio)");
  auto* status =
      app.add_subcommand("status", "show the running volume's state, replicas and repair progress");
  status->add_option("-c,--config", a.config,
                     "the mount's YAML configuration (finds its control socket)");
  status->add_option("--socket", a.socket, "control socket (default: from the config)");
  auto* json_flag = status->add_flag("--json", a.json, "print the raw JSON");
  auto* watch = status->add_flag(
      "-w,--watch", a.watch,
      "redraw a live view every interval until Ctrl-C: replica states, jobs and bytes "
      "in flight, IOPS and MiB/s, live repair or reconciliation progress with rate "
      "and ETA; exits 0 when the volume unmounts, 1 if it stops answering");
  watch->excludes(json_flag);
  status
      ->add_option("--interval-ms", a.interval_ms,
                   "with --watch: milliseconds between frames (default 1000)")
      ->needs(watch)
      ->check(
          CLI::Range(static_cast<uint64_t>(fuse::kMinWatchInterval.count()), uint64_t{3'600'000}));
  auto* replace = app.add_subcommand(
      "replace", "replace downstairs OLD by NEW (host:port); NEW is live-repaired");
  replace->add_option("old", a.old_target, "the target to replace")->required();
  replace->add_option("new", a.new_target, "its replacement")->required();
  replace->add_option("-c,--config", a.config,
                      "the mount's YAML configuration (finds its control socket)");
  replace->add_option("--socket", a.socket, "control socket (default: from the config)");
  auto* grow = app.add_subcommand(
      "grow",
      "grow the mounted volume by a sub-volume on three new downstairs (host:port); then "
      "`losetup -c` and resize2fs; add it to volume.sub_volumes to keep it (docs/volumes.md)");
  grow->add_option("targets", a.grow_targets, "the new sub-volume's three downstairs")
      ->required()
      ->expected(3);
  grow->add_option("-c,--config", a.config,
                   "the mount's YAML configuration (finds its control socket)");
  grow->add_option("--socket", a.socket, "control socket (default: from the config)");
  auto* snapshot = app.add_subcommand(
      "snapshot",
      "flush and take snapshot NAME on every downstairs (DIR/snapshots/NAME; see "
      "docs/volumes.md)");
  snapshot
      ->add_option("name", a.snapshot_name,
                   "snapshot name: printable ASCII, no '/', no leading '.', at most 128 bytes")
      ->required();
  snapshot->add_option("-c,--config", a.config,
                       "the mount's YAML configuration (finds its control socket)");
  snapshot->add_option("--socket", a.socket, "control socket (default: from the config)");
  app.require_subcommand(0, 1);
  // `status` and `replace` find the socket from -c, so -c stays required for them too
  // unless --socket is given.
  app.get_option("--config")->required(false);
  CLI11_PARSE(app, argc, argv);
  if (a.config.empty() && a.socket.empty()) {
    std::cerr << "crucible-fuse: --config is required (see --help)\n";
    return 2;
  }
  if (*status && a.watch) return watch_status(a);
  if (*status) return control_command(a, "status", true);
  if (*replace) return control_command(a, "replace " + a.old_target + " " + a.new_target, false);
  if (*grow)
    return control_command(
        a, fmt::format("grow {} {} {}", a.grow_targets[0], a.grow_targets[1], a.grow_targets[2]),
        false);
  if (*snapshot) {
    // Checked here too, so a bad name is refused before it reaches the volume.
    if (auto s = cru::proto::validate_snapshot_name(a.snapshot_name); !s) {
      std::cerr << "crucible-fuse: " << s.error().message << "\n";
      return 2;
    }
    return control_command(a, "snapshot " + a.snapshot_name, false);
  }
  if (a.config.empty()) {
    std::cerr << "crucible-fuse: --config is required to mount\n";
    return 2;
  }
  try {
    return mount_volume(a);
  } catch (const std::exception& e) {
    std::cerr << "crucible-fuse: " << e.what() << "\n";
    return 1;
  }
}
