// crucible-fuse's configuration: a YAML file (etc/crucible.yaml is the example), checked
// completely before anything starts. Every key is documented in docs/configuration.md.
#pragma once

#include <array>
#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/ids.h"
#include "common/result.h"
#include "common/tls_files.h"
#include "common/units.h"
#include "trace/tracer.h"
#include "upstairs/block_crypto.h"
#include "upstairs/status.h"

namespace cru::fuse {

// volume.read_only_parent: exactly one of `file` and `targets`.
struct ReadOnlyParentConfig {
  std::string file;  // a local image (absolute path); empty: targets
  std::optional<std::array<std::string, kClientCount>> targets;
  uint64_t scrub_rate_bytes_per_s = 16 * kMiB;  // volume.read_only_parent.scrub_rate
};

struct Config {
  // volume:
  // volume.targets, or volume.sub_volumes[0].targets.
  std::array<std::string, kClientCount> targets;
  // Every sub-volume's targets in volume order (volume.targets alone: one entry).
  std::vector<std::array<std::string, kClientCount>> sub_volumes;
  uint64_t stripe_bytes = 0;             // volume.stripe_kib; 0: sub-volumes concatenated
  std::optional<Generation> generation;  // nullopt: auto
  bool read_only = false;
  std::optional<upstairs::Key> key;  // read from volume.key_file
  std::optional<TlsFiles> tls;       // volume.tls: {cert, key, ca}; none: plain TCP
  std::chrono::milliseconds activate_timeout{30'000};
  upstairs::Limits limits;  // flush_timeout_ms, quorum_grace_ms and limits.* land here
  std::optional<ReadOnlyParentConfig> read_only_parent;
  // volume.scrub_state_file: the scrub's progress record; empty: <mount path>.scrub.json.
  std::string scrub_state_file;
  // mount:
  std::string mount_path;
  bool allow_other = false;
  // log:
  std::string log_level = "info";
  std::string log_file;  // empty: stderr in the foreground, <mount path>.log when daemonized
  // control:
  std::string control_socket;  // empty: <mount path>.sock
  // metrics:
  std::string metrics_listen;  // IP:PORT serving Prometheus /metrics; empty: off
  // trace:
  std::string trace_endpoint;  // HOST:PORT (Jaeger agent) or http://HOST:PORT (OTLP); empty: off
  double trace_sample_ratio = trace::kDefaultSampleRatio;
};

// Parses YAML text; errors read "FILE: KEY: reason" (FILE is `source`).
Result<Config> parse_config(std::string_view yaml, std::string_view source);
// Reads and parses a file; a missing or unreadable file is an error naming it.
Result<Config> load_config(const std::string& path);

}  // namespace cru::fuse
