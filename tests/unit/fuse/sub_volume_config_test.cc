// volume.sub_volumes and volume.stripe_kib (issue 12): parsed in volume order, the one-list
// volume.targets form unchanged, and every refusal naming the file, the key and the reason;
// the status JSON of several sub-volumes combines them and keeps each one's own.
#include <gtest/gtest.h>

#include "fuse/config.h"
#include "fuse/status.h"
#include "fuse/volume_status.h"

namespace cru::fuse {
namespace {

constexpr const char* kSource = "sv.yaml";

std::string error_of(const std::string& yaml) {
  auto c = parse_config(yaml, kSource);
  EXPECT_FALSE(c) << "accepted:\n" << yaml;
  return c ? std::string() : c.error().message;
}

const std::string kTwo =
    "volume:\n"
    "  sub_volumes:\n"
    "    - targets: [\"h:1\", \"h:2\", \"h:3\"]\n"
    "    - targets: [\"h:4\", \"h:5\", \"h:6\"]\n";

TEST(SubVolumeConfig, SubVolumesParseInVolumeOrder) {
  auto c = parse_config(kTwo, kSource);
  ASSERT_TRUE(c) << c.error().message;
  ASSERT_EQ(c->sub_volumes.size(), 2u);
  EXPECT_EQ(c->sub_volumes[0][0], "h:1");
  EXPECT_EQ(c->sub_volumes[1][2], "h:6");
  EXPECT_EQ(c->targets, c->sub_volumes[0]);
  EXPECT_EQ(c->stripe_bytes, 0u);
}

TEST(SubVolumeConfig, TargetsAloneIsOneSubVolume) {
  auto c = parse_config("volume:\n  targets: [\"h:1\", \"h:2\", \"h:3\"]\n", kSource);
  ASSERT_TRUE(c) << c.error().message;
  ASSERT_EQ(c->sub_volumes.size(), 1u);
  EXPECT_EQ(c->sub_volumes[0], c->targets);
}

TEST(SubVolumeConfig, StripeKibIsKept) {
  auto c = parse_config(kTwo + "  stripe_kib: 128\n", kSource);
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->stripe_bytes, 128u * 1024);
}

struct Refusal {
  const char* name;
  std::string yaml;
  std::string key;
  std::string reason;
};

class SubVolumeConfigRefuses : public ::testing::TestWithParam<Refusal> {};

TEST_P(SubVolumeConfigRefuses, NamingFileKeyAndReason) {
  const Refusal& r = GetParam();
  const std::string msg = error_of(r.yaml);
  EXPECT_EQ(msg.rfind(std::string(kSource) + ": " + r.key + ": ", 0), 0u) << msg;
  EXPECT_NE(msg.find(r.reason), std::string::npos) << msg;
}

INSTANTIATE_TEST_SUITE_P(
    Errors, SubVolumeConfigRefuses,
    ::testing::Values(
        Refusal{"Both", kTwo + "  targets: [\"h:7\", \"h:8\", \"h:9\"]\n", "volume.sub_volumes",
                "either volume.targets (one sub-volume) or volume.sub_volumes, not both"},
        Refusal{"Empty", "volume:\n  sub_volumes: []\n", "volume.sub_volumes", "1..64 entries"},
        Refusal{"NotAList", "volume:\n  sub_volumes: 3\n", "volume.sub_volumes", "a list"},
        Refusal{"UnknownKey",
                "volume:\n  sub_volumes:\n    - targets: [\"h:1\", \"h:2\", \"h:3\"]\n"
                "      size: 3\n",
                "volume.sub_volumes[0].size", "unknown key (expected one of: targets)"},
        Refusal{"MissingTargets", "volume:\n  sub_volumes:\n    - {}\n",
                "volume.sub_volumes[0].targets", "missing"},
        Refusal{"TwoTargets", "volume:\n  sub_volumes:\n    - targets: [\"h:1\", \"h:2\"]\n",
                "volume.sub_volumes[0].targets", "expected exactly 3"},
        Refusal{"TargetInTwoSubVolumes",
                "volume:\n  sub_volumes:\n    - targets: [\"h:1\", \"h:2\", \"h:3\"]\n"
                "    - targets: [\"h:4\", \"h:2\", \"h:6\"]\n",
                "volume.sub_volumes[1].targets[1]", "listed twice"},
        Refusal{"StripeWithoutSubVolumes",
                "volume:\n  targets: [\"h:1\", \"h:2\", \"h:3\"]\n  stripe_kib: 64\n",
                "volume.stripe_kib", "needs volume.sub_volumes"},
        Refusal{"StripeTooSmall", kTwo + "  stripe_kib: 2\n", "volume.stripe_kib",
                "2 is not in 4..1048576"}),
    [](const ::testing::TestParamInfo<Refusal>& p) { return p.param.name; });

upstairs::Snapshot snapshot(const std::string& state, uint64_t writes, const std::string& host) {
  upstairs::Snapshot s;
  s.state = state;
  s.generation = Generation{3};
  s.complete_copies = 3;
  s.writes = writes;
  for (ClientId c : kAllClients) {
    s.clients[c].target = fmt::format("{}:{}", host, c.value);
    s.clients[c].state = "active";
  }
  return s;
}

TEST(SubVolumeStatus, OneSubVolumeIsThePlainStatus) {
  const auto s = snapshot("active", 5, "a");
  EXPECT_EQ(volume_status_json({s}, 0), status_json(s));
}

TEST(SubVolumeStatus, SeveralCombineAndKeepEachOnesOwn) {
  auto b = snapshot("reconciling", 7, "b");
  b.degraded = true;
  b.complete_copies = 2;
  const auto j = volume_status_json({snapshot("active", 5, "a"), b}, 65536);
  EXPECT_EQ(j["state"], "reconciling");  // as healthy as the least healthy
  EXPECT_EQ(j["degraded"], true);
  EXPECT_EQ(j["complete_copies"], 2);
  EXPECT_EQ(j["counters"]["writes"], 12u);
  EXPECT_EQ(j["stripe_bytes"], 65536u);
  ASSERT_EQ(j["downstairs"].size(), 6u);
  EXPECT_EQ(j["downstairs"][4]["target"], "b:1");
  EXPECT_EQ(j["downstairs"][4]["sub_volume"], 1u);
  ASSERT_EQ(j["sub_volumes"].size(), 2u);
  EXPECT_EQ(j["sub_volumes"][1], status_json(b));
  const std::string text = format_volume_status(j);
  EXPECT_NE(text.find("2 sub-volumes striped by"), std::string::npos) << text;
  EXPECT_NE(text.find("sub-volume 1: volume: reconciling"), std::string::npos) << text;
}

}  // namespace
}  // namespace cru::fuse
