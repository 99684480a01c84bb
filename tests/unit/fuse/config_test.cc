// fuse::parse_config and load_config: the shipped example parses, every key lands in
// Config, and every refusal names the file, the key and the reason (syntax errors: the
// line and column).
#include "fuse/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace cru::fuse {
namespace {

namespace fs = std::filesystem;

constexpr const char* kSource = "test.yaml";
constexpr const char* kTargets =
    "volume:\n  targets: [\"127.0.0.1:3810\", \"127.0.0.1:3820\", \"127.0.0.1:3830\"]\n";
// 32 bytes, base64.
constexpr const char* kKey = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

Result<Config> parse(const std::string& yaml) { return parse_config(yaml, kSource); }

// The refusal of `yaml`, which must fail.
std::string error_of(const std::string& yaml) {
  auto c = parse(yaml);
  EXPECT_FALSE(c) << "accepted:\n" << yaml;
  return c ? std::string() : c.error().message;
}

// The repository's etc/crucible.yaml: the test binary is <repo>/<build>/tests/unit_fuse.
std::string example_config() {
  std::error_code ec;
  auto exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    auto p = exe.parent_path().parent_path().parent_path() / "etc/crucible.yaml";
    if (fs::exists(p)) return p.string();
  }
  return "etc/crucible.yaml";
}

// ---- the example and the defaults ----

TEST(FuseConfig, ExampleFileParses) {
  const std::string path = example_config();
  auto c = load_config(path);
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ(c->targets[0], "127.0.0.1:3810");
  EXPECT_EQ(c->targets[1], "127.0.0.1:3820");
  EXPECT_EQ(c->targets[2], "127.0.0.1:3830");
  EXPECT_FALSE(c->generation.has_value());
  EXPECT_FALSE(c->read_only);
  EXPECT_EQ(c->limits.flush_timeout, std::chrono::milliseconds(500));
  EXPECT_EQ(c->limits.quorum_grace, std::chrono::milliseconds(5000));
  EXPECT_EQ(c->limits.jobs_in_flight_max, 1500u);
  EXPECT_EQ(c->limits.bytes_in_flight_max, 75u * 1024 * 1024);
  EXPECT_EQ(c->mount_path, "./mnt");
  EXPECT_FALSE(c->allow_other);
  EXPECT_EQ(c->log_level, "info");
}

TEST(FuseConfig, OnlyTargetsGivesDocumentedDefaults) {
  auto c = parse(kTargets);
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_FALSE(c->generation.has_value());
  EXPECT_FALSE(c->read_only);
  EXPECT_FALSE(c->key.has_value());
  EXPECT_EQ(c->activate_timeout, std::chrono::milliseconds(30000));
  EXPECT_EQ(c->limits.flush_timeout, std::chrono::milliseconds(500));
  EXPECT_EQ(c->limits.jobs_in_flight_max, 1500u);
  EXPECT_EQ(c->limits.bytes_in_flight_max, 75u * 1024 * 1024);
  EXPECT_EQ(c->mount_path, "");
  EXPECT_FALSE(c->allow_other);
  EXPECT_EQ(c->log_level, "info");
  EXPECT_EQ(c->log_file, "");
  EXPECT_EQ(c->control_socket, "");
}

// ---- each key ----

TEST(FuseConfig, TargetsAcceptIpv4Ipv6AndNames) {
  auto c =
      parse("volume:\n  targets: [\"10.0.0.1:1\", \"[::1]:65535\", \"ds-2.example.com:3810\"]\n");
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ(c->targets[0], "10.0.0.1:1");
  EXPECT_EQ(c->targets[1], "[::1]:65535");
  EXPECT_EQ(c->targets[2], "ds-2.example.com:3810");
}

TEST(FuseConfig, TargetsAsBlockSequence) {
  auto c = parse("volume:\n  targets:\n    - 127.0.0.1:1\n    - 127.0.0.1:2\n    - 127.0.0.1:3\n");
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ(c->targets[2], "127.0.0.1:3");
}

TEST(FuseConfig, GenerationAutoOrNumber) {
  auto a = parse(std::string(kTargets) + "  generation: auto\n");
  ASSERT_TRUE(a) << a.error().to_string();
  EXPECT_FALSE(a->generation.has_value());
  auto n = parse(std::string(kTargets) + "  generation: 42\n");
  ASSERT_TRUE(n) << n.error().to_string();
  ASSERT_TRUE(n->generation.has_value());
  EXPECT_EQ(n->generation->value, 42u);
}

TEST(FuseConfig, ReadOnly) {
  auto c = parse(std::string(kTargets) + "  read_only: true\n");
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_TRUE(c->read_only);
}

TEST(FuseConfig, ActivateAndFlushTimeouts) {
  auto c =
      parse(std::string(kTargets) + "  activate_timeout_ms: 100\n  flush_timeout_ms: 86400000\n");
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ(c->activate_timeout, std::chrono::milliseconds(100));
  EXPECT_EQ(c->limits.flush_timeout, std::chrono::milliseconds(86400000));
}

TEST(FuseConfig, QuorumGraceDefaultsToFiveSecondsAndIsConfigurable) {
  auto d = parse(kTargets);
  ASSERT_TRUE(d) << d.error().to_string();
  EXPECT_EQ(d->limits.quorum_grace, std::chrono::seconds(5));
  auto c = parse(std::string(kTargets) + "  quorum_grace_ms: 2000\n");
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ(c->limits.quorum_grace, std::chrono::milliseconds(2000));
  auto low = parse(std::string(kTargets) + "  quorum_grace_ms: 10\n");
  ASSERT_FALSE(low);
  EXPECT_NE(low.error().message.find("volume.quorum_grace_ms: 10 is not in 500..30000"),
            std::string::npos)
      << low.error().message;
}

TEST(FuseConfig, LimitsAndTheirFaultThresholds) {
  auto c =
      parse(std::string(kTargets) + "  limits: { jobs_in_flight: 300, bytes_in_flight: 3MiB }\n");
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ(c->limits.jobs_in_flight_max, 300u);
  EXPECT_EQ(c->limits.bytes_in_flight_max, 3u * 1024 * 1024);
  // A lagging downstairs is faulted at 2/3 of the admission limits.
  EXPECT_EQ(c->limits.fault_jobs, 200u);
  EXPECT_EQ(c->limits.fault_bytes, 2u * 1024 * 1024);
}

TEST(FuseConfig, SizesInEveryDocumentedForm) {
  for (auto [text, bytes] : {std::pair{"75MiB", 75ull << 20}, std::pair{"75M", 75ull << 20},
                             std::pair{"1G", 1ull << 30}, std::pair{"4194304", 4ull << 20}}) {
    auto c = parse(std::string(kTargets) + "  limits: { bytes_in_flight: " + text + " }\n");
    ASSERT_TRUE(c) << text << ": " << c.error().to_string();
    EXPECT_EQ(c->limits.bytes_in_flight_max, bytes) << text;
  }
}

TEST(FuseConfig, MountLogAndControl) {
  auto c = parse(std::string(kTargets) +
                 "mount:\n  path: /srv/vol\n  allow_other: true\n"
                 "log:\n  level: debug\n  file: /var/log/cru.log\n"
                 "control:\n  socket: /run/cru.sock\n");
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ(c->mount_path, "/srv/vol");
  EXPECT_TRUE(c->allow_other);
  EXPECT_EQ(c->log_level, "debug");
  EXPECT_EQ(c->log_file, "/var/log/cru.log");
  EXPECT_EQ(c->control_socket, "/run/cru.sock");
}

TEST(FuseConfig, MetricsOffByDefaultAndListenAddresses) {
  auto off = parse(kTargets);
  ASSERT_TRUE(off) << off.error().to_string();
  EXPECT_EQ(off->metrics_listen, "");
  for (const char* listen : {"127.0.0.1:9100", "0.0.0.0:9100", "[::1]:9100", "127.0.0.1:0"}) {
    auto c = parse(std::string(kTargets) + "metrics:\n  listen: \"" + listen + "\"\n");
    ASSERT_TRUE(c) << listen << ": " << c.error().to_string();
    EXPECT_EQ(c->metrics_listen, listen);
  }
}

TEST(FuseConfig, TraceOffByDefaultAndBothEndpointForms) {
  auto off = parse(kTargets);
  ASSERT_TRUE(off) << off.error().to_string();
  EXPECT_EQ(off->trace_endpoint, "");
  EXPECT_EQ(off->trace_sample_ratio, 0.01);
  for (const char* endpoint : {"localhost:6831", "http://127.0.0.1:4318"}) {
    auto c = parse(std::string(kTargets) + "trace:\n  endpoint: \"" + endpoint +
                   "\"\n  sample_ratio: 0.5\n");
    ASSERT_TRUE(c) << endpoint << ": " << c.error().to_string();
    EXPECT_EQ(c->trace_endpoint, endpoint);
    EXPECT_EQ(c->trace_sample_ratio, 0.5);
  }
}

TEST(FuseConfig, EveryLogLevel) {
  for (const char* level : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
    auto c = parse(std::string(kTargets) + "log:\n  level: " + level + "\n");
    ASSERT_TRUE(c) << level << ": " << c.error().to_string();
    EXPECT_EQ(c->log_level, level);
  }
}

// ---- refusals: "FILE: KEY: reason" ----

struct Refusal {
  const char* name;
  std::string yaml;
  std::string key;     // the key the message must name
  std::string reason;  // a phrase the message must contain
};

class FuseConfigRefuses : public ::testing::TestWithParam<Refusal> {};

TEST_P(FuseConfigRefuses, NamingFileKeyAndReason) {
  const Refusal& r = GetParam();
  const std::string msg = error_of(r.yaml);
  EXPECT_EQ(msg.rfind(std::string(kSource) + ": " + r.key + ": ", 0), 0u) << msg;
  EXPECT_NE(msg.find(r.reason), std::string::npos) << msg;
}

const std::string kT = kTargets;

INSTANTIATE_TEST_SUITE_P(
    Errors, FuseConfigRefuses,
    ::testing::Values(
        Refusal{"EmptyFile", "", "(top level)", "empty"},
        Refusal{"TopLevelNotAMap", "- a\n- b\n", "(top level)", "expected a mapping"},
        Refusal{"UnknownTopKey", kT + "colour: red\n", "colour",
                "unknown key (expected one of: volume, mount, log, control, metrics, trace)"},
        Refusal{"MissingVolume", "mount:\n  path: /x\n", "volume", "missing"},
        Refusal{"VolumeNotAMap", "volume: 3\n", "volume", "expected a mapping"},
        Refusal{"UnknownVolumeKey", kT + "  colour: red\n", "volume.colour", "unknown key"},
        Refusal{"MissingTargets", "volume:\n  read_only: true\n", "volume.targets", "missing"},
        Refusal{"TwoTargets", "volume:\n  targets: [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n",
                "volume.targets", "expected exactly 3 host:port addresses, got 2"},
        Refusal{"FourTargets", "volume:\n  targets: [\"h:1\", \"h:2\", \"h:3\", \"h:4\"]\n",
                "volume.targets", "expected exactly 3 host:port addresses, got 4"},
        Refusal{"TargetsNotAList", "volume:\n  targets: \"127.0.0.1:1\"\n", "volume.targets",
                "expected exactly 3"},
        Refusal{"TargetWithoutPort",
                "volume:\n  targets: [\"127.0.0.1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\n",
                "volume.targets[0]", "127.0.0.1"},
        Refusal{"TargetPortZero",
                "volume:\n  targets: [\"127.0.0.1:1\", \"127.0.0.1:0\", \"127.0.0.1:3\"]\n",
                "volume.targets[1]", "0"},
        Refusal{"TargetPortTooHigh",
                "volume:\n  targets: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:65536\"]\n",
                "volume.targets[2]", "65536"},
        Refusal{"TargetBadHost",
                "volume:\n  targets: [\"bad host!:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\n",
                "volume.targets[0]", "bad host!"},
        Refusal{"TargetTwice",
                "volume:\n  targets: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:1\"]\n",
                "volume.targets[2]", "listed twice"},
        Refusal{"TargetNotAScalar", "volume:\n  targets: [[1], \"127.0.0.1:2\", \"127.0.0.1:3\"]\n",
                "volume.targets[0]", "expected a single value"},
        Refusal{"GenerationWord", kT + "  generation: soon\n", "volume.generation",
                "'soon' is not auto or a number >= 1"},
        Refusal{"GenerationZero", kT + "  generation: 0\n", "volume.generation",
                "is not auto or a number >= 1"},
        Refusal{"GenerationNegative", kT + "  generation: -3\n", "volume.generation",
                "is not auto or a number"},
        Refusal{"ReadOnlyNotBool", kT + "  read_only: yes please\n", "volume.read_only",
                "is not true or false"},
        Refusal{"ReadOnlyList", kT + "  read_only: [true]\n", "volume.read_only",
                "expected a single value"},
        Refusal{"InlineKey", kT + "  key: \"" + kKey + "\"\n", "volume.key",
                "an inline key is not accepted; put it in a file of mode 0600 and name that "
                "file in volume.key_file"},
        Refusal{"KeyFileMissing", kT + "  key_file: /nonexistent/key\n", "volume.key_file",
                "key file /nonexistent/key: No such file or directory"},
        Refusal{"ActivateTimeoutTooSmall", kT + "  activate_timeout_ms: 99\n",
                "volume.activate_timeout_ms", "99 is not in 100..86400000"},
        Refusal{"FlushTimeoutZero", kT + "  flush_timeout_ms: 0\n", "volume.flush_timeout_ms",
                "0 is not in 1..86400000"},
        Refusal{"FlushTimeoutTooLarge", kT + "  flush_timeout_ms: 86400001\n",
                "volume.flush_timeout_ms", "is not in 1..86400000"},
        Refusal{"FlushTimeoutNotANumber", kT + "  flush_timeout_ms: 5s\n",
                "volume.flush_timeout_ms", "'5s' is not a whole number"},
        Refusal{"LimitsNotAMap", kT + "  limits: 5\n", "volume.limits", "expected a mapping"},
        Refusal{"UnknownLimit", kT + "  limits: { iops: 5 }\n", "volume.limits.iops",
                "unknown key (expected one of: jobs_in_flight, bytes_in_flight)"},
        Refusal{"JobsInFlightTooSmall", kT + "  limits: { jobs_in_flight: 15 }\n",
                "volume.limits.jobs_in_flight", "15 is not in 16..1000000"},
        Refusal{"JobsInFlightTooLarge", kT + "  limits: { jobs_in_flight: 1000001 }\n",
                "volume.limits.jobs_in_flight", "is not in 16..1000000"},
        Refusal{"BytesInFlightNotASize", kT + "  limits: { bytes_in_flight: lots }\n",
                "volume.limits.bytes_in_flight", "'lots' is not a size"},
        Refusal{"BytesInFlightTooSmall", kT + "  limits: { bytes_in_flight: 1MiB }\n",
                "volume.limits.bytes_in_flight", "1MiB is not in"},
        Refusal{"BytesInFlightTooLarge", kT + "  limits: { bytes_in_flight: 17GiB }\n",
                "volume.limits.bytes_in_flight", "17GiB is not in"},
        Refusal{"MountNotAMap", kT + "mount: /x\n", "mount", "expected a mapping"},
        Refusal{"UnknownMountKey", kT + "mount:\n  colour: red\n", "mount.colour",
                "unknown key (expected one of: path, allow_other)"},
        Refusal{"MountPathEmpty", kT + "mount:\n  path: \"\"\n", "mount.path", "empty"},
        Refusal{"MountPathList", kT + "mount:\n  path: [a, b]\n", "mount.path",
                "expected a single value"},
        Refusal{"AllowOtherNotBool", kT + "mount:\n  allow_other: 1\n", "mount.allow_other",
                "is not true or false"},
        Refusal{"UnknownLogKey", kT + "log:\n  colour: red\n", "log.colour",
                "unknown key (expected one of: level, file)"},
        Refusal{"BadLogLevel", kT + "log:\n  level: loud\n", "log.level",
                "'loud' is not one of trace, debug, info, warn, error, critical, off"},
        Refusal{"LogFileList", kT + "log:\n  file: [a]\n", "log.file", "expected a single value"},
        Refusal{"UnknownControlKey", kT + "control:\n  port: 5\n", "control.port",
                "unknown key (expected one of: socket)"},
        Refusal{"ControlSocketList", kT + "control:\n  socket: [a]\n", "control.socket",
                "expected a single value"},
        Refusal{"MetricsNotAMap", kT + "metrics: 127.0.0.1:9100\n", "metrics",
                "expected a mapping"},
        Refusal{"UnknownMetricsKey", kT + "metrics:\n  port: 9100\n", "metrics.port",
                "unknown key (expected one of: listen)"},
        Refusal{"MetricsListenWithoutPort", kT + "metrics:\n  listen: 127.0.0.1\n",
                "metrics.listen", "no ':port'"},
        Refusal{"MetricsListenName", kT + "metrics:\n  listen: localhost:9100\n", "metrics.listen",
                "'localhost' is a name, give an IP address"},
        Refusal{"MetricsListenPortTooHigh", kT + "metrics:\n  listen: 127.0.0.1:65536\n",
                "metrics.listen", "port 65536 is not in 1..65535"},
        Refusal{"MetricsListenList", kT + "metrics:\n  listen: [a]\n", "metrics.listen",
                "expected a single value"},
        Refusal{"UnknownTraceKey", kT + "trace:\n  agent: x:1\n", "trace.agent",
                "unknown key (expected one of: endpoint, sample_ratio)"},
        Refusal{"TraceEndpointHttps", kT + "trace:\n  endpoint: https://h:4318\n", "trace.endpoint",
                "only http:// is supported"},
        Refusal{"TraceEndpointWithoutPort", kT + "trace:\n  endpoint: jaeger\n", "trace.endpoint",
                "expected HOST:PORT for a Jaeger agent"},
        Refusal{"TraceSampleRatioAboveOne", kT + "trace:\n  sample_ratio: 2\n",
                "trace.sample_ratio", "not a ratio from 0 to 1"},
        Refusal{"TraceSampleRatioWord", kT + "trace:\n  sample_ratio: all\n", "trace.sample_ratio",
                "not a number from 0 to 1"}),
    [](const ::testing::TestParamInfo<Refusal>& p) { return p.param.name; });

// ---- syntax errors and files ----

TEST(FuseConfig, SyntaxErrorGivesFileLineAndColumn) {
  // Line 3 opens a flow sequence that never closes.
  const std::string msg = error_of(std::string(kTargets) + "mount:\n  path: [unclosed\n");
  EXPECT_EQ(msg.rfind(std::string(kSource) + ": line ", 0), 0u) << msg;
  EXPECT_NE(msg.find(", column "), std::string::npos) << msg;
}

TEST(FuseConfig, SyntaxErrorPointsAtTheRightLine) {
  // A tab for indentation is not YAML; it is on line 3 (1-based).
  const std::string msg = error_of("volume:\n  read_only: false\n\tgeneration: 1\n");
  EXPECT_EQ(msg.rfind(std::string(kSource) + ": line 3, column ", 0), 0u) << msg;
}

TEST(FuseConfig, SyntaxErrorColumnIsOneBased) {
  // The bad indentation starts at column 3 of line 2.
  const std::string msg = error_of("a: b\n  c: d\n");
  EXPECT_NE(msg.find("line 2, column"), std::string::npos) << msg;
}

class FuseConfigFile : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = "/tmp/cru-config-test-XXXXXX";
    ASSERT_NE(::mkdtemp(templ.data()), nullptr);
    dir_ = templ;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text, mode_t mode = 0644) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    fs::permissions(path, static_cast<fs::perms>(mode));
    return path;
  }
  Result<Config> with_key_file(const std::string& path) {
    return parse(std::string(kTargets) + "  key_file: " + path + "\n");
  }
  std::string dir_;
};

TEST_F(FuseConfigFile, MissingFileIsNamed) {
  auto c = load_config(dir_ + "/nope.yaml");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message.rfind(dir_ + "/nope.yaml: cannot open the config file", 0), 0u)
      << c.error().message;
  EXPECT_NE(c.error().message.find("No such file"), std::string::npos) << c.error().message;
}

TEST_F(FuseConfigFile, ErrorsNameTheFilePath) {
  const std::string path =
      write("bad.yaml", "volume:\n  targets: [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n");
  auto c = load_config(path);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message,
            path + ": volume.targets: expected exactly 3 host:port addresses, got 2");
}

TEST_F(FuseConfigFile, DirectoryIsNotAConfig) {
  auto c = load_config(dir_);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message, dir_ + ": is a directory, not a config file");
}

TEST_F(FuseConfigFile, HugeFileIsRefusedUnread) {
  const std::string path = write("huge.yaml", std::string(2 * 1024 * 1024, '#'));
  auto c = load_config(path);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("not a config file"), std::string::npos) << c.error().message;
}

TEST_F(FuseConfigFile, GoodFileLoads) {
  const std::string path = write("good.yaml", std::string(kTargets) + "mount:\n  path: ./mnt\n");
  auto c = load_config(path);
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ(c->mount_path, "./mnt");
}

// ---- volume.key_file ----

TEST_F(FuseConfigFile, KeyFileOfMode0600IsRead) {
  auto c = with_key_file(write("key", std::string(kKey) + "\n", 0600));
  ASSERT_TRUE(c) << c.error().to_string();
  ASSERT_TRUE(c->key.has_value());
  EXPECT_EQ((*c->key)[0], 0);
  EXPECT_EQ((*c->key)[31], 31);
}

TEST_F(FuseConfigFile, KeyFileReadableByOthersIsRefused) {
  for (mode_t mode : {0644, 0640, 0604}) {
    auto c = with_key_file(write("key", kKey, mode));
    ASSERT_FALSE(c) << std::oct << mode;
    EXPECT_NE(c.error().message.find("lets others read it; chmod 600 it"), std::string::npos)
        << c.error().message;
  }
}

TEST_F(FuseConfigFile, KeyFileOwnedBySomeoneElseIsRefused) {
  const std::string path = write("key", kKey, 0600);
  ASSERT_EQ(::chown(path.c_str(), ::geteuid() + 1, static_cast<gid_t>(-1)), 0)
      << "the tests run as root";
  auto c = with_key_file(path);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("not by this user"), std::string::npos) << c.error().message;
}

TEST_F(FuseConfigFile, KeyFileThatIsNotAKeyIsRefusedWithoutEchoingIt) {
  const std::string secret = "c2VjcmV0IGJ1dCBub3QgYSBrZXk=";
  auto c = with_key_file(write("key", secret, 0600));
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("32 bytes in standard base64"), std::string::npos)
      << c.error().message;
  EXPECT_EQ(c.error().message.find(secret), std::string::npos) << c.error().message;
}

TEST_F(FuseConfigFile, KeyFileThatIsADirectoryOrASymlinkIsRefused) {
  auto dir = with_key_file(dir_);
  ASSERT_FALSE(dir);
  EXPECT_NE(dir.error().message.find("not a regular file"), std::string::npos)
      << dir.error().message;
  const std::string target = write("key", kKey, 0600);
  fs::create_symlink(target, dir_ + "/link");
  auto link = with_key_file(dir_ + "/link");
  ASSERT_FALSE(link);
  EXPECT_NE(link.error().message.find("key file " + dir_ + "/link: "), std::string::npos)
      << link.error().message;
}

TEST_F(FuseConfigFile, TlsFilesLandInConfig) {
  const std::string cert = write("c.pem", "x"), key = write("k.pem", "x"), ca = write("a.pem", "x");
  auto c = parse(std::string(kTargets) + "  tls: {cert: " + cert + ", key: " + key + ", ca: " + ca +
                 "}\n");
  ASSERT_TRUE(c) << c.error().to_string();
  ASSERT_TRUE(c->tls);
  EXPECT_EQ(*c->tls, (TlsFiles{cert, key, ca}));
  auto plain = parse(kTargets);
  ASSERT_TRUE(plain) << plain.error().to_string();
  EXPECT_FALSE(plain->tls);
}

TEST_F(FuseConfigFile, TlsRefusalsNameFileKeyAndReason) {
  const std::string cert = write("c.pem", "x"), key = write("k.pem", "x");
  const std::string missing = dir_ + "/nope.pem";
  const std::string pre = std::string(kTargets) + "  tls: ";
  EXPECT_EQ(error_of(pre + "{cert: " + cert + ", key: " + key + "}\n"),
            "test.yaml: volume.tls.ca: missing (volume.tls needs cert, key and ca)");
  EXPECT_EQ(error_of(pre + "{cert: " + cert + ", key: " + key + ", ca: " + missing + "}\n"),
            "test.yaml: volume.tls.ca: cannot read " + missing + ": No such file or directory");
  EXPECT_EQ(
      error_of(pre + "{cert: " + cert + ", key: " + key + ", ca: " + cert + ", colour: red}\n"),
      "test.yaml: volume.tls.colour: unknown key (expected one of: cert, key, ca)");
  EXPECT_EQ(error_of(pre + "yes\n"), "test.yaml: volume.tls: expected a mapping of keys");
  EXPECT_EQ(error_of(pre + "{cert: \"\", key: " + key + ", ca: " + cert + "}\n"),
            "test.yaml: volume.tls.cert: empty");
}

}  // namespace
}  // namespace cru::fuse
