#include "fuse/config.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <charconv>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "common/address.h"
#include "common/log.h"
#include "common/units.h"
#include "trace/export.h"
#include "upstairs/volume_layout.h"

namespace cru::fuse {

namespace {

// A config larger than this is not a config (and a mistaken path to a disk image must not
// be read into memory).
constexpr uint64_t kMaxConfigBytes = 1 * kMiB;
// Bounds that keep a typo from making a volume unusable.
constexpr uint64_t kMaxTimeoutMs = 24ull * 3600 * 1000;
constexpr uint64_t kMaxJobsInFlight = 1'000'000;
// Below these the volume cannot work: activation needs round trips to three downstairs,
// and admission must let a flush, a barrier and some IO be in flight together.
constexpr uint64_t kMinActivateTimeoutMs = 100;
// A grace shorter than a reconnect and replay would fail IO on every brief outage (a
// restarted downstairs reconnects after 100 ms); longer than the 30 s offline timeout it
// would outlive the replay it waits for.
constexpr uint64_t kMinQuorumGraceMs = 500;
constexpr uint64_t kMaxQuorumGraceMs = 30'000;
constexpr uint64_t kMinJobsInFlight = 16;
constexpr uint64_t kMinBytesInFlight = 2 * kMiB;  // two 1 MiB jobs
constexpr uint64_t kMaxBytesInFlight = 16 * kGiB;
// A stripe is at least one 4 KiB block; above 1 GiB a stripe no longer spreads anything.
constexpr uint64_t kMinStripeKiB = 4;
constexpr uint64_t kMaxStripeKiB = 1024ull * 1024;
// A scrub slower than one 4 KiB block a second would never finish a real image; above
// 16 GiB/s it is no limit at all.
constexpr uint64_t kMinScrubRateBytes = 4 * kKiB;
constexpr uint64_t kMaxScrubRateBytes = 16 * kGiB;

// Walks the document, remembering the file name so every error names file and key.
class Reader {
 public:
  explicit Reader(std::string_view source) : source_(source) {}

  tl::unexpected<Error> fail(const std::string& key, const std::string& why) const {
    return cru::fail(ErrorCode::kInvalidArgument, fmt::format("{}: {}: {}", source_, key, why));
  }

  // A mapping whose keys must all be in `allowed`.
  Status map(const YAML::Node& n, const std::string& key,
             std::initializer_list<std::string_view> allowed) const {
    if (!n.IsMap()) return fail(key.empty() ? "(top level)" : key, "expected a mapping of keys");
    std::set<std::string_view> ok(allowed);
    for (const auto& kv : n) {
      if (!kv.first.IsScalar()) return fail(key, "keys must be plain names");
      const std::string& k = kv.first.Scalar();
      if (!ok.contains(k)) {
        std::string names;
        for (auto a : allowed) names += fmt::format("{}{}", names.empty() ? "" : ", ", a);
        return fail(join(key, k), fmt::format("unknown key (expected one of: {})", names));
      }
    }
    return {};
  }

  Result<std::string> scalar(const YAML::Node& n, const std::string& key) const {
    if (!n.IsScalar()) return fail(key, "expected a single value");
    return n.Scalar();
  }

  Result<bool> boolean(const YAML::Node& n, const std::string& key) const {
    CRU_TRY_ASSIGN(auto s, scalar(n, key));
    if (s == "true") return true;
    if (s == "false") return false;
    return fail(key, fmt::format("'{}' is not true or false", s));
  }

  Result<uint64_t> integer(const YAML::Node& n, const std::string& key, uint64_t min,
                           uint64_t max) const {
    CRU_TRY_ASSIGN(auto s, scalar(n, key));
    uint64_t v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc{} || end != s.data() + s.size())
      return fail(key, fmt::format("'{}' is not a whole number", s));
    if (v < min || v > max) return fail(key, fmt::format("{} is not in {}..{}", v, min, max));
    return v;
  }

  Result<uint64_t> size(const YAML::Node& n, const std::string& key, uint64_t min,
                        uint64_t max) const {
    CRU_TRY_ASSIGN(auto s, scalar(n, key));
    auto v = parse_size(s);
    if (!v) return fail(key, v.error().message);
    if (*v < min || *v > max)
      return fail(key, fmt::format("{} is not in {}..{}", s, format_size(min), format_size(max)));
    return *v;
  }

  static std::string join(const std::string& a, const std::string& b) {
    return a.empty() ? b : a + "." + b;
  }

 private:
  std::string source_;
};

// volume.tls: all three files, each readable now (a typo fails here, not at connect).
Result<TlsFiles> parse_tls(const Reader& r, const YAML::Node& t) {
  CRU_TRY(r.map(t, "volume.tls", {"cert", "key", "ca"}));
  TlsFiles files;
  for (auto [name, out] :
       {std::pair{"cert", &files.cert}, std::pair{"key", &files.key}, std::pair{"ca", &files.ca}}) {
    std::string key = fmt::format("volume.tls.{}", name);
    const YAML::Node f = t[name];
    if (!f) return r.fail(key, "missing (volume.tls needs cert, key and ca)");
    CRU_TRY_ASSIGN(*out, r.scalar(f, key));
    if (out->empty()) return r.fail(key, "empty");
    std::ifstream in(*out);
    if (!in) return r.fail(key, fmt::format("cannot read {}: {}", *out, std::strerror(errno)));
  }
  return files;
}

// Three distinct host:port addresses at `key`; `seen` holds every target of the volume so
// far (one downstairs cannot serve two replicas, of one sub-volume or of two).
Result<std::array<std::string, kClientCount>> parse_targets(const Reader& r, const YAML::Node& t,
                                                            const std::string& key,
                                                            std::set<std::string>& seen) {
  if (!t) return r.fail(key, "missing (three host:port addresses)");
  if (!t.IsSequence() || t.size() != kClientCount)
    return r.fail(key, fmt::format("expected exactly {} host:port addresses, got {}", kClientCount,
                                   t.IsSequence() ? t.size() : 1));
  std::array<std::string, kClientCount> out;
  for (size_t i = 0; i < kClientCount; ++i) {
    std::string at = fmt::format("{}[{}]", key, i);
    CRU_TRY_ASSIGN(auto s, r.scalar(t[i], at));
    if (auto a = parse_address(s); !a) return r.fail(at, a.error().message);
    if (!seen.insert(s).second) return r.fail(at, fmt::format("'{}' is listed twice", s));
    out[i] = s;
  }
  return out;
}

// volume.targets (one sub-volume) or volume.sub_volumes (several), and volume.stripe_kib.
Status parse_sub_volumes(const Reader& r, const YAML::Node& v, Config& c,
                         std::set<std::string>& seen) {
  const YAML::Node subs = v["sub_volumes"];
  if (subs && v["targets"])
    return r.fail("volume.sub_volumes",
                  "give either volume.targets (one sub-volume) or volume.sub_volumes, not both");
  if (!subs) {
    CRU_TRY_ASSIGN(c.targets, parse_targets(r, v["targets"], "volume.targets", seen));
    c.sub_volumes = {c.targets};
  } else {
    if (!subs.IsSequence() || subs.size() == 0 || subs.size() > upstairs::kMaxSubVolumes)
      return r.fail("volume.sub_volumes",
                    fmt::format("expected a list of 1..{} entries like {{targets: [A, B, C]}}",
                                upstairs::kMaxSubVolumes));
    for (size_t i = 0; i < subs.size(); ++i) {
      const std::string key = fmt::format("volume.sub_volumes[{}]", i);
      CRU_TRY(r.map(subs[i], key, {"targets"}));
      CRU_TRY_ASSIGN(auto t, parse_targets(r, subs[i]["targets"], key + ".targets", seen));
      c.sub_volumes.push_back(std::move(t));
    }
    c.targets = c.sub_volumes.front();
  }
  if (const auto st = v["stripe_kib"]) {
    if (!subs)
      return r.fail("volume.stripe_kib", "striping needs volume.sub_volumes (several of them)");
    CRU_TRY_ASSIGN(auto kib, r.integer(st, "volume.stripe_kib", kMinStripeKiB, kMaxStripeKiB));
    c.stripe_bytes = kib * kKiB;
  }
  return {};
}

// volume.read_only_parent: {file: PATH} or {targets: [A, B, C]}, and scrub_rate. The file
// must exist and be a readable regular file now; its size is checked against the volume's
// geometry once the volume is active (upstairs::check_parent_geometry).
Status parse_read_only_parent(const Reader& r, const YAML::Node& p, std::set<std::string>& seen,
                              Config& c) {
  const std::string key = "volume.read_only_parent";
  CRU_TRY(r.map(p, key, {"file", "targets", "scrub_rate"}));
  ReadOnlyParentConfig out;
  if (p["file"] && p["targets"])
    return r.fail(key,
                  "give either file (a local image) or targets (three read-only "
                  "downstairs), not both");
  if (!p["file"] && !p["targets"])
    return r.fail(key,
                  "needs file: PATH (a local image) or targets: [A, B, C] (three "
                  "read-only downstairs)");
  if (const auto f = p["file"]) {
    CRU_TRY_ASSIGN(out.file, r.scalar(f, key + ".file"));
    if (out.file.empty()) return r.fail(key + ".file", "empty");
    std::error_code ec;
    const auto st = std::filesystem::status(out.file, ec);
    if (ec || !std::filesystem::exists(st))
      return r.fail(key + ".file", fmt::format("{}: no such file", out.file));
    if (!std::filesystem::is_regular_file(st))
      return r.fail(key + ".file", fmt::format("{}: not a regular file", out.file));
    if (std::ifstream in(out.file, std::ios::binary); !in)
      return r.fail(key + ".file",
                    fmt::format("cannot read {}: {}", out.file, std::strerror(errno)));
    out.file = std::filesystem::absolute(out.file).lexically_normal().string();
  } else {
    CRU_TRY_ASSIGN(out.targets, parse_targets(r, p["targets"], key + ".targets", seen));
  }
  if (const auto rate = p["scrub_rate"]) {
    CRU_TRY_ASSIGN(out.scrub_rate_bytes_per_s,
                   r.size(rate, key + ".scrub_rate", kMinScrubRateBytes, kMaxScrubRateBytes));
  }
  c.read_only_parent = std::move(out);
  return {};
}

Status parse_volume(const Reader& r, const YAML::Node& v, Config& c) {
  CRU_TRY(r.map(v, "volume",
                {"targets", "sub_volumes", "stripe_kib", "generation", "read_only", "key",
                 "key_file", "tls", "activate_timeout_ms", "flush_timeout_ms", "quorum_grace_ms",
                 "limits", "read_only_parent", "scrub_state_file"}));
  std::set<std::string> seen;
  CRU_TRY(parse_sub_volumes(r, v, c, seen));
  if (const auto p = v["read_only_parent"]) {
    CRU_TRY(parse_read_only_parent(r, p, seen, c));
  }
  if (const auto f = v["scrub_state_file"]) {
    CRU_TRY_ASSIGN(c.scrub_state_file, r.scalar(f, "volume.scrub_state_file"));
    if (c.scrub_state_file.empty()) return r.fail("volume.scrub_state_file", "empty");
  }
  if (const auto g = v["generation"]) {
    CRU_TRY_ASSIGN(auto s, r.scalar(g, "volume.generation"));
    if (s == "auto") {
      c.generation.reset();
    } else {
      auto n = r.integer(g, "volume.generation", 1, UINT64_MAX);
      if (!n)
        return r.fail("volume.generation", fmt::format("'{}' is not auto or a number >= 1", s));
      c.generation = Generation{*n};
    }
  }
  if (const auto ro = v["read_only"]) {
    CRU_TRY_ASSIGN(c.read_only, r.boolean(ro, "volume.read_only"));
  }
  // A key written in the config would be as readable as the config (and end up in
  // backups and version control): refused, without echoing it.
  if (v["key"])
    return r.fail("volume.key",
                  "an inline key is not accepted; put it in a file of mode 0600 and name that "
                  "file in volume.key_file");
  if (const auto k = v["key_file"]) {
    CRU_TRY_ASSIGN(auto path, r.scalar(k, "volume.key_file"));
    auto key = upstairs::load_key_file(path);
    if (!key) return r.fail("volume.key_file", key.error().message);
    c.key = *key;
  }
  if (const auto tls = v["tls"]) {
    CRU_TRY_ASSIGN(c.tls, parse_tls(r, tls));
  }
  if (const auto a = v["activate_timeout_ms"]) {
    CRU_TRY_ASSIGN(
        auto n, r.integer(a, "volume.activate_timeout_ms", kMinActivateTimeoutMs, kMaxTimeoutMs));
    c.activate_timeout = std::chrono::milliseconds(n);
  }
  if (const auto f = v["flush_timeout_ms"]) {
    CRU_TRY_ASSIGN(auto n, r.integer(f, "volume.flush_timeout_ms", 1, kMaxTimeoutMs));
    c.limits.flush_timeout = std::chrono::milliseconds(n);
  }
  if (const auto q = v["quorum_grace_ms"]) {
    CRU_TRY_ASSIGN(auto n,
                   r.integer(q, "volume.quorum_grace_ms", kMinQuorumGraceMs, kMaxQuorumGraceMs));
    c.limits.quorum_grace = std::chrono::milliseconds(n);
  }
  if (const auto l = v["limits"]) {
    CRU_TRY(r.map(l, "volume.limits", {"jobs_in_flight", "bytes_in_flight"}));
    if (const auto j = l["jobs_in_flight"]) {
      CRU_TRY_ASSIGN(c.limits.jobs_in_flight_max, r.integer(j, "volume.limits.jobs_in_flight",
                                                            kMinJobsInFlight, kMaxJobsInFlight));
    }
    if (const auto b = l["bytes_in_flight"]) {
      CRU_TRY_ASSIGN(c.limits.bytes_in_flight_max, r.size(b, "volume.limits.bytes_in_flight",
                                                          kMinBytesInFlight, kMaxBytesInFlight));
    }
    // A lagging downstairs is faulted at 2/3 of the admission limits, so the guest never
    // waits on it (as the defaults: 1000 of 1500 jobs, 50 of 75 MiB).
    c.limits.fault_jobs = c.limits.jobs_in_flight_max * 2 / 3;
    c.limits.fault_bytes = c.limits.bytes_in_flight_max * 2 / 3;
  }
  return {};
}

Status parse_top(const Reader& r, const YAML::Node& root, Config& c) {
  if (!root || root.IsNull()) return r.fail("(top level)", "the file is empty");
  CRU_TRY(r.map(root, "", {"volume", "mount", "log", "control", "metrics", "trace"}));
  const YAML::Node v = root["volume"];
  if (!v) return r.fail("volume", "missing (it lists the three targets)");
  CRU_TRY(parse_volume(r, v, c));
  if (const auto m = root["mount"]) {
    CRU_TRY(r.map(m, "mount", {"path", "allow_other"}));
    if (const auto p = m["path"]) {
      CRU_TRY_ASSIGN(auto s, r.scalar(p, "mount.path"));
      if (s.empty()) return r.fail("mount.path", "empty");
      c.mount_path = s;
    }
    if (const auto a = m["allow_other"]) {
      CRU_TRY_ASSIGN(c.allow_other, r.boolean(a, "mount.allow_other"));
    }
  }
  if (const auto l = root["log"]) {
    CRU_TRY(r.map(l, "log", {"level", "file"}));
    if (const auto lv = l["level"]) {
      CRU_TRY_ASSIGN(auto s, r.scalar(lv, "log.level"));
      if (!log::valid_level(s))
        return r.fail(
            "log.level",
            fmt::format("'{}' is not one of trace, debug, info, warn, error, critical, off", s));
      c.log_level = s;
    }
    if (const auto f = l["file"]) {
      CRU_TRY_ASSIGN(c.log_file, r.scalar(f, "log.file"));
    }
  }
  if (const auto ctl = root["control"]) {
    CRU_TRY(r.map(ctl, "control", {"socket"}));
    if (const auto s = ctl["socket"]) {
      CRU_TRY_ASSIGN(c.control_socket, r.scalar(s, "control.socket"));
    }
  }
  if (const auto m = root["metrics"]) {
    CRU_TRY(r.map(m, "metrics", {"listen"}));
    if (const auto l = m["listen"]) {
      CRU_TRY_ASSIGN(auto s, r.scalar(l, "metrics.listen"));
      if (auto a = parse_listen_address(s); !a) return r.fail("metrics.listen", a.error().message);
      c.metrics_listen = s;
    }
  }
  if (const auto t = root["trace"]) {
    CRU_TRY(r.map(t, "trace", {"endpoint", "sample_ratio"}));
    if (const auto e = t["endpoint"]) {
      CRU_TRY_ASSIGN(auto s, r.scalar(e, "trace.endpoint"));
      if (auto p = trace::parse_endpoint(s, "trace.endpoint"); !p)
        return r.fail("trace.endpoint", p.error().message);
      c.trace_endpoint = s;
    }
    if (const auto sr = t["sample_ratio"]) {
      CRU_TRY_ASSIGN(auto s, r.scalar(sr, "trace.sample_ratio"));
      auto ratio = trace::parse_sample_ratio(s, "trace.sample_ratio");
      if (!ratio) return r.fail("trace.sample_ratio", ratio.error().message);
      c.trace_sample_ratio = *ratio;
    }
  }
  return {};
}

}  // namespace

Result<Config> parse_config(std::string_view yaml, std::string_view source) {
  Reader r(source);
  Config c;
  try {
    YAML::Node root = YAML::Load(std::string(yaml));
    CRU_TRY(parse_top(r, root, c));
  } catch (const YAML::Exception& e) {
    // Syntax errors: yaml-cpp's mark is 0-based.
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{}: line {}, column {}: {}", source, e.mark.line + 1,
                            e.mark.column + 1, e.msg));
  }
  return c;
}

Result<Config> load_config(const std::string& path) {
  if (std::filesystem::is_directory(path))
    return fail(ErrorCode::kInvalidArgument,
                fmt::format("{}: is a directory, not a config file", path));
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return fail(ErrorCode::kNotFound,
                fmt::format("{}: cannot open the config file: {}", path, std::strerror(errno)));
  std::ostringstream text;
  char buf[64 * 1024];
  uint64_t total = 0;
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    total += static_cast<uint64_t>(in.gcount());
    if (total > kMaxConfigBytes)
      return fail(ErrorCode::kInvalidArgument, fmt::format("{}: larger than {}, not a config file",
                                                           path, format_size(kMaxConfigBytes)));
    text.write(buf, in.gcount());
  }
  if (in.bad()) return fail(ErrorCode::kIo, fmt::format("{}: read error", path));
  return parse_config(text.str(), path);
}

}  // namespace cru::fuse
