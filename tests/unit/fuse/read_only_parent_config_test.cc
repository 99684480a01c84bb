// volume.read_only_parent and volume.scrub_state_file (issue 12): a file or three targets,
// the scrub rate, and every refusal naming the file, the key and the reason; the scrub's
// state record round-trips, is replaced atomically, and a damaged one is refused by name.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "fuse/config.h"
#include "fuse/scrub_state.h"
#include "fuse/volume_status.h"
#include "support/process.h"

namespace cru::fuse {
namespace {

constexpr const char* kSource = "rop.yaml";
const std::string kTargets = "volume:\n  targets: [\"h:1\", \"h:2\", \"h:3\"]\n";

std::string error_of(const std::string& yaml) {
  auto c = parse_config(yaml, kSource);
  EXPECT_FALSE(c) << "accepted:\n" << yaml;
  return c ? std::string() : c.error().message;
}

TEST(ReadOnlyParentConfig, NoParentByDefault) {
  auto c = parse_config(kTargets, kSource);
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_FALSE(c->read_only_parent);
  EXPECT_TRUE(c->scrub_state_file.empty()) << "crucible-fuse defaults it next to the mount";
}

TEST(ReadOnlyParentConfig, AFileParentWithTheDefaultRate) {
  test::TempDir d;
  const std::string image = d.file("parent.img");
  std::ofstream(image) << std::string(8192, 'x');
  auto c = parse_config(kTargets + "  read_only_parent:\n    file: " + image + "\n", kSource);
  ASSERT_TRUE(c) << c.error().message;
  ASSERT_TRUE(c->read_only_parent);
  EXPECT_EQ(c->read_only_parent->file, image);
  EXPECT_FALSE(c->read_only_parent->targets);
  EXPECT_EQ(c->read_only_parent->scrub_rate_bytes_per_s, 16u * 1024 * 1024);
}

TEST(ReadOnlyParentConfig, TargetsParentRateAndStateFile) {
  auto c = parse_config(kTargets +
                            "  read_only_parent:\n"
                            "    targets: [\"p:1\", \"p:2\", \"p:3\"]\n"
                            "    scrub_rate: 4MiB\n"
                            "  scrub_state_file: /var/lib/crucible/clone.scrub.json\n",
                        kSource);
  ASSERT_TRUE(c) << c.error().message;
  ASSERT_TRUE(c->read_only_parent && c->read_only_parent->targets);
  EXPECT_EQ((*c->read_only_parent->targets)[2], "p:3");
  EXPECT_TRUE(c->read_only_parent->file.empty());
  EXPECT_EQ(c->read_only_parent->scrub_rate_bytes_per_s, 4u * 1024 * 1024);
  EXPECT_EQ(c->scrub_state_file, "/var/lib/crucible/clone.scrub.json");
}

TEST(ReadOnlyParentConfig, BothOrNeitherIsRefusedNamingTheKey) {
  test::TempDir d;
  const std::string image = d.file("p.img");
  std::ofstream(image) << "x";
  auto both = error_of(kTargets + "  read_only_parent:\n    file: " + image +
                       "\n    targets: [\"p:1\", \"p:2\", \"p:3\"]\n");
  EXPECT_NE(both.find("rop.yaml: volume.read_only_parent: give either file"), std::string::npos)
      << both;
  auto neither = error_of(kTargets + "  read_only_parent:\n    scrub_rate: 1MiB\n");
  EXPECT_NE(neither.find("volume.read_only_parent: needs file"), std::string::npos) << neither;
  auto unknown = error_of(kTargets + "  read_only_parent:\n    path: /x\n");
  EXPECT_NE(unknown.find("volume.read_only_parent.path: unknown key"), std::string::npos)
      << unknown;
}

TEST(ReadOnlyParentConfig, AMissingOrUnusableFileIsRefusedNamingTheKeyAndPath) {
  test::TempDir d;
  auto missing = error_of(kTargets + "  read_only_parent:\n    file: " + d.file("nope.img") + "\n");
  EXPECT_NE(missing.find("volume.read_only_parent.file: "), std::string::npos) << missing;
  EXPECT_NE(missing.find("nope.img: no such file"), std::string::npos) << missing;
  auto dir = error_of(kTargets + "  read_only_parent:\n    file: " + d.path() + "\n");
  EXPECT_NE(dir.find("not a regular file"), std::string::npos) << dir;
  auto empty = error_of(kTargets + "  read_only_parent:\n    file: \"\"\n");
  EXPECT_NE(empty.find("volume.read_only_parent.file: empty"), std::string::npos) << empty;
}

TEST(ReadOnlyParentConfig, BadTargetsAndRatesAreRefused) {
  auto two = error_of(kTargets + "  read_only_parent:\n    targets: [\"p:1\", \"p:2\"]\n");
  EXPECT_NE(two.find("volume.read_only_parent.targets: expected exactly 3"), std::string::npos)
      << two;
  auto shared =
      error_of(kTargets + "  read_only_parent:\n    targets: [\"p:1\", \"h:2\", \"p:3\"]\n");
  EXPECT_NE(shared.find("volume.read_only_parent.targets[1]: 'h:2' is listed twice"),
            std::string::npos)
      << shared;
  auto slow = error_of(kTargets +
                       "  read_only_parent:\n    targets: [\"p:1\", \"p:2\", \"p:3\"]\n"
                       "    scrub_rate: 100\n");
  EXPECT_NE(slow.find("volume.read_only_parent.scrub_rate"), std::string::npos) << slow;
  auto state = error_of(kTargets + "  scrub_state_file: \"\"\n");
  EXPECT_NE(state.find("volume.scrub_state_file: empty"), std::string::npos) << state;
}

ScrubState sample() {
  return ScrubState{
      {{"a0", "a1", "a2"}, {"b0", "b1", "b2"}}, "file /img", 64 * 4096, 4096, 17, false};
}

TEST(ScrubStateFile, TheVolumeIsKnownByAnyReplicasRegionInEverySubVolume) {
  const VolumeIdentity rec = {{"a0", "a1", "a2"}, {"b0", "b1", "b2"}};
  EXPECT_TRUE(same_volume(rec, rec));
  EXPECT_TRUE(same_volume(rec, {{"a2", "a1", "a0"}, {"b0", "b1", "b2"}})) << "order";
  EXPECT_TRUE(same_volume(rec, {{"x0", "a1", "x2"}, {"b0", "b1", "bx"}})) << "two replaced";
  EXPECT_TRUE(same_volume(rec, {{"a0", "a1", "a2"}, {"b0", "b1", "b2"}, {"c0", "c1", "c2"}}))
      << "grown by a sub-volume";
  EXPECT_FALSE(same_volume(rec, {{"x0", "x1", "x2"}, {"b0", "b1", "b2"}})) << "another sub-volume";
  EXPECT_FALSE(same_volume(rec, {{"a0", "a1", "a2"}})) << "a sub-volume missing";
  EXPECT_FALSE(same_volume({}, {{"a0"}}));
}

TEST(ScrubStateFile, RoundTripsAndIsReplacedWhole) {
  test::TempDir d;
  const std::string path = d.file("s.json");
  auto none = load_scrub_state(path);
  ASSERT_TRUE(none) << none.error().message;
  EXPECT_FALSE(*none) << "no file: no record";
  ASSERT_TRUE(save_scrub_state(path, sample()));
  auto got = load_scrub_state(path);
  ASSERT_TRUE(got && *got);
  EXPECT_EQ(**got, sample());
  ScrubState done = sample();
  done.next_block = 64;
  done.complete = true;
  ASSERT_TRUE(save_scrub_state(path, done));
  got = load_scrub_state(path);
  ASSERT_TRUE(got && *got);
  EXPECT_EQ(**got, done);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp")) << "the temp file was renamed";
}

TEST(ScrubStateFile, ADamagedOrInconsistentRecordIsRefusedNamingTheFile) {
  auto torn = parse_scrub_state("{\"version\": 1, \"volume\": [", "s.json");
  ASSERT_FALSE(torn);
  EXPECT_NE(torn.error().message.find("s.json: not a scrub state record"), std::string::npos);
  ScrubState past = sample();
  past.next_block = 65;
  EXPECT_FALSE(parse_scrub_state(scrub_state_json(past), "s.json"));
  ScrubState early = sample();
  early.complete = true;  // complete but not at the end
  EXPECT_FALSE(parse_scrub_state(scrub_state_json(early), "s.json"));
  EXPECT_FALSE(parse_scrub_state("{\"version\": 2}", "s.json"));
}

TEST(ScrubStatus, TextSaysProgressOrThatTheParentIsNoLongerNeeded) {
  upstairs::ScrubStatus s;
  s.parent = "file /img";
  s.block_size = 4096;
  s.total_blocks = 1000;
  s.next_block = 250;
  s.running = true;
  s.rate_bytes_per_s = 1024 * 1024;
  s.rate_limit_bytes_per_s = 16 * 1024 * 1024;
  s.eta_s = 3.0;
  auto j = scrub_status_json(s, true);
  EXPECT_EQ(j["blocks_done"], 250);
  EXPECT_EQ(j["bytes_total"], 4096000);
  EXPECT_EQ(j["parent_needed"], true);
  const std::string running = format_scrub_status(j);
  EXPECT_NE(running.find("25.0%"), std::string::npos) << running;
  EXPECT_NE(running.find("ETA 3 s"), std::string::npos) << running;
  EXPECT_NE(running.find("still needed"), std::string::npos) << running;
  s.next_block = s.durable_block = 1000;
  s.running = false;
  s.complete = true;
  const std::string done = format_scrub_status(scrub_status_json(s, false));
  EXPECT_NE(done.find("no longer needed"), std::string::npos) << done;
}

}  // namespace
}  // namespace cru::fuse
